"""Monitors at scale: 500 monitors (templated and explicit) over a 1M-row daily cost frame.

    python bench/monitors.py                       # 1,000,000 rows (90 days x 11,112 resources), 500 monitors
    python bench/monitors.py --rows 200000         # quicker

The frame is what a files provider hands detection: one row per resource and UTC day, 3 providers, 200
projects, 20 services, 12 regions, tags team (40 values), env (3) and a Kubernetes namespace (400 values,
under ``k8s-namespace`` as GKE cost allocation writes it) and label (``k8s-label/app``); rows share their tag
dicts, as the loaders decode each distinct tag text once.  Each namespace is billed to one project (two per
project); ten namespaces (five projects) get a spike in the last week.

The monitors: ``for_each: namespace`` (400), ``for_each: tag:team`` (40) and 60 explicit ones (regions,
services, env and team tags, projects, labels, lists of values).  Timed: ``monitors.select`` alone (the
selection, template expansion and the monitors' daily rows), and the whole ``detect`` with and without the
monitors on the same frame (bands, alerts, thresholds, budgets, summaries for 200 projects + 500 monitors).
Wall and process CPU time are printed (CPU time is what the work costs whatever else shares the machine;
bands use two threads, so it can exceed wall time on an idle box).  Nothing is asserted.

Measured on the project's 2-core box while four other jobs shared it (load average 3-5), 1,000,000 rows,
500 monitors: see the README's "Monitors" section for the figures of the last run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costwatch import monitors
from costwatch.config import Config, MonitorConfig
from costwatch.detect import detect
from costwatch.model import normalize_costs

DAYS = 90
WEEK = np.array([1.0, 1.05, 1.1, 1.05, 1.0, 0.6, 0.55])


def frame(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = max(rows // DAYS, 1)  # resources
    providers = np.array(["aws", "gcp", "azure"])
    regions = np.array([f"region-{i}" for i in range(12)])
    services = np.array([f"service-{i}" for i in range(20)])
    cats = np.array(["Compute", "Storage", "Networking", "Databases", "AI and Machine Learning", "Other"])
    ns = rng.integers(0, 400, n)
    project = ns // 2  # a namespace lives in one cluster, billed to one project
    env = rng.integers(0, 3, n)
    app = rng.integers(0, 8, n)
    svc = rng.integers(0, 20, n)
    # one tag dict per distinct combination, shared by its rows (as the loaders give them)
    combos: dict[tuple[int, int, int], dict[str, str]] = {}
    tag_of = np.empty(n, dtype=object)
    for i, key in enumerate(zip(ns.tolist(), env.tolist(), app.tolist(), strict=True)):
        t = combos.get(key)
        if t is None:
            t = combos[key] = {"team": f"team-{key[0] % 40}", "env": ("prod", "staging", "dev")[key[1]],
                               "k8s-namespace": f"ns-{key[0]}", "k8s-label/app": f"app-{key[2]}"}
        tag_of[i] = t
    level = rng.lognormal(1.0, 1.0, n)
    days = pd.date_range("2026-08-01", periods=DAYS, freq="D", tz="UTC")
    vals = level[None, :] * WEEK[days.dayofweek.to_numpy() % 7][:, None] * rng.normal(1, 0.05, (DAYS, n))
    spiky = np.isin(ns, np.arange(10))
    vals[-7:, spiky] *= 4.0
    ix = np.tile(np.arange(n), DAYS)
    return normalize_costs(pd.DataFrame({
        "period_start": np.repeat(days, n), "period_hours": 24.0,
        "provider": providers[project % 3][ix], "project_id": np.char.add("p", project.astype(str))[ix],
        "service": services[svc][ix], "service_category": cats[svc % 6][ix],
        "region": regions[(project + svc) % 12][ix], "charge_category": "Usage",
        "resource_id": np.char.add("r", np.arange(n).astype(str))[ix],
        "billed_cost": vals.ravel(), "effective_cost": vals.ravel(), "currency": "USD",
        "tags": tag_of[ix], "estimated": False,
    }))


def monitor_configs() -> list[MonitorConfig]:
    out = [MonitorConfig(name="{value}", for_each="namespace", owner="{value}", max_monitors=500),
           MonitorConfig(name="team-{value}", for_each="tag:team", owner="{value}")]
    for i in range(60):
        sel: dict[str, object] = [
            {"region": [f"region-{i % 12}", f"region-{(i + 5) % 12}"]},
            {"service": f"service-{i % 20}", "tags": {"env": "prod"}},
            {"tags": {"team": [f"team-{i % 40}", f"team-{(i + 1) % 40}"], "env": ["prod", "staging"]}},
            {"project": [f"p{j}" for j in range(i, i + 10)]},
            {"labels": {"app": f"app-{i % 8}"}, "provider": "gcp"},
            {"namespace": [f"ns-{j}" for j in range(i, 400, 60)], "service_category": "Compute"},
        ][i % 6]
        out.append(MonitorConfig.model_validate({"name": f"explicit-{i}", "selector": sel, "owner": "finops",
                                                 "monthly_budget": 1e6, "daily_threshold": 1e5}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    t = time.perf_counter()
    costs = frame(args.rows)
    print(f"data: {len(costs):,} rows, {costs['project_id'].nunique()} projects, generated in "
          f"{time.perf_counter() - t:.1f} s")
    cfg = Config(monitors=monitor_configs())
    as_of = costs["period_start"].max() + pd.Timedelta(days=1)
    since = as_of - pd.Timedelta(days=14)

    t, c = time.perf_counter(), time.process_time()
    sel = monitors.select(costs, cfg)
    t_sel, c_sel = time.perf_counter() - t, time.process_time() - c
    print(f"select: {len(sel.monitors)} monitors from {len(cfg.monitors)} entries, {len(sel.costs) - sel.n_base:,} "
          f"monitor rows, {sel.n_profiles:,} profiles: {t_sel:.2f} s wall, {c_sel:.2f} s CPU")

    t, c = time.perf_counter(), time.process_time()
    det = detect(costs, None, cfg, as_of=as_of, since=since, now=as_of)
    t_det, c_det = time.perf_counter() - t, time.process_time() - c
    mon_alerts = [a for a in det.alerts if monitors.is_monitor(a.project)]
    spiked = sorted({a.evidence["monitor"] for a in mon_alerts if a.evidence["monitor"].startswith("ns-")})
    print(f"detect with monitors: {t_det:.2f} s wall, {c_det:.2f} s CPU; {len(det.alerts)} alerts, "
          f"{len(mon_alerts)} from monitors (namespace monitors alerting: {len(spiked)}: {', '.join(spiked[:12])})")

    t, c = time.perf_counter(), time.process_time()
    base = detect(costs, None, Config(), as_of=as_of, since=since, now=as_of)
    t_base, c_base = time.perf_counter() - t, time.process_time() - c
    print(f"detect without monitors: {t_base:.2f} s wall, {c_base:.2f} s CPU; {len(base.alerts)} alerts")
    print(f"=> {len(sel.monitors)} monitors over {len(costs):,} rows: selection {t_sel:.2f} s, selection + detection "
          f"{t_det:.2f} s ({t_det - t_base:+.2f} s over projects alone); CPU {c_sel:.2f} s and {c_det:.2f} s "
          f"({c_det - c_base:+.2f} s); load average "
          + ", ".join(f"{x:.1f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
