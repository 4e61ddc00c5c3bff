//! The message types of schema 1 (Umbra 0.1), frozen: postcard is not self-describing,
//! so a schema-1 envelope — spooled by the previous release and still on disk after an
//! upgrade, or sent by a node not yet upgraded — is decoded with these and converted.
//! Never change them.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub schema: u16,
    /// The node that produced it.
    pub node: String,
    /// Per node, starts at 1 and increases by one per message, across restarts (the spool
    /// keeps it): a subscriber removes duplicates and sees gaps by it.
    pub seq: u64,
    /// When it was produced, ms since the Unix epoch.
    pub time_ms: u64,
    /// Waited in the spool while the broker was away (or across a restart of the agent).
    pub historical: bool,
    pub body: Body,
}

/// The kind of a message and its body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    Summary(Summary),
    Status(Status),
    CmdResult(CmdResult),
}

/// Per-workload aggregates of the shadow data points of one summary period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Start and length of the period, ms.
    pub start_ms: u64,
    pub period_ms: u32,
    /// Intervals (shadow data points per workload) the period holds.
    pub intervals: u32,
    pub node: NodeSummary,
    /// The busiest workloads by CPU, at most `publish.max_workloads`.
    pub workloads: Vec<WorkloadSummary>,
    /// Everything else folded into one row (`workload` = `"other"`), if anything.
    pub other: Option<WorkloadSummary>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeSummary {
    pub cpus: u32,
    /// Busy CPU, cores: mean and peak interval.
    pub cpu_busy_mean: f32,
    pub cpu_busy_max: f32,
    pub mem_total_bytes: u64,
    /// Lowest available memory seen in the period.
    pub mem_available_min_bytes: u64,
    pub workloads: u32,
}

/// One workload over a summary period: sums of counts, mean and peak of rates, peaks of
/// levels.
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
    /// Peak PSI `some avg10` of the workload's cgroup, percent (cpu, memory, io).
    pub pressure_max: Option<[f32; 3]>,
}

/// The agent's state: retained, so a new subscriber sees it at once. `online` is false only
/// in the Last Will the broker publishes when the agent vanishes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub online: bool,
    pub agent_version: String,
    pub kernel: String,
    pub uptime_s: u64,
    /// `dry-run` or `enforce`.
    pub mode: String,
    /// The model in use: name, version and SHA-256 of its ONNX bytes.
    pub model: Option<ModelInfo>,
    pub workloads: u32,
    /// Events and samples the capture lost (kernel maps and channels), since start.
    pub capture_drops: u64,
    pub spool: SpoolStatus,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolStatus {
    /// Messages waiting for the broker's acknowledgement, and their bytes on disk.
    pub pending: u64,
    pub bytes: u64,
    /// Messages dropped unsent because the spool was full (oldest first), since start.
    pub dropped: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// The answer to a command or a model update.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmdResult {
    /// The command's `id`, if it had one.
    pub id: Option<String>,
    /// The topic the command or model came on.
    pub topic: String,
    pub ok: bool,
    pub message: String,
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
                Body::CmdResult(c) => super::Body::CmdResult(super::CmdResult {
                    id: c.id,
                    topic: c.topic,
                    ok: c.ok,
                    message: c.message,
                }),
            },
        }
    }
}

impl From<Summary> for super::Summary {
    fn from(s: Summary) -> Self {
        let n = s.node;
        super::Summary {
            start_ms: s.start_ms,
            period_ms: s.period_ms,
            intervals: s.intervals,
            node: super::NodeSummary {
                cpus: n.cpus,
                cpu_busy_mean: n.cpu_busy_mean,
                cpu_busy_max: n.cpu_busy_max,
                mem_total_bytes: n.mem_total_bytes,
                mem_available_min_bytes: n.mem_available_min_bytes,
                workloads: n.workloads,
            },
            workloads: s.workloads.into_iter().map(Into::into).collect(),
            other: s.other.map(Into::into),
            predictor: String::new(),
            forecast_step_ms: 0,
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

impl From<Status> for super::Status {
    fn from(s: Status) -> Self {
        super::Status {
            online: s.online,
            agent_version: s.agent_version,
            kernel: s.kernel,
            uptime_s: s.uptime_s,
            mode: s.mode,
            model: s.model.map(|m| super::ModelInfo {
                name: m.name,
                version: m.version,
                sha256: m.sha256,
            }),
            workloads: s.workloads,
            capture_drops: s.capture_drops,
            spool: super::SpoolStatus {
                pending: s.spool.pending,
                bytes: s.spool.bytes,
                dropped: s.spool.dropped,
                ..Default::default()
            },
            ..Default::default()
        }
    }
}
