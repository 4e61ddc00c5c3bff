//! Commands from the fleet (`umbra/v1/<fleet>/<node>/cmd/<name>`, a JSON object). Each is
//! parsed and validated here; a malformed or unknown one becomes an error for the
//! `cmd/result` reply, never a panic.
//!
//! Commands that change what the agent does (`set-mode`, `set-tier`, `trace-snapshot`) are
//! obeyed only when signed with the fleet key and fresh; read-only ones (`status`) may come
//! unsigned. A signed command is `{"body": {…, "ts_ms": T, "nonce": "…"}, "sig": "…"}`: the
//! ed25519 signature (base64) covers `umbra-command-v1\n<topic>\n<body's exact bytes>`, so it
//! is bound to one node's topic; `ts_ms` must be within [`Verifier::max_age_ms`] of the
//! agent's clock and the nonce never seen before (nonces are kept for that long, bounded, and
//! across restarts), so a captured command cannot be replayed.

use std::{
    collections::{HashSet, VecDeque},
    fs,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use crate::allocate::control::{Mode, Tier};

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

impl Command {
    /// Whether obeying it changes what the agent does (then it must be signed).
    pub fn changes_behaviour(&self) -> bool {
        !matches!(self, Command::Status)
    }
}

/// The longest trace snapshot a command may ask for.
pub const MAX_SNAPSHOT_SECONDS: u32 = 300;
/// Domain separation of command signatures.
const CONTEXT: &str = "umbra-command-v1";
/// Nonces remembered, at most (older ones are also past the age limit).
const MAX_NONCES: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("unknown command {0:?}: expected one of set-mode, set-tier, trace-snapshot, status")]
    Unknown(String),
    #[error("command {command}: payload is not a valid JSON object for it: {message}")]
    Malformed { command: String, message: String },
    #[error("command {command}: {message}")]
    Invalid { command: String, message: String },
    #[error(
        "command {command} changes the agent and must be signed with the fleet key (`umbra hub command`); refused"
    )]
    Unsigned { command: String },
    #[error(
        "command {command} is signed but no publish.fleet_public_key is configured: commands that change the agent are refused"
    )]
    NoKey { command: String },
    #[error(
        "command {command}: signature does not verify against publish.fleet_public_key (tampered, signed for another node, or with another key)"
    )]
    BadSignature { command: String },
    #[error(
        "command {command}: signed at {ts_ms} ms, {age_s} s from this agent's clock (limit {limit_s} s): stale or replayed, or a clock is wrong"
    )]
    Stale {
        command: String,
        ts_ms: u64,
        age_s: i64,
        limit_s: u64,
    },
    #[error("command {command}: nonce {nonce:?} was used before: a replayed command")]
    Replayed { command: String, nonce: String },
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
            if !c.workload.contains(':') || c.workload.len() > 1024 {
                return Err(invalid(format!(
                    "workload {:?} is not a workload id (exe:sha256:…, cgroup:…)",
                    crate::view::clip(&c.workload, 80)
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
        other => Err(CommandError::Unknown(crate::view::clip(other, 64))),
    }
}

/// The wire form of a signed command.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Signed<'a> {
    #[serde(borrow)]
    body: &'a RawValue,
    sig: String,
}

/// What a signed body carries besides the command's own fields.
#[derive(Deserialize)]
struct Freshness {
    ts_ms: u64,
    nonce: String,
}

fn signed_message(topic: &str, body: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + topic.len() + body.len() + 2);
    m.extend_from_slice(CONTEXT.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(topic.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body.as_bytes());
    m
}

/// Signs a command for `topic` (the node's `cmd/<name>` topic): `fields` is the command's
/// JSON object without `ts_ms` and `nonce`, which are added.
pub fn sign(
    topic: &str,
    fields: &serde_json::Map<String, serde_json::Value>,
    ts_ms: u64,
    nonce: &str,
    key: &SigningKey,
) -> Vec<u8> {
    let mut body = fields.clone();
    body.insert("ts_ms".into(), ts_ms.into());
    body.insert("nonce".into(), nonce.into());
    let body = serde_json::Value::Object(body).to_string();
    let sig = key.sign(&signed_message(topic, &body));
    format!(
        "{{\"body\":{body},\"sig\":\"{}\"}}",
        B64.encode(sig.to_bytes())
    )
    .into_bytes()
}

/// Checks signatures, freshness and nonces of incoming commands.
pub struct Verifier {
    key: Option<VerifyingKey>,
    pub max_age_ms: u64,
    /// Nonces seen, with their `ts_ms`, oldest first; and the same as a set.
    seen: VecDeque<(u64, String)>,
    index: HashSet<String>,
    store: Option<PathBuf>,
}

#[derive(Serialize, Deserialize)]
struct StoredNonces {
    version: u32,
    nonces: Vec<(u64, String)>,
}

impl Verifier {
    /// `store`: where used nonces are kept across restarts (`None`: memory only).
    pub fn new(key: Option<VerifyingKey>, max_age_ms: u64, store: Option<&Path>) -> Verifier {
        let mut v = Verifier {
            key,
            max_age_ms,
            seen: VecDeque::new(),
            index: HashSet::new(),
            store: store.map(Path::to_path_buf),
        };
        if let Some(p) = store
            && let Ok(bytes) = fs::read(p)
            && let Ok(s) = serde_json::from_slice::<StoredNonces>(&bytes)
        {
            for (ts, n) in s.nonces.into_iter().take(MAX_NONCES) {
                v.index.insert(n.clone());
                v.seen.push_back((ts, n));
            }
        }
        v
    }

    /// Parses and checks a command that came on `topic` (its last level is `name`).
    pub fn check(
        &mut self,
        topic: &str,
        name: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<(Command, Option<String>), CommandError> {
        let signed: Option<Signed<'_>> = serde_json::from_slice(payload).ok();
        let Some(signed) = signed else {
            let (cmd, id) = parse(name, payload)?;
            if cmd.changes_behaviour() {
                return Err(CommandError::Unsigned {
                    command: name.into(),
                });
            }
            return Ok((cmd, id));
        };
        let Some(key) = &self.key else {
            return Err(CommandError::NoKey {
                command: name.into(),
            });
        };
        let bad = || CommandError::BadSignature {
            command: name.into(),
        };
        let sig: [u8; 64] = B64
            .decode(signed.sig.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        let body = signed.body.get();
        key.verify(&signed_message(topic, body), &Signature::from_bytes(&sig))
            .map_err(|_| bad())?;
        let fresh: Freshness = serde_json::from_str(body).map_err(|e| CommandError::Malformed {
            command: name.into(),
            message: format!("a signed body needs ts_ms and nonce: {e}"),
        })?;
        let age_ms = now_ms as i64 - fresh.ts_ms as i64;
        if age_ms.unsigned_abs() > self.max_age_ms {
            return Err(CommandError::Stale {
                command: name.into(),
                ts_ms: fresh.ts_ms,
                age_s: age_ms / 1000,
                limit_s: self.max_age_ms / 1000,
            });
        }
        if fresh.nonce.is_empty() || fresh.nonce.len() > 128 {
            return Err(CommandError::Invalid {
                command: name.into(),
                message: "nonce must be 1 to 128 characters".into(),
            });
        }
        self.forget_older_than(now_ms.saturating_sub(self.max_age_ms));
        if self.index.contains(&fresh.nonce) {
            return Err(CommandError::Replayed {
                command: name.into(),
                nonce: fresh.nonce,
            });
        }
        // The command's own fields, without the freshness ones.
        let mut fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(body)
            .map_err(|e| CommandError::Malformed {
                command: name.into(),
                message: e.to_string(),
            })?;
        fields.remove("ts_ms");
        fields.remove("nonce");
        let inner = serde_json::Value::Object(fields).to_string();
        let parsed = parse(name, inner.as_bytes())?;
        self.remember(fresh.ts_ms, fresh.nonce);
        Ok(parsed)
    }

    fn forget_older_than(&mut self, ts_ms: u64) {
        while self
            .seen
            .front()
            .is_some_and(|(t, _)| *t < ts_ms || self.index.len() >= MAX_NONCES)
        {
            if let Some((_, n)) = self.seen.pop_front() {
                self.index.remove(&n);
            }
        }
    }

    fn remember(&mut self, ts_ms: u64, nonce: String) {
        self.index.insert(nonce.clone());
        self.seen.push_back((ts_ms, nonce));
        if let Some(p) = &self.store {
            let s = StoredNonces {
                version: 1,
                nonces: self.seen.iter().cloned().collect(),
            };
            let tmp = p.with_extension("tmp");
            // Best effort: a lost file only narrows replay protection to this run.
            let ok = serde_json::to_vec(&s)
                .ok()
                .is_some_and(|b| fs::write(&tmp, b).is_ok() && fs::rename(&tmp, p).is_ok());
            if !ok {
                tracing::warn!(file = %p.display(), "Cannot keep command nonces; replay protection covers this run only");
            }
        }
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

    const TOPIC: &str = "umbra/v1/f/n/cmd/set-mode";
    const NOW: u64 = 1_800_000_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn fields(json: &str) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(json).unwrap()
    }

    fn verifier(store: Option<&Path>) -> Verifier {
        Verifier::new(Some(key(3).verifying_key()), 300_000, store)
    }

    #[test]
    fn a_signed_fresh_command_is_obeyed_once() {
        let mut v = verifier(None);
        let p = sign(
            TOPIC,
            &fields(r#"{"id":"a","mode":"enforce"}"#),
            NOW,
            "n1",
            &key(3),
        );
        let (cmd, id) = v.check(TOPIC, "set-mode", &p, NOW + 1000).unwrap();
        assert_eq!(
            (cmd, id.as_deref()),
            (Command::SetMode(Mode::Enforce), Some("a"))
        );
        assert!(matches!(
            v.check(TOPIC, "set-mode", &p, NOW + 2000),
            Err(CommandError::Replayed { .. })
        ));
    }

    #[test]
    fn unsigned_commands_that_change_the_agent_are_refused_but_status_is_not() {
        let mut v = verifier(None);
        let e = v
            .check(TOPIC, "set-mode", br#"{"mode":"enforce"}"#, NOW)
            .unwrap_err();
        assert!(matches!(e, CommandError::Unsigned { .. }), "{e}");
        assert!(e.to_string().contains("umbra hub command"));
        let (cmd, _) = v
            .check("umbra/v1/f/n/cmd/status", "status", b"", NOW)
            .unwrap();
        assert_eq!(cmd, Command::Status);
    }

    #[rstest]
    #[case::other_key(key(4), TOPIC, NOW, "bad")]
    #[case::other_node(
        key(3),
        "umbra/v1/f/other/cmd/set-mode",
        NOW,
        "signed for another node"
    )]
    #[case::stale(key(3), TOPIC, NOW - 600_000, "stale or replayed")]
    #[case::future(key(3), TOPIC, NOW + 600_000, "stale or replayed")]
    fn bad_signatures_and_stale_commands_are_refused_with_the_reason(
        #[case] k: SigningKey,
        #[case] signed_for: &str,
        #[case] ts: u64,
        #[case] why: &str,
    ) {
        let mut v = verifier(None);
        let p = sign(signed_for, &fields(r#"{"mode":"enforce"}"#), ts, "n", &k);
        let e = v.check(TOPIC, "set-mode", &p, NOW).unwrap_err().to_string();
        assert!(
            e.contains(why) || (why == "bad" && e.contains("does not verify")),
            "{e}"
        );
    }

    #[test]
    fn a_tampered_body_does_not_verify() {
        let mut v = verifier(None);
        let p = sign(TOPIC, &fields(r#"{"mode":"dry-run"}"#), NOW, "n", &key(3));
        let t = String::from_utf8(p).unwrap().replace("dry-run", "enforce");
        assert!(matches!(
            v.check(TOPIC, "set-mode", t.as_bytes(), NOW),
            Err(CommandError::BadSignature { .. })
        ));
    }

    #[test]
    fn without_a_key_signed_commands_are_refused() {
        let mut v = Verifier::new(None, 300_000, None);
        let p = sign(TOPIC, &fields(r#"{"mode":"enforce"}"#), NOW, "n", &key(3));
        assert!(matches!(
            v.check(TOPIC, "set-mode", &p, NOW),
            Err(CommandError::NoKey { .. })
        ));
    }

    #[test]
    fn nonces_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("nonces.json");
        let p = sign(
            TOPIC,
            &fields(r#"{"mode":"enforce"}"#),
            NOW,
            "once",
            &key(3),
        );
        verifier(Some(&store))
            .check(TOPIC, "set-mode", &p, NOW)
            .unwrap();
        let mut again = verifier(Some(&store));
        assert!(matches!(
            again.check(TOPIC, "set-mode", &p, NOW + 10),
            Err(CommandError::Replayed { .. })
        ));
    }

    #[test]
    fn the_nonce_memory_is_bounded() {
        let mut v = verifier(None);
        for i in 0..(MAX_NONCES + 100) {
            let p = sign(
                TOPIC,
                &fields(r#"{"mode":"enforce"}"#),
                NOW,
                &format!("n{i}"),
                &key(3),
            );
            v.check(TOPIC, "set-mode", &p, NOW).unwrap();
        }
        assert!(v.index.len() <= MAX_NONCES && v.seen.len() <= MAX_NONCES);
    }
}
