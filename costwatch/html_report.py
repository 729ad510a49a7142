"""``costwatch report --format html``: the whole detection as one self-contained page.

What is on it: totals per currency (never added across currencies), per-project spend with the month-end
forecast (and its interval, where detection gives one) against the budget, then every alert with its band
chart (``costwatch.charts``, inlined as a PNG ``data:`` URI), its evidence and its Kubernetes context, then
the warnings and notes.  The same page shell as the email digest (``costwatch.html_page``): no script, no
remote load, a CSP that forbids both, and every string from data escaped.

Charts cost about a third of a second and 60-80 kB each, so only the first ``chart_limit`` alerts (most
severe first, as detection orders them) get one; the rest are listed in full, without a chart.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from .alerts import Alert, iso
from .detect import Detection
from .html_page import Markup, image, items, join, page, para, table, tag
from .k8s_summary import ClusterSummary, summarize
from .report import SHORT_KIND, currency_totals, error_text, evidence_text, observed_text

log = logging.getLogger("costwatch.html_report")

CHART_LIMIT = 30
KIND_TITLE = {"mining_suspected": "Mining suspected", "cost_spike": "Cost spike",
         "threshold_exceeded": "Daily threshold exceeded", "budget_forecast_exceeded": "Budget forecast exceeded"}


def render(det: Detection, *, chart_limit: int = CHART_LIMIT,
           generated_at: pd.Timestamp | None = None) -> str:
    """The page as one string (UTF-8 when written)."""
    gen = generated_at or pd.Timestamp.now(tz="UTC")
    charts = _charts(det, chart_limit)
    body: list[object] = [
        tag("h1", "costwatch report"),
        para(f"Window {iso(det.since)} → {iso(det.as_of)}; generated {iso(gen)}.", "muted"),
        _summary(det), _projects(det), tag("h2", f"Alerts ({len(det.alerts)})"),
    ]
    if not det.alerts:
        body.append(para("No alerts in the window."))
    if len(det.alerts) > chart_limit:
        body.append(para(f"Charts are drawn for the first {chart_limit} alerts (most severe first); the other "
                         f"{len(det.alerts) - chart_limit} are listed without one.", "muted"))
    body += [_alert(n, a, charts.get(n)) for n, a in enumerate(det.alerts)]
    if det.errors:
        body += [tag("h2", "Warnings: data not read"), items(error_text(e) for e in det.errors)]
    if det.notes:
        body += [tag("h2", "Notes"), items(det.notes)]
    return page("costwatch report", body)


def _charts(det: Detection, limit: int) -> dict[int, bytes | str]:
    """Alert index -> PNG bytes, or why no chart could be drawn (a chart is never a reason to fail)."""
    if not det.alerts or limit <= 0:
        return {}
    from .charts import alert_chart

    out: dict[int, bytes | str] = {}
    with tempfile.TemporaryDirectory(prefix="costwatch-html-") as tmp:
        for n, a in enumerate(det.alerts[:limit]):
            try:
                out[n] = alert_chart(det, a, Path(tmp) / f"{n}.png").read_bytes()
            except Exception as e:
                log.warning("chart for alert %d not drawn: %s", n, type(e).__name__)
                out[n] = f"chart not drawn ({type(e).__name__})"
    return out


def _summary(det: Detection) -> Markup:
    totals = currency_totals(det)
    sev: dict[str, int] = {}
    for a in det.alerts:
        sev[a.severity] = sev.get(a.severity, 0) + 1
    cards = [tag("div", join([tag("b", f"{t['spend']:,.0f} {t['currency']}"),
                              f"spent in the window by {t['projects']} project(s); month-end forecast "
                              f"{t['forecast']:,.0f} ({t['month_to_date']:,.0f} so far)"]), "card") for t in totals]
    cards.append(tag("div", join([tag("b", str(len(det.alerts))), ", ".join(
        f"{k} {v}" for k, v in sorted(sev.items(), key=lambda kv: _SEV_ORDER.get(kv[0], 9))) or "alerts"]), "card"))
    note = para("Amounts in different currencies are never added.", "muted small") if len(totals) > 1 else ""
    return join([tag("h2", "Summary"), tag("div", join(cards), "cards"), note])


_SEV_ORDER = {"critical": 0, "high": 1, "warning": 2, "info": 3}


def forecast_text(p: dict[str, Any]) -> str:
    """``2,574`` or, with an interval, ``2,574 (80 %: 2,410–2,730)``."""
    f = p.get("forecast")
    if f is None:
        return ""
    lo, hi = p.get("forecast_low"), p.get("forecast_high")
    band = f" (80 %: {lo:,.0f}–{hi:,.0f})" if isinstance(lo, int | float) and isinstance(hi, int | float) else ""
    return f"{f:,.0f}{band}"


def _budget_cells(p: dict[str, Any]) -> tuple[object, str]:
    budget, f = p.get("monthly_budget"), p.get("forecast")
    if not budget:
        return (f"(limits in {p['limits_currency']})" if p.get("limits_currency") else ""), ""
    share = f / budget if isinstance(f, int | float) else None
    text = f"{share:.0%}" if share is not None else ""
    return f"{budget:,.0f}", (tag("span", text, "over") if share is not None and share > 1 else text)


def _projects(det: Detection) -> Markup:
    rows = []
    for p in det.projects:
        status = str(p.get("band_status") or "")
        band = (f"{p['lower']:,.0f}–{p['upper']:,.0f}" if p.get("upper") is not None
                else "short history" if status.startswith("short") else status)
        budget, share = _budget_cells(p)
        rows.append([p.get("project_name"), p.get("owner") or "", p.get("provider"),
                     f"{p.get('spend') or 0:,.0f} {p.get('currency')}",
                     f"{p['last_day_cost']:,.0f}" if p.get("last_day_cost") is not None else "", band,
                     f"{p['month_to_date']:,.0f}" if p.get("month_to_date") is not None else "",
                     forecast_text(p), budget, share,
                     ", ".join(f"{SHORT_KIND.get(k, k)} {v}" for k, v in (p.get("alerts") or {}).items())])
    head = ["project", "owner", "cloud", "spend", "last day", "band", "month to date", "month-end forecast",
            "budget", "of budget", "alerts"]
    return join([tag("h2", "Projects"), para("Spend in the window; the last day against its usual band; the "
                                               "month-end forecast against the monthly budget.", "muted small"),
                 tag("div", table(head, rows, numeric=(3, 4, 5, 6, 7, 8, 9)), "wide")])


def _alert(n: int, a: Alert, chart: bytes | str | None) -> Markup:
    sev = a.severity if a.severity in _SEV_ORDER else "info"
    title = join([tag("span", a.severity.upper(), f"badge sev-{sev}"), " ",
                  f"{KIND_TITLE.get(a.kind, a.kind)}: {a.project_name} ({a.origin})",
                  f" — {a.service}" if a.service else ""])
    parts: list[object] = [tag("h3", title, id=f"alert-{n + 1}"),
                           para(f"Started {iso(a.start)}, detected {iso(a.detected_at)}.", "muted"),
                           para(observed_text(a))]
    parts += [para(line) for line in evidence_text(a.summary, a.evidence).split("\n") if line]
    silence = a.evidence.get("silence")
    if isinstance(silence, dict):
        parts.append(para(f"{'Planned activity' if silence.get('planned') else 'Silenced'} until "
                          f"{silence.get('until')}: {silence.get('reason')} (not notified)", "muted"))
    parts += [_cluster(c) for c in summarize(a.evidence)]
    if isinstance(chart, bytes):
        parts.append(image(chart, f"Chart of {a.kind} in {a.project_name}: daily cost against its usual band"))
    elif isinstance(chart, str):
        parts.append(para(chart, "muted small"))
    parts.append(para(join(["fingerprint ", tag("code", a.fingerprint)]), "muted small"))
    return tag("section", join(parts), f"alert sev-{sev}")


def _cluster(c: ClusterSummary) -> Markup:
    """One cluster's context: the same picks as the table, Markdown, Slack and email (``k8s_summary``)."""
    lines = []
    if c.without_quota:
        more = f" (+{c.without_quota_total - len(c.without_quota)} more)" if c.without_quota_total > len(
            c.without_quota) else ""
        lines.append("Namespaces without a ResourceQuota: " + ", ".join(c.without_quota) + more)
    if c.unbounded:
        lines.append(f"{c.unbounded} pod(s) without a CPU limit")
    if c.forbidden:
        lines.append("Forbidden (HTTP 403), not read: namespace(s) " + ", ".join(c.forbidden))
    lines += [f"note: {x}" for x in c.notes]
    parts: list[object] = [tag("h3", f"Kubernetes cluster {c.cluster or '?'}: {c.status}"), items(lines)]
    if c.pods:
        parts.append(table(["namespace", "pod", "node", "image", "CPU", "why"],
                           [[p.namespace, p.name, p.node, p.image, f"{p.cpu:g}" if p.cpu is not None else "",
                             "; ".join(p.reasons[:3])] for p in c.pods], numeric=(4,)))
        if c.pods_total > len(c.pods):
            parts.append(para(f"and {c.pods_total - len(c.pods)} more {c.pods_label} pod(s)", "muted small"))
    return tag("div", join(parts), "k8s")


__all__ = ["CHART_LIMIT", "KIND_TITLE", "forecast_text", "render"]
