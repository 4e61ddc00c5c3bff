//! Faults injected into a recording's capture stream, to measure the detector on real
//! workloads: a CPU hog inside a workload, a memory-leak ramp, an I/O stall, a jump in the
//! CPU cost of each request, a fork bomb. The injector rewrites ticks as the kernel would
//! have reported them had the fault happened: counters stay monotonic, extra processes
//! carry the workload's executable (so they group with it), exit, and their execs come as
//! events.

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{
    aggregate::{Aggregator, GroupBy, WorkloadId},
    capture::{CaptureItem, Exit, Lifecycle, LifecycleKind, ProcCounters, ProcessSample, Tick},
};

/// What goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// A runaway thread: one more process of the workload burning `cores`.
    CpuHog,
    /// Memory growing steadily (anonymous memory of one more process).
    MemoryLeak,
    /// The workload's I/O stops (blocked on a device), and with it most of its CPU.
    IoStall,
    /// Every unit of work costs `factor` times the CPU it did (same syscalls).
    CostJump,
    /// Processes forked and exec'd as fast as they can be, each a short life.
    ForkBomb,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::CpuHog,
        FaultKind::MemoryLeak,
        FaultKind::IoStall,
        FaultKind::CostJump,
        FaultKind::ForkBomb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::CpuHog => "cpu-hog",
            FaultKind::MemoryLeak => "memory-leak",
            FaultKind::IoStall => "io-stall",
            FaultKind::CostJump => "cost-jump",
            FaultKind::ForkBomb => "fork-bomb",
        }
    }
}

/// One fault in one workload, over a span of the recording's boot clock.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    pub workload: WorkloadId,
    /// Boot-clock ns: the first tick after `start_ns` carries the fault, none after `end_ns`.
    pub start_ns: u64,
    pub end_ns: u64,
    /// Size: cores for a hog (default 1.0), bytes per second for a leak (default 4 MiB/s),
    /// the cost factor for a cost jump (3.0), processes per second for a fork bomb (40).
    pub size: f64,
}

impl Fault {
    pub fn default_size(kind: FaultKind) -> f64 {
        match kind {
            FaultKind::CpuHog => 1.0,
            FaultKind::MemoryLeak => 4.0 * 1024.0 * 1024.0,
            FaultKind::IoStall => 0.9,
            FaultKind::CostJump => 3.0,
            FaultKind::ForkBomb => 40.0,
        }
    }
}

/// Per-process offsets added to (or taken from) its counters, so they stay monotonic.
#[derive(Clone, Debug, Default)]
struct Offset {
    cpu: i128,
    io: [i128; 5],
    last: Option<ProcCounters>,
}

/// Rewrites a recording's capture items with a fault.
pub struct Injector {
    fault: Fault,
    namer: Aggregator,
    /// A member of the workload, as the template of extra processes.
    template: Option<ProcessSample>,
    offsets: HashMap<(u32, u64), Offset>,
    /// The extra process (hog, leak) and its counters so far.
    extra: Option<ProcessSample>,
    last_ns: Option<u64>,
    next_pid: u32,
    /// Fork-bomb children not yet sent.
    bombed: f64,
}

impl Injector {
    pub fn new(fault: Fault, group_by: GroupBy) -> Self {
        Injector {
            fault,
            namer: Aggregator::new(group_by, 1000),
            template: None,
            offsets: HashMap::new(),
            extra: None,
            last_ns: None,
            next_pid: 4_000_000,
            bombed: 0.0,
        }
    }

    pub fn fault(&self) -> &Fault {
        &self.fault
    }

    fn ours(&self, s: &ProcessSample) -> bool {
        self.namer.workload(s).0 == self.fault.workload
    }

    /// The items to deliver in place of `item` (events first, then the tick).
    pub fn apply(&mut self, item: CaptureItem) -> Vec<CaptureItem> {
        let CaptureItem::Tick(mut t) = item else {
            return vec![item];
        };
        let now = t.timestamp_ns;
        let dt_ns = self.last_ns.map_or(0, |l| now.saturating_sub(l));
        self.last_ns = Some(now);
        if self.template.is_none() {
            self.template = t
                .samples
                .iter()
                .find(|s| self.ours(s))
                .map(|s| ProcessSample::clone(s));
        }
        let f = self.fault.clone();
        let active = now > f.start_ns && now <= f.end_ns + dt_ns.max(1) && dt_ns > 0;
        let in_span = now > f.start_ns && now <= f.end_ns;
        let mut events = Vec::new();
        match f.kind {
            FaultKind::CostJump | FaultKind::IoStall => self.rewrite(&mut t, in_span),
            FaultKind::CpuHog | FaultKind::MemoryLeak => {
                if active {
                    self.extra_process(&mut t, dt_ns, in_span);
                }
            }
            FaultKind::ForkBomb => {
                if in_span {
                    events = self.bomb(&mut t, dt_ns);
                }
            }
        }
        let mut out: Vec<CaptureItem> = events.into_iter().map(CaptureItem::Event).collect();
        out.push(CaptureItem::Tick(t));
        out
    }

    /// Cost jump and I/O stall: the workload's own processes' counters rewritten.
    fn rewrite(&mut self, t: &mut Tick, in_span: bool) {
        let f = &self.fault;
        let ids: Vec<bool> = t.samples.iter().map(|s| self.ours(s)).collect();
        for (s, ours) in t.samples.iter_mut().zip(ids) {
            if !ours {
                continue;
            }
            let s = Arc::make_mut(s);
            let key = (s.tgid, s.start_ns);
            let o = self.offsets.entry(key).or_default();
            let c = Arc::make_mut(&mut s.counters);
            // A process first seen within the span began within it: all it did is faulty.
            let zero = ProcCounters::default();
            let last = o.last.as_ref().unwrap_or(&zero);
            if in_span {
                let dcpu = c.cpu_ns.saturating_sub(last.cpu_ns) as i128;
                match f.kind {
                    // The same syscalls, `size` times the CPU.
                    FaultKind::CostJump => o.cpu += ((f.size - 1.0) * dcpu as f64) as i128,
                    // Blocked: no I/O, and only a tenth of its CPU.
                    FaultKind::IoStall => {
                        o.cpu -= (f.size * dcpu as f64) as i128;
                        let now = io(c);
                        let before = io(last);
                        for k in 0..5 {
                            o.io[k] -= (now[k] - before[k]).max(0) as i128;
                        }
                    }
                    _ => {}
                }
            }
            o.last = Some(c.clone());
            let shift = |v: u64, by: i128| (v as i128 + by).max(0) as u64;
            c.cpu_ns = shift(c.cpu_ns, o.cpu);
            c.read_bytes = shift(c.read_bytes, o.io[0]);
            c.write_bytes = shift(c.write_bytes, o.io[1]);
            c.block_read_bytes = shift(c.block_read_bytes, o.io[2]);
            c.block_write_bytes = shift(c.block_write_bytes, o.io[3]);
            c.block_ios = shift(c.block_ios, o.io[4]);
            if s.exit.is_some() {
                self.offsets.remove(&key);
            }
        }
    }

    /// Hog and leak: one more process of the workload.
    fn extra_process(&mut self, t: &mut Tick, dt_ns: u64, in_span: bool) {
        let Some(tpl) = &self.template else { return };
        let f = &self.fault;
        let now = t.timestamp_ns;
        let mut p = match self.extra.take() {
            Some(p) => p,
            None => {
                self.next_pid += 1;
                let mut p = tpl.clone();
                p.tgid = self.next_pid;
                p.start_ns = f.start_ns;
                p.ppid = Some(tpl.tgid);
                p.counters = Default::default();
                p.memory = Default::default();
                p.exit = None;
                p
            }
        };
        if in_span {
            match f.kind {
                FaultKind::CpuHog => {
                    let c = Arc::make_mut(&mut p.counters);
                    c.cpu_ns += (f.size * dt_ns as f64) as u64;
                    c.involuntary_switches += 10 * dt_ns / 1_000_000_000;
                }
                FaultKind::MemoryLeak => {
                    let secs = now.saturating_sub(f.start_ns) as f64 / 1e9;
                    p.memory.anon = (f.size * secs) as u64;
                    let c = Arc::make_mut(&mut p.counters);
                    c.page_faults += (f.size * dt_ns as f64 / 1e9 / 4096.0) as u64;
                    c.cpu_ns += dt_ns / 100;
                }
                _ => {}
            }
            self.extra = Some(p.clone());
        } else {
            p.exit = Some(Exit {
                code: Some(0),
                timestamp_ns: now.saturating_sub(dt_ns / 2),
            });
        }
        t.samples.push(Arc::new(p));
    }

    /// Fork bomb: `size` short-lived processes a second, each exec'd and gone within
    /// the interval; their execs as events.
    fn bomb(&mut self, t: &mut Tick, dt_ns: u64) -> Vec<Lifecycle> {
        let Some(tpl) = self.template.clone() else {
            return Vec::new();
        };
        self.bombed += self.fault.size * dt_ns as f64 / 1e9;
        let n = self.bombed.floor() as u32;
        self.bombed -= n as f64;
        let mut events = Vec::new();
        let start = t.timestamp_ns.saturating_sub(dt_ns);
        for k in 0..n.min(10_000) {
            self.next_pid += 1;
            let at = start + dt_ns * k as u64 / n.max(1) as u64;
            let mut p = tpl.clone();
            p.tgid = self.next_pid;
            p.start_ns = at;
            p.ppid = Some(tpl.tgid);
            p.counters = Arc::new(ProcCounters {
                cpu_ns: 2_000_000,
                execs: 1,
                syscalls: 200,
                ..Default::default()
            });
            p.memory.anon = 2 << 20;
            p.exit = Some(Exit {
                code: Some(0),
                timestamp_ns: at + dt_ns / n.max(1) as u64 / 2,
            });
            events.push(Lifecycle {
                kind: LifecycleKind::exec(
                    p.exe
                        .as_deref()
                        .map_or_else(|| format!("/proc/{}", p.tgid), str::to_string),
                ),
                pid: p.tgid,
                tgid: p.tgid,
                ppid: p.ppid,
                timestamp_ns: at,
                cgroup_id: p.cgroup_id,
                comm: p.comm.to_string(),
            });
            t.samples.push(Arc::new(p));
        }
        events
    }
}

fn io(c: &ProcCounters) -> [i64; 5] {
    [
        c.read_bytes as i64,
        c.write_bytes as i64,
        c.block_read_bytes as i64,
        c.block_write_bytes as i64,
        c.block_ios as i64,
    ]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;
    use crate::record::Reader;

    fn rec() -> Vec<CaptureItem> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/compress.umbra");
        Reader::open(&p).unwrap().map(|i| i.unwrap()).collect()
    }

    /// Per workload, the CPU seconds over the recording, by aggregate.
    fn cpu(items: &[CaptureItem]) -> HashMap<WorkloadId, f64> {
        let mut agg = Aggregator::new(GroupBy::Exe, 1000);
        let mut out: HashMap<WorkloadId, f64> = HashMap::new();
        let mut first = true;
        for i in items {
            if let CaptureItem::Tick(t) = i {
                let w = agg.tick(t);
                if std::mem::take(&mut first) {
                    continue;
                }
                for p in w.points {
                    *out.entry(p.workload).or_default() += p.profile.cpu_ns as f64 / 1e9;
                }
            }
        }
        out
    }

    fn ticks(items: &[CaptureItem]) -> Vec<&Tick> {
        items
            .iter()
            .filter_map(|i| match i {
                CaptureItem::Tick(t) => Some(&**t),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_hog_adds_its_cores_and_a_cost_jump_multiplies_the_cpu_in_its_span() {
        let items = rec();
        let before = cpu(&items);
        let (wl, _) = before
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(k, v)| (k.clone(), *v))
            .unwrap();
        let ts = ticks(&items);
        let (start, end) = (ts[2].timestamp_ns, ts[ts.len() - 3].timestamp_ns);
        let secs = (end - start) as f64 / 1e9;
        for (kind, size) in [(FaultKind::CpuHog, 1.0), (FaultKind::CostJump, 3.0)] {
            let mut inj = Injector::new(
                Fault {
                    kind,
                    workload: wl.clone(),
                    start_ns: start,
                    end_ns: end,
                    size,
                },
                GroupBy::Exe,
            );
            let out: Vec<CaptureItem> = items.iter().cloned().flat_map(|i| inj.apply(i)).collect();
            let after = cpu(&out);
            let added = after[&wl] - before[&wl];
            match kind {
                FaultKind::CpuHog => {
                    assert!((added - secs).abs() < 0.05 * secs, "{added} vs {secs}")
                }
                _ => assert!(added > 0.5 * before[&wl], "{added} of {}", before[&wl]),
            }
            // Other workloads are untouched.
            for (k, v) in &before {
                if *k != wl {
                    assert!((after[k] - v).abs() < 1e-9, "{k:?}");
                }
            }
        }
    }

    #[test]
    fn a_fork_bomb_adds_processes_and_exec_events() {
        let items = rec();
        let before = cpu(&items);
        let wl = before
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(k, _)| k.clone())
            .unwrap();
        let ts = ticks(&items);
        let mut inj = Injector::new(
            Fault {
                kind: FaultKind::ForkBomb,
                workload: wl,
                start_ns: ts[2].timestamp_ns,
                end_ns: ts[6].timestamp_ns,
                size: 40.0,
            },
            GroupBy::Exe,
        );
        let out: Vec<CaptureItem> = items.into_iter().flat_map(|i| inj.apply(i)).collect();
        let execs = out
            .iter()
            .filter(|i| matches!(i, CaptureItem::Event(e) if e.tgid >= 4_000_000))
            .count();
        assert!((150..=170).contains(&execs), "{execs}");
    }
}
