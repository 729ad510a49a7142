"""Silences and planned-activity marks: an owner says "I know" (or "this is planned") for a project, an
optional alert kind, until a time.  Stored in state with a TTL so they expire on their own, shown in
reports, and matched before routing so a silenced alert is counted but never sent."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from .alerts import ALERT_KINDS, Alert, iso
from .errors import ConfigError
from .state import Store

PLANNED_KEEP_SECONDS = 120 * 86400  # longer than any history the bands read


@dataclass
class Silence:
    id: str
    project: str
    until: str          # ISO 8601 UTC
    reason: str
    kind: str | None = None
    planned: bool = False
    created_at: str = ""
    created_by: str = ""

    def matches(self, alert: Alert, now: pd.Timestamp) -> bool:
        return (self.project in (alert.project, alert.project_name, "*")
                and (self.kind is None or self.kind == alert.kind)
                and pd.Timestamp(self.until) > now)


def add(store: Store, *, project: str, until: pd.Timestamp, reason: str, kind: str | None = None,
        planned: bool = False, now: pd.Timestamp | None = None, created_by: str = "") -> Silence:
    now = now or pd.Timestamp.now(tz="UTC")
    if not project.strip():
        raise ConfigError("silence: --project is required (an id, a name, or * for every project)")
    if kind is not None and kind not in ALERT_KINDS:
        raise ConfigError(f"silence: unknown kind {kind!r}; expected one of: {', '.join(ALERT_KINDS)}")
    if until <= now:
        raise ConfigError(f"silence: --until {iso(until)} is in the past")
    if not reason.strip():
        raise ConfigError("silence: --reason is required, so the next person knows why alerts are quiet")
    s = Silence(id=secrets.token_hex(4), project=project.strip(), until=iso(until) or "", reason=reason.strip()[:500],
                kind=kind, planned=planned, created_at=iso(now) or "", created_by=created_by[:100])
    # the TTL counts in wall-clock time, also when ``now`` is a replayed time.  A planned mark outlives its
    # end: detection keeps accepting the level it covered for as long as that is in the bands' history
    keep = PLANNED_KEEP_SECONDS if planned else 86400
    ttl = time.time() + (until - now).total_seconds() + keep
    store.put("silence", s.id, asdict(s), version=None, expires_at=ttl)
    return s


def active(store: Store, now: pd.Timestamp | None = None) -> list[Silence]:
    now = now or pd.Timestamp.now(tz="UTC")
    out = [Silence(**_known(r.doc)) for r in store.scan("silence")]
    return sorted((s for s in out if pd.Timestamp(s.until) > now), key=lambda s: s.until)


def planned(store: Store) -> list[Silence]:
    """Every planned-activity mark still stored, ended ones included: a cost level they accepted stays
    accepted (``detect(planned=...)``) while it is in the bands' history."""
    out = [Silence(**_known(r.doc)) for r in store.scan("silence")]
    return sorted((s for s in out if s.planned), key=lambda s: s.until)


def remove(store: Store, silence_id: str) -> bool:
    if store.get("silence", silence_id) is None:
        return False
    store.delete("silence", silence_id)
    return True


def matching(silences: list[Silence], alert: Alert, now: pd.Timestamp) -> Silence | None:
    return next((s for s in silences if s.matches(alert, now)), None)


def _known(doc: dict[str, Any]) -> dict[str, Any]:
    fields = Silence.__dataclass_fields__
    return {k: v for k, v in doc.items() if k in fields}


__all__ = ["Silence", "active", "add", "matching", "planned", "remove"]
