//! `sched/sched_switch`: on-CPU time, voluntary and involuntary switches, and the end of
//! run-queue waits. Two attachments of one core: the BTF tracepoint (raw arguments, no
//! trace-buffer copy, an exact `preempt` flag) where the kernel offers it with BTF, and
//! the classic tracepoint otherwise.
//!
//! The tracepoint fires in `__schedule` before the switch, so `current` is `prev`. What
//! is known about the task on a CPU (since when, and how long it waited before) lives in
//! a per-CPU slot, so a switch costs one hash lookup for the process and one for `next`'s
//! wait; `THREADS` holds only when each thread became runnable.
//! <https://github.com/torvalds/linux/blob/v6.12/kernel/sched/core.c#L6684>
//!
//! A switch whose `prev` is not the task the slot last saw switched in was preceded by one
//! the hook never saw (some kernels leave some tasks' switches untraced): counted as
//! `switch_unreported`.

use agent_common::{
    CpuState, Drop, ProcKey, RUNTIME_UNKNOWN, ThreadState, prog::SCHED_SWITCH as PROG,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_task, bpf_ktime_get_ns},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    config,
    maps::{CPU_STATE, THREADS},
    util::{
        add, count_drop, current_ids, current_key, hist_add, kread, proc_entry, task_key, task_pid,
        task_runtime, tp_field_at,
    },
};

/// Raw `TASK_DEAD` in `__state` (BTF arguments carry the raw state; kernels ≥ 5.18).
const TASK_DEAD: u32 = 0x80;
/// `EXIT_DEAD | EXIT_ZOMBIE` as the classic tracepoint reports a dying task's state.
const REPORTED_DEAD: i64 = 0x10 | 0x20;

#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let prev_state: u64 = ctx.arg(3);
    let Some(next_tid) = task_pid(next) else {
        return 0;
    };
    let state = prev_state as u32;
    let runtime = task_runtime(prev).unwrap_or(RUNTIME_UNKNOWN);
    let (Some(prev_key), Some(next_key)) = (task_key(prev), task_key(next)) else {
        return 0;
    };
    on_switch(
        preempt & 1 != 0 || state == 0,
        state & TASK_DEAD != 0,
        prev_key,
        next_tid,
        next_key,
        runtime,
    );
    0
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let _ = try_sched_switch(&ctx);
    0
}

fn try_sched_switch(ctx: &TracePointContext) -> Option<()> {
    let state: i64 = tp_field_at::<_, 32>(ctx, PROG, config!(tp.switch_prev_state))?;
    let next_tid: i32 = tp_field_at::<_, 56>(ctx, PROG, config!(tp.switch_next_pid))?;
    // Preempted (TASK_REPORT_MAX) or still running: nothing of TASK_REPORT | IDLE is set.
    let involuntary = state & 0xff == 0;
    // `prev` is `current` here; with BTF offsets its runtime can be read through it.
    let runtime = if config!(task.valid) != 0 {
        let task = unsafe { bpf_get_current_task() } as *const u8;
        kread::<u64>(task, config!(task.task_runtime)).unwrap_or(RUNTIME_UNKNOWN)
    } else {
        RUNTIME_UNKNOWN
    };
    // The next task's process is not known here (no task pointer): userspace asks /proc.
    let unknown = ProcKey::default();
    on_switch(
        involuntary,
        state & REPORTED_DEAD != 0,
        current_key(),
        next_tid as u32,
        unknown,
        runtime,
    );
    Some(())
}

/// `prev_runtime` is [`RUNTIME_UNKNOWN`] when it cannot be read: a plain value, not an
/// `Option`, whose payload the compiler may load unwritten on the `None` path (Linux 5.10's
/// verifier refuses reads of uninitialised stack; newer ones allow them to root).
#[inline(always)]
fn on_switch(
    involuntary: bool,
    prev_dead: bool,
    prev_key: ProcKey,
    next_tid: u32,
    next_key: ProcKey,
    prev_runtime: u64,
) {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(cpu) = CPU_STATE.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; programs on one CPU do not nest for this tracepoint.
    let cpu = unsafe { &mut *cpu };
    cpu.switches = cpu.switches.wrapping_add(1);
    let (prev_tid, _) = current_ids();
    if cpu.since != 0 && cpu.tid != prev_tid {
        // The switch that put `prev` on this CPU was not reported to this hook.
        count_drop(PROG, Drop::SwitchUnreported);
    }
    if prev_tid != 0 {
        switch_out(
            now,
            cpu,
            prev_tid,
            prev_key,
            involuntary,
            prev_dead,
            prev_runtime,
        );
    }
    switch_in(now, cpu, next_tid, next_key);
}

/// Accounts the slice that ends: the scheduler's own runtime delta when the task's BTF
/// offsets are known (exact, and immune to switches this hook never saw: some tasks'
/// switches are not traced), else the time since this CPU saw the task switched in.
#[inline(always)]
fn switch_out(
    now: u64,
    cpu: &mut CpuState,
    tid: u32,
    key: ProcKey,
    involuntary: bool,
    dead: bool,
    runtime: u64,
) {
    let known = runtime != RUNTIME_UNKNOWN;
    let thread = THREADS.get_ptr_mut(tid);
    if let Some(proc) = proc_entry(PROG, key) {
        if involuntary {
            add(&mut proc.involuntary_switches, 1);
        } else {
            add(&mut proc.voluntary_switches, 1);
        }
        match (known, thread) {
            (true, Some(t)) => {
                // SAFETY: map value, valid for the program's run.
                let last = unsafe { (*t).last_runtime };
                if last != RUNTIME_UNKNOWN && runtime > last {
                    add(&mut proc.cpu_ns, runtime - last);
                }
            }
            (true, None) => {}
            (false, _) => {
                if cpu.tid == tid && cpu.since != 0 && now > cpu.since {
                    add(&mut proc.cpu_ns, now - cpu.since);
                }
            }
        }
        if cpu.tid == tid {
            cpu.out_since = cpu.since;
            // SAFETY: map value, valid for the program's run; other CPUs add to it.
            cpu.out_total = unsafe { core::ptr::read_volatile(&proc.cpu_ns) };
            if cpu.pending_wait != 0 {
                add(&mut proc.runq_wait_ns, cpu.pending_wait);
                add(&mut proc.runq_waits, 1);
                hist_add(&mut proc.runq_hist, cpu.pending_wait);
            }
        }
    }
    if dead {
        let _ = THREADS.remove(tid);
        return;
    }
    match thread {
        Some(t) => {
            // SAFETY: map value, valid for the program's run.
            let t = unsafe { &mut *t };
            if known {
                t.last_runtime = runtime;
            }
            if involuntary {
                // Still runnable: back in the run queue from now.
                t.wait_since = now;
            }
        }
        None => {
            let st = ThreadState {
                wait_since: if involuntary { now } else { 0 },
                last_runtime: runtime,
            };
            if THREADS.insert(tid, st, BPF_NOEXIST as u64).is_err() {
                count_drop(PROG, Drop::ThreadMapFull);
            }
        }
    }
}

#[inline(always)]
fn switch_in(now: u64, cpu: &mut CpuState, tid: u32, owner: ProcKey) {
    cpu.tid = tid;
    cpu.owner_tgid = owner.tgid;
    cpu.owner_start_ns = owner.start_ns;
    cpu.since = now;
    cpu.pending_wait = 0;
    if tid == 0 {
        return;
    }
    if let Some(t) = THREADS.get_ptr_mut(tid) {
        // SAFETY: map value, valid for the program's run.
        let t = unsafe { &mut *t };
        if t.wait_since != 0 && now > t.wait_since {
            cpu.pending_wait = now - t.wait_since;
        }
        t.wait_since = 0;
    }
}
