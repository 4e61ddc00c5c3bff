//! `umbra trace --perfetto` from recordings of real programs, decoded with Perfetto's
//! published protos (the `perfetto_protos` crate: Perfetto v51's `.proto` files compiled
//! with protoc and rust-protobuf, independent of the agent's own encoder), and checked
//! against figures computed from the recording's raw ticks: a process track per process,
//! its counters, exec and exit instants, workload tracks, and the agent's conclusions
//! (decisions, anomalies) as instants.
#![allow(clippy::unwrap_used)]

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    process::Command,
};

use perfetto_protos::{
    trace::Trace, trace_packet::TracePacket, track_event::track_event::Type as EventType,
};
use protobuf::Message;
use umbra::{
    aggregate::WorkloadId,
    capture::{CaptureItem, LifecycleKind},
    insight::{Insights, Note, NoteKind},
    perfetto::Perfetto,
    record::Reader,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{name}.umbra"))
}

fn umbra_bin() -> PathBuf {
    umbra_tests::workspace_bin("umbra")
}

/// A decoded trace: tracks by uuid, and the events on each.
#[derive(Default)]
struct Decoded {
    /// uuid → (name, parent, pid of a process track)
    tracks: HashMap<u64, (String, Option<u64>, Option<i32>)>,
    /// track uuid → (timestamp, value)
    counters: HashMap<u64, Vec<(u64, f64)>>,
    /// (track uuid, category, name, annotations)
    instants: Vec<(u64, String, String, BTreeMap<String, String>)>,
    clock_snapshots: usize,
}

impl Decoded {
    fn process_tracks(&self) -> HashMap<i32, Vec<u64>> {
        let mut m: HashMap<i32, Vec<u64>> = HashMap::new();
        for (u, (_, _, pid)) in &self.tracks {
            if let Some(p) = pid {
                m.entry(*p).or_default().push(*u);
            }
        }
        m
    }

    fn children(&self, parent: u64) -> HashMap<String, u64> {
        self.tracks
            .iter()
            .filter(|(_, (_, p, _))| *p == Some(parent))
            .map(|(u, (n, _, _))| (n.clone(), *u))
            .collect()
    }
}

fn decode(bytes: &[u8]) -> Decoded {
    let trace = Trace::parse_from_bytes(bytes).expect("a Perfetto Trace message");
    let mut d = Decoded::default();
    let mut seq = HashSet::new();
    for p in &trace.packet {
        let p: &TracePacket = p;
        seq.insert(p.trusted_packet_sequence_id());
        if p.has_clock_snapshot() {
            d.clock_snapshots += 1;
        }
        if p.has_track_descriptor() {
            let t = p.track_descriptor();
            let pid = t.process.as_ref().map(|pr| pr.pid());
            let name = if t.process.is_some() {
                t.process.process_name().to_string()
            } else {
                t.name().to_string()
            };
            let parent = t.has_parent_uuid().then(|| t.parent_uuid());
            d.tracks.insert(t.uuid(), (name, parent, pid));
        }
        if p.has_track_event() {
            let e = p.track_event();
            assert!(p.has_timestamp(), "track events carry a timestamp");
            match e.type_() {
                EventType::TYPE_COUNTER => {
                    let v = if e.has_double_counter_value() {
                        e.double_counter_value()
                    } else {
                        e.counter_value() as f64
                    };
                    d.counters
                        .entry(e.track_uuid())
                        .or_default()
                        .push((p.timestamp(), v));
                }
                EventType::TYPE_INSTANT => {
                    let args = e
                        .debug_annotations
                        .iter()
                        .map(|a| {
                            let v = if a.has_string_value() {
                                a.string_value().to_string()
                            } else {
                                a.int_value().to_string()
                            };
                            (a.name().to_string(), v)
                        })
                        .collect();
                    d.instants.push((
                        e.track_uuid(),
                        e.categories.first().cloned().unwrap_or_default(),
                        e.name().to_string(),
                        args,
                    ));
                }
                other => panic!("unexpected event type {other:?}"),
            }
        }
    }
    assert_eq!(seq.len(), 1, "one packet sequence");
    d
}

/// What the recording says, computed from its raw items.
struct Truth {
    /// tgid → (comm, on-CPU ns over the recording)
    cpu: HashMap<u32, u64>,
    names: HashMap<u32, String>,
    execs: usize,
    exits: usize,
    /// The last tick: where the trace's counters end.
    last_tick_ns: u64,
}

fn truth(path: &Path) -> Truth {
    let mut t = Truth {
        cpu: HashMap::new(),
        names: HashMap::new(),
        execs: 0,
        exits: 0,
        last_tick_ns: 0,
    };
    let mut first: HashMap<(u32, u64), u64> = HashMap::new();
    let mut last: HashMap<(u32, u64), u64> = HashMap::new();
    let mut ticks = 0;
    for item in Reader::open(path).unwrap() {
        match item.unwrap() {
            CaptureItem::Event(e) => {
                if matches!(e.kind, LifecycleKind::Exec { .. }) {
                    t.execs += 1;
                }
            }
            CaptureItem::Tick(tick) => {
                ticks += 1;
                t.last_tick_ns = tick.timestamp_ns;
                for s in &tick.samples {
                    let k = (s.tgid, s.start_ns);
                    // The first tick's samples are the baseline the counters start from.
                    let base = if ticks == 1 { s.counters.cpu_ns } else { 0 };
                    first.entry(k).or_insert(base);
                    last.insert(k, s.counters.cpu_ns);
                    t.names.insert(s.tgid, s.comm.to_string());
                    if s.exit.is_some() {
                        t.exits += 1;
                    }
                }
            }
        }
    }
    for (k, l) in last {
        *t.cpu.entry(k.0).or_default() += l - first[&k];
    }
    t
}

/// Runs the CLI on a recording.
fn perfetto_of(name: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("{name}.pftrace"));
    let o = Command::new(umbra_bin())
        .args(["trace", "--perfetto"])
        .arg(&out)
        .arg("--replay")
        .arg(fixture(name))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("ui.perfetto.dev"), "{err}");
    std::fs::read(&out).unwrap()
}

#[test]
fn process_tracks_counters_and_instants_match_the_recording() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["compile", "http"] {
        let bytes = perfetto_of(name, dir.path());
        let d = decode(&bytes);
        let t = truth(&fixture(name));
        assert_eq!(d.clock_snapshots, 1, "{name}: one clock snapshot");

        // A track per process, named as the kernel named it, with its counters.
        let procs = d.process_tracks();
        for (tgid, comm) in &t.names {
            let tracks = procs
                .get(&(*tgid as i32))
                .unwrap_or_else(|| panic!("{name}: no track for pid {tgid} ({comm})"));
            let names: HashSet<&str> = tracks.iter().map(|u| d.tracks[u].0.as_str()).collect();
            assert!(
                names.contains(comm.as_str()),
                "{name}: pid {tgid}: {names:?} vs {comm}"
            );
        }
        // On-CPU: the counter (percent of a core, held until it changes) integrated over
        // the recording gives each process's CPU time from the raw counters.
        let mut checked = 0;
        for (tgid, ns) in &t.cpu {
            if *ns < 50_000_000 {
                continue;
            }
            let mut seen = 0f64;
            for u in &procs[&(*tgid as i32)] {
                let kids = d.children(*u);
                for want in [
                    "on-CPU %",
                    "RSS",
                    "read B/s",
                    "write B/s",
                    "block B/s",
                    "net tx B/s",
                    "net rx B/s",
                    "run-queue wait %",
                ] {
                    assert!(
                        kids.contains_key(want),
                        "{name}: pid {tgid} lacks counter {want:?}: {kids:?}"
                    );
                }
                let series = d
                    .counters
                    .get(&kids["on-CPU %"])
                    .cloned()
                    .unwrap_or_default();
                seen += integrate(&series, t.last_tick_ns);
            }
            let err = (seen - *ns as f64).abs() / *ns as f64;
            assert!(
                err < 0.02,
                "{name}: pid {tgid}: {seen} ns from the trace vs {ns} recorded"
            );
            checked += 1;
        }
        assert!(checked > 0, "{name}: no busy process");

        let count = |cat: &str| d.instants.iter().filter(|i| i.1 == cat).count();
        assert_eq!(count("exec"), t.execs, "{name}: an instant per exec");
        assert_eq!(count("exit"), t.exits, "{name}: an instant per exit");
        for (u, cat, n, args) in &d.instants {
            if cat == "exec" {
                assert!(d.tracks[u].2.is_some(), "exec on a process track");
                assert!(n.starts_with("exec "), "{n}");
                assert!(args["filename"].starts_with('/'), "{args:?}");
            }
        }

        // Workload tracks under the root, each with its CPU counter.
        let root = d
            .tracks
            .iter()
            .find(|(_, (n, p, pid))| n.starts_with("Umbra") && p.is_none() && pid.is_none())
            .map(|(u, _)| *u)
            .unwrap();
        let workloads: Vec<u64> = d
            .children(root)
            .into_iter()
            .filter(|(n, _)| n.starts_with("workload "))
            .map(|(_, u)| u)
            .collect();
        assert!(
            workloads.len() >= 2,
            "{name}: {} workload tracks",
            workloads.len()
        );
        for w in workloads {
            assert!(d.children(w).contains_key("cpu cores"));
        }
    }
}

/// ∫ cpu% dt over the trace, in ns: each value holds from its timestamp to the next
/// one, the last to the end of the capture (Perfetto draws it to the trace's end, which
/// events after the last tick may push a little further).
fn integrate(series: &[(u64, f64)], end: u64) -> f64 {
    let mut sum = 0.0;
    for (i, (ts, v)) in series.iter().enumerate() {
        let next = series.get(i + 1).map_or(end, |n| n.0);
        sum += v / 100.0 * (next - ts) as f64;
    }
    sum
}

#[test]
fn decisions_and_anomalies_are_instants_on_their_workload() {
    let path = fixture("http");
    let reader = Reader::open(&path).unwrap();
    let header = reader.header().clone();
    let mut trace = Perfetto::new(Vec::new(), &header).unwrap();
    let mut agg = umbra::aggregate::Aggregator::new(Default::default(), header.interval_ms);
    let mut notes = 0;
    for item in reader {
        let item = item.unwrap();
        trace.item(&item).unwrap();
        if let CaptureItem::Tick(t) = &item {
            let w = agg.tick(t);
            trace.window(&w).unwrap();
            let Some(p) = w.points.first() else { continue };
            let mut i = Insights {
                timestamp_ms: w.node.timestamp_ms,
                ..Default::default()
            };
            for kind in [NoteKind::Decision, NoteKind::Anomaly] {
                i.notes.push(Note {
                    timestamp_ms: w.node.timestamp_ms,
                    kind,
                    workload: Some(p.workload.clone()),
                    name: p.name.clone(),
                    text: format!("{} of {}", kind.name(), p.name),
                });
                notes += 1;
            }
            i.workload(&p.workload).forecast = Some([Default::default(); 4]);
            trace.insights(&i).unwrap();
        }
    }
    let (bytes, stats) = trace.finish().unwrap();
    assert_eq!(stats.bytes as usize, bytes.len());
    let d = decode(&bytes);
    let on_workloads: Vec<_> = d
        .instants
        .iter()
        .filter(|i| i.1 == "decision" || i.1 == "anomaly")
        .collect();
    assert_eq!(on_workloads.len(), notes);
    for (u, _, n, args) in on_workloads {
        let (track, _, _) = &d.tracks[u];
        assert!(track.starts_with("workload "), "{track}");
        assert!(args["workload"].starts_with("exe:"), "{args:?}");
        assert!(
            n.starts_with("decision: ") || n.starts_with("anomaly: "),
            "{n}"
        );
    }
    let _ = WorkloadId::default();
}
