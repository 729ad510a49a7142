"""Read FOCUS 1.0–1.2 cost exports (CSV, CSV.gz, Parquet, or a folder of them) into the cost frame.

FOCUS is the one export format AWS, Azure, GCP and Oracle all produce, so reading it well covers every
cloud.  Real exports are messy: the literal string ``NULL`` for missing values, mixed-case enum values,
header names in varying case.  Every column is read as text and parsed here so that a bad value is
reported with its file, line and column instead of surfacing later as a wrong number or a pandas
traceback.

The helpers in this module (reading files, parsing columns with precise errors) are shared with
``usage.py``.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import importlib.util
import re
import threading
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from costwatch.errors import DataError, where
from costwatch.model import (
    FIRST_TIME,
    MAX_AMOUNT,
    LineMap,
    amount_message,
    empty_costs,
    line_of,
    normalize_costs,
    out_of_range_message,
    parse_tags,
    to_float,
    to_utc,
)
from costwatch.safetext import terminal_safe

# FOCUS columns costwatch needs; without them a row cannot be placed in time, money or ownership.
REQUIRED_FOCUS = ("ChargePeriodStart", "ChargePeriodEnd", "BilledCost", "BillingCurrency", "ProviderName",
                  "SubAccountId")
OPTIONAL_FOCUS = ("EffectiveCost", "ChargeCategory", "SubAccountName", "ServiceName", "ServiceCategory",
                  "RegionId", "RegionName", "AvailabilityZone", "ResourceId", "Tags", "BillingAccountId",
                  "x_Estimated")

SUFFIXES = (".csv", ".csv.gz", ".parquet")

# BillingCurrency: an ISO 4217 code is three letters (compared in upper case); anything else would start a
# currency series of its own
CURRENCY_SHAPE = "[A-Z]{3}"


def currency_message(shown: str) -> str:
    return f"is not an ISO 4217 currency code (three letters, such as USD): {terminal_safe(shown, 40)!r}"

# FOCUS ProviderName values (and common spellings) -> the short ids used everywhere else in costwatch.
PROVIDER_ALIASES: dict[str, str] = {
    "aws": "aws", "amazon": "aws", "amazon-web-services": "aws", "amazon-web-services-inc": "aws",
    "gcp": "gcp", "google": "gcp", "google-cloud": "gcp", "google-cloud-platform": "gcp",
    "azure": "azure", "microsoft": "azure", "microsoft-azure": "azure",
    "oracle": "oracle", "oci": "oracle", "oracle-cloud-infrastructure": "oracle",
}

CHARGE_CATEGORIES = ("Usage", "Purchase", "Tax", "Credit", "Adjustment")

# FOCUS 1.0–1.2 ServiceCategory values.  Detection compares categories exactly (``"Compute"``), so an
# export that writes ``compute`` must still land in the same series.
SERVICE_CATEGORIES = (
    "AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases",
    "Developer Tools", "Multicloud", "Identity", "Integration", "Internet of Things",
    "Management and Governance", "Media", "Migration", "Mobile", "Networking", "Security", "Storage",
    "Web", "Other",
)

# Every column read from a FOCUS file, including fallbacks (BillingAccountId, ServiceProviderName from 1.3).
_FOCUS_READ = frozenset({*REQUIRED_FOCUS, *OPTIONAL_FOCUS, "ServiceProviderName", "Estimated"})
# Header names an error message may show (lower case): the FOCUS columns and the usage CSV's
_KNOWN_COLUMNS = frozenset(c.lower() for c in (*_FOCUS_READ, "timestamp", "provider", "project", "node",
                                               "cpu_utilization", "cluster", "region", "instance_type"))

# Bounds on a CSV header, checked before pandas or DuckDB read the file: both build one column per header name
# before anything looks at the names (a 50,000-column header took pandas 5 s and 300 MB; a 50 MB "header" of
# garbage without a newline, minutes and gigabytes).  FOCUS has about 60 columns plus x_ extensions.
MAX_COLUMNS = 1000
HEADER_CHARS = 2**20

# Bounds on a CSV's text, checked by reading it once as bytes (``check_csv_bytes``) before either engine parses
# it: pandas holds a whole line (and a whole file) in memory, so a 1 MB .csv.gz that expands to one 1 GiB line
# took it past 3 GB.  A line may be up to MAX_LINE_BYTES (a 20 MB line of resource ids is read), and a .gz may
# expand to at most MAX_EXPANSION times its size or MIN_EXPANDED, whichever is more (FOCUS text compresses
# 5-20x; a decompression bomb, 1000x).  The same pass refuses NUL bytes (pandas cuts a field at one: "12.5\0"
# was read as 12.5) and verifies a .gz's CRC, so both engines give one verdict on a corrupt file.
MAX_LINE_BYTES = 64 * 2**20
MAX_EXPANSION = 50
MIN_EXPANDED = 256 * 2**20
_CHUNK = 2**20

_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})
_NULLS = frozenset({"", "null", "none", "nan", "n/a"})


# ---------------------------------------------------------------------------------------------------------
# Shared helpers (also used by usage.py)
# ---------------------------------------------------------------------------------------------------------

def canonical_provider(name: str) -> str:
    """Map a provider name to costwatch's id, so FOCUS ``Microsoft`` and usage ``azure`` join up."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")
    return PROVIDER_ALIASES.get(slug, slug or name.strip().lower())


def input_files(path: str | Path) -> list[Path]:
    """Expand a folder to its export files, because cloud exports arrive as many partitioned files.

    Folders are searched recursively (AWS and Azure write one sub-folder per billing period); hidden
    files and folders are skipped, and so are symlinks to folders and to files outside the folder: a folder
    is read only within itself (``links_out`` lists the files left out, for a note).
    """
    p = Path(path)
    if p.is_dir():
        root = p.resolve()
        found = sorted(f for f in _candidates(p) if _within(f, root))
        if not found:
            raise DataError(f"{p}: folder has no {', '.join('*' + s for s in SUFFIXES)} files")
        return found
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    return [p]


def _candidates(folder: Path) -> list[Path]:
    """Export files below ``folder``: recursive, hidden files and folders skipped, symlinked folders not
    followed (``rglob``)."""
    return [f for f in folder.rglob("*")
            if f.is_file() and f.name.lower().endswith(SUFFIXES)
            and not any(part.startswith(".") for part in f.relative_to(folder).parts)]


def _within(f: Path, root: Path) -> bool:
    """A symlinked file is read only if it points inside the folder, as symlinked folders are not followed."""
    return not f.is_symlink() or f.resolve().is_relative_to(root)


def links_out(path: str | Path) -> list[Path]:
    """The export files of a folder that are symlinks to somewhere outside it: not read (see input_files)."""
    p = Path(path)
    if not p.is_dir():
        return []
    root = p.resolve()
    return sorted(f for f in _candidates(p) if not _within(f, root))


def describe_headers(headers: Sequence[str], limit: int = 12) -> str:
    """What a file's header holds, for an error message, without quoting it: the file may be anything a
    config names (``costs: /etc/passwd``), so only the names costwatch reads (FOCUS and usage columns) are
    shown, and the others are counted."""
    if not headers:
        return "no columns"
    known = sorted({h.strip() for h in headers if h.strip().lower() in _KNOWN_COLUMNS}, key=str.lower)
    others = len(headers) - sum(1 for h in headers if h.strip().lower() in _KNOWN_COLUMNS)
    shown = ", ".join(known[:limit]) + (f" and {len(known) - limit} more" if len(known) > limit else "")
    count = f"{len(headers):,} column{'s' if len(headers) != 1 else ''}"
    if any(h.strip().lower().startswith(("lineitem/", "line_item_")) for h in headers):
        count += " of an AWS Cost and Usage Report (CUR), not FOCUS"
    if not known:
        return f"{count}, none of them one costwatch reads"
    return f"{count}: {shown}" + (f", and {others:,} other{'s' if others != 1 else ''}" if others else "")


class _HeaderTooLong(Exception):
    """The header record did not end within HEADER_CHARS characters."""


def _bounded_lines(fh: TextIO, budget: int) -> Iterator[str]:
    """The file's lines for csv.reader, raising _HeaderTooLong once ``budget`` characters have been read."""
    while True:
        line = fh.readline(budget + 1)
        if not line:
            return
        budget -= len(line)
        if budget < 0:
            raise _HeaderTooLong
        yield line


def read_header(path: Path) -> list[str]:
    """The header record of a CSV (or CSV.gz) file, stripped, read alone and within bounds.

    At most HEADER_CHARS characters are read, and a header of more than MAX_COLUMNS names is refused: both
    the pandas and the DuckDB reader build a column per name before anything checks them.  Blank lines
    before the header are skipped, as both readers skip them.
    """
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    header: list[str] | None = None
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            for record in csv.reader(_bounded_lines(fh, HEADER_CHARS)):
                if record and any(f.strip() for f in record):
                    header = [f.strip() for f in record]
                    break
    except _HeaderTooLong:
        raise DataError(f"{path}: no header line within the first {HEADER_CHARS // 2**20} MiB; "
                        "not a CSV cost export or usage file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text; is it compressed without a .gz suffix?") from e
    except (OSError, EOFError, zlib.error) as e:
        hint = "corrupt or truncated gzip file" if path.name.lower().endswith(".gz") else "cannot read file"
        raise DataError(f"{path}: {hint} ({_first_line(e)})") from e
    except csv.Error as e:  # e.g. one header name longer than the csv module's 128 KiB field limit
        raise DataError(f"{path}: not a readable CSV file ({_first_line(e)})") from e
    if header is None:
        raise DataError(f"{path}: file is empty; expected a header line and data rows")
    if len(header) > MAX_COLUMNS:
        raise DataError(f"{path}: the header has {len(header):,} columns, more than the {MAX_COLUMNS:,} costwatch "
                        "reads; is this a cost export or usage file?")
    return header


def check_csv_bytes(path: Path) -> None:
    """Read a CSV (or CSV.gz) once as bytes, within bounds: no line longer than MAX_LINE_BYTES, no NUL byte, a
    .gz that decompresses cleanly (CRC included) to at most ``max(MIN_EXPANDED, MAX_EXPANSION x its size)``.
    One chunk in memory at a time; errors name the file (and the line) and quote nothing from it."""
    gz = path.name.lower().endswith(".gz")
    opener: Any = gzip.open if gz else open
    budget = max(MIN_EXPANDED, MAX_EXPANSION * path.stat().st_size) if gz else None
    total = run = lines = 0  # bytes read, bytes since the last newline, newlines before this chunk
    try:
        with opener(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                nul = chunk.find(b"\0")
                if nul >= 0:
                    line = lines + chunk.count(b"\n", 0, nul) + 1
                    raise DataError(f"{where(str(path), line)}has a NUL byte; a CSV file is text (is it binary, or "
                                    "UTF-16?)")
                first, last = chunk.find(b"\n"), chunk.rfind(b"\n")
                if (run + (len(chunk) if first < 0 else first)) > MAX_LINE_BYTES:
                    raise DataError(f"{where(str(path), lines + 1)}a line longer than {MAX_LINE_BYTES // 2**20} MiB; "
                                    "not a cost export or usage file costwatch reads")
                if first >= 0:
                    lines += chunk.count(b"\n")
                    run = len(chunk) - last - 1
                else:
                    run += len(chunk)
                total += len(chunk)
                if budget is not None and total > budget:
                    raise DataError(f"{path}: expands to more than {budget // 2**20:,} MiB of text, over "
                                    f"{MAX_EXPANSION}x its compressed size; refused as a possible decompression bomb")
    except (OSError, EOFError, zlib.error) as e:
        hint = "corrupt or truncated gzip file" if gz else "cannot read file"
        raise DataError(f"{path}: {hint} ({type(e).__name__})") from e


def check_headers(path: Path, headers: Sequence[str]) -> None:
    """Refuse a column named twice (case and surrounding spaces aside): two ``BilledCost`` columns with
    different values leave the cost ambiguous.  Blank names (trailing commas) may repeat."""
    seen: set[str] = set()
    for h in headers:
        key = h.strip().lower()
        if key and key in seen:
            raise DataError(f"{path}: column {terminal_safe(h.strip(), 60)!s} appears twice in the header; "
                            "which one holds the data is ambiguous")
        seen.add(key)


def read_table(path: Path, wanted: Collection[str], require: Callable[[list[str]], None] | None = None,
               ) -> tuple[pd.DataFrame, LineMap, list[str]]:
    """Read one file's ``wanted`` columns (matched case-insensitively) as text.

    Returns the frame, the offset that turns a row index into a line number, and every header in the
    file (for error messages).  For CSV the offset is 2 (header is line 1).  Parquet has no lines, so
    the reported "line" is the 1-based row number.  All CSV columns are parsed (not ``usecols``) because
    pandas then stops rejecting rows with extra fields, and a shifted row would put money in the wrong
    column without a word.  The header is read alone first (``read_header``) to bound its size, and handed
    to ``require`` (the loader's missing-column check) before any row is read.
    """
    keep = {w.lower() for w in wanted}
    if path.name.lower().endswith(".parquet"):
        got = _read_parquet(path, keep)
        if require is not None:
            require(got[2])
        return got
    header = read_header(path)
    check_headers(path, header)
    if require is not None:
        require(header)
    check_csv_bytes(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[], encoding="utf-8-sig",
                         compression="infer")
    except pd.errors.EmptyDataError as e:
        raise DataError(f"{path}: file is empty; expected a header line and data rows") from e
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: not a readable CSV file ({_first_line(e)})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text; is it compressed without a .gz suffix?") from e
    except (OSError, EOFError, zlib.error) as e:
        hint = "corrupt or truncated gzip file" if path.name.lower().endswith(".gz") else "cannot read file"
        raise DataError(f"{path}: {hint} ({_first_line(e)})") from e
    headers = [str(c).strip() for c in df.columns]
    df.columns = headers
    lines = _line_map(path, len(df))
    # pandas pads a short row (or a file cut off after a comma) with blanks where DuckDB refuses it, and a
    # shifted row puts an account id in the wrong column.  A padded row ends in a blank, so only a file whose
    # last column has one is counted again, field by field.
    if len(df) and df.shape[1] > 1 and (df.iloc[:, -1] == "").any():
        short = _short_record(path, len(headers))
        if short is not None:
            pos, fields = short
            raise DataError(f"{where(str(path), line_of(lines, pos))}has {fields} fields but the header has "
                            f"{len(headers)}; not a readable CSV file (a short row, or a file cut off)")
    return df[[c for c in headers if c.lower() in keep]], lines, headers


def _short_record(path: Path, width: int) -> tuple[int, int] | None:
    """The first data record with fewer than ``width`` fields (its row index and field count), read with the
    csv module as ``_line_map`` reads records (blank lines skipped); None if there is none."""
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with _unlimited_csv_fields(), opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            pos = -1
            for record in csv.reader(fh):
                if not record or (len(record) <= 1 and not record[0].strip()):
                    continue  # blank line: pandas skips it too
                if pos >= 0 and len(record) < width:
                    return pos, len(record)
                pos += 1
    except csv.Error:
        return None
    return None


# The csv module's field size limit is process-wide; _line_map lifts it while it reads (see there), one thread
# at a time so that two readers never restore each other's value.  2**31 - 1: the largest every C long holds.
_FIELD_LIMIT_LOCK = threading.Lock()
_NO_FIELD_LIMIT = 2**31 - 1


@contextlib.contextmanager
def _unlimited_csv_fields() -> Iterator[None]:
    with _FIELD_LIMIT_LOCK:
        old = csv.field_size_limit(_NO_FIELD_LIMIT)
        try:
            yield
        finally:
            csv.field_size_limit(old)


def _line_map(path: Path, rows: int) -> LineMap:
    """2 (header on line 1, one line per row) unless the file has blank lines or multi-line quoted
    values; then the starting line of every record, found with the csv module as pandas reads it.

    pandas has no field size limit and has already read the file, so the csv module's 128 KiB limit would
    only stop the line count: it is lifted here.  Any other csv error falls back to 2, a best-effort line
    number, since the map only serves error messages and must never be the error itself.
    """
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
        physical = sum(1 for _ in fh)
    if physical <= rows + 1:
        return 2
    starts: list[int] = []
    try:
        with _unlimited_csv_fields(), opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            prev = 0
            header_seen = False
            for record in reader:
                start, prev = prev + 1, reader.line_num
                if not record or (all(not f.strip() for f in record) and len(record) <= 1):
                    continue  # blank line: pandas skips it too
                if not header_seen:
                    header_seen = True
                    continue
                starts.append(start)
    except csv.Error:
        return 2
    if len(starts) != rows:  # the two parsers disagree; fall back rather than name a wrong line
        return 2
    return np.asarray(starts, dtype=np.int64)


def _read_parquet(path: Path, keep: set[str]) -> tuple[pd.DataFrame, LineMap, list[str]]:
    if importlib.util.find_spec("pyarrow") is None:
        raise DataError(f"{path}: reading Parquet needs pyarrow; run `pip install costwatch[parquet]`")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        headers = list(pq.read_schema(path).names)
        check_headers(path, headers)
        _check_parquet_size(path)
        df = pd.read_parquet(path, engine="pyarrow", columns=[c for c in headers if c.strip().lower() in keep])
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataError(f"{path}: not a readable Parquet file ({_first_line(e)})") from e
    df.columns = [str(c).strip() for c in df.columns]
    return df, 1, [h.strip() for h in headers]


def _check_parquet_size(path: Path) -> None:
    """A Parquet file's data, uncompressed (as its footer states it), within the .gz bound: pandas holds it all."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    budget = max(MIN_EXPANDED, MAX_EXPANSION * path.stat().st_size)
    if size > budget:
        raise DataError(f"{path}: holds {size // 2**20:,} MiB of uncompressed data, over {MAX_EXPANSION}x its "
                        "size; refused as a possible decompression bomb (engine: duckdb streams large exports)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def column_lookup(df: pd.DataFrame) -> dict[str, str]:
    """Lower-cased header -> header as written, so ``billedcost`` and ``BilledCost`` both match."""
    out: dict[str, str] = {}
    for c in df.columns:
        out.setdefault(str(c).lower(), str(c))
    return out


def _clean_distinct(values: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """The row codes (-1 for a missing cell) and the distinct values, each cleaned as ``clean_text`` cleans."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    u = pd.Series(uniques, dtype=object).astype("string").str.strip()
    return codes, u.mask(u.str.lower().isin(_NULLS))


def clean_text(values: pd.Series) -> pd.Series:
    """Strip text and turn empty strings and ``NULL`` (any case) into NA, the one missing marker."""
    # Exports repeat a few distinct values over many rows: clean each distinct value once.
    codes, u = _clean_distinct(values)
    return pd.Series(u.array.take(codes, allow_fill=True), index=values.index, dtype="string")


def fail(file: Path, pos: int, offset: LineMap, column: str, what: str) -> DataError:
    return DataError(f"{where(str(file), line_of(offset, pos), column)}{what}")


def first_true(mask: pd.Series | np.ndarray) -> int:
    arr = mask.to_numpy(dtype=bool, na_value=True) if isinstance(mask, pd.Series) else mask
    return int(np.flatnonzero(arr)[0])


def parse_times(raw: pd.Series, *, file: Path, column: str, offset: LineMap) -> pd.Series:
    """Timestamps to UTC, with a fast ISO-8601 path; anything else goes through ``to_utc`` for its errors.

    Naive times are UTC.  Times before ``FIRST_TIME`` are refused (later ones pandas cannot parse at all).
    The fast path parses each distinct text once: an hourly export repeats every hour for each resource.
    """
    if pd.api.types.is_datetime64_any_dtype(raw):  # Parquet timestamp column
        s = raw.dt.tz_localize("UTC") if raw.dt.tz is None else raw.dt.tz_convert("UTC")
        if s.isna().any():
            raise fail(file, first_true(s.isna()), offset, column, "is empty")
        s = s.astype("datetime64[ns, UTC]").reset_index(drop=True)
        codes, distinct = None, None
    else:
        codes, distinct = _clean_distinct(raw)
        fast = _parse_iso(distinct) if (codes >= 0).all() else None
        if fast is not None:
            s = pd.Series(fast.array.take(codes), dtype="datetime64[ns, UTC]")
        else:
            text = pd.Series(distinct.array.take(codes, allow_fill=True), dtype="string")
            s = to_utc(text, file=str(file), column=column, line_offset=offset)
    early = (s < FIRST_TIME).to_numpy(dtype=bool)
    if early.any():
        pos = first_true(early)
        shown = s.iloc[pos] if codes is None or distinct is None else distinct.iloc[codes[pos]]
        raise fail(file, pos, offset, column, out_of_range_message(str(shown)))
    return s


def _parse_iso(text: pd.Series) -> pd.Series | None:
    """ISO 8601 text to UTC, vectorized, or None if any value is not ISO 8601 (or is missing).

    pandas' ISO 8601 parser (2.x) reads a naive time that follows one with a UTC offset as if it had that
    offset: two exports concatenated, one with offsets and one without, would put naive hours on the wrong
    day.  So values mixing the two (told apart by ``_has_offset``) are parsed as two columns, the zoned and the
    naive values apart, each still in one vectorized pass.
    """
    zoned = _has_offset(text)
    groups = [text[zoned], text[~zoned]] if zoned.any() and not zoned.all() else [text]
    parts = []
    for group in groups:
        try:
            parsed = pd.to_datetime(group, format="ISO8601", utc=True)
        except (ValueError, TypeError, OverflowError):
            return None
        if parsed.isna().any():
            return None
        parts.append(parsed)
    out = parts[0] if len(parts) == 1 else pd.concat(parts).reindex(text.index)
    return out.astype("datetime64[ns, UTC]")


def _has_offset(text: pd.Series) -> np.ndarray:
    """Whether each ISO 8601 time carries its UTC offset: it ends in Z, or a + or - follows the date's T (or
    space).  Every zone form pandas' ISO 8601 parser reads (Z, ±HH, ±HHMM, ±HH:MM, after an optional space)
    has one, and the "-" of a naive time's date comes before the T.  Text that is not ISO 8601 at all fails
    the fast path whatever it is told.  numpy string functions rather than a regular expression: a search
    anchored at the end scans every position, 2 s per million distinct values against 0.1 s."""
    a = text.to_numpy(dtype=str, na_value="")
    sep = np.char.find(a, "T")
    for c in (" ", "t"):
        sep = np.where(sep < 0, np.char.find(a, c), sep)
    sign = np.maximum(np.char.rfind(a, "+"), np.char.rfind(a, "-"))
    return np.asarray(np.char.endswith(a, "Z") | ((sep >= 0) & (sign > sep)), dtype=bool)


def parse_numbers(raw: pd.Series, *, file: Path, column: str, offset: LineMap,
                  allow_missing: bool = False, limit: float | None = None) -> pd.Series:
    """Floats, rejecting text, infinities, magnitudes of ``limit`` or more and (unless allowed) blanks, so
    money is never silently zero or infinite."""
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        vals = raw.astype("float64").reset_index(drop=True)
        arr = vals.to_numpy()
        big = np.zeros(len(arr), dtype=bool) if limit is None else np.abs(np.nan_to_num(arr, nan=0.0)) >= limit
        bad = np.isinf(arr) | big | (vals.isna().to_numpy() & (not allow_missing))
        if bad.any():
            pos = first_true(bad)
            value = vals.iloc[pos]
            what = ("is empty" if np.isnan(value) else f"is not a finite number: {value}" if np.isinf(value)
                    else amount_message(f"{value:g}"))
            raise fail(file, pos, offset, column, what)
        return vals
    return to_float(clean_text(raw).reset_index(drop=True), file=str(file), column=column,
                    line_offset=offset, allow_missing=allow_missing, limit=limit)


def require_text(values: pd.Series, *, file: Path, column: str, offset: LineMap) -> pd.Series:
    """A text column that must be filled on every row (ids, currency): a blank would orphan the cost."""
    s = clean_text(values).reset_index(drop=True)
    if s.isna().any():
        raise fail(file, first_true(s.isna()), offset, column, "is empty")
    return s


def map_unique(values: pd.Series, fn: Callable[[str], str]) -> pd.Series:
    """Apply ``fn`` once per distinct value: exports repeat a handful of values over millions of rows."""
    uniq = values.dropna().unique()
    table = {v: fn(str(v)) for v in uniq}
    return values.map(table).astype("string")


def concat_frames(frames: Iterable[pd.DataFrame], empty: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """One frame from many files; ``empty()`` keeps the schema when there is nothing to read."""
    parts = [f for f in frames if len(f)]
    if not parts:
        return empty()
    if len(parts) == 1:
        return parts[0]
    return pd.concat(parts, ignore_index=True)


def _canonical(table: Mapping[str, str], fallback: Callable[[str], str]) -> Callable[[str], str]:
    """Spell known enum values the FOCUS way whatever their case (``usage`` -> ``Usage``)."""

    def fn(v: str) -> str:
        return table.get(v.lower(), fallback(v))
    return fn


# ---------------------------------------------------------------------------------------------------------
# FOCUS
# ---------------------------------------------------------------------------------------------------------

def load_focus(path: str | Path) -> pd.DataFrame:
    """Load a FOCUS export file or folder as a normalized cost frame (rows stay at their export grain).

    Raises DataError naming the file, line and column of the first problem.
    """
    return concat_frames((_load_focus_file(f) for f in input_files(path)), empty_costs)


def _require_focus(path: Path, headers: Sequence[str]) -> None:
    """Refuse a file without the required FOCUS columns (or their fallbacks), before any row is read."""
    names = {h.strip().lower() for h in headers}
    fallbacks = {"ProviderName": ("ServiceProviderName",), "SubAccountId": ("BillingAccountId",)}
    missing = [c for c in REQUIRED_FOCUS if not any(n.lower() in names for n in (c, *fallbacks.get(c, ())))]
    if missing:
        raise DataError(
            f"{path}: missing FOCUS column(s) {', '.join(missing)}. Expected a FOCUS 1.0–1.2 cost export with "
            f"columns {', '.join(REQUIRED_FOCUS)} (and optionally {', '.join(OPTIONAL_FOCUS)}); "
            f"found {describe_headers(headers)}"
        )


def _load_focus_file(path: Path) -> pd.DataFrame:
    df, offset, headers = read_table(path, _FOCUS_READ, lambda h: _require_focus(path, h))
    cols = column_lookup(df)

    def col(*names: str) -> str | None:
        return next((cols[n.lower()] for n in names if n.lower() in cols), None)

    # SubAccountId is optional in FOCUS for single-account exports; the billing account then owns the cost.
    # ServiceProviderName replaces ProviderName from FOCUS 1.3.
    resolved = {
        "ChargePeriodStart": col("ChargePeriodStart"),
        "ChargePeriodEnd": col("ChargePeriodEnd"),
        "BilledCost": col("BilledCost"),
        "BillingCurrency": col("BillingCurrency"),
        "ProviderName": col("ProviderName", "ServiceProviderName"),
        "SubAccountId": col("SubAccountId", "BillingAccountId"),
    }
    _require_focus(path, headers)
    if df.empty:
        raise DataError(f"{path}: has a header but no data rows")
    df = df.reset_index(drop=True)
    c_start, c_end, c_billed, c_cur, c_prov, c_acct = (str(resolved[k]) for k in resolved)

    def opt(*names: str) -> pd.Series:
        """First non-missing value across fallback columns, so RegionId -> RegionName -> AvailabilityZone."""
        out = pd.Series(pd.NA, index=df.index, dtype="string")
        for n in names:
            c = col(n)
            if c is not None:
                out = out.fillna(clean_text(df[c]))
        return out

    start = parse_times(df[c_start], file=path, column=c_start, offset=offset)
    end = parse_times(df[c_end], file=path, column=c_end, offset=offset)
    hours = (end - start).dt.total_seconds() / 3600.0
    if (hours <= 0).any():
        raise fail(path, first_true(hours <= 0), offset, c_end, f"must be after {c_start}")

    billed = parse_numbers(df[c_billed], file=path, column=c_billed, offset=offset, limit=MAX_AMOUNT)
    c_eff = col("EffectiveCost")
    effective = (parse_numbers(df[c_eff], file=path, column=c_eff, offset=offset, allow_missing=True,
                               limit=MAX_AMOUNT)
                 .fillna(billed) if c_eff else billed)

    provider = map_unique(require_text(df[c_prov], file=path, column=c_prov, offset=offset), canonical_provider)
    # A row without a sub-account (e.g. a tax line) belongs to the billing account.
    project_id = opt(c_acct, "BillingAccountId")
    if project_id.isna().any():
        raise fail(path, first_true(project_id.isna()), offset, c_acct, "is empty")
    currency = require_text(df[c_cur], file=path, column=c_cur, offset=offset).str.upper()
    bad_currency = ~currency.str.fullmatch(CURRENCY_SHAPE).to_numpy(dtype=bool, na_value=False)
    if bad_currency.any():
        pos = first_true(bad_currency)
        raise fail(path, pos, offset, c_cur, currency_message(str(currency.iloc[pos])))

    charge = map_unique(opt("ChargeCategory"),
                        _canonical({c.lower(): c for c in CHARGE_CATEGORIES}, lambda v: v.strip().title()))
    category = map_unique(opt("ServiceCategory"),
                          _canonical({c.lower(): c for c in SERVICE_CATEGORIES}, lambda v: v))

    c_tags = col("Tags")
    tags = _parse_tag_column(df[c_tags], path, c_tags, offset) if c_tags else [{} for _ in range(len(df))]
    c_est = col("x_Estimated", "Estimated")
    estimated = (_parse_bool(df[c_est], path, c_est, offset) if c_est
                 else pd.Series(False, index=df.index))

    frame = pd.DataFrame({
        "period_start": start,
        "period_hours": hours,
        "provider": provider,
        "project_id": project_id,
        "project_name": opt("SubAccountName").fillna(project_id),
        "service": opt("ServiceName"),
        "service_category": category,
        "region": opt("RegionId", "RegionName", "AvailabilityZone"),
        "charge_category": charge,
        "resource_id": opt("ResourceId"),
        "billed_cost": billed,
        "effective_cost": effective,
        "currency": currency,
        "tags": pd.Series(tags, index=df.index, dtype="object"),
        "estimated": estimated,
    })
    return normalize_costs(frame)


def _parse_tag_column(raw: pd.Series, path: Path, column: str, offset: LineMap) -> list[dict[str, str]]:
    """Tags as dicts; values repeat heavily, so each distinct JSON text is decoded once."""
    cache: dict[str, dict[str, str]] = {}
    out: list[dict[str, str]] = []
    for pos, value in enumerate(raw.tolist()):
        if isinstance(value, list):  # Parquet MAP columns arrive as a list of (key, value) pairs
            value = dict(value)
        if isinstance(value, str):
            hit = cache.get(value)
            if hit is None:
                try:
                    hit = cache[value] = parse_tags(value)
                except (ValueError, TypeError) as e:
                    raise fail(path, pos, offset, column,
                               f"is not a JSON object of tags ({e}): {value[:60]!r}") from e
            out.append(dict(hit))
            continue
        try:
            out.append(parse_tags(value))
        except (ValueError, TypeError) as e:
            raise fail(path, pos, offset, column, f"is not a JSON object of tags: {str(value)[:60]!r}") from e
    return out


def _parse_bool(raw: pd.Series, path: Path, column: str, offset: LineMap) -> pd.Series:
    if pd.api.types.is_bool_dtype(raw):
        return raw.fillna(False).astype(bool).reset_index(drop=True)
    text = clean_text(raw).str.lower().reset_index(drop=True)
    bad = text.notna() & ~text.isin(_TRUE | _FALSE)
    if bad.any():
        pos = first_true(bad)
        raise fail(path, pos, offset, column, f"is not true/false: {text.iloc[pos]!r}")
    return text.isin(_TRUE).fillna(False).astype(bool)
