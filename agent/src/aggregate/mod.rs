//! Aggregate: kernel samples become *shadow data points* — per workload and interval,
//! `{timestamp, production input, resource profile}` — plus node totals.
//!
//! [`Aggregator`] is a small synchronous core and a pure function of what capture
//! produced: ticks in, [`Window`]s out. Everything it needs (executable hashes, cgroup
//! paths, node counters) travels in the tick, so a replayed recording gives exactly the
//! points the live agent gave. The point types are the contract with every later stage.

mod history;
mod point;

use std::sync::Arc;

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

use crate::FastMap as Map;

/// Ticks after which a process missing from every tick is forgotten.
const FORGET_AFTER_TICKS: u64 = 5;
/// Every this many ticks, processes forgotten are let go.
const PRUNE_EVERY_TICKS: u64 = 8;

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
    /// Each live process, by (tgid, start_ns): its last counters, the tick it was last
    /// seen in, and the slot of its workload.
    prev: Map<(u32, u64), Prev>,
    /// Workloads seen lately, each with its running sums for the current tick. A process
    /// remembers its slot, so the per-process path checks the key instead of hashing it.
    slots: Vec<Slot>,
    slot_of: Map<WorkloadId, u32>,
    ticks: u64,
    last: Option<(u64, NodeStats)>,
}

struct Prev {
    counters: Arc<ProcCounters>,
    seen: u64,
    slot: u32,
}

impl Prev {
    /// Whether the process is still remembered at tick `now` (missing from no more than
    /// the last few ticks), whether or not a forgotten entry was let go yet.
    fn remembered(&self, now: u64) -> bool {
        now - self.seen <= FORGET_AFTER_TICKS
    }
}

struct Slot {
    id: WorkloadId,
    name: String,
    /// The last tick a process of this workload was seen in.
    seen: u64,
    acc: Acc,
}

/// Running sums of one workload within a tick.
#[derive(Default)]
struct Acc {
    processes: u32,
    d: ProcCounters,
    rss: u64,
}

/// Every this many ticks, slots unseen for as long are let go (when there are many).
const SLOT_IDLE_TICKS: u64 = 64;

impl Aggregator {
    pub fn new(group_by: GroupBy, default_interval_ms: u32) -> Self {
        Aggregator {
            group_by,
            default_interval_ms,
            prev: Map::default(),
            slots: Vec::new(),
            slot_of: Map::default(),
            ticks: 0,
            last: None,
        }
    }

    /// The workload of a process, and a name for people.
    pub fn workload(&self, s: &ProcessSample) -> (WorkloadId, String) {
        let k = key(self.group_by, s);
        (k.id(), k.name(s))
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
        let now = self.ticks;
        let mut touched: Vec<u32> = Vec::new();
        for s in &t.samples {
            let k = key(self.group_by, s);
            let pid = (s.tgid, s.start_ns);
            let slots = &mut self.slots;
            let slot_of = &mut self.slot_of;
            // The delta since the previous sample of this process (or since it was first
            // seen), summed straight into its workload.
            let sl = if s.exit.is_some() {
                match self.prev.remove(&pid).filter(|p| p.remembered(now)) {
                    Some(p) => {
                        let sl = slot(slots, slot_of, p.slot, k, s);
                        if !Arc::ptr_eq(&s.counters, &p.counters) {
                            slots[sl].acc.d.add_since(&s.counters, &p.counters);
                        }
                        sl
                    }
                    None => {
                        let sl = slot(slots, slot_of, u32::MAX, k, s);
                        slots[sl].acc.d.add(&s.counters);
                        sl
                    }
                }
            } else {
                match self.prev.get_mut(&pid) {
                    Some(p) if p.remembered(now) => {
                        let sl = slot(slots, slot_of, p.slot, k, s);
                        p.slot = sl as u32;
                        p.seen = now;
                        // The same counters as its last sample (the capture shares them
                        // when nothing changed): nothing happened.
                        if !Arc::ptr_eq(&s.counters, &p.counters) {
                            slots[sl].acc.d.add_since(&s.counters, &p.counters);
                            p.counters = s.counters.clone();
                        }
                        sl
                    }
                    // New, or missing from more than the last few ticks (forgotten,
                    // whether or not its entry was let go yet).
                    _ => {
                        let sl = slot(slots, slot_of, u32::MAX, k, s);
                        slots[sl].acc.d.add(&s.counters);
                        self.prev.insert(
                            pid,
                            Prev {
                                counters: s.counters.clone(),
                                seen: now,
                                slot: sl as u32,
                            },
                        );
                        sl
                    }
                }
            };
            let w = &mut slots[sl];
            if w.seen != now {
                w.seen = now;
                touched.push(sl as u32);
            }
            w.acc.processes += 1;
            if s.exit.is_none() {
                w.acc.rss += s.memory.rss();
            }
        }
        // A process missing from a tick may come back (a map walk can miss an entry that
        // moves under it): its counters are kept for a while, so its history is never
        // counted twice. Gone for good (a cut recording) after a few ticks; their entries
        // are let go every few ticks (each look touches every process's).
        if now.is_multiple_of(PRUNE_EVERY_TICKS) {
            self.prev.retain(|_, p| now - p.seen < FORGET_AFTER_TICKS);
        }
        // Points in workload order; node totals as the sum over workloads (one sum per
        // workload, not per process).
        touched
            .sort_unstable_by(|&a, &b| self.slots[a as usize].id.cmp(&self.slots[b as usize].id));
        let mut total = Acc::default();
        let mut points = Vec::with_capacity(touched.len());
        for &i in &touched {
            let w = &mut self.slots[i as usize];
            let a = std::mem::take(&mut w.acc);
            total.processes += a.processes;
            total.d.add(&a.d);
            total.rss += a.rss;
            points.push(ShadowPoint {
                timestamp_ms: t.wall_ms,
                interval_ms,
                workload: w.id.clone(),
                name: w.name.clone(),
                processes: a.processes,
                input: input(&a.d),
                profile: ResourceProfile {
                    pressure: pressure_of(t, &w.id),
                    ..profile(&a.d, a.rss, interval_ns)
                },
            });
        }
        self.forget_idle_slots(touched.len());
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

    /// Lets go of workloads unseen for a while, once they outnumber the live ones. Slot
    /// numbers change; a process holding a stale one finds its workload again by key.
    fn forget_idle_slots(&mut self, live: usize) {
        if !self.ticks.is_multiple_of(SLOT_IDLE_TICKS) || self.slots.len() <= 2 * live + 1024 {
            return;
        }
        let now = self.ticks;
        self.slots.retain(|w| now - w.seen < SLOT_IDLE_TICKS);
        self.slot_of = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, w)| (w.id.clone(), i as u32))
            .collect();
    }
}

/// The workload key of a process, borrowed from its sample (no allocation per process).
/// The executable workload of a process (`exe:sha256:…`, as `group_by = "exe"` groups it)
/// and its name: the key requests are profiled under.
pub fn exe_key(s: &ProcessSample) -> (WorkloadId, String) {
    let k = key(GroupBy::Exe, s);
    (k.id(), k.name(s))
}

fn key(group_by: GroupBy, s: &ProcessSample) -> Key<'_> {
    match group_by {
        GroupBy::Cgroup => match &s.cgroup {
            Some(path) => Key::Cgroup(path),
            None => Key::CgroupId(s.cgroup_id),
        },
        GroupBy::Exe => match (&s.app, &s.exe_hash, &s.exe) {
            // An interpreter: the program it runs (found once per process by capture).
            (Some(a), _, _) => Key::App(&a.key),
            (None, Some(h), _) => Key::Exe(h),
            // The file could not be read (gone, or no access): its path stands in.
            (None, None, Some(path)) => Key::Path(path),
            // Kernel threads have no executable.
            (None, None, None) => Key::Kernel,
        },
    }
}

/// The slot of `k`: `hint` (the process's slot last tick) when it still holds `k`, which
/// is almost always; else found by id, or made.
fn slot(
    slots: &mut Vec<Slot>,
    slot_of: &mut Map<WorkloadId, u32>,
    hint: u32,
    k: Key<'_>,
    s: &ProcessSample,
) -> usize {
    if let Some(w) = slots.get(hint as usize)
        && k.is(&w.id)
    {
        return hint as usize;
    }
    let id = k.id();
    if let Some(&i) = slot_of.get(&id) {
        return i as usize;
    }
    let i = slots.len();
    slot_of.insert(id.clone(), i as u32);
    slots.push(Slot {
        id,
        name: k.name(s),
        seen: 0,
        acc: Acc::default(),
    });
    i
}

/// PSI of a cgroup workload, where the tick has it.
fn pressure_of(t: &Tick, id: &WorkloadId) -> Option<Pressure> {
    let path =
        id.0.strip_prefix("cgroup:")
            .filter(|p| p.starts_with('/'))?;
    let p = t.pressure.iter().find(|p| p.cgroup == path)?;
    Some(Pressure {
        cpu_some_avg10: p.cpu.unwrap_or(0.0),
        memory_some_avg10: p.memory.unwrap_or(0.0),
        io_some_avg10: p.io.unwrap_or(0.0),
    })
}

/// The workload id (and name) of kernel threads, which have no executable.
pub const KERNEL: &str = "kernel";

/// A workload key borrowed from a sample; becomes a [`WorkloadId`] once per workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key<'a> {
    Exe(&'a str),
    /// What an interpreter runs: `script:…` or `module:…`, used as the id verbatim.
    App(&'a str),
    Path(&'a str),
    Kernel,
    Cgroup(&'a str),
    CgroupId(u64),
}

impl Key<'_> {
    /// Whether `id` is this key's id (`id() == *id`, without formatting one).
    fn is(&self, id: &WorkloadId) -> bool {
        let s = id.0.as_str();
        match self {
            Key::Exe(h) => s.strip_prefix("exe:") == Some(h),
            Key::App(k) => s == *k,
            Key::Path(p) => s.strip_prefix("path:") == Some(p),
            Key::Kernel => s == KERNEL,
            Key::Cgroup(p) => s.strip_prefix("cgroup:") == Some(p),
            Key::CgroupId(n) => s
                .strip_prefix("cgroup:id:")
                .is_some_and(|v| v.parse() == Ok(*n)),
        }
    }

    fn id(&self) -> WorkloadId {
        WorkloadId(match self {
            Key::Exe(h) => format!("exe:{h}"),
            Key::App(k) => (*k).to_string(),
            Key::Path(p) => format!("path:{p}"),
            Key::Kernel => KERNEL.into(),
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
            Key::Kernel => KERNEL.into(),
            Key::Cgroup(path) => path
                .rsplit('/')
                .find(|p| !p.is_empty())
                .unwrap_or("/")
                .to_string(),
            Key::App(_) => s.app.as_ref().map_or_else(exe_name, |a| a.name.clone()),
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
