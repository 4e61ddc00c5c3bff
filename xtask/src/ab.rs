//! `cargo xtask bench ab`: one stepping CPU load under three allocation strategies on this
//! machine's real cgroups, one after the other in one run:
//!
//! - **static**: a group made by the harness with `cpu.max` (v1: `cpu.cfs_quota_us`) at the
//!   load's peak + 15% (the careful operator's limit `umbra simulate` scores as `static`);
//! - **vpa**: `umbra run --enforce` with the VPA-like recommender as its predictor (no
//!   model, no calibration; p90 of a decaying histogram + 15%, applied as it is, one step
//!   ahead, no extra margin);
//! - **umbra**: `umbra run --enforce` on its defaults (the shipped model, calibrated, the
//!   forecast's lead steps and adaptive margin).
//!
//! The agent strategies start in the full tier (a run lasts minutes, not the window over
//! which a tier is earned) and manage the load by its executable. The load (this binary's
//! hidden `ab-load`, copied to `target/bench/umbra-ab-load`) is one process of two threads
//! that spin a duty cycle per 50 ms slot: most of each period low (one thread at 20%),
//! its last `high_s` seconds high (both at 75%), the phase following the wall clock — a periodic batch step, the shape a
//! forecast can see coming and a reactive recommender cannot (the step is under 10% of
//! the time, below its p90). Demand is set by the clock: work a throttled thread could not
//! do is lost, not caught up.
//!
//! After `warmup` periods (history for the predictors), `cycles` periods are measured:
//! throttled time and the share of bandwidth periods throttled (`cpu.stat` of the groups
//! from the load's up to the hierarchy root), reserved core-seconds (the tightest
//! `cpu.max` among those groups, sampled every 250 ms; none counts as the node's CPUs),
//! and the CPU the load got.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::{bench, util};

/// Duty per thread in the low and the high phase.
const LOW: [f64; 2] = [0.2, 0.0];
const HIGH: [f64; 2] = [0.75, 0.75];
const SLOT: Duration = Duration::from_millis(50);
const STATIC_MARGIN: f64 = 0.15;
const STRATEGIES: [&str; 3] = ["static", "vpa", "umbra"];

#[derive(Args, Clone)]
pub struct AbArgs {
    /// Periods measured per strategy.
    #[arg(long, default_value_t = 2)]
    cycles: u64,
    /// Periods run before measuring (the predictors' history).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// The load's period, s.
    #[arg(long, default_value_t = 120)]
    period_s: u64,
    /// The high phase at the end of each period, s.
    #[arg(long, default_value_t = 10)]
    high_s: u64,
    /// Only these strategies (static, vpa, umbra; repeatable).
    #[arg(long)]
    only: Vec<String>,
}

/// `ab-load`: the stepping load itself.
#[derive(Args)]
pub struct LoadArgs {
    #[arg(long)]
    period_s: u64,
    #[arg(long)]
    high_s: u64,
    #[arg(long)]
    seconds: u64,
}

pub fn load(a: &LoadArgs) {
    let start = Instant::now();
    let end = start + Duration::from_secs(a.seconds);
    let (period, high) = (a.period_s as f64, a.high_s as f64);
    let threads: Vec<_> = (0..2)
        .map(|i| {
            thread::spawn(move || {
                let mut slot = start;
                while slot < end {
                    // The phase follows the wall clock, so the step fills whole forecast
                    // buckets (they end at multiples of their length since the epoch).
                    let t = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64())
                        % period;
                    let duty = if t >= period - high { HIGH[i] } else { LOW[i] };
                    let busy_until = slot + SLOT.mul_f64(duty);
                    while Instant::now() < busy_until {
                        std::hint::spin_loop();
                    }
                    slot += SLOT;
                    if let Some(d) = slot.checked_duration_since(Instant::now()) {
                        thread::sleep(d);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// The load's average demand, cores.
fn mean_demand(period: f64, high: f64) -> f64 {
    let (lo, hi): (f64, f64) = (LOW.iter().sum(), HIGH.iter().sum());
    (lo * (period - high) + hi * high) / period
}

#[derive(Default)]
struct Row {
    strategy: String,
    throttled_s: f64,
    periods: u64,
    throttled_periods: u64,
    core_s: f64,
    used_core_s: f64,
    measured_s: f64,
}

pub fn run(a: &AbArgs) -> Result<()> {
    if !util::is_root() {
        bail!("the A/B benchmark writes cgroups and loads the agent: run it as root");
    }
    let wanted: Vec<&str> = STRATEGIES
        .into_iter()
        .filter(|s| a.only.is_empty() || a.only.iter().any(|o| o == s))
        .collect();
    if wanted.is_empty() {
        bail!("--only: expected static, vpa or umbra");
    }
    if a.high_s == 0 || a.high_s >= a.period_s {
        bail!("--high-s must be between 1 and --period-s − 1");
    }
    let bin = bench::release_agent()?;
    let dir = util::target_dir().join("bench/ab");
    fs::create_dir_all(&dir)?;
    let load_exe = dir.join("umbra-ab-load");
    let _ = fs::remove_file(&load_exe);
    fs::copy(std::env::current_exe()?, &load_exe).context("copying the load binary")?;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut rows = Vec::new();
    for s in wanted {
        util::step(&format!("strategy {s}"));
        rows.push(one(s, a, &bin, &load_exe, &dir, cpus)?);
    }
    print_table(a, &rows, cpus);
    Ok(())
}

fn one(
    strategy: &str,
    a: &AbArgs,
    bin: &Path,
    load_exe: &Path,
    dir: &Path,
    cpus: f64,
) -> Result<Row> {
    let seconds = (a.warmup + a.cycles) * a.period_s + 5;
    let mut load_cmd = Command::new(load_exe);
    load_cmd.args([
        "ab-load",
        "--period-s",
        &a.period_s.to_string(),
        "--high-s",
        &a.high_s.to_string(),
        "--seconds",
        &seconds.to_string(),
    ]);
    let mut agent = None;
    let mut own_group = None;
    if strategy == "static" {
        let peak: f64 = HIGH.iter().sum();
        let g = StaticGroup::make(peak * (1.0 + STATIC_MARGIN))?;
        g.enter_on_exec(&mut load_cmd);
        own_group = Some(g);
    } else {
        let state = dir.join(format!("state-{strategy}"));
        let _ = fs::remove_dir_all(&state);
        let predictor = if strategy == "vpa" {
            "[predict]\nmodel = \"none\"\nfallback = \"vpa\"\ncandidates = []\n\
             [predict.calibration]\nenabled = false\n\
             [allocate.rules]\nlead_steps = 1\nmargin = 0.0\nmax_margin = 0.0\n"
        } else {
            ""
        };
        let cfg = format!(
            "[publish]\nstate_dir = \"{}\"\n{predictor}\
             [allocate.tiers]\nstart = \"full\"\n\
             [[allocate.workload]]\nexe = \"{}\"\n",
            state.display(),
            load_exe.display()
        );
        let cfg_path = dir.join(format!("{strategy}.toml"));
        fs::write(&cfg_path, cfg)?;
        agent = Some(bench::Agent::start_with(
            bin,
            &["--config".into(), cfg_path.display().to_string()],
            &["--enforce"],
            None,
            &dir.join(format!("{strategy}.log")),
        )?);
        thread::sleep(Duration::from_secs(1));
    }
    let mut load = bench::Interrupted(load_cmd.spawn().context("starting the load")?);
    let pid = load.id();
    let warm_end = Instant::now() + Duration::from_secs(a.warmup * a.period_s);
    while Instant::now() < warm_end {
        if let Some(a) = &mut agent {
            a.check()?;
        }
        thread::sleep(Duration::from_millis(500));
    }
    let chain0 = groups_of(pid)?;
    let before = throttling(&chain0);
    let used0 = cpu_ns(pid);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(a.cycles * a.period_s);
    let mut core_s = 0.0;
    let mut last = t0;
    let mut seen = chain0.clone();
    while Instant::now() < end {
        thread::sleep(Duration::from_millis(250));
        let chain = groups_of(pid)?;
        let limit = chain
            .iter()
            .filter_map(|g| limit_cores(g))
            .fold(cpus, f64::min);
        let now = Instant::now();
        core_s += limit * (now - last).as_secs_f64();
        last = now;
        for g in chain {
            if !seen.contains(&g) {
                seen.push(g);
            }
        }
    }
    let measured_s = t0.elapsed().as_secs_f64();
    let used = cpu_ns(pid).saturating_sub(used0) as f64 / 1e9;
    if seen != chain0 {
        eprintln!("note: the load moved between groups while measured: {seen:?}");
    }
    let after = throttling(&chain0);
    let _ = load.interrupt();
    if let Some(a) = agent.take() {
        a.stop()?;
    }
    if let Some(g) = own_group {
        g.remove();
    }
    Ok(Row {
        strategy: strategy.into(),
        throttled_s: (after.2 - before.2) as f64 / 1e9,
        periods: after.0 - before.0,
        throttled_periods: after.1 - before.1,
        core_s,
        used_core_s: used,
        measured_s,
    })
}

fn print_table(a: &AbArgs, rows: &[Row], cpus: f64) {
    let demand = mean_demand(a.period_s as f64, a.high_s as f64);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nLoad: period {} s, the last {} s of each at {:.2} cores, else {:.2}; mean demand \
         {demand:.3} cores; {} period(s) measured after {} of warm-up; {cpus} CPUs.\n",
        a.period_s,
        a.high_s,
        HIGH.iter().sum::<f64>(),
        LOW.iter().sum::<f64>(),
        a.cycles,
        a.warmup
    );
    let _ = writeln!(
        out,
        "| strategy | throttled s | periods throttled | reserved core-s | CPU got core-s | \
         demand core-s |\n|---|---|---|---|---|---|"
    );
    for r in rows {
        let share = if r.periods > 0 {
            r.throttled_periods as f64 / r.periods as f64 * 100.0
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "| {} | {:.2} | {}/{} ({share:.1}%) | {:.1} | {:.1} | {:.1} |",
            r.strategy,
            r.throttled_s,
            r.throttled_periods,
            r.periods,
            r.core_s,
            r.used_core_s,
            demand * r.measured_s
        );
    }
}

/// A child stopped (SIGINT, then waited for) when dropped.
/// The static strategy's group: `umbra-ab` below the cpu controller's mount (v1) or the
/// cgroup2 root (where cpu is enabled there).
struct StaticGroup {
    dir: PathBuf,
}

impl StaticGroup {
    fn make(cores: f64) -> Result<StaticGroup> {
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let v2 = Path::new("/sys/fs/cgroup");
        let dir;
        if v1.join("cpu.cfs_quota_us").exists() {
            dir = v1.join("umbra-ab");
            fs::create_dir_all(&dir)?;
            let period = 100_000u64;
            fs::write(dir.join("cpu.cfs_period_us"), period.to_string())?;
            fs::write(
                dir.join("cpu.cfs_quota_us"),
                ((cores * period as f64) as u64).to_string(),
            )?;
        } else if fs::read_to_string(v2.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| c == "cpu")
        {
            let _ = fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            dir = v2.join("umbra-ab");
            fs::create_dir_all(&dir)?;
            fs::write(
                dir.join("cpu.max"),
                format!("{} 100000", (cores * 100_000.0) as u64),
            )?;
        } else {
            bail!("no cpu controller: neither /sys/fs/cgroup/cpu (v1) nor cpu in cgroup2");
        }
        Ok(StaticGroup { dir })
    }

    /// The command joins the group before it execs.
    fn enter_on_exec(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let procs = self.dir.join("cgroup.procs");
        // SAFETY: between fork and exec only a write of our own pid to a cgroup file.
        unsafe {
            cmd.pre_exec(move || fs::write(&procs, std::process::id().to_string()));
        }
    }

    fn remove(self) {
        // The load has exited; a moment for the kernel to let go of the group.
        for _ in 0..20 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("note: {} not removed", self.dir.display());
    }
}

/// The cpu-controller groups of `pid`, its own first, up to (not including) the root.
fn groups_of(pid: u32) -> Result<Vec<PathBuf>> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("the load (pid {pid}) is gone"))?;
    let mut rel = None;
    let mut root = PathBuf::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(ctl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if ctl.split(',').any(|c| c == "cpu") {
            rel = Some(path.to_string());
            root = PathBuf::from("/sys/fs/cgroup/cpu");
            break;
        }
        if id == "0" && ctl.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            rel = Some(path.to_string());
            root = PathBuf::from("/sys/fs/cgroup");
        }
    }
    let rel = rel.context("the load has no cpu cgroup")?;
    let mut out = Vec::new();
    let mut p = Path::new(rel.trim_start_matches('/'));
    while !p.as_os_str().is_empty() {
        out.push(root.join(p));
        p = p.parent().unwrap_or(Path::new(""));
    }
    Ok(out)
}

/// The group's CPU limit, cores (none: unlimited).
fn limit_cores(g: &Path) -> Option<f64> {
    if let Ok(q) = fs::read_to_string(g.join("cpu.cfs_quota_us")) {
        let q: i64 = q.trim().parse().ok()?;
        let p: f64 = fs::read_to_string(g.join("cpu.cfs_period_us"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        return (q > 0).then(|| q as f64 / p);
    }
    let m = fs::read_to_string(g.join("cpu.max")).ok()?;
    let mut f = m.split_whitespace();
    let q: f64 = f.next()?.parse().ok()?;
    let p: f64 = f.next()?.parse().ok()?;
    Some(q / p)
}

/// (bandwidth periods, periods throttled, throttled ns) summed over `chain`.
fn throttling(chain: &[PathBuf]) -> (u64, u64, u64) {
    let mut t = (0, 0, 0);
    for g in chain {
        let text = fs::read_to_string(g.join("cpu.stat")).unwrap_or_default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(k), Some(v)) = (f.next(), f.next().and_then(|v| v.parse::<u64>().ok()))
            else {
                continue;
            };
            match k {
                "nr_periods" => t.0 += v,
                "nr_throttled" => t.1 += v,
                "throttled_time" => t.2 += v,
                "throttled_usec" => t.2 += v * 1000,
                _ => {}
            }
        }
    }
    t
}

/// On-CPU ns of all of `pid`'s threads.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}
