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
pub mod calibrate;
pub mod config;
pub mod exec;
pub mod features;
pub mod framed;
pub mod onnx;
pub mod per_request;
pub mod profiles;
pub mod request;
pub mod runtime;
pub mod schema;
pub mod select;
pub mod source;
#[cfg(feature = "onnx")]
pub mod tract_ops;

pub use config::PredictConfig;
pub use features::{Bucket, BucketConfig, Featurizer};
pub use onnx::ModelStats;
pub use profiles::OUTCOMES;

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

/// The shortest duration a request's CPU rate is taken over, seconds (a request's
/// `cpu.max` is its CPU seconds over its duration, at least this).
pub const MIN_REQUEST_SECONDS: f64 = 0.1;

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
    /// How it was made: `model`, `profile…` (the executable's past runs) or `prior:…`
    /// (an executable never seen: similar executables, its parent, the node).
    pub source: String,
    /// How the executable's last predicted requests since the agent started (at most
    /// [`per_request::RECORD`], oldest first) used what was predicted for them
    /// (`per_request::used`): what earns its requests their hard limits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub record: Vec<[f32; 2]>,
}

impl RequestPrediction {
    /// Borrowed from other executables: the executable has no runs of its own.
    pub fn is_prior(&self) -> bool {
        self.source.starts_with("prior:")
    }

    /// The four outcomes' bands, in the contract's order (`profiles::OUTCOMES`).
    pub fn bands(&self) -> [Band; 4] {
        [
            self.cpu_seconds,
            self.peak_rss_bytes,
            self.duration_seconds,
            self.io_bytes,
        ]
    }

    /// Outcome `i`'s band (`profiles::OUTCOMES` order; I/O beyond).
    pub fn band_mut(&mut self, i: usize) -> &mut Band {
        match i {
            0 => &mut self.cpu_seconds,
            1 => &mut self.peak_rss_bytes,
            2 => &mut self.duration_seconds,
            _ => &mut self.io_bytes,
        }
    }
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
    /// As [`Predictor::forecast`], into `out`: a predictor that keeps its output's rooms
    /// (names, band vectors) from tick to tick, as the baselines do, allocates nothing for
    /// known workloads.
    fn forecast_into(&mut self, batch: &Batch<'_>, out: &mut Vec<Forecast>) {
        *out = self.forecast(batch);
    }
    /// A model's counters (crossed quantiles, rows that fell back); `None` for baselines.
    fn model_stats(&self) -> Option<&ModelStats> {
        None
    }
    /// Puts `p` in as the primary predictor this one wraps (a model loaded or reloaded);
    /// gives it back when this one wraps none.
    fn replace_primary(&mut self, p: Box<dyn Predictor>) -> Option<Box<dyn Predictor>> {
        Some(p)
    }
}

/// What the forecast stage runs and why, for status and `umbra run`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PredictStatus {
    /// The predictor making the forecasts (e.g. `onnx:2026.12.01-1+aci`, `autopilot+aci`).
    pub predictor: String,
    /// The model in use: its `model_version` and where it came from (`shipped`, a path,
    /// `fleet`).
    pub model_version: Option<String>,
    pub model_source: Option<String>,
    /// Why no model (or not the preferred one) runs; `None` when all is well.
    pub fallback_reason: Option<String>,
    /// The model's (row, target, step) whose quantiles crossed and were sorted, rows that
    /// fell back to the last value (non-finite input or output), failed runs.
    pub crossed: u64,
    pub fallback_rows: u64,
    pub run_errors: u64,
    /// Outcomes inside the calibrated p10–p90 band, of those scored.
    pub coverage: Option<f64>,
}

/// The stage's predictor: calibrated (the live agent) or as it is (`umbra eval` compares
/// both).
enum Forecaster {
    Plain(Box<dyn Predictor>),
    Calibrated(calibrate::Calibrated),
}

impl Forecaster {
    fn get(&self) -> &dyn Predictor {
        match self {
            Forecaster::Plain(p) => p.as_ref(),
            Forecaster::Calibrated(c) => c,
        }
    }
    fn get_mut(&mut self) -> &mut dyn Predictor {
        match self {
            Forecaster::Plain(p) => p.as_mut(),
            Forecaster::Calibrated(c) => c,
        }
    }
}

/// What a live stage keeps besides its predictor: the model sources, the fallback, the
/// calibration file.
struct Live {
    cfg: PredictConfig,
    capture_interval_ms: u64,
    sources: source::Sources,
    state_dir: Option<std::path::PathBuf>,
    since_save: u32,
    status: PredictStatus,
}

/// Closed buckets between saves of the calibration state.
const SAVE_EVERY: u32 = 60;

/// The forecast stage's core: windows in, a forecast per tracked workload out each time a
/// bucket closes. The live agent, `umbra eval` and `umbra simulate` drive this.
pub struct ForecastStage {
    featurizer: Featurizer,
    predictor: Forecaster,
    live: Option<Box<Live>>,
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
            predictor: Forecaster::Plain(predictor),
            live: None,
        }
    }

    /// A stage whose predictor is calibrated online (`cfg.calibration`).
    pub fn calibrated(
        interval_ms: u64,
        forget_after: u32,
        predictor: Box<dyn Predictor>,
        cfg: &calibrate::CalibrationConfig,
    ) -> Self {
        let mut s = ForecastStage::new(interval_ms, forget_after, predictor);
        if let Forecaster::Plain(p) = std::mem::replace(
            &mut s.predictor,
            Forecaster::Plain(Box::new(baseline::LastValue::new(1, 1))),
        ) {
            s.predictor = Forecaster::Calibrated(calibrate::Calibrated::new(p, cfg));
        }
        s
    }

    /// The fallback baseline of `cfg` (`predict.fallback`) at `cfg`'s interval.
    pub fn baseline(cfg: &PredictConfig, capture_interval_ms: u64) -> Self {
        ForecastStage::new(
            cfg.interval_ms(capture_interval_ms),
            cfg.forget_after,
            fallback(cfg),
        )
    }

    /// The live agent's stage: the best model its sources offer (the fleet's update
    /// `fleet`, then `predict.model`), else the fallback baseline, calibrated; calibration
    /// state kept under `state_dir`. Never fails: what went wrong is in [`Self::status`].
    pub fn live(
        cfg: &PredictConfig,
        capture_interval_ms: u64,
        state_dir: Option<&std::path::Path>,
        fleet: Option<(&str, &[u8])>,
        runtime: Box<dyn runtime::Runtime>,
    ) -> Self {
        let sources = source::Sources::new(
            schema::ModelKind::Forecast,
            source::ModelSetting::parse(&cfg.model),
            source::shipped::FORECAST,
            runtime,
        );
        let primary = with_candidates(cfg, fallback(cfg));
        let mut s = if cfg.calibration.enabled {
            ForecastStage::calibrated(
                cfg.interval_ms(capture_interval_ms),
                cfg.forget_after,
                primary,
                &cfg.calibration,
            )
        } else {
            ForecastStage::new(
                cfg.interval_ms(capture_interval_ms),
                cfg.forget_after,
                primary,
            )
        };
        s.live = Some(Box::new(Live {
            cfg: cfg.clone(),
            capture_interval_ms,
            sources,
            state_dir: state_dir.map(|d| d.to_path_buf()),
            since_save: 0,
            status: PredictStatus::default(),
        }));
        if let Some(dir) = state_dir
            && let Forecaster::Calibrated(c) = &mut s.predictor
        {
            match calibrate::load(dir) {
                Ok(Some(saved)) => c.restore(saved),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "Calibration starts over"),
            }
        }
        let mut reasons = Vec::new();
        let mut chosen = None;
        if let Some((origin, bytes)) = fleet
            && let Some(l) = &mut s.live
        {
            match l.sources.fleet(origin, bytes) {
                Ok(m) => chosen = Some(m),
                Err(e) => reasons.push(e.to_string()),
            }
        }
        if chosen.is_none()
            && let Some(l) = &mut s.live
        {
            match l.sources.configured() {
                Ok(m) => chosen = m,
                Err(e) => reasons.push(e.to_string()),
            }
        }
        let chosen = chosen.and_then(|(m, origin)| match s.swap(m, &origin) {
            Ok(()) => Some(()),
            Err(e) => {
                reasons.push(e.to_string());
                None
            }
        });
        if chosen.is_none() && reasons.is_empty() {
            reasons.push("predict.model = \"none\"".into());
        }
        s.set_reason(reasons);
        s
    }

    fn set_reason(&mut self, reasons: Vec<String>) {
        let name = self.predictor.get().name().to_string();
        if let Some(l) = &mut self.live {
            l.status.fallback_reason = (!reasons.is_empty()).then(|| {
                let r = reasons.join("; ");
                if l.status.model_version.is_some() {
                    r
                } else {
                    format!("forecasting with the {} baseline: {r}", l.cfg.fallback)
                }
            });
            if let Some(r) = &l.status.fallback_reason {
                tracing::warn!(predictor = name, reason = %r, "Forecast model not in use");
            }
        }
    }

    /// Puts a loaded model in as the forecaster (calibration kept).
    fn swap(&mut self, m: onnx::Model, origin: &source::Origin) -> Result<(), onnx::LoadError> {
        let Some(l) = &mut self.live else {
            return Ok(());
        };
        let ms = m.schema.interval_ms.unwrap_or(0);
        let c = l.capture_interval_ms.max(1);
        if ms == 0 || !ms.is_multiple_of(c) {
            return Err(onnx::LoadError::Unusable {
                origin: m.origin.clone(),
                why: format!("its interval_ms {ms} is not a multiple of capture.interval_ms {c}"),
            });
        }
        let version = m.version().to_string();
        let p = onnx::OnnxForecaster::new(m)?;
        l.status.model_version = Some(version.clone());
        l.status.model_source = Some(origin.describe());
        tracing::info!(model = version, source = %origin.describe(), "Forecast model in use");
        let depth = p.history();
        match &mut self.predictor {
            Forecaster::Calibrated(cal) => cal.replace_inner(Box::new(p)),
            Forecaster::Plain(old) => {
                if let Some(p) = old.replace_primary(Box::new(p)) {
                    *old = p;
                }
            }
        }
        if self.featurizer.config().interval_ms != ms {
            self.featurizer = Featurizer::new(BucketConfig {
                interval_ms: ms,
                depth,
                forget_after: l.cfg.forget_after,
            });
        } else {
            self.featurizer.set_depth(depth);
        }
        Ok(())
    }

    /// The fleet's model update: loaded and swapped in, or refused (the current forecaster
    /// stays). Returns the model's version.
    pub fn install(&mut self, origin: &str, bytes: &[u8]) -> Result<String, onnx::LoadError> {
        let Some(l) = &mut self.live else {
            return Err(onnx::LoadError::Unusable {
                origin: origin.into(),
                why: "this stage takes no models".into(),
            });
        };
        let (m, o) = l.sources.fleet(origin, bytes)?;
        let v = m.version().to_string();
        self.swap(m, &o)?;
        self.set_reason(vec![]);
        Ok(v)
    }

    /// Checks the configured model file for a change; reloads it when it changed. A model
    /// with another interval starts a new featurizer with this window (the workloads'
    /// windows fill again).
    fn poll_sources(&mut self) {
        let Some(l) = &mut self.live else {
            return;
        };
        if !l.sources.changed() {
            return;
        }
        let r = l.sources.configured();
        let reasons = match r {
            Ok(Some((m, o))) => match self.swap(m, &o) {
                Ok(()) => vec![],
                Err(e) => vec![e.to_string()],
            },
            Ok(None) => vec![],
            Err(e) => vec![e.to_string()],
        };
        if !reasons.is_empty() && self.status().model_version.is_some() {
            tracing::warn!(reason = %reasons.join("; "), "Changed model file refused; the model in use stays");
        }
        self.set_reason(reasons);
    }

    /// What runs and why; counters of the model in use.
    pub fn status(&self) -> PredictStatus {
        let mut s = self
            .live
            .as_ref()
            .map(|l| l.status.clone())
            .unwrap_or_default();
        let p = self.predictor.get();
        s.predictor = p.name().to_string();
        if let Some(m) = p.model_stats() {
            s.crossed = m.crossed;
            s.fallback_rows = m.fallback_rows;
            s.run_errors = m.run_errors;
        }
        if let Forecaster::Calibrated(c) = &self.predictor
            && c.scored > 0
        {
            s.coverage = Some(c.covered as f64 / c.scored as f64);
        }
        s
    }

    /// Keeps the calibration state under the state dir.
    pub fn save(&mut self) -> Result<(), calibrate::CalibrationError> {
        let (Some(l), Forecaster::Calibrated(c)) = (&mut self.live, &self.predictor) else {
            return Ok(());
        };
        l.since_save = 0;
        match &l.state_dir {
            Some(dir) => calibrate::save(dir, &c.saved()),
            None => Ok(()),
        }
    }

    pub fn predictor(&self) -> &dyn Predictor {
        self.predictor.get()
    }

    pub fn interval_ms(&self) -> u64 {
        self.featurizer.config().interval_ms
    }

    /// Takes a window; the forecasts of the newest bucket it closed, if it closed one.
    pub fn push(&mut self, w: &Window) -> Option<Vec<Forecast>> {
        // A changed model file takes over from this window on (one stat a window).
        self.poll_sources();
        let mut out = None;
        let p = self.predictor.get_mut();
        self.featurizer.push(w, &mut |b| out = Some(p.forecast(b)));
        if out.is_some() && self.live.is_some() {
            let due = self.live.as_mut().is_some_and(|l| {
                l.since_save += 1;
                l.since_save >= SAVE_EVERY
            });
            if due && let Err(e) = self.save() {
                tracing::warn!(error = %e, "Calibration state not kept");
            }
        }
        out
    }
}

/// `primary`, with `cfg.candidates` beside it per workload ([`select::Select`]).
fn with_candidates(cfg: &PredictConfig, primary: Box<dyn Predictor>) -> Box<dyn Predictor> {
    match select_with_candidates(cfg, primary) {
        Ok(s) => Box::new(s),
        Err(primary) => primary,
    }
}

/// `primary` with `cfg.candidates` beside it per workload, as the live agent runs it; the
/// primary back when there is no candidate.
pub fn select_with_candidates(
    cfg: &PredictConfig,
    primary: Box<dyn Predictor>,
) -> Result<select::Select, Box<dyn Predictor>> {
    if cfg.candidates.iter().all(|c| c == primary.name()) {
        return Err(primary);
    }
    let base = cfg.clone();
    // Candidates forecast as far ahead as the primary, and are never the primary itself
    // (made again for each primary).
    let make = move |h: usize, primary: &str| -> Vec<Box<dyn Predictor>> {
        let mut c_cfg = base.clone();
        c_cfg.horizon = h;
        base.candidates
            .iter()
            .filter(|c| *c != primary)
            .filter_map(|c| baseline::by_name(c, &c_cfg))
            .collect()
    };
    Ok(select::Select::with_make(primary, Box::new(make)).combining(cfg.combine, cfg.blend_within))
}

/// The fallback baseline of `cfg`.
fn fallback(cfg: &PredictConfig) -> Box<dyn Predictor> {
    // `cfg` was validated: the name is known.
    baseline::by_name(&cfg.fallback, cfg)
        .unwrap_or_else(|| Box::new(baseline::LastValue::new(cfg.horizon, cfg.window)))
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

    fn onnx_fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/onnx")
            .join(name)
    }

    /// Drives a recording through `stage`; `each(i, forecasts)` after every closed bucket.
    fn drive(stage: &mut ForecastStage, rec: &str, mut each: impl FnMut(usize, &[Forecast])) {
        let rec = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(rec);
        let mut i = 0;
        export::replay::<crate::record::RecordError>(&rec, GroupBy::Exe, |s| {
            if let export::Step::Window(_, w) = s
                && let Some(fs) = stage.push(w)
            {
                each(i, &fs);
                i += 1;
            }
            Ok(())
        })
        .unwrap();
    }

    /// The live stage without candidates: these tests are about which model forecasts
    /// (a candidate may take a workload over after three buckets: `select`'s tests).
    fn live(model: &str, state: Option<&Path>) -> ForecastStage {
        let cfg = PredictConfig {
            model: model.into(),
            interval_ms: Some(1000),
            candidates: Vec::new(),
            ..Default::default()
        };
        ForecastStage::live(&cfg, 1000, state, None, runtime::default_runtime())
    }

    #[cfg(feature = "onnx")]
    #[test]
    fn the_live_stage_runs_a_configured_model_calibrated() {
        let p = onnx_fixture("forecast_fixture.onnx");
        let mut stage = live(p.to_str().unwrap(), None);
        let st = stage.status();
        assert_eq!(st.predictor, "onnx:fixture-1+aci");
        assert_eq!(st.model_version.as_deref(), Some("fixture-1"));
        assert_eq!(st.model_source.as_deref(), p.to_str());
        assert_eq!(st.fallback_reason, None);
        // The model's interval (2 s) and horizon (3).
        assert_eq!(stage.interval_ms(), 2000);
        let mut n = 0;
        drive(&mut stage, "compress.umbra", |_, fs| {
            n += 1;
            for f in fs {
                assert_eq!(f.interval_ms, 2000);
                assert!(f.predictor == "onnx:fixture-1+aci", "{}", f.predictor);
                assert_eq!(f.of(Target::Cpu).len(), 3);
            }
        });
        assert!(n > 3);
        assert!(stage.status().coverage.is_some());
    }

    #[test]
    fn a_model_that_cannot_run_leaves_the_fallback_forecasting_and_says_why() {
        for (file, why) in [
            ("forecast_nan.onnx", "non-finite"),
            ("forecast_newer.onnx", "version 2"),
            ("forecast_unknown_feature.onnx", "gpu_util"),
            ("missing.onnx", "No such file"),
        ] {
            let p = onnx_fixture(file);
            let mut stage = live(p.to_str().unwrap(), None);
            let st = stage.status();
            let reason = st.fallback_reason.clone().unwrap_or_default();
            if cfg!(feature = "onnx") || file == "missing.onnx" {
                assert!(
                    reason.contains(file) && reason.contains(why),
                    "{file}: {reason}"
                );
            }
            assert!(reason.contains("autopilot baseline"), "{reason}");
            assert_eq!(st.predictor, "autopilot+aci");
            assert_eq!(st.model_version, None);
            let mut n = 0;
            drive(&mut stage, "batch.umbra", |_, fs| {
                n += 1;
                // The fallback, or the candidate baseline that took a workload over.
                assert!(
                    fs.iter().all(|f| f.predictor == "autopilot+aci"
                        || ((f.predictor.contains("seasonal") || f.predictor.contains("ewma"))
                            && !f.predictor.contains("onnx"))),
                    "{:?}",
                    fs.iter().map(|f| &f.predictor).collect::<Vec<_>>()
                );
            });
            assert!(n > 0);
        }
        let stage = live("none", None);
        assert!(stage.status().fallback_reason.unwrap().contains("\"none\""));
    }

    #[cfg(feature = "onnx")]
    #[test]
    fn a_changed_model_file_is_reloaded_and_a_bad_change_keeps_the_model_in_use() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("forecast.onnx");
        std::fs::write(&p, b"not yet a model").unwrap();
        let mut stage = live(p.to_str().unwrap(), None);
        assert!(
            stage
                .status()
                .fallback_reason
                .unwrap()
                .contains("not an ONNX model")
        );
        let good = std::fs::read(onnx_fixture("forecast_fixture.onnx")).unwrap();
        let mut seen = Vec::new();
        drive(&mut stage, "batch.umbra", |i, fs| {
            if i == 1 {
                std::fs::write(&p, &good).unwrap();
            }
            if i == 3 {
                // A copy cut short (a half-finished write): refused, the model stays.
                std::fs::write(&p, &good[..good.len() / 2]).unwrap();
            }
            seen.push(fs[0].predictor.clone());
        });
        assert_eq!(seen[..2], ["autopilot+aci", "autopilot+aci"]);
        assert!(seen.len() > 4, "{seen:?}");
        assert!(
            seen[2..].iter().all(|p| p == "onnx:fixture-1+aci"),
            "{seen:?}"
        );
        let st = stage.status();
        assert_eq!(st.model_version.as_deref(), Some("fixture-1"));
        assert!(st.fallback_reason.unwrap().contains("truncated"));
    }

    #[cfg(feature = "onnx")]
    #[test]
    fn a_fleet_model_is_installed_and_a_bad_one_is_refused_keeping_the_current() {
        let mut stage = live("none", None);
        let good = std::fs::read(onnx_fixture("forecast_fixture.onnx")).unwrap();
        assert_eq!(
            stage.install("fleet model forecast 3", &good).unwrap(),
            "fixture-1"
        );
        let st = stage.status();
        assert_eq!(st.model_source.as_deref(), Some("fleet"));
        assert_eq!(st.fallback_reason, None);
        let nan = std::fs::read(onnx_fixture("forecast_nan.onnx")).unwrap();
        let e = stage.install("fleet model forecast 4", &nan).unwrap_err();
        assert!(e.to_string().contains("fleet model forecast 4"), "{e}");
        assert_eq!(stage.status().model_version.as_deref(), Some("fixture-1"));
        // A model whose interval the capture interval does not divide.
        let cfg = PredictConfig::default();
        let mut s3 = ForecastStage::live(&cfg, 3000, None, None, runtime::default_runtime());
        let e = s3.install("fleet m", &good).unwrap_err().to_string();
        assert!(
            e.contains("not a multiple of capture.interval_ms 3000"),
            "{e}"
        );
        // The fleet's model at start wins over the configured one.
        let p = onnx_fixture("forecast_crossing.onnx");
        let cfg = PredictConfig {
            model: p.to_str().unwrap().into(),
            ..Default::default()
        };
        let s4 = ForecastStage::live(
            &cfg,
            1000,
            None,
            Some(("fleet", &good)),
            runtime::default_runtime(),
        );
        assert_eq!(s4.status().model_version.as_deref(), Some("fixture-1"));
    }

    #[test]
    fn calibration_is_kept_under_the_state_dir_across_restarts() {
        let d = tempfile::tempdir().unwrap();
        let mut stage = live("none", Some(d.path()));
        drive(&mut stage, "compress.umbra", |_, _| {});
        stage.save().unwrap();
        let saved = calibrate::load(d.path()).unwrap().unwrap();
        assert!(saved.workloads() > 0);
        let again = live("none", Some(d.path()));
        match &again.predictor {
            Forecaster::Calibrated(c) => assert_eq!(c.saved(), saved),
            Forecaster::Plain(_) => panic!("not calibrated"),
        }
        // A damaged file: calibration starts over, the stage still runs.
        std::fs::write(calibrate::path(d.path()), b"UMBRACAL\x01\x00junk").unwrap();
        let fresh = live("none", Some(d.path()));
        assert_eq!(fresh.status().predictor, "autopilot+aci");
    }
}
