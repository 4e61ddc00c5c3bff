//! Replay tests, no root: recordings of real programs on a real kernel (tests/fixtures/,
//! re-recorded by tests/fixtures/record.sh) through aggregate, checked for what those
//! programs did.
#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, ffi::OsStr, path::PathBuf};

use umbra::{
    aggregate::{Aggregator, GroupBy, ShadowPoint, Window},
    capture::CaptureItem,
    record::{Reader, RecordError},
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{name}.umbra"))
}

/// A recording through aggregate: its windows, and the error that ended it, if any.
fn replay(path: &std::path::Path, g: GroupBy) -> (Vec<Window>, Option<RecordError>) {
    let reader = Reader::open(path).unwrap_or_else(|e| panic!("{e}"));
    let mut agg = Aggregator::new(g, reader.header().interval_ms);
    let mut out = vec![];
    for item in reader {
        match item {
            Ok(CaptureItem::Tick(t)) => out.push(agg.tick(&t)),
            Ok(CaptureItem::Event(_)) => {}
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

fn windows(name: &str, g: GroupBy) -> Vec<Window> {
    match replay(&fixture(name), g) {
        (w, None) => w,
        (_, Some(e)) => panic!("{name}: {e}"),
    }
}

/// Per executable name: the points of all intervals.
fn by_name(ws: &[Window]) -> HashMap<String, Vec<ShadowPoint>> {
    let mut m: HashMap<String, Vec<ShadowPoint>> = HashMap::new();
    for w in ws {
        for p in &w.points {
            m.entry(p.name.clone()).or_default().push(p.clone());
        }
    }
    m
}

/// Checks each window against figures computed independently of aggregate from the raw
/// ticks: per-process counter deltas (a process's first sample counts whole, its last one
/// closes it) summed over all processes must equal the workloads' sum and the node totals;
/// and over the recording, the workloads' CPU must account for the node's busy time from
/// `/proc/stat` (recorded in each tick) within a few percent (tick-based accounting).
fn conserved(name: &str, path: &std::path::Path, ws: &[Window]) {
    let reader = Reader::open(path).unwrap();
    let mut prev: HashMap<(u32, u64), (u64, u64)> = HashMap::new();
    let mut ticks = Vec::new();
    for item in reader {
        if let Ok(CaptureItem::Tick(t)) = item {
            let (mut cpu, mut wr) = (0u64, 0u64);
            for s in &t.samples {
                let key = (s.tgid, s.start_ns);
                let now = (s.counters.cpu_ns, s.counters.write_bytes);
                let (pc, pw) = prev.get(&key).copied().unwrap_or((0, 0));
                cpu += now.0.saturating_sub(pc);
                wr += now.1.saturating_sub(pw);
                if s.exit.is_some() {
                    prev.remove(&key);
                } else {
                    prev.insert(key, now);
                }
            }
            ticks.push((cpu, wr, t.node.cpu_busy_ns));
        }
    }
    assert_eq!(ticks.len(), ws.len(), "{name}");
    let (mut procs, mut busy) = (0u64, 0u64);
    for (i, (w, &(cpu, wr, node_busy))) in ws.iter().zip(&ticks).enumerate() {
        let points_cpu: u64 = w.points.iter().map(|p| p.profile.cpu_ns).sum();
        let points_wr: u64 = w.points.iter().map(|p| p.profile.write_bytes).sum();
        assert_eq!(points_cpu, cpu, "{name} window {i}: workloads' CPU");
        assert_eq!(points_wr, wr, "{name} window {i}: workloads' writes");
        assert_eq!(w.node.totals.cpu_ns, cpu, "{name} window {i}: node CPU");
        assert!(w.node.cpus >= 1 && w.node.mem_total_bytes > 0);
        if i > 0 {
            procs += cpu;
            busy += node_busy - ticks[i - 1].2;
        }
    }
    let ratio = procs as f64 / busy.max(1) as f64;
    eprintln!("{name}: processes' CPU / node busy = {ratio:.4}");
    assert!(
        (0.95..=1.03).contains(&ratio),
        "{name}: processes' CPU {procs} ns against node busy {busy} ns"
    );
}

#[test]
fn every_fixture_replays_and_conserves_under_both_groupings() {
    for name in ["idle", "compile", "compress", "http", "batch"] {
        for g in [GroupBy::Cgroup, GroupBy::Exe] {
            let ws = windows(name, g);
            assert!(ws.len() >= 5, "{name}: {} windows", ws.len());
            conserved(name, &fixture(name), &ws);
            // Executable grouping resolves recorded hashes, not paths.
            if g == GroupBy::Exe {
                assert!(
                    ws.iter()
                        .flat_map(|w| &w.points)
                        .any(|p| p.workload.0.starts_with("exe:")),
                    "{name}: no hashed executable"
                );
            } else {
                assert!(
                    ws.iter()
                        .flat_map(|w| &w.points)
                        .all(|p| p.workload.0.starts_with("cgroup"))
                );
            }
        }
    }
}

#[test]
fn compile_runs_the_compiler_many_times() {
    let m = by_name(&windows("compile", GroupBy::Exe));
    let execs: u64 = m["cc1"].iter().map(|p| p.input.execs).sum();
    assert!(execs >= 10, "cc1 execs {execs}");
    let cpu: u64 = m["cc1"].iter().map(|p| p.profile.cpu_ns).sum();
    assert!(cpu > 500_000_000, "cc1 cpu {cpu}");
}

#[test]
fn compression_is_cpu_bound() {
    let m = by_name(&windows("compress", GroupBy::Exe));
    for exe in ["gzip", "xz"] {
        let peak = m[exe]
            .iter()
            .map(|p| p.profile.cpu_cores)
            .fold(0.0, f64::max);
        assert!(peak > 0.5, "{exe} peak {peak} cores");
        let read: u64 = m[exe].iter().map(|p| p.profile.read_bytes).sum();
        assert!(read > 5_000_000, "{exe} read {read} bytes");
    }
}

#[test]
fn http_server_accepts_and_receives() {
    let m = by_name(&windows("http", GroupBy::Exe));
    let nginx = &m["nginx"];
    let accepted: u64 = nginx.iter().map(|p| p.input.conn_accepted).sum();
    let rx: u64 = nginx.iter().map(|p| p.input.net_rx_bytes).sum();
    let tx: u64 = nginx.iter().map(|p| p.profile.net_tx_bytes).sum();
    assert!(accepted >= 16, "nginx accepted {accepted}");
    assert!(rx > 100_000 && tx > rx, "nginx rx {rx} tx {tx}");
    let opened: u64 = m["wrk"].iter().map(|p| p.input.conn_opened).sum();
    assert!(opened >= 16, "wrk opened {opened}");
}

#[test]
fn batch_follows_its_compressed_day() {
    let m = by_name(&windows("batch", GroupBy::Exe));
    let cpu: Vec<u64> = m["sha256sum"].iter().map(|p| p.profile.cpu_ns).collect();
    let max = cpu.iter().copied().max().unwrap();
    let min = cpu.iter().copied().filter(|&c| c > 0).min().unwrap();
    assert!(max > 4 * min, "day/night contrast: {cpu:?}");
}

#[test]
fn export_writes_one_row_per_point() {
    let dir = std::env::temp_dir().join(format!("umbra-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("http.csv");
    let intervals = export_cli(&out);
    let ws = windows("http", GroupBy::Exe);
    let points: usize = ws.iter().map(|w| w.points.len()).sum();
    assert_eq!(intervals, ws.len());
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), points + 1);
    assert!(text.starts_with("timestamp_ms,"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `umbra export` as users run it.
fn export_cli(out: &std::path::Path) -> usize {
    let st = umbra_cli(["export", "--format", "csv", "-o"].map(OsStr::new))
        .arg(out)
        .arg(fixture("http"))
        .output()
        .unwrap();
    let err = succeeded(&st).1;
    err.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// `umbra` with `args`, as users run it.
fn umbra_cli<'a>(args: impl IntoIterator<Item = &'a OsStr>) -> std::process::Command {
    let mut c = std::process::Command::new(umbra_tests::workspace_bin("umbra"));
    c.args(args);
    c
}

/// The stdout and stderr of a run that must have succeeded (its stderr shown if not).
fn succeeded(st: &std::process::Output) -> (String, String) {
    let err = String::from_utf8_lossy(&st.stderr).into_owned();
    assert!(st.status.success(), "{err}");
    (String::from_utf8(st.stdout.clone()).unwrap(), err)
}

/// `umbra simulate --by-workload --by-holder` as users run it: each managed workload's row
/// per strategy, and each strategy's intervals by what held them, in JSON and in tables.
#[test]
fn simulate_scores_each_workload_when_asked() {
    let run = |json: bool| {
        let mut c = umbra_cli(["simulate", "--by-workload", "--strategy", "umbra"].map(OsStr::new));
        c.args(["--by-holder", "--strategy", "static", "--workloads", "3"])
            .arg(fixture("compile"));
        if json {
            c.arg("--json");
        }
        succeeded(&c.output().unwrap()).0
    };
    let j: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let ws = j["workloads"].as_array().unwrap();
    assert_eq!(ws.len(), 6, "3 workloads × 2 strategies: {j}");
    for w in ws {
        assert!(w["intervals"].as_u64().unwrap() > 0, "{w}");
        if w["strategy"] == "static" {
            assert_eq!(w["static_intervals"], w["intervals"], "{w}");
        }
    }
    let holders = j["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 6, "2 strategies × 3 holders: {j}");
    let of = |strategy: &str, holder: &str| {
        holders
            .iter()
            .find(|h| h["strategy"] == strategy && h["holder"] == holder)
            .unwrap_or_else(|| panic!("{strategy}, {holder}: {j}"))["cpu_intervals"]
            .as_u64()
            .unwrap()
    };
    let intervals: u64 = ws
        .iter()
        .filter(|w| w["strategy"] == "static")
        .map(|w| w["intervals"].as_u64().unwrap())
        .sum();
    assert_eq!(of("static", "static"), intervals, "{j}");
    assert_eq!(
        of("static", "workload") + of("static", "requests"),
        0,
        "{j}"
    );
    let table = run(false);
    assert!(
        table.contains("RECORDING") && table.contains("compile.umbra"),
        "{table}"
    );
    assert!(table.contains("HELD BY"), "{table}");
}

/// The same recording gives the same report, to the last digit, every run (the totals
/// once depended on a hash map's order, which each process picks anew).
#[test]
fn simulate_reports_the_same_numbers_every_run() {
    let run = || {
        let rec = fixture("compile");
        let args = [
            OsStr::new("simulate"),
            OsStr::new("--json"),
            rec.as_os_str(),
        ];
        succeeded(&umbra_cli(args).output().unwrap()).0
    };
    let first = run();
    for _ in 0..3 {
        assert_eq!(run(), first);
    }
}

#[test]
fn damaged_fixture_names_file_and_offset_and_keeps_earlier_points() {
    let data = std::fs::read(fixture("idle")).unwrap();
    let dir = std::env::temp_dir().join(format!("umbra-damage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cut = dir.join("cut.umbra");
    std::fs::write(&cut, &data[..data.len() * 2 / 3]).unwrap();
    let (ws, err) = replay(&cut, GroupBy::Cgroup);
    let n = ws.len();
    let msg = err.expect("an error for a cut file").to_string();
    assert!(
        msg.contains("cut.umbra") && msg.contains("at byte"),
        "{msg}"
    );
    assert!(n >= 2, "windows before the damage: {n}");
    let st = std::process::Command::new(umbra_tests::workspace_bin("umbra"))
        .args(["replay", "--json", "--as-fast-as-possible"])
        .arg(&cut)
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stdout).lines().count() > 0);
    assert!(String::from_utf8_lossy(&st.stderr).contains("at byte"));
    std::fs::remove_dir_all(&dir).unwrap();
}
