"""How fast and in how much memory a large FOCUS export becomes daily rows: DuckDB path vs the pandas loader.

    python bench/warehouse.py                      # quick: a 0.2 GB export, pandas on 100 MB
    python bench/warehouse.py --gb 2               # the real measurement
    python bench/warehouse.py --gb 2 --memory-limit 1GB --format parquet

The export is made from the real FOCUS 1.0 sample (tests/data, 1,000 rows of AWS, Azure and Oracle, 44
columns, the literal ``NULL``s and JSON tags included), copied into 20 sub-accounts (20,000 series, each
resource its own) and then hour after hour, with the costs scaled by a random factor: an hourly export of a
mid-sized organization, whose daily result has about 24 times fewer rows than the file.  It is written once per size and
reused (``--dir``).

Each measurement runs in a fresh Python process, so its peak RSS (``resource.getrusage``, which includes
DuckDB's native memory) is its own.  DuckDB is given ``--memory-limit`` (its ``memory_limit`` setting; above
it, it spills to a temporary folder).  The pandas loader is measured on a smaller file of the same rows
(``--pandas-mb``), since on the big one it would exhaust the machine, and DuckDB is run on that file too so
the two compare like for like; the two daily totals per currency are checked to agree.  Nothing is asserted.

Measured on the project's 2-core box while other jobs shared it (figures move by 30% run to run):

    duckdb  2 GB CSV (2.9 M rows, 44 columns), memory_limit 1GB, 2 threads: 14-15 s = 7-7.6 s/GB, peak RSS 360-380 MB
    duckdb  same file, memory_limit 256MB, 1 thread:                     21.5 s = 10.8 s/GB, peak RSS 300 MB
    duckdb  same rows as Parquet (zstd), memory_limit 512MB:               2.7 s = 1.3 s per CSV GB, peak RSS 330 MB
    duckdb  0.5 GB CSV:  3.9-4.5 s =  8-9 s/GB, peak RSS 280-320 MB
    pandas  0.5 GB CSV: 10-20 s  = 21-39 s/GB, peak RSS 800 MB (grows ~1.4 MB per MB: a 10 GB export needs ~14 GB)
    daily totals per day and currency agree between the two loaders

The worst case for DuckDB is an export that is already daily (no two rows of a series share a day, so the
GROUP BY cannot shrink anything): ~23 s/GB, still under the pandas loader and still in bounded memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "focus-1.0-sample.csv"
ACCOUNTS = 20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def make_export(path: Path, target_bytes: int, fmt: str) -> Path:
    """Write copies of the sample until the file is about ``target_bytes`` (measured on the first 100 copies)."""
    import duckdb

    if path.exists() and info(path).exists():
        return path
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TABLE s AS SELECT row_number() OVER () - 1 AS i, * FROM read_csv(?, all_varchar = true)",
                [str(SAMPLE)])
    n = con.execute("SELECT count(*) FROM s").fetchone()[0]  # type: ignore[index]
    # every column as text, as exports are; the varied ones recomputed
    cols = [r[0] for r in con.execute("DESCRIBE s").fetchall() if r[0] != "i"]
    # copy r is hour r // ACCOUNTS of series (sample row i, account variant r % ACCOUNTS): every series has a
    # row per hour, as in an hourly export, so a day's 24 rows of a resource collapse into one
    hour = "TIMESTAMP '2024-06-01' + to_hours(CAST(r // {a} AS BIGINT))"
    varied = {
        "ChargePeriodStart": f"strftime({hour}, '%Y-%m-%d %H:%M:%S')",
        "ChargePeriodEnd": f"strftime({hour} + INTERVAL 1 HOUR, '%Y-%m-%d %H:%M:%S')",
        "SubAccountId": "SubAccountId || '-' || CAST(r % {a} AS VARCHAR)",
        "ResourceId": "CASE WHEN ResourceId = 'NULL' THEN ResourceId ELSE ResourceId || '-' || "
                      "CAST(r % {a} AS VARCHAR) END",
        "BilledCost": "CAST(round(CAST(BilledCost AS DOUBLE) * f, 10) AS VARCHAR)",
        "EffectiveCost": "CASE WHEN EffectiveCost = 'NULL' THEN EffectiveCost ELSE "
                         "CAST(round(CAST(EffectiveCost AS DOUBLE) * f, 10) AS VARCHAR) END",
    }
    select = ", ".join((varied[c].format(a=ACCOUNTS) + f' AS "{c}"') if c in varied else f'"{c}"' for c in cols)
    probe = path.with_suffix(".probe.csv")
    copy = "COPY (SELECT {select} FROM (SELECT *, 0.5 + random() AS f FROM s, range({copies}) t(r))) TO '{out}' {opts}"
    con.execute(copy.format(select=select, copies=100, out=probe, opts="(HEADER, DELIMITER ',')"))
    per_copy = probe.stat().st_size / 100
    probe.unlink()
    copies = max(1, round(target_bytes / per_copy))
    opts = "(FORMAT parquet, COMPRESSION zstd)" if fmt == "parquet" else "(HEADER, DELIMITER ',')"
    tmp = path.with_suffix(path.suffix + ".part")
    started = time.perf_counter()
    con.execute("SELECT setseed(0.42)")
    con.execute(copy.format(select=select, copies=copies, out=tmp, opts=opts))
    tmp.rename(path)
    # the same rows as CSV text, so Parquet is reported per GB of the export it stands for
    info(path).write_text(json.dumps({"rows": copies * n, "csv_bytes": round(copies * per_copy)}))
    print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB on disk, {copies * per_copy / 1e9:.2f} GB as CSV, "
          f"{copies * n:,} rows) in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def info(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def measure(engine: str, path: Path, memory_limit: str | None, threads: int | None) -> dict[str, Any]:
    """One load in this process; prints a JSON line for the parent."""
    import pandas as pd

    from costwatch.providers.files import load_focus
    from costwatch.providers.files.duckdb_focus import load_focus_daily

    started = time.perf_counter()
    if engine == "duckdb":
        frame = load_focus_daily(path, memory_limit=memory_limit, threads=threads)
    else:
        frame = load_focus(path)
    seconds = time.perf_counter() - started
    day = frame["period_start"].dt.floor("D")
    totals = frame.groupby([day.dt.strftime("%Y-%m-%d"), frame["currency"]])["billed_cost"].sum()
    made = json.loads(info(path).read_text())
    return {"engine": engine, "seconds": seconds, "rows_out": len(frame), "peak_rss_mb": peak_rss_mb(),
            "bytes": made["csv_bytes"], "rows_in": made["rows"], "disk_bytes": path.stat().st_size,
            "total": float(totals.sum()),
            "totals": {f"{d}|{c}": float(v) for (d, c), v in totals.items()},
            "pandas": pd.__version__}


def make_in_child(path: Path, target_bytes: int, fmt: str) -> Path:
    if not (path.exists() and info(path).exists()):
        subprocess.run([sys.executable, __file__, "--make", str(path), str(target_bytes), fmt], check=True)
    return path


def run_child(engine: str, path: Path, memory_limit: str | None, threads: int | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--measure", engine, str(path)]
    if memory_limit:
        cmd += ["--memory-limit", memory_limit]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def report(r: dict[str, Any]) -> str:
    gb, secs = float(r["bytes"]) / 1e9, float(r["seconds"])
    return (f"{r['engine']:>6}: {gb:6.2f} GB of CSV ({int(r['rows_in']):,} rows, {r['disk_bytes'] / 1e9:.2f} GB on "
            f"disk) in {secs:6.1f} s = {secs / gb:5.1f} s/GB, {r['rows_in'] / secs / 1e6:.2f} M rows/s, "
            f"{int(r['rows_out']):,} daily rows, peak RSS {float(r['peak_rss_mb']):,.0f} MB")


def agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    ta, tb = a["totals"], b["totals"]
    assert isinstance(ta, dict) and isinstance(tb, dict)
    return ta.keys() == tb.keys() and all(abs(ta[k] - tb[k]) <= 1e-6 * max(1.0, abs(ta[k])) for k in ta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=0.2, help="size of the big export in GB (default 0.2)")
    ap.add_argument("--pandas-mb", type=float, default=100.0, help="size of the file pandas reads (default 100)")
    ap.add_argument("--format", choices=("csv", "parquet"), default="csv")
    ap.add_argument("--memory-limit", default="1GB", help="DuckDB memory_limit (default 1GB)")
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/costwatch-warehouse"), help="where exports are kept")
    ap.add_argument("--measure", nargs=2, metavar=("ENGINE", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--make", nargs=3, metavar=("PATH", "BYTES", "FORMAT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.make:
        make_export(Path(args.make[0]), int(args.make[1]), args.make[2])
        return 0
    if args.measure:
        engine, path = args.measure
        print(json.dumps(measure(engine, Path(path), args.memory_limit, args.threads)))
        return 0

    args.dir.mkdir(parents=True, exist_ok=True)
    ext = "parquet" if args.format == "parquet" else "csv"
    # made in child processes too, so this process stays small and each measurement's peak RSS is its own
    # (Linux carries ru_maxrss across fork and exec)
    big = make_in_child(args.dir / f"focus-{args.gb:g}gb.{ext}", int(args.gb * 1e9), args.format)
    small = make_in_child(args.dir / f"focus-{args.pandas_mb:g}mb.csv", int(args.pandas_mb * 1e6), "csv")
    print(f"DuckDB memory_limit {args.memory_limit}, threads {args.threads or os.cpu_count()}", flush=True)

    duck_big = run_child("duckdb", big, args.memory_limit, args.threads)
    print(f"big export ({args.format}):\n  {report(duck_big)}", flush=True)
    duck_small = run_child("duckdb", small, args.memory_limit, args.threads)
    pandas_small = run_child("pandas", small, None, None)
    print(f"small export (csv), both loaders:\n  {report(duck_small)}\n  {report(pandas_small)}")
    ratio = float(pandas_small["seconds"]) / float(duck_small["seconds"])
    mem = float(pandas_small["peak_rss_mb"]) / float(duck_small["peak_rss_mb"])
    print(f"  pandas/duckdb: {ratio:.1f}x the time, {mem:.1f}x the peak memory; daily totals per currency "
          f"{'agree' if agree(duck_small, pandas_small) else 'DIFFER'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
