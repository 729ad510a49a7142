"""The aws provider at organization scale (issue 18): CPU cached per (account, region) and read incrementally,
Average and Maximum, stopped and vanished instances keeping their CPU, a run cut short by its deadline
resumed by the next one, and memory that does not grow with the number of accounts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

pytest.importorskip("moto")
from moto import mock_aws
from test_aws_provider import AMI, make_org, next_hour, put_cpu, run

from costwatch.providers.aws import AwsProvider, compute

ROLE = "CostwatchReadOnly"


@pytest.fixture
def moto(aws_env: None) -> Iterator[None]:
    with mock_aws():
        yield


def provider(tmp_path: Path, now: pd.Timestamp, **kw: Any) -> AwsProvider:
    kw.setdefault("regions", ["us-east-1"])
    kw.setdefault("guardduty", False)
    return AwsProvider(cache_path=tmp_path / "aws.db", clock=lambda: now, **kw)


def windows(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, pd.Timestamp, pd.Timestamp]]:
    """Record the (region, start, end) of every CPU read."""
    seen: list[tuple[str, pd.Timestamp, pd.Timestamp]] = []
    real = compute.cpu_samples

    def spy(api: Any, region: str, ids: list[str], start: Any, end: Any, sink: Any) -> int:
        seen.append((region, pd.Timestamp(start), pd.Timestamp(end)))
        return real(api, region, ids, start, end, sink)

    monkeypatch.setattr(compute, "cpu_samples", spy)
    return seen


def test_hourly_run_reads_only_the_hours_since_the_last(moto: None, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    iid = run("us-east-1", 1)[0]
    now = next_hour()
    put_cpu("us-east-1", {iid: [(now - pd.Timedelta(hours=h), 30.0) for h in range(1, 48)]})
    seen = windows(monkeypatch)
    first = provider(tmp_path, now)
    usage = first.fetch_usage(now - pd.Timedelta(days=7), now)
    assert len(usage) == 47 and seen[-1][1] == (now - pd.Timedelta(days=7))
    # an hour later: one new datapoint, and CloudWatch is asked only from the last run minus the overlap
    put_cpu("us-east-1", {iid: [(now, 80.0)]})
    later = provider(tmp_path, now + pd.Timedelta(hours=1))
    usage = later.fetch_usage(now + pd.Timedelta(hours=1) - pd.Timedelta(days=7), now + pd.Timedelta(hours=1))
    assert seen[-1][1:] == (now - compute.CW_OVERLAP, now + pd.Timedelta(hours=1))
    assert later.stats()["cloudwatch_requests"] == 1
    assert len(usage) == 48 and usage["cpu_utilization"].iloc[-1] == 80.0
    # the cache answers the whole window: the same frame as reading it all again
    again = provider(tmp_path / "fresh", now + pd.Timedelta(hours=1))
    full = again.fetch_usage(now + pd.Timedelta(hours=1) - pd.Timedelta(days=7), now + pd.Timedelta(hours=1))
    pd.testing.assert_frame_equal(usage, full)


def test_maximum_is_fetched_next_to_the_average(moto: None, tmp_path: Path) -> None:
    """A miner bursting inside an hour whose average looks tame: the hourly Maximum comes back too."""
    iid = run("us-east-1", 1)[0]
    now = next_hour()
    hour = now - pd.Timedelta(hours=2)
    put_cpu("us-east-1", {iid: [(hour + pd.Timedelta(minutes=m), v) for m, v in ((5, 10.0), (20, 10.0), (40, 100.0))]})
    usage = provider(tmp_path, now).fetch_usage(now - pd.Timedelta(hours=6), now)
    row = usage.iloc[0]
    assert (row["timestamp"], row["cpu_utilization"], row["cpu_max"]) == (hour, 40.0, 100.0)


def test_stopped_and_terminated_instances_keep_their_cpu(moto: None, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A spot miner gone by the next run, and a node stopped inside the window, still count."""
    running, stopped, gone = run("us-east-1", 3, "c5.4xlarge", tags={"eks:cluster-name": "batch"})
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ec2.stop_instances(InstanceIds=[stopped])
    ec2.terminate_instances(InstanceIds=[gone])
    now = next_hour()
    hours = [now - pd.Timedelta(hours=h) for h in range(6, 0, -1)]
    put_cpu("us-east-1", {running: [(t, 20.0) for t in hours], stopped: [(t, 50.0) for t in hours[:3]],
                          gone: [(t, 99.0) for t in hours]})
    first = provider(tmp_path, now)
    usage = first.fetch_usage(now - pd.Timedelta(days=1), now)
    assert set(usage["node"]) == {running, stopped, gone}
    # an hour later DescribeInstances no longer lists the terminated instance (AWS forgets it after ~1 h),
    # and its last datapoint arrived late
    real = compute.describe_instances
    monkeypatch.setattr(compute, "describe_instances",
                        lambda api, region: [i for i in real(api, region) if i["instance_id"] != gone])
    put_cpu("us-east-1", {gone: [(now, 98.0)]})
    later = provider(tmp_path, now + pd.Timedelta(hours=1))
    usage = later.fetch_usage(now - pd.Timedelta(days=1), now + pd.Timedelta(hours=1))
    by_node = usage.groupby("node")["cpu_utilization"].agg(["count", "mean"])
    assert by_node.loc[gone].tolist() == [7, pytest.approx((6 * 99.0 + 98.0) / 7)]
    assert by_node.loc[stopped].tolist() == [3, 50.0]
    assert set(usage.loc[usage["node"] == gone, "cluster"]) == {"batch"}
    assert gone in set(later.instances["instance_id"])


def _org(accounts: int, regions: list[str]) -> list[str]:
    """Member accounts (through the role), each with one instance and an hour of CPU in every region."""
    ids = list(make_org({f"m{n}": "team" for n in range(accounts)}).values())
    now = next_hour()
    for account in ids:
        creds = boto3.client("sts").assume_role(RoleArn=f"arn:aws:iam::{account}:role/{ROLE}",
                                                RoleSessionName="setup")["Credentials"]
        s = boto3.session.Session(aws_access_key_id=creds["AccessKeyId"], aws_session_token=creds["SessionToken"],
                                  aws_secret_access_key=creds["SecretAccessKey"])
        for region in regions:
            iid = s.client("ec2", region_name=region).run_instances(
                ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="m5.large")["Instances"][0]["InstanceId"]
            s.client("cloudwatch", region_name=region).put_metric_data(Namespace="AWS/EC2", MetricData=[
                {"MetricName": "CPUUtilization", "Dimensions": [{"Name": "InstanceId", "Value": iid}],
                 "Timestamp": (now - pd.Timedelta(hours=1)).to_pydatetime(), "Value": 60.0}])
    return ids


class Ticks:
    """A monotonic clock that passes the deadline after ``n`` readings (one per pair started)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def __call__(self) -> float:
        self.left -= 1
        return 0.0 if self.left >= 0 else 1e9


def test_a_run_cut_short_is_resumed_by_the_next(moto: None, tmp_path: Path) -> None:
    """The deadline stops the scan after three (account, region) pairs; the run names the accounts it
    skipped and returns what it read, and the next run reads only the pairs left."""
    regions = ["us-east-1", "eu-west-1"]
    members = _org(3, regions)
    now = next_hour()
    first = provider(tmp_path, now, regions=regions, assume_role=ROLE, max_workers=1)
    first.monotonic = Ticks(1 + 3)  # one reading for the budget, then three pairs
    first.set_deadline(1000.0)
    usage = first.fetch_usage(now - pd.Timedelta(days=1), now)
    st = first.stats()
    # 8 pairs, in account order: the caller's two (no instances) and one of the first member's were read
    assert st["ec2_requests"] == 3 and st["cloudwatch_requests"] == 1 and len(usage) == 1
    assert st["skipped_account_count"] == 3 and all(a in st["skipped_accounts"] for a in members)

    second = provider(tmp_path, now, regions=regions, assume_role=ROLE)
    usage = second.fetch_usage(now - pd.Timedelta(days=1), now)
    st = second.stats()
    assert st["ec2_requests"] == 5 and st["cloudwatch_requests"] == 5 and st["skipped_account_count"] == 0
    assert len(usage) == 6 and set(usage["project"]) == set(members)


def test_skipped_findings_are_named_too(moto: None, tmp_path: Path) -> None:
    p = provider(tmp_path, next_hour(), regions=["us-east-1", "eu-west-1"], guardduty=True, cpu=False)
    p.monotonic = Ticks(1 + 1)
    p.set_deadline(1000.0)
    p.fetch_findings(next_hour() - pd.Timedelta(days=1), next_hour())
    assert p.stats()["skipped_accounts"] == "caller's account" and p.stats()["guardduty_requests"] == 1


# ------------------------------------------------------------------------------------------ memory

CHILD = textwrap.dedent("""
    import json, sys, tracemalloc
    tracemalloc.start()
    import pandas as pd
    from costwatch.providers.aws import AwsProvider
    n, cache, now = int(sys.argv[1]), sys.argv[2], pd.Timestamp(sys.argv[3], tz="UTC")
    real = AwsProvider.accounts
    def first_n(self):
        names, owners = real(self)
        keep = sorted(names, key=lambda a: (a != "123456789012", a))[:n]  # the caller's first
        return {a: names[a] for a in keep}, {a: owners[a] for a in keep if a in owners}
    AwsProvider.accounts = first_n
    p = AwsProvider(cache_path=cache, clock=lambda: now, regions=["us-east-1"], guardduty=False,
                    assume_role="CostwatchReadOnly", max_workers=8)
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    usage = p.fetch_usage(now - pd.Timedelta(days=2), now)
    _, peak = tracemalloc.get_traced_memory()
    st = p.stats()
    print(json.dumps({"peak": peak - base, "rows": len(usage), "errors": st["errors"][:3], "sts": st["sts_requests"],
                      "cloudwatch": st["cloudwatch_requests"]}))
""")


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location("aws_org_bench", Path(__file__).parents[1] / "bench" / "aws_org.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_memory_does_not_grow_with_accounts(aws_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Traced peak of one fetch over 50 and over 200 accounts (an instance with CPU in each), each in a fresh
    process, against the benchmark's protocol stand-ins (in this one).
    One boto3 session per account, as before, cost ~60 MB each: 9 GB more for 150 more accounts.  Now the
    difference is the accounts' credentials, inventory and rows: bounded here by 30 MB."""
    now = next_hour()
    url, srv, _ = _bench().start_standins(200, ["us-east-1"], 1, 1, 3, int(now.timestamp()))
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    got = {}
    try:
        for n in (50, 200):
            done = subprocess.run([sys.executable, "-c", CHILD, str(n), str(tmp_path / f"c{n}.db"),
                                   now.tz_convert(None).isoformat()], env=dict(os.environ), capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            got[n] = json.loads(done.stdout.strip().splitlines()[-1])
            assert got[n]["errors"] == [] and got[n]["sts"] == n and got[n]["cloudwatch"] == n
    finally:
        srv.shutdown()
    assert got[50]["rows"] > 0 and got[200]["rows"] == 4 * got[50]["rows"]
    growth_mb = (got[200]["peak"] - got[50]["peak"]) / 1e6
    print(f"traced peak: 50 accounts {got[50]['peak'] / 1e6:.1f} MB, 200 accounts {got[200]['peak'] / 1e6:.1f} MB")
    assert growth_mb < 30, got


def test_organizational_units_shard_the_organization(moto: None, tmp_path: Path) -> None:
    """One deployment per OU: only the accounts under it (nested OUs too) are scanned and costed."""
    from test_aws_provider import ce_result, day_list, queue_ce

    members = _org(3, ["us-east-1"])
    org = boto3.client("organizations", region_name="us-east-1")
    root = org.list_roots()["Roots"][0]["Id"]
    team = org.create_organizational_unit(ParentId=root, Name="team")["OrganizationalUnit"]["Id"]
    nested = org.create_organizational_unit(ParentId=team, Name="ml")["OrganizationalUnit"]["Id"]
    org.move_account(AccountId=members[0], SourceParentId=root, DestinationParentId=team)
    org.move_account(AccountId=members[1], SourceParentId=root, DestinationParentId=nested)
    now = next_hour()
    days = day_list((now - pd.Timedelta(days=3)).date().isoformat(), 3)
    queue_ce([ce_result(days, {a: {"AWS Lambda": 1.0} for a in members}, "SERVICE"),
              ce_result(days, {a: {"us-east-1": 1.0} for a in members}, "REGION")])
    p = provider(tmp_path, now, assume_role=ROLE, organizational_units=[team])
    costs = p.fetch_costs(now.floor("D") - pd.Timedelta(days=3), now.floor("D"))
    usage = p.fetch_usage(now - pd.Timedelta(days=1), now)
    assert set(costs["project_id"]) == set(usage["project"]) == {members[0], members[1]}
    assert p.stats()["sts_requests"] == 3  # GetCallerIdentity + the two accounts; the caller's is not in the OU


def test_the_hourly_maximum_is_shown_on_a_mining_alert(moto: None, tmp_path: Path) -> None:
    """New miners next to a web node, at 96% on the hour's Average and 100% inside every hour: the alert's
    nodes carry the peak (``cpu_peak``, from CloudWatch's Maximum) and the Slack message shows it."""
    from datetime import UTC, datetime

    from costwatch.detect import detect
    from costwatch.notify import Notification, Target
    from notifiers.slack_blocks import render

    now = next_hour()
    web = run("us-east-1", 1)[0]
    miners = run("us-east-1", 2, "c5.4xlarge")
    put_cpu("us-east-1", {web: [(t, 20.0 + t.hour % 5) for t in pd.date_range(now - pd.Timedelta(days=4), now,
                                                                              freq="h", inclusive="left")]})
    hours = pd.date_range(now - pd.Timedelta(hours=10), now - pd.Timedelta(hours=1), freq="h")
    put_cpu("us-east-1", {iid: [(t + pd.Timedelta(minutes=m), v) for t in hours for m, v in ((5, 92.0), (35, 100.0))]
                          for iid in miners})
    usage = provider(tmp_path, now).fetch_usage(now - pd.Timedelta(days=5), now)
    mined = usage[usage["node"].isin(miners)]
    assert set(mined["cpu_utilization"]) == {96.0} and set(mined["cpu_max"]) == {100.0}
    mining = [a for a in detect(pd.DataFrame(), usage, as_of=now).alerts if a.kind == "mining_suspected"]
    assert len(mining) == 1 and [n["cpu_peak"] for n in mining[0].evidence["nodes"]] == [100.0, 100.0]
    n = Notification(id="n-1", group_key="g", event="firing", target=Target("slack", ""), title="mining",
                     alerts=[mining[0].to_dict()], created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    _, blocks = render(n)
    assert "peak 100%" in json.dumps(blocks)
