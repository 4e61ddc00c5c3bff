//! Egress bandwidth: the predicted network rate of a managed workload enforced on what it
//! sends. The kernel side (a `cgroup_skb` egress program with a token bucket per
//! workload) is loaded by capture, the only module that touches aya; allocate sees it
//! through [`Egress`], and a fake stands in for it in unit tests.
//!
//! The program is attached once, to the owned subtree's cgroup2 directory (on hybrid
//! hosts the cgroup2 mount mirrors the v1 groups, so it works there too); each managed
//! workload's group gets a bucket, which every process below it shares.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
#[error("egress limit {what}: {message}")]
pub struct EgressError {
    pub what: String,
    pub message: String,
}

/// What a bucket has seen since it was set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressCounters {
    pub passed_bytes: u64,
    pub dropped_bytes: u64,
    pub dropped_packets: u64,
}

/// The egress limiter.
pub trait Egress: Send {
    /// Starts limiting below `root` (a cgroup2 directory); buckets belong to groups
    /// `level` levels below the cgroup2 mount.
    fn attach(&mut self, root: &Path, level: u32) -> Result<(), EgressError>;
    /// Sets the bucket of the group at `dir`: `rate` bytes per second, `burst` bytes.
    fn set(&mut self, dir: &Path, rate: u64, burst: u64) -> Result<(), EgressError>;
    /// Removes the group's bucket: its traffic passes freely.
    fn clear(&mut self, dir: &Path) -> Result<(), EgressError>;
    fn counters(&self, dir: &Path) -> Option<EgressCounters>;
    /// Detaches the program and removes every bucket.
    fn detach(&mut self);
}

/// The highest rate a bucket takes (the program's arithmetic stays inside u64 below it).
pub const MAX_RATE: u64 = 10_000_000_000;

/// A bucket's rate and burst for a predicted rate: at least `min`, at most [`MAX_RATE`];
/// the burst `burst_ms` of the rate, at least 64 KiB (a TSO segment), at most a second.
pub fn bucket(rate: f64, min: u64, burst_ms: u64) -> (u64, u64) {
    let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
    let rate = (rate as u64).clamp(min.max(1), MAX_RATE);
    let burst = (rate.saturating_mul(burst_ms) / 1000).clamp(64 << 10, rate.max(64 << 10));
    (rate, burst)
}

/// A fake limiter: remembers what it was told.
#[derive(Debug, Default)]
pub struct FakeEgress {
    pub attached: Option<(PathBuf, u32)>,
    pub buckets: BTreeMap<PathBuf, (u64, u64)>,
}

impl Egress for FakeEgress {
    fn attach(&mut self, root: &Path, level: u32) -> Result<(), EgressError> {
        self.attached = Some((root.to_path_buf(), level));
        Ok(())
    }

    fn set(&mut self, dir: &Path, rate: u64, burst: u64) -> Result<(), EgressError> {
        self.buckets.insert(dir.to_path_buf(), (rate, burst));
        Ok(())
    }

    fn clear(&mut self, dir: &Path) -> Result<(), EgressError> {
        self.buckets.remove(dir);
        Ok(())
    }

    fn counters(&self, dir: &Path) -> Option<EgressCounters> {
        self.buckets.get(dir).map(|_| EgressCounters::default())
    }

    fn detach(&mut self) {
        self.attached = None;
        self.buckets.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_bounded() {
        assert_eq!(bucket(4e6, 65536, 20), (4_000_000, 80_000));
        // A tiny rate gets the minimum and a burst of at least one segment.
        assert_eq!(bucket(10.0, 65536, 20), (65536, 65536));
        assert_eq!(bucket(f64::NAN, 1000, 20), (1000, 65536));
        let (r, b) = bucket(1e12, 0, 5000);
        assert_eq!(r, MAX_RATE);
        assert_eq!(b, MAX_RATE);
    }
}
