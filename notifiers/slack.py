"""Slack delivery: a bot token (``chat.postMessage``, threads, chart uploads) or an incoming webhook.

The notifier sends each notification once and reports what happened; the outbox owns retries, so the
slack-sdk clients are built with ``retry_handlers=[]`` and every failure is classified into a
:class:`~costwatch.notify.Delivery`: HTTP 429 carries Slack's ``Retry-After``; 5xx, timeouts and dropped
connections are transient; errors that a retry cannot fix (a revoked token, a channel the bot is not in)
are permanent and say what to change.

Secrets stay out of everything we emit.  slack-sdk logs request URLs at DEBUG (for a webhook the URL *is*
the secret) and puts them into some exception texts, so the clients get a private logger that never
emits DEBUG, drops the SDK's per-failure error line (we report the failure ourselves) and redacts the
token and webhook URL from whatever it does emit; our own errors are built from fixed text plus
sanitised Slack error codes, never from ``str(exception)``, and are redacted once more on the way out.
"""

from __future__ import annotations

import http.client
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import WebClient
from slack_sdk.webhook import WebhookClient

from costwatch.config import Config, SlackConfig
from costwatch.notify import SCHEDULED_DIGEST, Delivery, Notification

from . import slack_digest
from ._http import redact, unreachable
from .slack_blocks import render

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
METADATA_EVENT = "costwatch_notification"
MAX_CHART_BYTES = 10 * 1024 * 1024
HISTORY_PAGE = 200        # messages per conversations.history / replies page
HISTORY_PAGES = 10        # how far back find_delivered looks before giving up
# errors that hold for every message of this notifier, not just one channel: the rest of a batch is spared
_CREDENTIAL_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
                                "missing_scope", "ekm_access_denied", "team_access_not_granted"})
_TRANSIENT_ERRORS = frozenset({"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable",
                               "request_timeout", "rollup_error", "timeout"})
_DEAD_WEBHOOK = frozenset({"invalid_token", "no_service", "no_team", "action_prohibited"})
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


# ----------------------------------------------------------------------------------- what to tell people


def _hint(code: str, where: str, needed: str | None = None) -> str:
    """A failure in words an on-call engineer can act on; ``where`` names the channel or the webhook."""
    hints = {
        "invalid_auth": "the bot token is not valid; create a new one and set notify.slack.token",
        "not_authed": "no bot token reached Slack; set notify.slack.token",
        "account_inactive": "the bot's user or workspace is deactivated; reinstall the Slack app and update "
                            "notify.slack.token",
        "token_revoked": "the bot token was revoked; reinstall the Slack app and update notify.slack.token",
        "token_expired": "the bot token expired; reinstall the Slack app and update notify.slack.token",
        "channel_not_found": f"invite the bot to {where} or fix notify.slack.channel (or the owner's "
                             "slack_channel)",
        "not_in_channel": f"invite the bot to {where} (/invite @your-costwatch-app) or route to another channel",
        "is_archived": f"{where} is archived; unarchive it or route alerts to another channel",
        "channel_is_archived": f"{where} is archived; unarchive it or create a new webhook",
        "missing_scope": "the Slack app lacks a scope" + (f" ({needed})" if needed else "")
                         + "; add chat:write (files:write and channels:history for charts and crash recovery) "
                           "and reinstall the app",
        "no_permission": "the bot may not post here; check the workspace's app and channel permissions",
        "restricted_action": f"posting to {where} is restricted; ask a workspace admin or use another channel",
        "ekm_access_denied": "a workspace admin suspended posting (EKM); ask them to restore access",
        "invalid_blocks": "Slack rejected the message layout; this is a costwatch bug, please report it",
        "invalid_blocks_format": "Slack rejected the message layout; this is a costwatch bug, please report it",
        "msg_too_long": "the message is too long for Slack; this is a costwatch bug, please report it",
        "msg_blocks_too_long": "the message is too long for Slack; this is a costwatch bug, please report it",
        "invalid_token": "the webhook URL is not valid any more; create a new incoming webhook and update "
                         "notify.slack.webhook_url",
        "no_service": "the incoming webhook was removed or disabled; create a new one and update "
                      "notify.slack.webhook_url",
        "no_team": "the webhook's workspace is gone; create a new webhook and update notify.slack.webhook_url",
        "action_prohibited": "a workspace admin restricted this webhook; ask them or create a new one",
        "posting_to_general_channel_denied": f"only admins may post to {where}; use another channel",
        "invalid_payload": "Slack could not read the message; this is a costwatch bug, please report it",
    }
    return f"{code}: {hints[code]}" if code in hints else f"Slack error {code}"


def _code(raw: Any) -> str | None:
    """A Slack error code, only if it looks like one: the text goes into logs and the outbox."""
    return raw if isinstance(raw, str) and _CODE.fullmatch(raw) else None


def _retry_after(headers: Any) -> float | None:
    try:
        value = next((v for k, v in dict(headers or {}).items() if str(k).lower() == "retry-after"), None)
        if isinstance(value, list):
            value = value[0] if value else None
        return min(max(float(value), 0.0), 3600.0) if value is not None else None
    except (TypeError, ValueError):
        return None


def _transport(e: BaseException, timeout: float) -> Delivery:
    """No usable answer from Slack: a retry later may well work."""
    return unreachable("Slack", e, timeout)


def _api_failure(e: SlackApiError, where: str) -> Delivery:
    status = int(getattr(e.response, "status_code", 0) or 0)
    data = e.response.data if isinstance(e.response.data, dict) else {}
    code = _code(data.get("error"))
    wait = _retry_after(e.response.headers)
    if status == 429 or code in ("ratelimited", "rate_limited"):
        return Delivery(ok=False, retry_after=wait, error="rate limited by Slack"
                        + (f"; retry after {wait:g}s" if wait is not None else ""))
    if status >= 500 or status == 408:
        return Delivery(ok=False, retry_after=wait, error=f"Slack answered HTTP {status}; will retry")
    if code is None:
        if status == 200:
            return Delivery(ok=False, error="Slack's answer was not API JSON (a proxy in the way?); will retry")
        return Delivery(ok=False, permanent=True,
                        error=f"Slack API answered HTTP {status}; check notify.slack.api_url")
    if code in _TRANSIENT_ERRORS:
        return Delivery(ok=False, retry_after=wait, error=f"Slack error {code}; will retry")
    needed = data.get("needed") if isinstance(data.get("needed"), str) else None
    needed = needed if needed and re.fullmatch(r"[a-z:._,]{1,100}", needed) else None
    return Delivery(ok=False, permanent=True, error=_hint(code, where, needed))


def _blast_radius(d: Delivery) -> str:
    """Which other sends in the same batch would fail the same way: "all" (credentials, Slack
    unreachable), "channel" (a 429: chat.postMessage is limited per channel) or just this "one"."""
    if d.retry_after is not None:
        return "channel"
    head = (d.error or "").split(":")[0]
    if head in _CREDENTIAL_ERRORS or head in _DEAD_WEBHOOK or (d.error or "").startswith("could not reach Slack"):
        return "all"
    return "one"


# ----------------------------------------------------------------------------------- secrets in logs


class _Redact(logging.Filter):
    """Strips the secrets from every record of the SDK logger, and the SDK's own per-failure error line,
    which would duplicate (with less sense) the failure we report."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        msg = redact(record.getMessage(), self.secrets)
        if msg.startswith("Failed to send a request to Slack API server"):
            return False
        record.msg, record.args = msg, None
        return True


def _sdk_logger(secrets: list[str]) -> logging.Logger:
    """A logger only for slack-sdk's clients: not registered globally (so our filter cannot be bypassed by
    configuring ``slack_sdk`` loggers), never at DEBUG (the SDK then logs URLs and bodies), propagating
    to ours so warnings still reach the user's handlers."""
    lg = logging.Logger(f"{__name__}.sdk", level=logging.WARNING)
    lg.parent = log
    lg.addFilter(_Redact(secrets))
    return lg


# ----------------------------------------------------------------------------------- the notifier


class SlackNotifier:
    """Posts notifications to Slack; see the module docstring."""

    name = "slack"

    def __init__(self, *, token: str | None = None, webhook_url: str | None = None, channel: str | None = None,
                 api_url: str | None = None, timeout: float = 15.0, charts: bool = True,
                 interactive: bool = False) -> None:
        if not token and not webhook_url:
            raise ValueError("SlackNotifier needs a bot token or a webhook URL")
        self._secrets = [s for s in (token, webhook_url) if s]
        self.channel = channel or ""
        self.timeout = timeout
        self.charts = charts
        self.interactive = interactive and token is not None
        self._channel_ids: dict[str, str] = {}
        sdk_log = _sdk_logger(self._secrets)
        # urllib takes float seconds; the SDK's hint says int.
        self._web = (WebClient(token=token, base_url=api_url or DEFAULT_API_URL, timeout=cast(int, timeout),
                               logger=sdk_log, retry_handlers=[]) if token else None)
        self._hook = (WebhookClient(webhook_url, timeout=cast(int, timeout), logger=sdk_log, retry_handlers=[])
                      if webhook_url and not token else None)

    def __repr__(self) -> str:
        mode = "token" if self._web else "webhook"
        return f"SlackNotifier({mode}, channel={self.channel!r})"

    # ------------------------------------------------------------------ sending

    def notify(self, notifications: list[Notification]) -> list[Delivery]:
        """One delivery per notification, in order.  After a failure that would repeat for the rest of the
        batch (bad token, Slack unreachable, a 429 on the same channel) the rest are not attempted, so a
        run with Slack down costs one timeout, not one per message."""
        out: list[Delivery] = []
        stop_all: Delivery | None = None
        stop_channel: dict[str, Delivery] = {}
        for n in notifications:
            channel = "" if self._hook is not None else n.target.address or self.channel
            skip = stop_all or stop_channel.get(channel)
            if skip is not None:
                out.append(Delivery(ok=False, retry_after=skip.retry_after, permanent=skip.permanent,
                                    error=f"not sent: {skip.error}"))
                continue
            d = self._deliver(n, channel)
            d.error = redact(d.error, self._secrets) if d.error else d.error
            out.append(d)
            if d.ok:
                log.debug("slack: delivered %s (%s) ts=%s", n.id, n.event, d.ref)
                continue
            log.warning("slack: %s not delivered: %s", n.id, d.error)
            scope = _blast_radius(d)
            if scope == "channel":
                stop_channel[channel] = d
            elif scope == "all":
                stop_all = d
        return out

    def _deliver(self, n: Notification, channel: str) -> Delivery:
        try:
            text, blocks = slack_digest.render(n) if n.event == SCHEDULED_DIGEST else render(n, self.interactive)
        except Exception as e:  # a rendering bug must not take the rest of the batch down
            log.error("slack: could not render %s (%s); this is a costwatch bug", n.id, type(e).__name__)
            return Delivery(ok=False, permanent=True, error=f"could not render the message ({type(e).__name__})")
        if self._hook is not None:
            return self._send_webhook(text, blocks)
        if not channel:
            return Delivery(ok=False, permanent=True,
                            error="no Slack channel: set notify.slack.channel or the owner's slack_channel")
        return self._post(n, channel, text, blocks)

    def _post(self, n: Notification, channel: str, text: str, blocks: list[dict[str, Any]]) -> Delivery:
        web = self._web
        if web is None:
            return Delivery(ok=False, permanent=True, error="Slack: no bot token configured for chat.postMessage")
        args: dict[str, Any] = {
            "channel": channel, "text": text, "blocks": blocks, "unfurl_links": False, "unfurl_media": False,
            "metadata": {"event_type": METADATA_EVENT, "event_payload": {"id": n.id, "group": n.group_key}},
        }
        if n.thread:
            args["thread_ts"] = n.thread
            # "updated" is only sent when the incident grew; that and "resolved" should reach the channel
            if n.event in ("updated", "resolved"):
                args["reply_broadcast"] = True
        try:
            resp = web.chat_postMessage(**args)
        except SlackApiError as e:
            return _api_failure(e, channel)
        except SlackClientError:
            return Delivery(ok=False, permanent=True, error="slack-sdk refused the request; check "
                            "notify.slack.api_url")
        except (OSError, http.client.HTTPException) as e:
            return _transport(e, self.timeout)
        except Exception as e:  # anything else from the SDK: report it, keep the batch going
            log.error("slack: unexpected %s while posting %s", type(e).__name__, n.id)
            return Delivery(ok=False, error=f"unexpected {type(e).__name__} while posting; will retry")
        ts = resp.get("ts")
        channel_id = resp.get("channel") or channel
        if isinstance(channel_id, str) and channel_id != channel:
            self._channel_ids[channel] = channel_id
        self._upload_chart(n, str(channel_id), n.thread or ts)
        return Delivery(ok=True, ref=str(ts) if ts else None)

    def _upload_chart(self, n: Notification, channel_id: str, thread_ts: str | None) -> None:
        """Best effort: the message is already posted, so a failed upload is a warning, not a failure."""
        if self._web is None or not self.charts or not n.chart or not thread_ts:
            return
        path = Path(n.chart)
        try:
            if not path.is_file() or path.stat().st_size > MAX_CHART_BYTES:
                log.warning("slack: chart for %s is missing or too large; not uploaded", n.id)
                return
            with path.open("rb") as f:
                if f.read(8) != b"\x89PNG\r\n\x1a\n":
                    log.warning("slack: chart for %s is not a PNG; not uploaded", n.id)
                    return
            self._web.files_upload_v2(
                file=str(path), filename=f"costwatch-{re.sub(r'[^A-Za-z0-9_-]+', '-', n.group_key)[:60]}.png",
                title="Daily cost, usual band and CPU", channel=channel_id, thread_ts=thread_ts,
                alt_txt="Chart of the project's daily cost against its usual band, and the CPU of flagged nodes")
        except SlackApiError as e:
            log.warning("slack: chart for %s not uploaded: %s", n.id,
                        redact(_api_failure(e, channel_id).error or "", self._secrets))
        except Exception as e:  # upload step 2 raises SlackRequestError, urllib errors, OSError ...
            log.warning("slack: chart for %s not uploaded (%s)", n.id, type(e).__name__)

    def _send_webhook(self, text: str, blocks: list[dict[str, Any]]) -> Delivery:
        hook = self._hook
        if hook is None:
            return Delivery(ok=False, permanent=True, error="Slack: no webhook_url configured")
        try:
            resp = hook.send(text=text, blocks=blocks, unfurl_links=False, unfurl_media=False)
        except SlackClientError:
            return Delivery(ok=False, permanent=True, error="slack-sdk refused the webhook URL; check "
                            "notify.slack.webhook_url")
        except (OSError, http.client.HTTPException) as e:
            return _transport(e, self.timeout)
        except Exception as e:  # anything else from the SDK: report it, keep the batch going
            log.error("slack: unexpected %s while calling the webhook", type(e).__name__)
            return Delivery(ok=False, error=f"unexpected {type(e).__name__} while posting; will retry")
        status, body = resp.status_code, (resp.body or "").strip()
        if status == 200:
            return Delivery(ok=True)
        code = _code(body)
        wait = _retry_after(resp.headers)
        if status == 429:
            return Delivery(ok=False, retry_after=wait, error="rate limited by Slack"
                            + (f"; retry after {wait:g}s" if wait is not None else ""))
        if status >= 500 or status == 408:
            return Delivery(ok=False, retry_after=wait, error=f"Slack webhook answered HTTP {status}; will retry")
        where = "the webhook's channel"
        if code is not None:
            return Delivery(ok=False, permanent=True, error=_hint(code, where) + f" (HTTP {status})")
        if status in (403, 404, 410):
            return Delivery(ok=False, permanent=True, error=f"Slack webhook answered HTTP {status}: the webhook is "
                            "gone or not allowed; create a new one and update notify.slack.webhook_url")
        return Delivery(ok=False, permanent=True, error=f"Slack webhook answered HTTP {status}")

    # ------------------------------------------------------------------ crash recovery

    def find_delivered(self, n: Notification) -> Delivery | None:
        """Was ``n`` already posted (a crash between the send and the outbox's "delivered" mark)?  Looks for
        our message metadata in the channel (or the incident's thread).  ``None`` means "not found" and
        also "could not check"; the outbox decides.  Webhooks cannot read back, so always ``None``."""
        if self._web is None:
            return None
        channel = n.target.address or self.channel
        try:
            channel_id = self._channel_id(channel)
            if channel_id is None:
                log.warning("slack: cannot check %s: channel %s not found", n.id, channel)
                return None
            oldest = _epoch(n.created_at)
            args: dict[str, Any] = {"channel": channel_id, "include_all_metadata": True, "limit": HISTORY_PAGE}
            if oldest is not None:
                args["oldest"] = f"{oldest - 60:.6f}"
            if n.thread:
                pages: Iterator[Any] = self._pages(self._web.conversations_replies, ts=n.thread, **args)
            else:
                pages = self._pages(self._web.conversations_history, **args)
            for page in pages:
                for m in page.get("messages") or []:
                    if _posted_id(m) == n.id:
                        return Delivery(ok=True, ref=str(m.get("ts")))
        except SlackApiError as e:
            log.warning("slack: could not check whether %s was delivered: %s", n.id,
                        redact(_api_failure(e, channel).error or "", self._secrets))
        except (OSError, http.client.HTTPException, SlackClientError) as e:
            log.warning("slack: could not check whether %s was delivered (%s)", n.id, type(e).__name__)
        return None

    def _pages(self, method: Any, **args: Any) -> Iterator[Any]:
        cursor = None
        for _ in range(HISTORY_PAGES):
            page = method(**args, cursor=cursor) if cursor else method(**args)
            yield page
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not page.get("has_more") or not cursor:
                return

    def _channel_id(self, channel: str) -> str | None:
        """History needs a channel id; a configured ``#name`` is resolved once (needs channels:read)."""
        if not channel:
            return None
        if re.fullmatch(r"[CGD][A-Z0-9]{2,}", channel):
            return channel
        if channel in self._channel_ids:
            return self._channel_ids[channel]
        web = self._web
        if web is None:
            return None
        name = channel.lstrip("#")
        for page in self._pages(web.conversations_list, types="public_channel,private_channel",
                                exclude_archived=True, limit=1000):
            for c in page.get("channels") or []:
                if isinstance(c, dict) and c.get("name") == name and isinstance(c.get("id"), str):
                    self._channel_ids[channel] = c["id"]
                    return str(c["id"])
        return None


def _posted_id(message: Any) -> str | None:
    """The notification id we stored in a message's metadata, if it is one of ours."""
    meta = message.get("metadata") if isinstance(message, dict) else None
    if not isinstance(meta, dict) or meta.get("event_type") != METADATA_EVENT:
        return None
    payload = meta.get("event_payload")
    return payload.get("id") if isinstance(payload, dict) else None


def _epoch(iso: str) -> float | None:
    try:
        t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return None
    return (t.replace(tzinfo=UTC) if t.tzinfo is None else t).timestamp()


def from_config(section: SlackConfig, cfg: Config) -> SlackNotifier:
    """The notifier for ``notify.slack``; with both a token and a webhook URL the token wins (threads,
    charts and crash recovery need it)."""
    return SlackNotifier(
        token=section.token.get_secret_value() if section.token else None,
        webhook_url=section.webhook_url.get_secret_value() if section.webhook_url else None,
        channel=section.channel, api_url=section.api_url, timeout=section.timeout, charts=section.charts,
        interactive=section.buttons)


__all__ = ["SlackNotifier", "from_config", "redact"]
