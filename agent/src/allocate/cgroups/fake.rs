//! A cgroup v2 tree in a temporary directory that behaves like the kernel where Umbra
//! depends on it: new groups get the kernel's default files, values the kernel refuses are
//! refused with its errno, memory values are rounded down to pages, a process is in
//! exactly one group, a group with processes or children cannot be removed. Faults are
//! injected per file (any errno), per group (it vanishes) or for the whole tree (read-only).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::*;

const PAGE: u64 = 4096;

/// Files a new group has, with the kernel's defaults.
const DEFAULTS: &[(&str, &str)] = &[
    ("cpu.max", "max 100000"),
    ("cpu.weight", "100"),
    ("memory.min", "0"),
    ("memory.low", "0"),
    ("memory.high", "max"),
    ("memory.max", "max"),
    ("io.weight", "default 100"),
    ("cgroup.procs", ""),
    ("cgroup.freeze", "0"),
    ("cgroup.events", "populated 0\nfrozen 0"),
    ("cgroup.subtree_control", ""),
    ("cgroup.controllers", "cpu memory io"),
    (
        "cpu.stat",
        "usage_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0",
    ),
    ("memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0"),
    ("memory.current", "0"),
    (
        "cpu.pressure",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0",
    ),
];

#[derive(Default)]
struct State {
    /// Process → its group.
    procs: HashMap<u32, Group>,
    /// File (below the root) → errno its writes fail with.
    faults: HashMap<PathBuf, i32>,
    read_only: bool,
    /// Every successful write, in order: (file below the root, value).
    writes: Vec<(String, String)>,
}

/// The fake. Clones share the tree and its state, so a test keeps a handle for faults
/// and inspection while the allocator owns another.
#[derive(Clone)]
pub struct Fake {
    root: PathBuf,
    state: Arc<Mutex<State>>,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl Fake {
    /// A tree rooted at `root` (an existing, empty directory), the root group made.
    pub fn new(root: &Path) -> Fake {
        let f = Fake {
            root: root.to_path_buf(),
            state: Arc::default(),
        };
        f.populate(root);
        f
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn populate(&self, dir: &Path) {
        for (name, text) in DEFAULTS {
            let _ = fs::write(dir.join(name), text);
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A process that exists in `g` (which is made if missing, with its parents).
    pub fn spawn(&self, pid: u32, g: &Group) {
        let mut parts = Vec::new();
        let mut cur = Some(g.clone());
        while let Some(c) = cur {
            parts.push(c.clone());
            cur = c.parent();
        }
        for p in parts.into_iter().rev() {
            let d = p.dir(&self.root);
            if !d.is_dir() {
                let _ = fs::create_dir(&d);
                self.populate(&d);
            }
        }
        self.state().procs.insert(pid, g.clone());
        self.sync_procs();
    }

    /// The process exits.
    pub fn exit(&self, pid: u32) {
        self.state().procs.remove(&pid);
        self.sync_procs();
    }

    /// Where a process is.
    pub fn group_of(&self, pid: u32) -> Option<Group> {
        self.state().procs.get(&pid).cloned()
    }

    /// Writes to `file` of `g` fail with `errno` from now on (0 clears it).
    pub fn fail(&self, g: &Group, file: &str, errno: i32) {
        let key = g.dir(Path::new("")).join(file);
        let mut s = self.state();
        if errno == 0 {
            s.faults.remove(&key);
        } else {
            s.faults.insert(key, errno);
        }
    }

    /// Someone else removes the group (and everything below it); its processes go to
    /// the root.
    pub fn vanish(&self, g: &Group) {
        let _ = fs::remove_dir_all(g.dir(&self.root));
        let mut s = self.state();
        for (_, at) in s.procs.iter_mut() {
            if at.is_within(g) {
                *at = Group::ROOT;
            }
        }
        drop(s);
        self.sync_procs();
    }

    pub fn set_read_only(&self, ro: bool) {
        self.state().read_only = ro;
    }

    /// Sets a statistics file, as the kernel would update it (`cpu.stat`, `memory.events`, …).
    pub fn set_file(&self, g: &Group, file: &str, text: &str) {
        let _ = fs::write(g.dir(&self.root).join(file), text);
    }

    /// Successful writes so far: (file below the root, value).
    pub fn writes(&self) -> Vec<(String, String)> {
        self.state().writes.clone()
    }

    /// Every file's text below the root, for comparisons.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        walk(&self.root, &self.root, &mut out);
        out
    }

    /// Rewrites every group's `cgroup.procs` and `cgroup.events` from the process table.
    fn sync_procs(&self) {
        let s = self.state();
        let mut by: BTreeMap<&Group, Vec<u32>> = BTreeMap::new();
        for (pid, g) in &s.procs {
            by.entry(g).or_default().push(*pid);
        }
        let mut dirs = Vec::new();
        collect_dirs(&self.root, &mut dirs);
        for d in dirs {
            let g = Group::new(
                &d.strip_prefix(&self.root)
                    .unwrap_or(Path::new(""))
                    .to_string_lossy(),
            )
            .unwrap_or_default();
            let mut pids = by.get(&g).cloned().unwrap_or_default();
            pids.sort_unstable();
            let text: Vec<String> = pids.iter().map(u32::to_string).collect();
            let _ = fs::write(d.join("cgroup.procs"), text.join("\n"));
            let frozen = fs::read_to_string(d.join("cgroup.freeze")).unwrap_or_default();
            let populated = s.procs.values().any(|p| p.is_within(&g));
            let _ = fs::write(
                d.join("cgroup.events"),
                format!(
                    "populated {}\nfrozen {}",
                    populated as u8,
                    (frozen.trim() == "1") as u8
                ),
            );
        }
    }

    /// The kernel's checks of a write; the text it stores.
    fn check(file: &str, value: &str) -> std::result::Result<String, i32> {
        let v = value.trim();
        let num = |s: &str| s.parse::<u64>().map_err(|_| libc::EINVAL);
        match file {
            "cpu.max" => {
                let mut it = v.split_whitespace();
                let q = it.next().ok_or(libc::EINVAL)?;
                let p = match it.next() {
                    Some(p) => num(p)?,
                    None => CPU_PERIOD_US,
                };
                if !(1000..=1_000_000).contains(&p) {
                    return Err(libc::EINVAL);
                }
                if q == "max" {
                    return Ok(format!("max {p}"));
                }
                let q = num(q)?;
                if q < 1000 {
                    return Err(libc::EINVAL);
                }
                Ok(format!("{q} {p}"))
            }
            "cpu.weight" => match num(v)? {
                w @ 1..=10_000 => Ok(w.to_string()),
                _ => Err(libc::ERANGE),
            },
            "io.weight" => {
                let w = num(v.strip_prefix("default ").unwrap_or(v))?;
                if (1..=10_000).contains(&w) {
                    Ok(format!("default {w}"))
                } else {
                    Err(libc::ERANGE)
                }
            }
            "memory.min" | "memory.low" | "memory.high" | "memory.max" => {
                if v == "max" {
                    Ok("max".into())
                } else {
                    Ok((num(v)? / PAGE * PAGE).to_string())
                }
            }
            "cgroup.freeze" => match v {
                "0" | "1" => Ok(v.into()),
                _ => Err(libc::EINVAL),
            },
            _ => Err(libc::EACCES),
        }
    }

    fn rel(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| path.to_path_buf())
    }

    /// Every write goes through here: read-only tree, injected faults, a vanished group,
    /// the kernel's checks.
    fn kernel_write(&self, path: &Path, value: &str) -> Result<()> {
        let werr = |e: i32| CgroupError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source: errno(e),
        };
        let rel = self.rel(path);
        {
            let s = self.state();
            if s.read_only {
                return Err(werr(libc::EROFS));
            }
            if let Some(e) = s.faults.get(&rel) {
                return Err(werr(*e));
            }
        }
        if !path.exists() {
            return Err(werr(libc::ENOENT));
        }
        let file = rel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stored = match file.as_str() {
            "cgroup.subtree_control" => {
                let have = fs::read_to_string(path).unwrap_or_default();
                let mut on: Vec<String> = have.split_whitespace().map(String::from).collect();
                for tok in value.split_whitespace() {
                    let (add, c) = match tok.split_at_checked(1) {
                        Some(("+", c)) => (true, c),
                        Some(("-", c)) => (false, c),
                        _ => return Err(werr(libc::EINVAL)),
                    };
                    if !["cpu", "memory", "io"].contains(&c) {
                        return Err(werr(libc::EINVAL));
                    }
                    on.retain(|x| x != c);
                    if add {
                        on.push(c.to_string());
                    }
                }
                on.join(" ")
            }
            _ => Fake::check(&file, value).map_err(werr)?,
        };
        fs::write(path, &stored).map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })?;
        self.state()
            .writes
            .push((rel.to_string_lossy().into_owned(), value.to_string()));
        if file == "cgroup.freeze" {
            self.sync_procs();
        }
        Ok(())
    }

    fn group_of_dir(&self, dir: &Path) -> Option<Group> {
        Group::new(&dir.strip_prefix(&self.root).ok()?.to_string_lossy())
    }

    fn move_to(&self, dir: &Path, pid: u32) -> Result<()> {
        let procs = dir.join("cgroup.procs");
        let werr = |e: i32| CgroupError::Write {
            path: procs.clone(),
            value: pid.to_string(),
            source: errno(e),
        };
        let rel = self.rel(&procs);
        {
            let s = self.state();
            if s.read_only {
                return Err(werr(libc::EROFS));
            }
            if let Some(e) = s.faults.get(&rel) {
                return Err(werr(*e));
            }
        }
        let g = self.group_of_dir(dir).ok_or_else(|| werr(libc::ENOENT))?;
        if !dir.is_dir() {
            return Err(werr(libc::ENOENT));
        }
        let mut s = self.state();
        match s.procs.get_mut(&pid) {
            Some(at) => *at = g,
            None => return Err(werr(libc::ESRCH)),
        }
        s.writes
            .push((rel.to_string_lossy().into_owned(), pid.to_string()));
        drop(s);
        self.sync_procs();
        Ok(())
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let key = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        if p.is_dir() {
            out.insert(format!("{key}/"), String::new());
            walk(root, &p, out);
        } else {
            out.insert(key, fs::read_to_string(&p).unwrap_or_default());
        }
    }
}

impl Cgroups for Fake {
    fn backend(&self) -> Backend {
        Backend::Fake
    }

    fn describe(&self) -> String {
        format!("{} (fake cgroup v2)", self.root.display())
    }

    fn supports(&self, _: Knob) -> bool {
        true
    }

    fn exists(&self, g: &Group) -> bool {
        g.dir(&self.root).is_dir()
    }

    fn create(&mut self, g: &Group) -> Result<bool> {
        let dir = g.dir(&self.root);
        let ioerr = |e: i32| CgroupError::Io {
            op: "create",
            path: dir.clone(),
            source: errno(e),
        };
        if self.state().read_only {
            return Err(ioerr(libc::EROFS));
        }
        if dir.is_dir() {
            return Ok(false);
        }
        if !g.parent().is_some_and(|p| p.dir(&self.root).is_dir()) {
            return Err(ioerr(libc::ENOENT));
        }
        let made = mkdir(&dir)?;
        self.populate(&dir);
        self.sync_procs();
        Ok(made)
    }

    fn remove(&mut self, g: &Group) -> Result<()> {
        let dir = g.dir(&self.root);
        let ioerr = |e: i32| CgroupError::Io {
            op: "remove",
            path: dir.clone(),
            source: errno(e),
        };
        if !dir.is_dir() {
            return Ok(());
        }
        if self.state().read_only {
            return Err(ioerr(libc::EROFS));
        }
        if self.state().procs.values().any(|p| p == g) {
            return Err(ioerr(libc::EBUSY));
        }
        let has_children = fs::read_dir(&dir)
            .map(|rd| rd.flatten().any(|e| e.path().is_dir()))
            .unwrap_or(false);
        if has_children {
            return Err(ioerr(libc::EBUSY));
        }
        fs::remove_dir_all(&dir).map_err(|source| CgroupError::Io {
            op: "remove",
            path: dir.clone(),
            source,
        })
    }

    fn read_raw(&self, g: &Group, knob: Knob) -> Result<String> {
        read_file(&g.dir(&self.root).join(knob.name()))
    }

    fn write_raw(&mut self, g: &Group, knob: Knob, raw: &str) -> Result<()> {
        let path = g.dir(&self.root).join(knob.name());
        if knob == Knob::SubtreeControl {
            let have = read_file(&path)?;
            let delta = V2::subtree_delta(&have, raw);
            if delta.is_empty() {
                return Ok(());
            }
            return self.kernel_write(&path, &delta);
        }
        self.kernel_write(&path, raw)
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
        self.move_to(&g.dir(&self.root), pid)
    }

    fn placement(&self, pid: u32) -> Result<Placement> {
        match self.group_of(pid) {
            Some(g) => Ok(Placement {
                dirs: vec![("unified".into(), g.dir(&self.root))],
            }),
            None => Err(CgroupError::Io {
                op: "read",
                path: PathBuf::from(format!("/proc/{pid}/cgroup")),
                source: errno(libc::ENOENT),
            }),
        }
    }

    fn put_back(&mut self, pid: u32, to: &Placement) -> Result<()> {
        for (_, d) in &to.dirs {
            self.move_to(d, pid)?;
        }
        Ok(())
    }

    fn can_freeze(&self) -> bool {
        true
    }

    fn freeze(&mut self, g: &Group, frozen: bool) -> Result<()> {
        self.kernel_write(
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
                source: errno(libc::ENOENT),
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

/// The set of groups (as paths) of a fake, for tests.
impl Fake {
    pub fn groups(&self) -> HashSet<String> {
        let mut dirs = Vec::new();
        collect_dirs(&self.root, &mut dirs);
        dirs.iter()
            .filter_map(|d| d.strip_prefix(&self.root).ok())
            .map(|d| d.to_string_lossy().into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(s: &str) -> Group {
        Group::new(s).unwrap()
    }

    #[test]
    fn the_fake_refuses_what_the_kernel_refuses() {
        let d = tempfile::tempdir().unwrap();
        let mut f = Fake::new(d.path());
        assert!(f.create(&g("a")).unwrap());
        assert!(!f.create(&g("a")).unwrap());
        assert!(f.create(&g("x/y")).unwrap_err().is_gone());
        assert_eq!(f.read(&g("a"), Knob::CpuMax).unwrap(), Value::Max);
        f.write(&g("a"), Knob::CpuMax, Value::Amount(150_000))
            .unwrap();
        assert_eq!(f.read_raw(&g("a"), Knob::CpuMax).unwrap(), "150000 100000");
        let e = f
            .write(&g("a"), Knob::CpuMax, Value::Amount(10))
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
        f.write(&g("a"), Knob::MemoryHigh, Value::Amount(1_000_000))
            .unwrap();
        assert_eq!(
            f.read(&g("a"), Knob::MemoryHigh).unwrap(),
            Value::Amount(999_424)
        );
        assert_eq!(
            f.write(&g("a"), Knob::CpuWeight, Value::Amount(0))
                .unwrap_err()
                .errno(),
            Some(libc::ERANGE)
        );
        f.write(&g("a"), Knob::IoWeight, Value::Amount(300))
            .unwrap();
        assert_eq!(f.read(&g("a"), Knob::IoWeight).unwrap(), Value::Amount(300));
        f.write_raw(&Group::ROOT, Knob::SubtreeControl, "cpu memory")
            .unwrap();
        assert_eq!(
            f.read_raw(&Group::ROOT, Knob::SubtreeControl).unwrap(),
            "cpu memory"
        );
    }

    #[test]
    fn processes_live_in_one_group_and_busy_groups_stay() {
        let d = tempfile::tempdir().unwrap();
        let mut f = Fake::new(d.path());
        f.spawn(7, &g("system.slice/app.service"));
        f.create(&g("u")).unwrap();
        let before = f.placement(7).unwrap();
        f.place(&g("u"), 7).unwrap();
        assert_eq!(f.procs(&g("u")).unwrap(), vec![7]);
        assert!(f.procs(&g("system.slice/app.service")).unwrap().is_empty());
        assert_eq!(f.remove(&g("u")).unwrap_err().errno(), Some(libc::EBUSY));
        assert_eq!(
            f.place(&g("u"), 99).unwrap_err().errno(),
            Some(libc::ESRCH),
            "no such process"
        );
        f.put_back(7, &before).unwrap();
        assert_eq!(f.group_of(7), Some(g("system.slice/app.service")));
        f.remove(&g("u")).unwrap();
        assert!(!f.exists(&g("u")));
    }

    #[test]
    fn faults_are_injected() {
        let d = tempfile::tempdir().unwrap();
        let mut f = Fake::new(d.path());
        f.create(&g("a")).unwrap();
        f.fail(&g("a"), "memory.max", libc::EBUSY);
        let e = f
            .write(&g("a"), Knob::MemoryMax, Value::Amount(1 << 20))
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::EBUSY));
        assert!(e.to_string().contains("memory.max"), "{e}");
        f.fail(&g("a"), "memory.max", 0);
        f.write(&g("a"), Knob::MemoryMax, Value::Amount(1 << 20))
            .unwrap();
        f.set_read_only(true);
        assert_eq!(
            f.write(&g("a"), Knob::MemoryMax, Value::Max)
                .unwrap_err()
                .errno(),
            Some(libc::EROFS)
        );
        f.set_read_only(false);
        f.vanish(&g("a"));
        assert!(
            f.write(&g("a"), Knob::MemoryMax, Value::Max)
                .unwrap_err()
                .is_gone()
        );
        assert!(f.stats(&g("a")).unwrap_err().is_gone());
    }

    #[test]
    fn freezing_shows_in_events() {
        let d = tempfile::tempdir().unwrap();
        let mut f = Fake::new(d.path());
        f.spawn(5, &g("a"));
        f.freeze(&g("a"), true).unwrap();
        assert!(f.frozen(&g("a")).unwrap());
        f.freeze(&g("a"), false).unwrap();
        assert!(!f.frozen(&g("a")).unwrap());
    }
}
