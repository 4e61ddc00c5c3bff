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

#[cfg(feature = "onnx")]
pub mod tract {
    //! tract-onnx: the model is typed with a symbolic batch `N`, decluttered, optimised
    //! and planned once; one state is spawned and reused for every batch.

    use tract_onnx::{prelude::*, tract_core::internal::bail};

    use super::{Schema, Session};
    use crate::predict::tract_ops;

    pub struct Tract;

    struct TractSession {
        state: TypedSimpleState,
        width: usize,
        /// The last batch's input tensor, written again in place when tract has let go of
        /// it and the batch is as large: a fresh one each run was a new 720 KB allocation
        /// (1,000 rows) that the kernel zero-filled page by page.
        input: Arc<Tensor>,
    }

    fn load(bytes: &[u8], schema: &Schema) -> TractResult<TractSession> {
        let framework = tract_ops::onnx();
        let proto = framework.proto_model_for_read(&mut &bytes[..])?;
        if let Some(op) = tract_ops::unsupported(&proto) {
            bail!(
                "the model uses the ONNX operator {op:?}, which this agent does not run (it \
                 runs {}); export it with the operators of models/",
                tract_ops::OPERATORS.join(", ")
            );
        }
        let mut model = framework.model_for_proto_model(&proto)?;
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
        let mut optimised = typed.into_optimized()?;
        tract_ops::specialise(&mut optimised)?;
        let plan = optimised.into_runnable()?;
        Ok(TractSession {
            state: plan.spawn()?,
            width: schema.input_width(),
            input: Arc::new(Tensor::zero::<f32>(&[0, schema.input_width()])?),
        })
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
                let shape = [rows, self.width];
                if x.len() != rows * self.width {
                    bail!("{} inputs for {rows} rows of {}", x.len(), self.width);
                }
                match Arc::get_mut(&mut self.input) {
                    Some(t) if t.shape() == shape => {
                        t.try_as_plain_ram_mut()?
                            .as_slice_mut::<f32>()?
                            .copy_from_slice(x);
                    }
                    _ => self.input = Arc::new(Tensor::from_shape(&shape, x)?),
                }
                let r = self.state.run(tvec![self.input.clone().into_tvalue()])?;
                let view = r[0].try_as_plain_ram()?;
                let s = view.as_slice::<f32>()?;
                out.clear();
                out.extend_from_slice(s);
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
