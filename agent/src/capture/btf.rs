//! Offsets into `task_struct` and `signal_struct` from the kernel's BTF, for the programs
//! that read a task's pid, tgid, parent, exit code or liveness (a poor man's CO-RE: the
//! Rust BPF toolchain emits no relocations, so userspace resolves them before load).

use std::path::Path;

use agent_common::TaskOffsets;
use btf_rs::{Btf, Type};

use super::CaptureError;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Resolves the offsets from `path` (normally [`VMLINUX_BTF`]).
pub fn task_offsets(path: &Path) -> Result<TaskOffsets, CaptureError> {
    let err = |what: String| CaptureError::Btf {
        path: path.to_path_buf(),
        what,
    };
    let btf = Btf::from_file(path).map_err(|e| err(format!("cannot parse: {e}")))?;
    let off = |st: &str, member: &str| -> Result<u32, CaptureError> {
        member_offset(&btf, st, member)
            .ok_or_else(|| err(format!("no member `{member}` in `struct {st}`")))
    };
    Ok(TaskOffsets {
        valid: 1,
        task_pid: off("task_struct", "pid")?,
        task_tgid: off("task_struct", "tgid")?,
        task_real_parent: off("task_struct", "real_parent")?,
        task_exit_code: off("task_struct", "exit_code")?,
        task_signal: off("task_struct", "signal")?,
        signal_live: off("signal_struct", "live")?,
        task_runtime: off("task_struct", "se")? + off("sched_entity", "sum_exec_runtime")?,
        task_mm: off("task_struct", "mm")?,
        mm_arg_start: off("mm_struct", "arg_start")?,
        mm_arg_end: off("mm_struct", "arg_end")?,
        _pad: 0,
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
    }
}
