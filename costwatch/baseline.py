"""Normal bands for daily cost, computed for many series at once.

The default model is a robust weekday-seasonal level in log space, evaluated with numpy over a
(series x day x lookback) window tensor: each day's band uses only the ``lookback`` days before it, so a
band is causal by construction and an ongoing incident cannot drag its own band up.  Measured on this
project's hardware that is ~500x faster than a per-series STL loop, with bands that agree on clean data
(tests/test_baseline.py).  ``method="stl"`` fits statsmodels' robust STL per series on history that ends
before the scored period, for users who prefer a classical decomposition and have few series.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .model import USAGE_CHARGES

MAX_TREND = float(np.log(1.10))


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


def usage_rows(costs: pd.DataFrame) -> pd.Series:
    """Which rows are consumption.  Credits, refunds, tax and purchases never count as a spike."""
    cat = costs["charge_category"].astype("string").str.strip().str.lower()
    return (cat.isin(list(USAGE_CHARGES)) | cat.isna()) & (costs["effective_cost"] >= 0)


def daily_matrix(costs: pd.DataFrame, keys: list[str], value: str = "effective_cost") -> DailyMatrix:
    """Roll hourly and daily rows up to UTC days and pivot to series x days.

    A day on which a project has no rows at all is missing (NaN) for all its series: exports skip days,
    and a gap is not a zero.  A day on which the project has rows but this series has none is a real zero.
    Days before a series first appears are NaN, so new services count as short history.
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


def _windows(y: np.ndarray, lookback: int) -> np.ndarray:
    """S x D x L view where [:, t, :] holds days t-L .. t-1 (NaN-padded on the left)."""
    pad = np.full((y.shape[0], lookback), np.nan)
    padded = np.concatenate([pad, y], axis=1)
    return np.lib.stride_tricks.sliding_window_view(padded, lookback, axis=1)[:, : y.shape[1], :]


CHUNK_SERIES = 4096


def weekday_bands(values: np.ndarray, *, lookback: int = 28, z: float = 4.0, sensitivity: float = 1.0,
                  min_ratio: float = 0.15) -> Bands:
    """Causal bands for every series and day, in blocks of series so memory stays bounded.

    The window tensors are (series x days x lookback); blocks of a few thousand series keep them in the
    tens of megabytes and in cache, which is also faster than one huge tensor."""
    if values.shape[0] <= CHUNK_SERIES:
        return _weekday_block(values, lookback=lookback, z=z, sensitivity=sensitivity, min_ratio=min_ratio)
    parts = [_weekday_block(values[i: i + CHUNK_SERIES], lookback=lookback, z=z, sensitivity=sensitivity,
                            min_ratio=min_ratio) for i in range(0, values.shape[0], CHUNK_SERIES)]
    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(b, name) for b in parts])

    return Bands(cat("expected"), cat("lower"), cat("upper"), cat("sigma"), cat("history"), "weekday")


def _weekday_block(values: np.ndarray, *, lookback: int, z: float, sensitivity: float,
                   min_ratio: float) -> Bands:
    """Causal robust bands: level x weekday factor, spread from the median absolute residual.

    Log space makes the weekly shape multiplicative (a weekend at 60% of a weekday stays 60% as spend
    grows) and keeps one big day from dominating the spread.  The band is never narrower than
    ``min_ratio`` of the expected value, because a very regular series would otherwise alert on noise.
    """
    lookback = max(7, int(np.ceil(lookback / 7)) * 7)
    s, d = values.shape
    y = np.log1p(np.clip(values, 0.0, None))
    w = _windows(y, lookback)  # S x D x L
    weeks = lookback // 7
    # position j in the window is (L - j) days before t; same weekday as t when (L - j) % 7 == 0
    by_wd = w.reshape(s, d, weeks, 7)  # [..., k] are days with offset (7 - k) % 7 ... same for all t
    # weekday offsets relative to each week's own median, so a level shift between weeks (a new
    # workload, an incident) is not mistaken for a weekly pattern
    week_med = nanmedian(by_wd)  # S x D x weeks
    wd_dev = nanmedian((by_wd - week_med[..., None]).transpose(0, 1, 3, 2))  # S x D x 7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        season = wd_dev - np.nanmean(wd_dev, axis=2, keepdims=True)
    season = np.nan_to_num(season, nan=0.0)
    flat = (by_wd - season[:, :, None, :]).reshape(s, d, lookback)
    level = nanmedian(flat[:, :, -7:])
    prior = nanmedian(flat[:, :, -14:-7])
    trend = np.where(np.isnan(prior), 0.0, (level - prior) / 7.0)
    # damped: half of the recent slope, over the 4 days from the middle of last week to today, and never
    # more than +-10%: after a step the slope is huge for a week, and extrapolating it overshoots
    expected_y = level + np.clip(0.5 * 4.0 * trend, -MAX_TREND, MAX_TREND) + season[:, :, 0]
    # spread from honest one-day-ahead errors of earlier days (in-sample residuals understate it ~2x);
    # until a week of such errors exists, in-sample deseasonalized spread, inflated by that factor
    err = y - expected_y
    err_w = _windows(err, lookback)
    sigma_oos = 1.4826 * nanmedian(np.abs(err_w))
    n_err = (~np.isnan(err_w)).sum(axis=2)
    ref = nanmedian(flat[:, :, -14:])
    sigma_in = 2.0 * 1.4826 * nanmedian(np.abs(flat[:, :, -14:] - ref[:, :, None]))
    sigma = np.where(n_err >= 7, sigma_oos, sigma_in)
    history = np.cumsum(~np.isnan(values), axis=1) - (~np.isnan(values)).astype(int)
    half = np.maximum(z / max(sensitivity, 1e-6) * np.nan_to_num(sigma, nan=0.0), np.log1p(min_ratio))
    expected = np.expm1(expected_y)
    lower = np.expm1(np.maximum(expected_y - half, 0.0))
    upper = np.expm1(expected_y + half)
    return Bands(expected, lower, upper, np.maximum(sigma, np.log1p(min_ratio) / z), history, "weekday")


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
