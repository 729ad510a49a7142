"""Detectors end to end on frames: cost spikes, credits, short history, thresholds, budgets, mining joins."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from costwatch.budgets import month_forecast
from costwatch.config import Config, CpuDetectionConfig, DetectionConfig, ProjectConfig
from costwatch.detect import detect
from costwatch.model import normalize_costs, normalize_usage
from costwatch.scenarios import generate

DAYS = pd.date_range("2026-09-01", periods=70, freq="D", tz="UTC")
WEEK = np.array([1.0, 1.04, 1.08, 1.05, 1.0, 0.7, 0.65])


def _costs(values: dict[tuple[str, str, str], np.ndarray], days: pd.DatetimeIndex = DAYS,
           charge: str = "Usage") -> pd.DataFrame:
    rows = []
    for (project, category, region), vals in values.items():
        for d, v in zip(days, vals, strict=True):
            if np.isnan(v):
                continue
            rows.append({"period_start": d, "period_hours": 24.0, "provider": "aws", "project_id": project,
                         "project_name": f"name-{project}", "service": f"svc-{category}",
                         "service_category": category, "region": region, "charge_category": charge,
                         "billed_cost": v, "effective_cost": v, "currency": "USD"})
    return normalize_costs(pd.DataFrame(rows))


def _steady(level: float, seed: int = 0, days: pd.DatetimeIndex = DAYS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return level * WEEK[days.dayofweek.to_numpy()] * np.exp(rng.normal(0, 0.04, len(days)))


def test_cost_spike_found_with_band_and_evidence() -> None:
    compute = _steady(200.0)
    compute[60] *= 2.5
    storage = _steady(50.0, seed=1)
    costs = pd.concat([_costs({("111", "Compute", "us-east-1"): compute}),
                       _costs({("111", "Storage", "us-east-1"): storage})], ignore_index=True)
    det = detect(costs, None, Config(), as_of=DAYS[-1] + pd.Timedelta(days=1), since=DAYS[50])
    spikes = [a for a in det.alerts if a.kind == "cost_spike"]
    assert len(spikes) == 1
    a = spikes[0]
    assert a.project == "111" and a.service == "Compute" and a.start == DAYS[60]
    assert a.detected_at == DAYS[61]  # the day's cost is complete at its end
    assert a.lower < a.expected < a.upper < a.observed
    assert a.evidence["services"][0]["service"] == "svc-Compute"
    assert a.evidence["services"][0]["share"] == pytest.approx(1.0)
    assert not [x for x in det.alerts if x.kind == "mining_suspected"]  # no CPU, no new region


def test_credits_and_refunds_never_spike() -> None:
    compute = _steady(100.0)
    credit = np.full(len(DAYS), np.nan)
    credit[55] = -900.0
    credit[56] = 0.0  # a zero-amount adjustment is harmless too
    costs = pd.concat([_costs({("222", "Compute", "us-east-1"): compute}),
                       _costs({("222", "Compute", "us-east-1"): credit}, charge="Credit")], ignore_index=True)
    det = detect(costs, None, Config(), as_of=DAYS[-1] + pd.Timedelta(days=1), since=DAYS[40])
    assert det.alerts == []
    p = det.projects[0]
    assert p["credits"] == pytest.approx(-900.0)


def test_short_history_uses_plain_threshold_and_says_so() -> None:
    days = DAYS[-8:]
    vals = np.full(8, 40.0)
    vals[-1] = 400.0
    costs = _costs({("333", "Compute", "eu-west-1"): vals}, days=days)
    det = detect(costs, None, Config(), as_of=days[-1] + pd.Timedelta(days=1), since=days[0])
    assert any("short history" in n for n in det.notes)
    assert det.projects[0]["band_status"].startswith("short history")
    spikes = [a for a in det.alerts if a.kind == "cost_spike"]
    assert spikes and spikes[0].evidence["band"].startswith("plain threshold")


def test_min_spend_silences_small_projects() -> None:
    vals = _steady(0.5)
    vals[60] = 4.0  # 8x, but below the 5.00/day minimum
    costs = _costs({("444", "Compute", "us-east-1"): vals})
    det = detect(costs, None, Config(), as_of=DAYS[-1] + pd.Timedelta(days=1), since=DAYS[50])
    assert det.alerts == []
    cfg = Config(detection=DetectionConfig(min_spend=1.0))
    det = detect(costs, None, cfg, as_of=DAYS[-1] + pd.Timedelta(days=1), since=DAYS[50])
    assert [a.kind for a in det.alerts] == ["cost_spike"]


def test_threshold_and_budget_forecast() -> None:
    vals = _steady(100.0)
    vals[-10:] = 160.0
    costs = _costs({("555", "Compute", "us-east-1"): vals})
    cfg = Config(projects={"555": ProjectConfig(daily_threshold=150.0, monthly_budget=3200.0)})
    as_of = DAYS[-1] + pd.Timedelta(days=1)
    det = detect(costs, None, cfg, as_of=as_of, since=DAYS[-12])
    kinds = {a.kind for a in det.alerts}
    assert "threshold_exceeded" in kinds
    th = next(a for a in det.alerts if a.kind == "threshold_exceeded")
    assert th.start == DAYS[-10] and th.upper == 150.0
    bud = [a for a in det.alerts if a.kind == "budget_forecast_exceeded"]
    assert len(bud) == 1  # once per project-month, not every day
    b = bud[0]
    assert b.observed > 3200.0 and b.evidence["month"] == b.start.strftime("%Y-%m")


def test_month_forecast_run_rate() -> None:
    idx = pd.date_range("2026-11-01", "2026-11-10", freq="D", tz="UTC")
    net = pd.Series(10.0, index=idx)
    mtd, fc, left, rate = month_forecast(net, idx[-1])
    assert (mtd, left, rate) == (100.0, 20, 10.0)
    assert fc == pytest.approx(300.0)


def test_mining_joins_cpu_and_cost_and_fingerprint_is_stable() -> None:
    sc = generate(seed=5, n_projects=10, days=49, incident_kinds=["mining_new_nodes"])
    inc = sc.incidents[sc.incidents["kind"] == "mining_new_nodes"].iloc[0]
    det = detect(sc.costs, sc.usage, Config(), as_of=sc.end, since=pd.Timedelta(days=14))
    mining = [a for a in det.alerts if a.kind == "mining_suspected" and a.project == str(inc["project_id"])]
    assert len(mining) == 1
    m = mining[0]
    assert m.start == inc["start"]
    assert m.detected_at - inc["start"] <= pd.Timedelta(hours=2)
    assert m.evidence["new_nodes"] == len(inc["nodes"])
    assert {n["node"] for n in m.evidence["nodes"]} == set(inc["nodes"])
    assert m.severity == "critical"
    # a later run, with more data, reports the same incident with the same identity and first detection
    later = detect(sc.costs, sc.usage, Config(), as_of=sc.end, since=m.detected_at - pd.Timedelta(hours=1))
    again = next(a for a in later.alerts if a.kind == "mining_suspected" and a.project == m.project)
    assert (again.fingerprint, again.start, again.detected_at) == (m.fingerprint, m.start, m.detected_at)
    # and a run as of one hour before detection does not see it yet
    early = detect(sc.costs, sc.usage, Config(), as_of=m.detected_at - pd.Timedelta(hours=1),
                   since=pd.Timedelta(days=14))
    assert not [a for a in early.alerts if a.kind == "mining_suspected" and a.project == m.project]


def test_cost_only_mining_needs_a_new_region() -> None:
    base = _steady(300.0)
    spike_home = base.copy()
    spike_home[62] *= 2.2
    away = np.full(len(DAYS), np.nan)
    away[62] = 400.0
    # same excess, once in the home region (capacity) and once in a region never used (mining signature)
    home = _costs({("666", "Compute", "us-east-1"): spike_home})
    new_region = pd.concat([_costs({("777", "Compute", "us-east-1"): base}),
                            _costs({("777", "Compute", "ap-southeast-3"): away})], ignore_index=True)
    as_of = DAYS[-1] + pd.Timedelta(days=1)
    det = detect(pd.concat([home, new_region], ignore_index=True), None, Config(), as_of=as_of, since=DAYS[55])
    by = {(a.project, a.kind) for a in det.alerts}
    assert ("666", "cost_spike") in by and ("666", "mining_suspected") not in by
    assert ("777", "mining_suspected") in by
    m = next(a for a in det.alerts if a.project == "777" and a.kind == "mining_suspected")
    assert m.evidence["new_regions"][0]["region"] == "ap-southeast-3"


def test_benign_surge_and_planned_step_not_mining() -> None:
    sc = generate(seed=11, n_projects=10, days=49, incident_kinds=["benign_surge", "planned_step"])
    det = detect(sc.costs, sc.usage, Config(), as_of=sc.end, since=pd.Timedelta(days=14))
    benign = set(sc.incidents.loc[~sc.incidents["is_mining"], "project_id"].astype(str))
    assert benign
    assert not [a for a in det.alerts if a.kind == "mining_suspected" and a.project in benign]


def test_usage_only_input_is_enough_for_cpu_mining() -> None:
    hours = pd.date_range("2026-10-01", periods=24 * 10, freq="h", tz="UTC")
    rng = np.random.default_rng(0)
    normal = 20 + 15 * np.sin(hours.hour.to_numpy() / 24 * 2 * np.pi) + rng.normal(0, 3, len(hours))
    miner = normal.copy()
    miner[24 * 8:] = 99.0 + rng.normal(0, 0.3, len(hours) - 24 * 8)
    usage = normalize_usage(pd.concat([
        pd.DataFrame({"timestamp": hours, "node": "n1", "cpu_utilization": np.clip(normal, 0, 100)}),
        pd.DataFrame({"timestamp": hours, "node": "n2", "cpu_utilization": np.clip(miner, 0, 100)}),
    ]).assign(provider="gcp", project="proj-a"))
    no_costs = normalize_costs(pd.DataFrame(columns=["period_start"]))
    det = detect(no_costs, usage, Config())
    kinds = [(a.kind, a.project) for a in det.alerts]
    assert kinds == [("mining_suspected", "proj-a")]
    assert det.alerts[0].evidence["metric"] == "cpu_percent"
    # the default usage-band score (calibrated) needs ~200 hours of a node's history before it can judge a
    # tail, so at 8 days it lists nothing yet; the range score lists the node that left its band, at onset
    assert not det.projects[0].get("usage_anomalies")
    cfg = Config(detection=DetectionConfig(cpu=CpuDetectionConfig(usage_score="range")))
    off = detect(no_costs, usage, cfg).projects[0]["usage_anomalies"]
    assert [u["node"] for u in off] == ["n2"]
    assert off[0]["at"] == hours[24 * 8]


def test_usage_score_method_is_a_config_choice() -> None:
    """``detection.cpu.usage_score`` picks the scorer behind "nodes off their band": the reported score is that
    method's own (the calibrated one is a tail probability, so it does not saturate at 1 as the range one does)."""
    from costwatch.config import parse_config
    from costwatch.detect import HOURLY_USAGE
    from costwatch.errors import ConfigError
    from costwatch.usage_score import score_matrix

    hours = pd.date_range("2026-10-01", periods=24 * 28, freq="h", tz="UTC")
    rng = np.random.default_rng(0)
    normal = 20 + 15 * np.sin(hours.hour.to_numpy() / 24 * 2 * np.pi) + rng.normal(0, 3, len(hours))
    miner = normal.copy()
    miner[24 * 20:] = 99.0 + rng.normal(0, 0.3, len(hours) - 24 * 20)
    usage = normalize_usage(pd.DataFrame({"timestamp": hours, "node": "n2", "cpu_utilization": np.clip(miner, 0, 100)})
                            .assign(provider="gcp", project="proj-a"))
    no_costs = normalize_costs(pd.DataFrame(columns=["period_start"]))
    seen = {}
    for method in ("range", "calibrated"):
        cfg = Config(detection=DetectionConfig(cpu=CpuDetectionConfig(usage_score=method)))
        off = detect(no_costs, usage, cfg, since=pd.Timedelta(days=14)).projects[0]["usage_anomalies"]
        assert [u["at"] for u in off] == [hours[24 * 20]], method
        want = score_matrix(np.clip(miner, 0, 100)[None, :], params=replace(HOURLY_USAGE, method=method))[0, 24 * 20]
        assert off[0]["score"] == pytest.approx(want)
        seen[method] = off[0]["score"]
    assert seen["range"] != pytest.approx(seen["calibrated"])
    assert parse_config("detection:\n  cpu:\n    usage_score: calibrated\n").detection.cpu.usage_score == "calibrated"
    with pytest.raises(ConfigError, match="usage_score"):
        parse_config("detection:\n  cpu:\n    usage_score: fancy\n")


def test_impact_knobs_absolute_and_percent() -> None:
    compute = _steady(200.0)
    compute[60] *= 1.6  # out of band: about +120/day, +60%
    costs = _costs({("888", "Compute", "us-east-1"): compute})
    as_of, since = DAYS[-1] + pd.Timedelta(days=1), DAYS[50]
    base = detect(costs, None, Config(), as_of=as_of, since=since)
    spike = next(a for a in base.alerts if a.kind == "cost_spike")
    impact = spike.evidence["impact"]
    assert impact == pytest.approx(spike.observed - spike.expected)
    assert spike.evidence["impact_pct"] == pytest.approx(100 * impact / spike.expected)
    assert spike.evidence["regions"][0]["region"] == "us-east-1"
    for knobs, fires in (({"min_impact": impact * 0.9}, True), ({"min_impact": impact * 1.1}, False),
                         ({"min_impact_pct": spike.evidence["impact_pct"] * 0.9}, True),
                         ({"min_impact_pct": spike.evidence["impact_pct"] * 1.1}, False)):
        det = detect(costs, None, Config(detection=DetectionConfig(**knobs)), as_of=as_of, since=since)
        assert any(a.kind == "cost_spike" for a in det.alerts) is fires, knobs


def test_partial_latest_day_is_neither_read_low_nor_high() -> None:
    hours = pd.date_range(DAYS[0], DAYS[-1] + pd.Timedelta(hours=23), freq="h", tz="UTC")
    rows = pd.DataFrame({"period_start": hours, "period_hours": 1.0, "provider": "gcp", "project_id": "p1",
                         "service_category": "Compute", "region": "europe-west1", "charge_category": "Usage",
                         "billed_cost": 10.0, "effective_cost": 10.0, "currency": "EUR"})
    costs = normalize_costs(rows)
    as_of = DAYS[-1] + pd.Timedelta(hours=13)  # the last day is half billed
    det = detect(costs, None, Config(), as_of=as_of, since=DAYS[-10])
    assert det.alerts == []
    p = det.projects[0]
    assert p["last_day"] == DAYS[-2] and p["last_day_cost"] == pytest.approx(240.0)
    # with a publication delay, the last complete day is not read until it is assumed final
    late = detect(costs, None, Config(detection=DetectionConfig(cost_delay_hours=18)), as_of=as_of,
                  since=DAYS[-10])
    assert late.projects[0]["last_day"] == DAYS[-3]


def _findings(project: str, node: str, first: pd.Timestamp, kind: str = "CryptoCurrency:EC2/BitcoinTool.B!DNS",
              ) -> pd.DataFrame:
    return pd.DataFrame([{"provider": "aws", "project": project, "region": "ap-southeast-3", "node": node,
                          "cluster": None, "type": kind, "severity": 8.0, "title": "miner", "finding_id": "f1",
                          "first_seen": first, "last_seen": first + pd.Timedelta(hours=5)}])


def test_guardduty_findings_join_the_mining_alert_or_stand_alone() -> None:
    sc = generate(seed=5, n_projects=10, days=49, incident_kinds=["mining_new_nodes"])
    inc = sc.incidents[sc.incidents["kind"] == "mining_new_nodes"].iloc[0]
    pid = str(inc["project_id"])
    other = next(p for p in sc.projects["project_id"].astype(str) if p != pid)
    findings = pd.concat([_findings(pid, inc["nodes"][0], inc["start"] + pd.Timedelta(minutes=30)),
                          _findings(other, "i-0abc", sc.end - pd.Timedelta(days=2))], ignore_index=True)
    det = detect(sc.costs, sc.usage, Config(), as_of=sc.end, since=pd.Timedelta(days=14), findings=findings)
    mining = {a.project: a for a in det.alerts if a.kind == "mining_suspected"}
    joined = mining[pid]
    assert joined.evidence["guardduty"][0]["node"] == inc["nodes"][0]
    assert joined.severity == "critical"
    alone = mining[other]
    assert alone.start == sc.end - pd.Timedelta(days=2) and alone.evidence["finding_nodes"] == ["i-0abc"]
    assert alone.fingerprint != joined.fingerprint
    # a finding from before the window is history, not an alert
    old = _findings(other, "i-0abc", sc.end - pd.Timedelta(days=30))
    det = detect(sc.costs, sc.usage, Config(), as_of=sc.end, since=pd.Timedelta(days=14), findings=old)
    assert other not in {a.project for a in det.alerts if a.kind == "mining_suspected"}


def test_a_persistent_cost_step_stays_an_incident_until_accepted() -> None:
    """Issue 16: a new level is still an incident 20 days later (reported even though it began before the
    14-day window), never silently learned; a planned mark makes it the baseline instead."""
    from costwatch.incidents import is_active
    from costwatch.silences import Silence

    days = pd.date_range("2026-08-01", periods=90, freq="D", tz="UTC")
    db = _steady(40.0, seed=3, days=days)
    db[60:] *= 1.8  # an always-on replica nobody planned, from day 60 on
    costs = _costs({("p1", "Databases", "us-east-1"): db, ("p1", "Storage", "us-east-1"): _steady(20.0, 4, days)},
                   days=days)
    as_of = days[80] + pd.Timedelta(days=1)  # day 80 is published: the step is 20 days old
    det = detect(costs, None, Config(), as_of=as_of, since=pd.Timedelta(days=14))
    spikes = [a for a in det.alerts if a.kind == "cost_spike" and a.project == "p1"]
    assert spikes and min(a.start for a in spikes) == days[60]
    lead = min(spikes, key=lambda a: a.start)
    assert lead.evidence["ongoing"] and "frozen" in lead.evidence["band"]
    assert is_active(lead, as_of, pd.Timedelta(days=1, hours=2))  # so the incident is not resolved
    # accepted as planned (marked the day after it started, for two days): no alert, the level is the baseline
    mark = Silence(id="x", project="p1", until=str(days[63]), reason="new replica", planned=True,
                   created_at=str(days[61] + pd.Timedelta(hours=9)))
    quiet = detect(costs, None, Config(), as_of=as_of, since=pd.Timedelta(days=40), planned=[mark])
    assert not [a for a in quiet.alerts if a.kind == "cost_spike"]


def test_one_quiet_day_does_not_split_an_open_cost_episode() -> None:
    days = pd.date_range("2026-08-01", periods=90, freq="D", tz="UTC")
    db = _steady(40.0, seed=3, days=days)
    db[60:] *= 1.8
    db[72] /= 1.8  # one day back at the old level, then the new level again
    costs = _costs({("p1", "Databases", "us-east-1"): db}, days=days)
    det = detect(costs, None, Config(), as_of=days[80] + pd.Timedelta(days=1), since=pd.Timedelta(days=14))
    spikes = [a for a in det.alerts if a.kind == "cost_spike"]
    assert len(spikes) == 1 and spikes[0].start == days[60] and spikes[0].evidence["days"] == 21


def _active_by_day(costs: pd.DataFrame, days: pd.DatetimeIndex, first: int, last: int, start: int,
                   ) -> dict[int, bool]:
    """As-of replays like run.py's (14-day window, one per published day): day k -> whether a cost alert of
    the incident starting on day ``start`` is still active once day k is published."""
    from costwatch.incidents import is_active

    grace = pd.Timedelta(days=1, hours=2)
    out = {}
    for k in range(first, last + 1):
        at = days[k] + pd.Timedelta(days=1, hours=12)
        det = detect(costs, None, Config(), as_of=at, since=at - pd.Timedelta(days=14))
        out[k] = any(a.kind == "cost_spike" and a.start >= days[start] and is_active(a, at, grace)
                     for a in det.alerts)
    return out


def test_a_persistent_step_stays_active_through_a_long_weekend_dip() -> None:
    """Issue 16: a new level that a long weekend (two days) brings back inside the frozen band is still an
    incident on every day of the replay, dip included; it is never resolved while the level persists."""
    days = pd.date_range("2026-08-01", periods=90, freq="D", tz="UTC")
    db = _steady(40.0, seed=3, days=days)
    db[60:] *= 1.8  # an always-on replica nobody planned, from day 60 on
    db[70:72] /= 1.8  # two days at the old level, then the new level again
    costs = _costs({("p1", "Databases", "us-east-1"): db}, days=days)
    active = _active_by_day(costs, days, 61, 80, 60)
    assert all(active.values()), [k for k, v in active.items() if not v]


def test_a_one_day_spike_and_a_reverted_step_still_resolve() -> None:
    days = pd.date_range("2026-08-01", periods=90, freq="D", tz="UTC")
    spike = _steady(40.0, seed=3, days=days)
    spike[70] *= 3.0
    active = _active_by_day(_costs({("p1", "Databases", "us-east-1"): spike}, days=days), days, 70, 76, 70)
    assert active[70] and not any(active[k] for k in range(72, 77)), active
    step = _steady(40.0, seed=3, days=days)
    step[60:75] *= 1.8  # the replica is deleted after 15 days: back at the old level from day 75
    active = _active_by_day(_costs({("p1", "Databases", "us-east-1"): step}, days=days), days, 61, 82, 60)
    assert all(active[k] for k in range(61, 75)) and not any(active[k] for k in range(78, 83)), active


def test_a_step_on_a_new_service_is_not_hidden_by_a_one_day_category_spike() -> None:
    """The project total is the only series that sees a step on a service the project never used (its
    category has no band yet); a one-day spike of another category inside the step does not explain it."""
    days = pd.date_range("2026-08-01", periods=90, freq="D", tz="UTC")
    compute = _steady(60.0, seed=3, days=days)
    compute[68] *= 2.5
    new = np.where(np.arange(90) >= 60, 45.0, np.nan)
    costs = _costs({("p1", "Compute", "us-east-1"): compute, ("p1", "Databases", "us-east-1"): new}, days=days)
    active = _active_by_day(costs, days, 61, 75, 60)
    assert all(active.values()), [k for k, v in active.items() if not v]


def test_a_missing_day_neither_splits_nor_ends_an_open_cost_episode() -> None:
    """An export that skipped a day inside a step is a gap, not a recovery: one alert spans it."""
    days = pd.date_range("2026-08-01", periods=90, freq="D", tz="UTC")
    db = _steady(40.0, seed=3, days=days)
    db[60:] *= 1.8
    db[66] = np.nan  # no row at all that day
    costs = _costs({("p1", "Databases", "us-east-1"): db}, days=days)
    det = detect(costs, None, Config(), as_of=days[80] + pd.Timedelta(days=1), since=pd.Timedelta(days=14))
    spikes = [a for a in det.alerts if a.kind == "cost_spike"]
    assert len(spikes) == 1 and spikes[0].start == days[60] and spikes[0].evidence["days"] == 21
    assert spikes[0].evidence["ongoing"]
    # a project whose data stopped after a bad day is not held open for ever: the window passes it by
    gone = db.copy()
    gone[62:] = np.nan
    costs = _costs({("p1", "Databases", "us-east-1"): gone, ("p2", "Storage", "us-east-1"): _steady(20.0, 4, days)},
                   days=days)
    det = detect(costs, None, Config(), as_of=days[80] + pd.Timedelta(days=1), since=pd.Timedelta(days=14))
    assert not [a for a in det.alerts if a.kind == "cost_spike" and a.project == "p1"]


# Issue 16 section 2: a busy node pushed near its ceiling by a project-wide surge that begins at night.
SURGE_AT = 24 * 60 + 22  # day 60, 22:00 UTC: the idle night barely shows the surge on the other nodes
SURGE_HOURS = 36


def _surge_project(traces: dict[str, np.ndarray], hours: pd.DatetimeIndex, mult: np.ndarray, project: str,
                   cost_seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One AWS project's costs and usage: hourly CPU per node (NaN where a node does not exist) and a compute
    bill that follows the hourly demand multiplier ``mult`` day by day."""
    frames = [pd.DataFrame({"timestamp": hours, "node": n, "cpu_utilization": v}).dropna() for n, v in traces.items()]
    usage = normalize_usage(pd.concat(frames).assign(provider="aws", project=project))
    daily = mult.reshape(len(DAYS), 24).mean(axis=1)
    return _costs({(project, "Compute", "us-east-1"): _steady(300.0, seed=cost_seed) * daily}), usage


def _night_surge(outlive_hours: int, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A project whose compute cost and every node's load rise x1.5 for 36 h with their daily shape; its busy
    node (usually 60-72%) saturates near 90% day and night, and at 100% for 2 h at the peak.  With
    ``outlive_hours`` the busy node stays flat at ~91% that long after the surge has ended: a miner.  The
    project's idle nodes keep the night's pooled demand near its usual, so the hour-by-hour surge check
    cannot explain the busy node's first flat hours; the episode as a whole is inside the surge."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range(DAYS[0], periods=24 * len(DAYS), freq="h", tz="UTC")
    t = np.arange(len(hours))
    ramp = np.clip(np.minimum(t - SURGE_AT + 1, SURGE_AT + SURGE_HOURS - t) / 3.0, 0, 1)
    mult = 1 + 0.5 * ramp
    bump = np.exp(-0.5 * ((hours.hour.to_numpy() - 14) / 3.5) ** 2)

    def load(peak: float, trough: float, sigma: float) -> np.ndarray:
        x = (trough + (peak - trough) * bump) * mult
        x = np.where(x <= 70.0, x, 70.0 + 20.0 * np.tanh((x - 70.0) / 20.0))  # a busy service slows down
        return np.clip(x + rng.normal(0, sigma, len(t)) * np.sqrt(mult), 0, 100)

    traces = {f"web-{k}": load(20 + 5 * k, 6, 3.0) for k in range(3)}
    traces |= {f"idle-{k}": load(10, 6, 3.0) for k in range(2)}  # at night the pooled demand reads ~1
    busy = load(72, 60, 3.0)
    busy[SURGE_AT + 7: SURGE_AT + 9] = 97.0 + rng.normal(0, 0.3, 2)  # 05:00: near its ceiling, flat by chance
    peak_hour = SURGE_AT + 16  # 14:00 the next day
    busy[peak_hour: peak_hour + 2] = 99.7
    end = SURGE_AT + SURGE_HOURS
    busy[end: end + outlive_hours] = 91.0 + rng.normal(0, 0.4, outlive_hours)
    traces["busy"] = busy
    return _surge_project(traces, hours, mult, "888", cost_seed=3)


def test_a_busy_node_saturating_in_a_night_surge_is_not_critical_mining() -> None:
    costs, usage = _night_surge(outlive_hours=0)
    det = detect(costs, usage, Config(), as_of=DAYS[-1] + pd.Timedelta(days=1), since=DAYS[50])
    assert [a.kind for a in det.alerts if a.kind == "cost_spike"]  # the surge shows in the bill
    assert not [a for a in det.alerts if a.kind == "mining_suspected" and a.severity == "critical"]


def test_the_same_plateau_outliving_the_surge_is_critical_mining() -> None:
    costs, usage = _night_surge(outlive_hours=30)
    det = detect(costs, usage, Config(), as_of=DAYS[-1] + pd.Timedelta(days=1), since=DAYS[50])
    mining = [a for a in det.alerts if a.kind == "mining_suspected" and a.severity == "critical"]
    assert len(mining) == 1 and mining[0].evidence["nodes"][0]["node"] == "busy"
    surge_end = DAYS[0] + pd.Timedelta(hours=SURGE_AT + SURGE_HOURS)
    assert pd.Timestamp(mining[0].evidence["ongoing_until"]) >= surge_end + pd.Timedelta(hours=24)


# Issue 16 section 2 on fresh seeds: a project of many idle nodes and a few busy ones.  Idle nodes run their
# daemons whatever the traffic, so pooled with their usual floored they read a x1.35 surge as ~1.05; read by
# load, the busy nodes carry it.  The busy node caps at its daily peak, in the surge's middle or its ramp.
IDLE_SURGE_AT = 24 * 60 + 6  # day 60, 06:00 UTC
IDLE_SURGE_HOURS = 48
PEAK_CAP = (IDLE_SURGE_AT, IDLE_SURGE_AT + 31)  # capped 13:00-16:00 on the surge's second day
RAMP_CAP = (IDLE_SURGE_AT + 7, IDLE_SURGE_AT + 7)  # a surge from 13:00, capped in its first, ramping hours


def _idle_surge(surge_at: int, cap_at: int, outlive_hours: int = -1, seed: int = 11,
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """24 idle nodes (~8%), two web nodes and a busy node (45-66%, peak at 14:00) under a x1.35 surge of
    48 h from ``surge_at`` with a 3 h ramp; the busy node sits at 99.7% for 3 h from ``cap_at``, or with
    ``outlive_hours`` >= 0 from ``cap_at`` day and night until that long after the surge has ended: a miner."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range(DAYS[0], periods=24 * len(DAYS), freq="h", tz="UTC")
    t = np.arange(len(hours))
    end = surge_at + IDLE_SURGE_HOURS
    ramp = np.clip(np.minimum(t - surge_at + 1, end - t) / 3.0, 0, 1)
    mult = 1 + 0.35 * ramp
    bump = np.exp(-0.5 * ((hours.hour.to_numpy() - 14) / 3.5) ** 2)

    def load(peak: float, trough: float, sigma: float) -> np.ndarray:
        x = (trough + (peak - trough) * bump) * mult
        x = np.where(x <= 70.0, x, 70.0 + 20.0 * np.tanh((x - 70.0) / 20.0))
        return np.clip(x + rng.normal(0, sigma, len(t)) * np.sqrt(mult), 0, 100)

    traces = {f"idle-{k:02d}": np.clip(8.0 + rng.normal(0, 2.5, len(t)), 0, 100) for k in range(24)}
    traces |= {f"web-{k}": load(40 + 10 * k, 15, 3.0) for k in range(2)}
    busy = load(66, 45, 3.0)
    stop = cap_at + 3 if outlive_hours < 0 else end + outlive_hours
    busy[cap_at: stop] = 99.7 + rng.normal(0, 0.2, stop - cap_at).clip(-0.7, 0.3)
    traces["busy"] = busy
    return _surge_project(traces, hours, mult, "889", cost_seed=5)


@pytest.mark.parametrize("when", [PEAK_CAP, RAMP_CAP], ids=["peak", "ramp"])
def test_a_busy_node_capped_at_its_peak_among_idle_nodes_in_a_surge_is_not_critical_mining(
        when: tuple[int, int]) -> None:
    costs, usage = _idle_surge(*when)
    det = detect(costs, usage, Config(), as_of=DAYS[-1] + pd.Timedelta(days=1), since=DAYS[50])
    assert [a.kind for a in det.alerts if a.kind == "cost_spike"]  # the surge shows in the bill
    assert not [a for a in det.alerts if a.kind == "mining_suspected" and a.severity == "critical"]


def test_the_same_node_flat_day_and_night_past_the_surge_among_idle_nodes_is_critical_mining() -> None:
    costs, usage = _idle_surge(*PEAK_CAP, outlive_hours=30)
    det = detect(costs, usage, Config(), as_of=DAYS[-1] + pd.Timedelta(days=1), since=DAYS[50])
    mining = [a for a in det.alerts if a.kind == "mining_suspected" and a.severity == "critical"]
    assert len(mining) == 1 and mining[0].evidence["nodes"][0]["node"] == "busy"
    surge_end = DAYS[0] + pd.Timedelta(hours=IDLE_SURGE_AT + IDLE_SURGE_HOURS)
    assert pd.Timestamp(mining[0].evidence["ongoing_until"]) >= surge_end + pd.Timedelta(hours=24)


# Issue 16 section 2, seed 170: the autoscaler adds nodes for the surge and they take the extra load, so the
# existing nodes each run about their usual; only the new nodes (no usual of their own) show the surge.
SCALE_AT = 24 * 60 + 6  # day 60, 06:00 UTC: the added nodes carry the surge from then on
SCALE_CAP = SCALE_AT + 31  # 13:00 the next day, the busy node's daily peak


def _autoscaled(added: int, seed: int = 13, miner_at: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Four idle nodes (~10%) and a busy node (45-60%, peak at 14:00) that each run their usual throughout;
    ``added`` nodes join at ``SCALE_AT`` and carry a x1.4 surge for 48 h with the daily shape.  The busy
    node sits at 99.7% for 3 h from ``SCALE_CAP``.  The compute bill rises x1.4 those days either way, so
    without added nodes the same cap is a miner on the busy node whose bill happens to rise.  With
    ``miner_at`` the busy node instead runs flat at ~70% from that hour to the end: a stealthy miner."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range(DAYS[0], periods=24 * len(DAYS), freq="h", tz="UTC")
    t = np.arange(len(hours))
    end = SCALE_AT + 48
    bump = np.exp(-0.5 * ((hours.hour.to_numpy() - 14) / 3.5) ** 2)

    def load(peak: float, trough: float) -> np.ndarray:
        return np.clip(trough + (peak - trough) * bump + rng.normal(0, 3.0, len(t)), 0, 100)

    traces = {f"idle-{k}": load(12, 8) for k in range(4)}
    busy = load(60, 45)
    if miner_at is None:
        busy[SCALE_CAP: SCALE_CAP + 3] = 99.7 + rng.normal(0, 0.2, 3).clip(-0.7, 0.3)
    else:
        busy[miner_at:] = 70.0 + rng.normal(0, 0.4, len(t) - miner_at)
    traces["busy"] = busy
    for k in range(added):
        x = load(40, 15)
        x[(t < SCALE_AT) | (t >= end)] = np.nan  # scaled out again after the surge
        traces[f"added-{k}"] = x
    return _surge_project(traces, hours, 1 + 0.4 * ((t >= SCALE_AT) & (t < end)), "890", cost_seed=5)


@pytest.mark.parametrize("added", [3, 0], ids=["autoscaled-surge", "miner"])
def test_a_busy_node_capped_while_added_nodes_carry_the_surge_is_not_critical_mining(added: int) -> None:
    costs, usage = _autoscaled(added)
    as_of = DAYS[0] + pd.Timedelta(hours=SCALE_CAP + 2)  # the cap's second hour, live
    det = detect(costs, usage, Config(), as_of=as_of, since=as_of - pd.Timedelta(days=14))
    critical = [a for a in det.alerts if a.kind == "mining_suspected" and a.severity == "critical"]
    if added:
        assert not critical
    else:
        assert len(critical) == 1 and critical[0].evidence["nodes"][0]["node"] == "busy"


def test_everyday_scale_out_is_no_demand_for_a_miner_on_a_busy_node() -> None:
    """Nodes the autoscaler adds every day at the peak (new names each day, so none has a usual of its own)
    are inside the project's usual node count: they are not a surge, and a miner that pins the busy node at
    its peak is flagged within hours, not left until night when the scale-out nodes are gone."""
    rng = np.random.default_rng(21)
    hours = pd.date_range(DAYS[0], periods=24 * len(DAYS), freq="h", tz="UTC")
    t, hod = np.arange(len(hours)), hours.hour.to_numpy()
    bump = np.exp(-0.5 * ((hod - 14) / 3.5) ** 2)

    def load(peak: float, trough: float) -> np.ndarray:
        return np.clip(trough + (peak - trough) * bump + rng.normal(0, 3.0, len(t)), 0, 100)

    start = 24 * 60 + 11  # day 60, 11:00: the miner starts in the scale-out hours
    busy = load(60, 45)
    busy[start:] = 95.0 + rng.normal(0, 0.3, len(t) - start)
    frames = [pd.DataFrame({"timestamp": hours, "node": "busy", "cpu_utilization": busy})]
    frames += [pd.DataFrame({"timestamp": hours, "node": f"idle-{k}", "cpu_utilization": load(12, 8)})
               for k in range(4)]
    day = t // 24
    for k in range(2):  # two scale-out nodes 09:00-20:00 every day, new ones each day
        x = load(45, 20)
        on = (hod >= 9) & (hod < 20)
        frames.append(pd.DataFrame({"timestamp": hours[on], "node": [f"scale-{k}-{d}" for d in day[on]],
                                    "cpu_utilization": x[on]}))
    usage = normalize_usage(pd.concat(frames).assign(provider="aws", project="890"))
    as_of = DAYS[0] + pd.Timedelta(hours=start + 4)  # 15:00, scale-out nodes still up
    det = detect(normalize_costs(pd.DataFrame(columns=["period_start"])), usage, Config(), as_of=as_of,
                 since=as_of - pd.Timedelta(days=14))
    mining = [a for a in det.alerts if a.kind == "mining_suspected"]
    assert len(mining) == 1 and mining[0].evidence["nodes"][0]["node"] == "busy"
    assert mining[0].detected_at <= hours[start] + pd.Timedelta(hours=4)


def test_a_miner_that_a_later_scale_out_joins_stays_an_incident() -> None:
    """Issue 16 section 3, fresh seed 175: a miner pins the busy node at ~70% three days before the
    autoscaler adds nodes for a surge.  Read over the whole open episode, the added nodes' load lifted the
    project's demand enough to "explain" the plateau, and the alert vanished for a day while the miner ran.
    A plateau that began before the project was up is not inside the surge."""
    costs, usage = _autoscaled(3, seed=17, miner_at=SCALE_AT - 72)
    for after in (6, 24, 40):  # hourly runs inside the surge
        as_of = DAYS[0] + pd.Timedelta(hours=SCALE_AT + after)
        det = detect(costs, usage, Config(), as_of=as_of, since=as_of - pd.Timedelta(days=14))
        mining = [a for a in det.alerts if a.kind == "mining_suspected"]
        assert len(mining) == 1 and mining[0].evidence["nodes"][0]["node"] == "busy", after
        assert pd.Timestamp(mining[0].evidence["ongoing_until"]) >= as_of - pd.Timedelta(hours=2), after
