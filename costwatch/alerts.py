"""Alerts: what detection emits and what routing, state and notifiers consume.

Like Alertmanager, an alert's identity is a fingerprint over its labels (kind, provider, project, scope),
not over its numbers, so the same incident seen by two runs, or growing between them, keeps one identity.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
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

    def __post_init__(self) -> None:
        # the one place every alert passes: evidence is built from frames (pandas NA, NaN, numpy scalars),
        # and report, state and notifiers must all read plain JSON values
        self.evidence = plain(self.evidence)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.kind, self.provider, self.project, self.scope)

    @property
    def origin(self) -> str:
        """``provider:project`` as shown to people; a monitor's id (``monitor:<name>``) already says what it is."""
        return self.project if self.provider == "monitor" else f"{self.provider}:{self.project}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: times as ISO 8601 UTC, floats rounded for humans but not truncated to zero."""
        d = asdict(self)
        d.pop("scope")
        for key in ("start", "detected_at"):
            d[key] = iso(d[key])
        for key in ("observed", "expected", "lower", "upper", "score"):
            d[key] = _round(d[key])
        d["fingerprint"] = self.fingerprint
        d["evidence"] = plain(d["evidence"], digits=4)
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


def finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None (missing, text, NaN, infinities)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def plain(obj: Any, digits: int | None = None) -> Any:
    """``obj`` as plain JSON values: missing values (None, pandas NA/NaT, NaN, infinities) become None,
    numpy scalars Python ones, times ISO 8601 UTC strings, tuples and sets lists; ``digits`` rounds floats
    (for reports).  Strict ``json.dumps(..., allow_nan=False)`` accepts the result."""
    if isinstance(obj, dict):
        return {str(k): plain(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [plain(v, digits) for v in obj]
    if obj is None or obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, datetime):  # pd.Timestamp too
        return iso(pd.Timestamp(obj))
    if hasattr(obj, "item") and not isinstance(obj, str | bytes):  # numpy scalars (numpy.datetime64 too)
        item = obj.item()
        return plain(pd.Timestamp(obj) if isinstance(item, int) and "datetime" in str(obj.dtype) else item, digits)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return round(obj, digits) if digits is not None else obj
    return obj
