//! `raw_syscalls/sys_exit` (hooks path, detail level, or network bytes before Linux 6.3):
//! every syscall counted per process; the read and write families (read, pread64, readv,
//! preadv, preadv2 and their write twins) add their returned byte counts. On kernels
//! without the `sock` length tracepoints (before 6.3), userspace also fills in the send
//! and receive syscalls, whose byte counts become network bytes. Syscall numbers are the
//! architecture's, from userspace; a 32-bit task on a 64-bit kernel (`TS_COMPAT` on x86,
//! `TIF_32BIT` on arm64) is classified by its own table. Accepted connections are counted
//! from the listener's side in `sock`, not here.

use agent_common::prog::SYS_EXIT as PROG;
use aya_ebpf::{helpers::bpf_get_current_task, macros::tracepoint, programs::TracePointContext};

use crate::{
    config,
    util::{Mem, Probe, add, current_key, proc_entry, tp_field_at},
};

/// `__X32_SYSCALL_BIT`: x32 tasks number their syscalls like x86_64 with this bit set.
const X32_BIT: i64 = 0x4000_0000;

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
    let p = proc_entry(PROG, current_key())?;
    add(&mut p.syscalls, 1);
    if id < 0 {
        // Not a syscall's exit (`rt_sigreturn`'s: its "return value" is the register it
        // restored, often a pointer); the sets' unused slots are −1 too.
        return Some(());
    }
    let mask = config!(task.compat_mask);
    let compat = mask != 0 && {
        let task = unsafe { bpf_get_current_task() } as *const u8;
        Probe::read::<u32>(task, config!(task.task_compat)) & mask != 0
    };
    let nrs = if compat {
        config!(compat_syscalls)
    } else {
        config!(syscalls)
    };
    let id = id & !X32_BIT;
    if is_in(id, &nrs.read) {
        transfer(&mut p.read_calls, &mut p.read_bytes, ret);
    } else if is_in(id, &nrs.write) {
        transfer(&mut p.write_calls, &mut p.write_bytes, ret);
    } else if is_in(id, &nrs.send) {
        transfer(&mut p.net_tx_calls, &mut p.net_tx_bytes, ret);
    } else if is_in(id, &nrs.recv) {
        transfer(&mut p.net_rx_calls, &mut p.net_rx_bytes, ret);
    }
    Some(())
}
