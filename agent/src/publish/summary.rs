//! Summaries: the shadow data points of a period (default 10 s, aligned to multiples of
//! it in wall-clock time) folded per workload,
//! the busiest workloads by CPU kept and the rest folded into one `other` row, so a
//! summary stays small however many workloads a node runs.

use std::collections::HashMap;

use super::message::{NodeSummary, Summary, WorkloadSummary};
use crate::aggregate::{ShadowPoint, Window};

/// Folds windows into summaries; a pure, synchronous core.
pub struct Summarizer {
    period_ms: u64,
    max_workloads: usize,
    start_ms: Option<u64>,
    intervals: u32,
    node: NodeSummary,
    cpu_busy_sum: f64,
    rows: HashMap<String, Row>,
    last_ms: u64,
}

#[derive(Default)]
struct Row {
    s: WorkloadSummary,
    cpu_sum: f64,
}

impl Summarizer {
    pub fn new(period_ms: u64, max_workloads: usize) -> Summarizer {
        Summarizer {
            period_ms: period_ms.max(1),
            max_workloads,
            start_ms: None,
            intervals: 0,
            node: NodeSummary::default(),
            cpu_busy_sum: 0.0,
            rows: HashMap::new(),
            last_ms: 0,
        }
    }

    /// Adds a window; returns the summary of the period when this window completes it.
    pub fn push(&mut self, w: &Window) -> Option<Summary> {
        let n = &w.node;
        let start = *self
            .start_ms
            .get_or_insert(n.timestamp_ms.saturating_sub(n.interval_ms as u64));
        self.intervals += 1;
        self.last_ms = n.timestamp_ms;
        let busy = n.cpu_busy_ns as f64 / (n.interval_ms.max(1) as f64 * 1e6);
        self.cpu_busy_sum += busy;
        let node = &mut self.node;
        node.cpus = n.cpus;
        node.cpu_busy_max = node.cpu_busy_max.max(busy as f32);
        node.mem_total_bytes = n.mem_total_bytes;
        node.mem_available_min_bytes = if self.intervals == 1 {
            n.mem_available_bytes
        } else {
            node.mem_available_min_bytes.min(n.mem_available_bytes)
        };
        for p in &w.points {
            let row = self.rows.entry(p.workload.0.clone()).or_default();
            fold(row, p);
        }
        // Periods end on multiples of the period in wall-clock time, so a fleet's
        // summaries line up; half an interval of slack absorbs tick jitter.
        let half = n.interval_ms as u64 / 2;
        let boundary = ((start + half) / self.period_ms + 1) * self.period_ms;
        (n.timestamp_ms + half >= boundary).then(|| self.take(n.timestamp_ms))
    }

    /// The summary of what was pushed so far (at shutdown, the end of a replay), if
    /// anything: a shorter period, ending with the last window.
    pub fn flush(&mut self) -> Option<Summary> {
        (self.intervals > 0).then(|| self.take(self.last_ms))
    }

    fn take(&mut self, end_ms: u64) -> Summary {
        let start = self.start_ms.take().unwrap_or(end_ms);
        let intervals = std::mem::take(&mut self.intervals).max(1);
        let mut node = std::mem::take(&mut self.node);
        node.cpu_busy_mean = (std::mem::take(&mut self.cpu_busy_sum) / intervals as f64) as f32;
        let mut rows: Vec<WorkloadSummary> = self
            .rows
            .drain()
            .map(|(_, mut r)| {
                r.s.cpu_cores_mean = (r.cpu_sum / intervals as f64) as f32;
                r.s
            })
            .collect();
        node.workloads = rows.len() as u32;
        rows.sort_by(|a, b| {
            b.cpu_cores_mean
                .total_cmp(&a.cpu_cores_mean)
                .then_with(|| a.workload.cmp(&b.workload))
        });
        let other = (rows.len() > self.max_workloads).then(|| {
            let mut o = WorkloadSummary {
                workload: "other".into(),
                name: format!("{} more workloads", rows.len() - self.max_workloads),
                ..Default::default()
            };
            for r in rows.drain(self.max_workloads..) {
                merge(&mut o, &r);
            }
            o
        });
        Summary {
            start_ms: start,
            period_ms: end_ms.saturating_sub(start) as u32,
            intervals,
            node,
            workloads: rows,
            other,
        }
    }
}

fn fold(row: &mut Row, p: &ShadowPoint) {
    let s = &mut row.s;
    if s.workload.is_empty() {
        s.workload = p.workload.0.clone();
        s.name = p.name.clone();
    }
    let (i, r) = (&p.input, &p.profile);
    row.cpu_sum += r.cpu_cores;
    s.processes_max = s.processes_max.max(p.processes);
    s.cpu_cores_max = s.cpu_cores_max.max(r.cpu_cores as f32);
    s.rss_max_bytes = s.rss_max_bytes.max(r.rss_bytes);
    s.runq_p99_max_ns = s.runq_p99_max_ns.max(r.runq_p99_ns.unwrap_or(0));
    s.page_faults += r.page_faults;
    s.read_bytes += r.read_bytes;
    s.write_bytes += r.write_bytes;
    s.block_read_bytes += r.block_read_bytes;
    s.block_write_bytes += r.block_write_bytes;
    s.net_rx_bytes += r.net_rx_bytes;
    s.net_tx_bytes += r.net_tx_bytes;
    s.retransmits += r.retransmits;
    s.execs += i.execs;
    s.conn_accepted += i.conn_accepted;
    s.conn_opened += i.conn_opened;
    s.syscalls += i.syscalls;
    if let Some(pr) = &r.pressure {
        let m = s.pressure_max.get_or_insert([0.0; 3]);
        m[0] = m[0].max(pr.cpu_some_avg10);
        m[1] = m[1].max(pr.memory_some_avg10);
        m[2] = m[2].max(pr.io_some_avg10);
    }
}

/// Adds a workload's summary into the `other` row: sums add, peaks add too (the
/// workloads ran side by side), pressure keeps the worst.
fn merge(o: &mut WorkloadSummary, r: &WorkloadSummary) {
    o.processes_max += r.processes_max;
    o.cpu_cores_mean += r.cpu_cores_mean;
    o.cpu_cores_max += r.cpu_cores_max;
    o.rss_max_bytes += r.rss_max_bytes;
    o.runq_p99_max_ns = o.runq_p99_max_ns.max(r.runq_p99_max_ns);
    o.page_faults += r.page_faults;
    o.read_bytes += r.read_bytes;
    o.write_bytes += r.write_bytes;
    o.block_read_bytes += r.block_read_bytes;
    o.block_write_bytes += r.block_write_bytes;
    o.net_rx_bytes += r.net_rx_bytes;
    o.net_tx_bytes += r.net_tx_bytes;
    o.retransmits += r.retransmits;
    o.execs += r.execs;
    o.conn_accepted += r.conn_accepted;
    o.conn_opened += r.conn_opened;
    o.syscalls += r.syscalls;
    if let Some(p) = r.pressure_max {
        let m = o.pressure_max.get_or_insert([0.0; 3]);
        for k in 0..3 {
            m[k] = m[k].max(p[k]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{NodePoint, ProductionInput, ResourceProfile, WorkloadId};

    fn window(t_s: u64, workloads: u32) -> Window {
        Window {
            points: (0..workloads)
                .map(|i| ShadowPoint {
                    timestamp_ms: t_s * 1000,
                    interval_ms: 1000,
                    workload: WorkloadId(format!("exe:{i}")),
                    name: format!("w{i}"),
                    processes: 1,
                    input: ProductionInput {
                        execs: 1,
                        ..Default::default()
                    },
                    profile: ResourceProfile {
                        cpu_cores: i as f64 / 100.0 + t_s as f64 / 1000.0,
                        read_bytes: 100,
                        rss_bytes: t_s * 10,
                        ..Default::default()
                    },
                })
                .collect(),
            node: NodePoint {
                timestamp_ms: t_s * 1000,
                interval_ms: 1000,
                cpus: 2,
                cpu_busy_ns: 500_000_000 * (t_s % 2),
                mem_available_bytes: 1000 - t_s,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_period_of_windows_becomes_one_summary_with_sums_means_and_peaks() {
        let mut s = Summarizer::new(10_000, 100);
        let out: Vec<Summary> = (1..=25).filter_map(|t| s.push(&window(t, 3))).collect();
        assert_eq!(out.len(), 2);
        let a = &out[0];
        assert_eq!((a.start_ms, a.period_ms, a.intervals), (0, 10_000, 10));
        assert_eq!(a.workloads.len(), 3);
        let top = &a.workloads[0];
        assert_eq!(top.workload, "exe:2");
        assert_eq!(top.execs, 10);
        assert_eq!(top.read_bytes, 1000);
        assert_eq!(top.rss_max_bytes, 100);
        assert!((top.cpu_cores_mean - (0.02 + 0.0055)).abs() < 1e-6);
        assert!((top.cpu_cores_max - 0.03).abs() < 1e-6);
        assert_eq!(a.node.mem_available_min_bytes, 990);
        assert!((a.node.cpu_busy_mean - 0.25).abs() < 1e-6);
        assert_eq!(a.node.cpu_busy_max, 0.5);
        let rest = s.flush().unwrap();
        assert_eq!(
            (rest.start_ms, rest.period_ms, rest.intervals),
            (20_000, 5000, 5)
        );
        assert!(s.flush().is_none());
    }

    #[test]
    fn periods_align_to_the_clock_and_absorb_jitter() {
        let mut s = Summarizer::new(2000, 10);
        let mut w = window(1, 1);
        let mut out = Vec::new();
        // Ticks a second apart, each a millisecond or two late or early.
        for (i, jitter) in [3i64, -1, 2, -2, 1, 0, -1, 2, 1, -2, 0, 1]
            .iter()
            .enumerate()
        {
            w.node.timestamp_ms = (1_000_000 + 1000 * i as i64 + jitter) as u64;
            w.node.interval_ms = 1000;
            out.extend(s.push(&w));
        }
        let intervals: Vec<u32> = out.iter().map(|s| s.intervals).collect();
        assert_eq!(intervals, [1, 2, 2, 2, 2, 2]);
        // Each period starts within the jitter of a multiple of 2 s.
        assert!(
            out[1..].iter().all(|s| (s.start_ms + 3) % 2000 <= 6),
            "{out:?}"
        );
    }

    #[test]
    fn workloads_beyond_the_limit_fold_into_other_and_nothing_is_lost() {
        let mut s = Summarizer::new(1000, 10);
        let sum = s.push(&window(1, 50)).unwrap();
        assert_eq!(sum.workloads.len(), 10);
        assert_eq!(sum.node.workloads, 50);
        let other = sum.other.unwrap();
        assert_eq!(other.execs, 40);
        let total: u64 = sum.workloads.iter().map(|w| w.read_bytes).sum::<u64>() + other.read_bytes;
        assert_eq!(total, 50 * 100);
        // The busiest are kept.
        assert_eq!(sum.workloads[0].workload, "exe:49");
    }
}
