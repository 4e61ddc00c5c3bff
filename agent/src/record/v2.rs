//! Recording format 2, as it was written (postcard is not self-describing, so the old
//! layout is kept here, frozen) and its conversion to today's items. Format 3 added exec
//! arguments and input files to exec events, the interpreted program (`app`) to samples,
//! and made the drop table extensible.

use std::sync::Arc;

use serde::Deserialize;

use crate::capture::{
    self, CaptureItem, CgroupPressure, DropCounts, Histogram, Lifecycle, LifecycleKind, NodeStats,
};

#[derive(Deserialize)]
pub enum Item {
    Event(Event),
    Tick(Box<Tick>),
}

#[derive(Deserialize)]
pub enum Kind {
    Exec { filename: String },
    Fork,
    Exit { code: Option<i32> },
}

#[derive(Deserialize)]
pub struct Event {
    kind: Kind,
    pid: u32,
    tgid: u32,
    ppid: Option<u32>,
    timestamp_ns: u64,
    cgroup_id: u64,
    comm: String,
}

#[derive(Deserialize)]
pub struct Tick {
    timestamp_ns: u64,
    wall_ms: u64,
    samples: Vec<Sample>,
    drops: Drops,
    node: Node,
    pressure: Vec<Pressure>,
}

/// Format 2's drop table: 16 programs × 8 kinds.
#[derive(Deserialize)]
pub struct Drops([[u64; 8]; 16]);

#[derive(Deserialize)]
pub struct Node {
    cpus: u32,
    cpu_busy_ns: u64,
    mem_total_bytes: u64,
    mem_available_bytes: u64,
}

#[derive(Deserialize)]
pub struct Pressure {
    cgroup: String,
    cpu: Option<f32>,
    memory: Option<f32>,
    io: Option<f32>,
}

#[derive(Deserialize)]
pub struct Sample {
    tgid: u32,
    start_ns: u64,
    ppid: Option<u32>,
    cgroup_id: u64,
    comm: String,
    exe: Option<String>,
    exe_hash: Option<String>,
    cgroup: Option<String>,
    counters: Counters,
    memory: Memory,
    exit: Option<Exit>,
}

#[derive(Deserialize)]
pub struct Counters {
    cpu_ns: u64,
    voluntary_switches: u64,
    involuntary_switches: u64,
    runq_wait_ns: u64,
    runq_waits: u64,
    page_faults: u64,
    syscalls: u64,
    read_bytes: u64,
    write_bytes: u64,
    read_calls: u64,
    write_calls: u64,
    block_read_bytes: u64,
    block_write_bytes: u64,
    block_ios: u64,
    net_tx_bytes: u64,
    net_rx_bytes: u64,
    net_tx_calls: u64,
    net_rx_calls: u64,
    conn_opened: u64,
    conn_accepted: u64,
    conn_closed: u64,
    retransmits: u64,
    execs: u64,
    runq_hist: Histogram,
    block_hist: Histogram,
}

#[derive(Deserialize)]
pub struct Memory {
    file: u64,
    anon: u64,
    shmem: u64,
    swap: u64,
}

#[derive(Deserialize)]
pub struct Exit {
    code: Option<i32>,
    timestamp_ns: u64,
}

impl From<Item> for CaptureItem {
    fn from(i: Item) -> Self {
        match i {
            Item::Event(e) => CaptureItem::Event(Lifecycle {
                kind: match e.kind {
                    Kind::Exec { filename } => LifecycleKind::exec(filename),
                    Kind::Fork => LifecycleKind::Fork,
                    Kind::Exit { code } => LifecycleKind::Exit { code },
                },
                pid: e.pid,
                tgid: e.tgid,
                ppid: e.ppid,
                timestamp_ns: e.timestamp_ns,
                cgroup_id: e.cgroup_id,
                comm: e.comm,
            }),
            Item::Tick(t) => CaptureItem::Tick(Box::new((*t).into())),
        }
    }
}

impl From<Tick> for capture::Tick {
    fn from(t: Tick) -> Self {
        capture::Tick {
            timestamp_ns: t.timestamp_ns,
            wall_ms: t.wall_ms,
            samples: t.samples.into_iter().map(|s| Arc::new(s.into())).collect(),
            drops: DropCounts::from_rows(t.drops.0.iter().map(|r| &r[..])),
            node: NodeStats {
                cpus: t.node.cpus,
                cpu_busy_ns: t.node.cpu_busy_ns,
                mem_total_bytes: t.node.mem_total_bytes,
                mem_available_bytes: t.node.mem_available_bytes,
            },
            pressure: t
                .pressure
                .into_iter()
                .map(|p| CgroupPressure {
                    cgroup: p.cgroup,
                    cpu: p.cpu,
                    memory: p.memory,
                    io: p.io,
                })
                .collect(),
        }
    }
}

impl From<Sample> for capture::ProcessSample {
    fn from(s: Sample) -> Self {
        let c = s.counters;
        capture::ProcessSample {
            tgid: s.tgid,
            start_ns: s.start_ns,
            ppid: s.ppid,
            cgroup_id: s.cgroup_id,
            comm: s.comm.into(),
            exe: s.exe.map(Into::into),
            exe_hash: s.exe_hash.map(Into::into),
            cgroup: s.cgroup.map(Into::into),
            app: None,
            counters: Arc::new(capture::ProcCounters {
                cpu_ns: c.cpu_ns,
                voluntary_switches: c.voluntary_switches,
                involuntary_switches: c.involuntary_switches,
                runq_wait_ns: c.runq_wait_ns,
                runq_waits: c.runq_waits,
                page_faults: c.page_faults,
                syscalls: c.syscalls,
                read_bytes: c.read_bytes,
                write_bytes: c.write_bytes,
                read_calls: c.read_calls,
                write_calls: c.write_calls,
                block_read_bytes: c.block_read_bytes,
                block_write_bytes: c.block_write_bytes,
                block_ios: c.block_ios,
                net_tx_bytes: c.net_tx_bytes,
                net_rx_bytes: c.net_rx_bytes,
                net_tx_calls: c.net_tx_calls,
                net_rx_calls: c.net_rx_calls,
                conn_opened: c.conn_opened,
                conn_accepted: c.conn_accepted,
                conn_closed: c.conn_closed,
                retransmits: c.retransmits,
                execs: c.execs,
                runq_hist: c.runq_hist,
                block_hist: c.block_hist,
            }),
            memory: capture::Memory {
                file: s.memory.file,
                anon: s.memory.anon,
                shmem: s.memory.shmem,
                swap: s.memory.swap,
            },
            exit: s.exit.map(|e| capture::Exit {
                code: e.code,
                timestamp_ns: e.timestamp_ns,
            }),
        }
    }
}
