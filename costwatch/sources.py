"""Build providers from config and gather their frames, one provider's failure never stopping the others.

A provider is any object with ``name``, ``fetch_costs(start, end)`` and ``fetch_usage(start, end)``
returning normalized frames (``costwatch.model``), and optionally ``stats() -> dict`` (requests made,
bytes scanned) for the run summary.  Providers register by config ``type``; modules are imported only
when used, so a user without ``costwatch[aws]`` never imports boto3.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd

from .errors import ConfigError, CostwatchError
from .model import empty_costs, empty_usage, validate_costs, validate_usage

log = logging.getLogger("costwatch.sources")


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
    failed: dict[str, list[str]] = field(default_factory=dict)  # provider name -> parts that failed

    def every_provider_failed(self, providers: list[Any]) -> bool:
        """No provider delivered costs or usage (timeouts included): nothing to detect on."""
        return bool(providers) and all({"costs", "usage"} <= set(self.failed.get(p.name, [])) for p in providers)


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


_PARTS = ("costs", "usage", "findings")
_CHECKS: dict[str, Callable[[pd.DataFrame, str], None]] = {
    "costs": validate_costs, "usage": validate_usage, "findings": _no_check}


class _Fetch:
    """One provider's fetch, part by part, recording what finished.  Run in a worker thread when the
    caller sets a deadline; whatever has not finished by then is reported as timed out and whatever
    arrives later is ignored."""

    def __init__(self, provider: Provider, start: pd.Timestamp, end: pd.Timestamp, strict: bool) -> None:
        self.p, self.start, self.end, self.strict = provider, start, end, strict
        self.lock = threading.Lock()
        self.frames: dict[str, pd.DataFrame] = {}
        self.errors: dict[str, str] = {}
        self.stats: dict[str, Any] | None = None
        self.raised: BaseException | None = None   # strict mode: re-raised by the caller
        self.abandoned = False
        self.timed_out: list[str] = []              # parts unfinished at the deadline
        self.done: set[str] = set()                 # parts finished (with data, none, or an error)
        self.parts = [part for part in _PARTS if callable(getattr(provider, f"fetch_{part}", None))]

    def run(self) -> None:
        try:
            for part in self.parts:
                frame, error = self._one(part)
                with self.lock:
                    if self.abandoned:
                        return
                    self.done.add(part)
                    if error is not None:
                        self.errors[part] = error
                    elif frame is not None:
                        self.frames[part] = frame
                self._snapshot_stats()
        except BaseException as e:  # strict mode (or a KeyboardInterrupt): the caller decides
            with self.lock:
                self.raised = e

    def _one(self, part: str) -> tuple[pd.DataFrame | None, str | None]:
        fetch = getattr(self.p, f"fetch_{part}")
        try:
            frame = fetch(self.start, self.end)
            if len(frame):
                _CHECKS[part](frame, f"{self.p.name} {part}")
                return frame, None
            return None, None
        except CostwatchError as e:
            if self.strict:
                raise
            return None, str(e)
        except Exception as e:
            if self.strict:
                raise
            # a provider bug must cost that provider's data, not every provider's alerts
            log.exception("provider %s: %s fetch raised %s", self.p.name, part, type(e).__name__)
            return None, (f"unexpected {type(e).__name__} (a costwatch bug: please report it; "
                          "`costwatch --debug report` shows the traceback)")

    def _snapshot_stats(self) -> None:
        get_stats = getattr(self.p, "stats", None)
        if not callable(get_stats):
            return
        try:
            snap = dict(get_stats())
        except Exception as e:
            log.warning("provider %s: stats() raised %s", self.p.name, type(e).__name__)
            return
        with self.lock:
            if not self.abandoned:
                self.stats = snap

    def give_up(self) -> None:
        """Past the deadline: the parts not finished are errors, later results are dropped."""
        with self.lock:
            self.abandoned = True
            self.timed_out = [p for p in self.parts if p not in self.done]


def gather(providers: list[Provider], start: pd.Timestamp, end: pd.Timestamp, *,
           strict: bool = False, deadline: float | None = None) -> Gathered:
    """Fetch from every provider; with ``strict`` the first error is raised (one provider, CLI use).

    Costs and usage are required parts of the protocol; findings are optional (``fetch_findings``).

    With ``deadline`` (seconds) each provider is fetched in a worker thread, one provider after the other
    (as without a deadline: the same order of requests, one provider's data in memory at a time), and a
    provider still busy after ``deadline`` seconds is reported as timed out for the parts it had not
    finished (a hung API, a retry loop): the run goes on with the next.  Its thread is a daemon thread,
    left to finish or die with the process; nothing it returns later is used.  A provider with a
    ``set_deadline(monotonic_instant)`` method is told the deadline first, so it can stop in time with what
    it has (and resume in its next run) rather than time out with nothing."""
    jobs = [_Fetch(p, start, end, strict) for p in providers]
    if deadline is None:
        for job in jobs:
            job.run()
            if job.raised is not None:
                raise job.raised
    else:
        for job in jobs:
            set_deadline = getattr(job.p, "set_deadline", None)
            if callable(set_deadline):  # a provider that can stop early (the aws one) finishes what it can
                set_deadline(time.monotonic() + deadline)
            t = threading.Thread(target=job.run, name=f"costwatch-fetch-{job.p.name}", daemon=True)
            t.start()
            t.join(deadline)
            if t.is_alive():
                log.warning("provider %s timed out after %gs", job.p.name, deadline)
                job.give_up()
            elif job.raised is not None:
                raise job.raised
    parts: dict[str, list[pd.DataFrame]] = {part: [] for part in _PARTS}
    errors: list[str] = []
    stats: dict[str, dict[str, Any]] = {}
    failed: dict[str, list[str]] = {}
    for job in jobs:
        with job.lock:
            for part in _PARTS:
                if part in job.frames:
                    parts[part].append(job.frames[part])
                if part in job.errors:
                    errors.append(f"{job.p.name} {part}: {job.errors[part]}")
                    failed.setdefault(job.p.name, []).append(part)
            if job.timed_out:
                errors.append(f"{job.p.name} {', '.join(job.timed_out)}: timed out after {deadline:g}s (the provider "
                              "did not answer in time; what it had fetched and the other providers are used)")
                failed.setdefault(job.p.name, []).extend(job.timed_out)
            if job.stats is not None:
                stats[job.p.name] = job.stats
    return Gathered(
        pd.concat(parts["costs"], ignore_index=True) if parts["costs"] else empty_costs(),
        pd.concat(parts["usage"], ignore_index=True) if parts["usage"] else empty_usage(),
        errors, stats, pd.concat(parts["findings"], ignore_index=True) if parts["findings"] else None, failed,
    )
