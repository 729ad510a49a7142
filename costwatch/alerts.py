"""Alerts: what detection emits and what routing, state and notifiers consume.

Like Alertmanager, an alert's identity is a fingerprint over its labels (kind, provider, project, scope),
not over its numbers, so the same incident seen by two runs, or growing between them, keeps one identity.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pandas as pd

AlertKind = Literal["mining_suspected", "cost_spike", "threshold_exceeded", "budget_forecast_exceeded"]
Severity = Literal["critical", "high", "warning", "info"]
ALERT_KINDS: tuple[str, ...] = ("mining_suspected", "cost_spike", "threshold_exceeded",
                                "budget_forecast_exceeded")
SEVERITY_ORDER = {"critical": 0, "high": 1, "warning": 2, "info": 3}


def fingerprint(kind: str, provider: str, project: str, scope: str = "") -> str:
    """Stable id from labels only; numbers and times change as an incident grows, identity must not."""
    raw = "\x1f".join((kind, provider, project, scope))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


@dataclass
class Alert:
    kind: str
    project: str
    project_name: str
    provider: str
    start: pd.Timestamp
    detected_at: pd.Timestamp
    severity: str
    observed: float
    expected: float
    lower: float
    upper: float
    currency: str
    score: float
    service: str | None = None
    region: str | None = None
    summary: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    scope: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.kind, self.provider, self.project, self.scope)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: times as ISO 8601 UTC, floats rounded for humans but not truncated to zero."""
        d = asdict(self)
        d.pop("scope")
        for key in ("start", "detected_at"):
            d[key] = iso(d[key])
        for key in ("observed", "expected", "lower", "upper", "score"):
            d[key] = _round(d[key])
        d["fingerprint"] = self.fingerprint
        d["evidence"] = _jsonable(d["evidence"])
        return d


def iso(ts: pd.Timestamp | None) -> str | None:
    if ts is None or pd.isna(ts):
        return None
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _round(x: float | None) -> float | None:
    if x is None or pd.isna(x):
        return None
    return float(round(float(x), 4))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, pd.Timestamp):
        return iso(obj)
    if hasattr(obj, "item") and not isinstance(obj, str):  # numpy scalars
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return None if obj != obj else round(obj, 4)
    return obj
