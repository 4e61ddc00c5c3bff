//! Tracepoint formats from tracefs: which tracepoints exist on this kernel and where
//! their fields are, so one kernel object runs on kernels whose layouts differ.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use agent_common::{ABSENT, TpOffsets};

use super::CaptureError;

/// Where tracefs is normally mounted, and the older debugfs location.
const TRACEFS_ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The mounted tracefs, or an error saying how to mount it.
pub fn root() -> Result<PathBuf, CaptureError> {
    for r in TRACEFS_ROOTS {
        let p = Path::new(r);
        if p.join("events").is_dir() {
            return Ok(p.to_path_buf());
        }
    }
    Err(CaptureError::NoTracefs)
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The parsed `format` file of one tracepoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub fields: HashMap<String, Field>,
}

impl Format {
    /// Parses a tracefs `format` file.
    pub fn parse(text: &str) -> Format {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = "";
            let mut offset = None;
            let mut size = None;
            for part in rest.split(';') {
                let part = part.trim();
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.trim().parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.trim().parse().ok();
                } else if decl.is_empty() {
                    decl = part;
                }
            }
            // The name is the last word of the declaration, without an array suffix.
            let name = decl
                .split_whitespace()
                .last()
                .unwrap_or("")
                .split('[')
                .next()
                .unwrap_or("")
                .trim_start_matches('*');
            if let (false, Some(offset), Some(size)) = (name.is_empty(), offset, size) {
                fields.insert(name.to_string(), Field { offset, size });
            }
        }
        Format { fields }
    }

    fn offset(&self, name: &str, size: u32) -> u32 {
        match self.fields.get(name) {
            Some(f) if f.size == size => f.offset,
            _ => ABSENT,
        }
    }

    /// Offset of a field of at least `min` bytes (arrays such as `rwbs`, whose length varies).
    fn offset_min(&self, name: &str, min: u32) -> u32 {
        match self.fields.get(name) {
            Some(f) if f.size >= min => f.offset,
            _ => ABSENT,
        }
    }
}

/// All tracepoint formats under a tracefs root, read on demand.
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    pub fn new(root: PathBuf) -> Self {
        Tracefs { root }
    }

    pub fn exists(&self, category: &str, name: &str) -> bool {
        self.root.join("events").join(category).join(name).is_dir()
    }

    pub fn format(&self, category: &str, name: &str) -> Option<Format> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        fs::read_to_string(path).ok().map(|t| Format::parse(&t))
    }

    /// Offsets of every field the programs read; absent tracepoints or fields are [`ABSENT`].
    pub fn offsets(&self) -> TpOffsets {
        let f = |cat: &str, name: &str| self.format(cat, name).unwrap_or_default();
        let switch = f("sched", "sched_switch");
        let wakeup = f("sched", "sched_wakeup");
        let exec = f("sched", "sched_process_exec");
        let fork = f("sched", "sched_process_fork");
        let exit = f("sched", "sched_process_exit");
        let rss = f("kmem", "rss_stat");
        let sys = f("raw_syscalls", "sys_exit");
        let bio = f("block", "block_bio_queue");
        let done = f("block", "block_rq_complete");
        let send = f("sock", "sock_send_length");
        let state = f("sock", "inet_sock_set_state");
        let retrans = f("tcp", "tcp_retransmit_skb");
        let attach = f("cgroup", "cgroup_attach_task");
        TpOffsets {
            switch_prev_pid: switch.offset("prev_pid", 4),
            switch_prev_state: switch.offset("prev_state", 8),
            switch_next_pid: switch.offset("next_pid", 4),
            wakeup_pid: wakeup.offset("pid", 4),
            exec_filename: exec.offset("filename", 4),
            fork_child_pid: fork.offset("child_pid", 4),
            exit_group_dead: exit.offset("group_dead", 1),
            rss_mm_id: rss.offset("mm_id", 4),
            rss_curr: rss.offset("curr", 4),
            rss_member: rss.offset("member", 4),
            rss_size: rss.offset("size", 8),
            sys_exit_id: sys.offset("id", 8),
            sys_exit_ret: sys.offset("ret", 8),
            bio_dev: bio.offset("dev", 4),
            bio_sector: bio.offset("sector", 8),
            bio_nr_sector: bio.offset("nr_sector", 4),
            bio_rwbs: bio.offset_min("rwbs", 8),
            rq_done_dev: done.offset("dev", 4),
            rq_done_sector: done.offset("sector", 8),
            sock_len_sk: send.offset("sk", 8),
            sock_len_family: send.offset("family", 2),
            sock_len_ret: send.offset("ret", 4),
            set_state_sk: state.offset("skaddr", 8),
            set_state_old: state.offset("oldstate", 4),
            set_state_new: state.offset("newstate", 4),
            set_state_protocol: state.offset("protocol", 2),
            retrans_sk: retrans.offset("skaddr", 8),
            cgroup_attach_root: attach.offset("dst_root", 4),
            cgroup_attach_id: attach.offset("dst_id", 8),
            cgroup_attach_pid: attach.offset("pid", 4),
            set_state_sport: state.offset("sport", 2),
            set_state_family: state.offset("family", 2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWITCH: &str = "name: sched_switch
ID: 316
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
";

    #[test]
    fn parses_names_offsets_and_sizes() {
        let f = Format::parse(SWITCH);
        assert_eq!(
            f.fields["prev_pid"],
            Field {
                offset: 24,
                size: 4
            }
        );
        assert_eq!(
            f.fields["prev_comm"],
            Field {
                offset: 8,
                size: 16
            }
        );
        assert_eq!(
            f.fields["prev_state"],
            Field {
                offset: 32,
                size: 8
            }
        );
        assert_eq!(f.fields["filename"], Field { offset: 8, size: 4 });
        assert_eq!(f.fields["skaddr"], Field { offset: 8, size: 8 });
        assert_eq!(f.fields["common_type"], Field { offset: 0, size: 2 });
    }

    #[test]
    fn a_field_of_another_size_is_absent() {
        let f = Format::parse(SWITCH);
        assert_eq!(f.offset("prev_pid", 8), ABSENT);
        assert_eq!(f.offset("nope", 4), ABSENT);
        assert_eq!(f.offset_min("prev_comm", 8), 8);
    }
}
