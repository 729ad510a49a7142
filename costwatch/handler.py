"""AWS Lambda entry point (``costwatch.handler.handle``): exactly what ``costwatch run`` does, on a schedule.

Config comes from, in order: ``COSTWATCH_CONFIG_SSM`` (an SSM parameter holding the YAML),
``COSTWATCH_CONFIG_YAML`` (the YAML itself), ``COSTWATCH_CONFIG`` (a path, default ``costwatch.yaml``
in the package).  Secrets stay out of the config: every parameter under ``COSTWATCH_SECRETS_PATH`` (an SSM
path such as ``/costwatch/secrets/``) is read with decryption and exposed to ``${VAR}`` interpolation by
its last path segment (``/costwatch/secrets/SLACK_BOT_TOKEN`` → ``${SLACK_BOT_TOKEN}``).

Lambda retries a failed invocation and can overlap a slow one with the next schedule.  Both are safe: the
run takes a lock in the state table (a conditional write with a TTL), and notification ids make a retried
send a no-op.  An invocation that finds the lock held returns ``{"status": "skipped"}`` rather than failing,
so it is not retried in turn.

Logs are one JSON object per line (CloudWatch Logs Insights can query them) and never carry secrets.  Each
run's metrics (:mod:`costwatch.metrics`) also go to stdout as CloudWatch Embedded Metric Format lines
(namespace ``costwatch``, AWS Lambda Powertools' Metrics), which CloudWatch turns into metrics.
Heavy imports (pandas, the providers) happen inside :func:`handle`, so the module imports fast.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger("costwatch")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"level": record.levelname, "logger": record.name, "message": record.getMessage(),
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))}
        extra = getattr(record, "costwatch", None)
        if isinstance(extra, dict):
            doc.update(extra)
        return json.dumps(doc, default=str)


def setup_logging() -> None:
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        for h in list(root.handlers):  # Lambda's bootstrap installs a plain-text handler
            root.removeHandler(h)
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(JsonFormatter())
        root.addHandler(h)
    root.setLevel(os.environ.get("COSTWATCH_LOG_LEVEL", "INFO"))
    for noisy in ("botocore", "boto3", "urllib3", "slack_sdk", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _ssm() -> Any:
    import boto3

    return boto3.client("ssm")


def load_secrets(path: str, client: Any = None) -> list[str]:
    """Put every SecureString/String under ``path`` into the environment; returns the names (not values)."""
    client = client or _ssm()
    names: list[str] = []
    params: dict[str, Any] = {"Path": path, "Recursive": True, "WithDecryption": True}
    while True:
        page = client.get_parameters_by_path(**params)
        for p in page.get("Parameters", []):
            name = str(p["Name"]).rstrip("/").rsplit("/", 1)[-1]
            os.environ[name] = str(p["Value"])
            names.append(name)
        if not page.get("NextToken"):
            return names
        params["NextToken"] = page["NextToken"]


def load_handler_config(client: Any = None) -> Any:
    from .config import load_config, parse_config

    if os.environ.get("COSTWATCH_CONFIG_SSM"):
        name = os.environ["COSTWATCH_CONFIG_SSM"]
        text = (client or _ssm()).get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        return parse_config(text, source=f"ssm:{name}")
    if os.environ.get("COSTWATCH_CONFIG_YAML"):
        return parse_config(os.environ["COSTWATCH_CONFIG_YAML"], source="COSTWATCH_CONFIG_YAML")
    path = Path(os.environ.get("COSTWATCH_CONFIG", "costwatch.yaml"))
    if not path.is_absolute():
        path = Path(os.environ.get("LAMBDA_TASK_ROOT", ".")) / path
    return load_config(path)


def summary(result: Any) -> dict[str, Any]:
    """What a person reading the log (or the invocation result) wants: alerts, deliveries, gaps, cost."""
    alerts = result.detection.alerts if result.detection is not None else []
    stats = result.provider_stats
    return {
        "status": "ok" if result.exit_code == 0 else "stuck",
        "as_of": result.as_of.isoformat(),
        "alerts_by_kind": dict(Counter(a.kind for a in alerts)),
        "alerts_active": result.alerts_active,
        "incidents_open": result.incidents_open,
        "silenced": result.silenced,
        "queued": result.queued,
        "delivered": result.delivery.delivered,
        "pending": result.delivery.pending,
        "failed": result.delivery.failed,
        "stuck": result.delivery.stuck,
        "digests": result.delivery.digests,
        "digested": result.delivery.digested,
        "deferred": result.delivery.deferred,
        "delivered_after_retry": len(result.delivery.retried),
        "delivery_errors": result.delivery.errors[:20],
        "broken_channels": dict(result.broken_channels),
        "provider_errors": result.provider_errors[:20],
        "not_read": [f.to_dict() for f in (result.gathered.failures if result.gathered else [])][:20],
        "cost_explorer_requests": sum(int(s.get("ce_requests", 0)) for s in stats.values()),
        "providers": {name: {k: v for k, v in s.items() if not isinstance(v, list | dict)}
                      for name, s in stats.items()},
    }


# kept back from the Lambda's remaining time for detection, delivery and writing state after the fetches
RESERVE_SECONDS = 90.0


def provider_deadline(cfg: Any, context: Any = None) -> float:
    """Seconds each provider may fetch: ``alerting.provider_timeout``, cut so that all providers (fetched one
    after the other) finish with :data:`RESERVE_SECONDS` left of the invocation.  A hung provider must end as
    "timed out" in the summary with the alerts of the others delivered, not as a Lambda timeout that loses
    the whole run."""
    configured = float(cfg.alerting.provider_timeout_td.total_seconds())
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(remaining_ms):
        return configured
    share = (remaining_ms() / 1000.0 - RESERVE_SECONDS) / max(1, len(cfg.providers))
    return max(5.0, min(configured, share))


def _emit(doc: dict[str, Any]) -> None:
    """The run's metrics as EMF lines on stdout; never the reason an invocation fails."""
    try:
        from .metrics import emit_emf

        emit_emf(doc)
    except Exception as e:
        log.warning("run metrics not published as EMF: %s", type(e).__name__)


def handle(event: dict[str, Any] | None = None, context: Any = None) -> dict[str, Any]:
    """The scheduled invocation.  Returns the run summary; raises only for a config error (so the
    failure destination sees it), never for an overlapping invocation."""
    setup_logging()
    from .run import RunLocked, run_once

    started = time.time()
    request_id = str(getattr(context, "aws_request_id", "") or f"local-{os.getpid()}-{int(started)}")
    secrets_path = os.environ.get("COSTWATCH_SECRETS_PATH")
    if secrets_path:
        names = load_secrets(secrets_path)
        log.info("secrets loaded", extra={"costwatch": {"secrets": sorted(names)}})
    cfg = load_handler_config()
    try:
        result = run_once(cfg, lock_owner=request_id, provider_deadline=provider_deadline(cfg, context))
    except RunLocked as e:
        out = {"status": "skipped", "reason": str(e), "request_id": request_id}
        log.info("run skipped", extra={"costwatch": out})
        return out
    except Exception as e:
        # the run stored a failed-run metrics document: publish it (run_success 0) before failing
        _emit({"success": False, "error": type(e).__name__, "duration_seconds": time.time() - started})
        raise
    _emit(result.metrics)
    out = summary(result) | {"request_id": request_id, "seconds": round(time.time() - started, 2)}
    log.info("run finished", extra={"costwatch": out})
    return out


__all__ = ["JsonFormatter", "handle", "load_handler_config", "load_secrets", "provider_deadline", "setup_logging",
           "summary"]
