"""Microsoft Teams through a Workflows incoming webhook (Power Automate "When a Teams webhook request is
received"; the Office 365 connectors are retired).  Each notification is one Adaptive Card (1.5) with the
same content as the Slack message and the email (the email's views: summary, impact, nodes, regions,
services, GuardDuty, Kubernetes context, next steps), posted as
``{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", ...}]}``.

A Workflows webhook returns no message id, so updates and "resolved" are new cards that name the first one:
the title starts "Update ·" / "Resolved ·" and the card says which incident and which first message it
follows.

Untrusted data never reaches Teams markdown as-is: free text and evidence lines are ``TextRun`` elements of
``RichTextBlock`` (plain text, never parsed), and the few values in markdown-parsed places (the title, fact
values) have Teams markdown escaped (``esc``).  The card is kept under the ~28 KB Teams accepts: further
alerts are added only while they fit, then "… and N more".

Answers: 202 (or 200) accepted; 429 and 5xx are retried later with Retry-After; 400/401/403/404 are permanent
(the workflow was deleted or turned off, or its URL changed).  The webhook URL is the credential: never
logged, never in an error.
"""

from __future__ import annotations

import json
import re
from typing import Any

from costwatch import digest
from costwatch.config import Config, TeamsConfig
from costwatch.notify import SCHEDULED_DIGEST, Delivery, Notification

from . import _http
from .email_render import AlertView, Section, _next_steps, _views, clean
from .schema import worst_severity
from .slack_blocks import EVENT_PREFIX, KIND_LABEL

MAX_CARD = 26_000          # bytes of the whole message; Teams refuses messages over ~28 KB
CARD_VERSION = "1.5"
CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
_COLOR = {"critical": "Attention", "high": "Attention", "warning": "Warning", "info": "Accent"}
_MD = re.compile(r"([\\`*_~\[\]()#>|])")
_OUR_ID = re.compile(r"[0-9a-f]{8,64}(#\d{1,6})?|digest:[0-9a-f]{8,64}")
_LIST_START = re.compile(r"^([-+]|\d+(?=\.))")
_HINTS = {
    400: "the workflow refused the card; check that the flow posts the Adaptive Card it receives",
    401: "the workflow refused the request; create a new Teams webhook workflow and update notify.teams.webhook_url",
    403: "the workflow refused the request; create a new Teams webhook workflow and update notify.teams.webhook_url",
    404: "the workflow is gone or turned off; turn it on or create a new one and update notify.teams.webhook_url",
    413: "the card is too large for Teams; this is a costwatch bug, please report it",
}


def esc(value: object, limit: int = 200) -> str:
    """Data for a markdown-parsed place: one line, Teams markdown and ``{{…}}`` functions made literal,
    ``<``/``>`` as look-alikes (no ``<at>`` mentions)."""
    s = clean(value, limit).replace("<", "‹").replace(">", "›").replace("{{", "{ {")
    s = _MD.sub(r"\\\1", s)
    return _LIST_START.sub(lambda m: "\\" + m.group(1) if m.group(1) in "-+" else m.group(1) + "\\", s, count=1)


def _run(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": text, **style}]}


def _title(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, "weight": "Bolder", **style}


def _section(s: Section) -> list[dict[str, Any]]:
    lines = list(s.lines)
    if s.table:
        lines += [" · ".join(c for c in row if c) for row in s.table[1:]]
    if s.more:
        lines.append(s.more)
    return [_title(esc(s.title, 80), spacing="Medium")] + [_run(clean(line, 400)) for line in lines if line]


def _alert(v: AlertView) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"type": "TextBlock", "text": esc(v.heading, 250), "wrap": True,
                                  "weight": "Bolder", "separator": True, "spacing": "Large",
                                  "color": _COLOR.get(v.severity, "Default")}]
    for s in v.sections:
        out += _section(s)
    return out


def _size(card: dict[str, Any]) -> int:
    return len(json.dumps(message(card), ensure_ascii=False).encode("utf-8"))


def message(card: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "attachments": [{"contentType": CONTENT_TYPE, "contentUrl": None, "content": card}]}


def headline(n: Notification) -> str:
    alerts = [a for a in n.alerts if isinstance(a, dict)]
    if not alerts:
        return EVENT_PREFIX.get(n.event, "") + (clean(n.title, 140) or "costwatch notification")
    a = alerts[0]
    kind = KIND_LABEL.get(str(a.get("kind")), clean(a.get("kind"), 40).replace("_", " ").capitalize() or "Alert")
    more = f" (+{len(alerts) - 1} more)" if len(alerts) > 1 else ""
    project = clean(a.get("project_name") or a.get("project") or "?", 80)
    return f"{EVENT_PREFIX.get(n.event, '')}{kind} · {project}{more}"


def digest_card(n: Notification) -> dict[str, Any]:
    """The scheduled summary (``costwatch.digest``) as plain-text runs, sections added while the card fits."""
    doc = digest.of(n)
    body: list[dict[str, Any]] = [_title(esc(n.title, 200), size="Large"), _run(clean(digest.headline(doc), 1000))]
    for title, lines in digest.sections(doc):
        part = _section(Section(title, lines=lines))
        if _size(_card(body + part, n)) > MAX_CARD:
            body.append(_run("… more in `costwatch digest` and the email digest", isSubtle=True))
            break
        body += part
    return _card(body, n)


def card(n: Notification) -> dict[str, Any]:
    """The Adaptive Card for one notification (see the module docstring)."""
    if n.event == SCHEDULED_DIGEST:
        return digest_card(n)
    sev = "info" if n.event == "resolved" else worst_severity(n)
    head: list[dict[str, Any]] = [_title(esc(headline(n), 200), size="Large",
                                         color="Good" if n.event == "resolved" else _COLOR.get(sev, "Default"))]
    # the incident id is ours (hash#n): shown as is, so it can be searched for; anything else is escaped
    incident = n.group_key if _OUR_ID.fullmatch(n.group_key) else esc(n.group_key, 120)
    facts = [{"title": "Severity", "value": esc(sev, 20)}, {"title": "Incident", "value": incident}]
    if n.owner:
        facts.append({"title": "Owner", "value": esc(n.owner, 120)})
    if n.event != "firing":
        facts.append({"title": "Update", "value": f"{esc(n.event, 20)} {int(n.sequence)}"})
    head.append({"type": "FactSet", "facts": facts})
    if n.thread and n.event != "firing":
        head.append(_run(f"Follows up on this incident's first message (notification {clean(n.thread, 64)}).",
                         isSubtle=True))
    steps = _next_steps(n)
    tail: list[dict[str, Any]] = [_title("Next steps", spacing="Large", separator=True)]
    tail += [_run(clean(s, 1000)) for s in steps]
    tail.append(_run(f"costwatch {clean(n.event, 20)} · incident {clean(n.group_key, 120)} · notification "
                     f"{clean(n.id, 64)}", isSubtle=True, size="Small"))
    body = list(head)
    views = _views(n)
    shown = 0
    for v in views:
        part = _alert(v)
        if _size(_card(body + part + tail, n)) > MAX_CARD:
            if shown == 0:   # even the first alert is too big: keep what fits of it
                for el in part:
                    if _size(_card([*body, el, *tail], n)) > MAX_CARD:
                        break
                    body.append(el)
                shown = 1
            break
        body += part
        shown += 1
    if shown < len(views):
        body.append(_run(f"… and {len(views) - shown} more alerts in this incident; `costwatch report` lists "
                         "them all", isSubtle=True))
    return _card(body + tail, n)


def _card(body: list[dict[str, Any]], n: Notification) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "AdaptiveCard", "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                           "version": CARD_VERSION, "msteams": {"width": "Full"}, "body": body}
    if n.chart and n.chart.startswith("https://"):
        out["actions"] = [{"type": "Action.OpenUrl", "title": "Open the chart", "url": n.chart}]
    return out


class TeamsNotifier(_http.PostNotifier):
    name = "teams"

    def __init__(self, webhook_url: str, *, owner_urls: dict[str, str] | None = None, timeout: float = 15.0) -> None:
        self._endpoints, self.timeout = _http.Endpoints(webhook_url, owner_urls, "teams_webhook_url"), timeout

    def _send(self, n: Notification, url: str) -> Delivery:
        body = json.dumps(message(card(n)), ensure_ascii=False).encode("utf-8")
        return _http.send("Teams", url, body, {}, self.timeout, self._endpoints.secrets, _HINTS,
                          "the workflow refused the card; check notify.teams.webhook_url", lambda a: n.id)


def from_config(section: TeamsConfig, cfg: Config) -> TeamsNotifier:
    owners = {name: o.teams_webhook_url.get_secret_value() for name, o in cfg.owners.items() if o.teams_webhook_url}
    return TeamsNotifier(section.webhook_url.get_secret_value(), owner_urls=owners, timeout=section.timeout)


__all__ = ["TeamsNotifier", "card", "digest_card", "esc", "from_config", "message"]
