"""Monitors (``monitors:``): selectors over every key, templates and their cap, alerts with the monitor and
selector named, the same knobs as projects, owner routing through ``costwatch run`` to a Slack channel,
config errors naming the field, and nothing changed without monitors.

Selection is checked against an oracle written independently here (a plain Python predicate per row), on a
hand-built cost frame whose rows are each resource's daily spend."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from costwatch import monitors
from costwatch.cli import cli
from costwatch.config import Config, MonitorConfig, MonitorSelector, load_config, parse_config
from costwatch.demo import to_focus
from costwatch.detect import detect
from costwatch.errors import ConfigError
from costwatch.model import normalize_costs
from costwatch.run import run_once
from costwatch.state import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "monitors.example.yaml"
DAY0 = pd.Timestamp("2026-01-05", tz="UTC")
DAYS = 42
AS_OF = DAY0 + pd.Timedelta(days=DAYS)

# (resource, provider, project id, project name, service, category, region, tags, daily cost)
RESOURCES: list[tuple[str, str, str, str, str, str, str, dict[str, str], float]] = [
    ("r1", "aws", "111111111111", "payments-prod", "Amazon EC2", "Compute", "us-east-1",
     {"team": "payments", "env": "prod", "k8s-namespace": "checkout", "k8s-label/app": "web"}, 100.0),
    ("r2", "aws", "111111111111", "payments-prod", "Amazon S3", "Storage", "eu-west-1",
     {"team": "payments", "env": "prod"}, 40.0),
    ("r3", "gcp", "ml-sandbox", "ML sandbox", "Compute Engine", "Compute", "us-central1",
     {"team": "ml", "env": "dev", "namespace": "training", "kubernetes_label_app": "trainer"}, 60.0),
    ("r4", "gcp", "ml-sandbox", "ML sandbox", "BigQuery", "Analytics", "us-central1",
     {"team": "ml", "env": "dev"}, 25.0),
    ("r5", "azure", "sub-1", "Data platform", "Virtual Machines", "Compute", "westeurope",
     {"team": "data", "aws:eks:namespace": "ingest"}, 30.0),
    ("r6", "azure", "sub-1", "Data platform", "Storage", "Storage", "westeurope", {}, 10.0),
    ("r7", "aws", "222222222222", "web-staging", "Amazon EC2", "Compute", "us-east-1",
     {"team": "web", "env": "staging", "kubernetes.io/namespace": "checkout"}, 20.0),
]


def _frame(spike: dict[str, float] | None = None, days: int = DAYS, seed: int = 0) -> pd.DataFrame:
    """Every resource every day, with 3% noise; ``spike`` multiplies a resource's last two days."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(days):
        for rid, prov, pid, pname, svc, cat, region, tags, cost in RESOURCES:
            x = cost * float(rng.normal(1.0, 0.03))
            if spike and rid in spike and d >= days - 2:
                x *= spike[rid]
            rows.append({"period_start": DAY0 + pd.Timedelta(days=d), "period_hours": 24.0, "provider": prov,
                         "project_id": pid, "project_name": pname, "service": svc, "service_category": cat,
                         "region": region, "charge_category": "Usage", "resource_id": rid, "billed_cost": x,
                         "effective_cost": x, "currency": "USD", "tags": tags, "estimated": False})
    return normalize_costs(pd.DataFrame(rows))


def _oracle(costs: pd.DataFrame, keep: Callable[[dict[str, Any]], bool]) -> pd.Series:
    """Daily sum of the rows a plain per-row predicate keeps: the reference a monitor must equal."""
    mask = [keep(r) for r in costs.to_dict("records")]
    sub = costs[mask]
    return sub.groupby(sub["period_start"].dt.floor("D"))["effective_cost"].sum()


def _series(sel: monitors.Selection, name: str) -> pd.Series:
    rows = sel.costs.iloc[sel.n_base:]
    rows = rows[rows["project_id"] == monitors.PREFIX + name]
    return rows.groupby(rows["period_start"].dt.floor("D"))["effective_cost"].sum()


def _cfg(*entries: dict[str, Any], **extra: Any) -> Config:
    return Config.model_validate({"monitors": list(entries), **extra})


def _ns(r: dict[str, Any]) -> str | None:
    return next((r["tags"][k] for k in monitors.NAMESPACE_TAGS if r["tags"].get(k)), None)


CASES: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
    ({"provider": "aws"}, lambda r: r["provider"] == "aws"),
    ({"provider": ["GCP", "azure"]}, lambda r: r["provider"] in ("gcp", "azure")),
    ({"project": "111111111111"}, lambda r: r["project_id"] == "111111111111"),
    ({"project": ["ML sandbox", "sub-1"]}, lambda r: r["project_id"] in ("ml-sandbox", "sub-1")),
    ({"service": "Amazon EC2"}, lambda r: r["service"] == "Amazon EC2"),
    ({"service_category": ["Compute", "Analytics"]}, lambda r: r["service_category"] in ("Compute", "Analytics")),
    ({"region": "us-east-1"}, lambda r: r["region"] == "us-east-1"),
    ({"tags": {"team": "payments"}}, lambda r: r["tags"].get("team") == "payments"),
    ({"tags": {"team": ["ml", "data"], "env": "dev"}},
     lambda r: r["tags"].get("team") in ("ml", "data") and r["tags"].get("env") == "dev"),
    ({"namespace": "checkout"}, lambda r: _ns(r) == "checkout"),  # k8s-namespace and kubernetes.io/namespace
    ({"namespace": ["training", "ingest"]}, lambda r: _ns(r) in ("training", "ingest")),
    ({"labels": {"app": ["web", "trainer"]}},  # k8s-label/app (GKE) and kubernetes_label_app (Kubecost)
     lambda r: r["tags"].get("k8s-label/app") == "web" or r["tags"].get("kubernetes_label_app") == "trainer"),
    ({"service_category": "Compute", "region": ["us-east-1", "westeurope"], "tags": {"env": ["prod", "staging"]}},
     lambda r: r["service_category"] == "Compute" and r["region"] in ("us-east-1", "westeurope")
     and r["tags"].get("env") in ("prod", "staging")),
    ({}, lambda r: True),  # no selector: all spend
]


@pytest.mark.parametrize(("selector", "keep"), CASES, ids=[json.dumps(c[0], sort_keys=True) for c in CASES])
def test_selector_sums_exactly_the_rows_it_names(selector: dict[str, Any],
                                                 keep: Callable[[dict[str, Any]], bool]) -> None:
    costs = _frame()
    sel = monitors.select(costs, _cfg({"name": "m", "selector": selector}))
    want = _oracle(costs, keep)
    assert len(want) == DAYS
    pd.testing.assert_series_equal(_series(sel, "m"), want, check_names=False, check_freq=False)
    assert sel.monitors[0].selector == MonitorSelector.model_validate(selector).model_dump(exclude_defaults=True)


def test_credits_stay_credits_and_quiet_days_are_zero() -> None:
    costs = _frame(days=20)
    credit = costs.iloc[:1].assign(charge_category="Credit", effective_cost=-50.0, billed_cost=-50.0,
                                   period_start=DAY0 + pd.Timedelta(days=10))
    # r7 (team web) is not billed on day 12: the monitor's day is a real zero, not a gap
    gap = (costs["resource_id"] == "r7") & (costs["period_start"] == DAY0 + pd.Timedelta(days=12))
    # GCP's export lags: its last day is not published yet (a gap for its monitors, never a zero)
    lag = (costs["provider"] == "gcp") & (costs["period_start"] == DAY0 + pd.Timedelta(days=19))
    costs = pd.concat([costs[~gap & ~lag], credit], ignore_index=True)
    sel = monitors.select(costs, _cfg({"name": "pay", "selector": {"tags": {"team": "payments"}}},
                                      {"name": "web", "selector": {"tags": {"team": "web"}}},
                                      {"name": "ml", "selector": {"tags": {"team": "ml"}}}))
    rows = sel.costs.iloc[sel.n_base:]
    pay = rows[rows["project_id"] == "monitor:pay"]
    assert pay.loc[pay["charge_category"] == "Credit", "effective_cost"].tolist() == [-50.0]
    web = rows[rows["project_id"] == "monitor:web"].set_index("period_start")["effective_cost"]
    assert web[DAY0 + pd.Timedelta(days=12)] == 0.0 and len(web) == 20
    ml = rows[rows["project_id"] == "monitor:ml"]
    assert ml["period_start"].max() == DAY0 + pd.Timedelta(days=18) and (ml["effective_cost"] > 0).all()
    det = detect(costs, None, _cfg({"name": "pay", "selector": {"tags": {"team": "payments"}}}),
                 as_of=DAY0 + pd.Timedelta(days=20), now=DAY0 + pd.Timedelta(days=20))
    row = next(p for p in det.projects if p["project"] == "monitor:pay")
    assert row["credits"] == pytest.approx(-50.0)


def test_monitor_alert_names_monitor_and_selector_with_real_evidence(tmp_path: Path) -> None:
    costs = _frame(spike={"r3": 4.0})  # the training namespace's VM
    cfg = _cfg({"name": "training", "selector": {"namespace": "training"}, "owner": "ml-oncall"},
               {"name": "payments", "selector": {"tags": {"team": "payments"}}})
    det = detect(costs, None, cfg, as_of=AS_OF, now=AS_OF)
    mine = [a for a in det.alerts if a.project == "monitor:training"]
    assert [a.kind for a in mine] == ["cost_spike"]
    a = mine[0]
    assert a.evidence["monitor"] == "training" and a.evidence["selector"] == {"namespace": ["training"]}
    assert a.summary.startswith("monitor training: ") and a.provider == monitors.PROVIDER
    assert a.project_name == "training" and a.observed == pytest.approx(240.0, rel=0.1)
    # evidence from the real rows: the service and the resource that made the excess
    assert a.evidence["services"][0]["service"] == "Compute Engine"
    assert a.evidence["top_resources"][0]["resource_id"] == "r3"
    assert not any(a.project == "monitor:payments" for a in det.alerts)
    # the project sees the same spike; no monitor ever raises a mining alert
    assert any(a.project == "ml-sandbox" and a.kind == "cost_spike" for a in det.alerts)
    assert not any(monitors.is_monitor(a.project) and a.kind == "mining_suspected" for a in det.alerts)
    # the report lists the monitor like a project, marked as one, with its owner
    row = next(p for p in det.projects if p["project"] == "monitor:training")
    assert row["monitor"] == "training" and row["selector"] == {"namespace": ["training"]}
    assert row["owner"] == "ml-oncall" and row["provider"] == "monitor"
    # its chart is drawn from the monitor's own series
    from costwatch.charts import alert_chart

    png = alert_chart(det, a, tmp_path / "training.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_monitor_knobs_threshold_budget_and_min_impact() -> None:
    costs = _frame(spike={"r1": 1.5, "r3": 2.0})  # checkout's EC2 +50 a day (120 -> 170), ml's VM +60
    cfg = _cfg({"name": "quiet", "selector": {"namespace": "checkout"}, "min_impact": 500},
               {"name": "deaf", "selector": {"namespace": "checkout"}, "sensitivity": 0.25},
               {"name": "loud", "selector": {"namespace": "checkout"}, "sensitivity": 4},
               {"name": "capped", "selector": {"tags": {"team": "ml"}}, "daily_threshold": 100,
                "monthly_budget": 1000})
    det = detect(costs, None, cfg, as_of=AS_OF, now=AS_OF)
    kinds = {(a.project, a.kind) for a in det.alerts if monitors.is_monitor(a.project)}
    assert ("monitor:loud", "cost_spike") in kinds
    assert not any(p in ("monitor:quiet", "monitor:deaf") for p, _ in kinds)  # same rows, other knobs
    assert ("monitor:capped", "threshold_exceeded") in kinds  # 85 -> 145 a day, over 100
    assert ("monitor:capped", "budget_forecast_exceeded") in kinds  # ~2,600 a month over 1,000
    over = next(a for a in det.alerts if a.project == "monitor:capped" and a.kind == "threshold_exceeded")
    assert over.evidence["monitor"] == "capped" and over.upper == 100


def test_templates_expand_per_value_with_owner_and_selector() -> None:
    costs = _frame()
    sel = monitors.select(costs, _cfg({"name": "team-{value}", "for_each": "tag:team", "owner": "{value}-oncall",
                                       "selector": {"provider": ["aws", "gcp", "azure"]}}))
    names = sorted(m.config.name for m in sel.monitors)
    assert names == ["team-data", "team-ml", "team-payments", "team-web"]
    ml = next(m for m in sel.monitors if m.config.name == "team-ml")
    assert ml.config.owner == "ml-oncall" and ml.template == "team-{value}"
    assert ml.selector == {"provider": ["aws", "gcp", "azure"], "tags": {"team": ["ml"]}}
    pd.testing.assert_series_equal(_series(sel, "team-ml"), _oracle(costs, lambda r: r["tags"].get("team") == "ml"),
                                   check_names=False, check_freq=False)
    for dim, want in [("namespace", {"ns-checkout", "ns-training", "ns-ingest"}),
                      ("label:app", {"ns-web", "ns-trainer"}),
                      ("service_category", {"ns-Compute", "ns-Storage", "ns-Analytics"}),
                      ("region", {"ns-us-east-1", "ns-eu-west-1", "ns-us-central1", "ns-westeurope"}),
                      ("project", {"ns-111111111111", "ns-222222222222", "ns-ml-sandbox", "ns-sub-1"}),
                      ("provider", {"ns-aws", "ns-gcp", "ns-azure"})]:
        got = monitors.select(costs, _cfg({"name": "ns-{value}", "for_each": dim}))
        assert {m.config.name for m in got.monitors} == want, dim


def test_template_cap_keeps_the_largest_and_says_what_it_dropped() -> None:
    costs = _frame()
    sel = monitors.select(costs, _cfg({"name": "team-{value}", "for_each": "tag:team", "max_monitors": 2}))
    # spend per team: payments 140, ml 85, data 30, web 20 a day
    assert sorted(m.config.name for m in sel.monitors) == ["team-ml", "team-payments"]
    (note,) = [n for n in sel.notes if "team-{value}" in n]
    assert "4 values of tag:team" in note and "max_monitors (2)" in note
    assert "kept the 2 with the largest spend (payments, ml)" in note and "dropped 2" in note
    assert "data, web" in note
    det = detect(costs, None, _cfg({"name": "team-{value}", "for_each": "tag:team", "max_monitors": 2}),
                 as_of=AS_OF, now=AS_OF)
    assert note in det.notes


def test_monitor_matching_nothing_is_a_note_not_a_failure() -> None:
    costs = _frame()
    cfg = _cfg({"name": "mars", "selector": {"region": "mars-north-1"}},
               {"name": "ghost-{value}", "for_each": "tag:squad"}, {"name": "all"})
    det = detect(costs, None, cfg, as_of=AS_OF, now=AS_OF)
    assert any(n.startswith("monitor mars: no cost rows match its selector (region: ['mars-north-1'])")
               for n in det.notes)
    assert any(n.startswith("monitor template ghost-{value}: no values of tag:squad") for n in det.notes)
    assert [p["project"] for p in det.projects if p.get("monitor")] == ["monitor:all"]
    # no cost data at all: a note too
    empty = detect(costs.iloc[:0], None, cfg, as_of=AS_OF, now=AS_OF)
    assert any("3 monitor(s) configured, but there is no cost data" in n for n in empty.notes)


def test_without_monitors_nothing_changes() -> None:
    costs = _frame(spike={"r3": 4.0, "r5": 3.0})
    sel = monitors.select(costs, Config())
    assert sel.costs is costs and sel.config.projects == {} and not sel.notes
    plain = detect(costs, None, Config(), as_of=AS_OF, now=AS_OF)
    both = detect(costs, None, _cfg({"name": "team-{value}", "for_each": "tag:team"}), as_of=AS_OF, now=AS_OF)

    def own(det: Any) -> list[tuple[str, str, float, str]]:
        return sorted((a.fingerprint, a.kind, round(a.observed, 6), a.summary) for a in det.alerts
                      if not monitors.is_monitor(a.project))

    assert own(plain) == own(both) and own(plain)
    assert [p for p in both.projects if not p.get("monitor")] == plain.projects
    assert plain.config is not None and plain.config.projects == {}


@pytest.mark.parametrize(("text", "where", "what"), [
    ("monitors:\n  - name: a\n  - name: b\n    selector: {regoin: x}\n", "monitors[1].selector.regoin",
     "did you mean 'region'"),
    ("monitors:\n  - name: a\n  - name: b\n  - name: c\n  - name: d\n    selector: {region: []}\n",
     "monitors[3].selector.region", "an empty list matches nothing"),
    ("monitors:\n  - name: a\n    selector: {region: {x: 1}}\n", "monitors[0].selector.region",
     "a string or a list of strings"),
    ("monitors:\n  - name: a\n    selector: {tags: {team: [x, [y]]}}\n", "monitors[0].selector.tags.team[1]",
     "a valid string"),
    ("monitors:\n  - name: team-{value}\n    for_each: tags:team\n", "monitors[0].for_each", "tag:<key>"),
    ("monitors:\n  - name: team\n    for_each: tag:team\n", "monitors[0]", "'{value}' in its name"),
    ("monitors:\n  - name: team-{value}\n", "monitors[0]", "needs for_each"),
    ("monitors:\n  - name: a\n  - name: a\n", "monitors", "monitors[1].name repeats monitors[0].name"),
    ("monitors:\n  - name: a\n    tags: {team: x}\n", "monitors[0]", "go under 'selector:'"),
    ("monitors:\n  - selector: {region: x}\n", "monitors[0].name", "required"),
    ("monitors:\n  - name: a\n    sensitivity: 9\n", "monitors[0].sensitivity", "less than or equal to 4"),
    ("monitors:\n  - name: a\n    max_monitors: 0\n", "monitors[0].max_monitors", "greater than or equal to 1"),
])
def test_config_errors_name_the_field(text: str, where: str, what: str) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, source="c.yaml")
    msg = str(ei.value)
    assert f": {where}: " in msg and what in msg, msg
    assert msg.startswith("c.yaml, line ")


def test_example_config_is_accepted_and_documents_every_key() -> None:
    r = CliRunner().invoke(cli, ["check-config", str(EXAMPLE)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    cfg = load_config(EXAMPLE)
    assert f"{len(cfg.monitors)} monitor(s)" in r.output and len(cfg.monitors) >= 4
    text = EXAMPLE.read_text(encoding="utf-8")
    for model in (MonitorConfig, MonitorSelector):
        for name in model.model_fields:
            if name != "tags" or model is MonitorSelector:  # a monitor's tags live in its selector
                assert f"{name}:" in text, f"{model.__name__}.{name} undocumented"


def test_duckdb_engine_keeps_the_tags_monitors_read(tmp_path: Path) -> None:
    pytest.importorskip("duckdb")
    from costwatch.providers.files import from_config

    to_focus(_frame(days=3)).to_csv(tmp_path / "costs.csv", index=False)
    cfg = parse_config(f"providers: [{{type: files, costs: {tmp_path / 'costs.csv'}, engine: duckdb}}]\n"
                       "monitors:\n  - {name: 'ns-{value}', for_each: namespace}\n"
                       "  - {name: apps, selector: {labels: {app: web}, tags: {env: prod}}}\n")
    provider = from_config(cfg.providers[0], cfg)
    costs = provider.fetch_costs()
    sel = monitors.select(costs, cfg)
    assert {m.config.name for m in sel.monitors} == {"ns-checkout", "ns-training", "ns-ingest", "apps"}
    assert _series(sel, "apps").sum() == pytest.approx(costs[costs["resource_id"] == "r1"]["effective_cost"].sum())


# ------------------------------------------------------------------------------- through `costwatch run`

@pytest.fixture
def slack() -> Iterator[Any]:
    from fake_slack import FakeSlack

    with FakeSlack() as fake:
        yield fake


def test_run_routes_a_monitor_alert_to_its_owner(slack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    to_focus(_frame(spike={"r5": 5.0})).to_csv(tmp_path / "costs.csv", index=False)  # the ingest namespace
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
    doc = {
        "providers": [{"type": "files", "costs": str(tmp_path / "costs.csv")}],
        "monitors": [{"name": "ns-{value}", "for_each": "namespace", "owner": "{value}-team"}],
        "owners": {"ingest-team": {"slack_channel": "C0TEAM", "slack_mention": "S0INGEST"}},
        "alerting": {"repeat_interval": "4h"},
        "notify": {"slack": {"token": "${SLACK_BOT_TOKEN}", "channel": "C0ALERTS", "api_url": slack.api_url,
                             "timeout": 2}, "stdout": False},
        "state": {"path": str(tmp_path / "state.db")},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    cfg = load_config(tmp_path / "c.yaml")
    at = AS_OF + pd.Timedelta(hours=2)
    res = run_once(cfg, now=at, as_of=at, charts=False, sleep=lambda s: None)
    assert res.delivery.pending == 0 and not res.delivery.errors
    to_owner = [c.params for c in slack.calls("chat.postMessage") if c.params.get("channel") == "C0TEAM"]
    assert len(to_owner) == 1
    raw = json.dumps(to_owner[0])
    assert "monitor ns-ingest" in raw and "<!subteam^S0INGEST>" in raw
    # its incident is fed by the provider that delivered its projects: a failed export holds it open
    store = SqliteStore(tmp_path / "state.db")
    try:
        docs = [r.doc for r in store.scan("incident")]
    finally:
        store.close()
    mine = [d for d in docs if any(a.get("project") == "monitor:ns-ingest" for a in d.get("alerts", []))]
    assert len(mine) == 1 and mine[0]["feeds"] == ["files:costs"]
    # the project's own alert goes where a project without an owner goes: the default channel
    default = json.dumps([c.params for c in slack.calls("chat.postMessage") if c.params.get("channel") == "C0ALERTS"])
    assert "Data platform" in default and "monitor ns-ingest" not in default
    # the report names the same owner for the monitor's row
    r = CliRunner().invoke(cli, ["report", "--config", str(tmp_path / "c.yaml"), "--as-of", at.isoformat(),
                                 "--format", "json"], catch_exceptions=False)
    rep = json.loads(r.output)
    row = next(p for p in rep["projects"] if p["project"] == "monitor:ns-ingest")
    assert row["owner"] == "ingest-team" and row["monitor"] == "ns-ingest"
    # the currency totals count each project's spend once, not again through its monitors
    spend = sum(p["spend"] for p in rep["projects"] if not p.get("monitor") and p.get("spend") is not None)
    assert rep["totals"][0]["spend"] == pytest.approx(spend)
