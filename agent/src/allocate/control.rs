//! The allocation state the fleet sets by command: the mode (dry-run or enforce) and a
//! priority tier per workload. Both survive restarts: every change is written at once to
//! `<state_dir>/control.json` (write, fsync, rename), and read back at start. The tier map
//! is bounded: a remote peer cannot grow it without limit.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Allocation mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Decisions are computed, explained and published, never written.
    #[default]
    DryRun,
    Enforce,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::DryRun => "dry-run",
            Mode::Enforce => "enforce",
        }
    }
}

/// A workload's priority when reservations exceed what the node has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Critical,
    Normal,
    BestEffort,
}

/// Workloads with a tier set by command, at most.
pub const MAX_TIERS: usize = 4096;
/// Layout version of `control.json`.
const VERSION: u32 = 1;
const FILE: &str = "control.json";

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "allocation state {path}: {source}; check that the state directory is writable and has free space"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "allocation state {path} is not valid ({message}); it was left in place and the defaults are used"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "allocation state {path} is version {found}; this build reads up to {VERSION}: upgrade the agent"
    )]
    Newer { path: PathBuf, found: u32 },
    #[error(
        "{MAX_TIERS} workloads already have a tier; clear one (tier normal) before setting another"
    )]
    TooManyTiers,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Stored {
    version: u32,
    mode: Mode,
    tiers: BTreeMap<String, Tier>,
}

/// Mode and tiers, as last set (or the defaults), and where they are kept.
#[derive(Debug)]
pub struct Control {
    mode: Mode,
    tiers: BTreeMap<String, Tier>,
    /// `None`: kept in memory only (replays, tests without a state dir).
    path: Option<PathBuf>,
    /// The mode came from a `set-mode` command (kept on disk), not from a default.
    mode_set: bool,
}

impl Control {
    /// In memory only, with defaults.
    pub fn ephemeral() -> Control {
        Control {
            mode: Mode::DryRun,
            tiers: BTreeMap::new(),
            path: None,
            mode_set: false,
        }
    }

    /// The state stored under `state_dir`, or the defaults when there is none. A damaged or
    /// newer file is reported and the defaults are used; it is not overwritten until the
    /// next change.
    pub fn open(state_dir: &Path) -> (Control, Option<ControlError>) {
        let path = state_dir.join(FILE);
        let mut c = Control {
            path: Some(path.clone()),
            ..Control::ephemeral()
        };
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (c, None),
            Err(source) => return (c, Some(ControlError::Io { path, source })),
        };
        #[derive(Deserialize)]
        struct Head {
            version: u32,
        }
        match serde_json::from_slice::<Head>(&text) {
            Ok(h) if h.version > VERSION => {
                return (
                    c,
                    Some(ControlError::Newer {
                        path,
                        found: h.version,
                    }),
                );
            }
            Ok(_) => {}
            Err(e) => {
                return (
                    c,
                    Some(ControlError::Corrupt {
                        path,
                        message: e.to_string(),
                    }),
                );
            }
        }
        match serde_json::from_slice::<Stored>(&text) {
            Ok(s) => {
                c.mode = s.mode;
                c.mode_set = true;
                c.tiers = s.tiers;
                c.tiers.retain(|k, _| !k.is_empty());
                while c.tiers.len() > MAX_TIERS {
                    c.tiers.pop_last();
                }
                (c, None)
            }
            Err(e) => (
                c,
                Some(ControlError::Corrupt {
                    path,
                    message: e.to_string(),
                }),
            ),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The workload's tier (normal unless set).
    pub fn tier(&self, workload: &str) -> Tier {
        self.tiers.get(workload).copied().unwrap_or(Tier::Normal)
    }

    pub fn tiers(&self) -> impl Iterator<Item = (&str, Tier)> {
        self.tiers.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Sets the mode and keeps it. On a write error the change still holds in memory.
    pub fn set_mode(&mut self, mode: Mode) -> Result<(), ControlError> {
        self.mode = mode;
        self.mode_set = true;
        self.save()
    }

    /// Whether the mode was ever set by command (and kept), rather than a default.
    pub fn mode_was_set(&self) -> bool {
        self.mode_set
    }

    /// Takes `mode` for this run only (the config's default, or `umbra run --enforce`):
    /// nothing is written; a later `set-mode` command replaces it and is kept.
    pub fn assume_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// Sets a workload's tier (`normal` clears it) and keeps it.
    pub fn set_tier(&mut self, workload: &str, tier: Tier) -> Result<(), ControlError> {
        if tier == Tier::Normal {
            self.tiers.remove(workload);
        } else {
            if !self.tiers.contains_key(workload) && self.tiers.len() >= MAX_TIERS {
                return Err(ControlError::TooManyTiers);
            }
            self.tiers.insert(workload.to_string(), tier);
        }
        self.save()
    }

    fn save(&self) -> Result<(), ControlError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let stored = Stored {
            version: VERSION,
            mode: self.mode,
            tiers: self.tiers.clone(),
        };
        let io = |source| ControlError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&stored).unwrap_or_default();
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_and_tiers_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let (mut c, e) = Control::open(d.path());
        assert!(e.is_none());
        assert_eq!(c.mode(), Mode::DryRun);
        c.set_mode(Mode::Enforce).unwrap();
        c.set_tier("exe:sha256:aa", Tier::Critical).unwrap();
        c.set_tier("cgroup:/ü/\u{fffd}", Tier::BestEffort).unwrap();
        let (again, e) = Control::open(d.path());
        assert!(e.is_none());
        assert_eq!(again.mode(), Mode::Enforce);
        assert_eq!(again.tier("exe:sha256:aa"), Tier::Critical);
        assert_eq!(again.tier("cgroup:/ü/\u{fffd}"), Tier::BestEffort);
        assert_eq!(again.tier("exe:sha256:bb"), Tier::Normal);
        // Normal clears.
        let mut again = again;
        again.set_tier("exe:sha256:aa", Tier::Normal).unwrap();
        assert_eq!(Control::open(d.path()).0.tiers().count(), 1);
    }

    #[test]
    fn an_assumed_mode_is_not_kept() {
        let d = tempfile::tempdir().unwrap();
        let (mut c, _) = Control::open(d.path());
        assert!(!c.mode_was_set());
        c.assume_mode(Mode::Enforce);
        assert_eq!(c.mode(), Mode::Enforce);
        let (again, _) = Control::open(d.path());
        assert_eq!(again.mode(), Mode::DryRun);
        assert!(!again.mode_was_set());
        c.set_mode(Mode::DryRun).unwrap();
        let (again, _) = Control::open(d.path());
        assert!(again.mode_was_set());
    }

    #[test]
    fn the_tier_map_is_bounded() {
        let mut c = Control::ephemeral();
        for i in 0..MAX_TIERS {
            c.set_tier(&format!("exe:{i}"), Tier::BestEffort).unwrap();
        }
        assert!(matches!(
            c.set_tier("exe:one-more", Tier::Critical),
            Err(ControlError::TooManyTiers)
        ));
        // Changing one already there is still fine.
        c.set_tier("exe:7", Tier::Critical).unwrap();
        assert_eq!(c.tiers().count(), MAX_TIERS);
    }

    #[test]
    fn a_damaged_or_newer_file_is_reported_and_defaults_used() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join(FILE), b"{\"version\":1,\"mode\":\"turbo\"").unwrap();
        let (c, e) = Control::open(d.path());
        assert_eq!(c.mode(), Mode::DryRun);
        let e = e.unwrap().to_string();
        assert!(e.contains("control.json") && e.contains("not valid"), "{e}");
        fs::write(d.path().join(FILE), b"{\"version\":9}").unwrap();
        let e = Control::open(d.path()).1.unwrap().to_string();
        assert!(e.contains("version 9"), "{e}");
    }

    #[test]
    fn a_write_error_names_the_file_and_keeps_the_change_in_memory() {
        let d = tempfile::tempdir().unwrap();
        // The state dir is a file: nothing can be written below it.
        let f = d.path().join("not-a-dir");
        fs::write(&f, b"x").unwrap();
        let (mut c, _) = Control::open(&f);
        let e = c.set_mode(Mode::Enforce).unwrap_err().to_string();
        assert!(e.contains("not-a-dir"), "{e}");
        assert_eq!(c.mode(), Mode::Enforce);
    }
}
