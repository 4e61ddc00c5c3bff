//! What the stage has learnt that outlives a workload's processes and the agent itself:
//! each workload's tier record, kept when its group is retired (its processes gone) and
//! given back when its executable runs again, and each executable's held-back verdicts
//! ([`HeldBack`]).
//!
//! A job that runs every few minutes, or a service restarted, keeps the tier and the
//! margins its forecasts earned rather than starting again at the shadow tier. A record
//! whose forecasts' history the agent no longer holds — kept from the last run, or
//! retired more than [`PROBATION_AFTER_MS`] ago — comes back on probation
//! ([`Record::on_probation`]); one retired more than [`FORGET_AFTER_MS`] ago is
//! forgotten.
//!
//! On disk, `<state_dir>/allocate/earned.bin`: [`Format`]'s frame (`UMBRAERN`, version 1)
//! around a postcard [`Saved`], written (temporary file, sync, rename) on the way out and
//! at most once a minute while held-back verdicts come.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{
    cgroups::Group,
    request::HeldBack,
    tiers::{Record, TierRules},
};
use crate::predict::framed::{Format, Unframed, write_whole};

const FORMAT: Format = Format {
    magic: b"UMBRAERN",
    version: 1,
};

/// Retired records kept; past it the longest retired go first.
pub const MAX_RETIRED: usize = 1024;
/// A record retired longer than this comes back on probation: the forecast stage has
/// forgotten the workload's history by then (an hour of it at most).
pub const PROBATION_AFTER_MS: u64 = 3_600_000;
/// A record retired longer than this is forgotten.
pub const FORGET_AFTER_MS: u64 = 7 * 24 * 3_600_000;
/// Evaluations a record read from disk may hold.
const MAX_EVALS: usize = 100_000;
/// The least time between two writes while verdicts come.
const SAVE_EVERY_MS: u64 = 60_000;

/// The file's payload.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// Wall clock when written, ms since the Unix epoch.
    pub saved_ms: u64,
    /// Each workload's group, when its record was retired (ms; the write's time for a
    /// workload still running then), and the record.
    pub workloads: Vec<(String, u64, Record)>,
    /// Each executable's held-back verdicts, oldest first.
    pub held_back: Vec<(String, Vec<bool>)>,
}

/// Why the file was not read.
#[derive(Debug, thiserror::Error)]
pub enum EarnedError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged ({what}); it is kept aside as {path}.corrupt, and the tiers start over"
    )]
    Corrupt { path: PathBuf, what: String },
    #[error(
        "{path} is format version {found}, newer than this build reads ({}): it is left as it is and not written; run a newer umbra, or move it away",
        FORMAT.version
    )]
    Newer { path: PathBuf, found: u16 },
}

/// A record given back.
pub struct Kept {
    pub record: Record,
    /// Since its workload's processes ended.
    pub age_ms: u64,
    /// Kept from the agent's last run.
    pub last_run: bool,
    /// Its full tier to be earned again ([`Record::on_probation`]).
    pub probation: bool,
}

impl Kept {
    /// Why its workload starts at its tier, for the decision.
    pub fn reason(&self) -> String {
        let since = if self.last_run {
            "the agent's last run"
        } else {
            "its processes' last run"
        };
        let again = if self.probation {
            "; the full tier to be earned again"
        } else {
            ""
        };
        format!(
            "its record kept from {since}, {} s ago{again}",
            self.age_ms / 1000
        )
    }
}

struct Retired {
    record: Record,
    at_ms: u64,
    /// Kept from the last run: the forecasts that earned it are gone.
    last_run: bool,
}

/// The retired records and the held-back verdicts, and where they are kept.
#[derive(Default)]
pub struct Earned {
    retired: BTreeMap<Group, Retired>,
    pub held_back: HeldBack,
    dir: Option<PathBuf>,
    unsaved: bool,
    saved_ms: u64,
}

/// The file under `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("earned.bin")
}

/// Decodes the file's bytes; `path` names it in errors.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Saved, EarnedError> {
    let corrupt = |what: String| EarnedError::Corrupt {
        path: path.into(),
        what,
    };
    let payload = match FORMAT.unframe(bytes) {
        Ok((_, p)) => p,
        Err(Unframed::Newer(found)) => {
            return Err(EarnedError::Newer {
                path: path.into(),
                found,
            });
        }
        Err(Unframed::Corrupt(what)) => return Err(corrupt(what)),
    };
    let s: Saved = postcard::from_bytes(payload).map_err(|e| corrupt(format!("payload: {e}")))?;
    if let Some((g, _, _)) = s.workloads.iter().find(|(_, _, r)| !r.is_sound(MAX_EVALS)) {
        return Err(corrupt(format!("the record of {g} is out of range")));
    }
    if let Some((g, _, _)) = s.workloads.iter().find(|(g, _, _)| Group::new(g).is_none()) {
        return Err(corrupt(format!("{g:?} is not a group")));
    }
    Ok(s)
}

pub fn encode(s: &Saved) -> Vec<u8> {
    FORMAT.frame(&postcard::to_stdvec(s).unwrap_or_default())
}

impl Earned {
    /// What is kept under `dir` (nothing yet: empty), and why what was there was not
    /// read, if it was not. A damaged file is moved aside; a newer one is left, and this
    /// run keeps what it learns in memory only.
    pub fn open(dir: &Path) -> (Earned, Option<EarnedError>) {
        let mut e = Earned {
            dir: Some(dir.to_path_buf()),
            ..Earned::default()
        };
        let p = path(dir);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return (e, None),
            Err(source) => return (e, Some(EarnedError::Io { path: p, source })),
        };
        match decode(&p, &bytes) {
            Ok(s) => {
                e.held_back = HeldBack::from_entries(s.held_back);
                for (g, at_ms, record) in s.workloads {
                    if let Some(g) = Group::new(&g) {
                        let r = Retired {
                            record,
                            at_ms,
                            last_run: true,
                        };
                        e.retired.insert(g, r);
                    }
                }
                e.bound();
                (e, None)
            }
            Err(err) => {
                match &err {
                    EarnedError::Corrupt { .. } => {
                        if let Err(m) = fs::rename(&p, p.with_extension("bin.corrupt")) {
                            warn!(path = %p.display(), error = %m, "Damaged file not moved aside");
                        }
                    }
                    _ => e.dir = None,
                }
                (e, Some(err))
            }
        }
    }

    /// Keeps `g`'s record, its processes gone at `now_ms`.
    pub fn retire(&mut self, g: &Group, record: Record, now_ms: u64) {
        let r = Retired {
            record,
            at_ms: now_ms,
            last_run: false,
        };
        self.retired.insert(g.clone(), r);
        self.bound();
        self.unsaved = true;
    }

    /// `g`'s record, if one was kept and is not too old (on probation if it must be).
    pub fn take(&mut self, g: &Group, now_ms: u64, tiers: &TierRules) -> Option<Kept> {
        let r = self.retired.remove(g)?;
        let age_ms = now_ms.saturating_sub(r.at_ms);
        if age_ms > FORGET_AFTER_MS {
            return None;
        }
        let mut record = r.record;
        let before = record.tier;
        if r.last_run || age_ms > PROBATION_AFTER_MS {
            record.on_probation(tiers);
        }
        let probation = record.tier < before;
        self.unsaved = true;
        Some(Kept {
            record,
            age_ms,
            last_run: r.last_run,
            probation,
        })
    }

    /// A held-back verdict came: written within a minute.
    pub fn verdict(&mut self, key: &str, back: bool) {
        self.held_back.push(key, back);
        self.unsaved = true;
    }

    /// Whether there is something to write, and the last write is a minute old.
    pub fn due(&self, now_ms: u64) -> bool {
        self.unsaved && now_ms.saturating_sub(self.saved_ms) >= SAVE_EVERY_MS
    }

    /// Writes the running workloads' records (`running`) beside the retired ones and the
    /// verdicts, at `now_ms`; nothing where this run keeps them in memory only.
    pub fn save<'a>(
        &mut self,
        running: impl Iterator<Item = (&'a Group, &'a Record)>,
        now_ms: u64,
    ) -> Result<(), EarnedError> {
        self.unsaved = false;
        self.saved_ms = now_ms;
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let mut workloads: Vec<(String, u64, Record)> = running
            .map(|(g, r)| (g.as_str().to_string(), now_ms, r.clone()))
            .collect();
        // A group is running or retired, never both ([`Earned::take`]).
        let retired = self.retired.iter();
        workloads.extend(retired.map(|(g, r)| (g.as_str().to_string(), r.at_ms, r.record.clone())));
        let s = Saved {
            saved_ms: now_ms,
            workloads,
            held_back: self.held_back.entries(),
        };
        write_whole(&path(dir), &encode(&s))
            .map_err(|(path, source)| EarnedError::Io { path, source })
    }

    /// At most [`MAX_RETIRED`], the longest retired going first.
    fn bound(&mut self) {
        let over = self.retired.len().saturating_sub(MAX_RETIRED);
        let ages = self.retired.iter().map(|(g, r)| (r.at_ms, g.clone()));
        for g in crate::oldest(ages, over) {
            self.retired.remove(&g);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{
        allocate::tiers::{Basis, Margins, Outcome, Tier},
        predict::Band,
    };

    /// A record its good forecasts brought to the full tier.
    fn full() -> Record {
        let r = TierRules::default();
        let mut rec = Record::new(&r, 0.15);
        let b = Band {
            p10: 0.9,
            p50: 1.0,
            p90: 1.1,
        };
        let basis = Basis {
            cpu: b,
            memory: Band {
                p10: 9e7,
                p50: 1e8,
                p90: 1.1e8,
            },
            cpu_base: 1.1,
            memory_base: 1.1e8,
        };
        let o = Outcome {
            cpu_cores: 1.0,
            memory_bytes: 1e8,
            seconds: 1.0,
            ..Outcome::default()
        };
        let m = Margins {
            start: 0.15,
            min_cpu: 0.0,
            max: 1.0,
        };
        for _ in 0..30 {
            rec.observe(&r, m, basis, &o, Tier::Full);
        }
        assert_eq!(rec.tier, Tier::Full);
        rec
    }

    fn group(n: usize) -> Group {
        Group::new(&format!("umbra.slice/w-{n}")).unwrap()
    }

    #[test]
    fn what_was_earned_is_kept_across_a_restart_and_given_back_on_probation() {
        let d = tempfile::tempdir().unwrap();
        let (mut e, problem) = Earned::open(d.path());
        assert!(problem.is_none());
        e.retire(&group(1), full(), 1_000);
        e.verdict("exe:a", true);
        assert!(e.due(61_000) && !e.due(SAVE_EVERY_MS - 1));
        let running = full();
        let g2 = group(2);
        e.save([(&g2, &running)].into_iter(), 61_000).unwrap();
        assert!(!e.due(200_000), "nothing new since");
        // Within the run: given back as it was.
        let k = e.take(&group(1), 2_000, &TierRules::default()).unwrap();
        assert_eq!(
            (k.record.tier, k.probation, k.age_ms),
            (Tier::Full, false, 1_000)
        );
        // The next run: both kept, on probation; the verdicts too.
        let (mut e, problem) = Earned::open(d.path());
        assert!(problem.is_none());
        assert_eq!(e.held_back.count("exe:a"), 1);
        for g in [group(1), group(2)] {
            let k = e.take(&g, 70_000, &TierRules::default()).unwrap();
            assert_eq!(
                (k.record.tier, k.probation, k.last_run),
                (Tier::Warm, true, true)
            );
            assert!(k.reason().contains("agent's last run"), "{}", k.reason());
            assert!(
                e.take(&g, 70_000, &TierRules::default()).is_none(),
                "taken once"
            );
        }
    }

    /// Never below where a new record starts: with `start = "full"` a kept full record
    /// stays full, its memory limits with it.
    #[test]
    fn probation_never_takes_a_record_below_the_configured_start() {
        let trusted = TierRules {
            start: Tier::Full,
            ..TierRules::default()
        };
        let mut e = Earned::default();
        e.retire(&group(1), full(), 0);
        let k = e.take(&group(1), PROBATION_AFTER_MS + 1, &trusted).unwrap();
        assert_eq!((k.record.tier, k.probation), (Tier::Full, false));
        assert!(k.record.memory_hard(&trusted));
    }

    #[test]
    fn old_records_come_back_on_probation_or_not_at_all_and_their_number_is_bounded() {
        let mut e = Earned::default();
        e.retire(&group(1), full(), 0);
        let k = e
            .take(&group(1), PROBATION_AFTER_MS + 1, &TierRules::default())
            .unwrap();
        assert_eq!((k.record.tier, k.probation), (Tier::Warm, true));
        e.retire(&group(1), full(), 0);
        assert!(
            e.take(&group(1), FORGET_AFTER_MS + 1, &TierRules::default())
                .is_none()
        );
        for n in 0..MAX_RETIRED + 10 {
            e.retire(&group(n), full(), n as u64);
        }
        assert_eq!(e.retired.len(), MAX_RETIRED);
        assert!(
            e.take(&group(0), 5_000, &TierRules::default()).is_none(),
            "the longest retired went first"
        );
        assert!(
            e.take(&group(MAX_RETIRED + 9), 5_000, &TierRules::default())
                .is_some()
        );
    }

    #[test]
    fn a_damaged_or_newer_file_is_named_and_nothing_is_lost_or_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path());
        let good = encode(&Saved {
            saved_ms: 1,
            workloads: vec![("umbra.slice/w-1".into(), 1, full())],
            held_back: vec![("exe:a".into(), vec![true, false])],
        });
        for cut in 0..good.len() {
            assert!(decode(&p, &good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_group = Saved::default();
        bad_group.workloads.push(("../escape".into(), 1, full()));
        assert!(decode(&p, &encode(&bad_group)).is_err());
        // Newer: left as it is, and this run writes nothing over it.
        let mut newer = good.clone();
        newer[8] = 2;
        fs::write(&p, &newer).unwrap();
        let (mut e, problem) = Earned::open(d.path());
        let msg = problem.unwrap().to_string();
        assert!(
            msg.contains("earned.bin") && msg.contains("version 2"),
            "{msg}"
        );
        e.verdict("exe:b", true);
        e.save(std::iter::empty(), 100_000).unwrap();
        assert_eq!(fs::read(&p).unwrap(), newer);
        // Damaged: named, moved aside, the tiers start over.
        fs::write(&p, &good[..good.len() - 1]).unwrap();
        let (e, problem) = Earned::open(d.path());
        let msg = problem.unwrap().to_string();
        assert!(
            msg.contains("earned.bin") && msg.contains("damaged"),
            "{msg}"
        );
        assert!(e.retired.is_empty() && p.with_extension("bin.corrupt").exists());
        assert!(!p.exists());
    }

    proptest::proptest! {
        #[test]
        fn the_decoder_never_panics(bytes in proptest::collection::vec(0u8..=255, 0..512)) {
            let _ = decode(Path::new("x"), &bytes);
            let _ = decode(Path::new("x"), &FORMAT.frame(&bytes));
        }
    }
}
