"""The NAB scorer re-implementation against hand-computed cases, so bench numbers mean what NAB means.

Layout used throughout: 100 rows at 5 minutes (probation = floor(0.15 * 100) = 15 rows), window A on rows
40..59 (width 20), window B on rows 80..89 (width 10).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nab_scoring import (
    CostMatrix,
    load_profiles,
    load_windows,
    normalized,
    probation_length,
    scaled_sigmoid,
    score_corpus,
    score_file,
)

TS = pd.date_range("2014-01-01", periods=100, freq="5min")
WINDOWS = [(TS[40], TS[59]), (TS[80], TS[89])]
STANDARD = CostMatrix(tp=1.0, fn=1.0, fp=0.11)
LOW_FN = CostMatrix(tp=1.0, fn=2.0, fp=0.11)
NAB_DIR = Path("/work/shared/data/nab")


def _detect(*rows: int, n: int = 100) -> np.ndarray:
    s = np.zeros(n)
    s[list(rows)] = 1.0
    return s


def _raw(*rows: int, cost: CostMatrix = STANDARD) -> float:
    return score_file("f", TS, _detect(*rows), WINDOWS, cost).raw


def test_scaled_sigmoid_anchor_points() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(3.0) == -1.0


def test_probation_length() -> None:
    assert probation_length(100) == 15
    assert probation_length(4032) == 604
    assert probation_length(10_000) == 750


def test_perfect_detector_scores_100_and_null_scores_0() -> None:
    perfect = _raw(40, 80)
    assert perfect == pytest.approx(2.0)
    assert normalized(perfect, 2, STANDARD) == pytest.approx(100.0)
    null = _raw()
    assert null == pytest.approx(-2.0)
    assert normalized(null, 2, STANDARD) == pytest.approx(0.0)
    assert _raw(cost=LOW_FN) == pytest.approx(-4.0)
    assert normalized(_raw(cost=LOW_FN), 2, LOW_FN) == pytest.approx(0.0)


def test_detection_at_window_start_scores_a_tp() -> None:
    f = score_file("f", TS, _detect(40), WINDOWS, STANDARD)
    assert f.window_scores == pytest.approx([1.0, -1.0])
    assert (f.tp, f.fn, f.fp) == (1, 1, 0)


def test_late_detection_scores_less_than_early() -> None:
    # row 55: y = -(59 - 55 + 1) / 20 = -0.25 -> ss(-0.25) / ss(-1) = 0.562124
    assert _raw(55) == pytest.approx(0.562124 - 1.0, abs=1e-6)
    # row 45: y = -0.75 -> 0.966989
    assert _raw(45) == pytest.approx(0.966989 - 1.0, abs=1e-6)
    # the last row of a window still earns a little: y = -1/20 -> 0.126040
    assert _raw(59) == pytest.approx(0.126040 - 1.0, abs=1e-6)


def test_only_the_best_detection_in_a_window_counts() -> None:
    assert _raw(40, 45, 50, 55) == pytest.approx(_raw(40))


def test_fp_before_first_window_costs_a_fp() -> None:
    assert _raw(20) - _raw() == pytest.approx(-0.11)
    f = score_file("f", TS, _detect(20, 30), WINDOWS, STANDARD)
    assert f.fp == 2
    assert f.fp_cost == pytest.approx(-0.22)


def test_fp_after_a_window_is_scored_from_its_right_edge() -> None:
    # row 65: |65 - 59| / (20 - 1) = 6/19 -> 0.11 * ss(0.315789) = 0.11 * -0.658111
    assert _raw(65) - _raw() == pytest.approx(0.11 * -0.658111, abs=1e-6)
    # after window B the distance is measured from B: |99 - 89| / 9 -> 0.11 * ss(1.111) = 0.11 * -0.992302
    assert _raw(99) - _raw() == pytest.approx(0.11 * scaled_sigmoid(10 / 9))
    assert scaled_sigmoid(10 / 9) == pytest.approx(-0.99230, abs=1e-5)


def test_probationary_detections_are_ignored() -> None:
    assert _raw(3, 14) == pytest.approx(_raw())
    assert _raw(15) == pytest.approx(_raw() - 0.11)


def test_threshold_is_inclusive() -> None:
    scores = np.zeros(100)
    scores[40] = 0.5
    scores[80] = 0.4999
    f = score_file("f", TS, scores, WINDOWS, STANDARD, threshold=0.5)
    assert f.window_scores == pytest.approx([1.0, -1.0])


def test_windows_match_the_first_of_repeated_timestamps() -> None:
    ts = list(TS)
    ts.insert(41, TS[40])  # a zero-second step inside window A, as in two NAB files
    scores = np.zeros(101)
    scores[41] = 1.0  # the repeated row sits one row after the window's start row
    f = score_file("f", ts, scores, WINDOWS, STANDARD)
    # window A is rows 40..60 (width 21) now; row 41 -> y = -(60 - 41 + 1) / 21
    expected = scaled_sigmoid(-20 / 21) / scaled_sigmoid(-1.0)
    assert f.window_scores[0] == pytest.approx(expected)
    assert math.isclose(expected, 0.99, abs_tol=0.02)


def test_file_without_windows_only_pays_for_fps() -> None:
    f = score_file("f", TS, _detect(50, 60), [], STANDARD)
    assert f.raw == pytest.approx(-0.22)
    assert (f.tp, f.fn, f.fp) == (0, 0, 2)


def test_score_corpus_normalizes_over_all_windows() -> None:
    results = {"a.csv": (TS, _detect(40, 80)), "b.csv": (TS, _detect())}
    windows = {"a.csv": WINDOWS, "b.csv": WINDOWS}
    out = score_corpus(results, windows, {"standard": STANDARD, "low_fn": LOW_FN})
    # S = 2 - 2 = 0 of 4 windows: (0 + 4) / (4 + 4) = 50 ; low FN: (2 - 4 + 8) / (4 + 8) = 50
    assert out["standard"].normalized == pytest.approx(50.0)
    assert out["low_fn"].normalized == pytest.approx(50.0)


@pytest.mark.skipif(not NAB_DIR.exists(), reason="NAB data not available")
def test_real_corpus_null_and_perfect_detectors() -> None:
    windows = load_windows(NAB_DIR)
    profiles = load_profiles(NAB_DIR)
    assert sum(len(w) for w in windows.values()) == 30
    null: dict[str, tuple[pd.Series, np.ndarray]] = {}
    perfect: dict[str, tuple[pd.Series, np.ndarray]] = {}
    for name, wins in windows.items():
        ts = pd.to_datetime(pd.read_csv(NAB_DIR / name, usecols=["timestamp"])["timestamp"])
        null[name] = (ts, np.zeros(len(ts)))
        hit = np.zeros(len(ts))
        for start, _ in wins:
            hit[int(np.flatnonzero(ts == start)[0])] = 1.0
        perfect[name] = (ts, hit)
    for profile, result in score_corpus(null, windows, profiles).items():
        assert result.normalized == pytest.approx(0.0), profile
    for profile, result in score_corpus(perfect, windows, profiles).items():
        assert result.normalized == pytest.approx(100.0), profile


@pytest.mark.skipif(not NAB_DIR.exists(), reason="NAB data not available")
def test_grid_evaluator_agrees_with_the_scorer_on_the_label_oracle() -> None:
    """bench/nab_grid.py scores detection rows with its own fast loop (and pools them across folds); it must
    give what the reference scorer gives, on every profile, for the whole corpus and for a half."""
    from bench.nab_grid import _label_rows, evaluate_rows, load

    files = load(NAB_DIR)
    profiles = load_profiles(NAB_DIR)
    windows = load_windows(NAB_DIR)
    # labels, plus one false positive per file a fixed distance after the probation period
    rows = {name: np.union1d(r, [900]) for name, r in _label_rows(files, {}).items()}
    for subset in (files, files[1::2]):
        fast = evaluate_rows(subset, rows, profiles)
        results = {}
        for f in subset:
            hit = np.zeros(len(f.ts))
            hit[rows[f.name]] = 1.0
            results[f.name] = (pd.Series(f.ts), hit)
        ref = score_corpus(results, windows, profiles)
        for profile in profiles:
            assert fast.scores[profile] == pytest.approx(ref[profile].normalized), profile
            assert fast.raw[profile] == pytest.approx(ref[profile].raw), profile
    assert 0 < evaluate_rows(files, rows, profiles).fp <= len(files)
