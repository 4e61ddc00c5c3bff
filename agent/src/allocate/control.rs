//! What operators set: the allocation [`Mode`] (dry-run or enforce), each workload's
//! [`Priority`] (the `set-tier` command) and an optional cap on its reservation [`Tier`].
//! Kept in `<state_dir>/allocate/control.json`, so a restart keeps what the fleet said.

use std::{
    collections::BTreeMap,
    fs, io,
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

/// A workload's priority when reservations exceed the node's capacity: critical ones are
/// served first, best-effort ones last.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    Critical,
    #[default]
    Normal,
    BestEffort,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::BestEffort];

    pub fn name(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::BestEffort => "best-effort",
        }
    }
}

/// How strongly a workload's forecasts are mirrored into its cgroup: earned by the
/// forecasts' record, capped by config or command.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// Decide and explain; write nothing.
    #[default]
    Shadow,
    /// Soft reservations: `cpu.weight`, `memory.low` from the band's lower part.
    Warm,
    /// Hard ones too: `memory.min` at p10, `cpu.max` and `memory.high` at p90 + margin.
    Full,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Shadow => "shadow",
            Tier::Warm => "warm",
            Tier::Full => "full",
        }
    }

    pub fn up(self) -> Tier {
        match self {
            Tier::Shadow => Tier::Warm,
            _ => Tier::Full,
        }
    }

    pub fn down(self) -> Tier {
        match self {
            Tier::Full => Tier::Warm,
            _ => Tier::Shadow,
        }
    }
}

/// The persisted control state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlState {
    pub mode: Mode,
    /// Workload id → priority.
    pub priorities: BTreeMap<String, Priority>,
    /// Workload id → the highest tier it may reach.
    pub max_tiers: BTreeMap<String, Tier>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot save allocation control state to {path}: {source}")]
    Save {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The control state and where it lives.
pub struct Control {
    path: Option<PathBuf>,
    pub state: ControlState,
}

impl Control {
    /// Loads `<dir>/control.json`; a missing file is the defaults, a damaged one is
    /// logged and replaced by the defaults (it is re-sent by the fleet).
    pub fn load(dir: &Path) -> Control {
        let path = dir.join("control.json");
        let state = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(
                    file = %path.display(),
                    error = %e,
                    "Allocation control state unreadable; starting from defaults (dry-run)"
                );
                ControlState::default()
            }),
            Err(_) => ControlState::default(),
        };
        Control {
            path: Some(path),
            state,
        }
    }

    /// Not persisted (simulation, tests).
    pub fn in_memory(state: ControlState) -> Control {
        Control { path: None, state }
    }

    fn save(&self) -> Result<(), ControlError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |source| ControlError::Save {
            path: path.clone(),
            source,
        };
        if let Some(d) = path.parent() {
            fs::create_dir_all(d).map_err(err)?;
        }
        let tmp = path.with_extension("json.new");
        // Plain maps of strings always serialise.
        let text = serde_json::to_vec_pretty(&self.state).unwrap_or_default();
        fs::write(&tmp, text).map_err(err)?;
        fs::rename(&tmp, path).map_err(err)
    }

    pub fn set_mode(&mut self, m: Mode) -> Result<(), ControlError> {
        self.state.mode = m;
        self.save()
    }

    /// The `set-tier` command: a workload's priority.
    pub fn set_priority(&mut self, workload: &str, p: Priority) -> Result<(), ControlError> {
        self.state.priorities.insert(workload.to_string(), p);
        self.save()
    }

    /// Caps a workload's reservation tier (`None` lifts the cap).
    pub fn set_max_tier(&mut self, workload: &str, t: Option<Tier>) -> Result<(), ControlError> {
        match t {
            Some(t) => self.state.max_tiers.insert(workload.to_string(), t),
            None => self.state.max_tiers.remove(workload),
        };
        self.save()
    }

    pub fn mode(&self) -> Mode {
        self.state.mode
    }

    pub fn priority(&self, workload: &str) -> Option<Priority> {
        self.state.priorities.get(workload).copied()
    }

    pub fn max_tier(&self, workload: &str) -> Option<Tier> {
        self.state.max_tiers.get(workload).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_state_survives_a_restart_and_a_damaged_file_is_the_defaults() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Control::load(d.path());
        assert_eq!(c.mode(), Mode::DryRun);
        c.set_mode(Mode::Enforce).unwrap();
        c.set_priority("exe:sha256:ab", Priority::Critical).unwrap();
        c.set_max_tier("exe:sha256:ab", Some(Tier::Warm)).unwrap();
        let again = Control::load(d.path());
        assert_eq!(again.state, c.state);
        assert_eq!(again.priority("exe:sha256:ab"), Some(Priority::Critical));
        assert_eq!(again.max_tier("exe:sha256:ab"), Some(Tier::Warm));
        fs::write(d.path().join("control.json"), b"{garbage").unwrap();
        assert_eq!(Control::load(d.path()).state, ControlState::default());
    }

    #[test]
    fn wire_names_are_those_of_the_commands() {
        assert_eq!(serde_json::to_string(&Mode::DryRun).unwrap(), "\"dry-run\"");
        assert_eq!(
            serde_json::to_string(&Priority::BestEffort).unwrap(),
            "\"best-effort\""
        );
        assert_eq!(serde_json::to_string(&Tier::Full).unwrap(), "\"full\"");
        assert!(Tier::Shadow < Tier::Warm && Tier::Warm < Tier::Full);
    }
}
