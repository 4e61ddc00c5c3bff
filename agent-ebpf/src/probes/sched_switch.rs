//! `sched/sched_switch`: on-CPU time, voluntary and involuntary switches, and the end of
//! run-queue waits. Two attachments of one core: the BTF tracepoint (raw arguments, no
//! trace-buffer copy, an exact `preempt` flag) where the kernel offers it with BTF, and
//! the classic tracepoint otherwise.
//!
//! The tracepoint fires in `__schedule` before the switch, so `current` is `prev`; the
//! tgid of `next` is not needed: a thread's completed run-queue wait is parked in its
//! `THREADS` entry and added to its process when it is next switched out.
//! <https://github.com/torvalds/linux/blob/v6.12/kernel/sched/core.c#L6684>

use agent_common::{Drop, ThreadState, prog::SCHED_SWITCH as PROG};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    config,
    maps::THREADS,
    util::{add, count_drop, current_ids, hist_add, proc_entry, task_pid, tp_field},
};

/// Raw `TASK_DEAD` in `__state` (BTF arguments carry the raw state; kernels ≥ 5.18).
const TASK_DEAD: u32 = 0x80;
/// `EXIT_DEAD | EXIT_ZOMBIE` as the classic tracepoint reports a dying task's state.
const REPORTED_DEAD: i64 = 0x10 | 0x20;

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let next: *const u8 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    let Some(next_tid) = task_pid(next) else {
        return 0;
    };
    let state = prev_state as u32;
    on_switch(
        preempt & 1 != 0 || state == 0,
        state & TASK_DEAD != 0,
        next_tid,
    );
    0
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let _ = try_sched_switch(&ctx);
    0
}

fn try_sched_switch(ctx: &TracePointContext) -> Option<()> {
    let state: i64 = tp_field(ctx, PROG, config!(tp.switch_prev_state))?;
    let next_tid: i32 = tp_field(ctx, PROG, config!(tp.switch_next_pid))?;
    // Preempted (TASK_REPORT_MAX) or still running: nothing of TASK_REPORT | IDLE is set.
    let involuntary = state & 0xff == 0;
    on_switch(involuntary, state & REPORTED_DEAD != 0, next_tid as u32);
    Some(())
}

#[inline(always)]
fn on_switch(involuntary: bool, prev_dead: bool, next_tid: u32) {
    let now = unsafe { bpf_ktime_get_ns() };
    let (prev_tid, prev_tgid) = current_ids();
    if prev_tid != 0 {
        switch_out(now, prev_tid, prev_tgid, involuntary, prev_dead);
    }
    if next_tid != 0 {
        switch_in(now, next_tid);
    }
}

#[inline(always)]
fn switch_out(now: u64, tid: u32, tgid: u32, involuntary: bool, dead: bool) {
    let Some(proc) = proc_entry(PROG, tgid) else {
        return;
    };
    if involuntary {
        add(&mut proc.involuntary_switches, 1);
    } else {
        add(&mut proc.voluntary_switches, 1);
    }
    match THREADS.get_ptr_mut(tid) {
        Some(t) => {
            // SAFETY: map value, valid for the program's run.
            let t = unsafe { &mut *t };
            if t.oncpu_since != 0 && now > t.oncpu_since {
                add(&mut proc.cpu_ns, now - t.oncpu_since);
            }
            if t.pending_wait != 0 {
                add(&mut proc.runq_wait_ns, t.pending_wait);
                add(&mut proc.runq_waits, 1);
                hist_add(&mut proc.runq_hist, t.pending_wait);
            }
            if dead {
                let _ = THREADS.remove(tid);
            } else {
                t.oncpu_since = 0;
                t.pending_wait = 0;
                t.wait_since = if involuntary { now } else { 0 };
            }
        }
        None if !dead => {
            // First sight of a thread that was already running when we attached.
            let st = ThreadState {
                oncpu_since: 0,
                wait_since: if involuntary { now } else { 0 },
                pending_wait: 0,
            };
            if THREADS.insert(tid, st, BPF_NOEXIST as u64).is_err() {
                count_drop(PROG, Drop::ThreadMapFull);
            }
        }
        None => {}
    }
}

#[inline(always)]
fn switch_in(now: u64, tid: u32) {
    match THREADS.get_ptr_mut(tid) {
        Some(t) => {
            // SAFETY: map value, valid for the program's run.
            let t = unsafe { &mut *t };
            if t.wait_since != 0 && now > t.wait_since {
                t.pending_wait = now - t.wait_since;
            }
            t.wait_since = 0;
            t.oncpu_since = now;
        }
        None => {
            let st = ThreadState {
                oncpu_since: now,
                wait_since: 0,
                pending_wait: 0,
            };
            if THREADS.insert(tid, st, BPF_NOEXIST as u64).is_err() {
                count_drop(PROG, Drop::ThreadMapFull);
            }
        }
    }
}
