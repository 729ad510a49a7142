"""A re-implementation of the Numenta Anomaly Benchmark scorer (NAB v1.1 ``sweeper.py`` semantics).

We need NAB numbers for costwatch's usage-band detector without vendoring NAB (AGPL code, Python 2 era
dependencies), so the scoring rules are re-implemented here from the benchmark's documentation and
checked against hand-computed cases in ``tests/test_nab_scoring.py``.  Details that move the score and
that we copy on purpose from the official scorer:

* rows inside the probationary period (``min(floor(0.15 n), 750)``) are dropped entirely, detections
  there neither help nor cost;
* windows are matched to rows by timestamp (first occurrence when timestamps repeat), a window is
  entered on the row whose timestamp equals its start and left after the row equal to its end;
* a detection is a row whose anomaly score is ``>= threshold``;
* each window keeps only its best (earliest) detection, a window without one costs ``-A_FN``;
* a detection outside every window costs ``A_FP * ss(|i - R_prev| / (W_prev - 1))`` after a window and
  ``-A_FP`` before the first one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

WINDOW_KEY_PREFIX = "realAWSCloudwatch/"
PROFILE_NAMES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


@dataclass(frozen=True)
class CostMatrix:
    tp: float
    fn: float
    fp: float


@dataclass
class FileScore:
    name: str
    raw: float  # sum of window parts and FP costs
    n_windows: int
    tp: int  # windows with at least one detection
    fn: int  # windows without a detection
    fp: int  # detections outside every window (after probation)
    fp_cost: float
    window_scores: list[float] = field(default_factory=list)
    detections: list[int] = field(default_factory=list)  # scored detection rows


def scaled_sigmoid(y: float) -> float:
    """NAB's reward curve: +0.987 at a window's left edge, 0 at its right edge, -1 far after it."""
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_length(n_rows: int, percent: float = 0.15) -> int:
    """Rows a detector may use to learn before NAB scores it (capped at 750 like NAB's 15% of 5000)."""
    return int(min(math.floor(percent * n_rows), percent * 5000))


def load_windows(data_dir: Path) -> dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    """Windows keyed by bare file name, so callers need not know NAB's corpus directory layout.

    ``data_dir`` is a directory holding ``combined_windows.json`` or such a JSON file itself.
    """
    path = data_dir if data_dir.is_file() else data_dir / "combined_windows.json"
    raw = json.loads(path.read_text())
    out: dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]] = {}
    for key, wins in raw.items():
        name = key.split("/", 1)[1] if "/" in key else key
        out[name] = [(pd.Timestamp(a), pd.Timestamp(b)) for a, b in wins]
    return out


def load_profiles(data_dir: Path) -> dict[str, CostMatrix]:
    raw = json.loads((data_dir / "profiles.json").read_text())
    return {
        name: CostMatrix(tp=float(p["CostMatrix"]["tpWeight"]), fn=float(p["CostMatrix"]["fnWeight"]),
                         fp=float(p["CostMatrix"]["fpWeight"]))
        for name, p in raw.items()
    }


def sweep_scores(timestamps: Sequence[pd.Timestamp] | pd.DatetimeIndex | pd.Series,
                 windows: Iterable[tuple[pd.Timestamp, pd.Timestamp]],
                 cost: CostMatrix) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the weighted score a detection there would earn, and its window id (-1 outside, -2 probation).

    Kept as a per-row walk (a few thousand rows per file) because the window state machine, entered and
    left by exact timestamp equality, is what NAB does and is easiest to audit this way.
    """
    ts = list(pd.DatetimeIndex(pd.to_datetime(pd.Series(list(timestamps)))))
    n = len(ts)
    pending = list(windows)
    first_index: dict[pd.Timestamp, int] = {}
    for i, t in enumerate(ts):
        first_index.setdefault(t, i)
    max_tp = scaled_sigmoid(-1.0)
    probation = probation_length(n)
    weighted = np.zeros(n)
    window_id = np.full(n, -1, dtype=np.int64)
    cur: tuple[pd.Timestamp, pd.Timestamp] | None = None
    cur_id = -1
    cur_right = 0
    cur_width = 0.0
    prev_right: int | None = None
    prev_width = 0.0
    next_id = 0
    for i, t in enumerate(ts):
        if pending and t == pending[0][0]:
            cur = pending.pop(0)
            cur_id = next_id
            next_id += 1
            cur_right = first_index[cur[1]]
            cur_width = float(cur_right - first_index[cur[0]] + 1)
        if cur is not None:
            y = -(cur_right - i + 1) / cur_width
            weighted[i] = scaled_sigmoid(y) * cost.tp / max_tp
            window_id[i] = cur_id
        else:
            y = 3.0 if prev_right is None else abs(prev_right - i) / (prev_width - 1.0)
            weighted[i] = scaled_sigmoid(y) * cost.fp
        if i < probation:
            window_id[i] = -2
        if cur is not None and t == cur[1]:
            prev_right = i
            prev_width = cur_width
            cur = None
            cur_id = -1
    return weighted, window_id


def score_file(name: str, timestamps: Sequence[pd.Timestamp] | pd.DatetimeIndex | pd.Series,
               anomaly_scores: np.ndarray, windows: Sequence[tuple[pd.Timestamp, pd.Timestamp]],
               cost: CostMatrix, threshold: float = 0.5) -> FileScore:
    """Raw NAB score of one file at one threshold (what NAB's sweep reports for that threshold)."""
    scores = np.asarray(anomaly_scores, dtype=float)
    weighted, window_id = sweep_scores(timestamps, windows, cost)
    if len(scores) != len(weighted):
        raise ValueError(f"{name}: {len(scores)} anomaly scores for {len(weighted)} timestamps")
    scorable = window_id != -2
    # windows NAB can see: those with at least one row after probation
    seen = sorted({int(w) for w in window_id[scorable] if w >= 0})
    best = {w: -cost.fn for w in seen}
    detected = scorable & (scores >= threshold)
    rows = np.flatnonzero(detected)
    fp_rows = rows[window_id[rows] == -1]
    fp_cost = float(weighted[fp_rows].sum())
    for r in rows[window_id[rows] >= 0]:
        w = int(window_id[r])
        best[w] = max(best[w], float(weighted[r]))
    tp = len({int(w) for w in window_id[rows] if w >= 0})
    return FileScore(name=name, raw=fp_cost + sum(best.values()), n_windows=len(list(windows)), tp=tp,
                     fn=len(seen) - tp, fp=len(fp_rows), fp_cost=fp_cost,
                     window_scores=[best[w] for w in seen], detections=[int(r) for r in rows])


def normalized(raw_total: float, n_windows: int, cost: CostMatrix) -> float:
    """100 for a detector that hits every window at its left edge with no FP, 0 for one that never fires."""
    null = -cost.fn * n_windows
    perfect = cost.tp * n_windows
    return 100.0 * (raw_total - null) / (perfect - null)


@dataclass
class CorpusScore:
    profile: str
    normalized: float
    raw: float
    files: list[FileScore]


def score_corpus(results: Mapping[str, tuple[Sequence[pd.Timestamp] | pd.DatetimeIndex | pd.Series, np.ndarray]],
                 windows: Mapping[str, Sequence[tuple[pd.Timestamp, pd.Timestamp]]],
                 profiles: Mapping[str, CostMatrix], threshold: float = 0.5) -> dict[str, CorpusScore]:
    """Normalized score per profile over all files, with one threshold for the whole corpus."""
    out: dict[str, CorpusScore] = {}
    n_windows = sum(len(windows.get(name, [])) for name in results)
    for pname, cost in profiles.items():
        files = [score_file(name, ts, sc, windows.get(name, []), cost, threshold)
                 for name, (ts, sc) in sorted(results.items())]
        raw = sum(f.raw for f in files)
        out[pname] = CorpusScore(pname, normalized(raw, n_windows, cost), raw, files)
    return out
