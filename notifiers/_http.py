"""The HTTP part the webhook, PagerDuty and Teams notifiers share: one JSON POST with the standard library,
no redirects, no retries, and every outcome classified into a :class:`~costwatch.notify.Delivery`.

Retrying is the outbox's job (``costwatch.outbox``), so a POST here is made once: 2xx is delivered; 429 and
5xx (and 408/425) are transient and carry the service's ``Retry-After``; other 4xx are permanent and say what
to change.  Redirects are not followed: a receiver that moved must be reconfigured, and following one
would send a signed body (or a routing key) wherever a ``Location`` header points.

Error texts are built from fixed words and status codes, never from ``str(exception)`` or the response
body, and are redacted once more with the notifier's secrets (the URL itself is one for webhooks).
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from costwatch.notify import Delivery, Notification

log = logging.getLogger("costwatch.notifiers")

MAX_ANSWER = 64 * 1024     # bytes of a response body read (services answer a few hundred)
USER_AGENT = "costwatch"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None   # a 3xx comes back as an HTTPError with that status


_OPENER = urllib.request.build_opener(_NoRedirect())


def redact(text: str, secrets: list[str]) -> str:
    """Remove each secret, and for a URL also its path (the part that authenticates a webhook)."""
    for s in secrets:
        if not s:
            continue
        text = text.replace(s, "[redacted]")
        path = s.split("://", 1)[-1].partition("/")[2]
        if len(path) >= 8:
            text = text.replace(path, "[redacted]")
    return text


class Endpoints:
    """The notify section's endpoint plus owners' own ones (``owners.<name>.<field>``), by target address: the
    address is the owner's name, so the outbox stores names, never the secrets themselves."""

    def __init__(self, default: str, owners: dict[str, str] | None, field: str) -> None:
        self.default, self.owners, self.field = default, dict(owners or {}), field
        self.secrets = [default, *self.owners.values()]

    def __call__(self, n: Notification) -> str | Delivery:
        if not n.target.address:
            return self.default
        found = self.owners.get(n.target.address)
        return found if found is not None else Delivery(
            ok=False, permanent=True, error=f"owner {n.target.address[:80]!r} has no {self.field} in the config "
                                           f"any more; set owners.<name>.{self.field} or route elsewhere")


class PostNotifier:
    """What the HTTP notifiers share: one POST per notification to the endpoint its target names; subclasses
    build and send in ``_send`` (never raising for a delivery failure)."""

    name = "http"
    _endpoints: Endpoints

    def __repr__(self) -> str:
        return f"{type(self).__name__}(owners={sorted(self._endpoints.owners)})"

    def notify(self, notifications: list[Notification]) -> list[Delivery]:
        return [self._one(n) for n in notifications]

    def _one(self, n: Notification) -> Delivery:
        where = self._endpoints(n)
        if isinstance(where, Delivery):
            return where
        try:
            d = self._send(n, where)
        except Exception as e:  # a rendering bug must not take the rest of the batch down
            log.error("%s: could not build %s (%s); this is a costwatch bug", self.name, n.id, type(e).__name__)
            return Delivery(ok=False, permanent=True, error=f"could not build the message ({type(e).__name__})")
        if not d.ok:
            log.warning("%s: %s not delivered: %s", self.name, n.id, d.error)
        return d

    def _send(self, n: Notification, endpoint: str) -> Delivery:
        raise NotImplementedError


def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> Answer:
    """POST once; an HTTP error status is an :class:`Answer` too.  Raises ``OSError`` /
    ``http.client.HTTPException`` when no answer came (see :func:`unreachable`)."""
    if not url.startswith(("https://", "http://")):  # config allows http only to localhost
        raise ValueError("not an http(s) URL")
    req = urllib.request.Request(url, data=body, method="POST",  # noqa: S310 - scheme checked above
                                 headers={"User-Agent": USER_AGENT, "Content-Type": "application/json",
                                          **dict(headers)})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read(MAX_ANSWER))
    except urllib.error.HTTPError as e:
        try:
            data = e.read(MAX_ANSWER)
        except (OSError, http.client.HTTPException):
            data = b""
        return Answer(e.code, {k.lower(): v for k, v in (e.headers or {}).items()}, data)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), bounded to an hour."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        secs = float(value)
    except ValueError:
        try:
            from datetime import UTC, datetime

            secs = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(secs, 0.0), 3600.0)


def unreachable(service: str, e: BaseException, timeout: float) -> Delivery:
    """No usable answer: a retry later may well work."""
    reason = e.reason if isinstance(e, urllib.error.URLError) and isinstance(e.reason, BaseException) else e
    if isinstance(reason, TimeoutError | socket.timeout):
        what = f"no answer within {timeout:g}s"
    elif isinstance(reason, ConnectionRefusedError):
        what = "connection refused"
    elif isinstance(reason, ConnectionResetError | http.client.RemoteDisconnected | BrokenPipeError):
        what = "connection reset"
    elif isinstance(reason, socket.gaierror):
        what = "DNS lookup failed"
    elif isinstance(reason, ssl.SSLError):
        what = "TLS handshake failed"
    else:
        what = type(reason).__name__
    return Delivery(ok=False, error=f"could not reach {service} ({what}); will retry")


def classify(service: str, answer: Answer, hints: Mapping[int, str], fallback: str) -> Delivery:
    """A non-2xx answer as a Delivery: transient (with Retry-After) or permanent with what to do."""
    status = answer.status
    wait = retry_after(answer.headers)
    if status == 429:
        return Delivery(ok=False, retry_after=wait, error=f"rate limited by {service} (HTTP 429)"
                        + (f"; retry after {wait:g}s" if wait is not None else ""))
    if status >= 500 or status in (408, 425):
        return Delivery(ok=False, retry_after=wait, error=f"{service} answered HTTP {status}; will retry")
    if 300 <= status < 400:
        return Delivery(ok=False, permanent=True,
                        error=f"{service} answered a redirect (HTTP {status}), which is not followed; {fallback}")
    return Delivery(ok=False, permanent=True, error=f"{service} answered HTTP {status}: {hints.get(status, fallback)}")


def send(service: str, url: str, body: bytes, headers: Mapping[str, str], timeout: float, secrets: list[str],
         hints: Mapping[int, str], fallback: str, ref: Callable[[Answer], str | None]) -> Delivery:
    """POST and classify; ``ref`` turns a 2xx answer into the delivery's reference."""
    try:
        answer = post(url, body, headers, timeout)
    except (OSError, http.client.HTTPException, ValueError) as e:
        d = unreachable(service, e, timeout)
    else:
        d = Delivery(ok=True, ref=ref(answer)) if 200 <= answer.status < 300 else classify(
            service, answer, hints, fallback)
    if d.error:
        d.error = redact(d.error, secrets)
    return d


__all__ = ["Answer", "Endpoints", "PostNotifier", "classify", "post", "redact", "retry_after", "send", "unreachable"]
