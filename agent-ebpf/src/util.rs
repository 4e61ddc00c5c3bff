//! Helpers shared by the probes: process keys and entries, atomic counters, drop
//! accounting, reads of kernel structures through their BTF offsets, config reads.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use agent_common::{
    ABSENT, DROP_SLOTS, Drop, ExitedKey, HIST_BUCKETS, ProcKey, ProcStats, REC_MM, RSS_MEMBERS,
    TaskRecord, drop_slot, hist_bucket,
};
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel,
    },
    programs::TracePointContext,
};

use crate::maps::{DROPS, EXITED, EXITED_IO, PROC_STATS, START_OF, ZERO_STATS};

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

/// Counts a drop. Atomic: a program on this CPU can be interrupted by another that
/// counts into the same table (a wakeup from a hardirq during a syscall's exit).
#[inline(always)]
pub fn count_drop(prog: u32, kind: Drop) {
    let i = drop_slot(prog, kind) as usize;
    if let Some(table) = DROPS.get_ptr_mut(0)
        && i < DROP_SLOTS
    {
        // SAFETY: this CPU's table, `i` in bounds.
        unsafe { add(&mut (*table).0[i], 1) };
    }
}

/// Reads of kernel memory at a BTF offset; [`ABSENT`] members read as zero.
pub trait Mem {
    fn read<T: Copy + Default>(base: *const u8, off: u32) -> T;

    /// A pointer member, as an address (0: NULL or unreadable).
    #[inline(always)]
    fn ptr(base: *const u8, off: u32) -> *const u8 {
        Self::read::<u64>(base, off) as *const u8
    }
}

/// Direct loads through a pointer the verifier knows the BTF type of (a BTF tracepoint's
/// or an iterator's task): no helper call, fault-safe, checked against the type at load.
pub struct Direct;

impl Mem for Direct {
    #[inline(always)]
    fn read<T: Copy + Default>(base: *const u8, off: u32) -> T {
        if off == ABSENT {
            return T::default();
        }
        // SAFETY: `base` is a BTF pointer (or one loaded through one): the verifier checks
        // the access against its type and turns it into a fault-safe load.
        unsafe { core::ptr::read(base.add(off as usize).cast::<T>()) }
    }
}

/// `bpf_probe_read_kernel`, for addresses without a BTF type (`bpf_get_current_task`).
pub struct Probe;

impl Mem for Probe {
    #[inline(always)]
    fn read<T: Copy + Default>(base: *const u8, off: u32) -> T {
        if off == ABSENT || base.is_null() {
            return T::default();
        }
        kread(base, off).unwrap_or_default()
    }
}

/// `a + b`, or [`ABSENT`] when either is.
#[inline(always)]
pub const fn at(a: u32, b: u32) -> u32 {
    if a == ABSENT || b == ABSENT {
        ABSENT
    } else {
        a + b
    }
}

/// `r` as a record of zeros, stored 8 bytes at a time. LLVM zeroes a record this size with a
/// call to `memset`, which for BPF stores one byte at a time in a loop: the task iterator's
/// two records per process were 8% of the agent's CPU with 10,000 threads alive. Volatile
/// stores are not merged back into that call. In place: a record returned by value is
/// copied, and two of them overflow the 512-byte stack.
#[inline(always)]
pub fn zeroed_record(r: &mut core::mem::MaybeUninit<TaskRecord>) -> &mut TaskRecord {
    // SAFETY: `r` is TaskRecord-sized and aligned; all its bytes are written, and zero is
    // valid in each of its integer fields.
    unsafe {
        zero_words(r.as_mut_ptr());
        r.assume_init_mut()
    }
}

/// [`zeroed_record`]'s zeroing, in place (a record in a ring-buffer slot).
#[inline(always)]
pub fn zero_record(r: &mut TaskRecord) {
    // SAFETY: a live, exclusively borrowed record; zero is valid in its integer fields.
    unsafe { zero_words(r) }
}

/// # Safety
/// `r` must be valid for writes of a `TaskRecord`.
#[inline(always)]
unsafe fn zero_words(r: *mut TaskRecord) {
    const WORDS: usize = size_of::<TaskRecord>() / 8;
    const _: () =
        assert!(size_of::<TaskRecord>().is_multiple_of(8) && align_of::<TaskRecord>() == 8);
    let p = r.cast::<u64>();
    let mut i = 0;
    while i < WORDS {
        // SAFETY: within the record (the caller's promise), 8-aligned.
        unsafe { p.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Adds `src`'s counters (every field after its ids, start and cgroup) into `dst`, 8 bytes
/// at a time, wrapping. Plain adds: `dst` is a per-CPU slot of a program that does not
/// nest on a CPU.
#[inline(always)]
pub fn add_record(dst: &mut TaskRecord, src: &TaskRecord) {
    const WORDS: usize = size_of::<TaskRecord>() / 8;
    const FIRST: usize = core::mem::offset_of!(TaskRecord, runtime_ns) / 8;
    let d = (dst as *mut TaskRecord).cast::<u64>();
    let s = (src as *const TaskRecord).cast::<u64>();
    let mut i = FIRST;
    while i < WORDS {
        // SAFETY: both are live, 8-aligned records (asserted in `zero_words`); `i` is
        // within them.
        unsafe {
            d.add(i)
                .write_volatile(d.add(i).read().wrapping_add(s.add(i).read()))
        };
        i += 1;
    }
}

/// Adds one thread's own accounting into `r` and sets its ids, its process's start, its
/// cgroup and (with a memory map) the map's RSS counters.
#[inline(always)]
pub fn task_record_thread<M: Mem>(r: &mut TaskRecord, task: *const u8) {
    r.tid = M::read::<i32>(task, config!(task.task_pid)) as u32;
    r.tgid = M::read::<i32>(task, config!(task.task_tgid)) as u32;
    let leader = M::ptr(task, config!(task.task_group_leader));
    r.start_ns = M::read::<u64>(leader, config!(task.task_start));
    add_thread::<M>(r, task);
    let mm = M::ptr(task, config!(task.task_mm));
    if !mm.is_null() {
        r.flags |= REC_MM;
        let (base, stride, count) = (
            config!(task.mm_rss),
            config!(task.rss_stride),
            config!(task.rss_count),
        );
        if base != ABSENT {
            // Probe reads whatever `M` is: the counters are `atomic_long_t` (an array member
            // before Linux 6.2), which a direct load is refused into before 6.x ("type
            // 'atomic_long_t' is not a struct", Linux 5.10's verifier).
            let mut i = 0;
            while i < RSS_MEMBERS {
                r.rss_pages[i] = Probe::read::<i64>(mm, base + i as u32 * stride + count);
                i += 1;
            }
        }
    }
    let css = M::ptr(task, config!(task.task_cgroups));
    let cgrp = M::ptr(css, config!(task.css_dfl_cgrp));
    let kn = M::ptr(cgrp, config!(task.cgroup_kn));
    r.cgroup_id = M::read::<u64>(kn, config!(task.kn_id));
}

/// Adds a thread's counters (not its ids) into `r`.
#[inline(always)]
pub fn add_thread<M: Mem>(r: &mut TaskRecord, task: *const u8) {
    r.runtime_ns += M::read::<u64>(task, config!(task.task_runtime));
    r.nvcsw += M::read::<u64>(task, config!(task.task_nvcsw));
    r.nivcsw += M::read::<u64>(task, config!(task.task_nivcsw));
    r.run_delay_ns += M::read::<u64>(task, config!(task.task_run_delay));
    r.pcount += M::read::<u64>(task, config!(task.task_pcount));
    r.min_flt += M::read::<u64>(task, config!(task.task_min_flt));
    r.maj_flt += M::read::<u64>(task, config!(task.task_maj_flt));
    add_ioac::<M>(r, task, config!(task.task_ioac));
}

/// Adds the totals of the process's exited threads (`task->signal`; their I/O from
/// `EXITED_IO`) into `r`.
#[inline(always)]
pub fn task_record_signal<M: Mem>(r: &mut TaskRecord, task: *const u8) {
    let sig = M::ptr(task, config!(task.task_signal));
    if sig.is_null() {
        return;
    }
    r.runtime_ns += M::read::<u64>(sig, config!(task.sig_runtime));
    r.nvcsw += M::read::<u64>(sig, config!(task.sig_nvcsw));
    r.nivcsw += M::read::<u64>(sig, config!(task.sig_nivcsw));
    r.min_flt += M::read::<u64>(sig, config!(task.sig_min_flt));
    r.maj_flt += M::read::<u64>(sig, config!(task.sig_maj_flt));
    let leader = M::ptr(task, config!(task.task_group_leader));
    let key = ProcKey {
        tgid: M::read::<i32>(task, config!(task.task_tgid)) as u32,
        _pad: 0,
        start_ns: M::read::<u64>(leader, config!(task.task_start)),
    };
    if let Some(io) = EXITED_IO.get_ptr(key) {
        // SAFETY: a map value, valid for the program's run.
        let io = unsafe { &*io };
        let mut i = 0;
        while i < r.ioac.len() {
            r.ioac[i] += io[i];
            i += 1;
        }
    }
}

/// Adds the exiting thread `task`'s own I/O accounting into its process's `EXITED_IO`
/// entry (made if missing; a full map is a counted drop, that thread's I/O lost).
#[inline(always)]
pub fn retire_thread_io<M: Mem>(prog: u32, key: ProcKey, task: *const u8) {
    let mut own = [0u64; 6];
    let o = config!(task.ioac);
    let base = config!(task.task_ioac);
    let mut i = 0;
    while i < own.len() {
        own[i] = M::read::<u64>(task, at(base, o[i]));
        i += 1;
    }
    if EXITED_IO.get_ptr(key).is_none()
        && let Err(e) = EXITED_IO.insert(key, [0u64; 6], BPF_NOEXIST as u64)
        && e != -17
    {
        count_drop(prog, Drop::ExitedMapFull);
        return;
    }
    if let Some(io) = EXITED_IO.get_ptr_mut(key) {
        // SAFETY: a map value, valid for the program's run; threads of one process exit
        // on several CPUs at once, hence the atomic adds.
        let io = unsafe { &mut *io };
        let mut i = 0;
        while i < own.len() {
            add(&mut io[i], own[i]);
            i += 1;
        }
    }
}

#[inline(always)]
fn add_ioac<M: Mem>(r: &mut TaskRecord, base: *const u8, ioac: u32) {
    let o = config!(task.ioac);
    let mut i = 0;
    while i < r.ioac.len() {
        r.ioac[i] += M::read::<u64>(base, at(ioac, o[i]));
        i += 1;
    }
}

/// The start of `current`'s process (its leader's `start_boottime`); 0 without BTF.
#[inline(always)]
pub fn current_start() -> u64 {
    if config!(task.valid) == 0 {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let leader = Probe::ptr(task, config!(task.task_group_leader));
    Probe::read::<u64>(leader, config!(task.task_start))
}

/// The process of `current`.
#[inline(always)]
pub fn current_key() -> ProcKey {
    let (_, tgid) = current_ids();
    ProcKey {
        tgid,
        _pad: 0,
        start_ns: current_start(),
    }
}

/// The process of a task from a BTF argument (direct loads).
#[inline(always)]
pub fn task_key(task: *const u8) -> Option<ProcKey> {
    if config!(task.valid) == 0 || task.is_null() {
        return None;
    }
    let tgid = Direct::read::<i32>(task, config!(task.task_tgid)) as u32;
    let leader = Direct::ptr(task, config!(task.task_group_leader));
    Some(ProcKey {
        tgid,
        _pad: 0,
        start_ns: Direct::read::<u64>(leader, config!(task.task_start)),
    })
}

/// The counters of process `key`, created on first sight. `None` (and a counted drop)
/// when the map is full.
#[inline(always)]
pub fn proc_entry(prog: u32, key: ProcKey) -> Option<&'static mut ProcStats> {
    if let Some(p) = PROC_STATS.get_ptr_mut(key) {
        // SAFETY: map values stay valid for the program's run.
        return Some(unsafe { &mut *p });
    }
    let zero = ZERO_STATS.get_ptr(0)?;
    // SAFETY: `zero` is a valid per-CPU map value of the right type.
    let zero = unsafe { &*zero };
    match PROC_STATS.insert(key, zero, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // Another CPU inserted it first: fine, look it up below.
        Err(-17) => {}
        Err(_) => {
            count_drop(prog, Drop::ProcMapFull);
            return None;
        }
    }
    let p = PROC_STATS.get_ptr_mut(key)?;
    // SAFETY: as above.
    let p = unsafe { &mut *p };
    if p.first_seen_ns == 0 {
        p.first_seen_ns = unsafe { bpf_ktime_get_boot_ns() };
        p.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        // The start of the process holding this tgid now, for hooks that know only a pid.
        let _ = START_OF.insert(key.tgid, key.start_ns, 0);
    }
    Some(p)
}

/// Without BTF (start 0) a new process gets the key of any earlier holder of its tgid:
/// such an entry belongs to a process that is gone (a live one would still hold the pid);
/// move it to `EXITED` for userspace.
#[inline(always)]
pub fn retire_stale(prog: u32, tgid: u32) {
    let key = ProcKey {
        tgid,
        _pad: 0,
        start_ns: 0,
    };
    let Some(old) = PROC_STATS.get_ptr(key) else {
        return;
    };
    // SAFETY: map value, valid for the program's run.
    let old = unsafe { &*old };
    let exited = ExitedKey {
        tgid,
        _pad: 0,
        first_seen_ns: old.first_seen_ns,
    };
    if EXITED.insert(exited, old, 0).is_err() {
        count_drop(prog, Drop::ExitedMapFull);
    }
    let _ = PROC_STATS.remove(key);
}

/// Only when `key` is tracked already: for events seen outside the process's own
/// context, which must not create entries for processes that have gone. A miss is
/// counted: the event's count is lost.
#[inline(always)]
pub fn proc_existing(prog: u32, key: &ProcKey) -> Option<&'static mut ProcStats> {
    match PROC_STATS.get_ptr_mut(key) {
        // SAFETY: map values stay valid for the program's run.
        Some(p) => Some(unsafe { &mut *p }),
        None => {
            count_drop(prog, Drop::ProcGone);
            None
        }
    }
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
    Some(Direct::read::<i32>(task, config!(task.task_pid)) as u32)
}

/// `se.sum_exec_runtime` of a task from a BTF tracepoint argument (direct load).
#[inline(always)]
pub fn task_runtime(task: *const u8) -> Option<u64> {
    if config!(task.valid) == 0 || task.is_null() {
        return None;
    }
    Some(Direct::read::<u64>(task, config!(task.task_runtime)))
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
