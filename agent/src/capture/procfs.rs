//! What `/proc` adds to the kernel's counters: names of processes first seen without an
//! exec event, a starting RSS for processes that have not touched memory since attach,
//! and whether a process is still there.

use std::{fs, path::Path};

use super::types::Memory;

pub fn comm(tgid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{tgid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

pub fn exe(tgid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{tgid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// `/proc/<pid>/cmdline`: the arguments, NUL-separated (what the process shows now, which
/// may differ from what it was started with).
pub fn cmdline(pid: u32) -> Option<Vec<u8>> {
    fs::read(format!("/proc/{pid}/cmdline")).ok()
}

/// The executable's path as bytes (not necessarily UTF-8).
pub fn exe_bytes(pid: u32) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStringExt;
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.into_os_string().into_vec())
}

/// When a process started, boot-clock ns (`/proc/<pid>/stat`'s start time: clock-tick
/// resolution).
pub fn start_ns(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    // Fields after the command: state is the 3rd of the line, starttime the 22nd.
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    Some(ticks.saturating_mul(1_000_000_000 / clock_ticks().max(1)))
}

/// Whether the process `tgid` that started at `start_ns` (boot-clock ns; 0: any) lives:
/// not merely a process that took its tgid since.
pub fn alive_key(tgid: u32, start_ns: u64) -> bool {
    if start_ns == 0 {
        return alive(tgid);
    }
    match start_ns_of(tgid) {
        Some(s) => s.abs_diff(start_ns) <= 2 * (1_000_000_000 / clock_ticks().max(1)),
        None => false,
    }
}

fn start_ns_of(tgid: u32) -> Option<u64> {
    start_ns(tgid)
}

pub fn alive(tgid: u32) -> bool {
    Path::new(&format!("/proc/{tgid}")).exists()
}

/// Parent tgid from `/proc/<tgid>/status`.
pub fn ppid(tgid: u32) -> Option<u32> {
    status_field(tgid, "PPid:")
}

/// A thread's on-CPU time so far, ns: the scheduler's own count, brought up to date for a
/// thread running now (the first field of `/proc/<tid>/schedstat`).
pub fn runtime_ns(tid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{tid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Thread-group id of a thread, from `/proc/<tid>/status`.
pub fn tgid_of(tid: u32) -> Option<u32> {
    status_field(tid, "Tgid:")
}

fn status_field(pid: u32, key: &str) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// RSS by kind from `/proc/<tgid>/status` (kB there, bytes here).
pub fn memory(tgid: u32) -> Option<Memory> {
    let s = fs::read_to_string(format!("/proc/{tgid}/status")).ok()?;
    Some(parse_status_memory(&s))
}

pub fn parse_status_memory(status: &str) -> Memory {
    let kb = |key: &str| kb_field(status, key);
    Memory {
        file: kb("RssFile:"),
        anon: kb("RssAnon:"),
        shmem: kb("RssShmem:"),
        swap: kb("VmSwap:"),
    }
}

/// A `Key:  N kB` line of a /proc file, in bytes (0 when absent).
fn kb_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Boot-clock now, in ns: the clock of `bpf_ktime_get_boot_ns`.
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// Monotonic now, in ns: the clock of `bpf_ktime_get_ns`.
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks exist on every supported kernel.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall clock now, ms since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_memory_is_in_bytes() {
        let m = parse_status_memory(
            "Name:\tx\nVmRSS:\t  300 kB\nRssAnon:\t 100 kB\nRssFile:\t 150 kB\nRssShmem:\t 50 kB\nVmSwap:\t 0 kB\n",
        );
        assert_eq!(m.rss(), 300 * 1024);
        assert_eq!(m.anon, 100 * 1024);
    }

    #[test]
    fn this_process_is_alive_and_named() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(comm(me).is_some());
        assert!(memory(me).map(|m| m.rss() > 0).unwrap_or(false));
    }
}

/// Node-wide counters from `/proc/stat` and `/proc/meminfo`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStats {
    pub cpus: u32,
    /// Busy CPU time over the online CPUs since boot (everything but idle and iowait), ns.
    pub cpu_busy_ns: u64,
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
}

pub fn node_stats() -> NodeStats {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let now = mono_ns();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    parse_node(&stat, &meminfo, clock_ticks(), now)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// `mono_ns` is `CLOCK_MONOTONIC` when `stat` was read. Busy time is each online CPU's
/// time since boot less its idle and iowait time, which the kernel measures exactly
/// (`get_cpu_idle_time_us`, on tickless kernels), rather than the sum of the busy fields,
/// which are counted a tick at a time: under a fork/exec storm the CPUs go idle many times
/// a tick and those fields read 4–8% low (measured). Where the idle time cannot be
/// trusted to be exact (it exceeds the time since boot), the busy fields are used.
pub fn parse_node(stat: &str, meminfo: &str, hz: u64, mono_ns: u64) -> NodeStats {
    let mut n = NodeStats::default();
    let tick_ns = 1_000_000_000 / hz.max(1);
    let fields = |rest: &str| -> Vec<u64> {
        rest.split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy_of = |v: &[u64]| -> u64 {
        [0, 1, 2, 5, 6, 7]
            .iter()
            .filter_map(|&i| v.get(i))
            .sum::<u64>()
            * tick_ns
    };
    let (mut ticked, mut exact, mut exact_ok) = (0u64, 0u64, true);
    for l in stat.lines() {
        if let Some(rest) = l.strip_prefix("cpu ") {
            ticked = busy_of(&fields(rest));
        } else if let Some(rest) = l.strip_prefix("cpu") {
            let Some((_, rest)) = rest.split_once(' ') else {
                continue;
            };
            n.cpus += 1;
            let v = fields(rest);
            let idle = (v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0)) * tick_ns;
            match mono_ns.checked_sub(idle) {
                Some(b) => exact += b,
                None => exact_ok = false,
            }
        }
    }
    n.cpu_busy_ns = if exact_ok && n.cpus > 0 && mono_ns > 0 {
        exact
    } else {
        ticked
    };
    let kb = |key: &str| kb_field(meminfo, key);
    n.mem_total_bytes = kb("MemTotal:");
    n.mem_available_bytes = kb("MemAvailable:");
    n
}

#[cfg(test)]
mod node_tests {
    use super::*;

    #[test]
    fn busy_time_excludes_idle_and_iowait() {
        let stat = "cpu  100 10 50 1000 7 3 2 1 0 0\ncpu0 50 5 25 500 3 1 1 0 0 0\ncpu1 50 5 25 500 4 2 1 1 0 0\nintr 0\n";
        let mem = "MemTotal: 1000 kB\nMemAvailable: 400 kB\n";
        // 20 s since boot: each CPU's time less its idle and iowait.
        let n = parse_node(stat, mem, 100, 20_000_000_000);
        assert_eq!(n.cpus, 2);
        assert_eq!(
            n.cpu_busy_ns,
            (20_000_000_000 - 503 * 10_000_000) + (20_000_000_000 - 504 * 10_000_000)
        );
        // Idle beyond the time since boot is not exact: the busy fields, tick-counted.
        let n = parse_node(stat, mem, 100, 1_000_000_000);
        assert_eq!(n.cpu_busy_ns, (100 + 10 + 50 + 3 + 2 + 1) * 10_000_000);
        assert_eq!(n.mem_total_bytes, 1000 * 1024);
        assert_eq!(n.mem_available_bytes, 400 * 1024);
    }
}
