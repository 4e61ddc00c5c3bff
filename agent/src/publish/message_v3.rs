//! The message types of schema 3, where they differ from schema 4's, frozen: a schema-3
//! envelope — spooled by the previous release and still on disk after an upgrade, or sent
//! by a node not yet upgraded — is decoded with these and converted. Schema 4 added the
//! per-request predictions to summaries ([`super::Summary::requests`]) and status
//! ([`super::Status::requests`]); every other body is schema 4's own type, unchanged since
//! 3 (a schema that changes one freezes its schema-3 shape here first). Never change them.

use serde::{Deserialize, Serialize};

use super::{
    AllocationStatus, AnomalyReport, CmdResult, Decisions, ModelInfo, NodeSummary, Profiles,
    SpoolStatus, WorkloadSummary,
};
use crate::predict::PredictStatus;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub schema: u16,
    pub node: String,
    pub seq: u64,
    pub time_ms: u64,
    pub historical: bool,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    Summary(Summary),
    Status(Status),
    CmdResult(CmdResult),
    Decisions(Decisions),
    Anomaly(AnomalyReport),
    Profiles(Profiles),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub start_ms: u64,
    pub period_ms: u32,
    pub intervals: u32,
    pub node: NodeSummary,
    pub workloads: Vec<WorkloadSummary>,
    pub other: Option<WorkloadSummary>,
    pub predictor: String,
    pub forecast_step_ms: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub online: bool,
    pub agent_version: String,
    pub kernel: String,
    pub uptime_s: u64,
    pub mode: String,
    pub model: Option<ModelInfo>,
    pub workloads: u32,
    pub capture_drops: u64,
    pub spool: SpoolStatus,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub node_id_source: String,
    #[serde(default)]
    pub instance: u64,
    #[serde(default)]
    pub problems: Vec<String>,
    #[serde(default)]
    pub allocation: Option<Box<AllocationStatus>>,
    #[serde(default)]
    pub predict: Option<Box<PredictStatus>>,
}

impl From<Status> for super::Status {
    fn from(s: Status) -> Self {
        super::Status {
            online: s.online,
            agent_version: s.agent_version,
            kernel: s.kernel,
            uptime_s: s.uptime_s,
            mode: s.mode,
            model: s.model,
            workloads: s.workloads,
            capture_drops: s.capture_drops,
            spool: s.spool,
            hostname: s.hostname,
            node_id_source: s.node_id_source,
            instance: s.instance,
            problems: s.problems,
            allocation: s.allocation,
            predict: s.predict,
            requests: None,
        }
    }
}

impl From<Envelope> for super::Envelope {
    fn from(e: Envelope) -> Self {
        super::Envelope {
            // Converted: it is a message of this schema now.
            schema: super::SCHEMA,
            node: e.node,
            seq: e.seq,
            time_ms: e.time_ms,
            historical: e.historical,
            body: match e.body {
                Body::Summary(s) => super::Body::Summary(s.into()),
                Body::Status(s) => super::Body::Status(s.into()),
                Body::CmdResult(c) => super::Body::CmdResult(c),
                Body::Decisions(d) => super::Body::Decisions(d),
                Body::Anomaly(a) => super::Body::Anomaly(a),
                Body::Profiles(p) => super::Body::Profiles(p),
            },
        }
    }
}

impl From<Summary> for super::Summary {
    fn from(s: Summary) -> Self {
        super::Summary {
            start_ms: s.start_ms,
            period_ms: s.period_ms,
            intervals: s.intervals,
            node: s.node,
            workloads: s.workloads,
            other: s.other,
            predictor: s.predictor,
            forecast_step_ms: s.forecast_step_ms,
            requests: Vec::new(),
            requests_omitted: 0,
        }
    }
}
