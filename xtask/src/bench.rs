//! `cargo xtask bench overhead`: what the agent costs, measured in one run.
//!
//! - Slowdown: a pipe ping-pong between two threads (the shape of `perf bench sched pipe`,
//!   pinned to one CPU as with `taskset -c 0`, and unpinned:
//!   every round trip is two context switches, two wakeups, two reads and two writes,
//!   all of them hooked), run alternately without and with the agent; the ratio of the
//!   medians.
//! - Per-program cost: `kernel.bpf_stats_enabled` on, run time / run count per program
//!   from `bpftool prog show`, while the ping-pong runs.
//! - Agent CPU and RSS: on-CPU time of all its threads (schedstat) and VmRSS, idle and
//!   under load.

use std::{
    fs,
    io::Write,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::{install, util};

#[derive(Subcommand)]
pub enum Bench {
    /// Slowdown of a scheduler-heavy benchmark with the agent, per-program ns/run, agent CPU and RSS.
    Overhead {
        /// Alternating rounds (each runs the benchmark without and with the agent).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Round trips per benchmark run.
        #[arg(long, default_value_t = 200_000)]
        iterations: u64,
    },
    /// Criterion micro-benchmarks: aggregate (1,000 processes a tick), record writes, the
    /// publish spool and summary encoding, forecasts (1,000 workloads a tick) and
    /// per-request predictions.
    Micro,
}

pub fn run(b: Bench) -> Result<()> {
    match b {
        Bench::Overhead { rounds, iterations } => overhead(rounds, iterations),
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
        ]),
    }
}

fn overhead(rounds: usize, iterations: u64) -> Result<()> {
    if !util::is_root() {
        bail!("the overhead benchmark loads the agent: run it as root");
    }
    install::apt(&["bpftool"])?;
    util::step("build (release)");
    util::cargo(&["build", "--release", "-p", "umbra"])?;
    let bin = util::target_dir().join("release/umbra");
    set_bpf_stats(false)?;

    // The agent as shipped, and without syscall accounting (raw_syscalls/sys_exit makes
    // every syscall take the kernel's tracing slow path).
    let no_sys = util::target_dir().join("bench/no-sys-exit.toml");
    fs::create_dir_all(no_sys.parent().context("bench dir")?)?;
    fs::write(&no_sys, "[capture]\ndisable = [\"sys_exit\"]\n")?;
    let variants: [(&str, Vec<String>); 2] = [
        ("agent (all hooks)", vec![]),
        (
            "agent without sys_exit",
            vec!["--config".into(), no_sys.display().to_string()],
        ),
    ];
    let mut md = String::new();
    md.push_str("| benchmark | round trip without agent (median) | with agent (median) | slowdown | goal |\n|---|---|---|---|---|\n");
    let mut headline = 0.0;
    for pinned in [true, false] {
        for (name, args) in &variants {
            util::step(&format!(
                "{name}, threads {}: {rounds} alternating rounds of {iterations} pipe round trips",
                if pinned {
                    "pinned to CPU 0"
                } else {
                    "unpinned"
                }
            ));
            let mut without = Vec::new();
            let mut with = Vec::new();
            for r in 0..rounds {
                // Alternate the order so that drift hits both sides alike.
                let first_with = r % 2 == 1;
                for agent_on in [first_with, !first_with] {
                    let ns = if agent_on {
                        let agent = Agent::start(&bin, args)?;
                        let ns = pingpong(iterations, pinned);
                        agent.stop()?;
                        ns
                    } else {
                        pingpong(iterations, pinned)
                    };
                    eprintln!(
                        "round {r}: agent {}: {ns:.0} ns per round trip",
                        if agent_on { "on " } else { "off" }
                    );
                    if agent_on {
                        with.push(ns)
                    } else {
                        without.push(ns)
                    }
                }
            }
            let (m_without, m_with) = (median(&mut without), median(&mut with));
            let slowdown = m_with / m_without - 1.0;
            if pinned && args.is_empty() {
                headline = slowdown;
            }
            md.push_str(&format!(
                "| pipe ping-pong, {}, {name} | {m_without:.0} ns | {m_with:.0} ns | {:.2}% | ≤ 3% |\n",
                if pinned { "pinned" } else { "unpinned" },
                slowdown * 100.0
            ));
        }
    }
    eprintln!(
        "headline slowdown (pinned, all hooks): {:.2}%",
        headline * 100.0
    );

    util::step("per-program cost and agent footprint");
    let agent = Agent::start(&bin, &[])?;
    let idle_cpu = agent.cpu_percent(Duration::from_secs(20))?;
    set_bpf_stats(true)?;
    let load = thread::spawn(move || pingpong(iterations * 4, true));
    let load_cpu = agent.cpu_percent(Duration::from_secs(10))?;
    let _ = load.join();
    let progs = prog_stats(agent.child.id())?;
    set_bpf_stats(false)?;
    let rss = agent.rss_bytes()?;
    agent.stop()?;

    md.push_str("\n| measure | value | goal |\n|---|---|---|\n");
    md.push_str(&format!(
        "| agent CPU, idle machine | {idle_cpu:.3}% of one core | ≤ 0.5% |\n"
    ));
    md.push_str(&format!(
        "| agent CPU, under the pipe benchmark | {load_cpu:.3}% of one core | |\n"
    ));
    md.push_str(&format!(
        "| agent RSS | {:.1} MB | ≤ 25 MB |\n",
        rss as f64 / 1e6
    ));
    md.push_str("\n| program | runs | ns/run |\n|---|---|---|\n");
    for (name, cnt, ns) in &progs {
        md.push_str(&format!("| {name} | {cnt} | {ns:.0} |\n"));
    }
    let out = util::target_dir().join("bench/overhead.md");
    fs::create_dir_all(out.parent().context("bench dir")?)?;
    fs::write(&out, &md)?;
    println!("{md}\n(written to {})", out.display());
    Ok(())
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

fn median(v: &mut [f64]) -> f64 {
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
fn prog_stats(pid: u32) -> Result<Vec<(String, u64, f64)>> {
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

/// The agent running as a child (`umbra run`, output discarded).
struct Agent {
    child: Child,
}

impl Agent {
    fn start(bin: &std::path::Path, extra: &[String]) -> Result<Agent> {
        let mut child = Command::new(bin)
            .args(extra)
            .args(["--log", "warn", "run", "--top", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        // Attached once its programs show up; give it a moment either way.
        thread::sleep(Duration::from_secs(2));
        if let Some(st) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("agent exited early ({st}): {err}");
        }
        Ok(Agent { child })
    }

    /// On-CPU ns of all the agent's threads (`/proc/<pid>/task/*/schedstat`).
    fn cpu_ns(&self) -> Result<u64> {
        let mut total = 0;
        for t in fs::read_dir(format!("/proc/{}/task", self.child.id()))? {
            let s = fs::read_to_string(t?.path().join("schedstat")).unwrap_or_default();
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// CPU used over `window`, percent of one core.
    fn cpu_percent(&self, window: Duration) -> Result<f64> {
        let t0 = self.cpu_ns()?;
        let start = Instant::now();
        thread::sleep(window);
        let t1 = self.cpu_ns()?;
        Ok((t1 - t0) as f64 / start.elapsed().as_nanos() as f64 * 100.0)
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

    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let st = self.child.wait()?;
        if !st.success() {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            let _ = std::io::stderr().write_all(err.as_bytes());
            bail!("agent exited with {st}");
        }
        Ok(())
    }
}
