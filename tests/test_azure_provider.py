"""The azure provider over the wire: the real Azure SDK clients (consumption, cost management, monitor) and
azure-core's ARM pipeline talk HTTPS to a local fake ARM (tests/fake_azure.py) answering with the services'
JSON shapes.  Covers both usage-detail kinds with paging, the Cost Management query, subscription listing,
VM and scale-set CPU, throttling, credential and RBAC failures, one subscription failing, the day cache, and a
miner in a new region found end to end by ``detect``."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("azure.mgmt.consumption")
pytest.importorskip("cryptography")

import fake_azure as fa

from costwatch.config import AzureProviderConfig, Config
from costwatch.errors import ProviderError
from costwatch.model import validate_costs, validate_usage
from costwatch.providers.azure import AzureProvider
from costwatch.providers.azure.costs import normalize_region, service_category

TOKEN = "eyJ0eXAi.fake-bearer-token.c2VjcmV0-4711"
A, B, C = fa.sub_id(0xA), fa.sub_id(0xB), fa.sub_id(0xC)
USAGE_PATH = r"/providers/Microsoft\.Consumption/usageDetails$"


@pytest.fixture(scope="session")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return fa.make_cert(tmp_path_factory.mktemp("fake-arm-tls"))


@pytest.fixture
def arm(cert: tuple[Path, Path]) -> Iterator[fa.Server]:
    gen = fa.serve(TOKEN, cert)
    server = next(gen)
    yield server
    gen.close()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry waits azure-core asks for, recorded instead of slept, so throttling tests stay fast."""
    asked: list[float] = []
    monkeypatch.setattr(time, "sleep", lambda s: asked.append(float(s)))
    return asked


def clock_at(ts: str) -> Any:
    t = pd.Timestamp(ts, tz="UTC")
    return lambda: t


def provider(arm: fa.Server, tmp_path: Path, now: str = "2024-09-06 12:00", token: str = TOKEN,
             credential: Any = None, **kw: Any) -> AzureProvider:
    return AzureProvider(
        cache_path=tmp_path / "cache" / "azure.db", credential=credential or fa.FakeCredential(token),
        base_url=arm.url, clock=clock_at(now),
        client_options={"connection_verify": str(arm.ca_file), "retry_total": 2, "retry_backoff_factor": 0.01,
                        "retry_backoff_max": 0.05}, **kw)


def utc(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


def with_subscriptions(fake: fa.FakeAzure) -> None:
    fake.subscriptions += fa.load("subscriptions.json")["value"]


# ------------------------------------------------------------------------------------------------ costs


def test_legacy_usage_details_to_cost_frame_with_paging(arm: fa.Server, tmp_path: Path) -> None:
    fake = arm.fake
    with_subscriptions(fake)
    fake.usage[A] += fa.load("usage_details_legacy.json")["value"]
    fake.page_size = 2
    p = provider(arm, tmp_path, subscriptions=[A.upper()])
    costs = p.fetch_costs(utc("2024-09-01"), utc("2024-09-07"))
    validate_costs(costs)

    calls = fake.requests_to(USAGE_PATH)
    assert len(calls) == 2 and calls[1].query["$skiptoken"] == "2"  # nextLink followed
    assert all(c.query["$expand"] == "properties/meterDetails" for c in calls)
    assert calls[0].query["$filter"] == ("properties/usageStart ge '2024-09-01' and "
                                         "properties/usageEnd le '2024-09-06'")
    rows = costs.set_index(["service", "charge_category"])
    assert list(costs["project_id"].unique()) == [A] and set(costs["project_name"]) == {"Payments Production"}
    assert rows.loc[("Virtual Machines", "Usage"), "billed_cost"] == pytest.approx(4.608)
    assert rows.loc[("Virtual Machines", "Credit"), "billed_cost"] == pytest.approx(-0.96)  # refund kept
    assert rows.loc[("Storage", "Usage"), "service_category"] == "Storage"
    assert set(costs["service_category"]) == {"Compute", "Storage"}
    assert set(costs["region"]) == {"eastus"}  # legacy "USEast" in ARM spelling
    assert set(costs["currency"]) == {"USD"}
    assert costs["resource_id"].str.endswith("/virtualMachines/web-01").sum() == 2
    # restate_days=3 at 2024-09-06: the 3rd is still estimated, the 2nd is settled
    assert dict(zip(costs["period_start"].dt.day, costs["estimated"], strict=True)) == {2: False, 3: True}
    tags = costs["tags"].iloc[0]
    assert tags["owner"] == "payments-oncall" and tags["resource_group"] == "rg-web" and tags["env"] == "prod"


def test_modern_usage_details_to_cost_frame(arm: fa.Server, tmp_path: Path) -> None:
    fake = arm.fake
    fake.add_subscription(B, "Data Science Sandbox")
    fake.usage[B] += fa.load("usage_details_modern.json")["value"]
    costs = provider(arm, tmp_path, subscriptions=[B]).fetch_costs(utc("2024-09-01"), utc("2024-09-07"))
    validate_costs(costs)
    by_service = costs.set_index("service")
    assert by_service.loc["Virtual Machines", "billed_cost"] == pytest.approx(13.91)  # costInBillingCurrency
    assert by_service.loc["Virtual Machines", "service_category"] == "Compute"
    assert by_service.loc["Virtual Machines", "region"] == "westeurope"
    assert by_service.loc["Virtual Machines", "resource_id"].endswith("/aks-nodepool1-12345678-vmss")
    assert by_service.loc["Bandwidth", "service_category"] == "Networking"
    assert pd.isna(by_service.loc["Bandwidth", "region"])  # "Unassigned" is not a region
    assert set(costs["currency"]) == {"EUR"} and set(costs["charge_category"]) == {"Usage"}
    assert set(costs["project_id"]) == {B}


def test_cost_management_query_follows_next_link_with_the_same_body(arm: fa.Server, tmp_path: Path) -> None:
    fake = arm.fake
    with_subscriptions(fake)
    path = f"/subscriptions/{A}/providers/microsoft.costmanagement/query"
    fake.canned[("POST", path)] = [fa.load("cost_query_page1.json"), fa.load("cost_query_page2.json")]
    p = provider(arm, tmp_path, subscriptions=[A], source="costmanagement")
    costs = p.fetch_costs(utc("2024-09-02"), utc("2024-09-04"))
    validate_costs(costs)

    posts = fake.requests_to(r"/Microsoft\.CostManagement/query$", "POST")
    assert len(posts) == 2 and posts[1].query["$skiptoken"] == "AQAAAA=="
    assert posts[0].body == posts[1].body
    body = posts[0].body
    assert (body["type"], body["timeframe"], body["dataset"]["granularity"]) == ("ActualCost", "Custom", "Daily")
    assert body["timePeriod"]["from"].startswith("2024-09-02T00:00:00") and body["timePeriod"]["to"].startswith(
        "2024-09-03T23:59:59")
    assert [g["name"] for g in body["dataset"]["grouping"]] == ["ResourceGroupName", "MeterCategory",
                                                               "ResourceLocation", "ChargeType"]
    daily = costs.groupby([costs["period_start"].dt.day, "charge_category"])["billed_cost"].sum()
    assert daily[(2, "Usage")] == pytest.approx(41.2281 + 2.9013 + 0.41)
    assert daily[(3, "Credit")] == pytest.approx(-3.5)
    assert costs["resource_id"].isna().all()
    assert costs.loc[costs["service"] == "Bandwidth", "region"].isna().all()
    assert p.stats()["costmanagement_requests"] == 2 and p.stats()["consumption_requests"] == 0


def test_both_sources_agree_on_the_same_bill(arm: fa.Server, tmp_path: Path) -> None:
    """The fake answers the query from the same usage details: totals per day, category, region must match."""
    fake = arm.fake
    fake.add_subscription(A, "Payments Production")
    fake.usage[A] += fa.load("usage_details_legacy.json")["value"]
    fake.usage[A] += [fa.legacy_item(A, "2024-09-04", 7.25, "Virtual Machines", "EU West", "rg-eu",
                                     "Microsoft.Compute/virtualMachines/eu-01")]
    keys = ["period_start", "service_category", "region", "charge_category"]
    frames = [provider(arm, tmp_path / src, subscriptions=[A], source=src).fetch_costs(utc("2024-09-01"),
                                                                                      utc("2024-09-06"))
              for src in ("consumption", "costmanagement")]
    a, b = (f.groupby(keys, dropna=False)["billed_cost"].sum() for f in frames)
    pd.testing.assert_series_equal(a, b, check_exact=False)
    assert "westeurope" in set(frames[1]["region"].dropna()) and len(a) == 4


def test_subscriptions_are_listed_when_none_configured(arm: fa.Server, tmp_path: Path) -> None:
    fake = arm.fake
    with_subscriptions(fake)  # A and B enabled, C disabled
    fake.page_size = 1
    fake.usage[A] += fa.load("usage_details_legacy.json")["value"]
    fake.usage[B] += fa.load("usage_details_modern.json")["value"]
    cred = fa.FakeCredential(TOKEN)
    p = provider(arm, tmp_path, credential=cred)
    assert cred.calls == 0  # nothing happens before the first fetch
    costs = p.fetch_costs(utc("2024-09-01"), utc("2024-09-07"))
    assert p.subscriptions() == [A, B]
    assert len(fake.requests_to(r"^/subscriptions$")) == 3  # three pages of one
    assert not fake.requests_to(C)  # a disabled subscription is not read
    assert set(costs["project_id"]) == {A, B}
    assert dict(costs.groupby("project_id")["project_name"].first()) == {A: "Payments Production",
                                                                         B: "Data Science Sandbox"}
    st = p.stats()
    assert st["subscriptions"] == 2 and st["arm_requests"] == 3 and st["errors"] == []


def test_incremental_second_run_fetches_only_restated_days(arm: fa.Server, tmp_path: Path) -> None:
    fake = arm.fake
    fake.add_subscription(A, "Payments Production")
    days = pd.date_range("2024-09-01", "2024-09-21").strftime("%Y-%m-%d")
    fake.usage[A] += [fa.legacy_item(A, d, 10.0, "Virtual Machines", "USEast", "rg-web",
                                     "Microsoft.Compute/virtualMachines/web-01") for d in days]
    first = provider(arm, tmp_path, now="2024-09-20 12:00", subscriptions=[A])
    got1 = first.fetch_costs(utc("2024-09-01"), utc("2024-09-21"))
    assert first.stats()["cost_days_fetched"] == 20 and len(got1) == 20

    # Azure revises a recent day; the next run (a day later) asks only for the restating days and today
    fake.usage[A] = [i for i in fake.usage[A] if not i["properties"]["date"].startswith("2024-09-19")]
    fake.usage[A].append(fa.legacy_item(A, "2024-09-19", 12.5, "Virtual Machines", "USEast", "rg-web",
                                        "Microsoft.Compute/virtualMachines/web-01"))
    fake.log.clear()
    second = provider(arm, tmp_path, now="2024-09-21 12:00", subscriptions=[A])
    got2 = second.fetch_costs(utc("2024-09-01"), utc("2024-09-22"))
    calls = fake.requests_to(USAGE_PATH)
    assert len(calls) == 1 and calls[0].query["$filter"] == ("properties/usageStart ge '2024-09-18' and "
                                                             "properties/usageEnd le '2024-09-21'")
    assert second.stats()["cost_days_fetched"] == 4 and second.stats()["consumption_requests"] == 1
    by_day = got2.set_index(got2["period_start"].dt.strftime("%Y-%m-%d"))["billed_cost"]
    assert len(got2) == 21 and by_day["2024-09-19"] == 12.5 and by_day["2024-09-10"] == 10.0
    assert got2.loc[got2["period_start"] >= utc("2024-09-18"), "estimated"].all()
    assert not got2.loc[got2["period_start"] < utc("2024-09-18"), "estimated"].any()


def test_empty_subscription_gives_empty_frames(arm: fa.Server, tmp_path: Path) -> None:
    arm.fake.add_subscription(A, "Brand new")
    p = provider(arm, tmp_path)
    costs = p.fetch_costs(utc("2024-09-01"), utc("2024-09-06"))
    usage = p.fetch_usage(utc("2024-09-05"), utc("2024-09-06"))
    assert costs.empty and usage.empty and costs.columns[0] == "period_start"
    assert p.stats()["errors"] == [] and p.stats()["subscriptions"] == 1
    # the empty days are remembered: a later run asks again only for the restating days
    arm.fake.log.clear()
    provider(arm, tmp_path).fetch_costs(utc("2024-09-01"), utc("2024-09-06"))
    assert arm.fake.requests_to(USAGE_PATH)[0].query["$filter"].startswith("properties/usageStart ge '2024-09-03'")


# ------------------------------------------------------------------------------------------ failures


def test_throttled_request_is_retried_after_retry_after(arm: fa.Server, tmp_path: Path, sleeps: list[float]) -> None:
    fake = arm.fake
    fake.add_subscription(A, "Payments Production")
    fake.usage[A] += fa.load("usage_details_legacy.json")["value"]
    fake.fail("GET", USAGE_PATH, 429, times=1, headers={"Retry-After": "7"})
    fake.fail("POST", r"/query$", 429, times=1,
              headers={"x-ms-ratelimit-microsoft.costmanagement-entity-retry-after": "11"})
    p = provider(arm, tmp_path, subscriptions=[A])
    costs = p.fetch_costs(utc("2024-09-01"), utc("2024-09-07"))
    assert [r.status for r in fake.requests_to(USAGE_PATH)] == [429, 200]
    assert len(costs) == 3 and p.stats()["errors"] == [] and p.stats()["throttled_responses"] == 1
    assert 7.0 in sleeps  # the server's Retry-After, not the tiny backoff

    q = provider(arm, tmp_path / "q", subscriptions=[A], source="costmanagement")
    assert len(q.fetch_costs(utc("2024-09-01"), utc("2024-09-07"))) == 3
    assert 11.0 in sleeps  # Cost Management's own retry-after header


def test_one_failing_subscription_is_reported_and_the_others_kept(arm: fa.Server, tmp_path: Path,
                                                                  sleeps: list[float]) -> None:
    fake = arm.fake
    for sid, name in ((A, "Payments Production"), (B, "Sandbox"), (C, "Shared")):
        fake.add_subscription(sid, name)
    fake.usage[A] += fa.load("usage_details_legacy.json")["value"]
    fake.fail("GET", f"/subscriptions/{B}{USAGE_PATH[:-1]}", 429, headers={"Retry-After": "1"})  # for good
    fake.fail("GET", f"/subscriptions/{C}{USAGE_PATH[:-1]}", 403, message=(
        f"The client '{fa.sub_id(0xEE)}' with object id '{fa.sub_id(0xEE)}' does not have authorization to "
        f"perform action 'Microsoft.Consumption/usageDetails/read' over scope '/subscriptions/{C}' or the scope "
        "is invalid."))
    p = provider(arm, tmp_path)
    costs = p.fetch_costs(utc("2024-09-01"), utc("2024-09-07"))
    assert set(costs["project_id"]) == {A} and len(costs) == 3
    errors = p.stats()["errors"]
    assert len(errors) == 2
    throttled = next(e for e in errors if B in e)
    denied = next(e for e in errors if C in e)
    assert "still throttled (HTTP 429)" in throttled
    assert "'Cost Management Reader'" in denied and "Microsoft.Consumption/usageDetails/read" in denied
    assert fa.sub_id(0xEE) not in denied  # the caller's object id is not repeated
    assert len(fake.requests_to(f"{B}/providers")) == 3  # retry_total=2: three attempts, then reported
    # the same failures, structured for the report's errors and run's warnings
    by_scope = {f.scope: f for f in p.failures}
    assert set(by_scope) == {f"subscription {B}", f"subscription {C}"}
    assert by_scope[f"subscription {C}"].fix.startswith("assign the 'Cost Management Reader' role")
    assert by_scope[f"subscription {B}"].fix == "it is retried on the next run"


def test_every_subscription_failing_raises_with_the_role(arm: fa.Server, tmp_path: Path) -> None:
    fake = arm.fake
    for sid in (A, B):
        fake.add_subscription(sid, "x")
    fake.fail("GET", USAGE_PATH, 403)
    fake.fail("GET", r"/Microsoft\.Insights/metrics$", 403)
    fake.vms[A].append(fa.vm(A, "rg", "vm-1", "eastus", "Standard_B2s"))
    p = provider(arm, tmp_path, subscriptions=[A, B])
    with pytest.raises(ProviderError, match=r"failed for every subscription.*'Cost Management Reader'"):
        p.fetch_costs(utc("2024-09-01"), utc("2024-09-07"))
    with pytest.raises(ProviderError, match="'Monitoring Reader'"):
        provider(arm, tmp_path, subscriptions=[A]).fetch_usage(utc("2024-09-05"), utc("2024-09-06"))


def test_expired_token_says_what_to_do_and_never_shows_the_token(arm: fa.Server, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    arm.fake.add_subscription(A, "x")
    stale = TOKEN + "-expired"
    p = provider(arm, tmp_path, token=stale)
    with pytest.raises(ProviderError) as err:
        p.fetch_costs(utc("2024-09-01"), utc("2024-09-07"))
    msg = str(err.value)
    assert "credential was rejected (ExpiredAuthenticationToken)" in msg and "az login" in msg
    assert "AZURE_CLIENT_SECRET" in msg
    with pytest.raises(ProviderError, match="az login") as err2:
        provider(arm, tmp_path, token=stale, subscriptions=[A]).fetch_usage(utc("2024-09-05"), utc("2024-09-06"))
    assert arm.fake.requests_to(r"^/subscriptions$")[0].auth == f"Bearer {stale}"  # it was sent...
    for text in (msg, str(err2.value), caplog.text):  # ...but is never shown
        assert TOKEN not in text and "fake-bearer-token" not in text


def test_no_credential_at_all(arm: fa.Server, tmp_path: Path) -> None:
    arm.fake.add_subscription(A, "x")
    p = provider(arm, tmp_path, credential=fa.NoCredential(), subscriptions=[A])
    with pytest.raises(ProviderError, match=r"no usable Azure credential.*AZURE_TENANT_ID"):
        p.fetch_costs(utc("2024-09-01"), utc("2024-09-07"))
    assert arm.fake.log == []  # nothing was sent without a token


def test_a_next_link_loop_is_stopped(arm: fa.Server, tmp_path: Path) -> None:
    fake = arm.fake
    fake.add_subscription(A, "x")
    page = {"value": fa.load("usage_details_legacy.json")["value"][:1],
            "nextLink": f"{{base}}/subscriptions/{A}/providers/Microsoft.Consumption/usageDetails?"
                        "api-version=2024-08-01&$skiptoken=same"}
    fake.canned[("GET", f"/subscriptions/{A}/providers/microsoft.consumption/usagedetails")] = [page] * 3
    with pytest.raises(ProviderError, match="same nextLink twice"):
        provider(arm, tmp_path, subscriptions=[A]).fetch_costs(utc("2024-09-01"), utc("2024-09-07"))
    assert len(fake.requests_to(USAGE_PATH)) == 2


def test_next_link_to_another_host_is_refused(arm: fa.Server, tmp_path: Path) -> None:
    fake = arm.fake
    fake.add_subscription(A, "x")
    page = fa.load("cost_query_page1.json")
    page["properties"]["nextLink"] = "https://attacker.example/steal?api-version=1"
    fake.canned[("POST", f"/subscriptions/{A}/providers/microsoft.costmanagement/query")] = [page]
    p = provider(arm, tmp_path, subscriptions=[A], source="costmanagement")
    with pytest.raises(ProviderError, match=r"another host \(attacker\.example\); refused"):
        p.fetch_costs(utc("2024-09-02"), utc("2024-09-03"))


# --------------------------------------------------------------------------------------------- usage


def hourly(start: str, hours: int, value: Any) -> dict[str, tuple[float, float]]:
    ts = pd.date_range(start, periods=hours, freq="h", tz="UTC")
    return {t.strftime("%Y-%m-%dT%H:%M:%SZ"): (float(value(t)), min(100.0, float(value(t)) + 5)) for t in ts}


def test_vm_and_scale_set_cpu_hourly_with_aks_cluster(arm: fa.Server, tmp_path: Path) -> None:
    fake = arm.fake
    fake.add_subscription(A, "Payments Production")
    fake.page_size = 2
    web = fa.load("virtual_machines.json")["value"][0]
    workers = [fa.vm(A, rg, "worker", "westeurope", "Standard_D2s_v5") for rg in ("rg-a", "rg-b")]
    pool = fa.load("virtual_machine_scale_sets.json")["value"][0]  # AKS, uniform, MC_ group, no cluster tag
    flex = fa.vmss(A, "rg-flex", "flex-set", "eastus", "Standard_B2s", 2)
    flex["properties"]["orchestrationMode"] = "Flexible"
    fake.vms[A] += [web, *workers]
    fake.scale_sets[A] += [pool, flex]
    fake.set_cpu(web["id"], hourly("2024-09-05 00:00", 3, lambda t: 10 + t.hour))
    for w, level in zip(workers, (30, 60), strict=True):
        fake.set_cpu(w["id"], hourly("2024-09-05 00:00", 3, lambda t, lv=level: lv))
    for i in range(12):  # more instances than the API's default of 10 series
        fake.set_cpu(pool["id"], hourly("2024-09-05 00:00", 3, lambda t, i=i: 20 + i),
                     instance=f"aks-nodepool1-12345678-vmss_{i}")
    fake.set_cpu(pool["id"], {"2024-09-05T03:00:00Z": (99.0, 99.0)}, instance="aks-nodepool1-12345678-vmss_0")

    p = provider(arm, tmp_path, now="2024-09-05 03:30", subscriptions=[A])
    usage = p.fetch_usage(utc("2024-09-05 00:00"), utc("2024-09-05 03:00"))
    validate_usage(usage)
    assert set(usage["timestamp"]) == set(pd.date_range("2024-09-05", periods=3, freq="h", tz="UTC"))
    nodes = usage.groupby("node").agg(n=("cpu_utilization", "size"), cpu=("cpu_utilization", "mean"),
                                      cluster=("cluster", "first"), region=("region", "first"),
                                      size=("instance_type", "first"))
    aks = [n for n in nodes.index if n.startswith("aks-")]
    assert len(aks) == 12 and "aks-nodepool1-12345678-vmss00000b" in aks  # base-36 like the Kubernetes name
    assert nodes.loc["aks-nodepool1-12345678-vmss00000b", "cpu"] == 31.0
    assert set(nodes.loc[aks, "cluster"]) == {"aks-prod"} and set(nodes.loc[aks, "region"]) == {"eastus"}
    assert nodes.loc["web-01", "n"] == 3 and pd.isna(nodes.loc["web-01", "cluster"])
    assert nodes.loc["web-01", "size"] == "Standard_D4s_v3" and nodes.loc["web-01", "cpu"] == 11.0
    assert nodes.loc["rg-a/worker", "cpu"] == 30.0 and nodes.loc["rg-b/worker", "cpu"] == 60.0  # same name twice
    assert not any("flex" in n for n in nodes.index)  # flexible sets' VMs are listed as VMs
    assert (usage["timestamp"] < utc("2024-09-05 03:00")).all()

    metrics = fake.requests_to(r"/Microsoft\.Insights/metrics$")
    assert len(metrics) == 4  # one per VM and one per uniform scale set
    per_instance = next(m for m in metrics if "virtualMachineScaleSets" in m.path)
    assert per_instance.query["$filter"] == "VMName eq '*'" and int(per_instance.query["top"]) >= 12
    assert len(fake.requests_to(r"/virtualMachines$")) == 2  # three VMs, pages of two
    st = p.stats()
    assert st["vms_and_scale_sets"] == 4 and st["monitor_requests"] == 4 and st["compute_requests"] == 3


def test_replay_asks_what_a_run_at_as_of_asked_and_leaves_the_cache_sound(arm: fa.Server, tmp_path: Path) -> None:
    """Hourly runs have kept the cache warm up to now (Sep 30, 12:00).  A replay ten days back (``report
    --as-of``, gathered with ``now`` = as_of) asks Azure for the restate window ending at as_of, as the run then
    did, reads CPU up to as_of, and marks the days estimated as that run saw them.  The next hourly run still
    re-reads its own last restate days, and an as_of in the future asks for and caches nothing past today."""
    from costwatch.providers._daycache import DayCache
    from costwatch.sources import gather

    fake = arm.fake
    fake.add_subscription(A, "Payments Production")
    fake.usage[A] += [fa.legacy_item(A, d, 10.0, "Virtual Machines", "USEast", "rg-web",
                                     "Microsoft.Compute/virtualMachines/web-01")
                      for d in pd.date_range("2024-08-20", "2024-09-30").strftime("%Y-%m-%d")]
    web = fa.vm(A, "rg-web", "web-01", "eastus", "Standard_B2s")
    fake.vms[A].append(web)
    fake.set_cpu(web["id"], hourly("2024-09-10 00:00", 21 * 24, lambda t: 20.0))
    real = utc("2024-09-30 12:00")

    def run(as_of: pd.Timestamp) -> pd.DataFrame:
        fake.log.clear()
        got = gather([provider(arm, tmp_path, now=str(real.tz_convert(None)), subscriptions=[A])],
                     utc("2024-08-20"), as_of, now=as_of)
        assert got.errors == []
        return got.costs

    def cost_filters() -> list[str]:
        return [r.query["$filter"] for r in fake.requests_to(USAGE_PATH)]

    run(real)  # the hourly run that warmed the cache
    as_of = utc("2024-09-20 06:00")
    costs = run(as_of)
    assert cost_filters() == ["properties/usageStart ge '2024-09-17' and properties/usageEnd le '2024-09-20'"]
    assert fake.requests_to(r"/metrics$")[-1].query["timespan"].endswith("/2024-09-20T06:00:00Z")
    estimated = costs.groupby(costs["period_start"].dt.strftime("%Y-%m-%d"))["estimated"].first()
    assert estimated.index.max() == "2024-09-20"
    assert list(estimated[estimated].index) == ["2024-09-17", "2024-09-18", "2024-09-19", "2024-09-20"]

    run(real)  # the next hourly run: its own restate window, not the replay's
    assert cost_filters() == ["properties/usageStart ge '2024-09-27' and properties/usageEnd le '2024-09-30'"]
    future = run(real + pd.Timedelta(days=3))
    assert cost_filters() == ["properties/usageStart ge '2024-09-27' and properties/usageEnd le '2024-09-30'"]
    assert future["period_start"].max() == utc("2024-09-30")
    cached = DayCache(tmp_path / "cache" / "azure.db", scope="azure").fetched_days("consumption", part=A)
    assert max(cached) == "2024-09-30"


def test_cpu_failure_in_one_subscription_is_reported(arm: fa.Server, tmp_path: Path) -> None:
    fake = arm.fake
    for sid in (A, B):
        fake.add_subscription(sid, "x")
    ok, bad = fa.vm(A, "rg", "ok-1", "eastus", "Standard_B2s"), fa.vm(B, "rg", "bad-1", "eastus", "Standard_B2s")
    gone = fa.vm(A, "rg", "gone-1", "eastus", "Standard_B2s")
    fake.vms[A] += [ok, gone]
    fake.vms[B].append(bad)
    fake.set_cpu(ok["id"], hourly("2024-09-05 00:00", 2, lambda t: 5))
    fake.fail("GET", f"/subscriptions/{B}/.*/metrics$", 403)
    fake.fail("GET", "/gone-1/providers/Microsoft.Insights/metrics$", 404, code="ResourceNotFound")  # deleted since
    p = provider(arm, tmp_path, now="2024-09-05 02:00")
    usage = p.fetch_usage(utc("2024-09-05"), utc("2024-09-05 02:00"))
    assert set(usage["node"]) == {"ok-1"}
    (error,) = p.stats()["errors"]
    assert error.startswith(f"subscription {B}: CPU of 1 resource(s) (bad-1)") and "'Monitoring Reader'" in error


def test_built_from_config_through_the_registry(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from costwatch.sources import build

    cfg = AzureProviderConfig(name="tenant-a", subscriptions=[A], source="costmanagement", restate_days=5,
                              cache_path=str(tmp_path / "az.db"), cpu=False)
    p = build(cfg, Config())
    assert isinstance(p, AzureProvider)
    assert (p.name, p.configured, p.costs.source, p.costs.restate_days) == ("tenant-a", [A], "costmanagement", 5)
    assert p.fetch_usage(utc("2024-09-01"), utc("2024-09-02")).empty  # cpu off: no credential, no request
    assert p.stats()["monitor_requests"] == 0
    with pytest.raises(ValidationError, match="subscriptions"):
        AzureProviderConfig(subscriptions=["payments-prod"])  # a name, not the subscription id
    assert [normalize_region(x) for x in ("USEast", "East US 2", "EU West", "westeurope", "Unassigned", None)] == [
        "eastus", "eastus2", "westeurope", "westeurope", None, None]
    assert [service_category(x) for x in ("Virtual Machines", "Azure Kubernetes Service", "Bandwidth",
                                          "Azure Cosmos DB", "Some New Compute Thing", "Sundries")] == [
        "Compute", "Compute", "Networking", "Databases", "Compute", "Other"]


# ------------------------------------------------------------------------------------------ end to end


def test_miner_in_new_region_is_detected(arm: fa.Server, tmp_path: Path) -> None:
    """A month of history: web VMs and an AKS pool in East US with steady spend.  Yesterday morning three new
    VMs appeared in Brazil South, pinned at ~99% CPU, and compute spend left its band: ``detect`` must call it
    mining, with the new region and the miners' names."""
    from costwatch.detect import detect

    fake = arm.fake
    fake.add_subscription(A, "Payments Production", tags={"owner": "payments-oncall"})
    fake.page_size = 50
    now = utc("2024-09-30 12:00")
    today = now.floor("D")
    rng = np.random.default_rng(11)
    fa.miner_story(fake, A, now, rng)
    pool = fa.load("virtual_machine_scale_sets.json")["value"][0]
    fake.scale_sets[A].append(pool)
    history = pd.date_range(now - pd.Timedelta(days=10), now - pd.Timedelta(hours=1), freq="h")
    for i in range(2):
        fake.set_cpu(pool["id"], {t.strftime("%Y-%m-%dT%H:%M:%SZ"): (30 + rng.normal(0, 5), 60.0) for t in history},
                     instance=f"aks-nodepool1-12345678-vmss_{i}")

    p = provider(arm, tmp_path, now=str(now.tz_convert(None)), subscriptions=[A])
    costs = p.fetch_costs(today - pd.Timedelta(days=30), now)
    usage = p.fetch_usage(now - pd.Timedelta(days=10), now)
    validate_costs(costs)
    validate_usage(usage)
    assert set(costs["region"]) == {"eastus", "brazilsouth"}
    assert set(usage.loc[usage["node"].str.startswith("aks-"), "cluster"]) == {"aks-prod"}

    found = detect(costs, usage, Config(), as_of=now)
    mining = [a for a in found.alerts if a.kind == "mining_suspected"]
    assert len(mining) == 1
    a = mining[0]
    assert (a.project, a.provider, a.region) == (A, "azure", "brazilsouth")
    assert a.evidence["new_regions"] == ["brazilsouth"]
    assert {n["node"] for n in a.evidence["nodes"]} == {"xmr-0", "xmr-1", "xmr-2"}
    assert all(n["new_region"] and n["instance_type"] == "Standard_F16s_v2" for n in a.evidence["nodes"])
    assert a.evidence["cost"]["service"] == "Compute"  # compute spend out of band on the same day
    assert [r["region"] for r in a.evidence["cost"]["new_regions"]] == ["brazilsouth"]
    st = p.stats()
    assert st["errors"] == [] and st["monitor_requests"] == 6 and st["consumption_requests"] == 2


def test_day_helpers_never_ask_for_tomorrow() -> None:
    from costwatch.providers._daycache import day_range, fetch_windows
    from costwatch.providers.azure.costs import MERGE_GAP_DAYS

    days = day_range(utc("2024-09-01 05:00"), utc("2024-09-12"), dt.date(2024, 9, 10))
    assert days[0] == dt.date(2024, 9, 1) and days[-1] == dt.date(2024, 9, 10)
    cached = {d.isoformat() for d in days[:5]}
    assert fetch_windows(days, cached, dt.date(2024, 9, 10), 3, merge_gap=MERGE_GAP_DAYS) == [
        (dt.date(2024, 9, 6), dt.date(2024, 9, 11))]


def test_cpu_only_mining_alert_is_named_from_the_subscription_list(arm: fa.Server, tmp_path: Path) -> None:
    """The costs of the miner's subscription cannot be read (403), its CPU can: the mining alert raised from
    CPU alone carries the display name the subscription list gave in the same run, not the GUID."""
    from costwatch.detect import detect
    from costwatch.sources import gather

    fake = arm.fake
    fake.add_subscription(A, "Payments Production")
    fake.add_subscription(B, "Data Science Sandbox")
    now = utc("2024-09-30 12:00")
    fa.miner_story(fake, B, now, np.random.default_rng(11))
    fake.fail("GET", f"/subscriptions/{B}{USAGE_PATH[:-1]}", 403)
    got = gather([provider(arm, tmp_path, now=str(now.tz_convert(None)))], now - pd.Timedelta(days=30), now)
    assert got.failed == {}  # one subscription's costs are missing, not the provider's
    assert B not in set(got.costs["project_id"]) and B in set(got.usage["project"])
    (mining,) = [a for a in detect(got.costs, got.usage, Config(), as_of=now).alerts if a.kind == "mining_suspected"]
    assert (mining.project, mining.project_name) == (B, "Data Science Sandbox")
    assert {n["node"] for n in mining.evidence["nodes"]} == {"xmr-0", "xmr-1", "xmr-2"}
