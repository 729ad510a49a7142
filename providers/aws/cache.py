"""SQLite cache of Cost Explorer days and account metadata, so an hourly run asks AWS only for what changed.

Cost Explorer bills per request and revises only the last few days, so a day fetched once is kept here and
re-fetched only while it is recent enough to still move (``restate_days``).  Rows are stored per
(scope, query kind, metric, granularity, day); ``ce_days`` remembers which days were fetched even when they
had no rows, so an empty day is not asked for again.  ``scope`` is the provider name, keeping two
organizations apart in one file.

Hourly CPU is cached the same way (``nodes``, ``cpu_hours``, ``cpu_progress``): each (account, region) remembers
up to which hour it was read, so an hourly run asks CloudWatch only for the hours since (plus a small overlap
for late datapoints), and a run cut short by its time budget leaves the (account, region) pairs it did not
reach behind, to be read first by the next run.  Instance metadata stays after the instance is gone
(terminated instances drop out of DescribeInstances after about an hour), so its CPU keeps its labels.
Samples are stored as they arrive (per GetMetricData page) and read back column-wise, never as one Python
object per sample for the whole organization.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from costwatch.providers._daycache import SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS ce_days (
    scope TEXT NOT NULL, kind TEXT NOT NULL, metric TEXT NOT NULL, granularity TEXT NOT NULL,
    day TEXT NOT NULL, estimated INTEGER NOT NULL, fetched_at TEXT NOT NULL,
    PRIMARY KEY (scope, kind, metric, granularity, day)
);
CREATE TABLE IF NOT EXISTS ce_rows (
    scope TEXT NOT NULL, kind TEXT NOT NULL, metric TEXT NOT NULL, granularity TEXT NOT NULL,
    day TEXT NOT NULL, account TEXT NOT NULL, key TEXT NOT NULL, amount REAL NOT NULL, unit TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ce_rows_day ON ce_rows (scope, kind, metric, granularity, day);
CREATE TABLE IF NOT EXISTS ce_stage (
    scope TEXT NOT NULL, kind TEXT NOT NULL, metric TEXT NOT NULL, granularity TEXT NOT NULL,
    day TEXT NOT NULL, account TEXT NOT NULL, key TEXT NOT NULL, amount REAL NOT NULL, unit TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (scope TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    fetched_at TEXT NOT NULL, PRIMARY KEY (scope, key));
CREATE TABLE IF NOT EXISTS nodes (nid INTEGER PRIMARY KEY, scope TEXT NOT NULL, instance_id TEXT NOT NULL,
    owner TEXT NOT NULL, region TEXT NOT NULL, account TEXT NOT NULL, instance_type TEXT, launch_time TEXT,
    state TEXT, cluster TEXT, nodegroup TEXT, name TEXT, last_seen INTEGER NOT NULL, UNIQUE (scope, instance_id));
CREATE INDEX IF NOT EXISTS nodes_unit ON nodes (scope, owner, region);
CREATE TABLE IF NOT EXISTS cpu_hours (nid INTEGER NOT NULL, hour INTEGER NOT NULL, avg REAL, max REAL,
    PRIMARY KEY (nid, hour)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cpu_progress (scope TEXT NOT NULL, owner TEXT NOT NULL, region TEXT NOT NULL,
    since INTEGER NOT NULL, until INTEGER NOT NULL, PRIMARY KEY (scope, owner, region));
"""

NODE_FIELDS = ("instance_id", "account", "instance_type", "launch_time", "state", "cluster", "nodegroup", "name")
READ_CHUNK = 200_000
DAY_S = 86_400
_PUT_CPU = {stat: f"INSERT INTO cpu_hours (nid, hour, {stat}) VALUES (?,?,?) "  # noqa: S608 (two fixed names)
                  f"ON CONFLICT (nid, hour) DO UPDATE SET {stat}=excluded.{stat}" for stat in ("avg", "max")}
_NODES = "SELECT nid, owner, region, last_seen, " + ", ".join(NODE_FIELDS) + " FROM nodes WHERE scope=?"  # noqa: S608
# an instance's labels in the state-store copy: instance_id, owner, region, last_seen, then the other fields
_LABELS = ("SELECT nid, instance_id, owner, region, last_seen, "  # noqa: S608 (fixed column names)
           + ", ".join(NODE_FIELDS[1:]) + " FROM nodes WHERE scope=?")
_PUT_LABELS = ("INSERT INTO nodes (scope, instance_id, owner, region, last_seen, "  # noqa: S608
               + ", ".join(NODE_FIELDS[1:]) + ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (scope, instance_id) "
               "DO UPDATE SET last_seen=MAX(last_seen, excluded.last_seen)")

# (day, account, key, amount, unit)
Row = tuple[str, str, str, float, str]


class Codes:
    """String columns as int32 codes into one list of distinct values per column (shared by the two Cost
    Explorer query kinds, so their day and account codes can be joined directly)."""

    def __init__(self) -> None:
        self._maps: dict[str, dict[str, int]] = {}

    def map(self, column: str) -> dict[str, int]:
        return self._maps.setdefault(column, {})

    def values(self, column: str) -> np.ndarray:
        """The distinct values of ``column`` as an object array: ``values(c)[codes]`` is the column."""
        m = self.map(column)
        out = np.empty(len(m), dtype=object)
        out[list(m.values())] = list(m.keys())
        return out


class Cache(SqliteFile):
    SCHEMA = SCHEMA

    def __init__(self, path: Any, scope: str) -> None:
        super().__init__(path, scope)
        self._write = threading.Lock()  # one writer at a time: workers store while others fetch
        # what this process changed, for the copy in the state store (``mirror``)
        self._dirty: dict[str, set[Any]] = {"cpu": set(), "ce": set(), "progress": set(), "kv": set()}
        with super()._connect() as db:
            # readers do not block the writer, nor the writer them; see _connect for durability
            db.execute("PRAGMA journal_mode=WAL")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """No fsync per transaction: a scan stores each (account, region) and GetMetricData page as it
        arrives, thousands of small transactions a run, and waiting for the disk each time made the scan
        disk-bound (a cache lost with the machine costs a refetch, nothing else)."""
        with super()._connect() as db:
            db.execute("PRAGMA synchronous=OFF")
            yield db

    def fetched_days(self, kind: str, metric: str, granularity: str) -> dict[str, bool]:
        """Days already fetched -> whether AWS marked them estimated."""
        with self._connect() as db:
            cur = db.execute("SELECT day, estimated FROM ce_days WHERE scope=? AND kind=? AND metric=? "
                             "AND granularity=?", (self.scope, kind, metric, granularity))
            return {d: bool(e) for d, e in cur.fetchall()}

    def fetched_at(self, kind: str, metric: str, granularity: str) -> dict[str, str]:
        """Days already fetched -> when (ISO time): the stalest restating day is read again first."""
        with self._connect() as db:
            cur = db.execute("SELECT day, fetched_at FROM ce_days WHERE scope=? AND kind=? AND metric=? "
                             "AND granularity=?", (self.scope, kind, metric, granularity))
            return dict(cur.fetchall())

    def stage(self, kind: str, metric: str, granularity: str, rows: Iterable[Row], *, first: bool) -> None:
        """One Cost Explorer page's rows, put aside on disk until the query's last page (``first`` clears
        what an interrupted query left): a backfill never holds its whole answer in memory."""
        key = (self.scope, kind, metric, granularity)
        with self._write, self._connect() as db:
            if first:
                db.execute("DELETE FROM ce_stage WHERE scope=? AND kind=? AND metric=? AND granularity=?", key)
            db.executemany("INSERT INTO ce_stage VALUES (?,?,?,?,?,?,?,?,?)", [(*key, *r) for r in rows])

    def store(self, kind: str, metric: str, granularity: str, days: dict[str, bool], fetched_at: str) -> None:
        """Replace the given days (with their estimated flags) by the staged rows, in one transaction; a group
        that came twice is summed."""
        key = (self.scope, kind, metric, granularity)
        with self._write, self._connect() as db:
            db.executemany("DELETE FROM ce_rows WHERE scope=? AND kind=? AND metric=? AND granularity=? "
                           "AND day=?", [(*key, d) for d in days])
            db.executemany("INSERT OR REPLACE INTO ce_days VALUES (?,?,?,?,?,?,?)",
                           [(*key, d, int(e), fetched_at) for d, e in days.items()])
            db.execute("INSERT INTO ce_rows SELECT scope, kind, metric, granularity, day, account, key, SUM(amount), "
                       "MIN(unit) FROM ce_stage WHERE scope=? AND kind=? AND metric=? AND granularity=? "
                       "GROUP BY day, account, key", key)
            db.execute("DELETE FROM ce_stage WHERE scope=? AND kind=? AND metric=? AND granularity=?", key)
            self._dirty["ce"].update((kind, metric, d) for d in days)

    def rows(self, kind: str, metric: str, granularity: str, days: Sequence[str]) -> list[Row]:
        """The cached rows of ``days`` as tuples (small reads, tests); frames use :meth:`ce_columns`."""
        if not days:
            return []
        with self._connect() as db:
            cur = db.execute("SELECT day, account, key, amount, unit FROM ce_rows WHERE scope=? AND kind=? "
                             "AND metric=? AND granularity=? AND day>=? AND day<=?",
                             (self.scope, kind, metric, granularity, min(days), max(days)))
            wanted = set(days)
            return [r for r in cur.fetchall() if r[0] in wanted]

    def ce_columns(self, kind: str, metric: str, granularity: str, days: Sequence[str], codes: Codes,
                   ) -> pd.DataFrame:
        """The cached rows of ``days`` as int32 codes (day, account, key, unit: see :class:`Codes`) and float
        amounts.  A 1,000-account organization has ~1 M rows over the detection window: as tuples of fresh
        strings they took ~350 bytes each, as codes 24."""
        cols = ("day", "account", "key", "unit")
        ints: dict[str, array[int]] = {c: array("i") for c in cols}
        amounts = array("d")
        maps = [codes.map(c) for c in cols]
        out = [ints[c] for c in cols]
        wanted = set(days)
        if days:
            with self._connect() as db:
                cur = db.execute("SELECT day, account, key, unit, amount FROM ce_rows WHERE scope=? AND kind=? "
                                 "AND metric=? AND granularity=? AND day>=? AND day<=?",
                                 (self.scope, kind, metric, granularity, min(days), max(days)))
                while chunk := cur.fetchmany(READ_CHUNK):
                    for row in chunk:
                        if row[0] not in wanted:
                            continue
                        for m, o, v in zip(maps, out, row, strict=False):
                            o.append(m.setdefault(v, len(m)))
                        amounts.append(row[4])
        frame: dict[str, np.ndarray] = {
            c: np.frombuffer(ints[c], dtype=np.int32) if len(ints[c]) else np.empty(0, np.int32) for c in cols}
        frame["amount"] = np.frombuffer(amounts, dtype=np.float64) if len(amounts) else np.empty(0)
        return pd.DataFrame(frame)

    def get(self, key: str) -> tuple[Any, str] | None:
        """A JSON value and when it was stored, or None."""
        with self._connect() as db:
            row = db.execute("SELECT value, fetched_at FROM kv WHERE scope=? AND key=?",
                             (self.scope, key)).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def put(self, key: str, value: Any, fetched_at: str, *, dirty: bool = True) -> None:
        with self._write, self._connect() as db:
            db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?,?)",
                       (self.scope, key, json.dumps(value), fetched_at))
            if dirty:
                self._dirty["kv"].add(key)

    # ---------------------------------------------------------------------------------- hourly CPU
    # ``owner`` is the account an (account, region) pair is read through: "" for the caller's own credentials.

    def cpu_progress(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(owner, region) -> (first, last) hour read, epoch seconds: [since, until)."""
        with self._connect() as db:
            cur = db.execute("SELECT owner, region, since, until FROM cpu_progress WHERE scope=?", (self.scope,))
            return {(o, r): (int(a), int(b)) for o, r, a, b in cur.fetchall()}

    def put_nodes(self, owner: str, region: str, nodes: list[dict[str, Any]], seen: int) -> dict[str, int]:
        """Upsert the instances DescribeInstances listed; returns instance id -> nid for every instance
        known in (owner, region), including the ones no longer listed."""
        rows = [(self.scope, n["instance_id"], owner, region, n.get("account") or "", n.get("instance_type"),
                 _iso(n.get("launch_time")), n.get("state"), n.get("cluster"), n.get("nodegroup"), n.get("name"),
                 seen) for n in nodes]
        with self._write, self._connect() as db:
            db.executemany(
                "INSERT INTO nodes (scope, instance_id, owner, region, account, instance_type, launch_time, state, "
                "cluster, nodegroup, name, last_seen) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (scope, instance_id) DO UPDATE SET owner=excluded.owner, region=excluded.region, "
                "account=excluded.account, instance_type=excluded.instance_type, launch_time=excluded.launch_time, "
                "state=excluded.state, cluster=excluded.cluster, nodegroup=excluded.nodegroup, name=excluded.name, "
                "last_seen=excluded.last_seen", rows)
            cur = db.execute("SELECT instance_id, nid FROM nodes WHERE scope=? AND owner=? AND region=?",
                             (self.scope, owner, region))
            return {i: int(n) for i, n in cur.fetchall()}

    def gone_since(self, owner: str, region: str, listed: Iterable[str], since: int) -> list[str]:
        """Instances of (owner, region) seen at or after ``since`` that DescribeInstances no longer lists."""
        listed = set(listed)
        with self._connect() as db:
            cur = db.execute("SELECT instance_id FROM nodes WHERE scope=? AND owner=? AND region=? AND last_seen>=?",
                             (self.scope, owner, region, since))
            return [i for (i,) in cur.fetchall() if i not in listed]

    def put_cpu(self, stat: str, nids: np.ndarray, hours: np.ndarray, values: np.ndarray) -> None:
        """One GetMetricData page of one statistic (``avg`` or ``max``), merged into the hours stored."""
        if not len(nids):
            return
        rows = zip(nids.tolist(), hours.tolist(), values.tolist(), strict=True)
        with self._write, self._connect() as db:
            db.executemany(_PUT_CPU[stat], rows)
            self._dirty["cpu"].update(np.unique(hours // DAY_S).tolist())

    def done(self, owner: str, region: str, since: int, until: int) -> None:
        """(owner, region) read for [since, until)."""
        with self._write, self._connect() as db:
            db.execute("INSERT OR REPLACE INTO cpu_progress VALUES (?,?,?,?,?)",
                       (self.scope, owner, region, since, until))
            self._dirty["progress"].add((owner, region))

    def nodes_frame(self, units: Iterable[tuple[str, str]], seen_since: int | None = None) -> pd.DataFrame:
        """Instances known in the given (owner, region) pairs (seen at or after ``seen_since``), by nid.
        Values that repeat (account, region, type, state, cluster...) are one string object each, not one
        per instance (an organization has ~100,000 instances)."""
        wanted = set(units)
        cols = ("nid", "owner", "region", "last_seen", *NODE_FIELDS)
        out: list[list[Any]] = [[] for _ in cols]
        seen: dict[Any, Any] = {}
        with self._connect() as db:
            cur = db.execute(_NODES, (self.scope,))
            while chunk := cur.fetchmany(READ_CHUNK):
                for row in chunk:
                    if (row[1], row[2]) not in wanted or (seen_since is not None and row[3] < seen_since):
                        continue
                    for col, v in zip(out, row, strict=True):
                        col.append(seen.setdefault(v, v))
        return pd.DataFrame({c: pd.Series(v, dtype="int64" if c in ("nid", "last_seen") else object)
                             for c, v in zip(cols, out, strict=True)}).set_index("nid")

    def cpu_columns(self, nids: np.ndarray, since: int, until: int,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(nid, hour, avg, max) arrays of the cached hours in [since, until) of the given nodes, read in
        chunks straight into numpy (a 1,000-account organization has millions of instance-hours); a missing
        statistic is NaN."""
        parts: list[np.ndarray] = []
        dtype = np.dtype([("nid", "i8"), ("hour", "i8"), ("avg", "f8"), ("max", "f8")])
        wanted = np.unique(nids)
        with self._connect() as db:
            # a missing statistic reads as -1 (CPU is never negative) and becomes NaN here
            cur = db.execute("SELECT c.nid, c.hour, COALESCE(c.avg, -1.0), COALESCE(c.max, -1.0) FROM cpu_hours c "
                             "JOIN nodes n ON n.nid=c.nid WHERE n.scope=? AND c.hour>=? AND c.hour<?",
                             (self.scope, since, until))
            while chunk := cur.fetchmany(READ_CHUNK):
                arr = np.array(chunk, dtype=dtype)
                del chunk
                parts.append(arr[np.isin(arr["nid"], wanted)])
        out = np.concatenate(parts) if parts else np.empty(0, dtype)
        del parts
        cols = [np.ascontiguousarray(out[c]) for c in ("nid", "hour", "avg", "max")]
        del out
        for c in cols[2:]:
            c[c < 0] = np.nan
        return cols[0], cols[1], cols[2], cols[3]

    def prune_cpu(self, before: int) -> None:
        """Forget hours before ``before`` and instances not seen since."""
        with self._write, self._connect() as db:
            db.execute("DELETE FROM cpu_hours WHERE hour<? AND nid IN (SELECT nid FROM nodes WHERE scope=?)",
                       (before, self.scope))
            db.execute("DELETE FROM nodes WHERE scope=? AND last_seen<? AND nid NOT IN "
                       "(SELECT DISTINCT nid FROM cpu_hours)", (self.scope, before))


    # ---------------------------------------------------------------------------------- the state-store copy
    # (``mirror``): each piece as plain data, and back; loading replaces what the piece covers.

    def take_dirty(self) -> dict[str, set[Any]]:
        """What changed since the last call (CPU days, Cost Explorer (kind, metric, day)s, progress, kv keys)."""
        with self._write:
            out, self._dirty = self._dirty, {k: set() for k in self._dirty}
        return out

    def dump_cpu_day(self, day: int) -> dict[str, np.ndarray]:
        """The cached hours of UTC day ``day`` (days since the epoch) with their instances' labels."""
        with self._connect() as db:
            cur = db.execute("SELECT c.nid, c.hour, COALESCE(c.avg, -1.0), COALESCE(c.max, -1.0) FROM cpu_hours c "
                             "JOIN nodes n ON n.nid=c.nid WHERE n.scope=? AND c.hour>=? AND c.hour<? ORDER BY c.nid",
                             (self.scope, day * DAY_S, (day + 1) * DAY_S))
            arr = np.array(cur.fetchall(), dtype=[("nid", "i8"), ("hour", "i8"), ("avg", "f4"), ("max", "f4")])
            nids, node = np.unique(arr["nid"], return_inverse=True)
            known = {int(r[0]): r[1:] for r in db.execute(_LABELS, (self.scope,)).fetchall()}
            labels = [known[int(n)] for n in nids]
        return {"node": node.astype(np.int32), "hour": arr["hour"], "avg": arr["avg"], "max": arr["max"],
                "labels": np.frombuffer(json.dumps(labels).encode(), dtype=np.uint8)}

    def load_cpu_day(self, day: int, arrays: dict[str, np.ndarray]) -> None:
        labels = json.loads(arrays["labels"].tobytes())
        with self._write, self._connect() as db:
            db.executemany(_PUT_LABELS, [(self.scope, *row) for row in labels])
            nid_of = dict(db.execute("SELECT instance_id, nid FROM nodes WHERE scope=?", (self.scope,)).fetchall())
            nids = np.array([nid_of[row[0]] for row in labels], dtype=np.int64)
            db.execute("DELETE FROM cpu_hours WHERE hour>=? AND hour<? AND nid IN (SELECT nid FROM nodes WHERE "
                       "scope=?)", (day * DAY_S, (day + 1) * DAY_S, self.scope))
            avg = [None if v < 0 else v for v in arrays["avg"].astype(np.float64).tolist()]
            mx = [None if v < 0 else v for v in arrays["max"].astype(np.float64).tolist()]
            db.executemany("INSERT OR REPLACE INTO cpu_hours VALUES (?,?,?,?)",
                           zip(nids[arrays["node"]].tolist(), arrays["hour"].tolist(), avg, mx, strict=True))

    def dump_ce_day(self, kind: str, metric: str, day: str) -> dict[str, Any]:
        key = (self.scope, kind, metric, "DAILY", day)
        with self._connect() as db:
            head = db.execute("SELECT estimated, fetched_at FROM ce_days WHERE scope=? AND kind=? AND metric=? AND "
                              "granularity=? AND day=?", key).fetchone()
            rows = db.execute("SELECT account, key, amount, unit FROM ce_rows WHERE scope=? AND kind=? AND metric=? "
                              "AND granularity=? AND day=?", key).fetchall()
        return {"estimated": bool(head[0]) if head else False, "fetched_at": head[1] if head else "",
                "rows": rows}

    def load_ce_day(self, kind: str, metric: str, day: str, doc: dict[str, Any]) -> None:
        key = (self.scope, kind, metric, "DAILY", day)
        with self._write, self._connect() as db:
            db.execute("DELETE FROM ce_rows WHERE scope=? AND kind=? AND metric=? AND granularity=? AND day=?", key)
            db.execute("INSERT OR REPLACE INTO ce_days VALUES (?,?,?,?,?,?,?)",
                       (*key, int(doc["estimated"]), doc["fetched_at"]))
            db.executemany("INSERT INTO ce_rows VALUES (?,?,?,?,?,?,?,?,?)", [(*key, *r) for r in doc["rows"]])

    def dump_progress(self) -> list[list[Any]]:
        return [[o, r, a, b] for (o, r), (a, b) in self.cpu_progress().items()]

    def load_progress(self, rows: list[list[Any]]) -> None:
        with self._write, self._connect() as db:
            db.execute("DELETE FROM cpu_progress WHERE scope=?", (self.scope,))
            db.executemany("INSERT INTO cpu_progress VALUES (?,?,?,?,?)", [(self.scope, *r) for r in rows])

    def dump_kv(self) -> dict[str, list[str]]:
        with self._connect() as db:
            rows = db.execute("SELECT key, value, fetched_at FROM kv WHERE scope=? AND key!='mirror'",
                              (self.scope,)).fetchall()
        return {k: [v, at] for k, v, at in rows}

    def load_kv(self, entries: dict[str, list[str]]) -> None:
        with self._write, self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO kv VALUES (?,?,?,?)",
                           [(self.scope, k, v, at) for k, (v, at) in entries.items()])


def _iso(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return pd.Timestamp(value).isoformat()
