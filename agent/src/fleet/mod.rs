//! The fleet side: tools for operators and the hub, subscribers of what agents publish.
//!
//! - [`sub`]: `umbra sub`, decode and print fleet topics.
//! - `hub` (cargo feature `fleet`): `umbra hub`, store summaries as Parquet for training,
//!   show a live fleet table, sign and publish models. Left out of the edge build.

#[cfg(feature = "fleet")]
pub mod hub;
pub mod sub;

use std::collections::{BTreeSet, HashMap};

/// Drops repeated `(node, seq)` pairs (QoS 1 redelivery, spool resends after a reconnect).
/// Remembers the last [`Dedup::SPAN`] seqs per node.
#[derive(Default)]
pub struct Dedup {
    seen: HashMap<String, BTreeSet<u64>>,
    pub duplicates: u64,
}

impl Dedup {
    pub const SPAN: usize = 1 << 16;

    /// True the first time a pair is seen. Unspooled messages (seq 0: birth and goodbye
    /// status) always pass.
    pub fn first(&mut self, node: &str, seq: u64) -> bool {
        if seq == 0 {
            return true;
        }
        let set = self.seen.entry(node.to_string()).or_default();
        if set
            .first()
            .is_some_and(|&lo| seq < lo && set.len() >= Self::SPAN)
            || !set.insert(seq)
        {
            self.duplicates += 1;
            return false;
        }
        if set.len() > Self::SPAN {
            set.pop_first();
        }
        true
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
}
