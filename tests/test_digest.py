"""The scheduled spend digest (``alerting.digest``): the schedule as a pure function of ``now`` (week
boundaries, time zones, DST), the figures on a small frame whose answers are known, once per target and
period across retries and overlapping runs (real SQLite outbox), and delivery through a real SMTP server
(aiosmtpd), the local fake Slack API and ``costwatch run`` itself."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import smtp_server
import yaml
from click.testing import CliRunner
from fake_slack import FakeSlack, check_blocks

from costwatch import digest, outbox
from costwatch.cli import cli
from costwatch.config import Config, ConfigError, DigestConfig, load_config, parse_config
from costwatch.demo import to_focus
from costwatch.model import normalize_costs
from costwatch.notifiers.email import EmailNotifier
from costwatch.notifiers.slack import SlackNotifier
from costwatch.notifiers.stdout import StdoutNotifier
from costwatch.notify import Target
from costwatch.run import run_once
from costwatch.scenarios import generate
from costwatch.state import SqliteStore

T = pd.Timestamp
EVIL = "<script>alert(1)</script> \u202eevil\" <!channel>"


# ------------------------------------------------------------------------------------------- schedule


def _dc(**kw: Any) -> DigestConfig:
    return DigestConfig(**kw)


@pytest.mark.parametrize(("now", "start", "end"), [
    ("2026-11-16T08:59:59Z", "2026-11-09T09:00:00Z", "2026-11-16T09:00:00Z"),   # Monday, a second early
    ("2026-11-16T09:00:00Z", "2026-11-16T09:00:00Z", "2026-11-23T09:00:00Z"),   # on the hour
    ("2026-11-18T15:00:00Z", "2026-11-16T09:00:00Z", "2026-11-23T09:00:00Z"),   # Wednesday: missed the hour
    ("2026-11-22T23:59:00Z", "2026-11-16T09:00:00Z", "2026-11-23T09:00:00Z"),   # Sunday night
    ("2027-01-01T00:00:00Z", "2026-12-28T09:00:00Z", "2027-01-04T09:00:00Z"),   # across the year
])
def test_weekly_period_across_week_boundaries(now: str, start: str, end: str) -> None:
    p = digest.period_at(_dc(), T(now))
    assert (p.start, p.end) == (T(start), T(end))


def test_weekly_period_on_another_day_and_hour() -> None:
    p = digest.period_at(_dc(day="friday", hour=17), T("2026-11-20T16:00:00Z"))  # Friday, before 17:00
    assert p.start == T("2026-11-13T17:00:00Z")


def test_period_in_a_time_zone_and_across_dst() -> None:
    berlin = _dc(timezone="Europe/Berlin")
    # winter: Monday 09:00 in Berlin is 08:00 UTC
    assert digest.period_at(berlin, T("2026-11-16T07:59:00Z")).start == T("2026-11-09T08:00:00Z")
    assert digest.period_at(berlin, T("2026-11-16T08:00:00Z")).start == T("2026-11-16T08:00:00Z")
    # the week DST starts (Sunday 2026-03-29): opens at 09:00 CET, ends at 09:00 CEST, an hour shorter
    p = digest.period_at(berlin, T("2026-03-25T12:00:00Z"))
    assert (p.start, p.end) == (T("2026-03-23T08:00:00Z"), T("2026-03-30T07:00:00Z"))
    assert "Europe/Berlin" in p.label and "09:00" in p.label
    # Auckland's Monday 09:00 is Sunday 20:00 UTC: the local date decides the weekday, not the UTC one
    nz = _dc(timezone="Pacific/Auckland")
    assert digest.period_at(nz, T("2026-11-15T20:30:00Z")).start == T("2026-11-15T20:00:00Z")
    assert digest.period_at(nz, T("2026-11-15T19:30:00Z")).start == T("2026-11-08T20:00:00Z")


def test_daily_schedule() -> None:
    ny = _dc(schedule="daily", hour=7, timezone="America/New_York")
    p = digest.period_at(ny, T("2026-11-18T11:00:00Z"))  # 06:00 in New York: yesterday's period
    assert (p.start, p.end) == (T("2026-11-17T12:00:00Z"), T("2026-11-18T12:00:00Z"))
    assert digest.period_at(ny, T("2026-11-18T12:00:00Z")).start == T("2026-11-18T12:00:00Z")


def test_due_is_per_target_and_period() -> None:
    dc = _dc()
    a, b = Target("email", "a@example.com"), Target("slack", "C0TEAM")
    p = digest.period_at(dc, T("2026-11-16T10:00:00Z"))
    assert digest.due(p, [a, b], set()) == [a, b]
    assert digest.due(p, [a, b], {digest.digest_id(p, a)}) == [b]
    later = digest.period_at(dc, T("2026-11-20T10:00:00Z"))      # later in the same period: same ids
    assert digest.digest_id(later, a) == digest.digest_id(p, a)
    nxt = digest.period_at(dc, T("2026-11-23T09:00:00Z"))         # the next period: due again
    assert digest.due(nxt, [a], {digest.digest_id(p, a)}) == [a]


def test_config_names_a_bad_time_zone() -> None:
    with pytest.raises(ConfigError, match="timezone"):
        parse_config("alerting:\n  digest: {schedule: weekly, timezone: Mars/Olympus}\n")
    with pytest.raises(ConfigError, match="hour"):
        parse_config("alerting:\n  digest: {hour: 24}\n")
    cfg = parse_config("alerting:\n  digest: {schedule: daily, hour: 6, timezone: Asia/Tokyo}\n")
    assert cfg.alerting.digest is not None and cfg.alerting.digest.day == "monday"


# -------------------------------------------------------------------------------------------- figures


def _frame() -> pd.DataFrame:
    """Two weeks (Mon 2 Nov - Sun 15 Nov 2026) with known totals, plus a row after the window."""
    frame = []
    for d in pd.date_range("2026-11-02", "2026-11-16", freq="D", tz="UTC"):
        this = d >= T("2026-11-09T00:00:00Z")
        after = d >= T("2026-11-16T00:00:00Z")
        for pid, name, prov, svc, region, cost, cur in (
                ("p1", "Payments", "aws", "Compute", "us-east-1", 1000.0 if after else 20.0 if this else 10.0, "USD"),
                ("p1", "Payments", "aws", "Storage", "eu-west-1", 5.0, "USD"),
                ("p3", EVIL, "aws", "Network", "us-east-1", 4.0 if this else 8.0, "USD"),
                ("p2", "Shop", "gcp", "Compute", "europe-west1", 3.0 if this else 0.0, "EUR")):
            frame.append({"period_start": d, "provider": prov, "project_id": pid, "project_name": name,
                          "service": svc, "service_category": svc, "region": region, "charge_category": "Usage",
                          "resource_id": "", "billed_cost": cost, "effective_cost": cost, "currency": cur})
    return normalize_costs(pd.DataFrame(frame))


ROWS = [{"project": "p1", "project_name": "Payments", "currency": "USD", "month_to_date": 900.0, "forecast": 2574.0,
         "forecast_low": 2410.0, "forecast_high": 2730.0, "monthly_budget": 2000.0},
        {"project": "p3", "project_name": EVIL, "currency": "USD", "month_to_date": 90.0, "forecast": 180.0},
        {"project": "p2", "project_name": "Shop", "currency": "EUR", "month_to_date": 30.0, "forecast": 80.0,
         "monthly_budget": 100.0}]


def _config(tmp: Path, notify: dict[str, Any] | None = None, owners: dict[str, Any] | None = None) -> Config:
    return Config.model_validate({
        "projects": {"p1": {"owner": "team-a"}, "p3": {"owner": "team-a"}, "p2": {"owner": "team-b"}},
        "owners": owners or {"team-a": {"email": ["a@example.com"]}, "team-b": {"email": ["b@example.com"]}},
        "notify": notify or {"email": {"smtp_host": "127.0.0.1", "smtp_port": 25, "from_addr": "cw@example.com",
                                       "starttls": False, "timeout": 3}, "stdout": False},
        "alerting": {"digest": {"schedule": "weekly", "day": "monday", "hour": 9}},
        "state": {"path": str(tmp / "state.db")},
    })


NOW = T("2026-11-16T10:00:00Z")


def _by_target(notes: list[Any]) -> dict[str, Any]:
    return {n.target.key: n for n in notes}


def test_week_against_last_week_on_a_known_frame(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    notes = _by_target(digest.plan(_config(tmp_path), ROWS, _frame(), store, NOW, {}))
    assert set(notes) == {"email:a@example.com", "email:b@example.com"}
    a = digest.of(notes["email:a@example.com"])
    assert a["window"] == {"last_start": "2026-11-02T00:00:00Z", "this_start": "2026-11-09T00:00:00Z",
                           "end": "2026-11-16T00:00:00Z"}   # the 1000/day row after the scheduled time is not in it
    assert a["totals"] == [{"currency": "USD", "this": 203.0, "last": 161.0, "delta": 42.0, "pct": 0.2609}]
    spend = {p["project"]: p for p in a["projects"]}
    assert set(spend) == {"p1", "p3"}    # team-b's project is not in team-a's digest
    assert (spend["p1"]["this"], spend["p1"]["last"], spend["p1"]["pct"]) == (175.0, 105.0, 0.6667)
    assert (spend["p3"]["delta"], spend["p3"]["pct"]) == (-28.0, -0.5)
    svc = [(m["name"], m["delta"], m["pct"]) for m in a["movers"]["service"]]
    assert svc == [("Compute", 70.0, 1.0), ("Network", -28.0, -0.5)]   # by size of the move; Storage did not move
    assert [(m["name"], m["delta"]) for m in a["movers"]["region"]] == [("us-east-1", 42.0)]
    fc = {f["project"]: f for f in a["forecasts"]}
    assert fc["p1"]["share"] == 1.287 and fc["p1"]["forecast_low"] == 2410.0
    assert "2,574 USD (80 %: 2,410–2,730) vs budget 2,000 (129%) — over budget" in digest.text(a)
    b = digest.of(notes["email:b@example.com"])
    assert b["totals"] == [{"currency": "EUR", "this": 21.0, "last": 0.0, "delta": 21.0, "pct": None}]
    assert "Compute: 21.00 EUR vs 0.00 (+21.00, new)" in digest.text(b)


def test_owners_sharing_a_channel_get_one_digest(tmp_path: Path) -> None:
    cfg = _config(tmp_path, owners={"team-a": {"email": ["all@example.com"]}, "team-b": {"email": ["all@example.com"]}})
    [n] = digest.plan(cfg, ROWS, _frame(), SqliteStore(tmp_path / "s.db"), NOW, {})
    doc = digest.of(n)
    assert doc["owners"] == ["team-a", "team-b"] and {t["currency"] for t in doc["totals"]} == {"USD", "EUR"}


def test_open_incidents_acks_and_silences_are_listed(tmp_path: Path) -> None:
    from costwatch import silences

    store = SqliteStore(tmp_path / "state.db")
    alert = {"kind": "cost_spike", "severity": "high", "project": "p1", "project_name": "Payments"}
    store.put("incident", "g1", {"status": "open", "number": 1, "sequence": 2, "severity": "high",
                                 "opened_at": "2026-11-14T03:00:00Z", "alerts": [alert], "acked_by": "alice"},
              version=None)
    store.put("incident", "g2", {"status": "resolved", "alerts": [alert]}, version=None)
    store.put("incident", "g3", {"status": "open", "alerts": [{**alert, "project": "p2"}]}, version=None)
    silences.add(store, project="p3", until=NOW + pd.Timedelta(days=2), reason="load test", planned=True, now=NOW)
    silences.add(store, project="p2", until=NOW + pd.Timedelta(days=2), reason="not ours", now=NOW)
    notes = _by_target(digest.plan(_config(tmp_path), ROWS, _frame(), store, NOW, {}))
    a = digest.of(notes["email:a@example.com"])
    assert [(i["project_name"], i["state"], i["acked_by"], i["updates"]) for i in a["incidents"]] == [
        ("Payments", "acknowledged", "alice", 2)]
    assert [(s["project"], s["planned"]) for s in a["silences"]] == [("p3", True)]
    text = digest.text(a)
    assert "HIGH cost spike in Payments: acknowledged by alice" in text and "planned activity: p3" in text


def test_text_shows_hostile_names_inert(tmp_path: Path) -> None:
    notes = _by_target(digest.plan(_config(tmp_path), ROWS, _frame(), SqliteStore(tmp_path / "s.db"), NOW, {}))
    text = digest.text(digest.of(notes["email:a@example.com"]))
    assert "\u202e" not in text and "\\u202e" in text     # the bidi override is shown, not obeyed
    page = digest.html(digest.of(notes["email:a@example.com"]))
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "\u202e" not in page


# ---------------------------------------------------------------------------- once per period, for real


def test_once_per_period_across_retries_and_overlapping_runs(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    frame = _frame()
    with smtp_server.start(tls="none") as srv:
        assert cfg.notify.email is not None
        cfg.notify.email.smtp_port = srv.port
        mail = {"email": EmailNotifier(cfg.notify.email)}
        # two runs overlap: both read the store before either queued, so both decide "due" ...
        one, two = SqliteStore(tmp_path / "state.db"), SqliteStore(tmp_path / "state.db")
        first, second = (digest.plan(cfg, ROWS, frame, s, NOW, {}) for s in (one, two))
        assert [n.id for n in first] == [n.id for n in second] and len(first) == 2
        # ... and the outbox takes each once
        assert sum(outbox.enqueue(one, n, NOW) for n in first) == 2
        assert sum(outbox.enqueue(two, n, NOW) for n in second) == 0
        # the mail server is down: nothing is lost, nothing sent
        srv.stop()
        down = outbox.deliver(one, mail, NOW, sleep=lambda s: None)
        assert down.delivered == 0 and down.pending == 2
        srv.start()
        # both runs deliver later: each digest goes once
        later = NOW + pd.Timedelta(minutes=30)
        sent = outbox.deliver(one, mail, later, sleep=lambda s: None).delivered
        sent += outbox.deliver(two, mail, later, sleep=lambda s: None).delivered
        assert sent == 2 and len(srv.messages) == 2
        # a run later in the week (the scheduled hour long past) owes nothing more
        assert digest.plan(cfg, ROWS, frame, one, T("2026-11-19T18:00:00Z"), {}) == []
        # the next Monday is a new period
        nxt = digest.plan(cfg, ROWS, frame, one, T("2026-11-23T09:05:00Z"), {})
        assert len(nxt) == 2 and not {n.id for n in nxt} & {n.id for n in first}
    one.close()
    two.close()


def test_email_digest_uses_the_html_page(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    notes = _by_target(digest.plan(cfg, ROWS, _frame(), SqliteStore(tmp_path / "s.db"), NOW, {}))
    with smtp_server.start(tls="none") as srv:
        assert cfg.notify.email is not None
        cfg.notify.email.smtp_port = srv.port
        [d] = EmailNotifier(cfg.notify.email).notify([notes["email:a@example.com"]])
        assert d.ok, d.error
        [got] = srv.messages
    msg = got.message
    assert got.rcpt_tos == ["a@example.com"]
    assert str(msg["Subject"]).startswith("[costwatch] weekly cost digest, week of Mon 2026-11-16")
    assert str(msg["X-Costwatch-Event"]) == "weekly_digest"
    html_part, text_part = msg.get_body(("html",)), msg.get_body(("plain",))
    assert html_part is not None and text_part is not None
    page = html_part.get_content()
    assert 'http-equiv="Content-Security-Policy"' in page and "Top movers by service" in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "+70.00 (+100%)" in page   # Compute's move, in the same table cells as the report
    assert "Payments (aws): 175.00 USD vs 105.00 (+70.00, +67%)" in text_part.get_content()


def test_slack_digest_through_the_fake_slack_api(tmp_path: Path) -> None:
    with FakeSlack() as fake:
        cfg = _config(tmp_path, notify={"slack": {"token": fake.token, "channel": "C0ALERTS", "api_url": fake.api_url,
                                                  "timeout": 2}, "stdout": False},
                      owners={"team-a": {"slack_channel": "C0TEAM", "slack_mention": "U0OWNER"}})
        notes = _by_target(digest.plan(cfg, ROWS, _frame(), SqliteStore(tmp_path / "s.db"), NOW, {}))
        assert set(notes) == {"slack:C0TEAM", "slack:"}     # team-b has no channel of its own: notify's default
        notifier = SlackNotifier(token=fake.token, api_url=fake.api_url, channel="C0ALERTS", timeout=2)
        deliveries = notifier.notify(list(notes.values()))
        assert all(d.ok for d in deliveries), deliveries
        posts = {c.params["channel"]: c.params for c in fake.calls("chat.postMessage")}
    team = posts["C0TEAM"]
    assert check_blocks(team["blocks"]) == []
    raw = json.dumps(team)
    assert "<!channel>" not in raw and "<script>" not in raw and "<@U0OWNER>" not in raw   # nobody pinged
    assert "Payments (aws): 175.00 USD vs 105.00 (+70.00, +67%)" in raw
    assert team["metadata"]["event_payload"]["id"] == notes["slack:C0TEAM"].id   # crash recovery finds it


def test_stdout_renders_the_digest(tmp_path: Path) -> None:
    cfg = _config(tmp_path, notify={"stdout": True})
    [n] = digest.plan(cfg, ROWS, _frame(), SqliteStore(tmp_path / "s.db"), NOW, {})
    out = io.StringIO()
    StdoutNotifier(out).notify([n])
    text = out.getvalue()
    assert text.startswith("[costwatch] weekly cost digest") and "Top movers by region:" in text
    assert "\u202e" not in text


# ------------------------------------------------------------------------------------- costwatch run


@pytest.fixture(scope="module")
def scenario_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sc = generate(seed=3, n_projects=3, days=40, end="2026-11-20", incident_kinds=("benign_surge",))
    d = tmp_path_factory.mktemp("digest-data")
    to_focus(sc.costs).to_csv(d / "costs.csv", index=False)
    return d


@pytest.fixture
def run_cfg(scenario_dir: Path, tmp_path: Path) -> Iterator[Config]:
    doc = {"providers": [{"type": "files", "costs": str(scenario_dir / "costs.csv")}],
           "alerting": {"digest": {"schedule": "weekly", "day": "monday", "hour": 9, "timezone": "Europe/Paris"}},
           "notify": {"stdout": True}, "state": {"path": str(tmp_path / "state.db")}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
    yield load_config(tmp_path / "c.yaml")


def test_run_sends_the_digest_once_per_week(run_cfg: Config) -> None:
    out = io.StringIO()

    def run(at: str) -> None:
        run_once(run_cfg, now=T(at), as_of=T(at), notifiers={"stdout": StdoutNotifier(out)}, charts=False,
                 sleep=lambda s: None)

    run("2026-11-16T07:00:00Z")                  # Monday 08:00 in Paris: last week's digest (first run ever)
    run("2026-11-16T08:30:00Z")                  # 09:30 in Paris: this week's
    run("2026-11-16T08:30:00Z")                  # the same run retried
    run("2026-11-18T12:00:00Z")                  # Wednesday
    run("2026-11-19T23:00:00Z")
    text = out.getvalue()
    assert text.count("[costwatch] weekly cost digest") == 2, text
    assert "week of Mon 2026-11-09 09:00 Europe/Paris" in text and "week of Mon 2026-11-16 09:00 Europe/Paris" in text


def test_cli_digest_preview_and_send(run_cfg: Config, tmp_path: Path) -> None:
    runner = CliRunner()
    path = str(tmp_path / "c.yaml")
    preview = runner.invoke(cli, ["digest", "--config", path, "--dry-run", "--as-of", "2026-11-16T09:00:00Z"])
    assert preview.exit_code == 0, preview.output
    assert "Top movers by service" in preview.output and "--- to stdout:" in preview.output
    sent = runner.invoke(cli, ["digest", "--config", path, "--as-of", "2026-11-16T09:00:00Z"])
    assert sent.exit_code == 0 and "queued 1 digest(s); delivered 1" in sent.output, sent.output
    again = runner.invoke(cli, ["digest", "--config", path, "--as-of", "2026-11-16T10:00:00Z"])
    assert "already queued" in again.output


def test_teams_card_is_plain_text_within_its_size(tmp_path: Path) -> None:
    from costwatch.notifiers import teams

    cfg = _config(tmp_path, notify={"stdout": True})
    [n] = digest.plan(cfg, ROWS, _frame(), SqliteStore(tmp_path / "s.db"), NOW, {})
    card = teams.card(n)
    assert len(json.dumps(teams.message(card)).encode()) <= teams.MAX_CARD
    runs = [i["text"] for b in card["body"] if b["type"] == "RichTextBlock" for i in b["inlines"]]
    assert any(r == "Payments (aws): 175.00 USD vs 105.00 (+70.00, +67%)" for r in runs)
    markdown = [b["text"] for b in card["body"] if b["type"] == "TextBlock"]   # parsed by Teams: no data in it
    assert not any("script" in t or "evil" in t for t in markdown)
