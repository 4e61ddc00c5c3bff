//! Per-request predictions at the exec: what a new request (one exec'd image until it
//! exits or execs again) will need, from what is known when it starts.
//!
//! - `profile`: the empirical p10/p50/p90 of the executable's own past runs in the
//!   profile store (numpy's linear interpolation), once it has [`MIN_RUNS`].
//! - `prior`: an executable never seen (or seen too little) borrows from its kin, in this
//!   order: executables of the same file name (another build of the same program), those
//!   run by the same parent, then every executable on the node (the node's class). Each
//!   pool is the quantiles of the per-executable medians.
//!
//! The ONNX request model, when shipped, runs over the contract's feature row (made by the
//! request featurizer) and falls back to these for a row it cannot forecast.

use std::collections::HashMap;

use super::{
    Band, LEVELS, ModelStats, PredictorKind, RequestPrediction,
    onnx::{LoadError, Model, sort_crossed},
    profiles::{MEASURED_RSS, OUTCOMES, PEAK_RSS, ProfileStore, quantiles},
    schema::ModelKind,
    select::Choice,
};
use crate::{FastMap, aggregate::WorkloadId};

/// Runs of its own an executable needs before its profile is used alone.
pub const MIN_RUNS: usize = 3;
/// Profiles a pool needs to be used.
const MIN_POOL: usize = 2;
/// A request model's quantiles are held within this factor of its executable's profile
/// band: from p10 / `HOLD` to p90 × `HOLD`, that band first stretched by as much as this
/// exec's input is smaller than the past runs' p10 input or larger than their p90 (linear
/// in the input's size). On executables it never trained on, a model can extrapolate
/// far: a first `xz` run predicted at 1.3 GB against a profile of 50 MB. Chosen on the
/// training recordings with executables left out of training (models/README.md);
/// training's guide holds its predictions the same way (`HOLD` in
/// models/umbra_train/request.py); change both together.
pub const HOLD: f64 = 3.0;

/// An exec, as the request predictors see it.
#[derive(Clone, Copy, Debug)]
pub struct Exec<'a> {
    pub tgid: u32,
    pub exec_ns: u64,
    /// The executable's key (`exe:sha256:…`).
    pub key: &'a str,
    /// Its file name, and its parent's.
    pub name: &'a str,
    pub parent: &'a str,
    /// Bytes of the input files named in argv.
    pub input_bytes: u64,
}

/// A per-request predictor.
pub trait RequestPredictor: Send {
    fn name(&self) -> &str;
    fn kind(&self) -> PredictorKind;
    fn predict(&mut self, store: &ProfileStore, e: &Exec<'_>) -> RequestPrediction;
}

fn prediction(e: &Exec<'_>, q: [[f64; 3]; 4], source: String) -> RequestPrediction {
    let b = |i: usize| {
        let mut v = q[i].map(|x| if x.is_finite() { x.max(0.0) } else { 0.0 });
        v.sort_unstable_by(f64::total_cmp);
        Band {
            p10: v[0],
            p50: v[1],
            p90: v[2],
        }
    };
    RequestPrediction {
        tgid: e.tgid,
        exec_ns: e.exec_ns,
        workload: WorkloadId(e.key.to_string()),
        cpu_seconds: b(0),
        peak_rss_bytes: b(1),
        duration_seconds: b(2),
        io_bytes: b(3),
        source,
        record: Vec::new(),
    }
}

/// Pooled quantiles of kin: per name, per parent, and for the node.
#[derive(Default)]
struct Priors {
    by_name: HashMap<String, [[f64; 3]; 4]>,
    by_parent: HashMap<String, [[f64; 3]; 4]>,
    node: Option<[[f64; 3]; 4]>,
    /// Profiles in the store when built.
    built_from: usize,
    built_runs: u64,
}

/// Quantiles at [`LEVELS`] of each outcome's per-profile medians.
fn pool(medians: &mut [Vec<f64>; 4]) -> [[f64; 3]; 4] {
    let mut out = [[0.0; 3]; 4];
    for (o, m) in out.iter_mut().zip(medians.iter_mut()) {
        o.copy_from_slice(&quantiles(m, &LEVELS));
    }
    out
}

impl Priors {
    fn build(store: &ProfileStore) -> Priors {
        let mut by_name: HashMap<&str, [Vec<f64>; 4]> = HashMap::new();
        let mut by_parent: HashMap<&str, [Vec<f64>; 4]> = HashMap::new();
        let mut node: [Vec<f64>; 4] = Default::default();
        let mut runs = 0;
        for (_, p) in store.iter() {
            if p.runs.is_empty() {
                continue;
            }
            runs += p.total_runs;
            let b = p.bands();
            for i in 0..4 {
                let m = b[i][1];
                by_name.entry(&p.name).or_default()[i].push(m);
                by_parent.entry(&p.parent).or_default()[i].push(m);
                node[i].push(m);
            }
        }
        let keep = |m: HashMap<&str, [Vec<f64>; 4]>| {
            m.into_iter()
                .filter(|(_, v)| v[0].len() >= MIN_POOL)
                .map(|(k, mut v)| (k.to_string(), pool(&mut v)))
                .collect()
        };
        let n = node[0].len();
        Priors {
            by_name: keep(by_name),
            by_parent: keep(by_parent),
            node: (n >= MIN_POOL).then(|| pool(&mut node)),
            built_from: store.len(),
            built_runs: runs,
        }
    }
}

/// Profile-only predictions, with priors for executables without enough runs.
#[derive(Default)]
pub struct ProfileBaseline {
    priors: Priors,
    /// Runs recorded since the priors were built (they are rebuilt every so often).
    pub since_build: u64,
}

/// Runs recorded between rebuilds of the priors.
const REBUILD_EVERY: u64 = 256;

impl ProfileBaseline {
    pub fn new() -> Self {
        ProfileBaseline::default()
    }

    /// Tells the baseline a run was recorded (the priors are rebuilt now and then).
    pub fn recorded(&mut self) {
        self.since_build += 1;
    }

    fn refresh(&mut self, store: &ProfileStore) {
        if self.since_build >= REBUILD_EVERY
            || (self.priors.built_from == 0 && !store.is_empty())
            || (self.priors.built_runs == 0 && self.since_build > 0)
        {
            self.priors = Priors::build(store);
            self.since_build = 0;
        }
    }
}

impl RequestPredictor for ProfileBaseline {
    fn name(&self) -> &str {
        "profile"
    }
    fn kind(&self) -> PredictorKind {
        PredictorKind::Baseline
    }
    fn predict(&mut self, store: &ProfileStore, e: &Exec<'_>) -> RequestPrediction {
        self.refresh(store);
        if let Some(p) = store.get(e.key)
            && p.runs.len() >= MIN_RUNS
        {
            return prediction(e, p.bands(), "profile".into());
        }
        let own = store.get(e.key).filter(|p| !p.runs.is_empty());
        let kin = self
            .priors
            .by_name
            .get(e.name)
            .map(|q| (q, "prior:name"))
            .or_else(|| {
                self.priors
                    .by_parent
                    .get(e.parent)
                    .map(|q| (q, "prior:parent"))
            })
            .or_else(|| self.priors.node.as_ref().map(|q| (q, "prior:node")));
        match (own, kin) {
            // A run or two of its own: its median, the band of its kin around it.
            (Some(p), Some((q, src))) => {
                let b = p.bands();
                let mut out = [[0.0; 3]; 4];
                for i in 0..4 {
                    let (lo, mid, hi) = (q[i][0], q[i][1].max(1e-12), q[i][2]);
                    out[i] = [b[i][1] * lo / mid, b[i][1], b[i][1] * hi / mid];
                }
                prediction(e, out, format!("profile+{src}"))
            }
            (Some(p), None) => prediction(e, p.bands(), "profile".into()),
            (None, Some((q, src))) => prediction(e, *q, src.into()),
            (None, None) => prediction(e, [[0.0; 3]; 4], "none".into()),
        }
    }
}

/// The ONNX per-request model. The request featurizer gives each exec's feature row in
/// its own vocabulary order; the model's features are bound to positions in it once.
pub struct OnnxRequest {
    name: String,
    model: Model,
    /// Position in the featurizer's row of each schema feature.
    bound: Vec<usize>,
    levels: [usize; 3],
    /// Positions in the row of what [`HOLD`] needs, when the vocabulary has them all.
    hold: Option<HoldAt>,
    fallback: ProfileBaseline,
    x: Vec<f32>,
    out: Vec<f32>,
    pub stats: ModelStats,
}

impl OnnxRequest {
    /// A request model over rows laid out as `vocabulary` (the featurizer's names).
    pub fn new(model: Model, vocabulary: &[&str]) -> Result<OnnxRequest, LoadError> {
        let s = &model.schema;
        let unusable = |why: String| LoadError::Unusable {
            origin: model.origin.clone(),
            why,
        };
        if s.kind != ModelKind::Request {
            return Err(LoadError::Kind {
                origin: model.origin.clone(),
                found: s.kind.name(),
                wanted: "request",
            });
        }
        let bound = s
            .features
            .iter()
            .map(|f| {
                vocabulary.iter().position(|v| *v == f.name).ok_or_else(|| {
                    unusable(format!(
                        "feature {:?} is not computed by this build",
                        f.name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let level = |q: f64| {
            s.quantile_index(q)
                .ok_or_else(|| unusable(format!("no quantile {q}")))
        };
        let levels = [level(LEVELS[0])?, level(LEVELS[1])?, level(LEVELS[2])?];
        Ok(OnnxRequest {
            name: format!("onnx:{}", s.model_version),
            bound,
            levels,
            hold: HoldAt::of(vocabulary),
            fallback: ProfileBaseline::new(),
            x: Vec::new(),
            out: Vec::new(),
            stats: ModelStats::default(),
            model,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Tells the fallback a run was recorded.
    pub fn recorded(&mut self) {
        self.fallback.recorded();
    }

    /// The prediction for `e` from its feature `row` (the featurizer's vocabulary order);
    /// the profile baseline when the row or the model's output is not finite.
    pub fn predict_row(
        &mut self,
        store: &ProfileStore,
        e: &Exec<'_>,
        row: &[f64],
    ) -> RequestPrediction {
        self.stats.rows += 1;
        self.stats.batches += 1;
        let feats = &self.model.schema.features;
        self.x.clear();
        let mut finite = true;
        for (&i, f) in self.bound.iter().zip(feats) {
            let v = row.get(i).copied().unwrap_or(f64::NAN);
            finite &= v.is_finite();
            self.x.push(f.forward(v) as f32);
        }
        let mut out = std::mem::take(&mut self.out);
        let ran = finite && {
            let x = std::mem::take(&mut self.x);
            let r = self.model.run(&x, 1, &mut out);
            self.x = x;
            match r {
                Ok(()) => true,
                Err(err) => {
                    self.stats.run_errors += 1;
                    self.stats.last_error = Some(err);
                    false
                }
            }
        };
        let q_n = self.model.schema.quantiles.len();
        let result = if ran && out.iter().all(|v| v.is_finite()) {
            let mut q = [[0.0; 3]; 4];
            for (t, qt) in q.iter_mut().enumerate() {
                let sc = &self.model.schema.targets[t];
                let qs = &mut out[t * q_n..(t + 1) * q_n];
                if sort_crossed(qs) {
                    self.stats.crossed += 1;
                }
                *qt = self.levels.map(|i| sc.inverse(qs[i] as f64));
            }
            if let Some(h) = &self.hold {
                h.hold(row, &mut q);
            }
            Some(prediction(e, q, "model".into()))
        } else {
            None
        };
        self.out = out;
        result.unwrap_or_else(|| {
            self.stats.fallback_rows += 1;
            self.fallback.predict(store, e)
        })
    }
}

/// Where a feature row holds the profile's band of each outcome and the input sizes
/// ([`HOLD`]).
struct HoldAt {
    band: [[usize; 2]; 4],
    input: usize,
    past_input: [usize; 2],
}

impl HoldAt {
    fn of(vocabulary: &[&str]) -> Option<HoldAt> {
        let at = |n: &str| vocabulary.iter().position(|v| *v == n);
        let band = |t: &str| {
            Some([
                at(&format!("profile_{t}_p10"))?,
                at(&format!("profile_{t}_p90"))?,
            ])
        };
        Some(HoldAt {
            band: [
                band(OUTCOMES[0])?,
                band(OUTCOMES[1])?,
                band(OUTCOMES[2])?,
                band(OUTCOMES[3])?,
            ],
            input: at("input_bytes_total")?,
            past_input: [
                at("profile_input_bytes_p10")?,
                at("profile_input_bytes_p90")?,
            ],
        })
    }

    /// Holds each outcome's quantiles `q` within [`HOLD`] of the profile's band in `row`;
    /// an outcome whose profile has no p90 above zero (nothing measured) is left as it is.
    fn hold(&self, row: &[f64], q: &mut [[f64; 3]; 4]) {
        let v = |i: usize| row.get(i).copied().filter(|v| v.is_finite()).unwrap_or(0.0);
        let (input, [past_lo, past_hi]) = (v(self.input), self.past_input.map(v));
        let (below, above) = if input > 0.0 && past_hi > 0.0 {
            (
                ((input + 1.0) / (past_lo + 1.0)).min(1.0),
                ((input + 1.0) / (past_hi + 1.0)).max(1.0),
            )
        } else {
            (1.0, 1.0)
        };
        for (qt, [p10, p90]) in q.iter_mut().zip(self.band) {
            let (p10, p90) = (v(p10), v(p90));
            if p90 <= 0.0 {
                continue;
            }
            let (lo, hi) = (p10 / HOLD * below, p90 * HOLD * above);
            for x in qt.iter_mut() {
                // Not `clamp`: it panics on a band upside down (a corrupt row).
                *x = x.max(lo).min(hi);
            }
        }
    }
}

/// Weight a [`Guard`]'s moving averages keep per scored run (half-life ≈ 7 runs).
const GUARD_DECAY: f64 = 0.9;
/// Runs of an executable scored before its [`Guard`] may switch.
pub const GUARD_MIN_SCORED: u32 = 8;

/// Per executable and outcome, whether the request model or the profile of past runs has
/// predicted its recent runs better: the model until the profile's moving pinball loss is
/// clearly lower (a [`Choice`], as the forecasts' candidates), and back likewise. On an
/// executable the model never trained on it can be far off run after run (`sha256sum`
/// left out of training: 2× the profile's CPU loss); the guard hands such an executable's
/// outcome to the profile after [`GUARD_MIN_SCORED`] runs. Chosen on the training
/// recordings with executables left out (models/README.md). Bounded: at most `cap`
/// executables, the least scored forgotten first.
pub struct Guard {
    per: FastMap<String, (Choice, u32)>,
    cap: usize,
}

impl Guard {
    pub fn new(cap: usize) -> Guard {
        Guard {
            per: FastMap::default(),
            cap: cap.max(1),
        }
    }

    /// A completed run of `key`: the model's and the profile's bands made at its exec,
    /// against its `outcome`. A peak RSS that was not measured is not scored.
    pub fn scored(&mut self, key: &str, model: &[Band; 4], profile: &[Band; 4], outcome: [f64; 4]) {
        if !self.per.contains_key(key) && self.per.len() >= self.cap {
            self.per.retain(|_, (_, n)| *n >= GUARD_MIN_SCORED);
            if self.per.len() >= self.cap {
                self.per.clear();
            }
        }
        let (c, n) = self
            .per
            .entry(key.to_string())
            .or_insert_with(|| (Choice::new(2), 0));
        for (t, y) in outcome.into_iter().enumerate() {
            if t == PEAK_RSS && y < f64::from(MEASURED_RSS) {
                continue;
            }
            c.score(0, t, &model[t], y, GUARD_DECAY);
            c.score(1, t, &profile[t], y, GUARD_DECAY);
        }
        *n += 1;
        if *n >= GUARD_MIN_SCORED {
            c.switch();
        }
    }

    /// The outcomes of `key` the profile predicts (the model the others).
    pub fn to_profile(&self, key: &str) -> [bool; 4] {
        self.per
            .get(key)
            .map_or([false; 4], |(c, _)| c.chosen().map(|p| p == 1))
    }

    /// `model`'s bands of the outcomes the profile predicts for `key` replaced by
    /// `profile`'s; which they were.
    pub fn apply(
        &self,
        key: &str,
        model: &mut RequestPrediction,
        profile: &RequestPrediction,
    ) -> [bool; 4] {
        let to = self.to_profile(key);
        let bands = profile.bands();
        for (t, _) in to.iter().enumerate().filter(|(_, p)| **p) {
            *model.band_mut(t) = bands[t];
        }
        to
    }

    pub fn len(&self) -> usize {
        self.per.len()
    }

    pub fn is_empty(&self) -> bool {
        self.per.is_empty()
    }
}

/// Loads the request model of `origin` for rows laid out as `vocabulary`.
pub fn load_request_model(
    origin: &str,
    bytes: &[u8],
    vocabulary: &[&str],
    runtime: &dyn super::runtime::Runtime,
) -> Result<OnnxRequest, LoadError> {
    OnnxRequest::new(
        Model::load(origin, bytes, ModelKind::Request, runtime)?,
        vocabulary,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;
    use crate::predict::profiles::Run;

    fn run(cpu: f32, ms: u64) -> Run {
        Run {
            outcome: [cpu, cpu * 1e8, cpu * 2.0, cpu * 1e6],
            input_bytes: 0,
            ended_ms: ms,
            used: None,
        }
    }

    fn exec<'a>(key: &'a str, name: &'a str, parent: &'a str) -> Exec<'a> {
        Exec {
            tgid: 7,
            exec_ns: 1,
            key,
            name,
            parent,
            input_bytes: 0,
        }
    }

    #[test]
    fn a_known_executable_gets_the_quantiles_of_its_runs() {
        let mut s = ProfileStore::in_memory(100);
        for (i, c) in [1.0, 2.0, 3.0, 4.0].iter().enumerate() {
            s.record("exe:a", "xz", "sh", run(*c, i as u64)).unwrap();
        }
        let mut p = ProfileBaseline::new();
        let r = p.predict(&s, &exec("exe:a", "xz", "sh"));
        assert_eq!(r.source, "profile");
        // numpy.quantile([1, 2, 3, 4], [0.1, 0.5, 0.9]) == [1.3, 2.5, 3.7]
        assert!((r.cpu_seconds.p10 - 1.3).abs() < 1e-6, "{r:?}");
        assert!((r.cpu_seconds.p50 - 2.5).abs() < 1e-6);
        assert!((r.cpu_seconds.p90 - 3.7).abs() < 1e-6);
        assert!((r.duration_seconds.p50 - 5.0).abs() < 1e-6);
        assert_eq!(r.tgid, 7);
    }

    #[test]
    fn an_unknown_executable_borrows_from_its_kin_in_order() {
        let mut s = ProfileStore::in_memory(100);
        // Two builds of xz (same name, other keys), two gzips run by make.
        for k in ["exe:xz1", "exe:xz2"] {
            for i in 0..4 {
                s.record(k, "xz", "sh", run(10.0, i)).unwrap();
            }
        }
        for (k, c) in [("exe:gz1", 1.0), ("exe:gz2", 3.0)] {
            for i in 0..4 {
                s.record(k, "gzip", "make", run(c, i)).unwrap();
            }
        }
        let mut p = ProfileBaseline::new();
        let r = p.predict(&s, &exec("exe:xz3", "xz", "bash"));
        assert_eq!(r.source, "prior:name");
        assert!((r.cpu_seconds.p50 - 10.0).abs() < 1e-6);
        let r = p.predict(&s, &exec("exe:new", "brotli", "make"));
        assert_eq!(r.source, "prior:parent");
        assert!((r.cpu_seconds.p50 - 2.0).abs() < 1e-6, "{r:?}");
        let r = p.predict(&s, &exec("exe:new", "brotli", "cron"));
        assert_eq!(r.source, "prior:node");
        assert!(r.cpu_seconds.p10 <= r.cpu_seconds.p50 && r.cpu_seconds.p50 <= r.cpu_seconds.p90);
        // One run of its own: its value in the middle, the band from its kin.
        s.record("exe:new", "brotli", "cron", run(4.0, 9)).unwrap();
        p.recorded();
        let r = p.predict(&s, &exec("exe:new", "brotli", "cron"));
        assert_eq!(r.source, "profile+prior:node");
        assert!((r.cpu_seconds.p50 - 4.0).abs() < 1e-6, "{r:?}");
        // Nothing at all on the node: zeros, said so.
        let r =
            ProfileBaseline::new().predict(&ProfileStore::in_memory(1), &exec("exe:x", "x", "y"));
        assert_eq!(r.source, "none");
        assert_eq!(r.cpu_seconds, Band::default());
    }

    #[test]
    fn a_model_is_held_within_its_profile_band_stretched_by_the_input() {
        let mut vocab: Vec<String> = vec!["input_bytes_total".into()];
        for p in ["p10", "p90"] {
            vocab.push(format!("profile_input_bytes_{p}"));
            for t in OUTCOMES {
                vocab.push(format!("profile_{t}_{p}"));
            }
        }
        let names: Vec<&str> = vocab.iter().map(String::as_str).collect();
        let h = HoldAt::of(&names).unwrap();
        assert!(HoldAt::of(&names[1..]).is_none());
        let mut row = vec![0.0; names.len()];
        let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
        let set = |row: &mut Vec<f64>, n: &str, v: f64| row[at(n)] = v;
        // Past runs: inputs of 10–100 MB; CPU 1–4 s; peak RSS never measured (0); I/O 0–9.
        set(&mut row, "input_bytes_total", 400e6);
        set(&mut row, "profile_input_bytes_p10", 10e6);
        set(&mut row, "profile_input_bytes_p90", 100e6);
        set(&mut row, "profile_cpu_seconds_p10", 1.0);
        set(&mut row, "profile_cpu_seconds_p90", 4.0);
        set(&mut row, "profile_duration_seconds_p10", 2.0);
        set(&mut row, "profile_duration_seconds_p90", 8.0);
        set(&mut row, "profile_io_bytes_p90", 9.0);
        let mut q = [
            [1e-3, 30.0, 1e3],
            [1.0, 2e9, 9e9],
            [0.5, 3.0, 5.0],
            [0.0, 5.0, 1e6],
        ];
        h.hold(&row, &mut q);
        // An input 4× the largest: the band's top 4 × 3 × 4 s (within f64 rounding).
        let hi = 4.0 * 3.0 * (400e6 + 1.0) / (100e6 + 1.0);
        assert_eq!(q[0][0], 1.0 / 3.0, "{q:?}");
        assert_eq!(q[0][1], 30.0);
        assert!((q[0][2] - hi).abs() < 1e-9, "{q:?}");
        // Nothing measured: left as it is.
        assert_eq!(q[1], [1.0, 2e9, 9e9]);
        assert_eq!(q[2], [2.0 / 3.0, 3.0, 5.0]);
        // A zero p10: nothing below; the top 9 × 3 × 4.
        assert!((q[3][2] - 27.0 * 4.0).abs() < 1e-6, "{q:?}");
        // An input below the past runs' smallest stretches the bottom down instead.
        set(&mut row, "input_bytes_total", 1e6);
        let mut q = [[1e-3, 30.0, 1e3], [1.0; 3], [1.0; 3], [1.0; 3]];
        h.hold(&row, &mut q);
        assert!(
            (q[0][0] - (1e6 + 1.0) / (10e6 + 1.0) / 3.0).abs() < 1e-12,
            "{q:?}"
        );
        assert_eq!(q[0][2], 12.0);
        // A band upside down (a corrupt row) does not panic.
        set(&mut row, "profile_cpu_seconds_p10", 1e9);
        h.hold(&row, &mut q);
    }

    #[test]
    fn the_guard_hands_an_outcome_to_the_profile_once_the_model_was_clearly_worse() {
        let band = |p50: f64| Band {
            p10: p50 * 0.9,
            p50,
            p90: p50 * 1.1,
        };
        let mut g = Guard::new(2);
        let (far, near) = ([band(10.0); 4], [band(1.0); 4]);
        // The model is far off on CPU, better on the rest; the peak RSS of its runs is
        // unmeasured (a page), where the model would lose.
        let outcome = [1.0, 4096.0, 10.0, 10.0];
        let model = [far[0], far[1], band(10.0), band(10.0)];
        for _ in 1..GUARD_MIN_SCORED {
            g.scored("exe:a", &model, &near, outcome);
            assert_eq!(g.to_profile("exe:a"), [false; 4]);
        }
        g.scored("exe:a", &model, &near, outcome);
        assert_eq!(g.to_profile("exe:a"), [true, false, false, false]);
        // Applied: the profile's CPU band, the model's others.
        let e = exec("exe:a", "xz", "sh");
        let mut p = prediction(&e, [[9.0, 10.0, 11.0]; 4], "model".into());
        let b = prediction(&e, [[0.9, 1.0, 1.1]; 4], "profile".into());
        assert_eq!(g.apply("exe:a", &mut p, &b), [true, false, false, false]);
        assert_eq!(p.cpu_seconds, b.cpu_seconds);
        assert_eq!(p.io_bytes.p50, 10.0);
        // The model better again: back to it.
        for _ in 0..10 {
            g.scored("exe:a", &near, &far, [1.0, 4096.0, 1.0, 1.0]);
        }
        assert_eq!(g.to_profile("exe:a"), [false; 4]);
        // Bounded: a third executable forgets the least scored.
        g.scored("exe:b", &model, &near, outcome);
        g.scored("exe:c", &model, &near, outcome);
        assert_eq!(g.len(), 2);
        assert_eq!(g.to_profile("exe:b"), [false; 4]);
    }

    /// A featurizer's vocabulary, in its own order (the fixture uses a subset).
    const VOCAB: [&str; 8] = [
        "argv_hash_3",
        "profile_runs",
        "input_bytes_total",
        "profile_io_bytes_p50",
        "profile_duration_seconds_p50",
        "profile_peak_rss_bytes_p50",
        "profile_cpu_seconds_p50",
        "uid_root",
    ];

    #[cfg(feature = "onnx")]
    #[test]
    fn the_request_model_runs_on_a_bound_row_and_falls_back_on_bad_input() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/onnx/request_fixture.onnx");
        let bytes = std::fs::read(&p).unwrap();
        let rt = crate::predict::runtime::default_runtime();
        let mut m =
            load_request_model("request_fixture.onnx", &bytes, &VOCAB, rt.as_ref()).unwrap();
        assert_eq!(m.name(), "onnx:fixture-request-1");
        let store = ProfileStore::in_memory(10);
        let e = exec("exe:a", "xz", "sh");
        // Profile medians: cpu 2 s, RSS 1e8, duration 4 s, I/O 1e6; input 1 MiB.
        let row = [0.0, 5.0, 1048576.0, 1e6, 4.0, 1e8, 2.0, 0.0];
        let r = m.predict_row(&store, &e, &row);
        assert_eq!(r.source, "model");
        let sc = &m.model().schema.targets;
        let inp = &m.model().schema.features[5];
        // cpu: z(profile cpu p50) + 0.5·z(input bytes), ∓0.3.
        let z = sc[0].forward(2.0) + 0.5 * inp.forward(1048576.0);
        assert!((r.cpu_seconds.p50 - sc[0].inverse(z)).abs() < 1e-3, "{r:?}");
        assert!(
            (r.cpu_seconds.p90 - sc[0].inverse(z + 0.3)).abs() < 1e-3,
            "{r:?}"
        );
        assert!((r.peak_rss_bytes.p50 - 1e8).abs() < 1e8 * 1e-4, "{r:?}");
        assert!((r.duration_seconds.p50 - 4.0).abs() < 1e-3, "{r:?}");
        // A NaN feature: the profile baseline (here: nothing known, zeros, said so).
        let mut bad = row;
        bad[2] = f64::NAN;
        let r = m.predict_row(&store, &e, &bad);
        assert_eq!(r.source, "none");
        assert_eq!(m.stats.fallback_rows, 1);
        // A vocabulary without one of the model's features: refused, naming it.
        let e = load_request_model("request_fixture.onnx", &bytes, &VOCAB[1..], rt.as_ref())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("argv_hash_3") && e.contains("request_fixture.onnx"),
            "{e}"
        );
        // A forecaster is not a request model.
        let f = std::fs::read(p.with_file_name("forecast_fixture.onnx")).unwrap();
        let e = load_request_model("f.onnx", &f, &VOCAB, rt.as_ref())
            .err()
            .unwrap();
        assert!(e.to_string().contains("a request model is needed"), "{e}");
    }
}
