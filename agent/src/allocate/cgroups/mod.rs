//! The cgroup filesystem behind one trait, [`Cgroups`], with three implementations:
//! cgroup v2 ([`V2`]), cgroup v1 ([`V1`], with a cgroup2 mirror on hybrid hosts for PSI,
//! freezing and `cgroup_skb`), and a temp-dir fake ([`Fake`]) that behaves like the kernel
//! (defaults, refused values, moves, injected faults) for unit tests. [`detect`] picks the
//! real one at start.
//!
//! A [`Group`] is a path below the hierarchy root (`umbra.slice/w-nginx-1a2b/base`); the
//! same path names the group in every v1 controller. Each [`Knob`] is read and written as
//! the backend's raw text (so the journal can put back exactly what was there) or as a
//! typed [`Value`].

mod fake;
mod v1;
mod v2;

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

pub use fake::Fake;
use serde::{Deserialize, Serialize};
pub use v1::V1;
pub use v2::V2;

/// The CFS period Umbra writes (µs): quotas are per 100 ms, the kernel's default.
pub const CPU_PERIOD_US: u64 = 100_000;

/// A cgroup, as a path below the hierarchy root ("" is the root itself). Components are
/// plain names: no `.`/`..`, no `/` inside, never empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Group(String);

impl Group {
    pub const ROOT: Group = Group(String::new());

    /// A group from a relative path; `None` when a component is not a plain name.
    pub fn new(path: &str) -> Option<Group> {
        let path = path.trim_matches('/');
        if path.is_empty() {
            return Some(Group::ROOT);
        }
        path.split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
            .then(|| Group(path.to_string()))
    }

    /// A child of this group; `name` must be a plain name (see [`dir_name`]).
    pub fn child(&self, name: &str) -> Group {
        debug_assert!(!name.is_empty() && !name.contains('/') && name != "." && name != "..");
        if self.0.is_empty() {
            Group(name.to_string())
        } else {
            Group(format!("{}/{name}", self.0))
        }
    }

    pub fn parent(&self) -> Option<Group> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.rsplit_once('/') {
            Some((p, _)) => Group(p.to_string()),
            None => Group::ROOT,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `self` is `other` or below it.
    pub fn is_within(&self, other: &Group) -> bool {
        other.0.is_empty()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// Whether `self` is a strict ancestor of `other`.
    pub fn is_ancestor_of(&self, other: &Group) -> bool {
        self != other && other.is_within(self)
    }

    /// The directory of this group below `root`.
    pub fn dir(&self, root: &Path) -> PathBuf {
        if self.0.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&self.0)
        }
    }

    /// The name of the last component.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

/// A directory name made from any text (a workload's name may be non-ASCII, even
/// non-UTF-8 lossily decoded): ASCII letters, digits, `-`, `_` and `.` kept, the rest
/// `_`, at most 40 bytes, never `.`/`..`/empty.
pub fn dir_name(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        s = format!("_{s}");
    }
    s
}

/// A setting of a cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Knob {
    /// CPU bandwidth: quota µs per [`CPU_PERIOD_US`] (v2 `cpu.max`, v1 `cpu.cfs_quota_us`).
    CpuMax,
    /// CPU weight, 1–10000, default 100 (v2 `cpu.weight`, v1 `cpu.shares` × 100 / 1024).
    CpuWeight,
    /// Protected memory, bytes (v2 `memory.min`; v1 has none).
    MemoryMin,
    /// Best-effort protected memory, bytes (v2 `memory.low`; v1 has none).
    MemoryLow,
    /// Reclaim above this, bytes (v2 `memory.high`; v1 `memory.soft_limit_in_bytes`,
    /// which reclaims down to it under memory pressure).
    MemoryHigh,
    /// Hard limit, bytes (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    MemoryMax,
    /// I/O weight, 1–10000, default 100 (v2 `io.weight`; v1 `blkio.bfq.weight` 1–1000).
    IoWeight,
    /// Controllers enabled for the children (v2 `cgroup.subtree_control`): raw text is the
    /// enabled controllers, space-separated.
    SubtreeControl,
}

impl Knob {
    /// The settings a reservation can carry (not [`Knob::SubtreeControl`]).
    pub const SETTINGS: [Knob; 7] = [
        Knob::CpuMax,
        Knob::CpuWeight,
        Knob::MemoryMin,
        Knob::MemoryLow,
        Knob::MemoryHigh,
        Knob::MemoryMax,
        Knob::IoWeight,
    ];

    /// The cgroup v2 file name (the knob's name in explanations).
    pub const fn name(self) -> &'static str {
        match self {
            Knob::CpuMax => "cpu.max",
            Knob::CpuWeight => "cpu.weight",
            Knob::MemoryMin => "memory.min",
            Knob::MemoryLow => "memory.low",
            Knob::MemoryHigh => "memory.high",
            Knob::MemoryMax => "memory.max",
            Knob::IoWeight => "io.weight",
            Knob::SubtreeControl => "cgroup.subtree_control",
        }
    }

    /// The value a fresh group has.
    pub const fn default_value(self) -> Value {
        match self {
            Knob::CpuMax | Knob::MemoryHigh | Knob::MemoryMax => Value::Max,
            Knob::CpuWeight | Knob::IoWeight => Value::Amount(100),
            Knob::MemoryMin | Knob::MemoryLow | Knob::SubtreeControl => Value::Amount(0),
        }
    }

    /// Whether a value of this knob is in bytes.
    pub const fn is_memory(self) -> bool {
        matches!(
            self,
            Knob::MemoryMin | Knob::MemoryLow | Knob::MemoryHigh | Knob::MemoryMax
        )
    }
}

impl fmt::Display for Knob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A knob's value: bytes (memory), µs of quota per period (`cpu.max`), a weight — or no
/// limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Amount(u64),
    Max,
}

impl Value {
    pub fn amount(self) -> Option<u64> {
        match self {
            Value::Amount(a) => Some(a),
            Value::Max => None,
        }
    }

    /// CPU cores of a `cpu.max` value.
    pub fn cores(self) -> Option<f64> {
        self.amount().map(|q| q as f64 / CPU_PERIOD_US as f64)
    }

    /// A `cpu.max` value for `cores`.
    pub fn of_cores(cores: f64) -> Value {
        Value::Amount((cores.max(0.0) * CPU_PERIOD_US as f64).round() as u64)
    }

    /// How it reads for people: `max`, `1.50 cores`, `512.0 MiB`, `weight 250`.
    pub fn show(self, knob: Knob) -> String {
        match (self, knob) {
            (Value::Max, _) => "max".into(),
            (Value::Amount(q), Knob::CpuMax) => {
                format!("{:.2} cores", q as f64 / CPU_PERIOD_US as f64)
            }
            (Value::Amount(b), k) if k.is_memory() => crate::trace::bytes(b),
            (Value::Amount(w), _) => format!("{w}"),
        }
    }
}

/// Which implementation is behind a [`Cgroups`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    V2,
    V1,
    Fake,
}

impl Backend {
    pub const fn name(self) -> &'static str {
        match self {
            Backend::V2 => "cgroup v2",
            Backend::V1 => "cgroup v1",
            Backend::Fake => "fake",
        }
    }
}

/// Where a process is, per hierarchy: what `/proc/<pid>/cgroup` says, as directories. Moving
/// a process back means writing it to each of these.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// (hierarchy key: `unified` or the v1 mount's controllers, e.g. `cpu`; directory)
    pub dirs: Vec<(String, PathBuf)>,
}

/// What a managed group reports each tick (its own counters, cumulative).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupStats {
    /// Memory in use, bytes (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub memory_bytes: Option<u64>,
    /// CPU used, µs (`cpu.stat` `usage_usec`, v1 `cpuacct.usage` / 1000).
    pub cpu_usage_us: Option<u64>,
    /// Periods throttled and time throttled (`cpu.stat`).
    pub nr_throttled: u64,
    pub throttled_us: u64,
    /// `memory.events`: `high`, `max`, `oom`, `oom_kill` (v1: `memory.failcnt` as `max`,
    /// `memory.oom_control` `oom_kill`).
    pub memory_high_events: u64,
    pub memory_max_events: u64,
    pub oom: u64,
    pub oom_kill: u64,
    /// PSI `some total` (µs) where the group has pressure files.
    pub cpu_pressure_us: Option<u64>,
    pub memory_pressure_us: Option<u64>,
    pub io_pressure_us: Option<u64>,
}

/// How a process started by Umbra is put into its group before its first instruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecTarget {
    /// cgroup v2: `clone3` with `CLONE_INTO_CGROUP` and a descriptor of this directory.
    Clone3 { dir: PathBuf },
    /// cgroup v1 (and a cgroup2 mirror): the child writes its own pid to each of these
    /// `cgroup.procs` files before `exec`.
    WriteOwnPid { procs: Vec<PathBuf> },
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot {op} {path}: {source}{}", hint(source))]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {path}: {source}{}", hint(source))]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: unexpected content {text:?}: {expected}")]
    Parse {
        path: PathBuf,
        text: String,
        expected: &'static str,
    },
    #[error("{knob} is not available on {backend}{}", .why.as_deref().map(|w| format!(": {w}")).unwrap_or_default())]
    Unsupported {
        knob: Knob,
        backend: &'static str,
        why: Option<String>,
    },
    #[error("no cgroup hierarchy to manage: {0}")]
    NotFound(String),
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => " (the group or process is gone)",
        Some(libc::EROFS) => " (the cgroup filesystem is read-only)",
        Some(libc::EACCES) | Some(libc::EPERM) => " (needs root, or a delegated subtree)",
        Some(libc::EBUSY) => " (the kernel refused: busy)",
        Some(libc::EINVAL) => " (the kernel refused the value)",
        Some(libc::ENOSPC) => {
            " (the kernel refused: no space, e.g. a controller not enabled above)"
        }
        _ => "",
    }
}

impl CgroupError {
    /// The errno behind it, if it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            CgroupError::Io { source, .. } | CgroupError::Write { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }

    /// The group or process vanished (not a fault of Umbra's).
    pub fn is_gone(&self) -> bool {
        matches!(self.errno(), Some(libc::ENOENT) | Some(libc::ESRCH))
    }
}

pub type Result<T> = std::result::Result<T, CgroupError>;

/// The cgroup filesystem. Every method takes a [`Group`] below the hierarchy root; callers
/// (the journaled applier) keep writes inside the owned subtree.
pub trait Cgroups: Send {
    fn backend(&self) -> Backend;
    /// The hierarchy roots, for logs (e.g. `/sys/fs/cgroup` or `/sys/fs/cgroup/{cpu,memory}`).
    fn describe(&self) -> String;
    /// Whether this backend can set `knob` at all.
    fn supports(&self, knob: Knob) -> bool;
    fn exists(&self, g: &Group) -> bool;
    /// Makes the group (its parent must exist) in every hierarchy; `false` when it was
    /// already there.
    fn create(&mut self, g: &Group) -> Result<bool>;
    /// Removes an empty group (a missing one is fine).
    fn remove(&mut self, g: &Group) -> Result<()>;
    /// The knob's raw text, as [`write_raw`](Self::write_raw) takes it back.
    fn read_raw(&self, g: &Group, knob: Knob) -> Result<String>;
    fn write_raw(&mut self, g: &Group, knob: Knob, raw: &str) -> Result<()>;
    fn parse(&self, knob: Knob, raw: &str) -> Option<Value>;
    fn encode(&self, knob: Knob, v: Value) -> String;
    /// Processes (tgids) in the group itself.
    fn procs(&self, g: &Group) -> Result<Vec<u32>>;
    /// Moves a process (all its threads) into the group, in every hierarchy.
    fn place(&mut self, g: &Group, pid: u32) -> Result<()>;
    /// Where a process is now.
    fn placement(&self, pid: u32) -> Result<Placement>;
    /// Moves a process back where it was.
    fn put_back(&mut self, pid: u32, to: &Placement) -> Result<()>;
    fn can_freeze(&self) -> bool;
    fn freeze(&mut self, g: &Group, frozen: bool) -> Result<()>;
    fn frozen(&self, g: &Group) -> Result<bool>;
    fn stats(&self, g: &Group) -> Result<GroupStats>;
    /// How `umbra exec` starts a process inside the group.
    fn exec_target(&self, g: &Group) -> Result<ExecTarget>;
    /// The group's cgroup2 directory (for `cgroup_skb`), where there is one.
    fn cgroup2_dir(&self, g: &Group) -> Option<PathBuf>;
    /// The group's directory in every hierarchy, keyed as [`Placement`] keys them.
    fn dirs(&self, g: &Group) -> Placement;

    fn read(&self, g: &Group, knob: Knob) -> Result<Value> {
        let raw = self.read_raw(g, knob)?;
        self.parse(knob, &raw).ok_or_else(|| CgroupError::Parse {
            path: PathBuf::from(format!("{}{}", g, knob.name())),
            text: raw,
            expected: "a number or max",
        })
    }

    fn write(&mut self, g: &Group, knob: Knob, v: Value) -> Result<()> {
        let raw = self.encode(knob, v);
        self.write_raw(g, knob, &raw)
    }
}

// ---- helpers shared by the backends ----

pub(crate) fn read_file(path: &Path) -> Result<String> {
    fs::read_to_string(path)
        .map(|s| s.trim_end().to_string())
        .map_err(|source| CgroupError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })
}

/// One `write(2)` of `value` (cgroup files take one value per write).
pub(crate) fn write_file(path: &Path, value: &str) -> Result<()> {
    use std::io::Write as _;
    let r = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    r.map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

pub(crate) fn mkdir(path: &Path) -> Result<bool> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Io {
            op: "create",
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn rmdir(path: &Path) -> Result<()> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Io {
            op: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn parse_procs(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .filter_map(|l| l.parse().ok())
        .collect()
}

/// `key value` lines (`cpu.stat`, `memory.events`): the value of `key`.
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `total=` of the `some` line of a PSI file, µs.
pub fn pressure_some_total(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Reads a PSI file of a group directory, if it has one.
pub(crate) fn pressure(dir: &Path, file: &str) -> Option<u64> {
    fs::read_to_string(dir.join(file))
        .ok()
        .and_then(|t| pressure_some_total(&t))
}

/// `/proc/<pid>/cgroup`: (hierarchy id, controllers, path) per line.
pub fn proc_cgroups(pid: u32) -> Result<Vec<(u32, String, String)>> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = read_file(&path)?;
    Ok(parse_proc_cgroup(&text))
}

pub fn parse_proc_cgroup(text: &str) -> Vec<(u32, String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let id = it.next()?.parse().ok()?;
            let ctrls = it.next()?.to_string();
            let path = it.next()?.to_string();
            Some((id, ctrls, path))
        })
        .collect()
}

/// The cgroup mounts of this machine, from `/proc/self/mountinfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mounts {
    /// The cgroup2 mount point.
    pub unified: Option<PathBuf>,
    /// v1 hierarchies: (controllers as in `/proc/<pid>/cgroup`, e.g. `cpu,cpuacct`; mount point).
    pub v1: Vec<(String, PathBuf)>,
    /// A hierarchy is mounted with `favordynmods` (the kernel's choice is global): moving
    /// a process does not wait for an RCU grace period (forks and exits pay a little
    /// instead).
    pub favordynmods: bool,
}

impl Mounts {
    pub fn read() -> Mounts {
        Mounts::parse(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    }

    /// Parses mountinfo: `id parent major:minor root mountpoint options - fstype source super`.
    pub fn parse(mountinfo: &str) -> Mounts {
        let mut m = Mounts::default();
        for l in mountinfo.lines() {
            let Some((pre, post)) = l.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split_whitespace().collect();
            let post: Vec<&str> = post.split_whitespace().collect();
            let (Some(point), Some(fstype)) = (pre.get(4), post.first()) else {
                continue;
            };
            // Only mounts of a hierarchy's root (bind mounts of a subdirectory are views).
            if pre.get(3) != Some(&"/") {
                continue;
            }
            let point = PathBuf::from(unescape(point));
            if matches!(*fstype, "cgroup" | "cgroup2")
                && post
                    .get(2)
                    .is_some_and(|o| o.split(',').any(|x| x == "favordynmods"))
            {
                m.favordynmods = true;
            }
            match *fstype {
                "cgroup2" if m.unified.is_none() => m.unified = Some(point),
                "cgroup" => {
                    let opts = post.get(2).copied().unwrap_or("");
                    let ctrls: Vec<&str> = opts
                        .split(',')
                        .filter(|o| V1::CONTROLLERS.contains(o) || o.starts_with("name="))
                        .collect();
                    if !ctrls.is_empty() && !m.v1.iter().any(|(_, p)| *p == point) {
                        m.v1.push((ctrls.join(","), point));
                    }
                }
                _ => {}
            }
        }
        m
    }

    /// The v1 mount holding `controller`.
    pub fn v1_of(&self, controller: &str) -> Option<&(String, PathBuf)> {
        self.v1
            .iter()
            .find(|(c, _)| c.split(',').any(|x| x == controller))
    }
}

/// Octal escapes of mountinfo (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Which backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefer {
    /// cgroup v2 where its mount offers the cpu and memory controllers, else v1.
    #[default]
    Auto,
    V2,
    V1,
}

/// Picks the backend for this machine: cgroup v2 where the cgroup2 root offers `cpu` and
/// `memory`, else v1 (with the cgroup2 mount, if any, as a mirror for PSI, freezing and
/// `cgroup_skb`).
pub fn detect(prefer: Prefer) -> Result<Box<dyn Cgroups>> {
    let mounts = Mounts::read();
    let v2_ready = mounts.unified.as_deref().is_some_and(|u| {
        let c = fs::read_to_string(u.join("cgroup.controllers")).unwrap_or_default();
        ["cpu", "memory"]
            .iter()
            .all(|x| c.split_whitespace().any(|y| y == *x))
    });
    let v1_ready = mounts.v1_of("cpu").is_some() && mounts.v1_of("memory").is_some();
    match (prefer, v2_ready, v1_ready) {
        (Prefer::Auto | Prefer::V2, true, _) => {
            let root = mounts.unified.clone().unwrap_or_default();
            Ok(Box::new(V2::new(root)))
        }
        (Prefer::Auto | Prefer::V1, _, true) => Ok(Box::new(V1::new(&mounts))),
        (Prefer::V2, false, _) => Err(CgroupError::NotFound(format!(
            "allocate.backend = \"v2\", but {} offers no cpu and memory controllers",
            mounts
                .unified
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "this machine has no cgroup2 mount and".into())
        ))),
        _ => Err(CgroupError::NotFound(format!(
            "neither a cgroup2 mount with cpu and memory controllers ({}) nor v1 cpu and memory \
             hierarchies ({}) were found in /proc/self/mountinfo; mount cgroup2 at /sys/fs/cgroup",
            mounts
                .unified
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into()),
            if mounts.v1.is_empty() {
                "none".to_string()
            } else {
                mounts
                    .v1
                    .iter()
                    .map(|(c, _)| c.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_plain_relative_paths() {
        let g = Group::new("/umbra.slice/w-a/").unwrap();
        assert_eq!(g.as_str(), "umbra.slice/w-a");
        assert_eq!(g.parent(), Group::new("umbra.slice"));
        assert_eq!(g.child("base").as_str(), "umbra.slice/w-a/base");
        assert!(Group::new("a/../b").is_none());
        assert!(Group::new("a//b").is_none());
        let top = Group::new("umbra.slice").unwrap();
        assert!(g.is_within(&top) && top.is_ancestor_of(&g) && !g.is_ancestor_of(&top));
        assert!(!Group::new("umbra.slicex/a").unwrap().is_within(&top));
        assert!(g.is_within(&Group::ROOT));
        assert_eq!(g.name(), "w-a");
    }

    #[test]
    fn dir_names_are_safe_for_any_text() {
        assert_eq!(dir_name("nginx"), "nginx");
        assert_eq!(dir_name("wörker/1 x"), "w_rker_1_x");
        assert_eq!(dir_name(".."), "_..");
        assert_eq!(dir_name(""), "_");
        assert_eq!(dir_name(&"a".repeat(100)).len(), 40);
        assert_eq!(dir_name("\u{fffd}bad"), "_bad");
    }

    #[test]
    fn mountinfo_of_a_hybrid_host() {
        let text = "\
24 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
25 24 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
26 24 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
27 24 0:25 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
28 24 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
29 24 0:25 /sub /mnt/view rw - cgroup cgroup rw,memory
30 24 0:27 / /mnt/with\\040space rw - cgroup cgroup rw,freezer
";
        let m = Mounts::parse(text);
        assert_eq!(
            m.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            m.v1_of("cpuacct").unwrap().1,
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            m.v1_of("memory").unwrap().1,
            PathBuf::from("/sys/fs/cgroup/memory")
        );
        assert_eq!(
            m.v1_of("freezer").unwrap().1,
            PathBuf::from("/mnt/with space")
        );
        assert_eq!(m.v1.len(), 4, "{m:?}");
        assert!(!m.favordynmods);
        let fast =
            "25 24 0:23 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,favordynmods\n";
        assert!(Mounts::parse(fast).favordynmods);
        // A tmpfs option of the same name is not the kernel's.
        let tmpfs = "24 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,favordynmods\n";
        assert!(!Mounts::parse(tmpfs).favordynmods);
    }

    #[test]
    fn stat_files_parse() {
        let stat = "usage_usec 1000\nnr_periods 5\nnr_throttled 3\nthrottled_usec 777\n";
        assert_eq!(flat_keyed(stat, "nr_throttled"), Some(3));
        assert_eq!(flat_keyed(stat, "throttled_usec"), Some(777));
        assert_eq!(flat_keyed(stat, "nr"), None);
        let psi = "some avg10=0.00 avg60=0.00 avg300=0.00 total=4242\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1\n";
        assert_eq!(pressure_some_total(psi), Some(4242));
        let pc = parse_proc_cgroup("4:memory:/process_api/x\n0::/umbra.slice/w/base\n");
        assert_eq!(pc[0], (4, "memory".into(), "/process_api/x".into()));
        assert_eq!(pc[1], (0, "".into(), "/umbra.slice/w/base".into()));
    }
}
