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


def _ref_features(m: cpu.CpuMatrix, s: cpu.CpuSettings) -> cpu.CpuFeatures:
    x = m.values
    new = m.nodes["new"].to_numpy(dtype=bool)
    profile, spread, pdays = _ref_profile(x, s.profile_days)
    pinned, plateau, _ = _ref_flags(x, profile, spread, pdays, new, s)
    w = max(s.pinned_hours, s.plateau_hours)
    flagged = _trailing((pinned | plateau)[:, ::-1].astype(float), w).max(axis=2)[:, ::-1] > 0
    profile, spread, pdays = _ref_profile(np.where(flagged, np.nan, x), s.profile_days)
    pinned, plateau, level = _ref_flags(x, profile, spread, pdays, new, s)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        win = _trailing(x, 3)
        usual = np.nanmean(_trailing(profile, 3), axis=2)
        moving = np.nanstd(win, axis=2) > s.flat_tolerance / 2
        rel = np.where((pinned | plateau) | ~moving | np.isnan(usual), np.nan,
                       np.nanmean(win, axis=2) / np.maximum(usual, 10.0))
    frame = pd.DataFrame(rel)
    key = m.nodes["project"].astype(str).to_numpy()
    surge = ((frame.groupby(key).median() >= 1.3) & (frame.notna().groupby(key).sum() >= 3))
    surge_a = surge.reindex(key).to_numpy(dtype=bool)
    return cpu.CpuFeatures(profile, spread, pdays, pinned & ~(surge_a & ~new[:, None]), plateau & ~surge_a,
                           level, new)


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
    for name in ("profile", "spread", "window_mean"):
        np.testing.assert_allclose(getattr(f, name), getattr(ref, name), atol=1e-3, equal_nan=True, err_msg=name)
