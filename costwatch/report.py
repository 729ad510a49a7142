"""Render a Detection as a rich table, JSON, CSV or Markdown.

The JSON shape is the contract other tools read: ``{"generated_at", "as_of", "since", "projects",
"alerts", "notes", "errors", "totals"}`` with ISO 8601 UTC times; ``errors`` lists what a provider could not
read (``{"provider", "scope", "failed", "fix"}``), which table and Markdown print as warnings.  A project
row is one currency of a project (a project billed in two currencies has two rows), and ``totals`` has one
entry per currency: amounts in different currencies are never added.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from typing import Any

import pandas as pd
from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .alerts import Alert, iso
from .budgets import row_text
from .detect import Detection
from .k8s_summary import evidence_lines, markdown_section
from .safetext import plain_console, safe_strings, spreadsheet_safe, terminal_safe

FORMATS = ("table", "json", "csv", "markdown")
SHORT_KIND = {"mining_suspected": "mining", "cost_spike": "spike", "threshold_exceeded": "threshold",
              "budget_forecast_exceeded": "budget"}
ALERT_CSV_FIELDS = ("kind", "severity", "project", "project_name", "provider", "service", "region", "start",
                    "detected_at", "observed", "expected", "lower", "upper", "currency", "score", "summary",
                    "fingerprint")


def to_dict(det: Detection, generated_at: pd.Timestamp | None = None) -> dict[str, Any]:
    """The JSON report; a figure that is not a finite number (an empty band) is ``null``, never ``NaN``."""
    gen = generated_at or pd.Timestamp.now(tz="UTC")
    return _finite({
        "generated_at": iso(gen), "as_of": iso(det.as_of), "since": iso(det.since),
        "projects": [_jsonable_project(p) for p in det.projects],
        "alerts": [a.to_dict() for a in det.alerts],
        "notes": list(det.notes),
        "errors": [dict(e) for e in det.errors],
        "totals": [_jsonable_project(t) for t in currency_totals(det)],
    })


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def currency_totals(det: Detection) -> list[dict[str, Any]]:
    """Spend in the window, month to date and month-end forecast summed over the project rows, one entry per
    currency (by currency code): never one grand total across currencies."""
    out: dict[str, dict[str, Any]] = {}
    for p in det.projects:
        if p.get("spend") is None and p.get("forecast") is None:
            continue  # no cost data (a project seen only in CPU data)
        if p.get("monitor"):
            continue  # a monitor re-counts its projects' spend
        t = out.setdefault(str(p["currency"]), {"currency": str(p["currency"]), "projects": 0, "spend": 0.0,
                                                "month_to_date": 0.0, "forecast": 0.0})
        t["projects"] += 1
        for k in ("spend", "month_to_date", "forecast"):
            t[k] += float(p.get(k) or 0.0)
    return [out[c] for c in sorted(out)]


def _totals_line(det: Detection) -> str:
    parts = [f"{t['spend']:,.0f} {t['currency']}" for t in currency_totals(det)]
    if not parts:
        return ""
    each = " per currency, never added" if len(parts) > 1 else ""
    return f"Total spend in the window{each}: " + "; ".join(parts)


def _jsonable_project(p: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in p.items():
        if isinstance(v, list):
            out[k] = [_jsonable_project(x) if isinstance(x, dict) else x for x in v]
        elif isinstance(v, pd.Timestamp):
            out[k] = iso(v)
        elif isinstance(v, float):
            out[k] = round(v, 4)
        else:
            out[k] = v
    return out


def render(det: Detection, fmt: str = "table", *, width: int | None = None) -> str:
    if fmt == "json":  # strict JSON: a NaN or infinity anywhere is a bug, not "NaN" for the next tool to choke on
        return json.dumps(to_dict(det), indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        return _csv(det)
    if fmt == "markdown":
        return _markdown(det)
    console = plain_console(file=io.StringIO(), record=True, width=width or 140, force_terminal=False,
                            color_system=None)
    console.print(renderable(det))
    return console.export_text()


def renderable(det: Detection) -> Group:
    """Rich renderable, so the CLI can print it in colour and tests can render it to plain text.  Print it with
    ``safetext.plain_console()``: text from data must not be read as rich markup."""
    det = terminal_view(det)
    head = Text(f"costwatch report  {iso(det.since)} → {iso(det.as_of)}", style="bold")
    pt = Table(title="Projects (spend in the window; last day against its band)", box=box.SIMPLE_HEAVY,
               show_lines=False)
    for col, just in (("project", "left"), ("cloud", "left"), ("spend", "right"), ("last day", "right"),
                      ("band", "right"), ("month fcst (80 %)/budget", "right"), ("CPU 24h (usual)", "right"),
                      ("off band", "right"), ("alerts", "left")):
        pt.add_column(col, justify=just)  # type: ignore[arg-type]
    for p in det.projects:
        band = (f"{p['lower']:,.0f}–{p['upper']:,.0f}" if p.get("upper") is not None
                else ("short history" if p.get("band_status", "").startswith("short") else ""))
        budget = (f"{row_text(p)}/{p['monthly_budget']:,.0f}" if p.get("monthly_budget") else row_text(p))
        if p.get("limits_currency"):
            budget = f"{budget} (limits in {p['limits_currency']})".strip()
        cpu_txt = ""
        if p.get("nodes") and p.get("cpu_mean_24h") is not None:
            usual = f" ({p['cpu_expected_24h']:.0f}%)" if p.get("cpu_expected_24h") is not None else ""
            cpu_txt = f"{p['cpu_mean_24h']:.0f}%{usual} ×{p['nodes']}"
        off = str(len(p["usage_anomalies"])) if p.get("usage_anomalies") else ""
        alerts = ", ".join(f"{SHORT_KIND.get(k, k)} {v}" for k, v in p["alerts"].items())
        pt.add_row(p["project_name"], p["provider"], f"{p.get('spend', 0):,.0f} {p['currency']}",
                   f"{p['last_day_cost']:,.0f}" if p.get("last_day_cost") is not None else "",
                   band, budget, cpu_txt, off, Text(alerts, style="bold red" if "mining" in alerts else ""))
    totals = _totals_line(det)
    if totals:
        pt.caption = totals
    blocks: list[Any] = [Text(f"Alerts ({len(det.alerts)})", style="bold")] if det.alerts else []
    for a in det.alerts:
        style = {"critical": "bold red", "high": "red", "warning": "yellow"}.get(a.severity, "")
        title = Text.assemble((f"{a.severity.upper():8s} ", style), (a.kind, "bold"),
                              f"  {a.project_name} ({a.origin})",
                              f"  {a.service}" if a.service else "")
        body = [f"started {iso(a.start)}, detected {iso(a.detected_at)}", observed_text(a),
                evidence_text(a.summary, a.evidence), *evidence_lines(a.evidence)]
        if a.evidence.get("silence"):
            s = a.evidence["silence"]
            body.append(f"{'planned activity' if s.get('planned') else 'silenced'} until {s.get('until')}: "
                        f"{s.get('reason')} (not notified)")
        blocks.append(Panel("\n".join(body), title=title, title_align="left", border_style=style or "dim"))
    parts: list[Any] = [head, pt, Group(*blocks) if blocks else Text("No alerts in the window.", style="green")]
    if det.errors:
        parts.append(Text("Warnings (data not read):\n" + "\n".join(f"  - {error_text(e)}" for e in det.errors),
                          style="yellow"))
    if det.notes:
        parts.append(Text("Notes:\n" + "\n".join(f"  - {n}" for n in det.notes), style="dim"))
    return Group(*parts)


def terminal_view(det: Detection) -> Detection:
    """The detection as the table and Markdown show it: every string from data ``terminal_safe`` (escape
    sequences and bidi overrides shown, not acted on).  A shallow copy; the JSON report reads the original."""
    alerts = []
    for a in det.alerts:
        text: dict[str, Any] = {f: terminal_safe(getattr(a, f), newlines=f == "summary") for f in _ALERT_TEXT
                                if isinstance(getattr(a, f), str)}
        alerts.append(dataclasses.replace(a, evidence=safe_strings(a.evidence), **text))
    return dataclasses.replace(det, alerts=alerts, projects=safe_strings(det.projects), notes=safe_strings(det.notes),
                               errors=safe_strings(det.errors))


_ALERT_TEXT = ("kind", "project", "project_name", "provider", "severity", "currency", "service", "region", "summary")


def error_text(e: dict[str, str]) -> str:
    """``provider scope: what failed; what to do``."""
    fix = f"; {e['fix']}" if e.get("fix") else ""
    return f"{e.get('provider')} {e.get('scope')}: {e.get('failed')}{fix}"


def observed_text(a: Alert) -> str:
    if a.evidence.get("metric") == "cpu_percent":
        return f"CPU {a.observed:.0f}% where {a.expected:.0f}% is usual"
    if a.kind == "budget_forecast_exceeded":
        what = "month to date" if a.evidence.get("basis") == "actual" else "month-end forecast"
        step = a.evidence.get("step_pct", 100.0)
        return f"{what} {a.observed:,.2f} vs {step:g} % of the budget: {a.expected:,.2f} {a.currency}"
    band = f", band {a.lower:,.2f}–{a.upper:,.2f}" if pd.notna(a.upper) else ""
    exp = f"{a.expected:,.2f}" if pd.notna(a.expected) else "?"
    return f"{a.observed:,.2f} {a.currency}/day, expected {exp}{band}"


def evidence_text(summary: str, ev: dict[str, Any], max_nodes: int = 3) -> str:
    """A few lines an owner can act on; the full list is in the JSON report."""
    lines = [summary] if summary else []
    nodes = ev.get("nodes") or []
    for n in nodes[:max_nodes]:
        usual = "new" if n.get("new") else f"usual {n['baseline_cpu']:.0f}%"
        extra = " ".join(str(x) for x in (n.get("instance_type"), n.get("region")) if x)
        peak = f", peak {n['cpu_peak']:.0f}%" if n.get("cpu_peak") is not None else ""
        lines.append(f"{n['node']}: {n['cpu']:.0f}% ({usual}{peak}) {extra}".rstrip())
    if len(nodes) > max_nodes:
        lines.append(f"… and {len(nodes) - max_nodes} more nodes")
    for g in (ev.get("guardduty") or [])[:3]:
        where_ = g.get("node") or g.get("cluster") or "?"
        sev = f" (severity {g['severity']:g})" if isinstance(g.get("severity"), int | float) else ""
        lines.append(f"GuardDuty {g.get('type')}{sev} on {where_}")
    for s in (ev.get("services") or [])[:2]:
        lines.append(f"{s['service']}: +{s['excess']:,.2f} ({s['share']:.0%})")
    if ev.get("explained_by"):
        lines.append(f"see {ev['explained_by']}")
    return "\n".join(lines)


def _csv(det: Detection) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*ALERT_CSV_FIELDS, "evidence"], extrasaction="ignore")
    w.writeheader()
    for a in det.alerts:
        d = a.to_dict()
        d["evidence"] = json.dumps(d["evidence"], sort_keys=True)
        w.writerow({k: spreadsheet_safe(v) for k, v in d.items()})
    return buf.getvalue()


def _md_escape(s: object) -> str:
    return terminal_safe(s, newlines=True).replace("|", "\\|").replace("\n", "<br>")


def _markdown(det: Detection) -> str:
    lines = ["# costwatch report", "", f"Window: {iso(det.since)} → {iso(det.as_of)}", "",
             "## Alerts", ""]
    if det.alerts:
        lines += ["| severity | kind | project | start | detected | observed | expected | summary |",
                  "|---|---|---|---|---|---|---|---|"]
        for a in det.alerts:
            lines.append("| " + " | ".join(_md_escape(x) for x in (
                a.severity, a.kind, f"{a.project_name} ({a.origin})", iso(a.start),
                iso(a.detected_at), f"{a.observed:,.2f}", f"{a.expected:,.2f}" if pd.notna(a.expected) else "",
                a.summary)) + " |")
    else:
        lines.append("No alerts in the window.")
    lines += markdown_section(det.alerts)
    lines += ["", "## Projects", "", "| project | provider | spend | band | month forecast | budget | alerts |",
              "|---|---|---|---|---|---|---|"]
    for p in det.projects:
        band = f"{p['lower']:,.2f}–{p['upper']:,.2f}" if p.get("upper") is not None else p["band_status"]
        lines.append("| " + " | ".join(_md_escape(x) for x in (
            p["project_name"], p["provider"], f"{p.get('spend', 0):,.2f} {p['currency']}", band,
            row_text(p, 2), p.get("monthly_budget") or "",
            ", ".join(f"{k}×{v}" for k, v in p["alerts"].items()))) + " |")
    totals = currency_totals(det)
    if totals:
        lines += ["", "## Totals per currency", "", "| currency | projects | spend | month to date | month forecast |",
                  "|---|---|---|---|---|"]
        lines += [f"| {_md_escape(t['currency'])} | {t['projects']} | {t['spend']:,.2f} | {t['month_to_date']:,.2f} "
                  f"| {t['forecast']:,.2f} |" for t in totals]
    if det.errors:
        lines += ["", "## Warnings: data not read", ""] + [f"- {_md_escape(error_text(e))}" for e in det.errors]
    if det.notes:
        lines += ["", "## Notes", ""] + [f"- {_md_escape(n)}" for n in det.notes]
    return "\n".join(lines) + "\n"
