//! `[allocate]`: which workloads Umbra manages (opt-in rules; nothing else is touched),
//! where its subtree is, the safety rules, tiers and admission.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    cgroups::Prefer,
    control::{Mode, Tier as Priority},
    decide::Rules,
    tiers::{Tier, TierRules},
};

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AllocateConfig {
    /// The mode at start when no `set-mode` command was ever received (and `umbra run`
    /// has no `--enforce`).
    pub mode: Mode,
    /// `"auto"`, `"v2"` or `"v1"`.
    pub backend: Prefer,
    /// The owned subtree, below the cgroup2 mount (v2, default `umbra.slice`) or below each
    /// v1 controller's mount (default `umbra`).
    pub root: Option<String>,
    /// Journal and control state (default: `<publish.state_dir>/allocate`).
    pub state_dir: Option<PathBuf>,
    /// Opted-in workloads: a process is managed when a rule matches it.
    pub workload: Vec<WorkloadRule>,
    pub rules: Rules,
    pub tiers: TierRules,
    pub admission: AdmissionConfig,
    pub egress: EgressConfig,
    /// Per-request reservations (rules with `per_request = true`).
    pub request: RequestConfig,
}

/// One opt-in rule. Every field given must match (`exe` and `cgroup` are glob patterns);
/// a rule must name at least one of `exe`, `cgroup`, `uid`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkloadRule {
    /// The executable's path, e.g. `/usr/bin/stress-ng` or `/opt/app/bin/*`.
    pub exe: Option<String>,
    /// The process's cgroup v2 path, e.g. `/system.slice/app.service`.
    pub cgroup: Option<String>,
    /// The process's real uid.
    pub uid: Option<u32>,
    /// Default priority: `critical`, `normal` (the default) or `best-effort` (a
    /// `set-tier` command overrides it).
    pub priority: Option<Priority>,
    /// The highest tier its reservations may reach.
    pub max_tier: Option<Tier>,
    /// Each exec gets its own child group with limits from its per-request prediction.
    pub per_request: bool,
    /// Enforce the predicted egress rate with the `cgroup_skb` program.
    pub egress: bool,
}

/// What happens to a new request whose prediction does not fit.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HoldMode {
    /// Frozen (cgroup.freeze / the v1 freezer) until capacity frees or the timeout passes.
    #[default]
    Freeze,
    /// Run at `low_weight` until then.
    LowWeight,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    pub hold: HoldMode,
    /// Longest hold, ms; then the request runs anyway (explained).
    pub timeout_ms: u64,
    /// `cpu.weight` of a request held at low weight.
    pub low_weight: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            hold: HoldMode::Freeze,
            timeout_ms: 30_000,
            low_weight: 1,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Burst allowance of the token bucket, ms of the rate.
    pub burst_ms: u64,
    /// Margin over the p90 egress forecast.
    pub margin: f64,
    /// Lowest rate ever enforced, bytes/s.
    pub min_bytes_per_s: u64,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            burst_ms: 20,
            margin: 0.25,
            min_bytes_per_s: 64 << 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RequestConfig {
    /// Margin over the request's p90.
    pub margin: f64,
    /// Requests whose group is gone are forgotten after this long, ms.
    pub linger_ms: u64,
    /// After each placed exec, moves are kept fast this long, ms (no hierarchy mounted
    /// with `favordynmods`: see `allocate::warm`); 0: never.
    pub warm_ms: u64,
}

impl Default for RequestConfig {
    fn default() -> Self {
        RequestConfig {
            margin: 0.15,
            linger_ms: 2_000,
            warm_ms: 30_000,
        }
    }
}

impl AllocateConfig {
    /// The owned subtree's path for a backend.
    pub fn root_for_v2(&self) -> String {
        self.root.clone().unwrap_or_else(|| "umbra.slice".into())
    }

    pub fn root_for_v1(&self) -> String {
        self.root.clone().unwrap_or_else(|| "umbra".into())
    }

    /// Checks every value: `(key, value, what was expected)` for the first bad one.
    pub fn validate(&self) -> Result<(), (String, String, String)> {
        let bad = |k: &str, v: String, e: &str| Err((format!("allocate.{k}"), v, e.to_string()));
        if let Some(r) = &self.root
            && (super::cgroups::Group::new(r).is_none_or(|g| g.is_root()))
        {
            return bad(
                "root",
                format!("{r:?}"),
                "a relative path of plain names below the cgroup mount, e.g. \"umbra.slice\"",
            );
        }
        for (i, w) in self.workload.iter().enumerate() {
            if w.exe.is_none() && w.cgroup.is_none() && w.uid.is_none() {
                return bad(
                    &format!("workload[{i}]"),
                    "{}".into(),
                    "at least one of exe, cgroup, uid",
                );
            }
            for (k, p) in [("exe", &w.exe), ("cgroup", &w.cgroup)] {
                if let Some(p) = p
                    && let Err(e) = glob::Pattern::new(p)
                {
                    return bad(
                        &format!("workload[{i}].{k}"),
                        format!("{p:?}"),
                        &format!("a glob pattern ({e})"),
                    );
                }
            }
        }
        let r = &self.rules;
        let frac = |k: &str, v: f64, lo: f64, hi: f64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                bad(k, v.to_string(), &format!("between {lo} and {hi}"))
            }
        };
        frac("rules.margin", r.margin, 0.0, 10.0)?;
        frac("rules.max_margin", r.max_margin, r.margin, 10.0)?;
        frac("rules.min_cpu_margin", r.min_cpu_margin, 0.0, r.margin)?;
        frac("rules.memory_headroom", r.memory_headroom, 0.0, 10.0)?;
        frac("rules.max_increase", r.max_increase, 0.0, 100.0)?;
        frac("rules.max_decrease", r.max_decrease, 0.0, 1.0)?;
        frac("rules.deadband", r.deadband, 0.0, 1.0)?;
        frac("rules.min_cpu_cores", r.min_cpu_cores, 0.01, 1024.0)?;
        frac("rules.reserve_cores", r.reserve_cores, 0.0, 1024.0)?;
        if r.lead_steps == 0 || r.lead_steps > 64 {
            return bad(
                "rules.lead_steps",
                r.lead_steps.to_string(),
                "between 1 and 64",
            );
        }
        if r.peak_intervals > 3600 {
            return bad(
                "rules.peak_intervals",
                r.peak_intervals.to_string(),
                "at most 3600 (0: cpu.max at the forecast's p90)",
            );
        }
        let t = &self.tiers;
        frac("tiers.promote_coverage", t.promote_coverage, 0.0, 1.0)?;
        frac(
            "tiers.demote_coverage",
            t.demote_coverage,
            0.0,
            t.promote_coverage,
        )?;
        frac("tiers.target_miss", t.target_miss, 0.0, 1.0)?;
        frac("tiers.margin_gain", t.margin_gain, 0.0, 1.0)?;
        frac("tiers.memory_gain", t.memory_gain, 0.0, 1.0)?;
        frac("tiers.memory_miss", t.memory_miss, 0.0, 1.0)?;
        if t.window == 0 || t.min_samples > t.window {
            return bad(
                "tiers.window",
                t.window.to_string(),
                "at least 1 and at least tiers.min_samples",
            );
        }
        if !(1..=10_000).contains(&self.admission.low_weight) {
            return bad(
                "admission.low_weight",
                self.admission.low_weight.to_string(),
                "between 1 and 10000",
            );
        }
        frac("request.margin", self.request.margin, 0.0, 10.0)?;
        if self.request.warm_ms > 3_600_000 {
            return bad(
                "request.warm_ms",
                self.request.warm_ms.to_string(),
                "at most 3600000 (an hour; 0: never)",
            );
        }
        frac("egress.margin", self.egress.margin, 0.0, 10.0)?;
        Ok(())
    }
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Matcher {
    exe: Option<glob::Pattern>,
    cgroup: Option<glob::Pattern>,
    uid: Option<u32>,
}

/// What a rule looks at.
#[derive(Clone, Copy, Debug, Default)]
pub struct Candidate<'a> {
    pub exe: Option<&'a str>,
    pub cgroup: Option<&'a str>,
    /// Asked only when a rule needs it (it costs a read of `/proc/<pid>/status`).
    pub uid: Option<u32>,
}

impl Matcher {
    pub fn new(r: &WorkloadRule) -> Matcher {
        // Patterns were validated with the config.
        Matcher {
            exe: r.exe.as_deref().and_then(|p| glob::Pattern::new(p).ok()),
            cgroup: r.cgroup.as_deref().and_then(|p| glob::Pattern::new(p).ok()),
            uid: r.uid,
        }
    }

    pub fn needs_uid(&self) -> bool {
        self.uid.is_some()
    }

    pub fn matches(&self, c: &Candidate<'_>) -> bool {
        let opts = glob::MatchOptions {
            require_literal_separator: true,
            ..Default::default()
        };
        self.exe
            .as_ref()
            .is_none_or(|p| c.exe.is_some_and(|e| p.matches_with(e, opts)))
            && self
                .cgroup
                .as_ref()
                .is_none_or(|p| c.cgroup.is_some_and(|g| p.matches_with(g, opts)))
            && self.uid.is_none_or(|u| c.uid == Some(u))
    }
}

/// The real uid of a process (`/proc/<pid>/status`).
pub fn uid_of(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(exe: Option<&str>, cgroup: Option<&str>, uid: Option<u32>) -> WorkloadRule {
        WorkloadRule {
            exe: exe.map(String::from),
            cgroup: cgroup.map(String::from),
            uid,
            ..Default::default()
        }
    }

    #[test]
    fn rules_match_every_field_they_name() {
        let m = Matcher::new(&rule(Some("/usr/bin/stress-*"), None, Some(1000)));
        let c = Candidate {
            exe: Some("/usr/bin/stress-ng"),
            cgroup: Some("/user.slice"),
            uid: Some(1000),
        };
        assert!(m.matches(&c));
        assert!(!m.matches(&Candidate { uid: Some(0), ..c }));
        assert!(!m.matches(&Candidate {
            exe: Some("/usr/bin/x/stress-ng"),
            ..c
        }));
        let m = Matcher::new(&rule(None, Some("/system.slice/*.service"), None));
        assert!(m.matches(&Candidate {
            cgroup: Some("/system.slice/nginx.service"),
            ..Default::default()
        }));
        assert!(
            !m.matches(&Candidate::default()),
            "no cgroup known: no match"
        );
    }

    #[test]
    fn bad_rules_name_the_key() {
        let mut c = AllocateConfig::default();
        c.validate().unwrap();
        c.workload.push(rule(None, None, None));
        assert!(c.validate().unwrap_err().0.contains("allocate.workload[0]"));
        c.workload[0] = rule(Some("/usr/[bin"), None, None);
        let e = c.validate().unwrap_err();
        assert_eq!(e.0, "allocate.workload[0].exe");
        c.workload.clear();
        c.root = Some("../etc".into());
        assert_eq!(c.validate().unwrap_err().0, "allocate.root");
        c.root = None;
        c.rules.max_decrease = 2.0;
        assert_eq!(c.validate().unwrap_err().0, "allocate.rules.max_decrease");
    }
}
