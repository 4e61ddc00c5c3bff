//! Drift: a workload whose forecast error has grown for good — its program changed, its
//! input changed shape — so its model no longer fits.
//!
//! Per workload, each bucket's error is the pinball loss of its step-1 band (the mean over
//! p10, p50 and p90) on CPU and memory, each divided by a scale (the recent mean of the
//! target, floored) so workloads of any size compare. A Page-Hinkley test runs on it:
//! `m = Σ (e − mean(e) − δ)`, drift when `m − min(m) > λ` — a sustained rise of the error
//! by more than `δ`, not a single bad bucket. A drifting workload stays flagged for
//! retraining until its error has been back to normal for `recover` buckets (demoting it
//! to the shadow tier is the allocate stage's, once that stage takes the flag).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    aggregate::WorkloadId,
    config::ConfigError,
    insight::Bands,
    predict::{Band, LEVELS, Target},
};

/// `[anomaly.drift]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Tolerated rise of the normalised error per bucket.
    pub delta: f64,
    /// Accumulated rise that is drift.
    pub lambda: f64,
    /// Buckets of error before the test runs (its mean is learnt over them).
    pub warmup: u32,
    /// Buckets of ordinary error after which a drifting workload is cleared.
    pub recover: u32,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            delta: 0.05,
            lambda: 1.0,
            warmup: 12,
            recover: 60,
        }
    }
}

impl DriftConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ok = self.delta >= 0.0
            && self.delta.is_finite()
            && self.lambda > 0.0
            && self.lambda.is_finite()
            && self.warmup >= 2
            && self.recover >= 1;
        if ok {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                key: "anomaly.drift",
                value: format!("{self:?}"),
                expected: "delta ≥ 0, lambda > 0, warmup ≥ 2, recover ≥ 1".into(),
            })
        }
    }
}

/// A workload found drifting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drifted {
    pub workload: WorkloadId,
    pub name: String,
    /// End of the bucket the test crossed λ in, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The normalised error then, and its mean before.
    pub error: f64,
    pub usual_error: f64,
}

impl Drifted {
    pub fn text(&self) -> String {
        format!(
            "{}: forecast error drifted ({:.2} against {:.2} usually): flagged for retraining",
            self.name, self.error, self.usual_error
        )
    }
}

/// Pinball loss of a band at the quantile levels, averaged.
pub fn pinball(y: f64, b: &Band) -> f64 {
    let qs = [b.p10, b.p50, b.p90];
    LEVELS
        .iter()
        .zip(qs)
        .map(|(&tau, q)| {
            let d = y - q;
            if d >= 0.0 { tau * d } else { (tau - 1.0) * d }
        })
        .sum::<f64>()
        / LEVELS.len() as f64
}

/// Floors of the scale a target's error is divided by.
fn scale_floor(t: Target) -> f64 {
    match t {
        Target::Cpu => 0.1,
        Target::Memory => 32.0 * 1024.0 * 1024.0,
        Target::Io | Target::Net => 1024.0 * 1024.0,
    }
}

struct State {
    n: u32,
    mean: f64,
    /// Recent mean of each target (the scale).
    scale: [f64; 2],
    m: f64,
    min_m: f64,
    drifting: Option<u64>,
    ordinary: u32,
}

/// Drift tests of every workload.
pub struct Drift {
    cfg: DriftConfig,
    states: HashMap<WorkloadId, State>,
}

impl Drift {
    pub fn new(cfg: DriftConfig) -> Self {
        Drift {
            cfg,
            states: HashMap::new(),
        }
    }

    pub fn drifting(&self) -> impl Iterator<Item = (&WorkloadId, u64)> {
        self.states
            .iter()
            .filter_map(|(k, s)| s.drifting.map(|t| (k, t)))
    }

    pub fn retain(&mut self, keep: impl Fn(&WorkloadId) -> bool) {
        self.states.retain(|k, _| keep(k));
    }

    /// One bucket of a workload: its values (per [`Target::ALL`]) and the band forecast
    /// for it. Returns the workload when it starts drifting.
    pub fn observe(
        &mut self,
        id: &WorkloadId,
        name: &str,
        end_ms: u64,
        ys: &[f64; 4],
        bands: &Bands,
    ) -> Option<Drifted> {
        let cfg = &self.cfg;
        let s = self.states.entry(id.clone()).or_insert(State {
            n: 0,
            mean: 0.0,
            scale: [0.0; 2],
            m: 0.0,
            min_m: 0.0,
            drifting: None,
            ordinary: 0,
        });
        let targets = [Target::Cpu, Target::Memory];
        // Scales learn slowly and only before drift, so a new program's level does not
        // hide its own error.
        let mut e = 0.0;
        for (k, t) in targets.iter().enumerate() {
            let y = ys[*t as usize];
            if s.n < cfg.warmup {
                s.scale[k] += (y - s.scale[k]) / (s.n as f64 + 1.0);
            }
            let scale = s.scale[k].abs().max(scale_floor(*t));
            e += pinball(y, &bands[*t as usize]) / scale;
        }
        e /= targets.len() as f64;
        s.n += 1;
        if s.n <= cfg.warmup {
            s.mean += (e - s.mean) / s.n as f64;
            return None;
        }
        s.m += e - s.mean - cfg.delta;
        s.min_m = s.min_m.min(s.m);
        if s.drifting.is_some() {
            if e <= s.mean + cfg.delta {
                s.ordinary += 1;
                if s.ordinary >= cfg.recover {
                    s.drifting = None;
                    s.m = 0.0;
                    s.min_m = 0.0;
                }
            } else {
                s.ordinary = 0;
            }
            return None;
        }
        if s.m - s.min_m > cfg.lambda {
            s.drifting = Some(end_ms);
            s.ordinary = 0;
            s.m = 0.0;
            s.min_m = 0.0;
            return Some(Drifted {
                workload: id.clone(),
                name: name.to_string(),
                timestamp_ms: end_ms,
                error: e,
                usual_error: s.mean,
            });
        }
        // The error's mean keeps learning slowly while nothing drifts.
        s.mean += (e - s.mean) / (s.n.min(200) as f64);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn band(lo: f64, mid: f64, hi: f64) -> Band {
        Band {
            p10: lo,
            p50: mid,
            p90: hi,
        }
    }

    #[test]
    fn pinball_is_zero_at_the_quantiles_and_grows_outside() {
        let b = band(1.0, 1.0, 1.0);
        assert_eq!(pinball(1.0, &b), 0.0);
        assert!(pinball(3.0, &b) > pinball(2.0, &b));
        assert!(pinball(-1.0, &b) > pinball(0.0, &b));
    }

    #[test]
    fn a_lasting_rise_of_the_error_is_drift_a_blip_is_not() {
        let id = WorkloadId("exe:a".into());
        let bands: Bands = [
            band(0.9, 1.0, 1.1),
            band(1e8, 1e8, 1e8),
            band(0.0, 0.0, 0.0),
            band(0.0, 0.0, 0.0),
        ];
        let mut d = Drift::new(DriftConfig::default());
        let mut t = 0;
        let mut step = |d: &mut Drift, cpu: f64| {
            t += 1000;
            d.observe(&id, "a", t, &[cpu, 1e8, 0.0, 0.0], &bands)
        };
        for i in 0..100 {
            let cpu = if i % 2 == 0 { 0.95 } else { 1.05 };
            assert!(step(&mut d, cpu).is_none(), "bucket {i}");
        }
        // One wild bucket: not drift.
        assert!(step(&mut d, 3.0).is_none());
        for _ in 0..20 {
            assert!(step(&mut d, 1.0).is_none());
        }
        // The program changes: twice the CPU from now on. Found within a few buckets.
        let mut after = None;
        for i in 0..30 {
            if step(&mut d, 2.0).is_some() {
                after = Some(i + 1);
                break;
            }
        }
        let after = after.expect("drift found");
        assert!(after <= 8, "after {after} buckets");
        assert_eq!(d.drifting().count(), 1);
    }
}
