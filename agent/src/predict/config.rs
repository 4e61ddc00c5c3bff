//! `[predict]`: the forecast interval, the baselines' settings, the models.

use serde::{Deserialize, Serialize};

use super::{
    baseline::{AutopilotConfig, BASELINES, EwmaConfig, SeasonalConfig, VpaConfig},
    calibrate::CalibrationConfig,
    select::Combine,
};
use crate::config::{ConfigError, check};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PredictConfig {
    /// Length of a forecast step, ms (a multiple of capture.interval_ms); default: 5 s, or
    /// the next multiple of the capture interval. A model brings its own interval and then
    /// sets it.
    pub interval_ms: Option<u64>,
    /// Steps ahead the baselines forecast (a model brings its own horizon).
    pub horizon: usize,
    /// Buckets of history the baselines look at (last value, EWMA warm-up, seasonal naive's
    /// period search).
    pub window: usize,
    /// Absent buckets in a row after which a workload is forgotten.
    pub forget_after: u32,
    /// The baseline that forecasts while no model runs (one of `last`, `ewma`,
    /// `seasonal`, `vpa`, `autopilot`).
    pub fallback: String,
    /// Baselines that forecast beside the model (or the fallback) per workload and target,
    /// their forecasts and its combined as `combine` says (e.g. `seasonal` for a batch
    /// step every few minutes that the model does not see; `ewma` for a level the model
    /// follows too slowly). A candidate that is the primary itself (the fallback, while no
    /// model runs) is left out. Empty: the model alone.
    pub candidates: Vec<String>,
    /// How the candidates' forecasts and the primary's become one: `"blend"` (per
    /// workload, target and quantile, the mean of every predictor's whose recent loss of
    /// it is within `blend_within` × the lowest; those further behind fall off steeply) or
    /// `"select"` (per workload and target, the predictor of the lowest recent loss,
    /// switched to when clearly better).
    pub combine: Combine,
    pub blend_within: f64,
    /// The forecast model: `"shipped"` (built into this binary from
    /// `models/forecast.onnx`), `"none"` (baselines only), or the path of an `.onnx` file,
    /// reloaded when it changes. A signed model from the fleet takes precedence.
    pub model: String,
    /// The per-request model, likewise (`models/request.onnx` when shipped).
    pub request_model: String,
    pub calibration: CalibrationConfig,
    pub ewma: EwmaConfig,
    pub seasonal: SeasonalConfig,
    pub vpa: VpaConfig,
    pub autopilot: AutopilotConfig,
}

impl Default for PredictConfig {
    fn default() -> Self {
        PredictConfig {
            interval_ms: None,
            horizon: 6,
            window: 24,
            forget_after: 720,
            fallback: "autopilot".into(),
            candidates: vec!["seasonal".into(), "ewma".into(), "autopilot".into()],
            combine: Combine::Blend,
            blend_within: 10.0,
            model: "shipped".into(),
            request_model: "shipped".into(),
            calibration: CalibrationConfig::default(),
            ewma: EwmaConfig::default(),
            seasonal: SeasonalConfig::default(),
            vpa: VpaConfig::default(),
            autopilot: AutopilotConfig::default(),
        }
    }
}

/// The default forecast step, ms.
pub const DEFAULT_INTERVAL_MS: u64 = 5000;

impl PredictConfig {
    /// The forecast step for a capture interval: the configured one, else 5 s rounded up
    /// to a multiple of the capture interval.
    pub fn interval_ms(&self, capture_interval_ms: u64) -> u64 {
        let c = capture_interval_ms.max(1);
        self.interval_ms
            .unwrap_or_else(|| DEFAULT_INTERVAL_MS.div_ceil(c) * c)
    }

    pub fn validate(&self, capture_interval_ms: u64) -> Result<(), ConfigError> {
        if let Some(ms) = self.interval_ms {
            check("predict.interval_ms", ms, 10..=3_600_000)?;
            if !ms.is_multiple_of(capture_interval_ms.max(1)) {
                return Err(ConfigError::Invalid {
                    key: "predict.interval_ms",
                    value: ms.to_string(),
                    expected: format!("a multiple of capture.interval_ms ({capture_interval_ms})"),
                });
            }
        }
        check("predict.horizon", self.horizon, 1..=1024)?;
        check("predict.window", self.window, 1..=4096)?;
        check("predict.forget_after", self.forget_after, 1..=1_000_000)?;
        if !BASELINES.contains(&self.fallback.as_str()) {
            return Err(ConfigError::Invalid {
                key: "predict.fallback",
                value: format!("{:?}", self.fallback),
                expected: format!("one of {}", BASELINES.join(", ")),
            });
        }
        if let Some(c) = self
            .candidates
            .iter()
            .find(|c| !BASELINES.contains(&c.as_str()))
        {
            return Err(ConfigError::Invalid {
                key: "predict.candidates",
                value: format!("{c:?}"),
                expected: format!("baselines among {}", BASELINES.join(", ")),
            });
        }
        check(
            "predict.calibration.coverage",
            self.calibration.coverage,
            0.05..=0.99,
        )?;
        check(
            "predict.calibration.gamma",
            self.calibration.gamma,
            0.0..=0.5,
        )?;
        check(
            "predict.calibration.scores",
            self.calibration.scores,
            8..=4096,
        )?;
        check(
            "predict.calibration.max_workloads",
            self.calibration.max_workloads,
            1..=1_000_000,
        )?;
        check("predict.blend_within", self.blend_within, 1.0..=1e6)?;
        check("predict.ewma.alpha", self.ewma.alpha, 0.001..=1.0)?;
        check(
            "predict.seasonal.max_period",
            self.seasonal.max_period,
            2..=10_000,
        )?;
        check("predict.vpa.half_life", self.vpa.half_life, 0.01..=1e9)?;
        check("predict.vpa.margin", self.vpa.margin, 0.0..=10.0)?;
        check("predict.vpa.target", self.vpa.target, 0.01..=1.0)?;
        check(
            "predict.autopilot.window",
            self.autopilot.window,
            1..=100_000,
        )?;
        check(
            "predict.autopilot.half_life",
            self.autopilot.half_life,
            0.01..=1e9,
        )?;
        check(
            "predict.autopilot.percentile",
            self.autopilot.percentile,
            0.01..=1.0,
        )?;
        check(
            "predict.autopilot.margin",
            self.autopilot.margin,
            0.0..=10.0,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use crate::config::Config;

    #[rstest]
    #[case("[predict]\ninterval_ms = 1500\n", "predict.interval_ms")]
    #[case("[predict]\nfallback = \"oracle\"\n", "predict.fallback")]
    #[case(
        "[predict]\ncandidates = [\"seasonal\", \"oracle\"]\n",
        "predict.candidates"
    )]
    #[case("[predict.vpa]\nmargin = -1.0\n", "predict.vpa.margin")]
    #[case("[predict.ewma]\nalpha = 0.0\n", "predict.ewma.alpha")]
    fn bad_values_name_the_key(#[case] text: &str, #[case] key: &str) {
        let e = Config::parse(text)
            .expect("parse")
            .validate()
            .expect_err("invalid");
        assert!(e.to_string().contains(key), "{e}");
    }

    #[test]
    fn the_default_interval_is_a_multiple_of_the_capture_interval() {
        let c = super::PredictConfig::default();
        assert_eq!(c.interval_ms(1000), 5000);
        assert_eq!(c.interval_ms(3000), 6000);
        assert_eq!(c.interval_ms(250), 5000);
        assert!(
            Config::parse("[capture]\ninterval_ms = 3000\n")
                .expect("parse")
                .validate()
                .is_ok()
        );
        assert!(Config::parse("[predict.vpa]\nhalf_ife = 3\n").is_err());
    }
}
