"""Who owns each account (Organizations), which instances run where (EC2), and their hourly CPU
(CloudWatch): the inputs of costwatch's CPU-plateau miner detector.

Regions are scanned in parallel threads because a miner picks the region nobody looks at, so all enabled
regions are read every run and a slow or failing region must neither delay nor stop the others: each
region's error is collected and reported, the rest of the data is returned.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from costwatch.errors import ProviderError
from costwatch.model import empty_usage, normalize_usage

from ._api import Api, AwsCallError
from .cache import Cache

CLUSTER_TAGS = ("eks:cluster-name", "aws:eks:cluster-name", "alpha.eksctl.io/cluster-name")
NODEGROUP_TAGS = ("eks:nodegroup-name", "alpha.eksctl.io/nodegroup-name", "karpenter.sh/nodepool",
                  "aws:autoscaling:groupName")
CW_BATCH = 500  # GetMetricData's limit of queries per request
CW_PERIOD = 3600
CW_RETENTION_DAYS = 455  # hourly CloudWatch data is kept this long
ACCOUNTS_TTL = pd.Timedelta(hours=24)
ORG_FALLBACK_CODES = frozenset({"AccessDenied", "AccessDeniedException", "AWSOrganizationsNotInUseException"})
INSTANCE_COLUMNS = ["instance_id", "account", "region", "instance_type", "launch_time", "state", "cluster",
                    "nodegroup", "name"]


# ------------------------------------------------------------------------------------------ organizations

def accounts(api: Api, cache: Cache, owner_tag: str, now: pd.Timestamp, notes: list[str],
             ) -> tuple[dict[str, str], dict[str, str]]:
    """Account id -> name and id -> owner, cached for a day (names rarely change; one tag request per
    account would otherwise dominate the request count).  Without Organizations access: empty maps and
    a note, so costs show account ids rather than failing."""
    key = f"accounts:{owner_tag}"
    hit = cache.get(key)
    if hit is not None and now - pd.Timestamp(hit[1]) < ACCOUNTS_TTL:
        value = hit[0]
        return dict(value["names"]), dict(value["owners"])
    client = api.client("organizations")
    names: dict[str, str] = {}
    owners: dict[str, str] = {}
    try:
        params: dict[str, Any] = {}
        while True:
            page = api.call(client, "ListAccounts", **params)
            names.update({str(a["Id"]): str(a.get("Name") or a["Id"]) for a in page.get("Accounts", [])})
            if not page.get("NextToken"):
                break
            params["NextToken"] = page["NextToken"]
        for acct in names:
            tparams: dict[str, Any] = {"ResourceId": acct}
            while True:
                tpage = api.call(client, "ListTagsForResource", **tparams)
                for t in tpage.get("Tags", []):
                    if t.get("Key") == owner_tag:
                        owners[acct] = str(t.get("Value", ""))
                if not tpage.get("NextToken"):
                    break
                tparams["NextToken"] = tpage["NextToken"]
    except ProviderError as e:
        # names are cosmetic: never lose the costs over them.  A denial is stable, so it is cached for
        # the day like a success; anything else (throttling, network) is retried next run.
        notes.append(f"accounts shown by id: {e}")
        if not (isinstance(e, AwsCallError) and e.code in ORG_FALLBACK_CODES):
            return names, owners
    cache.put(key, {"names": names, "owners": owners}, now.isoformat())
    return names, owners


# ------------------------------------------------------------------------------------------ EC2 + CPU

@dataclass
class RegionResult:
    region: str
    account: str | None = None  # set when read through an assumed role
    instances: list[dict[str, Any]] = field(default_factory=list)
    samples: list[tuple[pd.Timestamp, str, float]] = field(default_factory=list)  # time, instance, cpu
    error: str | None = None


def enabled_regions(api: Api, configured: list[str] | None) -> list[str]:
    """The configured regions, else every region enabled for the account."""
    if configured:
        return list(dict.fromkeys(configured))
    page = api.call(api.client("ec2"), "DescribeRegions")
    return sorted(str(r["RegionName"]) for r in page.get("Regions", []))


def _tag(tags: dict[str, str], keys: tuple[str, ...]) -> str | None:
    return next((tags[k] for k in keys if tags.get(k)), None)


def describe_instances(api: Api, region: str) -> list[dict[str, Any]]:
    client = api.client("ec2", region)
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"MaxResults": 1000}
    while True:
        page = api.call(client, "DescribeInstances", region=region, **params)
        for res in page.get("Reservations", []):
            for inst in res.get("Instances", []):
                tags = {str(t["Key"]): str(t.get("Value", "")) for t in inst.get("Tags", []) or []}
                out.append({
                    "instance_id": str(inst["InstanceId"]),
                    "account": str(res.get("OwnerId") or ""),
                    "region": region,
                    "instance_type": inst.get("InstanceType"),
                    "launch_time": inst.get("LaunchTime"),
                    "state": (inst.get("State") or {}).get("Name"),
                    "cluster": _tag(tags, CLUSTER_TAGS),
                    "nodegroup": _tag(tags, NODEGROUP_TAGS),
                    "name": tags.get("Name"),
                })
        if not page.get("NextToken"):
            return out
        params["NextToken"] = page["NextToken"]


def _batches(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i: i + n]


def cpu_samples(api: Api, region: str, instance_ids: list[str], start: dt.datetime, end: dt.datetime,
                ) -> list[tuple[pd.Timestamp, str, float]]:
    """Hourly average CPUUtilization per instance, up to 500 instances per GetMetricData request."""
    client = api.client("cloudwatch", region)
    out: list[tuple[pd.Timestamp, str, float]] = []
    for batch in _batches(instance_ids, CW_BATCH):
        ids = {f"i{n}": iid for n, iid in enumerate(batch)}
        params: dict[str, Any] = {
            "StartTime": start, "EndTime": end, "ScanBy": "TimestampAscending",
            "MetricDataQueries": [
                {"Id": qid, "ReturnData": True,
                 "MetricStat": {"Metric": {"Namespace": "AWS/EC2", "MetricName": "CPUUtilization",
                                           "Dimensions": [{"Name": "InstanceId", "Value": iid}]},
                                "Period": CW_PERIOD, "Stat": "Average"}}
                for qid, iid in ids.items()],
        }
        seen: set[str] = set()
        while True:
            page = api.call(client, "GetMetricData", region=region, **params)
            for r in page.get("MetricDataResults", []):
                iid = ids.get(str(r.get("Id")))
                if iid is None:
                    continue
                out.extend((pd.Timestamp(t), iid, float(v))
                           for t, v in zip(r.get("Timestamps", []), r.get("Values", []), strict=False))
            token = page.get("NextToken")
            if not token or token in seen:
                break
            seen.add(token)
            params["NextToken"] = token
    return out


def scan_region(api: Api, region: str, start: dt.datetime, end: dt.datetime, cpu: bool) -> RegionResult:
    """Instances and CPU of one region; an error is kept in the result rather than raised."""
    result = RegionResult(region, api.account)
    try:
        result.instances = describe_instances(api, region)
        if cpu and result.instances and start < end:
            # instances launched after the window's end have nothing to report
            ids = [i["instance_id"] for i in result.instances
                   if i["launch_time"] is None or pd.Timestamp(i["launch_time"]) < pd.Timestamp(end)]
            result.samples = cpu_samples(api, region, ids, start, end)
    except ProviderError as e:
        result.error = str(e)
    except Exception as e:  # a thread must not take the other regions down with it
        result.error = f"aws: region {region} failed: {type(e).__name__}"
    if result.error and api.account:
        result.error = f"account {api.account}: {result.error}"
    return result


def scan(targets: list[tuple[Api, str]], start: pd.Timestamp, end: pd.Timestamp, *, cpu: bool,
         max_workers: int, now: pd.Timestamp,
         scan_one: Callable[[Api, str, dt.datetime, dt.datetime, bool], RegionResult] = scan_region,
         ) -> list[RegionResult]:
    """All (account, region) pairs in parallel; CloudWatch keeps hourly data 455 days, so the window is
    clamped to it."""
    if not targets:
        return []
    lo = max(pd.Timestamp(start), now - pd.Timedelta(days=CW_RETENTION_DAYS)).floor("h").to_pydatetime()
    hi = min(pd.Timestamp(end), now.ceil("h")).to_pydatetime()
    for api, region in targets:  # make clients here: boto3 sessions are not thread-safe
        api.client("ec2", region)
        if cpu:
            api.client("cloudwatch", region)
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(targets)))) as pool:
        return list(pool.map(lambda t: scan_one(t[0], t[1], lo, hi, cpu), targets))


def instances_frame(results: list[RegionResult]) -> pd.DataFrame:
    rows = [i for r in results for i in r.instances]
    frame = pd.DataFrame(rows, columns=INSTANCE_COLUMNS)
    frame["launch_time"] = pd.to_datetime(frame["launch_time"], utc=True)
    return frame


def usage_frame(results: list[RegionResult], start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """CPU samples joined to instance metadata, as costwatch's usage frame (project = account id)."""
    meta = {i["instance_id"]: i for r in results for i in r.instances}
    rows = [(t, meta[iid]["account"], iid, v, meta[iid]["cluster"], meta[iid]["region"],
             meta[iid]["instance_type"])
            for r in results for t, iid, v in r.samples]
    if not rows:
        return empty_usage()
    df = pd.DataFrame(rows, columns=["timestamp", "project", "node", "cpu_utilization", "cluster", "region",
                                     "instance_type"])
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    df = df[(df["timestamp"] >= start) & (df["timestamp"] < end)]
    df["cpu_utilization"] = df["cpu_utilization"].clip(0.0, 100.0)
    df["provider"] = "aws"
    return normalize_usage(df)
