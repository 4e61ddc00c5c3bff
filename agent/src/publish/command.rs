//! Commands from the fleet (`umbra/v1/<fleet>/<node>/cmd/<name>`, a JSON object). Each is
//! parsed and validated here; a malformed or unknown one becomes an error for the
//! `cmd/result` reply, never a panic.

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

/// A workload's priority tier for allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Critical,
    Normal,
    BestEffort,
}

/// A validated command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    SetMode(Mode),
    SetTier {
        workload: String,
        tier: Tier,
    },
    /// Record the next `seconds` of capture to a file on the device.
    TraceSnapshot {
        seconds: u32,
    },
    /// Publish status now.
    Status,
}

/// The longest trace snapshot a command may ask for.
pub const MAX_SNAPSHOT_SECONDS: u32 = 300;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("unknown command {0:?}: expected one of set-mode, set-tier, trace-snapshot, status")]
    Unknown(String),
    #[error("command {command}: payload is not a valid JSON object for it: {message}")]
    Malformed { command: String, message: String },
    #[error("command {command}: {message}")]
    Invalid { command: String, message: String },
}

/// `name` is the topic's last level. Returns the command and its `id`, if it had one.
pub fn parse(name: &str, payload: &[u8]) -> Result<(Command, Option<String>), CommandError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SetMode {
        id: Option<String>,
        mode: Mode,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SetTier {
        id: Option<String>,
        workload: String,
        tier: Tier,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Snapshot {
        id: Option<String>,
        seconds: u32,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Plain {
        id: Option<String>,
    }
    fn json<'a, T: Deserialize<'a>>(name: &str, payload: &'a [u8]) -> Result<T, CommandError> {
        // An empty payload is an empty object (e.g. `status` with no id).
        let payload: &[u8] = if payload.is_empty() { b"{}" } else { payload };
        serde_json::from_slice(payload).map_err(|e| CommandError::Malformed {
            command: name.into(),
            message: e.to_string(),
        })
    }
    let invalid = |message: String| CommandError::Invalid {
        command: name.into(),
        message,
    };
    match name {
        "set-mode" => {
            let c: SetMode = json(name, payload)?;
            Ok((Command::SetMode(c.mode), c.id))
        }
        "set-tier" => {
            let c: SetTier = json(name, payload)?;
            if !c.workload.contains(':') {
                return Err(invalid(format!(
                    "workload {:?} is not a workload id (exe:sha256:…, cgroup:…)",
                    c.workload
                )));
            }
            Ok((
                Command::SetTier {
                    workload: c.workload,
                    tier: c.tier,
                },
                c.id,
            ))
        }
        "trace-snapshot" => {
            let c: Snapshot = json(name, payload)?;
            if c.seconds == 0 || c.seconds > MAX_SNAPSHOT_SECONDS {
                return Err(invalid(format!(
                    "seconds = {} must be between 1 and {MAX_SNAPSHOT_SECONDS}",
                    c.seconds
                )));
            }
            Ok((Command::TraceSnapshot { seconds: c.seconds }, c.id))
        }
        "status" => {
            let c: Plain = json(name, payload)?;
            Ok((Command::Status, c.id))
        }
        other => Err(CommandError::Unknown(other.into())),
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case(
        "set-mode",
        r#"{"id":"1","mode":"enforce"}"#,
        Command::SetMode(Mode::Enforce)
    )]
    #[case("set-mode", r#"{"mode":"dry-run"}"#, Command::SetMode(Mode::DryRun))]
    #[case(
        "set-tier",
        r#"{"workload":"exe:sha256:ab","tier":"best-effort"}"#,
        Command::SetTier { workload: "exe:sha256:ab".into(), tier: Tier::BestEffort }
    )]
    #[case("trace-snapshot", r#"{"seconds":5}"#, Command::TraceSnapshot { seconds: 5 })]
    #[case("status", "", Command::Status)]
    fn good_commands_parse(#[case] name: &str, #[case] body: &str, #[case] want: Command) {
        assert_eq!(parse(name, body.as_bytes()).unwrap().0, want);
    }

    #[rstest]
    #[case("reboot", "{}", "unknown command")]
    #[case("set-mode", "{", "not a valid JSON")]
    #[case("set-mode", r#"{"mode":"fast"}"#, "unknown variant")]
    #[case("set-mode", r#"{"mode":"enforce","x":1}"#, "unknown field")]
    #[case(
        "set-tier",
        r#"{"workload":"nginx","tier":"normal"}"#,
        "not a workload id"
    )]
    #[case("trace-snapshot", r#"{"seconds":0}"#, "between 1 and")]
    #[case("trace-snapshot", "\u{0}\u{1}\u{2}", "not a valid JSON")]
    fn bad_commands_are_named_errors(#[case] name: &str, #[case] body: &str, #[case] msg: &str) {
        let e = parse(name, body.as_bytes()).unwrap_err().to_string();
        assert!(e.contains(msg), "{e}");
    }
}
