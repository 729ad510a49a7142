"""Join cluster contexts to alerts: ``alert.evidence["kubernetes"]`` says which pods run on the flagged nodes,
which of them look like miners, and whether anything (quota, limit) stopped them from taking more.

An alert matches a cluster, strongest first, when one of its nodes (``evidence.nodes[].node``, GuardDuty
``finding_nodes``) is a node of the cluster (see ``nodes`` for the instance-id mapping), when it names the
cluster (``evidence.clusters`` or a node's ``cluster``, compared with the configured ``name``), or when its
project is the cluster's configured ``project``.  The best match is the evidence; other matches are listed
under ``also``.  An unavailable cluster still matches by name or project, so the alert says "unavailable:
<reason>" instead of silently lacking context.

The evidence is rendered in Slack and email, so every list is capped at ``MAX_ITEMS`` with the rest counted
in ``more``, and free text (images, reasons) is cleaned and shortened.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from costwatch.alerts import Alert
from costwatch.mining_score import rescore

from .posture import ClusterContext, NodeView, PodView, age, pod_dict
from .signs import clean

MAX_ITEMS = 10
MAX_TOP = 5
NEAR_BEFORE = timedelta(hours=3)   # a pod started this long before a CPU plateau began is named as its likely cause
NEAR_AFTER = timedelta(hours=1)
_QUOTA_ORDER = {"none": 0, "unknown": 1, "partial": 2, "ok": 3}


def alert_nodes(alert: Alert) -> list[str]:
    """Node ids an alert names: CPU-plateau nodes and cloud security finding nodes."""
    ev = alert.evidence or {}
    out = [str(n.get("node")) for n in ev.get("nodes") or [] if isinstance(n, dict) and n.get("node")]
    out += [str(n) for n in ev.get("nodes") or [] if isinstance(n, str) and n]
    out += [str(n) for n in ev.get("finding_nodes") or [] if isinstance(n, str | int) and str(n)]
    out += [str(g.get("node")) for g in ev.get("guardduty") or [] if isinstance(g, dict) and g.get("node")]
    return list(dict.fromkeys(out))


def alert_clusters(alert: Alert) -> set[str]:
    ev = alert.evidence or {}
    names = {str(c).lower() for c in ev.get("clusters") or [] if isinstance(c, str) and c}
    for key in ("nodes", "guardduty"):
        names |= {str(n["cluster"]).lower() for n in ev.get(key) or [] if isinstance(n, dict) and n.get("cluster")}
    return names


def _match(alert: Alert, ctx: ClusterContext) -> tuple[int, list[tuple[str, NodeView]]]:
    """(strength, matched nodes): 3 by node, 2 by cluster name, 1 by project, 0 none."""
    matched = [(n, nv) for n in alert_nodes(alert) if (nv := ctx.node(n)) is not None]
    if matched:
        return 3, matched
    if ctx.name.lower() in alert_clusters(alert):
        return 2, []
    if ctx.project and str(ctx.project) == str(alert.project):
        return 1, []
    return 0, []


def attach(alerts: list[Alert], contexts: list[ClusterContext]) -> None:
    """Add ``evidence["kubernetes"]`` to every alert a cluster matches; alerts no cluster matches are untouched."""
    for alert in alerts:
        ranked = sorted(((strength, i, ctx, nodes) for i, ctx in enumerate(contexts)
                         for strength, nodes in [_match(alert, ctx)] if strength),
                        key=lambda t: (-t[0], t[1]))
        if not ranked:
            continue
        _, _, best, nodes = ranked[0]
        ev = evidence(alert, best, nodes)
        if len(ranked) > 1:
            ev["also"] = [{"cluster": c.name, "status": c.status, "suspicious_pods": len(c.suspicious()),
                           "unbounded_pods": sum(p.unbounded and p.active for p in c.pods)}
                          for _, _, c, _ in ranked[1:MAX_ITEMS + 1]]
        alert.evidence["kubernetes"] = ev
        rescore(alert)  # miner signs raise a mining alert's score and severity, clean pods lower them


def _cap(ev: dict[str, Any], key: str, items: list[Any], limit: int = MAX_ITEMS) -> None:
    ev[key] = items[:limit]
    if len(items) > limit:
        ev.setdefault("more", {})[key] = len(items) - limit


def _when(ts: Any) -> datetime | None:
    if ts is None:
        return None
    to_py = getattr(ts, "to_pydatetime", None)
    dt = to_py() if callable(to_py) else ts
    if not isinstance(dt, datetime):
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _near_start(alert: Alert, pod: PodView) -> str | None:
    start = _when(alert.start)
    if alert.kind != "mining_suspected" or start is None or pod.created is None:
        return None
    if start - NEAR_BEFORE <= pod.created <= start:
        return f"started {age(start - pod.created)} before the CPU plateau"
    if start < pod.created <= start + NEAR_AFTER:
        return f"started {age(pod.created - start)} after the CPU plateau began"
    return None


def namespace_rows(ctx: ClusterContext, in_scope: dict[str, list[PodView]]) -> list[dict[str, Any]]:
    """One row per namespace with pods in scope, plus every namespace that answered 403 (its pods, if any,
    could not be seen, so it may well run some on the flagged nodes); weakest quota first."""
    rows: list[dict[str, Any]] = []
    for ns in ctx.namespaces:
        pods = in_scope.get(ns.name)
        if pods is None and not ns.forbidden:
            continue
        seen = "pods" not in ns.forbidden
        rows.append({"namespace": ns.name, "quota": ns.quota_status, "pods": len(pods or []) if seen else None,
                     "unbounded_pods": sum(p.unbounded for p in pods or []) if seen else None,
                     "forbidden": list(ns.forbidden)})
    rows.sort(key=lambda r: (_QUOTA_ORDER.get(r["quota"], 9), -(r["unbounded_pods"] or 0), -(r["pods"] or 0),
                             r["namespace"]))
    return rows


def evidence(alert: Alert, ctx: ClusterContext, matched: list[tuple[str, NodeView]]) -> dict[str, Any]:
    """The compact evidence for one alert and one cluster (see the module docstring for the shape)."""
    ev: dict[str, Any] = {"cluster": ctx.name, "status": ctx.status, "nodes": [], "namespaces": [],
                          "unbounded_pods": [], "suspicious_pods": []}
    if not ctx.available:
        ev["notes"] = []
        return ev
    on_nodes = {nv.name for _, nv in matched}
    ev["nodes"] = [{"node": clean(a, 120), "name": nv.name,
                    "cpu": None if nv.cpu_used is None else round(nv.cpu_used, 2),
                    "cpu_allocatable": nv.cpu_allocatable, "pods": nv.pods} for a, nv in matched][:MAX_ITEMS]
    spaces = {ns.name: ns for ns in ctx.namespaces}
    # one scope for every list: the flagged nodes' pods, or (no node matched) the cluster's own namespaces'
    scope = [p for p in ctx.pods if p.active and (p.node in on_nodes if on_nodes else
                                                   p.namespace in spaces and not spaces[p.namespace].system)]
    in_scope: dict[str, list[PodView]] = {}
    for p in scope:
        in_scope.setdefault(p.namespace, []).append(p)
    _cap(ev, "namespaces", namespace_rows(ctx, in_scope))
    _cap(ev, "namespaces_without_quota", [ns.name for ns in ctx.namespaces
                                          if ns.quota_status == "none" and not ns.system and ns.pods])

    unbounded = sorted((p for p in scope if p.unbounded), key=lambda p: (-(p.cpu_used or 0.0), p.namespace, p.name))
    _cap(ev, "unbounded_pods", [{k: v for k, v in pod_dict(p).items() if k in ("namespace", "name", "node", "cpu",
                                                                               "image", "unbounded")}
                                for p in unbounded])

    suspicious = []
    for p in ctx.pods:
        extra = _near_start(alert, p) if p.node in on_nodes else None
        if p.signs or extra:
            reasons = ([extra] if extra else []) + p.reasons
            weight = p.score + (1 if extra else 0)
            suspicious.append((p.node not in on_nodes, -weight, p.namespace, p.name, p, reasons[:6]))
    suspicious.sort(key=lambda t: t[:4])
    # sign_weight: the strongest sign (3 a miner or stratum URL, 2 a pool, 1 an unusual image or namespace, 0 only
    # the timing), which the mining score reads
    _cap(ev, "suspicious_pods", [{k: v for k, v in pod_dict(t[4], t[5]).items()
                                  if k in ("namespace", "name", "image", "node", "cpu", "reasons")}
                                 | {"sign_weight": max((sign.weight for sign in t[4].signs), default=0)}
                                 for t in suspicious])

    if on_nodes and ctx.metrics:
        top = sorted((p for p in scope if p.cpu_used), key=lambda p: -(p.cpu_used or 0.0))
        ev["top_pods"] = [{k: v for k, v in pod_dict(p).items() if k in ("namespace", "name", "node", "cpu", "image")}
                          for p in top[:MAX_TOP]]
    notes = list(ctx.notes) + [f"namespace {n}: {note}" for n in in_scope for note in
                               (spaces[n].notes if n in spaces else [])]
    if not on_nodes and alert_nodes(alert):
        notes.insert(0, f"none of the alert's {len(alert_nodes(alert))} node(s) is a node of this cluster now; "
                        "showing the whole cluster")
    _cap(ev, "notes", [clean(n, 300) for n in notes])
    return ev


def lines(ev: dict[str, Any]) -> list[str]:
    """Plain-text lines for a notifier that has no Kubernetes rendering of its own (already cleaned)."""
    out = [f"Kubernetes cluster {clean(ev.get('cluster'), 60)}: {clean(ev.get('status'), 200)}"]
    for p in ev.get("suspicious_pods") or []:
        cpu = f", CPU {p['cpu']:g}" if isinstance(p.get("cpu"), int | float) else ""
        out.append(f"suspicious pod {clean(p.get('namespace'), 63)}/{clean(p.get('name'), 253)} on "
                   f"{clean(p.get('node'), 80) or '?'} ({clean(p.get('image'), 120)}{cpu}): "
                   + "; ".join(clean(r, 120) for r in p.get("reasons") or []))
    for ns in ev.get("namespaces") or []:
        head = f"namespace {clean(ns.get('namespace'), 63)}: quota {clean(ns.get('quota'), 10)}, "
        if ns.get("pods") is None:
            out.append(head + "forbidden (HTTP 403) to list " + ", ".join(clean(r, 40) for r in ns.get("forbidden")
                                                                          or ["pods"]) + ": not analysed")
        else:
            out.append(head + f"{ns.get('unbounded_pods', 0)} of {ns.get('pods', 0)} pod(s) without a CPU limit")
    more = ev.get("more") or {}
    if more:
        out.append("and more: " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in more.items()))
    out += [clean(n, 300) for n in ev.get("notes") or []]
    return out


__all__ = ["MAX_ITEMS", "alert_clusters", "alert_nodes", "attach", "evidence", "lines"]
