"""The HTML report and the scheduled digest at size: wall time and output size.

    python bench/report_digest.py                          # demo report, a 60-project report, digests of 1M rows
    python bench/report_digest.py --projects 500 --rows 1000000 --owners 50

1. ``html_report.render`` on the demo detection (8 alerts, every one charted) and on a generated scenario
   with many projects (alerts past the 30-chart cap are listed without a chart): seconds, page size, charts.
2. ``digest.plan`` for every owner over a synthetic daily cost frame of ``--rows`` rows (``--projects``
   projects, services and regions, two weeks plus the rest of the lookback): seconds for all owners' digests,
   and the size of the biggest stored document.  The outbox lookups go to a real SQLite store.

Nothing is asserted; figures are printed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from costwatch import digest, html_report
from costwatch.config import Config
from costwatch.demo import demo_config
from costwatch.detect import Detection, detect
from costwatch.model import normalize_costs
from costwatch.scenarios import demo_scenario, generate
from costwatch.state import SqliteStore


def report(label: str, det: Detection) -> None:
    t0 = time.perf_counter()
    page = html_report.render(det)
    took = time.perf_counter() - t0
    print(f"html report, {label}: {len(det.alerts)} alerts, {page.count('<img ')} charts, "
          f"{len(page.encode()) / 1e6:.2f} MB, {took:.2f} s")


def frame(rows: int, projects: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    days = pd.date_range("2026-10-09", "2026-11-15", freq="D", tz="UTC")
    per_day = max(rows // len(days), 1)
    n = per_day * len(days)
    pid = rng.integers(0, projects, n)
    return normalize_costs(pd.DataFrame({
        "period_start": np.repeat(days.values, per_day), "provider": "aws",
        "project_id": pd.Series([f"p{i:04d}" for i in pid]), "project_name": pd.Series([f"project-{i}" for i in pid]),
        "service": pd.Series([f"service-{i}" for i in rng.integers(0, 40, n)]),
        "service_category": "Compute", "region": pd.Series([f"region-{i}" for i in rng.integers(0, 17, n)]),
        "charge_category": "Usage", "resource_id": "", "billed_cost": rng.gamma(2.0, 3.0, n),
        "effective_cost": rng.gamma(2.0, 3.0, n), "currency": "USD"}))


def digests(rows: int, projects: int, owners: int) -> None:
    costs = frame(rows, projects)
    cfg = Config.model_validate({
        "projects": {f"p{i:04d}": {"owner": f"team-{i % owners}"} for i in range(projects)},
        "owners": {f"team-{k}": {"email": [f"team-{k}@example.com"]} for k in range(owners)},
        "notify": {"email": {"smtp_host": "127.0.0.1", "from_addr": "cw@example.com"}, "stdout": False},
        "alerting": {"digest": {"schedule": "weekly"}}})
    project_rows = [{"project": f"p{i:04d}", "project_name": f"project-{i}", "currency": "USD",
                     "forecast": 1000.0 + i, "monthly_budget": 1200.0} for i in range(projects)]
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "state.db")
        t0 = time.perf_counter()
        notes = digest.plan(cfg, project_rows, costs, store, pd.Timestamp("2026-11-16T10:00:00Z"), {})
        took = time.perf_counter() - t0
        store.close()
    biggest = max(len(json.dumps(digest.of(n))) for n in notes)
    print(f"digest plan: {len(costs):,} cost rows, {projects} projects, {len(notes)} owners' digests in {took:.2f} s; "
          f"largest document {biggest / 1e3:.1f} kB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", type=int, default=500)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--owners", type=int, default=50)
    ap.add_argument("--report-projects", type=int, default=60)
    a = ap.parse_args()
    sc = demo_scenario()
    report("demo", detect(sc.costs, sc.usage, demo_config(sc), as_of=sc.end, since=pd.Timedelta(days=14)))
    big = generate(seed=5, n_projects=a.report_projects, days=50)
    report(f"{a.report_projects} projects", detect(big.costs, big.usage, as_of=big.end, since=pd.Timedelta(days=14)))
    digests(a.rows, a.projects, a.owners)


if __name__ == "__main__":
    main()
