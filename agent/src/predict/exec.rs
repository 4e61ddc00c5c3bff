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
    Band, LEVELS, PredictorKind, RequestPrediction,
    profiles::{ProfileStore, quantiles},
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
            .or_else(|| self.priors.by_parent.get(e.parent).map(|q| (q, "prior:parent")))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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
        let r = ProfileBaseline::new().predict(
            &ProfileStore::in_memory(1),
            &exec("exe:x", "x", "y"),
        );
        assert_eq!(r.source, "none");
        assert_eq!(r.cpu_seconds, Band::default());
    }
}
