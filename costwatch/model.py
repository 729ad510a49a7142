"""The normalized data model every provider produces and every detector reads.

Two long-format pandas frames with fixed columns and dtypes.  Keeping them long (one row per charge or per
sample) lets providers append freely and lets detection pivot to wide matrices in one vectorized step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError, where

# Columns of the cost frame, in order, with their dtypes.  ``tags`` holds dicts (object dtype).
COST_COLUMNS: dict[str, str] = {
    "period_start": "datetime64[ns, UTC]",
    "period_hours": "float64",
    "provider": "string",
    "project_id": "string",
    "project_name": "string",
    "service": "string",
    "service_category": "string",
    "region": "string",
    "charge_category": "string",
    "resource_id": "string",
    "billed_cost": "float64",
    "effective_cost": "float64",
    "currency": "string",
    "tags": "object",
    "estimated": "bool",
}

USAGE_COLUMNS: dict[str, str] = {
    "timestamp": "datetime64[ns, UTC]",
    "provider": "string",
    "project": "string",
    "node": "string",
    "cpu_utilization": "float64",
    "cluster": "string",
    "region": "string",
    "instance_type": "string",
    # optional: the project's display name where the provider knows it (a subscription whose costs could not
    # be read still has a name); detection falls back to the cost data's name, then the id
    "project_name": "string",
    # optional: the cloud's own id of a node named otherwise (GCE's numeric instance id), kept for evidence
    "instance_id": "string",
}

REQUIRED_USAGE = ("timestamp", "provider", "project", "node", "cpu_utilization")

# Cloud security findings of crypto mining (GuardDuty and the like): evidence joined onto mining alerts.
FINDING_COLUMNS: dict[str, str] = {
    "provider": "string",
    "project": "string",
    "region": "string",
    "node": "string",
    "cluster": "string",
    "type": "string",
    "severity": "float64",
    "title": "string",
    "finding_id": "string",
    "first_seen": "datetime64[ns, UTC]",
    "last_seen": "datetime64[ns, UTC]",
}



@dataclass(frozen=True)
class ScopeFailure:
    """One part of a provider's reach that could not be read this run (a region, an account, a project, a
    subscription) while the rest was: the report's ``errors`` and run's warnings name it with what to grant
    or do.  Providers fill these; they know nothing of detection, which only sees the data that came."""

    provider: str   # the provider's configured name
    scope: str      # "region us-east-1", "account 111111111111 region eu-west-1", "project p", "subscription s"
    failed: str     # what failed
    fix: str = ""   # what to grant or do ("" when nothing but waiting helps)

    @classmethod
    def from_error(cls, provider: str, scope: str, error: object) -> ScopeFailure:
        """From a provider error message, which costwatch writes as ``<cloud>: what failed; what to do``."""
        text = _CLOUD_PREFIX.sub("", str(error).strip())
        failed, _, fix = text.partition("; ")
        return cls(provider, scope, failed, fix)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.provider} {self.scope}: {self.failed}" + (f"; {self.fix}" if self.fix else "")


_CLOUD_PREFIX = re.compile(r"^(?:aws|gcp|azure): ")

# Charge categories (FOCUS) whose rows are real consumption; the rest (credits, refunds, taxes,
# purchases) are kept in the frame but are not read as spend that can spike.
USAGE_CHARGES = frozenset({"usage"})
COMPUTE_CATEGORY = "Compute"


def empty_costs() -> pd.DataFrame:
    return _empty(COST_COLUMNS)


def empty_usage() -> pd.DataFrame:
    return _empty(USAGE_COLUMNS)


def empty_findings() -> pd.DataFrame:
    return _empty(FINDING_COLUMNS)


def _empty(columns: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=d) for c, d in columns.items()})


# Where a row came from: a constant offset (row index + offset = line, the common case), or one line
# number per row for files with blank lines or quoted values that span lines.
LineMap = int | np.ndarray


def line_of(lines: LineMap, pos: int) -> int:
    """The file line (or 1-based row) of row ``pos``, for error messages."""
    return int(lines[pos]) if isinstance(lines, np.ndarray) else pos + lines


# The times a nanosecond frame can hold, from the first whole UTC day (a charge's day must be representable too,
# as ``baseline.daily_matrix`` floors to it) to pandas' last nanosecond.  Earlier or later times are refused
# with a located error rather than failing later as pandas' OutOfBoundsDatetime.
FIRST_TIME = pd.Timestamp("1677-09-22", tz="UTC")
LAST_TIME = pd.Timestamp.max.tz_localize("UTC")
TIME_RANGE = "costwatch reads times from 1677-09-22 to 2262-04-11 UTC"


def out_of_range_message(shown: str) -> str:
    return f"is out of range: {shown[:40]!r} ({TIME_RANGE})"


def _is_out_of_range(text: str) -> bool:
    """Whether ``text`` is a real ISO 8601 time that a nanosecond frame cannot hold, which ``to_datetime``
    reports as unparseable; ``Timestamp`` parses it at a coarser unit.  Only called on an error path, and only
    for years near or outside the range (so text that is merely malformed is never parsed twice)."""
    import re

    year = re.match(r"\s*([+-]?\d{4,})-\d\d", text, re.ASCII)
    if year is None or FIRST_TIME.year < int(year.group(1)) < LAST_TIME.year:
        return False
    try:
        ts = pd.Timestamp(text.strip())
    except (ValueError, TypeError, OverflowError):
        return False
    if ts is pd.NaT:
        return False
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return bool(ts < FIRST_TIME or ts > LAST_TIME)


def to_utc(values: pd.Series, *, file: str | None, column: str, line_offset: LineMap = 2) -> pd.Series:
    """Parse timestamps to UTC; naive times are taken as UTC (FOCUS and CloudWatch both mean UTC).

    Raises a DataError naming the first unparseable row, since a silently dropped hour is a missed miner.
    ``format="mixed"`` parses value by value, so a column mixing offsets and naive times is read right
    (the ISO 8601 fast path of ``focus.parse_times`` is not, and splits such columns first).
    """
    raw = values.astype("string")
    parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
    bad = parsed.isna() & raw.notna() & (raw.str.strip() != "")
    missing = raw.isna() | (raw.str.strip() == "")
    if bad.any() or missing.any():
        pos = int(np.flatnonzero((bad | missing).to_numpy())[0])
        shown = str(raw.iloc[pos])
        if missing.iloc[pos]:
            what = "is empty"
        elif _is_out_of_range(shown):
            what = out_of_range_message(shown)
        else:
            what = f"is not a timestamp: {shown[:40]!r}"
        raise DataError(f"{where(file, line_of(line_offset, pos), column)}{what}")
    return parsed.astype("datetime64[ns, UTC]")


# Every amount read (a row's BilledCost or EffectiveCost) is finite and below this in magnitude: a trillion per
# row is far beyond any real charge, and keeps every daily or monthly sum of them a finite float.
MAX_AMOUNT = 1e12


def amount_message(shown: str) -> str:
    return f"is out of range: {shown[:40]} (costwatch reads amounts between -1e12 and 1e12 per row)"


def to_float(values: pd.Series, *, file: str | None, column: str, line_offset: LineMap = 2,
             allow_missing: bool = False, limit: float | None = None) -> pd.Series:
    """Parse numbers, naming the first bad row; FOCUS's literal ``NULL`` counts as missing.  ``limit``: the
    largest magnitude accepted (exclusive), e.g. ``MAX_AMOUNT``."""
    raw = values.astype("string").str.strip()
    missing = raw.isna() | raw.isin(["", "NULL", "null", "None", "NaN", "nan"])
    parsed = pd.to_numeric(raw.mask(missing), errors="coerce").astype("float64")
    # pandas' parser stops at a NUL ("12.5\x00" is 12.5): a control character inside a number is not a number
    bad = (parsed.isna() | raw.str.contains(r"[\x00-\x1f\x7f]", regex=True).fillna(False)) & ~missing
    if not np.isfinite(parsed.fillna(0.0).to_numpy()).all():
        bad = bad | ~np.isfinite(parsed.fillna(0.0))
    big = (parsed.abs() >= limit).fillna(False) & ~bad if limit is not None else pd.Series(False, index=raw.index)
    if bad.any() or big.any() or (missing.any() and not allow_missing):
        pos = int(np.flatnonzero((bad | big | (missing & (not allow_missing))).to_numpy())[0])
        if missing.iloc[pos]:
            what = "is empty"
        elif big.iloc[pos]:
            what = amount_message(str(raw.iloc[pos]))
        else:
            what = f"is not a number: {str(raw.iloc[pos])[:40]!r}"
        raise DataError(f"{where(file, line_of(line_offset, pos), column)}{what}")
    return parsed


def normalize_costs(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce a provider's frame to COST_COLUMNS (adding defaults), so downstream code can trust dtypes."""
    out = pd.DataFrame(index=df.index)
    n = len(df)
    for col, dtype in COST_COLUMNS.items():
        if col in df.columns:
            s = df[col]
        elif col == "period_hours":
            s = pd.Series(24.0, index=df.index)
        elif col == "estimated":
            s = pd.Series(False, index=df.index)
        elif col == "tags":
            s = pd.Series([{} for _ in range(n)], index=df.index, dtype="object")
        elif col == "effective_cost" and "billed_cost" in df.columns:
            s = df["billed_cost"]
        elif col == "project_name" and "project_id" in df.columns:
            s = df["project_id"]
        else:
            s = pd.Series(pd.NA, index=df.index)
        if dtype.startswith("datetime"):
            s = pd.to_datetime(s, utc=True).astype(dtype)
        elif dtype == "object":
            s = s.astype(object)
        elif dtype == "bool":
            s = s.fillna(False).astype(bool)
        else:
            s = s.astype(dtype)
        out[col] = s
    return out.reset_index(drop=True)


def normalize_usage(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=df.index)
    for col, dtype in USAGE_COLUMNS.items():
        s = df[col] if col in df.columns else pd.Series(pd.NA, index=df.index)
        if dtype.startswith("datetime"):
            s = pd.to_datetime(s, utc=True).astype(dtype)
        else:
            s = s.astype(dtype)
        out[col] = s
    return out.reset_index(drop=True)


def validate_costs(df: pd.DataFrame, source: str = "cost frame") -> None:
    """Check the invariants detectors rely on; raise DataError naming the row and column."""
    _validate(df, COST_COLUMNS, source)
    for col in ("provider", "project_id", "currency"):
        _no_missing(df, col, source)
    bad = ~(df["period_hours"] > 0)
    if bad.any():
        _raise_row(source, bad, "period_hours", "must be a positive length (end after start)")


def validate_usage(df: pd.DataFrame, source: str = "usage frame") -> None:
    _validate(df, USAGE_COLUMNS, source)
    for col in ("provider", "project", "node"):
        _no_missing(df, col, source)
    cpu = df["cpu_utilization"]
    bad = cpu.isna() | (cpu < 0) | (cpu > 100)
    if bad.any():
        _raise_row(source, bad, "cpu_utilization", "must be a percentage between 0 and 100")


def _validate(df: pd.DataFrame, columns: Mapping[str, str], source: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing columns {', '.join(missing)}")
    ts = next(c for c in columns if columns[c].startswith("datetime"))
    if not isinstance(df[ts].dtype, pd.DatetimeTZDtype):
        raise DataError(f"{source}: column {ts} must be timezone-aware UTC timestamps")


def _no_missing(df: pd.DataFrame, col: str, source: str) -> None:
    bad = df[col].isna() | (df[col].astype("string").str.strip() == "")
    if bad.any():
        _raise_row(source, bad, col, "is empty")


def _raise_row(source: str, mask: pd.Series, col: str, what: str) -> None:
    pos = int(np.flatnonzero(mask.fillna(True).to_numpy())[0])
    raise DataError(f"{where(source, None, col)}row {pos} {what}")


def parse_tags(value: Any) -> dict[str, str]:
    """Tags arrive as JSON objects, dicts, or nothing; always give back a plain ``dict[str, str]``."""
    import json

    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return {}
    text = str(value).strip()
    if not text or text.upper() == "NULL":
        return {}
    try:
        obj = json.loads(text)
        if not isinstance(obj, dict):
            raise ValueError("Tags must be a JSON object")
        return {str(k): str(v) for k, v in obj.items()}
    except RecursionError:
        # json (and str() of what it built) recurse once per level: thousands of nested brackets are not
        # tags, and are refused like any other text that is not a JSON object of tags
        raise ValueError("Tags are nested too deeply") from None
