"""From this run's alerts and the stored incidents to the notifications owed, with Alertmanager semantics.

An incident is a group of alerts (``alerting.group_by``, by project by default) that are *active* now.
Its first message is "firing"; it is told again when it grows (a new alert joins, or an alert's impact
grows by ``growth_factor``: "updated"), when ``repeat_interval`` has passed ("repeat"), and once when no
alert of the group is active any more ("resolved").  Budget steps are the exception: a project's budget
alerts of a month are an incident of their own (label ``budget``), which tells each step once (no repeats,
no growth updates), stays open to the month's end and then closes without a message, as a crossed step is
never "resolved".  Decisions depend only on stored state and this run's alerts, and every notification id
is derived from (group, incident number, target, event, sequence), so a retried or overlapping run
computes the same ids and the outbox drops the copies.

State is written after the notifications are queued: a crash in between makes the next run redo the
same decision with the same ids, never skip it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import answers
from .alerts import SEVERITY_ORDER, Alert, iso
from .budgets import BUDGET_KIND
from .config import Config
from .notify import Notification, notification_id
from .routing import owners_for, routes
from .silences import Silence, matching
from .state import Store

DAY = pd.Timedelta(days=1)
HOUR = pd.Timedelta(hours=1)


def active_until(alert: Alert) -> pd.Timestamp:
    """The last time the alert's condition was seen true, from its evidence.  Daily cost alerts cover
    whole days; a mining alert runs to its last flagged hour; a budget forecast holds for its month."""
    ev = alert.evidence
    if alert.kind == "mining_suspected" and ev.get("ongoing_until") is not None:
        return pd.Timestamp(ev["ongoing_until"]) + HOUR
    if alert.kind == BUDGET_KIND:
        return pd.Timestamp(alert.start) + pd.offsets.MonthBegin(1)
    if ev.get("days"):
        return pd.Timestamp(alert.start) + int(ev["days"]) * DAY
    return pd.Timestamp(alert.detected_at)


def is_active(alert: Alert, as_of: pd.Timestamp, cost_grace: pd.Timedelta) -> bool:
    """Still true at ``as_of``?  Cost arrives a day at a time (later for lagging billing), so a daily
    alert stays active until a full day after its last bad day has been published; CPU is hourly."""
    grace = 3 * HOUR if alert.kind == "mining_suspected" and alert.evidence.get("ongoing_until") else cost_grace
    return active_until(alert) + grace >= as_of


def labels_of(alert: Alert, group_by: list[str], owner: str | None) -> dict[str, str]:
    values = {"owner": owner or "", "project": alert.project, "project_name": alert.project_name,
              "provider": alert.provider, "kind": alert.kind, "severity": alert.severity,
              "service": alert.service or "", "region": alert.region or ""}
    return {k: values[k] for k in group_by}


def group_key(labels: dict[str, str]) -> str:
    raw = "\x1f".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


def magnitude(alert: Alert) -> float:
    """How big the alert is, to notice growth: money over the band for cost, nodes for CPU-only mining."""
    ev = alert.evidence
    if alert.kind == "mining_suspected" and ev.get("node_count"):
        return float(ev["node_count"]) * 1_000_000 + max(alert.observed - _num(alert.expected), 0.0)
    return max(alert.observed - _num(alert.expected), 0.0) if math.isfinite(alert.observed) else 0.0


def _num(x: float) -> float:
    return float(x) if x is not None and math.isfinite(x) else 0.0


@dataclass
class Plan:
    notifications: list[Notification] = field(default_factory=list)
    incidents: dict[str, tuple[int | None, dict[str, Any]]] = field(default_factory=dict)  # key -> (version, doc)
    silenced: list[tuple[Alert, Silence]] = field(default_factory=list)
    open_groups: int = 0
    held: int = 0  # open incidents kept open because the provider part that showed them failed this run


def data_ends(costs: pd.DataFrame, usage: pd.DataFrame) -> dict[tuple[str, str], pd.Timestamp]:
    """(project, "cost"|"usage") -> the end of the newest data seen for it.  An incident is judged over
    before that end, never after: data that stopped arriving is a gap, not a recovery."""
    out: dict[tuple[str, str], pd.Timestamp] = {}
    if not costs.empty:
        for pid, t in costs.groupby("project_id", observed=True)["period_start"].max().items():
            out[(str(pid), "cost")] = pd.Timestamp(t).floor("D") + DAY
    if not usage.empty:
        for pid, t in usage.groupby("project", observed=True)["timestamp"].max().items():
            out[(str(pid), "usage")] = pd.Timestamp(t).floor("h") + HOUR
    return out


def feed_of(alert: Alert) -> str:
    """The provider part an alert's condition is read from: ``costs``, ``usage`` (CPU) or ``findings``."""
    if alert.kind == "mining_suspected" and alert.evidence.get("ongoing_until"):
        return "usage"
    return "findings" if alert.evidence.get("metric") == "findings" else "costs"


def _feeds(members: list[Alert], providers_of: dict[str, set[str]]) -> list[str]:
    """``provider:part`` for every provider that delivered a member's project and the part it is read from."""
    return sorted({f"{p}:{feed_of(a)}" for a in members for p in providers_of.get(a.project, ())})


def _held(doc: dict[str, Any], failed: dict[str, list[str]]) -> bool:
    """An open incident with no active alert is not over when the data that showed it failed to come this
    run: a provider (part) that failed is a gap, not a recovery.  An incident stored before its feeds were
    recorded is held by any failure, as it cannot be told apart."""
    down = {f"{name}:{part}" for name, parts in failed.items() for part in parts}
    if not down:
        return False
    feeds = doc.get("feeds")
    return not isinstance(feeds, list) or bool(down & set(feeds))


def plan(alerts: list[Alert], store: Store, cfg: Config, now: pd.Timestamp, *, as_of: pd.Timestamp,
         tag_owners: dict[str, str], silences: list[Silence], charts: dict[str, str] | None = None,
         data_end: dict[tuple[str, str], pd.Timestamp] | None = None,
         providers_of: dict[str, set[str]] | None = None, failed: dict[str, list[str]] | None = None) -> Plan:
    """Decide what to send for this run.  ``alerts`` are this run's detected alerts (any age); only the
    active ones keep an incident open, judged at the end of each project's data (``data_end``) when that
    is earlier than ``as_of``.  ``providers_of`` (project -> provider names that delivered it) is recorded
    with each incident, so that one whose provider part is in ``failed`` (provider -> parts) stays open."""
    al = cfg.alerting
    out = Plan()
    grace = DAY + pd.Timedelta(hours=cfg.detection.cost_delay_hours) + 2 * HOUR
    groups: dict[str, tuple[dict[str, str], list[Alert]]] = {}
    ends = data_end or {}
    for a in alerts:
        source = "usage" if a.kind == "mining_suspected" and a.evidence.get("ongoing_until") else "cost"
        seen_to = min(as_of, ends.get((a.project, source), as_of))
        if not is_active(a, seen_to, grace):
            continue
        hit = matching(silences, a, now)
        if hit is not None:
            out.silenced.append((a, hit))
            continue
        owners = owners_for(a.project, a.severity, cfg, tag_owners)
        labels = labels_of(a, al.group_by, owners[0] if owners else None)
        if a.kind == BUDGET_KIND and a.evidence.get("month"):
            labels["budget"] = str(a.evidence["month"])
        groups.setdefault(group_key(labels), (labels, []))[1].append(a)

    stored = {r.key: r for r in store.scan("incident")}
    repeat = pd.Timedelta(al.repeat_interval_td)
    for key in sorted(set(groups) | {k for k, r in stored.items() if r.doc.get("status") == "open"}):
        rec = stored.get(key)
        doc: dict[str, Any] = dict(rec.doc) if rec else {"number": 0, "status": "resolved"}
        labels, members = groups.get(key, (doc.get("labels", {}), []))
        month = labels.get("budget")
        members.sort(key=lambda a: (SEVERITY_ORDER.get(a.severity, 9), a.detected_at, a.fingerprint))
        event: str | None = None
        if members:
            out.open_groups += 1
            sizes = {a.fingerprint: magnitude(a) for a in members}
            if doc["status"] != "open":
                event = "firing"
                doc.update(number=int(doc["number"]) + 1, status="open", sequence=0, opened_at=iso(now),
                           notified=sizes, acked_by=None, acked_at=None)
            else:
                told: dict[str, float] = doc.get("notified", {})
                grew = any(fp not in told or (not month and told[fp] > 0 and s >= al.growth_factor * told[fp])
                           for fp, s in sizes.items())
                last = pd.Timestamp(doc.get("last_notified_at") or doc.get("opened_at"))
                if grew:
                    event = "updated"
                elif not month and now - last >= repeat and not doc.get("acked_by"):
                    event = "repeat"  # an acknowledged incident is not repeated; growth and resolve still go
                if event:
                    doc["sequence"] = int(doc.get("sequence", 0)) + 1
                    doc["notified"] = {**told, **sizes}
            doc.update(labels=labels, alerts=[a.to_dict() for a in members], last_seen_at=iso(now),
                       severity=members[0].severity, feeds=_feeds(members, providers_of or {}))
        elif doc.get("status") == "open" and _held(doc, failed or {}):
            out.open_groups += 1  # its data did not come: still open, nothing new to say
            out.held += 1
        elif doc.get("status") == "open" and month and as_of < _month_end(month) + grace:
            out.open_groups += 1  # a crossed step holds to the month's end, whatever the forecast does now
        elif doc.get("status") == "open":
            doc.update(status="resolved", resolved_at=iso(now), sequence=int(doc.get("sequence", 0)) + 1)
            event = "resolved" if al.send_resolved and not month else None
        if event:
            doc["last_notified_at"] = iso(now)
            out.notifications += _notifications(key, doc, event, cfg, tag_owners, now, charts or {})
        out.incidents[key] = (rec.version if rec else None, doc)
    return out


def _month_end(month: str) -> pd.Timestamp:
    return pd.Timestamp(f"{month}-01", tz="UTC") + pd.offsets.MonthBegin(1)


def _notifications(key: str, doc: dict[str, Any], event: str, cfg: Config, tag_owners: dict[str, str],
                   now: pd.Timestamp, charts: dict[str, str]) -> list[Notification]:
    alerts: list[dict[str, Any]] = doc.get("alerts", [])
    lead = alerts[0] if alerts else {}
    owners = owners_for(str(lead.get("project", "")), str(lead.get("severity", "")), cfg, tag_owners)
    group = f"{key}#{doc['number']}"
    name = lead.get("project_name") or lead.get("project") or "?"
    more = f" (+{len(alerts) - 1} more)" if len(alerts) > 1 else ""
    verb = {"firing": "", "updated": "update: ", "repeat": "still firing: ", "resolved": "resolved: "}[event]
    title = f"{verb}{str(lead.get('kind', 'alert')).replace('_', ' ')} in {name}{more}"
    out = []
    for r in routes(owners, cfg):
        seq = int(doc.get("sequence", 0))
        out.append(Notification(
            id=notification_id(group, r.target, event, seq), group_key=group, event=event, target=r.target,
            title=title, alerts=alerts, created_at=iso(now) or "", owner=", ".join(r.owners) or None,
            mention=",".join(r.mentions) or None, sequence=seq, chart=charts.get(str(lead.get("fingerprint"))),
            labels=dict(doc.get("labels", {}))))
    return out


def acknowledge(store: Store, project: str, by: str, now: pd.Timestamp) -> list[str]:
    """Mark the open incidents of a project (id or name) as acknowledged: no more repeats, but updates
    when they grow and the resolve still go out.  Returns the incident titles acknowledged.  Each goes
    through :func:`costwatch.answers.ack`, the same write a Slack button makes."""
    done = []
    for rec in store.scan("incident"):
        doc = rec.doc
        if doc.get("status") != "open":
            continue
        if not any(project in (a.get("project"), a.get("project_name")) for a in doc.get("alerts", [])):
            continue
        try:
            answers.ack(store, f"{rec.key}#{int(doc.get('number', 0))}", by, now)
        except answers.AnswerRefused:
            continue  # resolved or renumbered by a run in between: nothing left to acknowledge
        lead = doc.get("alerts", [{}])[0]
        done.append(f"{lead.get('kind')} in {lead.get('project_name') or lead.get('project')}")
    return done


def commit(store: Store, p: Plan) -> list[str]:
    """Write the incidents decided by :func:`plan`; a conflict (another run got there first) is reported,
    not overwritten: that run queued the same notifications."""
    conflicts = []
    for key, (version, doc) in p.incidents.items():
        if not store.put("incident", key, doc, version=version):
            conflicts.append(key)
    return conflicts


__all__ = ["Plan", "acknowledge", "active_until", "commit", "data_ends", "feed_of", "group_key", "is_active",
           "labels_of", "magnitude", "plan"]
