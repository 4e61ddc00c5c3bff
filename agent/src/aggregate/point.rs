//! Shadow data points and node totals.

use serde::{Deserialize, Serialize};

/// A workload's identity, stable across restarts and across nodes:
/// `cgroup:<path relative to the cgroup root>`, `exe:<sha256 of the executable, hex>`, or
/// for a program run by an interpreter `script:sha256:<hex>` / `module:<interpreter>:<name>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkloadId(pub String);

/// What the workload was asked to do in the interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProductionInput {
    /// Processes started (execs) in the workload.
    pub execs: u64,
    /// TCP connections accepted.
    pub conn_accepted: u64,
    /// TCP connections opened (connect).
    pub conn_opened: u64,
    /// Bytes received from the network.
    pub net_rx_bytes: u64,
    /// Syscalls made.
    pub syscalls: u64,
}

/// Pressure stall information of a cgroup (`*.pressure`, `some avg10`), percent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pressure {
    pub cpu_some_avg10: f32,
    pub memory_some_avg10: f32,
    pub io_some_avg10: f32,
}

/// What the workload used in the interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceProfile {
    pub cpu_ns: u64,
    /// `cpu_ns / interval`: cores used on average.
    pub cpu_cores: f64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub runq_p50_ns: Option<u64>,
    pub runq_p99_ns: Option<u64>,
    /// Resident memory at the end of the interval (sum over the workload's processes).
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub block_p99_ns: Option<u64>,
    pub net_tx_bytes: u64,
    pub net_rx_bytes: u64,
    pub retransmits: u64,
    /// PSI of the workload's cgroup, where the kernel has it.
    pub pressure: Option<Pressure>,
}

/// One workload, one interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowPoint {
    /// End of the interval, ms since the Unix epoch.
    pub timestamp_ms: u64,
    pub interval_ms: u32,
    pub workload: WorkloadId,
    /// A human name for the workload (comm of its main executable, or the cgroup's name).
    pub name: String,
    /// Processes of the workload alive at some point in the interval.
    pub processes: u32,
    pub input: ProductionInput,
    pub profile: ResourceProfile,
}

/// The whole node, one interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodePoint {
    pub timestamp_ms: u64,
    pub interval_ms: u32,
    pub cpus: u32,
    /// Busy CPU time over all CPUs (`/proc/stat`: everything but idle and iowait).
    pub cpu_busy_ns: u64,
    pub mem_total_bytes: u64,
    pub mem_available_bytes: u64,
    /// Sums over all processes of the interval.
    pub totals: ResourceProfile,
    pub input: ProductionInput,
}
