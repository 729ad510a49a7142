"""``cpu.cpu_matrix`` (integer cells and ``np.bincount``) against the pandas ``pivot_table`` version it
replaced, kept here as the specification: same nodes in the same order, same hours, same metadata, the
same means (to float64 rounding where a node-hour averages three or more samples: pandas sums with
compensation), NaN in the same places."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from costwatch import cpu
from costwatch.model import normalize_usage


def _pivot_spec(usage: pd.DataFrame) -> cpu.CpuMatrix:
    """The previous implementation, verbatim."""
    hour = usage["timestamp"].dt.floor("h")
    u = usage.assign(_hour=hour)
    keys = ["provider", "project", "node"]
    wide = u.pivot_table(index=keys, columns="_hour", values="cpu_utilization", aggfunc="mean", observed=True)
    hours = pd.date_range(hour.min(), hour.max(), freq="h")
    wide = wide.reindex(columns=hours)
    ids = {"instance_id": ("instance_id", "first")} if "instance_id" in u.columns else {}
    meta = (u.sort_values("_hour").groupby(keys, observed=True)
            .agg(cluster=("cluster", "first"), region=("region", "first"),
                 instance_type=("instance_type", "first"), first_seen=("_hour", "min"), **ids)
            .reindex(wide.index).reset_index())
    project_start = meta.groupby("project", observed=True)["first_seen"].transform("min")
    meta["new"] = meta["first_seen"] >= project_start + pd.Timedelta(hours=24)
    return cpu.CpuMatrix(meta, hours, wide.to_numpy(dtype="float64"))


def _usage(seed: int, per_hour: int, instance_id: bool = True, shuffle: bool = True) -> pd.DataFrame:
    """Three providers, projects whose node names repeat, nodes that start late, skip hours, report
    several samples an hour (``per_hour`` at most) or NaN, and metadata that shows up or changes later
    (constant within a node-hour, where the old sort by hour was free to pick any row)."""
    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2026-10-01 00:00", tz="UTC")
    frames = []
    for p in range(6):
        provider, project = ["aws", "gcp", "azure"][p % 3], f"proj-{p % 4}"
        for k in range(int(rng.integers(1, 7))):
            start, hours = int(rng.integers(0, 60)), int(rng.integers(1, 90))
            h = np.repeat(start + np.arange(hours), rng.integers(1, per_hour + 1, hours))
            h = h[rng.uniform(size=h.size) > 0.15]  # gaps
            minute = rng.integers(0, 60, h.size)
            later = rng.integers(start, start + hours + 1)
            frames.append(pd.DataFrame({
                "timestamp": t0 + pd.to_timedelta(h * 60 + minute, unit="min"),
                "provider": provider, "project": project, "node": f"vm-{k}",
                "cpu_utilization": np.where(rng.uniform(size=h.size) < 0.1, np.nan, rng.uniform(0, 100, h.size)),
                "cluster": np.where(h >= later, f"c{k % 2}", None),
                "region": np.where(h >= later, "us-east-1", "eu-west-1"),
                "instance_type": "m5.large" if k % 3 else None,
                **({"instance_id": np.where(h >= later + 2, f"id-{p}-{k}", None)} if instance_id else {}),
            }))
    frames.append(frames[0].assign(node="all-nan", cpu_utilization=np.nan))  # dropped: no sample at all
    df = pd.concat(frames, ignore_index=True)
    if shuffle:  # rows in any order (else each node's rows together, as providers usually send them)
        df = df.iloc[rng.permutation(len(df))].reset_index(drop=True)
    out = normalize_usage(df)
    return out if instance_id else out.drop(columns=["instance_id"])


def _same(usage: pd.DataFrame, exact: bool) -> None:
    new, old = cpu.cpu_matrix(usage), _pivot_spec(usage)
    pd.testing.assert_frame_equal(new.nodes, old.nodes)
    pd.testing.assert_index_equal(new.hours, old.hours, exact=True)
    assert new.values.shape == old.values.shape and new.values.dtype == old.values.dtype
    if exact:
        np.testing.assert_array_equal(new.values, old.values)
    else:
        np.testing.assert_allclose(new.values, old.values, rtol=1e-14, atol=0, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
def test_several_samples_per_hour_match_the_pivot(seed: int) -> None:
    _same(_usage(seed, per_hour=4, instance_id=seed % 2 == 0), exact=False)


@pytest.mark.parametrize("seed", range(4))
def test_hourly_samples_match_the_pivot_exactly(seed: int) -> None:
    _same(_usage(seed, per_hour=1, shuffle=seed % 2 == 0), exact=True)


def test_rows_grouped_by_node_match_the_pivot() -> None:
    _same(_usage(11, per_hour=3, shuffle=False), exact=False)


def test_categorical_keys_sort_by_category_order() -> None:
    """The same rows; in category order, where pandas' multi-key categorical groupby ordered node names
    within a project by first appearance (nothing downstream depends on the order)."""
    usage = _usage(7, per_hour=2)
    for col in ("provider", "project", "node"):
        cats = sorted(usage[col].dropna().unique(), reverse=True)  # not alphabetical
        usage[col] = pd.Categorical(usage[col], categories=[*cats, "unused"])
    new, old = cpu.cpu_matrix(usage), _pivot_spec(usage)
    keys = ["provider", "project", "node"]
    codes = np.stack([new.nodes[k].cat.codes.to_numpy() for k in keys], axis=1)
    assert (np.diff(codes @ np.array([100, 10, 1])) > 0).all()
    at = pd.MultiIndex.from_frame(old.nodes[keys]).get_indexer(pd.MultiIndex.from_frame(new.nodes[keys]))
    pd.testing.assert_frame_equal(new.nodes, old.nodes.iloc[at].reset_index(drop=True))
    np.testing.assert_allclose(new.values, old.values[at], rtol=1e-14, atol=0, equal_nan=True)


def test_rows_without_a_key_or_a_time_are_left_out_as_groupby_does() -> None:
    usage = _usage(8, per_hour=2)
    usage.loc[usage.index[::37], "node"] = pd.NA
    usage.loc[usage.index[5::41], "timestamp"] = pd.NaT
    _same(usage, exact=False)


def test_non_nanosecond_and_non_utc_timestamps() -> None:
    usage = _usage(9, per_hour=2)
    _same(usage.assign(timestamp=usage["timestamp"].astype("datetime64[s, UTC]")), exact=False)
    # a zone half an hour off UTC floors on its own wall clock, as dt.floor does
    _same(usage.assign(timestamp=usage["timestamp"].dt.tz_convert("Asia/Kolkata")), exact=False)


def test_no_sample_at_all() -> None:
    usage = _usage(10, per_hour=1).assign(cpu_utilization=np.nan)
    new, old = cpu.cpu_matrix(usage), _pivot_spec(usage)
    assert new.values.shape == old.values.shape == (0, len(old.hours))
    pd.testing.assert_index_equal(new.hours, old.hours)
    assert new.nodes.empty and list(new.nodes.columns) == list(old.nodes.columns)


@pytest.mark.parametrize("shuffle", [False, True])
def test_row_chunks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch, shuffle: bool) -> None:
    """Runs of a node's rows and node-hours that straddle chunk boundaries (7 rows a chunk here)."""
    usage = _usage(12, per_hour=3, shuffle=shuffle)
    usage.loc[usage.index[3::53], "node"] = pd.NA
    monkeypatch.setattr(cpu, "ROW_CHUNK", 7)
    _same(usage, exact=False)
