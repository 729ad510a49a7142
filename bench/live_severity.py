"""What an owner is paged with while it happens: hourly as-of runs over the benign look-alikes and the miners.

    python bench/live_severity.py --first-seed 161 --seeds 10 [--step 2] [--after 12]

``bench/detection.py`` judges severity once, at the end of the data, when every episode can be read with the
hours after it.  A live run cannot: a busy node capped at its peak in a surge's first hours may be paged as
critical mining at 2 a.m. and cleared only once the surge shows.  This replays ``detect()`` as of every
``--step`` hours from each incident's start to ``--after`` hours past its end, on that project's data only
(as ``run`` would see it, with the same 14-day alert window), and prints, per seed:

- saturating surges and legit GPU jobs that got a *critical* mining alert at any as-of hour (the page the
  issue is about), and that got any mining alert;
- miners: found live, found critical live, and the median hours from the miner's start to its first mining
  alert and to its first critical one.

Slow by design (one ``detect()`` per incident-hour): ~1 s per run on one project.
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

from bench.detection import ALERT_WINDOW, match, planned_marks
from costwatch.demo import demo_config
from costwatch.detect import detect
from costwatch.scenarios import MINING_KINDS, generate

LOOK_ALIKES = ("saturating_surge", "legit_gpu_job")
MINER_HOURS = 72  # a miner is replayed this long after its start at most


def replay_incident(sc: Any, cfg: Any, inc: pd.Series, step_h: int, after_h: int) -> dict[str, Any]:
    """As-of runs over one incident: the first hour any mining alert matched it and the first critical one."""
    pid = str(inc["project_id"])
    costs = sc.costs[sc.costs["project_id"].astype(str) == pid]
    usage = sc.usage[sc.usage["project"].astype(str) == pid]
    marks = planned_marks(sc)
    first_any = first_crit = None
    last = inc["end"] + pd.Timedelta(hours=after_h)
    if inc["kind"] not in LOOK_ALIKES:  # a miner: how soon it is paged, not how long it stays
        last = min(last, inc["start"] + pd.Timedelta(hours=MINER_HOURS))
    points = pd.date_range(inc["start"].floor("h") + pd.Timedelta(hours=1), min(last, sc.end), freq=f"{step_h}h")
    for t in points:
        det = detect(costs, usage, cfg, as_of=t, since=t - ALERT_WINDOW, planned=marks)
        hits = [a for a in det.alerts if a.kind == "mining_suspected" and match(a, inc)]
        if hits and first_any is None:
            first_any = t
        if any(a.severity == "critical" for a in hits):
            first_crit = t
            break
    def hours(t: pd.Timestamp | None) -> float | None:
        return None if t is None else float((t - inc["start"]) / pd.Timedelta(hours=1))

    return {"kind": inc["kind"], "id": inc["id"], "any_h": hours(first_any), "critical_h": hours(first_crit)}


def run_seed(seed: int, projects: int, days: int, step_h: int, after_h: int) -> list[dict[str, Any]]:
    sc = generate(seed=seed, n_projects=projects, days=days, failure_classes=True)
    cfg = demo_config(sc)
    wanted = sc.incidents[sc.incidents["kind"].isin(LOOK_ALIKES + tuple(MINING_KINDS))]
    # miners that started before the replayable history are judged by bench/detection.py's replay instead
    wanted = wanted[wanted["start"] > sc.costs["period_start"].min() + pd.Timedelta(days=21)]
    return [{"seed": seed, **replay_incident(sc, cfg, i, step_h, after_h)} for _, i in wanted.iterrows()]


def _median(v: list[float]) -> str:
    return f"{np.median(v):.0f} h" if v else "—"


def summarize(rows: list[dict[str, Any]], label: str) -> str:
    look = [r for r in rows if r["kind"] in LOOK_ALIKES]
    surges = [r for r in look if r["kind"] == "saturating_surge"]
    jobs = [r for r in look if r["kind"] == "legit_gpu_job"]
    miners = [r for r in rows if r["kind"] not in LOOK_ALIKES]
    crit = sum(r["critical_h"] is not None for r in surges), sum(r["critical_h"] is not None for r in jobs)
    anyh = sum(r["any_h"] is not None for r in surges), sum(r["any_h"] is not None for r in jobs)
    found = [r for r in miners if r["any_h"] is not None]
    found_c = [r for r in miners if r["critical_h"] is not None]
    return (f"| {label} | {crit[0]}/{len(surges)} ({anyh[0]}) | {crit[1]}/{len(jobs)} ({anyh[1]}) | "
            f"{len(found)}/{len(miners)} | {len(found_c)}/{len(miners)} | {_median([r['any_h'] for r in found])} | "
            f"{_median([r['critical_h'] for r in found_c])} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--projects", type=int, default=40)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--step", type=int, default=2, help="hours between as-of runs")
    ap.add_argument("--after", type=int, default=12, help="hours past each incident's end to keep replaying")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    print("| seed | surges paged critical (any mining alert) | legit GPU jobs paged critical (any) | miners found live "
          "| miners paged critical | median hours to first alert | median hours to first critical |")
    print("|---|---|---|---|---|---|---|")
    every: list[dict[str, Any]] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        rows = run_seed(seed, args.projects, args.days, args.step, args.after)
        every += rows
        print(summarize(rows, str(seed)), flush=True)
        for r in rows:
            if r["kind"] in LOOK_ALIKES and r["critical_h"] is not None:
                print(f"  seed {seed} {r['id']} {r['kind']}: critical {r['critical_h']:.0f} h after its start")
    print(summarize(every, "**pooled**"))
    print(f"\n{time.perf_counter() - t0:.0f} s, as-of every {args.step} h")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
