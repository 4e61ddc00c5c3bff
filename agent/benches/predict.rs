//! Hot paths of the predict stage: one tick of forecasts for 1,000 workloads and for one
//! (the shipped forecaster, models/forecast.onnx: an MLP 64 over an 18-bucket window, 6
//! steps, 4 targets, 3 quantiles — as it is, calibrated, as the live agent runs it (the
//! candidate baselines blended per workload, calibrated), and the fallback baseline), and
//! a per-request prediction from the profile store and through the
//! shipped request model, alone and as the live agent makes it from an exec event.
//! `cargo bench -p umbra --bench predict` (or `cargo xtask bench micro`).

mod common;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use umbra::{
    aggregate::WorkloadId,
    capture::{Argv, ArgvSource, Identity, Lifecycle, LifecycleKind},
    predict::{
        PredictConfig, Predictor, baseline,
        calibrate::{Calibrated, CalibrationConfig},
        exec::{Exec, ProfileBaseline, RequestPredictor, load_request_model},
        onnx::{Model, OnnxForecaster},
        per_request::{self, ProfilePredictor},
        profiles::{ProfileStore, Run},
        request::{DEFAULT_HASH_BUCKETS, ExecFacts, NodeLoad, RequestFeaturizer},
        runtime::default_runtime,
        schema::ModelKind,
        source::shipped,
    },
};

/// The shipped forecaster, or the file `UMBRA_BENCH_FORECAST` names (another build of it,
/// to compare in one run).
fn model() -> OnnxForecaster {
    let other = std::env::var_os("UMBRA_BENCH_FORECAST")
        .map(|p| std::fs::read(&p).expect("the file UMBRA_BENCH_FORECAST names"));
    let bytes = match &other {
        Some(b) => b.as_slice(),
        None => shipped::FORECAST.expect("models/forecast.onnx is shipped"),
    };
    let rt = default_runtime();
    let m = Model::load("forecast.onnx", bytes, ModelKind::Forecast, rt.as_ref()).expect("loads");
    OnnxForecaster::new(m).expect("a forecaster")
}

/// One tick of `p` per iteration, the clock moving on; the windows are made and dropped
/// outside the measured time (the agent's featurizer keeps them from tick to tick).
fn bench_ticks(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: String,
    p: &mut dyn Predictor,
    ids: &[WorkloadId],
) {
    let mut tick = 0;
    g.bench_function(name, |b| {
        b.iter_batched_ref(
            || {
                tick += 1;
                common::windows(ids.len(), tick)
            },
            |bs| black_box(p.forecast(black_box(&common::batch(ids, bs)))).len(),
            BatchSize::LargeInput,
        )
    });
}

fn forecasts(c: &mut Criterion) {
    let mut g = c.benchmark_group("forecast");
    for n in [1usize, 1000] {
        let ids = common::ids(n);
        g.throughput(Throughput::Elements(n as u64));
        bench_ticks(&mut g, format!("onnx/{n}"), &mut model(), &ids);
        let mut cal = Calibrated::new(Box::new(model()), &CalibrationConfig::default());
        bench_ticks(&mut g, format!("onnx+aci/{n}"), &mut cal, &ids);
        let cfg = PredictConfig::default();
        let mut live = common::live(model());
        bench_ticks(&mut g, format!("live/{n}"), &mut live, &ids);
        let mut fallback = baseline::by_name(&cfg.fallback, &cfg).expect("the fallback");
        bench_ticks(
            &mut g,
            format!("{}/{n}", cfg.fallback),
            fallback.as_mut(),
            &ids,
        );
    }
    g.finish();
}

fn requests(c: &mut Criterion) {
    // 1,000 executables with 64 runs each: the store full.
    let mut store = ProfileStore::in_memory(4096);
    for k in 0..1000u64 {
        for r in 0..64u64 {
            let v = ((k * 7 + r * 13) % 101) as f32;
            store
                .record(
                    &format!("exe:sha256:{k:064x}"),
                    &format!("prog{}", k % 50),
                    "sh",
                    Run {
                        outcome: [v * 0.01, v * 1e6, v * 0.02, v * 1e5],
                        input_bytes: r * 1000,
                        ended_ms: k * 1000 + r,
                        used: Some([0.8, 0.9]),
                    },
                )
                .expect("in memory");
        }
    }
    let mut p = ProfileBaseline::new();
    let known = format!("exe:sha256:{:064x}", 500);
    let mut g = c.benchmark_group("request");
    g.bench_function("profile", |b| {
        b.iter(|| {
            black_box(p.predict(
                &store,
                black_box(&Exec {
                    tgid: 1,
                    exec_ns: 1,
                    key: &known,
                    name: "prog0",
                    parent: "sh",
                    input_bytes: 0,
                }),
            ))
        })
    });
    g.bench_function("prior", |b| {
        b.iter(|| {
            black_box(p.predict(
                &store,
                black_box(&Exec {
                    tgid: 1,
                    exec_ns: 1,
                    key: "exe:sha256:new",
                    name: "prog7",
                    parent: "sh",
                    input_bytes: 0,
                }),
            ))
        })
    });
    // The shipped request model (models/request.onnx: 75 features, 128-64 MLP) on the row
    // the featurizer makes for an exec of a known executable given an input file: both
    // parts of a live prediction.
    let featurizer = RequestFeaturizer::new(DEFAULT_HASH_BUCKETS);
    let names: Vec<&str> = featurizer.names().iter().map(String::as_str).collect();
    let rt = default_runtime();
    let bytes = shipped::REQUEST.expect("models/request.onnx is shipped");
    let mut m =
        load_request_model("request.onnx", bytes, &names, rt.as_ref()).expect("a request model");
    let facts = ExecFacts {
        key: known.clone(),
        exe: "/usr/bin/prog0".into(),
        argv: vec!["prog0".into(), "-9".into(), "/data/in-64".into()],
        inputs: vec![(2, 64 << 20)],
        parent: "sh".into(),
        ..Default::default()
    };
    let (mut row32, mut row) = (Vec::new(), Vec::new());
    g.bench_function("model", |b| {
        b.iter(|| {
            featurizer.features_into(
                black_box(&facts),
                store.get(&known),
                NodeLoad::default(),
                &mut row32,
            );
            row.clear();
            row.extend(row32.iter().map(|v| *v as f64));
            black_box(m.predict_row(
                &store,
                &Exec {
                    tgid: 1,
                    exec_ns: 1,
                    key: &known,
                    name: "prog0",
                    parent: "sh",
                    input_bytes: 64 << 20,
                },
                &row,
            ))
        })
    });
    // The live agent's whole path from an exec event: the process's executable read from
    // /proc (this bench's own, its fingerprint cached after the first), the request opened,
    // its row made, the shipped request model over a profile of 64 runs.
    let me = std::env::current_exe().expect("the bench's executable");
    let exe = me.to_str().expect("a UTF-8 path").to_string();
    let key = format!(
        "exe:{}",
        Identity::new()
            .exe_hash(u32::MAX, Some(&exe))
            .expect("the bench's executable, hashed")
    );
    let mut own = ProfileStore::in_memory(16);
    for r in 0..64u64 {
        let v = (r % 17) as f32;
        let run = Run {
            outcome: [v * 0.01, v * 1e6, v * 0.02, v * 1e5],
            input_bytes: 0,
            ended_ms: r,
            used: None,
        };
        own.record(&key, "predict", "cargo", run)
            .expect("in memory");
    }
    let mut live = ProfilePredictor::new(own).with_model(per_request::request_model("shipped"));
    let pid = std::process::id();
    let ev = Lifecycle {
        kind: LifecycleKind::Exec {
            filename: exe.clone(),
            argv: Argv::from_raw(b"predict\0--bench\0", 16, ArgvSource::Proc),
            inputs: Vec::new(),
        },
        pid,
        tgid: pid,
        ppid: None,
        timestamp_ns: 1,
        cgroup_id: 0,
        comm: "predict".into(),
    };
    g.bench_function("live exec", |b| {
        b.iter(|| {
            live.event(black_box(&ev));
            black_box(live.predict_exec(black_box(&ev)).expect("a prediction"))
        })
    });
    g.finish();
}

criterion_group!(benches, forecasts, requests);
criterion_main!(benches);
