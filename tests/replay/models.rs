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
/// recordings. Measured when the model was shipped: pinball ratio cpu_seconds 0.863,
/// peak_rss_bytes 1.062, duration_seconds 0.859, io_bytes 0.581; p10–p90 coverage 0.64,
/// 0.85, 0.59, 0.78 (0.34, 0.74, 0.43, 0.48 before the conformal widening).
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
            "{t}: model {:.4e} profile {:.4e} ratio {r:.3}, coverage {:.2} (n {})",
            m.pinball, p.pinball, m.coverage, m.n
        );
        // A calibrated band: a model whose band holds half the outcomes or less is unsafe
        // to set limits from.
        assert!(m.coverage >= 0.55, "{t}: p10–p90 holds {:.2}", m.coverage);
        ratios.push(r);
    }
    let [cpu, rss, duration, io] = ratios[..] else {
        unreachable!()
    };
    assert!(cpu <= 0.90, "cpu_seconds ratio {cpu:.3}");
    assert!(duration <= 0.90, "duration_seconds ratio {duration:.3}");
    // Input size drives the bytes a request reads and writes.
    assert!(io <= 0.80, "io_bytes ratio {io:.3}");
    // The widening costs memory's pinball (its band was already wide enough here).
    assert!(rss <= 1.10, "peak_rss_bytes ratio {rss:.3}");
}
