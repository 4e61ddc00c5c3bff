//! What goes over MQTT: an envelope `{schema, node, seq, time, kind, body}` and the bodies
//! of each kind. Two encodings: postcard (compact, the default) and JSON (for tools such
//! as Telegraf, and for people). `docs/mqtt.md` documents every field.

use serde::{Deserialize, Serialize};

/// Version of the envelope and of every body. A subscriber refuses a newer one and reads
/// every older one (schema 1: [`super::message_v1`]; 2: [`super::message_v2`]; 3:
/// [`super::message_v3`]). Schema 3 added the forecasts to summaries, schema 4 the
/// per-request predictions (to summaries and status).
pub const SCHEMA: u16 = 4;

/// Payload encoding on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    #[default]
    Postcard,
    Json,
}

/// One message from a node.
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
    /// Decisions and anomalies were added after schema 2's first release: a subscriber
    /// that predates them finds these malformed (on their own topics, so nothing else is
    /// affected).
    Decisions(Decisions),
    Anomaly(AnomalyReport),
    /// Added after decisions and anomalies, as they were.
    Profiles(Profiles),
}

/// Kinds of message; each has its own topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Summary,
    Status,
    CmdResult,
    Decision,
    Anomaly,
    Profiles,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Summary,
        Kind::Status,
        Kind::CmdResult,
        Kind::Decision,
        Kind::Anomaly,
        Kind::Profiles,
    ];

    /// The topic under `umbra/v1/<fleet>/<node>/`, and the `kind` of JSON payloads.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Summary => "summary",
            Kind::Status => "status",
            Kind::CmdResult => "cmd/result",
            Kind::Decision => "decision",
            Kind::Anomaly => "anomaly",
            Kind::Profiles => "profiles",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl Body {
    pub fn kind(&self) -> Kind {
        match self {
            Body::Summary(_) => Kind::Summary,
            Body::Status(_) => Kind::Status,
            Body::CmdResult(_) => Kind::CmdResult,
            Body::Decisions(_) => Kind::Decision,
            Body::Anomaly(_) => Kind::Anomaly,
            Body::Profiles(_) => Kind::Profiles,
        }
    }
}

/// Executables' profiles, compact (`profiles` topic): those with runs completed since the
/// last such message (every one kept, once after each start), so the fleet can share what
/// each program needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profiles {
    pub profiles: Vec<ProfileRow>,
    /// Profiles changed beyond the per-message bound: in the next message.
    pub more: u32,
}

/// One executable's profile: p10, p50 and p90 of each outcome over its kept runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileRow {
    /// `exe:sha256:<hex>`: the same binary has the same key on every node.
    pub key: String,
    pub name: String,
    /// The parent's executable file name at its last run.
    pub parent: String,
    /// Runs kept (the quantiles are over them), and completed in all.
    pub runs: u32,
    pub total_runs: u64,
    /// Its last run's end, ms since the Unix epoch.
    pub last_ms: u64,
    pub cpu_seconds: [f32; 3],
    pub peak_rss_bytes: [f32; 3],
    pub duration_seconds: [f32; 3],
    pub io_bytes: [f32; 3],
    /// Bytes of the input files its argv named.
    pub input_bytes: [f32; 3],
}

/// A workload that stopped behaving like itself, or whose forecasts drifted (`anomaly`
/// topic; docs/mqtt.md).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnomalyReport {
    pub workload: String,
    pub name: String,
    /// `outside-band`, `cost-jump`, `memory-growth`, `process-burst`, `io-stall`, or
    /// `drift` (flagged for retraining).
    pub kind: String,
    /// `cpu`, `memory`, `io` or `net`.
    pub target: String,
    pub observed: f64,
    /// The band it was judged against: p10, p50, p90.
    pub band: Option<[f64; 3]>,
    /// Band widths beyond the band, or the factor of the usual.
    pub score: f64,
    /// When it began and the bucket it was found in, ms since the Unix epoch.
    pub since_ms: u64,
    pub timestamp_ms: u64,
    /// The features that moved most: name, recent mean, value now.
    pub moved: Vec<(String, f64, f64)>,
    /// One line for people.
    pub text: String,
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
    /// What made the workloads' forecasts (`predict` in status: the model and its
    /// candidates, or a baseline), and the length of the step they forecast, ms; empty
    /// and 0 without forecasts.
    #[serde(default)]
    pub predictor: String,
    #[serde(default)]
    pub forecast_step_ms: u32,
    /// The requests (process execs) predicted in the period, and those predicted before
    /// it that ended in it, with what they used (at most [`REQUESTS_PER_SUMMARY`]; a
    /// request predicted in one period and ended in a later one is in both).
    #[serde(default)]
    pub requests: Vec<RequestSummary>,
    /// Requests beyond the bound, not listed.
    #[serde(default)]
    pub requests_omitted: u32,
}

/// `v` as a float on the wire: always finite (JSON has none other: a subscriber would find
/// the message malformed) — NaN as 0, beyond `f32`'s range at its end.
pub fn wire_f32(v: f64) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(f32::MIN as f64, f32::MAX as f64) as f32
    }
}

/// A band on the wire: p10, p50, p90 ([`wire_f32`]).
pub fn wire_band(b: &crate::predict::Band) -> [f32; 3] {
    [wire_f32(b.p10), wire_f32(b.p50), wire_f32(b.p90)]
}

/// Requests in one summary, at most (a row is ~150 bytes).
pub const REQUESTS_PER_SUMMARY: usize = 64;

/// A request — a process exec — predicted at its exec from its executable's profile:
/// what it was predicted to need (p10, p50, p90) and, once it ended, what it used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestSummary {
    /// Its executable's key (`exe:sha256:<hex>`, as in `profiles`) and file name.
    pub key: String,
    pub name: String,
    pub pid: u32,
    /// The exec, ms since the Unix epoch.
    pub exec_ms: u64,
    /// What made it: `model` (the request model over the executable's profile),
    /// `model+profile` (some outcomes from the profile, where the model was worse on the
    /// executable's last runs), `profile` (the quantiles of its runs), `profile+prior:<kin>`
    /// (too few runs: its band from its kin's) or `prior:<kin>` (an executable never
    /// seen: what executables of the same `name`, of its `parent` or of the `node` used).
    pub source: String,
    /// The runs of its executable it was made from (0 for a prior).
    pub runs: u32,
    pub cpu_seconds: [f32; 3],
    pub peak_rss_bytes: [f32; 3],
    pub duration_seconds: [f32; 3],
    pub io_bytes: [f32; 3],
    /// What it used, in the summary of the period it ended in.
    pub used: Option<RequestUse>,
}

impl RequestSummary {
    /// Whether its CPU seconds were within their predicted p10–p90; none until it ended.
    pub fn within_cpu(&self) -> Option<bool> {
        let [lo, _, hi] = self.cpu_seconds;
        self.used.map(|u| (lo..=hi).contains(&u.cpu_seconds))
    }
}

/// What a request used over its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestUse {
    pub cpu_seconds: f32,
    /// 0 where its peak was not measured (it lived less than a sample).
    pub peak_rss_bytes: f32,
    pub duration_seconds: f32,
    pub io_bytes: f32,
}

/// A workload's forecast for the step after the period: p10, p50, p90.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkloadForecast {
    pub cpu_cores: [f32; 3],
    pub rss_bytes: [f32; 3],
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
    /// Its forecast as the period ended (none for `other`, or before its first).
    #[serde(default)]
    pub forecast: Option<WorkloadForecast>,
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
    /// The host's name, a label for people (the node id in topics is derived so that
    /// devices cloned from one image differ; see `docs/mqtt.md`).
    #[serde(default)]
    pub hostname: String,
    /// Where the node id came from: `config`, `device-tree-serial`, `dmi-product-uuid`,
    /// `mac`, `machine-id` or `hostname`.
    #[serde(default)]
    pub node_id_source: String,
    /// Random per start of the agent: two agents publishing as one node show two.
    #[serde(default)]
    pub instance: u64,
    /// Conditions an operator should look at now, each naming what is wrong and where.
    #[serde(default)]
    pub problems: Vec<String>,
    /// The allocate stage's counters (none where the stage does not run).
    #[serde(default)]
    pub allocation: Option<Box<AllocationStatus>>,
    /// What forecasts: the model in use (or the baseline and why), its counters and the
    /// calibrated band's coverage (none where the stage does not run).
    #[serde(default)]
    pub predict: Option<Box<crate::predict::PredictStatus>>,
    /// What predicts requests: the request model in use, the profile store, and how the
    /// predicted requests that ended used their bands (none where the stage does not run;
    /// schema 4).
    #[serde(default)]
    pub requests: Option<Box<RequestStatus>>,
}

/// The per-request predictions since start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestStatus {
    /// The request model in use (`onnx:<version>`); none: the profiles alone.
    pub model: Option<String>,
    /// Executables in the profile store.
    pub profiles: u32,
    /// Execs predicted; of them, those that ended, and those whose CPU seconds were
    /// within their predicted p10–p90.
    pub predicted: u64,
    pub ended: u64,
    pub within_cpu: u64,
}

/// What the allocate stage has done since start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AllocationStatus {
    /// `cgroup v2`, `cgroup v1` or `none` (decides and explains only).
    pub backend: String,
    /// Workloads managed (opted in and alive), and how many are at each tier.
    pub managed: u32,
    pub shadow: u32,
    pub warm: u32,
    pub full: u32,
    /// Decisions made; knob writes made and refused.
    pub decisions: u64,
    pub writes: u64,
    pub write_failures: u64,
    /// Processes placed into managed groups; requests (execs with their own group);
    /// requests held because they did not fit, and released (capacity freed, timeout).
    pub placed: u64,
    pub requests: u64,
    pub holds: u64,
    pub released_fit: u64,
    pub released_timeout: u64,
    /// Exec → placed with limits, µs, p50 and p99 of the recent requests.
    pub exec_to_placed_p50_us: Option<u64>,
    pub exec_to_placed_p99_us: Option<u64>,
    /// Changes the kernel refused, by kind (`EINVAL`, `EBUSY`, `ENOSPC`, `EROFS`,
    /// `ENOENT`, `journal`, …).
    pub faults: Vec<(String, u64)>,
}

/// The allocate stage's decisions since the last message (at most one message per
/// capture interval, only when something was decided).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Decisions {
    /// The interval they were made in, ms since the Unix epoch.
    pub made_ms: u64,
    /// `dry-run` or `enforce`.
    pub mode: String,
    pub decisions: Vec<DecisionRecord>,
    /// Decisions beyond the per-message bound, not listed.
    pub omitted: u32,
}

/// One decision, explained.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// `set` (a knob of a workload's group), `tier` (a workload's tier changed), `place`
    /// (a process moved into a group), `hold` or `release` (admission).
    pub kind: String,
    pub workload: String,
    pub name: String,
    /// The cgroup, below the hierarchy root (e.g. `/umbra.slice/nginx-1a2b3c4d`).
    pub group: String,
    /// The workload's tier: `shadow`, `warm` or `full` (for `tier`: the new one).
    pub tier: String,
    /// `set`: the knob (`cpu.max`, `memory.high`, …) and its old and new value (cpu.max
    /// in µs of quota per 100 ms, memory in bytes, weights as is; none: no limit).
    pub knob: String,
    pub old: Option<u64>,
    pub new: Option<u64>,
    /// Written to the cgroup (enforce mode, a tier that writes, and the kernel took it).
    pub written: bool,
    pub error: Option<String>,
    /// `set`: the predictor, the band (p10, p50, p90, in cores or bytes) over the lead
    /// steps, and the usage in the last interval.
    pub predictor: String,
    pub band: Option<[f64; 3]>,
    pub usage: Option<f64>,
    /// The rules that moved the value away from what the forecast asked for.
    pub bounds: Vec<String>,
    /// `place`: the process and exec → placed, µs.
    pub pid: Option<u32>,
    pub latency_us: Option<u64>,
    /// The whole explanation, one line.
    pub text: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolStatus {
    /// Messages waiting for the broker's acknowledgement, and their bytes on disk.
    pub pending: u64,
    pub bytes: u64,
    /// Messages dropped unsent because the spool was full (oldest first), since start.
    pub dropped: u64,
    /// Messages the spool could not take (a full disk, a read-only state directory) and
    /// that were sent from memory instead (seq 0), since start; those dropped from that
    /// bounded queue; command replies dropped (rate limit or queue full).
    #[serde(default)]
    pub unspooled: u64,
    #[serde(default)]
    pub unspooled_dropped: u64,
    #[serde(default)]
    pub replies_dropped: u64,
    /// The spool's last error, until it can be written again.
    #[serde(default)]
    pub error: Option<String>,
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

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is neither a postcard nor a JSON Umbra envelope: {0}")]
    Malformed(String),
    #[error(
        "payload has schema version {found}; this build reads up to {SCHEMA}: upgrade the subscriber"
    )]
    NewerSchema { found: u16 },
    #[error("unknown message kind {0:?}")]
    UnknownKind(String),
}

/// Whether this build reads messages of `schema`: none newer, and no schema 0 ever was.
fn readable(schema: u16) -> Result<(), DecodeError> {
    match schema {
        0 => Err(DecodeError::Malformed(
            "schema version 0: none has it".into(),
        )),
        s if s > SCHEMA => Err(DecodeError::NewerSchema { found: s }),
        _ => Ok(()),
    }
}

impl Envelope {
    pub fn encode(&self, payload: Payload) -> Vec<u8> {
        match payload {
            // Neither can fail: every field is a plain value with a serde impl.
            Payload::Postcard => postcard::to_stdvec(self).unwrap_or_default(),
            Payload::Json => serde_json::to_vec(&self.to_json()).unwrap_or_default(),
        }
    }

    /// The schema version a postcard payload was written with.
    pub fn schema_of(bytes: &[u8]) -> Option<u16> {
        postcard::take_from_bytes::<u16>(bytes).ok().map(|(s, _)| s)
    }

    /// Decodes either encoding (JSON payloads start with `{`); an older schema is
    /// converted to this one.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        if bytes.first() == Some(&b'{') {
            let v: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
            return Envelope::from_json(v);
        }
        // The schema version leads the envelope: check it before the rest.
        let (schema, _) = postcard::take_from_bytes::<u16>(bytes)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        readable(schema)?;
        let malformed = |e: postcard::Error| DecodeError::Malformed(e.to_string());
        if schema == 1 {
            return postcard::from_bytes::<super::message_v1::Envelope>(bytes)
                .map(Envelope::from)
                .map_err(malformed);
        }
        if schema == 2 {
            return postcard::from_bytes::<super::message_v2::Envelope>(bytes)
                .map(Envelope::from)
                .map_err(malformed);
        }
        if schema == 3 {
            return postcard::from_bytes::<super::message_v3::Envelope>(bytes)
                .map(Envelope::from)
                .map_err(malformed);
        }
        postcard::from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }

    fn to_json(&self) -> serde_json::Value {
        let body = match &self.body {
            Body::Summary(b) => serde_json::to_value(b),
            Body::Status(b) => serde_json::to_value(b),
            Body::CmdResult(b) => serde_json::to_value(b),
            Body::Decisions(b) => serde_json::to_value(b),
            Body::Anomaly(b) => serde_json::to_value(b),
            Body::Profiles(b) => serde_json::to_value(b),
        }
        .unwrap_or_default();
        serde_json::json!({
            "schema": self.schema,
            "node": self.node,
            "seq": self.seq,
            "time_ms": self.time_ms,
            "historical": self.historical,
            "kind": self.body.kind().name(),
            "body": body,
        })
    }

    fn from_json(mut v: serde_json::Value) -> Result<Envelope, DecodeError> {
        #[derive(Deserialize)]
        struct Head {
            schema: u16,
            node: String,
            seq: u64,
            time_ms: u64,
            #[serde(default)]
            historical: bool,
            kind: String,
        }
        let body = v
            .get_mut("body")
            .map(serde_json::Value::take)
            .ok_or_else(|| DecodeError::Malformed("no \"body\"".into()))?;
        let head: Head =
            serde_json::from_value(v).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        readable(head.schema)?;
        let kind = Kind::from_name(&head.kind).ok_or(DecodeError::UnknownKind(head.kind))?;
        let bad = |e: serde_json::Error| DecodeError::Malformed(e.to_string());
        let body = match kind {
            Kind::Summary => Body::Summary(serde_json::from_value(body).map_err(bad)?),
            Kind::Status => Body::Status(serde_json::from_value(body).map_err(bad)?),
            Kind::CmdResult => Body::CmdResult(serde_json::from_value(body).map_err(bad)?),
            Kind::Decision => Body::Decisions(serde_json::from_value(body).map_err(bad)?),
            Kind::Anomaly => Body::Anomaly(serde_json::from_value(body).map_err(bad)?),
            Kind::Profiles => Body::Profiles(serde_json::from_value(body).map_err(bad)?),
        };
        Ok(Envelope {
            // Converted, as a postcard one is: its body is of this schema now (re-encoded, it
            // must not claim an older one's shape).
            schema: SCHEMA,
            node: head.node,
            seq: head.seq,
            time_ms: head.time_ms,
            historical: head.historical,
            body,
        })
    }
}

/// Topics of one fleet and node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    pub fleet: String,
    pub node: String,
}

impl Topics {
    pub fn base(&self) -> String {
        format!("umbra/v1/{}/{}", self.fleet, self.node)
    }

    pub fn of(&self, kind: Kind) -> String {
        format!("{}/{}", self.base(), kind.name())
    }

    /// Commands for this node (in).
    pub fn commands(&self) -> String {
        format!("{}/cmd/#", self.base())
    }

    /// Model updates for this node, and for the whole fleet (in).
    pub fn models(&self) -> [String; 2] {
        [
            format!("{}/model", self.base()),
            format!("umbra/v1/{}/model", self.fleet),
        ]
    }

    /// Splits `umbra/v1/<fleet>/<node>/<rest>` into (fleet, node, rest).
    pub fn parse(topic: &str) -> Option<(&str, &str, &str)> {
        let rest = topic.strip_prefix("umbra/v1/")?;
        let (fleet, rest) = rest.split_once('/')?;
        let (node, rest) = rest.split_once('/')?;
        Some((fleet, node, rest))
    }
}

/// A topic level must not hold MQTT wildcards or separators.
pub fn valid_level(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0']) && s.len() <= 64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn envelope(seq: u64, body: Body) -> Envelope {
        Envelope {
            schema: SCHEMA,
            node: "edge-1".into(),
            seq,
            time_ms: 1_700_000_000_000,
            historical: seq.is_multiple_of(2),
            body,
        }
    }

    fn summary(n: usize, cpu: f32) -> Summary {
        Summary {
            start_ms: 5,
            period_ms: 10_000,
            intervals: 10,
            node: NodeSummary {
                cpus: 2,
                cpu_busy_mean: cpu,
                ..Default::default()
            },
            workloads: (0..n)
                .map(|i| WorkloadSummary {
                    workload: format!("exe:sha256:{i:064x}"),
                    name: format!("w{i}"),
                    cpu_cores_mean: cpu / (i + 1) as f32,
                    read_bytes: i as u64 * 4096,
                    pressure_max: (i % 2 == 0).then_some([1.0, 2.0, 3.5]),
                    forecast: (i % 3 == 0).then_some(WorkloadForecast {
                        cpu_cores: [cpu * 0.5, cpu, cpu * 2.0],
                        rss_bytes: [1e6, 2e6, 3e6],
                    }),
                    ..Default::default()
                })
                .collect(),
            other: None,
            predictor: "onnx:2026.12.07-2/seasonal+aci".into(),
            forecast_step_ms: 5000,
            requests: (0..n % 4)
                .map(|i| RequestSummary {
                    key: format!("exe:sha256:{i:064x}"),
                    name: "xz".into(),
                    pid: 100 + i as u32,
                    exec_ms: 1_700_000_000_000 + i as u64,
                    source: "profile".into(),
                    runs: 3,
                    cpu_seconds: [cpu * 0.5, cpu, cpu * 2.0],
                    peak_rss_bytes: [1e6, 2e6, 3e6],
                    duration_seconds: [0.5, 1.0, 2.0],
                    io_bytes: [0.0, 4096.0, 8192.0],
                    used: (i % 2 == 1).then_some(RequestUse {
                        cpu_seconds: cpu,
                        peak_rss_bytes: 2.5e6,
                        duration_seconds: 1.5,
                        io_bytes: 4096.0,
                    }),
                })
                .collect(),
            requests_omitted: n as u32 / 4,
        }
    }

    /// A schema-3 message (the release before summaries carried per-request predictions)
    /// decodes as this schema's, its forecasts kept, without requests.
    #[test]
    fn schema_3_messages_are_read_and_converted() {
        use super::super::message_v3 as v3;
        let new = summary(6, 1.5);
        let old = v3::Envelope {
            schema: 3,
            node: "edge-1".into(),
            seq: 7,
            time_ms: 9,
            historical: true,
            body: v3::Body::Summary(v3::Summary {
                start_ms: new.start_ms,
                period_ms: new.period_ms,
                intervals: new.intervals,
                node: new.node.clone(),
                workloads: new.workloads.clone(),
                other: None,
                predictor: new.predictor.clone(),
                forecast_step_ms: new.forecast_step_ms,
            }),
        };
        let e = Envelope::decode(&postcard::to_stdvec(&old).unwrap()).unwrap();
        assert_eq!((e.schema, e.seq, e.historical), (SCHEMA, 7, true));
        let Body::Summary(s) = e.body else {
            panic!("{e:?}")
        };
        assert_eq!(
            s,
            Summary {
                requests: Vec::new(),
                requests_omitted: 0,
                ..new
            }
        );
        assert!(s.workloads[0].forecast.is_some());
        // Its status: as it was, without the requests' counters.
        let status = v3::Status {
            online: true,
            mode: "enforce".into(),
            problems: vec!["a problem".into()],
            predict: Some(Box::default()),
            ..Default::default()
        };
        let old = v3::Envelope {
            body: v3::Body::Status(status.clone()),
            ..old
        };
        let e = Envelope::decode(&postcard::to_stdvec(&old).unwrap()).unwrap();
        let Body::Status(s3) = e.body else {
            panic!("{e:?}")
        };
        assert_eq!(s3, status.into());
        assert_eq!(
            (s3.requests, s3.problems.len(), s3.predict.is_some()),
            (None, 1, true)
        );
        // Schema 3's JSON lacks the requests: they default.
        let mut json = serde_json::to_value(envelope(1, Body::Summary(s.clone()))).unwrap();
        let body = &mut json["body"]["Summary"];
        body.as_object_mut().unwrap().remove("requests");
        body.as_object_mut().unwrap().remove("requests_omitted");
        let json = serde_json::json!({
            "schema": 3, "node": "e", "seq": 1, "time_ms": 2, "kind": "summary",
            "body": body.take(),
        });
        let e = Envelope::decode(json.to_string().as_bytes()).unwrap();
        assert_eq!(e.schema, SCHEMA);
        assert!(matches!(e.body, Body::Summary(b) if b == s));
    }

    /// A schema-2 message (the release before summaries carried forecasts) decodes as
    /// this schema's, without them.
    #[test]
    fn schema_2_messages_are_read_and_converted() {
        use super::super::message_v2 as v2;
        let old = v2::Envelope {
            schema: 2,
            node: "edge-1".into(),
            seq: 7,
            time_ms: 9,
            historical: false,
            body: v2::Body::Summary(v2::Summary {
                start_ms: 5,
                period_ms: 10_000,
                intervals: 10,
                workloads: vec![v2::WorkloadSummary {
                    workload: "exe:sha256:ab".into(),
                    cpu_cores_mean: 1.5,
                    pressure_max: Some([1.0, 2.0, 3.0]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        };
        let e = Envelope::decode(&postcard::to_stdvec(&old).unwrap()).unwrap();
        assert_eq!((e.schema, e.seq, e.node.as_str()), (SCHEMA, 7, "edge-1"));
        let Body::Summary(s) = e.body else {
            panic!("{e:?}")
        };
        assert_eq!((s.start_ms, s.predictor.as_str()), (5, ""));
        let w = &s.workloads[0];
        assert_eq!(
            (w.cpu_cores_mean, w.pressure_max),
            (1.5, Some([1.0, 2.0, 3.0]))
        );
        assert_eq!(w.forecast, None);
        let status = v2::Envelope {
            body: v2::Body::Status(super::super::message_v3::Status {
                online: true,
                mode: "enforce".into(),
                ..Default::default()
            }),
            ..old
        };
        let e = Envelope::decode(&postcard::to_stdvec(&status).unwrap()).unwrap();
        assert!(matches!(e.body, Body::Status(s) if s.mode == "enforce"));
    }

    proptest! {
        #[test]
        fn both_encodings_round_trip(seq in 1u64.., n in 0usize..20, cpu in 0f32..64.0) {
            for body in [
                Body::Summary(summary(n, cpu)),
                Body::Status(Status { online: true, mode: "dry-run".into(), ..Default::default() }),
                Body::CmdResult(CmdResult { id: Some("x".into()), topic: "t".into(), ok: false, message: "m".into() }),
                Body::Decisions(Decisions {
                    made_ms: seq,
                    mode: "enforce".into(),
                    decisions: vec![DecisionRecord {
                        kind: "set".into(),
                        knob: "cpu.max".into(),
                        old: None,
                        new: Some(150_000),
                        band: Some([0.5, 1.0, 1.3]),
                        bounds: vec!["floor 0.05 cores".into()],
                        ..Default::default()
                    }],
                    omitted: n as u32,
                }),
                Body::Profiles(Profiles {
                    profiles: vec![ProfileRow {
                        key: "exe:sha256:ab".into(),
                        name: "xz".into(),
                        parent: "sh".into(),
                        runs: n as u32,
                        total_runs: seq,
                        last_ms: seq,
                        cpu_seconds: [cpu, cpu * 2.0, cpu * 3.0],
                        peak_rss_bytes: [1e6, 2e6, 3e6],
                        ..Default::default()
                    }],
                    more: 3,
                }),
                Body::Status(Status {
                    allocation: Some(Box::new(AllocationStatus {
                        backend: "cgroup v1".into(),
                        faults: vec![("EINVAL".into(), 2)],
                        exec_to_placed_p99_us: Some(800),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
            ] {
                let e = envelope(seq, body);
                for p in [Payload::Postcard, Payload::Json] {
                    prop_assert_eq!(&Envelope::decode(&e.encode(p)).unwrap(), &e);
                }
            }
        }

        #[test]
        fn garbage_is_an_error_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Envelope::decode(&bytes);
        }
    }

    #[test]
    fn schema_1_messages_are_read_and_converted() {
        use crate::publish::message_v1 as v1;
        let old = v1::Envelope {
            schema: 1,
            node: "edge-1".into(),
            seq: 7,
            time_ms: 9,
            historical: false,
            body: v1::Body::Status(v1::Status {
                online: true,
                mode: "dry-run".into(),
                spool: v1::SpoolStatus {
                    pending: 3,
                    bytes: 4,
                    dropped: 5,
                },
                ..Default::default()
            }),
        };
        let bytes = postcard::to_stdvec(&old).unwrap();
        assert_eq!(Envelope::schema_of(&bytes), Some(1));
        let new = Envelope::decode(&bytes).unwrap();
        assert_eq!(
            (new.schema, new.seq, new.node.as_str()),
            (SCHEMA, 7, "edge-1")
        );
        let Body::Status(s) = &new.body else {
            panic!("{new:?}")
        };
        assert_eq!(
            (s.spool.pending, s.spool.dropped, s.spool.unspooled),
            (3, 5, 0)
        );
        assert!(s.online && s.problems.is_empty());
        // JSON of schema 1 lacks the new fields: they default.
        let json = r#"{"schema":1,"node":"e","seq":1,"time_ms":2,"kind":"status","body":{"online":true,"agent_version":"0.1.0","kernel":"k","uptime_s":1,"mode":"dry-run","model":null,"workloads":0,"capture_drops":0,"spool":{"pending":0,"bytes":0,"dropped":0}}}"#;
        assert!(matches!(
            Envelope::decode(json.as_bytes()).unwrap().body,
            Body::Status(Status { online: true, .. })
        ));
        let summary = v1::Envelope {
            body: v1::Body::Summary(v1::Summary {
                start_ms: 10,
                workloads: vec![v1::WorkloadSummary {
                    workload: "exe:x".into(),
                    read_bytes: 12,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..old
        };
        let Body::Summary(s) = Envelope::decode(&postcard::to_stdvec(&summary).unwrap())
            .unwrap()
            .body
        else {
            panic!()
        };
        assert_eq!((s.start_ms, s.workloads[0].read_bytes), (10, 12));
    }

    /// Whatever a predictor made, its bands go on the wire finite, so a JSON subscriber
    /// can read the message.
    #[test]
    fn bands_go_on_the_wire_finite() {
        use crate::predict::Band;
        assert_eq!(wire_f32(f64::NAN), 0.0);
        assert_eq!(wire_f32(f64::INFINITY), f32::MAX);
        assert_eq!(wire_f32(-1e300), f32::MIN);
        assert_eq!(wire_f32(1.5), 1.5);
        let band = wire_band(&Band {
            p10: f64::NAN,
            p50: 2.0,
            p90: f64::INFINITY,
        });
        let mut s = summary(5, 1.0);
        s.requests[0].cpu_seconds = band;
        s.workloads[0].forecast.as_mut().unwrap().cpu_cores = band;
        let e = envelope(1, Body::Summary(s));
        assert_eq!(Envelope::decode(&e.encode(Payload::Json)).unwrap(), e);
    }

    #[test]
    fn a_newer_schema_is_refused_with_the_versions() {
        let mut e = envelope(1, Body::Status(Status::default()));
        e.schema = SCHEMA + 1;
        for p in [Payload::Postcard, Payload::Json] {
            let err = Envelope::decode(&e.encode(p)).unwrap_err();
            assert!(matches!(err, DecodeError::NewerSchema { found } if found == SCHEMA + 1));
            assert!(err.to_string().contains("upgrade"), "{err}");
        }
        // No schema 0 ever was (found by the mqtt_message fuzz target).
        e.schema = 0;
        for p in [Payload::Postcard, Payload::Json] {
            let err = Envelope::decode(&e.encode(p)).unwrap_err();
            assert!(err.to_string().contains("schema version 0"), "{err}");
        }
    }

    #[test]
    fn topics_split_and_name_kinds() {
        let t = Topics {
            fleet: "f".into(),
            node: "n".into(),
        };
        assert_eq!(t.of(Kind::CmdResult), "umbra/v1/f/n/cmd/result");
        assert_eq!(
            Topics::parse("umbra/v1/f/n/cmd/set-mode"),
            Some(("f", "n", "cmd/set-mode"))
        );
        assert_eq!(Topics::parse("other/v1/f/n/x"), None);
        assert!(valid_level("edge-1") && !valid_level("a/b") && !valid_level("#"));
    }
}
