"""What an owner's answer to an incident does to state, whatever surface it came from (a Slack button,
the CLI).  One implementation, so the CLI, the next hourly run and the buttons agree.

An answer names the incident as its group id (``<key>#<number>``, the id every message of one incident
carries).  A button on a message of an earlier occurrence of the same group (an older number) is refused:
that incident is over and the new one has not been looked at.

Writes are conditional on the incident's stored version and retried on conflict, so an answer racing an
hourly run neither overwrites the run's update nor is overwritten by it.

- ``ack``: no more repeats (growth and "resolved" still go), as ``costwatch ack``; ``unack`` undoes it.
- ``silence`` (hours): a silence on the incident's project, as ``costwatch silence --for``; ``unsilence``.
- ``expected`` / ``not_anomaly``: a :mod:`costwatch.feedback` record per alert of the incident; ``undo``
  removes them.  Neither silences the project: a later, different anomaly still alerts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from . import feedback, silences
from .alerts import iso
from .errors import ConfigError
from .state import Record, Store

ACTIONS = ("ack", "unack", "silence", "unsilence", "expected", "not_anomaly", "undo")
SILENCE_HOURS = (6, 24)
MAX_TRIES = 5


class AnswerRefused(ConfigError):
    """The answer cannot apply (unknown incident, an older occurrence, nothing to undo)."""


@dataclass
class Outcome:
    """What happened, for the confirmation message, and the incident's answer state after it."""

    text: str
    state: dict[str, Any] = field(default_factory=dict)
    incident: str = ""      # "<kind> in <project>", for surfaces that list many incidents in one message


def split_group(group: str) -> tuple[str, int]:
    key, _, number = group.partition("#")
    if not key or not number.isdigit():
        raise AnswerRefused(f"not an incident id: {group[:80]!r}")
    return key, int(number)


def _load(store: Store, group: str) -> Record:
    key, number = split_group(group)
    rec = store.get("incident", key)
    if rec is None:
        raise AnswerRefused("this incident is no longer in costwatch's state")
    if int(rec.doc.get("number", 0)) != number:
        raise AnswerRefused("this message is about an earlier occurrence of the incident; answer the newest one")
    return rec


def answer_state(doc: dict[str, Any]) -> dict[str, Any]:
    """The parts of an incident a message shows: who acked, the silence, the feedback given."""
    out = {k: doc.get(k) for k in ("acked_by", "acked_at", "silence_id", "silenced_until", "silenced_by",
                                   "feedback_kind", "feedback_by", "feedback_at") if doc.get(k)}
    out["status"] = doc.get("status")
    return out


def _update(store: Store, group: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """Read-change-write with the version check, retried when a run (or another press) wrote in between."""
    for _ in range(MAX_TRIES):
        rec = _load(store, group)
        doc = change(dict(rec.doc))
        if store.put("incident", rec.key, doc, version=rec.version):
            return doc
    raise AnswerRefused("the incident kept changing while the answer was written; try again")


def _lead(doc: dict[str, Any]) -> dict[str, Any]:
    alerts = doc.get("alerts") or [{}]
    return alerts[0] if isinstance(alerts[0], dict) else {}


def _name(doc: dict[str, Any]) -> str:
    lead = _lead(doc)
    return str(lead.get("project_name") or lead.get("project") or "?")


def ack(store: Store, group: str, by: str, now: pd.Timestamp) -> Outcome:
    def change(doc: dict[str, Any]) -> dict[str, Any]:
        if doc.get("status") != "open":
            raise AnswerRefused("this incident is already resolved")
        return {**doc, "acked_by": by[:100], "acked_at": iso(now)}
    doc = _update(store, group, change)
    return Outcome(f"acknowledged by {by}: no more repeats; growth and \"resolved\" still go", answer_state(doc))


def unack(store: Store, group: str, by: str, now: pd.Timestamp) -> Outcome:
    doc = _update(store, group, lambda d: {**d, "acked_by": None, "acked_at": None})
    return Outcome(f"acknowledgement withdrawn by {by}: repeats resume", answer_state(doc))


def silence(store: Store, group: str, by: str, now: pd.Timestamp, hours: float) -> Outcome:
    if hours not in SILENCE_HOURS:
        raise AnswerRefused(f"silence for {hours} h is not offered; choose one of {SILENCE_HOURS}")
    rec = _load(store, group)
    project = str(_lead(rec.doc).get("project") or "")
    until = now + pd.Timedelta(hours=hours)
    s = silences.add(store, project=project, until=until, reason=f"silenced from Slack by {by}", now=now,
                     created_by=by)
    doc = _update(store, group, lambda d: {**d, "silence_id": s.id, "silenced_until": s.until, "silenced_by": by})
    return Outcome(f"silenced by {by} until {s.until} (silence {s.id})", answer_state(doc))


def unsilence(store: Store, group: str, by: str, now: pd.Timestamp) -> Outcome:
    rec = _load(store, group)
    sid = rec.doc.get("silence_id")
    if not sid:
        raise AnswerRefused("this incident is not silenced")
    silences.remove(store, str(sid))
    doc = _update(store, group, lambda d: {**d, "silence_id": None, "silenced_until": None, "silenced_by": None})
    return Outcome(f"silence {sid} ended by {by}", answer_state(doc))


PLANNED_DAYS = 14   # "expected": the new level is planned activity for this long; the answer itself lasts longer


def give_feedback(store: Store, group: str, by: str, now: pd.Timestamp, kind: str) -> Outcome:
    rec = _load(store, group)
    records = [feedback.from_alert(a, kind, by, now, incident=group) for a in rec.doc.get("alerts") or []
               if isinstance(a, dict) and a.get("fingerprint")]
    for fb in records:
        feedback.record(store, fb)
    planned = None
    lead = _lead(rec.doc)
    if kind == "expected" and lead.get("kind") != "mining_suspected" and lead.get("project"):
        # the same mark as `costwatch silence --planned --kind cost_spike`: detection accepts the level from
        # the incident's first days, so the band learns it instead of alerting daily; mining is never covered
        planned = silences.add(store, project=str(lead["project"]), until=now + pd.Timedelta(days=PLANNED_DAYS),
                               reason=f"expected: answered by {by}", kind="cost_spike", planned=True, now=now,
                               created_by=by)

    def change(doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc, "feedback_kind": kind, "feedback_by": by[:100], "feedback_at": iso(now),
                "feedback_ids": [f.id for f in records], "planned_id": planned.id if planned else None}
    doc = _update(store, group, change)
    what = ("expected: the new level is accepted as this project's baseline; a further jump or a miner still "
            "alerts") if kind == "expected" else ("not an anomaly: the same pattern on these series is held back; "
                                                  "a bigger one still alerts")
    return Outcome(f"marked {what} — by {by}", answer_state(doc))


def undo_feedback(store: Store, group: str, by: str, now: pd.Timestamp) -> Outcome:
    rec = _load(store, group)
    ids = rec.doc.get("feedback_ids") or []
    if not ids:
        raise AnswerRefused("no answer to undo on this incident")
    for fid in ids:
        feedback.remove(store, str(fid))
    if rec.doc.get("planned_id"):
        silences.remove(store, str(rec.doc["planned_id"]))
    doc = _update(store, group, lambda d: {**d, "feedback_kind": None, "feedback_by": None, "feedback_at": None,
                                           "feedback_ids": [], "planned_id": None})
    return Outcome(f"answer withdrawn by {by}: these series alert as before", answer_state(doc))


def apply(store: Store, action: str, group: str, by: str, now: pd.Timestamp, hours: float | None = None) -> Outcome:
    """One entry point for every surface."""
    out = _apply(store, action, group, by, now, hours)
    rec = store.get("incident", split_group(group)[0])
    if rec is not None:
        out.incident = f"{str(_lead(rec.doc).get('kind') or 'alert').replace('_', ' ')} in {_name(rec.doc)}"
    return out


def _apply(store: Store, action: str, group: str, by: str, now: pd.Timestamp, hours: float | None) -> Outcome:
    if action == "ack":
        return ack(store, group, by, now)
    if action == "unack":
        return unack(store, group, by, now)
    if action == "silence":
        return silence(store, group, by, now, float(hours or 0))
    if action == "unsilence":
        return unsilence(store, group, by, now)
    if action in feedback.KINDS:
        return give_feedback(store, group, by, now, action)
    if action == "undo":
        return undo_feedback(store, group, by, now)
    raise AnswerRefused(f"unknown answer {action[:40]!r}; expected one of {', '.join(ACTIONS)}")


__all__ = ["ACTIONS", "SILENCE_HOURS", "AnswerRefused", "Outcome", "answer_state", "apply", "split_group"]
