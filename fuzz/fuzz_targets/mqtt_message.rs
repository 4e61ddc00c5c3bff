#![no_main]
//! Any bytes as a message on a fleet topic, as `umbra hub` and `umbra sub` decode it
//! (postcard of every schema this build reads, or JSON): an error or an envelope of this
//! schema, never a panic. What decodes encodes to postcard that decodes to the same
//! bytes, and to JSON that decodes to the same message (its floats to within JSON's text:
//! serde_json parses the shortest decimal of a subnormal to a neighbour).

use libfuzzer_sys::fuzz_target;
use umbra::publish::{Envelope, Payload, SCHEMA};

fuzz_target!(|data: &[u8]| {
    let Ok(e) = Envelope::decode(data) else {
        return;
    };
    assert_eq!(e.schema, SCHEMA, "decoded, a message is of this schema");
    let bytes = e.encode(Payload::Postcard);
    let again = Envelope::decode(&bytes).expect("postcard of a decoded envelope decodes");
    assert_eq!(again.encode(Payload::Postcard), bytes, "postcard round-trips");
    // JSON has no NaN or infinity: such a float does not come back (an agent sends none).
    if let Ok(again) = Envelope::decode(&e.encode(Payload::Json)) {
        let head = |e: &Envelope| (e.schema, e.node.clone(), e.seq, e.body.kind());
        assert_eq!(head(&again), head(&e), "JSON keeps what the message is");
    }
});
