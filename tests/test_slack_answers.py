"""Owners answer from Slack (issue 19): the real Bolt app served over HTTP by uvicorn (and through its AWS
Lambda adapter), driven with requests signed the way Slack signs them, against the fake Slack Web API and
both state stores (SQLite, DynamoDB in moto).

The incident is made the way a run makes it: alerts → incidents.plan → outbox → the real SlackNotifier
posting to the fake, so the buttons pressed are the ones costwatch rendered.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import pytest
from fake_slack import FakeSlack
from slack_sdk.signature import SignatureVerifier

from costwatch import answers, feedback, incidents, outbox, silences
from costwatch.alerts import Alert
from costwatch.config import Config, parse_config
from costwatch.notifiers.slack import from_config
from costwatch.notifiers.slack_actions import ACTIONS_BLOCK
from costwatch.state import DynamoStore, SqliteStore, Store, create_dynamodb_table

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = pd.Timestamp("2026-11-20T10:00:00Z")


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "state.db")
        yield s
        s.close()
        return
    import boto3
    from moto import mock_aws

    request.getfixturevalue("aws_env")
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_dynamodb_table(client, "costwatch-state")
        yield DynamoStore("costwatch-state", client=client)


def config(slack: FakeSlack, tmp_path: Path, secret: str | None = SECRET) -> Config:
    text = (f"notify:\n  stdout: false\n  slack:\n    token: {slack.token}\n    channel: '#alerts'\n"
            f"    api_url: {slack.api_url}\n    charts: false\n"
            + (f"    signing_secret: {secret}\n" if secret else "")
            + f"state:\n  path: {tmp_path / 'state.db'}\n")
    return parse_config(text)


def spike(project: str = "123456789012", observed: float = 900.0, start: str = "2026-11-19",
          kind: str = "cost_spike", **evidence: Any) -> Alert:
    return Alert(kind=kind, project=project, project_name="payments-prod", provider="aws",
                 start=pd.Timestamp(start, tz="UTC"), detected_at=pd.Timestamp(start, tz="UTC") + pd.Timedelta(days=1),
                 severity="warning", observed=observed, expected=400.0, lower=300.0, upper=520.0, currency="USD",
                 score=6.0, service="Compute", summary="compute spend well above its band", evidence=dict(evidence),
                 scope="Compute")


def post_incident(cfg: Config, store: Store, alerts: list[Alert]) -> str:
    """A run's delivery path: plan → outbox → SlackNotifier → fake.  Returns the incident group id."""
    p = incidents.plan(alerts, store, cfg, NOW, as_of=NOW, tag_owners={}, silences=silences.active(store, NOW))
    outbox.enqueue_many(store, p.notifications, NOW)
    incidents.commit(store, p)
    outbox.deliver(store, {"slack": from_config(cfg.notify.slack, cfg)}, NOW)  # type: ignore[arg-type]
    return p.notifications[0].group_key


class Server:
    """`costwatch serve`'s ASGI app under uvicorn on a free loopback port, in a thread."""

    def __init__(self, cfg: Config, store: Store) -> None:
        import uvicorn

        from costwatch.surfaces.serve import asgi_app

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.server = uvicorn.Server(uvicorn.Config(asgi_app(cfg, store, clock=lambda: NOW), host="127.0.0.1",
                                                    port=self.port, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.02)
        raise RuntimeError("uvicorn did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)

    def url(self, path: str = "/slack/events") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def payload(slack: FakeSlack, action_id: str, value: str, *, user: str = "UOWNER1", channel: str = "C0ALERTS",
            message: dict[str, Any] | None = None, select: bool = False) -> dict[str, Any]:
    """A block_actions payload shaped like Slack's, for the latest costwatch message in ``channel``."""
    msg = message or next(m for m in reversed(slack.channels[channel].messages) if not m.get("parent_ts"))
    action: dict[str, Any] = {"action_id": action_id, "block_id": ACTIONS_BLOCK, "action_ts": f"{time.time():.6f}"}
    if select:
        action |= {"type": "static_select", "selected_option": {"text": {"type": "plain_text", "text": "x"},
                                                                 "value": value}}
    else:
        action |= {"type": "button", "value": value, "text": {"type": "plain_text", "text": "x"}}
    return {"type": "block_actions", "user": {"id": user, "username": "alice", "team_id": "T0FAKE"},
            "api_app_id": "A0FAKE", "token": "legacy-verification-token", "trigger_id": "13345224609.738474920.8088",
            "team": {"id": "T0FAKE", "domain": "example"}, "is_enterprise_install": False,
            "container": {"type": "message", "message_ts": msg["ts"], "channel_id": channel, "is_ephemeral": False},
            "channel": {"id": channel, "name": slack.channels[channel].name},
            "message": {k: v for k, v in msg.items() if k != "parent_ts"}, "state": {"values": {}},
            "response_url": f"{slack.base}/actions/T0FAKE/1/x", "actions": [action]}


def signed(body: dict[str, Any], *, secret: str = SECRET, stamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """Form-encode ``payload=…`` and sign it as Slack does: v0=HMAC-SHA256(secret, "v0:{ts}:{body}")."""
    raw = urlencode({"payload": json.dumps(body)})
    ts = str(stamp if stamp is not None else int(time.time()))
    sig = SignatureVerifier(secret).generate_signature(timestamp=ts, body=raw)
    return raw.encode(), {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
                          "X-Slack-Signature": sig}


class Answer:
    def __init__(self, status_code: int, text: str) -> None:
        self.status_code, self.text = status_code, text


def http(url: str, raw: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    req = urllib.request.Request(url, data=raw, headers=headers or {},  # noqa: S310 - loopback test server
                                 method="POST" if raw is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback test server
            return Answer(r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.read().decode())


def press(server: Server, body: dict[str, Any], **kw: Any) -> Answer:
    raw, headers = signed(body, **kw)
    return http(server.url(), raw, headers)


def buttons(msg: dict[str, Any]) -> list[str]:
    block = next((b for b in msg.get("blocks") or [] if b.get("block_id") == ACTIONS_BLOCK), None)
    return [e["action_id"] for e in block["elements"]] if block else []


# ------------------------------------------------------------------------------------------ tests


def test_messages_carry_the_buttons_and_slack_accepts_them(slack: FakeSlack, tmp_path: Path, store: Store) -> None:
    cfg = config(slack, tmp_path)
    post_incident(cfg, store, [spike()])
    msg = slack.channels["C0ALERTS"].messages[0]
    assert buttons(msg) == ["costwatch_ack", "costwatch_silence", "costwatch_expected", "costwatch_not_anomaly"]
    # without a signing secret nobody could answer them: no buttons
    plain = config(slack, tmp_path, secret=None)
    post_incident(plain, SqliteStore(tmp_path / "other.db"), [spike(project="999")])
    assert buttons(slack.channels["C0ALERTS"].messages[-1]) == []


def test_acknowledge_updates_the_message_in_place_and_confirms_in_the_thread(
        slack: FakeSlack, tmp_path: Path, store: Store) -> None:
    cfg = config(slack, tmp_path)
    group = post_incident(cfg, store, [spike()])
    with Server(cfg, store) as srv:
        r = press(srv, payload(slack, "costwatch_ack", group))
        assert r.status_code == 200
        assert srv.server.started
        health = http(srv.url("/healthz"))
        assert health.status_code == 200
    key = group.split("#")[0]
    rec = store.get("incident", key)
    assert rec is not None and rec.doc["acked_by"] == "UOWNER1"
    root = slack.channels["C0ALERTS"].messages[0]
    assert "edited" in root and buttons(root)[0] == "costwatch_unack"
    status = next(b for b in root["blocks"] if b.get("block_id") == "costwatch_status")
    assert "Acknowledged by <@UOWNER1>" in status["elements"][0]["text"]
    replies = [m for m in slack.channels["C0ALERTS"].messages if m.get("parent_ts") == root["ts"]]
    assert len(replies) == 1 and "<@UOWNER1>" in replies[0]["text"] and "acknowledged" in replies[0]["text"]
    # the same state `costwatch ack` writes: the next run does not repeat it
    later = NOW + pd.Timedelta(hours=5)
    p = incidents.plan([spike()], store, cfg, later, as_of=later, tag_owners={}, silences=[])
    assert p.notifications == []


def test_silence_then_unsilence_share_the_cli_silences(slack: FakeSlack, tmp_path: Path, store: Store) -> None:
    cfg = config(slack, tmp_path)
    group = post_incident(cfg, store, [spike()])
    with Server(cfg, store) as srv:
        assert press(srv, payload(slack, "costwatch_silence", f"{group}|6", select=True)).status_code == 200
        quiet = silences.active(store, NOW)
        assert len(quiet) == 1 and quiet[0].project == "123456789012"
        assert pd.Timestamp(quiet[0].until) == NOW + pd.Timedelta(hours=6)
        assert "costwatch_unsilence" in buttons(slack.channels["C0ALERTS"].messages[0])
        assert press(srv, payload(slack, "costwatch_unsilence", group)).status_code == 200
    assert silences.active(store, NOW) == []
    assert "costwatch_silence" in buttons(slack.channels["C0ALERTS"].messages[0])


def test_bad_signature_stale_timestamp_and_replay_change_nothing(slack: FakeSlack, tmp_path: Path,
                                                                 store: Store) -> None:
    cfg = config(slack, tmp_path)
    group = post_incident(cfg, store, [spike()])
    key = group.split("#")[0]
    body = payload(slack, "costwatch_ack", group)
    with Server(cfg, store) as srv:
        assert press(srv, body, secret="not-the-secret").status_code == 401
        assert press(srv, body, stamp=int(time.time()) - 6 * 60).status_code == 401
        rec = store.get("incident", key)
        assert rec is not None and not rec.doc.get("acked_by")
        raw, headers = signed(body)
        assert http(srv.url(), raw, headers).status_code == 200
        again = http(srv.url(), raw, headers)
        assert again.status_code == 409 and "replayed" in again.text
    confirmations = [m for m in slack.channels["C0ALERTS"].messages if m.get("parent_ts")]
    assert len(confirmations) == 1
    assert len(slack.calls("chat.update")) == 1


def test_wrong_channel_non_member_and_unknown_action_are_refused(slack: FakeSlack, tmp_path: Path,
                                                                  store: Store) -> None:
    cfg = config(slack, tmp_path)
    group = post_incident(cfg, store, [spike()])
    key = group.split("#")[0]
    msg = slack.channels["C0ALERTS"].messages[0]
    # the same message copied into another channel (a forwarded message keeps its buttons)
    slack.channels["C0TEAM"].messages.append(dict(msg))
    with Server(cfg, store) as srv:
        assert press(srv, payload(slack, "costwatch_ack", group, channel="C0TEAM", message=msg)).status_code == 200
        assert press(srv, payload(slack, "costwatch_ack", group, user="UOUTSIDER")).status_code == 200
        assert press(srv, payload(slack, "costwatch_selfdestruct", group)).status_code == 200
        assert press(srv, payload(slack, "someone_elses_button", group)).status_code == 404
    rec = store.get("incident", key)
    assert rec is not None and not rec.doc.get("acked_by")
    assert slack.calls("chat.update") == []
    said = [e["text"] for e in slack.ephemeral]
    assert any("not allowed" in t and "own message" in t for t in said)
    assert [e["user"] for e in slack.ephemeral if "members" in e["text"]] == []  # an outsider is not in channel
    assert any("unknown answer" in t for t in said)


def test_outsider_is_told_privately_when_the_channel_is_right(slack: FakeSlack, tmp_path: Path, store: Store) -> None:
    cfg = config(slack, tmp_path)
    group = post_incident(cfg, store, [spike()])
    slack.channels["C0ALERTS"].members.append("UGUEST")  # can receive ephemerals, but see below
    with Server(cfg, store) as srv:
        slack.channels["C0ALERTS"].members.remove("UGUEST")
        press(srv, payload(slack, "costwatch_ack", group, user="UGUEST"))
    rec = store.get("incident", group.split("#")[0])
    assert rec is not None and not rec.doc.get("acked_by")
    assert slack.calls("chat.postEphemeral")[-1].params["user"] == "UGUEST"


def test_expected_and_not_an_anomaly_hold_back_the_same_pattern_only(slack: FakeSlack, tmp_path: Path,
                                                                     store: Store) -> None:
    cfg = config(slack, tmp_path)
    group = post_incident(cfg, store, [spike()])
    with Server(cfg, store) as srv:
        assert press(srv, payload(slack, "costwatch_not_anomaly", group)).status_code == 200
        answered = feedback.load(store, NOW)
        assert [(f.kind, f.fingerprint) for f in answered] == [("not_anomaly", spike().fingerprint)]
        assert "costwatch_undo" in buttons(slack.channels["C0ALERTS"].messages[0])
        # the same series at the same level next week is held back; twice the level still alerts
        same, bigger = spike(start="2026-11-26", observed=950.0), spike(start="2026-11-27", observed=2000.0)
        miner = spike(kind="mining_suspected", start="2026-11-27", nodes=[{"node": "i-0abc"}])
        kept, held = feedback.apply([same, bigger, miner], answered)
        assert [a for a, _ in held] == [same] and kept == [bigger, miner]
        assert press(srv, payload(slack, "costwatch_undo", group)).status_code == 200
        assert feedback.load(store, NOW) == []
        assert press(srv, payload(slack, "costwatch_expected", group)).status_code == 200
    accepted = feedback.load(store, NOW)
    assert [f.kind for f in accepted] == ["expected"]
    # and a planned-activity mark for cost spikes, as `costwatch silence --planned --kind cost_spike` makes
    (mark,) = silences.active(store, NOW)
    assert mark.planned and mark.kind == "cost_spike" and mark.project == "123456789012"
    later = spike(start="2026-11-25", observed=1050.0)   # the new level, with some growth
    jump = spike(start="2026-11-25", observed=1600.0)
    kept, held = feedback.apply([later, jump], accepted)
    assert [a for a, _ in held] == [later] and kept == [jump]
    assert later.evidence["feedback"]["kind"] == "expected"


def test_mining_answer_covers_only_the_same_nodes_without_new_evidence() -> None:
    surge = spike(kind="mining_suspected", nodes=[{"node": "i-1"}, {"node": "i-2"}])
    fb = feedback.from_alert(surge.to_dict(), "not_anomaly", "UOWNER1", NOW)
    same = spike(kind="mining_suspected", start="2026-11-25", nodes=[{"node": "i-2"}])
    other_node = spike(kind="mining_suspected", start="2026-11-25", nodes=[{"node": "i-9"}])
    with_pool = spike(kind="mining_suspected", start="2026-11-25", nodes=[{"node": "i-1"}],
                      guardduty=[{"type": "CryptoCurrency:EC2/BitcoinTool.B!DNS"}])
    kept, held = feedback.apply([same, other_node, with_pool], [fb])
    assert [a for a, _ in held] == [same] and kept == [other_node, with_pool]


def test_an_answer_racing_a_run_keeps_both_writes(slack: FakeSlack, tmp_path: Path, store: Store) -> None:
    cfg = config(slack, tmp_path)
    group = post_incident(cfg, store, [spike()])
    later = NOW + pd.Timedelta(hours=1)
    # the run reads the incident and decides (an update: the spike grew) ...
    p = incidents.plan([spike(observed=2000.0)], store, cfg, later, as_of=later, tag_owners={}, silences=[])
    # ... an owner acknowledges before the run writes ...
    answers.apply(store, "ack", group, "UOWNER1", later)
    # ... the run's write loses the version check instead of erasing the ack (its notifications are queued
    # with stable ids; the next run decides again from the acknowledged state)
    assert incidents.commit(store, p) == [group.split("#")[0]]
    rec = store.get("incident", group.split("#")[0])
    assert rec is not None and rec.doc["acked_by"] == "UOWNER1"


def test_an_older_occurrence_or_a_resolved_incident_is_not_acknowledged(tmp_path: Path, store: Store,
                                                                        slack: FakeSlack) -> None:
    cfg = config(slack, tmp_path)
    group = post_incident(cfg, store, [spike()])
    key, number = answers.split_group(group)
    with pytest.raises(answers.AnswerRefused, match="earlier occurrence"):
        answers.apply(store, "ack", f"{key}#{number + 1}", "U1", NOW)
    later = NOW + pd.Timedelta(days=5)
    incidents.commit(store, incidents.plan([], store, cfg, later, as_of=later, tag_owners={}, silences=[]))
    with pytest.raises(answers.AnswerRefused, match="resolved"):
        answers.apply(store, "ack", group, "U1", later)
    answers.apply(store, "not_anomaly", group, "U1", later)  # feedback after the fact is still taken
    assert len(feedback.load(store, later)) == 1


def test_lambda_function_url_event_through_bolts_adapter(slack: FakeSlack, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         restore_logging: None) -> None:
    from costwatch.surfaces import slack_lambda

    cfg_text = (f"notify:\n  stdout: false\n  slack:\n    token: ${{SLACK_BOT_TOKEN}}\n    channel: '#alerts'\n"
                f"    api_url: {slack.api_url}\n    charts: false\n    signing_secret: ${{SLACK_SIGNING_SECRET}}\n"
                f"state:\n  path: {tmp_path / 'state.db'}\n")
    monkeypatch.setenv("COSTWATCH_CONFIG_YAML", cfg_text)
    monkeypatch.setenv("SLACK_BOT_TOKEN", slack.token)
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SECRET)
    monkeypatch.setattr(slack_lambda, "_handler", None)
    cfg = parse_config(cfg_text, env={"SLACK_BOT_TOKEN": slack.token, "SLACK_SIGNING_SECRET": SECRET})
    store = SqliteStore(tmp_path / "state.db")
    group = post_incident(cfg, store, [spike()])
    raw, headers = signed(payload(slack, "costwatch_ack", group))
    event = {"version": "2.0", "routeKey": "$default", "rawPath": "/", "rawQueryString": "",
             "headers": {k.lower(): v for k, v in headers.items()}, "body": raw.decode(), "isBase64Encoded": False,
             "requestContext": {"http": {"method": "POST", "path": "/"}}}
    context = SimpleNamespace(function_name="costwatch-prod-slack", aws_request_id="req-1",
                              invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:costwatch-prod-slack")
    out = slack_lambda.handle(event, context)
    assert out["statusCode"] == 200
    rec = store.get("incident", group.split("#")[0])
    assert rec is not None and rec.doc["acked_by"] == "UOWNER1"
    bad = dict(event, headers={**event["headers"], "x-slack-signature": "v0=" + "0" * 64})
    assert slack_lambda.handle(bad, context)["statusCode"] == 401


def test_check_config_needs_the_signing_secret_for_interactivity(slack: FakeSlack, tmp_path: Path) -> None:
    from costwatch.errors import ConfigError

    text = (f"notify:\n  slack:\n    token: {slack.token}\n    channel: '#alerts'\n    interactive: true\n")
    with pytest.raises(ConfigError, match="signing_secret"):
        parse_config(text)


def test_cli_lists_answers_and_serve_refuses_without_a_signing_secret(slack: FakeSlack, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from costwatch.cli import cli

    cfg = config(slack, tmp_path)
    store = SqliteStore(tmp_path / "state.db")
    group = post_incident(cfg, store, [spike()])
    answers.apply(store, "not_anomaly", group, "UOWNER1", pd.Timestamp.now(tz="UTC"))
    store.close()
    path = tmp_path / "costwatch.yaml"
    path.write_text(f"notify:\n  slack:\n    token: {slack.token}\n    channel: '#alerts'\n"
                    f"state:\n  path: {tmp_path / 'state.db'}\n", encoding="utf-8")
    listed = CliRunner().invoke(cli, ["feedback", "--config", str(path), "--project", "payments-prod"])
    assert listed.exit_code == 0 and "not an anomaly: cost_spike in payments-prod Compute" in listed.output
    assert "by UOWNER1" in listed.output
    assert "no answers" in CliRunner().invoke(cli, ["feedback", "--config", str(path), "--project", "x"]).output
    refused = CliRunner().invoke(cli, ["serve", "--config", str(path), "--port", "3999"])
    assert refused.exit_code == 2 and "signing_secret" in refused.output


def test_a_digest_lists_each_incident_with_its_own_answer_menu(slack: FakeSlack, tmp_path: Path,
                                                               store: Store) -> None:
    cfg = config(slack, tmp_path)
    alerts = [spike(project=f"10000000000{i}") for i in range(12)]   # more than digest_after: one digest
    post_incident(cfg, store, alerts)
    (digest,) = [m for m in slack.channels["C0ALERTS"].messages if not m.get("parent_ts")]
    menus = [b["accessory"] for b in digest["blocks"] if b.get("accessory", {}).get("type") == "overflow"]
    assert len(menus) == 12 and buttons(digest) == []
    value = menus[3]["options"][1]["value"]               # "silence6|<group>"
    assert value.startswith("silence6|")
    group = value.split("|", 1)[1]
    rec = store.get("incident", group.split("#")[0])
    assert rec is not None
    project = rec.doc["alerts"][0]["project"]
    with Server(cfg, store) as srv:
        body = payload(slack, "costwatch_digest", "", message=digest)
        body["actions"][0] = {"action_id": "costwatch_digest", "type": "overflow", "block_id": "x",
                              "selected_option": {"text": {"type": "plain_text", "text": "Silence 6 h"},
                                                  "value": value}, "action_ts": "1"}
        assert press(srv, body).status_code == 200
    assert [s.project for s in silences.active(store, NOW)] == [project]
    reply = [m for m in slack.channels["C0ALERTS"].messages if m.get("parent_ts") == digest["ts"]][-1]
    assert "cost spike in payments-prod: silenced by <@UOWNER1>" in reply["text"]
    assert slack.calls("chat.update") == []   # the digest itself is not rewritten
