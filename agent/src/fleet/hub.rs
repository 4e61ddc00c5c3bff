//! `umbra hub`: the fleet's receiving end. Subscribes to a fleet (alone, or sharing the
//! load with other hubs through shared subscriptions `$share/<group>/…`), removes
//! duplicates by `(node, seq)`, stores every summary as rows of Parquet files for the
//! training pipeline in `models/` (one row per workload and period; readable by pandas,
//! polars and DuckDB), prints a live fleet table, and signs and publishes models.
//!
//! Files are written whole and renamed into place (`summaries-*.parquet`), so a reader
//! never sees a half-written one; a hub stopped with SIGINT/SIGTERM writes what it holds.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use parquet::{
    basic::Compression,
    data_type::{BoolType, ByteArray, ByteArrayType, FloatType, Int64Type},
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::parser::parse_message_type,
};
use rumqttc::{Event, Packet, QoS};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Dedup;
use crate::publish::{
    Body, Envelope, ProfileRow, PublishError, RequestSummary, Security, Summary, Topics,
    client::fleet_client,
    model::{BUNDLE_FORMAT, ModelBundle, SignedModel},
};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Mqtt(#[from] PublishError),
    #[error("data directory {path}: {source}")]
    Data {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing Parquet file {path}: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] crate::publish::model::ModelError),
}

/// How the hub runs.
#[derive(Clone, Debug)]
pub struct HubArgs {
    pub url: String,
    pub security: Security,
    pub fleet: String,
    /// Share the fleet with other hubs of this group (MQTT shared subscription).
    pub group: Option<String>,
    /// Client id; stable ids keep the broker session (and queued messages) across restarts.
    pub client_id: String,
    pub data: PathBuf,
    /// Write a file when this many rows are held, or this often.
    pub flush_rows: usize,
    pub flush_every: Duration,
    /// Print the fleet table this often (`None`: never).
    pub table_every: Option<Duration>,
    /// Stop after this many summaries (tests, batch jobs).
    pub max_summaries: Option<u64>,
}

/// Under the data dir: the workloads flagged for retraining, one JSON object a line.
pub const RETRAIN_FILE: &str = "retrain.jsonl";

/// What a hub saw of one node.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct NodeSeen {
    pub messages: u64,
    pub summaries: u64,
    pub duplicates: u64,
    /// Highest seq seen, and seqs below it never seen (a shared hub sees only its part).
    pub max_seq: u64,
    pub missing: u64,
    /// Messages that arrived after a higher seq of their node (late, not duplicated).
    pub out_of_order: u64,
    pub historical: u64,
    pub online: Option<bool>,
    pub last_time_ms: u64,
    pub workloads: u32,
    pub cpu_busy: f32,
    pub cpus: u32,
    pub spool_pending: u64,
    /// The node's hostname (a label), from its status.
    pub hostname: String,
    /// Messages under a seq already seen with other content, and times a second agent
    /// instance came online while another was still online: two devices on one node id.
    pub conflicts: u64,
    pub instance_switches: u64,
    pub duplicate_id: bool,
    /// Workloads of the node whose forecasts drifted (each flagged for retraining).
    pub drifts: u64,
    /// Executables' profiles received (rows of `profiles` messages).
    pub profiles: u64,
    /// Predicted requests that ended (summaries' request rows with what they used), and
    /// those of them whose CPU seconds were within their predicted p10–p90.
    pub requests_ended: u64,
    pub requests_within_cpu: u64,
    #[serde(skip)]
    last_instance: Option<(u64, bool)>,
}

/// The hub's state: deduplication, per-node view, rows not yet written.
pub struct Hub {
    dedup: Dedup,
    pub nodes: BTreeMap<String, NodeSeen>,
    rows: Rows,
    requests: RequestRows,
    data: PathBuf,
    tag: String,
    files: u64,
    pub summaries: u64,
    /// Each node's executables' latest profiles, and when they were sent; written whole
    /// to `profiles.parquet` when changed.
    profiles: BTreeMap<(String, String), (u64, ProfileRow)>,
    profiles_changed: bool,
}

impl Hub {
    pub fn new(data: &Path, tag: &str) -> Result<Hub, HubError> {
        fs::create_dir_all(data).map_err(|source| HubError::Data {
            path: data.into(),
            source,
        })?;
        Ok(Hub {
            dedup: Dedup::default(),
            nodes: BTreeMap::new(),
            rows: Rows::default(),
            requests: RequestRows::default(),
            data: data.into(),
            tag: tag.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
            files: 0,
            summaries: 0,
            profiles: BTreeMap::new(),
            profiles_changed: false,
        })
    }

    /// Takes one message; true if it was new.
    pub fn ingest(&mut self, topic: &str, payload: &[u8]) -> bool {
        let env = match Envelope::decode(payload) {
            Ok(e) => e,
            Err(e) => {
                warn!(topic, error = %e, "Undecodable message ignored");
                return false;
            }
        };
        let node = Topics::parse(topic).map_or(env.node.clone(), |(_, n, _)| n.to_string());
        let seen = self.nodes.entry(node.clone()).or_default();
        match self.dedup.check(&node, env.seq, digest(&env)) {
            super::Seen::New => {}
            super::Seen::Repeat => {
                seen.duplicates += 1;
                return false;
            }
            super::Seen::Conflict => {
                seen.conflicts += 1;
                flag_duplicate(&node, seen, "two different messages under one seq");
                return false;
            }
        }
        seen.messages += 1;
        seen.historical += env.historical as u64;
        if env.seq > 0 {
            if env.seq > seen.max_seq {
                seen.missing += env.seq - seen.max_seq - 1;
                seen.max_seq = env.seq;
            } else {
                seen.out_of_order += 1;
                seen.missing = seen.missing.saturating_sub(1);
            }
        }
        seen.last_time_ms = seen.last_time_ms.max(env.time_ms);
        match &env.body {
            Body::Summary(s) => {
                seen.summaries += 1;
                seen.workloads = s.node.workloads;
                seen.cpu_busy = s.node.cpu_busy_mean;
                seen.cpus = s.node.cpus;
                for within in s.requests.iter().filter_map(RequestSummary::within_cpu) {
                    seen.requests_ended += 1;
                    seen.requests_within_cpu += within as u64;
                }
                self.rows.push(&node, &env, s);
                self.requests.push(&node, &env, s);
                self.summaries += 1;
            }
            Body::Status(s) => {
                seen.online = Some(s.online);
                seen.spool_pending = s.spool.pending;
                if !s.hostname.is_empty() {
                    seen.hostname.clone_from(&s.hostname);
                }
                // A new instance coming online while the last one never said goodbye (nor
                // did the broker for it): a restart does that at most once, two devices on
                // one id again and again.
                if s.instance != 0 {
                    if let Some((last, online)) = seen.last_instance
                        && last != s.instance
                        && online
                        && s.online
                    {
                        seen.instance_switches += 1;
                        if seen.instance_switches >= 2 {
                            flag_duplicate(&node, seen, "agent instances alternate");
                        }
                    }
                    seen.last_instance = Some((s.instance, s.online));
                }
            }
            Body::Anomaly(a) if a.kind == "drift" => {
                seen.drifts += 1;
                self.flag_for_retraining(&node, a);
            }
            Body::Profiles(p) => {
                seen.profiles += p.profiles.len() as u64;
                for r in &p.profiles {
                    let at = (node.clone(), r.key.clone());
                    if self
                        .profiles
                        .get(&at)
                        .is_none_or(|(t, _)| *t <= env.time_ms)
                    {
                        self.profiles.insert(at, (env.time_ms, r.clone()));
                        self.profiles_changed = true;
                    }
                }
            }
            Body::CmdResult(_) | Body::Decisions(_) | Body::Anomaly(_) => {}
        }
        true
    }

    /// A workload whose forecasts drifted: one JSON line in `<data>/retrain.jsonl` (node,
    /// workload, since when), so the next training run (`cargo xtask train --from-hub`)
    /// knows whose recent summaries — already in the Parquet files — to weigh.
    fn flag_for_retraining(&self, node: &str, a: &crate::publish::message::AnomalyReport) {
        let path = self.data.join(RETRAIN_FILE);
        let line = serde_json::json!({
            "node": node,
            "workload": a.workload,
            "name": a.name,
            "since_ms": a.since_ms,
            "timestamp_ms": a.timestamp_ms,
            "text": a.text,
        });
        let r = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = r {
            warn!(path = %path.display(), error = %e, "Drift not kept for retraining");
        }
    }

    /// Writes held rows to a new Parquet file (returns its path) and their requests to
    /// another, and the profiles when they changed.
    pub fn flush(&mut self) -> Result<Option<PathBuf>, HubError> {
        if self.profiles_changed {
            self.write_profiles()?;
        }
        if self.rows.len == 0 && self.requests.len == 0 {
            return Ok(None);
        }
        self.files += 1;
        let stamp = format!(
            "{}-{}-{:04}",
            crate::capture::procfs::wall_ms(),
            self.tag,
            self.files
        );
        // Each table's rows are let go once written, not before: a write that failed (a
        // full disk) leaves them held.
        if self.requests.len > 0 {
            let path = self.write(&format!("requests-{stamp}.parquet"), |p| {
                self.requests.write(p, REQUESTS_SCHEMA)
            })?;
            info!(file = %path.display(), rows = self.requests.len, "Requests stored");
            self.requests = RequestRows::default();
        }
        if self.rows.len == 0 {
            return Ok(None);
        }
        let path = self.write(&format!("summaries-{stamp}.parquet"), |p| {
            self.rows.write(p, SCHEMA)
        })?;
        info!(file = %path.display(), rows = self.rows.len, "Summaries stored");
        self.rows = Rows::default();
        Ok(Some(path))
    }

    /// A table written whole by `write` under the data dir as `name`, then renamed into
    /// place (over the last of that name).
    fn write(
        &self,
        name: &str,
        write: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<PathBuf, HubError> {
        let path = self.data.join(name);
        let tmp = self.data.join(format!(".{name}.tmp"));
        write(&tmp).map_err(|message| HubError::Parquet {
            path: path.clone(),
            message,
        })?;
        fs::rename(&tmp, &path).map_err(|source| HubError::Data {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Every node's executables' latest profiles as `<data>/profiles.parquet` (written
    /// whole, then renamed over the last).
    fn write_profiles(&mut self) -> Result<(), HubError> {
        let mut t = Columns::<4, 4, 15, 0, 0>::default();
        for ((node, key), (time_ms, r)) in &self.profiles {
            t.len += 1;
            t.push_strs([node, key, &r.name, &r.parent]);
            t.push_ints([*time_ms, r.runs as u64, r.total_runs, r.last_ms]);
            let qs = [
                r.cpu_seconds,
                r.peak_rss_bytes,
                r.duration_seconds,
                r.io_bytes,
                r.input_bytes,
            ];
            for (c, v) in t.floats.iter_mut().zip(qs.iter().flatten()) {
                c.push(*v);
            }
        }
        let path = self.write(PROFILES_FILE, |p| t.write(p, PROFILES_SCHEMA))?;
        self.profiles_changed = false;
        info!(file = %path.display(), rows = t.len, "Profiles stored");
        Ok(())
    }

    pub fn duplicates(&self) -> u64 {
        self.dedup.duplicates
    }

    /// The fleet table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<14} {:<16} {:>7} {:>8} {:>9} {:>6} {:>9} {:>5} {:>7} {:>7} {:>12}\n",
            "NODE",
            "HOST",
            "STATUS",
            "SEQ",
            "SUMMARIES",
            "DUPS",
            "MISSING",
            "WLS",
            "CPU",
            "SPOOL",
            "REQ IN BAND"
        );
        for (n, v) in &self.nodes {
            // Of the node's predicted requests that ended, those whose CPU was within
            // their p10–p90.
            let in_band = match v.requests_ended {
                0 => "-".to_string(),
                n => format!(
                    "{:.0}% of {n}",
                    v.requests_within_cpu as f64 * 100.0 / n as f64
                ),
            };
            s += &format!(
                "{:<14} {:<16} {:>7} {:>8} {:>9} {:>6} {:>9} {:>5} {:>7} {:>7} {:>12}{}\n",
                crate::view::clip(n, 14),
                crate::view::clip(&v.hostname, 16),
                match v.online {
                    Some(true) => "online",
                    Some(false) => "offline",
                    None => "?",
                },
                v.max_seq,
                v.summaries,
                v.duplicates,
                v.missing,
                v.workloads,
                format!("{:.2}/{}", v.cpu_busy, v.cpus),
                v.spool_pending,
                in_band,
                if v.duplicate_id {
                    "  TWO DEVICES ON ONE NODE ID"
                } else {
                    ""
                },
            );
        }
        s
    }
}

/// A digest of a message's content: what it says and when it was made, not how it was
/// delivered (the historical flag changes on a resend).
fn digest(env: &Envelope) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    env.time_ms.hash(&mut h);
    postcard::to_stdvec(&env.body)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

fn flag_duplicate(node: &str, seen: &mut NodeSeen, why: &str) {
    if !seen.duplicate_id {
        warn!(
            node,
            why,
            "Two devices publish as one node id: give each its own publish.node, or let the agent derive it (see docs/mqtt.md)"
        );
    }
    seen.duplicate_id = true;
}

/// Column buffers of one table, in its schema's order: strings, ints, floats, bools,
/// optional floats ([`write_table`]).
struct Columns<const S: usize, const I: usize, const F: usize, const B: usize, const O: usize> {
    len: usize,
    strs: [Vec<ByteArray>; S],
    ints: [Vec<i64>; I],
    floats: [Vec<f32>; F],
    bools: [Vec<bool>; B],
    opts: [Vec<Option<f32>>; O],
}

impl<const S: usize, const I: usize, const F: usize, const B: usize, const O: usize> Default
    for Columns<S, I, F, B, O>
{
    fn default() -> Self {
        Columns {
            len: 0,
            strs: std::array::from_fn(|_| Vec::new()),
            ints: std::array::from_fn(|_| Vec::new()),
            floats: std::array::from_fn(|_| Vec::new()),
            bools: std::array::from_fn(|_| Vec::new()),
            opts: std::array::from_fn(|_| Vec::new()),
        }
    }
}

impl<const S: usize, const I: usize, const F: usize, const B: usize, const O: usize>
    Columns<S, I, F, B, O>
{
    fn push_strs(&mut self, vs: [&str; S]) {
        for (c, v) in self.strs.iter_mut().zip(vs) {
            c.push(ByteArray::from(v.as_bytes().to_vec()));
        }
    }

    /// Saturated at `i64::MAX`.
    fn push_ints(&mut self, vs: [u64; I]) {
        for (c, v) in self.ints.iter_mut().zip(vs) {
            c.push(v.min(i64::MAX as u64) as i64);
        }
    }

    fn write(&self, path: &Path, schema: &str) -> Result<(), String> {
        write_table(
            path,
            schema,
            &self.strs,
            &self.ints,
            &self.floats,
            &self.bools,
            &self.opts,
        )
    }
}

/// Column buffers of the `summaries` table; its optional floats: PSI (cpu, memory, io),
/// then the forecast's p10, p50, p90 of CPU and of RSS.
type Rows = Columns<3, 22, 4, 1, 9>;

/// The schema, in column order: strings, ints, floats, bools, optional floats.
const SCHEMA: &str = "message summaries {
  REQUIRED BYTE_ARRAY node (STRING);
  REQUIRED BYTE_ARRAY workload (STRING);
  REQUIRED BYTE_ARRAY name (STRING);
  REQUIRED INT64 seq;
  REQUIRED INT64 time_ms;
  REQUIRED INT64 start_ms;
  REQUIRED INT64 period_ms;
  REQUIRED INT64 intervals;
  REQUIRED INT64 processes_max;
  REQUIRED INT64 rss_max_bytes;
  REQUIRED INT64 runq_p99_max_ns;
  REQUIRED INT64 page_faults;
  REQUIRED INT64 read_bytes;
  REQUIRED INT64 write_bytes;
  REQUIRED INT64 block_read_bytes;
  REQUIRED INT64 block_write_bytes;
  REQUIRED INT64 net_rx_bytes;
  REQUIRED INT64 net_tx_bytes;
  REQUIRED INT64 retransmits;
  REQUIRED INT64 execs;
  REQUIRED INT64 conn_accepted;
  REQUIRED INT64 conn_opened;
  REQUIRED INT64 syscalls;
  REQUIRED INT64 node_cpus;
  REQUIRED INT64 node_mem_available_min_bytes;
  REQUIRED FLOAT cpu_cores_mean;
  REQUIRED FLOAT cpu_cores_max;
  REQUIRED FLOAT node_cpu_busy_mean;
  REQUIRED FLOAT node_cpu_busy_max;
  REQUIRED BOOLEAN historical;
  OPTIONAL FLOAT psi_cpu_max;
  OPTIONAL FLOAT psi_memory_max;
  OPTIONAL FLOAT psi_io_max;
  OPTIONAL FLOAT forecast_cpu_p10;
  OPTIONAL FLOAT forecast_cpu_p50;
  OPTIONAL FLOAT forecast_cpu_p90;
  OPTIONAL FLOAT forecast_rss_p10;
  OPTIONAL FLOAT forecast_rss_p50;
  OPTIONAL FLOAT forecast_rss_p90;
}";

impl Rows {
    fn push(&mut self, node: &str, env: &Envelope, s: &Summary) {
        for w in s.workloads.iter().chain(&s.other) {
            self.len += 1;
            self.push_strs([node, &w.workload, &w.name]);
            self.push_ints([
                env.seq,
                env.time_ms,
                s.start_ms,
                s.period_ms as u64,
                s.intervals as u64,
                w.processes_max as u64,
                w.rss_max_bytes,
                w.runq_p99_max_ns,
                w.page_faults,
                w.read_bytes,
                w.write_bytes,
                w.block_read_bytes,
                w.block_write_bytes,
                w.net_rx_bytes,
                w.net_tx_bytes,
                w.retransmits,
                w.execs,
                w.conn_accepted,
                w.conn_opened,
                w.syscalls,
                s.node.cpus as u64,
                s.node.mem_available_min_bytes,
            ]);
            let floats = [
                w.cpu_cores_mean,
                w.cpu_cores_max,
                s.node.cpu_busy_mean,
                s.node.cpu_busy_max,
            ];
            for (c, v) in self.floats.iter_mut().zip(floats) {
                c.push(v);
            }
            self.bools[0].push(env.historical);
            let f = w.forecast;
            for (k, c) in self.opts.iter_mut().enumerate() {
                c.push(match k {
                    0..3 => w.pressure_max.map(|p| p[k]),
                    3..6 => f.map(|f| f.cpu_cores[k - 3]),
                    _ => f.map(|f| f.rss_bytes[k - 6]),
                });
            }
        }
    }
}

/// Column buffers of the `requests` table; its optional floats: what the request used
/// (none until it ended).
type RequestRows = Columns<4, 5, 12, 1, 4>;

/// The `requests` table: one row per request row of a summary (a request predicted in
/// one summary's period and ended in a later one has two rows, joined by node, pid and
/// `exec_ms`). Its column order: strings, ints, floats, bools, optional floats.
const REQUESTS_SCHEMA: &str = "message requests {
  REQUIRED BYTE_ARRAY node (STRING);
  REQUIRED BYTE_ARRAY key (STRING);
  REQUIRED BYTE_ARRAY name (STRING);
  REQUIRED BYTE_ARRAY source (STRING);
  REQUIRED INT64 seq;
  REQUIRED INT64 time_ms;
  REQUIRED INT64 pid;
  REQUIRED INT64 exec_ms;
  REQUIRED INT64 runs;
  REQUIRED FLOAT cpu_seconds_p10;
  REQUIRED FLOAT cpu_seconds_p50;
  REQUIRED FLOAT cpu_seconds_p90;
  REQUIRED FLOAT peak_rss_bytes_p10;
  REQUIRED FLOAT peak_rss_bytes_p50;
  REQUIRED FLOAT peak_rss_bytes_p90;
  REQUIRED FLOAT duration_seconds_p10;
  REQUIRED FLOAT duration_seconds_p50;
  REQUIRED FLOAT duration_seconds_p90;
  REQUIRED FLOAT io_bytes_p10;
  REQUIRED FLOAT io_bytes_p50;
  REQUIRED FLOAT io_bytes_p90;
  REQUIRED BOOLEAN historical;
  OPTIONAL FLOAT used_cpu_seconds;
  OPTIONAL FLOAT used_peak_rss_bytes;
  OPTIONAL FLOAT used_duration_seconds;
  OPTIONAL FLOAT used_io_bytes;
}";

impl RequestRows {
    fn push(&mut self, node: &str, env: &Envelope, s: &Summary) {
        for r in &s.requests {
            self.len += 1;
            self.push_strs([node, &r.key, &r.name, &r.source]);
            self.push_ints([env.seq, env.time_ms, r.pid as u64, r.exec_ms, r.runs as u64]);
            let bands = [
                r.cpu_seconds,
                r.peak_rss_bytes,
                r.duration_seconds,
                r.io_bytes,
            ];
            for (c, v) in self.floats.iter_mut().zip(bands.iter().flatten()) {
                c.push(*v);
            }
            self.bools[0].push(env.historical);
            let u = r.used;
            let used = [
                u.map(|u| u.cpu_seconds),
                u.map(|u| u.peak_rss_bytes),
                u.map(|u| u.duration_seconds),
                u.map(|u| u.io_bytes),
            ];
            for (c, v) in self.opts.iter_mut().zip(used) {
                c.push(v);
            }
        }
    }
}

/// Under the data dir: every node's executables' latest profiles.
pub const PROFILES_FILE: &str = "profiles.parquet";

/// The `profiles` table: one row per node and executable, its latest profile (p10, p50,
/// p90 of each outcome over its kept runs).
const PROFILES_SCHEMA: &str = "message profiles {
  REQUIRED BYTE_ARRAY node (STRING);
  REQUIRED BYTE_ARRAY key (STRING);
  REQUIRED BYTE_ARRAY name (STRING);
  REQUIRED BYTE_ARRAY parent (STRING);
  REQUIRED INT64 time_ms;
  REQUIRED INT64 runs;
  REQUIRED INT64 total_runs;
  REQUIRED INT64 last_ms;
  REQUIRED FLOAT cpu_seconds_p10;
  REQUIRED FLOAT cpu_seconds_p50;
  REQUIRED FLOAT cpu_seconds_p90;
  REQUIRED FLOAT peak_rss_bytes_p10;
  REQUIRED FLOAT peak_rss_bytes_p50;
  REQUIRED FLOAT peak_rss_bytes_p90;
  REQUIRED FLOAT duration_seconds_p10;
  REQUIRED FLOAT duration_seconds_p50;
  REQUIRED FLOAT duration_seconds_p90;
  REQUIRED FLOAT io_bytes_p10;
  REQUIRED FLOAT io_bytes_p50;
  REQUIRED FLOAT io_bytes_p90;
  REQUIRED FLOAT input_bytes_p10;
  REQUIRED FLOAT input_bytes_p50;
  REQUIRED FLOAT input_bytes_p90;
}";

/// Writes one row group of `schema`'s columns, in its order: strings, ints, floats,
/// bools, optional floats.
fn write_table(
    path: &Path,
    schema: &str,
    strs: &[Vec<ByteArray>],
    ints: &[Vec<i64>],
    floats: &[Vec<f32>],
    bools: &[Vec<bool>],
    opts: &[Vec<Option<f32>>],
) -> Result<(), String> {
    let e = |e: parquet::errors::ParquetError| e.to_string();
    let schema = Arc::new(parse_message_type(schema).map_err(e)?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let file = fs::File::create(path).map_err(|e| e.to_string())?;
    let mut w = SerializedFileWriter::new(file, schema, props).map_err(e)?;
    let mut rg = w.next_row_group().map_err(e)?;
    let mut col = 0usize;
    while let Some(mut c) = rg.next_column().map_err(e)? {
        let (s, n, f, b) = (strs.len(), ints.len(), floats.len(), bools.len());
        if col < s {
            c.typed::<ByteArrayType>()
                .write_batch(&strs[col], None, None)
                .map_err(e)?;
        } else if col < s + n {
            c.typed::<Int64Type>()
                .write_batch(&ints[col - s], None, None)
                .map_err(e)?;
        } else if col < s + n + f {
            c.typed::<FloatType>()
                .write_batch(&floats[col - s - n], None, None)
                .map_err(e)?;
        } else if col < s + n + f + b {
            c.typed::<BoolType>()
                .write_batch(&bools[col - s - n - f], None, None)
                .map_err(e)?;
        } else {
            let opt = opts
                .get(col - s - n - f - b)
                .ok_or("more columns in the schema than given")?;
            let values: Vec<f32> = opt.iter().flatten().copied().collect();
            let defs: Vec<i16> = opt.iter().map(|v| v.is_some() as i16).collect();
            c.typed::<FloatType>()
                .write_batch(&values, Some(&defs), None)
                .map_err(e)?;
        }
        c.close().map_err(e)?;
        col += 1;
    }
    rg.close().map_err(e)?;
    w.close().map_err(e)?;
    Ok(())
}

/// Runs the hub until `shutdown` (or `max_summaries`); writes what it holds on the way out.
pub async fn run<W: Write>(
    args: &HubArgs,
    mut out: W,
    shutdown: CancellationToken,
) -> Result<Hub, HubError> {
    // A persistent session: while the hub reconnects, the broker keeps its messages.
    let (client, mut events) =
        fleet_client(&args.url, args.client_id.clone(), &args.security, 64, |o| {
            o.set_clean_session(false);
        })?;
    let mut hub = Hub::new(&args.data, &args.client_id)?;
    let base = format!("umbra/v1/{}/+", args.fleet);
    let topics: Vec<String> = ["summary", "status", "cmd/result", "anomaly", "profiles"]
        .iter()
        .map(|k| match &args.group {
            Some(g) => format!("$share/{g}/{base}/{k}"),
            None => format!("{base}/{k}"),
        })
        .collect();
    let mut last_flush = Instant::now();
    let mut last_table = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let ev = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => None,
            ev = events.poll() => Some(ev),
        };
        match ev {
            Some(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                info!(
                    broker = args.url,
                    session_present = ack.session_present,
                    "Hub connected"
                );
                for t in &topics {
                    if let Err(e) = client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                        warn!(topic = t, error = %e, "Cannot subscribe");
                    }
                }
            }
            Some(Ok(Event::Incoming(Packet::Publish(p)))) => {
                hub.ingest(&p.topic, &p.payload);
                if args.max_summaries.is_some_and(|m| hub.summaries >= m) {
                    break;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                warn!(broker = args.url, error = %e, "Broker unreachable; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            None => {}
        }
        if hub.rows.len >= args.flush_rows || last_flush.elapsed() >= args.flush_every {
            hub.flush()?;
            last_flush = Instant::now();
        }
        if let Some(every) = args.table_every
            && last_table.elapsed() >= every
        {
            let _ = write!(out, "{}", hub.table());
            let _ = out.flush();
            last_table = Instant::now();
        }
    }
    hub.flush()?;
    let _ = client.try_disconnect();
    Ok(hub)
}

/// `umbra hub publish-model`: checks an ONNX file's `umbra.schema` (as the agents will),
/// signs it and publishes it, retained, to the fleet's model topic (or one node's). The
/// name defaults to the schema's kind, the version to its `model_version`.
#[allow(clippy::too_many_arguments)]
pub async fn publish_model(
    url: &str,
    security: &Security,
    fleet: &str,
    node: Option<&str>,
    onnx: &Path,
    key: &Path,
    name: Option<&str>,
    version: Option<&str>,
) -> Result<ModelBundle, HubError> {
    let bytes = fs::read(onnx).map_err(|e| HubError::Input {
        path: onnx.into(),
        message: e.to_string(),
    })?;
    let schema = crate::predict::schema::Schema::of_onnx(&onnx.display().to_string(), &bytes)
        .map_err(|e| HubError::Input {
            path: onnx.into(),
            message: format!("{e}; agents would refuse it, so it is not published"),
        })?;
    let bundle = ModelBundle {
        format: BUNDLE_FORMAT,
        name: name.unwrap_or(schema.kind.name()).into(),
        version: version.unwrap_or(&schema.model_version).into(),
        onnx: bytes,
    };
    let (name, version) = (bundle.name.clone(), bundle.version.clone());
    let key = crate::publish::model::signing_key(key)?;
    let payload = SignedModel::sign(&bundle, &key).encode();
    let topic = match node {
        Some(n) => format!("umbra/v1/{fleet}/{n}/model"),
        None => format!("umbra/v1/{fleet}/model"),
    };
    let id = format!("umbra-publish-model-{}", std::process::id());
    let (client, mut events) = fleet_client(url, id, security, 8, |_| {})?;
    client
        .try_publish(topic.clone(), QoS::AtLeastOnce, true, payload)
        .map_err(|e| PublishError::Broker {
            url: url.into(),
            message: e.to_string(),
        })?;
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no acknowledgement within 10 s".into()));
    acked.map_err(|message| PublishError::Broker {
        url: url.into(),
        message,
    })?;
    let _ = client.try_disconnect();
    info!(topic, model = name, version, "Model published");
    Ok(bundle)
}

/// What `umbra hub command` got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandReply {
    pub ok: bool,
    pub message: String,
}

/// `umbra hub command`: signs a command for one node (fleet key, fresh timestamp, random
/// nonce), publishes it, and waits up to `wait` for the node's reply.
#[allow(clippy::too_many_arguments)]
pub async fn send_command(
    url: &str,
    security: &Security,
    fleet: &str,
    node: &str,
    name: &str,
    fields: &str,
    key: &Path,
    wait: Duration,
) -> Result<Option<CommandReply>, HubError> {
    let input = |message: String| HubError::Input {
        path: PathBuf::from(format!("<{name} arguments>")),
        message,
    };
    let mut fields: serde_json::Map<String, serde_json::Value> = if fields.trim().is_empty() {
        serde_json::Map::new()
    } else {
        serde_json::from_str(fields).map_err(|e| input(format!("not a JSON object: {e}")))?
    };
    let nonce = nonce();
    let id = match fields.get("id").and_then(|v| v.as_str()) {
        Some(id) => id.to_string(),
        None => {
            fields.insert("id".into(), nonce.clone().into());
            nonce.clone()
        }
    };
    let key = crate::publish::model::signing_key(key)?;
    let topic = format!("umbra/v1/{fleet}/{node}/cmd/{name}");
    let payload = crate::publish::command::sign(
        &topic,
        &fields,
        crate::capture::procfs::wall_ms(),
        &nonce,
        &key,
    );
    let (client, mut events) =
        fleet_client(url, format!("umbra-cmd-{nonce}"), security, 8, |_| {})?;
    let broker = |message: String| {
        HubError::Mqtt(PublishError::Broker {
            url: url.into(),
            message,
        })
    };
    let replies = format!("umbra/v1/{fleet}/{node}/cmd/result");
    let publish = || {
        client
            .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .map_err(|e| broker(e.to_string()))
    };
    let mut published = false;
    let until = Instant::now() + wait + Duration::from_secs(10);
    let outcome = loop {
        let left = until.saturating_duration_since(Instant::now());
        let ev = match tokio::time::timeout(left, events.poll()).await {
            Err(_) if published => break Ok(None),
            Err(_) => break Err(broker("not connected within 10 s".into())),
            Ok(Err(e)) => break Err(broker(e.to_string())),
            Ok(Ok(ev)) => ev,
        };
        match ev {
            // Without a wait, publish at once; with one, first subscribe to the replies.
            Event::Incoming(Packet::ConnAck(_)) if wait.is_zero() => {
                publish()?;
                published = true;
            }
            Event::Incoming(Packet::ConnAck(_)) => {
                client
                    .try_subscribe(replies.clone(), QoS::AtLeastOnce)
                    .map_err(|e| broker(e.to_string()))?;
            }
            Event::Incoming(Packet::SubAck(_)) if !published => {
                publish()?;
                published = true;
            }
            Event::Incoming(Packet::PubAck(_)) if wait.is_zero() => break Ok(None),
            Event::Incoming(Packet::Publish(p)) if p.topic == replies => {
                if let Ok(Envelope {
                    body: Body::CmdResult(r),
                    ..
                }) = Envelope::decode(&p.payload)
                    && r.id.as_deref() == Some(id.as_str())
                {
                    break Ok(Some(CommandReply {
                        ok: r.ok,
                        message: r.message,
                    }));
                }
            }
            _ => {}
        }
    };
    let _ = client.try_disconnect();
    info!(topic, id, "Command sent");
    outcome
}

/// 16 random hex digits.
fn nonce() -> String {
    let mut b = [0u8; 8];
    let _ =
        fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;
    use crate::publish::{NodeSummary, Payload, SCHEMA as ENV_SCHEMA, WorkloadSummary};

    /// `body` as node `node`'s message `seq`, made at `seq` seconds.
    fn encoded(node: &str, seq: u64, body: Body) -> Vec<u8> {
        Envelope {
            schema: ENV_SCHEMA,
            node: node.into(),
            seq,
            time_ms: 1000 * seq,
            historical: false,
            body,
        }
        .encode(Payload::Postcard)
    }

    /// Each row of the Parquet file at `path`, as text.
    fn table_rows(path: &Path) -> Vec<String> {
        let r = SerializedFileReader::new(fs::File::open(path).unwrap()).unwrap();
        r.get_row_iter(None)
            .unwrap()
            .map(|r| r.unwrap().to_string())
            .collect()
    }

    fn summary_msg(node: &str, seq: u64, workloads: usize) -> Vec<u8> {
        encoded(
            node,
            seq,
            Body::Summary(Summary {
                start_ms: 0,
                period_ms: 10_000,
                intervals: 10,
                node: NodeSummary {
                    cpus: 2,
                    ..Default::default()
                },
                workloads: (0..workloads)
                    .map(|i| WorkloadSummary {
                        workload: format!("exe:{i}"),
                        name: format!("w{i}"),
                        read_bytes: seq * 10 + i as u64,
                        pressure_max: (i == 0).then_some([1.0, 2.0, 3.0]),
                        forecast: (i == 0).then_some(crate::publish::WorkloadForecast {
                            cpu_cores: [0.5, 1.0, 1.5],
                            rss_bytes: [1e6, 2e6, 3e6],
                        }),
                        ..Default::default()
                    })
                    .collect(),
                other: None,
                predictor: "onnx:1".into(),
                forecast_step_ms: 5000,
                requests: (0..workloads.min(2))
                    .map(|i| crate::publish::RequestSummary {
                        key: "exe:sha256:ab".into(),
                        name: "xz".into(),
                        pid: 100 + i as u32,
                        exec_ms: 1000 * seq,
                        source: "profile".into(),
                        runs: 3,
                        cpu_seconds: [1.0, 2.0, 3.0],
                        used: (i == 1).then_some(crate::publish::RequestUse {
                            cpu_seconds: if seq == 2 { 9.0 } else { 2.5 },
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                requests_omitted: 0,
            }),
        )
    }

    #[test]
    fn a_drift_is_kept_for_retraining_and_other_anomalies_are_not() {
        let d = tempfile::tempdir().unwrap();
        let mut hub = Hub::new(d.path(), "test").unwrap();
        let msg = |seq: u64, kind: &str| {
            encoded(
                "n1",
                seq,
                Body::Anomaly(crate::publish::message::AnomalyReport {
                    workload: "exe:sha256:ab".into(),
                    name: "nginx \u{fffd}".into(),
                    kind: kind.into(),
                    target: "cpu".into(),
                    since_ms: 7,
                    timestamp_ms: 9,
                    text: "drifted".into(),
                    ..Default::default()
                }),
            )
        };
        let t = "umbra/v1/f/n1/anomaly";
        assert!(hub.ingest(t, &msg(1, "outside-band")));
        assert!(hub.ingest(t, &msg(2, "drift")));
        assert!(!hub.ingest(t, &msg(2, "drift")), "a duplicate");
        let text = fs::read_to_string(d.path().join(RETRAIN_FILE)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["workload"], "exe:sha256:ab");
        assert_eq!(lines[0]["node"], "n1");
        assert_eq!(lines[0]["since_ms"], 7);
        assert_eq!(hub.nodes["n1"].drifts, 1);
    }

    #[test]
    fn summaries_become_parquet_rows_once_each() {
        let d = tempfile::tempdir().unwrap();
        let mut hub = Hub::new(d.path(), "test").unwrap();
        let t = "umbra/v1/f/n1/summary";
        assert!(hub.ingest(t, &summary_msg("n1", 1, 3)));
        assert!(hub.ingest(t, &summary_msg("n1", 3, 3)));
        assert!(!hub.ingest(t, &summary_msg("n1", 1, 3)), "a duplicate");
        assert!(hub.ingest(t, &summary_msg("n1", 2, 3)), "late, not lost");
        assert!(!hub.ingest(t, b"junk"));
        let seen = &hub.nodes["n1"];
        assert_eq!(
            (
                seen.summaries,
                seen.duplicates,
                seen.missing,
                seen.out_of_order
            ),
            (3, 1, 0, 1)
        );
        // Of their requests, one a summary ended: two within their CPU band.
        assert_eq!((seen.requests_ended, seen.requests_within_cpu), (3, 2));
        assert!(hub.table().contains("67% of 3"), "{}", hub.table());
        let path = hub.flush().unwrap().unwrap();
        assert!(hub.flush().unwrap().is_none());
        let r = SerializedFileReader::new(fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(r.metadata().file_metadata().num_rows(), 9);
        let rows: Vec<_> = r.get_row_iter(None).unwrap().map(|r| r.unwrap()).collect();
        let first = rows[0].to_string();
        assert!(
            first.contains("node: \"n1\"")
                && first.contains("psi_io_max: 3.0")
                && first.contains("forecast_cpu_p50: 1.0")
                && first.contains("forecast_rss_p90: 3000000.0"),
            "{first}"
        );
        assert!(rows[1].to_string().contains("psi_io_max: null"));
        assert!(rows[1].to_string().contains("forecast_cpu_p10: null"));
        // Their requests: a table of their own, beside.
        let name = path.file_name().unwrap().to_str().unwrap();
        let requests = path.with_file_name(name.replace("summaries-", "requests-"));
        let rows = table_rows(&requests);
        assert_eq!(rows.len(), 6, "{rows:#?}");
        assert!(
            rows[0].contains("seq: 1")
                && rows[0].contains("pid: 100")
                && rows[0].contains("cpu_seconds_p90: 3.0")
                && rows[0].contains("used_cpu_seconds: null"),
            "{}",
            rows[0]
        );
        assert!(rows[1].contains("used_cpu_seconds: 2.5"), "{}", rows[1]);
    }

    /// The latest profile of each node's executable, whatever order they came in, as
    /// one row each of `profiles.parquet`, written when they changed.
    #[test]
    fn each_nodes_latest_profiles_become_a_parquet_table() {
        let d = tempfile::tempdir().unwrap();
        let mut hub = Hub::new(d.path(), "test").unwrap();
        let msg = |node: &str, seq: u64, cpu: f32| {
            encoded(
                node,
                seq,
                Body::Profiles(crate::publish::Profiles {
                    profiles: vec![ProfileRow {
                        key: "exe:sha256:aa".into(),
                        name: "xz".into(),
                        parent: "make".into(),
                        runs: 3,
                        total_runs: seq,
                        cpu_seconds: [cpu, cpu * 2.0, cpu * 3.0],
                        ..Default::default()
                    }],
                    more: 0,
                }),
            )
        };
        assert!(hub.ingest("umbra/v1/f/n1/profiles", &msg("n1", 2, 1.0)));
        assert!(
            hub.ingest("umbra/v1/f/n1/profiles", &msg("n1", 1, 9.0)),
            "late"
        );
        assert!(hub.ingest("umbra/v1/f/n2/profiles", &msg("n2", 1, 4.0)));
        assert_eq!(hub.nodes["n1"].profiles, 2);
        assert!(hub.flush().unwrap().is_none(), "no summaries");
        let path = d.path().join(PROFILES_FILE);
        let rows = table_rows(&path);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            rows[0].contains("node: \"n1\"")
                && rows[0].contains("cpu_seconds_p50: 2.0")
                && rows[0].contains("parent: \"make\"")
                && rows[0].contains("total_runs: 2"),
            "the newer of n1's: {}",
            rows[0]
        );
        assert!(rows[1].contains("node: \"n2\"") && rows[1].contains("cpu_seconds_p90: 12.0"));
        // Unchanged since: not written again.
        fs::remove_file(&path).unwrap();
        hub.flush().unwrap();
        assert!(!path.exists());
    }

    fn status_msg(node: &str, instance: u64, online: bool) -> Vec<u8> {
        Envelope {
            schema: ENV_SCHEMA,
            node: node.into(),
            seq: 0,
            time_ms: 5,
            historical: false,
            body: Body::Status(crate::publish::Status {
                online,
                instance,
                hostname: "edge".into(),
                ..Default::default()
            }),
        }
        .encode(Payload::Postcard)
    }

    #[test]
    fn two_devices_on_one_node_id_are_reported_and_a_restart_is_not() {
        let d = tempfile::tempdir().unwrap();
        let mut hub = Hub::new(d.path(), "test").unwrap();
        let st = "umbra/v1/f/n1/status";
        // A restart: goodbye, then a new instance.
        hub.ingest(st, &status_msg("n1", 1, true));
        hub.ingest(st, &status_msg("n1", 1, false));
        hub.ingest(st, &status_msg("n1", 2, true));
        assert!(!hub.nodes["n1"].duplicate_id);
        assert_eq!(hub.nodes["n1"].hostname, "edge");
        // Two agents alternating, neither saying goodbye.
        hub.ingest(st, &status_msg("n1", 3, true));
        hub.ingest(st, &status_msg("n1", 2, true));
        assert!(hub.nodes["n1"].duplicate_id, "{:?}", hub.nodes["n1"]);
        assert!(hub.table().contains("TWO DEVICES ON ONE NODE ID"));
        // Another seq clash: same seq, different content.
        let t = "umbra/v1/f/n2/summary";
        assert!(hub.ingest(t, &summary_msg("n2", 1, 3)));
        assert!(!hub.ingest(t, &summary_msg("n2", 1, 3)));
        assert!(!hub.nodes["n2"].duplicate_id, "a redelivery is not a clash");
        assert!(!hub.ingest(t, &summary_msg("n2", 1, 2)));
        let n2 = &hub.nodes["n2"];
        assert!(
            n2.duplicate_id && n2.conflicts == 1 && n2.duplicates == 1,
            "{n2:?}"
        );
    }
}
