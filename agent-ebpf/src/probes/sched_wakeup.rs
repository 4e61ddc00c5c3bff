//! `sched/sched_wakeup` and `sched/sched_wakeup_new`: a thread became runnable, so its
//! run-queue wait starts now (it ends at its next switch-in, in `sched_switch`).
//! BTF tracepoints read the woken task's pid through its BTF offset; the classic ones
//! read the `pid` field.

use agent_common::{
    Drop, RUNTIME_UNKNOWN, ThreadState,
    prog::{SCHED_WAKEUP, SCHED_WAKEUP_NEW},
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    config,
    maps::THREADS,
    util::{count_drop, task_pid, tp_field_at},
};

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup_btf(ctx: BtfTracePointContext) -> i32 {
    wake_task(SCHED_WAKEUP, ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new_btf(ctx: BtfTracePointContext) -> i32 {
    wake_task(SCHED_WAKEUP_NEW, ctx.arg(0));
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    wake_field(SCHED_WAKEUP, &ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: TracePointContext) -> u32 {
    wake_field(SCHED_WAKEUP_NEW, &ctx);
    0
}

#[inline(always)]
fn wake_task(prog: u32, task: *const u8) {
    if let Some(pid) = task_pid(task) {
        wake(prog, pid);
    }
}

#[inline(always)]
fn wake_field(prog: u32, ctx: &TracePointContext) {
    if let Some(pid) = tp_field_at::<i32, 24>(ctx, prog, config!(tp.wakeup_pid)) {
        wake(prog, pid as u32);
    }
}

#[inline(always)]
fn wake(prog: u32, tid: u32) {
    if tid == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    match THREADS.get_ptr_mut(tid) {
        // SAFETY: map value, valid for the program's run.
        Some(t) => unsafe { (*t).wait_since = now },
        None => {
            // A new thread has run for 0 ns; one that ran before we saw it, for unknown.
            let st = ThreadState {
                wait_since: now,
                last_runtime: if prog == SCHED_WAKEUP_NEW {
                    0
                } else {
                    RUNTIME_UNKNOWN
                },
            };
            if THREADS.insert(tid, st, BPF_NOEXIST as u64).is_err() {
                count_drop(prog, Drop::ThreadMapFull);
            }
        }
    }
}
