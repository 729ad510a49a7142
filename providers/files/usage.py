"""Read node CPU samples (CSV, CSV.gz, or a folder of them) into the usage frame.

CPU is the second half of the mining signature, and it comes from whatever the user already has
(Prometheus, CloudWatch, Cloud Monitoring exports), so the format is a deliberately small CSV:
``timestamp,provider,project,node,cpu_utilization`` plus optional
``cluster,region,instance_type,project_name,instance_id``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from costwatch.errors import DataError
from costwatch.model import REQUIRED_USAGE, empty_usage, normalize_usage

from .focus import (
    canonical_provider,
    clean_text,
    column_lookup,
    concat_frames,
    describe_headers,
    fail,
    first_true,
    input_files,
    map_unique,
    parse_numbers,
    parse_times,
    read_table,
    require_text,
)

OPTIONAL_USAGE = ("cluster", "region", "instance_type", "project_name", "instance_id")


def load_usage(path: str | Path) -> pd.DataFrame:
    """Load a usage CSV file or folder as a normalized usage frame.

    Provider names are mapped to the same ids as the cost export (``Microsoft`` -> ``azure``) so usage
    and cost join on provider.  Raises DataError naming the file, line and column of the first problem.
    """
    return concat_frames((_load_usage_file(f) for f in input_files(path)), empty_usage)


def _require_usage(path: Path, headers: list[str]) -> None:
    names = {h.strip().lower() for h in headers}
    missing = [c for c in REQUIRED_USAGE if c not in names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}. Expected a CPU usage CSV with columns "
            f"{', '.join(REQUIRED_USAGE)} (and optionally {', '.join(OPTIONAL_USAGE)}); "
            f"found {describe_headers(headers)}"
        )


def _load_usage_file(path: Path) -> pd.DataFrame:
    df, offset, headers = read_table(path, (*REQUIRED_USAGE, *OPTIONAL_USAGE), lambda h: _require_usage(path, h))
    cols = column_lookup(df)
    _require_usage(path, headers)
    if df.empty:
        raise DataError(f"{path}: has a header but no data rows")
    df = df.reset_index(drop=True)
    c = {name: cols[name] for name in (*REQUIRED_USAGE, *OPTIONAL_USAGE) if name in cols}

    cpu = parse_numbers(df[c["cpu_utilization"]], file=path, column=c["cpu_utilization"], offset=offset)
    out_of_range = (cpu < 0) | (cpu > 100)
    if out_of_range.any():
        pos = first_true(out_of_range)
        raise fail(path, pos, offset, c["cpu_utilization"],
                   f"must be a percentage between 0 and 100, got {cpu.iloc[pos]:g}")

    frame = pd.DataFrame({
        "timestamp": parse_times(df[c["timestamp"]], file=path, column=c["timestamp"], offset=offset),
        "provider": map_unique(require_text(df[c["provider"]], file=path, column=c["provider"], offset=offset),
                               canonical_provider),
        "project": require_text(df[c["project"]], file=path, column=c["project"], offset=offset),
        "node": require_text(df[c["node"]], file=path, column=c["node"], offset=offset),
        "cpu_utilization": cpu,
    })
    for name in OPTIONAL_USAGE:
        frame[name] = clean_text(df[c[name]]) if name in c else pd.Series(pd.NA, index=df.index, dtype="string")
    return normalize_usage(frame)
