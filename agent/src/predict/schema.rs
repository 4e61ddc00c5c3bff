//! A model's `umbra.schema` (models/CONTRACT.md): read from the ONNX file's
//! `metadata_props` without the model runtime, and checked against what this build feeds.
//! The hub reads it before signing a model, the agent before loading one, so a model the
//! agent cannot honour is refused with the file and the field named.

use serde::{Deserialize, Serialize};

use super::{OUTCOMES, Target, features::FEATURES};

/// The `schema_version` this build reads.
pub const SCHEMA_VERSION: u32 = 1;
/// The metadata key that carries the schema.
pub const SCHEMA_KEY: &str = "umbra.schema";

/// What is wrong with a model file, or with the schema it carries.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SchemaError {
    #[error("{origin} is not an ONNX model: {what}")]
    NotOnnx { origin: String, what: String },
    #[error(
        "{origin} carries no `umbra.schema` metadata: export it with its schema (models/CONTRACT.md)"
    )]
    Missing { origin: String },
    #[error("{origin}: umbra.schema is not valid JSON for the contract: {what}")]
    Json { origin: String, what: String },
    #[error(
        "{origin}: umbra.schema version {found}; this build reads version {SCHEMA_VERSION}: run a newer umbra"
    )]
    Newer { origin: String, found: u32 },
    #[error("{origin}: umbra.schema field `{field}`: {why}")]
    Field {
        origin: String,
        field: String,
        why: String,
    },
}

/// `"forecast"` or `"request"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Forecast,
    Request,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Forecast => "forecast",
            ModelKind::Request => "request",
        }
    }
}

/// How a value is transformed before it is standardised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Identity,
    Log1p,
}

/// A named value with its transform and standardisation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaled {
    pub name: String,
    pub transform: Transform,
    pub mean: f64,
    pub std: f64,
}

impl Scaled {
    /// `(transform(v) - mean) / std`; log1p of the value clamped at ≥ 0.
    #[inline]
    pub fn forward(&self, v: f64) -> f64 {
        let t = match self.transform {
            Transform::Identity => v,
            Transform::Log1p => v.max(0.0).ln_1p(),
        };
        (t - self.mean) / self.std
    }

    /// `inverse(y · std + mean)`, clamped at ≥ 0 (`inverse(log1p) = expm1`).
    #[inline]
    pub fn inverse(&self, y: f64) -> f64 {
        let t = y * self.std + self.mean;
        let v = match self.transform {
            Transform::Identity => t,
            Transform::Log1p => t.exp_m1(),
        };
        v.max(0.0)
    }

    /// [`Self::inverse`] of every value of `ys`, in place, in `f32` (within ~1e-6 of it,
    /// relative): a loop the compiler vectorises, for a model's whole output at once.
    #[inline]
    pub fn inverse_in_place(&self, ys: &mut [f32]) {
        // The scaling in f64: near 0, `y · std + mean` cancels.
        let (std, mean) = (self.std, self.mean);
        let t = |y: f32| (y as f64 * std + mean) as f32;
        match self.transform {
            Transform::Identity => ys.iter_mut().for_each(|y| *y = t(*y).max(0.0)),
            Transform::Log1p => ys.iter_mut().for_each(|y| *y = exp_m1_f32(t(*y)).max(0.0)),
        }
    }
}

/// `eˣ − 1` in `f32`, branch-free so that loops over slices vectorise (libm's `expm1` is a
/// call per value): `eˣ = 2ᵏ·eʳ` with `k` the nearest integer to `x/ln 2`, `|r| ≤ ln 2 / 2`,
/// `eʳ − 1` by its Taylor series to `r⁷` (the next term is below 6e-9), and `2ᵏ·(eʳ − 1) +
/// (2ᵏ − 1)`, exact in `eʳ − 1` when `k = 0` (no cancellation near 0). `x` is clamped to
/// `[−87, 88]`, where `2ᵏ` is a normal `f32`.
#[inline(always)]
pub fn exp_m1_f32(x: f32) -> f32 {
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 in two parts (Cody–Waite): `k · LN2_HI` is exact for |k| < 2⁹.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 / 720.0 + r * (1.0 / 5040.0);
    let p = 1.0 / 120.0 + r * p;
    let p = 1.0 / 24.0 + r * p;
    let p = 1.0 / 6.0 + r * p;
    let p = 0.5 + r * p;
    let em1 = r + r * r * p;
    let two_k = f32::from_bits(((k as i32 + 127) as u32) << 23);
    two_k * em1 + (two_k - 1.0)
}

/// The `umbra.schema` object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schema {
    pub schema_version: u32,
    pub kind: ModelKind,
    pub model_version: String,
    /// Forecaster: the bucket length, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// Forecaster: buckets in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    /// Forecaster: steps out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon: Option<usize>,
    pub quantiles: Vec<f64>,
    /// Per-request model: buckets of the argv token hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_buckets: Option<usize>,
    pub features: Vec<Scaled>,
    pub targets: Vec<Scaled>,
    pub input: String,
    pub output: String,
    #[serde(default)]
    pub training_data: serde_json::Value,
    #[serde(default)]
    pub trained_by: String,
}

/// Bounds a schema must keep.
const MAX_WINDOW: usize = 4096;
const MAX_HORIZON: usize = 1024;
const MAX_HASH_BUCKETS: usize = 4096;

impl Schema {
    /// Parses the schema JSON; `origin` names the file in errors.
    pub fn parse(origin: &str, json: &str) -> Result<Schema, SchemaError> {
        // The version first, so a newer schema is reported as such rather than as a
        // field this build does not know.
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        let json_err = |e: serde_json::Error| SchemaError::Json {
            origin: origin.into(),
            what: e.to_string(),
        };
        let v: Version = serde_json::from_str(json).map_err(json_err)?;
        if v.schema_version > SCHEMA_VERSION {
            return Err(SchemaError::Newer {
                origin: origin.into(),
                found: v.schema_version,
            });
        }
        serde_json::from_str(json).map_err(json_err)
    }

    /// The schema of an ONNX file's bytes.
    pub fn of_onnx(origin: &str, bytes: &[u8]) -> Result<Schema, SchemaError> {
        let props = onnx_metadata(origin, bytes)?;
        let json = props
            .iter()
            .find(|(k, _)| k == SCHEMA_KEY)
            .map(|(_, v)| v)
            .ok_or_else(|| SchemaError::Missing {
                origin: origin.into(),
            })?;
        let s = Schema::parse(origin, json)?;
        s.check(origin)?;
        Ok(s)
    }

    /// Columns of the input tensor per row.
    pub fn input_width(&self) -> usize {
        match self.kind {
            ModelKind::Forecast => self.window.unwrap_or(0) * self.features.len(),
            ModelKind::Request => self.features.len(),
        }
    }

    /// Columns of the output tensor per row.
    pub fn output_width(&self) -> usize {
        let steps = match self.kind {
            ModelKind::Forecast => self.horizon.unwrap_or(0),
            ModelKind::Request => 1,
        };
        self.targets.len() * steps * self.quantiles.len()
    }

    /// Index of quantile level `q` in the schema's quantiles.
    pub fn quantile_index(&self, q: f64) -> Option<usize> {
        self.quantiles.iter().position(|x| (x - q).abs() < 1e-6)
    }

    /// Checks the schema against what this build feeds and reads.
    pub fn check(&self, origin: &str) -> Result<(), SchemaError> {
        let field = |field: &str, why: String| SchemaError::Field {
            origin: origin.into(),
            field: field.into(),
            why,
        };
        if self.schema_version == 0 {
            return Err(field("schema_version", "must be at least 1".into()));
        }
        if self.schema_version > SCHEMA_VERSION {
            return Err(SchemaError::Newer {
                origin: origin.into(),
                found: self.schema_version,
            });
        }
        if self.quantiles.is_empty()
            || self.quantiles.iter().any(|q| !(*q > 0.0 && *q < 1.0))
            || self.quantiles.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(field(
                "quantiles",
                format!("{:?} must be increasing, within (0, 1)", self.quantiles),
            ));
        }
        for q in super::LEVELS {
            if self.quantile_index(q).is_none() {
                return Err(field(
                    "quantiles",
                    format!("{:?} must include {q}", self.quantiles),
                ));
            }
        }
        if self.features.is_empty() {
            return Err(field("features", "is empty".into()));
        }
        let expected_targets: Vec<&str> = match self.kind {
            ModelKind::Forecast => Target::ALL.iter().map(|t| t.name()).collect(),
            ModelKind::Request => OUTCOMES.to_vec(),
        };
        let names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        if names != expected_targets {
            return Err(field(
                "targets",
                format!(
                    "{names:?}; a {} model must give {expected_targets:?}, in that order",
                    self.kind.name()
                ),
            ));
        }
        for (what, list) in [("features", &self.features), ("targets", &self.targets)] {
            for (i, s) in list.iter().enumerate() {
                if !(s.std.is_finite() && s.std > 0.0 && s.mean.is_finite()) {
                    return Err(field(
                        &format!("{what}[{i}] ({})", s.name),
                        format!("mean {} and std {} must be finite, std > 0", s.mean, s.std),
                    ));
                }
            }
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.features {
            if !seen.insert(f.name.as_str()) {
                return Err(field("features", format!("{:?} appears twice", f.name)));
            }
        }
        if self.input.is_empty() || self.output.is_empty() {
            return Err(field("input", "tensor names must not be empty".into()));
        }
        match self.kind {
            ModelKind::Forecast => {
                let w = self.window.unwrap_or(0);
                let h = self.horizon.unwrap_or(0);
                let ms = self.interval_ms.unwrap_or(0);
                if !(1..=MAX_WINDOW).contains(&w) {
                    return Err(field("window", format!("{w}: must be 1..={MAX_WINDOW}")));
                }
                if !(1..=MAX_HORIZON).contains(&h) {
                    return Err(field("horizon", format!("{h}: must be 1..={MAX_HORIZON}")));
                }
                if !(10..=3_600_000).contains(&ms) {
                    return Err(field("interval_ms", format!("{ms}: must be 10..=3600000")));
                }
                for f in &self.features {
                    if !FEATURES.contains(&f.name.as_str()) {
                        return Err(field(
                            "features",
                            format!(
                                "unknown feature {:?}; this build computes {}",
                                f.name,
                                FEATURES.join(", ")
                            ),
                        ));
                    }
                }
            }
            ModelKind::Request => {
                let hb = self.hash_buckets.unwrap_or(0);
                if !(1..=MAX_HASH_BUCKETS).contains(&hb) {
                    return Err(field(
                        "hash_buckets",
                        format!("{hb}: must be 1..={MAX_HASH_BUCKETS}"),
                    ));
                }
                for f in &self.features {
                    if !request_feature_known(&f.name, hb) {
                        return Err(field(
                            "features",
                            format!(
                                "unknown per-request feature {:?} (models/CONTRACT.md lists the vocabulary)",
                                f.name
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `name` is in the per-request vocabulary of models/CONTRACT.md.
pub fn request_feature_known(name: &str, hash_buckets: usize) -> bool {
    const FIXED: [&str; 7] = [
        "profile_runs",
        "input_files",
        "input_bytes_total",
        "input_bytes_max",
        "argv_count",
        "uid_root",
        "node_cpu_busy",
    ];
    if FIXED.contains(&name) || name == "node_mem_available" {
        return true;
    }
    let indexed = |prefix: &str, n: usize| {
        name.strip_prefix(prefix)
            .and_then(|k| k.parse::<usize>().ok())
            .is_some_and(|k| k < n && name.len() == prefix.len() + k.to_string().len())
    };
    if indexed("argv_hash_", hash_buckets)
        || indexed("parent_hash_", 8)
        || indexed("cgroup_hash_", 8)
    {
        return true;
    }
    if let Some(rest) = name.strip_prefix("profile_") {
        for o in OUTCOMES.iter().copied().chain(["input_bytes"]) {
            if let Some(tail) = rest.strip_prefix(o).and_then(|t| t.strip_prefix('_')) {
                if ["p10", "p50", "p90"].contains(&tail) {
                    return true;
                }
                if tail == "per_mib_p50" && o != "input_bytes" {
                    return true;
                }
            }
        }
    }
    false
}

/// The `metadata_props` of an ONNX file (a protobuf `ModelProto`), read without the model
/// runtime. Walks the top-level fields, so a truncated or foreign file is told apart from
/// an ONNX one.
pub fn onnx_metadata(origin: &str, bytes: &[u8]) -> Result<Vec<(String, String)>, SchemaError> {
    let bad = |what: String| SchemaError::NotOnnx {
        origin: origin.into(),
        what,
    };
    if bytes.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    let mut props = Vec::new();
    let mut graph = false;
    let mut ir_version = false;
    let mut r = Proto::new(bytes);
    while !r.done() {
        let at = r.at;
        let (field, wire) = r
            .key()
            .ok_or_else(|| bad(format!("no protobuf field at byte {at}")))?;
        match (field, wire) {
            (1, 0) => {
                r.varint()
                    .ok_or_else(|| bad(format!("ir_version cut at byte {at}")))?;
                ir_version = true;
            }
            (7, 2) => {
                r.bytes().ok_or_else(|| {
                    bad(format!("the graph at byte {at} is cut short: truncated?"))
                })?;
                graph = true;
            }
            (14, 2) => {
                let entry = r.bytes().ok_or_else(|| {
                    bad(format!("metadata at byte {at} is cut short: truncated?"))
                })?;
                let (mut k, mut v) = (String::new(), String::new());
                let mut e = Proto::new(entry);
                while !e.done() {
                    match e.key() {
                        Some((1, 2)) => {
                            k = e.string().ok_or_else(|| bad("bad metadata key".into()))?
                        }
                        Some((2, 2)) => {
                            v = e.string().ok_or_else(|| bad("bad metadata value".into()))?
                        }
                        Some((_, w)) => {
                            e.skip(w).ok_or_else(|| bad("bad metadata entry".into()))?;
                        }
                        None => return Err(bad("bad metadata entry".into())),
                    }
                }
                props.push((k, v));
            }
            (f, w) if (1..=64).contains(&f) => {
                r.skip(w).ok_or_else(|| {
                    bad(format!("field {f} at byte {at} is cut short: truncated?"))
                })?;
            }
            (f, _) => {
                return Err(bad(format!(
                    "field {f} at byte {at} is not an ONNX model's"
                )));
            }
        }
    }
    if !ir_version {
        return Err(bad("no ir_version".into()));
    }
    if !graph {
        return Err(bad("no graph: truncated?".into()));
    }
    Ok(props)
}

/// A protobuf reader over a byte slice.
struct Proto<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Proto<'a> {
    fn new(b: &'a [u8]) -> Self {
        Proto { b, at: 0 }
    }

    fn done(&self) -> bool {
        self.at >= self.b.len()
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.at)?;
            self.at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn key(&mut self) -> Option<(u64, u8)> {
        let k = self.varint()?;
        Some((k >> 3, (k & 7) as u8))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        let end = self.at.checked_add(len)?;
        let s = self.b.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn string(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn skip(&mut self, wire: u8) -> Option<()> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                let end = self.at.checked_add(n)?;
                (end <= self.b.len()).then(|| self.at = end)
            }
            2 => self.bytes().map(|_| ()),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;

    use super::*;

    pub(crate) fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/onnx")
            .join(name)
    }

    #[test]
    fn the_f32_exp_m1_is_within_a_few_ulp_of_libm_and_the_inverse_of_forward() {
        // Every 1/1024 from −30 to 30 (a model's standardised output, scaled back, lies
        // well inside), near 0 where `eˣ − 1` cancels, and past the clamps.
        let mut worst: f64 = 0.0;
        for i in -30 * 1024..=30 * 1024 {
            let x = i as f32 / 1024.0;
            let want = (x as f64).exp_m1();
            let got = exp_m1_f32(x) as f64;
            worst = worst.max((got - want).abs() / want.abs().max(f64::MIN_POSITIVE));
        }
        assert!(worst < 5e-7, "relative error {worst:e}");
        for x in [1e-7f32, -1e-7, 1e-3, -1e-3, 0.0] {
            let want = (x as f64).exp_m1();
            let got = exp_m1_f32(x) as f64;
            assert!(
                (got - want).abs() <= 2e-7 * want.abs(),
                "{x}: {got} vs {want}"
            );
        }
        assert!(exp_m1_f32(200.0).is_finite() && exp_m1_f32(-200.0) == -1.0);
        let sc = Scaled {
            name: "memory".into(),
            transform: Transform::Log1p,
            mean: 17.5,
            std: 2.25,
        };
        let vs = [0.0, 1e-4, 0.01, 1.0, 4096.0, 1.5e9, 3e11];
        let mut ys: Vec<f32> = vs.iter().map(|v| sc.forward(*v) as f32).collect();
        ys.push(-40.0);
        let scalar: Vec<f64> = ys.iter().map(|y| sc.inverse(*y as f64)).collect();
        sc.inverse_in_place(&mut ys);
        for ((v, y), want) in vs.iter().zip(&ys).zip(&scalar) {
            let y = *y as f64;
            assert!(
                (y - want).abs() <= 1e-6 * want + 1e-12,
                "{v}: {y} vs {want}"
            );
            assert!((y - v).abs() <= 4e-6 * (1.0 + v), "{v} came back as {y}");
        }
        assert_eq!(ys[vs.len()], 0.0, "clamped at 0");
    }

    fn schema_json(f: impl FnOnce(&mut serde_json::Value)) -> String {
        let bytes = std::fs::read(fixture("forecast_fixture.onnx")).unwrap();
        let props = onnx_metadata("x", &bytes).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&props[0].1).unwrap();
        f(&mut v);
        v.to_string()
    }

    #[test]
    fn the_fixture_schema_is_read_from_the_onnx_file_and_checks() {
        let bytes = std::fs::read(fixture("forecast_fixture.onnx")).unwrap();
        let s = Schema::of_onnx("forecast_fixture.onnx", &bytes).unwrap();
        assert_eq!(s.kind, ModelKind::Forecast);
        assert_eq!(
            (s.window, s.horizon, s.interval_ms),
            (Some(4), Some(3), Some(2000))
        );
        assert_eq!(s.input_width(), 4 * 6);
        assert_eq!(s.output_width(), 4 * 3 * 3);
        let r = Schema::of_onnx(
            "r",
            &std::fs::read(fixture("request_fixture.onnx")).unwrap(),
        )
        .unwrap();
        assert_eq!(r.kind, ModelKind::Request);
        assert_eq!(r.output_width(), 12);
    }

    #[test]
    fn truncated_and_foreign_files_are_not_onnx_and_say_so() {
        let bytes = std::fs::read(fixture("forecast_fixture.onnx")).unwrap();
        for cut in [1, 10, bytes.len() / 2, bytes.len() - 1] {
            let e = Schema::of_onnx("m.onnx", &bytes[..cut]).unwrap_err();
            assert!(
                matches!(e, SchemaError::NotOnnx { .. } | SchemaError::Missing { .. }),
                "cut {cut}: {e}"
            );
            assert!(e.to_string().contains("m.onnx"), "{e}");
        }
        for junk in [&b""[..], b"PK\x03\x04zipfile", b"{\"json\": true}", b"\x08"] {
            let e = Schema::of_onnx("junk.bin", junk).unwrap_err();
            assert!(matches!(e, SchemaError::NotOnnx { .. }), "{junk:?}: {e}");
        }
    }

    #[test]
    fn schemas_this_build_cannot_honour_name_the_field() {
        let cases: Vec<(String, &str)> = vec![
            (schema_json(|v| v["schema_version"] = 2.into()), "version 2"),
            (
                schema_json(|v| v["features"][0]["name"] = "gpu_util".into()),
                "unknown feature \"gpu_util\"",
            ),
            (
                schema_json(|v| {
                    v["targets"].as_array_mut().unwrap().pop();
                }),
                "`targets`",
            ),
            (
                schema_json(|v| v["quantiles"] = serde_json::json!([0.5, 0.9])),
                "must include 0.1",
            ),
            (
                schema_json(|v| v["quantiles"] = serde_json::json!([0.1, 0.9, 0.5])),
                "increasing",
            ),
            (schema_json(|v| v["window"] = 0.into()), "`window`"),
            (
                schema_json(|v| v["features"][1]["std"] = 0.into()),
                "std > 0",
            ),
            (
                schema_json(|v| v["features"][1]["transform"] = "sqrt".into()),
                "not valid JSON for the contract",
            ),
            (
                schema_json(|v| v["kind"] = "classifier".into()),
                "unknown variant",
            ),
        ];
        for (json, expect) in cases {
            let e = Schema::parse("m.onnx", &json)
                .and_then(|s| s.check("m.onnx").map(|()| s))
                .unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("m.onnx") && msg.contains(expect),
                "{expect}: {msg}"
            );
        }
    }

    #[test]
    fn the_request_vocabulary_follows_the_contract() {
        for ok in [
            "profile_runs",
            "profile_cpu_seconds_p10",
            "profile_io_bytes_p90",
            "profile_input_bytes_p50",
            "profile_peak_rss_bytes_per_mib_p50",
            "argv_hash_15",
            "parent_hash_7",
            "cgroup_hash_0",
            "node_mem_available",
        ] {
            assert!(request_feature_known(ok, 16), "{ok}");
        }
        for bad in [
            "argv_hash_16",
            "argv_hash_01",
            "parent_hash_8",
            "profile_input_bytes_per_mib_p50",
            "profile_cpu_seconds_p95",
            "exe",
        ] {
            assert!(!request_feature_known(bad, 16), "{bad}");
        }
    }

    #[test]
    fn scaling_round_trips_and_clamps() {
        let s = Scaled {
            name: "x".into(),
            transform: Transform::Log1p,
            mean: 2.0,
            std: 3.0,
        };
        for v in [0.0, 0.5, 1e6] {
            assert!((s.inverse(s.forward(v)) - v).abs() < 1e-6 * (1.0 + v));
        }
        assert_eq!(s.forward(-5.0), s.forward(0.0));
        assert_eq!(s.inverse(-100.0), 0.0);
    }

    proptest::proptest! {
        #[test]
        fn the_metadata_reader_never_panics(bytes in proptest::collection::vec(0u8..=255, 0..512)) {
            let _ = onnx_metadata("x", &bytes);
            let mut framed = vec![0x08, 0x08];
            framed.extend_from_slice(&bytes);
            let _ = Schema::of_onnx("x", &framed);
        }
    }
}
