//! Anomaly acceptance: faults injected into replays of held-out recordings
//! (`tests/fixtures/holdout/`, never used in training) — a CPU hog inside a workload, a
//! memory-leak ramp, an I/O stall, a 3× jump in request cost, a fork bomb — must be found
//! (recall ≥ 0.9 per fault type) without crying wolf (precision ≥ 0.8 per fault type); the
//! idle fixture raises nothing; a workload that changes its program drifts within a
//! stated number of buckets. The table printed is the one in BENCHMARKS.md.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use umbra::{
    aggregate::{Aggregator, GroupBy, Window, WorkloadId},
    anomaly::{
        Anomaly, AnomalyConfig, Detector,
        faults::{Fault, FaultKind, Injector},
    },
    capture::CaptureItem,
    predict::{ForecastStage, PredictConfig},
    record::Reader,
};

/// The agent's default forecast step.
const INTERVAL_MS: u64 = 5000;
/// Buckets a fault lasts.
const FAULT_BUCKETS: u64 = 6;
/// Buckets after a fault's end an alarm still counts as finding it (the detector needs
/// `persist` buckets, and a bucket closes after its end).
const GRACE_BUCKETS: u64 = 2;

fn holdout(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/holdout")
        .join(format!("{name}.umbra"))
}

fn items(path: &Path) -> Vec<CaptureItem> {
    Reader::open(path)
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|i| i.unwrap())
        .collect()
}

/// The agent's path: aggregate → forecast (the fallback baseline) → detector.
fn detect(items: impl Iterator<Item = CaptureItem>) -> (Vec<Anomaly>, Vec<Window>) {
    let cfg = PredictConfig {
        interval_ms: Some(INTERVAL_MS),
        ..Default::default()
    };
    let mut agg = Aggregator::new(GroupBy::Exe, 1000);
    let mut stage = ForecastStage::baseline(&cfg, 1000);
    let mut d = Detector::new(AnomalyConfig::default(), INTERVAL_MS);
    let mut found = Vec::new();
    let mut windows = Vec::new();
    for i in items {
        if let CaptureItem::Tick(t) = i {
            let w = agg.tick(&t);
            for j in d.push(&w) {
                found.extend(j.anomalies);
            }
            if let Some(fs) = stage.push(&w) {
                d.expect(&fs);
            }
            windows.push(w);
        }
    }
    (found, windows)
}

/// The services each held-out recording was made of (`tests/fixtures/holdout/record.sh`):
/// the workloads faults are injected into. The rest of the host (whatever else ran) is in
/// the recordings too, replayed and judged alike.
const SERVICES: [(&str, &[&str]); 2] = [
    ("web", &["nginx", "curl", "perl", "gzip"]),
    ("batch", &["perl", "python3.11", "bzip2"]),
];

/// The services of a recording present in nearly every window, with their mean CPU and
/// I/O.
fn steady(rec: &str, windows: &[Window]) -> Vec<(WorkloadId, String, f64, f64)> {
    let names = SERVICES
        .iter()
        .find(|s| s.0 == rec)
        .map_or(&[][..], |s| s.1);
    let mut seen: HashMap<WorkloadId, (String, u32, f64, f64)> = HashMap::new();
    for w in &windows[1..] {
        for p in &w.points {
            let e = seen
                .entry(p.workload.clone())
                .or_insert((p.name.clone(), 0, 0.0, 0.0));
            e.1 += 1;
            e.2 += p.profile.cpu_cores;
            e.3 += (p.profile.read_bytes + p.profile.write_bytes) as f64 * 1000.0
                / p.interval_ms.max(1) as f64;
        }
    }
    let n = (windows.len() - 1) as f64;
    let mut v: Vec<_> = seen
        .into_iter()
        .filter(|(_, (name, k, _, _))| *k as f64 >= 0.4 * n && names.contains(&name.as_str()))
        .map(|(id, (name, _, cpu, io))| (id, name, cpu / n, io / n))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[derive(Default, Debug)]
struct Score {
    episodes: u32,
    found: u32,
    true_alarms: u32,
    false_alarms: u32,
}

#[test]
fn faults_in_held_out_recordings_are_found_with_few_false_alarms() {
    let mut scores: BTreeMap<FaultKind, Score> = BTreeMap::new();
    let mut background = (0u32, 0f64);
    for rec in ["web", "batch"] {
        let all = items(&holdout(rec));
        let (base, windows) = detect(all.iter().cloned());
        let candidates = steady(rec, &windows);
        let names = SERVICES.iter().find(|s| s.0 == rec).unwrap().1;
        assert_eq!(candidates.len(), names.len(), "{rec}: {candidates:?}");
        let ticks: Vec<u64> = all
            .iter()
            .filter_map(|i| match i {
                CaptureItem::Tick(t) => Some(t.timestamp_ns),
                _ => None,
            })
            .collect();
        let (t0, t1) = (ticks[0], *ticks.last().unwrap());
        let hours = (t1 - t0) as f64 / 3.6e12 * candidates.len() as f64;
        background.0 += base
            .iter()
            .filter(|a| candidates.iter().any(|c| c.0 == a.workload))
            .count() as u32;
        background.1 += hours;
        for (id, name, cpu, io) in &candidates {
            for kind in FaultKind::ALL {
                // An I/O stall needs I/O to stop; a cost jump, CPU to multiply.
                if (kind == FaultKind::IoStall && *io < 512.0 * 1024.0)
                    || (kind == FaultKind::CostJump && *cpu < 0.05)
                {
                    continue;
                }
                for at in [0.35, 0.6, 0.8] {
                    let start = t0 + ((t1 - t0) as f64 * at) as u64;
                    let end = start + FAULT_BUCKETS * INTERVAL_MS * 1_000_000;
                    if end >= t1 {
                        continue;
                    }
                    let mut inj = Injector::new(
                        Fault {
                            kind,
                            workload: id.clone(),
                            start_ns: start,
                            end_ns: end,
                            size: Fault::default_size(kind),
                        },
                        GroupBy::Exe,
                    );
                    let (found, _) = detect(all.iter().cloned().flat_map(|i| inj.apply(i)));
                    // Wall clock of the fault: the ticks carry both clocks.
                    let wall = |ns: u64| {
                        let (tns, tms) = all
                            .iter()
                            .find_map(|i| match i {
                                CaptureItem::Tick(t) => Some((t.timestamp_ns, t.wall_ms)),
                                _ => None,
                            })
                            .unwrap();
                        (tms as i128 + (ns as i128 - tns as i128) / 1_000_000) as u64
                    };
                    let (ws, we) = (wall(start), wall(end) + GRACE_BUCKETS * INTERVAL_MS);
                    let s = scores.entry(kind).or_default();
                    s.episodes += 1;
                    // Alarms the clean replay raised too are the recording's own events
                    // (say, another process of the workload exiting): neither found nor false.
                    let own = |a: &Anomaly| {
                        base.iter().any(|b| {
                            b.workload == a.workload
                                && b.kind == a.kind
                                && b.timestamp_ms.abs_diff(a.timestamp_ms) <= INTERVAL_MS
                        })
                    };
                    let ours: Vec<&Anomaly> = found
                        .iter()
                        .filter(|a| a.workload == *id && !own(a))
                        .collect();
                    let hit = ours
                        .iter()
                        .filter(|a| a.timestamp_ms > ws && a.timestamp_ms <= we)
                        .count() as u32;
                    s.true_alarms += hit;
                    s.false_alarms += ours.len() as u32 - hit;
                    for a in ours
                        .iter()
                        .filter(|a| a.timestamp_ms <= ws || a.timestamp_ms > we)
                    {
                        eprintln!(
                            "false alarm, {} in {rec}/{name} at {at}: {}",
                            kind.name(),
                            a.text()
                        );
                    }
                    if hit > 0 {
                        s.found += 1;
                    } else {
                        eprintln!(
                            "missed {} in {rec}/{name} at {at}: {:?}",
                            kind.name(),
                            ours.iter().map(|a| a.text()).collect::<Vec<_>>()
                        );
                    }
                }
            }
        }
    }
    println!("| fault | episodes | found | recall | alarms | true | precision |");
    println!("|---|---|---|---|---|---|---|");
    let mut failed = Vec::new();
    for (k, s) in &scores {
        let recall = s.found as f64 / s.episodes.max(1) as f64;
        let alarms = s.true_alarms + s.false_alarms;
        let precision = s.true_alarms as f64 / alarms.max(1) as f64;
        println!(
            "| {} | {} | {} | {:.2} | {} | {} | {:.2} |",
            k.name(),
            s.episodes,
            s.found,
            recall,
            alarms,
            s.true_alarms,
            precision
        );
        if recall < 0.9 || precision < 0.8 {
            failed.push(format!(
                "{}: recall {recall:.2}, precision {precision:.2}",
                k.name()
            ));
        }
    }
    println!(
        "clean replays: {} alarms on the services in {:.2} service-hours",
        background.0, background.1
    );
    assert_eq!(
        scores.len(),
        FaultKind::ALL.len(),
        "every fault type was tried"
    );
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn the_idle_fixture_raises_no_anomaly() {
    let idle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/idle.umbra");
    let (found, _) = detect(items(&idle).into_iter());
    assert!(
        found.is_empty(),
        "{:#?}",
        found.iter().map(Anomaly::text).collect::<Vec<_>>()
    );
}

/// Buckets within which a workload that changes its program is found drifting.
const DRIFT_WITHIN: usize = 8;

/// The windows of a recording, after aggregate.
fn windows_of(path: &Path) -> Vec<Window> {
    let mut agg = Aggregator::new(GroupBy::Exe, 1000);
    items(path)
        .into_iter()
        .filter_map(|i| match i {
            CaptureItem::Tick(t) => Some(agg.tick(&t)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_workload_that_changes_its_program_drifts_within_a_few_buckets() {
    // The web recording's perl worker, then — same workload, from its 60% mark on — the
    // batch recording's python worker (a different program, a different load), its
    // points relabelled and placed on the web recording's clock.
    let web = windows_of(&holdout("web"));
    let batch = windows_of(&holdout("batch"));
    let find = |ws: &[Window], name: &str| {
        ws.iter()
            .flat_map(|w| &w.points)
            .find(|p| p.name == name)
            .map(|p| p.workload.clone())
            .unwrap()
    };
    let perl = find(&web, "perl");
    let python = find(&batch, "python3.11");
    let switch = web.len() * 6 / 10;
    let mut spliced = web.clone();
    for (k, w) in spliced.iter_mut().enumerate().skip(switch) {
        w.points.retain(|p| p.workload != perl);
        let Some(other) = batch.get(k) else { continue };
        if let Some(p) = other.points.iter().find(|p| p.workload == python) {
            let mut p = p.clone();
            p.workload = perl.clone();
            p.name = "perl".into();
            p.timestamp_ms = w.node.timestamp_ms;
            w.points.push(p);
        }
    }
    let run = |ws: &[Window]| {
        let cfg = PredictConfig {
            interval_ms: Some(INTERVAL_MS),
            ..Default::default()
        };
        let mut stage = ForecastStage::baseline(&cfg, 1000);
        let mut d = Detector::new(AnomalyConfig::default(), INTERVAL_MS);
        let mut drifted = Vec::new();
        for w in ws {
            for j in d.push(w) {
                drifted.extend(j.drifted);
            }
            if let Some(fs) = stage.push(w) {
                d.expect(&fs);
            }
        }
        drifted
    };
    // Unchanged, the worker does not drift.
    let clean = run(&web);
    assert!(
        clean.iter().all(|d| d.workload != perl),
        "{:?}",
        clean.iter().map(|d| d.text()).collect::<Vec<_>>()
    );
    let drifted = run(&spliced);
    let at = web[switch].node.timestamp_ms;
    let d = drifted
        .iter()
        .find(|d| d.workload == perl)
        .unwrap_or_else(|| panic!("no drift: {drifted:?}"));
    let buckets = d.timestamp_ms.saturating_sub(at).div_ceil(INTERVAL_MS) as usize;
    println!(
        "drift found {buckets} bucket(s) of {INTERVAL_MS} ms after the change: {}",
        d.text()
    );
    assert!(d.timestamp_ms > at, "drift before the change: {}", d.text());
    assert!(buckets <= DRIFT_WITHIN, "{buckets} buckets");
}

#[test]
fn the_agent_prints_the_anomalies_of_a_replay() {
    // The web recording with a fork bomb in its client, written as a recording and replayed
    // through the agent by the CLI, as a person would.
    let path = holdout("web");
    let reader = Reader::open(&path).unwrap();
    let header = reader.header().clone();
    let all: Vec<CaptureItem> = reader.map(|i| i.unwrap()).collect();
    let windows = windows_of(&path);
    let curl = windows
        .iter()
        .flat_map(|w| &w.points)
        .find(|p| p.name == "curl")
        .map(|p| p.workload.clone())
        .unwrap();
    let ticks: Vec<u64> = all
        .iter()
        .filter_map(|i| match i {
            CaptureItem::Tick(t) => Some(t.timestamp_ns),
            _ => None,
        })
        .collect();
    let start = ticks[ticks.len() / 2];
    let mut inj = Injector::new(
        Fault {
            kind: FaultKind::ForkBomb,
            workload: curl,
            start_ns: start,
            end_ns: start + 20_000_000_000,
            size: 40.0,
        },
        GroupBy::Exe,
    );
    let dir = tempfile::tempdir().unwrap();
    let faulty = dir.path().join("web-fork-bomb.umbra");
    let mut w = umbra::record::Writer::create(&faulty, &header).unwrap();
    for i in all.into_iter().flat_map(|i| inj.apply(i)) {
        w.write(&i).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let out = std::process::Command::new(umbra_tests::workspace_bin("umbra"))
        .args(["replay", "--as-fast-as-possible"])
        .arg(&faulty)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("!! anomaly"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("curl") && l.contains("processes")),
        "{lines:#?}"
    );
}
