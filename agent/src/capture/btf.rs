//! Offsets into `task_struct`, `signal_struct`, `mm_struct` and the structures the
//! programs reach from them, from the kernel's BTF (a poor man's CO-RE: the Rust BPF
//! toolchain emits no relocations, so userspace resolves them before load). Members every
//! supported kernel has are required; the others (per-task I/O and scheduler statistics,
//! which depend on the kernel's configuration) are [`ABSENT`] where missing, and what they
//! measure is then not read.

use std::path::Path;

use agent_common::{ABSENT, TaskOffsets};
use btf_rs::{Btf, Type};

use super::CaptureError;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The offsets of this kernel ([`VMLINUX_BTF`]), resolved once per process (parsing the
/// kernel's BTF takes a while, and it does not change while the system runs).
pub fn kernel_task_offsets() -> Result<TaskOffsets, CaptureError> {
    static CACHE: std::sync::OnceLock<Result<TaskOffsets, String>> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            task_offsets(Path::new(VMLINUX_BTF)).map_err(|e| match e {
                CaptureError::Btf { what, .. } => what,
                e => e.to_string(),
            })
        })
        .clone()
        .map_err(|what| CaptureError::Btf {
            path: VMLINUX_BTF.into(),
            what,
        })
}

/// Resolves the offsets from `path` (normally [`VMLINUX_BTF`]).
pub fn task_offsets(path: &Path) -> Result<TaskOffsets, CaptureError> {
    let err = |what: String| CaptureError::Btf {
        path: path.to_path_buf(),
        what,
    };
    let btf = Btf::from_file(path).map_err(|e| err(format!("cannot parse: {e}")))?;
    let req = |st: &str, member: &str| -> Result<u32, CaptureError> {
        member_offset(&btf, st, member)
            .ok_or_else(|| err(format!("no member `{member}` in `struct {st}`")))
    };
    let opt = |st: &str, member: &str| member_offset(&btf, st, member).unwrap_or(ABSENT);
    let at = |a: u32, b: u32| {
        if a == ABSENT || b == ABSENT {
            ABSENT
        } else {
            a + b
        }
    };
    let mut t = TaskOffsets::EMPTY;
    t.valid = 1;
    t.task_pid = req("task_struct", "pid")?;
    t.task_tgid = req("task_struct", "tgid")?;
    t.task_real_parent = req("task_struct", "real_parent")?;
    t.task_exit_code = req("task_struct", "exit_code")?;
    t.task_signal = req("task_struct", "signal")?;
    t.signal_live = req("signal_struct", "live")?;
    t.task_runtime = req("task_struct", "se")? + req("sched_entity", "sum_exec_runtime")?;
    t.task_mm = req("task_struct", "mm")?;
    t.mm_arg_start = req("mm_struct", "arg_start")?;
    t.mm_arg_end = req("mm_struct", "arg_end")?;
    t.task_group_leader = opt("task_struct", "group_leader");
    // `real_start_time` before Linux 5.5.
    t.task_start = match opt("task_struct", "start_boottime") {
        ABSENT => opt("task_struct", "real_start_time"),
        o => o,
    };
    t.task_flags = opt("task_struct", "flags");
    t.task_nvcsw = opt("task_struct", "nvcsw");
    t.task_nivcsw = opt("task_struct", "nivcsw");
    t.task_min_flt = opt("task_struct", "min_flt");
    t.task_maj_flt = opt("task_struct", "maj_flt");
    let sched_info = opt("task_struct", "sched_info");
    t.task_run_delay = at(sched_info, opt("sched_info", "run_delay"));
    t.task_pcount = at(sched_info, opt("sched_info", "pcount"));
    t.task_ioac = opt("task_struct", "ioac");
    t.sig_ioac = opt("signal_struct", "ioac");
    for (i, m) in [
        "rchar",
        "wchar",
        "syscr",
        "syscw",
        "read_bytes",
        "write_bytes",
    ]
    .iter()
    .enumerate()
    {
        t.ioac[i] = opt("task_io_accounting", m);
    }
    t.sig_runtime = opt("signal_struct", "sum_sched_runtime");
    t.sig_nvcsw = opt("signal_struct", "nvcsw");
    t.sig_nivcsw = opt("signal_struct", "nivcsw");
    t.sig_min_flt = opt("signal_struct", "min_flt");
    t.sig_maj_flt = opt("signal_struct", "maj_flt");
    if let Some((base, stride, count)) = rss_layout(&btf) {
        t.mm_rss = base;
        t.rss_stride = stride;
        t.rss_count = count;
    }
    t.task_cgroups = opt("task_struct", "cgroups");
    t.css_dfl_cgrp = opt("css_set", "dfl_cgrp");
    t.cgroup_kn = opt("cgroup", "kn");
    t.kn_id = opt("kernfs_node", "id");
    t.task_bio_list = opt("task_struct", "bio_list");
    t.sock_net = at(opt("sock", "__sk_common"), opt("sock_common", "skc_net"));
    t.net_inum = at(opt("net", "ns"), opt("ns_common", "inum"));
    let thread_info = opt("task_struct", "thread_info");
    #[cfg(target_arch = "x86_64")]
    {
        // `TS_COMPAT` in `thread_info.status`: set while a task runs a 32-bit syscall.
        t.task_compat = at(thread_info, opt("thread_info", "status"));
        t.compat_mask = 0x0002;
    }
    #[cfg(target_arch = "aarch64")]
    {
        // `TIF_32BIT` in `thread_info.flags`: an AArch32 task.
        t.task_compat = at(thread_info, opt("thread_info", "flags"));
        t.compat_mask = 1 << 22;
    }
    if t.task_compat == ABSENT {
        t.compat_mask = 0;
    }
    t.sig_thread_head = opt("signal_struct", "thread_head");
    t.task_thread_node = opt("task_struct", "thread_node");
    t.sig_nr_threads = opt("signal_struct", "nr_threads");
    t.sig_stats_seq = stats_sequence(&btf).unwrap_or(ABSENT);
    Ok(t)
}

/// Where the sequence of `signal_struct.stats_lock` is: a `seqlock_t` whose `seqcount`
/// (a `seqcount_spinlock_t` since Linux 5.10, a `seqcount_t` before) holds `sequence`.
fn stats_sequence(btf: &Btf) -> Option<u32> {
    let mut off = member_offset(btf, "signal_struct", "stats_lock")?;
    let mut ty = member_type(btf, "signal_struct", "stats_lock")?;
    for _ in 0..4 {
        let Type::Struct(s) = ty else { return None };
        if let Some(o) = find_in(btf, &s, "sequence", 0) {
            return Some(off + o);
        }
        let m = s
            .members
            .iter()
            .find(|m| btf.resolve_name(*m).is_ok_and(|n| n == "seqcount"))?;
        off += find_in(btf, &s, "seqcount", 0)?;
        ty = skip_qualifiers(btf, btf.resolve_chained_type(m).ok()?)?;
    }
    None
}

/// Where `mm_struct.rss_stat`'s counters are: its offset, the distance between members
/// and the counter's offset within one. Linux 6.2 made it an array of `percpu_counter`
/// (whose `count` is the sum folded in so far, as `get_mm_counter` reads it); before, a
/// `struct mm_rss_stat { atomic_long_t count[NR_MM_COUNTERS]; }`.
fn rss_layout(btf: &Btf) -> Option<(u32, u32, u32)> {
    let base = member_offset(btf, "mm_struct", "rss_stat")?;
    match member_type(btf, "mm_struct", "rss_stat")? {
        Type::Array(a) => {
            let elem = skip_qualifiers(btf, btf.resolve_chained_type(&a).ok()?)?;
            let Type::Struct(s) = elem else { return None };
            let stride = s.size() as u32;
            let count = find_in(btf, &s, "count", 0)?;
            Some((base, stride, count))
        }
        Type::Struct(s) => {
            // `struct mm_rss_stat { atomic_long_t count[]; }`: 8-byte counters.
            let count = find_in(btf, &s, "count", 0)?;
            Some((base + count, 8, 0))
        }
        _ => None,
    }
}

fn skip_qualifiers(btf: &Btf, mut t: Type) -> Option<Type> {
    for _ in 0..8 {
        match &t {
            Type::Typedef(_) | Type::Volatile(_) | Type::Const(_) | Type::Restrict(_) => {
                let bt = t.as_btf_type()?;
                t = btf.resolve_chained_type(bt).ok()?;
            }
            _ => return Some(t),
        }
    }
    None
}

/// The type of `member` of `struct name`, looking through anonymous structs and unions.
fn member_type(btf: &Btf, name: &str, member: &str) -> Option<Type> {
    fn find(btf: &Btf, st: &btf_rs::Struct, member: &str) -> Option<Type> {
        for m in &st.members {
            match btf.resolve_name(m) {
                Ok(n) if n == member => {
                    return btf
                        .resolve_chained_type(m)
                        .ok()
                        .and_then(|t| skip_qualifiers(btf, t));
                }
                Ok(n) if !n.is_empty() => continue,
                _ => {}
            }
            if let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m)
                && let Some(t) = find(btf, &inner, member)
            {
                return Some(t);
            }
        }
        None
    }
    let types = btf.resolve_types_by_name(name).ok()?;
    types.iter().find_map(|t| match t {
        Type::Struct(s) => find(btf, s, member),
        _ => None,
    })
}

/// Byte offset of `member` in `struct name`, looking through anonymous structs and unions.
fn member_offset(btf: &Btf, name: &str, member: &str) -> Option<u32> {
    let types = btf.resolve_types_by_name(name).ok()?;
    types.iter().find_map(|t| match t {
        Type::Struct(s) => find_in(btf, s, member, 0),
        _ => None,
    })
}

fn find_in(btf: &Btf, st: &btf_rs::Struct, member: &str, base_bits: u32) -> Option<u32> {
    for m in &st.members {
        let bits = base_bits + m.bit_offset();
        match btf.resolve_name(m) {
            Ok(n) if n == member => {
                return bits.is_multiple_of(8).then_some(bits / 8);
            }
            Ok(n) if !n.is_empty() => continue,
            _ => {}
        }
        // Anonymous member: descend into it.
        if let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m)
            && let Some(o) = find_in(btf, &inner, member, bits)
        {
            return Some(o);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_task_offsets_on_this_kernel_when_it_has_btf() {
        let p = Path::new(VMLINUX_BTF);
        if !p.exists() {
            eprintln!("skipped: {VMLINUX_BTF} absent (kernel without BTF)");
            return;
        }
        let o = task_offsets(p).expect("offsets");
        assert_eq!(o.valid, 1);
        // pid and tgid are adjacent pid_t members of task_struct.
        assert_eq!(o.task_tgid, o.task_pid + 4);
        assert!(o.task_real_parent > o.task_tgid);
        // arg_start and arg_end are adjacent unsigned longs of mm_struct.
        assert_eq!(o.mm_arg_end, o.mm_arg_start + 8);
        // What the task iterator reads.
        for (name, off) in [
            ("group_leader", o.task_group_leader),
            ("start", o.task_start),
            ("nvcsw", o.task_nvcsw),
            ("sum_sched_runtime", o.sig_runtime),
            ("rss_stat", o.mm_rss),
            ("kernfs id", o.kn_id),
            ("thread_head", o.sig_thread_head),
            ("thread_node", o.task_thread_node),
            ("nr_threads", o.sig_nr_threads),
            ("stats_lock's sequence", o.sig_stats_seq),
        ] {
            assert_ne!(off, ABSENT, "{name}");
        }
        assert_eq!(o.task_nivcsw, o.task_nvcsw + 8);
        assert!(o.rss_stride >= 8);
        eprintln!("{o:?}");
    }
}
