"""The files provider: FOCUS cost exports and CPU usage CSVs already on disk.

Works offline with exports from any cloud, which makes it the provider for first runs, CI, air-gapped
setups and replaying past incidents.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from costwatch.model import empty_costs, empty_usage

from .focus import concat_frames, load_focus
from .usage import load_usage

__all__ = ["FilesProvider", "from_config", "load_focus", "load_usage"]

PathArg = str | Path | Sequence[str | Path] | None


def _as_paths(value: PathArg) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, str | Path):
        return [Path(value)]
    return [Path(v) for v in value]


class FilesProvider:
    """Costs and usage from local files or folders; several paths are concatenated in the order given."""

    name = "files"

    def __init__(self, costs: PathArg = None, usage: PathArg = None) -> None:
        self.cost_paths = _as_paths(costs)
        self.usage_paths = _as_paths(usage)

    def fetch_costs(self, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> pd.DataFrame:
        """All rows of the files; ``start``/``end`` are accepted for the provider protocol but files are
        read whole, since detection needs the history before ``start`` anyway."""
        return concat_frames((load_focus(p) for p in self.cost_paths), empty_costs)

    def fetch_usage(self, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> pd.DataFrame:
        return concat_frames((load_usage(p) for p in self.usage_paths), empty_usage)


def from_config(provider_cfg: Any, cfg: Any = None) -> FilesProvider:
    """Registry factory (``type: files``); paths were already resolved against the config file."""
    return FilesProvider(costs=provider_cfg.costs, usage=provider_cfg.usage)
