"""The quantile network both models use, in JAX, and its ONNX export (onnx.helper, opset 17,
ops tract runs: Gemm, Relu, Softplus, MatMul, Gather, Add, Mul, Max, Min).

    raw = x·A + a  +  MLP(x)            (a linear skip, DLinear-like, plus a small ReLU MLP)
    q   = raw·Pm + (softplus(raw) ⊙ s)·Pg   (quantiles that cannot cross)

s is 1, or for the outputs a `Spread` names, `eᵇ + eᶜ·v` with v the mean absolute change
between consecutive inputs of one feature over the window (the workload's own volatility)
and b, c learnt per output: a steady workload's band is narrow, a restless one's wide.

Outputs come in groups of Q (one group per target and step, quantiles increasing). In each
group the median column is `raw` itself; the column k levels above it adds softplus of its
own raw value to the one below (and likewise downwards), so quantiles are ordered by
construction. Pm and Pg are fixed 0/±1 matrices. The result is clipped to bounds taken from
the training targets (Max, Min). With `hidden = []` the model is linear (plus the ordering)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


# The ONNX operators the agent runs (CONTRACT.md, agent/src/predict/tract_ops.rs).
AGENT_OPERATORS = frozenset({
    "Add", "Constant", "Div", "Exp", "Gather", "Gemm", "Identity", "Log", "MatMul", "Max",
    "Min", "Mul", "Relu", "Sigmoid", "Softplus", "Sub", "Tanh",
})

GAP_BIAS = -4.0


@dataclass
class Spec:
    d_in: int
    d_out: int  # groups × Q
    quantiles: list[float]
    hidden: list[int]
    # Bounds of each output (standardised), from the training targets: the exported graph
    # clips to them, so a window unlike any seen cannot forecast absurd values.
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    # Added to each output after ordering (standardised): a conformal widening of the band
    # (negative for the low quantiles, positive for the high ones), when calibrated.
    widen: np.ndarray | None = None
    # Gaps between quantiles that scale with the window's volatility.
    spread: Spread | None = None


@dataclass
class Spread:
    """Which input columns hold one feature's window, oldest first, and which outputs' gaps
    scale with its mean absolute change (1 = scaled)."""

    columns: np.ndarray  # (W,) int
    outputs: np.ndarray  # (d_out,) 0/1

    def volatility(self, x):
        """(n, d_in) → (n, 1): the mean absolute change between consecutive columns."""
        v = x[:, self.columns]
        return jnp.abs(v[:, 1:] - v[:, :-1]).mean(axis=1, keepdims=True)

    def scale(self, params: dict, x):
        b, c = params["spread"]
        s = jnp.exp(b) + jnp.exp(c) * self.volatility(x)
        return jnp.where(jnp.asarray(self.outputs) > 0, s, 1.0)

    def folded(self, params: dict) -> tuple[np.ndarray, np.ndarray]:
        """The scale as `|Δ|·M + b0` for the export: M ((W−1) × d_out) averages the
        changes and multiplies them by eᶜ, b0 is eᵇ (for the outputs not scaled, M's
        column is 0 and b0 is 1)."""
        b, c = (np.asarray(a, np.float64) for a in params["spread"])
        on = self.outputs > 0
        b0 = np.where(on, np.exp(b), 1.0)
        cw = np.where(on, np.exp(c), 0.0) / (len(self.columns) - 1)
        m = np.repeat(cw[None, :], len(self.columns) - 1, axis=0)
        return m.astype(np.float32), b0.astype(np.float32)


# The spread's start (b, c): eᵇ = 1, eᶜ = 3 (a volatility of 0.3 standard deviations doubles
# the gaps).
SPREAD_INIT = (0.0, float(np.log(3.0)))


def order_matrices(d_out: int, quantiles: list[float]) -> tuple[np.ndarray, np.ndarray]:
    q = len(quantiles)
    m = int(np.argmin(np.abs(np.array(quantiles) - 0.5)))
    pm = np.zeros((d_out, d_out), np.float32)
    pg = np.zeros((d_out, d_out), np.float32)
    for g in range(d_out // q):
        base = g * q
        for j in range(q):
            pm[base + m, base + j] = 1.0
            if j > m:
                for k in range(m + 1, j + 1):
                    pg[base + k, base + j] = 1.0
            elif j < m:
                for k in range(j, m):
                    pg[base + k, base + j] = -1.0
    return pm, pg


def init(spec: Spec, key, skip_init: np.ndarray | None = None) -> dict:
    """Parameters: He-initialised hidden layers, a zero head (so training starts from the
    skip), the skip from `skip_init` (d_in × d_out) or zeros."""
    params: dict = {"layers": []}
    d = spec.d_in
    for h in spec.hidden:
        key, k = jax.random.split(key)
        w = jax.random.normal(k, (d, h), jnp.float32) * np.sqrt(2.0 / d)
        params["layers"].append((w, jnp.zeros((h,), jnp.float32)))
        d = h
    if spec.hidden:
        key, k = jax.random.split(key)
        params["head"] = (
            jax.random.normal(k, (d, spec.d_out), jnp.float32) * 0.01,
            jnp.zeros((spec.d_out,), jnp.float32),
        )
    a = np.zeros((spec.d_in, spec.d_out), np.float32) if skip_init is None else skip_init.astype(np.float32)
    # Gaps between quantiles start narrow (softplus(-4) ≈ 0.02 standard deviations): in
    # log space a wide start is a factor of hundreds, which training is slow to undo.
    q = len(spec.quantiles)
    m = int(np.argmin(np.abs(np.array(spec.quantiles) - 0.5)))
    bias = np.full((spec.d_out,), GAP_BIAS, np.float32)
    bias[m::q] = 0.0
    params["skip"] = (jnp.asarray(a), jnp.asarray(bias))
    if spec.spread is not None:
        params["spread"] = tuple(jnp.full((spec.d_out,), v, jnp.float32) for v in SPREAD_INIT)
    return params


def raw_out(params: dict, x):
    a, b = params["skip"]
    raw = x @ a + b
    if params["layers"]:
        h = x
        for w, c in params["layers"]:
            h = jax.nn.relu(h @ w + c)
        w, c = params["head"]
        raw = raw + h @ w + c
    return raw


def apply(params: dict, x, pm, pg, lo=None, hi=None, widen=None, spread: Spread | None = None):
    raw = raw_out(params, x)
    gaps = jax.nn.softplus(raw)
    if spread is not None:
        gaps = gaps * spread.scale(params, x)
    q = raw @ pm + gaps @ pg
    if widen is not None:
        q = q + widen
    if lo is not None:
        q = jnp.clip(q, lo, hi)
    return q


def pinball(pred, y, quantiles, weights=None):
    """Mean pinball loss; pred (N, G, Q), y (N, G)."""
    tau = jnp.asarray(quantiles, jnp.float32)
    d = y[..., None] - pred
    l = jnp.maximum(tau * d, (tau - 1) * d)
    if weights is not None:
        l = l * weights[..., None]
    return l.mean()


def adam(params, grads, state, lr, b1=0.9, b2=0.999, eps=1e-8):
    m, v, t = state
    t = t + 1
    m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
    v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
    mh = jax.tree_util.tree_map(lambda m: m / (1 - b1**t), m)
    vh = jax.tree_util.tree_map(lambda v: v / (1 - b2**t), v)
    params = jax.tree_util.tree_map(lambda p, m, v: p - lr * m / (jnp.sqrt(v) + eps), params, mh, vh)
    return params, (m, v, t)


def train(
    spec: Spec,
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    steps: int,
    batch: int = 512,
    lr: float = 2e-3,
    weight_decay: float = 1e-5,
    skip_init: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    units: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    train_skip: bool = True,
    log=None,
) -> dict:
    """Minibatch Adam on the mean pinball loss of standardised targets y (N, G) with
    (N, G·Q) outputs. With `units = (mean, std, scale)` (each (G,), log1p targets) the loss
    is taken in the targets' own units instead, each group divided by its scale: what the
    evaluation measures. Deterministic for a seed (CPU, fixed order of minibatches)."""
    q = len(spec.quantiles)
    pm, pg = (jnp.asarray(m) for m in order_matrices(spec.d_out, spec.quantiles))
    lo, hi = bounds(spec)
    key = jax.random.PRNGKey(seed)
    key, k = jax.random.split(key)
    params = init(spec, k, skip_init)
    state = (
        jax.tree_util.tree_map(jnp.zeros_like, params),
        jax.tree_util.tree_map(jnp.zeros_like, params),
        0,
    )
    g = spec.d_out // q

    if units is not None:
        um, us, uscale = (jnp.asarray(np.asarray(a, np.float32)) for a in units)

    def loss_fn(p, xb, yb, wb):
        pred = apply(p, xb, pm, pg, lo, hi, spread=spec.spread).reshape(-1, g, q)
        if units is not None:
            pred = jnp.expm1(pred * us[:, None] + um[:, None]) / uscale[:, None]
            yb = jnp.expm1(yb * us + um) / uscale
        l2 = sum(jnp.sum(w * w) for w, _ in p["layers"])
        if "head" in p:
            l2 = l2 + jnp.sum(p["head"][0] ** 2)
        return pinball(pred, yb, spec.quantiles, wb) + weight_decay * l2

    @jax.jit
    def step(p, st, xb, yb, wb, lr_t):
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb, wb)
        if not train_skip:
            # The skip's weights stay as initialised (the last value); its bias learns.
            grads["skip"] = (jnp.zeros_like(grads["skip"][0]), grads["skip"][1])
        m, v, t = st
        p, (m, v, _) = adam(p, grads, (m, v, t), lr_t)
        return p, (m, v, t + 1), loss

    n = len(x)
    rng = np.random.default_rng(seed)
    xj = np.asarray(x, np.float32)
    yj = np.asarray(y, np.float32)
    wj = np.ones((n, g), np.float32) if weights is None else np.asarray(weights, np.float32)
    order = rng.permutation(n)
    at = 0
    for s in range(steps):
        if at + batch > n:
            order = rng.permutation(n)
            at = 0
        idx = order[at : at + batch]
        at += batch
        # Cosine decay of the learning rate.
        lr_t = lr * 0.5 * (1 + np.cos(np.pi * s / steps))
        params, state, loss = step(params, state, xj[idx], yj[idx], wj[idx], lr_t)
        if log and (s % max(steps // 5, 1) == 0 or s == steps - 1):
            log(f"  step {s:5d}  loss {float(loss):.4f}")
    return params


def bounds(spec: Spec):
    if spec.lo is None:
        return None, None
    return jnp.asarray(spec.lo, jnp.float32), jnp.asarray(spec.hi, jnp.float32)


def predict(params: dict, spec: Spec, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    pm, pg = (jnp.asarray(m) for m in order_matrices(spec.d_out, spec.quantiles))
    lo, hi = bounds(spec)
    widen = None if spec.widen is None else jnp.asarray(spec.widen, jnp.float32)
    f = jax.jit(lambda p, xb: apply(p, xb, pm, pg, lo, hi, widen, spec.spread))
    out = [np.asarray(f(params, jnp.asarray(x[i : i + chunk], jnp.float32))) for i in range(0, len(x), chunk)]
    return np.concatenate(out) if out else np.zeros((0, spec.d_out), np.float32)


def to_numpy(params: dict) -> dict:
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)


def export_onnx(params: dict, spec: Spec, schema: dict, path, input_name="x", output_name="q") -> int:
    """Writes the model as ONNX (opset 17, batch dimension `N`) with `umbra.schema` in its
    metadata; returns its size in bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    p = to_numpy(params)
    inits, nodes = [], []

    def const(name, a):
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), name))
        return name

    def ints(name, a):
        inits.append(numpy_helper.from_array(np.asarray(a, np.int64), name))
        return name

    def picked(x, m, name):
        """`x @ m` as a gather and a scale when every column of `m` has at most one nonzero
        (the fixed skip, the quantile ordering): the same sums, without a dense product over
        a matrix of zeros — most of the forecaster's arithmetic otherwise. None when `m`
        is dense."""
        if ((m != 0).sum(axis=0) > 1).any():
            return None
        rows = np.argmax(m != 0, axis=0)
        scale = m[rows, np.arange(m.shape[1])]
        nodes.append(helper.make_node("Gather", [x, ints(f"{name}_rows", rows)], [f"{name}_g"], axis=1))
        if (scale == 1).all():
            return f"{name}_g"
        nodes.append(helper.make_node("Mul", [f"{name}_g", const(f"{name}_scale", scale)], [name]))
        return name

    a, b = p["skip"]
    skip = picked(input_name, a, "skip_pick")
    if skip is None:
        nodes.append(helper.make_node("Gemm", [input_name, const("skip_w", a), const("skip_b", b)], ["skip"]))
    else:
        nodes.append(helper.make_node("Add", [skip, const("skip_b", b)], ["skip"]))
    raw = "skip"
    if p["layers"]:
        h = input_name
        for i, (w, c) in enumerate(p["layers"]):
            nodes.append(helper.make_node("Gemm", [h, const(f"w{i}", w), const(f"b{i}", c)], [f"g{i}"]))
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
            h = f"h{i}"
        w, c = p["head"]
        nodes.append(helper.make_node("Gemm", [h, const("head_w", w), const("head_b", c)], ["head"]))
        nodes.append(helper.make_node("Add", ["skip", "head"], ["raw"]))
        raw = "raw"
    pm, pg = order_matrices(spec.d_out, spec.quantiles)
    nodes.append(helper.make_node("Softplus", [raw], ["gaps"]))
    gaps = "gaps"
    if spec.spread is not None:
        # |Δ| of the feature's window, averaged and scaled per output by one product.
        m, b0 = spec.spread.folded(p)
        cols = spec.spread.columns
        nodes.append(helper.make_node("Gather", [input_name, ints("vol_cols", cols)], ["vol_x"], axis=1))
        diff = np.zeros((len(cols), len(cols) - 1), np.float32)
        for i in range(len(cols) - 1):
            diff[i, i], diff[i + 1, i] = -1.0, 1.0
        nodes.append(helper.make_node("MatMul", ["vol_x", const("vol_diff", diff)], ["vol_d"]))
        nodes.append(helper.make_node("Mul", ["vol_d", const("vol_neg", np.float32([-1.0]))], ["vol_nd"]))
        nodes.append(helper.make_node("Max", ["vol_d", "vol_nd"], ["vol_abs"]))
        nodes.append(helper.make_node("MatMul", ["vol_abs", const("spread_m", m)], ["spread_c"]))
        nodes.append(helper.make_node("Add", ["spread_c", const("spread_b", b0)], ["spread_s"]))
        nodes.append(helper.make_node("Mul", ["gaps", "spread_s"], ["gaps_s"]))
        gaps = "gaps_s"
    mid = picked(raw, pm, "mid")
    if mid is None:
        mid = "mid"
        nodes.append(helper.make_node("MatMul", [raw, const("pm", pm)], [mid]))
    spread = picked(gaps, pg, "spread")
    if spread is None:
        spread = "spread"
        nodes.append(helper.make_node("MatMul", [gaps, const("pg", pg)], [spread]))
    ordered = output_name if spec.lo is None and spec.widen is None else "ordered"
    nodes.append(helper.make_node("Add", [mid, spread], [ordered]))
    if spec.widen is not None:
        last = output_name if spec.lo is None else "widened"
        nodes.append(helper.make_node("Add", [ordered, const("widen", spec.widen)], [last]))
        ordered = last
    if spec.lo is not None:
        nodes.append(helper.make_node("Max", [ordered, const("lo", spec.lo)], ["above"]))
        nodes.append(helper.make_node("Min", ["above", const("hi", spec.hi)], [output_name]))
    graph = helper.make_graph(
        nodes,
        f"umbra_{schema.get('kind', 'model')}",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", spec.d_in])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", spec.d_out])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="umbra-models")
    model.ir_version = 8
    helper.set_model_props(model, {"umbra.schema": json.dumps(schema, separators=(",", ":"))})
    onnx.checker.check_model(model)
    foreign = sorted({n.op_type for n in nodes} - AGENT_OPERATORS)
    if foreign:
        raise ValueError(f"{path}: the agent does not run the ONNX operators {foreign}")
    data = model.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def tract_run(path, x: np.ndarray) -> tuple[np.ndarray, str]:
    """Runs the ONNX file in tract (the agent's engine) with the batch of `x`; returns the
    output and the `umbra.schema` property tract sees."""
    import tract

    m = tract.onnx().load(str(path))
    m.set_input_fact(0, f"{x.shape[0]},{x.shape[1]},f32")
    r = m.into_model().into_runnable()
    out = r.run([np.ascontiguousarray(x, np.float32)])[0].to_numpy()
    # A string tensor has no numpy form: tract's dump is `Tensor(,String <value>)`.
    dump = r.property("onnx.metadata_props.umbra.schema").dump()
    schema = dump[dump.index("String ") + len("String ") : -1]
    return out, schema
