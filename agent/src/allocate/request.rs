//! A request's reservation, as the live agent places it and `umbra simulate` replays it:
//! the limits its prediction sets, whether its executable's recent requests earned them,
//! and whether the kernel held a capped request back.

use std::collections::VecDeque;

use super::{
    cgroups::Knob,
    decide::{Rules, WorkloadState},
    tiers::{Tier, TierRules},
};
use crate::{
    FastMap,
    predict::{MIN_REQUEST_SECONDS, RequestPrediction, per_request::RECORD},
};

/// Executables whose held-back record is kept; past it the records start over.
const MAX_HELD_BACK: usize = 4096;

/// What a request's prediction reserves for it: CPU cores (`cpu.max`), `memory.high` and
/// `memory.low` / `memory.min` bytes (page-aligned), and the CPU rate of its `cpu.weight`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reservation {
    pub cores: f64,
    pub high: u64,
    pub low: u64,
    pub weight_cores: f64,
}

/// The most a request's `memory.high` is raised over its prediction's p90 for its
/// executable's past misses.
const MAX_MEMORY_FACTOR: f64 = 4.0;

/// The reservation of a request predicted `p`: its CPU seconds' p90 over its duration's
/// p50 times `1 + margin`, at least the rules' minimum; never more cores than the node's
/// `cpus` (0: unknown) or its workload's own `cap`. Its `memory.high` at its peak RSS's
/// p90 times `1 + margin`, or — when one of its executable's recent requests peaked
/// further over its own prediction — times that request's ratio (at most
/// [`MAX_MEMORY_FACTOR`]): a request short of memory is reclaimed, not merely slowed as
/// one short of CPU is, and an executable whose peaks vary widely (a linker, by what it
/// links) gets the room its record shows it needs.
pub fn reservation(
    p: &RequestPrediction,
    margin: f64,
    rules: &Rules,
    cpus: f64,
    cap: Option<f64>,
) -> Reservation {
    let margin = 1.0 + margin;
    let duration = p.duration_seconds.p50.max(MIN_REQUEST_SECONDS);
    let mut cores = (p.cpu_seconds.p90 / duration * margin).max(rules.min_cpu_cores);
    if cpus > 0.0 {
        cores = cores.min(cpus);
    }
    if let Some(cap) = cap {
        cores = cores.min(cap);
    }
    let memory = p
        .record
        .iter()
        .map(|r| r[1] as f64)
        .filter(|r| r.is_finite())
        .fold(margin, f64::max)
        .min(MAX_MEMORY_FACTOR.max(margin));
    Reservation {
        cores,
        high: ((p.peak_rss_bytes.p90 * memory).max(rules.min_memory_bytes as f64) as u64) / 4096
            * 4096,
        low: (p.peak_rss_bytes.p10.max(0.0) as u64) / 4096 * 4096,
        weight_cores: p.cpu_seconds.p10 / duration,
    }
}

/// What an executable's recent predicted requests say of the next one's hard limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Fewer than `tiers.min_samples` in its record.
    TooFew,
    Earned {
        within: usize,
        of: usize,
    },
    Failed {
        within: usize,
        of: usize,
    },
}

/// The verdict of `record` (what each of an executable's last predicted requests used of
/// its prediction, `per_request::used`): earned when at least `tiers.min_samples` of them
/// are in it and at least `tiers.promote_coverage` of them stayed within `1 + margin` of
/// what was predicted, the `held_back` ones (capped, their use no measure of their need)
/// counting as misses.
pub fn verdict(record: &[[f32; 2]], held_back: usize, margin: f64, tiers: &TierRules) -> Verdict {
    let of = record.len();
    let bound = (1.0 + margin) as f32;
    let within = record
        .iter()
        .filter(|r| r[0] <= bound && r[1] <= bound)
        .count()
        .saturating_sub(held_back);
    if of < tiers.min_samples.max(1) {
        Verdict::TooFew
    } else if within as f64 >= tiers.promote_coverage * of as f64 {
        Verdict::Earned { within, of }
    } else {
        Verdict::Failed { within, of }
    }
}

/// The tier a new request predicted `p` is placed at, its workload at `tier` and its rule
/// capped at `max`, with why when its own record decided it. Its executable's recent
/// requests decide once there are enough of them: earned, the full tier (within `max`)
/// whatever its workload's; failed, at most the warm tier (soft settings: its workload's
/// limits hold it), whatever its workload's — a workload's forecasts can earn it hard
/// limits its requests' predictions do not. A prior (kin's runs) and a record too short
/// leave its workload's tier.
pub fn tier(
    p: &RequestPrediction,
    tier: Tier,
    max: Tier,
    held_back: usize,
    margin: f64,
    tiers: &TierRules,
) -> (Tier, Option<String>) {
    if p.is_prior() {
        return (tier, None);
    }
    match verdict(&p.record, held_back, margin, tiers) {
        Verdict::Earned { within, of } if tier < Tier::Full && max >= Tier::Full => (
            Tier::Full,
            Some(format!(
                "full tier earned by its executable's requests: {within} of the last {of} \
                 within their limits"
            )),
        ),
        Verdict::Failed { within, of } if tier > Tier::Warm => (
            Tier::Warm,
            Some(format!(
                "soft only: its executable's requests did not earn hard limits, {within} of \
                 the last {of} within them"
            )),
        ),
        _ => (tier, None),
    }
}

/// Which of its workload's hard limits (`cpu.max`, `memory.high`) pool its requests' use:
/// those it has applied, at the full tier.
pub fn pooled(workload: &WorkloadState) -> (bool, bool) {
    if workload.tier < Tier::Full {
        return (false, false);
    }
    (
        workload.value(Knob::CpuMax).amount().is_some(),
        workload.value(Knob::MemoryHigh).amount().is_some(),
    )
}

/// Which hard limits a request predicted `p` at `tier` gets of its own: (`cpu.max`,
/// `memory.high`). None for a prior (a guess) or below the full tier; at the full tier
/// each its workload does not hold already (`pooled`). A workload's limit pools its
/// requests' use, where one request's burst over its prediction is no shortage while
/// its siblings are below theirs; a request's own would throttle or reclaim it.
pub fn hard(p: &RequestPrediction, tier: Tier, pooled: (bool, bool)) -> (bool, bool) {
    if p.is_prior() || tier < Tier::Full {
        return (false, false);
    }
    (!pooled.0, !pooled.1)
}

/// Whether the kernel held back a request placed with hard limits: throttled for more
/// than `tiers.throttle_miss` of its life, or reclaimed at `memory.high`.
pub fn was_held_back(
    throttled_s: f64,
    lived_s: f64,
    memory_high_events: u64,
    tiers: &TierRules,
) -> bool {
    throttled_s / lived_s.max(1e-6) > tiers.throttle_miss || memory_high_events > 0
}

/// Per executable, whether the kernel held back each of its last [`RECORD`] requests
/// placed with hard limits — what their predictions' record cannot see, their use capped.
#[derive(Debug, Default)]
pub struct HeldBack(FastMap<String, VecDeque<bool>>);

impl HeldBack {
    /// Every executable's verdicts, oldest first, sorted by key.
    pub fn entries(&self) -> Vec<(String, Vec<bool>)> {
        let mut v: Vec<(String, Vec<bool>)> = self
            .0
            .iter()
            .map(|(k, b)| (k.clone(), b.iter().copied().collect()))
            .collect();
        v.sort();
        v
    }

    /// A record of `entries` ([`entries`](Self::entries)), within the bounds.
    pub fn from_entries(entries: Vec<(String, Vec<bool>)>) -> HeldBack {
        let mut h = HeldBack::default();
        for (k, backs) in entries.into_iter().take(MAX_HELD_BACK) {
            let skip = backs.len().saturating_sub(RECORD);
            h.0.insert(k, backs.into_iter().skip(skip).collect());
        }
        h
    }

    pub fn push(&mut self, key: &str, back: bool) {
        if self.0.len() >= MAX_HELD_BACK && !self.0.contains_key(key) {
            self.0.clear();
        }
        let h = self.0.entry(key.to_string()).or_default();
        if h.len() >= RECORD {
            h.pop_front();
        }
        h.push_back(back);
    }

    /// How many of `key`'s recent capped requests were held back.
    pub fn count(&self, key: &str) -> usize {
        self.0
            .get(key)
            .map_or(0, |h| h.iter().filter(|&&b| b).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{aggregate::WorkloadId, predict::Band};

    fn predicted(source: &str, record: Vec<[f32; 2]>) -> RequestPrediction {
        let b = |v: f64| Band {
            p10: v * 0.8,
            p50: v,
            p90: v * 1.2,
        };
        RequestPrediction {
            tgid: 1,
            exec_ns: 0,
            workload: WorkloadId("exe:sha256:ab".into()),
            cpu_seconds: b(2.0),
            peak_rss_bytes: b(1e8),
            duration_seconds: b(4.0),
            io_bytes: b(0.0),
            source: source.into(),
            record,
        }
    }

    /// An executable's record decides once long enough, both ways: earned lifts a request
    /// to the full tier (not past its rule's cap), failed holds it at soft settings even
    /// when its workload's forecasts earned hard limits; too short a record, or a prior,
    /// leaves its workload's tier.
    #[test]
    fn an_executables_record_decides_its_requests_tier_once_long_enough() {
        let t = TierRules::default();
        let within = vec![[0.9, 1.0]; 10];
        let mut failed = within.clone();
        failed[..2].fill([1.5, 1.0]);
        let tier = |p: &RequestPrediction, workload: Tier, max: Tier| {
            super::tier(p, workload, max, 0, 0.15, &t)
        };
        let (full, why) = tier(
            &predicted("profile", within.clone()),
            Tier::Shadow,
            Tier::Full,
        );
        assert_eq!(full, Tier::Full);
        assert!(why.unwrap().contains("10 of the last 10"));
        let capped = tier(
            &predicted("profile", within.clone()),
            Tier::Shadow,
            Tier::Warm,
        );
        assert_eq!(capped.0, Tier::Shadow);
        let (soft, why) = tier(
            &predicted("profile", failed.clone()),
            Tier::Full,
            Tier::Full,
        );
        assert_eq!(soft, Tier::Warm);
        assert!(why.unwrap().contains("8 of the last 10"));
        assert_eq!(
            tier(&predicted("profile", failed), Tier::Shadow, Tier::Full).0,
            Tier::Shadow
        );
        let short = predicted("profile", within[..9].to_vec());
        assert_eq!(tier(&short, Tier::Full, Tier::Full), (Tier::Full, None));
        assert_eq!(tier(&short, Tier::Shadow, Tier::Full), (Tier::Shadow, None));
        let prior = predicted("prior:node", within.clone());
        assert_eq!(tier(&prior, Tier::Shadow, Tier::Full), (Tier::Shadow, None));
        // Held back, the ninth of ten within is a miss.
        let mut nine = within;
        nine[0] = [1.5, 1.0];
        let p = predicted("profile", nine);
        assert_eq!(
            super::tier(&p, Tier::Shadow, Tier::Full, 0, 0.15, &t).0,
            Tier::Full
        );
        assert_eq!(
            super::tier(&p, Tier::Shadow, Tier::Full, 1, 0.15, &t).0,
            Tier::Shadow
        );
    }

    /// A request's own limit for each resource its workload's does not pool; nothing hard
    /// for a prior or below the full tier.
    #[test]
    fn a_request_gets_its_own_limit_where_its_workload_has_none() {
        use crate::allocate::cgroups::{Group, Value};
        let p = predicted("profile", Vec::new());
        let mut w = WorkloadState::new(p.workload.clone(), "x", Group::ROOT.child("w"));
        w.tier = Tier::Full;
        assert_eq!(pooled(&w), (false, false), "nothing applied yet");
        assert_eq!(hard(&p, Tier::Full, pooled(&w)), (true, true));
        w.applied.insert(Knob::CpuMax, Value::of_cores(1.0));
        assert_eq!(hard(&p, Tier::Full, pooled(&w)), (false, true));
        w.applied.insert(Knob::MemoryHigh, Value::Amount(1 << 30));
        assert_eq!(hard(&p, Tier::Full, pooled(&w)), (false, false));
        w.tier = Tier::Warm;
        assert_eq!(
            pooled(&w),
            (false, false),
            "its limits not in force below full"
        );
        assert_eq!(hard(&p, Tier::Warm, (false, false)), (false, false));
        let prior = predicted("prior:kin", Vec::new());
        assert_eq!(hard(&prior, Tier::Full, (false, false)), (false, false));
        let r = reservation(&p, 0.15, &Rules::default(), 4.0, Some(0.5));
        assert_eq!(r.cores, 0.5, "its workload's cap");
        let r = reservation(&p, 0.15, &Rules::default(), 4.0, None);
        assert!((r.cores - 2.4 / 4.0 * 1.15).abs() < 1e-9, "{r:?}");
        assert_eq!(r.high, (1.2e8 * 1.15) as u64 / 4096 * 4096);
    }

    /// A request's `memory.high` makes room for the furthest its executable's recent
    /// requests peaked over their predictions, within bounds.
    #[test]
    fn a_requests_memory_limit_makes_room_for_its_executables_past_misses() {
        let high = |record: Vec<[f32; 2]>| {
            let p = predicted("profile", record);
            reservation(&p, 0.15, &Rules::default(), 4.0, None).high
        };
        let p90 = 1.2e8;
        let page = |b: f64| b as u64 / 4096 * 4096;
        assert_eq!(high(Vec::new()), page(p90 * 1.15));
        assert_eq!(high(vec![[0.5, 0.9]; 10]), page(p90 * 1.15));
        let mut missed = vec![[0.5, 0.9]; 10];
        missed[4] = [0.5, 1.6];
        assert_eq!(high(missed.clone()), page(p90 * 1.6f32 as f64));
        missed[5] = [0.5, f32::INFINITY];
        assert_eq!(
            high(missed.clone()),
            page(p90 * 1.6f32 as f64),
            "no prediction to scale"
        );
        missed[6] = [0.5, 9.0];
        assert_eq!(high(missed), page(p90 * MAX_MEMORY_FACTOR));
    }

    #[test]
    fn the_held_back_record_keeps_an_executables_last_requests() {
        let mut h = HeldBack::default();
        h.push("a", true);
        for _ in 0..RECORD - 1 {
            h.push("a", false);
        }
        assert_eq!(h.count("a"), 1);
        h.push("a", false);
        assert_eq!(h.count("a"), 0, "the oldest leaves past {RECORD}");
        assert_eq!(h.count("b"), 0);
    }

    #[test]
    fn a_request_throttled_past_the_miss_share_of_its_life_was_held_back() {
        let t = TierRules::default();
        assert!(!was_held_back(0.0, 1.0, 0, &t));
        assert!(was_held_back(t.throttle_miss * 2.0, 1.0, 0, &t));
        assert!(!was_held_back(t.throttle_miss * 0.5, 1.0, 0, &t));
        assert!(was_held_back(0.0, 1.0, 1, &t));
    }
}
