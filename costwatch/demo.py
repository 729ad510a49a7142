"""``costwatch demo``: a seeded multi-cloud data set with real incidents, run through the real pipeline.

The demo writes the data as a FOCUS CSV export and a usage CSV, then reads them back through the files
provider, so what a new user sees is exactly what ``costwatch report`` does on their own exports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.console import Console

from .config import Config, ProjectConfig
from .detect import Detection, detect
from .safetext import plain_console
from .scenarios import Scenario, demo_scenario

PROVIDER_NAMES = {"aws": "AWS", "gcp": "Google Cloud", "azure": "Microsoft"}


def to_focus(costs: pd.DataFrame) -> pd.DataFrame:
    """Normalized cost frame -> FOCUS 1.0 columns (the subset costwatch reads)."""
    fmt = "%Y-%m-%d %H:%M:%S"
    start = costs["period_start"]
    end = start + pd.to_timedelta(costs["period_hours"], unit="h")
    return pd.DataFrame({
        "ChargePeriodStart": start.dt.strftime(fmt),
        "ChargePeriodEnd": end.dt.strftime(fmt),
        "BilledCost": costs["billed_cost"].round(6),
        "EffectiveCost": costs["effective_cost"].round(6),
        "BillingCurrency": costs["currency"],
        "ChargeCategory": costs["charge_category"],
        "ProviderName": costs["provider"].map(lambda p: PROVIDER_NAMES.get(str(p), str(p))),
        "SubAccountId": costs["project_id"],
        "SubAccountName": costs["project_name"],
        "ServiceCategory": costs["service_category"],
        "ServiceName": costs["service"],
        "RegionId": costs["region"],
        "ResourceId": costs["resource_id"],
        "Tags": costs["tags"].map(lambda t: json.dumps(t, sort_keys=True) if isinstance(t, dict) and t else ""),
        "x_Estimated": costs["estimated"].map(lambda b: "true" if b else "false"),
    })


def demo_config(sc: Scenario) -> Config:
    projects = {}
    for r in sc.projects.itertuples():
        kw: dict[str, object] = {"name": r.project_name, "owner": r.owner}
        if pd.notna(r.monthly_budget):
            kw["monthly_budget"] = round(float(r.monthly_budget), 2)
        if pd.notna(r.daily_threshold):
            kw["daily_threshold"] = round(float(r.daily_threshold), 2)
        projects[str(r.project_id)] = ProjectConfig(**kw)  # type: ignore[arg-type]
    return Config(projects=projects)


def demo_config_yaml(sc: Scenario) -> str:
    """The same config as ``demo_config``, as a file a user can edit and re-run with the CLI."""
    import yaml

    projects: dict[str, dict[str, object]] = {}
    for r in sc.projects.itertuples():
        entry: dict[str, object] = {"name": str(r.project_name), "owner": str(r.owner)}
        if pd.notna(r.monthly_budget):
            entry["monthly_budget"] = round(float(r.monthly_budget), 2)
        if pd.notna(r.daily_threshold):
            entry["daily_threshold"] = round(float(r.daily_threshold), 2)
        projects[str(r.project_id)] = entry
    doc = {"providers": [{"type": "files", "costs": "costs.focus.csv", "usage": "usage.csv"}],
           "projects": projects}
    return "# written by `costwatch demo`; paths are relative to this file\n" + yaml.safe_dump(
        doc, sort_keys=False, allow_unicode=True)


def run_demo(out_dir: Path, fmt: str = "table", charts: bool = True, console: Console | None = None,
             ) -> Detection:
    from costwatch.providers.files import load_focus, load_usage

    from .charts import write_charts
    from .report import render, renderable

    console = console or plain_console()
    sc = demo_scenario()
    out_dir.mkdir(parents=True, exist_ok=True)
    costs_path, usage_path = out_dir / "costs.focus.csv", out_dir / "usage.csv"
    to_focus(sc.costs).to_csv(costs_path, index=False)
    u = sc.usage.copy()
    u["timestamp"] = u["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    u.to_csv(usage_path, index=False)
    cfg = demo_config(sc)
    config_path = out_dir / "costwatch.yaml"
    config_path.write_text(demo_config_yaml(sc), encoding="utf-8")
    costs = load_focus(costs_path)
    usage = load_usage(usage_path)
    det = detect(costs, usage, cfg, as_of=sc.end, since=pd.Timedelta(days=14))
    (out_dir / "report.json").write_text(render(det, "json"), encoding="utf-8")
    sc.incidents.assign(nodes=sc.incidents["nodes"].map(list)).to_json(
        out_dir / "incidents.json", orient="records", date_format="iso", indent=2)
    if fmt == "table":
        console.print(renderable(det))
    else:
        console.print(render(det, fmt), markup=False, highlight=False, soft_wrap=True, end="")
    written = write_charts(det, out_dir / "charts") if charts else []
    # keep stdout pure JSON/Markdown for pipes; the where-to-find-it lines go to stderr then
    info = console if fmt == "table" else plain_console(stderr=True)
    info.print(f"\nData: {costs_path} ({len(costs):,} cost rows), {usage_path} ({len(usage):,} CPU samples)")
    info.print(f"Report: {out_dir / 'report.json'}; ground truth: {out_dir / 'incidents.json'}")
    if written:
        info.print(f"Charts: {len(written)} PNG files in {out_dir / 'charts'}")
    info.print(f"Re-run it yourself: costwatch report --config {config_path} "
               f"--as-of {sc.end.strftime('%Y-%m-%dT%H:%M:%SZ')} --since 14d", soft_wrap=True, highlight=False)
    return det
