"""A local fake of the parts of Slack costwatch talks to, over real HTTP on 127.0.0.1.

It speaks Slack's wire shapes so slack-sdk's real ``WebClient`` and ``WebhookClient`` can be pointed at it:
Web API methods under ``/api/<method>`` taking form, JSON, query or multipart bodies and answering
``{"ok": ...}`` (errors as ``{"ok": false, "error": "..."}`` with HTTP 200, rate limits as HTTP 429 with
``Retry-After``); incoming webhooks under ``/services/...`` answering ``ok`` or an error word with an HTTP
status; and the files v2 upload flow (``files.getUploadURLExternal``, a POST to the returned URL,
``files.completeUploadExternal``).

It also checks Block Kit's documented limits and answers ``invalid_blocks`` like Slack does, so a test
that passes here proves the message would be accepted.  Every request is recorded (method, parsed params,
headers); faults can be queued per method: a status, an error code, ``Retry-After``, a hang past the
client's timeout, or a dropped connection.  ``limit_rate`` enforces Slack's posting limit per channel
(about one message per second, short bursts allowed): a post over it gets HTTP 429 with ``Retry-After``
in whole seconds, as Slack answers, and is not posted.

    with FakeSlack() as slack:
        slack.fail("chat.postMessage", status=429, retry_after=1)
        ...  # WebClient(token=slack.token, base_url=slack.api_url)
        slack.calls("chat.postMessage")[0].params["blocks"]
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import math
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# ------------------------------------------------------------------------------------------ records


@dataclass
class Recorded:
    """One request as the fake saw it.  ``method`` is the API method ("chat.postMessage"), "webhook" or
    "upload"; ``params`` merges query, form, JSON and multipart fields (JSON values keep their types)."""

    method: str
    http_method: str
    path: str
    params: dict[str, Any]
    headers: dict[str, str]
    body: bytes
    status: int = 0
    response: Any = None


@dataclass
class Fault:
    """What the next matching request gets instead of the normal answer."""

    status: int = 200
    error: str | None = None          # Slack error code: {"ok": false, "error": ...} (webhooks: the body word)
    retry_after: float | None = None  # Retry-After header
    hang: float = 0.0                 # seconds to wait before answering (past the client's timeout)
    drop: bool = False                # close the connection with a reset, no answer
    body: str | None = None           # a raw body instead (e.g. a proxy's HTML error page)
    extra: dict[str, Any] = field(default_factory=dict)  # more JSON fields, e.g. {"needed": "chat:write"}
    accept: bool = False              # do the work (post the message), then hang/drop: the answer is lost


@dataclass
class Channel:
    id: str
    name: str
    member: bool = True
    archived: bool = False
    messages: list[dict[str, Any]] = field(default_factory=list)   # oldest first, replies included
    members: list[str] = field(default_factory=lambda: ["UOWNER1", "UOWNER2"])  # people in the channel


# ------------------------------------------------------------------------------------------ block checks

_TEXT_KEYS = {"plain_text": {"type", "text", "emoji"}, "mrkdwn": {"type", "text", "verbatim"}}
_BLOCK_KEYS = {"header": {"type", "text", "block_id"}, "section": {"type", "text", "fields", "block_id", "accessory",
                                                                    "expand"},
               "context": {"type", "elements", "block_id"}, "divider": {"type", "block_id"},
               "image": {"type", "image_url", "alt_text", "title", "block_id"},
               "actions": {"type", "elements", "block_id"}}
_ELEMENT_KEYS = {"button": {"type", "action_id", "text", "value", "style", "url", "confirm", "accessibility_label"},
                 "static_select": {"type", "action_id", "placeholder", "options", "initial_option", "confirm"},
                 "overflow": {"type", "action_id", "options", "confirm"}}


def _check_option(o: Any, at: str, errors: list[str]) -> None:
    if not isinstance(o, dict):
        errors.append(f"must be an object [json-pointer:{at}]")
        return
    _check_text(o.get("text"), f"{at}/text", 75, errors, ("plain_text",))
    if not isinstance(o.get("value"), str) or not 0 < len(o["value"]) <= 150:
        errors.append(f"must be 1 to 150 characters [json-pointer:{at}/value]")


def _check_element(el: Any, at: str, errors: list[str]) -> None:
    """Interactive elements as Slack documents them: buttons (text 75, value 2000, action_id 255), selects
    and overflow menus (options 100 and 5, option text 75, value 150)."""
    if not isinstance(el, dict) or el.get("type") not in _ELEMENT_KEYS:
        errors.append(f"unsupported type [json-pointer:{at}/type]")
        return
    extra = set(el) - _ELEMENT_KEYS[el["type"]]
    if extra:
        errors.append(f"unknown field {sorted(extra)[0]} [json-pointer:{at}]")
    if not isinstance(el.get("action_id"), str) or not 0 < len(el["action_id"]) <= 255:
        errors.append(f"must be 1 to 255 characters [json-pointer:{at}/action_id]")
    if el["type"] == "button":
        _check_text(el.get("text"), f"{at}/text", 75, errors, ("plain_text",))
        if len(str(el.get("value", ""))) > 2000:
            errors.append(f"must be less than 2001 characters [json-pointer:{at}/value]")
        if el.get("style") not in (None, "primary", "danger"):
            errors.append(f"must be primary or danger [json-pointer:{at}/style]")
        return
    if el["type"] == "static_select":
        _check_text(el.get("placeholder"), f"{at}/placeholder", 150, errors, ("plain_text",))
    options = el.get("options")
    most = 100 if el["type"] == "static_select" else 5
    if not isinstance(options, list) or not 0 < len(options) <= most:
        errors.append(f"must have 1 to {most} items [json-pointer:{at}/options]")
        return
    for j, o in enumerate(options):
        _check_option(o, f"{at}/options/{j}", errors)


def _check_text(obj: Any, where: str, limit: int, errors: list[str], types: tuple[str, ...] = ("plain_text", "mrkdwn"),
                ) -> None:
    if not isinstance(obj, dict) or obj.get("type") not in types:
        errors.append(f"must be a text object of type {'/'.join(types)} [json-pointer:{where}]")
        return
    extra = set(obj) - _TEXT_KEYS[obj["type"]]
    if extra:
        errors.append(f"unknown field {sorted(extra)[0]} [json-pointer:{where}]")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        errors.append(f"must be more than 0 characters [json-pointer:{where}/text]")
    elif len(text) > limit:
        errors.append(f"must be less than {limit + 1} characters [json-pointer:{where}/text]")


def check_blocks(blocks: Any) -> list[str]:
    """Slack's documented Block Kit limits, with Slack's error wording; [] when the blocks are valid."""
    if not isinstance(blocks, list):
        return ["must be an array [json-pointer:/blocks]"]
    errors: list[str] = []
    if len(blocks) > 50:
        errors.append("no more than 50 items allowed [json-pointer:/blocks]")
    for i, b in enumerate(blocks):
        at = f"/blocks/{i}"
        if not isinstance(b, dict) or b.get("type") not in _BLOCK_KEYS:
            errors.append(f"unsupported type [json-pointer:{at}/type]")
            continue
        extra = set(b) - _BLOCK_KEYS[b["type"]]
        if extra:
            errors.append(f"unknown field {sorted(extra)[0]} [json-pointer:{at}]")
        if len(str(b.get("block_id", ""))) > 255:
            errors.append(f"must be less than 256 characters [json-pointer:{at}/block_id]")
        kind = b["type"]
        if kind == "header":
            _check_text(b.get("text"), f"{at}/text", 150, errors, ("plain_text",))
        elif kind == "section":
            if "text" not in b and "fields" not in b:
                errors.append(f"must provide text or fields [json-pointer:{at}]")
            if "text" in b:
                _check_text(b["text"], f"{at}/text", 3000, errors)
            if "fields" in b:
                fields = b["fields"]
                if not isinstance(fields, list) or not fields:
                    errors.append(f"must be a non-empty array [json-pointer:{at}/fields]")
                else:
                    if len(fields) > 10:
                        errors.append(f"no more than 10 items allowed [json-pointer:{at}/fields]")
                    for j, f in enumerate(fields):
                        _check_text(f, f"{at}/fields/{j}", 2000, errors)
        elif kind == "context":
            elements = b.get("elements")
            if not isinstance(elements, list) or not elements:
                errors.append(f"must be a non-empty array [json-pointer:{at}/elements]")
            else:
                if len(elements) > 10:
                    errors.append(f"no more than 10 items allowed [json-pointer:{at}/elements]")
                for j, el in enumerate(elements):
                    _check_text(el, f"{at}/elements/{j}", 3000, errors)
        elif kind == "actions":
            elements = b.get("elements")
            if not isinstance(elements, list) or not 0 < len(elements) <= 25:
                errors.append(f"must have 1 to 25 items [json-pointer:{at}/elements]")
            else:
                for j, el in enumerate(elements):
                    _check_element(el, f"{at}/elements/{j}", errors)
    return errors


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() in ("1", "true")) or v == 1


# ------------------------------------------------------------------------------------------ the server


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # dropped connections and clients that gave up are part of the tests


class FakeSlack:
    """The fake; ``start()``/``stop()`` or use as a context manager.  Thread-safe for the server's threads."""

    def __init__(self, token: str = "xoxb-1111-2222-fakeBotTokenSecret", channels: list[Channel] | None = None,
                 ) -> None:
        self.token = token
        self.webhook_secret = "T0FAKE/B0FAKE/" + "whSecret" + secrets.token_hex(8)
        self.channels: dict[str, Channel] = {c.id: c for c in (channels or [
            Channel("C0ALERTS", "alerts"), Channel("C0TEAM", "team-a"), Channel("C0OUTSIDE", "outside", member=False),
            Channel("C0OLD", "old", archived=True)])}
        self.requests: list[Recorded] = []
        self.uploads: list[dict[str, Any]] = []      # completed file shares: channel, thread_ts, title, data
        self._pending: dict[str, dict[str, Any]] = {}  # file_id -> getUploadURLExternal args and bytes
        self._faults: dict[str, list[Fault]] = {}
        self._lock = threading.Lock()
        self._rate: tuple[str, float, int] | None = None        # (method, posts per second, burst)
        self._buckets: dict[str, tuple[float, float]] = {}       # channel id -> (tokens, at monotonic time)
        self.rate_limited: list[Recorded] = []                   # posts refused by limit_rate
        self.ephemeral: list[dict[str, Any]] = []                # chat.postEphemeral: channel, user, text
        self._stopping = threading.Event()
        self._last_ts = 0.0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> FakeSlack:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                fake._handle(self)

            do_GET = do_POST
            do_PUT = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-slack", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def api_url(self) -> str:
        return f"{self.base}/api/"

    @property
    def webhook_url(self) -> str:
        return f"{self.base}/services/{self.webhook_secret}"

    # -------------------------------------------------------------- test helpers

    def fail(self, method: str, *, times: int = 1, **fault: Any) -> None:
        """Queue a fault for the next ``times`` calls of ``method`` ("chat.postMessage", "webhook", "upload")."""
        with self._lock:
            self._faults.setdefault(method, []).extend(Fault(**fault) for _ in range(times))

    def limit_rate(self, per_second: float = 1.0, *, burst: int = 1, method: str = "chat.postMessage") -> None:
        """Refuse ``method`` calls to one channel beyond ``per_second`` (a token bucket of ``burst``) with
        HTTP 429, ``{"ok": false, "error": "ratelimited"}`` and ``Retry-After`` (whole seconds)."""
        with self._lock:
            self._rate = (method, per_second, burst)
            self._buckets = {}

    def _over_rate(self, method: str, params: dict[str, Any]) -> float | None:
        """Seconds until the channel may post again, when this call is over the limit; else None (and the
        call takes a token).  Call with the lock held."""
        if self._rate is None or self._rate[0] != method:
            return None
        _, rate, burst = self._rate
        ref = params.get("channel")
        ch = self._channel(ref) if isinstance(ref, str) else None
        key = ch.id if isinstance(ch, Channel) else str(ref)
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return None
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate

    def calls(self, method: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == method]

    def messages(self, channel: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.channels[channel].messages)

    def seed(self, channel: str, count: int, **fields: Any) -> None:
        """Add ``count`` messages from someone else, e.g. to push ours onto a later history page."""
        with self._lock:
            for i in range(count):
                self.channels[channel].messages.append(
                    {"type": "message", "user": "UOTHER", "text": f"chatter {i}", "ts": self._ts(), **fields})

    # -------------------------------------------------------------- plumbing

    def _ts(self) -> str:
        now = max(time.time(), self._last_ts + 0.000001)
        self._last_ts = now
        return f"{now:.6f}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        headers = {k: v for k, v in h.headers.items()}
        params: dict[str, Any] = dict(parse_qsl(url.query))
        ctype = h.headers.get("Content-Type", "")
        if url.path.startswith("/api/"):
            method = url.path[len("/api/"):]
            params.update(self._parse_body(ctype, body))
        elif url.path.startswith("/services/"):
            method = "webhook"
            try:
                params.update(json.loads(body or b"{}"))
            except ValueError:
                params["_invalid_json"] = True
        elif url.path.startswith("/upload/"):
            method = "upload"
        else:
            method = url.path
        rec = Recorded(method, h.command, url.path, params, headers, body)
        with self._lock:
            self.requests.append(rec)
            queue = self._faults.get(method)
            fault = queue.pop(0) if queue else None
            wait = self._over_rate(method, params) if fault is None else None
            if wait is not None:
                fault = Fault(status=429, retry_after=float(max(1, math.ceil(wait))))
                self.rate_limited.append(rec)
        if fault is not None and fault.accept and method not in ("webhook", "upload"):
            self._api(method, params, headers)  # Slack did it; the client just never hears back
        if fault is not None:
            if fault.hang:
                self._stopping.wait(fault.hang)
            if fault.drop:
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.connection.close()
                h.close_connection = True
                return
            if fault.body is not None:
                self._reply(h, rec, fault.status, fault.body, "text/html", fault.retry_after)
            elif method == "webhook" or method == "upload":
                self._reply(h, rec, fault.status, fault.error or "", "text/plain", fault.retry_after)
            else:
                payload = {"ok": False, "error": fault.error or ("ratelimited" if fault.status == 429 else
                                                                  "internal_error"), **fault.extra}
                self._reply(h, rec, fault.status, payload, "application/json", fault.retry_after)
            return
        if method == "webhook":
            status, text = self._webhook(url.path, params)
            self._reply(h, rec, status, text, "text/plain")
        elif method == "upload":
            status, text = self._upload(url.path, body)
            self._reply(h, rec, status, text, "text/plain")
        else:
            self._reply(h, rec, 200, self._api(method, params, headers), "application/json")

    @staticmethod
    def _parse_body(ctype: str, body: bytes) -> dict[str, Any]:
        if not body:
            return {}
        if ctype.startswith("application/json"):
            data = json.loads(body)
            return data if isinstance(data, dict) else {"_json": data}
        if ctype.startswith("multipart/form-data"):
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {ctype}\r\n\r\n".encode() + body)
            out: dict[str, Any] = {}
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                payload = part.get_payload(decode=True)
                raw = payload if isinstance(payload, bytes) else str(payload).encode()
                out[str(name)] = raw if part.get_filename() else raw.decode("utf-8")
            return out
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, rec: Recorded, status: int, payload: Any, ctype: str,
               retry_after: float | None = None) -> None:
        raw = json.dumps(payload).encode() if ctype == "application/json" else str(payload).encode()
        rec.status, rec.response = status, payload
        try:
            h.send_response(status)
            h.send_header("Content-Type", f"{ctype}; charset=utf-8")
            h.send_header("Content-Length", str(len(raw)))
            if retry_after is not None:
                h.send_header("Retry-After", f"{retry_after:g}")
            h.end_headers()
            h.wfile.write(raw)
        except OSError:
            pass  # the client gave up (timeout); nothing to answer

    # -------------------------------------------------------------- Slack's behaviour

    def _api(self, method: str, p: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        if not auth:
            return {"ok": False, "error": "not_authed"}
        if auth != f"Bearer {self.token}":
            return {"ok": False, "error": "invalid_auth"}
        handler = {
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._ephemeral,
            "conversations.members": self._members,
            "conversations.history": self._history,
            "conversations.replies": self._replies,
            "conversations.list": self._list,
            "files.getUploadURLExternal": self._upload_url,
            "files.completeUploadExternal": self._complete_upload,
            "auth.test": lambda _p: {"ok": True, "user_id": "UBOT", "bot_id": "BFAKE", "team_id": "T0FAKE"},
        }.get(method)
        if handler is None:
            return {"ok": False, "error": "unknown_method"}
        with self._lock:
            return handler(p)

    def _channel(self, ref: Any, *, by_name: bool = True, post: bool = False) -> Channel | str:
        """The channel, or Slack's error code for it."""
        if not isinstance(ref, str) or not ref:
            return "channel_not_found"
        ch = self.channels.get(ref)
        if ch is None and by_name:
            ch = next((c for c in self.channels.values() if c.name == ref.lstrip("#")), None)
        if ch is None:
            return "channel_not_found"
        if post and ch.archived:
            return "is_archived"
        if not ch.member:
            return "not_in_channel"
        return ch

    @staticmethod
    def _json_arg(v: Any) -> Any:
        if isinstance(v, str):
            try:
                return json.loads(v)
            except ValueError:
                return None
        return v

    def _post_message(self, p: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel(p.get("channel"), post=True)
        if isinstance(ch, str):
            return {"ok": False, "error": ch}
        blocks = self._json_arg(p["blocks"]) if "blocks" in p else None
        if "blocks" in p and blocks is None:
            return {"ok": False, "error": "invalid_blocks_format"}
        text = p.get("text")
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        if isinstance(text, str) and len(text) > 40_000:
            return {"ok": False, "error": "msg_too_long"}
        if blocks is not None:
            errors = check_blocks(blocks)
            if errors:
                return {"ok": False, "error": "invalid_blocks", "errors": errors,
                        "response_metadata": {"messages": [f"[ERROR] {e}" for e in errors]}}
        metadata = self._json_arg(p["metadata"]) if "metadata" in p else None
        if "metadata" in p and (not isinstance(metadata, dict) or not isinstance(metadata.get("event_type"), str)
                                or not isinstance(metadata.get("event_payload"), dict)):
            return {"ok": False, "error": "invalid_metadata_format"}
        thread_ts = p.get("thread_ts") or None
        if thread_ts is not None and not any(m["ts"] == thread_ts and not m.get("parent_ts")
                                             for m in ch.messages):
            thread_ts = None  # Slack posts top-level when thread_ts names no message
        msg: dict[str, Any] = {"type": "message", "user": "UBOT", "bot_id": "BFAKE", "text": text or "",
                               "ts": self._ts()}
        if blocks is not None:
            msg["blocks"] = blocks
        if metadata is not None:
            msg["metadata"] = metadata
        if thread_ts:
            msg["thread_ts"] = thread_ts
            msg["parent_ts"] = thread_ts
            if _truthy(p.get("reply_broadcast")):
                msg["subtype"] = "thread_broadcast"
            for parent in ch.messages:
                if parent["ts"] == thread_ts:
                    parent["thread_ts"] = thread_ts
                    parent["reply_count"] = parent.get("reply_count", 0) + 1
        ch.messages.append(msg)
        return {"ok": True, "channel": ch.id, "ts": msg["ts"], "message": self._public(msg, True)}

    def _update(self, p: dict[str, Any]) -> dict[str, Any]:
        """chat.update: only the bot's own messages, blocks checked like a post; replaces text and blocks."""
        ch = self._channel(p.get("channel"), by_name=False)
        if isinstance(ch, str):
            return {"ok": False, "error": ch}
        msg = next((m for m in ch.messages if m["ts"] == p.get("ts")), None)
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        if msg.get("bot_id") != "BFAKE":
            return {"ok": False, "error": "cant_update_message"}
        blocks = self._json_arg(p["blocks"]) if "blocks" in p else None
        if "blocks" in p:
            errors = check_blocks(blocks)
            if blocks is None or errors:
                return {"ok": False, "error": "invalid_blocks", "errors": errors}
            msg["blocks"] = blocks
        if p.get("text") is not None:
            msg["text"] = p["text"]
        msg["edited"] = {"user": "UBOT", "ts": self._ts()}
        return {"ok": True, "channel": ch.id, "ts": msg["ts"], "text": msg.get("text", ""),
                "message": self._public(msg, False)}

    def _ephemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel(p.get("channel"), by_name=False, post=True)
        if isinstance(ch, str):
            return {"ok": False, "error": ch}
        if p.get("user") not in ch.members:
            return {"ok": False, "error": "user_not_in_channel"}
        self.ephemeral.append({"channel": ch.id, "user": p.get("user"), "text": p.get("text") or ""})
        return {"ok": True, "message_ts": self._ts()}

    def _members(self, p: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel(p.get("channel"), by_name=False)
        if isinstance(ch, str):
            return {"ok": False, "error": ch}
        try:
            page, meta = self._page([{"id": u} for u in ch.members], p)
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        return {"ok": True, "members": [u["id"] for u in page], **meta}

    @staticmethod
    def _public(m: dict[str, Any], metadata: bool) -> dict[str, Any]:
        out = {k: v for k, v in m.items() if k not in ("parent_ts", "metadata")}
        if metadata and "metadata" in m:
            out["metadata"] = m["metadata"]
        return out

    @staticmethod
    def _page(items: list[dict[str, Any]], p: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        try:
            limit = min(max(int(p.get("limit") or 100), 1), 999)
            start = int(base64.b64decode(p["cursor"]).decode().split(":")[1]) if p.get("cursor") else 0
        except (ValueError, IndexError):
            raise ValueError("invalid_cursor") from None
        page = items[start:start + limit]
        more = start + limit < len(items)
        cursor = base64.b64encode(f"offset:{start + limit}".encode()).decode() if more else ""
        return page, {"has_more": more, "response_metadata": {"next_cursor": cursor}}

    @staticmethod
    def _in_window(m: dict[str, Any], p: dict[str, Any]) -> bool:
        ts = float(m["ts"])
        return ts > float(p.get("oldest") or 0) and ts < float(p.get("latest") or "inf")

    def _history(self, p: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel(p.get("channel"), by_name=False)
        if isinstance(ch, str):
            return {"ok": False, "error": ch}
        visible = [m for m in ch.messages if (not m.get("parent_ts") or m.get("subtype") == "thread_broadcast")
                   and self._in_window(m, p)]
        visible.reverse()  # newest first
        try:
            page, meta = self._page(visible, p)
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        meta_on = _truthy(p.get("include_all_metadata"))
        return {"ok": True, "messages": [self._public(m, meta_on) for m in page], **meta}

    def _replies(self, p: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel(p.get("channel"), by_name=False)
        if isinstance(ch, str):
            return {"ok": False, "error": ch}
        ts = p.get("ts")
        parent = next((m for m in ch.messages if m["ts"] == ts and not m.get("parent_ts")), None)
        if parent is None:
            return {"ok": False, "error": "thread_not_found"}
        thread = [parent] + [m for m in ch.messages if m.get("parent_ts") == ts and self._in_window(m, p)]
        try:
            page, meta = self._page(thread, p)
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        meta_on = _truthy(p.get("include_all_metadata"))
        return {"ok": True, "messages": [self._public(m, meta_on) for m in page], **meta}

    def _list(self, p: dict[str, Any]) -> dict[str, Any]:
        chans = [{"id": c.id, "name": c.name, "is_channel": True, "is_archived": c.archived, "is_member": c.member}
                 for c in self.channels.values() if not (c.archived and _truthy(p.get("exclude_archived")))]
        page, meta = self._page(chans, p)
        return {"ok": True, "channels": page, **meta}

    def _upload_url(self, p: dict[str, Any]) -> dict[str, Any]:
        try:
            length = int(p["length"])
            filename = str(p["filename"])
        except (KeyError, ValueError):
            return {"ok": False, "error": "invalid_arguments"}
        file_id = "F" + secrets.token_hex(5).upper()
        key = secrets.token_urlsafe(12)
        self._pending[file_id] = {"filename": filename, "length": length, "alt_txt": p.get("alt_txt"), "key": key,
                                  "data": None}
        return {"ok": True, "upload_url": f"{self.base}/upload/v1/{key}", "file_id": file_id}

    def _upload(self, path: str, body: bytes) -> tuple[int, str]:
        key = path.rsplit("/", 1)[-1]
        with self._lock:
            item = next((f for f in self._pending.values() if f["key"] == key), None)
            if item is None:
                return 404, "not found"
            if len(body) != item["length"]:
                return 400, "length mismatch"
            item["data"] = body
        return 200, f"OK - {len(body)}"

    def _complete_upload(self, p: dict[str, Any]) -> dict[str, Any]:
        files = self._json_arg(p.get("files"))
        if not isinstance(files, list) or not files:
            return {"ok": False, "error": "invalid_arguments"}
        for f in files:
            item = self._pending.get(str(f.get("id"))) if isinstance(f, dict) else None
            if item is None or item["data"] is None:
                return {"ok": False, "error": "file_not_found"}
        target: Channel | None = None
        if p.get("channel_id"):
            ch = self._channel(p["channel_id"], by_name=False, post=True)
            if isinstance(ch, str):
                return {"ok": False, "error": ch}
            target = ch
        out = []
        for f in files:
            item = self._pending.pop(f["id"])
            share = {"id": f["id"], "name": item["filename"], "title": f.get("title") or item["filename"],
                     "mimetype": "image/png" if item["filename"].endswith(".png") else "application/octet-stream",
                     "size": item["length"]}
            out.append(share)
            self.uploads.append({**share, "channel": target.id if target else None,
                                 "thread_ts": p.get("thread_ts"), "alt_txt": item["alt_txt"], "data": item["data"]})
            if target is not None:
                msg: dict[str, Any] = {"type": "message", "user": "UBOT", "text": "", "ts": self._ts(),
                                       "files": [share]}
                if p.get("thread_ts"):
                    msg["thread_ts"] = msg["parent_ts"] = p["thread_ts"]
                target.messages.append(msg)
        return {"ok": True, "files": out}

    def _webhook(self, path: str, p: dict[str, Any]) -> tuple[int, str]:
        if path != f"/services/{self.webhook_secret}":
            return 403, "invalid_token"
        if p.get("_invalid_json"):
            return 400, "invalid_payload"
        if not p.get("text") and not p.get("blocks"):
            return 400, "no_text"
        if "blocks" in p and check_blocks(p["blocks"]):
            return 400, "invalid_blocks"
        return 200, "ok"


__all__ = ["Channel", "FakeSlack", "Fault", "Recorded", "check_blocks"]
