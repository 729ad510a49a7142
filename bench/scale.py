"""Detector throughput and quality at scale: cost bands and CPU bands at 10k and 100k series.

    python bench/scale.py                      # 10k and 100k daily series, 10k and 100k nodes
    python bench/scale.py --sizes 10000 --stl-series 500

For daily cost the vectorized weekday band is timed on every size, and a per-series statsmodels robust
STL loop runs on a sample of the same series in the same run (a full 100k-series STL loop would take
about a quarter of an hour); both are then scored on the same injected spikes, so the speed ratio comes
with the quality it buys.  For CPU the nodes x hours features are timed.  Nothing is asserted.
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
DAYS, SCORED = 90, 14  # the last SCORED days are the "report window"


def cost_data(n: int, seed: int = 0) -> tuple[np.ndarray, pd.DatetimeIndex, np.ndarray]:
    """Weekly shape, slow trend, 5% noise; 10% of series get one 1.6-3x spike day in the scored window."""
    rng = np.random.default_rng(seed)
    days = pd.date_range("2026-08-03", periods=DAYS, freq="D", tz="UTC")
    trend = 1 + rng.normal(0, 0.003, n)[:, None] * np.arange(DAYS)[None, :]
    x = (rng.uniform(5, 5000, n)[:, None] * WEEK[days.dayofweek.to_numpy()][None, :] * trend
         * np.exp(rng.normal(0, 0.05, (n, DAYS))))
    truth = np.zeros(x.shape, dtype=bool)
    hit = rng.uniform(size=n) < 0.1
    at = rng.integers(DAYS - SCORED, DAYS, n)
    rows = np.flatnonzero(hit)
    x[rows, at[rows]] *= rng.uniform(1.6, 3.0, rows.size)
    truth[rows, at[rows]] = True
    return x, days, truth


def quality(x: np.ndarray, b: bl.Bands, truth: np.ndarray) -> tuple[float, float]:
    flag = (x > b.upper)[:, -SCORED:]
    t = truth[:, -SCORED:]
    recall = float((flag & t).sum() / max(t.sum(), 1))
    fp_rate = float((flag & ~t).sum() / max((~t).sum(), 1))
    return recall, fp_rate


def bench_cost(n: int, stl_n: int) -> None:
    x, days, truth = cost_data(n)
    t0 = time.perf_counter()
    b = bl.weekday_bands(x)
    dt = time.perf_counter() - t0
    r, fp = quality(x, b, truth)
    print(f"cost  {n:>7,} series x {DAYS} days: weekday band {n / dt:>9,.0f} series/s "
          f"({dt:.2f} s) recall {r:.3f} false-positive rate {fp:.4f}")
    k = min(stl_n, n)
    t0 = time.perf_counter()
    s = bl.stl_bands(x[:k], days, days[DAYS - SCORED])
    dts = time.perf_counter() - t0
    rs, fps = quality(x[:k], s, truth[:k])
    rw, fpw = quality(x[:k], bl.Bands(b.expected[:k], b.lower[:k], b.upper[:k], b.sigma[:k], b.history[:k],
                                      "weekday"), truth[:k])
    print(f"      same {k} series: STL loop {k / dts:,.0f} series/s, weekday {n / dt / (k / dts):,.0f}x faster; "
          f"on these series recall/FP STL {rs:.3f}/{fps:.4f} vs weekday {rw:.3f}/{fpw:.4f}")


def bench_cpu(n: int, days: int = 7) -> None:
    rng = np.random.default_rng(1)
    hours = pd.date_range("2026-10-01", periods=24 * days, freq="h", tz="UTC")
    h = hours.hour.to_numpy()
    shape = 0.3 + 0.7 * np.clip(np.sin((h - 6) / 24 * 2 * np.pi), 0, None)
    vals = np.clip(rng.uniform(10, 50, n)[:, None] * shape[None, :] + rng.normal(0, 4, (n, len(hours))), 0, 100)
    miners = rng.uniform(size=n) < 0.01
    start = len(hours) - 24
    vals[miners, start:] = 99.0 + rng.normal(0, 0.3, (int(miners.sum()), len(hours) - start))
    nodes = pd.DataFrame({"node": [f"n{i}" for i in range(n)], "provider": "aws",
                          "project": [f"p{i // 20}" for i in range(n)], "cluster": None, "region": "us-east-1",
                          "instance_type": "m5.large", "first_seen": hours[0], "new": False})
    t0 = time.perf_counter()
    f = cpu.features(cpu.CpuMatrix(nodes, hours, vals), cpu.CpuSettings())
    dt = time.perf_counter() - t0
    flagged = (f.pinned | f.plateau).any(axis=1)
    print(f"cpu   {n:>7,} nodes x {len(hours)} h: {n / dt:>9,.0f} nodes/s ({n * len(hours) / dt:,.0f} node-hours/s, "
          f"{dt:.2f} s); miners found {int((flagged & miners).sum())}/{int(miners.sum())}, "
          f"clean nodes flagged {int((flagged & ~miners).sum())}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated series/node counts")
    ap.add_argument("--stl-series", type=int, default=300, help="series in the STL comparison loop")
    a = ap.parse_args(argv)
    for n in (int(v) for v in a.sizes.split(",")):
        bench_cost(n, a.stl_series)
        bench_cpu(n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
