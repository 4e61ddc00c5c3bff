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

#[derive(Default)]
struct Series {
    tiers: Vec<VecDeque<ShadowPoint>>,
    /// Points of the current bucket of each coarser tier, not yet merged.
    pending: Vec<Option<ShadowPoint>>,
}

/// The history itself.
pub struct History {
    cfg: HistoryConfig,
    series: HashMap<WorkloadId, Series>,
    bytes: u64,
    /// Points dropped to stay inside the budget.
    pub dropped: u64,
    /// Points that aged out of their tier's span.
    pub expired: u64,
}

/// Estimated memory of one stored point.
pub fn point_bytes(p: &ShadowPoint) -> u64 {
    (std::mem::size_of::<ShadowPoint>() + p.workload.0.len() + p.name.len()) as u64
}

impl History {
    pub fn new(cfg: HistoryConfig) -> Self {
        History {
            cfg,
            series: HashMap::new(),
            bytes: 0,
            dropped: 0,
            expired: 0,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Points held, all tiers.
    pub fn points(&self) -> usize {
        self.series
            .values()
            .map(|s| s.tiers.iter().map(VecDeque::len).sum::<usize>())
            .sum()
    }

    pub fn insert(&mut self, w: &Window) {
        for p in &w.points {
            self.push(p);
        }
        if let Some(now) = w.points.iter().map(|p| p.timestamp_ms).max() {
            self.expire(now);
        }
        self.enforce_budget();
    }

    fn push(&mut self, p: &ShadowPoint) {
        let n = self.cfg.tiers.len();
        let tiers = self.cfg.tiers.clone();
        let s = self
            .series
            .entry(p.workload.clone())
            .or_insert_with(|| Series {
                tiers: vec![VecDeque::new(); n],
                pending: vec![None; n],
            });
        let mut added = 0u64;
        if n > 0 {
            s.tiers[0].push_back(p.clone());
            added += point_bytes(p);
        }
        for (k, tier) in tiers.iter().enumerate().skip(1) {
            let bucket = |t: u64| t.saturating_sub(1) / tier.resolution_ms.max(1);
            match &mut s.pending[k] {
                Some(acc) if bucket(acc.timestamp_ms) == bucket(p.timestamp_ms) => merge(acc, p),
                slot => {
                    if let Some(done) = slot.take() {
                        added += point_bytes(&done);
                        s.tiers[k].push_back(done);
                    }
                    *slot = Some(p.clone());
                }
            }
        }
        self.bytes += added;
    }

    fn expire(&mut self, now_ms: u64) {
        for s in self.series.values_mut() {
            for (k, tier) in self.cfg.tiers.iter().enumerate() {
                let q = &mut s.tiers[k];
                while q
                    .front()
                    .is_some_and(|p| p.timestamp_ms + tier.span_ms < now_ms)
                {
                    if let Some(p) = q.pop_front() {
                        self.bytes = self.bytes.saturating_sub(point_bytes(&p));
                        self.expired += 1;
                    }
                }
            }
        }
        self.series.retain(|_, s| {
            s.tiers.iter().any(|q| !q.is_empty()) || s.pending.iter().any(Option::is_some)
        });
    }

    /// Drops the oldest points, finest tier first (coarser tiers still cover that time),
    /// until inside the budget.
    fn enforce_budget(&mut self) {
        while self.bytes > self.cfg.budget_bytes {
            let mut oldest: Option<(usize, WorkloadId, u64)> = None;
            for k in 0..self.cfg.tiers.len() {
                for (id, s) in &self.series {
                    if let Some(p) = s.tiers[k].front()
                        && oldest
                            .as_ref()
                            .is_none_or(|o| o.0 == k && p.timestamp_ms < o.2)
                    {
                        oldest = Some((k, id.clone(), p.timestamp_ms));
                    }
                }
                if oldest.is_some() {
                    break;
                }
            }
            let Some((k, id, _)) = oldest else { break };
            if let Some(p) = self
                .series
                .get_mut(&id)
                .and_then(|s| s.tiers[k].pop_front())
            {
                self.bytes = self.bytes.saturating_sub(point_bytes(&p));
                self.dropped += 1;
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
        let Some(s) = self.series.get(workload) else {
            return vec![];
        };
        let tiers = &self.cfg.tiers;
        let pick = (0..tiers.len())
            .find(|&k| {
                tiers[k].resolution_ms >= resolution_ms
                    || s.tiers[k]
                        .front()
                        .is_some_and(|p| p.timestamp_ms <= from_ms + tiers[k].resolution_ms)
                        && tiers
                            .get(k + 1)
                            .is_none_or(|t| t.resolution_ms > resolution_ms)
            })
            .unwrap_or(tiers.len().saturating_sub(1));
        let Some(q) = s.tiers.get(pick) else {
            return vec![];
        };
        let res = resolution_ms.max(tiers[pick].resolution_ms).max(1);
        let mut out: Vec<ShadowPoint> = Vec::new();
        for p in q
            .iter()
            .filter(|p| p.timestamp_ms > from_ms && p.timestamp_ms <= to_ms)
        {
            let bucket = |t: u64| t.saturating_sub(1) / res;
            match out.last_mut() {
                Some(acc) if bucket(acc.timestamp_ms) == bucket(p.timestamp_ms) => merge(acc, p),
                _ => out.push(p.clone()),
            }
        }
        out
    }

    pub fn workloads(&self) -> impl Iterator<Item = &WorkloadId> {
        self.series.keys()
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
