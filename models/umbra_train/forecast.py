"""The forecaster: windows of W buckets → quantiles of cpu, memory, io and net for H steps
(models/CONTRACT.md, kind "forecast")."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import baselines, nn
from .data import TARGETS, ForecastData, Series

IDENTITY = {"tod_sin", "tod_cos", "present"}
# Features the forecaster does not use: with recordings spanning minutes, the UTC time of
# day names the recording rather than a phase of a day (the recorded "days" are compressed).
LEFT_OUT = {"tod_sin", "tod_cos"}
# Which feature carries each target's own value (for the skip's start: the last value).
TARGET_FEATURE = {"cpu": "cpu_cores", "memory": "rss_bytes"}
QUANTILES = [0.1, 0.5, 0.9]


@dataclass
class Config:
    window: int = 24
    horizon: int = 6
    hidden: list[int] = field(default_factory=lambda: [64])
    steps: int = 3000
    lr: float = 2e-3
    batch: int = 512
    weight_decay: float = 1e-5
    # "log": pinball of the standardised log1p targets; "units": pinball in the targets'
    # units, each target divided by its mean (what `umbra eval` measures).
    loss: str = "log"
    # The skip's weights: trained, or fixed at "each target's last value".
    train_skip: bool = True
    # Sample weights of the log loss: "none", or "scale" (each window weighs by its
    # target's size in units, relative to the mean: big workloads count as the metric counts them).
    weighting: str = "none"
    # Buckets the workload did not run in: "skip" leaves them out of the loss (`umbra eval`
    # scores only the buckets a workload ran in), "fit" fits their zeros as well.
    absent: str = "skip"
    quantiles: list[float] = field(default_factory=lambda: list(QUANTILES))
    # A target whose quantile gaps scale with the volatility of its own feature's window
    # (nn.Spread; a target with a feature, TARGET_FEATURE), or None.
    spread: str | None = None

    def label(self) -> str:
        arch = "linear" if not self.hidden else "mlp" + "x".join(map(str, self.hidden))
        extra = ("" if self.train_skip else " fixed-skip") + ("" if self.weighting == "none" else f" w={self.weighting}")
        extra += "" if self.weight_decay == 1e-5 else f" wd={self.weight_decay:g}"
        extra += "" if self.absent == "skip" else f" absent={self.absent}"
        extra += "" if not self.spread else f" spread={self.spread}"
        return f"{arch} W={self.window} {self.loss}{extra}"


def transform_of(name: str) -> str:
    return "identity" if name in IDENTITY else "log1p"


def apply_transform(v: np.ndarray, t: str) -> np.ndarray:
    return np.log1p(np.maximum(v, 0.0)) if t == "log1p" else v


@dataclass
class Scaling:
    features: list[str]  # the model's, in order
    f_idx: list[int]  # their columns in the export
    f_tr: list[str]
    f_mean: np.ndarray
    f_std: np.ndarray
    t_mean: np.ndarray
    t_std: np.ndarray

    def schema_features(self) -> list[dict]:
        return [
            {"name": n, "transform": t, "mean": float(m), "std": float(s)}
            for n, t, m, s in zip(self.features, self.f_tr, self.f_mean, self.f_std)
        ]

    def schema_targets(self) -> list[dict]:
        return [
            {"name": n, "transform": "log1p", "mean": float(m), "std": float(s)}
            for n, m, s in zip(TARGETS, self.t_mean, self.t_std)
        ]


def fit_scaling(data: ForecastData, series: list[Series], split=None) -> Scaling:
    """Transforms and standardisation from the rows training sees (before the split's cut)."""
    names = [f for f in data.features if f not in LEFT_OUT]
    idx = [data.features.index(f) for f in names]
    trs = [transform_of(f) for f in names]

    def rows(s):
        if split is None:
            return slice(None)
        a, b = split(s)
        return slice(None, None if b is None else max(b + 6, 1))

    x = np.concatenate([s.x[rows(s)] for s in series])[:, idx].astype(np.float64)
    y = np.concatenate([s.y[rows(s)] for s in series]).astype(np.float64)
    xt = np.stack([apply_transform(x[:, i], t) for i, t in enumerate(trs)], 1)
    fm, fs = xt.mean(0), xt.std(0)
    fs = np.where(fs > 1e-6, fs, 1.0)
    yt = np.log1p(np.maximum(y, 0.0))
    tm, ts = yt.mean(0), yt.std(0)
    ts = np.where(ts > 1e-6, ts, 1.0)
    # A target that is one of the features shares its scaling, so the last value passes
    # straight through the skip.
    for k, t in enumerate(TARGETS):
        f = TARGET_FEATURE.get(t)
        if f in names:
            j = names.index(f)
            tm[k], ts[k] = fm[j], fs[j]
    return Scaling(names, idx, trs, fm, fs, tm, ts)


def _padded(s: Series, window: int, interval_ms: int, all_features: list[str]) -> np.ndarray:
    """The series' raw rows with window-1 absent buckets before them (zeros, time features
    computed), as the agent's featurizer has them."""
    pad = np.zeros((window - 1, s.x.shape[1]), np.float64)
    ends = s.end_ms[0] - interval_ms * np.arange(window - 1, 0, -1)
    day = 86_400_000
    a = 2 * np.pi * (ends % day) / day
    if "tod_sin" in all_features:
        pad[:, all_features.index("tod_sin")] = np.sin(a)
    if "tod_cos" in all_features:
        pad[:, all_features.index("tod_cos")] = np.cos(a)
    return np.concatenate([pad, s.x.astype(np.float64)])


def windows(data: ForecastData, s: Series, sc: Scaling, cfg: Config, t_from=0, t_to=None):
    """Model inputs for the forecasts made at buckets t in [t_from, t_to) whose horizon is
    inside the series: x (n, W·F), standardised targets (n, T·H), raw targets (n, T, H), t,
    and whether the workload ran in each target bucket (n, H)."""
    W, H = cfg.window, cfg.horizon
    n = len(s)
    t_to = n - H if t_to is None else min(t_to, n - H)
    ts = np.arange(t_from, t_to)
    if len(ts) == 0:
        return None
    raw = _padded(s, W, data.interval_ms, data.features)[:, sc.f_idx]
    z = np.stack([apply_transform(raw[:, i], t) for i, t in enumerate(sc.f_tr)], 1)
    z = ((z - sc.f_mean) / sc.f_std).astype(np.float32)
    # window ending at t (padded index t + W - 1)
    sw = np.lib.stride_tricks.sliding_window_view(z, (W, z.shape[1]))[:, 0]  # (n, W, F)
    x = sw[ts].reshape(len(ts), -1)
    yr = np.stack([s.y[ts + h] for h in range(1, H + 1)], axis=2)  # (n, T, H)
    yz = (np.log1p(np.maximum(yr, 0.0)) - sc.t_mean[None, :, None]) / sc.t_std[None, :, None]
    present = s.x[:, data.features.index("present")] > 0
    ran = np.stack([present[ts + h] for h in range(1, H + 1)], axis=1)  # (n, H)
    return x, yz.reshape(len(ts), -1).astype(np.float32), yr, ts, ran


def stack(data, series, sc, cfg, split=None):
    """Windows of many series; `split` maps a series to (t_from, t_to)."""
    xs, ys, yrs, meta, rans = [], [], [], [], []
    for i, s in enumerate(series):
        a, b = split(s) if split else (0, None)
        w = windows(data, s, sc, cfg, a, b)
        if w is None:
            continue
        xs.append(w[0])
        ys.append(w[1])
        yrs.append(w[2])
        meta.append((i, w[3]))
        rans.append(w[4])
    if not xs:
        return None
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(yrs), meta, np.concatenate(rans)


def skip_init(sc: Scaling, cfg: Config) -> np.ndarray:
    """The skip's starting weights: each target's median at every step = its own last value
    (for targets that are features), other outputs 0."""
    F, W, H, Q = len(sc.features), cfg.window, cfg.horizon, len(cfg.quantiles)
    a = np.zeros((W * F, len(TARGETS) * H * Q), np.float32)
    m = int(np.argmin(np.abs(np.array(cfg.quantiles) - 0.5)))
    for k, t in enumerate(TARGETS):
        f = TARGET_FEATURE.get(t)
        if f not in sc.features:
            continue
        j = (W - 1) * F + sc.features.index(f)
        for h in range(H):
            a[j, (k * H + h) * Q + m] = 1.0
    return a


def spread_of(sc: Scaling, cfg: Config) -> nn.Spread | None:
    """`cfg.spread`'s outputs, scaled by the volatility of its own feature's window."""
    if cfg.spread is None:
        return None
    F_, W, H, Q = len(sc.features), cfg.window, cfg.horizon, len(cfg.quantiles)
    f = TARGET_FEATURE.get(cfg.spread)
    if f not in sc.features:
        raise ValueError(f"spread: the target {cfg.spread} has no feature in this model")
    j = sc.features.index(f)
    outputs = np.zeros(len(TARGETS) * H * Q, np.float32)
    k = TARGETS.index(cfg.spread)
    outputs[k * H * Q : (k + 1) * H * Q] = 1.0
    return nn.Spread(columns=np.arange(W) * F_ + j, outputs=outputs)


def to_units(pred: np.ndarray, sc: Scaling, cfg: Config) -> np.ndarray:
    """(n, T·H·Q) standardised → (n, T, H, Q) in target units."""
    p = pred.reshape(len(pred), len(TARGETS), cfg.horizon, len(cfg.quantiles)).astype(np.float64)
    p = p * sc.t_std[None, :, None, None] + sc.t_mean[None, :, None, None]
    return np.maximum(np.expm1(p), 0.0)


def pinball_units(pred: np.ndarray, yr: np.ndarray, quantiles, ran: np.ndarray | None = None) -> np.ndarray:
    """Mean pinball per target; pred (n, T, H, Q), yr (n, T, H); with `ran` (n, H), over
    the target buckets the workload ran in only (as `umbra eval` scores)."""
    tau = np.asarray(quantiles)
    d = yr[..., None] - pred
    loss = np.maximum(tau * d, (tau - 1) * d).mean(axis=3)
    return _masked_mean(loss, ran)


def coverage(pred, yr, ran: np.ndarray | None = None):
    return _masked_mean(((yr >= pred[..., 0]) & (yr <= pred[..., -1])).astype(np.float64), ran)


def _masked_mean(v: np.ndarray, ran: np.ndarray | None) -> np.ndarray:
    """(n, T, H) → (T,): the mean over samples and steps, of the steps in `ran` only."""
    if ran is None:
        return v.mean(axis=(0, 2))
    w = np.broadcast_to(ran[:, None, :], v.shape).astype(np.float64)
    return (v * w).sum(axis=(0, 2)) / np.maximum(w.sum(axis=(0, 2)), 1.0)


def baseline_bands(series: list[Series], meta, horizon: int, present_col: int) -> dict[str, np.ndarray]:
    """Every baseline's bands at the samples of `meta`: name → (n, T, H, 3)."""
    out = {}
    for name in baselines.NAMES:
        parts = []
        for i, ts in meta:
            s = series[i]
            present = s.x[:, present_col]
            per_t = [
                baselines.run(name, s.y[:, k], present, horizon, t, s.workload)[ts] for k, t in enumerate(TARGETS)
            ]
            parts.append(np.stack(per_t, axis=1))
        out[name] = np.concatenate(parts)
    return out


def fit(data: ForecastData, series: list[Series], cfg: Config, seed: int, sc: Scaling | None = None, split=None, log=None):
    sc = sc or fit_scaling(data, series, split)
    st = stack(data, series, sc, cfg, split)
    if st is None:
        raise ValueError("no training windows: recordings shorter than the horizon?")
    x, y, yr, _, ran = st
    T, H, Q = len(TARGETS), cfg.horizon, len(cfg.quantiles)
    # Bounds: from no use at all to twice the most any training bucket used.
    top = np.log1p(2 * yr.max(axis=(0, 2)))
    lo = np.repeat((0.0 - sc.t_mean) / sc.t_std, H * Q).astype(np.float32)
    hi = np.repeat((top - sc.t_mean) / sc.t_std, H * Q).astype(np.float32)
    spec = nn.Spec(x.shape[1], T * H * Q, cfg.quantiles, cfg.hidden, lo=lo, hi=hi, spread=spread_of(sc, cfg))
    y_g = y  # (n, T·H)
    weights = None
    if cfg.weighting == "scale":
        # The window's own size of each target: its last bucket and its mean, in units.
        F_ = len(sc.features)
        lastz = x.reshape(len(x), cfg.window, F_)
        size = np.zeros((len(x), T))
        for k, t in enumerate(TARGETS):
            f = TARGET_FEATURE.get(t)
            if f is None:
                size[:, k] = yr[:, k, 0] * 0 + yr[:, k].mean()
                continue
            j = sc.features.index(f)
            raw = np.expm1(lastz[:, :, j].astype(np.float64) * sc.f_std[j] + sc.f_mean[j])
            size[:, k] = np.maximum(raw[:, -1], raw.mean(axis=1))
        w = np.clip(size / np.maximum(size.mean(axis=0), 1e-12), 0.05, 50.0)
        weights = np.repeat(w, H, axis=1).astype(np.float32)
    if cfg.absent == "skip":
        # Outputs are ordered target by target, each its H steps (n, T·H).
        ran_w = np.tile(ran, (1, T)).astype(np.float32)
        weights = ran_w if weights is None else weights * ran_w
    units = None
    if cfg.loss == "units":
        scale = np.maximum(yr.mean(axis=(0, 2)), 1e-9)
        units = tuple(np.repeat(a, H) for a in (sc.t_mean, sc.t_std, scale))
    t0 = time.time()
    params = nn.train(
        spec,
        x,
        y_g,
        seed=seed,
        steps=cfg.steps,
        batch=cfg.batch,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        skip_init=skip_init(sc, cfg),
        units=units,
        weights=weights,
        train_skip=cfg.train_skip,
        log=log,
    )
    if log:
        log(f"  {cfg.label()}: {len(x)} windows, {time.time() - t0:.1f} s")
    return params, spec, sc


_BASELINE_CACHE: dict = {}


def evaluate(params, spec, sc, cfg, data, series, split=None, with_baselines=True):
    st = stack(data, series, sc, cfg, split)
    x, _, yr, meta, ran = st
    pred = to_units(nn.predict(params, spec, x), sc, cfg)
    res = {
        "model": {
            "pinball": pinball_units(pred, yr, cfg.quantiles, ran),
            "coverage": coverage(pred, yr, ran),
            "n": int(ran.sum()),
        }
    }
    if with_baselines:
        # The samples do not depend on the model's window: baselines are computed once.
        key = (id(series), len(series), split, cfg.horizon, len(x))
        if key not in _BASELINE_CACHE:
            present_col = data.features.index("present")
            _BASELINE_CACHE[key] = baseline_bands(series, meta, cfg.horizon, present_col)
        for name, b in _BASELINE_CACHE[key].items():
            res[name] = {"pinball": pinball_units(b, yr, [0.1, 0.5, 0.9], ran), "coverage": coverage(b, yr, ran)}
    return res


def schema(sc: Scaling, cfg: Config, interval_ms: int, training: dict, version: str, seed: int) -> dict:
    return {
        "schema_version": 1,
        "kind": "forecast",
        "model_version": version,
        "interval_ms": interval_ms,
        "window": cfg.window,
        "horizon": cfg.horizon,
        "quantiles": cfg.quantiles,
        "features": sc.schema_features(),
        "targets": sc.schema_targets(),
        "input": "x",
        "output": "q",
        "training_data": training,
        "trained_by": f"models/train.py (seed {seed}, {cfg.label()}, {cfg.steps} steps)",
    }
