"""Build providers from config and gather their frames, one provider's failure never stopping the others.

A provider is any object with ``name``, ``fetch_costs(start, end)`` and ``fetch_usage(start, end)``
returning normalized frames (``costwatch.model``), and optionally ``stats() -> dict`` (requests made,
bytes scanned; a ``notes`` list of things worth knowing) for the run summary and ``failures`` (a list of
``costwatch.model.ScopeFailure``: the regions, accounts, projects or subscriptions it could not read).  A
provider that reads a live API takes ``now`` as well (keyword): the moment the fetch answers for, so
``report --as-of`` asks what an hourly run at that time would have asked (its last day, restate window and
CPU hours) rather than going by the provider's own clock.

``run`` and ``report`` gather through :func:`collect`, so they degrade the same way: a provider or part of one
that fails is named ("missing data") and the rest is used; only when no provider delivered anything is it
an error.  Providers register by config ``type``; modules are imported only when used, so a user without
``costwatch[aws]`` never imports boto3.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd

from .errors import ConfigError, CostwatchError
from .model import ScopeFailure, empty_costs, empty_usage, validate_costs, validate_usage

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
    failures: list[ScopeFailure] = field(default_factory=list)  # regions/projects/... the providers could not read
    parts_failed: list[ScopeFailure] = field(default_factory=list)  # ``errors``, structured (scope: the part)
    notes: list[str] = field(default_factory=list)  # "<provider>: <note>" from the providers' stats
    delivered: set[str] = field(default_factory=set)  # providers that returned rows in some part
    raised: list[BaseException] = field(default_factory=list)  # the exceptions behind ``errors``
    providers_of: dict[str, set[str]] = field(default_factory=dict)  # project id -> providers that delivered it

    def every_provider_failed(self, providers: list[Any]) -> bool:
        """Every provider failed (timeouts included) and none delivered a row: nothing to detect on."""
        return bool(providers) and all(p.name in self.failed and p.name not in self.delivered for p in providers)

    def stat_lines(self) -> list[str]:
        """One ``name: key value, ...`` line per provider: its counters, never a Python repr (lists are shown
        as notes and errors; a dict of counters as ``key a=1 b=2``)."""
        def shown(v: Any) -> str:
            return " ".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else str(v)

        return [f"{name}: " + ", ".join(f"{k} {shown(v)}" for k, v in st.items() if not isinstance(v, list | tuple))
                for name, st in self.stats.items()]

    def error_records(self) -> list[dict[str, str]]:
        """The report's ``errors``: every failed part, then every failed region/project/... of a provider."""
        return [f.to_dict() for f in (*self.parts_failed, *self.failures)]

    def warnings(self) -> list[str]:
        """What the user should act on: each failed part of a provider, then each failed region/project/..."""
        return [f"missing data: {e}" for e in self.errors] + [f"not read: {f}" for f in self.failures]


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


def _takes_now(fetch: Callable[..., Any]) -> bool:
    """Whether a fetch method accepts ``now`` (API providers); file readers and simple providers do not."""
    try:
        params = inspect.signature(fetch).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "now" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _message(e: BaseException) -> str:
    """A part's error line: ours as written; anything else is a bug, named by type only."""
    if isinstance(e, CostwatchError):
        return str(e)
    return (f"unexpected {type(e).__name__} (a costwatch bug: please report it; "
            "`costwatch --debug report` shows the traceback)")


class _Fetch:
    """One provider's fetch, part by part, recording what finished.  Run in a worker thread when the
    caller sets a deadline; whatever has not finished by then is reported as timed out and whatever
    arrives later is ignored."""

    def __init__(self, provider: Provider, start: pd.Timestamp, end: pd.Timestamp, strict: bool,
                 now: pd.Timestamp | None = None) -> None:
        self.p, self.start, self.end, self.strict, self.now = provider, start, end, strict, now
        self.lock = threading.Lock()
        self.frames: dict[str, pd.DataFrame] = {}
        self.errors: dict[str, str] = {}
        self.stats: dict[str, Any] | None = None
        self.failures: list[ScopeFailure] = []
        self.exceptions: dict[str, BaseException] = {}
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
                    if isinstance(error, BaseException):
                        self.errors[part] = _message(error)
                        self.exceptions[part] = error
                    elif frame is not None:
                        self.frames[part] = frame
                self._snapshot_stats()
        except BaseException as e:  # strict mode (or a KeyboardInterrupt): the caller decides
            with self.lock:
                self.raised = e

    def _one(self, part: str) -> tuple[pd.DataFrame | None, BaseException | None]:
        fetch = getattr(self.p, f"fetch_{part}")
        try:
            if self.now is not None and _takes_now(fetch):
                frame = fetch(self.start, self.end, now=self.now)
            else:
                frame = fetch(self.start, self.end)
            if len(frame):
                _CHECKS[part](frame, f"{self.p.name} {part}")
                return frame, None
            return None, None
        except CostwatchError as e:
            if self.strict:
                raise
            return None, e
        except Exception as e:
            if self.strict:
                raise
            # a provider bug must cost that provider's data, not every provider's alerts
            log.exception("provider %s: %s fetch raised %s", self.p.name, part, type(e).__name__)
            return None, e

    def _snapshot_stats(self) -> None:
        get_stats = getattr(self.p, "stats", None)
        failures = [f for f in getattr(self.p, "failures", None) or [] if isinstance(f, ScopeFailure)]
        if not callable(get_stats):
            snap = None
        else:
            try:
                snap = dict(get_stats())
            except Exception as e:
                log.warning("provider %s: stats() raised %s", self.p.name, type(e).__name__)
                snap = None
        with self.lock:
            if not self.abandoned:
                # nothing to say (the files provider, usually): no empty note
                self.stats = snap if snap else self.stats
                self.failures = failures

    def give_up(self) -> None:
        """Past the deadline: the parts not finished are errors, later results are dropped."""
        with self.lock:
            self.abandoned = True
            self.timed_out = [p for p in self.parts if p not in self.done]


def gather(providers: list[Provider], start: pd.Timestamp, end: pd.Timestamp, *,
           strict: bool = False, deadline: float | None = None, now: pd.Timestamp | None = None) -> Gathered:
    """Fetch from every provider; with ``strict`` the first error is raised (one provider, CLI use).

    ``now``: the moment the fetch answers for, passed to the providers that take it (see the module
    docstring); ``run`` and ``report`` pass the end of the window they evaluate (``--as-of`` when replaying),
    so a replay and the hourly run it replays ask the clouds the same things.  None: each provider's clock.

    Costs and usage are required parts of the protocol; findings are optional (``fetch_findings``).

    With ``deadline`` (seconds) each provider is fetched in a worker thread, one provider after the other
    (as without a deadline: the same order of requests, one provider's data in memory at a time), and a
    provider still busy after ``deadline`` seconds is reported as timed out for the parts it had not
    finished (a hung API, a retry loop): the run goes on with the next.  Its thread is a daemon thread,
    left to finish or die with the process; nothing it returns later is used.  A provider with a
    ``set_deadline(monotonic_instant)`` method is told the deadline first, so it can stop in time with what
    it has (and resume in its next run) rather than time out with nothing."""
    jobs = [_Fetch(p, start, end, strict, now) for p in providers]
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
    out = Gathered(empty_costs(), empty_usage())
    for job in jobs:
        with job.lock:
            _collect_job(job, parts, out, deadline)
    # one provider's frame is used as it is: a copy of a 1,000-account organization's frames is ~300 MB
    if parts["costs"]:
        out.costs = _concat(parts["costs"])
    if parts["usage"]:
        out.usage = _concat(parts["usage"])
    out.findings = pd.concat(parts["findings"], ignore_index=True) if parts["findings"] else None
    return out


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if len(frames) == 1 and frames[0].index.equals(pd.RangeIndex(len(frames[0]))):
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def _collect_job(job: _Fetch, parts: dict[str, list[pd.DataFrame]], out: Gathered, deadline: float | None) -> None:
    name = job.p.name
    for part in _PARTS:
        if part in job.frames:
            frame = job.frames[part]
            parts[part].append(frame)
            out.delivered.add(name)
            for pid in frame["project_id" if part == "costs" else "project"].dropna().unique():
                out.providers_of.setdefault(str(pid), set()).add(name)
        if part in job.errors:
            out.errors.append(f"{name} {part}: {job.errors[part]}")
            out.raised.append(job.exceptions[part])
            out.parts_failed.append(ScopeFailure.from_error(name, part, job.errors[part]))
            out.failed.setdefault(name, []).append(part)
    if job.timed_out:
        out.errors.append(f"{name} {', '.join(job.timed_out)}: timed out after {deadline:g}s (the provider "
                          "did not answer in time; what it had fetched and the other providers are used)")
        out.failed.setdefault(name, []).extend(job.timed_out)
        out.parts_failed.append(ScopeFailure(name, ", ".join(job.timed_out), f"timed out after {deadline:g}s",
                                             "see why the provider is slow, or raise alerting.provider_timeout"))
    if job.stats is not None:
        out.stats[name] = job.stats
        out.notes += [f"{name}: {n}" for n in job.stats.get("notes") or [] if isinstance(n, str)]
    out.failures += job.failures


def collect(providers: list[Provider], start: pd.Timestamp, end: pd.Timestamp, *,
            deadline: float | None = None, now: pd.Timestamp | None = None) -> Gathered:
    """:func:`gather` for ``run`` and ``report`` alike: whatever any provider delivered is used, and only
    when every provider failed is it an error (the provider's own error when there was one, so a single
    provider fails as it would on its own: a missing file names the file)."""
    got = gather(providers, start, end, deadline=deadline, now=now)
    if got.every_provider_failed(providers):
        if len(got.raised) == 1 and len(got.errors) == 1 and isinstance(got.raised[0], CostwatchError):
            raise got.raised[0]
        raise CostwatchError("every provider failed: " + "; ".join(got.errors))
    return got
