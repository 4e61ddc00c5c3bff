"""The per-request model: an exec's features (its executable's profile, input sizes, hashed
argv, parent, cgroup, uid, node load) → quantiles of cpu_seconds, peak_rss_bytes,
duration_seconds and io_bytes (models/CONTRACT.md, kind "request")."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import nn
from .data import REQUEST_TARGETS, RequestData, load_requests, sha256_of

QUANTILES = [0.1, 0.5, 0.9]
IDENTITY_PREFIXES = ("parent_hash_", "cgroup_hash_", "uid_root", "node_cpu_busy", "node_mem_available")


@dataclass
class Config:
    hidden: list[int] = field(default_factory=lambda: [64])
    steps: int = 3000
    lr: float = 2e-3
    batch: int = 256
    weight_decay: float = 1e-5
    quantiles: list[float] = field(default_factory=lambda: list(QUANTILES))

    def label(self) -> str:
        return "linear" if not self.hidden else "mlp" + "x".join(map(str, self.hidden))


CANDIDATES = [Config(hidden=[]), Config(hidden=[32]), Config(hidden=[64]), Config(hidden=[128, 64])]
KEPT = Config(hidden=[128, 64])


def transform_of(name: str) -> str:
    return "identity" if name.startswith(IDENTITY_PREFIXES) else "log1p"


@dataclass
class Scaling:
    features: list[str]
    f_tr: list[str]
    f_mean: np.ndarray
    f_std: np.ndarray
    t_mean: np.ndarray
    t_std: np.ndarray

    def x(self, d: RequestData) -> np.ndarray:
        cols = [d.features.index(f) for f in self.features]
        v = d.x[:, cols].astype(np.float64)
        for i, t in enumerate(self.f_tr):
            if t == "log1p":
                v[:, i] = np.log1p(np.maximum(v[:, i], 0.0))
        return ((v - self.f_mean) / self.f_std).astype(np.float32)

    def y(self, d: RequestData) -> np.ndarray:
        return ((np.log1p(np.maximum(d.y.astype(np.float64), 0.0)) - self.t_mean) / self.t_std).astype(np.float32)

    def to_units(self, pred: np.ndarray, q: int) -> np.ndarray:
        p = pred.reshape(len(pred), len(REQUEST_TARGETS), q).astype(np.float64)
        return np.maximum(np.expm1(p * self.t_std[None, :, None] + self.t_mean[None, :, None]), 0.0)


def fit_scaling(d: RequestData) -> Scaling:
    names = list(d.features)
    trs = [transform_of(f) for f in names]
    v = d.x.astype(np.float64).copy()
    for i, t in enumerate(trs):
        if t == "log1p":
            v[:, i] = np.log1p(np.maximum(v[:, i], 0.0))
    fm, fs = v.mean(0), v.std(0)
    fs = np.where(fs > 1e-6, fs, 1.0)
    yt = np.log1p(np.maximum(d.y.astype(np.float64), 0.0))
    tm, ts = yt.mean(0), yt.std(0)
    ts = np.where(ts > 1e-6, ts, 1.0)
    # Each target shares the scaling of its profile median, so "the median of past runs"
    # passes straight through the skip.
    for k, t in enumerate(REQUEST_TARGETS):
        f = f"profile_{t}_p50"
        if f in names:
            j = names.index(f)
            tm[k], ts[k] = fm[j], fs[j]
    return Scaling(names, trs, fm, fs, tm, ts)


def skip_init(sc: Scaling, cfg: Config) -> np.ndarray:
    q = len(cfg.quantiles)
    a = np.zeros((len(sc.features), len(REQUEST_TARGETS) * q), np.float32)
    for k, t in enumerate(REQUEST_TARGETS):
        for j, lvl in enumerate(cfg.quantiles):
            f = f"profile_{t}_p{int(round(lvl * 100))}"
            if f in sc.features:
                a[sc.features.index(f), k * q + j] = 1.0 if j == q // 2 else 0.0
    return a


def pinball_units(pred, y, quantiles):
    tau = np.asarray(quantiles)
    d = y[..., None] - pred
    return np.maximum(tau * d, (tau - 1) * d).mean(axis=(0, 2))


def coverage(pred, y):
    return ((y >= pred[..., 0]) & (y <= pred[..., -1])).mean(axis=0)


def profile_baseline(d: RequestData) -> np.ndarray:
    """The profile-only baseline: the empirical p10/p50/p90 of the key's past runs."""
    return np.stack(
        [np.stack([d.column(f"profile_{t}_p{p}") for p in (10, 50, 90)], -1) for t in REQUEST_TARGETS], 1
    ).astype(np.float64)


# An executable's input sizes must span this factor (p90 / p10 over its requests with
# input files) for it to count as input-size-dependent (`umbra eval` uses the same rule).
SIZE_SPREAD = 4.0


def size_dependent(d: RequestData) -> np.ndarray:
    """Requests of a known executable (past runs) given input files."""
    return (d.column("profile_runs") > 0) & (d.column("input_bytes_total") > 0)


def input_size_dependent(d: RequestData) -> np.ndarray:
    """The requests the acceptance is about: `size_dependent` ones of executables whose
    inputs vary in size (p90 / p10 of input_bytes_total over their requests with inputs
    at least SIZE_SPREAD) — programs run over inputs of different sizes, not a build tool
    given the same file each time. Decided from the inputs alone, never the outcomes."""
    base = size_dependent(d)
    size = d.column("input_bytes_total")
    out = np.zeros(len(d), bool)
    for k in np.unique(d.key[base]):
        rows = base & (d.key == k)
        p10, p90 = np.quantile(size[rows], [0.1, 0.9])
        if p90 >= SIZE_SPREAD * max(p10, 1.0):
            out |= rows
    return out


# A peak RSS below this is no measurement: every exec'd program maps more. It is what the
# capture reported for a run no sample saw with its memory (one shorter than an interval,
# on kernels before 6.16, and in every recording made before the capture took a process's
# memory at its exit): 0 or one page. The agent's profiles use the same bound
# (`MEASURED_RSS` in agent/src/predict/profiles.rs); change both together.
MEASURED_RSS = 64 << 10


def rss_measured(d: RequestData) -> np.ndarray:
    """Requests whose peak RSS was measured (see MEASURED_RSS)."""
    return d.y[:, REQUEST_TARGETS.index("peak_rss_bytes")] >= MEASURED_RSS


def loss_weights(d: RequestData) -> np.ndarray:
    """Per request and target, whether the outcome counts in the loss: all but the peak RSS
    of requests where it was not measured."""
    w = np.ones((len(d), len(REQUEST_TARGETS)), np.float32)
    w[:, REQUEST_TARGETS.index("peak_rss_bytes")] = rss_measured(d)
    return w


def ratio_vs_profile(res: dict) -> np.ndarray:
    """An `evaluate` result's pinball loss per target, model / profile."""
    return res["model"]["pinball"] / np.maximum(res["profile"]["pinball"], 1e-12)


# The agent holds a request model's quantiles within this factor of the executable's
# profile band, stretched by the input's size (`HOLD` in agent/src/predict/exec.rs, which
# says why); change both together.
HOLD = 3.0


def held(d: RequestData, pred: np.ndarray) -> np.ndarray:
    """`pred` (n, targets, quantiles, in units) as the agent uses it: each outcome within
    p10 / HOLD … p90 × HOLD of its profile, that band stretched by how far this request's
    input lies below the past runs' p10 input or above their p90; an outcome whose profile
    p90 is 0 (nothing measured) as it is."""
    prof = profile_baseline(d)
    inp = d.column("input_bytes_total").astype(np.float64)
    past_lo = d.column("profile_input_bytes_p10").astype(np.float64)
    past_hi = d.column("profile_input_bytes_p90").astype(np.float64)
    sized = (inp > 0) & (past_hi > 0)
    below = np.where(sized, np.minimum(1.0, (inp + 1) / (past_lo + 1)), 1.0)[:, None]
    above = np.where(sized, np.maximum(1.0, (inp + 1) / (past_hi + 1)), 1.0)[:, None]
    lo, hi = prof[:, :, 0] / HOLD * below, prof[:, :, -1] * HOLD * above
    out = np.minimum(np.maximum(pred, lo[..., None]), hi[..., None])
    return np.where((prof[:, :, -1] > 0)[..., None], out, pred)


# The agent's guard (`Guard` in agent/src/predict/exec.rs, which says why): per executable
# and outcome, the profile takes over from the model once GUARD_MIN_SCORED runs were scored
# and the profile's moving pinball loss is below GUARD_SWITCH × the model's (and back).
GUARD_DECAY, GUARD_MIN_SCORED, GUARD_SWITCH = 0.9, 8, 0.85


def _pinball_rows(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    tau = np.asarray(QUANTILES)
    e = y[..., None] - pred
    return np.maximum(tau * e, (tau - 1) * e).mean(-1)


def guarded(d: RequestData, model: np.ndarray) -> np.ndarray:
    """`model` (n, targets, quantiles, units; every request of `d` an executable with past
    runs) as the agent's guard hands it on: per recording (an agent run), requests in exec
    order, each consulting the guard as the runs that ended before its exec left it."""
    prof = profile_baseline(d)
    y = d.y.astype(np.float64)
    end = d.exec_ns + (y[:, REQUEST_TARGETS.index("duration_seconds")] * 1e9).astype(np.int64)
    loss = np.stack([_pinball_rows(model, y), _pinball_rows(prof, y)], 1)  # (n, 2, targets)
    scored = np.ones(y.shape, bool)
    scored[:, REQUEST_TARGETS.index("peak_rss_bytes")] = rss_measured(d)
    out = model.copy()
    for r in np.unique(d.recording):
        idx = np.nonzero(d.recording == r)[0]
        idx = idx[np.argsort(d.exec_ns[idx], kind="stable")]
        ended = idx[np.argsort(end[idx], kind="stable")]
        state: dict = {}  # key -> [loss (2, targets), runs, chosen (targets,)]
        at = 0
        for i in idx:
            while at < len(ended) and end[ended[at]] <= d.exec_ns[i]:
                j = ended[at]
                at += 1
                avg, n, chosen = state.setdefault(d.key[j], [np.full((2, len(REQUEST_TARGETS)), np.nan), 0, np.zeros(len(REQUEST_TARGETS), int)])
                upd = np.where(np.isnan(avg), loss[j], GUARD_DECAY * avg + (1 - GUARD_DECAY) * loss[j])
                avg[:] = np.where(scored[j], upd, avg)
                n += 1
                state[d.key[j]][1] = n
                if n >= GUARD_MIN_SCORED:
                    for t in range(len(REQUEST_TARGETS)):
                        other = 1 - chosen[t]
                        if avg[other, t] < GUARD_SWITCH * avg[chosen[t], t] or (np.isnan(avg[chosen[t], t]) and not np.isnan(avg[other, t])):
                            chosen[t] = other
            if d.key[i] in state:
                to = state[d.key[i]][2] == 1
                out[i, to] = prof[i, to]
    return out


def evaluate(params, spec, sc, cfg, d: RequestData, mask: np.ndarray) -> dict:
    sub = d.take(np.nonzero(mask)[0])
    pred = held(sub, sc.to_units(nn.predict(params, spec, sc.x(sub)), len(cfg.quantiles)))
    base = profile_baseline(sub)
    y = sub.y.astype(np.float64)
    return {
        "n": int(len(sub)),
        "model": {"pinball": pinball_units(pred, y, cfg.quantiles), "coverage": coverage(pred, y)},
        "profile": {"pinball": pinball_units(base, y, [0.1, 0.5, 0.9]), "coverage": coverage(base, y)},
    }


def fit(d: RequestData, cfg: Config, seed: int, log=None):
    sc = fit_scaling(d)
    x, y = sc.x(d), sc.y(d)
    spec = nn.Spec(x.shape[1], len(REQUEST_TARGETS) * len(cfg.quantiles), cfg.quantiles, cfg.hidden)
    t0 = time.time()
    params = nn.train(
        spec, x, y, seed=seed, steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, weight_decay=cfg.weight_decay,
        skip_init=skip_init(sc, cfg), weights=loss_weights(d), log=log,
    )
    if log:
        log(f"  {cfg.label()}: {len(x)} requests, {time.time() - t0:.1f} s")
    return params, spec, sc


def conformal_widening(params, spec, sc: Scaling, cfg: Config, d: RequestData, cover=0.8) -> np.ndarray:
    """Per output (standardised), what to add so that the outermost quantiles' band holds
    `cover` of `d`'s outcomes (of peak RSS, the measured ones): conformalized quantile
    regression's score max(lo − y, y − hi) per target, its `cover` quantile (finite-sample
    corrected), never negative (the band only widens); subtracted from the lowest quantile,
    added to the highest."""
    q = len(cfg.quantiles)
    pred = nn.predict(params, spec, sc.x(d)).reshape(len(d), len(REQUEST_TARGETS), q)
    y = sc.y(d)
    counted = loss_weights(d) > 0
    widen = np.zeros(len(REQUEST_TARGETS) * q, np.float32)
    for k in range(len(REQUEST_TARGETS)):
        e = np.maximum(pred[:, k, 0] - y[:, k], y[:, k] - pred[:, k, -1])[counted[:, k]]
        n = len(e)
        if n == 0:
            continue
        level = min(1.0, cover * (n + 1) / n)
        w = max(float(np.quantile(e, level)), 0.0)
        widen[k * q] = -w
        widen[k * q + q - 1] = w
    return widen


def unseen_validation(d: RequestData, cfg: Config, seed: int, min_requests: int = 40) -> dict:
    """How the configuration does on executables it never trained on: each executable
    with at least `min_requests` input-size-dependent requests left out of training whole
    (every recording), and judged on those requests against its own profile. The time
    split cannot show this: every executable it validates on is also in its training."""
    names = np.array([Path(e).name for e in d.exe])
    dep = input_size_dependent(d)
    judged = sorted(n for n in np.unique(names[dep]) if (dep & (names == n)).sum() >= min_requests)
    per, total = {}, 0
    model, live, profile = (np.zeros(len(REQUEST_TARGETS)) for _ in range(3))
    for name in judged:
        out = names == name
        params, spec, sc = fit(d.take(np.nonzero(~out)[0]), cfg, seed)
        dv = d.take(np.nonzero(out & (d.column("profile_runs") > 0))[0])
        res = evaluate(params, spec, sc, cfg, dv, input_size_dependent(dv))
        pred = held(dv, sc.to_units(nn.predict(params, spec, sc.x(dv)), len(cfg.quantiles)))
        m = input_size_dependent(dv)
        g = pinball_units(guarded(dv, pred)[m], dv.y[m].astype(np.float64), cfg.quantiles)
        per[name] = {"n": res["n"], "ratio": ratio_vs_profile(res).tolist(),
                     "guarded_ratio": (g / np.maximum(res["profile"]["pinball"], 1e-12)).tolist()}
        model += res["model"]["pinball"] * res["n"]
        live += g * res["n"]
        profile += res["profile"]["pinball"] * res["n"]
        total += res["n"]
    both = {"model": {"pinball": model}, "profile": {"pinball": profile}}
    live = {"model": {"pinball": live}, "profile": {"pinball": profile}}
    return {"executables": per, "n": total, "ratio": ratio_vs_profile(both).tolist(),
            "guarded_ratio": ratio_vs_profile(live).tolist()}


def time_split(d: RequestData, frac=0.75) -> tuple[np.ndarray, np.ndarray]:
    """Per recording, the first `frac` of its requests (in exec order) train, the rest validate."""
    tr = np.zeros(len(d), bool)
    for r in np.unique(d.recording):
        idx = np.nonzero(d.recording == r)[0]
        idx = idx[np.argsort(d.exec_ns[idx], kind="stable")]
        tr[idx[: int(len(idx) * frac)]] = True
    return tr, ~tr


def schema(sc: Scaling, cfg: Config, hash_buckets: int, training: dict, version: str, seed: int) -> dict:
    return {
        "schema_version": 1,
        "kind": "request",
        "model_version": version,
        "quantiles": cfg.quantiles,
        "hash_buckets": hash_buckets,
        "features": [
            {"name": n, "transform": t, "mean": float(m), "std": float(s)}
            for n, t, m, s in zip(sc.features, sc.f_tr, sc.f_mean, sc.f_std)
        ],
        "targets": [
            {"name": n, "transform": "log1p", "mean": float(m), "std": float(s)}
            for n, m, s in zip(REQUEST_TARGETS, sc.t_mean, sc.t_std)
        ],
        "input": "x",
        "output": "q",
        "training_data": training,
        "trained_by": f"models/train.py (seed {seed}, {cfg.label()}, {cfg.steps} steps)",
    }


def fmt(res: dict) -> str:
    lines = [f"  {'predictor':<12}" + "".join(f"{t:>18}" for t in REQUEST_TARGETS) + "   coverage"]
    for k in ("model", "profile"):
        r = res[k]
        lines.append(
            f"  {k:<12}" + "".join(f"{v:>18.5g}" for v in r["pinball"]) + "   " + ",".join(f"{c:.2f}" for c in r["coverage"])
        )
    return "\n".join(lines)


def run(args, report: dict, log) -> None:
    data_dir: Path = args.data
    files = [f for f in sorted(data_dir.glob("requests-*.csv*")) if "test" not in f.name]
    if not files:
        log(f"request model: no requests-*.csv[.xz] in {data_dir}; skipped")
        return
    d = load_requests(files)
    hb = sum(1 for f in d.features if f.startswith("argv_hash_"))
    identity = {"sha256": sha256_of(files), "files": [f.name for f in files], "rows": len(d),
                "recordings": sorted({Path(r).name for r in np.unique(d.recording)})}
    if args.quick:
        d = d.take(np.arange(min(len(d), 600)))
    log(f"request: {len(d)} requests, {len(d.features)} features, {len(np.unique(d.key))} executables")
    cfg = KEPT if not args.quick else Config(hidden=[16], steps=300)
    if args.search:
        tr, va = time_split(d)
        dtr, dva = d.take(np.nonzero(tr)[0]), d.take(np.nonzero(va)[0])
        results = []
        for c in CANDIDATES:
            params, spec, sc = fit(dtr, c, args.seed, log=log)
            res = evaluate(params, spec, sc, c, dva, input_size_dependent(dva))
            ratio = ratio_vs_profile(res)
            results.append((c, res, ratio))
            log(f"validation {c.label()} (n={res['n']}): pinball / profile = " + ", ".join(f"{t} {r:.3f}" for t, r in zip(REQUEST_TARGETS, ratio)))
        cfg = results[int(np.argmin([float(r.mean()) for _, _, r in results]))][0]
        log(f"kept: {cfg.label()} (lowest mean ratio)")
        report["request_validation"] = [
            {"config": c.label(), "n": r["n"], "model": r["model"]["pinball"].tolist(),
             "profile": r["profile"]["pinball"].tolist(), "ratio": ra.tolist()}
            for c, r, ra in results
        ]
        unseen = unseen_validation(d, cfg, args.seed)
        log(f"validation {cfg.label()} on executables left out of training (n={unseen['n']}): pinball / profile = "
            + ", ".join(f"{t} {r:.3f}" for t, r in zip(REQUEST_TARGETS, unseen["ratio"]))
            + "; with the agent's guard " + ", ".join(f"{r:.3f}" for r in unseen["guarded_ratio"]))
        for name, r in unseen["executables"].items():
            log(f"  {name} (n={r['n']}): " + ", ".join(f"{v:.3f}" for v in r["ratio"])
                + "; guarded " + ", ".join(f"{v:.3f}" for v in r["guarded_ratio"]))
        report["request_unseen_validation"] = unseen
    t0 = time.time()
    # Split conformal (CQR): the same configuration fit on each recording's first three
    # quarters; its band's misses on the last quarter's requests of known executables
    # given input files (the hardest to predict; others get the same, wider-than-needed
    # band) give how far to widen p10 and p90 so that 80% fall inside.
    tr, va = time_split(d)
    p75, s75, sc75 = fit(d.take(np.nonzero(tr)[0]), cfg, args.seed)
    dva = d.take(np.nonzero(va)[0])
    dva = dva.take(np.nonzero(size_dependent(dva))[0])
    widen = conformal_widening(p75, s75, sc75, cfg, dva)
    params, spec, sc = fit(d, cfg, args.seed, log=log)
    spec.widen = widen
    log("conformal widening of p10/p90 (standardised log units): " + ", ".join(
        f"{t} {widen[k * len(cfg.quantiles) + len(cfg.quantiles) - 1]:.3f}" for k, t in enumerate(REQUEST_TARGETS)))
    report["request_train_seconds"] = round(time.time() - t0, 1)
    report["request_widening"] = widen.tolist()
    out = args.out / "request.onnx"
    sch = schema(sc, cfg, hb, identity, report["model_version"], args.seed)
    size = nn.export_onnx(params, spec, sch, out)
    x = sc.x(d)[:512]
    want = nn.predict(params, spec, x)
    got, meta = nn.tract_run(out, x)
    diff = float(np.abs(got - want).max())
    if diff > 1e-4 or json.loads(meta) != json.loads(json.dumps(sch)):
        raise SystemExit(f"{out}: tract disagrees with JAX (max diff {diff}) or the schema did not survive")
    log(f"wrote {out} ({size} bytes); tract matches JAX to {diff:.2g} on {len(x)} requests")
    report["request"] = {"file": out.name, "bytes": size, "config": cfg.label(), "tract_max_diff": diff}
    if args.test:
        tfiles = sorted(Path(args.test).glob("requests-*.csv*"))
        if tfiles:
            t = load_requests(tfiles)
            if t.features != d.features:
                raise SystemExit("test request rows have other features than the training rows")
            def as_json(r):
                return {k: (v if k == "n" else {kk: vv.tolist() for kk, vv in v.items()}) for k, v in r.items()}

            res = evaluate(params, spec, sc, cfg, t, input_size_dependent(t))
            log(f"held-out test requests, executables run over inputs of different sizes (n={res['n']}):")
            log(fmt(res))
            broad = evaluate(params, spec, sc, cfg, t, size_dependent(t))
            log(f"  every known executable given input files (n={broad['n']}):")
            log(fmt(broad))
            unseen = ~np.isin(t.exe, np.unique(d.exe))
            report["request_test"] = {
                "input_size_dependent": as_json(res),
                "ratio_vs_profile": ratio_vs_profile(res).tolist(),
                "size_dependent": as_json(broad),
                "size_dependent_ratio_vs_profile": ratio_vs_profile(broad).tolist(),
                "unseen_executables": sorted({Path(e).name for e in t.exe[unseen]}),
            }
            m = input_size_dependent(t) & unseen
            if m.any():
                r2 = evaluate(params, spec, sc, cfg, t, m)
                log(f"  of which executables never in training (n={r2['n']}):")
                log(fmt(r2))
                report["request_test"]["unseen"] = {k: (v if k == "n" else {kk: vv.tolist() for kk, vv in v.items()}) for k, v in r2.items()}
