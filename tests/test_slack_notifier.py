"""The Slack notifier against a fake Slack over real HTTP: slack-sdk's real clients, Slack's wire shapes,
Block Kit limits checked by the fake, faults injected per method."""

from __future__ import annotations

import copy
import json
import logging
import re
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fake_slack import FakeSlack, check_blocks
from slack_sdk.errors import SlackApiError
from slack_sdk.web import WebClient
from slack_sdk.webhook import WebhookClient

from costwatch.config import Config, SlackConfig
from costwatch.notifiers import build
from costwatch.notifiers.slack import SlackNotifier, from_config, redact
from costwatch.notify import NEXT_STEPS, RESOLVED_STEPS, Delivery, Notification, Target

ALERTS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "alerts" / "demo_alerts.json").read_text())
MINING, SPIKE, MINING_CPU, BUDGET = ALERTS[0], ALERTS[1], ALERTS[2], ALERTS[3]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
HOSTILE = ["<!channel>", "<!here>", "<@U123>", "<!subteam^S999>", "<https://evil.example|click here>"]


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def bot(fake: FakeSlack, **kw: Any) -> SlackNotifier:
    """The notifier as the CLI builds it: registry, config model, from_config."""
    section = SlackConfig.model_validate({"token": kw.pop("token", fake.token), "channel": kw.pop("channel", "#alerts"),
                                          "api_url": fake.api_url, "timeout": kw.pop("timeout", 2.0),
                                          "charts": kw.pop("charts", True)})
    notifier = build("slack", section, Config())
    assert isinstance(notifier, SlackNotifier)
    return notifier


def hook(fake: FakeSlack, url: str | None = None, timeout: float = 2.0) -> SlackNotifier:
    # SlackConfig only accepts https:// webhook URLs; the fake is plain HTTP, so build the notifier directly.
    return SlackNotifier(webhook_url=url or fake.webhook_url, timeout=timeout)


def note(*alerts: dict[str, Any], event: str = "firing", address: str = "", thread: str | None = None,
         seq: int = 0, nid: str = "n-1", **kw: Any) -> Notification:
    fields: dict[str, Any] = {
        "id": nid, "group_key": "3fa0c1d2e4b5a697#1", "event": event, "target": Target("slack", address),
        "title": "mining suspected in recs-prod-3", "alerts": [copy.deepcopy(a) for a in (alerts or (MINING,))],
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "owner": "ml-platform",
        "mention": "U0OWNER1", "sequence": seq, "thread": thread, "labels": {"project": MINING["project"]}}
    fields.update(kw)
    return Notification(**fields)


def texts(blocks: list[dict[str, Any]]) -> str:
    """Every text a reader could see, joined."""
    out = []
    for b in blocks:
        for obj in [b.get("text"), *b.get("fields", []), *b.get("elements", [])]:
            if isinstance(obj, dict):
                out.append(obj["text"])
    return "\n".join(out)


def mrkdwn_outside_code(blocks: list[dict[str, Any]]) -> str:
    """mrkdwn text with inline code spans removed: where Slack would apply formatting and links."""
    parts = [obj["text"] for b in blocks for obj in [b.get("text"), *b.get("fields", []), *b.get("elements", [])]
             if isinstance(obj, dict) and obj.get("type") == "mrkdwn"]
    return re.sub(r"`[^`]*`", "", "\n".join(parts))


def posted(fake: FakeSlack, i: int = -1) -> dict[str, Any]:
    return fake.calls("chat.postMessage")[i].params


# ------------------------------------------------------------------------------------------ the message


def test_mining_alert_posts_one_message_with_the_facts(slack: FakeSlack) -> None:
    [d] = bot(slack).notify([note(MINING)])

    assert d.ok and d.ref and not d.error
    [call] = slack.calls("chat.postMessage")
    assert call.headers["Authorization"] == f"Bearer {slack.token}"
    p = call.params
    assert p["channel"] == "#alerts" and "thread_ts" not in p
    assert p["metadata"] == {"event_type": "costwatch_notification",
                             "event_payload": {"id": "n-1", "group": "3fa0c1d2e4b5a697#1"}}
    assert check_blocks(p["blocks"]) == []
    header = p["blocks"][0]
    assert header["type"] == "header" and header["text"]["type"] == "plain_text"
    assert "Mining suspected" in header["text"]["text"] and "recs-prod-3" in header["text"]["text"]
    body = texts(p["blocks"])
    assert "6 node(s) flat at high CPU" in body                                # what happened
    assert "419.56 USD observed vs 19.01 USD expected" in body                 # impact per day
    assert "16.40 USD – 22.01 USD" in body and "+400.55 USD per day" in body   # band and excess
    assert "2026-11-10 03:00 UTC" in body and "2026-11-10 05:00 UTC" in body   # start and detection
    assert "`vm-worker-01` 98% CPU (new node) · GPU · `Standard_NC6s_v3` · `centralindia`" in body
    assert "… and 1 more node" in body                                         # 6 nodes, top 5 shown
    assert "*New regions* `centralindia` (3,308.78 USD)" in body
    assert "<@U0OWNER1>" in body and "`ml-platform`" in body
    assert NEXT_STEPS["mining_suspected"] in body
    assert "`2bfc6b20bf995cb0`" in body and "`3fa0c1d2e4b5a697#1`" in body     # fingerprint, group
    assert "recs-prod-3" in p["text"] and len(p["text"]) <= 4000
    # the fake keeps it as Slack would: a top-level message carrying our metadata
    [msg] = slack.messages("C0ALERTS")
    assert msg["ts"] == d.ref and msg["metadata"]["event_payload"]["id"] == "n-1"


def test_mentions_come_only_from_config_in_slack_syntax(slack: FakeSlack) -> None:
    n = bot(slack)
    for mention, want in [("S0GROUP1", "<!subteam^S0GROUP1>"), ("here", "<!here>"), ("channel", "<!channel>"),
                          ("W0USER2,U0USER3", "<@W0USER2> <@U0USER3>")]:
        assert n.notify([note(mention=mention)])[0].ok
        assert want in texts(posted(slack)["blocks"])
    # a value that is not a Slack id (config validates; this is the second line of defence) pings nobody
    assert n.notify([note(mention="<!channel>")])[0].ok
    assert "<!channel>" not in json.dumps(posted(slack))


def test_cpu_budget_and_cost_alerts_render_their_own_numbers(slack: FakeSlack) -> None:
    n = bot(slack)
    assert n.notify([note(MINING_CPU)])[0].ok
    body = texts(posted(slack)["blocks"])
    assert "60% where 10% is usual" in body and "`aks-nodepool1-50760945-vmss000003` 60% CPU (usual 7%)" in body
    assert n.notify([note(BUDGET)])[0].ok
    body = texts(posted(slack)["blocks"])
    assert "2,574.31 USD vs budget 1,660.00 USD" in body and "+914.31 USD" in body
    assert NEXT_STEPS["budget_forecast_exceeded"] in body
    assert n.notify([note(SPIKE)])[0].ok
    body = texts(posted(slack)["blocks"])
    assert "`Virtual Machines` 419.56 USD/day, +400.92 USD over usual (100% of the excess)" in body


def test_guardduty_and_kubernetes_evidence_is_rendered(slack: FakeSlack) -> None:
    a = copy.deepcopy(MINING)
    a["evidence"]["guardduty"] = [
        {"type": "CryptoCurrency:EC2/BitcoinTool.B!DNS", "severity": 8.0, "node": "i-0abc123", "cluster": "eks-prod",
         "first_seen": "2026-11-10T03:10:00Z"}]
    a["evidence"]["kubernetes"] = {"cluster": "eks-prod", "namespaces_without_quota": ["default", "batch"],
                                   "pods": [{"namespace": "batch", "name": "xmrig-7d9", "image": "docker.io/x/xmrig:6",
                                             "cpu": 3.9, "reasons": ["miner image name", "pool port 3333"]}]}
    assert bot(slack).notify([note(a)])[0].ok
    body = texts(posted(slack)["blocks"])
    assert "`CryptoCurrency:EC2/BitcoinTool.B!DNS` severity 8 on `i-0abc123` in `eks-prod`" in body
    assert "*Kubernetes* cluster `eks-prod`" in body and "`default`, `batch`" in body
    assert "pod `batch/xmrig-7d9` image `docker.io/x/xmrig:6` CPU 3.9 — `miner image name; pool port 3333`" in body


def test_unknown_evidence_shapes_degrade_to_nothing(slack: FakeSlack) -> None:
    a = copy.deepcopy(MINING)
    a["evidence"].update(kubernetes="not a dict", guardduty={"type": "x"}, nodes=[1, "x", None, {"cpu": "hot"}],
                         services="Compute", new_regions=[{"cost": 3}, 7], cost=[1, 2], node_count="many")
    b = copy.deepcopy(SPIKE)
    b["evidence"] = ["not", "a", "dict"]
    b["observed"] = "NaN"
    c = {"kind": "from_the_future", "severity": "apocalyptic"}
    [d] = bot(slack).notify([note(a, b, c)])
    assert d.ok, d.error
    body = texts(posted(slack)["blocks"])
    assert "Mining suspected" in body and "`from_the_future`" in body


# ------------------------------------------------------------------------------------------ threads and charts


def test_updates_go_into_the_incident_thread_and_growth_and_resolve_are_broadcast(slack: FakeSlack) -> None:
    n = bot(slack)
    [first] = n.notify([note(address="C0TEAM")])
    assert first.ok and "thread_ts" not in posted(slack)
    [upd, rep, res] = n.notify([note(event="updated", address="C0TEAM", thread=first.ref, seq=1, nid="n-2"),
                                note(event="repeat", address="C0TEAM", thread=first.ref, seq=2, nid="n-3"),
                                note(event="resolved", address="C0TEAM", thread=first.ref, seq=3, nid="n-4")])
    assert upd.ok and rep.ok and res.ok
    calls = [c.params for c in slack.calls("chat.postMessage")]
    assert all(c["channel"] == "C0TEAM" and c["thread_ts"] == first.ref for c in calls[1:])
    assert [c["metadata"]["event_payload"]["id"] for c in calls] == ["n-1", "n-2", "n-3", "n-4"]
    assert calls[1]["reply_broadcast"] is True and "reply_broadcast" not in calls[2]
    assert calls[3]["reply_broadcast"] is True
    assert texts(calls[1]["blocks"]).startswith("🚨 Update · Mining suspected")
    assert texts(calls[3]["blocks"]).startswith("✅ Resolved · Mining suspected")
    resolved = texts(calls[3]["blocks"])
    assert RESOLVED_STEPS in resolved and NEXT_STEPS["mining_suspected"] not in resolved
    msgs = slack.messages("C0TEAM")
    assert msgs[0]["reply_count"] == 3 and [m.get("subtype") for m in msgs[1:]] == ["thread_broadcast", None,
                                                                                    "thread_broadcast"]


def test_chart_is_uploaded_into_the_same_thread_with_files_v2(slack: FakeSlack, tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"
    chart.write_bytes(PNG)
    n = bot(slack)
    [first] = n.notify([note(chart=str(chart))])          # posted to "#alerts": the upload needs the channel id
    assert first.ok
    [url_call] = slack.calls("files.getUploadURLExternal")
    assert int(url_call.params["length"]) == len(PNG) and url_call.params["filename"].endswith(".png")
    assert len(slack.calls("upload")) == 1
    [done] = slack.calls("files.completeUploadExternal")
    assert done.params["channel_id"] == "C0ALERTS" and done.params["thread_ts"] == first.ref
    assert slack.uploads[0]["data"] == PNG and slack.uploads[0]["thread_ts"] == first.ref
    # an update's chart goes under the incident's first message, not under the reply
    [upd] = n.notify([note(event="updated", thread=first.ref, seq=1, nid="n-2", chart=str(chart))])
    assert upd.ok and slack.uploads[1]["thread_ts"] == first.ref and slack.uploads[1]["channel"] == "C0ALERTS"
    assert [m.get("thread_ts") for m in slack.messages("C0ALERTS")[1:]] == [first.ref] * 3


def test_no_upload_without_a_png_or_with_charts_off(slack: FakeSlack, tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"
    chart.write_bytes(PNG)
    not_png = tmp_path / "x.png"
    not_png.write_text("hello")
    assert bot(slack, charts=False).notify([note(chart=str(chart))])[0].ok
    assert bot(slack).notify([note(chart=str(tmp_path / "missing.png")), note(chart=str(not_png))])[0].ok
    assert hook(slack).notify([note(chart=str(chart))])[0].ok
    assert slack.calls("files.getUploadURLExternal") == []


@pytest.mark.parametrize("method, fault", [("files.getUploadURLExternal", {"error": "missing_scope"}),
                                           ("upload", {"status": 500}),
                                           ("files.completeUploadExternal", {"status": 429, "retry_after": 5})])
def test_a_failed_chart_upload_does_not_fail_the_delivery(slack: FakeSlack, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture, method: str,
                                                          fault: dict[str, Any]) -> None:
    chart = tmp_path / "chart.png"
    chart.write_bytes(PNG)
    slack.fail(method, **fault)
    with caplog.at_level(logging.WARNING, logger="costwatch.notifiers.slack"):
        [d] = bot(slack).notify([note(chart=str(chart))])
    assert d == Delivery(ok=True, ref=d.ref) and d.ref
    assert "chart for n-1 not uploaded" in caplog.text
    assert slack.uploads == []


# ------------------------------------------------------------------------------------------ failures


def test_429_reports_retry_after_then_recovers(slack: FakeSlack) -> None:
    n = bot(slack)
    slack.fail("chat.postMessage", status=429, retry_after=7)
    [d] = n.notify([note()])
    assert not d.ok and not d.permanent and d.retry_after == 7.0 and "rate limited" in (d.error or "")
    [d] = n.notify([note()])
    assert d.ok and d.ref


def test_after_a_429_the_batch_spares_that_channel_only(slack: FakeSlack) -> None:
    slack.fail("chat.postMessage", status=429, retry_after=3)
    out = bot(slack).notify([note(nid="a"), note(nid="b"), note(nid="c", address="C0TEAM")])
    assert [d.ok for d in out] == [False, False, True]
    assert out[1].retry_after == 3.0 and out[1].error and out[1].error.startswith("not sent:")
    assert [c.params["channel"] for c in slack.calls("chat.postMessage")] == ["#alerts", "C0TEAM"]


def test_ratelimited_error_body_is_a_retry(slack: FakeSlack) -> None:
    slack.fail("chat.postMessage", error="ratelimited", retry_after=2)
    [d] = bot(slack).notify([note()])
    assert not d.ok and not d.permanent and d.retry_after == 2.0


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 503, "error": "service_unavailable"},
                                   {"status": 502, "body": "<html><h1>502 Bad Gateway</h1></html>"},
                                   {"error": "internal_error"}, {"status": 200, "body": "<html>proxy login</html>"}])
def test_server_errors_are_transient(slack: FakeSlack, fault: dict[str, Any]) -> None:
    slack.fail("chat.postMessage", **fault)
    [d] = bot(slack).notify([note()])
    assert not d.ok and not d.permanent and d.retry_after is None and "retry" in (d.error or "")


def test_a_hanging_slack_times_out_as_transient_once_per_batch(slack: FakeSlack) -> None:
    slack.fail("chat.postMessage", hang=5.0)
    out = bot(slack, timeout=0.5).notify([note(nid="a"), note(nid="b", address="C0TEAM")])
    assert [d.ok or d.permanent for d in out] == [False, False]
    assert out[0].error == "could not reach Slack (no answer within 0.5s); will retry"
    assert out[1].error == f"not sent: {out[0].error}"
    assert len(slack.calls("chat.postMessage")) == 1     # the rest of the batch did not wait again


def test_refused_and_reset_connections_are_transient(slack: FakeSlack) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = SlackNotifier(token=slack.token, channel="#alerts", api_url=f"http://127.0.0.1:{port}/api/",
                            timeout=1.0)
    [d] = refused.notify([note()])
    assert not d.ok and not d.permanent and d.error == "could not reach Slack (connection refused); will retry"
    slack.fail("chat.postMessage", drop=True)
    [d] = bot(slack).notify([note()])
    assert not d.ok and not d.permanent and "could not reach Slack" in (d.error or "")


@pytest.mark.parametrize("kw, fault, want", [
    ({"token": "xoxb-9999-wrong-tokenSecret"}, None, "invalid_auth: the bot token is not valid"),
    ({"channel": "#nowhere"}, None, "channel_not_found: invite the bot to #nowhere or fix notify.slack.channel"),
    ({"channel": "C0OUTSIDE"}, None, "not_in_channel: invite the bot to C0OUTSIDE"),
    ({"channel": "C0OLD"}, None, "is_archived: C0OLD is archived"),
    ({}, {"error": "token_revoked"}, "token_revoked: the bot token was revoked"),
    ({}, {"error": "missing_scope", "extra": {"needed": "chat:write", "provided": "files:write"}},
     "missing_scope: the Slack app lacks a scope (chat:write)"),
    ({}, {"error": "invalid_blocks"}, "invalid_blocks: Slack rejected the message layout"),
    ({}, {"error": "msg_too_long"}, "msg_too_long:"),
    ({}, {"error": "no_permission"}, "no_permission:"),
    ({}, {"error": "account_inactive"}, "account_inactive:"),
])
def test_errors_a_retry_cannot_fix_are_permanent_and_say_what_to_do(
        slack: FakeSlack, kw: dict[str, Any], fault: dict[str, Any] | None, want: str) -> None:
    if fault:
        slack.fail("chat.postMessage", **fault)
    [d] = bot(slack, **kw).notify([note()])
    assert not d.ok and d.permanent and d.retry_after is None
    assert d.error and d.error.startswith(want), d.error


def test_a_bad_token_stops_the_batch_but_a_bad_channel_does_not(slack: FakeSlack) -> None:
    out = bot(slack, token="xoxb-9999-wrong-tokenSecret").notify([note(nid="a"), note(nid="b", address="C0TEAM")])
    assert [d.permanent for d in out] == [True, True] and len(slack.calls("chat.postMessage")) == 1
    out = bot(slack).notify([note(nid="c", address="#nowhere"), note(nid="d", address="C0TEAM")])
    assert [d.ok for d in out] == [False, True]


def test_no_channel_at_all_is_permanent(slack: FakeSlack) -> None:
    n = SlackNotifier(token=slack.token, api_url=slack.api_url, timeout=1.0)
    [d] = n.notify([note()])
    assert d.permanent and "notify.slack.channel" in (d.error or "") and slack.requests == []


# ------------------------------------------------------------------------------------------ hostile data


def hostile_alert() -> dict[str, Any]:
    evil = " ".join(HOSTILE) + " *bold* _it_ ~strike~ `tick` \u202egnp.exe\r\nInjected line\n\n> quote"
    a = copy.deepcopy(MINING)
    a.update(project_name="proj " + evil, project="acct<@U123>", service="Compute " + evil,
             region="us-east-1\n<!channel>", summary="summary " + evil + " " + "A" * 10_000, currency="<!here>")
    node = a["evidence"]["nodes"][0]
    node.update(node=evil + "x" * 10_000, instance_type="<!channel>", region="*r*")
    a["evidence"]["new_regions"] = [evil]
    a["evidence"]["guardduty"] = [{"type": evil, "severity": 8, "node": evil, "cluster": evil, "first_seen": evil}]
    a["evidence"]["kubernetes"] = {"cluster": evil, "namespaces_without_quota": [evil] * 20,
                                   "pods": [{"namespace": evil, "name": evil, "image": evil * 50, "cpu": 9}] * 8}
    a["fingerprint"] = evil
    return a


def test_hostile_data_pings_nobody_links_nothing_and_stays_inside_slacks_limits(slack: FakeSlack) -> None:
    evil = hostile_alert()
    n = note(evil, copy.deepcopy(evil), owner="<!channel> team", labels={"team": "<@U123> *x*", "p": "A" * 10_000},
             title="<!channel>")
    [d] = bot(slack).notify([n])
    assert d.ok, d.error                                  # the fake checks every Block Kit limit
    [call] = slack.calls("chat.postMessage")
    raw = call.body.decode()
    for s in [*HOSTILE, "<https://evil", "\\u202e"]:
        assert s not in raw, s
    blocks = call.params["blocks"]
    assert check_blocks(blocks) == [] and len(blocks) <= 50
    # data shows, escaped, as data
    body = texts(blocks)
    assert "&lt;!channel&gt;" in body and "&lt;@U123&gt;" in body and "‹!channel›" in body
    assert "<@U0OWNER1>" in body                          # the configured mention still works
    # no mrkdwn formatting or link syntax from data outside code spans
    outside = mrkdwn_outside_code(blocks)
    for s in ("*bold*", "_it_", "~strike~", "Injected", "evil.example", "gnp"):
        assert s not in outside, s
    # CR/LF from data never splits a line: every line break is one we put there
    assert "\r" not in body
    assert not any(line.startswith(("Injected", "&gt; quote", "> quote")) for line in body.splitlines())
    assert len(call.params["text"]) <= 4000 and "\n" not in call.params["text"]
    assert len(raw) < 40_000                              # 10 kB values were cut, not carried along
    assert len(blocks[0]["text"]["text"]) <= 150


def test_a_group_of_60_alerts_stays_within_50_blocks(slack: FakeSlack) -> None:
    group = [MINING] + [dict(copy.deepcopy(SPIKE), project_name=f"proj-{i}", fingerprint=f"fp{i:04d}")
                        for i in range(59)]
    [d] = bot(slack).notify([note(*group)])
    assert d.ok, d.error
    blocks = posted(slack)["blocks"]
    assert len(blocks) <= 50 and check_blocks(blocks) == []
    body = texts(blocks)
    shown = len(re.findall(r"`proj-\d+`", body))
    assert 10 <= shown < 59 and f"… and {59 - shown} more alerts in this incident" in body
    assert blocks[0]["text"]["text"].endswith("(+59 more)")
    assert NEXT_STEPS["cost_spike"] in body and blocks[-1]["type"] == "context"


# ------------------------------------------------------------------------------------------ secrets


def test_token_and_webhook_url_never_reach_errors_or_logs(slack: FakeSlack, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    for name in ("", "slack_sdk", "costwatch", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    chart = tmp_path / "chart.png"
    chart.write_bytes(PNG)
    wrong = "xoxb-9999-wrong-tokenSecret"
    dead_hook = slack.webhook_url.replace("whSecret", "whDeadSecret")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    deliveries: list[Delivery] = []
    n = bot(slack, timeout=0.5)
    deliveries += n.notify([note(chart=str(chart))])
    faults: list[tuple[str, dict[str, Any]]] = [("chat.postMessage", {"status": 429, "retry_after": 1}),
                          ("chat.postMessage", {"status": 500}), ("chat.postMessage", {"hang": 3.0}),
                          ("chat.postMessage", {"error": "invalid_auth"}), ("upload", {"status": 500}),
                          ("files.completeUploadExternal", {"status": 500, "body": "boom"})]
    for method, fault in faults:
        slack.fail(method, **fault)
        deliveries += n.notify([note(chart=str(chart))])
    deliveries += bot(slack, token=wrong).notify([note()])
    deliveries += SlackNotifier(token=wrong, channel="#alerts", api_url=closed + "/api/", timeout=0.5).notify([note()])
    slack.fail("conversations.history", status=500)
    assert n.find_delivered(note(address="C0ALERTS")) is None
    h = hook(slack, timeout=0.5)
    deliveries += h.notify([note()])
    hook_faults: list[dict[str, Any]] = [{"status": 404, "error": "no_service"}, {"status": 429, "retry_after": 1},
                                         {"status": 500}, {"hang": 3.0}, {"drop": True}]
    for hf in hook_faults:
        slack.fail("webhook", **hf)
        deliveries += h.notify([note()])
    deliveries += hook(slack, dead_hook, timeout=0.5).notify([note()])
    deliveries += hook(slack, closed + "/services/T0/B0/whClosedSecret", timeout=0.5).notify([note()])

    assert sum(d.ok for d in deliveries) == 4 and len(deliveries) == 17
    secrets = [slack.token, wrong, slack.webhook_url, slack.webhook_secret, dead_hook, "whSecret", "whDeadSecret",
               "whClosedSecret", "tokenSecret", "fakeBotTokenSecret"]
    told = "\n".join([caplog.text, *(d.error or "" for d in deliveries), *(repr(x) for x in (n, h))])
    assert "rate limited" in told and "not uploaded" in told      # the log did record the failures
    for secret in secrets:
        assert secret not in told, secret


# ------------------------------------------------------------------------------------------ crash recovery


def test_find_delivered_finds_a_posted_notification_by_its_metadata(slack: FakeSlack) -> None:
    [d] = bot(slack).notify([note(nid="posted-1")])
    # a new process (the crash) knows only the configured "#alerts": the id is looked up first
    fresh = bot(slack)
    assert fresh.find_delivered(note(nid="posted-1")) == Delivery(ok=True, ref=d.ref)
    assert fresh.find_delivered(note(nid="never-sent")) is None
    [hist, *_] = slack.calls("conversations.history")
    assert hist.params["channel"] == "C0ALERTS" and hist.params["include_all_metadata"] in ("1", True)
    created = datetime.strptime(note().created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    assert abs(float(hist.params["oldest"]) - (created - 60)) < 5
    assert slack.calls("conversations.list")


def test_find_delivered_pages_through_history_and_looks_in_the_thread(slack: FakeSlack) -> None:
    n = bot(slack)
    [first] = n.notify([note(nid="first", address="C0TEAM")])
    slack.seed("C0TEAM", 450)                              # ours is now on the third page of 200
    assert n.find_delivered(note(nid="first", address="C0TEAM")) == Delivery(ok=True, ref=first.ref)
    assert len(slack.calls("conversations.history")) == 3
    [reply] = n.notify([note(nid="reply", event="repeat", address="C0TEAM", thread=first.ref, seq=1)])
    found = n.find_delivered(note(nid="reply", event="repeat", address="C0TEAM", thread=first.ref, seq=1))
    assert found == Delivery(ok=True, ref=reply.ref)
    assert slack.calls("conversations.replies")[-1].params["ts"] == first.ref


def test_find_delivered_returns_none_when_it_cannot_check(slack: FakeSlack) -> None:
    n = bot(slack)
    [d] = n.notify([note(address="C0TEAM")])
    assert d.ok
    slack.fail("conversations.history", status=429, retry_after=1)
    assert n.find_delivered(note(address="C0TEAM")) is None
    slack.fail("conversations.history", error="missing_scope", extra={"needed": "channels:history"})
    assert n.find_delivered(note(address="C0TEAM")) is None
    assert n.find_delivered(note(address="C0TEAM")) == Delivery(ok=True, ref=d.ref)  # recovered
    assert n.find_delivered(note(address="#nowhere")) is None
    assert hook(slack).find_delivered(note()) is None


# ------------------------------------------------------------------------------------------ webhooks


def test_webhook_posts_the_same_blocks_without_threads_files_or_metadata(slack: FakeSlack, tmp_path: Path) -> None:
    h = hook(slack)
    [d] = h.notify([note(address="C0TEAM")])
    assert d == Delivery(ok=True)
    [call] = slack.calls("webhook")
    assert call.path == f"/services/{slack.webhook_secret}"
    blocks = call.params["blocks"]
    assert check_blocks(blocks) == [] and "Mining suspected" in blocks[0]["text"]["text"]
    assert "`vm-worker-01`" in texts(blocks) and call.params["text"]
    assert not {"channel", "thread_ts", "metadata", "reply_broadcast"} & set(call.params)
    [d] = h.notify([note(event="updated", thread="1700000000.000100", seq=1)])
    assert d.ok and "thread_ts" not in slack.calls("webhook")[-1].params


@pytest.mark.parametrize("fault, permanent, want", [
    ({"status": 404, "error": "no_service"}, True, "no_service: the incoming webhook was removed"),
    ({"status": 404, "error": "channel_not_found"}, True, "channel_not_found:"),
    ({"status": 404}, True, "Slack webhook answered HTTP 404"),
    ({"status": 410, "error": "channel_is_archived"}, True, "channel_is_archived:"),
    ({"status": 403, "error": "action_prohibited"}, True, "action_prohibited:"),
    ({"status": 400, "error": "invalid_payload"}, True, "invalid_payload:"),
    ({"status": 500, "error": "rollup_error"}, False, "Slack webhook answered HTTP 500"),
    ({"status": 429, "retry_after": 30}, False, "rate limited by Slack; retry after 30s"),
])
def test_webhook_failures_are_classified(slack: FakeSlack, fault: dict[str, Any], permanent: bool, want: str) -> None:
    slack.fail("webhook", **fault)
    [d] = hook(slack).notify([note()])
    assert not d.ok and d.permanent is permanent and d.error and d.error.startswith(want), d.error
    assert d.retry_after == fault.get("retry_after")


def test_a_webhook_url_slack_does_not_know_is_permanent(slack: FakeSlack) -> None:
    [d] = hook(slack, slack.webhook_url + "x").notify([note()])
    assert d.permanent and d.error and d.error.startswith("invalid_token: the webhook URL is not valid any more")


def test_from_config_prefers_the_token(slack: FakeSlack) -> None:
    section = SlackConfig.model_validate({"token": slack.token, "webhook_url": "https://hooks.slack.com/services/T/B/x",
                                          "channel": "C0TEAM", "api_url": slack.api_url, "timeout": 1.0})
    n = from_config(section, Config())
    assert n.notify([note()])[0].ok and slack.calls("chat.postMessage") and not slack.calls("webhook")


# ------------------------------------------------------------------------------------------ the fake itself


def test_the_fake_rejects_what_slack_rejects(slack: FakeSlack) -> None:
    """The limit checks the tests above rely on do bite."""
    client = WebClient(token=slack.token, base_url=slack.api_url, timeout=2, retry_handlers=[])
    md = {"type": "mrkdwn", "text": "x"}
    bad: list[list[dict[str, Any]]] = [
        [{"type": "divider"}] * 51,
        [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}],
        [{"type": "header", "text": md}],
        [{"type": "section", "text": {"type": "mrkdwn", "text": "s" * 3001}}],
        [{"type": "section", "fields": [md] * 11}],
        [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2001}]}],
        [{"type": "section", "text": {"type": "mrkdwn", "text": ""}}],
        [{"type": "context", "elements": [md] * 11}],
        [{"type": "section", "text": {"type": "plain_text", "text": "x", "verbatim": True}}],
        [{"type": "sektion", "text": md}],
    ]
    for blocks in bad:
        with pytest.raises(SlackApiError) as e:
            client.chat_postMessage(channel="C0ALERTS", text="x", blocks=blocks)
        assert e.value.response["error"] == "invalid_blocks", blocks
    with pytest.raises(SlackApiError) as e:
        client.chat_postMessage(channel="C0ALERTS", text="x" * 40_001)
    assert e.value.response["error"] == "msg_too_long"
    ok = client.chat_postMessage(channel="C0ALERTS", text="x", blocks=[
        {"type": "header", "text": {"type": "plain_text", "text": "h" * 150}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2000}] * 10},
        {"type": "context", "elements": [md] * 10}, *[{"type": "divider"}] * 47])
    assert ok["ok"] and slack.messages("C0ALERTS")[0]["ts"] == ok["ts"]
    resp = WebhookClient(slack.webhook_url, timeout=2, retry_handlers=[]).send(text="x", blocks=bad[0])
    assert (resp.status_code, resp.body) == (400, "invalid_blocks")


def test_redact_removes_the_token_and_the_webhook_path() -> None:
    url = "https://hooks.slack.com/services/T000/B000/abcdefSECRET"
    text = f"failed: {url} and /services/T000/B000/abcdefSECRET with xoxb-1-2-tok"
    out = redact(text, ["xoxb-1-2-tok", url])
    assert "SECRET" not in out and "xoxb" not in out and out.count("[redacted]") == 3


def test_a_notifier_needs_a_token_or_a_webhook() -> None:
    with pytest.raises(ValueError):
        SlackNotifier(channel="#alerts")
