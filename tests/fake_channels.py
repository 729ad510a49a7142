"""Local fakes of PagerDuty's Events API v2, a Teams Workflows webhook and a webhook receiver, over real HTTP
on 127.0.0.1.  Each validates what it gets the way the real service (or a careful receiver) would and answers
like it: PagerDuty 202 ``{"status": "success", ...}`` or 400 ``{"status": "invalid event", "errors": [...]}``;
the Teams workflow 202 with an empty body, 400 for a card it cannot read, 404 for an unknown workflow, 413
past 28 KB; the receiver 401 for a bad signature, 200 otherwise.

Faults are queued with ``fail``: a status and ``Retry-After``, or ``accept=True`` with ``hang=`` seconds (the
request is processed, then the answer comes too late for the client: a lost answer, the same situation as
a run killed between sending and marking).

    with FakePagerDuty() as pd:
        pd.fail(status=429, retry_after=2)
        ...  # PagerDutyNotifier(key, events_url=pd.url)
        pd.incidents["group-key"]  # "triggered" / "resolved"
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any = None
    status: int = 0


@dataclass
class Fault:
    status: int = 500
    retry_after: float | None = None
    accept: bool = False   # process the request, then answer late (``hang``)
    hang: float = 0.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that gave up are part of the tests


class FakeHttp:
    """The shared machinery: a server, recorded requests, queued faults.  Subclasses implement ``handle``."""

    name = "fake"

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> FakeHttp:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True,
                         name=f"fake-{self.name}").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, *, times: int = 1, **fault: Any) -> None:
        with self._lock:
            self._faults.extend(Fault(**fault) for _ in range(times))

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n)
        req = Request(h.path, {k.lower(): v for k, v in h.headers.items()}, body)
        try:
            req.json = json.loads(body)
        except ValueError:
            req.json = None
        with self._lock:
            self.requests.append(req)
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None and not fault.accept:
            req.status = fault.status
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            if 300 <= fault.status < 400:
                headers["Location"] = f"{self.base}/elsewhere"
            self._reply(h, fault.status, {"status": "error", "message": "fault"}, headers)
            return
        with self._lock:
            status, payload = self.handle(req)
        req.status = status
        if fault is not None:
            time.sleep(fault.hang)
        self._reply(h, status, payload, {})

    def handle(self, req: Request) -> tuple[int, Any]:
        raise NotImplementedError

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str]) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        try:
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            pass  # the client gave up


# ---------------------------------------------------------------------------------------------- PagerDuty

PD_SEVERITIES = {"critical", "error", "warning", "info"}


def check_pd_event(e: Any, routing_keys: set[str]) -> list[str]:
    """Events API v2's documented rules (https://developer.pagerduty.com/docs/events-api-v2/trigger-events/)."""
    if not isinstance(e, dict):
        return ["body is not a JSON object"]
    errors = []
    if e.get("routing_key") not in routing_keys:
        errors.append("Invalid routing key")
    action = e.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errors.append("'event_action' is invalid")
    dk = e.get("dedup_key")
    if dk is not None and (not isinstance(dk, str) or len(dk) > 255):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dk:
        errors.append("'dedup_key' is required for acknowledge and resolve")
    if action == "trigger":
        p = e.get("payload")
        if not isinstance(p, dict):
            return [*errors, "'payload' is missing"]
        for k in ("summary", "source", "severity"):
            if not isinstance(p.get(k), str) or not p.get(k):
                errors.append(f"'payload.{k}' is missing or invalid")
        if isinstance(p.get("summary"), str) and len(p["summary"]) > 1024:
            errors.append("'payload.summary' is longer than 1024 characters")
        if p.get("severity") not in PD_SEVERITIES:
            errors.append("'payload.severity' is invalid")
        if "custom_details" in p and not isinstance(p["custom_details"], dict | str | list):
            errors.append("'payload.custom_details' is invalid")
        for link in e.get("links") or []:
            if not isinstance(link, dict) or not isinstance(link.get("href"), str):
                errors.append("'links' entries need 'href'")
    return errors


class FakePagerDuty(FakeHttp):
    name = "pagerduty"
    MAX_BYTES = 512 * 1024

    def __init__(self, routing_keys: tuple[str, ...] = ("R0UTINGKEYsecret0000000000000001",)) -> None:
        super().__init__()
        self.routing_keys = set(routing_keys)
        self.events: list[dict[str, Any]] = []         # accepted events, in order
        self.incidents: dict[str, str] = {}            # dedup_key -> "triggered" / "resolved"

    @property
    def url(self) -> str:
        return f"{self.base}/v2/enqueue"

    def handle(self, req: Request) -> tuple[int, Any]:
        if req.path != "/v2/enqueue":
            return 404, {"status": "not found"}
        if len(req.body) > self.MAX_BYTES:
            return 413, {"status": "invalid event", "message": "Request too large"}
        errors = check_pd_event(req.json, self.routing_keys)
        if errors:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
        e = req.json
        self.events.append(e)
        key = e.get("dedup_key") or secrets.token_hex(16)
        if e["event_action"] == "trigger":
            self.incidents[key] = "triggered"
        elif e["event_action"] == "resolve" and key in self.incidents:
            self.incidents[key] = "resolved"
        return 202, {"status": "success", "message": "Event processed", "dedup_key": key}


# ---------------------------------------------------------------------------------------------- Teams

TEAMS_MAX_BYTES = 28 * 1024
_ELEMENTS = {"TextBlock", "RichTextBlock", "FactSet", "Container", "ColumnSet", "Image", "ActionSet"}


def check_card_message(m: Any) -> list[str]:
    """The shape a Workflows "post card" flow needs: a message with one Adaptive Card attachment."""
    if not isinstance(m, dict) or m.get("type") != "message":
        return ["not a message"]
    atts = m.get("attachments")
    if not isinstance(atts, list) or len(atts) != 1 or not isinstance(atts[0], dict):
        return ["attachments must hold one card"]
    if atts[0].get("contentType") != "application/vnd.microsoft.card.adaptive":
        return ["contentType must be application/vnd.microsoft.card.adaptive"]
    card = atts[0].get("content")
    if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
        return ["content is not an AdaptiveCard"]
    errors = []
    if card.get("version") not in ("1.2", "1.3", "1.4", "1.5"):
        errors.append("version must be 1.2 .. 1.5")
    body = card.get("body")
    if not isinstance(body, list) or not body:
        return [*errors, "body must be a non-empty list"]
    for i, el in enumerate(body):
        t = el.get("type") if isinstance(el, dict) else None
        if t not in _ELEMENTS:
            errors.append(f"body[{i}]: unknown element {t!r}")
        elif t == "TextBlock" and not isinstance(el.get("text"), str):
            errors.append(f"body[{i}]: TextBlock needs text")
        elif t == "RichTextBlock":
            runs = el.get("inlines")
            if not isinstance(runs, list) or not all(isinstance(r, dict) and r.get("type") == "TextRun"
                                                     and isinstance(r.get("text"), str) for r in runs):
                errors.append(f"body[{i}]: RichTextBlock needs TextRun inlines")
        elif t == "FactSet" and not all(isinstance(f, dict) and isinstance(f.get("title"), str)
                                        and isinstance(f.get("value"), str) for f in el.get("facts") or [None]):
            errors.append(f"body[{i}]: FactSet facts need title and value strings")
    for a in card.get("actions") or []:
        if not isinstance(a, dict) or a.get("type") != "Action.OpenUrl" or not str(a.get("url")).startswith("https://"):
            errors.append("actions: only Action.OpenUrl with https URLs")
    return errors


class FakeTeams(FakeHttp):
    """A Workflows webhook: ``/workflows/<id>/triggers/manual/paths/invoke?...&sig=<secret>``."""

    name = "teams"

    def __init__(self) -> None:
        super().__init__()
        self.sig = "teamsSig" + secrets.token_hex(12)
        self.cards: list[dict[str, Any]] = []      # accepted cards (attachment content), in order
        self.disabled = False                       # the flow was turned off: 404

    @property
    def url(self) -> str:
        return f"{self.base}/workflows/0a1b2c/triggers/manual/paths/invoke?api-version=1&sig={self.sig}"

    def handle(self, req: Request) -> tuple[int, Any]:
        if self.disabled or not req.path.startswith("/workflows/") or not req.path.endswith(f"sig={self.sig}"):
            return 404, {"error": {"code": "WorkflowNotFound", "message": "The workflow could not be found."}}
        if len(req.body) > TEAMS_MAX_BYTES:
            return 413, {"error": {"code": "MessageTooLarge"}}
        errors = check_card_message(req.json)
        if errors:
            return 400, {"error": {"code": "InvalidTemplate", "message": "; ".join(errors)}}
        self.cards.append(req.json["attachments"][0]["content"])
        return 202, None


# ---------------------------------------------------------------------------------------------- webhook


class FakeReceiver(FakeHttp):
    """A careful webhook receiver: verifies the signature and the timestamp, dedupes on X-Costwatch-Id."""

    name = "webhook"

    def __init__(self, secret: str = "whsec-" + "0123456789abcdef0123") -> None:
        super().__init__()
        self.secret = secret
        self.path_token = "hook" + secrets.token_hex(10)
        self.documents: list[dict[str, Any]] = []     # every verified POST
        self.unique: dict[str, dict[str, Any]] = {}   # id -> document, what a deduping receiver keeps

    @property
    def url(self) -> str:
        return f"{self.base}/in/{self.path_token}"

    def handle(self, req: Request) -> tuple[int, Any]:
        if req.path != f"/in/{self.path_token}":
            return 404, {"error": "not found"}
        ts, sig = req.headers.get("x-costwatch-timestamp", ""), req.headers.get("x-costwatch-signature", "")
        expected = "v1=" + hmac.new(self.secret.encode(), ts.encode() + b"." + req.body, hashlib.sha256).hexdigest()
        if not ts.isdigit() or abs(time.time() - int(ts)) > 300 or not hmac.compare_digest(expected, sig):
            return 401, {"error": "bad signature"}
        doc = req.json
        if not isinstance(doc, dict) or doc.get("schema") != "costwatch.notification/v1":
            return 400, {"error": "unknown schema"}
        if req.headers.get("x-costwatch-id") != doc.get("id"):
            return 400, {"error": "id header and body disagree"}
        self.documents.append(doc)
        self.unique.setdefault(doc["id"], doc)
        return 200, {"ok": True}
