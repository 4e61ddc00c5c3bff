#![no_main]
//! Any bytes as a model update: as the payload of the model topic, and as a bundle signed
//! with the right key (so decoding and the schema checks behind the signature are reached).
//! A refusal, never a panic.

use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use umbra::publish::model::SignedModel;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[5; 32]);
    let _ = SignedModel::verify(data, &key.verifying_key());
    let signed = SignedModel {
        bundle: data.to_vec(),
        signature: key.sign(data).to_bytes().to_vec(),
    };
    let _ = SignedModel::verify(&signed.encode(), &key.verifying_key());
});
