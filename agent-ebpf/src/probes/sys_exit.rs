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

fn try_sys_exit(ctx: &TracePointContext) -> Option<()> {
    let id: i64 = tp_field_at::<_, 8>(ctx, PROG, config!(tp.sys_exit_id))?;
    let ret: i64 = tp_field_at::<_, 16>(ctx, PROG, config!(tp.sys_exit_ret))?;
    let (_, tgid) = current_ids();
    let p = proc_entry(PROG, tgid)?;
    add(&mut p.syscalls, 1);
    let nrs = config!(syscalls);
    if is_in(id, &nrs.read) {
        add(&mut p.read_calls, 1);
        if ret > 0 {
            add(&mut p.read_bytes, ret as u64);
        }
    } else if is_in(id, &nrs.write) {
        add(&mut p.write_calls, 1);
        if ret > 0 {
            add(&mut p.write_bytes, ret as u64);
        }
    } else if ret >= 0 && is_in(id, &nrs.accept) {
        add(&mut p.conn_accepted, 1);
    } else if is_in(id, &nrs.send) {
        add(&mut p.net_tx_calls, 1);
        if ret > 0 {
            add(&mut p.net_tx_bytes, ret as u64);
        }
    } else if is_in(id, &nrs.recv) {
        add(&mut p.net_rx_calls, 1);
        if ret > 0 {
            add(&mut p.net_rx_bytes, ret as u64);
        }
    }
    Some(())
}
