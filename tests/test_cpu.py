"""The CPU plateau detector on controlled node traces: miners flatten CPU, real load keeps its shape."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from costwatch import baseline as bl
from costwatch import cpu
from costwatch.model import normalize_usage

HOURS = pd.date_range("2026-10-01", periods=24 * 14, freq="h", tz="UTC")
START = 24 * 11 + 3  # day 11, 03:00 UTC


def _shape(rng: np.random.Generator, peak: float) -> np.ndarray:
    h = HOURS.hour.to_numpy()
    daily = 0.25 + 0.75 * np.clip(np.sin((h - 6) / 24 * 2 * np.pi), 0, None)
    return np.clip(peak * daily + rng.normal(0, 4, len(HOURS)), 0, 100)


def _usage() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    traces: dict[str, np.ndarray] = {}
    for k in range(6):
        traces[f"i-normal{k}"] = _shape(rng, 40)
    m = _shape(rng, 40)
    m[START:] = np.clip(99.5 + rng.normal(0, 0.4, len(m) - START), 0, 100)
    traces["i-pinned"] = m
    s = _shape(rng, 35)
    s[START:] = np.maximum(s[START:], 62 + rng.normal(0, 1.0, len(s) - START))
    traces["i-stealth"] = s
    b = _shape(rng, 40)
    b[START:] = np.clip(b[START:] * 2.0, 0, 90)
    traces["i-surge"] = b
    batch = _shape(rng, 30)
    night = np.isin(HOURS.hour, [2, 3, 4])
    batch[night] = 92 + rng.normal(0, 0.5, night.sum())
    traces["i-batch"] = batch
    frames = [pd.DataFrame({"timestamp": HOURS, "node": n, "cpu_utilization": v}) for n, v in traces.items()]
    new = pd.DataFrame({"timestamp": HOURS[START:], "node": "i-newminer",
                        "cpu_utilization": np.clip(98 + rng.normal(0, 0.5, len(HOURS) - START), 0, 100),
                        "region": "ap-southeast-3", "instance_type": "p3.2xlarge"})
    frames.append(new)
    df = pd.concat(frames, ignore_index=True).assign(provider="aws", project="123456789012")
    return normalize_usage(df)


def _episodes() -> dict[str, cpu.NodeEpisode]:
    m = cpu.cpu_matrix(_usage())
    s = cpu.CpuSettings(gpu_instance_prefixes=["p3"])
    f = cpu.features(m, s)
    first: dict[str, cpu.NodeEpisode] = {}
    for e in cpu.node_episodes(m, f, s):
        first.setdefault(e.node, e)
    return first


def test_miners_found_benign_left_alone() -> None:
    eps = _episodes()
    assert {"i-pinned", "i-stealth", "i-newminer"} <= set(eps)
    assert not {"i-surge", "i-batch"} & set(eps)
    assert not any(n.startswith("i-normal") for n in eps)


def test_detection_is_fast_and_start_is_exact() -> None:
    eps = _episodes()
    start = HOURS[START]
    pinned, new = eps["i-pinned"], eps["i-newminer"]
    assert pinned.signal == "pinned" and new.signal == "pinned" and new.new_node
    assert pinned.start == start and new.start == start
    assert new.detected_at - start <= pd.Timedelta(hours=2)
    assert pinned.detected_at - start <= pd.Timedelta(hours=2)
    stealth = eps["i-stealth"]
    assert stealth.signal == "plateau" and 55 < stealth.level < 70
    assert stealth.detected_at - start <= pd.Timedelta(hours=6)


def test_is_gpu() -> None:
    assert cpu.is_gpu("p3.2xlarge", ["p3", "g4dn"])
    assert cpu.is_gpu("Standard_NC6s_v3", ["standard_nc"])
    assert not cpu.is_gpu("m5.large", ["p3"])
    assert not cpu.is_gpu(None, ["p3"])


def test_chance_flat_node_inside_a_project_wide_surge_is_not_mining() -> None:
    rng = np.random.default_rng(9)
    frames = []
    for k in range(8):
        v = _shape(rng, 40)
        v[START:] = np.clip(v[START:] * 2.0, 0, 95)
        if k == 0:  # one node happens to hold still for a few hours at its surge level
            v[START + 6: START + 14] = 62 + rng.normal(0, 0.4, 8)
        frames.append(pd.DataFrame({"timestamp": HOURS, "node": f"i-{k}", "cpu_utilization": v}))
    usage = normalize_usage(pd.concat(frames, ignore_index=True).assign(provider="aws", project="p"))
    m = cpu.cpu_matrix(usage)
    s = cpu.CpuSettings()
    f = cpu.features(m, s)
    assert cpu.node_episodes(m, f, s) == []


# ------------------------------------------------------------------------------------------------------
# The block/network implementation against the (nodes x hours x window) tensor version it replaced, kept
# here as the specification: the same flags, profiles equal up to float32 rounding.

def _trailing(x: np.ndarray, w: int) -> np.ndarray:
    pad = np.full((x.shape[0], w - 1), np.nan)
    return np.lib.stride_tricks.sliding_window_view(np.concatenate([pad, x], axis=1), w, axis=1)


def _ref_profile(x: np.ndarray, days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, t = x.shape
    lags = np.full((n, t, days), np.nan)
    for k in range(1, days + 1):
        if 24 * k < t:
            lags[:, 24 * k:, k - 1] = x[:, : t - 24 * k]
    profile = bl.nanmedian(lags)
    return profile, 1.4826 * bl.nanmedian(np.abs(lags - profile[:, :, None])), np.asarray((~np.isnan(lags)).sum(axis=2))


def _ref_flags(x: np.ndarray, profile: np.ndarray, spread: np.ndarray, pdays: np.ndarray, new: np.ndarray,
               s: cpu.CpuSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ft = s.flat_tolerance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        wp, wl = _trailing(x, s.pinned_hours), _trailing(x, s.plateau_hours)
        spread_l = np.nanmean(_trailing(spread, s.plateau_hours), axis=2)
        full_p, full_l = ~np.isnan(wp).any(axis=2), ~np.isnan(wl).any(axis=2)
        min_p, min_l = np.nanmin(wp, axis=2), np.nanmin(wl, axis=2)
        std_p, std_l = np.nanstd(wp, axis=2), np.nanstd(wl, axis=2)
        step_p = np.nanmean(np.abs(np.diff(wp, axis=2)), axis=2)
        step_l = np.nanmean(np.abs(np.diff(wl, axis=2)), axis=2)
        mean_l, mean_p = np.nanmean(wl, axis=2), np.nanmean(wp, axis=2)
        range_l = np.nanmax(wl, axis=2) - min_l
        tc = np.arange(s.plateau_hours) - (s.plateau_hours - 1) / 2.0
        slope_l = np.nansum((wl - mean_l[:, :, None]) * tc, axis=2) / max(float((tc**2).sum()), 1.0)
        excess_p = mean_p - np.nanmean(_trailing(profile, s.pinned_hours), axis=2)
        prof_w = _trailing(profile, s.plateau_hours)
        excess_l = mean_l - np.nanmean(prof_w, axis=2)
        shape_l = (np.nanmax(prof_w, axis=2) - np.nanmin(prof_w, axis=2)) / np.maximum(np.nanmean(prof_w, axis=2), 1)
    known = pdays >= s.min_profile_days
    need = np.maximum(s.min_excess, 3.0 * np.nan_to_num(spread_l, nan=0.0))
    flat_p = full_p & (min_p >= s.pinned_level) & (std_p <= ft / 2)
    pinned = (flat_p & ~known & new[:, None]) | (flat_p & (step_p <= ft / 2) & known
                                                 & (np.nan_to_num(excess_p, nan=0.0) >= need))
    tol_l = np.clip(0.5 * np.nan_to_num(spread_l, nan=ft), ft / 2, ft)
    plateau = (full_l & known & (min_l >= s.plateau_level) & (std_l <= tol_l) & (step_l <= 0.75 * tol_l)
               & (range_l <= 2.5 * tol_l) & (np.abs(slope_l) <= 0.25 * tol_l)
               & (range_l <= 0.5 * np.nan_to_num(mean_l * shape_l, nan=0.0))
               & (np.nan_to_num(excess_l, nan=0.0) >= need))
    return pinned, plateau, np.asarray(np.where(pinned, mean_p, mean_l))


def _ref_open(x: np.ndarray, flag: np.ndarray, level: np.ndarray, profile: np.ndarray, s: cpu.CpuSettings,
              ) -> np.ndarray:
    """Open episodes as a plain state machine per node (nodes x hours)."""
    out = np.zeros(x.shape, dtype=bool)
    for i in np.flatnonzero(flag.any(axis=1)):
        is_open, lvl, prev_below = False, np.nan, False
        for t in range(x.shape[1]):
            if flag[i, t]:
                is_open, lvl = True, level[i, t]
            v, p = x[i, t], profile[i, t]
            below = bool(v < lvl - 2 * s.flat_tolerance) and not bool(v >= p + s.min_excess)
            if below and prev_below and not flag[i, t]:
                is_open = False
            out[i, t] = is_open and not below
            prev_below = below
    return out


def _ref_carry(profile: np.ndarray, spread: np.ndarray, pdays: np.ndarray, min_days: int,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    profile, spread, pdays = profile.copy(), spread.copy(), pdays.copy()
    for t in range(24, profile.shape[1]):
        bad = (pdays[:, t] < min_days) & (pdays[:, t - 24] >= min_days)
        profile[bad, t], spread[bad, t], pdays[bad, t] = profile[bad, t - 24], spread[bad, t - 24], pdays[bad, t - 24]
    return profile, spread, pdays


def _ref_features(m: cpu.CpuMatrix, s: cpu.CpuSettings) -> cpu.CpuFeatures:
    x = m.values
    new = m.nodes["new"].to_numpy(dtype=bool)
    profile, spread, pdays = _ref_profile(x, s.profile_days)
    pinned, plateau, level = _ref_flags(x, profile, spread, pdays, new, s)
    w = max(s.pinned_hours, s.plateau_hours)
    flag = pinned | plateau
    flagged = _trailing(flag[:, ::-1].astype(float), w).max(axis=2)[:, ::-1] > 0
    flagged |= _ref_open(x, flag, level, profile, s)
    hit = flag.any(axis=1)
    profile2, spread2, pdays2 = _ref_carry(*_ref_profile(np.where(flagged, np.nan, x), s.profile_days),
                                           s.min_profile_days)
    profile = np.where(hit[:, None], profile2, profile)
    spread = np.where(hit[:, None], spread2, spread)
    pdays = np.where(hit[:, None], pdays2, pdays)
    pinned, plateau, level = _ref_flags(x, profile, spread, pdays, new, s)
    flag = pinned | plateau
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        win = _trailing(x, cpu.DEMAND_HOURS)
        obs = np.nanmean(win, axis=2)
        usual = np.nanmean(_trailing(profile, cpu.DEMAND_HOURS), axis=2)
        moving = ~flag & (np.nanstd(win, axis=2) > s.flat_tolerance / 2) & ~np.isnan(obs)
        witness = moving & (pdays >= s.min_profile_days) & ~np.isnan(usual)
        fresh = moving & (pdays < s.min_profile_days)
        peak = np.where(pinned, np.nanmax(_trailing(profile, s.pinned_hours), axis=2),
                        np.nanmax(_trailing(profile, s.plateau_hours), axis=2))
    key = m.nodes["project"].astype(str).to_numpy()
    demand = _ref_demand(key, witness, obs, usual, fresh, obs)
    for span_h in (cpu.ONSET_HOURS, cpu.DAY_HOURS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            have = ~np.isnan(x) & ~np.isnan(profile)
            n_d = np.maximum(np.nansum(_trailing(have.astype(float), span_h), axis=2), 1.0)
            obs_d = np.nansum(_trailing(np.where(have, x, 0.0), span_h), axis=2) / n_d
            usual_d = np.nansum(_trailing(np.where(have, profile, 0.0), span_h), axis=2) / n_d
            obs_a = np.nansum(_trailing(x, span_h), axis=2) / np.maximum(
                np.sum(~np.isnan(_trailing(x, span_h)), axis=2), 1.0)
        demand = np.fmax(demand, _ref_demand(key, witness, obs_d, usual_d, fresh, obs_a))
    demand = np.where(np.isnan(demand), cpu.LONE_DEMAND, demand)
    explained = flag & (demand >= cpu.SURGE_RATIO) & (np.nan_to_num(peak) * demand >= cpu.SATURATION_SHARE * level)
    pinned &= ~(explained & ~new[:, None])
    plateau &= ~explained
    flag = pinned | plateau
    episode = flag | _ref_open(x, flag, level, profile, s)
    inside = _ref_episode_in_surge(m, x, profile, pdays, flag, episode, new, s)
    return cpu.CpuFeatures(profile, spread, pdays, pinned & ~inside, plateau & ~inside, level, new,
                           episode & ~inside)


def _ref_demand(key: np.ndarray, witness: np.ndarray, obs: np.ndarray, usual: np.ndarray, fresh: np.ndarray,
                obs_fresh: np.ndarray) -> np.ndarray:
    """Per node and hour, the higher of its project's witnesses pooled with the usual floored at IDLE_FLOOR
    (with the fresh nodes' CPU on the observed side) and those that carry load (usual >= LOAD_FLOOR) pooled;
    NaN without witnesses."""
    out = np.full(obs.shape, np.nan)
    for i in range(obs.shape[0]):
        same = key == key[i]
        for t in range(obs.shape[1]):
            w = witness[same, t]
            o, u = obs[same, t][w], usual[same, t][w]
            if w.any():
                extra = obs_fresh[same, t][fresh[same, t]].sum()
                out[i, t] = (o.sum() + extra) / np.maximum(u, cpu.IDLE_FLOOR).sum()
            if (u >= cpu.LOAD_FLOOR).any():
                out[i, t] = max(out[i, t], o[u >= cpu.LOAD_FLOOR].sum() / u[u >= cpu.LOAD_FLOOR].sum())
    return out


def _ref_episode_in_surge(m: cpu.CpuMatrix, x: np.ndarray, profile: np.ndarray, pdays: np.ndarray,
                          flag: np.ndarray, episode: np.ndarray, new: np.ndarray, s: cpu.CpuSettings) -> np.ndarray:
    """Episode by episode, hour by hour: the project's unflagged nodes and the node itself outside its flat
    stretch, pooled by load, over the episode and its last day, or (ended) over it and the day after it
    where that is higher, against the node's usual peak."""
    out = np.zeros(flag.shape, dtype=bool)
    t_all = x.shape[1]
    project = m.nodes["project"].astype(str).to_numpy()
    have = ~np.isnan(x) & ~np.isnan(profile) & (pdays >= s.min_profile_days)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fresh = (~np.isnan(x) & (pdays < s.min_profile_days)
                 & (np.nanstd(_trailing(x, cpu.DEMAND_HOURS), axis=2) > s.flat_tolerance / 2))
    for i in np.flatnonzero(flag.any(axis=1) & ~new):
        peers = (project == project[i]) & ~flag.any(axis=1)
        hours = np.flatnonzero(episode[i])
        runs: list[list[int]] = []
        for h in hours:  # merged across gaps of up to two hours
            if runs and h - runs[-1][1] <= cpu.EPISODE_GAP_HOURS:
                runs[-1][1] = int(h)
            else:
                runs.append([int(h), int(h)])
        for a, last in runs:
            b = last + 1
            lvl = float(np.nanmedian(x[i, a:b]))
            lo = a
            while lo > 0 and abs(x[i, lo - 1] - lvl) <= 2 * s.flat_tolerance:
                lo -= 1
            ok = have.copy()
            ok[i, lo:b] = False
            seen = ok | (fresh & peers[:, None])
            rows = peers.copy()
            rows[i] = True

            def read(u: int, v: int, rows: np.ndarray = rows, ok: np.ndarray = ok, seen: np.ndarray = seen) -> float:
                return _ref_read(x[rows, u:v], profile[rows, u:v], ok[rows, u:v], seen[rows, u:v])

            d = min(read(lo, b), read(max(b - cpu.DAY_HOURS, 0), b))
            if b + cpu.ONSET_HOURS <= t_all:
                d = max(d, read(lo, min(b + cpu.DAY_HOURS, t_all)))
            day_peak = np.nanmax(profile[i, max(lo - cpu.DAY_HOURS, 0): b])
            at_peak = np.nanmax(profile[i, lo:b])
            short = b - lo <= cpu.CAP_HOURS and b + cpu.ONSET_HOURS <= t_all
            if d >= cpu.SURGE_RATIO and (day_peak * d >= cpu.SATURATION_SHARE * lvl
                                         or (short and at_peak * cpu.LONE_DEMAND >= cpu.SATURATION_SHARE * lvl)):
                out[i, a:b] = True
    return out


def _ref_read(x: np.ndarray, profile: np.ndarray, ok: np.ndarray, seen: np.ndarray) -> float:
    busy = ok & (profile >= cpu.LOAD_FLOOR)
    u = np.maximum(profile[ok], cpu.IDLE_FLOOR).sum()
    floored = float(x[seen].sum() / u) if u > 0 else 0.0
    if busy.any() and profile[busy].sum() >= cpu.LOAD_FLOOR * x.shape[1]:
        return max(floored, float(x[busy].sum() / profile[busy].sum()))
    return floored


def _fleet(n: int = 300, days: int = 14, seed: int = 4) -> cpu.CpuMatrix:
    """Shaped load with gaps; pinned, stealth and new miners; one project surging; a late, new node pool."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range("2026-10-01", periods=24 * days, freq="h", tz="UTC")
    h = hours.hour.to_numpy()
    t = len(hours)
    x = np.clip(rng.uniform(10, 50, n)[:, None] * (0.3 + 0.7 * np.clip(np.sin((h - 6) / 24 * 2 * np.pi), 0, None))
                + rng.normal(0, 4, (n, t)), 0, 100)
    start = t - 30
    x[:15, start:] = 99 + rng.normal(0, 0.3, (15, t - start))
    x[15:30, start:] = np.maximum(x[15:30, start:], 62 + rng.normal(0, 1, (15, t - start)))
    x[40:60, start:] = np.clip(x[40:60, start:] * 2, 0, 95)
    x[41:45, start + 5: start + 13] = 61 + rng.normal(0, 0.4, (4, 8))  # flat by chance inside the surge
    x[60:66, start + 5: start + 13] = 61 + rng.normal(0, 0.4, (6, 8))
    new = np.zeros(n, dtype=bool)
    new[280:] = True
    x[280:, : 24 * 9] = np.nan
    x[290:, 24 * 9:] = 98 + rng.normal(0, 0.4, (10, t - 24 * 9))
    x[rng.uniform(size=x.shape) < 0.01] = np.nan
    nodes = pd.DataFrame({"node": [f"n{i}" for i in range(n)], "provider": "aws",
                          "project": [f"p{i // 20}" for i in range(n)], "cluster": None, "region": "r",
                          "instance_type": "m5.large", "first_seen": hours[0], "new": new})
    return cpu.CpuMatrix(nodes, hours, x)


@pytest.mark.parametrize("settings", [cpu.CpuSettings(),
                                      cpu.CpuSettings(pinned_hours=1, plateau_hours=4, profile_days=3,
                                                      min_profile_days=2),
                                      cpu.CpuSettings(pinned_hours=3, plateau_hours=8, profile_days=10)])
def test_features_match_the_tensor_reference(settings: cpu.CpuSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _fleet()
    ref = _ref_features(m, settings)
    monkeypatch.setattr(cpu, "CHUNK_NODES", 64)  # several blocks, one of them ragged
    f = cpu.features(m, settings)
    assert f.pinned.any() and f.plateau.any()
    np.testing.assert_array_equal(f.pinned, ref.pinned)
    np.testing.assert_array_equal(f.plateau, ref.plateau)
    np.testing.assert_array_equal(f.profile_days, ref.profile_days)
    np.testing.assert_array_equal(f.episode, ref.episode)
    for name in ("profile", "spread", "window_mean"):
        np.testing.assert_allclose(getattr(f, name), getattr(ref, name), atol=1e-3, equal_nan=True, err_msg=name)


# ------------------------------------------------------------------------------------------------------
# Issue 16: long miners stay open, saturating surges are not miners (also in small projects).

LONG = pd.date_range("2026-09-01", periods=24 * 45, freq="h", tz="UTC")
LONG_START = 24 * 10 + 5  # day 10, 05:00 UTC


def _daily(rng: np.random.Generator, hours: pd.DatetimeIndex, peak: float, trough: float, sigma: float = 3.0,
           ) -> np.ndarray:
    h = hours.hour.to_numpy()
    bump = np.exp(-0.5 * ((h - 14) / 3.5) ** 2)
    return np.clip(trough + (peak - trough) * bump + rng.normal(0, sigma, len(hours)), 0, 100)


def _matrix(traces: dict[str, np.ndarray], hours: pd.DatetimeIndex, project: str = "p") -> cpu.CpuMatrix:
    frames = [pd.DataFrame({"timestamp": hours, "node": n, "cpu_utilization": v}) for n, v in traces.items()]
    df = pd.concat(frames, ignore_index=True).assign(provider="aws", project=project)
    return cpu.cpu_matrix(normalize_usage(df))


def _by_node(m: cpu.CpuMatrix, s: cpu.CpuSettings | None = None) -> dict[str, list[cpu.NodeEpisode]]:
    s = s or cpu.CpuSettings()
    out: dict[str, list[cpu.NodeEpisode]] = {}
    for e in cpu.node_episodes(m, cpu.features(m, s), s):
        out.setdefault(e.node, []).append(e)
    return out


@pytest.mark.parametrize("level, std", [(99.0, 0.4), (60.0, 1.0)])
def test_a_miner_running_for_a_month_is_still_active_on_its_last_day(level: float, std: float) -> None:
    rng = np.random.default_rng(11)
    traces = {f"n{k}": _daily(rng, LONG, 35, 12) for k in range(3)}
    v = traces["n0"]
    v[LONG_START:] = np.maximum(v[LONG_START:], level + rng.normal(0, std, len(v) - LONG_START))
    eps = _by_node(_matrix(traces, LONG))
    assert set(eps) == {"n0"}
    assert len(eps["n0"]) == 1, [(e.start, e.last) for e in eps["n0"]]
    e = eps["n0"][0]
    assert e.start == LONG[LONG_START] and e.last == LONG[-1] + pd.Timedelta(hours=1)  # 35 days on: still open


def test_a_miner_that_stops_resolves_when_cpu_is_back_to_its_profile() -> None:
    rng = np.random.default_rng(12)
    traces = {f"n{k}": _daily(rng, LONG, 35, 12) for k in range(3)}
    stop = LONG_START + 24 * 20 + 7
    v = traces["n1"]
    v[LONG_START:stop] = 99 + rng.normal(0, 0.4, stop - LONG_START)
    m = _matrix(traces, LONG)
    f = cpu.features(m, cpu.CpuSettings())
    eps = _by_node(m)
    assert set(eps) == {"n1"} and len(eps["n1"]) == 1
    e = eps["n1"][0]
    assert e.start == LONG[LONG_START]
    assert LONG[stop] <= e.last <= LONG[stop] + pd.Timedelta(hours=2)
    row = list(m.nodes["node"]).index("n1")
    assert not f.episode[row, stop + 2:].any()
    # the 20 days of mining never became the node's profile: two weeks later it is the old shape again
    assert np.nanmean(f.profile[row, -24:]) < 40


def _surge(rng: np.random.Generator, hours: pd.DatetimeIndex, n_others: int, at: int, days: int = 2,
           mult: float = 1.45) -> dict[str, np.ndarray]:
    """A project whose busy node (60-75%) saturates at 100% for a few hours while the others surge too."""
    t = np.arange(len(hours))
    factor = np.where((t >= at) & (t < at + 24 * days), mult, 1.0)
    busy = np.minimum(_daily(rng, hours, 72, 45, 2.5) * factor, 100.0)
    traces = {"busy": np.round(busy, 1)}
    for k in range(n_others):
        traces[f"o{k}"] = np.clip(_daily(rng, hours, 35 + 5 * k, 12) * factor, 0, 100)
    return traces


@pytest.mark.parametrize("n_others", [1, 2, 3, 6])
def test_a_busy_node_saturating_in_a_project_surge_is_not_a_miner(n_others: int) -> None:
    rng = np.random.default_rng(20 + n_others)
    at = 24 * 20
    traces = _surge(rng, LONG, n_others, at)
    m = _matrix(traces, LONG)
    assert (traces["busy"][at: at + 48] >= 99.9).sum() >= 4  # it does hit the cap, flat, for hours
    assert _by_node(m) == {}


def test_a_miner_starting_on_a_busy_node_during_a_surge_is_flagged_once_it_outlives_the_surge() -> None:
    rng = np.random.default_rng(31)
    at = 24 * 20
    traces = _surge(rng, LONG, 2, at, days=1)
    start = at + 13  # during the surge, at the node's daily peak: looks like saturation at first
    traces["busy"][start:] = 99 + rng.normal(0, 0.3, len(LONG) - start)
    eps = _by_node(_matrix(traces, LONG))
    assert set(eps) == {"busy"}
    e = eps["busy"][0]
    assert e.start <= LONG[start + 1]
    # detected once the plateau is no longer explained: when the others come down for the night
    assert LONG[start] + pd.Timedelta(hours=2) < e.detected_at <= LONG[start] + pd.Timedelta(hours=12)
    assert e.last == LONG[-1] + pd.Timedelta(hours=1)


def test_a_miner_on_a_quiet_node_during_a_surge_is_flagged_at_once() -> None:
    rng = np.random.default_rng(32)
    at = 24 * 20
    traces = _surge(rng, LONG, 3, at)
    start = at + 10
    traces["o0"][start:] = 99 + rng.normal(0, 0.3, len(LONG) - start)
    eps = _by_node(_matrix(traces, LONG))
    assert set(eps) == {"o0"}
    assert eps["o0"][0].detected_at - LONG[start] <= pd.Timedelta(hours=2)


def test_an_episode_ends_with_its_node_and_survives_a_gap_in_the_data() -> None:
    rng = np.random.default_rng(13)
    traces = {f"n{k}": _daily(rng, LONG, 35, 12) for k in range(3)}
    gone = LONG_START + 24 * 5
    traces["n0"][LONG_START:] = 99 + rng.normal(0, 0.4, len(LONG) - LONG_START)
    traces["n0"][gone:] = np.nan  # terminated: no more samples
    traces["n1"][LONG_START:] = 99 + rng.normal(0, 0.4, len(LONG) - LONG_START)
    traces["n1"][LONG_START + 50: LONG_START + 60] = np.nan  # the agent stopped reporting for 10 hours
    usage = normalize_usage(pd.concat([pd.DataFrame({"timestamp": LONG, "node": n, "cpu_utilization": v}).dropna()
                                       for n, v in traces.items()], ignore_index=True).assign(provider="aws",
                                                                                               project="p"))
    eps = _by_node(cpu.cpu_matrix(usage))
    assert [e.last for e in eps["n0"]] == [LONG[gone]]
    assert len(eps["n1"]) == 1 and eps["n1"][0].last == LONG[-1] + pd.Timedelta(hours=1)


def test_nodes_added_for_the_surge_do_not_hide_it() -> None:
    """On the third day of a surge, the nodes the autoscaler added have only known the surge: they are no
    witness of the project's usual demand, and the busy node's saturation is still read as the surge."""
    rng = np.random.default_rng(41)
    at = 24 * 20
    traces = _surge(rng, LONG, 2, at, days=3)
    for k in range(4):
        v = _daily(rng, LONG, 45, 15) * 1.45
        v[:at] = np.nan
        v[at + 24 * 3:] = np.nan
        traces[f"added{k}"] = np.clip(v, 0, 100)
    busy = traces["busy"]
    assert (busy[at + 48: at + 72] >= 99.9).sum() >= 2  # capped on the third day too
    usage = normalize_usage(pd.concat([pd.DataFrame({"timestamp": LONG, "node": n, "cpu_utilization": v}).dropna()
                                       for n, v in traces.items()], ignore_index=True).assign(provider="aws",
                                                                                               project="p"))
    assert _by_node(cpu.cpu_matrix(usage)) == {}


@pytest.mark.parametrize("start_hour", [2, 14])
def test_a_miner_on_the_busy_node_among_noisy_idle_nodes_is_flagged_at_once(start_hour: int) -> None:
    """Read by load, demand leans on the busy nodes; forty quiet nodes (~1%, their noise clipped at 0, so
    their mean runs well above their usual, a median) must not read as a surge, by night or by day, and a
    miner on the one busy node is flagged within two hours."""
    rng = np.random.default_rng(51)
    traces = {f"idle{k:02d}": np.clip(1.0 + rng.normal(0, 3.0, len(LONG)), 0, 100) for k in range(40)}
    traces["web"] = _daily(rng, LONG, 40, 22)
    traces["busy"] = _daily(rng, LONG, 72, 50)
    start = 24 * 20 + start_hour
    traces["busy"][start:] = 99 + rng.normal(0, 0.3, len(LONG) - start)
    eps = _by_node(_matrix(traces, LONG))
    assert set(eps) == {"busy"}
    assert eps["busy"][0].detected_at - LONG[start] <= pd.Timedelta(hours=2)
    assert eps["busy"][0].last == LONG[-1] + pd.Timedelta(hours=1)
