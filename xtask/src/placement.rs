//! `cargo xtask bench placement`: how soon a new request sits in its own group with its
//! limits, on this machine's real cgroups.
//!
//! - Automatic: `umbra run --enforce --explain` with a per-request rule for a probe
//!   executable (its workload in the full tier from the start, so each request gets limits) (a copy of `sleep` at `target/bench/placement/umbra-probe`); the probe is
//!   started `execs` times, one after the other, each living 100 ms. Each placement's
//!   latency is the agent's own measure, from the exec's kernel timestamp to the write of
//!   the pid into the group (`placed N µs after exec` in the explanation): p50, p99, max.
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
    let mut us: Vec<u64> = explained
        .lines()
        .filter(|l| l.contains("umbra-probe pid"))
        .filter_map(|l| {
            let (_, rest) = l.split_once(", placed ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect();
    let with_limits = explained
        .lines()
        .filter(|l| l.contains("umbra-probe pid") && l.contains(" with "))
        .count();
    let failed = explained
        .lines()
        .filter(|l| l.contains("umbra-probe") && l.contains("FAILED"))
        .count();
    us.sort_unstable();
    if us.is_empty() {
        bail!("no placement explained; see {}", out_path.display());
    }
    let q = |p: f64| us[((us.len() - 1) as f64 * p).round() as usize] as f64 / 1e3;
    println!(
        "\nAutomatic placement, exec -> placed: {} of {} execs placed in their own group, \
         {with_limits} of them with limits ({failed} placements failed): p50 {:.2} ms, p90 \
         {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        us.len(),
        a.execs,
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    let (ma, mv) = (bench::median(&mut alone), bench::median(&mut via));
    println!(
        "umbra exec -- true: median {mv:.2} ms against {ma:.2} ms for true alone: placing \
         costs {:.2} ms ({} runs each)",
        mv - ma,
        a.runs
    );
    Ok(())
}

fn which(name: &str) -> Result<std::path::PathBuf> {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .with_context(|| format!("{name} not found in /usr/bin or /bin"))
}
