"""Generic webhook: a signed JSON POST of every notification (``costwatch.notification/v1``, README "Channels").

Headers (all ASCII):

* ``X-Costwatch-Id`` and ``Idempotency-Key``: the notification id.  The same incident update always has the
  same id, so a receiver that keeps the ids it has seen drops a repeat.  costwatch cannot ask an arbitrary
  receiver whether an earlier POST arrived (a run killed between sending and marking, an answer lost to a
  timeout), so delivery is at least once and the id is the dedupe key.
* ``X-Costwatch-Timestamp``: Unix seconds when signed; ``X-Costwatch-Signature: v1=<hex>``: HMAC-SHA256 with
  the shared secret over ``timestamp + "." + body`` (the raw bytes).  Receivers recompute it, compare in
  constant time and reject timestamps older than a few minutes (replays).
* ``X-Costwatch-Event`` and ``X-Costwatch-Schema``: for routing without parsing the body.

https only (plain http only to localhost, checked in the config).  The URL and the secret are secrets:
never logged, never in an error (the URL's path often *is* the credential).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from costwatch.config import Config, WebhookConfig
from costwatch.notify import Delivery, Notification

from . import _http
from .schema import SCHEMA, encode

MAX_BODY = 1024 * 1024
_HINTS = {
    400: "the receiver rejected the payload; check that it accepts the costwatch.notification/v1 schema",
    401: "the receiver refused the signature or credentials; check that it uses notify.webhook.secret",
    403: "the receiver refused the signature or credentials; check that it uses notify.webhook.secret",
    404: "nothing listens at the configured URL; fix notify.webhook.url (or the owner's webhook_url)",
    410: "the receiver is gone; fix notify.webhook.url (or the owner's webhook_url)",
    413: "the receiver refused the size; allow bodies up to 1 MB",
}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Costwatch-Signature`` value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float | None = None,
           tolerance: float = 300.0) -> bool:
    """What a receiver does (also the README's snippet): recompute, compare in constant time, and refuse
    timestamps too far from now."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookNotifier(_http.PostNotifier):
    name = "webhook"

    def __init__(self, url: str, secret: str, *, owner_urls: dict[str, str] | None = None, timeout: float = 15.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._secret, self.timeout, self._clock = secret, timeout, clock
        self._endpoints = _http.Endpoints(url, owner_urls, "webhook_url")

    def _send(self, n: Notification, url: str) -> Delivery:
        body = encode(n, MAX_BODY)
        ts = str(int(self._clock()))
        headers = {"X-Costwatch-Id": n.id, "Idempotency-Key": n.id, "X-Costwatch-Event": n.event,
                   "X-Costwatch-Schema": SCHEMA, "X-Costwatch-Timestamp": ts,
                   "X-Costwatch-Signature": sign(self._secret, ts, body)}
        return _http.send("the webhook", url, body, headers, self.timeout, [self._secret, *self._endpoints.secrets],
                          _HINTS, "the receiver refused the request; check its logs", lambda a: n.id)


def from_config(section: WebhookConfig, cfg: Config) -> WebhookNotifier:
    owners = {name: o.webhook_url.get_secret_value() for name, o in cfg.owners.items() if o.webhook_url}
    return WebhookNotifier(section.url.get_secret_value(), section.secret.get_secret_value(), owner_urls=owners,
                           timeout=section.timeout)


__all__ = ["WebhookNotifier", "from_config", "sign", "verify"]
