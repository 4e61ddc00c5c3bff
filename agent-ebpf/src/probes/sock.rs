//! Network: `sock/sock_send_length` and `sock/sock_recv_length` (bytes per process, in
//! process context, IPv4/IPv6 only), `sock/inet_sock_set_state` (TCP connections opened
//! and closed) and `tcp/tcp_retransmit_skb`. Closes and retransmits often run in softirq,
//! where `current` is unrelated: the socket's owner, learnt in process context, is used.

use agent_common::{Drop, prog};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    config,
    maps::SOCK_OWNER,
    util::{add, count_drop, current_ids, proc_entry, proc_existing, tp_field_at},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

#[inline(always)]
fn remember_owner(sk: u64, tgid: u32) {
    // SAFETY: map value read.
    if unsafe { SOCK_OWNER.get(sk) } != Some(&tgid) {
        // LRU: never fails for lack of room; stale sockets age out.
        let _ = SOCK_OWNER.insert(sk, tgid, 0);
    }
}

#[inline(always)]
fn on_length(ctx: &TracePointContext, send: bool) -> Option<()> {
    let p = if send {
        prog::SOCK_SEND_LENGTH
    } else {
        prog::SOCK_RECV_LENGTH
    };
    let family: u16 = tp_field_at::<_, 16>(ctx, p, config!(tp.sock_len_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let ret: i32 = tp_field_at::<_, 20>(ctx, p, config!(tp.sock_len_ret))?;
    let sk: u64 = tp_field_at::<_, 8>(ctx, p, config!(tp.sock_len_sk))?;
    let (_, tgid) = current_ids();
    let stats = proc_entry(p, tgid)?;
    if send {
        add(&mut stats.net_tx_calls, 1);
    } else {
        add(&mut stats.net_rx_calls, 1);
    }
    if ret > 0 {
        if send {
            add(&mut stats.net_tx_bytes, ret as u64);
        } else {
            add(&mut stats.net_rx_bytes, ret as u64);
        }
    }
    remember_owner(sk, tgid);
    Some(())
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let _ = on_length(&ctx, true);
    0
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    let _ = on_length(&ctx, false);
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

fn try_set_state(ctx: &TracePointContext) -> Option<()> {
    let protocol: u16 = tp_field_at::<_, 30>(
        ctx,
        prog::INET_SOCK_SET_STATE,
        config!(tp.set_state_protocol),
    )?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let old: i32 = tp_field_at::<_, 16>(ctx, prog::INET_SOCK_SET_STATE, config!(tp.set_state_old))?;
    let new: i32 = tp_field_at::<_, 20>(ctx, prog::INET_SOCK_SET_STATE, config!(tp.set_state_new))?;
    let sk: u64 = tp_field_at::<_, 8>(ctx, prog::INET_SOCK_SET_STATE, config!(tp.set_state_sk))?;
    if new == TCP_SYN_SENT {
        // connect(2), in the connecting task's context.
        let (_, tgid) = current_ids();
        let p = proc_entry(prog::INET_SOCK_SET_STATE, tgid)?;
        add(&mut p.conn_opened, 1);
        remember_owner(sk, tgid);
    } else if new == TCP_CLOSE && old != TCP_LISTEN {
        // SAFETY: map value read.
        let owner = match unsafe { SOCK_OWNER.get(sk) } {
            Some(o) => *o,
            None => {
                count_drop(prog::INET_SOCK_SET_STATE, Drop::SockOwnerUnknown);
                return None;
            }
        };
        let _ = SOCK_OWNER.remove(sk);
        add(&mut proc_existing(owner)?.conn_closed, 1);
    }
    Some(())
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit(&ctx);
    0
}

fn try_retransmit(ctx: &TracePointContext) -> Option<()> {
    let sk: u64 = tp_field_at::<_, 16>(ctx, prog::TCP_RETRANSMIT_SKB, config!(tp.retrans_sk))?;
    // SAFETY: map value read.
    let Some(owner) = (unsafe { SOCK_OWNER.get(sk) }).copied() else {
        count_drop(prog::TCP_RETRANSMIT_SKB, Drop::SockOwnerUnknown);
        return None;
    };
    add(&mut proc_existing(owner)?.retransmits, 1);
    Some(())
}
