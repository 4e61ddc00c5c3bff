//! The journaled applier: the only way the allocate stage touches the cgroup tree. It
//! keeps every change inside the owned subtree (the one exception: enabling controllers
//! in the owned root's ancestors on cgroup v2, journaled and put back), writes the
//! journal before each change, counts and logs what the kernel refuses, and puts
//! everything back — at shutdown from what it did, after a crash from the journal, by the
//! same code.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{
    cgroups::{Backend, CgroupError, Cgroups, Group, GroupStats, Knob, Placement, V2, Value},
    journal::{self, Entry, Journal, JournalError, Leftover},
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{group} is outside the owned subtree {root}: refused")]
    Outside { group: Group, root: Group },
    #[error("process {pid}: {what}")]
    Process { pid: u32, what: String },
}

/// Failures by kind, as counted for status and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// By errno name (`EINVAL`, `EBUSY`, `ENOSPC`, `EROFS`, `ENOENT`, …) or `journal`.
    pub by_kind: BTreeMap<String, u64>,
}

impl Faults {
    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    fn count(&mut self, kind: &str) -> u64 {
        let n = self.by_kind.entry(kind.to_string()).or_default();
        *n += 1;
        *n
    }
}

/// What a restore put back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Restored {
    pub processes: u32,
    pub settings: u32,
    pub groups: u32,
    /// What could not be put back (each also logged).
    pub failures: Vec<String>,
}

/// The live state: what a restore has to undo.
#[derive(Clone, Debug, Default)]
struct Undo {
    /// Groups created, in creation order.
    created: Vec<Group>,
    /// (group, knob) → original text, for groups not created by Umbra.
    originals: BTreeMap<(Group, Knob), String>,
    /// Process → (start time, where it came from, the group it was put in).
    moved: HashMap<u32, (u64, Placement, Group)>,
    frozen: BTreeSet<Group>,
}

impl Undo {
    fn from_entries(entries: &[Entry]) -> Undo {
        let mut u = Undo::default();
        for e in entries {
            match e {
                Entry::Begin { .. } => {}
                Entry::Created { group } => {
                    if !u.created.contains(group) {
                        u.created.push(group.clone());
                    }
                }
                Entry::Removed { group } => u.created.retain(|g| g != group),
                Entry::Original { group, knob, raw } => {
                    u.originals
                        .entry((group.clone(), *knob))
                        .or_insert_with(|| raw.clone());
                }
                Entry::Moved {
                    pid,
                    start,
                    to,
                    from,
                } => {
                    // The first origin of a process is where it goes back to.
                    match u.moved.get_mut(pid) {
                        Some(m) if m.0 == *start => m.2 = to.clone(),
                        _ => {
                            u.moved.insert(*pid, (*start, from.clone(), to.clone()));
                        }
                    }
                }
                Entry::Frozen { group } => {
                    u.frozen.insert(group.clone());
                }
            }
        }
        u
    }

    fn entries(&self, begin: Entry) -> Vec<Entry> {
        let mut out = vec![begin];
        out.extend(
            self.created
                .iter()
                .map(|g| Entry::Created { group: g.clone() }),
        );
        out.extend(self.originals.iter().map(|((g, k), raw)| Entry::Original {
            group: g.clone(),
            knob: *k,
            raw: raw.clone(),
        }));
        let mut moved: Vec<_> = self.moved.iter().collect();
        moved.sort_by_key(|(pid, _)| **pid);
        out.extend(
            moved
                .into_iter()
                .map(|(pid, (start, from, to))| Entry::Moved {
                    pid: *pid,
                    start: *start,
                    to: to.clone(),
                    from: from.clone(),
                }),
        );
        out.extend(
            self.frozen
                .iter()
                .map(|g| Entry::Frozen { group: g.clone() }),
        );
        out
    }
}

/// Start time of a process (`/proc/<pid>/stat` field 22), `None` when it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Journal entries beyond this many are compacted into the live state.
const COMPACT_AFTER: u64 = 4096;

pub struct Applier {
    cgroups: Box<dyn Cgroups>,
    journal: Option<Journal>,
    journal_path: PathBuf,
    root: Group,
    undo: Undo,
    begin: Entry,
    pub faults: Faults,
    /// Start times of processes, by pid, as a fake backend sees them (tests); real
    /// backends read `/proc`.
    start_of: fn(u32) -> Option<u64>,
}

impl Applier {
    /// Puts back whatever a previous run left in the journal at `journal_path`, then starts a
    /// fresh journal. `root` is the owned subtree.
    pub fn open(
        cgroups: Box<dyn Cgroups>,
        root: Group,
        journal_path: &Path,
    ) -> Result<(Applier, Option<Restored>), ApplyError> {
        Applier::open_with(cgroups, root, journal_path, start_time)
    }

    pub fn open_with(
        cgroups: Box<dyn Cgroups>,
        root: Group,
        journal_path: &Path,
        start_of: fn(u32) -> Option<u64>,
    ) -> Result<(Applier, Option<Restored>), ApplyError> {
        let begin = Entry::Begin {
            boot_id: journal::boot_id(),
            pid: std::process::id(),
            started_ms: crate::capture::procfs::wall_ms(),
            backend: cgroups.backend(),
        };
        let mut a = Applier {
            cgroups,
            journal: None,
            journal_path: journal_path.to_path_buf(),
            root,
            undo: Undo::default(),
            begin: begin.clone(),
            faults: Faults::default(),
            start_of,
        };
        let restored = match Journal::leftover(journal_path)? {
            Some(Leftover {
                other_boot: true, ..
            }) => {
                info!(journal = %journal_path.display(), "Journal of an earlier boot discarded");
                None
            }
            Some(left) => {
                if left.damaged_bytes > 0 {
                    warn!(
                        journal = %journal_path.display(),
                        bytes = left.damaged_bytes,
                        "Journal tail was cut (the last run was killed while writing it)"
                    );
                }
                a.undo = Undo::from_entries(&left.entries);
                let r = a.restore();
                info!(
                    processes = r.processes,
                    settings = r.settings,
                    groups = r.groups,
                    failures = r.failures.len(),
                    "Restored what the last run left in the cgroup tree"
                );
                Some(r)
            }
            None => None,
        };
        a.journal = Some(Journal::start(journal_path, begin)?);
        Ok((a, restored))
    }

    pub fn cgroups(&self) -> &dyn Cgroups {
        self.cgroups.as_ref()
    }

    pub fn backend(&self) -> Backend {
        self.cgroups.backend()
    }

    pub fn root(&self) -> &Group {
        &self.root
    }

    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    fn inside(&self, g: &Group) -> Result<(), ApplyError> {
        if g.is_within(&self.root) {
            Ok(())
        } else {
            Err(ApplyError::Outside {
                group: g.clone(),
                root: self.root.clone(),
            })
        }
    }

    fn record(&mut self, e: Entry) -> Result<(), ApplyError> {
        let r = match self.journal.as_mut() {
            Some(j) => j.append(&e),
            None => Ok(()),
        };
        if let Err(err) = r {
            let n = self.faults.count("journal");
            if n.is_power_of_two() {
                warn!(error = %err, faults = n, "Journal write failed; the change is not made");
            }
            return Err(err.into());
        }
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.entries() > COMPACT_AFTER)
        {
            let live = self.undo.entries(self.begin.clone());
            if let Some(j) = self.journal.as_mut()
                && let Err(err) = j.compact(&live)
            {
                warn!(error = %err, "Journal compaction failed");
            }
        }
        Ok(())
    }

    /// Counts and logs a refused change (per kind, the first and then every power of two).
    fn fault(&mut self, e: &CgroupError) {
        let kind = match e.errno() {
            Some(n) => errno_name(n),
            None => "other".into(),
        };
        let n = self.faults.count(&kind);
        if n.is_power_of_two() {
            warn!(error = %e, kind, count = n, "Cgroup change refused");
        }
    }

    fn checked<T>(&mut self, r: Result<T, CgroupError>) -> Result<T, ApplyError> {
        r.map_err(|e| {
            self.fault(&e);
            ApplyError::Cgroup(e)
        })
    }

    /// Prepares the owned subtree: on cgroup v2, the controllers enabled from the
    /// hierarchy root down to the owned root (journaled), then the owned root itself.
    pub fn setup(&mut self) -> Result<(), ApplyError> {
        if let Some(parent) = self.root.parent() {
            let mut chain = Vec::new();
            let mut cur = Some(parent);
            while let Some(c) = cur {
                chain.push(c.clone());
                cur = c.parent();
            }
            for g in chain.iter().rev() {
                if !self.cgroups.exists(g) {
                    return Err(CgroupError::NotFound(format!(
                        "{} (the parent of the owned subtree {}) does not exist",
                        g, self.root
                    ))
                    .into());
                }
                self.enable_controllers(g)?;
            }
        }
        let root = self.root.clone();
        self.ensure(&root, true)
    }

    /// Enables Umbra's controllers for `g`'s children (cgroup v2 only).
    fn enable_controllers(&mut self, g: &Group) -> Result<(), ApplyError> {
        if !self.cgroups.supports(Knob::SubtreeControl)
            || !matches!(self.backend(), Backend::V2 | Backend::Fake)
        {
            return Ok(());
        }
        let want: Vec<&str> = [Knob::CpuMax, Knob::MemoryMax, Knob::IoWeight]
            .into_iter()
            .filter(|k| self.cgroups.supports(*k))
            .filter_map(V2::controller)
            .collect();
        let have = self.checked(self.cgroups.read_raw(g, Knob::SubtreeControl))?;
        let mut all: Vec<&str> = have.split_whitespace().collect();
        for w in want {
            if !all.contains(&w) {
                all.push(w);
            }
        }
        let target = all.join(" ");
        if V2::subtree_delta(&have, &target).is_empty() {
            return Ok(());
        }
        self.set_raw(g, Knob::SubtreeControl, &target, true)
    }

    /// Makes `g` (inside the owned subtree) if it is missing; `inner` groups get the
    /// controllers enabled for their children.
    pub fn ensure(&mut self, g: &Group, inner: bool) -> Result<(), ApplyError> {
        self.inside(g)?;
        if !self.cgroups.exists(g) {
            self.record(Entry::Created { group: g.clone() })?;
            if !self.undo.created.contains(g) {
                self.undo.created.push(g.clone());
            }
            let r = self.cgroups.create(g);
            self.checked(r)?;
        }
        if inner {
            self.enable_controllers(g)?;
        }
        Ok(())
    }

    fn created(&self, g: &Group) -> bool {
        self.undo.created.contains(g)
    }

    /// Writes a raw setting; journals the original first when the group is not Umbra's
    /// own. `ancestor` allows the one write outside the subtree: controllers above it.
    fn set_raw(
        &mut self,
        g: &Group,
        knob: Knob,
        raw: &str,
        ancestor: bool,
    ) -> Result<(), ApplyError> {
        if !(ancestor && knob == Knob::SubtreeControl && g.is_ancestor_of(&self.root)) {
            self.inside(g)?;
        }
        let key = (g.clone(), knob);
        if !self.created(g) && !self.undo.originals.contains_key(&key) {
            let r = self.cgroups.read_raw(g, knob);
            let original = self.checked(r)?;
            self.record(Entry::Original {
                group: g.clone(),
                knob,
                raw: original.clone(),
            })?;
            self.undo.originals.insert(key, original);
        }
        let r = self.cgroups.write_raw(g, knob, raw);
        self.checked(r)
    }

    /// Sets a knob of a group inside the owned subtree; returns what it was.
    pub fn set(&mut self, g: &Group, knob: Knob, v: Value) -> Result<Value, ApplyError> {
        self.inside(g)?;
        let r = self.cgroups.read(g, knob);
        let old = self.checked(r)?;
        if old != v {
            let raw = self.cgroups.encode(knob, v);
            self.set_raw(g, knob, &raw, false)?;
        }
        Ok(old)
    }

    pub fn read(&self, g: &Group, knob: Knob) -> Result<Value, CgroupError> {
        self.cgroups.read(g, knob)
    }

    /// Moves a process into a group of the owned subtree, remembering where it was. A
    /// process already inside the subtree (a child of a placed one) keeps its parent's
    /// origin, or the origin of the group it is in.
    pub fn place(&mut self, g: &Group, pid: u32) -> Result<(), ApplyError> {
        self.inside(g)?;
        let start = (self.start_of)(pid).ok_or(ApplyError::Process {
            pid,
            what: "is gone".into(),
        })?;
        let from = match self.undo.moved.get(&pid) {
            Some((s, from, _)) if *s == start => from.clone(),
            _ => {
                let r = self.cgroups.placement(pid);
                let here = self.checked(r)?;
                if self.is_ours(&here) {
                    self.origin_of_group(&here).unwrap_or_default()
                } else {
                    here
                }
            }
        };
        self.record(Entry::Moved {
            pid,
            start,
            to: g.clone(),
            from: from.clone(),
        })?;
        self.undo.moved.insert(pid, (start, from, g.clone()));
        let r = self.cgroups.place(g, pid);
        self.checked(r)
    }

    /// The directory of `g` in hierarchy `key`.
    fn dir_in(&self, g: &Group, key: &str) -> Option<PathBuf> {
        self.cgroups
            .dirs(g)
            .dirs
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, d)| d)
    }

    /// The (hierarchy, directory) of a placement that lies inside the owned subtree.
    fn ours<'p>(&self, p: &'p Placement) -> Option<&'p (String, PathBuf)> {
        p.dirs
            .iter()
            .find(|(k, d)| self.dir_in(&self.root, k).is_some_and(|r| d.starts_with(r)))
    }

    fn is_ours(&self, p: &Placement) -> bool {
        self.ours(p).is_some()
    }

    /// Where the processes of the group holding `p` came from.
    fn origin_of_group(&self, p: &Placement) -> Option<Placement> {
        let (k, dir) = self.ours(p)?;
        self.undo
            .moved
            .values()
            .find(|(_, _, to)| self.dir_in(to, k).as_deref() == Some(dir.as_path()))
            .map(|(_, from, _)| from.clone())
    }

    /// A process that exited is no longer Umbra's to move back.
    pub fn forget(&mut self, pid: u32) {
        self.undo.moved.remove(&pid);
    }

    /// Processes Umbra placed, by pid.
    pub fn placed(&self) -> impl Iterator<Item = (u32, &Group)> {
        self.undo.moved.iter().map(|(p, (_, _, g))| (*p, g))
    }

    pub fn freeze(&mut self, g: &Group, frozen: bool) -> Result<(), ApplyError> {
        self.inside(g)?;
        if frozen && !self.undo.frozen.contains(g) {
            self.record(Entry::Frozen { group: g.clone() })?;
            self.undo.frozen.insert(g.clone());
        }
        let r = self.cgroups.freeze(g, frozen);
        self.checked(r)?;
        if !frozen {
            self.undo.frozen.remove(g);
        }
        Ok(())
    }

    pub fn stats(&self, g: &Group) -> Result<GroupStats, CgroupError> {
        self.cgroups.stats(g)
    }

    pub fn procs(&self, g: &Group) -> Result<Vec<u32>, CgroupError> {
        self.cgroups.procs(g)
    }

    /// Removes a group Umbra created, once it is empty: its processes (if any) go back
    /// where their group's processes came from.
    pub fn remove(&mut self, g: &Group) -> Result<(), ApplyError> {
        self.inside(g)?;
        if !self.created(g) {
            return Ok(());
        }
        let r = self.cgroups.remove(g);
        self.checked(r)?;
        self.undo.created.retain(|c| c != g);
        self.undo.frozen.remove(g);
        self.record(Entry::Removed { group: g.clone() })
    }

    /// Puts everything back: processes where they came from, original settings, groups
    /// removed (deepest first). Continues past failures, which it reports.
    pub fn restore(&mut self) -> Restored {
        let mut r = Restored::default();
        let fail = |r: &mut Restored, what: String| {
            warn!(what, "Not restored");
            r.failures.push(what);
        };
        // Thaw first: frozen processes cannot be moved on every kernel.
        for g in std::mem::take(&mut self.undo.frozen) {
            if let Err(e) = self.cgroups.freeze(&g, false)
                && !e.is_gone()
            {
                fail(&mut r, format!("thaw {g}: {e}"));
            }
        }
        // Journaled processes back to their origins.
        let mut moved: Vec<_> = self.undo.moved.drain().collect();
        moved.sort_by_key(|(pid, _)| *pid);
        let origins: Vec<(Group, Placement)> = moved
            .iter()
            .map(|(_, (_, from, to))| (to.clone(), from.clone()))
            .collect();
        for (pid, (start, from, _)) in &moved {
            if (self.start_of)(*pid) != Some(*start) {
                continue; // exited, or the pid now belongs to someone else
            }
            let here = self.cgroups.placement(*pid).unwrap_or_default();
            if !here.dirs.is_empty() && !self.is_ours(&here) {
                continue; // someone moved it elsewhere meanwhile
            }
            match self.cgroups.put_back(*pid, from) {
                Ok(()) => r.processes += 1,
                Err(e) if e.is_gone() && (self.start_of)(*pid).is_none() => {}
                Err(e) => {
                    // Its old group is gone: out of the subtree at least, to the root.
                    let root = self.root_placement(&here);
                    match self.cgroups.put_back(*pid, &root) {
                        Ok(()) => {
                            r.processes += 1;
                            fail(
                                &mut r,
                                format!("process {pid}: {e}; moved to the root instead"),
                            );
                        }
                        Err(e2) => fail(&mut r, format!("process {pid}: {e}; {e2}")),
                    }
                }
            }
        }
        // Settings of groups Umbra did not create.
        let originals = std::mem::take(&mut self.undo.originals);
        // Controllers above the subtree last (children's settings depend on them).
        let (above, inside): (Vec<_>, Vec<_>) = originals
            .into_iter()
            .partition(|((g, _), _)| g.is_ancestor_of(&self.root));
        // Groups Umbra created, deepest first, emptied of processes Umbra did not journal
        // (children of placed processes), which follow their group's origin.
        let mut created = std::mem::take(&mut self.undo.created);
        created.sort_by_key(|g| std::cmp::Reverse(g.as_str().matches('/').count()));
        for ((g, knob), raw) in inside {
            if created.iter().any(|c| g.is_within(c)) {
                continue;
            }
            match self.cgroups.write_raw(&g, knob, &raw) {
                Ok(()) => r.settings += 1,
                Err(e) if e.is_gone() => {}
                Err(e) => fail(&mut r, format!("{g} {knob}: {e}")),
            }
        }
        for g in &created {
            let pids = self.cgroups.procs(g).unwrap_or_default();
            if !pids.is_empty() {
                let origin = origins
                    .iter()
                    .find(|(to, _)| to == g || to.is_within(g))
                    .map(|(_, from)| from.clone());
                for pid in pids {
                    let here = self.cgroups.placement(pid).unwrap_or_default();
                    let to = origin.clone().unwrap_or_else(|| self.root_placement(&here));
                    if let Err(e) = self.cgroups.put_back(pid, &to) {
                        let root = self.root_placement(&here);
                        if let Err(e2) = self.cgroups.put_back(pid, &root)
                            && !e2.is_gone()
                        {
                            fail(&mut r, format!("process {pid} in {g}: {e}; {e2}"));
                        }
                    } else {
                        r.processes += 1;
                    }
                }
            }
            match self.cgroups.remove(g) {
                Ok(()) => r.groups += 1,
                Err(e) => fail(&mut r, format!("remove {g}: {e}")),
            }
        }
        for ((g, knob), raw) in above.into_iter().rev() {
            match self.cgroups.write_raw(&g, knob, &raw) {
                Ok(()) => r.settings += 1,
                Err(e) => fail(&mut r, format!("{g} {knob}: {e}")),
            }
        }
        r
    }

    /// The hierarchy roots, as a placement (shaped like `like`).
    fn root_placement(&self, like: &Placement) -> Placement {
        let dirs = self
            .cgroups
            .dirs(&Group::ROOT)
            .dirs
            .into_iter()
            .filter(|(k, _)| like.dirs.is_empty() || like.dirs.iter().any(|(k2, _)| k2 == k))
            .collect();
        Placement { dirs }
    }

    /// Puts everything back and deletes the journal (a clean shutdown).
    pub fn shutdown(mut self) -> Restored {
        let r = self.restore();
        if r.failures.is_empty()
            && let Some(j) = self.journal.take()
            && let Err(e) = j.finish()
        {
            warn!(error = %e, "Journal not removed");
        }
        r
    }
}

pub fn errno_name(n: i32) -> String {
    match n {
        libc::EINVAL => "EINVAL".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::ENOSPC => "ENOSPC".into(),
        libc::EROFS => "EROFS".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::ESRCH => "ESRCH".into(),
        libc::EACCES => "EACCES".into(),
        libc::EPERM => "EPERM".into(),
        libc::ERANGE => "ERANGE".into(),
        libc::EOPNOTSUPP => "EOPNOTSUPP".into(),
        n => format!("errno {n}"),
    }
}
