"""Who is told: project owner from config, then cost tags, then the default; escalation by severity;
targets merged per channel; owner names from data are used only where they are safe."""

from __future__ import annotations

import pandas as pd

from costwatch.config import parse_config
from costwatch.notify import Target
from costwatch.routing import owners_for, project_owners_from_tags, routes

CFG = """
projects:
  "111":
    owner: payments
  "222": {}
alerting:
  default_owner: finops
  escalate:
    critical: [secops]
owners:
  payments:
    slack_channel: "#payments"
    slack_mention: U0PAY1
    email: [pay@example.com]
  secops:
    slack_channel: "#payments"
    slack_mention: S0SEC1
  finops:
    email: [finops@example.com]
notify:
  slack:
    token: xoxb-test
    channel: "#cost"
  email:
    smtp_host: localhost
    from_addr: costwatch@example.com
    to: [all@example.com]
  stdout: false
"""


def test_owner_precedence_and_escalation() -> None:
    cfg = parse_config(CFG)
    tags = {"222": "data-team", "333": "ml@example.com"}
    assert owners_for("111", "warning", cfg, tags) == ["payments"]
    assert owners_for("111", "critical", cfg, tags) == ["payments", "secops"]
    assert owners_for("222", "warning", cfg, tags) == ["data-team"]  # config names none: the tag
    assert owners_for("444", "warning", cfg, tags) == ["finops"]     # nobody: the default


def test_targets_merge_per_channel_and_mention_everyone() -> None:
    cfg = parse_config(CFG)
    rs = {r.target: r for r in routes(["payments", "secops"], cfg)}
    slack = rs[Target("slack", "#payments")]
    assert slack.owners == ["payments", "secops"] and slack.mentions == ["U0PAY1", "S0SEC1"]
    assert Target("email", "pay@example.com") in rs
    # secops has no email of its own: the notify defaults
    assert Target("email", "all@example.com") in rs


def test_unlisted_owner_names_from_tags() -> None:
    cfg = parse_config(CFG)
    by_target = {r.target for r in routes(["ml@example.com"], cfg)}
    assert Target("email", "ml@example.com") in by_target and Target("slack", "") in by_target
    assert {r.target for r in routes(["#ml-alerts"], cfg)} >= {Target("slack", "#ml-alerts")}
    # hostile tag values never become a channel, an address or a mention
    for evil in ["<!channel>", "a@b.c\r\nBcc: x@evil.example", "#x> <!here", "x@y.z,evil@bad.example"]:
        rs = routes([evil], cfg)
        assert {r.target for r in rs} == {Target("slack", ""), Target("email", "all@example.com")}
        assert all(not r.mentions for r in rs)


def test_owner_from_tags_is_the_most_common_value() -> None:
    costs = pd.DataFrame({
        "project_id": ["p1"] * 4 + ["p2"] * 2,
        "period_start": pd.date_range("2026-11-01", periods=6, freq="D", tz="UTC"),
        "tags": [{"owner": "a"}, {"owner": "b"}, {"owner": "b"}, {}, {"team": "t"}, {"team": "t", "x": "1"}],
    })
    assert project_owners_from_tags(costs, ["owner", "team"]) == {"p1": "b", "p2": "t"}
