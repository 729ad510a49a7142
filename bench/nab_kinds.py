"""Labelled series of kinds the NAB realAWSCloudwatch corpus does not have, scored like NAB.

    python bench/nab_kinds.py generate --seed 101 --n 60 --out /tmp/kinds-101
    python bench/nab_kinds.py score /tmp/kinds-101 [/tmp/kinds-102 ...] [--set name=value]
    python bench/nab.py --data /tmp/kinds-101 --out /tmp/kinds-101-scored      # the same files, one method

Why: the usage score's constants were chosen on 17 AWS CloudWatch files, and NAB's other real corpora
(traffic, temperatures, tweet volumes, ad exchange) are not on this box (no internet).  Held-out seeds of this
generator are the closest we can get to "series kinds nobody tuned on": a check of generalisation, not a
replacement for real data (the kinds and anomaly sizes are this file's assumptions).

Series kinds (``KINDS``): web traffic / request rates (daily and weekly cycle, multiplicative noise), temperatures
(slow drift, daily cycle, AR(1) noise), counts (Poisson with a daily cycle and unlabelled natural bursts, like
tweet volumes), flat-ish metrics with noise (some quantized), and random walks; spacing 5 minutes to 1 hour.
Anomalies (``ANOMALIES``, NAB's kinds): spikes, dips, level shifts up and down, flatlines (a stuck value or a
dead exporter at 0), noise-variance changes and shape changes (the daily cycle at another frequency, or a pulse
on a series without a cycle).  Invariants:

* every series is generated from ``(seed, index)`` alone, so a seed is a fixed, reproducible corpus;
* labels are NAB's: the anomaly's first row is the label, and its window, centred on the label, is
  ``0.1 * n / anomalies`` rows wide (NAB's 10 % of the file split over its anomalies); windows never overlap and
  each anomaly ends before the next window; 10 % of series have no anomaly (and no window);
* labels lie in the last 80 % of a series, after NAB's probation (15 %) and enough history for a band;
* files are NAB's layout (``timestamp,value`` CSVs, ``combined_windows.json``, ``combined_labels.json``,
  ``profiles.json``) plus ``kinds.json`` (series kind, spacing and the anomaly kind of each window).

``score`` prints the NAB normalized scores (our scorer, ``bench/nab_scoring.py``, one threshold per corpus)
of the range score, the calibrated score and a trivial baseline (a rolling z-score against the previous day
at a fixed threshold, with the same onset rule), overall, per series kind and the share of windows found per
anomaly kind.  Seeds 1-9 were used while building this file; report on others.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nab import THRESHOLD, parse_params
from bench.nab_grid import Result, _File, _profiles, evaluate_rows, load, onset_rows
from costwatch.usage_score import UsageScoreParams, episode_onsets

KINDS = ("traffic", "temperature", "counts", "flat", "walk")
ANOMALIES = ("spike", "dip", "shift_up", "shift_down", "flatline", "variance", "shape")
STEPS = {"traffic": (5, 5, 10, 30), "temperature": (5, 5, 15, 60), "counts": (5, 5, 5, 30),
         "flat": (5, 5, 5, 60), "walk": (5, 5, 15, 60)}  # minutes, drawn uniformly per series
NAB_PROFILES = {  # NAB's cost matrices (written to profiles.json)
    "standard": (1.0, 1.0, 0.11), "reward_low_FP_rate": (1.0, 1.0, 0.22), "reward_low_FN_rate": (1.0, 2.0, 0.11)}
TS_FORMAT = "%Y-%m-%d %H:%M:%S"
WINDOW_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
ZSCORE_WINDOW = 288  # baseline: rows of the reference (a day at 5-minute spacing, like NAB's windowedGaussian)
ZSCORE_THRESHOLD = 4.0  # baseline: |z| at which it fires (fixed, not tuned)


@dataclass
class Effects:
    """What the injected anomalies do to a series' generative parts (arrays over rows)."""

    n: int
    speed: np.ndarray = field(init=False)  # multiplier of the cycle's clock (a shape change)
    noise: np.ndarray = field(init=False)  # multiplier of the noise scale (a variance change)
    shift: np.ndarray = field(init=False)  # level shift in units of the series' scale (up > 0)
    pulse: np.ndarray = field(init=False)  # amplitude of an extra oscillation, in noise scales

    def __post_init__(self) -> None:
        self.speed = np.ones(self.n)
        self.noise = np.ones(self.n)
        self.shift = np.zeros(self.n)
        self.pulse = np.zeros(self.n)


@dataclass
class Series:
    name: str
    kind: str
    step_min: int
    values: np.ndarray
    onsets: list[int]
    anomalies: list[str]
    half_width: int  # each window is [onset - half_width, onset + half_width]


def _daily(tau: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smooth daily profile in [0, 1] with a random peak hour and a second harmonic."""
    phase = rng.uniform(0, 1)
    a2 = rng.uniform(0, 0.5)
    y = np.cos(2 * np.pi * (tau - phase)) + a2 * np.cos(4 * np.pi * (tau - phase) + rng.uniform(0, 6.3))
    return (y - y.min()) / max(np.ptp(y), 1e-9) if y.size else y


def _clock(step_min: int, eff: Effects) -> np.ndarray:
    """Time in days along which cycles run; a shape change makes it run faster or slower."""
    return np.concatenate([[0.0], np.cumsum(eff.speed[:-1])]) * step_min / 1440.0


def _pulse(eff: Effects, rng: np.random.Generator) -> np.ndarray:
    period = rng.integers(6, 30)
    return eff.pulse * np.sin(2 * np.pi * np.arange(eff.n) / period)


def _traffic(step_min: int, eff: Effects, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    tau = _clock(step_min, eff)
    day = tau.astype(int) % 7
    weekend = np.where(day >= 5, rng.uniform(0.5, 0.9), 1.0)
    base = rng.uniform(50, 5000)
    sigma = rng.uniform(0.05, 0.2)
    rate = base * (0.3 + rng.uniform(0.7, 2.0) * _daily(tau, rng)) * weekend * np.exp(eff.shift)
    x = rate * np.exp(sigma * eff.noise * rng.normal(size=eff.n) + sigma * _pulse(eff, rng))
    return (np.round(x) if base > 500 else np.round(x, 2)), base * sigma


def _temperature(step_min: int, eff: Effects, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    tau = _clock(step_min, eff)
    n = eff.n
    drift = np.cumsum(rng.normal(0, 1, n)) * np.sqrt(step_min / 1440.0) * rng.uniform(0.5, 2.0)
    slow = rng.uniform(1, 5) * np.sin(2 * np.pi * tau / rng.uniform(4, 12) + rng.uniform(0, 6.3))
    phi = rng.uniform(0.5, 0.95)
    sigma = rng.uniform(0.1, 0.6)
    e = rng.normal(0, sigma * np.sqrt(1 - phi ** 2), n) * eff.noise
    ar = np.zeros(n)
    for i in range(1, n):  # AR(1): a few thousand rows, once per series
        ar[i] = phi * ar[i - 1] + e[i]
    amp = rng.uniform(2, 8)
    scale = max(amp, 4 * sigma)
    x = rng.uniform(10, 70) + drift + slow + amp * _daily(tau, rng) + ar + sigma * _pulse(eff, rng)
    return np.round(x + eff.shift * scale, 2), sigma


def _counts(step_min: int, eff: Effects, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    tau = _clock(step_min, eff)
    n = eff.n
    base = rng.uniform(2, 200)
    burst = np.ones(n)  # natural, unlabelled bursts (a news event): jump then decay
    for start in rng.choice(n, size=rng.integers(0, 6), replace=False):
        length = int(rng.integers(3, 40))
        seg = np.arange(min(length, n - start))
        burst[start: start + seg.size] += rng.uniform(0.5, 2.0) * np.exp(-seg / max(length / 3, 1))
    rate = base * (0.2 + rng.uniform(0.5, 1.5) * _daily(tau, rng)) * burst * np.exp(eff.shift)
    rate *= np.exp(0.5 * (eff.noise - 1) * rng.normal(size=n) + 0.3 * _pulse(eff, rng))
    return rng.poisson(np.maximum(rate, 0)).astype(float), float(np.sqrt(base))


def _flat(step_min: int, eff: Effects, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    level = rng.uniform(1, 60)
    sigma = level * rng.uniform(0.01, 0.1)
    x = level + sigma * (eff.noise * rng.normal(size=eff.n) + _pulse(eff, rng)) + eff.shift * 8 * sigma
    decimals = int(rng.choice([1, 2, 3])) if sigma > 0.3 else 3
    return np.round(np.clip(x, 0, None), decimals), sigma


def _walk(step_min: int, eff: Effects, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    sigma = rng.uniform(0.05, 1.0)
    pull = rng.choice([0.0, 0.002, 0.01])  # 0: a pure random walk; else weakly mean-reverting
    steps = sigma * (eff.noise * rng.normal(size=eff.n) + _pulse(eff, rng))
    x = np.zeros(eff.n)
    for i in range(1, eff.n):
        x[i] = (1 - pull) * x[i - 1] + steps[i]
    return np.round(100 + x + eff.shift * 15 * sigma, 3), sigma


SYNTH: dict[str, Callable[[int, Effects, np.random.Generator], tuple[np.ndarray, float]]] = {
    "traffic": _traffic, "temperature": _temperature, "counts": _counts, "flat": _flat, "walk": _walk}
CYCLIC = {"traffic", "temperature", "counts"}


def _plan(n: int, rng: np.random.Generator) -> tuple[list[int], int]:
    """Anomaly onsets (sorted) and the windows' half width; windows and effects never overlap."""
    k = 0 if rng.uniform() < 0.1 else int(rng.integers(1, 4))
    if k == 0:
        return [], 0
    half = int(0.1 * n / k) // 2
    lo, hi = int(0.2 * n) + half, n - half - 1
    for _ in range(200):
        onsets = sorted(int(v) for v in rng.integers(lo, hi, size=k))
        if all(b - a > 3 * half + 20 for a, b in itertools.pairwise(onsets)):
            return onsets, half
    half = int(0.1 * n) // 2  # no room for k: one anomaly
    return [int(rng.integers(int(0.2 * n) + half, n - half - 1))], half


def _inject(kind: str, anomaly: str, eff: Effects, a: int, end: int, rng: np.random.Generator) -> None:
    """Write one anomaly into the generative parts over rows [a, end) (spikes, dips, flatlines come later)."""
    if anomaly in ("shift_up", "shift_down"):
        size = rng.uniform(0.4, 1.2) if kind in ("traffic", "counts") else rng.uniform(1.0, 3.0)
        eff.shift[a:end] += size if anomaly == "shift_up" else -min(size, 0.9 if kind in ("traffic", "counts") else 9)
    elif anomaly == "variance":
        eff.noise[a:end] *= rng.uniform(3, 6)
    elif anomaly == "shape":
        if kind in CYCLIC:
            eff.speed[a:end] = rng.choice([0.0, 3.0, 4.0])  # the cycle stops, or runs 3-4x as fast
        else:
            eff.pulse[a:end] = rng.uniform(2, 5)


def _point(x: np.ndarray, anomaly: str, a: int, end: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Spikes, dips and flatlines act on the finished values."""
    x = x.copy()
    ref = x[max(0, a - 2000): a]
    span = float(np.ptp(ref)) if ref.size else 1.0
    if anomaly in ("spike", "dip"):
        d = int(rng.integers(1, 4))
        size = max(rng.uniform(6, 12) * sigma, rng.uniform(0.3, 0.8) * span)
        if np.all(x == np.round(x)):  # counts stay whole numbers
            size = float(np.ceil(size))
        x[a: a + d] = x[a: a + d] + size if anomaly == "spike" else np.maximum(x[a: a + d] - size, 0.0)
    elif anomaly == "flatline":
        x[a:end] = 0.0 if rng.uniform() < 0.3 else x[a]
    return x


def make_series(seed: int, index: int) -> Series:
    """Series ``index`` of corpus ``seed``: depends on nothing else."""
    rng = np.random.default_rng([seed, index])
    kind = KINDS[index % len(KINDS)]
    step = int(rng.choice(STEPS[kind]))
    n = int(rng.integers(2000, 4001))
    onsets, half = _plan(n, rng)
    anomalies = [str(rng.choice(ANOMALIES)) for _ in onsets]
    ends = []
    eff = Effects(n)
    for j, (a, an) in enumerate(zip(onsets, anomalies, strict=True)):
        nxt = onsets[j + 1] - half - 10 if j + 1 < len(onsets) else n
        lasting = an in ("shift_up", "shift_down") and nxt == n and rng.uniform() < 0.6
        end = nxt if lasting else min(nxt, a + int(rng.integers(max(30, n // 40), max(31, n // 8))))
        ends.append(end)
        _inject(kind, an, eff, a, end, rng)
    x, sigma = SYNTH[kind](step, eff, rng)
    for a, an, end in zip(onsets, anomalies, ends, strict=True):
        x = _point(x, an, a, end, sigma, rng)
    return Series(f"{kind}_{seed}_{index:03d}.csv", kind, step, x, onsets, anomalies, half)


def write_corpus(seed: int, n_series: int, out: Path) -> list[Series]:
    """NAB-layout files for ``n_series`` series of corpus ``seed``."""
    out.mkdir(parents=True, exist_ok=True)
    series = [make_series(seed, i) for i in range(n_series)]
    windows: dict[str, list[list[str]]] = {}
    labels: dict[str, list[str]] = {}
    kinds: dict[str, dict[str, object]] = {}
    for s in series:
        ts = pd.date_range("2015-03-01", periods=len(s.values), freq=f"{s.step_min}min")
        pd.DataFrame({"timestamp": ts.strftime(TS_FORMAT), "value": s.values}).to_csv(out / s.name, index=False)
        windows[s.name] = [[ts[o - s.half_width].strftime(WINDOW_FORMAT), ts[o + s.half_width].strftime(WINDOW_FORMAT)]
                           for o in s.onsets]
        labels[s.name] = [ts[o].strftime(TS_FORMAT) for o in s.onsets]
        kinds[s.name] = {"kind": s.kind, "step_minutes": s.step_min, "anomalies": s.anomalies}
    (out / "combined_windows.json").write_text(json.dumps(windows, indent=1))
    (out / "combined_labels.json").write_text(json.dumps(labels, indent=1))
    (out / "kinds.json").write_text(json.dumps(kinds, indent=1))
    (out / "profiles.json").write_text(json.dumps({
        name: {"CostMatrix": {"tpWeight": tp, "fnWeight": fn, "fpWeight": fp, "tnWeight": 1.0}}
        for name, (tp, fn, fp) in NAB_PROFILES.items()}, indent=1))
    return series


def zscore_rows(f: _File, params: UsageScoreParams) -> np.ndarray:
    """Baseline: onsets of |x - mean| > 4 std of the previous ZSCORE_WINDOW rows (same onset rule)."""
    s = pd.Series(f.values)
    past = s.shift(1).rolling(ZSCORE_WINDOW, min_periods=ZSCORE_WINDOW // 4)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.abs((s - past.mean()) / past.std()).to_numpy()
    score = np.where(z >= ZSCORE_THRESHOLD, 1.0, 0.0)
    return np.flatnonzero(episode_onsets(score, refractory=params.refractory, quiet=params.quiet,
                                         threshold=THRESHOLD))


Detector = Callable[[_File], np.ndarray]


def detectors(base: UsageScoreParams) -> dict[str, Detector]:
    cal = dataclasses.replace(base, method="calibrated")
    rng_p = dataclasses.replace(base, method="range")
    return {"range": lambda f: onset_rows(f, rng_p), "calibrated": lambda f: onset_rows(f, cal),
            "zscore": lambda f: zscore_rows(f, rng_p)}


def _window_kinds(data: Path, files: Sequence[_File]) -> dict[str, list[str]]:
    path = data / "kinds.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    return {f.name: list(meta.get(f.name, {}).get("anomalies", ["?"] * f.n_windows)) for f in files}


def _series_kind(data: Path, name: str) -> str:
    path = data / "kinds.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    return str(meta.get(name, {}).get("kind", "nab"))


def _found(f: _File, rows: np.ndarray) -> set[int]:
    wid = f.sweeps["standard"][1]
    r = rows[wid[rows] != -2]
    return {int(w) for w in wid[r] if w >= 0}


def score_dirs(dirs: Sequence[Path], base: UsageScoreParams) -> dict[str, Result]:
    """Print the three detectors' scores over all ``dirs`` pooled, per series kind and per anomaly kind."""
    files: list[tuple[Path, _File]] = [(d, f) for d in dirs for f in load(d)]
    costs = _profiles(dirs[0])
    dets = detectors(base)
    rows = {name: {f.name: det(f) for _, f in files} for name, det in dets.items()}
    groups: dict[str, list[_File]] = {"all": [f for _, f in files]}
    for d, f in files:
        groups.setdefault(_series_kind(d, f.name), []).append(f)
    results = {}
    print(f"{len(files)} series, {sum(f.n_windows for _, f in files)} windows, from {', '.join(map(str, dirs))}")
    print(f"{'group':12s} {'files':>5s} {'win':>4s} " + " ".join(f"{d:>26s}" for d in dets))
    for g, fs in groups.items():
        res = {d: evaluate_rows(fs, rows[d], costs) for d in dets}
        if g == "all":
            results = res
        cells = [f"{r.scores['standard']:7.2f} ({r.tp:3d} TP {r.fp:4d} FP)" for r in res.values()]
        print(f"{g:12s} {len(fs):5d} {sum(f.n_windows for f in fs):4d} " + " ".join(f"{c:>26s}" for c in cells))
    print("\nlow FP / low FN profiles (all): " + "  ".join(
        f"{d} {r.scores['reward_low_FP_rate']:.2f} / {r.scores['reward_low_FN_rate']:.2f}" for d, r in results.items()))
    _per_anomaly(files, rows)
    return results


def _per_anomaly(files: Sequence[tuple[Path, _File]], rows: dict[str, dict[str, np.ndarray]]) -> None:
    """Share of windows found, per anomaly kind and detector."""
    found: dict[str, dict[str, list[int]]] = {}
    for d, f in files:
        kinds = _window_kinds(d, [f])[f.name]
        for det, by_file in rows.items():
            hit = _found(f, by_file[f.name])
            for w in f.seen:
                cell = found.setdefault(kinds[w] if w < len(kinds) else "?", {}).setdefault(det, [0, 0])
                cell[0] += int(w in hit)
                cell[1] += 1
    print(f"\n{'windows found':14s} " + " ".join(f"{d:>12s}" for d in rows))
    for an in sorted(found):
        print(f"{an:14s} " + " ".join(f"{found[an][d][0]:5d} / {found[an][d][1]:4d}" for d in rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a labelled corpus in NAB's layout")
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--n", type=int, default=60, help="number of series")
    g.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("score", help="score range, calibrated and a z-score baseline on corpora")
    s.add_argument("dirs", type=Path, nargs="+")
    s.add_argument("--set", nargs="*", default=[], help="name=value overrides of both methods' parameters")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.cmd == "generate":
        series = write_corpus(args.seed, args.n, args.out)
        print(f"{len(series)} series, {sum(len(x.onsets) for x in series)} anomalies in {args.out}")
    else:
        base = dataclasses.replace(UsageScoreParams(), **{k: v[0] for k, v in parse_params(args.set, False).items()})
        score_dirs(args.dirs, base)
    print(f"\n{time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
