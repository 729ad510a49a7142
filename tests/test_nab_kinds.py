"""The generated NAB-style corpora: reproducible, labelled the way NAB labels, readable by bench/nab.py."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import nab
from bench.nab_kinds import ANOMALIES, KINDS, make_series, write_corpus
from bench.nab_scoring import load_windows, probation_length, sweep_scores

SEED = 7  # a building seed (bench figures are reported on others)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kinds")
    write_corpus(SEED, 12, out)
    return out


def test_a_series_depends_only_on_seed_and_index(corpus: Path) -> None:
    s = make_series(SEED, 4)
    assert np.array_equal(pd.read_csv(corpus / s.name)["value"].to_numpy(), s.values)
    assert not np.array_equal(make_series(SEED + 1, 4).values[:100], s.values[:100])


def test_windows_are_nab_windows_centred_on_the_labels(corpus: Path) -> None:
    windows = load_windows(corpus)
    labels = json.loads((corpus / "combined_labels.json").read_text())
    meta = json.loads((corpus / "kinds.json").read_text())
    assert {m["kind"] for m in meta.values()} == set(KINDS)
    assert any(labels.values())
    for name, wins in windows.items():
        ts = pd.DatetimeIndex(pd.to_datetime(pd.read_csv(corpus / name)["timestamp"]))
        n = len(ts)
        assert len(wins) == len(labels[name]) == len(meta[name]["anomalies"])
        assert set(meta[name]["anomalies"]) <= set(ANOMALIES)
        for (lo, hi), label in zip(wins, labels[name], strict=True):
            a, b, at = (int(ts.get_loc(t)) for t in (lo, hi, pd.Timestamp(label)))
            assert at - a == b - at  # centred
            assert abs((b - a) - 0.1 * n / len(wins)) <= 2  # 10 % of the file split over its anomalies
            assert a > probation_length(n)
        starts = [int(ts.get_loc(lo)) for lo, _ in wins]
        ends = [int(ts.get_loc(hi)) for _, hi in wins]
        assert all(e < s for e, s in zip(ends, starts[1:], strict=False))  # no overlap
        # the NAB scorer sees every window
        _, wid = sweep_scores(ts, wins, nab.NAB_PROFILES["standard"])
        assert sorted({int(w) for w in wid if w >= 0}) == list(range(len(wins)))


def test_each_label_row_is_where_its_anomaly_starts() -> None:
    seen = set()
    for i in range(40):
        s = make_series(SEED, i)
        for at, kind in zip(s.onsets, s.anomalies, strict=True):
            x = s.values
            seen.add(kind)
            if kind == "spike":
                assert x[at] > x[at - 1], (s.name, at)
            elif kind == "dip":
                assert x[at] < x[at - 1] or x[at] == 0.0, (s.name, at)
            elif kind == "flatline":
                assert np.all(x[at: at + 30] == x[at]), (s.name, at)
    assert {"spike", "dip", "flatline"} <= seen


def test_nab_bench_scores_a_generated_corpus_from_a_nab_tree_with_separate_labels(
        corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert nab.main(["--data", str(corpus), "--out", str(tmp_path / "flat")]) == 0
    flat = capsys.readouterr().out
    assert "realAWSCloudwatch only" in flat and "Numenta HTM" not in flat
    tree = tmp_path / "data" / "synthetic"
    tree.mkdir(parents=True)
    for csv in corpus.glob("*.csv"):
        shutil.copy(csv, tree / csv.name)
    labels = tmp_path / "labels" / "windows.json"
    labels.parent.mkdir()
    raw = json.loads((corpus / "combined_windows.json").read_text())
    labels.write_text(json.dumps({f"synthetic/{k}": v for k, v in raw.items()}))
    assert nab.main(["--data", str(tmp_path / "data"), "--labels", str(labels), "--out", str(tmp_path / "o")]) == 0
    nested = capsys.readouterr().out
    summary = [ln for ln in flat.splitlines() if ln.startswith("costwatch")]
    assert summary and summary == [ln for ln in nested.splitlines() if ln.startswith("costwatch")]
