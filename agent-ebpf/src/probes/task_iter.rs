//! `iter/task`: once a tick, userspace reads this iterator and the kernel visits every
//! thread; for each, the kernel's own accounting — what the per-event hooks used to count —
//! goes out as one [`TaskRecord`]: scheduler runtime (`se.sum_exec_runtime`), context
//! switches (`nvcsw`, `nivcsw`), run-queue wait (`sched_info.run_delay`, `pcount`), page
//! faults (`min_flt`, `maj_flt`), I/O accounting (`ioac`) and the memory map's RSS
//! counters. A process's leader also writes the totals of its exited threads
//! (`signal_struct`), when it had any, and, when the process has other threads or had
//! some, the whole process's runtime read at once ([`agent_common::REC_GROUP`]): a thread
//! that ends while the walk is between its leader and it is then neither lost nor counted
//! twice. No hook runs on any scheduler, syscall or fault event for these.
//! A thread that has not run since its last full record (and was not moved, and whose
//! process lost no thread; for a leader, no thread of its process ran) is written as a
//! short mark, [`agent_common::REC_SAME`]: most threads of an edge device sleep through
//! most ticks.
//!
//! aya-ebpf 0.2 has no `#[iter]` attribute: the program is placed in its `iter/task`
//! section by hand, as the attribute macros do for the other program types.
//! <https://github.com/torvalds/linux/blob/v6.12/kernel/bpf/task_iter.c>

use core::ffi::c_void;

use agent_common::{
    ABSENT, Drop, ITER_CTL_GEN, ITER_CTL_IN_WALK, ITER_CTL_WALK, ITER_CTL_WALK_START,
    ITER_REFRESH_WALKS, REC_GROUP, REC_KTHREAD, REC_SAME, REC_SIGNAL, TASK_MARK_BYTES, TaskRecord,
    prog::TASK_ITER as PROG, seen_print,
};
use aya_ebpf::helpers::generated::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel, bpf_seq_write};

use crate::{
    config,
    maps::{ITER_CTL, IterSeen, seen_slot},
    util::{
        Direct, Mem, Probe, count_drop, task_record_signal, task_record_thread, zero_record,
        zeroed_record,
    },
};

/// `PF_KTHREAD` and `PF_EXITING` in `task_struct.flags`.
const PF_KTHREAD: u32 = 0x0020_0000;
const PF_EXITING: u32 = 0x0000_0004;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn task_iter(ctx: *mut c_void) -> i32 {
    // SAFETY: the context of an `iter/task` program is `struct bpf_iter__task { struct
    // bpf_iter_meta *meta; struct task_struct *task; }`; both loads are checked by the
    // verifier against that type.
    let (meta, task) = unsafe {
        let c = ctx as *const *const u8;
        (*c, *c.add(1))
    };
    if task.is_null() {
        // The end of the walk: the next one refreshes another share of the threads.
        if let Some(w) = ITER_CTL.get_ptr_mut(ITER_CTL_WALK) {
            // SAFETY: the map's slot; walks do not overlap (one reader, one walk a tick)
            // and a lost increment only shifts which threads are refreshed.
            unsafe { *w += 1 };
        }
        set_ctl(ITER_CTL_IN_WALK, 0);
        return 0;
    }
    if ctl(ITER_CTL_IN_WALK) == 0 {
        // The walk's first task: when it began.
        set_ctl(ITER_CTL_WALK_START, unsafe { bpf_ktime_get_boot_ns() });
        set_ctl(ITER_CTL_IN_WALK, 1);
    }
    // SAFETY: `meta` is a valid `bpf_iter_meta`, whose first member is the seq file.
    let seq = unsafe { *(meta as *const *mut c_void) };
    // A thread that has not run since its last full record is written as a mark: its
    // counters, which only its own runs move, are as userspace last read them. The
    // values are read before the full record's, so a change between the two makes the
    // next walk write it in full again, never the other way round.
    let tid = Direct::read::<i32>(task, config!(task.task_pid)) as u32;
    let tgid = Direct::read::<i32>(task, config!(task.task_tgid)) as u32;
    // A leader: its process's runtime, read at once (see `group_runtime`) when the process
    // has other threads or had some; it stands in the print for its exited threads'
    // total, so a run of any of its threads writes the leader in full.
    let (sig_runtime, group) = if tid == tgid {
        let sig = Direct::ptr(task, config!(task.task_signal));
        if sig.is_null() {
            (0, None)
        } else {
            let exited = Direct::read::<u64>(sig, config!(task.sig_runtime));
            let threads = Direct::read::<i32>(sig, config!(task.sig_nr_threads));
            let group = if (exited != 0 || threads > 1) && threads as u32 <= GROUP_THREADS {
                group_runtime(Probe::read::<u64>(task, config!(task.task_signal)))
            } else {
                None
            };
            (group.unwrap_or(exited), group)
        }
    } else {
        (0, None)
    };
    let now = IterSeen {
        tid,
        generation: ctl(ITER_CTL_GEN) as u32,
        print: seen_print(
            Direct::read::<u64>(task, config!(task.task_runtime)),
            Direct::read::<u64>(task, config!(task.task_start)),
            sig_runtime,
        ),
        cgroups: Direct::read::<u64>(task, config!(task.task_cgroups)),
    };
    let refresh = (tid as u64)
        .wrapping_add(ctl(ITER_CTL_WALK))
        .is_multiple_of(ITER_REFRESH_WALKS);
    let seen = seen_slot(tid);
    if let Some(s) = seen {
        // SAFETY: the map's slot for `tid`, written by this program (one walk at a time)
        // and cleared by the exit hooks.
        let s = unsafe { &*s };
        if !refresh
            && s.tid == tid
            && s.print == now.print
            && s.cgroups == now.cgroups
            && s.generation == now.generation
        {
            let mark = [tid, tgid, REC_SAME, 0];
            write_bytes(seq, mark.as_ptr().cast(), TASK_MARK_BYTES as u32);
            return 0;
        }
    }
    let mut slot = core::mem::MaybeUninit::<TaskRecord>::uninit();
    let rec = zeroed_record(&mut slot);
    task_record_thread::<Direct>(rec, task);
    let flags: u32 = Direct::read(task, config!(task.task_flags));
    if flags & PF_KTHREAD != 0 {
        rec.flags |= REC_KTHREAD;
    }
    if flags & PF_EXITING != 0 {
        // Its I/O goes (or went) into its process's `EXITED_IO` as it exits: counted there.
        rec.ioac = [0; 6];
    }
    let mut written = write(seq, rec);
    if rec.tid == rec.tgid {
        // The leader: its process's exited threads, once, in the same slot.
        let (tid, tgid, start_ns) = (rec.tid, rec.tgid, rec.start_ns);
        zero_record(rec);
        rec.tid = tid;
        rec.tgid = tgid;
        rec.flags = REC_SIGNAL;
        rec.start_ns = start_ns;
        task_record_signal::<Direct>(rec, task);
        if let Some(g) = group {
            rec.runtime_ns = g;
            rec.flags |= REC_GROUP;
        }
        // Most processes never had a thread exit: nothing to add, no record (half the
        // records of a walk over single-threaded processes).
        let mut any = rec.runtime_ns | rec.nvcsw | rec.nivcsw | rec.min_flt | rec.maj_flt;
        let mut i = 0;
        while i < rec.ioac.len() {
            any |= rec.ioac[i];
            i += 1;
        }
        if any != 0 || group.is_some() {
            written &= write(seq, rec);
        }
    }
    // Remembered only once all of it is in the buffer: a task whose records overflowed it
    // is shown again at the next read, and must be written in full then too.
    if written && let Some(s) = seen {
        // SAFETY: as above; an array's element lives as long as the map.
        unsafe { *s = now };
    }
    0
}

/// Most threads [`group_runtime`] reads of one process: the runtime of a process of more
/// is its threads' records' and its exited threads' sum, as read one by one.
const GROUP_THREADS: u32 = 128;

/// The scheduler runtime of the process whose `signal_struct` is at `sig`: its exited
/// threads' total and each live thread's, read between two equal, even sequences of
/// `stats_lock` — what `thread_group_cputime` does. A thread's exit adds its counters to
/// the signal's and leaves the thread list under that lock: read this way, no thread is
/// in neither (one that ends after the walk passed its leader and before it reached it)
/// nor in both (one the walk passed before its leader, ending in between). Probe reads:
/// the list's entries are addresses the verifier knows no type of. None when the process
/// has more than [`GROUP_THREADS`] threads, or a thread exited during the read (the walk
/// sums its records then).
#[inline(always)]
fn group_runtime(sig: u64) -> Option<u64> {
    let (head_off, node_off, seq_off) = (
        config!(task.sig_thread_head),
        config!(task.task_thread_node),
        config!(task.sig_stats_seq),
    );
    if sig == 0 || head_off == ABSENT || node_off == ABSENT || seq_off == ABSENT {
        return None;
    }
    let (base, head) = (sig as *const u8, sig + head_off as u64);
    // From a thread's list entry to its runtime. The loop makes the raw helper calls (an
    // unreadable address reads as 0): the verifier walks its body once per possible
    // thread, so each instruction in it costs the program's load GROUP_THREADS times.
    let to_runtime = (config!(task.task_runtime) as u64).wrapping_sub(node_off as u64);
    let seq = Probe::read::<u32>(base, seq_off);
    if seq & 1 != 0 {
        return None;
    }
    let mut sum = Probe::read::<u64>(base, config!(task.sig_runtime));
    let mut node = Probe::read::<u64>(head as *const u8, 0);
    let mut n = 0;
    while n < GROUP_THREADS && node != head && node != 0 {
        let (mut runtime, mut next) = (0u64, 0u64);
        // SAFETY: the helper checks the source address; the destinations are 8-byte
        // locals.
        unsafe {
            bpf_probe_read_kernel(
                (&raw mut runtime).cast(),
                8,
                node.wrapping_add(to_runtime) as *const c_void,
            );
            bpf_probe_read_kernel((&raw mut next).cast(), 8, node as *const c_void);
        }
        sum += runtime;
        node = next;
        n += 1;
    }
    // All of the list (not more threads than one read takes, no unreadable entry), and no
    // exit folded in meanwhile.
    (node == head && Probe::read::<u32>(base, seq_off) == seq).then_some(sum)
}

#[inline(always)]
fn ctl(slot: u32) -> u64 {
    // SAFETY: a slot of the map, read once.
    ITER_CTL.get_ptr(slot).map_or(0, |v| unsafe { *v })
}

#[inline(always)]
fn set_ctl(slot: u32, v: u64) {
    if let Some(p) = ITER_CTL.get_ptr_mut(slot) {
        // SAFETY: a slot of the map; walks do not overlap.
        unsafe { *p = v };
    }
}

#[inline(always)]
fn write(seq: *mut c_void, rec: &TaskRecord) -> bool {
    write_bytes(
        seq,
        (rec as *const TaskRecord).cast(),
        core::mem::size_of::<TaskRecord>() as u32,
    )
}

/// `EOVERFLOW`: the seq buffer is full; the kernel shows the task again at the next read.
const EOVERFLOW: i64 = 75;

/// Whether the bytes are in the buffer; a failure other than a full buffer (none is
/// known) is counted.
#[inline(always)]
fn write_bytes(seq: *mut c_void, data: *const c_void, len: u32) -> bool {
    // SAFETY: `seq` is the iterator's seq file; `data` is live for `len` bytes.
    let r = unsafe { bpf_seq_write(seq.cast(), data, len) };
    if r != 0 && r != -EOVERFLOW {
        count_drop(PROG, Drop::ReadFailed);
    }
    r == 0
}
