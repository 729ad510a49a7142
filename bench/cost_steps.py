"""Replay of unplanned cost steps only: which ones lose their active alert while the new level persists, and why.

    python bench/cost_steps.py --seeds 151 156            # per step, the as-of times without an active alert
    python bench/cost_steps.py --seeds 1-25 101-160 --quiet  # just the counts

It runs ``bench/detection.py``'s ``replay`` (as-of detection every 24 h with run.py's 14-day alert window,
``costwatch.incidents.is_active`` deciding "resolved") on the cost-step projects of each seed, and for every
as-of time a step had no active alert prints what the bands saw on the step's series (the category series
the new spend lands in, and the project total) over the step's days: cost vs upper band, whether the day was
in an open episode of the band, and whether detection flagged it.  Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from detection import ALERT_WINDOW, planned_marks, replay

from costwatch.demo import demo_config
from costwatch.detect import SeriesBands, detect
from costwatch.scenarios import Scenario, generate


def step_subset(sc: Scenario) -> Scenario:
    """The scenario restricted to its cost steps (replay filters costs/usage to the incidents' projects)."""
    inc = sc.incidents[sc.incidents["kind"] == "cost_step"]
    return Scenario(**{**vars(sc), "incidents": inc})


def _row(sb: SeriesBands, pid: str, category: str | None) -> int | None:
    keys = sb.matrix.keys
    sel = keys["project_id"].astype(str) == pid
    if category is not None:
        sel &= keys["service_category"].astype(str) == category
    idx = np.flatnonzero(sel.to_numpy())
    return int(idx[0]) if idx.size else None


def explain(sc: Scenario, inc: pd.Series, t: pd.Timestamp) -> list[str]:
    """What the bands saw at as-of ``t`` on the step's category series and its project total."""
    pid = str(inc["project_id"])
    costs = sc.costs[sc.costs["project_id"].astype(str) == pid]
    usage = sc.usage[sc.usage["project"].astype(str) == pid]
    det = detect(costs, usage, demo_config(sc), as_of=t, since=t - ALERT_WINDOW, planned=planned_marks(sc))
    new = costs[costs["resource_id"].astype(str).str.endswith("-new")]
    cat = str(new["service_category"].iloc[0]) if len(new) else None
    spikes = [(a.service or "total", f"{a.start:%m-%d}", a.evidence.get("days"), a.evidence.get("ongoing"))
              for a in det.alerts if a.kind == "cost_spike"]
    out = [f"  as of {t:%Y-%m-%d %H:%M}: cost alerts (scope, start, days, ongoing) {spikes}"]
    for label, sb, c in (("category " + str(cat), det.categories, cat), ("total", det.totals, None)):
        if sb is None:
            continue
        i = _row(sb, pid, c)
        if i is None:
            continue
        days = sb.matrix.days
        a = int(days.searchsorted(inc["start"].floor("D")))
        cells = []
        for j in range(max(a - 1, 0), len(days)):
            x, up = sb.matrix.values[i, j], sb.bands.upper[i, j]
            ep = sb.bands.episode is not None and bool(sb.bands.episode[i, j])
            flags = (" E" if ep else "") + (" A" if sb.anomalous[i, j] else "")
            cells.append(f"{days[j]:%m-%d %a}: {x:.0f}/{up:.0f}{flags}")
        out.append(f"    {label} (cost/upper, E episode, A anomalous): " + "; ".join(cells))
    return out


def parse_seeds(items: list[str]) -> list[int]:
    seeds: list[int] = []
    for it in items:
        lo, _, hi = it.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    if any(s >= 161 for s in seeds):
        raise SystemExit("seeds >= 161 are the lead's fresh set: not run here")
    return seeds


def run_seed(seed: int, quiet: bool) -> tuple[int, int, int, list[str]]:
    sc = generate(seed=seed, n_projects=40, days=120, failure_classes=True)
    sub = step_subset(sc)
    if sub.incidents.empty:
        return 0, 0, 0, []
    rep: list[dict[str, Any]] = replay(sub, demo_config(sc), 24)
    lines = []
    for x in rep:
        inc = sub.incidents[sub.incidents["id"] == x["id"]].iloc[0]
        if x["dropped"]:
            lines.append(f"seed {seed} {x['project']} (start {inc['start']:%Y-%m-%d %H:%M}): no active alert at "
                         + ", ".join(f"{t:%m-%d}" for t in x["dropped"]))
            if not quiet:
                for t in x["dropped"][:3]:
                    lines += explain(sc, inc, t)
    return len(rep), sum(bool(x["seen"]) for x in rep), sum(bool(x["dropped"]) for x in rep), lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", default=["151", "156"], help="seeds or ranges (1-25)")
    ap.add_argument("--quiet", action="store_true", help="no per-day explanation")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    tot = seen = lost = 0
    for seed in parse_seeds(args.seeds):
        n, s, d, lines = run_seed(seed, args.quiet)
        tot, seen, lost = tot + n, seen + s, lost + d
        print(f"seed {seed}: {d} of {s} alerted cost steps ({n} in all) lost their active alert", flush=True)
        for ln in lines:
            print("  " + ln, flush=True)
    print(f"all: {lost} of {seen} alerted cost steps ({tot} in all) lost their active alert while running "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
