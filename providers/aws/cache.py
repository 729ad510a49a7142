"""SQLite cache of Cost Explorer days and account metadata, so an hourly run asks AWS only for what changed.

Cost Explorer bills per request and revises only the last few days, so a day fetched once is kept here and
re-fetched only while it is recent enough to still move (``restate_days``).  Rows are stored per
(scope, query kind, metric, granularity, day); ``ce_days`` remembers which days were fetched even when they
had no rows, so an empty day is not asked for again.  ``scope`` is the provider name, keeping two
organizations apart in one file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

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
CREATE TABLE IF NOT EXISTS kv (scope TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    fetched_at TEXT NOT NULL, PRIMARY KEY (scope, key));
"""

# (day, account, key, amount, unit)
Row = tuple[str, str, str, float, str]


class Cache(SqliteFile):
    SCHEMA = SCHEMA

    def fetched_days(self, kind: str, metric: str, granularity: str) -> dict[str, bool]:
        """Days already fetched -> whether AWS marked them estimated."""
        with self._connect() as db:
            cur = db.execute("SELECT day, estimated FROM ce_days WHERE scope=? AND kind=? AND metric=? "
                             "AND granularity=?", (self.scope, kind, metric, granularity))
            return {d: bool(e) for d, e in cur.fetchall()}

    def store(self, kind: str, metric: str, granularity: str, days: dict[str, bool], rows: Iterable[Row],
              fetched_at: str) -> None:
        """Replace the given days (with their estimated flags) and their rows in one transaction."""
        key = (self.scope, kind, metric, granularity)
        with self._connect() as db:
            db.executemany("DELETE FROM ce_rows WHERE scope=? AND kind=? AND metric=? AND granularity=? "
                           "AND day=?", [(*key, d) for d in days])
            db.executemany("INSERT OR REPLACE INTO ce_days VALUES (?,?,?,?,?,?,?)",
                           [(*key, d, int(e), fetched_at) for d, e in days.items()])
            db.executemany("INSERT INTO ce_rows VALUES (?,?,?,?,?,?,?,?,?)", [(*key, *r) for r in rows])

    def rows(self, kind: str, metric: str, granularity: str, days: Sequence[str]) -> list[Row]:
        if not days:
            return []
        with self._connect() as db:
            cur = db.execute("SELECT day, account, key, amount, unit FROM ce_rows WHERE scope=? AND kind=? "
                             "AND metric=? AND granularity=? AND day>=? AND day<=?",
                             (self.scope, kind, metric, granularity, min(days), max(days)))
            wanted = set(days)
            return [r for r in cur.fetchall() if r[0] in wanted]

    def get(self, key: str) -> tuple[Any, str] | None:
        """A JSON value and when it was stored, or None."""
        with self._connect() as db:
            row = db.execute("SELECT value, fetched_at FROM kv WHERE scope=? AND key=?",
                             (self.scope, key)).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def put(self, key: str, value: Any, fetched_at: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?,?)",
                       (self.scope, key, json.dumps(value), fetched_at))
