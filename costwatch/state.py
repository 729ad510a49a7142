"""Alert state between runs: open incidents, the outbox of notifications, thread references and silences.

Everything sits behind one small interface, :class:`Store`: versioned JSON documents in named tables with
conditional writes.  That is all alert delivery needs (insert-if-absent makes enqueueing idempotent; a
version check makes "mark sending" a lease two overlapping runs cannot both win), and it maps one-to-one
onto SQLite (the default, a local file) and DynamoDB (serverless: ``ConditionExpression``, TTL), so both
backends are tested with the same behaviour suite.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError, CostwatchError

# feedback: owners' answers (costwatch.feedback); answer: Slack request ids already acted on (replays);
# cache: providers' fetched history, so a Lambda cold start does not refetch it (providers/aws/mirror.py)
TABLES = ("incident", "outbox", "thread", "silence", "lock", "feedback", "answer", "channel", "metrics", "cache")


class StateError(CostwatchError):
    """The state store cannot be read or written (file permissions, a missing DynamoDB table)."""


@dataclass
class Record:
    key: str
    version: int
    doc: dict[str, Any]


class Store(Protocol):
    def get(self, table: str, key: str) -> Record | None: ...

    def put(self, table: str, key: str, doc: dict[str, Any], *, version: int | None,
            expires_at: float | None = None) -> bool:
        """Write ``doc``.  ``version=None``: only if the key is absent; else only if the stored version is
        ``version``.  Returns False (and writes nothing) when that condition fails."""
        ...

    def scan(self, table: str) -> list[Record]: ...

    def delete(self, table: str, key: str) -> None: ...

    def close(self) -> None: ...


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ValueError(f"unknown state table {table!r}")


def sqlite_error(e: sqlite3.Error, where: object, when: str) -> StateError:
    """SQLite's own words plus what to do.  A run stopped by it loses nothing: the outbox is written before
    any send, so everything queued stays queued for the next run."""
    text = str(e)
    if "locked" in text or "busy" in text:
        hint = ("another process holds a write lock on it (a hung costwatch run, a backup, an open sqlite3 "
                "shell); the next run redoes this one")
    elif "readonly" in text or "read-only" in text:
        hint = ("the state file or its folder is read-only for this user: check the permissions of state.path; "
                "the next run that can write redoes this one")
    else:
        hint = "check state.path (disk full? permissions?); the next run redoes this one"
    return StateError(f"state: cannot use {where} {when}: {text}: {hint}")


class SqliteStore:
    """One file, WAL mode, one row per document.  Safe for the overlapping runs cron can produce on one
    machine: writes are conditional, and SQLite serializes them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS records (tbl TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL,"
                " doc TEXT NOT NULL, expires_at REAL, PRIMARY KEY (tbl, key))")
        except (OSError, sqlite3.Error) as e:
            raise StateError(f"state: cannot open {self.path}: {e}; check state.path and its permissions") from None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """SQLite's errors (locked by another process, read-only file, disk full) become one StateError that
        names the file and what to do, for every caller (run, silence, ack, outbox), not a traceback."""
        try:
            with self._lock:
                yield
        except sqlite3.Error as e:
            raise sqlite_error(e, self.path, what) from None

    def get(self, table: str, key: str) -> Record | None:
        _check_table(table)
        with self._guard(f"reading {table}"):
            row = self._db.execute("SELECT version, doc, expires_at FROM records WHERE tbl=? AND key=?",
                                   (table, key)).fetchone()
        if row is None or (row[2] is not None and row[2] < time.time()):
            return None
        return Record(key, int(row[0]), json.loads(row[1]))

    def put(self, table: str, key: str, doc: dict[str, Any], *, version: int | None,
            expires_at: float | None = None) -> bool:
        _check_table(table)
        raw = json.dumps(doc, sort_keys=True, default=str)
        with self._guard(f"writing {table}"):
            if version is None:
                # an expired row counts as absent, as DynamoDB's TTL would eventually make it
                self._db.execute("DELETE FROM records WHERE tbl=? AND key=? AND expires_at IS NOT NULL "
                                 "AND expires_at < ?", (table, key, time.time()))
                cur = self._db.execute("INSERT INTO records (tbl, key, version, doc, expires_at) VALUES "
                                       "(?, ?, 1, ?, ?) ON CONFLICT (tbl, key) DO NOTHING",
                                       (table, key, raw, expires_at))
            else:
                cur = self._db.execute("UPDATE records SET version=version+1, doc=?, expires_at=? "
                                       "WHERE tbl=? AND key=? AND version=?",
                                       (raw, expires_at, table, key, version))
        return cur.rowcount == 1

    def scan(self, table: str) -> list[Record]:
        _check_table(table)
        with self._guard(f"reading {table}"):
            rows = self._db.execute("SELECT key, version, doc FROM records WHERE tbl=? AND "
                                    "(expires_at IS NULL OR expires_at >= ?) ORDER BY key",
                                    (table, time.time())).fetchall()
        return [Record(k, int(v), json.loads(d)) for k, v, d in rows]

    def delete(self, table: str, key: str) -> None:
        _check_table(table)
        with self._guard(f"deleting from {table}"):
            self._db.execute("DELETE FROM records WHERE tbl=? AND key=?", (table, key))

    def close(self) -> None:
        self._db.close()


class DynamoStore:
    """A DynamoDB table with partition key ``tbl`` and sort key ``key`` (both strings), TTL on
    ``expires_at``.  Conditional puts give the same insert-if-absent and version-check semantics as
    SQLite; reads drop items past their TTL because DynamoDB deletes them only eventually."""

    def __init__(self, table_name: str, *, region: str | None = None, client: Any = None) -> None:
        if client is None:
            try:
                import boto3
            except ImportError:
                raise ConfigError("state.backend dynamodb needs boto3: pip install 'costwatch[aws]'") from None
            client = boto3.client("dynamodb", region_name=region)
        self.client = client
        self.table = table_name

    def _err(self, e: Exception, what: str) -> StateError:
        code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
        hint = {"ResourceNotFoundException": f"create the table {self.table!r} (see serverless.yml) or fix "
                                             "state.table",
                "AccessDeniedException": "grant dynamodb:GetItem, PutItem, DeleteItem and Query on the table"}
        return StateError(f"state: DynamoDB {what} on {self.table!r} failed ({code})"
                          + (f"; {hint[code]}" if code in hint else ""))

    def get(self, table: str, key: str) -> Record | None:
        _check_table(table)
        try:
            item = self.client.get_item(TableName=self.table, Key={"tbl": {"S": table}, "key": {"S": key}},
                                        ConsistentRead=True).get("Item")
        except Exception as e:
            raise self._err(e, "GetItem") from None
        return self._record(item) if item else None

    @staticmethod
    def _record(item: dict[str, Any]) -> Record | None:
        exp = item.get("expires_at", {}).get("N")
        if exp is not None and float(exp) < time.time():
            return None
        return Record(item["key"]["S"], int(item["version"]["N"]), json.loads(item["doc"]["S"]))

    def put(self, table: str, key: str, doc: dict[str, Any], *, version: int | None,
            expires_at: float | None = None) -> bool:
        _check_table(table)
        item: dict[str, Any] = {"tbl": {"S": table}, "key": {"S": key},
                                "version": {"N": str(1 if version is None else version + 1)},
                                "doc": {"S": json.dumps(doc, sort_keys=True, default=str)}}
        if expires_at is not None:
            item["expires_at"] = {"N": str(int(expires_at))}
        if version is None:
            cond = "attribute_not_exists(#k) OR (attribute_exists(expires_at) AND expires_at < :now)"
            values = {":now": {"N": str(int(time.time()))}}
            names = {"#k": "key"}
        else:
            cond, values, names = "#v = :v", {":v": {"N": str(version)}}, {"#v": "version"}
        try:
            self.client.put_item(TableName=self.table, Item=item, ConditionExpression=cond,
                                 ExpressionAttributeNames=names, ExpressionAttributeValues=values)
        except Exception as e:
            if getattr(e, "response", {}).get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise self._err(e, "PutItem") from None
        return True

    def scan(self, table: str) -> list[Record]:
        _check_table(table)
        out: list[Record] = []
        params: dict[str, Any] = {"TableName": self.table, "KeyConditionExpression": "tbl = :t",
                                  "ExpressionAttributeValues": {":t": {"S": table}}, "ConsistentRead": True}
        try:
            while True:
                page = self.client.query(**params)
                out += [r for r in (self._record(i) for i in page.get("Items", [])) if r is not None]
                if not page.get("LastEvaluatedKey"):
                    return out
                params["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        except StateError:
            raise
        except Exception as e:
            raise self._err(e, "Query") from None

    def delete(self, table: str, key: str) -> None:
        _check_table(table)
        try:
            self.client.delete_item(TableName=self.table, Key={"tbl": {"S": table}, "key": {"S": key}})
        except Exception as e:
            raise self._err(e, "DeleteItem") from None

    def close(self) -> None:
        pass


def create_dynamodb_table(client: Any, name: str) -> None:
    """The table layout DynamoStore expects (on-demand billing, TTL on ``expires_at``); serverless.yml
    declares the same."""
    client.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "tbl", "KeyType": "HASH"}, {"AttributeName": "key", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "tbl", "AttributeType": "S"},
                              {"AttributeName": "key", "AttributeType": "S"}])
    client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    client.update_time_to_live(TableName=name, TimeToLiveSpecification={"Enabled": True,
                                                                        "AttributeName": "expires_at"})


def open_store(state_cfg: Any) -> Store:
    """The configured backend (``state:`` in the config)."""
    if state_cfg.backend == "dynamodb":
        return DynamoStore(state_cfg.table, region=state_cfg.region)
    return SqliteStore(state_cfg.path)


__all__ = ["TABLES", "DynamoStore", "Record", "SqliteStore", "StateError", "Store", "create_dynamodb_table",
           "open_store", "sqlite_error"]
