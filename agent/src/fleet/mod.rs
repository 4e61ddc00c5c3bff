//! The fleet side: tools for operators and the hub, subscribers of what agents publish.
//!
//! - [`sub`]: `umbra sub`, decode and print fleet topics.
//! - `hub` (cargo feature `fleet`): `umbra hub`, store summaries as Parquet for training,
//!   show a live fleet table, sign and publish models. Left out of the edge build.

#[cfg(feature = "fleet")]
pub mod hub;
pub mod sub;

use std::collections::{BTreeMap, HashMap};

/// What [`Dedup::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    New,
    /// The same message again (QoS 1 redelivery, a resend after a reconnect).
    Repeat,
    /// Another message with the same `(node, seq)`: two agents publish as one node.
    Conflict,
}

/// Drops repeated `(node, seq)` pairs (QoS 1 redelivery, spool resends after a reconnect)
/// and tells them from a different message under a seq already seen, which only two
/// agents sharing one node id produce. Remembers the last [`Dedup::SPAN`] seqs per node,
/// each with a digest of its content.
#[derive(Default)]
pub struct Dedup {
    seen: HashMap<String, BTreeMap<u64, u64>>,
    pub duplicates: u64,
    pub conflicts: u64,
}

impl Dedup {
    pub const SPAN: usize = 1 << 16;

    /// True the first time a pair is seen. Unsequenced messages (seq 0: birth and goodbye
    /// status, replies, messages sent while the spool could not be written) always pass.
    pub fn first(&mut self, node: &str, seq: u64) -> bool {
        self.check(node, seq, 0) == Seen::New
    }

    /// `digest` identifies the message's content (not its delivery flags).
    pub fn check(&mut self, node: &str, seq: u64, digest: u64) -> Seen {
        if seq == 0 {
            return Seen::New;
        }
        let map = self.seen.entry(node.to_string()).or_default();
        if map
            .first_key_value()
            .is_some_and(|(&lo, _)| seq < lo && map.len() >= Self::SPAN)
        {
            self.duplicates += 1;
            return Seen::Repeat;
        }
        match map.get(&seq) {
            Some(&d) if d == digest => {
                self.duplicates += 1;
                return Seen::Repeat;
            }
            Some(_) => {
                self.conflicts += 1;
                return Seen::Conflict;
            }
            None => {}
        }
        map.insert(seq, digest);
        if map.len() > Self::SPAN {
            map.pop_first();
        }
        Seen::New
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_dropped_per_node() {
        let mut d = Dedup::default();
        assert!(d.first("a", 1) && d.first("a", 2) && d.first("b", 1));
        assert!(!d.first("a", 1));
        assert!(d.first("a", 0) && d.first("a", 0));
        assert_eq!(d.duplicates, 1);
    }

    #[test]
    fn a_different_message_under_a_seen_seq_is_a_conflict() {
        let mut d = Dedup::default();
        assert_eq!(d.check("a", 5, 11), Seen::New);
        assert_eq!(d.check("a", 5, 11), Seen::Repeat);
        assert_eq!(d.check("a", 5, 12), Seen::Conflict);
        assert_eq!(d.check("b", 5, 12), Seen::New);
        assert_eq!((d.duplicates, d.conflicts), (1, 1));
    }
}
