//! The ONNX operators this agent runs: those the models of `models/` are made of, and a few
//! element-wise ones beside them — not all of tract-onnx's (convolutions, recurrent
//! layers, FFTs, quantisation, resizing…). Their builders are referenced from the registry
//! whether a model uses them or not, so the full set kept ~2.5 MB of code in the edge
//! binary that no forecaster runs. A model with another operator is refused at load,
//! naming it ([`unsupported`]).
//!
//! Each builder does what tract-onnx 0.23's does for that operator, with tract's own
//! operators; Gemm is its expansion written out here, since tract-onnx keeps it private.
//! <https://github.com/sonos/tract/blob/main/onnx/src/ops/math/gemm.rs>

use tract_onnx::{
    model::{OnnxOpRegister, ParsingContext},
    pb::{ModelProto, NodeProto},
    prelude::*,
    tract_core::ops::{
        binary::{BinMiniOp, TypedBinOp},
        einsum::EinSum,
    },
    tract_hir::{
        internal::*,
        ops::{self, binary::Nary},
    },
};

/// The operators registered by [`onnx`], by their ONNX names.
pub const OPERATORS: &[&str] = &[
    "Add", "Constant", "Div", "Exp", "Gather", "Gemm", "Identity", "Log", "MatMul", "Max", "Min",
    "Mul", "Relu", "Sigmoid", "Softplus", "Sub", "Tanh",
];

/// tract-onnx's framework with this agent's operators only.
pub fn onnx() -> tract_onnx::Onnx {
    let mut reg = OnnxOpRegister::default();
    reg.insert("Constant", constant);
    reg.insert("Identity", |_, _| {
        Ok((Box::<ops::identity::Identity>::default(), vec![]))
    });
    reg.insert("Add", |_, _| Ok((ops::math::Add.into_hir(), vec![])));
    reg.insert("Sub", |_, _| Ok((ops::math::Sub.into_hir(), vec![])));
    reg.insert("Mul", |_, _| Ok((ops::math::Mul.into_hir(), vec![])));
    reg.insert("Div", |_, _| Ok((ops::math::Div.into_hir(), vec![])));
    reg.insert("Max", |_, _| {
        Ok((Box::new(Nary(Box::new(ops::math::Max), false)), vec![]))
    });
    reg.insert("Min", |_, _| {
        Ok((Box::new(Nary(Box::new(ops::math::Min), false)), vec![]))
    });
    reg.insert("Exp", |_, _| Ok((ops::math::exp().into_hir(), vec![])));
    reg.insert("Log", |_, _| Ok((ops::math::ln().into_hir(), vec![])));
    reg.insert("Tanh", |_, _| Ok((ops::math::tanh().into_hir(), vec![])));
    reg.insert("Sigmoid", |_, _| {
        Ok((ops::nn::sigmoid().into_hir(), vec![]))
    });
    reg.insert("Relu", |_, _| {
        Ok((expand(ops::activations::Clip::new(Some(0.0), None)), vec![]))
    });
    reg.insert("Softplus", |_, _| {
        Ok((expand(ops::activations::Softplus), vec![]))
    });
    reg.insert("MatMul", |_, _| {
        Ok((expand(ops::matmul::MatMulInference::default()), vec![]))
    });
    reg.insert("Gemm", gemm);
    reg.insert("Gather", |_, node| {
        let axis = node.get_attr_opt("axis")?.unwrap_or(0);
        Ok((expand(ops::array::Gather::new(axis)), vec![]))
    });
    debug_assert_eq!(reg.0.len(), OPERATORS.len());
    tract_onnx::Onnx {
        op_register: reg,
        ..tract_onnx::Onnx::default()
    }
}

/// The element-wise binary operators tract leaves generic after optimising, replaced by
/// [`F32Binary`]. tract turns `a op b` into its vectorised kernels only when it can prove
/// the operands' sizes, which it cannot for a batch of `N` rows (`[N, C] + [1, C]`, the
/// bias, scale and clip after each layer): left generic, they cost one indirect call per
/// element in code built for size — ~30% of a forecast tick (BENCHMARKS.md, "Predict").
/// What is replaced keeps its shapes and result, bit for bit.
pub fn specialise(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        if let Some(op) = specialised(model, id)? {
            model.node_mut(id).op = Box::new(op);
            replaced += 1;
        }
    }
    Ok(replaced)
}

/// The replacement for node `id`, if it is one [`specialise`] replaces.
fn specialised(model: &TypedModel, id: usize) -> TractResult<Option<F32Binary>> {
    let node = model.node(id);
    let Some(op) = node.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    let Some(kind) = Kind::of(&*op.0) else {
        return Ok(None);
    };
    let facts = model.node_input_facts(id)?;
    let [a, b] = facts[..] else {
        return Ok(None);
    };
    let out = &node.outputs[0].fact;
    let f32s = [a.datum_type, b.datum_type, out.datum_type]
        .iter()
        .all(|dt| *dt == f32::datum_type());
    if !f32s || a.shape != out.shape || a.rank() != 2 || b.rank() != 2 {
        return Ok(None);
    }
    let fits = b.shape == a.shape
        || (b.shape[0].is_one() && (b.shape[1].is_one() || b.shape[1] == a.shape[1]));
    Ok(fits.then(|| F32Binary {
        kind,
        fallback: op.0.clone(),
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Sub,
    Mul,
    Max,
    Min,
}

impl Kind {
    fn of(op: &dyn BinMiniOp) -> Option<Kind> {
        use tract_onnx::tract_core::ops::math;
        Some(if op.is::<math::Add>() {
            Kind::Add
        } else if op.is::<math::Sub>() {
            Kind::Sub
        } else if op.is::<math::Mul>() {
            Kind::Mul
        } else if op.is::<math::Max>() {
            Kind::Max
        } else if op.is::<math::Min>() {
            Kind::Min
        } else {
            return None;
        })
    }

    /// `a[i] = a[i] op b[i % b.len()]`: same shape, a row per row, or one value.
    fn apply(self, a: &mut [f32], b: &[f32]) {
        match self {
            Kind::Add => broadcast(a, b, |x, y| x + y),
            Kind::Sub => broadcast(a, b, |x, y| x - y),
            Kind::Mul => broadcast(a, b, |x, y| x * y),
            Kind::Max => broadcast(a, b, f32::max),
            Kind::Min => broadcast(a, b, f32::min),
        }
    }
}

/// One loop per shape, each monomorphised on `f` so the compiler vectorises it.
#[inline(always)]
fn broadcast(a: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Copy) {
    if let [y] = b {
        a.iter_mut().for_each(|x| *x = f(*x, *y));
    } else {
        for row in a.chunks_exact_mut(b.len()) {
            row.iter_mut().zip(b).for_each(|(x, y)| *x = f(*x, *y));
        }
    }
}

/// `a op b` for `f32` in place of tract's generic [`TypedBinOp`] (see [`specialise`]); an
/// operand it was not built for (a shape other than planned, a strided view) goes to
/// tract's own evaluation.
#[derive(Debug, Clone)]
struct F32Binary {
    kind: Kind,
    fallback: Box<dyn BinMiniOp>,
}

impl PartialEq for F32Binary {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

impl Eq for F32Binary {}

impl Op for F32Binary {
    fn name(&self) -> StaticName {
        format!("F32{:?}", self.kind).into()
    }
    op_as_typed_op!();
}

impl EvalOp for F32Binary {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        // Laid out row after row: the strides of axes of length 1 do not matter (tract
        // leaves a constant given a leading axis with its old ones).
        let plain = |t: &Tensor| {
            let natural = Tensor::natural_strides(t.shape());
            t.datum_type() == f32::datum_type()
                && t.len() == t.shape().iter().product::<usize>()
                && t.shape()
                    .iter()
                    .zip(t.strides().iter().zip(&natural))
                    .all(|(n, (s, want))| *n == 1 || s == want)
        };
        let lines_up = match (a.shape(), b.shape()) {
            (a, b) if a == b => true,
            ([_, columns], [1, n]) => n == columns || *n == 1,
            _ => false,
        };
        if !plain(&a) || !plain(&b) || !lines_up || b.len() == 0 {
            #[cfg(test)]
            tests::FALLBACKS.with(|f| f.set(f.get() + 1));
            let c = self.fallback.eval(a, b, f32::datum_type())?;
            return Ok(tvec!(c.into_tvalue()));
        }
        let mut a = a.into_tensor();
        {
            let b = b.try_as_plain_ram()?;
            let mut a = a.try_as_plain_ram_mut()?;
            self.kind
                .apply(a.as_slice_mut::<f32>()?, b.as_slice::<f32>()?);
        }
        Ok(tvec!(a.into_tvalue()))
    }
}

impl TypedOp for F32Binary {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

/// The first operator of `model` this agent does not run, if any.
pub fn unsupported(model: &ModelProto) -> Option<&str> {
    model
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .map(|n| n.op_type.as_str())
        .find(|op| OPERATORS.binary_search(op).is_err())
}

fn constant(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let Some(value) = node.get_attr_opt("value")? else {
        bail!("a Constant without a `value` tensor (other forms are not supported)");
    };
    let value = ctx.load_tensor(value)?;
    Ok((
        Box::new(ops::konst::Const::new(value.into_arc_tensor())?),
        vec![],
    ))
}

fn gemm(_: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((
        expand(Gemm {
            alpha: node.get_attr_opt("alpha")?.unwrap_or(1.),
            beta: node.get_attr_opt("beta")?.unwrap_or(1.),
            trans_a: node.get_attr_opt("transA")?.unwrap_or(false),
            trans_b: node.get_attr_opt("transB")?.unwrap_or(false),
        }),
        vec![],
    ))
}

/// ONNX Gemm: `alpha · A′B′ + beta · C`, A′ and B′ transposed or not.
#[derive(Debug, Clone)]
struct Gemm {
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
}

impl Expansion for Gemm {
    fn name(&self) -> StaticName {
        "Gemm".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        if inputs.len() < 2 {
            bail!(
                "Gemm needs at least 2 inputs, the node has {}",
                inputs.len()
            );
        }
        if inputs.len() == 3 {
            s.equals(&inputs[2].datum_type, &outputs[0].datum_type)?;
        }
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&inputs[1].rank, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[1].datum_type, &outputs[0].datum_type)?;
        let (ca, ra) = if self.trans_a { (0, 1) } else { (1, 0) };
        let (cb, rb) = if self.trans_b { (0, 1) } else { (1, 0) };
        s.equals(&inputs[0].shape[ra], &outputs[0].shape[0])?;
        s.equals(&inputs[0].shape[ca], &inputs[1].shape[rb])?;
        s.equals(&inputs[1].shape[cb], &outputs[0].shape[1])?;
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let (a, b) = (inputs[0], inputs[1]);
        let axes = AxesMapping::for_numpy_matmul(2, self.trans_a, self.trans_b, false)?;
        let mut wire = model.wire_node(
            format!("{name}.ab"),
            EinSum::new(axes, model.outlet_fact(a)?.datum_type),
            &[a, b],
        )?[0];
        if self.alpha != 1.0 {
            let alpha = tensor0(self.alpha).broadcast_into_rank(model.outlet_fact(wire)?.rank())?;
            let alpha = model.add_const(format!("{name}.alpha_ab.cst"), alpha)?;
            wire =
                model.wire_node(format!("{name}.alpha_ab"), ops::math::mul(), &[alpha, wire])?[0];
        }
        if let Some(&c) = inputs.get(2)
            && self.beta != 0.0
        {
            let mut c = c;
            while model.outlet_fact(wire)?.rank() > model.outlet_fact(c)?.rank() {
                c = model.wire_node(
                    format!("{name}.c_add_axis_{}", model.outlet_fact(c)?.rank()),
                    AxisOp::Add(0),
                    &[c],
                )?[0];
            }
            let beta = tensor0(self.beta).broadcast_into_rank(model.outlet_fact(wire)?.rank())?;
            let beta = model.add_const(format!("{name}.beta_c.cst"), beta)?;
            let beta_c =
                model.wire_node(format!("{name}.beta_c"), ops::math::mul(), &[beta, c])?[0];
            wire = model.wire_node(name, ops::math::add(), &[wire, beta_c])?[0];
        }
        Ok(tvec!(wire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model shipped in `models/`, with its schema.
    fn shipped(file: &str) -> (Vec<u8>, crate::predict::schema::Schema) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(file);
        let bytes = std::fs::read(&path).unwrap();
        let schema = crate::predict::schema::Schema::of_onnx(file, &bytes).unwrap();
        (bytes, schema)
    }

    thread_local! {
        /// How many times [`F32Binary`] handed an evaluation to tract on this thread.
        pub static FALLBACKS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn the_operator_list_is_sorted_for_its_search() {
        assert!(OPERATORS.is_sorted());
        assert_eq!(onnx().op_register.0.len(), OPERATORS.len());
    }

    /// The exporter of `models/` checks its graphs against the same list.
    #[test]
    fn the_exporter_knows_the_same_operators() {
        let nn = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/umbra_train/nn.py"),
        )
        .unwrap();
        let list = nn
            .split_once("AGENT_OPERATORS = frozenset({")
            .and_then(|(_, rest)| rest.split_once("})"))
            .unwrap()
            .0;
        let mut named: Vec<&str> = list
            .split(',')
            .map(|s| s.trim().trim_matches('"'))
            .filter(|s| !s.is_empty())
            .collect();
        named.sort_unstable();
        assert_eq!(named, OPERATORS);
    }

    /// The shipped models, loaded as the agent loads them (this registry, a symbolic batch,
    /// [`specialise`]) and through tract-onnx's full registry for a fixed batch: the same
    /// outputs for the same rows.
    #[test]
    fn the_shipped_models_run_as_with_every_operator() {
        use crate::predict::runtime::Runtime;
        for file in ["forecast.onnx", "request.onnx"] {
            let (bytes, schema) = shipped(file);
            let width = schema.input_width();
            let rows = 7;
            let x: Vec<f32> = (0..rows * width)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            let mut ours = Vec::new();
            FALLBACKS.with(|f| f.set(0));
            crate::predict::runtime::tract::Tract
                .load(&bytes, &schema)
                .unwrap()
                .run(&x, rows, &mut ours)
                .unwrap();
            let full = {
                let model = tract_onnx::onnx()
                    .model_for_read(&mut &bytes[..])
                    .unwrap()
                    .with_input_fact(0, f32::fact([rows, width]).into())
                    .unwrap()
                    .into_optimized()
                    .unwrap()
                    .into_runnable()
                    .unwrap();
                let out = model
                    .run(tvec![
                        Tensor::from_shape(&[rows, width], &x).unwrap().into()
                    ])
                    .unwrap();
                out[0]
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec()
            };
            assert!(!ours.is_empty(), "{file}");
            assert_eq!(ours, full, "{file}");
            assert_eq!(
                FALLBACKS.with(|f| f.get()),
                0,
                "{file}: every F32Binary ran its own way"
            );
        }
    }

    /// The edge binary links tract-nnef from `vendor/` (without the registration that kept
    /// its NNEF code linked), not the release from crates.io: a tract update that leaves
    /// the `[patch]` unused fails here.
    #[test]
    fn tract_nnef_is_the_vendored_one() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
        let package = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"tract-nnef\""))
            .unwrap();
        assert!(!package.contains("source ="), "{package}");
        let vendored = std::fs::read_to_string(root.join("vendor/tract-nnef/src/transform.rs"));
        assert!(!vendored.unwrap().contains("name: \"patch\""));
    }

    /// A session run again and again (its input tensor written in place, or made anew for
    /// another batch size) gives what a fresh session gives for the same rows.
    #[test]
    fn a_session_run_again_gives_what_a_fresh_one_gives() {
        use crate::predict::runtime::{Runtime, tract::Tract};
        let (bytes, schema) = shipped("forecast.onnx");
        let width = schema.input_width();
        let rows_of = |rows: usize, seed: usize| -> Vec<f32> {
            (0..rows * width)
                .map(|i| (((i + seed) * 37 % 101) as f32 / 50.0) - 1.0)
                .collect()
        };
        let mut kept = Tract.load(&bytes, &schema).unwrap();
        for (rows, seed) in [(7, 0), (7, 5), (3, 9), (7, 2), (7, 2)] {
            let x = rows_of(rows, seed);
            let (mut again, mut fresh) = (Vec::new(), Vec::new());
            kept.run(&x, rows, &mut again).unwrap();
            Tract
                .load(&bytes, &schema)
                .unwrap()
                .run(&x, rows, &mut fresh)
                .unwrap();
            assert_eq!(again, fresh, "{rows} rows, seed {seed}");
        }
        let err = kept.run(&rows_of(2, 0), 3, &mut Vec::new()).unwrap_err();
        assert!(err.contains("for 3 rows"), "{err}");
    }

    /// The shipped forecaster's generic element-wise operators are all replaced.
    #[test]
    fn the_forecasters_binary_operators_are_specialised() {
        let (bytes, schema) = shipped("forecast.onnx");
        let mut model = onnx().model_for_read(&mut &bytes[..]).unwrap();
        let n = model.sym("N");
        model
            .set_input_fact(
                0,
                f32::fact([n.to_dim(), schema.input_width().to_dim()]).into(),
            )
            .unwrap();
        let mut model = model.into_optimized().unwrap();
        let replaced = specialise(&mut model).unwrap();
        assert!(replaced >= 5, "{replaced}");
        let left: Vec<_> = model
            .nodes()
            .iter()
            .filter(|n| n.op_is::<TypedBinOp>())
            .map(|n| n.name.clone())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Each kind and shape against tract's own evaluation, with values that tell the
    /// operators apart (negative, equal, NaN); a shape it was not built for takes tract's
    /// way.
    #[test]
    fn f32_binary_matches_tracts_evaluation() {
        use tract_onnx::tract_core::ops::math;
        let a = Tensor::from_shape(
            &[4, 4],
            &[
                1.0f32,
                -2.0,
                3.5,
                f32::NAN,
                0.0,
                7.0,
                -7.0,
                2.0,
                4.0,
                4.0,
                -0.5,
                9.0,
                0.0,
                -0.0,
                1e30,
                -1e-30,
            ],
        )
        .unwrap();
        let same = Tensor::from_shape(
            &[4, 4],
            &[
                2.0f32,
                -2.0,
                1.0,
                1.0,
                -3.0,
                8.0,
                -8.0,
                0.5,
                4.0,
                f32::NAN,
                0.25,
                -9.0,
                -0.0,
                0.0,
                1e30,
                3.0,
            ],
        )
        .unwrap();
        let row = Tensor::from_shape(&[1, 4], &[0.5f32, -1.0, 3.5, 2.0]).unwrap();
        let scalar = Tensor::from_shape(&[1, 1], &[1.5f32]).unwrap();
        // `[4]` given a leading axis keeps its strides: not the natural ones of `[1, 4]`.
        let mut lifted = Tensor::from_shape(&[4], &[0.5f32, -1.0, 3.5, 2.0]).unwrap();
        lifted.insert_axis(0).unwrap();
        assert_ne!(lifted.strides(), &*Tensor::natural_strides(lifted.shape()));
        // A column to broadcast, as long as a row: not a shape it was built for, so
        // tract's way.
        let column = Tensor::from_shape(&[4, 1], &[0.5f32, -1.0, 3.5, 2.0]).unwrap();
        let ops: [Box<dyn BinMiniOp>; 5] = [
            Box::new(math::Add),
            Box::new(math::Sub),
            Box::new(math::Mul),
            Box::new(math::Max),
            Box::new(math::Min),
        ];
        for mini in ops {
            let kind = Kind::of(&*mini).unwrap();
            let ours = F32Binary {
                kind,
                fallback: mini.clone(),
            };
            for (b, falls_back) in [
                (&same, false),
                (&row, false),
                (&scalar, false),
                (&lifted, false),
                (&column, true),
            ] {
                FALLBACKS.with(|f| f.set(0));
                let want = mini
                    .eval(
                        a.clone().into_tvalue(),
                        b.clone().into_tvalue(),
                        f32::datum_type(),
                    )
                    .unwrap();
                let got = ours
                    .eval(
                        &EvalContext::out_of_plan(),
                        tvec![a.clone().into_tvalue(), b.clone().into_tvalue()],
                    )
                    .unwrap()
                    .remove(0)
                    .into_tensor();
                let bits = |t: &Tensor| -> Vec<u32> {
                    let view = t.try_as_plain_ram().unwrap();
                    view.as_slice::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                assert_eq!(bits(&got), bits(&want), "{kind:?} with b {:?}", b.shape());
                let fell_back = FALLBACKS.with(|f| f.get()) == 1;
                assert_eq!(fell_back, falls_back, "{kind:?} with b {:?}", b.shape());
            }
        }
    }
}
