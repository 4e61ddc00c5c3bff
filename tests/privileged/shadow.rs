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

/// As [`live`], but the ring buffer is drained every 5 ms between ticks, as the agent's
/// capture loop does in a storm (`Source::next` drains when the kernel wakes it — at most
/// every 50 ms, and whenever an eighth of the ring is used — and 50 ms after each wakeup):
/// for event storms a per-tick drain would overrun.
fn live_draining(
    cap: &mut KernelCapture,
    agg: &mut Aggregator,
    ticks: usize,
    interval: Duration,
    mut keep: impl FnMut(&CaptureItem),
) -> Vec<Window> {
    let step = Duration::from_millis(5);
    let mut windows = Vec::new();
    for _ in 0..ticks {
        let end = std::time::Instant::now() + interval;
        let mut early = Vec::new();
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(left.min(step));
            cap.drain_events(&mut early);
        }
        for ev in early {
            keep(&CaptureItem::Event(ev));
        }
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
    // In a QEMU guest (TCG) the task iterator's runtimes follow the guest's `sched_clock`,
    // whose TSC calibration differs from boot to boot (a 1-vCPU guest once summed 1.03
    // CPU-seconds a second): there this comparison would measure the emulator, so it runs
    // on the hooks, which time slices with the monotonic clock. The host runs it on both.
    let mut cap = if in_vm() && std::env::var_os("UMBRA_CAPTURE_COUNTERS").is_none() {
        capture_exact(&umbra::config::CaptureConfig {
            counters: umbra::capture::Counters::Hooks,
            ..Default::default()
        })
    } else {
        capture()
    };
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

/// Interpreted programs are workloads of their own under executable grouping: shell
/// scripts (one run as `sh FILE`, one through its `#!` line, one with a name that is not
/// UTF-8, one in a mount namespace of its own where the host does not see it) and, where
/// installed, two Python scripts and a Python module, live and in replay of the recording
/// made at the same time; a shell reading its program from a pipe stays the shell's.
#[test]
fn interpreted_programs_are_workloads_of_their_own_live_and_in_replay() {
    if !privileged("interpreted_programs_are_workloads_of_their_own_live_and_in_replay") {
        return;
    }
    use std::{ffi::OsStr, os::unix::ffi::OsStrExt, process::Command};
    let dir = disk_dir().join(format!("interp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Each program spins a little, then sleeps past the next tick.
    let work = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1.5\n";
    std::fs::write(dir.join("a.sh"), format!("# a\n{work}")).unwrap();
    let odd = dir.join(OsStr::from_bytes(b"b\xff.sh"));
    std::fs::write(&odd, format!("# b\n{work}")).unwrap();
    let shebang = dir.join("c.sh");
    std::fs::write(&shebang, format!("#!/bin/sh\n# c\n{work}")).unwrap();
    std::fs::set_permissions(
        &shebang,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // (command, expected workload name); relative paths resolve in `dir`.
    let mut runs: Vec<(Command, String)> = Vec::new();
    let mut sh = |script: &OsStr, name: &str| {
        let mut c = Command::new("/bin/sh");
        c.arg(script);
        runs.push((c, name.to_string()));
    };
    sh(OsStr::new("a.sh"), "a.sh");
    sh(OsStr::from_bytes(b"b\xff.sh"), "b\u{fffd}.sh");
    runs.push((Command::new(&shebang), "c.sh".into()));
    runs.push((
        in_own_namespace(&dir.join("ns"), "f.sh", work),
        "f.sh".into(),
    ));
    match python() {
        Some(py) => {
            let spin = "import time\nx=0\nfor i in range(300000): x+=i\ntime.sleep(1.5)\n";
            std::fs::write(dir.join("d.py"), format!("# d\n{spin}")).unwrap();
            std::fs::write(dir.join("e.py"), format!("# e\n{spin}")).unwrap();
            std::fs::write(dir.join("umbramod.py"), format!("# m\n{spin}")).unwrap();
            for (args, name) in [
                (vec!["d.py"], "d.py"),
                (vec!["-u", "e.py"], "e.py"),
                (vec!["-m", "umbramod"], "umbramod"),
            ] {
                let mut c = Command::new(&py);
                c.args(args);
                runs.push((c, name.to_string()));
            }
        }
        None => eprintln!("no python3 here: shell scripts only"),
    }
    let path = dir.join("interp.umbra");
    let header = Header {
        kernel: "test".into(),
        node: "test".into(),
        interval_ms: 500,
        start_ms: 0,
        agent_version: "test".into(),
    };
    let mut writer = Writer::create(&path, &header).unwrap();
    let mut cap = capture();
    let mut children: Vec<_> = runs
        .iter_mut()
        .map(|(c, _)| c.current_dir(&dir).spawn().unwrap())
        .collect();
    // `/proc/self/fd/0`: the guests' minimal /dev has no `/dev/stdin`.
    let mut piped = Command::new("/bin/sh")
        .arg("/proc/self/fd/0")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = piped.stdin.take().unwrap();
        stdin.write_all(work.as_bytes()).unwrap();
    }
    children.push(piped);
    let live_windows = live(
        &mut cap,
        &mut Aggregator::new(GroupBy::Exe, 500),
        6,
        Duration::from_millis(500),
        |item| writer.write(item).unwrap(),
    );
    for c in &mut children {
        assert!(c.wait().unwrap().success());
    }
    writer.flush().unwrap();
    drop(writer);
    let mut agg = Aggregator::new(GroupBy::Exe, 500);
    let replayed: Vec<Window> = Reader::open(&path)
        .unwrap()
        .filter_map(|i| match i.unwrap() {
            CaptureItem::Tick(t) => Some(agg.tick(&t)),
            CaptureItem::Event(_) => None,
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(replayed, live_windows, "replay gives the live points");
    let mut keys = std::collections::BTreeMap::new();
    for p in live_windows.iter().flat_map(|w| &w.points) {
        keys.insert(p.name.clone(), p.workload.0.clone());
    }
    eprintln!("workloads: {keys:#?}");
    // The agent's own standard input is not the shell's program.
    assert!(
        !keys.values().any(|k| k.contains("/fd/0")) && !keys.contains_key("0"),
        "a program read from a pipe keyed by its path: {keys:#?}"
    );
    let mut seen = std::collections::HashSet::new();
    for (_, name) in &runs {
        let key = keys
            .get(name)
            .unwrap_or_else(|| panic!("no workload named {name:?}: {keys:#?}"));
        let want = if name == "umbramod" {
            "module:python:umbramod"
        } else {
            "script:sha256:"
        };
        assert!(key.starts_with(want), "{name}: {key}");
        assert!(seen.insert(key.clone()), "{name} shares its workload {key}");
    }
}

/// `/bin/sh <dir>/<name>` in a mount namespace of its own, where a tmpfs over `dir` (empty
/// on the host) holds the script `body` — a container's file, seen only through the
/// process's root.
fn in_own_namespace(dir: &std::path::Path, name: &str, body: &str) -> std::process::Command {
    use std::{ffi::CString, os::unix::process::CommandExt};
    std::fs::create_dir_all(dir).unwrap();
    let c = |s: &str| CString::new(s).unwrap();
    let (root, at, tmpfs) = (c("/"), c(dir.to_str().unwrap()), c("tmpfs"));
    let file = c(dir.join(name).to_str().unwrap());
    let body = body.as_bytes().to_vec();
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg(dir.join(name));
    // SAFETY: between fork and exec only async-signal-safe calls (unshare, mount, open,
    // write, close) on buffers made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let ok = |r: libc::c_int| {
                if r < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(r)
                }
            };
            ok(libc::unshare(libc::CLONE_NEWNS))?;
            let none = std::ptr::null();
            ok(libc::mount(
                none,
                root.as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none.cast(),
            ))?;
            ok(libc::mount(
                tmpfs.as_ptr(),
                at.as_ptr(),
                tmpfs.as_ptr(),
                0,
                none.cast(),
            ))?;
            let fd = ok(libc::open(
                file.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT,
                0o644,
            ))?;
            let n = libc::write(fd, body.as_ptr().cast(), body.len());
            libc::close(fd);
            if n != body.len() as isize {
                return Err(std::io::Error::other("writing the script"));
            }
            Ok(())
        });
    }
    cmd
}

/// A Python 3 interpreter binary (not a wrapper script), if one is installed.
fn python() -> Option<std::path::PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    let p = String::from_utf8(out.stdout).ok()?;
    let p = std::path::PathBuf::from(p.trim());
    p.is_file().then_some(p)
}

/// What a fork/exec storm left: how many processes it started, the exec and exit
/// events of its children, its own and its children's CPU by their rusage, and the
/// windows.
struct Storm {
    started: usize,
    execs: usize,
    exits: usize,
    children_ns: u64,
    /// The storm process's own CPU by its rusage.
    parent_ns: u64,
    windows: Vec<Window>,
}

/// A fork/exec storm: a tiny static program started again and again for `secs` (8 at a
/// time), watched by `cap` for `secs + 5` ticks of 1 s; `drain` as the agent's loop
/// drains the ring between ticks, else only at each tick (a reader that stalls).
/// `ends_in_storm`, a workload that said `done`, exits 0.3 s after the second tick.
fn storm(
    cap: &mut KernelCapture,
    secs: u64,
    drain: bool,
    ends_in_storm: Option<Workload>,
) -> Storm {
    use umbra::capture::LifecycleKind;
    let dir = disk_dir();
    let tiny = dir.join(format!("tiny-{}", std::process::id()));
    std::fs::write(&tiny, tiny_exit_program()).unwrap();
    std::fs::set_permissions(&tiny, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let count = dir.join(format!("storm-count-{}", std::process::id()));
    let w = Workload::start(&[
        "storm",
        &secs.to_string(),
        tiny.to_str().unwrap(),
        count.to_str().unwrap(),
    ]);
    let pid = w.pid();
    let mut agg = Aggregator::new(GroupBy::Exe, 1000);
    let mut events = Vec::new();
    let mut keep = |i: &CaptureItem| {
        if let CaptureItem::Event(e) = i {
            events.push(e.clone());
        }
    };
    let mut watch = |cap: &mut KernelCapture, ticks, keep: &mut dyn FnMut(&CaptureItem)| {
        let second = Duration::from_secs(1);
        match drain {
            true => live_draining(cap, &mut agg, ticks, second, keep),
            false => live(cap, &mut agg, ticks, second, keep),
        }
    };
    w.go();
    let mut windows = watch(cap, 2, &mut keep);
    if let Some(done) = ends_in_storm {
        // Once the ring and `FREED` have filled again.
        std::thread::sleep(Duration::from_millis(300));
        done.finish();
    }
    windows.extend(watch(cap, secs as usize + 1, &mut keep));
    w.wait();
    windows.extend(watch(cap, 2, &mut keep));
    let (started, children_ns, parent_ns) = {
        let s = std::fs::read_to_string(&count).unwrap();
        let mut f = s.split_whitespace().map(|v| v.parse::<u64>().unwrap());
        (
            f.next().unwrap() as usize,
            f.next().unwrap(),
            f.next().unwrap(),
        )
    };
    let _ = std::fs::remove_file(&count);
    let _ = std::fs::remove_file(&tiny);
    let tiny_name = tiny.to_str().unwrap();
    // Counted, not collected by pid: 10 s of storm wraps a pid_max of 32768.
    let execs = events
        .iter()
        .filter(|e| e.ppid == Some(pid))
        .filter(
            |e| matches!(&e.kind, LifecycleKind::Exec { filename, .. } if filename == tiny_name),
        )
        .count();
    let exits = events
        .iter()
        .filter(|e| matches!(e.kind, LifecycleKind::Exit { .. }) && e.ppid == Some(pid))
        .count();
    Storm {
        started,
        execs,
        exits,
        children_ns,
        parent_ns,
        windows,
    }
}

/// The processes' CPU over a storm's windows (the short ones' from their final counters)
/// against the node's busy time, printed by interval: the relative error.
fn storm_cpu_error(s: &Storm) -> f64 {
    let (mut sum, mut busy) = (0u64, 0u64);
    for (i, w) in s.windows.iter().enumerate().skip(1) {
        let p: u64 = w.points.iter().map(|p| p.profile.cpu_ns).sum();
        eprintln!(
            "interval {i}: processes {p} ns, /proc/stat busy {} ns",
            w.node.cpu_busy_ns
        );
        sum += p;
        busy += w.node.cpu_busy_ns;
    }
    // The storm's children as the capture saw them, against their own rusage.
    let children = cpu_of(s, |n| n.contains("tiny"));
    eprintln!(
        "storm children: captured {children} ns (with exec events), rusage {} ns",
        s.children_ns
    );
    let err = rel_err(sum as f64, busy as f64);
    eprintln!(
        "storm CPU: processes {sum} ns, /proc/stat busy {busy} ns, error {:.2}%",
        err * 100.0
    );
    err
}

/// The CPU time of the workloads whose name `is`, over all of a storm's windows.
fn cpu_of(s: &Storm, is: impl Fn(&str) -> bool) -> u64 {
    s.windows
        .iter()
        .flat_map(|w| &w.points)
        .filter(|p| is(&p.name))
        .map(|p| p.profile.cpu_ns)
        .sum()
}

/// Ring-buffer drops counted for kernel program `prog`.
fn ring_full_of(drops: &umbra::capture::DropCounts, prog: &str) -> u64 {
    drops
        .by_program()
        .filter(|(p, k, _)| *p == prog && *k == "ringbuf_full")
        .map(|(_, _, n)| n)
        .sum()
}

/// A fork/exec storm of 10 s, read as the agent reads: every exec and exit arrives, or
/// each one lost is counted; the capture's memory stays bounded; and the processes' CPU
/// still adds up to /proc/stat busy time within 3%.
#[test]
#[ignore = "run by `cargo xtask test` on the host's default counters (the task iterator), \
            where it holds; not on the hooks, whose full PROC_STATS map loses the CPU of \
            slices it cannot hold (counted as drops): 3-7% low; nor in TCG guests, whose \
            scheduler clock is the emulated TSC"]
fn a_fork_exec_storm_loses_nothing_uncounted_and_still_adds_up() {
    if !privileged("a_fork_exec_storm_loses_nothing_uncounted_and_still_adds_up") {
        return;
    }
    let mut cap = capture();
    let s = storm(&mut cap, 10, true, None);
    let drops = cap.drop_counts().unwrap();
    let tracked = cap.tracked();
    eprintln!(
        "storm: {} started ({:.0}/s), {} exec and {} exit events, ring-full drops {}, all drops {:?}, {tracked} entries tracked",
        s.started,
        s.started as f64 / 10.0,
        s.execs,
        s.exits,
        drops.get(umbra::capture::DropKind::RingBufFull),
        drops.by_program().collect::<Vec<_>>()
    );
    let err = storm_cpu_error(&s);
    let parent = cpu_of(&s, |n| n == "umbra-workload");
    eprintln!(
        "storm process: captured {parent} ns, rusage {} ns",
        s.parent_ns
    );
    assert!(s.started > 500, "the storm started only {}", s.started);
    // Every exec and exit is here, or the ring buffer's drops of its kind account for it.
    for (kind, seen, prog) in [
        ("exec", s.execs, "sched_process_exec"),
        ("exit", s.exits, "sched_process_exit"),
    ] {
        let missing = s.started.saturating_sub(seen) as u64;
        let counted = ring_full_of(&drops, prog);
        assert!(
            missing <= counted,
            "{missing} {kind} events missing, {counted} counted"
        );
    }
    // Memory bounded: what the capture remembers does not grow with the storm.
    assert!(tracked < 4 * 8192, "{tracked} entries tracked");
    assert!(err <= 0.03, "CPU error {:.2}%", err * 100.0);
    // The one process whose own CPU is known exactly.
    assert!(rel_err(parent as f64, s.parent_ns as f64) <= 0.02);
}

/// A storm whose reader stalls between ticks, with the smallest ring and maps: most
/// freed processes find no room for their final counters, neither in the ring nor in
/// `FREED`. Their owners are lost (counted), their CPU time is not: it comes as the
/// process "(exits not held)", at least in the share of the children's CPU that their
/// number is of all children (every child runs the same tiny program); and a process the
/// walks saw, ending in the storm, does not count its time again.
#[test]
#[ignore = "run by `cargo xtask test` on the host's default counters (the task iterator), \
            the one path that reads final counters at the free; not in TCG guests, whose \
            scheduler clock is the emulated TSC"]
fn a_storm_past_every_buffer_keeps_its_cpu_time() {
    if !privileged("a_storm_past_every_buffer_keeps_its_cpu_time") {
        return;
    }
    let cfg = umbra::config::CaptureConfig {
        ring_buffer_kib: 64,
        max_processes: 2048,
        ..umbra::config::CaptureConfig::default()
    };
    let mut cap = capture_with(&cfg);
    // A process that used 0.8 s of CPU, seen by the walks, then sleeps and exits in the
    // storm: its final counters find no room either, and must not count its time again.
    let mut spinner = Workload::start(&["spin", "800"]);
    spinner.go();
    spinner.wait_done();
    let s = storm(&mut cap, 4, false, Some(spinner));
    let drops = cap.drop_counts().unwrap();
    let unheld = cpu_of(&s, |n| n == umbra::capture::UNHELD_NAME);
    let lost = ring_full_of(&drops, "sched_process_free");
    let share = s.children_ns as f64 * lost as f64 / s.started as f64;
    let parent = cpu_of(&s, |n| n == "umbra-workload");
    eprintln!(
        "storm: {} started, {lost} frees not held, their CPU {unheld} ns, their share of the \
         children's rusage {share:.0} ns; storm process {parent} ns, rusage {} ns",
        s.started, s.parent_ns
    );
    storm_cpu_error(&s);
    assert!(
        lost > s.started as u64 / 2,
        "{lost} of {} frees not held",
        s.started
    );
    // At least the children's share (other processes that end meanwhile add theirs).
    assert!(
        unheld as f64 >= 0.95 * share,
        "{unheld} ns of exits not held, expected {share:.0} ns"
    );
    // No interval counts time twice: what the walks reported of a process is never in
    // `UNHELD` again (the reader stalled, the processes' CPU reads a few % above the
    // node's busy time: see BENCHMARKS.md).
    for (i, w) in s.windows.iter().enumerate().skip(1) {
        let p: u64 = w.points.iter().map(|p| p.profile.cpu_ns).sum();
        let busy = w.node.cpu_busy_ns;
        assert!(
            p as f64 <= 1.1 * busy as f64 + 50e6,
            "interval {i}: processes {p} ns, busy {busy} ns"
        );
    }
    // The storm process and the spinner (0.8 s of CPU and its start-up), each once.
    let want = (s.parent_ns + 800_000_000) as f64;
    assert!(
        rel_err(parent as f64, want) <= 0.02,
        "{parent} ns, want {want} ns"
    );
}
