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
from umbra_train import forecast as F  # noqa: E402
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


def synthetic_requests(path: Path, n: int, seed: int, exe: str = "x") -> None:
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
        lines.append(",".join(["r", f"exe:sha256:{exe}", f"/usr/bin/{exe}", str(i)] + [f"{row[k]:g}" for k in names] + [f"{v:g}" for v in y]))
        runs.append((y, mib * 2**20))
    path.write_text("\n".join(lines) + "\n")


HUB_INTS = [
    "seq", "time_ms", "start_ms", "period_ms", "intervals", "processes_max", "rss_max_bytes",
    "runq_p99_max_ns", "page_faults", "read_bytes", "write_bytes", "block_read_bytes",
    "block_write_bytes", "net_rx_bytes", "net_tx_bytes", "retransmits", "execs",
    "conn_accepted", "conn_opened", "syscalls", "node_cpus", "node_mem_available_min_bytes",
]


def hub_parquet(path: Path, periods: int) -> None:
    """A file as `umbra hub` writes it (agent/src/fleet/hub.rs: SCHEMA): two workloads of
    one node, one row per 10 s summary; the second skips every fifth period."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for k in range(periods):
        for w in ("exe:sha256:a", "exe:sha256:b"):
            if w.endswith("b") and k % 5 == 4:
                continue
            r = dict.fromkeys(HUB_INTS, 0)
            r.update(node="n1", workload=w, name=w[-1], seq=k, start_ms=1_000_000 + 10_000 * k, period_ms=10_000,
                     intervals=10, processes_max=1, rss_max_bytes=(50 + k) << 20, read_bytes=10_000 * k,
                     cpu_cores_mean=0.5 if w.endswith("a") else 0.1 * (k % 3), cpu_cores_max=1.0,
                     node_cpu_busy_mean=0.3, node_cpu_busy_max=0.5, historical=False,
                     psi_cpu_max=None, psi_memory_max=None, psi_io_max=None)
            rows.append(r)
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    pq.write_table(pa.table(cols), path)


class Scoring(unittest.TestCase):
    def test_the_buckets_a_workload_did_not_run_in_are_not_scored(self):
        # Two forecasts of one target, two steps: the second step of the second forecast
        # falls in a bucket the workload did not run in (its outcome 0, a miss of 10).
        pred = np.zeros((2, 4, 2, 3))
        pred[..., :] = 10.0
        yr = np.full((2, 4, 2), 10.0)
        yr[1, :, 1] = 0.0
        ran = np.array([[True, True], [True, False]])
        self.assertTrue(np.allclose(F.pinball_units(pred, yr, [0.1, 0.5, 0.9], ran), 0.0))
        self.assertTrue(np.allclose(F.coverage(pred, yr, ran), 1.0))
        # Counted, the absent bucket is a loss: the mask is what keeps it out.
        self.assertTrue((F.pinball_units(pred, yr, [0.1, 0.5, 0.9]) > 0).all())
        self.assertTrue(np.allclose(F.coverage(pred, yr), 0.75))


class Spread(unittest.TestCase):
    def test_the_cpu_band_widens_with_the_windows_volatility_in_jax_and_in_tract(self):
        # A linear model of 2 features over 4 buckets, 2 targets × 1 step × 3 quantiles; the
        # first target's gaps scale with feature 0's window. Its head is zero, so every gap
        # is softplus(bias) (the same for each row) times the spread: b + c·mean|Δ|.
        import jax

        W, Fn, q = 4, 2, [0.1, 0.5, 0.9]
        outputs = np.array([1, 1, 1, 0, 0, 0], np.float32)
        spread = nn.Spread(columns=np.arange(W) * Fn, outputs=outputs)
        spec = nn.Spec(W * Fn, 6, q, [], spread=spread)
        params = nn.init(spec, jax.random.PRNGKey(0))
        b, c = 0.5, 2.0
        params["spread"] = (np.log(np.full(6, b, np.float32)), np.log(np.full(6, c, np.float32)))
        x = np.random.default_rng(1).normal(size=(64, W * Fn)).astype(np.float32)
        x[0, ::Fn] = 3.0  # a steady window: no change at all
        want = nn.predict(params, spec, x)
        gap0 = float(np.log1p(np.exp(nn.GAP_BIAS)))
        vol = np.abs(np.diff(x[:, ::Fn], axis=1)).mean(axis=1)
        self.assertTrue(np.allclose(want[:, 2] - want[:, 1], gap0 * (b + c * vol), rtol=1e-5, atol=1e-7))
        self.assertTrue(np.allclose(want[:, 5] - want[:, 4], gap0, rtol=1e-5))
        self.assertAlmostEqual(float(want[0, 2] - want[0, 1]), gap0 * b, places=6)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.onnx"
            nn.export_onnx(params, spec, {"kind": "forecast"}, path)
            got, _ = nn.tract_run(path, x)
        self.assertLess(float(np.abs(got - want).max()), 1e-5)


class Hub(unittest.TestCase):
    def test_hub_summaries_become_dense_series_and_train(self):
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            hub_parquet(d / "summaries-n1-0-0000.parquet", 40)
            feats = D.load_forecast(sorted((HERE / "data").glob("forecast-*.csv.xz"))[:1]).features
            data = D.load_hub(d, feats)
            self.assertEqual(data.interval_ms, 10_000)
            by = {s.workload: s for s in data.series}
            a, b = by["exe:sha256:a"], by["exe:sha256:b"]
            self.assertEqual(len(a), 40)
            self.assertEqual(len(b), 40, "missed periods are absent buckets")
            p = feats.index("present")
            self.assertEqual(b.x[4, p], 0.0)
            self.assertEqual(b.y[4].tolist(), [0, 0, 0, 0])
            self.assertAlmostEqual(float(a.y[3, 0]), 0.5, places=5)
            self.assertEqual(a.y[3, 1], (53 << 20))
            self.assertAlmostEqual(float(a.x[3, feats.index("read_bps")]), 3_000.0, places=1)
            r = subprocess.run(
                [sys.executable, str(HERE / "train.py"), "--quick", "--only", "forecast", "--from-hub", str(d), "--out", str(d)],
                capture_output=True,
                text=True,
            )
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            s = schema_of(d / "forecast.onnx")
            self.assertEqual(s["interval_ms"], 10_000)
            self.assertEqual(s["training_data"]["hub"], str(d))


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

    def test_executables_left_out_of_training_are_judged_each_on_its_own(self):
        from umbra_train import request as R

        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            synthetic_requests(d / "x.csv", 200, seed=1, exe="x")
            synthetic_requests(d / "y.csv", 30, seed=2, exe="y")
            data = D.load_requests([d / "x.csv", d / "y.csv"])
            left_out = []
            fit = R.fit

            def spy(dd, cfg, seed, log=None):
                left_out.append(sorted({Path(e).name for e in dd.exe}))
                return fit(dd, cfg, seed, log)

            R.fit = spy
            try:
                res = R.unseen_validation(data, R.Config(hidden=[8], steps=100), 3, min_requests=40)
            finally:
                R.fit = fit
            # `y` has too few requests to be judged; `x` is judged by a model that never saw it.
            self.assertEqual(list(res["executables"]), ["x"])
            self.assertEqual(left_out, [["y"]])
            self.assertEqual(res["n"], int(R.input_size_dependent(data.take(np.nonzero(data.exe == "/usr/bin/x")[0])).sum()))
            self.assertTrue(all(np.isfinite(res["ratio"])))

    def test_an_unmeasured_peak_rss_is_left_out_of_the_loss_and_the_widening(self):
        from umbra_train import request as R

        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            synthetic_requests(d / "x.csv", 120, seed=1)
            data = D.load_requests([d / "x.csv"])
            k = D.REQUEST_TARGETS.index("peak_rss_bytes")
            data.y[::3, k] = 4096  # one page: a run no sample saw with its memory
            seen = []
            train = nn.train

            def spy(*a, **kw):
                seen.append(kw.get("weights"))
                return train(*a, **kw)

            nn.train = spy
            try:
                cfg = R.Config(hidden=[8], steps=50)
                params, spec, sc = R.fit(data, cfg, 3)
            finally:
                nn.train = train
            w = seen[0]
            self.assertIsNotNone(w, "fit weighs no outcome out")
            np.testing.assert_array_equal(w[:, k], (np.arange(len(data)) % 3 != 0).astype(np.float32))
            self.assertTrue((np.delete(w, k, axis=1) == 1).all())
            # Unmeasured outcomes far below the band would widen it; they are not scored.
            q = len(cfg.quantiles)
            widen = R.conformal_widening(params, spec, sc, cfg, data)[k * q + q - 1]
            kept = data.take(np.nonzero(np.arange(len(data)) % 3 != 0)[0])
            self.assertAlmostEqual(float(widen), float(R.conformal_widening(params, spec, sc, cfg, kept)[k * q + q - 1]), places=6)


    def test_the_model_is_held_to_its_profile_band_as_the_agent_holds_it(self):
        from umbra_train import request as R

        # The case of `a_model_is_held_within_its_profile_band_stretched_by_the_input`
        # (agent/src/predict/exec.rs), with the same numbers.
        feats = ["input_bytes_total", "profile_input_bytes_p10", "profile_input_bytes_p90"]
        feats += [f"profile_{t}_p{p}" for t in D.REQUEST_TARGETS for p in (10, 50, 90)]
        row = dict.fromkeys(feats, 0.0)
        row.update({"input_bytes_total": 400e6, "profile_input_bytes_p10": 10e6, "profile_input_bytes_p90": 100e6,
                    "profile_cpu_seconds_p10": 1.0, "profile_cpu_seconds_p90": 4.0,
                    "profile_duration_seconds_p10": 2.0, "profile_duration_seconds_p90": 8.0,
                    "profile_io_bytes_p90": 9.0})
        x = np.array([[row[f] for f in feats]], np.float32)
        one = np.array(["r"])
        d = D.RequestData(feats, one, one, one, np.zeros(1, np.int64), x, np.zeros((1, 4), np.float32))
        pred = np.array([[[1e-3, 30.0, 1e3], [1.0, 2e9, 9e9], [0.5, 3.0, 5.0], [0.0, 5.0, 1e6]]])
        got = R.held(d, pred)[0]
        np.testing.assert_allclose(got[0], [1 / 3, 30.0, 12.0 * (400e6 + 1) / (100e6 + 1)], rtol=1e-6)
        np.testing.assert_array_equal(got[1], pred[0, 1])  # nothing measured: as it is
        np.testing.assert_allclose(got[2], [2 / 3, 3.0, 5.0])
        np.testing.assert_allclose(got[3], [0.0, 5.0, 108.0], rtol=1e-6)


if __name__ == "__main__":
    unittest.main()
