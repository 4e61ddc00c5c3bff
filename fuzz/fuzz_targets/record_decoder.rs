#![no_main]
//! Any bytes as a recording (plain, or a zstd stream when they start with its magic): the
//! reader yields items and at most one error, never panics, and never allocates more than a
//! frame's bounded length (and, compressed, a zstd window of at most 128 MiB).

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(reader) = umbra::record::Reader::from_bytes(Path::new("fuzz"), data.to_vec()) {
        let mut errors = 0;
        for item in reader {
            if item.is_err() {
                errors += 1;
            }
        }
        assert!(errors <= 1, "the reader goes on after an error");
    }
});
