//! `cargo xtask bench placement`: how soon a new request sits in its own group with its
//! limits, on this machine's real cgroups.
//!
//! - Automatic: `umbra run --enforce --explain` with a per-request rule for a probe
//!   executable (a copy of `sleep` at `target/bench/placement/umbra-probe`; its workload
//!   in the full tier from the start, so each request with a profile gets limits: every
//!   one after the first run is learned); the probe is started `execs` times, one after
//!   the other, each living 100 ms. Each placement's
//!   latency is the agent's own measure, from the exec's kernel timestamp to the write of
//!   the pid into the group (`placed N µs after exec` in the explanation): p50, p99, max.
//!   The agent also says when it saw each exec (`seen at N µs`): the rest is its cgroup
//!   work, almost all of it the kernel's move. A lone move of a sleeping process between
//!   two groups of the benchmark's own, at the same pace, shows what the kernel alone
//!   costs.
//! - `umbra exec`: the wall time of `umbra exec -- true` against `true` alone, medians of
//!   `runs` each, with the agent running (the request over its socket, the group and
//!   limits made, the command born in the group).

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{bench, util};

#[derive(Args, Clone)]
pub struct PlacementArgs {
    /// Execs of the probe.
    #[arg(long, default_value_t = 500)]
    execs: usize,
    /// Runs of `umbra exec -- true` (and of `true` alone).
    #[arg(long, default_value_t = 100)]
    runs: usize,
}

pub fn run(a: &PlacementArgs) -> Result<()> {
    if !util::is_root() {
        bail!("the placement benchmark writes cgroups and loads the agent: run it as root");
    }
    let bin = bench::release_agent()?;
    let dir = util::target_dir().join("bench/placement");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let probe = dir.join("umbra-probe");
    let sleep = which("sleep")?;
    fs::copy(&sleep, &probe).with_context(|| format!("copying {}", sleep.display()))?;
    let state = dir.join("state");
    let cfg = dir.join("placement.toml");
    fs::write(
        &cfg,
        format!(
            "[publish]\nstate_dir = \"{}\"\n\
             [allocate.tiers]\nstart = \"full\"\n\
             [[allocate.workload]]\nexe = \"{}\"\nper_request = true\n",
            state.display(),
            probe.display()
        ),
    )?;
    let out_path = dir.join("explain.txt");
    let agent = bench::Agent::start_with(
        &bin,
        &["--config".into(), cfg.display().to_string()],
        &["--enforce", "--explain"],
        Some(&out_path),
        &dir.join("agent.log"),
    )?;
    util::step(&format!("{} execs of the probe", a.execs));
    for _ in 0..a.execs {
        let st = Command::new(&probe).arg("0.1").status()?;
        if !st.success() {
            bail!("the probe failed: {st}");
        }
    }
    util::step(&format!(
        "{} runs of umbra exec -- true, and of true",
        a.runs
    ));
    let t = which("true")?;
    let mut alone = Vec::new();
    let mut via = Vec::new();
    for _ in 0..a.runs {
        let s = Instant::now();
        let st = Command::new(&t).status()?;
        alone.push(s.elapsed().as_secs_f64() * 1e3);
        if !st.success() {
            bail!("true failed");
        }
        let s = Instant::now();
        let out = Command::new(&bin)
            .args(["exec", "--state-dir"])
            .arg(&state)
            .arg("--")
            .arg(&t)
            .stderr(Stdio::piped())
            .output()?;
        via.push(s.elapsed().as_secs_f64() * 1e3);
        if !out.status.success() {
            bail!(
                "umbra exec failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Let the last placements be explained before stopping.
    thread::sleep(Duration::from_secs(2));
    agent.stop()?;
    let explained = fs::read_to_string(&out_path)?;
    // `… pid N -> …/req-N [with …], placed A µs after exec (seen at B µs)`
    let requests: Vec<&str> = explained
        .lines()
        .filter(|l| l.contains("umbra-probe pid") && l.contains("/req-"))
        .collect();
    let number_after = |l: &str, tag: &str| -> Option<u64> {
        let (_, rest) = l.split_once(tag)?;
        rest.split_whitespace().next()?.parse().ok()
    };
    let mut placed = Vec::new();
    let mut seen = Vec::new();
    let mut moved = Vec::new();
    for l in &requests {
        if let Some(p) = number_after(l, ", placed ") {
            placed.push(p as f64 / 1e3);
            if let Some(s) = number_after(l, "(seen at ") {
                seen.push(s as f64 / 1e3);
                moved.push(p.saturating_sub(s) as f64 / 1e3);
            }
        }
    }
    let with_limits = requests.iter().filter(|l| l.contains(" with ")).count();
    let failed = requests.iter().filter(|l| l.contains("FAILED")).count();
    if placed.is_empty() {
        bail!("no placement explained; see {}", out_path.display());
    }
    let line = |what: &str, v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        println!(
            "  {what:<34} p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0)
        );
    };
    println!(
        "\nAutomatic placement: {} of {} execs placed in their own group, {with_limits} of them \
         with limits ({failed} placements failed)",
        placed.len(),
        a.execs
    );
    line("exec -> placed", &mut placed);
    if !seen.is_empty() {
        line("exec -> seen by the allocator", &mut seen);
        line("seen -> placed (group, limits, move)", &mut moved);
    }
    let mut floor = isolated_moves(a.execs.min(200))?;
    line("a lone cgroup.procs write (kernel)", &mut floor);
    let (ma, mv) = (bench::median(&mut alone), bench::median(&mut via));
    println!(
        "umbra exec -- true: median {mv:.2} ms against {ma:.2} ms for true alone: placing \
         costs {:.2} ms ({} runs each)",
        mv - ma,
        a.runs
    );
    Ok(())
}

/// The kernel's own cost of moving a process, as the agent meets it: a sleeping process
/// moved `n` times between two groups of this benchmark's own, 100 ms apart (the probe's
/// pace), each write timed; the groups are in the first hierarchy the agent writes (v1
/// cpu, else cgroup2). Without `favordynmods` each move waits for an RCU grace period.
fn isolated_moves(n: usize) -> Result<Vec<f64>> {
    let v1 = Path::new("/sys/fs/cgroup/cpu/cgroup.procs");
    let root = if v1.exists() {
        Path::new("/sys/fs/cgroup/cpu")
    } else {
        Path::new("/sys/fs/cgroup")
    };
    let top = root.join(format!("umbra-bench-move-{}", std::process::id()));
    let groups = [top.join("a"), top.join("b")];
    for g in [&top, &groups[0], &groups[1]] {
        fs::create_dir(g).with_context(|| format!("creating {}", g.display()))?;
    }
    let mut child = Command::new(which("sleep")?).arg("3600").spawn()?;
    let pid = child.id().to_string();
    let mut out = Vec::with_capacity(n);
    let mut result = Ok(());
    for i in 0..=n {
        thread::sleep(Duration::from_millis(100));
        let g = &groups[i % 2];
        let s = Instant::now();
        if let Err(e) = fs::write(g.join("cgroup.procs"), &pid) {
            result = Err(e).with_context(|| format!("moving {pid} into {}", g.display()));
            break;
        }
        // The first move (from wherever the benchmark runs) is not counted.
        if i > 0 {
            out.push(s.elapsed().as_secs_f64() * 1e3);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    // The group of a process just reaped empties a moment later.
    let mut removed = Ok(());
    for g in [&groups[0], &groups[1], &top] {
        removed = removed.and(remove_when_empty(g));
    }
    result.and(removed)?;
    Ok(out)
}

fn remove_when_empty(g: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..50 {
        match fs::remove_dir(g) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(last.map_or_else(|| anyhow::anyhow!("not removed"), anyhow::Error::from))
        .with_context(|| format!("removing {}", g.display()))
}

fn which(name: &str) -> Result<std::path::PathBuf> {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .with_context(|| format!("{name} not found in /usr/bin or /bin"))
}
