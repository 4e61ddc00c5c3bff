//! `cargo xtask bench overhead`: what the agent costs, measured in one run.
//!
//! - Slowdown, each workload run alternately without and with the agent (`umbra run`,
//!   default config), the ratio of the medians: a pipe ping-pong between two threads (the
//!   shape of `perf bench sched pipe`, pinned to one CPU as with `taskset -c 0`, and
//!   unpinned), a hackbench-like message storm (groups of sender and receiver threads over
//!   pipes), and a real parallel build (`cargo build -j2` of a small crate from the local
//!   registry cache). The default is the task iterator where the kernel has it; the
//!   ping-pong and hackbench also on the per-event hooks (`capture.counters = "hooks"`),
//!   on the iterator with the detail level, and, with `--before BIN`, with another agent
//!   binary (an earlier version, its own defaults) in the same run.
//! - Per-program cost: `kernel.bpf_stats_enabled` on, run time / run count per program
//!   from `bpftool prog show`, while the ping-pong runs.
//! - The task iterator's cost per tick with 1,000 and 10,000 threads alive, and the
//!   agent's CPU and RSS with 1,000 processes alive.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::{install, util};

/// How long the agent runs before a slowdown measurement starts (it is ready after 2 s;
/// its first ticks see every process for the first time).
const SETTLE: Duration = Duration::from_secs(3);

#[derive(Subcommand)]
pub enum Bench {
    /// Slowdown of scheduler-heavy work and a build with the agent, per-program ns/run,
    /// the task iterator's cost per tick, agent CPU and RSS.
    Overhead {
        /// Alternating rounds (each runs the benchmark without and with the agent).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Round trips per ping-pong run.
        #[arg(long, default_value_t = 200_000)]
        iterations: u64,
        /// Another agent binary measured in the same run (e.g. an earlier version).
        #[arg(long)]
        before: Option<PathBuf>,
        /// Leave out the slowdown runs (most of the time): per-program cost, the iterator's
        /// cost per tick and the agent's footprint only.
        #[arg(long)]
        no_slowdown: bool,
        /// Only the slowdown benchmarks whose name holds this text (e.g. `hackbench`),
        /// and none of the footprint parts.
        #[arg(long)]
        only: Option<String>,
    },
    /// Criterion micro-benchmarks: aggregate (1,000 processes a tick), record writes, the
    /// publish spool and summary encoding, forecasts (1,000 workloads a tick) and
    /// per-request predictions.
    Micro,
    /// One stepping CPU load under a static limit, a VPA-like recommender and Umbra
    /// (`--enforce`), on this machine's cgroups: throttled time against reserved
    /// core-seconds.
    Ab(crate::ab::AbArgs),
    /// Exec -> placed with limits over many execs (p50, p99), and what `umbra exec` costs.
    Placement(crate::placement::PlacementArgs),
}

pub fn run(b: Bench) -> Result<()> {
    match b {
        Bench::Overhead {
            rounds,
            iterations,
            before,
            no_slowdown,
            only,
        } => overhead(
            if no_slowdown { 0 } else { rounds },
            iterations,
            before.as_deref(),
            only.as_deref(),
        ),
        Bench::Ab(a) => crate::ab::run(&a),
        Bench::Placement(a) => crate::placement::run(&a),
        Bench::Micro => util::cargo(&[
            "bench",
            "-p",
            "umbra",
            "--bench",
            "aggregate",
            "--bench",
            "publish",
            "--bench",
            "predict",
            "--bench",
            "exec_args",
        ]),
    }
}

/// The release agent, built.
pub fn release_agent() -> Result<PathBuf> {
    util::step("build (release)");
    util::cargo(&["build", "--release", "-p", "umbra"])?;
    Ok(util::target_dir().join("release/umbra"))
}

/// One way of running the agent.
struct Variant {
    name: &'static str,
    bin: PathBuf,
    args: Vec<String>,
}

/// A workload measured with and without the agent: its time per unit, ns.
type Workload<'a> = (&'a str, Box<dyn Fn() -> f64 + 'a>);

fn overhead(
    rounds: usize,
    iterations: u64,
    before: Option<&Path>,
    only: Option<&str>,
) -> Result<()> {
    if !util::is_root() {
        bail!("the overhead benchmark loads the agent: run it as root");
    }
    install::apt(&["bpftool"])?;
    let bin = release_agent()?;
    set_bpf_stats(false)?;
    let dir = util::target_dir().join("bench");
    fs::create_dir_all(&dir)?;
    let config = |name: &str, text: &str| -> Result<Vec<String>> {
        let p = dir.join(name);
        fs::write(&p, text)?;
        Ok(vec!["--config".into(), p.display().to_string()])
    };
    let mut variants = vec![
        Variant {
            name: "agent, default (task iterator)",
            bin: bin.clone(),
            args: vec![],
        },
        Variant {
            name: "agent, per-event hooks",
            bin: bin.clone(),
            args: config("hooks.toml", "[capture]\ncounters = \"hooks\"\n")?,
        },
        Variant {
            name: "agent, task iterator + detail level",
            bin: bin.clone(),
            args: config(
                "detail.toml",
                "[capture]\ncounters = \"iterator\"\ndetail = true\n",
            )?,
        },
    ];
    if let Some(b) = before {
        variants.push(Variant {
            name: "agent, --before binary",
            bin: b.to_path_buf(),
            args: vec![],
        });
    }
    let build_dir = dir.join("build-crate");
    prepare_build(&build_dir)?;
    let workloads: Vec<(Workload, bool)> = vec![
        (
            (
                "pipe ping-pong, pinned (ns per round trip)",
                Box::new(move || pingpong(iterations, true)),
            ),
            true,
        ),
        (
            (
                "pipe ping-pong, unpinned (ns per round trip)",
                Box::new(move || pingpong(iterations, false)),
            ),
            true,
        ),
        (
            (
                "hackbench-like, 2 groups × 5 senders × 5 receivers × 40,000 messages (ns per message)",
                Box::new(|| hackbench(2, 5, 40_000)),
            ),
            true,
        ),
        (
            (
                "cargo build -j2 of regex-syntax (ns, whole build)",
                Box::new(|| build_once(&build_dir).unwrap_or(f64::NAN)),
            ),
            false,
        ),
    ];
    eprintln!("load before measuring: {}", load_average());
    let mut md = String::new();
    md.push_str(&format!(
        "Load average at the start: {}\n\n",
        load_average()
    ));
    md.push_str("| benchmark | agent | without (median) | with (median) | slowdown | paired |\n|---|---|---|---|---|---|\n");
    let chosen = |name: &str| only.is_none_or(|o| name.contains(o));
    let mut charged_rows = String::new();
    for ((name, work), all_variants) in workloads
        .iter()
        .filter(|((name, _), _)| rounds > 0 && chosen(name))
    {
        for v in variants
            .iter()
            .take(if *all_variants { variants.len() } else { 1 })
        {
            let rounds = if *all_variants { rounds } else { rounds.min(3) };
            // The build spawns hundreds of processes: the agent's hooks run for each.
            let charged = name.contains("cargo build");
            util::step(&format!("{name}, {}: {rounds} alternating rounds", v.name));
            let mut without = Vec::new();
            let mut with = Vec::new();
            // Each round's with / without: the two runs of a round share its drift.
            let mut paired = Vec::new();
            let mut shares = Vec::new();
            for r in 0..rounds {
                // Alternate the order so that drift hits both sides alike.
                let first_with = r % 2 == 1;
                for agent_on in [first_with, !first_with] {
                    // Both sides start alike: the last run's writes on disk, and the same
                    // pause (a build right after the last one's writes competed with
                    // their writeback: 27% slower than one after the agent's settling).
                    // SAFETY: sync(2) takes no arguments and cannot fail.
                    unsafe { libc::sync() };
                    let ns = if agent_on {
                        let agent = Agent::start(&v.bin, &v.args)?;
                        // The agent's start-up (BTF, model, its first sight of every
                        // process) is not what is measured: its steady state is.
                        thread::sleep(SETTLE);
                        // What the agent itself used meanwhile (its threads, and its
                        // programs' run time: bpf_stats, on for this run only), against
                        // the CPU time of the work's child processes: a share no
                        // run-to-run noise blurs.
                        let ns = if charged {
                            set_bpf_stats(true)?;
                            let (a0, p0, c0) =
                                (agent.cpu_ns()?, progs_ns(&agent)?, children_cpu_ns());
                            let ns = work();
                            let c1 = children_cpu_ns();
                            let (a1, p1) = (agent.cpu_ns()?, progs_ns(&agent)?);
                            set_bpf_stats(false)?;
                            shares.push(
                                ((a1 - a0) + (p1 - p0)) as f64
                                    / c1.saturating_sub(c0).max(1) as f64,
                            );
                            ns
                        } else {
                            work()
                        };
                        agent.stop()?;
                        ns
                    } else {
                        thread::sleep(SETTLE);
                        work()
                    };
                    eprintln!(
                        "round {r}: agent {}: {ns:.0}",
                        if agent_on { "on " } else { "off" }
                    );
                    if agent_on {
                        with.push(ns)
                    } else {
                        without.push(ns)
                    }
                }
                paired.push(with[r] / without[r]);
            }
            let (m_without, m_with) = (median(&mut without), median(&mut with));
            md.push_str(&format!(
                "| {name} | {} | {m_without:.0} | {m_with:.0} | {:.2}% | {:.2}% |\n",
                v.name,
                (m_with / m_without - 1.0) * 100.0,
                (median(&mut paired) - 1.0) * 100.0
            ));
            if !shares.is_empty() {
                charged_rows.push_str(&format!(
                    "| {name} | {} | {} |\n",
                    v.name,
                    shares
                        .iter()
                        .map(|s| format!("{:.2}%", s * 100.0))
                        .collect::<Vec<_>>()
                        .join(" / ")
                ));
            }
        }
    }
    md.push_str(&format!(
        "\nLoad average at the end of the slowdown runs: {}\n",
        load_average()
    ));
    if !charged_rows.is_empty() {
        md.push_str(&format!(
            "\n| benchmark | agent | the agent's CPU (its threads and programs) per CPU time of the work, each round |\n|---|---|---|\n{charged_rows}"
        ));
    }
    let out = dir.join("overhead.md");
    if only.is_some() {
        fs::write(&out, &md)?;
        println!("{md}\n(written to {})", out.display());
        return Ok(());
    }

    util::step("per-program cost (bpf_stats) under the pinned ping-pong");
    md.push_str("\n| agent | program | runs | ns/run |\n|---|---|---|---|\n");
    for v in variants.iter().take(3) {
        let agent = Agent::start(&v.bin, &v.args)?;
        set_bpf_stats(true)?;
        let _ = pingpong(iterations * 2, true);
        let progs = prog_stats(agent.child.id())?;
        set_bpf_stats(false)?;
        agent.stop()?;
        for (p, cnt, ns) in &progs {
            md.push_str(&format!("| {} | {p} | {cnt} | {ns:.0} |\n", v.name));
        }
    }

    util::step("the task iterator's cost per tick");
    md.push_str("\n| agent | threads alive | task_iter ns/run (per task) | kernel time per tick | agent CPU per tick (kernel + userspace) | agent CPU |\n|---|---|---|---|---|---|\n");
    // The iterator path, of this build and of --before (asked for: an earlier build's
    // default may be the hooks).
    let on_iterator = config("iterator.toml", "[capture]\ncounters = \"iterator\"\n")?;
    let iterating = std::iter::once(("this build", bin.as_path()))
        .chain(before.map(|b| ("--before binary", b)));
    for ((name, agent_bin), n) in iterating.flat_map(|a| [(a, 1_000usize), (a, 10_000)]) {
        let parked = park_threads(n);
        let agent = Agent::start(agent_bin, &on_iterator)?;
        thread::sleep(Duration::from_secs(3));
        set_bpf_stats(true)?;
        let before = iter_stats(agent.child.id())?;
        let t0 = agent.cpu_ns()?;
        let start = Instant::now();
        thread::sleep(Duration::from_secs(10));
        let t1 = agent.cpu_ns()?;
        let after = iter_stats(agent.child.id())?;
        set_bpf_stats(false)?;
        agent.stop()?;
        drop(parked);
        let secs = start.elapsed().as_secs_f64();
        let ticks = secs.round().max(1.0);
        let (runs, ns) = (after.0 - before.0, after.1 - before.1);
        md.push_str(&format!(
            "| {name} | {n} | {:.0} | {:.2} ms | {:.2} ms | {:.3}% of one core |\n",
            ns as f64 / runs.max(1) as f64,
            ns as f64 / ticks / 1e6,
            (t1 - t0) as f64 / ticks / 1e6,
            (t1 - t0) as f64 / (secs * 1e9) * 100.0
        ));
    }

    util::step("agent CPU and RSS with 1,000 processes alive");
    let sleepers: Vec<Child> = (0..1000)
        .map(|_| {
            Command::new("sleep")
                .arg("600")
                .stdout(Stdio::null())
                .spawn()
                .context("starting sleep")
        })
        .collect::<Result<_>>()?;
    md.push_str(
        "\n| agent, 1,000 processes alive | CPU (20 s) | context switches a second | RSS | goal |\n|---|---|---|---|---|\n",
    );
    for v in variants.iter().take(2).chain(variants.iter().skip(3)) {
        let agent = Agent::start(&v.bin, &v.args)?;
        thread::sleep(Duration::from_secs(3));
        let (cpu, switches) = agent.cpu_percent(Duration::from_secs(20))?;
        let rss = agent.rss_bytes()?;
        agent.stop()?;
        md.push_str(&format!(
            "| {} | {cpu:.3}% of one core | {switches:.1} | {:.1} MB | ≤ 0.2%, ≤ 25 MB |\n",
            v.name,
            rss as f64 / 1e6
        ));
    }
    for mut s in sleepers {
        let _ = s.kill();
        let _ = s.wait();
    }
    md.push_str(&format!("\nLoad average at the end: {}\n", load_average()));
    fs::write(&out, &md)?;
    println!("{md}\n(written to {})", out.display());
    Ok(())
}

fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `n` threads that sleep until dropped (small stacks).
struct Parked {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<thread::JoinHandle<()>>,
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in self.handles.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn park_threads(n: usize) -> Parked {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handles = (0..n)
        .filter_map(|_| {
            let stop = stop.clone();
            thread::Builder::new()
                .stack_size(64 << 10)
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        thread::park();
                    }
                })
                .ok()
        })
        .collect();
    Parked { stop, handles }
}

/// (runs, run time ns) of the agent's task iterator program.
fn iter_stats(pid: u32) -> Result<(u64, u64)> {
    let out = util::output("bpftool", &["-j", "prog", "show"]).context("bpftool prog show")?;
    let progs: Vec<serde_json::Value> = serde_json::from_str(&out).context("bpftool JSON")?;
    let ids = prog_ids(pid)?;
    for p in &progs {
        if p["id"].as_u64().is_some_and(|id| ids.contains(&id)) && p["name"] == "task_iter" {
            return Ok((
                p["run_cnt"].as_u64().unwrap_or(0),
                p["run_time_ns"].as_u64().unwrap_or(0),
            ));
        }
    }
    Ok((0, 0))
}

/// Hackbench's shape (`hackbench -T -g G -f F -l L -s 100`): G groups of F sender and F
/// receiver threads; every sender writes L 100-byte messages to every receiver of its
/// group through a pipe of its own. Mean ns per message.
fn hackbench(groups: usize, fan: usize, loops: usize) -> f64 {
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..groups {
        // pipes[s][r]: sender s to receiver r.
        let mut read_ends: Vec<Vec<i32>> = vec![Vec::new(); fan];
        let mut write_ends: Vec<Vec<i32>> = vec![Vec::new(); fan];
        for ws in write_ends.iter_mut() {
            for rs in read_ends.iter_mut() {
                let mut p = [0i32; 2];
                // SAFETY: pipe(2) fills the two-element array.
                unsafe { libc::pipe(p.as_mut_ptr()) };
                rs.push(p[0]);
                ws.push(p[1]);
            }
        }
        for fds in read_ends {
            handles.push(thread::spawn(move || {
                let mut buf = [0u8; 100];
                for _ in 0..loops {
                    for &fd in &fds {
                        let mut got = 0;
                        while got < buf.len() {
                            // SAFETY: a valid fd and buffer.
                            let n = unsafe {
                                libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got)
                            };
                            if n <= 0 {
                                break;
                            }
                            got += n as usize;
                        }
                    }
                }
                for fd in fds {
                    // SAFETY: closing our fd.
                    unsafe { libc::close(fd) };
                }
            }));
        }
        for fds in write_ends {
            handles.push(thread::spawn(move || {
                let buf = [7u8; 100];
                for _ in 0..loops {
                    for &fd in &fds {
                        // SAFETY: a valid fd and buffer.
                        unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
                    }
                }
                for fd in fds {
                    // SAFETY: closing our fd.
                    unsafe { libc::close(fd) };
                }
            }));
        }
    }
    for h in handles {
        let _ = h.join();
    }
    start.elapsed().as_nanos() as f64 / (groups * fan * fan * loops) as f64
}

/// A crate depending on regex-syntax, built offline from the local registry cache.
fn prepare_build(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir.join("src"))?;
    fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"umbra-bench-build\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nregex-syntax = \"0.8\"\n\n[workspace]\n",
    )?;
    fs::write(
        dir.join("src/main.rs"),
        "fn main() { println!(\"{:?}\", regex_syntax::parse(\"a+b\").is_ok()); }\n",
    )?;
    // Resolve once (lock file), so each measured build only compiles.
    let st = Command::new("cargo")
        .args(["generate-lockfile", "--offline"])
        .current_dir(dir)
        .status()?;
    if !st.success() {
        bail!("cannot prepare the build benchmark in {}", dir.display());
    }
    Ok(())
}

/// One clean `cargo build -j2` of the prepared crate, ns.
fn build_once(dir: &Path) -> Result<f64> {
    let target = dir.join("target");
    let _ = fs::remove_dir_all(&target);
    let start = Instant::now();
    let st = Command::new("cargo")
        .args(["build", "--offline", "-j2", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", &target)
        .status()?;
    if !st.success() {
        bail!("the benchmark build failed");
    }
    Ok(start.elapsed().as_nanos() as f64)
}

/// Mean ns per round trip of `n` ping-pongs over two pipes between two threads.
fn pingpong(n: u64, pinned: bool) -> f64 {
    let mut a = [0i32; 2];
    let mut b = [0i32; 2];
    // SAFETY: pipe(2) fills the two-element arrays.
    unsafe {
        libc::pipe(a.as_mut_ptr());
        libc::pipe(b.as_mut_ptr());
    }
    let (a_r, a_w, b_r, b_w) = (a[0], a[1], b[0], b[1]);
    let start = Instant::now();
    if pinned {
        pin_to_cpu0();
    }
    let peer = thread::spawn(move || {
        if pinned {
            pin_to_cpu0();
        }
        let mut c = [0u8; 1];
        for _ in 0..n {
            // SAFETY: valid fds and a one-byte buffer.
            unsafe {
                libc::read(a_r, c.as_mut_ptr().cast(), 1);
                libc::write(b_w, c.as_ptr().cast(), 1);
            }
        }
    });
    let mut c = [1u8; 1];
    for _ in 0..n {
        // SAFETY: as above.
        unsafe {
            libc::write(a_w, c.as_ptr().cast(), 1);
            libc::read(b_r, c.as_mut_ptr().cast(), 1);
        }
    }
    let _ = peer.join();
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    if pinned {
        unpin();
    }
    for fd in [a_r, a_w, b_r, b_w] {
        // SAFETY: closing fds we opened.
        unsafe { libc::close(fd) };
    }
    ns
}

/// Pins the calling thread to CPU 0 (as `taskset -c 0 perf bench sched pipe`): every
/// round trip is then two context switches on one CPU, with no cross-CPU wakeups.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Undoes [`pin_to_cpu0`] for the calling thread.
fn unpin() {
    // SAFETY: as above, every CPU the machine has.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn set_bpf_stats(on: bool) -> Result<()> {
    fs::write(
        "/proc/sys/kernel/bpf_stats_enabled",
        if on { "1" } else { "0" },
    )
    .context("writing /proc/sys/kernel/bpf_stats_enabled")
}

/// (program, run count, ns/run) of the programs process `pid` holds (the `prog_id` of its
/// BPF file descriptors), so other agents running at the time do not count.
fn prog_ids(pid: u32) -> Result<std::collections::HashSet<u64>> {
    let mut ids = std::collections::HashSet::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = fs::read_to_string(fd?.path()).unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// Run time of all the agent's programs so far, ns (0 while bpf_stats is off).
fn progs_ns(agent: &Agent) -> Result<u64> {
    Ok(prog_stats(agent.child.id())?
        .iter()
        .map(|(_, cnt, ns)| (*cnt as f64 * ns) as u64)
        .sum())
}

/// User and system CPU time of this process's reaped children so far, ns.
fn children_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

fn prog_stats(pid: u32) -> Result<Vec<(String, u64, f64)>> {
    let ids = prog_ids(pid)?;
    let out = util::output("bpftool", &["-j", "prog", "show"]).context("bpftool prog show")?;
    let progs: Vec<serde_json::Value> = serde_json::from_str(&out).context("bpftool JSON")?;
    let mut rows = Vec::new();
    for p in &progs {
        let owned = p["id"].as_u64().is_some_and(|id| ids.contains(&id));
        let (Some(name), Some(rt), Some(cnt)) = (
            p["name"].as_str(),
            p["run_time_ns"].as_u64(),
            p["run_cnt"].as_u64(),
        ) else {
            continue;
        };
        if owned && cnt > 0 {
            rows.push((name.to_string(), cnt, rt as f64 / cnt as f64));
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    Ok(rows)
}

/// The agent running as a child (`umbra run`), its log in a file.
pub struct Agent {
    child: Interrupted,
    log: PathBuf,
}

/// A child process interrupted (SIGINT) and reaped when dropped, if still running.
pub struct Interrupted(pub Child);

impl Interrupted {
    /// SIGINT, then its exit status; None if it had already exited (and was reaped).
    pub fn interrupt(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        if self.0.try_wait()?.is_some() {
            return Ok(None);
        }
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        self.0.wait().map(Some)
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Interrupted {
    fn drop(&mut self) {
        let _ = self.interrupt();
    }
}

impl Agent {
    fn start(bin: &Path, extra: &[String]) -> Result<Agent> {
        let log = util::target_dir().join("bench/agent.log");
        Agent::start_with(bin, extra, &[], None, &log)
    }

    /// `umbra [extra] run --top 0 [run_args]`, its stdout to `stdout` (else discarded)
    /// and its warnings to `log`.
    pub fn start_with(
        bin: &Path,
        extra: &[String],
        run_args: &[&str],
        stdout: Option<&Path>,
        log: &Path,
    ) -> Result<Agent> {
        let out = match stdout {
            Some(p) => Stdio::from(fs::File::create(p)?),
            None => Stdio::null(),
        };
        let mut child = Command::new(bin)
            .args(extra)
            .args(["--log", "warn", "run", "--top", "0"])
            .args(run_args)
            .stdout(out)
            .stderr(fs::File::create(log)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let agent = |child| Agent {
            child: Interrupted(child),
            log: log.to_path_buf(),
        };
        // Attached once its programs show up; give it a moment either way.
        thread::sleep(Duration::from_secs(2));
        if let Some(st) = child.try_wait()? {
            let err = fs::read_to_string(log).unwrap_or_default();
            drop(agent(child));
            bail!("agent exited early ({st}): {err}");
        }
        Ok(agent(child))
    }

    /// Whether it still runs; an error (naming its log) when it exited.
    pub fn check(&mut self) -> Result<()> {
        if let Some(st) = self.child.0.try_wait()? {
            bail!("the agent exited early ({st}); see {}", self.log.display());
        }
        Ok(())
    }

    /// `value` of each of the agent's threads' `/proc/<pid>/task/<tid>/<file>`, summed (a
    /// thread that ended meanwhile counts 0).
    fn threads_sum(&self, file: &str, value: impl Fn(&str) -> u64) -> Result<u64> {
        let mut total = 0;
        for t in fs::read_dir(format!("/proc/{}/task", self.child.id()))? {
            total += value(&fs::read_to_string(t?.path().join(file)).unwrap_or_default());
        }
        Ok(total)
    }

    /// On-CPU ns of all the agent's threads (`schedstat`).
    fn cpu_ns(&self) -> Result<u64> {
        self.threads_sum("schedstat", |s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
    }

    /// Context switches of all the agent's threads so far (each is a wakeup or a
    /// preemption; `status`).
    fn switches(&self) -> Result<u64> {
        self.threads_sum("status", |s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum()
        })
    }

    /// CPU used over `window`, percent of one core, and context switches a second.
    fn cpu_percent(&self, window: Duration) -> Result<(f64, f64)> {
        let (t0, s0) = (self.cpu_ns()?, self.switches()?);
        let start = Instant::now();
        thread::sleep(window);
        let (t1, s1) = (self.cpu_ns()?, self.switches()?);
        let secs = start.elapsed().as_secs_f64();
        Ok((
            (t1 - t0) as f64 / (secs * 1e9) * 100.0,
            s1.saturating_sub(s0) as f64 / secs,
        ))
    }

    fn rss_bytes(&self) -> Result<u64> {
        let s = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .context("VmRSS")?;
        Ok(kb * 1024)
    }

    pub fn stop(mut self) -> Result<()> {
        let st = match self.child.interrupt()? {
            Some(st) => st,
            None => self.child.0.wait()?,
        };
        if !st.success() {
            let err = fs::read_to_string(&self.log).unwrap_or_default();
            let _ = std::io::stderr().write_all(err.as_bytes());
            bail!("agent exited with {st}");
        }
        Ok(())
    }
}
