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
from costwatch.safetext import terminal_safe

from . import duckdb_focus
from .focus import concat_frames, links_out, load_focus
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
    """Costs and usage from local files or folders; several paths are concatenated in the order given.

    ``engine`` picks the cost reader per path: ``pandas`` keeps every export row, ``duckdb`` aggregates to
    daily rows in DuckDB (see ``duckdb_focus``), ``auto`` uses DuckDB when it is installed and the path holds
    more than ``duckdb_focus.AUTO_BYTES`` of CSV text.  ``owner_tags`` are the tags DuckDB keeps.
    """

    name = "files"

    def __init__(self, costs: PathArg = None, usage: PathArg = None, *, engine: str = "auto",
                 owner_tags: Sequence[str] = duckdb_focus.DEFAULT_OWNER_TAGS, name: str = "files") -> None:
        self.name = name
        self.cost_paths = _as_paths(costs)
        self.usage_paths = _as_paths(usage)
        self.engine = engine
        self.owner_tags = list(owner_tags)
        if engine == "duckdb":
            duckdb_focus.require()

    def fetch_costs(self, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> pd.DataFrame:
        """All rows of the files; ``start``/``end`` are accepted for the provider protocol but files are
        read whole, since detection needs the history before ``start`` anyway."""
        return concat_frames((self._load_costs(p) for p in self.cost_paths), empty_costs)

    def _load_costs(self, path: Path) -> pd.DataFrame:
        if duckdb_focus.choose_engine(path, self.engine) == "duckdb":
            return duckdb_focus.load_focus_daily(path, owner_tags=self.owner_tags)
        return load_focus(path)

    def fetch_usage(self, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None) -> pd.DataFrame:
        return concat_frames((load_usage(p) for p in self.usage_paths), empty_usage)

    def stats(self) -> dict[str, str]:
        """A note for the report when a folder holds files linked to outside it (they are not read)."""
        out = [str(f) for p in (*self.cost_paths, *self.usage_paths) for f in links_out(p)]
        if not out:
            return {}
        shown = ", ".join(terminal_safe(f, 200) for f in out[:3])
        shown += f" and {len(out) - 3} more" if len(out) > 3 else ""
        return {"not read": f"{len(out)} file(s) linked to outside their folder ({shown})"}


def from_config(provider_cfg: Any, cfg: Any = None) -> FilesProvider:
    """Registry factory (``type: files``); paths were already resolved against the config file."""
    owner_tags = getattr(getattr(cfg, "alerting", None), "owner_tags", None) or duckdb_focus.DEFAULT_OWNER_TAGS
    if getattr(cfg, "monitors", None):  # DuckDB keeps only the tags asked for: the monitors' selectors read some
        from costwatch.monitors import tag_keys

        owner_tags = list(dict.fromkeys([*owner_tags, *tag_keys(cfg)]))
    return FilesProvider(costs=provider_cfg.costs, usage=provider_cfg.usage,
                         engine=getattr(provider_cfg, "engine", "auto"), owner_tags=owner_tags,
                         name=getattr(provider_cfg, "name", "files"))
