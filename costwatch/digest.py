"""The scheduled spend summary (``alerting.digest``): each owner is told, once per period, how their projects'
spend moved, what drives it, where the month is heading against the budget, and which incidents, acks,
silences and answers are in force.  Not to be confused with the outbox's digests, which fold many incident
messages of one run into one.

How "once per period" holds across retries and overlapping runs:

* The period is a pure function of the schedule and ``now`` (:func:`period_at`): from the latest scheduled
  time at or before ``now`` (``hour`` on the wall clock of ``timezone``) to the next.  A run anywhere in the
  period, also hours after the scheduled one (a missed hour, a run that failed), finds the same period.
* Each target (a Slack channel, a mailbox, ...) gets one digest per period, whose notification id is derived
  from (target, period start) only (:func:`digest_id`).  :func:`due` keeps the targets whose id is not in
  the outbox yet; queueing is insert-if-absent, so two runs that both decided "due" still queue it once,
  and the outbox claims it before sending, so it is sent once.  Outbox items live 30 days, longer than a
  period.
* The figures come from complete days before the scheduled time (:func:`windows`), so a digest queued late
  in the period says the same as one queued on time.

Targets come from ``routing.routes`` of each project's owner (the same owner ``run`` routes alerts to);
owners who share a channel share one digest listing all their projects.  PagerDuty is left out: a summary
is not a page.  The document is plain JSON (it travels in the outbox); each notifier renders it: Slack
blocks, email through :func:`html` (the report's page shell) and :func:`text`, stdout and Teams as text,
webhook and SNS as the JSON itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd

from . import feedback, silences
from .alerts import SEVERITY_ORDER, finite, iso
from .config import WEEKDAYS, Config, DigestConfig
from .html_page import Markup, items, join, money, page, para, pct, table, tag
from .notify import SCHEDULED_DIGEST, Notification, Target, notification_id
from .routing import owner_of, routes
from .safetext import terminal_safe
from .state import Store

EVENT = SCHEDULED_DIGEST
MAX_PROJECTS = 50          # projects listed (by this period's spend); totals cover all of them
MAX_INCIDENTS = 30
NOT_TOLD = frozenset({"pagerduty"})  # channels that page people: a summary is not an incident


@dataclass(frozen=True)
class Period:
    """One digest period: ``start`` is the scheduled time (UTC), ``end`` the next one."""

    schedule: str
    start: pd.Timestamp
    end: pd.Timestamp
    timezone: str

    @property
    def key(self) -> str:
        return iso(self.start) or ""

    @property
    def label(self) -> str:
        local = self.start.tz_convert(self.timezone)
        what = "week of" if self.schedule == "weekly" else "day of"
        return f"{what} {local:%a %Y-%m-%d %H:%M} {self.timezone}"


def _at(day: date, hour: int, tz: ZoneInfo) -> pd.Timestamp:
    """``hour`` o'clock on ``day`` on the zone's wall clock, as UTC (a time skipped by DST maps forward)."""
    return pd.Timestamp(datetime(day.year, day.month, day.day, hour, tzinfo=tz)).tz_convert("UTC")


def period_at(dc: DigestConfig, now: pd.Timestamp) -> Period:
    """The period ``now`` falls in: it starts at the latest scheduled time at or before ``now``."""
    tz = ZoneInfo(dc.timezone)
    now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
    local = now.tz_convert(dc.timezone).date()
    step = 7 if dc.schedule == "weekly" else 1
    back = (local.weekday() - WEEKDAYS.index(dc.day)) % 7 if dc.schedule == "weekly" else 0
    day = local - timedelta(days=back)
    if _at(day, dc.hour, tz) > now:
        day -= timedelta(days=step)
    return Period(dc.schedule, _at(day, dc.hour, tz), _at(day + timedelta(days=step), dc.hour, tz), dc.timezone)


def digest_id(period: Period, target: Target) -> str:
    """The idempotency key: one digest per target per period, whoever queues it and however often."""
    return notification_id(f"{EVENT}:{period.key}", target, EVENT, 0)


def due(period: Period, targets: Iterable[Target], queued: set[str] | frozenset[str]) -> list[Target]:
    """The targets whose digest for ``period`` is not queued yet.  ``period`` comes from :func:`period_at`,
    so its scheduled time has passed; ``queued`` holds the outbox ids already there."""
    return [t for t in targets if digest_id(period, t) not in queued]


# ------------------------------------------------------------------------------------------ audiences


@dataclass
class Audience:
    """Everyone one target reaches, and the projects of theirs it summarizes."""

    target: Target
    owners: list[str] = field(default_factory=list)
    projects: list[str] = field(default_factory=list)


def audiences(projects: Iterable[str], cfg: Config, tag_owners: dict[str, str],
              only_owner: str | None = None) -> list[Audience]:
    """Targets of each project's owner (as ``run`` routes its alerts), merged per target."""
    by_key: dict[str, Audience] = {}
    for pid in dict.fromkeys(projects):
        owner = owner_of(pid, cfg, tag_owners)
        if only_owner is not None and owner != only_owner:
            continue
        for r in routes([owner] if owner else [], cfg):
            if r.target.channel in NOT_TOLD:
                continue
            aud = by_key.setdefault(r.target.key, Audience(r.target))
            aud.owners += [o for o in r.owners if o not in aud.owners]
            if pid not in aud.projects:
                aud.projects.append(pid)
    return list(by_key.values())


# ------------------------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Windows:
    """This period's days ``[this_start, end)`` and the same number of days before them."""

    last_start: pd.Timestamp
    this_start: pd.Timestamp
    end: pd.Timestamp


def windows(period: Period, costs: pd.DataFrame) -> Windows:
    """Complete UTC days before the scheduled time, as far as the data goes (billing lags a day or two)."""
    days = pd.Timedelta(days=7 if period.schedule == "weekly" else 1)
    end = period.start.floor("D")
    if len(costs):
        end = min(end, pd.Timestamp(costs["period_start"].max()).floor("D") + pd.Timedelta(days=1))
    return Windows(end - 2 * days, end - days, end)


def _change(this: float, last: float) -> dict[str, Any]:
    return {"this": round(this, 2), "last": round(last, 2), "delta": round(this - last, 2),
            "pct": round((this - last) / last, 4) if last > 0 else None}


def _aggregate(costs: pd.DataFrame, w: Windows) -> pd.DataFrame:
    """Net spend per (project, currency, service, region) in each window: one groupby over the two windows."""
    cols = ["project_id", "project_name", "provider", "currency", "service", "region"]
    if costs.empty:
        return pd.DataFrame(columns=[*cols, "this", "last"])
    t = costs["period_start"]
    sel = (t >= w.last_start) & (t < w.end)
    sub = costs.loc[sel, [*cols, "effective_cost"]].astype({c: "object" for c in cols})
    sub[cols] = sub[cols].fillna("")
    which = (costs.loc[sel, "period_start"] >= w.this_start).map({True: "this", False: "last"})
    agg = sub.groupby([*cols, which.rename("w")], observed=True)["effective_cost"].sum().unstack("w", fill_value=0.0)
    for c in ("this", "last"):
        if c not in agg:
            agg[c] = 0.0
    return agg.reset_index()


def _movers(agg: pd.DataFrame, by: str, top: int) -> list[dict[str, Any]]:
    g = agg.groupby([by, "currency"], observed=True)[["this", "last"]].sum().reset_index()
    g["delta"] = g["this"] - g["last"]
    g = g[g["delta"].abs() >= 0.005]
    g = g.reindex(g["delta"].abs().sort_values(ascending=False).index).head(top)
    return [{"name": str(r[by]) or "(none)", "currency": str(r["currency"]), **_change(float(r["this"]),
                                                                                         float(r["last"]))}
            for _, r in g.iterrows()]


def _spend(agg: pd.DataFrame) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    g = agg.groupby(["project_id", "project_name", "provider", "currency"], observed=True)[["this", "last"]].sum()
    g = g.reset_index().sort_values(["this", "project_id"], ascending=[False, True])
    rows = [{"project": str(r["project_id"]), "project_name": str(r["project_name"] or r["project_id"]),
             "provider": str(r["provider"]), "currency": str(r["currency"]),
             **_change(float(r["this"]), float(r["last"]))} for _, r in g.iterrows()]
    tot = g.groupby("currency")[["this", "last"]].sum()
    totals = [{"currency": str(c), **_change(float(r["this"]), float(r["last"]))} for c, r in tot.iterrows()]
    return rows, totals


def _forecasts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Month-end forecast (and its interval, where detection gives one) against the budget, per project row."""
    out = []
    for p in rows:
        if p.get("forecast") is None:
            continue
        budget = p.get("monthly_budget")
        out.append({"project": str(p["project"]), "project_name": str(p.get("project_name") or p["project"]),
                    "currency": str(p.get("currency") or ""), "month_to_date": p.get("month_to_date"),
                    "forecast": p.get("forecast"), "forecast_low": p.get("forecast_low"),
                    "forecast_high": p.get("forecast_high"), "budget": budget,
                    "share": round(float(p["forecast"]) / float(budget), 4) if budget else None})
    out.sort(key=lambda f: (-(finite(f["share"]) or 0.0), -(finite(f["forecast"]) or 0.0)))
    return out


def _incidents(store: Store, projects: set[str]) -> list[dict[str, Any]]:
    out = []
    for rec in store.scan("incident"):
        doc = rec.doc
        alerts = [a for a in doc.get("alerts") or [] if isinstance(a, dict)]
        if doc.get("status") != "open" or not alerts or not any(str(a.get("project")) in projects for a in alerts):
            continue
        lead = alerts[0]
        out.append({"kind": str(lead.get("kind") or ""), "severity": str(doc.get("severity") or lead.get("severity")),
                    "project_name": str(lead.get("project_name") or lead.get("project") or ""),
                    "alerts": len(alerts), "opened_at": doc.get("opened_at"), "updates": int(doc.get("sequence") or 0),
                    "state": "acknowledged" if doc.get("acked_by") else "open", "acked_by": doc.get("acked_by"),
                    "acked_at": doc.get("acked_at")})
    out.sort(key=lambda i: (SEVERITY_ORDER.get(str(i["severity"]), 9), str(i["opened_at"])))
    return out


def _in_force(store: Store, now: pd.Timestamp, projects: set[str], names: set[str]) -> tuple[list[dict[str, Any]],
                                                                                           list[str]]:
    quiet = [{"project": s.project, "kind": s.kind, "until": s.until, "reason": s.reason, "planned": s.planned}
             for s in silences.active(store, now) if s.project in projects | names | {"*"}]
    answers = [feedback.describe(fb) for fb in feedback.load(store, now) if fb.project in projects]
    return quiet, answers


def content(aud: Audience, period: Period, agg: pd.DataFrame, w: Windows, project_rows: list[dict[str, Any]],
            store: Store, now: pd.Timestamp, top: int = 5) -> dict[str, Any]:
    """The digest document for one audience (plain JSON: it is stored in the outbox)."""
    mine = set(aud.projects)
    sub = agg[agg["project_id"].isin(mine)] if len(agg) else agg
    spend, totals = _spend(sub) if len(sub) else ([], [])
    rows = [p for p in project_rows if str(p.get("project")) in mine]
    names = {str(p.get("project_name")) for p in rows}
    quiet, answers = _in_force(store, now, mine, names)
    incidents = _incidents(store, mine)
    return {
        "schedule": period.schedule, "period_start": period.key, "period_end": iso(period.end),
        "label": period.label, "generated_at": iso(now), "owners": list(aud.owners),
        "window": {"last_start": iso(w.last_start), "this_start": iso(w.this_start), "end": iso(w.end)},
        "totals": totals, "projects": spend[:MAX_PROJECTS], "projects_total": len(spend),
        "movers": {"service": _movers(sub, "service", top) if len(sub) else [],
                   "region": _movers(sub, "region", top) if len(sub) else []},
        "forecasts": _forecasts(rows)[:MAX_PROJECTS], "incidents": incidents[:MAX_INCIDENTS],
        "incidents_total": len(incidents), "silences": quiet, "answers": answers,
    }


def notification(aud: Audience, period: Period, doc: dict[str, Any], now: pd.Timestamp) -> Notification:
    what = "weekly" if period.schedule == "weekly" else "daily"
    head = {"kind": EVENT, "severity": "info", "project": "", "provider": "",
            "project_name": f"{len(aud.projects)} project(s)", "summary": headline(doc), "currency": None,
            "observed": None, "expected": None, "evidence": {}, "fingerprint": None, "digest": doc}
    return Notification(id=digest_id(period, aud.target), group_key=f"{EVENT}:{period.key}", event=EVENT,
                        target=aud.target, title=f"{what} cost digest, {period.label}", alerts=[head],
                        created_at=iso(now) or "", owner=", ".join(aud.owners) or None, sequence=0,
                        labels={"digest": period.schedule})


def plan(cfg: Config, project_rows: list[dict[str, Any]], costs: pd.DataFrame, store: Store, now: pd.Timestamp,
         tag_owners: dict[str, str], *, only_owner: str | None = None, queued_too: bool = False,
         ) -> list[Notification]:
    """The digests owed now: one per target not yet told this period (empty without ``alerting.digest``).
    The figures are computed only for those targets; ``queued_too`` (a preview) builds every target's."""
    dc = cfg.alerting.digest
    if dc is None:
        return []
    period = period_at(dc, now)
    auds = audiences([str(p["project"]) for p in project_rows], cfg, tag_owners, only_owner)
    queued = set() if queued_too else {digest_id(period, a.target) for a in auds
                                        if store.get("outbox", digest_id(period, a.target))}
    todo = {t.key for t in due(period, [a.target for a in auds], queued)}
    auds = [a for a in auds if a.target.key in todo]
    if not auds:
        return []
    w = windows(period, costs)
    agg = _aggregate(costs, w)
    return [notification(a, period, content(a, period, agg, w, project_rows, store, now, dc.top), now)
            for a in auds]


def of(n: Notification) -> dict[str, Any]:
    """The digest document a notification carries (``{}`` when it is not one, or came malformed)."""
    lead = n.alerts[0] if n.alerts and isinstance(n.alerts[0], dict) else {}
    doc = lead.get("digest")
    return doc if isinstance(doc, dict) else {}


# ------------------------------------------------------------------------------------------ rendering


def _t(value: object, limit: int = 120) -> str:
    """A value from data on one line, hidden characters shown as escapes."""
    return terminal_safe(value, limit)


def change_text(c: dict[str, Any]) -> str:
    cur = _t(c.get("currency"), 8)
    this, last, delta = finite(c.get("this")), finite(c.get("last")), finite(c.get("delta"))
    p = finite(c.get("pct"))
    rel = pct(p) if p is not None else ("new" if (last or 0) == 0 and (this or 0) > 0 else "")
    return (f"{money(this, cur)} vs {money(last, '').strip()} ({money(delta, '', signed=True).strip()}"
            + (f", {rel}" if rel else "") + ")")


def forecast_text(f: dict[str, Any]) -> str:
    cur = _t(f.get("currency"), 8)
    fc, lo, hi, budget, share = (finite(f.get(k)) for k in ("forecast", "forecast_low", "forecast_high", "budget",
                                                          "share"))
    out = f"{fc:,.0f} {cur}" if fc is not None else "?"
    if lo is not None and hi is not None:
        out += f" (80 %: {lo:,.0f}–{hi:,.0f})"
    if budget is not None:
        out += f" vs budget {budget:,.0f}" + (f" ({share:.0%})" if share is not None else "")
        out += " — over budget" if share is not None and share > 1 else ""
    return out


def incident_text(i: dict[str, Any]) -> str:
    state = (f"acknowledged by {_t(i.get('acked_by'), 60)}" if i.get("state") == "acknowledged" else "open")
    return (f"{_t(i.get('severity'), 20).upper()} {_t(i.get('kind'), 40).replace('_', ' ')} in "
            f"{_t(i.get('project_name'))}: {state} since {_t(i.get('opened_at'), 30)}, {i.get('updates', 0)} update(s)")


def silence_text(s: dict[str, Any]) -> str:
    what = "planned activity" if s.get("planned") else "silence"
    kind = f" {_t(s.get('kind'), 40)}" if s.get("kind") else ""
    return f"{what}: {_t(s.get('project'))}{kind} until {_t(s.get('until'), 30)} — {_t(s.get('reason'), 200)}"


def headline(doc: dict[str, Any]) -> str:
    parts = [f"{money(finite(t.get('this')), _t(t.get('currency'), 8))} ({pct(finite(t.get('pct')))})"
             .replace(" ()", "") for t in doc.get("totals") or []]
    over = sum(1 for f in doc.get("forecasts") or [] if (finite(f.get("share")) or 0) > 1)
    n = int(doc.get("incidents_total") or 0)
    return ("Spend " + ("; ".join(parts) or "none") + f"; {n} open incident(s)"
            + (f"; {over} project(s) forecast over budget" if over else "") + ".")


def _days(doc: dict[str, Any]) -> str:
    """``2026-11-09 to 2026-11-15``: the days compared (the window's end is exclusive)."""
    w = doc.get("window") or {}
    last = iso(pd.Timestamp(str(w["end"])) - pd.Timedelta(days=1)) if w.get("end") else None
    return f"{str(w.get('this_start') or '?')[:10]} to {(last or '?')[:10]}"


def sections(doc: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(title, lines) of the digest, every value from data made one safe line: the text every plain medium
    (stdout, the email's text part, Teams) shows."""
    span = "week" if doc.get("schedule") == "weekly" else "day"
    spend = [f"Total: {change_text(t)}" for t in doc.get("totals") or []]
    spend += [f"{_t(p.get('project_name'))} ({_t(p.get('provider'), 20)}): {change_text(p)}"
              for p in doc.get("projects") or []]
    more = int(doc.get("projects_total") or 0) - len(doc.get("projects") or [])
    if more > 0:
        spend.append(f"… and {more} more project(s)")
    movers = doc.get("movers") or {}
    out = [(f"Spend {_days(doc)} against the {span} before", spend or ["No spend in these days."]),
           ("Top movers by service", [f"{_t(m.get('name'))}: {change_text(m)}" for m in movers.get("service") or []]
            or ["No change."]),
           ("Top movers by region", [f"{_t(m.get('name'))}: {change_text(m)}" for m in movers.get("region") or []]
            or ["No change."]),
           ("Month-end forecast", [f"{_t(f.get('project_name'))}: {forecast_text(f)}"
                                   for f in doc.get("forecasts") or []] or ["No forecast."]),
           (f"Open incidents ({int(doc.get('incidents_total') or 0)})",
            [incident_text(i) for i in doc.get("incidents") or []] or ["None."])]
    held = [silence_text(s) for s in doc.get("silences") or []] + [_t(a, 300) for a in doc.get("answers") or []]
    out.append(("Silences, planned activity and owners' answers in force", held or ["None."]))
    return out


def text(doc: dict[str, Any]) -> str:
    lines = [f"costwatch {_t(doc.get('schedule'), 10)} digest, {_t(doc.get('label'), 80)}"]
    if doc.get("owners"):
        lines.append("For: " + ", ".join(_t(o, 80) for o in doc["owners"][:20]))
    for title, body in sections(doc):
        lines += ["", title + ":"] + [f"  {line}" for line in body]
    return "\n".join(lines) + "\n"


def _delta_cell(c: dict[str, Any]) -> Markup:
    d = finite(c.get("delta")) or 0.0
    p = finite(c.get("pct"))
    txt = money(d, "", signed=True).strip() + (f" ({pct(p)})" if p is not None else "")
    return tag("span", txt, "up" if d > 0 else "down" if d < 0 else "")


def _change_rows(rows: list[dict[str, Any]], name: str) -> list[list[object]]:
    return [[r.get(name), r.get("currency"), money(finite(r.get("this")), ""), money(finite(r.get("last")), ""),
             _delta_cell(r)] for r in rows]


def html(doc: dict[str, Any]) -> str:
    """The digest as a page in the report's shell (``costwatch.html_page``): what the email's HTML part is."""
    head = ["", "currency", "this " + ("week" if doc.get("schedule") == "weekly" else "day"), "before", "change"]
    movers = doc.get("movers") or {}
    body: list[object] = [tag("h1", f"costwatch {doc.get('schedule')} digest"),
                          para(f"{doc.get('label')}; spend {_days(doc)}.", "muted")]
    if doc.get("owners"):
        body.append(para("For: " + ", ".join(str(o) for o in doc["owners"][:20])))
    body += [tag("h2", "Spend"),
             table(["project", *head[1:]], _change_rows([{**t, "project_name": "Total"} for t in doc.get("totals")
                                                         or []] + list(doc.get("projects") or []), "project_name"),
                   numeric=(2, 3, 4)),
             tag("h2", "Top movers by service"), table(["service", *head[1:]], _change_rows(
                 movers.get("service") or [], "name"), numeric=(2, 3, 4)),
             tag("h2", "Top movers by region"), table(["region", *head[1:]], _change_rows(
                 movers.get("region") or [], "name"), numeric=(2, 3, 4)),
             tag("h2", "Month-end forecast against the budget"),
             table(["project", "forecast"], [[f.get("project_name"), _forecast_cell(f)]
                                             for f in doc.get("forecasts") or []])]
    for title, lines in sections(doc)[4:]:   # after spend, movers and forecasts (tables above): the lists
        body += [tag("h2", title), items(lines)]
    body.append(para(join(["costwatch ", tag("code", str(doc.get("period_start")))]), "muted small"))
    return page(f"costwatch {doc.get('schedule')} digest", body)


def _forecast_cell(f: dict[str, Any]) -> Markup:
    txt = forecast_text(f)
    return tag("span", txt, "over" if (finite(f.get("share")) or 0) > 1 else "")


__all__ = ["EVENT", "Audience", "Period", "Windows", "audiences", "content", "digest_id", "due", "html", "of",
           "period_at", "plan", "sections", "text", "windows"]
