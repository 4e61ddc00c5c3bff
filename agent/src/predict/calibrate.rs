//! Calibration: online adaptive conformal inference (ACI, Gibbs & Candès 2021) around any
//! [`Predictor`], so the p10–p90 band covers its nominal 80% of outcomes on live data.
//!
//! Per workload, target and step ahead `h`, the calibrator keeps the last `scores`
//! conformity scores `s = max(p10 − y, y − p90) / unit` of the inner predictor's band
//! (negative inside it) and a miscoverage level `α_t`. A new band is widened (or narrowed,
//! never past p50) by `Q · unit`, `Q` the `1 − α_t` quantile of the scores. CPU's unit is
//! its band's width (floored): CPU's noise grows with its level, and the band follows it.
//! The byte-valued targets' (memory, I/O, network) is a fixed one (MiB, KiB/s): memory
//! moves in steps a band's width does not foretell, and measured in widths, one step seen
//! by a wide band widened the workload's later bands by as many widths — on the training
//! recordings the calibrated memory forecasts' pinball loss was 19% lower in fixed units;
//! CPU's band in fixed units held under 75% of outcomes (`models/README.md`). When the
//! outcome of a band arrives (`h` buckets later),
//! `α_{t+1} = α_t + γ(α − err_t)`, `err_t` 1 if the outcome fell outside the calibrated
//! band: over T outcomes the miscoverage stays within `(max(α₁, 1 − α₁) + γ)/(γT)` of `α`
//! whatever the sequence. A workload with fewer than [`MIN_SCORES`] scores borrows the
//! pooled scores of every workload for that target and step. Bands made while a workload
//! did not run (its last bucket absent) are calibrated but learn nothing: their outcome is
//! a start, and its miss — measured in the floor width of a band of zeros — would be a
//! score of hundreds, widening the bands of the running workload as many times.
//!
//! State is bounded (`max_workloads`, least recently seen first out) and survives restarts:
//! `calibration.bin` under the state dir, `UMBRACAL`, format version (u16 LE), reserved
//! (u16), payload length (u32 LE), CRC32 (u32 LE), postcard [`Saved`]. Later versions read
//! every earlier one; a damaged file is an error naming it, and calibration starts over.

use std::{
    collections::VecDeque,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{
    Band, Batch, Forecast, ModelStats, Predictor, PredictorKind, Target,
    baseline::{below, from_order_key32, order_key32},
    framed::{Format, Unframed, write_whole},
};
use crate::{FastMap, aggregate::WorkloadId};

pub const MAGIC: &[u8; 8] = b"UMBRACAL";
/// The format version this build writes (and the newest it reads). 2: the byte-valued
/// targets' scores in fixed units; version 1's were in band widths, so reading one keeps
/// its CPU cells and starts the others over.
pub const VERSION: u16 = 2;
const FORMAT: Format = Format {
    magic: MAGIC,
    version: VERSION,
};
/// Scores a workload needs before its own are used (else the pooled ones).
pub const MIN_SCORES: usize = 8;
/// Scores a cell can keep (its scores' ages are `u16`; the configuration allows 4,096).
pub const MAX_SCORES: usize = u16::MAX as usize;
/// Pooled scores kept per target and step.
const POOL: usize = 256;
/// CPU's smallest band width (cores), and as a fraction of p50.
const CPU_FLOOR: f64 = 0.001;
const FLOOR_REL: f64 = 0.01;
/// The byte-valued targets' unit (memory bytes, I/O and network bytes/s).
const UNIT: [f64; 4] = [1.0, 1_048_576.0, 1024.0, 1024.0];

/// `[predict.calibration]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationConfig {
    pub enabled: bool,
    /// The band's nominal coverage (p10–p90: 0.8).
    pub coverage: f64,
    /// ACI's step size γ.
    pub gamma: f64,
    /// Scores kept per workload, target and step (8 to 4,096).
    pub scores: usize,
    /// Workloads whose state is kept.
    pub max_workloads: usize,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        CalibrationConfig {
            enabled: true,
            coverage: 0.8,
            gamma: 0.005,
            scores: 32,
            max_workloads: 4096,
        }
    }
}

/// Which of `n` sorted scores is the `level` quantile, from 1: the `⌈level·n⌉`-th
/// smallest (at least the first). Split conformal's `⌈level·(n+1)⌉` guarantees coverage
/// from a single calibration set by erring wide — with the 8 scores a young workload has,
/// its 80% band was the largest score, a 89% band — while ACI's level already corrects the
/// coverage it observes: with the `+1`, the held-out recordings' calibrated bands held
/// 82–89% of outcomes instead of 80%, at a higher pinball loss for every predictor.
#[inline]
fn conformal_rank(level: f64, n: usize) -> usize {
    ((level.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n)
}

/// A ring of the last scores, and the same scores sorted (kept in step with each push, so
/// a quantile is a lookup; not saved: rebuilt from the ring when it is read back).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Ring {
    v: VecDeque<f32>,
    #[serde(skip)]
    sorted: Vec<f32>,
}

impl PartialEq for Ring {
    fn eq(&self, other: &Ring) -> bool {
        self.v == other.v
    }
}

impl Ring {
    /// A push that leaves the sorted copy to be made when a quantile is next asked for
    /// (rings written every tick and read seldom: the pooled scores).
    fn push_unsorted(&mut self, s: f32, cap: usize) {
        if self.v.len() >= cap {
            self.v.pop_front();
        }
        self.v.push_back(s);
        self.sorted.clear();
    }

    /// The sorted copy, made again if the ring was read back (or replaced) without it.
    fn sync(&mut self) {
        if self.sorted.len() != self.v.len() {
            self.sorted.clear();
            self.sorted.extend(self.v.iter().copied());
            self.sorted.sort_unstable_by(f32::total_cmp);
        }
    }

    /// The `level` quantile (the `⌈level·n⌉`-th smallest, [`conformal_rank`]).
    fn quantile(&mut self, level: f64) -> f64 {
        if self.v.is_empty() {
            return 0.0;
        }
        self.sync();
        let n = self.sorted.len();
        let k = conformal_rank(level, n);
        self.sorted[k - 1] as f64
    }
}

/// One workload, one target, one step ahead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Cell {
    alpha: f32,
    scores: Ring,
}

/// A workload's cells together: per cell its ACI level and its last `cap` scores, sorted
/// (kept so with each push: a quantile is a lookup), each beside its age — the push that
/// brought it, counted modulo 2¹⁶ — so the score that leaves is found among them. All of a
/// workload's cells are touched every bucket: they are read from two stretches of memory,
/// not from two small allocations per cell, and no ring repeats the sorted scores.
struct Cells {
    cap: usize,
    alpha: Vec<f32>,
    /// Per cell: the scores held, and the pushes so far (modulo 2¹⁶).
    len: Vec<u32>,
    pushed: Vec<u16>,
    /// Per cell `cap` values: the scores held as their order keys (`f32::total_cmp`'s order
    /// as integers), sorted (the first `len`).
    sorted: Vec<i32>,
    /// Per cell `cap` values: the push that brought each of `sorted`.
    ages: Vec<u16>,
}

impl Cells {
    fn new(n: usize, cap: usize, alpha: f32) -> Cells {
        let cap = cap.clamp(1, MAX_SCORES);
        Cells {
            cap,
            alpha: vec![alpha; n],
            len: vec![0; n],
            pushed: vec![0; n],
            sorted: vec![0; n * cap],
            ages: vec![0; n * cap],
        }
    }

    /// From saved cells: each ring's newest `cap` scores, oldest first.
    fn from_saved(cells: &[Cell], cap: usize) -> Cells {
        let mut c = Cells::new(cells.len(), cap, 0.0);
        for (i, cell) in cells.iter().enumerate() {
            c.alpha[i] = cell.alpha;
            let v = &cell.scores.v;
            for &s in v.range(v.len().saturating_sub(c.cap)..) {
                c.push(i, s);
            }
        }
        c
    }

    /// As saved: each ring oldest first.
    fn saved(&self) -> Vec<Cell> {
        (0..self.alpha.len())
            .map(|i| {
                let (sorted, ages) = (self.sorted(i), self.ages_of(i));
                let mut by_age: Vec<(u16, f32)> = ages
                    .iter()
                    .zip(sorted)
                    .map(|(&a, &s)| (self.age(i, a), from_order_key32(s)))
                    .collect();
                by_age.sort_unstable_by_key(|&(a, _)| std::cmp::Reverse(a));
                Cell {
                    alpha: self.alpha[i],
                    scores: Ring {
                        v: by_age.into_iter().map(|(_, s)| s).collect(),
                        sorted: Vec::new(),
                    },
                }
            })
            .collect()
    }

    /// How many pushes ago the score of age `a` came (1: the last).
    fn age(&self, i: usize, a: u16) -> u16 {
        self.pushed[i].wrapping_sub(a)
    }

    fn range(&self, i: usize) -> std::ops::Range<usize> {
        i * self.cap..i * self.cap + self.len[i] as usize
    }

    /// Cell `i`'s scores, sorted, as order keys.
    fn sorted(&self, i: usize) -> &[i32] {
        &self.sorted[self.range(i)]
    }

    fn ages_of(&self, i: usize) -> &[u16] {
        &self.ages[self.range(i)]
    }

    fn scores(&self, i: usize) -> usize {
        self.len[i] as usize
    }

    fn push(&mut self, i: usize, s: f32) {
        let (cap, n, stamp) = (self.cap, self.len[i] as usize, self.pushed[i]);
        self.pushed[i] = stamp.wrapping_add(1);
        let cell = i * cap..(i + 1) * cap;
        let (sorted, ages) = (&mut self.sorted[cell.clone()], &mut self.ages[cell]);
        let s = order_key32(s);
        let new_at = below(&sorted[..n], s);
        if n >= cap {
            // `s` takes the oldest score's place: one shift of what lies between.
            let oldest = stamp.wrapping_sub(cap as u16);
            let old_at = ages[..n].iter().position(|&a| a == oldest).unwrap_or(0);
            if new_at > old_at {
                sorted.copy_within(old_at + 1..new_at, old_at);
                ages.copy_within(old_at + 1..new_at, old_at);
                sorted[new_at - 1] = s;
                ages[new_at - 1] = stamp;
            } else {
                sorted.copy_within(new_at..old_at, new_at + 1);
                ages.copy_within(new_at..old_at, new_at + 1);
                sorted[new_at] = s;
                ages[new_at] = stamp;
            }
        } else {
            sorted.copy_within(new_at..n, new_at + 1);
            ages.copy_within(new_at..n, new_at + 1);
            sorted[new_at] = s;
            ages[new_at] = stamp;
            self.len[i] += 1;
        }
    }

    /// The `level` quantile of cell `i`'s scores, as [`Ring::quantile`].
    fn quantile(&self, i: usize, level: f64) -> f64 {
        let n = self.len[i] as usize;
        if n == 0 {
            return 0.0;
        }
        let k = conformal_rank(level, n);
        from_order_key32(self.sorted(i)[k - 1]) as f64
    }
}

/// A band emitted and waiting for its outcome: the inner band, its width (NaN when it was
/// made while the workload did not run: its outcome is counted, not learnt from), and the
/// band emitted after calibration (the one coverage is judged on).
#[derive(Clone, Copy, Debug, Default)]
struct Pending {
    lo: f32,
    hi: f32,
    width: f32,
    cal_lo: f32,
    cal_hi: f32,
}

/// The bands made at the last buckets and waiting for their outcomes, oldest first: when
/// each forecast was made, and its bands per cell — a ring of forecasts in one allocation,
/// slots reused as outcomes arrive (a workload's pending bands are read every bucket).
struct PendingRing {
    /// Bands per forecast (a workload's cells).
    per: usize,
    made: Vec<u64>,
    /// `made.len() · per` bands: slot `k`'s at `k · per`.
    bands: Vec<Pending>,
    head: usize,
    len: usize,
}

impl PendingRing {
    /// Room for `slots` forecasts of `per` bands (more is made when needed).
    fn new(per: usize, slots: usize) -> PendingRing {
        PendingRing {
            per,
            made: vec![0; slots],
            bands: vec![Pending::default(); slots * per],
            head: 0,
            len: 0,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn slot(&self, k: usize) -> usize {
        (self.head + k) % self.made.len()
    }

    /// The forecasts held, newest first: when made, and their bands.
    fn newest_first(&self) -> impl Iterator<Item = (u64, &[Pending])> {
        (0..self.len).rev().map(|k| {
            let s = self.slot(k);
            (self.made[s], &self.bands[s * self.per..(s + 1) * self.per])
        })
    }

    /// Lets go of the oldest forecasts made at or before `ms`.
    fn drop_made_by(&mut self, ms: u64) {
        while self.len > 0 && self.made[self.head] <= ms {
            self.head = (self.head + 1) % self.made.len();
            self.len -= 1;
        }
    }

    /// A slot for a forecast made at `ms`, newest, its bands to be filled in.
    fn push(&mut self, ms: u64) -> &mut [Pending] {
        if self.len == self.made.len() {
            // Full: lay the ring out again, oldest first, with room for more.
            let slots = (self.made.len() * 2).max(4);
            let (mut made, mut bands) = (Vec::with_capacity(slots), Vec::new());
            bands.reserve_exact(slots * self.per);
            for k in 0..self.len {
                let s = self.slot(k);
                made.push(self.made[s]);
                bands.extend_from_slice(&self.bands[s * self.per..(s + 1) * self.per]);
            }
            made.resize(slots, 0);
            bands.resize(slots * self.per, Pending::default());
            (self.made, self.bands, self.head) = (made, bands, 0);
        }
        let s = self.slot(self.len);
        self.len += 1;
        self.made[s] = ms;
        &mut self.bands[s * self.per..(s + 1) * self.per]
    }
}

struct Workload {
    seen: u64,
    /// `[target][step]` flattened: `t · horizon + h`.
    cells: Cells,
    /// Bands made at the last `horizon` buckets, per cell.
    pending: PendingRing,
}

/// What the calibration file holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    pub horizon: u32,
    workloads: Vec<(String, Vec<Cell>)>,
    pool: Vec<Ring>,
}

impl Saved {
    pub fn workloads(&self) -> usize {
        self.workloads.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration state {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("calibration state {path} is damaged ({what}); calibration starts over")]
    Corrupt { path: PathBuf, what: String },
    #[error(
        "calibration state {path} is format version {found}; this build reads up to {VERSION}: calibration starts over"
    )]
    Newer { path: PathBuf, found: u16 },
}

/// Calibration around an inner predictor.
pub struct Calibrated {
    inner: Box<dyn Predictor>,
    name: String,
    cfg: CalibrationConfig,
    horizon: usize,
    workloads: FastMap<WorkloadId, Workload>,
    pool: Vec<Ring>,
    /// This tick's scores for `pool` (by index): pooled once the tick's bands are made, so
    /// a pool's sorted copy is made again at most once a tick, not after each workload.
    pooling: Vec<(u32, f32)>,
    tick: u64,
    /// Outcomes scored, and those inside the calibrated band (for status and eval).
    pub scored: u64,
    pub covered: u64,
}

impl Calibrated {
    pub fn new(inner: Box<dyn Predictor>, cfg: &CalibrationConfig) -> Calibrated {
        let horizon = inner.horizon();
        Calibrated {
            name: format!("{}+aci", inner.name()),
            inner,
            cfg: CalibrationConfig {
                scores: cfg.scores.clamp(MIN_SCORES, MAX_SCORES),
                max_workloads: cfg.max_workloads.max(1),
                ..cfg.clone()
            },
            horizon,
            workloads: FastMap::default(),
            pool: vec![Ring::default(); 4 * horizon],
            pooling: Vec::new(),
            tick: 0,
            scored: 0,
            covered: 0,
        }
    }

    pub fn inner(&self) -> &dyn Predictor {
        self.inner.as_ref()
    }

    /// Replaces the inner predictor, keeping what was learnt when the horizon is the same.
    pub fn replace_inner(&mut self, inner: Box<dyn Predictor>) {
        self.name = format!("{}+aci", inner.name());
        if inner.horizon() != self.horizon {
            let saved = self.saved();
            self.horizon = inner.horizon();
            self.workloads.clear();
            self.pool = vec![Ring::default(); 4 * self.horizon];
            self.restore(saved);
        }
        for w in self.workloads.values_mut() {
            w.pending.clear();
        }
        if let Some(p) = self.inner.replace_primary(inner) {
            self.inner = p;
        }
        self.name = format!("{}+aci", self.inner.name());
    }

    fn alpha(&self) -> f32 {
        (1.0 - self.cfg.coverage) as f32
    }

    /// The state to keep across restarts.
    pub fn saved(&self) -> Saved {
        let mut workloads: Vec<(String, Vec<Cell>)> = self
            .workloads
            .iter()
            .map(|(k, w)| (k.0.clone(), w.cells.saved()))
            .collect();
        workloads.sort_by(|a, b| a.0.cmp(&b.0));
        Saved {
            horizon: self.horizon as u32,
            workloads,
            pool: self.pool.clone(),
        }
    }

    /// Takes back saved state (steps beyond this horizon are dropped, missing ones start
    /// fresh).
    pub fn restore(&mut self, s: Saved) {
        let (h_new, h_old) = (self.horizon, s.horizon as usize);
        let alpha = self.alpha();
        let remap = |cells: &[Cell], fresh: &dyn Fn() -> Cell| -> Vec<Cell> {
            (0..4 * h_new)
                .map(|i| {
                    let (t, h) = (i / h_new, i % h_new);
                    if h < h_old {
                        cells.get(t * h_old + h).cloned().unwrap_or_else(fresh)
                    } else {
                        fresh()
                    }
                })
                .collect()
        };
        let fresh = || Cell {
            alpha,
            scores: Ring::default(),
        };
        let pool: Vec<Cell> = s
            .pool
            .into_iter()
            .map(|scores| Cell { alpha, scores })
            .collect();
        self.pool = remap(&pool, &fresh).into_iter().map(|c| c.scores).collect();
        for (k, cells) in s.workloads.into_iter().take(self.cfg.max_workloads) {
            let cells = Cells::from_saved(&remap(&cells, &fresh), self.cfg.scores);
            self.workloads.insert(
                WorkloadId(k),
                Workload {
                    seen: 0,
                    cells,
                    pending: PendingRing::new(4 * h_new, h_new),
                },
            );
        }
    }

    pub fn workloads(&self) -> usize {
        self.workloads.len()
    }

    fn evict(&mut self) {
        let over = self.workloads.len().saturating_sub(self.cfg.max_workloads);
        let ages = self.workloads.iter().map(|(k, w)| (w.seen, k.clone()));
        for k in crate::oldest(ages, over) {
            self.workloads.remove(&k);
        }
    }
}

/// The unit a band's scores are measured in (module docs).
#[inline]
fn width(t: usize, b: &Band) -> f64 {
    if t == Target::Cpu as usize {
        (b.p90 - b.p10).max(CPU_FLOOR).max(FLOOR_REL * b.p50.abs())
    } else {
        UNIT[t]
    }
}

impl Predictor for Calibrated {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> PredictorKind {
        self.inner.kind()
    }
    fn horizon(&self) -> usize {
        self.horizon
    }
    fn history(&self) -> usize {
        self.inner.history()
    }
    fn model_stats(&self) -> Option<&ModelStats> {
        self.inner.model_stats()
    }

    fn forecast(&mut self, b: &Batch<'_>) -> Vec<Forecast> {
        let mut fs = self.inner.forecast(b);
        if !self.cfg.enabled {
            return fs;
        }
        self.tick += 1;
        let (h_n, alpha, gamma, cap) = (
            self.horizon,
            self.alpha(),
            self.cfg.gamma as f32,
            self.cfg.scores,
        );
        let interval = b.interval_ms as u64;
        let tick = self.tick;
        for (s, f) in b.series.iter().zip(fs.iter_mut()) {
            let w = match self.workloads.get_mut(s.workload) {
                Some(w) => w,
                None => self
                    .workloads
                    .entry(s.workload.clone())
                    .or_insert_with(|| Workload {
                        seen: tick,
                        cells: Cells::new(4 * h_n, cap, alpha),
                        pending: PendingRing::new(4 * h_n, h_n),
                    }),
            };
            w.seen = tick;
            // Score the bands whose outcome is this bucket.
            if let Some(newest) = s.buckets.last().filter(|x| x.end_ms == b.now_ms) {
                // Target by target, newest band first: the cells in the order they lie.
                for t in Target::ALL {
                    let y = newest.target(t) as f32;
                    for (made, cells) in w.pending.newest_first() {
                        let Some(steps) = b.now_ms.checked_sub(made).map(|d| d / interval.max(1))
                        else {
                            continue;
                        };
                        if steps == 0 || steps as usize > h_n || made + steps * interval != b.now_ms
                        {
                            continue;
                        }
                        let i = t as usize * h_n + steps as usize - 1;
                        let p = cells[i];
                        let err = if y < p.cal_lo || y > p.cal_hi {
                            1.0
                        } else {
                            0.0
                        };
                        self.scored += 1;
                        self.covered += (err == 0.0) as u64;
                        if p.width.is_nan() {
                            // Made while the workload was not running: its outcome is a
                            // start, not an error of the band of a running workload.
                            continue;
                        }
                        let score = (p.lo - y).max(y - p.hi) / p.width;
                        let a = &mut w.cells.alpha[i];
                        *a = (*a + gamma * (alpha - err)).clamp(-1.0, 2.0);
                        if score.is_finite() {
                            w.cells.push(i, score);
                            self.pooling.push((i as u32, score));
                        }
                    }
                }
            }
            let running = s
                .buckets
                .last()
                .is_some_and(|x| x.end_ms == b.now_ms && x.present());
            let oldest_useful = b.now_ms.saturating_sub(h_n as u64 * interval);
            w.pending.drop_made_by(oldest_useful);
            // Calibrate this forecast's bands.
            let emitted = w.pending.push(b.now_ms);
            for t in Target::ALL {
                let bands = &mut f.bands[t as usize];
                for h in 0..h_n {
                    let i = t as usize * h_n + h;
                    let Some(band) = bands.get_mut(h) else {
                        emitted[i] = Pending {
                            lo: 0.0,
                            hi: 0.0,
                            width: 1.0,
                            cal_lo: 0.0,
                            cal_hi: f32::INFINITY,
                        };
                        continue;
                    };
                    let level = 1.0 - w.cells.alpha[i] as f64;
                    let q = if w.cells.scores(i) >= MIN_SCORES {
                        w.cells.quantile(i, level)
                    } else if self.pool[i].v.len() >= MIN_SCORES {
                        self.pool[i].quantile(level)
                    } else {
                        0.0
                    };
                    let wd = width(t as usize, band);
                    // Emitted as the f32 kept, so the outcome is judged on what was sent.
                    let lo = (band.p10 - q * wd).min(band.p50).max(0.0) as f32;
                    let hi = (band.p90 + q * wd).max(band.p50) as f32;
                    emitted[i] = Pending {
                        lo: band.p10 as f32,
                        hi: band.p90 as f32,
                        width: if running { wd as f32 } else { f32::NAN },
                        cal_lo: lo,
                        cal_hi: hi,
                    };
                    band.p10 = (lo as f64).min(band.p50);
                    band.p90 = (hi as f64).max(band.p50);
                }
            }
            if f.predictor == self.inner.name() {
                f.predictor.clone_from(&self.name);
            }
        }
        for (i, score) in self.pooling.drain(..) {
            self.pool[i as usize].push_unsorted(score, POOL);
        }
        self.evict();
        fs
    }
}

/// The calibration file under `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("calibration.bin")
}

/// Encodes saved state as file bytes.
pub fn encode(s: &Saved) -> Vec<u8> {
    FORMAT.frame(&postcard::to_stdvec(s).unwrap_or_default())
}

/// Decodes a calibration file's bytes; `path` names it in errors.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Saved, CalibrationError> {
    let corrupt = |what: String| CalibrationError::Corrupt {
        path: path.into(),
        what,
    };
    let (version, payload) = match FORMAT.unframe(bytes) {
        Ok(v) => v,
        Err(Unframed::Newer(found)) => {
            return Err(CalibrationError::Newer {
                path: path.into(),
                found,
            });
        }
        Err(Unframed::Corrupt(what)) => return Err(corrupt(what)),
    };
    let mut s: Saved =
        postcard::from_bytes(payload).map_err(|e| corrupt(format!("payload: {e}")))?;
    if s.horizon == 0 || s.pool.len() != 4 * s.horizon as usize {
        return Err(corrupt(format!(
            "{} pooled rings for horizon {}",
            s.pool.len(),
            s.horizon
        )));
    }
    if version < 2 {
        // Scores of the byte-valued targets in band widths: not this version's units.
        // Cells lie `[target][step]`.
        let h = s.horizon as usize;
        let bytes = |i: usize| i / h != Target::Cpu as usize;
        for (_, r) in s.pool.iter_mut().enumerate().filter(|(i, _)| bytes(*i)) {
            *r = Ring::default();
        }
        for (_, cells) in &mut s.workloads {
            for (_, c) in cells.iter_mut().enumerate().filter(|(i, _)| bytes(*i)) {
                c.scores = Ring::default();
            }
        }
    }
    Ok(s)
}

/// Reads the state kept under `dir`; `None` when there is none.
pub fn load(dir: &Path) -> Result<Option<Saved>, CalibrationError> {
    let p = path(dir);
    match fs::read(&p) {
        Ok(b) => decode(&p, &b).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CalibrationError::Io { path: p, source }),
    }
}

/// Keeps the state under `dir` (temporary file, sync, rename).
pub fn save(dir: &Path, s: &Saved) -> Result<(), CalibrationError> {
    write_whole(&path(dir), &encode(s))
        .map_err(|(path, source)| CalibrationError::Io { path, source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::predict::{Bucket, Series, features::N_FEATURES};

    /// A predictor whose band is p50 = 1 (or, following, the last bucket's value of each
    /// target) ± `half` of it, for `horizon` steps.
    struct Fixed {
        half: f64,
        horizon: usize,
        follow: bool,
    }

    impl Fixed {
        fn new(half: f64, horizon: usize) -> Fixed {
            Fixed {
                half,
                horizon,
                follow: false,
            }
        }
    }

    impl Predictor for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn kind(&self) -> PredictorKind {
            PredictorKind::Baseline
        }
        fn horizon(&self) -> usize {
            self.horizon
        }
        fn forecast(&mut self, b: &Batch<'_>) -> Vec<Forecast> {
            b.series
                .iter()
                .map(|s| Forecast {
                    workload: s.workload.clone(),
                    made_ms: b.now_ms,
                    interval_ms: b.interval_ms,
                    predictor: "fixed".into(),
                    bands: std::array::from_fn(|t| {
                        let c = match s.buckets.last() {
                            Some(x) if self.follow => x.target(Target::ALL[t]),
                            None if self.follow => 0.0,
                            _ => 1.0,
                        };
                        let band = Band {
                            p10: c * (1.0 - self.half),
                            p50: c,
                            p90: c * (1.0 + self.half),
                        };
                        vec![band; self.horizon]
                    }),
                })
                .collect()
        }
    }

    #[test]
    fn a_start_after_an_absence_does_not_widen_the_running_band() {
        // A program run again and again (a linker in a build): 3 buckets at 1 GB of RSS,
        // 3 absent. The band made while absent is [0, 0]: the start's miss, measured in
        // its floor width (1 MiB), would be a score of ~950 and widen the bands of the
        // running program by 950 of their widths. Bands made while it runs learn from
        // its exits (1 GB below a band at 1 GB): a widening of a few widths at most.
        let mut c = Calibrated::new(
            Box::new(Fixed {
                follow: true,
                ..Fixed::new(0.1, 1)
            }),
            &CalibrationConfig::default(),
        );
        let id = WorkloadId("linker".into());
        let gb = 1e9f32;
        let mut worst: f64 = 0.0;
        for i in 0..600u64 {
            let running = i % 6 < 3;
            let end_ms = (i + 1) * 1000;
            let bucket = if running {
                let mut f = [0.0f32; N_FEATURES];
                f[1] = gb;
                f[N_FEATURES - 1] = 1.0;
                Bucket {
                    end_ms,
                    features: f,
                }
            } else {
                Bucket::absent(end_ms)
            };
            let buckets = [bucket];
            let batch = Batch {
                now_ms: end_ms,
                interval_ms: 1000,
                series: vec![Series {
                    workload: &id,
                    name: "ld",
                    buckets: &buckets,
                }],
            };
            let f = c.forecast(&batch);
            if running && i > 100 {
                worst = worst.max(f[0].of(Target::Memory)[0].p90);
            }
        }
        assert!(worst < 5e9, "p90 while running reached {worst:.3e}");
    }

    /// xorshift64 in [0, 1).
    fn rng(seed: &mut u64) -> f64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Runs `n` buckets of outcomes `y(i)` (all targets the same value) through `c` for
    /// two workloads; the coverage of the calibrated band on the last `tail` buckets.
    fn drive(c: &mut Calibrated, n: usize, tail: usize, mut y: impl FnMut(usize) -> f64) -> f64 {
        let ids = [WorkloadId("a".into()), WorkloadId("b".into())];
        let mut last: Option<Vec<Forecast>> = None;
        let (mut inside, mut total) = (0, 0);
        for i in 0..n {
            let v = y(i);
            let mut f = [0.0f32; N_FEATURES];
            f[0] = v as f32;
            f[1] = v as f32 * 1e8;
            f[3] = v as f32 * 1e5;
            f[7] = v as f32 * 1e5;
            f[N_FEATURES - 1] = 1.0;
            let bucket = [Bucket {
                end_ms: (i as u64 + 1) * 1000,
                features: f,
            }];
            if let Some(prev) = &last
                && i >= n - tail
            {
                for p in prev {
                    let b = p.of(Target::Cpu)[0];
                    total += 1;
                    inside += (b.p10 <= v && v <= b.p90) as usize;
                }
            }
            let batch = Batch {
                now_ms: (i as u64 + 1) * 1000,
                interval_ms: 1000,
                series: ids
                    .iter()
                    .map(|id| Series {
                        workload: id,
                        name: "w",
                        buckets: &bucket,
                    })
                    .collect(),
            };
            last = Some(c.forecast(&batch));
        }
        inside as f64 / total as f64
    }

    #[test]
    fn a_band_too_narrow_is_widened_to_cover_80_percent() {
        // Outcomes uniform on [0, 2]; the inner band [0.9, 1.1] covers 10%.
        let mut c = Calibrated::new(Box::new(Fixed::new(0.1, 1)), &CalibrationConfig::default());
        let mut seed = 0x1234_5678_9abc_def1u64;
        let cov = drive(&mut c, 3000, 1000, |_| 2.0 * rng(&mut seed));
        assert!((0.75..=0.85).contains(&cov), "coverage {cov}");
        // Without calibration it stays at 10%.
        let mut raw = Calibrated::new(
            Box::new(Fixed::new(0.1, 1)),
            &CalibrationConfig {
                enabled: false,
                ..Default::default()
            },
        );
        let mut seed = 0x1234_5678_9abc_def1u64;
        let cov = drive(&mut raw, 3000, 1000, |_| 2.0 * rng(&mut seed));
        assert!(cov < 0.2, "coverage {cov}");
    }

    #[test]
    fn a_band_too_wide_is_narrowed_but_never_past_p50() {
        let mut c = Calibrated::new(Box::new(Fixed::new(0.9, 2)), &CalibrationConfig::default());
        let mut seed = 7u64;
        let cov = drive(&mut c, 3000, 1000, |_| 0.95 + 0.1 * rng(&mut seed));
        assert!((0.75..=0.85).contains(&cov), "coverage {cov}");
    }

    #[test]
    fn coverage_follows_a_shift_in_the_data() {
        let mut c = Calibrated::new(Box::new(Fixed::new(0.2, 1)), &CalibrationConfig::default());
        let mut seed = 99u64;
        // Calm, then ten times noisier: the band catches up.
        let cov = drive(&mut c, 4000, 1500, |i| {
            let spread = if i < 2000 { 0.2 } else { 2.0 };
            (1.0 + spread * (rng(&mut seed) - 0.5) * 2.0).max(0.0)
        });
        assert!((0.72..=0.88).contains(&cov), "coverage {cov}");
    }

    #[test]
    fn state_survives_a_restart_and_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let mk = || {
            Calibrated::new(
                Box::new(Fixed::new(0.1, 2)),
                &CalibrationConfig {
                    max_workloads: 1,
                    ..Default::default()
                },
            )
        };
        let mut c = mk();
        let mut seed = 5u64;
        drive(&mut c, 500, 10, |_| 2.0 * rng(&mut seed));
        assert_eq!(c.workloads(), 1, "bounded to max_workloads");
        save(d.path(), &c.saved()).unwrap();
        let back = load(d.path()).unwrap().unwrap();
        assert_eq!(back, c.saved());
        let mut c2 = mk();
        c2.restore(back);
        assert_eq!(c2.saved(), c.saved());
        // A restored calibrator widens at once, with no warm-up.
        let ids = [WorkloadId(c.saved().workloads[0].0.clone())];
        let bucket = [Bucket::absent(1000)];
        let f = c2.forecast(&Batch {
            now_ms: 1000,
            interval_ms: 1000,
            series: vec![Series {
                workload: &ids[0],
                name: "w",
                buckets: &bucket,
            }],
        });
        let b = f[0].of(Target::Cpu)[0];
        assert!(b.p90 - b.p10 > 0.5, "{b:?}");
        // A new horizon keeps the steps both have.
        let mut c3 = Calibrated::new(Box::new(Fixed::new(0.1, 3)), &CalibrationConfig::default());
        c3.restore(c.saved());
        assert_eq!(c3.saved().pool.len(), 12);
        assert_eq!(c3.saved().pool[0], c.saved().pool[0]);
    }

    #[test]
    fn a_damaged_or_newer_file_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Calibrated::new(Box::new(Fixed::new(0.1, 1)), &CalibrationConfig::default());
        let mut seed = 3u64;
        drive(&mut c, 50, 10, |_| rng(&mut seed));
        let good = encode(&c.saved());
        let p = Path::new("/state/calibration.bin");
        for cut in 0..good.len() {
            let e = decode(p, &good[..cut]).unwrap_err();
            assert!(e.to_string().contains("/state/calibration.bin"), "{e}");
        }
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(
            decode(p, &flipped)
                .unwrap_err()
                .to_string()
                .contains("checksum")
        );
        let mut newer = good.clone();
        newer[8] = VERSION as u8 + 1;
        assert!(matches!(
            decode(p, &newer),
            Err(CalibrationError::Newer { found, .. }) if found == VERSION + 1
        ));
        assert!(load(d.path()).unwrap().is_none());
    }

    #[test]
    fn a_file_of_format_version_1_still_reads() {
        // Written by this format's first build (tests/fixtures/calibration-v1.bin).
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/calibration-v1.bin");
        let bytes = fs::read(&p).unwrap();
        let s = decode(&p, &bytes).unwrap();
        assert_eq!(s.horizon, 2);
        assert_eq!(s.workloads(), 2);
        // CPU's scores (its first `horizon` cells) kept; the byte-valued targets', in band
        // widths then, start over.
        let cpu = s.horizon as usize;
        assert!(s.pool[..cpu].iter().all(|r| r.v.len() >= MIN_SCORES));
        assert!(s.pool[cpu..].iter().all(|r| r.v.is_empty()));
        for (_, cells) in &s.workloads {
            assert!(cells[..cpu].iter().all(|c| c.scores.v.len() >= MIN_SCORES));
            assert!(cells[cpu..].iter().all(|c| c.scores.v.is_empty()));
        }
        // This version's own file keeps every score.
        let mut c = Calibrated::new(Box::new(Fixed::new(0.1, 2)), &CalibrationConfig::default());
        c.restore(s);
        let mut seed = 5u64;
        drive(&mut c, 40, 2, |_| 2.0 * rng(&mut seed));
        let again = decode(&p, &encode(&c.saved())).unwrap();
        assert!(again.pool.iter().all(|r| r.v.len() >= MIN_SCORES));
    }

    #[test]
    fn a_file_of_format_version_2_still_reads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/calibration-v2.bin");
        let s = decode(&p, &fs::read(&p).unwrap()).unwrap();
        assert_eq!((s.horizon, s.workloads()), (2, 2));
        assert!(s.pool.iter().all(|r| r.v.len() >= MIN_SCORES));
    }

    /// Writes tests/fixtures/calibration-v{VERSION}.bin (run once when a format version is
    /// made: `cargo test -p umbra --lib write_calibration_fixture -- --ignored`; earlier
    /// versions' files stay as they are).
    #[test]
    #[ignore]
    fn write_calibration_fixture() {
        let mut c = Calibrated::new(Box::new(Fixed::new(0.1, 2)), &CalibrationConfig::default());
        let mut seed = 11u64;
        drive(&mut c, 100, 10, |_| 2.0 * rng(&mut seed));
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../tests/fixtures/calibration-v{VERSION}.bin"));
        fs::write(p, encode(&c.saved())).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn a_cell_quantile_is_the_order_statistic_of_its_last_scores(
            scores in proptest::collection::vec(-5.0f32..5.0, 1..200),
            cap in 1usize..40,
            level in 0.0f64..1.0,
            reread in 0usize..200,
        ) {
            // Three cells, the scores pushed into the middle one.
            let mut c = Cells::new(3, cap, 0.1);
            let mut lazy = Ring::default();
            for (i, s) in scores.iter().enumerate() {
                c.push(1, *s);
                lazy.push_unsorted(*s, cap);
                // Cells read back from a file.
                if i == reread {
                    c = Cells::from_saved(&c.saved(), cap);
                }
            }
            let mut last: Vec<f32> = scores[scores.len().saturating_sub(cap)..].to_vec();
            let saved = c.saved();
            proptest::prop_assert_eq!(saved[1].scores.v.iter().copied().collect::<Vec<_>>(), last.clone());
            proptest::prop_assert!(saved[0].scores.v.is_empty() && saved[2].scores.v.is_empty());
            last.sort_unstable_by(f32::total_cmp);
            let n = last.len();
            let k = ((level * n as f64).ceil() as usize).clamp(1, n);
            proptest::prop_assert_eq!(c.sorted(1).iter().map(|&k| from_order_key32(k)).collect::<Vec<_>>(), last.clone());
            proptest::prop_assert_eq!(c.quantile(1, level), last[k - 1] as f64);
            proptest::prop_assert_eq!(c.quantile(0, level), 0.0);
            proptest::prop_assert_eq!(lazy.quantile(level), last[k - 1] as f64);
        }

        #[test]
        fn the_pending_ring_holds_what_a_queue_would(
            steps in proptest::collection::vec((1u64..4, 0u64..6), 1..120),
            slots in 0usize..5,
        ) {
            // Forecasts made as the clock moves by 1–3; those made by `now − keep` let go.
            let mut ring = PendingRing::new(2, slots);
            let mut queue: VecDeque<(u64, [f32; 2])> = VecDeque::new();
            let mut now = 0u64;
            for (dt, keep) in steps {
                now += dt;
                ring.drop_made_by(now.saturating_sub(keep));
                while queue.front().is_some_and(|(m, _)| *m <= now.saturating_sub(keep)) {
                    queue.pop_front();
                }
                let v = [now as f32, -(now as f32)];
                for (b, v) in ring.push(now).iter_mut().zip(v) {
                    b.lo = v;
                }
                queue.push_back((now, v));
                let held: Vec<(u64, Vec<f32>)> = ring
                    .newest_first()
                    .map(|(m, bs)| (m, bs.iter().map(|b| b.lo).collect()))
                    .collect();
                let want: Vec<(u64, Vec<f32>)> =
                    queue.iter().rev().map(|(m, v)| (*m, v.to_vec())).collect();
                proptest::prop_assert_eq!(held, want);
            }
        }

        #[test]
        fn the_decoder_never_panics(bytes in proptest::collection::vec(0u8..=255, 0..300)) {
            let _ = decode(Path::new("x"), &bytes);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode(Path::new("x"), &framed);
        }
    }
}
