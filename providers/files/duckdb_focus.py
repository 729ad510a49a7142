"""Aggregate FOCUS exports (CSV, CSV.gz, Parquet) to daily cost rows inside DuckDB, without pandas.

A large organization's hourly FOCUS export runs to tens of gigabytes; the pandas loader holds every row and
column as Python text, so it needs several times the file size in memory.  Detection only reads daily sums
per (day, provider, project, service, service category, region, charge category, currency, owner), so this
module lets DuckDB stream the files and do the GROUP BY, and pandas only ever sees the daily result: memory
is bounded by the number of distinct series, not by the export's size.

The result is the same normalized cost frame as :func:`~costwatch.providers.files.focus.load_focus`, at
daily grain (``period_hours`` 24, ``period_start`` the UTC day of ``ChargePeriodStart``, as
``baseline.daily_matrix`` floors it), and the same rules apply:

* the same columns are read (matched case-insensitively, with the same fallbacks: SubAccountId then
  BillingAccountId, RegionId then RegionName then AvailabilityZone, EffectiveCost then BilledCost);
* ``NULL``, ``none``, ``n/a`` and blanks are missing; enum values are spelled the FOCUS way whatever their
  case, by the very functions the pandas loader uses (applied after the aggregation, on the few distinct
  values, and summed again so ``usage`` and ``Usage`` land in one series);
* every row is validated, and the first bad row is reported with the file, line (row for Parquet) and
  column, in the pandas loader's words.  Validation is counted inside the aggregation (timestamps and costs
  per row, text and tags per group of identical raw values, see :class:`_Plan`); only when the count is
  non-zero is the file scanned again, on one thread, to find the line;
* currency is a grouping key, so amounts in different currencies are never added up;
* credits (negative amounts) are summed like any other charge, in their own charge category.

Two deliberate differences: tags are reduced to the owner tags (``alerting.owner_tags``), the only tags the
cost frame is read for, and ``resource_id`` is kept only on Compute rows (the new-VM evidence of a mining
alert) unless ``resources`` says otherwise: per-resource storage and network rows are what make exports
huge.  Timestamps must be ISO 8601, as FOCUS requires; the pandas loader also guesses other formats.

The SQL is built from validated pieces only: file paths, JSON pointers and the owner tag keys are bound
parameters; the column names spliced in are the file's own headers, and only those that match a known FOCUS
column, double-quoted.
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from costwatch.errors import ConfigError, DataError, where
from costwatch.model import (
    MAX_AMOUNT,
    amount_message,
    empty_costs,
    line_of,
    normalize_costs,
    out_of_range_message,
)

from .focus import (
    _FALSE,
    _FOCUS_READ,
    _NULLS,
    _TRUE,
    CHARGE_CATEGORIES,
    CURRENCY_SHAPE,
    MAX_LINE_BYTES,
    OPTIONAL_FOCUS,
    REQUIRED_FOCUS,
    SERVICE_CATEGORIES,
    _canonical,
    _line_map,
    canonical_provider,
    check_csv_bytes,
    check_headers,
    currency_message,
    describe_headers,
    input_files,
    map_unique,
    read_header,
)

if TYPE_CHECKING:
    import duckdb

Resources = Literal["none", "compute", "all"]

# ``engine: auto`` switches to DuckDB above this many bytes of CSV text (estimated for compressed files).
# Measured with bench/warehouse.py on 2 cores: the pandas loader takes ~40 s/GB and peaks at ~1.6x the CSV
# size (a 10 GB export would need 16 GB), DuckDB ~8 s/GB with a peak near 350 MB whatever the size.  Below
# ~100 MB both take seconds, and pandas keeps every export row (resource ids of every service).
AUTO_BYTES = 128 * 2**20
# Bytes of CSV text per byte on disk, to compare compressed inputs with the threshold: FOCUS text repeats
# itself heavily, so gzip and Parquet shrink it 5-10x.
EXPANSION = {".gz": 8, ".parquet": 6}
DEFAULT_OWNER_TAGS = ("owner", "team")

# Python's whitespace (str.isspace(), what the pandas loader's .str.strip() removes), so that a cell of
# no-break spaces is blank in both engines: DuckDB's trim() and RE2's \s know only ASCII whitespace.
_WS = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
       "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_WS_CLASS = ("[\\t-\\r\\x{1c}-\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}"
             "\\x{3000}]")  # _WS as an RE2 class
# max_line_size: DuckDB's own default (2 MB) refused the 20 MB lines the pandas loader reads; both now read lines
# up to focus.MAX_LINE_BYTES, which ``check_csv_bytes`` enforces (with a message) before DuckDB reads a byte
_CSV_OPTIONS = ("header = true, auto_detect = false, delim = ',', quote = '\"', escape = '\"', compression = 'auto', "
                f"max_line_size = {MAX_LINE_BYTES}")
_CSV_LINE = re.compile(r"CSV Error on Line: (\d+)")
_CSV_COUNT = re.compile(r"Expected Number of Columns: (\d+) Found: (\d+)")


def available() -> bool:
    """Whether DuckDB is installed (``pip install 'costwatch[duckdb]'``); it is an optional extra."""
    return importlib.util.find_spec("duckdb") is not None


def text_bytes(path: str | Path) -> int:
    """Estimated bytes of CSV text in a file or folder of exports, to compare with :data:`AUTO_BYTES`."""
    total = 0
    for f in input_files(path):
        name = f.name.lower()
        factor = next((k for s, k in EXPANSION.items() if name.endswith(s)), 1)
        total += f.stat().st_size * factor
    return total


def choose_engine(path: str | Path, engine: str = "auto", threshold: int = AUTO_BYTES) -> str:
    """``pandas`` or ``duckdb`` for one configured path: DuckDB when asked, or under ``auto`` when it is
    installed and the input is large enough that pandas would need gigabytes of memory."""
    if engine == "pandas":
        return "pandas"
    if engine == "duckdb":
        require()
        return "duckdb"
    if engine != "auto":
        raise ConfigError(f"files provider: engine must be auto, pandas or duckdb, not {engine!r}")
    return "duckdb" if available() and text_bytes(path) >= threshold else "pandas"


def require() -> None:
    if not available():
        raise ConfigError("files provider: engine is duckdb but DuckDB is not installed; run "
                          "`pip install 'costwatch[duckdb]'` or set engine: auto")


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------

def load_focus_daily(path: str | Path | Sequence[str | Path], *, owner_tags: Sequence[str] = DEFAULT_OWNER_TAGS,
                     resources: Resources = "compute", memory_limit: str | None = None,
                     threads: int | None = None) -> pd.DataFrame:
    """Daily cost frame of a FOCUS export file or folder (or several), aggregated in DuckDB.

    ``memory_limit`` (e.g. ``"2GB"``) caps DuckDB's own memory; beyond it DuckDB spills to a temporary
    folder that is removed afterwards.  Raises DataError naming the file, line and column of the first
    problem.
    """
    require()
    import duckdb

    paths = [path] if isinstance(path, str | Path) else list(path)
    files = [f for p in paths for f in input_files(p)]
    if resources not in ("none", "compute", "all"):
        raise ValueError(f"resources must be none, compute or all, not {resources!r}")
    keys = [str(k) for k in dict.fromkeys(owner_tags)]
    with tempfile.TemporaryDirectory(prefix="costwatch-duckdb-") as spill:
        config: dict[str, Any] = {"temp_directory": spill}
        if memory_limit:
            config["memory_limit"] = memory_limit
        if threads:
            config["threads"] = threads
        con = duckdb.connect(":memory:", config=config)
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute("SET enable_progress_bar = false")  # a long read must not print to the terminal
            for macro in _CLEAN_MACROS:
                con.execute(macro)
            parts = [_aggregate_file(con, f, keys, resources) for f in files]
        finally:
            con.close()
    out = _finish(pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(), keys, merge=len(parts) > 1)
    # each file's sums were finite; adding up the same day across files (or spellings) may still overflow
    _check_finite(out.assign(day=out["period_start"]), ", ".join(str(p) for p in paths),
                  {"billed_cost": "BilledCost", "effective_cost": "EffectiveCost"})
    return out


# cw_clean(x) is ``clean_text``: NULL for the missing markers (any case, any surrounding whitespace), else the
# text stripped.  A regular expression and a look at the first and last character, because an IN list is
# planned as a join per use and trim() with a character list is slow, both ~10x this on every value (a value
# that starts or ends with a control character, a space or any character from U+0085 on is trimmed).
_MISSING = f"{_WS_CLASS}*(?i:" + "|".join(re.escape(v) for v in sorted(_NULLS) if v) + f")?{_WS_CLASS}*"
_CLEAN_MACROS = (
    f"CREATE TEMP MACRO cw_clean_text(t) AS CASE WHEN regexp_full_match(t, '{_MISSING}') THEN NULL "
    f"WHEN ascii(t) <= 32 OR ascii(t) >= 133 OR ascii(right(t, 1)) <= 32 OR ascii(right(t, 1)) >= 133 "
    f"THEN trim(t, '{_WS}') ELSE t END",
    "CREATE TEMP MACRO cw_clean(x) AS cw_clean_text(CAST(x AS VARCHAR))",
)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class _Source:
    """One file as DuckDB reads it: the FROM clause, its bound parameters, and the FOCUS columns found."""

    path: Path
    parquet: bool
    scan: str
    numbered: str  # the same scan with each row's 0-based position as ``cw_pos``
    params: list[Any]
    headers: list[str]
    columns: dict[str, str]  # lower-cased FOCUS name -> the file's column name
    types: dict[str, str]  # the file's column name -> DuckDB type


def _source(con: duckdb.DuckDBPyConnection, path: Path) -> _Source:
    import duckdb

    parquet = path.name.lower().endswith(".parquet")
    params: list[Any] = [str(path)]
    if parquet:
        scan = "read_parquet(?)"
        numbered = "(SELECT *, file_row_number AS cw_pos FROM read_parquet(?, file_row_number = true))"
        try:
            described = con.execute(f"DESCRIBE SELECT * FROM {scan}", params).fetchall()
        except duckdb.Error as e:
            raise DataError(f"{path}: not a readable Parquet file ({_first_line(e)})") from e
        names = [str(r[0]) for r in described]
        types = {str(r[0]): str(r[1]) for r in described}
        headers = [n.strip() for n in names]
        # DuckDB renames a repeated column (a, a_1): the file's own names come from its footer
        check_headers(path, _parquet_names(path) or headers)
    else:
        headers = _csv_header(path)
        check_headers(path, headers)
        # line length, NUL bytes and a .gz's CRC and expansion, as the pandas loader checks them, before DuckDB
        # reads: beside DuckDB's read (measured) it did not stop DuckDB from reading a 1 GiB line to 1.25 GB RSS
        check_csv_bytes(path)
        names = _dedupe(headers)
        types = dict.fromkeys(names, "VARCHAR")
        scan = f"read_csv(?, columns = ?, {_CSV_OPTIONS})"
        # a CSV scan has no row numbers; on one thread, row_number() OVER () follows the file's order
        numbered = f"(SELECT *, row_number() OVER () - 1 AS cw_pos FROM {scan})"
        params.append(types)
    wanted = {w.lower() for w in _FOCUS_READ}
    columns: dict[str, str] = {}
    for name in names:
        key = name.strip().lower()
        if key in wanted:
            columns.setdefault(key, name)
    return _Source(path, parquet, scan, numbered, params, headers, columns, types)


def _parquet_names(path: Path) -> list[str] | None:
    """The top-level column names of a Parquet file as written, with pyarrow when it is installed."""
    if importlib.util.find_spec("pyarrow") is None:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return [str(n) for n in pq.read_schema(path).names]
    except (OSError, ValueError, pa.ArrowException):
        return None  # DuckDB's own read reports the file as unreadable


def _csv_header(path: Path) -> list[str]:
    """The header record, read with the csv module: DuckDB's sniffer guesses, and a guess could take a data
    row for the header; with the names given, DuckDB rejects any row with a different field count.  Read
    within the pandas loader's bounds (``focus.read_header``): its length and its number of columns."""
    return read_header(path)


def _dedupe(headers: list[str]) -> list[str]:
    """Unique column names (``Tags``, ``Tags.1``) as pandas makes them; the first one is the one read."""
    seen: dict[str, int] = {}
    out = []
    for h in headers:
        name, n = h, seen.get(h.lower(), 0)
        while name.lower() in seen:
            n += 1
            name = f"{h}.{n}"
        seen[h.lower()] = n
        seen[name.lower()] = 0
        out.append(name)
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


# ---------------------------------------------------------------------------------------------------------
# Row expressions and checks
# ---------------------------------------------------------------------------------------------------------

@dataclass
class _Check:
    """One validation, in the order the pandas loader makes them; ``value`` is shown in the message.

    ``fails`` is written over the file's own columns, so the same text works on every row (stage 1, and the
    locator) and on stage 1's groups of raw values (stage 2), which keep the columns' names.
    """

    column: str
    fails: str  # SQL: true when the row fails
    value: str  # SQL: the offending value as text (NULL when missing)
    kind: str  # how to word the message
    per_row: bool  # checked on every row in stage 1; else on stage 1's groups in stage 2
    flag: str = "false"  # SQL: true when the row fails for the check's second reason (a time out of range)


def _is_text(t: str) -> bool:
    return t.upper() in ("VARCHAR", "JSON") or t.upper().startswith("VARCHAR")


def _is_time(t: str) -> bool:
    return t.upper().startswith(("TIMESTAMP", "DATE"))


def _is_number(t: str) -> bool:
    return t.upper().startswith(("DOUBLE", "FLOAT", "DECIMAL", "REAL", "BIGINT", "INTEGER", "SMALLINT",
                                 "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER", "USMALLINT", "UTINYINT"))


_NULL_TEXT = "CAST(NULL AS VARCHAR)"
# model.FIRST_TIME and LAST_TIME (to the microsecond, DuckDB's unit): the times a nanosecond frame holds.
# DuckDB reads years 1 to 294246 (and 'infinity'); outside this range the day would fail as pandas'
# OutOfBoundsDatetime when the result becomes a frame, so such rows are refused like unparseable ones.
_FIRST_TIME = "TIMESTAMPTZ '1677-09-22 00:00:00+00'"
_LAST_TIME = "TIMESTAMPTZ '2262-04-11 23:47:16.854775+00'"


@dataclass
class _Plan:
    """One file's two-stage aggregation.

    Stage 1 touches every row but does only what must be done per row: parse the two timestamps and the two
    costs, and group by the day and the *raw* text of every other column read.  Hourly exports repeat the
    same text 24 times a day per resource, so stage 2 cleans, validates and parses (JSON tags) once per
    group instead of once per row, then groups again by the cleaned values.  Grouping raw text and then
    cleaning gives the same sums as cleaning first, since cleaning is a function of the text.
    """

    row: dict[str, str]  # stage 1: per-row values grouped on, named cw_*
    carried: list[str]  # the file's columns grouped as they are in stage 1
    billed: str
    effective: str
    final: dict[str, str]  # stage 2: the output keys, over stage 1's columns
    estimated: str  # stage 2: the estimated flag of a group
    checks: list[_Check]
    row_params: list[Any]
    final_params: list[Any]


def _plan(src: _Source, keys: list[str], resources: str) -> _Plan:
    """The SQL for one source: per-row expressions, the grouped output columns and the checks that name a bad
    row, in the pandas loader's order so both name the same first bad row."""
    return _Planner(src).plan(keys, resources)


class _Planner:
    """Builds a ``_Plan`` column by column; remembers the checks and the columns carried to stage 2."""

    def __init__(self, src: _Source) -> None:
        self.src, self.cols, self.types = src, src.columns, src.types
        self.checks: list[_Check] = []
        self.carried: list[str] = []
        self.row_params: list[Any] = []
        self.final_params: list[Any] = []

    def col(self, *names: str) -> str | None:
        return next((self.cols[n.lower()] for n in names if n.lower() in self.cols), None)

    def carry(self, *names: str) -> list[str]:
        found = [c for c in (self.col(n) for n in names) if c is not None]
        self.carried.extend(c for c in found if c not in self.carried)
        return found

    def text(self, *names: str) -> str:
        """First non-missing value across fallback columns, cleaned like ``clean_text`` (stage 2)."""
        parts = [f"cw_clean({_quote(c)})" for c in self.carry(*names)]
        if not parts:
            return _NULL_TEXT
        return parts[0] if len(parts) == 1 else f"coalesce({', '.join(parts)})"

    def time(self, c: str) -> str:
        q = _quote
        if _is_time(self.types[c]):
            expr = f"CAST({q(c)} AS TIMESTAMPTZ)"
            shown = f"CAST({expr} AS VARCHAR)"  # NULL ("is empty") when missing
        else:
            expr = f"TRY_CAST(trim({q(c)}, '{_WS}') AS TIMESTAMPTZ)"
            shown = f"cw_clean({q(c)})"
        # one check for both reasons, so the first bad row is the one the pandas loader names
        outside = f"({expr} < {_FIRST_TIME} OR {expr} > {_LAST_TIME})"
        self.checks.append(_Check(c, f"{expr} IS NULL OR {outside}", shown, "time", True, flag=outside))
        return expr

    def number(self, c: str, allow_missing: bool) -> str:
        """An amount: finite and below MAX_AMOUNT in magnitude (one check, flagged when out of range, so the
        first bad row is the one the pandas loader names)."""
        q = _quote
        if _is_number(self.types[c]):
            v = f"CAST({q(c)} AS DOUBLE)"
            big = f"coalesce(isfinite({v}) AND abs({v}) >= {MAX_AMOUNT!r}, false)"
            value = f"CASE WHEN isnan({v}) THEN NULL ELSE CAST({v} AS VARCHAR) END"
            bad = f"isinf({v})" if allow_missing else f"NOT coalesce(isfinite({v}), false)"
            self.checks.append(_Check(c, f"{bad} OR {big}", value, "finite", True, flag=big))
            return f"CASE WHEN isnan({v}) THEN NULL ELSE {v} END"
        # concat(): DuckDB 2.0 pushes a TRY_CAST of a bare column into the CSV reader as a hard cast (duckdb
        # issue 23818), so one "x" in the column failed the whole read without a line; concat() of one value
        # is that value (NULL -> '', which TRY_CAST also makes NULL) and is not simplified away
        v = f"TRY_CAST(concat({q(c)}) AS DOUBLE)"
        big = f"coalesce(isfinite({v}) AND abs({v}) >= {MAX_AMOUNT!r}, false)"
        if allow_missing:  # a blank or NaN is missing, anything else unparseable is an error
            bad = f"CASE WHEN coalesce(isfinite({v}), false) THEN false ELSE cw_clean({q(c)}) IS NOT NULL END"
        else:
            bad = f"NOT coalesce(isfinite({v}), false)"
        self.checks.append(_Check(c, f"{bad} OR {big}", f"cw_clean({q(c)})", "number", True, flag=big))
        return f"CASE WHEN isfinite({v}) THEN {v} END" if allow_missing else v

    def required_text(self, c: str) -> str:
        expr = self.text(c)
        self.checks.append(_Check(c, f"{expr} IS NULL", _NULL_TEXT, "empty", False))
        return expr

    def plan(self, keys: list[str], resources: str) -> _Plan:
        missing = [c for c in REQUIRED_FOCUS if self.col(c) is None]
        if missing:
            raise DataError(
                f"{self.src.path}: missing FOCUS column(s) {', '.join(missing)}. Expected a FOCUS 1.0–1.2 cost "
                f"export with columns {', '.join(REQUIRED_FOCUS)} (and optionally {', '.join(OPTIONAL_FOCUS)}); "
                f"found {describe_headers(self.src.headers)}"
            )
        c_start, c_end, c_billed, c_cur, c_prov, c_acct = (str(self.col(c)) for c in REQUIRED_FOCUS)
        start, end = self.time(c_start), self.time(c_end)
        self.checks.append(_Check(c_end, f"{end} <= {start}", _NULL_TEXT, f"after:{c_start}", True))
        billed = self.number(c_billed, allow_missing=False)
        c_eff = self.col("EffectiveCost")
        effective = f"coalesce({self.number(c_eff, allow_missing=True)}, {billed})" if c_eff else billed

        provider = self.required_text(c_prov)
        project_id = self.text(c_acct, "BillingAccountId")
        self.checks.append(_Check(c_acct, f"{project_id} IS NULL", _NULL_TEXT, "empty", False))
        currency = self.required_text(c_cur)
        self.checks.append(_Check(c_cur, f"NOT regexp_full_match(upper({currency}), '{CURRENCY_SHAPE}')",
                                  f"upper({currency})", "currency", False))

        row = {"cw_day": f"CAST({start} AS DATE)",
               # detection drops negative usage rows before summing (``baseline.usage_rows``): keep them apart
               "cw_negative": f"coalesce({effective} < 0, false)",
               "cw_resource": self.resource(resources)}
        final = {
            "day": "cw_day",
            "provider": provider,
            "project_id": project_id,
            "project_name": f"coalesce({self.text('SubAccountName')}, {project_id})",
            "service": self.text("ServiceName"),
            "service_category": self.text("ServiceCategory"),
            "region": self.text("RegionId", "RegionName", "AvailabilityZone"),
            "charge_category": self.text("ChargeCategory"),
            "currency": f"upper({currency})",
            "resource_id": "cw_clean(cw_resource)",
            "negative": "cw_negative",
        }
        self.owners(keys, row, final)
        return _Plan(row, self.carried, billed, effective, final, self.estimated(), self.checks, self.row_params,
                     self.final_params)

    def resource(self, resources: str) -> str:
        """The resource id per row: all, compute ones only (by ServiceCategory), or none."""
        c_res, c_cat = self.col("ResourceId"), self.col("ServiceCategory")
        if c_res is None or resources == "none" or (resources == "compute" and c_cat is None):
            return _NULL_TEXT
        if resources == "compute":
            compute = f"regexp_full_match(CAST({_quote(str(c_cat))} AS VARCHAR), '(?i){_WS_CLASS}*compute{_WS_CLASS}*')"
            return f"CASE WHEN {compute} THEN {_quote(c_res)} END"
        return _quote(c_res)

    def owners(self, keys: list[str], row: dict[str, str], final: dict[str, str]) -> None:
        """``owner_<i>`` per owner tag key, from a MAP column (per row) or JSON text (per group)."""
        c_tags = self.col("Tags")
        tags_map = c_tags is not None and self.types[c_tags].upper().startswith("MAP")
        if c_tags is not None and not tags_map and not _is_text(self.types[c_tags]):
            raise DataError(f"{where(str(self.src.path), None, c_tags)}has type {self.types[c_tags]}; expected "
                            "JSON text or a MAP of tag keys to values")
        t = _quote(c_tags) if c_tags is not None else ""
        if c_tags is not None and not tags_map:
            self.carry(c_tags)
            # JSON null is "no tags", as the literal NULL is; text that is not JSON is an error unless missing
            self.checks.append(_Check(c_tags, f"CASE WHEN json_valid({t}) THEN json_type({t}) NOT IN "
                                              f"('OBJECT', 'NULL') ELSE cw_clean({t}) IS NOT NULL END",
                                      f"cw_clean({t})", "tags", False))
        for i, key in enumerate(keys):
            if c_tags is None:
                final[f"owner_{i}"] = _NULL_TEXT
            elif tags_map:  # a MAP lookup is cheap: done per row, and the value grouped on
                row[f"cw_owner_{i}"] = f"nullif(trim(CAST(map_extract_value({t}, ?) AS VARCHAR)), '')"
                self.row_params.append(key)
                final[f"owner_{i}"] = f"cw_owner_{i}"
            else:
                # nested CASE: DuckDB's AND evaluates both sides, and json_type() fails on text that is not JSON
                final[f"owner_{i}"] = (f"CASE WHEN json_valid({t}) THEN CASE WHEN json_type({t}) = 'OBJECT' "
                                       f"THEN nullif(trim(json_extract_string({t}, ?)), '') END END")
                self.final_params.append("/" + key.replace("~", "~0").replace("/", "~1"))

    def estimated(self) -> str:
        """Whether a row is an estimate (x_Estimated / Estimated), checked as a boolean word when text."""
        c_est = self.col("x_Estimated", "Estimated")
        if c_est is None:
            return "false"
        self.carry(c_est)
        if self.types[c_est].upper() == "BOOLEAN":
            return f"coalesce({_quote(c_est)}, false)"
        flag = f"lower(cw_clean({_quote(c_est)}))"
        every = ", ".join(f"'{v}'" for v in sorted(_TRUE | _FALSE))
        self.checks.append(_Check(c_est, f"({flag} IS NOT NULL AND NOT list_contains([{every}], {flag}))", flag,
                                  "bool", False))
        return f"coalesce(list_contains([{', '.join(repr(v) for v in sorted(_TRUE))}], {flag}), false)"


# ---------------------------------------------------------------------------------------------------------
# Aggregation and error location
# ---------------------------------------------------------------------------------------------------------

_GROUP = ("day", "provider", "project_id", "project_name", "service", "service_category", "region",
          "charge_category", "currency", "resource_id", "negative")


def _any(checks: list[_Check]) -> str:
    return " OR ".join(f"coalesce({c.fails}, false)" for c in checks) or "false"


def _sql(src: _Source, plan: _Plan, keys: list[str]) -> str:
    q = _quote
    stage1_keys = [*plan.row, *(q(c) for c in plan.carried)]
    inner = ",\n    ".join([*(f"{e} AS {n}" for n, e in plan.row.items()), *(q(c) for c in plan.carried),
                            f"{plan.billed} AS cw_billed", f"{plan.effective} AS cw_effective",
                            f"{_any([c for c in plan.checks if c.per_row])} AS cw_bad"])
    final = ",\n    ".join(f"{e} AS {n}" for n, e in plan.final.items())
    group = [*_GROUP, *(f"owner_{i}" for i in range(len(keys)))]
    return (f"WITH s1 AS (\n  SELECT {', '.join(stage1_keys)}, sum(cw_billed) AS cw_billed, "
            f"sum(cw_effective) AS cw_effective, count(*) AS cw_rows, count_if(cw_bad) AS cw_bad\n"
            f"  FROM (SELECT\n    {inner}\n  FROM {src.scan})\n  GROUP BY {', '.join(stage1_keys)})\n"
            f"SELECT {', '.join(group)}, sum(cw_billed) AS billed_cost, sum(cw_effective) AS effective_cost,\n"
            f"  bool_or(cw_estimated) AS estimated, sum(cw_rows) AS n_rows,\n"
            f"  sum(cw_bad) + count_if(cw_group_bad) AS bad_rows\n"
            f"FROM (SELECT\n    {final},\n    {plan.estimated} AS cw_estimated,\n"
            f"    {_any([c for c in plan.checks if not c.per_row])} AS cw_group_bad,\n"
            f"    cw_billed, cw_effective, cw_rows, cw_bad\n  FROM s1)\n"
            f"GROUP BY {', '.join(group)}")


def _aggregate_file(con: duckdb.DuckDBPyConnection, path: Path, keys: list[str], resources: str) -> pd.DataFrame:
    import duckdb

    src = _source(con, path)
    plan = _plan(src, keys, resources)
    # parameters in the order their ? appear: stage 1's values, the scan, stage 2's values
    try:
        got = con.execute(_sql(src, plan, keys), [*plan.row_params, *src.params, *plan.final_params]).df()
    except duckdb.Error as e:
        raise _read_error(path, src.parquet, e) from e
    total = int(got["n_rows"].sum()) if len(got) else 0
    if total == 0:
        raise DataError(f"{path}: has a header but no data rows")
    if int(got["bad_rows"].sum()):
        raise _locate(con, src, plan, total)
    got = got.drop(columns=["n_rows", "bad_rows"])
    _check_finite(got, str(path), {"billed_cost": src.columns["billedcost"],
                                   "effective_cost": src.columns.get("effectivecost", src.columns["billedcost"])})
    return got


def _check_finite(df: pd.DataFrame, source: str, columns: dict[str, str]) -> None:
    """Every row's cost is finite, but a day's sum of them need not be (two costs of 1e308): refuse the file
    as the pandas loader refuses an infinite cost, rather than hand detection an infinite day."""
    for out, column in columns.items():
        bad = ~np.isfinite(df[out].to_numpy(dtype="float64"))
        if bad.any():
            day = pd.Timestamp(df["day"].iloc[int(np.flatnonzero(bad)[0])]).date()
            raise DataError(f"{where(source, None, column)}the costs of {day} add up to more than a 64-bit float "
                            "holds (the daily sum is not a finite number)")


def _read_error(path: Path, parquet: bool, e: Exception) -> DataError:
    """DuckDB's read errors in the loader's words; for a malformed CSV row, the line and the field counts."""
    text = str(e)
    if parquet:
        return DataError(f"{path}: not a readable Parquet file ({_first_line(e)})")
    line, counts = _CSV_LINE.search(text), _CSV_COUNT.search(text)
    if line and counts:
        return DataError(f"{path}, line {line.group(1)}: has {counts.group(2)} fields but the header has "
                         f"{counts.group(1)}; not a readable CSV file (a comma inside a value must be quoted)")
    if "gzip" in text.lower() or "zlib" in text.lower():
        return DataError(f"{path}: corrupt or truncated gzip file ({_first_line(e)})")
    if "unicode" in text.lower() or "utf-8" in text.lower() or "utf8" in text.lower():
        return DataError(f"{path}: not UTF-8 text; is it compressed without a .gz suffix? ({_first_line(e)})")
    return DataError(f"{path}: not a readable CSV file ({_first_line(e)})")


def _locate(con: duckdb.DuckDBPyConnection, src: _Source, plan: _Plan, total: int) -> DataError:
    """The first bad row of the first failing check, as the pandas loader would report it.

    Only run once the aggregate has counted bad rows.  Parquet has row numbers; a CSV scan does not, so it is
    read again on one thread, where ``row_number() OVER ()`` follows the file's order.
    """
    checks = plan.checks
    code = "CASE " + " ".join(f"WHEN coalesce({c.fails}, false) THEN {i}" for i, c in enumerate(checks)) + " END"
    value = "CASE cw_code " + " ".join(f"WHEN {i} THEN {c.value}" for i, c in enumerate(checks)) + " END"
    flag = "CASE cw_code " + " ".join(f"WHEN {i} THEN {c.flag}" for i, c in enumerate(checks)) + " END"
    if not src.parquet:
        con.execute("SET threads = 1")
    sql = (f"WITH c AS (SELECT {code} AS cw_code, * FROM {src.numbered})\n"
           f"SELECT cw_pos, cw_code, {value} AS cw_value, coalesce({flag}, false) AS cw_flag FROM c "
           f"WHERE cw_code IS NOT NULL ORDER BY cw_code, cw_pos LIMIT 1")
    pos, i, shown, flagged = con.execute(sql, src.params).fetchone() or (0, 0, None, False)
    check = checks[int(i)]
    line = int(pos) + 1 if src.parquet else line_of(_line_map(src.path, total), int(pos))
    return DataError(f"{where(str(src.path), line, check.column)}{_message(check, shown, bool(flagged))}")


def _message(check: _Check, shown: str | None, flagged: bool = False) -> str:
    kind = check.kind
    if kind.startswith("after:"):
        return f"must be after {kind.removeprefix('after:')}"
    if shown is None:
        return "is empty"
    if kind == "time" and flagged:
        return out_of_range_message(shown)
    if kind == "time":
        return (f"is not a timestamp: {shown[:40]!r} (the DuckDB engine reads ISO 8601 timestamps such as "
                "2024-09-01T00:00:00Z, as FOCUS requires; set engine: pandas to read other formats)")
    if kind in ("number", "finite") and flagged:
        return amount_message(shown)
    if kind == "number":
        return f"is not a number: {shown[:40]!r}"
    if kind == "finite":
        return f"is not a finite number: {shown}"
    if kind == "tags":
        return f"is not a JSON object of tags: {shown[:60]!r}"
    if kind == "currency":
        return currency_message(shown)
    if kind == "bool":
        return f"is not true/false: {shown!r}"
    return "is empty"


# ---------------------------------------------------------------------------------------------------------
# The small daily frame
# ---------------------------------------------------------------------------------------------------------

def _finish(df: pd.DataFrame, keys: list[str], merge: bool) -> pd.DataFrame:
    """Canonical spellings (with the pandas loader's own functions), summed again where two spellings or two
    files met (``merge``), in a total order, as a cost frame."""
    if df.empty:
        return empty_costs()
    owner_cols = [f"owner_{i}" for i in range(len(keys))]
    for c in (*_GROUP[1:-1], *owner_cols):
        df[c] = df[c].astype("string")
    canonical = {
        "provider": canonical_provider,
        "charge_category": _canonical({c.lower(): c for c in CHARGE_CATEGORIES}, lambda v: v.strip().title()),
        "service_category": _canonical({c.lower(): c for c in SERVICE_CATEGORIES}, lambda v: v),
    }
    for c, fn in canonical.items():
        raw = df[c]
        df[c] = map_unique(raw, fn)
        merge = merge or df[c].nunique() < raw.nunique()  # e.g. "usage" and "Usage" became one
    group = [*_GROUP, *owner_cols]
    out = df
    if merge:
        out = (df.groupby(group, dropna=False, sort=False)
               .agg(billed_cost=("billed_cost", "sum"), effective_cost=("effective_cost", "sum"),
                    estimated=("estimated", "any"))
               .reset_index())
    # a total order, so the same export gives the same frame whatever order DuckDB's threads finish in
    out = out.sort_values(group, kind="stable", na_position="first", ignore_index=True)
    if owner_cols:
        owners = out[owner_cols].astype(object)
        values = owners.where(owners.notna(), None).to_numpy().tolist()
        tags = [{k: str(v) for k, v in zip(keys, vals, strict=True) if v is not None} for vals in values]
    else:
        tags = [{} for _ in range(len(out))]
    frame = pd.DataFrame({
        "period_start": pd.to_datetime(out["day"], utc=True),
        "period_hours": 24.0,
        "provider": out["provider"],
        "project_id": out["project_id"],
        "project_name": out["project_name"],
        "service": out["service"],
        "service_category": out["service_category"],
        "region": out["region"],
        "charge_category": out["charge_category"],
        "resource_id": out["resource_id"],
        "billed_cost": out["billed_cost"].astype("float64"),
        "effective_cost": out["effective_cost"].astype("float64"),
        "currency": out["currency"],
        "tags": pd.Series(tags, index=out.index, dtype="object"),
        "estimated": out["estimated"].astype(bool),
    })
    return normalize_costs(frame)


__all__ = ["AUTO_BYTES", "available", "choose_engine", "load_focus_daily", "require", "text_bytes"]
