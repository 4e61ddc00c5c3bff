//! The pure decision: forecasts, the allocator's state and the rules in, [`Action`]s out,
//! each with its [`Explanation`]. No I/O: the live agent and `umbra simulate` call the
//! same function.
//!
//! Per workload, the reservation for the next interval comes from the forecast's first
//! `lead_steps` steps (the largest band among them), so a step the forecast sees coming is
//! reserved before it happens. By tier:
//! - **shadow**: what the full tier would write, explained, not written;
//! - **warm**: `cpu.weight` from the band's p10 (times the priority's factor) and
//!   `memory.low` at p10 (soft);
//! - **full**: warm's, plus `memory.min` at p10; `cpu.max` at the workload's recent peak
//!   — its largest one-interval usage over the last `peak_intervals` intervals — or the
//!   forecast's p50 when that is higher (a rise the forecast sees coming), and
//!   `memory.high` at the recent peak or the forecast when that is higher, each ×
//!   (1 + margin); the margins adapted to what the limits missed, and `memory.high`'s
//!   quantile too: from p90 down towards p50 while the limit keeps covering the workload
//!   ([`super::tiers`]). The forecast is of a bucket's mean, but a limit holds each
//!   moment: a bucket-mean's p90 plus the margin that covers the swings inside a bucket
//!   left far more room (measured in BENCHMARKS.md).
//!
//! Then the safety rules, in this order, each one named in the explanation when it moved
//! a value: floors (never `memory.high` below current usage or a minimum, never `cpu.max`
//! below a minimum), the rate limit (change per tick), per-uid quotas (within a uid the
//! headroom above each `cpu.max`'s p50 is cut before the p50 itself) and the node ceiling
//! (capacity minus a reserve; when memory guarantees exceed it, critical workloads are
//! served first, best-effort ones last; `cpu.max` limits may together exceed the node,
//! each at most the node), then the minimum interval between writes and the hysteresis
//! band (small changes are not written).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    cgroups::{Group, Knob, Value},
    control::Tier as Priority,
    tiers::{Basis, Margins, Tier},
};
use crate::{
    aggregate::WorkloadId,
    predict::{Band, Forecast, Target},
};

const PAGE: u64 = 4096;

/// Priorities, served in this order when reservations exceed capacity.
pub const PRIORITIES: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::BestEffort];

pub fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::Critical => "critical",
        Priority::Normal => "normal",
        Priority::BestEffort => "best-effort",
    }
}

/// The safety rules and tier parameters (from `[allocate]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// Forecast steps the next reservation covers (the largest band among them).
    pub lead_steps: usize,
    /// Margin over the base of `cpu.max` and `memory.high` ([`cpu_base`],
    /// [`memory_base`]) each workload starts at; what its limits miss raises it, up to
    /// `max_margin`, and what they cover lowers CPU's, down to `min_cpu_margin`.
    pub margin: f64,
    /// The largest margin the observed error may ask for.
    pub max_margin: f64,
    /// The smallest margin `cpu.max`'s may fall to while its limits keep covering the
    /// workload (it starts at `margin`; see [`super::tiers`]).
    pub min_cpu_margin: f64,
    /// Floors.
    pub min_cpu_cores: f64,
    pub min_memory_bytes: u64,
    /// `memory.high` stays at least this fraction above current usage.
    pub memory_headroom: f64,
    /// Node ceiling: capacity minus these (memory guarantees together, each `cpu.max`
    /// alone, and admission).
    pub reserve_cores: f64,
    pub reserve_memory_bytes: u64,
    /// Change per tick: up to ×(1 + max_increase), down to ×(1 − max_decrease).
    pub max_increase: f64,
    pub max_decrease: f64,
    /// Minimum time between two writes of one knob, ms.
    pub min_interval_ms: u64,
    /// Changes smaller than this fraction are not written (hysteresis).
    pub deadband: f64,
    /// Per-uid limits on what the workloads of a uid may reserve together.
    pub quotas: Vec<Quota>,
    /// `cpu.max` and `memory.high` cover the largest one-interval usage of this many last
    /// intervals ([`cpu_base`], [`memory_base`]); 0: both at the forecast's p90 (as a
    /// recommender such as VPA's sets its target).
    pub peak_intervals: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            lead_steps: 2,
            margin: 0.15,
            max_margin: 1.0,
            min_cpu_margin: 0.0,
            min_cpu_cores: 0.05,
            min_memory_bytes: 32 << 20,
            memory_headroom: 0.05,
            reserve_cores: 0.1,
            reserve_memory_bytes: 256 << 20,
            max_increase: 1.0,
            max_decrease: 0.25,
            min_interval_ms: 0,
            deadband: 0.05,
            quotas: Vec::new(),
            peak_intervals: 5,
        }
    }
}

impl Rules {
    /// Whether the limits cover the recent peak (else the forecast's p90 alone).
    pub fn keeps_peak(&self) -> bool {
        self.peak_intervals > 0
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub uid: u32,
    pub cpu_cores: Option<f64>,
    pub memory_bytes: Option<u64>,
}

/// One managed workload as `decide` sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadState {
    pub workload: WorkloadId,
    pub name: String,
    /// Its group in the owned subtree.
    pub group: Group,
    pub priority: Priority,
    pub tier: Tier,
    pub uid: Option<u32>,
    /// What its group has now (knobs not listed have the kernel's defaults).
    pub applied: BTreeMap<Knob, Value>,
    /// When each knob was last written, ms.
    pub written_ms: BTreeMap<Knob, u64>,
    /// Usage in the last interval.
    pub cpu_cores: f64,
    pub memory_bytes: u64,
    /// Margins over the limits' bases the observed error asks for (within [`Margins`]).
    pub cpu_margin: f64,
    pub memory_margin: f64,
    /// Memory multiplier after OOM events (VPA-like ×1.2 each, decaying to 1).
    pub memory_bump: f64,
    /// Its largest one-interval usage over the last `Rules::peak_intervals` intervals
    /// ([`RecentPeak`]): cores and bytes.
    #[serde(default)]
    pub cpu_peak: f64,
    #[serde(default)]
    pub memory_peak: f64,
    /// Where between the forecast's p50 (0) and p90 (1) `memory.high` is built
    /// ([`memory_base`]).
    #[serde(default = "p90")]
    pub memory_quantile: f64,
    /// At the full tier, whether its memory limits (`memory.min`, `memory.high`) are set
    /// too: `cpu.max` comes with the tier, memory's once it has held a while (a CPU limit
    /// missed throttles; a memory limit missed reclaims).
    #[serde(default = "yes")]
    pub memory_hard: bool,
}

fn yes() -> bool {
    true
}

fn p90() -> f64 {
    1.0
}

impl WorkloadState {
    pub fn new(workload: WorkloadId, name: &str, group: Group) -> WorkloadState {
        WorkloadState {
            workload,
            name: name.to_string(),
            group,
            priority: Priority::Normal,
            tier: Tier::Shadow,
            uid: None,
            applied: BTreeMap::new(),
            written_ms: BTreeMap::new(),
            cpu_cores: 0.0,
            memory_bytes: 0,
            cpu_margin: 0.15,
            memory_margin: 0.15,
            memory_bump: 1.0,
            cpu_peak: 0.0,
            memory_peak: 0.0,
            memory_quantile: 1.0,
            memory_hard: true,
        }
    }

    /// What the margins of its `cpu.max` and `memory.high` multiply (the latter before
    /// the OOM bump), given the forecast's bands over the lead steps.
    pub fn limit_bases(&self, cpu: &Band, mem: &Band, rules: &Rules) -> (f64, f64) {
        let keep = rules.keeps_peak();
        (
            cpu_base(cpu, keep.then_some(self.cpu_peak)),
            memory_base(mem, keep.then_some(self.memory_peak), self.memory_quantile),
        )
    }

    pub fn value(&self, knob: Knob) -> Value {
        self.applied
            .get(&knob)
            .copied()
            .unwrap_or(knob.default_value())
    }
}

/// The node and the workloads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub now_ms: u64,
    pub cpus: f64,
    pub memory_bytes: u64,
    pub workloads: Vec<WorkloadState>,
    /// Knobs the cgroup backend does not have (cgroup v1: `memory.min`, `memory.low`):
    /// never decided.
    #[serde(default)]
    pub unsupported: Vec<Knob>,
}

/// A rule that moved a value away from what the forecast asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum Bound {
    /// Raised to a floor: the minimum, or current usage plus headroom.
    Floor { floor: Value },
    /// Held to the rate limit (change per tick).
    RateLimit { limit: Value },
    /// Scaled to fit the uid's quota.
    Quota { uid: u32, scale: f64 },
    /// Scaled to fit the node's capacity minus the reserve, by priority.
    NodeCeiling { scale: f64 },
    /// Kept: written less than `min_interval_ms` ago.
    Interval { since_ms: u64 },
    /// Kept: the change is inside the hysteresis band.
    Hysteresis,
    /// Lifted to the kernel default: the tier no longer sets it.
    TierLifted,
    /// Not set yet: the full tier's memory limits wait until it has held for
    /// `tiers.memory_after` intervals ([`WorkloadState::memory_hard`]).
    MemoryWaits,
}

impl Bound {
    pub fn text(&self, knob: Knob) -> String {
        match self {
            Bound::Floor { floor } => format!("floor {}", floor.show(knob)),
            Bound::RateLimit { limit } => format!("rate limit {}", limit.show(knob)),
            Bound::Quota { uid, scale } => format!("uid {uid} quota ×{scale:.2}"),
            Bound::NodeCeiling { scale } => format!("node ceiling ×{scale:.2}"),
            Bound::Interval { since_ms } => format!("written {since_ms} ms ago"),
            Bound::Hysteresis => "inside the hysteresis band".into(),
            Bound::TierLifted => "not set at this tier".into(),
            Bound::MemoryWaits => "not yet: the full tier has not held long enough".into(),
        }
    }
}

/// Why a knob gets the value it gets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub workload: WorkloadId,
    pub name: String,
    pub tier: Tier,
    pub priority: Priority,
    /// The target and the band behind the value (largest over the lead steps), and the
    /// predictor that made it.
    pub target: Target,
    pub band: Band,
    pub steps: usize,
    pub predictor: String,
    pub margin: f64,
    /// Usage in the last interval (cores or bytes).
    pub usage: f64,
    /// What the forecast asked for, before the rules.
    pub wanted: Value,
    /// `cpu.max`, `memory.high`: the recent peak it covers (cores, bytes; 0 for other
    /// knobs).
    #[serde(default)]
    pub peak: f64,
    /// `memory.high`, covering the recent peak: where between the band's p50 (0) and p90
    /// (1) it is built ([`memory_base`]).
    #[serde(default)]
    pub quantile: Option<f64>,
    pub bounds: Vec<Bound>,
}

/// A change of one knob of one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub group: Group,
    pub knob: Knob,
    pub old: Value,
    pub new: Value,
    /// Whether this is to be written (false: shadow tier, explained only).
    pub write: bool,
    pub why: Explanation,
}

impl Action {
    /// One line for people (`umbra run --explain`).
    pub fn text(&self) -> String {
        let w = &self.why;
        let unit = |v: f64| match w.target {
            Target::Cpu => format!("{v:.2} cores"),
            _ => crate::trace::bytes(v.max(0.0) as u64),
        };
        let mut s = format!(
            "{} [{}, {}{}] {} {} -> {}: p10 {} p50 {} p90 {} over {} step{} ({}), margin {:.0}%, used {}",
            w.name,
            w.tier.name(),
            priority_name(w.priority),
            if self.write { "" } else { ", not written" },
            self.knob,
            self.old.show(self.knob),
            self.new.show(self.knob),
            unit(w.band.p10),
            unit(w.band.p50),
            unit(w.band.p90),
            w.steps,
            if w.steps == 1 { "" } else { "s" },
            w.predictor,
            w.margin * 100.0,
            unit(w.usage),
        );
        if w.peak > 0.0 {
            s.push_str(&format!(", recent peak {}", unit(w.peak)));
        }
        if let Some(q) = w.quantile {
            s.push_str(&format!(
                ", built {:.0}% of the way from p50 to p90",
                q * 100.0
            ));
        }
        if !w.bounds.is_empty() {
            let b: Vec<String> = w.bounds.iter().map(|b| b.text(self.knob)).collect();
            s.push_str(&format!("; bounded by {}", b.join(", ")));
        }
        s
    }
}

/// The largest band among the first `steps` steps (each quantile separately).
pub fn lead_band(bands: &[Band], steps: usize) -> Option<Band> {
    let take = &bands[..steps.clamp(1, bands.len().max(1)).min(bands.len())];
    let mut it = take.iter();
    let first = *it.next()?;
    Some(it.fold(first, |a, b| Band {
        p10: a.p10.max(b.p10),
        p50: a.p50.max(b.p50),
        p90: a.p90.max(b.p90),
    }))
}

/// What `cpu.max`'s margin multiplies: the recent peak, or the forecast's p50 over the
/// lead steps when that is higher; with no peak kept (`peak_intervals = 0`), the
/// forecast's p90.
pub fn cpu_base(band: &Band, peak: Option<f64>) -> f64 {
    match peak {
        Some(p) => band.p50.max(p),
        None => band.p90,
    }
}

/// What `memory.high`'s margin multiplies: the forecast over the lead steps at `quantile`
/// (0: p50, 1: p90, linearly between), or the recent peak when that is higher; with no
/// peak kept, p90. The quantile is the workload's own ([`super::tiers::Record`]): it starts
/// at p90 and falls while the limits keep covering it. Going over `memory.high` makes the
/// kernel reclaim: p50 from the start let three intervals over on the one-minute cycle of
/// `simulate::tests` (a young workload's step up, the forecast not yet seeing it) against
/// VPA-like's one.
pub fn memory_base(band: &Band, peak: Option<f64>, quantile: f64) -> f64 {
    match peak {
        Some(p) => (band.p50 + quantile.clamp(0.0, 1.0) * (band.p90 - band.p50)).max(p),
        None => band.p90,
    }
}

/// What the limits `decide` sets for workload `w` from forecast `f` are based on, for its
/// tier record to score.
pub fn basis(f: &Forecast, rules: &Rules, w: &WorkloadState) -> Option<Basis> {
    let cpu = lead_band(f.of(Target::Cpu), rules.lead_steps)?;
    let mem = lead_band(f.of(Target::Memory), rules.lead_steps)?;
    let (cpu_base, memory_base) = w.limit_bases(&cpu, &mem, rules);
    Some(Basis {
        cpu: *f.of(Target::Cpu).first()?,
        memory: *f.of(Target::Memory).first()?,
        cpu_base,
        memory_base: memory_base * w.memory_bump.max(1.0),
    })
}

/// A workload's largest one-interval usage over its last few intervals.
#[derive(Clone, Debug, Default)]
pub struct RecentPeak {
    recent: std::collections::VecDeque<(f64, f64)>,
}

impl RecentPeak {
    /// Adds an interval's usage, cores and bytes (as the group used it: CPU at most its
    /// limit), and returns the peaks over the last `intervals` (at least one).
    pub fn push(&mut self, cores: f64, bytes: f64, intervals: usize) -> (f64, f64) {
        self.recent.push_back((cores.max(0.0), bytes.max(0.0)));
        while self.recent.len() > intervals.max(1) {
            self.recent.pop_front();
        }
        self.recent
            .iter()
            .fold((0.0, 0.0), |(c, m), &(x, y)| (c.max(x), m.max(y)))
    }
}

/// `cpu.weight` for a workload expected to use at least `cores`: 100 (the default) plus
/// 100 per core, so under contention busier workloads get proportionally more.
pub fn weight_for(cores: f64) -> u64 {
    (100.0 + 100.0 * cores.max(0.0))
        .round()
        .clamp(1.0, 10_000.0) as u64
}

/// The factor a workload's `cpu.weight` gets from its priority: CPU limits overcommit
/// the node (see [`ceiling`]), so when workloads contend the kernel shares CPU by weight,
/// and that is where a critical workload is served before a best-effort one.
pub fn priority_weight(p: Priority) -> f64 {
    match p {
        Priority::Critical => 4.0,
        Priority::Normal => 1.0,
        Priority::BestEffort => 0.25,
    }
}

fn page(bytes: f64) -> u64 {
    (bytes.max(0.0) as u64) / PAGE * PAGE
}

/// One value in the making.
struct Pending {
    w: usize,
    knob: Knob,
    new: Value,
    write: bool,
    why: Explanation,
    /// Set by the ceiling or a quota: the interval and hysteresis rules may not keep the
    /// old value.
    forced: bool,
}

/// The decision. Returns only changes (knobs whose value differs from what is applied),
/// plus the changes a shadow-tier workload would get, marked not to be written.
pub fn decide(forecasts: &[Forecast], state: &State, rules: &Rules) -> Vec<Action> {
    let by_id: BTreeMap<&WorkloadId, &Forecast> =
        forecasts.iter().map(|f| (&f.workload, f)).collect();
    let mut pending: Vec<Pending> = Vec::new();
    let margins = Margins::of(rules);
    for (i, w) in state.workloads.iter().enumerate() {
        let Some(f) = by_id.get(&w.workload) else {
            continue;
        };
        let (Some(cpu), Some(mem)) = (
            lead_band(f.of(Target::Cpu), rules.lead_steps),
            lead_band(f.of(Target::Memory), rules.lead_steps),
        ) else {
            continue;
        };
        let steps = rules.lead_steps.min(f.of(Target::Cpu).len()).max(1);
        let explain =
            |target: Target, band: Band, margin: f64, usage: f64, wanted: Value| Explanation {
                workload: w.workload.clone(),
                name: w.name.clone(),
                tier: w.tier,
                priority: w.priority,
                target,
                band,
                steps,
                predictor: f.predictor.clone(),
                margin,
                usage,
                wanted,
                peak: 0.0,
                quantile: None,
                bounds: Vec::new(),
            };
        let cpu_margin = w.cpu_margin.clamp(margins.min_cpu, margins.max);
        let mem_margin = w.memory_margin.clamp(margins.start, margins.max);
        let bump = w.memory_bump.max(1.0);
        let (cpu_limit, mem_limit) = w.limit_bases(&cpu, &mem, rules);
        let keep = rules.keeps_peak();
        let soft = |knob: Knob| -> Value {
            match knob {
                Knob::CpuWeight => Value::Amount(
                    ((weight_for(cpu.p10) as f64) * priority_weight(w.priority))
                        .round()
                        .clamp(1.0, 10_000.0) as u64,
                ),
                Knob::MemoryLow | Knob::MemoryMin => Value::Amount(page(mem.p10)),
                Knob::CpuMax => Value::of_cores(cpu_limit * (1.0 + cpu_margin)),
                Knob::MemoryHigh => Value::Amount(page(mem_limit * (1.0 + mem_margin) * bump)),
                _ => knob.default_value(),
            }
        };
        // What the tier sets; knobs a higher tier set and this one does not are lifted.
        let knobs: &[(Knob, bool)] = match w.tier {
            Tier::Shadow => &[
                (Knob::CpuWeight, true),
                (Knob::MemoryLow, true),
                (Knob::MemoryMin, true),
                (Knob::CpuMax, true),
                (Knob::MemoryHigh, true),
            ],
            Tier::Warm => &[
                (Knob::CpuWeight, true),
                (Knob::MemoryLow, true),
                (Knob::MemoryMin, false),
                (Knob::CpuMax, false),
                (Knob::MemoryHigh, false),
            ],
            Tier::Full => &[
                (Knob::CpuWeight, true),
                (Knob::MemoryLow, true),
                (Knob::MemoryMin, true),
                (Knob::CpuMax, true),
                (Knob::MemoryHigh, true),
            ],
        };
        for &(knob, set) in knobs {
            if state.unsupported.contains(&knob) {
                continue;
            }
            let (target, band, margin, usage) = if knob.is_memory() {
                (Target::Memory, mem, mem_margin, w.memory_bytes as f64)
            } else {
                (Target::Cpu, cpu, cpu_margin, w.cpu_cores)
            };
            let waits = w.tier == Tier::Full
                && !w.memory_hard
                && matches!(knob, Knob::MemoryMin | Knob::MemoryHigh);
            let set = set && !waits;
            let wanted = if set {
                soft(knob)
            } else {
                knob.default_value()
            };
            let mut why = explain(target, band, margin, usage, wanted);
            match knob {
                Knob::CpuMax if keep => why.peak = w.cpu_peak,
                Knob::MemoryHigh if keep => {
                    why.peak = w.memory_peak;
                    why.quantile = Some(w.memory_quantile.clamp(0.0, 1.0));
                }
                _ => {}
            }
            if waits {
                why.bounds.push(Bound::MemoryWaits);
            } else if !set {
                why.bounds.push(Bound::TierLifted);
            }
            pending.push(Pending {
                w: i,
                knob,
                new: wanted,
                write: w.tier != Tier::Shadow,
                why,
                forced: false,
            });
        }
    }
    for p in &mut pending {
        let w = &state.workloads[p.w];
        if p.why.bounds.contains(&Bound::TierLifted) || p.why.bounds.contains(&Bound::MemoryWaits) {
            continue;
        }
        floor(p, w, rules);
        rate_limit(p, w, rules);
    }
    quotas(&mut pending, state, rules);
    ceiling(&mut pending, state, rules);
    let mut out = Vec::new();
    for mut p in pending {
        let w = &state.workloads[p.w];
        let old = w.value(p.knob);
        if !p.forced && p.write {
            if let Some(at) = w.written_ms.get(&p.knob) {
                let since = state.now_ms.saturating_sub(*at);
                if since < rules.min_interval_ms && p.new != old {
                    p.why.bounds.push(Bound::Interval { since_ms: since });
                    p.new = old;
                }
            }
            if within(old, p.new, rules.deadband) && p.new != old {
                p.why.bounds.push(Bound::Hysteresis);
                p.new = old;
            }
        }
        if p.new == old {
            continue;
        }
        out.push(Action {
            group: w.group.clone(),
            knob: p.knob,
            old,
            new: p.new,
            write: p.write,
            why: p.why,
        });
    }
    out
}

/// Whether `new` is within `band` (relative) of `old`.
fn within(old: Value, new: Value, band: f64) -> bool {
    match (old, new) {
        (Value::Amount(o), Value::Amount(n)) if o > 0 => {
            (n as f64 - o as f64).abs() / (o as f64) < band
        }
        _ => false,
    }
}

fn floor(p: &mut Pending, w: &WorkloadState, r: &Rules) {
    let floor = match p.knob {
        Knob::CpuMax => Value::of_cores(r.min_cpu_cores),
        Knob::MemoryHigh | Knob::MemoryMax => Value::Amount(
            page(
                (r.min_memory_bytes as f64).max(w.memory_bytes as f64 * (1.0 + r.memory_headroom)),
            ) + PAGE,
        ),
        _ => return,
    };
    if let (Value::Amount(n), Value::Amount(f)) = (p.new, floor)
        && n < f
    {
        p.new = floor;
        p.why.bounds.push(Bound::Floor { floor });
    }
}

fn rate_limit(p: &mut Pending, w: &WorkloadState, r: &Rules) {
    let Value::Amount(old) = w.value(p.knob) else {
        return; // from no limit, the first limit is set at once (the floor protects it)
    };
    let Value::Amount(new) = p.new else {
        return; // lifting a limit is never held back
    };
    if old == 0 {
        return;
    }
    let hi = (old as f64 * (1.0 + r.max_increase)).ceil() as u64;
    let lo = (old as f64 * (1.0 - r.max_decrease).max(0.0)).floor() as u64;
    let limited = new.clamp(lo, hi.max(lo));
    if limited != new {
        let limited = if p.knob.is_memory() {
            limited / PAGE * PAGE
        } else {
            limited
        };
        p.new = Value::Amount(limited);
        p.why.bounds.push(Bound::RateLimit {
            limit: Value::Amount(limited),
        });
    }
}

/// The reservations that count against capacity: `cpu.max` (cores) and `memory.min` +
/// `memory.low` (bytes guaranteed; `memory.low` is covered by `memory.min` where both are set).
fn reserved(p: &Pending) -> Option<(bool, f64)> {
    match (p.knob, p.new) {
        (Knob::CpuMax, Value::Amount(q)) if p.write => Some((true, q as f64)),
        (Knob::MemoryMin | Knob::MemoryLow, Value::Amount(b)) if p.write => Some((false, b as f64)),
        _ => None,
    }
}

/// What a reservation is cut to last, when reservations exceed a limit: `cpu.max` keeps
/// the forecast's p50 (at least the floor) — the headroom above it goes first, since a cap
/// below the expected use throttles a workload for sure; a memory guarantee (p10) is all
/// base.
fn base(p: &Pending, v: f64, r: &Rules) -> f64 {
    match p.knob {
        Knob::CpuMax => Value::of_cores(p.why.band.p50.max(r.min_cpu_cores))
            .amount()
            .map_or(v, |b| (b as f64).min(v)),
        _ => v,
    }
}

/// Fits reservations to `limit`: `cpu` (quota µs) or memory (bytes), over the pending
/// values given. When they exceed it, the headroom above each value's [`base`] is shared
/// first (in proportion); only when the bases alone exceed the limit are they scaled.
/// Each value cut is marked forced and named by `bound` of its own scale. Returns the total
/// reserved after.
fn scale_to(
    pending: &mut [&mut Pending],
    cpu: bool,
    limit: f64,
    rules: &Rules,
    bound: impl Fn(f64) -> Bound,
) -> f64 {
    // memory.low and memory.min of a workload overlap: count the larger of the two.
    let mut per_w: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for p in pending.iter() {
        if let Some((c, v)) = reserved(p)
            && c == cpu
        {
            let e = per_w.entry(p.w).or_default();
            *e = (e.0.max(v), e.1.max(base(p, v, rules)));
        }
    }
    let want: f64 = per_w.values().map(|w| w.0).sum();
    let bases: f64 = per_w.values().map(|w| w.1).sum();
    if want <= limit || want <= 0.0 {
        return want;
    }
    let limit = limit.max(0.0);
    // The share of headroom kept, or (bases over the limit) the share of the bases.
    let (headroom, of_base) = if bases <= limit {
        ((limit - bases) / (want - bases).max(1e-9), 1.0)
    } else {
        (0.0, limit / bases)
    };
    for p in pending.iter_mut() {
        if let Some((c, v)) = reserved(p)
            && c == cpu
        {
            let b = base(p, v, rules);
            let mut cut = (b + (v - b) * headroom) * of_base;
            if cpu {
                // Never below the floor: a quota of nothing is no reservation at all.
                let floor = Value::of_cores(rules.min_cpu_cores).amount().unwrap_or(0) as f64;
                cut = cut.max(floor.min(v));
            }
            if cut >= v {
                continue; // not moved: neither forced nor named
            }
            p.new = Value::Amount(if cpu {
                cut.round() as u64
            } else {
                (cut as u64) / PAGE * PAGE
            });
            p.forced = true;
            p.why.bounds.push(bound(cut / v));
        }
    }
    limit.min(want)
}

fn quotas(pending: &mut [Pending], state: &State, rules: &Rules) {
    for q in &rules.quotas {
        for (cpu, limit) in [
            (
                true,
                q.cpu_cores
                    .map(|c| c * crate::allocate::cgroups::CPU_PERIOD_US as f64),
            ),
            (false, q.memory_bytes.map(|b| b as f64)),
        ] {
            let Some(limit) = limit else { continue };
            let mut mine: Vec<&mut Pending> = pending
                .iter_mut()
                .filter(|p| state.workloads[p.w].uid == Some(q.uid))
                .collect();
            scale_to(&mut mine, cpu, limit, rules, |scale| Bound::Quota {
                uid: q.uid,
                scale,
            });
        }
    }
}

/// Capacity minus the reserve. Memory guarantees (`memory.min`, `memory.low`) are shared
/// by priority: critical workloads get what they ask first, then normal, then
/// best-effort; the first level that does not fit is cut ([`scale_to`]) and the levels
/// below it get nothing beyond their floors. `cpu.max` is a limit, not a guarantee:
/// limits may together exceed the node (under contention the kernel shares CPU by
/// `cpu.weight`), and cutting them to fit would partition the node so that a workload
/// is throttled while CPU sits idle elsewhere; one limit above the whole node is cut to it.
fn ceiling(pending: &mut [Pending], state: &State, rules: &Rules) {
    if state.cpus > 0.0 {
        let cap = Value::of_cores((state.cpus - rules.reserve_cores).max(rules.min_cpu_cores));
        for p in pending.iter_mut() {
            if let (Knob::CpuMax, Value::Amount(v), Value::Amount(c)) = (p.knob, p.new, cap)
                && v > c
            {
                p.new = cap;
                p.forced = true;
                p.why.bounds.push(Bound::NodeCeiling {
                    scale: c as f64 / v as f64,
                });
            }
        }
    }
    if state.memory_bytes == 0 {
        return;
    }
    let cap = state
        .memory_bytes
        .saturating_sub(rules.reserve_memory_bytes) as f64;
    // Workloads with reservations but no value this tick (not forecast) still hold what
    // they have.
    let in_tick: std::collections::BTreeSet<usize> = pending.iter().map(|p| p.w).collect();
    let held: f64 = state
        .workloads
        .iter()
        .enumerate()
        .filter(|(i, _)| !in_tick.contains(i))
        .map(|(_, w)| held_by(w))
        .sum();
    let mut left = (cap - held).max(0.0);
    for prio in PRIORITIES {
        let mut level: Vec<&mut Pending> = pending
            .iter_mut()
            .filter(|p| state.workloads[p.w].priority == prio)
            .collect();
        let used = scale_to(&mut level, false, left, rules, |scale| Bound::NodeCeiling {
            scale,
        });
        left = (left - used).max(0.0);
    }
}

/// The memory a workload is guaranteed now.
fn held_by(w: &WorkloadState) -> f64 {
    w.value(Knob::MemoryMin)
        .amount()
        .unwrap_or(0)
        .max(w.value(Knob::MemoryLow).amount().unwrap_or(0)) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn band(p10: f64, p50: f64, p90: f64) -> Band {
        Band { p10, p50, p90 }
    }

    fn forecast(id: &str, cpu: &[Band], mem: &[Band]) -> Forecast {
        Forecast {
            workload: WorkloadId(id.into()),
            made_ms: 0,
            interval_ms: 1000,
            predictor: "test".into(),
            bands: [cpu.to_vec(), mem.to_vec(), vec![], vec![]],
        }
    }

    fn workload(id: &str, tier: Tier) -> WorkloadState {
        let mut w = WorkloadState::new(
            WorkloadId(id.into()),
            id,
            Group::new(&format!("umbra/{id}")).unwrap(),
        );
        w.tier = tier;
        w.memory_bytes = 100 * MIB;
        w.cpu_cores = 0.5;
        w
    }

    fn state(ws: Vec<WorkloadState>) -> State {
        State {
            now_ms: 10_000,
            cpus: 8.0,
            memory_bytes: 16 << 30,
            workloads: ws,
            unsupported: Vec::new(),
        }
    }

    fn find(a: &[Action], id: &str, knob: Knob) -> Option<Action> {
        a.iter()
            .find(|x| x.why.workload.0 == id && x.knob == knob)
            .cloned()
    }

    fn steady(c: f64, m: u64) -> (Vec<Band>, Vec<Band>) {
        let mf = m as f64;
        (
            vec![band(c * 0.8, c, c * 1.2); 4],
            vec![band(mf * 0.9, mf, mf * 1.1); 4],
        )
    }

    #[test]
    fn full_tier_sets_hard_limits_from_the_band_and_shadow_writes_nothing() {
        let (c, m) = steady(1.0, 200 * MIB);
        let f = vec![forecast("a", &c, &m), forecast("b", &c, &m)];
        let mut a = workload("a", Tier::Full);
        a.cpu_peak = 1.2;
        let s = state(vec![a, workload("b", Tier::Shadow)]);
        let acts = decide(&f, &s, &Rules::default());
        // cpu.max: the recent peak (above the forecast's p50) × (1 + margin).
        let cpu = find(&acts, "a", Knob::CpuMax).unwrap();
        assert_eq!(cpu.new, Value::of_cores(1.2 * 1.15));
        assert!(cpu.write && cpu.why.bounds.is_empty(), "{}", cpu.text());
        let high = find(&acts, "a", Knob::MemoryHigh).unwrap();
        assert_eq!(high.new, Value::Amount(page(m[0].p90 * 1.15)));
        let min = find(&acts, "a", Knob::MemoryMin).unwrap();
        assert_eq!(min.new, Value::Amount(page(m[0].p10)));
        assert_eq!(
            find(&acts, "a", Knob::CpuWeight).unwrap().new,
            Value::Amount(weight_for(0.8))
        );
        let shadow: Vec<&Action> = acts.iter().filter(|a| a.why.workload.0 == "b").collect();
        assert_eq!(shadow.len(), 5);
        assert!(shadow.iter().all(|a| !a.write));
        assert!(
            cpu.text().contains("cpu.max max -> 1.38 cores")
                && cpu.text().contains("recent peak 1.20 cores"),
            "{}",
            cpu.text()
        );
        // No peak above the forecast's p50 (a workload just managed): p50 × (1 + margin).
        let b = find(&acts, "b", Knob::CpuMax).unwrap();
        assert_eq!(b.new, Value::of_cores(1.0 * 1.15), "{}", b.text());
        // memory.high: p90, or a recent peak above it, × (1 + margin).
        let mut wc = workload("c", Tier::Full);
        wc.memory_peak = 250.0 * MIB as f64;
        let acts_c = decide(
            &[forecast("c", &c, &m)],
            &state(vec![wc]),
            &Rules::default(),
        );
        let high = find(&acts_c, "c", Knob::MemoryHigh).unwrap();
        assert_eq!(
            high.new,
            Value::Amount(page(250.0 * MIB as f64 * 1.15)),
            "{}",
            high.text()
        );
        assert!(high.text().contains("recent peak 250"), "{}", high.text());
        // A workload whose quantile fell to a quarter of the way from p50 (200 MiB) to
        // p90 (220 MiB): memory.high on 205 MiB, above a recent peak of 190 MiB.
        let mut wd = workload("d", Tier::Full);
        wd.memory_peak = 190.0 * MIB as f64;
        wd.memory_quantile = 0.25;
        let acts_d = decide(
            &[forecast("d", &c, &m)],
            &state(vec![wd]),
            &Rules::default(),
        );
        let high = find(&acts_d, "d", Knob::MemoryHigh).unwrap();
        let want = m[0].p50 + 0.25 * (m[0].p90 - m[0].p50);
        assert_eq!(
            high.new,
            Value::Amount(page(want * 1.15)),
            "{}",
            high.text()
        );
        assert_eq!(high.why.quantile, Some(0.25));
        assert!(
            high.text().contains("25% of the way from p50 to p90"),
            "{}",
            high.text()
        );
        // No peak kept: the forecast's p90 × (1 + margin), as a recommender sets it.
        let rules = Rules {
            peak_intervals: 0,
            ..Rules::default()
        };
        let acts = decide(&f, &s, &rules);
        let cpu = find(&acts, "a", Knob::CpuMax).unwrap();
        assert_eq!(cpu.new, Value::of_cores(1.2 * 1.15), "{}", cpu.text());
        assert!(!cpu.text().contains("peak"), "{}", cpu.text());
        let b = find(&acts, "b", Knob::CpuMax).unwrap();
        assert_eq!(b.new, Value::of_cores(1.2 * 1.15), "{}", b.text());
    }

    #[test]
    fn a_predicted_step_is_reserved_before_it_happens() {
        // Now 1 core; the forecast sees 3 cores two steps ahead.
        let cpu = vec![
            band(0.8, 1.0, 1.2),
            band(2.5, 3.0, 3.5),
            band(2.5, 3.0, 3.5),
        ];
        let (_, m) = steady(1.0, 100 * MIB);
        let mut w = workload("a", Tier::Full);
        w.cpu_peak = 1.2;
        w.applied.insert(Knob::CpuMax, Value::of_cores(1.4));
        let acts = decide(
            &[forecast("a", &cpu, &m)],
            &state(vec![w]),
            &Rules::default(),
        );
        let a = find(&acts, "a", Knob::CpuMax).unwrap();
        // p50 3.0 × 1.15 = 3.45 wanted, the rate limit allows ×2 of 1.4.
        assert_eq!(a.new, Value::of_cores(2.8));
        assert!(
            matches!(a.why.bounds[..], [Bound::RateLimit { .. }]),
            "{a:?}"
        );
        let rules = Rules {
            lead_steps: 1,
            ..Rules::default()
        };
        let mut w = workload("a", Tier::Full);
        w.cpu_peak = 1.2;
        w.applied.insert(Knob::CpuMax, Value::of_cores(1.4));
        let acts = decide(&[forecast("a", &cpu, &m)], &state(vec![w]), &rules);
        assert!(
            find(&acts, "a", Knob::CpuMax).is_none(),
            "with one step of lead the step is not seen: {acts:?}"
        );
    }

    #[test]
    fn memory_high_never_goes_below_usage_or_the_minimum() {
        let (c, m) = steady(0.1, 10 * MIB);
        let mut w = workload("a", Tier::Full);
        w.memory_bytes = 300 * MIB;
        let acts = decide(&[forecast("a", &c, &m)], &state(vec![w]), &Rules::default());
        let a = find(&acts, "a", Knob::MemoryHigh).unwrap();
        let Value::Amount(v) = a.new else { panic!() };
        assert!(v as f64 >= 300.0 * MIB as f64 * 1.05, "{}", a.text());
        assert!(matches!(a.why.bounds[..], [Bound::Floor { .. }]));
        let mut w = workload("a", Tier::Full);
        w.memory_bytes = 0;
        let acts = decide(&[forecast("a", &c, &m)], &state(vec![w]), &Rules::default());
        let Value::Amount(v) = find(&acts, "a", Knob::MemoryHigh).unwrap().new else {
            panic!()
        };
        assert!(v >= 32 * MIB);
        let cpu = find(&acts, "a", Knob::CpuMax).unwrap();
        assert_eq!(cpu.new, Value::of_cores(0.1 * 1.15));
        let (c, m) = steady(0.01, 100 * MIB);
        let acts = decide(
            &[forecast("a", &c, &m)],
            &state(vec![workload("a", Tier::Full)]),
            &Rules::default(),
        );
        assert_eq!(
            find(&acts, "a", Knob::CpuMax).unwrap().new,
            Value::of_cores(0.05)
        );
    }

    #[test]
    fn decreases_are_rate_limited_and_small_changes_are_not_written() {
        let (c, m) = steady(1.0, 100 * MIB);
        let mut w = workload("a", Tier::Full);
        w.cpu_peak = 1.2;
        w.applied.insert(Knob::CpuMax, Value::of_cores(4.0));
        let acts = decide(
            &[forecast("a", &c, &m)],
            &state(vec![w.clone()]),
            &Rules::default(),
        );
        assert_eq!(
            find(&acts, "a", Knob::CpuMax).unwrap().new,
            Value::of_cores(3.0)
        );
        w.applied.insert(Knob::CpuMax, Value::of_cores(1.4));
        let acts = decide(
            &[forecast("a", &c, &m)],
            &state(vec![w.clone()]),
            &Rules::default(),
        );
        assert!(
            find(&acts, "a", Knob::CpuMax).is_none(),
            "1.38 vs 1.40 is inside the band"
        );
        let rules = Rules {
            min_interval_ms: 5000,
            ..Rules::default()
        };
        w.applied.insert(Knob::CpuMax, Value::of_cores(3.0));
        w.written_ms.insert(Knob::CpuMax, 8000);
        let acts = decide(&[forecast("a", &c, &m)], &state(vec![w]), &rules);
        assert!(find(&acts, "a", Knob::CpuMax).is_none(), "written 2 s ago");
    }

    #[test]
    fn over_capacity_critical_workloads_are_served_first() {
        // Each guarantees p10 = 0.9 × 3 GiB = 2.7 GiB (memory.min and memory.low); the
        // node leaves 4 GiB − 256 MiB.
        let (c, m) = steady(1.0, 3 << 30);
        let f = vec![forecast("crit", &c, &m), forecast("be", &c, &m)];
        let mut crit = workload("crit", Tier::Full);
        crit.priority = Priority::Critical;
        let mut be = workload("be", Tier::Full);
        be.priority = Priority::BestEffort;
        let mut s = state(vec![be, crit]);
        s.memory_bytes = 4 << 30;
        let acts = decide(&f, &s, &Rules::default());
        let p10 = page(m[0].p10);
        for k in [Knob::MemoryMin, Knob::MemoryLow] {
            assert_eq!(find(&acts, "crit", k).unwrap().new, Value::Amount(p10));
            let b = find(&acts, "be", k).unwrap();
            let left = (4u64 << 30) - (256 << 20) - p10;
            let got = b.new.amount().unwrap();
            assert!(
                got <= left && got + PAGE > left,
                "{got} vs {left}: {}",
                b.text()
            );
            assert!(
                b.why
                    .bounds
                    .iter()
                    .any(|x| matches!(x, Bound::NodeCeiling { .. })),
                "{}",
                b.text()
            );
        }
    }

    #[test]
    fn under_contention_priority_weighs_on_cpu() {
        let (c, m) = steady(1.0, 100 * MIB);
        let ids = ["crit", "normal", "be"];
        let f: Vec<Forecast> = ids.iter().map(|id| forecast(id, &c, &m)).collect();
        let ws = ids
            .iter()
            .zip(PRIORITIES)
            .map(|(id, p)| {
                let mut w = workload(id, Tier::Warm);
                w.priority = p;
                w
            })
            .collect();
        let rules = Rules {
            max_increase: 10.0,
            max_decrease: 1.0,
            ..Rules::default()
        };
        let acts = decide(&f, &state(ws), &rules);
        let weight = |id| {
            find(&acts, id, Knob::CpuWeight)
                .unwrap()
                .new
                .amount()
                .unwrap()
        };
        // weight_for(p10 = 0.8 cores) = 180: ×4, ×1, ×¼.
        assert_eq!(
            [weight("crit"), weight("normal"), weight("be")],
            [720, 180, 45]
        );
    }

    #[test]
    fn cpu_limits_may_together_exceed_the_node_each_at_most_the_node() {
        // Two workloads that each peaked at 1.2 cores, limited to 1.2 × 1.15 = 1.38 cores
        // on a 2-core node: neither limit is cut to make them fit together (that would
        // throttle one while the other idles); one asking for more than the node (p50 4
        // cores × 1.15) gets the node.
        let (c, m) = steady(1.0, 100 * MIB);
        let (big, _) = steady(4.0, 100 * MIB);
        let f = vec![
            forecast("a", &c, &m),
            forecast("b", &c, &m),
            forecast("big", &big, &m),
        ];
        let peaked = |id: &str| {
            let mut w = workload(id, Tier::Full);
            w.cpu_peak = 1.2;
            w
        };
        let mut s = state(vec![peaked("a"), peaked("b"), workload("big", Tier::Full)]);
        s.cpus = 2.0;
        let acts = decide(&f, &s, &Rules::default());
        for id in ["a", "b"] {
            let a = find(&acts, id, Knob::CpuMax).unwrap();
            assert_eq!(a.new, Value::of_cores(1.2 * 1.15), "{}", a.text());
            assert!(a.why.bounds.is_empty(), "{}", a.text());
        }
        let b = find(&acts, "big", Knob::CpuMax).unwrap();
        assert_eq!(b.new, Value::of_cores(2.0 - 0.1), "{}", b.text());
        assert!(
            matches!(b.why.bounds[..], [Bound::NodeCeiling { scale }] if (scale - 1.9 / 4.6).abs() < 1e-3),
            "{}",
            b.text()
        );
    }

    #[test]
    fn a_uid_quota_scales_its_workloads_together() {
        let (c, m) = steady(1.0, 100 * MIB);
        let f = vec![forecast("a", &c, &m), forecast("b", &c, &m)];
        let mut a = workload("a", Tier::Full);
        a.uid = Some(1000);
        let mut b = workload("b", Tier::Full);
        b.uid = Some(1000);
        let rules = Rules {
            quotas: vec![Quota {
                uid: 1000,
                cpu_cores: Some(1.38),
                memory_bytes: None,
            }],
            ..Rules::default()
        };
        let acts = decide(&f, &state(vec![a, b]), &rules);
        let sum: f64 = acts
            .iter()
            .filter(|a| a.knob == Knob::CpuMax)
            .map(|a| a.new.cores().unwrap())
            .sum();
        assert!((sum - 1.38).abs() < 1e-3, "{sum}");
        assert!(
            find(&acts, "a", Knob::CpuMax)
                .unwrap()
                .why
                .bounds
                .iter()
                .any(|b| matches!(b, Bound::Quota { uid: 1000, .. }))
        );
    }

    #[test]
    fn a_quota_cuts_headroom_before_expected_use() {
        // p50 1 core each, peaks 1.2; "a" asks 1.2 × 2.0 = 2.4 (a wide observed error), "b"
        // 1.38. A quota of 2.2 cores: cut in proportion, "b" would get 0.80, below what it is
        // expected to use; the headroom goes first and both keep their p50.
        let (c, m) = steady(1.0, 100 * MIB);
        let f = vec![forecast("a", &c, &m), forecast("b", &c, &m)];
        let mut a = workload("a", Tier::Full);
        a.uid = Some(1000);
        a.cpu_margin = 1.0;
        a.cpu_peak = 1.2;
        let mut b = workload("b", Tier::Full);
        b.uid = Some(1000);
        b.cpu_peak = 1.2;
        let rules = Rules {
            quotas: vec![Quota {
                uid: 1000,
                cpu_cores: Some(2.2),
                memory_bytes: None,
            }],
            ..Rules::default()
        };
        let acts = decide(&f, &state(vec![a, b]), &rules);
        let got: Vec<f64> = ["a", "b"]
            .iter()
            .map(|id| find(&acts, id, Knob::CpuMax).unwrap().new.cores().unwrap())
            .collect();
        assert!((got[0] + got[1] - 2.2).abs() < 1e-3, "{got:?}");
        let share = 0.2 / 1.78;
        assert!((got[0] - (1.0 + 1.4 * share)).abs() < 1e-3, "{got:?}");
        assert!((got[1] - (1.0 + 0.38 * share)).abs() < 1e-3, "{got:?}");
    }

    #[test]
    fn a_demoted_workload_has_its_hard_limits_lifted() {
        let (c, m) = steady(1.0, 100 * MIB);
        let mut w = workload("a", Tier::Warm);
        w.applied.insert(Knob::CpuMax, Value::of_cores(1.38));
        w.applied.insert(Knob::MemoryHigh, Value::Amount(200 * MIB));
        w.applied.insert(Knob::MemoryMin, Value::Amount(90 * MIB));
        let acts = decide(&[forecast("a", &c, &m)], &state(vec![w]), &Rules::default());
        for k in [Knob::CpuMax, Knob::MemoryHigh, Knob::MemoryMin] {
            let a = find(&acts, "a", k).unwrap();
            assert_eq!(a.new, k.default_value(), "{}", a.text());
            assert_eq!(a.why.bounds, vec![Bound::TierLifted]);
        }
        assert!(find(&acts, "a", Knob::MemoryLow).is_some());
    }

    #[test]
    fn an_oom_bump_and_the_observed_error_widen_the_margin() {
        let (c, m) = steady(1.0, 100 * MIB);
        let mut w = workload("a", Tier::Full);
        w.memory_bump = 1.2;
        w.cpu_margin = 0.5;
        w.cpu_peak = 1.2;
        let acts = decide(&[forecast("a", &c, &m)], &state(vec![w]), &Rules::default());
        assert_eq!(
            find(&acts, "a", Knob::MemoryHigh).unwrap().new,
            Value::Amount(page(m[0].p90 * 1.15 * 1.2))
        );
        assert_eq!(
            find(&acts, "a", Knob::CpuMax).unwrap().new,
            Value::of_cores(1.2 * 1.5)
        );
    }

    /// Newly at the full tier: `cpu.max` is set, the memory limits wait (said so), the soft
    /// ones stay.
    #[test]
    fn a_workload_new_to_the_full_tier_gets_its_cpu_limit_before_its_memory_limits() {
        let (c, m) = steady(1.0, 100 * MIB);
        let mut w = workload("a", Tier::Full);
        w.memory_hard = false;
        w.applied.insert(Knob::MemoryHigh, Value::Amount(200 * MIB));
        let acts = decide(
            &[forecast("a", &c, &m)],
            &state(vec![w.clone()]),
            &Rules::default(),
        );
        assert!(
            find(&acts, "a", Knob::CpuMax)
                .unwrap()
                .new
                .cores()
                .is_some()
        );
        assert!(find(&acts, "a", Knob::MemoryLow).is_some());
        let high = find(&acts, "a", Knob::MemoryHigh).unwrap();
        assert_eq!(high.new, Value::Max);
        assert_eq!(high.why.bounds, vec![Bound::MemoryWaits]);
        assert!(
            find(&acts, "a", Knob::MemoryMin).is_none(),
            "never set: no change"
        );
        w.memory_hard = true;
        let acts = decide(&[forecast("a", &c, &m)], &state(vec![w]), &Rules::default());
        for k in [Knob::MemoryHigh, Knob::MemoryMin] {
            assert!(find(&acts, "a", k).unwrap().new.amount().is_some(), "{k:?}");
        }
    }

    /// A CPU margin adapted below the configured one is used down to `min_cpu_margin`;
    /// memory's never goes below the configured margin.
    #[test]
    fn a_margin_fallen_below_the_start_is_used_down_to_its_floor() {
        let (c, m) = steady(1.0, 100 * MIB);
        let mut w = workload("a", Tier::Full);
        w.cpu_peak = 1.2;
        w.cpu_margin = 0.05;
        w.memory_margin = 0.05;
        let cpu_max = |w: &WorkloadState, rules: &Rules| {
            let acts = decide(&[forecast("a", &c, &m)], &state(vec![w.clone()]), rules);
            let mem = find(&acts, "a", Knob::MemoryHigh).unwrap().new;
            assert_eq!(mem, Value::Amount(page(m[0].p90 * 1.15)));
            find(&acts, "a", Knob::CpuMax).unwrap().new
        };
        assert_eq!(cpu_max(&w, &Rules::default()), Value::of_cores(1.2 * 1.05));
        let floored = Rules {
            min_cpu_margin: 0.1,
            ..Rules::default()
        };
        assert_eq!(cpu_max(&w, &floored), Value::of_cores(1.2 * 1.1));
    }

    #[test]
    fn knobs_the_backend_lacks_are_never_decided() {
        let (c, m) = steady(1.0, 200 * MIB);
        let mut st = state(vec![workload("a", Tier::Full)]);
        st.unsupported = vec![Knob::MemoryMin, Knob::MemoryLow];
        let a = decide(&[forecast("a", &c, &m)], &st, &Rules::default());
        assert!(find(&a, "a", Knob::CpuMax).is_some());
        assert!(find(&a, "a", Knob::MemoryHigh).is_some());
        assert!(find(&a, "a", Knob::MemoryMin).is_none());
        assert!(find(&a, "a", Knob::MemoryLow).is_none());
    }

    #[test]
    fn workloads_without_forecasts_get_no_actions() {
        let s = state(vec![workload("a", Tier::Full)]);
        assert!(decide(&[], &s, &Rules::default()).is_empty());
        let empty = forecast("a", &[], &[]);
        assert!(decide(&[empty], &s, &Rules::default()).is_empty());
    }
}
