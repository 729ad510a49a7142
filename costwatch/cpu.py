"""Hourly CPU per node: daily-shape bands and the flat-plateau signature of a miner.

A miner turns a node's CPU into a flat line: pinned near 100%, or held at a cap (50-75%) to hide.  Real
workloads keep their daily shape and their noise, even when traffic doubles.  So each node gets an
hour-of-day profile from its own previous days (causal), and an hour is suspicious when a short trailing
window is both flat (small spread) and well above that profile.  All of it is numpy over blocks of nodes
laid out hours x nodes in float32: profiles are min/max median networks over one shifted view per day of
lag, window statistics sums and min/max over shifted views; nothing loops over nodes or hours.  The second
pass runs only for nodes the first flagged, the project-surge check only where a node is flagged.
100,000 nodes x 28 days of hourly CPU take ~10 s on the project's 2-core box (7M node-hours/s; the
tensor version this replaced did ~0.15M), with the same flags (tests/test_cpu.py, bench/scale.py).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .baseline import elementwise_median


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
    episode: np.ndarray  # bool: inside an open episode (from a flag until the CPU is back to its profile)


ROW_CHUNK = 1 << 16  # rows at once in cpu_matrix: temporaries of 64k rows, not of the whole frame
NODE_KEYS = ["provider", "project", "node"]  # node ids are only unique within a project
META_COLUMNS = ["cluster", "region", "instance_type"]


def cpu_matrix(usage: pd.DataFrame) -> CpuMatrix:
    """Average samples into whole UTC hours and lay them out nodes x hours.

    The pandas ``pivot_table`` this replaces cost ~1.7 us of CPU per sample (~111 s for 100k nodes x 28
    days); here each row becomes an integer cell (node rank x hours + hour) and the means are sums and
    counts over the flat cells by ``np.add.at`` (unbuffered, fast since numpy 1.25), a chunk of rows at a
    time so no whole-frame temporaries are held.  Same output
    (tests/test_cpu_matrix.py): nodes sorted by (provider, project, node), a node only if it has a
    sample, NaN where a node-hour has none, metadata the first non-null value in hour order (ties within
    an hour: the first row), means to float64 rounding (pandas sums with compensation)."""
    if usage.empty:
        empty = pd.DataFrame(columns=["node", "provider", "project", "cluster", "region", "instance_type",
                                      "first_seen", "new"])
        return CpuMatrix(empty, pd.DatetimeIndex([], tz="UTC"), np.zeros((0, 0)))
    node, keys = _node_ranks(usage)
    hours, hidx = _hour_index(usage["timestamp"])
    n, t = len(keys), len(hours)
    values = _hour_means(node, hidx, usage["cpu_utilization"], n, t)
    keep = np.flatnonzero(~np.isnan(values).all(axis=1))  # pivot_table drops a node without one sample
    first, first_hour = _first_rows(node, hidx, None, n, t)
    meta = keys.iloc[keep].reset_index(drop=True)
    for col in [*META_COLUMNS, "first_seen", *(["instance_id"] if "instance_id" in usage.columns else [])]:
        if col == "first_seen":  # (hours may be finer than the timestamps)
            meta[col] = hours[first_hour[keep]].astype(usage["timestamp"].dtype)
        else:
            meta[col] = _first_value(usage[col], node, hidx, first, t).iloc[keep].reset_index(drop=True)
    project_start = meta.groupby("project", observed=True)["first_seen"].transform("min")
    meta["new"] = meta["first_seen"] >= project_start + pd.Timedelta(hours=24)
    return CpuMatrix(meta, hours, values if len(keep) == n else values[keep])


def _node_ranks(usage: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Per row, the rank of its (provider, project, node) among the distinct keys in groupby's order (-1
    where a key is missing: groupby drops it), and those keys.  The three codes are combined in mixed
    radix (their product of distinct counts is far below 2**63), a chunk of rows at a time, then ranked."""
    codes = [_sorted_codes(usage[k]) for k in NODE_KEYS]

    def combined(a: int) -> np.ndarray:
        code = np.zeros(min(ROW_CHUNK, len(usage) - a), dtype=np.int64)
        bad = np.zeros(code.shape, dtype=bool)
        for c, decode in codes:
            part = c[a: a + ROW_CHUNK]
            bad |= part < 0
            code *= len(decode)
            code += part
        code[bad] = -1
        return code

    rank, distinct = _rank(combined, len(usage))
    if len(distinct) and distinct[0] == -1:  # rows without a key rank first: drop them
        rank -= 1
        distinct = distinct[1:]
    parts = {}
    for k, (_, decode) in zip(NODE_KEYS[::-1], codes[::-1], strict=True):
        distinct, c = np.divmod(distinct, len(decode))
        parts[k] = decode.take(c)
    return rank, pd.DataFrame({k: parts[k] for k in NODE_KEYS})


def _sorted_codes(col: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Codes in groupby's sort order (-1 missing) and the index that decodes them: a categorical's own
    codes (groupby sorts by category order; unseen categories vanish in the ranking), else a sorted
    ``pd.factorize``."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy(), pd.CategoricalIndex(col.cat.categories, dtype=col.dtype)
    c, u = pd.factorize(col, sort=True)
    return c, pd.Index(u)


def _rank(chunk: Callable[[int], np.ndarray], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense rank (int32 where it fits) of each row's value (``chunk(a)``: rows a to a + ROW_CHUNK) among
    the sorted distinct values.  Providers return a node's samples together, so values come in runs:
    hashing one value per run is far cheaper, and the whole int64 column is never held; rows in no
    order are hashed whole."""
    starts, values, last, count = [], [], None, 0
    for a in range(0, rows, ROW_CHUNK):
        code = chunk(a)
        edge = np.flatnonzero(code[1:] != code[:-1]) + 1
        if last is None or code[0] != last:
            edge = np.concatenate(([0], edge))
        starts.append(edge + a)
        values.append(code[edge])
        last, count = code[-1], count + len(edge)
        if count > rows // 8:
            break
    else:
        r, distinct = pd.factorize(np.concatenate(values), sort=True)
        lengths = np.diff(np.append(np.concatenate(starts), rows))
        return np.repeat(r.astype(_index_dtype(len(distinct)), copy=False), lengths), np.asarray(distinct)
    r, distinct = pd.factorize(np.concatenate([chunk(a) for a in range(0, rows, ROW_CHUNK)]), sort=True)
    return r.astype(_index_dtype(len(distinct)), copy=False), np.asarray(distinct)


def _index_dtype(n: int) -> type[np.signedinteger]:
    return np.int32 if n < 2**31 else np.int64


def _hour_index(ts: pd.Series) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """The whole hours from the first sample's to the last's, and each row's position among them (int32,
    ``len(hours)`` for a missing timestamp).  UTC (or naive) times are floored as integers, a chunk at a
    time; another zone on its wall clock, as ``dt.floor`` does."""
    unit = ts.array.unit
    step = int(np.timedelta64(1, "h") // np.timedelta64(1, unit))
    nat, big = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    tz = ts.dt.tz
    utc = tz is None or str(tz) == "UTC"
    raw = ts.array.asi8 if utc else ts.dt.floor("h").array.asi8
    valid = raw != nat
    if not valid.any():
        return pd.DatetimeIndex([], tz=tz), np.zeros(len(ts), dtype=np.int32)
    lo, hi = int(raw.min(where=valid, initial=big)), int(raw.max(where=valid, initial=nat))
    base = lo // step * step if utc else lo  # (a zone's wall-clock hours need not be whole UTC hours)
    ends = [pd.Timestamp(np.datetime64(base + k * step, unit)).tz_localize("UTC").tz_convert(tz)
            for k in (0, (hi - base) // step)]
    hours = pd.date_range(ends[0], ends[1], freq="h")
    out = np.empty(len(ts), dtype=np.int32)
    for a in range(0, len(ts), ROW_CHUNK):
        b = a + ROW_CHUNK
        if utc:  # (% on int64 is ~10x slower than //, and not needed)
            h = (raw[a:b] - base) // step
            h[~valid[a:b]] = len(hours)
        else:
            h, rest = np.divmod(raw[a:b] - base, step)
            h[~valid[a:b] | (rest != 0)] = len(hours)
        out[a:b] = h
    return hours, out


def _cells(node: np.ndarray, hidx: np.ndarray, t: int, width: int, a: int) -> np.ndarray:
    """Flat cell (node x width + hour, int64) of rows a to a + ROW_CHUNK; -1 for a row without a key."""
    nd = node[a: a + ROW_CHUNK]
    c = nd.astype(np.int64)
    c *= width
    c += hidx[a: a + ROW_CHUNK]
    c[nd < 0] = -1
    return c


def _hour_means(node: np.ndarray, hidx: np.ndarray, cpu: pd.Series, n: int, t: int) -> np.ndarray:
    """Mean of the known samples per node-hour (nodes x hours, NaN where none): sums and counts over
    the flat cells by ``np.add.at`` (unbuffered, fast since numpy 1.25), a chunk of rows at a time."""
    x = cpu.to_numpy(dtype=np.float64, na_value=np.nan)
    sums = np.zeros(n * t)
    counts = np.zeros(n * t, dtype=np.int32)
    for a in range(0, len(x), ROW_CHUNK):
        c, v = _cells(node, hidx, t, t, a), x[a: a + ROW_CHUNK]
        ok = (c >= 0) & (hidx[a: a + ROW_CHUNK] < t) & ~np.isnan(v)
        if not ok.all():
            c, v = c[ok], v[ok]
        np.add.at(sums, c, v)
        np.add.at(counts, c, np.int32(1))  # (a Python 1 takes the slow path: 20x)
    with np.errstate(invalid="ignore"):  # no sample: 0 / 0 = NaN
        np.divide(sums, counts, out=sums)
    return sums.reshape(n, t)


def _first_rows(node: np.ndarray, hidx: np.ndarray, rows: np.ndarray | None, n: int, t: int,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per node, the first of ``rows`` (ascending positions, None: every row) in its earliest hour (-1 for
    none), and that hour.  A missing timestamp (``hidx == t``) counts as after every hour, where sorting
    by hour puts it; a row without a key (node -1) counts for no node."""
    nd, hr = (node, hidx) if rows is None else (node[rows], hidx[rows])
    seen = np.zeros(n * (t + 1), dtype=bool)
    for a in range(0, len(nd), ROW_CHUNK):
        c = _cells(nd, hr, t, t + 1, a)
        seen[c[c >= 0]] = True
    first_hour = seen.reshape(n, t + 1).argmax(axis=1).astype(np.int32)
    del seen
    at = np.concatenate([a + np.flatnonzero((nd[a: a + ROW_CHUNK] >= 0)
                                            & (hr[a: a + ROW_CHUNK] == first_hour[nd[a: a + ROW_CHUNK]]))
                         for a in range(0, len(nd), ROW_CHUNK)])
    cand = at if rows is None else rows[at]
    out = np.full(n, -1, dtype=np.int64)
    which, pos = np.unique(node[cand], return_index=True)
    out[which] = cand[pos]
    return out, first_hour


def _first_value(col: pd.Series, node: np.ndarray, hidx: np.ndarray, first: np.ndarray, t: int) -> pd.Series:
    """Per node, the column's first non-null value in hour order (groupby ``first`` after sorting by hour).
    Usually the node's first row has it; only nodes where it is null look further."""
    out = col.iloc[np.maximum(first, 0)].reset_index(drop=True)
    need = out.isna().to_numpy() & (first >= 0)
    if need.any():
        rows = np.flatnonzero(col.notna().to_numpy() & need[node] & (node >= 0))
        if rows.size:
            later, _ = _first_rows(node, hidx, rows, len(first), t)
            fill = np.flatnonzero(later >= 0)
            out.iloc[fill] = col.iloc[later[fill]].to_numpy()
    return out


CHUNK_NODES = 256  # nodes per block: a block's hours x nodes float32 arrays stay in cache
SURGE_CELLS = 1 << 21  # node-hours of the surge check at once


def _lagged(a: np.ndarray, w: int) -> list[np.ndarray]:
    """The w hours up to and including each hour, as w views of a day-major (hours x nodes) array:
    ``out[i][t] = a[t - w + 1 + i]``, NaN before the first hour."""
    ap = np.empty((a.shape[0] + w - 1, *a.shape[1:]), dtype=a.dtype)
    ap[: w - 1] = np.nan
    ap[w - 1:] = a
    return [ap[i: i + a.shape[0]] for i in range(w)]


def _nanmean(views: list[np.ndarray]) -> np.ndarray:
    """Elementwise mean ignoring NaN: a plain sum, then only the cells with a NaN input are redone."""
    tot = _chain(np.add, views)
    tot /= len(views)
    bad = np.flatnonzero(np.isnan(tot))
    if bad.size:
        sub = np.stack([np.take(v, bad) for v in views], axis=-1)
        known = ~np.isnan(sub)
        with np.errstate(invalid="ignore", divide="ignore"):  # no known value: NaN
            tot.reshape(-1)[bad] = np.where(known, sub, 0.0).sum(axis=-1) / known.sum(axis=-1)
    return tot


def _chain(f: np.ufunc, views: list[np.ndarray]) -> np.ndarray:
    out = views[0].copy()
    for v in views[1:]:
        f(out, v, out=out)
    return out


def _profile(xt: np.ndarray, days: int, gappy: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same-hour median and spread over the previous ``days`` days, and how many days were known
    (hours x nodes): one view per day of lag, medians by elementwise networks."""
    t = xt.shape[0]
    pad = 24 * days
    xp = np.full((pad + t, xt.shape[1]), np.nan, dtype=np.float32)
    xp[pad:] = xt
    lags = [xp[pad - 24 * k: pad - 24 * k + t] for k in range(1, days + 1)]
    starts = [24 * k for k in range(1, days + 1)]  # hour t has lag k from t = 24 k on
    profile = elementwise_median(lags, starts, gappy)
    spread = elementwise_median([np.abs(v - profile) for v in lags], starts, gappy)
    spread *= 1.4826
    pdays = np.zeros(xt.shape, dtype=np.int16)
    for v in lags:
        pdays += ~np.isnan(v)
    return profile, spread, pdays


def _flags(x: np.ndarray, profile: np.ndarray, spread: np.ndarray, pdays: np.ndarray, new: np.ndarray,
           s: CpuSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pinned and plateau flags and the window's mean, hours x nodes.  Window statistics of the CPU are
    only used where the window is complete (a flag needs it), so they are plain sums and min/max over
    shifted views; those of the profile and its spread ignore NaN, as a new node's profile has gaps."""
    ft = s.flat_tolerance
    with np.errstate(invalid="ignore", divide="ignore"):
        wp = _lagged(x, s.pinned_hours)
        wl = _lagged(x, s.plateau_hours)
        spread_l = _nanmean(_lagged(spread, s.plateau_hours))
        sum_p = _chain(np.add, wp)
        full_p = ~np.isnan(sum_p)
        mean_p = sum_p / s.pinned_hours
        min_p = _chain(np.minimum, wp)
        std_p = np.sqrt(_chain(np.add, [(v - mean_p) ** 2 for v in wp]) / s.pinned_hours)
        # (a one-hour window has no step: NaN, so only a new node can be flagged pinned from one hour)
        step_p = (_chain(np.add, [np.abs(b - a) for a, b in itertools.pairwise(wp)]) / (s.pinned_hours - 1)
                  if s.pinned_hours > 1 else np.full_like(mean_p, np.nan))
        full_l = ~np.isnan(_chain(np.add, wl))
        mean_l = _nanmean(wl)  # the window mean is reported for every hour
        min_l = _chain(np.minimum, wl)
        range_l = _chain(np.maximum, wl) - min_l
        std_l = np.sqrt(_chain(np.add, [(v - mean_l) ** 2 for v in wl]) / s.plateau_hours)
        # hour-to-hour steps: a loaded service wanders even on a plateau, a throttled miner does not
        step_l = (_chain(np.add, [np.abs(b - a) for a, b in itertools.pairwise(wl)]) / (s.plateau_hours - 1)
                  if s.plateau_hours > 1 else np.full_like(mean_l, np.nan))
        # least-squares slope per hour: a plateau holds its level, a service winding down drifts
        tc = np.arange(s.plateau_hours) - (s.plateau_hours - 1) / 2.0
        slope_l = _chain(np.add, [(v - mean_l) * float(c) for v, c in zip(wl, tc, strict=True)])
        slope_l /= max(float((tc**2).sum()), 1.0)
        excess_p = mean_p - _nanmean(_lagged(profile, s.pinned_hours))
        prof_w = _lagged(profile, s.plateau_hours)
        prof_mean = _nanmean(prof_w)
        excess_l = mean_l - prof_mean
        # how much a load that kept the usual shape (scaled up, like a traffic surge) would have moved
        # over the window: a plateau is only evidence where the usual shape moves and the CPU does not
        shape_l = (_chain(np.fmax, prof_w) - _chain(np.fmin, prof_w)) / np.maximum(prof_mean, 1.0)
        proportional_range = mean_l * shape_l
        known = pdays >= s.min_profile_days
        need = np.maximum(s.min_excess, 3.0 * np.nan_to_num(spread_l, nan=0.0))
        # a new node pinned from its first hours is the strongest sign there is; an existing node needs a
        # tighter line and a clear excess over its usual shape, since real traffic can saturate a node for an
        # hour or two, but it keeps its noise while a miner's hourly average barely moves
        flat_p = full_p & (min_p >= s.pinned_level) & (std_p <= ft / 2)
        pinned_new = flat_p & ~known & new[None, :]
        pinned_old = flat_p & (step_p <= ft / 2) & known & (np.nan_to_num(excess_p, nan=0.0) >= need)
        pinned = pinned_new | pinned_old
        # flat relative to the node itself: half its usual same-hour spread, within [flat/2, flat]
        tol_l = np.clip(0.5 * np.nan_to_num(spread_l, nan=ft), ft / 2, ft)
        plateau = (full_l & known & (min_l >= s.plateau_level) & (std_l <= tol_l)
                   & (step_l <= 0.75 * tol_l) & (range_l <= 2.5 * tol_l)
                   & (np.abs(slope_l) <= 0.25 * tol_l)
                   & (range_l <= 0.5 * np.nan_to_num(proportional_range, nan=0.0))
                   & (np.nan_to_num(excess_l, nan=0.0) >= need))
    return pinned, plateau, np.where(pinned, mean_p, mean_l)


def _block(xt: np.ndarray, new: np.ndarray, s: CpuSettings) -> tuple[np.ndarray, ...]:
    """Both passes for one block of nodes, hours x nodes: the second only for nodes the first flagged.

    The second pass masks every hour of every episode the first found, from its window to the hour the
    node's CPU came back to its profile (``_open_episodes``), not just the flagged hours: a miner that runs
    for weeks stops being flagged by the first pass once it fills its own profile, so masking only the
    flags would let the plateau back in.  Where the masked history leaves too few days, the profile and
    spread from before the episode are carried forward per hour of day (``_carry``)."""
    gappy = bool(np.isnan(xt).any())
    profile, spread, pdays = _profile(xt, s.profile_days, gappy)
    pinned, plateau, level = _flags(xt, profile, spread, pdays, new, s)
    hit = np.flatnonzero((pinned | plateau).any(axis=0))
    if hit.size:
        xh = np.ascontiguousarray(xt[:, hit])
        # mask the flagged windows (the flag at t covers the window's earlier hours too) and the open episodes
        flag = pinned[:, hit] | plateau[:, hit]
        masked = flag | _open_episodes(xh, flag, level[:, hit], profile[:, hit], s)
        for i in range(1, max(s.pinned_hours, s.plateau_hours)):
            masked[:-i] |= flag[i:]
        p2, s2, d2 = _carry(*_profile(np.where(masked, np.nan, xh), s.profile_days, True), s.min_profile_days)
        f2 = _flags(xh, p2, s2, d2, new[hit], s)
        # explicit element types: mypy joins a tuple of differently-typed arrays to `object` nondeterministically
        targets: list[np.ndarray] = [profile, spread, pdays, pinned, plateau, level]
        parts: list[np.ndarray] = [p2, s2, d2, *f2]
        for arr, new_part in zip(targets, parts, strict=True):
            arr[:, hit] = new_part
    return profile, spread, pdays, pinned, plateau, level


def _open_episodes(x: np.ndarray, flag: np.ndarray, level: np.ndarray, profile: np.ndarray,
                   s: CpuSettings) -> np.ndarray:
    """Hours inside an open episode, hours x nodes, causal: an episode opens at a flagged hour and stays open
    until the CPU is back, for two hours in a row, both below the plateau (the level of the last flagged
    window minus twice the flat tolerance) and within ``min_excess`` of the node's profile.  A miner
    that keeps running keeps its episode open however long it runs, whatever its profile has learned; a
    missing hour is no recovery.  Two cumulative maxima over the hours: no loop."""
    t = np.arange(x.shape[0])[:, None]
    last_set = np.maximum.accumulate(np.where(flag, t, -1), axis=0)
    lvl = np.take_along_axis(level, np.maximum(last_set, 0), axis=0)
    with np.errstate(invalid="ignore"):
        below = (x < lvl - 2.0 * s.flat_tolerance) & ~(x >= profile + s.min_excess)
    reset = below.copy()
    reset[1:] &= below[:-1]
    reset[0] = False
    last_reset = np.maximum.accumulate(np.where(reset, t, -1), axis=0)
    return (last_set >= 0) & (last_set >= last_reset) & ~below


def _carry(profile: np.ndarray, spread: np.ndarray, pdays: np.ndarray, min_days: int,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where fewer than ``min_days`` unmasked days fed the profile (a long masked episode), use the last
    profile and spread that had enough, at the same hour of day: the node's pre-incident shape."""
    t, n = profile.shape
    ok = pdays >= min_days
    if ok.all() or not ok.any():
        return profile, spread, pdays
    days = -(-t // 24)
    pad = days * 24 - t
    okd = np.pad(ok, ((0, pad), (0, 0))).reshape(days, 24, n)
    src = np.where(okd, np.arange(days)[:, None, None], -1)
    np.maximum.accumulate(src, axis=0, out=src)
    fill = ~okd & (src >= 0)
    if not fill.any():
        return profile, spread, pdays
    flat_src = (src * 24 + np.arange(24)[None, :, None]).reshape(days * 24, n)[:t]
    fill2 = fill.reshape(days * 24, n)[:t]
    rows, cols = np.nonzero(fill2)
    from_rows = flat_src[rows, cols]
    profile, spread, pdays = profile.copy(), spread.copy(), pdays.copy()
    profile[rows, cols] = profile[from_rows, cols]
    spread[rows, cols] = spread[from_rows, cols]
    pdays[rows, cols] = pdays[from_rows, cols]
    return profile, spread, pdays


def features(m: CpuMatrix, s: CpuSettings) -> CpuFeatures:
    """Two passes: the second rebuilds each profile without the hours the first pass flagged, so a miner
    that runs for days is not learned as the node's normal shape.  Both passes are causal: a flag at an
    hour depends only on that hour and earlier ones, and profiles only use earlier days.  The one exception
    is a whole episode that has ended: it is read with the day after it that the data has
    (``_episode_in_surge``), so a later run can clear a cap that a surge explains once the surge shows; an
    episode still open is read from its own hours and earlier ones only.

    Blocks of nodes, hours x nodes float32, medians by min/max networks over shifted views: nothing loops
    over nodes or hours in Python.  Profiles, spreads and window means are float32."""
    x = m.values
    n, t = x.shape
    new = m.nodes["new"].to_numpy(dtype=bool) if len(m.nodes) else np.zeros(n, dtype=bool)
    profile = np.empty((n, t), dtype=np.float32)
    spread = np.empty((n, t), dtype=np.float32)
    level = np.empty((n, t), dtype=np.float32)
    pdays = np.empty((n, t), dtype=np.int16)
    pinned = np.empty((n, t), dtype=bool)
    plateau = np.empty((n, t), dtype=bool)
    outs: list[np.ndarray] = [profile, spread, pdays, pinned, plateau, level]
    for r0 in range(0, n, CHUNK_NODES):
        r1 = min(r0 + CHUNK_NODES, n)
        xt = np.ascontiguousarray(x[r0:r1].T, dtype=np.float32)
        block: list[np.ndarray] = list(_block(xt, new[r0:r1], s))
        for arr, part in zip(outs, block, strict=True):
            arr[r0:r1] = part.T
    explained = _surge_explained(m, x, profile, pdays, pinned, pinned | plateau, level, s)
    if explained is not None:
        plateau &= ~explained
        pinned &= ~(explained & ~new[:, None])
    episode = _episodes_open(x, pinned | plateau, level, profile, s)
    inside = _episode_in_surge(m, x, profile, pdays, pinned | plateau, episode, new, s)
    if inside is not None:
        plateau &= ~inside
        pinned &= ~inside
        episode &= ~inside
    return CpuFeatures(profile, spread, pdays, pinned, plateau, level, new, episode)


def _episodes_open(x: np.ndarray, flag: np.ndarray, level: np.ndarray, profile: np.ndarray,
                   s: CpuSettings) -> np.ndarray:
    """``_open_episodes`` of the final flags (nodes x hours), only for the nodes that have one."""
    out = flag.copy()
    rows = np.flatnonzero(flag.any(axis=1))
    for r0 in range(0, rows.size, CHUNK_NODES):
        r = rows[r0: r0 + CHUNK_NODES]
        xt = np.ascontiguousarray(x[r].T, dtype=np.float32)
        out[r] |= _open_episodes(xt, flag[r].T, level[r].T, profile[r].T, s).T
    return out


# A flagged node reads as saturation, not a miner, where its project's demand is up (the other nodes run
# SURGE_RATIO x their usual or more) and its own usual shape scaled by that demand reaches the plateau
# (SATURATION_SHARE of its level): a busy node capped at 100% at its daily peak while the rest of the
# project surges.  Alone (no other node still moving like a service) a node can only lean on its own shape,
# as if demand were up LONE_DEMAND x.
SURGE_RATIO = 1.1
SATURATION_SHARE = 0.8
LONE_DEMAND = 1.6
DEMAND_HOURS = 6
DAY_HOURS = 24
ONSET_HOURS = 3
LOAD_FLOOR = 20.0  # a witness carries load: its usual CPU is this or more
IDLE_FLOOR = 10.0  # an idle witness's usual is floored here, so a quiet night's noise is no surge
CAP_HOURS = 6  # a cap no longer than a daily peak
EPISODE_GAP_HOURS = 3  # node_episodes' gap_hours


def _surge_explained(m: CpuMatrix, x: np.ndarray, profile: np.ndarray, pdays: np.ndarray, pinned: np.ndarray,
                     flagged: np.ndarray, level: np.ndarray, s: CpuSettings) -> np.ndarray | None:
    """Flagged hours that the project's demand explains (nodes x hours; None when nothing is flagged).

    Traffic lifts a whole pool at once and keeps each node's shape; a node that runs hot every day
    saturates at its peak and comes down with the others.  A miner's plateau is decoupled from demand: it
    stays flat when the other nodes follow their daily shape down, and it outlives the surge, so it is
    flagged from the first hour demand no longer explains it.  Demand is read from the project's other
    unflagged nodes that still move like a service and have a usual of their own (``_witnesses``), their CPU
    summed over their usual summed, pooled by load (``_group_demand``) so that a x1.3 surge stands out of
    per-node noise; the nodes the autoscaler added for the surge count on the observed side for the net
    addition they are (``_net_share``).  It is read over the last ``DEMAND_HOURS``, ``ONSET_HOURS`` and
    ``DAY_HOURS`` (``_demand``); one witness is enough, so projects of two or three nodes get a reading too.
    The flagged node must be one whose usual shape, scaled by that demand, reaches its plateau within the
    window that fired (``_explained``).

    Only read where a node is flagged, so it is computed for the projects and hours that have a flagged
    node, a chunk of those hours at a time (``SURGE_CELLS`` node-hours)."""
    n, t = x.shape
    if n == 0 or not len(m.nodes) or not flagged.any():
        return None
    pool = _surge_pool(m, flagged)
    sums = _span_sums(x, profile, pool.rows)
    added = _added(_reporting(x, pool))  # projects x hours: nodes beyond the usual count
    hot_cols = np.flatnonzero(flagged.any(axis=0))
    out = np.zeros((n, t), dtype=bool)
    step = max(1, SURGE_CELLS // max(pool.rows.size, 1))
    for c0 in range(0, hot_cols.size, step):
        cols = hot_cols[c0: c0 + step]
        witness, fresh, obs, usual = _witnesses(x, profile, pdays, flagged, pool.rows, cols, s)
        share = _net_share(added[:, cols], _group_sums(pool.group, pool.groups, fresh))[pool.group]
        demand = _demand(pool, sums, cols, witness, obs, usual, np.where(fresh, share, 0.0))
        r, c, explained = _explained(demand, profile, pinned, flagged, level, pool.rows, cols, s)
        out[r, c] = explained
    return out


@dataclass
class _Pool:
    """The nodes the hourly surge check reads: every node of each project that has a flagged node (``rows``),
    its project (``group``, 0 to ``groups`` - 1) and whether it is flagged itself (``hot``)."""
    rows: np.ndarray
    group: np.ndarray
    groups: int
    hot: np.ndarray


def _surge_pool(m: CpuMatrix, flagged: np.ndarray) -> _Pool:
    """Only a project with a flagged node needs its demand read: the flags are what it explains."""
    codes, _ = pd.factorize(m.nodes["project"].astype(str).to_numpy())
    hot = np.asarray(flagged.any(axis=1))  # (an array to mypy, which types any() as a scalar too)
    rows = np.flatnonzero(np.isin(codes, np.unique(codes[hot])))
    projects, group = np.unique(codes[rows], return_inverse=True)
    return _Pool(rows, group, projects.size, hot[rows])


@dataclass
class _SpanSums:
    """Cumulative sums over the hours (pool rows x hours + 1, float32) of the CPU and the usual where both are
    known and of how many such hours (``x``, ``p``, ``n``), and of the CPU and its hours wherever it is
    known (``xa``, ``na``): a span's means, whatever its length, are two reads."""
    x: np.ndarray
    p: np.ndarray
    n: np.ndarray
    xa: np.ndarray
    na: np.ndarray

    def means(self, cols: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Over the ``span`` hours up to and including each of ``cols`` (rows x cols): the mean CPU and usual
        where both are known, and the mean CPU wherever it is (the fresh nodes' side, which has no usual)."""
        lo, hi = np.maximum(cols + 1 - span, 0), cols + 1
        cnt = np.maximum(self.n[:, hi] - self.n[:, lo], 1.0)
        obs_a = (self.xa[:, hi] - self.xa[:, lo]) / np.maximum(self.na[:, hi] - self.na[:, lo], 1.0)
        return (self.x[:, hi] - self.x[:, lo]) / cnt, (self.p[:, hi] - self.p[:, lo]) / cnt, obs_a


def _span_sums(x: np.ndarray, profile: np.ndarray, rows: np.ndarray) -> _SpanSums:
    """``_SpanSums`` of ``rows``, a block of rows at a time in float32: the sums of 100k nodes take a few
    hundred MB, and no whole-pool float64 copy is made."""
    t = x.shape[1]
    sums = _SpanSums(*(np.zeros((rows.size, t + 1), dtype=np.float32) for _ in range(5)))
    for b0 in range(0, rows.size, 4 * CHUNK_NODES):
        rb = rows[b0: b0 + 4 * CHUNK_NODES]
        b = slice(b0, b0 + rb.size)
        xr, pr = x[rb].astype(np.float32), profile[rb]
        have = ~np.isnan(xr) & ~np.isnan(pr)
        np.cumsum(np.where(have, xr, np.float32(0.0)), axis=1, out=sums.x[b, 1:])
        np.cumsum(np.where(have, pr, np.float32(0.0)), axis=1, out=sums.p[b, 1:])
        np.cumsum(have, axis=1, out=sums.n[b, 1:])
        np.cumsum(np.nan_to_num(xr), axis=1, out=sums.xa[b, 1:])
        np.cumsum(~np.isnan(xr), axis=1, out=sums.na[b, 1:])
    return sums


def _reporting(x: np.ndarray, pool: _Pool) -> np.ndarray:
    """Unflagged nodes reporting per project and hour (projects x hours), the counts ``_added`` reads: a
    miner's own new nodes are no addition that lets fresh nodes count.  A block of rows at a time."""
    counts = np.zeros((pool.groups, x.shape[1]))
    for b0 in range(0, pool.rows.size, 4 * CHUNK_NODES):
        b = slice(b0, b0 + 4 * CHUNK_NODES)
        counts += _group_sums(pool.group[b], pool.groups, ~np.isnan(x[pool.rows[b]]) & ~pool.hot[b, None])
    return counts


def _witnesses(x: np.ndarray, profile: np.ndarray, pdays: np.ndarray, flagged: np.ndarray, rows: np.ndarray,
               cols: np.ndarray, s: CpuSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Who reads demand at each of ``cols`` over the last ``DEMAND_HOURS`` (rows x cols): the witnesses, the
    fresh node-hours, and the windows' mean CPU and usual.  Both kinds are unflagged and move like a service
    (``_moving``: flat ones may be miners not yet flagged).  A witness has a usual of its own
    (``min_profile_days``); a fresh one has too few days for one (the autoscaler added it for the surge), but
    its CPU is demand all the same: the load it took off the known nodes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        win = _trailing(x, rows, cols)
        obs = np.nanmean(win, axis=0)
        usual = np.nanmean(_trailing(profile, rows, cols), axis=0)
    known = pdays[np.ix_(rows, cols)] >= s.min_profile_days
    calm = ~flagged[np.ix_(rows, cols)] & _moving(win, s.flat_tolerance / 2) & ~np.isnan(obs)
    return calm & known & ~np.isnan(usual), calm & ~known, obs, usual


def _demand(pool: _Pool, sums: _SpanSums, cols: np.ndarray, witness: np.ndarray, obs: np.ndarray,
            usual: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """Each pool row's project demand at each of ``cols`` (rows x cols), the same witnesses read over three
    spans, the highest kept: the last ``DEMAND_HOURS``; the last ``ONSET_HOURS``, a surge that began an hour
    or two ago; the last ``DAY_HOURS``, as at night a surge barely lifts the idle nodes but a node busy day
    and night saturates then too, inside a surge its project's last day shows.  ``fresh``: the weights of
    the fresh node-hours' CPU.  ``LONE_DEMAND`` where the project has no witness."""
    demand = _group_demand(pool, witness, obs, usual, fresh, obs)
    for span in (ONSET_HOURS, DAY_HOURS):
        obs_d, usual_d, obs_a = sums.means(cols, span)
        demand = np.fmax(demand, _group_demand(pool, witness, obs_d, usual_d, fresh, obs_a))
    return np.where(np.isnan(demand), LONE_DEMAND, demand)


def _explained(demand: np.ndarray, profile: np.ndarray, pinned: np.ndarray, flagged: np.ndarray,
               level: np.ndarray, rows: np.ndarray, cols: np.ndarray, s: CpuSettings,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The flagged node-hours among ``rows`` x ``cols`` (node and hour indices) and whether the demand
    explains each: the project is up (``SURGE_RATIO``) and the node's usual peak over the window that fired
    (``pinned_hours`` or ``plateau_hours``), scaled by the demand, reaches ``SATURATION_SHARE`` of its level.
    A miner pinned at 99% on a node that usually idles at 30% is not explained by a 1.5 x surge."""
    fr, fc = np.nonzero(flagged[np.ix_(rows, cols)])
    r, c = rows[fr], cols[fc]
    lag = np.arange(max(s.pinned_hours, s.plateau_hours))[None, :]
    lags = c[:, None] - lag
    span = np.where(pinned[r, c], s.pinned_hours, s.plateau_hours)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        peak = np.nanmax(np.where((lags >= 0) & (lag < span), profile[r[:, None], np.maximum(lags, 0)], np.nan),
                         axis=1)
    d = demand[fr, fc]
    return r, c, (d >= SURGE_RATIO) & (np.nan_to_num(peak, nan=0.0) * d >= SATURATION_SHARE * level[r, c])


def _group_sums(group: np.ndarray, groups: int, v: np.ndarray) -> np.ndarray:
    """Sums of the rows of ``v`` (rows x columns) per group (``group``: each row's, 0 to groups - 1) -> groups x
    columns, float64, 0 for a group without rows.  The one way this module sums rows per project: pandas'
    groupby, 2-5x less CPU than ``np.add.at`` on 2-D rows (1k to 100k rows; np.add.at takes its slow path on
    rows) and compensated, so a sum does not drift with the order or number of rows.  NaN adds nothing."""
    return pd.DataFrame(v).groupby(group).sum().reindex(range(groups), fill_value=0).to_numpy(dtype=np.float64)


def _group_demand(pool: _Pool, witness: np.ndarray, obs: np.ndarray, usual: np.ndarray, fresh: np.ndarray,
                  obs_fresh: np.ndarray) -> np.ndarray:
    """Each row's project demand per column (rows x cols, NaN without witnesses), read as ``_read`` reads
    it: the higher of the loaded witnesses' pooled ratio (usual >= ``LOAD_FLOOR``) and all witnesses' with
    each usual floored at ``IDLE_FLOOR``, where the CPU of the ``fresh`` rows (nodes added for the surge,
    moving like a service, no usual of their own), times their weight (the net addition's share), counts on
    the observed side of the latter."""
    def total(v: np.ndarray, on: np.ndarray) -> np.ndarray:
        return _group_sums(pool.group, pool.groups, np.where(on, v, 0.0))[pool.group]

    with np.errstate(invalid="ignore"):
        busy = witness & (usual >= LOAD_FLOOR)
    busy_u, idle_u = total(usual, busy), total(np.maximum(usual, IDLE_FLOOR), witness)
    with np.errstate(invalid="ignore", divide="ignore"):
        floored = np.where(idle_u > 0, (total(obs, witness) + total(np.nan_to_num(obs_fresh) * fresh, fresh > 0))
                           / idle_u, np.nan)
        return np.where(busy_u > 0, np.fmax(total(obs, busy) / busy_u, floored), floored)


def _known(x: np.ndarray, profile: np.ndarray, pdays: np.ndarray, min_days: int) -> np.ndarray:
    """Node-hours that can witness demand: a sample and a usual learned from ``min_days`` days or more."""
    with np.errstate(invalid="ignore"):
        return ~np.isnan(x) & ~np.isnan(profile) & (pdays >= min_days)


def _fresh(x: np.ndarray, pdays: np.ndarray, min_days: int, tol: float) -> np.ndarray:
    """Node-hours of nodes with no usual of their own yet (the autoscaler added them for a surge) that move
    like a service over the last ``DEMAND_HOURS`` (causal): their CPU is demand the known nodes no longer
    carry.  A miner's new node is flat, so it never is, flagged yet or not.

    Every hour's window, so shifted views (``_lagged``: 8-20x faster than ``_trailing``'s gather), in float32 as
    they always were here (the hourly check reads float64: the two differ only where a spread is exactly
    ``tol``, as two samples 3.00 apart are, at 2 of 77M node-hours of scenario seeds 1-8 and 100k scale nodes)."""
    moving = _moving(np.stack(_lagged(x.T.astype(np.float32), DEMAND_HOURS)), tol).T
    with np.errstate(invalid="ignore"):
        return ~np.isnan(x) & (pdays < min_days) & moving


def _trailing(a: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The ``DEMAND_HOURS`` hours up to and including each of ``cols`` (causal: demand at an hour is read from
    it and the hours before), DEMAND_HOURS x rows x cols oldest first, NaN before the first hour.  The window
    is the first axis: numpy reduces across it 2-4x faster than along a short last axis, to the same bits."""
    idx = cols[None, :] + np.arange(1 - DEMAND_HOURS, 1)[:, None]
    return np.where((idx >= 0)[:, None, :], a[rows[None, :, None], np.maximum(idx, 0)[:, None, :]], np.nan)


def _moving(win: np.ndarray, tol: float) -> np.ndarray:
    """Whether the CPU over each trailing window (first axis: ``_trailing``, or ``_lagged`` stacked) spreads
    more than ``tol``: a service keeps its daily shape and its noise, a miner's line does not (and may be one
    not yet flagged).  One test for the hourly check's witnesses and ``_fresh``'s added nodes, so both read
    the same node-hours as moving."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (a window without a sample: NaN, not moving)
        return np.nanstd(win, axis=0) > tol


ADDED_DAYS = 7  # days of node counts at the same hour that say how many nodes a project usually runs then


def _added(counts: np.ndarray) -> np.ndarray:
    """Nodes reporting beyond the usual count (groups x hours of node counts -> same shape, >= 0): the median
    count at the same hour over the previous ``ADDED_DAYS`` days.  Causal; 0 without such history."""
    t = counts.shape[1]
    lags = np.full((ADDED_DAYS, *counts.shape), np.nan)
    for k in range(1, ADDED_DAYS + 1):
        if DAY_HOURS * k < t:
            lags[k - 1][:, DAY_HOURS * k:] = counts[:, : t - DAY_HOURS * k]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        usual = np.nanmedian(lags, axis=0)
    return np.clip(np.nan_to_num(counts - usual, nan=0.0), 0.0, None)


def _fresh_weight(present: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """How much of each fresh node-hour's CPU is demand (one project's rows x hours -> weights in [0, 1]).

    Only a net addition is: where the project runs more nodes than it usually does at that hour, the added
    ones carry load its known nodes would have carried.  A replacement (churn) or the autoscaler's everyday
    scale-out, already inside the known nodes' usual, adds none, so a miner on a busy node is not explained
    away by them."""
    w = _net_share(_added(present.sum(axis=0, dtype=float)[None, :])[0], fresh.sum(axis=0).astype(float))
    return np.where(fresh, w[None, :], 0.0)


def _net_share(added: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """The share of the fresh node-hours' CPU that is demand, per hour (and project): the nodes added beyond
    the usual count over the fresh ones (``fresh``: how many), all of it at most, 0 without fresh ones."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(fresh > 0, np.minimum(added / fresh, 1.0), 0.0)


def _cum_pool(x: np.ndarray, profile: np.ndarray, ok: np.ndarray, fresh: np.ndarray | None = None) -> np.ndarray:
    """Cumulative sums over the hours (4 x hours+1) of the rows' CPU and usual, pooled as ``_read`` reads
    them: over the node-hours that carry load (usual >= ``LOAD_FLOOR``), and over all of them with the usual
    floored at ``IDLE_FLOOR``, where the ``fresh`` node-hours' CPU (``_fresh``) counts as observed load."""
    u = np.nan_to_num(profile.astype(np.float64))
    busy = ok & (u >= LOAD_FLOOR)
    observed = np.where(ok, x, 0.0)
    if fresh is not None:  # weights (``_fresh_weight``): the share of a fresh node-hour's CPU that is demand
        observed = observed + np.where(fresh > 0, np.nan_to_num(x) * fresh, 0.0)
    parts = (np.where(busy, x, 0.0), np.where(busy, u, 0.0), observed, np.where(ok, np.maximum(u, IDLE_FLOOR), 0.0))
    sums = np.stack([p.sum(axis=0) for p in parts])
    return np.concatenate([np.zeros((4, 1)), np.cumsum(sums, axis=1)], axis=1)


def _read(cum: np.ndarray, a: int, b: int) -> float:
    """Pooled demand over hours [a, b) (0 without witnesses): the higher of two readings.  Every witness
    with its usual floored at ``IDLE_FLOOR`` (idle nodes read near 1 at night whatever their noise), and,
    where the node-hours that carry load (usual >= ``LOAD_FLOOR``) carry that much per hour between them,
    theirs alone: floored, a project of many idle nodes drowns the surge that its few busy nodes carry; the
    loaded ones alone miss it where the busy node is a batch job and the idle ones all follow the traffic."""
    if b <= a:
        return 0.0
    ob, ub, oa, ua = (cum[:, b] - cum[:, a]).tolist()
    floored = float(oa / ua) if ua > 0 else 0.0
    return max(float(ob / ub), floored) if ub >= LOAD_FLOOR * (b - a) else floored


def _around(cum: np.ndarray, a: int, b: int, t: int) -> float:
    """The project's demand around an episode of hours [a, b) in data of ``t`` hours.  One that has ended
    (``ONSET_HOURS`` of data after it) sat inside a surge when demand was up over it and the day after it
    (a cap that falls in a surge's first, ramping hours is read with the surge that follows) or over it and
    its last ``DAY_HOURS`` (one that ends with the surge).  One still open must be inside a surge still going:
    demand up over it, over its last day and over its first day, so a plateau that outlives the surge is
    flagged from the day the project is back to its usual, and one that began before the project was up (a
    miner that a later scale-out or surge joins) is never explained by what came after it."""
    still = min(_read(cum, a, b), _read(cum, max(b - DAY_HOURS, 0), b), _read(cum, a, min(a + DAY_HOURS, b)))
    return max(still, _read(cum, a, min(b + DAY_HOURS, t))) if b + ONSET_HOURS <= t else still


def _stretch_start(x: np.ndarray, a: int, level: float, tol: float) -> int:
    """First hour of the flat stretch that an episode flagged at hour ``a`` belongs to (as ``node_episodes``
    walks back): the node's own hours before it can witness its demand, the stretch's cannot."""
    lo = a
    while lo - 1 >= 0 and not np.isnan(x[lo - 1]) and abs(x[lo - 1] - level) <= tol:
        lo -= 1
    return lo


def _episode_in_surge(m: CpuMatrix, x: np.ndarray, profile: np.ndarray, pdays: np.ndarray, flag: np.ndarray,
                      episode: np.ndarray, new: np.ndarray, s: CpuSettings) -> np.ndarray | None:
    """Whole episodes of existing nodes that sit inside a project-wide surge (nodes x hours; None when none).

    The hourly check (``_surge_explained``) reads demand from the hours up to each flag; a surge that begins
    at night barely lifts the idle nodes then, and a cap in a surge's first hours comes before the surge
    shows, so a busy node that the surge pushes to its ceiling can be flagged.  Read over the episode as a
    whole (``_around``), the two tell apart: the witnesses are the project's other unflagged nodes with a
    usual of their own and the node itself outside its flat stretch (in a project of idle nodes the busy
    node is the one that carries the surge), pooled by load (``_read``), with the CPU of the nodes the
    autoscaler added (``_fresh``) on the observed side; where demand is up and the node's
    usual peak scaled by it reaches its level, the episode is the surge.  A miner's plateau outlives the
    surge: once the project's last day is back to its usual, the episode is no longer explained, and it is
    flagged (with every hour it has lasted) from then on.  Loops over episodes, which exist only on flagged
    nodes; a project's witnesses are summed once."""
    flagged = flag.any(axis=1)
    hot = np.flatnonzero(flagged & ~new)
    if not hot.size:
        return None
    codes, _ = pd.factorize(m.nodes["project"].astype(str).to_numpy())
    t = x.shape[1]
    out = np.zeros(flag.shape, dtype=bool)
    for code in np.unique(codes[hot]):
        peers = np.flatnonzero((codes == code) & ~flagged)
        fresh = _fresh(x[peers], pdays[peers], s.min_profile_days, s.flat_tolerance / 2)
        present = ~np.isnan(x[peers])  # unflagged nodes only, as in _surge_explained
        pool = _cum_pool(x[peers], profile[peers], _known(x[peers], profile[peers], pdays[peers], s.min_profile_days),
                         _fresh_weight(present, fresh))
        for i in hot[codes[hot] == code]:
            xi, pi = x[i: i + 1], profile[i: i + 1]
            mine = _known(xi, pi, pdays[i: i + 1], s.min_profile_days)
            for a, b in _runs(episode[i], EPISODE_GAP_HOURS):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lvl = float(np.nanmedian(x[i, a:b]))
                lo = _stretch_start(x[i], a, lvl, 2.0 * s.flat_tolerance)
                own = mine.copy()
                own[:, lo:b] = False
                if _saturates(profile[i], lo, b, _around(pool + _cum_pool(xi, pi, own), lo, b, t), lvl, t):
                    out[i, a:b] = True
    return out if out.any() else None


def surge_demand(m: CpuMatrix, f: CpuFeatures, episodes: list[NodeEpisode], t0: pd.Timestamp,
                 t1: pd.Timestamp, min_days: int, tol: float = CpuSettings.flat_tolerance / 2) -> float | None:
    """The project's demand over [t0, t1) where it explains the flagged nodes' plateaus, else None.

    A cost rise on the days of a project-wide surge is the surge's own bill: it is evidence of mining only
    where the CPU signature is not itself the surge.  It is, when every flagged node is an existing one that
    runs hot every day (its usual peak scaled by the demand reaches its level, as in ``_surge_explained``)
    and the project ran ``SURGE_RATIO`` x its usual or more over those hours and around each plateau
    (``_around``: over it and the day after it, or for one still open over its last day).  The witnesses
    are those of ``_episode_in_surge`` (nodes added for the surge count, see ``_fresh``; ``tol`` is half
    the flat tolerance): the project's unflagged nodes and the flagged ones outside their
    plateaus, pooled by load.  A miner on a quiet node, or on nodes of its own, never is.  Unlike the flags
    this reads the hours after a plateau's end that the data has: a later run re-scores the alert with them."""
    if not episodes or any(e.new_node for e in episodes):
        return None
    names = m.nodes["node"].astype(str).to_numpy()
    mine = m.nodes["project"].astype(str).to_numpy() == episodes[0].project
    hot = mine & np.isin(names, [e.node for e in episodes])
    rows = np.flatnonzero(hot | (mine & ~(f.pinned | f.plateau | f.episode).any(axis=1)))
    ok = _known(m.values[rows], f.profile[rows], f.profile_days[rows], min_days)
    spans = [(int(np.flatnonzero(names[rows] == e.node)[0]), *(int(v) for v in m.hours.searchsorted([e.start, e.last])))
             for e in episodes]
    for r, a, b in spans:
        ok[r, a:b] = False
    fresh = _fresh(m.values[rows], f.profile_days[rows], min_days, tol)  # nodes added for the surge
    fresh[hot[rows]] = False
    weight = _fresh_weight(~np.isnan(m.values[rows]), fresh)  # the hot nodes are existing ones, in every count
    cum = _cum_pool(m.values[rows], f.profile[rows], ok, weight)
    t = m.values.shape[1]
    a0, b0 = (int(v) for v in m.hours.searchsorted([t0, t1]))
    d = _read(cum, a0, b0)
    for e, (r, a, b) in zip(episodes, spans, strict=True):
        d = min(d, _around(cum, a, b, t))
        if not _saturates(f.profile[rows[r]], a, max(b, a + 1), d, e.level, t):
            return None
    return d


def _saturates(usual: np.ndarray, a: int, b: int, d: float, level: float, t: int) -> bool:
    """Whether project demand ``d`` explains a node's flat stretch of hours [a, b) at ``level`` (``usual``:
    the node's profile, over ``t`` hours of data).  The project must be up (``SURGE_RATIO``) and the node
    one that runs hot every day: its usual peak over the last day, scaled by the demand, reaches
    ``SATURATION_SHARE`` of the level.  A cap that has ended and lasted no longer than a daily peak
    (``CAP_HOURS``) needs less: that its own usual at those hours, scaled as a lone node's (``LONE_DEMAND``),
    does -- saturation is not proportional to load (a busy node at 60% under a x1.3 surge can cap at 100%),
    but a miner's plateau neither sits only at a busy node's daily peak nor ends while the project is up."""
    if not d >= SURGE_RATIO:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        day_peak = float(np.nanmax(usual[max(a - DAY_HOURS, 0): b]))
        at_peak = float(np.nanmax(usual[a:b]))
    if day_peak * d >= SATURATION_SHARE * level:
        return True
    short = b - a <= CAP_HOURS and b + ONSET_HOURS <= t
    return short and at_peak * LONE_DEMAND >= SATURATION_SHARE * level


def _runs(on: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """[start, end) of the runs of True, merged across gaps of up to ``gap`` hours (as ``node_episodes``
    merges them: a node dipping for an hour inside its episode is still the same episode)."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], on.astype(np.int8), [0]])))
    out: list[tuple[int, int]] = []
    for a, b in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
        if out and a - out[-1][1] < gap:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


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
    instance_id: str | None = None  # the cloud's id where the node is named otherwise (GCE)


def node_episodes(m: CpuMatrix, f: CpuFeatures, s: CpuSettings,
                  gap_hours: int = EPISODE_GAP_HOURS) -> list[NodeEpisode]:
    """Runs of hours in an open episode per node, merged across short gaps; detected at the first flagged
    hour, lasting to the last hour the CPU had not come back; start walks back over the flat stretch."""
    flag = f.pinned | f.plateau
    out: list[NodeEpisode] = []
    if flag.size == 0:
        return out
    rows, cols = np.nonzero(f.episode | flag)
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
        i, c1 = int(rows[a]), int(cols[b])
        hits = np.flatnonzero(flag[i, int(cols[a]): c1 + 1])
        if not hits.size:
            continue
        # an episode stays open across a gap in the node's data, but it lasts to the node's last sample: a
        # node that is gone (terminated, scaled in) runs nothing any more
        c1 = int(cols[a]) + int(np.flatnonzero(~np.isnan(x[i, int(cols[a]): c1 + 1]))[-1])
        c0 = int(cols[a]) + int(hits[0])
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
            baseline=_mean(f.profile[i, max(first, 0): c0 + 1]), instance_id=_str(meta.get("instance_id")),
        ))
    return out


def _mean(a: np.ndarray) -> float:
    """Mean of the known values, 0.0 when none (a new node has no usual CPU)."""
    ok = ~np.isnan(a)
    return float(a[ok].mean()) if ok.any() else 0.0


def _str(v: object) -> str | None:
    return None if v is None or v is pd.NA or (isinstance(v, float) and v != v) else str(v)
