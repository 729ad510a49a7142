"""The aws provider: daily spend from Cost Explorer and hourly EC2 CPU from CloudWatch, via the AWS APIs.

Costs (``fetch_costs``) come from two cached GetCostAndUsage queries per fetch window (see ``costs``);
account names and owners from Organizations; usage (``fetch_usage``) from DescribeInstances and
GetMetricData across every enabled region in parallel (see ``compute``); crypto-mining findings
(``fetch_findings``) from GuardDuty in the same regions (see ``guardduty``).  ``stats()`` reports the requests
made per API, so the Cost Explorer bill ($0.01 a request) stays visible, and the regions that failed.

Costs cover the whole organization when run from the management account.  Instances and CPU live in
each member account: with ``assume_role`` set, the provider assumes that role in every other account
Organizations lists (sts:AssumeRole) and scans them too; without it only the caller's account is scanned.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from costwatch.errors import CostwatchError, ProviderError
from costwatch.model import ScopeFailure, empty_usage
from costwatch.providers._daycache import DayCache, day_range, fetch_clock

from . import athena as athena_source
from . import compute, guardduty
from ._api import Api
from .cache import Cache, Codes
from .costs import CostExplorer, combine
from .mirror import Mirror

__all__ = ["AwsProvider", "from_config"]

DEFAULT_CACHE_NAME = "aws-cache.db"
USAGE_SHARE = 0.6  # of the time left at the start of fetch_usage, what reading instances and CPU may use
FINISH_SECONDS = 15.0  # kept back from the deadline to build the frames from the cache
SKIPPED_SHOWN = 20


def _now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


class AwsProvider:
    """Costs for every account the credentials can see in Cost Explorer; CPU for the caller's account."""

    def __init__(self, *, name: str = "aws", cache_path: str | Path, profile: str | None = None,
                 metric: str = "UnblendedCost", restate_days: int = 3, regions: list[str] | None = None,
                 owner_tag: str = "owner", cpu: bool = True, max_workers: int = 8,
                 assume_role: str | None = None, guardduty: bool = True, cost_source: str = "cost_explorer",
                 athena: Any = None, clock: Callable[[], pd.Timestamp] = _now,
                 organizational_units: list[str] | None = None, state_store: Any = None) -> None:
        self.name = name
        self.api = Api(profile, max_workers)
        self.cache = Cache(cache_path, scope=name)
        # a copy of the cache in the run's state store (``mirror``): a cold start reads it instead of AWS
        self.mirror = Mirror(state_store, self.cache) if state_store is not None else None
        self.clock = clock
        self.ce = CostExplorer(self.api, self.cache, metric, restate_days, clock)
        # cost_source "athena": the Data Export through Athena (``athena`` holds AthenaConfig's fields)
        self.restate_days = restate_days
        self.athena = athena_source.AthenaExport(
            self.api, DayCache(cache_path, scope=name), **_fields(athena), owner_tag=owner_tag,
            restate_days=restate_days, clock=clock) if cost_source == "athena" else None
        self.regions = regions
        self.owner_tag = owner_tag
        self.cpu = cpu
        self.max_workers = max_workers
        self.assume_role = assume_role
        self.guardduty = guardduty
        self.organizational_units = list(organizational_units or [])
        self._shard: set[str] | None = None
        self.errors: list[str] = []
        self.failures: list[ScopeFailure] = []  # the same failures, structured (provider, scope, what, fix)
        self.notes: list[str] = []
        self.instances = compute.instances_frame(None, [])
        # set_deadline(): a time.monotonic() instant by which fetching must be over (the Lambda's time left)
        self.deadline: float | None = None
        self.monotonic: Callable[[], float] = time.monotonic
        self._skipped: set[str] = set()
        self._accounts: tuple[dict[str, str], dict[str, str]] | None = None
        self._regions_seen: list[str] = []
        self._apis: list[Api] | None = None
        self._enabled: dict[str | None, list[str]] = {}
        self._findings = 0

    def set_deadline(self, at: float) -> None:
        """Fetching must be over by ``at`` (``time.monotonic()``): (account, region) pairs not started by then
        are left for the next run, which reads them first; ``stats()`` names the accounts skipped."""
        self.deadline = at

    def _budget(self, share: float) -> float | None:
        """The instant by which a scan stops starting new pairs: ``share`` of the time left, less the time
        needed to finish."""
        if self.deadline is None:
            return None
        now = self.monotonic()
        return now + max(0.0, self.deadline - now - FINISH_SECONDS) * share

    def accounts(self) -> tuple[dict[str, str], dict[str, str]]:
        """Account id -> name and id -> owner (once per run; cached on disk for a day); with
        ``organizational_units`` only the accounts under them."""
        if self._accounts is None:
            names, owners = compute.accounts(self.api, self.cache, self.owner_tag, self.clock(), self.notes)
            shard = self.shard()
            if shard is not None:
                names = {a: n for a, n in names.items() if a in shard}
                owners = {a: o for a, o in owners.items() if a in shard}
            self._accounts = names, owners
        return self._accounts

    def shard(self) -> set[str] | None:
        """The accounts under ``organizational_units`` (None: the whole organization)."""
        if self.organizational_units and self._shard is None:
            self._shard = compute.accounts_under(self.api, self.cache, self.organizational_units, self.clock())
        return self._shard

    def fetch_costs(self, start: pd.Timestamp, end: pd.Timestamp, now: pd.Timestamp | None = None) -> pd.DataFrame:
        """Daily cost rows for [start, end) as of ``now`` (a replay's as_of; see ``fetch_clock``), fetching from
        AWS only the days the cache cannot answer or that were still restating then."""
        today = fetch_clock(now, self.clock).date()
        days = day_range(start, end, today)
        with self._copied():
            return self._costs(days, today)

    def _costs(self, days: list[dt.date], today: dt.date) -> pd.DataFrame:
        if self.athena is not None:
            rows = self.athena.daily(days, today)
            names, owners = self.accounts()
            return athena_source.costs_frame(rows, self.athena.export, today, self.restate_days, names, owners)
        plan = self.ce.plan(days, today)
        codes = Codes()
        svc, svc_est = self.ce.daily("service", days, plan["service"], codes)
        reg, reg_est = self.ce.daily("region", days, plan["region"], codes)
        estimated = {d: svc_est.get(d, False) or reg_est.get(d, False) for d in {*svc_est, *reg_est}}
        names, owners = self.accounts()
        shard = self.shard()
        if shard is not None:  # Cost Explorer answers for the whole organization: keep this deployment's share
            ours = np.isin(codes.values("account"), list(shard))
            svc = svc[ours[svc["account"].to_numpy()]]
            reg = reg[ours[reg["account"].to_numpy()]]
        return combine(svc, reg, codes, estimated, names, owners)

    def fetch_usage(self, start: pd.Timestamp, end: pd.Timestamp, now: pd.Timestamp | None = None) -> pd.DataFrame:
        """Hourly CPU of every instance in every region up to ``now`` (see ``fetch_clock``); failed regions go
        to ``stats()["errors"]`` and only a failure of all of them raises."""
        if not self.cpu:
            return empty_usage()
        with self._copied():
            return self._usage(start, end, now)

    @contextmanager
    def _copied(self) -> Iterator[None]:
        """Around a fetch: the state-store copy loaded first (once), then what the fetch changed saved to it.
        The copy failing is a note, never a failed fetch (the data comes from AWS then)."""
        if self.mirror is not None:
            try:
                self.mirror.load()
            except CostwatchError as e:
                self.notes.append(f"the cache copy in the state store was not read: {e}")
        yield
        if self.mirror is not None:
            try:
                self.mirror.save(self.clock())
            except CostwatchError as e:
                self.notes.append(f"the cache copy in the state store was not saved: {e}")

    def _usage(self, start: pd.Timestamp, end: pd.Timestamp, now: pd.Timestamp | None) -> pd.DataFrame:
        targets = self._targets()
        self._regions_seen = sorted({r for _, r in targets})
        at = fetch_clock(now, self.clock)
        results = compute.scan(targets, start, end, cpu=True, max_workers=self.max_workers, now=at,
                               cache=self.cache, deadline=self._budget(USAGE_SHARE), clock=self.monotonic)
        self._note_skipped(results)
        failed = self._regions_failed(results)
        if failed and len(failed) == len(results):
            raise ProviderError("; ".join(str(r.error) for r in failed[:3])
                                + (f" (and {len(failed) - 3} more regions)" if len(failed) > 3 else ""))
        units = [(compute.owner_key(api), region) for api, region in targets]
        lo, _ = compute.window(start, end, at)
        self.instances = compute.instances_frame(self.cache, units, seen_since=int(lo.timestamp()))
        return compute.usage_frame(self.cache, units, pd.Timestamp(start), pd.Timestamp(end))

    def _note_skipped(self, results: list[Any]) -> None:
        own = "caller's account"
        self._skipped |= {r.account or own for r in results if getattr(r, "skipped", False)}

    def fetch_findings(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """GuardDuty crypto-mining findings (``CryptoCurrency:*``, ``Impact:Runtime/CryptoMinerExecuted``)
        updated in [start, end], one row per finding, from every enabled region.  GuardDuty off in a region
        skips it; GuardDuty denied is a note and an empty frame, never a failed run."""
        if not self.guardduty:
            return guardduty.empty_findings()
        with self._copied():
            return self._findings_frame(start, end)

    def _findings_frame(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        results = guardduty.scan(self._targets(), start, end, max_workers=self.max_workers,
                                 deadline=self._budget(1.0), clock=self.monotonic, cache=self.cache, now=self.clock())
        self._note_skipped(results)
        self.notes += guardduty.denied_notes(results)
        failed = self._regions_failed(results)
        if failed and len(failed) == len(results):
            raise ProviderError("; ".join(str(r.error) for r in failed[:3])
                                + (f" (and {len(failed) - 3} more regions)" if len(failed) > 3 else ""))
        frame = guardduty.findings_frame(results, start, end)
        self._findings = len(frame)
        return frame

    def _targets(self) -> list[tuple[Api, str]]:
        """(account, region) pairs to scan: every enabled region of every account (regions asked once
        per account and run); an account whose regions cannot be listed is reported and skipped."""
        apis = self._account_apis()
        todo = [api for api in apis if api.account not in self._enabled]

        def regions(api: Api) -> list[str] | ProviderError:
            try:
                return compute.enabled_regions(api, self.regions)
            except ProviderError as e:
                return e

        for api, got in zip(todo, self._pooled(regions, todo), strict=True):
            if isinstance(got, ProviderError):
                if api is self.api:
                    raise got
                self._account_failed(str(api.account), got)
                got = []
            self._enabled[api.account] = got
        return [(api, r) for api in apis for r in self._enabled[api.account]]

    def _pooled(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``fn`` over ``items`` on at most ``max_workers`` threads (organizations have hundreds of accounts)."""
        if len(items) <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_workers, len(items)))) as pool:
            return list(pool.map(fn, items))

    def _account_apis(self) -> list[Api]:
        """Memoized :meth:`_find_account_apis`: roles are assumed once per run."""
        if self._apis is None:
            self._apis = self._find_account_apis()
        return self._apis

    def _find_account_apis(self) -> list[Api]:
        """The caller's own account, plus every other organization account through ``assume_role``; an
        account whose role cannot be assumed is reported and skipped."""
        shard = self.shard()
        apis = [self.api]
        if not self.assume_role:
            return apis
        names, _ = self.accounts()
        if not names:
            self.notes.append("assume_role is set but the organization's accounts are unknown; "
                              "only the caller's account is scanned")
            return apis
        own = str(self.api.call(self.api.client("sts"), "GetCallerIdentity")["Account"])
        if shard is not None and own not in shard:
            apis = []  # the management account is not in this deployment's OUs
        role = self.assume_role
        others = [a for a in sorted(names) if a != own]

        def assume(account: str) -> Api | ProviderError:
            try:
                return self.api.assume(account, role)
            except ProviderError as e:
                return e

        for account, got in zip(others, self._pooled(assume, others), strict=True):
            if isinstance(got, ProviderError):
                self._account_failed(account, got)
            else:
                apis.append(got)
        return apis

    def _regions_failed(self, results: list[Any]) -> list[Any]:
        """The (account, region) results that failed, recorded as errors; the caller decides if all did."""
        failed = [r for r in results if r.error]
        self.errors += [str(r.error) for r in failed]
        self.failures += [ScopeFailure.from_error(
            self.name, (f"account {r.account} " if r.account else "") + f"region {r.region}", r.error)
            for r in failed]
        return failed

    def _account_failed(self, account: str, error: ProviderError) -> None:
        self.errors.append(f"account {account}: {error}")
        self.failures.append(ScopeFailure.from_error(self.name, f"account {account}", error))

    def stats(self) -> dict[str, Any]:
        c = self.api.counts
        athena = self.athena.counts if self.athena is not None else athena_source.Counts()
        return {
            "ce_requests": self.ce.requests,
            "athena_queries": athena.queries,
            "athena_result_pages": athena.pages,
            "athena_bytes_scanned": athena.bytes_scanned,
            "athena_days_fetched": athena.days_fetched,
            "ce_days_fetched": self.ce.fetched_days,
            "organizations_requests": c["organizations"],
            "ec2_requests": c["ec2"],
            "cloudwatch_requests": c["cloudwatch"],
            "sts_requests": c["sts"],
            "guardduty_requests": c["guardduty"],
            "guardduty_findings": self._findings,
            "regions": len(self._regions_seen),
            "instances": len(self.instances),
            # accounts (some of their regions) not read before the deadline; the next run reads them first
            "skipped_account_count": len(self._skipped),
            "skipped_accounts": ", ".join(sorted(self._skipped)[:SKIPPED_SHOWN])
                                + (f" (+{len(self._skipped) - SKIPPED_SHOWN} more)"
                                   if len(self._skipped) > SKIPPED_SHOWN else ""),
            "state_copy_parts_read": self.mirror.parts_read if self.mirror else 0,
            "state_copy_parts_written": self.mirror.parts_written if self.mirror else 0,
            "errors": list(self.errors),
            "notes": list(self.notes),
        }


def default_cache_path(cfg: Any) -> Path:
    """Next to the sqlite state file, so one directory holds everything costwatch keeps between runs."""
    state = getattr(getattr(cfg, "state", None), "path", None)
    base = Path(str(state)).parent if state and "://" not in str(state) else Path(".costwatch")
    return base / DEFAULT_CACHE_NAME


def from_config(provider_cfg: Any, cfg: Any = None) -> AwsProvider:
    """Registry factory (``type: aws``)."""
    return AwsProvider(
        name=provider_cfg.name, cache_path=provider_cfg.cache_path or default_cache_path(cfg),
        profile=provider_cfg.profile, metric=provider_cfg.metric, restate_days=provider_cfg.restate_days,
        regions=provider_cfg.regions, owner_tag=provider_cfg.owner_tag, cpu=provider_cfg.cpu,
        max_workers=provider_cfg.max_workers, assume_role=provider_cfg.assume_role,
        guardduty=getattr(provider_cfg, "guardduty", True),
        organizational_units=getattr(provider_cfg, "organizational_units", None),
        cost_source=getattr(provider_cfg, "cost_source", "cost_explorer"), athena=getattr(provider_cfg, "athena", None),
        state_store=_state_copy(provider_cfg, cfg),
    )


def _state_copy(provider_cfg: Any, cfg: Any) -> Any:
    """The state store the cache is copied to (``state_copy``; default: when the state is in DynamoDB, i.e. on
    Lambda, whose /tmp a cold start empties), or None."""
    state = getattr(cfg, "state", None)
    wanted = getattr(provider_cfg, "state_copy", None)
    if wanted is None:
        wanted = getattr(state, "backend", None) == "dynamodb"
    if not wanted or state is None:
        return None
    from costwatch.state import open_store

    return open_store(state)


def _fields(athena: Any) -> dict[str, Any]:
    """AthenaConfig (or a plain dict of its keys) as keyword arguments of AthenaExport."""
    if athena is None:
        raise ProviderError("aws: cost_source is athena but the athena block (database, table) is missing")
    data = athena.model_dump() if hasattr(athena, "model_dump") else dict(athena)
    return {k: data[k] for k in ("database", "table", "workgroup", "output_location", "export", "region")
            if data.get(k) is not None}
