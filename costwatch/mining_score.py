"""How sure a mining alert is: an additive evidence score (log-odds) and the severity that follows from it.

A flat CPU line is the miner's signature, but a busy service capped at 100% or a planned batch/ML job
draws one too.  What makes a page worth waking someone for is what joins it: compute spend out of band,
nodes nobody owns appearing, a region the project never used, GPU instances, a pod running a miner or
talking to a pool, a GuardDuty finding.  So every mining alert carries

* ``score``: the probability that it is mining, ``1 / (1 + exp(-logit))``, where ``logit`` is ``PRIOR`` plus
  the weight of each signal present;
* ``evidence["score_signals"]``: the signals that contributed, each ``{"signal", "weight", "detail"}``;
* its severity from the score (``SEVERITY_CUTS``): critical from 0.9, high from 0.75, warning from 0.4,
  info below.  Without a CPU signature, a Kubernetes miner sign or a GuardDuty finding (compute spend in a
  new region alone) it is at most high.

The weights are log likelihood ratios, in nats, read off what separates miners from the benign look-alikes
in the labelled scenarios (``bench/detection.py``, tuning seeds only): a lone CPU plateau is about as often a
saturating service or a batch job as a miner (prior -1 plus 1.5-2: warning); each independent corroborating
signal is worth about e^2 (7x), so the CPU signature with any one of them is critical; the cloud's or the
cluster's own word that a miner runs (GuardDuty, a miner image, a stratum URL) is worth e^4.  Owner labels on
every new node, and pods on the flagged nodes that show no sign at all, count against mining: a planned
training job on new GPU nodes is reported at warning or info with what was seen, never paged as critical.
Ownership is read from the billing rows of the nodes, which arrive a day late: until then a new node counts
half (``new_nodes_unbilled``) and its GPU not at all, so new pinned nodes in the home region are "high" in
their first hours and become critical (nobody owns them) or a warning (a planned job) when billing arrives;
a new region, spend, miner pods or GuardDuty make them critical at once.

``rescore`` is the one place severity is decided: detection calls it when it builds the alert and when
GuardDuty findings join it, ``providers.kubernetes.attach`` when cluster evidence is attached.
"""

from __future__ import annotations

import math
from typing import Any

from .alerts import Alert

PRIOR = -1.0
HOURS_PERSISTENT = 24  # flat through a whole daily cycle: decoupled from any daily demand
WEIGHTS: dict[str, float] = {
    "cpu_pinned": 2.0,          # a node flat at >= 90% above its usual shape, or new and pinned from its first hours
    "cpu_plateau": 1.5,         # a node held flat at a cap (50-75%) well above its usual shape
    "persistent": 1.0,          # an existing node's flat line has held for a day or more
    "cost": 2.0,                # compute spend out of band on the same days (not a surge's own bill, see detect)
    "new_nodes": 2.0,           # flagged nodes first seen during the data, billed without owner labels
    "new_nodes_unbilled": 1.0,  # new flagged nodes whose billing rows have not arrived (or carry no resource id)
    "new_region": 2.0,          # flagged nodes in a region the project never used
    "gpu": 2.0,                 # GPU instances among the flagged nodes: existing ones, or new ones billed unowned
    "owned_new_nodes": -2.0,    # every flagged new node carries an owner label: launched by the team
    "kubernetes_miner": 4.0,    # a pod on the flagged nodes names a miner, a stratum URL, a pool host or port
    "kubernetes_unusual": 1.0,  # only weaker signs: an image outside the allowlist, a brand-new namespace
    "kubernetes_clean": -1.0,   # the flagged nodes' pods were seen, none shows any sign
    "guardduty": 4.0,           # a crypto-mining finding of severity >= 7
    "guardduty_low": 2.5,       # a crypto-mining finding of lower severity
}
SEVERITY_CUTS: tuple[tuple[float, str], ...] = ((0.9, "critical"), (0.75, "high"), (0.4, "warning"))
DIRECT = frozenset({"cpu_pinned", "cpu_plateau", "kubernetes_miner", "guardduty", "guardduty_low"})


def signals(ev: dict[str, Any]) -> list[dict[str, Any]]:
    """The signals present in a mining alert's evidence, strongest first."""
    out: list[dict[str, Any]] = []

    def add(name: str, detail: str) -> None:
        out.append({"signal": name, "weight": WEIGHTS[name], "detail": detail})

    nodes = [n for n in ev.get("nodes") or [] if isinstance(n, dict)]
    pinned = [n for n in nodes if n.get("signal") == "pinned"]
    if pinned:
        add("cpu_pinned", f"{len(pinned)} node(s) flat at " + _levels(pinned))
    elif nodes:
        add("cpu_plateau", f"{len(nodes)} node(s) held flat at " + _levels(nodes))
    # only a node with a daily shape of its own can be decoupled from it (a new node has none)
    hours = max((float(n.get("flat_hours") or 0.0) for n in nodes if not n.get("new")), default=0.0)
    if hours >= HOURS_PERSISTENT:
        add("persistent", f"a node that has a daily shape flat for {hours:.0f} h")
    c = ev.get("cost")
    if isinstance(c, dict) and c:
        add("cost", f"{c.get('service') or 'compute'} spend out of band on {str(c.get('day'))[:10]}")
    elif ev.get("cost_alert"):  # a mining alert from cost alone
        add("cost", "compute spend out of band")
    new = [n for n in nodes if n.get("new")]
    unowned = [n for n in new if not n.get("owner") and n.get("billed", True)]
    unknown = [n for n in new if not n.get("owner") and not n.get("billed", True)]
    if unowned:
        add("new_nodes", f"{len(unowned)} new node(s) billed without owner labels")
    elif unknown:
        add("new_nodes_unbilled", f"{len(unknown)} new node(s), no billing rows yet to tell who owns them")
    if new and not unowned and not unknown:
        owners = sorted({str(n["owner"]) for n in new})
        add("owned_new_nodes", f"{len(new)} new node(s) labelled owner {', '.join(owners)[:120]}")
    regions = [str(r.get("region")) if isinstance(r, dict) else str(r) for r in ev.get("new_regions") or []]
    if regions:
        add("new_region", "region(s) never used: " + ", ".join(regions)[:120])
    # a new GPU node counts once billing shows nobody owns it (a planned training job runs on new GPU nodes)
    gpu = [n for n in nodes if n.get("gpu") and (not n.get("new") or n in unowned)]
    if gpu:
        add("gpu", f"{len(gpu)} GPU node(s): " + ", ".join(sorted({str(n.get('instance_type')) for n in gpu}))[:120])
    k8s = ev.get("kubernetes")
    if isinstance(k8s, dict):
        # matched by node: the pods on those nodes; matched by cluster name or project: the whole cluster
        on = {str(n.get("name")) for n in k8s.get("nodes") or [] if isinstance(n, dict)}
        pods = [p for p in k8s.get("suspicious_pods") or [] if isinstance(p, dict)]
        mine = [p for p in pods if not on or str(p.get("node")) in on]
        miner = [p for p in mine if (p.get("sign_weight") or 0) >= 2]
        weak = [p for p in mine if (p.get("sign_weight") or 0) == 1]
        if miner:
            add("kubernetes_miner", f"{len(miner)} pod(s) with miner signs, e.g. {_pod(miner[0])}")
        elif weak:
            add("kubernetes_unusual", f"{len(weak)} pod(s) with unusual images or namespaces, e.g. {_pod(weak[0])}")
        elif on and str(k8s.get("status", "")).startswith("ok"):
            add("kubernetes_clean", f"pods on {len(on)} flagged node(s) in cluster {k8s.get('cluster')} show no "
                                    "miner sign, images from allowed registries")
    gd = [g for g in ev.get("guardduty") or [] if isinstance(g, dict)]
    if gd:
        top = max(float(g.get("severity") or 0.0) for g in gd)
        add("guardduty" if top >= 7 else "guardduty_low",
            f"{len(gd)} GuardDuty finding(s), severity up to {top:g}: {gd[0].get('type')}")
    out.sort(key=lambda s: -abs(s["weight"]))
    return out


def score(sig: list[dict[str, Any]]) -> tuple[float, float, str]:
    """(logit, probability, severity) of a list of signals."""
    logit = PRIOR + sum(float(s["weight"]) for s in sig)
    p = 1.0 / (1.0 + math.exp(-logit))
    severity = next((name for cut, name in SEVERITY_CUTS if p >= cut), "info")
    if severity == "critical" and not DIRECT & {s["signal"] for s in sig}:
        severity = "high"
    return logit, p, severity


def rescore(alert: Alert) -> Alert:
    """Recompute a mining alert's score, severity and ``evidence["score_signals"]`` from its evidence (after
    anything joined it); other alerts are returned untouched."""
    if alert.kind != "mining_suspected":
        return alert
    sig = signals(alert.evidence)
    logit, p, severity = score(sig)
    alert.score, alert.severity = round(p, 4), severity
    alert.evidence["score_signals"] = sig
    alert.evidence["score_logit"] = round(logit, 2)
    alert.evidence["verdict"] = verdict(sig, p)
    return alert


def verdict(sig: list[dict[str, Any]], p: float) -> str:
    names = {s["signal"] for s in sig}
    if p < 0.75 and names & {"owned_new_nodes", "kubernetes_clean"}:
        return "looks like a planned job (owned nodes, no miner sign); CPU flat and high: check it is expected"
    if p < 0.75:
        return "CPU flat and high with nothing else pointing at mining: worth a look"
    return "mining likely"


def _levels(nodes: list[dict[str, Any]]) -> str:
    levels = sorted({round(float(n.get("cpu") or 0.0)) for n in nodes})
    return ", ".join(f"{v}%" for v in levels[:5])


def _pod(p: dict[str, Any]) -> str:
    return f"{p.get('namespace')}/{p.get('name')} ({'; '.join(map(str, (p.get('reasons') or [])[:2]))})"[:200]


__all__ = ["PRIOR", "SEVERITY_CUTS", "WEIGHTS", "rescore", "score", "signals"]
