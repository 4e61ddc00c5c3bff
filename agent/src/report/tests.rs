//! The report over real recordings: what it gathers, and a page with every plot.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use super::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/{name}.umbra"))
}

#[tokio::test]
async fn a_recording_gives_usage_bands_and_a_plot_per_busy_workload() {
    let mut cfg = Config::default();
    // Two-second buckets: a short recording still has many.
    cfg.predict.interval_ms = Some(2000);
    let r = collect(&cfg, &fixture("batch")).await.unwrap();
    assert!(r.windows >= 10, "{}", r.windows);
    // The agent forecasts in a replay as it does live: with the shipped model.
    assert!(
        r.forecaster.contains("the agent's forecasts (model"),
        "{}",
        r.forecaster
    );
    let shown = plotted(&r);
    assert!(!shown.is_empty() && shown.len() <= PLOTTED + 4);
    let busiest = shown[0];
    // Usage per interval, as aggregate computed it.
    assert_eq!(
        busiest.t_ms.len(),
        busiest.usage[Target::Cpu as usize].len()
    );
    assert!(busiest.cpu_seconds(r.header.interval_ms) > 0.5);
    // Bands from the baseline once it has seen a bucket, and usage judged against them.
    let banded = busiest.band[Target::Cpu as usize].iter().flatten().count();
    assert!(
        banded * 3 >= busiest.t_ms.len(),
        "{banded} of {}",
        busiest.t_ms.len()
    );
    assert!(busiest.coverage(Target::Cpu).is_some());
    let (page, stats) = html::page(std::slice::from_ref(&r)).unwrap();
    assert_eq!(stats.plots, 2 * shown.len());
    assert_eq!(page.matches("<figure><svg").count(), stats.plots);
    assert!(page.contains("forecast p10–p90"));
}

#[tokio::test]
async fn a_bad_recording_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.umbra");
    std::fs::write(&bad, b"not a recording").unwrap();
    let e = write(&Config::default(), std::slice::from_ref(&bad), dir.path())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bad.umbra"), "{e}");
}
