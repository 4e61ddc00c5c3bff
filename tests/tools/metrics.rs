//! Prometheus exposition: what the agent serves passes `promtool check metrics` (Debian's
//! `prometheus` package, installed by xtask) — from a replayed recording without root, and
//! from the live agent over HTTP, where the kernel programs' runs must show.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use umbra::{
    capture::{CaptureItem, LifecycleKind},
    config::Config,
    metrics::{Metered, Registry},
    pipeline::{self, Each},
    record::{Pace, Reader},
};
use umbra_tests::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{name}.umbra"))
}

/// promtool on PATH, or where `cargo xtask test` extracts it (`target/tools/`).
fn promtool_bin() -> PathBuf {
    let extracted = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/tools/prometheus/usr/bin/promtool");
    let on_path = Command::new("promtool").arg("--version").output().is_ok();
    if on_path || !extracted.is_file() {
        PathBuf::from("promtool")
    } else {
        extracted
    }
}

/// `promtool check metrics` on `text`: its complaints, or `None` when it has none.
fn promtool(text: &str) -> Option<String> {
    let Ok(mut child) = Command::new(promtool_bin())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            !in_ci(),
            "promtool is missing (cargo xtask install puts it there)"
        );
        eprintln!("skipped: promtool is not installed (apt-get install prometheus)");
        return None;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (!out.status.success() || !said.trim().is_empty()).then_some(said)
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn a_replayed_recording_gives_valid_metrics_that_count_what_it_holds() {
    let path = fixture("compile");
    let mut execs = 0u64;
    let mut ticks = 0u64;
    for item in Reader::open(&path).unwrap() {
        match item.unwrap() {
            CaptureItem::Event(e) if matches!(e.kind, LifecycleKind::Exec { .. }) => execs += 1,
            CaptureItem::Tick(_) => ticks += 1,
            CaptureItem::Event(_) => {}
        }
    }
    let registry = Registry::new();
    let r = registry.clone();
    pipeline::look(
        &Config::default(),
        pipeline::From::Recording(&path, Pace::AsFastAsPossible),
        move |_| {
            Ok(Metered {
                inner: Each(|_: &umbra::aggregate::Window| Ok(())),
                registry: r,
                feed: Default::default(),
            })
        },
        None,
        Default::default(),
    )
    .await
    .unwrap();
    let text = registry.render();
    if let Some(complaints) = promtool(&text) {
        panic!("promtool check metrics:\n{complaints}\n---\n{text}");
    }
    assert_eq!(
        value(&text, "umbra_capture_events_total{kind=\"exec\"}"),
        execs as f64
    );
    // A replay shows every window, the first included.
    assert_eq!(value(&text, "umbra_windows_total"), ticks as f64);
    assert!(value(&text, "umbra_workloads") >= 1.0);
}

#[test]
fn promtool_finds_what_breaks_the_conventions() {
    // The check above means something: promtool complains about a counter without
    // `_total` and a malformed line.
    let bad = "# HELP umbra_things Things.\n# TYPE umbra_things counter\numbra_things 1\n";
    if Command::new(promtool_bin())
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!in_ci(), "promtool is missing");
        return;
    }
    assert!(promtool(bad).is_some());
    assert!(promtool("umbra_x{a=\"b} 1\n").is_some());
}

#[test]
fn the_live_agent_serves_valid_metrics_with_program_runs() {
    if !privileged("the_live_agent_serves_valid_metrics_with_program_runs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = dir.path().join("umbra.toml");
    std::fs::write(
        &cfg,
        format!(
            "[publish]\nenabled = false\nstate_dir = \"{}\"\n[metrics]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(workspace_bin("umbra"))
        .arg("--config")
        .arg(&cfg)
        .args(["run", "--duration", "60", "--top", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (attached, rx) = mpsc::channel();
    let logs = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Kernel capture attached") {
                let _ = attached.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let stop = |mut child: std::process::Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        stop(child);
        panic!("umbra run never attached:\n{}", logs.join().unwrap());
    }
    for _ in 0..20 {
        Command::new("/bin/true").status().unwrap();
    }
    // Two windows later the execs and the programs' runs are in.
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        // The endpoint opens just after the programs attach.
        let Some(text) = get(port) else {
            assert!(
                Instant::now() < deadline,
                "no metrics endpoint on port {port}"
            );
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let ok = text.contains("umbra_windows_total")
            && value(&text, "umbra_windows_total") >= 2.0
            && text
                .lines()
                .any(|l| l.starts_with("umbra_capture_events_total{kind=\"exec\"}"));
        if ok || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    stop(child);
    let logs = logs.join().unwrap();
    if let Some(complaints) = promtool(&text) {
        panic!("promtool check metrics:\n{complaints}\n---\n{text}");
    }
    assert!(
        value(&text, "umbra_capture_events_total{kind=\"exec\"}") >= 20.0,
        "{text}"
    );
    // The exec hook ran for those execs, on either counter path: counted by the kernel
    // while BPF statistics are on (root may enable them; the agent does after attaching).
    let runs = value(
        &text,
        "umbra_hook_runs_total{program=\"sched_process_exec\"}",
    );
    assert!(runs > 0.0, "{text}\n{logs}");
    assert!(
        value(
            &text,
            "umbra_hook_run_seconds_total{program=\"sched_process_exec\"}"
        ) > 0.0
    );
}

/// `GET /metrics` from the agent; `None` while nothing listens.
fn get(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Some(body.to_string())
}
