//! `iter/task`: once a tick, userspace reads this iterator and the kernel visits every
//! thread; for each, the kernel's own accounting — what the per-event hooks used to count —
//! goes out as one [`TaskRecord`]: scheduler runtime (`se.sum_exec_runtime`), context
//! switches (`nvcsw`, `nivcsw`), run-queue wait (`sched_info.run_delay`, `pcount`), page
//! faults (`min_flt`, `maj_flt`), I/O accounting (`ioac`) and the memory map's RSS
//! counters. A process's leader also writes the totals of its exited threads
//! (`signal_struct`), when it had any. No hook runs on any scheduler, syscall or fault event for these.
//!
//! aya-ebpf 0.2 has no `#[iter]` attribute: the program is placed in its `iter/task`
//! section by hand, as the attribute macros do for the other program types.
//! <https://github.com/torvalds/linux/blob/v6.12/kernel/bpf/task_iter.c>

use core::ffi::c_void;

use agent_common::{Drop, REC_KTHREAD, REC_SIGNAL, TaskRecord, prog::TASK_ITER as PROG};
use aya_ebpf::helpers::generated::bpf_seq_write;

use crate::{
    config,
    util::{
        Direct, Mem, count_drop, task_record_signal, task_record_thread, zero_record, zeroed_record,
    },
};

/// `PF_KTHREAD` in `task_struct.flags`.
const PF_KTHREAD: u32 = 0x0020_0000;

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
        // The end of the walk.
        return 0;
    }
    // SAFETY: `meta` is a valid `bpf_iter_meta`, whose first member is the seq file.
    let seq = unsafe { *(meta as *const *mut c_void) };
    let mut slot = core::mem::MaybeUninit::<TaskRecord>::uninit();
    let rec = zeroed_record(&mut slot);
    task_record_thread::<Direct>(rec, task);
    let flags: u32 = Direct::read(task, config!(task.task_flags));
    if flags & PF_KTHREAD != 0 {
        rec.flags |= REC_KTHREAD;
    }
    write(seq, rec);
    if rec.tid == rec.tgid {
        // The leader: its process's exited threads, once, in the same slot.
        let (tid, tgid, start_ns) = (rec.tid, rec.tgid, rec.start_ns);
        zero_record(rec);
        rec.tid = tid;
        rec.tgid = tgid;
        rec.flags = REC_SIGNAL;
        rec.start_ns = start_ns;
        task_record_signal::<Direct>(rec, task);
        // Most processes never had a thread exit: nothing to add, no record (half the
        // records of a walk over single-threaded processes).
        let mut any = rec.runtime_ns | rec.nvcsw | rec.nivcsw | rec.min_flt | rec.maj_flt;
        let mut i = 0;
        while i < rec.ioac.len() {
            any |= rec.ioac[i];
            i += 1;
        }
        if any != 0 {
            write(seq, rec);
        }
    }
    0
}

#[inline(always)]
fn write(seq: *mut c_void, rec: &TaskRecord) {
    // SAFETY: `seq` is the iterator's seq file; `rec` is a live record of that size.
    let r = unsafe {
        bpf_seq_write(
            seq.cast(),
            (rec as *const TaskRecord).cast(),
            core::mem::size_of::<TaskRecord>() as u32,
        )
    };
    if r != 0 {
        count_drop(PROG, Drop::ReadFailed);
    }
}
