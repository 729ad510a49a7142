"""Who is told: a project's owner (config, then cost tags, then the default), escalation by severity, and
the targets (Slack channel, email addresses, Teams, PagerDuty, webhook, SNS, stdout) each owner resolves to.

Owner names come from config and from cost tags, i.e. partly from data.  A name listed under ``owners:``
uses that entry; an unlisted ``#channel`` or email address is used as written (so a tag ``owner:
team@example.com`` just works); anything else falls back to the notify defaults, with the name shown in
the message.  Mentions are only ever taken from ``owners:`` (validated ids), never from data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .config import Config
from .notify import Target

_EMAIL = re.compile(r"^[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")
_CHANNEL = re.compile(r"^#[a-z0-9][a-z0-9._-]{0,79}$")


@dataclass
class Route:
    """One target and everyone it reaches (several owners can share a channel: one message, all pinged)."""

    target: Target
    owners: list[str] = field(default_factory=list)
    mentions: list[str] = field(default_factory=list)


def project_owners_from_tags(costs: pd.DataFrame, tag_keys: Iterable[str]) -> dict[str, str]:
    """Project id -> owner from cost tags: the most frequent value of the first tag key present."""
    keys = list(tag_keys)
    if costs.empty or "tags" not in costs or not keys:
        return {}
    out: dict[str, str] = {}
    recent = costs.sort_values("period_start").groupby("project_id", observed=True).tail(500)
    for pid, tags in recent.groupby("project_id", observed=True)["tags"]:
        for key in keys:
            values = [str(t[key]).strip() for t in tags if isinstance(t, dict) and t.get(key)]
            if values:
                out[str(pid)] = pd.Series(values).mode().iloc[0]
                break
    return out


def owner_of(project: str, cfg: Config, tag_owners: dict[str, str]) -> str | None:
    pc = cfg.projects.get(project)
    if pc is not None and pc.owner:
        return pc.owner
    return tag_owners.get(project) or cfg.alerting.default_owner


def set_report_owners(projects: list[dict[str, Any]], costs: pd.DataFrame, cfg: Config) -> None:
    """Fill each report row's ``owner`` with the owner ``run`` routes that project's alerts to (config, then
    cost tags, then ``default_owner``), so the report never disagrees with where the messages go."""
    tag_owners = project_owners_from_tags(costs, cfg.alerting.owner_tags)
    for p in projects:
        p["owner"] = owner_of(str(p["project"]), cfg, tag_owners)


def owners_for(project: str, severity: str, cfg: Config, tag_owners: dict[str, str]) -> list[str]:
    """The project's owner plus whoever this severity escalates to, in order, without repeats."""
    names: list[str] = []
    first = owner_of(project, cfg, tag_owners)
    if first:
        names.append(first)
    names += cfg.alerting.escalate.get(severity, [])  # type: ignore[call-overload]
    return list(dict.fromkeys(names))


def routes(owners: list[str], cfg: Config) -> list[Route]:
    """Targets for these owners, merged by target.  Without any owner, notify's defaults."""
    by_key: dict[str, Route] = {}

    def add(target: Target, owner: str | None, mention: str | None) -> None:
        r = by_key.setdefault(target.key, Route(target))
        if owner and owner not in r.owners:
            r.owners.append(owner)
        if mention and mention not in r.mentions:
            r.mentions.append(mention)

    slack, email = cfg.notify.slack, cfg.notify.email
    for name in owners or [""]:
        entry = cfg.owners.get(name) if name else None
        if entry is not None:
            if slack is not None:
                add(Target("slack", "" if slack.webhook_url and not slack.token
                           else (entry.slack_channel or "")), name, entry.slack_mention)
            if email is not None and (entry.email or email.to):
                add(Target("email", ",".join(entry.email or email.to)), name, None)
            continue
        if slack is not None:
            channel = name if _CHANNEL.match(name) and slack.token else ""
            add(Target("slack", channel), name or None, None)
        if email is not None:
            rcpt = [name] if _EMAIL.match(name) else list(email.to)
            if rcpt:
                add(Target("email", ",".join(rcpt)), name or None, None)
    _other_channels(owners, cfg, add)
    if cfg.notify.stdout:
        add(Target("stdout"), None, None)
        for name in owners:
            add(Target("stdout"), name, None)
    return list(by_key.values())


# notify.<channel> -> the owner field naming that owner's own endpoint there
OWNER_FIELDS = {"teams": "teams_webhook_url", "pagerduty": "pagerduty_routing_key", "webhook": "webhook_url",
                "sns": "sns_topic_arn"}


def _other_channels(owners: list[str], cfg: Config, add: Callable[[Target, str | None, str | None], None]) -> None:
    """Teams, PagerDuty, webhook and SNS targets: an owner with its own endpoint gets it (the address names the
    owner, so the outbox never stores the secret; an SNS topic ARN is not secret and is used as is), everyone
    else shares the notify default."""
    for channel, fld in OWNER_FIELDS.items():
        if getattr(cfg.notify, channel) is None:
            continue
        for name in owners or [""]:
            entry = cfg.owners.get(name) if name else None
            value = getattr(entry, fld) if entry is not None else None
            address = "" if value is None else (value if channel == "sns" else name)
            add(Target(channel, address), name or None, None)


__all__ = ["OWNER_FIELDS", "Route", "owner_of", "owners_for", "project_owners_from_tags", "routes",
           "set_report_owners"]
