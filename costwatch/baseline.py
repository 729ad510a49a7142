"""Normal bands for daily cost, computed for many series at once.

The default model is a robust weekday-seasonal level in log space: each day's band uses only the
``lookback`` days before it, so a band is causal by construction and an ongoing incident cannot drag its
own band up.  Detection scores with two passes (:func:`detection_bands`, the second without the days the
first found out of band) and computes only the days it reports and what they depend on.

It is numpy over blocks of series laid out day-major in float32: the medians of 4 and 7 values are min/max
selection networks over shifted views of the block (SIMD loops, no copies), the spreads sorts of
contiguous windows, and nothing loops over series or days in Python.  Measured on the project's
2-core box while other jobs shared it: 1,000,000 series x 120 days, the last 28 scored, in 26-40 s
(25,000-38,000 series/s; 37 s on one thread) with a peak RSS of 3.2 GB including the 1 GB input
(``bench/scale.py``).  The (series x day x lookback) tensor version this replaced ran detection's two
passes at ~1,350 series/s, and a per-series STL loop runs ~200 series/s, ~195x slower.  Bands equal
the tensor version's up to float32 rounding and flag the same days (tests/test_baseline.py), with one
fix: a 7-day lookback (allowed by the config) no longer fails on the missing prior week.
``method="stl"`` fits statsmodels' robust STL per series on history that ends before the scored period,
for users who prefer a classical decomposition and have few series.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .model import USAGE_CHARGES

MAX_TREND = float(np.log(1.10))
TAIL_MARGIN = 1.5  # detection bands cover this many times the largest recent excess (chosen on seeds 1-5)


@dataclass
class DailyMatrix:
    """A wide view of a long cost frame: one row per series, one column per UTC day."""

    keys: pd.DataFrame  # one row per series: the grouping columns
    days: pd.DatetimeIndex
    values: np.ndarray  # float64, S x D, NaN where the series has no data that day


@dataclass
class Bands:
    expected: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    sigma: np.ndarray  # robust spread in log space; the unit of the score
    history: np.ndarray  # int: days of data before each day
    method: str
    # detection only: days inside an open (or closed) episode, judged against the band frozen at its start,
    # and days of an episode accepted as planned (their level becomes the baseline)
    episode: np.ndarray | None = None
    accepted: np.ndarray | None = None


def usage_rows(costs: pd.DataFrame) -> pd.Series:
    """Which rows are consumption.  Credits, refunds, tax and purchases never count as a spike.  The text is
    cleaned once per distinct category, not per row (1M rows hold a handful)."""
    codes, kinds = pd.factorize(costs["charge_category"].astype("string"), use_na_sentinel=True)
    clean = pd.Series(kinds, dtype="string").str.strip().str.lower()
    usage = np.append(clean.isin(list(USAGE_CHARGES)).to_numpy(dtype=bool), True)  # -1: missing counts
    return pd.Series(usage[codes], index=costs.index) & (costs["effective_cost"] >= 0)


def daily_matrix(costs: pd.DataFrame, keys: list[str], value: str = "effective_cost") -> DailyMatrix:
    """Roll hourly and daily rows up to UTC days and pivot to series x days.

    A day on which a project has no rows at all is missing (NaN) for all its series: exports skip days,
    and a gap is not a zero.  A day on which the project has rows but this series has none is a real zero.
    Days before a series first appears are NaN, so new services count as short history.
    Detection puts ``currency`` in ``keys``, so no cell ever adds two currencies; presence stays per project,
    so a day a project was billed only in its other currency is a real zero for this one.
    """
    if costs.empty:
        return DailyMatrix(pd.DataFrame(columns=keys), pd.DatetimeIndex([], tz="UTC"), np.zeros((0, 0)))
    day = costs["period_start"].dt.floor("D")
    days = pd.date_range(day.min(), day.max(), freq="D")
    frame = costs.assign(_day=day)
    # groupby, not pivot_table(dropna=False): the latter builds the cartesian product of all keys
    wide = frame.groupby([*keys, "_day"], observed=True, dropna=False)[value].sum().unstack("_day")
    wide = wide.reindex(columns=days)
    vals = wide.to_numpy(dtype="float64")
    key_df = wide.index.to_frame(index=False)
    # project presence per day: where the project had any row, absent series are zero, not missing
    present = frame.groupby(["project_id", "_day"], observed=True).size()
    pres = present.unstack("_day").reindex(columns=days).notna()
    pres_rows = pres.reindex(key_df["project_id"]).to_numpy()
    first = np.where(np.isnan(vals), np.inf, np.arange(vals.shape[1])[None, :]).min(axis=1)
    started = np.arange(vals.shape[1])[None, :] >= first[:, None]
    vals = np.where(np.isnan(vals) & pres_rows & started, 0.0, vals)
    return DailyMatrix(key_df, days, vals)


def nanmedian(a: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN, by one sort; ~20x faster than ``np.nanmedian`` on
    window tensors, which loops in Python over rows that contain NaN."""
    srt = np.sort(a, axis=-1)  # NaN sorts last
    n = (~np.isnan(a)).sum(axis=-1)
    lo = np.clip((n - 1) // 2, 0, None)[..., None]
    hi = np.clip(n // 2, 0, None)[..., None]
    with np.errstate(invalid="ignore"):
        med = 0.5 * (np.take_along_axis(srt, lo, -1) + np.take_along_axis(srt, hi, -1))[..., 0]
    return np.where(n > 0, med, np.nan)


# ------------------------------------------------------------------------ medians of a few arrays
#
# The band is made of medians of 4, 7, 14 and 28 values per series and day.  Sorting a window tensor
# per day (the first version of this module) spends most of its time copying and sorting; here the
# small medians are selection networks of elementwise np.minimum/np.maximum over shifted day-major
# views (no copies, SIMD loops), and only the 28-day spread is a sort.  min/max propagate NaN, so a
# NaN result marks exactly the cells whose window had a gap: those few are redone by a sort, and blocks
# of series with gaps take a network that sorts NaN last and counts the known values instead.

MAX_NETWORK = 16  # above this many values a sort is cheaper than a network


@functools.cache
def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort on n wires: comparator (i, j), i < j, puts the min on i."""
    size = 1 << max(n - 1, 0).bit_length()
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    # wires >= n hold +inf: a comparator that touches one never moves anything
    return tuple((a, b) for a, b in pairs if b < n)


@functools.cache
def _plan(n: int, ranks: frozenset[int]) -> tuple[tuple[int, int, bool, bool], ...]:
    """The sorting network pruned backwards to what wires ``ranks`` need: (i, j, want_min, want_max)."""
    need = set(ranks)
    plan: list[tuple[int, int, bool, bool]] = []
    for a, b in reversed(_sorting_network(n)):
        lo, hi = a in need, b in need
        if lo or hi:
            plan.append((a, b, lo, hi))
            need |= {a, b}
    return tuple(reversed(plan))


def _run_network(w: list[np.ndarray], plan: Sequence[tuple[int, int, bool, bool]]) -> None:
    with np.errstate(invalid="ignore"):
        for a, b, lo, hi in plan:
            x, y = w[a], w[b]
            if lo:
                w[a] = np.minimum(x, y)
            if hi:
                w[b] = np.maximum(x, y)


def elementwise_median(views: Sequence[np.ndarray], starts: Sequence[int] | None = None, gappy: bool = False,
                       ) -> np.ndarray:
    """Elementwise median of same-shaped arrays ignoring NaN, by min/max networks (see :func:`_median`)."""
    return _median(views, starts, gappy)


def _median(views: Sequence[np.ndarray], starts: Sequence[int] | None = None, gappy: bool = False,
            ) -> np.ndarray:
    """Elementwise median of same-shaped arrays, ignoring NaN; a new array.

    ``starts[j]`` is the first row at which ``views[j]`` can be known (earlier rows are windows reaching
    back before the first day): each stretch of rows gets a network over just the views known there.
    ``gappy`` says many cells have a NaN input (a block of series with gaps): those take a network that
    counts them, the others a plain network and a sort for the odd NaN cell."""
    median = _median_gappy if gappy else _median_known
    if starts is None or max(starts) <= 0:
        return median(views)
    rows = views[0].shape[0]
    out = np.full(views[0].shape, np.nan, dtype=views[0].dtype)
    cuts = sorted({0, rows, *(min(max(s, 0), rows) for s in starts)})
    for lo, hi in itertools.pairwise(cuts):
        sub = [v[lo:hi] for v, s in zip(views, starts, strict=True) if s <= lo]
        if sub and hi > lo:
            out[lo:hi] = median(sub)
    return out


def _median_known(views: Sequence[np.ndarray]) -> np.ndarray:
    """Median by the pruned network; min/max propagate NaN, so NaN results are exactly the cells with a
    NaN input, and those are redone by a sort."""
    n = len(views)
    if n > MAX_NETWORK:
        return nanmedian(np.stack(views, axis=-1))
    w = list(views)
    _run_network(w, _plan(n, frozenset({(n - 1) // 2, n // 2})))
    if n % 2:
        med = w[n // 2]
        if any(med is v for v in views):
            med = med.copy()
    else:
        med = w[n // 2 - 1] + w[n // 2]
        med *= 0.5
    bad = np.isnan(med)
    if bad.any():
        idx = np.flatnonzero(bad)
        med = np.ascontiguousarray(med)
        med.reshape(-1)[idx] = nanmedian(np.stack([np.take(v, idx) for v in views], axis=-1))
    return med


def _median_gappy(views: Sequence[np.ndarray]) -> np.ndarray:
    """Median ignoring NaN where many cells have one: NaN sorts as +inf, the network sorts the lower half,
    and the middle of each cell's known values is picked by its count."""
    n = len(views)
    if n > MAX_NETWORK:
        return nanmedian(np.stack(views, axis=-1))
    cnt = np.zeros(views[0].shape, dtype=np.int8)
    w = []
    for v in views:
        known = ~np.isnan(v)
        cnt += known
        w.append(np.where(known, v, np.inf))
    top = n // 2
    _run_network(w, _plan(n, frozenset(range(top + 1))))
    lo_at = (cnt - 1) // 2
    hi_at = cnt // 2
    lo, hi = w[0], w[0]
    for r in range(1, top + 1):
        if r <= (n - 1) // 2:
            lo = np.where(lo_at >= r, w[r], lo)
        hi = np.where(hi_at >= r, w[r], hi)
    med = lo + hi
    med *= 0.5
    med[cnt == 0] = np.nan
    return med


def _nanmean(views: Sequence[np.ndarray]) -> tuple[np.ndarray, bool]:
    """Elementwise mean ignoring NaN, and whether any input was NaN."""
    tot = views[0] + views[1] if len(views) > 1 else views[0].copy()
    for v in views[2:]:
        tot += v
    tot /= len(views)
    bad = np.isnan(tot)
    if not bad.any():
        return tot, False
    idx = np.flatnonzero(bad)
    tot = np.ascontiguousarray(tot)
    sub = np.stack([np.take(v, idx) for v in views], axis=-1)
    known = ~np.isnan(sub)
    with np.errstate(invalid="ignore", divide="ignore"):  # all-NaN cells stay NaN
        tot.reshape(-1)[idx] = np.where(known, sub, 0.0).sum(axis=-1) / known.sum(axis=-1)
    return tot, True


# ------------------------------------------------------------------------------------- the band
#
# Day-major blocks: ``yp`` is (pad + days) x series of log1p(cost) in float32, row ``pad + t`` is day t
# and the ``pad`` rows before day 0 are NaN, so the windows of early days are simply short.

CHUNK_SERIES = 1024
SIGMA_CELLS = 1 << 18  # window values sorted at once (1 MB of float32)


def _expected(yp: np.ndarray, pad: int, t0: int, t1: int, lookback: int, gappy: bool = False,
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Expected log cost for days [t0, t1) from the ``lookback`` days before each, and the seven
    weekday offsets it used (``season[k]`` is the offset of weekday t + k, for the in-sample spread).

    Level x weekday factor: each weekday's offset from the median of its own week (so a level shift
    between weeks is not read as weekly shape), the median of those offsets over the weeks of the
    window, then the deseasonalized median of the last week plus a damped trend against the week
    before."""
    n = t1 - t0
    weeks = lookback // 7
    ns = n + lookback - 6
    base = pad + t0 - lookback  # row of the first day of the first window's first week
    # the window of day t holds weeks starting at s = t - lookback + 7 wk; m7[s] is the median of y[s:s+7]
    # row i of these views is day s + k >= 0 from i = lookback - t0 - k on
    known = [lookback - t0 - k for k in range(7)]
    m7 = _median([yp[base + k: base + k + ns] for k in range(7)], known, gappy)
    wd = []
    for k in range(7):
        e = yp[base + k: base + k + ns] - m7  # offset of day s + k from its week, for every s
        wd.append(_median([e[7 * wk: 7 * wk + n] for wk in range(weeks)],
                          [known[k] - 7 * wk for wk in range(weeks)], gappy))
    mean, gaps = _nanmean(wd)
    for w in wd:
        w -= mean
        if gaps:
            np.nan_to_num(w, copy=False, nan=0.0)
    season = wd
    last = pad + t0 - 7
    level = _median([yp[last + k: last + k + n] - season[k] for k in range(7)], [7 - k - t0 for k in range(7)],
                    gappy)
    if weeks >= 2:
        prior = _median([yp[last - 7 + k: last - 7 + k + n] - season[k] for k in range(7)],
                        [14 - k - t0 for k in range(7)], gappy)
        trend = level - prior
        trend /= 7.0
        trend[np.isnan(prior)] = 0.0
        # damped: half of the recent slope, over the 4 days from the middle of last week to today, and
        # never more than +-10%: after a step the slope is huge for a week, and extrapolating it overshoots
        trend *= 2.0
        np.clip(trend, -MAX_TREND, MAX_TREND, out=trend)
        expected = level + trend
    else:
        expected = level
    expected += season[0]
    return expected, season


def _sigma_cells(errp: np.ndarray, yp: np.ndarray, season: list[np.ndarray], pad: int, t0: int,
                 nerr: np.ndarray, tt: np.ndarray, ss: np.ndarray, lookback: int) -> np.ndarray:
    """Spread at arbitrary (day, series) cells: out-of-sample where 7+ earlier errors exist, else the
    inflated in-sample spread of the deseasonalized last two weeks."""
    sig = np.full(tt.shape, np.nan, dtype=np.float32)
    oos = nerr[tt, ss] >= 7
    if oos.any():
        t, s = tt[oos], ss[oos]
        win = errp[pad + t[:, None] - lookback + np.arange(lookback), s[:, None]]
        sig[oos] = 1.4826 * nanmedian(np.abs(win))
    ins = ~oos
    if ins.any():
        sig[ins] = _sigma_in(yp, season, pad, t0, tt[ins], ss[ins], lookback)
    return sig


def _sigma_in(yp: np.ndarray, season: list[np.ndarray], pad: int, t0: int, tt: np.ndarray, ss: np.ndarray,
              lookback: int) -> np.ndarray:
    m = min(14, lookback)
    i = np.arange(m)
    vals = yp[pad + tt[:, None] - m + i, ss[:, None]]
    s_at = np.stack([season[k][tt - t0, ss] for k in range(7)], axis=-1)
    flat = vals - s_at[:, i % 7]
    ref = nanmedian(flat)
    # in-sample residuals understate one-day-ahead errors about twice
    return np.asarray(2.0 * 1.4826 * nanmedian(np.abs(flat - ref[:, None])), dtype=np.float32)


def _sigma_dense(errp: np.ndarray, yp: np.ndarray, season: list[np.ndarray], pad: int, t0: int,
                 nerr: np.ndarray, a: int, b: int, lookback: int) -> np.ndarray:
    """Spread for every series on days [a, b), day-major.  The windows are sorted series-major (each
    window a contiguous row), which is what makes the sort fast."""
    s = errp.shape[1]
    out = np.empty((b - a, s), dtype=np.float32)
    if b <= a:
        return out
    aerr = np.ascontiguousarray(np.abs(errp[pad + a - lookback: pad + b - 1]).T)  # series x days
    wins = np.lib.stride_tricks.sliding_window_view(aerr, lookback, axis=1)  # [:, i] = days a+i-L .. a+i-1
    lo, hi = (lookback - 1) // 2, lookback // 2
    step = max(1, SIGMA_CELLS // (s * lookback))
    for d0 in range(0, b - a, step):
        d1 = min(d0 + step, b - a)
        w = wins[:, d0:d1].copy()  # series x days x lookback, C order, writable
        w.sort(axis=-1)  # NaN last
        med = w[..., lo] + w[..., hi]
        cnt = nerr[a + d0: a + d1].T
        part = cnt < lookback
        if part.any():  # windows with a gap or reaching before the first day: the middle of what is known
            ii, jj = np.nonzero(part)
            c = cnt[ii, jj].astype(np.intp)
            with np.errstate(invalid="ignore"):
                med[ii, jj] = w[ii, jj, np.clip((c - 1) // 2, 0, None)] + w[ii, jj, np.clip(c // 2, 0, None)]
        med *= 0.5 * 1.4826
        out[d0: d1] = med.T
    short = nerr[a:b] < 7
    if short.any():
        tt, ss = np.nonzero(short)
        out[tt, ss] = _sigma_in(yp, season, pad, t0, tt + a, ss, lookback)
    return out


def _error_counts(errp: np.ndarray, pad: int, lookback: int) -> np.ndarray:
    """Known one-day-ahead errors in the ``lookback`` days before each day, day-major (days x series).
    (Counted series-major: numpy's cumsum along the first axis is ~15x slower.)"""
    d = errp.shape[0] - pad
    known = np.ascontiguousarray(~np.isnan(errp).T)
    c = np.zeros((errp.shape[1], errp.shape[0] + 1), dtype=np.int32)
    np.cumsum(known, axis=1, dtype=np.int32, out=c[:, 1:])
    return (c[:, pad: pad + d] - c[:, pad - lookback: pad - lookback + d]).T


@dataclass
class _Params:
    lookback: int
    z: float
    sensitivity: float
    min_ratio: float
    tail: float = 0.0  # the band's half-width covers this many times the largest recent excess (0: off)

    @property
    def floor(self) -> float:
        return float(np.log1p(self.min_ratio))

    @property
    def zk(self) -> float:
        return float(self.z / max(self.sensitivity, 1e-6))


def _errors(yp: np.ndarray, ey: np.ndarray, pad: int, t0: int) -> np.ndarray:
    errp = np.full(yp.shape, np.nan, dtype=np.float32)
    np.subtract(yp[pad + t0:], ey, out=errp[pad + t0:])
    return errp


def _one_pass(yp: np.ndarray, pad: int, s0: int, p: _Params, gappy: bool) -> tuple[np.ndarray, np.ndarray]:
    """Expected log cost and spread for days [s0, days), day-major."""
    d = yp.shape[0] - pad
    a = max(0, s0 - p.lookback)  # the spread of day s0 needs the errors of the lookback days before it
    ey, season = _expected(yp, pad, a, d, p.lookback, gappy)
    errp = _errors(yp, ey, pad, a)
    sigma = _sigma_dense(errp, yp, season, pad, a, _error_counts(errp, pad, p.lookback), s0, d, p.lookback)
    return ey[s0 - a:], _with_tail(sigma, errp, pad, s0, d, p)


def _with_tail(sigma: np.ndarray, errp: np.ndarray, pad: int, a: int, b: int, p: _Params) -> np.ndarray:
    """The spread widened, where needed, so the band covers ``p.tail`` times the largest excess over
    expected in the lookback before each day (days [a, b)).  The median spread ignores rare regular
    excursions (an autoscaler adding nodes on one day in eight): calibrated on the series' own recent
    errors, the band is not crossed by the next one of them.  Days dropped from the history do not count."""
    if p.tail <= 0 or b <= a:
        return sigma
    L = p.lookback
    run = np.fmax(errp[pad + a - L: pad + b - 1], 0.0)  # NaN -> 0: no excess
    width = 1
    while 2 * width <= L:  # run[i] = max of rows i .. i + width - 1 (a sparse table, doubling)
        run = np.maximum(run[:-width], run[width:])
        width *= 2
    tail = np.maximum(run[: b - a], run[L - width: L - width + b - a])
    tail *= p.tail / p.zk
    return np.fmax(sigma, tail)


def _assemble(ey: np.ndarray, sigma: np.ndarray, p: _Params, add: np.ndarray | None = None,
              extra: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """expected, lower, upper, sigma from the log level and spread (any layout), plus a learned monthly
    pattern's offset (``add``) and the spread of its past occurrences (``extra``) where given."""
    half = np.nan_to_num(sigma, nan=0.0)
    half *= p.zk
    np.maximum(half, p.floor, out=half)
    if add is not None and extra is not None:
        ey = ey + add
        half += extra
    lower = ey - half
    np.maximum(lower, 0.0, out=lower)
    np.expm1(lower, out=lower)
    upper = ey + half
    np.expm1(upper, out=upper)
    with np.errstate(invalid="ignore"):
        sig = np.maximum(sigma, p.floor / p.z)
    return np.expm1(ey), lower, upper, sig


# ------------------------------------------------------------------------------ monthly patterns
#
# Month-end (and month-start) jobs move spend on the same days of every month.  The weekday band cannot
# know them, so each day also looks at the band's own one-day-ahead errors on the same position of the
# previous three months: the same day of the month, or for the last three days of a month the same
# distance from its end.  Where at least two of those exist and every one of them was above expected by
# a clear margin, their median is the day's learned offset and half their range widens the band.  It is
# calibrated on the series' own history (no corpus constant but the margin); a jump on a day that had no
# such history is still judged by the plain band.

MONTHS_BACK = 3
MONTH_LOOKBACK_DAYS = 31 * MONTHS_BACK + 3  # history before the first band day the patterns read


def month_positions(days: pd.DatetimeIndex) -> np.ndarray:
    """days x MONTHS_BACK: the index of the same month position in each of the previous months, -1 where
    the data has none.  The last three days of a month are positions from its end, the others days of the
    month (every month has a 28th)."""
    n = len(days)
    out = np.full((n, MONTHS_BACK), -1, dtype=np.int64)
    if not n:
        return out
    dom = np.asarray(days.day)
    left = np.asarray(days.days_in_month - days.day)
    month = np.asarray(days.year * 12 + days.month)
    key = np.where(left <= 2, -1 - left, dom)  # -1 last day, -2, -3; else 1..28
    where = {(int(m), int(k)): i for i, (m, k) in enumerate(zip(month, key, strict=True))}
    for i in range(n):
        for b in range(MONTHS_BACK):
            out[i, b] = where.get((int(month[i]) - 1 - b, int(key[i])), -1)
    return out


def _month_pattern(errp: np.ndarray, pad: int, prev: np.ndarray, t0: int, t1: int, p: _Params,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Learned offset and extra half-width (log space) for days [t0, t1), day-major, from the one-day-ahead
    errors ``errp`` (NaN where not computed) on the same month position in previous months.  Elementwise
    over the (at most three) occurrences: no sort."""
    idx = prev[t0:t1]
    occ = [errp[pad + np.where(idx[:, b] >= 0, idx[:, b], -pad)] for b in range(idx.shape[1])]  # row 0: NaN
    cnt = np.zeros(occ[0].shape, dtype=np.int8)
    clear = np.ones(occ[0].shape, dtype=bool)
    hi = np.full(occ[0].shape, np.nan, dtype=np.float32)
    lo = hi.copy()
    with np.errstate(invalid="ignore"):
        for o in occ:
            known = ~np.isnan(o)
            cnt += known
            clear &= (o >= 0.5 * p.floor) | ~known
            np.fmax(hi, o, out=hi)
            np.fmin(lo, o, out=lo)
        pattern = clear & (cnt >= 2)
        if not pattern.any():
            z = np.zeros(occ[0].shape, dtype=np.float32)
            return z, z.copy()
        # median of the known ones: of two, their mean; of three, the one between the others
        total = np.zeros(occ[0].shape, dtype=np.float32)
        for o in occ:
            total += np.nan_to_num(o, nan=0.0)
        med = np.where(cnt == 3, total - hi - lo, 0.5 * (hi + lo)) if len(occ) == 3 else 0.5 * (hi + lo)
        pattern &= med >= 0.75 * p.floor
        add = np.where(pattern, med, 0.0).astype(np.float32)
        return add, np.where(pattern, 0.5 * (hi - lo), 0.0).astype(np.float32)


# ----------------------------------------------------------------------------------- open episodes
#
# The two passes keep an incident's days out of its own band only while the first pass still sees them:
# after about a week a new level is the first pass's normal, and a persistent spike (or a miner's compute)
# is absorbed.  So a run of out-of-band days opens an *episode*, judged from then on against the band
# frozen at its start (its weekday shape repeated, plus learned monthly offsets); its days never enter a
# later band, and it ends only when the cost is back in that band two days running (three once it has
# lasted a week: a level that a long weekend or a holiday dips back in band for two days is still there).
# An episode that touches a day accepted as planned is the new baseline instead: its days stay in the
# history, as before.

MAX_EPISODES = 6  # per series and call: later ones are just dropped days, as in the two passes
LEVEL_DAYS = 7  # an episode out of band this long is a new level, not a spike ...
LEVEL_BACK = 3  # ... and is over only after this many days back in band (a spike: two)


def _first_true(mask: np.ndarray, default: int) -> np.ndarray:
    """Per column, the first row where ``mask`` is true, else ``default``."""
    return np.where(mask.any(axis=0), np.argmax(mask, axis=0), default)


def _back_in_band(inband: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Days that end an episode (``rel``: days since its start): the first of two days back in the frozen band,
    or of LEVEL_BACK days once it has lasted LEVEL_DAYS, so a new level is not over because a long weekend or
    a holiday dipped it back in band.  The days at the end of the data that could still be followed by a day
    out of band end nothing: an episode whose newest days are in band is still open."""
    two = inband.copy()
    two[:-1] &= inband[1:]
    two[-1:] = False
    run = two.copy()
    for k in range(2, LEVEL_BACK):
        run[:-k] &= inband[k:]
        run[-k:] = False
    return (rel > 0) & np.where(rel < LEVEL_DAYS, two, run)


def _origins(drops: np.ndarray) -> np.ndarray:
    """Days that can open an episode: a drop followed by another within two days (a lone day out of band is
    over by itself).  A new array: ``_episodes`` clears the origins each episode consumes."""
    soon = np.zeros_like(drops)
    soon[:-1] |= drops[1:]
    soon[:-2] |= drops[2:]
    return drops & soon


def _frozen_band(base: np.ndarray, cols: np.ndarray, a: np.ndarray, rel: np.ndarray, pad: int, p: _Params,
                 add: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected (log), half-width (log) and spread on every day of the band frozen at each episode's start
    ``a`` (series ``cols``): computed without any day from the start on, so the episode cannot move it, and
    its first week repeated, so it keeps the weekday shape; the monthly offsets are added per day."""
    d = base.shape[0] - pad
    days = np.arange(d)[:, None]
    yy = base[:, cols].copy()
    yy[pad:][days >= a[None, :]] = np.nan  # the band frozen at the start sees nothing from it on
    lo = int(a.min())
    ey_f, sig_f = _one_pass(yy, pad, lo, p, True)
    src = np.clip(a[None, :] + np.mod(rel, 7), 0, d - 1) - lo  # the first week's band, repeated
    c = np.arange(cols.size)[None, :]
    fe = ey_f[src, c] + add[:, cols]
    fs = sig_f[src, c]
    fh = np.maximum(np.nan_to_num(fs, nan=0.0) * p.zk, p.floor) + extra[:, cols]
    return fe, fh, fs


@dataclass
class _Held:
    """What :func:`_episodes` builds for one block (days x series): episode and accepted days, the frozen
    band on episode days, the history with episode days dropped (``base``, padded) and, per series, the
    first day a next episode may start (``cur``)."""

    episode: np.ndarray
    acc_days: np.ndarray
    f_ey: np.ndarray
    f_half: np.ndarray
    f_sig: np.ndarray
    base: np.ndarray
    cur: np.ndarray

    @classmethod
    def start(cls, ys: np.ndarray, d: int, k: int) -> _Held:
        """Nothing held yet: the frozen figures are NaN off episode days."""
        return cls(np.zeros((d, k), dtype=bool), np.zeros((d, k), dtype=bool),
                   np.full((d, k), np.nan, dtype=np.float32), np.full((d, k), np.nan, dtype=np.float32),
                   np.full((d, k), np.nan, dtype=np.float32), ys.copy(), np.zeros(k, dtype=np.int64))

    def accept(self, drops: np.ndarray, oc: np.ndarray, rel: np.ndarray) -> None:
        """Episodes of series ``oc`` that touch a planned day: the first pass's run of drops (gaps up to two
        days) stays in the history, and the band learns the new level as it always did."""
        d = drops.shape[0]
        days = np.arange(d)[:, None]
        quiet = ~drops[:, oc]
        three = quiet.copy()
        three[:-1] &= quiet[1:]
        three[:-2] &= quiet[2:]
        stop = _first_true(three & (rel > 0), d)
        run = (rel >= 0) & (days < stop[None, :])
        self.acc_days[:, oc] |= run
        self.cur[oc] = stop

    def hold(self, nc: np.ndarray, sel: np.ndarray, frozen: tuple[np.ndarray, ...], end: np.ndarray,
             pad: int) -> None:
        """Episodes of series ``nc`` on days ``sel``: their days leave the history of later episodes' bands,
        and keep the frozen band (``frozen``: expected, half-width, spread) they are judged against."""
        self.episode[:, nc] |= sel
        sub = self.base[pad:, nc]
        sub[sel] = np.nan
        self.base[pad:, nc] = sub
        for dst, src_arr in zip((self.f_ey, self.f_half, self.f_sig), frozen, strict=True):
            blk = dst[:, nc]
            blk[sel] = src_arr[sel]
            dst[:, nc] = blk
        self.cur[nc] = end


def _episodes(ys: np.ndarray, xs: np.ndarray, drops: np.ndarray, accepted: np.ndarray | None, pad: int,
              p: _Params, add: np.ndarray, extra: np.ndarray,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Episodes of the series in ``ys`` (log cost, padded, day-major) from their first-pass drops.

    Returns the episode days, the accepted days, and the frozen expected (log), half-width (log) and spread
    on episode days (days x series).  ``add``/``extra`` are the monthly offsets for every day.  Each round
    opens the next episode of every series that has one (all series at once), so it loops MAX_EPISODES
    times at most, never per series."""
    d, k = xs.shape
    days = np.arange(d)[:, None]
    held = _Held.start(ys, d, k)
    origins = _origins(drops)
    for _ in range(MAX_EPISODES):
        cand = origins & (days >= held.cur[None, :])
        has = cand.any(axis=0)
        if not has.any():
            break
        cols = np.flatnonzero(has)
        a = np.argmax(cand[:, cols], axis=0)
        rel = days - a[None, :]
        fe, fh, fs = _frozen_band(held.base, cols, a, rel, pad, p, add, extra)
        with np.errstate(invalid="ignore"):
            inband = xs[:, cols] <= np.expm1(fe + fh)
        end = _first_true(_back_in_band(inband, rel), d)
        inside = (rel >= 0) & (days < end[None, :])
        ok = np.zeros(cols.size, dtype=bool)
        if accepted is not None:
            ok = (inside & accepted[:, cols]).any(axis=0)
        if ok.any():
            held.accept(drops, cols[ok], rel[:, ok])
        if (~ok).any():
            held.hold(cols[~ok], inside[:, ~ok], (fe[:, ~ok], fh[:, ~ok], fs[:, ~ok]), end[~ok], pad)
        origins[:, cols] &= days >= held.cur[None, cols]
    return held.episode, held.acc_days, held.f_ey, held.f_half, held.f_sig


@dataclass
class _Extras:
    """Detection's optional inputs for one block: the month positions of its days, the days accepted as
    planned (series x days), and whether open episodes are held."""

    prev: np.ndarray | None = None
    accepted: np.ndarray | None = None
    hold: bool = True


@dataclass
class _FirstPass:
    """Detection's first pass over one block, as the dropped days and the second pass read it: the band on
    days [m0, days) (day-major), the one-day-ahead errors from e0 on (padded), the monthly offsets, and the
    days the candidates' spreads read errors from (a1: earlier than e0 when no monthly patterns are learned)."""

    m0: int  # a day dropped before m0 cannot reach a scored band
    a1: int  # the spread of a day from m0 on reads errors from a1 on
    e0: int  # errors are computed from e0 on (monthly patterns read them from there)
    gappy: bool
    ey: np.ndarray
    season: list[np.ndarray]
    errp: np.ndarray
    add: np.ndarray
    extra: np.ndarray


def _log_block(x: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The block day-major (a view), its history (days of data before each day, series x days, like the
    output) and its padded log cost in float32 (see the band section above)."""
    xt = x.T
    d = xt.shape[0]
    valid = ~np.isnan(x)
    hist = np.cumsum(valid, axis=1, dtype=np.int32)
    hist -= valid  # series x days, like the output
    yp = np.full((pad + d, xt.shape[1]), np.nan, dtype=np.float32)
    np.log1p(np.clip(xt, 0.0, None), out=yp[pad:])
    return xt, hist, yp


def _first_pass(yp: np.ndarray, pad: int, s0: int, p: _Params, prev: np.ndarray | None) -> _FirstPass:
    """The first pass's band on only the 2 x lookback days before the scored ones (where dropping a day can
    change a scored band), with its errors from as far back as the monthly patterns and spreads read them."""
    L = p.lookback
    d = yp.shape[0] - pad
    m0 = max(0, s0 - 2 * L)
    a1 = max(0, s0 - 3 * L)
    e0 = max(0, m0 - MONTH_LOOKBACK_DAYS) if prev is not None else m0
    gappy = bool(np.isnan(yp[pad + max(0, min(a1, e0) - L):]).any())
    ey_all, season_all = _expected(yp, pad, e0, d, L, gappy)
    errp = _errors(yp, ey_all, pad, e0)
    ey, season = ey_all[m0 - e0:], [w[m0 - e0:] for w in season_all]
    if prev is not None:
        add, extra = _month_pattern(errp, pad, prev, m0, d, p)
    else:
        add = extra = np.zeros(ey.shape, dtype=np.float32)
    return _FirstPass(m0, a1, e0, gappy, ey, season, errp, add, extra)


def _candidate_sigma(fp: _FirstPass, yp: np.ndarray, pad: int, tt: np.ndarray, ss: np.ndarray, L: int,
                     ) -> np.ndarray:
    """The first pass's spread at the candidate cells only: computing it densely is most of a pass.  The
    candidates' series also need the errors of the lookback before m0 (from a1)."""
    cols, col = np.unique(ss, return_inverse=True)
    yc = np.ascontiguousarray(yp[:, cols])
    errc = np.ascontiguousarray(fp.errp[:, cols])
    if fp.a1 < fp.e0:
        early, _ = _expected(yc, pad, fp.a1, fp.e0, L, fp.gappy)
        np.subtract(yc[pad + fp.a1: pad + fp.e0], early, out=errc[pad + fp.a1: pad + fp.e0])
    return _sigma_cells(errc, yc, [w[:, cols] for w in fp.season], pad, fp.m0, _error_counts(errc, pad, L), tt, col,
                        L)


def _dropped_days(fp: _FirstPass, xt: np.ndarray, yp: np.ndarray, hist: np.ndarray, pad: int, p: _Params,
                  history_days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Days (tt, ss: day, series) the first pass found above its band with enough history, which the second
    pass drops, and which of them are also above the band with the learned monthly pattern (only those can
    open an episode).  A day out of the plain band leaves the history even where a pattern explains it, so
    normal days are banded as without patterns.  Out of band needs cost above expected by at least the
    band's floor: only there is the spread needed."""
    d, m0 = xt.shape[0], fp.m0
    enough = np.greater_equal(hist[:, m0: d - 1], history_days).T
    with np.errstate(invalid="ignore"):
        cand = enough & (yp[pad + m0: pad + d - 1] > fp.ey[: d - 1 - m0] + (p.floor - 1e-3))
    tt, ss = np.nonzero(cand)
    tt += m0
    beyond = np.zeros(tt.shape, dtype=bool)
    if not tt.size:
        return tt, ss, beyond
    sig = _candidate_sigma(fp, yp, pad, tt, ss, p.lookback)
    half = np.maximum(np.nan_to_num(sig, nan=0.0) * p.zk, p.floor)
    ey, add, extra = fp.ey[tt - m0, ss], fp.add[tt - m0, ss], fp.extra[tt - m0, ss]
    with np.errstate(invalid="ignore"):
        out = xt[tt, ss] > np.expm1(ey + half)
        beyond = xt[tt, ss] > np.expm1(ey + add + half + extra)
    return tt[out], ss[out], beyond[out]


def _freeze(new: tuple[np.ndarray, ...], ep: np.ndarray, fe: np.ndarray, fh: np.ndarray, fs: np.ndarray,
            p: _Params) -> None:
    """Episode days ``ep`` of the second pass's bands ``new`` get the band frozen at the episode's start
    (log expected ``fe``, half-width ``fh``, spread ``fs`` on those days), which they are judged against."""
    new[0][ep] = np.expm1(fe)
    new[1][ep] = np.expm1(np.maximum(fe - fh, 0.0))
    new[2][ep] = np.expm1(fe + fh)
    new[3][ep] = np.maximum(np.nan_to_num(fs, nan=0.0), p.floor / p.z)


def _second_pass(bands: tuple[np.ndarray, ...], fp: _FirstPass, xt: np.ndarray, yp: np.ndarray, pad: int,
                 s0: int, p: _Params, ex: _Extras, dropped: tuple[np.ndarray, np.ndarray, np.ndarray],
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Redo the band of the series that had a dropped day without those days (and, with ``ex.hold``, without
    their episodes, judged against the frozen band instead), written into ``bands`` in place.  Returns those
    series and their episode and accepted days (days x series), which the caller marks on the block's rows."""
    tt, ss, beyond = dropped
    d = xt.shape[0]
    second, col = np.unique(ss, return_inverse=True)
    ys = np.ascontiguousarray(yp[:, second])
    y2 = ys.copy()
    y2[pad + tt, col] = np.nan
    add_s = np.zeros((d, second.size), dtype=np.float32)
    extra_s = np.zeros_like(add_s)
    add_s[fp.m0:], extra_s[fp.m0:] = fp.add[:, second], fp.extra[:, second]
    marks = None
    if ex.hold:
        drops = np.zeros((d, second.size), dtype=bool)
        drops[tt[beyond], col[beyond]] = True
        acc = ex.accepted[second].T if ex.accepted is not None else None
        episode, acc_days, f_ey, f_half, f_sig = _episodes(y2, xt[:, second], drops, acc, pad, p, add_s, extra_s)
        y2[pad:][episode] = np.nan
        y2[pad:][acc_days] = ys[pad:][acc_days]
        marks = (episode, acc_days)
    ey2, sigma2 = _one_pass(y2, pad, s0, p, True)  # every one of these series has a dropped day
    new = _assemble(ey2, sigma2, p, add_s[s0:], extra_s[s0:])
    if marks is not None and marks[0][s0:].any():
        ep = marks[0][s0:]
        _freeze(new, ep, f_ey[s0:][ep], f_half[s0:][ep], f_sig[s0:][ep], p)
    for arr, b in zip(bands, new, strict=True):
        arr[:, second] = b
    return second, marks


def _block(x: np.ndarray, s0: int, p: _Params, history_days: int | None, ex: _Extras | None = None,
           ) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
    """Bands of one block of series on days [s0, days), day-major, plus history (series x days).

    With ``history_days`` this is detection's two passes: the second pass drops the days the first found
    above its band (with enough history), so an incident does not become its own baseline.  Only what
    the scored days depend on is computed: the first pass's band on the 2 x lookback days before them
    (where dropping a day can change a scored band), and its spread only where the cost is above the
    band's floor; the second pass only for series that had such a day.  With ``ex`` it also learns monthly
    patterns (``ex.prev``) and holds open episodes (see :func:`_episodes`): the last item is then the
    episode and accepted days of the ``second`` series (days x series)."""
    L = p.lookback
    pad = max(L, 14)
    xt, hist, yp = _log_block(x, pad)
    if history_days is None:
        ey, sigma = _one_pass(yp, pad, s0, p, bool(np.isnan(yp[pad + max(0, s0 - 2 * L):]).any()))
        return _assemble(ey, sigma, p), hist, None, None
    ex = ex or _Extras(hold=False)
    fp = _first_pass(yp, pad, s0, p, ex.prev)
    dropped = _dropped_days(fp, xt, yp, hist, pad, p, history_days)
    d = xt.shape[0]
    sigma1 = _sigma_dense(fp.errp, yp, fp.season, pad, fp.m0, _error_counts(fp.errp, pad, L), s0, d, L)
    sigma1 = _with_tail(sigma1, fp.errp, pad, s0, d, p)
    k = s0 - fp.m0
    bands = _assemble(fp.ey[k:], sigma1, p, fp.add[k:], fp.extra[k:])
    if not dropped[0].size:
        return bands, hist, None, None
    second, marks = _second_pass(bands, fp, xt, yp, pad, s0, p, ex, dropped)
    return bands, hist, second, marks


def _int_dtype(days: int) -> np.dtype:
    return np.dtype(np.int16 if days < np.iinfo(np.int16).max else np.int32)


def _run_blocks(values: np.ndarray, s0: int, p: _Params, history_days: int | None, workers: int | None,
                full_rows: bool, extras: _Extras | None = None) -> Bands:
    s, d = values.shape
    out = [np.full((s, d), np.nan, dtype=np.float32) for _ in range(4)]
    history = np.zeros((s, d), dtype=_int_dtype(d))
    held = extras is not None and extras.hold
    episode = np.zeros((s, d), dtype=bool) if held else None
    accepted = np.zeros((s, d), dtype=bool) if held else None

    def ex_for(rows: slice | np.ndarray) -> _Extras | None:
        if extras is None:
            return None
        acc = extras.accepted[rows] if extras.accepted is not None else None
        return _Extras(extras.prev, acc, extras.hold)

    def mark(target: slice | np.ndarray, second: np.ndarray | None,
             marks: tuple[np.ndarray, np.ndarray] | None) -> None:
        if episode is None or accepted is None or marks is None or second is None:
            return
        tgt = np.arange(s)[target][second]
        episode[tgt] = marks[0].T
        accepted[tgt] = marks[1].T
    # series with a gap (missing day, late start) in the days that are read go in blocks of their own,
    # so the others run the plain networks
    first_read = max(0, s0 - (4 if history_days is not None else 2) * p.lookback)
    gap = np.isnan(values[:, first_read:]).any(axis=1)
    order = np.argsort(gap, kind="stable") if 0 < gap.sum() < s else None

    def run(r0: int) -> None:
        r1 = min(r0 + CHUNK_SERIES, s)
        rows: slice | np.ndarray = slice(r0, r1) if order is None else order[r0:r1]
        x = values[rows]
        ex = ex_for(rows)
        bands, hist, second, marks = _block(x, s0, p, history_days, ex)
        for arr, b in zip(out, bands, strict=True):
            arr[rows, s0:] = b.T
        history[rows] = hist
        mark(rows, second, marks)
        if full_rows and s0 > 0:
            # a series out of band on the first scored day may be in an episode that began before it (so may
            # one with a gap on that day: a missing day is not a recovery), and a series whose data ended
            # before the window is summarized at its last day: all get every day
            with np.errstate(invalid="ignore"):
                gap = np.isnan(x[:, s0]) & ~np.isnan(x[:, max(s0 - 3, 0): s0]).all(axis=1)
                redo = (x[:, s0] > bands[2][0]) | gap | ~(~np.isnan(x[:, s0:])).any(axis=1)
            again = np.flatnonzero(redo)
            if again.size:
                target = np.arange(r0, r1)[again] if order is None else order[r0:r1][again]
                full, _, second2, marks2 = _block(x[again], 0, p, history_days, ex_for(target))
                for arr, b in zip(out, full, strict=True):
                    arr[target] = b.T
                if episode is not None and accepted is not None:
                    episode[target] = False
                    accepted[target] = False
                mark(target, second2, marks2)

    starts = range(0, s, CHUNK_SERIES)
    n_workers = min(workers if workers is not None else (os.cpu_count() or 1), len(starts))
    if n_workers > 1:
        with ThreadPoolExecutor(n_workers) as pool:  # numpy releases the GIL in its loops
            list(pool.map(run, starts))
    else:
        for r0 in starts:
            run(r0)
    return Bands(out[0], out[1], out[2], out[3], history, "weekday", episode, accepted)


def _params(lookback: int, z: float, sensitivity: float, min_ratio: float, tail: float = 0.0) -> _Params:
    return _Params(max(7, int(np.ceil(lookback / 7)) * 7), float(z), float(sensitivity), float(min_ratio),
                   float(tail))


def weekday_bands(values: np.ndarray, *, lookback: int = 28, z: float = 4.0, sensitivity: float = 1.0,
                  min_ratio: float = 0.15, scored_from: int = 0, workers: int | None = None) -> Bands:
    """Causal bands for every series on days ``scored_from`` onwards (NaN before), in blocks of series.

    Each day's band uses only the ``lookback`` days before it (rounded up to whole weeks).  Log space makes
    the weekly shape multiplicative (a weekend at 60% of a weekday stays 60% as spend grows) and keeps one
    big day from dominating the spread.  The spread is the median absolute one-day-ahead error of the
    lookback days before (in-sample residuals understate it ~2x); until 7 such errors exist, the
    in-sample deseasonalized spread of the last two weeks, doubled.  The band is never narrower than
    ``min_ratio`` of the expected value, because a very regular series would otherwise alert on noise.
    Bands are float32; ``workers`` threads share the blocks (default: one per core)."""
    p = _params(lookback, z, sensitivity, min_ratio)
    values = np.asarray(values)
    if values.size == 0:
        empty = np.zeros(values.shape, dtype=np.float32)
        return Bands(empty, empty.copy(), empty.copy(), empty.copy(), np.zeros(values.shape, dtype=np.int16),
                     "weekday")
    return _run_blocks(values, min(max(scored_from, 0), values.shape[1]), p, None, workers, full_rows=False)


def detection_bands(values: np.ndarray, *, scored_from: int = 0, history_days: int = 14, lookback: int = 28,
                    z: float = 4.0, sensitivity: float = 1.0, min_ratio: float = 0.15,
                    workers: int | None = None, days: pd.DatetimeIndex | None = None,
                    accepted: np.ndarray | None = None, hold_episodes: bool = True,
                    tail_margin: float = TAIL_MARGIN) -> Bands:
    """The bands detection scores with: two passes of :func:`weekday_bands`, the second without the days
    the first found above its band (where the series had ``history_days`` of history), so an incident
    does not become its own baseline.  ``history`` is the first pass's (the days of data before each day).

    With ``hold_episodes`` (the default) a run of days out of band is an episode judged against the band
    frozen at its start until the cost is back in it two days running (three once the episode has lasted a
    week), so a level that persists stays out of band instead of being learned after a week, and a long
    weekend that dips it back in band does not end it; ``episode`` marks its days.  An episode that touches a
    day of ``accepted`` (bool, series x days: planned activity) is the new baseline instead, learned as the
    two passes always did, and ``accepted`` marks its days.  With ``days`` (the matrix's UTC days) the band
    also learns month-end / month-start patterns seen in each of the previous months (at least two).  The
    band's half-width covers ``tail_margin`` times the largest excess over expected of the lookback before
    (days kept in the history only), so rare regular excursions do not alert (0: the median spread alone).

    Bands are exact on days ``scored_from`` onwards and NaN before, except for series out of band on day
    ``scored_from`` (whose episode may have begun earlier) and series without data since then (reported
    at their last day): those get every day.  Without episodes and ``days`` the result on those days is the
    same as two full passes."""
    p = _params(lookback, z, sensitivity, min_ratio, tail_margin)
    values = np.asarray(values)
    if values.size == 0:
        return weekday_bands(values)
    s0 = max(scored_from, 0)
    if s0 >= values.shape[1]:  # nothing scored: every series ended before, and is reported at its last day
        s0 = 0
    prev = month_positions(days) if days is not None else None
    extras = _Extras(prev, accepted, hold_episodes) if (prev is not None or hold_episodes) else None
    return _run_blocks(values, s0, p, int(history_days), workers, full_rows=True, extras=extras)


def stl_bands(values: np.ndarray, days: pd.DatetimeIndex, scored_from: pd.Timestamp, *, lookback: int = 28,
              z: float = 4.0, sensitivity: float = 1.0, min_ratio: float = 0.15,
              min_history: int = 14) -> Bands:
    """Weekday bands everywhere, replaced on the scored days by a robust STL fit on earlier history.

    STL is fitted once per series on data that ends before ``scored_from``: a model refitted over an
    ongoing incident absorbs it into its trend.  One Python loop per series, so keep this for small sets.
    """
    from statsmodels.tsa.seasonal import STL

    bands = weekday_bands(values, lookback=lookback, z=z, sensitivity=sensitivity, min_ratio=min_ratio)
    cut = int(np.searchsorted(days.values, np.datetime64(scored_from.tz_convert(None)), side="left"))
    if cut <= 0:
        return bands
    y_all = np.log1p(np.clip(values, 0.0, None))
    for i in range(values.shape[0]):
        hist = y_all[i, :cut]
        ok = ~np.isnan(hist)
        if ok.sum() < max(min_history, 14):
            continue
        first = int(np.argmax(ok))
        series = pd.Series(hist[first:]).interpolate(limit_direction="both").to_numpy()
        res = STL(series, period=7, robust=True).fit()
        # in-sample STL residuals understate one-step-ahead errors about twice, as for weekday bands
        sigma = 2.0 * 1.4826 * float(np.median(np.abs(res.resid - np.median(res.resid))))
        slope = (res.trend[-1] - res.trend[-8]) / 7.0 if len(res.trend) >= 8 else 0.0
        for t in range(cut, values.shape[1]):
            ahead = t - cut + 1
            season = res.seasonal[len(series) - 7 + ((ahead - 1) % 7)]
            ey = res.trend[-1] + 0.5 * slope * min(ahead, 7) + season
            half = max(z / max(sensitivity, 1e-6) * sigma, float(np.log1p(min_ratio)))
            bands.expected[i, t] = np.expm1(ey)
            bands.lower[i, t] = np.expm1(max(ey - half, 0.0))
            bands.upper[i, t] = np.expm1(ey + half)
            bands.sigma[i, t] = max(sigma, float(np.log1p(min_ratio)) / z)
    bands.method = "stl"
    return bands


def robust_z(values: np.ndarray, bands: Bands) -> np.ndarray:
    """Distance from expected in robust standard deviations (log space); positive means above."""
    y = np.log1p(np.clip(values, 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (y - np.log1p(np.clip(bands.expected, 0.0, None))) / bands.sigma
