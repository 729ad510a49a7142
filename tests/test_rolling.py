"""costwatch.rolling equals pandas' rolling statistics, NaN, infinities, ties and short histories included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from costwatch import rolling as R


def _series() -> np.ndarray:
    """Series x samples with gaps, late starts, a constant stretch, ties, an all-NaN series and infinities."""
    rng = np.random.default_rng(7)
    a = np.round(rng.normal(50, 10, (60, 300)), 1)
    a[rng.uniform(size=a.shape) < 0.05] = np.nan
    a[:10, :40] = np.nan
    a[20:25, 100:] = 7.0
    a[30] = np.nan
    a[40, 5] = np.inf
    a[41, 9] = -np.inf
    return a


@pytest.mark.parametrize("kind", [R.SortedRanks, R.GatheredWindows])
@pytest.mark.parametrize(("window", "lag", "min_periods"), [(120, 1, 12), (50, 3, 50), (400, 0, 1), (120, 2, 30)])
def test_window_statistics_equal_pandas(kind: type[R.SortedRanks | R.GatheredWindows], window: int, lag: int,
                                        min_periods: int) -> None:
    a = _series()
    frame = pd.DataFrame(a.T)
    roll = frame.shift(lag).rolling(window, min_periods=min_periods)
    rows, cols = np.nonzero(np.ones(a.shape, dtype=bool))
    specs: list[float | str] = [0.25, R.MEDIAN, 0.75, 0.05, 0.995]
    got = kind(a, window, lag, min_periods).at(rows, cols, specs)
    want = [roll.quantile(0.25), roll.median(), roll.quantile(0.75), roll.quantile(0.05), roll.quantile(0.995)]
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g.reshape(a.shape), w.to_numpy().T, equal_nan=True)
    lo, hi = R.rolling_extremes(a, window, lag, min_periods)
    assert np.array_equal(lo, roll.min().to_numpy().T, equal_nan=True)
    assert np.array_equal(hi, roll.max().to_numpy().T, equal_nan=True)
    assert np.array_equal(R.rolling_max(a, window, lag, min_periods), hi, equal_nan=True)
    finite = frame.replace([np.inf, -np.inf], np.nan).shift(lag).rolling(window, min_periods=0).count()
    assert np.array_equal(R.rolling_count(a, window, lag), finite.to_numpy().T)


@pytest.mark.parametrize("share", [0.01, 0.5])
def test_window_quantiles_at_some_cells_equal_pandas(share: float) -> None:
    """A few cells (each window gathered) or many (each series sorted once): the same values."""
    a = _series()
    roll = pd.DataFrame(a.T).shift(2).rolling(120, min_periods=30)
    rows, cols = np.nonzero(np.random.default_rng(1).uniform(size=a.shape) < share)
    got = R.window_quantiles(a, 120, 2, 30, rows, cols, [R.MEDIAN, 0.95])
    assert np.array_equal(got[0], roll.median().to_numpy().T[rows, cols], equal_nan=True)
    assert np.array_equal(got[1], roll.quantile(0.95).to_numpy().T[rows, cols], equal_nan=True)


@pytest.mark.parametrize(("k", "min_periods"), [(1, 1), (2, 1), (4, 3), (8, 3), (24, 12)])
def test_short_windows_equal_pandas(k: int, min_periods: int) -> None:
    a = _series()
    roll = pd.DataFrame(a.T).rolling(k, min_periods=min_periods)
    assert np.array_equal(R.short_median(a, k, min_periods), roll.median().to_numpy().T, equal_nan=True)
    q25, q75 = R.short_quantiles(a, k, min_periods, [0.25, 0.75])
    assert np.array_equal(q25, roll.quantile(0.25).to_numpy().T, equal_nan=True)
    assert np.array_equal(q75, roll.quantile(0.75).to_numpy().T, equal_nan=True)
    # two-pass against Welford: equal to rounding, and exactly 0 on a constant stretch as in pandas
    sd = R.short_std(a, k, min_periods)
    assert np.allclose(sd, roll.std().to_numpy().T, rtol=1e-9, atol=1e-12, equal_nan=True)
    if k > 1:
        assert np.all(sd[20:25, 100 + k:] == 0.0)
