"""Detector throughput, memory and quality at scale: daily cost bands and hourly CPU features.

    python bench/scale.py                                  # 1,000,000 series x 120 days, 100,000 nodes x 28 days
    python bench/scale.py --series 100000 --nodes 10000    # quicker
    python bench/scale.py --series 1000000 --nodes 0       # cost only (peak RSS of the cost stage alone)

Cost: the data are generated as a series x days matrix (what ``baseline.daily_matrix`` hands detection),
then scored with ``baseline.detection_bands``, the call ``detect._series_bands`` makes: two passes, the
last ``--scored`` days scored (every day's own causal band).  A per-series statsmodels robust STL loop
runs on a sample of the same series in the same run, and the time it would take on all of them is
projected from its rate; both are scored on the same injected spikes, so the speed ratio comes with the
quality it buys.  CPU: what ``detect`` runs on hourly CPU with pinned miners, stealth miners and
project-wide surges, stage by stage: ``cpu.cpu_matrix`` turning the long frame (one row per node-hour, all
nodes unless ``--long-nodes`` says fewer, then projected; categorical columns, as 67M rows of Python strings
would take ~4 GB) into the nodes x hours matrix, checked equal to the generated one, then ``cpu.features``,
``cpu.node_episodes`` and the usage score with its onsets (``detect._usage_anomalies`` over the whole 28
days, ``usage_score.flagged_scores``).  Each stage prints wall and process CPU seconds (the box is shared:
wall moves with the load, CPU much less) and the peak RSS so far (``resource.getrusage``, so it includes
the generated data).  Nothing is asserted.  ``--usage-method range --usage-method calibrated`` times the usage
score once per method given (the first counts in the total; default: detect's), ``--slow-nodes N`` also times
``score_matrix`` (no shortcut) against ``flagged_scores`` on N nodes per method (README: the calibrated
score's fast path).

Measured on the project's 2-core box while other jobs shared it (load average 0.3-3; figures move ~30%
run to run with the load):

    cost 1,000,000 series x 120 days, last 28 scored: 25,000-38,000 series/s, 26-40 s with 2 threads
         (37-38 s on one), peak RSS 3.2 GB (1 GB of it the input); spike recall 0.986, 0.0008 false
         positives per clean series-day, the same days as the tensor version flagged
    STL  ~200 series/s (statsmodels imported before the clock), so 1M series would take ~85 min: ~195x
         slower; on its 300-series sample recall / false positives STL 1.000 / 0.023 vs weekday 0.970 / 0.0005

Issue 16, after ``cpu_matrix`` left pandas ``pivot_table`` (default sizes, one ``nice`` run, load average
0.9 at the start and 2.6 at the end, another job sharing the 2 cores during the CPU stage):

    cost 1,000,000 series x 120 days: 34.4 s wall, 43.8 s CPU (two threads), peak RSS 3.40 GB; spike
         recall 0.982, 0.00053 false positives per series-day (at load 5: 62.6 s wall, 34.6 s CPU)
    cpu  100,000 nodes x 28 days hourly: cpu_matrix from all 67.2M long rows 2.8 s CPU, 2.9 s wall
         (pivot_table took ~111 s CPU; 2.8-7 s depending on faulting in fresh memory), features 8.8 s,
         node_episodes 0.4 s, usage score 40.3 s CPU (40.8 s wall; 23.4 s wall on two free cores): the
         stage 52.3 s CPU, 52.9 s wall (at load 5: 54.8 s CPU, 68.7 s wall); peak RSS 3.58 GB; all 1,485
         miners found, no clean node flagged, 43,979 usage departures reported

The (series x day x lookback) tensor version this replaced ran detection's two passes at ~1,350 series/s
on this data (100,000 x 120 days: 74 s, 1.8 GB; 1M would be ~12 min and ~13 GB), and CPU features at ~900
nodes/s over 7 days (0.15M node-hours/s; a 28-day lag tensor of 100k nodes alone is 3.7 GB).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costwatch import baseline as bl
from costwatch import cpu
from costwatch.config import CpuDetectionConfig
from costwatch.detect import HOURLY_USAGE, _usage_anomalies
from costwatch.usage_score import flagged_scores, score_matrix

T = TypeVar("T")

WEEK = np.array([1.0, 1.05, 1.1, 1.05, 1.0, 0.6, 0.55])
GEN_CHUNK = 100_000


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def cost_data(n: int, days: int, scored: int, seed: int = 0,
              ) -> tuple[np.ndarray, pd.DatetimeIndex, np.ndarray, np.ndarray]:
    """Weekly shape, slow trend, 5% noise, generated in blocks (no full-size temporaries).

    Like real exports: 3% of series start late (new services), 1% of series' projects miss a day of export
    and 0.5% of days are zero.  10% of series get one 1.6-3x spike day in the scored window; returns the
    spikes as (row, day) pairs."""
    rng = np.random.default_rng(seed)
    dates = pd.date_range("2026-06-03", periods=days, freq="D", tz="UTC")
    week = WEEK[dates.dayofweek.to_numpy()]
    x = np.empty((n, days))
    for r0 in range(0, n, GEN_CHUNK):
        k = min(GEN_CHUNK, n - r0)
        trend = 1 + rng.normal(0, 0.003, k)[:, None] * np.arange(days)[None, :]
        blk = rng.uniform(5, 5000, k)[:, None] * week[None, :] * trend * np.exp(rng.normal(0, 0.05, (k, days)))
        late = rng.uniform(size=k) < 0.03
        blk[late] = np.where(np.arange(days)[None, :] < rng.integers(1, days - scored, late.sum())[:, None],
                             np.nan, blk[late])
        gap = rng.uniform(size=k) < 0.01
        blk[np.flatnonzero(gap), rng.integers(0, days, gap.sum())] = np.nan
        blk[rng.uniform(size=blk.shape) < 0.005] = 0.0
        x[r0: r0 + k] = blk
    rows = np.flatnonzero(rng.uniform(size=n) < 0.1)
    at = rng.integers(days - scored, days, rows.size)
    x[rows, at] *= rng.uniform(1.6, 3.0, rows.size)
    return x, dates, rows, at


def quality(x: np.ndarray, upper: np.ndarray, rows: np.ndarray, at: np.ndarray, scored: int,
            history: np.ndarray, need: int = 14) -> tuple[float, float]:
    """Recall of the injected spikes, and out-of-band days per clean scored day, on scored days where
    the series has the history detection requires."""
    d = x.shape[1]
    with np.errstate(invalid="ignore"):
        flag = (x[:, d - scored:] > upper[:, d - scored:]) & (history[:, d - scored:] >= need)
    eligible = history[:, d - scored:] >= need
    truth = np.zeros(flag.shape, dtype=bool)
    truth[rows, at - (d - scored)] = True
    truth &= eligible
    recall = float((flag & truth).sum() / max(truth.sum(), 1))
    fp = float((flag & ~truth).sum() / max((eligible & ~truth).sum(), 1))
    return recall, fp


def bench_cost(n: int, days: int, scored: int, stl_n: int, workers: int | None) -> None:
    t0 = time.perf_counter()
    x, dates, rows, at = cost_data(n, days, scored)
    gen = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    # as detect() calls it: month-end patterns from the calendar, open episodes held
    b = bl.detection_bands(x, scored_from=days - scored, workers=workers, days=dates)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    r, fp = quality(x, b.upper, rows, at, scored, b.history)
    print(f"cost {n:>9,} series x {days} days, last {scored} scored: {n / dt:>8,.0f} series/s, {dt:6.1f} s "
          f"wall, {dc:.1f} s CPU "
          f"(data generated in {gen:.1f} s), peak RSS {peak_rss_gb():.2f} GB; "
          f"spike recall {r:.3f}, false positives {fp:.5f} per series-day")
    if stl_n <= 0:
        return
    k = min(stl_n, n)
    sample = np.random.default_rng(5).choice(n, k, replace=False)
    sample.sort()
    xs = x[sample]
    in_sample = np.isin(rows, sample)
    srows = np.searchsorted(sample, rows[in_sample])
    from statsmodels.tsa.seasonal import STL  # noqa: F401  (imported before the clock starts)

    t0 = time.perf_counter()
    s = bl.stl_bands(xs, dates, dates[days - scored])
    dts = time.perf_counter() - t0
    rs, fps = quality(xs, s.upper, srows, at[in_sample], scored, s.history)
    rw, fpw = quality(xs, b.upper[sample], srows, at[in_sample], scored, b.history[sample])
    stl_rate = k / dts
    print(f"     per-series STL loop on {k} of them: {stl_rate:,.0f} series/s, all {n:,} would take "
          f"{n / stl_rate / 60:,.0f} min: {n / dt / stl_rate:,.0f}x slower than the weekday bands; on the "
          f"sample recall/FP STL {rs:.3f}/{fps:.5f} vs weekday {rw:.3f}/{fpw:.5f}")


def cpu_data(n: int, hours_n: int, seed: int = 1) -> tuple[cpu.CpuMatrix, np.ndarray]:
    """Daily CPU shape + noise per node; in the last day 1% of nodes turn into pinned miners, 0.5% into
    stealth miners held at ~60%, and one project in 50 surges (every node x2, shape kept)."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range("2026-09-10", periods=hours_n, freq="h", tz="UTC")
    t = len(hours)
    h = hours.hour.to_numpy()
    shape = 0.3 + 0.7 * np.clip(np.sin((h - 6) / 24 * 2 * np.pi), 0, None)
    vals = np.empty((n, t))
    for r0 in range(0, n, GEN_CHUNK):
        k = min(GEN_CHUNK, n - r0)
        vals[r0: r0 + k] = np.clip(rng.uniform(10, 50, k)[:, None] * shape[None, :]
                                   + rng.normal(0, 4, (k, t)), 0, 100)
    start = t - 24
    project = np.arange(n) // 20
    surge = np.isin(project, np.flatnonzero(rng.uniform(size=project.max() + 1) < 0.02))
    vals[surge, start:] = np.clip(vals[surge, start:] * 2.0, 0, 95)
    u = rng.uniform(size=n)
    pinned = (u < 0.01) & ~surge
    stealth = (u >= 0.01) & (u < 0.015) & ~surge
    vals[pinned, start:] = np.clip(99.0 + rng.normal(0, 0.3, (int(pinned.sum()), t - start)), 0, 100)
    vals[stealth, start:] = np.maximum(vals[stealth, start:], 60 + rng.normal(0, 0.8, (int(stealth.sum()), t - start)))
    nodes = pd.DataFrame({"node": [f"n{i}" for i in range(n)], "provider": "aws",
                          "project": [f"p{i}" for i in project], "cluster": None, "region": "us-east-1",
                          "instance_type": "m5.large", "first_seen": hours[0], "new": False})
    return cpu.CpuMatrix(nodes, hours, vals), pinned | stealth


class Stages:
    """Wall and process CPU seconds (the box is shared: wall moves with the load, CPU much less) and the
    peak RSS after each stage."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def run(self, name: str, fn: Callable[[], T]) -> T:
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        w, c = time.perf_counter() - w0, time.process_time() - c0
        self.wall, self.cpu = self.wall + w, self.cpu + c
        print(f"     {name:<38} {w:6.1f} s wall, {c:6.1f} s CPU, peak RSS {peak_rss_gb():.2f} GB")
        return out


def long_usage(m: cpu.CpuMatrix, n: int) -> pd.DataFrame:
    """The first ``n`` nodes of the matrix as the long frame providers return (one row per node-hour),
    built in lean dtypes: the keys and metadata categorical (as strings 67M rows would take ~4 GB of
    Python object pointers), the CPU float64 as ``normalize_usage`` leaves it."""
    k, t = min(n, len(m.nodes)), len(m.hours)
    meta = m.nodes.iloc[:k]
    stamps = pd.DatetimeIndex(np.tile(m.hours.asi8, k), dtype=m.hours.dtype, copy=False).array
    cols = {}
    for c in ("node", "provider", "project", "cluster", "region", "instance_type"):
        codes, uniques = pd.factorize(meta[c])
        small = np.int8 if len(uniques) < 127 else np.int16 if len(uniques) < 32_767 else np.int32
        cols[c] = pd.Categorical.from_codes(np.repeat(codes.astype(small), t), categories=uniques)
    return pd.DataFrame({"timestamp": stamps, "cpu_utilization": m.values[:k].reshape(-1), **cols}, copy=False)


def bench_cpu(n: int, hours: int, long_nodes: int | None, usage_methods: list[str], slow_nodes: int) -> None:
    """What detect() runs on hourly CPU: ``cpu_matrix`` on the long frame (of ``long_nodes`` nodes, all by
    default; fewer are projected to all), then features, node episodes and the usage score with its
    onsets on the matrix (once per method in ``usage_methods``; the first one counts in the total), and
    ``score_matrix`` (the path without the shortcut) on the first ``slow_nodes`` nodes for comparison."""
    t0 = time.perf_counter()
    m, miners = cpu_data(n, hours)
    gen = time.perf_counter() - t0
    t = len(m.hours)
    print(f"cpu  {n:>9,} nodes x {t} h ({t / 24:.1f} days), data generated in {gen:.1f} s:")
    st = Stages()
    k = n if long_nodes is None else min(long_nodes, n)
    pivot = 0.0
    if k:
        frame = long_usage(m, k)
        c0 = time.process_time()
        built = st.run(f"cpu_matrix from {k * t:,} long rows", lambda: cpu.cpu_matrix(frame))
        pivot = (time.process_time() - c0) * n / k
        same = np.array_equal(built.values, m.values[:k], equal_nan=True)
        print(f"     (long frame {frame.memory_usage().sum() / 2**30:.2f} GB in categorical/float64 columns; "
              f"matrix {'identical to' if same else 'DIFFERENT from'} the generated one)")
        del frame, built
    settings = cpu.CpuSettings()
    f = st.run("features", lambda: cpu.features(m, settings))
    episodes = st.run("node_episodes", lambda: cpu.node_episodes(m, f, settings))
    as_of = m.hours[-1] + pd.Timedelta(hours=1)
    usage = st.run(f"usage score ({usage_methods[0]}, 28-day window)",
                   lambda: _usage_anomalies(m, m.hours[0], as_of, usage_methods[0]))
    reported = sum(len(v) for v in usage.values())
    total_wall, total_cpu = st.wall, st.cpu
    for method in usage_methods[1:]:
        more = st.run(f"usage score ({method}, 28-day window)", partial(_usage_anomalies, m, m.hours[0], as_of, method))
        print(f"     ({sum(len(v) for v in more.values()):,} usage departures reported)")
    few = m.values[:slow_nodes]
    for method in usage_methods if slow_nodes else []:
        params = replace(HOURLY_USAGE, method=method)
        st.run(f"score_matrix ({method}), {slow_nodes:,} nodes", partial(score_matrix, few, params=params))
        st.run(f"flagged_scores ({method}), {slow_nodes:,} nodes", partial(flagged_scores, few, params=params))
    st.wall, st.cpu = total_wall, total_cpu
    flagged = (f.pinned | f.plateau).any(axis=1)
    print(f"     total {st.wall:.1f} s wall, {st.cpu:.1f} s CPU ({n * t / st.cpu / 1e6:,.1f}M node-hours per CPU s)"
          + (f"; the pivot for all {n:,} nodes would add ~{pivot * (n - k) / n:.0f} s CPU" if 0 < k < n else "")
          + f"; miners found {int((flagged & miners).sum())}/{int(miners.sum())}, clean nodes flagged "
          f"{int((flagged & ~miners).sum())}, {len(episodes):,} episodes, {reported:,} usage departures reported")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--series", type=int, default=1_000_000, help="daily cost series (0: skip)")
    ap.add_argument("--days", type=int, default=120, help="days of cost history")
    ap.add_argument("--scored", type=int, default=28, help="most recent days scored")
    ap.add_argument("--nodes", type=int, default=100_000, help="nodes of hourly CPU (0: skip)")
    ap.add_argument("--cpu-days", type=int, default=28, help="days of hourly CPU")
    ap.add_argument("--hours", type=int, default=None, help="hours of CPU (overrides --cpu-days)")
    ap.add_argument("--stl-series", type=int, default=300, help="series in the STL comparison loop")
    ap.add_argument("--workers", type=int, default=None, help="threads for the cost bands (default: cores)")
    ap.add_argument("--long-nodes", type=int, default=None,
                    help="nodes whose long frame cpu_matrix pivots (default all; fewer: projected to --nodes)")
    ap.add_argument("--usage-method", action="append", choices=["range", "calibrated"], default=None,
                    help="usage score method(s) timed, the first one in the total (default: detect's)")
    ap.add_argument("--slow-nodes", type=int, default=0,
                    help="also time score_matrix against flagged_scores on this many nodes, per usage method")
    a = ap.parse_args(argv)
    if a.series:
        bench_cost(a.series, a.days, a.scored, a.stl_series, a.workers)
    if a.nodes:
        methods = a.usage_method or [CpuDetectionConfig().usage_score]
        bench_cpu(a.nodes, a.hours or 24 * a.cpu_days, a.long_nodes, methods, a.slow_nodes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
