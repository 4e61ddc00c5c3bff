//! Signed model updates. The hub signs a bundle (ONNX bytes plus the feature schema they
//! expect) with an ed25519 key; the agent verifies it against the public key in its
//! config, checks the schema against what this build's predict stage feeds, and only then
//! swaps it in. The signed bytes are kept on disk and verified again at every start.

use std::{
    fs,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::message::ModelInfo;
use crate::predict::schema::{Schema, SchemaError};

/// Version of the bundle layout. Format 1 carried a separate schema; from format 2 the
/// schema travels inside the ONNX file (`umbra.schema`, models/CONTRACT.md).
pub const BUNDLE_FORMAT: u16 = 2;

/// What the hub signs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelBundle {
    pub format: u16,
    pub name: String,
    pub version: String,
    /// The ONNX file, its `umbra.schema` in its metadata.
    pub onnx: Vec<u8>,
}

/// The payload of a model topic: a postcard-encoded bundle and its signature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedModel {
    pub bundle: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("model payload is not a signed Umbra model bundle: {0}")]
    Malformed(String),
    #[error("model is not signed: a signature of {0} bytes (ed25519 signatures have 64)")]
    Unsigned(usize),
    #[error(
        "model signature does not verify against the configured publish.model_public_key: tampered, or signed with another key"
    )]
    BadSignature,
    #[error(
        "model bundle format {found}; this agent reads {BUNDLE_FORMAT} (the schema inside the ONNX file): publish it again with this version's `umbra hub publish-model`"
    )]
    Format { found: u16 },
    #[error("model {name} {version} is incompatible: {why}")]
    Schema {
        name: String,
        version: String,
        why: String,
    },
    #[error("no publish.model_public_key configured: model updates are refused")]
    NoKey,
    #[error("key {0}")]
    Key(String),
    #[error("model store {path}: {message}")]
    Store { path: PathBuf, message: String },
}

impl SignedModel {
    pub fn sign(bundle: &ModelBundle, key: &SigningKey) -> SignedModel {
        let bytes = postcard::to_stdvec(bundle).unwrap_or_default();
        let signature = key.sign(&bytes).to_bytes().to_vec();
        SignedModel {
            bundle: bytes,
            signature,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes, verifies the signature, then checks format and schema.
    pub fn verify(payload: &[u8], key: &VerifyingKey) -> Result<ModelBundle, ModelError> {
        let (signed, rest): (SignedModel, _) =
            postcard::take_from_bytes(payload).map_err(|e| ModelError::Malformed(e.to_string()))?;
        if !rest.is_empty() || signed.bundle.is_empty() {
            return Err(ModelError::Malformed(format!(
                "{} bytes of bundle, {} bytes left over",
                signed.bundle.len(),
                rest.len()
            )));
        }
        let sig: [u8; 64] = signed
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| ModelError::Unsigned(signed.signature.len()))?;
        key.verify(&signed.bundle, &Signature::from_bytes(&sig))
            .map_err(|_| ModelError::BadSignature)?;
        let (format, _) = postcard::take_from_bytes::<u16>(&signed.bundle)
            .map_err(|e| ModelError::Malformed(e.to_string()))?;
        if format != BUNDLE_FORMAT {
            return Err(ModelError::Format { found: format });
        }
        let b: ModelBundle = postcard::from_bytes(&signed.bundle)
            .map_err(|e| ModelError::Malformed(e.to_string()))?;
        b.schema().map_err(|e| ModelError::Schema {
            name: b.name.clone(),
            version: b.version.clone(),
            why: e.to_string(),
        })?;
        Ok(b)
    }
}

impl ModelBundle {
    /// The schema inside the ONNX bytes, checked against this build.
    pub fn schema(&self) -> Result<Schema, SchemaError> {
        Schema::of_onnx(&format!("model {} {}", self.name, self.version), &self.onnx)
    }

    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.name.clone(),
            version: self.version.clone(),
            sha256: hex(&Sha256::digest(&self.onnx)),
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A public key from its base64 text (32 bytes).
pub fn public_key(b64: &str) -> Result<VerifyingKey, ModelError> {
    let bytes = B64
        .decode(b64.trim())
        .map_err(|e| ModelError::Key(format!("is not base64: {e}")))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ModelError::Key("must be 32 bytes (ed25519 public key)".into()))?;
    VerifyingKey::from_bytes(&arr).map_err(|e| ModelError::Key(e.to_string()))
}

/// A signing key from a file holding its base64 seed (32 bytes), as `umbra hub keygen`
/// writes it.
pub fn signing_key(path: &Path) -> Result<SigningKey, ModelError> {
    let text = fs::read_to_string(path).map_err(|e| ModelError::Store {
        path: path.into(),
        message: e.to_string(),
    })?;
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| ModelError::Key(format!("file {} is not base64: {e}", path.display())))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ModelError::Key(format!("file {} must hold 32 bytes", path.display())))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A new key pair from the kernel's random source: (seed base64, public key base64).
pub fn generate_key() -> std::io::Result<(String, String)> {
    let mut seed = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))?;
    let k = SigningKey::from_bytes(&seed);
    Ok((B64.encode(seed), B64.encode(k.verifying_key().to_bytes())))
}

/// The active model on disk (`<dir>/model.signed`), swapped atomically.
pub struct ModelStore {
    path: PathBuf,
}

impl ModelStore {
    pub fn new(dir: &Path) -> ModelStore {
        ModelStore {
            path: dir.join("model.signed"),
        }
    }

    /// The stored model, verified again; `None` when there is none or it no longer
    /// verifies (then it is reported and ignored).
    pub fn load(&self, key: &VerifyingKey) -> Result<Option<ModelBundle>, ModelError> {
        match fs::read(&self.path) {
            Ok(b) => SignedModel::verify(&b, key).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ModelError::Store {
                path: self.path.clone(),
                message: e.to_string(),
            }),
        }
    }

    /// Keeps the verified payload as the active model.
    pub fn install(&self, payload: &[u8]) -> Result<(), ModelError> {
        let err = |e: std::io::Error| ModelError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        };
        if let Some(d) = self.path.parent() {
            fs::create_dir_all(d).map_err(err)?;
        }
        let tmp = self.path.with_extension("tmp");
        fs::write(&tmp, payload).map_err(err)?;
        fs::rename(&tmp, &self.path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn onnx(name: &str) -> Vec<u8> {
        fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/onnx")
                .join(name),
        )
        .unwrap()
    }

    pub(crate) fn bundle() -> ModelBundle {
        ModelBundle {
            format: BUNDLE_FORMAT,
            name: "forecast".into(),
            version: "3".into(),
            onnx: onnx("forecast_fixture.onnx"),
        }
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signed_bundle_verifies_and_a_tampered_one_does_not() {
        let k = key(1);
        let signed = SignedModel::sign(&bundle(), &k);
        let ok = SignedModel::verify(&signed.encode(), &k.verifying_key()).unwrap();
        assert_eq!(ok, bundle());
        assert_eq!(ok.schema().unwrap().model_version, "fixture-1");
        // Another key, a flipped byte, an empty signature, garbage.
        assert_eq!(
            SignedModel::verify(&signed.encode(), &key(2).verifying_key()),
            Err(ModelError::BadSignature)
        );
        let mut t = signed.clone();
        let last = t.bundle.len() - 1;
        t.bundle[last] ^= 1;
        assert_eq!(
            SignedModel::verify(&t.encode(), &k.verifying_key()),
            Err(ModelError::BadSignature)
        );
        let mut u = signed.clone();
        u.signature.clear();
        assert_eq!(
            SignedModel::verify(&u.encode(), &k.verifying_key()),
            Err(ModelError::Unsigned(0))
        );
        assert!(matches!(
            SignedModel::verify(b"\xff\xff\xff", &k.verifying_key()),
            Err(ModelError::Malformed(_))
        ));
    }

    #[test]
    fn a_signed_but_incompatible_model_is_refused_with_the_reason() {
        let k = key(1);
        let refused = |b: &ModelBundle| {
            SignedModel::verify(&SignedModel::sign(b, &k).encode(), &k.verifying_key())
                .unwrap_err()
                .to_string()
        };
        let mut b = bundle();
        b.onnx = onnx("forecast_unknown_feature.onnx");
        let e = refused(&b);
        assert!(e.contains("forecast 3") && e.contains("gpu_util"), "{e}");
        let mut b = bundle();
        b.onnx = b"not onnx".to_vec();
        assert!(refused(&b).contains("not an ONNX model"));
        let mut b = bundle();
        b.onnx.truncate(b.onnx.len() / 2);
        assert!(refused(&b).contains("truncated"), "{}", refused(&b));
        let mut b = bundle();
        b.onnx = onnx("forecast_newer.onnx");
        assert!(refused(&b).contains("version 2"));
        let mut b = bundle();
        b.format = 9;
        assert_eq!(
            SignedModel::verify(&SignedModel::sign(&b, &k).encode(), &k.verifying_key()),
            Err(ModelError::Format { found: 9 })
        );
    }

    #[test]
    fn a_format_1_bundle_is_refused_saying_how_to_republish() {
        // Format 1: format, name, version, schema {features, window, horizon, quantiles},
        // onnx.
        #[derive(Serialize)]
        struct V1 {
            format: u16,
            name: String,
            version: String,
            schema: (Vec<String>, u32, u32, Vec<f32>),
            onnx: Vec<u8>,
        }
        let k = key(1);
        let bytes = postcard::to_stdvec(&V1 {
            format: 1,
            name: "forecast".into(),
            version: "1".into(),
            schema: (vec!["cpu_cores".into()], 60, 10, vec![0.1, 0.5, 0.9]),
            onnx: vec![0x08, 0x07],
        })
        .unwrap();
        let signed = SignedModel {
            signature: k.sign(&bytes).to_bytes().to_vec(),
            bundle: bytes,
        };
        let e = SignedModel::verify(&signed.encode(), &k.verifying_key()).unwrap_err();
        assert_eq!(e, ModelError::Format { found: 1 });
        assert!(e.to_string().contains("publish it again"), "{e}");
    }

    #[test]
    fn keys_round_trip_through_base64_and_the_store_keeps_the_model() {
        let (seed, public) = generate_key().unwrap();
        let d = tempfile::tempdir().unwrap();
        let kp = d.path().join("key");
        fs::write(&kp, &seed).unwrap();
        let sk = signing_key(&kp).unwrap();
        let pk = public_key(&public).unwrap();
        assert_eq!(sk.verifying_key(), pk);
        assert!(public_key("abc").is_err());
        let store = ModelStore::new(d.path());
        assert_eq!(store.load(&pk).unwrap(), None);
        store
            .install(&SignedModel::sign(&bundle(), &sk).encode())
            .unwrap();
        assert_eq!(store.load(&pk).unwrap(), Some(bundle()));
    }
}
