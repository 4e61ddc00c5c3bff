//! `umbra report` over real recordings, opened in Debian's headless Chromium: the page
//! loads without a script error, every plot is laid out with a size, and a screenshot
//! is not blank.
#![allow(clippy::unwrap_used)]

use std::{path::PathBuf, process::Command};

use umbra_tests::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{name}.umbra"))
}

/// Headless Chromium with the flags this machine needs (no sandbox as root, no network
/// or background services), a fresh profile.
fn chromium(profile: &std::path::Path) -> Option<Command> {
    let bin = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok());
    let Some(bin) = bin else {
        assert!(
            !in_ci(),
            "chromium is missing (cargo xtask install puts it there)"
        );
        eprintln!("skipped: chromium is not installed");
        return None;
    };
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    Some(c)
}

#[test]
fn the_report_renders_in_chromium_with_every_plot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let o = Command::new(workspace_bin("umbra"))
        .args(["report"])
        .arg(fixture("compile"))
        .arg(fixture("batch"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let plots: usize = err
        .split(", ")
        .find_map(|p| p.strip_suffix(" plots"))
        .unwrap_or_else(|| panic!("{err}"))
        .parse()
        .unwrap();
    assert!(plots >= 4, "{err}");
    let index = out.join("index.html");
    let url = format!("file://{}", index.display());

    let Some(mut c) = chromium(&dir.path().join("profile")) else {
        return;
    };
    let dom = c.arg("--dump-dom").arg(&url).output().unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    let body = dom
        .split("<body")
        .nth(1)
        .and_then(|b| b.split('>').next())
        .unwrap_or_else(|| panic!("no body in {dom}"));
    assert!(!body.contains("data-error"), "a script error: {body}");
    assert!(
        body.contains(&format!("data-plots=\"{plots}\"")),
        "{body} (want {plots} plots)"
    );
    assert!(
        body.contains(&format!("data-rendered=\"{plots}\"")),
        "not every plot was laid out: {body}"
    );
    assert!(dom.contains("forecast p10–p90"));

    let shot = dir.path().join("shot.png");
    let mut c = chromium(&dir.path().join("profile2")).unwrap();
    let o = c
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1000,1400")
        .arg(&url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    // A blank page compresses to almost nothing; plots and text do not.
    assert!(
        png.len() > 20_000,
        "screenshot of {} bytes: blank?",
        png.len()
    );
}
