"""Mixed currencies are never summed: the currency is part of every cost series' identity.

A project billed in USD and EUR (two billing accounts, or a currency change) is two series, each with its own
band, figures and currency label; thresholds and budgets are compared with the series in their configured
currency only; report totals are per currency.  Everything goes through the public path: a FOCUS export read by
the files provider (or a frame through ``normalize_costs``), ``detect``, then ``report.render``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from costwatch.alerts import fingerprint
from costwatch.config import Config, ProjectConfig
from costwatch.detect import Detection, detect
from costwatch.model import normalize_costs
from costwatch.providers.files import FilesProvider
from costwatch.report import currency_totals, render

DAYS = pd.date_range("2026-09-01", periods=70, freq="D", tz="UTC")
AS_OF = DAYS[-1] + pd.Timedelta(days=1)
SINCE = DAYS[-20]
WEEK = np.array([1.0, 1.04, 1.08, 1.05, 1.0, 0.7, 0.65])
SPIKE = len(DAYS) - 8
FOCUS_HEADER = ["ChargePeriodStart", "ChargePeriodEnd", "BilledCost", "EffectiveCost", "BillingCurrency",
                "ChargeCategory", "ProviderName", "SubAccountId", "SubAccountName", "ServiceCategory", "ServiceName",
                "RegionId"]


def steady(level: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return level * WEEK[DAYS.dayofweek.to_numpy()] * np.exp(rng.normal(0, 0.03, len(DAYS)))


def write_focus(path: Path, series: dict[tuple[str, str, str], np.ndarray]) -> Path:
    """A daily FOCUS export: one row per (project, currency, service category) and day."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(FOCUS_HEADER)
        for (project, currency, category), vals in series.items():
            for d, v in zip(DAYS, vals, strict=True):
                w.writerow([d.isoformat(), (d + pd.Timedelta(days=1)).isoformat(), f"{v:.6f}", f"{v:.6f}", currency,
                            "Usage", "AWS", project, f"name-{project}", category, f"svc-{category}", "eu-west-1"])
    return path


def load(tmp_path: Path, series: dict[tuple[str, str, str], np.ndarray]) -> pd.DataFrame:
    costs = FilesProvider(costs=write_focus(tmp_path / "focus.csv", series), engine="pandas").fetch_costs()
    assert set(costs["currency"]) == {c for _, c, _ in series}  # the loader keeps every currency
    return costs


def frame(series: dict[tuple[str, str, str], np.ndarray]) -> pd.DataFrame:
    rows = [{"period_start": d, "period_hours": 24.0, "provider": "aws", "project_id": project,
             "project_name": f"name-{project}", "service": f"svc-{category}", "service_category": category,
             "region": "eu-west-1", "charge_category": "Usage", "billed_cost": v, "effective_cost": v,
             "currency": currency}
            for (project, currency, category), vals in series.items() for d, v in zip(DAYS, vals, strict=True)]
    return normalize_costs(pd.DataFrame(rows))


def rows_of(det: Detection, project: str) -> dict[str, dict[str, Any]]:
    rows = [p for p in det.projects if p["project"] == project]
    by_currency = {str(p["currency"]): p for p in rows}
    assert len(by_currency) == len(rows)  # one row per currency, never two for the same one
    return by_currency


def numbers(doc: object) -> list[float]:
    """Every number anywhere in a JSON document."""
    if isinstance(doc, dict):
        return [x for v in doc.values() for x in numbers(v)]
    if isinstance(doc, list):
        return [x for v in doc for x in numbers(v)]
    return [float(doc)] if isinstance(doc, int | float) and not isinstance(doc, bool) else []


# ------------------------------------------------------------------------------------ separate figures


def test_mixed_project_has_separate_figures_per_currency(tmp_path: Path) -> None:
    flat = np.ones(len(DAYS))
    costs = load(tmp_path, {("111", "USD", "Compute"): 100.0 * flat, ("111", "EUR", "Compute"): 90.0 * flat})
    det = detect(costs, None, Config(), as_of=AS_OF, since=SINCE)
    assert det.alerts == []
    rows = rows_of(det, "111")
    assert set(rows) == {"USD", "EUR"}
    days_in_window = 20
    for cur, level in (("USD", 100.0), ("EUR", 90.0)):
        p = rows[cur]
        assert p["last_day_cost"] == pytest.approx(level)
        assert p["spend"] == pytest.approx(level * days_in_window)
        assert p["expected"] == pytest.approx(level, rel=1e-3)
        lower, upper = p["lower"], p["upper"]
        assert isinstance(lower, float) and isinstance(upper, float) and lower < level < upper < 1.5 * level
        assert p["band_status"] == "weekday band" and p["currencies"] == ["EUR", "USD"]
    # the two series have their own bands: neither is the summed one
    assert rows["USD"]["upper"] != rows["EUR"]["upper"]
    assert det.totals is not None and set(det.totals.matrix.keys["currency"]) == {"USD", "EUR"}
    assert any("billed in EUR, USD" in n and "never summed" in n for n in det.notes)
    # no figure of the report is the sum of dollars and euros
    doc = json.loads(render(det, "json"))
    for bad in (190.0, 190.0 * days_in_window, 190.0 * 30, 190.0 * 31):
        assert not any(x == pytest.approx(bad) for x in numbers(doc)), bad
    for fmt in ("table", "markdown"):
        text = render(det, fmt)
        assert "190" not in text and "3,800" not in text, fmt
        assert "2,000" in text and "1,800" in text


def test_single_currency_project_rows_are_unchanged() -> None:
    det = detect(frame({("222", "EUR", "Compute"): 50.0 * np.ones(len(DAYS))}), None, Config(), as_of=AS_OF,
                 since=SINCE)
    (p,) = det.projects
    assert p["currency"] == "EUR" and "currencies" not in p and "limits_currency" not in p
    assert not any("billed in" in n for n in det.notes)


def test_rows_without_a_currency_count_as_usd() -> None:
    costs = frame({("333", "USD", "Compute"): 10.0 * np.ones(len(DAYS))})
    costs["currency"] = pd.Series(pd.NA, index=costs.index, dtype="string")
    det = detect(costs, None, Config(), as_of=AS_OF, since=SINCE)
    (p,) = det.projects
    assert p["currency"] == "USD" and p["last_day_cost"] == pytest.approx(10.0)


# ---------------------------------------------------------------------------------------- spikes


def test_spike_in_the_eur_series_alerts_in_eur(tmp_path: Path) -> None:
    usd, eur = steady(200.0, seed=1), steady(90.0, seed=2)
    eur[SPIKE] = 400.0
    costs = load(tmp_path, {("444", "USD", "Compute"): usd, ("444", "EUR", "Compute"): eur})
    # the project's thresholds are in USD: USD is its main currency, EUR its second
    cfg = Config(projects={"444": ProjectConfig(currency="USD")})
    det = detect(costs, None, cfg, as_of=AS_OF, since=SINCE)
    spikes = [a for a in det.alerts if a.kind == "cost_spike"]
    assert len(spikes) == 1, [(a.currency, a.summary) for a in det.alerts]
    a = spikes[0]
    assert a.currency == "EUR" and a.project == "444" and a.service == "Compute" and a.start == DAYS[SPIKE]
    assert a.observed == pytest.approx(400.0, rel=1e-6)  # the EUR amount alone, not 400 EUR + ~200 USD
    assert a.lower < a.expected < a.upper < a.observed and a.expected == pytest.approx(90.0 * WEEK[
        DAYS[SPIKE].dayofweek], rel=0.15)
    assert "EUR/day" in a.summary and "USD" not in a.summary
    assert a.evidence["services"][0]["cost"] == pytest.approx(400.0, rel=1e-6)
    # the second currency's alert has an identity of its own, apart from the same scope in USD
    assert a.fingerprint == fingerprint("cost_spike", "aws", "444", "cost:Compute@EUR")
    assert a.fingerprint != fingerprint("cost_spike", "aws", "444", "cost:Compute")
    assert a.to_dict()["currency"] == "EUR"
    rows = rows_of(det, "444")
    assert rows["EUR"]["alerts"] == {"cost_spike": 1} and rows["USD"]["alerts"] == {}
    text = render(det, "table")
    assert "400.00 EUR/day" in text
    # the chart draws the EUR series the alert is about, not the USD one of the same project and category
    from costwatch.charts import _series_row, alert_chart

    assert det.categories is not None
    row = _series_row(det.categories, "444", "Compute", "EUR")
    assert row is not None and det.categories.matrix.keys.iloc[row]["currency"] == "EUR"
    assert det.categories.matrix.values[row].max() == pytest.approx(400.0, rel=1e-6)
    assert alert_chart(det, a, tmp_path / "eur.png").stat().st_size > 1000


@pytest.mark.parametrize("currency", ["USD", "EUR"])
def test_single_currency_fingerprints_keep_their_labels(currency: str) -> None:
    """Existing incidents keep their identity: a project in one currency has the plain scopes."""
    vals = steady(200.0, seed=3)
    vals[SPIKE] = 900.0
    det = detect(frame({("555", currency, "Compute"): vals}), None,
                 Config(projects={"555": ProjectConfig(daily_threshold=500.0)}), as_of=AS_OF, since=SINCE)
    by_kind = {a.kind: a for a in det.alerts}
    assert set(by_kind) == {"cost_spike", "threshold_exceeded"}
    assert by_kind["cost_spike"].fingerprint == fingerprint("cost_spike", "aws", "555", "cost:Compute")
    assert by_kind["threshold_exceeded"].fingerprint == fingerprint("threshold_exceeded", "aws", "555",
                                                                    "threshold:daily")
    assert {a.currency for a in det.alerts} == {currency}


def test_main_currency_is_the_one_with_most_rows() -> None:
    """Unconfigured, the currency most rows are in keeps the plain identity; the other is suffixed."""
    usd, eur = steady(200.0, seed=4), steady(90.0, seed=5)
    usd[SPIKE] = eur[SPIKE] = 800.0
    storage = steady(20.0, seed=6)
    det = detect(frame({("666", "USD", "Compute"): usd, ("666", "USD", "Storage"): storage,
                        ("666", "EUR", "Compute"): eur}), None, Config(), as_of=AS_OF, since=SINCE)
    spikes = {a.currency: a for a in det.alerts if a.kind == "cost_spike"}
    assert set(spikes) == {"USD", "EUR"}
    assert spikes["USD"].fingerprint == fingerprint("cost_spike", "aws", "666", "cost:Compute")
    assert spikes["EUR"].fingerprint == fingerprint("cost_spike", "aws", "666", "cost:Compute@EUR")
    assert spikes["USD"].observed == pytest.approx(800.0) and spikes["EUR"].observed == pytest.approx(800.0)


# ------------------------------------------------------------------------------- thresholds, budgets


def test_usd_threshold_and_budget_are_not_tripped_by_eur_spend(tmp_path: Path) -> None:
    flat = np.ones(len(DAYS))
    costs = load(tmp_path, {("777", "USD", "Compute"): 100.0 * flat, ("777", "EUR", "Compute"): 200.0 * flat})
    # summed, 300/day would break both: the threshold every day and the budget every month
    cfg = Config(projects={"777": ProjectConfig(daily_threshold=150.0, monthly_budget=3500.0, currency="USD")})
    det = detect(costs, None, cfg, as_of=AS_OF, since=SINCE)
    assert [a for a in det.alerts if a.kind in ("threshold_exceeded", "budget_forecast_exceeded")] == []
    rows = rows_of(det, "777")
    assert rows["USD"]["daily_threshold"] == 150.0 and rows["USD"]["monthly_budget"] == 3500.0
    assert rows["EUR"]["daily_threshold"] is None and rows["EUR"]["monthly_budget"] is None
    assert rows["EUR"]["limits_currency"] == "USD" and "limits_currency" not in rows["USD"]
    assert rows["USD"]["forecast"] == pytest.approx(100.0 * 30, rel=0.05)
    assert rows["EUR"]["forecast"] == pytest.approx(200.0 * 30, rel=0.05)
    assert any("777" in n and "spend in EUR was not compared" in n and "configured in USD" in n for n in det.notes)
    assert "(limits in USD)" in render(det, "table")


def test_usd_threshold_trips_on_usd_spend_alone() -> None:
    usd, eur = 100.0 * np.ones(len(DAYS)), 200.0 * np.ones(len(DAYS))
    usd[-5:] = 160.0
    cfg = Config(projects={"888": ProjectConfig(daily_threshold=150.0, monthly_budget=9000.0, currency="USD")})
    det = detect(frame({("888", "USD", "Compute"): usd, ("888", "EUR", "Compute"): eur}), None, cfg,
                 as_of=AS_OF, since=SINCE)
    (th,) = [a for a in det.alerts if a.kind == "threshold_exceeded"]
    assert th.currency == "USD" and th.start == DAYS[-5]
    assert th.observed == pytest.approx(160.0) and th.evidence["peak"] == pytest.approx(160.0)
    assert th.fingerprint == fingerprint("threshold_exceeded", "aws", "888", "threshold:daily")
    assert "USD" in th.summary
    # the budget (9000/month) sees the ~3,300 USD forecast, not the ~9,300 of both currencies
    assert not [a for a in det.alerts if a.kind == "budget_forecast_exceeded"]


def test_limits_without_a_configured_currency_apply_to_the_main_currency() -> None:
    """A single-currency EUR project with an unset currency: its threshold is in its own currency (EUR)."""
    vals = 100.0 * np.ones(len(DAYS))
    vals[-3:] = 300.0
    det = detect(frame({("999", "EUR", "Compute"): vals}), None,
                 Config(projects={"999": ProjectConfig(daily_threshold=150.0, monthly_budget=3500.0)}),
                 as_of=AS_OF, since=SINCE)
    kinds = {a.kind: a for a in det.alerts}
    assert kinds["threshold_exceeded"].currency == "EUR"
    assert kinds["budget_forecast_exceeded"].currency == "EUR"
    assert not any("not compared" in n for n in det.notes)


def test_budget_in_eur_uses_eur_net_spend_only() -> None:
    usd, eur = 500.0 * np.ones(len(DAYS)), 100.0 * np.ones(len(DAYS))
    eur[-10:] = 150.0
    cfg = Config(projects={"aaa": ProjectConfig(monthly_budget=3500.0, currency="EUR")})
    det = detect(frame({("aaa", "USD", "Compute"): usd, ("aaa", "EUR", "Compute"): eur}), None, cfg,
                 as_of=AS_OF, since=SINCE)
    (b,) = [a for a in det.alerts if a.kind == "budget_forecast_exceeded"]
    assert b.currency == "EUR" and b.expected == 3500.0
    assert 3500.0 < b.observed < 150.0 * 31  # an EUR forecast, nowhere near the ~15,000 USD a month
    scope = f"budget:{b.evidence['month']}:100:forecast"  # the default step: 100 % on forecast
    assert b.fingerprint == fingerprint("budget_forecast_exceeded", "aws", "aaa", scope)
    rows = rows_of(det, "aaa")
    assert rows["EUR"]["alerts"]["budget_forecast_exceeded"] == 1 and rows["USD"]["alerts"] == {}


# -------------------------------------------------------------------------------------- report totals


def test_report_totals_are_per_currency(tmp_path: Path) -> None:
    flat = np.ones(len(DAYS))
    costs = load(tmp_path, {("p1", "USD", "Compute"): 100.0 * flat,
                            ("p2", "USD", "Storage"): 50.0 * flat, ("p2", "EUR", "Storage"): 40.0 * flat,
                            ("p3", "EUR", "Compute"): 10.0 * flat})
    det = detect(costs, None, Config(), as_of=AS_OF, since=SINCE)
    totals = {t["currency"]: t for t in currency_totals(det)}
    assert set(totals) == {"USD", "EUR"}
    assert totals["USD"]["spend"] == pytest.approx(150.0 * 20) and totals["USD"]["projects"] == 2
    assert totals["EUR"]["spend"] == pytest.approx(50.0 * 20) and totals["EUR"]["projects"] == 2
    doc = json.loads(render(det, "json"))
    assert [t["currency"] for t in doc["totals"]] == ["EUR", "USD"]
    assert {t["currency"]: t["spend"] for t in doc["totals"]} == {"USD": 3000.0, "EUR": 1000.0}
    assert not any(x == pytest.approx(4000.0) for x in numbers(doc))  # no grand total across currencies
    table = render(det, "table")
    assert "Total spend in the window per currency, never added: 1,000 EUR; 3,000 USD" in table
    assert "4,000" not in table
    md = render(det, "markdown")
    assert "## Totals per currency" in md
    assert "| EUR | 2 | 1,000.00 |" in md and "| USD | 2 | 3,000.00 |" in md
    assert "4,000" not in md
    # one project row per currency, each labelled
    assert sorted((p["project"], p["currency"]) for p in doc["projects"]) == [
        ("p1", "USD"), ("p2", "EUR"), ("p2", "USD"), ("p3", "EUR")]


def test_single_currency_report_total() -> None:
    det = detect(frame({("p1", "USD", "Compute"): 10.0 * np.ones(len(DAYS))}), None, Config(), as_of=AS_OF,
                 since=SINCE)
    assert [t["currency"] for t in currency_totals(det)] == ["USD"]
    assert "Total spend in the window: 200 USD" in render(det, "table")
