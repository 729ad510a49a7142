"""Bands: causal, calibrated on clean data, catch spikes, and agree across the two methods."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costwatch import baseline as bl
from costwatch.model import normalize_costs

WEEK = np.array([1.0, 1.05, 1.1, 1.05, 1.0, 0.6, 0.55])


def _series(n: int = 300, d: int = 84, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, pd.DatetimeIndex]:
    rng = np.random.default_rng(seed)
    days = pd.date_range("2026-08-03", periods=d, freq="D", tz="UTC")  # a Monday
    base = rng.uniform(20, 2000, n)[:, None] * WEEK[days.dayofweek.to_numpy()][None, :]
    return base * np.exp(rng.normal(0, noise, (n, d))), days


def test_clean_series_rarely_leave_band() -> None:
    x, _ = _series()
    b = bl.weekday_bands(x)
    outside = (x > b.upper) | (x < b.lower)
    assert outside[:, 28:].mean() < 0.005


def test_weekly_shape_is_learned_not_flagged() -> None:
    x, days = _series(noise=0.02)
    b = bl.weekday_bands(x)
    sat = days.dayofweek.to_numpy() == 5
    ratio = b.expected[:, 35:][:, sat[35:]] / x[:, 35:][:, sat[35:]]
    assert np.median(np.abs(ratio - 1)) < 0.05


def test_spike_is_caught_and_band_is_causal() -> None:
    x, _ = _series()
    spiked = x.copy()
    spiked[:50, 60:63] *= 2.5
    b_clean = bl.weekday_bands(x)
    b = bl.weekday_bands(spiked)
    assert (spiked[:50, 60] > b.upper[:50, 60]).all()
    # the band of the first spike day does not see the spike: identical to the clean band
    np.testing.assert_allclose(b.upper[:, 60], b_clean.upper[:, 60])
    # and later days of an ongoing incident still sit outside the band built from earlier days
    assert (spiked[:50, 62] > b.upper[:50, 62]).mean() > 0.9


@settings(max_examples=25, deadline=None)
@given(t=st.integers(min_value=15, max_value=80), seed=st.integers(0, 1000))
def test_future_values_never_change_past_bands(t: int, seed: int) -> None:
    x, _ = _series(n=5, seed=seed)
    y = x.copy()
    y[:, t:] = np.random.default_rng(seed).uniform(0, 1e5, y[:, t:].shape)
    a, b = bl.weekday_bands(x), bl.weekday_bands(y)
    np.testing.assert_allclose(a.upper[:, : t + 1], b.upper[:, : t + 1])
    np.testing.assert_allclose(a.expected[:, : t + 1], b.expected[:, : t + 1])


def test_stl_agrees_with_weekday_on_clean_data() -> None:
    x, days = _series(n=40)
    w = bl.weekday_bands(x)
    s = bl.stl_bands(x, days, days[56])
    assert s.method == "stl"
    rel = np.abs(s.expected[:, 56:] / w.expected[:, 56:] - 1)
    assert np.median(rel) < 0.08
    spiked = x.copy()
    spiked[:, 60] *= 3
    s2 = bl.stl_bands(spiked, days, days[56])
    assert (spiked[:, 60] > s2.upper[:, 60]).all()


def test_nanmedian_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 20, 11))
    a[rng.uniform(size=a.shape) < 0.3] = np.nan
    a[0, 0, :] = np.nan
    with pytest.warns(RuntimeWarning):
        ref = np.nanmedian(a, axis=-1)
    np.testing.assert_allclose(bl.nanmedian(a), ref, equal_nan=True)


def _frame(rows: list[tuple[str, str, str, float, str]]) -> pd.DataFrame:
    return normalize_costs(pd.DataFrame({
        "period_start": pd.to_datetime([r[0] for r in rows], utc=True), "provider": "aws",
        "project_id": [r[1] for r in rows], "service_category": [r[2] for r in rows],
        "effective_cost": [r[3] for r in rows], "billed_cost": [r[3] for r in rows],
        "charge_category": [r[4] for r in rows], "currency": "USD", "period_hours": 1.0,
    }))


def test_daily_matrix_rolls_up_hours_and_treats_gaps_and_credits() -> None:
    rows = [("2026-01-01 00:00", "a", "Compute", 1.0, "Usage"), ("2026-01-01 05:00", "a", "Compute", 2.0, "Usage"),
            ("2026-01-01 06:00", "a", "Storage", 1.0, "Usage"), ("2026-01-02 00:00", "a", "Compute", 4.0, "Usage"),
            ("2026-01-04 00:00", "a", "Compute", 5.0, "Usage"), ("2026-01-04 00:00", "a", "Compute", -50.0, "Credit")]
    costs = _frame(rows)
    gross = costs[bl.usage_rows(costs)]
    assert (gross["effective_cost"] >= 0).all() and len(gross) == 5
    m = bl.daily_matrix(gross, ["project_id", "service_category"])
    assert list(m.keys["service_category"]) == ["Compute", "Storage"]
    np.testing.assert_allclose(m.values[0], [3.0, 4.0, np.nan, 5.0])
    # Storage: absent on days the project reported is a zero; the day nobody reported stays missing
    np.testing.assert_allclose(m.values[1], [1.0, 0.0, np.nan, 0.0])


def test_blocks_of_series_give_the_same_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = _series(n=250)
    whole = bl.weekday_bands(x)
    monkeypatch.setattr(bl, "CHUNK_SERIES", 64)
    blocks = bl.weekday_bands(x)
    for name in ("expected", "lower", "upper", "sigma", "history"):
        np.testing.assert_allclose(getattr(blocks, name), getattr(whole, name))
