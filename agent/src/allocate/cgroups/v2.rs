//! cgroup v2: one hierarchy, a file per knob
//! ([cgroup-v2.rst](https://github.com/torvalds/linux/blob/v6.12/Documentation/admin-guide/cgroup-v2.rst)).

use std::path::{Path, PathBuf};

use super::*;

pub struct V2 {
    root: PathBuf,
    /// Controllers the root offers (`cgroup.controllers`).
    controllers: Vec<String>,
}

impl V2 {
    pub fn new(root: PathBuf) -> V2 {
        let controllers = fs::read_to_string(root.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        V2 { root, controllers }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file(&self, g: &Group, knob: Knob) -> PathBuf {
        g.dir(&self.root).join(knob.name())
    }

    /// The controller a knob needs.
    pub fn controller(knob: Knob) -> Option<&'static str> {
        match knob {
            Knob::CpuMax | Knob::CpuWeight => Some("cpu"),
            Knob::MemoryMin | Knob::MemoryLow | Knob::MemoryHigh | Knob::MemoryMax => {
                Some("memory")
            }
            Knob::IoWeight => Some("io"),
            Knob::SubtreeControl => None,
        }
    }

    /// Controllers Umbra enables for its groups, of those this root offers.
    pub fn wanted_controllers(&self) -> Vec<&str> {
        ["cpu", "memory", "io"]
            .into_iter()
            .filter(|c| self.controllers.iter().any(|x| x == c))
            .collect()
    }

    pub fn parse_value(knob: Knob, raw: &str) -> Option<Value> {
        let raw = raw.trim();
        match knob {
            Knob::CpuMax => {
                let mut it = raw.split_whitespace();
                let quota = it.next()?;
                let period: u64 = it.next().map_or(Some(CPU_PERIOD_US), |p| p.parse().ok())?;
                if quota == "max" {
                    return Some(Value::Max);
                }
                let q: u64 = quota.parse().ok()?;
                Some(Value::Amount(q * CPU_PERIOD_US / period.max(1)))
            }
            Knob::SubtreeControl => None,
            // `io.weight` reads "default 100" (and per-device lines after it).
            Knob::IoWeight => raw
                .lines()
                .next()?
                .split_whitespace()
                .last()?
                .parse()
                .ok()
                .map(Value::Amount),
            _ if raw == "max" => Some(Value::Max),
            _ => raw.parse().ok().map(Value::Amount),
        }
    }

    pub fn encode_value(knob: Knob, v: Value) -> String {
        match (knob, v) {
            (Knob::CpuMax, Value::Max) => format!("max {CPU_PERIOD_US}"),
            (Knob::CpuMax, Value::Amount(q)) => format!("{q} {CPU_PERIOD_US}"),
            (_, Value::Max) => "max".into(),
            (_, Value::Amount(a)) => a.to_string(),
        }
    }

    /// The `+x -y` write that turns the enabled set `have` into `want`.
    pub fn subtree_delta(have: &str, want: &str) -> String {
        let have: Vec<&str> = have.split_whitespace().collect();
        let want: Vec<&str> = want.split_whitespace().collect();
        let mut parts: Vec<String> = want
            .iter()
            .filter(|c| !have.contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        parts.extend(
            have.iter()
                .filter(|c| !want.contains(c))
                .map(|c| format!("-{c}")),
        );
        parts.join(" ")
    }

    pub(super) fn stats_of(dir: &Path) -> GroupStats {
        let text = |f: &str| fs::read_to_string(dir.join(f)).unwrap_or_default();
        let cpu = text("cpu.stat");
        let ev = text("memory.events");
        GroupStats {
            memory_bytes: text("memory.current").trim().parse().ok(),
            cpu_usage_us: flat_keyed(&cpu, "usage_usec"),
            nr_throttled: flat_keyed(&cpu, "nr_throttled").unwrap_or(0),
            throttled_us: flat_keyed(&cpu, "throttled_usec").unwrap_or(0),
            memory_high_events: flat_keyed(&ev, "high").unwrap_or(0),
            memory_max_events: flat_keyed(&ev, "max").unwrap_or(0),
            oom: flat_keyed(&ev, "oom").unwrap_or(0),
            oom_kill: flat_keyed(&ev, "oom_kill").unwrap_or(0),
            cpu_pressure_us: pressure(dir, "cpu.pressure"),
            memory_pressure_us: pressure(dir, "memory.pressure"),
            io_pressure_us: pressure(dir, "io.pressure"),
        }
    }

    /// Where a process is in the cgroup2 hierarchy mounted at `root`.
    pub(super) fn placement_in(root: &Path, pid: u32) -> Result<Placement> {
        let lines = proc_cgroups(pid)?;
        let dirs = lines
            .into_iter()
            .filter(|(id, c, _)| *id == 0 && c.is_empty())
            .map(|(_, _, p)| ("unified".to_string(), root.join(p.trim_start_matches('/'))))
            .collect();
        Ok(Placement { dirs })
    }

    pub(super) fn frozen_in(dir: &Path) -> Result<bool> {
        let ev = read_file(&dir.join("cgroup.events"))?;
        Ok(flat_keyed(&ev, "frozen") == Some(1))
    }
}

impl Cgroups for V2 {
    fn backend(&self) -> Backend {
        Backend::V2
    }

    fn describe(&self) -> String {
        format!(
            "{} (cgroup v2: {})",
            self.root.display(),
            self.controllers.join(" ")
        )
    }

    fn supports(&self, knob: Knob) -> bool {
        match V2::controller(knob) {
            Some(c) => self.controllers.iter().any(|x| x == c),
            None => true,
        }
    }

    fn exists(&self, g: &Group) -> bool {
        g.dir(&self.root).is_dir()
    }

    fn create(&mut self, g: &Group) -> Result<bool> {
        mkdir(&g.dir(&self.root))
    }

    fn remove(&mut self, g: &Group) -> Result<()> {
        rmdir(&g.dir(&self.root))
    }

    fn read_raw(&self, g: &Group, knob: Knob) -> Result<String> {
        read_file(&self.file(g, knob))
    }

    fn write_raw(&mut self, g: &Group, knob: Knob, raw: &str) -> Result<()> {
        let path = self.file(g, knob);
        if knob == Knob::SubtreeControl {
            let have = read_file(&path)?;
            let delta = V2::subtree_delta(&have, raw);
            if delta.is_empty() {
                return Ok(());
            }
            return write_file(&path, &delta);
        }
        write_file(&path, raw)
    }

    fn parse(&self, knob: Knob, raw: &str) -> Option<Value> {
        V2::parse_value(knob, raw)
    }

    fn encode(&self, knob: Knob, v: Value) -> String {
        V2::encode_value(knob, v)
    }

    fn procs(&self, g: &Group) -> Result<Vec<u32>> {
        Ok(parse_procs(&read_file(
            &g.dir(&self.root).join("cgroup.procs"),
        )?))
    }

    fn place(&mut self, g: &Group, pid: u32) -> Result<()> {
        write_file(&g.dir(&self.root).join("cgroup.procs"), &pid.to_string())
    }

    fn placement(&self, pid: u32) -> Result<Placement> {
        V2::placement_in(&self.root, pid)
    }

    fn put_back(&mut self, pid: u32, to: &Placement) -> Result<()> {
        for (_, dir) in &to.dirs {
            write_file(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn can_freeze(&self) -> bool {
        true
    }

    fn freeze(&mut self, g: &Group, frozen: bool) -> Result<()> {
        write_file(
            &g.dir(&self.root).join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )
    }

    fn frozen(&self, g: &Group) -> Result<bool> {
        V2::frozen_in(&g.dir(&self.root))
    }

    fn stats(&self, g: &Group) -> Result<GroupStats> {
        let dir = g.dir(&self.root);
        if !dir.is_dir() {
            return Err(CgroupError::Io {
                op: "read statistics of",
                path: dir,
                source: io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        Ok(V2::stats_of(&dir))
    }

    fn exec_target(&self, g: &Group) -> Result<ExecTarget> {
        Ok(ExecTarget::Clone3 {
            dir: g.dir(&self.root),
        })
    }

    fn cgroup2_dir(&self, g: &Group) -> Option<PathBuf> {
        Some(g.dir(&self.root))
    }

    fn dirs(&self, g: &Group) -> Placement {
        Placement {
            dirs: vec![("unified".into(), g.dir(&self.root))],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_in_the_kernel_s_text() {
        for (k, raw, v) in [
            (Knob::CpuMax, "max 100000", Value::Max),
            (Knob::CpuMax, "150000 100000", Value::Amount(150_000)),
            (Knob::MemoryHigh, "max", Value::Max),
            (Knob::MemoryMin, "1048576", Value::Amount(1 << 20)),
            (Knob::CpuWeight, "250", Value::Amount(250)),
            (Knob::IoWeight, "300", Value::Amount(300)),
        ] {
            assert_eq!(V2::parse_value(k, raw), Some(v), "{k} {raw}");
            assert_eq!(V2::encode_value(k, v), raw);
        }
        // Another period is scaled to ours.
        assert_eq!(
            V2::parse_value(Knob::CpuMax, "50000 50000"),
            Some(Value::Amount(100_000))
        );
        assert_eq!(V2::parse_value(Knob::MemoryHigh, "lots"), None);
        assert_eq!(
            V2::parse_value(Knob::IoWeight, "default 250\n8:0 100"),
            Some(Value::Amount(250))
        );
    }

    #[test]
    fn subtree_control_changes_only_what_differs() {
        assert_eq!(V2::subtree_delta("cpu", "cpu memory io"), "+memory +io");
        assert_eq!(V2::subtree_delta("cpu memory io", "cpu"), "-memory -io");
        assert_eq!(V2::subtree_delta("io cpu", "cpu io"), "");
    }
}
