"""The state store's behaviour, the same suite against SQLite and DynamoDB (moto, in process and over real
HTTP with ThreadedMotoServer): insert-if-absent, version-checked updates, scans, TTL, and two writers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from costwatch.state import DynamoStore, SqliteStore, StateError, Store, create_dynamodb_table


@pytest.fixture(params=["sqlite", "dynamodb", "dynamodb-http"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "state" / "state.db")
        yield s
        s.close()
        return
    pytest.importorskip("moto")
    import boto3

    request.getfixturevalue("aws_env")
    if request.param == "dynamodb":
        from moto import mock_aws

        with mock_aws():
            client = boto3.client("dynamodb", region_name="us-east-1")
            create_dynamodb_table(client, "costwatch-state")
            yield DynamoStore("costwatch-state", client=client)
        return
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        client = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=f"http://{host}:{port}")
        create_dynamodb_table(client, "costwatch-state")
        yield DynamoStore("costwatch-state", client=client)
    finally:
        server.stop()


def test_insert_only_once(store: Store) -> None:
    assert store.put("outbox", "n1", {"a": 1}, version=None)
    assert not store.put("outbox", "n1", {"a": 2}, version=None)  # a retried run queues nothing twice
    rec = store.get("outbox", "n1")
    assert rec is not None and rec.doc == {"a": 1} and rec.version == 1


def test_version_checked_update(store: Store) -> None:
    store.put("incident", "g", {"status": "open"}, version=None)
    rec = store.get("incident", "g")
    assert rec is not None
    assert store.put("incident", "g", {"status": "resolved"}, version=rec.version)
    assert not store.put("incident", "g", {"status": "open"}, version=rec.version)  # stale writer loses
    again = store.get("incident", "g")
    assert again is not None and again.doc["status"] == "resolved" and again.version == rec.version + 1


def test_tables_are_separate_and_scanned_whole(store: Store) -> None:
    for i in range(30):
        store.put("outbox", f"n{i:02d}", {"i": i, "text": "x" * 2000}, version=None)
    store.put("silence", "n00", {"other": True}, version=None)
    got = store.scan("outbox")
    assert sorted(r.doc["i"] for r in got) == list(range(30))
    assert [r.doc for r in store.scan("silence")] == [{"other": True}]
    store.delete("outbox", "n00")
    assert store.get("outbox", "n00") is None and len(store.scan("outbox")) == 29
    with pytest.raises(ValueError):
        store.get("nope", "x")


def test_expired_documents_are_gone(store: Store) -> None:
    store.put("silence", "old", {"x": 1}, version=None, expires_at=time.time() - 10)
    store.put("silence", "new", {"x": 2}, version=None, expires_at=time.time() + 3600)
    assert store.get("silence", "old") is None
    assert [r.key for r in store.scan("silence")] == ["new"]
    # an expired key can be inserted again (DynamoDB deletes expired items only eventually)
    assert store.put("silence", "old", {"x": 3}, version=None)
    got = store.get("silence", "old")
    assert got is not None and got.doc == {"x": 3}


def test_two_writers_one_winner(store: Store) -> None:
    store.put("outbox", "n", {"status": "pending"}, version=None)
    rec = store.get("outbox", "n")
    assert rec is not None
    wins: list[bool] = []

    def claim() -> None:
        wins.append(store.put("outbox", "n", {"status": "sending"}, version=rec.version))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 5 + [True]


def test_unusable_sqlite_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StateError, match=r"state: cannot open .*state.path"):
        SqliteStore(blocker / "state.db")


def test_sqlite_failures_after_open_are_state_errors_for_every_command(tmp_path: Path) -> None:
    """Another process breaks the file under a running store (here: its table dropped, as a restore of an
    old backup would): reads, writes and the CLI answer with one StateError naming the file, never a
    sqlite3 traceback."""
    import sqlite3

    from click.testing import CliRunner

    from costwatch.cli import cli

    path = tmp_path / "state.db"
    store = SqliteStore(path)
    assert store.put("silence", "s1", {"a": 1}, version=None)
    other = sqlite3.connect(path)
    other.execute("DROP TABLE records")
    other.commit()
    other.close()
    for call in (lambda: store.get("silence", "s1"), lambda: store.scan("outbox"),
                 lambda: store.put("outbox", "k", {}, version=None), lambda: store.delete("thread", "k")):
        with pytest.raises(StateError, match=r"state: cannot use .*state\.db .*no such table"):
            call()
    store.close()
    cfg = tmp_path / "costwatch.yaml"
    cfg.write_text(f"state: {{path: {path}}}\n")
    res = CliRunner().invoke(cli, ["outbox", "--config", str(cfg)])
    assert res.exit_code == 0, res.output  # the next open re-creates the table: an empty outbox, not a crash
    path.write_bytes(b"this is not a database" * 100)
    res = CliRunner().invoke(cli, ["silences", "--config", str(cfg)])
    assert res.exit_code == 2 and "state: cannot open" in res.output and "Traceback" not in res.output


def test_missing_dynamodb_table_says_what_to_do(aws_env: Any) -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        s = DynamoStore("nope", client=boto3.client("dynamodb", region_name="us-east-1"))
        with pytest.raises(StateError, match="create the table 'nope'"):
            s.scan("outbox")


def test_planned_marks_outlive_their_end_for_detection(tmp_path: Path) -> None:
    """Issue 16: a level accepted as planned stays accepted after the mark ends (detect(planned=...)); a
    plain silence is gone from both lists once it ends."""
    import pandas as pd

    from costwatch import silences

    st = SqliteStore(tmp_path / "s.db")
    now = pd.Timestamp("2026-11-01T00:00:00Z")
    silences.add(st, project="p1", until=now + pd.Timedelta(days=2), reason="new replica", planned=True, now=now)
    silences.add(st, project="p2", until=now + pd.Timedelta(days=2), reason="known", now=now)
    later = now + pd.Timedelta(days=10)
    assert silences.active(st, later) == []
    assert [s.project for s in silences.planned(st)] == ["p1"]
