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

/// A schema-1 summary is a schema-2 one (frozen in `message_v2`, converted there).
pub use super::message_v2::{Summary, WorkloadSummary};

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
