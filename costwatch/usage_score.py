"""Usage-band anomaly score: has a usage series (node CPU, network, request count) left its own band?

A hijacked node rarely produces a textbook outlier.  It moves to a level it has not been at before (a miner
pinning CPU, or a throttled one sitting at a cap), or its behaviour changes shape (a flat line where there
was noise, bursts where there was a flat line).  What it does not do is repeat last week.  So the score is a
*novelty* score against the series' own causal history rather than a distance from a mean.  Every test
compares a statistic with the range [min, max] that the same statistic took over the history (``history``
rows, ending where the statistic's own window starts, so the two never overlap), and the score is the
largest excess over all tests:

* level novelty: the current value, and a short rolling median that carries level shifts.  Excess beyond
  the range is measured in robust band widths (inter-quartile range of the history, floored by a share of
  the historical range and of the level).  Recurring bursts, daily peaks and noisy-but-stationary series stay
  inside their range and score nothing; a value that has never been seen, in either direction, scores at once.
* shape novelty: a rolling standard deviation (a regime that starts to oscillate, or a flat line where there
  was noise) and a rolling median of the absolute step ``|x[i] - x[i-1]|`` (a new rhythm: a flat series
  that starts to pulse at an amplitude below its old one-off blips, which neither the level nor the spread
  range notices because a single blip already set both).  A shape statistic needs ten of its own windows of
  history before it can score.
* stillness: a value that stays exactly unchanged for longer than any still run in the history, and for at
  least ``still_min`` rows (a day at 5-minute spacing): a dead agent, a stuck exporter, disk or network that
  stopped for good, a CPU pinned at a cap.  A series that has never moved is not "stuck" and scores nothing.
* episodes: a departure lasts many rows, but a reader (and the NAB scorer) wants one alert per episode, so
  :func:`episode_onsets` keeps the first row above 0.5; a new onset needs ``quiet`` rows below 0.5 since
  the last high row (the episode is over) and ``refractory`` rows since the previous onset.

Everything is causal: the score at row ``i`` uses rows ``<= i`` only.  All statistics are pandas rolling
or numpy cumulative operations over whole columns, so :func:`score_matrix` scores many equally spaced series
(nodes x samples) at once, and :func:`score_series` is that same computation for one series.

The default parameters were chosen once, for the whole NAB ``realAWSCloudwatch`` corpus together (17 series,
one threshold: the "corpus-tuned threshold" convention of the published NAB detectors), by grid searches
run with ``bench/nab_grid.py``; nothing is tuned per file.  At 5-minute spacing ``history=4032`` is two weeks.
Measured there with ``bench/nab_scoring.py`` (``bench/nab.py``): standard 76.20, reward_low_FP 74.74,
reward_low_FN 78.58, 25 of 30 windows found, 8 false positives (HTM: 73.42 standard; the level and spread
tests alone with ``refractory=450`` measured 70.59 / 69.86 / 72.62, 23 windows, 4 false positives).  A lone
value must clear its range by a full band width while the short median needs only 0.2: stationary noise keeps
setting small new records one sample at a time, a real shift moves the median.

Treat the NAB figures as in-sample.  The gain over 70.59 rests on two windows: the stillness test finds one
(disk writes that stop for good) and the step-size test another (a flat series that starts to pulse) once the
refractory period is short enough not to swallow it behind an earlier false positive; the shorter refractory
costs 4 extra false positives elsewhere.  Each choice sits on a broad plateau (``still_min`` 144-288:
76.1-76.2; ``rough_window`` 18-48 with ``rough_threshold`` 0.5-2: 75.5-76.2; ``refractory`` 100-200 with
``quiet`` 24-150: 76.1-76.2), but a two-fold split does not confirm it, because both windows sit in the
odd-indexed files.  Chosen on the 9 even files, the grid keeps ``refractory=450`` and no stillness test and
scores 70.51 on the 8 odd files (old parameters: 70.51); chosen on the odd files it scores 69.48 on the even
files (old parameters: 70.69, these defaults: 69.86).

``method="calibrated"`` (issue 16) replaces the per-test thresholds above with p-values calibrated on each
series' own history, and one global false-alarm level ``alpha``.  The same views (value, short median, the value
minus the median of the rows before it, spread as a rolling inter-quartile range, typical step size, stillness)
are each compared with the distribution that view took over the history (ending where its own window starts),
both tails where it makes sense.  Tail probability: log-linear from the median (1/2) to the ``1 - tail``
quantile (``tail``), then, for the one-row views, a generalized Pareto tail through that quantile, the ``1 -
tail/10`` quantile and the largest value seen (at ``1/(n+1)``), shape in [0, 0.5], so bursty bytes and request
counts widen their own band; for the rolling views an exponential tail with the scale that also puts the largest
value at ``1/(n+1)``.  A view scores nothing until its history holds ``10 / tail`` rows (200), enough to reach
beyond its reference quantile.  A still run of length ``r`` has ``p = n**(-r / max(longest, still_floor))``.  The
views are combined by Bonferroni (smallest p-value times the number of views) and the score is ``S / (S +
S_alpha)``, ``S = -ln p``: 0.5 exactly where ``p = alpha``.  On iid noise of any scale (normal, Laplace,
uniform, lognormal, Student t3, Pareto 1.5, Poisson counts) the rate of rows >= 0.5 stays below ``alpha``, or
about at it for the heaviest tail (tests/test_usage_score.py).  On NAB realAWSCloudwatch, ``alpha = 0.002``
chosen by ``bench/nab_grid.py --split --set method=calibrated --grid alpha=...`` (the only parameter searched;
the windows are the defaults above, ``tail`` fixed at 0.05; both halves and the whole corpus pick 0.002): 75.20
in-sample (25 of 30 windows, 7 false positives), 84.31 on the odd files when chosen on the even ones, 63.27 on
the even files when chosen on the odd ones (the range method: 76.20 in-sample, 70.51 and 69.48 held out).  On
splits that are not odd/even the calibrated score holds up where the range score does not: pooled held-out
74.93 over a 3-fold split by file and 74.66 leaving one file out (``--folds 3`` / ``--folds 17``; the range
score's own grid: 69.87 and 69.87).  The even half is capped by its windows, not by ``alpha``: a detector that
fires once on each label it can reach and never elsewhere scores 64.80 there without the windows this score
misses and 71.96 with the ELB burst also found (``--oracle``), so 73.4 needs a single 0.6 reading among daily
1.5 spikes (14 of its 3777 earlier values are higher) or an iio window (they start an hour after their own
labels).  Tried and dropped (each measured over both halves): explaining values seen a day earlier, a second
calibration of the combined surprise against its own history, an in-range density view (it finds the 0.6
reading only at 117 false positives), empirical p-values for values inside the historical range, re-basing
the reference after a lasting level shift (a young reference is too short for a tail), other refractory and
quiet periods.  ``alpha`` sits on a ridge: 0.0015 gives 71.74 and 0.003 gives 71.13.  It is the default
(``UsageScoreParams.method``, and ``detect``'s ``detection.cpu.usage_score``) since it got the same fast path as
the range method (below); ``method="range"`` stays selectable.

Time of day (``season``, issue 16): one more pair of calibrated views, the excess of the value over the envelope
(max and min) that the ``season_days = 7`` earlier days drew within ``season_jitter = 1`` row of the same time
of day, against that excess's own history.  A reading the series reaches every day at 10:00 is no news at
10:00 but is at 03:00; the value views cannot say so, as the daily peak already set their range.  ``season =
-1`` (default) takes rows per day from :func:`score_series`' timestamps (288 at 5 minutes, 24 hourly; no view
when a day is not a whole number of steps, or without timestamps); the view waits for ``season_days`` days of
data.  Chosen on ``bench/nab_kinds.py`` seeds 1-5 and the whole NAB corpus together (7 days against 1, 3 and
5; jitter 1 against 2, 3 and 6); then measured once: NAB in-sample 75.04 -> 77.04 (26 of 30 windows: the 24ae8d
0.6 blip among daily 1.5 spikes; 16 false positives), odd / even halves 84.10 / 67.81 (``alpha`` still chosen
0.002 by both), 3-fold and leave-one-out 77.04; generated kinds, held-out seeds 106-110 (300 series, never
run before): 63.67 without the view, 65.62 with it.  The even half stays under HTM's 73.42: its ceiling without
the ELB burst and the iio windows, which no view here reaches, is ~72 (``--oracle``).  On hourly CPU
(``detect``: ``season=24``) the two views add ~6% to the fast path's CPU (their block statistic accumulates
the seven days in place; a one-sided view rolls one extreme).

On series kinds the AWS files lack (``bench/nab_kinds.py``: traffic, temperatures, Poisson counts, flat
metrics and random walks with NAB's anomaly kinds and NAB-style windows) the calibrated score holds up and
the range score does not: on held-out seeds 101-105 (300 series) 65.17 against 40.92, a rolling z-score
baseline 39.86.  One internal was chosen there (seeds 1-5, NAB folds as the check): the still-run floor
``still_floor = 24`` rows.  The range score's ``still_min`` (288, a day at 5 minutes), which this method
read before, let a stuck value score only after ~300 rows, past most labelled windows.  At 24 the tuning
seeds gain ~6 points and NAB loses two false positives' worth (in-sample 75.04, halves 84.04 / 63.27, 3-fold
74.73, leave-one-out 74.50 with ``alpha`` from 0.0015-0.003; the NAB figures above are with 288).  The tail
quantile stays 0.05 (0.1: lower on the tuning seeds, 0.02: 69.3 on NAB 3-fold).

Speed: :func:`score_matrix` rolls with pandas, one column at a time (~2.8 ms of CPU per node of 28 hourly
days, so ~280 s for 100,000 nodes).  ``detect`` reads only the departures, so it calls
:func:`flagged_scores`: every statistic and its historical range for every sample with
:mod:`costwatch.rolling` (window extremes by a numpy sparse table, short windows by sorting networks), and the band
(three window quantiles, the costly part) only at the samples where some statistic left its range (~3% of
node-hours on hourly CPU), the only places a range test can reach 0.5.  Same samples at or above 0.5, same
scores (to ~1e-12: the rolling standard deviation is two-pass there, Welford in pandas); the tests pin both
against output written by the pandas implementation.  100,000 nodes x 28 days: ~44 s of CPU on a box loaded
11-15 (two threads share it), against ~280 s.  The calibrated method has the same shortcut: a view can reach
its share of ``alpha`` only where its statistic lies outside the [min, max] of its reference (the tail fits give
the historical max ``p >= min(1/(n+1), tail/15)``; the argument and the parameters it needs are in
:func:`_range_bounds_score`), so the views' reference quantiles are computed only there (~0.4% of node-hours per
view on hourly CPU once the reference holds 200 values), each cell's window gathered and sorted
(:func:`costwatch.rolling.window_quantiles`).  The views sit in one registry (:func:`_calibrated_views`), each
with its pandas statistic and its block statistic side by side, so both paths score the same views.  Same
scores as :func:`score_matrix` (tests/test_usage_score.py; exactly so on its inputs).  ``bench/scale.py
--series 0 --nodes 100000 --long-nodes 0 --usage-method range --usage-method calibrated`` (twice each, one
process, load 1.5-5): range 29.3 / 28.9 s of CPU, calibrated 32.6 / 34.1 s (~1.15x); on 2,000 of those
nodes ``score_matrix`` took 15.1-15.7 s of CPU and ``flagged_scores`` 0.9 s.  With the time-of-day views
(``bench/scale.py --series 0 --nodes 100000``, quiet box): 20.4 s wall, 39.2 s of CPU on two threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .rolling import (
    MEDIAN,
    GatheredWindows,
    lagged,
    rolling_count,
    rolling_extremes,
    rolling_max,
    rolling_min,
    short_median,
    short_quantiles,
    short_std,
    window_quantiles,
)

__all__ = [
    "UsageScoreParams",
    "episode_onsets",
    "flagged_scores",
    "onset_scores",
    "score_matrix",
    "score_series",
]


SHAPE_WINDOWS = 10  # a shape statistic (spread, step size) needs this many of its windows of history
TAIL_STEP = 10.0  # the second reference quantile sits this much further out in the tail
XI_MAX = 0.5  # heaviest tail shape the fit may take (a single largest value makes the fit noisy)


@dataclass(frozen=True)
class UsageScoreParams:
    history: int = 4032  # rows of memory that define the band (two weeks of 5-minute samples)
    min_history: int = 12  # rows needed before a band exists; earlier rows score 0
    level_window: int = 24  # short rolling median that turns a level shift into one clean step
    spread_window: int = 48  # rolling standard deviation window for the oscillation test
    band_quantile: float = 0.25  # band width = q(1-b) - q(b) of the history
    range_floor: float = 0.05  # band width is at least this share of the historical range
    level_floor: float = 1e-3  # ... and at least this share of the historical median level
    spike_threshold: float = 1.0  # band widths a single value must clear beyond its historical range
    level_threshold: float = 0.2  # band widths the short median must clear beyond its historical range
    flatline: bool = True  # also flag a spread below its historical minimum (a pinned, flat miner)
    spread_threshold: float = 1.0  # historical spread ranges beyond the max spread that make a detection
    rough_window: int = 24  # rolling median of |step| for the step-size test (0 = no step-size test)
    rough_threshold: float = 1.0  # historical step-size ranges beyond the max step size that make a detection
    still_min: int = 288  # rows a value must sit unchanged, beyond its longest still run, to score (0 = off)
    softness: float = 0.1  # excess (in band widths) that moves the score from 0.5 to 0.73
    refractory: int = 150  # rows after an onset during which no new onset is reported
    quiet: int = 24  # ... and rows the score must have stayed below the threshold before a new onset
    # method="calibrated": per-view tail p-values against the series' own history (see module doc);
    # it reads history, min_history, the windows, refractory and quiet, and these
    method: str = "calibrated"  # "calibrated" or "range" (the NAB-tuned novelty score above)
    alpha: float = 2e-3  # calibrated: combined p-value that scores 0.5 (false-alarm rate per row and series)
    tail: float = 0.05  # calibrated: reference quantile (1 - tail) where the exponential tail starts
    robust_spread: bool = True  # calibrated: spread view = rolling inter-quartile range (one spike is not a spread)
    gpd: bool = True  # calibrated: generalized Pareto tails (shape from the history) for the one-row views
    jump: bool = True  # calibrated: also a view of x minus the median of the previous level_window rows
    still_floor: int = 24  # calibrated: a still run is measured in max(longest still run seen, this) rows (0 = off)
    season: int = -1  # calibrated: rows per day (0 = no time-of-day view; -1 = from score_series' timestamps)
    season_days: int = 7  # calibrated: earlier days whose values near the same time of day make the envelope
    season_jitter: int = 1  # calibrated: rows either side of the same time of day that count as "near"

    def __post_init__(self) -> None:
        if self.method not in ("range", "calibrated"):
            raise ValueError(f"unknown usage score method {self.method!r} (range, calibrated)")


def _past_range(stat: pd.DataFrame, lag: int, p: UsageScoreParams,
                min_windows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """[min, max] that a rolling statistic took over the history, ending ``lag`` rows back (no overlap).

    A statistic over ``lag``-row windows has few independent values in a short history, so it also needs
    ``min_windows`` windows' worth of them before its range means anything.
    """
    past = stat.shift(lag).rolling(p.history, min_periods=_need(p, lag, min_windows))
    return past.min().to_numpy(), past.max().to_numpy()


def _need(p: UsageScoreParams, lag: int, min_windows: int = 1) -> int:
    """Values a statistic over ``lag``-row windows needs in its history (``min_periods`` of its reference)."""
    return min(p.history, max(p.min_history, min_windows * lag))


def _components(x: np.ndarray, p: UsageScoreParams) -> dict[str, np.ndarray]:
    """Each test's distance beyond its band, minus its threshold (positive = detection), samples x series."""
    frame = pd.DataFrame(x)
    hist = frame.shift(1).rolling(p.history, min_periods=p.min_history)
    lo_q = hist.quantile(p.band_quantile).to_numpy()
    hi_q = hist.quantile(1.0 - p.band_quantile).to_numpy()
    floor = p.level_floor * np.abs(hist.median().to_numpy()) + 1e-9
    band = np.maximum(hi_q - lo_q, floor)

    # level novelty: the value itself, and a short median that carries level shifts
    tests: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name, k in (("spike", 1), ("level", p.level_window)):
        short = frame if k == 1 else frame.rolling(k, min_periods=1).median()
        tests[name] = (short.to_numpy(), *_past_range(short, k, p))
    # shape novelty: spread (oscillation, or a flat line) and typical step size (a new rhythm)
    w = p.spread_window
    spread = frame.rolling(w, min_periods=min(w, max(3, w // 2))).std()
    tests["spread"] = (spread.to_numpy(), *_past_range(spread, w, p, SHAPE_WINDOWS))
    if p.rough_window > 0:
        w = p.rough_window
        rough = frame.diff().abs().rolling(w, min_periods=min(w, max(3, w // 2))).median()
        tests["rough"] = (rough.to_numpy(), *_past_range(rough, w, p, SHAPE_WINDOWS))
    still = _still_excess(x.T, p).T if p.still_min > 0 else None
    return _range_components(tests, still, band, floor, p)


def _range_components(tests: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], still: np.ndarray | None,
                      band: np.ndarray, floor: np.ndarray, p: UsageScoreParams) -> dict[str, np.ndarray]:
    """The range tests' excesses from each statistic, its historical [lo, hi] and the band (any shape)."""
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, threshold in (("spike", p.spike_threshold), ("level", p.level_threshold)):
            v, lo, hi = tests[name]
            width = np.maximum(band, p.range_floor * (hi - lo))
            out[name] = np.maximum(v - hi, lo - v) / width - threshold
        sd, lo, hi = tests["spread"]
        width = np.maximum(hi - lo, floor)
        e = (sd - hi) / width
        if p.flatline:
            e = np.fmax(e, (lo - sd) / width)
        out["spread"] = e - p.spread_threshold
        if "rough" in tests:
            rough, lo, hi = tests["rough"]
            out["rough"] = (rough - hi) / np.maximum(hi - lo, floor) - p.rough_threshold
    if still is not None:
        out["still"] = np.where(np.isfinite(band), still, np.nan)
    return out


def _still_excess(x: np.ndarray, p: UsageScoreParams) -> np.ndarray:
    """Stillness: an unchanged value for longer than any still run in the history (a dead or pinned node),
    series x samples; NaN for a series that has never moved (it is not "stuck", it is what it always was)."""
    run, longest, seen_before = _still_runs(x, p)
    with np.errstate(invalid="ignore"):
        e = run / np.maximum(longest, p.still_min) - 1.0
    return np.where(seen_before > p.min_history, e, np.nan)


def _reference(stat: pd.DataFrame, lag: int, p: UsageScoreParams, min_windows: int = 1) -> dict[str, np.ndarray]:
    """Quantiles, extremes and count of a statistic over the history ending ``lag`` rows back (no overlap)."""
    past = stat.shift(lag).rolling(p.history, min_periods=_need(p, lag, min_windows))
    ref = {name: (past.median() if q == MEDIAN else past.quantile(q)).to_numpy()
           for name, q in _reference_quantiles(lag, p).items()}
    ref |= {"max": past.max().to_numpy(), "min": past.min().to_numpy(), "n": past.count().to_numpy()}
    return ref


def _reference_quantiles(lag: int, p: UsageScoreParams) -> dict[str, float | str]:
    """The quantiles a reference holds (``MEDIAN``: pandas' median), for :func:`_reference` and the fast path."""
    specs: dict[str, float | str] = {"med": MEDIAN, "hi": 1.0 - p.tail, "lo": p.tail}
    if lag == 1 and p.gpd:
        specs |= {"hi2": 1.0 - p.tail / TAIL_STEP, "lo2": p.tail / TAIL_STEP}
    return specs


def _tail_logp(s: np.ndarray, med: np.ndarray, q: np.ndarray, ext: np.ndarray, n: np.ndarray, tail: float,
               floor: np.ndarray) -> np.ndarray:
    """Natural log of the upper tail probability of ``s`` under the reference (pass negated values for lower).

    Between the median (p = 1/2) and the ``1 - tail`` quantile the log-probability is interpolated
    linearly (the empirical distribution, coarsely); beyond it the tail is exponential, with the scale that
    also puts the largest value seen at probability ``1/n``, so a history's own heavy tail widens it.
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        body = np.maximum(q - med, 0.0)
        beta = np.fmax(body / np.log(0.5 / tail), (ext - q) / np.maximum(np.log(n * tail), 1.0))
        beta = np.fmax(beta, floor)
        inner = np.log(0.5) + (s - med) / np.maximum(body, 1e-300) * np.log(2.0 * tail)
        outer = np.log(tail) - (s - q) / beta
        lp = np.where(s <= med, 0.0, np.where(s <= q, np.fmax(inner, np.log(tail)), outer))
    return np.minimum(lp, 0.0)


def _gpd_shape(ratio: np.ndarray, r2: float, r3: np.ndarray) -> np.ndarray:
    """Shape xi in [0, XI_MAX] of the generalized Pareto tail through three points (bisection, vectorized).

    ``ratio = (x3 - x1) / (x2 - x1)`` for points at tail probabilities ``t``, ``t / r2`` and ``t / r3``; the
    GPD gives ``(r3**xi - 1) / (r2**xi - 1)``, increasing in ``xi``, ``ln r3 / ln r2`` at ``xi = 0``.
    """
    lo = np.zeros_like(ratio)
    hi = np.full_like(ratio, XI_MAX)
    for _ in range(20):
        mid = 0.5 * (lo + hi)
        f = np.expm1(mid * np.log(r3)) / np.expm1(mid * np.log(r2))
        up = f < ratio
        lo = np.where(up, mid, lo)
        hi = np.where(up, hi, mid)
    return 0.5 * (lo + hi)


def _gpd_tail_logp(s: np.ndarray, med: np.ndarray, q: np.ndarray, q2: np.ndarray, ext: np.ndarray, n: np.ndarray,
                   tail: float, floor: np.ndarray) -> np.ndarray:
    """Natural log of the upper tail probability of ``s`` under the reference (pass negated values for lower).

    Between the median (p = 1/2) and the ``1 - tail`` quantile the log-probability is interpolated
    linearly (the empirical distribution, coarsely); beyond it the tail is a generalized Pareto through that
    quantile, the ``1 - tail / TAIL_STEP`` quantile and the largest value seen (at probability ``1/(n+1)``),
    so a history with a heavy tail (bursty bytes, request counts) widens its own band.
    """
    lp = np.zeros(s.shape)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        body = np.maximum(q - med, floor)
        mid = (s > med) & (s <= q)
        lp[mid] = np.log(0.5) + ((s - med) / body * np.log(2.0 * tail))[mid]
        out = s > q
        if not out.any():
            return lp
        s_, q_, d2 = s[out], q[out], np.maximum(q2[out] - q[out], floor[out])
        d3 = np.maximum(ext[out] - q_, d2)
        r3 = np.maximum((n[out] + 1.0) * tail, TAIL_STEP * 1.5)
        xi = _gpd_shape(d3 / d2, TAIL_STEP, r3)
        small = xi < 1e-6
        xs = np.where(small, 1.0, xi)
        # the scale through the second quantile, or through the largest value if the shape had to be capped
        sigma = np.fmax(np.where(small, d2 / np.log(TAIL_STEP), xs * d2 / np.expm1(xs * np.log(TAIL_STEP))),
                        np.where(small, d3 / np.log(r3), xs * d3 / np.expm1(xs * np.log(r3))))
        z = (s_ - q_) / sigma
        lp[out] = np.log(tail) - np.where(small, z, np.log1p(xs * z) / xs)
    return np.minimum(lp, 0.0)


def _two_sided(s: np.ndarray, ref: dict[str, np.ndarray], tail: float, floor: np.ndarray,
               upper: bool = True, lower: bool = True) -> list[np.ndarray]:
    out = []
    gpd = "hi2" in ref
    if upper:
        out.append(_gpd_tail_logp(s, ref["med"], ref["hi"], ref["hi2"], ref["max"], ref["n"], tail, floor) if gpd
                   else _tail_logp(s, ref["med"], ref["hi"], ref["max"], ref["n"], tail, floor))
    if lower:
        out.append(_gpd_tail_logp(-s, -ref["med"], -ref["lo"], -ref["lo2"], -ref["min"], ref["n"], tail, floor)
                   if gpd else _tail_logp(-s, -ref["med"], -ref["lo"], -ref["min"], ref["n"], tail, floor))
    short = _too_short(ref["n"], tail)
    out = [np.where(short, np.nan, lp) for lp in out]
    return out


def _too_short(n: np.ndarray, tail: float) -> np.ndarray:
    """Where a reference of ``n`` values has no tail: it must reach beyond its quantile, n * tail / TAIL_STEP >= 1."""
    return n < TAIL_STEP / tail


def _calibrated_components(x: np.ndarray, p: UsageScoreParams) -> dict[str, np.ndarray]:
    """Log tail probability of each view (natural log, <= 0; NaN = no reference yet), samples x series."""
    frame = pd.DataFrame(x)
    out: dict[str, np.ndarray] = {}
    hist = frame.shift(1).rolling(p.history, min_periods=p.min_history)
    level = np.abs(hist.median().to_numpy())
    floor = _resolution(level)
    for view in _calibrated_views(p):
        stat = view.frame(frame)
        ref = _reference(stat, view.lag, p, view.min_windows)
        lps = _two_sided(stat.to_numpy(), ref, p.tail, floor, upper=view.up is not None, lower=view.down is not None)
        out.update(zip(view.names, lps, strict=True))
    if p.still_floor > 0:
        out["still"] = _still_logp(x.T, hist.count().to_numpy().T, np.isfinite(level).T, p).T
    return out


def _resolution(level: np.ndarray) -> np.ndarray:
    """Resolution of a view: a thousandth of the history's median level is never a surprise by itself."""
    return 1e-3 * level + 1e-9


@dataclass(frozen=True)
class _View:
    """One calibrated view: a statistic compared with the distribution it took over its own history.

    The statistic is written twice, side by side: over a pandas frame (samples x series, for
    :func:`score_matrix`) and with :mod:`costwatch.rolling` over a block (series x samples, for
    :func:`flagged_scores`), so a view added here reaches both paths; tests/test_usage_score.py checks that the
    two agree for every view.
    """

    up: str | None  # component name of the upper tail (None: not tested)
    down: str | None  # ... of the lower tail
    lag: int  # the statistic's own window: its reference ends this many rows back, so the two never overlap
    min_windows: int  # windows of history its reference needs
    frame: Callable[[pd.DataFrame], pd.DataFrame]
    block: Callable[[np.ndarray], np.ndarray]

    @property
    def names(self) -> list[str]:
        return [n for n in (self.up, self.down) if n is not None]


def _calibrated_views(p: UsageScoreParams) -> list[_View]:
    """The calibrated views these parameters switch on (stillness apart: it has no reference distribution)."""
    # value: a single row (a spike), against the values before it
    views = [_View("spike_up", "spike_down", 1, 1, lambda f: f, lambda a: a)]
    k = p.level_window
    if k > 1:  # level: a short median, which turns a level shift into one step
        views.append(_View("level_up", "level_down", k, 1, lambda f: f.rolling(k, min_periods=1).median(),
                           lambda a: short_median(a, k, 1)))
    if p.jump and k > 1:  # jump: the value minus the median of the rows before it
        views.append(_View("jump_up", "jump_down", 1, 1, lambda f: f - f.shift(1).rolling(k, min_periods=1).median(),
                           lambda a: a - lagged(short_median(a, k, 1), 1)))
    # shape: spread (oscillation, or a flat line) and typical step size (a new rhythm)
    if p.spread_window > 1:
        views.append(_spread_view(p))
    if p.rough_window > 0:
        views.append(_rough_view(p))
    if p.season > 0:
        views += _season_views(p)
    return views


def _spread_view(p: UsageScoreParams) -> _View:
    w = p.spread_window
    mp = min(w, max(3, w // 2))

    def frame(f: pd.DataFrame) -> pd.DataFrame:
        win = f.rolling(w, min_periods=mp)
        return win.quantile(0.75) - win.quantile(0.25) if p.robust_spread else win.std()

    def block(a: np.ndarray) -> np.ndarray:
        if not p.robust_spread:
            return short_std(a, w, mp)
        q25, q75 = short_quantiles(a, w, mp, [0.25, 0.75])
        return q75 - q25

    return _View("spread_up", "spread_down" if p.flatline else None, w, SHAPE_WINDOWS, frame, block)


def _rough_view(p: UsageScoreParams) -> _View:
    w = p.rough_window
    mp = min(w, max(3, w // 2))
    return _View("rough", None, w, SHAPE_WINDOWS, lambda f: f.diff().abs().rolling(w, min_periods=mp).median(),
                 lambda a: short_median(np.abs(np.diff(a, axis=-1, prepend=np.nan)), w, mp))


def _season_views(p: UsageScoreParams) -> list[_View]:
    """A value outside the envelope that the earlier days drew near the same time of day (upper and lower).

    Why: a reading that the series reaches every day at 10:00 is no news at 10:00 but is at 03:00 (NAB's
    24ae8d: a 0.6 among daily 1.5 spikes).  The envelope is the max (min) over the ``season_days`` earlier
    days of the values within ``season_jitter`` rows of the same time of day (a missing day is skipped); the
    view is the excess over it, against that excess's own history.  Nothing before ``season_days`` days of
    data, so a young series is not judged on one day's envelope."""
    j = p.season_jitter
    shifts = [d * p.season for d in range(1, p.season_days + 1)]

    def frame(f: pd.DataFrame, upper: bool) -> pd.DataFrame:
        near = f.rolling(2 * j + 1, center=True, min_periods=1)
        env = near.max() if upper else near.min()
        combine = np.fmax if upper else np.fmin
        stat = f.to_numpy() - combine.reduce([env.shift(k).to_numpy() for k in shifts])
        stat[~(f.notna().cumsum().shift(shifts[-1]).to_numpy() >= 1)] = np.nan
        return pd.DataFrame(stat, index=f.index, columns=f.columns)

    def block(a: np.ndarray, upper: bool) -> np.ndarray:
        # the window ending j rows after each centre, moved k - j rows later: the centre k rows back
        env = (rolling_max if upper else rolling_min)(a, 2 * j + 1, 0, 1)
        combine = np.fmax if upper else np.fmin
        acc = np.full(a.shape, np.nan)
        t = a.shape[-1]
        for k in shifts:
            if k - j < t:
                combine(acc[..., k - j:], env[..., : t - (k - j)], out=acc[..., k - j:])
        stat = a - acc
        known = ~np.isnan(a)
        first = np.where(known.any(axis=-1), known.argmax(axis=-1), t)  # each series' first observation
        stat[np.arange(t)[None, :] < first[:, None] + shifts[-1]] = np.nan
        return stat

    return [_View("season_up", None, 1, 1, lambda f: frame(f, True), lambda a: block(a, True)),
            _View(None, "season_down", 1, 1, lambda f: frame(f, False), lambda a: block(a, False))]


def _n_views(p: UsageScoreParams) -> int:
    """Components the Bonferroni combination counts: each tested tail of each view, and stillness."""
    return sum(len(v.names) for v in _calibrated_views(p)) + (p.still_floor > 0)


def _still_logp(x: np.ndarray, n: np.ndarray, known: np.ndarray, p: UsageScoreParams) -> np.ndarray:
    """Log probability of the current still run (series x samples), given the values ``n`` in the history and
    where its median level is ``known``; NaN for a series that has never moved."""
    run, longest, seen_before = _still_runs(x, p)
    with np.errstate(invalid="ignore", divide="ignore"):
        # the longest still run of the history sits at probability 1/n; each further such length
        # multiplies by 1/n again
        lp = -np.log(np.maximum(n, 2.0)) * run / np.maximum(longest, p.still_floor)
    return np.where(known & (seen_before > p.min_history), lp, np.nan)


def _still_runs(x: np.ndarray, p: UsageScoreParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sample (series x samples): samples the value has stayed unchanged, the longest still run that
    ended in the history, and the observations seen before the current run began."""
    with np.errstate(invalid="ignore"):
        still = np.abs(np.diff(x, axis=-1, prepend=np.nan)) <= 1e-12 * (1.0 + np.abs(x))
    run = _run_length(still)
    ended = np.zeros(x.shape)  # length of a still run, on the sample that ends it
    ended[..., 1:] = np.where(still[..., 1:], 0, run[..., :-1])
    longest = rolling_max(ended, p.history, 0, 1)
    seen_before = np.cumsum(~np.isnan(x), axis=-1) - run  # observations before the run began
    return run, longest, seen_before


def _run_length(flag: np.ndarray) -> np.ndarray:
    """Length of the run of True ending at each sample (0 where False), along the last axis."""
    c = np.cumsum(flag, axis=-1)
    return c - np.maximum.accumulate(np.where(flag, 0, c), axis=-1)


def _excess_matrix(x: np.ndarray, p: UsageScoreParams) -> np.ndarray:
    """Distance beyond the band (positive = detection side of the threshold), samples x series."""
    excess = np.full(x.shape, -np.inf)
    for e in _components(x, p).values():
        excess = np.fmax(excess, e)
    excess[np.isnan(x)] = np.nan  # a gap is never a detection
    return excess


def _surprise(x: np.ndarray, p: UsageScoreParams) -> np.ndarray:
    """-ln of the Bonferroni-combined p-value (smallest view p-value times the number of views)."""
    comps = _calibrated_components(x, p)
    lp = np.full(x.shape, np.inf)
    for c in comps.values():
        lp = np.fmin(lp, c)
    return _bonferroni(lp, x, len(comps))


def _bonferroni(lp: np.ndarray, x: np.ndarray, n_views: int) -> np.ndarray:
    """-ln of the combined p-value from the smallest log p-value ``lp`` of ``n_views`` components (NaN: none)."""
    s = -lp
    s[~np.isfinite(s) | np.isnan(x)] = np.nan  # no reference yet, or a gap: never a detection
    out = s - np.log(n_views)
    out[~np.isfinite(out)] = 0.0
    return np.maximum(out, 0.0)


def _calibrated_score(surprise: np.ndarray, p: UsageScoreParams) -> np.ndarray:
    """``S / (S + S_alpha)``: 0.5 exactly where the combined p-value is ``alpha``."""
    return surprise / (surprise - np.log(p.alpha))


def score_matrix(x: np.ndarray, *, params: UsageScoreParams | None = None) -> np.ndarray:
    """Scores in [0, 1] for many equally spaced series at once (rows = series, columns = samples, NaN = gap).

    Row ``j`` of the result equals ``score_series(x[j])``; NaN samples and rows without enough history
    score 0.
    """
    p = params or UsageScoreParams()
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"score_matrix expects a 2-D array (series x samples), got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros_like(arr)
    if p.method == "calibrated":
        return _calibrated_score(_surprise(arr.T, p).T, p)
    return _squash(_excess_matrix(arr.T, p).T, p)


def _squash(excess: np.ndarray, p: UsageScoreParams) -> np.ndarray:
    """Excess in band widths to a score in [0, 1]: 0.5 at the threshold (NaN: 0)."""
    lim = 50.0 * p.softness
    z = np.clip(np.where(np.isnan(excess), -lim, excess), -lim, lim) / p.softness
    return 1.0 / (1.0 + np.exp(-z))


FLAG_BLOCK = 4096  # series scored at once by flagged_scores (a few dozen MB per statistic)
MIN_THRESHOLD = 1e-6  # below this a statistic inside its range could still score 0.5 (rounding)


def flagged_scores(x: np.ndarray, *, params: UsageScoreParams | None = None, workers: int | None = None,
                   ) -> np.ndarray:
    """``score_matrix(x)`` where it is >= 0.5 and 0 elsewhere: the same departures with the same scores.

    Why: detect scores every node and reads only the departures (their onsets and scores), and the costly
    part of a score is the band width (three quantiles of a two-week window per sample).  A range test can
    only reach 0.5 where its statistic lies outside its historical range, which needs the range (window
    extremes) but not the width.  So the statistics and ranges are computed for every sample, the band only
    where some statistic left its range (~3% of node-hours on hourly CPU), and elsewhere only the stillness
    test, which needs no band, can reach 0.5.  ``method="calibrated"`` works the same way (see
    :func:`_calibrated_block`).  Parameters for which a statistic inside its range could reach 0.5 (a
    threshold at or below zero; for the calibrated score an ``alpha`` too large for its history) go through
    :func:`score_matrix` whole.  ``workers`` threads share the blocks of series (default: one per core; numpy
    releases the GIL in their loops).
    """
    p = params or UsageScoreParams()
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2 or arr.size == 0 or not _range_bounds_score(p):
        s = score_matrix(arr, params=p)
        return np.where(s >= 0.5, s, 0.0)
    out = np.zeros(arr.shape)
    block = _calibrated_block if p.method == "calibrated" else _flagged_block

    def run(r0: int) -> None:
        out[r0: r0 + FLAG_BLOCK] = block(arr[r0: r0 + FLAG_BLOCK], p)

    starts = range(0, arr.shape[0], FLAG_BLOCK)
    n_workers = min(workers if workers is not None else (os.cpu_count() or 1), len(starts))
    if n_workers > 1:
        with ThreadPoolExecutor(n_workers) as pool:
            list(pool.map(run, starts))
    else:
        for r0 in starts:
            run(r0)
    return out


def _range_bounds_score(p: UsageScoreParams) -> bool:
    """Whether a sample can reach 0.5 only where some statistic lies outside its historical [min, max] (or
    by stillness), so that :func:`flagged_scores` may skip every other sample.

    Range method: a test's excess inside its range is at most 0, so a threshold above 0 bounds it.

    Calibrated method: a sample scores >= 0.5 only if some view's p-value is at most ``alpha / n_views``.
    For a statistic ``s`` within [min, max] of its reference (``n`` values, ``n <= history``) every tail
    function gives at least (upper tail; the lower one is the same on negated values):

    * between the median and the ``1 - tail`` quantile ``q``: the log-linear body gives ``>= tail`` (its
      width is at least ``q - med``), for ``tail < 1/2``;
    * :func:`_gpd_tail_logp` beyond ``q``: ``s - q <= max - q <= d3`` and the scale is the ``fmax`` of two,
      one of which is the scale ``sigma3`` that puts ``q + d3`` at ``tail / r3``; a GPD tail falls
      monotonically, so ``p(s) >= p(q + d3 | sigma3) = tail / r3``, with ``r3 = max((n+1) tail, 1.5
      TAIL_STEP)``: ``p >= min(1/(n+1), tail / (1.5 TAIL_STEP))``;
    * :func:`_tail_logp` beyond ``q``: the scale is at least ``(max - q) / max(ln(n tail), 1)``, so ``ln p >=
      ln tail - max(ln(n tail), 1)``: ``p >= min(1/n, tail / e)``;
    * too short a history (``n < TAIL_STEP / tail``) or no reference: NaN, never a detection.

    So with ``alpha / n_views`` below ``min(1/(history+1), tail / (1.5 TAIL_STEP), tail / e)`` (with a margin
    for rounding) no view inside its range reaches 0.5, and at a sample where some views are outside, the
    smallest p-value is one of theirs (or stillness's, computed everywhere) whenever the score reaches 0.5.
    The defaults: ``alpha / 10 = 2e-4`` (``alpha / 12`` with the time-of-day views) against ``1/4033``
    (5-minute) or ``1/337`` (hourly).
    """
    if p.method == "range":
        return min(p.spike_threshold, p.level_threshold, p.spread_threshold, p.rough_threshold) >= MIN_THRESHOLD
    if not (0.0 < p.tail < 0.5 and p.alpha > 0.0):
        return False
    least = min(1.0 / (p.history + 1.0), p.tail / (1.5 * TAIL_STEP), p.tail / np.e)
    return p.alpha / _n_views(p) < least * (1.0 - 1e-6)


def _calibrated_block(x: np.ndarray, p: UsageScoreParams) -> np.ndarray:
    """:func:`flagged_scores` for ``method="calibrated"``, a block of series (series x samples).

    Every view's statistic and its reference [min, max] for every sample (:mod:`costwatch.rolling`), stillness
    everywhere (it needs no quantiles), and a view's reference quantiles (the costly part) only at the samples
    where its statistic lies outside [min, max]: inside, it cannot reach its share of ``alpha``
    (:func:`_range_bounds_score`).  The tail probabilities there come from the same functions as
    :func:`score_matrix`, on the same reference values, so the scores are the same.
    """
    h = p.history
    known = rolling_count(x, h, 1) >= max(p.min_history, 1)  # where the history's median level exists
    level = GatheredWindows(x, h, 1, p.min_history)  # its median at the cells a view asks for
    lp = (_still_logp(x, _count_with_inf(x, h, 1), known, p) if p.still_floor > 0
          else np.full(x.shape, np.nan))  # smallest log p-value of the views computed so far
    for view in _calibrated_views(p):
        rows, cols, lps = _departures(view, x, level, p)
        for c in lps:
            lp[rows, cols] = np.fmin(lp[rows, cols], c)
    score = _calibrated_score(_bonferroni(lp, x, _n_views(p)), p)
    return np.where(score >= 0.5, score, 0.0)


def _departures(view: _View, x: np.ndarray, level: GatheredWindows, p: UsageScoreParams,
                ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A view's log p-values (each tested tail) at the samples (rows, cols) of the block ``x`` where its
    statistic lies outside its reference [min, max] and the reference is long enough to have a tail."""
    h = p.history
    stat = view.block(x)
    need = _need(p, view.lag, view.min_windows)
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    if view.up is not None and view.down is not None:
        lo, hi = rolling_extremes(stat, h, view.lag, need)
    elif view.down is not None:
        lo = rolling_min(stat, h, view.lag, need)
    else:
        hi = rolling_max(stat, h, view.lag, need)
    with np.errstate(invalid="ignore"):
        beyond = (stat > hi) if hi is not None else np.zeros(x.shape, dtype=bool)
        if lo is not None:
            beyond |= stat < lo
    n = _count_with_inf(stat, h, view.lag)
    rows, cols = np.nonzero(beyond & ~np.isnan(x) & ~_too_short(n, p.tail))  # a short one's p-value: NaN
    if not rows.size:
        return rows, cols, []
    specs = _reference_quantiles(view.lag, p)
    ref = dict(zip(specs, window_quantiles(stat, h, view.lag, need, rows, cols, list(specs.values())), strict=True))
    ref["n"] = n[rows, cols].astype(float)
    if hi is not None:
        ref["max"] = hi[rows, cols]
    if lo is not None:
        ref["min"] = lo[rows, cols]
    floor = _resolution(np.abs(level.at(rows, cols, [MEDIAN])[0]))
    return rows, cols, _two_sided(stat[rows, cols], ref, p.tail, floor, upper=view.up is not None,
                                  lower=view.down is not None)


def _count_with_inf(a: np.ndarray, window: int, lag: int) -> np.ndarray:
    """pandas' rolling ``count()``: it counts the infinities its other statistics skip."""
    return rolling_count(np.where(np.isinf(a), 0.0, a), window, lag)


def _flagged_block(x: np.ndarray, p: UsageScoreParams) -> np.ndarray:
    """:func:`flagged_scores` for a block of series (series x samples)."""
    h = p.history

    def ranged(stat: np.ndarray, lag: int, min_windows: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (stat, *rolling_extremes(stat, h, lag, _need(p, lag, min_windows)))

    tests = {"spike": ranged(x, 1)}
    k = p.level_window
    tests["level"] = tests["spike"] if k == 1 else ranged(short_median(x, k, 1), k)
    w = p.spread_window
    tests["spread"] = ranged(short_std(x, w, min(w, max(3, w // 2))), w, SHAPE_WINDOWS)
    if p.rough_window > 0:
        w = p.rough_window
        step = np.abs(np.diff(x, axis=-1, prepend=np.nan))
        tests["rough"] = ranged(short_median(step, w, min(w, max(3, w // 2))), w, SHAPE_WINDOWS)
    with np.errstate(invalid="ignore"):
        outside = np.zeros(x.shape, dtype=bool)
        for name, (v, lo, hi) in tests.items():
            two_sided = name in ("spike", "level") or (name == "spread" and p.flatline)
            outside |= (v > hi) | (two_sided & (v < lo))
    outside &= ~np.isnan(x)
    banded = rolling_count(x, h, 1) >= max(p.min_history, 1)  # where the band (and so stillness) is defined
    out = np.zeros(x.shape)
    if p.still_min > 0:  # inside every range, only stillness can reach 0.5; its excess is then the maximum
        still = np.where(banded & ~np.isnan(x), _still_excess(x, p), np.nan)
        with np.errstate(invalid="ignore"):
            near = np.nonzero(still >= -1e-9)  # further below 0 squashes below 0.5
        score = _squash(still[near], p)
        out[near] = np.where(score >= 0.5, score, 0.0)
    rows, cols = np.nonzero(outside)
    if rows.size:
        lo_q, med, hi_q = window_quantiles(x, h, 1, p.min_history, rows, cols,
                                           [p.band_quantile, MEDIAN, 1.0 - p.band_quantile])
        floor = p.level_floor * np.abs(med) + 1e-9
        band = np.maximum(hi_q - lo_q, floor)
        at = {name: (v[rows, cols], lo[rows, cols], hi[rows, cols]) for name, (v, lo, hi) in tests.items()}
        comps = _range_components(at, still[rows, cols] if p.still_min > 0 else None, band, floor, p)
        excess = np.full(rows.size, -np.inf)
        for e in comps.values():
            excess = np.fmax(excess, e)
        score = _squash(excess, p)
        out[rows, cols] = np.where(score >= 0.5, score, 0.0)
    return out


def _grid_positions(timestamps: pd.DatetimeIndex) -> np.ndarray:
    """Slot of each row on a regular grid at the median step, so gaps keep their length in time.

    Repeated timestamps (zero-second steps in CloudWatch exports) take the next slot instead of colliding.
    """
    step = _median_step(timestamps)
    if step is None:
        return np.arange(len(timestamps))
    d = np.diff(timestamps.asi8.astype(np.int64))
    inc = np.maximum(1, np.rint(np.maximum(d, 0) / step).astype(np.int64))
    return np.concatenate([[0], np.cumsum(inc)])


def _median_step(timestamps: pd.DatetimeIndex) -> float | None:
    """The median of the positive steps between rows, in nanoseconds (None without any)."""
    d = np.diff(timestamps.asi8.astype(np.int64))
    positive = d[d > 0]
    return float(np.median(positive)) if positive.size else None


def score_series(values: np.ndarray, timestamps: pd.DatetimeIndex | None = None, *,
                 params: UsageScoreParams | None = None) -> np.ndarray:
    """Scores in [0, 1] per row, causal; >= 0.5 means the row is outside the series' band.

    Windows are counted in samples.  With ``timestamps`` the rows are first laid on a regular grid (gaps
    become missing samples) so that a two-week history stays two weeks across outages.
    """
    v = np.asarray(values, dtype=float).ravel()
    if timestamps is None or len(v) == 0:
        return score_matrix(v[None, :], params=params)[0]
    idx = pd.DatetimeIndex(timestamps)
    if len(idx) != len(v):
        raise ValueError(f"{len(v)} values but {len(idx)} timestamps")
    if params is None:
        params = UsageScoreParams()
    if params.season < 0:
        params = replace(params, season=_rows_per_day(idx))
    pos = _grid_positions(idx)
    grid = np.full(int(pos[-1]) + 1, np.nan)
    grid[pos] = v
    return score_matrix(grid[None, :], params=params)[0][pos]


def _rows_per_day(idx: pd.DatetimeIndex) -> int:
    """Rows per day at the median step, or 0 (no time-of-day view) when a day is not a whole number of steps."""
    step = _median_step(idx)
    if step is None:
        return 0
    per_day = 86_400e9 / step
    return round(per_day) if per_day >= 2 and abs(per_day - round(per_day)) < 1e-6 else 0


def episode_onsets(scores: np.ndarray, *, refractory: int | None = None, threshold: float = 0.5,
                   quiet: int | None = None) -> np.ndarray:
    """True on the first row of each episode above ``threshold``.

    An episode ends once the score has stayed below ``threshold`` for ``quiet`` rows, and a new onset
    also needs more than ``refractory`` rows since the previous one; ``None`` takes the default
    parameters.  Works on one series or on a series x samples matrix.  The loop only visits rows above the
    threshold.
    """
    r = UsageScoreParams().refractory if refractory is None else refractory
    q = UsageScoreParams().quiet if quiet is None else quiet
    s = np.asarray(scores, dtype=float)
    flat = s[None, :] if s.ndim == 1 else s
    out = np.zeros(flat.shape, dtype=bool)
    for j in range(flat.shape[0]):
        last = prev = -(1 << 62)  # last onset, last row above the threshold
        for i in np.flatnonzero(flat[j] >= threshold):
            if i - last > r and i - prev > q:
                out[j, i] = True
                last = int(i)
            prev = int(i)
    return out[0] if s.ndim == 1 else out


def onset_scores(scores: np.ndarray, *, refractory: int | None = None, threshold: float = 0.5,
                 quiet: int | None = None) -> np.ndarray:
    """Scores with every non-onset row held just below ``threshold``, so one episode is one detection."""
    s = np.asarray(scores, dtype=float)
    onsets = episode_onsets(s, refractory=refractory, threshold=threshold, quiet=quiet)
    # a visible margin, so writing the scores with a few decimals cannot round a held row back up
    return np.where(onsets, s, np.minimum(s, threshold - 1e-3))
