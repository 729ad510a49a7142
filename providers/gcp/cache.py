"""SQLite cache of billing-export days, so an hourly run queries BigQuery only for the days that can still change.

The approach of ``providers/aws/cache.py`` (a fetched-days table plus the rows of those days, replaced a day at a
time), with rows stored as JSON so any export flavour fits.  It is a copy rather than an import because
importing ``costwatch.providers.aws.cache`` runs the aws package's ``__init__`` and so needs boto3, which a
GCP-only install does not have.  ``source`` is the export table and flavour: pointing the config at another
table starts a fresh history instead of mixing two.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS export_days (
    scope TEXT NOT NULL, source TEXT NOT NULL, day TEXT NOT NULL, fetched_at TEXT NOT NULL,
    PRIMARY KEY (scope, source, day)
);
CREATE TABLE IF NOT EXISTS export_rows (
    scope TEXT NOT NULL, source TEXT NOT NULL, day TEXT NOT NULL, row TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS export_rows_day ON export_rows (scope, source, day);
"""


class DayCache:
    """One connection per call: the provider writes from one thread and runs are short-lived."""

    def __init__(self, path: str | Path, scope: str) -> None:
        self.path = Path(path)
        self.scope = scope
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A transaction on a fresh connection, closed afterwards (``with sqlite3.connect()`` only commits)."""
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def fetched_days(self, source: str) -> set[str]:
        with self._connect() as db:
            cur = db.execute("SELECT day FROM export_days WHERE scope=? AND source=?", (self.scope, source))
            return {d for (d,) in cur.fetchall()}

    def store(self, source: str, days: Iterable[str], rows: Iterable[dict[str, Any]], fetched_at: str) -> None:
        """Replace the given days and their rows in one transaction (a day with no rows is still fetched)."""
        days = list(days)
        key = (self.scope, source)
        with self._connect() as db:
            db.executemany("DELETE FROM export_rows WHERE scope=? AND source=? AND day=?", [(*key, d) for d in days])
            db.executemany("INSERT OR REPLACE INTO export_days VALUES (?,?,?,?)",
                           [(*key, d, fetched_at) for d in days])
            db.executemany("INSERT INTO export_rows VALUES (?,?,?,?)",
                           [(*key, r["day"], json.dumps(r, sort_keys=True)) for r in rows])

    def rows(self, source: str, days: Sequence[str]) -> list[dict[str, Any]]:
        if not days:
            return []
        with self._connect() as db:
            cur = db.execute("SELECT day, row FROM export_rows WHERE scope=? AND source=? AND day>=? AND day<=?",
                             (self.scope, source, min(days), max(days)))
            wanted = set(days)
            return [json.loads(r) for d, r in cur.fetchall() if d in wanted]
