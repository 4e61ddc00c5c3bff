//! Per-request predictions from the profile store: a new exec of an executable with past
//! runs is predicted to need what those runs needed (p10/p50/p90 of their outcomes). The
//! request model, when it ships, answers the same question through the same call.

use std::path::Path;

use super::{
    Band, RequestPrediction,
    profiles::{Loaded, ProfileError, ProfileStore},
};
use crate::{aggregate::WorkloadId, capture::Identity};

/// Profiles kept by the agent's store.
const MAX_KEYS: usize = 4096;

pub struct ProfilePredictor {
    store: ProfileStore,
    identity: Identity,
}

impl ProfilePredictor {
    /// The store in `dir` (`<publish.state_dir>/profiles`).
    pub fn open(dir: &Path) -> Result<(ProfilePredictor, Loaded), ProfileError> {
        let (store, loaded) = ProfileStore::open(dir, MAX_KEYS)?;
        Ok((ProfilePredictor::new(store), loaded))
    }

    pub fn new(store: ProfileStore) -> ProfilePredictor {
        ProfilePredictor {
            store,
            identity: Identity::new(),
        }
    }

    /// What the exec of `exe` by `tgid` will need, if its executable has past runs. The
    /// key is the executable's fingerprint (cached per file: one read of at most 2 MiB the
    /// first time a binary is seen).
    pub fn predict(&mut self, tgid: u32, exe: &str, exec_ns: u64) -> Option<RequestPrediction> {
        let hash = self.identity.exe_hash(tgid, Some(exe))?;
        let key = format!("exe:{hash}");
        let p = self.store.get(&key)?;
        if p.runs.is_empty() {
            return None;
        }
        let b = p.bands();
        let band = |i: usize| Band {
            p10: b[i][0],
            p50: b[i][1],
            p90: b[i][2],
        };
        Some(RequestPrediction {
            tgid,
            exec_ns,
            workload: WorkloadId(key),
            cpu_seconds: band(0),
            peak_rss_bytes: band(1),
            duration_seconds: band(2),
            io_bytes: band(3),
            source: format!("profile of {} runs", p.runs.len()),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::predict::profiles::{Outcome, Run};

    #[test]
    fn an_executable_with_past_runs_is_predicted_from_them() {
        let me = std::env::current_exe().unwrap();
        let exe = me.to_str().unwrap();
        let mut id = Identity::new();
        let key = format!("exe:{}", id.exe_hash(u32::MAX, Some(exe)).unwrap());
        let mut store = ProfileStore::in_memory(16);
        for i in 0..10 {
            let o = Outcome {
                cpu_seconds: 1.0 + i as f64,
                peak_rss_bytes: 1e8,
                duration_seconds: 2.0,
                io_bytes: 0.0,
            };
            store.record(&key, "me", "sh", Run::new(&o, 0, 1)).unwrap();
        }
        let mut p = ProfilePredictor::new(store);
        let r = p.predict(std::process::id(), exe, 5).unwrap();
        assert_eq!(r.workload.0, key);
        assert!(
            (r.cpu_seconds.p50 - 5.5).abs() < 1e-6,
            "{:?}",
            r.cpu_seconds
        );
        assert!(r.cpu_seconds.p10 < r.cpu_seconds.p90);
        assert_eq!(r.peak_rss_bytes.p90, 1e8);
        // Another executable has no past.
        assert!(p.predict(u32::MAX, "/bin/sh", 5).is_none());
    }
}
