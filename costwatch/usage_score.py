"""Usage-band anomaly score: has a usage series (node CPU, network, request count) left its own band?

A hijacked node rarely produces a textbook outlier.  It moves to a level it has not been at before (a miner
pinning CPU, or a throttled one sitting at a cap), or its behaviour changes shape (a flat line where there
was noise, bursts where there was a flat line).  What it does not do is repeat last week.  So the score is a
*novelty* score against the series' own causal history rather than a distance from a mean:

* level novelty: the current value, and a short rolling median that carries level shifts, are compared with
  the range [min, max] that the same statistic took over the history (``history`` rows, ending where the
  short window starts, so the two never overlap).  Excess beyond that range is measured in robust band widths
  (inter-quartile range of the history, floored by a share of the historical range and of the level).
  Recurring bursts, daily peaks and noisy-but-stationary series stay inside their range and score nothing;
  a value that has never been seen, in either direction, scores at once.
* spread novelty: a rolling standard deviation compared with the range it had over the history, which
  catches a regime that starts to oscillate (and is what a plain level test misses).
* episodes: a departure lasts many rows, but a reader (and the NAB scorer) wants one alert per episode, so
  :func:`episode_onsets` keeps the first row above 0.5 and then stays silent for ``refractory`` rows.

Everything is causal: the score at row ``i`` uses rows ``<= i`` only.  All statistics are pandas rolling
operations over whole columns, so :func:`score_matrix` scores many equally spaced series (nodes x samples) at
once, and :func:`score_series` is that same computation for one series.

The default parameters were chosen once, for the whole NAB ``realAWSCloudwatch`` corpus together (17 series,
one threshold: the "corpus-tuned threshold" convention of the published NAB detectors), by a small grid
search run with ``bench/nab.py``; nothing is tuned per file.  At 5-minute spacing ``history=4032`` is two weeks.
Measured there with ``bench/nab_scoring.py``: standard 70.59, reward_low_FP 69.86, reward_low_FN 72.62 (HTM:
73.42 standard).  A lone value must clear its range by a full band width while the short median needs only
0.2: stationary noise keeps setting small new records one sample at a time, a real shift moves the median.
The optimum is narrow (``level_window`` 12 or 36 instead of 24 costs 3-4 points), so treat those numbers as
an in-sample upper bound, not a forecast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "UsageScoreParams",
    "episode_onsets",
    "onset_scores",
    "score_matrix",
    "score_series",
]


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
    softness: float = 0.1  # excess (in band widths) that moves the score from 0.5 to 0.73
    refractory: int = 450  # rows after an onset during which no new onset is reported


def _excess_matrix(x: np.ndarray, p: UsageScoreParams) -> np.ndarray:
    """Distance beyond the band (positive = detection side of the threshold), samples x series."""
    frame = pd.DataFrame(x)
    mp = p.min_history
    hist = frame.shift(1).rolling(p.history, min_periods=mp)
    lo_q = hist.quantile(p.band_quantile).to_numpy()
    hi_q = hist.quantile(1.0 - p.band_quantile).to_numpy()
    level = np.abs(hist.median().to_numpy())
    band = np.maximum(hi_q - lo_q, p.level_floor * level + 1e-9)

    excess = np.full(x.shape, -np.inf)
    for k, threshold in ((1, p.spike_threshold), (p.level_window, p.level_threshold)):
        short = frame if k == 1 else frame.rolling(k, min_periods=1).median()
        past = short.shift(k).rolling(p.history, min_periods=mp)
        hi = past.max().to_numpy()
        lo = past.min().to_numpy()
        width = np.maximum(band, p.range_floor * (hi - lo))
        s = short.to_numpy()
        with np.errstate(invalid="ignore"):
            e = np.maximum(s - hi, lo - s) / width
        excess = np.fmax(excess, e - threshold)

    w = p.spread_window
    spread = frame.rolling(w, min_periods=max(3, w // 2)).std()
    past_spread = spread.shift(w).rolling(p.history, min_periods=mp)
    s_hi = past_spread.max().to_numpy()
    s_lo = past_spread.min().to_numpy()
    sd = spread.to_numpy()
    s_width = np.maximum(s_hi - s_lo, p.level_floor * level + 1e-9)
    with np.errstate(invalid="ignore"):
        spread_excess = (sd - s_hi) / s_width
        if p.flatline:
            spread_excess = np.fmax(spread_excess, (s_lo - sd) / s_width)

    excess = np.fmax(excess, spread_excess - p.spread_threshold)
    excess[np.isnan(x)] = np.nan  # a gap is never a detection
    return excess


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
    excess = _excess_matrix(arr.T, p).T
    lim = 50.0 * p.softness
    z = np.clip(np.where(np.isnan(excess), -lim, excess), -lim, lim) / p.softness
    return 1.0 / (1.0 + np.exp(-z))


def _grid_positions(timestamps: pd.DatetimeIndex) -> np.ndarray:
    """Slot of each row on a regular grid at the median step, so gaps keep their length in time.

    Repeated timestamps (zero-second steps in CloudWatch exports) take the next slot instead of colliding.
    """
    t = timestamps.asi8.astype(np.int64)
    if len(t) < 2:
        return np.arange(len(t))
    d = np.diff(t)
    positive = d[d > 0]
    if positive.size == 0:
        return np.arange(len(t))
    step = float(np.median(positive))
    inc = np.maximum(1, np.rint(np.maximum(d, 0) / step).astype(np.int64))
    return np.concatenate([[0], np.cumsum(inc)])


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
    pos = _grid_positions(idx)
    grid = np.full(int(pos[-1]) + 1, np.nan)
    grid[pos] = v
    return score_matrix(grid[None, :], params=params)[0][pos]


def episode_onsets(scores: np.ndarray, *, refractory: int | None = None, threshold: float = 0.5) -> np.ndarray:
    """True on the first row of each episode above ``threshold``; later rows within ``refractory`` are quiet.

    Works on one series or on a series x samples matrix.  The loop only visits rows above the threshold.
    """
    r = UsageScoreParams().refractory if refractory is None else refractory
    s = np.asarray(scores, dtype=float)
    flat = s[None, :] if s.ndim == 1 else s
    out = np.zeros(flat.shape, dtype=bool)
    for j in range(flat.shape[0]):
        last = -(1 << 62)
        for i in np.flatnonzero(flat[j] >= threshold):
            if i - last > r:
                out[j, i] = True
                last = int(i)
    return out[0] if s.ndim == 1 else out


def onset_scores(scores: np.ndarray, *, refractory: int | None = None, threshold: float = 0.5) -> np.ndarray:
    """Scores with every non-onset row held just below ``threshold``, so one episode is one detection."""
    s = np.asarray(scores, dtype=float)
    onsets = episode_onsets(s, refractory=refractory, threshold=threshold)
    # a visible margin, so writing the scores with a few decimals cannot round a held row back up
    return np.where(onsets, s, np.minimum(s, threshold - 1e-3))
