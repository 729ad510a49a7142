"""The azure provider: daily spend from Consumption usage details (or Cost Management queries) and hourly VM and
scale-set CPU from Azure Monitor, for every subscription the credential can read.

Costs (``fetch_costs``) are cached per subscription and day (see ``costs``); VMs, scale sets and CPU
(``fetch_usage``) are read every run (see ``monitor``).  Subscriptions are worked on in parallel threads and one
failing subscription is reported in ``stats()["errors"]`` while the others are kept; only all of them failing
raises.  ``stats()`` reports the HTTP requests made per API (ARM throttles reads per identity) and the 429s met.

RBAC needed on each subscription: Cost Management Reader (costs) and Monitoring Reader (VM lists and CPU; it
includes read access to resources).  Credentials come from azure-identity's DefaultAzureCredential, made only
when the provider first calls Azure.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from costwatch.errors import ProviderError
from costwatch.model import ScopeFailure, empty_costs, empty_usage
from costwatch.providers._daycache import DayCache, day_range, fetch_clock
from costwatch.providers._daycache import default_cache_path as _cache_path

from . import monitor
from ._arm import ROLE_COST, SUBSCRIPTIONS_API, Azure, translate
from .costs import Costs, Row, frame

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = ["AzureProvider", "from_config"]

DEFAULT_CACHE_NAME = "azure-cache.db"
ACTIVE_STATES = frozenset({"enabled", "warned", "pastdue"})


def _now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


def _all_failed(errors: list[str], what: str) -> ProviderError:
    msgs = list(dict.fromkeys(e.split(": ", 1)[1] if e.startswith("subscription ") else e for e in errors))
    more = f" (and {len(msgs) - 3} more)" if len(msgs) > 3 else ""
    return ProviderError(f"{what} failed for every subscription: " + "; ".join(msgs[:3]) + more)


class AzureProvider:
    """Costs and CPU of the configured subscriptions, or of every subscription the credential can list.

    ``credential``, ``base_url`` and ``client_options`` are for tests (a fake ARM endpoint, ``connection_verify``,
    small retry settings); config never sets them."""

    def __init__(self, *, name: str = "azure", cache_path: str | Path, subscriptions: list[str] | None = None,
                 source: str = "consumption", restate_days: int = 3, owner_tag: str = "owner", cpu: bool = True,
                 max_workers: int = 8, credential: TokenCredential | None = None, base_url: str | None = None,
                 client_options: dict[str, Any] | None = None,
                 clock: Callable[[], pd.Timestamp] = _now) -> None:
        if source not in ("consumption", "costmanagement"):
            raise ProviderError(f"azure: unknown cost source {source!r}; use consumption or costmanagement")
        self.name = name
        self.azure = Azure(credential, base_url, client_options)
        self.cache = DayCache(cache_path, scope=name)
        self.clock = clock
        self.costs = Costs(self.azure, self.cache, source, restate_days, clock)
        self.configured = list(dict.fromkeys(s.strip().lower() for s in subscriptions or [] if s.strip()))
        self.restate_days = restate_days
        self.owner_tag = owner_tag
        self.cpu = cpu
        self.max_workers = max_workers
        self.errors: list[str] = []
        self.failures: list[ScopeFailure] = []  # the same failures, structured (provider, scope, what, fix)
        self.notes: list[str] = []
        self._subs: list[str] | None = None
        self._names: dict[str, str] = {}
        self._owners: dict[str, str] = {}
        self._vms = 0

    # ------------------------------------------------------------------------------------ subscriptions

    def subscriptions(self) -> list[str]:
        """The configured subscriptions, else every active one the credential lists (once per run).  Names and
        owners (the ``owner_tag`` subscription tag) come from the same listing, best effort when configured."""
        if self._subs is not None:
            return self._subs
        listed: list[dict[str, Any]] = []
        try:
            listed = list(self.azure.list_all(f"/subscriptions?api-version={SUBSCRIPTIONS_API}"))
        except Exception as e:
            err = translate(e, "listing subscriptions", ROLE_COST)
            if not self.configured:
                raise err from None
            self.notes.append(f"subscriptions shown by id: {err}")
        active: list[str] = []
        for s in listed:
            sid = str(s.get("subscriptionId") or str(s.get("id") or "").rsplit("/", 1)[-1]).lower()
            if not sid:
                continue
            if s.get("displayName"):
                self._names[sid] = str(s["displayName"])
            owner = (s.get("tags") or {}).get(self.owner_tag) if isinstance(s.get("tags"), dict) else None
            if owner:
                self._owners[sid] = str(owner)
            if str(s.get("state") or "Enabled").replace(" ", "").lower() in ACTIVE_STATES:
                active.append(sid)
        if self.configured:
            self._subs = list(self.configured)
        else:
            self._subs = sorted(dict.fromkeys(active))
            if not self._subs:
                self.notes.append("the credential can see no active subscription; assign it Cost Management Reader "
                                  "and Monitoring Reader on the subscriptions to watch, or list them under "
                                  "subscriptions:")
        return self._subs

    # --------------------------------------------------------------------------------------------- costs

    def fetch_costs(self, start: pd.Timestamp, end: pd.Timestamp, now: pd.Timestamp | None = None) -> pd.DataFrame:
        """Daily cost rows for [start, end) as of ``now`` (a replay's as_of; see ``fetch_clock``), fetching from
        Azure only the days the cache cannot answer or that were still restating then."""
        subs = self.subscriptions()
        today = fetch_clock(now, self.clock).date()
        days = day_range(start, end, today)
        if not subs or not days:
            return empty_costs()
        results = self._each(subs, lambda s: self.costs.daily(s, days, today))
        rows: list[Row] = []
        errors: list[str] = []
        for sub, got in zip(subs, results, strict=True):
            if isinstance(got, ProviderError):
                errors.append(f"subscription {sub}: {got}")
            else:
                rows += got
        self._record(errors)
        if errors and len(errors) == len(subs):
            raise _all_failed(errors, "azure: costs")
        return frame(rows, self._names, self._owners, today, self.restate_days)

    def _each(self, subs: list[str], work: Callable[[str], list[Row]]) -> list[list[Row] | ProviderError]:
        def one(sub: str) -> list[Row] | ProviderError:
            try:
                return work(sub)
            except ProviderError as e:
                return e
            except Exception as e:  # a thread must not take the other subscriptions down with it
                return translate(e, "fetching costs", ROLE_COST, sub)

        with ThreadPoolExecutor(max_workers=max(1, min(self.max_workers, len(subs)))) as pool:
            return list(pool.map(one, subs))

    # --------------------------------------------------------------------------------------------- usage

    def fetch_usage(self, start: pd.Timestamp, end: pd.Timestamp, now: pd.Timestamp | None = None) -> pd.DataFrame:
        """Hourly CPU of every VM and scale-set instance up to ``now`` (see ``fetch_clock``); failed subscriptions
        go to ``stats()["errors"]`` and only a failure of all of them raises."""
        if not self.cpu:
            return empty_usage()
        subs = self.subscriptions()
        result = monitor.scan(self.azure, subs, pd.Timestamp(start), pd.Timestamp(end),
                              max_workers=self.max_workers, now=fetch_clock(now, self.clock))
        self._record(result.errors)
        self._vms = result.targets
        if subs and result.failed_subscriptions == len(subs):
            raise _all_failed(result.errors, "azure: CPU")
        # the listing's display names, so a subscription whose costs failed is still named in its CPU alerts
        frame = result.frame
        return frame.assign(project_name=frame["project"].map(self._names).astype("string"))

    def _record(self, errors: list[str]) -> None:
        """Per-subscription errors (``subscription <id>: <what failed; what to do>``), as text and structured."""
        self.errors += errors
        for e in errors:
            scope, _, rest = e.partition(": ") if e.startswith("subscription ") else ("subscriptions", "", e)
            self.failures.append(ScopeFailure.from_error(self.name, scope, rest))

    def stats(self) -> dict[str, Any]:
        c = self.azure.counts
        return {
            "consumption_requests": c["consumption"],
            "costmanagement_requests": c["costmanagement"],
            "arm_requests": c["arm"],
            "compute_requests": c["compute"],
            "monitor_requests": c["monitor"],
            "throttled_responses": c["throttled"],
            "cost_days_fetched": self.costs.fetched_days,
            "subscriptions": len(self._subs or []),
            "vms_and_scale_sets": self._vms,
            "errors": list(self.errors),
            "notes": list(self.notes),
        }


def default_cache_path(cfg: Any) -> Path:
    return _cache_path(cfg, DEFAULT_CACHE_NAME)


def from_config(provider_cfg: Any, cfg: Any = None) -> AzureProvider:
    """Registry factory (``type: azure``)."""
    return AzureProvider(
        name=provider_cfg.name, cache_path=provider_cfg.cache_path or default_cache_path(cfg),
        subscriptions=provider_cfg.subscriptions, source=provider_cfg.source,
        restate_days=provider_cfg.restate_days, owner_tag=provider_cfg.owner_tag, cpu=provider_cfg.cpu,
        max_workers=provider_cfg.max_workers,
    )

