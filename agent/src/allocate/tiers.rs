//! Earned tiers: each workload's forecasts are scored against what it then used, and the
//! record decides how strongly they are mirrored into its cgroup.
//!
//! Every interval, the reservation made the interval before is compared with the usage
//! that came: *covered* when usage stayed at or under its base × (1 + margin) — the
//! recent peak or the forecast ([`super::decide::cpu_base`],
//! [`super::decide::memory_base`]); for a workload already capped, usage cannot exceed
//! its cap, so throttling (`cpu.stat`), reclaim above `memory.high` (`memory.events`) or
//! memory stalls (PSI) count as misses instead — and the relative error of the step-1
//! p50. Over a window of evaluations:
//! - **promotion** one tier up after `promote_after` consecutive evaluations with coverage
//!   ≥ `promote_coverage` and mean error ≤ `max_error`, once the record holds at least
//!   `min_samples` (the run may begin before it does). At the full tier `cpu.max` is set
//!   at once, the memory limits after `memory_after` more evaluations: a CPU limit
//!   missed throttles, a memory limit missed makes the kernel reclaim;
//! - **demotion** one tier down when coverage falls below `demote_coverage` (a lower bar:
//!   hysteresis), or at once on an OOM kill; then a cool-down before the next promotion,
//!   and the record starts over;
//! - the **margins** adapt to the misses ([`Margins`]): both start at the configured
//!   margin and rise to at most the largest allowed; CPU's may fall below its start, to
//!   `min_cpu_margin` (by default none: the recent peak or p50 alone), memory's may not.
//!   CPU's by adaptive conformal inference: up by `margin_gain` ×
//!   (1 − `target_miss`) after a miss, down by `margin_gain` × `target_miss` after an
//!   interval covered, so that in the long run `target_miss` of intervals miss. A
//!   throttled group's demand above its cap is not seen, only that it missed, and this
//!   step needs nothing more. Memory's: the smallest margin under which no more than
//!   `target_miss` of the window's intervals would have exceeded the reservation (an
//!   interval over `memory.high` counted as far over it);
//! - where the limits cover the recent peak, the **memory quantile** that `memory.high`
//!   is built on, between the forecast's p50 (0) and p90 (1), adapts the same way as CPU's
//!   margin: it starts at p90, goes down by `memory_gain` × `memory_miss` after an
//!   interval covered and up by `memory_gain` × (1 − `memory_miss`) after a miss. A
//!   workload whose p50 and recent peak have covered it long enough is held at them,
//!   rather than at a p90 that stays wide for a volatile one; a miss brings p90 back.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::decide::Rules;
use crate::predict::Band;

/// How strongly a workload's forecasts are mirrored into its cgroup: earned by the
/// forecasts' record, capped by its rule.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// Decide and explain; write nothing.
    #[default]
    Shadow,
    /// Soft reservations: `cpu.weight`, `memory.low` from the band's lower part.
    Warm,
    /// Hard ones too: `memory.min` at p10, `cpu.max` and `memory.high` at p90 + margin.
    Full,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Shadow => "shadow",
            Tier::Warm => "warm",
            Tier::Full => "full",
        }
    }

    pub fn up(self) -> Tier {
        match self {
            Tier::Shadow => Tier::Warm,
            _ => Tier::Full,
        }
    }

    pub fn down(self) -> Tier {
        match self {
            Tier::Full => Tier::Warm,
            _ => Tier::Shadow,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierRules {
    /// The tier a newly managed workload starts in.
    pub start: Tier,
    /// Evaluations remembered.
    pub window: usize,
    pub min_samples: usize,
    pub promote_coverage: f64,
    pub demote_coverage: f64,
    pub max_error: f64,
    pub promote_after: usize,
    /// Evaluations after a demotion before a promotion is possible again.
    pub cooldown: usize,
    /// Fraction of intervals the adapted margins may leave uncovered.
    pub target_miss: f64,
    /// The CPU margin's step per interval (see the module's doc).
    pub margin_gain: f64,
    /// Throttled time above this fraction of an interval is a CPU miss.
    pub throttle_miss: f64,
    /// Memory stall time (PSI `some`) above this fraction of an interval is a memory
    /// miss (senpai's target: 10 ms per 6 s ≈ 0.17%).
    pub stall_miss: f64,
    /// The memory quantile's step per interval, and the fraction of intervals it lets
    /// miss in the long run (see the module's doc); a gain of 0 keeps `memory.high` on p90.
    pub memory_gain: f64,
    pub memory_miss: f64,
    /// Evaluations at the full tier, once promoted to it, before its memory limits are
    /// set too ([`Record::memory_hard`]); a workload that starts there (`start`) has them
    /// from the start.
    pub memory_after: usize,
}

impl Default for TierRules {
    fn default() -> Self {
        TierRules {
            start: Tier::Shadow,
            window: 60,
            min_samples: 10,
            promote_coverage: 0.9,
            demote_coverage: 0.75,
            max_error: 0.5,
            promote_after: 5,
            cooldown: 30,
            target_miss: 0.05,
            margin_gain: 0.01,
            throttle_miss: 0.05,
            stall_miss: 0.01,
            memory_gain: 0.3,
            memory_miss: 0.03,
            memory_after: 5,
        }
    }
}

/// What happened in one interval, for one workload.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Outcome {
    pub cpu_cores: f64,
    pub memory_bytes: f64,
    /// The interval, s.
    pub seconds: f64,
    /// Feedback from the workload's group in the interval (deltas).
    pub throttled_s: f64,
    pub memory_high_events: u64,
    pub memory_stall_s: f64,
    pub oom_kills: u64,
    /// Whether a CPU cap and a memory high mark were in force in the interval.
    pub cpu_capped: bool,
    pub memory_capped: bool,
}

/// What a workload's reservation for an interval was made from: the step-1 forecast
/// bands and what the margins of its limits multiply ([`super::decide::cpu_base`],
/// [`super::decide::memory_base`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Basis {
    pub cpu: Band,
    pub memory: Band,
    pub cpu_base: f64,
    pub memory_base: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Eval {
    covered: bool,
    error: f64,
    mem_ratio: f64,
}

/// Below these, errors are relative to the floor (an idle workload is not "100% off").
const CPU_FLOOR: f64 = 0.05;
const MEM_FLOOR: f64 = 16.0 * 1024.0 * 1024.0;

/// What the adaptive margins move within (`[allocate.rules]`): both start at `start`;
/// CPU's may fall to `min_cpu`, memory's to `start`; neither rises above `max`
/// (`min_cpu` ≤ `start` ≤ `max`, as [`Margins::of`] makes them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Margins {
    pub start: f64,
    pub min_cpu: f64,
    pub max: f64,
}

impl Margins {
    pub fn of(r: &Rules) -> Margins {
        Margins {
            start: r.margin,
            min_cpu: r.min_cpu_margin.min(r.margin),
            max: r.max_margin.max(r.margin),
        }
    }
}

/// A tier change and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TierChange {
    pub from: Tier,
    pub to: Tier,
    pub coverage: f64,
    pub error: f64,
    pub reason: String,
}

/// One workload's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    evals: VecDeque<Eval>,
    streak: usize,
    cooldown: usize,
    /// Evaluations made at the full tier since it was reached.
    at_full: usize,
    pub tier: Tier,
    pub cpu_margin: f64,
    pub memory_margin: f64,
    /// Where between the forecast's p50 (0) and p90 (1) `memory.high` is built.
    pub memory_quantile: f64,
}

impl Record {
    pub fn new(r: &TierRules, margin: f64) -> Record {
        Record {
            evals: VecDeque::new(),
            streak: 0,
            cooldown: 0,
            // Started there by configuration: trusted from the start.
            at_full: if r.start == Tier::Full {
                r.memory_after
            } else {
                0
            },
            tier: r.start,
            cpu_margin: margin,
            memory_margin: margin,
            memory_quantile: 1.0,
        }
    }

    pub fn samples(&self) -> usize {
        self.evals.len()
    }

    /// Its evaluations were made by forecasts the agent no longer holds the history of (a
    /// record kept from the last run, or from long ago): kept, but its full tier must be
    /// earned again — `promote_after` good evaluations from the warm tier, the memory
    /// limits `memory_after` after that — unless `r` starts every workload there. Never
    /// below where a new record starts; the margins stay as they were adapted.
    pub fn on_probation(&mut self, r: &TierRules) {
        self.tier = self.tier.min(Tier::Warm).max(r.start);
        self.streak = 0;
        self.at_full = if self.tier == Tier::Full {
            r.memory_after
        } else {
            0
        };
    }

    /// Whether what was read from disk is a record this build could have made: at most
    /// `max_evals` evaluations, every number finite and in its range.
    pub fn is_sound(&self, max_evals: usize) -> bool {
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        self.evals.len() <= max_evals
            && self
                .evals
                .iter()
                .all(|e| e.error.is_finite() && e.mem_ratio.is_finite())
            && self.cpu_margin.is_finite()
            && self.memory_margin.is_finite()
            && unit(self.memory_quantile)
    }

    /// Whether the full tier has held for `memory_after` evaluations: its memory limits
    /// are set from then on, `cpu.max` from the promotion.
    pub fn memory_hard(&self, r: &TierRules) -> bool {
        self.tier == Tier::Full && self.at_full >= r.memory_after
    }

    pub fn coverage(&self) -> f64 {
        if self.evals.is_empty() {
            return 0.0;
        }
        self.evals.iter().filter(|e| e.covered).count() as f64 / self.evals.len() as f64
    }

    pub fn error(&self) -> f64 {
        if self.evals.is_empty() {
            return f64::INFINITY;
        }
        self.evals.iter().map(|e| e.error).sum::<f64>() / self.evals.len() as f64
    }

    /// Scores the reservation made an interval ago (`basis`) against what came; may
    /// change the tier (capped at `max`). `margins`: what the margins adapt within.
    pub fn observe(
        &mut self,
        r: &TierRules,
        margins: Margins,
        basis: Basis,
        o: &Outcome,
        max: Tier,
    ) -> Option<TierChange> {
        let max_margin = margins.max;
        self.at_full = if self.tier == Tier::Full {
            self.at_full + 1
        } else {
            0
        };
        let (cpu, mem) = (basis.cpu, basis.memory);
        let cpu_ratio = o.cpu_cores / basis.cpu_base.max(CPU_FLOOR);
        let mem_ratio = o.memory_bytes / basis.memory_base.max(MEM_FLOOR);
        let secs = o.seconds.max(1e-3);
        let cpu_miss = if o.cpu_capped {
            o.throttled_s / secs > r.throttle_miss
        } else {
            cpu_ratio > 1.0 + self.cpu_margin && o.cpu_cores > CPU_FLOOR
        };
        let mem_miss = if o.memory_capped {
            o.memory_high_events > 0 && o.memory_stall_s / secs > r.stall_miss
        } else {
            mem_ratio > 1.0 + self.memory_margin && o.memory_bytes > MEM_FLOOR
        };
        let err =
            |actual: f64, p50: f64, floor: f64| (actual - p50).abs() / actual.max(p50).max(floor);
        let error =
            err(o.cpu_cores, cpu.p50, CPU_FLOOR).max(err(o.memory_bytes, mem.p50, MEM_FLOOR));
        self.evals.push_back(Eval {
            covered: !cpu_miss && !mem_miss,
            error,
            // Capped usage says nothing about demand above the cap: an interval over
            // `memory.high` counts as far over it.
            mem_ratio: if mem_miss && o.memory_capped {
                1.0 + max_margin
            } else {
                mem_ratio
            },
        });
        while self.evals.len() > r.window.max(1) {
            self.evals.pop_front();
        }
        self.adapt_margins(r, margins, cpu_miss);
        let miss = if mem_miss { 1.0 } else { 0.0 };
        self.memory_quantile =
            (self.memory_quantile + r.memory_gain * (miss - r.memory_miss)).clamp(0.0, 1.0);
        let (coverage, error) = (self.coverage(), self.error());
        let from = self.tier;
        let change = |to: Tier, reason: String| TierChange {
            from,
            to,
            coverage,
            error,
            reason,
        };
        if o.oom_kills > 0 && self.tier > Tier::Shadow {
            self.demote(r);
            return Some(change(self.tier, format!("{} OOM kill(s)", o.oom_kills)));
        }
        if self.evals.len() >= r.min_samples
            && coverage < r.demote_coverage
            && self.tier > Tier::Shadow
        {
            self.demote(r);
            return Some(change(
                self.tier,
                format!(
                    "coverage {:.0}% below {:.0}%",
                    coverage * 100.0,
                    r.demote_coverage * 100.0
                ),
            ));
        }
        if self.tier > max {
            self.tier = max;
            self.streak = 0;
            return Some(change(max, format!("capped at {}", max.name())));
        }
        self.cooldown = self.cooldown.saturating_sub(1);
        let good = coverage >= r.promote_coverage && error <= r.max_error;
        self.streak = if good { self.streak + 1 } else { 0 };
        if self.streak >= r.promote_after
            && self.evals.len() >= r.min_samples
            && self.cooldown == 0
            && self.tier < max
        {
            self.tier = self.tier.up();
            self.streak = 0;
            return Some(change(
                self.tier,
                format!(
                    "coverage {:.0}% ≥ {:.0}% and error {:.0}% ≤ {:.0}% for {} intervals",
                    coverage * 100.0,
                    r.promote_coverage * 100.0,
                    error * 100.0,
                    r.max_error * 100.0,
                    r.promote_after
                ),
            ));
        }
        None
    }

    /// The workload's forecast error drifted (its model no longer fits): back to the
    /// shadow tier, and kept there — no promotion streak — while the drift lasts.
    pub fn drifting(&mut self, r: &TierRules) -> Option<TierChange> {
        self.streak = 0;
        self.cooldown = self.cooldown.max(r.cooldown);
        if self.tier == Tier::Shadow {
            return None;
        }
        let change = TierChange {
            from: self.tier,
            to: Tier::Shadow,
            coverage: self.coverage(),
            error: self.error(),
            reason: "its forecast error drifted (flagged for retraining)".into(),
        };
        self.tier = Tier::Shadow;
        self.evals.clear();
        Some(change)
    }

    fn demote(&mut self, r: &TierRules) {
        self.tier = self.tier.down();
        self.streak = 0;
        self.cooldown = r.cooldown;
        self.evals.clear();
    }

    fn adapt_margins(&mut self, r: &TierRules, m: Margins, cpu_miss: bool) {
        let (margin, max_margin) = (m.start, m.max);
        let miss = if cpu_miss { 1.0 } else { 0.0 };
        self.cpu_margin =
            (self.cpu_margin + r.margin_gain * (miss - r.target_miss)).clamp(m.min_cpu, max_margin);
        let mut v: Vec<f64> = self.evals.iter().map(|e| e.mem_ratio).collect();
        self.memory_margin = if v.len() < r.min_samples.max(1) {
            margin
        } else {
            v.sort_by(f64::total_cmp);
            let idx = ((1.0 - r.target_miss) * (v.len() - 1) as f64).round() as usize;
            (v[idx.min(v.len() - 1)] - 1.0).clamp(margin, max_margin)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default margins, CPU's held at its start.
    const KEPT: Margins = Margins {
        start: 0.15,
        min_cpu: 0.15,
        max: 1.0,
    };

    fn band(v: f64) -> Band {
        Band {
            p10: v * 0.9,
            p50: v,
            p90: v * 1.1,
        }
    }

    /// Forecasts of `cpu` cores and M bytes; the limits' bases their p90s.
    fn basis(cpu: f64) -> Basis {
        Basis {
            cpu: band(cpu),
            memory: band(M),
            cpu_base: cpu * 1.1,
            memory_base: M * 1.1,
        }
    }

    fn out(cpu: f64, mem: f64) -> Outcome {
        Outcome {
            cpu_cores: cpu,
            memory_bytes: mem,
            seconds: 1.0,
            ..Outcome::default()
        }
    }

    const M: f64 = 200.0 * 1024.0 * 1024.0;

    #[test]
    fn good_forecasts_earn_warm_then_full_and_no_further() {
        let r = TierRules::default();
        let mut rec = Record::new(&r, 0.15);
        let mut changes = Vec::new();
        let mut memory = None;
        for i in 0..100 {
            if let Some(c) = rec.observe(&r, KEPT, basis(1.0), &out(1.0, M), Tier::Full) {
                changes.push((i, c.to));
            }
            if rec.memory_hard(&r) && memory.is_none() {
                memory = Some(i);
            }
        }
        // 10 samples, the last 5 good in a row: warm at the 10th, full 5 later; the memory
        // limits after 5 more.
        assert_eq!(changes, vec![(9, Tier::Warm), (14, Tier::Full)]);
        assert_eq!(memory, Some(19));
        assert_eq!(rec.tier, Tier::Full);
        assert_eq!(rec.cpu_margin, 0.15);
        // Demoted and promoted again: the memory limits wait again.
        rec.demote(&r);
        let good = |rec: &mut Record| {
            rec.observe(&r, KEPT, basis(1.0), &out(1.0, M), Tier::Full);
        };
        while rec.tier != Tier::Full {
            good(&mut rec);
        }
        for _ in 0..r.memory_after {
            assert!(!rec.memory_hard(&r));
            good(&mut rec);
        }
        assert!(rec.memory_hard(&r));
        // Started at the full tier by configuration: trusted from the start.
        let start = TierRules {
            start: Tier::Full,
            ..TierRules::default()
        };
        assert!(Record::new(&start, 0.15).memory_hard(&start));
        assert!(!Record::new(&r, 0.15).memory_hard(&r));
    }

    /// The run of good evaluations a promotion needs may begin before the record holds
    /// `min_samples`, but not before a miss that left coverage under the bar.
    #[test]
    fn a_promotion_counts_its_run_from_the_last_evaluation_under_the_bar() {
        let r = TierRules::default();
        let mut rec = Record::new(&r, 0.15);
        let mut changes = Vec::new();
        for i in 0..40 {
            // Over the base by half at the 3rd: coverage under 90% until the 10th.
            let cpu = if i == 2 { 1.5 } else { 1.0 };
            if let Some(c) = rec.observe(&r, KEPT, basis(1.0), &out(cpu, M), Tier::Full) {
                changes.push((i, c.to));
            }
        }
        assert_eq!(changes, vec![(13, Tier::Warm), (18, Tier::Full)]);
    }

    /// CPU's margin falls from its start while the limits keep covering the workload, to
    /// `min_cpu` and no lower; memory's stays at its start.
    #[test]
    fn the_cpu_margin_falls_below_its_start_to_its_floor_while_covered() {
        let r = TierRules::default();
        let m = Margins {
            start: 0.15,
            min_cpu: 0.05,
            max: 1.0,
        };
        let mut rec = Record::new(&r, m.start);
        let covered = 0.15 / (r.margin_gain * r.target_miss);
        for _ in 0..(covered as usize / 2) {
            rec.observe(&r, m, basis(1.0), &out(1.0, M), Tier::Full);
        }
        assert!(
            (0.05..0.12).contains(&rec.cpu_margin),
            "half way down: {}",
            rec.cpu_margin
        );
        for _ in 0..covered as usize {
            rec.observe(&r, m, basis(1.0), &out(1.0, M), Tier::Full);
        }
        assert_eq!(rec.cpu_margin, 0.05);
        assert_eq!(rec.memory_margin, 0.15);
    }

    #[test]
    fn a_drifting_workload_goes_to_shadow_and_stays_there_while_it_drifts() {
        let r = TierRules::default();
        let mut rec = Record::new(&r, 0.15);
        let good = |rec: &mut Record| rec.observe(&r, KEPT, basis(1.0), &out(1.0, M), Tier::Full);
        for _ in 0..30 {
            good(&mut rec);
        }
        assert_eq!(rec.tier, Tier::Full);
        let c = rec.drifting(&r).expect("a change");
        assert_eq!(
            (c.from, c.to, rec.tier),
            (Tier::Full, Tier::Shadow, Tier::Shadow)
        );
        // Good intervals while it still drifts earn nothing.
        for _ in 0..50 {
            assert!(good(&mut rec).is_none());
            assert!(rec.drifting(&r).is_none());
        }
        assert_eq!(rec.tier, Tier::Shadow);
        // Drift over: it earns its tiers again.
        for _ in 0..50 {
            good(&mut rec);
        }
        assert_eq!(rec.tier, Tier::Full);
    }

    #[test]
    fn a_cap_holds_the_tier_down() {
        let r = TierRules::default();
        let mut rec = Record::new(&r, 0.15);
        for _ in 0..100 {
            rec.observe(&r, KEPT, basis(1.0), &out(1.0, M), Tier::Warm);
        }
        assert_eq!(rec.tier, Tier::Warm);
    }

    #[test]
    fn bad_forecasts_demote_with_hysteresis_and_a_cooldown() {
        let r = TierRules::default();
        let mut rec = Record::new(&r, 0.15);
        for _ in 0..30 {
            rec.observe(&r, KEPT, basis(1.0), &out(1.0, M), Tier::Full);
        }
        assert_eq!(rec.tier, Tier::Full);
        // Capped and throttled a third of the time: coverage falls under 75%.
        let throttled = Outcome {
            cpu_capped: true,
            throttled_s: 0.5,
            ..out(1.0, M)
        };
        let mut demoted_at = None;
        for i in 0..60 {
            let o = if i % 3 == 0 {
                throttled
            } else {
                Outcome {
                    cpu_capped: true,
                    ..out(1.0, M)
                }
            };
            if let Some(c) = rec.observe(&r, KEPT, basis(1.0), &o, Tier::Full) {
                assert_eq!(c.to, Tier::Warm, "{c:?}");
                demoted_at = Some(i);
                break;
            }
        }
        // Not before the window has min_samples of the bad record.
        assert!(
            demoted_at.is_some_and(|i| i >= 9),
            "demoted at {demoted_at:?}"
        );
        // Perfect again: no promotion before the cool-down and a fresh record.
        let mut back = None;
        for i in 0..100 {
            if let Some(c) = rec.observe(&r, KEPT, basis(1.0), &out(1.0, M), Tier::Full) {
                back.get_or_insert((i, c.to));
            }
        }
        let (i, to) = back.unwrap();
        assert_eq!(to, Tier::Full);
        assert!(i >= 14, "promoted again after {i} intervals");
    }

    #[test]
    fn an_oom_kill_demotes_at_once() {
        let r = TierRules::default();
        let mut rec = Record::new(&r, 0.15);
        rec.tier = Tier::Full;
        let o = Outcome {
            oom_kills: 1,
            ..out(1.0, M)
        };
        let c = rec.observe(&r, KEPT, basis(1.0), &o, Tier::Full).unwrap();
        assert_eq!((c.from, c.to), (Tier::Full, Tier::Warm));
        assert!(c.reason.contains("OOM"));
    }

    #[test]
    fn the_memory_margin_follows_the_observed_error() {
        let r = TierRules::default();
        let mut rec = Record::new(&r, 0.15);
        // Memory runs 40% over the forecast's p90 a fifth of the time.
        for i in 0..60 {
            let mem = if i % 5 == 0 { 1.1 * 1.4 * M } else { M };
            rec.observe(&r, KEPT, basis(1.0), &out(1.0, mem), Tier::Full);
        }
        assert!(
            (rec.memory_margin - 0.4).abs() < 1e-6,
            "{}",
            rec.memory_margin
        );
        assert_eq!(rec.cpu_margin, 0.15);
    }

    /// `memory.high`'s quantile starts at p90, falls by `memory_gain` × `memory_miss` with
    /// each interval covered, and steps up by `memory_gain` × (1 − `memory_miss`) after a
    /// miss: in the long run `memory_miss` of intervals miss.
    #[test]
    fn the_memory_quantile_falls_while_covered_and_rises_after_a_miss() {
        let r = TierRules::default();
        let mut rec = Record::new(&r, 0.15);
        assert_eq!(rec.memory_quantile, 1.0);
        rec.observe(&r, KEPT, basis(1.0), &out(1.0, M), Tier::Full);
        let down = r.memory_gain * r.memory_miss;
        assert!((rec.memory_quantile - (1.0 - down)).abs() < 1e-12);
        for _ in 0..1000 {
            rec.observe(&r, KEPT, basis(1.0), &out(1.0, M), Tier::Full);
        }
        assert_eq!(rec.memory_quantile, 0.0, "at p50, never below");
        // Memory 30% over the base, beyond the 15% margin: a miss.
        rec.observe(&r, KEPT, basis(1.0), &out(1.0, 1.3 * M), Tier::Full);
        let up = r.memory_gain * (1.0 - r.memory_miss);
        assert!(
            (rec.memory_quantile - up).abs() < 1e-12,
            "{}",
            rec.memory_quantile
        );
        // Usage above the base one interval in ten, the margin held at 15%: the quantile
        // settles where `memory_miss` of intervals miss.
        let mut rec = Record::new(&r, 0.15);
        let (mut misses, mut n) = (0, 0);
        for i in 0..20_000u32 {
            // The base is p50 (M) + quantile × (p90 − p50) (M/2); usage is M, and 1.6 M in
            // one interval of ten: covered only with the quantile above 0.78.
            let base = M * (1.0 + 0.5 * rec.memory_quantile);
            let mem = if i % 10 == 0 { 1.6 * M } else { M };
            let b = Basis {
                memory_base: base,
                ..basis(1.0)
            };
            if i >= 10_000 {
                misses += (mem > base * 1.15) as u32;
                n += 1;
            }
            rec.observe(
                &r,
                Margins { max: 0.15, ..KEPT },
                b,
                &out(1.0, mem),
                Tier::Full,
            );
        }
        let rate = misses as f64 / n as f64;
        assert!((rate - r.memory_miss).abs() < 0.005, "miss rate {rate}");
        assert!(
            (0.6..0.9).contains(&rec.memory_quantile),
            "{}",
            rec.memory_quantile
        );
    }

    /// A capped group's demand above its cap is never seen, only that it was throttled:
    /// the CPU margin steps up after a miss and down after a covered interval, and settles
    /// where `target_miss` of intervals miss.
    #[test]
    fn the_cpu_margin_settles_where_target_miss_of_intervals_are_throttled() {
        let r = TierRules::default();
        let mut rec = Record::new(&r, 0.0);
        // Demand 1.3× the base, 2% of intervals 1.6×. A miss is throttling above 5% of an
        // interval: the spikes miss under a margin of 52%, the rest under 23.5% — so the
        // margin settles just above 23.5% (the spikes alone miss too rarely).
        let (mut misses, mut n) = (0, 0);
        for i in 0..20_000 {
            let demand = if i % 50 == 0 { 1.6 } else { 1.3 } * 1.1;
            let cap = 1.1 * (1.0 + rec.cpu_margin);
            let throttled = demand > cap;
            let o = Outcome {
                cpu_capped: true,
                throttled_s: if throttled { 1.0 - cap / demand } else { 0.0 },
                ..out(demand.min(cap), M)
            };
            rec.observe(
                &r,
                Margins {
                    start: 0.0,
                    min_cpu: 0.0,
                    max: 1.0,
                },
                basis(1.0),
                &o,
                Tier::Full,
            );
            if i >= 10_000 {
                misses += (o.throttled_s > r.throttle_miss) as usize;
                n += 1;
            }
        }
        let rate = misses as f64 / n as f64;
        assert!((rate - r.target_miss).abs() < 0.01, "miss rate {rate}");
        assert!(
            (0.2..0.3).contains(&rec.cpu_margin),
            "margin {}",
            rec.cpu_margin
        );
    }
}
