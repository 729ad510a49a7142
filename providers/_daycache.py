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

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

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


def fetch_clock(now: pd.Timestamp | None, clock: Callable[[], pd.Timestamp]) -> pd.Timestamp:
    """The moment a fetch answers for: ``now`` (the end of the window a run or a replay evaluates, see
    ``costwatch.sources.gather``), else the provider's clock; never later than the clock, since no cloud has
    data from the future and a day asked for before it exists would be cached as empty.

    It sets the last day fetched, the restate window (a replay at a past ``as_of`` re-reads the days a run at
    that time would have re-read, and marks them estimated as that run would have) and the CPU window.  The
    cache itself stays on the real clock: what is fetched is what the cloud says now, and a later run still
    re-reads its own last ``restate_days`` because it computes them from its own clock."""
    real = clock()
    if now is None:
        return real
    t = pd.Timestamp(now)
    return min(t.tz_convert("UTC") if t.tzinfo else t.tz_localize("UTC"), real)


def day_range(start: pd.Timestamp, end: pd.Timestamp, today: dt.date) -> list[dt.date]:
    """UTC days touching [start, end), never past today (no cloud has cost for tomorrow)."""
    s, e = pd.Timestamp(start), pd.Timestamp(end)
    s = s.tz_convert("UTC") if s.tzinfo else s.tz_localize("UTC")
    e = e.tz_convert("UTC") if e.tzinfo else e.tz_localize("UTC")
    first, last = s.date(), min((e - pd.Timedelta(microseconds=1)).date(), today)
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def fetch_windows(days: list[dt.date], cached: set[str], today: dt.date, restate_days: int, *,
                  merge_gap: int = 0) -> list[tuple[dt.date, dt.date]]:
    """[start, end) windows covering the days to fetch: not cached yet, or recent enough to still change.
    Windows at most ``merge_gap`` cached days apart merge, re-reading those days to save a request (per-request
    APIs); 0 merges only touching days (per-byte engines, where a re-read cached day is paid for)."""
    recent = today - dt.timedelta(days=restate_days)
    windows: list[tuple[dt.date, dt.date]] = []
    for d in (d for d in days if d.isoformat() not in cached or d >= recent):
        if windows and (d - windows[-1][1]).days <= merge_gap:
            windows[-1] = (windows[-1][0], d + dt.timedelta(days=1))
        else:
            windows.append((d, d + dt.timedelta(days=1)))
    return windows


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


__all__ = ["DayCache", "SqliteFile", "day_range", "default_cache_path", "fetch_clock", "fetch_windows"]
