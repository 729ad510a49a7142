"""End to end through real services: ``run_once`` replays a labelled scenario and delivers through the real
email notifier to a real SMTP server (aiosmtpd, STARTTLS + login), with the real SQLite outbox between them.
The owner gets one mail per incident, updates threaded under it, a mail server that is down loses nothing,
and neither the password nor hostile project names leak into headers, logs or state."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import smtp_server
import yaml

from costwatch.config import Config, load_config
from costwatch.demo import to_focus
from costwatch.notifiers.email import EmailNotifier
from costwatch.notifiers.stdout import StdoutNotifier
from costwatch.run import run_once
from costwatch.scenarios import Scenario, generate

H = pd.Timedelta(hours=1)
PASSWORD = "s3cr3t-Pa55word-do-not-log"
EVIL_NAME = "<!channel> pwn\r\nBcc: evil@attacker.example"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, Path]:
    sc = generate(seed=10, n_projects=4, days=50, incident_kinds=("mining_new_nodes",))
    d = tmp_path_factory.mktemp("e2e-data")
    to_focus(sc.costs).to_csv(d / "costs.csv", index=False)
    u = sc.usage.copy()
    u["timestamp"] = u["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    u.to_csv(d / "usage.csv", index=False)
    return sc, d


@pytest.fixture
def smtp() -> Iterator[smtp_server.SmtpServer]:
    srv = smtp_server.start(tls="starttls", auth={"costwatch": PASSWORD})
    yield srv
    srv.stop()


def _incident(sc: Scenario) -> pd.Series:
    return sc.incidents[sc.incidents["provider"] == "gcp"].iloc[0]


def _config(sc: Scenario, d: Path, tmp: Path, port: int, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv("SMTP_PASSWORD", PASSWORD)
    inc = _incident(sc)
    doc = {
        "providers": [{"type": "files", "costs": str(d / "costs.csv"), "usage": str(d / "usage.csv")}],
        "projects": {str(inc.project_id): {"name": EVIL_NAME, "owner": "miners-team"}},
        "owners": {"miners-team": {"email": ["owner@example.com"]}},
        "alerting": {"repeat_interval": "4h", "escalate": {"critical": ["secops@example.com"]}},
        "notify": {"email": {"smtp_host": "127.0.0.1", "smtp_port": port, "username": "costwatch",
                             "password": "${SMTP_PASSWORD}", "from_addr": "costwatch@example.com",
                             "to": ["finops@example.com"], "timeout": 5}, "stdout": True},
        "state": {"path": str(tmp / "state.db")},
    }
    (tmp / "c.yaml").write_text(yaml.safe_dump(doc))
    return load_config(tmp / "c.yaml")


def _run(cfg: Config, srv: smtp_server.SmtpServer, at: pd.Timestamp, out: io.StringIO) -> Any:
    assert cfg.notify.email is not None
    notifiers: dict[str, Any] = {"email": EmailNotifier(cfg.notify.email, ssl_context=srv.client_context()),
                                 "stdout": StdoutNotifier(out)}
    return run_once(cfg, now=at, as_of=at, notifiers=notifiers, charts=True, sleep=lambda s: None)


def test_email_incident_end_to_end(data: tuple[Scenario, Path], smtp: smtp_server.SmtpServer, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sc, d = data
    inc = _incident(sc)
    cfg = _config(sc, d, tmp_path, smtp.port, monkeypatch)
    out = io.StringIO()

    # the mail server is down when the miner is first seen: nothing is lost
    smtp.stop()
    t = inc.start + 3 * H
    down = _run(cfg, smtp, t, out)
    assert down.delivery.delivered >= 1  # stdout still went
    assert down.delivery.pending >= 1 and down.exit_code == 0
    smtp.start()
    up = _run(cfg, smtp, t + pd.Timedelta(minutes=20), out)
    assert up.delivery.pending == 0
    mails = [m.message for m in smtp.messages]
    to_owner = [m for m in mails if "owner@example.com" in str(m["To"])]
    assert len(to_owner) == 1, [m["Subject"] for m in mails]
    first = to_owner[0]
    assert "mining" in str(first["Subject"]).lower()
    # escalation by severity: critical mining also goes to secops
    assert any("secops@example.com" in str(m["To"]) for m in mails)
    # hostile project name: no header injection, no extra recipient
    for m in mails:
        assert m["Bcc"] is None and "\n" not in str(m["Subject"]) and "attacker" not in str(m["To"])
    assert all(rcpt != "evil@attacker.example" for r in smtp.messages for rcpt in r.rcpt_tos)
    html = first.get_body(("html",))
    assert html is not None and "<!channel>" not in html.get_content() and "&lt;!channel&gt;" in html.get_content()
    # the chart travels inline
    assert any(part.get_content_type() == "image/png" for part in first.walk())

    # the same run again: nothing new
    again = _run(cfg, smtp, t + pd.Timedelta(minutes=20), out)
    assert again.queued == 0 and len(smtp.messages) == len(mails)

    # hours later and after it ended: updates/repeats thread under the first mail, resolved once
    _run(cfg, smtp, t + 8 * H, out)
    _run(cfg, smtp, inc.end + pd.Timedelta(days=3), out)
    owner_mails = [r.message for r in smtp.messages if "owner@example.com" in str(r.message["To"])]
    assert len(owner_mails) >= 3
    first_id = str(owner_mails[0]["Message-ID"])
    for m in owner_mails[1:]:
        assert str(m["In-Reply-To"]) == first_id
    assert sum("resolved" in str(m["Subject"]).lower() for m in owner_mails) == 1

    # the password is nowhere: not in logs, not in the stored outbox
    assert PASSWORD not in caplog.text and PASSWORD not in out.getvalue()
    assert PASSWORD.encode() not in (tmp_path / "state.db").read_bytes()


# ----------------------------------------------------------------------------------------------- Slack

TOKEN_ENV = "SLACK_BOT_TOKEN"


@pytest.fixture
def slack() -> Iterator[Any]:
    from fake_slack import FakeSlack

    with FakeSlack() as fake:
        yield fake


def _slack_config(sc: Scenario, d: Path, tmp: Path, fake: Any, monkeypatch: pytest.MonkeyPatch) -> Config:
    monkeypatch.setenv(TOKEN_ENV, fake.token)
    inc = _incident(sc)
    doc = {
        "providers": [{"type": "files", "costs": str(d / "costs.csv"), "usage": str(d / "usage.csv")}],
        "projects": {str(inc.project_id): {"name": "<!channel> *pwn* <@U999>", "owner": "miners-team"}},
        "owners": {"miners-team": {"slack_channel": "C0TEAM", "slack_mention": "U0OWNER"}},
        "alerting": {"repeat_interval": "4h"},
        "notify": {"slack": {"token": "${SLACK_BOT_TOKEN}", "channel": "C0ALERTS", "api_url": fake.api_url,
                             "timeout": 1}, "stdout": False},
        "state": {"path": str(tmp / "state.db")},
    }
    (tmp / "c.yaml").write_text(yaml.safe_dump(doc))
    return load_config(tmp / "c.yaml")


def _our_posts(fake: Any, channel: str) -> list[dict[str, Any]]:
    return [m for m in fake.messages(channel) if m.get("metadata")]


def test_slack_incident_end_to_end(data: tuple[Scenario, Path], slack: Any, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sc, d = data
    inc = _incident(sc)
    cfg = _slack_config(sc, d, tmp_path, slack, monkeypatch)
    waits: list[float] = []

    def run(at: pd.Timestamp) -> Any:
        return run_once(cfg, now=at, as_of=at, charts=True, sleep=waits.append)

    # Slack rate-limits the first post: the run waits what Slack asked and posts once
    slack.fail("chat.postMessage", status=429, retry_after=1)
    t = inc.start + 3 * H
    first = run(t)
    assert first.delivery.pending == 0 and waits == [1]
    posts = _our_posts(slack, "C0TEAM")
    assert len(posts) == 1 and "thread_ts" not in posts[0]
    sent = slack.calls("chat.postMessage")[-1].params
    raw = json.dumps(sent)
    assert "<@U0OWNER>" in raw  # the owner from config is pinged ...
    assert "<!channel>" not in raw and "<@U999>" not in raw  # ... nobody named by data is
    # the chart lands in the incident's thread
    assert slack.uploads and slack.uploads[0]["thread_ts"] == posts[0]["ts"]

    # a retried run does nothing
    assert run(t).queued == 0 and len(_our_posts(slack, "C0TEAM")) == 1

    # Slack takes the next post but the answer never arrives (client timeout): the outbox finds the
    # message by its metadata instead of posting it twice
    slack.fail("chat.postMessage", accept=True, hang=3)
    later = run(t + 8 * H)
    assert later.delivery.pending == 0
    posts = _our_posts(slack, "C0TEAM")
    ids = [p["metadata"]["event_payload"]["id"] for p in posts]
    assert len(ids) == len(set(ids)) == 2
    assert posts[1]["thread_ts"] == posts[0]["ts"]  # the update is in the incident's thread

    run(inc.end + pd.Timedelta(days=3))
    posts = _our_posts(slack, "C0TEAM")
    assert len(posts) == 3 and posts[-1]["thread_ts"] == posts[0]["ts"]
    team_calls = [c.params for c in slack.calls("chat.postMessage") if c.params.get("channel") == "C0TEAM"]
    assert "resolved" in json.dumps(team_calls[-1]).lower()

    # the token is nowhere: logs, state
    assert slack.token not in caplog.text
    assert slack.token.encode() not in (tmp_path / "state.db").read_bytes()


def test_slack_permanent_error_is_kept_and_reported(data: tuple[Scenario, Path], slack: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sc, d = data
    inc = _incident(sc)
    cfg = _slack_config(sc, d, tmp_path, slack, monkeypatch)
    monkeypatch.setenv(TOKEN_ENV, "xoxb-revoked-token")
    cfg = load_config(tmp_path / "c.yaml")
    t = inc.start + 3 * H
    res = run_once(cfg, now=t, as_of=t, charts=False, sleep=lambda s: None)
    assert res.delivery.failed >= 1 and res.exit_code == 1
    assert any("invalid_auth" in e for e in res.delivery.errors)
    assert "xoxb-revoked-token" not in "\n".join(res.lines())


def test_kubernetes_context_reaches_the_owner(data: tuple[Scenario, Path], slack: Any, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The mining alert's nodes are found in a cluster (by providerID); the owner's Slack message names the
    miner pod and the namespace without a ResourceQuota."""
    from fake_kube import FakeKube, container

    sc, d = data
    inc = _incident(sc)
    miner_nodes = sorted(inc.nodes)
    with FakeKube(token="kube-t0ken") as kube:
        kube.add_namespace("default")
        kube.add_namespace("batch-jobs")
        for i, node in enumerate(miner_nodes):
            kube.add_node(f"gke-node-{i}", f"gce://{inc.project_id}/us-central1-a/{node}")
            kube.add_pod("batch-jobs", f"worker-{i}", node=f"gke-node-{i}",
                         containers=[container("w", "docker.io/xmrig/xmrig:6.21",
                                               args=["-o", "stratum+tcp://pool.example:3333"])])
        kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig", context="prod-gke")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        cfg = _slack_config(sc, d, tmp_path, slack, monkeypatch)
        doc = yaml.safe_load((tmp_path / "c.yaml").read_text())
        doc["kubernetes"] = {"clusters": [{"name": "prod-gke", "context": "prod-gke", "project": str(inc.project_id)}]}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
        cfg = load_config(tmp_path / "c.yaml")
        t = inc.start + 3 * H
        res = run_once(cfg, now=t, as_of=t, charts=False, sleep=lambda s: None)
    assert res.delivery.pending == 0 and not [e for e in res.provider_errors if "kubernetes" in e]
    team = [c.params for c in slack.calls("chat.postMessage") if c.params.get("channel") == "C0TEAM"]
    raw = json.dumps(team[0])
    assert "prod-gke" in raw and "xmrig" in raw and "batch-jobs" in raw
    assert "ResourceQuota" in raw
    assert "kube-t0ken" not in raw


# ----------------------------------------------------------------------------------------------- every channel


def test_one_incident_reaches_every_channel_once(data: tuple[Scenario, Path], slack: Any, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch, aws_env: None,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """One run, one state: the incident goes to Slack, email, Teams, PagerDuty, the webhook and SNS (each
    rate-limited or failing once on the way); a second run sends nothing new, and the resolve closes the
    PagerDuty incident."""
    import boto3
    from fake_channels import FakePagerDuty, FakeReceiver, FakeTeams
    from moto import mock_aws

    from costwatch.run import build_notifiers

    caplog.set_level(logging.DEBUG)
    sc, d = data
    inc = _incident(sc)
    pd_key = "R0UTINGKEYsecret0000000000000001"
    srv = smtp_server.start(tls="none")
    with FakeTeams() as teams, FakePagerDuty((pd_key,)) as pdf, FakeReceiver() as hook, mock_aws():
        sns, sqs = boto3.client("sns", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1")
        topic = sns.create_topic(Name="costwatch-alerts")["TopicArn"]
        queue = sqs.create_queue(QueueName="alerts-in")["QueueUrl"]
        qarn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=qarn, Attributes={"RawMessageDelivery": "true"})
        for k, v in {"SLACK_BOT_TOKEN": slack.token, "TEAMS_URL": teams.url, "PD_KEY": pd_key, "HOOK_URL": hook.url,
                     "HOOK_SECRET": hook.secret}.items():
            monkeypatch.setenv(k, v)
        doc = {
            "providers": [{"type": "files", "costs": str(d / "costs.csv"), "usage": str(d / "usage.csv")}],
            "projects": {str(inc.project_id): {"name": "<!channel> **pwn** [x](https://evil.example)",
                                               "owner": "miners-team"}},
            "owners": {"miners-team": {"slack_channel": "C0TEAM", "email": ["owner@example.com"]}},
            "alerting": {"repeat_interval": "4h"},
            "notify": {"slack": {"token": "${SLACK_BOT_TOKEN}", "channel": "C0ALERTS", "api_url": slack.api_url,
                                 "timeout": 1},
                       "email": {"smtp_host": "127.0.0.1", "smtp_port": srv.port, "starttls": False,
                                 "from_addr": "costwatch@example.com", "timeout": 5},
                       "teams": {"webhook_url": "${TEAMS_URL}", "timeout": 2},
                       "pagerduty": {"routing_key": "${PD_KEY}", "events_url": pdf.url, "timeout": 2},
                       "webhook": {"url": "${HOOK_URL}", "secret": "${HOOK_SECRET}", "timeout": 2},
                       "sns": {"topic_arn": topic}, "stdout": False},
            "state": {"path": str(tmp_path / "state.db")},
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
        cfg = load_config(tmp_path / "c.yaml")
        assert sorted(build_notifiers(cfg)) == ["email", "pagerduty", "slack", "sns", "teams", "webhook"]

        def run(at: pd.Timestamp) -> Any:
            return run_once(cfg, now=at, as_of=at, charts=False, sleep=lambda s: None)

        def sns_messages() -> list[dict[str, Any]]:
            got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
            for m in got:
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
            return [json.loads(m["Body"]) for m in got]

        # each HTTP service pushes back once: retried within the run (429 with Retry-After) or next run (5xx)
        teams.fail(status=429, retry_after=1)
        pdf.fail(status=503)
        hook.fail(status=429, retry_after=2)
        t = inc.start + 3 * H
        first = run(t)
        second = run(t + pd.Timedelta(minutes=10))
        assert first.delivery.delivered >= 5 and second.delivery.pending == 0 and second.exit_code == 0
        group = pdf.events[0]["dedup_key"]
        assert pdf.incidents == {group: "triggered"}
        assert len(teams.cards) == 1 and len(hook.unique) == 1 and len(hook.documents) == 1
        [msg] = sns_messages()
        assert msg["incident"] == group and hook.documents[0]["incident"] == group
        assert hook.documents[0]["id"] != msg["id"]  # one notification per target, each with its own id
        assert len(_our_posts(slack, "C0TEAM")) == 1
        assert [r.message["To"] for r in srv.messages] == ["owner@example.com"]
        sent = {"teams": len(teams.requests), "pd": len(pdf.requests), "hook": len(hook.requests),
                "slack": len(slack.calls("chat.postMessage")), "mail": len(srv.messages)}

        # the same run again: nothing new anywhere
        again = run(t + pd.Timedelta(minutes=10))
        assert again.queued == 0 and again.delivery.delivered == 0 and not sns_messages()
        assert sent == {"teams": len(teams.requests), "pd": len(pdf.requests), "hook": len(hook.requests),
                        "slack": len(slack.calls("chat.postMessage")), "mail": len(srv.messages)}

        # over: every channel hears "resolved"; PagerDuty's incident closes itself
        run(inc.end + pd.Timedelta(days=3))
        assert pdf.incidents[group] == "resolved"
        resolved_cards = [c for c in teams.cards if c["body"][0]["text"].startswith("Resolved")
                          and group in json.dumps(c).replace("\\\\", "")]
        assert len(resolved_cards) == 1
        assert [x["event"] for x in hook.documents if x["incident"] == group] == ["firing", "resolved"]
        assert [m["event"] for m in sns_messages() if m["incident"] == group] == ["resolved"]
        # the hostile project name stays data: no markdown link in any markdown-parsed place of the cards
        for c in teams.cards:
            assert "[x](https" not in c["body"][0]["text"]
    srv.stop()
    state = (tmp_path / "state.db").read_bytes()
    for secret in (slack.token, teams.sig, pd_key, hook.secret, hook.path_token):
        assert secret not in caplog.text and secret.encode() not in state


# ----------------------------------------------------------------------------------------------- fallback


def _fallback_config(sc: Scenario, d: Path, tmp: Path, fake: Any, smtp_port: int) -> Path:
    inc = _incident(sc)
    doc = {
        "providers": [{"type": "files", "costs": str(d / "costs.csv"), "usage": str(d / "usage.csv")}],
        "projects": {str(inc.project_id): {"name": "payments", "owner": "miners-team"}},
        "owners": {"miners-team": {"slack_channel": "C0TEAM"},
                   "finops": {"slack_channel": "C0FINOPS", "email": ["finops@example.com"]}},
        "alerting": {"repeat_interval": "4h", "default_owner": "finops"},
        "notify": {"slack": {"token": "${SLACK_BOT_TOKEN}", "channel": "C0ALERTS", "api_url": fake.api_url,
                             "timeout": 1, "charts": False},
                   "email": {"smtp_host": "127.0.0.1", "smtp_port": smtp_port, "starttls": False,
                             "from_addr": "costwatch@example.com", "timeout": 5},
                   "stdout": False},
        "state": {"path": str(tmp / "state.db")},
    }
    (tmp / "c.yaml").write_text(yaml.safe_dump(doc))
    return tmp / "c.yaml"


def test_revoked_slack_token_falls_back_to_email_until_fixed(data: tuple[Scenario, Path], slack: Any,
                                                             tmp_path: Path) -> None:
    """Slack answers invalid_auth: `costwatch run` exits 1 and the default owner gets one email naming Slack
    and the reason, in the same run.  A retried run sends nothing new; with the token fixed (same state) the
    Slack message that waited is delivered and the fallback stops."""
    from click.testing import CliRunner

    from costwatch.cli import cli

    sc, d = data
    inc = _incident(sc)
    srv = smtp_server.start()
    try:
        path = _fallback_config(sc, d, tmp_path, slack, srv.port)
        t = inc.start + 3 * H

        def run(at: pd.Timestamp, token: str) -> Any:
            return CliRunner().invoke(cli, ["run", "--config", str(path), "--as-of", at.isoformat(), "--no-charts"],
                                      env={TOKEN_ENV: token}, catch_exceptions=False)

        broken = run(t, "xoxb-revoked-token")
        assert broken.exit_code == 1, broken.output
        assert "channel broken: notify.slack" in broken.output and "invalid_auth" in broken.output
        assert len(srv.messages) == 1
        mail = srv.messages[0]
        assert mail.rcpt_tos == ["finops@example.com"]
        body = mail.message.get_body(("plain",))
        assert body is not None
        text = body.get_content()
        assert "Slack" in str(mail.message["Subject"]) and "Slack" in text and "invalid_auth" in text
        assert "xoxb-revoked-token" not in mail.data.decode(errors="replace")
        assert not _our_posts(slack, "C0TEAM")

        # the same hour again (a retry, an overlapping run): still broken, no second fallback
        assert run(t + pd.Timedelta(minutes=20), "xoxb-revoked-token").exit_code == 1
        assert len(srv.messages) == 1
        # a repeat interval later, still broken: told once more
        assert run(t + 4 * H + pd.Timedelta(minutes=5), "xoxb-revoked-token").exit_code == 1
        assert len(srv.messages) == 2

        fixed = run(t + 5 * H, slack.token)
        assert fixed.exit_code == 0, fixed.output
        posts = _our_posts(slack, "C0TEAM")
        # the first message that waited, then the reminder queued while Slack was broken, in its thread
        assert len(posts) == 2 and posts[0].get("thread_ts") in (None, posts[0]["ts"])
        assert posts[1]["thread_ts"] == posts[0]["ts"]
        assert "channel broken" not in fixed.output and "failed 0" in fixed.output
        assert len(srv.messages) == 2  # the fallback stopped
        assert run(t + 9 * H + pd.Timedelta(minutes=5), slack.token).exit_code == 0
        assert len(srv.messages) == 2
        assert slack.token.encode() not in (tmp_path / "state.db").read_bytes()
    finally:
        srv.stop()
