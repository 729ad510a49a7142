"""Run costwatch's usage-band detector over NAB realAWSCloudwatch and score it with our NAB re-implementation.

    python bench/nab.py --out /tmp/nab-out [--data /work/shared/data/nab] [--labels WINDOWS.json] [--per-window]

Writes ``OUTDIR/<file>.csv`` with ``timestamp,value,anomaly_score`` in the layout NAB's own scorer reads
(only episode onsets reach >= 0.5), then prints per-file detections and the standard, reward_low_FP and
reward_low_FN normalized scores, next to the published detectors only when ``--data`` holds exactly the
realAWSCloudwatch file set they were measured on.  One parameter set and one threshold (0.5) for the whole
corpus.  Both methods run by default: the ``range`` score, and the ``calibrated`` score (per-series tail
probabilities, one ``alpha``) that ``detect()`` uses for "nodes off their band", which holds up better away
from the corpus the range score's thresholds were chosen on; ``--method`` picks one.  With both, the scored files
go to ``OUTDIR/range/`` and ``OUTDIR/calibrated/``.  ``--set name=value ...`` overrides the defaults.

``--labels`` names a windows file in NAB's ``combined_windows.json`` format (default: the one in ``--data``);
keys may carry NAB's corpus prefix (``realTraffic/speed_6005.csv``), and a file is looked for at ``DATA/<key>``
then as ``<name>`` anywhere under ``--data``, so NAB's own ``data/`` tree works as well as a flat directory.
Labelled files that are not under ``--data`` are skipped (and counted).  Cost profiles come from
``profiles.json`` in ``--data`` or beside the labels, else NAB's published three.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.nab_scoring import (
    PROFILE_NAMES,
    CorpusScore,
    CostMatrix,
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
# the corpus the published figures were measured on; on any other file set they are not a comparison
REAL_AWS_CLOUDWATCH = frozenset({
    "ec2_cpu_utilization_24ae8d.csv", "ec2_cpu_utilization_53ea38.csv", "ec2_cpu_utilization_5f5533.csv",
    "ec2_cpu_utilization_77c1ca.csv", "ec2_cpu_utilization_825cc2.csv", "ec2_cpu_utilization_ac20cd.csv",
    "ec2_cpu_utilization_c6585a.csv", "ec2_cpu_utilization_fe7f93.csv", "ec2_disk_write_bytes_1ef3de.csv",
    "ec2_disk_write_bytes_c0d644.csv", "ec2_network_in_257a54.csv", "ec2_network_in_5abac7.csv",
    "elb_request_count_8c0756.csv", "grok_asg_anomaly.csv", "iio_us-east-1_i-a2eb1cd9_NetworkIn.csv",
    "rds_cpu_utilization_cc0c53.csv", "rds_cpu_utilization_e47b3b.csv",
})
NAB_PROFILES = {  # NAB's cost matrices, for a corpus that ships without profiles.json
    "standard": CostMatrix(1.0, 1.0, 0.11), "reward_low_FP_rate": CostMatrix(1.0, 1.0, 0.22),
    "reward_low_FN_rate": CostMatrix(1.0, 2.0, 0.11)}
SHORT = {"standard": "standard", "reward_low_FP_rate": "low FP", "reward_low_FN_rate": "low FN"}


def parse_params(items: Sequence[str], grid: bool) -> dict[str, list[Any]]:
    """``name=value`` items (``name=v1,v2,...`` with ``grid``) as UsageScoreParams field values."""
    fields = {f.name: f.type for f in dataclasses.fields(UsageScoreParams)}
    out: dict[str, list[Any]] = {}
    for item in items:
        key, _, val = item.partition("=")
        if key not in fields:
            raise SystemExit(f"unknown parameter {key!r}; known: {', '.join(fields)}")
        typ = str(fields[key])
        conv: Any = ((lambda s: s.lower() in ("1", "true", "yes")) if typ == "bool"
                     else int if typ == "int" else str if typ == "str" else float)
        vals = [conv(v) for v in (val.split(",") if grid else [val])]
        out[key] = vals
    return out


METHODS = ("range", "calibrated")


def detect_file(path: Path, params: UsageScoreParams) -> pd.DataFrame:
    df = pd.read_csv(path)
    ts = pd.DatetimeIndex(pd.to_datetime(df["timestamp"]))
    scores = score_series(df["value"].to_numpy(dtype=float), ts, params=params)
    out = df[["timestamp", "value"]].copy()
    held = onset_scores(scores, refractory=params.refractory, quiet=params.quiet, threshold=THRESHOLD)
    out["anomaly_score"] = np.round(held, 6)
    return out


def locate(data: Path, labels: Path) -> dict[str, Path]:
    """Each labelled file's path under ``data``, by bare name (labelled files not there are left out)."""
    path = labels if labels.is_file() else labels / "combined_windows.json"
    if not path.is_file():
        raise SystemExit(f"no labels at {path}: pass --labels FILE (NAB's combined_windows.json format)")
    keys = json.loads(path.read_text())
    found: dict[str, Path] = {}
    for key in keys:
        name = key.split("/")[-1]
        hits = [p for p in (data / name, data / key) if p.is_file()] or sorted(data.rglob(name))
        if len(hits) > 1 and hits[0] != data / name:
            raise SystemExit(f"{name} is under {data} more than once ({hits[0]}, {hits[1]}): pass its corpus "
                             f"directory as --data")
        if hits:
            found[name] = hits[0]
    if not found:
        raise SystemExit(f"none of the {len(keys)} files labelled in {labels} is under {data}: check --data")
    if len(found) < len(keys):
        print(f"({len(keys) - len(found)} of {len(keys)} labelled files are not under {data}; scoring the rest)")
    return found


def cost_profiles(data: Path, labels: Path) -> dict[str, CostMatrix]:
    for where in (data, labels.parent if labels.is_file() else labels):
        if (where / "profiles.json").is_file():
            return load_profiles(where)
    return dict(NAB_PROFILES)


def run(data: Path, out_dir: Path, params: UsageScoreParams, labels: Path | None = None) -> dict[str, CorpusScore]:
    labels = labels or data
    paths = locate(data, labels)
    windows = {k: v for k, v in load_windows(labels).items() if k in paths}
    profiles = cost_profiles(data, labels)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, tuple[pd.Series, np.ndarray]] = {}
    for name in sorted(windows):
        out = detect_file(paths[name], params)
        out.to_csv(out_dir / name, index=False)
        results[name] = (pd.to_datetime(out["timestamp"]), out["anomaly_score"].to_numpy())
    return score_corpus(results, windows, {k: profiles[k] for k in PROFILE_NAMES if k in profiles}, THRESHOLD)


def print_files(scores: dict[str, CorpusScore], per_window: bool) -> None:
    std = scores["standard"]
    by_profile = {p: {f.name: f for f in s.files} for p, s in scores.items()}
    print(f"{'file':42s} {'win':>3s} {'TP':>3s} {'FN':>3s} {'FP':>3s} "
          + " ".join(f"{SHORT.get(p, p):>9s}" for p in scores) + "  onsets")
    for f in std.files:
        raws = " ".join(f"{by_profile[p][f.name].raw:9.3f}" for p in scores)
        print(f"{f.name:42s} {f.n_windows:3d} {f.tp:3d} {f.fn:3d} {f.fp:3d} {raws}  {f.detections}")
        if per_window and f.window_scores:
            print(f"{'':42s} window scores (standard): {[round(w, 3) for w in f.window_scores]}")


def print_summary(by_method: dict[str, dict[str, CorpusScore]], published: bool = True) -> None:
    print(f"{'detector':22s} {'standard':>9s} {'low FP':>9s} {'low FN':>9s}")
    for method, scores in by_method.items():
        print(f"{'costwatch ' + method:22s} " + " ".join(f"{scores[p].normalized:9.2f}" for p in PROFILE_NAMES))
    if not published:
        print("(published detectors' figures are for NAB realAWSCloudwatch only; this corpus is another file set)")
        return
    for name, vals in PUBLISHED.items():
        print(f"{name:22s} " + " ".join(f"{v:9.2f}" if v is not None else f"{'-':>9s}" for v in vals))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="NAB realAWSCloudwatch directory")
    ap.add_argument("--labels", type=Path, default=None,
                    help="windows JSON in NAB's combined_windows.json format (default: the one in --data)")
    ap.add_argument("--out", type=Path, required=True, help="directory for the scored CSV files")
    ap.add_argument("--per-window", action="store_true", help="also print each window's score")
    ap.add_argument("--method", choices=("both", *METHODS), default="both",
                    help="usage score method(s) to run (default both: calibrated is the one detect() uses)")
    ap.add_argument("--set", nargs="*", default=[], help="name=value overrides of the default parameters")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    overrides = {k: v[0] for k, v in parse_params(args.set, False).items()}
    methods = [str(overrides.pop("method"))] if "method" in overrides else (
        list(METHODS) if args.method == "both" else [args.method])
    by_method: dict[str, dict[str, CorpusScore]] = {}
    for method in methods:
        params = dataclasses.replace(UsageScoreParams(method=method), **overrides)
        out = args.out / method if len(methods) > 1 else args.out
        by_method[method] = scores = run(args.data, out, params, args.labels)
        print(f"== {method} score{' (detect() uses this one)' if method == 'calibrated' else ''}")
        print_files(scores, args.per_window)
        print()
    names = {f.name for f in next(iter(by_method.values()))["standard"].files}
    print_summary(by_method, published=names == REAL_AWS_CLOUDWATCH)
    print(f"\n{len(names)} files in {time.perf_counter() - t0:.1f}s, threshold {THRESHOLD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
