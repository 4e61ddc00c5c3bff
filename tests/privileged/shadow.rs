//! Shadow data points from the real kernel: aggregate conserves what the node did, and a
//! recording replays to exactly the points the live agent produced.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use umbra::{
    aggregate::{Aggregator, GroupBy, Window},
    capture::{CaptureItem, KernelCapture},
    record::{Header, Reader, Writer},
};
use umbra_tests::*;

/// Runs the live capture for `ticks` intervals of `interval`, aggregating with `agg` and
/// handing every item to `keep`.
fn live(
    cap: &mut KernelCapture,
    agg: &mut Aggregator,
    ticks: usize,
    interval: Duration,
    mut keep: impl FnMut(&CaptureItem),
) -> Vec<Window> {
    let mut windows = Vec::new();
    for _ in 0..ticks {
        std::thread::sleep(interval);
        let tick = cap.sample().unwrap();
        for ev in cap.take_events() {
            keep(&CaptureItem::Event(ev));
        }
        keep(&CaptureItem::Tick(Box::new(tick.clone())));
        windows.push(agg.tick(&tick));
    }
    windows
}

#[test]
fn workload_cpu_adds_up_to_node_busy_time_and_bytes_to_proc_io() {
    if !privileged("workload_cpu_adds_up_to_node_busy_time_and_bytes_to_proc_io") {
        return;
    }
    let mut cap = capture();
    // Mixed load: CPU spinners (one per CPU) and writers of known sizes.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    let spinners: Vec<Workload> = (0..cpus)
        .map(|_| Workload::start(&["spin", "13000"]))
        .collect();
    let dir = disk_dir();
    let writers: Vec<Workload> = (0..3)
        .map(|i| {
            let path = dir.join(format!("shadow-{}-{i}", std::process::id()));
            Workload::start(&[
                "io",
                path.to_str().unwrap(),
                &(((i + 1) * 4) << 20).to_string(),
                "plain",
            ])
        })
        .collect();
    let writer_pids: Vec<u32> = writers.iter().map(Workload::pid).collect();
    // The children are one workload: a cgroup of their own.
    let root = umbra::capture::cgroup2_root().expect("a cgroup2 mount");
    let name = format!("umbra-test-shadow-{}", std::process::id());
    let cg = root.join(&name);
    std::fs::create_dir(&cg).unwrap();
    for w in spinners.iter().chain(&writers) {
        std::fs::write(cg.join("cgroup.procs"), w.pid().to_string()).unwrap();
    }
    let workload = format!("cgroup:/{name}");
    let mut agg = Aggregator::new(GroupBy::Cgroup, 1000);
    for w in spinners.iter().chain(&writers) {
        w.go();
    }
    let mut windows = live(&mut cap, &mut agg, 11, Duration::from_secs(1), |_| {});
    // Children that exited are zombies until reaped: their /proc/<pid>/io is final.
    let mut want_bytes = 0;
    for (pid, w) in writer_pids.iter().zip(writers) {
        want_bytes += proc_io_wchar_when_done(*pid);
        w.wait();
    }
    for mut s in spinners {
        s.wait_done();
        let pid = s.pid();
        s.go();
        want_bytes += proc_io_wchar_when_done(pid);
        s.wait();
    }
    windows.extend(live(&mut cap, &mut agg, 2, Duration::from_secs(1), |_| {}));
    // CPU over the steady part of the run (the first window covers everything since
    // attach): the workloads' sum against /proc/stat busy time, printed per interval.
    let (mut sum_all, mut busy_all) = (0u64, 0u64);
    for (i, w) in windows.iter().enumerate().skip(1).take(9) {
        let sum: u64 = w.points.iter().map(|p| p.profile.cpu_ns).sum();
        let busy = w.node.cpu_busy_ns;
        eprintln!(
            "interval {i}: workloads {sum} ns, /proc/stat busy {busy} ns, error {:.2}%",
            rel_err(sum as f64, busy as f64) * 100.0
        );
        assert!(
            busy > cpus * 500_000_000,
            "the spinners kept the node's {cpus} CPUs busy: {busy}"
        );
        sum_all += sum;
        busy_all += busy;
    }
    let err = rel_err(sum_all as f64, busy_all as f64);
    eprintln!(
        "9 intervals: workloads {sum_all} ns, busy {busy_all} ns, error {:.2}%",
        err * 100.0
    );
    assert!(err <= 0.03, "workloads {sum_all} ns vs busy {busy_all} ns");
    // Bytes written by the children's workload (writers and spinners are one binary)
    // against what /proc counted for each of them.
    let got: u64 = windows
        .iter()
        .flat_map(|w| &w.points)
        .filter(|p| p.workload.0 == workload)
        .map(|p| p.profile.write_bytes)
        .sum();
    // PSI of the children's cgroup travels with their points, where the kernel has it.
    if cg.join("cpu.pressure").exists() {
        let with = windows
            .iter()
            .flat_map(|w| &w.points)
            .filter(|p| p.workload.0 == workload)
            .filter(|p| p.profile.pressure.is_some())
            .count();
        assert!(with > 0, "no pressure on the cgroup workload's points");
    }
    std::fs::remove_dir(&cg).unwrap();
    for i in 0..3 {
        let _ = std::fs::remove_file(dir.join(format!("shadow-{}-{i}", std::process::id())));
    }
    eprintln!("bytes: workload {got}, /proc/<pid>/io of the children {want_bytes}");
    assert_eq!(got, want_bytes);
}

fn proc_io_wchar_when_done(pid: u32) -> u64 {
    for _ in 0..600 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        if state == "Z" {
            let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
            return io
                .lines()
                .find_map(|l| l.strip_prefix("wchar: "))
                .unwrap()
                .parse()
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("writer {pid} did not finish");
}

#[test]
fn a_recording_replays_to_exactly_the_live_points() {
    if !privileged("a_recording_replays_to_exactly_the_live_points") {
        return;
    }
    let mut cap = capture();
    let path = disk_dir().join(format!("roundtrip-{}.umbra", std::process::id()));
    let header = Header {
        kernel: "test".into(),
        node: "test".into(),
        interval_ms: 500,
        start_ms: 0,
        agent_version: "test".into(),
    };
    let mut writer = Writer::create(&path, &header).unwrap();
    let w = Workload::start(&["exec", "50", "/bin/true"]);
    w.go();
    let live_windows = live(
        &mut cap,
        &mut Aggregator::new(GroupBy::Exe, 500),
        6,
        Duration::from_millis(500),
        |item| writer.write(item).unwrap(),
    );
    w.wait();
    writer.flush().unwrap();
    drop(writer);

    let mut agg = Aggregator::new(GroupBy::Exe, 500);
    let mut replayed = Vec::new();
    for item in Reader::open(&path).unwrap() {
        if let CaptureItem::Tick(t) = item.unwrap() {
            replayed.push(agg.tick(&t));
        }
    }
    let _ = std::fs::remove_file(&path);
    assert_eq!(replayed.len(), live_windows.len());
    let execs: u64 = live_windows.iter().map(|w| w.node.input.execs).sum();
    eprintln!("round trip: {} windows, {execs} execs", live_windows.len());
    assert!(
        execs >= 50,
        "the exec workload shows up as production input: {execs}"
    );
    assert_eq!(replayed, live_windows);
}
