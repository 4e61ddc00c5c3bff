//! Recording formats. Format 2 (the shipped fixtures but `interp`, recorded before exec
//! arguments were captured) replays with exactly the points it gave when it was made: a
//! digest of every point's identity and figures, per fixture and grouping, computed by the
//! build that wrote format 2 and pinned here. Format 3 (`interp`) carries exec arguments,
//! the files they name, and the program each interpreter runs.
#![allow(clippy::unwrap_used)]

use std::{fmt::Write, path::PathBuf};

use umbra::{
    aggregate::{Aggregator, GroupBy},
    capture::{ArgvSource, CaptureItem, LifecycleKind},
    record::Reader,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{name}.umbra"))
}

/// FNV-1a over the text of every point (workload, name, processes and the figures that
/// predate format 3), window by window.
fn digest(name: &str, g: GroupBy) -> (u64, usize) {
    let reader = Reader::open(&fixture(name)).unwrap();
    assert_eq!(reader.version(), 2, "{name} is a format-2 recording");
    let mut agg = Aggregator::new(g, reader.header().interval_ms);
    let mut text = String::new();
    let mut points = 0;
    for item in reader {
        if let CaptureItem::Tick(t) = item.unwrap() {
            let w = agg.tick(&t);
            for p in &w.points {
                points += 1;
                let r = &p.profile;
                let i = &p.input;
                writeln!(
                    text,
                    "{} {} {:?} {} {} {} {} {:?} {:?} {} {} {} {} {} {} {} {:?} {} {} {} {} {} {} {} {}",
                    p.timestamp_ms,
                    p.interval_ms,
                    p.workload.0,
                    p.name.escape_debug(),
                    p.processes,
                    r.cpu_ns,
                    r.voluntary_switches + r.involuntary_switches,
                    r.runq_p50_ns,
                    r.runq_p99_ns,
                    r.rss_bytes,
                    r.page_faults,
                    r.read_bytes,
                    r.write_bytes,
                    r.block_read_bytes,
                    r.block_write_bytes,
                    r.net_tx_bytes,
                    r.block_p99_ns,
                    r.net_rx_bytes,
                    r.retransmits,
                    i.execs,
                    i.conn_accepted,
                    i.conn_opened,
                    i.syscalls,
                    w.node.cpu_busy_ns,
                    w.node.totals.cpu_ns,
                )
                .unwrap();
            }
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h, points)
}

/// (fixture, grouping, digest, points), computed when format 2 was current.
const PINNED: &[(&str, GroupBy, u64, usize)] = &[
    ("idle", GroupBy::Exe, 0x16779ed72a0f7441, 49),
    ("idle", GroupBy::Cgroup, 0x57e5316f8fac14ef, 8),
    ("compile", GroupBy::Exe, 0x0a9ad9c7decbec99, 90),
    ("compile", GroupBy::Cgroup, 0xc790134f1a21eae4, 9),
    ("compress", GroupBy::Exe, 0x0b6d807c76e0d499, 119),
    ("compress", GroupBy::Cgroup, 0x273f569cbb3b4630, 12),
    ("http", GroupBy::Exe, 0xca1ae8f3a9b981c2, 87),
    ("http", GroupBy::Cgroup, 0x146b5b2e68b1a4ef, 9),
    ("batch", GroupBy::Exe, 0x6dbd972024e92e3c, 130),
    ("batch", GroupBy::Cgroup, 0x2f5e99ba092cfe82, 16),
];

#[test]
fn format_2_fixtures_replay_to_the_points_they_gave() {
    let mut got = Vec::new();
    for name in ["idle", "compile", "compress", "http", "batch"] {
        for g in [GroupBy::Exe, GroupBy::Cgroup] {
            let (h, n) = digest(name, g);
            eprintln!("    (\"{name}\", GroupBy::{g:?}, 0x{h:016x}, {n}),");
            got.push((name, g, h, n));
        }
    }
    for want in PINNED {
        assert!(
            got.contains(want),
            "{} by {:?}: points differ from those format 2 gave ({got:?})",
            want.0,
            want.1
        );
    }
    assert_eq!(PINNED.len(), got.len());
}

/// Interpreted programs recorded on a real kernel (`record.sh … interp`: two Python
/// scripts, a Python module, a shell script run as `sh FILE` and one run through its `#!`
/// line, three times each) replay as five workloads of their own, not as `python3` and
/// `sh`; their exec events carry the kernel's copy of their arguments.
#[test]
fn interpreted_programs_replay_as_their_own_workloads() {
    let reader = Reader::open(&fixture("interp")).unwrap();
    assert_eq!(reader.version(), 3);
    let mut agg = Aggregator::new(GroupBy::Exe, reader.header().interval_ms);
    let mut by_name: std::collections::BTreeMap<String, (String, u64)> = Default::default();
    let mut execs = 0;
    for item in reader {
        match item.unwrap() {
            CaptureItem::Tick(t) => {
                for p in agg.tick(&t).points {
                    let e = by_name.entry(p.name).or_insert((p.workload.0, 0));
                    e.1 += p.profile.cpu_ns;
                }
            }
            CaptureItem::Event(ev) => {
                if let LifecycleKind::Exec { argv, .. } = &ev.kind
                    && argv.lossy().iter().any(|a| a == "etl.py")
                {
                    assert_eq!(argv.source, ArgvSource::Kernel);
                    execs += 1;
                }
            }
        }
    }
    eprintln!("{by_name:#?}");
    assert_eq!(execs, 3, "execs of etl.py");
    let mut keys = std::collections::HashSet::new();
    for (name, prefix) in [
        ("etl.py", "script:sha256:"),
        ("report.py", "script:sha256:"),
        ("umbra_fixture_mod", "module:python:umbra_fixture_mod"),
        ("backup.sh", "script:sha256:"),
        ("rotate.sh", "script:sha256:"),
    ] {
        let (key, cpu) = by_name
            .get(name)
            .unwrap_or_else(|| panic!("no workload {name}"));
        assert!(key.starts_with(prefix), "{name}: {key}");
        assert!(*cpu > 10_000_000, "{name} used {cpu} ns of CPU");
        assert!(keys.insert(key.clone()), "{name} shares {key}");
    }
}
