#![no_main]
//! Any bytes as a command from the fleet, on any command topic, signed or not: a reply
//! (accepted or refused), never a panic. Signed bodies reach the command parsers too: the
//! fuzzer's bytes are signed with the agent's key half of the time.

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use umbra::publish::command::{Verifier, sign};

const NAMES: [&str; 6] = ["set-mode", "set-tier", "trace-snapshot", "status", "reboot", ""];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let name = NAMES[sel as usize % NAMES.len()];
    let topic = format!("umbra/v1/f/n/cmd/{name}");
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut v = Verifier::new(Some(key.verifying_key()), 300_000, None);
    let now = 1_800_000_000_000;
    let _ = v.check(&topic, name, rest, now);
    let _ = umbra::publish::command::parse(name, rest);
    if sel & 0x80 != 0
        && let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(rest)
    {
        let signed = sign(&topic, &fields, now, "nonce", &key);
        let _ = v.check(&topic, name, &signed, now);
    }
});
