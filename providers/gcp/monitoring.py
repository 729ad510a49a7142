"""Hourly CPU of every VM and GKE node from Cloud Monitoring: the input of costwatch's CPU-plateau miner detector.

Two metrics per project, both aligned to hourly means server-side (ALIGN_MEAN, 3600 s) so a page carries a
handful of points per node instead of one a minute:
  * ``compute.googleapis.com/instance/cpu/utilization`` of every ``gce_instance``.  The node is named as the
    console and Kubernetes name it, by the instance name (metric label ``instance_name``, else
    ``metadata.system_labels.name``; ``zone/name`` where two instances of the project share a name in different
    zones); the numeric instance id stays in the frame's ``instance_id`` (and so in the alert's evidence), the
    machine type comes from ``metadata.system_labels.machine_type`` where Monitoring attaches it;
  * ``kubernetes.io/node/cpu/allocatable_utilization`` of every ``k8s_node``.  A GKE Standard node is also a
    VM of the project, so its VM series is kept (whole-VM CPU, what a miner burns) and only labelled with the
    cluster; nodes with no VM series in the project (GKE Autopilot) get their own rows, node = node name.
Both metrics are fractions; costwatch wants percent.

Projects are read in parallel threads, and a project that fails (Monitoring API off, no permission,
throttled past the retry deadline) is reported on its own while the other projects' data is kept: a miner
picks the project nobody looks at, so one broken project must not blind the rest.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from costwatch.errors import ProviderError
from costwatch.model import empty_usage, normalize_usage

from ._api import Calls, translate

VM_METRIC = "compute.googleapis.com/instance/cpu/utilization"
GKE_METRIC = "kubernetes.io/node/cpu/allocatable_utilization"
ALIGNMENT = dt.timedelta(hours=1)
CALL_TIMEOUT = 120.0
_ZONE = re.compile(r"^([a-z]+(?:-[a-z]+)*\d+)-[a-z]$")

# (hour start, node, cpu %, cluster, region, instance type, instance id)
Sample = tuple[pd.Timestamp, str, float, str | None, str | None, str | None, str | None]


@dataclass
class ProjectResult:
    project: str
    samples: list[Sample] = field(default_factory=list)
    nodes: int = 0
    error: str | None = None


def region_of(location: str | None) -> str | None:
    """``us-central1-a`` -> ``us-central1``; a region (a regional GKE cluster's location) stays as it is."""
    if not location:
        return None
    m = _ZONE.match(location)
    return m.group(1) if m else location


def _request(project: str, metric: str, resource: str, start: dt.datetime, end: dt.datetime) -> Any:
    from google.cloud import monitoring_v3

    return monitoring_v3.ListTimeSeriesRequest(
        name=f"projects/{project}",
        filter=f'metric.type = "{metric}" AND resource.type = "{resource}"',
        interval=monitoring_v3.TimeInterval(start_time=start, end_time=end),
        aggregation=monitoring_v3.Aggregation(
            alignment_period={"seconds": int(ALIGNMENT.total_seconds())},
            per_series_aligner=monitoring_v3.Aggregation.Aligner.ALIGN_MEAN),
        view=monitoring_v3.ListTimeSeriesRequest.TimeSeriesView.FULL,
    )


def _series(client: Any, request: Any, calls: Calls, retry: Any) -> list[Any]:
    """Every time series of one ListTimeSeries query, following ``next_page_token``."""
    out: list[Any] = []
    for page in client.list_time_series(request=request, retry=retry, timeout=CALL_TIMEOUT).pages:
        calls.add("monitoring_requests")
        out.extend(page.time_series)
    return out


def _points(ts: Any) -> list[tuple[pd.Timestamp, float]]:
    """(hour start, percent) of an aligned series: a point stamped at its period's end covers the hour before."""
    out = []
    for p in ts.points:
        end = pd.Timestamp(p.interval.end_time)
        end = end.tz_convert("UTC") if end.tzinfo else end.tz_localize("UTC")
        out.append((end - pd.Timedelta(ALIGNMENT), min(max(float(p.value.double_value) * 100.0, 0.0), 100.0)))
    return out


def _system_label(ts: Any, key: str) -> str | None:
    """A system label (a protobuf Struct on a plain protobuf message, so no ``.get``)."""
    labels = ts.metadata.system_labels if "metadata" in ts else None
    value = labels[key] if labels is not None and key in labels else None
    return str(value) if value else None


def _vm_name(ts: Any) -> str:
    """The instance name: the metric label Compute Engine sets, else the system label Monitoring attaches."""
    return str(ts.metric.labels.get("instance_name") or _system_label(ts, "name") or "")


def _vm_nodes(vms: list[Any]) -> dict[tuple[str | None, str, str], str]:
    """(instance id, name, zone) -> node: the instance name, which is what the console, ``gcloud`` and GKE
    (node name, ``spec.providerID``) call it.  Names are unique per zone only, so instances of one project
    sharing a name in different zones become ``zone/name``; an instance without a name keeps its id."""
    keys = {(str(ts.resource.labels.get("instance_id") or "") or None, _vm_name(ts),
             str(ts.resource.labels.get("zone") or "")) for ts in vms}
    ids_of: dict[str, set[str | None]] = {}
    for iid, name, _ in keys:
        ids_of.setdefault(name, set()).add(iid)
    out: dict[tuple[str | None, str, str], str] = {}
    for iid, name, zone in keys:
        if not name:
            out[(iid, name, zone)] = iid or ""
        else:
            out[(iid, name, zone)] = f"{zone}/{name}" if len(ids_of[name]) > 1 and zone else name
    return out


def read_project(client: Any, project: str, start: dt.datetime, end: dt.datetime, calls: Calls, retry: Any,
                 ) -> ProjectResult:
    """VM and GKE-node CPU of one project; an error is kept in the result rather than raised."""
    result = ProjectResult(project)
    what = f"reading CPU of project {project} from Cloud Monitoring"
    try:
        vms = _series(client, _request(project, VM_METRIC, "gce_instance", start, end), calls, retry)
        gke = _series(client, _request(project, GKE_METRIC, "k8s_node", start, end), calls, retry)
    except ProviderError as e:
        result.error = str(e)
        return result
    except Exception as e:  # a thread must not take the other projects down with it
        result.error = str(translate(e, "monitoring", what))
        return result
    clusters: dict[str, str] = {}  # VM name -> cluster
    for ts in gke:
        if ts.resource.labels.get("cluster_name"):
            clusters[str(ts.resource.labels.get("node_name", ""))] = str(ts.resource.labels["cluster_name"])
    vm_names: set[str] = set()
    nodes: set[str] = set()
    named = _vm_nodes(vms)
    for ts in vms:
        labels = ts.resource.labels
        iid = str(labels.get("instance_id") or "") or None
        name = _vm_name(ts)
        node = named.get((iid, name, str(labels.get("zone") or "")), "")
        if not node:
            continue
        vm_names.add(name)
        nodes.add(node)
        cluster = clusters.get(name)
        region = region_of(labels.get("zone"))
        itype = _system_label(ts, "machine_type")
        result.samples += [(t, node, v, cluster, region, itype, iid) for t, v in _points(ts)]
    for ts in gke:
        labels = ts.resource.labels
        node = str(labels.get("node_name") or "")
        if not node or node in vm_names:
            continue
        nodes.add(node)
        cluster, region = labels.get("cluster_name") or None, region_of(labels.get("location"))
        result.samples += [(t, node, v, cluster, region, None, None) for t, v in _points(ts)]
    result.nodes = len(nodes)
    return result


def scan(client: Any, projects: list[str], start: pd.Timestamp, end: pd.Timestamp, now: pd.Timestamp, *,
         calls: Calls, retry: Any, max_workers: int,
         read_one: Callable[..., ProjectResult] = read_project) -> list[ProjectResult]:
    """All projects in parallel over whole hours of [start, end) that have ended by ``now``."""
    lo = pd.Timestamp(start).floor("h")
    hi = min(pd.Timestamp(end), pd.Timestamp(now)).floor("h")
    if not projects or lo >= hi:
        return [ProjectResult(p) for p in projects]
    a, b = lo.to_pydatetime(), hi.to_pydatetime()
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(projects)))) as pool:
        return list(pool.map(lambda p: read_one(client, p, a, b, calls, retry), projects))


def usage_frame(results: list[ProjectResult], start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Samples of every project as costwatch's usage frame (project = project id)."""
    rows = [(t, r.project, node, v, cluster, region, itype, iid)
            for r in results for t, node, v, cluster, region, itype, iid in r.samples]
    if not rows:
        return empty_usage()
    df = pd.DataFrame(rows, columns=["timestamp", "project", "node", "cpu_utilization", "cluster", "region",
                                     "instance_type", "instance_id"])
    df = df[(df["timestamp"] >= pd.Timestamp(start)) & (df["timestamp"] < pd.Timestamp(end))]
    df = df.drop_duplicates(["timestamp", "project", "node"], keep="last")
    df["provider"] = "gcp"
    return normalize_usage(df.sort_values(["project", "node", "timestamp"], kind="stable"))
