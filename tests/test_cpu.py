"""The CPU plateau detector on controlled node traces: miners flatten CPU, real load keeps its shape."""

from __future__ import annotations

import numpy as np
import pandas as pd

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
