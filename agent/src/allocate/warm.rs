//! Moves kept fast between execs, on a kernel whose cgroup hierarchies are not mounted
//! with `favordynmods`.
//!
//! Writing a pid into `cgroup.procs` takes the kernel's global `cgroup_threadgroup_rwsem`
//! for writing, and its first writer after a quiet spell waits for an RCU grace period
//! (milliseconds: 5.7 ms for a lone move on this 6.18 host, tens under load). The lock's
//! readers go back to their fast path only one grace period after the last writer left:
//! a writer that comes before that does not wait (19 µs back to back). So while requests
//! are being placed, a thread writes the agent's own pid into the cgroup it already
//! lives in every few milliseconds ([`PERIOD`], adapted) — the kernel moves nothing — and
//! the placement of the next exec finds the lock warm: the first exec of a burst pays the
//! grace period, the ones that follow within the window (`allocate.request.warm_ms`) do
//! not. While warm, forks
//! and exits on the machine take the lock's slower read path, as `favordynmods` makes
//! them do always; when the window passes the thread sleeps and costs nothing.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing::warn;

use super::cgroups::{Mounts, parse_proc_cgroup};

/// Between two writes while warm, at first: the lock stays warm as long as a writer comes
/// before the grace period that follows the last one ends (on this 6.18 host, HZ 250: a
/// lone writer every 15 ms still kept moves fast, every 20 ms did not). The period adapts: halved (to
/// [`MIN_PERIOD`]) after a write that found the lock cold, lengthened by a millisecond (to
/// [`MAX_PERIOD`]) after [`STREAK`] warm ones — a kernel with shorter grace periods (HZ
/// 1000) gets more writes, one with longer ones fewer.
pub const PERIOD: Duration = Duration::from_millis(5);
pub const MIN_PERIOD: Duration = Duration::from_millis(1);
pub const MAX_PERIOD: Duration = Duration::from_millis(8);
const STREAK: u32 = 100;
/// A write that took this long waited for a grace period: the lock had gone cold.
const COLD: Duration = Duration::from_millis(1);

/// What the thread does at a moment, given until when it is armed (ms since its start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Write,
    Sleep,
}

fn step(now_ms: u64, until_ms: u64) -> Step {
    if now_ms < until_ms {
        Step::Write
    } else {
        Step::Sleep
    }
}

struct Shared {
    base: Instant,
    until_ms: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
}

/// The thread that keeps moves fast, and the window it is armed for after each exec.
pub struct Warmer {
    shared: Arc<Shared>,
    window_ms: u64,
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl Warmer {
    /// Finds a `cgroup.procs` that takes the agent's own pid (its cgroup in the cgroup2
    /// mount, else in each cgroup v1 hierarchy), writes it once, and starts the thread.
    /// Err: every file tried and why it refused.
    pub fn start(window_ms: u64, mounts: &Mounts) -> Result<Warmer, String> {
        let pid = std::process::id();
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let mut tried = Vec::new();
        for path in candidates(mounts, &own) {
            match open_and_write(&path, pid) {
                Ok(file) => return Ok(Warmer::spawn(file, path, pid, window_ms)),
                Err(e) => tried.push(format!("{}: {e}", path.display())),
            }
        }
        if tried.is_empty() {
            tried.push("no cgroup of this process found in the mounted hierarchies".into());
        }
        Err(tried.join("; "))
    }

    fn spawn(file: File, path: PathBuf, pid: u32, window_ms: u64) -> Warmer {
        let shared = Arc::new(Shared {
            base: Instant::now(),
            until_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        let shown = path.clone();
        let thread = std::thread::Builder::new()
            .name("umbra-warm".into())
            .spawn(move || run(&s, file, &shown, pid))
            .ok();
        Warmer {
            shared,
            window_ms,
            path,
            thread,
        }
    }

    /// Keeps moves fast for the window from now.
    pub fn arm(&self) {
        let until = self.shared.now_ms() + self.window_ms;
        self.shared.until_ms.fetch_max(until, Ordering::Relaxed);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// The `cgroup.procs` written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Warmer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// The period after a write that took `took` (`streak`: warm writes in a row, updated).
fn adapt(period: Duration, took: Duration, streak: &mut u32) -> Duration {
    if took >= COLD {
        *streak = 0;
        return (period / 2).max(MIN_PERIOD);
    }
    *streak += 1;
    if *streak >= STREAK {
        *streak = 0;
        return (period + Duration::from_millis(1)).min(MAX_PERIOD);
    }
    period
}

fn run(s: &Shared, mut file: File, path: &Path, pid: u32) {
    let text = pid.to_string();
    let (mut period, mut streak, mut woken) = (PERIOD, 0, true);
    while !s.stop.load(Ordering::Relaxed) {
        match step(s.now_ms(), s.until_ms.load(Ordering::Relaxed)) {
            Step::Write => {
                let t = Instant::now();
                if let Err(e) = file.write_all(text.as_bytes()) {
                    warn!(path = %path.display(), error = %e, "Moves no longer kept fast");
                    return;
                }
                // The first write after a quiet spell finds the lock cold by nature.
                if !woken {
                    period = adapt(period, t.elapsed(), &mut streak);
                }
                woken = false;
                std::thread::sleep(period);
            }
            Step::Sleep => {
                std::thread::park();
                woken = true;
            }
        }
    }
}

fn open_and_write(path: &Path, pid: u32) -> std::io::Result<File> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(pid.to_string().as_bytes())?;
    Ok(f)
}

/// The `cgroup.procs` files of the cgroups a process is in (`own`: its
/// `/proc/<pid>/cgroup`), the cgroup2 one first.
fn candidates(m: &Mounts, own: &str) -> Vec<PathBuf> {
    let lines = parse_proc_cgroup(own);
    let under = |mount: &Path, p: &str| mount.join(p.trim_start_matches('/')).join("cgroup.procs");
    let mut out = Vec::new();
    if let Some(u) = &m.unified
        && let Some((_, _, p)) = lines.iter().find(|(id, c, _)| *id == 0 && c.is_empty())
    {
        out.push(under(u, p));
    }
    for (ctrls, mount) in &m.v1 {
        if let Some((_, _, p)) = lines.iter().find(|(id, c, _)| *id != 0 && c == ctrls) {
            out.push(under(mount, p));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_writes_only_while_armed() {
        assert_eq!(step(0, 0), Step::Sleep, "never armed");
        assert_eq!(step(100, 30_100), Step::Write);
        assert_eq!(step(30_099, 30_100), Step::Write);
        assert_eq!(step(30_100, 30_100), Step::Sleep, "the window passed");
    }

    #[test]
    fn the_period_halves_after_a_cold_write_and_creeps_back() {
        let ms = Duration::from_millis;
        let mut streak = 0;
        let mut p = adapt(PERIOD, ms(6), &mut streak);
        assert_eq!(p, Duration::from_micros(2500));
        p = adapt(adapt(p, ms(6), &mut streak), ms(9), &mut streak);
        assert_eq!(p, MIN_PERIOD, "never below the minimum");
        for _ in 0..STREAK - 1 {
            p = adapt(p, Duration::from_micros(30), &mut streak);
        }
        assert_eq!(p, MIN_PERIOD);
        p = adapt(p, Duration::from_micros(30), &mut streak);
        assert_eq!(p, ms(2), "a millisecond more after {STREAK} warm writes");
        for _ in 0..STREAK * 20 {
            p = adapt(p, Duration::from_micros(30), &mut streak);
        }
        assert_eq!(p, MAX_PERIOD, "never above the maximum");
    }

    #[test]
    fn the_files_are_the_processes_own_cgroups_cgroup2_first() {
        let m = Mounts {
            unified: Some("/sys/fs/cgroup/unified".into()),
            v1: vec![
                ("cpu".into(), "/sys/fs/cgroup/cpu".into()),
                ("memory".into(), "/sys/fs/cgroup/memory".into()),
                ("pids".into(), "/sys/fs/cgroup/pids".into()),
            ],
            favordynmods: false,
        };
        let own = "5:memory:/system.slice/umbra.service\n3:cpu:/\n0::/system.slice/umbra.service\n";
        assert_eq!(
            candidates(&m, own),
            [
                "/sys/fs/cgroup/unified/system.slice/umbra.service/cgroup.procs",
                "/sys/fs/cgroup/cpu/cgroup.procs",
                "/sys/fs/cgroup/memory/system.slice/umbra.service/cgroup.procs",
            ]
            .map(PathBuf::from)
        );
        let v2_only = Mounts {
            unified: Some("/sys/fs/cgroup".into()),
            ..Mounts::default()
        };
        assert_eq!(
            candidates(&v2_only, "0::/\n"),
            [PathBuf::from("/sys/fs/cgroup/cgroup.procs")]
        );
        assert!(candidates(&Mounts::default(), own).is_empty());
    }

    #[test]
    fn a_file_that_refuses_the_write_is_named() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("gone").join("cgroup.procs");
        let e = open_and_write(&missing, 1).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
