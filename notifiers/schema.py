"""``costwatch.notification/v1``: the JSON document the webhook POSTs and SNS publishes (README, "Channels").

Stable for receivers: fields are only ever added within v1; a change that breaks a reader gets v2.  The
document is bounded (``max_bytes``): when the full evidence does not fit, later alerts lose their evidence,
then whole alerts are dropped, and ``truncated`` is true with ``alert_count`` still the full number.
Values that came from cloud data (project names, tags, summaries) are data: receivers escape them for
wherever they show them.
"""

from __future__ import annotations

import json
from typing import Any

from costwatch.notify import Notification

SCHEMA = "costwatch.notification/v1"
SEVERITY_ORDER = {"critical": 0, "high": 1, "warning": 2, "info": 3}


def worst_severity(n: Notification) -> str:
    sevs = [str(a.get("severity")) for a in n.alerts if isinstance(a, dict) and a.get("severity")]
    return min(sevs, key=lambda s: SEVERITY_ORDER.get(s, 9), default="info")


def lead(n: Notification) -> dict[str, Any]:
    """The most severe alert (the one that names the incident)."""
    alerts = [a for a in n.alerts if isinstance(a, dict)]
    return min(alerts, key=lambda a: SEVERITY_ORDER.get(str(a.get("severity")), 9)) if alerts else {}


def document(n: Notification, alerts: list[dict[str, Any]] | None = None, truncated: bool = False) -> dict[str, Any]:
    shown = [a for a in n.alerts if isinstance(a, dict)] if alerts is None else alerts
    return {
        "schema": SCHEMA, "id": n.id, "event": n.event, "incident": n.group_key, "sequence": n.sequence,
        "title": n.title, "severity": worst_severity(n), "owner": n.owner, "created_at": n.created_at,
        "labels": dict(n.labels or {}), "alert_count": len([a for a in n.alerts if isinstance(a, dict)]),
        "truncated": truncated, "alerts": shown,
    }


def encode(n: Notification, max_bytes: int) -> bytes:
    """The v1 document as compact UTF-8 JSON of at most ``max_bytes`` (see the module docstring)."""
    alerts = [a for a in n.alerts if isinstance(a, dict)]
    body = _dump(document(n))
    if len(body) <= max_bytes:
        return body
    slim = alerts[:1] + [{k: v for k, v in a.items() if k != "evidence"} for a in alerts[1:]]
    for candidate in (slim, [{k: v for k, v in a.items() if k != "evidence"} for a in alerts]):
        keep = list(candidate)
        while keep:
            body = _dump(document(n, keep, truncated=True))
            if len(body) <= max_bytes:
                return body
            keep = keep[: len(keep) // 2] if len(keep) > 1 else []
    return _dump(document(n, [], truncated=True))


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(_finite(doc), separators=(",", ":"), ensure_ascii=False, default=str,
                      allow_nan=False).encode("utf-8")


def _finite(x: Any) -> Any:
    """NaN and infinities (not JSON) as null."""
    if isinstance(x, float):
        return x if x == x and x not in (float("inf"), float("-inf")) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


__all__ = ["SCHEMA", "document", "encode", "lead", "worst_severity"]
