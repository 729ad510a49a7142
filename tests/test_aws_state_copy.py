"""The aws cache copied to the run's state store (issue 18): a cold start (an empty /tmp) after a warm run asks
CloudWatch only for the hours since that run and Cost Explorer only for the restating days, against moto, with
the state in DynamoDB (moto) and in SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

pytest.importorskip("moto")
from moto import mock_aws
from test_aws_provider import EC2_SVC, ce_result, day_list, next_hour, put_cpu, queue_ce, run

from costwatch.providers.aws import AwsProvider, compute, from_config
from costwatch.providers.aws.mirror import PART_BYTES, TABLE
from costwatch.state import DynamoStore, SqliteStore, create_dynamodb_table


@pytest.fixture
def moto(aws_env: None) -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture(params=["dynamodb", "sqlite"])
def store(request: pytest.FixtureRequest, moto: None, tmp_path: Path) -> Any:
    if request.param == "dynamodb":
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_dynamodb_table(client, "costwatch-state")
        return DynamoStore("costwatch-state", client=client)
    return SqliteStore(tmp_path / "state.db")


def provider(cache: Path, now: pd.Timestamp, store: Any) -> AwsProvider:
    return AwsProvider(cache_path=cache, clock=lambda: now, regions=["us-east-1"], guardduty=False,
                       state_store=store)


def asked(p: AwsProvider) -> dict[str, list[tuple[Any, Any]]]:
    """(start, end) of every GetMetricData and GetCostAndUsage request, as the real clients send them."""
    seen: dict[str, list[tuple[Any, Any]]] = {"cw": [], "ce": []}
    p.api.client("cloudwatch", "us-east-1").meta.events.register(
        "provide-client-params.monitoring.GetMetricData",
        lambda params, **_: seen["cw"].append((pd.Timestamp(params["StartTime"]), pd.Timestamp(params["EndTime"]))))
    p.api.client("ce").meta.events.register(
        "provide-client-params.ce.GetCostAndUsage",
        lambda params, **_: seen["ce"].append((params["TimePeriod"]["Start"], params["TimePeriod"]["End"])))
    return seen


def test_a_cold_start_reads_only_what_changed_since_the_last_run(store: Any, tmp_path: Path) -> None:
    iid = run("us-east-1", 1)[0]
    now = next_hour()
    put_cpu("us-east-1", {iid: [(now - pd.Timedelta(hours=h), 30.0 + h % 7) for h in range(1, 72)]})
    days = day_list((now - pd.Timedelta(days=30)).date().isoformat(), 31)
    queue_ce([ce_result(days, {"123456789012": {EC2_SVC: 5.0}}, "SERVICE"),
              ce_result(days, {"123456789012": {"us-east-1": 5.0}}, "REGION")])
    start = now - pd.Timedelta(days=30)
    warm = provider(tmp_path / "warm" / "aws.db", now, store)
    warm_costs = warm.fetch_costs(start, now)
    warm_usage = warm.fetch_usage(start, now)
    assert warm.stats()["state_copy_parts_written"] >= 4  # CPU days, Cost Explorer days, progress, names

    # an hour later, in a new container: /tmp is empty
    later = now + pd.Timedelta(hours=1)
    put_cpu("us-east-1", {iid: [(now, 90.0)]})
    recent = day_list((later - pd.Timedelta(days=3)).date().isoformat(), 4)
    queue_ce([ce_result(recent, {"123456789012": {EC2_SVC: 5.0}}, "SERVICE"),
              ce_result(recent, {"123456789012": {"us-east-1": 5.0}}, "REGION")])
    cold = provider(tmp_path / "cold" / "aws.db", later, store)
    seen = asked(cold)
    costs = cold.fetch_costs(start, later)
    usage = cold.fetch_usage(start, later)
    restating = {(later - pd.Timedelta(days=i)).date().isoformat() for i in range(4)}
    assert seen["ce"] and all(a in restating for a, _ in seen["ce"])  # never the 26 older days
    assert seen["cw"] == [(now - compute.CW_OVERLAP, later)]  # the hours since the warm run, plus the overlap
    assert cold.stats()["state_copy_parts_read"] > 0 and cold.stats()["organizations_requests"] == 0
    assert len(costs) == len(warm_costs) and costs["billed_cost"].sum() == pytest.approx(31 * 5.0)
    assert len(usage) == len(warm_usage) + 1 and usage["cpu_utilization"].iloc[-1] == 90.0
    old = usage[usage["timestamp"] < now - compute.CW_OVERLAP].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, warm_usage[warm_usage["timestamp"] < now - compute.CW_OVERLAP]
                                  .reset_index(drop=True), rtol=1e-6)  # float32 in the copy


def test_the_copy_is_cut_under_the_item_limit_and_replaced_parts_go(store: Any, tmp_path: Path) -> None:
    """A CPU day larger than a DynamoDB item is saved in parts; saving it again deletes the old parts."""
    ids = run("us-east-1", 60)
    now = next_hour().floor("D") + pd.Timedelta(hours=23)
    put_cpu("us-east-1", {i: [(now - pd.Timedelta(hours=h), 10.0 + (h * 7 + k) % 83 + k / 7)
                              for h in range(1, 23)] for k, i in enumerate(ids)})
    p = provider(tmp_path / "a.db", now, store)
    p.fetch_usage(now - pd.Timedelta(days=1), now)
    parts = [r for r in store.scan(TABLE) if "/cpu/" in r.key]
    assert len(parts) >= 1 and all(len(r.doc["b"]) <= PART_BYTES * 4 // 3 + 4 for r in parts)
    again = provider(tmp_path / "a.db", now + pd.Timedelta(hours=1), store)
    again.fetch_usage(now - pd.Timedelta(days=1), now + pd.Timedelta(hours=1))
    keys = {r.key.rsplit("/", 2)[0] for r in store.scan(TABLE) if "/cpu/" in r.key}
    stamps = {r.key.rsplit("/", 2)[1] for r in store.scan(TABLE) if "/cpu/" in r.key}
    assert len(stamps) == len(keys)  # one save's parts per day: the replaced ones were deleted


def test_state_copy_follows_the_state_backend(moto: None, tmp_path: Path) -> None:
    from costwatch.config import AwsProviderConfig, StateConfig

    class Cfg:
        state = StateConfig(path=str(tmp_path / "state.db"))

    assert from_config(AwsProviderConfig(cache_path=str(tmp_path / "c.db")), Cfg()).mirror is None
    on = from_config(AwsProviderConfig(cache_path=str(tmp_path / "c.db"), state_copy=True), Cfg())
    assert on.mirror is not None and isinstance(on.mirror.store, SqliteStore)
    Cfg.state = StateConfig(backend="dynamodb", table="t", region="us-east-1")
    assert isinstance(from_config(AwsProviderConfig(cache_path=str(tmp_path / "c.db")), Cfg()).mirror.store,
                      DynamoStore)
