"""Owners' answers about alerts ("expected", "not an anomaly") and what detection does with them.

An answer is stored against the alert's fingerprint, which is built from labels only (kind, provider,
project, scope), so it names the *series* the false alarm came from, not one day of it.  Detection then
raises that series' bar instead of re-alerting on the same pattern:

- **not an anomaly**: the detector was wrong at that level.  Later alerts on the same series are held back
  while they stay within :data:`MARGIN` of the answered level (in money, and relative to the band's
  expectation, so a slowly growing project does not escape the answer); a bigger excursion still alerts.
- **expected** (planned activity): the new level is intended.  It is accepted as the series' level from the
  incident's start: alerts at or under :data:`ACCEPTED_GROWTH` times it are held back, a jump beyond it
  alerts again.

Mining alerts are held back only when every node they name was in the answered alert *and* nothing new
joins them (GuardDuty findings, Kubernetes miner signs, new regions, new nodes): an owner who said a
saturating node was traffic has not said a miner on another node, or with a pool connection, is fine.

Answers expire after :data:`KEEP` so a stale answer cannot hide a series forever.  Pure functions over
plain records; the store is only read and written by :func:`record` and :func:`load`.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from .alerts import Alert, finite, iso
from .state import Store

KINDS = ("expected", "not_anomaly")
MARGIN = 1.15            # "not an anomaly": the same series is held back up to 15 % above the answered level
ACCEPTED_GROWTH = 1.25   # "expected": a new level is accepted up to 25 % above what was seen
KEEP = pd.Timedelta(days=90)
STRONG_MINING_EVIDENCE = ("guardduty", "new_regions")


@dataclass
class Feedback:
    """One owner's answer about one alert (one series)."""

    id: str
    kind: str                    # one of KINDS
    fingerprint: str
    alert_kind: str
    project: str
    project_name: str
    provider: str
    service: str | None
    currency: str
    observed: float              # the answered level (daily cost, or mean CPU for mining)
    expected: float | None       # the band's expectation when answered
    start: str                   # ISO time the answered alert started (an accepted level counts from here)
    at: str                      # ISO time of the answer
    by: str
    incident: str = ""           # incident group the answer came from
    nodes: list[str] = field(default_factory=list)
    until: str = ""              # ISO time the answer stops applying

    @property
    def ratio(self) -> float | None:
        if self.expected is None or not math.isfinite(self.expected) or self.expected <= 0:
            return None
        return self.observed / self.expected


def from_alert(alert: dict[str, Any], kind: str, by: str, now: pd.Timestamp, incident: str = "") -> Feedback:
    """A feedback record from an alert as stored in an incident (``Alert.to_dict()``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown feedback kind {kind!r}")
    ev = alert.get("evidence") or {}
    nodes = [str(n.get("node")) for n in ev.get("nodes") or [] if isinstance(n, dict) and n.get("node")]
    return Feedback(
        id=secrets.token_hex(4), kind=kind, fingerprint=str(alert.get("fingerprint") or ""),
        alert_kind=str(alert.get("kind") or ""), project=str(alert.get("project") or ""),
        project_name=str(alert.get("project_name") or ""), provider=str(alert.get("provider") or ""),
        service=alert.get("service"), currency=str(alert.get("currency") or ""),
        observed=finite(alert.get("observed")) or 0.0, expected=finite(alert.get("expected")),
        start=str(alert.get("start") or iso(now)), at=iso(now) or "", by=by[:100], incident=incident,
        nodes=nodes, until=iso(now + KEEP) or "")


def record(store: Store, fb: Feedback) -> None:
    """Store an answer.  The TTL counts in wall-clock time, also when ``at`` is a replayed time."""
    ttl = time.time() + (pd.Timestamp(fb.until) - pd.Timestamp(fb.at)).total_seconds() + 86400
    store.put("feedback", fb.id, asdict(fb), version=None, expires_at=ttl)


def remove(store: Store, feedback_id: str) -> bool:
    if store.get("feedback", feedback_id) is None:
        return False
    store.delete("feedback", feedback_id)
    return True


def load(store: Store, now: pd.Timestamp, project: str | None = None) -> list[Feedback]:
    """Answers still in force at ``now``, oldest first; ``project`` matches an id or a name."""
    fields = Feedback.__dataclass_fields__
    out = [Feedback(**{k: v for k, v in r.doc.items() if k in fields}) for r in store.scan("feedback")]
    out = [f for f in out if not f.until or pd.Timestamp(f.until) > now]
    if project:
        out = [f for f in out if project in (f.project, f.project_name)]
    return sorted(out, key=lambda f: (f.at, f.id))


def _mining_held(alert: Alert, fb: Feedback) -> bool:
    ev = alert.evidence
    if any(ev.get(k) for k in STRONG_MINING_EVIDENCE):
        return False
    k8s = ev.get("kubernetes") or {}
    if isinstance(k8s, dict) and k8s.get("suspicious_pods"):
        return False
    nodes = {str(n.get("node")) for n in ev.get("nodes") or [] if isinstance(n, dict) and n.get("node")}
    return bool(nodes) and nodes <= set(fb.nodes)


def _cost_held(alert: Alert, fb: Feedback) -> bool:
    limit = MARGIN if fb.kind == "not_anomaly" else ACCEPTED_GROWTH
    if not math.isfinite(alert.observed):
        return False
    if alert.observed <= limit * fb.observed:
        return True
    ratio = fb.ratio
    exp = alert.expected
    return (ratio is not None and exp is not None and math.isfinite(exp) and exp > 0
            and alert.observed / exp <= limit * ratio)


def holding(alert: Alert, answers: Iterable[Feedback]) -> Feedback | None:
    """The answer that holds this alert back, if any."""
    start = pd.Timestamp(alert.start)
    for fb in answers:
        if fb.fingerprint != alert.fingerprint:
            continue
        if fb.kind == "expected" and start < pd.Timestamp(fb.start):
            continue  # an accepted level counts from the answered incident's start, not before
        held = _mining_held(alert, fb) if alert.kind == "mining_suspected" else _cost_held(alert, fb)
        if held:
            return fb
    return None


def apply(alerts: list[Alert], answers: list[Feedback]) -> tuple[list[Alert], list[tuple[Alert, Feedback]]]:
    """Split this run's alerts into those still owed to owners and those an earlier answer holds back."""
    if not answers:
        return alerts, []
    kept: list[Alert] = []
    held: list[tuple[Alert, Feedback]] = []
    for a in alerts:
        fb = holding(a, answers)
        if fb is None:
            kept.append(a)
        else:
            a.evidence["feedback"] = {"id": fb.id, "kind": fb.kind, "by": fb.by, "at": fb.at}
            held.append((a, fb))
    return kept, held


def describe(fb: Feedback) -> str:
    """One line for `costwatch feedback` and the report."""
    what = "expected (planned)" if fb.kind == "expected" else "not an anomaly"
    scope = f" {fb.service}" if fb.service else ""
    return (f"{fb.id}  {what}: {fb.alert_kind} in {fb.project_name or fb.project}{scope} at "
            f"{fb.observed:,.2f} {fb.currency}".rstrip() + f" — by {fb.by or '?'} at {fb.at}, until {fb.until}")


__all__ = ["ACCEPTED_GROWTH", "KEEP", "KINDS", "MARGIN", "Feedback", "apply", "describe", "from_alert", "holding",
           "load", "record", "remove"]
