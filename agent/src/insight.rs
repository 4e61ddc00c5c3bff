//! What the agent concluded in an interval beyond the shadow data points — each
//! workload's forecast band, tier, reservation and last decision, and the decisions and
//! anomalies of the interval — in the plain shape the tools that look inside show it:
//! `umbra top`, the Perfetto trace, the report and the metrics.
//!
//! Every field is optional: an agent without a forecaster or an allocator (a bare
//! replay, an old build's recording) shows the points alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    aggregate::WorkloadId,
    predict::{Band, Forecast, Target},
};

/// The next interval's band of each target, in [`Target::ALL`] order.
pub type Bands = [Band; 4];

/// The step-1 bands of a forecast.
pub fn next_bands(f: &Forecast) -> Option<Bands> {
    let b = |t: Target| f.of(t).first().copied();
    Some([
        b(Target::Cpu)?,
        b(Target::Memory)?,
        b(Target::Io)?,
        b(Target::Net)?,
    ])
}

/// What is reserved for a workload now (cores, bytes), where Umbra manages it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reservation {
    pub cpu_cores: Option<f64>,
    pub memory_bytes: Option<f64>,
}

/// One workload, one interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadInsight {
    /// The band forecast for this interval (made one interval earlier), per target.
    pub forecast: Option<Bands>,
    /// `shadow`, `warm` or `full`.
    pub tier: Option<String>,
    pub reservation: Option<Reservation>,
    /// The newest decision about the workload, for people.
    pub last_decision: Option<String>,
    /// Flagged for retraining: its forecast error drifted.
    pub drifting: bool,
}

/// What a [`Note`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    /// Something the allocate stage decided (written or explained only).
    Decision,
    /// A workload left its calibrated band, or its cost per unit of input moved.
    Anomaly,
    /// A workload's forecast error drifted: its model no longer fits.
    Drift,
}

impl NoteKind {
    pub const ALL: [NoteKind; 3] = [NoteKind::Decision, NoteKind::Anomaly, NoteKind::Drift];

    pub fn name(self) -> &'static str {
        match self {
            NoteKind::Decision => "decision",
            NoteKind::Anomaly => "anomaly",
            NoteKind::Drift => "drift",
        }
    }
}

/// Something that happened at an instant, for people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Note {
    /// ms since the Unix epoch.
    pub timestamp_ms: u64,
    pub kind: NoteKind,
    pub workload: Option<WorkloadId>,
    /// The workload's name (or what the note is about).
    pub name: String,
    /// One line: what, observed against what, why.
    pub text: String,
}

/// The agent's conclusions for one interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Insights {
    /// End of the interval, ms since the Unix epoch.
    pub timestamp_ms: u64,
    pub workloads: BTreeMap<WorkloadId, WorkloadInsight>,
    pub notes: Vec<Note>,
    /// The model the forecasts come from (`name version`), if a model is in use.
    pub model: Option<String>,
}

impl Insights {
    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty() && self.notes.is_empty()
    }

    /// The insight of `w`, made on first use.
    pub fn workload(&mut self, w: &WorkloadId) -> &mut WorkloadInsight {
        self.workloads.entry(w.clone()).or_default()
    }

    pub fn count(&self, kind: NoteKind) -> usize {
        self.notes.iter().filter(|n| n.kind == kind).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_bands_are_the_first_step_of_each_target() {
        let band = |v: f64| Band {
            p10: v,
            p50: v + 1.0,
            p90: v + 2.0,
        };
        let f = Forecast {
            workload: WorkloadId("exe:a".into()),
            made_ms: 0,
            interval_ms: 1000,
            predictor: "t".into(),
            bands: [
                vec![band(1.0), band(9.0)],
                vec![band(2.0)],
                vec![band(3.0)],
                vec![band(4.0)],
            ],
        };
        let b = next_bands(&f).expect("every target has a step");
        assert_eq!(b[0], band(1.0));
        assert_eq!(b[3], band(4.0));
        let mut empty = f.clone();
        empty.bands[2].clear();
        assert_eq!(next_bands(&empty), None);
    }
}
