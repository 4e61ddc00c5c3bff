//! `kmem/rss_stat`: a process's resident memory per member (file, anon, swap, shmem), in
//! bytes, as the kernel's counters hold it. Reported in the owner's context (`curr`) or
//! from another task (reclaim, exit), where the hashed `mm_id` finds the owner.

use agent_common::{Drop, RSS_MEMBERS, prog::RSS_STAT as PROG};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    config,
    maps::MM_OWNER,
    util::{count_drop, current_key, proc_entry, proc_existing, tp_field_at},
};

#[tracepoint(category = "kmem", name = "rss_stat")]
pub fn rss_stat(ctx: TracePointContext) -> u32 {
    let _ = try_rss_stat(&ctx);
    0
}

fn try_rss_stat(ctx: &TracePointContext) -> Option<()> {
    let mm_id: u32 = tp_field_at::<_, 8>(ctx, PROG, config!(tp.rss_mm_id))?;
    let curr: u32 = tp_field_at::<_, 12>(ctx, PROG, config!(tp.rss_curr))?;
    let member: i32 = tp_field_at::<_, 16>(ctx, PROG, config!(tp.rss_member))?;
    let size: i64 = tp_field_at::<_, 24>(ctx, PROG, config!(tp.rss_size))?;
    let member = member as usize;
    if member >= RSS_MEMBERS {
        return None;
    }
    let proc = if curr != 0 {
        let key = current_key();
        // SAFETY: map value read.
        if unsafe { MM_OWNER.get(mm_id) } != Some(&key) && MM_OWNER.insert(mm_id, key, 0).is_err() {
            count_drop(PROG, Drop::MmOwnerFull);
        }
        proc_entry(PROG, key)?
    } else {
        // SAFETY: map value read.
        let Some(owner) = (unsafe { MM_OWNER.get(mm_id) }).copied() else {
            count_drop(PROG, Drop::OwnerUnknown);
            return None;
        };
        proc_existing(PROG, &owner)?
    };
    proc.rss[member] = size;
    let bit = 1u64 << member;
    if proc.rss_seen & bit == 0 {
        proc.rss_seen |= bit;
    }
    Some(())
}
