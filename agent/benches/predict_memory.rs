//! What the predict stage adds to the agent's resident memory with its models loaded: the
//! process's RSS before anything is loaded, after loading the forecaster (the benchmark's
//! size, tests/fixtures/onnx/forecast_bench.onnx) and the request model, and after 100
//! ticks of 1,000 workloads through the calibrated forecaster (its state full); then the
//! live agent's stack (the shipped forecaster with its candidates blended, calibrated)
//! after 300 ticks of 1,000 periodic workloads (the seasonal candidate's window of 288
//! buckets full). Not criterion: memory is the point.
//! `cargo bench -p umbra --bench predict_memory`.

mod common;

use umbra::predict::{
    Bucket, Predictor,
    calibrate::{Calibrated, CalibrationConfig},
    features::N_FEATURES,
    onnx::{Model, OnnxForecaster},
    runtime::default_runtime,
    schema::ModelKind,
    source::shipped,
};

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn fixture(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/onnx")
        .join(name);
    std::fs::read(p).expect("fixture")
}

fn main() {
    let mib = |b: u64| b as f64 / 1048576.0;
    let before = rss_bytes();
    let rt = default_runtime();
    let m = Model::load(
        "forecast_bench.onnx",
        &fixture("forecast_bench.onnx"),
        ModelKind::Forecast,
        rt.as_ref(),
    )
    .expect("forecaster");
    let r = Model::load(
        "request_fixture.onnx",
        &fixture("request_fixture.onnx"),
        ModelKind::Request,
        rt.as_ref(),
    )
    .expect("request model");
    let loaded = rss_bytes();
    let mut p = Calibrated::new(
        Box::new(OnnxForecaster::new(m).expect("forecaster")),
        &CalibrationConfig::default(),
    );
    let n = 1000;
    let ids = common::ids(n);
    let mut peak = 0;
    for t in 0..100u64 {
        let bs: Vec<Vec<Bucket>> = (0..n)
            .map(|i| {
                (0..24u64)
                    .map(|k| {
                        let mut f = [0.0f32; N_FEATURES];
                        f[0] = ((i as u64 + k + t) % 13) as f32 * 0.1;
                        f[1] = 1e8 + (t * 1000) as f32;
                        f[N_FEATURES - 1] = 1.0;
                        Bucket {
                            end_ms: (t + k + 1) * 5000,
                            features: f,
                        }
                    })
                    .collect()
            })
            .collect();
        let batch = common::batch(&ids, &bs);
        std::hint::black_box(p.forecast(&batch));
        peak = peak.max(rss_bytes());
    }
    let after = rss_bytes();
    drop(r);
    println!(
        "predict memory: RSS before {:.1} MiB, models loaded {:.1} MiB (+{:.1}), after 100 ticks of {n} workloads calibrated {:.1} MiB (+{:.1} over loaded; peak {:.1})",
        mib(before),
        mib(loaded),
        mib(loaded - before),
        mib(after),
        mib(after.saturating_sub(loaded)),
        mib(peak)
    );
    drop(p);
    // The live stack.
    let shipped = Model::load(
        "forecast.onnx",
        shipped::FORECAST.expect("models/forecast.onnx is shipped"),
        ModelKind::Forecast,
        rt.as_ref(),
    )
    .expect("the shipped forecaster");
    let mut live = common::live(OnnxForecaster::new(shipped).expect("forecaster"));
    let live_before = rss_bytes();
    let mut live_peak = 0;
    for t in 0..300usize {
        let bs = common::windows(n, t);
        let batch = common::batch(&ids, &bs);
        std::hint::black_box(live.forecast(&batch));
        live_peak = live_peak.max(rss_bytes());
    }
    println!(
        "predict memory, live stack: RSS {:.1} MiB before, {:.1} MiB after 300 ticks of {n} periodic workloads (peak {:.1})",
        mib(live_before),
        mib(rss_bytes()),
        mib(live_peak)
    );
}
