"""Ready-to-apply ResourceQuota and LimitRange manifests for namespaces without them, sized from what the
namespace uses now, so the advice is "apply this" rather than "consider adding quotas".

Sizing (one snapshot, so "observed" means now; review against your own peaks before applying):

* CPU and memory basis = the higher of the namespace's summed requests and its metrics-server usage (requests
  alone when metrics-server is missing).  A quota below current requests would block the next rollout.
* ``requests.*`` = 2 × basis; ``limits.*`` = 2 × the higher of summed limits (containers without one counted
  at the suggested default) and usage — and never below ``requests.*``.  CPU rounds up to 0.5 core (floor
  1 core), memory to 256 MiB (floor 1 GiB).  ``limits.cpu`` is the cap that bounds a miner: requests only
  decide scheduling, limits decide how many cores a namespace can burn.
* ``pods`` = 2 × the running pods, rounded up to 5, floor 10.
* LimitRange container defaults: limit = 2 × the largest container's basis (CPU in 100m steps, floor 500m;
  memory in 256Mi steps, floor 256Mi), request = the median container's basis (floor 100m / 128Mi), never
  above the limit.  With a quota on ``limits.cpu``
  a pod without limits is rejected; the LimitRange gives it the default instead.
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .posture import NamespacePosture, PodView

FACTOR = 2.0
NAME = "costwatch-suggested"
GiB, MiB = 2**30, 2**20


def _up(value: float, step: float, floor: float) -> float:
    return max(floor, math.ceil(round(value / step, 6)) * step)


def _basis(pods: list[PodView], request: str, used: str) -> float:
    req = sum(p.effective(request) for p in pods)
    use = sum(getattr(p, used) or 0.0 for p in pods)
    return max(req, use)


def container_defaults(pods: list[PodView]) -> dict[str, float]:
    """Per-container default limit and request for CPU (cores) and memory (bytes)."""
    apps = [c for p in pods for c in p.containers if c.kind == "container"]
    cpu = [max(c.cpu_request or 0.0, c.cpu_used or 0.0) for c in apps] or [0.0]
    mem = [max(c.memory_request or 0.0, c.memory_used or 0.0) for c in apps] or [0.0]
    cpu_limit = _up(FACTOR * max(cpu), 0.1, 0.5)
    mem_limit = _up(FACTOR * max(mem), 256 * MiB, 256 * MiB)
    return {"cpu": cpu_limit, "memory": mem_limit,
            "cpu_request": min(cpu_limit, _up(statistics.median(cpu), 0.05, 0.1)),
            "memory_request": min(mem_limit, _up(statistics.median(mem), 64 * MiB, 128 * MiB))}


def quota_hard(ns: NamespacePosture, pods: list[PodView]) -> dict[str, float]:
    """The five tracked quota values, in cores, bytes and pods."""
    defaults = {**container_defaults(pods), **ns.limit_defaults}

    def limits(attr: str, default: float, used: str) -> float:
        total = 0.0
        for p in pods:
            app = sum(getattr(c, attr) if getattr(c, attr) is not None else default
                      for c in p.containers if c.kind == "container")
            total += max(app, getattr(p, used) or 0.0)
        return total

    req_cpu = _up(FACTOR * _basis(pods, "cpu_request", "cpu_used"), 0.5, 1.0)
    req_mem = _up(FACTOR * _basis(pods, "memory_request", "memory_used"), 256 * MiB, GiB)
    return {
        "requests.cpu": req_cpu,
        "limits.cpu": max(req_cpu, _up(FACTOR * limits("cpu_limit", defaults["cpu"], "cpu_used"), 0.5, 1.0)),
        "requests.memory": req_mem,
        "limits.memory": max(req_mem, _up(FACTOR * limits("memory_limit", defaults["memory"], "memory_used"),
                                          256 * MiB, GiB)),
        "pods": float(max(10, math.ceil(FACTOR * len(pods) / 5) * 5)),
    }


def suggest(ns: NamespacePosture, pods: list[PodView], *, metrics: bool) -> list[dict[str, Any]]:
    """Manifests for what the namespace lacks: a ResourceQuota (only the missing resources when it has a
    partial one) and a LimitRange when it has no CPU or memory default."""
    from .posture import TRACKED, format_cpu, format_memory

    fmt = {"requests.cpu": format_cpu, "limits.cpu": format_cpu, "requests.memory": format_memory,
           "limits.memory": format_memory, "pods": lambda v: str(int(v))}
    basis = ("2x the higher of requests and metrics-server usage" if metrics
             else "2x requests (metrics-server not available)")

    def meta() -> dict[str, Any]:  # a fresh dict each time: a shared one would dump as a YAML alias
        return {"name": NAME, "namespace": ns.name, "annotations": {"costwatch/sized-from": basis}}

    out: list[dict[str, Any]] = []
    status = ns.quota_status
    if status in ("none", "partial"):
        hard = quota_hard(ns, pods)
        missing = [r for r in TRACKED if r not in ns.quota_hard]
        if missing:
            out.append({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": meta(),
                        "spec": {"hard": {r: fmt[r](hard[r]) for r in missing}}})
    if "cpu" not in ns.limit_defaults or "memory" not in ns.limit_defaults:
        d = container_defaults(pods)
        out.append({"apiVersion": "v1", "kind": "LimitRange", "metadata": meta(), "spec": {"limits": [{
            "type": "Container",
            "default": {"cpu": format_cpu(d["cpu"]), "memory": format_memory(d["memory"])},
            "defaultRequest": {"cpu": format_cpu(d["cpu_request"]), "memory": format_memory(d["memory_request"])},
        }]}})
    return out


__all__ = ["NAME", "container_defaults", "quota_hard", "suggest"]
