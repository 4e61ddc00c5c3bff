//! `[predict]`: the forecast interval, the baselines' settings, the models.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

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
}

impl Default for PredictConfig {
    fn default() -> Self {
        PredictConfig {
            interval_ms: None,
            horizon: 6,
            window: 24,
            forget_after: 720,
        }
    }
}

fn check<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            value: value.to_string(),
            expected: format!("between {} and {}", range.start(), range.end()),
        })
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
        Ok(())
    }
}
