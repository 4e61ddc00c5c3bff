//! Block I/O: `block/block_bio_queue` runs in the submitting task's context, so bytes are
//! attributed to the process that issued them (a `fsync`, an `O_DIRECT` write; buffered
//! writeback lands on the flusher thread, as in the kernel's own accounting). A stacked
//! driver (device mapper, md) submits its own bios below the first one from the same
//! task, with `current->bio_list` set: only the top one counts bytes, every layer's is
//! remembered for its latency. `block/block_rq_complete` closes the request and adds its
//! latency, from queue to completion, to the issuer's histogram.

use agent_common::{
    BlockKey, BlockPending, Drop,
    prog::{BLOCK_BIO_QUEUE, BLOCK_RQ_COMPLETE},
};
use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    config,
    maps::BLOCK_PENDING,
    util::{
        Mem, Probe, add, count_drop, current_key, hist_add, proc_entry, proc_existing, tp_field,
        tp_field_at,
    },
};

#[tracepoint(category = "block", name = "block_bio_queue")]
pub fn block_bio_queue(ctx: TracePointContext) -> u32 {
    let _ = try_bio_queue(&ctx);
    0
}

fn try_bio_queue(ctx: &TracePointContext) -> Option<()> {
    let dev: u32 = tp_field_at::<_, 8>(ctx, BLOCK_BIO_QUEUE, config!(tp.bio_dev))?;
    let sector: u64 = tp_field_at::<_, 16>(ctx, BLOCK_BIO_QUEUE, config!(tp.bio_sector))?;
    let nr_sector: u32 = tp_field_at::<_, 24>(ctx, BLOCK_BIO_QUEUE, config!(tp.bio_nr_sector))?;
    let rwbs: [u8; 8] = tp_field(ctx, BLOCK_BIO_QUEUE, config!(tp.bio_rwbs))?;
    if nr_sector == 0 {
        return None;
    }
    let mut write = false;
    let mut read = false;
    let mut i = 0;
    while i < rwbs.len() {
        match rwbs[i] {
            b'W' => write = true,
            b'R' => read = true,
            0 => break,
            _ => {}
        }
        i += 1;
    }
    if !read && !write {
        return None;
    }
    let owner = current_key();
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let stacked = Probe::read::<u64>(task, config!(task.task_bio_list)) != 0;
    if !stacked {
        let p = proc_entry(BLOCK_BIO_QUEUE, owner)?;
        let bytes = nr_sector as u64 * 512;
        if write {
            add(&mut p.block_write_bytes, bytes);
        } else {
            add(&mut p.block_read_bytes, bytes);
        }
        add(&mut p.block_ios, 1);
    }
    let key = BlockKey {
        sector,
        dev,
        _pad: 0,
    };
    let pending = BlockPending {
        queued_ns: unsafe { bpf_ktime_get_ns() },
        owner,
    };
    if BLOCK_PENDING.insert(key, pending, 0).is_err() {
        count_drop(BLOCK_BIO_QUEUE, Drop::BlockPendingFull);
    }
    Some(())
}

#[tracepoint(category = "block", name = "block_rq_complete")]
pub fn block_rq_complete(ctx: TracePointContext) -> u32 {
    let _ = try_rq_complete(&ctx);
    0
}

fn try_rq_complete(ctx: &TracePointContext) -> Option<()> {
    let dev: u32 = tp_field_at::<_, 8>(ctx, BLOCK_RQ_COMPLETE, config!(tp.rq_done_dev))?;
    let sector: u64 = tp_field_at::<_, 16>(ctx, BLOCK_RQ_COMPLETE, config!(tp.rq_done_sector))?;
    let key = BlockKey {
        sector,
        dev,
        _pad: 0,
    };
    // SAFETY: map value read, copied out before the delete.
    let pending = *unsafe { BLOCK_PENDING.get(key) }?;
    let _ = BLOCK_PENDING.remove(key);
    let now = unsafe { bpf_ktime_get_ns() };
    let p = proc_existing(BLOCK_RQ_COMPLETE, &pending.owner)?;
    if now > pending.queued_ns {
        hist_add(&mut p.block_hist, now - pending.queued_ns);
    }
    Some(())
}
