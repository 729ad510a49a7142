"""Budget steps and the month-end forecast interval.

The run flow goes through the real parts: a FOCUS export read by the files provider, ``run_once`` with a
SQLite state, once a day (and retried) across a month into the next, with a recording notifier.  The forecast
is checked against statsmodels' own forecast and simulation, on synthetic series whose truth is known, and
without statsmodels (its import made to fail), as in the small Lambda build.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from costwatch import budgets
from costwatch.config import Config, ProjectConfig, load_config, parse_config
from costwatch.detect import detect
from costwatch.errors import ConfigError
from costwatch.model import normalize_costs
from costwatch.notify import Delivery, Notification
from costwatch.run import run_once
from costwatch.state import SqliteStore

DAY = pd.Timedelta(days=1)
DAYS = pd.date_range("2026-08-01", "2026-12-31", freq="D", tz="UTC")
WEEK = np.array([1.0, 1.05, 1.08, 1.05, 1.0, 0.75, 0.7])
STEPS = [50.0, 75.0, 90.0, 100.0]


def spend(seed: int = 1, level: float = 100.0, noise: float = 0.04) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return level * WEEK[DAYS.dayofweek.to_numpy()] * np.exp(rng.normal(0, noise, len(DAYS)))


def series(vals: np.ndarray, days: pd.DatetimeIndex = DAYS) -> pd.Series:
    return pd.Series(vals, index=days)


def write_focus(path: Path, vals: np.ndarray, project: str = "p1") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ChargePeriodStart", "ChargePeriodEnd", "BilledCost", "EffectiveCost", "BillingCurrency",
                    "ChargeCategory", "ProviderName", "SubAccountId", "SubAccountName", "ServiceCategory",
                    "ServiceName", "RegionId"])
        for d, v in zip(DAYS, vals, strict=True):
            w.writerow([d.isoformat(), (d + DAY).isoformat(), f"{v:.6f}", f"{v:.6f}", "USD", "Usage", "AWS",
                        project, f"name-{project}", "Compute", "svc-compute", "eu-west-1"])
    return path


def frame(vals: np.ndarray, project: str = "p1") -> pd.DataFrame:
    rows = [{"period_start": d, "period_hours": 24.0, "provider": "aws", "project_id": project,
             "project_name": f"name-{project}", "service": "svc", "service_category": "Compute",
             "region": "eu-west-1", "charge_category": "Usage", "billed_cost": v, "effective_cost": v,
             "currency": "USD"} for d, v in zip(DAYS, vals, strict=True)]
    return normalize_costs(pd.DataFrame(rows))


class Recorder:
    """A notifier that accepts everything and keeps what it was given."""

    name = "stdout"

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def notify(self, notifications: list[Notification]) -> list[Delivery]:
        self.sent += notifications
        return [Delivery(ok=True, ref=n.id) for n in notifications]


# ------------------------------------------------------------------------------------- the run flow

@pytest.fixture(scope="module")
def told(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Notification], list[dict[str, Any]]]:
    """Daily runs (each retried) from 28 October to 4 December over a project with a 3,200 budget and steps
    at 50/75/90/100 %: November has a four-day surge that pushes it over; December is an ordinary month."""
    tmp = tmp_path_factory.mktemp("budget-run")
    vals = spend()
    surge = (DAYS >= "2026-11-09") & (DAYS < "2026-11-13")
    vals[surge] += 250.0
    doc = {"providers": [{"type": "files", "costs": str(write_focus(tmp / "costs.csv", vals))}],
           "state": {"path": str(tmp / "state.db")}, "alerting": {"repeat_interval": "4h"},
           "projects": {"p1": {"monthly_budget": 3200, "budget_alerts": STEPS}}}
    (tmp / "c.yaml").write_text(yaml.safe_dump(doc))
    cfg = load_config(tmp / "c.yaml")
    rec = Recorder()
    retried = {"2026-11-01", "2026-11-10", "2026-12-01"}
    for day in pd.date_range("2026-10-28", "2026-12-04", freq="D", tz="UTC"):
        at = day + pd.Timedelta(hours=6)
        for _ in range(2 if str(day.date()) in retried else 1):  # a retried run decides the same, sends nothing
            run_once(cfg, now=at, as_of=at, notifiers={"stdout": rec}, charts=False)
    store = SqliteStore(tmp / "state.db")
    try:
        docs = [r.doc for r in store.scan("incident")]
    finally:
        store.close()
    return [n for n in rec.sent if "budget" in n.labels], docs


def _steps_told(sent: list[Notification], month: str) -> list[tuple[float, str]]:
    """(step, basis) of each alert the first time a message carried it, in order."""
    seen: set[str] = set()
    out = []
    for n in sent:
        if n.labels.get("budget") != month:
            continue
        for a in n.alerts:
            if a["fingerprint"] not in seen:
                seen.add(a["fingerprint"])
                out.append((a["evidence"]["step_pct"], a["evidence"]["basis"]))
    return out


def test_each_step_is_told_once_per_month(told: tuple[list[Notification], list[dict[str, Any]]]) -> None:
    sent, _ = told
    for month in ("2026-11", "2026-12"):
        steps = _steps_told(sent, month)
        assert len(steps) == len(set(steps)), steps
        # every message of the month tells something new: no repeats, no re-sends of a step already told
        msgs = [n for n in sent if n.labels.get("budget") == month]
        seen: set[str] = set()
        for n in msgs:
            new = {a["fingerprint"] for a in n.alerts} - seen
            assert new, f"{n.event} #{n.sequence} of {month} told nothing new"
            seen |= new
        assert {n.event for n in msgs} <= {"firing", "updated"}
        assert msgs[0].event == "firing"
    november = _steps_told(sent, "2026-11")
    assert {s for s, basis in november if basis == "actual"} == set(STEPS)  # the surge month ends over
    # the next month starts from scratch: its steps are told again
    december = _steps_told(sent, "2026-12")
    assert (50.0, "forecast") in december and (50.0, "forecast") in november


def test_crossed_steps_are_never_resolved(told: tuple[list[Notification], list[dict[str, Any]]]) -> None:
    sent, docs = told
    assert not [n for n in sent if n.event in ("resolved", "repeat")]
    november = [d for d in docs if d["labels"].get("budget") == "2026-11"]
    assert len(november) == 1 and november[0]["status"] == "resolved"  # closed at month end, silently
    december = [d for d in docs if d["labels"].get("budget") == "2026-12"]
    assert len(december) == 1 and december[0]["status"] == "open"


def test_a_forecast_step_told_before_its_actual_crossing_is_superseded_once(
        told: tuple[list[Notification], list[dict[str, Any]]]) -> None:
    sent, _ = told
    november = _steps_told(sent, "2026-11")
    forecast_first = [s for s, basis in november if basis == "forecast"]
    assert forecast_first, november  # the surge shows in the forecast before it shows in the spend
    for step in forecast_first:
        assert november.index((step, "forecast")) < november.index((step, "actual"))


def test_actual_wins_a_tie_with_forecast() -> None:
    """A one-day bill that passes the step by itself: the spend is over, saying "the forecast is" too adds
    nothing."""
    vals = spend()
    vals[DAYS == "2026-11-12"] = 3500.0
    cfg = Config(projects={"p1": ProjectConfig(monthly_budget=8000, budget_alerts=[50])})
    det = detect(frame(vals), None, cfg, as_of=pd.Timestamp("2026-11-14", tz="UTC"), since=pd.Timedelta(days=5))
    (b,) = [a for a in det.alerts if a.kind == "budget_forecast_exceeded"]
    assert b.evidence["basis"] == "actual" and b.start == pd.Timestamp("2026-11-01", tz="UTC")
    assert b.detected_at == pd.Timestamp("2026-11-13", tz="UTC") and b.severity == "warning"
    assert b.scope == "budget:2026-11:50:actual"


def test_alert_text_evidence_and_report_rows() -> None:
    vals = spend()
    cfg = Config(projects={"p1": ProjectConfig(monthly_budget=2500)})  # default steps: [100]
    det = detect(frame(vals), None, cfg, as_of=pd.Timestamp("2026-11-16", tz="UTC"), since=pd.Timedelta(days=3))
    (b,) = [a for a in det.alerts if a.kind == "budget_forecast_exceeded"]
    ev = b.evidence
    assert ev["basis"] == "forecast" and ev["method"] == "ets" and ev["step_pct"] == 100.0
    assert ev["forecast_low"] <= ev["forecast"] <= ev["forecast_high"] and ev["forecast_low"] >= 2500
    assert f"forecast {ev['forecast']:,.0f} (80 %: {ev['forecast_low']:,.0f}–{ev['forecast_high']:,.0f})" in b.summary
    (row,) = [p for p in det.projects if p["project"] == "p1"]
    assert row["forecast_low"] < row["forecast"] < row["forecast_high"] and row["forecast_method"] == "ets"


# ------------------------------------------------------------------------------------------ forecasts

def test_ets_matches_statsmodels_forecast_and_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sum over the remaining days: its mean is statsmodels' own forecast from that day (with no error
    held back, the filter is statsmodels'), its spread that of statsmodels' simulated paths (the days' errors
    are correlated, so variances do not add)."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    monkeypatch.setattr(budgets, "CLIP_Z", np.inf)
    net = series(spend(seed=3, noise=0.08))
    day = pd.Timestamp("2026-11-12", tz="UTC")
    f = budgets.forecasts(net, [day])[day]
    assert f.method == "ets" and f.days_left == 18
    y = net[net.index < "2026-11-01"].iloc[-budgets.FIT_DAYS:]
    fit = ETSModel(budgets.despike(y.to_numpy()), bounds=dict(budgets.ETS_BOUNDS), **budgets.ETS_SPEC).fit(
        disp=False)
    upto = np.r_[budgets.despike(y.to_numpy()), net[(net.index >= "2026-11-01") & (net.index <= day)].to_numpy()]
    res = ETSModel(upto, **budgets.ETS_SPEC).smooth(fit.params)
    mtd = float(net[(net.index >= "2026-11-01") & (net.index <= day)].sum())
    assert f.forecast == pytest.approx(mtd + float(np.sum(res.forecast(18))), rel=1e-9)
    paths = np.asarray(res.simulate(18, repetitions=20_000, anchor="end", rng=np.random.default_rng(7))).sum(axis=0)
    sd = (f.high - f.forecast) / budgets.Z / budgets.INTERVAL_SCALE
    assert sd == pytest.approx(float(paths.std()), rel=0.05)


def test_interval_contains_the_truth_and_widens_with_noise() -> None:
    day = pd.Timestamp("2026-11-15", tz="UTC")
    hits, widths = 0, {0.03: [], 0.12: []}  # type: ignore[var-annotated]
    for seed in range(30):
        for noise, w in widths.items():
            vals = spend(seed=seed, noise=noise)
            f = budgets.forecasts(series(vals), [day])[day]
            w.append(f.high - f.low)
            if noise == 0.03:
                truth = float(vals[(DAYS >= "2026-11-01") & (DAYS < "2026-12-01")].sum())
                hits += f.low <= truth <= f.high
    assert 18 <= hits <= 30  # an 80 % interval: most months, not all by luck
    assert np.median(widths[0.12]) > 2.5 * np.median(widths[0.03])


def test_a_past_spike_does_not_widen_the_interval() -> None:
    day = pd.Timestamp("2026-11-15", tz="UTC")
    vals = spend(seed=4)
    spiked = vals.copy()
    spiked[DAYS == "2026-10-07"] *= 8  # a one-day incident in the fitting history
    clean, noisy = (budgets.forecasts(series(v), [day])[day] for v in (vals, spiked))
    assert noisy.high - noisy.low < 1.2 * (clean.high - clean.low)


def test_short_history_uses_the_run_rate() -> None:
    net = series(spend())[DAYS >= "2026-10-20"]
    day = pd.Timestamp("2026-11-20", tz="UTC")
    f = budgets.forecasts(net, [day])[day]
    assert f.method == "run_rate" and "history" in f.note
    mtd, point, left, _ = budgets.month_forecast(net, day)
    assert (f.month_to_date, f.days_left) == pytest.approx((mtd, left)) and f.forecast == pytest.approx(point)


def test_without_statsmodels_the_run_rate_gives_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """The small Lambda build: statsmodels cannot be imported, alerts still come, from the run rate and an
    interval made of its own past errors."""
    for name in [m for m in sys.modules if m == "statsmodels" or m.startswith("statsmodels.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "statsmodels", None)
    vals = spend(noise=0.1)
    net, day = series(vals), pd.Timestamp("2026-11-15", tz="UTC")
    f = budgets.forecasts(net, [day])[day]
    assert f.method == "run_rate" and "statsmodels" in f.note
    assert f.low < f.forecast < f.high
    assert f.forecast == pytest.approx(budgets.month_forecast(net, day)[1])
    cfg = Config(projects={"p1": ProjectConfig(monthly_budget=2600, budget_alerts=[90, 100])})
    det = detect(frame(vals), None, cfg, as_of=pd.Timestamp("2026-11-16", tz="UTC"), since=pd.Timedelta(days=3))
    found = [a for a in det.alerts if a.kind == "budget_forecast_exceeded"]
    assert found and all(a.evidence["method"] == "run_rate" for a in found)
    assert all(a.evidence["forecast_low"] >= a.expected for a in found if a.evidence["basis"] == "forecast")


# --------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize(("text", "where", "what"), [
    ("projects:\n  p:\n    monthly_budget: 10\n    budget_alerts: [50, 90, 75]\n", "line 4: projects.p.budget_alerts",
     "increasing order"),
    ("projects:\n  p:\n    budget_alerts: [50, 50]\n", "line 3: projects.p.budget_alerts", "each once"),
    ("projects:\n  p:\n    budget_alerts: [0, 50]\n", "line 3: projects.p.budget_alerts", "above 0"),
    ("detection:\n  budget_alerts: [100, 1200]\n", "line 2: detection.budget_alerts", "at most 1000"),
    ("detection:\n  budget_alerts: []\n", "line 2: detection.budget_alerts", "at least one step"),
])
def test_budget_steps_are_validated(text: str, where: str, what: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.yaml")
    assert f"c.yaml, {where}: " in str(e.value) and what in str(e.value)


def test_budget_steps_default_and_override() -> None:
    cfg = parse_config("detection:\n  budget_alerts: [80, 100]\nprojects:\n  a: {monthly_budget: 5}\n"
                       "  b: {monthly_budget: 5, budget_alerts: [50, 100, 150]}\n")
    assert budgets.steps_of(cfg.projects["a"], cfg.detection) == [80.0, 100.0]
    assert budgets.steps_of(cfg.projects["b"], cfg.detection) == [50.0, 100.0, 150.0]
    assert Config().detection.budget_alerts == [100.0]


def test_a_misspelt_steps_key_is_named_by_its_shape() -> None:
    """``budget: 10`` is a budget, ``budget: [50, 100]`` is steps: the suggestion follows the value."""
    for text, meant in (("budget: 10", "monthly_budget"), ("budget: [50, 100]", "budget_alerts"),
                        ("budget_alert: [50]", "budget_alerts")):
        with pytest.raises(ConfigError) as e:
            parse_config(f"projects:\n  p:\n    {text}\n", "c.yaml")
        assert f"c.yaml, line 3: projects.p.{text.split(':')[0]}: unknown key (did you mean '{meant}'?)" in str(e.value)
