"""Labelled-scenario benchmark: mining recall and precision, noise, cost-change recall, delays, replays.

    python bench/detection.py --first-seed 101 --seeds 10 --projects 40 --days 120 --replay

Scenarios come from ``costwatch.scenarios.generate(failure_classes=True)`` (``--classic`` for the plain
generator): month-end jobs, holidays, autoscaling, deploy steps and busy nodes in every world, and saturating
surges, legit GPU training jobs, 30-day miners, unplanned cost steps and runaway spikes as incidents.

Every figure is computed from costwatch's own alerts against the generator's ground truth; nothing here is
tuned per seed.  Choose parameters on some seeds and report on others never used for tuning (the README says
which).  Timing is printed, never asserted.

``--replay`` runs detection as of successive times over the days of each ongoing incident (every
``--replay-every`` hours, each as-of run with run.py's 14-day alert window) and counts miners and unplanned
cost steps whose alert is no longer active (``costwatch.incidents.is_active``, the test that decides
"resolved") while they still run: an incident that is still going on must never be resolved.
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

from costwatch.alerts import Alert
from costwatch.config import Config
from costwatch.demo import demo_config
from costwatch.detect import detect
from costwatch.incidents import data_ends, is_active
from costwatch.scenarios import COST_CHANGE_KINDS, MINING_KINDS, Scenario, generate
from costwatch.silences import Silence

COST_KINDS = ("cost_spike", "budget_forecast_exceeded", "threshold_exceeded")
ALERT_WINDOW = pd.Timedelta(days=14)  # run.py's: alerts detected this far back can still be open incidents
EVAL_WINDOW = pd.Timedelta(days=45)  # the end-of-data run looks back far enough to see 30-day miners start


def match(alert: Alert, inc: pd.Series) -> bool:
    if str(alert.project) != str(inc["project_id"]):
        return False
    return bool(inc["start"] - pd.Timedelta(hours=1) <= alert.detected_at <= inc["end"] + pd.Timedelta(days=2))


def planned_marks(sc: Scenario) -> list[Silence]:
    """The owners of planned steps mark them (``costwatch silence --planned``) when they start, for two days."""
    steps = sc.incidents[sc.incidents["kind"] == "planned_step"]
    return [Silence(id=str(r.id), project=str(r.project_id), until=str(r.start + pd.Timedelta(days=2)),
                    reason="capacity step-up", planned=True, created_at=str(r.start)) for r in steps.itertuples()]


def evaluate(seed: int, projects: int, days: int, classic: bool = False, replay_every: int = 0,
             ) -> dict[str, Any]:
    sc = generate(seed=seed, n_projects=projects, days=days, failure_classes=not classic)
    cfg = demo_config(sc)
    t0 = time.perf_counter()
    det = detect(sc.costs, sc.usage, cfg, as_of=sc.end, since=min(EVAL_WINDOW, (days - 21) * pd.Timedelta(days=1)),
                 planned=planned_marks(sc))
    elapsed = time.perf_counter() - t0
    inc = sc.incidents
    mining_alerts = [a for a in det.alerts if a.kind == "mining_suspected"]
    cost_alerts = [a for a in det.alerts if a.kind in COST_KINDS]
    rows = []
    for _, i in inc.iterrows():
        hits = [a for a in mining_alerts if match(a, i)]
        first = min((a.detected_at for a in hits), default=None)
        cost_hits = [a for a in cost_alerts if match(a, i)]
        rows.append({"seed": seed, "kind": i["kind"], "is_mining": bool(i["is_mining"]), "found": bool(hits),
                     "critical": any(a.severity == "critical" for a in hits),
                     "delay_h": (first - i["start"]) / pd.Timedelta(hours=1) if first is not None else np.nan,
                     "has_cpu": i["kind"] != "mining_cost_only", "cost_found": bool(cost_hits)})
    planned_alerts = [a for a in cost_alerts if a.project in set(inc[inc["kind"] == "planned_step"]["project_id"])]
    mining_inc = inc[inc["is_mining"]]
    matched = [any(match(a, i) for _, i in mining_inc.iterrows()) for a in mining_alerts]
    critical = [a.severity == "critical" for a in mining_alerts]
    incident_projects = set(inc["project_id"].astype(str))
    clean = [p for p in sc.projects["project_id"].astype(str) if p not in incident_projects]
    clean_alerts = [a for a in det.alerts if a.project in clean]
    window_months = (det.as_of - det.since) / pd.Timedelta(days=30.4)
    out: dict[str, Any] = {
        "seed": seed, "rows": rows, "mining_alerts": len(mining_alerts), "true_pos": sum(matched),
        "critical_alerts": sum(critical), "critical_true": sum(m and c for m, c in zip(matched, critical, strict=True)),
        "clean_alerts": len(clean_alerts), "clean_project_months": len(clean) * window_months,
        "planned_alerts": len(planned_alerts),
        "clean_by_kind": pd.Series([a.kind for a in clean_alerts], dtype=object).value_counts().to_dict(),
        "seconds": elapsed, "series": len(det.totals.matrix.keys) if det.totals else 0,
        "nodes": len(det.cpu.nodes) if det.cpu is not None else 0}
    if replay_every:
        out["replay"] = replay(sc, cfg, replay_every)
    return out


def replay(sc: Scenario, cfg: Config, every_h: int) -> list[dict[str, Any]]:
    """As-of runs every ``every_h`` hours over each ongoing miner's and unplanned cost step's days, on those
    projects' data only: per incident, whether it was alerted, and the as-of times at which it had been
    alerted before but had no active alert any more while it still ran ("resolved" too early)."""
    inc = sc.incidents[sc.incidents["is_mining"] | (sc.incidents["kind"] == "cost_step")]
    if inc.empty:
        return []
    pids = set(inc["project_id"].astype(str))
    costs = sc.costs[sc.costs["project_id"].astype(str).isin(pids)]
    usage = sc.usage[sc.usage["project"].astype(str).isin(pids)]
    marks = planned_marks(sc)
    grace = pd.Timedelta(days=1) + pd.Timedelta(hours=cfg.detection.cost_delay_hours) + 2 * pd.Timedelta(hours=1)
    step = pd.Timedelta(hours=every_h)
    delay = pd.Timedelta(hours=cfg.detection.cost_delay_hours)
    first_at = inc["start"].min().ceil("D") + pd.Timedelta(hours=12)
    points = pd.date_range(first_at, sc.end - pd.Timedelta(hours=1), freq=step)
    state = {r.id: {"kind": r.kind, "project": str(r.project_id), "seen": False, "dropped": []}
             for r in inc.itertuples()}
    for t in points:
        running = inc[(inc["start"] + pd.Timedelta(hours=6) <= t) & (inc["end"] > t)]
        if running.empty:
            continue
        det = detect(costs, usage, cfg, as_of=t, since=t - ALERT_WINDOW, planned=marks)
        # judged like incidents.plan: at the end of the project's published data when that is earlier
        ends = data_ends(costs[costs["period_start"].dt.floor("D") + delay <= t - pd.Timedelta(days=1)],
                         usage[usage["timestamp"].dt.floor("h") + pd.Timedelta(hours=1) <= t])
        for _, i in running.iterrows():
            want = ("mining_suspected",) if i["is_mining"] else ("cost_spike",)
            alive = [a for a in det.alerts if a.project == str(i["project_id"]) and a.kind in want
                     and a.detected_at >= i["start"] - pd.Timedelta(hours=1)
                     and is_active(a, min(t, ends.get((a.project, _source(a)), t)), grace)]
            s = state[i["id"]]
            if alive:
                s["seen"] = True
            elif s["seen"]:
                s["dropped"].append(t)
    return [{"id": k, **v} for k, v in state.items()]


def _source(a: Alert) -> str:
    """The data an alert is judged on in ``incidents.plan``: hourly CPU for a CPU mining alert, else cost."""
    return "usage" if a.kind == "mining_suspected" and a.evidence.get("ongoing_until") else "cost"


def _ratio(num: float, den: float) -> str:
    return f"{num / den:.3f}" if den else "—"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--projects", type=int, default=40)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--classic", action="store_true", help="the plain generator (no issue-16 failure classes)")
    ap.add_argument("--replay", action="store_true", help="also replay as-of runs over ongoing incidents")
    ap.add_argument("--replay-every", type=int, default=24, help="hours between replayed as-of runs")
    args = ap.parse_args(argv)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    results = [evaluate(s, args.projects, args.days, args.classic, args.replay_every if args.replay else 0)
               for s in seeds]
    df = pd.DataFrame([r for res in results for r in res["rows"]])
    print(f"seeds {seeds[0]}..{seeds[-1]}, {args.projects} projects, {args.days} days, "
          f"{'classic' if args.classic else 'failure classes'}")
    print("\nper seed:")
    head = ("| seed | mining recall | precision (all / critical) | noise per clean project-month | "
            "cost-change recall | median delay (CPU) | replay: resolved while running (miners + cost steps) |")
    print(head)
    print("|---|---|---|---|---|---|---|")
    for r in results:
        d = pd.DataFrame(r["rows"])
        m = d[d["is_mining"]] if len(d) else d
        c = d[d["kind"].isin(list(COST_CHANGE_KINDS))] if len(d) else d
        delay = m[m["has_cpu"]]["delay_h"].median() if len(m) else float("nan")
        rep = r.get("replay")
        dropped = "—" if rep is None else \
            f"{sum(bool(x['dropped']) for x in rep)}/{sum(x['seen'] for x in rep)}"
        print(f"| {r['seed']} | {_ratio(m['found'].sum(), len(m))} ({int(m['found'].sum())}/{len(m)}) | "
              f"{_ratio(r['true_pos'], r['mining_alerts'])} / {_ratio(r['critical_true'], r['critical_alerts'])} | "
              f"{_ratio(r['clean_alerts'], r['clean_project_months'])} ({r['clean_alerts']}) | "
              f"{_ratio(c['cost_found'].sum(), len(c))} ({int(c['cost_found'].sum())}/{len(c)}) | "
              f"{delay:.0f} h | {dropped} |")
    mining = df[df["is_mining"]]
    benign = df[~df["is_mining"]]
    print("\nmining recall by kind:")
    for kind, g in mining.groupby("kind"):
        print(f"  {kind:24s} {g['found'].mean():.3f}  ({int(g['found'].sum())}/{len(g)})  "
              f"median delay {g['delay_h'].median():.1f} h, max {g['delay_h'].max():.1f} h")
    n_alerts = sum(int(r["mining_alerts"]) for r in results)
    tp = sum(int(r["true_pos"]) for r in results)
    n_crit = sum(int(r["critical_alerts"]) for r in results)
    crit_tp = sum(int(r["critical_true"]) for r in results)
    cpu_delay = mining[mining["has_cpu"]]["delay_h"].median()
    cost_delay = mining[~mining["has_cpu"]]["delay_h"].median()
    print("\npooled:")
    found = int(mining["found"].sum())
    print(f"mining recall        {_ratio(found, len(mining))}  ({found}/{len(mining)})")
    print(f"mining precision     {_ratio(tp, n_alerts)}  ({tp}/{n_alerts} mining alerts matched a mining incident); "
          f"critical only {_ratio(crit_tp, n_crit)} ({crit_tp}/{n_crit})")
    print(f"median delay         {cpu_delay:.1f} h with hourly CPU, {cost_delay:.1f} h from cost alone")
    print("benign incidents called mining (any severity / critical):")
    for kind, g in benign.groupby("kind"):
        print(f"  {kind:24s} {int(g['found'].sum())}/{len(g)}  {int(g['critical'].sum())}/{len(g)}")
    cc = df[df["kind"].isin(list(COST_CHANGE_KINDS))]
    print("cost-change recall   " + _ratio(cc["cost_found"].sum(), len(cc))
          + f"  ({int(cc['cost_found'].sum())}/{len(cc)}: "
          + ", ".join(f"{k} {int(g['cost_found'].sum())}/{len(g)}" for k, g in cc.groupby("kind")) + ")")
    cpm = sum(float(r["clean_project_months"]) for r in results)
    ca = sum(int(r["clean_alerts"]) for r in results)
    kinds: dict[str, int] = {}
    for r in results:
        for k, v in r["clean_by_kind"].items():
            kinds[k] = kinds.get(k, 0) + int(v)
    print(f"alerts per clean project-month: {_ratio(ca, cpm)} ({ca} alerts in {cpm:.1f} project-months, {kinds})")
    print(f"cost alerts on planned steps marked as planned: {sum(int(r['planned_alerts']) for r in results)}")
    if args.replay:
        reps = [x for r in results for x in r.get("replay", [])]
        for label, kinds_of in (("miners", MINING_KINDS), ("cost steps", frozenset({"cost_step"}))):
            xs = [x for x in reps if x["kind"] in kinds_of]
            print(f"replay, {label}: {sum(bool(x['dropped']) for x in xs)} of {sum(x['seen'] for x in xs)} alerted "
                  f"({len(xs)} in all) lost their active alert while still running "
                  f"(as-of runs every {args.replay_every} h)")
            for x in xs:
                if x["dropped"]:
                    print(f"    {x['kind']} {x['project']}: no active alert at {x['dropped'][0]:%Y-%m-%d %H:%M} "
                          f"(+{len(x['dropped']) - 1} later)")
    secs = [float(r["seconds"]) for r in results]
    print(f"detect(): median {np.median(secs):.2f} s per data set "
          f"({results[0]['series']} project series, {results[0]['nodes']} nodes, {args.days} days)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
