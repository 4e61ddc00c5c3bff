"""The training pipeline's tests (run by `cargo xtask test` in the models venv):

- a quick re-training on a small slice of the shipped data exports models that tract loads
  and whose outputs match JAX, with a schema that follows models/CONTRACT.md;
- the shipped models name the shipped data: the sha256 in their schema is re-derived from
  the files, and they run in tract with ordered, finite quantiles.

    cd models && python -m unittest -v test_pipeline
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from umbra_train import data as D  # noqa: E402
from umbra_train import nn  # noqa: E402

FORECAST_VOCABULARY = {
    "cpu_cores", "rss_bytes", "processes", "read_bps", "write_bps", "block_read_bps",
    "block_write_bps", "net_rx_bps", "net_tx_bps", "execs_ps", "conn_accepted_ps",
    "conn_opened_ps", "syscalls_ps", "page_faults_ps", "tod_sin", "tod_cos", "present",
}
MAX_MODEL_BYTES = 2 << 20


def schema_of(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props}
    return json.loads(props["umbra.schema"])


def check_schema(t: unittest.TestCase, s: dict, path: Path) -> None:
    t.assertEqual(s["schema_version"], 1, path)
    t.assertIn(s["kind"], ("forecast", "request"))
    t.assertEqual((s["input"], s["output"]), ("x", "q"))
    q = s["quantiles"]
    t.assertEqual(q, sorted(q))
    for lvl in (0.1, 0.5, 0.9):
        t.assertIn(lvl, q)
    for f in s["features"] + s["targets"]:
        t.assertIn(f["transform"], ("identity", "log1p"))
        t.assertGreater(f["std"], 0)
    if s["kind"] == "forecast":
        t.assertTrue({f["name"] for f in s["features"]} <= FORECAST_VOCABULARY)
        t.assertEqual([f["name"] for f in s["targets"]], D.TARGETS)
        t.assertGreater(s["window"], 0)
        t.assertGreater(s["horizon"], 0)
        t.assertGreater(s["interval_ms"], 0)
    else:
        t.assertEqual([f["name"] for f in s["targets"]], D.REQUEST_TARGETS)
        t.assertGreater(s["hash_buckets"], 0)
    t.assertIn("rows", s["training_data"])


def inputs(s: dict, n: int, seed: int = 0) -> np.ndarray:
    width = len(s["features"]) * (s["window"] if s["kind"] == "forecast" else 1)
    return np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)


def outputs_ordered(t: unittest.TestCase, s: dict, out: np.ndarray) -> None:
    q = len(s["quantiles"])
    t.assertTrue(np.isfinite(out).all())
    g = out.reshape(len(out), -1, q)
    t.assertTrue((np.diff(g, axis=2) >= -1e-6).all(), "quantiles cross")


class Pipeline(unittest.TestCase):
    def test_a_quick_retraining_exports_models_that_tract_runs_as_jax_does(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d)
            r = subprocess.run(
                [sys.executable, str(HERE / "train.py"), "--quick", "--out", str(out), "--report", str(out / "r.json")],
                capture_output=True,
                text=True,
            )
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            report = json.loads((out / "r.json").read_text())
            made = [p for p in (out / "forecast.onnx", out / "request.onnx") if p.exists()]
            self.assertIn(out / "forecast.onnx", made)
            for p in made:
                self.assertLessEqual(p.stat().st_size, MAX_MODEL_BYTES)
                s = schema_of(p)
                check_schema(self, s, p)
                x = inputs(s, 37)
                got, meta = nn.tract_run(p, x)
                self.assertEqual(json.loads(meta), s)
                outputs_ordered(self, s, got)
            self.assertLess(report["forecast"]["tract_max_diff"], 1e-4)

    def test_the_shipped_models_name_the_shipped_data_and_run_in_tract(self):
        shipped = sorted(HERE.glob("*.onnx"))
        self.assertTrue(shipped, "no shipped models in models/")
        for p in shipped:
            self.assertLessEqual(p.stat().st_size, MAX_MODEL_BYTES, p)
            s = schema_of(p)
            check_schema(self, s, p)
            td = s["training_data"]
            files = [HERE / "data" / f for f in td["files"]]
            self.assertEqual(D.sha256_of(files), td["sha256"], f"{p.name} was not trained on the shipped {td['files']}")
            got, _ = nn.tract_run(p, inputs(s, 16, seed=1))
            outputs_ordered(self, s, got)


def request_names(hash_buckets: int) -> list[str]:
    """The request vocabulary in the agent's order (agent/src/predict/request.rs)."""
    out = ["profile_runs"]
    for t in D.REQUEST_TARGETS:
        out += [f"profile_{t}_p{p}" for p in (10, 50, 90)]
    out += [f"profile_input_bytes_p{p}" for p in (10, 50, 90)]
    out += [f"profile_{t}_per_mib_p50" for t in D.REQUEST_TARGETS]
    out += ["input_files", "input_bytes_total", "input_bytes_max", "argv_count"]
    out += [f"argv_hash_{k}" for k in range(hash_buckets)]
    out += [f"parent_hash_{k}" for k in range(8)] + [f"cgroup_hash_{k}" for k in range(8)]
    return out + ["uid_root", "node_cpu_busy", "node_mem_available"]


def synthetic_requests(path: Path, n: int, seed: int) -> None:
    """Requests of a compressor whose cost grows with its input: each row's profile holds
    the quantiles of the runs before it, as the agent's export writes them."""
    rng = np.random.default_rng(seed)
    names = request_names(8)
    runs: list[tuple[np.ndarray, float]] = []
    lines = [",".join(["recording", "key", "exe", "exec_ns"] + names + [f"y_{t}" for t in D.REQUEST_TARGETS])]
    for i in range(n):
        mib = float(np.exp(rng.uniform(0, np.log(256))))
        y = np.array([0.03 * mib, 2e6 + 1e5 * mib, 0.035 * mib, mib * 2**20]) * rng.lognormal(0, 0.1, 4)
        row = dict.fromkeys(names, 0.0)
        past = runs[-64:]
        if past:
            ys = np.array([r[0] for r in past])
            ins = np.array([r[1] for r in past])
            row["profile_runs"] = len(past)
            for k, t in enumerate(D.REQUEST_TARGETS):
                for p in (10, 50, 90):
                    row[f"profile_{t}_p{p}"] = np.quantile(ys[:, k], p / 100)
                row[f"profile_{t}_per_mib_p50"] = np.median(ys[:, k] / (ins / 2**20))
            for p in (10, 50, 90):
                row[f"profile_input_bytes_p{p}"] = np.quantile(ins, p / 100)
        row.update(input_files=1, input_bytes_total=mib * 2**20, input_bytes_max=mib * 2**20, argv_count=3)
        row["argv_hash_3"] = 2
        row["node_mem_available"] = 0.8
        lines.append(",".join(["r", "exe:sha256:x", "/usr/bin/x", str(i)] + [f"{row[k]:g}" for k in names] + [f"{v:g}" for v in y]))
        runs.append((y, mib * 2**20))
    path.write_text("\n".join(lines) + "\n")


class Request(unittest.TestCase):
    def test_input_sizes_beat_the_profile_of_past_runs_on_a_size_dependent_program(self):
        from types import SimpleNamespace

        from umbra_train import request as R

        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            synthetic_requests(d / "requests-train.csv", 700, seed=1)
            (d / "test").mkdir()
            synthetic_requests(d / "test" / "requests-test.csv", 300, seed=2)
            report: dict = {"model_version": "test"}
            R.KEPT = R.Config(hidden=[64], steps=800)
            args = SimpleNamespace(data=d, out=d, quick=False, search=False, seed=3, test=d / "test")
            R.run(args, report, lambda _: None)
            self.assertTrue((d / "request.onnx").exists())
            ratio = report["request_test"]["ratio_vs_profile"]
            print("pinball / profile-only:", np.round(ratio, 3))
            # cpu seconds, peak RSS, duration, I/O bytes: the input size explains most of it.
            for t, r in zip(D.REQUEST_TARGETS, ratio):
                self.assertLess(r, 0.8, f"{t}: {ratio}")
            self.assertLess(report["request"]["tract_max_diff"], 1e-4)


if __name__ == "__main__":
    unittest.main()
