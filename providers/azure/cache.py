"""SQLite cache of fetched Azure cost days, so an hourly run asks Azure only for the days that can still change.

Same idea as the aws provider's cache (``costwatch.providers.aws.cache``), which cannot be imported from here
without importing boto3 through that package: days are remembered per (scope, source, subscription) even when
they had no rows, so an empty day is not asked for again, and one subscription failing never marks days as
fetched for the others.  ``scope`` is the provider name, keeping two tenants apart in one file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS az_days (
    scope TEXT NOT NULL, source TEXT NOT NULL, subscription TEXT NOT NULL, day TEXT NOT NULL,
    fetched_at TEXT NOT NULL, PRIMARY KEY (scope, source, subscription, day)
);
CREATE TABLE IF NOT EXISTS az_rows (
    scope TEXT NOT NULL, source TEXT NOT NULL, subscription TEXT NOT NULL, day TEXT NOT NULL,
    subscription_name TEXT, resource_group TEXT, service TEXT, region TEXT, resource_id TEXT, charge TEXT,
    amount REAL NOT NULL, currency TEXT NOT NULL, tags TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS az_rows_day ON az_rows (scope, source, subscription, day);
"""

# (day, subscription, subscription_name, resource_group, service, region, resource_id, charge, amount,
#  currency, tags)
Row = tuple[str, str, str | None, str | None, str | None, str | None, str | None, str, float, str, dict[str, str]]


class Cache:
    """One connection per call: a short transaction each, safe from the provider's worker threads."""

    def __init__(self, path: str | Path, scope: str) -> None:
        self.path = Path(path)
        self.scope = scope
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def fetched_days(self, source: str, subscription: str) -> set[str]:
        with self._connect() as db:
            cur = db.execute("SELECT day FROM az_days WHERE scope=? AND source=? AND subscription=?",
                             (self.scope, source, subscription))
            return {d for (d,) in cur.fetchall()}

    def store(self, source: str, subscription: str, days: Iterable[str], rows: Iterable[Row],
              fetched_at: str) -> None:
        """Replace the given days of one subscription and their rows in one transaction."""
        key = (self.scope, source, subscription)
        days = list(days)
        with self._connect() as db:
            db.executemany("DELETE FROM az_rows WHERE scope=? AND source=? AND subscription=? AND day=?",
                           [(*key, d) for d in days])
            db.executemany("INSERT OR REPLACE INTO az_days VALUES (?,?,?,?,?)", [(*key, d, fetched_at) for d in days])
            db.executemany("INSERT INTO az_rows VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           [(self.scope, source, r[1], r[0], *r[2:10], json.dumps(r[10], sort_keys=True))
                            for r in rows])

    def rows(self, source: str, subscription: str, days: Sequence[str]) -> list[Row]:
        if not days:
            return []
        with self._connect() as db:
            cur = db.execute("SELECT day, subscription, subscription_name, resource_group, service, region, "
                             "resource_id, charge, amount, currency, tags FROM az_rows WHERE scope=? AND source=? "
                             "AND subscription=? AND day>=? AND day<=?",
                             (self.scope, source, subscription, min(days), max(days)))
            wanted = set(days)
            return [(*r[:10], json.loads(r[10])) for r in cur.fetchall() if r[0] in wanted]
