"""The scenario generator: frames the detectors can trust, labels that match the data, one seed one world."""

from __future__ import annotations

import re
from functools import cache

import numpy as np
import pandas as pd
import pytest

from costwatch.model import COST_COLUMNS, USAGE_COLUMNS, validate_costs, validate_usage
from costwatch.scenarios import INCIDENT_KINDS, Scenario, demo_scenario, generate

DAY = pd.Timedelta(days=1)
HOUR = pd.Timedelta(hours=1)
GPU_TYPES = ("p3.", "g4dn.", "g5.", "a2-highgpu", "g2-standard", "Standard_NC")


@cache
def _sc(seed: int = 3, kinds: tuple[str, ...] | None = None, clean: bool = False) -> Scenario:
    return generate(seed=seed, n_projects=14, days=42, incident_kinds=kinds, clean=clean)


@cache
def _demo() -> Scenario:
    return demo_scenario()


def _compute(costs: pd.DataFrame, pid: str, region: str | None = None) -> pd.Series:
    """Daily compute usage cost of one project (optionally one region), zero-filled per day."""
    c = costs[(costs["project_id"] == pid) & (costs["service_category"] == "Compute")
              & (costs["charge_category"] == "Usage")]
    if region is not None:
        c = c[c["region"] == region]
    return c.groupby("period_start")["effective_cost"].sum()


def _incident_usage(sc: Scenario, inc: pd.Series) -> pd.DataFrame:
    u = sc.usage
    return u[u["node"].isin(list(inc["nodes"])) & (u["timestamp"] >= inc["start"]) & (u["timestamp"] < inc["end"])]


def test_frames_follow_the_model() -> None:
    sc = _sc()
    validate_costs(sc.costs)
    validate_usage(sc.usage)
    assert {c: str(t) for c, t in sc.costs.dtypes.items()} == COST_COLUMNS
    assert {c: str(t) for c, t in sc.usage.dtypes.items()} == USAGE_COLUMNS
    assert list(sc.incidents.columns) == ["id", "kind", "project_id", "provider", "start", "end", "nodes", "region",
                                          "is_mining", "description"]
    assert {"project_id", "project_name", "provider", "owner", "has_usage", "first_day", "monthly_budget",
            "daily_threshold"} <= set(sc.projects.columns)
    c, u = sc.costs, sc.usage
    # daily rows at midnight UTC, hourly samples at the top of the hour, all inside [start, end)
    assert (c["period_start"] == c["period_start"].dt.floor("D")).all() and (c["period_hours"] == 24).all()
    assert (u["timestamp"] == u["timestamp"].dt.floor("h")).all()
    assert c["period_start"].min() >= sc.start and c["period_start"].max() == sc.end - DAY
    assert u["timestamp"].min() >= sc.start and u["timestamp"].max() == sc.end - HOUR
    assert not u.duplicated(["node", "timestamp"]).any()
    assert (u.groupby("node")["project"].nunique() == 1).all()  # node ids never collide across projects
    assert c.loc[c["estimated"], "period_start"].min() == sc.end - 2 * DAY
    assert set(c["currency"]) <= {"USD", "EUR"}
    assert c["tags"].map(lambda t: isinstance(t, dict)).all()
    assert (c.loc[c["charge_category"] == "Usage", "billed_cost"] > 0).all()


def test_projects_look_like_real_accounts() -> None:
    p = _sc().projects
    assert set(p["provider"]) == {"aws", "gcp", "azure"}
    assert p["project_id"].is_unique
    patterns = {"aws": r"\d{12}", "gcp": r"[a-z][a-z0-9-]{4,28}-\d{4}",
                "azure": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"}
    for prov, pid in zip(p["provider"], p["project_id"], strict=True):
        assert re.fullmatch(patterns[prov], pid), (prov, pid)
    assert (~p["has_usage"]).any() and p["has_usage"].any()
    no_usage = set(p.loc[~p["has_usage"], "project_id"])
    assert not no_usage & set(_sc().usage["project"])
    sc = _sc()
    new = p[p["first_day"] > sc.start]
    assert 1 <= len(new) <= 2
    assert ((sc.end - new["first_day"]) <= 10 * DAY).all()
    first_cost = sc.costs.groupby("project_id")["period_start"].min()
    assert (first_cost.reindex(new["project_id"]).to_numpy() == new["first_day"].to_numpy()).all()


def test_deterministic_for_a_seed() -> None:
    a = generate(seed=11, n_projects=6, days=30)
    b = generate(seed=11, n_projects=6, days=30)
    for x, y in ((a.costs, b.costs), (a.usage, b.usage), (a.incidents, b.incidents), (a.projects, b.projects)):
        pd.testing.assert_frame_equal(x, y)
    c = generate(seed=12, n_projects=6, days=30)
    assert not a.usage["cpu_utilization"].equals(c.usage["cpu_utilization"])


def test_clean_has_no_incidents_and_the_same_base_world() -> None:
    clean, labelled = _sc(clean=True), _sc()
    assert clean.incidents.empty
    assert list(clean.incidents.columns) == list(labelled.incidents.columns)
    assert len(labelled.incidents) >= 5
    untouched = set(labelled.projects["project_id"]) - set(labelled.incidents["project_id"])
    assert len(untouched) >= 3  # several clean projects next to the incidents
    for frame, key in (("costs", "project_id"), ("usage", "project")):
        x, y = getattr(clean, frame), getattr(labelled, frame)
        pd.testing.assert_frame_equal(x[x[key].isin(untouched)].reset_index(drop=True),
                                      y[y[key].isin(untouched)].reset_index(drop=True))


def test_incidents_leave_clean_history_and_one_per_project() -> None:
    inc = _sc().incidents
    assert inc["project_id"].is_unique
    assert set(inc["kind"]) == set(INCIDENT_KINDS)
    assert (inc["start"] >= _sc().end - 10 * DAY).all() and (inc["start"] >= _sc().start + 21 * DAY).all()
    assert (inc["end"] > inc["start"]).all() and (inc["end"] <= _sc().end).all()
    assert inc["is_mining"].tolist() == inc["kind"].str.startswith("mining").tolist()
    assert (inc["start"] == inc["start"].dt.floor("h")).all()


def test_demo_tells_its_story() -> None:
    sc = _demo()
    inc = sc.incidents
    assert {"mining_new_nodes", "mining_stealth", "benign_surge", "budget_breach"} <= set(inc["kind"])
    miner = inc[inc["kind"] == "mining_new_nodes"].iloc[0]
    proj = sc.costs[sc.costs["project_id"] == miner["project_id"]]
    before = proj[proj["period_start"] < miner["start"].floor("D")]
    assert miner["region"] not in set(before["region"])
    used = sc.usage[sc.usage["node"].isin(list(miner["nodes"]))]
    assert set(used["region"]) == {miner["region"]}
    assert used["instance_type"].map(lambda t: str(t).startswith(GPU_TYPES)).all()
    stealth = inc[inc["kind"] == "mining_stealth"].iloc[0]
    assert 55 <= _incident_usage(sc, stealth)["cpu_utilization"].median() <= 65
    budget = inc[inc["kind"] == "budget_breach"].iloc[0]
    assert sc.projects.set_index("project_id").loc[budget["project_id"], "monthly_budget"] > 0
    again = demo_scenario()
    pd.testing.assert_frame_equal(sc.incidents, again.incidents)
    pd.testing.assert_frame_equal(sc.costs, again.costs)


def test_miners_on_new_nodes_are_pinned_and_billed_in_their_region() -> None:
    kinds = ("mining_new_nodes",)
    sc, clean = _sc(5, kinds), _sc(5, kinds, clean=True)
    assert len(sc.incidents) >= 3
    for _, inc in sc.incidents.iterrows():
        u = sc.usage[sc.usage["node"].isin(list(inc["nodes"]))]
        assert 2 <= u["node"].nunique() <= 8
        assert u["timestamp"].min() == inc["start"]
        assert u["timestamp"].max() < inc["end"]  # they stop with the incident
        cpu = u["cpu_utilization"]
        assert cpu.min() >= 95 and cpu.median() >= 97 and cpu.std() < 1.5
        assert set(u["region"]) == {inc["region"]}
        day = inc["start"].floor("D") + DAY
        if day >= inc["end"]:
            continue
        now = _compute(sc.costs, inc["project_id"], inc["region"]).get(day, 0.0)
        was = _compute(clean.costs, inc["project_id"], inc["region"]).get(day, 0.0)
        assert now > was + 1.0
        rows = sc.costs[(sc.costs["project_id"] == inc["project_id"]) & (sc.costs["period_start"] == day)]
        ids = rows["resource_id"].dropna()
        assert all(ids.str.endswith(n).any() for n in inc["nodes"])


def test_cost_only_miners_show_in_a_new_region() -> None:
    sc = _sc(5, ("mining_cost_only",))
    assert len(sc.incidents) >= 1
    for _, inc in sc.incidents.iterrows():
        assert not sc.projects.set_index("project_id").loc[inc["project_id"], "has_usage"]
        proj = sc.costs[sc.costs["project_id"] == inc["project_id"]]
        assert inc["region"] not in set(proj.loc[proj["period_start"] < inc["start"].floor("D"), "region"])
        spend = _compute(sc.costs, inc["project_id"])
        day = inc["start"].floor("D") + DAY
        assert spend[day] > 1.3 * spend[spend.index < inc["start"].floor("D")].median()


def test_miners_on_existing_nodes_change_cpu_not_cost() -> None:
    kinds = ("mining_stealth", "mining_existing_nodes")
    sc, clean = _sc(7, kinds), _sc(7, kinds, clean=True)
    assert set(sc.incidents["kind"]) == set(kinds)
    for _, inc in sc.incidents.iterrows():
        pid = inc["project_id"]
        pd.testing.assert_frame_equal(sc.costs[sc.costs["project_id"] == pid].reset_index(drop=True),
                                      clean.costs[clean.costs["project_id"] == pid].reset_index(drop=True))
        cpu = _incident_usage(sc, inc)["cpu_utilization"]
        was = clean.usage[clean.usage["node"].isin(list(inc["nodes"]))
                          & (clean.usage["timestamp"] < inc["start"])]["cpu_utilization"]
        assert was.min() < 40  # they had a daily shape before
        if inc["kind"] == "mining_existing_nodes":
            assert cpu.min() >= 95
        else:
            level = float(re.search(r"capped at (\d+)%", inc["description"]).group(1))  # type: ignore[union-attr]
            assert 50 <= level <= 75
            assert cpu.min() >= level - 5
            assert abs(cpu.median() - level) < 5


def test_benign_surge_keeps_its_daily_shape_and_adds_nodes() -> None:
    kinds = ("benign_surge",)
    for seed in (2, 4):
        sc, clean = _sc(seed, kinds), _sc(seed, kinds, clean=True)
        assert len(sc.incidents) >= 3
        for _, inc in sc.incidents.iterrows():
            u = sc.usage[sc.usage["project"] == inc["project_id"]]
            first = u.groupby("node")["timestamp"].min()
            old = first[first < inc["start"] - 7 * DAY].index
            pool = u[u["node"].isin(old)].groupby("timestamp")["cpu_utilization"].mean()
            during = pool[(pool.index >= inc["start"]) & (pool.index < inc["end"])]
            prior = pool[(pool.index >= inc["start"] - 7 * DAY) & (pool.index < inc["start"])]
            a = during.groupby(during.index.hour).mean()
            b = prior.groupby(prior.index.hour).mean().reindex(a.index)
            assert np.corrcoef(a, b)[0, 1] > 0.8
            assert during.mean() > 1.2 * prior.mean()
            added = first[(first > inc["start"]) & (first < inc["end"])].index
            assert 1 <= len(added) <= 3 and set(added) <= set(inc["nodes"])
            assert u[u["node"].isin(added)]["cpu_utilization"].std() > 5  # the same daily shape, not a flat line
            day = inc["start"].floor("D") + DAY
            assert _compute(sc.costs, inc["project_id"])[day] > _compute(clean.costs, inc["project_id"])[day]


def test_planned_step_adds_capacity_for_good() -> None:
    sc = _sc(3, ("planned_step",))
    for _, inc in sc.incidents.iterrows():
        spend = _compute(sc.costs, inc["project_id"])
        before = spend[spend.index < inc["start"].floor("D")].iloc[-7:].mean()
        assert spend.iloc[-1] > 1.2 * before
        added = sc.usage[sc.usage["node"].isin(list(inc["nodes"]))]
        assert added["timestamp"].min() >= inc["start"] and added["timestamp"].max() == sc.end - HOUR
        assert added["cpu_utilization"].quantile(0.95) < 85


def _forecast(net: pd.Series, day: pd.Timestamp) -> float:
    """Month to date plus the last week's run rate for the rest of the month."""
    month = net[(net.index >= day.replace(day=1)) & (net.index <= day)]
    rate = net[(net.index > day - 7 * DAY) & (net.index <= day)].mean()
    return float(month.sum() + rate * (day.days_in_month - day.day))


def test_budget_breach_crosses_a_budget_set_just_above_normal() -> None:
    sc = _sc(3, ("budget_breach",))
    budgets = sc.projects.set_index("project_id")["monthly_budget"]
    assert len(sc.incidents) >= 3
    for _, inc in sc.incidents.iterrows():
        budget = budgets[inc["project_id"]]
        net = sc.costs[sc.costs["project_id"] == inc["project_id"]].groupby("period_start")["effective_cost"].sum()
        days = net.index[net.index >= sc.end - 30 * DAY]
        before = [_forecast(net, d) for d in days if d < inc["start"].floor("D")]
        assert max(before) <= budget < 1.3 * max(before)
        assert _forecast(net, sc.end - 3 * DAY) > budget


def test_credits_and_refunds_are_negative() -> None:
    c = _sc().costs
    credits = c[c["charge_category"].isin(["Credit", "Adjustment"])]
    assert (credits["charge_category"] == "Credit").any()
    assert (credits["effective_cost"] < 0).all() and (credits["billed_cost"] < 0).all()
    monthly = credits[credits["charge_category"] == "Credit"]
    assert (monthly["period_start"].dt.day == 1).all()


def test_batch_nodes_run_hot_at_the_same_hours_every_night() -> None:
    u = _sc(clean=True).usage
    hot = u[u["cpu_utilization"] >= 85]
    per_node = hot.groupby("node")["timestamp"].agg(lambda t: t.dt.hour.nunique())
    days_hot = hot.groupby("node")["timestamp"].agg(lambda t: t.dt.floor("D").nunique())
    batch = per_node[(per_node <= 4) & (days_hot >= 30)]
    assert len(batch) >= 1


@pytest.mark.parametrize("kinds", [("nonsense",), ("mining_new_nodes", "typo")])
def test_unknown_kinds_are_refused(kinds: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="unknown incident kind"):
        generate(n_projects=3, days=10, incident_kinds=kinds)


# ------------------------------------------------------------------------- failure classes (issue 16)

@cache
def _hard(seed: int = 5, clean: bool = False) -> Scenario:
    return generate(seed=seed, n_projects=40, days=120, failure_classes=True, clean=clean)


def test_failure_classes_are_opt_in_and_leave_default_worlds_alone() -> None:
    with pytest.raises(ValueError, match="failure_classes"):
        generate(seed=3, n_projects=14, days=42, incident_kinds=("cost_step",))
    kinds = set(_hard().incidents["kind"])
    assert {"saturating_surge", "legit_gpu_job", "mining_long", "cost_step", "cost_spike"} <= kinds
    # the plain generator draws exactly what it drew before the classes existed
    pd.testing.assert_frame_equal(_sc().costs, generate(seed=3, n_projects=14, days=42).costs)


def test_clean_world_carries_the_recurring_patterns_and_the_same_base() -> None:
    clean, labelled = _hard(clean=True), _hard()
    assert clean.incidents.empty
    assert {"month-end", "autoscaling", "deploy", "hot node"} <= set(clean.patterns["pattern"])
    pd.testing.assert_frame_equal(clean.patterns, labelled.patterns)
    month_end = clean.patterns[clean.patterns["pattern"] == "month-end"]["project_id"].iloc[0]
    daily = _compute(clean.costs, month_end)
    last_two = daily.index.days_in_month - daily.index.day <= 1
    ratio = daily[last_two].median() / daily[~last_two].median()
    assert 1.2 < ratio < 1.6  # compute x1.3-1.5 on the last two days of every month


def test_saturating_surge_caps_a_busy_node_inside_a_project_surge() -> None:
    sc = _hard()
    for _, inc in sc.incidents[sc.incidents["kind"] == "saturating_surge"].iterrows():
        hot = inc["nodes"][0]
        u = sc.usage[sc.usage["node"] == hot].set_index("timestamp")["cpu_utilization"]
        before = u[u.index < inc["start"] - DAY]
        assert 55 <= before.median() <= 78
        during = u[(u.index >= inc["start"]) & (u.index < inc["end"])]
        top = (during >= 98.5).to_numpy()
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, top.astype(int), 0])))[::2]
        assert runs.max() >= 2 and top.mean() < 0.25 and during.max() <= 100.0  # capped hours, not a plateau
        compute = _compute(sc.costs, inc["project_id"])
        surge = compute[inc["start"].floor("D"): inc["end"].floor("D")].max()
        assert surge > 1.2 * compute[: inc["start"] - 7 * DAY].tail(14).median()  # cost x1.3-1.6


def test_legit_training_jobs_look_legit_and_long_miners_run_to_the_end() -> None:
    sc = _hard()
    jobs = sc.incidents[sc.incidents["kind"] == "legit_gpu_job"]
    assert len(jobs)
    for _, inc in jobs.iterrows():
        pods = sc.pods[sc.pods["node"].isin(list(inc["nodes"]))]
        assert len(pods) == len(inc["nodes"])
        assert pods["labels"].map(lambda d: bool(d.get("owner"))).all()
        assert not pods["command"].str.contains("stratum").any()
        assert sc.usage[sc.usage["node"].isin(list(inc["nodes"]))]["instance_type"].str.startswith(GPU_TYPES).all()
    long = sc.incidents[sc.incidents["kind"] == "mining_long"]
    assert len(long) and long["is_mining"].all()
    assert ((long["end"] == sc.end) & (long["end"] - long["start"] >= 30 * DAY)).all()
    steps = sc.incidents[sc.incidents["kind"] == "cost_step"]
    assert len(steps) and (steps["end"] == sc.end).all()
