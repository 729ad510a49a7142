"""Who owns each account (Organizations), which instances run where (EC2), and their hourly CPU
(CloudWatch): the inputs of costwatch's CPU-plateau miner detector.

Every (account, region) pair is read every run, because a miner picks the region nobody looks at; a slow or
failing pair must neither delay nor stop the others: its error is collected and reported, the rest of the
data is returned.  The pairs go through a pool of ``max_workers`` threads (memory and open connections do
not grow with the organization), least recently read first, and each pair's results go straight into the
SQLite cache (see ``cache``): CloudWatch is asked only for the hours since the pair was last read, minus
``CW_OVERLAP`` for late datapoints, with both the hourly Average and Maximum.  Instances that stopped or
were terminated inside the window keep their CPU: stopped ones are still listed and queried, terminated ones
that DescribeInstances no longer lists are queried from the cached inventory.  With a deadline, pairs not
started by then are left for the next run, which takes them first.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from costwatch.errors import ProviderError
from costwatch.model import USAGE_COLUMNS, empty_usage

from ._api import Api, AwsCallError
from .cache import Cache

CLUSTER_TAGS = ("eks:cluster-name", "aws:eks:cluster-name", "alpha.eksctl.io/cluster-name")
NODEGROUP_TAGS = ("eks:nodegroup-name", "alpha.eksctl.io/nodegroup-name", "karpenter.sh/nodepool",
                  "aws:autoscaling:groupName")
CW_BATCH = 500  # GetMetricData's limit of queries per request (two per instance: Average and Maximum)
CW_STATS = {"Average": "avg", "Maximum": "max"}
CW_MAX_DATAPOINTS = 100_800  # GetMetricData's most datapoints per response; more come on NextToken pages
CW_PERIOD = 3600
CW_OVERLAP = pd.Timedelta(hours=3)  # hours re-read at every run: CloudWatch datapoints can arrive late
CW_KEEP_DAYS = 30  # cached hours this far before the requested window are kept, older ones pruned
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


def accounts_under(api: Api, cache: Cache, parents: list[str], now: pd.Timestamp) -> set[str]:
    """Ids of the accounts under the given OUs or roots, nested OUs included (cached for a day like the
    names): the shard one deployment watches."""
    key = "accounts-under:" + ",".join(sorted(parents))
    hit = cache.get(key)
    if hit is not None and now - pd.Timestamp(hit[1]) < ACCOUNTS_TTL:
        return {str(a) for a in hit[0]}
    client = api.client("organizations")
    found: set[str] = set()
    todo = list(parents)
    while todo:
        parent = todo.pop()
        for op, field, out in (("ListAccountsForParent", "Accounts", True),
                               ("ListOrganizationalUnitsForParent", "OrganizationalUnits", False)):
            params: dict[str, Any] = {"ParentId": parent}
            while True:
                page = api.call(client, op, **params)
                ids = [str(x["Id"]) for x in page.get(field, [])]
                if out:
                    found.update(ids)
                else:
                    todo += ids
                if not page.get("NextToken"):
                    break
                params["NextToken"] = page["NextToken"]
    cache.put(key, sorted(found), now.isoformat())
    return found


# ------------------------------------------------------------------------------------------ EC2 + CPU

@dataclass
class RegionResult:
    """What reading one (account, region) pair did; the data itself went to the cache."""

    region: str
    account: str | None = None  # set when read through an assumed role
    instances: int = 0
    samples: int = 0
    error: str | None = None
    skipped: bool = False  # not started before the deadline: first in the next run


def enabled_regions(api: Api, configured: list[str] | None) -> list[str]:
    """The configured regions, else every region enabled for the account."""
    if configured:
        return list(dict.fromkeys(configured))
    page = api.call(api.client("ec2"), "DescribeRegions")
    return sorted(str(r["RegionName"]) for r in page.get("Regions", []))


def _tag(tags: dict[str, str], keys: tuple[str, ...]) -> str | None:
    return next((tags[k] for k in keys if tags.get(k)), None)


def describe_instances(api: Api, region: str) -> list[dict[str, Any]]:
    """Every instance DescribeInstances lists, in any state (stopped and recently terminated ones too)."""
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


Sink = Callable[[str, np.ndarray, np.ndarray, np.ndarray], None]  # (stat, instance index, hour, value)


def cpu_samples(api: Api, region: str, instance_ids: list[str], start: dt.datetime, end: dt.datetime,
                sink: Sink) -> int:
    """Hourly Average and Maximum CPUUtilization per instance, ``CW_BATCH`` queries per GetMetricData request,
    following NextToken; each page goes to ``sink`` as arrays (index into ``instance_ids``, epoch hour,
    value).  Returns the number of datapoints."""
    client = api.client("cloudwatch", region)
    per_request = max(1, CW_BATCH // len(CW_STATS))
    total = 0
    for b, batch in enumerate(_batches(instance_ids, per_request)):
        queries: dict[str, tuple[int, str]] = {}
        for n in range(len(batch)):
            for stat, col in CW_STATS.items():
                queries[f"{col}{n}"] = (b * per_request + n, stat)
        params: dict[str, Any] = {
            "StartTime": start, "EndTime": end, "ScanBy": "TimestampAscending",
            "MaxDatapoints": CW_MAX_DATAPOINTS,
            "MetricDataQueries": [
                {"Id": qid, "ReturnData": True,
                 "MetricStat": {"Metric": {"Namespace": "AWS/EC2", "MetricName": "CPUUtilization",
                                           "Dimensions": [{"Name": "InstanceId", "Value": instance_ids[idx]}]},
                                "Period": CW_PERIOD, "Stat": stat}}
                for qid, (idx, stat) in queries.items()],
        }
        seen: set[str] = set()
        while True:
            page = api.call(client, "GetMetricData", region=region, **params)
            for r in page.get("MetricDataResults", []):
                q = queries.get(str(r.get("Id")))
                values = r.get("Values") or []
                if q is None or not values:
                    continue
                stamps = r.get("Timestamps") or []
                hours = np.array([int(pd.Timestamp(t).timestamp()) for t in stamps[: len(values)]], dtype=np.int64)
                vals = np.asarray(values[: len(hours)], dtype=np.float64)
                sink(CW_STATS[q[1]], np.full(len(hours), q[0], dtype=np.int64), hours, vals)
                total += len(hours)
            token = page.get("NextToken")
            if not token or token in seen:
                break
            seen.add(token)
            params["NextToken"] = token
    return total


def owner_key(api: Api) -> str:
    return api.account or ""


def scan_region(api: Api, region: str, start: dt.datetime, end: dt.datetime, cpu: bool, *,
                cache: Cache, fetch_from: dt.datetime, now: pd.Timestamp) -> RegionResult:
    """Instances and CPU of one (account, region) for [fetch_from, end), stored in ``cache``; an error is kept
    in the result rather than raised.  ``start`` is the start of the window the caller wants cached."""
    result = RegionResult(region, api.account)
    owner = owner_key(api)
    try:
        listed = describe_instances(api, region)
        result.instances = len(listed)
        nids = cache.put_nodes(owner, region, listed, int(now.timestamp()))
        if cpu and start < end:
            # listed instances launched before the window's end, and those gone from the list (terminated)
            # that were still seen during the hours being read
            ids = [i["instance_id"] for i in listed
                   if i["launch_time"] is None or pd.Timestamp(i["launch_time"]) < pd.Timestamp(end)]
            ids += cache.gone_since(owner, region, (i["instance_id"] for i in listed),
                                    int(pd.Timestamp(fetch_from).timestamp()) - CW_PERIOD)
            node = np.array([nids[i] for i in ids], dtype=np.int64)

            def sink(stat: str, idx: np.ndarray, hours: np.ndarray, values: np.ndarray) -> None:
                cache.put_cpu(stat, node[idx], hours, np.clip(values, 0.0, 100.0))

            if ids:
                result.samples = cpu_samples(api, region, ids, fetch_from, end, sink)
        cache.done(owner, region, int(pd.Timestamp(start).timestamp()), int(pd.Timestamp(end).timestamp()))
    except ProviderError as e:
        result.error = str(e)
    except Exception as e:  # a thread must not take the other regions down with it
        result.error = f"aws: region {region} failed: {type(e).__name__}"
    if result.error and api.account:
        result.error = f"account {api.account}: {result.error}"
    return result


def window(start: pd.Timestamp, end: pd.Timestamp, now: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The hours CloudWatch can answer: its hourly data is kept 455 days, and nothing is after now."""
    lo = max(pd.Timestamp(start), now - pd.Timedelta(days=CW_RETENTION_DAYS)).floor("h")
    hi = min(pd.Timestamp(end), now.ceil("h"))
    return lo, hi


def scan(targets: list[tuple[Api, str]], start: pd.Timestamp, end: pd.Timestamp, *, cpu: bool,
         max_workers: int, now: pd.Timestamp, cache: Cache, deadline: float | None = None,
         clock: Callable[[], float] = time.monotonic, scan_one: Callable[..., RegionResult] = scan_region,
         ) -> list[RegionResult]:
    """Every (account, region) pair through a pool of ``max_workers`` threads, least recently read first.
    A pair already read up to the window's end is not asked again; the others are read from where they
    stopped (minus ``CW_OVERLAP``), or from the window's start when the cache does not reach back that far.
    Pairs not started before ``deadline`` (``clock()`` seconds) come back ``skipped``."""
    if not targets:
        return []
    lo, hi = window(start, end, now)
    progress = cache.cpu_progress()
    lo_s, hi_s = int(lo.timestamp()), int(hi.timestamp())

    def plan(api: Api, region: str) -> tuple[int, pd.Timestamp | None]:
        since, until = progress.get((owner_key(api), region), (None, None))
        if since is None or until is None or since > lo_s or until < lo_s:
            return -1, lo  # never read, or not far enough back: the whole window
        if until >= hi_s:
            return until, None  # already read up to the end of the window
        return until, max(lo, pd.Timestamp(until, unit="s", tz="UTC") - CW_OVERLAP)

    planned = sorted(((plan(api, region), n, api, region) for n, (api, region) in enumerate(targets)),
                     key=lambda p: (p[0][0], p[1]))

    def one(item: tuple[tuple[int, pd.Timestamp | None], int, Api, str]) -> RegionResult:
        (_, fetch_from), _, api, region = item
        if fetch_from is None:
            return RegionResult(region, api.account)
        if deadline is not None and clock() >= deadline:
            return RegionResult(region, api.account, skipped=True)
        return scan_one(api, region, lo.to_pydatetime(), hi.to_pydatetime(), cpu, cache=cache,
                        fetch_from=fetch_from.to_pydatetime(), now=now)

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(planned)))) as pool:
        results = list(pool.map(one, planned))
    cache.prune_cpu(int((lo - pd.Timedelta(days=CW_KEEP_DAYS)).timestamp()))
    return results


def instances_frame(cache: Cache | None, units: list[tuple[str, str]], seen_since: int | None = None) -> pd.DataFrame:
    """The instances of the given (owner, region) pairs known to the cache (seen at or after ``seen_since``)."""
    if cache is None:
        frame = pd.DataFrame(columns=INSTANCE_COLUMNS)
    else:
        frame = cache.nodes_frame(units, seen_since).reset_index(drop=True)[INSTANCE_COLUMNS]
    frame["launch_time"] = pd.to_datetime(frame["launch_time"], utc=True)
    return frame


def usage_frame(cache: Cache, units: list[tuple[str, str]], start: pd.Timestamp, end: pd.Timestamp,
                ) -> pd.DataFrame:
    """Cached CPU of the given (owner, region) pairs in [start, end) as costwatch's usage frame (project =
    the instance's account id), sorted by (timestamp, project, node); ``cpu_max`` carries the hourly Maximum
    next to the Average in ``cpu_utilization``.  Sorted as arrays and built once in the final dtypes: a
    frame built, normalized and sorted held three copies of millions of rows at once."""
    nodes = cache.nodes_frame(units)
    lo, hi = math.ceil(pd.Timestamp(start).timestamp()), math.ceil(pd.Timestamp(end).timestamp())
    nid, hour, avg, mx = cache.cpu_columns(nodes.index.to_numpy(), lo, hi)
    keep = ~np.isnan(avg)
    if not keep.any():
        return _with_max(empty_usage())
    pos = nodes.index.get_indexer(nid[keep])
    hour, avg, mx = hour[keep], avg[keep], mx[keep]
    del nid, keep
    meta = nodes.reset_index(drop=True)
    rank = np.empty(len(meta), dtype=np.int64)
    rank[meta.sort_values(["account", "instance_id"], kind="stable").index.to_numpy()] = np.arange(len(meta))
    order = np.lexsort((rank[pos], hour))
    pos, hour, avg, mx = pos[order], hour[order], avg[order], mx[order]
    del order

    def col(name: str) -> Any:  # one reference per row to the instance's string, not a copy
        return pd.array(meta[name].to_numpy(dtype=object)[pos], dtype="string")

    def missing() -> Any:
        return pd.array(np.full(len(pos), None, dtype=object), dtype="string")

    return pd.DataFrame({
        "timestamp": pd.DatetimeIndex(pd.to_datetime(hour, unit="s", utc=True)).astype(USAGE_COLUMNS["timestamp"]),
        "provider": pd.array(np.full(len(pos), "aws", dtype=object), dtype="string"),
        "project": col("account"),
        "node": col("instance_id"),
        "cpu_utilization": avg,
        "cluster": col("cluster"),
        "region": col("region"),
        "instance_type": col("instance_type"),
        "project_name": missing(),
        "instance_id": missing(),
        "cpu_max": mx,
    }, copy=False)


def _with_max(frame: pd.DataFrame) -> pd.DataFrame:
    frame["cpu_max"] = pd.Series(dtype="float64")
    return frame
