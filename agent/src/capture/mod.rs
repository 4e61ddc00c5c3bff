//! Capture: the kernel programs and everything that touches aya.
//!
//! [`KernelCapture`] loads and attaches the programs, probing each attach point, and turns
//! the kernel's maps and ring buffer into plain values ([`ProcessSample`], [`Lifecycle`],
//! [`DropCounts`]) that later stages consume without aya. The [`Source`] trait is what the
//! pipeline reads: the kernel here, a recording in replay.

pub mod bpf;
mod btf;
pub mod egress;
mod identity;
pub mod interp;
mod iter;
mod kernel;
pub mod procfs;
mod sampler;
mod syscalls;
mod tracefs;
mod types;

use std::{future::Future, path::PathBuf};

pub use agent_common::Drop as DropKind;
pub use identity::{Identity, ProcView, cgroup2_root, input_files};
pub use kernel::{
    AttachReport, CounterPath, Counters, Hook, HookStatus, KernelCapture, ProgramStats,
    UNHELD_NAME, enable_program_stats,
};
pub use procfs::NodeStats;
pub use types::*;

/// Where captured data comes from: the live kernel or a recording.
pub trait Source: Send {
    /// The next item: a lifecycle event as it happens, or a tick's samples.
    fn next(&mut self) -> impl Future<Output = Result<Option<CaptureItem>, CaptureError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "tracefs is not mounted (looked in /sys/kernel/tracing and /sys/kernel/debug/tracing); \
         mount it with `mount -t tracefs tracefs /sys/kernel/tracing` or run `cargo xtask install`"
    )]
    NoTracefs,
    #[error("kernel BTF at {path}: {what}")]
    Btf { path: PathBuf, what: String },
    #[error(
        "required tracepoint {category}/{name} is missing on this kernel; Umbra needs Linux ≥ 5.8 \
         with it enabled (CONFIG_TRACEPOINTS)"
    )]
    MissingTracepoint { category: String, name: String },
    #[error("cannot load the kernel programs: {source}; Umbra needs root (CAP_BPF, CAP_PERFMON)")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("cannot attach {hook}: {source}")]
    Attach {
        hook: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("kernel map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("kernel map {name} is missing from the object")]
    MissingMap { name: &'static str },
    #[error(
        "capture.counters = \"iterator\", but the task iterator cannot run here: {why}; \
         use \"auto\" (the per-event hooks count where it cannot) or \"hooks\""
    )]
    NoIterator { why: String },
    #[error("{what}: {source}")]
    Iter {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
