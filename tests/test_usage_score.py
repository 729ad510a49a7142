"""The usage-band score: causal, bounded, fires once at the onset of a spike or level shift, quiet on noise."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from costwatch.usage_score import (
    TAIL_STEP,
    UsageScoreParams,
    _calibrated_block,
    _calibrated_views,
    _gpd_tail_logp,
    _tail_logp,
    episode_onsets,
    flagged_scores,
    onset_scores,
    score_matrix,
    score_series,
)

N = 3000
WARMUP = 450  # like NAB's probation: the band needs some history before it means anything
RANGE = UsageScoreParams(method="range")  # the NAB-tuned range score (the calibrated one is the default)
SMALL = UsageScoreParams(history=60, min_history=6, level_window=6, spread_window=8, rough_window=3, still_min=6,
                         refractory=20, quiet=2, method="range")


def _cpu(seed: int, n: int = N) -> np.ndarray:
    """CPU-like trace: daily shape at 5-minute spacing plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    daily = 30 + 10 * np.sin(2 * np.pi * t / 288)
    return np.clip(daily + rng.normal(0, 3, n), 0, 100)


def test_scores_are_in_unit_interval_and_finite() -> None:
    x = _cpu(1)
    x[1500] = 100.0
    s = score_series(x, params=RANGE)
    assert s.shape == x.shape
    assert np.all(np.isfinite(s))
    assert s.min() >= 0.0
    assert s.max() <= 1.0


def test_spike_is_detected_at_its_onset() -> None:
    x = _cpu(2)
    x[2000] = 95.0
    onsets = np.flatnonzero(episode_onsets(score_series(x, params=RANGE)))
    assert 2000 in onsets
    assert [i for i in onsets if i >= WARMUP] == [2000]


def test_level_shift_is_detected_once_at_its_onset() -> None:
    x = _cpu(3)
    x[2000:] += 45.0  # a miner pinning the node
    x = np.clip(x, 0, 100)
    scores = score_series(x, params=RANGE)
    onsets = [i for i in np.flatnonzero(episode_onsets(scores)) if i >= WARMUP]
    assert onsets and 2000 <= onsets[0] <= 2003
    assert len(onsets) == 1
    assert (scores[2000:2100] >= 0.5).sum() > 1  # the episode lasts, the onset helper makes it one alert


def test_downward_level_shift_is_detected() -> None:
    x = _cpu(4)
    x[2000:] = 2.0 + np.random.default_rng(0).normal(0, 0.3, N - 2000)
    onsets = [i for i in np.flatnonzero(episode_onsets(score_series(x, params=RANGE))) if i >= WARMUP]
    # a drop of ~0.6 band widths is not a spike; the short median carries it once half its window is down
    level_window = RANGE.level_window
    assert onsets == [i for i in onsets if 2000 <= i <= 2000 + level_window // 2]
    assert len(onsets) == 1


def test_stationary_noisy_series_gives_no_detection() -> None:
    for seed in range(5):
        s = score_series(_cpu(10 + seed), params=RANGE)
        assert not np.any(s[WARMUP:] >= 0.5), seed
    rng = np.random.default_rng(7)
    gaussian = 50 + rng.normal(0, 5, N)
    assert not np.any(score_series(gaussian, params=RANGE)[WARMUP:] >= 0.5)


def test_recurring_bursts_are_part_of_the_band() -> None:
    x = _cpu(5)
    for start in range(100, N, 400):  # a nightly batch job
        x[start:start + 30] = 95.0
    onsets = [i for i in np.flatnonzero(episode_onsets(score_series(x, params=RANGE))) if i >= WARMUP]
    assert onsets == []


def test_onset_scores_keep_one_detection_per_episode() -> None:
    scores = np.array([0.1, 0.7, 0.9, 0.8, 0.2, 0.6, 0.1, 0.1, 0.9])
    out = onset_scores(scores, refractory=5, quiet=0)
    assert list(np.flatnonzero(out >= 0.5)) == [1, 8]
    assert np.all(out[[2, 3, 5]] < 0.5)
    assert out[0] == 0.1
    assert episode_onsets(scores, refractory=0, quiet=0).tolist() == [False, True, True, True, False, True,
                                                                      False, False, True]


def test_an_episode_ends_only_after_quiet_rows() -> None:
    scores = np.array([0.9, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1, 0.9, 0.9])
    # refractory alone re-fires at 3; with quiet=3 the 2 low rows before it do not end the episode, the 3
    # before 7 do
    assert list(np.flatnonzero(episode_onsets(scores, refractory=1, quiet=0))) == [0, 3, 7]
    assert list(np.flatnonzero(episode_onsets(scores, refractory=1, quiet=3))) == [0, 7]
    assert list(np.flatnonzero(onset_scores(scores, refractory=1, quiet=4) >= 0.5)) == [0]


def test_new_step_rhythm_is_detected() -> None:
    """A flat series with rare one-off blips that starts to pulse: no new level, no new spread record."""
    for seed in (0, 3, 6):
        rng = np.random.default_rng(seed)
        x = 33.4 + rng.normal(0, 0.1, N)
        for i in range(100, 2000, 97):  # occasional lone blips, larger than the later pulses
            x[i] += 6.0 if i % 2 else -6.0
        x[2000::6] += 2.5  # from 2000 on, a small regular pulse every 30 minutes
        x[2003::6] += 2.5
        onsets = [i for i in np.flatnonzero(episode_onsets(score_series(x, params=RANGE))) if i >= WARMUP]
        assert len(onsets) == 1 and 2000 <= onsets[0] <= 2000 + RANGE.rough_window, seed
        no_shape = dataclasses.replace(RANGE, rough_window=0)
        assert not [i for i in np.flatnonzero(episode_onsets(score_series(x, params=no_shape))) if i >= WARMUP]


def test_stuck_value_is_detected_once_it_outlasts_every_still_run() -> None:
    """Bursty disk writes with idle stretches of up to 150 rows, then the writes stop for good."""
    rng = np.random.default_rng(12)
    x = np.zeros(N)
    t = 0
    while t < 2000:
        burst = int(rng.integers(5, 30))
        x[t:t + burst] = rng.uniform(1e6, 5e8, burst)
        t += burst + int(rng.integers(20, 150))
    last = int(np.flatnonzero(x[:2000])[-1])
    scores = score_series(x, params=RANGE)
    onsets = [i for i in np.flatnonzero(episode_onsets(scores)) if i >= WARMUP]
    assert onsets == [last + RANGE.still_min + 1]  # a day without a write, once
    # a series that never moved is not stuck, and its score stays low however long it lasts
    assert np.all(score_series(np.full(N, 7.0), params=RANGE) < 0.5)


def test_nan_gaps_are_tolerated() -> None:
    x = _cpu(6)
    x[1000:1012] = np.nan
    x[1500] = np.nan
    x[2000] = 95.0
    s = score_series(x, params=RANGE)
    assert np.all(np.isfinite(s))
    assert np.all(s[1000:1012] == s[1000:1012].clip(0, 0.5 - 1e-9))
    assert s[2000] >= 0.5


def test_timestamps_place_gaps_on_the_grid() -> None:
    x = _cpu(8)
    ts = pd.date_range("2014-01-01", periods=N, freq="5min")
    day = UsageScoreParams(season=288)  # what the timestamps tell: 288 five-minute rows a day
    assert np.allclose(score_series(x, ts), score_series(x, params=day))
    # drop a block of rows: scoring with timestamps equals scoring the gap as NaN samples
    keep = np.r_[0:1000, 1010:N]
    gapped = x.copy()
    gapped[1000:1010] = np.nan
    assert np.allclose(score_series(x[keep], ts[keep]), score_series(gapped, params=day)[keep])
    # repeated timestamps do not break anything
    dup = ts.insert(500, ts[500])
    assert score_series(np.insert(x, 500, x[500]), dup).shape == (N + 1,)


def test_score_matrix_equals_score_series_per_row() -> None:
    rng = np.random.default_rng(9)
    x = np.vstack([_cpu(20 + j, 800) * (1 + j) for j in range(5)])
    x[1, 300:320] = np.nan
    x[2, 500:] += 80
    x[3, 400] = 500
    x[4, :50] = np.nan
    x += rng.normal(0, 0.01, x.shape)
    x[0, 600:] = 42.0  # stuck: the stillness test holds the score up for as long as it lasts
    m = score_matrix(x, params=SMALL)
    assert np.all(m[0, 600 + SMALL.still_min + 1:] >= 0.5)

    for j in range(x.shape[0]):
        assert np.allclose(m[j], score_series(x[j], params=SMALL), equal_nan=False), j
    assert episode_onsets(m, refractory=20).shape == x.shape


# repeated values too, so that still runs (and their history) occur
VALUES = st.one_of(st.floats(-1e3, 1e3, allow_nan=False), st.sampled_from([0.0, 1.0, 100.0]))


@pytest.mark.parametrize("method", ["range", "calibrated"])
@settings(max_examples=30, deadline=None)
@given(
    values=arrays(np.float64, 120, elements=VALUES),
    cut=st.integers(1, 119),
    future=arrays(np.float64, 120, elements=VALUES),
)
def test_score_is_causal(method: str, values: np.ndarray, cut: int, future: np.ndarray) -> None:
    params = dataclasses.replace(SMALL, method=method)
    changed = values.copy()
    changed[cut:] = future[cut:]
    a = score_series(values, params=params)
    b = score_series(changed, params=params)
    assert np.allclose(a[:cut], b[:cut], rtol=1e-9, atol=1e-12)
    assert np.all((a >= 0) & (a <= 1))


# ------------------------------------------------------------------ calibrated: per-view tail p-values

CAL = UsageScoreParams(method="calibrated", history=500, min_history=24, level_window=12, spread_window=24,
                       rough_window=12, still_floor=48, refractory=50, quiet=12, alpha=1e-2)
CAL_WARMUP = 500
# about one false alarm per thousand rows at most; a longer history, so that the tail shape fit is stable
DETECT = dataclasses.replace(CAL, alpha=1e-3, history=1000)


def test_calibrated_appending_rows_keeps_past_scores() -> None:
    x = _cpu(30, 1500)
    full = score_series(x, params=CAL)
    assert np.array_equal(score_series(x[:900], params=CAL), full[:900])


def test_calibrated_false_alarm_rate_follows_alpha_whatever_the_scale_and_distribution() -> None:
    """iid noise of very different scales and shapes: rows at or above 0.5 occur at most at ~alpha.

    Bonferroni over the views makes light tails conservative; heavy tails (Student t with 3 degrees of
    freedom, lognormal, Pareto) come closest to the nominal rate."""
    rng = np.random.default_rng(0)
    m, n = 8, 1500
    noises = {
        "normal": rng.normal(50, 5, (m, n)),
        "laplace, large scale": rng.laplace(1e6, 3e4, (m, n)),
        "uniform, small scale": rng.uniform(0, 1e-3, (m, n)),
        "lognormal": rng.lognormal(3, 0.8, (m, n)),
        "student t3": 100 + rng.standard_t(3, (m, n)),
        "poisson counts": rng.poisson(20, (m, n)).astype(float),
        "pareto 1.5": rng.pareto(1.5, (m, n)),
    }
    rates = {}
    for name, x in noises.items():
        s = score_matrix(x, params=CAL)
        rates[name] = float((s[:, CAL_WARMUP:] >= 0.5).mean())
        # the time-of-day view (a "day" of 50 rows here) is one more calibrated view, not more alarms
        seasonal = score_matrix(x, params=dataclasses.replace(CAL, season=50, season_days=3))
        rates[f"{name}, time of day"] = float((seasonal[:, CAL_WARMUP:] >= 0.5).mean())
        # the same noise in other units scores the same: the calibration is the series' own
        assert np.allclose(score_matrix(x[:2] * 1000.0, params=CAL), s[:2], atol=1e-6), name
    assert all(r <= 1.5 * CAL.alpha for r in rates.values()), rates
    assert max(rates.values()) >= CAL.alpha / 10, rates  # not silent either


def _noise(seed: int, n: int = 2000) -> np.ndarray:
    return 100 + np.random.default_rng(seed).normal(0, 4, n)


def _cal_onsets(x: np.ndarray) -> list[int]:
    s = score_series(x, params=DETECT)
    return [int(i) for i in np.flatnonzero(episode_onsets(s, refractory=DETECT.refractory, quiet=DETECT.quiet))
            if i >= DETECT.history]


def test_calibrated_detects_injected_anomalies_at_their_onset() -> None:
    at = 1500
    cases = {}
    for seed in range(3):
        x = _noise(seed)
        x[at] += 40  # spike (10 sigma)
        cases[f"spike {seed}"] = x
        x = _noise(seed)
        x[at:] += 12  # level shift of 3 sigma
        cases[f"level shift {seed}"] = x
        x = _noise(seed)
        x[at:] = 100 + (x[at:] - 100) * 4  # variance change
        cases[f"noise x4 {seed}"] = x
        x = _noise(seed)
        x[at:] = x[at]  # stuck exporter
        cases[f"stuck {seed}"] = x
        # the same on a heavy-tailed, positive (bytes-like) series
        x = np.random.default_rng(seed).lognormal(10, 0.5, 2000)
        x[at:] *= 4
        cases[f"lognormal shift {seed}"] = x
    delay = {"spike": 0, "level shift": CAL.level_window, "noise x4": CAL.spread_window, "stuck": 4 * CAL.still_floor,
             "lognormal shift": CAL.level_window}
    early = 0
    for name, x in cases.items():
        onsets = _cal_onsets(x)
        kind = name.rsplit(" ", 1)[0]
        after = [i for i in onsets if i >= at]
        assert after and after[0] <= at + delay[kind], (name, onsets)
        assert len(after) <= 3, (name, onsets)
        early += len(onsets) - len(after)
    assert early <= 2  # false alarms before the anomaly: 15 series x 500 scored rows at alpha 1e-3
    # and nothing on the same noise without the anomaly
    assert not any(_cal_onsets(_noise(seed)) for seed in range(3))


def test_calibrated_recurring_bursts_and_daily_shape_are_part_of_the_band() -> None:
    x = _cpu(5, 2000)
    for start in range(100, 2000, 288):  # a nightly batch job
        x[start:start + 30] = 95.0
    assert _cal_onsets(x) == []
    assert all(not _cal_onsets(_cpu(40 + seed, 2000)) for seed in range(3))


def _daily_spikes(seed: int, days: int = 20, per_day: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """A quiet metric (0.13 +- 0.02) with one 1.5 spike a day within a row of the same time; and the spike rows."""
    rng = np.random.default_rng(seed)
    x = 0.13 + rng.normal(0, 0.02, days * per_day)
    spikes = np.arange(days) * per_day + 20 + rng.integers(-1, 2, days)
    x[spikes] = rng.uniform(1.4, 1.6, days)
    return x, spikes


def test_calibrated_time_of_day_view_finds_a_reading_off_its_usual_hour() -> None:
    """NAB's 24ae8d in small: 0.8 at an hour that never sees more than 0.2 is news, although the series
    reaches 1.5 every day; a view of the value alone cannot see it, the envelope of earlier days can."""
    per_day, at = 48, 18 * 48 + 35
    with_season = dataclasses.replace(DETECT, alpha=UsageScoreParams().alpha, season=per_day)
    without = dataclasses.replace(with_season, season=0)
    for seed in range(3):
        x, spikes = _daily_spikes(seed, per_day=per_day)
        s = score_series(x, params=with_season)
        assert not np.any(s[spikes[spikes > 8 * per_day]] >= 0.5), seed  # the daily spike is usual
        x[at] = 0.8
        assert score_series(x, params=with_season)[at] >= 0.5, seed
        assert score_series(x, params=without)[at] < 0.5, seed


def test_calibrated_time_of_day_follows_the_timestamps() -> None:
    """season=-1 reads rows per day from the timestamps: hourly rows get a 24-row day; a step that does not
    divide a day gets no time-of-day view."""
    x, _ = _daily_spikes(4, per_day=24)
    x[18 * 24 + 9] = 0.6
    hourly = pd.date_range("2026-01-01", periods=x.size, freq="h")
    auto = dataclasses.replace(DETECT, history=400)
    assert np.array_equal(score_series(x, hourly, params=auto),
                          score_matrix(x[None, :], params=dataclasses.replace(auto, season=24))[0])
    # the default parameters read the timestamps the same way
    assert np.array_equal(score_series(x, hourly),
                          score_matrix(x[None, :], params=UsageScoreParams(season=24))[0])
    odd_step = pd.date_range("2026-01-01", periods=x.size, freq="7min")
    assert np.array_equal(score_series(x, odd_step, params=auto),
                          score_matrix(x[None, :], params=dataclasses.replace(auto, season=0))[0])


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="method"):
        UsageScoreParams(method="magic")


def test_calibrated_needs_enough_history_for_its_tail_fit() -> None:
    """With a dozen rows no tail can be estimated: noise right after the start is not an anomaly.

    A view scores once its history reaches ten times beyond its reference quantile (200 rows at tail 0.05)."""
    rng = np.random.default_rng(3)
    params = dataclasses.replace(CAL, history=300, min_history=12)
    noise = 100 + rng.normal(0, 3, (20, 300))
    x = noise.copy()
    x[:, 100] += 50  # even a large spike: a hundred rows cannot tell how rare it is
    assert not np.any(score_matrix(x, params=params)[:, :200] >= 0.5)
    x = noise.copy()
    x[:, 250] += 50  # with 250 rows they can
    assert np.all(score_matrix(x, params=params)[:, 250] >= 0.5)


# ------------------------------------------------------------------ pinned output (issue 16 speed work)

# the hourly CPU windows detect uses, and short windows that reach every test within a few hundred rows (range)
PINNED_PARAMS = {
    "hourly": UsageScoreParams(history=336, min_history=48, level_window=2, spread_window=4, rough_window=4,
                               still_min=24, refractory=12, quiet=2, method="range"),
    "small": UsageScoreParams(history=120, min_history=12, level_window=6, spread_window=8, rough_window=5,
                              still_min=10, refractory=20, quiet=2, method="range"),
}


def pinned_input(n: int = 320, t: int = 720, seed: int = 16) -> np.ndarray:
    """Seeded series x hours of the shapes a node's CPU takes: daily shape and noise, spikes, level shifts,
    pinned and throttled miners, stuck values, rounded (repeating) values, gaps, nodes that start late or
    stop, constant and all-missing series."""
    rng = np.random.default_rng(seed)
    h = np.arange(t)
    shape = 0.3 + 0.7 * np.clip(np.sin((h % 24 - 6) / 24 * 2 * np.pi), 0, None)
    x = rng.uniform(5, 60, n)[:, None] * shape[None, :] + rng.normal(0, 1, (n, 1)) * rng.normal(0, 3, (n, t))
    kind = np.arange(n) % 10
    at = rng.integers(t // 3, t - 40, n)
    for i in range(n):
        a = int(at[i])
        if kind[i] == 1:
            x[i, a] += rng.uniform(20, 80)  # one spike
        elif kind[i] == 2:
            x[i, a:] += rng.uniform(-20, 40)  # a level shift, either way
        elif kind[i] == 3:
            x[i, a:] = 99.0 + rng.normal(0, 0.3, t - a)  # pinned miner
        elif kind[i] == 4:
            x[i, a:] = np.maximum(x[i, a:], 60 + rng.normal(0, 0.8, t - a))  # throttled miner
        elif kind[i] == 5:
            x[i, a: a + int(rng.integers(20, 200))] = x[i, a]  # stuck value
        elif kind[i] == 6:
            x[i] = np.round(x[i])  # coarse values: ties and repeats
        elif kind[i] == 7:
            x[i, rng.uniform(size=t) < rng.uniform(0.01, 0.2)] = np.nan  # gappy exports
        elif kind[i] == 8:
            x[i, : int(rng.integers(1, t // 2))] = np.nan  # a node that started late
            x[i, a + 5:] = np.nan if i % 20 == 8 else x[i, a + 5:] * 1.5  # ... and stopped, or stepped up
        elif kind[i] == 9:
            x[i, a: a + 30] = x[i, a: a + 30] * rng.uniform(2, 4) + rng.normal(0, 15, 30)  # oscillation
    x[0] = 42.0  # never moved
    x[10] = np.nan  # never reported
    x[20, 300:] = 0.0  # stopped for good
    x[30, 100] = np.inf  # a broken sample
    return np.clip(x, -50, None)


@pytest.mark.parametrize("name", sorted(PINNED_PARAMS))
def test_scores_match_the_output_pinned_before_the_speed_work(name: str) -> None:
    """tests/data/usage_score_pinned.npz was written by the pandas implementation (before costwatch/rolling.py):
    the same samples at or above 0.5, the same scores there, and the same row sums of every score."""
    pinned = np.load(Path(__file__).parent / "data" / "usage_score_pinned.npz")
    x = pinned_input()
    s = score_matrix(x, params=PINNED_PARAMS[name])
    rows, cols = np.nonzero(s >= 0.5)
    assert np.array_equal(rows, pinned[f"{name}_rows"]) and np.array_equal(cols, pinned[f"{name}_cols"])
    assert np.allclose(s[rows, cols], pinned[f"{name}_scores"], rtol=1e-12, atol=0)
    assert np.allclose(s.sum(axis=1), pinned[f"{name}_rowsum"], rtol=1e-12, atol=1e-12)


# the fast path's parameter sets: the pinned ones (range), the same windows calibrated, and 5-minute-like windows
FAST_PARAMS = {
    **PINNED_PARAMS,
    "hourly calibrated": dataclasses.replace(PINNED_PARAMS["hourly"], method="calibrated", season=24),
    "small calibrated": dataclasses.replace(PINNED_PARAMS["small"], method="calibrated"),
    "5-minute calibrated": dataclasses.replace(CAL, history=300, min_history=12, alpha=2e-3),
    "5-minute calibrated, time of day": dataclasses.replace(CAL, history=300, min_history=12, alpha=2e-3, season=30,
                                                            season_days=3, season_jitter=2),
    "5-minute calibrated, std spread, exponential tails": dataclasses.replace(
        CAL, history=300, min_history=12, alpha=2e-3, robust_spread=False, gpd=False),
}
CALIBRATED_FAST = sorted(name for name, p in FAST_PARAMS.items() if p.method == "calibrated")


@pytest.mark.parametrize("name", sorted(FAST_PARAMS))
def test_flagged_scores_are_the_departures_of_score_matrix(name: str) -> None:
    """The fast path detect uses: every sample score_matrix puts at or above 0.5, with its score; 0 elsewhere."""
    x = pinned_input()
    p = FAST_PARAMS[name]
    s = score_matrix(x, params=p)
    f = flagged_scores(x, params=p, workers=2)
    assert np.array_equal(f >= 0.5, s >= 0.5)
    # exact but for the rolling standard deviation (two-pass here, Welford in pandas): ~1e-12 relative
    assert np.allclose(f, np.where(s >= 0.5, s, 0.0), rtol=1e-10, atol=0)
    assert (f >= 0.5).sum() > 1000  # the input does depart: spikes, shifts, miners, stuck values
    # blocks of series give the same answer as one call, and onsets follow
    assert np.array_equal(flagged_scores(x[:7], params=p), f[:7])
    assert np.array_equal(episode_onsets(f, refractory=p.refractory, quiet=p.quiet),
                          episode_onsets(s, refractory=p.refractory, quiet=p.quiet))


def test_flagged_scores_falls_back_where_a_threshold_does_not_bound_it() -> None:
    x = pinned_input(n=40, t=300)
    for p in (dataclasses.replace(SMALL, spike_threshold=0.0), dataclasses.replace(CAL, history=100),
              dataclasses.replace(CAL, history=250, alpha=0.05), dataclasses.replace(CAL, tail=0.5)):
        s = score_matrix(x, params=p)
        assert np.array_equal(flagged_scores(x, params=p), np.where(s >= 0.5, s, 0.0))
    # why: with alpha / n_views above 1/(history+1) a value inside its range can score, and the calibrated
    # fast path alone (statistics outside their range only) would miss it
    p = dataclasses.replace(CAL, history=250, alpha=0.3)
    s = score_matrix(x, params=p)
    assert ((s >= 0.5) & (_calibrated_block(x, p) == 0)).any()


def _heavy_gappy_input(t: int, seed: int = 5) -> np.ndarray:
    """Heavy-tailed and count series with NaN gaps, stuck stretches, a late start, infinities and repeats."""
    rng = np.random.default_rng(seed)
    m = 12
    kinds = [rng.pareto(1.5, (m, t)), rng.lognormal(3, 1.0, (m, t)), 100 + rng.standard_t(3, (m, t)),
             rng.poisson(3, (m, t)).astype(float), rng.laplace(1e6, 3e4, (m, t)), 1e-3 * rng.uniform(size=(m, t))]
    x = np.vstack(kinds)
    x[rng.uniform(size=x.shape) < 0.05] = np.nan  # scattered gaps
    for i in range(0, x.shape[0], 3):
        a = int(rng.integers(0, t - 20))
        x[i, a: a + int(rng.integers(5, 120))] = np.nan if i % 2 else x[i, a]  # an outage, or a stuck value
    x[1, : t // 2] = np.nan  # a late start
    x[2, t // 3] = np.inf
    x[4, t // 2:] += 5 * np.nanstd(x[4])  # a level shift on a heavy tail
    return x


@pytest.mark.parametrize("name", CALIBRATED_FAST)
@pytest.mark.parametrize("t", [150, 260, 700])
def test_calibrated_flagged_scores_on_heavy_tails_gaps_and_short_series(name: str, t: int) -> None:
    """Short series (no tail yet at 150 rows), NaN gaps, stuck values and heavy tails: the same departures."""
    p = FAST_PARAMS[name]
    x = _heavy_gappy_input(t)
    s = score_matrix(x, params=p)
    f = flagged_scores(x, params=p, workers=2)
    assert np.array_equal(f >= 0.5, s >= 0.5)
    assert np.allclose(f, np.where(s >= 0.5, s, 0.0), rtol=1e-9, atol=0)
    if t > 200:  # before 200 rows of history only stillness can score
        assert (f >= 0.5).sum() > 10


@pytest.mark.parametrize("robust_spread", [True, False])
def test_every_calibrated_view_computes_the_same_statistic_on_both_paths(robust_spread: bool) -> None:
    """A view's pandas statistic (score_matrix) and its block statistic (flagged_scores) agree."""
    x = _heavy_gappy_input(300)
    for params in (FAST_PARAMS["hourly calibrated"], CAL):
        p = dataclasses.replace(params, robust_spread=robust_spread)
        views = _calibrated_views(p)
        assert len(views) == (7 if p.season > 0 else 5)  # the time of day is two views (its own statistics)
        for v in views:
            expect = v.frame(pd.DataFrame(x.T)).to_numpy().T
            if robust_spread or v.up != "spread_up":
                assert np.array_equal(v.block(x), expect, equal_nan=True), v.names
            else:  # two-pass here, Welford in pandas (which drifts by ~1e-10 after a heavy tail's outliers)
                assert np.allclose(v.block(x), expect, rtol=1e-9, atol=1e-12, equal_nan=True), v.names


def test_a_statistic_inside_its_historical_range_has_a_bounded_tail_probability() -> None:
    """The bound flagged_scores rests on: at most at the historical max, the tail p-value is at least
    min(1/(n+1), tail / (1.5 TAIL_STEP)) (generalized Pareto) or min(1/n, tail / e) (exponential)."""
    rng = np.random.default_rng(1)
    k, tail = 20000, 0.05
    med = rng.normal(0, 1, k)
    q = med + rng.exponential(1, k) * (rng.uniform(size=k) < 0.9)
    q2 = q + rng.exponential(1, k) * (rng.uniform(size=k) < 0.9)
    ext = q2 + rng.exponential(5, k) * (rng.uniform(size=k) < 0.9)
    n = rng.integers(int(TAIL_STEP / tail), 5000, k).astype(float)
    floor = rng.exponential(0.01, k)
    for s in (ext, q + (ext - q) * rng.uniform(size=k), med + (q - med) * rng.uniform(size=k)):
        gpd = _gpd_tail_logp(s, med, q, q2, ext, n, tail, floor)
        assert np.all(gpd >= np.log(np.minimum(1 / (n + 1), tail / (1.5 * TAIL_STEP))) - 1e-12)
        expo = _tail_logp(s, med, q, ext, n, tail, floor)
        assert np.all(expo >= np.log(np.minimum(1 / n, tail / np.e)) - 1e-12)
    # and the bound is tight: a heavy history puts its max right at it
    gpd = _gpd_tail_logp(ext, med, q, q2, ext, n, tail, floor)
    assert np.min(gpd - np.log(np.minimum(1 / (n + 1), tail / (1.5 * TAIL_STEP)))) < 1e-6
