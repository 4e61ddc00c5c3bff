//! Support for Umbra's privileged tests: whether they may run here, child workloads
//! doing known work, and helpers to read what the kernel capture saw of them.
//!
//! Privileged tests need root and a real kernel. Outside CI they skip with a printed
//! reason; under `CI=true` a missing privilege is a failure, never a skip.
//!
//! The same tests run in QEMU guests on other kernels (`cargo xtask vm-test`). The guest's
//! init sets `UMBRA_VM=1` (see [`in_vm`]), `UMBRA_TEST_DISK` (a directory on a virtio disk,
//! see [`disk_dir`]) and `UMBRA_WORKLOAD_BIN`/`UMBRA_BIN` (see [`workspace_bin`]).
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use umbra::{
    capture::{CaptureItem, KernelCapture, Lifecycle, ProcessSample},
    config::CaptureConfig,
};

pub mod mqtt;

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether this runs in a `cargo xtask vm-test` guest, whose kernel is known to offer what
/// a host may lack (e.g. cgroup v2 controllers): there, such a lack is a failure.
pub fn in_vm() -> bool {
    std::env::var("UMBRA_VM").is_ok_and(|v| v == "1")
}

/// Whether a privileged test can run here. Prints why not; panics under CI.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // Deliberately broken runs, to check that the VM harness reports failures.
        match std::env::var("UMBRA_VM_BREAK").as_deref() {
            Ok("panic") => panic!("{test}: UMBRA_VM_BREAK=panic asked this test to fail"),
            Ok("hang") => loop {
                eprintln!("{test}: UMBRA_VM_BREAK=hang: never finishing");
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            _ => {}
        }
        return true;
    }
    let why = format!("{test}: needs root (CAP_BPF, CAP_PERFMON, tracefs)");
    assert!(!in_ci(), "{why}, and CI=true forbids skipping");
    eprintln!("skipped: {why}");
    false
}

/// The kernel capture with default settings.
pub fn capture() -> KernelCapture {
    capture_with(&CaptureConfig::default())
}

/// `UMBRA_CAPTURE_COUNTERS=hooks|iterator|auto` runs every test on that path (tests that
/// pick a path use [`capture_exact`]): `cargo xtask test` and the VM guests run the
/// capture tests on the default path (the task iterator) and again on the hooks.
pub fn capture_with(cfg: &CaptureConfig) -> KernelCapture {
    let mut cfg = cfg.clone();
    match std::env::var("UMBRA_CAPTURE_COUNTERS").as_deref() {
        Ok("hooks") => cfg.counters = umbra::capture::Counters::Hooks,
        Ok("iterator") => cfg.counters = umbra::capture::Counters::Iterator,
        Ok("auto") => cfg.counters = umbra::capture::Counters::Auto,
        _ => {}
    }
    capture_exact(&cfg)
}

/// The capture loaded exactly as `cfg` asks, whatever `UMBRA_CAPTURE_COUNTERS` says.
pub fn capture_exact(cfg: &CaptureConfig) -> KernelCapture {
    match KernelCapture::load(cfg) {
        Ok(c) => c,
        Err(e) => panic!("kernel capture failed to load: {e}"),
    }
}

/// Path of a binary of this workspace, next to the running test's `deps/` directory.
pub fn workspace_bin(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!("{}_BIN", name.to_uppercase().replace('-', "_"))) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap()
    } else {
        dir
    };
    dir.join(name)
}

/// A child doing known work (see `umbra-workload`).
pub struct Workload {
    pub child: Child,
    out: BufReader<ChildStdout>,
    /// What the workload printed after `ready` (e.g. a port).
    pub info: String,
}

impl Workload {
    pub fn start(args: &[&str]) -> Workload {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        Workload::start_in(&args, None)
    }

    /// With arguments that may be any bytes, in `cwd` if given.
    pub fn start_in(args: &[&std::ffi::OsStr], cwd: Option<&std::path::Path>) -> Workload {
        let bin = workspace_bin("umbra-workload");
        let mut cmd = Command::new(&bin);
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let info = line
            .strip_prefix("ready")
            .unwrap_or_else(|| panic!("workload {args:?} said {line:?}, not ready"))
            .trim()
            .to_string();
        Workload { child, out, info }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the workload start its work (SIGUSR1).
    pub fn go(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid() as i32, libc::SIGUSR1) };
    }

    /// Waits for `done`.
    pub fn wait_done(&mut self) {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "done", "workload output");
    }

    /// Lets a `done` workload exit, and reaps it.
    pub fn finish(mut self) {
        self.go();
        let st = self.child.wait().unwrap();
        assert!(st.success(), "workload exited with {st}");
    }

    pub fn wait(mut self) {
        let st = self.child.wait().unwrap();
        assert!(st.success(), "workload exited with {st}");
    }
}

impl Drop for Workload {
    /// A failed test never leaves its children waiting for a signal that will not come.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads the capture until a tick holds a sample that satisfies `pred` (or `timeout`
/// passes): that sample, and every sample of its tick.
pub fn tick_where(
    cap: &mut KernelCapture,
    timeout: Duration,
    pred: impl Fn(&ProcessSample) -> bool,
) -> Option<(ProcessSample, Vec<std::sync::Arc<ProcessSample>>)> {
    let end = Instant::now() + timeout;
    loop {
        let tick = cap.sample().unwrap();
        if let Some(s) = tick.samples.iter().find(|s| pred(s)).cloned() {
            return Some((std::sync::Arc::unwrap_or_clone(s), tick.samples));
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the capture until the sample of `tgid` satisfies `pred` (or `timeout` passes).
pub fn sample_where(
    cap: &mut KernelCapture,
    tgid: u32,
    timeout: Duration,
    pred: impl Fn(&ProcessSample) -> bool,
) -> Option<ProcessSample> {
    tick_where(cap, timeout, |s| s.tgid == tgid && pred(s)).map(|(s, _)| s)
}

/// The current sample of `tgid`.
pub fn sample_now(cap: &mut KernelCapture, tgid: u32) -> ProcessSample {
    sample_where(cap, tgid, Duration::from_secs(5), |_| true)
        .unwrap_or_else(|| panic!("process {tgid} never appeared in the capture"))
}

/// The final sample of `tgid`, once it has exited.
pub fn final_sample(cap: &mut KernelCapture, tgid: u32) -> ProcessSample {
    sample_where(cap, tgid, Duration::from_secs(10), |s| s.exit.is_some())
        .unwrap_or_else(|| panic!("no final sample for {tgid}"))
}

/// Drains lifecycle events (and ticks, whose samples it drops) for `dur`.
pub fn collect_events(cap: &mut KernelCapture, dur: Duration) -> Vec<Lifecycle> {
    let mut out = Vec::new();
    let end = Instant::now() + dur;
    while Instant::now() < end {
        cap.drain_events(&mut out);
        std::thread::sleep(Duration::from_millis(5));
    }
    cap.drain_events(&mut out);
    out
}

/// `CaptureItem`s are what the pipeline sees; tests mostly use the sync API above.
pub fn is_tick(i: &CaptureItem) -> bool {
    matches!(i, CaptureItem::Tick(_))
}

/// Sum of on-CPU ns of a process from `/proc/<pid>/schedstat` (single-threaded process).
pub fn schedstat_ns(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// Time the hypervisor took from this machine's CPUs (`steal` of `/proc/stat`, all CPUs), ns.
/// In a VM, `schedstat` of a task that runs while its vCPU is preempted counts the stolen
/// time as runtime until the steal is reported: a comparison with it is only as exact as the
/// steal that happened meanwhile.
pub fn steal_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu = s.lines().next().unwrap();
    let ticks: u64 = cpu.split_whitespace().nth(8).unwrap().parse().unwrap();
    // USER_HZ is 100 on every Linux architecture.
    ticks * 10_000_000
}

/// `/proc/<pid>/task/<tid>/schedstat` summed over a process's live threads: on-CPU ns,
/// run-queue wait ns, time slices.
pub fn schedstat_threads(pid: u32) -> (u64, u64, u64) {
    let mut sum = (0, 0, 0);
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let s = std::fs::read_to_string(t.unwrap().path().join("schedstat")).unwrap_or_default();
        let f: Vec<u64> = s
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() == 3 {
            sum = (sum.0 + f[0], sum.1 + f[1], sum.2 + f[2]);
        }
    }
    sum
}

/// `VmRSS` of a process, bytes.
pub fn vm_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// A directory on a real block device (not tmpfs), for block I/O tests: `UMBRA_TEST_DISK`
/// if set (a VM guest's virtio disk), else the target dir.
pub fn disk_dir() -> PathBuf {
    let dir = match std::env::var_os("UMBRA_TEST_DISK") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .join("umbra-io"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A static program of a few bytes that exits with 0 (`exit(0)`, no libc): the cheapest
/// process there is, for fork/exec storms.
pub fn tiny_exit_program() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    #[cfg(target_arch = "x86_64")]
    let (machine, code): (u16, &[u8]) = (
        0x3e,
        // mov eax, 60; xor edi, edi; syscall
        &[0xb8, 60, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05],
    );
    #[cfg(target_arch = "aarch64")]
    let (machine, code): (u16, &[u8]) = (
        0xb7,
        // mov x8, #93; mov x0, #0; svc #0
        &[
            0xa8, 0x0b, 0x80, 0xd2, 0x00, 0x00, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4,
        ],
    );
    let size = (64 + 56 + code.len()) as u64;
    let mut e = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&machine.to_le_bytes());
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(BASE + 120).to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 0, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R + X
    for v in [0u64, BASE, BASE, size, size, 0x1000] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(code);
    e
}

pub fn rel_err(got: f64, want: f64) -> f64 {
    (got - want).abs() / want
}
