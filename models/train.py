#!/usr/bin/env python3
"""Trains Umbra's models from what the agent exports (models/CONTRACT.md) and writes them as
ONNX with their `umbra.schema`, each checked in tract (the agent's engine) against JAX.

    python models/train.py [--data DIR] [--out DIR] [--seed 7] [--search] [--test DIR]
                           [--only forecast|request] [--from-hub DIR] [--quick]

Run it through `cargo xtask train`, which installs the pinned packages into a venv and
exports the held-out test recordings for --test. With --search it compares architectures
on a validation split of the training recordings (the last quarter of each) and keeps the
best; without it, it trains the kept configuration (models/README.md says which and why).
The test recordings are read only after the model is fixed, for the report."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from umbra_train import data as D  # noqa: E402
from umbra_train import forecast as F  # noqa: E402
from umbra_train import nn  # noqa: E402

MODEL_VERSION = "2026.12.07-2"

# What the forecaster search compared (models/README.md has the numbers); KEPT is shipped.
FORECAST_CANDIDATES = [
    F.Config(window=24, hidden=[]),
    F.Config(window=24, hidden=[], loss="units"),
    F.Config(window=12, hidden=[64]),
    F.Config(window=24, hidden=[64], loss="units"),
    F.Config(window=24, hidden=[128, 64], loss="units"),
    F.Config(window=12, hidden=[], train_skip=False),
    F.Config(window=12, hidden=[64], train_skip=False),
    F.Config(window=24, hidden=[64], train_skip=False),
    F.Config(window=12, hidden=[64], train_skip=False, weight_decay=1e-3),
    F.Config(window=12, hidden=[64], train_skip=False, weighting="scale"),
    F.Config(window=12, hidden=[64], train_skip=False, weight_decay=1e-3, absent="fit"),
    F.Config(window=12, hidden=[64], train_skip=False, weight_decay=1e-3, spread="cpu"),
    F.Config(window=18, hidden=[64], train_skip=False, weight_decay=1e-3, spread="cpu"),
    F.Config(window=24, hidden=[64], train_skip=False, weight_decay=1e-3, spread="cpu"),
]
FORECAST_KEPT = F.Config(window=18, hidden=[64], train_skip=False, weight_decay=1e-3, spread="cpu")


def log(msg: str) -> None:
    print(msg, flush=True)


def fmt_table(rows: list[tuple[str, dict]], targets=D.TARGETS) -> str:
    out = [f"  {'predictor':<22}" + "".join(f"{t:>14}" for t in targets) + "   coverage(cpu,mem)"]
    for name, r in rows:
        cov = r.get("coverage")
        c = f"   {cov[0]:.2f},{cov[1]:.2f}" if cov is not None else ""
        out.append(f"  {name:<22}" + "".join(f"{v:>14.5g}" for v in r["pinball"]) + c)
    return "\n".join(out)


def time_split(frac: float):
    """Each recording's first `frac` of buckets trains; forecasts made after it validate."""

    def train_part(s):
        cut = int(len(s) * frac)
        return 0, cut - 6  # horizons end before the cut (H ≤ 6 in every candidate)

    def val_part(s):
        return int(len(s) * frac), None

    return train_part, val_part


def ratio_vs_best(res: dict) -> tuple[np.ndarray, str]:
    names = [k for k in res if k != "model"]
    best = np.min(np.stack([res[k]["pinball"] for k in names]), axis=0)
    return res["model"]["pinball"] / np.maximum(best, 1e-12), ",".join(
        names[int(i)] for i in np.argmin(np.stack([res[k]["pinball"] for k in names]), axis=0)
    )


def forecast_files(data_dir: Path) -> list[Path]:
    files = sorted(data_dir.glob("forecast-*.csv.xz")) + sorted(data_dir.glob("forecast-*.csv"))
    return [f for f in files if "test" not in f.name]


def run_forecast(args, report: dict) -> None:
    if args.from_hub:
        files = []
        probe = D.load_forecast(forecast_files(args.data)[:1]) if forecast_files(args.data) else None
        feats = probe.features if probe else list(F.IDENTITY) + []
        data = D.load_hub(args.from_hub, feats)
        identity = {"hub": str(args.from_hub), "rows": data.rows}
    else:
        files = forecast_files(args.data)
        if not files:
            raise SystemExit(f"no forecast-*.csv[.xz] in {args.data}: run `cargo xtask record-training` or give --data")
        data = D.load_forecast(files)
        identity = {"sha256": D.sha256_of(files), "files": [f.name for f in files], "rows": data.rows}
    series = data.series
    if args.quick:
        series = [s for s in series if s.y[:, 0].max() > 0.05][:40]
    identity["recordings"] = sorted({Path(s.recording).name for s in series})
    log(f"forecast: {len(series)} series, {sum(len(s) for s in series)} buckets of {data.interval_ms} ms")
    cfg = FORECAST_KEPT
    if args.quick:
        cfg = F.Config(window=12, hidden=[16], steps=300, spread="cpu")
    if args.search:
        tr, va = time_split(0.75)
        if args.candidates:
            keep = set(args.candidates.split(","))
            cands = [c for i, c in enumerate(FORECAST_CANDIDATES) if str(i) in keep]
        else:
            cands = FORECAST_CANDIDATES
        results = []
        for c in cands:
            params, spec, sc = F.fit(data, series, c, args.seed, split=tr, log=log)
            res = F.evaluate(params, spec, sc, c, data, series, split=va)
            ratio, best = ratio_vs_best(res)
            results.append((c, res, ratio))
            log(f"validation {c.label()}: pinball / best baseline = " + ", ".join(f"{t} {r:.3f}" for t, r in zip(D.TARGETS, ratio)))
        log("validation (last quarter of each training recording):")
        rows = [(f"model {c.label()}", r["model"]) for c, r, _ in results]
        rows += [(k, v) for k, v in results[0][1].items() if k != "model"]
        log(fmt_table(rows))
        score = [float(r[0] + r[1]) for _, _, r in results]
        cfg = results[int(np.argmin(score))][0]
        log(f"kept: {cfg.label()} (lowest cpu + memory ratio)")
        report["forecast_validation"] = [
            {"config": c.label(), **{k: {"pinball": v["pinball"].tolist()} for k, v in r.items()}, "ratio": ra.tolist()}
            for c, r, ra in results
        ]
    t0 = time.time()
    params, spec, sc = F.fit(data, series, cfg, args.seed, log=log)
    report["forecast_train_seconds"] = round(time.time() - t0, 1)
    out = args.out / "forecast.onnx"
    schema = F.schema(sc, cfg, data.interval_ms, identity, MODEL_VERSION, args.seed)
    size = nn.export_onnx(params, spec, schema, out)
    # The same rows through JAX and through tract.
    x = F.stack(data, series[:20], sc, cfg)[0][:512]
    want = nn.predict(params, spec, x)
    got, meta = nn.tract_run(out, x)
    diff = float(np.abs(got - want).max())
    if diff > 1e-4 or json.loads(meta) != json.loads(json.dumps(schema)):
        raise SystemExit(f"{out}: tract disagrees with JAX (max diff {diff}) or the schema did not survive")
    log(f"wrote {out} ({size} bytes); tract matches JAX to {diff:.2g} on {len(x)} windows")
    report["forecast"] = {"file": out.name, "bytes": size, "config": cfg.label(), "tract_max_diff": diff}
    if args.test:
        tfiles = sorted(Path(args.test).glob("forecast-*.csv*"))
        if tfiles:
            test = D.load_forecast(tfiles)
            if test.interval_ms != data.interval_ms:
                raise SystemExit(f"test rows are at {test.interval_ms} ms, training at {data.interval_ms} ms")
            res = F.evaluate(params, spec, sc, cfg, test, test.series)
            ratio, best = ratio_vs_best(res)
            log("held-out test recordings (" + ", ".join(sorted({Path(s.recording).name for s in test.series})) + "):")
            log(fmt_table([(k, v) for k, v in res.items()]))
            log("  pinball / best baseline: " + ", ".join(f"{t} {r:.3f} (vs {b})" for t, r, b in zip(D.TARGETS, ratio, best.split(","))))
            report["forecast_test"] = {
                **{k: {"pinball": v["pinball"].tolist(), "coverage": v["coverage"].tolist()} for k, v in res.items()},
                "ratio_vs_best_baseline": ratio.tolist(),
                "best_baseline": best.split(","),
            }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--search", action="store_true", help="compare architectures on the validation split")
    ap.add_argument("--candidates", help="with --search: only these candidates (indices, comma-separated)")
    ap.add_argument("--test", type=Path, help="directory of exported held-out test rows (for the report)")
    ap.add_argument("--only", choices=["forecast", "request"])
    ap.add_argument("--from-hub", type=Path, help="train the forecaster on a hub's Parquet summaries")
    ap.add_argument("--quick", action="store_true", help="a small slice and few steps (the pipeline test)")
    ap.add_argument("--report", type=Path, help="write the numbers as JSON here")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"seed": args.seed, "model_version": MODEL_VERSION}
    t0 = time.time()
    if args.only in (None, "forecast"):
        run_forecast(args, report)
    if args.only in (None, "request") and not args.from_hub:
        from umbra_train import request as R

        R.run(args, report, log)
    report["seconds"] = round(time.time() - t0, 1)
    log(f"done in {report['seconds']} s")
    if args.report:
        args.report.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
