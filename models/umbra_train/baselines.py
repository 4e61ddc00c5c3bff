"""The agent's baselines (agent/src/predict/baseline.rs) in numpy, for choosing and judging
models in Python: last value, EWMA, seasonal naive, VPA-like, Autopilot-like. Each takes one
workload's series of a target (raw units, one value per bucket, zeros where absent) and
returns bands for every bucket t (made at the end of t) and step h: (n, H, 3) for
p10/p50/p90. `umbra eval` is the judge; these follow the Rust code closely enough to
guide."""

from __future__ import annotations

import numpy as np

Z90 = 1.281551565545
NAMES = ["last", "ewma", "seasonal", "vpa", "autopilot"]


def _band(a, b, c):
    v = np.sort(np.nan_to_num(np.maximum(np.stack([a, b, c], -1), 0.0)), axis=-1)
    return v


def _empirical(ys: np.ndarray, base: float, lag: int) -> tuple[float, float]:
    lag = max(lag, 1)
    if len(ys) <= lag:
        return base, base
    d = ys[lag:] - ys[:-lag]
    q = np.quantile(d, [0.1, 0.9])
    return base + q[0], base + q[1]


def last_value(y: np.ndarray, horizon: int, window: int = 24) -> np.ndarray:
    n = len(y)
    out = np.zeros((n, horizon, 3))
    for t in range(n):
        ys = y[max(0, t + 1 - window) : t + 1]
        # The featurizer's series are `window` long, zeros before the first bucket.
        if len(ys) < window:
            ys = np.concatenate([np.zeros(window - len(ys)), ys])
        last = ys[-1]
        for h in range(1, horizon + 1):
            lo, hi = _empirical(ys, last, h)
            out[t, h - 1] = _band(lo, last, hi)
    return out


def ewma(y: np.ndarray, horizon: int, alpha: float = 0.3) -> np.ndarray:
    n = len(y)
    out = np.zeros((n, horizon, 3))
    m, v = (y[0] if n else 0.0), 0.0
    for t in range(n):
        e = y[t] - m
        m += alpha * e
        v = (1 - alpha) * (v + alpha * e * e)
        sd = np.sqrt(v)
        out[t, :] = _band(m - Z90 * sd, m, m + Z90 * sd)
    return out


def find_period(ys: np.ndarray, max_period: int) -> int | None:
    n = len(ys)
    max_lag = min(max_period, n // 2)
    if max_lag < 2:
        return None
    mean = ys.mean()
    c = ys - mean
    var = float((c * c).sum())
    if var <= 1e-12 * n * (1 + mean * mean):
        return None
    turned = False
    best = None
    for k in range(1, max_lag + 1):
        r = float((c[k:] * c[:-k]).sum()) / var
        if not turned:
            turned = r < 0
            continue
        if best is None or r > best[1]:
            best = (k, r)
    if best is not None and best[1] > 0.3:
        return best[0]
    return None


def seasonal(y: np.ndarray, horizon: int, max_period: int = 144, workload_len: int = 0) -> np.ndarray:
    n = len(y)
    out = np.zeros((n, horizon, 3))
    keep = 2 * max_period
    until = workload_len % 12
    every = 12
    period = None
    for t in range(n):
        ys = y[max(0, t + 1 - keep) : t + 1].astype(np.float64)
        if until == 0:
            # As the agent: every 12 buckets while the window fills or after the period
            # changed, else twice as late as the last search, up to 48.
            found = find_period(ys, max_period)
            changed = found != period
            period = found
            every = 12 if changed or len(ys) < keep else min(2 * every, 48)
            until = every
        else:
            until -= 1
        m = len(ys)
        p = period if period is not None and period < m else None
        for h in range(1, horizon + 1):
            if p is not None:
                base = ys[m - 1 + h - p * -(-h // p)]
                lo, hi = _empirical(ys, base, p)
            else:
                tail = ys[max(0, m - 24) :]
                lo, hi = _empirical(tail, ys[-1], h)
                base = ys[-1]
            out[t, h - 1] = _band(lo, base, hi)
    return out


class _DecayingHistogram:
    def __init__(self, first, mx, ratio, half_life):
        self.first, self.ratio = first, ratio
        n = int(np.ceil(np.log(mx * (ratio - 1) / first + 1) / np.log(ratio))) + 1
        self.w = np.zeros(n)
        self.total = 0.0
        self.ref = 0.0
        self.half_life = max(half_life, 1e-3)

    def bucket(self, v):
        if not v >= self.first:
            return 0
        b = int(np.log(v * (self.ratio - 1) / self.first + 1) / np.log(self.ratio))
        return min(b, len(self.w) - 1)

    def start(self, b):
        return self.first * (self.ratio**b - 1) / (self.ratio - 1)

    def add(self, v, at):
        e = (at - self.ref) / self.half_life
        if e > 60:
            s = 2.0 ** (-e)
            self.w *= s
            self.total *= s
            self.ref = at
            e = 0.0
        w = 2.0**e
        self.w[self.bucket(v)] += w
        self.total += w

    def percentile(self, q):
        if self.total <= 0:
            return 0.0
        c = np.cumsum(self.w)
        last = len(self.w) - 1
        idx = np.nonzero(c[:last] >= q * self.total)[0]
        b = int(idx[0]) if len(idx) else last
        return self.start(b + 1) if b < last else self.start(b)


VPA_BUCKETS = {"cpu": (0.01, 1000.0), "memory": (1e7, 1e12), "io": (1e3, 1e11), "net": (1e3, 1e11)}


def vpa(y: np.ndarray, present: np.ndarray, horizon: int, target: str, half_life=720.0, margin=0.15, pct=0.9):
    n = len(y)
    out = np.zeros((n, horizon, 3))
    first, mx = VPA_BUCKETS[target]
    hist = _DecayingHistogram(first, mx, 1.05, half_life)
    for t in range(n):
        if present[t] > 0:
            hist.add(float(y[t]), float(t))
        top = hist.percentile(pct) * (1 + margin)
        out[t, :] = _band(hist.percentile(0.1), hist.percentile(0.5), top)
    return out


def _wpct(vals, ws, q):
    if len(vals) == 0:
        return 0.0
    o = np.argsort(vals, kind="stable")
    v, w = vals[o], ws[o]
    c = np.cumsum(w)
    i = np.nonzero(c >= q * w.sum())[0]
    return float(v[i[0]] if len(i) else v[-1])


def autopilot(y, present, horizon, target, window=144, half_life=36.0, pct=0.95, margin=0.1):
    n = len(y)
    out = np.zeros((n, horizon, 3))
    decay = 0.5 ** (1 / max(half_life, 1e-3))
    for t in range(n):
        lo_i = max(0, t + 1 - window)
        idx = np.arange(t, lo_i - 1, -1)
        w = decay ** np.arange(len(idx))
        keep = present[idx] > 0
        vals, ws = y[idx][keep].astype(np.float64), w[keep]
        if len(vals):
            avg = float((vals * ws).sum() / ws.sum())
            peak = float(vals.max())
        else:
            avg = peak = 0.0
        low = _wpct(vals, ws, 0.1)
        rec = (peak if target == "memory" else max(_wpct(vals, ws, pct), avg)) * (1 + margin)
        out[t, :] = _band(low, min(avg, rec), rec)
    return out


def run(name: str, y: np.ndarray, present: np.ndarray, horizon: int, target: str, key: str = "") -> np.ndarray:
    y = y.astype(np.float64)
    if name == "last":
        return last_value(y, horizon)
    if name == "ewma":
        return ewma(y, horizon)
    if name == "seasonal":
        return seasonal(y, horizon, workload_len=len(key))
    if name == "vpa":
        return vpa(y, present, horizon, target)
    if name == "autopilot":
        return autopilot(y, present, horizon, target)
    raise ValueError(name)
