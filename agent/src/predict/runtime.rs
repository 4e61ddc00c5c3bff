//! The model runtime behind a narrow trait: bytes in, a session that maps `[N, in]` rows of
//! `float32` to `[N, out]`. The real one is tract (`onnx` feature); tests use fakes, so the
//! predictors' logic (scaling, sorting, fallback) is tested without a model file.

use super::schema::Schema;

/// A loaded model, ready to run batches.
pub trait Session: Send {
    /// Runs `rows` rows of `x` (row-major, `rows · in` values); `out` is replaced with
    /// `rows · out` values.
    fn run(&mut self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<(), String>;
}

/// Loads a model's bytes for the tensors its schema declares.
pub trait Runtime: Send + Sync {
    fn name(&self) -> &'static str;
    /// A session over `bytes`, with input `schema.input` of `[N, input_width]` and output
    /// `schema.output` of `[N, output_width]` (checked at load).
    fn load(&self, bytes: &[u8], schema: &Schema) -> Result<Box<dyn Session>, String>;
}

/// This build's runtime: tract, or none when built without the `onnx` feature.
pub fn default_runtime() -> Box<dyn Runtime> {
    #[cfg(feature = "onnx")]
    {
        Box::new(tract::Tract)
    }
    #[cfg(not(feature = "onnx"))]
    {
        Box::new(NoRuntime)
    }
}

/// A build without a model runtime: every load is refused, saying why.
pub struct NoRuntime;

impl Runtime for NoRuntime {
    fn name(&self) -> &'static str {
        "none"
    }
    fn load(&self, _: &[u8], _: &Schema) -> Result<Box<dyn Session>, String> {
        Err("this umbra was built without the model runtime (cargo feature `onnx`)".into())
    }
}

/// The batch size a run of `rows` rows is planned for: its own up to 8, else the next
/// power of two or three quarters of one — at most half as many padding rows as rows, and
/// few distinct sizes as the number of workloads drifts.
pub fn planned_rows(rows: usize) -> usize {
    if rows <= 8 {
        return rows.max(1);
    }
    let p = rows.next_power_of_two();
    if rows <= p / 4 * 3 { p / 4 * 3 } else { p }
}

#[cfg(feature = "onnx")]
pub mod tract {
    //! tract-onnx: the model is typed with a symbolic batch `N` and decluttered once, then
    //! planned for concrete batch sizes ([`planned_rows`](super::planned_rows)) as they are
    //! needed, the most recent few kept. A plan for a known batch size runs 1.8× faster
    //! than the symbolic one at 1,000 rows (its shapes are known when it is optimised);
    //! rows up to the planned size are zeros, and their outputs dropped.

    use std::collections::HashMap;

    use tract_onnx::{prelude::*, tract_core::internal::bail};

    use super::{Schema, Session, planned_rows};

    /// Plans kept, one per batch size (each ~its weights, packed; 3–8 ms to make).
    const PLANS: usize = 3;

    pub struct Tract;

    struct TractSession {
        typed: TypedModel,
        batch: Symbol,
        /// Most recently used first.
        plans: Vec<(usize, TypedSimpleState)>,
        width: usize,
        padded: Vec<f32>,
    }

    fn load(bytes: &[u8], schema: &Schema) -> TractResult<TractSession> {
        let mut model = tract_onnx::onnx().model_for_read(&mut &bytes[..])?;
        let inputs = model.input_outlets()?.to_vec();
        let outputs = model.output_outlets()?.to_vec();
        if inputs.len() != 1 || outputs.len() != 1 {
            bail!(
                "the model has {} inputs and {} outputs; the contract has one of each",
                inputs.len(),
                outputs.len()
            );
        }
        let in_name = model.node(inputs[0].node).name.clone();
        let out_name = model
            .outlet_label(outputs[0])
            .unwrap_or(&model.node(outputs[0].node).name)
            .to_string();
        if in_name != schema.input || out_name != schema.output {
            bail!(
                "tensors are {in_name:?} → {out_name:?}; the schema says {:?} → {:?}",
                schema.input,
                schema.output
            );
        }
        let n = model.sym("N");
        model.set_input_fact(
            0,
            f32::fact([n.to_dim(), schema.input_width().to_dim()]).into(),
        )?;
        let typed = model.into_typed()?.into_decluttered()?;
        let fact = typed.output_fact(0)?;
        let want = [n.to_dim(), schema.output_width().to_dim()];
        if fact.datum_type != f32::datum_type() || fact.shape.dims() != want {
            bail!(
                "output is {:?} {:?}; the schema needs float32 [N, {}]",
                fact.datum_type,
                fact.shape,
                schema.output_width()
            );
        }
        let mut s = TractSession {
            typed,
            batch: n,
            plans: Vec::new(),
            width: schema.input_width(),
            padded: Vec::new(),
        };
        // One plan now: a model tract cannot optimise is refused at load, not at a tick.
        s.plan(1)?;
        Ok(s)
    }

    impl TractSession {
        /// The plan for batches of `size` rows, made if missing, moved to the front.
        fn plan(&mut self, size: usize) -> TractResult<&mut TypedSimpleState> {
            match self.plans.iter().position(|(n, _)| *n == size) {
                Some(i) => {
                    let p = self.plans.remove(i);
                    self.plans.insert(0, p);
                }
                None => {
                    let subs = HashMap::from([(self.batch.clone(), (size as i64).to_dim())]);
                    let plan = self
                        .typed
                        .set_symbols(&subs)?
                        .into_optimized()?
                        .into_runnable()?;
                    self.plans.insert(0, (size, plan.spawn()?));
                    self.plans.truncate(PLANS);
                }
            }
            Ok(&mut self.plans[0].1)
        }
    }

    impl super::Runtime for Tract {
        fn name(&self) -> &'static str {
            "tract"
        }
        fn load(&self, bytes: &[u8], schema: &Schema) -> Result<Box<dyn Session>, String> {
            load(bytes, schema)
                .map(|s| Box::new(s) as Box<dyn Session>)
                .map_err(|e| format!("{e:#}"))
        }
    }

    impl Session for TractSession {
        fn run(&mut self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<(), String> {
            let mut run = || -> TractResult<()> {
                let size = planned_rows(rows);
                let width = self.width;
                let t = if size == rows {
                    Tensor::from_shape(&[rows, width], x)?
                } else {
                    self.padded.clear();
                    self.padded.extend_from_slice(x);
                    self.padded.resize(size * width, 0.0);
                    Tensor::from_shape(&[size, width], &self.padded)?
                };
                let r = self.plan(size)?.run(tvec![t.into_tvalue()])?;
                let view = r[0].try_as_plain_ram()?;
                let s = view.as_slice::<f32>()?;
                let keep = s.len() / size * rows;
                out.clear();
                out.extend_from_slice(&s[..keep]);
                Ok(())
            };
            run().map_err(|e| format!("{e:#}"))
        }
    }
}

/// A runtime of functions, for tests: `f(row) → outputs`.
#[cfg(test)]
pub struct Fake<F>(pub F);

#[cfg(test)]
struct FakeSession<F> {
    f: F,
    width: usize,
}

#[cfg(test)]
impl<F: Fn(&[f32]) -> Vec<f32> + Clone + Send + Sync + 'static> Runtime for Fake<F> {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn load(&self, _: &[u8], schema: &Schema) -> Result<Box<dyn Session>, String> {
        Ok(Box::new(FakeSession {
            f: self.0.clone(),
            width: schema.input_width(),
        }))
    }
}

#[cfg(test)]
impl<F: Fn(&[f32]) -> Vec<f32> + Send> Session for FakeSession<F> {
    fn run(&mut self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<(), String> {
        out.clear();
        for r in 0..rows {
            out.extend((self.f)(&x[r * self.width..(r + 1) * self.width]));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_batch_is_planned_for_at_most_half_again_its_rows() {
        assert_eq!(planned_rows(0), 1);
        for rows in 1..=8 {
            assert_eq!(planned_rows(rows), rows);
        }
        assert_eq!(planned_rows(9), 12);
        assert_eq!(planned_rows(13), 16);
        assert_eq!(planned_rows(1000), 1024);
        for rows in 1..5000 {
            let p = planned_rows(rows);
            assert!(p >= rows && 2 * p <= 3 * rows + 2, "{rows} → {p}");
        }
        // Few sizes as the workloads drift between 100 and 200.
        let sizes: std::collections::BTreeSet<usize> = (100..=200).map(planned_rows).collect();
        assert_eq!(sizes.into_iter().collect::<Vec<_>>(), [128, 192, 256]);
    }

    /// Each row's outputs are the same whether it runs alone or in a padded batch, through
    /// plans made and dropped as batch sizes come and go.
    #[cfg(feature = "onnx")]
    #[test]
    fn the_shipped_forecaster_gives_each_row_the_same_outputs_in_any_batch() {
        use crate::predict::{onnx::Model, schema::ModelKind, source::shipped};
        let Some(bytes) = shipped::FORECAST else {
            return;
        };
        let rt = default_runtime();
        let mut m = Model::load("forecast.onnx", bytes, ModelKind::Forecast, rt.as_ref()).unwrap();
        let (inw, outw) = (m.schema.input_width(), m.schema.output_width());
        let x: Vec<f32> = (0..40 * inw)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let mut alone = Vec::new();
        let mut out = Vec::new();
        for r in 0..40 {
            m.run(&x[r * inw..(r + 1) * inw], 1, &mut out).unwrap();
            alone.extend_from_slice(&out);
        }
        for rows in [40, 9, 13, 5, 40, 27, 33] {
            m.run(&x[..rows * inw], rows, &mut out).unwrap();
            assert_eq!(out.len(), rows * outw, "{rows} rows");
            for (i, (a, b)) in out.iter().zip(&alone).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{rows} rows: output {i} is {a} in the batch, {b} alone"
                );
            }
        }
    }
}
