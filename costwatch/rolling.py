"""Causal rolling statistics along the last axis of a series x samples matrix, equal to pandas' rolling ones.

Why: pandas rolls one column at a time (a Python call and a skip list per series, ~0.4 us a value for a quantile),
so scoring 100,000 nodes spent minutes there.  These roll every series of a block at once: window extremes with a
numpy sparse table of running min/max (the Lambda build has no scipy; NaN read as the neutral +-inf, the count of
known values kept apart), short windows (a few rows) by sorting networks of elementwise min/max, and window order
statistics only at the cells a caller asks for: for many cells by sorting the window's ranks (each series is sorted
once; a window of ranks is a small unsigned-integer sort, which numpy vectorizes), for a few by sorting each cell's
window of values (no argsort of whole series; :func:`window_quantiles` picks).

Invariants: each function equals ``pd.Series(a_row).shift(lag).rolling(window, min_periods).<stat>()`` on
every row of ``a`` (NaN and, as in pandas, infinities skipped; NaN where fewer than ``min_periods`` values
are known) with the same arithmetic (pandas' linear interpolation for quantiles, ``(a + b) / 2`` for an
even median), so the values are identical; the standard deviation is two-pass rather than pandas' Welford
updates, so it agrees to rounding, and is exactly 0 where every known value is the same (as pandas makes
it).  The window of sample ``i`` is samples ``i - lag - window + 1 .. i - lag``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["MEDIAN", "GatheredWindows", "SortedRanks", "lagged", "rolling_count", "rolling_extremes", "rolling_max",
           "rolling_min", "short_median", "short_quantiles", "short_std", "window_quantiles"]

MEDIAN = "median"  # order-statistic spec: pandas' ``.median()`` ((a + b) / 2), not ``.quantile(0.5)``
NETWORK_MAX = 8  # windows up to this long are sorted by a min/max network, longer ones by np.sort
CELLS_PER_SORT = 1 << 22  # window values gathered at once (uint16: 8 MB, float64: 32 MB)


def _prep(a: np.ndarray) -> np.ndarray:
    """Infinities read as missing, as pandas' rolling reads them."""
    inf = np.isinf(a)
    return np.where(inf, np.nan, a) if inf.any() else a


def lagged(a: np.ndarray, lag: int, fill: float | int = np.nan) -> np.ndarray:
    """``a`` moved ``lag`` samples later along the last axis (sample i holds sample i - lag), ``fill`` before:
    pandas' ``shift(lag)``."""
    if lag == 0:
        return a
    out = np.full(a.shape, fill, dtype=a.dtype)
    if lag < a.shape[-1]:
        out[..., lag:] = a[..., : a.shape[-1] - lag]
    return out


def rolling_count(a: np.ndarray, window: int, lag: int = 0) -> np.ndarray:
    """Known (finite) values in each window."""
    a = _prep(a)
    t = a.shape[-1]
    c = np.cumsum(~np.isnan(a), axis=-1, dtype=np.int32)
    w = max(0, min(window, t))
    n = np.empty_like(c)
    n[..., :w] = c[..., :w]
    n[..., w:] = c[..., w:] - c[..., : t - w]
    return lagged(n, lag, 0)


def rolling_extremes(a: np.ndarray, window: int, lag: int, min_periods: int,
                     count: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Window (min, max), NaN where fewer than ``min_periods`` (at least one) values are known."""
    lo, hi = _extremes(a, window, lag, min_periods, count, ((np.minimum, np.inf), (np.maximum, -np.inf)))
    return lo, hi


def rolling_max(a: np.ndarray, window: int, lag: int, min_periods: int) -> np.ndarray:
    """Window max alone (half the work of :func:`rolling_extremes`)."""
    return _extremes(a, window, lag, min_periods, None, ((np.maximum, -np.inf),))[0]


def rolling_min(a: np.ndarray, window: int, lag: int, min_periods: int) -> np.ndarray:
    """Window min alone (half the work of :func:`rolling_extremes`)."""
    return _extremes(a, window, lag, min_periods, None, ((np.minimum, np.inf),))[0]


def _extremes(a: np.ndarray, window: int, lag: int, min_periods: int, count: np.ndarray | None,
              kinds: tuple[tuple[np.ufunc, float], ...]) -> list[np.ndarray]:
    a = _prep(a)
    w = max(1, window)
    n = rolling_count(a, window) if count is None else count
    few = n < max(min_periods, 1)
    out = []
    for f, neutral in kinds:
        e = _running(np.where(np.isnan(a), neutral, a), w, f, neutral)
        e[few] = np.nan
        out.append(lagged(e, lag, np.nan))
    return out


def _running(a: np.ndarray, w: int, f: np.ufunc, neutral: float) -> np.ndarray:
    """``f`` (minimum or maximum) over the ``w`` samples ending at each sample, by doubling (a sparse table:
    log2(w) elementwise passes).  numpy only: the Lambda build ships no scipy."""
    t = a.shape[-1]
    run = np.full((*a.shape[:-1], t + w - 1), neutral, dtype=a.dtype)
    run[..., w - 1:] = a
    width = 1
    while 2 * width <= w:  # run[i] = f over the padded samples i .. i + width - 1
        run = f(run[..., :-width], run[..., width:])
        width *= 2
    return f(run[..., :t], run[..., w - width: w - width + t])


def _windows(a: np.ndarray, k: int) -> list[np.ndarray]:
    """The ``k`` samples ending at each sample, as ``k`` shifted views (NaN before the first)."""
    z = np.full((*a.shape[:-1], a.shape[-1] + k - 1), np.nan)
    z[..., k - 1:] = a
    t = a.shape[-1]
    return [z[..., j: j + t] for j in range(k)]


def _sorted_short(a: np.ndarray, k: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Each short window's values in ascending order (NaN last) and the count of known ones."""
    views = _windows(_prep(a), k)
    n = np.asarray(sum((~np.isnan(v)).astype(np.int32) for v in views))
    if k > NETWORK_MAX:
        s = np.sort(np.stack(views, axis=-1), axis=-1)
        return [s[..., j] for j in range(k)], n
    vals = [np.where(np.isnan(v), np.inf, v) for v in views]  # +inf sorts NaN last; counts say which are real
    for i in range(1, k):  # insertion network: O(k^2) elementwise min/max, fine for a few samples
        for j in range(i, 0, -1):
            lo, hi = np.minimum(vals[j - 1], vals[j]), np.maximum(vals[j - 1], vals[j])
            vals[j - 1], vals[j] = lo, hi
    return vals, n


def short_median(a: np.ndarray, k: int, min_periods: int) -> np.ndarray:
    """``rolling(k, min_periods).median()`` for a short window."""
    return short_quantiles(a, k, min_periods, [MEDIAN])[0]


def short_quantiles(a: np.ndarray, k: int, min_periods: int, specs: Sequence[float | str]) -> list[np.ndarray]:
    """``rolling(k, min_periods).quantile(q)`` (linear) or ``.median()`` for each spec, for a short window.

    The windows are sorted once for all specs (an inter-quartile range needs two)."""
    s, n = _sorted_short(a, k)
    out = [np.full(a.shape, np.nan) for _ in specs]
    for m in range(max(min_periods, 1), k + 1):  # the order statistics of the m known values, where m are known
        here = n == m
        for o, spec in zip(out, specs, strict=True):
            pos = _quantile_of(spec) * (m - 1.0)
            idx = int(pos)
            val = _interpolate(s[idx], s[min(idx + 1, k - 1)], pos - idx, spec)
            np.copyto(o, val, where=here)
    return out


def _quantile_of(spec: float | str) -> float:
    return 0.5 if spec == MEDIAN else float(spec)


def _interpolate(lo: np.ndarray, hi: np.ndarray, frac: np.ndarray | float, spec: float | str) -> np.ndarray:
    """pandas' value between the order statistics ``lo`` and the next one ``hi``: ``(lo + hi) / 2`` for an even
    median, ``lo + (hi - lo) * frac`` for a linear quantile, ``lo`` itself where the position is whole."""
    with np.errstate(invalid="ignore"):
        both = (lo + hi) / 2.0 if spec == MEDIAN else lo + (hi - lo) * frac
    if np.ndim(frac) == 0:  # one position for the whole array (a short window's m known values)
        return both if frac != 0.0 else lo
    return np.where(frac != 0.0, both, lo)


def short_std(a: np.ndarray, k: int, min_periods: int) -> np.ndarray:
    """``rolling(k, min_periods).std()`` for a short window, two-pass; 0 where every known value is equal."""
    views = _windows(_prep(a), k)
    n = sum((~np.isnan(v)).astype(np.int32) for v in views)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sum(np.nan_to_num(v) for v in views) / n
        var = sum(np.nan_to_num((v - mean) ** 2) for v in views) / (n - 1)
    hi = lo = views[0]
    for v in views[1:]:
        hi, lo = np.fmax(hi, v), np.fmin(lo, v)
    sd = np.sqrt(np.where(hi == lo, 0.0, var))
    return np.where(np.asarray(n) >= max(min_periods, 2), sd, np.nan)


class _WindowStats:
    """Window order statistics at chosen (series, sample) cells, from each cell's window sorted."""

    window: int
    lag: int
    minp: int
    count: np.ndarray  # known values in each cell's window

    def at(self, rows: np.ndarray, cols: np.ndarray, specs: Sequence[float | str]) -> list[np.ndarray]:
        """Quantile (linear) or ``MEDIAN`` of the window of each (series, sample) cell; NaN when too few."""
        out = [np.full(rows.size, np.nan) for _ in specs]
        step = max(1, CELLS_PER_SORT // max(self.window, 1))
        for c0 in range(0, rows.size, step):
            r, c = rows[c0: c0 + step], cols[c0: c0 + step]
            # the window of sample i ends at i - lag: padded columns i - lag + 1 .. i - lag + window
            start = c - self.lag + 1
            ok = start >= 0
            n = np.where(ok, self.count[r, c], 0)
            value = self._sorted_windows(r, np.maximum(start, 0))
            for k, spec in enumerate(specs):
                pos = _quantile_of(spec) * (n - 1.0)
                idx = np.maximum(pos.astype(np.int64), 0)
                val = _interpolate(value(idx), value(np.minimum(idx + 1, self.window - 1)), pos - idx, spec)
                out[k][c0: c0 + step] = np.where(ok & (n >= self.minp), val, np.nan)
        return out

    def _sorted_windows(self, r: np.ndarray, start: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """The windows of the cells (series ``r``, padded columns from ``start``) sorted, as a function from
        an order (0 = smallest, one per cell) to the value."""
        raise NotImplementedError


class SortedRanks(_WindowStats):
    """Many cells: each series sorted once (an argsort), a window's ranks (small integers) sorted per cell."""

    def __init__(self, a: np.ndarray, window: int, lag: int, min_periods: int) -> None:
        a = _prep(a)
        s, t = a.shape
        self.window, self.lag, self.minp = window, lag, max(min_periods, 1)
        order = np.argsort(a, axis=-1)  # NaN last; ties in any order (equal values)
        self.sorted = np.take_along_axis(a, order, axis=-1)
        big = t + window < np.iinfo(np.uint16).max
        self.dtype = np.uint16 if big else np.int64
        rank = np.empty((s, t), dtype=self.dtype)
        np.put_along_axis(rank, order, np.arange(t, dtype=self.dtype)[None, :], axis=-1)
        none = np.iinfo(self.dtype).max  # before the first sample, and NaN: sorts last
        rank[np.isnan(a)] = none
        padded = np.full((s, t + window), none, dtype=self.dtype)
        padded[:, window:] = rank
        self.win = np.lib.stride_tricks.sliding_window_view(padded, window, axis=-1)
        self.count = rolling_count(a, window, lag)

    def _sorted_windows(self, r: np.ndarray, start: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        ranks = np.sort(self.win[r, start], axis=-1)

        def value(idx: np.ndarray) -> np.ndarray:
            rk = np.take_along_axis(ranks, idx[:, None], axis=-1)[:, 0].astype(np.int64)
            return self.sorted[r, np.minimum(rk, self.sorted.shape[1] - 1)]
        return value


class GatheredWindows(_WindowStats):
    """Few cells: each cell's window of values gathered and sorted (numpy's vectorized float sort), no sort
    of whole series.  Cheaper than :class:`SortedRanks` while the cells' windows hold no more values than a
    few times the matrix (measured on 4096 x 672, window 336: 6x at 0.4% of the cells, 1.2x slower at 3%)."""

    def __init__(self, a: np.ndarray, window: int, lag: int, min_periods: int) -> None:
        a = _prep(a)
        s, t = a.shape
        self.window, self.lag, self.minp = window, lag, max(min_periods, 1)
        padded = np.full((s, t + window), np.nan)  # NaN sorts last
        padded[:, window:] = a
        self.win = np.lib.stride_tricks.sliding_window_view(padded, window, axis=-1)
        self.count = rolling_count(a, window, lag)

    def _sorted_windows(self, r: np.ndarray, start: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        vals = np.sort(self.win[r, start], axis=-1)
        return lambda idx: np.take_along_axis(vals, idx[:, None], axis=-1)[:, 0]


GATHER_MAX = 4  # window values gathered per matrix value, below which GatheredWindows beats SortedRanks


def window_quantiles(a: np.ndarray, window: int, lag: int, min_periods: int, rows: np.ndarray, cols: np.ndarray,
                     specs: Sequence[float | str]) -> list[np.ndarray]:
    """``rolling(window, min_periods).quantile(q)`` / ``.median()`` of ``a`` shifted by ``lag``, at the cells
    (``rows``, ``cols``) only, by whichever of :class:`GatheredWindows` and :class:`SortedRanks` is cheaper."""
    few = rows.size * window <= GATHER_MAX * a.size
    return (GatheredWindows if few else SortedRanks)(a, window, lag, min_periods).at(rows, cols, specs)
