use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::capture::{DropCounts, Exit, Memory};

fn sample(tgid: u32, start: u64, exe: &str, cpu: u64, wbytes: u64) -> ProcessSample {
    ProcessSample {
        tgid,
        start_ns: start,
        ppid: Some(1),
        cgroup_id: 9,
        comm: exe.into(),
        exe: Some(format!("/usr/bin/{exe}").into()),
        exe_hash: Some(format!("sha256:{exe}").into()),
        cgroup: Some(format!("/svc/{exe}").into()),
        app: None,
        counters: Arc::new(ProcCounters {
            cpu_ns: cpu,
            write_bytes: wbytes,
            ..Default::default()
        }),
        memory: Memory {
            anon: 4096,
            ..Default::default()
        },
        exit: None,
    }
}

fn tick(ts_s: u64, samples: Vec<ProcessSample>) -> Tick {
    Tick {
        timestamp_ns: ts_s * 1_000_000_000,
        wall_ms: ts_s * 1000,
        samples: samples.into_iter().map(Arc::new).collect(),
        drops: DropCounts::default(),
        node: NodeStats {
            cpus: 2,
            cpu_busy_ns: ts_s * 500_000_000,
            ..Default::default()
        },
        pressure: vec![],
    }
}

#[test]
fn deltas_per_workload_and_node() {
    let mut a = Aggregator::new(GroupBy::Exe, 1000);
    a.tick(&tick(
        1,
        vec![
            sample(10, 1, "nginx", 100, 0),
            sample(11, 1, "nginx", 50, 0),
        ],
    ));
    let w = a.tick(&tick(
        2,
        vec![
            sample(10, 1, "nginx", 600, 10),
            sample(11, 1, "nginx", 150, 5),
            sample(12, 1, "gzip", 7, 0),
        ],
    ));
    assert_eq!(w.points.len(), 2);
    let nginx = w.points.iter().find(|p| p.name == "nginx").expect("nginx");
    assert_eq!(nginx.workload.0, "exe:sha256:nginx");
    assert_eq!(nginx.processes, 2);
    assert_eq!(nginx.profile.cpu_ns, 600);
    assert_eq!(nginx.profile.write_bytes, 15);
    assert!((nginx.profile.cpu_cores - 600e-9).abs() < 1e-15);
    assert_eq!(nginx.interval_ms, 1000);
    assert_eq!(w.node.cpu_busy_ns, 500_000_000);
    assert_eq!(w.node.totals.cpu_ns, 607);
}

#[test]
fn an_exit_counts_in_its_interval_and_then_is_forgotten() {
    let mut a = Aggregator::new(GroupBy::Exe, 1000);
    a.tick(&tick(1, vec![sample(10, 1, "job", 100, 0)]));
    let mut last = sample(10, 1, "job", 400, 0);
    last.exit = Some(Exit {
        code: Some(0),
        timestamp_ns: 1_500_000_000,
    });
    let w = a.tick(&tick(2, vec![last]));
    assert_eq!(w.points[0].profile.cpu_ns, 300);
    assert_eq!(
        w.points[0].profile.rss_bytes, 0,
        "an exited process holds no memory"
    );
    assert!(a.prev.is_empty());
}

#[test]
fn a_process_missing_from_one_tick_is_not_counted_twice() {
    let mut a = Aggregator::new(GroupBy::Exe, 1000);
    a.tick(&tick(1, vec![sample(10, 1, "a", 1_000, 0)]));
    a.tick(&tick(2, vec![]));
    let w = a.tick(&tick(3, vec![sample(10, 1, "a", 1_500, 0)]));
    assert_eq!(w.points[0].profile.cpu_ns, 500);
}

#[test]
fn a_process_missing_for_longer_than_a_few_ticks_is_forgotten_at_any_tick() {
    // Missing for FORGET_AFTER_TICKS ticks it is still remembered; for one more it is a
    // new process (counted whole), whether or not its entry was let go yet: the same at
    // every phase of the pruning.
    for offset in 0..PRUNE_EVERY_TICKS {
        for gap in [FORGET_AFTER_TICKS - 1, FORGET_AFTER_TICKS] {
            let mut a = Aggregator::new(GroupBy::Exe, 1000);
            let mut ts = 1;
            for _ in 0..offset {
                a.tick(&tick(ts, vec![sample(20, 1, "b", 0, 0)]));
                ts += 1;
            }
            a.tick(&tick(ts, vec![sample(10, 1, "a", 1_000, 0)]));
            for _ in 0..gap {
                ts += 1;
                a.tick(&tick(ts, vec![]));
            }
            let w = a.tick(&tick(ts + 1, vec![sample(10, 1, "a", 1_500, 0)]));
            let want = if gap < FORGET_AFTER_TICKS { 500 } else { 1_500 };
            assert_eq!(
                w.points[0].profile.cpu_ns, want,
                "offset {offset} gap {gap}"
            );
        }
    }
}

#[test]
fn a_reused_pid_is_a_new_process() {
    let mut a = Aggregator::new(GroupBy::Exe, 1000);
    a.tick(&tick(1, vec![sample(10, 1, "a", 1_000, 0)]));
    // Same tgid, new start: its counters are its own, not a delta against the old one.
    let w = a.tick(&tick(2, vec![sample(10, 2, "b", 30, 0)]));
    assert_eq!(w.points[0].name, "b");
    assert_eq!(w.points[0].profile.cpu_ns, 30);
}

#[test]
fn grouping_by_cgroup_uses_the_path() {
    let mut a = Aggregator::new(GroupBy::Cgroup, 1000);
    let w = a.tick(&tick(1, vec![sample(10, 1, "x", 5, 0)]));
    assert_eq!(w.points[0].workload.0, "cgroup:/svc/x");
    assert_eq!(w.points[0].name, "x");
}

#[test]
fn a_cgroup_workload_carries_its_pressure() {
    let mut a = Aggregator::new(GroupBy::Cgroup, 1000);
    let mut t = tick(1, vec![sample(10, 1, "x", 5, 0)]);
    t.pressure = vec![crate::capture::CgroupPressure {
        cgroup: "/svc/x".into(),
        cpu: Some(4.5),
        memory: None,
        io: Some(1.0),
    }];
    let w = a.tick(&t);
    let p = w.points[0].profile.pressure.as_ref().expect("pressure");
    assert_eq!(
        (p.cpu_some_avg10, p.memory_some_avg10, p.io_some_avg10),
        (4.5, 0.0, 1.0)
    );
    let mut e = Aggregator::new(GroupBy::Exe, 1000);
    assert_eq!(
        e.tick(&t).points[0].profile.pressure,
        None,
        "an executable has no cgroup"
    );
}

#[test]
fn kernel_threads_are_one_workload() {
    let a = Aggregator::new(GroupBy::Exe, 1000);
    let mut s = sample(2, 1, "kthreadd", 0, 0);
    s.exe = None;
    s.exe_hash = None;
    assert_eq!(a.workload(&s).0.0, "kernel");
}

proptest! {
    /// Conservation: in every interval the sum over workloads equals the sum over
    /// processes, and no delta is negative, whatever the processes do.
    #[test]
    fn workloads_conserve_what_processes_did(
        steps in prop::collection::vec(
            prop::collection::vec((0u32..12, 0u64..1_000_000, 0u64..10_000, any::<bool>()), 0..12),
            1..8,
        )
    ) {
        let mut a = Aggregator::new(GroupBy::Exe, 1000);
        // tgid -> (start, cpu, bytes, last step seen)
        let mut cum: HashMap<u32, (u64, u64, u64, usize)> = HashMap::new();
        let mut next_start = 1u64;
        for (i, step) in steps.iter().enumerate() {
            let mut samples = Vec::new();
            let mut want_cpu = 0u64;
            let mut want_bytes = 0u64;
            let mut seen = std::collections::HashSet::new();
            for &(tgid, dcpu, dbytes, exits) in step {
                if !seen.insert(tgid) {
                    continue;
                }
                // Gone for FORGET_AFTER_TICKS steps: the aggregator forgot it; a new process.
                if cum.get(&tgid).is_some_and(|e| i - e.3 >= FORGET_AFTER_TICKS as usize) {
                    cum.remove(&tgid);
                }
                let e = cum.entry(tgid).or_insert_with(|| {
                    next_start += 1;
                    (next_start, 0, 0, i)
                });
                e.3 = i;
                e.1 += dcpu;
                e.2 += dbytes;
                want_cpu += dcpu;
                want_bytes += dbytes;
                let mut s = sample(tgid, e.0, if tgid % 3 == 0 { "a" } else { "b" }, e.1, e.2);
                if exits {
                    s.exit = Some(Exit { code: Some(0), timestamp_ns: 0 });
                    cum.remove(&tgid);
                }
                samples.push(s);
            }
            // A process missing from a step is still alive: its counters continue.
            let w = a.tick(&tick(i as u64 + 1, samples));
            let cpu: u64 = w.points.iter().map(|p| p.profile.cpu_ns).sum();
            let bytes: u64 = w.points.iter().map(|p| p.profile.write_bytes).sum();
            prop_assert_eq!(cpu, want_cpu);
            prop_assert_eq!(bytes, want_bytes);
            prop_assert_eq!(w.node.totals.cpu_ns, want_cpu);
            let procs: u32 = w.points.iter().map(|p| p.processes).sum();
            prop_assert_eq!(procs as usize, seen.len());
        }
    }
}

#[test]
fn an_exec_moves_the_process_to_its_new_workload() {
    let mut a = Aggregator::new(GroupBy::Exe, 1000);
    a.tick(&tick(1, vec![sample(10, 1, "sh", 100, 0)]));
    // Same process (pid and start time), now running gzip after an exec.
    let w = a.tick(&tick(2, vec![sample(10, 1, "gzip", 400, 0)]));
    assert_eq!(w.points.len(), 1);
    assert_eq!(w.points[0].workload.0, "exe:sha256:gzip");
    assert_eq!(w.points[0].profile.cpu_ns, 300);
    let w = a.tick(&tick(3, vec![sample(10, 1, "gzip", 450, 0)]));
    assert_eq!(w.points[0].profile.cpu_ns, 50);
}

#[test]
fn idle_workloads_are_let_go_and_come_back_whole() {
    let mut a = Aggregator::new(GroupBy::Exe, 1000);
    // 3,000 short-lived workloads, then one long-lived process.
    for t in 1..=30u64 {
        let batch = (0..100)
            .map(|i| {
                let n = (t * 100 + i) as u32;
                sample(1000 + n, 1, &format!("w{n}"), 5, 0)
            })
            .collect();
        a.tick(&tick(t, batch));
    }
    let mut cpu = 10;
    for t in 31..=200u64 {
        cpu += 10;
        let w = a.tick(&tick(t, vec![sample(7, 1, "daemon", cpu, 0)]));
        if t > 31 {
            assert_eq!(w.points.len(), 1);
            assert_eq!(w.points[0].profile.cpu_ns, 10, "tick {t}");
        }
    }
    assert!(a.slots.len() < 100, "{} slots kept", a.slots.len());
    // A forgotten workload that comes back is a workload again.
    let w = a.tick(&tick(201, vec![sample(8, 2, "w101", 9, 0)]));
    assert_eq!(w.points[0].workload.0, "exe:sha256:w101");
    assert_eq!(w.points[0].profile.cpu_ns, 9);
}
