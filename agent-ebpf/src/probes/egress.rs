//! Egress bandwidth of managed cgroups: a token bucket per managed workload, enforced by a
//! `cgroup_skb` egress program attached (once) to the owned subtree's cgroup2 directory;
//! and TCP pacing of the connections a workload opens, set by a `sock_ops` program.
//!
//! A policer alone starves TCP on a short path: a dropped segment waits for a
//! retransmission timeout (200 ms at least), far longer than the round trip, so the
//! achieved rate falls well below the limit. So each TCP connection a managed process
//! opens is also paced at its workload's rate (`SO_MAX_PACING_RATE`, which turns on the
//! kernel's internal TCP pacing without an fq qdisc); the bucket then bounds the sum of
//! all traffic (several connections, UDP) and drops only what pacing does not hold back.
//!
//! A packet's bucket is that of its socket's cgroup's ancestor at [`EGRESS_LEVEL`] (the
//! managed workloads' level below the cgroup2 root), so every process of a workload —
//! `base/` and each request group — shares one rate. No bucket: the packet passes.
//! Tokens refill at `rate` up to `burst`; a packet passes while the bucket holds tokens
//! (it may overdraw it); one that finds it empty is dropped with a congestion notification
//! (return 2), which TCP answers by reducing its window (`tcp_enter_cwr`). Refills are lock-free: two
//! CPUs refilling at once may grant a few extra bytes, never fewer.
//! (<https://github.com/torvalds/linux/blob/v6.12/kernel/bpf/cgroup.c>,
//! `__cgroup_bpf_run_filter_skb`; the same shape as `samples/bpf/hbm_kern.h`.)

use agent_common::EgressBucket;
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_setsockopt,
            bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
        },
    },
    macros::{cgroup_skb, map, sock_ops},
    maps::{Array, HashMap},
    programs::{SkBuffContext, SockOpsContext},
};

/// Buckets by the cgroup id of a managed workload's group.
#[map]
pub static EGRESS: HashMap<u64, EgressBucket> = HashMap::with_max_entries(1024, 0);

/// Index 0: the level of the managed workloads' groups below the cgroup2 root (0: the
/// socket's own cgroup).
#[map]
pub static EGRESS_LEVEL: Array<u32> = Array::with_max_entries(1, 0);

/// Pacing: connects seen, connects of a limited workload, pacing set, pacing refused.
#[map]
pub static PACING_STATS: Array<u64> = Array::with_max_entries(4, 0);

fn count(i: u32) {
    if let Some(p) = PACING_STATS.get_ptr_mut(i) {
        // SAFETY: a pointer into an array map's value.
        unsafe { *p += 1 };
    }
}

const PASS: i32 = 1;
/// Drop, and tell the sender it met congestion (cgroup_skb egress, Linux ≥ 5.3).
const DROP_CN: i32 = 2;

#[cgroup_skb(egress)]
pub fn egress(ctx: SkBuffContext) -> i32 {
    try_egress(&ctx)
}

#[inline(always)]
fn try_egress(ctx: &SkBuffContext) -> i32 {
    let level = EGRESS_LEVEL.get(0).copied().unwrap_or(0);
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the context pointer the kernel passed this program.
    let id = unsafe {
        if level == 0 {
            bpf_skb_cgroup_id(skb)
        } else {
            bpf_skb_ancestor_cgroup_id(skb, level as i32)
        }
    };
    let Some(b) = EGRESS.get_ptr_mut(id) else {
        return PASS;
    };
    // SAFETY: a pointer into a map value, valid for this program run.
    let b = unsafe { &mut *b };
    let len = ctx.len() as i64;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let elapsed = now.saturating_sub(b.last_ns);
    if elapsed > 0 {
        // Tokens earned since the last refill. Userspace keeps `rate` ≤ 10^10 B/s and
        // `burst` ≤ one second of it, so a second of refill is all that can count and
        // the product stays inside u64.
        let earned = (elapsed.min(1_000_000_000) * b.rate / 1_000_000_000) as i64;
        let t = b.tokens.saturating_add(earned);
        b.tokens = if t > b.burst as i64 {
            b.burst as i64
        } else {
            t
        };
        b.last_ns = now;
    }
    // A packet passes while the bucket holds any tokens, and may overdraw it: a GSO
    // packet can be larger than the burst (on loopback, 2 × a 64 KiB MSS), and the debt
    // is repaid before the next one passes, so the long-run rate holds.
    if b.tokens > 0 {
        b.tokens -= len;
        b.passed_bytes += len as u64;
        PASS
    } else {
        b.dropped_bytes += len as u64;
        b.dropped_packets += 1;
        DROP_CN
    }
}

/// `BPF_SOCK_OPS_TCP_CONNECT_CB`: an active open, in the connecting process's context.
const TCP_CONNECT_CB: u32 = 3;
const SOL_SOCKET: i32 = 1;
const SO_MAX_PACING_RATE: i32 = 47;

#[sock_ops]
pub fn pacing(ctx: SockOpsContext) -> u32 {
    if ctx.op() == TCP_CONNECT_CB {
        count(0);
        let level = EGRESS_LEVEL.get(0).copied().unwrap_or(0);
        // SAFETY: no preconditions; the connecting process is `current` here.
        let id = unsafe {
            if level == 0 {
                bpf_get_current_cgroup_id()
            } else {
                bpf_get_current_ancestor_cgroup_id(level as i32)
            }
        };
        // SAFETY: the value is copied out before the program returns.
        if let Some(b) = unsafe { EGRESS.get(id) } {
            count(1);
            // The socket option is a 32-bit rate on older kernels: at most ~4 GB/s.
            let mut rate: u32 = if b.rate > u32::MAX as u64 {
                u32::MAX
            } else {
                b.rate as u32
            };
            // SAFETY: the context is a bpf_sock_ops; the value lives on this stack.
            let r = unsafe {
                bpf_setsockopt(
                    ctx.as_ptr(),
                    SOL_SOCKET,
                    SO_MAX_PACING_RATE,
                    &mut rate as *mut u32 as *mut _,
                    4,
                )
            };
            count(if r == 0 { 2 } else { 3 });
        }
    }
    1
}
