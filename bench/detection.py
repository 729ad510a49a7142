"""Labelled-scenario benchmark: mining precision, recall and detection delay over seeded data sets.

    python bench/detection.py --seeds 5 --projects 40 --days 70

Every figure is computed from costwatch's own alerts against the generator's ground truth; nothing here
is tuned per seed.  Timing is printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costwatch.alerts import Alert
from costwatch.demo import demo_config
from costwatch.detect import detect
from costwatch.scenarios import generate

MINING_KINDS = ("mining_new_nodes", "mining_existing_nodes", "mining_stealth", "mining_cost_only")


def match(alert: Alert, inc: pd.Series) -> bool:
    if str(alert.project) != str(inc["project_id"]):
        return False
    return bool(inc["start"] - pd.Timedelta(hours=1) <= alert.detected_at <= inc["end"] + pd.Timedelta(days=2))


def evaluate(seed: int, projects: int, days: int) -> dict[str, object]:
    sc = generate(seed=seed, n_projects=projects, days=days)
    cfg = demo_config(sc)
    t0 = time.perf_counter()
    det = detect(sc.costs, sc.usage, cfg, as_of=sc.end, since=pd.Timedelta(days=14))
    elapsed = time.perf_counter() - t0
    inc = sc.incidents
    mining_alerts = [a for a in det.alerts if a.kind == "mining_suspected"]
    rows = []
    for _, i in inc.iterrows():
        hits = [a for a in mining_alerts if match(a, i)]
        first = min((a.detected_at for a in hits), default=None)
        rows.append({"seed": seed, "kind": i["kind"], "is_mining": bool(i["is_mining"]), "found": bool(hits),
                     "delay_h": (first - i["start"]) / pd.Timedelta(hours=1) if first is not None else np.nan,
                     "has_cpu": i["kind"] != "mining_cost_only"})
    true_pos = sum(any(match(a, i) for _, i in inc[inc["is_mining"]].iterrows()) for a in mining_alerts)
    incident_projects = set(inc["project_id"].astype(str))
    clean = [p for p in sc.projects["project_id"].astype(str) if p not in incident_projects]
    clean_alerts = [a for a in det.alerts if a.project in clean]
    window_months = (det.as_of - det.since) / pd.Timedelta(days=30.4)
    return {"rows": rows, "mining_alerts": len(mining_alerts), "true_pos": true_pos,
            "clean_alerts": len(clean_alerts), "clean_project_months": len(clean) * window_months,
            "clean_by_kind": pd.Series([a.kind for a in clean_alerts], dtype=object).value_counts().to_dict(),
            "seconds": elapsed, "series": len(det.totals.matrix.keys) if det.totals else 0,
            "nodes": len(det.cpu.nodes) if det.cpu is not None else 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--projects", type=int, default=40)
    ap.add_argument("--days", type=int, default=70)
    args = ap.parse_args(argv)
    results = [evaluate(s, args.projects, args.days) for s in range(args.first_seed, args.first_seed + args.seeds)]
    df = pd.DataFrame([r for res in results for r in res["rows"]])  # type: ignore[attr-defined]
    mining = df[df["is_mining"]]
    benign = df[~df["is_mining"]]
    n_alerts = sum(int(r["mining_alerts"]) for r in results)  # type: ignore[call-overload]
    tp = sum(int(r["true_pos"]) for r in results)  # type: ignore[call-overload]
    print(f"seeds {args.first_seed}..{args.first_seed + args.seeds - 1}, {args.projects} projects, {args.days} days")
    print("\nmining recall by kind:")
    for kind, g in mining.groupby("kind"):
        print(f"  {kind:24s} {g['found'].mean():.3f}  ({int(g['found'].sum())}/{len(g)})  "
              f"median delay {g['delay_h'].median():.1f} h, max {g['delay_h'].max():.1f} h")
    recall = mining["found"].mean() if len(mining) else float("nan")
    precision = tp / n_alerts if n_alerts else float("nan")
    cpu_delay = mining[mining["has_cpu"]]["delay_h"].median()
    cost_delay = mining[~mining["has_cpu"]]["delay_h"].median()
    print(f"\nmining recall     {recall:.3f}")
    print(f"mining precision  {precision:.3f}  ({tp}/{n_alerts} mining alerts matched a mining incident)")
    print(f"median delay      {cpu_delay:.1f} h with hourly CPU, {cost_delay:.1f} h from cost alone")
    print("benign incidents called mining:")
    for kind, g in benign.groupby("kind"):
        print(f"  {kind:24s} {int(g['found'].sum())}/{len(g)}")
    cpm = sum(float(r["clean_project_months"]) for r in results)  # type: ignore[arg-type]
    ca = sum(int(r["clean_alerts"]) for r in results)  # type: ignore[call-overload]
    kinds: dict[str, int] = {}
    for r in results:
        for k, v in r["clean_by_kind"].items():  # type: ignore[attr-defined]
            kinds[k] = kinds.get(k, 0) + int(v)
    print(f"alerts per clean project-month: {ca / cpm if cpm else float('nan'):.3f} ({ca} alerts, {kinds})")
    secs = [float(r["seconds"]) for r in results]  # type: ignore[arg-type]
    print(f"detect(): median {np.median(secs):.2f} s per data set "
          f"({results[0]['series']} project series, {results[0]['nodes']} nodes, {args.days} days)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
