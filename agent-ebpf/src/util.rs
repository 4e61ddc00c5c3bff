//! Helpers shared by the probes: process entries, atomic counters, drop accounting,
//! config reads.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use agent_common::{
    ABSENT, DROP_SLOTS, Drop, ExitedKey, HIST_BUCKETS, ProcStats, drop_slot, hist_bucket,
};
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel},
    programs::TracePointContext,
};

use crate::maps::{DROPS, EXITED, PROC_STATS, ZERO_STATS};

/// Reads one field of [`CONFIG`]; volatile so the compiler does not fold the default.
#[macro_export]
macro_rules! config {
    ($($path:tt)+) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.$($path)+) }
    };
}

#[inline(always)]
pub fn add(counter: &mut u64, v: u64) {
    // SAFETY: `counter` points into a map value, which is 8-byte aligned and lives as
    // long as the program runs; other CPUs update it concurrently, hence the atomic.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, v) };
}

#[inline(always)]
pub fn hist_add(hist: &mut [u32; HIST_BUCKETS], ns: u64) {
    let b = hist_bucket(ns);
    if b < HIST_BUCKETS {
        // SAFETY: as in `add`; `b` is in bounds.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&mut hist[b], 1) };
    }
}

#[inline(always)]
pub fn count_drop(prog: u32, kind: Drop) {
    let i = drop_slot(prog, kind) as usize;
    if let Some(table) = DROPS.get_ptr_mut(0)
        && i < DROP_SLOTS
    {
        // SAFETY: this CPU's table, `i` in bounds; programs do not nest on a CPU for the
        // tracepoints used here.
        unsafe { (*table).0[i] += 1 };
    }
}

/// The counters of process `tgid`, created on first sight. `None` (and a counted drop)
/// when the map is full.
#[inline(always)]
pub fn proc_entry(prog: u32, tgid: u32) -> Option<&'static mut ProcStats> {
    if let Some(p) = PROC_STATS.get_ptr_mut(tgid) {
        // SAFETY: map values stay valid for the program's run.
        return Some(unsafe { &mut *p });
    }
    let zero = ZERO_STATS.get_ptr(0)?;
    // SAFETY: `zero` is a valid per-CPU map value of the right type.
    let zero = unsafe { &*zero };
    match PROC_STATS.insert(tgid, zero, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU inserted it first: fine, look it up below.
        Err(-17) => {}
        Err(_) => {
            count_drop(prog, Drop::ProcMapFull);
            return None;
        }
    }
    let p = PROC_STATS.get_ptr_mut(tgid)?;
    // SAFETY: as above.
    let p = unsafe { &mut *p };
    if p.first_seen_ns == 0 {
        p.first_seen_ns = unsafe { bpf_ktime_get_boot_ns() };
        p.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    }
    Some(p)
}

/// A new process is getting `tgid`: an entry still under that tgid belongs to a process
/// that is gone (a live one would still hold the pid); move it to `EXITED` for userspace.
#[inline(always)]
pub fn retire_stale(prog: u32, tgid: u32) {
    let Some(old) = PROC_STATS.get_ptr(tgid) else {
        return;
    };
    // SAFETY: map value, valid for the program's run.
    let old = unsafe { &*old };
    let key = ExitedKey {
        tgid,
        _pad: 0,
        first_seen_ns: old.first_seen_ns,
    };
    if EXITED.insert(key, old, 0).is_err() {
        count_drop(prog, Drop::ExitedMapFull);
    }
    let _ = PROC_STATS.remove(tgid);
}

/// Only when `tgid` is tracked already: for events seen outside the process's own
/// context, which must not create entries for processes that have gone.
#[inline(always)]
pub fn proc_existing(tgid: u32) -> Option<&'static mut ProcStats> {
    // SAFETY: map values stay valid for the program's run.
    PROC_STATS.get_ptr_mut(tgid).map(|p| unsafe { &mut *p })
}

/// Reads a `T` at `offset` in a classic tracepoint's record. `None` when the offset is
/// [`ABSENT`] (the field does not exist on this kernel) or the read fails (counted).
#[inline(always)]
pub fn tp_field<T>(ctx: &TracePointContext, prog: u32, offset: u32) -> Option<T> {
    if offset == ABSENT || offset > 4096 {
        return None;
    }
    // SAFETY: the offset comes from this kernel's tracefs format for this tracepoint.
    match unsafe { ctx.read_at::<T>(offset as usize) } {
        Ok(v) => Some(v),
        Err(_) => {
            count_drop(prog, Drop::ReadFailed);
            None
        }
    }
}

/// Like [`tp_field`], with the offset this field has had on every kernel so far: when the
/// running kernel agrees (the usual case) the field is a direct context load, which the
/// verifier allows only at a constant offset, and no helper call.
#[inline(always)]
pub fn tp_field_at<T: Copy, const USUAL: usize>(
    ctx: &TracePointContext,
    prog: u32,
    offset: u32,
) -> Option<T> {
    if offset as usize == USUAL {
        // SAFETY: the tracepoint record holds a `T` at USUAL on this kernel (tracefs says so).
        Some(unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(USUAL).cast::<T>()) })
    } else {
        tp_field(ctx, prog, offset)
    }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn kread<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()) }.ok()
}

/// The pid (thread id) of a task from a BTF tracepoint argument, through its BTF offset.
/// A direct load: the verifier checks it against the task's BTF type, no helper call.
#[inline(always)]
pub fn task_pid(task: *const u8) -> Option<u32> {
    if config!(task.valid) == 0 || task.is_null() {
        return None;
    }
    let off = config!(task.task_pid) as usize;
    // SAFETY: `task` is a trusted `task_struct *` argument and `off` its `pid` member.
    Some(unsafe { core::ptr::read(task.add(off).cast::<i32>()) } as u32)
}

/// `se.sum_exec_runtime` of a task from a BTF tracepoint argument (direct load).
#[inline(always)]
pub fn task_runtime(task: *const u8) -> Option<u64> {
    if config!(task.valid) == 0 || task.is_null() {
        return None;
    }
    let off = config!(task.task_runtime) as usize;
    // SAFETY: `task` is a trusted `task_struct *` argument and `off` the runtime member.
    Some(unsafe { core::ptr::read(task.add(off).cast::<u64>()) })
}

/// `tgid` and `pid` of a task, through its BTF offsets.
#[inline(always)]
pub fn task_ids(task: *const u8) -> Option<(u32, u32)> {
    if config!(task.valid) == 0 {
        return None;
    }
    let pid: i32 = kread(task, config!(task.task_pid))?;
    let tgid: i32 = kread(task, config!(task.task_tgid))?;
    Some((pid as u32, tgid as u32))
}

#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    (id as u32, (id >> 32) as u32)
}
