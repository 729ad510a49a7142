"""Which VMs and scale sets run where (ARM lists) and their hourly CPU (Azure Monitor ``Percentage CPU``):
the inputs of costwatch's CPU-plateau miner detector.

Scale sets are read per instance (``$filter=VMName eq '*'``, with ``top`` raised from its default of 10 series)
because a miner in one node of a 20-node AKS pool disappears in the pool's average.  Instances are named like
Kubernetes names them (``computerNamePrefix`` + base-36 instance id, ``aks-nodepool1-12345678-vmss00000a``), so
alerts and ``kubectl get nodes`` agree; the AKS cluster comes from the ``aks-managed-cluster-name`` tag or the
``MC_<group>_<cluster>_<region>`` node resource group.  Flexible scale sets are skipped here: their VMs are listed
as ordinary VMs.  VM names are unique per resource group only, so a name seen twice in one subscription is
shown as ``<resource group>/<name>``.

Subscriptions are listed in parallel threads, then every metrics query runs in one pool; a subscription that
fails is reported and the others are kept.  Deleted VMs are not listed, so their CPU is not read (their cost is).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from azure.core.exceptions import ResourceNotFoundError

from costwatch.errors import ProviderError
from costwatch.model import empty_usage, normalize_usage

from ._arm import COMPUTE_API, ROLE_MONITOR, ROLE_READER, Azure, translate

METRIC = "Percentage CPU"
INTERVAL = "PT1H"
RETENTION_DAYS = 93        # Azure Monitor keeps platform metrics this long
MAX_SPAN = pd.Timedelta(days=30)  # one metrics request covers at most this much
MAX_SERIES = 1000          # ``top`` for per-instance scale-set queries (the API's default is 10)
CLUSTER_TAGS = ("aks-managed-cluster-name",)
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_MC_GROUP = re.compile(r"^MC_(?P<rest>.+)$", re.IGNORECASE)


@dataclass
class Target:
    """A VM or a uniform scale set whose CPU is read."""

    subscription: str
    resource_id: str
    name: str
    resource_group: str
    region: str | None
    instance_type: str | None
    cluster: str | None
    scale_set: bool = False
    computer_prefix: str | None = None


@dataclass
class SubscriptionScan:
    subscription: str
    targets: list[Target] = field(default_factory=list)
    error: str | None = None


@dataclass
class Samples:
    target: Target
    points: list[tuple[pd.Timestamp, str, str, float]] = field(default_factory=list)  # time, key, name, cpu
    error: str | None = None


def _b36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if n == 0:
            return out


def resource_group_of(resource_id: str) -> str:
    m = re.search(r"/resourceGroups/([^/]+)", resource_id, re.IGNORECASE)
    return m.group(1) if m else ""


def cluster_of(tags: dict[str, str], resource_group: str, region: str | None) -> str | None:
    """The AKS cluster a node belongs to: the managed tag, else parsed from ``MC_<group>_<cluster>_<region>``
    (groups and clusters may hold underscores; the cluster is taken as the last part)."""
    for key in CLUSTER_TAGS:
        if tags.get(key):
            return tags[key]
    m = _MC_GROUP.match(resource_group)
    if not m:
        return None
    rest = m.group("rest")
    if region and rest.lower().endswith("_" + region.lower()):
        rest = rest[: -len(region) - 1]
    return rest.rsplit("_", 1)[-1] or None


def _tags(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def list_targets(azure: Azure, subscription: str) -> SubscriptionScan:
    """VMs and uniform scale sets of one subscription; an error is kept in the result, not raised."""
    scan = SubscriptionScan(subscription)
    base = f"/subscriptions/{subscription}/providers/Microsoft.Compute"
    try:
        for vm in azure.list_all(f"{base}/virtualMachines?api-version={COMPUTE_API}"):
            rid, rg = str(vm.get("id") or ""), resource_group_of(str(vm.get("id") or ""))
            props, tags = vm.get("properties") or {}, _tags(vm.get("tags"))
            region = str(vm.get("location") or "").lower() or None
            scan.targets.append(Target(subscription, rid, str(vm.get("name") or rid.rsplit("/", 1)[-1]), rg, region,
                                       (props.get("hardwareProfile") or {}).get("vmSize"),
                                       cluster_of(tags, rg, region)))
        for ss in azure.list_all(f"{base}/virtualMachineScaleSets?api-version={COMPUTE_API}"):
            props = ss.get("properties") or {}
            if str(props.get("orchestrationMode") or "Uniform").lower() == "flexible":
                continue
            rid, rg = str(ss.get("id") or ""), resource_group_of(str(ss.get("id") or ""))
            tags, region = _tags(ss.get("tags")), str(ss.get("location") or "").lower() or None
            os_profile = (props.get("virtualMachineProfile") or {}).get("osProfile") or {}
            scan.targets.append(Target(subscription, rid, str(ss.get("name") or rid.rsplit("/", 1)[-1]), rg, region,
                                       (ss.get("sku") or {}).get("name"), cluster_of(tags, rg, region),
                                       scale_set=True, computer_prefix=os_profile.get("computerNamePrefix")))
    except Exception as e:
        scan.error = str(translate(e, "listing virtual machines and scale sets", ROLE_READER, subscription))
    return scan


def _instance(target: Target, vm_name: str | None) -> tuple[str, str]:
    """(unique key, node name) of a scale-set instance from its ``VMName`` dimension (``<scale set>_<id>``)."""
    if not vm_name:
        return target.resource_id, target.name
    m = re.fullmatch(re.escape(target.name) + r"_(\d+)", vm_name, re.IGNORECASE)
    if m is None:
        return f"{target.resource_id}/{vm_name}", vm_name
    key = f"{target.resource_id}/virtualMachines/{m.group(1)}"
    if target.computer_prefix:
        return key, target.computer_prefix + _b36(int(m.group(1))).rjust(6, "0")
    return key, vm_name


def cpu_samples(azure: Azure, target: Target, start: pd.Timestamp, end: pd.Timestamp) -> Samples:
    """Hourly average ``Percentage CPU`` of one VM, or of every instance of one scale set."""
    out = Samples(target)
    namespace = "Microsoft.Compute/virtualMachineScaleSets" if target.scale_set else "Microsoft.Compute/virtualMachines"
    extra: dict[str, Any] = {"filter": "VMName eq '*'", "top": MAX_SERIES} if target.scale_set else {}
    try:
        client = azure.monitor()
        lo = start
        while lo < end:
            hi = min(lo + MAX_SPAN, end)
            resp = client.metrics.list(
                target.resource_id.lstrip("/"), timespan=f"{lo:%Y-%m-%dT%H:%M:%SZ}/{hi:%Y-%m-%dT%H:%M:%SZ}",
                interval=INTERVAL, metricnames=METRIC, aggregation="Average,Maximum", metricnamespace=namespace,
                **extra)
            for metric in resp.value or []:
                if metric.error_code not in (None, "", "Success"):
                    raise ProviderError(f"azure: Azure Monitor could not read {METRIC} of {target.name}: "
                                        f"{metric.error_code}")
                for series in metric.timeseries or []:
                    vm_name = next((str(mv.value) for mv in series.metadatavalues or []
                                    if mv.name is not None and str(mv.name.value).lower() == "vmname"), None)
                    key, node = _instance(target, vm_name) if target.scale_set else (target.resource_id, target.name)
                    out.points.extend((pd.Timestamp(p.time_stamp), key, node, float(p.average))
                                      for p in series.data or [] if p.average is not None and p.time_stamp)
            lo = hi
    except ResourceNotFoundError:
        out.points = []  # deleted between listing and reading: nothing to report, nothing wrong
    except Exception as e:
        out.error = str(translate(e, f"reading {METRIC} from Azure Monitor", ROLE_MONITOR, target.subscription))
    return out


@dataclass
class UsageScan:
    frame: pd.DataFrame
    errors: list[str]
    targets: int
    failed_subscriptions: int


def scan(azure: Azure, subscriptions: list[str], start: pd.Timestamp, end: pd.Timestamp, *, max_workers: int,
         now: pd.Timestamp, list_one: Callable[[Azure, str], SubscriptionScan] = list_targets) -> UsageScan:
    """Every subscription's VMs and scale sets, then their CPU, all in parallel; errors are collected per
    subscription (one line each) and the rest of the data is returned."""
    if not subscriptions:
        return UsageScan(empty_usage(), [], 0, 0)
    lo = max(pd.Timestamp(start), now - pd.Timedelta(days=RETENTION_DAYS)).floor("h")
    hi = min(pd.Timestamp(end), now.ceil("h"))
    workers = max(1, max_workers)
    with ThreadPoolExecutor(max_workers=min(workers, len(subscriptions))) as pool:
        listed = list(pool.map(lambda s: list_one(azure, s), subscriptions))
    targets = [t for s in listed for t in s.targets]
    results: list[Samples] = []
    if targets and lo < hi:
        with ThreadPoolExecutor(max_workers=min(workers, len(targets))) as pool:
            results = list(pool.map(lambda t: cpu_samples(azure, t, lo, hi), targets))
    errors = [f"subscription {s.subscription}: {s.error}" for s in listed if s.error]
    failed = {s.subscription for s in listed if s.error}
    by_sub: dict[str, list[Samples]] = defaultdict(list)
    for r in results:
        by_sub[r.target.subscription].append(r)
    for sub, rs in by_sub.items():
        bad = [r for r in rs if r.error]
        for msg in dict.fromkeys(str(r.error) for r in bad):
            names = [r.target.name for r in bad if r.error == msg]
            errors.append(f"subscription {sub}: CPU of {len(names)} resource(s) ({', '.join(names[:3])}"
                          f"{', ...' if len(names) > 3 else ''}) not read: {msg}")
        if bad and len(bad) == len(rs):
            failed.add(sub)
    return UsageScan(usage_frame(results, lo, hi), errors, len(targets), len(failed))


def usage_frame(results: list[Samples], start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Samples as costwatch's usage frame (project = subscription id), node names made unique per subscription."""
    rows = [(t, r.target, key, name, v) for r in results for t, key, name, v in r.points]
    if not rows:
        return empty_usage()
    keys_of: dict[tuple[str, str], set[str]] = defaultdict(set)
    for _, target, key, name, _ in rows:
        keys_of[(target.subscription, name.lower())].add(key.lower())

    def node(target: Target, name: str) -> str:
        clash = len(keys_of[(target.subscription, name.lower())]) > 1
        return f"{target.resource_group}/{name}" if clash else name

    df = pd.DataFrame({
        "timestamp": pd.to_datetime([r[0] for r in rows], utc=True),
        "provider": "azure",
        "project": [r[1].subscription for r in rows],
        "node": [node(r[1], r[3]) for r in rows],
        "cpu_utilization": [min(max(r[4], 0.0), 100.0) for r in rows],
        "cluster": [r[1].cluster for r in rows],
        "region": [r[1].region for r in rows],
        "instance_type": [r[1].instance_type for r in rows],
    })
    df = df[(df["timestamp"] >= start) & (df["timestamp"] < end)]
    return normalize_usage(df.sort_values(["project", "node", "timestamp"], kind="stable"))
