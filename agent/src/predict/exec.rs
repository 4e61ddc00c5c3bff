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
    profiles::{ProfileStore, quantiles},
    schema::ModelKind,
};
use crate::aggregate::WorkloadId;

/// Runs of its own an executable needs before its profile is used alone.
pub const MIN_RUNS: usize = 3;
/// Profiles a pool needs to be used.
const MIN_POOL: usize = 2;

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
