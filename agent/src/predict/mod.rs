//! Predict: every workload's next intervals as quantiles with a calibrated band, and every
//! new request's (process exec's) needs before it ramps up.
//!
//! This module's types are the contract with the stages that consume predictions
//! (allocate, publish, the CLI): [`Forecast`] per workload and tick, [`RequestPrediction`]
//! per exec. Every forecaster — the ONNX model, each baseline, the calibrator around
//! them — implements [`Predictor`] over plain history, so `umbra eval`, `umbra simulate`
//! and the live agent run the same code.

use serde::{Deserialize, Serialize};

pub mod baseline;
pub mod config;
pub mod features;
pub mod profiles;
pub mod request;

pub use config::PredictConfig;
pub use features::{Bucket, BucketConfig, Featurizer};

use crate::aggregate::{ShadowPoint, Window, WorkloadId};

/// What is forecast for each workload, in these units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// CPU, cores (mean over the interval).
    Cpu,
    /// Resident memory, bytes (at the end of the interval).
    Memory,
    /// File I/O, bytes per second (read + write).
    Io,
    /// Network, bytes per second (received + sent).
    Net,
}

impl Target {
    pub const ALL: [Target; 4] = [Target::Cpu, Target::Memory, Target::Io, Target::Net];

    pub const fn name(self) -> &'static str {
        match self {
            Target::Cpu => "cpu",
            Target::Memory => "memory",
            Target::Io => "io",
            Target::Net => "net",
        }
    }

    /// This target's value in a shadow data point.
    pub fn of(self, p: &ShadowPoint) -> f64 {
        let secs = (p.interval_ms.max(1) as f64) / 1000.0;
        let r = &p.profile;
        match self {
            Target::Cpu => r.cpu_cores,
            Target::Memory => r.rss_bytes as f64,
            Target::Io => (r.read_bytes + r.write_bytes) as f64 / secs,
            Target::Net => (r.net_rx_bytes + r.net_tx_bytes) as f64 / secs,
        }
    }
}

/// A predictive band: the 10th, 50th and 90th percentiles (p10 ≤ p50 ≤ p90).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Band {
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
}

/// Quantile levels of a [`Band`].
pub const LEVELS: [f64; 3] = [0.1, 0.5, 0.9];

/// One workload's forecast, made at the end of an interval for the `horizon` intervals
/// after it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub workload: WorkloadId,
    /// End of the last interval seen, ms since the Unix epoch.
    pub made_ms: u64,
    /// Length of each forecast step, ms.
    pub interval_ms: u32,
    /// The predictor that made it (e.g. `onnx:forecast-3`, `ewma`).
    pub predictor: String,
    /// Per target (index: position in [`Target::ALL`]), one band per step ahead.
    pub bands: [Vec<Band>; 4],
}

impl Forecast {
    /// The bands of `target`, step 1 first.
    pub fn of(&self, target: Target) -> &[Band] {
        &self.bands[target as usize]
    }
}

/// What a new request (one exec'd image, until it exits or execs again) is predicted to
/// need over its whole life.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestPrediction {
    pub tgid: u32,
    /// Boot-clock ns of the exec.
    pub exec_ns: u64,
    pub workload: WorkloadId,
    pub cpu_seconds: Band,
    pub peak_rss_bytes: Band,
    pub duration_seconds: Band,
    pub io_bytes: Band,
    /// How it was made: `model`, `profile` (the executable's past runs) or `prior`
    /// (an executable never seen: similar executables, its parent, the node).
    pub source: String,
}

/// Whether a predictor is a trained model or a baseline (for `umbra eval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictorKind {
    Model,
    Baseline,
}

/// One workload's input to a forecaster: its last buckets at the forecast interval, oldest
/// first, the newest ending at the batch's `now_ms` (zeros where it had no point, and
/// before it first appeared).
#[derive(Clone, Copy, Debug)]
pub struct Series<'a> {
    pub workload: &'a WorkloadId,
    pub name: &'a str,
    pub buckets: &'a [Bucket],
}

impl Series<'_> {
    /// The newest bucket's value of `t`.
    pub fn last(&self, t: Target) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.target(t))
    }
}

/// One closed bucket: every tracked workload's series, in workload order.
#[derive(Clone, Debug, Default)]
pub struct Batch<'a> {
    pub now_ms: u64,
    pub interval_ms: u32,
    pub series: Vec<Series<'a>>,
}

/// A forecaster. Stateful ones (decaying histograms, calibration) keep per-workload state
/// keyed by [`WorkloadId`], bounded (a workload missing from a batch is let go), and
/// update it from each batch's newest buckets: a batch comes once per closed bucket.
pub trait Predictor: Send {
    fn name(&self) -> &str;
    fn kind(&self) -> PredictorKind;
    /// Steps ahead each forecast covers.
    fn horizon(&self) -> usize;
    /// Buckets of history it wants in each series (the featurizer keeps the most asked).
    fn history(&self) -> usize {
        1
    }
    /// One forecast per series of the batch, in the batch's order.
    fn forecast(&mut self, batch: &Batch<'_>) -> Vec<Forecast>;
}

/// The forecast stage's core: windows in, a forecast per tracked workload out each time a
/// bucket closes. The live agent, `umbra eval` and `umbra simulate` drive this.
pub struct ForecastStage {
    featurizer: Featurizer,
    predictor: Box<dyn Predictor>,
}

impl ForecastStage {
    /// A stage with buckets of `interval_ms` feeding `predictor`.
    pub fn new(interval_ms: u64, forget_after: u32, predictor: Box<dyn Predictor>) -> Self {
        ForecastStage {
            featurizer: Featurizer::new(BucketConfig {
                interval_ms,
                depth: predictor.history(),
                forget_after,
            }),
            predictor,
        }
    }

    /// The fallback baseline of `cfg` (`predict.fallback`) at `cfg`'s interval.
    pub fn baseline(cfg: &PredictConfig, capture_interval_ms: u64) -> Self {
        // `cfg` was validated: the name is known.
        let p = baseline::by_name(&cfg.fallback, cfg)
            .unwrap_or_else(|| Box::new(baseline::LastValue::new(cfg.horizon, cfg.window)));
        ForecastStage::new(cfg.interval_ms(capture_interval_ms), cfg.forget_after, p)
    }

    pub fn predictor(&self) -> &dyn Predictor {
        self.predictor.as_ref()
    }

    pub fn interval_ms(&self) -> u64 {
        self.featurizer.config().interval_ms
    }

    /// Takes a window; the forecasts of the newest bucket it closed, if it closed one.
    pub fn push(&mut self, w: &Window) -> Option<Vec<Forecast>> {
        let mut out = None;
        let p = &mut self.predictor;
        self.featurizer.push(w, &mut |b| out = Some(p.forecast(b)));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;
    use crate::{aggregate::GroupBy, export};

    #[test]
    fn every_baseline_forecasts_every_tracked_workload_of_a_real_recording() {
        let rec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/batch.umbra");
        for name in baseline::BASELINES {
            let cfg = PredictConfig {
                fallback: name.into(),
                interval_ms: Some(2000),
                ..Default::default()
            };
            let mut stage = ForecastStage::baseline(&cfg, 1000);
            assert_eq!(stage.predictor().name(), name);
            let (mut ticks, mut made) = (0, 0);
            export::replay::<crate::record::RecordError>(&rec, GroupBy::Exe, |s| {
                if let export::Step::Window(_, w) = s {
                    ticks += 1;
                    if let Some(fs) = stage.push(w) {
                        made += 1;
                        assert!(!fs.is_empty());
                        for f in &fs {
                            assert_eq!(f.interval_ms, 2000);
                            assert_eq!(f.made_ms % 2000, 0);
                            for t in Target::ALL {
                                assert_eq!(f.of(t).len(), cfg.horizon);
                                assert!(f.of(t).iter().all(|b| b.p10 <= b.p50 && b.p50 <= b.p90));
                            }
                        }
                    }
                }
                Ok(())
            })
            .unwrap();
            // One forecast per closed bucket: about one every two 1 s ticks.
            assert!(
                made >= ticks / 2 - 2 && made <= ticks / 2 + 1,
                "{name}: {made} of {ticks}"
            );
        }
    }
}
