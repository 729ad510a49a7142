"""Block Kit rendering of a :class:`~costwatch.notify.Notification`: pure data in, Slack JSON out, no I/O.

How untrusted data is kept inert.  Project names, tags, services, regions, node ids, titles, summaries and
Kubernetes names all come from cloud data that an attacker who hijacked the account may control, so none
of it is ever placed into mrkdwn as-is:

* Identifiers (node ids, regions, instance types, projects, services, clusters, images, labels) go inside
  inline ``code`` spans, after escaping ``&``/``<``/``>`` to entities.  Slack applies no bold/italic/strike
  and no auto-linking inside code, and the one character that could end the span, the backtick, becomes
  a look-alike (U+02CB).  Unlike zero-width spaces, this keeps ids exact for copy and paste.
* Free text (summaries) goes into ``plain_text`` objects, which Slack never parses for mentions, links
  or formatting; ``<``/``>`` become the look-alikes ``‹``/``›`` there, so the payload holds no
  ``<!channel>``-shaped text anywhere, whatever a given client does with entities in plain text.
* mrkdwn objects carry ``verbatim: true`` so Slack does not auto-link URLs or channel names either.
* Control characters (CR/LF included), zero-width and bidi-override characters become a space, and every
  value is cut to a length budget, so one 10 kB tag cannot push the message past Slack's limits.

The top-level fallback ``text`` (push notifications, clients without Block Kit) is data escaped for
``&``/``<``/``>`` on one line: it cannot ping or link; stray ``*``/``_`` there only change emphasis.

The only ``<…>`` sequences in a message are the ones built here: the owner mention from ``n.mention``
(trusted config, re-validated) and ``<!date^…>`` built from parsed timestamps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from costwatch.k8s_summary import summarize
from costwatch.notify import NEXT_STEPS, RESOLVED_STEPS, Notification

from .slack_actions import actions_block, digest_menu

# Slack's documented Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks).
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_FIELDS = 10
MAX_FIELD_TEXT = 2000
MAX_HEADER_TEXT = 150
MAX_CONTEXT_ELEMENTS = 10
MAX_FALLBACK_TEXT = 3000     # Slack truncates top-level text past 4000 characters; stay well inside
# Slack rejects very long messages with msg_blocks_too_long at an undocumented size; keep the sum of all
# block text well under what real messages are known to carry.
MAX_TOTAL_TEXT = 12_000

SEVERITY_EMOJI = {"critical": "🚨", "high": "🔴", "warning": "🟠", "info": "🔵"}
RESOLVED_EMOJI = "✅"
KIND_LABEL = {"mining_suspected": "Mining suspected", "cost_spike": "Cost spike",
              "threshold_exceeded": "Daily threshold exceeded",
              "budget_forecast_exceeded": "Budget forecast exceeded"}
EVENT_PREFIX = {"firing": "", "updated": "Update · ", "repeat": "Still firing · ", "resolved": "Resolved · "}
_MENTION = re.compile(r"[UWS][A-Z0-9]{2,20}|here|channel")

_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]+")
_TOP_NODES = 5
_TOP_ITEMS = 3


# ------------------------------------------------------------------------------------------ escaping


def clean(value: object, limit: int) -> str:
    """One line of text: invisible and layout-breaking characters become a space, long values are cut
    (the input is bounded first so a huge value costs no more than a short one)."""
    s = value if isinstance(value, str) else str(value)
    s = " ".join(_INVISIBLE.sub(" ", s[: limit * 4 + 16]).split())
    return s if len(s) <= limit else s[: max(limit - 1, 0)].rstrip() + "…"


def esc(s: str) -> str:
    """Slack's three control characters as entities; everything else Slack shows literally."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code(value: object, limit: int = 80) -> str:
    """A data value as an inline code span for mrkdwn (see the module docstring)."""
    s = clean(value, limit).replace("`", "ˋ")
    return f"`{esc(s)}`" if s else "—"


def plain(value: object, limit: int) -> str:
    """Data for a ``plain_text`` object (see the module docstring)."""
    return clean(value, limit).replace("<", "‹").replace(">", "›")


def mention(raw: str | None) -> str:
    """Slack mention syntax for the configured ``slack_mention`` values (comma-joined when a group has
    several owners).  Config validates them; anything else is dropped rather than echoed."""
    out = []
    for m in (raw or "").split(","):
        m = m.strip()
        if not _MENTION.fullmatch(m):
            continue
        if m in ("here", "channel"):
            out.append(f"<!{m}>")
        elif m.startswith("S"):
            out.append(f"<!subteam^{m}>")
        else:
            out.append(f"<@{m}>")
    return " ".join(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------ values


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _cur(a: dict[str, Any]) -> str:
    c = a.get("currency")
    return c if isinstance(c, str) and re.fullmatch(r"[A-Z]{3}", c) else "USD" if c is None else code(c, 8)


def _money(x: Any, cur: str, signed: bool = False) -> str:
    f = _num(x)
    if f is None:
        return "?"
    return f"{f:+,.2f} {cur}" if signed else f"{f:,.2f} {cur}"


def _pct(x: Any) -> str:
    f = _num(x)
    return "?" if f is None else f"{f:.0f}%"


def _when(value: Any) -> str:
    """A timestamp every reader sees in their own time zone, with UTC as the fallback text."""
    if not isinstance(value, str):
        return "?"
    try:
        t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return code(value, 40)
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return f"<!date^{int(t.timestamp())}^{{date_short_pretty}} {{time}}|{t:%Y-%m-%d %H:%M} UTC>"


def _kind(a: dict[str, Any]) -> str:
    """The kind as plain words (for plain text and the fallback)."""
    k = a.get("kind")
    return KIND_LABEL.get(k, clean(k, 40).replace("_", " ").capitalize() or "Alert") if isinstance(k, str) \
        else "Alert"


def _kind_md(a: dict[str, Any]) -> str:
    """The kind for mrkdwn: ours in bold, an unknown one as data."""
    k = a.get("kind")
    return f"*{KIND_LABEL[k]}*" if isinstance(k, str) and k in KIND_LABEL else code(k or "alert", 40)


def _emoji(a: dict[str, Any], event: str) -> str:
    return RESOLVED_EMOJI if event == "resolved" else SEVERITY_EMOJI.get(str(a.get("severity")), "⚠️")


def _project(a: dict[str, Any]) -> Any:
    return a.get("project_name") or a.get("project") or "?"


def _ev(a: dict[str, Any]) -> dict[str, Any]:
    ev = a.get("evidence")
    return ev if isinstance(ev, dict) else {}


def _dicts(x: Any) -> list[dict[str, Any]]:
    return [d for d in x if isinstance(d, dict)] if isinstance(x, list) else []


def _more(shown: int, total: int, what: str) -> list[str]:
    """``… and N more nodes`` (``what`` is singular) when not everything was shown."""
    n = total - shown
    return [f"… and {n} more {what}{'s' if n > 1 else ''}"] if n > 0 else []


def _fit(lines: list[str], limit: int) -> str:
    """Join lines, stopping with a note when the next one would pass ``limit`` characters.  Values are
    clipped before they get here, so this only bites on pathological data (e.g. ids full of ``&``)."""
    tail = "… (cut to fit Slack's limit)"
    out: list[str] = []
    size = 0
    for i, line in enumerate(lines):
        room = limit - size - (1 if out else 0) - (0 if i == len(lines) - 1 else len(tail) + 1)
        if len(line) > room:
            out.append(tail)
            break
        out.append(line)
        size += len(line) + (1 if len(out) > 1 else 0)
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ blocks


def _mrkdwn(text: str, limit: int = MAX_SECTION_TEXT) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text[:limit] or " ", "verbatim": True}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(text)}


def _plain_section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "plain_text", "text": text[:MAX_SECTION_TEXT], "emoji": False}}


def _safe(fn: Callable[[dict[str, Any]], list[dict[str, Any]]], a: dict[str, Any]) -> list[dict[str, Any]]:
    """Evidence comes in shapes that grow over time; a part we cannot read is left out, never fatal."""
    try:
        return fn(a)
    except Exception:  # degrade to nothing, by contract
        return []


def _interval(ev: dict[str, Any], cur: str) -> str:
    """`` (80 %: low–high)`` of a budget forecast, when the evidence has one."""
    low, high, level = _num(ev.get("forecast_low")), _num(ev.get("forecast_high")), _num(ev.get("interval"))
    if low is None or high is None:
        return ""
    return f" ({(level or 0.8) * 100:.0f} %: {_money(low, cur)}–{_money(high, cur)})"


def _impact(a: dict[str, Any]) -> list[str]:
    """The numbers an owner needs first, as mrkdwn field texts (each far below 2000 characters)."""
    ev = _ev(a)
    cur = _cur(a)
    metric = ev.get("metric")
    out: list[str] = []
    if a.get("kind") == "budget_forecast_exceeded" or metric == "month_forecast":
        forecast, budget = _num(ev.get("forecast", a.get("observed"))), _num(ev.get("budget", a.get("expected")))
        out.append(f"*Month-end forecast*\n{_money(forecast, cur)}{_interval(ev, cur)} "
                   f"vs budget {_money(budget, cur)}")
        step = _num(ev.get("step_pct"))
        if step is not None:
            out.append(f"*Step*\n{step:g} % on {ev.get('basis')}: {_money(ev.get('step_amount'), cur)}")
        if forecast is not None and budget is not None and forecast > budget:
            out.append(f"*Over budget by*\n{_money(forecast - budget, cur, signed=True)}")
        if _num(ev.get("month_to_date")) is not None:
            out.append(f"*Month to date*\n{_money(ev.get('month_to_date'), cur)}")
        if _num(ev.get("run_rate")) is not None:
            left = _num(ev.get("days_left"))
            out.append(f"*Run rate*\n{_money(ev.get('run_rate'), cur)}/day"
                       + (f", {left:.0f} days left" if left is not None else ""))
        return out
    if metric == "findings":
        n = len(ev.get("guardduty") or []) if isinstance(ev.get("guardduty"), list) else _num(a.get("observed"))
        out.append(f"*Security findings*\n{n or 0:.0f} crypto-mining finding(s)")
        return out
    cost = ev.get("cost") if isinstance(ev.get("cost"), dict) else None
    if metric == "cpu_percent":
        out.append(f"*CPU*\n{_pct(a.get('observed'))} where {_pct(a.get('expected'))} is usual")
        if _num(a.get("upper")) is not None:
            out.append(f"*Usual CPU band*\n{_pct(a.get('lower'))}–{_pct(a.get('upper'))}")
        src: dict[str, Any] | None = cost
    else:
        src = a
    if src is not None:
        obs, exp = _num(src.get("observed")), _num(src.get("expected"))
        out.append(f"*Spend per day*\n{_money(obs, cur)} observed vs {_money(exp, cur)} expected")
        if _num(src.get("upper")) is not None:
            out.append(f"*Usual band*\n{_money(src.get('lower'), cur) if _num(src.get('lower')) is not None else '?'}"
                       f" – {_money(src.get('upper'), cur)}")
        if obs is not None and exp is not None:
            out.append(f"*Excess*\n{_money(obs - exp, cur, signed=True)} per day")
    return out


def _facts(a: dict[str, Any]) -> list[dict[str, Any]]:
    fields = _impact(a)
    fields.append(f"*Started*\n{_when(a.get('start'))}")
    fields.append(f"*Detected*\n{_when(a.get('detected_at'))}")
    proj = f"*Project*\n{code(_project(a))}"
    if a.get("project") and a.get("project") != a.get("project_name"):
        proj += f" ({code(a.get('provider') or '?', 20)} {code(a.get('project'))})"
    fields.append(proj)
    scope = [code(a[k], 60) for k in ("service", "region") if a.get(k)]
    if scope:
        fields.append("*Where*\n" + " · ".join(scope))
    return [{"type": "section", "fields": [_mrkdwn(f, MAX_FIELD_TEXT) for f in fields[:MAX_FIELDS]]}]


def _nodes(a: dict[str, Any]) -> list[dict[str, Any]]:
    ev = _ev(a)
    nodes = _dicts(ev.get("nodes"))
    if not nodes:
        names = ev.get("finding_nodes")
        if isinstance(names, list) and names:
            shown = names[:_TOP_NODES]
            text = "*Nodes named by the findings*\n" + ", ".join(code(x) for x in shown)
            return [_section(_fit([text, *_more(len(shown), len(names), "node")], MAX_SECTION_TEXT))]
        return []
    total = int(_num(ev.get("node_count")) or len(nodes))
    notes = [f"{int(_num(ev.get(k)) or 0)} {w}" for k, w in (("new_nodes", "new"), ("gpu_nodes", "GPU"))
             if _num(ev.get(k))]
    head = f"*Nodes and CPU* — {total} flagged" + (f" ({', '.join(notes)})" if notes else "")
    lines = [head]
    for nd in nodes[:_TOP_NODES]:
        usual = "new node" if nd.get("new") else f"usual {_pct(nd.get('baseline_cpu'))}"
        if _num(nd.get("cpu_peak")) is not None:  # the hourly Maximum, where the cloud reports one
            usual += f", peak {_pct(nd.get('cpu_peak'))}"
        parts = [f"• {code(nd.get('node') or '?')} {_pct(nd.get('cpu'))} CPU ({usual})"]
        if nd.get("gpu"):
            parts.append("GPU")
        parts += [code(nd[k], 40) for k in ("instance_type", "region", "cluster") if nd.get(k)]
        lines.append(" · ".join(parts))
    lines += _more(min(len(nodes), _TOP_NODES), max(total, len(nodes)), "node")
    return [_section(_fit(lines, MAX_SECTION_TEXT))]


def _regions_services(a: dict[str, Any]) -> list[dict[str, Any]]:
    ev = _ev(a)
    cur = _cur(a)
    regions: dict[str, float | None] = {}
    sources = [ev.get("new_regions"), (ev.get("cost") or {}).get("new_regions") if isinstance(ev.get("cost"), dict)
               else None]
    for src in sources:
        for r in src if isinstance(src, list) else []:
            if isinstance(r, str):
                regions.setdefault(r, None)
            elif isinstance(r, dict) and r.get("region"):
                regions[str(r["region"])] = _num(r.get("cost"))
    parts = []
    if regions:
        items = [code(r, 40) + (f" ({_money(c, cur)})" if c is not None else "")
                 for r, c in list(regions.items())[:_TOP_ITEMS]]
        parts.append("*New regions* " + ", ".join(items) + "".join(f" {m}" for m in _more(len(items), len(regions),
                                                                                             "region")))
    services = _dicts(ev.get("services"))
    if services:
        lines = ["*Top services*"]
        for s in services[:_TOP_ITEMS]:
            share = _num(s.get("share"))
            lines.append(f"• {code(s.get('service') or '?', 60)} {_money(s.get('cost'), cur)}/day, "
                         f"{_money(s.get('excess'), cur, signed=True)} over usual"
                         + (f" ({share:.0%} of the excess)" if share is not None else ""))
        lines += _more(min(len(services), _TOP_ITEMS), len(services), "service")
        parts.append("\n".join(lines))
    return [_section(_fit(parts, MAX_SECTION_TEXT))] if parts else []


def _guardduty(a: dict[str, Any]) -> list[dict[str, Any]]:
    findings = _dicts(_ev(a).get("guardduty"))
    if not findings:
        return []
    lines = [f"*GuardDuty* — {len(findings)} crypto-mining finding(s)"]
    for g in findings[:_TOP_ITEMS]:
        sev = _num(g.get("severity"))
        line = f"• {code(g.get('type') or '?', 100)}" + (f" severity {sev:g}" if sev is not None else "")
        if g.get("node"):
            line += f" on {code(g['node'])}"
        if g.get("cluster"):
            line += f" in {code(g['cluster'], 60)}"
        if g.get("first_seen"):
            line += f", first seen {_when(g['first_seen'])}"
        lines.append(line)
    lines += _more(min(len(findings), _TOP_ITEMS), len(findings), "finding")
    return [_section(_fit(lines, MAX_SECTION_TEXT))]


def _kubernetes(a: dict[str, Any]) -> list[dict[str, Any]]:
    clusters = summarize(_ev(a), _TOP_NODES)   # the same picks as email, stdout and the report
    lines: list[str] = []
    for c in clusters[:2]:
        lines.append("*Kubernetes*" + (f" cluster {code(c.cluster, 60)}" if c.cluster else ""))
        if c.status != "ok":
            lines.append(f"Cluster context {code(c.status, 200)}: the pods below may be missing")
        if c.without_quota:
            lines.append("Namespaces without a ResourceQuota: " + ", ".join(code(x, 60) for x in c.without_quota)
                         + "".join(f" {m}" for m in _more(len(c.without_quota), c.without_quota_total, "namespace")))
        if c.forbidden:
            lines.append("Namespaces that answered 403 (not read): " + ", ".join(code(x, 60) for x in c.forbidden))
        if c.unbounded:
            lines.append(f"{c.unbounded} pod(s) on these nodes have no CPU limit")
        for p in c.pods:
            line = f"• pod {code(f'{p.namespace}/{p.name}', 100)}"
            if p.image:
                line += f" image {code(p.image, 120)}"
            line += f" CPU {p.cpu:g}" if p.cpu is not None else ""
            lines.append(line + (f" — {code('; '.join(p.reasons[:3]), 160)}" if p.reasons else ""))
        lines += _more(len(c.pods), c.pods_total, "pod")
    lines += _more(min(len(clusters), 2), len(clusters), "cluster")
    return [_section(_fit(lines, MAX_SECTION_TEXT))] if lines else []


def _compact(a: dict[str, Any], event: str, interactive: bool = False) -> list[dict[str, Any]]:
    """One more alert of a group in at most two blocks: the numbers, then the summary as plain text; in an
    interactive digest the numbers carry the incident's answer menu."""
    where = " · ".join(code(a[k], 60) for k in ("service", "region") if a.get(k))
    head = f"{_emoji(a, event)} {_kind_md(a)} · {code(_project(a))}" + (f" · {where}" if where else "")
    facts = _impact(a)
    picked = facts[:1] + [f for f in facts[1:] if f.startswith(("*Excess*", "*Over budget by*"))][:1]
    impact = "; ".join(f.replace("\n", ": ", 1) for f in picked)
    text = f"{head}\n{impact}\nsince {_when(a.get('start'))}" if impact else f"{head}\nsince {_when(a.get('start'))}"
    out = [_section(text)]
    menu = digest_menu(str(a.get("group") or "")) if interactive and event == "digest" else None
    if menu is not None:
        out[0]["accessory"] = menu
    summary = plain(a.get("summary") or "", 300)
    if summary:
        out.append({"type": "context", "elements": [{"type": "plain_text", "text": summary, "emoji": False}]})
    return out


def _next_steps(n: Notification) -> str:
    if n.event == "resolved":
        return RESOLVED_STEPS
    kinds = dict.fromkeys(str(a.get("kind")) for a in n.alerts)
    steps = [NEXT_STEPS[k] for k in kinds if k in NEXT_STEPS]
    return "\n".join(f"• {s}" for s in steps) if len(steps) > 1 else (steps[0] if steps else "")


def _text_size(blocks: Iterable[dict[str, Any]]) -> int:
    total = 0
    for b in blocks:
        if isinstance(b.get("text"), dict):
            total += len(b["text"]["text"])
        for f in b.get("fields", []) + b.get("elements", []):
            total += len(f.get("text", ""))
    return total


def render(n: Notification, interactive: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """The fallback ``text`` (notifications, screen readers) and the blocks for one notification; with
    ``interactive`` (the app has a request URL and signing secret) incident messages end in answer buttons."""
    alerts = [a for a in n.alerts if isinstance(a, dict)]
    lead = alerts[0] if alerts else {}
    emoji = _emoji(lead, n.event)
    more = f" (+{len(alerts) - 1} more)" if len(alerts) > 1 else ""
    headline = (f"{EVENT_PREFIX.get(n.event, '')}{_kind(lead)} · {clean(_project(lead), 80)}{more}" if alerts
                else clean(n.title or "costwatch notification", 140))
    header = {"type": "header", "text": {"type": "plain_text", "text": plain(f"{emoji} {headline}", MAX_HEADER_TEXT),
                                         "emoji": True}}
    head: list[dict[str, Any]] = [header]
    if lead:
        summary = plain(lead.get("summary") or "", 1000)
        if summary:
            head.append(_plain_section(summary))
        for render_part in (_facts, _nodes, _regions_services, _guardduty, _kubernetes):
            head += _safe(render_part, lead)

    tail: list[dict[str, Any]] = []
    who = mention(n.mention)
    if n.owner or who:
        tail.append(_section("*Owner* " + " ".join(x for x in (code(n.owner, 120) if n.owner else "", who) if x)))
    steps = _next_steps(n)
    if steps:
        tail.append(_section("*Next steps*\n" + esc(steps)))
    event = n.event if n.event in EVENT_PREFIX else "notification"
    ctx = [f"costwatch {event}" + (f" #{int(n.sequence)}" if n.sequence else ""),
           f"group {code(n.group_key, 60)}"]
    fps = [str(a.get("fingerprint")) for a in alerts if a.get("fingerprint")]
    if fps:
        ctx.append("fingerprint " + " ".join(code(f, 24) for f in fps[:3]) + (f" +{len(fps) - 3}" if len(fps) > 3
                                                                              else ""))
    labels = [f"{k}={v}" for k, v in (n.labels or {}).items()][:4]
    if labels:
        ctx.append("labels " + " ".join(code(x, 60) for x in labels))
    tail.append({"type": "context", "elements": [_mrkdwn(c) for c in ctx[:MAX_CONTEXT_ELEMENTS]]})

    body: list[dict[str, Any]] = []
    rest = alerts[1:]
    if rest:
        body.append({"type": "divider"})
        budget = MAX_BLOCKS - len(head) - len(tail) - 2   # the divider and a "… and N more alerts" line
        size = _text_size(head) + _text_size(tail)
        shown = 0
        for a in rest:
            part = _safe(lambda x: _compact(x, n.event, interactive), a)
            if len(part) > budget or size + _text_size(part) > MAX_TOTAL_TEXT:
                break
            body += part
            budget -= len(part)
            size += _text_size(part)
            shown += 1
        if shown < len(rest):
            body.append({"type": "context", "elements": [_mrkdwn(
                f"… and {len(rest) - shown} more alerts in this incident; `costwatch report` lists them all")]})
    answers = actions_block(n.group_key, {"status": "resolved" if n.event == "resolved" else "open"}) \
        if interactive and n.event not in ("digest", "channel_broken") else None
    blocks = (head + body + tail)[:MAX_BLOCKS - (answers is not None)] + ([answers] if answers else [])

    summary = clean(lead.get("summary") or "", 500) if lead else ""
    # cut before escaping: an entity is at most 5 characters, so this stays under MAX_FALLBACK_TEXT
    fallback = esc(clean(f"{emoji} {headline}" + (f": {summary}" if summary else ""), MAX_FALLBACK_TEXT // 5))
    return fallback, blocks


__all__ = ["MAX_BLOCKS", "clean", "code", "esc", "mention", "plain", "render"]
