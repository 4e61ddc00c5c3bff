//! Bounded local history of shadow data points per workload, in downsampling tiers
//! (default: 1 s for the last hour, 1 min for the last day). A memory budget is enforced:
//! when over it, the oldest points go first, counted. Queried by predict, anomaly and the
//! CLI: (workload, time range, resolution).

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{ProductionInput, ResourceProfile, ShadowPoint, Window, WorkloadId};

/// One downsampling tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub resolution_ms: u64,
    /// How far back this tier keeps points.
    pub span_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Finest first; each resolution a multiple of the previous one.
    pub tiers: Vec<Tier>,
    /// Memory for all points of all workloads, bytes (estimated per point).
    pub budget_bytes: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            tiers: vec![
                Tier {
                    resolution_ms: 1_000,
                    span_ms: 3_600_000,
                },
                Tier {
                    resolution_ms: 60_000,
                    span_ms: 86_400_000,
                },
            ],
            budget_bytes: 64 << 20,
        }
    }
}

/// A stored point: its series, and the point without its id and name (the series has
/// them), so every slot has one fixed size and memory is what the budget counts.
#[derive(Clone)]
struct Stored {
    series: u32,
    point: ShadowPoint,
}

const SLOT: u64 = std::mem::size_of::<Stored>() as u64;
/// A series' own memory besides its points: its map entry, id, name and pending buckets.
const SERIES_OVERHEAD: u64 = 160 + 2 * std::mem::size_of::<ShadowPoint>() as u64;

/// One workload.
struct Series {
    id: WorkloadId,
    name: String,
    /// Points of the current bucket of each coarser tier, not yet merged.
    pending: Vec<Option<ShadowPoint>>,
    /// Points held in all tiers.
    held: u64,
}

impl Series {
    fn bytes(&self) -> u64 {
        SERIES_OVERHEAD + (self.id.0.len() + self.name.len()) as u64
    }
}

/// The history itself: one time-ordered ring per tier, shared by all workloads. Each tier
/// gets a share of the budget in proportion to the points its span needs (one hour of
/// seconds needs 3,600 a workload, a day of minutes 1,440); a full tier drops its oldest
/// point for each new one, counted. So the oldest go first, memory never exceeds the
/// budget, and a drop or an expiry costs O(1).
pub struct History {
    cfg: HistoryConfig,
    tiers: Vec<VecDeque<Stored>>,
    /// Bytes of each tier's share of the budget.
    shares: Vec<u64>,
    series: Vec<Option<Series>>,
    index: HashMap<WorkloadId, u32>,
    free: Vec<u32>,
    series_bytes: u64,
    /// Points dropped to stay inside the budget.
    pub dropped: u64,
    /// Points that aged out of their tier's span.
    pub expired: u64,
}

/// Memory of one stored point.
pub fn point_bytes(_: &ShadowPoint) -> u64 {
    SLOT
}

/// A point as stored: without its id and name.
fn slot_of(p: &ShadowPoint) -> ShadowPoint {
    ShadowPoint {
        timestamp_ms: p.timestamp_ms,
        interval_ms: p.interval_ms,
        workload: WorkloadId(String::new()),
        name: String::new(),
        processes: p.processes,
        input: p.input.clone(),
        profile: p.profile.clone(),
    }
}

impl History {
    pub fn new(cfg: HistoryConfig) -> Self {
        let need: Vec<u64> = cfg
            .tiers
            .iter()
            .map(|t| (t.span_ms / t.resolution_ms.max(1)).max(1))
            .collect();
        let total: u64 = need.iter().sum::<u64>().max(1);
        let shares = need
            .iter()
            .map(|n| (cfg.budget_bytes as u128 * *n as u128 / total as u128) as u64)
            .collect();
        History {
            tiers: vec![VecDeque::new(); cfg.tiers.len()],
            shares,
            cfg,
            series: Vec::new(),
            index: HashMap::new(),
            free: Vec::new(),
            series_bytes: 0,
            dropped: 0,
            expired: 0,
        }
    }

    /// Memory held: every tier's slots (allocated, not only used) and each workload's own.
    pub fn bytes(&self) -> u64 {
        self.tiers
            .iter()
            .map(|q| q.capacity() as u64 * SLOT)
            .sum::<u64>()
            + self.series_bytes
    }

    /// Points held, all tiers.
    pub fn points(&self) -> usize {
        self.tiers.iter().map(VecDeque::len).sum()
    }

    pub fn insert(&mut self, w: &Window) {
        for p in &w.points {
            self.push(p);
        }
        if let Some(now) = w.points.iter().map(|p| p.timestamp_ms).max() {
            self.expire(now);
        }
    }

    /// The series of `p`, made if new.
    fn series_of(&mut self, p: &ShadowPoint) -> u32 {
        if let Some(&i) = self.index.get(&p.workload) {
            if let Some(s) = self.series[i as usize].as_mut()
                && s.name != p.name
            {
                self.series_bytes -= s.bytes();
                s.name.clone_from(&p.name);
                self.series_bytes += s.bytes();
            }
            return i;
        }
        let s = Series {
            id: p.workload.clone(),
            name: p.name.clone(),
            pending: vec![None; self.cfg.tiers.len()],
            held: 0,
        };
        self.series_bytes += s.bytes();
        let i = match self.free.pop() {
            Some(i) => {
                self.series[i as usize] = Some(s);
                i
            }
            None => {
                self.series.push(Some(s));
                (self.series.len() - 1) as u32
            }
        };
        self.index.insert(p.workload.clone(), i);
        i
    }

    fn push(&mut self, p: &ShadowPoint) {
        if self.cfg.tiers.is_empty() {
            return;
        }
        let i = self.series_of(p);
        self.store(0, i, slot_of(p));
        for k in 1..self.cfg.tiers.len() {
            let res = self.cfg.tiers[k].resolution_ms.max(1);
            let bucket = |t: u64| t.saturating_sub(1) / res;
            let Some(s) = self.series[i as usize].as_mut() else {
                return;
            };
            let done = match &mut s.pending[k] {
                Some(acc) if bucket(acc.timestamp_ms) == bucket(p.timestamp_ms) => {
                    merge(acc, p);
                    None
                }
                slot => slot.replace(slot_of(p)),
            };
            if let Some(done) = done {
                self.store(k, i, done);
            }
        }
    }

    /// Appends to tier `k`, within its share: grows by a quarter while the share allows
    /// (tier 0 also carries the workloads' own memory), else drops the oldest.
    fn store(&mut self, k: usize, series: u32, point: ShadowPoint) {
        let share = if k == 0 {
            self.shares[0].saturating_sub(self.series_bytes)
        } else {
            self.shares[k]
        };
        let q = &mut self.tiers[k];
        if q.len() == q.capacity() {
            let room = (share / SLOT).saturating_sub(q.capacity() as u64) as usize;
            let grow = (q.capacity() / 4).max(64).min(room);
            if grow > 0 {
                q.reserve_exact(grow);
            }
        }
        loop {
            let q = &mut self.tiers[k];
            if q.len() < q.capacity() && (q.len() as u64 + 1) * SLOT <= share {
                break;
            }
            let Some(old) = q.pop_front() else { break };
            let emptied = q.is_empty();
            self.dropped += 1;
            self.release(old.series);
            if emptied {
                break;
            }
        }
        let q = &mut self.tiers[k];
        q.push_back(Stored { series, point });
        if let Some(s) = self.series[series as usize].as_mut() {
            s.held += 1;
        }
    }

    /// A point of `series` left its tier: the series goes when nothing of it is left.
    fn release(&mut self, series: u32) {
        let Some(s) = self.series[series as usize].as_mut() else {
            return;
        };
        s.held = s.held.saturating_sub(1);
        if s.held == 0 && s.pending.iter().all(Option::is_none) {
            let bytes = s.bytes();
            if let Some(s) = self.series[series as usize].take() {
                self.index.remove(&s.id);
            }
            self.series_bytes -= bytes;
            self.free.push(series);
        }
    }

    fn expire(&mut self, now_ms: u64) {
        for k in 0..self.tiers.len() {
            let span = self.cfg.tiers[k].span_ms;
            while self.tiers[k]
                .front()
                .is_some_and(|s| s.point.timestamp_ms + span < now_ms)
            {
                if let Some(old) = self.tiers[k].pop_front() {
                    self.expired += 1;
                    self.release(old.series);
                }
            }
        }
        // A workload gone long enough that its pending coarse buckets are past every span.
        let oldest = self
            .cfg
            .tiers
            .last()
            .map_or(0, |t| now_ms.saturating_sub(t.span_ms));
        for i in 0..self.series.len() {
            let stale = self.series[i].as_ref().is_some_and(|s| {
                s.held == 0 && s.pending.iter().flatten().all(|p| p.timestamp_ms < oldest)
            });
            if stale {
                if let Some(s) = self.series[i].as_mut() {
                    s.pending.iter_mut().for_each(|p| *p = None);
                    s.held = 1;
                }
                self.release(i as u32);
            }
        }
    }

    /// Points of `workload` ending in `(from_ms, to_ms]`, at `resolution_ms` (rounded up to
    /// the finest tier that still covers `from_ms`; merged further when coarser is asked).
    pub fn query(
        &self,
        workload: &WorkloadId,
        from_ms: u64,
        to_ms: u64,
        resolution_ms: u64,
    ) -> Vec<ShadowPoint> {
        let Some(&i) = self.index.get(workload) else {
            return vec![];
        };
        let Some(s) = self.series[i as usize].as_ref() else {
            return vec![];
        };
        let tiers = &self.cfg.tiers;
        let first = |k: usize| {
            self.tiers[k]
                .iter()
                .find(|p| p.series == i)
                .map(|p| p.point.timestamp_ms)
        };
        let pick = (0..tiers.len())
            .find(|&k| {
                tiers[k].resolution_ms >= resolution_ms
                    || first(k).is_some_and(|t| t <= from_ms + tiers[k].resolution_ms)
                        && tiers
                            .get(k + 1)
                            .is_none_or(|t| t.resolution_ms > resolution_ms)
            })
            .unwrap_or(tiers.len().saturating_sub(1));
        let Some(q) = self.tiers.get(pick) else {
            return vec![];
        };
        let res = resolution_ms.max(tiers[pick].resolution_ms).max(1);
        let mut out: Vec<ShadowPoint> = Vec::new();
        for p in q
            .iter()
            .filter(|p| p.series == i)
            .map(|p| &p.point)
            .filter(|p| p.timestamp_ms > from_ms && p.timestamp_ms <= to_ms)
        {
            let bucket = |t: u64| t.saturating_sub(1) / res;
            match out.last_mut() {
                Some(acc) if bucket(acc.timestamp_ms) == bucket(p.timestamp_ms) => merge(acc, p),
                _ => out.push(p.clone()),
            }
        }
        for p in &mut out {
            p.workload = s.id.clone();
            p.name.clone_from(&s.name);
        }
        out
    }

    pub fn workloads(&self) -> impl Iterator<Item = &WorkloadId> {
        self.index.keys()
    }
}

/// Folds `p` (a later interval) into `acc`: counts add, levels take the latest, latency
/// quantiles the worst (an upper bound of the merged quantile). The forecast buckets of
/// predict merge with the same rule.
pub fn merge(acc: &mut ShadowPoint, p: &ShadowPoint) {
    let span = acc.interval_ms as u64 + p.interval_ms as u64;
    acc.interval_ms = span.min(u32::MAX as u64) as u32;
    acc.timestamp_ms = p.timestamp_ms;
    acc.processes = acc.processes.max(p.processes);
    let (a, b) = (&mut acc.input, &p.input);
    *a = ProductionInput {
        execs: a.execs + b.execs,
        conn_accepted: a.conn_accepted + b.conn_accepted,
        conn_opened: a.conn_opened + b.conn_opened,
        net_rx_bytes: a.net_rx_bytes + b.net_rx_bytes,
        syscalls: a.syscalls + b.syscalls,
    };
    let (a, b) = (&mut acc.profile, &p.profile);
    let cpu_ns = a.cpu_ns + b.cpu_ns;
    *a = ResourceProfile {
        cpu_ns,
        cpu_cores: if span > 0 {
            cpu_ns as f64 / (span as f64 * 1e6)
        } else {
            0.0
        },
        voluntary_switches: a.voluntary_switches + b.voluntary_switches,
        involuntary_switches: a.involuntary_switches + b.involuntary_switches,
        runq_p50_ns: a.runq_p50_ns.max(b.runq_p50_ns),
        runq_p99_ns: a.runq_p99_ns.max(b.runq_p99_ns),
        rss_bytes: b.rss_bytes,
        page_faults: a.page_faults + b.page_faults,
        read_bytes: a.read_bytes + b.read_bytes,
        write_bytes: a.write_bytes + b.write_bytes,
        block_read_bytes: a.block_read_bytes + b.block_read_bytes,
        block_write_bytes: a.block_write_bytes + b.block_write_bytes,
        block_p99_ns: a.block_p99_ns.max(b.block_p99_ns),
        net_tx_bytes: a.net_tx_bytes + b.net_tx_bytes,
        net_rx_bytes: a.net_rx_bytes + b.net_rx_bytes,
        retransmits: a.retransmits + b.retransmits,
        pressure: b.pressure.clone().or(a.pressure.clone()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::NodePoint;

    fn win(ts: u64, ids: &[&str]) -> Window {
        Window {
            points: ids
                .iter()
                .map(|id| ShadowPoint {
                    timestamp_ms: ts,
                    interval_ms: 1000,
                    workload: WorkloadId(id.to_string()),
                    name: id.to_string(),
                    processes: 1,
                    input: ProductionInput::default(),
                    profile: ResourceProfile {
                        cpu_ns: 500_000_000,
                        write_bytes: 10,
                        ..Default::default()
                    },
                })
                .collect(),
            node: NodePoint::default(),
        }
    }

    fn cfg(budget: u64) -> HistoryConfig {
        HistoryConfig {
            tiers: vec![
                Tier {
                    resolution_ms: 1000,
                    span_ms: 60_000,
                },
                Tier {
                    resolution_ms: 10_000,
                    span_ms: 600_000,
                },
            ],
            budget_bytes: budget,
        }
    }

    #[test]
    fn downsampling_keeps_totals() {
        let mut h = History::new(cfg(u64::MAX));
        for s in 1..=120u64 {
            h.insert(&win(s * 1000, &["a"]));
        }
        let id = WorkloadId("a".into());
        // The fine tier keeps the last minute only.
        let fine = h.query(&id, 0, u64::MAX, 1000);
        assert_eq!(fine.len(), 61);
        assert!(h.expired > 0);
        // The coarse tier covers it all: 10 s buckets of 10 points (the current one pending).
        let coarse = h.query(&id, 0, u64::MAX, 10_000);
        assert_eq!(coarse.len(), 11);
        assert!(
            coarse
                .iter()
                .all(|p| p.profile.write_bytes == 100 && p.interval_ms == 10_000)
        );
        assert!((coarse[0].profile.cpu_cores - 0.5).abs() < 1e-9);
        // Asking for 30 s merges three coarse points.
        let merged = h.query(&id, 0, 90_000, 30_000);
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[0].profile.write_bytes, 300);
    }

    #[test]
    fn budget_is_enforced_oldest_first_and_counted() {
        let one = point_bytes(&win(1, &["a"]).points[0]);
        let mut h = History::new(cfg(one * 20));
        for s in 1..=30u64 {
            h.insert(&win(s * 1000, &["a"]));
            assert!(h.bytes() <= one * 20);
        }
        assert!(h.dropped >= 10);
        let fine = h.query(&WorkloadId("a".into()), 0, u64::MAX, 1000);
        // What is left is the newest.
        assert_eq!(fine.last().map(|p| p.timestamp_ms), Some(30_000));
        assert!(fine.first().is_some_and(|p| p.timestamp_ms > 1000));
    }

    #[test]
    fn unknown_workload_is_empty() {
        let h = History::new(HistoryConfig::default());
        assert!(h.query(&WorkloadId("x".into()), 0, 1, 1000).is_empty());
    }
}
