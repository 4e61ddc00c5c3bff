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
    tract_core::ops::einsum::EinSum,
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

    /// The shipped models, through this registry and through tract-onnx's full one: the
    /// same outputs for the same rows.
    #[test]
    fn the_shipped_models_run_as_with_every_operator() {
        for file in ["forecast.onnx", "request.onnx"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../models")
                .join(file);
            let bytes = std::fs::read(&path).unwrap();
            let width = crate::predict::schema::Schema::of_onnx(file, &bytes)
                .unwrap()
                .input_width();
            let rows = 7;
            let x: Vec<f32> = (0..rows * width)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            let run = |framework: &tract_onnx::Onnx| -> Vec<f32> {
                let model = framework
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
            let ours = run(&onnx());
            let full = run(&tract_onnx::onnx());
            assert!(!ours.is_empty(), "{file}");
            assert_eq!(ours, full, "{file}");
        }
    }
}
