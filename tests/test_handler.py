"""The Lambda entry point, invoked the way EventBridge invokes it, against moto: config in an SSM parameter
(the shipped config/lambda.example.yaml), secrets as SecureStrings under a path, state in a DynamoDB table,
Cost Explorer + EC2 + CloudWatch data with a miner in a new region, and email through SES (Slack through
the local fake when the Slack notifier is installed).  Checks the summary, that nothing is sent twice
(repeat run, retried invocation, overlapping invocation), JSON logs without secrets, and provider errors."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email import message_from_string
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("moto")
import boto3
from moto import mock_aws
from moto.ec2.models import ec2_backends
from moto.ses.models import ses_backends
from test_aws_provider import ACCOUNT, EC2_SVC, ce_result, day_list, next_hour, put_cpu, queue_ce
from test_aws_provider import run as run_instances

from costwatch.errors import ConfigError
from costwatch.handler import handle
from costwatch.run import acquire_lock
from costwatch.state import DynamoStore, create_dynamodb_table

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "lambda.example.yaml"
TABLE = "costwatch-test-state"
CONFIG_PARAM = "/costwatch/test/config"
SECRETS_PATH = "/costwatch/test/secrets"
SECRET = "xoxb-1111-2222-fakeBotTokenSecret"   # FakeSlack's default bot token
SENDER_DOMAIN = "example.com"


def scheduled_event() -> dict[str, Any]:
    """What an EventBridge schedule rule delivers."""
    return {"version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
            "source": "aws.events", "account": ACCOUNT, "region": "us-east-1", "detail": {},
            "time": pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:00:00Z"),
            "resources": [f"arn:aws:events:us-east-1:{ACCOUNT}:rule/costwatch-test-RunEventsRuleSchedule1"]}


@dataclass
class Context:
    """The attributes of Lambda's context object the handler may read."""

    aws_request_id: str
    function_name: str = "costwatch-test-run"
    memory_limit_in_mb: int = 1536
    invoked_function_arn: str = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:costwatch-test-run"

    def get_remaining_time_in_millis(self) -> int:
        return 600_000


@pytest.fixture
def aws(aws_env: None, restore_logging: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """moto plus what serverless.yml deploys: the state table, the Lambda's environment, a verified sender."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # charts go to the temp dir, as on Lambda's /tmp
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "matplotlib"))
    monkeypatch.setenv("COSTWATCH_CONFIG_SSM", CONFIG_PARAM)
    monkeypatch.setenv("COSTWATCH_SECRETS_PATH", SECRETS_PATH)
    monkeypatch.setenv("COSTWATCH_STATE_TABLE", TABLE)
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    with mock_aws():
        create_dynamodb_table(boto3.client("dynamodb"), TABLE)
        boto3.client("ses").verify_domain_identity(Domain=SENDER_DOMAIN)
        ssm = boto3.client("ssm")
        ssm.put_parameter(Name=f"{SECRETS_PATH}/SLACK_BOT_TOKEN", Value=SECRET, Type="SecureString")
        ssm.put_parameter(Name=f"{SECRETS_PATH}/nested/ONCALL_EMAIL", Value="oncall@example.com",
                          Type="SecureString")
        yield


def lambda_config(tmp_path: Path, *, slack_api: str | None = None,
                  extra_providers: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The shipped example, pointed at moto's two regions and this test's /tmp; Slack only when a fake runs."""
    cfg = yaml.safe_load(EXAMPLE.read_text())
    aws = cfg["providers"][0]
    aws.update(regions=["us-east-1", "ap-southeast-2"], cache_path=str(tmp_path / "tmp" / "aws-cache.db"))
    cfg["providers"] += list(extra_providers)
    if slack_api is None:
        del cfg["notify"]["slack"]
    else:
        cfg["notify"]["slack"].update(api_url=slack_api, channel="#alerts")
        cfg["owners"]["finops"]["slack_channel"] = "#alerts"
    return dict(cfg)


def store_config(cfg: dict[str, Any]) -> None:
    boto3.client("ssm").put_parameter(Name=CONFIG_PARAM, Value=yaml.safe_dump(cfg), Type="String", Overwrite=True)


def miner_in_new_region() -> None:
    """Three weeks of EC2 + S3 spend in us-east-1 with web nodes on a daily CPU curve; for the last 8 hours
    new instances in ap-southeast-2, a region the account never used, pinned at 99%."""
    now = next_hour()
    today = now.floor("D")
    history = day_list((today - pd.Timedelta(days=21)).date().isoformat(), 21)
    queue_ce([ce_result(history, {ACCOUNT: {EC2_SVC: 40.0, "Amazon Simple Storage Service": 3.0}}, "SERVICE"),
              ce_result(history, {ACCOUNT: {"us-east-1": 43.0}}, "REGION")])
    web = run_instances("us-east-1", 2, "m5.large", tags={"eks:cluster-name": "web"})
    miners = run_instances("ap-southeast-2", 3, "c5.4xlarge")
    # moto launches at the wall clock, but the handler's window ends at the last full hour: set the launch
    # times of the story (web nodes for weeks, miners since 9 hours ago) in moto's EC2 state
    story = (("us-east-1", web, pd.Timedelta(days=30)), ("ap-southeast-2", miners, pd.Timedelta(hours=9)))
    for region, ids, age in story:
        for iid in ids:
            ec2_backends[ACCOUNT][region].get_instance(iid).launch_time = (now - age).tz_convert(None).to_pydatetime()
    rng = np.random.default_rng(7)
    old_hours = pd.date_range(now - pd.Timedelta(days=10), now - pd.Timedelta(hours=1), freq="h")
    put_cpu("us-east-1", {iid: [(t, 25 + 15 * np.sin(2 * np.pi * t.hour / 24) + rng.normal(0, 4))
                                for t in old_hours] for iid in web})
    new_hours = pd.date_range(now - pd.Timedelta(hours=8), now - pd.Timedelta(hours=1), freq="h")
    put_cpu("ap-southeast-2", {iid: [(t, 99.0 + rng.normal(0, 0.2)) for t in new_hours] for iid in miners})


def sent_mail() -> list[Any]:
    return list(ses_backends[ACCOUNT]["us-east-1"].sent_messages)


def json_lines(out: str) -> list[dict[str, Any]]:
    """Every line the function printed, parsed; fails on a line CloudWatch Logs Insights could not query."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines, "the handler logged nothing"
    docs = []
    for ln in lines:
        try:
            docs.append(json.loads(ln))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {ln[:200]!r}")
    return docs


# ------------------------------------------------------------------------------------------ tests


def test_example_config_fits_a_standard_ssm_parameter() -> None:
    assert len(EXAMPLE.read_bytes()) <= 4096


def test_scheduled_run_alerts_once_by_email(aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_config(lambda_config(tmp_path))
    miner_in_new_region()

    first = handle(scheduled_event(), Context("req-1"))
    assert first["status"] == "ok" and first["request_id"] == "req-1"
    assert first["alerts_by_kind"].get("mining_suspected", 0) >= 1
    assert first["delivered"] >= 1 and first["failed"] == 0 and first["stuck"] == 0
    assert first["cost_explorer_requests"] == 2          # the SERVICE and REGION queries of one backfill
    assert first["provider_errors"] == []
    mails = sent_mail()
    assert len(mails) == first["delivered"]
    msg = message_from_string(mails[0].raw_data)
    # moto lists the Destinations and the To header both; the owner (finops, the default owner) is the only one
    assert mails[0].source == "costwatch@example.com" and set(mails[0].destinations) == {"finops@example.com"}
    assert "mining" in str(msg["Subject"]).lower(), msg["Subject"]

    # the next scheduled run: the incident is still open, nothing is repeated before repeat_interval
    second = handle(scheduled_event(), Context("req-2"))
    assert second["status"] == "ok" and second["alerts_active"] >= 1
    assert second["queued"] == 0 and second["delivered"] == 0
    # a warm container keeps the /tmp cache: only the restated days are asked again (still 2 requests, not
    # a new 11-week backfill)
    assert second["cost_explorer_requests"] == 2
    assert second["providers"]["aws"]["ce_days_fetched"] < first["providers"]["aws"]["ce_days_fetched"]
    # Lambda retrying an invocation that did finish (same event, same request id) sends nothing either
    retried = handle(scheduled_event(), Context("req-2"))
    assert retried["status"] == "ok" and retried["delivered"] == 0
    assert len(sent_mail()) == len(mails)

    out, err = capsys.readouterr()
    docs = json_lines(out)
    finished = [d for d in docs if d.get("message") == "run finished"]
    assert [d["request_id"] for d in finished] == ["req-1", "req-2", "req-2"]
    assert {"level", "logger", "time"} <= set(finished[0])
    loaded = [d for d in docs if d.get("message") == "secrets loaded"]
    assert loaded and loaded[0]["secrets"] == ["ONCALL_EMAIL", "SLACK_BOT_TOKEN"]
    assert SECRET not in out + err and SECRET not in json.dumps([first, second, retried])


def test_overlapping_invocation_is_skipped(aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """While another invocation holds the state lock, a second one does nothing and does not fail (a failure
    would be retried and land in the failure queue); once that lock lapses the next run does the work."""
    store_config(lambda_config(tmp_path))
    miner_in_new_region()
    store = DynamoStore(TABLE)
    assert acquire_lock(store, "req-running")

    skipped = handle(scheduled_event(), Context("req-overlap"))
    assert skipped["status"] == "skipped" and skipped["request_id"] == "req-overlap"
    assert sent_mail() == []
    held = store.get("lock", "run")
    assert held is not None and held.doc["owner"] == "req-running"   # not taken over, not released

    store.delete("lock", "run")
    assert acquire_lock(store, "req-crashed", seconds=-1)          # a crashed run's lock, already lapsed
    ran = handle(scheduled_event(), Context("req-next"))
    assert ran["status"] == "ok" and ran["delivered"] >= 1 and len(sent_mail()) == ran["delivered"]
    assert store.get("lock", "run") is None                        # released after the run
    out, _ = capsys.readouterr()
    assert [d["status"] for d in json_lines(out) if d.get("message") == "run skipped"] == ["skipped"]


def test_failing_provider_is_reported_and_the_others_still_alert(aws: None, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A second payer's Cost Explorer answers every page with the same NextPageToken: that provider's costs
    become a provider error in the summary, while the first provider's miner is still found and mailed."""
    cfg = lambda_config(tmp_path, extra_providers=[
        {"type": "aws", "name": "aws-payer2", "metric": "AmortizedCost", "regions": ["us-east-1"], "cpu": False,
         "guardduty": False, "cache_path": str(tmp_path / "tmp" / "payer2.db")}])
    store_config(cfg)
    miner_in_new_region()  # queues the first provider's two Cost Explorer answers
    # moto answers each distinct request from the queue in order; payer2 asks for another metric, so its
    # first page (and the page its token leads to) are these
    looping = ce_result([pd.Timestamp.now(tz="UTC").date().isoformat()], {"210987654321": {EC2_SVC: 1.0}},
                        "SERVICE", token="same-token")
    queue_ce([looping, looping])

    out = handle(scheduled_event(), Context("req-partial"))
    assert out["status"] == "ok"
    assert len(out["provider_errors"]) == 1
    assert out["provider_errors"][0].startswith("aws-payer2 costs: ") and "NextPageToken" in out["provider_errors"][0]
    assert out["alerts_by_kind"].get("mining_suspected", 0) >= 1 and out["delivered"] >= 1
    assert set(out["providers"]) == {"aws", "aws-payer2"}
    logged = json_lines(capsys.readouterr().out)
    assert [d["provider_errors"] for d in logged if d.get("message") == "run finished"] == [out["provider_errors"]]


def test_provider_whose_credentials_fail_is_a_provider_error(aws: None, tmp_path: Path) -> None:
    """A provider whose profile's credential_process fails (an expired SSO session looks the same) must cost
    that provider only, not every provider's alerts."""
    profile_file = tmp_path / "aws-config"
    profile_file.write_text(f'[profile broken]\ncredential_process = "{sys.executable}" -c "raise SystemExit(3)"\n')
    store_config(lambda_config(tmp_path, extra_providers=[
        {"type": "aws", "name": "aws-broken", "profile": "broken", "regions": ["us-east-1"], "guardduty": False,
         "cache_path": str(tmp_path / "tmp" / "broken.db")}]))
    miner_in_new_region()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_CONFIG_FILE", str(profile_file))
        out = handle(scheduled_event(), Context("req-broken"))
    assert out["provider_errors"] and all(e.startswith("aws-broken ") for e in out["provider_errors"])
    assert out["alerts_by_kind"].get("mining_suspected", 0) >= 1 and out["delivered"] >= 1


def test_config_error_raises_for_the_failure_destination(aws: None, tmp_path: Path) -> None:
    """A broken config is the one thing that fails the invocation: Lambda retries it, then parks the event
    in the failure queue, where someone sees it."""
    cfg = lambda_config(tmp_path)
    cfg["notify"]["email"]["transport"] = "pigeon"
    store_config(cfg)
    with pytest.raises(ConfigError, match="transport"):
        handle(scheduled_event(), Context("req-bad"))
    assert sent_mail() == []


def test_scheduled_run_posts_to_slack(aws: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The example config as shipped (Slack and SES email), the bot token only in SSM."""
    pytest.importorskip("slack_sdk")
    fake_slack = pytest.importorskip("fake_slack")
    pytest.importorskip("costwatch.notifiers.slack")
    with fake_slack.FakeSlack(token=SECRET) as slack:
        store_config(lambda_config(tmp_path, slack_api=slack.api_url))
        miner_in_new_region()
        first = handle(scheduled_event(), Context("req-slack"))
        posts = slack.calls("chat.postMessage")
        again = handle(scheduled_event(), Context("req-slack-2"))
        assert len(slack.calls("chat.postMessage")) == len(posts)
    assert first["status"] == "ok" and first["alerts_by_kind"].get("mining_suspected", 0) >= 1
    assert first["failed"] == 0 and first["delivered"] >= 2       # one Slack post and one email at least
    assert posts and all(p.params.get("channel") in ("#alerts", "C0ALERTS") for p in posts)
    assert len(sent_mail()) >= 1
    assert again["delivered"] == 0
    out, err = capsys.readouterr()
    json_lines(out)
    assert SECRET not in out + err and SECRET not in json.dumps([first, again])


def test_provider_deadline_leaves_the_run_time_to_deliver() -> None:
    """Three providers and 300 s left: each may fetch (300 - 90) / 3 = 70 s, so a hung one times out inside
    the invocation; with time to spare the configured provider_timeout holds; it never drops below 5 s."""
    from costwatch.config import parse_config
    from costwatch.handler import provider_deadline

    text = ("providers:\n" + "".join(f"  - {{type: files, costs: c{i}.csv}}\n" for i in range(3))
            + "alerting: {provider_timeout: 2m}\n")
    cfg = parse_config(text, source="t.yaml")

    @dataclass
    class Left(Context):
        left_ms: int = 0

        def get_remaining_time_in_millis(self) -> int:
            return self.left_ms

    assert provider_deadline(cfg, Left("r", left_ms=300_000)) == pytest.approx(70.0)
    assert provider_deadline(cfg, Left("r", left_ms=900_000)) == pytest.approx(120.0)
    assert provider_deadline(cfg, Left("r", left_ms=60_000)) == pytest.approx(5.0)
    assert provider_deadline(cfg, None) == pytest.approx(120.0)


def test_run_metrics_are_published_as_embedded_metric_format(aws: None, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Each invocation prints its metrics as CloudWatch EMF lines (namespace "costwatch", Powertools)."""
    store_config(lambda_config(tmp_path))
    miner_in_new_region()
    handle(scheduled_event(), Context("req-emf"))
    docs = json_lines(capsys.readouterr().out)
    emf = [d for d in docs if "_aws" in d]
    assert emf, "no EMF line in the handler's stdout"
    names: dict[str, Any] = {}
    for d in emf:
        [directive] = d["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "costwatch" and isinstance(d["_aws"]["Timestamp"], int)
        for m in directive["Metrics"]:
            v = d[m["Name"]]
            names[m["Name"]] = v[0] if isinstance(v, list) and len(v) == 1 else v
    assert {"run_success", "run_duration_seconds", "alerts_active", "incidents_open", "notifications_delivered",
            "outbox_pending", "outbox_failed", "outbox_oldest_pending_age_seconds", "provider_errors",
            "cost_explorer_requests", "channels_broken", "data_age_seconds", "alerts_active_by_kind"} <= set(names)
    assert names["run_success"] == 1 and names["cost_explorer_requests"] == 2 and names["alerts_active"] >= 1
    by_kind = [d for d in emf if "alerts_active_by_kind" in d]
    assert any(d.get("kind") == "mining_suspected" for d in by_kind)
    ages = [d for d in emf if "data_age_seconds" in d]
    assert {(d["provider"], d["data"]) for d in ages} >= {("aws", "cost"), ("aws", "usage")}
