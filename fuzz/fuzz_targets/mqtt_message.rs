#![no_main]
//! Any bytes as a message on a fleet topic, as `umbra hub` and `umbra sub` decode it
//! (postcard of every schema this build reads, or JSON): an error or an envelope of this
//! schema, never a panic; what decodes encodes to bytes that decode to the same encoding.

use libfuzzer_sys::fuzz_target;
use umbra::publish::{Envelope, Payload, SCHEMA};

fuzz_target!(|data: &[u8]| {
    let Ok(e) = Envelope::decode(data) else {
        return;
    };
    assert!(e.schema <= SCHEMA, "a newer schema was accepted");
    for p in [Payload::Postcard, Payload::Json] {
        let bytes = e.encode(p);
        // JSON has no NaN or infinity: such a float does not come back (it is not sent by
        // an agent, whose floats are finite).
        if let Ok(again) = Envelope::decode(&bytes) {
            assert_eq!(again.encode(p), bytes, "{p:?} does not round-trip");
        } else {
            assert_eq!(p, Payload::Json, "postcard of a decoded envelope is unreadable");
        }
    }
});
