#![allow(clippy::unwrap_used)]

use std::path::Path;

use super::*;
use crate::{
    aggregate::GroupBy,
    export,
    predict::{ForecastStage, PredictConfig, features::feature_index},
    record::RecordError,
};

#[test]
fn the_features_read_by_position_are_the_ones_named() {
    assert_eq!(feature_index("syscalls_ps"), Some(SYSCALLS));
    assert_eq!(feature_index("processes"), Some(PROCESSES));
    assert_eq!(feature_index("execs_ps"), Some(EXECS));
    assert_eq!(feature_index("read_bps"), Some(READ));
    assert_eq!(feature_index("write_bps"), Some(WRITE));
}

#[test]
fn beyond_counts_band_widths_with_a_floor() {
    let b = Band {
        p10: 1.0,
        p50: 1.5,
        p90: 2.0,
    };
    assert_eq!(beyond(Target::Cpu, 1.5, &b), 0.0);
    assert!((beyond(Target::Cpu, 3.0, &b) - 1.0).abs() < 1e-9);
    assert!((beyond(Target::Cpu, 0.5, &b) - 0.5).abs() < 1e-9);
    // A zero-width band: the floor (0.05 cores), not infinity.
    let z = Band::default();
    assert!((beyond(Target::Cpu, 0.1, &z) - 2.0).abs() < 1e-9);
}

/// A recording through aggregate, the fallback forecaster and the detector, as the agent
/// runs them.
pub fn detect_in(rec: &Path, interval_ms: u64) -> Vec<Anomaly> {
    let cfg = PredictConfig {
        interval_ms: Some(interval_ms),
        ..Default::default()
    };
    let mut stage = ForecastStage::baseline(&cfg, 1000);
    let mut d = Detector::new(AnomalyConfig::default(), interval_ms);
    let mut out = Vec::new();
    export::replay::<RecordError>(rec, GroupBy::Exe, |s| {
        if let export::Step::Window(_, w) = s {
            for j in d.push(w) {
                out.extend(j.anomalies);
            }
            if let Some(fs) = stage.push(w) {
                d.expect(&fs);
            }
        }
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn the_idle_recording_has_no_anomaly() {
    let rec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/idle.umbra");
    let found = detect_in(&rec, 1000);
    assert!(
        found.is_empty(),
        "{:#?}",
        found.iter().map(Anomaly::text).collect::<Vec<_>>()
    );
}

#[test]
fn config_values_are_checked() {
    assert!(AnomalyConfig::default().validate().is_ok());
    let bad = AnomalyConfig {
        spike: 0.5,
        ..Default::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("anomaly.spike")
    );
}
