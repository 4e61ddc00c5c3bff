//! The allocate stage on real cgroups: cgroup v1 on a hybrid host, cgroup v2 in the
//! `cargo xtask vm-test` guests. Each test owns a subtree of its own
//! (`umbra.test-<pid>-<n>` below each hierarchy's root), checks that nothing outside it
//! changed, and removes it.
//!
//! - values written through the backend are read back, and the group's feedback (cpu.stat
//!   throttling, memory events, pressure) is read;
//! - the agent places an opted-in exec in its own group with its limits;
//! - `umbra exec` starts its command inside the reserved group (the command's first act
//!   is to read `/proc/self/cgroup`);
//! - SIGTERM puts every process and value back; after `kill -9` the next start does, from
//!   the journal;
//! - a request that does not fit is born frozen and released;
//! - the egress limit holds on loopback.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    net::TcpListener,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use umbra::{
    allocate::{
        apply::Applier,
        cgroups::{self, Backend, Cgroups, Group, Knob, Mounts, Prefer, Value},
        egress::Egress,
    },
    capture::{Identity, egress::EgressLimiter},
    predict::profiles::{Outcome, ProfileStore, Run},
};
use umbra_tests::*;

const MIB: u64 = 1 << 20;

static N: AtomicU32 = AtomicU32::new(0);

/// A subtree name of this test's own.
fn own_root() -> String {
    format!(
        "umbra.test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn backend() -> Option<Box<dyn Cgroups>> {
    match cgroups::detect(Prefer::Auto) {
        Ok(b) => Some(b),
        Err(e) => {
            assert!(!in_vm() && !in_ci(), "no cgroup backend: {e}");
            eprintln!("skipped: no cgroup backend: {e}");
            None
        }
    }
}

/// Every cgroup hierarchy's settings: (file path → content) of each writable file, except
/// those that change by themselves (process lists, pressure, usage and failure counters);
/// directories as entries too. `skip`: subtrees left out (the test's own).
fn snapshot(skip: &str) -> BTreeMap<PathBuf, String> {
    let m = Mounts::read();
    let mut roots: Vec<PathBuf> = m.v1.iter().map(|(_, p)| p.clone()).collect();
    roots.extend(m.unified.clone());
    let mut out = BTreeMap::new();
    for r in roots {
        walk(&r, skip, &mut out);
    }
    out
}

fn walk(dir: &Path, skip: &str, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if md.is_dir() {
            if name.starts_with(skip) {
                continue;
            }
            out.insert(p.clone(), "<dir>".into());
            walk(&p, skip, out);
            continue;
        }
        let volatile = ["cgroup.procs", "tasks", "cgroup.threads", "cgroup.events"]
            .contains(&name.as_str())
            || name.ends_with(".pressure")
            || name.contains("usage")
            || name.contains("failcnt")
            || name.contains("oom_control")
            || name.contains("stat");
        let mode = md.permissions().mode();
        if volatile || mode & 0o200 == 0 || mode & 0o444 == 0 {
            continue;
        }
        if let Ok(text) = fs::read_to_string(&p) {
            out.insert(p, text);
        }
    }
}

/// Differences between two snapshots, ignoring directories others made or removed
/// meanwhile (the host is shared); a changed setting is always reported.
fn differences(a: &BTreeMap<PathBuf, String>, b: &BTreeMap<PathBuf, String>) -> Vec<String> {
    let gone_dirs: Vec<&PathBuf> = a
        .iter()
        .chain(b.iter())
        .filter(|(p, v)| *v == "<dir>" && (a.contains_key(*p) != b.contains_key(*p)))
        .map(|(p, _)| p)
        .collect();
    let under_churn = |p: &Path| gone_dirs.iter().any(|d| p.starts_with(d));
    let mut out = Vec::new();
    for (p, v) in a {
        match b.get(p) {
            Some(w) if w == v => {}
            Some(w) => out.push(format!("{}: {v:?} -> {w:?}", p.display())),
            None if under_churn(p) => {}
            None => out.push(format!("{}: gone", p.display())),
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) && !under_churn(p) {
            out.push(format!("{}: new", p.display()));
        }
    }
    out
}

/// No directory of `root` is left in any hierarchy.
fn assert_removed(root: &str) {
    let m = Mounts::read();
    let mut roots: Vec<PathBuf> = m.v1.iter().map(|(_, p)| p.clone()).collect();
    roots.extend(m.unified.clone());
    for r in roots {
        let d = r.join(root);
        assert!(!d.exists(), "{} is left behind", d.display());
    }
}

/// Removes what is left of `root` in every hierarchy (deepest first) when a test fails
/// half-way; a test that passes has removed it already.
struct Leftovers(String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let m = Mounts::read();
        let mut roots: Vec<PathBuf> = m.v1.iter().map(|(_, p)| p.clone()).collect();
        roots.extend(m.unified.clone());
        for r in roots {
            let mut dirs = Vec::new();
            let mut todo = vec![r.join(&self.0)];
            while let Some(d) = todo.pop() {
                if let Ok(entries) = fs::read_dir(&d) {
                    todo.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                    dirs.push(d);
                }
            }
            for d in dirs.iter().rev() {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

/// The lines of `/proc/<pid>/cgroup`, as text.
fn proc_cgroup(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

/// Waits until `f` holds (or panics naming `what`).
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn values_written_are_read_back_and_feedback_is_read() {
    if !privileged("values_written_are_read_back_and_feedback_is_read") {
        return;
    }
    let Some(cg) = backend() else { return };
    let kind = cg.backend();
    let root = own_root();
    let _leftovers = Leftovers(root.clone());
    let before = snapshot(&root);
    let state = tempfile::tempdir().unwrap();
    let owned = Group::new(&root).unwrap();
    let (mut a, restored) =
        Applier::open(cg, owned.clone(), &state.path().join("journal")).unwrap();
    assert!(restored.is_none());
    a.setup().unwrap();
    let g = owned.child("w");
    a.ensure(&g, false).unwrap();
    let mut want = vec![
        (Knob::CpuMax, Value::of_cores(0.25)),
        (Knob::CpuWeight, Value::Amount(250)),
        (Knob::MemoryHigh, Value::Amount(256 * MIB)),
        (Knob::MemoryMax, Value::Amount(512 * MIB)),
    ];
    if kind == Backend::V2 {
        want.push((Knob::MemoryMin, Value::Amount(16 * MIB)));
        want.push((Knob::MemoryLow, Value::Amount(32 * MIB)));
    }
    for (k, v) in &want {
        assert!(a.cgroups().supports(*k), "{k} on {}", kind.name());
        a.set(&g, *k, *v).unwrap();
        assert_eq!(
            a.read(&g, *k).unwrap(),
            *v,
            "{k} read back on {}",
            kind.name()
        );
    }
    // A value the kernel refuses is an error naming the file, not a panic.
    if kind == Backend::V2 {
        let e = a
            .set(&g, Knob::CpuWeight, Value::Amount(20_000))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cpu.weight"), "{e}");
    }
    // A spinner at 0.25 cores is throttled, and the group says so.
    let mut w = Workload::start(&["spin", "1500"]);
    a.place(&g, w.pid()).unwrap();
    let placed = proc_cgroup(w.pid());
    assert!(placed.contains(&format!("/{root}/w")), "{placed}");
    w.go();
    w.wait_done();
    let st = a.stats(&g).unwrap();
    assert!(st.nr_throttled > 0 && st.throttled_us > 0, "{st:?}");
    assert!(st.cpu_usage_us.unwrap_or(0) >= 1_000_000, "{st:?}");
    if kind == Backend::V2 || Mounts::read().unified.is_some() {
        assert!(st.cpu_pressure_us.is_some(), "PSI of the group: {st:?}");
    }
    w.finish();
    let r = a.shutdown();
    assert!(r.failures.is_empty(), "{r:?}");
    assert_removed(&root);
    let diff = differences(&before, &snapshot(&root));
    assert!(diff.is_empty(), "outside the owned subtree: {diff:#?}");
}

/// The agent binary with a config of its own.
struct Agent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub root: String,
    log: PathBuf,
}

impl Agent {
    fn config(dir: &Path, root: &str, extra: &str) -> PathBuf {
        let cfg = dir.join("umbra.toml");
        fs::write(
            &cfg,
            format!(
                "[publish]\nenabled = false\nstate_dir = \"{}\"\n\n[allocate]\nroot = \"{root}\"\n{extra}",
                dir.join("state").display()
            ),
        )
        .unwrap();
        cfg
    }

    fn start(extra: &str, enforce: bool) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let root = own_root();
        Agent::start_in(dir, root, extra, enforce)
    }

    fn start_in(dir: tempfile::TempDir, root: String, extra: &str, enforce: bool) -> Agent {
        let cfg = Agent::config(dir.path(), &root, extra);
        let log = dir.path().join(format!("agent-{}.log", rand()));
        let mut cmd = Command::new(workspace_bin("umbra"));
        cmd.args([
            "--config",
            cfg.to_str().unwrap(),
            "run",
            "--top",
            "0",
            "--explain",
        ]);
        if enforce {
            cmd.arg("--enforce");
        }
        let child = cmd
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        let a = Agent {
            child,
            dir,
            root,
            log,
        };
        // Ready once its exec socket is there (made after the journal's restore).
        let sock = a.dir.path().join("state/allocate/exec.sock");
        wait_for("the agent's exec socket", Duration::from_secs(60), || {
            sock.exists()
        });
        a
    }

    fn output(&self) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            fs::read_to_string(&self.log).unwrap_or_default(),
            fs::read_to_string(self.log.with_extension("err")).unwrap_or_default()
        )
    }

    fn signal(&mut self, sig: i32) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        self.child.wait().unwrap()
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new(workspace_bin("umbra"))
            .args([
                "--config",
                self.dir.path().join("umbra.toml").to_str().unwrap(),
                "exec",
                "--report",
                "--",
            ])
            .args(args)
            .output()
            .unwrap()
    }

    /// Stops it with SIGTERM; the subtree must be gone.
    fn stop(mut self) -> String {
        let st = self.signal(libc::SIGTERM);
        let out = self.output();
        assert!(st.success(), "agent exited with {st}:\n{out}");
        assert_removed(&self.root);
        out
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

fn rand() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Past runs of `exe` in the agent's profile store, so its requests have predictions.
fn profile(state: &Path, exe: &Path, cpu_s: f64, duration_s: f64, rss: f64) {
    let key = format!(
        "exe:{}",
        Identity::new()
            .exe_hash(u32::MAX, exe.to_str())
            .expect("fingerprint")
    );
    let (mut store, _) = ProfileStore::open(&state.join("profiles"), 64).unwrap();
    for _ in 0..8 {
        let o = Outcome {
            cpu_seconds: cpu_s,
            peak_rss_bytes: rss,
            duration_seconds: duration_s,
            io_bytes: 0.0,
        };
        store.record(&key, "w", "sh", Run::new(&o, 0, 1)).unwrap();
    }
    store.save().unwrap();
}

/// The directory of `rel` (below each hierarchy root) holding the cpu controller's files.
fn cpu_dir(rel: &str) -> PathBuf {
    let m = Mounts::read();
    match m.v1_of("cpu") {
        Some((_, p)) => p.join(rel),
        None => m.unified.unwrap().join(rel),
    }
}

/// CPU cores of a group's limit, from the kernel's own files.
fn cpu_limit(rel: &str) -> Option<f64> {
    let d = cpu_dir(rel);
    if let Ok(max) = fs::read_to_string(d.join("cpu.max")) {
        let mut it = max.split_whitespace();
        let q: f64 = it.next()?.parse().ok()?;
        let p: f64 = it.next()?.parse().ok()?;
        return Some(q / p);
    }
    let q: f64 = fs::read_to_string(d.join("cpu.cfs_quota_us"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let p: f64 = fs::read_to_string(d.join("cpu.cfs_period_us"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (q > 0.0).then_some(q / p)
}

/// Waits until `pid` is in its own request group (`req-<pid>`); that group's path below
/// the hierarchy holding the cpu controller.
fn placed_in(pid: u32) -> String {
    let want = format!("/req-{pid}");
    wait_for(
        "the exec placed in its own group",
        Duration::from_secs(20),
        || proc_cgroup(pid).contains(&want),
    );
    let cg = proc_cgroup(pid);
    let line = cg
        .lines()
        .find(|l| l.contains(&want) && (l.contains(":cpu") || l.starts_with("0::")))
        .unwrap_or_else(|| panic!("{cg}"));
    line.rsplit(':')
        .next()
        .unwrap()
        .trim_start_matches('/')
        .to_string()
}

#[test]
fn an_opted_in_exec_is_placed_in_its_own_group_with_its_limits() {
    if !privileged("an_opted_in_exec_is_placed_in_its_own_group_with_its_limits") {
        return;
    }
    if backend().is_none() {
        return;
    }
    let wl = workspace_bin("umbra-workload");
    let root = own_root();
    let before = snapshot(&root);
    let dir = tempfile::tempdir().unwrap();
    // Past runs: 0.4 cpu-seconds over 1 s (p90 0.4 cores), 64 MiB.
    profile(&dir.path().join("state"), &wl, 0.4, 1.0, 64.0 * MIB as f64);
    // The profile alone predicts (its numbers are known here); the request model's path is
    // a_run_of_an_executable_is_learned_and_its_next_exec_gets_limits_from_it. No forecast
    // writes the workload's own limits (which would pool its requests' use).
    let extra = format!(
        "[allocate.tiers]\nstart = \"full\"\n[[allocate.workload]]\nexe = \"{}\"\nper_request = true\n\n[predict]\nrequest_model = \"none\"\ninterval_ms = 3600000\n",
        wl.display()
    );
    let agent = Agent::start_in(dir, root.clone(), &extra, true);
    let w = Workload::start(&["spin", "100"]);
    let rel = placed_in(w.pid());
    let rel = rel.as_str();
    // p90 0.4 cores × (1 + request.margin 0.15).
    let cores = cpu_limit(rel).unwrap_or_else(|| panic!("no cpu limit on {rel}"));
    assert!((cores - 0.46).abs() < 0.011, "{rel}: {cores} cores");
    drop(w);
    let out = agent.stop();
    assert!(out.contains("µs after exec"), "{out}");
    // No hierarchy favours dynamic moves here: the agent keeps them fast after the exec
    // (its own pid written into its own cgroup, which the snapshot shows unchanged), or
    // says why it cannot.
    if !Mounts::read().favordynmods {
        let kept = out.contains("moves are kept fast");
        assert!(
            kept || (in_vm() && out.contains("Moves not kept fast")),
            "{out}"
        );
    }
    let diff = differences(&before, &snapshot(&root));
    assert!(diff.is_empty(), "outside the owned subtree: {diff:#?}");
}

/// An agent whose rule places each exec of `umbra-workload` on its own (`per_request`),
/// `config` beside the rule, and where it keeps its profiles.
struct Learning {
    agent: Agent,
    profiles: PathBuf,
    key: String,
}

impl Learning {
    fn start(config: &str) -> Learning {
        let wl = workspace_bin("umbra-workload");
        let key = format!(
            "exe:{}",
            Identity::new()
                .exe_hash(u32::MAX, wl.to_str())
                .expect("fingerprint")
        );
        let dir = tempfile::tempdir().unwrap();
        let profiles = dir.path().join("state/profiles");
        let extra = format!(
            "{config}\n[[allocate.workload]]\nexe = \"{}\"\nper_request = true\n",
            wl.display()
        );
        let agent = Agent::start_in(dir, own_root(), &extra, true);
        Learning {
            agent,
            profiles,
            key,
        }
    }

    /// One exec of `spin 300`, placed in its own group, run to its end and learned (the
    /// profile's `n`th run): its group's CPU limit, if it had one.
    fn run(&self, n: usize) -> Option<f64> {
        let mut w = Workload::start(&["spin", "300"]);
        let rel = placed_in(w.pid());
        let limit = cpu_limit(&rel);
        w.go();
        w.wait_done();
        w.finish();
        wait_for("the run learned", Duration::from_secs(20), || {
            ProfileStore::read(&self.profiles)
                .ok()
                .and_then(|s| s.get(&self.key).map(|p| p.runs.len() >= n))
                .unwrap_or(false)
        });
        limit
    }

    /// The next exec's group's CPU limit (the exec left waiting, then killed).
    fn next_limit(&self) -> f64 {
        let w = Workload::start(&["spin", "300"]);
        let rel = placed_in(w.pid());
        let cores = cpu_limit(&rel)
            .unwrap_or_else(|| panic!("no cpu limit on {rel}: {}", self.agent.output()));
        assert!(cores > 0.0, "{rel}: {cores} cores");
        cores
    }
}

#[test]
fn a_run_of_an_executable_is_learned_and_its_next_exec_gets_limits_from_it() {
    if !privileged("a_run_of_an_executable_is_learned_and_its_next_exec_gets_limits_from_it") {
        return;
    }
    if backend().is_none() {
        return;
    }
    // Forecast steps of an hour: no forecast writes the workload's own limits, which
    // would pool its requests' use in place of limits of their own.
    let l = Learning::start("[allocate.tiers]\nstart = \"full\"\n[predict]\ninterval_ms = 3600000");
    // Never seen: placed, no limits.
    assert_eq!(l.run(1), None, "{}", l.agent.output());
    // Known now: its one run (0.3 cpu-seconds) bounds the next exec.
    l.next_limit();
    let out = l.agent.stop();
    assert!(out.contains("profile of 1 runs"), "{out}");
}

/// A program run again and again seldom earns a tier by its workload's forecasts (it
/// starts and stops); its requests earn their hard limits by staying within them. Here
/// two predicted requests earn them (`min_samples = 2`; the default is 10), the limits
/// twice the prediction (`request.margin = 1`) so that the program's run-to-run wobble
/// stays within; the workload itself stays at the shadow tier throughout. A request that
/// does not fit the node (up to 2 cores reserved here) runs at low weight rather than
/// frozen: frozen, it could not say it is ready until the admission timeout (30 s).
#[test]
fn an_executables_requests_earn_their_hard_limits_by_staying_within_them() {
    if !privileged("an_executables_requests_earn_their_hard_limits_by_staying_within_them") {
        return;
    }
    if backend().is_none() {
        return;
    }
    let l = Learning::start(
        "[allocate.tiers]\nmin_samples = 2\n[allocate.request]\nmargin = 1.0\n\
         [allocate.admission]\nhold = \"low-weight\"\n[predict]\nrequest_model = \"none\"",
    );
    // The first run is never seen; the second and third are predicted from the runs
    // before them, and placed without limits (the shadow tier).
    for n in 1..=3 {
        assert_eq!(l.run(n), None, "run {n}: {}", l.agent.output());
    }
    l.next_limit();
    let out = l.agent.stop();
    assert!(
        out.contains("full tier earned by its executable's requests: 2 of the last 2"),
        "{out}"
    );
}

#[test]
fn umbra_exec_starts_its_command_inside_the_reserved_group() {
    if !privileged("umbra_exec_starts_its_command_inside_the_reserved_group") {
        return;
    }
    if backend().is_none() {
        return;
    }
    let agent = Agent::start("", true);
    // The command's first act: read its own /proc/self/cgroup.
    let out = agent.exec(&["cat", "/proc/self/cgroup"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}\n{}", agent.output());
    let lines: Vec<&str> = text.lines().collect();
    let m = Mounts::read();
    // The group is named after the resolved executable (`cat-…`, or `busybox-…` where
    // `cat` is a link to it).
    let inside = |l: &&str| l.contains(&format!("/{}/", agent.root)) && l.contains("/exec-");
    // Every hierarchy Umbra uses: cgroup2, and on v1 cpu and memory.
    assert!(
        lines.iter().any(|l| l.starts_with("0::") && inside(l)) || m.unified.is_none(),
        "{text}"
    );
    if m.v1_of("cpu").is_some() {
        for c in ["cpu", "memory"] {
            assert!(
                lines.iter().any(|l| l
                    .split(':')
                    .nth(1)
                    .is_some_and(|x| x.split(',').any(|y| y == c))
                    && inside(l)),
                "{c}: {text}"
            );
        }
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reserved in") && err.contains("started in"),
        "{err}"
    );
    // The command's status comes back.
    let st = agent.exec(&["sh", "-c", "exit 3"]).status;
    assert_eq!(st.code(), Some(3));
    agent.stop();
}

#[test]
fn sigterm_puts_back_every_process_and_value() {
    if !privileged("sigterm_puts_back_every_process_and_value") {
        return;
    }
    if backend().is_none() {
        return;
    }
    let wl = workspace_bin("umbra-workload");
    let root = own_root();
    let before = snapshot(&root);
    let mut w = Workload::start(&["spin", "300"]);
    let original = proc_cgroup(w.pid());
    let extra = format!("[[allocate.workload]]\nexe = \"{}\"\n", wl.display());
    let agent = Agent::start_in(tempfile::tempdir().unwrap(), root.clone(), &extra, true);
    // It runs (and so shows in the capture), then waits.
    w.go();
    w.wait_done();
    wait_for("the workload placed", Duration::from_secs(20), || {
        proc_cgroup(w.pid()).contains(&format!("/{root}/"))
    });
    agent.stop();
    assert_eq!(proc_cgroup(w.pid()), original, "moved back where it was");
    let diff = differences(&before, &snapshot(&root));
    assert!(diff.is_empty(), "outside the owned subtree: {diff:#?}");
}

#[test]
fn after_kill_9_the_next_start_puts_everything_back_from_the_journal() {
    if !privileged("after_kill_9_the_next_start_puts_everything_back_from_the_journal") {
        return;
    }
    if backend().is_none() {
        return;
    }
    let wl = workspace_bin("umbra-workload");
    let root = own_root();
    let before = snapshot(&root);
    let mut w = Workload::start(&["spin", "300"]);
    let original = proc_cgroup(w.pid());
    let extra = format!("[[allocate.workload]]\nexe = \"{}\"\n", wl.display());
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_path_buf();
    let mut agent = Agent::start_in(dir, root.clone(), &extra, true);
    w.go();
    w.wait_done();
    wait_for("the workload placed", Duration::from_secs(20), || {
        proc_cgroup(w.pid()).contains(&format!("/{root}/"))
    });
    agent.signal(libc::SIGKILL);
    // Killed: everything is still where it put it.
    assert!(proc_cgroup(w.pid()).contains(&format!("/{root}/")));
    assert!(cpu_dir(&root).exists());
    // The next start (dry-run) restores from the journal before anything else.
    let dir = std::mem::replace(&mut agent.dir, tempfile::tempdir().unwrap());
    assert_eq!(dir.path(), keep);
    drop(agent);
    // The killed agent's socket is still there (the next agent replaces it): gone, so
    // that readiness is the new agent's.
    fs::remove_file(dir.path().join("state/allocate/exec.sock")).unwrap();
    let again = Agent::start_in(dir, root.clone(), &extra, false);
    assert_eq!(
        proc_cgroup(w.pid()),
        original,
        "moved back where it was\n{}",
        again.output()
    );
    assert_removed(&root);
    let out = again.stop();
    assert!(out.contains("put back"), "{out}");
    let diff = differences(&before, &snapshot(&root));
    assert!(diff.is_empty(), "outside the owned subtree: {diff:#?}");
}

#[test]
fn a_request_that_does_not_fit_is_born_frozen_and_released() {
    if !privileged("a_request_that_does_not_fit_is_born_frozen_and_released") {
        return;
    }
    let Some(cg) = backend() else { return };
    if !cg.can_freeze() {
        assert!(!in_vm(), "no freezer in a vm-test guest");
        eprintln!("skipped: no freezer");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // `sh`'s past runs: more CPU than the node has (100 cpu-seconds in 1 s).
    let sh = umbra::allocate::launch::resolve("sh".as_ref()).unwrap();
    profile(&dir.path().join("state"), &sh, 100.0, 1.0, 8.0 * MIB as f64);
    let extra = "[allocate.admission]\nhold = \"freeze\"\ntimeout_ms = 2000\n";
    let agent = Agent::start_in(dir, own_root(), extra, true);
    let t = Instant::now();
    let out = agent.exec(&["sh", "-c", "cat /proc/self/cgroup"]);
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}\n{}", agent.output());
    assert!(err.contains("held"), "{err}");
    // Frozen until the admission timeout released it.
    assert!(took >= Duration::from_millis(1500), "ran after {took:?}");
    let log = agent.stop();
    assert!(
        log.contains("held (frozen)") && log.contains("released after"),
        "{log}"
    );
}

#[test]
fn the_egress_limit_holds_on_loopback() {
    if !privileged("the_egress_limit_holds_on_loopback") {
        return;
    }
    let Some(unified) = Mounts::read().unified else {
        assert!(!in_vm(), "no cgroup2 mount in a vm-test guest");
        eprintln!("skipped: no cgroup2 mount");
        return;
    };
    let root = own_root();
    let top = unified.join(&root);
    let w = top.join("w");
    fs::create_dir_all(&w).unwrap();
    struct Cleanup(PathBuf, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = fs::remove_dir(&self.1);
            let _ = fs::remove_dir(&self.0);
        }
    }
    let _c = Cleanup(top.clone(), w.clone());
    let mut lim = match EgressLimiter::load() {
        Ok(l) => l,
        // A kernel without TCP pacing from sock_ops: the agent reports it and limits
        // nothing (any other refusal is a failure).
        Err(e) if e.to_string().contains("TCP pacing") => {
            eprintln!("skipped: the_egress_limit_holds_on_loopback: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    // Buckets belong to groups at the depth of `w` below the cgroup2 root.
    let level = w.strip_prefix(&unified).unwrap().components().count() as u32;
    lim.attach(&top, level).unwrap();
    const RATE: u64 = 4_000_000;
    let (rate, burst) = umbra::allocate::egress::bucket(RATE as f64, 0, 20);
    lim.set(&w, rate, burst).unwrap();
    // A receiver outside the group, a sender inside.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let total: u64 = 4 * RATE; // 4 s at the limit
    let s = Workload::start(&["send", &port.to_string(), &total.to_string()]);
    fs::write(w.join("cgroup.procs"), s.pid().to_string()).unwrap();
    s.go();
    let (mut conn, _) = l.accept().unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0u64;
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        let n = conn.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
        // The rate from the first MiB on: the burst at the start is not the rate.
        if got >= MIB && first.is_none() {
            first = Some(Instant::now());
        }
        last = Instant::now();
    }
    s.wait();
    assert_eq!(got, total);
    let secs = last.duration_since(first.unwrap()).as_secs_f64();
    let measured = (got - MIB) as f64 / secs;
    let c = lim.counters(&w).unwrap();
    eprintln!(
        "egress: {measured:.0} B/s against a limit of {RATE} B/s over {secs:.2} s; {} packets dropped; connections opened, limited, paced, refused: {:?}",
        c.dropped_packets,
        lim.pacing_counts()
    );
    assert!(c.passed_bytes >= total, "{c:?}");
    // The limit holds: never more than 10% above it. And TCP is held back, not starved:
    // a policer alone gets a sixth of the rate. (Below the limit, a guest whose vCPU the
    // host leaves waiting loses pacing time: 3.65 MB/s was seen under a busy host.)
    assert!(
        measured <= RATE as f64 * 1.10,
        "{measured:.0} B/s is above the limit of {RATE} by more than 10%"
    );
    assert!(
        measured >= RATE as f64 * 0.75,
        "{measured:.0} B/s: TCP starved under a limit of {RATE}"
    );
    lim.detach();
}
