//! `sched/sched_wakeup` and `sched/sched_wakeup_new`: a thread became runnable, so its
//! run-queue wait starts now (it ends at its next switch-in, in `sched_switch`).
//! BTF tracepoints read the woken task's pid through its BTF offset; the classic ones
//! read the `pid` field.

use agent_common::{Drop, ThreadState};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    config,
    maps::THREADS,
    util::{count_drop, task_ids, tp_field},
};

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup_btf(ctx: BtfTracePointContext) -> i32 {
    wake_task(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new_btf(ctx: BtfTracePointContext) -> i32 {
    wake_task(ctx.arg(0));
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    wake_field(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: TracePointContext) -> u32 {
    wake_field(&ctx);
    0
}

#[inline(always)]
fn wake_task(task: *const u8) {
    if let Some((pid, _)) = task_ids(task) {
        wake(pid);
    }
}

#[inline(always)]
fn wake_field(ctx: &TracePointContext) {
    if let Some(pid) = tp_field::<i32>(ctx, config!(tp.wakeup_pid)) {
        wake(pid as u32);
    }
}

#[inline(always)]
fn wake(tid: u32) {
    if tid == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    match THREADS.get_ptr_mut(tid) {
        // SAFETY: map value, valid for the program's run.
        Some(t) => unsafe { (*t).wait_since = now },
        None => {
            let st = ThreadState {
                oncpu_since: 0,
                wait_since: now,
                pending_wait: 0,
            };
            if THREADS.insert(tid, st, BPF_NOEXIST as u64).is_err() {
                count_drop(Drop::ThreadMapFull);
            }
        }
    }
}
