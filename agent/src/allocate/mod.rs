//! Allocate: predictions become cgroup settings before demand arrives, and each new
//! request gets its own reservation as it starts — safely, explainably, reversibly.
//!
//! [`Allocator`] is the stage's synchronous core: [`tick`](Allocator::tick) with each
//! interval's capture tick, window and forecasts; [`on_exec`](Allocator::on_exec) with
//! each exec as it happens (and its per-request prediction, when there is one);
//! [`shutdown`](Allocator::shutdown) to put everything back. It returns [`Decision`]s,
//! each explained, whether written or not.
//!
//! - [`cgroups`]: the cgroup filesystem behind one trait (v2, v1, a temp-dir fake).
//! - [`decide`]: the pure decision, forecasts and state in, explained actions out.
//! - [`tiers`]: forecasts scored against usage; tiers earned and lost; margins adapted.
//! - [`earned`]: tier records and held-back verdicts that outlive workloads and the agent.
//! - [`apply`]: the journaled applier, the only path to the cgroup tree, and restore.
//! - [`journal`]: the write-ahead journal on disk.
//! - [`control`]: the mode and priorities the fleet sets, persisted.
//! - [`config`]: `[allocate]`, the opt-in rules.
//!
//! Layout of the owned subtree (`umbra.slice/` on v2, `umbra/` in each v1 controller):
//! one group per managed executable, `<name>-<hash of its path>/`, whose reservation
//! covers all its processes; inside it `base/` holds the processes moved in, and
//! `req-<pid>/` each request placed on its own.

pub mod apply;
pub mod cgroups;
pub mod config;
pub mod control;
pub mod decide;
pub mod earned;
pub mod egress;

pub mod journal;
pub mod launch;
pub mod request;
pub mod tiers;
pub mod warm;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::{Path, PathBuf},
};

pub use control::Mode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use tiers::Tier;
use tracing::{debug, info, trace, warn};

use self::{
    apply::{Applier, ApplyError, Faults, Restored},
    cgroups::{Cgroups, Group, GroupStats, Knob, Value, dir_name},
    config::{AllocateConfig, Candidate, HoldMode, Matcher, uid_of},
    control::{Control, Tier as Priority},
    decide::{Action, RecentPeak, State, WorkloadState, basis, decide},
    earned::Earned,
    request::{reservation, was_held_back},
    tiers::{Basis, Margins, Outcome, Record, TierChange},
};
use crate::{
    FastMap,
    aggregate::{Aggregator, GroupBy, Window, WorkloadId},
    capture::{Lifecycle, LifecycleKind, Tick},
    predict::{Band, Forecast, RequestPrediction, Target},
};

/// Ticks a managed group stays after its last process, before it is removed.
const LINGER_TICKS: u32 = 5;
/// Exec → placed latencies kept for the percentiles.
const LATENCIES: usize = 4096;

/// Whether `limits` hold a request back: a CPU cap or a memory limit.
fn hard(limits: &[(Knob, Value)]) -> bool {
    limits
        .iter()
        .any(|(k, _)| matches!(k, Knob::CpuMax | Knob::MemoryHigh | Knob::MemoryMax))
}

#[derive(Debug, thiserror::Error)]
pub enum AllocateError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("allocation needs a cgroup hierarchy: {0}")]
    NoBackend(String),
}

/// Something the stage decided, explained: for `umbra run --explain` and the fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decision {
    /// A knob of a workload's group.
    Set {
        action: Action,
        /// Written to the cgroup (enforce mode, a tier that writes, and it succeeded).
        written: bool,
        error: Option<String>,
    },
    /// A workload's tier changed.
    Tier {
        workload: WorkloadId,
        name: String,
        change: TierChange,
    },
    /// A process placed into a group (a request on exec, or a workload's process).
    Place {
        pid: u32,
        name: String,
        group: Group,
        /// The request's own limits, and what they came from.
        limits: Vec<(Knob, Value)>,
        source: String,
        /// Exec → placed, µs (requests placed on exec).
        latency_us: Option<u64>,
        /// Exec → seen by the allocator, µs (the rest of `latency_us` is the kernel's
        /// move: one RCU grace period unless the hierarchy favours dynamic changes).
        seen_us: Option<u64>,
        written: bool,
        error: Option<String>,
    },
    /// A request whose prediction did not fit, held.
    Hold {
        pid: u32,
        name: String,
        group: Group,
        hold: HoldMode,
        reason: String,
    },
    /// A held request released.
    Release {
        pid: u32,
        name: String,
        group: Group,
        held_ms: u64,
        reason: String,
    },
    /// A workload's egress rate (bytes per second; `None`: no limit).
    Egress {
        name: String,
        group: Group,
        old: Option<u64>,
        new: Option<u64>,
        /// The network band behind it (bytes per second, over the lead steps).
        band: Band,
        written: bool,
        error: Option<String>,
    },
}

impl Decision {
    /// `set`, `tier`, `place`, `hold` or `release`.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Set { .. } => "set",
            Decision::Tier { .. } => "tier",
            Decision::Place { .. } => "place",
            Decision::Hold { .. } => "hold",
            Decision::Release { .. } => "release",
            Decision::Egress { .. } => "egress",
        }
    }

    pub fn text(&self) -> String {
        match self {
            Decision::Set {
                action,
                written,
                error,
            } => {
                let mut s = action.text();
                if let Some(e) = error {
                    s.push_str(&format!(" — FAILED: {e}"));
                } else if !written && action.write {
                    s.push_str(" (dry-run)");
                }
                s
            }
            Decision::Tier { name, change, .. } => format!(
                "{name} tier {} -> {}: {} (coverage {:.0}%, error {:.0}%)",
                change.from.name(),
                change.to.name(),
                change.reason,
                change.coverage * 100.0,
                change.error * 100.0
            ),
            Decision::Place {
                pid,
                name,
                group,
                limits,
                source,
                latency_us,
                seen_us,
                written,
                error,
            } => {
                let l: Vec<String> = limits
                    .iter()
                    .map(|(k, v)| format!("{k} {}", v.show(*k)))
                    .collect();
                let mut s = if *pid == 0 {
                    format!("{name} (umbra exec) -> {group}")
                } else {
                    format!("{name} pid {pid} -> {group}")
                };
                if !l.is_empty() {
                    s.push_str(&format!(" with {} ({source})", l.join(", ")));
                }
                if let Some(us) = latency_us {
                    s.push_str(&format!(", placed {us} µs after exec"));
                    if let Some(seen) = seen_us {
                        s.push_str(&format!(" (seen at {seen} µs)"));
                    }
                }
                if let Some(e) = error {
                    s.push_str(&format!(" — FAILED: {e}"));
                } else if !written {
                    s.push_str(" (dry-run)");
                }
                s
            }
            Decision::Hold {
                pid,
                name,
                group,
                hold,
                reason,
            } => format!(
                "{name} pid {pid} in {group} held ({}): {reason}",
                match hold {
                    HoldMode::Freeze => "frozen",
                    HoldMode::LowWeight => "low weight",
                }
            ),
            Decision::Release {
                pid,
                name,
                group,
                held_ms,
                reason,
            } => format!("{name} pid {pid} in {group} released after {held_ms} ms: {reason}"),
            Decision::Egress {
                name,
                group,
                old,
                new,
                band,
                written,
                error,
            } => {
                let rate = |r: &Option<u64>| match r {
                    Some(b) => format!("{}/s", crate::trace::bytes(*b)),
                    None => "max".into(),
                };
                let mut s = format!(
                    "{name} {group} egress {} -> {}: network p10 {}/s p50 {}/s p90 {}/s",
                    rate(old),
                    rate(new),
                    crate::trace::bytes(band.p10 as u64),
                    crate::trace::bytes(band.p50 as u64),
                    crate::trace::bytes(band.p90 as u64),
                );
                if let Some(e) = error {
                    s.push_str(&format!(" — FAILED: {e}"));
                } else if !written {
                    s.push_str(" (dry-run)");
                }
                s
            }
        }
    }
}

/// A group made ready for a process `umbra exec` is about to start.
#[derive(Clone, Debug)]
pub struct Reservation {
    pub group: Group,
    /// How the launcher puts its child into the group before its first instruction.
    pub target: cgroups::ExecTarget,
    pub limits: Vec<(Knob, Value)>,
    /// The group is frozen (admission): the child starts held until capacity frees.
    pub held: bool,
    pub decisions: Vec<Decision>,
}

/// Counters of the stage, for status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocateStats {
    pub mode: String,
    pub backend: String,
    pub managed: u32,
    pub by_tier: BTreeMap<String, u32>,
    pub writes: u64,
    pub write_failures: u64,
    pub placed: u64,
    pub requests: u64,
    pub holds: u64,
    pub released_fit: u64,
    pub released_timeout: u64,
    /// Exec → placed with limits, µs: p50 and p99 of the recent ones.
    pub exec_to_placed_p50_us: Option<u64>,
    pub exec_to_placed_p99_us: Option<u64>,
    pub faults: Faults,
}

struct Request {
    pid: u32,
    name: String,
    group: Group,
    parent: Group,
    /// Reserved cores and bytes (for admission).
    cores: f64,
    bytes: f64,
    held_since_ms: Option<u64>,
    hold: HoldMode,
    /// Ticks since its group emptied.
    idle: u32,
    /// Its executable's key (`exe:…`; empty without a prediction), and whether hard limits
    /// were written for it (then its group's counters say, when it ends, whether they held
    /// it back), since when, ms.
    key: String,
    hard: bool,
    placed_ms: u64,
}

struct Managed {
    state: WorkloadState,
    record: Record,
    /// Its record was kept from before (its processes' last run): said at the next tick.
    restored: Option<TierChange>,
    rule: usize,
    /// Live processes seen in the last tick: pid → start ns.
    pids: HashMap<u32, u64>,
    /// What the previous tick's reservation was made from.
    last: Option<Basis>,
    peak: RecentPeak,
    last_stats: Option<GroupStats>,
    created: bool,
    idle: u32,
}

/// The stage.
pub struct Allocator {
    cfg: AllocateConfig,
    matchers: Vec<Matcher>,
    applier: Option<Applier>,
    no_backend: Option<String>,
    mode: Mode,
    root: Group,
    namer: Aggregator,
    managed: BTreeMap<Group, Managed>,
    /// (tgid, start ns) → its managed group, or `None` (not opted in).
    seen: FastMap<(u32, u64), Option<Group>>,
    /// pid → the group Umbra put it in.
    placed: FastMap<u32, Group>,
    requests: BTreeMap<u32, Request>,
    /// Retired workloads' tier records, and per executable whether the kernel held back
    /// each of its last requests placed with hard limits (throttled, or reclaimed at
    /// `memory.high`) — what its requests' predictions cannot see, their usage capped
    /// ([`Allocator::request_tier`]); kept on disk.
    earned: Earned,
    held: VecDeque<u32>,
    stats: AllocateStats,
    latencies: VecDeque<u64>,
    now_ms: u64,
    interval_ms: u32,
    cpus: f64,
    memory_bytes: u64,
    own_pid: u32,
    /// The egress limiter, where a rule limits egress; and the rate each group has.
    egress: Option<Box<dyn egress::Egress>>,
    egress_attached: bool,
    egress_rates: BTreeMap<Group, u64>,
    /// Groups made for `umbra exec` so far (their names).
    launched: u64,
    /// A mode the stage could not enter (not tried again until asked again).
    refused: Option<Mode>,
    /// Processes are this machine's (a live capture): `/proc` may be read for them. A
    /// replay's pids name other processes, so it never does.
    live: bool,
    /// Keeps moves fast after each placed exec (`allocate::warm`), where it runs.
    warmer: Option<warm::Warmer>,
}

/// Where the journal lives.
pub fn state_dir(cfg: &AllocateConfig, publish_state_dir: &Path) -> PathBuf {
    cfg.state_dir
        .clone()
        .unwrap_or_else(|| publish_state_dir.join("allocate"))
}

/// A managed executable's group: its name and a hash of its path.
pub fn group_for(root: &Group, exe: &str) -> Group {
    let base = exe.rsplit('/').next().unwrap_or(exe);
    let h = Sha256::digest(exe.as_bytes());
    let hex: String = h[..4].iter().map(|b| format!("{b:02x}")).collect();
    root.child(&format!("{}-{hex}", dir_name(base)))
}

fn boot_ns() -> u64 {
    crate::capture::procfs::boot_ns()
}

impl Allocator {
    /// Starts the stage on this machine's cgroups: puts back what a killed run left
    /// (from the journal in `state_dir`) before anything else. Without a usable cgroup
    /// hierarchy the stage still decides and explains, and refuses to enforce.
    pub fn start(
        cfg: &AllocateConfig,
        group_by: GroupBy,
        state_dir: &Path,
        mode: Mode,
    ) -> Result<(Allocator, Option<Restored>), AllocateError> {
        match cgroups::detect(cfg.backend) {
            Ok(b) => Allocator::with_backend(cfg, group_by, b, state_dir, mode, apply::start_time),
            Err(e) => {
                warn!(error = %e, "No cgroup hierarchy: allocation decides and explains only");
                let mut a = Allocator::new(cfg, group_by, None, Group::ROOT);
                a.no_backend = Some(e.to_string());
                Ok((a, None))
            }
        }
    }

    /// The stage on a given backend (a fake in tests, with its own process clock).
    pub fn with_backend(
        cfg: &AllocateConfig,
        group_by: GroupBy,
        backend: Box<dyn Cgroups>,
        state_dir: &Path,
        mode: Mode,
        start_of: fn(u32) -> Option<u64>,
    ) -> Result<(Allocator, Option<Restored>), AllocateError> {
        let root = Group::new(&match backend.backend() {
            cgroups::Backend::V1 => cfg.root_for_v1(),
            _ => cfg.root_for_v2(),
        })
        .unwrap_or_default();
        info!(backend = backend.describe(), root = %root, "Cgroups");
        let mut warmer = None;
        let mounts = cgroups::Mounts::read();
        if cfg.workload.iter().any(|w| w.per_request)
            && backend.backend() != cgroups::Backend::Fake
            && !mounts.favordynmods
        {
            let window = cfg.request.warm_ms;
            warmer = (window > 0)
                .then(|| warm::Warmer::start(window, &mounts))
                .and_then(|w| w.map_err(|e| info!(error = %e, "Moves not kept fast")).ok());
            match &warmer {
                Some(w) => info!(
                    path = %w.path().display(),
                    window_ms = window,
                    "No cgroup hierarchy is mounted with favordynmods: after each placed exec, \
                     moves are kept fast for the window (the agent's own pid written into its \
                     own cgroup every few ms); the first exec of a burst waits for an RCU grace \
                     period (milliseconds)"
                ),
                None => info!(
                    "Requests are placed after their exec in one RCU grace period \
                     (milliseconds): no cgroup hierarchy is mounted with favordynmods \
                     (cgroup_favordynmods=true on the kernel command line, or remount with -o \
                     favordynmods); umbra exec starts its command inside its group"
                ),
            }
        }
        let (applier, restored) =
            Applier::open_with(backend, root.clone(), &state_dir.join("journal"), start_of)?;
        let mut a = Allocator::new(cfg, group_by, Some(applier), root);
        a.warmer = warmer;
        let (earned, problem) = Earned::open(state_dir);
        if let Some(e) = problem {
            warn!(error = %e, "Earned tiers and held-back verdicts not read");
        }
        a.earned = earned;
        // The node's size before the first window (a request may come first).
        let node = crate::capture::procfs::node_stats();
        a.cpus = node.cpus as f64;
        a.memory_bytes = node.mem_total_bytes;
        a.set_mode(mode)?;
        Ok((a, restored))
    }

    fn new(
        cfg: &AllocateConfig,
        group_by: GroupBy,
        applier: Option<Applier>,
        root: Group,
    ) -> Allocator {
        Allocator {
            cfg: cfg.clone(),
            matchers: cfg.workload.iter().map(Matcher::new).collect(),
            applier,
            no_backend: None,
            mode: Mode::DryRun,
            root,
            namer: Aggregator::new(group_by, 1000),
            managed: BTreeMap::new(),
            seen: FastMap::default(),
            placed: FastMap::default(),
            requests: BTreeMap::new(),
            earned: Earned::default(),
            held: VecDeque::new(),
            stats: AllocateStats::default(),
            latencies: VecDeque::new(),
            now_ms: 0,
            interval_ms: 1000,
            cpus: 0.0,
            memory_bytes: 0,
            own_pid: std::process::id(),
            refused: None,
            launched: 0,
            egress: None,
            egress_attached: false,
            egress_rates: BTreeMap::new(),
            live: true,
            warmer: None,
        }
    }

    /// The stage for a recording (a replay, `umbra simulate`): decides and explains, never
    /// touches a cgroup or this machine's `/proc`.
    pub fn offline(cfg: &AllocateConfig, group_by: GroupBy) -> Allocator {
        let mut a = Allocator::new(cfg, group_by, None, Group::ROOT);
        a.no_backend = Some("a recording is replayed: nothing is written".into());
        a.live = false;
        a
    }

    fn setup(&mut self) -> Result<(), AllocateError> {
        match &mut self.applier {
            Some(a) => Ok(a.setup()?),
            None => Err(AllocateError::NoBackend(
                self.no_backend.clone().unwrap_or_default(),
            )),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Enters or leaves enforce mode: entering creates the subtree, leaving puts
    /// everything back. (The mode itself is kept by [`Control`].)
    pub fn set_mode(&mut self, m: Mode) -> Result<(), AllocateError> {
        if m == Mode::Enforce && self.applier.is_none() {
            return Err(AllocateError::NoBackend(
                self.no_backend.clone().unwrap_or_default(),
            ));
        }
        if m == self.mode {
            return Ok(());
        }
        match m {
            Mode::Enforce => {
                self.setup()?;
                // Rates decided in dry-run were never set.
                self.egress_rates.clear();
            }
            Mode::DryRun => self.put_back_all(),
        }
        self.mode = m;
        Ok(())
    }

    /// Follows the mode the fleet set; a failure to enter enforce mode is logged (once)
    /// and the stage stays in dry-run.
    fn follow(&mut self, control: &Control) {
        if control.mode() != self.mode
            && self.refused != Some(control.mode())
            && let Err(e) = self.set_mode(control.mode())
        {
            warn!(error = %e, "Allocation stays in dry-run");
            self.refused = Some(control.mode());
        }
        if control.mode() == self.mode {
            self.refused = None;
        }
    }

    /// Workloads whose forecast error drifts (the anomaly detector's verdict): each
    /// managed one goes back to the shadow tier and stays there while it drifts.
    pub fn drifting(&mut self, ids: &[WorkloadId]) -> Vec<Decision> {
        let mut out = Vec::new();
        if ids.is_empty() {
            return out;
        }
        let tiers = &self.cfg.tiers;
        for m in self.managed.values_mut() {
            if !ids.contains(&m.state.workload) {
                continue;
            }
            if let Some(change) = m.record.drifting(tiers) {
                info!(
                    workload = m.state.name,
                    from = change.from.name(),
                    reason = change.reason,
                    "Tier"
                );
                m.state.tier = m.record.tier;
                out.push(Decision::Tier {
                    workload: m.state.workload.clone(),
                    name: m.state.name.clone(),
                    change,
                });
            }
        }
        out
    }

    /// The managed workloads' state: tier, what their groups have now.
    pub fn workloads(&self) -> impl Iterator<Item = &WorkloadState> {
        self.managed.values().map(|m| &m.state)
    }

    pub fn root(&self) -> &Group {
        &self.root
    }

    pub fn cgroups(&self) -> Option<&dyn Cgroups> {
        self.applier.as_ref().map(|a| a.cgroups())
    }

    pub fn stats(&self) -> AllocateStats {
        let mut s = self.stats.clone();
        s.mode = self.mode.name().into();
        s.backend = match &self.applier {
            Some(a) => a.backend().name().into(),
            None => "none".into(),
        };
        s.managed = self.managed.len() as u32;
        s.by_tier.clear();
        for m in self.managed.values() {
            *s.by_tier.entry(m.record.tier.name().into()).or_default() += 1;
        }
        if let Some(a) = &self.applier {
            s.faults = a.faults.clone();
        }
        let mut l: Vec<u64> = self.latencies.iter().copied().collect();
        l.sort_unstable();
        let q = |p: f64| {
            l.get(((l.len() as f64 - 1.0) * p).round() as usize)
                .copied()
        };
        s.exec_to_placed_p50_us = q(0.5);
        s.exec_to_placed_p99_us = q(0.99);
        s
    }

    /// Exec → placed latencies recorded so far, µs.
    pub fn latencies_us(&self) -> Vec<u64> {
        self.latencies.iter().copied().collect()
    }

    /// The managed group of a process, when a rule opts it in.
    fn classify(
        &mut self,
        tgid: u32,
        start_ns: u64,
        exe: Option<&str>,
        cgroup: Option<&str>,
    ) -> Option<(Group, usize)> {
        if tgid == self.own_pid || tgid <= 1 {
            return None;
        }
        let exe = exe?;
        let mut uid = None;
        for (i, m) in self.matchers.iter().enumerate() {
            if m.needs_uid() && uid.is_none() && self.live {
                uid = uid_of(tgid);
            }
            let c = Candidate {
                exe: Some(exe),
                cgroup,
                uid,
            };
            if m.matches(&c) {
                let g = group_for(&self.root, exe);
                debug!(tgid, start_ns, exe, rule = i, group = %g, "Opted in");
                return Some((g, i));
            }
        }
        trace!(tgid, exe, "Not opted in");
        None
    }

    fn managed_entry(&mut self, g: &Group, rule: usize, name: &str) -> &mut Managed {
        let margin = self.cfg.rules.margin;
        let tiers = &self.cfg.tiers;
        let priority = self
            .cfg
            .workload
            .get(rule)
            .and_then(|r| r.priority)
            .unwrap_or(Priority::Normal);
        let kept = if self.managed.contains_key(g) {
            None
        } else {
            self.earned.take(g, self.now_ms, tiers)
        };
        let (record, restored) = match kept {
            Some(k) => {
                info!(
                    workload = name,
                    tier = k.record.tier.name(),
                    retired_s = k.age_ms / 1000,
                    probation = k.probation,
                    "Tier record kept from before"
                );
                let change = (k.record.tier > Tier::Shadow).then(|| TierChange {
                    from: Tier::Shadow,
                    to: k.record.tier,
                    coverage: k.record.coverage(),
                    error: k.record.error(),
                    reason: k.reason(),
                });
                (k.record, change)
            }
            None => (Record::new(tiers, margin), None),
        };
        self.managed.entry(g.clone()).or_insert_with(|| {
            let mut state = WorkloadState::new(WorkloadId::default(), name, g.clone());
            state.priority = priority;
            state.cpu_margin = margin;
            state.memory_margin = margin;
            Managed {
                state,
                record,
                restored,
                rule,
                pids: HashMap::new(),
                last: None,
                peak: RecentPeak::default(),
                last_stats: None,
                created: false,
                idle: 0,
            }
        })
    }

    fn max_tier(&self, m: &Managed) -> Tier {
        self.cfg
            .workload
            .get(m.rule)
            .and_then(|r| r.max_tier)
            .unwrap_or(Tier::Full)
    }

    /// One interval: processes opted in are found (and, in enforce mode, moved into
    /// their group), forecasts are scored, the decision is made and applied.
    pub fn tick(
        &mut self,
        t: &Tick,
        w: &Window,
        forecasts: &[Forecast],
        control: &Control,
    ) -> Vec<Decision> {
        self.follow(control);
        let mut out = Vec::new();
        self.now_ms = w.node.timestamp_ms;
        self.interval_ms = w.node.interval_ms.max(1);
        self.cpus = w.node.cpus as f64;
        self.memory_bytes = w.node.mem_total_bytes;
        // Which processes are managed, and where they belong.
        for m in self.managed.values_mut() {
            m.pids.clear();
        }
        for s in &t.samples {
            let key = (s.tgid, s.start_ns);
            if s.exit.is_some() {
                self.seen.remove(&key);
                if self.placed.remove(&s.tgid).is_some()
                    && let Some(a) = &mut self.applier
                {
                    a.forget(s.tgid);
                }
                continue;
            }
            if !self.seen.contains_key(&key) {
                let c = self.classify(s.tgid, s.start_ns, s.exe.as_deref(), s.cgroup.as_deref());
                let g = c.as_ref().map(|(g, _)| g.clone());
                if let Some((g, rule)) = c {
                    let (id, name) = self.namer.workload(s);
                    let m = self.managed_entry(&g, rule, &name);
                    m.state.workload = id;
                }
                if self.seen.len() > 65_536 {
                    self.seen.clear();
                }
                self.seen.insert(key, g);
            }
            // Most processes are not opted in: one lookup, no copy.
            if let Some(Some(g)) = self.seen.get(&key)
                && let Some(m) = self.managed.get_mut(g)
            {
                m.pids.insert(s.tgid, s.start_ns);
                if m.state.workload.0.is_empty() {
                    m.state.workload = self.namer.workload(s).0;
                }
            }
        }
        let points: HashMap<&WorkloadId, &crate::aggregate::ShadowPoint> =
            w.points.iter().map(|p| (&p.workload, p)).collect();
        let enforce = self.mode == Mode::Enforce && self.applier.is_some();
        // Usage, feedback, scoring.
        let groups: Vec<Group> = self.managed.keys().cloned().collect();
        for g in &groups {
            let stats = match (&self.applier, enforce) {
                (Some(a), true) if self.managed.get(g).is_some_and(|m| m.created) => {
                    match a.stats(g) {
                        Ok(s) => Some(s),
                        Err(e) if e.is_gone() => {
                            // Someone removed the group: made again, processes placed again.
                            warn!(group = %g, "Managed group vanished; making it again");
                            if let Some(m) = self.managed.get_mut(g) {
                                m.created = false;
                                m.state.applied.clear();
                                m.last_stats = None;
                            }
                            self.placed.retain(|_, pg| !pg.is_within(g));
                            None
                        }
                        Err(_) => None,
                    }
                }
                _ => None,
            };
            let max = self
                .managed
                .get(g)
                .map(|m| self.max_tier(m))
                .unwrap_or(Tier::Full);
            let priority = self.managed.get(g).map(|m| {
                let id = m.state.workload.0.as_str();
                control
                    .tiers()
                    .find(|(w, _)| *w == id)
                    .map(|(_, t)| t)
                    .or_else(|| self.cfg.workload.get(m.rule).and_then(|r| r.priority))
                    .unwrap_or(Priority::Normal)
            });
            let secs = self.interval_ms as f64 / 1000.0;
            let (tiers, margins) = (&self.cfg.tiers, Margins::of(&self.cfg.rules));
            let Some(m) = self.managed.get_mut(g) else {
                continue;
            };
            if let Some(p) = priority {
                m.state.priority = p;
            }
            let (cpu, mem) = points
                .get(&m.state.workload)
                .map(|p| (Target::Cpu.of(p), Target::Memory.of(p)))
                .unwrap_or((0.0, 0.0));
            m.state.cpu_cores = cpu;
            m.state.memory_bytes = mem as u64;
            (m.state.cpu_peak, m.state.memory_peak) =
                m.peak.push(cpu, mem, self.cfg.rules.peak_intervals);
            let mut o = Outcome {
                cpu_cores: cpu,
                memory_bytes: mem,
                seconds: secs,
                cpu_capped: m.state.value(Knob::CpuMax) != Value::Max,
                memory_capped: m.state.value(Knob::MemoryHigh) != Value::Max,
                ..Outcome::default()
            };
            if let Some(st) = &stats {
                if let Some(prev) = &m.last_stats {
                    o.throttled_s = st.throttled_us.saturating_sub(prev.throttled_us) as f64 / 1e6;
                    o.memory_high_events = st
                        .memory_high_events
                        .saturating_sub(prev.memory_high_events);
                    o.memory_stall_s = st
                        .memory_pressure_us
                        .unwrap_or(0)
                        .saturating_sub(prev.memory_pressure_us.unwrap_or(0))
                        as f64
                        / 1e6;
                    o.oom_kills = st.oom_kill.saturating_sub(prev.oom_kill);
                }
                m.last_stats = Some(st.clone());
            }
            if o.oom_kills > 0 {
                // VPA-like: the next memory reservation ×1.2 per OOM kill.
                m.state.memory_bump *= 1.2f64.powi(o.oom_kills.min(10) as i32);
            } else {
                m.state.memory_bump = 1.0 + (m.state.memory_bump - 1.0) * 0.99;
            }
            if let Some(change) = m.restored.take() {
                out.push(Decision::Tier {
                    workload: m.state.workload.clone(),
                    name: m.state.name.clone(),
                    change,
                });
            }
            if let Some(basis) = m.last {
                let change = m.record.observe(tiers, margins, basis, &o, max);
                if let Some(change) = change {
                    info!(
                        workload = m.state.name,
                        from = change.from.name(),
                        to = change.to.name(),
                        reason = change.reason,
                        "Tier"
                    );
                    out.push(Decision::Tier {
                        workload: m.state.workload.clone(),
                        name: m.state.name.clone(),
                        change,
                    });
                }
            }
            m.state.tier = m.record.tier;
            m.state.memory_hard = m.record.memory_hard(tiers);
            m.state.cpu_margin = m.record.cpu_margin;
            m.state.memory_margin = m.record.memory_margin;
            m.state.memory_quantile = m.record.memory_quantile;
        }
        // Remember what this tick's reservations are made from, for the next scoring.
        let by_id: HashMap<&WorkloadId, &Forecast> =
            forecasts.iter().map(|f| (&f.workload, f)).collect();
        let rules = &self.cfg.rules;
        for m in self.managed.values_mut() {
            m.last = by_id
                .get(&m.state.workload)
                .and_then(|f| basis(f, rules, &m.state));
        }
        if enforce {
            self.place_new(&mut out);
        }
        // Decide over every managed workload with processes.
        let state = State {
            now_ms: self.now_ms,
            cpus: self.cpus,
            memory_bytes: self.memory_bytes,
            workloads: self
                .managed
                .values()
                .filter(|m| !m.pids.is_empty())
                .map(|m| m.state.clone())
                .collect(),
            unsupported: Knob::SETTINGS
                .into_iter()
                .filter(|k| self.cgroups().is_some_and(|c| !c.supports(*k)))
                .collect(),
        };
        let actions = decide(forecasts, &state, &self.cfg.rules);
        for a in actions {
            out.push(self.apply_action(a, enforce));
        }
        self.egress_tick(forecasts, enforce, &mut out);
        self.requests_tick(&mut out, enforce);
        self.retire_idle(enforce);
        out
    }

    /// Gives the stage an egress limiter (where a rule limits egress).
    pub fn set_egress(&mut self, e: Box<dyn egress::Egress>) {
        self.egress = Some(e);
    }

    /// The predicted network rate as each egress-limited workload's bucket (at the full
    /// tier; below it, no limit): p90 over the lead steps × (1 + egress.margin), changes
    /// within the deadband kept.
    fn egress_tick(&mut self, forecasts: &[Forecast], enforce: bool, out: &mut Vec<Decision>) {
        let by_id: HashMap<&WorkloadId, &Forecast> =
            forecasts.iter().map(|f| (&f.workload, f)).collect();
        let groups: Vec<Group> = self
            .managed
            .iter()
            .filter(|(_, m)| self.cfg.workload.get(m.rule).is_some_and(|r| r.egress))
            .map(|(g, _)| g.clone())
            .collect();
        for g in groups {
            let Some(m) = self.managed.get(&g) else {
                continue;
            };
            let band = by_id
                .get(&m.state.workload)
                .and_then(|f| decide::lead_band(f.of(Target::Net), self.cfg.rules.lead_steps));
            let old = self.egress_rates.get(&g).copied();
            let new = match (m.record.tier, band) {
                (Tier::Full, Some(b)) if !m.pids.is_empty() => Some(
                    egress::bucket(
                        b.p90 * (1.0 + self.cfg.egress.margin),
                        self.cfg.egress.min_bytes_per_s,
                        self.cfg.egress.burst_ms,
                    )
                    .0,
                ),
                _ => None,
            };
            let within = match (old, new) {
                (Some(o), Some(n)) => {
                    (n as f64 - o as f64).abs() <= self.cfg.rules.deadband * o as f64
                }
                (None, None) => true,
                _ => false,
            };
            if within {
                continue;
            }
            let name = m.state.name.clone();
            let mut d = Decision::Egress {
                name,
                group: g.clone(),
                old,
                new,
                band: band.unwrap_or_default(),
                written: false,
                error: None,
            };
            if enforce && m.created {
                let r = self.write_egress(&g, new);
                if let Decision::Egress { written, error, .. } = &mut d {
                    *written = r.is_ok();
                    *error = r.err();
                }
            } else if !enforce {
                // Dry-run: the rate decided, so that the deadband applies to the next.
                match new {
                    Some(r) => self.egress_rates.insert(g.clone(), r),
                    None => self.egress_rates.remove(&g),
                };
            }
            out.push(d);
        }
    }

    fn write_egress(&mut self, g: &Group, rate: Option<u64>) -> Result<(), String> {
        let dir = self
            .cgroups()
            .and_then(|c| c.cgroup2_dir(g))
            .ok_or("no cgroup2 mount to attach the egress limiter to")?;
        let root_dir = self
            .cgroups()
            .and_then(|c| c.cgroup2_dir(&self.root))
            .ok_or("no cgroup2 mount")?;
        let e = self
            .egress
            .as_mut()
            .ok_or("the egress limiter did not load (see the agent's problems)")?;
        if !self.egress_attached {
            let level = g.as_str().split('/').count() as u32;
            e.attach(&root_dir, level).map_err(|e| e.to_string())?;
            self.egress_attached = true;
        }
        match rate {
            Some(r) => {
                let (r, burst) = egress::bucket(
                    r as f64,
                    self.cfg.egress.min_bytes_per_s,
                    self.cfg.egress.burst_ms,
                );
                e.set(&dir, r, burst).map_err(|e| e.to_string())?;
                self.egress_rates.insert(g.clone(), r);
            }
            None => {
                e.clear(&dir).map_err(|e| e.to_string())?;
                self.egress_rates.remove(g);
            }
        }
        Ok(())
    }

    /// Every bucket removed and the limiter detached.
    fn egress_off(&mut self) {
        if let Some(e) = self.egress.as_mut() {
            e.detach();
        }
        self.egress_attached = false;
        self.egress_rates.clear();
    }

    /// Moves processes of managed workloads that are not yet in their group.
    fn place_new(&mut self, out: &mut Vec<Decision>) {
        let Some(a) = self.applier.as_mut() else {
            return;
        };
        for (g, m) in self.managed.iter_mut() {
            if m.pids.is_empty() {
                continue;
            }
            if !m.created {
                let made = a
                    .ensure(&self.root, true)
                    .and_then(|_| a.ensure(g, true))
                    .and_then(|_| a.ensure(&g.child("base"), false));
                match made {
                    Ok(()) => m.created = true,
                    Err(e) => {
                        warn!(group = %g, error = %e, "Group not created");
                        continue;
                    }
                }
            }
            let base = g.child("base");
            let mut pids: Vec<u32> = m.pids.keys().copied().collect();
            pids.sort_unstable();
            for pid in pids {
                if self.placed.contains_key(&pid) {
                    continue;
                }
                let r = a.place(&base, pid);
                let error = r.as_ref().err().map(|e| e.to_string());
                if r.is_ok() {
                    self.placed.insert(pid, base.clone());
                    self.stats.placed += 1;
                } else {
                    // Gone, or refused: not retried until it shows up as new.
                    self.placed.insert(pid, base.clone());
                }
                out.push(Decision::Place {
                    pid,
                    name: m.state.name.clone(),
                    group: base.clone(),
                    limits: Vec::new(),
                    source: "workload".into(),
                    latency_us: None,
                    seen_us: None,
                    written: error.is_none(),
                    error,
                });
            }
        }
    }

    fn apply_action(&mut self, a: Action, enforce: bool) -> Decision {
        if !(enforce && a.write) {
            return Decision::Set {
                action: a,
                written: false,
                error: None,
            };
        }
        let Some(ap) = self.applier.as_mut() else {
            return Decision::Set {
                action: a,
                written: false,
                error: None,
            };
        };
        let Some(m) = self.managed.get_mut(&a.group) else {
            return Decision::Set {
                action: a,
                written: false,
                error: Some("group not managed".into()),
            };
        };
        if !m.created {
            return Decision::Set {
                action: a,
                written: false,
                error: Some("group not created".into()),
            };
        }
        match ap.set(&a.group, a.knob, a.new) {
            Ok(_) => {
                // What the kernel kept (memory values are rounded to pages).
                let now = ap.read(&a.group, a.knob).unwrap_or(a.new);
                m.state.applied.insert(a.knob, now);
                m.state.written_ms.insert(a.knob, self.now_ms);
                self.stats.writes += 1;
                Decision::Set {
                    action: a,
                    written: true,
                    error: None,
                }
            }
            Err(e) => {
                self.stats.write_failures += 1;
                if let Ok(v) = ap.read(&a.group, a.knob) {
                    m.state.applied.insert(a.knob, v);
                }
                Decision::Set {
                    action: a,
                    written: false,
                    error: Some(e.to_string()),
                }
            }
        }
    }

    /// Removes groups whose processes are all gone (after a few ticks).
    fn retire_idle(&mut self, enforce: bool) {
        let mut gone = Vec::new();
        for (g, m) in self.managed.iter_mut() {
            let has_requests = self.requests.values().any(|r| r.parent == *g);
            if m.pids.is_empty() && !has_requests {
                m.idle += 1;
                if m.idle >= LINGER_TICKS {
                    gone.push(g.clone());
                }
            } else {
                m.idle = 0;
            }
        }
        for g in gone {
            let Some(m) = self.managed.remove(&g) else {
                continue;
            };
            if enforce
                && m.created
                && let Some(a) = self.applier.as_mut()
            {
                let base = g.child("base");
                let _ = a.remove(&base).and_then(|_| a.remove(&g));
            }
            // Kept for when its executable runs again.
            self.earned.retire(&g, m.record, self.now_ms);
        }
    }

    /// An exec as it happens: an opted-in executable whose rule asks for per-request
    /// placement gets its own group with limits from its prediction — `predict(tgid,
    /// exe)`, asked only for such execs — or, without one, is placed under its
    /// workload's reservation. Returns what was decided.
    pub fn on_exec(
        &mut self,
        ev: &Lifecycle,
        predict: &mut dyn FnMut(u32, &str) -> Option<RequestPrediction>,
        control: &Control,
    ) -> Vec<Decision> {
        let seen = boot_ns().saturating_sub(ev.timestamp_ns) / 1000;
        self.follow(control);
        let LifecycleKind::Exec { filename, .. } = &ev.kind else {
            if let LifecycleKind::Exit { .. } = ev.kind
                && ev.pid == ev.tgid
            {
                self.on_exit(ev.tgid);
            }
            return Vec::new();
        };
        let tgid = if ev.tgid != 0 { ev.tgid } else { ev.pid };
        if self.matchers.is_empty() {
            return Vec::new();
        }
        let exe = self
            .live
            .then(|| std::fs::read_link(format!("/proc/{tgid}/exe")).ok())
            .flatten()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| filename.clone());
        let cgroup = if !self.live {
            None
        } else {
            cgroups::proc_cgroups(tgid)
                .ok()
                .and_then(|l| l.into_iter().find(|(id, c, _)| *id == 0 && c.is_empty()))
                .map(|(_, _, p)| p)
        };
        let Some((g, rule)) = self.classify(tgid, ev.timestamp_ns, Some(&exe), cgroup.as_deref())
        else {
            return Vec::new();
        };
        let per_request = self.cfg.workload.get(rule).is_some_and(|r| r.per_request);
        let name = exe.rsplit('/').next().unwrap_or(&exe).to_string();
        self.managed_entry(&g, rule, &name);
        if !per_request {
            return Vec::new(); // placed with its workload at the next tick
        }
        self.stats.requests += 1;
        let prediction = predict(tgid, &exe);
        let prediction = prediction.as_ref();
        let group = g.child(&format!("req-{tgid}"));
        let tier = self
            .managed
            .get(&g)
            .map(|m| m.record.tier)
            .unwrap_or_default();
        let (tier, limits, mut source, mut cores, mut bytes) =
            self.request_reservation(&g, tier, prediction);
        // A request of a workload whose forecasts have not earned a tier yet is placed
        // (its own group: its own accounting and pressure), its limits explained only.
        let shadow = tier == Tier::Shadow && !limits.is_empty();
        if shadow {
            source.push_str("; shadow tier: limits not written");
            (cores, bytes) = (0.0, 0.0);
        }
        let enforce = self.mode == Mode::Enforce && self.applier.is_some();
        let mut out = Vec::new();
        if !enforce {
            out.push(Decision::Place {
                pid: tgid,
                name,
                group,
                limits,
                source,
                latency_us: None,
                seen_us: None,
                written: false,
                error: None,
            });
            return out;
        }
        if let Some(w) = &self.warmer {
            w.arm();
        }
        let r = self.place_request(&g, &group, tgid, if shadow { &[] } else { &limits });
        let capped = !shadow && hard(&limits);
        let latency = boot_ns().saturating_sub(ev.timestamp_ns) / 1000;
        let error = r.as_ref().err().map(|e| e.to_string());
        if error.is_none() {
            self.stats.placed += 1;
            self.latencies.push_back(latency);
            if self.latencies.len() > LATENCIES {
                self.latencies.pop_front();
            }
            self.placed.insert(tgid, group.clone());
            if let Some(m) = self.managed.get_mut(&g) {
                m.created = true;
            }
        }
        out.push(Decision::Place {
            pid: tgid,
            name: name.clone(),
            group: group.clone(),
            limits,
            source,
            latency_us: error.is_none().then_some(latency),
            seen_us: error.is_none().then_some(seen),
            written: error.is_none(),
            error: error.clone(),
        });
        if error.is_none() {
            self.requests.insert(
                tgid,
                Request {
                    pid: tgid,
                    name,
                    group,
                    parent: g,
                    cores,
                    bytes,
                    held_since_ms: None,
                    hold: self.cfg.admission.hold,
                    idle: 0,
                    key: prediction.map(|p| p.workload.0.clone()).unwrap_or_default(),
                    hard: capped,
                    placed_ms: self.wall_ms(),
                },
            );
            if let Some(d) = self.admit(tgid) {
                out.push(d);
            }
        }
        out
    }

    /// Now, ms since the Unix epoch (the last tick's time, or the clock when it is later).
    fn wall_ms(&self) -> u64 {
        self.now_ms.max(crate::capture::procfs::wall_ms())
    }

    /// A new request's reservation: its tier ([`Allocator::request_tier`]) and what
    /// [`Allocator::request_limits`] gives at it, the source saying when the tier was
    /// earned.
    fn request_reservation(
        &self,
        g: &Group,
        tier: Tier,
        p: Option<&RequestPrediction>,
    ) -> (Tier, Vec<(Knob, Value)>, String, f64, f64) {
        let (tier, earned) = self.request_tier(g, tier, p);
        let (limits, mut source, cores, bytes) = self.request_limits(g, tier, p);
        if let Some(e) = earned {
            source.push_str("; ");
            source.push_str(&e);
        }
        (tier, limits, source, cores, bytes)
    }

    /// The tier a new request of workload `g` (at `tier`) is placed at
    /// ([`request::tier`]): its executable's own recent requests decide once there are
    /// `tiers.min_samples` of them — the full tier (within its rule's cap) when at least
    /// `tiers.promote_coverage` of them stayed within the limits their predictions set (CPU
    /// rate and peak RSS at most 1 + `request.margin` times what was predicted), soft
    /// settings only when not. A program run again and again — a compressor, a linker — is
    /// a workload whose series starts and stops, whose forecasts seldom earn a tier; its
    /// requests' predictions can. With why, when its record decided.
    fn request_tier(
        &self,
        g: &Group,
        tier: Tier,
        p: Option<&RequestPrediction>,
    ) -> (Tier, Option<String>) {
        let max = self
            .managed
            .get(g)
            .map(|m| self.max_tier(m))
            .unwrap_or(Tier::Full);
        match p {
            Some(p) => request::tier(
                p,
                tier,
                max,
                self.earned.held_back.count(&p.workload.0),
                self.cfg.request.margin,
                &self.cfg.tiers,
            ),
            None => (tier, None),
        }
    }

    /// Limits of a new request of workload `g` at `tier`: (limits, their source, reserved
    /// cores, reserved bytes).
    fn request_limits(
        &self,
        g: &Group,
        tier: Tier,
        p: Option<&RequestPrediction>,
    ) -> (Vec<(Knob, Value)>, String, f64, f64) {
        let Some(p) = p else {
            return (
                Vec::new(),
                "no prediction: the workload's reservation".into(),
                0.0,
                0.0,
            );
        };
        let workload = self.managed.get(g).map(|m| &m.state);
        // A request never gets more than its workload's own cap (v1 refuses it).
        let cap = workload.and_then(|w| w.value(Knob::CpuMax).cores());
        let r = reservation(p, self.cfg.request.margin, &self.cfg.rules, self.cpus, cap);
        let (cores, high, low) = (r.cores, r.high, r.low);
        let mut limits = vec![
            (
                Knob::CpuWeight,
                Value::Amount(decide::weight_for(r.weight_cores)),
            ),
            (Knob::MemoryLow, Value::Amount(low)),
        ];
        // A prior (kin's runs, not its own) is a guess: soft settings only, nothing held
        // for it at admission.
        if p.is_prior() {
            return (
                limits,
                format!("{} prediction; soft only until runs of its own", p.source),
                0.0,
                0.0,
            );
        }
        let (cpu, memory) =
            request::hard(p, tier, workload.map_or((false, false), request::pooled));
        if cpu {
            limits.push((Knob::CpuMax, Value::of_cores(cores)));
        }
        if memory {
            limits.push((Knob::MemoryHigh, Value::Amount(high)));
        }
        if tier == Tier::Full {
            limits.push((Knob::MemoryMin, Value::Amount(low)));
        }
        (
            limits,
            format!("{} prediction", p.source),
            cores,
            p.peak_rss_bytes.p90,
        )
    }

    fn place_request(
        &mut self,
        parent: &Group,
        g: &Group,
        pid: u32,
        limits: &[(Knob, Value)],
    ) -> Result<(), ApplyError> {
        let a = self.applier.as_mut().ok_or(ApplyError::Process {
            pid,
            what: "no cgroup backend".into(),
        })?;
        a.ensure(&self.root, true)?;
        a.ensure(parent, true)?;
        a.ensure(g, false)?;
        for (k, v) in limits {
            if !a.cgroups().supports(*k) {
                continue;
            }
            let _ = a.set(g, *k, *v);
        }
        a.place(g, pid)
    }

    /// Creates a request's group before its process exists (`umbra exec`): its limits
    /// from `prediction` (at least the warm tier's), admission as for any request (a
    /// request that does not fit gets a frozen group, so its process is born held).
    /// Returns how the launcher puts its child there, and what was decided.
    pub fn reserve_for_exec(
        &mut self,
        exe: &str,
        workload: Option<&str>,
        prediction: Option<&RequestPrediction>,
    ) -> Result<Reservation, AllocateError> {
        if self.mode != Mode::Enforce {
            return Err(AllocateError::NoBackend(
                "the agent is in dry-run mode: start it with --enforce (or send set-mode enforce)"
                    .into(),
            ));
        }
        let g = match workload {
            Some(w) => self
                .managed
                .iter()
                .find(|(_, m)| m.state.workload.0 == w || m.state.name == w)
                .map(|(g, _)| g.clone())
                .unwrap_or_else(|| group_for(&self.root, w)),
            None => group_for(&self.root, exe),
        };
        let name = exe.rsplit('/').next().unwrap_or(exe).to_string();
        let rule = self.managed.get(&g).map(|m| m.rule).unwrap_or(usize::MAX);
        self.managed_entry(&g, rule, &name);
        self.launched += 1;
        let n = self.launched;
        let req = g.child(&format!("exec-{n}"));
        let tier = self
            .managed
            .get(&g)
            .map(|m| m.record.tier)
            .unwrap_or_default();
        let (_, limits, source, cores, bytes) =
            self.request_reservation(&g, tier.max(Tier::Warm), prediction);
        let a = self
            .applier
            .as_mut()
            .ok_or_else(|| AllocateError::NoBackend(String::new()))?;
        a.ensure(&self.root, true)?;
        a.ensure(&g, true)?;
        a.ensure(&req, false)?;
        for (k, v) in &limits {
            if a.cgroups().supports(*k) {
                a.set(&req, *k, *v)?;
            }
        }
        let target = a.cgroups().exec_target(&req).map_err(ApplyError::from)?;
        if let Some(m) = self.managed.get_mut(&g) {
            m.created = true;
        }
        self.stats.requests += 1;
        self.stats.placed += 1;
        let key = u32::MAX - (n % (u32::MAX as u64 / 2)) as u32;
        self.requests.insert(
            key,
            Request {
                pid: 0,
                name: name.clone(),
                group: req.clone(),
                parent: g,
                cores,
                bytes,
                held_since_ms: None,
                hold: self.cfg.admission.hold,
                idle: 0,
                key: prediction.map(|p| p.workload.0.clone()).unwrap_or_default(),
                hard: hard(&limits),
                placed_ms: self.wall_ms(),
            },
        );
        let mut decisions = vec![Decision::Place {
            pid: 0,
            name,
            group: req.clone(),
            limits: limits.clone(),
            source: format!("umbra exec; {source}"),
            latency_us: None,
            seen_us: None,
            written: true,
            error: None,
        }];
        let held = match self.admit(key) {
            Some(d) => {
                decisions.push(d);
                true
            }
            None => false,
        };
        Ok(Reservation {
            group: req,
            target,
            limits,
            held,
            decisions,
        })
    }

    fn on_exit(&mut self, tgid: u32) {
        if self.placed.remove(&tgid).is_some()
            && let Some(a) = &mut self.applier
        {
            a.forget(tgid);
        }
    }

    /// Admission: a new request whose reservation does not fit the node (capacity minus
    /// the reserve, less what running requests hold) is held.
    fn admit(&mut self, pid: u32) -> Option<Decision> {
        let (cores, bytes) = {
            let r = self.requests.get(&pid)?;
            (r.cores, r.bytes)
        };
        if self.fits(pid, cores, bytes) {
            return None;
        }
        let hold = self.cfg.admission.hold;
        let low = self.cfg.admission.low_weight;
        let now = self.wall_ms();
        let r = self.requests.get_mut(&pid)?;
        let a = self.applier.as_mut()?;
        let res = match hold {
            HoldMode::Freeze => a.freeze(&r.group, true),
            HoldMode::LowWeight => a
                .set(&r.group, Knob::CpuWeight, Value::Amount(low))
                .map(|_| ()),
        };
        if let Err(e) = res {
            warn!(group = %r.group, error = %e, "Request not held");
            return None;
        }
        r.held_since_ms = Some(now);
        r.hold = hold;
        self.held.push_back(pid);
        self.stats.holds += 1;
        Some(Decision::Hold {
            pid: r.pid,
            name: r.name.clone(),
            group: r.group.clone(),
            hold,
            reason: format!(
                "needs {cores:.2} cores and {} but the node has {:.2} cores and {} left for requests",
                crate::trace::bytes(bytes as u64),
                self.cpu_left(pid),
                crate::trace::bytes(self.mem_left(pid) as u64)
            ),
        })
    }

    fn cpu_left(&self, except: u32) -> f64 {
        let used: f64 = self
            .requests
            .iter()
            .filter(|(p, r)| **p != except && r.held_since_ms.is_none())
            .map(|(_, r)| r.cores)
            .sum();
        (self.cpus - self.cfg.rules.reserve_cores - used).max(0.0)
    }

    fn mem_left(&self, except: u32) -> f64 {
        let used: f64 = self
            .requests
            .iter()
            .filter(|(p, r)| **p != except && r.held_since_ms.is_none())
            .map(|(_, r)| r.bytes)
            .sum();
        (self.memory_bytes as f64 - self.cfg.rules.reserve_memory_bytes as f64 - used).max(0.0)
    }

    fn fits(&self, pid: u32, cores: f64, bytes: f64) -> bool {
        (self.cpus <= 0.0 || cores <= self.cpu_left(pid) + 1e-9)
            && (self.memory_bytes == 0 || bytes <= self.mem_left(pid) + 1.0)
    }

    /// Each tick: held requests released when they fit or time out (oldest first);
    /// requests whose processes are gone forgotten and their groups removed.
    fn requests_tick(&mut self, out: &mut Vec<Decision>, enforce: bool) {
        let now = self.now_ms;
        let timeout = self.cfg.admission.timeout_ms;
        let held: Vec<u32> = self.held.iter().copied().collect();
        for pid in held {
            let Some(r) = self.requests.get(&pid) else {
                self.held.retain(|p| *p != pid);
                continue;
            };
            let since = r.held_since_ms.unwrap_or(now);
            let held_ms = now.saturating_sub(since);
            let reason = if self.fits(pid, r.cores, r.bytes) {
                self.stats.released_fit += 1;
                "capacity freed".to_string()
            } else if held_ms >= timeout {
                self.stats.released_timeout += 1;
                format!("held {timeout} ms (the admission timeout): runs anyway")
            } else {
                continue;
            };
            self.release(pid, held_ms, reason, out);
        }
        // Empty request groups go.
        let wall = self.wall_ms();
        let Some(a) = self.applier.as_mut() else {
            return;
        };
        let mut done = Vec::new();
        for (pid, r) in self.requests.iter_mut() {
            let empty = a.procs(&r.group).map(|p| p.is_empty()).unwrap_or(true);
            if empty {
                r.idle += 1;
                if r.idle as u64 * self.interval_ms as u64 >= self.cfg.request.linger_ms
                    || r.pid != 0 && r.idle >= 1
                {
                    done.push(*pid);
                }
            } else {
                r.idle = 0;
            }
        }
        for pid in done {
            if let Some(r) = self.requests.remove(&pid) {
                self.held.retain(|p| *p != pid);
                if r.hard
                    && !r.key.is_empty()
                    && let Ok(st) = a.stats(&r.group)
                {
                    let lived_s = wall.saturating_sub(r.placed_ms).max(1) as f64 / 1000.0;
                    let back = was_held_back(
                        st.throttled_us as f64 / 1e6,
                        lived_s,
                        st.memory_high_events,
                        &self.cfg.tiers,
                    );
                    self.earned.verdict(&r.key, back);
                }
                if enforce && let Err(e) = a.remove(&r.group) {
                    warn!(group = %r.group, error = %e, "Request group not removed");
                }
            }
        }
        if self.earned.due(self.clock()) {
            self.save_earned();
        }
    }

    fn release(&mut self, pid: u32, held_ms: u64, reason: String, out: &mut Vec<Decision>) {
        self.held.retain(|p| *p != pid);
        let Some(r) = self.requests.get_mut(&pid) else {
            return;
        };
        r.held_since_ms = None;
        if let Some(a) = self.applier.as_mut() {
            let res = match r.hold {
                HoldMode::Freeze => a.freeze(&r.group, false),
                HoldMode::LowWeight => a
                    .set(&r.group, Knob::CpuWeight, Value::Amount(100))
                    .map(|_| ()),
            };
            if let Err(e) = res {
                warn!(group = %r.group, error = %e, "Held request not released");
            }
        }
        out.push(Decision::Release {
            pid: r.pid,
            name: r.name.clone(),
            group: r.group.clone(),
            held_ms,
            reason,
        });
    }

    /// Everything back as it was before Umbra (leaving enforce mode).
    fn put_back_all(&mut self) {
        self.egress_off();
        if let Some(a) = self.applier.as_mut() {
            let r = a.restore();
            info!(
                processes = r.processes,
                settings = r.settings,
                groups = r.groups,
                "Allocation stopped: cgroups restored"
            );
        }
        self.placed.clear();
        self.requests.clear();
        self.held.clear();
        for m in self.managed.values_mut() {
            m.created = false;
            m.state.applied.clear();
            m.state.written_ms.clear();
            m.last_stats = None;
        }
    }

    /// SIGTERM/SIGINT: every original value restored, processes moved back, the subtree
    /// removed, the journal deleted.
    /// The last window's time (what records are dated by), or the wall clock before the
    /// first.
    fn clock(&self) -> u64 {
        if self.now_ms > 0 {
            self.now_ms
        } else {
            crate::capture::procfs::wall_ms()
        }
    }

    /// Writes what was earned (where it is kept); a failure is logged, and it stays in
    /// memory.
    fn save_earned(&mut self) {
        let now = self.clock();
        let running = self.managed.iter().map(|(g, m)| (g, &m.record));
        if let Err(e) = self.earned.save(running, now) {
            warn!(error = %e, "Earned tiers and held-back verdicts not kept");
        }
    }

    pub fn shutdown(mut self) -> Option<Restored> {
        self.egress_off();
        self.save_earned();
        let a = self.applier.take()?;
        let r = a.shutdown();
        info!(
            processes = r.processes,
            settings = r.settings,
            groups = r.groups,
            failures = r.failures.len(),
            "Cgroups restored"
        );
        Some(r)
    }
}

#[cfg(test)]
mod tests;
