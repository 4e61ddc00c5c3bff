#![no_main]
//! Any bytes as the allocate stage's earned records (`earned.bin`): the decoder returns
//! them or an error naming what is wrong, never panics, and whatever decodes encodes back
//! to bytes that decode to the same.

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use umbra::allocate::earned::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = decode(Path::new("fuzz"), data) {
        let again = decode(Path::new("fuzz"), &encode(&s));
        assert!(again.is_ok_and(|a| a == s));
    }
});
