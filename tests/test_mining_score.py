"""Mining severity follows the evidence: a lone CPU plateau is a warning, the same plateau joined by spend, new
nodes, a new region, GPUs, miner pods or GuardDuty is critical, and a training job on owned new GPU nodes is
reported at a lower severity with what was seen (issue 16)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from costwatch.alerts import Alert
from costwatch.config import Config
from costwatch.detect import detect
from costwatch.mining_score import rescore, score, signals
from costwatch.model import normalize_costs, normalize_usage
from costwatch.providers.kubernetes import attach
from costwatch.providers.kubernetes.nodes import NodeIdentity
from costwatch.providers.kubernetes.posture import ClusterContext, ContainerView, NodeView, PodView
from costwatch.providers.kubernetes.signs import Sign

HOURS = pd.date_range("2026-10-01", periods=24 * 21, freq="h", tz="UTC")
START = 24 * 18 + 4
PID = "123456789012"


def _node(name: str, *, signal: str = "pinned", new: bool = False, gpu: bool = False, owner: str | None = None,
          cpu: float = 99.0) -> dict[str, object]:
    return {"node": name, "cpu": cpu, "signal": signal, "new": new, "gpu": gpu, "owner": owner,
            "instance_type": "p3.2xlarge" if gpu else "m5.large", "cluster": None}


def _sev(**ev: object) -> tuple[str, float]:
    _, p, sev = score(signals(dict(ev)))
    return sev, p


def test_severity_follows_the_evidence() -> None:
    lone_pinned = _sev(nodes=[_node("i-1")])
    lone_plateau = _sev(nodes=[_node("i-1", signal="plateau", cpu=60.0)])
    assert lone_pinned[0] == "warning" and lone_plateau[0] == "warning"
    assert lone_plateau[1] < lone_pinned[1] < 0.75
    cost = {"service": "Compute", "day": pd.Timestamp("2026-10-19")}
    for extra in ({"cost": cost}, {"new_regions": ["ap-southeast-3"]},
                  {"guardduty": [{"type": "CryptoCurrency:EC2/BitcoinTool.B!DNS", "severity": 8.0}]}):
        assert _sev(nodes=[_node("i-1", signal="plateau", cpu=60.0)], **extra)[0] == "critical", extra
    assert _sev(nodes=[_node("i-1", new=True)])[0] == "critical"          # new nodes nobody owns
    assert _sev(nodes=[_node("i-1", gpu=True)])[0] == "critical"          # an existing GPU node pinned
    # a flat line that has held for a day is decoupled from any daily demand: more than a warning
    assert _sev(nodes=[_node("i-1") | {"flat_hours": 30}])[0] == "high"
    assert _sev(nodes=[_node("i-1", new=True, owner="ml") | {"flat_hours": 30}])[0] == "info"  # no shape of its own
    # before billing tells who owns them, new GPU nodes in the home region are high, not critical
    unbilled = [_node("i-1", new=True, gpu=True) | {"billed": False}]
    assert _sev(nodes=unbilled)[0] == "high"
    assert _sev(nodes=unbilled, new_regions=["ap-southeast-3"])[0] == "critical"
    # without a CPU signature, a finding or a miner pod, spend in a new region is at most high
    assert _sev(cost_alert="abc", new_regions=[{"region": "ap-southeast-3", "cost": 10.0}])[0] == "high"


def test_a_training_job_on_owned_new_gpu_nodes_is_not_critical() -> None:
    owned = [_node(f"i-{k}", new=True, gpu=True, owner="ml-team") for k in range(3)]
    cost = {"service": "Compute", "day": pd.Timestamp("2026-10-19")}
    sev, p = _sev(nodes=owned, cost=cost)
    assert sev == "warning" and p < 0.75
    a = _alert(nodes=owned, cost=cost)
    rescore(a)
    assert "planned job" in a.evidence["verdict"]
    names = {s["signal"]: s["weight"] for s in a.evidence["score_signals"]}
    assert names["owned_new_nodes"] < 0 and "new_nodes" not in names and "gpu" not in names
    # the same nodes without owner labels are a miner's
    assert _sev(nodes=[_node(f"i-{k}", new=True, gpu=True) for k in range(3)], cost=cost)[0] == "critical"


def _alert(**ev: object) -> Alert:
    return Alert(kind="mining_suspected", project=PID, project_name="p", provider="aws",
                 start=HOURS[START], detected_at=HOURS[START + 2], severity="warning", observed=99.0,
                 expected=30.0, lower=0.0, upper=50.0, currency="USD", score=0.0, scope="mining", evidence=dict(ev))


def _ctx(pod_signs: list[Sign]) -> ClusterContext:
    node = NodeView(NodeIdentity("ip-10-0-0-1", "aws", "i-1", frozenset({"ip-10-0-0-1", "i-1"})), pods=1)
    pod = PodView(namespace="default", name="worker-0", node="ip-10-0-0-1", phase="Running",
                  created=datetime(2026, 10, 19, 3, 30, tzinfo=UTC),
                  containers=[ContainerView("c", "registry.example.com/app:1", "container", 1.0, 2.0, None, None)],
                  signs=pod_signs)
    return ClusterContext(name="prod", nodes=[node], pods=[pod])


def test_kubernetes_evidence_rescores_the_alert_when_attached() -> None:
    a = rescore(_alert(nodes=[_node("i-1")]))
    assert a.severity == "warning"
    attach([a], [_ctx([Sign("miner image: xmrig", 3)])])
    assert a.severity == "critical" and a.score >= 0.9
    assert a.evidence["score_signals"][0]["signal"] == "kubernetes_miner"
    clean = rescore(_alert(nodes=[_node("i-1", new=True, owner="ml-team")]))
    before = clean.score
    attach([clean], [_ctx([])])
    assert clean.score < before and clean.severity == "info"
    assert {s["signal"] for s in clean.evidence["score_signals"]} >= {"kubernetes_clean", "owned_new_nodes"}


def _frames(*, owner: bool, new_region: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A project with three shaped nodes and, from START, two new pinned p3 nodes (GPU)."""
    rng = np.random.default_rng(5)
    h = HOURS.hour.to_numpy()
    rows = []
    for k in range(3):
        v = np.clip(12 + 25 * np.exp(-0.5 * ((h - 14) / 3.5) ** 2) + rng.normal(0, 3, len(HOURS)), 0, 100)
        rows.append(pd.DataFrame({"timestamp": HOURS, "node": f"i-old{k}", "cpu_utilization": v,
                                  "region": "us-east-1", "instance_type": "m5.large"}))
    for k in range(2):
        rows.append(pd.DataFrame({"timestamp": HOURS[START:], "node": f"i-gpu{k}",
                                  "cpu_utilization": 98 + rng.normal(0, 0.4, len(HOURS) - START),
                                  "region": "eu-north-1" if new_region else "us-east-1",
                                  "instance_type": "p3.2xlarge"}))
    usage = normalize_usage(pd.concat(rows, ignore_index=True).assign(provider="aws", project=PID, cluster="prod"))
    days = pd.date_range(HOURS[0], HOURS[-1].floor("D"), freq="D")
    tags = {"owner": "ml-team@example.com", "team": "ml"}
    cost = []
    for d in days:
        for k in range(3):
            cost.append({"period_start": d, "resource_id": f"i-old{k}", "effective_cost": 10.0 + rng.normal(0, 0.3),
                         "region": "us-east-1", "tags": dict(tags)})
        if d >= HOURS[START].floor("D"):
            for k in range(2):
                cost.append({"period_start": d, "resource_id": f"i-gpu{k}", "effective_cost": 73.0,
                             "region": "eu-north-1" if new_region else "us-east-1",
                             "tags": dict(tags) if owner else {}})
    costs = pd.DataFrame(cost).assign(provider="aws", project_id=PID, project_name="ml", service="AmazonEC2",
                                      service_category="Compute", charge_category="Usage", currency="USD",
                                      billed_cost=lambda f: f["effective_cost"], period_hours=24.0)
    return normalize_costs(costs), normalize_usage(usage)


@pytest.mark.parametrize("owner, new_region, expected", [(True, False, {"warning", "info"}),
                                                          (False, False, {"critical"}),
                                                          (True, True, {"critical"})])
def test_new_gpu_nodes_end_to_end(owner: bool, new_region: bool, expected: set[str]) -> None:
    costs, usage = _frames(owner=owner, new_region=new_region)
    det = detect(costs, usage, Config(), as_of=HOURS[-1] + pd.Timedelta(hours=1), since=pd.Timedelta(days=7))
    mining = [a for a in det.alerts if a.kind == "mining_suspected"]
    assert len(mining) == 1
    a = mining[0]
    assert a.severity in expected, a.evidence["score_signals"]
    assert 0.0 < a.score < 1.0 and a.evidence["score_signals"]
    assert {n["node"] for n in a.evidence["nodes"]} == {"i-gpu0", "i-gpu1"}
    assert all(n["owner"] == ("ml-team@example.com" if owner else None) for n in a.evidence["nodes"])
    if owner and not new_region:
        assert "labelled owner ml-team@example.com" in a.summary
        # three hours in, no billing row says who owns the nodes yet: high, not a critical page
        early = detect(costs, usage, Config(), as_of=HOURS[START + 3], since=pd.Timedelta(days=7))
        first = next(x for x in early.alerts if x.kind == "mining_suspected")
        assert first.severity == "high"
        assert "new_nodes_unbilled" in {x["signal"] for x in first.evidence["score_signals"]}


def test_a_miner_running_for_a_month_stays_active_in_hourly_runs_and_resolves_when_it_stops() -> None:
    """Replays run.py's view (a 14-day alert window) as of days 2..34 of a miner on an existing node: it is
    active at every run while it runs, whatever the window, and not any more once the CPU is back."""
    from costwatch.incidents import is_active

    hours = pd.date_range("2026-08-01", periods=24 * 60, freq="h", tz="UTC")
    start, stop = 24 * 20 + 9, 24 * 54 + 9
    rng = np.random.default_rng(8)
    h = hours.hour.to_numpy()
    frames = []
    for k in range(3):
        v = np.clip(12 + 25 * np.exp(-0.5 * ((h - 14) / 3.5) ** 2) + rng.normal(0, 3, len(hours)), 0, 100)
        if k == 0:
            v[start:stop] = 98.5 + rng.normal(0, 0.4, stop - start)
        frames.append(pd.DataFrame({"timestamp": hours, "node": f"i-{k}", "cpu_utilization": v}))
    usage = normalize_usage(pd.concat(frames, ignore_index=True).assign(provider="aws", project=PID))
    grace = pd.Timedelta(days=1, hours=2)
    for day in (2, 6, 10, 15, 20, 28, 33):
        at = hours[start] + pd.Timedelta(days=day)
        det = detect(pd.DataFrame(), usage, Config(), as_of=at, since=at - pd.Timedelta(days=14))
        mining = [a for a in det.alerts if a.kind == "mining_suspected"]
        assert len(mining) == 1 and is_active(mining[0], at, grace), (day, [a.evidence for a in mining])
        assert mining[0].start == hours[start] and mining[0].detected_at <= hours[start + 2]
    at = hours[stop] + pd.Timedelta(hours=6)
    det = detect(pd.DataFrame(), usage, Config(), as_of=at, since=at - pd.Timedelta(days=14))
    mining = [a for a in det.alerts if a.kind == "mining_suspected"]
    assert len(mining) == 1 and not is_active(mining[0], at, grace)
    assert pd.Timestamp(mining[0].evidence["ongoing_until"]) <= hours[stop] + pd.Timedelta(hours=2)
