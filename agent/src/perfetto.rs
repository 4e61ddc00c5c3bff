//! `umbra trace --perfetto OUT.pftrace`: what capture saw and what the agent concluded,
//! as a native Perfetto trace (TrackEvent protobuf, not the legacy JSON), for
//! ui.perfetto.dev and the trace processor.
//!
//! - a process track per process (`pid`, name, executable), with counter tracks: on-CPU
//!   %, RSS, read, write and block bytes/s, network tx/rx bytes/s, run-queue wait %; its
//!   exec and exit as instants;
//! - a track per workload under `Umbra`, with its CPU and RSS, the forecast band and the
//!   reservation as counters (when the agent has them), and its decisions, anomalies and
//!   drift as instants;
//! - kernel drops as a counter on `Umbra`.
//!
//! Timestamps are the kernel's boot clock (Perfetto's default trace clock, BOOTTIME); a
//! clock snapshot at the first tick maps them to wall time. Packets are written as they
//! come (a trace is a sequence of `packet` fields), so memory stays flat however long
//! the trace. The messages below are the subset of Perfetto's published protos that
//! Umbra writes, field numbers as in `protos/perfetto/trace/` (v51); the tests decode the
//! output with the published protos.

use std::{
    collections::HashMap,
    io::{self, BufWriter, Write},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::{
    aggregate::{Window, WorkloadId},
    capture::{CaptureItem, Lifecycle, LifecycleKind, ProcCounters, ProcessSample, Tick},
    config::Config,
    insight::{Insights, Note},
    pipeline::{self, Output, PipelineError},
    predict::Target,
    record::Header,
    view::Frame,
};

/// `umbra trace --perfetto OUT`: the agent on `from` (the kernel or a recording) into a
/// Perfetto trace at `out`, until the source ends, `duration` passes or `shutdown`.
pub async fn write(
    cfg: &Config,
    from: pipeline::From<'_>,
    out: &Path,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> Result<PerfettoStats, PipelineError> {
    let file = std::fs::File::create(out)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", out.display())))?;
    let stats = Arc::new(Mutex::new(PerfettoStats::default()));
    let make = |h: &Header| {
        Ok(Shared {
            trace: Perfetto::new(BufWriter::new(file), h)?,
            stats: stats.clone(),
        })
    };
    pipeline::look(cfg, from, make, duration, shutdown).await?;
    let s = *stats.lock().unwrap_or_else(|e| e.into_inner());
    Ok(s)
}

/// A trace as the agent's output, its stats handed back at the end.
struct Shared<W: Write> {
    trace: Perfetto<W>,
    stats: Arc<Mutex<PerfettoStats>>,
}

impl<W: Write + Send> Output for Shared<W> {
    fn window(&mut self, f: &Frame<'_>) -> io::Result<()> {
        self.trace.window(f.window)
    }

    fn item(&mut self, item: &CaptureItem) -> io::Result<()> {
        self.trace.item(item)
    }

    fn insights(&mut self, i: &Insights) -> io::Result<()> {
        self.trace.insights(i)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.trace.out.flush()?;
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = self.trace.stats;
        Ok(())
    }
}

/// The subset of Perfetto's trace protos Umbra writes.
pub mod pb {
    /// `protos/perfetto/trace/trace_packet.proto`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TracePacket {
        #[prost(uint64, optional, tag = "8")]
        pub timestamp: Option<u64>,
        #[prost(uint32, optional, tag = "10")]
        pub trusted_packet_sequence_id: Option<u32>,
        #[prost(uint32, optional, tag = "13")]
        pub sequence_flags: Option<u32>,
        #[prost(bool, optional, tag = "87")]
        pub first_packet_on_sequence: Option<bool>,
        #[prost(oneof = "Data", tags = "6, 11, 60")]
        pub data: Option<Data>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Data {
        #[prost(message, tag = "6")]
        ClockSnapshot(ClockSnapshot),
        #[prost(message, tag = "11")]
        TrackEvent(TrackEvent),
        #[prost(message, tag = "60")]
        TrackDescriptor(TrackDescriptor),
    }

    /// `TracePacket.sequence_flags`
    pub const SEQ_INCREMENTAL_STATE_CLEARED: u32 = 1;

    /// `protos/perfetto/trace/clock_snapshot.proto`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ClockSnapshot {
        #[prost(message, repeated, tag = "1")]
        pub clocks: Vec<Clock>,
        #[prost(int32, optional, tag = "2")]
        pub primary_trace_clock: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Clock {
        #[prost(uint32, optional, tag = "1")]
        pub clock_id: Option<u32>,
        #[prost(uint64, optional, tag = "2")]
        pub timestamp: Option<u64>,
    }

    /// `BuiltinClock`
    pub const CLOCK_REALTIME: u32 = 1;
    pub const CLOCK_BOOTTIME: u32 = 6;

    /// `protos/perfetto/trace/track_event/track_descriptor.proto`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrackDescriptor {
        #[prost(uint64, optional, tag = "1")]
        pub uuid: Option<u64>,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
        #[prost(message, optional, tag = "3")]
        pub process: Option<ProcessDescriptor>,
        #[prost(uint64, optional, tag = "5")]
        pub parent_uuid: Option<u64>,
        #[prost(message, optional, tag = "8")]
        pub counter: Option<CounterDescriptor>,
    }

    /// `protos/perfetto/trace/track_event/process_descriptor.proto`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProcessDescriptor {
        #[prost(int32, optional, tag = "1")]
        pub pid: Option<i32>,
        #[prost(string, repeated, tag = "2")]
        pub cmdline: Vec<String>,
        #[prost(string, optional, tag = "6")]
        pub process_name: Option<String>,
        #[prost(int64, optional, tag = "7")]
        pub start_timestamp_ns: Option<i64>,
    }

    /// `protos/perfetto/trace/track_event/counter_descriptor.proto`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CounterDescriptor {
        #[prost(string, repeated, tag = "2")]
        pub categories: Vec<String>,
        #[prost(int32, optional, tag = "3")]
        pub unit: Option<i32>,
        #[prost(string, optional, tag = "6")]
        pub unit_name: Option<String>,
    }

    /// `CounterDescriptor.Unit`
    pub const UNIT_COUNT: i32 = 2;
    pub const UNIT_SIZE_BYTES: i32 = 3;

    /// `protos/perfetto/trace/track_event/track_event.proto`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrackEvent {
        #[prost(message, repeated, tag = "4")]
        pub debug_annotations: Vec<DebugAnnotation>,
        #[prost(int32, optional, tag = "9")]
        pub r#type: Option<i32>,
        #[prost(uint64, optional, tag = "11")]
        pub track_uuid: Option<u64>,
        #[prost(string, repeated, tag = "22")]
        pub categories: Vec<String>,
        #[prost(string, optional, tag = "23")]
        pub name: Option<String>,
        #[prost(int64, optional, tag = "30")]
        pub counter_value: Option<i64>,
        #[prost(double, optional, tag = "44")]
        pub double_counter_value: Option<f64>,
    }

    /// `TrackEvent.Type`
    pub const TYPE_INSTANT: i32 = 3;
    pub const TYPE_COUNTER: i32 = 4;

    /// `protos/perfetto/trace/track_event/debug_annotation.proto`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DebugAnnotation {
        #[prost(int64, optional, tag = "4")]
        pub int_value: Option<i64>,
        #[prost(double, optional, tag = "5")]
        pub double_value: Option<f64>,
        #[prost(string, optional, tag = "6")]
        pub string_value: Option<String>,
        #[prost(string, optional, tag = "10")]
        pub name: Option<String>,
    }
}

/// The writer's one packet sequence.
const SEQUENCE: u32 = 1;
/// `Trace.packet`, field 1, length-delimited.
const PACKET_TAG: u8 = 0x0a;

/// A counter of a process track: its name, and how a value is computed from one
/// interval's deltas (`interval_ns` long) and the sample.
struct ProcCounter {
    name: &'static str,
    unit: Unit,
    value: fn(&ProcCounters, &ProcessSample, f64) -> f64,
}

#[derive(Clone, Copy)]
enum Unit {
    Bytes,
    PerSecond,
    Percent,
}

/// Bytes per second from a byte delta over `secs`.
fn per_s(b: u64, secs: f64) -> f64 {
    b as f64 / secs
}

const PROC_COUNTERS: [ProcCounter; 8] = [
    ProcCounter {
        name: "on-CPU %",
        unit: Unit::Percent,
        value: |d, _, s| d.cpu_ns as f64 / (s * 1e9) * 100.0,
    },
    ProcCounter {
        name: "RSS",
        unit: Unit::Bytes,
        value: |_, p, _| p.memory.rss() as f64,
    },
    ProcCounter {
        name: "read B/s",
        unit: Unit::PerSecond,
        value: |d, _, s| per_s(d.read_bytes, s),
    },
    ProcCounter {
        name: "write B/s",
        unit: Unit::PerSecond,
        value: |d, _, s| per_s(d.write_bytes, s),
    },
    ProcCounter {
        name: "block B/s",
        unit: Unit::PerSecond,
        value: |d, _, s| per_s(d.block_read_bytes + d.block_write_bytes, s),
    },
    ProcCounter {
        name: "net tx B/s",
        unit: Unit::PerSecond,
        value: |d, _, s| per_s(d.net_tx_bytes, s),
    },
    ProcCounter {
        name: "net rx B/s",
        unit: Unit::PerSecond,
        value: |d, _, s| per_s(d.net_rx_bytes, s),
    },
    ProcCounter {
        name: "run-queue wait %",
        unit: Unit::Percent,
        value: |d, _, s| d.runq_wait_ns as f64 / (s * 1e9) * 100.0,
    },
];

/// Counters of a workload track (the band and the reservation only when the agent has
/// them).
const WORKLOAD_COUNTERS: [(&str, Unit); 9] = [
    ("cpu cores", Unit::PerSecond),
    ("RSS", Unit::Bytes),
    ("forecast cpu p10", Unit::PerSecond),
    ("forecast cpu p50", Unit::PerSecond),
    ("forecast cpu p90", Unit::PerSecond),
    ("forecast RSS p90", Unit::Bytes),
    ("reserved cpu cores", Unit::PerSecond),
    ("reserved memory", Unit::Bytes),
    ("anomalies", Unit::PerSecond),
];

/// What a trace holds, for the summary line and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerfettoStats {
    pub packets: u64,
    pub processes: u64,
    pub workloads: u64,
    pub counter_values: u64,
    pub instants: u64,
    pub bytes: u64,
}

struct Proc {
    uuid: u64,
    /// `(start_ns)` of the process the track is for, once a sample said.
    start_ns: Option<u64>,
    counters: Option<[u64; PROC_COUNTERS.len()]>,
    last: [Option<f64>; PROC_COUNTERS.len()],
    prev: Option<Arc<ProcCounters>>,
    name: String,
}

struct Workload {
    counters: [u64; WORKLOAD_COUNTERS.len()],
    last: [Option<f64>; WORKLOAD_COUNTERS.len()],
    uuid: u64,
}

/// Writes a Perfetto trace as capture items, windows and insights arrive.
pub struct Perfetto<W: Write> {
    out: W,
    next_uuid: u64,
    root: u64,
    drops_track: u64,
    last_drops: Option<u64>,
    procs: HashMap<u32, Proc>,
    workloads: HashMap<WorkloadId, Workload>,
    names: HashMap<WorkloadId, String>,
    /// The newest tick: (boot ns, wall ms), to place wall-clock instants on the boot clock.
    clock: Option<(u64, u64)>,
    last_tick_ns: Option<u64>,
    /// Wall clock of the first tick, and the newest window's interval.
    first_wall_ms: Option<u64>,
    interval_ms: u64,
    stats: PerfettoStats,
}

impl<W: Write> Perfetto<W> {
    /// Starts a trace on `out`: the `Umbra` track, named after the recording's node.
    pub fn new(out: W, header: &Header) -> io::Result<Self> {
        let mut p = Perfetto {
            out,
            next_uuid: 1,
            root: 0,
            drops_track: 0,
            last_drops: None,
            procs: HashMap::new(),
            workloads: HashMap::new(),
            names: HashMap::new(),
            clock: None,
            last_tick_ns: None,
            first_wall_ms: None,
            interval_ms: header.interval_ms as u64,
            stats: PerfettoStats::default(),
        };
        p.root = p.uuid();
        let name = if header.node.is_empty() {
            "Umbra".to_string()
        } else {
            format!("Umbra on {}", header.node)
        };
        p.packet(
            None,
            pb::Data::TrackDescriptor(pb::TrackDescriptor {
                uuid: Some(p.root),
                name: Some(name),
                ..Default::default()
            }),
        )?;
        p.drops_track = p.counter_track(p.root, "kernel drops", Unit::PerSecond)?;
        Ok(p)
    }

    pub fn stats(&self) -> PerfettoStats {
        self.stats
    }

    /// Flushes and hands back the writer.
    pub fn finish(mut self) -> io::Result<(W, PerfettoStats)> {
        self.out.flush()?;
        Ok((self.out, self.stats))
    }

    fn uuid(&mut self) -> u64 {
        let u = self.next_uuid;
        self.next_uuid += 1;
        u
    }

    fn packet(&mut self, timestamp: Option<u64>, data: pb::Data) -> io::Result<()> {
        let first = self.stats.packets == 0;
        let p = pb::TracePacket {
            timestamp,
            trusted_packet_sequence_id: Some(SEQUENCE),
            sequence_flags: first.then_some(pb::SEQ_INCREMENTAL_STATE_CLEARED),
            first_packet_on_sequence: first.then_some(true),
            data: Some(data),
        };
        let mut buf = Vec::with_capacity(p.encoded_len() + 11);
        buf.push(PACKET_TAG);
        p.encode_length_delimited(&mut buf)
            .map_err(io::Error::other)?;
        self.out.write_all(&buf)?;
        self.stats.packets += 1;
        self.stats.bytes += buf.len() as u64;
        Ok(())
    }

    fn counter_track(&mut self, parent: u64, name: &str, unit: Unit) -> io::Result<u64> {
        let uuid = self.uuid();
        let (unit, unit_name) = match unit {
            Unit::Bytes => (Some(pb::UNIT_SIZE_BYTES), None),
            Unit::PerSecond => (Some(pb::UNIT_COUNT), None),
            Unit::Percent => (None, Some("%".to_string())),
        };
        self.packet(
            None,
            pb::Data::TrackDescriptor(pb::TrackDescriptor {
                uuid: Some(uuid),
                name: Some(name.to_string()),
                parent_uuid: Some(parent),
                counter: Some(pb::CounterDescriptor {
                    categories: vec!["umbra".into()],
                    unit,
                    unit_name,
                }),
                ..Default::default()
            }),
        )?;
        Ok(uuid)
    }

    fn counter(&mut self, ts: u64, track: u64, v: f64, bytes: bool) -> io::Result<()> {
        self.stats.counter_values += 1;
        let (counter_value, double_counter_value) = if bytes {
            (Some(v as i64), None)
        } else {
            (None, Some(v))
        };
        self.packet(
            Some(ts),
            pb::Data::TrackEvent(pb::TrackEvent {
                r#type: Some(pb::TYPE_COUNTER),
                track_uuid: Some(track),
                counter_value,
                double_counter_value,
                ..Default::default()
            }),
        )
    }

    fn instant(
        &mut self,
        ts: u64,
        track: u64,
        category: &str,
        name: String,
        args: Vec<(&str, Arg)>,
    ) -> io::Result<()> {
        self.stats.instants += 1;
        let debug_annotations = args
            .into_iter()
            .map(|(k, v)| {
                let mut a = pb::DebugAnnotation {
                    name: Some(k.to_string()),
                    ..Default::default()
                };
                match v {
                    Arg::Str(s) => a.string_value = Some(s),
                    Arg::Int(i) => a.int_value = Some(i),
                }
                a
            })
            .collect();
        self.packet(
            Some(ts),
            pb::Data::TrackEvent(pb::TrackEvent {
                r#type: Some(pb::TYPE_INSTANT),
                track_uuid: Some(track),
                categories: vec![category.to_string()],
                name: Some(name),
                debug_annotations,
                ..Default::default()
            }),
        )
    }

    /// The process track of `tgid`, made (or renamed) as needed.
    fn process(
        &mut self,
        tgid: u32,
        start_ns: Option<u64>,
        name: &str,
        exe: Option<&str>,
    ) -> io::Result<u64> {
        // A reused pid is a new process: a new track.
        let stale = match (self.procs.get(&tgid), start_ns) {
            (Some(p), Some(s)) => p.start_ns.is_some_and(|known| known != s),
            _ => false,
        };
        if stale {
            self.procs.remove(&tgid);
        }
        let renamed = match self.procs.get_mut(&tgid) {
            Some(p) => {
                if p.start_ns.is_none() {
                    p.start_ns = start_ns;
                }
                (p.name != name).then(|| {
                    p.name = name.to_string();
                    p.uuid
                })
            }
            None => None,
        };
        let uuid = match renamed {
            Some(u) => u,
            None => match self.procs.get(&tgid) {
                Some(p) => return Ok(p.uuid),
                None => {
                    let uuid = self.uuid();
                    self.stats.processes += 1;
                    self.procs.insert(
                        tgid,
                        Proc {
                            uuid,
                            start_ns,
                            counters: None,
                            last: [None; PROC_COUNTERS.len()],
                            prev: None,
                            name: name.to_string(),
                        },
                    );
                    uuid
                }
            },
        };
        self.packet(
            None,
            pb::Data::TrackDescriptor(pb::TrackDescriptor {
                uuid: Some(uuid),
                process: Some(pb::ProcessDescriptor {
                    pid: Some(tgid as i32),
                    cmdline: exe.map(|e| vec![e.to_string()]).unwrap_or_default(),
                    process_name: Some(name.to_string()),
                    start_timestamp_ns: start_ns.map(|s| s as i64),
                }),
                ..Default::default()
            }),
        )?;
        Ok(uuid)
    }

    fn event(&mut self, ev: &Lifecycle) -> io::Result<()> {
        match &ev.kind {
            LifecycleKind::Exec { filename, argv, .. } => {
                let base = filename.rsplit('/').next().unwrap_or(filename);
                let track = self.process(ev.tgid, None, &ev.comm, Some(filename))?;
                let mut args = vec![("filename", Arg::Str(filename.clone()))];
                if !argv.raw().is_empty() {
                    args.push(("argv", Arg::Str(argv.lossy().join(" "))));
                }
                if let Some(pp) = ev.ppid {
                    args.push(("ppid", Arg::Int(pp as i64)));
                }
                self.instant(ev.timestamp_ns, track, "exec", format!("exec {base}"), args)
            }
            // A new process (not a thread): its track, so its exec lands on it.
            LifecycleKind::Fork if ev.tgid == ev.pid && ev.tgid != 0 => {
                self.process(ev.tgid, None, &ev.comm, None).map(|_| ())
            }
            // Exits come with the process's final sample (one per process, with its code).
            LifecycleKind::Fork | LifecycleKind::Exit { .. } => Ok(()),
        }
    }

    fn tick(&mut self, t: &Tick) -> io::Result<()> {
        if self.clock.is_none() {
            self.packet(
                Some(t.timestamp_ns),
                pb::Data::ClockSnapshot(pb::ClockSnapshot {
                    clocks: vec![
                        pb::Clock {
                            clock_id: Some(pb::CLOCK_BOOTTIME),
                            timestamp: Some(t.timestamp_ns),
                        },
                        pb::Clock {
                            clock_id: Some(pb::CLOCK_REALTIME),
                            timestamp: Some(t.wall_ms.saturating_mul(1_000_000)),
                        },
                    ],
                    primary_trace_clock: Some(pb::CLOCK_BOOTTIME as i32),
                }),
            )?;
        }
        self.clock = Some((t.timestamp_ns, t.wall_ms));
        self.first_wall_ms.get_or_insert(t.wall_ms);
        let interval_ns = self
            .last_tick_ns
            .map(|l| t.timestamp_ns.saturating_sub(l))
            .filter(|&d| d > 0);
        self.last_tick_ns = Some(t.timestamp_ns);
        for s in &t.samples {
            self.sample(t.timestamp_ns, interval_ns, s)?;
        }
        let lost = t.drops.lost();
        if self.last_drops != Some(lost) {
            self.last_drops = Some(lost);
            let track = self.drops_track;
            self.counter(t.timestamp_ns, track, lost as f64, false)?;
        }
        Ok(())
    }

    fn sample(&mut self, ts: u64, interval_ns: Option<u64>, s: &ProcessSample) -> io::Result<()> {
        let uuid = self.process(s.tgid, Some(s.start_ns), &s.comm, s.exe.as_deref())?;
        let counters = match self.procs.get(&s.tgid).and_then(|p| p.counters) {
            Some(c) => c,
            None => {
                let mut c = [0u64; PROC_COUNTERS.len()];
                for (i, pc) in PROC_COUNTERS.iter().enumerate() {
                    c[i] = self.counter_track(uuid, pc.name, pc.unit)?;
                }
                if let Some(p) = self.procs.get_mut(&s.tgid) {
                    p.counters = Some(c);
                }
                c
            }
        };
        let Some(p) = self.procs.get_mut(&s.tgid) else {
            return Ok(());
        };
        // A value is the rate over the interval that ends at this tick, stamped at the
        // interval's start, so the counter shows it where it happened and holds it until
        // the next one. The first tick only sets where counting starts (as the agent's
        // first window is kept out of its figures); a process that appears later counts
        // everything since it began, within this interval.
        let prev = p.prev.replace(s.counters.clone());
        if let Some(interval_ns) = interval_ns {
            self.values(s, prev, ts, interval_ns, counters)?;
        }
        if let Some(exit) = s.exit {
            let (name, code) = match exit.code {
                Some(c) if c & 0x7f == 0 => (format!("exit {}", (c >> 8) & 0xff), c),
                Some(c) => (format!("killed by signal {}", c & 0x7f), c),
                None => ("exit".to_string(), -1),
            };
            let ts = if exit.timestamp_ns > 0 {
                exit.timestamp_ns
            } else {
                ts
            };
            self.instant(
                ts,
                uuid,
                "exit",
                name,
                vec![("wait_status", Arg::Int(code as i64))],
            )?;
            self.procs.remove(&s.tgid);
        }
        Ok(())
    }

    /// The counters of one process for the interval `[ts - interval_ns, ts]`.
    fn values(
        &mut self,
        s: &ProcessSample,
        prev: Option<Arc<ProcCounters>>,
        ts: u64,
        interval_ns: u64,
        counters: [u64; PROC_COUNTERS.len()],
    ) -> io::Result<()> {
        let Some(p) = self.procs.get_mut(&s.tgid) else {
            return Ok(());
        };
        let d = match &prev {
            Some(prev) => s.counters.since(prev),
            None => ProcCounters::clone(&s.counters),
        };
        let start = ts.saturating_sub(interval_ns);
        let secs = interval_ns as f64 / 1e9;
        let mut changed = Vec::new();
        for (i, pc) in PROC_COUNTERS.iter().enumerate() {
            let v = (pc.value)(&d, s, secs);
            if p.last[i] != Some(v) {
                p.last[i] = Some(v);
                changed.push((counters[i], v, matches!(pc.unit, Unit::Bytes)));
            }
        }
        let ended: Vec<(u64, bool)> = if s.exit.is_some() {
            PROC_COUNTERS
                .iter()
                .enumerate()
                .filter(|(i, _)| p.last[*i].is_some_and(|v| v != 0.0))
                .map(|(i, pc)| (counters[i], matches!(pc.unit, Unit::Bytes)))
                .collect()
        } else {
            Vec::new()
        };
        for (track, v, bytes) in changed {
            self.counter(start, track, v, bytes)?;
        }
        // Gone: every counter back to zero at the end of its last interval.
        for (track, bytes) in ended {
            self.counter(ts, track, 0.0, bytes)?;
        }
        Ok(())
    }

    /// Boot-clock ns of a wall-clock instant (ms since the epoch).
    fn boot_ns(&self, wall_ms: u64) -> Option<u64> {
        let (ns, ms) = self.clock?;
        let delta = (wall_ms as i128 - ms as i128) * 1_000_000;
        u64::try_from(ns as i128 + delta).ok()
    }

    fn workload(&mut self, id: &WorkloadId, name: &str) -> io::Result<[u64; 9]> {
        if let Some(w) = self.workloads.get(id) {
            return Ok(w.counters);
        }
        let uuid = self.uuid();
        self.stats.workloads += 1;
        self.packet(
            None,
            pb::Data::TrackDescriptor(pb::TrackDescriptor {
                uuid: Some(uuid),
                name: Some(format!("workload {name}")),
                parent_uuid: Some(self.root),
                ..Default::default()
            }),
        )?;
        let mut counters = [0u64; WORKLOAD_COUNTERS.len()];
        for (i, (n, unit)) in WORKLOAD_COUNTERS.iter().enumerate() {
            counters[i] = self.counter_track(uuid, n, *unit)?;
        }
        self.workloads.insert(
            id.clone(),
            Workload {
                counters,
                last: [None; WORKLOAD_COUNTERS.len()],
                uuid,
            },
        );
        Ok(counters)
    }

    fn workload_values(
        &mut self,
        ts: u64,
        id: &WorkloadId,
        name: &str,
        values: &[(usize, f64)],
    ) -> io::Result<()> {
        let counters = self.workload(id, name)?;
        let Some(w) = self.workloads.get_mut(id) else {
            return Ok(());
        };
        let mut changed = Vec::new();
        for &(i, v) in values {
            if w.last[i] != Some(v) {
                w.last[i] = Some(v);
                changed.push((
                    counters[i],
                    v,
                    matches!(WORKLOAD_COUNTERS[i].1, Unit::Bytes),
                ));
            }
        }
        for (track, v, bytes) in changed {
            self.counter(ts, track, v, bytes)?;
        }
        Ok(())
    }

    pub fn window(&mut self, w: &Window) -> io::Result<()> {
        // Stamped at the interval's start, as process counters are; the first window
        // (everything since each process began) is left out, as the agent leaves it out.
        self.interval_ms = w.node.interval_ms as u64;
        if self.first_wall_ms.is_none_or(|f| w.node.timestamp_ms <= f) {
            return Ok(());
        }
        let Some(ts) = self.boot_ns(w.node.timestamp_ms.saturating_sub(self.interval_ms)) else {
            return Ok(());
        };
        for p in &w.points {
            self.names.insert(p.workload.clone(), p.name.clone());
            self.workload_values(
                ts,
                &p.workload,
                &p.name,
                &[(0, p.profile.cpu_cores), (1, p.profile.rss_bytes as f64)],
            )?;
        }
        Ok(())
    }

    pub fn insights(&mut self, i: &Insights) -> io::Result<()> {
        let Some(ts) = self.boot_ns(i.timestamp_ms.saturating_sub(self.interval_ms)) else {
            return Ok(());
        };
        for (id, wi) in &i.workloads {
            let name = self.names.get(id).cloned().unwrap_or_else(|| id.0.clone());
            let mut values = Vec::new();
            if let Some(b) = &wi.forecast {
                let cpu = b[Target::Cpu as usize];
                values.extend([(2, cpu.p10), (3, cpu.p50), (4, cpu.p90)]);
                values.push((5, b[Target::Memory as usize].p90));
            }
            if let Some(r) = &wi.reservation {
                if let Some(c) = r.cpu_cores {
                    values.push((6, c));
                }
                if let Some(m) = r.memory_bytes {
                    values.push((7, m));
                }
            }
            if !values.is_empty() {
                self.workload_values(ts, id, &name, &values)?;
            }
        }
        let mut anomalies: HashMap<&WorkloadId, f64> = HashMap::new();
        for n in &i.notes {
            if n.kind == crate::insight::NoteKind::Anomaly
                && let Some(w) = &n.workload
            {
                *anomalies.entry(w).or_default() += 1.0;
            }
            self.note(n)?;
        }
        // Anomalies per interval, back to zero after.
        let mut zero = Vec::new();
        for (id, w) in &self.workloads {
            if w.last[8].is_some_and(|v| v > 0.0) && !anomalies.contains_key(id) {
                zero.push(id.clone());
            }
        }
        for id in zero {
            let name = self.names.get(&id).cloned().unwrap_or_else(|| id.0.clone());
            self.workload_values(ts, &id, &name, &[(8, 0.0)])?;
        }
        for (id, n) in anomalies {
            let name = self.names.get(id).cloned().unwrap_or_else(|| id.0.clone());
            self.workload_values(ts, id, &name, &[(8, n)])?;
        }
        Ok(())
    }

    fn note(&mut self, n: &Note) -> io::Result<()> {
        let Some(ts) = self.boot_ns(n.timestamp_ms) else {
            return Ok(());
        };
        let track = match &n.workload {
            Some(id) => {
                self.workload(id, &n.name)?;
                self.workloads.get(id).map_or(self.root, |w| w.uuid)
            }
            None => self.root,
        };
        let mut args = vec![("text", Arg::Str(n.text.clone()))];
        if let Some(w) = &n.workload {
            args.push(("workload", Arg::Str(w.0.clone())));
        }
        self.instant(
            ts,
            track,
            n.kind.name(),
            format!("{}: {}", n.kind.name(), n.name),
            args,
        )
    }

    pub fn item(&mut self, item: &CaptureItem) -> io::Result<()> {
        match item {
            CaptureItem::Event(ev) => self.event(ev),
            CaptureItem::Tick(t) => self.tick(t),
        }
    }
}

enum Arg {
    Str(String),
    Int(i64),
}
