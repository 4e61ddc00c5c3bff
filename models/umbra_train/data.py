"""Reading what the agent exports (models/CONTRACT.md): forecast feature rows and request
rows, plain or compressed CSV, and the hub's Parquet summaries. Nothing here recomputes a
feature from raw data: rows are taken as the agent wrote them."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import lzma
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TARGETS = ["cpu", "memory", "io", "net"]
REQUEST_TARGETS = ["cpu_seconds", "peak_rss_bytes", "duration_seconds", "io_bytes"]
ID_COLUMNS = ["recording", "workload", "name", "bucket_end_ms"]
REQUEST_ID_COLUMNS = ["recording", "key", "exe", "exec_ns"]


def open_text(path: Path) -> io.TextIOBase:
    """A text stream of a plain, .xz or .gz file."""
    path = Path(path)
    if path.suffix == ".xz":
        return io.TextIOWrapper(lzma.open(path, "rb"), encoding="utf-8", newline="")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def sha256_of(paths: list[Path]) -> str:
    """The identity of the training data: sha256 over the decompressed bytes of every file,
    in the order given (compression settings do not change it)."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        opener = {".xz": lzma.open, ".gz": gzip.open}.get(p.suffix, open)
        with opener(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


@dataclass
class Series:
    """One workload in one recording: consecutive buckets (dense, as exported)."""

    recording: str
    workload: str
    name: str
    end_ms: np.ndarray  # (n,) int64
    x: np.ndarray  # (n, F) float32: every vocabulary feature, in `features` order
    y: np.ndarray  # (n, 4) float32: the targets of each bucket

    def __len__(self) -> int:
        return len(self.end_ms)


@dataclass
class ForecastData:
    features: list[str]
    series: list[Series]
    interval_ms: int

    @property
    def rows(self) -> int:
        return sum(len(s) for s in self.series)

    def recordings(self) -> list[str]:
        return sorted({s.recording for s in self.series})


class DataError(Exception):
    pass


def load_forecast(paths: list[Path]) -> ForecastData:
    """Forecast rows (`umbra export --format forecast`) of one or more files."""
    groups: dict[tuple[str, str], list] = {}
    features: list[str] | None = None
    for path in paths:
        with open_text(path) as f:
            r = csv.reader(f)
            header = next(r, None)
            if header is None or header[:4] != ID_COLUMNS:
                raise DataError(f"{path}: not a forecast export (header starts {header[:4] if header else None})")
            ys = [f"y_{t}" for t in TARGETS]
            if header[-4:] != ys:
                raise DataError(f"{path}: the last columns are not {ys}")
            feats = header[4:-4]
            if features is None:
                features = feats
            elif feats != features:
                raise DataError(f"{path}: features differ from the first file's")
            for line, row in enumerate(r, start=2):
                if len(row) != len(header):
                    raise DataError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
                key = (row[0], row[1])
                groups.setdefault(key, []).append(row)
    if features is None:
        raise DataError("no forecast rows given")
    series = []
    steps = set()
    for (rec, wl), rows in groups.items():
        end = np.array([int(r[3]) for r in rows], dtype=np.int64)
        vals = np.array([r[4:] for r in rows], dtype=np.float64)
        order = np.argsort(end, kind="stable")
        end, vals = end[order], vals[order]
        d = np.diff(end)
        steps.update(np.unique(d).tolist())
        series.append(
            Series(
                recording=rec,
                workload=wl,
                name=rows[-1][2],
                end_ms=end,
                x=vals[:, :-4].astype(np.float32),
                y=vals[:, -4:].astype(np.float32),
            )
        )
    if len(steps) > 1:
        raise DataError(f"buckets are not evenly spaced (steps {sorted(steps)[:5]} ms): one interval per training run")
    interval = int(next(iter(steps))) if steps else 5000
    series.sort(key=lambda s: (s.recording, s.workload))
    return ForecastData(features=features, series=series, interval_ms=interval)


@dataclass
class RequestData:
    features: list[str]
    recording: np.ndarray  # (n,) str
    key: np.ndarray  # (n,) str
    exe: np.ndarray  # (n,) str
    exec_ns: np.ndarray  # (n,) int64
    x: np.ndarray  # (n, F) float32
    y: np.ndarray  # (n, 4) float32

    def __len__(self) -> int:
        return len(self.key)

    def take(self, idx: np.ndarray) -> "RequestData":
        return RequestData(
            self.features,
            self.recording[idx],
            self.key[idx],
            self.exe[idx],
            self.exec_ns[idx],
            self.x[idx],
            self.y[idx],
        )

    def column(self, name: str) -> np.ndarray:
        return self.x[:, self.features.index(name)]


def load_requests(paths: list[Path]) -> RequestData:
    """Request rows (`umbra export --format requests`) of one or more files, in file order."""
    features: list[str] | None = None
    ids: list[list[str]] = []
    vals: list[list[str]] = []
    for path in paths:
        with open_text(path) as f:
            r = csv.reader(f)
            header = next(r, None)
            if header is None or header[:4] != REQUEST_ID_COLUMNS:
                raise DataError(f"{path}: not a requests export (header starts {header[:4] if header else None})")
            ys = [f"y_{t}" for t in REQUEST_TARGETS]
            if header[-4:] != ys:
                raise DataError(f"{path}: the last columns are not {ys}")
            feats = header[4:-4]
            if features is None:
                features = feats
            elif feats != features:
                raise DataError(f"{path}: features differ from the first file's")
            for line, row in enumerate(r, start=2):
                if len(row) != len(header):
                    raise DataError(f"{path}:{line}: {len(row)} fields, header has {len(header)}")
                ids.append(row[:4])
                vals.append(row[4:])
    if features is None:
        raise DataError("no request rows given")
    a = np.array(vals, dtype=np.float64).reshape(len(vals), len(features) + 4)
    idc = np.array(ids, dtype=object).reshape(len(ids), 4)
    return RequestData(
        features=features,
        recording=idc[:, 0].astype(str),
        key=idc[:, 1].astype(str),
        exe=idc[:, 2].astype(str),
        exec_ns=idc[:, 3].astype(np.int64),
        x=a[:, :-4].astype(np.float32),
        y=a[:, -4:].astype(np.float32),
    )


def load_hub(dir: Path, features: list[str]) -> ForecastData:
    """The hub's Parquet summaries (`umbra hub --data DIR`) as forecast series: one bucket
    per summary period, per node and workload. A summary carries sums and peaks, so the
    per-bucket vocabulary maps as: cpu_cores = cpu_cores_mean, rss_bytes = rss_max_bytes,
    processes = processes_max, rates = bytes or counts / period; features a summary lacks
    (block rates from the rows, the rest) are as the columns give them, `present` 1 for a
    summary row and 0 for a period the workload missed."""
    import pyarrow.parquet as pq

    files = sorted(Path(dir).glob("summaries-*.parquet"))
    if not files:
        raise DataError(f"{dir}: no summaries-*.parquet files (is it an `umbra hub --data` directory?)")
    cols = {}
    for f in files:
        t = pq.read_table(f).to_pydict()
        for k, v in t.items():
            cols.setdefault(k, []).extend(v)
    n = len(cols["node"])
    period = int(np.median(np.array(cols["period_ms"], dtype=np.int64))) if n else 10000
    by: dict[tuple[str, str], dict[int, int]] = {}
    node_last: dict[str, int] = {}
    for i in range(n):
        if cols["workload"][i] == "other":
            continue
        end = int(cols["start_ms"][i]) + int(cols["period_ms"][i])
        by.setdefault((cols["node"][i], cols["workload"][i]), {})[end] = i
        node_last[cols["node"][i]] = max(node_last.get(cols["node"][i], end), end)
    series = []
    for (node, wl), rows in sorted(by.items()):
        # Dense from the workload's first period to the node's last, as the agent's export.
        ends = sorted(rows)
        first, last = ends[0], node_last[node]
        grid = np.arange(first, last + period, period, dtype=np.int64)
        x = np.zeros((len(grid), len(features)), dtype=np.float32)
        day = 86_400_000
        for j, e in enumerate(grid):
            a = 2 * np.pi * (e % day) / day
            for k, fname in enumerate(features):
                if fname == "tod_sin":
                    x[j, k] = np.sin(a)
                elif fname == "tod_cos":
                    x[j, k] = np.cos(a)
            i = rows.get(int(e))
            if i is None:
                continue
            secs = max(int(cols["period_ms"][i]), 1) / 1000
            v = {
                "cpu_cores": cols["cpu_cores_mean"][i],
                "rss_bytes": cols["rss_max_bytes"][i],
                "processes": cols["processes_max"][i],
                "read_bps": cols["read_bytes"][i] / secs,
                "write_bps": cols["write_bytes"][i] / secs,
                "block_read_bps": cols["block_read_bytes"][i] / secs,
                "block_write_bps": cols["block_write_bytes"][i] / secs,
                "net_rx_bps": cols["net_rx_bytes"][i] / secs,
                "net_tx_bps": cols["net_tx_bytes"][i] / secs,
                "execs_ps": cols["execs"][i] / secs,
                "conn_accepted_ps": cols["conn_accepted"][i] / secs,
                "conn_opened_ps": cols["conn_opened"][i] / secs,
                "syscalls_ps": cols["syscalls"][i] / secs,
                "page_faults_ps": cols["page_faults"][i] / secs,
                "present": 1.0,
            }
            for k, fname in enumerate(features):
                if fname in v:
                    x[j, k] = v[fname]
        fi = {f: k for k, f in enumerate(features)}
        y = np.stack(
            [
                x[:, fi["cpu_cores"]],
                x[:, fi["rss_bytes"]],
                x[:, fi["read_bps"]] + x[:, fi["write_bps"]],
                x[:, fi["net_rx_bps"]] + x[:, fi["net_tx_bps"]],
            ],
            axis=1,
        )
        name = cols["name"][rows[ends[-1]]]
        series.append(Series(f"hub:{node}", wl, name, grid, x, y))
    return ForecastData(features=features, series=series, interval_ms=period)
