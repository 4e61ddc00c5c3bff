//! Summaries: the shadow data points of a period (default 10 s, aligned to multiples of
//! it in wall-clock time) folded per workload,
//! the busiest workloads by CPU kept and the rest folded into one `other` row, so a
//! summary stays small however many workloads a node runs.

use std::collections::HashMap;

use super::message::{
    NodeSummary, REQUESTS_PER_SUMMARY, RequestSummary, Summary, WorkloadForecast, WorkloadSummary,
    wire_band,
};
use crate::{
    aggregate::{ShadowPoint, Window},
    predict::{Forecast, Target},
};

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
    /// The latest forecast of each workload, what made them and their step.
    forecasts: HashMap<String, WorkloadForecast>,
    predictor: String,
    forecast_step_ms: u32,
    /// The period's requests ([`Summary::requests`]) and those beyond the bound.
    requests: Vec<RequestSummary>,
    requests_omitted: u32,
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
            forecasts: HashMap::new(),
            predictor: String::new(),
            forecast_step_ms: 0,
            requests: Vec::new(),
            requests_omitted: 0,
        }
    }

    /// A request predicted at its exec, or one that ended (`used` set): into the summary
    /// of the period they are in. An end joins its prediction's row when that is in the
    /// same period.
    pub fn request(&mut self, r: RequestSummary) {
        if r.used.is_some()
            && let Some(row) = self
                .requests
                .iter_mut()
                .find(|q| (q.pid, q.exec_ms, q.used) == (r.pid, r.exec_ms, None))
        {
            row.used = r.used;
        } else if self.requests.len() < REQUESTS_PER_SUMMARY {
            self.requests.push(r);
        } else {
            self.requests_omitted += 1;
        }
    }

    /// The forecasts made as a bucket closed: each workload's next step goes into the
    /// summary of the period they are in effect at the end of.
    pub fn forecasts(&mut self, fs: &[Forecast]) {
        self.forecasts.clear();
        for f in fs {
            if let (Some(c), Some(m)) = (f.of(Target::Cpu).first(), f.of(Target::Memory).first()) {
                let wf = WorkloadForecast {
                    cpu_cores: wire_band(c),
                    rss_bytes: wire_band(m),
                };
                self.forecasts.insert(f.workload.0.clone(), wf);
            }
        }
        if let Some(f) = fs.first() {
            self.predictor.clone_from(&f.predictor);
            self.forecast_step_ms = f.interval_ms;
        }
    }

    /// Requests that were not kept before they reached the summary.
    pub fn omit(&mut self, n: u64) {
        self.requests_omitted = self.requests_omitted.saturating_add(n as u32);
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
                r.s.forecast = self.forecasts.get(&r.s.workload).copied();
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
            predictor: if self.forecasts.is_empty() {
                String::new()
            } else {
                self.predictor.clone()
            },
            forecast_step_ms: if self.forecasts.is_empty() {
                0
            } else {
                self.forecast_step_ms
            },
            requests: std::mem::take(&mut self.requests),
            requests_omitted: std::mem::take(&mut self.requests_omitted),
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

    /// Each workload's forecast as the period ended rides with its row; one without a
    /// forecast (and `other`) has none, and the summary names what made them.
    #[test]
    fn a_summary_carries_each_workloads_latest_forecast() {
        use crate::predict::Band;
        let mut s = Summarizer::new(10_000, 2);
        let f = |w: &str, cpu: f64, made_ms: u64| Forecast {
            workload: WorkloadId(w.into()),
            made_ms,
            interval_ms: 5000,
            predictor: "onnx:1+aci".into(),
            bands: [
                vec![Band {
                    p10: cpu * 0.5,
                    p50: cpu,
                    p90: cpu * 2.0,
                }],
                vec![Band {
                    p10: 1e6,
                    p50: 2e6,
                    p90: 4e6,
                }],
                vec![],
                vec![],
            ],
        };
        for t in 1..=9 {
            s.push(&window(t, 3));
            if t == 5 {
                s.forecasts(&[f("exe:2", 9.0, 5000), f("exe:1", 7.0, 5000)]);
            }
        }
        s.forecasts(&[f("exe:2", 1.0, 9000)]);
        let sum = s.push(&window(10, 3)).unwrap();
        assert_eq!(
            (sum.predictor.as_str(), sum.forecast_step_ms),
            ("onnx:1+aci", 5000)
        );
        let top = &sum.workloads[0];
        assert_eq!(top.workload, "exe:2");
        let fc = top.forecast.unwrap();
        assert_eq!(
            (fc.cpu_cores, fc.rss_bytes),
            ([0.5, 1.0, 2.0], [1e6, 2e6, 4e6])
        );
        assert_eq!(
            sum.workloads[1].forecast, None,
            "its forecast is no longer the latest"
        );
        assert_eq!(sum.other.as_ref().unwrap().forecast, None);
        // Without forecasts, nothing is said of them.
        let mut plain = Summarizer::new(10_000, 2);
        let sum = (1..=10).find_map(|t| plain.push(&window(t, 1))).unwrap();
        assert_eq!((sum.predictor.as_str(), sum.forecast_step_ms), ("", 0));
    }

    /// A request predicted and ended in one period is one row with what it used; one
    /// still running at the period's end is in it without, and in the period it ends in
    /// again with; rows beyond the bound are counted.
    #[test]
    fn a_summary_carries_the_requests_predicted_and_ended_in_its_period() {
        use super::super::message::RequestUse;
        let req = |pid: u32, used: Option<f32>| RequestSummary {
            key: "exe:sha256:ab".into(),
            name: "xz".into(),
            pid,
            exec_ms: 1000 + pid as u64,
            cpu_seconds: [1.0, 2.0, 3.0],
            used: used.map(|cpu| RequestUse {
                cpu_seconds: cpu,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut s = Summarizer::new(10_000, 10);
        s.push(&window(1, 1));
        s.request(req(1, None));
        s.request(req(2, None));
        s.request(req(1, Some(2.5)));
        let first = (2..=10).find_map(|t| s.push(&window(t, 1))).unwrap();
        assert_eq!(first.requests, vec![req(1, Some(2.5)), req(2, None)]);
        assert_eq!(first.requests_omitted, 0);
        s.request(req(2, Some(0.5)));
        for pid in 3..3 + REQUESTS_PER_SUMMARY as u32 {
            s.request(req(pid, None));
        }
        let second = (11..=20).find_map(|t| s.push(&window(t, 1))).unwrap();
        assert_eq!(second.requests.len(), REQUESTS_PER_SUMMARY);
        assert_eq!(second.requests[0], req(2, Some(0.5)));
        assert_eq!(second.requests_omitted, 1);
        let third = (21..=30).find_map(|t| s.push(&window(t, 1))).unwrap();
        assert_eq!((third.requests.len(), third.requests_omitted), (0, 0));
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
