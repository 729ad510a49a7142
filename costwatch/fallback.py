"""A channel that fails for good must not fail silently: tell the fallback owner through another channel.

A notifier whose delivery fails permanently (a revoked Slack token, a webhook answering 401/403/404, an
unverified SES sender, an SMTP server refusing the login) is recorded as broken in the state table
``channel``, with the reason it gave (``Delivery.error``: never a secret) and since when.  While it is broken:

* every run tells ``alerting.fallback`` (default: ``alerting.default_owner``, else notify's defaults) through
  its *other* channels, once per ``alerting.repeat_interval``: a "channel_broken" notification, queued in
  the outbox like any other, whose id comes from the channel, the target and the number of the repeat
  interval since it broke, so retried and overlapping runs send it once;
* the outbox tries the broken channel's failed items again on every run (:func:`costwatch.outbox.deliver`'s
  ``retry_failed``).  The first one that goes through clears the record: the fallback stops, and what the
  channel missed is delivered.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd

from .alerts import iso
from .config import Config
from .notify import Notification, Target, notification_id
from .outbox import DeliveryReport
from .routing import routes
from .state import Store

log = logging.getLogger("costwatch.fallback")

TABLE = "channel"
EVENT = "channel_broken"
KEEP_SECONDS = 90 * 86400
LABELS = {"slack": "Slack", "email": "email", "teams": "Microsoft Teams", "pagerduty": "PagerDuty",
          "webhook": "the webhook", "sns": "Amazon SNS", "stdout": "stdout"}


def broken(store: Store) -> dict[str, dict[str, Any]]:
    """Notifier name -> {reason, since, seen} for every channel currently recorded broken."""
    return {r.key: r.doc for r in store.scan(TABLE)}


def update(store: Store, report: DeliveryReport, now: pd.Timestamp) -> dict[str, dict[str, Any]]:
    """Record this run's permanent failures; a channel that delivered this run without failing for good, or
    that has nothing failed left, works again.  Returns the channels still broken."""
    known = {r.key: r for r in store.scan(TABLE)}
    for channel, reason in report.broken.items():
        old = known.get(channel)
        doc = {"channel": channel, "reason": reason[:500], "seen": iso(now),
               "since": (old.doc.get("since") if old else None) or iso(now)}
        store.put(TABLE, channel, doc, version=old.version if old else None,
                  expires_at=time.time() + KEEP_SECONDS)
        if old is None:
            log.warning("notify.%s is broken: %s", channel, reason)
    for channel in set(known) - set(report.broken):
        if channel in report.working or channel not in report.failed_channels:
            store.delete(TABLE, channel)
            log.info("notify.%s works again", channel)
    return broken(store)


def label(channel: str) -> str:
    return LABELS.get(channel, channel)


def targets(cfg: Config, channel: str, configured: set[str]) -> list[tuple[Target, str | None, str | None]]:
    """Where to tell that ``channel`` is broken: the fallback owner's targets on the other configured
    channels, else notify's defaults on them.  (target, owner, mention)"""
    owner = cfg.alerting.fallback or cfg.alerting.default_owner
    for names in ([owner] if owner else [], []):
        out = [(r.target, ", ".join(r.owners) or None, ",".join(r.mentions) or None) for r in routes(names, cfg)
               if r.target.channel != channel and r.target.channel in configured]
        if out:
            return out
    return []


def notifications(cfg: Config, channels: dict[str, dict[str, Any]], now: pd.Timestamp,
                  configured: set[str]) -> list[Notification]:
    """One "channel_broken" notice per broken channel per fallback target, for this repeat interval."""
    every = pd.Timedelta(cfg.alerting.repeat_interval_td)
    out: list[Notification] = []
    for channel, doc in sorted(channels.items()):
        since = pd.Timestamp(doc.get("since") or iso(now))
        since = since.tz_localize("UTC") if since.tzinfo is None else since
        seq = max(0, int((now - since) // every))
        reason = str(doc.get("reason") or "delivery failed for good")
        name = label(channel)
        summary = (f"costwatch cannot deliver alerts through {name} (notify.{channel}) since {iso(since)}: "
                   f"{reason}. Its notifications are kept in the outbox (`costwatch outbox`) and go out once "
                   f"it works again; until then this notice repeats every {cfg.alerting.repeat_interval}.")
        head = {"kind": EVENT, "severity": "critical", "project": f"notify.{channel}", "project_name": name,
                "provider": "costwatch", "summary": summary, "start": iso(since), "detected_at": iso(now),
                "evidence": {"channel": channel, "reason": reason, "since": iso(since)}, "fingerprint": None}
        group = f"{EVENT}:{channel}"
        for target, owner, mention in targets(cfg, channel, configured):
            out.append(Notification(
                id=notification_id(group, target, EVENT, seq), group_key=group, event=EVENT, target=target,
                title=f"costwatch cannot deliver through {name}: {reason}"[:300], alerts=[head],
                created_at=iso(now) or "", owner=owner, mention=mention, sequence=seq,
                labels={"channel": channel}))
        if not out or out[-1].group_key != group:
            log.warning("notify.%s is broken and no other channel is configured to say so", channel)
    return out


__all__ = ["EVENT", "TABLE", "broken", "label", "notifications", "targets", "update"]
