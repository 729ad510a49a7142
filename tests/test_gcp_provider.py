"""The gcp provider through the real Google SDKs against local fakes (``fake_gcp``): BigQuery export queries
(standard, detailed, FOCUS), their parameters, partition filter, paging, bytes and incremental cache; the
Cloud Billing project list; Cloud Monitoring CPU over gRPC; throttling, expired credentials, denied roles,
a failing project; and a miner in a new region found end to end by ``detect``."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("google.cloud.bigquery")
pytest.importorskip("google.cloud.billing_v1")
pytest.importorskip("google.cloud.monitoring_v3")

from fake_gcp import FakeBigQuery, FakeBilling, FakeMonitoring, FakeOAuth, load, node_series, standard_row, vm_series
from google.auth.credentials import AnonymousCredentials

from costwatch.config import GcpProviderConfig, parse_config
from costwatch.errors import ConfigError, ProviderError
from costwatch.model import validate_costs, validate_usage
from costwatch.providers._daycache import fetch_windows
from costwatch.providers.gcp import GcpProvider, from_config
from costwatch.providers.gcp.billing import build_sql, quoted_table, service_category
from costwatch.providers.gcp.monitoring import region_of

TABLE = "billing-proj.billing_ds.gcp_billing_export_v1_012345_6789AB_CDEF01"
ACCOUNT = "012345-6789AB-CDEF01"
NOW = "2024-03-10 12:00"


@pytest.fixture
def bq() -> Iterator[FakeBigQuery]:
    fake = FakeBigQuery()
    yield fake
    fake.stop()


@pytest.fixture
def billing() -> Iterator[FakeBilling]:
    fake = FakeBilling(page_size=2)
    yield fake
    fake.stop()


@pytest.fixture
def mon() -> Iterator[FakeMonitoring]:
    fake = FakeMonitoring(page_size=4)
    yield fake
    fake.stop()


def clock_at(ts: str) -> Any:
    t = pd.Timestamp(ts, tz="UTC")
    return lambda: t


def provider(tmp_path: Path, *fakes: Any, now: str = NOW, **kw: Any) -> GcpProvider:
    """A provider with anonymous credentials whose endpoints are the given fakes; fast retries."""
    endpoints = {}
    for f in fakes:
        key = {FakeBigQuery: "bigquery", FakeBilling: "billing", FakeMonitoring: "monitoring"}[type(f)]
        endpoints[key] = f.url
    kw.setdefault("billing_table", TABLE if "bigquery" in endpoints else None)
    kw.setdefault("retry_initial", 0.001)
    kw.setdefault("retry_deadline", 5.0)
    kw.setdefault("credentials", AnonymousCredentials())
    return GcpProvider(cache_path=tmp_path / "gcp-cache.db", endpoints=endpoints, clock=clock_at(now), **kw)


def day(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def by_key(costs: pd.DataFrame, *keys: str) -> dict[tuple[Any, ...], tuple[float, float]]:
    """(day, *keys) -> (billed, effective)."""
    d = costs.assign(d=costs["period_start"].dt.strftime("%Y-%m-%d"))
    g = d.groupby(["d", *keys], dropna=False)[["billed_cost", "effective_cost"]].sum()
    return {k: (round(v[0], 6), round(v[1], 6)) for k, v in zip(g.index, g.to_numpy(), strict=True)}


# ------------------------------------------------------------------------------------------ BigQuery costs


def test_standard_export_credits_become_effective_cost(bq: FakeBigQuery, tmp_path: Path) -> None:
    bq.tables[TABLE] = ("standard", load("standard_export_rows.json"))
    p = provider(tmp_path, bq)
    costs = p.fetch_costs(day("2024-03-05"), day("2024-03-07"))
    validate_costs(costs)
    got = by_key(costs, "project_id", "service", "charge_category")
    # two Compute rows, 20 billed, credits -1.5 -0.5 -1.5: effective = cost + SUM(credits.amount)
    assert got[("2024-03-05", "web-prod", "Compute Engine", "Usage")] == (20.0, 16.5)
    assert got[("2024-03-05", "web-prod", "Compute Engine", "Tax")] == (1.2, 1.2)
    assert got[("2024-03-05", "ml-sandbox", "Vertex AI", "Usage")] == (5.0, 0.0)  # a free-trial credit
    # the 03-06 row exported two days late is still counted; a charge with no project goes to the account
    assert got[("2024-03-06", "web-prod", "Compute Engine", "Usage")] == (13.0, 11.0)
    assert got[("2024-03-06", f"billingAccounts/{ACCOUNT}", "Support", "Usage")] == (29.0, 29.0)
    cats = dict(zip(costs["service"], costs["service_category"], strict=True))
    assert cats["Compute Engine"] == "Compute" and cats["Cloud Storage"] == "Storage"
    assert cats["Vertex AI"] == "AI and Machine Learning" and cats["Support"] == "Support"
    web = costs[costs["project_id"] == "web-prod"]
    assert set(web["project_name"]) == {"Web Production"}
    assert all(t == {"owner": "alice"} for t in web["tags"])  # project label, on every row of the project
    assert costs.loc[costs["service"] == "Cloud Storage", "region"].isna().all()
    assert set(costs["region"].dropna()) == {"us-central1", "europe-west4"}
    assert set(costs["provider"]) == {"gcp"} and set(costs["currency"]) == {"USD"}
    # NOW is 03-10 and restate_days 3: both days are settled
    assert not costs["estimated"].any()


def test_query_is_parameterized_and_partition_filtered(bq: FakeBigQuery, tmp_path: Path) -> None:
    rows = load("standard_export_rows.json")
    bq.tables[TABLE] = ("standard", rows)
    p = provider(tmp_path, bq, owner_label="team-owner")
    p.fetch_costs(day("2024-03-05"), day("2024-03-07"))
    (body,) = bq.queries
    sql = body["query"]
    assert body["useLegacySql"] is False and body["parameterMode"] == "NAMED"
    assert not re.search(r"\d{4}-\d{2}-\d{2}|\b2024\b", sql), "a date was interpolated into the SQL"
    assert "team-owner" not in sql and "'owner'" not in sql
    # the table is the only spliced text: once, backtick-quoted
    assert sql.count(TABLE) == 1 and f"`{TABLE}`" in sql
    assert "_PARTITIONTIME >= @partition_start AND _PARTITIONTIME < @partition_end" in sql
    params = {q["name"]: (q["parameterType"]["type"], q["parameterValue"]["value"]) for q in body["queryParameters"]}
    assert params["start"] == ("TIMESTAMP", "2024-03-05 00:00:00+00:00")
    assert params["end"] == ("TIMESTAMP", "2024-03-07 00:00:00+00:00")
    assert params["owner_label"] == ("STRING", "team-owner")
    # one day of slack before (Pacific-time billing), late exports after, never past today
    assert params["partition_start"] == ("TIMESTAMP", "2024-03-04 00:00:00+00:00")
    assert params["partition_end"] == ("TIMESTAMP", "2024-03-11 00:00:00+00:00")
    assert body["labels"] == {"app": "costwatch"}
    # bytes: only the partitions asked for were read (not the January one)
    scanned = sum(1 for r in rows if "2024-03-04" <= r["_PARTITIONTIME"][:10] < "2024-03-11")
    assert scanned < len(rows)
    assert p.stats()["bigquery_bytes_processed"] == scanned * bq.bytes_per_row


def test_table_name_is_validated_before_it_reaches_sql() -> None:
    assert quoted_table(TABLE) == f"`{TABLE}`"
    for bad in ("p.d.t` WHERE 1=1; --", "p.d", "p.d.t\nUNION", "`p.d.t`"):
        with pytest.raises(ConfigError):
            quoted_table(bad)
        with pytest.raises(ValueError):
            GcpProviderConfig(billing_table=bad)
    assert "@partition_start" not in build_sql("focus", TABLE)


def test_detailed_export_keeps_resources(bq: FakeBigQuery, tmp_path: Path) -> None:
    vm = "projects/web-prod/zones/us-central1-a/instances/web-1"
    bq.tables[TABLE] = ("detailed", [
        standard_row("2024-03-05", "web-prod", "Compute Engine", 7.0, resource=vm, credits=[-1.0]),
        standard_row("2024-03-05", "web-prod", "Compute Engine", 3.0, resource=vm, hour=11),
        standard_row("2024-03-05", "web-prod", "Compute Engine", 4.0, resource="other-vm"),
    ])
    p = provider(tmp_path, bq, export="detailed")
    costs = p.fetch_costs(day("2024-03-05"), day("2024-03-06"))
    validate_costs(costs)
    assert "resource.name AS resource_id" in bq.queries[0]["query"]
    assert by_key(costs, "resource_id") == {("2024-03-05", vm): (10.0, 9.0), ("2024-03-05", "other-vm"): (4.0, 4.0)}


def test_focus_view(bq: FakeBigQuery, tmp_path: Path) -> None:
    bq.tables[TABLE] = ("focus", load("focus_view_rows.json"))
    p = provider(tmp_path, bq, export="focus", now="2024-03-07 08:00")
    costs = p.fetch_costs(day("2024-03-05"), day("2024-03-07"))
    validate_costs(costs)
    sql = bq.queries[0]["query"]
    assert "ChargePeriodStart >= @start AND ChargePeriodStart < @end" in sql and "_PARTITIONTIME" not in sql
    got = by_key(costs, "project_id", "service_category", "charge_category")
    assert got[("2024-03-05", "web-prod", "Compute", "Usage")] == (25.0, 22.0)
    assert got[("2024-03-05", "web-prod", "Compute", "Tax")] == (1.2, 1.2)
    assert got[("2024-03-05", "ml-sandbox", "AI and Machine Learning", "Usage")] == (5.0, 0.0)
    assert got[("2024-03-06", "web-prod", "Compute", "Usage")] == (12.0, 10.0)
    assert ("2024-02-01", "web-prod", "Compute", "Usage") not in got
    web = costs[costs["project_id"] == "web-prod"]
    assert all(t == {"owner": "alice"} for t in web["tags"])
    assert costs.loc[costs["project_id"] == "ml-sandbox", "project_name"].iloc[0] == "ML Sandbox"
    assert web["resource_id"].dropna().str.endswith("/instances/web-1").all()
    # 03-06 is within restate_days of 03-07: it can still change
    assert costs.groupby(costs["period_start"].dt.day)["estimated"].all().to_dict() == {5: True, 6: True}
    assert p.stats()["bigquery_bytes_processed"] == 6 * bq.bytes_per_row  # the February row was not read


def test_query_results_are_paged(tmp_path: Path) -> None:
    bq = FakeBigQuery(page_rows=2)
    try:
        bq.tables[TABLE] = ("standard", [standard_row("2024-03-05", f"proj-{i}", "Compute Engine", float(i + 1))
                                         for i in range(7)])
        p = provider(tmp_path, bq)
        costs = p.fetch_costs(day("2024-03-05"), day("2024-03-06"))
        assert sorted(costs["project_id"]) == [f"proj-{i}" for i in range(7)]
        assert costs["billed_cost"].sum() == pytest.approx(28.0)
        st = p.stats()
        assert (st["bigquery_queries"], st["bigquery_pages"]) == (1, 4)
        tokens = [r.query.get("pageToken", [None])[0] for r in bq.received if "/queries/" in r.path]
        assert tokens == ["2", "4", "6"]
    finally:
        bq.stop()


def test_second_run_queries_only_restated_days(bq: FakeBigQuery, tmp_path: Path) -> None:
    days = pd.date_range("2024-02-10", "2024-03-10", freq="D")
    bq.tables[TABLE] = ("standard", [standard_row(d.date().isoformat(), "web-prod", "Compute Engine", 10.0)
                                     for d in days])
    start, end = day("2024-02-10"), day("2024-03-10 12:00")
    first = provider(tmp_path, bq, now="2024-03-10 12:00")
    costs1 = first.fetch_costs(start, end)
    assert len(costs1) == 30 and first.stats()["bigquery_days_fetched"] == 30

    # an hour later Google adds a late credit to yesterday and (wrongly) changes an old day: only the last
    # restate_days + today are asked for, so the credit shows and the settled day keeps its cached value
    rows = bq.tables[TABLE][1]
    rows.append(standard_row("2024-03-09", "web-prod", "Compute Engine", 0.0, credits=[-4.0], partition_lag_days=1))
    rows.append(standard_row("2024-02-15", "web-prod", "Compute Engine", 99.0))
    second = provider(tmp_path, bq, now="2024-03-10 13:00")
    costs2 = second.fetch_costs(start, end)
    st = second.stats()
    assert (st["bigquery_queries"], st["bigquery_days_fetched"]) == (1, 4)
    params = {q["name"]: q["parameterValue"]["value"] for q in bq.queries[-1]["queryParameters"]}
    assert (params["start"], params["end"]) == ("2024-03-07 00:00:00+00:00", "2024-03-11 00:00:00+00:00")
    assert st["bigquery_bytes_processed"] < first.stats()["bigquery_bytes_processed"] / 4
    daily = costs2.groupby(costs2["period_start"].dt.strftime("%m-%d"))["effective_cost"].sum()
    assert daily["03-09"] == pytest.approx(6.0) and daily["02-15"] == pytest.approx(10.0)
    assert costs2["estimated"].sum() == 4

    # a third run in the same hour with nothing new still re-reads only those days
    third = provider(tmp_path, bq, now="2024-03-10 13:30")
    third.fetch_costs(start, end)
    assert third.stats()["bigquery_days_fetched"] == 4


def test_replay_asks_what_a_run_at_as_of_asked_and_leaves_the_cache_sound(bq: FakeBigQuery, mon: FakeMonitoring,
                                                                          tmp_path: Path) -> None:
    """Hourly runs have kept the cache warm up to now (Mar 10, 12:00).  A replay nine days back (``report
    --as-of``, gathered with ``now`` = as_of) queries the restate window ending at as_of, as the run then did,
    and Monitoring up to as_of, and marks those days estimated.  Partitions are read up to the real today, so a
    day cached by a replay holds the late usage exported since.  The next hourly run re-reads its own restate
    days; an as_of in the future asks for and caches nothing past today."""
    from costwatch.providers._daycache import DayCache
    from costwatch.sources import gather

    rows = [standard_row(d.date().isoformat(), "web-prod", "Compute Engine", 10.0)
            for d in pd.date_range("2024-02-10", "2024-03-10", freq="D")]
    rows.append(standard_row("2024-02-29", "web-prod", "Compute Engine", 5.0, partition_lag_days=3))  # late
    bq.tables[TABLE] = ("standard", rows)
    hours = pd.date_range(day("2024-02-20"), day(NOW), freq="h", inclusive="left")
    mon.series["web-prod"] = [vm_series("1", "web-1", "us-central1-a", "e2-small", [(t, 0.2) for t in hours])]
    mon.page_size = 10_000
    real = day(NOW)

    def run(as_of: pd.Timestamp) -> pd.DataFrame:
        bq.received.clear()
        mon.requests.clear()
        got = gather([provider(tmp_path, bq, mon, projects=["web-prod"])], day("2024-02-10"), as_of, now=as_of)
        assert got.errors == []
        return got.costs

    def windows() -> list[tuple[str, str]]:
        params = [{q["name"]: q["parameterValue"]["value"][:10] for q in b["queryParameters"]} for b in bq.queries]
        return [(p["start"], p["end"]) for p in params]

    run(real)  # the hourly run that warmed the cache
    as_of = day("2024-03-01 06:00")
    costs = run(as_of)
    assert windows() == [("2024-02-27", "2024-03-02")]
    partition_end = {q["name"]: q["parameterValue"]["value"] for q in bq.queries[0]["queryParameters"]}
    assert partition_end["partition_end"] == "2024-03-09 00:00:00+00:00"
    assert {pd.Timestamp(r.interval.end_time) for r in mon.requests} == {as_of}
    daily = costs.groupby(costs["period_start"].dt.strftime("%Y-%m-%d")).agg(
        cost=("effective_cost", "sum"), estimated=("estimated", "first"))
    assert daily.index.max() == "2024-03-01" and daily.at["2024-02-29", "cost"] == pytest.approx(15.0)
    assert list(daily.index[daily["estimated"]]) == ["2024-02-27", "2024-02-28", "2024-02-29", "2024-03-01"]

    run(real)  # the next hourly run: its own restate window, not the replay's
    assert windows() == [("2024-03-07", "2024-03-11")]
    future = run(real + pd.Timedelta(days=3))
    assert windows() == [("2024-03-07", "2024-03-11")] and future["period_start"].max() == day("2024-03-10")
    assert max(DayCache(tmp_path / "gcp-cache.db", scope="gcp").fetched_days(f"standard:{TABLE}")) == "2024-03-10"


def test_report_owner_is_the_project_label(bq: FakeBigQuery, tmp_path: Path) -> None:
    """The report's ``projects[].owner`` is the project's ``owner`` label from the export, as ``run`` routes."""
    from costwatch.detect import detect
    from costwatch.routing import set_report_owners

    bq.tables[TABLE] = ("standard", [
        standard_row(d.date().isoformat(), pid, "Compute Engine", 10.0, owner=owner)
        for d in pd.date_range("2024-02-20", "2024-03-09", freq="D")
        for pid, owner in (("ml-prod", "ml-team"), ("web-prod", None))])
    costs = provider(tmp_path, bq).fetch_costs(day("2024-02-20"), day(NOW))
    cfg = parse_config("alerting:\n  default_owner: finops\n")
    det = detect(costs, None, cfg, as_of=day(NOW))
    set_report_owners(det.projects, costs, cfg)
    assert {p["project"]: p["owner"] for p in det.projects} == {"ml-prod": "ml-team", "web-prod": "finops"}


def test_fetch_windows_merge_only_touching_days() -> None:
    import datetime as dt

    d = [dt.date(2024, 3, i) for i in range(1, 11)]
    cached = {x.isoformat() for x in d[:3] + d[5:8]}
    assert fetch_windows(d, cached, dt.date(2024, 3, 10), 1) == [
        (dt.date(2024, 3, 4), dt.date(2024, 3, 6)), (dt.date(2024, 3, 9), dt.date(2024, 3, 11))]


def test_empty_export_and_empty_project(bq: FakeBigQuery, mon: FakeMonitoring, tmp_path: Path) -> None:
    bq.tables[TABLE] = ("standard", [])
    p = provider(tmp_path, bq, mon, projects=["empty-proj"])
    costs = p.fetch_costs(day("2024-03-01"), day("2024-03-10"))
    usage = p.fetch_usage(day("2024-03-09"), day(NOW))
    assert costs.empty and usage.empty
    assert list(costs.columns)[:3] == ["period_start", "period_hours", "provider"]
    validate_costs(costs)
    validate_usage(usage)
    st = p.stats()
    assert st["errors"] == [] and st["bigquery_days_fetched"] == 9 and st["monitoring_requests"] == 2


# ------------------------------------------------------------------------------------------ Cloud Billing


def test_billing_projects_paged_and_disabled_noted(billing: FakeBilling, mon: FakeMonitoring, tmp_path: Path) -> None:
    billing.accounts[ACCOUNT] = load("billing_projects.json")
    p = provider(tmp_path, billing, mon, billing_account=ACCOUNT)
    listed = p.billed_projects()
    assert listed is not None
    assert [(x.project_id, x.billing_enabled) for x in listed] == [
        ("data-eng", True), ("legacy-archive", False), ("ml-sandbox", True), ("quiet-proj", True), ("web-prod", True)]
    assert [r.query.get("pageToken") for r in billing.received] == [None, ["2"], ["4"]]
    assert p.stats()["billing_requests"] == 3
    p.fetch_usage(day("2024-03-10"), day(NOW))
    scanned = {r.name for r in mon.requests}
    assert scanned == {"projects/data-eng", "projects/ml-sandbox", "projects/quiet-proj", "projects/web-prod"}
    st = p.stats()
    assert st["projects"] == 4 and st["projects_billing_disabled"] == 1 and st["billing_requests"] == 3
    assert any("legacy-archive" in n and "billing is disabled" in n for n in st["notes"])


def test_configured_projects_win_but_disabled_ones_are_skipped(billing: FakeBilling, mon: FakeMonitoring,
                                                               tmp_path: Path) -> None:
    billing.accounts[ACCOUNT] = load("billing_projects.json")
    p = provider(tmp_path, billing, mon, billing_account=ACCOUNT, projects=["web-prod", "legacy-archive"])
    p.fetch_usage(day("2024-03-10"), day(NOW))
    assert {r.name for r in mon.requests} == {"projects/web-prod"}


# ------------------------------------------------------------------------------------------ Monitoring


def test_monitoring_cpu_hourly_percent_paged(mon: FakeMonitoring, tmp_path: Path) -> None:
    mon.series["web-prod"] = load("monitoring_time_series.json")["timeSeries"]
    p = provider(tmp_path, mon, projects=["web-prod"])
    usage = p.fetch_usage(day("2024-03-10"), day(NOW))
    validate_usage(usage)
    for r in mon.requests:
        assert r.aggregation.alignment_period.total_seconds() == 3600
        assert r.aggregation.per_series_aligner.name == "ALIGN_MEAN"
    meta = {n: tuple(None if pd.isna(v) else v for v in g[["cluster", "region", "instance_type"]].iloc[0])
            for n, g in usage.groupby("node")}
    # the GKE Standard node's VM series is kept (labelled with its cluster); the Autopilot node has its own
    assert meta == {"web-1": (None, "us-central1", "n2-standard-4"),
                    "gke-web-pool-1-abcd": ("web", "us-central1", "e2-standard-8"),
                    "gk3-auto-pool-1-xyz": ("auto", "europe-west1", None)}
    assert usage.groupby("node").size().tolist() == [6, 6, 6]
    web1 = usage[usage["node"] == "web-1"].sort_values("timestamp")
    assert web1["cpu_utilization"].round(6).tolist() == [21.0, 25.0, 32.0, 40.0, 38.0, 30.0]
    assert web1["timestamp"].iloc[0] == day("2024-03-10 06:00")  # point stamped 07:00 covers 06:00-07:00
    assert (usage["timestamp"] == usage["timestamp"].dt.floor("h")).all()
    assert usage["cpu_utilization"].max() == 100.0  # a 1.02 allocatable utilization is clipped
    # 6 + 6 VM points at 4 a page = 3 pages; 12 node points (6 kept) = 3 pages
    assert p.stats()["monitoring_requests"] == 6 == len(mon.requests)
    assert p.stats()["nodes"] == 3


def test_vms_are_named_as_the_console_and_kubernetes_name_them(mon: FakeMonitoring, tmp_path: Path) -> None:
    """Nodes are instance names, not numeric ids: from the metric label, else the system label; two instances
    sharing a name in different zones are ``zone/name``; the id stays in ``instance_id``; a GKE node's name is
    what its Kubernetes ``spec.providerID`` names, so alerts still find its pods."""
    from costwatch.providers.kubernetes.nodes import identify

    hours = pd.date_range(day("2024-03-10 06:00"), periods=3, freq="h")
    pts = [(t, 0.5) for t in hours]
    no_metric_label = vm_series("313490938602983863", "api-7", "us-east1-b", "e2-small", pts)
    no_metric_label["metric"]["labels"] = {}  # name only in metadata.system_labels
    nameless = vm_series("555", "", "us-east1-b", None, pts)
    nameless["metric"]["labels"] = {}
    mon.series["web-prod"] = [
        vm_series("313490938602983863", "api-7", "us-east1-b", "e2-small", pts), no_metric_label,
        vm_series("111", "worker", "us-east1-b", "e2-small", pts),
        vm_series("222", "worker", "europe-west1-c", "e2-small", pts),
        vm_series("333", "gke-web-pool-1-abcd", "us-central1-a", "e2-standard-8", pts), nameless,
        node_series("gke-web-pool-1-abcd", "web", "us-central1", pts)]
    usage = provider(tmp_path, mon, projects=["web-prod"]).fetch_usage(day("2024-03-10"), day(NOW))
    validate_usage(usage)
    ids = usage.groupby("node")["instance_id"].agg(set).to_dict()
    assert ids == {"api-7": {"313490938602983863"}, "us-east1-b/worker": {"111"}, "europe-west1-c/worker": {"222"},
                   "gke-web-pool-1-abcd": {"333"}, "555": {"555"}}
    assert set(usage.loc[usage["node"] == "gke-web-pool-1-abcd", "cluster"]) == {"web"}
    gke_node = {"metadata": {"name": "gke-web-pool-1-abcd"},
                "spec": {"providerID": "gce://web-prod/us-central1-a/gke-web-pool-1-abcd"}}
    assert "gke-web-pool-1-abcd" in identify(gke_node).aliases


def test_one_project_failing_is_reported_and_others_kept(mon: FakeMonitoring, tmp_path: Path) -> None:
    mon.series["web-prod"] = load("monitoring_time_series.json")["timeSeries"]
    mon.broken["locked-proj"] = (grpc.StatusCode.PERMISSION_DENIED,
                                 "Permission monitoring.timeSeries.list denied (or the resource may not exist).")
    p = provider(tmp_path, mon, projects=["web-prod", "locked-proj"])
    usage = p.fetch_usage(day("2024-03-10"), day(NOW))
    assert set(usage["project"]) == {"web-prod"} and len(usage) == 18
    (err,) = p.stats()["errors"]
    assert "locked-proj" in err and "roles/monitoring.viewer" in err


def test_every_project_failing_raises(mon: FakeMonitoring, tmp_path: Path) -> None:
    mon.unauthenticated = True
    p = provider(tmp_path, mon, projects=["a-proj", "b-proj"])
    with pytest.raises(ProviderError, match="application-default login"):
        p.fetch_usage(day("2024-03-10"), day(NOW))


def test_region_of_zone() -> None:
    assert region_of("us-central1-a") == "us-central1"
    assert region_of("europe-west4") == "europe-west4"
    assert region_of("northamerica-northeast1-c") == "northamerica-northeast1"
    assert region_of(None) is None


# ------------------------------------------------------------------------------------------ throttling


def test_bigquery_429_is_retried(bq: FakeBigQuery, tmp_path: Path) -> None:
    bq.tables[TABLE] = ("standard", load("standard_export_rows.json"))
    bq.fail(429, load("bq_error_rate_limit.json"), times=2, headers={"Retry-After": "0"}, path=r"/queries$")
    p = provider(tmp_path, bq)
    costs = p.fetch_costs(day("2024-03-05"), day("2024-03-07"))
    assert len(costs) > 0
    assert p.stats()["throttled_retries"]["bigquery"] == 2
    assert sum(r.path.endswith("/queries") for r in bq.received) == 3


def test_retry_after_longer_than_the_deadline_gives_up_at_once(bq: FakeBigQuery, tmp_path: Path) -> None:
    """Retry-After is honoured: asked to wait 60 s with a 2 s deadline, the provider does not hammer the API
    with its own short backoff but stops after one request and says it was throttled."""
    bq.tables[TABLE] = ("standard", [])
    bq.fail(429, load("bq_error_rate_limit.json"), times=100, headers={"Retry-After": "60"})
    p = provider(tmp_path, bq, retry_deadline=2.0)
    with pytest.raises(ProviderError, match=r"throttled.*try again later"):
        p.fetch_costs(day("2024-03-05"), day("2024-03-07"))
    assert len(bq.received) == 1


def test_persistent_throttling_is_reported(bq: FakeBigQuery, tmp_path: Path) -> None:
    bq.tables[TABLE] = ("standard", [])
    bq.fail(429, load("bq_error_rate_limit.json"), times=1000)
    p = provider(tmp_path, bq, retry_deadline=0.3)
    with pytest.raises(ProviderError, match=r"still throttled or failing \(429.*raise the bigquery API quota"):
        p.fetch_costs(day("2024-03-05"), day("2024-03-07"))
    assert len(bq.received) >= 2


def test_billing_429_is_retried(billing: FakeBilling, tmp_path: Path) -> None:
    billing.accounts[ACCOUNT] = load("billing_projects.json")
    billing.fail(429, load("billing_error_quota.json"), headers={"Retry-After": "0"})
    p = provider(tmp_path, billing, billing_account=ACCOUNT)
    assert len(p.billed_projects() or []) == 5
    assert p.stats()["throttled_retries"]["billing"] == 1 and len(billing.received) == 4


def test_monitoring_resource_exhausted_is_retried(mon: FakeMonitoring, tmp_path: Path) -> None:
    mon.series["web-prod"] = load("monitoring_time_series.json")["timeSeries"]
    mon.throttle_next = 2
    p = provider(tmp_path, mon, projects=["web-prod"])
    usage = p.fetch_usage(day("2024-03-10"), day(NOW))
    assert len(usage) == 18 and p.stats()["errors"] == []
    assert p.stats()["throttled_retries"]["monitoring"] == 2


# ------------------------------------------------------------------------------------------ credentials


SECRETS = ("ya29.a0-expired-token", "1//0g-refresh-token", "client-secret-value")


def expired_login(oauth: FakeOAuth) -> Any:
    """An ADC user login whose access token the APIs reject and whose refresh token Google has revoked."""
    from google.oauth2.credentials import Credentials

    return Credentials(token=SECRETS[0], refresh_token=SECRETS[1], client_secret=SECRETS[2],
                       client_id="scrubbed.apps.googleusercontent.com", token_uri=f"{oauth.url}/token")


def test_expired_credentials_say_what_to_do(bq: FakeBigQuery, billing: FakeBilling, tmp_path: Path) -> None:
    oauth = FakeOAuth()
    try:
        bq.fail(401, load("bq_error_unauthenticated.json"), times=10)
        billing.fail(401, load("billing_error_unauthenticated.json"), times=10)
        p = provider(tmp_path, bq, billing, billing_account=ACCOUNT, credentials=expired_login(oauth))
        with pytest.raises(ProviderError) as e:
            p.fetch_costs(day("2024-03-05"), day("2024-03-07"))
        with pytest.raises(ProviderError) as e2:
            p.billed_projects()
    finally:
        oauth.stop()
    for err in (str(e.value), str(e2.value)):
        assert "UNAUTHENTICATED" in err and "gcloud auth application-default login" in err
        assert not any(s in err for s in SECRETS)
    # one API request each (then the session tried to refresh the token and Google refused), no retry loop
    assert len(bq.received) == 1 and len(billing.received) == 1 and len(oauth.received) == 2
    assert oauth.received[0].method == "POST"


def test_denied_roles_are_named(bq: FakeBigQuery, billing: FakeBilling, tmp_path: Path) -> None:
    bq.fail(403, load("bq_error_access_denied.json"))
    p = provider(tmp_path, bq, billing, billing_account="FFFFFF-FFFFFF-FFFFFF")
    with pytest.raises(ProviderError, match=r"roles/bigquery\.jobUser"):
        p.fetch_costs(day("2024-03-05"), day("2024-03-07"))
    with pytest.raises(ProviderError, match=r"roles/billing\.viewer"):
        p.billed_projects()


def test_missing_table_and_wrong_flavour(bq: FakeBigQuery, tmp_path: Path) -> None:
    p = provider(tmp_path, bq)
    with pytest.raises(ProviderError, match=r"not found.*billing_table"):
        p.fetch_costs(day("2024-03-05"), day("2024-03-07"))
    # a FOCUS view configured as a standard export: BigQuery rejects the query (400 invalidQuery)
    bq.tables[TABLE] = ("focus", load("focus_view_rows.json"))
    with pytest.raises(ProviderError, match=r"400.*check that `.*` is a standard billing export"):
        provider(tmp_path, bq, export="standard").fetch_costs(day("2024-03-05"), day("2024-03-07"))


def test_no_application_default_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    p = GcpProvider(cache_path=tmp_path / "c.db", billing_table=TABLE, projects=["p"], clock=clock_at(NOW))
    with pytest.raises(ProviderError) as e:
        p.fetch_costs(day("2024-03-05"), day("2024-03-07"))
    assert "gcloud auth application-default login" in str(e.value) and "GOOGLE_APPLICATION_CREDENTIALS" in str(e.value)


# ------------------------------------------------------------------------------------------ config


def test_from_config(tmp_path: Path) -> None:
    cfg = parse_config(f"""
providers:
  - type: gcp
    name: gcp-main
    billing_account: {ACCOUNT}
    billing_table: {TABLE}
    export: focus
    projects: [web-prod]
    restate_days: 2
    owner_label: team
state:
  path: {tmp_path}/state/state.db
""")
    p = from_config(cfg.providers[0], cfg)
    assert isinstance(p, GcpProvider) and p.name == "gcp-main" and p.projects == ["web-prod"]
    assert p.export is not None and p.export.export == "focus" and p.export.query_project == "billing-proj"
    assert p.export.cache.path == tmp_path / "state" / "gcp-cache.db"
    assert p.export.owner_label == "team" and p.restate_days == 2
    no_table = from_config(GcpProviderConfig(cpu=False), None)
    assert no_table.fetch_costs(day("2024-03-05"), day("2024-03-07")).empty
    assert any("billing_table is not set" in n for n in no_table.stats()["notes"])


def test_service_categories() -> None:
    assert service_category("Compute Engine") == "Compute"
    assert service_category("Kubernetes Engine") == "Compute"
    assert service_category("Cloud Run") == "Compute"
    assert service_category("BigQuery Reservation API") == "Analytics"
    assert service_category("Something New") == "Other"


# ------------------------------------------------------------------------------------------ end to end


def test_miner_in_new_region_is_detected(bq: FakeBigQuery, mon: FakeMonitoring, tmp_path: Path) -> None:
    """30 days of one project in us-central1 with web VMs on a daily CPU shape.  Yesterday afternoon new VMs
    appear in asia-southeast1, flat at ~99% ever since, and yesterday's compute spend leaves its band:
    ``detect`` on the provider's frames must call it mining, naming the new region and the instances."""
    from costwatch.detect import detect

    now = pd.Timestamp("2024-03-31 12:00", tz="UTC")
    today = now.floor("D")
    rng = np.random.default_rng(11)
    rows = []
    for d in pd.date_range(today - pd.Timedelta(days=30), today - pd.Timedelta(days=1), freq="D"):
        ds = d.date().isoformat()
        rows.append(standard_row(ds, "ml-prod", "Compute Engine", 40.0 + rng.normal(0, 1.5), credits=[-4.0],
                                 owner="ml-team"))
        rows.append(standard_row(ds, "ml-prod", "Cloud Storage", 3.0 + rng.normal(0, 0.1), owner="ml-team"))
    yesterday = (today - pd.Timedelta(days=1)).date().isoformat()
    rows.append(standard_row(yesterday, "ml-prod", "Compute Engine", 160.0, region="asia-southeast1", hour=15,
                             owner="ml-team"))
    bq.tables[TABLE] = ("standard", rows)

    web = {"5120000000000000001": "web-1", "5120000000000000002": "web-2"}
    old = pd.date_range(now - pd.Timedelta(days=10), now - pd.Timedelta(hours=1), freq="h")
    for iid, name in web.items():
        pts = [(t, min(1.0, max(0.0, (25 + 15 * math.sin(2 * math.pi * t.hour / 24) + rng.normal(0, 4)) / 100)))
               for t in old]
        mon.series["ml-prod"].append(vm_series(iid, name, "us-central1-a", "n2-standard-4", pts))
    miners = {f"91{i:017d}": f"batch-{i}" for i in range(3)}
    new = pd.date_range(today - pd.Timedelta(hours=10), now - pd.Timedelta(hours=1), freq="h")
    for iid, name in miners.items():
        pts = [(t, 0.99 + rng.normal(0, 0.002)) for t in new]
        mon.series["ml-prod"].append(vm_series(iid, name, "asia-southeast1-b", "c2-standard-60", pts))
    mon.series["ml-prod"].append(node_series("gke-ml-pool-x", "ml", "us-central1",
                                             [(t, 0.3) for t in old[-48:]]))
    mon.page_size = 500

    p = provider(tmp_path, bq, mon, projects=["ml-prod"], now=str(now.tz_convert(None)))
    start = today - pd.Timedelta(days=30)
    costs, usage = p.fetch_costs(start, now), p.fetch_usage(start, now)
    validate_costs(costs)
    validate_usage(usage)
    assert set(costs["region"].dropna()) == {"us-central1", "asia-southeast1"}
    cfg = parse_config("projects:\n  ml-prod:\n    owner: ml-team@example.com\n")
    found = detect(costs, usage, cfg, as_of=now)
    mining = [a for a in found.alerts if a.kind == "mining_suspected"]
    assert len(mining) == 1, [(a.kind, a.summary) for a in found.alerts]
    a = mining[0]
    assert a.project == "ml-prod" and a.provider == "gcp" and a.region == "asia-southeast1"
    assert a.evidence["new_regions"] == ["asia-southeast1"]
    # named as the console and Kubernetes name them, the numeric id kept beside the name
    assert {n["node"]: n["instance_id"] for n in a.evidence["nodes"]} == {v: k for k, v in miners.items()}
    assert all(n["instance_type"] == "c2-standard-60" for n in a.evidence["nodes"])
    assert a.evidence["cost"]["new_regions"] and a.severity == "critical"
    st = p.stats()
    assert st["errors"] == [] and st["bigquery_queries"] == 1 and st["nodes"] == 6
