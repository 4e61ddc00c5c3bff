//! `raw_syscalls/sys_exit`: every syscall counted per process; the read and write
//! families (read, pread64, readv, preadv, preadv2 and their write twins) add their
//! returned byte counts; accept/accept4 count accepted connections. On kernels without the
//! `sock` length tracepoints (before 6.3), userspace also fills in the send and receive
//! syscalls, whose byte counts become network bytes. Syscall numbers are the
//! architecture's, from userspace.

use agent_common::prog::SYS_EXIT as PROG;
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    config,
    util::{add, current_ids, proc_entry, tp_field_at},
};

#[tracepoint(category = "raw_syscalls", name = "sys_exit")]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    let _ = try_sys_exit(&ctx);
    0
}

#[inline(always)]
fn is_in(nr: i64, set: &[i64]) -> bool {
    let mut i = 0;
    while i < set.len() {
        if set[i] == nr {
            return true;
        }
        i += 1;
    }
    false
}

/// A call of a byte-moving syscall, and the bytes it returned (errors move none).
#[inline(always)]
fn transfer(calls: &mut u64, bytes: &mut u64, ret: i64) {
    add(calls, 1);
    if ret > 0 {
        add(bytes, ret as u64);
    }
}

fn try_sys_exit(ctx: &TracePointContext) -> Option<()> {
    let id: i64 = tp_field_at::<_, 8>(ctx, PROG, config!(tp.sys_exit_id))?;
    let ret: i64 = tp_field_at::<_, 16>(ctx, PROG, config!(tp.sys_exit_ret))?;
    let (_, tgid) = current_ids();
    let p = proc_entry(PROG, tgid)?;
    add(&mut p.syscalls, 1);
    let nrs = config!(syscalls);
    if is_in(id, &nrs.read) {
        transfer(&mut p.read_calls, &mut p.read_bytes, ret);
    } else if is_in(id, &nrs.write) {
        transfer(&mut p.write_calls, &mut p.write_bytes, ret);
    } else if ret >= 0 && is_in(id, &nrs.accept) {
        add(&mut p.conn_accepted, 1);
    } else if is_in(id, &nrs.send) {
        transfer(&mut p.net_tx_calls, &mut p.net_tx_bytes, ret);
    } else if is_in(id, &nrs.recv) {
        transfer(&mut p.net_rx_calls, &mut p.net_rx_bytes, ret);
    }
    Some(())
}
