"""Bands: causal, calibrated on clean data, catch spikes, and agree across the two methods."""

from __future__ import annotations

import warnings

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


# ------------------------------------------------------------------------------------------------------
# The network implementation against the (series x day x lookback) tensor version it replaced, kept here
# as the specification: same bands up to float32 rounding, same days out of band.

def _reference_bands(values: np.ndarray, *, lookback: int = 28, z: float = 4.0, sensitivity: float = 1.0,
                     min_ratio: float = 0.15) -> bl.Bands:
    lookback = max(7, int(np.ceil(lookback / 7)) * 7)
    s, d = values.shape
    y = np.log1p(np.clip(values, 0.0, None))

    def windows(a: np.ndarray) -> np.ndarray:
        padded = np.concatenate([np.full((s, lookback), np.nan), a], axis=1)
        return np.lib.stride_tricks.sliding_window_view(padded, lookback, axis=1)[:, :d, :]

    by_wd = windows(y).reshape(s, d, lookback // 7, 7)
    week_med = bl.nanmedian(by_wd)
    wd_dev = bl.nanmedian((by_wd - week_med[..., None]).transpose(0, 1, 3, 2))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        season = np.nan_to_num(wd_dev - np.nanmean(wd_dev, axis=2, keepdims=True), nan=0.0)
    flat = (by_wd - season[:, :, None, :]).reshape(s, d, lookback)
    level = bl.nanmedian(flat[:, :, -7:])
    prior = bl.nanmedian(flat[:, :, -14:-7]) if lookback >= 14 else np.full(level.shape, np.nan)
    trend = np.where(np.isnan(prior), 0.0, (level - prior) / 7.0)
    ey = level + np.clip(0.5 * 4.0 * trend, -bl.MAX_TREND, bl.MAX_TREND) + season[:, :, 0]
    err_w = windows(y - ey)
    sigma_oos = 1.4826 * bl.nanmedian(np.abs(err_w))
    ref = bl.nanmedian(flat[:, :, -14:])
    sigma_in = 2.0 * 1.4826 * bl.nanmedian(np.abs(flat[:, :, -14:] - ref[:, :, None]))
    sigma = np.where((~np.isnan(err_w)).sum(axis=2) >= 7, sigma_oos, sigma_in)
    known = ~np.isnan(values)
    history = np.cumsum(known, axis=1) - known
    half = np.maximum(z / sensitivity * np.nan_to_num(sigma, nan=0.0), np.log1p(min_ratio))
    return bl.Bands(np.expm1(ey), np.expm1(np.maximum(ey - half, 0.0)), np.expm1(ey + half),
                    np.maximum(sigma, np.log1p(min_ratio) / z), history, "weekday")


def _reference_detection(values: np.ndarray, history_days: int = 14, **kw: float) -> bl.Bands:
    first = _reference_bands(values, **kw)  # type: ignore[arg-type]
    with np.errstate(invalid="ignore"):
        out1 = (first.history >= history_days) & (values > first.upper)
    bands = _reference_bands(np.where(out1, np.nan, values), **kw)  # type: ignore[arg-type]
    bands.history = first.history
    return bands


def _messy(n: int = 400, d: int = 100, seed: int = 0, gaps: bool = True) -> np.ndarray:
    """Spikes, a lasting incident and, with ``gaps``, missing days, late starts and zero days."""
    x, _ = _series(n=n, d=d, seed=seed)
    rng = np.random.default_rng(seed + 1)
    hit = rng.uniform(size=x.shape) < 0.01
    x[hit] *= rng.uniform(1.5, 4, hit.sum())
    x[: n // 10, 40:50] *= 2.5
    if gaps:
        x[rng.uniform(size=x.shape) < 0.01] = np.nan
        late = np.where(rng.uniform(size=n) < 0.2, rng.integers(0, d, n), 0)
        x[np.arange(d)[None, :] < late[:, None]] = np.nan
        x[rng.uniform(size=x.shape) < 0.01] = 0.0
    return x


def _assert_same_bands(new: bl.Bands, ref: bl.Bands, values: np.ndarray, cols: slice = slice(None)) -> None:
    for name in ("expected", "lower", "upper", "sigma"):
        a, b = getattr(new, name)[:, cols].astype(float), getattr(ref, name)[:, cols]
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5, equal_nan=True, err_msg=name)
    np.testing.assert_array_equal(new.history, ref.history)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(values[:, cols] > new.upper[:, cols], values[:, cols] > ref.upper[:, cols])


@pytest.mark.parametrize("lookback", [7, 14, 28, 35])
@pytest.mark.parametrize("gaps", [False, True])
def test_bands_match_the_tensor_reference(lookback: int, gaps: bool) -> None:
    x = _messy(gaps=gaps)
    _assert_same_bands(bl.weekday_bands(x, lookback=lookback), _reference_bands(x, lookback=lookback), x)
    part = bl.weekday_bands(x, lookback=lookback, scored_from=60)
    assert np.isnan(part.upper[:, :60]).all()
    _assert_same_bands(part, _reference_bands(x, lookback=lookback), x, slice(60, None))


@pytest.mark.parametrize("scored_from", [0, 30, 70, 99])
@pytest.mark.parametrize("gaps", [False, True])
def test_detection_bands_are_two_full_passes_on_the_scored_days(scored_from: int, gaps: bool) -> None:
    x = _messy(gaps=gaps, seed=scored_from)
    ref = _reference_detection(x, sensitivity=1.5)
    # the reference is the two passes alone: open episodes (held by default) are a third stage, tested below
    b = bl.detection_bands(x, scored_from=scored_from, sensitivity=1.5, hold_episodes=False, tail_margin=0)
    _assert_same_bands(b, ref, x, slice(scored_from, None))
    # series out of band on the first scored day (their episode may have begun before) get every day
    with np.errstate(invalid="ignore"):
        at_start = x[:, scored_from] > ref.upper[:, scored_from]
    if scored_from and at_start.any():
        _assert_same_bands(_rows(b, at_start), _rows(ref, at_start), x[at_start])


def _rows(b: bl.Bands, sel: np.ndarray) -> bl.Bands:
    return bl.Bands(b.expected[sel], b.lower[sel], b.upper[sel], b.sigma[sel], b.history[sel], b.method)


def test_threads_and_blocks_do_not_change_detection_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    x = _messy(n=300)
    one = bl.detection_bands(x, scored_from=50, workers=1)
    monkeypatch.setattr(bl, "CHUNK_SERIES", 32)
    many = bl.detection_bands(x, scored_from=50, workers=3)
    for name in ("expected", "lower", "upper", "sigma", "history"):
        np.testing.assert_array_equal(getattr(many, name), getattr(one, name))


def test_sorting_networks_sort() -> None:
    """0-1 principle: a comparator network sorts every input iff it sorts every 0/1 input."""
    for n in range(1, 13):
        bits = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(np.int8)
        w = [bits[:, i] for i in range(n)]
        for a, b in bl._sorting_network(n):
            w[a], w[b] = np.minimum(w[a], w[b]), np.maximum(w[a], w[b])
        out = np.stack(w, axis=1)
        assert (np.diff(out, axis=1) >= 0).all(), n


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 13, 20])
def test_elementwise_medians_match_nanmedian(n: int) -> None:
    rng = np.random.default_rng(n)
    views = [rng.normal(size=(50, 40)).astype(np.float32) for _ in range(n)]
    for v in views:
        v[rng.uniform(size=v.shape) < 0.3] = np.nan
    views[0][:5] = np.nan
    ref = bl.nanmedian(np.stack(views, axis=-1))
    np.testing.assert_allclose(bl.elementwise_median(views), ref, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(bl.elementwise_median(views, gappy=True), ref, rtol=1e-6, equal_nan=True)
    # rows before a view's start are treated as NaN for that view
    starts = [3 * j for j in range(n)]
    masked = [np.where(np.arange(50)[:, None] < s, np.nan, v) for v, s in zip(views, starts, strict=True)]
    ref = bl.nanmedian(np.stack(masked, axis=-1))
    np.testing.assert_allclose(bl.elementwise_median(views, starts), ref, rtol=1e-6, equal_nan=True)


def test_series_that_ended_get_their_last_days_band() -> None:
    """Reports show a series' band at its last day; one that ended before the window still has it."""
    x = _messy(n=50, gaps=False)
    x[0, 60:] = np.nan
    ref = _reference_detection(x)
    b = bl.detection_bands(x, scored_from=80, hold_episodes=False, tail_margin=0)  # the reference: two passes
    np.testing.assert_allclose(b.upper[0, :60], ref.upper[0, :60], rtol=2e-4, equal_nan=True)
    assert np.isnan(b.upper[1:, :80]).all()
    beyond = bl.detection_bands(x, scored_from=500, hold_episodes=False, tail_margin=0)  # nothing scored: all days
    np.testing.assert_allclose(beyond.upper, ref.upper, rtol=2e-4, atol=1e-5, equal_nan=True)


# ------------------------------------------------------------- monthly patterns and open episodes (issue 16)

def _monthly(n: int = 40, d: int = 150, seed: int = 0) -> tuple[np.ndarray, pd.DatetimeIndex, np.ndarray]:
    """Weekly-shaped series whose last two days of every month run x1.4 (a month-end batch job)."""
    rng = np.random.default_rng(seed)
    days = pd.date_range("2026-06-01", periods=d, freq="D", tz="UTC")
    base = rng.uniform(50, 500, n)[:, None] * WEEK[days.dayofweek.to_numpy()][None, :]
    base *= np.exp(rng.normal(0, 0.04, (n, d)))
    month_end = np.asarray(days.days_in_month - days.day <= 1)
    return base * np.where(month_end, 1.4, 1.0), days, month_end


def test_month_end_pattern_seen_three_times_is_not_an_anomaly() -> None:
    x, days, month_end = _monthly()
    fourth = np.flatnonzero(month_end)[-2:]  # September's, after June, July and August
    learned = bl.detection_bands(x, scored_from=100, days=days)
    assert not (x[:, fourth] > learned.upper[:, fourth]).any()
    # without the calendar (the bands before monthly patterns) the same days are spikes
    plain = bl.detection_bands(x, scored_from=100)
    assert (x[:, fourth] > plain.upper[:, fourth]).mean() > 0.9
    # and learning them costs nothing on the other days
    other = ~month_end[100:]
    assert (x[:, 100:] > learned.upper[:, 100:])[:, other].mean() < 0.005


def test_the_same_jump_without_monthly_history_is_still_an_anomaly() -> None:
    x, days, _ = _monthly()
    mid = int(np.flatnonzero(np.asarray(days.day == 15))[-1])
    x[:, mid] *= 1.4
    b = bl.detection_bands(x, scored_from=100, days=days)
    flagged = x[:, mid] > b.upper[:, mid]
    assert flagged.mean() > 0.8  # the month-end pattern is learned for its own days only:
    np.testing.assert_array_equal(flagged, x[:, mid] > bl.detection_bands(x, scored_from=100).upper[:, mid])
    # a month-end job seen only once before is not yet a pattern
    y, days2, month_end2 = _monthly(d=75)  # June 1 to August 14: one month-end (June) before July's
    july = np.flatnonzero(month_end2)[2:4]
    once = y[:, july] > bl.detection_bands(y, scored_from=40, days=days2).upper[:, july]
    assert once.mean() > 0.8
    np.testing.assert_array_equal(once, y[:, july] > bl.detection_bands(y, scored_from=40).upper[:, july])


def test_a_persistent_step_stays_out_of_band_until_accepted() -> None:
    x, _ = _series(n=40, d=130, noise=0.04)
    x[:, 100:] *= 1.6  # a new level nobody planned, from day 100 to the end
    held = bl.detection_bands(x, scored_from=90)
    assert held.episode is not None and held.episode[:, 120:].all()
    assert (x[:, 120:] > held.upper[:, 120:]).mean() > 0.97  # 20 days later, still an incident
    np.testing.assert_allclose(held.expected[:, 120], held.expected[:, 99] * x[:, 120] / x[:, 120], rtol=0.2)
    # the two passes alone learned the level within about a week (the old behaviour)
    absorbed = bl.detection_bands(x, scored_from=90, hold_episodes=False)
    assert not (x[:, 120:] > absorbed.upper[:, 120:]).any()
    # planned: a mark on the step's first days makes the new level the baseline from then on
    accepted = np.zeros(x.shape, dtype=bool)
    accepted[:, 100:102] = True
    b = bl.detection_bands(x, scored_from=90, accepted=accepted)
    assert b.accepted is not None and b.accepted[:, 100].all() and not b.episode[:, 100:].any()
    assert not (x[:, 112:] > b.upper[:, 112:]).any()


def test_an_episode_ends_when_the_cost_is_back_in_its_band() -> None:
    x, _ = _series(n=40, d=130, noise=0.04)
    x[:, 100:110] *= 1.6
    b = bl.detection_bands(x, scored_from=90)
    assert b.episode is not None and b.episode[:, 100:110].all() and not b.episode[:, 112:].any()
    assert (x[:, 115:] > b.upper[:, 115:]).mean() < 0.01
