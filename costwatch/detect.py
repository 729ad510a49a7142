"""From normalized frames to alerts: cost bands, CPU plateaus, their join, thresholds and budgets.

Everything is evaluated as if costwatch had run every hour up to ``as_of``: inputs are cut at ``as_of``,
bands and CPU profiles only look backwards, and an alert's ``detected_at`` is the end of the first data
period (hour of CPU, day of cost plus its publication delay) at which it would have fired.

Amounts in different currencies are never added: the currency is part of every cost series' identity, so a
project billed in USD and EUR is two series, each with its own band, figures and currency label.  The
project's main currency (the one its thresholds and budget are configured in, else the one most of its rows
are in) keeps the plain alert identity; a cost alert on another currency's series carries ``@EUR`` (say) in
its scope, so single-currency projects keep their fingerprints.  Thresholds and budgets are compared with the
series in their configured currency only (``ProjectConfig.currency`` when set, else the main currency), and
a note says which spend was not compared.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from . import baseline as bl
from . import budgets
from . import cpu as cpumod
from . import monitors as monmod
from .alerts import SEVERITY_ORDER, Alert, plain
from .config import Config, ProjectConfig
from .mining_score import rescore
from .model import COMPUTE_CATEGORY
from .silences import Silence
from .usage_score import UsageScoreParams, episode_onsets, flagged_scores

DAY = pd.Timedelta(days=1)
HOUR = pd.Timedelta(hours=1)
# Input times are checked against the run's clock: a row more than FUTURE_SKEW after it (one row dated 2030 in
# an export) never sets ``as_of`` (it would move the window past every real alert) and is ignored with a note;
# rows before TIME_FLOOR (1900-01-01 typed for a blank date) are far outside any window, and noted too.
FUTURE_SKEW = pd.Timedelta(hours=2)
TIME_FLOOR = pd.Timestamp("2000-01-01", tz="UTC")
NEW_REGION_GRACE_DAYS = 3
MAX_GAP_DAYS = 3  # days without data inside (or at the end of) a cost episode that do not end it
DEFAULT_CURRENCY = "USD"  # of rows without one (frames built by hand) and of projects seen only in CPU data
SERIES = ["provider", "project_id", "currency"]  # a cost series: never sums two currencies


@dataclass
class SeriesBands:
    """A daily matrix and its bands, plus the anomaly mask detection used; kept for reports and charts."""

    matrix: bl.DailyMatrix
    bands: bl.Bands
    anomalous: np.ndarray
    short: np.ndarray  # bool S x D: day judged by plain thresholds (not enough history)


@dataclass
class Detection:
    as_of: pd.Timestamp
    since: pd.Timestamp
    alerts: list[Alert]
    projects: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    totals: SeriesBands | None = None
    categories: SeriesBands | None = None
    cpu: cpumod.CpuMatrix | None = None
    cpu_features: cpumod.CpuFeatures | None = None
    # what the providers could not read: {provider, scope, failed, fix} (``ScopeFailure.to_dict``)
    errors: list[dict[str, str]] = field(default_factory=list)
    # the config detection ran with: the file's plus one virtual project per monitor (``costwatch.monitors``),
    # which routing reads monitors' owners from
    config: Config | None = None
    monitors: dict[str, list[str]] = field(default_factory=dict)  # monitor (virtual project) -> its projects


def cpu_settings(cfg: Config) -> cpumod.CpuSettings:
    c = cfg.detection.cpu
    return cpumod.CpuSettings(
        pinned_level=c.pinned_level, plateau_level=c.plateau_level, min_excess=c.min_excess,
        flat_tolerance=c.flat_tolerance, pinned_hours=c.pinned_hours, plateau_hours=c.plateau_hours,
        profile_days=c.profile_days, min_profile_days=c.min_profile_days,
        gpu_instance_prefixes=list(c.gpu_instance_prefixes),
    )


def detect(costs: pd.DataFrame, usage: pd.DataFrame | None, cfg: Config | None = None, *,
           as_of: pd.Timestamp | str | None = None, since: pd.Timestamp | str | pd.Timedelta | None = None,
           findings: pd.DataFrame | None = None, now: pd.Timestamp | None = None,
           planned: Sequence[Silence] | None = None) -> Detection:
    """Run every detector over the frames and return alerts detected in ``[since, as_of]``, plus alerts
    detected earlier whose episode is still going on in the window: a cost level that persists stays an
    incident (it is never silently learned), and a miner is active as long as it runs.

    ``findings`` are cloud security findings of crypto mining (GuardDuty), columns ``costwatch.model.FINDING_COLUMNS``:
    they become evidence on the project's mining alert, or a mining alert of their own.  ``now`` is the run's
    clock: without ``as_of``, the window ends at the data's last complete hour or day, and rows after ``now``
    (default: the real clock) plus FUTURE_SKEW are ignored with a note.  With ``as_of`` (a replay), rows after
    it are simply not yet known.  ``planned`` are planned-activity marks (``costwatch silence --planned``,
    expired ones included): a cost episode that touches a marked day is accepted, its new level becomes the
    baseline and it raises no cost alert."""
    cfg = cfg or Config()
    delay = pd.Timedelta(hours=cfg.detection.cost_delay_hours)
    costs, usage, as_of_ts, since_ts, notes = _inputs_as_of(costs, usage, as_of, since, now, delay)
    sel = monmod.select(costs, cfg)  # monitors become virtual projects, with their rows appended
    cfg, costs = sel.config, sel.costs
    notes += sel.notes
    pairs = _currency_rows(costs)
    meta = _project_meta(costs, usage, cfg, pairs)

    gross = costs[bl.usage_rows(costs)] if not costs.empty else costs
    totals, cats = _cost_bands(gross, sel, cfg, since_ts, meta, planned)
    cost_alerts = _cost_alerts(gross, totals, cats, meta, since_ts, delay, _rows_of(gross, sel))
    cm, feats, mining = _cpu_mining(usage, cfg, meta, gross, cost_alerts, since_ts, as_of_ts)
    mining = _all_mining(mining, findings, cost_alerts, cm, meta, sel, since_ts, as_of_ts)
    alerts = mining + cost_alerts
    alerts += _threshold_alerts(totals, cfg, meta, since_ts, delay)
    budget_alerts, month_forecasts = budgets.budget_alerts(costs, cfg, meta, since_ts, as_of_ts, delay)
    alerts = _in_window(alerts + budget_alerts, since_ts, as_of_ts, delay)
    usage_flags = (_usage_anomalies(cm, since_ts, as_of_ts, cfg.detection.cpu.usage_score)
                   if cm is not None and cm.values.size else {})
    projects = _project_summaries(costs, totals, cm, feats, alerts, meta, pairs, usage_flags, cfg, since_ts,
                                  as_of_ts, month_forecasts)
    notes += _summary_notes(projects, meta, pairs, cfg, usage)
    sel.annotate(alerts, projects)
    return Detection(as_of_ts, since_ts, alerts, projects, notes, totals, cats, cm, feats, config=cfg,
                     monitors=sel.projects)


def _inputs_as_of(costs: pd.DataFrame, usage: pd.DataFrame | None, as_of: pd.Timestamp | str | None,
                  since: pd.Timestamp | str | pd.Timedelta | None, now: pd.Timestamp | None, delay: pd.Timedelta,
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp, pd.Timestamp, list[str]]:
    """The frames as a run at ``as_of`` would have had them, the window, and the notes on ignored rows:
    every detector then sees the same cut, so a replay can never look into its own future."""
    usage = usage if usage is not None else pd.DataFrame(columns=["timestamp"])
    costs, usage, time_notes = _outside_the_clock(costs, usage, _utc_clock(now),
                                                  future=as_of is None or now is not None)
    as_of_ts = _resolve_as_of(costs, usage, as_of)
    since_ts = _resolve_since(as_of_ts, since)
    costs, usage = _published_by(costs, usage, as_of_ts, delay)
    return costs, usage, as_of_ts, since_ts, list(time_notes)


def _utc_clock(now: pd.Timestamp | None) -> pd.Timestamp:
    """The run's clock in UTC: a naive ``now`` is taken as UTC, so tests and replays need not spell the zone."""
    clock = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    return clock.tz_localize("UTC") if clock.tzinfo is None else clock.tz_convert("UTC")


def _published_by(costs: pd.DataFrame, usage: pd.DataFrame, as_of: pd.Timestamp, delay: pd.Timedelta,
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Only what a run at ``as_of`` could have read: a cost row counts once its day is complete and published
    (``delay`` later), a CPU sample once its hour is over.  Rows without a currency get DEFAULT_CURRENCY here,
    once, so no series key is ever missing."""
    if not costs.empty:
        day_end = costs["period_start"].dt.floor("D") + DAY
        costs = costs[day_end + delay <= as_of]
    if not usage.empty:
        usage = usage[usage["timestamp"].dt.floor("h") + HOUR <= as_of]
    if not costs.empty and costs["currency"].isna().any():
        costs = costs.assign(currency=costs["currency"].fillna(DEFAULT_CURRENCY))
    return costs, usage


def _cost_bands(gross: pd.DataFrame, sel: monmod.Selection, cfg: Config, since: pd.Timestamp, meta: pd.DataFrame,
                planned: Sequence[Silence] | None) -> tuple[SeriesBands, SeriesBands]:
    """Bands per cost series and per (series, category).  Only planned marks for cost (not other kinds'
    silences) move a baseline; monitors get no category bands, as they have one series each."""
    marks = [s for s in (planned or []) if s.planned and s.kind in (None, "cost_spike")]
    totals = _series_bands(gross, SERIES, cfg, since, meta, marks)
    own = sel.projects_only(gross)  # monitors have one series each, no categories
    cats = _series_bands(own.assign(service_category=own["service_category"].fillna("Other"))
                         if not own.empty else own,
                         [*SERIES, "service_category"], cfg, since, meta, marks)
    return totals, cats


def _cpu_mining(usage: pd.DataFrame, cfg: Config, meta: pd.DataFrame, gross: pd.DataFrame, cost_alerts: list[Alert],
                since: pd.Timestamp, as_of: pd.Timestamp,
                ) -> tuple[cpumod.CpuMatrix | None, cpumod.CpuFeatures | None, list[Alert]]:
    """The CPU matrix, its features and the mining alerts from CPU plateaus (joined with the cost alerts).
    The matrix is returned even when it is empty, as reports tell "no nodes" from "no CPU data"."""
    cm = cpumod.cpu_matrix(usage) if not usage.empty else None
    feats = None
    mining: list[Alert] = []
    if cm is not None and cm.values.size:
        settings = cpu_settings(cfg)
        feats = cpumod.features(cm, settings)
        episodes = [e for e in cpumod.node_episodes(cm, feats, settings) if e.project in meta.index]
        mining = _mining_alerts(episodes, cm, gross, cost_alerts, meta, settings, since, as_of,
                                cfg.alerting.owner_tags, feats)
        _add_cpu_peaks(mining, usage)
    return cm, feats, mining


def _all_mining(mining: list[Alert], findings: pd.DataFrame | None, cost_alerts: list[Alert],
                cm: cpumod.CpuMatrix | None, meta: pd.DataFrame, sel: monmod.Selection, since: pd.Timestamp,
                as_of: pd.Timestamp) -> list[Alert]:
    """CPU mining alerts plus what security findings and cost alone say: a project is told about a miner
    once, and a monitor (cost-only, spanning projects) never is: the miner is told on its project."""
    if findings is not None and len(findings):
        mining = _join_findings(findings, mining, meta, since, as_of)
    covered = {a.project for a in mining} | sel.pids  # monitors are cost-only: a miner is told on its project
    nodes_by_project = set(cm.nodes["project"]) if cm is not None else set()
    mining += _cost_only_mining(cost_alerts, nodes_by_project, covered)
    return mining


def _in_window(alerts: list[Alert], since: pd.Timestamp, as_of: pd.Timestamp, delay: pd.Timedelta) -> list[Alert]:
    """Alerts a run at ``as_of`` reports, most severe first: those detected in the window, and older ones
    whose episode still goes on (a persisting cost level or a running miner stays an incident)."""
    alerts = [a for a in alerts if a.detected_at <= as_of and (since <= a.detected_at or _ongoing(a, since, delay))]
    alerts.sort(key=lambda a: (SEVERITY_ORDER.get(a.severity, 9), a.detected_at, a.project))
    return alerts


def _summary_notes(projects: list[dict[str, Any]], meta: pd.DataFrame, pairs: pd.Series, cfg: Config,
                   usage: pd.DataFrame) -> list[str]:
    """What the reader must know to trust the figures: series judged by plain thresholds, spend in a currency
    not compared with limits, and mining judged without CPU data."""
    notes = [f"{_series_name(p['project'], p['currency'], meta)}: {p['band_status']}"
             for p in projects if p["band_status"].startswith("short")]
    notes += _currency_notes(meta, pairs, cfg)
    if usage.empty:
        notes.append("no CPU usage data: mining is judged from cost alone (new regions, compute spikes)")
    return notes


def _rows_of(gross: pd.DataFrame, sel: monmod.Selection) -> Callable[[str], pd.DataFrame]:
    """A series' own usage rows, for its alert's evidence: a monitor's are the real rows it matches."""
    index: dict[str, np.ndarray] = {}

    def rows(pid: str) -> pd.DataFrame:
        if pid in sel.members:
            return sel.rows(pid, gross)
        if not index:  # each project's positions, found once for all its alerts (scale: 1M rows)
            index.update(gross.groupby(gross["project_id"].astype(str), observed=True, sort=False).indices)
        return gross.iloc[index.get(pid, np.zeros(0, dtype=np.int64))]
    return rows


# ---------------------------------------------------------------------------------------------- inputs

def _outside_the_clock(costs: pd.DataFrame, usage: pd.DataFrame, clock: pd.Timestamp, future: bool,
                       ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The frames without rows dated after ``clock + FUTURE_SKEW`` (when ``future``), and a note for those and
    for rows dated before TIME_FLOOR (kept: they only ever fall before the window)."""
    notes: list[str] = []
    latest = clock + FUTURE_SKEW
    for what, col in (("cost rows", "period_start"), ("CPU samples", "timestamp")):
        frame = costs if col == "period_start" else usage
        if frame.empty or col not in frame:
            continue
        times = frame[col]
        ahead = (times > latest).to_numpy(dtype=bool) if future else np.zeros(len(times), dtype=bool)
        if ahead.any():
            notes.append(f"{int(ahead.sum()):,} {what} dated after the run's clock ({iso_minute(latest)}, "
                         f"{FUTURE_SKEW // HOUR} h of skew allowed; latest {iso_minute(times[ahead].max())}) were "
                         "ignored: a date in the future cannot move the report's window")
            frame = frame[~ahead]
        early = (frame[col] < TIME_FLOOR).to_numpy(dtype=bool)
        if early.any():
            notes.append(f"{int(early.sum()):,} {what} dated before {TIME_FLOOR.date()} (earliest "
                         f"{iso_minute(frame[col][early].min())}) are outside any window and were not used")
        if col == "period_start":
            costs = frame
        else:
            usage = frame
    return costs, usage, notes


def iso_minute(ts: pd.Timestamp) -> str:
    return pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%MZ")


def _resolve_as_of(costs: pd.DataFrame, usage: pd.DataFrame, as_of: pd.Timestamp | str | None,
                   ) -> pd.Timestamp:
    if as_of is not None:
        ts = pd.Timestamp(as_of)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    ends = []
    if not costs.empty:
        ends.append(costs["period_start"].dt.floor("D").max() + DAY)
    if not usage.empty:
        ends.append(usage["timestamp"].dt.floor("h").max() + HOUR)
    if not ends:
        return pd.Timestamp.now(tz="UTC").floor("h")
    return max(ends)


def _resolve_since(as_of: pd.Timestamp, since: pd.Timestamp | str | pd.Timedelta | None) -> pd.Timestamp:
    if since is None:
        return as_of - pd.Timedelta(days=28)
    if isinstance(since, pd.Timedelta):
        return as_of - since
    ts = pd.Timestamp(since)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _currency_rows(costs: pd.DataFrame) -> pd.Series:
    """Rows per (project_id, currency), index sorted: which currencies each project is billed in."""
    if costs.empty:
        return pd.Series(dtype="int64", index=pd.MultiIndex.from_tuples([], names=["project_id", "currency"]))
    n = costs.groupby([costs["project_id"].astype(str), costs["currency"].astype(str)], observed=True).size()
    n.index = n.index.set_names(["project_id", "currency"])
    return n


def _configured_currency(pc: ProjectConfig | None) -> str | None:
    """The currency a project's threshold and budget are in, if the config says so (the field defaults to
    USD, but an unset currency means the project's own)."""
    return pc.currency if pc is not None and "currency" in pc.model_fields_set else None


def _project_meta(costs: pd.DataFrame, usage: pd.DataFrame, cfg: Config, pairs: pd.Series) -> pd.DataFrame:
    """One row per project: provider, name, main currency, the currency its limits are compared in, the
    number of currencies it is billed in, and min spend.

    The main currency is the configured one if the project has rows in it, else the one most of its rows
    are in (ties: alphabetical)."""
    parts = []
    if not costs.empty:
        c = costs.groupby("project_id", observed=True).agg(
            provider=("provider", "first"), project_name=("project_name", "first"))
        c.index = c.index.astype(str)
        conf = {pid: cur for pid, pc in cfg.projects.items() if (cur := _configured_currency(pc)) is not None}
        # rank each (project, currency) by its rows, the configured currency above all; idxmax keeps the first
        # (alphabetical) of a tie, like Series.mode
        rank = pairs.astype("float64")
        if conf:
            preferred = np.asarray(pairs.index.get_level_values("project_id").map(conf)
                                   == pairs.index.get_level_values("currency"), dtype=bool)
            rank = rank.where(~preferred, np.inf)
        best = rank.groupby(level="project_id").idxmax().str[1]
        c["currency"] = best.set_axis(best.index.astype(str)).reindex(c.index)
        c["n_currencies"] = pairs.groupby(level="project_id").size().reindex(c.index).to_numpy()
        parts.append(c)
    if not usage.empty:
        has_name = "project_name" in usage.columns
        u = usage.groupby("project", observed=True).agg(
            provider=("provider", "first"), **({"project_name": ("project_name", "first")} if has_name else {}))
        u.index = u.index.astype(str)
        u.index.name = "project_id"
        named = u["project_name"].astype("string") if has_name else pd.Series(pd.NA, index=u.index, dtype="string")
        u["project_name"] = named.fillna(pd.Series(u.index, index=u.index, dtype="string"))
        u["currency"] = DEFAULT_CURRENCY
        u["n_currencies"] = 0
        parts.append(u)
    if not parts:
        return pd.DataFrame(columns=["provider", "project_name", "currency", "limit_currency", "n_currencies",
                                     "min_spend", *_KNOBS])
    meta = pd.concat(parts)
    meta = meta[~meta.index.duplicated(keep="first")].copy()
    meta.index = meta.index.astype(str)
    pcfg = {pid: cfg.projects.get(pid) for pid in meta.index}
    meta["project_name"] = [
        (p.name if p and p.name else str(n)) for p, n in zip(pcfg.values(), meta["project_name"], strict=True)]
    meta["limit_currency"] = [
        _configured_currency(p) or str(cur) for p, cur in zip(pcfg.values(), meta["currency"], strict=True)]
    meta["min_spend"] = [
        (p.min_spend if p and p.min_spend is not None else cfg.detection.min_spend) for p in pcfg.values()]
    for knob in _KNOBS:  # a project's (or monitor's) own detection knobs, else detection's
        default = getattr(cfg.detection, knob)
        meta[knob] = [v if (v := getattr(p, knob, None)) is not None else default for p in pcfg.values()]
    return meta


_KNOBS = ("sensitivity", "min_impact", "min_impact_pct")


def _series_scope(scope: str, currency: str, main: str) -> str:
    """An alert's scope for one currency of a project: the main currency's is the plain scope (so the
    fingerprints of single-currency projects never change), another currency's is suffixed."""
    return scope if currency == main else f"{scope}@{currency}"


def _series_name(pid: str, currency: str, meta: pd.DataFrame) -> str:
    """How notes name a series: the project, with the currency when the project is billed in several."""
    multi = pid in meta.index and int(meta.at[pid, "n_currencies"]) > 1
    return f"{pid} ({currency})" if multi else pid


def _currency_notes(meta: pd.DataFrame, pairs: pd.Series, cfg: Config) -> list[str]:
    """Projects billed in several currencies, and spend a threshold or budget was not compared with."""
    notes: list[str] = []
    if pairs.empty:
        return notes
    n = pairs.groupby(level="project_id").size()
    limited = {pid for pid, pc in cfg.projects.items() if pc.daily_threshold is not None
               or pc.monthly_budget is not None}
    wanted = n.index[(n > 1).to_numpy() | n.index.isin(list(limited))]
    if not len(wanted):
        return notes
    sub = pairs[pairs.index.get_level_values("project_id").isin(wanted)]
    by_project = sub.reset_index().groupby("project_id", sort=True)["currency"].agg(list)
    for pid, curs in by_project.items():  # only projects in several currencies or with limits
        pid = str(pid)
        pc = cfg.projects.get(pid)
        limits = [what for what, v in (("daily threshold", pc.daily_threshold if pc else None),
                                       ("monthly budget", pc.monthly_budget if pc else None)) if v is not None]
        limit_cur = str(meta.at[pid, "limit_currency"]) if pid in meta.index else DEFAULT_CURRENCY
        if len(curs) > 1:
            notes.append(f"{pid}: billed in {', '.join(curs)}; each currency is banded and reported on its own, "
                         "never summed")
        others = [c for c in curs if c != limit_cur]
        if limits and others:
            notes.append(f"{pid}: spend in {', '.join(others)} was not compared with the {' and '.join(limits)} "
                         f"(configured in {limit_cur})")
    return notes


def _ongoing(a: Alert, since: pd.Timestamp, delay: pd.Timedelta) -> bool:
    """An alert detected before the window whose episode still runs in it: a cost episode still out of its
    band, or a CPU mining episode that still ran inside the window (a miner that has run for longer than the
    alert window is still an incident, with its first detection kept)."""
    if a.kind == "mining_suspected":
        until = a.evidence.get("ongoing_until")
        return until is not None and pd.Timestamp(until) >= since
    if budgets.ongoing(a, since, delay):
        return True
    return a.kind == "cost_spike" and bool(a.evidence.get("ongoing")) and \
        pd.Timestamp(a.start) + int(a.evidence.get("days", 1)) * DAY + delay >= since


def planned_days(m: bl.DailyMatrix, marks: Sequence[Silence], meta: pd.DataFrame) -> np.ndarray | None:
    """Series x days: the days planned-activity marks accept, from two days before a mark was made (the
    owner marks what the first alert showed) to its end."""
    if not marks or not len(m.keys):
        return None
    pids = m.keys["project_id"].astype(str)
    names = pids.map(meta["project_name"]).astype(str) if len(meta) else pids
    out = np.zeros(m.values.shape, dtype=bool)
    for s in marks:
        rows = np.asarray((pids == s.project) | (names == s.project) | (s.project == "*"), dtype=bool)
        if not rows.any():
            continue
        made = pd.Timestamp(s.created_at) if s.created_at else pd.Timestamp(s.until) - DAY
        made = made.tz_localize("UTC") if made.tzinfo is None else made
        until = pd.Timestamp(s.until)
        until = until.tz_localize("UTC") if until.tzinfo is None else until
        cols = np.asarray((m.days + DAY > made.floor("D") - 2 * DAY) & (m.days < until), dtype=bool)
        out[np.ix_(rows, cols)] = True
    return out if out.any() else None


def _series_bands(frame: pd.DataFrame, keys: list[str], cfg: Config, since: pd.Timestamp,
                  meta: pd.DataFrame, marks: Sequence[Silence] = ()) -> SeriesBands:
    det = cfg.detection
    m = bl.daily_matrix(frame, keys)
    knobs = _series_knobs(m, meta, cfg)
    bands = _bands_by_sensitivity(m, knobs["sensitivity"].to_numpy(dtype=float), cfg, since,
                                  planned_days(m, marks, meta) if det.band_method != "stl" else None)
    if not m.values.size:
        z = np.zeros(m.values.shape, dtype=bool)
        return SeriesBands(m, bands, z, z)
    floor = knobs["min_spend"].to_numpy(dtype=float)[:, None]
    min_impact = knobs["min_impact"].to_numpy(dtype=float)[:, None]
    min_pct = knobs["min_impact_pct"].to_numpy(dtype=float)[:, None]
    x = m.values
    enough = bands.history >= det.history_days
    with np.errstate(invalid="ignore"):
        impact = x - bands.expected  # money per day above expected: the figure owners set limits on
        big = (impact >= min_impact) & (impact >= min_pct / 100.0 * bands.expected)
        banded = enough & (x > bands.upper) & (x >= floor) & big
        # plain threshold for short histories: several times the typical day seen so far
        short = ~enough & (bands.history >= 3)
        prior_med = np.full(x.shape, np.nan)
        rows = np.flatnonzero(short.any(axis=1))  # only series with a short history need it (scale: 1M rows)
        if rows.size:
            prior_med[rows] = _expanding_median(x[rows])
        factor = 3.0 / np.maximum(knobs["sensitivity"].to_numpy(dtype=float), 1e-6)[:, None]
        plain = short & (x >= floor) & (x > factor * prior_med)
    anomalous = np.nan_to_num(banded | plain).astype(bool)
    anomalous = _bridge_gaps(anomalous, np.isnan(x))
    if bands.episode is not None:
        anomalous = _bridge_open_episodes(anomalous, bands.episode & enough & (np.nan_to_num(x) >= floor))
    if bands.accepted is not None:
        anomalous &= ~bands.accepted  # planned: the owner said so
    return SeriesBands(m, bands, anomalous, ~enough)


def _series_knobs(m: bl.DailyMatrix, meta: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Per series: min spend and the detection knobs of its project (or monitor), else detection's."""
    det = cfg.detection
    names = ["min_spend", *_KNOBS]
    pids = m.keys["project_id"].astype(str) if len(m.keys) else pd.Index([], dtype=str)
    have = [c for c in names if c in meta.columns]
    out = meta[have].reindex(pids) if have else pd.DataFrame(index=pids)
    return pd.DataFrame({c: (out[c] if c in out else pd.Series(np.nan, index=pids)).astype(float)
                        .fillna(float(getattr(det, c))).to_numpy() for c in names})


def _bands(values: np.ndarray, days: pd.DatetimeIndex, cfg: Config, since: pd.Timestamp, sensitivity: float,
           accepted: np.ndarray | None) -> bl.Bands:
    det = cfg.detection
    if det.band_method == "stl" and values.size:
        return bl.stl_bands(values, days, since, lookback=det.lookback_days, z=det.band_z,
                            sensitivity=sensitivity, min_ratio=det.min_band_ratio, min_history=det.history_days)
    # two passes, the second without the days the first found out of band (bl.detection_bands); bands
    # from the first day whose alert can fall in the window on (a day earlier, to be safe)
    first_day = since.floor("D") - DAY - pd.Timedelta(hours=det.cost_delay_hours)
    # open episodes are judged against the band frozen at their start, month-end patterns are learned,
    # and planned marks accept a new level
    return bl.detection_bands(values, scored_from=int(days.searchsorted(first_day)),
                              history_days=det.history_days, lookback=det.lookback_days, z=det.band_z,
                              sensitivity=sensitivity, min_ratio=det.min_band_ratio, days=days, accepted=accepted)


def _bands_by_sensitivity(m: bl.DailyMatrix, sensitivity: np.ndarray, cfg: Config, since: pd.Timestamp,
                          accepted: np.ndarray | None) -> bl.Bands:
    """Bands for every series, each at its own sensitivity: one band computation per distinct value (the
    band code takes one), stitched back in series order.  One value (the usual case) is one computation."""
    levels = np.unique(sensitivity)
    if len(levels) <= 1:
        level = float(levels[0]) if len(levels) else cfg.detection.sensitivity
        return _bands(m.values, m.days, cfg, since, level, accepted)
    parts = []
    for level in levels:
        rows = np.flatnonzero(sensitivity == level)
        parts.append((rows, _bands(m.values[rows], m.days, cfg, since, float(level),
                                   accepted[rows] if accepted is not None else None)))
    return _stitch(parts, m.values.shape)


def _stitch(parts: list[tuple[np.ndarray, bl.Bands]], shape: tuple[int, ...]) -> bl.Bands:
    def full(name: str) -> Any:
        arrays = [getattr(b, name) for _, b in parts]
        if all(a is None for a in arrays):
            return None
        known = [a for a in arrays if a is not None]
        out = np.zeros(shape, dtype=np.result_type(*known))
        for (rows, _), a in zip(parts, arrays, strict=True):
            if a is not None:
                out[rows] = a
        return out

    return bl.Bands(full("expected"), full("lower"), full("upper"), full("sigma"), full("history"),
                    parts[0][1].method, full("episode"), full("accepted"))


def _bridge_open_episodes(anomalous: np.ndarray, episode: np.ndarray) -> np.ndarray:
    """A day just inside the frozen band does not end an episode (two such days do): the alert spans it, so
    one quiet day never splits an ongoing incident into a "resolved" and a new one.  Only stretches of the
    band's episodes that contain an alerting day count."""
    out = anomalous.copy()
    for i in np.flatnonzero((episode & ~anomalous).any(axis=1) & anomalous.any(axis=1)):
        for a, b in _episodes(anomalous[i] | episode[i]):
            if anomalous[i, a: b + 1].any():
                out[i, a: b + 1] = True
    return out


def _bridge_gaps(anomalous: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Days without data (an export that skipped a day, a day not yet published for this project) after an
    alerting day are not a recovery: up to MAX_GAP_DAYS of them belong to its episode when the next known
    day alerts again or no day is known after them, so a gap neither splits an ongoing incident nor ends it.
    (A project whose data stopped for longer is not held open here for ever; ``incidents.plan`` judges it
    at the end of its data.)"""
    rows = np.flatnonzero(anomalous.any(axis=1) & missing[:, 1:].any(axis=1))
    if not rows.size:
        return anomalous
    out = anomalous.copy()
    for i in rows:
        for a, b in _episodes(missing[i]):
            if a > 0 and b - a < MAX_GAP_DAYS and anomalous[i, a - 1] and \
                    (b + 1 == missing.shape[1] or anomalous[i, b + 1]):
                out[i, a: b + 1] = True
    return out


def _expanding_median(x: np.ndarray) -> np.ndarray:
    """Median of all earlier days per series (causal); only used for short histories, so a loop over
    at most ``history_days`` columns is enough."""
    out = np.full(x.shape, np.nan)
    for t in range(1, min(x.shape[1], 60)):
        with np.errstate(all="ignore"), _quiet():
            out[:, t] = np.nanmedian(x[:, :t], axis=1)
    if x.shape[1] > 60:
        out[:, 60:] = out[:, 59:60]
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """All-NaN slices are expected here (new series, missing days); their warnings are noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# -------------------------------------------------------------------------------------------- cost

def _episodes(mask_row: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (first, last) index pairs of consecutive True values."""
    idx = np.flatnonzero(mask_row)
    if idx.size == 0:
        return []
    brk = np.flatnonzero(np.diff(idx) > 1)
    firsts = np.concatenate([[idx[0]], idx[brk + 1]])
    lasts = np.concatenate([idx[brk], [idx[-1]]])
    return [(int(a), int(b)) for a, b in zip(firsts, lasts, strict=True)]


def _cost_alerts(gross: pd.DataFrame, totals: SeriesBands, cats: SeriesBands, meta: pd.DataFrame,
                 since: pd.Timestamp, delay: pd.Timedelta,
                 rows_of: Callable[[str], pd.DataFrame] | None = None) -> list[Alert]:
    rows_of = rows_of or (lambda pid: gross[gross["project_id"].astype(str) == pid])
    out: list[Alert] = []
    spans: dict[tuple[str, str], list[tuple[int, int]]] = {}  # per (project, currency)
    for sb, scope_of in ((cats, lambda k: str(k["service_category"])), (totals, lambda k: "total")):
        m = sb.matrix
        days = m.days
        rows = np.flatnonzero(sb.anomalous.any(axis=1))
        for i in rows:
            key = m.keys.iloc[i]
            pid, cur = str(key["project_id"]), str(key["currency"])
            scope = scope_of(key)
            for a, b in _episodes(sb.anomalous[i]):
                detected = days[a] + DAY + delay
                if detected < since and not _still_open(sb, int(i), b):
                    continue  # over before the window; an episode still going on is reported wherever it began
                if scope == "total" and _explained(a, b, spans.get((pid, cur), [])):
                    continue  # already explained by a category alert
                if scope != "total":
                    spans.setdefault((pid, cur), []).append((a, b))
                out.append(_cost_alert(rows_of(pid), sb, int(i), a, b, pid, cur, scope, meta, detected))
    return out


def _explained(a: int, b: int, spans: list[tuple[int, int]]) -> bool:
    """Is a total episode (days a..b) the category alerts' own: do they cover at least half its days?  A
    one-day category spike inside a long total episode (a step on a new service, which no category band
    knows yet) does not explain it, and hiding the total would leave the step without an alert."""
    covered = np.zeros(b - a + 1, dtype=bool)
    for c0, c1 in spans:
        covered[max(c0, a) - a: max(min(c1, b) - a + 1, 0)] = True
    return 2 * int(covered.sum()) >= covered.size


def _still_open(sb: SeriesBands, i: int, b: int) -> bool:
    """Is the cost episode ending on day ``b`` still going on: out of band on the newest day, or inside an
    open episode of the band from ``b`` to the newest day (a day just inside the frozen band does not
    end it)."""
    last = sb.matrix.values.shape[1] - 1
    ep = sb.bands.episode
    return b == last or (ep is not None and bool(ep[i, b:].all()))


def _cost_alert(whole: pd.DataFrame, sb: SeriesBands, i: int, a: int, b: int, pid: str, cur: str, scope: str,
                meta: pd.DataFrame, detected: pd.Timestamp) -> Alert:
    """``whole``: the series' project's usage rows in every currency (which regions the project used)."""
    m, bands = sb.matrix, sb.bands
    days = m.days
    obs, exp = float(m.values[i, a]), float(bands.expected[i, a])
    short = bool(sb.short[i, a])
    proj = whole[whole["currency"].astype(str) == cur]  # the series' own amounts
    if scope != "total":
        proj = proj[proj["service_category"].fillna("Other").astype(str) == scope]
    evidence = _cost_evidence(proj, whole, days, a, b, exp if not short else np.nan)
    excess = obs - (exp if np.isfinite(exp) else 0.0)
    evidence.update({
        "metric": "daily_cost", "days": int(b - a + 1), "peak": float(np.nanmax(m.values[i, a: b + 1])),
        "impact": float(excess), "impact_pct": float(100.0 * excess / exp) if exp > 0 and not short else None,
        "excess_total": float(np.nansum(m.values[i, a: b + 1] - np.nan_to_num(bands.expected[i, a: b + 1]))),
        "history_days": int(bands.history[i, a]),
        "band": "plain threshold (short history)" if short else f"{bands.method} band",
        # still out of band on the newest day: an open episode, judged against the band of its start
        "ongoing": _still_open(sb, i, b),
    })
    if bands.episode is not None and bool(bands.episode[i, b]):
        evidence["band"] += ", frozen at the episode's start (an open incident never enters its own baseline)"
    ratio = obs / exp if exp > 0 else float("inf")
    severity = "high" if (ratio >= 2.0 or evidence.get("new_regions")) else "warning"
    row = meta.loc[pid]
    zscore = float(np.nan_to_num(bl.robust_z(m.values[i: i + 1, a: a + 1],
                                             _slice_bands(bands, i, a))[0, 0], nan=0.0))
    what = "all services" if scope == "total" else scope
    return Alert(
        kind="cost_spike", project=pid, project_name=str(row["project_name"]), provider=str(row["provider"]),
        service=None if scope == "total" else scope, region=_top_region(evidence),
        start=days[a], detected_at=detected, severity=severity, observed=obs,
        expected=exp if not short else float(np.nan), lower=float(bands.lower[i, a]) if not short else np.nan,
        upper=float(bands.upper[i, a]) if not short else np.nan, currency=cur,
        score=zscore, scope=_series_scope(f"cost:{scope}", cur, str(row["currency"])), evidence=evidence,
        summary=(f"{what} spend {obs:,.2f} {cur}/day vs expected {exp:,.2f} "
                 f"(+{excess:,.2f})" if not short else
                 f"{what} spend {obs:,.2f} {cur}/day, several times its short history"),
    )


def _slice_bands(b: bl.Bands, i: int, a: int) -> bl.Bands:
    return bl.Bands(b.expected[i: i + 1, a: a + 1], b.lower[i: i + 1, a: a + 1], b.upper[i: i + 1, a: a + 1],
                    b.sigma[i: i + 1, a: a + 1], b.history[i: i + 1, a: a + 1], b.method)


def _top_region(evidence: dict[str, Any]) -> str | None:
    regions = evidence.get("new_regions") or []
    return str(regions[0]["region"]) if regions else None


def _cost_evidence(proj: pd.DataFrame, whole: pd.DataFrame, days: pd.DatetimeIndex, a: int, b: int,
                   expected: float) -> dict[str, Any]:
    """Which services and regions made the excess, and which regions/resources are new for the project.

    ``proj`` is the alerting series' rows, ``whole`` all the project's rows: a region is new only if no
    service of the project ever used it."""
    if proj.empty:
        return {}
    # masks and single columns, not copies of the history: a monitor's rows can be a good part of 1M
    day = proj["period_start"].dt.floor("D")
    start, end = days[a], days[b] + DAY
    before = (day < start).to_numpy()
    during = proj[((day >= start) & (day < end)).to_numpy()]
    first = proj[(day == start).to_numpy()]
    recent_mask = before & (day >= start - pd.Timedelta(days=7)).to_numpy()
    recent = proj[recent_mask]
    recent_days = max(int(day[recent_mask].nunique()), 1)
    by_svc_now = first.groupby("service", dropna=False)["effective_cost"].sum()
    by_svc_before = recent.groupby("service", dropna=False)["effective_cost"].sum() / recent_days
    diff = (by_svc_now - by_svc_before.reindex(by_svc_now.index).fillna(0.0)).sort_values(ascending=False)
    total_excess = float(diff[diff > 0].sum())
    services = [
        {"service": None if pd.isna(s) else str(s), "cost": float(by_svc_now[s]),
         "excess": float(d), "share": float(d / total_excess) if total_excess > 0 else 0.0}
        for s, d in diff.head(5).items() if d > 0
    ]
    # a miner that starts late in the evening shows up as a small amount the day before the spike:
    # regions first seen in the last few days before it still count as new
    settled = whole["region"][(whole["period_start"] < start - pd.Timedelta(days=NEW_REGION_GRACE_DAYS)).to_numpy()]
    seen_regions = set(settled.dropna().astype(str).unique())
    reg_now = during.groupby("region")["effective_cost"].sum()
    new_regions = [
        {"region": str(r), "cost": float(c)} for r, c in reg_now.sort_values(ascending=False).items()
        if str(r) not in seen_regions and c > 0 and len(settled)
    ]
    by_reg_now = first.groupby("region", dropna=False)["effective_cost"].sum()
    by_reg_before = recent.groupby("region", dropna=False)["effective_cost"].sum() / recent_days
    rdiff = (by_reg_now - by_reg_before.reindex(by_reg_now.index).fillna(0.0)).sort_values(ascending=False)
    regions = [{"region": None if pd.isna(r) else str(r), "cost": float(by_reg_now[r]), "excess": float(d),
                "share": float(d / total_excess) if total_excess > 0 else 0.0}
               for r, d in rdiff.head(3).items() if d > 0]
    ev: dict[str, Any] = {"services": services, "regions": regions, "new_regions": new_regions,
                          # providers restate recent days: an estimated figure may still move
                          "estimated": bool(first["estimated"].any()) if "estimated" in first else False}
    if proj["resource_id"].notna().any() and before.any():
        seen = set(proj["resource_id"][before].dropna().astype(str).unique())
        fresh = during[~during["resource_id"].astype("string").isin(seen) & during["resource_id"].notna()]
        if len(fresh):
            ev["new_resources"] = {"count": int(fresh["resource_id"].nunique()),
                                   "cost": float(fresh["effective_cost"].sum())}
        top = (first.dropna(subset=["resource_id"]).groupby("resource_id")["effective_cost"].sum()
               .sort_values(ascending=False).head(3))
        ev["top_resources"] = [{"resource_id": str(r), "cost": float(c), "new": str(r) not in seen}
                               for r, c in top.items()]
    new_region_cost = float(first[~first["region"].astype("string").isin(seen_regions)]["effective_cost"].sum()) \
        if len(settled) else 0.0
    excess = float(first["effective_cost"].sum()) - (expected if np.isfinite(expected) else 0.0)
    ev["new_region_share_of_excess"] = (min(new_region_cost / excess, 1.0) if excess > 0 else 0.0)
    return ev


# ------------------------------------------------------------------------------------------ mining

def _mining_alerts(episodes: list[cpumod.NodeEpisode], cm: cpumod.CpuMatrix, gross: pd.DataFrame,
                   cost_alerts: list[Alert], meta: pd.DataFrame, s: cpumod.CpuSettings,
                   since: pd.Timestamp, as_of: pd.Timestamp, owner_tags: list[str] | None = None,
                   feats: cpumod.CpuFeatures | None = None) -> list[Alert]:
    """Group node episodes per project into incidents; join compute cost alerts of the same days."""
    out: list[Alert] = []
    by_project: dict[str, list[cpumod.NodeEpisode]] = {}
    for e in sorted(episodes, key=lambda e: (e.project, e.detected_at)):
        by_project.setdefault(e.project, []).append(e)
    for pid, eps in by_project.items():
        groups: list[list[cpumod.NodeEpisode]] = []
        for e in eps:
            if groups and e.start <= max(g.last for g in groups[-1]) + pd.Timedelta(hours=6):
                groups[-1].append(e)
            else:
                groups.append([e])
        for g in groups:
            detected = min(e.detected_at for e in g)
            # a miner first seen before the window that still runs in it is still an incident
            if detected > as_of or max(e.last for e in g) < since:
                continue
            out.append(_mining_alert(pid, g, cm, gross, cost_alerts, meta, s, owner_tags or [], feats))
    return out


def _add_cpu_peaks(alerts: list[Alert], usage: pd.DataFrame) -> None:
    """Each flagged node's ``cpu_peak``: its highest hourly Maximum over the episode, where the provider reads
    one (``cpu_max``: AWS's CloudWatch Maximum next to the Average).  Evidence for the owner only (a miner
    pinned at 100% inside hours whose average looks tame): detection reads the Average, as the labelled
    scenarios it is measured on have no Maximum."""
    if "cpu_max" not in usage.columns or not alerts:
        return
    pids = {a.project for a in alerts}
    sub = usage.loc[usage["project"].isin(pids).to_numpy() & usage["cpu_max"].notna().to_numpy(),
                    ["project", "node", "timestamp", "cpu_max"]]
    if sub.empty:
        return
    by_node = {(str(k[0]), str(k[1])): g for k, g in sub.groupby(["project", "node"], observed=True, sort=False)}
    for a in alerts:
        end = a.evidence.get("ongoing_until") or a.detected_at
        for n in a.evidence.get("nodes") or []:
            g = by_node.get((a.project, str(n.get("node"))))
            if g is None:
                continue
            start = n.get("start") or a.start
            peak = g.loc[((g["timestamp"] >= start) & (g["timestamp"] <= end)).to_numpy(), "cpu_max"].max()
            if pd.notna(peak):
                n["cpu_peak"] = round(float(peak), 1)


def _node_owners(gross: pd.DataFrame, pid: str, nodes: set[str], owner_tags: list[str]) -> dict[str, str]:
    """Node -> the owner its billing rows are labelled with (the first of ``owner_tags`` present), ``""`` for a
    node billed without one; nodes without billing rows (not published yet, or no resource ids) are left out.
    A resource is a node when its id is the node's name or ends with ``/<name>`` (EC2 ids, GCE and Azure VM
    paths)."""
    if gross.empty or not nodes or "tags" not in gross:
        return {}
    rows = gross[(gross["project_id"].astype(str) == pid) & gross["resource_id"].notna()]
    if rows.empty:
        return {}
    leaf = rows["resource_id"].astype(str).str.rsplit("/", n=1).str[-1]
    rows = rows[leaf.isin(nodes).to_numpy()]
    out: dict[str, str] = {}
    for node, tags in zip(leaf[leaf.isin(nodes)], rows["tags"], strict=True):
        if out.get(node):
            continue
        out[str(node)] = next((str(tags[k]) for k in owner_tags if tags.get(k)), "") if isinstance(tags, dict) else ""
    return out


def _surge_costs(related: list[Alert], g: list[cpumod.NodeEpisode], cm: cpumod.CpuMatrix,
                 feats: cpumod.CpuFeatures | None, min_days: int) -> list[tuple[Alert, float]]:
    """The compute cost alerts that a project-wide surge explains (with the project's demand those days):
    the surge's own bill is not evidence of mining beside a CPU signature that is the same surge
    (``cpu.surge_demand``).  They stay cost alerts of their own."""
    out: list[tuple[Alert, float]] = []
    if feats is None:
        return out
    for a in related:
        d = cpumod.surge_demand(cm, feats, g, a.start, a.start + pd.Timedelta(days=a.evidence.get("days", 1)),
                                min_days)
        if d is not None:
            out.append((a, d))
    return out


def _mining_alert(pid: str, g: list[cpumod.NodeEpisode], cm: cpumod.CpuMatrix, gross: pd.DataFrame,
                  cost_alerts: list[Alert], meta: pd.DataFrame, s: cpumod.CpuSettings,
                  owner_tags: list[str] | None = None, feats: cpumod.CpuFeatures | None = None) -> Alert:
    """One incident's mining alert: its nodes, the regions new to the project, the compute cost alerts of
    the same days (joined as evidence unless the project's surge explains them) and a summary; severity and
    score follow the evidence (``costwatch.mining_score``), recomputed when more joins it."""
    g = _one_per_node(g)
    start, last = min(e.start for e in g), max(e.last for e in g)
    known_regions = _known_regions(pid, start, cm, gross)
    nodes = _node_entries(g, known_regions, _node_owners(gross, pid, {e.node for e in g}, owner_tags or []), s)
    new_regions = sorted({e.region for e in g if e.region and known_regions and e.region not in known_regions})
    related = [a for a in cost_alerts if a.project == pid and a.service in (COMPUTE_CATEGORY, None)
               and a.start <= last and a.start + pd.Timedelta(days=a.evidence.get("days", 1)) >= start.floor("D")]
    surge = _surge_costs(related, g, cm, feats, s.min_profile_days)
    related = [a for a in related if all(a is not b for b, _ in surge)]
    row = meta.loc[pid]
    evidence = _mining_evidence(g, nodes, new_regions, start, last)
    if surge:
        evidence["surge"] = [{"day": a.start, "demand": round(d, 2)} for a, d in surge]
    observed, expected, lower, upper, currency = _mining_figures(g, related, evidence, s, str(row["currency"]))
    return rescore(Alert(
        kind="mining_suspected", project=pid, project_name=str(row["project_name"]),
        provider=str(row["provider"]), service=COMPUTE_CATEGORY, region=new_regions[0] if new_regions else
        (g[0].region), start=start, detected_at=min(e.detected_at for e in g), severity="warning",
        observed=observed, expected=expected, lower=lower, upper=upper, currency=currency, score=0.0,
        scope="mining", evidence=evidence, summary=_mining_summary(g, nodes, evidence, new_regions, bool(related)),
    ))


def _one_per_node(g: list[cpumod.NodeEpisode]) -> list[cpumod.NodeEpisode]:
    """One entry per node: its first episode, stretched to the last flagged hour of any later one (a node
    that dips and resumes inside an incident is one flagged node, not two)."""
    per_node: dict[str, cpumod.NodeEpisode] = {}
    for e in sorted(g, key=lambda e: e.detected_at):
        if e.node in per_node:
            per_node[e.node] = replace(per_node[e.node], last=max(per_node[e.node].last, e.last))
        else:
            per_node[e.node] = e
    return list(per_node.values())


def _known_regions(pid: str, start: pd.Timestamp, cm: cpumod.CpuMatrix, gross: pd.DataFrame) -> set[str]:
    """The regions the project ran in before the incident (its nodes first seen before it, its billing before
    that day): a miner's nodes in a region new to the project are evidence of their own."""
    nodes_meta = cm.nodes[cm.nodes["project"].astype(str) == pid]
    old_nodes = nodes_meta[nodes_meta["first_seen"] < start]
    known = set(old_nodes["region"].dropna().astype(str))
    if not gross.empty:
        hist = gross[(gross["project_id"].astype(str) == pid) & (gross["period_start"] < start.floor("D"))]
        known |= set(hist["region"].dropna().astype(str))
    return known


def _node_entries(g: list[cpumod.NodeEpisode], known_regions: set[str], owners: dict[str, str],
                  s: cpumod.CpuSettings) -> list[dict[str, Any]]:
    """The alert's per-node evidence, highest CPU first: what the owner needs to find and judge each node."""
    return [{
        "node": e.node, "cpu": round(e.level, 1), "baseline_cpu": round(e.baseline, 1),
        "flatness_std": round(e.flatness, 2), "signal": e.signal, "new": e.new_node, "region": e.region,
        "new_region": bool(e.region and known_regions and e.region not in known_regions),
        "instance_type": e.instance_type,
        "gpu": cpumod.is_gpu(e.instance_type, s.gpu_instance_prefixes), "cluster": e.cluster,
        "start": e.start, "detected_at": e.detected_at, "owner": owners.get(e.node) or None,
        "billed": e.node in owners,
        "flat_hours": round((e.last - e.start) / HOUR, 1),
        **({"instance_id": e.instance_id} if e.instance_id else {}),
    } for e in sorted(g, key=lambda e: -e.level)]


def _mining_evidence(g: list[cpumod.NodeEpisode], nodes: list[dict[str, Any]], new_regions: list[str],
                     start: pd.Timestamp, last: pd.Timestamp) -> dict[str, Any]:
    """The incident's evidence from its nodes alone: what ``mining_score`` scores it on."""
    pinned = [e for e in g if e.signal == "pinned"]
    return {
        "nodes": nodes, "node_count": len(g), "new_nodes": sum(e.new_node for e in g),
        "pinned_nodes": len(pinned), "plateau_nodes": len(g) - len(pinned),
        "new_regions": new_regions, "gpu_nodes": sum(n["gpu"] for n in nodes),
        "start_hour": start.hour, "ongoing_until": last,
        "clusters": sorted({e.cluster for e in g if e.cluster}),
        "signals": "CPU flat at " + ", ".join(sorted({f"{round(e.level)}%" for e in g})[:5]),
        "flat_hours": round(max((e.last - e.start) / HOUR for e in g), 1),
    }


def _mining_figures(g: list[cpumod.NodeEpisode], related: list[Alert], evidence: dict[str, Any],
                    s: cpumod.CpuSettings, project_currency: str) -> tuple[float, float, float, float, str]:
    """The alert's observed, expected, lower, upper and currency (``evidence["metric"]`` says which): the
    earliest related cost alert's daily cost where the spend is out of band too (that alert joins the
    evidence as ``cost`` and is marked as explained by mining), else the nodes' CPU against their usual."""
    if related:
        c = min(related, key=lambda a: a.start)
        evidence["cost"] = {"service": c.service or "total", "day": c.start, "observed": c.observed,
                            "expected": c.expected, "upper": c.upper, "fingerprint": c.fingerprint,
                            "new_regions": c.evidence.get("new_regions", [])}
        c.evidence["explained_by"] = "mining_suspected"
        evidence["metric"] = "daily_cost"
        return c.observed, c.expected, c.lower, c.upper, c.currency  # that cost series' figures, in its currency
    expected = float(np.mean([e.baseline for e in g]))
    evidence["metric"] = "cpu_percent"
    return (float(np.mean([e.level for e in g])), expected, 0.0, float(min(100.0, expected + s.min_excess)),
            project_currency)


def _mining_summary(g: list[cpumod.NodeEpisode], nodes: list[dict[str, Any]], evidence: dict[str, Any],
                    new_regions: list[str], cost_out_of_band: bool) -> str:
    """One line an owner reads first: how many nodes, and each aggravating fact the evidence holds."""
    parts = [f"{len(g)} node(s) flat at high CPU"]
    if evidence["new_nodes"]:
        parts.append(f"{evidence['new_nodes']} new")
    if new_regions:
        parts.append("new region " + ", ".join(new_regions))
    if evidence["gpu_nodes"]:
        parts.append(f"{evidence['gpu_nodes']} GPU")
    if cost_out_of_band:
        parts.append("compute spend out of band")
    owned = sorted({n["owner"] for n in nodes if n["new"] and n["owner"]})
    if owned:
        parts.append("new node(s) labelled owner " + ", ".join(owned)[:80])
    return "; ".join(parts)


def _join_findings(findings: pd.DataFrame, mining: list[Alert], meta: pd.DataFrame, since: pd.Timestamp,
                   as_of: pd.Timestamp) -> list[Alert]:
    """Attach findings to the project's CPU/cost mining alert of the same days; raise the rest on their own.

    A finding is the cloud's own word that a miner runs (DNS to a pool, a miner binary executing), so it
    needs no band: it is seen when GuardDuty first saw the activity, as long as that is already past."""
    f = findings[(findings["first_seen"] <= as_of)].copy()
    f["project"] = f["project"].astype(str)
    out = list(mining)
    for pid, group in f.groupby("project"):
        pid = str(pid)
        # an EC2 finding has no cluster, an EKS one may have no instance: frame NAs become None here, as the
        # records are attached to alerts that already exist
        records = plain([{"type": r.type, "severity": r.severity, "title": r.title, "node": r.node,
                          "region": r.region, "cluster": r.cluster, "first_seen": r.first_seen,
                          "finding_id": r.finding_id} for r in group.sort_values("first_seen").itertuples()])
        hits = [a for a in out if a.project == pid and a.start - DAY <= group["last_seen"].max()
                and a.detected_at + DAY * 14 >= group["first_seen"].min()]
        if hits:
            for a in hits:
                a.evidence["guardduty"] = records
                rescore(a)
            continue
        first = group["first_seen"].min()
        if first < since:
            continue
        row = meta.loc[pid] if pid in meta.index else None
        nodes = sorted({str(n) for n in group["node"].dropna()})
        regions = sorted({str(r) for r in group["region"].dropna()})
        out.append(rescore(Alert(
            kind="mining_suspected", project=pid,
            project_name=str(row["project_name"]) if row is not None else pid,
            provider=str(group["provider"].iloc[0]), service=COMPUTE_CATEGORY, region=regions[0] if regions else None,
            start=first, detected_at=first, severity="critical" if group["severity"].max() >= 7 else "high",
            observed=float(len(group)), expected=0.0, lower=0.0, upper=0.0,
            currency=str(row["currency"]) if row is not None else "USD", score=float(group["severity"].max() / 10),
            scope="mining",
            evidence={"metric": "findings", "source": "cloud security findings", "guardduty": records,
                      "finding_nodes": nodes, "regions": regions},
            summary=f"{len(group)} crypto-mining finding(s): {', '.join(sorted(set(group['type'])))[:200]}",
        )))
    return out


def _cost_only_mining(cost_alerts: list[Alert], projects_with_cpu: set[str], covered: set[str],
                      ) -> list[Alert]:
    """Without CPU data, compute spend that jumps mostly in a region the project never used is the
    mining signature billing alone can show."""
    out = []
    for a in cost_alerts:
        if a.project in covered or a.project in projects_with_cpu or a.service != COMPUTE_CATEGORY:
            continue
        if not a.evidence.get("new_regions") or a.evidence.get("new_region_share_of_excess", 0.0) < 0.3:
            continue
        ev = dict(a.evidence)
        ev["source"] = "cost only (no CPU data for this project)"
        ev["cost_alert"] = a.fingerprint
        a.evidence["explained_by"] = "mining_suspected"
        out.append(rescore(Alert(
            kind="mining_suspected", project=a.project, project_name=a.project_name, provider=a.provider,
            service=a.service, region=a.region, start=a.start, detected_at=a.detected_at, severity="high",
            observed=a.observed, expected=a.expected, lower=a.lower, upper=a.upper, currency=a.currency,
            score=a.score, scope="mining", evidence=ev,
            summary=f"compute spend out of band in new region(s) {', '.join(r['region'] for r in ev['new_regions'])}",
        )))
        covered.add(a.project)
    return out


# ------------------------------------------------------------------------------------------ thresholds

def _threshold_alerts(totals: SeriesBands, cfg: Config, meta: pd.DataFrame, since: pd.Timestamp,
                      delay: pd.Timedelta) -> list[Alert]:
    """Days over a project's daily threshold, on its series in the threshold's currency only."""
    out: list[Alert] = []
    m = totals.matrix
    limits = {pid: pc.daily_threshold for pid, pc in cfg.projects.items() if pc.daily_threshold is not None}
    if not limits or not len(m.keys):
        return out
    pids = m.keys["project_id"].astype(str)
    threshold = pids.map(limits).to_numpy(dtype=float)
    same_currency = m.keys["currency"].astype(str).to_numpy() == \
        pids.map(meta["limit_currency"]).astype(str).to_numpy()
    for i in np.flatnonzero(~np.isnan(threshold) & same_currency):
        pid, limit = str(pids.iat[i]), float(threshold[i])
        over = np.nan_to_num(m.values[i]) > limit
        for a, b in _episodes(over):
            detected = m.days[a] + DAY + delay
            if detected < since:
                continue
            obs = float(m.values[i, a])
            row = meta.loc[pid]
            out.append(Alert(
                kind="threshold_exceeded", project=pid, project_name=str(row["project_name"]),
                provider=str(row["provider"]), start=m.days[a], detected_at=detected,
                severity="high" if obs > 2 * limit else "warning", observed=obs,
                expected=float(totals.bands.expected[i, a]), lower=0.0, upper=limit,
                currency=str(row["limit_currency"]), score=obs / limit, scope="threshold:daily",
                evidence={"metric": "daily_cost", "threshold": limit, "days": int(b - a + 1),
                          "peak": float(np.nanmax(m.values[i, a: b + 1]))},
                summary=f"daily spend {obs:,.2f} {row['limit_currency']} over the threshold {limit:,.2f}",
            ))
    return out


# ------------------------------------------------------------------------------------- usage bands

# The usage scorer's windows (chosen on 5-minute rows) translated to hourly CPU: two weeks of history, 2 h level
# window, 4 h spread window and step-size window, a day of stillness (range), 24-row days for the time-of-day
# view (calibrated), ~12 h between onsets after 2 quiet hours, two days of history before a node is scored.
HOURLY_USAGE = UsageScoreParams(history=336, min_history=48, level_window=2, spread_window=4, rough_window=4,
                                still_min=24, refractory=12, quiet=2, season=24)


def _usage_anomalies(cm: cpumod.CpuMatrix, since: pd.Timestamp, as_of: pd.Timestamp, method: str = "calibrated",
                     limit: int = 10) -> dict[str, list[dict[str, Any]]]:
    """Nodes whose CPU left its own band (any direction, any shape) in the window, per project.

    Not an alert: a usage departure alone is often a deploy or a batch job.  It is the context an owner
    reads next to the mining and cost alerts, scored by the same code as ``bench/nab.py`` (only the departures:
    the same onsets and scores, computed where a statistic left its range)."""
    params = HOURLY_USAGE if method == HOURLY_USAGE.method else replace(HOURLY_USAGE, method=method)
    scores = flagged_scores(cm.values, params=params)
    onsets = episode_onsets(scores, refractory=params.refractory, quiet=params.quiet)
    in_win = np.asarray((cm.hours >= since) & (cm.hours + HOUR <= as_of))
    rows, cols = np.nonzero(onsets & in_win[None, :])
    out: dict[str, list[dict[str, Any]]] = {}
    names, projects = cm.nodes["node"].to_numpy(), cm.nodes["project"].to_numpy()  # not a row lookup per onset
    for r, c in sorted(zip(rows.tolist(), cols.tolist(), strict=True), key=lambda rc: -scores[rc[0], rc[1]]):
        bucket = out.setdefault(str(projects[r]), [])
        if len(bucket) < limit:
            bucket.append({"node": str(names[r]), "at": cm.hours[c], "score": float(scores[r, c]),
                           "cpu": float(cm.values[r, c])})
    return out


# ---------------------------------------------------------------------------------------- summaries

def _project_summaries(costs: pd.DataFrame, totals: SeriesBands, cm: cpumod.CpuMatrix | None,
                       cpu_features: cpumod.CpuFeatures | None, alerts: list[Alert], meta: pd.DataFrame,
                       pairs: pd.Series, usage_flags: dict[str, list[dict[str, Any]]], cfg: Config,
                       since: pd.Timestamp, as_of: pd.Timestamp,
                       month_forecasts: dict[tuple[str, str], budgets.Forecast]) -> list[dict[str, Any]]:
    """One row per cost series: a project billed in two currencies has two rows, each with its own figures
    in its own currency (CPU figures go on the main currency's row), and a project seen only in CPU data
    has one.  Thresholds and budgets show on the row of the currency they are configured in, and so does
    the budget's own forecast (``month_forecasts``); other rows get the cheap run-rate forecast."""
    out = []
    row_of = _matrix_rows(totals.matrix)
    hist_needed = cfg.detection.history_days
    credits, nets = _series_money(costs, since)
    by_project: dict[str, list[str]] = (
        pairs.reset_index().groupby("project_id", sort=False)["currency"].agg(list).to_dict() if len(pairs) else {})
    series = _summary_series(meta, by_project)
    kinds_of = _alert_kinds(alerts, set(series), meta)
    for pid, cur in series:
        row = meta.loc[pid]
        is_main = cur == str(row["currency"])
        pc: ProjectConfig | None = cfg.projects.get(pid)
        p: dict[str, Any] = {"project": pid, "project_name": str(row["project_name"]),
                             "provider": str(row["provider"]), "currency": cur,
                             "owner": pc.owner if pc else None}
        if int(row["n_currencies"]) > 1:
            p["currencies"] = by_project[pid]
        p.update(_band_fields(totals, row_of.get((pid, cur)), since, as_of, hist_needed))
        p.setdefault("band_status", "no cost data")
        p.update(_money_fields(credits, nets.get((pid, cur)), month_forecasts.get((pid, cur)), (pid, cur)))
        if pc:
            p.update(_limit_fields(pc, cur, str(row["limit_currency"])))
        if is_main:
            p.update(_cpu_fields(cm, cpu_features, pid))
        p["alerts"] = kinds_of.get((pid, cur), {})
        if is_main and pid in usage_flags:
            p["usage_anomalies"] = usage_flags[pid]
        out.append(p)
    out.sort(key=lambda p: (-sum(p["alerts"].values()), -(p.get("spend") or 0.0)))
    return out


def _matrix_rows(m: bl.DailyMatrix) -> dict[tuple[str, str], int]:
    """(project, currency) -> row of the totals matrix, built once rather than searched per summary row."""
    if not len(m.keys):
        return {}
    return {(str(pid), str(cur)): i
            for i, (pid, cur) in enumerate(zip(m.keys["project_id"], m.keys["currency"], strict=True))}


def _summary_series(meta: pd.DataFrame, by_project: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(project, currency) of every summary row, each project's main currency first: the main row is the one
    CPU figures and alerts without a series of their own go on."""
    series: list[tuple[str, str]] = []
    for pid, main in zip(meta.index.astype(str), meta["currency"].astype(str), strict=True):
        series += [(pid, main), *((pid, str(c)) for c in by_project.get(pid, []) if c != main)]
    return series


def _alert_kinds(alerts: list[Alert], known: set[tuple[str, str]], meta: pd.DataFrame,
                 ) -> dict[tuple[str, str], dict[str, int]]:
    """Alert counts by kind per series; an alert on no cost series (a miner, a project seen only in CPU
    data) counts on its project's main row, so no alert is left out of the summary."""
    kinds_of: dict[tuple[str, str], dict[str, int]] = {}
    for a in alerts:
        key = (a.project, a.currency)
        if key not in known and a.project in meta.index:
            key = (a.project, str(meta.at[a.project, "currency"]))
        kinds = kinds_of.setdefault(key, {})
        kinds[a.kind] = kinds.get(a.kind, 0) + 1
    return kinds_of


def _band_fields(totals: SeriesBands, i: int | None, since: pd.Timestamp, as_of: pd.Timestamp,
                 hist_needed: int) -> dict[str, Any]:
    """Spend and missing days in the window, and the last day against its band; a band learned from too
    little history is not shown, as the day was judged by plain thresholds."""
    if i is None:
        return {}
    m = totals.matrix
    vals = m.values[i]
    valid = np.flatnonzero(~np.isnan(vals))
    last = int(valid[-1]) if valid.size else None
    in_win = (m.days >= since.floor("D")) & (m.days + DAY <= as_of)
    p: dict[str, Any] = {"spend": float(np.nansum(vals[in_win])), "days_missing": int(np.isnan(vals[in_win]).sum())}
    if last is not None:
        hist = int(totals.bands.history[i, last])
        p.update({
            "last_day": m.days[last], "last_day_cost": float(vals[last]),
            "expected": _f(totals.bands.expected[i, last]) if hist >= hist_needed else None,
            "lower": _f(totals.bands.lower[i, last]) if hist >= hist_needed else None,
            "upper": _f(totals.bands.upper[i, last]) if hist >= hist_needed else None,
            "history_days": hist,
            "band_status": (f"{totals.bands.method} band" if hist >= hist_needed else
                            f"short history: {hist} of {hist_needed} days, plain thresholds"),
        })
    return p


def _money_fields(credits: pd.Series, net: pd.Series | None, forecast: budgets.Forecast | None,
                  key: tuple[str, str]) -> dict[str, Any]:
    """Credits and the month's forecast of a series with cost rows: the budget's own forecast where the
    series has one, else the cheap run-rate one."""
    if net is None:
        return {}
    return {"credits": float(credits.get(key, 0.0)), **_forecast_fields(forecast or _run_rate_forecast(net))}


def _limit_fields(pc: ProjectConfig, cur: str, limit_currency: str) -> dict[str, Any]:
    """Budget and threshold on the row of the currency they are compared in; other rows say which currency
    the limits are in, so an owner does not read them as uncompared."""
    compared = cur == limit_currency
    out: dict[str, Any] = {"monthly_budget": pc.monthly_budget if compared else None,
                           "daily_threshold": pc.daily_threshold if compared else None}
    if not compared and (pc.monthly_budget is not None or pc.daily_threshold is not None):
        out["limits_currency"] = limit_currency  # this series was not compared with them
    return out


def _cpu_fields(cm: cpumod.CpuMatrix | None, cpu_features: cpumod.CpuFeatures | None, pid: str) -> dict[str, Any]:
    """The project's last 24 hours of CPU next to its usual level for the same hours, so a reader sees at a
    glance whether its nodes are busier than they normally are."""
    if cm is None or not len(cm.nodes):
        return {}
    sel = (cm.nodes["project"].astype(str) == pid).to_numpy()
    if not sel.any():
        return {}
    recent = cm.values[sel][:, -24:]
    out: dict[str, Any] = {}
    with _quiet():
        out["nodes"] = int(sel.sum())
        out["cpu_mean_24h"] = _f(np.nanmean(recent))
        if cpu_features is not None:  # the project's usual CPU for the same hours
            usual = cpu_features.profile[sel][:, -24:]
            out["cpu_expected_24h"] = _f(float(np.nanmean(np.where(np.isnan(recent), np.nan, usual))))
        out["cpu_max_node_24h"] = _f(np.nanmax(np.nanmean(recent, axis=1)))
    return out


def _series_money(costs: pd.DataFrame, since: pd.Timestamp,
                  ) -> tuple[pd.Series, dict[tuple[str, str], pd.Series]]:
    """Per (project, currency): credits in the window, and net spend per day (all charges), by one groupby
    each over the whole frame."""
    if costs.empty:
        return pd.Series(dtype="float64"), {}
    pid, cur = costs["project_id"].astype(str), costs["currency"].astype(str)
    codes, kinds = pd.factorize(costs["charge_category"].astype("string"))  # lower-cased once per category
    kind = np.append(pd.Series(kinds, dtype="string").str.lower().isin(["credit", "adjustment"]).to_numpy(bool),
                     False)[codes]
    credit = ((costs["period_start"] >= since) & (costs["effective_cost"] < 0)).to_numpy(dtype=bool) & kind
    credits = costs["effective_cost"][credit].groupby([pid[credit], cur[credit]]).sum()
    daily = costs["effective_cost"].groupby([pid, cur, costs["period_start"].dt.floor("D")]).sum()
    nets = {(str(k[0]), str(k[1])): g.droplevel([0, 1]) for k, g in daily.groupby(level=[0, 1], sort=False)}
    return credits, nets


def _run_rate_forecast(net: pd.Series) -> budgets.Forecast:
    day = net.index.max()
    return budgets.forecasts(net, [day], method="run_rate")[day]


def _forecast_fields(f: budgets.Forecast) -> dict[str, Any]:
    return {"month_to_date": f.month_to_date, "forecast": f.forecast, "forecast_low": f.low,
            "forecast_high": f.high, "forecast_method": f.method}


def _f(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)
