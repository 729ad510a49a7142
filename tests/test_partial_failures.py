"""Issue 15, through the real command line: GuardDuty evidence as plain JSON in every report format, and
partial failures (a cloud part denied, one of two exports missing) that cost only the data that failed.

Clouds are the local fakes (the GuardDuty REST server of ``test_aws_guardduty``, moto, the GCP fakes);
nothing here mocks costwatch's own functions."""

from __future__ import annotations

import copy
import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner, Result

from costwatch.cli import cli
from costwatch.demo import demo_config, demo_config_yaml
from costwatch.detect import detect
from costwatch.scenarios import demo_scenario

NOW = pd.Timestamp("2024-03-10 12:00", tz="UTC")


def invoke(args: list[str]) -> Result:
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def strict_json(obj: Any) -> str:
    """What every consumer of evidence may assume: JSON without NaN, NA or any non-JSON value."""
    return json.dumps(obj, allow_nan=False)


def no_missing_markers(obj: Any) -> bool:
    if isinstance(obj, dict):
        return all(no_missing_markers(v) for v in obj.values())
    if isinstance(obj, list):
        return all(no_missing_markers(v) for v in obj)
    return obj is None or isinstance(obj, str | int | bool) or (isinstance(obj, float) and math.isfinite(obj))


# ------------------------------------------------------------------------------- GuardDuty evidence


@pytest.fixture
def guardduty(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The GuardDuty fake with one EC2 finding without a cluster and one EKS finding without an instance.
    The same server is every other AWS endpoint and denies Cost Explorer (a provider part failing)."""
    pytest.importorskip("boto3")
    from test_aws_guardduty import FakeGuardDuty, _server

    class CostExplorerDenied(FakeGuardDuty):
        def handle(self, method: str, path: str, region: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            if path == "/":  # Cost Explorer's JSON 1.1 endpoint, for a role without ce:GetCostAndUsage
                return 400, {"__type": "AccessDeniedException", "message": "not authorized to perform this"}
            return super().handle(method, path, region, body)

    fake = CostExplorerDenied({"us-east-1": "detector"})
    ec2, eks = copy.deepcopy(fake.findings[0]), copy.deepcopy(fake.findings[1])
    ec2["resource"]["instanceDetails"].pop("tags")
    eks["resource"].pop("instanceDetails")
    fake.findings = [ec2, eks]
    srv = _server(fake)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{srv.server_port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    yield fake
    srv.shutdown()
    srv.server_close()


def _aws_config(tmp_path: Path) -> Path:
    doc = {"providers": [{"type": "aws", "regions": ["us-east-1"], "cpu": False,
                          "cache_path": str(tmp_path / "aws.db")}],
           "state": {"path": str(tmp_path / "state.db")}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("fmt", ["json", "csv", "table", "markdown"])
def test_guardduty_findings_without_cluster_or_instance_report_in_every_format(
        guardduty: Any, tmp_path: Path, fmt: str) -> None:
    conf = _aws_config(tmp_path)
    r = invoke(["report", "--config", str(conf), "--as-of", NOW.isoformat(), "--since", "3d", "--format", fmt])
    assert r.exit_code == 0, r.output
    if fmt == "json":
        doc = json.loads(r.stdout)
        mining = [a for a in doc["alerts"] if a["kind"] == "mining_suspected"]
        records = [g for a in mining for g in a["evidence"]["guardduty"]]
        assert {(g["node"], g["cluster"]) for g in records} == {("i-0abc1234def567890", None), (None, "ml-batch")}
        strict_json(doc["alerts"])
    elif fmt == "csv":
        import csv
        import io

        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        assert rows and all(no_missing_markers(json.loads(row["evidence"])) for row in rows)
    elif fmt == "table":
        assert "GuardDuty" in r.stdout and "i-0abc1234def567890" in r.stdout and "ml-batch" in r.stdout
    else:
        assert "crypto-mining finding" in r.stdout
    # Cost Explorer denied: named as missing data with the action to grant, the findings still reported
    assert "access denied for ce:GetCostAndUsage; grant the IAM action" in r.stderr


def test_evidence_of_every_alert_is_strict_json() -> None:
    """The demo's alerts (every kind, CPU and cost evidence) and GuardDuty-only ones, straight from detect."""
    sc = demo_scenario()
    findings = pd.DataFrame({
        "provider": ["aws", "aws"], "project": [sc.costs["project_id"].iloc[0], "999999999999"],
        "region": ["us-east-1", pd.NA], "node": [pd.NA, "i-0123"], "cluster": ["prod", pd.NA],
        "type": ["CryptoCurrency:EC2/BitcoinTool.B!DNS"] * 2, "severity": [8.0, float("nan")],
        "title": [pd.NA, "t"], "finding_id": ["a", "b"],
        "first_seen": [sc.end - pd.Timedelta(days=2)] * 2, "last_seen": [sc.end - pd.Timedelta(hours=2)] * 2,
    }).astype({"first_seen": "datetime64[ns, UTC]", "last_seen": "datetime64[ns, UTC]"})
    det = detect(sc.costs, sc.usage, demo_config(sc), as_of=sc.end, since=pd.Timedelta(days=14), findings=findings)
    kinds = {a.kind for a in det.alerts}
    assert {"mining_suspected", "budget_forecast_exceeded"} <= kinds and kinds & {"cost_spike", "threshold_exceeded"}
    assert any("guardduty" in a.evidence for a in det.alerts)
    for a in det.alerts:
        assert no_missing_markers(a.evidence), (a.kind, a.evidence)
        assert json.loads(strict_json(a.evidence)) == a.evidence
        strict_json(a.to_dict())


# ------------------------------------------------- a part denied everywhere: report and run degrade alike


class _DenyEc2(BaseHTTPRequestHandler):
    """EC2's query API answering every call with UnauthorizedOperation, as an SCP deny does."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = (b"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error><Code>UnauthorizedOperation</Code>"
                b"<Message>You are not authorized to perform this operation. (explicit deny in a service control "
                b"policy)</Message></Error></Errors><RequestID>1</RequestID></Response>")
        self.send_response(403)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def aws_ec2_denied(aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Cost Explorer (moto server) answers with three weeks of spend; EC2 is denied in every region."""
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer
    from test_aws_provider import ACCOUNT, EC2_SVC, ce_result, day_list, queue_ce

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    deny = ThreadingHTTPServer(("127.0.0.1", 0), _DenyEc2)
    threading.Thread(target=deny.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", f"http://127.0.0.1:{deny.server_port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    today = pd.Timestamp.now(tz="UTC").floor("D")
    days = day_list((today - pd.Timedelta(days=21)).date().isoformat(), 21)
    queue_ce([ce_result(days, {ACCOUNT: {EC2_SVC: 40.0}}, "SERVICE"),
              ce_result(days, {ACCOUNT: {"us-east-1": 40.0}}, "REGION")], base=f"http://{host}:{port}")
    doc = {"providers": [{"type": "aws", "regions": ["us-east-1", "eu-west-1"], "guardduty": False,
                          "cache_path": str(tmp_path / "aws.db")}],
           "state": {"path": str(tmp_path / "state.db")}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    yield tmp_path / "c.yaml"
    deny.shutdown()
    deny.server_close()
    moto.stop()


def test_report_keeps_the_costs_when_cpu_is_denied_everywhere(aws_ec2_denied: Path) -> None:
    r = invoke(["report", "--config", str(aws_ec2_denied), "--since", "7d", "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    (project,) = doc["projects"]
    assert project["spend"] > 0  # the Cost Explorer data that was fetched is reported
    # each region that failed, structured, with what to grant; and the part that failed as a whole
    by_scope = {e["scope"]: e for e in doc["errors"]}
    assert {"region us-east-1", "region eu-west-1", "usage"} <= set(by_scope)
    east = by_scope["region us-east-1"]
    assert east["provider"] == "aws" and "ec2:DescribeInstances" in east["failed"]
    assert east["fix"].startswith("grant the IAM action ec2:DescribeInstances")
    assert not any("[" in n for n in doc["notes"])  # no Python lists printed into notes
    assert "not read: aws region eu-west-1: access denied for ec2:DescribeInstances" in r.stderr

    md = invoke(["report", "--config", str(aws_ec2_denied), "--since", "7d", "--format", "markdown"])
    assert md.exit_code == 0
    assert "## Warnings: data not read" in md.stdout
    assert "- aws region us-east-1: access denied for ec2:DescribeInstances" in md.stdout
    table = invoke(["report", "--config", str(aws_ec2_denied), "--since", "7d", "--format", "table",
                    "--output", str(aws_ec2_denied.parent / "report.txt")])
    text = (aws_ec2_denied.parent / "report.txt").read_text()
    assert table.exit_code == 0 and "Warnings (data not read):" in text
    assert "  - aws region eu-west-1: access denied for ec2:DescribeInstances in eu-west-1; grant" in text


def test_run_degrades_as_report_does_and_names_the_failed_regions(aws_ec2_denied: Path) -> None:
    r = invoke(["run", "--config", str(aws_ec2_denied), "--no-charts"])
    assert r.exit_code == 0, r.output
    assert "costwatch: missing data: aws usage:" in r.stderr
    assert "costwatch: warning: not read: aws region us-east-1: access denied for ec2:DescribeInstances" in r.stderr
    assert "costwatch: warning: not read: aws region eu-west-1:" in r.stderr
    assert "['" not in r.stderr and "{'" not in r.stderr  # no Python reprs of the providers' stats


# ----------------------------------------------------- files providers: one missing export, a missing day


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A small world (4 projects, 45 days: a miner on new nodes, a budget overrun) as a FOCUS export and a CPU
    CSV, with the demo's config of budgets and owners."""
    from costwatch.demo import to_focus
    from costwatch.scenarios import generate

    sc = generate(seed=3, n_projects=4, days=45, incident_kinds=("mining_new_nodes", "budget_breach"))
    d = tmp_path_factory.mktemp("demo-files")
    to_focus(sc.costs).to_csv(d / "costs.csv", index=False)
    u = sc.usage.copy()
    u["timestamp"] = u["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    u.to_csv(d / "usage.csv", index=False)
    return sc, d


def _files_config(tmp: Path, providers: list[dict[str, Any]], sc: Any = None) -> Path:
    """The demo's projects (budgets, owners) with these providers and a state store in ``tmp``."""
    doc = yaml.safe_load(demo_config_yaml(sc)) if sc is not None else {}
    doc.update(providers=providers, state={"path": str(tmp / "state.db")}, alerting={"repeat_interval": "4h"})
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_two_files_providers_one_missing_costs_only_its_data(demo_files: tuple[Any, Path], tmp_path: Path) -> None:
    sc, d = demo_files
    conf = _files_config(tmp_path, [
        {"type": "files", "costs": str(d / "costs.csv"), "usage": str(d / "usage.csv")},
        {"type": "files", "costs": str(tmp_path / "gone" / "costs.csv"), "usage": str(tmp_path / "gone" / "u.csv")}])
    r = invoke(["run", "--config", str(conf), "--as-of", sc.end.isoformat(), "--no-charts"])
    assert r.exit_code == 0, r.output
    assert "[costwatch] mining suspected in" in r.stdout  # the readable export still alerts
    missing = [line for line in r.stderr.splitlines() if "missing data:" in line]
    assert missing and all("files-2 " in line and "gone" in line for line in missing), r.stderr


def test_files_provider_takes_a_name_and_names_are_unique(demo_files: tuple[Any, Path], tmp_path: Path) -> None:
    sc, d = demo_files
    good = {"type": "files", "name": "exports", "costs": str(d / "costs.csv")}
    conf = _files_config(tmp_path, [good, {"type": "files", "name": "payer-b", "costs": str(tmp_path / "b.csv")}])
    r = invoke(["report", "--config", str(conf), "--as-of", sc.end.isoformat(), "--since", "3d", "--format", "json"])
    assert r.exit_code == 0, r.output
    assert [e["provider"] for e in json.loads(r.stdout)["errors"]] == ["payer-b"]
    same = _files_config(tmp_path, [good, dict(good, costs=str(tmp_path / "b.csv"))])
    r = invoke(["check-config", str(same)])
    assert r.exit_code == 2 and "exports" in r.stderr and "unique" in r.stderr


def test_a_missing_cost_export_is_not_read_as_a_recovery(demo_files: tuple[Any, Path], tmp_path: Path) -> None:
    """Run 1 opens the budget incident; run 2, an hour later, cannot read the cost export: the incident stays
    open (no "resolved"), and comes back without a new "firing" once the export is back."""
    sc, d = demo_files
    costs = tmp_path / "costs.csv"
    costs.write_bytes((d / "costs.csv").read_bytes())
    conf = _files_config(tmp_path, [{"type": "files", "costs": str(costs), "usage": str(d / "usage.csv")}], sc)

    def run(at: pd.Timestamp) -> Result:
        r = invoke(["run", "--config", str(conf), "--as-of", at.isoformat(), "--no-charts"])
        assert r.exit_code == 0, r.output
        return r

    first = run(sc.end)
    assert " budget_forecast_exceeded " in first.stdout  # an incident read from the cost export alone
    costs.rename(tmp_path / "costs.csv.moved")
    second = run(sc.end + pd.Timedelta(hours=1))
    assert "missing data: files costs:" in second.stderr
    assert "resolved" not in second.stdout, second.stdout
    assert "incident(s) whose data failed to arrive this run (a gap, not a recovery)" in second.stderr
    (tmp_path / "costs.csv.moved").rename(costs)
    third = run(sc.end + pd.Timedelta(hours=2))
    assert "budget_forecast_exceeded" not in third.stdout and "resolved" not in third.stdout, third.stdout


# ------------------------------------------------------------------------------- the run lock after kill -9

HOLDER = """
import sys, time
from costwatch.config import load_config
from costwatch.run import acquire_lock
from costwatch.state import open_store
store = open_store(load_config(sys.argv[1]).state)
assert acquire_lock(store, "cron:holder")
print("locked", flush=True)
time.sleep(300)
"""


def _hold_lock(conf: Path) -> subprocess.Popen[str]:
    """Another `costwatch run` process that has taken the run lock and is still working."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(conf)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


@pytest.fixture(params=["sqlite", "dynamodb"])
def locked_setup(request: pytest.FixtureRequest, demo_files: tuple[Any, Path], tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Any]]:
    """A config over the demo export, with its state in SQLite or in DynamoDB (a moto server)."""
    sc, d = demo_files
    conf = _files_config(tmp_path, [{"type": "files", "costs": str(d / "costs.csv"), "usage": str(d / "usage.csv")}])
    if request.param == "sqlite":
        yield conf, sc
        return
    pytest.importorskip("moto")
    request.getfixturevalue("aws_env")
    import boto3
    from moto.server import ThreadedMotoServer

    from costwatch.state import create_dynamodb_table

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    create_dynamodb_table(boto3.client("dynamodb", region_name="us-east-1"), "costwatch-state")
    doc = yaml.safe_load(conf.read_text())
    doc["state"] = {"backend": "dynamodb", "table": "costwatch-state", "region": "us-east-1"}
    conf.write_text(yaml.safe_dump(doc))
    yield conf, sc
    server.stop()


def test_a_killed_runs_lock_is_taken_over_and_a_live_one_has_its_own_exit_code(
        locked_setup: tuple[Path, Any]) -> None:
    from costwatch.config import load_config
    from costwatch.state import open_store

    conf, sc = locked_setup
    args = ["run", "--config", str(conf), "--as-of", sc.end.isoformat(), "--no-charts"]
    holder = _hold_lock(conf)
    try:
        busy = invoke(args)
        assert busy.exit_code == 75, busy.output
        assert f"pid {holder.pid} on host {socket.gethostname()}" in busy.stderr and busy.stdout == ""
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    after = invoke(args)  # at once: no 15 minutes of skipped runs
    assert after.exit_code == 0, after.output
    assert "[costwatch] mining suspected in" in after.stdout
    store = open_store(load_config(conf).state)
    try:
        assert store.get("lock", "run") is None  # released after the run
        # a holder on another host cannot be checked: it is waited for, with the same exit code
        store.put("lock", "run", {"owner": "b:1", "since": time.time(), "pid": 1, "host": "elsewhere",
                                  "boot_id": "x"}, version=None, expires_at=time.time() + 900)
        elsewhere = invoke(args)
        assert elsewhere.exit_code == 75 and "host elsewhere" in elsewhere.stderr, elsewhere.output
    finally:
        store.close()


def test_gcp_monitoring_denied_in_every_project_keeps_the_bigquery_costs(tmp_path: Path) -> None:
    """The shared gathering path of `run` and `report`: Monitoring denied everywhere costs the CPU part only,
    and each project is named with the role to grant."""
    import grpc
    from fake_gcp import FakeBigQuery, FakeMonitoring, standard_row
    from test_gcp_provider import NOW as GCP_NOW
    from test_gcp_provider import TABLE
    from test_gcp_provider import provider as gcp_provider

    from costwatch.sources import collect

    bq, mon = FakeBigQuery(), FakeMonitoring(page_size=4)
    try:
        days = pd.date_range("2024-03-01", "2024-03-09", freq="D").strftime("%Y-%m-%d")
        bq.tables[TABLE] = ("standard", [standard_row(d, p, "Compute Engine", 10.0)
                                               for d in days for p in ("web-prod", "ml-prod")])
        for p in ("web-prod", "ml-prod"):
            mon.broken[p] = (grpc.StatusCode.PERMISSION_DENIED, "Permission monitoring.timeSeries.list denied")
        prov = gcp_provider(tmp_path, bq, mon, projects=["web-prod", "ml-prod"], name="gcp-billing")
        got = collect([prov], pd.Timestamp("2024-03-01", tz="UTC"), pd.Timestamp(GCP_NOW, tz="UTC"))
    finally:
        bq.stop()
        mon.stop()
    assert set(got.costs["project_id"]) == {"web-prod", "ml-prod"} and got.usage.empty
    assert got.failed == {"gcp-billing": ["usage"]}
    by_scope = {f.scope: f for f in got.failures}
    assert set(by_scope) == {"project web-prod", "project ml-prod"}
    assert all(f.provider == "gcp-billing" and "roles/monitoring.viewer" in f.fix for f in by_scope.values())
    assert [r["scope"] for r in got.error_records()] == ["usage", "project web-prod", "project ml-prod"]
