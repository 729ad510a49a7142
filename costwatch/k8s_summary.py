"""What an alert's Kubernetes evidence (``evidence["kubernetes"]``, see ``providers/kubernetes/attach``) says,
picked once so every output shows the same things: the cluster and its status, the pods worth a look (the
miner-looking ones, else the busiest on the flagged nodes), how many pods have no CPU limit, the namespaces
without a ResourceQuota, the namespaces that answered 403, and the notes.

``summarize`` returns raw values: each medium escapes for itself.  ``text_lines`` is the plain-text form the
report (table and markdown) and the stdout notifier print; it neutralises what came from the cluster, since a
pod or namespace name is text a hijacker may choose (see ``neutral``).

Evidence is read defensively (it may come back from the outbox or a JSON report written by another version):
anything of an unexpected type is skipped, never an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .safetext import terminal_safe

MAX_SHOWN = 5
# which pods to show, first non-empty wins: miner-looking ones, else the busiest on the flagged nodes ("pods":
# evidence written before top_pods existed)
_PODS = (("suspicious_pods", "suspicious"), ("top_pods", "busiest"), ("pods", "busy"))


def neutral(value: object, limit: int = 200) -> str:
    """One line of untrusted text with every control, bidi and invisible character shown as a visible
    escape (:func:`costwatch.safetext.terminal_safe`), at most ``limit`` characters.  The report's console
    reads no markup, so ``[bold]`` in a pod name stays text without escaping."""
    return terminal_safe(value, limit)


@dataclass(frozen=True)
class PodLine:
    namespace: str
    name: str
    node: str
    image: str
    cpu: float | None
    reasons: list[str]


@dataclass(frozen=True)
class ClusterSummary:
    cluster: str
    status: str
    pods_label: str                 # "suspicious", "busiest" or "busy" (see _PODS)
    pods: list[PodLine]             # the first MAX_SHOWN
    pods_total: int
    without_quota: list[str]        # the first MAX_SHOWN namespaces without a ResourceQuota
    without_quota_total: int
    unbounded: int                  # pods without a CPU limit, all of them (capped lists count the rest in "more")
    forbidden: list[str] = field(default_factory=list)   # namespaces that answered 403
    notes: list[str] = field(default_factory=list)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [x for x in _list(value) if isinstance(x, dict)]


def _total(ev: dict[str, Any], key: str, shown: list[Any]) -> int:
    more = ev.get("more") if isinstance(ev.get("more"), dict) else {}
    extra = more.get(key) if isinstance(more, dict) else None
    return len(shown) + (extra if isinstance(extra, int) and not isinstance(extra, bool) else 0)


def _pod(p: dict[str, Any]) -> PodLine:
    cpu = p.get("cpu")
    reasons = _list(p.get("reasons"))
    return PodLine(namespace=str(p.get("namespace") or "?"), name=str(p.get("name") or "?"),
                   node=str(p.get("node") or ""), image=str(p.get("image") or ""),
                   cpu=float(cpu) if isinstance(cpu, int | float) and not isinstance(cpu, bool) else None,
                   reasons=[str(r) for r in reasons])


def summarize_one(ev: dict[str, Any], limit: int = MAX_SHOWN) -> ClusterSummary:
    """The summary of one cluster's evidence."""
    key, label = next(((k, lb) for k, lb in _PODS if _dicts(ev.get(k))), _PODS[0])
    pods = _dicts(ev.get(key))
    ns = [str(n) for n in _list(ev.get("namespaces_without_quota")) if isinstance(n, str | int)]
    return ClusterSummary(
        cluster=str(ev.get("cluster") or ""), status=str(ev.get("status") or "ok"), pods_label=label,
        pods=[_pod(p) for p in pods[:limit]], pods_total=_total(ev, key, pods),
        without_quota=ns[:limit], without_quota_total=_total(ev, "namespaces_without_quota", ns),
        unbounded=_total(ev, "unbounded_pods", _dicts(ev.get("unbounded_pods"))),
        forbidden=[str(r.get("namespace")) for r in _dicts(ev.get("namespaces")) if r.get("forbidden")],
        notes=[str(n) for n in _list(ev.get("notes"))[:limit]])


def summarize(evidence: Any, limit: int = MAX_SHOWN) -> list[ClusterSummary]:
    """Summaries of an alert's ``evidence`` (its ``kubernetes`` entry: one cluster, or a list of them)."""
    raw = evidence.get("kubernetes") if isinstance(evidence, dict) else None
    return [summarize_one(ev, limit) for ev in ([raw] if isinstance(raw, dict) else _dicts(raw))]


def _more(shown: int, total: int) -> str:
    return f" (+{total - shown} more)" if total > shown else ""


def _pod_text(label: str, p: PodLine) -> str:
    where = f" on {neutral(p.node, 80)}" if p.node else ""
    facts = ", ".join(x for x in (neutral(p.image, 120), f"CPU {p.cpu:g}" if p.cpu is not None else "") if x)
    why = "; ".join(neutral(r, 120) for r in p.reasons[:3])
    return (f"{label} pod {neutral(p.namespace, 63)}/{neutral(p.name, 120)}{where}"
            + (f" ({facts})" if facts else "") + (f": {why}" if why else ""))


def text_lines(s: ClusterSummary) -> list[str]:
    """Plain-text lines for one cluster, every value from the cluster neutralised (no rich markup escaping)."""
    out = [f"Kubernetes cluster {neutral(s.cluster, 80) or '?'}: {neutral(s.status, 300)}"]
    if s.without_quota:
        out.append("namespaces without a ResourceQuota: " + ", ".join(neutral(n, 63) for n in s.without_quota)
                   + _more(len(s.without_quota), s.without_quota_total))
    if s.unbounded:
        out.append(f"{s.unbounded} pod(s) without a CPU limit")
    if s.forbidden:
        out.append("forbidden (HTTP 403), not read: namespace(s) " + ", ".join(neutral(n, 63) for n in s.forbidden))
    out += [_pod_text(s.pods_label, p) for p in s.pods]
    if s.pods_total > len(s.pods):
        out.append(f"and {s.pods_total - len(s.pods)} more {s.pods_label} pod(s)")
    return out + [f"note: {neutral(n, 300)}" for n in s.notes]


def evidence_lines(evidence: Any) -> list[str]:
    """``text_lines`` of every cluster in an alert's evidence; empty when it has no Kubernetes context."""
    return [line for s in summarize(evidence) for line in text_lines(s)]


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def md(text: str) -> str:
    """Markdown punctuation backslash-escaped: shown as typed, never as a link, emphasis or table cell."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def markdown_section(alerts: list[Any]) -> list[str]:
    """A ``## Kubernetes`` section (one list per alert with context) for the markdown report; markdown
    punctuation in names is escaped, so a pod name cannot become a link or a table cell."""
    out: list[str] = []
    for a in alerts:
        lines = evidence_lines(a.evidence)
        if lines:
            out += ["", f"### {md(neutral(f'{a.kind} {a.project_name}', 200))}", ""]
            out += [f"- {md(line)}" for line in lines]
    return ["", "## Kubernetes", *out] if out else []


__all__ = ["MAX_SHOWN", "ClusterSummary", "PodLine", "evidence_lines", "markdown_section",
           "neutral", "summarize", "summarize_one", "text_lines"]
