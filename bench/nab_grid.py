"""Grid search and split check for the usage-band detector on NAB realAWSCloudwatch.

    python bench/nab_grid.py [--data DIR] [--split] [--folds K] [--oracle] [--set name=value] [--grid name=v1,v2]

Every parameter set is scored over the whole corpus with the three NAB profiles (the same scorer and the
same onset rule as ``bench/nab.py``).  ``--grid`` sweeps the cartesian product of the given values on top
of the defaults (and ``--set``) and prints the best sets by standard score.  ``--split`` is the overfitting
check: the grid is searched on the even-indexed files (sorted by name) and the winner is scored on the odd
ones, then the other way round, next to what the corpus-wide winner and the defaults score on each half.
``--folds K`` is a second check that is not the odd/even split: files go to fold ``index % K`` (17 = leave one
file out), the grid is searched on the other folds and the winner scored on the held-out one; the held-out
raw scores of all folds are pooled into one normalized score.  ``--oracle`` prints the ceiling of a causal
detector: one detection at each labelled anomaly (NAB's label rows) and nothing else, on the whole corpus and on
each half, also without the windows the best parameter set misses (what catching everything else is worth).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nab import DEFAULT_DATA, THRESHOLD, parse_params
from bench.nab_scoring import PROFILE_NAMES, CostMatrix, load_profiles, load_windows, normalized, sweep_scores
from costwatch.usage_score import UsageScoreParams, episode_onsets, score_series

SHORT_PROFILE = {"standard": "std", "reward_low_FP_rate": "lowFP", "reward_low_FN_rate": "lowFN"}


@dataclass
class _File:
    name: str
    values: np.ndarray
    ts: pd.DatetimeIndex
    n_windows: int
    seen: list[int]  # window ids NAB can see (a row after probation)
    sweeps: dict[str, tuple[np.ndarray, np.ndarray]]  # profile -> (weighted, window_id)
    labels: list[int]  # label rows (NAB's combined_labels.json), -1 where the file has no such row


@dataclass
class Result:
    scores: dict[str, float]  # profile -> normalized score
    tp: int
    fn: int
    fp: int
    per_file: dict[str, float]  # standard raw score per file
    marks: dict[str, str]  # per file: detections as row:window-score, FP rows as row:FP
    raw: dict[str, float]  # profile -> raw score (what folds pool)


def load(data: Path) -> list[_File]:
    windows = load_windows(data)
    profiles = load_profiles(data)
    label_path = data / "combined_labels.json"
    labels = ({k.split("/", 1)[-1]: v for k, v in json.loads(label_path.read_text()).items()}
              if label_path.exists() else {})
    files = []
    for name in sorted(windows):
        df = pd.read_csv(data / name)
        ts = pd.DatetimeIndex(pd.to_datetime(df["timestamp"]))
        sweeps = {p: sweep_scores(ts, windows[name], profiles[p]) for p in PROFILE_NAMES}
        wid = sweeps["standard"][1]
        seen = sorted({int(w) for w in wid[wid >= 0]})
        rows = [int(np.searchsorted(ts, pd.Timestamp(t))) for t in labels.get(name, [])]
        files.append(_File(name, df["value"].to_numpy(dtype=float), ts, len(windows[name]), seen, sweeps,
                           [r if r < len(ts) and ts[r] == pd.Timestamp(t) else -1
                            for r, t in zip(rows, labels.get(name, []), strict=True)]))
    return files


_SCORES: dict[tuple[str, UsageScoreParams], np.ndarray] = {}


def onset_rows(f: _File, params: UsageScoreParams) -> np.ndarray:
    """Rows where an episode starts; memoized, as the splits score each file under each set several times."""
    key = (f.name, params)
    if key not in _SCORES:
        s = score_series(f.values, f.ts, params=params)
        _SCORES[key] = np.flatnonzero(episode_onsets(s, refractory=params.refractory, quiet=params.quiet,
                                                     threshold=THRESHOLD))
    return _SCORES[key]


def _profiles(data: Path) -> dict[str, CostMatrix]:
    p = load_profiles(data)
    return {k: p[k] for k in PROFILE_NAMES}


def evaluate(files: Sequence[_File], params: UsageScoreParams, costs: dict[str, CostMatrix]) -> Result:
    """The NAB normalized scores of one parameter set on ``files`` (same rules as ``bench/nab.py``)."""
    return evaluate_rows(files, {f.name: onset_rows(f, params) for f in files}, costs)


def evaluate_rows(files: Sequence[_File], detections: dict[str, np.ndarray], costs: dict[str, CostMatrix]) -> Result:
    """The NAB normalized scores of given detection rows per file."""
    raw = dict.fromkeys(costs, 0.0)
    tp = fn = fp = 0
    per_file: dict[str, float] = {}
    marks: dict[str, str] = {}
    n_windows = sum(f.n_windows for f in files)
    for f in files:
        rows = detections[f.name]
        for pname, cost in costs.items():
            weighted, wid = f.sweeps[pname]
            r = rows[wid[rows] != -2]
            best = {w: -cost.fn for w in f.seen}
            for i in r[wid[r] >= 0]:
                best[int(wid[i])] = max(best[int(wid[i])], float(weighted[i]))
            fps = r[wid[r] == -1]
            total = float(weighted[fps].sum()) + sum(best.values())
            raw[pname] += total
            if pname == "standard":
                per_file[f.name] = total
                hit = {int(w) for w in wid[r] if w >= 0}
                tp += len(hit)
                fn += len(f.seen) - len(hit)
                fp += len(fps)
                marks[f.name] = " ".join(f"{i}:FP" if wid[i] == -1 else f"{i}:w{wid[i]}={weighted[i]:.2f}"
                                         for i in r)
                missed = [w for w in f.seen if w not in hit]
                if missed:
                    marks[f.name] += f"  missed w{missed}"
    scores = {p: normalized(raw[p], n_windows, c) if n_windows else float("nan") for p, c in costs.items()}
    return Result(scores, tp, fn, fp, per_file, marks, raw)


def search(files: Sequence[_File], base: UsageScoreParams, grid: dict[str, list[Any]],
           costs: dict[str, CostMatrix]) -> list[tuple[UsageScoreParams, Result]]:
    """Every grid point scored on ``files``, best standard score first (ties: fewer changes from base)."""
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        p = dataclasses.replace(base, **dict(zip(keys, combo, strict=True)))
        out.append((p, evaluate(files, p, costs)))
    out.sort(key=lambda pr: -pr[1].scores["standard"])
    return out


def _fmt(r: Result) -> str:
    s = r.scores
    return (f"std {s['standard']:6.2f} lowFP {s['reward_low_FP_rate']:6.2f} lowFN {s['reward_low_FN_rate']:6.2f}"
            f"  TP {r.tp:2d} FN {r.fn:2d} FP {r.fp:2d}")


def _diff(p: UsageScoreParams, keys: Sequence[str]) -> str:
    return " ".join(f"{k}={getattr(p, k)}" for k in keys)


def folds(files: Sequence[_File], k: int, base: UsageScoreParams, grid: dict[str, list[Any]],
          costs: dict[str, CostMatrix]) -> None:
    """K-fold by file index: each fold scored with the set chosen on the others; held-out raw scores pooled."""
    keys = list(grid)
    pooled = dict.fromkeys(costs, 0.0)
    chosen_sets = []
    for i in range(k):
        test = [f for j, f in enumerate(files) if j % k == i]
        train = [f for j, f in enumerate(files) if j % k != i]
        if not test:
            continue
        chosen = search(train, base, grid, costs)[0][0]
        chosen_sets.append(_diff(chosen, keys))
        raw = evaluate(test, chosen, costs).raw
        for pname in costs:
            pooled[pname] += raw[pname]
    n_windows = sum(f.n_windows for f in files)
    scores = {p: normalized(pooled[p], n_windows, c) for p, c in costs.items()}
    print(f"\n{k}-fold by file (file i in fold i % {k}), held-out scores pooled: "
          + " ".join(f"{SHORT_PROFILE[p]} {v:6.2f}" for p, v in scores.items()))
    print("  chosen per fold: " + "; ".join(chosen_sets))


def _label_rows(files: Sequence[_File], skip: dict[str, set[int]]) -> dict[str, np.ndarray]:
    """Each file's label rows that lie in a scored window, without the windows in ``skip``."""
    rows = {}
    for f in files:
        wid = f.sweeps["standard"][1]
        rows[f.name] = np.array([r for r in f.labels if r >= 0 and wid[r] >= 0
                                 and int(wid[r]) not in skip.get(f.name, set())], dtype=np.int64)
    return rows


def oracle(files: Sequence[_File], best: Result, costs: dict[str, CostMatrix]) -> None:
    """Ceiling of a detector that fires once at each label (the anomaly's own row) and never elsewhere.

    Also without the windows the best set misses, and with each of those given back in turn: what finding
    that one window would be worth on each half.
    """
    missed = {name: {int(w) for w in m.split("missed w", 1)[1].strip("[]").split(",")}
              for name, m in best.marks.items() if "missed w" in m}
    parts = {"all": list(files), "even": list(files[0::2]), "odd": list(files[1::2])}

    def line(skip: dict[str, set[int]]) -> str:
        rows = _label_rows(files, skip)
        return "  ".join(f"{h} {evaluate_rows(fs, rows, costs).scores['standard']:6.2f}" for h, fs in parts.items())

    print(f"\noracle, every label: {line({})}")
    print(f"oracle, without the windows the best set misses: {line(missed)}")
    for name, ws in missed.items():
        for w in sorted(ws):
            back = {n: (v - {w} if n == name else v) for n, v in missed.items()}
            print(f"  ... and with {name} w{w} found: {line(back)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--set", nargs="*", default=[], help="name=value overrides of the defaults")
    ap.add_argument("--grid", nargs="*", default=[], help="name=v1,v2,... values to sweep")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--split", action="store_true", help="choose on even files, score odd ones, and back")
    ap.add_argument("--per-file", action="store_true", help="print the best set's standard score per file")
    ap.add_argument("--folds", type=int, default=0, help="also K-fold by file index (17: leave one file out)")
    ap.add_argument("--oracle", action="store_true", help="print the label-oracle ceiling per half")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    files = load(args.data)
    costs = _profiles(args.data)
    base = dataclasses.replace(UsageScoreParams(method="range"),  # the range score unless --set method=...
                               **{k: v[0] for k, v in parse_params(args.set, False).items()})
    grid = parse_params(args.grid, True) or {"refractory": [base.refractory]}
    keys = list(grid)
    ranked = search(files, base, grid, costs)
    print(f"{len(ranked)} parameter sets on {len(files)} files")
    for p, r in ranked[: args.top]:
        print(f"{_fmt(r)}  {_diff(p, keys)}")
    if args.per_file:
        for name, v in ranked[0][1].per_file.items():
            print(f"  {name:42s} {v:7.3f}  {ranked[0][1].marks[name]}")
    if args.split:
        halves = {"even": list(files[0::2]), "odd": list(files[1::2])}
        best_all = ranked[0][0]
        for train, test in (("even", "odd"), ("odd", "even")):
            chosen = search(halves[train], base, grid, costs)[0][0]
            print(f"\nchoose on {train} ({len(halves[train])} files): {_diff(chosen, keys)}")
            print(f"  on {train} (in-sample): {_fmt(evaluate(halves[train], chosen, costs))}")
            print(f"  on {test} (held out):  {_fmt(evaluate(halves[test], chosen, costs))}")
            print(f"  on {test}, corpus-wide choice: {_fmt(evaluate(halves[test], best_all, costs))}")
            print(f"  on {test}, base parameters:    {_fmt(evaluate(halves[test], base, costs))}")
    if args.folds:
        folds(files, args.folds, base, grid, costs)
    if args.oracle:
        oracle(files, ranked[0][1], costs)
    print(f"\n{time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
