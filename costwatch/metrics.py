"""costwatch watching itself: what each run records, and its Prometheus and CloudWatch (EMF) forms.

Every ``costwatch run`` (successful or not) stores one small document in the state table ``metrics``
(key ``last``): when it ran, how long it took, whether it finished, the end of the newest cost day and CPU
hour per provider, active alerts by kind and severity, the outbox by state, provider errors and API
requests, broken channels.  The same document is rendered

* as Prometheus text (``costwatch metrics``, ``GET /metrics`` of ``costwatch serve``, the node-exporter
  textfile of ``costwatch run --metrics-textfile``), in its own :class:`CollectorRegistry` per rendering;
* as CloudWatch Embedded Metric Format log lines in Lambda (:func:`emit_emf`, AWS Lambda Powertools).

Every metric is a gauge describing the last run (a snapshot, so a textfile or a re-read state store gives
the same answer); every name starts with ``costwatch_``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from .state import Store

log = logging.getLogger("costwatch.metrics")

TABLE = "metrics"
KEY = "last"
KEEP_SECONDS = 400 * 86400
PREFIX = "costwatch_"
REQUEST_SUFFIXES = ("_requests", "_queries")

# name -> (help, label names); the exporter emits exactly these (deploy/prometheus/costwatch-rules.yaml uses them)
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "costwatch_last_run_timestamp_seconds": ("When the last costwatch run ended (Unix time).", ()),
    "costwatch_last_success_timestamp_seconds": ("When the last costwatch run that finished ended (Unix time).", ()),
    "costwatch_run_success": ("1 when the last run finished, 0 when it failed (every provider failed, state "
                              "unwritable, config error).", ()),
    "costwatch_run_duration_seconds": ("How long the last run took.", ()),
    "costwatch_data_end_timestamp_seconds": ("End of the newest cost day / CPU hour seen per provider (Unix "
                                             "time).", ("provider", "data")),
    "costwatch_data_age_seconds": ("Age of the newest cost day / CPU hour per provider at the last run.",
                                   ("provider", "data")),
    "costwatch_alerts_active": ("Active alerts in open incidents at the last run.", ("kind", "severity")),
    "costwatch_incidents_open": ("Open incidents at the last run.", ()),
    "costwatch_outbox_items": ("Notifications in the outbox by state after the last run.", ("state",)),
    "costwatch_outbox_oldest_pending_age_seconds": ("Age of the oldest notification still waiting to be "
                                                    "delivered (0 when none waits).", ()),
    "costwatch_notifications_delivered": ("Notifications delivered by the last run.", ()),
    "costwatch_channel_broken": ("1 for a notify channel that failed for good and is not working again.",
                                 ("channel",)),
    "costwatch_provider_errors": ("Parts (costs, usage, findings) a provider failed to fetch in the last run.",
                                  ("provider",)),
    "costwatch_provider_requests": ("API requests (and queries) a provider made in the last run.",
                                    ("provider", "api")),
    "costwatch_cost_explorer_requests": ("AWS Cost Explorer requests (billed per request) in the last run.",
                                         ("provider",)),
}


def _ts(t: Any) -> float | None:
    if t is None:
        return None
    ts = pd.Timestamp(t)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
    return float(ts.timestamp())


def data_ends(costs: pd.DataFrame, usage: pd.DataFrame) -> dict[str, dict[str, float]]:
    """provider -> {"cost": end of the newest cost day, "usage": end of the newest CPU hour} (Unix time)."""
    out: dict[str, dict[str, float]] = {}
    for frame, col, data, step in ((costs, "period_start", "cost", "D"), (usage, "timestamp", "usage", "h")):
        if frame is None or frame.empty or "provider" not in frame or col not in frame:
            continue
        for prov, t in frame.groupby("provider", observed=True)[col].max().items():
            if pd.isna(t):
                continue
            end = pd.Timestamp(t).floor(step) + pd.Timedelta(1, unit=step)
            out.setdefault(str(prov), {})[data] = _ts(end) or 0.0
    return out


def record(store: Store, *, result: Any | None, now: pd.Timestamp, started: float, finished: float,
           duration: float, error: BaseException | None = None) -> dict[str, Any]:
    """Build and store this run's document; never raises for the store (the run's outcome matters more)."""
    prev = load(store, quiet=True) or {}
    doc: dict[str, Any] = {
        "version": 1, "started_at": started, "finished_at": finished, "duration_seconds": round(duration, 3),
        "success": error is None, "now": _ts(now),
        "last_success_at": finished if error is None else prev.get("last_success_at"),
        "error": type(error).__name__ if error is not None else None,
    }
    if result is not None:
        alerts = Counter((str(k), str(s)) for k, s in getattr(result, "alert_kinds", []))
        stats = getattr(result, "provider_stats", {}) or {}
        requests = {p: {k: int(v) for k, v in st.items() if isinstance(v, int | float) and not isinstance(v, bool)
                        and k.endswith(REQUEST_SUFFIXES)} for p, st in stats.items()}
        doc.update(
            data_end=getattr(result, "data_end", {}), alerts=[[k, s, c] for (k, s), c in sorted(alerts.items())],
            incidents_open=result.incidents_open, delivered=result.delivery.delivered,
            provider_errors={p: len(parts) for p, parts in (getattr(result, "provider_failed", {}) or {}).items()},
            provider_requests=requests,
            cost_explorer_requests={p: int(st.get("ce_requests", 0)) for p, st in stats.items()
                                    if "ce_requests" in st},
            broken_channels=sorted(getattr(result, "broken_channels", {}) or {}))
    else:
        for k in ("data_end", "provider_requests", "cost_explorer_requests"):
            if k in prev:
                doc[k] = prev[k]  # a failed run learnt nothing new: keep what the last one saw
    try:
        doc.update(outbox_state(store, now))
        if not _replace(store, doc):
            log.warning("run metrics not stored: the record kept changing under us")
    except Exception as e:  # metrics never hide the run's own outcome
        log.warning("run metrics not stored: %s", type(e).__name__)
    return doc


def _replace(store: Store, doc: dict[str, Any]) -> bool:
    for _ in range(3):
        rec = store.get(TABLE, KEY)
        if store.put(TABLE, KEY, doc, version=rec.version if rec else None, expires_at=time.time() + KEEP_SECONDS):
            return True
    return False


def outbox_state(store: Store, now: pd.Timestamp) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    oldest: pd.Timestamp | None = None
    for r in store.scan("outbox"):
        st = str(r.doc.get("status"))
        counts[st] += 1
        if st in ("pending", "sending") and r.doc.get("created_at"):
            t = pd.Timestamp(r.doc["created_at"])
            oldest = t if oldest is None or t < oldest else oldest
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return {"outbox": dict(counts), "outbox_oldest_pending_age_seconds": age}


def load(store: Store, *, quiet: bool = False) -> dict[str, Any] | None:
    try:
        rec = store.get(TABLE, KEY)
    except Exception:
        if quiet:
            return None
        raise
    return rec.doc if rec else None


def registry(doc: dict[str, Any]) -> Any:
    """A fresh Prometheus registry holding the document's gauges (never the process-global one)."""
    from prometheus_client import CollectorRegistry, Gauge

    reg = CollectorRegistry(auto_describe=True)
    g = {name: Gauge(name, help_, list(labels), registry=reg) for name, (help_, labels) in METRICS.items()}
    g["costwatch_last_run_timestamp_seconds"].set(float(doc.get("finished_at") or 0))
    g["costwatch_last_success_timestamp_seconds"].set(float(doc.get("last_success_at") or 0))
    g["costwatch_run_success"].set(1 if doc.get("success") else 0)
    g["costwatch_run_duration_seconds"].set(float(doc.get("duration_seconds") or 0))
    now = float(doc.get("now") or doc.get("finished_at") or 0)
    for prov, ends in (doc.get("data_end") or {}).items():
        for data, end in ends.items():
            g["costwatch_data_end_timestamp_seconds"].labels(prov, data).set(float(end))
            g["costwatch_data_age_seconds"].labels(prov, data).set(max(0.0, now - float(end)))
    for kind, sev, count in doc.get("alerts") or []:
        g["costwatch_alerts_active"].labels(kind, sev).set(count)
    g["costwatch_incidents_open"].set(int(doc.get("incidents_open") or 0))
    outbox = doc.get("outbox") or {}
    for state in sorted(set(outbox) | {"pending", "sending", "delivered", "failed", "digested"}):
        g["costwatch_outbox_items"].labels(state).set(int(outbox.get(state, 0)))
    g["costwatch_outbox_oldest_pending_age_seconds"].set(float(doc.get("outbox_oldest_pending_age_seconds") or 0))
    g["costwatch_notifications_delivered"].set(int(doc.get("delivered") or 0))
    for ch in doc.get("broken_channels") or []:
        g["costwatch_channel_broken"].labels(ch).set(1)
    for prov, n in (doc.get("provider_errors") or {}).items():
        g["costwatch_provider_errors"].labels(prov).set(n)
    for prov, reqs in (doc.get("provider_requests") or {}).items():
        for key, n in reqs.items():
            api = key
            for suffix in REQUEST_SUFFIXES:
                api = api.removesuffix(suffix)
            g["costwatch_provider_requests"].labels(prov, api).set(n)
    for prov, n in (doc.get("cost_explorer_requests") or {}).items():
        g["costwatch_cost_explorer_requests"].labels(prov).set(n)
    return reg


def text(doc: dict[str, Any]) -> str:
    """The Prometheus text exposition of a run's document."""
    from prometheus_client import generate_latest

    return generate_latest(registry(doc)).decode("utf-8")


def write_textfile(path: Path | str, doc: dict[str, Any]) -> None:
    """For node-exporter's textfile collector: written to a temporary file next to ``path``, then renamed,
    so the collector never reads half a file."""
    from prometheus_client import write_to_textfile

    write_to_textfile(str(path), registry(doc))


def emit_emf(doc: dict[str, Any], *, service: str = "costwatch") -> None:
    """The run's document as CloudWatch Embedded Metric Format lines on stdout (namespace "costwatch"), via
    AWS Lambda Powertools' Metrics; per-kind, per-provider and per-channel values carry that dimension."""
    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.metrics import MetricUnit, single_metric

    m = Metrics(namespace="costwatch", service=service)
    m.add_metric(name="run_success", unit=MetricUnit.Count, value=1 if doc.get("success") else 0)
    m.add_metric(name="run_duration_seconds", unit=MetricUnit.Seconds, value=float(doc.get("duration_seconds") or 0))
    m.add_metric(name="incidents_open", unit=MetricUnit.Count, value=int(doc.get("incidents_open") or 0))
    m.add_metric(name="alerts_active", unit=MetricUnit.Count, value=sum(int(c) for _, _, c in doc.get("alerts") or []))
    m.add_metric(name="notifications_delivered", unit=MetricUnit.Count, value=int(doc.get("delivered") or 0))
    outbox = doc.get("outbox") or {}
    for state in ("pending", "failed"):
        m.add_metric(name=f"outbox_{state}", unit=MetricUnit.Count, value=int(outbox.get(state, 0)))
    m.add_metric(name="outbox_oldest_pending_age_seconds", unit=MetricUnit.Seconds,
                 value=float(doc.get("outbox_oldest_pending_age_seconds") or 0))
    m.add_metric(name="provider_errors", unit=MetricUnit.Count,
                 value=sum(int(n) for n in (doc.get("provider_errors") or {}).values()))
    m.add_metric(name="cost_explorer_requests", unit=MetricUnit.Count,
                 value=sum(int(n) for n in (doc.get("cost_explorer_requests") or {}).values()))
    m.add_metric(name="channels_broken", unit=MetricUnit.Count, value=len(doc.get("broken_channels") or []))
    m.flush_metrics()
    now = float(doc.get("now") or doc.get("finished_at") or 0)
    for prov, ends in (doc.get("data_end") or {}).items():
        for data, end in ends.items():
            with single_metric(name="data_age_seconds", unit=MetricUnit.Seconds, value=max(0.0, now - float(end)),
                               namespace="costwatch", default_dimensions={"service": service}) as one:
                one.add_dimension(name="provider", value=str(prov))
                one.add_dimension(name="data", value=str(data))
    kinds: Counter[str] = Counter()
    for kind, _, count in doc.get("alerts") or []:
        kinds[str(kind)] += int(count)
    for kind, count in sorted(kinds.items()):
        with single_metric(name="alerts_active_by_kind", unit=MetricUnit.Count, value=count, namespace="costwatch",
                           default_dimensions={"service": service}) as one:
            one.add_dimension(name="kind", value=kind)


__all__ = ["METRICS", "data_ends", "emit_emf", "load", "record", "registry", "text", "write_textfile"]
