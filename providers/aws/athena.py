"""Daily AWS spend from a Data Export (CUR 2.0 or FOCUS 1.2) in S3, aggregated by Amazon Athena.

Why Athena rather than Cost Explorer: an organization's Data Export already sits in S3 with every line item,
resource and tag, and Athena reduces it next to the data.  Only the daily series costwatch needs crosses the
wire (one row per day, account, service, region, charge kind, currency, and EC2 instance for compute), the
cost is bytes scanned ($5/TB) rather than $0.01 per Cost Explorer page, and the rows carry resource ids and
resource-tag owners that Cost Explorer cannot group by together.

The export must be delivered as Parquet with "overwrite" (one snapshot per billing period) and catalogued in
Glue with the ``billing_period`` partition column (``BILLING_PERIOD=YYYY-MM`` folders), as the Data Exports
Athena integration and the CID templates create it.  With "create new" delivery every snapshot of a month
would be summed.

Every query:
  * is parameterized: the dates, billing periods and owner tag keys travel as Athena ``ExecutionParameters``
    (quoted SQL literals; a quote inside a tag key is doubled), and the only text spliced into the SQL is the
    database and table name, checked against :data:`NAME` and double-quoted;
  * is partition-pruned: ``billing_period BETWEEN ? AND ?`` limits the scan to the months of the window;
  * aggregates to days in SQL (``GROUP BY``), so a month of an hourly export with millions of rows comes back
    as a few thousand rows.

The SQL is plain Trino and runs unchanged in DuckDB, which is how tests prove it aggregates correctly: the
same statement is run over sample rows loaded as a table (DuckDB's ``element_at`` on a map returns a list,
so the tests give it Trino's meaning with a macro).

Polling: GetQueryExecution with exponential backoff (0.25 s doubling to 5 s) until SUCCEEDED, up to
``wait_seconds``; FAILED and CANCELLED become ProviderErrors naming the table, the days and Athena's reason,
with what to check; a query still running at the deadline is stopped (StopQueryExecution) so it does not
keep scanning.  Results are read with GetQueryResults, 1,000 rows a page, following NextToken.

Days are cached as for the other providers (``restate_days``), so an hourly run queries only the recent
days, in one query.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from costwatch.errors import ConfigError, ProviderError
from costwatch.model import empty_costs, normalize_costs
from costwatch.providers._daycache import DayCache, fetch_windows

from ._api import _ACCOUNT, _ARN, Api, AwsCallError
from .costs import service_category

NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}$")  # Glue database and table names
EXPORTS = ("focus", "cur2")
PAGE_ROWS = 1000  # GetQueryResults' maximum
MAX_PAGES = 10_000
WAIT_SECONDS = 600.0
FIRST_DELAY = 0.25
MAX_DELAY = 5.0
NO_REGION = frozenset({"", "global", "noregion", "no region"})

# An EC2 instance id on a compute line: the resource the mining evidence names.  Other resources' rows are
# summed, because per-object storage and per-request rows are what make an export huge.
_FOCUS_SQL = """SELECT
  CAST(CAST(chargeperiodstart AS DATE) AS VARCHAR) AS day,
  COALESCE(subaccountid, billingaccountid) AS project_id,
  MAX(subaccountname) AS project_name,
  servicename AS service,
  servicecategory AS service_category,
  COALESCE(regionid, regionname, availabilityzone) AS region,
  chargecategory AS charge,
  billingcurrency AS currency,
  CASE WHEN lower(servicecategory) = 'compute' THEN resourceid END AS resource_id,
  COALESCE(effectivecost, billedcost) < 0 AS negative,
  SUM(CAST(billedcost AS DOUBLE)) AS billed_cost,
  SUM(CAST(COALESCE(effectivecost, billedcost) AS DOUBLE)) AS effective_cost,
  MAX(COALESCE(element_at(tags, ?), element_at(tags, ?))) AS owner
FROM {table}
WHERE billing_period BETWEEN ? AND ?
  AND chargeperiodstart >= CAST(? AS TIMESTAMP) AND chargeperiodstart < CAST(? AS TIMESTAMP)
GROUP BY 1, 2, 4, 5, 6, 7, 8, 9, 10"""

# Effective cost is AWS's amortized cost: savings-plan and reservation usage at its effective rate, their
# recurring fees only for the unused part, upfront fees and negations zero (the documented CUR 2.0 query).
_CUR2_EFFECTIVE = """CASE line_item_line_item_type
    WHEN 'SavingsPlanCoveredUsage' THEN savings_plan_savings_plan_effective_cost
    WHEN 'SavingsPlanRecurringFee' THEN savings_plan_total_commitment_to_date - savings_plan_used_commitment
    WHEN 'SavingsPlanNegation' THEN 0
    WHEN 'SavingsPlanUpfrontFee' THEN 0
    WHEN 'DiscountedUsage' THEN reservation_effective_cost
    WHEN 'RIFee' THEN reservation_unused_amortized_upfront_fee_for_billing_period + reservation_unused_recurring_fee
    WHEN 'Fee' THEN CASE WHEN reservation_reservation_a_r_n <> '' THEN 0 ELSE line_item_unblended_cost END
    ELSE line_item_unblended_cost END"""

_CUR2_SQL = """SELECT
  CAST(CAST(line_item_usage_start_date AS DATE) AS VARCHAR) AS day,
  line_item_usage_account_id AS project_id,
  MAX(line_item_usage_account_name) AS project_name,
  COALESCE(element_at(product, 'product_name'), line_item_product_code) AS service,
  CAST(NULL AS VARCHAR) AS service_category,
  COALESCE(NULLIF(product_region_code, ''), NULLIF(line_item_availability_zone, '')) AS region,
  line_item_line_item_type AS charge,
  line_item_currency_code AS currency,
  CASE WHEN line_item_product_code = 'AmazonEC2' AND line_item_resource_id LIKE 'i-%'
       THEN line_item_resource_id END AS resource_id,
  COALESCE({effective}, 0) < 0 AS negative,
  SUM(CAST(line_item_unblended_cost AS DOUBLE)) AS billed_cost,
  SUM(CAST(COALESCE({effective}, 0) AS DOUBLE)) AS effective_cost,
  MAX(COALESCE(element_at(resource_tags, ?), element_at(resource_tags, ?))) AS owner
FROM {table}
WHERE billing_period BETWEEN ? AND ?
  AND line_item_usage_start_date >= CAST(? AS TIMESTAMP) AND line_item_usage_start_date < CAST(? AS TIMESTAMP)
GROUP BY 1, 2, 4, 5, 6, 7, 8, 9, 10"""

# CUR line item types -> FOCUS ChargeCategory; discounts and negations are credits, fees purchases.
CUR2_CHARGES: dict[str, str] = {
    "Usage": "Usage", "DiscountedUsage": "Usage", "SavingsPlanCoveredUsage": "Usage",
    "Tax": "Tax",
    "Credit": "Credit", "Refund": "Credit", "BundledDiscount": "Credit", "EdpDiscount": "Credit",
    "PrivateRateDiscount": "Credit", "DistributorDiscount": "Credit", "SavingsPlanNegation": "Credit",
    "Discount": "Credit",
    "Fee": "Purchase", "RIFee": "Purchase", "SavingsPlanRecurringFee": "Purchase",
    "SavingsPlanUpfrontFee": "Purchase",
}


def quoted_table(database: str, table: str) -> str:
    """``"database"."table"`` after checking both are plain Glue names: the one text spliced into the SQL."""
    for key, value in (("database", database), ("table", table)):
        if not NAME.fullmatch(value or ""):
            raise ConfigError(f"aws: athena.{key} {value!r} is not a Glue name (letters, digits, _ and -)")
    return f'"{database}"."{table}"'


def build_sql(export: str, database: str, table: str) -> str:
    """The day-aggregating query of one export kind; every value is a ``?`` parameter."""
    if export == "focus":
        return _FOCUS_SQL.format(table=quoted_table(database, table))
    if export == "cur2":
        return _CUR2_SQL.format(table=quoted_table(database, table), effective=_CUR2_EFFECTIVE)
    raise ConfigError(f"aws: athena.export must be focus or cur2, not {export!r}")


def parameters(export: str, owner_tag: str, start: dt.date, end: dt.date) -> list[str]:
    """Raw parameter values for [start, end), in the order of the ``?`` in :func:`build_sql`.

    The owner is looked up under the tag key as written and under the key the export writes for a
    user-defined cost allocation tag (``user_owner`` in CUR 2.0, ``user:owner`` in FOCUS).
    """
    last = end - dt.timedelta(days=1)
    prefixed = f"user_{owner_tag}" if export == "cur2" else f"user:{owner_tag}"
    return [owner_tag, prefixed, start.strftime("%Y-%m"), last.strftime("%Y-%m"), start.isoformat(),
            end.isoformat()]


def literal(value: str) -> str:
    """A value as an Athena ExecutionParameter: Athena substitutes parameters as SQL literals, so strings
    are single-quoted with inner quotes doubled and can never end the literal."""
    return "'" + value.replace("'", "''") + "'"


@dataclass
class Counts:
    queries: int = 0
    pages: int = 0
    polls: int = 0
    bytes_scanned: int = 0
    days_fetched: int = 0
    query_ids: list[str] = field(default_factory=list)


class AthenaExport:
    """Queries the export through the day cache; ``counts`` reports queries, pages and bytes scanned."""

    def __init__(self, api: Api, cache: DayCache, *, database: str, table: str, workgroup: str = "primary",
                 output_location: str | None = None, export: str = "focus", region: str | None = None,
                 owner_tag: str = "owner", restate_days: int = 3, clock: Callable[[], pd.Timestamp],
                 sleep: Callable[[float], None] = time.sleep, monotonic: Callable[[], float] = time.monotonic,
                 wait_seconds: float = WAIT_SECONDS) -> None:
        self.api = api
        self.cache = cache
        self.database = database
        self.table = table
        self.workgroup = workgroup
        self.output_location = output_location
        self.export = export
        self.sql = build_sql(export, database, table)
        self.region = region or api.session.region_name or "us-east-1"
        self.owner_tag = owner_tag
        self.restate_days = restate_days
        self.clock = clock
        self.sleep = sleep
        self.monotonic = monotonic
        self.wait_seconds = wait_seconds
        self.counts = Counts()
        # pointing the config at another table or owner tag starts a fresh history instead of mixing two
        self.source = f"athena:{export}:{database}.{table}:{owner_tag}"

    @property
    def client(self) -> Any:
        return self.api.client("athena", self.region)

    def daily(self, days: list[dt.date], today: dt.date | None = None) -> list[dict[str, Any]]:
        """Rows for ``days``, querying Athena only for what the cache cannot answer and the days within
        ``restate_days`` of ``today`` (the clock's, or a replay's)."""
        today = today or self.clock().date()
        cached = self.cache.fetched_days(self.source)
        for a, b in fetch_windows(days, cached, today, self.restate_days):
            rows = self.query(a, b)
            fetched = [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days)]
            self.cache.store(self.source, fetched, [(r["day"], r) for r in rows], self.clock().isoformat())
            self.counts.days_fetched += len(fetched)
        return self.cache.rows(self.source, [d.isoformat() for d in days])

    def query(self, start: dt.date, end: dt.date) -> list[dict[str, Any]]:
        """One aggregated query for the days [start, end): start it, wait for it, read every page."""
        what = f'the Athena query of "{self.database}"."{self.table}" for {start}..{end - dt.timedelta(days=1)}'
        params: dict[str, Any] = {
            "QueryString": self.sql,
            "ExecutionParameters": [literal(v) for v in parameters(self.export, self.owner_tag, start, end)],
            "WorkGroup": self.workgroup,
            "ClientRequestToken": uuid.uuid4().hex,  # a retried request starts the query only once
        }
        if self.output_location:
            params["ResultConfiguration"] = {"OutputLocation": self.output_location}
        try:
            started = self.api.call(self.client, "StartQueryExecution", region=self.region, **params)
        except AwsCallError as e:
            text = str(e).lower()
            if e.code == "InvalidRequestException" and "output location" in text:
                raise ProviderError(f"{e}; set athena.output_location (an s3:// folder costwatch may write "
                                    "to) or use a workgroup that has a query result location") from None
            if e.code == "InvalidRequestException" and "workgroup" in text:
                raise ProviderError(f"{e}; check athena.workgroup ({self.workgroup!r}) and athena.region "
                                    f"({self.region})") from None
            raise
        qid = str(started["QueryExecutionId"])
        self.counts.queries += 1
        self.counts.query_ids.append(qid)
        self._wait(qid, what)
        return self._results(qid, what)

    def _wait(self, qid: str, what: str) -> None:
        deadline = self.monotonic() + self.wait_seconds
        delay = FIRST_DELAY
        while True:
            got = self.api.call(self.client, "GetQueryExecution", region=self.region, QueryExecutionId=qid)
            self.counts.polls += 1
            execution = got.get("QueryExecution", {})
            status = execution.get("Status", {})
            state = str(status.get("State", ""))
            if state == "SUCCEEDED":
                scanned = execution.get("Statistics", {}).get("DataScannedInBytes")
                self.counts.bytes_scanned += int(scanned or 0)
                return
            if state == "FAILED":
                raise ProviderError(f"aws: {what} failed{_reason(status)}; {self._advice(status)}")
            if state == "CANCELLED":
                raise ProviderError(f"aws: {what} was cancelled{_reason(status)}; it was stopped by a user or by "
                                    f"a data usage limit of workgroup {self.workgroup!r}. Run costwatch again, or "
                                    "raise the workgroup's per-query limit")
            if self.monotonic() >= deadline:
                with contextlib.suppress(ProviderError):  # the timeout below is the error worth reporting
                    self.api.call(self.client, "StopQueryExecution", region=self.region, QueryExecutionId=qid)
                raise ProviderError(f"aws: {what} was still {state or 'pending'} after {self.wait_seconds:.0f} s "
                                    "and was stopped; check the workgroup's capacity and that the table is "
                                    "partitioned by billing_period")
            self.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)

    def _advice(self, status: dict[str, Any]) -> str:
        text = _reason_text(status).lower()
        if "table_not_found" in text or "does not exist" in text or "schema_not_found" in text:
            return (f"check athena.database ({self.database}) and athena.table ({self.table}): the Glue table of "
                    "the Data Export, in the same region as athena.region")
        if "column_not_found" in text or "cannot be resolved" in text or "type_mismatch" in text:
            return (f"check that the table is a {'FOCUS 1.2' if self.export == 'focus' else 'CUR 2.0'} Data "
                    "Export in Parquet with the billing_period partition (athena.export)")
        if "access denied" in text or "accessdenied" in text or "permission" in text:
            return ("grant s3:GetObject and s3:ListBucket on the export bucket, s3:PutObject on the query "
                    "result location, and glue:GetTable, glue:GetPartitions on the table")
        return "see the query in the Athena console's history for details"

    def _results(self, qid: str, what: str) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"QueryExecutionId": qid, "MaxResults": PAGE_ROWS}
        out: list[dict[str, Any]] = []
        names: list[str] | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            page = self.api.call(self.client, "GetQueryResults", region=self.region, **params)
            self.counts.pages += 1
            result = page.get("ResultSet", {})
            rows = [[d.get("VarCharValue") for d in r.get("Data", [])] for r in result.get("Rows", [])]
            if names is None:
                info = result.get("ResultSetMetadata", {}).get("ColumnInfo", [])
                names = [str(c.get("Name") or c.get("Label")) for c in info] or (rows[0] if rows else [])
                # a SELECT's first page starts with the column labels
                if rows and [str(v).lower() for v in rows[0]] == [n.lower() for n in names]:
                    rows = rows[1:]
            out.extend(_row(dict(zip(names, r, strict=False)), what) for r in rows)
            token = page.get("NextToken")
            if not token:
                return out
            if token in seen:
                raise ProviderError(f"aws: {what}: GetQueryResults returned the same NextToken twice; stopped to "
                                    "avoid a request loop")
            seen.add(token)
            params["NextToken"] = token
        raise ProviderError(f"aws: {what} returned more than {MAX_PAGES * PAGE_ROWS:,} rows; narrow the window")


def _reason_text(status: dict[str, Any]) -> str:
    err = status.get("AthenaError") or {}
    parts = [str(status.get("StateChangeReason") or ""), str(err.get("ErrorMessage") or "")]
    return " ".join(p for p in parts if p)


def _reason(status: dict[str, Any]) -> str:
    """Athena's reason, with ARNs and account ids masked (they name the caller), at most 300 characters."""
    text = _reason_text(status)
    return f": {_ACCOUNT.sub('<account>', _ARN.sub('<arn>', text))[:300]}" if text else ""


def _num(value: Any, what: str, column: str) -> float:
    try:
        return float(value) if value not in (None, "") else 0.0
    except (TypeError, ValueError):
        raise ProviderError(f"aws: {what} returned a non-numeric {column}: {str(value)[:40]!r}") from None


def _row(r: dict[str, Any], what: str) -> dict[str, Any]:
    """One result row as plain JSON-able values (the cache stores JSON)."""
    day = str(r.get("day") or "")[:10]
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise ProviderError(f"aws: {what} returned a row without a valid day ({day!r}); is athena.export right?")
    text = {k: (str(r[k]) if r.get(k) not in (None, "") else None)
            for k in ("project_id", "project_name", "service", "service_category", "region", "charge", "currency",
                      "resource_id", "owner")}
    return {"day": day, **text, "billed_cost": _num(r.get("billed_cost"), what, "billed_cost"),
            "effective_cost": _num(r.get("effective_cost"), what, "effective_cost")}


def costs_frame(rows: Sequence[dict[str, Any]], export: str, today: dt.date, restate_days: int,
                names: dict[str, str] | None = None, owners: dict[str, str] | None = None) -> pd.DataFrame:
    """Cached export rows as the cost frame.  Names and owners fall back to Organizations' (``names``,
    ``owners``); a resource-tag owner on the rows wins.  Days within ``restate_days`` are ``estimated``."""
    from costwatch.providers.files.focus import CHARGE_CATEGORIES, SERVICE_CATEGORIES

    if not rows:
        return empty_costs()
    names, owners = names or {}, owners or {}
    df = pd.DataFrame(list(rows))
    project = df["project_id"].fillna("unknown").astype(str)
    tag_owner = df.dropna(subset=["owner"]).groupby("project_id")["owner"].agg(lambda s: s.mode().iloc[0])
    row_names = df.dropna(subset=["project_name"]).groupby("project_id")["project_name"].first()
    focus_charges = {c.lower(): c for c in CHARGE_CATEGORIES}
    focus_categories = {c.lower(): c for c in SERVICE_CATEGORIES}
    if export == "cur2":
        charge = df["charge"].map(lambda c: CUR2_CHARGES.get(str(c), "Adjustment") if c else "Usage")
    else:
        charge = df["charge"].map(lambda c: focus_charges.get(str(c).strip().lower(), str(c).strip().title())
                                  if c else None)
    category = [focus_categories.get(str(c).lower(), str(c)) if c else service_category(str(s or ""))
                for c, s in zip(df["service_category"], df["service"], strict=True)]
    region = df["region"].where(~df["region"].fillna("").str.strip().str.lower().isin(NO_REGION), None)
    recent = (today - dt.timedelta(days=restate_days)).isoformat()

    def owner_of(p: str) -> dict[str, str]:
        o = tag_owner.get(p) or owners.get(p)
        return {"owner": str(o)} if o else {}

    frame = pd.DataFrame({
        "period_start": pd.to_datetime(df["day"], utc=True),
        "period_hours": 24.0,
        "provider": "aws",
        "project_id": project,
        "project_name": project.map(lambda p: row_names.get(p) or names.get(p) or p),
        "service": df["service"].fillna("(unknown)"),
        "service_category": category,
        "region": region,
        "charge_category": charge,
        "resource_id": df["resource_id"],
        "billed_cost": df["billed_cost"].astype(float),
        "effective_cost": df["effective_cost"].astype(float),
        "currency": df["currency"].fillna("USD").str.upper(),
        "estimated": df["day"] >= recent,
        "tags": [owner_of(p) for p in project],
    })
    return normalize_costs(frame.sort_values(["period_start", "project_id", "service", "region"], kind="stable",
                                             na_position="first"))


__all__ = ["AthenaExport", "build_sql", "costs_frame", "literal", "parameters", "quoted_table"]
