//! Forecast feature rows: shadow data points merged into buckets of the forecast interval,
//! and each bucket's per-bucket feature vocabulary (`models/CONTRACT.md`). The live stage,
//! `umbra export --format forecast`, `umbra eval` and `umbra simulate` all go through
//! [`Featurizer`], so a model is trained on exactly what it will see.
//!
//! Bucket `k` holds a workload's points whose `timestamp_ms` fall in
//! `((k-1)·interval, k·interval]`, merged with the history's rule (counts add, RSS the
//! latest, processes the most, CPU cores over the summed intervals). Rates are per second
//! of that summed interval, as [`Target::of`] computes them for a merged point. A bucket
//! closes once a window at or past its end has arrived. A workload absent from a bucket gets
//! a zero bucket; after `forget_after` absent buckets in a row it is forgotten (and a return
//! starts with zeros before it, which is what it had).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{Batch, Series, Target};
use crate::aggregate::{ShadowPoint, Window, WorkloadId, merge};

/// The per-bucket feature vocabulary, in the order of [`Bucket::features`].
pub const FEATURES: [&str; 17] = [
    "cpu_cores",
    "rss_bytes",
    "processes",
    "read_bps",
    "write_bps",
    "block_read_bps",
    "block_write_bps",
    "net_rx_bps",
    "net_tx_bps",
    "execs_ps",
    "conn_accepted_ps",
    "conn_opened_ps",
    "syscalls_ps",
    "page_faults_ps",
    "tod_sin",
    "tod_cos",
    "present",
];

/// Number of per-bucket features.
pub const N_FEATURES: usize = FEATURES.len();

/// Index of a feature in [`FEATURES`] by name.
pub fn feature_index(name: &str) -> Option<usize> {
    FEATURES.iter().position(|f| *f == name)
}

const CPU: usize = 0;
const RSS: usize = 1;
const READ: usize = 3;
const WRITE: usize = 4;
const NET_RX: usize = 7;
const NET_TX: usize = 8;
const TOD_SIN: usize = 14;
const TOD_COS: usize = 15;
const PRESENT: usize = 16;

const DAY_MS: u64 = 86_400_000;

/// One workload, one bucket: its features as the model sees them (`float32`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// End of the bucket, ms since the Unix epoch (a multiple of the interval).
    pub end_ms: u64,
    pub features: [f32; N_FEATURES],
}

impl Bucket {
    /// A bucket in which the workload had no point: zeros, time features still computed.
    pub fn absent(end_ms: u64) -> Bucket {
        let mut features = [0.0; N_FEATURES];
        let (s, c) = time_of_day(end_ms);
        features[TOD_SIN] = s;
        features[TOD_COS] = c;
        Bucket { end_ms, features }
    }

    /// The bucket of a merged point (all of a workload's points of the bucket).
    pub fn of(p: &ShadowPoint, end_ms: u64) -> Bucket {
        let secs = (p.interval_ms.max(1) as f64) / 1000.0;
        let ps = |v: u64| (v as f64 / secs) as f32;
        let (i, r) = (&p.input, &p.profile);
        let mut b = Bucket::absent(end_ms);
        let f = &mut b.features;
        f[CPU] = r.cpu_cores as f32;
        f[RSS] = r.rss_bytes as f32;
        f[2] = p.processes as f32;
        f[READ] = ps(r.read_bytes);
        f[WRITE] = ps(r.write_bytes);
        f[5] = ps(r.block_read_bytes);
        f[6] = ps(r.block_write_bytes);
        f[NET_RX] = ps(r.net_rx_bytes);
        f[NET_TX] = ps(r.net_tx_bytes);
        f[9] = ps(i.execs);
        f[10] = ps(i.conn_accepted);
        f[11] = ps(i.conn_opened);
        f[12] = ps(i.syscalls);
        f[13] = ps(r.page_faults);
        f[PRESENT] = 1.0;
        b
    }

    pub fn present(&self) -> bool {
        self.features[PRESENT] > 0.0
    }

    /// This bucket's value of `t`, in [`Target`]'s units.
    pub fn target(&self, t: Target) -> f64 {
        let f = |i: usize| self.features[i] as f64;
        match t {
            Target::Cpu => f(CPU),
            Target::Memory => f(RSS),
            Target::Io => f(READ) + f(WRITE),
            Target::Net => f(NET_RX) + f(NET_TX),
        }
    }
}

/// `sin`/`cos` of the time of day (UTC) at `ms`.
fn time_of_day(ms: u64) -> (f32, f32) {
    let a = std::f64::consts::TAU * (ms % DAY_MS) as f64 / DAY_MS as f64;
    (a.sin() as f32, a.cos() as f32)
}

/// How the featurizer buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    /// Length of a bucket, ms (a multiple of the capture interval).
    pub interval_ms: u64,
    /// Buckets kept per workload (the longest window a predictor asks for).
    pub depth: usize,
    /// Absent buckets in a row after which a workload is forgotten (at least `depth`).
    pub forget_after: u32,
}

/// One tracked workload.
#[derive(Clone, Debug)]
pub struct Track {
    pub name: String,
    /// The last `depth` buckets, oldest first; zeros before the workload appeared.
    buckets: VecDeque<Bucket>,
    /// Absent buckets since the last present one.
    absent: u32,
}

impl Track {
    pub fn buckets(&self) -> &[Bucket] {
        self.buckets.as_slices().0
    }

    pub fn newest(&self) -> Option<&Bucket> {
        self.buckets.back()
    }
}

/// Windows in, closed buckets out: one [`Batch`] per closed bucket, every tracked workload
/// in it (in workload order).
pub struct Featurizer {
    cfg: BucketConfig,
    /// End of the bucket being filled, and the points merged into it per workload.
    open: Option<u64>,
    /// End of the last bucket closed.
    last_closed: Option<u64>,
    pending: BTreeMap<WorkloadId, ShadowPoint>,
    tracks: BTreeMap<WorkloadId, Track>,
    /// The first window holds everything since each process was first seen, not one
    /// interval: it is left out.
    seen_first: bool,
    /// Buckets closed so far.
    pub closed: u64,
    /// Times the clock jumped by more than `forget_after` buckets (every workload forgotten).
    pub resets: u64,
}

impl Featurizer {
    pub fn new(cfg: BucketConfig) -> Featurizer {
        let cfg = BucketConfig {
            interval_ms: cfg.interval_ms.max(1),
            depth: cfg.depth.max(1),
            forget_after: cfg.forget_after.max(cfg.depth.max(1) as u32),
        };
        Featurizer {
            cfg,
            open: None,
            last_closed: None,
            pending: BTreeMap::new(),
            tracks: BTreeMap::new(),
            seen_first: false,
            closed: 0,
            resets: 0,
        }
    }

    pub fn config(&self) -> BucketConfig {
        self.cfg
    }

    /// Keeps `depth` buckets per workload from now on (tracks grow to it as buckets close;
    /// a predictor pads a shorter series with absent buckets before it).
    pub fn set_depth(&mut self, depth: usize) {
        self.cfg.depth = depth.max(1);
        self.cfg.forget_after = self.cfg.forget_after.max(self.cfg.depth as u32);
    }

    pub fn tracks(&self) -> &BTreeMap<WorkloadId, Track> {
        &self.tracks
    }

    /// The end of the bucket holding a point at `ts_ms`.
    pub fn bucket_end(&self, ts_ms: u64) -> u64 {
        ts_ms.div_ceil(self.cfg.interval_ms) * self.cfg.interval_ms
    }

    /// Takes one window; `each` gets a batch for every bucket this window closed (none
    /// mostly, one when a bucket boundary is passed, more after a gap in the windows).
    pub fn push(&mut self, w: &Window, each: &mut dyn FnMut(&Batch<'_>)) {
        if !std::mem::replace(&mut self.seen_first, true) {
            return;
        }
        let ts = w.node.timestamp_ms;
        let end = self.bucket_end(ts);
        if let Some(open) = self.open
            && open < end
        {
            self.close(open, each);
        }
        if let Some(last) = self.last_closed
            && end > last + self.cfg.interval_ms
        {
            let gap = (end - last) / self.cfg.interval_ms - 1;
            if gap > self.cfg.forget_after as u64 {
                // The agent saw nothing for long (suspended, or a new recording): start
                // over rather than make up that many empty buckets.
                self.tracks.clear();
                self.resets += 1;
            } else {
                for k in 1..=gap {
                    self.close(last + k * self.cfg.interval_ms, each);
                }
            }
        }
        if self.open.is_some_and(|open| open > end) {
            // The clock went back: the points join the open bucket (nothing is reordered).
        } else {
            self.open = Some(end);
        }
        for p in &w.points {
            match self.pending.get_mut(&p.workload) {
                Some(acc) => merge(acc, p),
                None => {
                    self.pending.insert(p.workload.clone(), p.clone());
                }
            }
        }
        if let Some(open) = self.open
            && ts >= open
        {
            self.close(open, each);
        }
    }

    fn close(&mut self, end_ms: u64, each: &mut dyn FnMut(&Batch<'_>)) {
        self.open = None;
        self.last_closed = Some(end_ms);
        let depth = self.cfg.depth;
        for (id, p) in std::mem::take(&mut self.pending) {
            let t = self.tracks.entry(id).or_insert_with(|| Track {
                name: String::new(),
                buckets: VecDeque::with_capacity(depth + 1),
                absent: 0,
            });
            t.name.clone_from(&p.name);
            // Before the first appearance: zeros, so every window is full.
            while t.buckets.len() + 1 < depth {
                let before = end_ms
                    .saturating_sub((depth - 1 - t.buckets.len()) as u64 * self.cfg.interval_ms);
                t.buckets.push_back(Bucket::absent(before));
            }
            t.buckets.push_back(Bucket::of(&p, end_ms));
            t.absent = 0;
        }
        let forget = self.cfg.forget_after;
        self.tracks.retain(|_, t| {
            if t.newest().is_none_or(|b| b.end_ms != end_ms) {
                t.buckets.push_back(Bucket::absent(end_ms));
                t.absent += 1;
            }
            while t.buckets.len() > depth {
                t.buckets.pop_front();
            }
            t.buckets.make_contiguous();
            t.absent < forget
        });
        self.closed += 1;
        let batch = Batch {
            now_ms: end_ms,
            interval_ms: self.cfg.interval_ms as u32,
            series: self
                .tracks
                .iter()
                .map(|(id, t)| Series {
                    workload: id,
                    name: &t.name,
                    buckets: t.buckets(),
                })
                .collect(),
        };
        each(&batch);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::aggregate::{NodePoint, ProductionInput, ResourceProfile};

    pub(crate) fn point(id: &str, ts: u64, cpu_ns: u64, rss: u64, read: u64) -> ShadowPoint {
        ShadowPoint {
            timestamp_ms: ts,
            interval_ms: 1000,
            workload: WorkloadId(id.into()),
            name: id.into(),
            processes: 1,
            input: ProductionInput {
                execs: 2,
                ..Default::default()
            },
            profile: ResourceProfile {
                cpu_ns,
                cpu_cores: cpu_ns as f64 / 1e9,
                rss_bytes: rss,
                read_bytes: read,
                ..Default::default()
            },
        }
    }

    fn window(ts: u64, points: Vec<ShadowPoint>) -> Window {
        Window {
            points,
            node: NodePoint {
                timestamp_ms: ts,
                interval_ms: 1000,
                ..Default::default()
            },
        }
    }

    /// A closed batch as (now, [(id, newest bucket, buckets in the series)]).
    type Closed = (u64, Vec<(String, Bucket, usize)>);

    /// Runs windows through a featurizer; every closed batch.
    fn run(f: &mut Featurizer, ws: &[Window]) -> Vec<Closed> {
        let mut out = vec![];
        for w in ws {
            f.push(w, &mut |b| {
                out.push((
                    b.now_ms,
                    b.series
                        .iter()
                        .map(|s| {
                            (
                                s.workload.0.clone(),
                                *s.buckets.last().unwrap(),
                                s.buckets.len(),
                            )
                        })
                        .collect(),
                ))
            });
        }
        out
    }

    fn cfg(depth: usize, forget: u32) -> BucketConfig {
        BucketConfig {
            interval_ms: 5000,
            depth,
            forget_after: forget,
        }
    }

    #[test]
    fn points_merge_into_buckets_with_the_history_rule() {
        let mut f = Featurizer::new(cfg(4, 4));
        // The first window is left out; then 1 s points at 10..=20 s: buckets (5,10],
        // (10,15], (15,20].
        let mut ws = vec![window(9_000, vec![point("a", 9_000, 9e9 as u64, 1, 1)])];
        for s in 10..=20u64 {
            ws.push(window(
                s * 1000,
                vec![point("a", s * 1000, 500_000_000, s * 100, 1000)],
            ));
        }
        let out = run(&mut f, &ws);
        assert_eq!(
            out.iter().map(|o| o.0).collect::<Vec<_>>(),
            [10_000, 15_000, 20_000]
        );
        // (10,15]: five points of 0.5 cores, RSS the last (1500), read 5000 B over 5 s.
        let (_, b, len) = out[1].1[0].clone();
        assert_eq!(len, 4, "zeros before the first appearance fill the window");
        assert!((b.target(Target::Cpu) - 0.5).abs() < 1e-6);
        assert_eq!(b.target(Target::Memory), 1500.0);
        assert!((b.target(Target::Io) - 1000.0).abs() < 1e-3);
        assert_eq!(b.features[feature_index("execs_ps").unwrap()], 2.0);
        assert_eq!(b.features[PRESENT], 1.0);
        // The first bucket (10 s alone) holds one point: its own rate, not diluted.
        let (_, b0, _) = out[0].1[0].clone();
        assert!((b0.target(Target::Cpu) - 0.5).abs() < 1e-6);
        assert!((b0.target(Target::Io) - 1000.0).abs() < 1e-3);
    }

    #[test]
    fn absent_buckets_are_zero_with_time_features_and_workloads_are_forgotten() {
        let mut f = Featurizer::new(cfg(2, 3));
        let mut ws = vec![window(1_000, vec![])];
        ws.push(window(5_000, vec![point("a", 5_000, 1, 10, 0)]));
        for s in 2..=6u64 {
            ws.push(window(s * 5000, vec![point("b", s * 5000, 1, 10, 0)]));
        }
        let out = run(&mut f, &ws);
        // a: present at 5 s, absent at 10, 15, 20 s, then forgotten.
        let has_a: Vec<bool> = out.iter().map(|o| o.1.iter().any(|s| s.0 == "a")).collect();
        assert_eq!(has_a, [true, true, true, false, false, false]);
        let a_at_10 = &out[1].1[0];
        assert_eq!(a_at_10.0, "a");
        assert!(!a_at_10.1.present());
        assert_eq!(a_at_10.1.target(Target::Memory), 0.0);
        let (s, c) = time_of_day(10_000);
        assert_eq!(a_at_10.1.features[TOD_SIN], s);
        assert_eq!(a_at_10.1.features[TOD_COS], c);
    }

    #[test]
    fn a_gap_in_windows_closes_empty_buckets_and_a_long_one_starts_over() {
        let mut f = Featurizer::new(cfg(2, 4));
        let ws = vec![
            window(1_000, vec![]),
            window(5_000, vec![point("a", 5_000, 1, 10, 0)]),
            // 5 s → 20 s: buckets 10 and 15 closed empty, 20 holds the point.
            window(20_000, vec![point("a", 20_000, 1, 10, 0)]),
        ];
        let out = run(&mut f, &ws);
        assert_eq!(
            out.iter().map(|o| o.0).collect::<Vec<_>>(),
            [5_000, 10_000, 15_000, 20_000]
        );
        assert!(out[3].1[0].1.present());
        // An hour later: nothing made up, everything forgotten.
        let later = vec![window(3_620_000, vec![point("b", 3_620_000, 1, 1, 0)])];
        let out = run(&mut f, &later);
        assert_eq!(f.resets, 1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.len(), 1);
        assert_eq!(out[0].1[0].0, "b");
    }

    #[test]
    fn time_of_day_wraps_at_midnight_utc() {
        let (s0, c0) = time_of_day(0);
        let (s1, c1) = time_of_day(DAY_MS);
        assert_eq!((s0, c0), (s1, c1));
        let (s, c) = time_of_day(DAY_MS / 4);
        assert!((s - 1.0).abs() < 1e-6 && c.abs() < 1e-6);
    }
}
