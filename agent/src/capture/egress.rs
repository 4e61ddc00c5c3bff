//! The egress limiter's kernel side (`agent-ebpf/src/probes/egress.rs`, its own object
//! `umbra-egress`): loaded, attached to a cgroup2 directory and its buckets written here,
//! behind allocate's plain [`Egress`] trait. The attachment is a BPF link: it goes with
//! the agent (a `kill -9` included), leaving nothing attached.

use std::{
    collections::HashMap as StdHashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use agent_common::EgressBucket;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SockOps, cgroup_skb::CgroupSkbLinkId,
        sock_ops::SockOpsLinkId,
    },
};

use crate::allocate::egress::{Egress, EgressCounters, EgressError};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/umbra-egress"));

pub struct EgressLimiter {
    ebpf: Ebpf,
    link: Option<CgroupSkbLinkId>,
    /// TCP pacing of the connections a limited workload opens.
    pacing: Option<SockOpsLinkId>,
    /// Buckets set, by directory: their cgroup ids.
    ids: StdHashMap<PathBuf, u64>,
}

fn err(what: impl Into<String>, e: impl std::fmt::Display) -> EgressError {
    EgressError {
        what: what.into(),
        message: e.to_string(),
    }
}

/// An error and its sources, one line; of a verifier log only the lines that say why
/// (the full log is at `debug`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    if !s.contains('\n') {
        return s;
    }
    tracing::debug!(log = %s, "Verifier output");
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let why: Vec<&str> = lines
        .iter()
        .skip(1)
        .map(|l| l.trim_start_matches([':', ' ']))
        .filter(|l| {
            [
                "unknown func",
                "not allowed",
                "invalid",
                "denied",
                "unsupported",
            ]
            .iter()
            .any(|k| l.to_ascii_lowercase().contains(k))
        })
        .collect();
    let why = if why.is_empty() {
        lines.iter().skip(1).rev().take(2).rev().copied().collect()
    } else {
        why
    };
    let first = lines.first().copied().unwrap_or_default();
    let first = first.split("Verifier output").next().unwrap_or(first);
    format!(
        "{} … {}",
        first.trim_end_matches([' ', '.', ':']),
        why.join("; ")
    )
}

/// The cgroup id of a cgroup2 directory: its inode number.
fn cgroup_id(dir: &Path) -> Result<u64, EgressError> {
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|e| err(format!("{}", dir.display()), e))
}

impl EgressLimiter {
    /// Loads both programs (not yet attached). Without TCP pacing — a kernel whose
    /// `sock_ops` programs may not read the connecting process's cgroup (Debian's 5.10
    /// refuses it) — there is no limiter: the policer alone drops TCP segments that then
    /// wait for a retransmission timeout, and a 4 MB/s limit yields well under 1 MB/s.
    pub fn load() -> Result<EgressLimiter, EgressError> {
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(|e| {
            err(
                "program",
                format!("cannot load it: {e}; needs root (CAP_BPF, CAP_NET_ADMIN) and Linux ≥ 5.7"),
            )
        })?;
        let prog: &mut CgroupSkb = ebpf
            .program_mut("egress")
            .ok_or_else(|| err("program", "egress is missing from the object"))?
            .try_into()
            .map_err(|e| err("program", e))?;
        prog.load()
            .map_err(|e| err("program", format!("the verifier refused it: {}", chain(&e))))?;
        let pacing: &mut SockOps = ebpf
            .program_mut("pacing")
            .ok_or_else(|| err("TCP pacing", "pacing is missing from the object"))?
            .try_into()
            .map_err(|e| err("TCP pacing", e))?;
        pacing.load().map_err(|e| {
            err(
                "TCP pacing",
                format!(
                    "the kernel refuses the sock_ops program ({}); without pacing a policer \
                     starves TCP far below the limit, so egress is not limited on this kernel",
                    chain(&e)
                ),
            )
        })?;
        Ok(EgressLimiter {
            ebpf,
            link: None,
            pacing: None,
            ids: StdHashMap::new(),
        })
    }

    /// Connections seen by the pacing program: opened, of a limited workload, paced,
    /// refused.
    pub fn pacing_counts(&self) -> [u64; 4] {
        let mut out = [0; 4];
        if let Some(m) = self.ebpf.map("PACING_STATS")
            && let Ok(a) = Array::<&MapData, u64>::try_from(m)
        {
            for (i, o) in out.iter_mut().enumerate() {
                *o = a.get(&(i as u32), 0).unwrap_or(0);
            }
        }
        out
    }

    fn buckets(&mut self) -> Result<HashMap<&mut MapData, u64, EgressBucket>, EgressError> {
        let m = self
            .ebpf
            .map_mut("EGRESS")
            .ok_or_else(|| err("map EGRESS", "missing from the object"))?;
        HashMap::try_from(m).map_err(|e| err("map EGRESS", e))
    }
}

impl Egress for EgressLimiter {
    fn attach(&mut self, root: &Path, level: u32) -> Result<(), EgressError> {
        {
            let m = self
                .ebpf
                .map_mut("EGRESS_LEVEL")
                .ok_or_else(|| err("map EGRESS_LEVEL", "missing from the object"))?;
            let mut a: Array<&mut MapData, u32> =
                Array::try_from(m).map_err(|e| err("map EGRESS_LEVEL", e))?;
            a.set(0, level, 0).map_err(|e| err("map EGRESS_LEVEL", e))?;
        }
        if self.link.is_some() {
            return Ok(());
        }
        let dir = std::fs::File::open(root).map_err(|e| err(format!("{}", root.display()), e))?;
        let prog: &mut CgroupSkb = self
            .ebpf
            .program_mut("egress")
            .ok_or_else(|| err("program", "egress is missing"))?
            .try_into()
            .map_err(|e| err("program", e))?;
        // Through a BPF link (Linux ≥ 5.7), which always lets the cgroup's other programs
        // run too; `bpf_link_create` takes no mode flags (BPF_F_ALLOW_MULTI is EINVAL).
        let link = prog
            .attach(dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .map_err(|e| err(format!("attach to {}", root.display()), chain(&e)))?;
        self.link = Some(link);
        let paced = std::fs::File::open(root)
            .map_err(|e| err(format!("{}", root.display()), e))
            .and_then(|dir| {
                let p: &mut SockOps = self
                    .ebpf
                    .program_mut("pacing")
                    .ok_or_else(|| err("TCP pacing", "pacing is missing"))?
                    .try_into()
                    .map_err(|e| err("TCP pacing", e))?;
                p.attach(dir, CgroupAttachMode::Single).map_err(|e| {
                    err(
                        format!("attach TCP pacing to {}", root.display()),
                        chain(&e),
                    )
                })
            });
        match paced {
            Ok(l) => {
                self.pacing = Some(l);
                Ok(())
            }
            Err(e) => {
                // No limit rather than a policer alone (see `load`).
                self.detach();
                Err(e)
            }
        }
    }

    fn set(&mut self, dir: &Path, rate: u64, burst: u64) -> Result<(), EgressError> {
        let id = cgroup_id(dir)?;
        let mut m = self.buckets()?;
        let b = match m.get(&id, 0) {
            // The same bucket, new rate: tokens and counters go on.
            Ok(mut b) => {
                b.rate = rate;
                b.burst = burst;
                b.tokens = b.tokens.min(burst as i64);
                b
            }
            Err(_) => EgressBucket {
                rate,
                burst,
                tokens: burst as i64,
                last_ns: crate::capture::procfs::boot_ns(),
                ..Default::default()
            },
        };
        m.insert(id, b, 0)
            .map_err(|e| err(format!("bucket of {}", dir.display()), e))?;
        self.ids.insert(dir.to_path_buf(), id);
        Ok(())
    }

    fn clear(&mut self, dir: &Path) -> Result<(), EgressError> {
        let Some(id) = self.ids.remove(dir) else {
            return Ok(());
        };
        let mut m = self.buckets()?;
        let _ = m.remove(&id);
        Ok(())
    }

    fn counters(&self, dir: &Path) -> Option<EgressCounters> {
        let id = *self.ids.get(dir)?;
        let m: HashMap<&MapData, u64, EgressBucket> =
            HashMap::try_from(self.ebpf.map("EGRESS")?).ok()?;
        let b = m.get(&id, 0).ok()?;
        Some(EgressCounters {
            passed_bytes: b.passed_bytes,
            dropped_bytes: b.dropped_bytes,
            dropped_packets: b.dropped_packets,
        })
    }

    fn detach(&mut self) {
        let dirs: Vec<PathBuf> = self.ids.keys().cloned().collect();
        for d in dirs {
            let _ = self.clear(&d);
        }
        if let Some(link) = self.link.take()
            && let Some(p) = self.ebpf.program_mut("egress")
            && let Ok(p) = <&mut CgroupSkb>::try_from(p)
        {
            let _ = p.detach(link);
        }
        if let Some(link) = self.pacing.take()
            && let Some(p) = self.ebpf.program_mut("pacing")
            && let Ok(p) = <&mut SockOps>::try_from(p)
        {
            let _ = p.detach(link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct E(String);

    #[test]
    fn a_verifier_log_is_reduced_to_why() {
        let log = "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). \
                   Verifier output: ; #[sock_ops]\n0: (bf) r6 = r1\n; x\n\
                   unknown func bpf_get_current_cgroup_id#80\n: Invalid argument (os error 22)";
        assert_eq!(
            chain(&E(log.into())),
            "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22) … unknown \
             func bpf_get_current_cgroup_id#80; Invalid argument (os error 22)"
        );
        assert_eq!(chain(&E("one line".into())), "one line");
    }
}
