"""The contract between alert state and the services that deliver messages (Slack, email, stdout).

Routing turns alerts into :class:`Notification` records: one per incident update per target.  They are
written to the outbox *before* any send, so a crash never loses one.  A notifier (``costwatch.notifiers.*``)
only renders and sends; it never sleeps or retries on its own.  It returns one :class:`Delivery` per
notification saying whether it went, whether a retry can help and how long the service asked us to wait;
the outbox schedules the retry (Alertmanager keeps retry outside its integrations for the same reason:
one place decides backoff, and a run ends on time).

Everything in a notification that came from data (project names, tags, services, regions) is untrusted:
notifiers escape it for their medium (Slack mrkdwn, HTML, mail headers).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol

# "digest": many incidents on one target folded into one message (see costwatch.outbox)
# "channel_broken": a channel failed for good, told through another (see costwatch.fallback)
# "weekly_digest": the scheduled spend summary of an owner's projects (alerting.digest, see costwatch.digest);
#   its one "alert" is the summary document (``{"kind": "weekly_digest", "digest": {...}}``)
Event = Literal["firing", "updated", "repeat", "resolved", "digest", "channel_broken", "weekly_digest"]
EVENTS: tuple[str, ...] = ("firing", "updated", "repeat", "resolved", "digest", "channel_broken", "weekly_digest")
SCHEDULED_DIGEST = "weekly_digest"


@dataclass(frozen=True)
class Target:
    """Where one notification goes: ``channel`` names the notifier, ``address`` is notifier-specific
    (a Slack channel id or #name, comma-joined email addresses, "" for stdout; for Teams, PagerDuty and the
    webhook the name of the owner whose own endpoint is used, never the URL or key itself, or "" for
    notify's; an SNS topic ARN)."""

    channel: str
    address: str = ""

    @property
    def key(self) -> str:
        return f"{self.channel}:{self.address}"


@dataclass
class Notification:
    """One message about one incident (an alert group) to one target.

    ``id`` is the idempotency key: the same incident update to the same target always gets the same id,
    so a retried run cannot queue (or send) it twice.  ``thread`` is the service's reference of the
    incident's first message on this target (a Slack ``ts``, an email Message-ID), filled in by the
    outbox once that first message is delivered, so updates and "resolved" thread under it."""

    id: str
    group_key: str
    event: str                     # one of EVENTS
    target: Target
    title: str                     # plain text headline, untrusted parts included (escape when rendering)
    alerts: list[dict[str, Any]]   # Alert.to_dict() of the group's alerts (for "resolved": as last seen)
    created_at: str                # ISO 8601 UTC
    owner: str | None = None
    mention: str | None = None     # Slack user/group id or "here"/"channel" to ping; from config, trusted
    sequence: int = 0              # update number within the incident: 0 is the first message
    thread: str | None = None
    chart: str | None = None       # path of a PNG chart of the incident, when one was drawn
    labels: dict[str, str] = field(default_factory=dict)  # the group's labels (group_by values)

    def to_json(self) -> str:
        # shallow: dataclasses.asdict would deep-copy every alert's evidence first, which made queueing a
        # 10,000-alert run spend most of its time copying dicts it only serializes
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        d["target"] = {"channel": self.target.channel, "address": self.target.address}
        return json.dumps(d, sort_keys=True, default=str)

    @classmethod
    def from_json(cls, raw: str) -> Notification:
        d = json.loads(raw)
        d["target"] = Target(**d["target"])
        return cls(**d)


# What the owner should do next, per alert kind: the last part of every message, the same in every medium.
NEXT_STEPS: dict[str, str] = {
    "mining_suspected": ("Check the listed nodes now: stop or isolate them if nobody in the team started them, "
                         "rotate the credentials that could launch them, and look for workloads from unknown "
                         "images. Then set a ResourceQuota on namespaces that have none."),
    "cost_spike": ("Open the services and regions listed and compare with recent deploys or traffic; if the "
                   "spend is expected, mark it as planned activity (costwatch silence --planned) so it is "
                   "not re-alerted."),
    "threshold_exceeded": "Spend passed the project's configured daily threshold; confirm it is expected.",
    "budget_forecast_exceeded": ("Spend has passed a step of the monthly budget, or its month-end forecast "
                                 "will: find the services driving it, or raise the budget (or its "
                                 "budget_alerts steps) in the config. Each step is told once a month."),
    "channel_broken": ("Fix the channel named above (a new token, a verified sender, a reachable webhook) and "
                       "update the config or its secret; the next run delivers what it missed and this stops."),
}
RESOLVED_STEPS = "Spend and CPU are back inside their usual band; nothing more to do unless this repeats."


def notification_id(group_key: str, target: Target, event: str, sequence: int) -> str:
    """Stable across runs and retries; different for every real update."""
    raw = "\x1f".join((group_key, target.key, event, str(sequence)))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:24]


@dataclass
class Delivery:
    """What became of one notification.  ``error`` is safe to log and store: no tokens, no passwords,
    no webhook URLs."""

    ok: bool
    ref: str | None = None             # the service's id of what was posted (Slack ts, Message-ID)
    retry_after: float | None = None   # seconds the service asked us to wait (Slack 429 Retry-After)
    permanent: bool = False            # retrying cannot help (invalid_auth, channel_not_found, bad address)
    error: str | None = None


class Notifier(Protocol):
    """One service.  ``notify`` sends each notification once and reports per notification, in order;
    it must not raise for a delivery failure (that is a ``Delivery(ok=False)``), only for misuse."""

    name: str

    def notify(self, notifications: list[Notification]) -> list[Delivery]: ...


__all__ = ["EVENTS", "NEXT_STEPS", "RESOLVED_STEPS", "SCHEDULED_DIGEST", "Delivery", "Event", "Notification",
           "Notifier", "Target", "notification_id"]
