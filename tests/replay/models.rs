//! The shipped models judged on the shipped held-out recordings (`models/data/test/`, never
//! trained or tuned on), through `umbra eval`'s own scoring: a model that gets worse than
//! these bounds fails here.
#![allow(clippy::unwrap_used)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use umbra::{
    aggregate::GroupBy,
    eval::{self, EvalOptions},
    predict::{Target, runtime::default_runtime, source::shipped},
};

/// The held-out recordings, decompressed (`zstd -d`) into `dir`, in the order the training
/// report exports them.
fn held_out(dir: &Path) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/data/test");
    ["test-steps", "test-daily", "test-web", "test-requests"]
        .iter()
        .map(|name| {
            let out = dir.join(format!("{name}.umbra"));
            let st = Command::new("zstd")
                .args(["-q", "-d", "-f"])
                .arg(src.join(format!("{name}.umbra.zst")))
                .arg("-o")
                .arg(&out)
                .status()
                .expect("zstd (apt install zstd; cargo xtask test installs it)");
            assert!(st.success(), "zstd -d {name}");
            out
        })
        .collect()
}

/// The per-request model against the profile-only baseline (the empirical quantiles of an
/// executable's past runs) on the input-size-dependent programs of the held-out
/// recordings. Measured when the model was shipped: pinball ratio cpu_seconds 0.877,
/// peak_rss_bytes 0.837, duration_seconds 0.872, io_bytes 0.582 (mean 0.79).
#[test]
fn the_shipped_request_model_beats_the_profile_baseline_on_held_out_requests() {
    let dir = tempfile::tempdir().unwrap();
    let files = held_out(dir.path());
    let opts = EvalOptions {
        interval_ms: None,
        score_after: 0.0,
        model: None,
        plot: None,
        plot_workload: None,
        plot_target: Target::Cpu,
        group_by: GroupBy::Exe,
        request_model: shipped::REQUEST.map(|b| ("shipped request.onnx".to_string(), b.to_vec())),
    };
    let rt = default_runtime();
    let scores = eval::requests(&files, &opts, rt.as_ref()).unwrap();
    let of = |kind: &str, target: &str| {
        scores
            .iter()
            .find(|s| s.kind == kind && s.target == target)
            .unwrap_or_else(|| panic!("no {kind} score for {target}: {scores:?}"))
    };
    let mut ratios = Vec::new();
    for t in [
        "cpu_seconds",
        "peak_rss_bytes",
        "duration_seconds",
        "io_bytes",
    ] {
        let (m, p) = (of("model", t), of("baseline", t));
        assert_eq!(m.n, p.n);
        assert!(m.n >= 300, "{t}: {} requests scored", m.n);
        let r = m.pinball / p.pinball;
        eprintln!(
            "{t}: model {:.4e} profile {:.4e} ratio {r:.3} (n {})",
            m.pinball, p.pinball, m.n
        );
        assert!(
            r <= 0.90,
            "{t}: the model's pinball is {r:.3} of the profile's"
        );
        ratios.push(r);
    }
    // Input size drives the bytes a request reads and writes.
    assert!(ratios[3] <= 0.80, "io_bytes ratio {:.3}", ratios[3]);
    let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
    assert!(mean <= 0.80, "mean ratio {mean:.3}");
}
