//! Umbra's agent: **capture → aggregate → predict → allocate → publish**, with
//! record/replay beside it.
//!
//! - [`capture`]: the kernel programs (the only module that touches aya) and plain
//!   per-process samples and lifecycle events.
//! - [`trace`]: the live stream for kernel engineers (`umbra trace`).
//! - [`publish`]: summaries, status and command replies to the fleet over MQTT, through
//!   an on-disk spool; commands and signed models from it.
//! - [`fleet`]: the other end, for operators (`umbra sub`) and the hub (`umbra hub`,
//!   cargo feature `fleet`).
//! - [`insight`]: what the agent concluded (forecast bands, tiers, decisions, anomalies)
//!   in the shape the tools show it; [`perfetto`]: `umbra trace --perfetto`; [`top`]:
//!   `umbra top`.
//! - [`pipeline`]: wires the stages; the only place that knows all of them.
//! - [`simulate`]: recordings through allocation strategies (`umbra simulate`), with the
//!   agent's own predictors and `decide`.

/// Hash maps of the hot paths (capture, aggregate, the forecast tick): keys are pids and workload
/// keys made by the kernel and this agent; foldhash (seeded per run) is several times
/// faster than SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The `over` keys of least age among `entries` (a bounded store's first to go).
pub(crate) fn oldest<K: Clone + Ord, A: Ord>(
    entries: impl Iterator<Item = (A, K)>,
    over: usize,
) -> Vec<K> {
    if over == 0 {
        return Vec::new();
    }
    let mut by_age: Vec<(A, K)> = entries.collect();
    by_age.sort_unstable();
    by_age.truncate(over);
    by_age.into_iter().map(|(_, k)| k).collect()
}

pub mod aggregate;
pub mod allocate;
pub mod anomaly;
pub mod capture;
pub mod config;
pub mod eval;
pub mod export;
pub mod fleet;
pub mod insight;
pub mod metrics;
pub mod perfetto;
pub mod pipeline;
pub mod predict;
pub mod publish;
pub mod record;
#[cfg(feature = "report")]
pub mod report;
pub mod simulate;
pub mod top;
pub mod trace;
pub mod view;
