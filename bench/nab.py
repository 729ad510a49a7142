"""Run costwatch's usage-band detector over NAB realAWSCloudwatch and score it with our NAB re-implementation.

    python bench/nab.py --out /tmp/nab-out [--data /work/shared/data/nab] [--per-window]

Writes ``OUTDIR/<file>.csv`` with ``timestamp,value,anomaly_score`` in the layout NAB's own scorer reads
(only episode onsets reach >= 0.5), then prints per-file detections and the standard, reward_low_FP and
reward_low_FN normalized scores next to the published detectors.  One parameter set and one threshold (0.5)
for the whole corpus.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nab_scoring import (
    PROFILE_NAMES,
    CorpusScore,
    load_profiles,
    load_windows,
    score_corpus,
)
from costwatch.usage_score import UsageScoreParams, onset_scores, score_series

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "nab").resolve()
THRESHOLD = 0.5
PUBLISHED = {  # standard / reward_low_FP / reward_low_FN on this subset, corpus-tuned thresholds
    "Numenta HTM": (73.42, None, None),
    "contextOSE": (71.52, 67.65, 75.84),
    "ARTime": (69.48, 58.96, 75.21),
}
SHORT = {"standard": "standard", "reward_low_FP_rate": "low FP", "reward_low_FN_rate": "low FN"}


def detect_file(path: Path, params: UsageScoreParams) -> pd.DataFrame:
    df = pd.read_csv(path)
    ts = pd.DatetimeIndex(pd.to_datetime(df["timestamp"]))
    scores = score_series(df["value"].to_numpy(dtype=float), ts, params=params)
    out = df[["timestamp", "value"]].copy()
    held = onset_scores(scores, refractory=params.refractory, quiet=params.quiet, threshold=THRESHOLD)
    out["anomaly_score"] = np.round(held, 6)
    return out


def run(data: Path, out_dir: Path, params: UsageScoreParams) -> dict[str, CorpusScore]:
    windows = load_windows(data)
    profiles = load_profiles(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[pd.Series, np.ndarray]] = {}
    for name in sorted(windows):
        path = data / name
        if not path.exists():
            raise SystemExit(f"missing data file {path}")
        out = detect_file(path, params)
        out.to_csv(out_dir / name, index=False)
        results[name] = (pd.to_datetime(out["timestamp"]), out["anomaly_score"].to_numpy())
    return score_corpus(results, windows, {k: profiles[k] for k in PROFILE_NAMES if k in profiles}, THRESHOLD)


def print_report(scores: dict[str, CorpusScore], per_window: bool) -> None:
    std = scores["standard"]
    by_profile = {p: {f.name: f for f in s.files} for p, s in scores.items()}
    print(f"{'file':42s} {'win':>3s} {'TP':>3s} {'FN':>3s} {'FP':>3s} "
          + " ".join(f"{SHORT.get(p, p):>9s}" for p in scores) + "  onsets")
    for f in std.files:
        raws = " ".join(f"{by_profile[p][f.name].raw:9.3f}" for p in scores)
        print(f"{f.name:42s} {f.n_windows:3d} {f.tp:3d} {f.fn:3d} {f.fp:3d} {raws}  {f.detections}")
        if per_window and f.window_scores:
            print(f"{'':42s} window scores (standard): {[round(w, 3) for w in f.window_scores]}")
    print()
    print(f"{'detector':16s} {'standard':>9s} {'low FP':>9s} {'low FN':>9s}")
    print(f"{'costwatch band':16s} " + " ".join(f"{scores[p].normalized:9.2f}" for p in PROFILE_NAMES))
    for name, vals in PUBLISHED.items():
        print(f"{name:16s} " + " ".join(f"{v:9.2f}" if v is not None else f"{'-':>9s}" for v in vals))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NAB realAWSCloudwatch directory")
    ap.add_argument("--out", type=Path, required=True, help="directory for the scored CSV files")
    ap.add_argument("--per-window", action="store_true", help="also print each window's score")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    scores = run(args.data, args.out, UsageScoreParams())
    print_report(scores, args.per_window)
    print(f"\n{len(scores['standard'].files)} files in {time.perf_counter() - t0:.1f}s, threshold {THRESHOLD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
