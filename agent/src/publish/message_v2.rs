//! The message types of schema 2, where they differ from schema 3's, frozen: a schema-2
//! envelope — spooled by the previous release and still on disk after an upgrade, or sent
//! by a node not yet upgraded — is decoded with these and converted. Schema 3 added the
//! forecasts to summaries ([`super::Summary::predictor`],
//! [`super::WorkloadSummary::forecast`]); every other body is schema 3's own type,
//! unchanged since 2 (a schema that changes one freezes its schema-2 shape here first).
//! Never change them.

use serde::{Deserialize, Serialize};

use super::{AnomalyReport, CmdResult, Decisions, NodeSummary, Profiles, message_v3::Status};

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
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSummary {
    pub workload: String,
    pub name: String,
    pub processes_max: u32,
    pub cpu_cores_mean: f32,
    pub cpu_cores_max: f32,
    pub rss_max_bytes: u64,
    pub runq_p99_max_ns: u64,
    pub page_faults: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub retransmits: u64,
    pub execs: u64,
    pub conn_accepted: u64,
    pub conn_opened: u64,
    pub syscalls: u64,
    pub pressure_max: Option<[f32; 3]>,
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
            workloads: s.workloads.into_iter().map(Into::into).collect(),
            other: s.other.map(Into::into),
            predictor: String::new(),
            forecast_step_ms: 0,
            requests: Vec::new(),
            requests_omitted: 0,
        }
    }
}

impl From<WorkloadSummary> for super::WorkloadSummary {
    fn from(w: WorkloadSummary) -> Self {
        super::WorkloadSummary {
            workload: w.workload,
            name: w.name,
            processes_max: w.processes_max,
            cpu_cores_mean: w.cpu_cores_mean,
            cpu_cores_max: w.cpu_cores_max,
            rss_max_bytes: w.rss_max_bytes,
            runq_p99_max_ns: w.runq_p99_max_ns,
            page_faults: w.page_faults,
            read_bytes: w.read_bytes,
            write_bytes: w.write_bytes,
            block_read_bytes: w.block_read_bytes,
            block_write_bytes: w.block_write_bytes,
            net_rx_bytes: w.net_rx_bytes,
            net_tx_bytes: w.net_tx_bytes,
            retransmits: w.retransmits,
            execs: w.execs,
            conn_accepted: w.conn_accepted,
            conn_opened: w.conn_opened,
            syscalls: w.syscalls,
            pressure_max: w.pressure_max,
            forecast: None,
        }
    }
}
