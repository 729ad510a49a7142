"""``costwatch run`` over a labelled scenario replayed hour by hour: one message per incident, updates
when it grows, repeats only after repeat_interval, "resolved" once, silences, retries after a failed send,
and a crash between send and mark that neither loses nor duplicates.  Data goes through the real files
provider and the real SQLite state; the notifier stand-ins implement the notifier protocol."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from costwatch import outbox, silences
from costwatch.config import Config, load_config
from costwatch.demo import to_focus
from costwatch.notifiers.stdout import StdoutNotifier
from costwatch.notify import Delivery, Notification
from costwatch.run import run_once
from costwatch.scenarios import Scenario, generate
from costwatch.state import SqliteStore

H = pd.Timedelta(hours=1)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, Path]:
    # seed 10: a GCP miner that runs 11-12 14:00 .. 11-16 00:00, then four clean days
    sc = generate(seed=10, n_projects=4, days=50, incident_kinds=("mining_new_nodes",))
    d = tmp_path_factory.mktemp("run-data")
    to_focus(sc.costs).to_csv(d / "costs.csv", index=False)
    u = sc.usage.copy()
    u["timestamp"] = u["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    u.to_csv(d / "usage.csv", index=False)
    return sc, d


def _cfg(data: Path, tmp: Path, **alerting: Any) -> Config:
    doc = {"providers": [{"type": "files", "costs": str(data / "costs.csv"), "usage": str(data / "usage.csv")}],
           "state": {"path": str(tmp / "state.db")}, "alerting": {"repeat_interval": "4h", **alerting}}
    (tmp / "c.yaml").write_text(yaml.safe_dump(doc))
    return load_config(tmp / "c.yaml")


def _gcp_incident(sc: Scenario) -> pd.Series:
    return sc.incidents[sc.incidents["provider"] == "gcp"].iloc[0]


def _items(tmp: Path) -> list[dict[str, Any]]:
    store = SqliteStore(tmp / "state.db")
    try:
        return outbox.items(store)
    finally:
        store.close()


def _for(items: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return sorted((i for i in items if name in i["title"]), key=lambda i: i["created_at"])


class Flaky:
    """A service that is down for the first ``down`` calls, then up; records what it accepted."""

    name = "stdout"

    def __init__(self, down: int = 0, crash_on: int | None = None, retry_after: float | None = 120) -> None:
        self.down, self.calls, self.crash_on, self.retry_after = down, 0, crash_on, retry_after
        self.accepted: list[Notification] = []

    def notify(self, notifications: list[Notification]) -> list[Delivery]:
        out = []
        for n in notifications:
            self.calls += 1
            if self.calls <= self.down:
                out.append(Delivery(ok=False, retry_after=self.retry_after, error="503 service unavailable"))
                continue
            self.accepted.append(n)
            if self.crash_on == self.calls:
                raise KeyboardInterrupt("killed between send and mark")
            out.append(Delivery(ok=True, ref=f"ref-{n.id}"))
        return out

    def find_delivered(self, n: Notification) -> Delivery | None:
        return Delivery(ok=True, ref=f"ref-{n.id}") if any(a.id == n.id for a in self.accepted) else None


def test_incident_lifecycle(scenario: tuple[Scenario, Path], tmp_path: Path) -> None:
    sc, data = scenario
    inc = _gcp_incident(sc)
    name = str(sc.projects.set_index("project_id").loc[inc.project_id, "project_name"])
    cfg = _cfg(data, tmp_path)
    out = io.StringIO()
    notifier = {"stdout": StdoutNotifier(out)}

    def run(t: pd.Timestamp) -> Any:
        return run_once(cfg, now=t, as_of=t, notifiers=notifier, charts=False)

    run(inc.start - H)
    assert _for(_items(tmp_path), name) == []
    first = run(inc.start + 3 * H)
    fired = _for(_items(tmp_path), name)
    assert [i["event"] for i in fired] == ["firing"] and fired[0]["status"] == "delivered"
    assert "mining suspected" in fired[0]["title"] and first.delivery.delivered >= 1
    # the same run again (a retried cron job): nothing new queued or sent
    again = run(inc.start + 3 * H)
    assert again.queued == 0 and again.delivery.delivered == 0
    assert len(_for(_items(tmp_path), name)) == 1
    # an hour later, same incident: only an update if it grew, never a plain repeat inside 4h
    run(inc.start + 4 * H)
    events = [i["event"] for i in _for(_items(tmp_path), name)]
    assert "repeat" not in events
    # hours later: a repeat or update keeps it visible, under the same incident
    run(inc.start + 12 * H)
    events = [i["event"] for i in _for(_items(tmp_path), name)]
    assert events[0] == "firing" and set(events[1:]) <= {"updated", "repeat"} and len(events) >= 2
    # days after the miner stopped and clean data came in: resolved, once
    run(inc.end + pd.Timedelta(days=3))
    run(inc.end + pd.Timedelta(days=3, hours=1))
    events = [i["event"] for i in _for(_items(tmp_path), name)]
    assert events.count("resolved") == 1 and events[-1] == "resolved"
    assert "resolved: mining suspected in " + name in out.getvalue()


def test_missing_data_is_not_a_recovery(scenario: tuple[Scenario, Path], tmp_path: Path) -> None:
    sc, data = scenario
    other = sc.incidents[sc.incidents["end"] == sc.end].iloc[0]  # runs to the end of the data
    name = str(sc.projects.set_index("project_id").loc[other.project_id, "project_name"])
    cfg = _cfg(data, tmp_path)
    notifier = {"stdout": StdoutNotifier(io.StringIO())}
    run_once(cfg, now=sc.end - H, as_of=sc.end - H, notifiers=notifier, charts=False)
    later = sc.end + pd.Timedelta(days=3)  # no data after sc.end: a gap, not an all-clear
    run_once(cfg, now=later, as_of=later, notifiers=notifier, charts=False)
    events = [i["event"] for i in _for(_items(tmp_path), name)]
    assert events and "resolved" not in events


def test_silence_then_unsilence(scenario: tuple[Scenario, Path], tmp_path: Path) -> None:
    sc, data = scenario
    inc = _gcp_incident(sc)
    name = str(sc.projects.set_index("project_id").loc[inc.project_id, "project_name"])
    cfg = _cfg(data, tmp_path)
    t = inc.start + 3 * H
    store = SqliteStore(tmp_path / "state.db")
    s = silences.add(store, project=name, until=t + pd.Timedelta(days=1), reason="load test", planned=True, now=t)
    store.close()
    res = run_once(cfg, now=t, as_of=t, notifiers={"stdout": StdoutNotifier(io.StringIO())}, charts=False)
    assert res.silenced >= 1 and _for(_items(tmp_path), name) == []
    store = SqliteStore(tmp_path / "state.db")
    assert silences.remove(store, s.id)
    store.close()
    run_once(cfg, now=t + H, as_of=t + H, notifiers={"stdout": StdoutNotifier(io.StringIO())}, charts=False)
    assert [i["event"] for i in _for(_items(tmp_path), name)] == ["firing"]


def test_failed_send_is_kept_and_retried(scenario: tuple[Scenario, Path], tmp_path: Path) -> None:
    sc, data = scenario
    inc = _gcp_incident(sc)
    cfg = _cfg(data, tmp_path)
    flaky = Flaky(down=10)
    t = inc.start + 3 * H
    res = run_once(cfg, now=t, as_of=t, notifiers={"stdout": flaky}, charts=False, sleep=lambda s: None)
    assert res.delivery.delivered == 0 and res.delivery.pending >= 1 and res.exit_code == 0
    assert "503 service unavailable" in " ".join(res.delivery.errors)
    # the service asked for 120 s: a run one minute later leaves it alone
    res = run_once(cfg, now=t + pd.Timedelta(minutes=1), as_of=t, notifiers={"stdout": flaky}, charts=False)
    assert res.delivery.delivered == 0
    flaky.down = 0
    res = run_once(cfg, now=t + H, as_of=t, notifiers={"stdout": flaky}, charts=False)
    assert res.delivery.delivered >= 1 and res.delivery.pending == 0
    assert len({n.id for n in flaky.accepted}) == len(flaky.accepted)  # nothing twice


def test_stuck_notification_fails_the_run(scenario: tuple[Scenario, Path], tmp_path: Path) -> None:
    sc, data = scenario
    inc = _gcp_incident(sc)
    cfg = _cfg(data, tmp_path, stuck_after="2h")
    t = inc.start + 3 * H
    flaky = Flaky(down=10_000)
    run_once(cfg, now=t, as_of=t, notifiers={"stdout": flaky}, charts=False, sleep=lambda s: None)
    res = run_once(cfg, now=t + 3 * H, as_of=t, notifiers={"stdout": flaky}, charts=False, sleep=lambda s: None)
    assert res.delivery.stuck >= 1 and res.exit_code == 1
    assert any("stuck" in line for line in res.lines())


def test_crash_between_send_and_mark(scenario: tuple[Scenario, Path], tmp_path: Path) -> None:
    sc, data = scenario
    inc = _gcp_incident(sc)
    cfg = _cfg(data, tmp_path)
    t = inc.start + 3 * H
    svc = Flaky(crash_on=1)
    with pytest.raises(KeyboardInterrupt):
        run_once(cfg, now=t, as_of=t, notifiers={"stdout": svc}, charts=False)
    assert [i["status"] for i in _items(tmp_path)] == ["sending"] and len(svc.accepted) == 1
    # a run inside the lease leaves it to the (possibly still living) sender
    run_once(cfg, now=t + pd.Timedelta(minutes=2), as_of=t, notifiers={"stdout": svc}, charts=False)
    assert len(svc.accepted) == 1
    # after the lease: the service already has it, so it is marked delivered, not sent again
    res = run_once(cfg, now=t + pd.Timedelta(minutes=15), as_of=t, notifiers={"stdout": svc}, charts=False)
    assert len(svc.accepted) == 1 and res.delivery.delivered == 1
    assert [i["status"] for i in _items(tmp_path)] == ["delivered"]


def test_crash_before_the_send_is_not_lost(scenario: tuple[Scenario, Path], tmp_path: Path) -> None:
    """Killed after queueing, before any send: the next run sends it."""
    sc, data = scenario
    inc = _gcp_incident(sc)
    cfg = _cfg(data, tmp_path)
    t = inc.start + 3 * H

    class Dead:
        name = "stdout"

        def notify(self, notifications: list[Notification]) -> list[Delivery]:
            raise KeyboardInterrupt("killed before the send")

    with pytest.raises(KeyboardInterrupt):
        run_once(cfg, now=t, as_of=t, notifiers={"stdout": Dead()}, charts=False)
    svc = Flaky()
    run_once(cfg, now=t + pd.Timedelta(minutes=20), as_of=t, notifiers={"stdout": svc}, charts=False)
    assert len(svc.accepted) == 1 and [i["status"] for i in _items(tmp_path)] == ["delivered"]


def test_cli_run_silence_outbox(scenario: tuple[Scenario, Path], tmp_path: Path) -> None:
    """The commands an owner types: run, silence (shown in the report), silences, unsilence, outbox."""
    from click.testing import CliRunner

    from costwatch.cli import cli

    sc, data = scenario
    inc = _gcp_incident(sc)
    name = str(sc.projects.set_index("project_id").loc[inc.project_id, "project_name"])
    _cfg(data, tmp_path)
    conf = str(tmp_path / "c.yaml")
    t = (inc.start + 3 * H).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = CliRunner().invoke(cli, ["run", "--config", conf, "--as-of", t, "--no-charts"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert f"mining suspected in {name}" in r.stdout and "delivered" in r.stderr
    r = CliRunner().invoke(cli, ["outbox", "--config", conf, "--all"], catch_exceptions=False)
    assert "delivered" in r.output and "firing" in r.output
    r = CliRunner().invoke(cli, ["silence", "--config", conf, "--project", name, "--for", "2d",
                                 "--reason", "planned load test", "--planned"], catch_exceptions=False)
    assert r.exit_code == 0 and "planned activity" in r.output
    sid = r.output.split()[2].rstrip(":")
    r = CliRunner().invoke(cli, ["silences", "--config", conf], catch_exceptions=False)
    assert sid in r.output and "planned load test" in r.output
    r = CliRunner().invoke(cli, ["report", "--config", conf, "--as-of", t, "--since", "2d", "--format", "json"],
                           catch_exceptions=False)
    import json

    rep = json.loads(r.stdout)
    assert any(a["evidence"].get("silence", {}).get("id") == sid for a in rep["alerts"] if a["project_name"] == name)
    assert any(sid in n for n in rep["notes"])
    r = CliRunner().invoke(cli, ["unsilence", sid, "--config", conf], catch_exceptions=False)
    assert r.exit_code == 0
    r = CliRunner().invoke(cli, ["unsilence", sid, "--config", conf], catch_exceptions=False)
    assert r.exit_code == 2 and "no silence" in r.output
    r = CliRunner().invoke(cli, ["silence", "--config", conf, "--project", name, "--reason", "x"],
                           catch_exceptions=False)
    assert r.exit_code == 2 and "exactly one of --until" in r.output


def test_overlapping_runs_take_turns(scenario: tuple[Scenario, Path], tmp_path: Path) -> None:
    from costwatch.run import RunLocked, acquire_lock, release_lock

    sc, data = scenario
    cfg = _cfg(data, tmp_path)
    t = _gcp_incident(sc).start + 3 * H
    store = SqliteStore(tmp_path / "state.db")
    assert acquire_lock(store, "other-run")
    with pytest.raises(RunLocked, match="another costwatch run holds the state lock"):
        run_once(cfg, now=t, as_of=t, notifiers={"stdout": StdoutNotifier(io.StringIO())}, charts=False,
                 lock_owner="this-run")
    assert _items(tmp_path) == []  # the locked-out run did nothing
    release_lock(store, "this-run")  # not ours: stays
    assert not acquire_lock(store, "third")
    release_lock(store, "other-run")
    # a crashed run's lock lapses by itself
    assert acquire_lock(store, "crashed", seconds=-1)
    store.close()
    res = run_once(cfg, now=t, as_of=t, notifiers={"stdout": StdoutNotifier(io.StringIO())}, charts=False,
                   lock_owner="this-run")
    assert res.delivery.delivered >= 1
    store = SqliteStore(tmp_path / "state.db")
    assert store.get("lock", "run") is None  # released at the end
    store.close()


def test_acknowledged_incident_is_not_repeated(scenario: tuple[Scenario, Path], tmp_path: Path) -> None:
    from costwatch.incidents import acknowledge

    sc, data = scenario
    inc = _gcp_incident(sc)
    name = str(sc.projects.set_index("project_id").loc[inc.project_id, "project_name"])
    cfg = _cfg(data, tmp_path, repeat_interval="1h", growth_factor=100.0)
    t = inc.start + 3 * H

    def run(at: pd.Timestamp) -> None:
        run_once(cfg, now=at, as_of=at, notifiers={"stdout": StdoutNotifier(io.StringIO())}, charts=False)

    run(t)
    store = SqliteStore(tmp_path / "state.db")
    assert acknowledge(store, name, "alice", t) == [f"mining_suspected in {name}"]
    assert acknowledge(store, "no-such-project", "alice", t) == []
    store.close()
    for k in range(1, 6):
        run(t + k * H)
    events = [i["event"] for i in _for(_items(tmp_path), name)]
    assert "repeat" not in events and events[0] == "firing"


def test_same_lifecycle_on_dynamodb(scenario: tuple[Scenario, Path], tmp_path: Path, aws_env: None) -> None:
    """The serverless state backend gives the same guarantees: one firing, no duplicate on a retried
    run, a failed send kept and retried, resolved once."""
    boto3 = pytest.importorskip("boto3")
    from moto import mock_aws

    from costwatch.state import DynamoStore, create_dynamodb_table

    sc, data = scenario
    inc = _gcp_incident(sc)
    name = str(sc.projects.set_index("project_id").loc[inc.project_id, "project_name"])
    cfg = _cfg(data, tmp_path)
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_dynamodb_table(client, "cw")
        store = DynamoStore("cw", client=client)
        flaky = Flaky(down=1, retry_after=2)
        waits: list[float] = []

        def run(at: pd.Timestamp) -> Any:
            return run_once(cfg, now=at, as_of=at, notifiers={"stdout": flaky}, charts=False, store=store,
                            sleep=waits.append, lock_owner="lambda-req-1")

        t = inc.start + 3 * H
        first = run(t)
        # one 503 asking for 2 s: waited for and retried within the run
        assert first.delivery.pending == 0 and first.delivery.delivered >= 1 and waits == [2]
        assert run(t).queued == 0
        run(inc.end + pd.Timedelta(days=3))
        mine = [i for i in outbox.items(store) if name in i["title"]]
        assert sorted(i["event"] for i in mine).count("firing") == 1
        assert [i["event"] for i in mine].count("resolved") == 1
        assert all(i["status"] == "delivered" for i in mine)
        assert len({n.id for n in flaky.accepted}) == len(flaky.accepted)
