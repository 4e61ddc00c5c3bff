//! `cgroup/cgroup_attach_task`: a task moved to another cgroup. For the cgroup v2
//! hierarchy (root 0) the moved process's cgroup id follows, so workloads grouped by
//! cgroup stay right without asking for the cgroup on every context switch.

use agent_common::{ProcKey, prog::CGROUP_ATTACH_TASK as PROG};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    config,
    maps::{PROC_STATS, START_OF},
    util::tp_field_at,
};

/// Hierarchy id of the cgroup v2 (default) hierarchy.
const DFL_ROOT: i32 = 0;

#[tracepoint(category = "cgroup", name = "cgroup_attach_task")]
pub fn cgroup_attach_task(ctx: TracePointContext) -> u32 {
    let _ = try_attach(&ctx);
    0
}

fn try_attach(ctx: &TracePointContext) -> Option<()> {
    let root: i32 = tp_field_at::<_, 8>(ctx, PROG, config!(tp.cgroup_attach_root))?;
    if root != DFL_ROOT {
        return None;
    }
    let id: u64 = tp_field_at::<_, 16>(ctx, PROG, config!(tp.cgroup_attach_id))?;
    let pid: i32 = tp_field_at::<_, 24>(ctx, PROG, config!(tp.cgroup_attach_pid))?;
    // Moving a process (cgroup.procs) moves every thread, its leader (pid == tgid) included.
    // A process not tracked yet takes its cgroup when its entry is made.
    let tgid = pid as u32;
    // SAFETY: map value read.
    let start = *unsafe { START_OF.get(tgid) }?;
    let key = ProcKey {
        tgid,
        _pad: 0,
        start_ns: start,
    };
    // SAFETY: map values stay valid for the program's run.
    unsafe { (*PROC_STATS.get_ptr_mut(key)?).cgroup_id = id };
    Some(())
}
