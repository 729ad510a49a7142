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
import re
from collections.abc import Callable
from typing import Any

import pandas as pd

from costwatch.errors import ProviderError
from costwatch.model import empty_costs, normalize_costs
from costwatch.providers._daycache import fetch_windows

from ._api import Api
from .cache import Cache, Row

GRANULARITY = "DAILY"
QUERIES = {"service": "SERVICE", "region": "REGION"}  # query kind -> second GroupBy dimension
MAX_PAGES = 500
MERGE_GAP_DAYS = 7  # cached days between two fetch windows re-fetched to save a request
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
                 clock: Callable[[], pd.Timestamp]) -> None:
        self.api = api
        self.cache = cache
        self.metric = metric
        self.restate_days = restate_days
        self.clock = clock
        self.requests = 0
        self.fetched_days = 0

    def daily(self, kind: str, days: list[dt.date], today: dt.date | None = None,
              ) -> tuple[list[Row], dict[str, bool]]:
        """Rows for ``days`` of one query kind (fetching what the cache cannot answer, and the days within
        ``restate_days`` of ``today``: the clock's, or a replay's) and the estimated flag per day."""
        today = today or self.clock().date()
        cached = self.cache.fetched_days(kind, self.metric, GRANULARITY)
        for a, b in fetch_windows(days, set(cached), today, self.restate_days, merge_gap=MERGE_GAP_DAYS):
            got_days, rows = self._query(kind, a, b)
            # days inside the window that AWS returned nothing for are still "fetched, empty"
            for i in range((b - a).days):
                got_days.setdefault((a + dt.timedelta(days=i)).isoformat(), False)
            self.cache.store(kind, self.metric, GRANULARITY, got_days, rows,
                             self.clock().isoformat())
            cached.update(got_days)
            self.fetched_days += len(got_days)
        wanted = [d.isoformat() for d in days]
        return self.cache.rows(kind, self.metric, GRANULARITY, wanted), {d: cached.get(d, False) for d in wanted}

    def _query(self, kind: str, start: dt.date, end: dt.date) -> tuple[dict[str, bool], list[Row]]:
        client = self.api.client("ce")
        params: dict[str, Any] = {
            "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
            "Granularity": GRANULARITY, "Metrics": [self.metric],
            "GroupBy": [{"Type": "DIMENSION", "Key": "LINKED_ACCOUNT"},
                        {"Type": "DIMENSION", "Key": QUERIES[kind]}],
        }
        days: dict[str, bool] = {}
        sums: dict[tuple[str, str, str], list[Any]] = {}
        seen_tokens: set[str] = set()
        for _ in range(MAX_PAGES):
            self.requests += 1
            page = self.api.call(client, "GetCostAndUsage", **params)
            for period in page.get("ResultsByTime", []):
                day = str(period["TimePeriod"]["Start"])[:10]
                days[day] = days.get(day, False) or bool(period.get("Estimated", False))
                for g in period.get("Groups", []):
                    keys = list(g.get("Keys", []))
                    if len(keys) != 2:
                        continue
                    m = g.get("Metrics", {}).get(self.metric)
                    if not m:
                        continue
                    try:
                        amount = float(m["Amount"])
                    except (KeyError, TypeError, ValueError):
                        raise ProviderError(f"aws: Cost Explorer returned a non-numeric {self.metric} for "
                                            f"{day}") from None
                    k = (day, str(keys[0]), str(keys[1]))
                    if k in sums:
                        sums[k][0] += amount
                    else:
                        sums[k] = [amount, str(m.get("Unit") or "USD")]
            token = page.get("NextPageToken")
            if not token:
                break
            if token in seen_tokens:
                raise ProviderError("aws: Cost Explorer returned the same NextPageToken twice; "
                                    "stopped to avoid a request loop")
            seen_tokens.add(token)
            params["NextPageToken"] = token
        else:
            raise ProviderError(f"aws: Cost Explorer returned more than {MAX_PAGES} pages for "
                                f"{start}..{end}; narrow the window")
        return days, [(d, a, k, v[0], v[1]) for (d, a, k), v in sums.items()]


def combine(service_rows: list[Row], region_rows: list[Row], estimated: dict[str, bool],
            names: dict[str, str], owners: dict[str, str] | None = None) -> pd.DataFrame:
    """Service rows split over each account-day's regions (see the module docstring) as a cost frame."""
    if not service_rows:
        return empty_costs()
    svc = pd.DataFrame(service_rows, columns=["day", "account", "service", "amount", "currency"])
    reg = pd.DataFrame(region_rows, columns=["day", "account", "region", "amount", "currency"])
    reg["region"] = reg["region"].where(~reg["region"].str.strip().str.lower().isin(NO_REGION), "")
    reg["weight"] = reg["amount"].clip(lower=0.0)
    reg = reg.groupby(["day", "account", "region"], as_index=False)["weight"].sum()
    total = reg.groupby(["day", "account"])["weight"].transform("sum")
    reg = reg[total > 0].assign(share=lambda r: r["weight"] / total[total > 0])
    out = svc.merge(reg[["day", "account", "region", "share"]], on=["day", "account"], how="left")
    out["share"] = out["share"].fillna(1.0)
    out["amount"] = out["amount"] * out["share"]
    out = out[(out["amount"] != 0) | (out["share"] == 1.0)]
    region = out["region"].where(out["region"].notna() & (out["region"] != ""), None)
    no_tags: dict[str, str] = {}
    tag_of = {a: {"owner": o} for a, o in (owners or {}).items()}
    charge = pd.Series("Usage", index=out.index, dtype="object")
    charge[out["amount"] < 0] = "Credit"
    charge[out["service"].isin(TAX_SERVICES)] = "Tax"
    frame = pd.DataFrame({
        "period_start": pd.to_datetime(out["day"], utc=True),
        "period_hours": 24.0,
        "provider": "aws",
        "project_id": out["account"],
        "project_name": out["account"].map(lambda a: names.get(a, a)),
        "service": out["service"],
        "service_category": out["service"].map(service_category),
        "region": region,
        "charge_category": charge,
        "resource_id": None,
        "billed_cost": out["amount"],
        "effective_cost": out["amount"],
        "currency": out["currency"],
        "estimated": out["day"].map(lambda d: estimated.get(d, False)),
        # one (read-only) dict per account, shared by its rows: a dict per row was ~200 bytes x every row
        "tags": [tag_of.get(a, no_tags) for a in out["account"]],
    })
    return normalize_costs(frame)
