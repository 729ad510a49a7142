"""costwatch.fallback with stand-in notifiers: any notifier whose Delivery says ``permanent=True`` is a broken
channel, told to the fallback owner through another channel once per repeat interval, until it works."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from costwatch import fallback, outbox
from costwatch.alerts import iso
from costwatch.config import Config, parse_config
from costwatch.notify import Delivery, Notification, Target, notification_id
from costwatch.run import RunResult, _tell_broken
from costwatch.state import Store, open_store

T0 = pd.Timestamp("2026-11-20T10:00:00Z")
H = pd.Timedelta(hours=1)
SECRET = "xoxb-secret-token-never-shown"


class Stub:
    """A notifier: records what it sent; ``broken`` makes every send a permanent failure."""

    def __init__(self, name: str, broken: str | None = None) -> None:
        self.name, self.broken = name, broken
        self.sent: list[Notification] = []
        self.calls = 0

    def notify(self, notifications: list[Notification]) -> list[Delivery]:
        self.calls += len(notifications)
        if self.broken:
            return [Delivery(ok=False, permanent=True, error=self.broken) for _ in notifications]
        self.sent += notifications
        return [Delivery(ok=True, ref=f"ref-{n.id}") for n in notifications]


def config(tmp_path: Path, extra: str = "") -> Config:
    return parse_config(f"""
alerting: {{repeat_interval: 4h, default_owner: finops{extra}}}
owners:
  finops: {{slack_channel: C0FINOPS, email: [finops@example.com]}}
  secops: {{email: [secops@example.com]}}
notify:
  slack: {{token: {SECRET}, channel: C0ALERTS}}
  email: {{smtp_host: smtp.example.com, from_addr: costwatch@example.com}}
  stdout: false
state: {{path: {tmp_path / 'state.db'}}}
""")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = open_store(config(tmp_path).state)
    yield s
    s.close()


def alert_to(target: Target, group: str = "g1", at: pd.Timestamp = T0) -> Notification:
    return Notification(id=notification_id(group, target, "firing", 0), group_key=group, event="firing",
                        target=target, title="cost spike", created_at=iso(at) or "",
                        alerts=[{"kind": "cost_spike", "severity": "high", "project": "p1", "summary": "x"}])


def step(cfg: Config, store: Store, notifiers: dict[str, Any], now: pd.Timestamp) -> RunResult:
    """The delivery half of a run: deliver (retrying broken channels' failed items), then tell the fallback."""
    res = RunResult(as_of=now, detection=None)
    res.delivery = outbox.deliver(store, notifiers, now, retry_failed=set(fallback.broken(store)),
                                  sleep=lambda s: None)
    _tell_broken(cfg, store, notifiers, now, res, pd.Timedelta(hours=6), lambda s: None)
    return res


def test_broken_channel_is_told_once_per_interval_until_it_works(tmp_path: Path, store: Store) -> None:
    cfg = config(tmp_path)
    slack, email = Stub("slack", broken="invalid_auth: the bot token is not valid"), Stub("email")
    notifiers = {"slack": slack, "email": email}
    outbox.enqueue(store, alert_to(Target("slack", "C0TEAM")), T0)

    first = step(cfg, store, notifiers, T0)
    assert first.exit_code == 1 and first.broken_channels == {"slack": "invalid_auth: the bot token is not valid"}
    [told] = email.sent
    assert told.event == "channel_broken" and told.target == Target("email", "finops@example.com")
    assert "Slack" in told.title and "invalid_auth" in told.alerts[0]["summary"]
    assert SECRET not in told.to_json()

    # overlapping / retried runs in the same interval: nothing new; the next interval: once more
    step(cfg, store, notifiers, T0 + H)
    step(cfg, store, notifiers, T0 + 3 * H)
    assert len(email.sent) == 1
    step(cfg, store, notifiers, T0 + 4 * H)
    step(cfg, store, notifiers, T0 + 5 * H)
    assert len(email.sent) == 2 and email.sent[1].sequence == 1

    slack.broken = None  # the token is fixed
    fixed = step(cfg, store, notifiers, T0 + 6 * H)
    assert [n.target.address for n in slack.sent] == ["C0TEAM"]
    assert fixed.exit_code == 0 and fixed.broken_channels == {} and fixed.delivery.failed == 0
    assert fallback.broken(store) == {}
    step(cfg, store, notifiers, T0 + 9 * H)
    assert len(email.sent) == 2 and len(slack.sent) == 1


def test_one_probe_per_broken_channel_per_run(tmp_path: Path, store: Store) -> None:
    cfg = config(tmp_path)
    slack = Stub("slack", broken="token_revoked")
    for g in ("g1", "g2", "g3"):
        outbox.enqueue(store, alert_to(Target("slack", "C0TEAM"), g), T0)
    step(cfg, store, {"slack": slack, "email": Stub("email")}, T0)
    assert slack.calls == 3  # new items are each tried once
    step(cfg, store, {"slack": slack, "email": Stub("email")}, T0 + H)
    assert slack.calls == 4  # later runs: the oldest failed item probes the channel, the others wait


def test_fallback_owner_from_config_and_no_other_channel(tmp_path: Path, store: Store,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(tmp_path, ", fallback: secops")
    email = Stub("email")
    outbox.enqueue(store, alert_to(Target("slack", "C0TEAM")), T0)
    step(cfg, store, {"slack": Stub("slack", broken="account_inactive"), "email": email}, T0)
    assert [n.target.address for n in email.sent] == ["secops@example.com"]

    # email itself broken too: slack is its fallback, and is broken as well: both recorded, nothing loops
    caplog.set_level(logging.WARNING)
    outbox.enqueue(store, alert_to(Target("email", "finops@example.com"), "g2", T0 + H), T0 + H)
    res = step(cfg, store, {"slack": Stub("slack", broken="account_inactive"),
                            "email": Stub("email", broken="SMTP login refused (535)")}, T0 + 5 * H)
    assert set(res.broken_channels) == {"slack", "email"}


def test_a_channel_no_longer_configured_is_not_broken(tmp_path: Path, store: Store) -> None:
    cfg = config(tmp_path)
    email = Stub("email")
    n = alert_to(Target("slack", "C0TEAM"))
    outbox.enqueue(store, n, T0)
    rec = store.get("outbox", n.id)
    assert rec is not None
    store.put("outbox", n.id, {**rec.doc, "attempts": 1}, version=rec.version)  # tried once before
    res = step(cfg, store, {"email": email}, T0)
    assert res.delivery.failed == 1 and res.broken_channels == {} and email.sent == []


def test_notice_renders_in_slack_without_answer_buttons_and_in_email(tmp_path: Path) -> None:
    from fake_slack import check_blocks

    from costwatch.notifiers.email_render import subject
    from costwatch.notifiers.slack_blocks import render

    cfg = config(tmp_path)
    broken = {"email": {"reason": "SES: the sender is not verified", "since": iso(T0)}}
    [n] = fallback.notifications(cfg, broken, T0 + 9 * H, {"slack", "email"})
    assert n.target == Target("slack", "C0FINOPS") and n.sequence == 2
    text, blocks = render(n, interactive=True)
    assert check_blocks(blocks) == []
    assert "email" in text and "not verified" in text
    assert not any(b.get("type") == "actions" for b in blocks)
    assert "channel_broken" in subject(n) and "email" in subject(n)
