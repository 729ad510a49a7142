"""costwatch watching itself: each run's metrics document, its Prometheus forms (`costwatch metrics`, the
node-exporter textfile of `costwatch run --metrics-textfile`, `GET /metrics` of `costwatch serve`) and the
shipped alert rules, which must only use names the exporter really emits."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from costwatch import metrics
from costwatch.cli import cli
from costwatch.demo import to_focus
from costwatch.scenarios import Scenario, generate

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy" / "prometheus" / "costwatch-rules.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, Path]:
    sc = generate(seed=10, n_projects=3, days=45, incident_kinds=("mining_new_nodes",))
    d = tmp_path_factory.mktemp("metrics-data")
    to_focus(sc.costs).to_csv(d / "costs.csv", index=False)
    u = sc.usage.copy()
    u["timestamp"] = u["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    u.to_csv(d / "usage.csv", index=False)
    return sc, d


def write_config(d: Path, tmp: Path, costs: str = "costs.csv", usage: str = "usage.csv") -> Path:
    doc = {"providers": [{"type": "files", "costs": str(d / costs), "usage": str(d / usage)}],
           "notify": {"stdout": True}, "state": {"path": str(tmp / "state.db")}}
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def names(text: str) -> set[str]:
    return {fam.name for fam in text_string_to_metric_families(text)}


def at(sc: Scenario) -> pd.Timestamp:
    inc = sc.incidents[sc.incidents["provider"] == "gcp"].iloc[0]
    return pd.Timestamp(inc.start) + pd.Timedelta(hours=3)


def test_run_records_metrics_printed_and_written_as_a_textfile(data: tuple[Scenario, Path], tmp_path: Path) -> None:
    sc, d = data
    cfg = write_config(d, tmp_path)
    prom = tmp_path / "textfile" / "costwatch.prom"
    prom.parent.mkdir()
    assert invoke("metrics", "--config", str(cfg)).exit_code == 1  # no run yet

    ran = invoke("run", "--config", str(cfg), "--as-of", at(sc).isoformat(), "--no-charts",
                 "--metrics-textfile", str(prom))
    assert ran.exit_code == 0, ran.output
    shown = invoke("metrics", "--config", str(cfg))
    assert shown.exit_code == 0
    text = shown.output
    assert names(text) == {n.removesuffix("_total") for n in metrics.METRICS}
    assert all(n.startswith("costwatch_") for n in names(text))
    got = samples(text)
    assert got[("costwatch_run_success", ())] == 1
    assert got[("costwatch_run_duration_seconds", ())] > 0
    assert got[("costwatch_last_success_timestamp_seconds", ())] == got[("costwatch_last_run_timestamp_seconds", ())]
    mining = [v for (n, lab), v in got.items()
              if n == "costwatch_alerts_active" and ("kind", "mining_suspected") in lab]
    assert mining and sum(mining) >= 1
    # freshness per provider: the replayed run is hours after the newest CPU hour, within a day or two of costs
    usage_age = got[("costwatch_data_age_seconds", (("data", "usage"), ("provider", "gcp")))]
    cost_age = got[("costwatch_data_age_seconds", (("data", "cost"), ("provider", "gcp")))]
    assert 0 <= usage_age <= 6 * 3600 and 0 <= cost_age <= 3 * 86400
    assert got[("costwatch_outbox_items", (("state", "delivered"),))] >= 1
    assert got[("costwatch_outbox_items", (("state", "failed"),))] == 0
    # the textfile is the same exposition, and no temporary file is left next to it
    assert samples(prom.read_text()) == got
    assert [p.name for p in prom.parent.iterdir()] == ["costwatch.prom"]


def test_a_failed_run_is_recorded_and_keeps_the_last_success(data: tuple[Scenario, Path], tmp_path: Path) -> None:
    sc, d = data
    cfg = write_config(d, tmp_path)
    assert invoke("run", "--config", str(cfg), "--as-of", at(sc).isoformat(), "--no-charts").exit_code == 0
    before = samples(invoke("metrics", "--config", str(cfg)).output)
    write_config(d, tmp_path, costs="missing.csv", usage="missing.csv")  # the only provider fails: the run fails
    prom = tmp_path / "costwatch.prom"
    failed = invoke("run", "--config", str(cfg), "--as-of", at(sc).isoformat(), "--no-charts",
                    "--metrics-textfile", str(prom))
    assert failed.exit_code == 2
    after = samples(prom.read_text())
    assert after[("costwatch_run_success", ())] == 0
    last_success = ("costwatch_last_success_timestamp_seconds", ())
    assert after[last_success] == before[last_success]
    assert after[("costwatch_last_run_timestamp_seconds", ())] >= before[("costwatch_last_run_timestamp_seconds", ())]
    # what the last run saw of the data is kept, so the freshness rule keeps working
    assert any(n == "costwatch_data_age_seconds" for n, _ in after)


def test_serve_exposes_metrics(data: tuple[Scenario, Path], tmp_path: Path) -> None:
    pytest.importorskip("slack_bolt")
    from fake_slack import FakeSlack

    from costwatch.config import parse_config
    from costwatch.state import open_store
    from costwatch.surfaces.serve import asgi_app

    sc, d = data
    path = write_config(d, tmp_path)

    def get(app: Any) -> tuple[int, dict[bytes, bytes], bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(msg: Any) -> None:
            sent.append(dict(msg))

        asyncio.run(app({"type": "http", "method": "GET", "path": "/metrics", "headers": []}, receive, send))
        return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])

    with FakeSlack() as slack:
        cfg = parse_config(f"notify:\n  stdout: false\n  slack:\n    token: {slack.token}\n    channel: '#alerts'\n"
                           f"    api_url: {slack.api_url}\n    signing_secret: s3cret\n"
                           f"state:\n  path: {tmp_path / 'state.db'}\n")
        store = open_store(cfg.state)
        try:
            app = asgi_app(cfg, store)
            status, _, _ = get(app)
            assert status == 503  # no run recorded yet
            assert invoke("run", "--config", str(path), "--as-of", at(sc).isoformat(), "--no-charts").exit_code == 0
            status, headers, body = get(app)
        finally:
            store.close()
    assert status == 200 and headers[b"content-type"].startswith(b"text/plain; version=")
    assert samples(body.decode())[("costwatch_run_success", ())] == 1


def test_alert_rules_parse_and_use_emitted_metrics() -> None:
    doc = yaml.safe_load(RULES.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules}
    assert {"CostwatchNoSuccessfulRun", "CostwatchDataStale", "CostwatchOutboxStuck"} <= set(alerts)
    emitted = names(metrics.text({"finished_at": 1.0, "success": True, "broken_channels": ["slack"],
                                  "data_end": {"aws": {"cost": 0.0}}, "alerts": [["cost_spike", "high", 1]],
                                  "provider_errors": {"aws": 1}, "provider_requests": {"aws": {"ce_requests": 2}},
                                  "cost_explorer_requests": {"aws": 2}}))
    for r in rules:
        assert set(r) >= {"alert", "expr", "labels", "annotations"}
        used = set(re.findall(r"\bcostwatch_[a-z_]+", r["expr"]))
        assert used and used <= emitted, (r["alert"], used - emitted)
    assert "3 * 3600" in alerts["CostwatchNoSuccessfulRun"]["expr"]
    assert "48 * 3600" in alerts["CostwatchDataStale"]["expr"]
