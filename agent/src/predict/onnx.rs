//! The ONNX forecaster: a model file checked against this build's schema at load, then one
//! batched run per closed bucket for every workload.
//!
//! Per models/CONTRACT.md: input `x` `[N, window · F]` (step 0 the oldest, features in the
//! schema's order, each transformed and standardised), output `q` `[N, T · H · Q]`
//! (inverse-transformed and clamped at ≥ 0). Quantiles that cross are sorted and counted;
//! a row with a non-finite feature or output is forecast by the last-value baseline from
//! its own window instead (counted), so the stage never emits garbage.

use super::{
    Band, Batch, Bucket, Forecast, LEVELS, Predictor, PredictorKind, Series, Target,
    baseline::LastValue,
    features::{N_FEATURES, feature_index},
    runtime::{Runtime, Session},
    schema::{ModelKind, Schema, SchemaError},
};

/// Rows per run at most (the batch is run in chunks beyond it, to bound memory).
pub const MAX_ROWS_PER_RUN: usize = 4096;

/// Why a model was not loaded. Each names the model's origin (its file, or the fleet
/// update and where it is stored).
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum LoadError {
    #[error("{origin}: {message}")]
    Read { origin: String, message: String },
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("{origin} is a {found} model; a {wanted} model is needed here")]
    Kind {
        origin: String,
        found: &'static str,
        wanted: &'static str,
    },
    #[error("{origin}: the model runtime refused it: {message}")]
    Runtime { origin: String, message: String },
    #[error("{origin}: the model gives non-finite (NaN or infinite) outputs on a probe input")]
    NotFinite { origin: String },
    #[error("{origin}: {why}")]
    Unusable { origin: String, why: String },
}

/// What a model has done since it was loaded (for status and `umbra eval`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelStats {
    pub batches: u64,
    pub rows: u64,
    /// (row, target, step) whose quantiles crossed and were sorted.
    pub crossed: u64,
    /// Rows forecast by the fallback: a non-finite feature or output.
    pub fallback_rows: u64,
    /// Runs the runtime failed (the whole batch fell back).
    pub run_errors: u64,
    pub last_error: Option<String>,
}

/// The loaded model: its schema and a session.
pub struct Model {
    pub origin: String,
    pub schema: Schema,
    session: Box<dyn Session>,
}

impl Model {
    /// Checks `bytes` and loads them with `runtime`, for a model of `kind`.
    pub fn load(
        origin: &str,
        bytes: &[u8],
        kind: ModelKind,
        runtime: &dyn Runtime,
    ) -> Result<Model, LoadError> {
        let schema = Schema::of_onnx(origin, bytes)?;
        if schema.kind != kind {
            return Err(LoadError::Kind {
                origin: origin.into(),
                found: schema.kind.name(),
                wanted: kind.name(),
            });
        }
        let session = runtime
            .load(bytes, &schema)
            .map_err(|message| LoadError::Runtime {
                origin: origin.into(),
                message,
            })?;
        let mut m = Model {
            origin: origin.into(),
            schema,
            session,
        };
        // A probe: the standardised means (all zeros) must give finite outputs.
        let x = vec![0.0f32; m.schema.input_width()];
        let mut out = Vec::new();
        m.run(&x, 1, &mut out)
            .map_err(|message| LoadError::Runtime {
                origin: origin.into(),
                message,
            })?;
        if out.iter().any(|v| !v.is_finite()) {
            return Err(LoadError::NotFinite {
                origin: origin.into(),
            });
        }
        Ok(m)
    }

    /// Runs rows, checking the output's length.
    pub fn run(&mut self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<(), String> {
        self.session.run(x, rows, out)?;
        let want = rows * self.schema.output_width();
        if out.len() != want {
            return Err(format!(
                "the model gave {} values for {rows} rows; the schema says {want}",
                out.len()
            ));
        }
        Ok(())
    }

    /// `model_version` of the schema.
    pub fn version(&self) -> &str {
        &self.schema.model_version
    }
}

/// Sorts `qs` if it is not increasing; whether it was.
#[inline]
pub fn sort_crossed(qs: &mut [f32]) -> bool {
    if qs.windows(2).all(|w| w[0] <= w[1]) {
        return false;
    }
    // A handful of quantiles: insertion sort (the slice sort's setup costs more).
    for i in 1..qs.len() {
        let mut j = i;
        while j > 0 && qs[j - 1].total_cmp(&qs[j]).is_gt() {
            qs.swap(j - 1, j);
            j -= 1;
        }
    }
    true
}

/// The ONNX forecaster, behind [`Predictor`].
pub struct OnnxForecaster {
    name: String,
    model: Model,
    /// Index in the bucket vocabulary of each schema feature.
    features: Vec<usize>,
    window: usize,
    horizon: usize,
    /// Positions of 0.1, 0.5 and 0.9 in the schema's quantiles.
    levels: [usize; 3],
    fallback: LastValue,
    x: Vec<f32>,
    out: Vec<f32>,
    /// One run's outputs, before they join `out` (kept: 288 KB at 1,000 rows).
    chunk: Vec<f32>,
    /// Each workload's window as last transformed, kept between batches: a closed
    /// bucket does not change, so it is transformed once, not once per window it is in.
    steps: crate::FastMap<crate::aggregate::WorkloadId, Steps>,
    scratch: Vec<Step>,
    pub stats: ModelStats,
}

/// A workload's transformed window, oldest first, and the batch that last saw it.
#[derive(Default)]
struct Steps {
    steps: Vec<Step>,
    batch: u64,
}

/// One bucket's model inputs: its end, a fingerprint of its raw features (reused only
/// when both match), whether they were all finite, the transformed values.
#[derive(Clone, Copy)]
struct Step {
    end_ms: u64,
    key: u64,
    finite: bool,
    row: [f32; N_FEATURES],
}

impl OnnxForecaster {
    /// A forecaster of a loaded model (checked to be a forecaster).
    pub fn new(model: Model) -> Result<OnnxForecaster, LoadError> {
        let s = &model.schema;
        let unusable = |why: String| LoadError::Unusable {
            origin: model.origin.clone(),
            why,
        };
        if s.kind != ModelKind::Forecast {
            return Err(LoadError::Kind {
                origin: model.origin.clone(),
                found: s.kind.name(),
                wanted: "forecast",
            });
        }
        let features = s
            .features
            .iter()
            .map(|f| feature_index(&f.name).ok_or_else(|| unusable(format!("feature {}", f.name))))
            .collect::<Result<Vec<_>, _>>()?;
        let level = |q: f64| {
            s.quantile_index(q)
                .ok_or_else(|| unusable(format!("no quantile {q}")))
        };
        let levels = [level(LEVELS[0])?, level(LEVELS[1])?, level(LEVELS[2])?];
        let (window, horizon) = (s.window.unwrap_or(1), s.horizon.unwrap_or(1));
        Ok(OnnxForecaster {
            name: format!("onnx:{}", s.model_version),
            features,
            window,
            horizon,
            levels,
            fallback: LastValue::new(horizon, window),
            x: Vec::new(),
            out: Vec::new(),
            chunk: Vec::new(),
            steps: crate::FastMap::default(),
            scratch: Vec::new(),
            stats: ModelStats::default(),
            model,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn interval_ms(&self) -> u64 {
        self.model.schema.interval_ms.unwrap_or(0)
    }

    /// Writes one series' row into `x`; false when a feature is not finite. Buckets
    /// transformed in an earlier batch are copied, not transformed again.
    fn featurize(&mut self, s: &Series<'_>, now_ms: u64, interval_ms: u64, x: &mut [f32]) -> bool {
        let batch = self.stats.batches;
        let kept = match self.steps.get_mut(s.workload) {
            Some(k) => k,
            None => self.steps.entry(s.workload.clone()).or_default(),
        };
        kept.batch = batch;
        let (features, scaled) = (&self.features, &self.model.schema.features);
        let f_n = features.len();
        let n = s.buckets.len();
        let new = &mut self.scratch;
        new.clear();
        let mut old = kept.steps.iter().peekable();
        let mut finite = true;
        for step in 0..self.window {
            // Step 0 is the oldest; a series shorter than the window is padded with
            // absent buckets before it.
            let back = self.window - 1 - step;
            let pad;
            let b: &Bucket = if back < n {
                &s.buckets[n - 1 - back]
            } else {
                pad = Bucket::absent(now_ms.saturating_sub(back as u64 * interval_ms));
                &pad
            };
            let key = features.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &fi| {
                (h ^ u64::from(b.features[fi].to_bits())).wrapping_mul(0x0100_0000_01b3)
            });
            while old.next_if(|o| o.end_ms < b.end_ms).is_some() {}
            let st = match old.peek() {
                Some(o) if o.end_ms == b.end_ms && o.key == key => **o,
                _ => {
                    let mut st = Step {
                        end_ms: b.end_ms,
                        key,
                        finite: true,
                        row: [0.0; N_FEATURES],
                    };
                    for (j, (&fi, sc)) in features.iter().zip(scaled).enumerate() {
                        let v = b.features[fi] as f64;
                        st.finite &= v.is_finite();
                        st.row[j] = sc.forward(v) as f32;
                    }
                    st
                }
            };
            finite &= st.finite;
            x[step * f_n..(step + 1) * f_n].copy_from_slice(&st.row[..f_n]);
            new.push(st);
        }
        std::mem::swap(&mut kept.steps, new);
        finite
    }
}

impl Predictor for OnnxForecaster {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> PredictorKind {
        PredictorKind::Model
    }
    fn horizon(&self) -> usize {
        self.horizon
    }
    fn history(&self) -> usize {
        self.window
    }
    fn model_stats(&self) -> Option<&ModelStats> {
        Some(&self.stats)
    }

    fn forecast(&mut self, b: &Batch<'_>) -> Vec<Forecast> {
        let rows = b.series.len();
        let (inw, outw) = (
            self.model.schema.input_width(),
            self.model.schema.output_width(),
        );
        let (h_n, q_n) = (self.horizon, self.model.schema.quantiles.len());
        self.stats.batches += 1;
        self.stats.rows += rows as u64;
        let mut good = vec![true; rows];
        let mut x = std::mem::take(&mut self.x);
        x.clear();
        x.resize(rows * inw, 0.0);
        for (r, s) in b.series.iter().enumerate() {
            let row = &mut x[r * inw..(r + 1) * inw];
            if !self.featurize(s, b.now_ms, b.interval_ms as u64, row) {
                good[r] = false;
                row.fill(0.0);
            }
        }
        // Workloads not in this batch are forgotten (kept windows are only a shortcut).
        let batch = self.stats.batches;
        self.steps.retain(|_, k| k.batch == batch);
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let mut chunk = std::mem::take(&mut self.chunk);
        let mut failed = None;
        for start in (0..rows).step_by(MAX_ROWS_PER_RUN) {
            let n = MAX_ROWS_PER_RUN.min(rows - start);
            match self
                .model
                .run(&x[start * inw..(start + n) * inw], n, &mut chunk)
            {
                Ok(()) => out.extend_from_slice(&chunk),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            self.stats.run_errors += 1;
            self.stats.last_error = Some(e);
            good.fill(false);
            out.clear();
            out.resize(rows * outw, 0.0);
        }
        let mut forecasts = Vec::with_capacity(rows);
        let per_target = h_n * q_n;
        for (r, s) in b.series.iter().enumerate() {
            let row = &mut out[r * outw..(r + 1) * outw];
            if good[r] && row.iter().any(|v| !v.is_finite()) {
                good[r] = false;
            }
            let bands = if good[r] {
                // Quantiles in order, then a target's values back to its units at once.
                for (t, sc) in self.model.schema.targets.iter().enumerate().take(4) {
                    let values = &mut row[t * per_target..(t + 1) * per_target];
                    for qs in values.chunks_exact_mut(q_n) {
                        if sort_crossed(qs) {
                            self.stats.crossed += 1;
                        }
                    }
                    sc.inverse_in_place(values);
                }
                let row = &*row;
                let levels = self.levels;
                Target::ALL.map(|t| {
                    (0..h_n)
                        .map(|h| {
                            let at = (t as usize * h_n + h) * q_n;
                            Band {
                                p10: row[at + levels[0]] as f64,
                                p50: row[at + levels[1]] as f64,
                                p90: row[at + levels[2]] as f64,
                            }
                        })
                        .collect()
                })
            } else {
                Default::default()
            };
            forecasts.push(Forecast {
                workload: s.workload.clone(),
                made_ms: b.now_ms,
                interval_ms: b.interval_ms,
                predictor: self.name.clone(),
                bands,
            });
        }
        // Rows the model could not forecast: the last value from their own window.
        let bad: Vec<Series<'_>> = b
            .series
            .iter()
            .zip(&good)
            .filter(|(_, g)| !**g)
            .map(|(s, _)| *s)
            .collect();
        if !bad.is_empty() {
            self.stats.fallback_rows += bad.len() as u64;
            let sub = Batch {
                now_ms: b.now_ms,
                interval_ms: b.interval_ms,
                series: bad,
            };
            let mut fixed = self.fallback.forecast(&sub).into_iter();
            for (f, _) in forecasts.iter_mut().zip(&good).filter(|(_, g)| !**g) {
                if let Some(x) = fixed.next() {
                    *f = x;
                }
            }
        }
        self.x = x;
        self.out = out;
        self.chunk = chunk;
        forecasts
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{
        aggregate::WorkloadId,
        predict::{features::N_FEATURES, runtime::Fake, schema::tests::fixture},
    };

    fn bytes(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).unwrap()
    }

    /// Buckets with CPU `cpu`, RSS 1e8, read 1e4 B/s and net 10 B/s, present.
    fn buckets(cpus: &[f64]) -> Vec<Bucket> {
        cpus.iter()
            .enumerate()
            .map(|(i, &c)| {
                let mut f = [0.0f32; N_FEATURES];
                f[0] = c as f32;
                f[1] = 1e8;
                f[3] = 1e4;
                f[7] = 10.0;
                f[N_FEATURES - 1] = 1.0;
                Bucket {
                    end_ms: (i as u64 + 1) * 2000,
                    features: f,
                }
            })
            .collect()
    }

    fn batch<'a>(ids: &'a [WorkloadId], bs: &'a [Vec<Bucket>]) -> Batch<'a> {
        Batch {
            now_ms: bs[0].last().unwrap().end_ms,
            interval_ms: 2000,
            series: ids
                .iter()
                .zip(bs)
                .map(|(id, b)| Series {
                    workload: id,
                    name: "w",
                    buckets: b,
                })
                .collect(),
        }
    }

    /// The fixture's persistence: p50 is the newest value of each target's source
    /// feature; p10/p90 are ∓0.2 in its standardised space.
    #[cfg(feature = "onnx")]
    #[test]
    fn the_fixture_model_runs_through_tract_with_the_contracts_scaling() {
        let rt = crate::predict::runtime::default_runtime();
        let m = Model::load(
            "forecast_fixture.onnx",
            &bytes("forecast_fixture.onnx"),
            ModelKind::Forecast,
            rt.as_ref(),
        )
        .unwrap();
        let mut p = OnnxForecaster::new(m).unwrap();
        assert_eq!((p.history(), p.horizon()), (4, 3));
        let ids: Vec<WorkloadId> = (0..3).map(|i| WorkloadId(format!("w{i}"))).collect();
        let bs = vec![
            buckets(&[0.1, 0.2, 0.3, 0.5]),
            buckets(&[1.0, 1.0, 2.0, 3.0]),
            // Shorter than the window: padded with absent buckets.
            buckets(&[0.25]),
        ];
        let fs = p.forecast(&batch(&ids, &bs));
        assert_eq!(fs.len(), 3);
        let cpu = &p.model.schema.targets[0];
        for (f, last) in fs.iter().zip([0.5, 3.0, 0.25]) {
            assert_eq!(f.predictor, "onnx:fixture-1");
            for b in f.of(Target::Cpu) {
                assert!((b.p50 - last).abs() < 1e-4, "{b:?} vs {last}");
                let z = cpu.forward(last);
                assert!((b.p10 - cpu.inverse(z - 0.2)).abs() < 1e-4, "{b:?}");
                assert!((b.p90 - cpu.inverse(z + 0.2)).abs() < 1e-4, "{b:?}");
            }
            assert!((f.of(Target::Memory)[0].p50 - 1e8).abs() < 1e8 * 1e-5);
            assert!((f.of(Target::Io)[2].p50 - 1e4).abs() < 1e4 * 1e-5);
            assert!((f.of(Target::Net)[1].p50 - 10.0).abs() < 1e-3);
        }
        assert_eq!(p.stats.crossed, 0);
        assert_eq!(p.stats.fallback_rows, 0);
        assert_eq!(p.stats.batches, 1);
    }

    /// A batch larger than one run is forecast in several, each row as it would be alone.
    #[cfg(feature = "onnx")]
    #[test]
    fn a_batch_over_one_runs_rows_is_forecast_in_several_runs_row_for_row() {
        let rt = crate::predict::runtime::default_runtime();
        let load = || {
            let b = bytes("forecast_fixture.onnx");
            let m = Model::load("f.onnx", &b, ModelKind::Forecast, rt.as_ref()).unwrap();
            OnnxForecaster::new(m).unwrap()
        };
        let n = MAX_ROWS_PER_RUN + 3;
        let ids: Vec<WorkloadId> = (0..n).map(|i| WorkloadId(format!("w{i}"))).collect();
        let bs: Vec<Vec<Bucket>> = (0..n)
            .map(|i| buckets(&[0.1, (i % 97) as f64 * 0.01, (i % 13) as f64 * 0.1]))
            .collect();
        let fs = load().forecast(&batch(&ids, &bs));
        assert_eq!(fs.len(), n);
        let mut alone = load();
        for r in [0, 1, MAX_ROWS_PER_RUN - 1, MAX_ROWS_PER_RUN, n - 1] {
            let one = alone.forecast(&batch(&ids[r..=r], &bs[r..=r]));
            assert_eq!(fs[r], one[0], "row {r}");
        }
    }

    #[cfg(feature = "onnx")]
    #[test]
    fn bad_model_files_are_clear_errors_naming_the_file() {
        let rt = crate::predict::runtime::default_runtime();
        let load = |name: &str, b: &[u8]| {
            Model::load(name, b, ModelKind::Forecast, rt.as_ref())
                .err()
                .unwrap()
        };
        let good = bytes("forecast_fixture.onnx");
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "cut.onnx",
                good[..good.len() * 2 / 3].to_vec(),
                "not an ONNX model",
            ),
            ("text.onnx", b"hello, model".to_vec(), "not an ONNX model"),
            ("nan.onnx", bytes("forecast_nan.onnx"), "non-finite"),
            ("newer.onnx", bytes("forecast_newer.onnx"), "version 2"),
            (
                "unknown.onnx",
                bytes("forecast_unknown_feature.onnx"),
                "gpu_util",
            ),
            ("shape.onnx", bytes("forecast_bad_shape.onnx"), "[N, 36]"),
            (
                "erf.onnx",
                bytes("forecast_unsupported_op.onnx"),
                "the ONNX operator \"Erf\", which this agent does not run",
            ),
            (
                "request.onnx",
                bytes("request_fixture.onnx"),
                "a request model",
            ),
        ];
        for (name, b, expect) in cases {
            let e = load(name, &b).to_string();
            assert!(e.contains(name) && e.contains(expect), "{name}: {e}");
        }
    }

    #[cfg(feature = "onnx")]
    #[test]
    fn crossing_quantiles_are_sorted_and_counted() {
        let rt = crate::predict::runtime::default_runtime();
        let m = Model::load(
            "c",
            &bytes("forecast_crossing.onnx"),
            ModelKind::Forecast,
            rt.as_ref(),
        )
        .unwrap();
        let mut p = OnnxForecaster::new(m).unwrap();
        let ids = [WorkloadId("a".into())];
        let bs = [buckets(&[0.5; 4])];
        let f = p.forecast(&batch(&ids, &bs)).pop().unwrap();
        for t in Target::ALL {
            for b in f.of(t) {
                assert!(b.p10 < b.p50 && b.p50 < b.p90, "{t:?} {b:?}");
            }
        }
        // Every (row, target, step): 4 targets × 3 steps.
        assert_eq!(p.stats.crossed, 12);
    }

    /// A fake runtime standing in for the model: the schema of the fixture, outputs from
    /// a function of the row.
    fn fake(f: impl Fn(&[f32]) -> Vec<f32> + Clone + Send + Sync + 'static) -> OnnxForecaster {
        let m = Model::load(
            "fake.onnx",
            &bytes("forecast_fixture.onnx"),
            ModelKind::Forecast,
            &Fake(f),
        )
        .unwrap();
        OnnxForecaster::new(m).unwrap()
    }

    #[test]
    fn non_finite_features_or_outputs_fall_back_for_that_row_only() {
        // Output NaN when the row's newest CPU (z-space) is above 2, else zeros.
        let mut p = fake(|x: &[f32]| {
            let newest_cpu = x[3 * 6];
            vec![if newest_cpu > 2.0 { f32::NAN } else { 0.0 }; 36]
        });
        let ids: Vec<WorkloadId> = (0..3).map(|i| WorkloadId(format!("w{i}"))).collect();
        let mut inf = buckets(&[0.1; 4]);
        inf[2].features[1] = f32::INFINITY;
        let bs = vec![buckets(&[0.1; 4]), buckets(&[0.1, 0.1, 0.1, 50.0]), inf];
        let fs = p.forecast(&batch(&ids, &bs));
        assert_eq!(fs[0].predictor, "onnx:fixture-1");
        assert_eq!(fs[1].predictor, "last");
        assert_eq!(fs[2].predictor, "last");
        assert_eq!(p.stats.fallback_rows, 2);
        // The fallback is the last value, never garbage.
        assert!((fs[1].of(Target::Cpu)[0].p50 - 50.0).abs() < 1e-6);
        for f in &fs {
            for t in Target::ALL {
                assert_eq!(f.of(t).len(), 3);
                assert!(f.of(t).iter().all(|b| b.p90.is_finite() && b.p10 >= 0.0));
            }
        }
    }

    #[test]
    fn a_runtime_error_or_a_wrong_length_falls_back_for_the_batch_and_is_kept() {
        let e = Model::load(
            "short.onnx",
            &bytes("forecast_fixture.onnx"),
            ModelKind::Forecast,
            &Fake(|_: &[f32]| vec![0.0; 7]),
        )
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("short.onnx") && e.to_string().contains("gave 7 values"),
            "{e}"
        );
        // Right on the load's probe (zeros), wrong later: every row falls back.
        let mut p = fake(|x: &[f32]| {
            if x.iter().all(|v| *v == 0.0) {
                vec![0.0; 36]
            } else {
                vec![0.0; 7]
            }
        });
        let ids = [WorkloadId("a".into())];
        let bs = [buckets(&[0.3; 4])];
        let f = p.forecast(&batch(&ids, &bs));
        assert_eq!(f[0].predictor, "last");
        assert_eq!(p.stats.run_errors, 1);
        assert!(
            p.stats
                .last_error
                .as_deref()
                .unwrap()
                .contains("gave 7 values")
        );
    }

    #[test]
    fn features_are_standardised_in_schema_order_oldest_step_first() {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let mut p = fake(move |x: &[f32]| {
            s2.lock().unwrap().push(x.to_vec());
            vec![0.0; 36]
        });
        let ids = [WorkloadId("a".into())];
        let bs = [buckets(&[0.0, 1.0, 2.0, 3.0])];
        p.forecast(&batch(&ids, &bs));
        let x = seen.lock().unwrap().last().unwrap().clone();
        let cpu = &p.model.schema.features[0];
        for step in 0..4 {
            let want = cpu.forward(step as f64) as f32;
            assert!((x[step * 6] - want).abs() < 1e-6, "step {step}: {x:?}");
            // `present` (identity, mean 0.5, std 0.5): 1 → 1.
            assert_eq!(x[step * 6 + 4], 1.0);
        }
    }

    #[test]
    fn kept_windows_give_the_inputs_a_fresh_forecaster_would() {
        let inputs = |p: &mut OnnxForecaster, ids: &[WorkloadId], bs: &[Vec<Bucket>]| {
            let mut fresh = fake(|x: &[f32]| vec![0.0; 36 * (x.len() / 24)]);
            fresh.forecast(&batch(ids, bs));
            p.forecast(&batch(ids, bs));
            (fresh.x.clone(), p.x.clone())
        };
        let mut p = fake(|x: &[f32]| vec![0.0; 36 * (x.len() / 24)]);
        let ids = [WorkloadId("a".into()), WorkloadId("b".into())];
        let all: Vec<f64> = (0..12).map(|i| (i * 7 % 5) as f64 * 0.3).collect();
        // The windows slide one bucket a batch (the usual case: three of four kept).
        for end in 1..=all.len() {
            let bs = [buckets(&all[..end]), buckets(&all[end / 2..end])];
            let (want, got) = inputs(&mut p, &ids, &bs);
            assert_eq!(got, want, "after {end} buckets");
        }
        // A bucket of the same end with other values (a workload started over) is
        // transformed again, not taken from before; a workload gone is forgotten.
        let mut changed = buckets(&all);
        changed.last_mut().unwrap().features[0] = 9.0;
        let bs = [changed];
        let (want, got) = inputs(&mut p, &ids[..1], &bs);
        assert_eq!(got, want);
        assert_eq!(p.steps.len(), 1);
    }

    #[test]
    fn sorting_reports_crossings() {
        let mut a = [1.0, 2.0, 3.0];
        assert!(!sort_crossed(&mut a));
        let mut b = [3.0, 1.0, 2.0];
        assert!(sort_crossed(&mut b));
        assert_eq!(b, [1.0, 2.0, 3.0]);
    }
}
