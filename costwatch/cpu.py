"""Hourly CPU per node: daily-shape bands and the flat-plateau signature of a miner.

A miner turns a node's CPU into a flat line: pinned near 100%, or held at a cap (50-75%) to hide.  Real
workloads keep their daily shape and their noise, even when traffic doubles.  So each node gets an
hour-of-day profile from its own previous days (causal), and an hour is suspicious when a short trailing
window is both flat (small spread) and well above that profile.  All of it is numpy over a nodes x hours
matrix; nothing loops over nodes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .baseline import nanmedian


@dataclass
class CpuSettings:
    pinned_level: float = 90.0
    plateau_level: float = 45.0
    min_excess: float = 20.0
    flat_tolerance: float = 3.0
    pinned_hours: int = 2
    plateau_hours: int = 6
    profile_days: int = 7
    min_profile_days: int = 3
    gpu_instance_prefixes: list[str] = field(default_factory=list)


@dataclass
class CpuMatrix:
    nodes: pd.DataFrame  # node, provider, project, cluster, region, instance_type, first_seen
    hours: pd.DatetimeIndex
    values: np.ndarray  # nodes x hours, NaN where no sample


@dataclass
class CpuFeatures:
    profile: np.ndarray  # expected CPU for this hour from the same hour on earlier days
    spread: np.ndarray  # robust spread of those earlier samples
    profile_days: np.ndarray  # how many earlier days fed the profile
    pinned: np.ndarray  # bool: window of pinned_hours flat at >= pinned_level, above profile or new
    plateau: np.ndarray  # bool: window of plateau_hours flat at >= plateau_level, well above profile
    window_mean: np.ndarray
    new_node: np.ndarray  # bool per node: first seen after its project's data began


def cpu_matrix(usage: pd.DataFrame) -> CpuMatrix:
    """Average samples into whole UTC hours and pivot to nodes x hours."""
    if usage.empty:
        empty = pd.DataFrame(columns=["node", "provider", "project", "cluster", "region", "instance_type",
                                      "first_seen", "new"])
        return CpuMatrix(empty, pd.DatetimeIndex([], tz="UTC"), np.zeros((0, 0)))
    hour = usage["timestamp"].dt.floor("h")
    u = usage.assign(_hour=hour)
    # node ids are only unique within a project (Azure VM names, GKE node names repeat across projects)
    keys = ["provider", "project", "node"]
    wide = u.pivot_table(index=keys, columns="_hour", values="cpu_utilization", aggfunc="mean", observed=True)
    hours = pd.date_range(hour.min(), hour.max(), freq="h")
    wide = wide.reindex(columns=hours)
    meta = (u.sort_values("_hour").groupby(keys, observed=True)
            .agg(cluster=("cluster", "first"), region=("region", "first"),
                 instance_type=("instance_type", "first"), first_seen=("_hour", "min"))
            .reindex(wide.index).reset_index())
    project_start = meta.groupby("project")["first_seen"].transform("min")
    meta["new"] = meta["first_seen"] >= project_start + pd.Timedelta(hours=24)
    return CpuMatrix(meta, hours, wide.to_numpy(dtype="float64"))


def _trailing(x: np.ndarray, w: int) -> np.ndarray:
    """N x T x w view of the last w samples up to and including each hour (NaN-padded)."""
    pad = np.full((x.shape[0], w - 1), np.nan)
    return np.lib.stride_tricks.sliding_window_view(np.concatenate([pad, x], axis=1), w, axis=1)


def _profile(x: np.ndarray, days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same-hour median and spread over the previous ``days`` days, and how many days were known."""
    n, t = x.shape
    lags = np.full((n, t, days), np.nan)
    for k in range(1, days + 1):  # loop over days of lag, not over nodes
        if 24 * k < t:
            lags[:, 24 * k:, k - 1] = x[:, : t - 24 * k]
    profile = nanmedian(lags)
    spread = 1.4826 * nanmedian(np.abs(lags - profile[:, :, None]))
    return profile, spread, (~np.isnan(lags)).sum(axis=2)


def _flags(x: np.ndarray, profile: np.ndarray, spread: np.ndarray, pdays: np.ndarray, new: np.ndarray,
           s: CpuSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        wp = _trailing(x, s.pinned_hours)
        wl = _trailing(x, s.plateau_hours)
        spread_l = np.nanmean(_trailing(spread, s.plateau_hours), axis=2)
        full_p = ~np.isnan(wp).any(axis=2)
        full_l = ~np.isnan(wl).any(axis=2)
        min_p = np.nanmin(wp, axis=2)
        min_l = np.nanmin(wl, axis=2)
        std_p = np.nanstd(wp, axis=2)
        std_l = np.nanstd(wl, axis=2)
        # hour-to-hour steps: a loaded service wanders even on a plateau, a throttled miner does not
        step_l = np.nanmean(np.abs(np.diff(wl, axis=2)), axis=2)
        mean_l = np.nanmean(wl, axis=2)
        range_l = np.nanmax(wl, axis=2) - min_l
        # least-squares slope per hour: a plateau holds its level, a service winding down drifts
        tc = np.arange(s.plateau_hours) - (s.plateau_hours - 1) / 2.0
        slope_l = np.nansum((wl - mean_l[:, :, None]) * tc, axis=2) / max(float((tc**2).sum()), 1.0)
        mean_p = np.nanmean(wp, axis=2)
        excess_p = mean_p - np.nanmean(_trailing(profile, s.pinned_hours), axis=2)
        prof_w = _trailing(profile, s.plateau_hours)
        excess_l = mean_l - np.nanmean(prof_w, axis=2)
        # how much a load that kept the usual shape (scaled up, like a traffic surge) would have moved
        # over the window: a plateau is only evidence where the usual shape moves and the CPU does not
        shape_l = (np.nanmax(prof_w, axis=2) - np.nanmin(prof_w, axis=2)) / np.maximum(np.nanmean(prof_w, axis=2), 1.0)
        proportional_range = mean_l * shape_l
    known = pdays >= s.min_profile_days
    need = np.maximum(s.min_excess, 3.0 * np.nan_to_num(spread_l, nan=0.0))
    # a new node pinned from its first hours is the strongest sign there is; an existing node needs a
    # tighter line and a clear excess over its usual shape, since real traffic can saturate a node for an
    # hour or two, but it keeps its noise while a miner's hourly average barely moves
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        wx = _trailing(x, s.pinned_hours)
        full_x = ~np.isnan(wx).any(axis=2)
        tight = ((np.nanmin(wx, axis=2) >= s.pinned_level) & (np.nanstd(wx, axis=2) <= s.flat_tolerance / 2)
                 & (np.nanmean(np.abs(np.diff(wx, axis=2)), axis=2) <= s.flat_tolerance / 2))
    pinned_new = full_p & (min_p >= s.pinned_level) & (std_p <= s.flat_tolerance / 2) & ~known & new[:, None]
    pinned_old = full_x & tight & known & (np.nan_to_num(excess_p, nan=0.0) >= need)
    pinned = pinned_new | pinned_old
    # flat relative to the node itself: half its usual same-hour spread, within [flat/2, flat]
    tol_l = np.clip(0.5 * np.nan_to_num(spread_l, nan=s.flat_tolerance), s.flat_tolerance / 2, s.flat_tolerance)
    plateau = (full_l & known & (min_l >= s.plateau_level) & (std_l <= tol_l)
               & (step_l <= 0.75 * tol_l) & (range_l <= 2.5 * tol_l)
               & (np.abs(slope_l) <= 0.25 * tol_l)
               & (range_l <= 0.5 * np.nan_to_num(proportional_range, nan=0.0))
               & (np.nan_to_num(excess_l, nan=0.0) >= need))
    return pinned, plateau, np.asarray(np.where(pinned, mean_p, mean_l))


def features(m: CpuMatrix, s: CpuSettings) -> CpuFeatures:
    """Two passes: the second rebuilds each profile without the hours the first pass flagged, so a miner
    that runs for days is not learned as the node's normal shape.  Both passes are causal: a flag at an
    hour depends only on that hour and earlier ones, and profiles only use earlier days."""
    x = m.values
    n = x.shape[0]
    new = m.nodes["new"].to_numpy(dtype=bool) if len(m.nodes) else np.zeros(n, dtype=bool)
    profile, spread, pdays = _profile(x, s.profile_days)
    pinned, plateau, _ = _flags(x, profile, spread, pdays, new, s)
    # mask the flagged windows (the flag at t covers the window's earlier hours too)
    w = max(s.pinned_hours, s.plateau_hours)
    flagged = _trailing((pinned | plateau)[:, ::-1].astype(float), w).max(axis=2)[:, ::-1] > 0
    profile, spread, pdays = _profile(np.where(flagged, np.nan, x), s.profile_days)
    pinned, plateau, level = _flags(x, profile, spread, pdays, new, s)
    surge = _project_surge(m, x, profile, pinned | plateau, s)
    plateau &= ~surge
    pinned &= ~(surge & ~new[:, None])
    return CpuFeatures(profile, spread, pdays, pinned, plateau, level, new)


def _project_surge(m: CpuMatrix, x: np.ndarray, profile: np.ndarray, flagged: np.ndarray, s: CpuSettings,
                   ratio: float = 1.3, min_nodes: int = 3) -> np.ndarray:
    """Hours at which most of a project's other, unflagged nodes run well above their usual shape too.

    Traffic lifts a whole pool at once and keeps each node's shape; a miner lifts the nodes it runs on
    and leaves the rest alone (or flattens them all, and then none is left unflagged).  A node that
    looks flat by chance in the middle of a project-wide surge is the surge, not a miner."""
    n, t = x.shape
    if n == 0 or not len(m.nodes):
        return np.zeros((n, t), dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        win = _trailing(x, 3)
        obs = np.nanmean(win, axis=2)
        usual = np.nanmean(_trailing(profile, 3), axis=2)
        # only nodes that still move like a service count as witnesses; flat ones may be miners not yet
        # flagged.  The usual level is floored so a quiet night's noise is not read as a surge
        moving = np.nanstd(win, axis=2) > s.flat_tolerance / 2
        rel = np.where(flagged | ~moving | np.isnan(usual), np.nan, obs / np.maximum(usual, 10.0))
    frame = pd.DataFrame(rel)
    key = m.nodes["project"].astype(str).to_numpy()
    med = frame.groupby(key).median()
    count = frame.notna().groupby(key).sum()
    proj_surge = (med >= ratio) & (count >= min_nodes)
    return proj_surge.reindex(key).to_numpy(dtype=bool)


def is_gpu(instance_type: str | None, prefixes: list[str]) -> bool:
    if not instance_type or pd.isna(instance_type):
        return False
    it = str(instance_type).lower()
    return any(it.startswith(p.lower()) for p in prefixes)


@dataclass
class NodeEpisode:
    node: str
    project: str
    provider: str
    start: pd.Timestamp  # first hour of the flat stretch
    detected_at: pd.Timestamp  # end of the hour at which the window first qualified
    last: pd.Timestamp  # last flagged hour (end)
    level: float  # median CPU over the episode
    flatness: float  # standard deviation of the CPU over the window that fired (a miner's is ~1 point)
    signal: str  # "pinned" or "plateau"
    new_node: bool
    region: str | None
    instance_type: str | None
    cluster: str | None
    baseline: float  # profile CPU at detection


def node_episodes(m: CpuMatrix, f: CpuFeatures, s: CpuSettings, gap_hours: int = 3) -> list[NodeEpisode]:
    """Runs of flagged hours per node, merged across short gaps; start walks back over the flat stretch."""
    flag = f.pinned | f.plateau
    out: list[NodeEpisode] = []
    if flag.size == 0:
        return out
    rows, cols = np.nonzero(flag)
    if rows.size == 0:
        return out
    hour = pd.Timedelta(hours=1)
    # split flagged (row, col) into episodes: new episode where row changes or gap > gap_hours
    brk = np.ones(rows.size, dtype=bool)
    brk[1:] = (rows[1:] != rows[:-1]) | (cols[1:] - cols[:-1] > gap_hours)
    starts = np.flatnonzero(brk)
    ends = np.append(starts[1:], rows.size) - 1
    x = m.values
    for a, b in zip(starts, ends, strict=True):
        i, c0, c1 = int(rows[a]), int(cols[a]), int(cols[b])
        signal = "pinned" if f.pinned[i, c0] else "plateau"
        w = s.pinned_hours if signal == "pinned" else s.plateau_hours
        first = c0 - w + 1
        seg = x[i, first: c1 + 1]
        level = float(np.nanmedian(seg))
        lo = first
        tol = 2.0 * s.flat_tolerance
        while lo - 1 >= 0 and not np.isnan(x[i, lo - 1]) and abs(x[i, lo - 1] - level) <= tol:
            lo -= 1
        meta = m.nodes.iloc[i]
        out.append(NodeEpisode(
            node=str(meta["node"]), project=str(meta["project"]), provider=str(meta["provider"]),
            start=m.hours[lo], detected_at=m.hours[c0] + hour, last=m.hours[c1] + hour, level=level,
            flatness=float(np.nanstd(x[i, max(first, 0): c0 + 1])),
            signal=signal, new_node=bool(f.new_node[i]), region=_str(meta["region"]),
            instance_type=_str(meta["instance_type"]), cluster=_str(meta["cluster"]),
            baseline=_mean(f.profile[i, max(first, 0): c0 + 1]),
        ))
    return out


def _mean(a: np.ndarray) -> float:
    """Mean of the known values, 0.0 when none (a new node has no usual CPU)."""
    ok = ~np.isnan(a)
    return float(a[ok].mean()) if ok.any() else 0.0


def _str(v: object) -> str | None:
    return None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else str(v)
