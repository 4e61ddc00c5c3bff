//! Process lifecycle: `sched/sched_process_exec`, `sched_process_fork` and
//! `sched_process_exit` become [`LifecycleEvent`]s in the `EVENTS` ring buffer.
//!
//! Thread creation and thread exits are not sent (the per-process counters cover threads);
//! only process forks and the exit of a process's last thread are. The parent's tgid, the
//! exit code and whether an exit ends the process come from BTF offsets; without BTF the
//! event is flagged [`FLAG_PARTIAL`] and userspace resolves what it can. An exit carries
//! the process's final counters, read from its tasks ([`ExitEvent`]): once it is gone the
//! task iterator cannot see it.

use agent_common::{
    ABSENT, ARGV_LEN, CONFIG_WAKE_ON_EXEC, Drop, EVENT_EXEC, EVENT_EXIT, EVENT_FORK, EVENT_FREE,
    ExecEvent, ExitEvent, FILENAME_LEN, FLAG_GROUP_DEAD, FLAG_GROUP_UNKNOWN, FLAG_NO_ARGV,
    FLAG_PARTIAL, FLAG_THREAD, FLAG_TOTAL, ITER_CTL_WALK_START, LifecycleEvent, ProcKey,
    RING_WAKE_EVERY_NS, TaskRecord, prog,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    cty::c_void,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_task,
        bpf_ktime_get_boot_ns, bpf_ktime_get_ns, bpf_probe_read_kernel_str_bytes, generated,
    },
    macros::{btf_tracepoint, tracepoint},
    maps::ring_buf::RingBufEntry,
    programs::{BtfTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;

use crate::{
    config,
    maps::{EVENTS, EXITED_IO, FREED, FREED_SCRATCH, ITER_CTL, LAST_WAKE, UNHELD, forget_seen},
    util::{
        Direct, Mem, Probe, add, add_record, add_thread, count_drop, current_ids, current_key,
        current_start, kread, proc_entry, retire_stale, retire_thread_io, task_ids, task_key,
        task_record_signal, task_record_thread, tp_field, tp_field_at, zero_record,
    },
};

/// Reserves an event, fills the common fields from `current`, lets `fill` finish it.
#[inline(always)]
fn emit(kind: u32, fill: impl FnOnce(&mut LifecycleEvent)) {
    let Some(mut entry) = EVENTS.reserve::<LifecycleEvent>(0) else {
        let p = match kind {
            EVENT_EXEC => prog::SCHED_PROCESS_EXEC,
            EVENT_FORK => prog::SCHED_PROCESS_FORK,
            _ => prog::SCHED_PROCESS_EXIT,
        };
        count_drop(p, Drop::RingBufFull);
        return;
    };
    // SAFETY: a reserved, exclusively owned ring-buffer slot of the right size.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_common(ev, kind);
    fill(ev);
    submit(entry, false);
}

/// The fields every event has, from `current`.
#[inline(always)]
fn fill_common(ev: &mut LifecycleEvent, kind: u32) {
    let (pid, tgid) = current_ids();
    ev.kind = kind;
    ev.flags = 0;
    ev.pid = pid;
    ev.tgid = tgid;
    ev.ppid = 0;
    ev.exit_code = 0;
    ev.timestamp_ns = unsafe { bpf_ktime_get_boot_ns() };
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.start_ns = current_start();
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    ev.filename[0] = 0;
}

/// Wakes the reader when no wakeup went out for [`RING_WAKE_EVERY_NS`] (the first event
/// after a quiet spell is read at once; the reader drains again that long after each
/// wakeup, so events sent without one wait at most that long), when a batch has built up,
/// or when `wake` (an exec while the allocate stage places requests as they start). A
/// wakeup per event would cost microseconds each (irq_work and an IPI); a reader draining
/// on a timer would wake twenty times a second on an idle machine.
#[inline(always)]
fn submit<T>(entry: RingBufEntry<T>, wake: bool) {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    let now = unsafe { bpf_ktime_get_ns() };
    let last = LAST_WAKE.get_ptr_mut(0);
    // SAFETY: the map's one slot, valid for the program's run; racing CPUs at worst both
    // wake the reader.
    let quiet = last.is_some_and(|l| now.wrapping_sub(unsafe { *l }) >= RING_WAKE_EVERY_NS);
    let flags = if wake || quiet || pending >= size / 8 {
        if let Some(l) = last {
            unsafe { *l = now };
        }
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

/// tgid of `current`'s parent, or `None` without BTF.
#[inline(always)]
fn current_ppid() -> Option<u32> {
    if config!(task.valid) == 0 {
        return None;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let parent: *const u8 = kread(task, config!(task.task_real_parent))?;
    let tgid: i32 = kread(parent, config!(task.task_tgid))?;
    Some(tgid as u32)
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    // A new image: its cgroup is the one it execs in.
    if let Some(p) = proc_entry(prog::SCHED_PROCESS_EXEC, current_key()) {
        p.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        add(&mut p.execs, 1);
    }
    let loc: Option<u32> =
        tp_field_at::<_, 8>(&ctx, prog::SCHED_PROCESS_EXEC, config!(tp.exec_filename));
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count_drop(prog::SCHED_PROCESS_EXEC, Drop::RingBufFull);
        return 0;
    };
    // SAFETY: a reserved, exclusively owned ring-buffer slot of the right size.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_common(&mut ev.base, EVENT_EXEC);
    match current_ppid() {
        Some(ppid) => ev.base.ppid = ppid,
        None => ev.base.flags |= FLAG_PARTIAL,
    }
    if let Some(loc) = loc {
        // __data_loc: low 16 bits offset from the record start, high 16 bits length.
        let off = (loc & 0xffff) as usize;
        let src = unsafe { (ctx.as_ptr() as *const u8).add(off) };
        let dst: &mut [u8; FILENAME_LEN] = &mut ev.base.filename;
        if unsafe { bpf_probe_read_kernel_str_bytes(src, dst) }.is_err() {
            ev.base.filename[0] = 0;
            count_drop(prog::SCHED_PROCESS_EXEC, Drop::ReadFailed);
            warn!(
                &ctx,
                "exec of pid {}: cannot read the file name", ev.base.pid
            );
        }
    }
    if !read_argv(ev) {
        ev.argv_len = 0;
        ev.argv_total = 0;
        ev.base.flags |= FLAG_NO_ARGV;
    }
    submit(entry, config!(flags) & CONFIG_WAKE_ON_EXEC != 0);
    0
}

/// The new image's arguments, `current->mm->arg_start..arg_end`, as far as `ev.argv`
/// holds them. The kernel has just written them into the new memory map (the tracepoint
/// fires after the binary is loaded), so the pages are present. `false` without BTF
/// offsets or when the read fails: userspace falls back to `/proc/<pid>/cmdline`.
#[inline(always)]
fn read_argv(ev: &mut ExecEvent) -> bool {
    if config!(task.valid) == 0 {
        return false;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Some(mm) = kread::<*const u8>(task, config!(task.task_mm)) else {
        return false;
    };
    let (Some(start), Some(end)) = (
        kread::<u64>(mm, config!(task.mm_arg_start)),
        kread::<u64>(mm, config!(task.mm_arg_end)),
    ) else {
        return false;
    };
    if end <= start {
        return false;
    }
    let total = end - start;
    // A size the verifier can bound: the whole buffer, or less than it.
    let n = if total >= ARGV_LEN as u64 {
        ARGV_LEN as u32
    } else {
        total as u32 & (ARGV_LEN as u32 - 1)
    };
    // SAFETY: `n` bytes fit in `ev.argv`; the helper checks the user address.
    let r = unsafe {
        generated::bpf_probe_read_user(
            ev.argv.as_mut_ptr() as *mut c_void,
            n,
            start as *const c_void,
        )
    };
    if r != 0 {
        return false;
    }
    ev.argv_len = n;
    ev.argv_total = if total > u32::MAX as u64 {
        u32::MAX
    } else {
        total as u32
    };
    true
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork_btf(ctx: BtfTracePointContext) -> i32 {
    let child: *const u8 = ctx.arg(1);
    let (Some((child_pid, child_tgid)), Some(key)) = (task_ids(child), task_key(child)) else {
        return 0;
    };
    let (_, parent_tgid) = current_ids();
    if child_tgid == parent_tgid {
        // A new thread: its work lands in its process's counters.
        return 0;
    }
    emit(EVENT_FORK, |ev| {
        ev.ppid = parent_tgid;
        ev.pid = child_pid;
        ev.tgid = child_tgid;
        ev.start_ns = key.start_ns;
    });
    0
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let Some(child) =
        tp_field_at::<i32, 20>(&ctx, prog::SCHED_PROCESS_FORK, config!(tp.fork_child_pid))
    else {
        return 0;
    };
    // Without BTF, the child's pid is free only if no live process or thread holds it.
    if config!(task.valid) == 0 {
        retire_stale(prog::SCHED_PROCESS_FORK, child as u32);
    }
    emit(EVENT_FORK, |ev| {
        // Without the child's task we cannot tell a thread from a process, nor when it
        // started: userspace does.
        ev.ppid = ev.tgid;
        ev.pid = child as u32;
        ev.tgid = 0;
        ev.start_ns = 0;
        ev.flags |= FLAG_PARTIAL | FLAG_THREAD;
    });
    0
}

/// The end of a process, with exact final counters: its leader's `task_struct` is freed
/// after the last thread's final switch (which accounted its last slice) and the reap,
/// which folded every task's counters into `signal_struct`.
/// Leaders only; runs from an RCU callback, so `current` is unrelated.
#[btf_tracepoint(function = "sched_process_free")]
pub fn sched_process_free_btf(ctx: BtfTracePointContext) -> i32 {
    let task: *const u8 = ctx.arg(0);
    if config!(task.valid) == 0 || task.is_null() {
        return 0;
    }
    let pid = Direct::read::<i32>(task, config!(task.task_pid));
    let tgid = Direct::read::<i32>(task, config!(task.task_tgid));
    // The task iterator's record of this thread goes with it.
    forget_seen(pid as u32);
    if pid != tgid {
        return 0;
    }
    let start = Direct::read::<u64>(task, config!(task.task_start));
    let key = ProcKey {
        tgid: tgid as u32,
        _pad: 0,
        start_ns: start,
    };
    let reserved = EVENTS.reserve::<ExitEvent>(0);
    free_totals(reserved, task, pid, key);
    // The process is gone: its exited threads' I/O is in its final totals.
    let _ = EXITED_IO.remove(key);
    0
}

/// The free of `task`'s process: its final totals through the ring (`reserved`), else
/// `FREED`, else `UNHELD`.
#[inline(always)]
fn free_totals(reserved: Option<RingBufEntry<ExitEvent>>, task: *const u8, pid: i32, key: ProcKey) {
    let (tgid, start) = (key.tgid as i32, key.start_ns);
    let Some(mut entry) = reserved else {
        // The ring is full: the totals wait in `FREED` for the next tick.
        let kept = FREED_SCRATCH.get_ptr_mut(0).is_some_and(|r| {
            // SAFETY: this CPU's slot; this program does not nest on a CPU.
            let r = unsafe { &mut *r };
            zero_record(r);
            final_totals(r, task, pid, tgid, start);
            // By reference: a copy of the record is what does not fit the stack.
            #[allow(clippy::needless_borrows_for_generic_args)]
            FREED.insert(key, &*r, 0).is_ok()
        });
        if !kept {
            // Its owner is lost (counted). A process no walk of the task iterator saw had
            // none of its time reported: its counters go into `UNHELD`. One a walk saw
            // loses what it used since.
            count_drop(prog::SCHED_PROCESS_FREE, Drop::RingBufFull);
            let walk_start = ITER_CTL
                .get_ptr(ITER_CTL_WALK_START)
                // SAFETY: a slot of the map, read once.
                .map_or(0, |v| unsafe { *v });
            if start > walk_start
                && let (Some(r), Some(sum)) = (FREED_SCRATCH.get_ptr(0), UNHELD.get_ptr_mut(0))
            {
                // SAFETY: this CPU's slots, as above.
                add_record(unsafe { &mut *sum }, unsafe { &*r });
            }
        }
        return;
    };
    // SAFETY: a reserved, exclusively owned ring-buffer slot of the right size.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    zero_record(&mut ev.total);
    final_totals(&mut ev.total, task, pid, tgid, start);
    let b = &mut ev.base;
    b.kind = EVENT_FREE;
    b.flags = FLAG_TOTAL;
    b.pid = pid as u32;
    b.tgid = tgid as u32;
    b.ppid = 0;
    b.exit_code = 0;
    b.timestamp_ns = unsafe { bpf_ktime_get_boot_ns() };
    b.cgroup_id = 0;
    b.start_ns = ev.total.start_ns;
    b.comm = [0; 16];
    b.filename[0] = 0;
    submit(entry, false);
}

/// A freed process's totals into a zeroed record: every task of the process, the leader
/// last (at its reap, after its final switch), has been folded into `signal_struct` by
/// now, so its totals are the process's.
#[inline(always)]
fn final_totals(r: &mut TaskRecord, task: *const u8, pid: i32, tgid: i32, start: u64) {
    r.tid = pid as u32;
    r.tgid = tgid as u32;
    r.start_ns = start;
    task_record_signal::<Direct>(r, task);
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let (pid, tgid) = current_ids();
    // The task iterator's record of this thread (again when the task is freed: a zombie
    // the iterator visits after this is recorded anew).
    forget_seen(pid);
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let btf = config!(task.valid) != 0;
    if btf {
        // This thread's I/O, final now, joins its process's exited threads'.
        retire_thread_io::<Probe>(prog::SCHED_PROCESS_EXIT, current_key(), task);
    }
    // Whether this thread is the last of its process: the tracepoint's own `group_dead`
    // (6.16+), else `signal->live` (decremented before the tracepoint), else unknown.
    let group = match config!(tp.exit_group_dead) {
        ABSENT if btf => kread::<*const u8>(task, config!(task.task_signal))
            .and_then(|sig| kread::<i32>(sig, config!(task.signal_live)))
            .map(|live| live == 0),
        ABSENT => None,
        off => tp_field::<u8>(&ctx, prog::SCHED_PROCESS_EXIT, off).map(|d| d != 0),
    };
    let flags = match group {
        Some(true) => FLAG_GROUP_DEAD,
        Some(false) => return 0,
        // Unknown: report the leader's exit, flagged.
        None if pid == tgid => FLAG_GROUP_UNKNOWN,
        None => return 0,
    };
    // Plain values, not an `Option` whose unwritten payload the compiler may load on the
    // `None` path: Linux 5.10's verifier refuses reads of uninitialised stack.
    let (code, partial) = match btf {
        true => match kread::<i32>(task, config!(task.task_exit_code)) {
            Some(c) => (c, 0),
            None => (0, FLAG_PARTIAL),
        },
        false => (0, FLAG_PARTIAL),
    };
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        count_drop(prog::SCHED_PROCESS_EXIT, Drop::RingBufFull);
        return 0;
    };
    // SAFETY: a reserved, exclusively owned ring-buffer slot of the right size.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    fill_common(&mut ev.base, EVENT_EXIT);
    ev.base.flags = flags | partial;
    ev.base.exit_code = code;
    if let Some(ppid) = current_ppid() {
        ev.base.ppid = ppid;
    }
    zero_record(&mut ev.total);
    if btf {
        // The process's final counters: this thread, a leader that went before it (a
        // zombie keeps its own counters), and the threads that exited earlier.
        task_record_thread::<Probe>(&mut ev.total, task);
        let leader = Probe::ptr(task, config!(task.task_group_leader));
        if !leader.is_null() && leader != task {
            add_thread::<Probe>(&mut ev.total, leader);
        }
        // Every thread's I/O is in `EXITED_IO` now, this one's and the leader's too.
        ev.total.ioac = [0; 6];
        task_record_signal::<Probe>(&mut ev.total, task);
        ev.base.flags |= FLAG_TOTAL;
    }
    submit(entry, false);
    0
}
