//! What the predict benchmarks share: workloads, their windows, a batch, and the live
//! agent's forecast stack.

use umbra::{
    aggregate::WorkloadId,
    predict::{
        Batch, Bucket, PredictConfig, Predictor, Series,
        calibrate::{Calibrated, CalibrationConfig},
        features::N_FEATURES,
        onnx::OnnxForecaster,
        select::Combine,
        select_with_candidates,
    },
};

const WINDOW: usize = 24;

pub fn ids(n: usize) -> Vec<WorkloadId> {
    (0..n)
        .map(|i| WorkloadId(format!("exe:sha256:{i:064x}")))
        .collect()
}

/// `n` workloads' windows of 24 buckets at tick `tick`, with busy, varied values (each
/// feature periodic, 97 buckets): each tick the windows slide one bucket (one new bucket
/// per workload, as live).
pub fn windows(n: usize, tick: usize) -> Vec<Vec<Bucket>> {
    (0..n)
        .map(|i| {
            (tick..tick + WINDOW)
                .map(|k| {
                    let mut f = [0.0f32; N_FEATURES];
                    for (j, v) in f.iter_mut().enumerate() {
                        *v = ((i * 31 + k * 7 + j * 3) % 97) as f32 * 10.0;
                    }
                    f[0] = ((i + k) % 13) as f32 * 0.1;
                    f[N_FEATURES - 1] = 1.0;
                    Bucket {
                        end_ms: (k as u64 + 1) * 5000,
                        features: f,
                    }
                })
                .collect()
        })
        .collect()
}

/// The workloads' windows as one batch, at the end of their last bucket.
pub fn batch<'a>(ids: &'a [WorkloadId], bs: &'a [Vec<Bucket>]) -> Batch<'a> {
    Batch {
        now_ms: bs[0].last().map_or(0, |b| b.end_ms),
        interval_ms: 5000,
        series: ids
            .iter()
            .zip(bs)
            .map(|(id, b)| Series {
                workload: id,
                name: "w",
                buckets: b,
            })
            .collect(),
    }
}

/// The live agent's stack: `model` with the candidate baselines beside it per workload
/// (`predict.candidates`, combined as `predict.combine` says), calibrated.
pub fn live(model: OnnxForecaster) -> Calibrated {
    let mut cfg = PredictConfig::default();
    // Another set of candidates (comma-separated names; empty: none), and another way of
    // combining them (`select`), to compare in one build.
    if let Some(c) = std::env::var_os("UMBRA_BENCH_CANDIDATES") {
        let c = c.to_string_lossy().into_owned();
        cfg.candidates = c
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
    }
    if std::env::var_os("UMBRA_BENCH_COMBINE").is_some_and(|c| c == "select") {
        cfg.combine = Combine::Select;
    }
    let stack: Box<dyn Predictor> = match select_with_candidates(&cfg, Box::new(model)) {
        Ok(s) => Box::new(s),
        Err(model) => model,
    };
    Calibrated::new(stack, &CalibrationConfig::default())
}
