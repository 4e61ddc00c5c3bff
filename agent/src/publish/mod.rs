//! Publish: the agent's link to the fleet over MQTT.
//!
//! - [`message`]: the envelope and bodies, postcard or JSON; topics.
//! - [`summary`]: shadow data points of a period folded per workload.
//! - [`spool`]: the on-disk store-and-forward queue every message goes through.
//! - [`client`]: the rumqttc tasks and the [`Outbox`] the pipeline writes to.
//! - [`command`] and [`model`]: what comes from the fleet, validated; [`Control`] applies
//!   it to the agent's state.
//!
//! Topics (`<fleet>`, `<node>` from config), all QoS 1, documented in `docs/mqtt.md`:
//! `umbra/v1/<fleet>/<node>/{summary,status,cmd/result}` out, `.../cmd/<name>` and
//! `.../model` (and the fleet-wide `umbra/v1/<fleet>/model`) in.

pub mod client;
pub mod command;
pub mod message;
pub mod model;
pub mod spool;
pub mod summary;

use std::collections::HashMap;

pub use client::{BrokerUrl, Inbound, Outbox, PublishError, Security, Settings};
use command::{Command, Mode, Tier};
use ed25519_dalek::VerifyingKey;
pub use message::*;
use model::{ModelBundle, ModelStore, SignedModel};
use tracing::{info, warn};

/// What applying a command asks of the rest of the agent.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    None,
    /// Publish status now.
    Status,
    /// Record the next `seconds` of capture; reply with `id` when done.
    Snapshot {
        seconds: u32,
        id: Option<String>,
    },
    /// A new model is active.
    Model(Box<ModelBundle>),
}

/// The agent state commands act on: allocation mode, workload tiers, the active model.
pub struct Control {
    pub mode: Mode,
    pub tiers: HashMap<String, Tier>,
    pub model: Option<ModelBundle>,
    key: Option<VerifyingKey>,
    store: ModelStore,
}

impl Control {
    /// Loads the stored model, if one is there and still verifies.
    pub fn new(mode: Mode, key: Option<VerifyingKey>, store: ModelStore) -> Control {
        let model = match &key {
            Some(k) => match store.load(k) {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "Stored model ignored");
                    None
                }
            },
            None => None,
        };
        if let Some(m) = &model {
            info!(model = m.name, version = m.version, "Model loaded");
        }
        Control {
            mode,
            tiers: HashMap::new(),
            model,
            key,
            store,
        }
    }

    /// Validates and applies a command or model update; the reply and what else to do.
    /// Never fails: a bad input is a refusal in the reply.
    pub fn handle(&mut self, msg: &Inbound) -> (CmdResult, Effect) {
        match msg {
            Inbound::Command {
                topic,
                name,
                payload,
            } => match command::parse(name, payload) {
                Err(e) => {
                    warn!(topic, error = %e, "Command refused");
                    (reply(topic, None, Err(e.to_string())), Effect::None)
                }
                Ok((cmd, id)) => {
                    info!(topic, ?cmd, "Command");
                    let (text, effect) = self.apply(cmd, id.clone());
                    (reply(topic, id, Ok(text)), effect)
                }
            },
            Inbound::Model { topic, payload } => {
                let Some(key) = &self.key else {
                    let e = model::ModelError::NoKey;
                    warn!(topic, error = %e, "Model refused");
                    return (reply(topic, None, Err(e.to_string())), Effect::None);
                };
                let verified = SignedModel::verify(payload, key)
                    .and_then(|b| self.store.install(payload).map(|()| b));
                match verified {
                    Err(e) => {
                        warn!(topic, error = %e, "Model refused");
                        (reply(topic, None, Err(e.to_string())), Effect::None)
                    }
                    Ok(b) => {
                        info!(model = b.name, version = b.version, "Model swapped in");
                        let text = format!("model {} {} active", b.name, b.version);
                        self.model = Some(b.clone());
                        (reply(topic, None, Ok(text)), Effect::Model(Box::new(b)))
                    }
                }
            }
        }
    }

    fn apply(&mut self, cmd: Command, id: Option<String>) -> (String, Effect) {
        match cmd {
            Command::SetMode(m) => {
                self.mode = m;
                (format!("mode {}", m.name()), Effect::Status)
            }
            Command::SetTier { workload, tier } => {
                let text = format!("workload {workload} tier {tier:?}");
                self.tiers.insert(workload, tier);
                (text, Effect::None)
            }
            Command::TraceSnapshot { seconds } => (
                format!("recording {seconds} s of capture"),
                Effect::Snapshot { seconds, id },
            ),
            Command::Status => ("status published".into(), Effect::Status),
        }
    }

    pub fn model_info(&self) -> Option<ModelInfo> {
        self.model.as_ref().map(ModelBundle::info)
    }
}

fn reply(topic: &str, id: Option<String>, r: Result<String, String>) -> CmdResult {
    let (ok, message) = match r {
        Ok(m) => (true, m),
        Err(m) => (false, m),
    };
    CmdResult {
        id,
        topic: topic.to_string(),
        ok,
        message,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::publish::model::{BUNDLE_FORMAT, ModelSchema};

    fn cmd(name: &str, payload: &str) -> Inbound {
        Inbound::Command {
            topic: format!("umbra/v1/f/n/cmd/{name}"),
            name: name.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }
    }

    #[test]
    fn commands_change_state_and_bad_ones_only_reply() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Control::new(Mode::DryRun, None, ModelStore::new(d.path()));
        let (r, e) = c.handle(&cmd("set-mode", r#"{"id":"7","mode":"enforce"}"#));
        assert!(r.ok && r.id.as_deref() == Some("7"), "{r:?}");
        assert_eq!((c.mode, e), (Mode::Enforce, Effect::Status));
        let (r, e) = c.handle(&cmd("set-mode", "garbage"));
        assert!(!r.ok && r.message.contains("not a valid JSON"), "{r:?}");
        assert_eq!((c.mode, e), (Mode::Enforce, Effect::None));
        let (_, e) = c.handle(&cmd("trace-snapshot", r#"{"id":"s","seconds":3}"#));
        assert_eq!(
            e,
            Effect::Snapshot {
                seconds: 3,
                id: Some("s".into())
            }
        );
        let (r, _) = c.handle(&Inbound::Model {
            topic: "umbra/v1/f/model".into(),
            payload: Bytes::from_static(b"x"),
        });
        assert!(!r.ok && r.message.contains("model_public_key"), "{r:?}");
    }

    #[test]
    fn a_verified_model_is_swapped_in_and_survives_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let sk = SigningKey::from_bytes(&[9; 32]);
        let key = Some(sk.verifying_key());
        let mut c = Control::new(Mode::DryRun, key, ModelStore::new(d.path()));
        let b = ModelBundle {
            format: BUNDLE_FORMAT,
            name: "f".into(),
            version: "1".into(),
            schema: ModelSchema {
                features: ModelSchema::FEATURES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                window: 8,
                horizon: 4,
                quantiles: vec![0.1, 0.5, 0.9],
            },
            onnx: vec![8, 1],
        };
        let payload = Bytes::from(SignedModel::sign(&b, &sk).encode());
        let (r, e) = c.handle(&Inbound::Model {
            topic: "t".into(),
            payload,
        });
        assert!(r.ok, "{r:?}");
        assert!(matches!(e, Effect::Model(_)));
        let again = Control::new(Mode::DryRun, key, ModelStore::new(d.path()));
        assert_eq!(again.model_info(), Some(b.info()));
        // Signed by someone else: refused, the active model stays.
        let other = SigningKey::from_bytes(&[1; 32]);
        let (r, _) = c.handle(&Inbound::Model {
            topic: "t".into(),
            payload: Bytes::from(SignedModel::sign(&b, &other).encode()),
        });
        assert!(!r.ok && r.message.contains("signature"), "{r:?}");
        assert_eq!(c.model_info(), Some(b.info()));
    }
}
