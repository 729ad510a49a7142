"""Build providers from config and gather their frames, one provider's failure never stopping the others.

A provider is any object with ``name``, ``fetch_costs(start, end)`` and ``fetch_usage(start, end)``
returning normalized frames (``costwatch.model``), and optionally ``stats() -> dict`` (requests made,
bytes scanned) for the run summary.  Providers register by config ``type``; modules are imported only
when used, so a user without ``costwatch[aws]`` never imports boto3.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd

from .errors import ConfigError, CostwatchError
from .model import empty_costs, empty_usage, validate_costs, validate_usage


class Provider(Protocol):
    name: str

    def fetch_costs(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame: ...

    def fetch_usage(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame: ...


# config ``type`` -> "module:factory"; the factory takes (provider config model, whole Config)
REGISTRY: dict[str, str] = {
    "files": "costwatch.providers.files:from_config",
    "aws": "costwatch.providers.aws:from_config",
    "gcp": "costwatch.providers.gcp:from_config",
    "azure": "costwatch.providers.azure:from_config",
}


@dataclass
class Gathered:
    costs: pd.DataFrame
    usage: pd.DataFrame
    errors: list[str] = field(default_factory=list)  # one line per provider/part that failed
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    # security findings (GuardDuty and the like), columns as costwatch.model.FINDING_COLUMNS
    findings: pd.DataFrame | None = None


def build(provider_cfg: Any, cfg: Any) -> Provider:
    target = REGISTRY.get(provider_cfg.type)
    if target is None:
        raise ConfigError(f"providers: unknown type {provider_cfg.type!r}; known: {', '.join(sorted(REGISTRY))}")
    module, _, attr = target.partition(":")
    try:
        factory: Callable[[Any, Any], Provider] = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ConfigError(f"providers: type {provider_cfg.type!r} needs an extra: "
                          f"pip install 'costwatch[{provider_cfg.type}]' ({e.name} is missing)") from e
    return factory(provider_cfg, cfg)


def _no_check(frame: pd.DataFrame, source: str) -> None:
    """Findings have no normalized schema to validate; detect reads the columns it needs."""


def gather(providers: list[Provider], start: pd.Timestamp, end: pd.Timestamp, *,
           strict: bool = False) -> Gathered:
    """Fetch from every provider; with ``strict`` the first error is raised (one provider, CLI use).

    Costs and usage are required parts of the protocol; findings are optional (``fetch_findings``)."""
    parts: dict[str, list[pd.DataFrame]] = {"costs": [], "usage": [], "findings": []}
    checks: dict[str, Callable[[pd.DataFrame, str], None]] = {
        "costs": validate_costs, "usage": validate_usage, "findings": _no_check}
    errors: list[str] = []
    stats: dict[str, dict[str, Any]] = {}
    for p in providers:
        for part, bucket in parts.items():
            fetch = getattr(p, f"fetch_{part}", None)
            if not callable(fetch):
                continue
            try:
                frame = fetch(start, end)
                if len(frame):
                    checks[part](frame, f"{p.name} {part}")
                    bucket.append(frame)
            except CostwatchError as e:
                if strict:
                    raise
                errors.append(f"{p.name} {part}: {e}")
        get_stats = getattr(p, "stats", None)
        if callable(get_stats):
            stats[p.name] = dict(get_stats())
    return Gathered(
        pd.concat(parts["costs"], ignore_index=True) if parts["costs"] else empty_costs(),
        pd.concat(parts["usage"], ignore_index=True) if parts["usage"] else empty_usage(),
        errors, stats, pd.concat(parts["findings"], ignore_index=True) if parts["findings"] else None,
    )
