//! `umbra trace`: the live event and per-process stream for kernel engineers, filtered
//! by pid, comm, cgroup and kind, as a table or as JSON lines.

use std::{
    collections::HashMap,
    fmt,
    io::{self, Write},
    os::unix::fs::MetadataExt,
    str::FromStr,
    sync::Arc,
};

use serde_json::json;

use crate::capture::{
    CaptureItem, DropCounts, Lifecycle, LifecycleKind, ProcCounters, ProcessSample, Tick,
    hist_quantile,
};

/// What to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// exec, fork and exit events, as they happen.
    Exec,
    /// on-CPU time, context switches, run-queue latency, per interval.
    Cpu,
    /// resident memory and page faults.
    Mem,
    /// syscall and block I/O.
    Io,
    /// network bytes and connections.
    Net,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Exec, Kind::Cpu, Kind::Mem, Kind::Io, Kind::Net];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Cpu => "cpu",
            Kind::Mem => "mem",
            Kind::Io => "io",
            Kind::Net => "net",
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown kind {s:?}: expected one of exec, cpu, mem, io, net"))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A cgroup by id, or by the path of its cgroup v2 directory (whose inode is the id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupId(pub u64);

impl FromStr for CgroupId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(id) = s.parse::<u64>() {
            return Ok(CgroupId(id));
        }
        std::fs::metadata(s)
            .map(|m| CgroupId(m.ino()))
            .map_err(|e| {
                format!("{s:?} is neither a cgroup id nor a readable cgroup directory: {e}")
            })
    }
}

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    pub cgroup: Option<CgroupId>,
    /// Empty: every kind.
    pub kinds: Vec<Kind>,
}

impl Filter {
    fn wants(&self, k: Kind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&k)
    }

    fn matches(&self, pid: u32, tgid: u32, comm: &str, exe: Option<&str>, cgroup: u64) -> bool {
        (self.pids.is_empty() || self.pids.contains(&tgid) || self.pids.contains(&pid))
            && (self.comms.is_empty()
                || self.comms.iter().any(|c| {
                    c == comm || exe.is_some_and(|e| e.rsplit('/').next() == Some(c.as_str()))
                }))
            && self.cgroup.is_none_or(|c| c.0 == cgroup)
    }
}

/// Turns capture items into lines on `out`.
pub struct Tracer<W: Write> {
    filter: Filter,
    json: bool,
    out: W,
    prev: HashMap<(u32, u64), Arc<ProcCounters>>,
    last_tick_ns: Option<u64>,
    last_drops: DropCounts,
    header_done: bool,
}

impl<W: Write> Tracer<W> {
    pub fn new(filter: Filter, json: bool, out: W) -> Self {
        Tracer {
            filter,
            json,
            out,
            prev: HashMap::new(),
            last_tick_ns: None,
            last_drops: DropCounts::default(),
            header_done: false,
        }
    }

    pub fn item(&mut self, item: &CaptureItem) -> io::Result<()> {
        if !self.json && !self.header_done {
            writeln!(
                self.out,
                "{:<14} {:<5} {:>8} {:<16} DETAILS",
                "TIME(s)", "KIND", "PID", "COMM"
            )?;
            self.header_done = true;
        }
        match item {
            CaptureItem::Event(ev) => self.event(ev),
            CaptureItem::Tick(t) => self.tick(t),
        }?;
        self.out.flush()
    }

    fn event(&mut self, ev: &Lifecycle) -> io::Result<()> {
        let exe = match &ev.kind {
            LifecycleKind::Exec { filename, .. } => Some(filename.as_str()),
            _ => None,
        };
        if !self.filter.wants(Kind::Exec)
            || !self
                .filter
                .matches(ev.pid, ev.tgid, &ev.comm, exe, ev.cgroup_id)
        {
            return Ok(());
        }
        let (name, detail, mut obj) = match &ev.kind {
            LifecycleKind::Exec {
                filename,
                argv,
                inputs,
            } => {
                let args = argv.lossy();
                let shown: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
                let files: Vec<serde_json::Value> = inputs
                    .iter()
                    .map(|f| json!({ "arg": f.arg, "size": f.size }))
                    .collect();
                (
                    "exec",
                    format!(
                        "{filename} ppid={} argv=[{}]{}",
                        opt(ev.ppid),
                        shown.join(" "),
                        if argv.truncated() { "…" } else { "" }
                    ),
                    json!({
                        "filename": filename,
                        "argv": args,
                        "argv_truncated": argv.truncated(),
                        "inputs": files,
                    }),
                )
            }
            LifecycleKind::Fork => ("fork", format!("ppid={}", opt(ev.ppid)), json!({})),
            LifecycleKind::Exit { code } => (
                "exit",
                format!("code={}", code.map_or("?".into(), describe_exit)),
                json!({ "exit_code": code }),
            ),
        };
        if self.json {
            let o = obj.as_object_mut().expect("json! object");
            o.insert("kind".into(), "exec".into());
            o.insert("event".into(), name.into());
            o.insert("time_ns".into(), ev.timestamp_ns.into());
            o.insert("pid".into(), ev.pid.into());
            o.insert("tgid".into(), ev.tgid.into());
            o.insert("ppid".into(), json!(ev.ppid));
            o.insert("comm".into(), ev.comm.clone().into());
            o.insert("cgroup_id".into(), ev.cgroup_id.into());
            writeln!(self.out, "{obj}")
        } else {
            writeln!(
                self.out,
                "{:<14.3} {:<5} {:>8} {:<16} {detail}",
                ev.timestamp_ns as f64 / 1e9,
                name,
                ev.tgid,
                ev.comm
            )
        }
    }

    fn tick(&mut self, t: &Tick) -> io::Result<()> {
        let interval = self
            .last_tick_ns
            .map(|l| t.timestamp_ns.saturating_sub(l))
            .unwrap_or(0);
        self.last_tick_ns = Some(t.timestamp_ns);
        for s in &t.samples {
            let key = (s.tgid, s.start_ns);
            let d = match self.prev.get(&key) {
                Some(p) => s.counters.since(p),
                None => ProcCounters::clone(&s.counters),
            };
            if s.exit.is_some() {
                self.prev.remove(&key);
            } else {
                self.prev.insert(key, s.counters.clone());
            }
            if !self
                .filter
                .matches(s.tgid, s.tgid, &s.comm, s.exe.as_deref(), s.cgroup_id)
            {
                continue;
            }
            let span = if interval == 0 {
                t.timestamp_ns.saturating_sub(s.start_ns).max(1)
            } else {
                interval
            };
            for kind in [Kind::Cpu, Kind::Mem, Kind::Io, Kind::Net] {
                if self.filter.wants(kind) {
                    self.sample_line(t.timestamp_ns, kind, s, &d, span)?;
                }
            }
        }
        self.prev.retain(|(tgid, start), _| {
            t.samples
                .iter()
                .any(|s| s.tgid == *tgid && s.start_ns == *start)
        });
        if t.drops != self.last_drops {
            let old: Vec<_> = self.last_drops.by_program().collect();
            let changed: Vec<String> = t
                .drops
                .by_program()
                .filter_map(|(p, k, n)| {
                    let o = old
                        .iter()
                        .find(|(op, ok, _)| *op == p && *ok == k)
                        .map_or(0, |x| x.2);
                    (n != o).then(|| format!("{p}/{k}=+{}", n - o))
                })
                .collect();
            eprintln!("umbra: kernel drops: {}", changed.join(" "));
            self.last_drops = t.drops;
        }
        Ok(())
    }

    fn sample_line(
        &mut self,
        ts: u64,
        kind: Kind,
        s: &ProcessSample,
        d: &ProcCounters,
        span_ns: u64,
    ) -> io::Result<()> {
        let active = d.cpu_ns > 0 || s.exit.is_some();
        let (detail, obj) = match kind {
            Kind::Cpu => {
                if d.cpu_ns == 0 && d.voluntary_switches + d.involuntary_switches == 0 {
                    return Ok(());
                }
                let pct = d.cpu_ns as f64 * 100.0 / span_ns as f64;
                let p50 = hist_quantile(&d.runq_hist, 0.5);
                let p99 = hist_quantile(&d.runq_hist, 0.99);
                (
                    format!(
                        "cpu={pct:.1}% vcs={} ics={} runq_p50={} runq_p99={}",
                        d.voluntary_switches,
                        d.involuntary_switches,
                        dur(p50),
                        dur(p99)
                    ),
                    json!({
                        "cpu_ns": d.cpu_ns, "cpu_pct": pct,
                        "voluntary_switches": d.voluntary_switches,
                        "involuntary_switches": d.involuntary_switches,
                        "runq_wait_ns": d.runq_wait_ns,
                        "runq_p50_ns": p50, "runq_p99_ns": p99,
                    }),
                )
            }
            Kind::Mem => {
                if !active && d.page_faults == 0 {
                    return Ok(());
                }
                let m = &s.memory;
                (
                    format!(
                        "rss={} anon={} file={} shmem={} swap={} faults={}",
                        bytes(m.rss()),
                        bytes(m.anon),
                        bytes(m.file),
                        bytes(m.shmem),
                        bytes(m.swap),
                        d.page_faults
                    ),
                    json!({
                        "rss_bytes": m.rss(), "anon_bytes": m.anon, "file_bytes": m.file,
                        "shmem_bytes": m.shmem, "swap_bytes": m.swap, "page_faults": d.page_faults,
                    }),
                )
            }
            Kind::Io => {
                if d.read_calls + d.write_calls + d.block_ios == 0 {
                    return Ok(());
                }
                let p99 = hist_quantile(&d.block_hist, 0.99);
                (
                    format!(
                        "read={} write={} blk_read={} blk_write={} blk_ios={} blk_p99={} syscalls={}",
                        bytes(d.read_bytes),
                        bytes(d.write_bytes),
                        bytes(d.block_read_bytes),
                        bytes(d.block_write_bytes),
                        d.block_ios,
                        dur(p99),
                        d.syscalls
                    ),
                    json!({
                        "read_bytes": d.read_bytes, "write_bytes": d.write_bytes,
                        "read_calls": d.read_calls, "write_calls": d.write_calls,
                        "block_read_bytes": d.block_read_bytes, "block_write_bytes": d.block_write_bytes,
                        "block_ios": d.block_ios, "block_p99_ns": p99, "syscalls": d.syscalls,
                    }),
                )
            }
            Kind::Net => {
                if d.net_tx_calls + d.net_rx_calls + d.conn_opened + d.conn_accepted + d.conn_closed
                    == 0
                {
                    return Ok(());
                }
                (
                    format!(
                        "tx={} rx={} opened={} accepted={} closed={} retrans={}",
                        bytes(d.net_tx_bytes),
                        bytes(d.net_rx_bytes),
                        d.conn_opened,
                        d.conn_accepted,
                        d.conn_closed,
                        d.retransmits
                    ),
                    json!({
                        "tx_bytes": d.net_tx_bytes, "rx_bytes": d.net_rx_bytes,
                        "conn_opened": d.conn_opened, "conn_accepted": d.conn_accepted,
                        "conn_closed": d.conn_closed, "retransmits": d.retransmits,
                    }),
                )
            }
            Kind::Exec => return Ok(()),
        };
        if self.json {
            let mut obj = obj;
            let o = obj.as_object_mut().expect("json! object");
            o.insert("kind".into(), kind.name().into());
            o.insert("time_ns".into(), ts.into());
            o.insert("interval_ns".into(), span_ns.into());
            o.insert("tgid".into(), s.tgid.into());
            o.insert("comm".into(), s.comm.to_string().into());
            o.insert("cgroup_id".into(), s.cgroup_id.into());
            if s.exit.is_some() {
                o.insert("exited".into(), true.into());
            }
            writeln!(self.out, "{obj}")
        } else {
            writeln!(
                self.out,
                "{:<14.3} {:<5} {:>8} {:<16} {detail}",
                ts as f64 / 1e9,
                kind.name(),
                s.tgid,
                s.comm
            )
        }
    }
}

fn opt(v: Option<u32>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

/// `wait(2)` status as a person reads it.
fn describe_exit(code: i32) -> String {
    if code & 0x7f == 0 {
        format!("{}", (code >> 8) & 0xff)
    } else {
        format!("signal {}", code & 0x7f)
    }
}

pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn dur(ns: Option<u64>) -> String {
    match ns {
        None => "-".into(),
        Some(n) if n < 1_000 => format!("{n}ns"),
        Some(n) if n < 1_000_000 => format!("{}us", n / 1_000),
        Some(n) if n < 1_000_000_000 => format!("{}ms", n / 1_000_000),
        Some(n) => format!("{:.1}s", n as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Memory, ProcessSample};

    fn sample(tgid: u32, comm: &str, cpu_ns: u64) -> ProcessSample {
        ProcessSample {
            tgid,
            start_ns: 1,
            ppid: Some(1),
            cgroup_id: 7,
            comm: comm.into(),
            exe: Some(format!("/usr/bin/{comm}").into()),
            exe_hash: None,
            cgroup: None,
            app: None,
            counters: Arc::new(ProcCounters {
                cpu_ns,
                ..Default::default()
            }),
            memory: Memory::default(),
            exit: None,
        }
    }

    fn tick(ts: u64, samples: Vec<ProcessSample>) -> CaptureItem {
        CaptureItem::Tick(Box::new(Tick {
            timestamp_ns: ts,
            wall_ms: 0,
            samples: samples.into_iter().map(Arc::new).collect(),
            drops: DropCounts::default(),
            node: crate::capture::NodeStats::default(),
            pressure: vec![],
        }))
    }

    #[test]
    fn json_cpu_lines_are_per_interval_deltas() {
        let mut out = Vec::new();
        let filter = Filter {
            kinds: vec![Kind::Cpu],
            ..Default::default()
        };
        let mut t = Tracer::new(filter, true, &mut out);
        t.item(&tick(1_000_000_000, vec![sample(10, "a", 100)]))
            .expect("write");
        t.item(&tick(2_000_000_000, vec![sample(10, "a", 500_000_100)]))
            .expect("write");
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .expect("utf8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["cpu_ns"], 500_000_000);
        assert!((lines[1]["cpu_pct"].as_f64().expect("pct") - 50.0).abs() < 1e-9);
    }

    #[test]
    fn filters_by_comm_pid_and_kind() {
        let mut out = Vec::new();
        let filter = Filter {
            comms: vec!["b".into()],
            kinds: vec![Kind::Exec],
            ..Default::default()
        };
        let mut t = Tracer::new(filter, true, &mut out);
        for (pid, comm) in [(1, "a"), (2, "b")] {
            t.item(&CaptureItem::Event(Lifecycle {
                kind: LifecycleKind::exec(format!("/bin/{comm}")),
                pid,
                tgid: pid,
                ppid: None,
                timestamp_ns: 5,
                cgroup_id: 0,
                comm: comm.into(),
            }))
            .expect("write");
        }
        t.item(&tick(1, vec![sample(2, "b", 10)])).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("\"filename\":\"/bin/b\""));
    }

    #[test]
    fn unknown_kind_lists_the_valid_ones() {
        let e = "disk".parse::<Kind>().expect_err("unknown");
        assert!(e.contains("exec, cpu, mem, io, net"));
    }

    #[test]
    fn exit_codes_read_like_a_shell() {
        assert_eq!(describe_exit(0), "0");
        assert_eq!(describe_exit(3 << 8), "3");
        assert_eq!(describe_exit(9), "signal 9");
    }
}
