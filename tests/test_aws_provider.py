"""The aws provider against moto: Cost Explorer paging and caching, Organizations names, EC2 across
regions, CloudWatch CPU, errors, and a miner in a new region found end to end by ``detect``."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
import requests

pytest.importorskip("moto")
from botocore.stub import Stubber
from moto import mock_aws
from moto.server import ThreadedMotoServer

from costwatch.errors import ProviderError
from costwatch.model import validate_costs, validate_usage
from costwatch.providers._daycache import fetch_windows
from costwatch.providers.aws import AwsProvider, compute
from costwatch.providers.aws._api import Api
from costwatch.providers.aws.costs import MERGE_GAP_DAYS, service_category

DATA = Path(__file__).parent / "data" / "aws"
MOTO_API = "http://motoapi.amazonaws.com"
ACCOUNT = "123456789012"  # moto's caller account
EC2_SVC = "Amazon Elastic Compute Cloud - Compute"
AMI = "ami-12c6146b"


@pytest.fixture
def moto(aws_env: None) -> Iterator[None]:
    with mock_aws():
        yield


def clock_at(ts: str) -> Any:
    t = pd.Timestamp(ts, tz="UTC")
    return lambda: t


def provider(tmp_path: Path, now: str = "2024-03-10 12:00", **kw: Any) -> AwsProvider:
    kw.setdefault("regions", ["us-east-1"])
    return AwsProvider(cache_path=tmp_path / "cache" / "aws.db", clock=clock_at(now), **kw)


def queue_ce(results: list[dict[str, Any]], base: str = MOTO_API) -> None:
    """Queue GetCostAndUsage responses; moto hands them out in order, one per distinct request."""
    resp = requests.post(f"{base}/moto-api/static/ce/cost-and-usage-results", json={"results": results},
                         timeout=10)
    assert resp.status_code == 201


def fixture(name: str) -> dict[str, Any]:
    return dict(json.loads((DATA / name).read_text()))


def ce_result(days: list[str], groups: dict[str, dict[str, float]], dim: str,
              token: str | None = None) -> dict[str, Any]:
    """A GetCostAndUsage response: the same groups (account -> key -> amount) on every day."""
    out: dict[str, Any] = {
        "GroupDefinitions": [{"Type": "DIMENSION", "Key": "LINKED_ACCOUNT"}, {"Type": "DIMENSION", "Key": dim}],
        "ResultsByTime": [
            {"TimePeriod": {"Start": d, "End": (dt.date.fromisoformat(d) + dt.timedelta(days=1)).isoformat()},
             "Total": {}, "Estimated": False,
             "Groups": [{"Keys": [acct, key], "Metrics": {"UnblendedCost": {"Amount": f"{v:.4f}", "Unit": "USD"}}}
                        for acct, by_key in groups.items() for key, v in by_key.items()]}
            for d in days],
        "DimensionValueAttributes": [],
    }
    if token:
        out["NextPageToken"] = token
    return out


def day_list(first: str, n: int) -> list[str]:
    d0 = dt.date.fromisoformat(first)
    return [(d0 + dt.timedelta(days=i)).isoformat() for i in range(n)]


def make_org(owners: dict[str, str]) -> dict[str, str]:
    """An organization whose accounts carry an ``owner`` tag; returns name -> account id."""
    org = boto3.client("organizations", region_name="us-east-1")
    org.create_organization(FeatureSet="ALL")
    ids = {}
    for name, owner in owners.items():
        st = org.create_account(AccountName=name, Email=f"{name}@example.com")["CreateAccountStatus"]
        ids[name] = st["AccountId"]
        org.tag_resource(ResourceId=st["AccountId"], Tags=[{"Key": "owner", "Value": owner}])
    return ids


# ------------------------------------------------------------------------------------------ Cost Explorer


def test_costs_two_pages_split_by_region(moto: None, tmp_path: Path) -> None:
    queue_ce([fixture("ce_service_page1.json"), fixture("ce_service_page2.json"), fixture("ce_region.json")])
    p = provider(tmp_path)
    costs = p.fetch_costs(pd.Timestamp("2024-03-05", tz="UTC"), pd.Timestamp("2024-03-08", tz="UTC"))
    validate_costs(costs)
    assert p.stats()["ce_requests"] == 3  # service page 1 + 2, region page 1
    day = costs["period_start"].dt.strftime("%Y-%m-%d")
    # service totals survive the region split exactly
    svc = costs.groupby([day, "project_id", "service"])["billed_cost"].sum()
    assert svc[("2024-03-05", "111111111111", EC2_SVC)] == pytest.approx(10.0)
    assert svc[("2024-03-06", "222222222222", "AWS Lambda")] == pytest.approx(-1.0)
    # and so do region totals
    reg = costs.groupby([day, "project_id", costs["region"].fillna("-")])["billed_cost"].sum()
    assert reg[("2024-03-05", "222222222222", "eu-west-1")] == pytest.approx(2.5)
    assert reg[("2024-03-05", "222222222222", "-")] == pytest.approx(0.5)  # NoRegion -> null
    assert reg[("2024-03-05", "111111111111", "us-east-1")] == pytest.approx(12.0)
    cats = dict(zip(costs["service"], costs["service_category"], strict=True))
    assert cats[EC2_SVC] == "Compute" and cats["Amazon Simple Storage Service"] == "Storage"
    assert cats["Amazon Relational Database Service"] == "Databases"
    charges = costs.groupby("service")["charge_category"].agg(set)
    assert charges["Tax"] == {"Tax"} and charges["AWS Lambda"] == {"Credit"}
    assert charges[EC2_SVC] == {"Usage"}
    assert set(costs.loc[costs["estimated"], "period_start"].dt.strftime("%Y-%m-%d")) == {"2024-03-07"}
    assert (costs["provider"] == "aws").all() and (costs["currency"] == "USD").all()
    assert (costs["period_hours"] == 24.0).all()


def test_page_token_loop_is_stopped(moto: None, tmp_path: Path) -> None:
    looping = ce_result(["2024-03-09"], {"1": {"x": 1.0}}, "SERVICE", token="same-token")
    queue_ce([looping, looping])  # page 2 answers with the token that led to it
    with pytest.raises(ProviderError, match="same NextPageToken twice"):
        provider(tmp_path).fetch_costs(pd.Timestamp("2024-03-09", tz="UTC"), pd.Timestamp("2024-03-10", tz="UTC"))


def test_hourly_run_refetches_only_recent_days(moto: None, tmp_path: Path) -> None:
    """A 90-day backfill is two requests; each hourly run after it is two more, names come from cache."""
    make_org({"prod": "alice", "data": "bob"})
    days = day_list("2024-04-01", 91)  # 2024-04-01 .. 2024-06-30 (today, partial)
    svc = {ACCOUNT: {EC2_SVC: 10.0, "Amazon Simple Storage Service": 1.0}}
    reg = {ACCOUNT: {"us-east-1": 11.0}}
    queue_ce([ce_result(days, svc, "SERVICE"), ce_result(days, reg, "REGION")])
    start, now = pd.Timestamp("2024-04-01", tz="UTC"), "2024-06-30 12:00"
    p1 = provider(tmp_path, now)
    full = p1.fetch_costs(start, pd.Timestamp(now, tz="UTC"))
    s1 = p1.stats()
    assert s1["ce_requests"] == 2 and s1["ce_days_fetched"] == 182
    assert full["period_start"].nunique() == 91
    assert s1["organizations_requests"] >= 2  # ListAccounts + one ListTagsForResource per account

    recent = day_list("2024-06-27", 4)
    queue_ce([ce_result(recent, {ACCOUNT: {EC2_SVC: 20.0}}, "SERVICE"),
              ce_result(recent, reg, "REGION")])
    p2 = provider(tmp_path, "2024-06-30 13:00")
    again = p2.fetch_costs(start, pd.Timestamp("2024-06-30 13:00", tz="UTC"))
    s2 = p2.stats()
    assert s2["ce_requests"] == 2 and s2["ce_days_fetched"] == 8
    assert s2["ce_requests"] + s2["organizations_requests"] <= 4
    assert s2["organizations_requests"] == 0
    assert again["period_start"].nunique() == 91
    day = again["period_start"].dt.strftime("%Y-%m-%d")
    # restated days replaced (S3 gone, EC2 revised), older days from the cache unchanged
    assert again.loc[day == "2024-06-28", "billed_cost"].sum() == pytest.approx(20.0)
    assert again.loc[day == "2024-05-01", "billed_cost"].sum() == pytest.approx(11.0)

    # widening the window fetches only the missing month plus the restate window
    p3 = provider(tmp_path, "2024-06-30 14:00")
    p3.fetch_costs(pd.Timestamp("2024-03-01", tz="UTC"), pd.Timestamp("2024-06-30 14:00", tz="UTC"))
    assert p3.stats()["ce_requests"] == 4


def ce_windows(p: AwsProvider) -> list[tuple[str, str]]:
    """Every GetCostAndUsage TimePeriod this provider's Cost Explorer client sends, in order (a botocore hook)."""
    seen: list[tuple[str, str]] = []
    p.api.client("ce").meta.events.register(
        "provide-client-params.ce.GetCostAndUsage",
        lambda params, **_: seen.append((params["TimePeriod"]["Start"], params["TimePeriod"]["End"])))
    return seen


def test_replay_asks_what_a_run_at_as_of_asked_and_leaves_the_cache_sound(moto: None, tmp_path: Path) -> None:
    """Hourly runs have kept the cache warm up to now (Jun 30, 12:00).  A replay ten days back (``report
    --as-of``, gathered with ``now`` = as_of) asks Cost Explorer for the restate window ending at as_of, as the
    run then did.  The next hourly run still re-reads its own restate days; an as_of in the future asks for
    and caches nothing past today."""
    from costwatch.sources import gather

    days = day_list("2024-06-01", 30)
    queue_ce([ce_result(days, {ACCOUNT: {EC2_SVC: 10.0}}, "SERVICE"),
              ce_result(days, {ACCOUNT: {"us-east-1": 10.0}}, "REGION")])
    real = pd.Timestamp("2024-06-30 12:00", tz="UTC")

    def run(as_of: pd.Timestamp) -> list[tuple[str, str]]:
        p = provider(tmp_path, str(real.tz_convert(None)), cpu=False, guardduty=False)
        asked = ce_windows(p)
        got = gather([p], pd.Timestamp("2024-06-01", tz="UTC"), as_of, now=as_of)
        assert got.errors == []
        return asked

    assert run(real) == [("2024-06-01", "2024-07-01")] * 2  # the hourly run that warmed the cache
    assert run(pd.Timestamp("2024-06-20 06:00", tz="UTC")) == [("2024-06-17", "2024-06-21")] * 2
    assert run(real) == [("2024-06-27", "2024-07-01")] * 2  # the next run: its own restate window
    assert run(real + pd.Timedelta(days=3)) == [("2024-06-27", "2024-07-01")] * 2
    cache = provider(tmp_path).cache
    assert max(cache.fetched_days("service", "UnblendedCost", "DAILY")) == "2024-06-30"


def test_report_and_run_as_of_hand_the_replay_time_to_the_providers(moto: None, tmp_path: Path) -> None:
    """Through the CLI, with the real clock: ``report --as-of`` and ``run --as-of`` ten days back re-read the
    days that were still restating at as_of (as the hourly run then did), and only those."""
    import sqlite3

    import yaml
    from click.testing import CliRunner

    from costwatch.cli import cli

    as_of = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(days=10)
    days = day_list((as_of - pd.Timedelta(days=80)).date().isoformat(), 81)
    queue_ce([ce_result(days, {ACCOUNT: {EC2_SVC: 10.0}}, "SERVICE"),
              ce_result(days, {ACCOUNT: {"us-east-1": 10.0}}, "REGION")])
    config = tmp_path / "costwatch.yaml"
    config.write_text(yaml.safe_dump({
        "providers": [{"type": "aws", "regions": ["us-east-1"], "cpu": False, "guardduty": False}],
        "state": {"path": str(tmp_path / "state.db")}}))

    def refetched(*args: str) -> set[str]:
        """Days whose Cost Explorer rows this command fetched again."""
        def stamps() -> dict[str, str]:
            if not (tmp_path / "aws-cache.db").exists():
                return {}
            with sqlite3.connect(tmp_path / "aws-cache.db") as db:
                return dict(db.execute("SELECT day, fetched_at FROM ce_days WHERE kind='service'").fetchall())

        before = stamps()
        res = CliRunner().invoke(cli, [*args, "--config", str(config), "--as-of", as_of.isoformat()],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return {d for d, at in stamps().items() if before.get(d) != at}

    assert max(refetched("report", "--format", "json")) == as_of.date().isoformat()  # first: the whole window
    restating = {(as_of - pd.Timedelta(days=i)).date().isoformat() for i in range(4)}
    assert refetched("report", "--format", "json") == restating
    assert refetched("run", "--no-charts") == restating


def test_fetch_windows_merge_small_gaps() -> None:
    today = dt.date(2024, 6, 30)
    days = [today - dt.timedelta(days=i) for i in range(30, -1, -1)]
    cached = {d.isoformat() for d in days if d.day not in (1, 2, 25)}
    assert fetch_windows(days, cached, today, 3, merge_gap=MERGE_GAP_DAYS) == [
        (dt.date(2024, 6, 1), dt.date(2024, 6, 3)), (dt.date(2024, 6, 25), dt.date(2024, 7, 1))]
    assert fetch_windows(days, {d.isoformat() for d in days}, today, 0, merge_gap=MERGE_GAP_DAYS) == [
        (today, today + dt.timedelta(days=1))]


def test_service_category_fallbacks() -> None:
    assert service_category("Amazon Elastic Compute Cloud - Compute") == "Compute"
    assert service_category("EC2 - Other") == "Compute"
    assert service_category("Amazon Simple Storage Service") == "Storage"
    assert service_category("Amazon Aurora DSQL") == "Databases"
    assert service_category("Something Brand New") == "Other"


def test_account_names_and_owners(moto: None, tmp_path: Path) -> None:
    ids = make_org({"prod": "alice", "data": "bob"})
    days = ["2024-03-09"]
    queue_ce([ce_result(days, {ids["prod"]: {EC2_SVC: 5.0}, ids["data"]: {EC2_SVC: 1.0}}, "SERVICE"),
              ce_result(days, {ids["prod"]: {"us-east-1": 5.0}, ids["data"]: {"us-east-1": 1.0}}, "REGION")])
    costs = provider(tmp_path).fetch_costs(pd.Timestamp("2024-03-09", tz="UTC"), pd.Timestamp("2024-03-10", tz="UTC"))
    names = dict(zip(costs["project_id"], costs["project_name"], strict=True))
    assert names == {ids["prod"]: "prod", ids["data"]: "data"}
    owners = {r.project_id: r.tags.get("owner") for r in costs.itertuples()}
    assert owners == {ids["prod"]: "alice", ids["data"]: "bob"}


def test_organizations_denied_falls_back_to_ids(moto: None, tmp_path: Path) -> None:
    queue_ce([ce_result(["2024-03-09"], {"111111111111": {EC2_SVC: 5.0}}, "SERVICE"),
              ce_result(["2024-03-09"], {"111111111111": {"us-east-1": 5.0}}, "REGION")])
    p = provider(tmp_path)
    with Stubber(p.api.client("organizations")) as stub:
        stub.add_client_error("list_accounts", service_error_code="AccessDeniedException",
                              service_message="User: arn:aws:iam::111111111111:user/ci is not authorized")
        costs = p.fetch_costs(pd.Timestamp("2024-03-09", tz="UTC"), pd.Timestamp("2024-03-10", tz="UTC"))
    assert list(costs["project_name"]) == ["111111111111"]
    notes = p.stats()["notes"]
    assert len(notes) == 1 and "organizations:ListAccounts" in notes[0] and "arn:" not in notes[0]


def test_cost_explorer_access_denied_names_the_action(moto: None, tmp_path: Path) -> None:
    p = provider(tmp_path)
    with Stubber(p.api.client("ce")) as stub:
        stub.add_client_error("get_cost_and_usage", service_error_code="AccessDeniedException",
                              service_message="User: arn:aws:iam::111111111111:user/ci is not authorized "
                                              "to perform: ce:GetCostAndUsage", http_status_code=400)
        with pytest.raises(ProviderError) as ei:
            p.fetch_costs(pd.Timestamp("2024-03-09", tz="UTC"), pd.Timestamp("2024-03-10", tz="UTC"))
    msg = str(ei.value)
    assert "ce:GetCostAndUsage" in msg and "arn:" not in msg and "111111111111" not in msg


# ------------------------------------------------------------------------------------------ EC2 + CPU


def run(region: str, n: int, itype: str = "m5.large", tags: dict[str, str] | None = None) -> list[str]:
    ec2 = boto3.client("ec2", region_name=region)
    spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in (tags or {}).items()]}]
    got = ec2.run_instances(ImageId=AMI, MinCount=n, MaxCount=n, InstanceType=itype,
                            **({"TagSpecifications": spec} if tags else {}))
    return [i["InstanceId"] for i in got["Instances"]]


def next_hour() -> pd.Timestamp:
    """A window end after moto's launch times (moto launches instances "now")."""
    return pd.Timestamp.now(tz="UTC").floor("h") + pd.Timedelta(hours=1)


def put_cpu(region: str, series: dict[str, list[tuple[pd.Timestamp, float]]]) -> None:
    cw = boto3.client("cloudwatch", region_name=region)
    data = [{"MetricName": "CPUUtilization", "Dimensions": [{"Name": "InstanceId", "Value": iid}],
             "Timestamp": t.to_pydatetime(), "Value": float(v), "Unit": "Percent"}
            for iid, points in series.items() for t, v in points]
    for i in range(0, len(data), 500):
        cw.put_metric_data(Namespace="AWS/EC2", MetricData=data[i: i + 500])


def test_instances_and_cpu_across_regions(moto: None, tmp_path: Path) -> None:
    now = next_hour()
    east = run("us-east-1", 2, tags={"eks:cluster-name": "prod", "eks:nodegroup-name": "ng-1"})
    west = run("eu-west-1", 1, "c5.large", tags={"aws:eks:cluster-name": "batch"})
    syd = run("ap-southeast-2", 1, "p3.2xlarge")
    hours = [now - pd.Timedelta(hours=h) for h in range(6, 0, -1)]
    put_cpu("us-east-1", {east[0]: [(t, 30.0) for t in hours]})
    put_cpu("eu-west-1", {west[0]: [(t, 55.0) for t in hours]})
    put_cpu("ap-southeast-2", {syd[0]: [(t, 99.0) for t in hours]})
    p = provider(tmp_path, str(now.tz_convert(None)), regions=None, max_workers=4)
    usage = p.fetch_usage(now - pd.Timedelta(days=1), now)
    validate_usage(usage)
    st = p.stats()
    assert st["regions"] > 10 and st["errors"] == []
    assert st["ec2_requests"] == 1 + st["regions"]  # DescribeRegions + one DescribeInstances each
    assert st["cloudwatch_requests"] == 3  # only regions with instances ask for CPU
    assert len(usage) == 18 and set(usage["project"]) == {ACCOUNT}
    by_node = usage.groupby("node").agg(cpu=("cpu_utilization", "mean"), region=("region", "first"),
                                        cluster=("cluster", "first"), itype=("instance_type", "first"))
    assert by_node.loc[syd[0], "cpu"] == pytest.approx(99.0) and by_node.loc[syd[0], "region"] == "ap-southeast-2"
    assert by_node.loc[east[0], "cluster"] == "prod" and by_node.loc[west[0], "cluster"] == "batch"
    assert by_node.loc[syd[0], "itype"] == "p3.2xlarge"
    inst = p.instances.set_index("instance_id")
    assert inst.loc[east[1], "nodegroup"] == "ng-1" and inst.loc[east[1], "region"] == "us-east-1"
    assert inst["launch_time"].notna().all() and len(inst) == 4


def test_cpu_queries_are_batched(moto: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GetMetricData takes 500 queries a request, two per instance (Average and Maximum); a batch of 4
    queries (2 instances) shows the same split on 5 instances."""
    assert compute.CW_BATCH == 500
    monkeypatch.setattr(compute, "CW_BATCH", 4)
    ids = run("us-east-1", 5, "t3.nano")
    now = next_hour()
    put_cpu("us-east-1", {ids[0]: [(now - pd.Timedelta(hours=1), 12.0)],
                          ids[-1]: [(now - pd.Timedelta(hours=1), 34.0)]})
    p = provider(tmp_path, str(now.tz_convert(None)))
    usage = p.fetch_usage(now - pd.Timedelta(hours=3), now)
    assert p.stats()["cloudwatch_requests"] == 3
    assert dict(zip(usage["node"], usage["cpu_utilization"], strict=True)) == {ids[0]: 12.0, ids[-1]: 34.0}


def test_failing_region_does_not_stop_the_others(moto: None, tmp_path: Path) -> None:
    run("us-east-1", 1)
    run("eu-west-1", 1)
    now = next_hour()
    # moto has no such region; the real API would answer with an endpoint or auth error
    p = provider(tmp_path, str(now.tz_convert(None)), regions=["us-east-1", "xx-nowhere-1", "eu-west-1"])
    p.fetch_usage(now - pd.Timedelta(hours=3), now)
    st = p.stats()
    assert st["instances"] == 2
    assert len(st["errors"]) == 1 and "xx-nowhere-1" in st["errors"][0]


def test_region_denied_is_reported_by_action(moto: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run("us-east-1", 1)
    now = next_hour()
    p = provider(tmp_path, str(now.tz_convert(None)), regions=["us-east-1", "eu-west-1"])
    stub = Stubber(p.api.client("ec2", "eu-west-1"))
    stub.add_client_error("describe_instances", service_error_code="UnauthorizedOperation",
                          service_message="You are not authorized to perform this operation.")
    with stub:
        p.fetch_usage(now - pd.Timedelta(hours=3), now)
    errors = p.stats()["errors"]
    assert errors == ["aws: access denied for ec2:DescribeInstances in eu-west-1; grant the IAM action "
                      "ec2:DescribeInstances to the role or user costwatch runs as"]
    assert p.stats()["instances"] == 1


def test_assume_role_scans_member_accounts(moto: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = make_org({"prod": "alice", "data": "bob"})
    creds = boto3.client("sts").assume_role(RoleArn=f"arn:aws:iam::{ids['prod']}:role/CostwatchReadOnly",
                                            RoleSessionName="setup")["Credentials"]
    member = boto3.session.Session(aws_access_key_id=creds["AccessKeyId"],
                                   aws_secret_access_key=creds["SecretAccessKey"],
                                   aws_session_token=creds["SessionToken"])
    now = next_hour()
    mid = member.client("ec2", region_name="eu-west-1").run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="c5.large")["Instances"][0]["InstanceId"]
    member.client("cloudwatch", region_name="eu-west-1").put_metric_data(Namespace="AWS/EC2", MetricData=[
        {"MetricName": "CPUUtilization", "Dimensions": [{"Name": "InstanceId", "Value": mid}],
         "Timestamp": (now - pd.Timedelta(hours=1)).to_pydatetime(), "Value": 88.0}])
    own = run("us-east-1", 1)[0]
    put_cpu("us-east-1", {own: [(now - pd.Timedelta(hours=1), 11.0)]})

    real_assume = Api.assume

    def assume(self: Api, account: str, role_name: str) -> Api:
        if account == ids["data"]:  # this account has no such role
            raise ProviderError("aws: access denied for sts:AssumeRole; grant the IAM action sts:AssumeRole")
        return real_assume(self, account, role_name)

    monkeypatch.setattr(Api, "assume", assume)
    p = provider(tmp_path, str(now.tz_convert(None)), regions=["us-east-1", "eu-west-1"],
                 assume_role="CostwatchReadOnly")
    usage = p.fetch_usage(now - pd.Timedelta(hours=3), now)
    got = {(r.project, r.node, r.region): r.cpu_utilization for r in usage.itertuples()}
    assert got == {(ids["prod"], mid, "eu-west-1"): 88.0, (ACCOUNT, own, "us-east-1"): 11.0}
    st = p.stats()
    assert st["errors"] == [f"account {ids['data']}: aws: access denied for sts:AssumeRole; grant the IAM "
                            "action sts:AssumeRole"]
    assert st["sts_requests"] == 2  # GetCallerIdentity + one AssumeRole
    assert st["ec2_requests"] == 4 and st["instances"] == 2


def test_all_regions_failing_raises(moto: None, tmp_path: Path) -> None:
    p = provider(tmp_path, regions=["xx-nowhere-1", "xx-nowhere-2"])
    with pytest.raises(ProviderError, match="xx-nowhere-1"):
        p.fetch_usage(pd.Timestamp("2024-03-09", tz="UTC"), pd.Timestamp("2024-03-10", tz="UTC"))


def test_cpu_off_makes_no_requests(moto: None, tmp_path: Path) -> None:
    p = provider(tmp_path, cpu=False)
    assert p.fetch_usage(pd.Timestamp("2024-03-09", tz="UTC"), pd.Timestamp("2024-03-10", tz="UTC")).empty
    assert p.stats()["ec2_requests"] == 0


def test_no_credentials(aws_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    p = provider(tmp_path)
    with pytest.raises(ProviderError, match="no credentials"):
        p.fetch_costs(pd.Timestamp("2024-03-09", tz="UTC"), pd.Timestamp("2024-03-10", tz="UTC"))


# ------------------------------------------------------------------------------------------ over HTTP


@pytest.fixture
def moto_server(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real moto server on a free local port; clients find it through AWS_ENDPOINT_URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    try:
        yield url
    finally:
        server.stop()


def test_over_http_with_moto_server(moto_server: str, tmp_path: Path) -> None:
    """The same flow through real HTTP requests, endpoints taken from the standard environment."""
    queue_ce([fixture("ce_service_page1.json"), fixture("ce_service_page2.json"), fixture("ce_region.json")],
             base=moto_server)
    ec2 = boto3.client("ec2", region_name="eu-west-1")
    iid = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="c5.xlarge")["Instances"][0]["InstanceId"]
    now = next_hour()
    put_cpu("eu-west-1", {iid: [(now - pd.Timedelta(hours=h), 97.0) for h in (3, 2, 1)]})
    p = provider(tmp_path, str(now.tz_convert(None)), regions=["us-east-1", "eu-west-1"])
    costs = p.fetch_costs(pd.Timestamp("2024-03-05", tz="UTC"), pd.Timestamp("2024-03-08", tz="UTC"))
    usage = p.fetch_usage(now - pd.Timedelta(hours=6), now)
    validate_costs(costs)
    validate_usage(usage)
    assert costs["billed_cost"].sum() == pytest.approx(3 * 12.0 + 3 * 7.5 - 1.0)
    assert list(usage["cpu_utilization"]) == [97.0, 97.0, 97.0] and set(usage["region"]) == {"eu-west-1"}
    st = p.stats()
    assert st["ce_requests"] == 3 and st["errors"] == []
    assert (st["ec2_requests"], st["cloudwatch_requests"]) == (2, 1)

    # a later run finds these (long settled) days in the cache and asks Cost Explorer nothing
    p2 = provider(tmp_path, str((now + pd.Timedelta(hours=1)).tz_convert(None)), regions=["eu-west-1"])
    again = p2.fetch_costs(pd.Timestamp("2024-03-05", tz="UTC"), pd.Timestamp("2024-03-08", tz="UTC"))
    assert p2.stats()["ce_requests"] == 0 and len(again) == len(costs)


# ------------------------------------------------------------------------------------------ end to end


def test_miner_in_new_region_is_detected(moto: None, tmp_path: Path) -> None:
    """History: one account, us-east-1 only, web nodes with a daily CPU shape.  Today a region it never
    used fills with new instances pinned at ~99%: ``detect`` must call it mining with region and ids."""
    from costwatch.detect import detect

    now = next_hour()
    today = now.floor("D")
    history = day_list((today - pd.Timedelta(days=21)).date().isoformat(), 21)  # up to yesterday
    queue_ce([ce_result(history, {ACCOUNT: {EC2_SVC: 40.0, "Amazon Simple Storage Service": 3.0}}, "SERVICE"),
              ce_result(history, {ACCOUNT: {"us-east-1": 43.0}}, "REGION")])
    web = run("us-east-1", 2, "m5.large", tags={"eks:cluster-name": "web"})
    miners = run("ap-southeast-2", 3, "c5.4xlarge")
    rng = np.random.default_rng(7)
    old_hours = pd.date_range(now - pd.Timedelta(days=10), now - pd.Timedelta(hours=1), freq="h")
    put_cpu("us-east-1", {iid: [(t, 25 + 15 * np.sin(2 * np.pi * t.hour / 24) + rng.normal(0, 4))
                                for t in old_hours] for iid in web})
    new_hours = pd.date_range(now - pd.Timedelta(hours=8), now - pd.Timedelta(hours=1), freq="h")
    put_cpu("ap-southeast-2", {iid: [(t, 99.0 + rng.normal(0, 0.2)) for t in new_hours] for iid in miners})

    p = provider(tmp_path, str(now.tz_convert(None)), regions=["us-east-1", "ap-southeast-2"])
    start = today - pd.Timedelta(days=21)
    costs, usage = p.fetch_costs(start, now), p.fetch_usage(start, now)
    assert set(costs["region"].dropna()) == {"us-east-1"}
    found = detect(costs, usage, as_of=now)
    mining = [a for a in found.alerts if a.kind == "mining_suspected"]
    assert len(mining) == 1
    a = mining[0]
    assert a.project == ACCOUNT and a.provider == "aws" and a.region == "ap-southeast-2"
    assert a.evidence["new_regions"] == ["ap-southeast-2"]
    assert {n["node"] for n in a.evidence["nodes"]} == set(miners)
    assert all(n["new_region"] and n["instance_type"] == "c5.4xlarge" for n in a.evidence["nodes"])


def test_restating_days_are_reread_in_turns_within_four_requests(tmp_path: Path) -> None:
    """At 1,000 accounts a day of services fills a Cost Explorer page: the four restating days cannot all be
    re-read in 4 requests, so each run re-reads the stalest that fit (at least one), and every restating day
    comes round within two runs.  A small organization re-reads them all every run; missing days always."""
    from costwatch.providers.aws.cache import Cache
    from costwatch.providers.aws.costs import CostExplorer

    today = dt.date(2024, 6, 30)
    days = [today - dt.timedelta(days=i) for i in range(9, -1, -1)]
    cache = Cache(tmp_path / "aws.db", scope="aws")
    clock = {"t": "2024-06-30T10:00:00+00:00"}
    ce = CostExplorer(Api(), cache, "UnblendedCost", 3, lambda: pd.Timestamp(clock["t"]))

    def fetched(plan: dict[str, list[tuple[dt.date, dt.date]]], at: str) -> set[dt.date]:
        """Mark the planned days fetched at ``at``; returns them."""
        got = set()
        for kind, windows in plan.items():
            for a, b in windows:
                these = {(a + dt.timedelta(days=i)).isoformat(): False for i in range((b - a).days)}
                cache.store(kind, "UnblendedCost", "DAILY", these, at)
                got |= {dt.date.fromisoformat(d) for d in these}
        return got

    assert fetched(ce.plan(days, today), "2024-06-30T10:00:00") == set(days)  # backfill: everything
    assert ce.plan(days, today) == {k: [(today - dt.timedelta(days=3), today + dt.timedelta(days=1))]
                                    for k in ("service", "region")}  # pages unknown: one window each

    cache.put("ce-pages:service:UnblendedCost", {"groups_per_page": 8000, "groups_per_day": 8000.0}, "x")
    cache.put("ce-pages:region:UnblendedCost", {"groups_per_page": 4000, "groups_per_day": 2000.0}, "x")
    first = ce.plan(days, today)  # the newest of the equally stale: today and yesterday, 2 + 1 requests
    assert first == {k: [(today - dt.timedelta(days=1), today + dt.timedelta(days=1))] for k in first}
    fetched(first, "2024-06-30T11:00:00")
    second = ce.plan(days, today)  # then the two not re-read since the backfill
    assert second == {k: [(today - dt.timedelta(days=3), today - dt.timedelta(days=1))] for k in second}
    fetched(second, "2024-06-30T12:00:00")
    assert ce.plan(days, today) == first

    # a day never fetched is read whatever it costs, with at least one restating day
    import sqlite3

    with sqlite3.connect(tmp_path / "aws.db") as db:
        db.execute("DELETE FROM ce_days WHERE day=?", ((today - dt.timedelta(days=8)).isoformat(),))
    plan = ce.plan(days, today)
    assert plan["service"][0] == (today - dt.timedelta(days=8), today - dt.timedelta(days=7))
    assert len(plan["service"]) == 2 and plan["region"][0] == plan["service"][0]
