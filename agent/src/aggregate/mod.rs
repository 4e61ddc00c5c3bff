//! Aggregate: kernel samples become *shadow data points* — per workload and interval,
//! `{timestamp, production input, resource profile}` — plus node totals.
//!
//! [`Aggregator`] is a small synchronous core and a pure function of what capture
//! produced: ticks in, [`Window`]s out. Everything it needs (executable hashes, cgroup
//! paths, node counters) travels in the tick, so a replayed recording gives exactly the
//! points the live agent gave. The point types are the contract with every later stage.

mod history;
mod point;

use std::collections::HashMap;

pub use history::*;
pub use point::*;
use serde::{Deserialize, Serialize};

use crate::capture::{Histogram, NodeStats, ProcCounters, ProcessSample, Tick, hist_quantile};

/// How processes are grouped into workloads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// By executable content (`exe:sha256:<hex>`): the same binary is one workload on
    /// every node and across restarts.
    #[default]
    Exe,
    /// By cgroup v2 directory (`cgroup:<path>`): a container or a systemd service.
    Cgroup,
}

/// Hash maps of the per-process hot path: keys are pids and workload keys made by the
/// kernel and this agent; foldhash (seeded per run) is several times faster than SipHash.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Ticks after which a process missing from every tick is forgotten.
const FORGET_AFTER_TICKS: u64 = 5;

/// One interval's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub points: Vec<ShadowPoint>,
    pub node: NodePoint,
}

/// Turns ticks into windows of shadow data points.
pub struct Aggregator {
    group_by: GroupBy,
    default_interval_ms: u32,
    /// Last counters of each live process, by (tgid, start_ns), and the tick it was last
    /// seen in.
    prev: Map<(u32, u64), (ProcCounters, u64)>,
    ticks: u64,
    last: Option<(u64, NodeStats)>,
    /// Workloads in the previous tick: the next tick's map is sized for them up front
    /// (growing a map of large entries copies them).
    workloads_hint: usize,
}

/// Running sums of one workload within a tick.
#[derive(Default)]
struct Acc {
    name: String,
    processes: u32,
    d: ProcCounters,
    rss: u64,
}

impl Aggregator {
    pub fn new(group_by: GroupBy, default_interval_ms: u32) -> Self {
        Aggregator {
            group_by,
            default_interval_ms,
            prev: Map::default(),
            ticks: 0,
            last: None,
            workloads_hint: 0,
        }
    }

    /// The workload of a process, and a name for people.
    pub fn workload(&self, s: &ProcessSample) -> (WorkloadId, String) {
        let k = self.key(s);
        (k.id(), k.name(s))
    }

    /// The workload key of a process, borrowed from its sample (no allocation per process).
    fn key<'a>(&self, s: &'a ProcessSample) -> Key<'a> {
        match self.group_by {
            GroupBy::Cgroup => match &s.cgroup {
                Some(path) => Key::Cgroup(path),
                None => Key::CgroupId(s.cgroup_id),
            },
            GroupBy::Exe => match (&s.exe_hash, &s.exe) {
                (Some(h), _) => Key::Exe(h),
                // The file could not be read (gone, or no access): its path stands in.
                (None, Some(path)) => Key::Path(path),
                // Kernel threads have no executable.
                (None, None) => Key::Kernel,
            },
        }
    }

    /// One tick in, one window out. Per-process deltas since the previous tick (or since
    /// the process was first seen) are summed per workload; a process's final sample is
    /// counted in the interval it ended in, then forgotten.
    pub fn tick(&mut self, t: &Tick) -> Window {
        let interval_ns = match self.last {
            Some((ts, _)) if t.timestamp_ns > ts => t.timestamp_ns - ts,
            _ => self.default_interval_ms as u64 * 1_000_000,
        };
        let interval_ms = (interval_ns / 1_000_000).max(1) as u32;
        self.ticks += 1;
        let mut by: Map<Key<'_>, Acc> =
            Map::with_capacity_and_hasher(self.workloads_hint, Default::default());
        let mut total = Acc::default();
        for s in &t.samples {
            let k = self.key(s);
            let acc = by.entry(k).or_insert_with(|| Acc {
                name: k.name(s),
                ..Default::default()
            });
            acc.processes += 1;
            let pid = (s.tgid, s.start_ns);
            // The delta since the previous sample of this process (or since it was first
            // seen), summed straight into its workload.
            if s.exit.is_some() {
                match self.prev.remove(&pid) {
                    Some((mut p, _)) => acc.d.add_since(&s.counters, &mut p),
                    None => acc.d.add(&s.counters),
                }
            } else {
                match self.prev.get_mut(&pid) {
                    Some((p, seen)) => {
                        acc.d.add_since(&s.counters, p);
                        *seen = self.ticks;
                    }
                    None => {
                        acc.d.add(&s.counters);
                        self.prev.insert(pid, (s.counters.clone(), self.ticks));
                    }
                }
            }
            if s.exit.is_none() {
                acc.rss += s.memory.rss();
            }
        }
        self.workloads_hint = by.len();
        // Node totals: the sum over workloads (one sum per workload, not per process).
        for a in by.values() {
            total.processes += a.processes;
            total.d.add(&a.d);
            total.rss += a.rss;
        }
        // A process missing from a tick may come back (a map walk can miss an entry that
        // moves under it): its counters are kept for a while, so its history is never
        // counted twice. Gone for good (a cut recording) after a few ticks.
        let now = self.ticks;
        self.prev
            .retain(|_, (_, seen)| now - *seen < FORGET_AFTER_TICKS);
        let pressure_of = |k: &Key<'_>| -> Option<Pressure> {
            let Key::Cgroup(path) = k else { return None };
            let p = t.pressure.iter().find(|p| p.cgroup == *path)?;
            Some(Pressure {
                cpu_some_avg10: p.cpu.unwrap_or(0.0),
                memory_some_avg10: p.memory.unwrap_or(0.0),
                io_some_avg10: p.io.unwrap_or(0.0),
            })
        };
        // Points in workload order. The entries are large: sort indices, not entries.
        let mut entries: Vec<(WorkloadId, Key<'_>, Acc)> =
            by.into_iter().map(|(k, a)| (k.id(), k, a)).collect();
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_unstable_by(|&a, &b| entries[a].0.cmp(&entries[b].0));
        let points: Vec<ShadowPoint> = order
            .into_iter()
            .map(|i| {
                let (id, k, a) = &mut entries[i];
                ShadowPoint {
                    timestamp_ms: t.wall_ms,
                    interval_ms,
                    workload: std::mem::take(id),
                    name: std::mem::take(&mut a.name),
                    processes: a.processes,
                    input: input(&a.d),
                    profile: ResourceProfile {
                        pressure: pressure_of(k),
                        ..profile(&a.d, a.rss, interval_ns)
                    },
                }
            })
            .collect();
        let cpu_busy_ns = match self.last {
            Some((_, prev)) => t.node.cpu_busy_ns.saturating_sub(prev.cpu_busy_ns),
            None => 0,
        };
        self.last = Some((t.timestamp_ns, t.node));
        let node = NodePoint {
            timestamp_ms: t.wall_ms,
            interval_ms,
            cpus: t.node.cpus,
            cpu_busy_ns,
            mem_total_bytes: t.node.mem_total_bytes,
            mem_available_bytes: t.node.mem_available_bytes,
            totals: profile(&total.d, total.rss, interval_ns),
            input: input(&total.d),
        };
        Window { points, node }
    }
}

/// A workload key borrowed from a sample; becomes a [`WorkloadId`] once per workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key<'a> {
    Exe(&'a str),
    Path(&'a str),
    Kernel,
    Cgroup(&'a str),
    CgroupId(u64),
}

impl std::hash::Hash for Key<'_> {
    /// An executable's key is a SHA-256 digest in hex: its last 16 characters are already
    /// uniformly distributed, so only they are hashed (equality still compares it all).
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        std::mem::discriminant(self).hash(h);
        match self {
            Key::Exe(d) => d.as_bytes()[d.len().saturating_sub(16)..].hash(h),
            Key::Path(p) | Key::Cgroup(p) => p.hash(h),
            Key::Kernel => {}
            Key::CgroupId(id) => id.hash(h),
        }
    }
}

impl Key<'_> {
    fn id(&self) -> WorkloadId {
        WorkloadId(match self {
            Key::Exe(h) => format!("exe:{h}"),
            Key::Path(p) => format!("path:{p}"),
            Key::Kernel => "kernel".into(),
            Key::Cgroup(p) => format!("cgroup:{p}"),
            Key::CgroupId(id) => format!("cgroup:id:{id}"),
        })
    }

    fn name(&self, s: &ProcessSample) -> String {
        let exe_name = || {
            s.exe
                .as_deref()
                .and_then(|e| e.rsplit('/').next())
                .filter(|n| !n.is_empty())
                .unwrap_or(&s.comm)
                .to_string()
        };
        match self {
            Key::Kernel => "kernel".into(),
            Key::Cgroup(path) => path
                .rsplit('/')
                .find(|p| !p.is_empty())
                .unwrap_or("/")
                .to_string(),
            Key::Exe(_) | Key::Path(_) | Key::CgroupId(_) => exe_name(),
        }
    }
}

fn input(d: &ProcCounters) -> ProductionInput {
    ProductionInput {
        execs: d.execs,
        conn_accepted: d.conn_accepted,
        conn_opened: d.conn_opened,
        net_rx_bytes: d.net_rx_bytes,
        syscalls: d.syscalls,
    }
}

fn quantile(h: &Histogram, q: f64) -> Option<u64> {
    hist_quantile(h, q)
}

fn profile(d: &ProcCounters, rss: u64, interval_ns: u64) -> ResourceProfile {
    ResourceProfile {
        cpu_ns: d.cpu_ns,
        cpu_cores: d.cpu_ns as f64 / interval_ns.max(1) as f64,
        voluntary_switches: d.voluntary_switches,
        involuntary_switches: d.involuntary_switches,
        runq_p50_ns: quantile(&d.runq_hist, 0.5),
        runq_p99_ns: quantile(&d.runq_hist, 0.99),
        rss_bytes: rss,
        page_faults: d.page_faults,
        read_bytes: d.read_bytes,
        write_bytes: d.write_bytes,
        block_read_bytes: d.block_read_bytes,
        block_write_bytes: d.block_write_bytes,
        block_p99_ns: quantile(&d.block_hist, 0.99),
        net_tx_bytes: d.net_tx_bytes,
        net_rx_bytes: d.net_rx_bytes,
        retransmits: d.retransmits,
        pressure: None,
    }
}

#[cfg(test)]
mod tests;
