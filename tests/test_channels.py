"""Webhook, PagerDuty, Teams and SNS notifiers: against local fakes over real HTTP (tests/fake_channels.py) and
moto for SNS; the wire shapes, the fault classification (429/5xx transient with Retry-After, 4xx permanent
with what to do), secrets kept out of errors and logs, and a lost answer (the same as a run killed between
sending and marking) resent through the outbox with the same idempotency key."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fake_channels import FakePagerDuty, FakeReceiver, FakeTeams, check_card_message

from costwatch import outbox
from costwatch.config import Config, OwnerConfig, PagerDutyConfig, SnsConfig, TeamsConfig, WebhookConfig
from costwatch.errors import ConfigError
from costwatch.notifiers import build
from costwatch.notifiers.pagerduty import PagerDutyNotifier
from costwatch.notifiers.schema import SCHEMA
from costwatch.notifiers.sns import SnsNotifier
from costwatch.notifiers.teams import TeamsNotifier, card, esc, message
from costwatch.notifiers.webhook import WebhookNotifier, sign, verify
from costwatch.notify import Notification, Target
from costwatch.state import SqliteStore

ALERTS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "alerts" / "demo_alerts.json").read_text())
MINING, SPIKE = ALERTS[0], ALERTS[1]
EVIL = "**pwn** [click](https://evil.example) <at>all</at> {{DATE(2020-01-01)}} # ~x~ _y_ > q"
NOW = pd.Timestamp("2026-03-01T12:00:00Z")


def note(channel: str, *alerts: dict[str, Any], event: str = "firing", seq: int = 0, nid: str = "n-1",
         address: str = "", **kw: Any) -> Notification:
    fields: dict[str, Any] = {
        "id": nid, "group_key": "3fa0c1d2e4b5a697#1", "event": event, "target": Target(channel, address),
        "title": "mining suspected in recs-prod-3", "alerts": [copy.deepcopy(a) for a in (alerts or (MINING,))],
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "owner": "ml-platform",
        "sequence": seq, "labels": {"project": str(MINING["project"])}}
    fields.update(kw)
    return Notification(**fields)


def hostile(a: dict[str, Any] = MINING) -> dict[str, Any]:
    out = copy.deepcopy(a)
    out["project_name"] = EVIL
    out["summary"] = EVIL
    return out


def through_outbox(store: SqliteStore, notifier: Any, *notes: Notification,
                   at: pd.Timestamp = NOW) -> outbox.DeliveryReport:
    for n in notes:
        outbox.enqueue(store, n, at)
    return outbox.deliver(store, {notifier.name: notifier}, at, sleep=lambda s: None, in_run_retries=0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "state.db")
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------- webhook


@pytest.fixture
def receiver() -> Iterator[FakeReceiver]:
    with FakeReceiver() as fake:
        yield fake


def test_webhook_posts_the_signed_v1_document(receiver: FakeReceiver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    n = WebhookNotifier(receiver.url, receiver.secret, timeout=2)
    [d] = n.notify([note("webhook", hostile(), SPIKE)])
    assert d.ok and d.ref == "n-1"
    [doc] = receiver.documents
    assert doc["schema"] == SCHEMA and doc["id"] == "n-1" and doc["event"] == "firing"
    assert doc["incident"] == "3fa0c1d2e4b5a697#1" and doc["severity"] == "critical" and doc["sequence"] == 0
    assert doc["alert_count"] == 2 and not doc["truncated"] and doc["alerts"][0]["project_name"] == EVIL
    assert doc["alerts"][0]["evidence"]["node_count"] == MINING["evidence"]["node_count"]
    req = receiver.requests[0]
    assert req.headers["idempotency-key"] == "n-1" and req.headers["x-costwatch-schema"] == SCHEMA
    # the documented verification works on the raw body
    assert verify(receiver.secret, req.headers["x-costwatch-timestamp"], req.body, req.headers["x-costwatch-signature"])
    assert not verify(receiver.secret, req.headers["x-costwatch-timestamp"], req.body + b" ",
                      req.headers["x-costwatch-signature"])
    old = str(int(req.headers["x-costwatch-timestamp"]) - 3600)
    assert not verify(receiver.secret, old, req.body, sign(receiver.secret, old, req.body))  # a replay
    assert receiver.secret not in caplog.text and receiver.path_token not in caplog.text


def test_webhook_faults_are_classified_without_the_secret(receiver: FakeReceiver) -> None:
    n = WebhookNotifier(receiver.url, receiver.secret, timeout=2)
    receiver.fail(status=429, retry_after=7)
    receiver.fail(status=503)
    [rate] = n.notify([note("webhook")])
    [down] = n.notify([note("webhook")])
    assert not rate.ok and not rate.permanent and rate.retry_after == 7
    assert not down.ok and not down.permanent and "503" in (down.error or "")
    bad = WebhookNotifier(receiver.url, "the-wrong-secret-0000", timeout=2)
    [refused] = bad.notify([note("webhook")])
    assert refused.permanent and "notify.webhook.secret" in (refused.error or "")
    gone = WebhookNotifier(receiver.url + "x", receiver.secret, timeout=2)
    [missing] = gone.notify([note("webhook")])
    assert missing.permanent and "404" in (missing.error or "")
    for d in (rate, down, refused, missing):
        assert receiver.path_token not in (d.error or "") and receiver.secret not in (d.error or "")
    receiver.fail(status=307)
    [moved] = n.notify([note("webhook")])
    assert moved.permanent and "redirect" in (moved.error or "")
    assert [r.path for r in receiver.requests].count("/elsewhere") == 0   # not followed
    refused_port = WebhookNotifier("http://127.0.0.1:9/in/x", receiver.secret, timeout=1)
    [unreachable] = refused_port.notify([note("webhook")])
    assert not unreachable.ok and not unreachable.permanent and "could not reach" in (unreachable.error or "")


def test_webhook_lost_answer_is_resent_with_the_same_id(receiver: FakeReceiver, store: SqliteStore) -> None:
    """The receiver took the POST but the answer never came (as with a run killed between sending and
    marking): the next run sends it again, with the same id, which a receiver dedupes on."""
    n = WebhookNotifier(receiver.url, receiver.secret, timeout=0.5)
    receiver.fail(accept=True, hang=1.5)
    first = through_outbox(store, n, note("webhook"))
    assert first.delivered == 0 and first.pending == 1
    again = outbox.deliver(store, {"webhook": n}, NOW + pd.Timedelta(minutes=5), sleep=lambda s: None)
    assert again.delivered == 1
    assert len(receiver.documents) == 2 and len(receiver.unique) == 1
    assert {r.headers["x-costwatch-id"] for r in receiver.requests} == {"n-1"}


def test_webhook_body_is_bounded(receiver: FakeReceiver) -> None:
    huge = copy.deepcopy(MINING)
    huge["evidence"]["nodes"] = [{"node": f"n-{i}" + "x" * 200, "cpu": 99} for i in range(6000)]
    n = WebhookNotifier(receiver.url, receiver.secret, timeout=5)
    [d] = n.notify([note("webhook", huge, *([SPIKE] * 50))])
    assert d.ok
    assert len(receiver.requests[0].body) <= 1024 * 1024
    doc = receiver.documents[0]
    assert doc["truncated"] and doc["alert_count"] == 51


def test_webhook_config_https_only() -> None:
    ok = WebhookConfig.model_validate({"url": "https://hooks.example.com/x", "secret": "s" * 20})
    assert ok.url.get_secret_value().startswith("https://")
    WebhookConfig.model_validate({"url": "http://127.0.0.1:8080/x", "secret": "s" * 20})
    for bad in ({"url": "http://hooks.example.com/x", "secret": "s" * 20},
                {"url": "http://127.0.0.1.evil.example/x", "secret": "s" * 20},
                {"url": "https://hooks.example.com/x", "secret": "short"}):
        with pytest.raises(ValueError):
            WebhookConfig.model_validate(bad)


# ---------------------------------------------------------------------------------------------- PagerDuty

PD_KEY = "R0UTINGKEYsecret0000000000000001"


@pytest.fixture
def pd_fake() -> Iterator[FakePagerDuty]:
    with FakePagerDuty((PD_KEY,)) as fake:
        yield fake


def pdn(fake: FakePagerDuty, key: str = PD_KEY, timeout: float = 2.0) -> PagerDutyNotifier:
    section = PagerDutyConfig.model_validate({"routing_key": key, "events_url": fake.url, "timeout": timeout,
                                              "client_url": "https://costwatch.example.com"})
    notifier = build("pagerduty", section, Config())
    assert isinstance(notifier, PagerDutyNotifier)
    return notifier


def test_pagerduty_triggers_then_resolves_one_incident(pd_fake: FakePagerDuty) -> None:
    n = pdn(pd_fake)
    [a] = n.notify([note("pagerduty", hostile(), SPIKE)])
    [b] = n.notify([note("pagerduty", MINING, event="updated", seq=1, nid="n-2")])
    assert a.ok and b.ok and a.ref == "3fa0c1d2e4b5a697#1"
    assert pd_fake.incidents == {"3fa0c1d2e4b5a697#1": "triggered"}
    e = pd_fake.events[0]
    assert e["event_action"] == "trigger" and e["dedup_key"] == "3fa0c1d2e4b5a697#1"
    p = e["payload"]
    assert p["severity"] == "critical" and p["class"] == "mining_suspected"
    assert p["source"] == f"{MINING['provider']}:{MINING['project']}"
    assert p["custom_details"]["schema"] == SCHEMA and p["custom_details"]["alerts"][0]["summary"] == EVIL
    assert e["links"][0]["href"] == "https://costwatch.example.com"
    [c] = n.notify([note("pagerduty", MINING, event="resolved", seq=2, nid="n-3")])
    assert c.ok and pd_fake.incidents == {"3fa0c1d2e4b5a697#1": "resolved"}
    assert pd_fake.events[-1] == {"routing_key": PD_KEY, "event_action": "resolve", "dedup_key": "3fa0c1d2e4b5a697#1"}


@pytest.mark.parametrize(("severity", "expected"), [("critical", "critical"), ("high", "error"),
                                                     ("warning", "warning"), ("info", "info")])
def test_pagerduty_severity_mapping(pd_fake: FakePagerDuty, severity: str, expected: str) -> None:
    a = copy.deepcopy(SPIKE)
    a["severity"] = severity
    [d] = pdn(pd_fake).notify([note("pagerduty", a)])
    assert d.ok and pd_fake.events[-1]["payload"]["severity"] == expected


def test_pagerduty_faults(pd_fake: FakePagerDuty, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pd_fake.fail(status=429, retry_after=3)
    pd_fake.fail(status=502)
    n = pdn(pd_fake)
    [rate] = n.notify([note("pagerduty")])
    [down] = n.notify([note("pagerduty")])
    assert rate.retry_after == 3 and not rate.permanent and not down.permanent and "502" in (down.error or "")
    wrong = "WR0NGKEY000000000000000000000000"
    [bad] = pdn(pd_fake, key=wrong).notify([note("pagerduty")])
    assert bad.permanent and "routing_key" in (bad.error or "") and wrong not in (bad.error or "")
    assert wrong not in caplog.text and PD_KEY not in caplog.text


def test_pagerduty_lost_answer_repeats_a_harmless_trigger(pd_fake: FakePagerDuty, store: SqliteStore) -> None:
    n = pdn(pd_fake, timeout=0.5)
    pd_fake.fail(accept=True, hang=1.5)
    assert through_outbox(store, n, note("pagerduty")).pending == 1
    assert outbox.deliver(store, {"pagerduty": n}, NOW + pd.Timedelta(minutes=5), sleep=lambda s: None).delivered == 1
    assert len(pd_fake.events) == 2 and {e["dedup_key"] for e in pd_fake.events} == {"3fa0c1d2e4b5a697#1"}
    assert len(pd_fake.incidents) == 1


def test_pagerduty_event_fits_the_512kb_limit(pd_fake: FakePagerDuty) -> None:
    huge = copy.deepcopy(MINING)
    huge["evidence"]["nodes"] = [{"node": f"n-{i}" + "x" * 200, "cpu": 99} for i in range(6000)]
    [d] = pdn(pd_fake).notify([note("pagerduty", huge, *([SPIKE] * 30))])
    assert d.ok and len(pd_fake.requests[-1].body) < 512 * 1024
    assert pd_fake.events[-1]["payload"]["custom_details"]["truncated"] is True


# ---------------------------------------------------------------------------------------------- Teams


@pytest.fixture
def teams() -> Iterator[FakeTeams]:
    with FakeTeams() as fake:
        yield fake


def team(fake: FakeTeams, timeout: float = 2.0) -> TeamsNotifier:
    # TeamsConfig takes http:// only to localhost: the fake is on 127.0.0.1
    notifier = build("teams", TeamsConfig.model_validate({"webhook_url": fake.url, "timeout": timeout}), Config())
    assert isinstance(notifier, TeamsNotifier)
    return notifier


def _strings(x: Any) -> Iterator[tuple[str, str]]:
    """(element type, text) of every text in a card."""
    if isinstance(x, dict):
        for k, v in x.items():
            if isinstance(v, str) and k in ("text", "value", "title"):
                yield str(x.get("type")), v
            else:
                yield from _strings(v)
    elif isinstance(x, list):
        for v in x:
            yield from _strings(v)


def test_teams_card_has_the_slack_content_and_escapes_data(teams: FakeTeams) -> None:
    [d] = team(teams).notify([note("teams", hostile(), SPIKE)])
    assert d.ok and d.ref == "n-1"
    [c] = teams.cards
    texts = "\n".join(t for _, t in _strings(c))
    for want in ("Mining suspected", "Impact", "Nodes", "Next steps", "3fa0c1d2e4b5a697#1", "ml-platform",
                 "Services driving it"):
        assert want in texts, want
    # data reaches markdown-parsed places only escaped; verbatim only inside TextRuns (plain text)
    for kind, text in _strings(c):
        if kind != "TextRun":
            assert "**pwn**" not in text and "[click](" not in text and "<at>" not in text and "{{" not in text
    assert any(kind == "TextRun" and "[click](https://evil.example)" in t for kind, t in _strings(c))
    assert esc("a*b_[c](d)") == r"a\*b\_\[c\]\(d\)"


def test_teams_updates_are_new_cards_naming_the_first(teams: FakeTeams, store: SqliteStore) -> None:
    n = team(teams)
    first = note("teams", MINING)
    upd = note("teams", MINING, event="updated", seq=1, nid="n-2")
    res = note("teams", MINING, event="resolved", seq=2, nid="n-3")
    assert through_outbox(store, n, first, upd, res).delivered == 3
    titles = [c["body"][0]["text"] for c in teams.cards]
    assert titles[0].startswith("Mining suspected") and titles[1].startswith("Update ·")
    assert titles[2].startswith("Resolved ·")
    for c in teams.cards[1:]:
        assert any("n-1" in t for _, t in _strings(c))  # names the first message
        assert any("3fa0c1d2e4b5a697\\#1" in t or "3fa0c1d2e4b5a697#1" in t for _, t in _strings(c))


def test_teams_card_stays_under_the_size_limit(teams: FakeTeams) -> None:
    many = [hostile(a) for a in ALERTS] * 40
    c = card(note("teams", *many))
    assert not check_card_message(message(c))
    [d] = team(teams).notify([note("teams", *many)])
    assert d.ok and len(teams.requests[-1].body) <= 28 * 1024
    assert any("more alerts" in t for _, t in _strings(teams.cards[-1]))


def test_teams_faults(teams: FakeTeams, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    n = team(teams)
    teams.fail(status=429, retry_after=2)
    teams.fail(status=500)
    [rate] = n.notify([note("teams")])
    [down] = n.notify([note("teams")])
    assert rate.retry_after == 2 and not rate.permanent and not down.permanent
    teams.disabled = True
    [gone] = n.notify([note("teams")])
    assert gone.permanent and "workflow" in (gone.error or "")
    for d in (rate, down, gone):
        assert teams.sig not in (d.error or "")
    assert teams.sig not in caplog.text


def test_teams_config_refuses_plain_http() -> None:
    with pytest.raises(ValueError):
        TeamsConfig.model_validate({"webhook_url": "http://prod-00.westus.logic.azure.com/workflows/x"})


# ---------------------------------------------------------------------------------------------- SNS

FIFO_NAME = "costwatch-alerts.fifo"


@pytest.fixture
def sns_world(aws_env: None) -> Iterator[dict[str, Any]]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        sns, sqs = boto3.client("sns", region_name="us-east-1"), boto3.client("sqs", region_name="us-east-1")
        arn = sns.create_topic(Name="costwatch-alerts")["TopicArn"]
        q = sqs.create_queue(QueueName="alerts-in")["QueueUrl"]
        qarn = sqs.get_queue_attributes(QueueUrl=q, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn)
        yield {"sns": sns, "sqs": sqs, "arn": arn, "queue": q}


def received(world: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = world["sqs"].receive_message(QueueUrl=world["queue"], MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in msgs]


def test_sns_publishes_the_v1_document_with_filter_attributes(sns_world: dict[str, Any]) -> None:
    n = build("sns", SnsConfig.model_validate({"topic_arn": sns_world["arn"]}), Config())
    assert isinstance(n, SnsNotifier)
    evil = hostile()
    evil["project_name"] = "prød — ünïcode " + "x" * 200
    [d] = n.notify([note("sns", evil, SPIKE, title="mining suspected in prød — ünïcode\r\nBcc: x " + "y" * 200)])
    assert d.ok and d.ref
    [env] = received(sns_world)
    doc = json.loads(env["Message"])
    assert doc["schema"] == SCHEMA and doc["id"] == "n-1" and doc["incident"] == "3fa0c1d2e4b5a697#1"
    subject = env["Subject"]
    assert len(subject) <= 100 and subject.isascii() and "\n" not in subject and "\r" not in subject
    attrs = {k: v["Value"] for k, v in env["MessageAttributes"].items()}
    assert attrs["kind"] == "mining_suspected" and attrs["severity"] == "critical" and attrs["event"] == "firing"
    assert attrs["provider"] == MINING["provider"] and attrs["project"] == str(MINING["project"])


def test_sns_fifo_topic_dedupes_on_the_notification_id(sns_world: dict[str, Any]) -> None:
    sns = sns_world["sns"]
    arn = sns.create_topic(Name=FIFO_NAME, Attributes={"FifoTopic": "true"})["TopicArn"]
    calls: list[dict[str, Any]] = []

    class Spy:
        def publish(self, **kw: Any) -> Any:
            calls.append(kw)
            return sns.publish(**kw)

    n = SnsNotifier(arn, client=Spy())
    assert all(d.ok for d in n.notify([note("sns"), note("sns")]))
    assert {c["MessageDeduplicationId"] for c in calls} == {"n-1"}
    assert {c["MessageGroupId"] for c in calls} == {"3fa0c1d2e4b5a697#1"}


def test_sns_errors_are_classified(sns_world: dict[str, Any]) -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    missing = SnsNotifier(sns_world["arn"] + "-gone")
    [d] = missing.notify([note("sns")])
    assert d.permanent and "NotFound" in (d.error or "") and "topic_arn" in (d.error or "")

    class Failing:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def publish(self, **kw: Any) -> Any:
            raise self.exc

    def client_error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                           "Publish")

    cases = [(client_error("Throttling", 400), False, 1.0), (client_error("InternalError", 500), False, None),
             (client_error("AuthorizationError", 403), True, None),
             (EndpointConnectionError(endpoint_url="https://sns.us-east-1.amazonaws.com"), False, None)]
    for exc, permanent, wait in cases:
        [r] = SnsNotifier(sns_world["arn"], client=Failing(exc)).notify([note("sns")])
        assert not r.ok and r.permanent is permanent and r.retry_after == wait, (exc, r)
    [auth] = SnsNotifier(sns_world["arn"], client=Failing(client_error("AuthorizationError", 403))).notify(
        [note("sns")])
    assert "sns:Publish" in (auth.error or "")


# ---------------------------------------------------------------------------------------------- registry, routing


def test_registry_and_owner_routing_keep_secrets_out_of_targets() -> None:
    from costwatch.routing import routes

    cfg = Config.model_validate({
        "notify": {"teams": {"webhook_url": "https://teams.example.com/default"},
                   "pagerduty": {"routing_key": "default-key-0000000000000000000"},
                   "webhook": {"url": "https://hooks.example.com/default", "secret": "s" * 20},
                   "sns": {"topic_arn": "arn:aws:sns:us-east-1:123456789012:default"}, "stdout": False},
        "owners": {"ml": {"teams_webhook_url": "https://teams.example.com/ML-SECRET",
                          "pagerduty_routing_key": "ML-PD-SECRET-00000000000000000",
                          "webhook_url": "https://hooks.example.com/ML-SECRET",
                          "sns_topic_arn": "arn:aws:sns:eu-west-1:123456789012:ml"},
                   "plain": {"email": ["p@example.com"]}}})
    keys = sorted(r.target.key for r in routes(["ml", "plain"], cfg))
    assert keys == ["pagerduty:", "pagerduty:ml", "sns:", "sns:arn:aws:sns:eu-west-1:123456789012:ml",
                    "teams:", "teams:ml", "webhook:", "webhook:ml"]
    assert "SECRET" not in json.dumps(keys)
    with pytest.raises(ValueError):
        OwnerConfig.model_validate({"sns_topic_arn": "not-an-arn"})
    with pytest.raises(ConfigError, match="unknown notifier"):
        build("carrier-pigeon", None, cfg)


# ---------------------------------------------------------------------------------------------- outbox


@pytest.mark.parametrize("channel", ["webhook", "pagerduty", "teams"])
def test_killed_between_send_and_mark_resends_with_the_same_key(channel: str, store: SqliteStore,
                                                                receiver: FakeReceiver, pd_fake: FakePagerDuty,
                                                                teams: FakeTeams) -> None:
    """A run posted, then died before marking (the item stays "sending"): once the lease lapses the next run
    sends again; for these channels that is the documented at-least-once, with the same idempotency key."""
    notifier: Any = {"webhook": WebhookNotifier(receiver.url, receiver.secret, timeout=2), "pagerduty": pdn(pd_fake),
                     "teams": team(teams)}[channel]
    n = note(channel)
    outbox.enqueue(store, n, NOW)
    rec = store.get("outbox", n.id)
    assert rec is not None
    assert store.put("outbox", n.id, {**rec.doc, "status": "sending", "sending_since": NOW.isoformat(), "attempts": 1},
                     version=rec.version)
    [d] = notifier.notify([n])          # what the killed run got out before it died
    assert d.ok
    inside = outbox.deliver(store, {channel: notifier}, NOW + pd.Timedelta(minutes=2), sleep=lambda s: None)
    assert inside.delivered == 0        # the killed run might still be alive: its item is left alone
    after = outbox.deliver(store, {channel: notifier}, NOW + outbox.LEASE + pd.Timedelta(minutes=1),
                           sleep=lambda s: None)
    assert after.delivered == 1 and after.pending == 0
    if channel == "webhook":
        assert len(receiver.documents) == 2 and len(receiver.unique) == 1
    elif channel == "pagerduty":
        assert [e["dedup_key"] for e in pd_fake.events] == [n.group_key] * 2 and len(pd_fake.incidents) == 1
    else:
        assert len(teams.cards) == 2 and all(n.id in json.dumps(c) for c in teams.cards)


def test_machine_channels_get_no_digests(store: SqliteStore, pd_fake: FakePagerDuty) -> None:
    notes = [note("pagerduty", MINING, nid=f"n-{i}", group_key=f"g{i}#1") for i in range(15)]
    queued, digests, folded = outbox.enqueue_many(store, notes, NOW, digest_after=10)
    assert (queued, digests, folded) == (15, 0, 0)
    rep = outbox.deliver(store, {"pagerduty": pdn(pd_fake)}, NOW, sleep=lambda s: None, digest_after=10)
    assert rep.delivered == 15 and rep.digests == 0
    assert sorted(pd_fake.incidents) == sorted(f"g{i}#1" for i in range(15))


def test_owner_endpoints(receiver: FakeReceiver) -> None:
    cfg = Config.model_validate({
        "notify": {"webhook": {"url": "https://hooks.example.com/default", "secret": receiver.secret}},
        "owners": {"ml": {"webhook_url": receiver.url}}})
    assert cfg.notify.webhook is not None
    n = build("webhook", cfg.notify.webhook, cfg)
    [ok] = n.notify([note("webhook", address="ml")])
    [gone] = n.notify([note("webhook", address="left-the-company")])
    assert ok.ok and receiver.documents[0]["owner"] == "ml-platform"
    assert gone.permanent and "owners.<name>.webhook_url" in (gone.error or "")


def test_example_config_channels_are_valid() -> None:
    """The commented channel sections of the example config, uncommented, are a valid config."""
    import re

    import yaml

    text = (Path(__file__).parent.parent / "config" / "costwatch.example.yaml").read_text()
    start = text.index("  # teams:")
    block = text[start:text.index("  stdout: true", start)]
    lines = [re.sub(r"^  # ", "  ", line) for line in block.splitlines() if not re.match(r"^\s*#\s*#", line)]
    doc = yaml.safe_load("notify:\n" + "\n".join(line.split("  #", 1)[0].rstrip() if "  #" in line[4:] else line
                                                for line in lines))
    env = {"TEAMS_WEBHOOK_URL": "https://x.example/w", "PAGERDUTY_ROUTING_KEY": "k" * 32,
           "COSTWATCH_WEBHOOK_URL": "https://x.example/h", "COSTWATCH_WEBHOOK_SECRET": "s" * 32}
    raw = json.dumps(doc)
    for k, v in env.items():
        raw = raw.replace("${" + k + "}", v)
    cfg = Config.model_validate(json.loads(raw))
    assert cfg.notify.teams and cfg.notify.pagerduty and cfg.notify.webhook and cfg.notify.sns


def test_sns_killed_between_send_and_mark(sns_world: dict[str, Any], store: SqliteStore) -> None:
    """A standard topic has no dedupe: the resend after a crash is a second message with the same id."""
    notifier = SnsNotifier(sns_world["arn"])
    n = note("sns")
    outbox.enqueue(store, n, NOW)
    rec = store.get("outbox", n.id)
    assert rec is not None
    store.put("outbox", n.id, {**rec.doc, "status": "sending", "sending_since": NOW.isoformat(), "attempts": 1},
              version=rec.version)
    assert notifier.notify([n])[0].ok
    after = outbox.deliver(store, {"sns": notifier}, NOW + outbox.LEASE + pd.Timedelta(minutes=1),
                           sleep=lambda s: None)
    assert after.delivered == 1
    msgs = received(sns_world) + received(sns_world)
    assert [json.loads(m["Message"])["id"] for m in msgs] == ["n-1", "n-1"]


def test_teams_renders_a_digest(teams: FakeTeams) -> None:
    members = [note("teams", a, nid=f"m-{i}", group_key=f"g{i}#1") for i, a in enumerate(ALERTS * 3)]
    digest = outbox.digest_notification("d-1", "digest:abc", members, NOW)
    [d] = team(teams).notify([digest])
    assert d.ok and "incidents" in teams.cards[0]["body"][0]["text"]


def test_http_channels_need_no_optional_dependency() -> None:
    import subprocess
    import sys

    code = ("import sys, costwatch.notifiers.teams, costwatch.notifiers.webhook, costwatch.notifiers.pagerduty; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'slack_sdk', 'boto3', 'botocore', 'requests'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
