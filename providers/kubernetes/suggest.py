"""Ready-to-apply ResourceQuota and LimitRange manifests for namespaces without them, sized from what the
namespace's *legitimate* pods use now, so the advice is "apply this" rather than "consider adding quotas".

A quota sized from everything a namespace runs would, in the namespace that most needs one, be sized from
the miners (issue 15: ``ml-sandbox`` was offered 22.5 cores of requests on an 11.8-core cluster).  So:

* **Legitimate pods** are the namespace's active pods less those with a sign that names mining
  (``PodView.mining``: a miner program or image, a stratum URL, a pool host, port or option) and less every
  pod on a *flagged node* (a node running such a pod: its neighbours' usage is shared with, or hidden by, the
  miner).  One snapshot has no usage history, so "before the episode" means: when the namespace has pods
  created before the first miner-looking pod of the cluster started, only those count.
* CPU and memory basis = the higher of the legitimate pods' summed requests and their metrics-server usage
  (requests alone when metrics-server is missing).  ``requests.*`` = 2 × basis; ``limits.*`` = 2 × the
  higher of summed limits (containers without one counted at the suggested default) and usage, never below
  ``requests.*``.  CPU rounds up to 0.5 core (floor 1 core), memory to 256 MiB (floor 1 GiB); ``pods`` = 2 ×
  the legitimate pods, rounded up to 5, floor 10.  A namespace whose pods all look like miners gets the floors.
* **Cap**: no value exceeds ``CLUSTER_SHARE`` (half) of what the cluster's nodes can allocate (sum of
  ``status.allocatable``), unless the legitimate pods already need more (a quota below what runs would
  block the next rollout).  With the node list unreadable the cap is unknown and the annotation says so.
* LimitRange container defaults: limit = 2 × the largest legitimate container's basis (CPU in 100m steps,
  floor 500m; memory in 256Mi steps, floor 256Mi; capped like the quota), request = the median container's
  basis (floor 100m / 128Mi), never above the limit.  With a quota on ``limits.cpu`` a pod without limits is
  rejected; the LimitRange gives it the default instead.
* Namespaces with no active pod get nothing: there is nothing to size from, and nothing running to stop.

``suggest_all(ctx)`` fills ``NamespacePosture.suggestions``; ``posture`` knows nothing of this module.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .posture import TRACKED, ClusterContext, NamespacePosture, PodView, format_cpu, format_memory

FACTOR = 2.0
CLUSTER_SHARE = 0.5   # a suggested namespace quota stays under this share of the cluster's allocatable
NAME = "costwatch-suggested"
GiB, MiB = 2**30, 2**20
_QUOTA_STEP = {"cpu": (0.5, 1.0), "memory": (256 * MiB, GiB), "pods": (5.0, 10.0)}   # (step, floor)
_ALLOCATABLE = {"cpu": "cpu_allocatable", "memory": "memory_allocatable", "pods": "pods_allocatable"}


@dataclass(frozen=True)
class Basis:
    """What one namespace's suggestion is sized from: its legitimate pods and the cluster's ceiling."""

    pods: list[PodView]
    left_out: int = 0
    caps: dict[str, float] = field(default_factory=dict)   # cpu, memory, pods; a missing key means unknown
    metrics: bool = True


def _up(value: float, step: float, floor: float) -> float:
    return max(floor, math.ceil(round(value / step, 6)) * step)


def _bounded(value: float, need: float, cap: float | None, step: float, floor: float) -> float:
    """``value`` rounded up, but above the cap only as far as ``need`` (what already runs) requires."""
    rounded = _up(value, step, floor)
    if cap is None:
        return rounded
    return min(rounded, max(math.floor(round(cap / step, 6)) * step, _up(need, step, floor)))


def cluster_caps(ctx: ClusterContext) -> dict[str, float]:
    """``CLUSTER_SHARE`` of the summed node allocatable per resource; left out when any node lacks it."""
    out = {}
    for key, attr in _ALLOCATABLE.items():
        values = [getattr(n, attr) for n in ctx.nodes]
        if values and all(v is not None for v in values):
            out[key] = CLUSTER_SHARE * sum(values)
    return out


def legitimate(pods: list[PodView], flagged: set[str], episode: datetime | None) -> list[PodView]:
    """Pods whose usage may size a quota (see the module docstring); ``pods`` are one namespace's active pods."""
    kept = [p for p in pods if not p.mining and p.node not in flagged]
    before = [p for p in kept if episode is not None and p.created is not None and p.created < episode]
    return before or kept


def _basis(pods: list[PodView], request: str, used: str) -> float:
    req = sum(p.effective(request) for p in pods)
    use = sum(getattr(p, used) or 0.0 for p in pods)
    return max(req, use)


def _limits(pods: list[PodView], attr: str, default: float, used: str) -> float:
    total = 0.0
    for p in pods:
        app = sum(getattr(c, attr) if getattr(c, attr) is not None else default
                  for c in p.containers if c.kind == "container")
        total += max(app, getattr(p, used) or 0.0)
    return total


def container_defaults(pods: list[PodView], caps: dict[str, float] | None = None) -> dict[str, float]:
    """Per-container default limit and request for CPU (cores) and memory (bytes)."""
    caps = caps or {}
    apps = [c for p in pods for c in p.containers if c.kind == "container"]
    cpu = [max(c.cpu_request or 0.0, c.cpu_used or 0.0) for c in apps] or [0.0]
    mem = [max(c.memory_request or 0.0, c.memory_used or 0.0) for c in apps] or [0.0]
    cpu_limit = _bounded(FACTOR * max(cpu), max(cpu), caps.get("cpu"), 0.1, 0.5)
    mem_limit = _bounded(FACTOR * max(mem), max(mem), caps.get("memory"), 256 * MiB, 256 * MiB)
    return {"cpu": cpu_limit, "memory": mem_limit,
            "cpu_request": min(cpu_limit, _up(statistics.median(cpu), 0.05, 0.1)),
            "memory_request": min(mem_limit, _up(statistics.median(mem), 64 * MiB, 128 * MiB))}


def quota_hard(ns: NamespacePosture, basis: Basis) -> dict[str, float]:
    """The five tracked quota values, in cores, bytes and pods."""
    pods, caps = basis.pods, basis.caps
    defaults = {**container_defaults(pods, caps), **ns.limit_defaults}
    out: dict[str, float] = {}
    for res in ("cpu", "memory"):
        step, floor = _QUOTA_STEP[res]
        need = _basis(pods, f"{res}_request", f"{res}_used")
        out[f"requests.{res}"] = _bounded(FACTOR * need, need, caps.get(res), step, floor)
        limits = _limits(pods, f"{res}_limit", defaults[res], f"{res}_used")
        set_limits = _limits(pods, f"{res}_limit", 0.0, f"{res}_used")   # what running pods already declare
        out[f"limits.{res}"] = max(out[f"requests.{res}"],
                                   _bounded(FACTOR * limits, set_limits, caps.get(res), step, floor))
    out["pods"] = _bounded(FACTOR * len(pods), len(pods), caps.get("pods"), *_QUOTA_STEP["pods"])
    return out


def sized_from(basis: Basis) -> str:
    """The ``costwatch/sized-from`` annotation: what the numbers came from, so a reviewer can check them."""
    what = (f"{FACTOR:g}x the higher of requests and metrics-server usage" if basis.metrics
            else f"{FACTOR:g}x requests (metrics-server not available)")
    text = f"{what} of {len(basis.pods)} pod(s)"
    if basis.left_out:
        text += f", {basis.left_out} left out (miner signs, or on a node running a miner)"
    if basis.caps:
        return text + f"; capped at {CLUSTER_SHARE:.0%} of the cluster's allocatable"
    return text + "; not capped (node allocatable unknown)"


def suggest(ns: NamespacePosture, basis: Basis) -> list[dict[str, Any]]:
    """Manifests for what the namespace lacks: a ResourceQuota (only the missing resources when it has a
    partial one) and a LimitRange when it has no CPU or memory default."""
    fmt = {"requests.cpu": format_cpu, "limits.cpu": format_cpu, "requests.memory": format_memory,
           "limits.memory": format_memory, "pods": lambda v: str(int(v))}
    note = sized_from(basis)

    def meta() -> dict[str, Any]:  # a fresh dict each time: a shared one would dump as a YAML alias
        return {"name": NAME, "namespace": ns.name, "annotations": {"costwatch/sized-from": note}}

    out: list[dict[str, Any]] = []
    if ns.quota_status in ("none", "partial"):
        hard = quota_hard(ns, basis)
        missing = [r for r in TRACKED if r not in ns.quota_hard]
        if missing:
            out.append({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": meta(),
                        "spec": {"hard": {r: fmt[r](hard[r]) for r in missing}}})
    if "cpu" not in ns.limit_defaults or "memory" not in ns.limit_defaults:
        d = container_defaults(basis.pods, basis.caps)
        out.append({"apiVersion": "v1", "kind": "LimitRange", "metadata": meta(), "spec": {"limits": [{
            "type": "Container",
            "default": {"cpu": format_cpu(d["cpu"]), "memory": format_memory(d["memory"])},
            "defaultRequest": {"cpu": format_cpu(d["cpu_request"]), "memory": format_memory(d["memory_request"])},
        }]}})
    return out


def suggest_all(ctx: ClusterContext) -> None:
    """Fill ``suggestions`` of every namespace that runs pods and was fully read (system namespaces aside)."""
    flagged = {p.node for p in ctx.pods if p.mining and p.active and p.node}
    episode = min((p.created for p in ctx.pods if p.mining and p.created is not None), default=None)
    caps = cluster_caps(ctx)
    active: dict[str, list[PodView]] = defaultdict(list)
    for p in ctx.pods:
        if p.active:
            active[p.namespace].append(p)
    for ns in ctx.namespaces:
        pods = active.get(ns.name, [])
        if ns.system or ns.forbidden or not pods:
            continue
        kept = legitimate(pods, flagged, episode)
        ns.suggestions = suggest(ns, Basis(kept, len(pods) - len(kept), caps, ctx.metrics))


__all__ = ["CLUSTER_SHARE", "NAME", "Basis", "cluster_caps", "container_defaults", "legitimate", "quota_hard",
           "sized_from", "suggest", "suggest_all"]
