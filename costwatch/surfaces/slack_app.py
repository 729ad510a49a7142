"""Owners answer from Slack: the Bolt app behind the buttons on costwatch's messages.

Slack's own framework does the protocol: Bolt verifies every request's signature with the app's signing
secret and refuses timestamps older than five minutes, acks within Slack's three seconds, and serves the
same app from ``costwatch serve`` (ASGI under uvicorn) and from Lambda (its AWS Lambda adapter).  On top:

- **Replays refused.**  A signed request is only valid for five minutes, but within them it could be sent
  again; each one's signature is recorded (insert-if-absent, TTL) and a second copy changes nothing (409).
- **Only the incident's channel.**  The press must come from a message costwatch posted for that incident
  (its thread reference in state: same channel, same message or its thread), and the user must be a
  member of that channel (``conversations.members``).  Anything else gets an ephemeral "not allowed".
- **One implementation of the answer.**  :func:`costwatch.answers.apply` does the state change, the same
  as ``costwatch ack`` / ``silence``; then the pressed message (and the incident's first message, when the
  press was in its thread) is updated in place with ``chat.update`` and a confirmation goes to the thread.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
from slack_bolt import App, BoltResponse
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from costwatch import answers
from costwatch.config import Config
from costwatch.errors import ConfigError, CostwatchError
from costwatch.notifiers.slack import DEFAULT_API_URL
from costwatch.notifiers.slack_actions import PREFIX, with_answers
from costwatch.state import Store

log = logging.getLogger("costwatch.slack_app")

REPLAY_WINDOW = 10 * 60     # longer than Bolt's 5-minute timestamp window: a replay is always caught
_ACTION = re.compile(re.escape(PREFIX) + r"[a-z_]+")
_ID = re.compile(r"[A-Z0-9]{2,24}")


def _now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


class _Press:
    """What one button press says, read defensively from Slack's payload."""

    def __init__(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        self.user = str((body.get("user") or {}).get("id") or "")
        ch = body.get("channel") or {}
        container = body.get("container") or {}
        self.channel = str(ch.get("id") or container.get("channel_id") or "")
        self.channel_name = str(ch.get("name") or "")
        self.message: dict[str, Any] = body.get("message") or {}
        self.ts = str(container.get("message_ts") or self.message.get("ts") or "")
        self.thread_ts = str(self.message.get("thread_ts") or "")
        self.action = str(action.get("action_id") or "").removeprefix(PREFIX)
        value = str(action.get("value") or (action.get("selected_option") or {}).get("value") or "")
        self.digest = self.action == "digest"
        if self.digest:  # a digest's overflow menu: "<answer>|<group>", silences as silence6 / silence24
            verb, _, value = value.partition("|")
            self.action, hours = ("silence", verb[7:]) if verb.startswith("silence") else (verb, "")
            self.group = value
        else:
            self.group, _, hours = value.partition("|")
        self.hours = float(hours) if hours.replace(".", "", 1).isdigit() else None

    @property
    def root_ts(self) -> str:
        return self.thread_ts or self.ts


def _incident_messages(store: Store, group: str, default_channel: str) -> list[tuple[str, str]]:
    """(channel, first message ts) of every Slack target the incident was posted to; an owner without a
    channel of their own was posted to ``notify.slack.channel``."""
    prefix = f"{group}|slack:"
    return [(r.key[len(prefix):] or default_channel, str(r.doc.get("ref") or "")) for r in store.scan("thread")
            if r.key.startswith(prefix) and r.doc.get("ref")]


def _same_channel(address: str, press: _Press) -> bool:
    return address in (press.channel, f"#{press.channel_name}", press.channel_name) and bool(press.channel)


def _member(client: WebClient, channel: str, user: str) -> bool:
    cursor = None
    while True:
        resp = client.conversations_members(channel=channel, cursor=cursor, limit=200)
        if user in (resp.get("members") or []):
            return True
        cursor = (resp.get("response_metadata") or {}).get("next_cursor")
        if not cursor:
            return False


def allowed(store: Store, client: WebClient, press: _Press, default_channel: str = "") -> str | None:
    """None when the press may act; else why not (shown to the user only)."""
    if not _ID.fullmatch(press.user) or not _ID.fullmatch(press.channel):
        return "not allowed: this request names no user or channel"
    mine = [(a, ts) for a, ts in _incident_messages(store, press.group, default_channel) if _same_channel(a, press)]
    if not mine or not any(ts in (press.ts, press.root_ts) for _, ts in mine):
        return "not allowed: answers are taken only on the incident's own message in its owner's channel"
    try:
        if not _member(client, press.channel, press.user):
            return "not allowed: only members of this channel can answer its incidents"
    except SlackApiError as e:
        code = e.response.get("error") if e.response is not None else "error"
        log.warning("slack answer: conversations.members failed (%s); refusing", code)
        return (f"not allowed: costwatch could not check channel membership ({code}); give the app the "
                "channels:read and groups:read scopes")
    return None


def _refresh(client: WebClient, press: _Press, state: dict[str, Any]) -> None:
    """Show the new state on the pressed message and, for a press in the thread, on the first message."""
    blocks = press.message.get("blocks") or []
    client.chat_update(channel=press.channel, ts=press.ts, text=str(press.message.get("text") or "costwatch"),
                       blocks=with_answers(blocks, press.group, state))
    if press.thread_ts and press.thread_ts != press.ts:
        got = client.conversations_replies(channel=press.channel, ts=press.thread_ts, limit=1)
        root = next(iter(got.get("messages") or []), None)
        if root is not None:
            client.chat_update(channel=press.channel, ts=press.thread_ts, text=str(root.get("text") or "costwatch"),
                               blocks=with_answers(root.get("blocks") or [], press.group, state))


def _say(client: WebClient, press: _Press, text: str, *, private: bool) -> None:
    try:
        if private:
            client.chat_postEphemeral(channel=press.channel, user=press.user, text=text)
        else:
            client.chat_postMessage(channel=press.channel, thread_ts=press.root_ts, text=text,
                                    unfurl_links=False, unfurl_media=False)
    except SlackApiError as e:
        log.warning("slack answer: could not tell the user (%s)", e.response.get("error") if e.response else "?")


def handle_press(store: Store, client: WebClient, body: dict[str, Any], action: dict[str, Any],
                 now: pd.Timestamp, default_channel: str = "") -> str:
    """Check, apply, show.  Returns what happened (for logs and tests)."""
    press = _Press(body, action)
    why = allowed(store, client, press, default_channel)
    if why is not None:
        _say(client, press, why, private=True)
        log.info("slack answer refused", extra={"costwatch": {"action": press.action, "why": why}})
        return why
    try:
        outcome = answers.apply(store, press.action, press.group, press.user, now, hours=press.hours)
    except CostwatchError as e:  # refused (resolved, older occurrence) or state unavailable
        _say(client, press, f"not done: {e}", private=True)
        return f"not done: {e}"
    text = outcome.text.replace(press.user, f"<@{press.user}>")
    if press.digest and outcome.incident:
        text = f"{outcome.incident}: {text}"
    try:
        if not press.digest:  # a digest lists many incidents: it is answered in its thread, not rewritten
            _refresh(client, press, outcome.state)
    except SlackApiError as e:  # the answer is recorded; the message just shows it later
        log.warning("slack answer: message not updated (%s)", e.response.get("error") if e.response else "?")
    _say(client, press, text, private=False)
    return outcome.text


def _replay_guard(store: Store) -> Callable[..., Any]:
    def guard(req: Any, resp: BoltResponse, next: Callable[[], BoltResponse]) -> BoltResponse:
        headers = req.headers or {}
        sig = (headers.get("x-slack-signature") or [""])[0]
        stamp = (headers.get("x-slack-request-timestamp") or [""])[0]
        key = hashlib.sha256(f"{stamp}:{sig}".encode()).hexdigest()[:32]
        if not store.put("answer", key, {"at": time.time()}, version=None, expires_at=time.time() + REPLAY_WINDOW):
            log.warning("slack answer: replayed request refused")
            return BoltResponse(status=409, body="replayed request refused")
        return next()
    return guard


def build_app(cfg: Config, store: Store, *, client: WebClient | None = None,
              clock: Callable[[], pd.Timestamp] = _now) -> App:
    """The Bolt app for ``cfg``: signing secret and bot token from ``notify.slack``."""
    slack = cfg.notify.slack
    if slack is None or slack.signing_secret is None or slack.token is None:
        raise ConfigError("answers from Slack need notify.slack.token and notify.slack.signing_secret "
                          "(the Slack app's Signing Secret)")
    client = client or WebClient(token=slack.token.get_secret_value(), base_url=slack.api_url or DEFAULT_API_URL,
                                 timeout=int(slack.timeout))
    app = App(signing_secret=slack.signing_secret.get_secret_value(), client=client, token_verification_enabled=False,
              process_before_response=True, logger=log)
    app.use(_replay_guard(store))

    @app.action(_ACTION)
    def _on_action(ack: Callable[[], None], body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        handle_press(store, client, body, action, clock(), slack.channel or "")

    return app


__all__ = ["REPLAY_WINDOW", "allowed", "build_app", "handle_press"]
