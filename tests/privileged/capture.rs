//! Capture accuracy on the real kernel: each test starts a child doing known work and
//! compares what the kernel programs counted with what the work was (or with the
//! kernel's own accounting in /proc).
#![allow(clippy::unwrap_used)]

use std::{collections::HashSet, time::Duration};

use umbra::capture::{DropKind, Hook, HookStatus, KernelCapture, LifecycleKind};
use umbra_tests::*;

const MIB: u64 = 1 << 20;

#[test]
fn cpu_time_of_a_spinner_matches_schedstat() {
    if !privileged("cpu_time_of_a_spinner_matches_schedstat") {
        return;
    }
    cpu_test(capture());
}

/// The classic-tracepoint fallback (kernels without BTF tracepoints) is exercised here too,
/// where the BTF path is preferred: it must measure the same.
#[test]
fn classic_tracepoint_fallback_measures_cpu_and_run_queue() {
    if !privileged("classic_tracepoint_fallback_measures_cpu_and_run_queue") {
        return;
    }
    let cfg = umbra::config::CaptureConfig {
        btf_tracepoints: false,
        ..Default::default()
    };
    let cap = capture_with(&cfg);
    for h in [Hook::SchedSwitch, Hook::SchedWakeup, Hook::SchedProcessFork] {
        assert_eq!(
            cap.report().status(h),
            Some(&umbra::capture::HookStatus::Tracepoint),
            "{h}"
        );
    }
    cpu_test(cap);
    runq_test(capture_with(&cfg));
}

/// A kernel that lacks a tracepoint (simulated on this one): an optional hook is reported
/// unavailable with the tracepoint named and everything else still measures; without a
/// required one, loading fails with an error naming it.
#[test]
fn a_missing_tracepoint_is_named_and_the_rest_still_measures() {
    if !privileged("a_missing_tracepoint_is_named_and_the_rest_still_measures") {
        return;
    }
    let cfg = umbra::config::CaptureConfig {
        simulate_missing: vec![
            "sched/sched_wakeup".into(),
            "block/block_rq_complete".into(),
        ],
        ..Default::default()
    };
    let cap = capture_with(&cfg);
    for h in [Hook::SchedWakeup, Hook::BlockRqComplete] {
        match cap.report().status(h) {
            Some(HookStatus::Unavailable(why)) => {
                eprintln!("{h}: {why}");
                assert!(why.contains(&h.to_string()), "{h}: {why}");
            }
            other => panic!("{h} is missing, yet its status is {other:?}"),
        }
    }
    assert!(cap.report().attached(Hook::SchedSwitch));
    cpu_test(cap);

    let cfg = umbra::config::CaptureConfig {
        simulate_missing: vec!["sched/sched_process_exec".into()],
        ..Default::default()
    };
    let err = match KernelCapture::load(&cfg) {
        Ok(_) => panic!("loaded without the required sched/sched_process_exec"),
        Err(e) => e.to_string(),
    };
    eprintln!("without sched_process_exec: {err}");
    assert!(
        err.contains("sched/sched_process_exec") && err.contains("missing"),
        "{err}"
    );
}

fn cpu_test(mut cap: umbra::capture::KernelCapture) {
    let mut w = Workload::start(&["spin", "500"]);
    w.go();
    w.wait_done();
    // Blocked now in sigwait: both counts are final for this phase.
    let s = sample_where(&mut cap, w.pid(), Duration::from_secs(5), |s| {
        s.counters.cpu_ns > 0
    })
    .expect("no CPU time captured for the spinner");
    let want = schedstat_ns(w.pid());
    let got = s.counters.cpu_ns;
    let err = rel_err(got as f64, want as f64);
    eprintln!(
        "cpu: captured {got} ns, schedstat {want} ns, error {:.4}%",
        err * 100.0
    );
    assert!(want >= 450_000_000, "the spinner ran only {want} ns");
    assert!(
        err <= 0.02,
        "captured {got} ns vs schedstat {want} ns ({:.2}%)",
        err * 100.0
    );
    assert!(s.counters.voluntary_switches + s.counters.involuntary_switches > 0);
    w.finish();
}

fn io_test(mode: &str) -> umbra::capture::ProcessSample {
    let mut cap = capture();
    let path = disk_dir().join(format!("io-{mode}-{}", std::process::id()));
    let bytes = (64 * MIB).to_string();
    let w = Workload::start(&["io", path.to_str().unwrap(), &bytes, mode]);
    let pid = w.pid();
    let before = sample_now(&mut cap, pid);
    w.go();
    w.wait();
    let after = final_sample(&mut cap, pid);
    let _ = std::fs::remove_file(&path);
    let d = after.counters.since(&before.counters);
    eprintln!(
        "io {mode}: read {} write {} block_read {} block_write {} block_ios {}",
        d.read_bytes, d.write_bytes, d.block_read_bytes, d.block_write_bytes, d.block_ios
    );
    assert_eq!(d.write_bytes, 64 * MIB, "write bytes");
    assert_eq!(d.read_bytes, 64 * MIB, "read bytes");
    d_into(after, d)
}

fn d_into(
    mut s: umbra::capture::ProcessSample,
    d: umbra::capture::ProcCounters,
) -> umbra::capture::ProcessSample {
    s.counters = d;
    s
}

#[test]
fn syscall_io_bytes_are_exact() {
    if !privileged("syscall_io_bytes_are_exact") {
        return;
    }
    io_test("plain");
}

#[test]
fn block_io_of_direct_writes_is_attributed_with_latency() {
    if !privileged("block_io_of_direct_writes_is_attributed_with_latency") {
        return;
    }
    let s = io_test("direct");
    let c = &s.counters;
    assert!(
        c.block_write_bytes >= 64 * MIB,
        "block writes {} < 64 MiB",
        c.block_write_bytes
    );
    let hist: u64 = c.block_hist.iter().map(|&n| n as u64).sum();
    assert!(hist > 0, "empty block latency histogram");
}

#[test]
fn block_io_of_fsynced_writes_is_attributed() {
    if !privileged("block_io_of_fsynced_writes_is_attributed") {
        return;
    }
    let s = io_test("fsync");
    assert!(
        s.counters.block_write_bytes >= 64 * MIB,
        "block writes {} < 64 MiB",
        s.counters.block_write_bytes
    );
    assert!(s.counters.block_hist.iter().any(|&n| n > 0));
}

#[test]
fn loopback_tcp_bytes_and_connection_are_counted() {
    if !privileged("loopback_tcp_bytes_and_connection_are_counted") {
        return;
    }
    tcp_test(capture());
}

/// Kernels before 6.3 lack `sock/sock_send_length` and `sock_recv_length`: network bytes
/// then come from the send and receive syscalls. Simulated here where they exist.
#[test]
fn without_sock_tracepoints_network_bytes_come_from_syscalls() {
    if !privileged("without_sock_tracepoints_network_bytes_come_from_syscalls") {
        return;
    }
    let cfg = umbra::config::CaptureConfig {
        simulate_missing: vec![
            "sock/sock_send_length".into(),
            "sock/sock_recv_length".into(),
        ],
        ..Default::default()
    };
    let cap = capture_with(&cfg);
    for h in [Hook::SockSendLength, Hook::SockRecvLength] {
        assert_eq!(
            cap.report().status(h),
            Some(&HookStatus::SyscallFallback),
            "{h}"
        );
    }
    tcp_test(cap);
}

fn tcp_test(mut cap: KernelCapture) {
    for h in [Hook::SockSendLength, Hook::SockRecvLength] {
        let s = cap.report().status(h);
        assert!(
            cap.report().attached(h) || s == Some(&HookStatus::SyscallFallback),
            "{h}: {s:?}"
        );
    }
    let total = 16 * MIB;
    let recv = Workload::start(&["recv"]);
    let port = recv.info.clone();
    let send = Workload::start(&["send", &port, &total.to_string()]);
    let (rp, sp) = (recv.pid(), send.pid());
    recv.go();
    send.go();
    send.wait();
    recv.wait();
    let mut finals = final_samples(&mut cap, &[sp, rp]);
    let r = finals.pop().unwrap();
    let s = finals.pop().unwrap();
    let (tx, rx) = (s.counters.net_tx_bytes, r.counters.net_rx_bytes);
    eprintln!(
        "net: sent {tx} received {rx} opened {} accepted {} closed {}+{}",
        s.counters.conn_opened,
        r.counters.conn_accepted,
        s.counters.conn_closed,
        r.counters.conn_closed
    );
    assert!(
        rel_err(tx as f64, total as f64) <= 0.01,
        "sent {tx} of {total}"
    );
    assert!(
        rel_err(rx as f64, total as f64) <= 0.01,
        "received {rx} of {total}"
    );
    assert_eq!(
        s.counters.conn_opened, 1,
        "connections opened by the sender"
    );
    assert_eq!(
        r.counters.conn_accepted, 1,
        "connections accepted by the receiver"
    );
}

#[test]
fn rss_of_touched_memory_matches_vmrss() {
    if !privileged("rss_of_touched_memory_matches_vmrss") {
        return;
    }
    let mut cap = capture();
    let mut w = Workload::start(&["touch", "256"]);
    w.go();
    w.wait_done();
    let want = vm_rss(w.pid());
    let s = sample_where(&mut cap, w.pid(), Duration::from_secs(5), |s| {
        s.memory.rss() > 200 * MIB
    })
    .expect("RSS of the toucher never passed 200 MiB");
    let got = s.memory.rss();
    let err = rel_err(got as f64, want as f64);
    eprintln!(
        "mem: captured rss {got}, VmRSS {want}, error {:.3}%",
        err * 100.0
    );
    assert!(want >= 256 * MIB);
    assert!(err <= 0.05, "rss {got} vs VmRSS {want}");
    if cap.report().attached(Hook::PageFaultUser) {
        assert!(
            s.counters.page_faults >= 256 * MIB / 4096,
            "page faults {}",
            s.counters.page_faults
        );
    }
    w.finish();
}

#[test]
fn a_thousand_execs_all_arrive_without_drops() {
    if !privileged("a_thousand_execs_all_arrive_without_drops") {
        return;
    }
    const N: usize = 1000;
    let mut cap = capture();
    let mut w = Workload::start(&["exec", &N.to_string(), "/bin/true"]);
    let parent = w.pid();
    w.go();
    let mut events = Vec::new();
    loop {
        cap.drain_events(&mut events);
        if w.child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    events.extend(collect_events(&mut cap, Duration::from_millis(300)));
    let execs: HashSet<u32> = events
        .iter()
        .filter(|e| e.ppid == Some(parent))
        .filter(
            |e| matches!(&e.kind, LifecycleKind::Exec { filename, .. } if filename == "/bin/true"),
        )
        .map(|e| e.tgid)
        .collect();
    let exits: HashSet<u32> = events
        .iter()
        .filter(|e| matches!(e.kind, LifecycleKind::Exit { code: Some(0) }))
        .map(|e| e.tgid)
        .filter(|t| execs.contains(t))
        .collect();
    let drops = cap.drop_counts().unwrap();
    let lost: Vec<_> = drops.by_program().collect();
    eprintln!(
        "lifecycle: {} execs, {} exits, drops {lost:?}",
        execs.len(),
        exits.len()
    );
    assert_eq!(execs.len(), N, "exec events of /bin/true");
    assert_eq!(exits.len(), N, "exit events of those processes");
    assert_eq!(drops.lost(), 0, "kernel drops: {drops:?}");
}

#[test]
fn pinned_spinners_wait_in_the_run_queue() {
    if !privileged("pinned_spinners_wait_in_the_run_queue") {
        return;
    }
    runq_test(capture());
}

fn runq_test(mut cap: umbra::capture::KernelCapture) {
    let mut a = Workload::start(&["spin", "400", "0"]);
    let mut b = Workload::start(&["spin", "400", "0"]);
    a.go();
    b.go();
    a.wait_done();
    b.wait_done();
    for w in [&a, &b] {
        let s = sample_where(&mut cap, w.pid(), Duration::from_secs(5), |s| {
            s.counters.runq_waits > 0
        })
        .unwrap_or_else(|| panic!("no run-queue wait for spinner {}", w.pid()));
        let c = &s.counters;
        eprintln!(
            "runq {}: waits {} total {} ns",
            w.pid(),
            c.runq_waits,
            c.runq_wait_ns
        );
        assert!(c.runq_wait_ns > 0);
        assert!(c.runq_hist.iter().any(|&n| n > 0));
        assert!(c.involuntary_switches > 0);
    }
    a.finish();
    b.finish();
}

#[test]
fn a_process_moved_to_another_cgroup_is_followed() {
    if !privileged("a_process_moved_to_another_cgroup_is_followed") {
        return;
    }
    let Some(root) = cgroup2_root() else {
        panic!("no cgroup2 mount in /proc/mounts");
    };
    let dir = root.join(format!("umbra-test-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dir).unwrap());
    let mut cap = capture();
    let mut w = Workload::start(&["spin", "50"]);
    std::fs::write(dir.join("cgroup.procs"), w.pid().to_string()).unwrap();
    w.go();
    w.wait_done();
    let s = sample_where(&mut cap, w.pid(), Duration::from_secs(5), |s| {
        s.cgroup_id == id
    });
    w.finish();
    std::fs::remove_dir(&dir).unwrap();
    let s = s.unwrap_or_else(|| panic!("cgroup id of the moved process never became {id}"));
    assert_eq!(s.cgroup_id, id);
}

fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| std::path::PathBuf::from(f[1]))
}

#[test]
fn a_full_process_map_is_a_counted_drop() {
    if !privileged("a_full_process_map_is_a_counted_drop") {
        return;
    }
    let cfg = umbra::config::CaptureConfig {
        max_processes: 64,
        ..Default::default()
    };
    let mut cap = capture_with(&cfg);
    // More processes than the map holds, all alive at once.
    let kids: Vec<Workload> = (0..100).map(|_| Workload::start(&["spin", "1"])).collect();
    for k in &kids {
        k.go();
    }
    let tick = cap.sample().unwrap();
    let drops = cap.drop_counts().unwrap();
    for mut k in kids {
        k.wait_done();
        k.finish();
    }
    let full = drops.get(DropKind::ProcMapFull);
    eprintln!("map full: {} tracked, {full} drops", tick.samples.len());
    assert!(
        tick.samples.len() <= 64,
        "{} processes in a 64-entry map",
        tick.samples.len()
    );
    assert!(full > 0, "a full process map dropped nothing: {drops:?}");
}

#[test]
fn a_reused_pid_never_merges_two_processes() {
    if !privileged("a_reused_pid_never_merges_two_processes") {
        return;
    }
    let mut cap = capture();
    for attempt in 0..10 {
        // A: 300 ms of CPU, then gone (not yet collected: no sample is read in between).
        let mut a = Workload::start(&["spin", "300"]);
        let pid = a.pid();
        a.go();
        a.wait_done();
        let a_seen = sample_now(&mut cap, pid);
        a.finish();
        // B: ask the kernel for the same pid.
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut b = Workload::start(&["spin", "1"]);
        if b.pid() != pid {
            eprintln!("attempt {attempt}: pid {pid} was taken by another process; again");
            b.go();
            b.wait_done();
            b.finish();
            continue;
        }
        b.go();
        b.wait_done();
        let tick = cap.sample().unwrap();
        let mine: Vec<_> = tick.samples.iter().filter(|s| s.tgid == pid).collect();
        eprintln!(
            "reuse of {pid}: {:?}",
            mine.iter()
                .map(|s| (s.start_ns, s.counters.cpu_ns, s.exit.is_some()))
                .collect::<Vec<_>>()
        );
        let old = mine
            .iter()
            .find(|s| s.start_ns == a_seen.start_ns)
            .expect("the first process's final sample");
        let new = mine
            .iter()
            .find(|s| s.start_ns != a_seen.start_ns)
            .expect("the second process, apart");
        assert!(
            old.exit.is_some(),
            "the first process is reported as exited"
        );
        assert!(
            old.counters.cpu_ns >= 250_000_000,
            "A's CPU {}",
            old.counters.cpu_ns
        );
        assert!(new.exit.is_none());
        assert!(
            new.counters.cpu_ns < 150_000_000,
            "B carries A's CPU: {}",
            new.counters.cpu_ns
        );
        b.finish();
        return;
    }
    panic!("could not get a pid reused in 10 attempts");
}

/// An exec's arguments come from the kernel (any bytes, cut at 512 with the full length
/// known), and arguments naming files (relative to the process's directory, or absolute)
/// are recorded with their sizes at the exec.
#[test]
fn exec_arguments_and_the_files_they_name_are_captured() {
    if !privileged("exec_arguments_and_the_files_they_name_are_captured") {
        return;
    }
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt};
    let dir = disk_dir().join(format!("argv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("in.dat"), vec![1u8; 12_345]).unwrap();
    let abs = dir.join("other.dat");
    std::fs::write(&abs, vec![2u8; 777]).unwrap();
    let long = "x".repeat(600);
    let other = format!("--input={}", abs.display());
    // sh stays alive for a moment, so the relative path resolves in its directory.
    let args: Vec<&OsStr> = vec![
        OsStr::new("-c"),
        OsStr::new("sleep 0.3"),
        OsStr::new("sh"),
        OsStr::new("in.dat"),
        OsStr::from_bytes(b"caf\xe9"),
        OsStr::new(&other),
        OsStr::new("missing.dat"),
        OsStr::new(&long),
    ];
    let mut cap = capture();
    let mut wargs: Vec<&OsStr> = vec![OsStr::new("exec"), OsStr::new("1"), OsStr::new("/bin/sh")];
    wargs.extend(&args);
    let mut w = Workload::start_in(&wargs, Some(&dir));
    let parent = w.pid();
    w.go();
    let mut events = Vec::new();
    while w.child.try_wait().unwrap().is_none() {
        cap.drain_events(&mut events);
        std::thread::sleep(Duration::from_millis(10));
    }
    cap.drain_events(&mut events);
    let _ = std::fs::remove_dir_all(&dir);
    let (argv, inputs) = events
        .iter()
        .filter(|e| e.ppid == Some(parent))
        .find_map(|e| match &e.kind {
            LifecycleKind::Exec { argv, inputs, .. } => Some((argv.clone(), inputs.clone())),
            _ => None,
        })
        .expect("the exec of /bin/sh");
    let mut want = b"/bin/sh\0".to_vec();
    for a in &args {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    eprintln!(
        "argv: {:?} ({} of {} bytes, {:?}), inputs {inputs:?}",
        argv.lossy(),
        argv.raw().len(),
        argv.total_len,
        argv.source
    );
    assert_eq!(argv.source, umbra::capture::ArgvSource::Kernel);
    assert_eq!(
        argv.total_len as usize,
        want.len(),
        "all the arguments' length"
    );
    assert!(argv.truncated());
    assert_eq!(argv.raw(), &want[..512], "the first 512 bytes, exactly");
    let args: Vec<&[u8]> = argv.args().collect();
    assert_eq!(args[5], b"caf\xe9", "a non-UTF-8 argument, unchanged");
    assert_eq!(
        inputs,
        vec![
            umbra::capture::InputFile {
                arg: 4,
                size: 12_345
            },
            umbra::capture::InputFile { arg: 6, size: 777 },
        ]
    );
}
