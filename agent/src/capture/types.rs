//! Plain values of the capture stage: what every later stage consumes, free of aya.

use std::sync::Arc;

use agent_common::{
    DROP_KINDS, Drop, HIST_BUCKETS, ProcStats, RSS_ANON, RSS_FILE, RSS_SHMEM, RSS_SWAP, prog,
};
use serde::{Deserialize, Serialize};

/// A log2 histogram of nanoseconds: bucket `i` counts values in `[2^i, 2^(i+1))`.
pub type Histogram = [u32; HIST_BUCKETS];

/// Counters of one process since the kernel first saw it. They only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcCounters {
    pub cpu_ns: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub runq_wait_ns: u64,
    pub runq_waits: u64,
    pub page_faults: u64,
    pub syscalls: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_calls: u64,
    pub write_calls: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub block_ios: u64,
    pub net_tx_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_calls: u64,
    pub net_rx_calls: u64,
    pub conn_opened: u64,
    pub conn_accepted: u64,
    pub conn_closed: u64,
    pub retransmits: u64,
    pub execs: u64,
    pub runq_hist: Histogram,
    pub block_hist: Histogram,
}

macro_rules! each_counter {
    ($m:ident) => {
        $m!(
            cpu_ns,
            voluntary_switches,
            involuntary_switches,
            runq_wait_ns,
            runq_waits,
            page_faults,
            syscalls,
            read_bytes,
            write_bytes,
            read_calls,
            write_calls,
            block_read_bytes,
            block_write_bytes,
            block_ios,
            net_tx_bytes,
            net_rx_bytes,
            net_tx_calls,
            net_rx_calls,
            conn_opened,
            conn_accepted,
            conn_closed,
            retransmits,
            execs
        )
    };
}

impl ProcCounters {
    pub fn from_kernel(s: &ProcStats) -> Self {
        macro_rules! copy {
            ($($f:ident),*) => { ProcCounters { $($f: s.$f,)* runq_hist: s.runq_hist, block_hist: s.block_hist } };
        }
        each_counter!(copy)
    }

    /// What happened between `prev` and `self` (counters of the same process).
    pub fn since(&self, prev: &ProcCounters) -> ProcCounters {
        let mut runq_hist = [0; HIST_BUCKETS];
        let mut block_hist = [0; HIST_BUCKETS];
        // Kernel histogram buckets are u32 and wrap: the delta is modulo 2^32.
        for i in 0..HIST_BUCKETS {
            runq_hist[i] = self.runq_hist[i].wrapping_sub(prev.runq_hist[i]);
            block_hist[i] = self.block_hist[i].wrapping_sub(prev.block_hist[i]);
        }
        macro_rules! sub {
            ($($f:ident),*) => { ProcCounters { $($f: self.$f.saturating_sub(prev.$f),)* runq_hist, block_hist } };
        }
        each_counter!(sub)
    }

    /// Adds what happened between `prev` and `now` into `self`: [`since`](Self::since)
    /// and [`add`](Self::add) in one pass, the aggregate stage's per-process hot path.
    pub fn add_since(&mut self, now: &ProcCounters, prev: &ProcCounters) {
        macro_rules! step {
            ($($f:ident),*) => { $(
                self.$f = self.$f.saturating_add(now.$f.saturating_sub(prev.$f));
            )* };
        }
        each_counter!(step);
        hist_add_since(&mut self.runq_hist, &now.runq_hist, &prev.runq_hist);
        hist_add_since(&mut self.block_hist, &now.block_hist, &prev.block_hist);
    }

    /// Raises every counter to at least `floor`'s (histograms excepted): counters never
    /// go back, even where two reads of the kernel's accounting overlap.
    pub fn raise_to(&mut self, floor: &ProcCounters) {
        macro_rules! raise {
            ($($f:ident),*) => { $(self.$f = self.$f.max(floor.$f);)* };
        }
        each_counter!(raise);
    }

    /// Adds `other` into `self` (for totals over processes).
    pub fn add(&mut self, other: &ProcCounters) {
        macro_rules! plus {
            ($($f:ident),*) => { $(self.$f = self.$f.saturating_add(other.$f);)* };
        }
        each_counter!(plus);
        for i in 0..HIST_BUCKETS {
            self.runq_hist[i] = self.runq_hist[i].saturating_add(other.runq_hist[i]);
            self.block_hist[i] = self.block_hist[i].saturating_add(other.block_hist[i]);
        }
    }
}

/// `acc += now - prev` for one histogram. Most intervals leave most of a process's
/// histograms unchanged (no block I/O, no run-queue wait): one compare skips them.
fn hist_add_since(acc: &mut Histogram, now: &Histogram, prev: &Histogram) {
    // Lane-wise, so it vectorises (`==` on the arrays is a `memcmp` call).
    let changed = now.iter().zip(prev.iter()).fold(0, |c, (n, p)| c | (n ^ p));
    if changed == 0 {
        return;
    }
    // Kernel histogram buckets are u32 counters that wrap: the delta is modulo 2^32, and
    // one interval's sum over a workload stays far below 2^32. Plain lane-wise arithmetic
    // that vectorises.
    for i in 0..HIST_BUCKETS {
        acc[i] = acc[i].wrapping_add(now[i].wrapping_sub(prev[i]));
    }
}

/// A quantile of a log2 histogram, as the upper bound of the bucket that holds it (ns).
pub fn hist_quantile(h: &Histogram, q: f64) -> Option<u64> {
    let total: u64 = h.iter().map(|&c| c as u64).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0u64;
    for (i, &c) in h.iter().enumerate() {
        seen += c as u64;
        if seen >= rank {
            return Some(1u64 << (i + 1).min(63));
        }
    }
    Some(1u64 << HIST_BUCKETS)
}

/// Resident memory of a process, bytes, as the kernel's `rss_stat` last reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub file: u64,
    pub anon: u64,
    pub shmem: u64,
    pub swap: u64,
}

impl Memory {
    pub fn from_kernel(s: &ProcStats) -> Self {
        let b = |i: usize| s.rss[i].max(0) as u64;
        Memory {
            file: b(RSS_FILE),
            anon: b(RSS_ANON),
            shmem: b(RSS_SHMEM),
            swap: b(RSS_SWAP),
        }
    }

    /// Resident set size: what `VmRSS` reports (file + anon + shmem).
    pub fn rss(&self) -> u64 {
        self.file + self.anon + self.shmem
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// As `wait(2)` reports it; `None` when the kernel could not say (no BTF, or the
    /// process vanished without an exit event).
    pub code: Option<i32>,
    pub timestamp_ns: u64,
}

/// One process at one tick. `(tgid, start_ns)` identifies a process: a reused tgid gets a
/// new `start_ns`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSample {
    pub tgid: u32,
    /// Boot-clock ns when the kernel first saw the process.
    pub start_ns: u64,
    pub ppid: Option<u32>,
    pub cgroup_id: u64,
    /// The names are shared with the capture's own record of the process (a tick is
    /// made for every process every second: copying them was most of its allocations).
    pub comm: Arc<str>,
    /// Path of the executable, from the exec event or `/proc/<pid>/exe`.
    pub exe: Option<Arc<str>>,
    /// `sha256:<hex>` of the executable: the same binary has the same key on every node.
    pub exe_hash: Option<Arc<str>>,
    /// Path of the process's cgroup v2 directory below the cgroup2 root.
    pub cgroup: Option<Arc<str>>,
    /// What an interpreter runs (its script or main module), when the executable is a
    /// known interpreter: the workload key under executable grouping (format 3 on).
    pub app: Option<Arc<AppKey>>,
    /// Shared with the capture's record of the process: a process that did not change
    /// since its last sample is given the same counters (`Arc::ptr_eq`), which spares a
    /// copy each tick and tells consumers that nothing happened.
    pub counters: Arc<ProcCounters>,
    pub memory: Memory,
    /// Set on the process's final sample; the process is not reported again.
    pub exit: Option<Exit>,
}

/// The program an interpreter runs, as a workload: every Python, Node, Java or shell
/// program would otherwise be one workload, its interpreter's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppKey {
    /// `script:sha256:<hex>` (the script's fingerprint, made as an executable's is),
    /// `script:path:<path>` (a script that could not be read), or
    /// `module:<interpreter>:<name>` (`python -m`, a Java main class or module).
    pub key: String,
    /// For people: the script's file name, or the module.
    pub name: String,
}

/// Exec, fork and exit as they happen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LifecycleKind {
    Exec {
        filename: String,
        /// The new image's arguments (format 3 on; empty in older recordings).
        argv: Argv,
        /// Arguments that named existing regular files at the exec, with their sizes:
        /// a request's input, kept because the file may be gone by replay time.
        inputs: Vec<InputFile>,
    },
    Fork,
    Exit {
        code: Option<i32>,
    },
}

impl LifecycleKind {
    /// An exec of `filename` with nothing known of its arguments.
    pub fn exec(filename: impl Into<String>) -> Self {
        LifecycleKind::Exec {
            filename: filename.into(),
            argv: Argv::default(),
            inputs: Vec::new(),
        }
    }
}

/// A file named in an exec's arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// Index of the argument in `argv` (0 is the program).
    pub arg: u16,
    /// Size in bytes at the exec.
    pub size: u64,
}

/// Where an exec's arguments came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgvSource {
    /// Not known (an older recording, or neither the kernel nor /proc could say).
    #[default]
    None,
    /// Read in the kernel at the exec: exact.
    Kernel,
    /// Read from `/proc/<pid>/cmdline` afterwards (no BTF, or the kernel's read failed): racy,
    /// the process may have changed them or be gone.
    Proc,
}

/// Arguments of an exec: arbitrary bytes (not necessarily UTF-8), each argument followed
/// by NUL, as the kernel holds them. At most [`agent_common::ARGV_LEN`] bytes are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Argv {
    bytes: Vec<u8>,
    /// Bytes the arguments take in all; more than were kept when `truncated`.
    pub total_len: u32,
    pub source: ArgvSource,
}

impl Argv {
    /// From the NUL-separated bytes the kernel or `/proc/<pid>/cmdline` gave, `total_len`
    /// being what the arguments take in all (at least `raw.len()`).
    pub fn from_raw(raw: &[u8], total_len: u32, source: ArgvSource) -> Self {
        let keep = raw.len().min(agent_common::ARGV_LEN);
        Argv {
            bytes: raw[..keep].to_vec(),
            total_len: total_len.max(keep as u32),
            source,
        }
    }

    /// The raw bytes, NUL-separated.
    pub fn raw(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether arguments were cut (the last one kept may be partial).
    pub fn truncated(&self) -> bool {
        self.total_len as usize > self.bytes.len()
    }

    /// The arguments as bytes; a trailing NUL does not make an empty last argument.
    pub fn args(&self) -> impl Iterator<Item = &[u8]> {
        let b = self.bytes.strip_suffix(&[0]).unwrap_or(&self.bytes);
        b.split(|&c| c == 0).filter(move |_| !b.is_empty())
    }

    /// The arguments for people (invalid UTF-8 replaced).
    pub fn lossy(&self) -> Vec<String> {
        self.args()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Recordings (postcard) keep the bytes exactly; JSON shows the arguments as strings.
impl Serialize for Argv {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let human = s.is_human_readable();
        let mut st = s.serialize_struct("Argv", 3)?;
        if human {
            st.serialize_field("args", &self.lossy())?;
            st.serialize_field("truncated", &self.truncated())?;
        } else {
            st.serialize_field("bytes", &self.bytes)?;
            st.serialize_field("total_len", &self.total_len)?;
        }
        st.serialize_field("source", &self.source)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "Argv")]
        struct Raw {
            bytes: Vec<u8>,
            total_len: u32,
            source: ArgvSource,
        }
        #[derive(Deserialize)]
        #[serde(rename = "Argv")]
        struct Human {
            args: Vec<String>,
            #[serde(default)]
            truncated: bool,
            source: ArgvSource,
        }
        if d.is_human_readable() {
            let h = Human::deserialize(d)?;
            let mut bytes = Vec::new();
            for a in &h.args {
                bytes.extend_from_slice(a.as_bytes());
                bytes.push(0);
            }
            let total = bytes.len() as u32 + u32::from(h.truncated);
            Ok(Argv::from_raw(&bytes, total, h.source))
        } else {
            let r = Raw::deserialize(d)?;
            Ok(Argv::from_raw(&r.bytes, r.total_len, r.source))
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    pub kind: LifecycleKind,
    pub pid: u32,
    /// 0 when the kernel could not tell (fork without BTF).
    pub tgid: u32,
    pub ppid: Option<u32>,
    pub timestamp_ns: u64,
    pub cgroup_id: u64,
    pub comm: String,
}

impl Lifecycle {
    /// An exec event with its arguments (the kernel's read, when it succeeded).
    pub fn from_exec(ev: &agent_common::ExecEvent) -> Option<Self> {
        let mut l = Self::from_kernel(&ev.base)?;
        if ev.base.flags & agent_common::FLAG_NO_ARGV == 0
            && let LifecycleKind::Exec { argv, .. } = &mut l.kind
        {
            let n = (ev.argv_len as usize).min(ev.argv.len());
            *argv = Argv::from_raw(&ev.argv[..n], ev.argv_total, ArgvSource::Kernel);
        }
        Some(l)
    }

    pub fn from_kernel(ev: &agent_common::LifecycleEvent) -> Option<Self> {
        use agent_common::{EVENT_EXEC, EVENT_EXIT, EVENT_FORK, FLAG_PARTIAL};
        let partial = ev.flags & FLAG_PARTIAL != 0;
        let kind = match ev.kind {
            EVENT_EXEC => LifecycleKind::exec(cstr(&ev.filename)),
            EVENT_FORK => LifecycleKind::Fork,
            EVENT_EXIT => LifecycleKind::Exit {
                code: (!partial).then_some(ev.exit_code),
            },
            _ => return None,
        };
        Some(Lifecycle {
            kind,
            pid: ev.pid,
            tgid: ev.tgid,
            ppid: (ev.ppid != 0).then_some(ev.ppid),
            timestamp_ns: ev.timestamp_ns,
            cgroup_id: ev.cgroup_id,
            comm: cstr(&ev.comm),
        })
    }
}

/// A NUL-terminated byte array as a string (lossy).
pub fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Everything the kernel could not record since load, summed over CPUs, per program
/// (index: `agent_common::prog`) and kind (index: [`Drop`]).
///
/// Stored as rows of counters (a row per program, a counter per kind), so that programs
/// and kinds added later extend a recording's table rather than change its layout: rows
/// and counters beyond what this build knows are summed into the last it knows, missing
/// ones are zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts(pub [[u64; DROP_KINDS]; prog::COUNT]);

impl Serialize for DropCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for row in &self.0 {
            seq.serialize_element(&row[..])?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for DropCounts {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let rows: Vec<Vec<u64>> = Vec::deserialize(d)?;
        Ok(DropCounts::from_rows(rows.iter().map(Vec::as_slice)))
    }
}

impl DropCounts {
    /// From rows of any shape: what does not fit is folded into the last program and kind.
    pub fn from_rows<'a>(rows: impl Iterator<Item = &'a [u64]>) -> Self {
        let mut d = DropCounts::default();
        for (p, row) in rows.enumerate() {
            let p = p.min(prog::COUNT - 1);
            for (k, n) in row.iter().enumerate() {
                let k = k.min(DROP_KINDS - 1);
                d.0[p][k] = d.0[p][k].saturating_add(*n);
            }
        }
        d
    }

    /// Drops of kind `d`, all programs.
    pub fn get(&self, d: Drop) -> u64 {
        self.0.iter().map(|p| p[d as usize]).sum()
    }

    /// Non-zero counters as (program, kind, count).
    pub fn by_program(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        self.0.iter().enumerate().flat_map(|(p, kinds)| {
            Drop::ALL
                .iter()
                .map(move |d| (prog::NAMES[p], d.name(), kinds[*d as usize]))
                .filter(|(_, _, n)| *n > 0)
        })
    }

    /// Losses of data: everything but events that could not be attributed to a process
    /// (their owner predates the agent).
    pub fn lost(&self) -> u64 {
        Drop::ALL
            .iter()
            .filter(|d| !matches!(d, Drop::SockOwnerUnknown | Drop::OwnerUnknown))
            .map(|d| self.get(*d))
            .sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Drop::ALL.iter().map(|d| (d.name(), self.get(*d)))
    }
}

/// One interval's worth of samples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    /// Boot-clock ns at the end of the interval (the clock of every kernel timestamp).
    pub timestamp_ns: u64,
    /// Wall clock, ms since the Unix epoch, at the same instant.
    pub wall_ms: u64,
    /// Every live process, and the final sample of each that exited since the last tick.
    /// A process that did not change since the last tick has the same sample as then
    /// (shared: nothing is copied for the processes that sleep through a tick).
    pub samples: Vec<Arc<ProcessSample>>,
    pub drops: DropCounts,
    /// Node-wide counters at the same instant.
    pub node: super::NodeStats,
    /// Pressure stall information of the cgroups the samples are in, where the kernel
    /// has it (`cpu.pressure`, `memory.pressure`, `io.pressure`).
    #[serde(default)]
    pub pressure: Vec<CgroupPressure>,
}

/// `some avg10` of a cgroup's pressure files, percent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CgroupPressure {
    /// Path below the cgroup2 root, as in [`ProcessSample::cgroup`].
    pub cgroup: String,
    pub cpu: Option<f32>,
    pub memory: Option<f32>,
    pub io: Option<f32>,
}

impl Eq for CgroupPressure {}

/// What a [`super::Source`] yields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaptureItem {
    Event(Lifecycle),
    /// Boxed: a tick is large (samples, per-program drops) and comes once per interval.
    Tick(Box<Tick>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_subtracts_and_never_goes_negative() {
        let mut a = ProcCounters {
            cpu_ns: 10,
            read_bytes: 5,
            ..Default::default()
        };
        a.runq_hist[3] = 2;
        let mut b = a.clone();
        b.cpu_ns = 25;
        b.runq_hist[3] = 5;
        let d = b.since(&a);
        assert_eq!(d.cpu_ns, 15);
        assert_eq!(d.read_bytes, 0);
        assert_eq!(d.runq_hist[3], 3);
        assert_eq!(a.since(&b).cpu_ns, 0);
    }

    #[test]
    fn add_since_is_since_then_add() {
        let mut prev = ProcCounters {
            cpu_ns: 10,
            write_bytes: 7,
            ..Default::default()
        };
        prev.block_hist[4] = 9;
        let mut now = prev.clone();
        now.cpu_ns = 40;
        now.write_bytes = 3; // went backwards: never a negative delta
        now.runq_hist[1] = 6;
        now.block_hist[4] = 11;
        let mut acc = ProcCounters {
            cpu_ns: 1,
            ..Default::default()
        };
        acc.block_hist[4] = 1;
        let mut expected = acc.clone();
        expected.add(&now.since(&prev));
        acc.add_since(&now, &prev);
        assert_eq!(acc, expected);
        assert_eq!(acc.cpu_ns, 31);
        assert_eq!(acc.block_hist[4], 3);
    }

    /// Kernel histogram buckets are u32 and wrap: a bucket that passed 2^32 in the
    /// interval still gives its true delta.
    #[test]
    fn histogram_deltas_tolerate_u32_wrap() {
        let mut prev = ProcCounters::default();
        prev.runq_hist[3] = u32::MAX - 1;
        prev.block_hist[7] = u32::MAX;
        let mut now = prev.clone();
        now.runq_hist[3] = 3;
        now.block_hist[7] = 0;
        assert_eq!(now.since(&prev).runq_hist[3], 5);
        assert_eq!(now.since(&prev).block_hist[7], 1);
        let mut acc = ProcCounters::default();
        acc.add_since(&now, &prev);
        assert_eq!(acc.runq_hist[3], 5);
        assert_eq!(acc.block_hist[7], 1);
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let mut h = [0u32; HIST_BUCKETS];
        assert_eq!(hist_quantile(&h, 0.5), None);
        h[10] = 99;
        h[20] = 1;
        assert_eq!(hist_quantile(&h, 0.5), Some(1 << 11));
        assert_eq!(hist_quantile(&h, 0.99), Some(1 << 11));
        assert_eq!(hist_quantile(&h, 1.0), Some(1 << 21));
    }

    #[test]
    fn cstr_stops_at_nul() {
        assert_eq!(cstr(b"true\0\0junk"), "true");
        assert_eq!(cstr(b"full"), "full");
    }
}
