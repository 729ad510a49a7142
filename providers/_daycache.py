"""SQLite cache of fetched billing days, so a scheduled run asks the cloud only for the days that can still
change (the last ``restate_days``) and reads the rest from disk.

Days are remembered even when they had no rows, so an empty day is not asked for again.  A cache entry is
keyed by (scope, source, part, day): ``scope`` is the provider name (two tenants in one file stay apart),
``source`` the query flavour or export table (pointing the config elsewhere starts a fresh history instead of
mixing two), ``part`` a sub-scope fetched on its own (an Azure subscription), so one part failing never marks
days as fetched for the others.  Rows are stored as JSON, whatever shape the provider keeps.

Shared by the GCP and Azure providers; it lives here rather than in a provider package so that importing it
never imports a cloud SDK.  (The AWS provider keeps its own, older, Cost Explorer-specific tables.)
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_days (
    scope TEXT NOT NULL, source TEXT NOT NULL, part TEXT NOT NULL, day TEXT NOT NULL, fetched_at TEXT NOT NULL,
    PRIMARY KEY (scope, source, part, day)
);
CREATE TABLE IF NOT EXISTS cache_rows (
    scope TEXT NOT NULL, source TEXT NOT NULL, part TEXT NOT NULL, day TEXT NOT NULL, row TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_rows_day ON cache_rows (scope, source, part, day);
"""


def default_cache_path(cfg: Any, file_name: str) -> Path:
    """Next to the sqlite state file, so one directory holds everything costwatch keeps between runs."""
    state = getattr(getattr(cfg, "state", None), "path", None)
    base = Path(str(state)).parent if state and "://" not in str(state) else Path(".costwatch")
    return base / file_name


class SqliteFile:
    """One connection per call (a short transaction each): providers write from worker threads and runs are
    short-lived.  Subclasses set ``SCHEMA``."""

    SCHEMA = ""

    def __init__(self, path: str | Path, scope: str) -> None:
        self.path = Path(path)
        self.scope = scope
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(self.SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A transaction on a fresh connection, closed afterwards (``with sqlite3.connect()`` only commits)."""
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()


class DayCache(SqliteFile):
    SCHEMA = SCHEMA

    def fetched_days(self, source: str, part: str = "") -> set[str]:
        with self._connect() as db:
            cur = db.execute("SELECT day FROM cache_days WHERE scope=? AND source=? AND part=?",
                             (self.scope, source, part))
            return {d for (d,) in cur.fetchall()}

    def store(self, source: str, days: Iterable[str], rows: Iterable[tuple[str, Any]], fetched_at: str,
              part: str = "") -> None:
        """Replace the given days and their (day, row) rows in one transaction."""
        days = list(days)
        key = (self.scope, source, part)
        with self._connect() as db:
            db.executemany("DELETE FROM cache_rows WHERE scope=? AND source=? AND part=? AND day=?",
                           [(*key, d) for d in days])
            db.executemany("INSERT OR REPLACE INTO cache_days VALUES (?,?,?,?,?)",
                           [(*key, d, fetched_at) for d in days])
            db.executemany("INSERT INTO cache_rows VALUES (?,?,?,?,?)",
                           [(*key, day, json.dumps(row, sort_keys=True)) for day, row in rows])

    def rows(self, source: str, days: Sequence[str], part: str = "") -> list[Any]:
        if not days:
            return []
        with self._connect() as db:
            cur = db.execute("SELECT day, row FROM cache_rows WHERE scope=? AND source=? AND part=? AND day>=? "
                             "AND day<=?", (self.scope, source, part, min(days), max(days)))
            wanted = set(days)
            return [json.loads(r) for d, r in cur.fetchall() if d in wanted]


__all__ = ["DayCache", "SqliteFile", "default_cache_path"]
