"""Daily spend per project, service and region from the Cloud Billing export in BigQuery, fetched incrementally.

Three export flavours, chosen by config ``export``: the standard table (``gcp_billing_export_v1_*``), the
detailed table (``gcp_billing_export_resource_v1_*``, which adds ``resource.name``) and the FOCUS view or
table (FOCUS column names).  In the native tables ``cost`` is the charge before credits and the credits are a
nested array of negative amounts, so effective cost is ``cost + SUM(credits.amount)`` and billed cost is
``cost``; the FOCUS view has both as columns.

What BigQuery bills is bytes scanned, so every query:
  * is parameterized (dates and the owner label are query parameters; the only text spliced in is the
    export table name, checked against the config pattern and backtick-quoted);
  * filters on the partition column so only the needed days are read.  The native tables are partitioned by
    export day (``_PARTITIONTIME``); a usage day's rows land in that day's partition and in later ones as
    late usage arrives, so the filter reaches ``PARTITION_LAG_DAYS`` past the window (never past today) and
    one day before it (Google bills in Pacific time, a day behind UTC at night).  The FOCUS view is filtered
    on ``ChargePeriodStart``;
  * aggregates to one row per day, project, service, region, charge kind and currency (and resource for the
    resource-level flavours) in SQL, so little crosses the wire.

Incremental fetch, as for AWS: days already in the cache are not asked for again unless they are within
``restate_days`` of today (Google keeps adding late usage and credits); a scheduled hourly run therefore
queries only the last ``restate_days`` + 1 days, in one query.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import pandas as pd

from costwatch.errors import ConfigError, ProviderError
from costwatch.model import empty_costs, normalize_costs
from costwatch.providers._daycache import DayCache, fetch_windows

from ._api import Calls, translate

TABLE_PATTERN = re.compile(r"^[\w.-]+\.\w+\.[\w$-]+$")  # the config's billing_table pattern: no backticks
PARTITION_LAG_DAYS = 7
PAGE_ROWS = 10_000
WAIT_SECONDS = 300.0  # how long a query may run before we give up on it
NO_REGION = frozenset({"", "global", "multi-region"})

_OWNER_STANDARD = "(SELECT ANY_VALUE(l.value) FROM UNNEST(project.labels) AS l WHERE l.key = @owner_label)"
# TO_JSON_STRING + JSON_QUERY_ARRAY reads Tags whether the view gives ARRAY<STRUCT<key, value, ...>> or a JSON
# array, and yields nothing (rather than a failed query) when it is some other shape
_OWNER_FOCUS = ("(SELECT ANY_VALUE(JSON_VALUE(t, '$.value')) FROM UNNEST(JSON_QUERY_ARRAY(TO_JSON_STRING(Tags))) "
                "AS t WHERE JSON_VALUE(t, '$.key') = @owner_label)")

_NATIVE_SQL = """SELECT
  DATE(usage_start_time) AS day,
  IFNULL(project.id, CONCAT('billingAccounts/', billing_account_id)) AS project_id,
  ANY_VALUE(project.name) AS project_name,
  service.description AS service,
  location.region AS region,
  cost_type AS charge,
  currency AS currency,{resource}
  SUM(cost) AS billed_cost,
  SUM(cost) + SUM(IFNULL((SELECT SUM(c.amount) FROM UNNEST(credits) AS c), 0)) AS effective_cost,
  MAX({owner}) AS owner
FROM {table}
WHERE _PARTITIONTIME >= @partition_start AND _PARTITIONTIME < @partition_end
  AND usage_start_time >= @start AND usage_start_time < @end
GROUP BY day, project_id, service, region, charge, currency{group_resource}"""

_FOCUS_SQL = """SELECT
  DATE(ChargePeriodStart) AS day,
  IFNULL(SubAccountId, CONCAT('billingAccounts/', BillingAccountId)) AS project_id,
  ANY_VALUE(SubAccountName) AS project_name,
  ServiceName AS service,
  ANY_VALUE(ServiceCategory) AS service_category,
  RegionId AS region,
  ChargeCategory AS charge,
  BillingCurrency AS currency,
  ResourceId AS resource_id,
  SUM(BilledCost) AS billed_cost,
  SUM(EffectiveCost) AS effective_cost,
  MAX({owner}) AS owner
FROM {table}
WHERE ChargePeriodStart >= @start AND ChargePeriodStart < @end
GROUP BY day, project_id, service, region, charge, currency, resource_id"""

# cost_type of the native exports -> FOCUS ChargeCategory (FOCUS values pass through)
CHARGE_CATEGORIES = {"regular": "Usage", "tax": "Tax", "adjustment": "Adjustment", "rounding_error": "Adjustment"}

# service.description -> FOCUS ServiceCategory.  Only "Compute" drives the mining join, so it is explicit; the
# rest are a best effort with keyword fallbacks and "Other" last.
SERVICE_CATEGORIES: dict[str, str] = {
    "Compute Engine": "Compute",
    "Kubernetes Engine": "Compute",
    "Cloud Run": "Compute",
    "Cloud Run Functions": "Compute",
    "Cloud Functions": "Compute",
    "App Engine": "Compute",
    "Batch": "Compute",
    "Google Cloud VMware Engine": "Compute",
    "Bare Metal Solution": "Compute",
    "Cloud Storage": "Storage",
    "Filestore": "Storage",
    "Artifact Registry": "Storage",
    "Container Registry Vulnerability Scanning": "Security",
    "Backup and DR Service": "Storage",
    "Cloud SQL": "Databases",
    "Cloud Spanner": "Databases",
    "Cloud Bigtable": "Databases",
    "Cloud Firestore": "Databases",
    "Cloud Datastore": "Databases",
    "Memorystore for Redis": "Databases",
    "AlloyDB": "Databases",
    "BigQuery": "Analytics",
    "BigQuery Storage API": "Analytics",
    "Cloud Dataflow": "Analytics",
    "Cloud Dataproc": "Analytics",
    "Cloud Pub/Sub": "Analytics",
    "Cloud Composer": "Analytics",
    "Looker Studio": "Analytics",
    "Vertex AI": "AI and Machine Learning",
    "Gemini API": "AI and Machine Learning",
    "Cloud Vision API": "AI and Machine Learning",
    "Cloud Speech API": "AI and Machine Learning",
    "Cloud Translation API": "AI and Machine Learning",
    "Cloud Natural Language API": "AI and Machine Learning",
    "Networking": "Networking",
    "Cloud DNS": "Networking",
    "Cloud CDN": "Networking",
    "Cloud Load Balancing": "Networking",
    "Cloud NAT": "Networking",
    "Network Intelligence Center": "Networking",
    "Cloud Logging": "Management and Governance",
    "Cloud Monitoring": "Management and Governance",
    "Stackdriver Logging": "Management and Governance",
    "Stackdriver Monitoring": "Management and Governance",
    "Cloud Key Management Service (KMS)": "Security",
    "Secret Manager": "Security",
    "Security Command Center": "Security",
    "Cloud Armor": "Security",
    "Support": "Support",
}
_KEYWORDS: tuple[tuple[str, str], ...] = (
    (r"compute|kubernetes|\bgke\b|cloud run|functions|app engine|\bvm\b|batch", "Compute"),
    (r"storage|filestore|backup|registry", "Storage"),
    (r"sql|spanner|bigtable|firestore|datastore|memorystore|redis|database|alloydb", "Databases"),
    (r"vertex|gemini|\bai\b|ml|vision|speech|translat|language|automl|dialogflow", "AI and Machine Learning"),
    (r"network|dns|cdn|load balanc|nat|vpn|interconnect|egress", "Networking"),
    (r"bigquery|dataflow|dataproc|pub/sub|composer|looker|analytics", "Analytics"),
    (r"logging|monitoring|stackdriver|trace|operations", "Management and Governance"),
    (r"kms|key management|secret|security|armor|iam|identity", "Security"),
)


def service_category(service: str | None) -> str:
    """FOCUS ServiceCategory of a Google service description; "Other" when nothing matches."""
    if not service:
        return "Other"
    if service in SERVICE_CATEGORIES:
        return SERVICE_CATEGORIES[service]
    low = service.lower()
    return next((cat for pattern, cat in _KEYWORDS if re.search(pattern, low)), "Other")


def quoted_table(table: str) -> str:
    """The export table, backtick-quoted for SQL, after checking it is a plain ``project.dataset.table``:
    it is the one piece of text spliced into the query, so it must not be able to carry SQL."""
    if not TABLE_PATTERN.fullmatch(table):
        raise ConfigError(f"gcp: billing_table {table!r} is not of the form project.dataset.table")
    return f"`{table}`"


def build_sql(export: str, table: str) -> str:
    """The day-aggregating query for one export flavour; all values are ``@parameters``."""
    if export == "focus":
        return _FOCUS_SQL.format(table=quoted_table(table), owner=_OWNER_FOCUS)
    if export not in ("standard", "detailed"):
        raise ConfigError(f"gcp: export must be standard, detailed or focus, not {export!r}")
    detailed = export == "detailed"
    return _NATIVE_SQL.format(table=quoted_table(table), owner=_OWNER_STANDARD,
                              resource="\n  resource.name AS resource_id," if detailed else "",
                              group_resource=", resource_id" if detailed else "")


def _utc(d: dt.date) -> dt.datetime:
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)


def query_parameters(export: str, start: dt.date, end: dt.date, today: dt.date, owner_label: str) -> list[Any]:
    """Parameters for the days [start, end): the usage window, and for the native tables the partition window."""
    from google.cloud import bigquery

    params = [bigquery.ScalarQueryParameter("start", "TIMESTAMP", _utc(start)),
              bigquery.ScalarQueryParameter("end", "TIMESTAMP", _utc(end)),
              bigquery.ScalarQueryParameter("owner_label", "STRING", owner_label)]
    if export != "focus":
        last = min(end + dt.timedelta(days=PARTITION_LAG_DAYS), today + dt.timedelta(days=1))
        params += [bigquery.ScalarQueryParameter("partition_start", "TIMESTAMP", _utc(start - dt.timedelta(days=1))),
                   bigquery.ScalarQueryParameter("partition_end", "TIMESTAMP", _utc(max(last, end)))]
    return params


class BillingExport:
    """Queries the export through the day cache; counts queries, result pages and bytes processed."""

    def __init__(self, client: Callable[[], Any], *, table: str, export: str, query_project: str | None,
                 cache: DayCache, restate_days: int, owner_label: str, clock: Callable[[], pd.Timestamp],
                 calls: Calls, retry: Any) -> None:
        self._client = client
        self.table = table
        self.export = export
        self.sql = build_sql(export, table)
        self.query_project = query_project or table.split(".")[0]
        self.cache = cache
        self.source = f"{export}:{table}"
        self.restate_days = restate_days
        self.owner_label = owner_label
        self.clock = clock
        self.calls = calls
        self.retry = retry

    def daily(self, days: list[dt.date], today: dt.date | None = None) -> list[dict[str, Any]]:
        """Rows for ``days``, querying BigQuery only for what the cache cannot answer and the days within
        ``restate_days`` of ``today`` (the clock's, or a replay's)."""
        real_today = self.clock().date()
        cached = self.cache.fetched_days(self.source)
        for a, b in fetch_windows(days, cached, today or real_today, self.restate_days):
            # partitions up to the real today: the late usage that has arrived since a replay's as_of is read,
            # so the days cached here are complete for the runs that come after
            rows = self._query(a, b, real_today)
            fetched = [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days)]
            self.cache.store(self.source, fetched, [(r["day"], r) for r in rows], self.clock().isoformat())
            self.calls.add("bigquery_days_fetched", len(fetched))
        return self.cache.rows(self.source, [d.isoformat() for d in days])

    def _query(self, start: dt.date, end: dt.date, today: dt.date) -> list[dict[str, Any]]:
        from google.cloud import bigquery

        config = bigquery.QueryJobConfig(
            query_parameters=query_parameters(self.export, start, end, today, self.owner_label),
            use_legacy_sql=False, labels={"app": "costwatch"})
        what = f"the BigQuery query of `{self.table}` for {start}..{end - dt.timedelta(days=1)}"
        self.calls.add("bigquery_queries")
        out: list[dict[str, Any]] = []
        try:
            result = self._client().query_and_wait(
                self.sql, job_config=config, project=self.query_project, retry=self.retry, job_retry=None,
                wait_timeout=WAIT_SECONDS, page_size=PAGE_ROWS)
            for page in result.pages:
                self.calls.add("bigquery_pages")
                out.extend(_row(r) for r in page)
        except ProviderError:
            raise
        except Exception as e:
            raise _query_error(e, what, self.table, self.export) from None
        self.calls.add("bigquery_bytes_processed", int(result.total_bytes_processed or 0))
        return out


def _query_error(e: Exception, what: str, table: str, export: str) -> ProviderError:
    """Export-specific advice for the errors a wrong table or flavour gives; the rest as usual."""
    from google.api_core import exceptions as gexc

    if isinstance(e, gexc.NotFound):
        return ProviderError(f"gcp: BigQuery table `{table}` was not found (or the query project cannot see it); "
                             "check billing_table and that the Cloud Billing export to BigQuery is enabled")
    if isinstance(e, gexc.BadRequest):
        err = translate(e, "bigquery", what)
        return ProviderError(f"{err}; check that `{table}` is a {export} billing export (config `export`)")
    return translate(e, "bigquery", what)


def _row(r: Any) -> dict[str, Any]:
    """One result row as plain JSON-able values (the cache stores JSON)."""
    day = r.get("day")
    return {
        "day": day.isoformat() if isinstance(day, dt.date) else str(day)[:10],
        "project_id": r.get("project_id"), "project_name": r.get("project_name"),
        "service": r.get("service"), "service_category": r.get("service_category"), "region": r.get("region"),
        "charge": r.get("charge"), "currency": r.get("currency"), "resource_id": r.get("resource_id"),
        "billed_cost": float(r.get("billed_cost") or 0.0), "effective_cost": float(r.get("effective_cost") or 0.0),
        "owner": r.get("owner"),
    }


def costs_frame(rows: list[dict[str, Any]], today: dt.date, restate_days: int) -> pd.DataFrame:
    """Cached export rows as costwatch's cost frame.  A project's owner is read from any of its rows (the
    label sits on the project, not on each charge), and days within ``restate_days`` are ``estimated``."""
    if not rows:
        return empty_costs()
    df = pd.DataFrame(rows)
    owners = df.dropna(subset=["owner"]).groupby("project_id")["owner"].first().to_dict()
    names = df.dropna(subset=["project_name"]).groupby("project_id")["project_name"].first().to_dict()
    region = df["region"].where(~df["region"].fillna("").str.strip().str.lower().isin(NO_REGION), None)
    charge = df["charge"].map(lambda c: CHARGE_CATEGORIES.get(str(c).lower(), c) if c else "Usage")
    category = [c if c else service_category(s) for c, s in zip(df["service_category"], df["service"], strict=True)]
    recent = (today - dt.timedelta(days=restate_days)).isoformat()
    frame = pd.DataFrame({
        "period_start": pd.to_datetime(df["day"], utc=True),
        "period_hours": 24.0,
        "provider": "gcp",
        "project_id": df["project_id"],
        "project_name": df["project_id"].map(lambda p: names.get(p, p)),
        "service": df["service"].fillna("(unknown)"),
        "service_category": category,
        "region": region,
        "charge_category": charge,
        "resource_id": df["resource_id"],
        "billed_cost": df["billed_cost"],
        "effective_cost": df["effective_cost"],
        "currency": df["currency"].fillna("USD"),
        "estimated": df["day"] >= recent,
        "tags": [({"owner": str(owners[p])} if p in owners else {}) for p in df["project_id"]],
    })
    return normalize_costs(frame.sort_values(["period_start", "project_id", "service"], kind="stable"))
