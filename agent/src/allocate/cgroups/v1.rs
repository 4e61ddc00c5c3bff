//! cgroup v1: a hierarchy per controller (`/sys/fs/cgroup/<controller>/…`), each with its
//! own `cgroup.procs`
//! ([cgroup-v1](https://github.com/torvalds/linux/tree/v6.12/Documentation/admin-guide/cgroup-v1)).
//! On a hybrid host the cgroup2 mount (no controllers) mirrors every group too: a process
//! placed there gets per-group PSI, and `cgroup_skb` programs attach to its directory.
//!
//! Knobs: `cpu.max` → `cpu.cfs_quota_us` and `cpu.cfs_period_us` (raw text `"<quota>
//! <period>"`, quota `-1` for none); `cpu.weight` → `cpu.shares` (× 1024 / 100);
//! `memory.high` → `memory.soft_limit_in_bytes`; `memory.max` → `memory.limit_in_bytes`;
//! `io.weight` → `blkio.bfq.weight` (or `blkio.weight`); freezing → `freezer.state`. v1
//! has no `memory.min` or `memory.low`.

use std::path::{Path, PathBuf};

use super::*;

/// Values at or above this are "no limit" (the kernel shows `PAGE_COUNTER_MAX` pages).
const UNLIMITED: u64 = 1 << 62;

/// One mounted hierarchy Umbra uses.
#[derive(Clone, Debug)]
struct Hierarchy {
    /// `cpu`, `cpu,cpuacct`, `memory`, … or `unified` for the cgroup2 mirror.
    key: String,
    root: PathBuf,
}

pub struct V1 {
    hierarchies: Vec<Hierarchy>,
    cpu: Option<usize>,
    cpuacct: Option<usize>,
    memory: Option<usize>,
    blkio: Option<usize>,
    freezer: Option<usize>,
    unified: Option<usize>,
}

impl V1 {
    /// The v1 controllers Umbra uses.
    pub const CONTROLLERS: [&'static str; 5] = ["cpu", "cpuacct", "memory", "blkio", "freezer"];

    pub fn new(mounts: &Mounts) -> V1 {
        let mut v = V1 {
            hierarchies: Vec::new(),
            cpu: None,
            cpuacct: None,
            memory: None,
            blkio: None,
            freezer: None,
            unified: None,
        };
        for c in V1::CONTROLLERS {
            let Some((key, root)) = mounts.v1_of(c) else {
                continue;
            };
            let i = match v.hierarchies.iter().position(|h| h.root == *root) {
                Some(i) => i,
                None => {
                    v.hierarchies.push(Hierarchy {
                        key: key.clone(),
                        root: root.clone(),
                    });
                    v.hierarchies.len() - 1
                }
            };
            let slot = match c {
                "cpu" => &mut v.cpu,
                "cpuacct" => &mut v.cpuacct,
                "memory" => &mut v.memory,
                "blkio" => &mut v.blkio,
                _ => &mut v.freezer,
            };
            *slot = Some(i);
        }
        if let Some(u) = &mounts.unified {
            v.hierarchies.push(Hierarchy {
                key: "unified".into(),
                root: u.clone(),
            });
            v.unified = Some(v.hierarchies.len() - 1);
        }
        v
    }

    fn dir(&self, h: Option<usize>, g: &Group) -> Option<PathBuf> {
        h.map(|i| g.dir(&self.hierarchies[i].root))
    }

    fn unsupported(knob: Knob, why: &str) -> CgroupError {
        CgroupError::Unsupported {
            knob,
            backend: Backend::V1.name(),
            why: Some(why.into()),
        }
    }

    /// The file of a one-file knob.
    fn file(&self, g: &Group, knob: Knob) -> Result<PathBuf> {
        let (h, name) = match knob {
            Knob::CpuWeight => (self.cpu, "cpu.shares"),
            Knob::MemoryHigh => (self.memory, "memory.soft_limit_in_bytes"),
            Knob::MemoryMax => (self.memory, "memory.limit_in_bytes"),
            Knob::IoWeight => {
                let dir = self
                    .dir(self.blkio, g)
                    .ok_or_else(|| V1::unsupported(knob, "no blkio hierarchy"))?;
                let bfq = dir.join("blkio.bfq.weight");
                return Ok(if bfq.exists() || !dir.join("blkio.weight").exists() {
                    bfq
                } else {
                    dir.join("blkio.weight")
                });
            }
            Knob::MemoryMin | Knob::MemoryLow => {
                return Err(V1::unsupported(knob, "cgroup v1 has no memory protection"));
            }
            Knob::SubtreeControl => {
                return Err(V1::unsupported(knob, "v1 controllers need no enabling"));
            }
            // Two files: read and written by the callers themselves.
            Knob::CpuMax => return Err(V1::unsupported(knob, "cpu.max spans two files")),
        };
        self.dir(h, g)
            .map(|d| d.join(name))
            .ok_or_else(|| V1::unsupported(knob, "its controller is not mounted"))
    }

    fn cpu_dir(&self, g: &Group) -> Result<PathBuf> {
        self.dir(self.cpu, g)
            .ok_or_else(|| V1::unsupported(Knob::CpuMax, "no cpu hierarchy"))
    }

    pub fn parse_value(knob: Knob, raw: &str) -> Option<Value> {
        let raw = raw.trim();
        match knob {
            Knob::CpuMax => {
                let mut it = raw.split_whitespace();
                let quota: i64 = it.next()?.parse().ok()?;
                let period: u64 = it.next().map_or(Some(CPU_PERIOD_US), |p| p.parse().ok())?;
                if quota < 0 {
                    return Some(Value::Max);
                }
                Some(Value::Amount(quota as u64 * CPU_PERIOD_US / period.max(1)))
            }
            Knob::CpuWeight => {
                let shares: u64 = raw.parse().ok()?;
                Some(Value::Amount(
                    ((shares * 100 + 512) / 1024).clamp(1, 10_000),
                ))
            }
            Knob::IoWeight => {
                // `blkio.bfq.weight` reads "default 100" on some kernels.
                raw.split_whitespace()
                    .last()?
                    .parse()
                    .ok()
                    .map(Value::Amount)
            }
            _ => {
                let v: i64 = raw.parse().ok()?;
                if v < 0 || v as u64 >= UNLIMITED {
                    Some(Value::Max)
                } else {
                    Some(Value::Amount(v as u64))
                }
            }
        }
    }

    pub fn encode_value(knob: Knob, v: Value) -> String {
        match (knob, v) {
            (Knob::CpuMax, Value::Max) => format!("-1 {CPU_PERIOD_US}"),
            (Knob::CpuMax, Value::Amount(q)) => format!("{} {CPU_PERIOD_US}", q.max(1000)),
            (Knob::CpuWeight, Value::Amount(w)) => (w * 1024 / 100).max(2).to_string(),
            (Knob::CpuWeight, Value::Max) => "262144".into(),
            (Knob::IoWeight, Value::Amount(w)) => w.clamp(1, 1000).to_string(),
            (Knob::IoWeight, Value::Max) => "1000".into(),
            (_, Value::Max) => "-1".into(),
            (_, Value::Amount(a)) => a.to_string(),
        }
    }
}

impl Cgroups for V1 {
    fn backend(&self) -> Backend {
        Backend::V1
    }

    fn describe(&self) -> String {
        let roots: Vec<String> = self
            .hierarchies
            .iter()
            .map(|h| h.root.display().to_string())
            .collect();
        format!("cgroup v1: {}", roots.join(", "))
    }

    fn supports(&self, knob: Knob) -> bool {
        match knob {
            Knob::CpuMax | Knob::CpuWeight => self.cpu.is_some(),
            Knob::MemoryHigh | Knob::MemoryMax => self.memory.is_some(),
            Knob::IoWeight => self.blkio.is_some(),
            Knob::MemoryMin | Knob::MemoryLow | Knob::SubtreeControl => false,
        }
    }

    fn exists(&self, g: &Group) -> bool {
        self.hierarchies.iter().all(|h| g.dir(&h.root).is_dir())
    }

    fn create(&mut self, g: &Group) -> Result<bool> {
        let mut made = false;
        for h in &self.hierarchies {
            made |= mkdir(&g.dir(&h.root))?;
        }
        Ok(made)
    }

    fn remove(&mut self, g: &Group) -> Result<()> {
        let mut first = None;
        for h in self.hierarchies.iter().rev() {
            if let Err(e) = rmdir(&g.dir(&h.root)) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn read_raw(&self, g: &Group, knob: Knob) -> Result<String> {
        if knob == Knob::CpuMax {
            let d = self.cpu_dir(g)?;
            let q = read_file(&d.join("cpu.cfs_quota_us"))?;
            let p = read_file(&d.join("cpu.cfs_period_us"))?;
            return Ok(format!("{} {}", q.trim(), p.trim()));
        }
        read_file(&self.file(g, knob)?)
    }

    fn write_raw(&mut self, g: &Group, knob: Knob, raw: &str) -> Result<()> {
        if knob == Knob::CpuMax {
            let d = self.cpu_dir(g)?;
            let (quota, period) = raw.split_once(' ').unwrap_or((raw, "100000"));
            let have = read_file(&d.join("cpu.cfs_period_us"))?;
            if have.trim() != period.trim() {
                // A new period with the old quota may be refused: lift the quota first.
                write_file(&d.join("cpu.cfs_quota_us"), "-1")?;
                write_file(&d.join("cpu.cfs_period_us"), period.trim())?;
            }
            return write_file(&d.join("cpu.cfs_quota_us"), quota.trim());
        }
        write_file(&self.file(g, knob)?, raw)
    }

    fn parse(&self, knob: Knob, raw: &str) -> Option<Value> {
        V1::parse_value(knob, raw)
    }

    fn encode(&self, knob: Knob, v: Value) -> String {
        V1::encode_value(knob, v)
    }

    fn procs(&self, g: &Group) -> Result<Vec<u32>> {
        let h = self.cpu.or(self.memory).unwrap_or(0);
        let dir = self
            .dir(Some(h), g)
            .ok_or_else(|| CgroupError::NotFound("no v1 hierarchy".into()))?;
        Ok(parse_procs(&read_file(&dir.join("cgroup.procs"))?))
    }

    fn place(&mut self, g: &Group, pid: u32) -> Result<()> {
        for h in &self.hierarchies {
            write_file(&g.dir(&h.root).join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn placement(&self, pid: u32) -> Result<Placement> {
        let lines = proc_cgroups(pid)?;
        let mut dirs = Vec::new();
        for h in &self.hierarchies {
            let found = lines.iter().find(|(id, c, _)| {
                if h.key == "unified" {
                    *id == 0 && c.is_empty()
                } else {
                    *c == h.key
                }
            });
            if let Some((_, _, p)) = found {
                dirs.push((h.key.clone(), h.root.join(p.trim_start_matches('/'))));
            }
        }
        Ok(Placement { dirs })
    }

    fn put_back(&mut self, pid: u32, to: &Placement) -> Result<()> {
        let mut first = None;
        for (_, dir) in &to.dirs {
            if let Err(e) = write_file(&dir.join("cgroup.procs"), &pid.to_string()) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn can_freeze(&self) -> bool {
        self.freezer.is_some() || self.unified.is_some()
    }

    fn freeze(&mut self, g: &Group, frozen: bool) -> Result<()> {
        if let Some(d) = self.dir(self.freezer, g) {
            return write_file(
                &d.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            );
        }
        match self.dir(self.unified, g) {
            Some(d) => write_file(&d.join("cgroup.freeze"), if frozen { "1" } else { "0" }),
            None => Err(CgroupError::NotFound(
                "no freezer hierarchy and no cgroup2 mount".into(),
            )),
        }
    }

    fn frozen(&self, g: &Group) -> Result<bool> {
        if let Some(d) = self.dir(self.freezer, g) {
            return Ok(read_file(&d.join("freezer.state"))?.trim() == "FROZEN");
        }
        match self.dir(self.unified, g) {
            Some(d) => V2::frozen_in(&d),
            None => Ok(false),
        }
    }

    fn stats(&self, g: &Group) -> Result<GroupStats> {
        let cpu = self.cpu_dir(g)?;
        if !cpu.is_dir() {
            return Err(CgroupError::Io {
                op: "read statistics of",
                path: cpu,
                source: io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        let text = |d: Option<PathBuf>, f: &str| {
            d.and_then(|d| fs::read_to_string(d.join(f)).ok())
                .unwrap_or_default()
        };
        let stat = text(Some(cpu.clone()), "cpu.stat");
        let mem = self.dir(self.memory, g);
        let oom = text(mem.clone(), "memory.oom_control");
        let unified = self.dir(self.unified, g);
        let psi = |f: &str| unified.as_deref().and_then(|d| pressure(d, f));
        Ok(GroupStats {
            memory_bytes: text(mem.clone(), "memory.usage_in_bytes")
                .trim()
                .parse()
                .ok(),
            cpu_usage_us: text(self.dir(self.cpuacct, g), "cpuacct.usage")
                .trim()
                .parse::<u64>()
                .ok()
                .map(|ns| ns / 1000),
            nr_throttled: flat_keyed(&stat, "nr_throttled").unwrap_or(0),
            throttled_us: flat_keyed(&stat, "throttled_time").unwrap_or(0) / 1000,
            memory_high_events: 0,
            memory_max_events: text(mem, "memory.failcnt").trim().parse().unwrap_or(0),
            oom: flat_keyed(&oom, "under_oom").unwrap_or(0),
            oom_kill: flat_keyed(&oom, "oom_kill").unwrap_or(0),
            cpu_pressure_us: psi("cpu.pressure"),
            memory_pressure_us: psi("memory.pressure"),
            io_pressure_us: psi("io.pressure"),
        })
    }

    fn exec_target(&self, g: &Group) -> Result<ExecTarget> {
        Ok(ExecTarget::WriteOwnPid {
            procs: self
                .hierarchies
                .iter()
                .map(|h| g.dir(&h.root).join("cgroup.procs"))
                .collect(),
        })
    }

    fn cgroup2_dir(&self, g: &Group) -> Option<PathBuf> {
        self.dir(self.unified, g)
    }

    fn dirs(&self, g: &Group) -> Placement {
        Placement {
            dirs: self
                .hierarchies
                .iter()
                .map(|h| (h.key.clone(), g.dir(&h.root)))
                .collect(),
        }
    }
}

/// The roots of a v1 backend, for tests that inspect the files.
impl V1 {
    pub fn roots(&self) -> Vec<(&str, &Path)> {
        self.hierarchies
            .iter()
            .map(|h| (h.key.as_str(), h.root.as_path()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_values_map_to_v2_units() {
        assert_eq!(V1::parse_value(Knob::CpuMax, "-1 100000"), Some(Value::Max));
        assert_eq!(
            V1::parse_value(Knob::CpuMax, "50000 100000"),
            Some(Value::Amount(50_000))
        );
        assert_eq!(
            V1::encode_value(Knob::CpuMax, Value::Amount(50_000)),
            "50000 100000"
        );
        assert_eq!(V1::encode_value(Knob::CpuMax, Value::Max), "-1 100000");
        // Weights: shares 1024 is weight 100.
        assert_eq!(
            V1::parse_value(Knob::CpuWeight, "1024"),
            Some(Value::Amount(100))
        );
        for w in [1, 37, 100, 250, 10_000] {
            let raw = V1::encode_value(Knob::CpuWeight, Value::Amount(w));
            let back = V1::parse_value(Knob::CpuWeight, &raw)
                .unwrap()
                .amount()
                .unwrap();
            assert!(
                back.abs_diff(w) <= 1,
                "weight {w} -> shares {raw} -> {back}"
            );
        }
        assert_eq!(
            V1::parse_value(Knob::MemoryMax, "9223372036854771712"),
            Some(Value::Max)
        );
        assert_eq!(V1::encode_value(Knob::MemoryHigh, Value::Max), "-1");
        assert_eq!(
            V1::parse_value(Knob::IoWeight, "default 100"),
            Some(Value::Amount(100))
        );
    }
}
