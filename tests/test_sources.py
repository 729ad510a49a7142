"""Providers from config: one failing provider does not stop the others, and the report names the gap."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from costwatch import sources
from costwatch.errors import ConfigError, DataError
from costwatch.model import empty_usage
from costwatch.providers.files import FilesProvider

SAMPLE = Path(__file__).parent / "data" / "focus-1.0-sample.csv"
T0, T1 = pd.Timestamp("2024-08-01", tz="UTC"), pd.Timestamp("2024-10-01", tz="UTC")


class _Broken:
    name = "broken"

    def fetch_costs(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        raise DataError("export.csv, line 3, column BilledCost: is not a number: 'x'")

    def fetch_usage(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        return empty_usage()

    def stats(self) -> dict[str, int]:
        return {"requests": 2}


def test_failing_provider_does_not_stop_the_others() -> None:
    got = sources.gather([_Broken(), FilesProvider(costs=SAMPLE)], T0, T1)
    assert len(got.costs) == 1000
    assert got.errors == ["broken costs: export.csv, line 3, column BilledCost: is not a number: 'x'"]
    assert got.stats == {"broken": {"requests": 2}}


def test_single_provider_fails_loudly() -> None:
    with pytest.raises(DataError, match="line 3"):
        sources.gather([_Broken()], T0, T1, strict=True)


def test_registry_builds_files_and_names_missing_extras() -> None:
    from costwatch.config import parse_config

    cfg = parse_config(f"providers:\n  - type: files\n    costs: {SAMPLE}\n")
    prov = sources.build(cfg.providers[0], cfg)
    assert len(prov.fetch_costs(T0, T1)) == 1000

    class Fake:
        type = "nope"

    with pytest.raises(ConfigError, match="unknown type 'nope'"):
        sources.build(Fake(), cfg)
