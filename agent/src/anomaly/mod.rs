//! Anomalies and drift: when a workload stops behaving like itself, and when its model no
//! longer fits.
//!
//! [`Detector`] is a small synchronous core beside the forecast stage: it buckets windows
//! at the forecast interval (the same [`Featurizer`] the predictor reads), and when a
//! bucket closes it judges each workload's bucket against the band forecast for it one
//! step earlier ([`Detector::expect`]) and against the workload's own recent behaviour:
//!
//! - **outside its band**: a target (CPU, memory, I/O, network) beyond the calibrated
//!   p10–p90 band by more than `outside` band widths, for `persist` buckets in a row (or
//!   by `spike` widths once);
//! - **cost per unit of input**: CPU per syscall (the workload's production input) at
//!   `cost_jump` times its usual cost, the input itself not grown as much;
//! - **memory growth without input**: RSS growing bucket after bucket by more than
//!   `growth` of where it started, its input flat;
//! - **process burst**: processes or execs far above the workload's usual (a fork bomb);
//! - **I/O stall**: a workload that moves data in every bucket moving almost none, for
//!   `persist` buckets.
//!
//! Each [`Anomaly`] carries its explanation: the target, observed against the band, the
//! features that moved most against their recent mean, and since when. A workload is
//! judged once it has `warmup` buckets of history; an ongoing anomaly is reported at its
//! onset and then every `repeat` buckets while it lasts.
//!
//! [`drift`]: a Page-Hinkley test on each workload's forecast error (pinball loss of the
//! step-1 band); a drifting workload is flagged for retraining.

pub mod drift;
pub mod faults;

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{
    aggregate::{Window, WorkloadId},
    config::ConfigError,
    insight::{Bands, next_bands},
    predict::{
        Band, Bucket, BucketConfig, Featurizer, Forecast, Target,
        features::{FEATURES, N_FEATURES},
    },
};

/// `[anomaly]`: how far is too far.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalyConfig {
    pub enabled: bool,
    /// Band widths beyond p90 (or below p10) that count as outside.
    pub outside: f64,
    /// Buckets in a row outside before it is an anomaly.
    pub persist: u32,
    /// Band widths beyond the band that are an anomaly at once.
    pub spike: f64,
    /// Times the usual CPU per unit of input that is a jump in cost.
    pub cost_jump: f64,
    /// Growth of RSS (fraction of where it started) over `growth_buckets` buckets, each
    /// one higher, that is growth without input.
    pub growth: f64,
    pub growth_buckets: usize,
    /// Times the usual processes (and at least `burst_min` more) that is a burst.
    pub burst: f64,
    pub burst_min: f64,
    /// Buckets of history before a workload is judged.
    pub warmup: u32,
    /// While an anomaly lasts, it is reported again every this many buckets.
    pub repeat: u32,
    /// Half-life of the recent means the explanation compares against, buckets.
    pub half_life: f64,
    pub drift: drift::DriftConfig,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: true,
            outside: 1.0,
            persist: 2,
            spike: 4.0,
            cost_jump: 2.0,
            growth: 0.25,
            growth_buckets: 6,
            burst: 4.0,
            burst_min: 20.0,
            warmup: 6,
            repeat: 12,
            half_life: 12.0,
            drift: drift::DriftConfig::default(),
        }
    }
}

impl AnomalyConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, value: String, expected: &str| {
            Err(ConfigError::Invalid {
                key,
                value,
                expected: expected.into(),
            })
        };
        if !(self.outside >= 0.0 && self.outside.is_finite()) {
            return bad("anomaly.outside", self.outside.to_string(), "≥ 0");
        }
        if !(self.spike > self.outside && self.spike.is_finite()) {
            return bad(
                "anomaly.spike",
                self.spike.to_string(),
                "more than anomaly.outside",
            );
        }
        if !(1..=1000).contains(&self.persist) {
            return bad("anomaly.persist", self.persist.to_string(), "1 to 1000");
        }
        if !(self.cost_jump > 1.0 && self.cost_jump.is_finite()) {
            return bad(
                "anomaly.cost_jump",
                self.cost_jump.to_string(),
                "more than 1",
            );
        }
        let growth_ok = self.growth > 0.0 && self.growth.is_finite();
        if !(growth_ok && (2..=1000).contains(&self.growth_buckets)) {
            return bad(
                "anomaly.growth",
                format!("{} over {}", self.growth, self.growth_buckets),
                "a fraction > 0 over 2 to 1000 buckets",
            );
        }
        if !(self.burst > 1.0 && self.burst.is_finite()) {
            return bad("anomaly.burst", self.burst.to_string(), "more than 1");
        }
        if !(self.half_life >= 1.0 && self.half_life.is_finite()) {
            return bad("anomaly.half_life", self.half_life.to_string(), "≥ 1");
        }
        if self.repeat == 0 {
            return bad("anomaly.repeat", "0".into(), "≥ 1");
        }
        self.drift.validate()
    }
}

/// What kind of departure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A target beyond its calibrated band.
    OutsideBand,
    /// The same input now costs more CPU.
    CostJump,
    /// Memory grows while input does not.
    MemoryGrowth,
    /// Processes or execs far above the usual.
    ProcessBurst,
    /// A workload that moves data in every bucket moves (almost) none.
    IoStall,
}

impl AnomalyKind {
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::OutsideBand => "outside-band",
            AnomalyKind::CostJump => "cost-jump",
            AnomalyKind::MemoryGrowth => "memory-growth",
            AnomalyKind::ProcessBurst => "process-burst",
            AnomalyKind::IoStall => "io-stall",
        }
    }
}

/// A feature that moved: its recent mean and its value now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Moved {
    pub feature: String,
    pub usual: f64,
    pub now: f64,
}

/// A workload that stopped behaving like itself, explained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub workload: WorkloadId,
    pub name: String,
    pub kind: AnomalyKind,
    /// End of the bucket judged, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// When it began (the first bucket of the run that made it an anomaly).
    pub since_ms: u64,
    pub target: Target,
    pub observed: f64,
    /// The band it was judged against, where one applies.
    pub band: Option<Band>,
    /// How far: band widths beyond the band, or the factor of the usual.
    pub score: f64,
    /// The features that moved most against their recent mean, largest first.
    pub moved: Vec<Moved>,
}

fn show(t: Target, v: f64) -> String {
    match t {
        Target::Cpu => format!("{v:.2} cores"),
        Target::Memory => crate::trace::bytes(v.max(0.0) as u64),
        Target::Io | Target::Net => format!("{}/s", crate::trace::bytes(v.max(0.0) as u64)),
    }
}

impl Anomaly {
    /// One line for people.
    pub fn text(&self) -> String {
        let t = self.target;
        let what = match (self.kind, self.band) {
            (AnomalyKind::OutsideBand, Some(b)) => format!(
                "{} {} {} band p10–p90 {}–{} ({:.1} widths)",
                t.name(),
                show(t, self.observed),
                if self.observed > b.p90 {
                    "above"
                } else {
                    "below"
                },
                show(t, b.p10),
                show(t, b.p90),
                self.score
            ),
            (AnomalyKind::CostJump, _) => format!(
                "cpu per unit of input {:.1}× its usual ({})",
                self.score,
                show(t, self.observed)
            ),
            (AnomalyKind::MemoryGrowth, _) => format!(
                "memory grew to {} ({:+.0}%) without its input growing",
                show(t, self.observed),
                self.score * 100.0
            ),
            (AnomalyKind::ProcessBurst, _) => format!(
                "{:.0} processes, {:.1}× its usual",
                self.observed, self.score
            ),
            (AnomalyKind::IoStall, _) => format!(
                "i/o fell to {} ({:.0}% of its usual)",
                show(t, self.observed),
                self.score * 100.0
            ),
            (AnomalyKind::OutsideBand, None) => format!("{} {}", t.name(), show(t, self.observed)),
        };
        let moved: Vec<String> = self
            .moved
            .iter()
            .map(|m| format!("{} {:.3}→{:.3}", m.feature, m.usual, m.now))
            .collect();
        let since = (self.timestamp_ms.saturating_sub(self.since_ms)) / 1000;
        let mut s = format!("{}: {what}", self.name);
        if since > 0 {
            s.push_str(&format!(", for {since} s"));
        }
        if !moved.is_empty() {
            s.push_str(&format!("; moved: {}", moved.join(", ")));
        }
        s
    }
}

impl From<&Anomaly> for crate::publish::AnomalyReport {
    fn from(a: &Anomaly) -> Self {
        crate::publish::AnomalyReport {
            workload: a.workload.0.clone(),
            name: a.name.clone(),
            kind: a.kind.name().into(),
            target: a.target.name().into(),
            observed: a.observed,
            band: a.band.map(|b| [b.p10, b.p50, b.p90]),
            score: a.score,
            since_ms: a.since_ms,
            timestamp_ms: a.timestamp_ms,
            moved: a
                .moved
                .iter()
                .map(|m| (m.feature.clone(), m.usual, m.now))
                .collect(),
            text: a.text(),
        }
    }
}

impl From<&drift::Drifted> for crate::publish::AnomalyReport {
    fn from(d: &drift::Drifted) -> Self {
        crate::publish::AnomalyReport {
            workload: d.workload.0.clone(),
            name: d.name.clone(),
            kind: "drift".into(),
            target: "cpu+memory".into(),
            observed: d.error,
            band: None,
            score: d.error / d.usual_error.max(1e-9),
            since_ms: d.timestamp_ms,
            timestamp_ms: d.timestamp_ms,
            moved: Vec::new(),
            text: d.text(),
        }
    }
}

/// Anomalies kept, newest last (the agent's history of them).
pub const KEPT: usize = 1024;

/// The smallest band width taken for a target (a band of zero width makes every wiggle
/// "many widths" away): 0.05 cores, 16 MiB, 256 KiB/s.
fn floor(t: Target) -> f64 {
    match t {
        Target::Cpu => 0.05,
        Target::Memory => 16.0 * 1024.0 * 1024.0,
        Target::Io | Target::Net => 256.0 * 1024.0,
    }
}

/// How far `y` lies outside `b`, in band widths (0 inside).
pub fn beyond(t: Target, y: f64, b: &Band) -> f64 {
    let width = (b.p90 - b.p10).max(floor(t)).max(0.1 * b.p50.abs());
    if y > b.p90 {
        (y - b.p90) / width
    } else if y < b.p10 {
        (b.p10 - y) / width
    } else {
        0.0
    }
}

/// Positions in [`FEATURES`] of the features read here (checked by a test).
const SYSCALLS: usize = 12;
const PROCESSES: usize = 2;
const EXECS: usize = 9;
const READ: usize = 3;
const WRITE: usize = 4;
/// A stall: I/O below this share of the usual, for a workload that usually moves at least
/// `STALL_MIN_BPS`.
const STALL_SHARE: f64 = 0.1;
const STALL_MIN_BPS: f64 = 256.0 * 1024.0;

/// An exponentially weighted mean.
#[derive(Clone, Copy, Debug, Default)]
struct Ewma {
    mean: f64,
    n: u32,
}

impl Ewma {
    fn add(&mut self, x: f64, alpha: f64) {
        self.n += 1;
        // Plain mean while warming up, then exponential.
        let a = (1.0 / self.n as f64).max(alpha);
        self.mean += a * (x - self.mean);
    }
}

/// One workload's state.
struct Workload {
    buckets: u32,
    means: [Ewma; N_FEATURES],
    /// CPU per syscall, its recent mean.
    cost: Ewma,
    /// Recent RSS and input (syscalls/s), newest last.
    recent: VecDeque<(f64, f64)>,
    /// Per target: buckets in a row outside, and when the run began.
    outside: [(u32, u64); 4],
    /// Buckets in a row with (almost) no I/O, and when the run began.
    stalled: (u32, u64),
    /// Per kind, the onset of the ongoing anomaly and buckets since it was reported.
    ongoing: BTreeMap<AnomalyKind, (u64, u32)>,
    /// Buckets since the workload was last present (a gone workload is let go).
    absent: u32,
}

impl Workload {
    fn new() -> Self {
        Workload {
            buckets: 0,
            means: [Ewma::default(); N_FEATURES],
            cost: Ewma::default(),
            recent: VecDeque::new(),
            outside: [(0, 0); 4],
            stalled: (0, 0),
            ongoing: BTreeMap::new(),
            absent: 0,
        }
    }

    /// Features that moved most against their recent mean (relative change ≥ 50%).
    fn moved(&self, b: &Bucket) -> Vec<Moved> {
        let mut m: Vec<(f64, Moved)> = (0..N_FEATURES)
            .filter(|&i| i < 14) // not the time features nor `present`
            .filter_map(|i| {
                let usual = self.means[i].mean;
                let now = b.features[i] as f64;
                let rel = (now - usual).abs() / usual.abs().max(1e-3);
                (rel >= 0.5 && (now - usual).abs() > 1e-3).then(|| {
                    (
                        rel,
                        Moved {
                            feature: FEATURES[i].to_string(),
                            usual,
                            now,
                        },
                    )
                })
            })
            .collect();
        m.sort_by(|a, b| b.0.total_cmp(&a.0));
        m.into_iter().take(3).map(|x| x.1).collect()
    }
}

/// A candidate anomaly of one bucket, before onset/repeat bookkeeping.
struct Found {
    kind: AnomalyKind,
    target: Target,
    observed: f64,
    band: Option<Band>,
    score: f64,
    since_ms: u64,
}

/// A workload's closed bucket: its id, its name, the bucket.
type Row = (WorkloadId, String, Bucket);

/// The anomaly stage's core.
pub struct Detector {
    cfg: AnomalyConfig,
    featurizer: Featurizer,
    /// Bands expected for the bucket being filled, per workload (made when the last one
    /// closed).
    expected: HashMap<WorkloadId, Bands>,
    workloads: HashMap<WorkloadId, Workload>,
    drift: drift::Drift,
    /// Anomalies found since start, by kind.
    pub found: BTreeMap<AnomalyKind, u64>,
    /// The last [`KEPT`] anomalies.
    kept: VecDeque<Anomaly>,
}

/// What a closed bucket brought.
#[derive(Clone, Debug, Default)]
pub struct Judged {
    /// End of the bucket, ms since the Unix epoch.
    pub end_ms: u64,
    pub anomalies: Vec<Anomaly>,
    /// Workloads whose forecast error started drifting in this bucket.
    pub drifted: Vec<drift::Drifted>,
}

impl Detector {
    /// A detector at the forecast interval `interval_ms`.
    pub fn new(cfg: AnomalyConfig, interval_ms: u64) -> Self {
        Detector {
            featurizer: Featurizer::new(BucketConfig {
                interval_ms,
                depth: 1,
                forget_after: 64,
            }),
            drift: drift::Drift::new(cfg.drift.clone()),
            cfg,
            expected: HashMap::new(),
            workloads: HashMap::new(),
            found: BTreeMap::new(),
            kept: VecDeque::new(),
        }
    }

    pub fn interval_ms(&self) -> u64 {
        self.featurizer.config().interval_ms
    }

    /// Forecasts made at the end of a bucket: their first step is what the next bucket
    /// is judged against.
    pub fn expect(&mut self, forecasts: &[Forecast]) {
        for f in forecasts {
            if let Some(b) = next_bands(f) {
                self.expected.insert(f.workload.clone(), b);
            }
        }
    }

    /// Workloads flagged for retraining (drifting), with when.
    pub fn drifting(&self) -> impl Iterator<Item = (&WorkloadId, u64)> {
        self.drift.drifting()
    }

    /// The last [`KEPT`] anomalies, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Anomaly> {
        self.kept.iter()
    }

    /// Takes a window; what the buckets it closed brought (none mostly).
    pub fn push(&mut self, w: &Window) -> Vec<Judged> {
        let mut out = Vec::new();
        let mut batches: Vec<(u64, Vec<Row>)> = Vec::new();
        self.featurizer.push(w, &mut |b| {
            let rows = b
                .series
                .iter()
                .filter_map(|s| {
                    let last = *s.buckets.last()?;
                    (last.end_ms == b.now_ms && last.present())
                        .then(|| (s.workload.clone(), s.name.to_string(), last))
                })
                .collect();
            batches.push((b.now_ms, rows));
        });
        for (end_ms, rows) in batches {
            let j = self.judge(end_ms, &rows);
            for a in &j.anomalies {
                if self.kept.len() >= KEPT {
                    self.kept.pop_front();
                }
                self.kept.push_back(a.clone());
            }
            out.push(j);
        }
        out
    }

    fn judge(&mut self, end_ms: u64, rows: &[Row]) -> Judged {
        let cfg = self.cfg.clone();
        let alpha = 1.0 - 0.5f64.powf(1.0 / cfg.half_life);
        let mut judged = Judged {
            end_ms,
            ..Default::default()
        };
        let expected = std::mem::take(&mut self.expected);
        for w in self.workloads.values_mut() {
            w.absent += 1;
        }
        for (id, name, b) in rows {
            let bands = expected.get(id);
            if let Some(bands) = bands {
                let ys = Target::ALL.map(|t| b.target(t));
                if let Some(d) = self.drift.observe(id, name, end_ms, &ys, bands) {
                    judged.drifted.push(d);
                }
            }
            let w = self
                .workloads
                .entry(id.clone())
                .or_insert_with(Workload::new);
            w.absent = 0;
            let mut found = Vec::new();
            if w.buckets >= cfg.warmup && cfg.enabled {
                found = detect(&cfg, w, b, bands, end_ms);
            } else {
                // Warming up: the band counters still run so a departure at the end of
                // the warm-up is not lost.
                if let Some(bands) = bands {
                    for t in Target::ALL {
                        let o = &mut w.outside[t as usize];
                        *o = if beyond(t, b.target(t), &bands[t as usize]) > cfg.outside {
                            (o.0 + 1, if o.0 == 0 { end_ms } else { o.1 })
                        } else {
                            (0, 0)
                        };
                    }
                }
            }
            let kinds: Vec<AnomalyKind> = found.iter().map(|f| f.kind).collect();
            w.ongoing.retain(|k, _| kinds.contains(k));
            let moved = if found.is_empty() {
                Vec::new()
            } else {
                w.moved(b)
            };
            for f in found {
                let report = match w.ongoing.get_mut(&f.kind) {
                    None => {
                        w.ongoing.insert(f.kind, (f.since_ms, 0));
                        true
                    }
                    Some((_, n)) => {
                        *n += 1;
                        if *n >= cfg.repeat {
                            *n = 0;
                            true
                        } else {
                            false
                        }
                    }
                };
                if report {
                    *self.found.entry(f.kind).or_default() += 1;
                    judged.anomalies.push(Anomaly {
                        workload: id.clone(),
                        name: name.clone(),
                        kind: f.kind,
                        timestamp_ms: end_ms,
                        since_ms: f.since_ms,
                        target: f.target,
                        observed: f.observed,
                        band: f.band,
                        score: f.score,
                        moved: moved.clone(),
                    });
                }
            }
            // The recent means learn only from ordinary buckets, so a long anomaly does
            // not become the usual.
            if w.ongoing.is_empty() {
                for (i, m) in w.means.iter_mut().enumerate() {
                    m.add(b.features[i] as f64, alpha);
                }
                let input = b.features[SYSCALLS] as f64;
                if input > 0.0 {
                    w.cost.add(b.target(Target::Cpu) / input, alpha);
                }
            }
            w.recent
                .push_back((b.target(Target::Memory), b.features[SYSCALLS] as f64));
            while w.recent.len() > cfg.growth_buckets + 1 {
                w.recent.pop_front();
            }
            w.buckets += 1;
        }
        self.workloads.retain(|_, w| w.absent < 64);
        self.drift.retain(|id| self.workloads.contains_key(id));
        judged
    }
}

/// The departures of one workload's bucket.
fn detect(
    cfg: &AnomalyConfig,
    w: &mut Workload,
    b: &Bucket,
    bands: Option<&Bands>,
    end_ms: u64,
) -> Vec<Found> {
    let mut out = Vec::new();
    // Outside the band.
    if let Some(bands) = bands {
        for t in Target::ALL {
            let y = b.target(t);
            let band = bands[t as usize];
            let s = beyond(t, y, &band);
            let o = &mut w.outside[t as usize];
            if s > cfg.outside {
                *o = (o.0 + 1, if o.0 == 0 { end_ms } else { o.1 });
            } else {
                *o = (0, 0);
            }
            if (o.0 >= cfg.persist && s > cfg.outside) || s > cfg.spike {
                out.push(Found {
                    kind: AnomalyKind::OutsideBand,
                    target: t,
                    observed: y,
                    band: Some(band),
                    score: s,
                    since_ms: if o.1 > 0 { o.1 } else { end_ms },
                });
            }
        }
        // One anomaly per kind and bucket: the target furthest out.
        out.sort_by(|a, b| b.score.total_cmp(&a.score));
        out.truncate(1);
    }
    // Cost per unit of input.
    let input = b.features[SYSCALLS] as f64;
    let usual_input = w.means[SYSCALLS].mean;
    let cpu = b.target(Target::Cpu);
    if w.cost.n >= cfg.warmup && w.cost.mean > 0.0 && input > 0.0 && cpu > floor(Target::Cpu) {
        let factor = (cpu / input) / w.cost.mean;
        let input_grew = usual_input > 0.0 && input / usual_input > cfg.cost_jump;
        let extra = cpu - w.means[0].mean;
        if factor >= cfg.cost_jump && !input_grew && extra > floor(Target::Cpu) {
            out.push(Found {
                kind: AnomalyKind::CostJump,
                target: Target::Cpu,
                observed: cpu,
                band: bands.map(|x| x[Target::Cpu as usize]),
                score: factor,
                since_ms: end_ms,
            });
        }
    }
    // Memory growing bucket after bucket, input flat.
    if w.recent.len() > cfg.growth_buckets {
        let rss: Vec<f64> = w
            .recent
            .iter()
            .map(|r| r.0)
            .chain([b.target(Target::Memory)])
            .collect();
        let n = rss.len();
        let start = rss[n - 1 - cfg.growth_buckets];
        let now = rss[n - 1];
        let rising = rss[n - 1 - cfg.growth_buckets..]
            .windows(2)
            .filter(|p| p[1] > p[0])
            .count();
        let grew = (now - start) / start.max(1.0);
        let inputs: Vec<f64> = w.recent.iter().map(|r| r.1).chain([input]).collect();
        let in_start = inputs[n - 1 - cfg.growth_buckets].max(1.0);
        let in_grew = (inputs[n - 1] - in_start) / in_start;
        if rising + 1 >= cfg.growth_buckets
            && grew > cfg.growth
            && now - start > floor(Target::Memory)
            && in_grew < grew / 2.0
        {
            out.push(Found {
                kind: AnomalyKind::MemoryGrowth,
                target: Target::Memory,
                observed: now,
                band: bands.map(|x| x[Target::Memory as usize]),
                score: grew,
                since_ms: end_ms,
            });
        }
    }
    // I/O stopped.
    let io = b.target(Target::Io);
    let usual_io = w.means[READ].mean + w.means[WRITE].mean;
    if usual_io >= STALL_MIN_BPS && io < STALL_SHARE * usual_io {
        w.stalled = (
            w.stalled.0 + 1,
            if w.stalled.0 == 0 {
                end_ms
            } else {
                w.stalled.1
            },
        );
    } else {
        w.stalled = (0, 0);
    }
    if w.stalled.0 >= cfg.persist {
        out.push(Found {
            kind: AnomalyKind::IoStall,
            target: Target::Io,
            observed: io,
            band: bands.map(|x| x[Target::Io as usize]),
            score: io / usual_io,
            since_ms: w.stalled.1,
        });
    }
    // A burst of processes.
    let procs = b.features[PROCESSES] as f64;
    let usual = w.means[PROCESSES].mean;
    let execs = b.features[EXECS] as f64;
    let usual_execs = w.means[EXECS].mean;
    let burst = procs > usual * cfg.burst && procs - usual >= cfg.burst_min;
    let exec_burst = execs > (usual_execs * cfg.burst).max(cfg.burst_min);
    if burst || exec_burst {
        out.push(Found {
            kind: AnomalyKind::ProcessBurst,
            target: Target::Cpu,
            observed: procs,
            band: None,
            score: if burst {
                procs / usual.max(1.0)
            } else {
                execs / usual_execs.max(1.0)
            },
            since_ms: end_ms,
        });
    }
    out
}

#[cfg(test)]
mod tests;
