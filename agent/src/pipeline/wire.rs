//! What the allocate stage reports, in the fleet's wire types (`docs/mqtt.md`): its
//! counters for status, its decisions for the `decision` topic.

use crate::{
    allocate::{AllocateStats, Decision},
    publish::{AllocationStatus, DecisionRecord, Decisions},
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
