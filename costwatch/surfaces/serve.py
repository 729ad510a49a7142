"""``costwatch serve``: the Slack answers app over HTTP, for self-hosting and Kubernetes.

Bolt's ASGI adapter serves Slack's request path ``/slack/events`` under uvicorn; ``/healthz`` answers 200
while the state store can be read (liveness and readiness probes), 503 otherwise; ``GET /metrics`` is the
last run's metrics as Prometheus text (:mod:`costwatch.metrics`).  Everything else is 404.
Bolt's handler is synchronous, and the answers it makes are a few state writes and Slack calls: one
worker is enough for a team's button presses.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from costwatch.config import Config
from costwatch.state import StateError, Store

log = logging.getLogger("costwatch.serve")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
EVENTS_PATH = "/slack/events"
METRICS_PATH = "/metrics"


async def _metrics(store: Store, send: Send) -> None:
    """The last run's metrics (costwatch.metrics) as Prometheus text; 503 until a run is recorded."""
    from prometheus_client import CONTENT_TYPE_LATEST

    from costwatch import metrics

    try:
        doc = metrics.load(store)
        status, ctype = (200, CONTENT_TYPE_LATEST) if doc else (503, "text/plain; charset=utf-8")
        body = metrics.text(doc).encode() if doc else b"no costwatch run recorded yet\n"
    except StateError as e:
        log.warning("metrics: state store unavailable: %s", e)
        status, ctype, body = 503, "text/plain; charset=utf-8", b"state store unavailable\n"
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype.encode())]})
    await send({"type": "http.response.body", "body": body})


def asgi_app(cfg: Config, store: Store, **app_args: Any) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ASGI application: Bolt at ``/slack/events`` plus ``/healthz``."""
    from slack_bolt.adapter.asgi import SlackRequestHandler

    from .slack_app import build_app

    bolt = SlackRequestHandler(build_app(cfg, store, **app_args), path=EVENTS_PATH)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == METRICS_PATH and scope.get("method", "GET") == "GET":
            await _metrics(store, send)
            return
        if scope["type"] == "http" and scope.get("path") == "/healthz":
            try:
                store.get("lock", "run")
                status, body = 200, b"ok\n"
            except StateError as e:
                log.warning("health: state store unavailable: %s", e)
                status, body = 503, b"state store unavailable\n"
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": body})
            return
        await bolt(dict(scope), receive, send)

    return app


def serve(app: Callable[[Scope, Receive, Send], Awaitable[None]], *, host: str = "0.0.0.0",  # noqa: S104
          port: int = 3000) -> None:
    """Run ``app`` (from :func:`asgi_app`) until stopped (SIGINT/SIGTERM)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, proxy_headers=True)


__all__ = ["EVENTS_PATH", "METRICS_PATH", "asgi_app", "serve"]
