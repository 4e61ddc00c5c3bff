#![no_main]
//! Any bytes as a profile store: the snapshot decoder returns a store or an error naming
//! what is wrong, the journal decoder the whole frames before any damage; neither panics,
//! and whatever decodes encodes back to bytes that decode to the same.

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use umbra::predict::profiles::{decode_journal, decode_snapshot, encode_snapshot, RUNS_KEPT};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = decode_snapshot(Path::new("fuzz"), data) {
        assert!(s.profiles.iter().all(|(_, p)| p.runs.len() <= RUNS_KEPT));
        let again = decode_snapshot(Path::new("fuzz"), &encode_snapshot(&s));
        assert!(again.is_ok_and(|a| a.profiles.len() == s.profiles.len()));
    }
    if let Ok(j) = decode_journal(Path::new("fuzz"), data) {
        assert!(j.good <= data.len());
        assert!(j.entries.len() <= data.len() / 8);
    }
});
