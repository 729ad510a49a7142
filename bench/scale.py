"""Throughput of the vectorized detectors: cost bands per series and CPU features per node.

    python bench/scale.py --series 20000 --days 90 --nodes 2000 --cpu-days 14

Prints series/s and node-hours/s for the weekday band (numpy over a series x day x lookback tensor),
the per-series statsmodels STL path for comparison, and the CPU plateau features.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costwatch import baseline as bl
from costwatch import cpu

WEEK = np.array([1.0, 1.05, 1.1, 1.05, 1.0, 0.6, 0.55])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=20000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--stl-series", type=int, default=200)
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--cpu-days", type=int, default=14)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    days = pd.date_range("2026-08-03", periods=a.days, freq="D", tz="UTC")
    x = (rng.uniform(5, 5000, a.series)[:, None] * WEEK[days.dayofweek.to_numpy()][None, :]
         * np.exp(rng.normal(0, 0.05, (a.series, a.days))))
    t = time.perf_counter()
    bl.weekday_bands(x)
    dt = time.perf_counter() - t
    print(f"weekday bands: {a.series} series x {a.days} days in {dt:.2f} s = {a.series / dt:,.0f} series/s "
          f"({a.series * a.days / dt:,.0f} series-days/s, every day's causal band)")
    t = time.perf_counter()
    bl.stl_bands(x[: a.stl_series], days, days[a.days - 14])
    dt2 = time.perf_counter() - t
    print(f"STL bands:     {a.stl_series} series in {dt2:.2f} s = {a.stl_series / dt2:,.0f} series/s "
          f"(weekday is {a.series / dt / (a.stl_series / dt2):,.0f}x faster)")
    hours = pd.date_range("2026-10-01", periods=24 * a.cpu_days, freq="h", tz="UTC")
    h = hours.hour.to_numpy()
    shape = 0.3 + 0.7 * np.clip(np.sin((h - 6) / 24 * 2 * np.pi), 0, None)
    vals = np.clip(rng.uniform(10, 50, a.nodes)[:, None] * shape[None, :]
                   + rng.normal(0, 4, (a.nodes, len(hours))), 0, 100)
    nodes = pd.DataFrame({"node": [f"n{i}" for i in range(a.nodes)], "provider": "aws", "project": "p",
                          "cluster": None, "region": "us-east-1", "instance_type": "m5.large",
                          "first_seen": hours[0], "new": False})
    m = cpu.CpuMatrix(nodes, hours, vals)
    t = time.perf_counter()
    f = cpu.features(m, cpu.CpuSettings())
    dt3 = time.perf_counter() - t
    print(f"CPU features:  {a.nodes} nodes x {len(hours)} h in {dt3:.2f} s = "
          f"{a.nodes * len(hours) / dt3:,.0f} node-hours/s; flagged node-hours on clean data: "
          f"{int((f.pinned | f.plateau).sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
