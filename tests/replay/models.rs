//! The shipped models judged on the shipped held-out recordings (`models/data/test/`, never
//! trained or tuned on), through `umbra eval`'s own scoring: a model that gets worse than
//! these bounds fails here.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use umbra::{
    aggregate::GroupBy,
    config::Config,
    eval::{self, EvalOptions, Score},
    predict::{PredictConfig, Target, runtime::default_runtime, source::shipped},
    simulate,
};

/// The held-out recordings as they ship, compressed by `zstd` (the reader decompresses
/// them), in the order the training report exports them.
fn held_out() -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/data/test");
    ["test-steps", "test-daily", "test-web", "test-requests"]
        .iter()
        .map(|name| src.join(format!("{name}.umbra.zst")))
        .collect()
}

/// `umbra eval`'s defaults, with these models.
fn options(
    model: Option<(String, Vec<u8>)>,
    request_model: Option<(String, Vec<u8>)>,
) -> EvalOptions {
    EvalOptions {
        interval_ms: None,
        score_after: 0.0,
        model,
        plot: None,
        plot_workload: None,
        plot_target: Target::Cpu,
        group_by: GroupBy::Exe,
        request_model,
    }
}

/// The held-out recordings the forecaster is judged on (`test-requests` is the request
/// model's: its workloads are short runs of one program each).
const FORECAST_HELD_OUT: usize = 3;

/// The shipped forecaster against every baseline on the held-out recordings, as `umbra
/// eval` scores them (forecasts for the next 6 buckets, scored in the buckets the workload
/// ran in; each recording through fresh predictors). Measured when the model was shipped
/// (2026.12.07-2, its CPU band scaled by the window's volatility, 18 buckets): as they are,
/// model / best baseline 0.899 for CPU (vs autopilot; 0.908 with 12 buckets, 0.977 for
/// 2026.12.05-2) and 0.963 for memory (vs last) — the goal of 0.80 is not reached;
/// calibrated, model+aci / best calibrated baseline 0.726 for CPU (vs autopilot+aci) and
/// 0.973 for memory (vs ewma+aci), its p10–p90 holding 88.5% of CPU and 82.4% of memory
/// outcomes.
#[test]
fn the_shipped_forecaster_holds_its_ground_on_held_out_recordings() {
    let files = held_out();
    let opts = options(
        shipped::FORECAST.map(|b| ("shipped forecast.onnx".to_string(), b.to_vec())),
        None,
    );
    let rt = default_runtime();
    let report = eval::run(
        &files[..FORECAST_HELD_OUT],
        &PredictConfig::default(),
        &opts,
        rt.as_ref(),
    )
    .unwrap();
    // The model alone, or with its candidates as the live agent runs it
    // (`MODEL/seasonal,ewma,autopilot`).
    let rows = |target: &str, kind: &str, calibrated: bool, live: bool| -> Vec<&Score> {
        report
            .forecast
            .iter()
            .filter(|s| {
                s.target == target
                    && s.kind == kind
                    && s.predictor.ends_with("+aci") == calibrated
                    && s.predictor.contains('/') == live
            })
            .collect()
    };
    // The model's row against the best baseline's: of the same kind (as it is, or
    // calibrated), or of either kind (`any`).
    let ratio_vs = |target: &str, calibrated: bool, live: bool, any: bool| -> (f64, &Score) {
        let model = rows(target, "model", calibrated, live);
        let [m] = model[..] else {
            panic!("{target}: model rows {model:?}")
        };
        let mut baselines = rows(target, "baseline", calibrated, false);
        if any {
            baselines.extend(rows(target, "baseline", !calibrated, false));
        }
        let best = baselines
            .into_iter()
            .min_by(|a, b| a.pinball.total_cmp(&b.pinball))
            .unwrap();
        assert_eq!(m.n, best.n);
        assert!(m.n >= 10_000, "{target}: {} outcomes scored", m.n);
        let r = m.pinball / best.pinball;
        eprintln!(
            "{target}{}: {} {:.4e} ({:.1}% covered), best {} {:.4e}: ratio {r:.3}",
            if calibrated { " calibrated" } else { "" },
            m.predictor,
            m.pinball,
            100.0 * m.coverage,
            best.predictor,
            best.pinball
        );
        (r, m)
    };
    let ratio_of =
        |target: &str, calibrated: bool, live: bool| ratio_vs(target, calibrated, live, false);
    let ratio = |target: &str, calibrated: bool| ratio_of(target, calibrated, false);
    // The live stack (the model blended with the seasonal, EWMA and Autopilot-like
    // candidates, per quantile among those near the best): measured 0.867 / 0.889 as it
    // is, 0.731 / 0.949 calibrated (its band holding 84.7% of CPU and 80.9% of memory
    // outcomes). Before the blend (the seasonal and EWMA candidates taking over where
    // they were clearly better) 0.889 / 0.961 and 0.725 / 0.989: this fails.
    for (target, bound, calibrated) in [("cpu", 0.88, 0.77), ("rss", 0.93, 0.97)] {
        let (r, _) = ratio_of(target, false, true);
        assert!(r <= bound, "{target}, live stack: {r:.3}");
        let (r, _) = ratio_of(target, true, true);
        assert!(r <= calibrated, "{target}, live stack calibrated: {r:.3}");
    }
    // What the agent forecasts with — calibrated, alone or as the live stack — against the
    // best baseline as it is or calibrated, whichever is lower: measured 0.95 / 0.97 (CPU
    // / memory) alone, 0.94 / 0.99 as the live stack. Before memory's scores were in fixed
    // units, calibration made the memory forecasts worse than the plain `last` (1.08 /
    // 1.12).
    for live in [false, true] {
        for target in ["cpu", "rss"] {
            let (r, _) = ratio_vs(target, true, live, true);
            assert!(
                r <= 1.00,
                "{target} calibrated (live {live}) vs any baseline: {r:.3}"
            );
        }
    }
    let (cpu, _) = ratio("cpu", false);
    let (memory, _) = ratio("rss", false);
    let (cpu_cal, cpu_m) = ratio("cpu", true);
    let (memory_cal, memory_m) = ratio("rss", true);
    assert!(cpu <= 0.94, "cpu: pinball / best baseline {cpu:.3}");
    assert!(
        memory <= 1.00,
        "memory: pinball / best baseline {memory:.3}"
    );
    assert!(
        cpu_cal <= 0.80,
        "cpu calibrated: pinball / best calibrated baseline {cpu_cal:.3}"
    );
    assert!(
        memory_cal <= 1.00,
        "memory calibrated: pinball / best calibrated baseline {memory_cal:.3}"
    );
    // Calibration's promise: the p10–p90 band holds about 80% (idle buckets, a band of
    // zeros around a zero, are always held: CPU's share runs high).
    assert!(
        (0.75..=0.85).contains(&memory_m.coverage),
        "memory calibrated coverage {:.3}",
        memory_m.coverage
    );
    assert!(
        (0.75..=0.95).contains(&cpu_m.coverage),
        "cpu calibrated coverage {:.3}",
        cpu_m.coverage
    );
}

/// Each recording replays through fresh predictors: the order of the files changes
/// nothing (a workload of the same executable in two recordings once carried the baselines'
/// history from the first into the second).
#[test]
fn the_order_of_the_recordings_does_not_change_the_forecast_scores() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let (a, b) = (
        fixtures.join("compile.umbra"),
        fixtures.join("compress.umbra"),
    );
    let rt = default_runtime();
    let run = |files: &[PathBuf]| {
        eval::run(
            files,
            &PredictConfig::default(),
            &options(None, None),
            rt.as_ref(),
        )
        .unwrap()
        .forecast
    };
    let ab = run(&[a.clone(), b.clone()]);
    assert!(ab.iter().any(|s| s.n > 0), "nothing scored: {ab:?}");
    assert_eq!(ab, run(&[b, a]));
}

/// The per-request model against the profile-only baseline (the empirical quantiles of an
/// executable's past runs) on the input-size-dependent programs of the held-out
/// recordings. Measured when the model was shipped (2026.12.05-2: `requests` and
/// `test-requests` recorded with every run's peak RSS measured; unmeasured peak RSS left out
/// of training and of the profiles): pinball ratio cpu_seconds 0.680, peak_rss_bytes 0.802,
/// duration_seconds 0.632, io_bytes 0.462; p10–p90 coverage 0.60, 0.67, 0.71, 0.70. The
/// model before it (2026.12.05-1) reads 0.909, 2.081, 0.867, 0.641 here, and fails.
#[test]
fn the_shipped_request_model_beats_the_profile_baseline_on_held_out_requests() {
    let files = held_out();
    let opts = options(
        None,
        shipped::REQUEST.map(|b| ("shipped request.onnx".to_string(), b.to_vec())),
    );
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
    // The acceptance: at least 20% below the profile.
    assert!(cpu <= 0.80, "cpu_seconds ratio {cpu:.3}");
    assert!(duration <= 0.80, "duration_seconds ratio {duration:.3}");
    assert!(io <= 0.80, "io_bytes ratio {io:.3}");
    // At the goal, not below it (0.787).
    assert!(rss <= 0.85, "peak_rss_bytes ratio {rss:.3}");
    // As the live agent runs it (`MODEL/profile`: the guard handing an executable's outcome
    // to the profile where the model was clearly worse on its last runs): 0.77 / 0.79 /
    // 0.72 / 0.48, within the same bounds.
    for (t, bound) in [
        ("cpu_seconds", 0.80),
        ("peak_rss_bytes", 0.85),
        ("duration_seconds", 0.80),
        ("io_bytes", 0.80),
    ] {
        let live = scores
            .iter()
            .find(|s| s.kind == "model" && s.predictor.ends_with("/profile") && s.target == t)
            .unwrap_or_else(|| panic!("no live request score for {t}: {scores:?}"));
        let r = live.pinball / of("baseline", t).pinball;
        eprintln!("{t}: live {:.4e} ratio {r:.3}", live.pinball);
        assert!(r <= bound, "{t}: the live agent's ratio {r:.3}");
    }
}

/// `umbra simulate` with the agent's defaults on the held-out recordings the forecaster is
/// judged on: the shipped model and tiers against the VPA-like recommender. Measured with
/// requests placed on their own, CPU's margin free to fall below its start and `cpu.max`
/// earned before the memory limits (2026-12-07, evening): CPU slack 35.9% vs VPA-like's
/// 35.1% at 4.66% throttled intervals vs 7.35% (the margin held at its start: 37.6% at
/// 3.74%), memory slack 30.7% vs 39.2% with 23 violations vs 79 (with `memory.high` on p90 alone, before its quantile adapted, 38.0%
/// with 10: this fails). The goal — slack at least 30% below VPA-like's with no more
/// violations — is reached by neither; with the limits at the forecast's p90 (before
/// 2026-12-06) CPU slack was 47.1%, 1.34× VPA-like's, and this fails.
#[test]
fn the_shipped_allocation_holds_its_ground_against_vpa_on_held_out_recordings() {
    let files: Vec<PathBuf> = held_out().into_iter().take(FORECAST_HELD_OUT).collect();
    let mut sim = simulate::SimConfig::new(&Config::default());
    sim.strategies = vec!["umbra".into(), "vpa".into()];
    let s = simulate::simulate(&files, &sim).unwrap();
    eprintln!("{}", simulate::table(&s.report));
    let of = |n: &str| {
        s.report
            .strategies
            .iter()
            .find(|x| x.strategy == n)
            .unwrap()
    };
    let (u, v) = (of("umbra"), of("vpa"));
    assert!(
        u.cpu_slack <= 1.1 * v.cpu_slack,
        "CPU slack {:.3} vs VPA-like's {:.3}",
        u.cpu_slack,
        v.cpu_slack
    );
    assert!(
        u.memory_slack <= 0.85 * v.memory_slack,
        "memory slack {:.3} vs VPA-like's {:.3}",
        u.memory_slack,
        v.memory_slack
    );
    assert!(
        u.throttled_fraction <= 0.75 * v.throttled_fraction,
        "throttled {:.4} vs VPA-like's {:.4}",
        u.throttled_fraction,
        v.throttled_fraction
    );
    assert!(
        u.memory_violations <= v.memory_violations / 2,
        "{} memory violations vs VPA-like's {}",
        u.memory_violations,
        v.memory_violations
    );
}
