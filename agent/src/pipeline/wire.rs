//! What the allocate stage reports, in the fleet's wire types (`docs/mqtt.md`): its
//! counters for status, its decisions for the `decision` topic; the per-request
//! predictions for summaries.

use crate::{
    allocate::{AllocateStats, Decision},
    predict::{per_request::Reported, profiles::Profile},
    publish::{
        AllocationStatus, DecisionRecord, Decisions, ProfileRow, Profiles, RequestSummary,
        RequestUse, wire_band, wire_f32,
    },
};

/// Decisions listed in one message at most; the rest are counted.
const MAX_PER_MESSAGE: usize = 256;

pub fn allocation_status(s: &AllocateStats, decisions: u64) -> AllocationStatus {
    let tier = |t: &str| s.by_tier.get(t).copied().unwrap_or(0);
    AllocationStatus {
        backend: s.backend.clone(),
        managed: s.managed,
        shadow: tier("shadow"),
        warm: tier("warm"),
        full: tier("full"),
        decisions,
        writes: s.writes,
        write_failures: s.write_failures,
        placed: s.placed,
        requests: s.requests,
        holds: s.holds,
        released_fit: s.released_fit,
        released_timeout: s.released_timeout,
        exec_to_placed_p50_us: s.exec_to_placed_p50_us,
        exec_to_placed_p99_us: s.exec_to_placed_p99_us,
        faults: s
            .faults
            .by_kind
            .iter()
            .map(|(k, n)| (k.clone(), *n))
            .collect(),
    }
}

pub fn decisions(made_ms: u64, mode: &str, ds: &[Decision]) -> Decisions {
    Decisions {
        made_ms,
        mode: mode.into(),
        decisions: ds.iter().take(MAX_PER_MESSAGE).map(record).collect(),
        omitted: ds.len().saturating_sub(MAX_PER_MESSAGE) as u32,
    }
}

fn record(d: &Decision) -> DecisionRecord {
    let mut r = DecisionRecord {
        kind: d.kind().into(),
        text: d.text(),
        ..Default::default()
    };
    match d {
        Decision::Set {
            action,
            written,
            error,
        } => {
            let w = &action.why;
            r.workload = w.workload.0.clone();
            r.name = w.name.clone();
            r.group = action.group.to_string();
            r.tier = w.tier.name().into();
            r.knob = action.knob.name().into();
            r.old = action.old.amount();
            r.new = action.new.amount();
            r.written = *written;
            r.error = error.clone();
            r.predictor = w.predictor.clone();
            r.band = Some([w.band.p10, w.band.p50, w.band.p90]);
            r.usage = Some(w.usage);
            r.bounds = w.bounds.iter().map(|b| b.text(action.knob)).collect();
        }
        Decision::Tier {
            workload,
            name,
            change,
        } => {
            r.workload = workload.0.clone();
            r.name = name.clone();
            r.tier = change.to.name().into();
        }
        Decision::Place {
            pid,
            name,
            group,
            latency_us,
            written,
            error,
            ..
        } => {
            r.name = name.clone();
            r.group = group.to_string();
            r.pid = Some(*pid);
            r.latency_us = *latency_us;
            r.written = *written;
            r.error = error.clone();
        }
        Decision::Egress {
            name,
            group,
            old,
            new,
            band,
            written,
            error,
        } => {
            r.name = name.clone();
            r.group = group.to_string();
            r.knob = "net.egress".into();
            r.old = *old;
            r.new = *new;
            r.band = Some([band.p10, band.p50, band.p90]);
            r.written = *written;
            r.error = error.clone();
        }
        Decision::Hold {
            pid, name, group, ..
        }
        | Decision::Release {
            pid, name, group, ..
        } => {
            r.name = name.clone();
            r.group = group.to_string();
            r.pid = Some(*pid);
            r.written = true;
        }
    }
    r
}

/// Executables' profiles for the fleet: p10, p50, p90 of each outcome over the kept runs;
/// `more` changed ones wait for the next message.
pub fn profiles(rows: Vec<(String, Profile)>, more: usize) -> Profiles {
    let f = |b: [f64; 3]| b.map(|v| v as f32);
    let profiles = rows
        .into_iter()
        .map(|(key, p)| {
            let b = p.bands();
            ProfileRow {
                runs: p.runs.len() as u32,
                total_runs: p.total_runs,
                last_ms: p.last_ms,
                cpu_seconds: f(b[0]),
                peak_rss_bytes: f(b[1]),
                duration_seconds: f(b[2]),
                io_bytes: f(b[3]),
                input_bytes: f(p.input_bands()),
                key,
                name: p.name,
                parent: p.parent,
            }
        })
        .collect();
    Profiles {
        profiles,
        more: more.min(u32::MAX as usize) as u32,
    }
}

/// A request predicted (or ended) as summaries carry it; `wall_offset_ms` (wall-clock ms
/// minus boot-clock ms) dates its exec in wall-clock time.
pub fn request(r: &Reported, wall_offset_ms: i64) -> RequestSummary {
    let exec_ms = (r.exec_ns / 1_000_000) as i64 + wall_offset_ms;
    let [cpu, peak_rss, duration, io] = &r.bands;
    RequestSummary {
        key: r.key.clone(),
        name: r.name.clone(),
        pid: r.tgid,
        exec_ms: exec_ms.max(0) as u64,
        source: r.source.clone(),
        runs: r.runs,
        cpu_seconds: wire_band(cpu),
        peak_rss_bytes: wire_band(peak_rss),
        duration_seconds: wire_band(duration),
        io_bytes: wire_band(io),
        used: r.used.map(|[cpu, peak_rss, duration, io]| RequestUse {
            cpu_seconds: wire_f32(cpu),
            peak_rss_bytes: wire_f32(peak_rss),
            duration_seconds: wire_f32(duration),
            io_bytes: wire_f32(io),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::profiles::{Outcome, Run};

    #[test]
    fn a_profile_goes_to_the_fleet_as_its_bands() {
        let mut p = Profile {
            name: "xz".into(),
            parent: "sh".into(),
            total_runs: 70,
            last_ms: 9,
            ..Default::default()
        };
        for i in 1..=5u64 {
            let o = Outcome {
                cpu_seconds: i as f64,
                peak_rss_bytes: 1e8,
                duration_seconds: 2.0,
                io_bytes: 0.0,
            };
            p.runs.push_back(Run::new(&o, i * 1000, i));
        }
        let m = profiles(vec![("exe:sha256:aa".into(), p)], 7);
        assert_eq!(m.more, 7);
        let r = &m.profiles[0];
        assert_eq!(
            (r.key.as_str(), r.name.as_str(), r.parent.as_str()),
            ("exe:sha256:aa", "xz", "sh")
        );
        assert_eq!((r.runs, r.total_runs, r.last_ms), (5, 70, 9));
        assert_eq!(r.cpu_seconds, [1.4, 3.0, 4.6]);
        assert_eq!(r.peak_rss_bytes, [1e8; 3]);
        assert_eq!(r.input_bytes, [1400.0, 3000.0, 4600.0]);
    }
}
