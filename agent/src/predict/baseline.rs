//! Baseline forecasters behind [`Predictor`]: what a trained model must beat, what the
//! agent falls back to without one, and what `umbra simulate` compares against.
//!
//! - `last`: the last value; the band from the window's own `h`-step changes.
//! - `ewma`: an exponentially weighted mean and variance; the band ±1.28 σ.
//! - `seasonal`: seasonal naive — the value one period back. The period is found from the
//!   series: the highest autocorrelation peak after the autocorrelation first turns
//!   negative, over the last `2 · max_period` buckets, if it is above 0.3 (else the last
//!   value), looked for every 12 buckets — up to every 48 while it holds with the window
//!   full; the band from the series' own seasonal differences.
//! - `vpa`: the Kubernetes VPA recommender's way — a decaying histogram per target
//!   (exponential buckets growing 5%, CPU from 0.01 cores, memory from 10^7 B, half-life
//!   in intervals), p90 plus a 15% margin as the band's top (the recommendation), its p50
//!   and p10 below.
//! - `autopilot`: Google Autopilot's moving-window recommender — over the last `window`
//!   buckets, the exponentially decayed average, the peak and a decayed percentile; the
//!   recommendation (the band's top) is the peak plus a margin for memory, the larger of
//!   the percentile and the average plus a margin for the rates; the average is p50.
//!
//! The last two, like their originals, learn from intervals the workload ran in (absent
//! buckets add no sample). Every band is p10 ≤ p50 ≤ p90, at least 0, for each step.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{Band, Batch, Forecast, PredictConfig, Predictor, PredictorKind, Series, Target};
use crate::{FastMap, aggregate::WorkloadId};

/// Names of the baselines, for `umbra eval`, `umbra simulate` and `predict.fallback`.
pub const BASELINES: [&str; 5] = ["last", "ewma", "seasonal", "vpa", "autopilot"];

/// The standard normal's 90th percentile.
const Z90: f64 = 1.281_551_565_545;

/// `[predict.ewma]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EwmaConfig {
    /// Weight of the newest bucket (0 < alpha ≤ 1).
    pub alpha: f64,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        EwmaConfig { alpha: 0.3 }
    }
}

/// `[predict.seasonal]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeasonalConfig {
    /// Longest period looked for, buckets (the series kept is twice as long).
    pub max_period: usize,
}

impl Default for SeasonalConfig {
    fn default() -> Self {
        SeasonalConfig { max_period: 144 }
    }
}

/// `[predict.vpa]`; constants from the VPA recommender.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VpaConfig {
    /// Half-life of a sample's weight, intervals (VPA: 24 h).
    pub half_life: f64,
    /// Fraction added to the target percentile.
    pub margin: f64,
    /// The target percentile (the band's top before the margin).
    pub target: f64,
}

impl Default for VpaConfig {
    fn default() -> Self {
        VpaConfig {
            half_life: 720.0,
            margin: 0.15,
            target: 0.9,
        }
    }
}

/// `[predict.autopilot]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutopilotConfig {
    /// Length of the moving window, intervals.
    pub window: usize,
    /// Half-life of the weights within it, intervals.
    pub half_life: f64,
    /// Percentile of the rates' recommendation.
    pub percentile: f64,
    /// Fraction added to the recommendation.
    pub margin: f64,
}

impl Default for AutopilotConfig {
    fn default() -> Self {
        AutopilotConfig {
            window: 144,
            half_life: 36.0,
            percentile: 0.95,
            margin: 0.1,
        }
    }
}

/// A band from three values, ordered and at least 0.
pub fn band(a: f64, b: f64, c: f64) -> Band {
    let [a, b, c] = [a, b, c].map(|x| if x.is_finite() { x.max(0.0) } else { 0.0 });
    // Three compare-exchanges (called for every step of every target of every workload:
    // a general sort's call cost showed in the forecast tick).
    let (a, b) = (a.min(b), a.max(b));
    let (b, c) = (b.min(c), b.max(c));
    let (a, b) = (a.min(b), a.max(b));
    Band {
        p10: a,
        p50: b,
        p90: c,
    }
}

/// The forecast at `r` of a baseline's tick for `s`, its bands empty: the one `out` holds
/// there from an earlier tick with its rooms kept (names, band vectors), else a new one —
/// a candidate's tick allocates nothing once its workloads are known.
fn reuse<'o>(
    out: &'o mut Vec<Forecast>,
    r: usize,
    s: &Series<'_>,
    b: &Batch<'_>,
    name: &str,
) -> &'o mut Forecast {
    if r >= out.len() {
        out.push(Forecast {
            workload: s.workload.clone(),
            made_ms: b.now_ms,
            interval_ms: b.interval_ms,
            predictor: name.to_string(),
            bands: Default::default(),
        });
    }
    let f = &mut out[r];
    f.workload.0.clone_from(&s.workload.0);
    if f.predictor != name {
        f.predictor.clear();
        f.predictor.push_str(name);
    }
    (f.made_ms, f.interval_ms) = (b.now_ms, b.interval_ms);
    f.bands.iter_mut().for_each(Vec::clear);
    f
}

/// A baseline's forecasts as a new vector.
fn fresh(p: &mut dyn Predictor, b: &Batch<'_>) -> Vec<Forecast> {
    let mut out = Vec::with_capacity(b.series.len());
    p.forecast_into(b, &mut out);
    out
}

/// Per-workload state, let go when a workload leaves the batches.
struct States<S> {
    map: FastMap<WorkloadId, (u64, S)>,
    tick: u64,
}

impl<S> States<S> {
    fn new() -> Self {
        States {
            map: FastMap::default(),
            tick: 0,
        }
    }

    /// `f` of `id`'s state (made by `init` when it has none): one lookup when it has.
    fn with<R>(
        &mut self,
        id: &WorkloadId,
        init: impl FnOnce() -> S,
        f: impl FnOnce(&mut S) -> R,
    ) -> R {
        let tick = self.tick;
        let e = match self.map.get_mut(id) {
            Some(e) => e,
            None => self.map.entry(id.clone()).or_insert_with(|| (tick, init())),
        };
        e.0 = tick;
        f(&mut e.1)
    }

    /// After a batch: forget workloads it did not hold.
    fn sweep(&mut self) {
        let tick = self.tick;
        self.map.retain(|_, (t, _)| *t == tick);
        self.tick += 1;
    }
}

/// The last value.
pub struct LastValue {
    horizon: usize,
    window: usize,
}

impl LastValue {
    pub fn new(horizon: usize, window: usize) -> Self {
        LastValue {
            horizon: horizon.max(1),
            window: window.max(2),
        }
    }
}

/// Bands of "the value now plus the series' own changes over `lag·h`... ": for each step
/// `h`, `base(h)` plus the 10th/90th percentiles of `ys[i] - ys[i - lag(h)]`.
fn empirical_bands(
    ys: &[f64],
    horizon: usize,
    base: impl Fn(usize) -> f64,
    lag: impl Fn(usize) -> usize,
    scratch: &mut Vec<i64>,
    out: &mut Vec<Band>,
) {
    // Steps of the same lag (every step of a seasonal forecast) share their changes.
    let mut last: Option<(usize, (f64, f64))> = None;
    out.extend((1..=horizon).map(|h| {
        let p50 = base(h);
        let l = lag(h).max(1);
        let q = match last {
            Some((lag, q)) if lag == l => q,
            _ => {
                scratch.clear();
                scratch.extend((l..ys.len()).map(|i| order_key(ys[i] - ys[i - l])));
                let q = p10_p90(scratch);
                last = Some((l, q));
                q
            }
        };
        band(p50 + q.0, p50, p50 + q.1)
    }));
}

/// `x` as an integer in `f64::total_cmp`'s order (the same bits trick): selections on
/// these compare integers, not floats. Its own inverse.
#[inline]
fn order_key(x: f64) -> i64 {
    let b = x.to_bits() as i64;
    b ^ (((b >> 63) as u64) >> 1) as i64
}

#[inline]
fn from_order_key(k: i64) -> f64 {
    f64::from_bits((k ^ (((k >> 63) as u64) >> 1) as i64) as u64)
}

/// Where numpy's linear interpolation takes the `q` quantile of `n` sorted values: the
/// order statistic below (from 0) and the fraction of the way to the next.
#[inline]
fn numpy_rank(q: f64, n: usize) -> (usize, f64) {
    let pos = q * (n - 1) as f64;
    (pos.floor() as usize, pos - pos.floor())
}

/// The 10th and 90th percentiles of the values whose [`order_key`]s `v` holds, as
/// [`quantiles`] gives them (numpy's linear interpolation), by selection instead of a sort.
/// Reorders `v`.
fn p10_p90(v: &mut [i64]) -> (f64, f64) {
    let n = v.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    // Order statistics at `pos`'s floor and ceiling; everything right of `at` after a
    // selection at `at` is not smaller, so the next one is the smallest there.
    let (lo10, f10) = numpy_rank(0.1, n);
    let (lo90, f90) = numpy_rank(0.9, n);
    let (_, &mut a10, right) = v.select_nth_unstable(lo10);
    let b10 = if f10 > 0.0 {
        right.iter().copied().min().unwrap_or(a10)
    } else {
        a10
    };
    let a90 = if lo90 == lo10 {
        a10
    } else {
        *v[lo10 + 1..].select_nth_unstable(lo90 - lo10 - 1).1
    };
    let b90 = if f90 > 0.0 {
        v[lo90 + 1..].iter().copied().min().unwrap_or(a90)
    } else {
        a90
    };
    let [a10, b10, a90, b90] = [a10, b10, a90, b90].map(from_order_key);
    (a10 + (b10 - a10) * f10, a90 + (b90 - a90) * f90)
}

impl Predictor for LastValue {
    fn name(&self) -> &str {
        "last"
    }
    fn kind(&self) -> PredictorKind {
        PredictorKind::Baseline
    }
    fn horizon(&self) -> usize {
        self.horizon
    }
    fn history(&self) -> usize {
        self.window
    }
    fn forecast(&mut self, b: &Batch<'_>) -> Vec<Forecast> {
        fresh(self, b)
    }
    fn forecast_into(&mut self, b: &Batch<'_>, out: &mut Vec<Forecast>) {
        let mut ys = Vec::new();
        let mut scratch = Vec::new();
        for (r, s) in b.series.iter().enumerate() {
            let f = reuse(out, r, s, b, "last");
            for t in Target::ALL {
                ys.clear();
                let n = s.buckets.len();
                ys.extend(
                    s.buckets[n.saturating_sub(self.window)..]
                        .iter()
                        .map(|x| x.target(t)),
                );
                let last = ys.last().copied().unwrap_or(0.0);
                let bands = &mut f.bands[t as usize];
                empirical_bands(&ys, self.horizon, |_| last, |h| h, &mut scratch, bands);
            }
        }
        out.truncate(b.series.len());
    }
}

/// An exponentially weighted mean and variance.
pub struct Ewma {
    horizon: usize,
    alpha: f64,
    state: States<[(f64, f64); 4]>,
}

impl Ewma {
    pub fn new(horizon: usize, cfg: &EwmaConfig) -> Self {
        Ewma {
            horizon: horizon.max(1),
            alpha: cfg.alpha.clamp(1e-6, 1.0),
            state: States::new(),
        }
    }
}

impl Predictor for Ewma {
    fn name(&self) -> &str {
        "ewma"
    }
    fn kind(&self) -> PredictorKind {
        PredictorKind::Baseline
    }
    fn horizon(&self) -> usize {
        self.horizon
    }
    fn forecast(&mut self, b: &Batch<'_>) -> Vec<Forecast> {
        fresh(self, b)
    }
    fn forecast_into(&mut self, b: &Batch<'_>, out: &mut Vec<Forecast>) {
        let (a, h) = (self.alpha, self.horizon);
        for (r, s) in b.series.iter().enumerate() {
            let f = reuse(out, r, s, b, "ewma");
            let init = || Target::ALL.map(|t| (s.last(t), 0.0));
            self.state.with(s.workload, init, |st| {
                for t in Target::ALL {
                    let (m, v) = &mut st[t as usize];
                    let e = s.last(t) - *m;
                    *m += a * e;
                    *v = (1.0 - a) * (*v + a * e * e);
                    let sd = v.sqrt();
                    f.bands[t as usize].resize(h, band(*m - Z90 * sd, *m, *m + Z90 * sd));
                }
            });
        }
        out.truncate(b.series.len());
        self.state.sweep();
    }
}

/// Seasonal naive.
pub struct SeasonalNaive {
    horizon: usize,
    max_period: usize,
    state: States<Seasonal>,
}

struct Seasonal {
    /// The last `2 · max_period` buckets' targets, oldest first.
    ys: [VecDeque<f32>; 4],
    period: [Option<usize>; 4],
    /// Per target with a period `p`: its seasonal changes `ys[i] − ys[i − p]` (`i` in
    /// `p..n`, rounded to `f32`) as sorted [`order_key32`]s, kept in step with `ys` — each
    /// bucket one change leaves with the oldest value and one enters with the new — so the
    /// band's percentiles are two lookups, not a selection over up to 288 changes per
    /// target and bucket.
    changes: [Vec<i32>; 4],
    /// Per target: buckets until its period is looked for again, and between two
    /// searches now.
    until_detect: [usize; 4],
    every: [usize; 4],
}

impl Seasonal {
    /// Target `i`'s value of a new bucket (the window kept `keep` long); with `detect`
    /// (the longest period), the period is looked for again. `scratch` is for the search.
    /// Whether the period changed.
    fn push(
        &mut self,
        i: usize,
        y: f32,
        keep: usize,
        detect: Option<usize>,
        scratch: &mut Vec<f64>,
    ) -> bool {
        let (q, changes) = (&mut self.ys[i], &mut self.changes[i]);
        let period = self.period[i].filter(|&p| p < q.len());
        // The change that leaves with the oldest value.
        let leaving = period
            .filter(|_| q.len() >= keep)
            .map(|p| change_key(q, p, p));
        // The oldest leaves first: pushed past its capacity (`keep`), the ring would
        // double.
        while q.len() >= keep.max(1) {
            q.pop_front();
        }
        q.push_back(y);
        let n = q.len();
        if let Some(p) = period {
            let k = change_key(q, n - 1, p);
            let (old_at, at) = below2(changes, leaving.unwrap_or(k), k);
            // Where the leaving change lies (it entered with its value).
            let old_at = leaving
                .filter(|&old| changes.get(old_at) == Some(&old))
                .map(|_| old_at);
            match old_at {
                // The new change takes the leaving one's place: one shift of what lies
                // between.
                Some(old) if at > old => {
                    changes.copy_within(old + 1..at, old);
                    changes[at - 1] = k;
                }
                Some(old) => {
                    changes.copy_within(at..old, at + 1);
                    changes[at] = k;
                }
                None => changes.insert(at, k),
            }
        }
        if let Some(max_period) = detect {
            scratch.clear();
            scratch.extend(q.iter().map(|&v| v as f64));
            let found = find_period(scratch, max_period);
            if found != period {
                self.period[i] = found;
                changes.clear();
                if let Some(p) = found.filter(|&p| p < n) {
                    changes.reserve_exact(keep - p);
                    changes.extend((p..n).map(|j| change_key(q, j, p)));
                    changes.sort_unstable();
                }
                return true;
            }
        }
        false
    }

    /// Whether target `i`'s period is to be looked for at this bucket.
    fn due(&mut self, i: usize) -> bool {
        let due = self.until_detect[i] == 0;
        self.until_detect[i] = self.until_detect[i].saturating_sub(1);
        due
    }

    /// After a search of target `i`: the next one in [`REDETECT_EVERY`] buckets while the
    /// window fills or after the period changed, else twice as late as the last, up to
    /// [`REDETECT_MAX`] (a search is the candidate's largest cost; a window of `keep`
    /// buckets changes little in a few).
    fn searched(&mut self, i: usize, changed: bool, keep: usize) {
        let full = self.ys[i].len() >= keep;
        self.every[i] = if changed || !full {
            REDETECT_EVERY
        } else {
            (self.every[i] * 2).min(REDETECT_MAX)
        };
        self.until_detect[i] = self.every[i];
    }
}

/// `ys[i] − ys[i − p]`, rounded to `f32`, as its [`order_key32`].
#[inline]
fn change_key(ys: &VecDeque<f32>, i: usize, p: usize) -> i32 {
    order_key32((ys[i] as f64 - ys[i - p] as f64) as f32)
}

/// [`order_key`] for `f32`.
#[inline]
pub(crate) fn order_key32(x: f32) -> i32 {
    let b = x.to_bits() as i32;
    b ^ (((b >> 31) as u32) >> 1) as i32
}

#[inline]
pub(crate) fn from_order_key32(k: i32) -> f32 {
    f32::from_bits((k ^ (((k >> 31) as u32) >> 1) as i32) as u32)
}

/// How many of `v` lie below `k` (see [`below2`]).
#[inline]
pub(crate) fn below(v: &[i32], k: i32) -> usize {
    v.iter().map(|&e| (e < k) as u32).sum::<u32>() as usize
}

/// How many of `v` lie below `a`, and below `b`: in sorted `v`, where each would go. One
/// pass that compiles to vector compares — for the few hundred keys kept here it beats a
/// binary search, whose loads each wait on the last (and miss the cache in turn).
#[inline]
pub(crate) fn below2(v: &[i32], a: i32, b: i32) -> (usize, usize) {
    let (x, y) = v.iter().fold((0u32, 0u32), |(x, y), &e| {
        (x + (e < a) as u32, y + (e < b) as u32)
    });
    (x as usize, y as usize)
}

/// The 10th and 90th percentiles of sorted [`order_key32`]s, numpy's linear
/// interpolation (as [`p10_p90`]).
fn p10_p90_sorted(v: &[i32]) -> (f64, f64) {
    let n = v.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let at = |q: f64| -> f64 {
        let (lo, f) = numpy_rank(q, n);
        let a = from_order_key32(v[lo]) as f64;
        if f > 0.0 {
            let b = from_order_key32(v[(lo + 1).min(n - 1)]) as f64;
            a + (b - a) * f
        } else {
            a
        }
    };
    (at(0.1), at(0.9))
}

/// Buckets between period searches, at first and at most.
const REDETECT_EVERY: usize = 12;
const REDETECT_MAX: usize = 48;

/// The period of `ys` (see the module's doc), if there is one.
pub fn find_period(ys: &[f64], max_period: usize) -> Option<usize> {
    let n = ys.len();
    let max_lag = max_period.min(n / 2);
    if max_lag < 2 {
        return None;
    }
    let mean = ys.iter().sum::<f64>() / n as f64;
    let c: Vec<f64> = ys.iter().map(|y| y - mean).collect();
    let var = dot(&c, &c);
    if var <= 1e-12 * n as f64 * (1.0 + mean * mean) {
        return None;
    }
    let acf = |k: usize| dot(&c[k..], &c[..n - k]) / var;
    let mut turned = false;
    let mut best: Option<(usize, f64)> = None;
    for k in 1..=max_lag {
        let r = acf(k);
        if !turned {
            turned = r < 0.0;
            continue;
        }
        if best.is_none_or(|(_, b)| r > b) {
            best = Some((k, r));
        }
    }
    best.filter(|&(_, r)| r > 0.3).map(|(k, _)| k)
}

/// Σ a·b over the shorter length, in four independent sums (which the compiler can keep in
/// vector lanes; one running sum cannot be reordered).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

impl SeasonalNaive {
    pub fn new(horizon: usize, cfg: &SeasonalConfig) -> Self {
        SeasonalNaive {
            horizon: horizon.max(1),
            max_period: cfg.max_period.max(2),
            state: States::new(),
        }
    }
}

impl Predictor for SeasonalNaive {
    fn name(&self) -> &str {
        "seasonal"
    }
    fn kind(&self) -> PredictorKind {
        PredictorKind::Baseline
    }
    fn horizon(&self) -> usize {
        self.horizon
    }
    fn forecast(&mut self, b: &Batch<'_>) -> Vec<Forecast> {
        fresh(self, b)
    }
    fn forecast_into(&mut self, b: &Batch<'_>, out: &mut Vec<Forecast>) {
        let keep = 2 * self.max_period;
        let (h_max, max_period) = (self.horizon, self.max_period);
        let mut ys: Vec<f64> = Vec::with_capacity(keep);
        let mut scratch = Vec::new();
        for (r, s) in b.series.iter().enumerate() {
            let f = reuse(out, r, s, b, "seasonal");
            let init = || Seasonal {
                // Of the window's size (grown by doubling, a ring would reach 512; `push`
                // never takes it past this).
                ys: std::array::from_fn(|_| VecDeque::with_capacity(keep)),
                period: [None; 4],
                changes: Default::default(),
                // Spread the searches of workloads over the buckets.
                until_detect: [s.workload.0.len() % REDETECT_EVERY; 4],
                every: [REDETECT_EVERY; 4],
            };
            self.state.with(s.workload, init, |st| {
                for t in Target::ALL {
                    let i = t as usize;
                    let bands = &mut f.bands[i];
                    let detect = st.due(i);
                    let changed = st.push(
                        i,
                        s.last(t) as f32,
                        keep,
                        detect.then_some(max_period),
                        &mut ys,
                    );
                    if detect {
                        st.searched(i, changed, keep);
                    }
                    let q = &st.ys[i];
                    let n = q.len();
                    match st.period[i].filter(|&p| p < n) {
                        Some(p) => {
                            let (lo, hi) = p10_p90_sorted(&st.changes[i]);
                            bands.extend((1..=h_max).map(|h| {
                                let p50 = q[n - 1 + h - p * h.div_ceil(p)] as f64;
                                band(p50 + lo, p50, p50 + hi)
                            }));
                        }
                        None => {
                            let last = q.back().map_or(0.0, |&v| v as f64);
                            ys.clear();
                            ys.extend(q.range(n.saturating_sub(24)..).map(|&v| v as f64));
                            empirical_bands(&ys, h_max, |_| last, |h| h, &mut scratch, bands);
                        }
                    }
                }
            });
        }
        out.truncate(b.series.len());
        self.state.sweep();
    }
}

/// An exponential histogram whose samples' weights grow by 2 every half-life (so old
/// samples count less), as VPA's decaying histogram.
#[derive(Clone, Debug)]
pub struct DecayingHistogram {
    first: f64,
    ratio: f64,
    weights: Vec<f32>,
    total: f64,
    /// The bucket index whose samples weigh 1.
    reference: f64,
    half_life: f64,
}

impl DecayingHistogram {
    pub fn new(first: f64, max: f64, ratio: f64, half_life: f64) -> Self {
        let n = ((max * (ratio - 1.0) / first + 1.0).ln() / ratio.ln()).ceil() as usize + 1;
        DecayingHistogram {
            first,
            ratio,
            weights: vec![0.0; n],
            total: 0.0,
            reference: 0.0,
            half_life: half_life.max(1e-3),
        }
    }

    fn bucket(&self, v: f64) -> usize {
        if v.is_nan() || v < self.first {
            return 0;
        }
        let b = ((v * (self.ratio - 1.0) / self.first + 1.0).ln() / self.ratio.ln()) as usize;
        b.min(self.weights.len() - 1)
    }

    pub fn bucket_start(&self, b: usize) -> f64 {
        self.first * (self.ratio.powi(b as i32) - 1.0) / (self.ratio - 1.0)
    }

    /// Adds `v` seen at time `at` (in intervals).
    pub fn add(&mut self, v: f64, at: f64) {
        let mut exp = (at - self.reference) / self.half_life;
        if exp > 60.0 {
            // Move the reference forward so weights stay finite.
            let scale = 2f64.powf(-exp);
            for w in &mut self.weights {
                *w = (*w as f64 * scale) as f32;
            }
            self.total *= scale;
            self.reference = at;
            exp = 0.0;
        }
        let w = 2f64.powf(exp);
        let b = self.bucket(v);
        self.weights[b] += w as f32;
        self.total += w;
    }

    pub fn is_empty(&self) -> bool {
        self.total <= 0.0
    }

    /// The end of the bucket where the cumulative weight reaches `q` (VPA's rule; the last
    /// bucket's start for the last bucket); 0 when empty.
    pub fn percentile(&self, q: f64) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let threshold = q * self.total;
        let mut sum = 0.0;
        let last = self.weights.len() - 1;
        let mut b = 0;
        while b < last {
            sum += self.weights[b] as f64;
            if sum >= threshold {
                break;
            }
            b += 1;
        }
        if b < last {
            self.bucket_start(b + 1)
        } else {
            self.bucket_start(b)
        }
    }
}

/// First bucket size and largest value of each target's histogram.
const VPA_BUCKETS: [(f64, f64); 4] = [(0.01, 1000.0), (1e7, 1e12), (1e3, 1e11), (1e3, 1e11)];

/// The VPA-like recommender.
pub struct VpaLike {
    horizon: usize,
    cfg: VpaConfig,
    state: States<Vec<DecayingHistogram>>,
    /// Buckets seen (the histograms' clock).
    clock: f64,
}

impl VpaLike {
    pub fn new(horizon: usize, cfg: &VpaConfig) -> Self {
        VpaLike {
            horizon: horizon.max(1),
            cfg: cfg.clone(),
            state: States::new(),
            clock: 0.0,
        }
    }
}

impl Predictor for VpaLike {
    fn name(&self) -> &str {
        "vpa"
    }
    fn kind(&self) -> PredictorKind {
        PredictorKind::Baseline
    }
    fn horizon(&self) -> usize {
        self.horizon
    }
    fn forecast(&mut self, b: &Batch<'_>) -> Vec<Forecast> {
        fresh(self, b)
    }
    fn forecast_into(&mut self, b: &Batch<'_>, out: &mut Vec<Forecast>) {
        let (cfg, clock, h) = (&self.cfg, self.clock, self.horizon);
        for (r, s) in b.series.iter().enumerate() {
            let f = reuse(out, r, s, b, "vpa");
            let init = || {
                VPA_BUCKETS
                    .iter()
                    .map(|&(first, max)| DecayingHistogram::new(first, max, 1.05, cfg.half_life))
                    .collect()
            };
            let present = s.buckets.last().is_some_and(|x| x.present());
            self.state
                .with(s.workload, init, |hs: &mut Vec<DecayingHistogram>| {
                    for t in Target::ALL {
                        let hist = &mut hs[t as usize];
                        if present {
                            hist.add(s.last(t), clock);
                        }
                        let top = hist.percentile(cfg.target) * (1.0 + cfg.margin);
                        let p = band(hist.percentile(0.1), hist.percentile(0.5), top);
                        f.bands[t as usize].resize(h, p);
                    }
                });
        }
        out.truncate(b.series.len());
        self.state.sweep();
        self.clock += 1.0;
    }
}

/// The Autopilot-like moving window.
pub struct AutopilotLike {
    horizon: usize,
    cfg: AutopilotConfig,
    state: States<Window>,
    /// `decay^k` for each age `k` in the window, made by repeated products (as the
    /// weights of the average are).
    powers: Vec<f64>,
    /// A target's running sums of weights, from one workload's target to the next.
    prefix: Vec<f64>,
}

/// A workload's window: per target the values of the buckets it ran in, sorted, each with
/// the bucket that brought it (its age gives its weight), kept so from bucket to bucket —
/// sorting the window anew per target and bucket was most of the baseline's time — and
/// nothing else (the average and the peak come from the same values). The values are kept
/// as their [`order_key32`]s and the buckets beside them, so that where a new value goes
/// and which one leaves are found in one pass over each: a binary search's loads each wait
/// on the one before, and with a thousand workloads each misses the cache.
#[derive(Default)]
struct Window {
    pushed: u32,
    keys: [Vec<i32>; 4],
    stamps: [Vec<u32>; 4],
}

/// A target's decayed average, peak, and total weight over the window.
struct Stats {
    avg: f64,
    peak: f64,
    total: f64,
}

impl Window {
    /// Takes the next bucket in (`None`: the workload did not run), room for `len`; the
    /// values older than the last `len` buckets leave.
    fn push(&mut self, v: Option<[f32; 4]>, len: usize) {
        let stamp = self.pushed;
        self.pushed = self.pushed.wrapping_add(1);
        for t in 0..4 {
            let (keys, stamps) = (&mut self.keys[t], &mut self.stamps[t]);
            if keys.capacity() == 0 {
                keys.reserve_exact(len);
                stamps.reserve_exact(len);
            }
            let aged = |s: u32| stamp.wrapping_sub(s) as usize >= len;
            // One bucket comes per push, so at most one value leaves.
            let old = stamps.iter().position(|&s| aged(s));
            let one = old.is_some_and(|o| !stamps[o + 1..].iter().any(|&s| aged(s)));
            let k = v.map(|v| order_key32(v[t]));
            match (old, k) {
                (None, None) => {}
                (None, Some(k)) => {
                    let at = below(keys, k);
                    keys.insert(at, k);
                    stamps.insert(at, stamp);
                }
                // The new value takes the leaving one's place: one shift of what lies
                // between.
                (Some(o), Some(k)) if one => {
                    let at = below(keys, k);
                    let at = if at > o {
                        keys.copy_within(o + 1..at, o);
                        stamps.copy_within(o + 1..at, o);
                        at - 1
                    } else {
                        keys.copy_within(at..o, at + 1);
                        stamps.copy_within(at..o, at + 1);
                        at
                    };
                    (keys[at], stamps[at]) = (k, stamp);
                }
                (Some(_), k) => {
                    let mut j = 0;
                    for i in 0..keys.len() {
                        if !aged(stamps[i]) {
                            (keys[j], stamps[j]) = (keys[i], stamps[i]);
                            j += 1;
                        }
                    }
                    keys.truncate(j);
                    stamps.truncate(j);
                    if let Some(k) = k {
                        let at = below(keys, k);
                        keys.insert(at, k);
                        stamps.insert(at, stamp);
                    }
                }
            }
        }
    }

    /// Target `t`'s values, each with its weight `powers[age]`.
    fn weighted<'a>(
        &'a self,
        t: usize,
        powers: &'a [f64],
    ) -> impl Iterator<Item = (f64, f64)> + 'a {
        let newest = self.pushed.wrapping_sub(1);
        self.keys[t]
            .iter()
            .zip(&self.stamps[t])
            .map(move |(&k, &s)| {
                (
                    from_order_key32(k) as f64,
                    powers[newest.wrapping_sub(s) as usize],
                )
            })
    }

    /// Target `t`'s sums, each value weighing `powers[age]`; `prefix` gets the running
    /// sum of the weights at each value, in the values' order (for
    /// [`Window::percentiles`]).
    fn stats(&self, t: usize, powers: &[f64], prefix: &mut Vec<f64>) -> Stats {
        prefix.clear();
        let (mut sum, mut total) = (0.0, 0.0);
        for (x, w) in self.weighted(t, powers) {
            sum += w * x;
            total += w;
            prefix.push(total);
        }
        Stats {
            avg: if total > 0.0 { sum / total } else { 0.0 },
            peak: self.keys[t]
                .last()
                .map_or(0.0, |&k| (from_order_key32(k) as f64).max(0.0)),
            total,
        }
    }

    /// The weighted `q` percentiles of target `t`'s values (`total`: their weight and
    /// `prefix` its running sums, from [`Window::stats`]): what [`weighted_percentile`]
    /// gives for each (the same sums in the same order), found by binary search.
    fn percentiles<const N: usize>(
        &self,
        t: usize,
        q: [f64; N],
        total: f64,
        prefix: &[f64],
    ) -> [f64; N] {
        let keys = &self.keys[t];
        let Some(&last) = keys.last() else {
            return [0.0; N];
        };
        q.map(|q| {
            let at = prefix.partition_point(|&s| s < q * total);
            from_order_key32(keys.get(at).copied().unwrap_or(last)) as f64
        })
    }
}

impl AutopilotLike {
    pub fn new(horizon: usize, cfg: &AutopilotConfig) -> Self {
        AutopilotLike {
            horizon: horizon.max(1),
            cfg: AutopilotConfig {
                window: cfg.window.max(1),
                ..cfg.clone()
            },
            state: States::new(),
            powers: std::iter::successors(Some(1.0), |w| {
                Some(w * 0.5f64.powf(1.0 / cfg.half_life.max(1e-3)))
            })
            .take(cfg.window.max(1))
            .collect(),
            prefix: Vec::new(),
        }
    }
}

/// The weighted `q` percentile of `(value, weight)` pairs (sorts them).
#[cfg(test)]
fn weighted_percentile(v: &mut [(f64, f64)], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = v.iter().map(|x| x.1).sum();
    let mut sum = 0.0;
    for &(x, w) in v.iter() {
        sum += w;
        if sum >= q * total {
            return x;
        }
    }
    v[v.len() - 1].0
}

impl Predictor for AutopilotLike {
    fn name(&self) -> &str {
        "autopilot"
    }
    fn kind(&self) -> PredictorKind {
        PredictorKind::Baseline
    }
    fn horizon(&self) -> usize {
        self.horizon
    }
    fn forecast(&mut self, b: &Batch<'_>) -> Vec<Forecast> {
        fresh(self, b)
    }
    fn forecast_into(&mut self, b: &Batch<'_>, out: &mut Vec<Forecast>) {
        let (cfg, h) = (&self.cfg, self.horizon);
        let powers = &self.powers;
        let prefix = &mut self.prefix;
        for (r, s) in b.series.iter().enumerate() {
            let f = reuse(out, r, s, b, "autopilot");
            let newest = s.buckets.last().filter(|x| x.present());
            self.state.with(s.workload, Window::default, |win| {
                win.push(
                    newest.map(|x| Target::ALL.map(|t| x.target(t) as f32)),
                    cfg.window,
                );
                for t in Target::ALL {
                    let i = t as usize;
                    let Stats { avg, peak, total } = win.stats(i, powers, prefix);
                    let (low, rec) = match t {
                        Target::Memory => (win.percentiles(i, [0.1], total, prefix)[0], peak),
                        _ => {
                            let [low, p] = win.percentiles(i, [0.1, cfg.percentile], total, prefix);
                            (low, p.max(avg))
                        }
                    };
                    let rec = rec * (1.0 + cfg.margin);
                    f.bands[i].resize(h, band(low, avg.min(rec), rec));
                }
            });
        }
        out.truncate(b.series.len());
        self.state.sweep();
    }
}

/// The baseline called `name` (one of [`BASELINES`]), with the settings of `cfg`.
pub fn by_name(name: &str, cfg: &PredictConfig) -> Option<Box<dyn Predictor>> {
    let h = cfg.horizon;
    Some(match name {
        "last" => Box::new(LastValue::new(h, cfg.window)),
        "ewma" => Box::new(Ewma::new(h, &cfg.ewma)),
        "seasonal" => Box::new(SeasonalNaive::new(h, &cfg.seasonal)),
        "vpa" => Box::new(VpaLike::new(h, &cfg.vpa)),
        "autopilot" => Box::new(AutopilotLike::new(h, &cfg.autopilot)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::predict::{Bucket, features::N_FEATURES};

    /// A series of buckets with CPU `ys` (other targets derived), all present.
    fn buckets(ys: &[f64]) -> Vec<Bucket> {
        ys.iter()
            .enumerate()
            .map(|(i, &y)| {
                let mut f = [0.0f32; N_FEATURES];
                f[0] = y as f32; // cpu_cores
                f[1] = (y * 1e8) as f32; // rss
                f[3] = (y * 1e4) as f32; // read_bps
                f[7] = (y * 10.0) as f32; // net_rx_bps
                f[N_FEATURES - 1] = 1.0;
                Bucket {
                    end_ms: (i as u64 + 1) * 5000,
                    features: f,
                }
            })
            .collect()
    }

    /// Feeds `ys` one bucket at a time (the series the featurizer would give, `window`
    /// long) and returns the forecasts after the last.
    fn run(p: &mut dyn Predictor, ys: &[f64], window: usize) -> Forecast {
        let id = WorkloadId("exe:a".into());
        let all = buckets(ys);
        let mut last = None;
        for i in 0..all.len() {
            let lo = (i + 1).saturating_sub(window);
            let batch = Batch {
                now_ms: all[i].end_ms,
                interval_ms: 5000,
                series: vec![Series {
                    workload: &id,
                    name: "a",
                    buckets: &all[lo..=i],
                }],
            };
            last = p.forecast(&batch).pop();
        }
        last.unwrap()
    }

    fn cfg(horizon: usize) -> PredictConfig {
        PredictConfig {
            horizon,
            ..Default::default()
        }
    }

    fn all(h: usize) -> Vec<Box<dyn Predictor>> {
        BASELINES
            .iter()
            .map(|n| by_name(n, &cfg(h)).unwrap())
            .collect()
    }

    /// Every order of three values, with negatives and non-finite ones, gives the same
    /// ordered band.
    #[test]
    fn a_band_is_its_three_values_ordered_and_non_negative() {
        let cases = [
            ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),
            ([-1.0, 5.0, 0.5], [0.0, 0.5, 5.0]),
            ([f64::NAN, 2.0, f64::INFINITY], [0.0, 0.0, 2.0]),
            ([4.0, 4.0, 1.0], [1.0, 4.0, 4.0]),
        ];
        for (v, want) in cases {
            for [i, j, k] in [
                [0, 1, 2],
                [0, 2, 1],
                [1, 0, 2],
                [1, 2, 0],
                [2, 0, 1],
                [2, 1, 0],
            ] {
                let b = band(v[i], v[j], v[k]);
                assert_eq!([b.p10, b.p50, b.p90], want, "{v:?} as {i}{j}{k}");
            }
        }
    }

    #[test]
    fn every_baseline_emits_ordered_non_negative_bands_for_every_target_and_step() {
        let ys: Vec<f64> = (0..200).map(|i| ((i * 37) % 11) as f64 * 0.1).collect();
        for mut p in all(6) {
            let f = run(p.as_mut(), &ys, 24);
            assert_eq!(f.predictor, p.name());
            for t in Target::ALL {
                let bands = f.of(t);
                assert_eq!(bands.len(), 6, "{} {t:?}", p.name());
                for b in bands {
                    assert!(
                        0.0 <= b.p10 && b.p10 <= b.p50 && b.p50 <= b.p90,
                        "{} {b:?}",
                        p.name()
                    );
                    assert!(b.p90.is_finite());
                }
            }
        }
    }

    use crate::predict::profiles::quantiles;

    proptest::proptest! {
        /// A baseline writing each tick into the forecasts it gave the tick before (their
        /// rooms reused, as the live stack's candidates run) gives what one making new
        /// forecasts gives: through workloads coming, leaving and changing places, and
        /// workloads' names of other lengths.
        #[test]
        fn forecasts_written_over_the_last_ticks_are_new_ones(
            ticks in proptest::collection::vec(
                proptest::collection::vec((0usize..6, 0.0f64..4.0), 0..6),
                1..30,
            ),
        ) {
            let ids: Vec<WorkloadId> =
                (0..6).map(|i| WorkloadId(format!("exe:{}", "w".repeat(1 + 7 * i)))).collect();
            for name in BASELINES {
                let mut fresh = by_name(name, &cfg(3)).unwrap();
                let mut kept = by_name(name, &cfg(3)).unwrap();
                let mut out = Vec::new();
                let mut history: Vec<Vec<Bucket>> = vec![Vec::new(); ids.len()];
                for (k, tick) in ticks.iter().enumerate() {
                    let mut seen = [false; 6];
                    let first = |(w, _): &&(usize, f64)| !std::mem::replace(&mut seen[*w], true);
                    let tick: Vec<_> = tick.iter().filter(first).collect();
                    for &&(w, y) in &tick {
                        let mut b = buckets(&[y]).remove(0);
                        b.end_ms = (k as u64 + 1) * 5000;
                        history[w].push(b);
                    }
                    let batch = Batch {
                        now_ms: (k as u64 + 1) * 5000,
                        interval_ms: 5000,
                        series: tick
                            .iter()
                            .map(|&&(w, _)| Series {
                                workload: &ids[w],
                                name: "w",
                                buckets: &history[w][history[w].len().saturating_sub(24)..],
                            })
                            .collect(),
                    };
                    kept.forecast_into(&batch, &mut out);
                    proptest::prop_assert_eq!(&out, &fresh.forecast(&batch), "{}", name);
                }
            }
        }

        /// The Autopilot-like window's values kept sorted from bucket to bucket give the
        /// weighted percentiles of the window sorted anew: through it filling, absences
        /// and the oldest leaving.
        #[test]
        fn the_kept_window_weighs_percentiles_as_sorting_it_anew(
            v in proptest::collection::vec(proptest::option::weighted(0.8, 0.0f32..10.0), 1..120),
            len in 1usize..40,
            q in 0.01f64..1.0,
        ) {
            let cfg = AutopilotConfig { window: len, half_life: 7.0, ..Default::default() };
            let p = AutopilotLike::new(1, &cfg);
            let decay = 0.5f64.powf(1.0 / 7.0);
            let mut win = Window::default();
            let mut ring: VecDeque<Option<[f32; 4]>> = VecDeque::new();
            for x in &v {
                let x = x.map(|x| [x, x * 2.0, -x, 1.0]);
                win.push(x, len);
                ring.push_back(x);
                if ring.len() > len {
                    ring.pop_front();
                }
                for t in 0..4 {
                    // Weights by age, absent buckets counted.
                    let (mut pairs, mut w, mut sum, mut peak) = (Vec::new(), 1.0, 0.0, 0.0f64);
                    for b in ring.iter().rev() {
                        if let Some(b) = b {
                            pairs.push((b[t] as f64, w));
                            sum += w * b[t] as f64;
                            peak = peak.max(b[t] as f64);
                        }
                        w *= decay;
                    }
                    let mut prefix = Vec::new();
                    let st = win.stats(t, &p.powers, &mut prefix);
                    let total: f64 = pairs.iter().map(|p| p.1).sum();
                    proptest::prop_assert_eq!(win.keys[t].len(), pairs.len());
                    proptest::prop_assert_eq!(win.stamps[t].len(), pairs.len());
                    proptest::prop_assert_eq!(st.peak, peak);
                    let avg = if total > 0.0 { sum / total } else { 0.0 };
                    proptest::prop_assert!((st.avg - avg).abs() <= 1e-12 * avg.abs().max(1.0));
                    let want = weighted_percentile(&mut pairs, q);
                    proptest::prop_assert_eq!(win.percentiles(t, [q], st.total, &prefix), [want]);
                    let both = win.percentiles(t, [0.1, q], st.total, &prefix);
                    proptest::prop_assert_eq!(both, [weighted_percentile(&mut pairs, 0.1), want]);
                }
            }
        }

        #[test]
        fn p10_p90_by_selection_is_numpys(v in proptest::collection::vec(-1e3f64..1e3, 0..300)) {
            let mut sorted = v.clone();
            let want = quantiles(&mut sorted, &[0.1, 0.9]);
            let mut w: Vec<i64> = v.iter().map(|&x| order_key(x)).collect();
            let got = p10_p90(&mut w);
            proptest::prop_assert_eq!(got, (want[0], want[1]));
        }

        #[test]
        fn p10_p90_of_sorted_keys_is_numpys(v in proptest::collection::vec(-1e3f32..1e3, 0..300)) {
            let mut sorted: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            let want = quantiles(&mut sorted, &[0.1, 0.9]);
            let mut keys: Vec<i32> = v.iter().map(|&x| order_key32(x)).collect();
            keys.sort_unstable();
            let got = p10_p90_sorted(&keys);
            proptest::prop_assert_eq!(got, (want[0], want[1]));
        }

        /// The changes kept in step bucket by bucket are the changes of the window as it
        /// is: through the window filling, periods found, changed and lost.
        #[test]
        fn seasonal_changes_kept_in_step_are_the_windows(
            parts in proptest::collection::vec((2usize..30, 0u32..3, 1usize..80), 1..8),
            seed in 0u64..1000,
        ) {
            let (keep, max_period) = (96, 48);
            let mut st = Seasonal {
                ys: Default::default(),
                period: [None; 4],
                changes: Default::default(),
                until_detect: [0; 4],
                every: [REDETECT_EVERY; 4],
            };
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut scratch = Vec::new();
            let mut k = 0usize;
            for (period, shape, len) in parts {
                for _ in 0..len {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let noise = (x % 100) as f32 / 100.0;
                    let y = match shape {
                        0 => ((k % period) < period / 2) as u8 as f32 * 10.0 + noise,
                        1 => (k % period) as f32 + noise * 0.1,
                        _ => noise * 50.0,
                    };
                    st.push(0, y, keep, k.is_multiple_of(7).then_some(max_period), &mut scratch);
                    k += 1;
                    let q = &st.ys[0];
                    let mut want: Vec<i32> = match st.period[0] {
                        Some(p) => (p..q.len()).map(|j| change_key(q, j, p)).collect(),
                        None => Vec::new(),
                    };
                    want.sort_unstable();
                    proptest::prop_assert!(q.len() <= keep);
                    proptest::prop_assert_eq!(&st.changes[0], &want, "bucket {}", k);
                }
            }
        }

        #[test]
        fn order_keys_sort_as_total_cmp_and_map_back(
            a in proptest::num::f64::ANY,
            b in proptest::num::f64::ANY,
        ) {
            proptest::prop_assert_eq!(order_key(a).cmp(&order_key(b)), a.total_cmp(&b));
            proptest::prop_assert_eq!(from_order_key(order_key(a)).to_bits(), a.to_bits());
        }

        #[test]
        fn f32_order_keys_sort_as_total_cmp_and_map_back(
            a in proptest::num::f32::ANY,
            b in proptest::num::f32::ANY,
        ) {
            proptest::prop_assert_eq!(order_key32(a).cmp(&order_key32(b)), a.total_cmp(&b));
            proptest::prop_assert_eq!(from_order_key32(order_key32(a)).to_bits(), a.to_bits());
        }
    }

    #[test]
    fn a_constant_series_is_forecast_as_itself() {
        let ys = vec![0.5; 100];
        for name in ["last", "ewma", "seasonal"] {
            let mut p = by_name(name, &cfg(3)).unwrap();
            let f = run(p.as_mut(), &ys, 24);
            for b in f.of(Target::Cpu) {
                assert!((b.p50 - 0.5).abs() < 1e-6, "{name} {b:?}");
                assert!((b.p90 - b.p10).abs() < 1e-6, "{name} {b:?}");
            }
        }
    }

    #[test]
    fn seasonal_naive_finds_the_period_and_repeats_it() {
        // A square wave of period 20: 10 buckets busy, 10 idle.
        let ys: Vec<f64> = (0..200)
            .map(|i| if i % 20 < 10 { 1.0 } else { 0.0 })
            .collect();
        assert_eq!(find_period(&ys, 144), Some(20));
        let mut p = SeasonalNaive::new(12, &SeasonalConfig::default());
        let f = run(&mut p, &ys, 1);
        // The last bucket was i = 199 (idle, the end of an idle run): next are busy.
        let p50: Vec<f64> = f.of(Target::Cpu).iter().map(|b| b.p50).collect();
        assert_eq!(&p50[..10], &[1.0; 10]);
        assert_eq!(&p50[10..], &[0.0; 2]);
        // Noise has no period.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<f64> = (0..200)
            .map(|_| {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 1000) as f64
            })
            .collect();
        assert_eq!(find_period(&noise, 144), None);
        assert_eq!(find_period(&[1.0; 50], 20), None);
    }

    /// Searches for the period back off while it holds and the window is full, come back
    /// every 12 buckets once it changes, and find the new one.
    #[test]
    fn period_searches_back_off_while_the_period_holds() {
        let id = WorkloadId("exe:a".into());
        let mut p = SeasonalNaive::new(6, &SeasonalConfig::default());
        let keep = 2 * SeasonalConfig::default().max_period;
        let square = |k: usize, period: usize| if k % period < period / 2 { 1.0 } else { 0.0 };
        let ys: Vec<f64> = (0..900)
            .map(|k| {
                if k < 600 {
                    square(k, 20)
                } else {
                    square(k, 30)
                }
            })
            .collect();
        let all = buckets(&ys);
        let mut searches = Vec::new();
        let mut found_30 = None;
        for i in 0..all.len() {
            let batch = Batch {
                now_ms: all[i].end_ms,
                interval_ms: 5000,
                series: vec![Series {
                    workload: &id,
                    name: "a",
                    buckets: &all[i..=i],
                }],
            };
            p.forecast(&batch);
            let st = &p.state.map[&id].1;
            if st.until_detect[0] == st.every[0] {
                searches.push((i, st.every[0], st.period[0]));
            }
            if i >= 600 && found_30.is_none() && st.period[0] == Some(30) {
                found_30 = Some(i);
            }
        }
        // While the window fills: every 13th bucket (12 between).
        assert!(
            searches.iter().filter(|s| s.0 < keep).all(|s| s.1 == 12),
            "{searches:?}"
        );
        // The period 20 held with the window full: the spacing grew to 48.
        assert!(
            searches.iter().any(|s| s.0 < 600 && s.1 == 48),
            "{searches:?}"
        );
        assert!(searches.iter().all(|s| s.1 <= 48), "{searches:?}");
        // The new period was found, and searches came back to every 12 after it changed.
        let at = found_30.unwrap_or_else(|| panic!("period 30 never found: {searches:?}"));
        // The window (288 buckets) shows period 30 from bucket 828 on (after 20, then 60 —
        // its multiple — for a while): found no later than one longest spacing after.
        assert!((828..828 + 48).contains(&at), "found at {at}");
        assert!(
            searches.iter().any(|s| s.0 == at && s.1 == 12),
            "{searches:?}"
        );
    }

    #[test]
    fn vpa_histogram_follows_the_recommender() {
        let mut h = DecayingHistogram::new(0.01, 1000.0, 1.05, 720.0);
        assert_eq!(h.percentile(0.9), 0.0);
        // Bucket boundaries grow 5%: start(1) = first, start(2) = first * 2.05.
        assert!((h.bucket_start(1) - 0.01).abs() < 1e-12);
        assert!((h.bucket_start(2) - 0.0205).abs() < 1e-12);
        for i in 0..100 {
            h.add(if i < 90 { 0.1 } else { 1.0 }, i as f64);
        }
        // A percentile is the end of the bucket holding it.
        assert_eq!(h.percentile(0.5), h.bucket_start(h.bucket(0.1) + 1));
        assert_eq!(h.percentile(0.95), h.bucket_start(h.bucket(1.0) + 1));
        // With a short half-life, the recent 1.0 samples dominate.
        let mut d = DecayingHistogram::new(0.01, 1000.0, 1.05, 2.0);
        for i in 0..100 {
            d.add(if i < 90 { 0.1 } else { 1.0 }, i as f64);
        }
        assert!(d.percentile(0.5) >= 1.0);
        // Weights stay finite over very long runs.
        for i in 0..100_000 {
            d.add(0.5, 100.0 + i as f64);
        }
        assert!(d.percentile(0.9).is_finite());
        assert!((0.5..0.53).contains(&d.percentile(0.9)));
    }

    #[test]
    fn vpa_recommends_p90_plus_the_margin() {
        // Four in five buckets at 0.2 cores, one at 1.0: p90 is 1.0's bucket, p50 0.2's.
        let ys: Vec<f64> = (0..100)
            .map(|i| if i % 5 == 0 { 1.0 } else { 0.2 })
            .collect();
        let mut p = VpaLike::new(1, &VpaConfig::default());
        let f = run(&mut p, &ys, 1);
        let b = f.of(Target::Cpu)[0];
        let h = DecayingHistogram::new(0.01, 1000.0, 1.05, 720.0);
        let end = |v: f64| h.bucket_start(h.bucket(v) + 1);
        assert!((b.p90 - end(1.0) * 1.15).abs() < 1e-9, "{b:?}");
        assert!((b.p50 - end(0.2)).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn autopilot_takes_the_peak_for_memory_and_the_percentile_for_cpu() {
        let mut ys = vec![0.2; 100];
        ys[95] = 2.0;
        let mut p = AutopilotLike::new(1, &AutopilotConfig::default());
        let f = run(&mut p, &ys, 1);
        let mem = f.of(Target::Memory)[0];
        assert!((mem.p90 - 2.0e8 * 1.1).abs() < 1e3, "{mem:?}");
        let cpu = f.of(Target::Cpu)[0];
        assert!(
            cpu.p90 < 1.0,
            "one spike is above the 95th percentile: {cpu:?}"
        );
        assert!((cpu.p90 - 0.2 * 1.1).abs() < 0.05, "{cpu:?}");
    }

    #[test]
    fn state_of_workloads_that_left_is_let_go() {
        let mut p = Ewma::new(1, &EwmaConfig::default());
        let all = buckets(&[1.0]);
        let ids: Vec<WorkloadId> = (0..10).map(|i| WorkloadId(format!("w{i}"))).collect();
        let batch = |n: usize| Batch {
            now_ms: 5000,
            interval_ms: 5000,
            series: ids[..n]
                .iter()
                .map(|id| Series {
                    workload: id,
                    name: "w",
                    buckets: &all,
                })
                .collect(),
        };
        p.forecast(&batch(10));
        assert_eq!(p.state.map.len(), 10);
        p.forecast(&batch(3));
        assert_eq!(p.state.map.len(), 3);
    }
}
