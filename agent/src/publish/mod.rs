//! Publish: the agent's link to the fleet over MQTT.
//!
//! - [`message`]: the envelope and bodies, postcard or JSON; topics ([`message_v1`],
//!   [`message_v2`], [`message_v3`]: the previous schemas, still read).
//! - [`summary`]: shadow data points of a period folded per workload.
//! - [`spool`]: the on-disk store-and-forward queue every message goes through.
//! - [`client`]: the rumqttc tasks and the [`Outbox`] the stage writes to.
//! - [`command`] and [`model`]: what comes from the fleet, signed and validated.
//! - [`identity`]: the node id, derived so that cloned devices differ.
//! - [`stage`]: the stage core the agent loop drives.
//!
//! Topics (`<fleet>`, `<node>` from config), all QoS 1, documented in `docs/mqtt.md`:
//! `umbra/v1/<fleet>/<node>/{summary,status,cmd/result,decision}` out, `.../cmd/<name>` and
//! `.../model` (and the fleet-wide `umbra/v1/<fleet>/model`) in.

pub mod client;
pub mod command;
pub mod identity;
pub mod message;
pub mod message_v1;
pub mod message_v2;
pub mod message_v3;
pub mod model;
pub mod spool;
pub mod stage;
pub mod summary;

pub use client::{BrokerUrl, Inbound, Outbox, PublishError, Security, Settings};
pub use message::*;
pub use stage::{Accepted, Stage};
