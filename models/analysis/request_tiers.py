"""How often an executable's requests would earn their hard limits, and hold within them.

Reads `umbra export --format requests` CSVs (one row per completed request, in exec
order per recording, with the profile's quantiles at the exec and the outcome) and
replays the allocator's rule for a request's own tier (`Allocator::request_tier`) over
the profile baseline's predictions (the executable's past runs: p90 CPU seconds over the
p50 duration, p90 peak RSS): a request is *within* when its CPU rate and peak RSS are at
most 1 + `margin` times what its prediction allowed (a peak under 64 KiB is not
judged); a request *earns* the full tier when at least `min_samples` of its executable's
last 16 predicted requests are in the record and `coverage` of them were within.

    python3 models/analysis/request_tiers.py requests.csv [--margin 0.15]

Prints, per executable with at least `min_samples` predicted requests, how many of its
requests earned the tier and how many of those stayed within, then the totals.
"""

import argparse
import collections
import csv

MEASURED_RSS = 65536.0
RECORD = 16
MIN_SECONDS = 0.1


def ratios(r):
    allowed = float(r["profile_cpu_seconds_p90"]) / max(
        float(r["profile_duration_seconds_p50"]), MIN_SECONDS
    )
    rate = float(r["y_cpu_seconds"]) / max(float(r["y_duration_seconds"]), MIN_SECONDS)
    cpu = 0.0 if rate <= 0 else (rate / allowed if allowed > 0 else float("inf"))
    peak, p90 = float(r["y_peak_rss_bytes"]), float(r["profile_peak_rss_bytes_p90"])
    mem = 0.0 if peak < MEASURED_RSS else (peak / p90 if p90 > 0 else float("inf"))
    return cpu, mem


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--margin", type=float, default=0.15)
    ap.add_argument("--min-samples", type=int, default=10)
    ap.add_argument("--coverage", type=float, default=0.9)
    a = ap.parse_args()
    by = collections.defaultdict(list)
    for path in a.csv:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                by[(r["recording"], r["key"])].append(r)
    bound = 1.0 + a.margin
    rows = []
    for (rec, _), rs in by.items():
        rs.sort(key=lambda r: int(r["exec_ns"]))
        record = collections.deque(maxlen=RECORD)
        predicted = earned = held = 0
        for r in rs:
            if float(r["profile_runs"]) < 1:
                continue
            predicted += 1
            cpu, mem = ratios(r)
            within = cpu <= bound and mem <= bound
            n = len(record)
            if n >= a.min_samples and sum(record) >= a.coverage * n:
                earned += 1
                held += within
            record.append(within)
        if predicted >= a.min_samples:
            name = rs[0]["exe"].rsplit("/", 1)[-1]
            rows.append((rec.rsplit("/", 1)[-1], name, predicted, earned, held))
    rows.sort(key=lambda x: -x[2])
    print(f"{'recording':<20} {'executable':<16} {'predicted':>9} {'earned':>7} {'within':>7}")
    for rec, name, p, e, h in rows:
        print(f"{rec:<20} {name:<16} {p:>9} {e:>7} {h:>7}")
    p, e, h = (sum(x[i] for x in rows) for i in (2, 3, 4))
    print(
        f"{len(rows)} executables: {p} predicted requests, {e} earned the full tier "
        f"({e / max(p, 1):.1%}), {h} of those within their limits ({h / max(e, 1):.1%})"
    )


if __name__ == "__main__":
    main()
