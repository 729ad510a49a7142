"""PagerDuty Events API v2 (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/).

One event per notification: ``trigger`` for firing, updated and repeat, ``resolve`` for resolved, always with
``dedup_key`` = the incident (group) id.  PagerDuty folds every trigger with the same key into one alert,
so a repeated or re-sent trigger (a run killed between sending and marking) is harmless, and the resolve
closes the PagerDuty incident when costwatch resolves.  Severity: critical -> critical, high -> error,
warning -> warning, info -> info.  ``custom_details`` carries the alerts' evidence, cut to fit PagerDuty's
512 KB event limit.

A small client over the documented endpoint with the standard library.  PagerDuty's ``pagerduty`` package
(7.x, ``EventsApiV2Client``) covers Events v2 and takes a ``base_url``, but it retries and sleeps on its own
(429 without limit, 5xx up to 6 times: the outbox decides retries and waits here, so all of that would have
to be switched off), reports failures as exceptions to unpick for status and Retry-After, and brings
httpx2, httpcore2, anyio and truststore into the Lambda artifact for one POST.
Answers: 202 accepted; 400 invalid event (permanent, says what to fix); 429 and 5xx retried later with
Retry-After.  The routing key is a secret: never logged, never in an error.
"""

from __future__ import annotations

import json
from typing import Any

from costwatch.config import Config, PagerDutyConfig
from costwatch.notify import Delivery, Notification

from . import _http
from .schema import encode, lead, worst_severity

MAX_EVENT = 500 * 1024          # PagerDuty refuses events over 512 KB
MAX_SUMMARY = 1024
SEVERITY = {"critical": "critical", "high": "error", "warning": "warning", "info": "info"}
_HINTS = {
    400: "PagerDuty refused the event (an invalid routing key or payload); check notify.pagerduty.routing_key "
         "(the service's Events API v2 integration key) or the owner's pagerduty_routing_key",
    401: "PagerDuty refused the routing key; check notify.pagerduty.routing_key",
    403: "PagerDuty refused the routing key; check notify.pagerduty.routing_key",
    404: "nothing at notify.pagerduty.events_url; use https://events.pagerduty.com/v2/enqueue",
    413: "the event is too large for PagerDuty; this is a costwatch bug, please report it",
}


def _text(value: Any, limit: int) -> str:
    s = " ".join(str(value or "").split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def event(n: Notification, routing_key: str, client_url: str | None = None) -> dict[str, Any]:
    """The Events API v2 body for one notification."""
    if n.event == "resolved":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": n.group_key}
    a = lead(n)
    details = json.loads(encode(n, MAX_EVENT - 4096))   # the v1 document: alerts with their evidence
    source = ":".join(_text(a.get(k), 100) for k in ("provider", "project") if a.get(k)) or "costwatch"
    body: dict[str, Any] = {
        "routing_key": routing_key, "event_action": "trigger", "dedup_key": n.group_key,
        "payload": {
            "summary": _text(n.title, MAX_SUMMARY) or "costwatch alert",
            "source": source,
            "severity": SEVERITY.get(worst_severity(n), "warning"),
            "component": _text(a.get("service") or a.get("kind") or "costs", 200),
            "group": _text(a.get("project_name") or a.get("project") or "", 200) or None,
            "class": _text(a.get("kind") or "", 100) or None,
            "custom_details": details,
        },
        "client": "costwatch",
    }
    if isinstance(a.get("detected_at"), str):
        body["payload"]["timestamp"] = a["detected_at"]
    body["payload"] = {k: v for k, v in body["payload"].items() if v is not None}
    if client_url:
        body["client_url"] = client_url
        body["links"] = [{"href": client_url, "text": "costwatch"}]
    if n.chart and n.chart.startswith("https://"):
        body["images"] = [{"src": n.chart, "alt": "costwatch chart"}]
    return body


class PagerDutyNotifier(_http.PostNotifier):
    name = "pagerduty"

    def __init__(self, routing_key: str, *, events_url: str = "https://events.pagerduty.com/v2/enqueue",
                 owner_keys: dict[str, str] | None = None, client_url: str | None = None,
                 timeout: float = 15.0) -> None:
        self.events_url, self.client_url, self.timeout = events_url, client_url, timeout
        self._endpoints = _http.Endpoints(routing_key, owner_keys, "pagerduty_routing_key")

    def _send(self, n: Notification, key: str) -> Delivery:
        if n.event in ("digest", "weekly_digest"):
            # a digest folds incidents for people; PagerDuty gets them one by one (outbox.UNFOLDED), and the
            # scheduled summary is never routed here (costwatch.digest.NOT_TOLD)
            return Delivery(ok=False, permanent=True, error="PagerDuty takes no digests; this is a costwatch bug")
        body = json.dumps(event(n, key, self.client_url), default=str).encode("utf-8")
        return _http.send("PagerDuty", self.events_url, body, {"Accept": "application/json"}, self.timeout,
                          self._endpoints.secrets, _HINTS, "PagerDuty refused the event; check notify.pagerduty",
                          lambda a: n.group_key)


def from_config(section: PagerDutyConfig, cfg: Config) -> PagerDutyNotifier:
    owners = {name: o.pagerduty_routing_key.get_secret_value() for name, o in cfg.owners.items()
              if o.pagerduty_routing_key}
    return PagerDutyNotifier(section.routing_key.get_secret_value(), events_url=section.events_url,
                             owner_keys=owners, client_url=section.client_url, timeout=section.timeout)


__all__ = ["SEVERITY", "PagerDutyNotifier", "event", "from_config"]
