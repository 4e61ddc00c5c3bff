//! Per workload and target, the predictors' forecasts made one.
//!
//! The primary predictor (the model, or the fallback baseline without one) forecasts every
//! workload; the candidates (`predict.candidates`: by default the seasonal baseline, EWMA
//! and the Autopilot-like one) do too, alongside. Each forecast's first [`STEPS`] steps
//! are scored when their outcome arrives, in moving averages per workload, target,
//! predictor and quantile. Until the first is scored a workload's forecast is the
//! primary's; then, as `predict.combine` says:
//! - **blend** (the default): per target and quantile, the mean of the values of every
//!   predictor whose recent loss of that quantile is within `predict.blend_within` × the
//!   lowest; a predictor further behind falls off as the power [`FALL_OFF`] of the ratio
//!   (the three quantiles put in order again). An equal mean of forecasts is hard to beat
//!   with weights learnt from noisy losses (the "forecast combination puzzle"); measured on
//!   the training recordings, loss-proportional weights of any power lost to it
//!   (models/README.md). A workload with a period only one predictor sees — a batch step
//!   every few minutes — has that predictor far ahead, and its forecast alone.
//!   It blends from the first scored outcome: a new workload's steady memory, whose band
//!   the model makes as wide as a build's, has EWMA's narrow one in the mean at once.
//! - **select**: the predictor of the lowest loss (the mean pinball loss of p10, p50 and
//!   p90) takes a target over once at least [`MIN_SCORED`] outcomes were scored and its
//!   loss is below [`SWITCH`] × the loss of the one in use (and back likewise), or, after
//!   [`EARLY_SCORED`], below [`EARLY_SWITCH`] × it.
//!
//! Each forecast names the predictor it came from, or of the largest weight on p50 (per
//! target when CPU's and memory's differ).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{Band, Batch, Forecast, ModelStats, Predictor, PredictorKind, Target};
use crate::{FastMap, aggregate::WorkloadId};

/// Forecast steps scored (the allocator reserves from the first few).
pub const STEPS: usize = 2;
/// Weight kept by a moving average per scored outcome (half-life ≈ 23 buckets).
const DECAY: f64 = 0.97;
/// Outcomes scored before a workload may switch.
pub const MIN_SCORED: u32 = 12;
/// A candidate takes over when its loss is below this fraction of the one in use.
pub const SWITCH: f64 = 0.85;
/// Before [`MIN_SCORED`], after this many outcomes, a candidate takes over when its loss is
/// below [`EARLY_SWITCH`] × the one in use: a predictor that far behind is not unlucky.
pub const EARLY_SCORED: u32 = 3;
pub const EARLY_SWITCH: f64 = 0.5;

/// Bands of one forecast as scored: [predictor][target][step].
type Made = Vec<[[Band; STEPS]; 4]>;

/// How the predictors' forecasts of a workload's target become one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Combine {
    /// The predictor of the lowest recent loss, switched to when clearly better.
    Select,
    /// Per quantile, the mean of the predictors' values: of every predictor whose recent
    /// loss of that quantile is within a factor of the lowest (those further behind fall
    /// off steeply).
    #[default]
    Blend,
}

/// How steeply a predictor's weight in the blend falls with its loss beyond the band it
/// shares equally (a power).
const FALL_OFF: i32 = 16;

/// Per target, a moving average of each predictor's loss, and the predictor in use (the
/// first, the primary, until another was clearly better).
#[derive(Clone, Debug)]
pub struct Choice {
    /// [predictor][target]: scored yet.
    scored: Vec<[bool; 4]>,
    /// [predictor][target][quantile]: each quantile's moving average loss (the blend's
    /// weights; their mean is the band's, the choice's).
    qloss: Vec<[[f64; 3]; 4]>,
    chosen: [usize; 4],
}

impl Choice {
    /// A choice among `n` predictors.
    pub fn new(n: usize) -> Choice {
        Choice {
            scored: vec![[false; 4]; n],
            qloss: vec![[[0.0; 3]; 4]; n],
            chosen: [0; 4],
        }
    }

    /// Predictor `p`'s band `b` for target `t` scored against the outcome `y`, into its
    /// moving average (`decay`: the weight the average keeps).
    pub fn score(&mut self, p: usize, t: usize, b: &Band, y: f64, decay: f64) {
        let q = quantile_losses(b, y);
        let (Some(scored), Some(qa)) = (
            self.scored.get_mut(p).and_then(|s| s.get_mut(t)),
            self.qloss.get_mut(p).and_then(|l| l.get_mut(t)),
        ) else {
            return;
        };
        if *scored {
            for (x, v) in qa.iter_mut().zip(q) {
                *x = decay * *x + (1.0 - decay) * v;
            }
        } else {
            *scored = true;
            *qa = q;
        }
    }

    /// Predictor `p`'s moving average loss of target `t`'s band (the mean over its
    /// quantiles); `None` before the first score.
    fn loss(&self, p: usize, t: usize) -> Option<f64> {
        let q = &self.qloss[p][t];
        self.scored[p][t].then(|| (q[0] + q[1] + q[2]) / 3.0)
    }

    /// The blend's weights of target `t`'s quantile `q` over the predictors whose forecast
    /// is `usable`, summing to 1 (the primary's alone when none was scored): equal among
    /// those whose recent loss of it is within `within` × the lowest, falling off as
    /// `(within · lowest / loss)^`[`FALL_OFF`] beyond.
    fn weights(&self, t: usize, q: usize, within: f64, usable: &[bool], out: &mut Vec<f64>) {
        out.clear();
        let scored = |p: usize| usable[p] && self.scored[p][t];
        let losses = || {
            (0..self.qloss.len())
                .filter(|&p| scored(p))
                .map(|p| self.qloss[p][t][q])
        };
        // Losses of zero (a predictor exactly right so far) count as a millionth of the
        // largest.
        let floor = (losses().fold(0.0f64, f64::max) * 1e-6).max(f64::MIN_POSITIVE);
        let lowest = losses().fold(f64::INFINITY, |a, l| a.min(l.max(floor)));
        out.extend((0..self.qloss.len()).map(|p| {
            if scored(p) {
                (within * lowest / self.qloss[p][t][q].max(floor))
                    .min(1.0)
                    .powi(FALL_OFF)
            } else {
                0.0
            }
        }));
        let sum: f64 = out.iter().sum();
        if sum > 0.0 && sum.is_finite() {
            out.iter_mut().for_each(|w| *w /= sum);
        } else {
            out.iter_mut().for_each(|w| *w = 0.0);
            out[0] = 1.0;
        }
    }

    /// Each target switches to the predictor of the lowest loss if it is below [`SWITCH`] ×
    /// the loss of the one in use.
    pub fn switch(&mut self) {
        self.switch_below(SWITCH);
    }

    /// Each target switches to the predictor of the lowest loss if it is below `factor` ×
    /// the loss of the one in use.
    pub fn switch_below(&mut self, factor: f64) {
        for i in 0..4 {
            let cur = self.loss(self.chosen[i], i).unwrap_or(f64::INFINITY);
            let best = (0..self.qloss.len())
                .filter_map(|p| self.loss(p, i).map(|l| (p, l)))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((p, l)) = best
                && p != self.chosen[i]
                && l < factor * cur
            {
                self.chosen[i] = p;
            }
        }
    }

    /// The predictor in use for each target.
    pub fn chosen(&self) -> [usize; 4] {
        self.chosen
    }
}

struct Track {
    seen: u64,
    /// Forecasts made at the last `STEPS` buckets, by their bucket's end.
    pending: VecDeque<(u64, Made)>,
    choice: Choice,
    scored: u32,
}

/// Makes the candidates for a primary's horizon and name (made again when another
/// primary swaps in).
pub type MakeCandidates = Box<dyn Fn(usize, &str) -> Vec<Box<dyn Predictor>> + Send>;

pub struct Select {
    /// The primary first, then the candidates.
    all: Vec<Box<dyn Predictor>>,
    /// The candidates' forecasts of the last tick, their rooms reused by the next.
    outs: Vec<Vec<Forecast>>,
    tracks: FastMap<WorkloadId, Track>,
    tick: u64,
    name: String,
    make: Option<MakeCandidates>,
    combine: Combine,
    within: f64,
}

impl Select {
    pub fn new(primary: Box<dyn Predictor>, candidates: Vec<Box<dyn Predictor>>) -> Select {
        let mut all = vec![primary];
        all.extend(candidates);
        let name = all[0].name().to_string();
        Select {
            outs: Vec::new(),
            all,
            tracks: FastMap::default(),
            tick: 0,
            name,
            make: None,
            combine: Combine::Select,
            within: 1.0,
        }
    }

    /// Combining the forecasts as `combine` says (`within`: the blend's factor).
    pub fn combining(mut self, combine: Combine, within: f64) -> Select {
        (self.combine, self.within) = (combine, within);
        self
    }

    /// Candidates made by `make` for the primary, and made again whenever another primary
    /// replaces it.
    pub fn with_make(primary: Box<dyn Predictor>, make: MakeCandidates) -> Select {
        let candidates = make(primary.horizon(), primary.name());
        let mut s = Select::new(primary, candidates);
        s.make = Some(make);
        s
    }

    /// The same, named `name` (the primary's name otherwise).
    pub fn named(mut self, name: String) -> Select {
        self.name = name;
        self
    }

    /// The predictor each target of `w` uses now (names), if `w` is tracked.
    pub fn chosen(&self, w: &WorkloadId) -> Option<[&str; 4]> {
        let t = self.tracks.get(w)?;
        Some(t.choice.chosen.map(|i| self.all[i].name()))
    }
}

/// `f` (the primary's forecast) made the blend of itself and `others` (the candidates',
/// by predictor; `None` where one has none of this workload): per target and quantile,
/// each predictor's value at every step weighted by [`Choice::weights`], the three put in
/// order again. Named after the predictor of the largest weight on CPU's and memory's p50.
fn blend(
    f: &mut Forecast,
    others: &[Option<&Forecast>],
    choice: &Choice,
    within: f64,
    scratch: &mut Scratch,
) {
    let n = others.len();
    let Scratch { usable, w } = scratch;
    let mut top = [0usize; 2];
    for target in Target::ALL {
        let i = target as usize;
        let len = f.bands[i].len();
        usable.clear();
        usable.extend((0..n).map(|p| p == 0 || others[p].is_some_and(|o| o.bands[i].len() == len)));
        for (q, wq) in w.iter_mut().enumerate() {
            choice.weights(i, q, within, usable, wq);
        }
        if i < 2 {
            // The first of the largest: the primary's name while all weigh the same.
            top[i] = (1..n).fold(0, |best, p| if w[1][p] > w[1][best] { p } else { best });
        }
        for h in 0..len {
            let mut m = [0.0f64; 3];
            for p in 0..n {
                let b = match (p, others[p]) {
                    (0, _) => f.bands[i][h],
                    (_, Some(o)) if usable[p] => o.bands[i][h],
                    _ => continue,
                };
                let v = [b.p10, b.p50, b.p90];
                for q in 0..3 {
                    m[q] += w[q][p] * v[q];
                }
            }
            let [mut lo, mut mid, mut hi] = m;
            if lo > mid {
                std::mem::swap(&mut lo, &mut mid);
            }
            if mid > hi {
                std::mem::swap(&mut mid, &mut hi);
            }
            if lo > mid {
                std::mem::swap(&mut lo, &mut mid);
            }
            let b = &mut f.bands[i][h];
            (b.p10, b.p50, b.p90) = (lo, mid, hi);
        }
    }
    let [cpu, mem] = top;
    if cpu != 0 || mem != 0 {
        let name = |p: usize| match others[p] {
            Some(o) if p != 0 => o.predictor.clone(),
            _ => f.predictor.clone(),
        };
        f.predictor = if cpu == mem {
            name(cpu)
        } else {
            format!("cpu {}, memory {}", name(cpu), name(mem))
        };
    }
}

/// Room the blend reuses from workload to workload.
#[derive(Default)]
struct Scratch {
    usable: Vec<bool>,
    /// Per quantile, the weights.
    w: [Vec<f64>; 3],
}

/// Pinball loss of each of a band's three quantiles against `y`.
fn quantile_losses(b: &Band, y: f64) -> [f64; 3] {
    let l = |q: f64, p: f64| {
        let d = y - p;
        (q * d).max((q - 1.0) * d)
    };
    [l(0.1, b.p10), l(0.5, b.p50), l(0.9, b.p90)]
}

/// Mean pinball loss of a band's three quantiles against `y`.
#[cfg(test)]
fn pinball(b: &Band, y: f64) -> f64 {
    quantile_losses(b, y).iter().sum::<f64>() / 3.0
}

impl Predictor for Select {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> PredictorKind {
        self.all[0].kind()
    }
    fn horizon(&self) -> usize {
        self.all[0].horizon()
    }
    fn history(&self) -> usize {
        self.all.iter().map(|p| p.history()).max().unwrap_or(1)
    }
    fn model_stats(&self) -> Option<&ModelStats> {
        self.all[0].model_stats()
    }
    /// Another primary (a model loaded or reloaded); what was scored starts over.
    fn replace_primary(&mut self, p: Box<dyn Predictor>) -> Option<Box<dyn Predictor>> {
        self.name = p.name().to_string();
        if let Some(make) = &self.make {
            self.all.truncate(1);
            self.all.extend(make(p.horizon(), p.name()));
        }
        self.all[0] = p;
        self.tracks.clear();
        None
    }

    fn forecast(&mut self, b: &Batch<'_>) -> Vec<Forecast> {
        // The primary's forecasts are moved into the result, a candidate's bands copied in.
        let mut primaries: Vec<Option<Forecast>> =
            self.all[0].forecast(b).into_iter().map(Some).collect();
        self.outs.resize_with(self.all.len(), Vec::new);
        for (p, out) in self.all.iter_mut().zip(&mut self.outs).skip(1) {
            p.forecast_into(b, out);
        }
        let outs = &self.outs;
        self.tick += 1;
        let (tick, n) = (self.tick, self.all.len());
        let interval = (b.interval_ms as u64).max(1);
        let mut result = Vec::with_capacity(b.series.len());
        let mut weights = Scratch::default();
        for (r, s) in b.series.iter().enumerate() {
            let Some(primary) = primaries.get(r).and_then(Option::as_ref) else {
                continue;
            };
            let t = match self.tracks.get_mut(s.workload) {
                Some(t) => t,
                None => self.tracks.entry(s.workload.clone()).or_insert(Track {
                    seen: tick,
                    pending: VecDeque::with_capacity(STEPS + 1),
                    choice: Choice::new(n),
                    scored: 0,
                }),
            };
            t.seen = tick;
            // Score the forecasts whose outcome is this bucket.
            if let Some(newest) = s.buckets.last().filter(|x| x.end_ms == b.now_ms) {
                let mut any = false;
                for (made, bands) in &t.pending {
                    let steps = b.now_ms.saturating_sub(*made) / interval;
                    if steps == 0 || steps as usize > STEPS || made + steps * interval != b.now_ms {
                        continue;
                    }
                    any = true;
                    for (p, per_target) in bands.iter().enumerate() {
                        for target in Target::ALL {
                            let i = target as usize;
                            let b = &per_target[i][steps as usize - 1];
                            t.choice.score(p, i, b, newest.target(target), DECAY);
                        }
                    }
                }
                t.scored += any as u32;
            }
            // A forecast scored for the last time leaves its room to this one's.
            let mut made = Made::new();
            while t
                .pending
                .front()
                .is_some_and(|(m, _)| *m + STEPS as u64 * interval <= b.now_ms)
            {
                made = t.pending.pop_front().map(|(_, m)| m).unwrap_or_default();
            }
            made.clear();
            made.extend((0..n).map(|p| {
                let f = if p == 0 {
                    Some(primary)
                } else {
                    outs[p].get(r).filter(|f| f.workload == *s.workload)
                };
                Target::ALL.map(|target| {
                    let bands = f.map(|f| f.of(target)).unwrap_or(&[]);
                    std::array::from_fn(|h| bands.get(h).copied().unwrap_or_default())
                })
            }));
            t.pending.push_back((b.now_ms, made));
            // Switch where another predictor has been clearly better.
            if t.scored >= MIN_SCORED {
                t.choice.switch();
            } else if t.scored >= EARLY_SCORED {
                t.choice.switch_below(EARLY_SWITCH);
            }
            let Some(mut f) = primaries[r].take() else {
                continue;
            };
            if self.combine == Combine::Blend {
                if t.scored >= 1 {
                    let others: Vec<Option<&Forecast>> = (0..n)
                        .map(|p| {
                            (p > 0)
                                .then(|| outs[p].get(r).filter(|o| o.workload == *s.workload))
                                .flatten()
                        })
                        .collect();
                    blend(&mut f, &others, &t.choice, self.within, &mut weights);
                }
                result.push(f);
                continue;
            }
            for target in Target::ALL {
                let i = target as usize;
                let p = t.choice.chosen[i];
                // Bands of another length (a candidate of another horizon) never mix in.
                if p != 0
                    && let Some(o) = outs[p].get(r).filter(|o| o.workload == *s.workload)
                    && o.bands[i].len() == f.bands[i].len()
                {
                    f.bands[i].copy_from_slice(&o.bands[i]);
                }
            }
            let (cpu, mem) = (
                t.choice.chosen[Target::Cpu as usize],
                t.choice.chosen[Target::Memory as usize],
            );
            if cpu != 0 || mem != 0 {
                let primary_name = f.predictor.clone();
                let name = |p: usize| {
                    if p == 0 {
                        primary_name.as_str()
                    } else {
                        outs[p].get(r).map_or("", |o| o.predictor.as_str())
                    }
                };
                f.predictor = if cpu == mem {
                    name(cpu).to_string()
                } else {
                    format!("cpu {}, memory {}", name(cpu), name(mem))
                };
            }
            result.push(f);
        }
        self.tracks.retain(|_, t| t.seen == tick);
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::predict::{
        Bucket, PredictConfig, Series,
        baseline::{self, SeasonalConfig, SeasonalNaive},
        features::N_FEATURES,
    };

    /// A batch step: `high` for one bucket in every `period`, else `low`.
    fn cpu_at(k: usize, period: usize) -> f64 {
        if k % period == period - 1 { 1.5 } else { 0.2 }
    }

    fn bucket(k: usize, period: usize) -> Bucket {
        let mut f = [0.0f32; N_FEATURES];
        f[0] = cpu_at(k, period) as f32;
        f[1] = 1e8;
        f[N_FEATURES - 1] = 1.0;
        Bucket {
            end_ms: (k as u64 + 1) * 5000,
            features: f,
        }
    }

    /// Drives `p` over `n` buckets of one workload, handing each bucket's forecast to
    /// `each`.
    fn drive(
        p: &mut dyn Predictor,
        n: usize,
        period: usize,
        mut each: impl FnMut(usize, Forecast),
    ) {
        let id = WorkloadId("exe:steps".into());
        let mut bs: Vec<Bucket> = Vec::new();
        for k in 0..n {
            bs.push(bucket(k, period));
            let keep = bs.len().saturating_sub(24);
            let b = Batch {
                now_ms: bs.last().unwrap().end_ms,
                interval_ms: 5000,
                series: vec![Series {
                    workload: &id,
                    name: "steps",
                    buckets: &bs[keep..],
                }],
            };
            each(k, p.forecast(&b).remove(0));
        }
    }

    /// The CPU p90 forecast one step ahead of each bucket, with the predictor it came from.
    fn run(p: &mut dyn Predictor, n: usize, period: usize) -> Vec<(f64, String)> {
        let mut out = Vec::new();
        drive(p, n, period, |_, f| {
            out.push((f.of(Target::Cpu)[0].p90, f.predictor.clone()))
        });
        out
    }

    fn primary() -> Box<dyn Predictor> {
        baseline::by_name("autopilot", &PredictConfig::default()).unwrap()
    }

    fn seasonal() -> Box<dyn Predictor> {
        Box::new(SeasonalNaive::new(6, &SeasonalConfig { max_period: 24 }))
    }

    #[test]
    fn a_batch_step_the_primary_misses_is_forecast_ahead_by_the_candidate_that_sees_it() {
        let period = 12;
        let mut s = Select::new(primary(), vec![seasonal()]);
        let out = run(&mut s, 12 * period, period);
        // Late in the run, the bucket before each step: the step is reserved ahead.
        let mut ahead = 0;
        let mut steps = 0;
        for k in (8 * period..12 * period - 1).filter(|k| (k + 1) % period == period - 1) {
            steps += 1;
            let (p90, who) = &out[k];
            if *p90 >= 1.4 {
                ahead += 1;
            }
            assert_eq!(who, "seasonal", "bucket {k}");
        }
        assert_eq!(ahead, steps, "{out:?}");
        // Between steps nothing is held back for them (the primary alone, whose
        // percentile covers the step, reserves it all the time).
        let quiet = 11 * period - 6;
        assert!(out[quiet].0 < 0.5, "{:?}", out[quiet]);
        let mut alone = primary();
        let out = run(alone.as_mut(), 12 * period, period);
        assert!(out[quiet].0 >= 1.4, "{:?}", out[quiet]);
    }

    #[test]
    fn blended_a_batch_step_is_forecast_ahead_by_the_candidate_far_ahead() {
        // The primary's loss is over ten times the seasonal candidate's: the blend is the
        // candidate's alone.
        let period = 12;
        let mut s = Select::new(primary(), vec![seasonal()]).combining(Combine::Blend, 10.0);
        let out = run(&mut s, 12 * period, period);
        for k in (8 * period..12 * period - 1).filter(|k| (k + 1) % period == period - 1) {
            let (p90, who) = &out[k];
            assert!(*p90 >= 1.4, "bucket {k}: {out:?}");
            assert_eq!(who, "seasonal", "bucket {k}");
        }
        assert!(out[11 * period - 6].0 < 0.5, "{:?}", out[11 * period - 6]);
    }

    fn band(p10: f64, p50: f64, p90: f64) -> Band {
        Band { p10, p50, p90 }
    }

    fn forecast(name: &str, b: Band) -> Forecast {
        Forecast {
            workload: WorkloadId("exe:w".into()),
            made_ms: 0,
            interval_ms: 5000,
            predictor: name.into(),
            bands: std::array::from_fn(|_| vec![b; 2]),
        }
    }

    /// A choice among 3 predictors whose losses of every target's quantiles are `loss`.
    fn choice_with(loss: [[f64; 3]; 3]) -> Choice {
        let mut c = Choice::new(3);
        for (p, l) in loss.iter().enumerate() {
            c.scored[p] = [true; 4];
            c.qloss[p] = [*l; 4];
        }
        c
    }

    #[test]
    fn a_blend_is_the_mean_of_the_predictors_near_the_best_and_leaves_out_those_far_behind() {
        let a = forecast("model", band(1.0, 2.0, 3.0));
        let b = forecast("ewma", band(2.0, 3.0, 6.0));
        let c = forecast("seasonal", band(9.0, 9.0, 9.0));
        let others = [None, Some(&b), Some(&c)];
        let mut w = Scratch::default();
        // `a` blended with the others, their losses `loss`, within `within`.
        let mut blended = |loss: [[f64; 3]; 3], within: f64| {
            let mut f = a.clone();
            blend(&mut f, &others, &choice_with(loss), within, &mut w);
            f
        };
        // Within the factor: an equal mean of all three, per quantile.
        let f = blended([[1.0; 3], [2.0; 3], [5.0; 3]], 10.0);
        assert_eq!(f.predictor, "model", "all weigh the same");
        for t in Target::ALL {
            for x in f.of(t) {
                assert!(
                    (x.p10 - 4.0).abs() < 1e-9 && (x.p50 - 14.0 / 3.0).abs() < 1e-9,
                    "{x:?}"
                );
                assert!((x.p90 - 6.0).abs() < 1e-9, "{x:?}");
            }
        }
        // The third's losses 100 times the best: the mean of the other two.
        let f = blended([[1.0; 3], [2.0; 3], [100.0; 3]], 10.0);
        let x = f.of(Target::Cpu)[1];
        assert!(
            (x.p10 - 1.5).abs() < 1e-6 && (x.p50 - 2.5).abs() < 1e-6,
            "{x:?}"
        );
        assert!((x.p90 - 4.5).abs() < 1e-6, "{x:?}");
        // Per quantile: p90 from the third alone (the others' p90 far behind), p10 and p50
        // from the first alone; still in order.
        let loss = [
            [1.0, 1.0, 500.0],
            [100.0, 100.0, 500.0],
            [100.0, 100.0, 1.0],
        ];
        let f = blended(loss, 10.0);
        let x = f.of(Target::Memory)[0];
        assert!(
            (x.p10 - 1.0).abs() < 1e-6 && (x.p50 - 2.0).abs() < 1e-6,
            "{x:?}"
        );
        assert!((x.p90 - 9.0).abs() < 1e-6, "{x:?}");
        assert_eq!(f.predictor, "model");
        // Quantiles that cross in the blend are put in order.
        let loss = [
            [100.0, 1.0, 100.0],
            [100.0, 100.0, 100.0],
            [1.0, 100.0, 1.0],
        ];
        let f = blended(loss, 10.0);
        let x = f.of(Target::Cpu)[0];
        let near = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(
            near(x.p10, 2.0) && near(x.p50, 9.0) && near(x.p90, 9.0),
            "{x:?}"
        );
        let loss = [
            [100.0, 100.0, 1.0],
            [100.0, 1.0, 100.0],
            [1.0, 100.0, 100.0],
        ];
        let g = blended(loss, 10.0);
        let x = g.of(Target::Cpu)[0];
        assert!(
            near(x.p10, 3.0) && near(x.p50, 3.0) && near(x.p90, 9.0),
            "{x:?}"
        );
        // Named after the largest weight on p50.
        assert_eq!(f.predictor, "model");
        let f = blended([[9.0; 3], [1.0; 3], [50.0; 3]], 2.0);
        assert_eq!(f.predictor, "ewma");
    }

    #[test]
    fn a_candidate_that_is_the_primary_is_left_out() {
        let cfg = PredictConfig::default();
        assert!(cfg.candidates.contains(&cfg.fallback));
        let s = crate::predict::select_with_candidates(&cfg, primary())
            .ok()
            .unwrap();
        let names: Vec<&str> = s.all.iter().map(|p| p.name()).collect();
        assert_eq!(names, ["autopilot", "seasonal", "ewma"]);
    }

    #[test]
    fn a_primary_of_another_horizon_gets_candidates_of_its_horizon() {
        let period = 12;
        let make: MakeCandidates = Box::new(|h, _| {
            vec![Box::new(SeasonalNaive::new(h, &SeasonalConfig { max_period: 24 })) as _]
        });
        let mut s = Select::with_make(primary(), make);
        assert_eq!(s.all[1].horizon(), s.all[0].horizon());
        let longer = PredictConfig {
            horizon: 12,
            ..Default::default()
        };
        assert_ne!(longer.horizon, s.horizon());
        s.replace_primary(baseline::by_name("autopilot", &longer).unwrap());
        assert_eq!(s.all[1].horizon(), 12);
        // The seasonal candidate takes CPU over (see above); every target's bands keep
        // the primary's horizon.
        let mut switched = false;
        drive(&mut s, 12 * period, period, |k, f| {
            switched |= f.predictor == "seasonal";
            for t in Target::ALL {
                assert_eq!(f.of(t).len(), 12, "bucket {k}, {t:?}: {f:?}");
            }
        });
        assert!(switched);
    }

    /// Steady CPU and memory (before the first batch step): the primary's band (peak +
    /// margin) costs far more than EWMA's from the first outcomes, and EWMA takes over
    /// after [`EARLY_SCORED`] of them, not [`MIN_SCORED`].
    #[test]
    fn a_candidate_far_ahead_takes_over_early() {
        let period = 12;
        let ewma = baseline::by_name("ewma", &PredictConfig::default()).unwrap();
        let mut s = Select::new(primary(), vec![ewma]);
        let mut names = Vec::new();
        drive(&mut s, MIN_SCORED as usize, period, |_, f| {
            names.push(f.predictor.clone())
        });
        // Scored from the second bucket on: the third score comes with the fourth bucket.
        let first = names.iter().position(|n| n == "ewma");
        assert_eq!(first, Some(EARLY_SCORED as usize), "{names:?}");
    }

    #[test]
    fn no_switch_without_a_clear_margin() {
        // The same predictor as primary and candidate: equal losses, no switch.
        let period = 12;
        let mut s = Select::new(seasonal(), vec![seasonal()]);
        let out = run(&mut s, 10 * period, period);
        assert!(out.iter().all(|(_, who)| who == "seasonal"), "{out:?}");
        let id = WorkloadId("exe:steps".into());
        assert_eq!(s.tracks[&id].choice.chosen, [0; 4]);
        assert!(s.tracks[&id].scored >= MIN_SCORED);
    }

    #[test]
    fn losses_are_the_pinball_of_the_three_quantiles() {
        let b = Band {
            p10: 1.0,
            p50: 2.0,
            p90: 3.0,
        };
        // y = 2: 0.1·1 + 0 + 0.1·1 (p90 over by 1: (0.9 − 1)·(−1)).
        assert!((pinball(&b, 2.0) - (0.1 + 0.0 + 0.1) / 3.0).abs() < 1e-12);
        // y = 4: 0.1·3 + 0.5·2 + 0.9·1.
        assert!((pinball(&b, 4.0) - (0.3 + 1.0 + 0.9) / 3.0).abs() < 1e-12);
    }
}
