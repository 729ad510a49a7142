"""What a cluster's objects say about how far a hijacked pod could run: quotas, limits, security, egress and
miner signs.  Pure: it reads the raw API JSON a ``Snapshot`` holds and makes no calls, so every rule is
testable from fixtures and the same analysis serves ``costwatch run`` (alert evidence) and ``costwatch k8s``.

Rules, and why:

* **Quota status** per namespace over ``requests.cpu``, ``limits.cpu``, ``requests.memory``,
  ``limits.memory`` and ``pods`` (``cpu``/``memory``/``count/pods`` count as their aliases): ``ok`` when an
  unscoped ResourceQuota caps all five, ``partial`` when it caps some (or only scoped quotas exist), ``none``
  otherwise.  A namespace without a CPU cap lets a stolen service-account token start as many miners as the
  nodes (or the autoscaler) allow.
* **Unbounded pod**: a container without a CPU limit, unless a LimitRange gives it a default.  LimitRange
  defaults are applied when a pod is admitted, so a pod created *before* the LimitRange keeps running without
  a limit and is still counted (with that reason).
* **Security**: privileged containers, ``hostPID``/``hostNetwork``/``hostIPC``, and pods with no
  securityContext at all — the ways out of a container onto the node.
* **Egress open**: no NetworkPolicy with an ``Egress`` policy type selects the pod (or one that does allows
  everything with an empty rule), or the pod uses the host network, which NetworkPolicy does not cover; a
  miner needs to reach its pool.
* **Miner signs**: see ``signs``.  Pods in a namespace created within ``recent`` (default 72 h) are flagged
  too: a namespace that did not exist before has no history to look normal against.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from . import signs as sg
from .nodes import NodeIdentity, identify

TRACKED: tuple[str, ...] = ("requests.cpu", "limits.cpu", "requests.memory", "limits.memory", "pods")
QUOTA_ALIASES = {"cpu": "requests.cpu", "memory": "requests.memory", "count/pods": "pods"}
ACTIVE_PHASES = ("Pending", "Running", "Unknown", "")
RECENT = timedelta(hours=72)
UNAVAILABLE = "unavailable"
Usage = dict[str, tuple[float | None, float | None]]  # container name -> (CPU cores, memory bytes) in use

_SUFFIX: dict[str, Decimal] = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": Decimal("1e3"), "M": Decimal("1e6"),
    "G": Decimal("1e9"), "T": Decimal("1e12"), "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40), "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_QTY = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))([eE][+-]?\d{1,3}|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?")


# --------------------------------------------------------------------------------------------- quantities


def quantity(value: object) -> float | None:
    """A Kubernetes quantity (``3500m``, ``7Gi``, ``1.5``, ``1e3``, ``250000n``) as a number of base units
    (cores, bytes); ``None`` for anything else, because one odd object must not stop a cluster's analysis."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    m = _QTY.fullmatch(value.strip())
    if m is None:
        return None
    try:
        num = Decimal(m.group(1))
        suffix = m.group(2) or ""
        num = Decimal(m.group(1) + suffix) if suffix[:1] in ("e", "E") else num * _SUFFIX.get(suffix, Decimal(1))
    except InvalidOperation:
        return None
    return float(num)


def format_cpu(cores: float) -> str:
    """``4``, ``2500m``: whole cores when exact, millicores otherwise (never a float Kubernetes would round)."""
    milli = max(0, math.ceil(round(cores * 1000, 6)))
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def format_memory(size: float) -> str:
    """``7Gi``, ``512Mi``: the largest binary unit that divides the value."""
    n = max(0, math.ceil(size))
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        unit = int(_SUFFIX[suffix])
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def timestamp(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def age(delta: timedelta) -> str:
    secs = max(0, int(delta.total_seconds()))
    if secs < 3600:
        return f"{secs // 60}m"
    if secs < 172_800:
        return f"{secs // 3600}h"
    return f"{secs // 86_400}d"


# --------------------------------------------------------------------------------------------- raw snapshot


@dataclass
class Snapshot:
    """What was read from one cluster, as raw API JSON items; filled by ``client``, read by ``analyze``."""

    namespaces: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    quotas: list[dict[str, Any]] = field(default_factory=list)
    limitranges: list[dict[str, Any]] = field(default_factory=list)
    netpols: list[dict[str, Any]] = field(default_factory=list)
    node_metrics: list[dict[str, Any]] | None = None   # None: metrics.k8s.io not served or not readable
    pod_metrics: list[dict[str, Any]] | None = None
    forbidden: dict[str, list[str]] = field(default_factory=dict)   # namespace -> resources not listable
    notes: list[str] = field(default_factory=list)
    read_at: datetime = field(default_factory=lambda: datetime.now(UTC))


# --------------------------------------------------------------------------------------------- views


@dataclass
class ContainerView:
    name: str
    image: str
    kind: str  # "container", "init", "ephemeral"
    cpu_request: float | None
    cpu_limit: float | None
    memory_request: float | None
    memory_limit: float | None
    cpu_used: float | None = None
    memory_used: float | None = None


@dataclass
class PodView:
    namespace: str
    name: str
    node: str | None
    phase: str
    created: datetime | None
    containers: list[ContainerView]
    unbounded: bool = False
    unbounded_why: str = ""
    security: list[str] = field(default_factory=list)
    egress_open: bool = True
    signs: list[sg.Sign] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    @property
    def reasons(self) -> list[str]:
        return [s.text for s in self.signs]

    @property
    def mining(self) -> bool:
        """A sign that names mining itself (a miner, a stratum URL, a pool), not just an unusual image or
        namespace: such a pod's usage is the miner's, never a baseline to size anything from."""
        return any(s.weight >= sg.MINING_WEIGHT for s in self.signs)

    @property
    def score(self) -> int:
        return sum(s.weight for s in self.signs)

    @property
    def image(self) -> str:
        """The image worth showing: the first one with a sign of its own, else the first app container's."""
        for c in self.containers:
            if sg.image_signs(c.image, ()):
                return c.image
        app = [c for c in self.containers if c.kind == "container"] or self.containers
        return app[0].image if app else ""

    @property
    def cpu_used(self) -> float | None:
        used = [c.cpu_used for c in self.containers if c.cpu_used is not None]
        return sum(used) if used else None

    @property
    def memory_used(self) -> float | None:
        used = [c.memory_used for c in self.containers if c.memory_used is not None]
        return sum(used) if used else None

    def effective(self, attr: str) -> float:
        """Pod-level request/limit the way the scheduler counts it: max(sum of app containers, largest init)."""
        app = init = 0.0
        for c in self.containers:
            v = getattr(c, attr) or 0.0
            if c.kind == "container":
                app += v
            elif c.kind == "init":
                init = max(init, v)
        return max(app, init)


@dataclass
class NamespacePosture:
    name: str
    created: datetime | None = None
    forbidden: list[str] = field(default_factory=list)
    pods: int = 0
    quota_hard: dict[str, float] = field(default_factory=dict)
    quota_used: dict[str, float] = field(default_factory=dict)
    scoped_quotas: int = 0
    limit_defaults: dict[str, float] = field(default_factory=dict)  # cpu, memory, cpu_request, memory_request
    unbounded_pods: int = 0
    privileged_pods: int = 0
    host_namespace_pods: int = 0
    no_security_context_pods: int = 0
    network_policies: int = 0
    egress_open_pods: int = 0
    suspicious_pods: int = 0
    cpu_requests: float = 0.0
    memory_requests: float = 0.0
    cpu_used: float | None = None
    memory_used: float | None = None
    notes: list[str] = field(default_factory=list)
    suggestions: list[dict[str, Any]] = field(default_factory=list)   # filled by ``suggest.suggest_all``

    @property
    def system(self) -> bool:
        return self.name.startswith("kube-")

    @property
    def quota_status(self) -> str:
        if "resourcequotas" in self.forbidden:
            return "unknown"
        covered = [r for r in TRACKED if r in self.quota_hard]
        if len(covered) == len(TRACKED):
            return "ok"
        return "partial" if covered or self.scoped_quotas else "none"

    @property
    def at_quota(self) -> list[str]:
        return [r for r in TRACKED if r in self.quota_hard and self.quota_used.get(r, 0.0) >= self.quota_hard[r] > 0]


@dataclass
class NodeView:
    identity: NodeIdentity
    cpu_allocatable: float | None = None
    memory_allocatable: float | None = None
    pods_allocatable: float | None = None
    cpu_used: float | None = None
    pods: int = 0

    @property
    def name(self) -> str:
        return self.identity.name


@dataclass
class ClusterContext:
    """One cluster as costwatch saw it on this run; ``status`` is ``ok`` or ``unavailable: <reason>``."""

    name: str
    project: str | None = None
    status: str = "ok"
    nodes: list[NodeView] = field(default_factory=list)
    namespaces: list[NamespacePosture] = field(default_factory=list)
    pods: list[PodView] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    metrics: bool = False
    read_at: datetime | None = None

    @classmethod
    def unavailable(cls, name: str, project: str | None, reason: str) -> ClusterContext:
        return cls(name=name, project=project, status=f"{UNAVAILABLE}: {sg.clean(reason, 300)}")

    @property
    def available(self) -> bool:
        return self.status == "ok"

    def node(self, alert_node: str) -> NodeView | None:
        """The node an alert's node id (instance id, name, …) refers to; see ``nodes`` for the mapping."""
        key = alert_node.strip().lower()
        return next((n for n in self.nodes if key in n.identity.aliases), None)

    def suspicious(self) -> list[PodView]:
        return sorted((p for p in self.pods if p.signs), key=lambda p: (-p.score, p.namespace, p.name))

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``costwatch k8s --format json``; free text is cleaned, lists are complete."""
        return {
            "cluster": self.name, "project": self.project, "status": self.status,
            "read_at": self.read_at.strftime("%Y-%m-%dT%H:%M:%SZ") if self.read_at else None,
            "metrics": self.metrics, "notes": self.notes,
            "nodes": [{"name": n.name, "cloud": n.identity.cloud, "instance": n.identity.instance,
                       "cpu_allocatable": n.cpu_allocatable, "cpu_used": _r(n.cpu_used), "pods": n.pods}
                      for n in self.nodes],
            "namespaces": [_ns_dict(ns) for ns in self.namespaces],
            "suspicious_pods": [pod_dict(p) for p in self.suspicious()],
            "unbounded_pods": [pod_dict(p) for p in self.pods if p.unbounded and p.active],
        }


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def pod_dict(p: PodView, reasons: list[str] | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"namespace": p.namespace, "name": p.name, "image": sg.clean(p.image, 120),
                         "node": p.node, "cpu": _r(p.cpu_used)}
    if p.signs or reasons:
        d["reasons"] = reasons if reasons is not None else p.reasons
    if p.unbounded:
        d["unbounded"] = p.unbounded_why
    if p.security:
        d["security"] = p.security
    return d


def _ns_dict(ns: NamespacePosture) -> dict[str, Any]:
    return {
        "namespace": ns.name, "quota": ns.quota_status, "pods": ns.pods,
        "quota_hard": {k: _r(v) for k, v in ns.quota_hard.items()},
        "quota_used": {k: _r(v) for k, v in ns.quota_used.items()}, "at_quota": ns.at_quota,
        "limit_defaults": ns.limit_defaults, "unbounded_pods": ns.unbounded_pods,
        "privileged_pods": ns.privileged_pods, "host_namespace_pods": ns.host_namespace_pods,
        "no_security_context_pods": ns.no_security_context_pods, "network_policies": ns.network_policies,
        "egress_open_pods": ns.egress_open_pods, "suspicious_pods": ns.suspicious_pods,
        "cpu_requests": _r(ns.cpu_requests), "cpu_used": _r(ns.cpu_used),
        "memory_requests": _r(ns.memory_requests, 0), "memory_used": _r(ns.memory_used, 0),
        "forbidden": ns.forbidden, "notes": ns.notes, "suggestions": ns.suggestions,
    }


# --------------------------------------------------------------------------------------------- analysis


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A label selector against labels; ``{}`` selects everything, an unknown operator selects nothing."""
    if not isinstance(selector, dict):
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        ok = {"In": key in labels and labels.get(key) in values,
              "NotIn": not (key in labels and labels.get(key) in values),
              "Exists": key in labels, "DoesNotExist": key not in labels}.get(op, False)
        if not ok:
            return False
    return True


def _restricts_egress(policy: dict[str, Any]) -> bool:
    spec = policy.get("spec") or {}
    types = spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))
    if "Egress" not in types:
        return False
    return not any(isinstance(rule, dict) and not rule.get("to") and not rule.get("ports")
                   for rule in spec.get("egress") or [])


def _containers(pod: dict[str, Any], usage: Usage) -> list[ContainerView]:
    spec = pod.get("spec") or {}
    out = []
    for kind, key in (("container", "containers"), ("init", "initContainers"), ("ephemeral", "ephemeralContainers")):
        for c in spec.get(key) or []:
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            name = str(c.get("name") or "")
            cpu_used, mem_used = usage.get(name, (None, None))
            out.append(ContainerView(name=name, image=str(c.get("image") or ""), kind=kind,
                                     cpu_request=quantity(req.get("cpu")), cpu_limit=quantity(lim.get("cpu")),
                                     memory_request=quantity(req.get("memory")),
                                     memory_limit=quantity(lim.get("memory")),
                                     cpu_used=cpu_used, memory_used=mem_used))
    return out


def _security(spec: dict[str, Any]) -> list[str]:
    out = []
    all_containers = [c for key in ("containers", "initContainers", "ephemeralContainers")
                      for c in spec.get(key) or []]
    priv = [str(c.get("name") or "?") for c in all_containers if (c.get("securityContext") or {}).get("privileged")]
    if priv:
        out.append("privileged: " + ", ".join(priv[:3]) + (f" (+{len(priv) - 3})" if len(priv) > 3 else ""))
    out += [flag for flag in ("hostPID", "hostNetwork", "hostIPC") if spec.get(flag)]
    if not spec.get("securityContext") and not any(c.get("securityContext") for c in all_containers):
        out.append("no securityContext")
    return out


def _pod_signs(pod_spec: dict[str, Any], allowlist: list[str]) -> list[sg.Sign]:
    found: list[sg.Sign] = []
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for c in pod_spec.get(key) or []:
            found += sg.image_signs(str(c.get("image") or ""), allowlist)
            found += sg.text_signs([str(x) for x in (c.get("command") or []) + (c.get("args") or [])], "command")
            found += sg.text_signs([str(e.get("value")) for e in c.get("env") or []
                                    if isinstance(e, dict) and e.get("value")], "env")
    return found


def _metrics_by_pod(items: list[dict[str, Any]] | None) -> dict[tuple[str, str], Usage]:
    out: dict[tuple[str, str], Usage] = {}
    for m in items or []:
        meta = m.get("metadata") or {}
        out[(str(meta.get("namespace") or ""), str(meta.get("name") or ""))] = {
            str(c.get("name") or ""): (quantity((c.get("usage") or {}).get("cpu")),
                                       quantity((c.get("usage") or {}).get("memory")))
            for c in m.get("containers") or []}
    return out


def _quota_into(ns: NamespacePosture, quota: dict[str, Any]) -> None:
    spec, status = quota.get("spec") or {}, quota.get("status") or {}
    if spec.get("scopes") or spec.get("scopeSelector"):
        ns.scoped_quotas += 1
        return
    hard, used = spec.get("hard") or status.get("hard") or {}, status.get("used") or {}
    for key, raw in hard.items():
        res = QUOTA_ALIASES.get(key, key)
        value = quantity(raw)
        if res not in TRACKED or value is None:
            continue
        if res not in ns.quota_hard or value < ns.quota_hard[res]:  # the tightest quota is the one that bites
            ns.quota_hard[res] = value
            u = quantity(used.get(key))
            if u is not None:
                ns.quota_used[res] = u


def _limit_defaults(items: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, datetime | None]]:
    defaults: dict[str, float] = {}
    since: dict[str, datetime | None] = {}
    for lr in sorted(items, key=lambda x: str((x.get("metadata") or {}).get("creationTimestamp") or "")):
        created = timestamp((lr.get("metadata") or {}).get("creationTimestamp"))
        for limit in (lr.get("spec") or {}).get("limits") or []:
            if limit.get("type", "Container") != "Container":
                continue
            for src, prefix in (("default", ""), ("defaultRequest", "_request")):
                for res in ("cpu", "memory"):
                    v = quantity((limit.get(src) or {}).get(res))
                    if v is not None and f"{res}{prefix}" not in defaults:
                        defaults[f"{res}{prefix}"] = v
                        since[f"{res}{prefix}"] = created
    return defaults, since


def analyze(snap: Snapshot, name: str, project: str | None = None, *, allowlist: list[str] | None = None,
            now: datetime | None = None, recent: timedelta = RECENT) -> ClusterContext:
    """Turn one cluster's snapshot into its context: per-node, per-namespace and per-pod findings."""
    now = now or snap.read_at
    allow = list(allowlist or [])
    ctx = ClusterContext(name=name, project=project, read_at=snap.read_at, notes=list(snap.notes),
                         metrics=snap.pod_metrics is not None or snap.node_metrics is not None)
    node_usage = {str((m.get("metadata") or {}).get("name") or ""): quantity((m.get("usage") or {}).get("cpu"))
                  for m in snap.node_metrics or []}
    for n in snap.nodes:
        ident = identify(n)
        alloc = (n.get("status") or {}).get("allocatable") or {}
        ctx.nodes.append(NodeView(ident, cpu_allocatable=quantity(alloc.get("cpu")),
                                  memory_allocatable=quantity(alloc.get("memory")),
                                  pods_allocatable=quantity(alloc.get("pods")), cpu_used=node_usage.get(ident.name)))
    by_node = {n.name: n for n in ctx.nodes}

    spaces: dict[str, NamespacePosture] = {}
    for item in snap.namespaces:
        meta = item.get("metadata") or {}
        ns_name = str(meta.get("name") or "")
        spaces[ns_name] = NamespacePosture(ns_name, created=timestamp(meta.get("creationTimestamp")))
    by_ns: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for kind, items in (("quotas", snap.quotas), ("limitranges", snap.limitranges), ("netpols", snap.netpols),
                        ("pods", snap.pods)):
        for item in items:
            ns_name = str((item.get("metadata") or {}).get("namespace") or "")
            by_ns[ns_name][kind].append(item)
            spaces.setdefault(ns_name, NamespacePosture(ns_name))
    for ns_name, resources in snap.forbidden.items():
        spaces.setdefault(ns_name, NamespacePosture(ns_name)).forbidden = sorted(set(resources))

    usage = _metrics_by_pod(snap.pod_metrics)
    for ns in spaces.values():
        objs = by_ns.get(ns.name, {})
        for q in objs.get("quotas", []):
            _quota_into(ns, q)
        ns.limit_defaults, lr_since = _limit_defaults(objs.get("limitranges", []))
        policies = [p for p in objs.get("netpols", []) if _restricts_egress(p)]
        ns.network_policies = len(objs.get("netpols", []))
        predating = 0
        for raw in objs.get("pods", []):
            pod = _pod(raw, ns, usage, policies, lr_since, allow, now, recent)
            ctx.pods.append(pod)
            if pod.signs:
                ns.suspicious_pods += 1
            if not pod.active:
                continue
            predating += pod.unbounded_why.startswith("created before")
            ns.pods += 1
            ns.unbounded_pods += pod.unbounded
            ns.privileged_pods += any(s.startswith("privileged") for s in pod.security)
            ns.host_namespace_pods += any(s.startswith("host") for s in pod.security)
            ns.no_security_context_pods += "no securityContext" in pod.security
            ns.egress_open_pods += pod.egress_open
            ns.cpu_requests += pod.effective("cpu_request")
            ns.memory_requests += pod.effective("memory_request")
            if pod.cpu_used is not None:
                ns.cpu_used = (ns.cpu_used or 0.0) + pod.cpu_used
            if pod.memory_used is not None:
                ns.memory_used = (ns.memory_used or 0.0) + pod.memory_used
            if pod.node in by_node:
                by_node[pod.node].pods += 1
        if predating:
            ns.notes.append(f"{predating} pod(s) predate the LimitRange and run without a CPU limit until restarted")
    ctx.namespaces = sorted(spaces.values(), key=lambda s: s.name)
    ctx.notes += _forbidden_notes(snap.forbidden, len(spaces))
    return ctx


def _pod(raw: dict[str, Any], ns: NamespacePosture, usage: dict[tuple[str, str], Usage],
         policies: list[dict[str, Any]], lr_since: dict[str, datetime | None], allow: list[str], now: datetime,
         recent: timedelta) -> PodView:
    meta, spec = raw.get("metadata") or {}, raw.get("spec") or {}
    name = str(meta.get("name") or "")
    created = timestamp(meta.get("creationTimestamp"))
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    pod = PodView(namespace=ns.name, name=name, node=spec.get("nodeName"),
                  phase=str((raw.get("status") or {}).get("phase") or ""), created=created,
                  containers=_containers(raw, usage.get((ns.name, name), {})))
    no_limit = [c for c in pod.containers if c.kind != "ephemeral" and c.cpu_limit is None]
    if no_limit:
        default_since = lr_since.get("cpu")
        if "cpu" not in ns.limit_defaults:
            pod.unbounded, pod.unbounded_why = True, "no CPU limit"
        elif created is not None and default_since is not None and created < default_since:
            pod.unbounded, pod.unbounded_why = True, "created before the LimitRange default"
    pod.security = _security(spec)
    # NetworkPolicy does not apply to host-network pods: their egress is the node's
    pod.egress_open = bool(spec.get("hostNetwork")) or not any(
        selects((p.get("spec") or {}).get("podSelector"), labels) for p in policies)
    found = _pod_signs(spec, allow)
    if ns.created is not None and now - ns.created <= recent and (created is None or created >= ns.created):
        found.append(sg.Sign(f"new namespace (created {age(now - ns.created)} ago)", 1))
    pod.signs = sg.dedupe(found)
    if pod.signs and pod.security and pod.score >= 2:
        pod.signs += [sg.Sign(s, 0) for s in pod.security if s != "no securityContext"]
    return pod


def _forbidden_notes(forbidden: dict[str, list[str]], total: int) -> list[str]:
    """One line per set of resources not readable, naming the namespaces (capped)."""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for ns_name, listed in sorted(forbidden.items()):
        groups[tuple(sorted(set(listed)))].append(ns_name)
    out = []
    for resources, names in groups.items():
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        where = "any namespace" if len(names) == total > 1 else f"namespace(s) {shown}"
        out.append(f"forbidden (HTTP 403) to list {', '.join(resources)} in {where}; not analysed there: "
                   "grant get/list (see deploy/kubernetes/rbac.yaml)")
    return out


__all__ = ["ACTIVE_PHASES", "TRACKED", "ClusterContext", "ContainerView", "NamespacePosture", "NodeView",
           "PodView", "Snapshot", "analyze", "format_cpu", "format_memory", "pod_dict", "quantity", "selects",
           "timestamp"]
