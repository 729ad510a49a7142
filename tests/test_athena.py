"""The Athena cost source: its SQL proven by running it, its API use proven against moto.

Moto runs no SQL: it hands out queued result sets.  So each aggregation test runs the very statement
costwatch sends (``build_sql`` with ``parameters``) in DuckDB over real sample rows loaded as the export
table, queues DuckDB's answer in moto, and lets ``AthenaExport`` start, poll and page through moto as it would
through Athena.  The totals are then checked against an independent computation (the pandas FOCUS loader, or
pandas arithmetic on the CUR rows), so a wrong GROUP BY, filter or cost formula fails here.

Where moto lacks an Athena behaviour (paged results, a failure reason), a botocore event hook adds it to
moto's response; costwatch's code is never replaced.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
import requests

pytest.importorskip("moto")
pytest.importorskip("duckdb")
import duckdb
from moto import mock_aws
from moto.athena.models import athena_backends

from costwatch.config import parse_config
from costwatch.errors import ConfigError, ProviderError
from costwatch.model import validate_costs
from costwatch.providers._daycache import DayCache
from costwatch.providers.aws import AwsProvider
from costwatch.providers.aws._api import Api
from costwatch.providers.aws.athena import AthenaExport, build_sql, costs_frame, literal, parameters, quoted_table
from costwatch.providers.files import load_focus
from costwatch.sources import build

DATA = Path(__file__).parent / "data"
FOCUS_SAMPLE = DATA / "focus-1.0-sample.csv"
CUR_SAMPLE = DATA / "aws" / "cur-legacy-sample.csv"
MOTO_API = "http://motoapi.amazonaws.com"
ACCOUNT = "123456789012"  # moto's caller account
REGION = "us-east-1"
SERIES = ["project_id", "service", "service_category", "region", "charge_category", "currency"]


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def moto(aws_env: None) -> Iterator[None]:
    with mock_aws():
        yield
        requests.post(f"{MOTO_API}/moto-api/state-manager/unset-transition",
                      json={"model_name": "athena::execution"}, timeout=10)


def hold(times: int) -> None:
    """Keep every new query QUEUED for ``times`` polls, then RUNNING for as many, then SUCCEEDED."""
    resp = requests.post(f"{MOTO_API}/moto-api/state-manager/set-transition",
                         json={"model_name": "athena::execution",
                               "transition": {"progression": "manual", "times": times}}, timeout=10)
    assert resp.status_code == 201


def queue(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    """Queue one result set the way Athena returns a SELECT: a header row, then text values (NULL: no value)."""
    def cell(v: Any) -> dict[str, str]:
        if v is None:
            return {}
        return {"VarCharValue": str(v).lower() if isinstance(v, bool) else str(v)}

    result: dict[str, Any] = {
        "rows": [{"Data": [cell(c) for c in columns]}] + [{"Data": [cell(v) for v in r]} for r in rows],
        "column_info": [{"Name": c, "Label": c, "Type": "varchar"} for c in columns]}
    resp = requests.post(f"{MOTO_API}/moto-api/static/athena/query-results", json={"results": [result]}, timeout=10)
    assert resp.status_code == 201


class Clock:
    """Monotonic time that moves only when costwatch sleeps, so waits are counted, never spent."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep()


def export(tmp_path: Path, clock: Clock, *, table: str = "focus", kind: str = "focus", api: Api | None = None,
           **kw: Any) -> AthenaExport:
    return AthenaExport(api or Api(), DayCache(tmp_path / "cache.db", scope="aws"), database="db", table=table,
                        export=kind, clock=lambda: pd.Timestamp("2024-10-15", tz="UTC"), sleep=clock.sleep,
                        monotonic=clock.monotonic, **kw)


def duck() -> Any:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE SCHEMA db")
    # Trino's element_at(map, key) is the value or NULL; DuckDB's is a list.  Give DuckDB Trino's meaning so
    # the statement runs unchanged (DuckDB's m[k] is the value or NULL, as Trino's element_at).
    con.execute("CREATE TEMP MACRO element_at(m, k) AS m[k]")
    return con


def run(con: Any, kind: str, table: str, owner_tag: str, start: dt.date, end: dt.date,
        ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The exact statement and parameter values costwatch sends, run by DuckDB."""
    cur = con.execute(build_sql(kind, "db", table), parameters(kind, owner_tag, start, end))
    rows = cur.fetchall()
    return [d[0] for d in cur.description], rows


def daily(costs: pd.DataFrame) -> pd.DataFrame:
    day = costs["period_start"].dt.floor("D").rename("day")
    keys = [day, *(costs[k].astype("string").fillna("<NA>") for k in SERIES)]
    return costs.groupby(keys)[["billed_cost", "effective_cost"]].sum().sort_index()


# --------------------------------------------------------------------------------- FOCUS 1.2 export


def focus_export(tmp_path: Path) -> Path:
    """The AWS rows of the real FOCUS sample, plus two made-up rows: a EUR charge (its own series) and a row
    filed under the 2024-08 billing period (the partition filter must leave it out)."""
    raw = pd.read_csv(FOCUS_SAMPLE, dtype=str, keep_default_na=False)
    aws = raw[raw["ProviderName"] == "AWS"]
    compute = aws[aws["ServiceCategory"] == "Compute"].iloc[0]
    eur = compute.copy()
    eur[["BillingCurrency", "BilledCost", "EffectiveCost", "ChargePeriodStart", "ChargePeriodEnd"]] = [
        "EUR", "100", "90", "2024-09-12 10:00:00", "2024-09-12 11:00:00"]
    stray = compute.copy()
    stray[["SubAccountId", "BillingPeriodStart", "BilledCost", "ChargePeriodStart", "ChargePeriodEnd"]] = [
        "999999999999", "2024-08-01 00:00:00", "1000", "2024-09-12 10:00:00", "2024-09-12 11:00:00"]
    path = tmp_path / "aws-focus.csv"
    pd.concat([aws, eur.to_frame().T, stray.to_frame().T]).to_csv(path, index=False)
    return path


def load_focus_table(con: Any, csv_path: Path) -> None:
    """The export as the Data Exports Athena table types it: timestamps, doubles, Tags a MAP, and the
    ``billing_period`` partition column."""
    con.execute("CREATE TABLE db.focus AS SELECT * EXCLUDE (Tags), "
                "CAST(CAST(Tags AS JSON) AS MAP(VARCHAR, VARCHAR)) AS Tags, "
                "strftime(BillingPeriodStart, '%Y-%m') AS billing_period "
                "FROM read_csv(?, nullstr = 'NULL')", [str(csv_path)])


def test_focus_sql_gives_the_pandas_loaders_daily_totals(moto: None, tmp_path: Path) -> None:
    csv_path = focus_export(tmp_path)
    con = duck()
    load_focus_table(con, csv_path)
    start, end = dt.date(2024, 9, 10), dt.date(2024, 9, 20)
    columns, rows = run(con, "focus", "focus", "business_unit", start, end)
    queue(columns, rows)
    clock = Clock()
    source = export(tmp_path, clock, owner_tag="business_unit")
    got = costs_frame(source.query(start, end), "focus", dt.date(2024, 10, 15), 3)
    validate_costs(got)

    reference = load_focus(csv_path)
    reference = reference[(reference["project_id"] != "999999999999")
                          & (reference["period_start"] >= pd.Timestamp(start, tz="UTC"))
                          & (reference["period_start"] < pd.Timestamp(end, tz="UTC"))]
    a, b = daily(got), daily(reference)
    assert a.index.equals(b.index)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-9, atol=1e-12)
    assert len(got) < len(reference)  # hourly rows came back as daily sums
    # the EUR row is a series of its own; the row of another billing period was pruned
    assert got.loc[got["currency"] == "EUR", "billed_cost"].tolist() == [100.0]
    assert "999999999999" not in set(got["project_id"])
    # each project's owner is one of the business units its rows are tagged with
    units = reference.assign(unit=[t.get("business_unit") for t in reference["tags"]]).dropna(subset=["unit"])
    for pid, tags in got.groupby("project_id")["tags"].first().items():
        if tags:
            assert tags["owner"] in set(units.loc[units["project_id"] == pid, "unit"])
    assert any(got["tags"])

    # what moto received is what DuckDB ran: the statement, and the parameters as quoted literals
    client = boto3.client("athena", region_name=REGION)
    sent = client.get_query_execution(QueryExecutionId=source.counts.query_ids[0])["QueryExecution"]
    assert sent["Query"] == build_sql("focus", "db", "focus")
    assert sent["ExecutionParameters"] == ["'business_unit'", "'user:business_unit'", "'2024-09'", "'2024-09'",
                                           "'2024-09-10'", "'2024-09-20'"]
    assert (source.counts.queries, source.counts.pages, clock.sleeps) == (1, 1, [])


# ------------------------------------------------------------------------------------------ CUR 2.0


CUR2_COLUMNS = {
    "billing_period": "VARCHAR", "line_item_usage_account_id": "VARCHAR", "line_item_usage_account_name": "VARCHAR",
    "line_item_line_item_type": "VARCHAR", "line_item_usage_start_date": "TIMESTAMP",
    "line_item_product_code": "VARCHAR", "line_item_resource_id": "VARCHAR",
    "line_item_availability_zone": "VARCHAR", "line_item_currency_code": "VARCHAR",
    "line_item_unblended_cost": "DOUBLE", "product": "MAP(VARCHAR, VARCHAR)", "product_region_code": "VARCHAR",
    "resource_tags": "MAP(VARCHAR, VARCHAR)", "reservation_effective_cost": "DOUBLE",
    "reservation_unused_amortized_upfront_fee_for_billing_period": "DOUBLE",
    "reservation_unused_recurring_fee": "DOUBLE", "reservation_reservation_a_r_n": "VARCHAR",
    "savings_plan_savings_plan_effective_cost": "DOUBLE", "savings_plan_total_commitment_to_date": "DOUBLE",
    "savings_plan_used_commitment": "DOUBLE",
}
LEGACY = {  # legacy CUR header -> CUR 2.0 column
    "lineItem/UsageAccountId": "line_item_usage_account_id", "lineItem/LineItemType": "line_item_line_item_type",
    "lineItem/UsageStartDate": "line_item_usage_start_date", "lineItem/ProductCode": "line_item_product_code",
    "lineItem/AvailabilityZone": "line_item_availability_zone", "lineItem/CurrencyCode": "line_item_currency_code",
    "lineItem/UnblendedCost": "line_item_unblended_cost", "product/regionCode": "product_region_code",
    "reservation/EffectiveCost": "reservation_effective_cost",
    "reservation/UnusedAmortizedUpfrontFeeForBillingPeriod":
        "reservation_unused_amortized_upfront_fee_for_billing_period",
    "reservation/UnusedRecurringFee": "reservation_unused_recurring_fee",
    "savingsPlan/SavingsPlanEffectiveCost": "savings_plan_savings_plan_effective_cost",
    "savingsPlan/TotalCommitmentToDate": "savings_plan_total_commitment_to_date",
    "savingsPlan/UsedCommitment": "savings_plan_used_commitment",
}
MINERS = "111111111111"


def synthetic_cur2() -> list[dict[str, Any]]:
    """One day of an EC2 account with every amortization case of the CUR 2.0 effective-cost formula."""
    def row(kind: str, cost: float, resource: str | None = None, day: str = "2023-11-02", period: str = "2023-11",
            **extra: Any) -> dict[str, Any]:
        return {"billing_period": period, "line_item_usage_account_id": MINERS,
                "line_item_usage_account_name": "miners", "line_item_line_item_type": kind,
                "line_item_usage_start_date": f"{day} 05:00:00", "line_item_product_code": "AmazonEC2",
                "line_item_resource_id": resource, "line_item_availability_zone": "us-east-1a",
                "line_item_currency_code": "USD", "line_item_unblended_cost": cost,
                "product": json.dumps({"product_name": "Amazon Elastic Compute Cloud", "region": "us-east-1"}),
                "product_region_code": "us-east-1",
                "resource_tags": json.dumps({"user_owner": "team-a"}) if resource else None, **extra}

    return [
        row("Usage", 10.0, "i-0abc"),
        row("SavingsPlanCoveredUsage", 5.0, "i-0def", savings_plan_savings_plan_effective_cost=3.0),
        row("SavingsPlanNegation", -5.0, "i-0def"),
        row("DiscountedUsage", 0.0, "i-0ghi", reservation_effective_cost=2.0),
        row("RIFee", 7.0, reservation_unused_amortized_upfront_fee_for_billing_period=1.0,
            reservation_unused_recurring_fee=0.5),
        row("SavingsPlanRecurringFee", 24.0, savings_plan_total_commitment_to_date=24.0,
            savings_plan_used_commitment=20.0),
        row("Credit", -4.0),
        row("Usage", 500.0, "i-0old", period="2023-10"),  # filed under another billing period: pruned
        row("Usage", 700.0, "i-0late", day="2023-11-20"),  # after the window
    ]


def load_cur2_table(con: Any) -> pd.DataFrame:
    legacy = pd.read_csv(CUR_SAMPLE, dtype=str, keep_default_na=False)
    rows = legacy[list(LEGACY)].rename(columns=LEGACY).replace("", None)
    rows["billing_period"] = legacy["bill/BillingPeriodStartDate"].str[:7]
    rows["line_item_usage_start_date"] = rows["line_item_usage_start_date"].str.replace("T", " ").str[:19]
    rows["product"] = [json.dumps({"product_name": n, "region": r} if r else {"product_name": n})
                       for n, r in zip(legacy["product/ProductName"], legacy["product/region"], strict=True)]
    made = pd.DataFrame(synthetic_cur2())
    for f in (rows, made):
        for c in CUR2_COLUMNS:
            if c not in f:
                f[c] = None
    frame = pd.concat([rows[list(CUR2_COLUMNS)].astype(object), made[list(CUR2_COLUMNS)].astype(object)],
                      ignore_index=True)
    con.register("cur2_rows", frame[list(CUR2_COLUMNS)].astype(object).where(frame.notna(), None))
    casts = ", ".join(f"CAST(CAST({c} AS JSON) AS {t}) AS {c}" if t.startswith("MAP") else f"CAST({c} AS {t}) AS {c}"
                      for c, t in CUR2_COLUMNS.items())
    con.execute(f"CREATE TABLE db.cur2 AS SELECT {casts} FROM cur2_rows")
    return legacy


def test_cur2_sql_sums_the_report_and_amortizes_commitments(moto: None, tmp_path: Path) -> None:
    con = duck()
    legacy = load_cur2_table(con)
    start, end = dt.date(2023, 11, 1), dt.date(2023, 11, 8)
    columns, rows = run(con, "cur2", "cur2", "owner", start, end)
    queue(columns, rows)
    got = costs_frame(export(tmp_path, Clock(), table="cur2", kind="cur2").query(start, end), "cur2",
                      dt.date(2024, 1, 1), 3)
    validate_costs(got)

    # the real report: one account's rows over two weeks; unblended cost by day, service, region and type
    inside = legacy[(legacy["lineItem/UsageStartDate"] >= "2023-11-01")
                    & (legacy["lineItem/UsageStartDate"] < "2023-11-08")]
    cost = pd.to_numeric(inside["lineItem/UnblendedCost"])
    region = inside["product/regionCode"].where(inside["product/regionCode"] != "",
                                                inside["lineItem/AvailabilityZone"])
    expected = cost.groupby([inside["lineItem/UsageStartDate"].str[:10], inside["product/ProductName"],
                             region.replace("", "<NA>"), inside["lineItem/LineItemType"]]).sum()
    real = got[got["project_id"] == "123412340534"]
    actual = real.groupby([real["period_start"].dt.strftime("%Y-%m-%d"), real["service"],
                           real["region"].astype("string").fillna("<NA>"),
                           real["charge_category"].astype(str)])["billed_cost"].sum()
    assert actual.index.tolist() == expected.index.tolist() and len(expected) > 100
    np.testing.assert_allclose(actual.to_numpy(), expected.to_numpy(), rtol=1e-9, atol=1e-12)
    assert (real["billed_cost"] == real["effective_cost"]).all()  # no commitments in that account
    assert real.loc[real["service"] == "Amazon Simple Storage Service", "service_category"].eq("Storage").all()

    miners = got[got["project_id"] == MINERS]
    assert set(miners["period_start"]) == {pd.Timestamp("2023-11-02", tz="UTC")}
    by_charge = miners.groupby(miners["charge_category"].astype(str))[["billed_cost", "effective_cost"]].sum()
    assert by_charge.to_dict("index") == {
        "Usage": {"billed_cost": 15.0, "effective_cost": 15.0},  # 10 on demand + 3 savings plan + 2 reserved
        "Credit": {"billed_cost": -9.0, "effective_cost": -4.0},  # the negation is zero once amortized
        "Purchase": {"billed_cost": 31.0, "effective_cost": 5.5},  # only the unused commitment
    }
    usage = miners[miners["charge_category"] == "Usage"]
    assert set(usage["resource_id"]) == {"i-0abc", "i-0def", "i-0ghi"}
    assert set(miners["service_category"]) == {"Compute"} and set(miners["project_name"]) == {"miners"}
    assert all(t == {"owner": "team-a"} for t in miners["tags"])  # from the user_owner cost allocation tag
    assert not {"i-0old", "i-0late"} & set(got["resource_id"].dropna())


# ------------------------------------------------------------------------------------ query lifecycle


def test_polling_backs_off_until_the_query_succeeds(moto: None, tmp_path: Path) -> None:
    hold(5)  # 5 polls QUEUED, 5 RUNNING, then SUCCEEDED
    queue(["day", "project_id", "billed_cost", "effective_cost"], [("2024-09-10", "1", 2.5, 2.0)])
    clock = Clock()
    source = export(tmp_path, clock)
    rows = source.query(dt.date(2024, 9, 10), dt.date(2024, 9, 11))
    assert [(r["day"], r["project_id"], r["billed_cost"], r["effective_cost"]) for r in rows] == [
        ("2024-09-10", "1", 2.5, 2.0)]
    assert clock.sleeps == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]
    assert source.counts.polls == 10


FAILURES = [
    ("TABLE_NOT_FOUND: line 3:6: Table 'awsdatacatalog.db.focus' does not exist", "check athena.database"),
    ("COLUMN_NOT_FOUND: line 2:8: Column 'chargeperiodstart' cannot be resolved", "FOCUS 1.2 Data Export"),
    ("Access Denied (Service: Amazon S3; Status Code: 403) for arn:aws:iam::123456789012:role/ro",
     "s3:GetObject"),
]


@pytest.mark.parametrize(("reason", "advice"), FAILURES)
def test_a_failed_query_names_the_table_days_reason_and_fix(moto: None, tmp_path: Path, reason: str,
                                                            advice: str) -> None:
    hold(100)
    clock = Clock()
    api = Api()

    def with_reason(parsed: dict[str, Any], **_: Any) -> None:  # what Athena sends and moto leaves out
        status = parsed["QueryExecution"]["Status"]
        if status["State"] == "FAILED":
            status["StateChangeReason"] = reason
            status["AthenaError"] = {"ErrorCategory": 2, "ErrorMessage": reason}

    api.session.events.register("after-call.athena.GetQueryExecution", with_reason)
    source = export(tmp_path, clock, api=api)

    def fail() -> None:  # the query fails while costwatch waits
        athena_backends[ACCOUNT][REGION].executions[source.counts.query_ids[-1]].status = "FAILED"

    clock.on_sleep = fail
    with pytest.raises(ProviderError) as info:
        source.query(dt.date(2024, 9, 10), dt.date(2024, 9, 13))
    msg = str(info.value)
    assert msg.startswith('aws: the Athena query of "db"."focus" for 2024-09-10..2024-09-12 failed: ')
    assert advice in msg and ACCOUNT not in msg and "arn:aws" not in msg
    assert reason.split(" for arn")[0] in msg


def test_a_cancelled_query_is_an_error(moto: None, tmp_path: Path) -> None:
    hold(100)
    clock = Clock()
    source = export(tmp_path, clock, workgroup="primary")
    client = boto3.client("athena", region_name=REGION)
    clock.on_sleep = lambda: client.stop_query_execution(QueryExecutionId=source.counts.query_ids[-1])
    with pytest.raises(ProviderError, match=r"was cancelled; .*workgroup 'primary'"):
        source.query(dt.date(2024, 9, 10), dt.date(2024, 9, 11))
    assert clock.sleeps == [0.25]


def test_a_query_past_the_deadline_is_stopped(moto: None, tmp_path: Path) -> None:
    hold(1000)
    clock = Clock()
    source = export(tmp_path, clock, wait_seconds=30)
    with pytest.raises(ProviderError, match=r"still QUEUED after 30 s and was stopped"):
        source.query(dt.date(2024, 9, 10), dt.date(2024, 9, 11))
    assert sum(clock.sleeps) >= 30 and max(clock.sleeps) == 5.0
    qid = source.counts.query_ids[-1]
    assert athena_backends[ACCOUNT][REGION].executions[qid].status == "CANCELLED"  # no longer scanning


def test_a_missing_workgroup_is_reported(moto: None, tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match=r"athena:StartQueryExecution in us-east-1 failed: .*WorkGroup does not "
                                            r"exist; check athena.workgroup \('nope'\)"):
        export(tmp_path, Clock(), workgroup="nope").query(dt.date(2024, 9, 10), dt.date(2024, 9, 11))


# ------------------------------------------------------------------------------------------- paging


def page_like_athena(api: Api, *, stuck: bool = False) -> list[dict[str, Any]]:
    """Give moto Athena's paging: MaxResults rows a page (the header counts on the first), a NextToken while
    rows remain.  ``stuck`` hands out the same token forever.  Returns each request's paging parameters."""
    requests_seen: list[dict[str, Any]] = []

    def remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["paging"] = {k: params.get(k) for k in ("MaxResults", "NextToken")}
        requests_seen.append(context["paging"])

    def cut(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        paging = context["paging"]
        size, offset = int(paging["MaxResults"] or 1000), int(paging["NextToken"] or 0)
        rows = parsed["ResultSet"]["Rows"]
        parsed["ResultSet"]["Rows"] = rows[offset: offset + size]
        if stuck:
            parsed["NextToken"] = "1000"
        elif offset + size < len(rows):
            parsed["NextToken"] = str(offset + size)

    api.session.events.register("provide-client-params.athena.GetQueryResults", remember)
    api.session.events.register("after-call.athena.GetQueryResults", cut)
    return requests_seen


def test_results_are_read_page_by_page(moto: None, tmp_path: Path) -> None:
    data = [(f"2024-09-{1 + i % 28:02d}", f"acct-{i:05d}", float(i), float(i) / 2) for i in range(2500)]
    queue(["day", "project_id", "billed_cost", "effective_cost"], data)
    api = Api()
    seen = page_like_athena(api)
    source = export(tmp_path, Clock(), api=api)
    rows = source.query(dt.date(2024, 9, 1), dt.date(2024, 9, 29))
    assert [(r["day"], r["project_id"], r["billed_cost"], r["effective_cost"]) for r in rows] == data
    assert seen == [{"MaxResults": 1000, "NextToken": None}, {"MaxResults": 1000, "NextToken": "1000"},
                    {"MaxResults": 1000, "NextToken": "2000"}]
    assert source.counts.pages == 3


def test_a_repeated_page_token_stops_the_loop(moto: None, tmp_path: Path) -> None:
    queue(["day", "project_id", "billed_cost", "effective_cost"], [("2024-09-01", "a", 1.0, 1.0)] * 1500)
    api = Api()
    page_like_athena(api, stuck=True)
    with pytest.raises(ProviderError, match="same NextToken twice"):
        export(tmp_path, Clock(), api=api).query(dt.date(2024, 9, 1), dt.date(2024, 9, 2))


def test_a_result_that_is_not_the_expected_shape_is_an_error(moto: None, tmp_path: Path) -> None:
    queue(["line_item_usage_start_date", "cost"], [("2024-09-01T00:00:00", 1.0)])
    with pytest.raises(ProviderError, match=r"without a valid day .*athena.export"):
        export(tmp_path, Clock()).query(dt.date(2024, 9, 1), dt.date(2024, 9, 2))
    queue(["day", "project_id", "billed_cost", "effective_cost"], [("2024-09-01", "a", "12,5", 1.0)])
    with pytest.raises(ProviderError, match=r"non-numeric billed_cost: '12,5'"):
        export(tmp_path, Clock()).query(dt.date(2024, 9, 1), dt.date(2024, 9, 2))


# ------------------------------------------------------------------------------ provider and config


def test_provider_reads_costs_through_athena_and_caches_days(moto: None, tmp_path: Path) -> None:
    csv_path = focus_export(tmp_path)
    con = duck()
    load_focus_table(con, csv_path)
    now = pd.Timestamp("2024-09-20 12:00", tz="UTC")
    columns, rows = run(con, "focus", "focus", "owner", dt.date(2024, 9, 1), dt.date(2024, 9, 21))
    queue(columns, rows)
    cfg = parse_config(f"""
providers:
  - type: aws
    cache_path: {tmp_path / 'cache.db'}
    cpu: false
    guardduty: false
    cost_source: athena
    athena:
      database: db
      table: focus
      workgroup: primary
      output_location: s3://athena-results/costwatch/
      export: focus
      region: {REGION}
""")
    provider = build(cfg.providers[0], cfg)
    assert isinstance(provider, AwsProvider)
    provider.clock = lambda: now
    assert provider.athena is not None
    provider.athena.clock = lambda: now
    first = provider.fetch_costs(pd.Timestamp("2024-09-01", tz="UTC"), pd.Timestamp("2024-09-21", tz="UTC"))
    validate_costs(first)
    reference = load_focus(csv_path)
    reference = reference[(reference["project_id"] != "999999999999")
                          & (reference["period_start"] < pd.Timestamp("2024-09-21", tz="UTC"))]
    np.testing.assert_allclose(daily(first).to_numpy(), daily(reference).to_numpy(), rtol=1e-9)
    assert first.loc[first["period_start"] >= pd.Timestamp("2024-09-17", tz="UTC"), "estimated"].all()
    assert not first.loc[first["period_start"] < pd.Timestamp("2024-09-17", tz="UTC"), "estimated"].any()

    # the next run asks only for the days that can still change (restate_days = 3, plus today)
    recent = [r for r in rows if r[0] >= "2024-09-17"]
    queue(columns, recent)
    second = provider.fetch_costs(pd.Timestamp("2024-09-01", tz="UTC"), pd.Timestamp("2024-09-21", tz="UTC"))
    pd.testing.assert_frame_equal(daily(second), daily(first))
    stats = provider.stats()
    assert (stats["athena_queries"], stats["athena_days_fetched"], stats["ce_requests"]) == (2, 20 + 4, 0)
    client = boto3.client("athena", region_name=REGION)
    last = client.get_query_execution(QueryExecutionId=provider.athena.counts.query_ids[-1])["QueryExecution"]
    assert last["ExecutionParameters"][-2:] == ["'2024-09-17'", "'2024-09-21'"]
    assert last["ResultConfiguration"]["OutputLocation"].startswith("s3://athena-results/costwatch/")
    assert last["WorkGroup"] == "primary"


@pytest.mark.parametrize(("block", "error"), [
    ("    cost_source: athena\n", "needs an 'athena' block"),
    ('    cost_source: athena\n    athena:\n      database: db\n      table: \'x"; DROP TABLE y; --\'\n', "table"),
    ("    cost_source: athena\n    athena:\n      database: db\n      table: t\n      export: cur\n", "export"),
    ("    cost_source: athena\n    athena:\n      database: db\n      table: t\n"
     "      output_location: bucket/prefix\n", "output_location"),
    ("    athena:\n      database: db\n      tabel: t\n", "tabel"),
])
def test_athena_config_is_checked(block: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_config("providers:\n  - type: aws\n" + block)


def test_only_checked_names_and_quoted_values_reach_the_sql() -> None:
    assert quoted_table("cid_data_export", "focus-1-2") == '"cid_data_export"."focus-1-2"'
    for bad in ('x"; DROP TABLE y; --', "a.b", "", "tab le"):
        with pytest.raises(ConfigError, match=r"athena\.table"):
            build_sql("focus", "db", bad)
    with pytest.raises(ConfigError, match=r"athena\.export"):
        build_sql("cur", "db", "t")
    assert literal("o'wner") == "'o''wner'"
    assert parameters("cur2", "team", dt.date(2023, 12, 30), dt.date(2024, 2, 1)) == [
        "team", "user_team", "2023-12", "2024-01", "2023-12-30", "2024-02-01"]
    for kind in ("focus", "cur2"):
        sql = build_sql(kind, "db", "t")
        assert sql.count("?") == 6 and "billing_period BETWEEN ? AND ?" in sql
