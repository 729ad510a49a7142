"""Cost Explorer daily spend per account, service and region, fetched incrementally.

Why two queries: GetCostAndUsage groups by at most two dimensions, and LINKED_ACCOUNT must be one of
them, so SERVICE and REGION cannot be asked for together without one request per account.  We run
LINKED_ACCOUNT+SERVICE (exact service totals, which the per-category bands need) and LINKED_ACCOUNT+REGION
(exact region totals, which the new-region signal needs), and combine them by splitting each
account-day's service amounts over that day's regions in proportion to the regions' cost.  Both
marginals stay exact (a service's rows sum to its total; a region's rows sum to its total), and a miner's
new region shows up on the Compute rows with roughly its real share, so costwatch's detector sees the
region appear (``new_regions``) on the very day the compute spike starts.  The joint split is an estimate:
a region that only runs S3 also receives a slice of that day's EC2 rows.  Credits (negative amounts)
are split with the same shares but do not shape them, so a credit cannot make a region's share negative.
Non-regional charges (``global``, ``NoRegion``) get region null.

Incremental fetch: every day in the window that is not in the cache, plus the last ``restate_days``
(AWS revises recent days; ``Estimated`` is true until the month closes), is fetched; neighbouring runs of
such days are merged into one request window so an hourly run costs one request per query kind (two),
plus one per extra page.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from costwatch.errors import ProviderError
from costwatch.model import COST_COLUMNS, empty_costs

from ._api import Api
from .cache import Cache, Codes, Row

GRANULARITY = "DAILY"
QUERIES = {"service": "SERVICE", "region": "REGION"}  # query kind -> second GroupBy dimension
MAX_PAGES = 500
MERGE_GAP_DAYS = 7  # cached days between two fetch windows re-fetched to save a request
RESTATE_REQUESTS = 4  # requests a run may spend re-reading restating days (at least one day is re-read)
NO_REGION = frozenset({"", "global", "noregion", "no region"})

# Cost Explorer SERVICE names -> FOCUS ServiceCategory.  Only "Compute" drives the mining join, so it is
# explicit; the rest are a best effort with keyword fallbacks and "Other" last.
SERVICE_CATEGORIES: dict[str, str] = {
    "Amazon Elastic Compute Cloud - Compute": "Compute",
    "EC2 - Other": "Compute",  # EBS, NAT, data transfer of instances: the rest of an EC2 bill
    "Amazon EC2 Container Service": "Compute",
    "Amazon Elastic Container Service": "Compute",
    "Amazon Elastic Container Service for Kubernetes": "Compute",
    "Amazon Elastic Kubernetes Service": "Compute",
    "AWS Lambda": "Compute",
    "AWS Batch": "Compute",
    "Amazon Lightsail": "Compute",
    "AWS Fargate": "Compute",
    "Amazon AppStream": "Compute",
    "Amazon Simple Storage Service": "Storage",
    "Amazon Elastic Block Store": "Storage",
    "Amazon Elastic File System": "Storage",
    "Amazon FSx": "Storage",
    "Amazon S3 Glacier": "Storage",
    "Amazon Glacier": "Storage",
    "AWS Backup": "Storage",
    "Amazon EC2 Container Registry (ECR)": "Storage",
    "Amazon Relational Database Service": "Databases",
    "Amazon DynamoDB": "Databases",
    "Amazon ElastiCache": "Databases",
    "Amazon DocumentDB (with MongoDB compatibility)": "Databases",
    "Amazon Neptune": "Databases",
    "Amazon MemoryDB": "Databases",
    "Amazon Redshift": "Analytics",
    "Amazon Athena": "Analytics",
    "Amazon Elastic MapReduce": "Analytics",
    "AWS Glue": "Analytics",
    "Amazon Kinesis": "Analytics",
    "Amazon OpenSearch Service": "Analytics",
    "Amazon SageMaker": "AI and Machine Learning",
    "Amazon Bedrock": "AI and Machine Learning",
    "Amazon Virtual Private Cloud": "Networking",
    "Amazon CloudFront": "Networking",
    "Amazon Route 53": "Networking",
    "Amazon Elastic Load Balancing": "Networking",
    "Elastic Load Balancing": "Networking",
    "AWS Direct Connect": "Networking",
    "Amazon API Gateway": "Networking",
    "AWS Data Transfer": "Networking",
    "AmazonCloudWatch": "Management and Governance",
    "AWS CloudTrail": "Management and Governance",
    "AWS Config": "Management and Governance",
    "AWS Systems Manager": "Management and Governance",
    "Amazon GuardDuty": "Security",
    "AWS Key Management Service": "Security",
    "AWS WAF": "Security",
    "AWS Secrets Manager": "Security",
    "AWS Security Hub": "Security",
}
_KEYWORDS: tuple[tuple[str, str], ...] = (
    (r"compute|ec2|lambda|container|kubernetes|fargate|batch", "Compute"),
    (r"storage|s3|glacier|backup|file system", "Storage"),
    (r"database|rds|dynamo|cache|aurora", "Databases"),
    (r"sagemaker|bedrock|rekognition|comprehend|textract", "AI and Machine Learning"),
    (r"cloudfront|route 53|vpc|load balanc|transfer|gateway|network", "Networking"),
    (r"guardduty|kms|waf|shield|secret|security|inspector", "Security"),
    (r"cloudwatch|cloudtrail|config|systems manager", "Management and Governance"),
)
TAX_SERVICES = frozenset({"Tax"})


def service_category(service: str) -> str:
    """FOCUS ServiceCategory for a Cost Explorer service name; "Other" when nothing matches."""
    if service in SERVICE_CATEGORIES:
        return SERVICE_CATEGORIES[service]
    low = service.lower()
    return next((cat for pattern, cat in _KEYWORDS if re.search(pattern, low)), "Other")


class CostExplorer:
    """GetCostAndUsage through the cache; ``requests`` counts this provider's Cost Explorer calls."""

    def __init__(self, api: Api, cache: Cache, metric: str, restate_days: int,
                 clock: Callable[[], pd.Timestamp], restate_requests: int = RESTATE_REQUESTS) -> None:
        self.api = api
        self.cache = cache
        self.metric = metric
        self.restate_days = restate_days
        self.restate_requests = restate_requests
        self.clock = clock
        self.requests = 0
        self.fetched_days = 0

    def plan(self, days: list[dt.date], today: dt.date) -> dict[str, list[tuple[dt.date, dt.date]]]:
        """[start, end) windows to fetch per query kind: the days a kind has not cached (always), and the
        restating days (within ``restate_days`` of ``today``), stalest first, as many as fit in
        ``restate_requests`` requests by the page sizes seen before, and at least one a run.  An organization
        whose restate window fits in a page or two re-reads it all every run; a large one re-reads it in turns
        (each restating day every few runs), so an hourly run's bill does not grow with the organization."""
        fetched = {kind: self.cache.fetched_at(kind, self.metric, GRANULARITY) for kind in QUERIES}
        sizes = {kind: self._page_size(kind) for kind in QUERIES}
        must = {kind: {d for d in days if d.isoformat() not in fetched[kind]} for kind in QUERIES}
        recent = today - dt.timedelta(days=self.restate_days)
        restating = [d for d in days if d >= recent and all(d.isoformat() in f for f in fetched.values())]
        restating.sort(key=lambda d: (max(f[d.isoformat()] for f in fetched.values()), -d.toordinal()))

        chosen: set[dt.date] = set()
        for d in restating:
            if not chosen or _cost(must, chosen | {d}, sizes) <= self.restate_requests:
                chosen.add(d)
        return {kind: windows(must[kind] | chosen, sizes[kind]) for kind in QUERIES}

    def daily(self, kind: str, days: list[dt.date], todo: list[tuple[dt.date, dt.date]], codes: Codes,
              ) -> tuple[pd.DataFrame, dict[str, bool]]:
        """Rows of ``days`` for one query kind as coded columns (see ``Cache.ce_columns``), after fetching
        the ``todo`` windows (:meth:`plan`), and the estimated flag per day."""
        cached = self.cache.fetched_days(kind, self.metric, GRANULARITY)
        for a, b in todo:
            got_days = self._query(kind, a, b)
            # days inside the window that AWS returned nothing for are still "fetched, empty"
            for i in range((b - a).days):
                got_days.setdefault((a + dt.timedelta(days=i)).isoformat(), False)
            self.cache.store(kind, self.metric, GRANULARITY, got_days, self.clock().isoformat())
            cached.update(got_days)
            self.fetched_days += len(got_days)
        wanted = [d.isoformat() for d in days]
        return (self.cache.ce_columns(kind, self.metric, GRANULARITY, wanted, codes),
                {d: cached.get(d, False) for d in wanted})

    def _page_size(self, kind: str) -> PageSize:
        hit = self.cache.get(f"ce-pages:{kind}:{self.metric}")
        return PageSize(**hit[0]) if hit else PageSize()

    def _query(self, kind: str, start: dt.date, end: dt.date) -> dict[str, bool]:
        """Fetch [start, end) page by page into the cache's staging table; returns day -> estimated, and
        remembers the page size seen (see :meth:`plan`)."""
        client = self.api.client("ce")
        params: dict[str, Any] = {
            "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
            "Granularity": GRANULARITY, "Metrics": [self.metric],
            "GroupBy": [{"Type": "DIMENSION", "Key": "LINKED_ACCOUNT"},
                        {"Type": "DIMENSION", "Key": QUERIES[kind]}],
        }
        days: dict[str, bool] = {}
        seen_tokens: set[str] = set()
        full_page = groups = 0
        for n in range(MAX_PAGES):
            self.requests += 1
            page = self.api.call(client, "GetCostAndUsage", **params)
            token = page.get("NextPageToken")
            rows = self._rows(page, days)
            del page  # the parsed JSON goes before the next page comes
            self.cache.stage(kind, self.metric, GRANULARITY, rows, first=n == 0)
            groups += len(rows)
            if not token:
                break
            full_page = max(full_page, len(rows))
            if token in seen_tokens:
                raise ProviderError("aws: Cost Explorer returned the same NextPageToken twice; "
                                    "stopped to avoid a request loop")
            seen_tokens.add(token)
            params["NextPageToken"] = token
        else:
            raise ProviderError(f"aws: Cost Explorer returned more than {MAX_PAGES} pages for "
                                f"{start}..{end}; narrow the window")
        old = self._page_size(kind)
        size = PageSize(max(old.groups_per_page, full_page), groups / max(1, (end - start).days))
        self.cache.put(f"ce-pages:{kind}:{self.metric}", size.__dict__, self.clock().isoformat())
        return days

    def _rows(self, page: dict[str, Any], days: dict[str, bool]) -> list[Row]:
        """One page's groups as rows; the days it covers (and whether estimated) go into ``days``."""
        rows: list[Row] = []
        for period in page.get("ResultsByTime", []):
            day = str(period["TimePeriod"]["Start"])[:10]
            days[day] = days.get(day, False) or bool(period.get("Estimated", False))
            for g in period.get("Groups", []):
                keys = g.get("Keys", [])
                m = g.get("Metrics", {}).get(self.metric)
                if len(keys) != 2 or not m:
                    continue
                try:
                    amount = float(m["Amount"])
                except (KeyError, TypeError, ValueError):
                    raise ProviderError(f"aws: Cost Explorer returned a non-numeric {self.metric} for "
                                        f"{day}") from None
                rows.append((day, str(keys[0]), str(keys[1]), amount, str(m.get("Unit") or "USD")))
        return rows


@dataclass
class PageSize:
    """What Cost Explorer's pages held the last time a query kind was fetched: the most groups a page held
    before a NextPageToken (0: never paged, so the size is unknown and a window is taken as one page), and
    the groups a day."""

    groups_per_page: int = 0
    groups_per_day: float = 0.0


def _pages(size: PageSize, start: dt.date, end: dt.date) -> int:
    """Requests a [start, end) window is expected to take."""
    if size.groups_per_page <= 0:
        return 1
    return max(1, math.ceil((end - start).days * size.groups_per_day / size.groups_per_page - 0.01))


def windows(days: set[dt.date], size: PageSize) -> list[tuple[dt.date, dt.date]]:
    """[start, end) windows over ``days``: touching days run together, and two windows up to
    ``MERGE_GAP_DAYS`` apart merge (re-reading the cached days between) when that takes fewer requests."""
    out: list[tuple[dt.date, dt.date]] = []
    for d in sorted(days):
        nxt = d + dt.timedelta(days=1)
        if out and (out[-1][1] == d or ((d - out[-1][1]).days <= MERGE_GAP_DAYS
                    and _pages(size, out[-1][0], nxt) < _pages(size, *out[-1]) + _pages(size, d, nxt))):
            out[-1] = (out[-1][0], nxt)
        else:
            out.append((d, nxt))
    return out


def _cost(must: dict[str, set[dt.date]], extra: set[dt.date], sizes: dict[str, PageSize]) -> int:
    """Requests to fetch each kind's ``must`` days plus ``extra``."""
    return sum(_pages(sizes[k], a, b) for k in must for a, b in windows(must[k] | extra, sizes[k]))


def combine(svc: pd.DataFrame, reg: pd.DataFrame, codes: Codes, estimated: dict[str, bool],
            names: dict[str, str], owners: dict[str, str] | None = None) -> pd.DataFrame:
    """Service rows split over each account-day's regions (see the module docstring) as a cost frame.
    ``svc`` and ``reg`` are coded columns (``Cache.ce_columns``); the frame is built column by column in its
    final dtypes from the codes, each distinct string held once."""
    if svc.empty:
        return empty_costs()
    keys = codes.values("key")
    no_region = np.array([str(k).strip().lower() in NO_REGION for k in keys], dtype=bool)
    reg = pd.DataFrame({"day": reg["day"], "account": reg["account"],
                        "region": np.where(no_region[reg["key"].to_numpy()], -1, reg["key"]).astype(np.int32),
                        "weight": reg["amount"].clip(lower=0.0)})
    reg = reg.groupby(["day", "account", "region"], as_index=False, sort=False)["weight"].sum()
    total = reg.groupby(["day", "account"], sort=False)["weight"].transform("sum")
    reg["share"] = reg["weight"] / total
    reg = reg[(total > 0).to_numpy()].drop(columns="weight")
    out = svc.merge(reg, on=["day", "account"], how="left", copy=False)
    del reg
    share = out["share"].fillna(1.0).to_numpy()
    amount = out["amount"].to_numpy() * share
    keep = (amount != 0) | (share == 1.0)
    day, account = out["day"].to_numpy()[keep], out["account"].to_numpy()[keep]
    service, unit = out["key"].to_numpy()[keep], out["unit"].to_numpy()[keep]
    region = out["region"].fillna(-1).to_numpy(dtype=np.int32)[keep]
    amount = amount[keep]
    del out, share, keep
    accounts, days = codes.values("account"), codes.values("day")
    tag_of = {a: {"owner": o} for a, o in (owners or {}).items()}
    no_tags: dict[str, str] = {}
    # one (read-only) dict per account, shared by its rows: a dict per row was ~200 bytes x every row
    tags = np.empty(len(accounts), dtype=object)
    tags[:] = [tag_of.get(a, no_tags) for a in accounts]
    charge = np.where(amount < 0, 1, 0)
    charge[np.isin(service, [i for i, k in enumerate(keys) if k in TAX_SERVICES])] = 2
    est = np.array([estimated.get(d, False) for d in days], dtype=bool)
    n = len(amount)
    frame = pd.DataFrame({
        "period_start": pd.DatetimeIndex(pd.to_datetime(days, utc=True)).take(day).astype(COST_COLUMNS["period_start"]),
        "period_hours": np.full(n, 24.0),
        "provider": _strings(np.array(["aws"], dtype=object), np.zeros(n, dtype=np.int32)),
        "project_id": _strings(accounts, account),
        "project_name": _strings(np.array([names.get(a, a) for a in accounts], dtype=object), account),
        "service": _strings(keys, service),
        "service_category": _strings(np.array([service_category(str(k)) for k in keys], dtype=object), service),
        "region": _strings(np.concatenate([keys, np.array([None], dtype=object)]),
                           np.where(region < 0, len(keys), region)),
        "charge_category": _strings(np.array(["Usage", "Credit", "Tax"], dtype=object), charge),
        "resource_id": pd.array(np.full(n, None, dtype=object), dtype="string"),
        "billed_cost": amount,
        "effective_cost": amount,
        "currency": _strings(codes.values("unit"), unit),
        "tags": tags[account],
        "estimated": est[day],
    }, copy=False)
    return frame


def _strings(values: np.ndarray, idx: np.ndarray) -> Any:
    """``values[idx]`` as a ``string`` column: one reference per row to the distinct value, not a copy."""
    return pd.array(values[idx], dtype="string")
