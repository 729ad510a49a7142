"""Turn a :class:`~costwatch.notify.Notification` into a MIME message an on-call owner can act on from a phone.

Kept apart from the transports (``email.py``) so SMTP and SES send byte-identical messages, and so the
rendering rules that matter for safety live in one place:

* Every string that came from data (project names, tags, node ids, images, GuardDuty types) is untrusted.
  It is flattened to one line (no CR/LF or other control characters, so nothing can reach a header or fake
  a line of the body), truncated (a 10 kB tag must not make a 10 kB subject), and ``html.escape``-d in the
  HTML part.  The renderers only ever receive plain strings built by :func:`_views`; escaping happens once,
  at the last step, so a new section cannot forget it.
* Evidence shapes vary by detector and version.  Accessors here never assume a type, and a section that
  still fails is left out (and logged) rather than losing the whole message.
* The message is an ``EmailMessage`` under ``policy.SMTP``: CRLF line ends, RFC 2047 encoding of non-ASCII
  header text, and a hard error (not a silent header split) if a line break ever slips through.
"""

from __future__ import annotations

import html
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from pathlib import Path
from typing import Any

from costwatch import digest
from costwatch.k8s_summary import summarize_one
from costwatch.notify import NEXT_STEPS, RESOLVED_STEPS, SCHEDULED_DIGEST, Notification

log = logging.getLogger(__name__)

SEVERITY_ORDER = {"critical": 0, "high": 1, "warning": 2, "info": 3}
MAX_NODES = 5          # nodes listed per alert; the rest is "and N more" (the JSON report has them all)
MAX_ITEMS = 5          # findings, pods, services, namespaces listed per alert
MAX_CHART_BYTES = 5_000_000
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# C0/C1 controls and the Unicode line/paragraph separators: anything a mail client or a header parser
# could treat as a line break.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SPACES = re.compile(r"\s{2,}")


# ------------------------------------------------------------------------------------------ safe values


def clean(value: Any, limit: int = 200) -> str:
    """One line of at most ``limit`` characters, whatever ``value`` is; the only way data enters a message."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    text = _SPACES.sub(" ", _CONTROL.sub(" ", text[: limit * 4])).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _num(value: Any) -> float | None:
    """A finite number or None: evidence written by older versions may hold strings, nulls or NaN."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _money(value: Any, currency: str) -> str:
    x = _num(value)
    if x is None:
        return "?"
    return f"${x:,.2f}" if currency == "USD" else f"{x:,.2f} {currency}"


def _pct(value: Any) -> str:
    x = _num(value)
    return "?" if x is None else f"{x:.0f}%"


def _when(value: Any) -> str:
    """ISO 8601 from the alert as ``2026-11-10 03:00 UTC``; anything else verbatim (cleaned)."""
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return clean(value, 40)
        t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
        return t.strftime("%Y-%m-%d %H:%M UTC")
    return clean(value, 40)


# ---------------------------------------------------------------------------------------------- views


@dataclass
class Section:
    """A titled block of plain-text lines and/or one table (first row = header); all strings unescaped."""

    title: str
    lines: list[str] = field(default_factory=list)
    table: list[list[str]] = field(default_factory=list)
    more: str = ""


@dataclass
class AlertView:
    heading: str
    severity: str
    sections: list[Section]


def _impact(a: dict[str, Any], ev: dict[str, Any], cur: str) -> Section:
    s = Section("Impact")
    metric = ev.get("metric")
    if metric == "month_forecast" or a.get("kind") == "budget_forecast_exceeded":
        forecast = ev.get("forecast", a.get("observed"))
        budget = ev.get("budget", a.get("expected"))
        span = (f" (80 %: {_money(ev['forecast_low'], cur)}–{_money(ev['forecast_high'], cur)})"
                if _num(ev.get("forecast_low")) is not None and _num(ev.get("forecast_high")) is not None else "")
        s.lines.append(f"Month-end forecast {_money(forecast, cur)}{span} against a budget of {_money(budget, cur)}.")
        if _num(ev.get("step_pct")) is not None:
            s.lines.append(f"Step {_num(ev['step_pct']):g} % of the budget ({_money(ev.get('step_amount'), cur)}) "
                           f"passed on {ev.get('basis')} spend.")
        extra = []
        if _num(ev.get("month_to_date")) is not None:
            extra.append(f"month to date {_money(ev['month_to_date'], cur)}")
        if _num(ev.get("run_rate")) is not None:
            extra.append(f"run rate {_money(ev['run_rate'], cur)}/day")
        if _num(ev.get("days_left")) is not None:
            extra.append(f"{_num(ev['days_left']):.0f} days left")
        if extra:
            s.lines.append("; ".join(extra).capitalize() + ".")
        return s
    if metric == "findings":
        n = _num(a.get("observed"))
        s.lines.append(f"{n:.0f} security finding(s) reported by the cloud provider." if n is not None
                       else "Security findings reported by the cloud provider.")
        return s
    cost = _dict(ev.get("cost"))
    if metric == "cpu_percent":
        s.lines.append(f"CPU {_pct(a.get('observed'))} where {_pct(a.get('expected'))} is usual.")
        src = cost
    else:
        src = a
    obs, exp = _num(src.get("observed")), _num(src.get("expected"))
    if obs is not None:
        line = f"Spend {_money(obs, cur)}/day"
        if exp is not None:
            line += f", expected {_money(exp, cur)}/day"
        lo, up = _num(src.get("lower")), _num(src.get("upper"))
        if up is not None:
            line += f" (usual band {_money(lo, cur) if lo is not None else 'up to'} – {_money(up, cur)})"
        s.lines.append(line + ".")
        if exp is not None:
            s.lines.append(f"Excess: {_money(obs - exp, cur)} per day above expected.")
    peak, total = _num(ev.get("peak")), _num(ev.get("excess_total"))
    if total is not None:
        s.lines.append(f"Excess so far: {_money(total, cur)}" + (f" (peak day {_money(peak, cur)})."
                                                                  if peak is not None else "."))
    return s


def _nodes(ev: dict[str, Any]) -> Section | None:
    nodes = [n for n in _list(ev.get("nodes")) if isinstance(n, dict)]
    if not nodes:
        return None
    nodes.sort(key=lambda n: -(_num(n.get("cpu")) or 0.0))
    s = Section("Nodes", table=[["node", "CPU", "usual CPU", "new / GPU", "instance type", "region"]])
    for n in nodes[:MAX_NODES]:
        flags = ", ".join(f for f, on in (("new", n.get("new") is True), ("GPU", n.get("gpu") is True)) if on)
        peak = f" (peak {_pct(n.get('cpu_peak'))})" if _num(n.get("cpu_peak")) is not None else ""
        s.table.append([clean(n.get("node"), 80) or "?", _pct(n.get("cpu")) + peak,
                        "none (new)" if n.get("new") is True else _pct(n.get("baseline_cpu")), flags,
                        clean(n.get("instance_type"), 40), clean(n.get("region"), 40)])
    total = max(len(nodes), int(_num(ev.get("node_count")) or 0))
    if total > MAX_NODES:
        s.more = f"and {total - MAX_NODES} more nodes"
    summary = []
    for key, label in (("new_nodes", "new"), ("gpu_nodes", "GPU")):
        k = _num(ev.get(key))
        if k:
            summary.append(f"{k:.0f} {label}")
    if summary:
        s.lines.append(f"{total} node(s): " + ", ".join(summary) + ".")
    return s


def _regions(ev: dict[str, Any], cur: str) -> Section | None:
    found: dict[str, float | None] = {}
    for item in [*_list(ev.get("new_regions")), *_list(_dict(ev.get("cost")).get("new_regions"))]:
        name, cost = (item, None) if not isinstance(item, dict) else (item.get("region"), _num(item.get("cost")))
        key = clean(name, 60)
        if key and (found.get(key) is None):
            found[key] = cost
    if not found:
        return None
    items = list(found.items())
    s = Section("New regions", lines=[f"{r}: {_money(c, cur)} spent there" if c is not None else r
                                      for r, c in items[:MAX_ITEMS]])
    if len(items) > MAX_ITEMS:
        s.more = f"and {len(items) - MAX_ITEMS} more regions"
    return s


def _services(ev: dict[str, Any], cur: str) -> Section | None:
    rows = [x for x in _list(ev.get("services")) if isinstance(x, dict)]
    if not rows:
        return None
    s = Section("Services driving it", table=[["service", "cost/day", "excess/day", "share of excess"]])
    for x in rows[:MAX_ITEMS]:
        share = _num(x.get("share"))
        s.table.append([clean(x.get("service"), 80) or "?", _money(x.get("cost"), cur), _money(x.get("excess"), cur),
                        f"{share:.0%}" if share is not None else ""])
    if len(rows) > MAX_ITEMS:
        s.more = f"and {len(rows) - MAX_ITEMS} more services"
    return s


def _guardduty(ev: dict[str, Any]) -> Section | None:
    raw = ev.get("guardduty")
    findings = [f for f in _list(raw) if isinstance(f, dict)]
    if not findings:
        return Section("GuardDuty findings", lines=[clean(raw, 300)]) if raw and not isinstance(raw, list) else None
    s = Section("GuardDuty findings", table=[["type", "severity", "where", "first seen"]])
    for f in findings[:MAX_ITEMS]:
        sev = _num(f.get("severity"))
        where = " / ".join(x for x in (clean(f.get("cluster"), 60), clean(f.get("node"), 80)) if x)
        s.table.append([clean(f.get("type"), 100) or "?",
                        f"{sev:g}" if sev is not None else clean(f.get("severity"), 20),
                        where or clean(f.get("region"), 40) or "?", _when(f.get("first_seen"))])
    if len(findings) > MAX_ITEMS:
        s.more = f"and {len(findings) - MAX_ITEMS} more findings"
    return s


def _kubernetes(ev: dict[str, Any]) -> Section | None:
    raw = ev.get("kubernetes")
    if not raw:
        return None
    if not isinstance(raw, dict):
        return Section("Kubernetes", lines=[clean(raw, 300)])
    s = Section("Kubernetes")
    c = summarize_one(raw, MAX_ITEMS)   # the same picks as Slack, stdout and the report
    if c.cluster:
        s.lines.append(f"Cluster: {clean(c.cluster, 80)}")
    ns = [clean(x, 60) for x in c.without_quota if clean(x, 60)]
    if ns:
        more = f" and {c.without_quota_total - len(ns)} more" if c.without_quota_total > len(ns) else ""
        s.lines.append("Namespaces without a ResourceQuota: " + ", ".join(ns) + more)
    if c.forbidden:
        s.lines.append("Namespaces that answered 403 (not read): " + ", ".join(clean(x, 60) for x in c.forbidden))
    if c.unbounded:
        s.lines.append(f"{c.unbounded} pod(s) on these nodes have no CPU limit")
    s.lines += [clean(note, 200) for note in c.notes]
    if c.pods:
        s.table = [["namespace", "pod", "image", "CPU", "why"]]
        s.table += [[clean(p.namespace, 60), clean(p.name, 80) or "?", clean(p.image, 120),
                     f"{p.cpu:g}" if p.cpu is not None else "", "; ".join(clean(r, 80) for r in p.reasons[:3])]
                    for p in c.pods]
        if c.pods_total > len(c.pods):
            s.more = f"and {c.pods_total - len(c.pods)} more pods"
    for key, value in raw.items():  # anything else a newer collector adds, shown rather than dropped
        if key not in ("cluster", "namespaces_without_quota", "pods", "notes") and isinstance(value, str | int | float):
            s.lines.append(f"{clean(key, 40)}: {clean(value, 120)}")
    return s if s.lines or s.table else None


def _alert_view(a: dict[str, Any]) -> AlertView:
    ev = _dict(a.get("evidence"))
    cur = clean(a.get("currency"), 8) or "USD"
    sev = clean(a.get("severity"), 20).lower() or "info"
    kind = clean(a.get("kind"), 60) or "alert"
    project = clean(a.get("project_name"), 120) or clean(a.get("project"), 120) or "?"
    where = ":".join(x for x in (clean(a.get("provider"), 20), clean(a.get("project"), 120)) if x)
    heading = f"{sev.upper()} {kind}: {project}" + (f" ({where})" if where else "")
    what = Section("What happened")
    if a.get("summary"):
        what.lines.append(clean(a.get("summary"), 1000))
    scope = ", ".join(x for x in (clean(a.get("service"), 80), clean(a.get("region"), 40)) if x)
    if scope:
        what.lines.append(f"Scope: {scope}")
    what.lines.append(f"Started {_when(a.get('start'))}; detected {_when(a.get('detected_at'))}.")
    if ev.get("signals"):
        what.lines.append(f"Signal: {clean(ev.get('signals'), 200)}")
    builders: list[Callable[[], Section | None]] = [
        lambda: _impact(a, ev, cur), lambda: _nodes(ev), lambda: _regions(ev, cur), lambda: _services(ev, cur),
        lambda: _guardduty(ev), lambda: _kubernetes(ev)]
    sections = [what]
    for build in builders:
        try:
            sec = build()
        except Exception:  # an evidence shape nobody foresaw: lose one section, not the message
            log.warning("email: skipped a section of alert %s it could not render", clean(a.get("fingerprint"), 40),
                        exc_info=True)
            continue
        if sec is not None and (sec.lines or sec.table):
            sections.append(sec)
    if ev.get("explained_by"):
        sections.append(Section("Related", lines=[f"Explained by the {clean(ev.get('explained_by'), 60)} alert."]))
    if a.get("fingerprint"):
        sections.append(Section("Fingerprint", lines=[clean(a.get("fingerprint"), 64)]))
    return AlertView(heading=heading, severity=sev, sections=sections)


def _views(n: Notification) -> list[AlertView]:
    alerts = [a for a in n.alerts if isinstance(a, dict)]
    return [_alert_view(a) for a in alerts]


def _next_steps(n: Notification) -> list[str]:
    """Once per kind, after every alert: a group of five mining alerts needs the advice once, not five times."""
    if n.event == "resolved":
        return [RESOLVED_STEPS]
    kinds = dict.fromkeys(str(a.get("kind")) for a in n.alerts if isinstance(a, dict))
    return list(dict.fromkeys(NEXT_STEPS.get(k, "Check whether this spend is expected.") for k in kinds)) or [
        "Check whether this spend is expected."]


# ---------------------------------------------------------------------------------------- subject/text


def _top(n: Notification) -> dict[str, Any] | None:
    alerts = [a for a in n.alerts if isinstance(a, dict)]
    if not alerts:
        return None
    return min(alerts, key=lambda a: SEVERITY_ORDER.get(str(a.get("severity")), 9))


def subject(n: Notification) -> str:
    """``[costwatch] CRITICAL mining_suspected recs-prod-3``; the most severe alert names the group."""
    prefix = {"resolved": "resolved: ", "updated": "update: ", "repeat": "reminder: "}.get(n.event, "")
    top = _top(n)
    if n.event == SCHEDULED_DIGEST:
        return clean(f"[costwatch] {n.title}", 200)
    if top is None:
        body = clean(n.title, 150) or "alert"
    else:
        body = " ".join(x for x in (clean(top.get("severity"), 20).upper(), clean(top.get("kind"), 40),
                                    clean(top.get("project_name") or top.get("project"), 80)) if x)
        others = len([a for a in n.alerts if isinstance(a, dict)]) - 1
        if others > 0:
            body += f" (+{others} more)"
    return clean(f"[costwatch] {prefix}{body}", 200)


def _banner(n: Notification) -> str:
    if n.event == "resolved":
        return "Resolved."
    if n.event == "updated":
        return f"Update {n.sequence} on an open incident."
    if n.event == "repeat":
        return "Reminder: this incident is still open."
    return ""


def render_text(n: Notification, views: list[AlertView]) -> str:
    out = [clean(n.title, 300) or subject(n), ""]
    if _banner(n):
        out += [_banner(n), ""]
    if n.owner:
        out += [f"Owner: {clean(n.owner, 120)}", ""]
    for v in views:
        out += [v.heading, "=" * min(len(v.heading), 72)]
        for s in v.sections:
            out.append(f"{s.title}:")
            out += [f"  {line}" for line in s.lines]
            if s.table:
                widths = [max(len(row[i]) for row in s.table) for i in range(len(s.table[0]))]
                out += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                        for row in s.table]
            if s.more:
                out.append(f"  {s.more}")
            out.append("")
    out += ["Next steps:", *(f"  {step}" for step in _next_steps(n)), ""]
    out.append(f"-- costwatch, notification {clean(n.id, 64)}")
    return "\n".join(out) + "\n"


_SEV_COLOR = {"critical": "#b00020", "high": "#d84315", "warning": "#b26a00", "info": "#455a64"}


def render_html(n: Notification, views: list[AlertView], chart_cid: str | None) -> str:
    e = html.escape
    td = 'style="padding:2px 8px;border-bottom:1px solid #ddd;text-align:left"'
    parts = ['<!DOCTYPE html><html><head><meta charset="utf-8"></head>'
             '<body style="font-family:Arial,Helvetica,sans-serif;font-size:14px;color:#222">',
             f"<h2>{e(clean(n.title, 300) or subject(n))}</h2>"]
    if _banner(n):
        parts.append(f"<p><b>{e(_banner(n))}</b></p>")
    if n.owner:
        parts.append(f"<p>Owner: {e(clean(n.owner, 120))}</p>")
    for v in views:
        color = _SEV_COLOR.get(v.severity, "#222")
        parts.append(f'<h3 style="color:{color}">{e(v.heading)}</h3>')
        for s in v.sections:
            parts.append(f"<h4>{e(s.title)}</h4>")
            parts += [f"<p>{e(line)}</p>" for line in s.lines]
            if s.table:
                head, *rows = s.table
                parts.append('<table style="border-collapse:collapse">')
                parts.append("<tr>" + "".join(f"<th {td}>{e(c)}</th>" for c in head) + "</tr>")
                parts += ["<tr>" + "".join(f"<td {td}>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
                parts.append("</table>")
            if s.more:
                parts.append(f"<p><i>{e(s.more)}</i></p>")
    parts.append("<h3>Next steps</h3>")
    parts += [f"<p>{e(step)}</p>" for step in _next_steps(n)]
    if chart_cid:
        parts.append(f'<p><img src="cid:{e(chart_cid)}" alt="chart of the incident" style="max-width:100%"></p>')
    parts.append(f'<p style="color:#777;font-size:12px">costwatch, notification {e(clean(n.id, 64))}</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------- addresses


def parse_addresses(raw: Iterable[str]) -> tuple[list[Address], list[str]]:
    """Valid recipients (deduplicated) and the rejected entries (cleaned, safe to show).

    Entries with a line break are rejected outright rather than "repaired": ``a@x\\r\\nBcc: b@y`` is an
    injection attempt, not a typo.  Non-ASCII local parts are rejected too (they need SMTPUTF8, which most
    relays used for alerts do not offer)."""
    good: list[Address] = []
    bad: list[str] = []
    seen: set[str] = set()
    for entry in raw:
        if not entry or not entry.strip():
            continue
        if _CONTROL.search(entry):
            bad.append(clean(entry, 80))
            continue
        for name, spec in getaddresses([entry]):
            addr = _address(name, spec)
            if addr is None:
                bad.append(clean(spec or entry, 80))
            elif addr.addr_spec.lower() not in seen:
                seen.add(addr.addr_spec.lower())
                good.append(addr)
    return good, bad


def _address(name: str, spec: str) -> Address | None:
    try:
        addr = Address(display_name=name, addr_spec=spec)
    except (ValueError, IndexError, TypeError):  # the header parser's defects are ValueErrors
        return None
    domain = addr.domain
    if not addr.username or not domain or "." not in domain.strip(".") or any(c.isspace() for c in spec):
        return None
    if not addr.username.isascii():
        return None
    return addr


def msgid_domain(from_addr: str) -> str:
    """The right-hand side of our Message-IDs: the sender's domain (ASCII), so the ids look like ours."""
    good, _ = parse_addresses([from_addr])
    domain = good[0].domain if good else ""
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        domain = ""
    return domain if re.fullmatch(r"[A-Za-z0-9.-]{1,200}", domain or "") else "costwatch"


def message_id(n: Notification, domain: str) -> str:
    """Deterministic from the notification id, so a resend after a crash is the same message to a mail client."""
    local = re.sub(r"[^A-Za-z0-9._-]", "", n.id)[:64] or "notification"
    return f"<{local}@{domain}>"


def _thread_ref(thread: str | None) -> str | None:
    """``n.thread`` comes from storage; accept only something shaped like one msg-id."""
    if not thread:
        return None
    ref = re.sub(r"[\s\x00-\x1f\x7f<>]", "", thread)[:250]
    return f"<{ref}>" if re.fullmatch(r"[^@\s]+@[^@\s]+", ref) else None


# -------------------------------------------------------------------------------------------- message


def _chart_bytes(path: str | None) -> bytes | None:
    """The PNG to inline, or None: a missing, huge or non-PNG file is skipped, not an error."""
    if not path:
        return None
    try:
        p = Path(path)
        if not p.is_file() or p.stat().st_size > MAX_CHART_BYTES:
            return None
        data = p.read_bytes()
    except OSError:
        return None
    return data if data.startswith(_PNG_MAGIC) else None


def build_message(n: Notification, *, sender: Address, recipients: list[Address], msgid: str) -> EmailMessage:
    """multipart/alternative: text/plain, then multipart/related(text/html + the chart PNG by Content-ID)."""
    views = _views(n)
    msg = EmailMessage(policy=policy.SMTP)
    msg["Subject"] = subject(n)
    msg["From"] = sender
    msg["To"] = recipients
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = msgid
    ref = _thread_ref(n.thread)
    if ref and ref != msgid:
        msg["In-Reply-To"] = ref
        msg["References"] = ref
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies to alerts
    msg["X-Costwatch-Event"] = clean(n.event, 20)
    msg["X-Costwatch-Group"] = clean(n.group_key, 120)
    if n.event == SCHEDULED_DIGEST:  # the summary: the report's page shell, the same text as stdout
        doc = digest.of(n)
        msg.set_content(digest.text(doc), cte="quoted-printable")
        msg.add_alternative(digest.html(doc), subtype="html", cte="quoted-printable")
        return msg
    png = _chart_bytes(n.chart)
    cid = f"chart.{msgid.strip('<>')}" if png else None
    # quoted-printable, not base64: stays readable (and greppable) in raw mail and logs of relays
    msg.set_content(render_text(n, views), cte="quoted-printable")
    msg.add_alternative(render_html(n, views, cid), subtype="html", cte="quoted-printable")
    if png and cid:
        html_part = next(p for p in msg.iter_parts() if p.get_content_type() == "text/html")
        html_part.add_related(png, "image", "png", cid=f"<{cid}>", disposition="inline", filename="chart.png")
    return msg


__all__ = ["build_message", "clean", "message_id", "msgid_domain", "parse_addresses", "render_html", "render_text",
           "subject"]
