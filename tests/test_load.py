"""Load: an attack across many projects, 10,000 alerts in one `costwatch run`.

2,500 projects on three clouds, each with a miner and the cost alerts that come with it (4 alerts a project),
owned by 20 teams plus a small team of 6 projects; critical incidents also escalate to secops.  Everything
after detection is the real pipeline: ``incidents.plan`` (2,500 incidents), routing, the SQLite outbox, the
real Slack notifier against ``fake_slack`` enforcing Slack's posting limit (1 message/s per channel, HTTP 429
+ Retry-After beyond it), and the real email notifier against the aiosmtpd server.

What must hold: every owner gets a bounded number of messages (a digest instead of 125 or 2,000 separate
ones), no post goes over the rate limit, and no notification is dropped: each one is delivered itself, or is
a member of a digest that was delivered.  A later run repeats them (after ``repeat_interval``) as digests
again, and a run while Slack is down leaves everything pending and loses nothing.

    .venv/bin/pytest tests/test_load.py -s    # prints the figures
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

pytest.importorskip("slack_sdk")
pytest.importorskip("aiosmtpd")

import smtp_server
from fake_slack import Channel, FakeSlack

from costwatch import outbox
from costwatch import run as runmod
from costwatch.alerts import Alert
from costwatch.config import Config, parse_config
from costwatch.detect import Detection
from costwatch.notify import Notification
from costwatch.run import RunResult, build_notifiers, run_once
from costwatch.state import SqliteStore

AS_OF = pd.Timestamp("2026-11-20 06:00", tz="UTC")
H = pd.Timedelta(hours=1)
TEAMS = 20
PROJECTS = 2500
SMALL = 6                      # projects of team-small: few enough to be told one by one
FROM = "costwatch@example.com"


def project_id(i: int) -> str:
    return f"{i:012d}" if i % 3 == 0 else (f"proj-{i:05d}" if i % 3 == 1 else f"00000000-0000-0000-0000-{i:012x}")


def provider_of(i: int) -> str:
    return ("aws", "gcp", "azure")[i % 3]


def team_of(i: int) -> str:
    return "team-small" if i < SMALL else f"team-{i % TEAMS:02d}"


def attack(n_projects: int = PROJECTS) -> list[Alert]:
    """Four alerts a project: the miner (critical), the compute spike it causes, a storage spike (egress of
    the mined coins' chain data, say) and the daily threshold, all active at AS_OF."""
    day = AS_OF.floor("D") - pd.Timedelta(days=1)
    out: list[Alert] = []
    for i in range(n_projects):
        pid, prov = project_id(i), provider_of(i)
        name = f"svc-{i:05d}"
        region = ("ap-southeast-2", "asia-southeast1", "brazilsouth")[i % 3]
        nodes = [{"node": f"i-{i:05d}{k:03d}", "cpu": 99.0, "new": True, "new_region": True, "region": region,
                  "instance_type": "c5.4xlarge", "start": (AS_OF - 8 * H).isoformat()} for k in range(3)]
        out.append(Alert(
            kind="mining_suspected", project=pid, project_name=name, provider=prov, start=AS_OF - 8 * H,
            detected_at=AS_OF - 6 * H, severity="critical", observed=99.0, expected=25.0, lower=10.0, upper=45.0,
            currency="USD", score=9.0, region=region, scope="mining",
            summary=f"3 new nodes pinned at 99% CPU in {region}, a region {name} never used",
            evidence={"metric": "cpu_percent", "nodes": nodes, "node_count": 3, "new_nodes": 3,
                      "new_regions": [region], "ongoing_until": (AS_OF - H).isoformat(),
                      "cost": {"observed": 160.0 + i % 50, "expected": 40.0, "lower": 30.0, "upper": 50.0}}))
        for kind, service, sev, obs in (("cost_spike", "Compute", "high", 160.0 + i % 50),
                                        ("cost_spike", "Storage", "warning", 30.0),
                                        ("threshold_exceeded", None, "warning", 190.0)):
            out.append(Alert(
                kind=kind, project=pid, project_name=name, provider=prov, start=day, detected_at=AS_OF - 5 * H,
                severity=sev, observed=obs, expected=40.0 if service != "Storage" else 3.0, lower=30.0, upper=50.0,
                currency="USD", score=5.0, service=service, region=region if service == "Compute" else None,
                scope=f"{kind}:{service}", summary=f"{service or 'daily'} spend {obs:.0f} USD",
                evidence={"days": 1}))
    return out


def config(d: Path, slack: FakeSlack, smtp: smtp_server.SmtpServer, n_projects: int = PROJECTS) -> Config:
    teams = sorted({team_of(i) for i in range(n_projects)})
    doc: dict[str, Any] = {
        "projects": {project_id(i): {"owner": team_of(i)} for i in range(n_projects)},
        "owners": {**{t: {"slack_channel": f"C0{t.upper().replace('-', '')}", "email": [f"{t}@example.com"]}
                      for t in teams},
                   "secops": {"slack_channel": "C0SECOPS", "email": ["secops@example.com"]}},
        "alerting": {"repeat_interval": "4h", "escalate": {"critical": ["secops"]}},
        "notify": {"slack": {"token": slack.token, "channel": "C0ALERTS", "api_url": slack.api_url, "timeout": 5,
                             "charts": False},
                   "email": {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "from_addr": FROM,
                             "starttls": False, "timeout": 5, "to": ["finops@example.com"]},
                   "stdout": False},
        "state": {"path": str(d / "state.db")},
    }
    return parse_config(yaml.safe_dump(doc))


def channels(n_projects: int = PROJECTS) -> list[Channel]:
    teams = sorted({team_of(i) for i in range(n_projects)})
    return [Channel(f"C0{t.upper().replace('-', '')}", t) for t in teams] + [
        Channel("C0SECOPS", "secops"), Channel("C0ALERTS", "alerts")]


class Attack:
    """The detector returns the attack's alerts (whatever frames it is given): everything else is real."""

    def __init__(self, alerts: list[Alert]) -> None:
        self.alerts = alerts

    def __call__(self, costs: Any, usage: Any, cfg: Any = None, *, as_of: Any = None, since: Any = None,
                 findings: Any = None, now: Any = None, planned: Any = None) -> Detection:
        return Detection(as_of=pd.Timestamp(as_of), since=pd.Timestamp(since), alerts=list(self.alerts), projects=[])


def accounted(state: Path, slack: FakeSlack, smtp: smtp_server.SmtpServer) -> dict[str, Any]:
    """Every notification's fate, checked at the services: delivered itself, in a delivered digest, or
    pending; and how many times each message reached a service."""
    from costwatch.notifiers.email_render import message_id, msgid_domain

    store = SqliteStore(state)
    try:
        recs = {r.key: r for r in store.scan("outbox")}
    finally:
        store.close()
    posted = Counter(m["metadata"]["event_payload"]["id"] for ch in slack.channels for m in slack.messages(ch)
                     if m.get("metadata"))
    mailed = Counter(str(r.message["Message-ID"]) for r in smtp.messages)
    domain = msgid_domain(FROM)

    def at_service(n: Notification) -> bool:
        return posted[n.id] > 0 if n.target.channel == "slack" else mailed[message_id(n, domain)] > 0

    fate: Counter[str] = Counter()
    lost = []
    for key, r in recs.items():
        n = Notification.from_json(r.doc["notification"])
        st = r.doc.get("status")
        if n.event == "digest":
            continue
        if st == "digested":
            dig = recs.get(r.doc.get("digest", ""))
            if dig is None or key not in dig.doc.get("members", []):
                lost.append(key)
            elif dig.doc.get("status") == "delivered" and at_service(Notification.from_json(dig.doc["notification"])):
                fate["in a delivered digest"] += 1
            elif dig.doc.get("status") == "pending":
                fate["in a pending digest"] += 1
            else:
                lost.append(key)
        elif st == "delivered":
            if at_service(n):
                fate["delivered itself"] += 1
            else:
                lost.append(key)
        elif st == "pending":
            fate["pending"] += 1
        else:
            lost.append(key)
    return {"fate": fate, "lost": lost, "notifications": sum(fate.values()) + len(lost),
            "duplicates": sum(c - 1 for c in posted.values()) + sum(c - 1 for c in mailed.values())}


def max_per_second(slack: FakeSlack) -> int:
    """The most of our posts any channel received within one second (Slack's limit: about 1)."""
    worst = 0
    for ch in slack.channels:
        ts = sorted(float(m["ts"]) for m in slack.messages(ch) if m.get("metadata"))
        j = 0
        for i, t in enumerate(ts):
            while ts[j] <= t - 1.0:
                j += 1
            worst = max(worst, i - j + 1)
    return worst


@pytest.fixture
def services() -> Iterator[tuple[FakeSlack, smtp_server.SmtpServer]]:
    smtp = smtp_server.start()
    with FakeSlack(channels=channels()) as slack:
        slack.limit_rate(1.0, burst=1)   # Slack: ~1 message per second per channel
        try:
            yield slack, smtp
        finally:
            smtp.stop()


def test_ten_thousand_alerts(services: tuple[FakeSlack, smtp_server.SmtpServer], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    slack, smtp = services
    alerts = attack()
    assert len(alerts) == 10_000
    monkeypatch.setattr(runmod, "detect", Attack(alerts))
    cfg = config(tmp_path, slack, smtp)
    t0 = time.monotonic()
    res = run_once(cfg, now=AS_OF, as_of=AS_OF, providers=[], notifiers=build_notifiers(cfg), charts=False)
    took = time.monotonic() - t0
    assert isinstance(res, RunResult)
    assert res.alerts_active == 10_000 and res.incidents_open == PROJECTS
    # 2,500 incidents to their team (Slack + mail), the 2,500 critical ones to secops as well
    assert res.queued == 4 * PROJECTS
    assert res.delivery.pending == 0 and res.delivery.failed == 0 and res.exit_code == 0, res.lines()

    per_channel = {ch: sum(1 for m in slack.messages(ch) if m.get("metadata")) for ch in slack.channels}
    per_mailbox = Counter(a for r in smtp.messages for a in r.rcpt_tos)
    big = {ch: k for ch, k in per_channel.items() if ch not in ("C0TEAMSMALL", "C0ALERTS")}
    # one digest per team channel (~125 incidents); secops is told of all 2,500: two digests of at most 2,000
    assert per_channel["C0SECOPS"] == 2 and all(v == 1 for ch, v in big.items() if ch != "C0SECOPS"), big
    assert per_channel["C0TEAMSMALL"] == SMALL  # 6 incidents: one message each (under the digest threshold)
    assert per_mailbox["secops@example.com"] == 2 and per_mailbox["team-small@example.com"] == SMALL
    assert max(per_mailbox.values()) == SMALL
    # within Slack's rate limit: paced, never refused
    assert slack.rate_limited == [] and max_per_second(slack) <= 1
    acc = accounted(tmp_path / "state.db", slack, smtp)
    assert acc["lost"] == [] and acc["duplicates"] == 0 and acc["notifications"] == 4 * PROJECTS
    assert acc["fate"]["in a delivered digest"] == 4 * PROJECTS - 2 * SMALL
    assert acc["fate"]["delivered itself"] == 2 * SMALL
    digest = next(c.params for c in slack.calls("chat.postMessage") if c.params.get("channel") == "C0TEAM00")
    assert re.search(r"Digest · 12[45] incidents in 12[45] projects", digest["text"]), digest["text"]

    # four hours later, nothing changed: every incident is repeated, again as digests
    t1 = time.monotonic()
    later = run_once(cfg, now=AS_OF + 4 * H, as_of=AS_OF, providers=[], notifiers=build_notifiers(cfg),
                     charts=False)
    took_repeat = time.monotonic() - t1
    assert later.queued == 4 * PROJECTS and later.delivery.pending == 0
    per_channel_2 = {ch: sum(1 for m in slack.messages(ch) if m.get("metadata")) for ch in slack.channels}
    assert max(per_channel_2[ch] - per_channel[ch] for ch in big) == 2
    assert slack.rate_limited == [] and max_per_second(slack) <= 1
    acc2 = accounted(tmp_path / "state.db", slack, smtp)
    assert acc2["lost"] == [] and acc2["duplicates"] == 0

    figures = {
        "alerts": len(alerts), "incidents": res.incidents_open, "notifications queued": res.queued,
        "digests": res.delivery.digests, "folded into digests": res.delivery.digested,
        "Slack messages per team channel": sorted(set(big.values()) - {per_channel['C0SECOPS']}) or [1],
        "Slack messages to secops": per_channel["C0SECOPS"], "Slack messages to team-small (6 incidents)":
            per_channel["C0TEAMSMALL"], "mails per team address": sorted(set(per_mailbox.values())),
        "max posts per channel per second": max_per_second(slack), "HTTP 429 from the fake": len(slack.rate_limited),
        "run time (s)": round(took, 1), "repeat run 4 h later (s)": round(took_repeat, 1),
        "lost": len(acc["lost"]) + len(acc2["lost"]), "duplicates": acc["duplicates"] + acc2["duplicates"],
    }
    print("\n10,000-alert run:\n" + "\n".join(f"  {k}: {v}" for k, v in figures.items()))


def test_attack_while_slack_is_down_loses_nothing(services: tuple[FakeSlack, smtp_server.SmtpServer],
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same attack with Slack unreachable: digests are made and stay pending (two connection attempts,
    not one per message), mail goes; the next run posts the digests and nothing is lost or doubled."""
    slack, smtp = services
    n = 600
    monkeypatch.setattr(runmod, "detect", Attack(attack(n)))
    cfg = config(tmp_path, slack, smtp, n_projects=n)
    slack.fail("chat.postMessage", drop=True, times=10_000)
    first = run_once(cfg, now=AS_OF, as_of=AS_OF, providers=[], notifiers=build_notifiers(cfg), charts=False,
                     sleep=lambda s: None)
    assert first.exit_code == 0 and first.delivery.pending > 0
    assert len(slack.calls("chat.postMessage")) <= 2 * 3   # two targets tried (with in-run retries), then left
    with slack._lock:
        slack._faults.clear()
    second = run_once(cfg, now=AS_OF + 20 * pd.Timedelta(minutes=1), as_of=AS_OF, providers=[],
                      notifiers=build_notifiers(cfg), charts=False)
    assert second.delivery.pending == 0 and second.exit_code == 0, second.lines()
    acc = accounted(tmp_path / "state.db", slack, smtp)
    assert acc["lost"] == [] and acc["duplicates"] == 0 and acc["notifications"] == 4 * n
    assert slack.rate_limited == [] and max_per_second(slack) <= 1
    assert max(sum(1 for m in slack.messages(ch) if m.get("metadata")) for ch in slack.channels) <= SMALL


def test_digest_fits_every_medium() -> None:
    """A digest of 2,000 incidents renders within Slack's Block Kit limits and as a mail of sane size."""
    from fake_slack import check_blocks

    from costwatch.notifiers.email_render import build_message, parse_addresses
    from costwatch.notifiers.slack_blocks import render
    from costwatch.notify import Target, notification_id

    members = []
    for i, a in enumerate(attack(2000)[::4]):
        members.append(Notification(id=notification_id(f"g{i}#1", Target("slack", "C0X"), "firing", 0),
                                    group_key=f"g{i}#1", event="firing", target=Target("slack", "C0X"),
                                    title=f"mining suspected in {a.project_name}", alerts=[a.to_dict()],
                                    created_at="2026-11-20T06:00:00Z", owner="team-00", mention="S0SECOPS"))
    d = outbox.digest_notification("d" * 24, "digest:x", members, AS_OF)
    text, blocks = render(d)
    assert check_blocks(blocks) == [] and len(blocks) <= 50
    assert "2,000 incidents in 2,000 projects" in text
    assert "<!subteam^S0SECOPS>" in str(blocks)  # the owners' mention, once
    (rcpt,), _ = parse_addresses(["team@example.com"])
    (sender,), _ = parse_addresses([FROM])
    msg = build_message(d, sender=sender, recipients=[rcpt], msgid="<x@example.com>")
    assert len(msg.as_bytes()) < 1_000_000
    assert "2,000 incidents" in str(msg["Subject"]) or "2,000" in d.title


# ------------------------------------------------------------------------------------------ digest mechanics

T0 = pd.Timestamp("2026-11-20 06:00", tz="UTC")
MIN = pd.Timedelta(minutes=1)


class Recorder:
    """A notifier that keeps what it accepted; can die after accepting (a crash between send and mark) and
    finds earlier deliveries by id, like Slack's metadata lookup."""

    name = "stdout"

    def __init__(self, crash_on_digest: bool = False) -> None:
        self.accepted: list[Notification] = []
        self.crash_on_digest = crash_on_digest

    def notify(self, notifications: list[Notification]) -> list[Any]:
        from costwatch.notify import Delivery

        out = []
        for n in notifications:
            self.accepted.append(n)
            if self.crash_on_digest and n.event == "digest":
                self.crash_on_digest = False
                raise KeyboardInterrupt("killed after the digest went out")
            out.append(Delivery(ok=True, ref=f"ref-{n.id}"))
        return out

    def find_delivered(self, n: Notification) -> Any:
        from costwatch.notify import Delivery

        return Delivery(ok=True, ref=f"ref-{n.id}") if any(a.id == n.id for a in self.accepted) else None

    def told(self) -> Counter[str]:
        """Each notification id -> how many times it reached the service, itself or inside a digest."""
        out: Counter[str] = Counter()
        for n in self.accepted:
            out[n.id] += 1
        return out


def notes(k: int, start: int = 0) -> list[Notification]:
    from costwatch.notify import Target, notification_id

    out = []
    for i in range(start, start + k):
        a = {"kind": "cost_spike", "project": f"p{i}", "project_name": f"proj {i}", "provider": "aws",
             "severity": "warning", "observed": 100.0 + i, "expected": 10.0, "currency": "USD",
             "start": "2026-11-19T00:00:00Z", "detected_at": "2026-11-20T05:00:00Z", "summary": f"spike {i}"}
        out.append(Notification(id=notification_id(f"g{i}#1", Target("stdout"), "firing", 0), group_key=f"g{i}#1",
                                event="firing", target=Target("stdout"), title=f"cost spike in proj {i}",
                                alerts=[a], created_at="2026-11-20T06:00:00Z", owner="team-a"))
    return out


def members_told(store: SqliteStore, rec: Recorder) -> Counter[str]:
    """Notification id -> times told: directly, or as a member of a digest the service accepted."""
    recs = {r.key: r for r in store.scan("outbox")}
    out: Counter[str] = Counter()
    for n in rec.accepted:
        if n.event == "digest":
            for m in recs[n.id].doc["members"]:
                out[m] += 1
        else:
            out[n.id] += 1
    return out


def test_a_retried_run_queues_no_second_digest(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    batch = notes(15)
    assert outbox.enqueue_many(store, batch, T0) == (15, 1, 15)
    assert outbox.enqueue_many(store, batch, T0) == (0, 0, 0)      # the same decisions again: nothing new
    rec = Recorder()
    report = outbox.deliver(store, {"stdout": rec}, T0)
    assert report.delivered == 1 and [n.event for n in rec.accepted] == ["digest"]
    assert members_told(store, rec) == Counter({n.id: 1 for n in batch})
    # a run that had queued 5 of the next batch before it died: the retry queues the other 10 as plain
    # items (too few for a digest of their own), and delivery folds the 15 due ones into one digest
    more = notes(15, start=100)
    for n in more[:5]:
        outbox.enqueue(store, n, T0)
    assert outbox.enqueue_many(store, more, T0 + MIN) == (10, 0, 0)
    report = outbox.deliver(store, {"stdout": rec}, T0 + MIN)
    assert report.digests == 1 and report.digested == 15 and report.delivered == 1
    assert members_told(store, rec) == Counter({n.id: 1 for n in batch + more})
    store.close()


def test_members_of_a_digest_never_queued_go_out_once(tmp_path: Path) -> None:
    """Killed between marking the members "digested" and queueing their digest: after the lease they go back
    to pending and are told (folded again, since there are many), exactly once."""
    from costwatch.alerts import iso

    store = SqliteStore(tmp_path / "s.db")
    batch = notes(15)
    for n in batch:
        store.put("outbox", n.id, {**outbox._doc(n, T0), "status": "digested", "digest": "never-queued",
                                   "digested_at": iso(T0)}, version=None)
    rec = Recorder()
    outbox.deliver(store, {"stdout": rec}, T0 + 2 * MIN)   # maybe the other run is still at it: wait
    assert rec.accepted == []
    report = outbox.deliver(store, {"stdout": rec}, T0 + 15 * MIN)
    assert report.digests == 1 and report.digested == 15 and report.pending == 0
    outbox.deliver(store, {"stdout": rec}, T0 + 20 * MIN)
    assert members_told(store, rec) == Counter({n.id: 1 for n in batch})
    store.close()


def test_backlog_is_folded_at_delivery_and_a_tried_item_goes_alone(tmp_path: Path) -> None:
    """After an outage: 4 notifications a run for 3 runs, never tried (the service was down and the run
    left it alone); the 4th run folds the 12 into one digest.  One that was tried once goes on its own
    (it may already be with the service: it is looked up first)."""
    store = SqliteStore(tmp_path / "s.db")
    batch = notes(13)
    for k in range(3):
        for n in batch[4 * k: 4 * k + 4]:
            outbox.enqueue(store, n, T0 + k * pd.Timedelta(hours=1))
    tried = batch[12]
    outbox.enqueue(store, tried, T0)
    r = store.get("outbox", tried.id)
    assert r is not None
    store.put("outbox", tried.id, {**r.doc, "attempts": 1, "next_attempt": "2026-11-20T06:30:00Z"}, version=r.version)
    rec = Recorder()
    report = outbox.deliver(store, {"stdout": rec}, T0 + 3 * pd.Timedelta(hours=1))
    assert report.digests == 1 and report.digested == 12 and report.delivered == 2
    assert sorted(n.event for n in rec.accepted) == ["digest", "firing"]
    assert members_told(store, rec) == Counter({n.id: 1 for n in batch})
    store.close()


def test_digest_killed_between_send_and_mark_is_not_sent_twice(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    batch = notes(15)
    outbox.enqueue_many(store, batch, T0)
    rec = Recorder(crash_on_digest=True)
    with pytest.raises(KeyboardInterrupt):
        outbox.deliver(store, {"stdout": rec}, T0)
    outbox.deliver(store, {"stdout": rec}, T0 + 2 * MIN)     # inside the lease: left alone
    report = outbox.deliver(store, {"stdout": rec}, T0 + 15 * MIN)
    assert report.delivered == 1 and report.pending == 0
    assert [n.event for n in rec.accepted] == ["digest"]     # found, not resent
    assert members_told(store, rec) == Counter({n.id: 1 for n in batch})
    # the digest is the incidents' first message: their updates thread under it
    ref = store.get("thread", f"{batch[0].group_key}|{batch[0].target.key}")
    assert ref is not None and ref.doc["ref"] == f"ref-{rec.accepted[0].id}"
    store.close()


def test_outbox_command_lists_a_digest_not_its_thousand_members(tmp_path: Path) -> None:
    """`costwatch outbox` after a flood: one line for the pending digest with its size; the members (whose
    fate is the digest's) only with --all, each naming its digest."""
    from click.testing import CliRunner

    from costwatch.cli import cli

    store = SqliteStore(tmp_path / "state.db")
    batch = notes(15)
    assert outbox.enqueue_many(store, batch, T0) == (15, 1, 15)
    store.close()
    cfg = tmp_path / "costwatch.yaml"
    cfg.write_text(yaml.safe_dump({"state": {"path": str(tmp_path / "state.db")}}))
    short = CliRunner().invoke(cli, ["outbox", "--config", str(cfg)])
    assert short.exit_code == 0, short.output
    lines = short.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pending") and "[digest of 15]" in lines[0]
    full = CliRunner().invoke(cli, ["outbox", "--config", str(cfg), "--all"])
    rows = full.output.strip().splitlines()
    assert len(rows) == 16 and sum("(in digest " in r for r in rows) == 15
