"""The DuckDB FOCUS path: the same daily totals as the pandas loader, the same errors, the same alerts.

Every comparison is against the pandas loader on the same file, because that loader is the reference the
DuckDB path must not drift from: same sums per day and series, currencies never added together, credits
kept, enum spellings unified, and a bad row reported at the same file, line and column.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("duckdb")

from costwatch.alerts import Alert
from costwatch.config import parse_config
from costwatch.demo import demo_config, to_focus
from costwatch.detect import detect
from costwatch.errors import ConfigError, DataError
from costwatch.model import COST_COLUMNS, validate_costs
from costwatch.providers.files import FilesProvider, duckdb_focus, load_focus
from costwatch.providers.files.duckdb_focus import choose_engine, load_focus_daily, text_bytes
from costwatch.scenarios import demo_scenario
from costwatch.sources import build

SAMPLE = Path(__file__).parent / "data" / "focus-1.0-sample.csv"
SHARED = Path("/work/shared/data/focus/focus-1.0-sample.csv")
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None

FOCUS_HEADER = ("ChargePeriodStart,ChargePeriodEnd,BilledCost,EffectiveCost,BillingCurrency,ChargeCategory,"
                "ProviderName,SubAccountId,SubAccountName,ServiceCategory,ServiceName,RegionId,ResourceId,Tags")
GOOD_ROW = ('2024-09-01 00:00:00,2024-09-01 01:00:00,1.5,1.2,USD,Usage,AWS,111,prod,Compute,EC2,us-east-1,'
            'i-1,"{""team"": ""a""}"')
SERIES = ["provider", "project_id", "service", "service_category", "region", "charge_category", "currency"]


def write(path: Path, *rows: str, header: str = FOCUS_HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def daily(costs: pd.DataFrame) -> pd.DataFrame:
    """Billed and effective cost per UTC day and series: what detection reads from either loader."""
    day = costs["period_start"].dt.floor("D").rename("day")
    keys = [day, *(costs[k].astype("string").fillna("<NA>") for k in SERIES)]
    return costs.groupby(keys)[["billed_cost", "effective_cost"]].sum().sort_index()


def assert_same_daily(duck: pd.DataFrame, reference: pd.DataFrame) -> None:
    a, b = daily(duck), daily(reference)
    assert a.index.equals(b.index)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-9, atol=1e-12)


def error_of(fn: object, path: Path) -> str:
    with pytest.raises(DataError) as info:
        fn(path)  # type: ignore[operator]
    return str(info.value)


@pytest.fixture(scope="module")
def sample_duck() -> pd.DataFrame:
    return load_focus_daily(SAMPLE, owner_tags=["business_unit", "owner"])


# --- the real FOCUS 1.0 sample ----------------------------------------------------------------------------

def test_sample_matches_the_pandas_loader(sample_duck: pd.DataFrame) -> None:
    reference = load_focus(SAMPLE)
    assert list(sample_duck.columns) == list(COST_COLUMNS)
    assert sample_duck.dtypes.to_dict() == reference.dtypes.to_dict()
    validate_costs(sample_duck)
    assert_same_daily(sample_duck, reference)
    # 1,000 hourly rows over 30 days reduce to fewer daily rows, each a whole UTC day
    assert len(sample_duck) < len(reference)
    assert (sample_duck["period_hours"] == 24.0).all()
    assert (sample_duck["period_start"] == sample_duck["period_start"].dt.floor("D")).all()
    assert set(sample_duck["provider"]) == {"aws", "azure", "oracle"}
    # the single AWS credit survives as a negative Credit row
    credit = sample_duck[sample_duck["charge_category"] == "Credit"]
    ref_credit = reference[reference["charge_category"] == "Credit"]
    assert len(credit) == 1 and credit["billed_cost"].sum() == pytest.approx(ref_credit["billed_cost"].sum())
    assert credit["billed_cost"].sum() < 0


@pytest.mark.skipif(not SHARED.exists(), reason="shared data folder not mounted")
def test_shared_copy_matches_too() -> None:
    assert_same_daily(load_focus_daily(SHARED), load_focus(SHARED))


def test_owner_tags_and_resources(sample_duck: pd.DataFrame) -> None:
    """Only owner tags are kept; the most frequent owner per project matches the pandas loader's tags."""
    reference = load_focus(SAMPLE)
    assert all(set(t) <= {"business_unit", "owner"} for t in sample_duck["tags"])
    ref_units = {str(t.get("business_unit")) for t in reference["tags"] if t.get("business_unit")}
    got_units = {t["business_unit"] for t in sample_duck["tags"] if "business_unit" in t}
    assert got_units == ref_units and got_units
    # resource ids are kept on Compute rows only
    has_resource = sample_duck["resource_id"].notna()
    assert has_resource.any()
    assert (sample_duck.loc[has_resource, "service_category"] == "Compute").all()
    ref_compute = reference.loc[reference["service_category"] == "Compute", "resource_id"].dropna()
    assert set(sample_duck["resource_id"].dropna()) == set(ref_compute)
    everything = load_focus_daily(SAMPLE, resources="all", owner_tags=[])
    assert set(everything["resource_id"].dropna()) == set(reference["resource_id"].dropna())
    assert all(t == {} for t in everything["tags"])
    assert_same_daily(everything, reference)
    # one thread and a small memory cap change how DuckDB works, not what it returns
    nothing = load_focus_daily(SAMPLE, resources="none", owner_tags=[], memory_limit="64MB", threads=1)
    assert nothing["resource_id"].isna().all() and len(nothing) < len(sample_duck)
    assert_same_daily(nothing, reference)


def test_gzip_and_parquet_give_the_same_frame(tmp_path: Path, sample_duck: pd.DataFrame) -> None:
    gz = tmp_path / "export.csv.gz"
    with SAMPLE.open("rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    pd.testing.assert_frame_equal(load_focus_daily(gz, owner_tags=["business_unit", "owner"]), sample_duck)
    if not HAS_PYARROW:
        pytest.skip("pyarrow not installed")
    text = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    text.to_parquet(tmp_path / "text.parquet", index=False)
    pd.testing.assert_frame_equal(load_focus_daily(tmp_path / "text.parquet", owner_tags=["business_unit", "owner"]),
                                  sample_duck)
    # typed Parquet as AWS Data Exports write it: timestamps, doubles, nulls, Tags as a MAP
    typed = text.replace("NULL", None)
    for c in ("ChargePeriodStart", "ChargePeriodEnd"):
        typed[c] = pd.to_datetime(typed[c])
    for c in ("BilledCost", "EffectiveCost"):
        typed[c] = typed[c].astype(float)
    import pyarrow as pa

    tags = [list(json.loads(t).items()) if t else None for t in typed["Tags"]]
    table = pa.Table.from_pandas(typed.drop(columns=["Tags"]), preserve_index=False)
    table = table.append_column("Tags", pa.array(tags, type=pa.map_(pa.string(), pa.string())))
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "typed.parquet")
    typed_duck = load_focus_daily(tmp_path / "typed.parquet", owner_tags=["business_unit", "owner"])
    pd.testing.assert_frame_equal(typed_duck, sample_duck)


def test_folder_of_files_sums_across_files(tmp_path: Path, sample_duck: pd.DataFrame) -> None:
    raw = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    (tmp_path / "BILLING_PERIOD=2024-09" / "part").mkdir(parents=True)
    raw.iloc[:400].to_csv(tmp_path / "BILLING_PERIOD=2024-09" / "a.csv", index=False)
    raw.iloc[400:].to_csv(tmp_path / "BILLING_PERIOD=2024-09" / "part" / "b.csv.gz", index=False)
    (tmp_path / ".hidden.csv").write_text("garbage")
    got = load_focus_daily(tmp_path, owner_tags=["business_unit", "owner"])
    # rows of one series and day split over the two files come back as one row
    pd.testing.assert_frame_equal(got, sample_duck)


# --- semantics on small hand-made files ---------------------------------------------------------------------

def test_currencies_are_never_added_together(tmp_path: Path) -> None:
    rows = [GOOD_ROW, GOOD_ROW.replace(",USD,", ",EUR,"), GOOD_ROW.replace(",USD,", ",usd,")]
    got = load_focus_daily(write(tmp_path / "fx.csv", *rows))
    assert sorted(zip(got["currency"], got["billed_cost"], strict=True)) == [("EUR", 1.5), ("USD", 3.0)]


def test_hours_roll_up_to_utc_days(tmp_path: Path) -> None:
    header = "ChargePeriodStart,ChargePeriodEnd,BilledCost,BillingCurrency,ProviderName,SubAccountId,ChargeCategory"
    rows = [f"2024-09-01T{h:02d}:00:00Z,2024-09-01T{h:02d}:59:59Z,1,USD,AWS,111,Usage" for h in range(24)]
    # 01:00 at +02:00 is 23:00 UTC the day before; a credit the same day keeps its own category
    rows += ["2024-09-02T01:00:00+02:00,2024-09-02T02:00:00+02:00,5,USD,AWS,111,usage",
             "2024-09-01T00:00:00Z,2024-09-02T00:00:00Z,-2,USD,AWS,111,CREDIT"]
    path = write(tmp_path / "h.csv", *rows, header=header)
    got = load_focus_daily(path)
    assert list(zip(got["period_start"].dt.strftime("%Y-%m-%d"), got["charge_category"], got["billed_cost"],
                    strict=True)) == [("2024-09-01", "Credit", -2.0), ("2024-09-01", "Usage", 29.0)]
    assert list(got["effective_cost"]) == [-2.0, 29.0]  # no EffectiveCost column: billed cost
    assert_same_daily(got, load_focus(path))


def test_spellings_are_unified_as_the_pandas_loader_does(tmp_path: Path) -> None:
    header = FOCUS_HEADER.lower() + ",X_ESTIMATED"
    rows = [GOOD_ROW + ",false",
            GOOD_ROW.replace("Usage", "usage").replace("Compute", "COMPUTE") + ",TRUE",
            GOOD_ROW.replace("Usage", "CREDIT").replace("AWS", "Google Cloud") + ",null",
            GOOD_ROW.replace("Usage", "Refund").replace("AWS", "\"Some Cloud, Inc.\"") + ","]
    path = write(tmp_path / "c.csv", *rows, header=header)
    got = load_focus_daily(path)
    assert sorted(zip(got["provider"], got["charge_category"], got["billed_cost"], got["estimated"], strict=True)) == [
        ("aws", "Usage", 3.0, True), ("gcp", "Credit", 1.5, False), ("some-cloud-inc", "Refund", 1.5, False)]
    assert set(got["service_category"]) == {"Compute"}
    assert list(got["tags"]) == [{"team": "a"}] * 3
    assert_same_daily(got, load_focus(path))


def test_fallback_columns(tmp_path: Path) -> None:
    header = ("ChargePeriodStart,ChargePeriodEnd,BilledCost,EffectiveCost,BillingCurrency,ProviderName,SubAccountId,"
              "BillingAccountId,RegionName,AvailabilityZone")
    path = write(tmp_path / "f.csv", "2024-09-01T00:00:00Z,2024-09-02T00:00:00Z,2,NULL,usd,Microsoft,,b-1,,az-1",
                 "2024-09-01T00:00:00Z,2024-09-02T00:00:00Z,3,n/a,usd,Azure,,b-1,West US,", header=header)
    got = load_focus_daily(path)
    assert sorted(zip(got["project_id"], got["project_name"], got["region"], got["effective_cost"], strict=True)) == [
        ("b-1", "b-1", "West US", 3.0), ("b-1", "b-1", "az-1", 2.0)]
    assert set(got["provider"]) == {"azure"} and set(got["currency"]) == {"USD"}
    assert got["charge_category"].isna().all() and got["service"].isna().all()
    assert_same_daily(got, load_focus(path))


def test_negative_usage_stays_apart_from_positive(tmp_path: Path) -> None:
    """Detection ignores negative usage rows (``baseline.usage_rows``); summing them into the positive rows
    would lower the spend it compares, so the two stay separate rows."""
    path = write(tmp_path / "n.csv", GOOD_ROW, GOOD_ROW.replace("1.5,1.2", "-0.5,-0.5"))
    got = load_focus_daily(path)
    assert sorted(got["effective_cost"]) == [-0.5, 1.2]


# --- errors: the same file, line and column as the pandas loader --------------------------------------------

@pytest.mark.parametrize("row", [
    GOOD_ROW.replace("2024-09-01 00:00:00", "yesterday", 1),
    GOOD_ROW.replace("2024-09-01 01:00:00", "NULL", 1),
    GOOD_ROW.replace("1.5", "NULL", 1),
    GOOD_ROW.replace("1.5", "abc", 1),
    GOOD_ROW.replace("1.2", "inf", 1),
    GOOD_ROW.replace("01:00:00", "00:00:00", 1),
    GOOD_ROW.replace(",USD,", ",,", 1),
    GOOD_ROW.replace(",AWS,", ",null,", 1),
    GOOD_ROW.replace(",111,", ",NULL,", 1),
    GOOD_ROW.replace('"{""team"": ""a""}"', '"{team: a}"'),
    GOOD_ROW.replace('"{""team"": ""a""}"', '"[1, 2]"'),
])
def test_bad_value_is_reported_where_pandas_reports_it(tmp_path: Path, row: str) -> None:
    path = write(tmp_path / "bad.csv", GOOD_ROW, GOOD_ROW, row, GOOD_ROW)
    expected = error_of(load_focus, path)
    got = error_of(load_focus_daily, path)
    where = expected.split(": ")[0]  # "<file>, line 4, column X"
    assert got.startswith(where + ": ")
    what = expected.removeprefix(where + ": ")
    assert got.startswith(f"{where}: {what.split(' (')[0].split(':')[0]}")


def test_the_first_failing_check_wins_over_an_earlier_line(tmp_path: Path) -> None:
    """pandas checks column by column; a bad start on line 5 is reported before a bad cost on line 3."""
    path = write(tmp_path / "order.csv", GOOD_ROW, GOOD_ROW.replace("1.5", "x", 1),
                 GOOD_ROW, GOOD_ROW.replace("2024-09-01 00:00:00", "never", 1))
    assert error_of(load_focus_daily, path).startswith(f"{path}, line 5, column ChargePeriodStart: is not a timestamp")
    assert error_of(load_focus, path).startswith(f"{path}, line 5, column ChargePeriodStart")


def test_multiline_field_reports_the_physical_line(tmp_path: Path) -> None:
    multi = GOOD_ROW.replace(",i-1,", ',"i-1\nsecond line",')
    path = write(tmp_path / "m.csv", multi, GOOD_ROW.replace("1.5", "x", 1))
    msg = error_of(load_focus_daily, path)
    assert msg == error_of(load_focus, path) == f"{path}, line 4, column BilledCost: is not a number: 'x'"


def test_estimated_flag_and_parquet_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", GOOD_ROW + ",true", GOOD_ROW + ",maybe", header=FOCUS_HEADER + ",x_Estimated")
    assert error_of(load_focus_daily, path) == f"{path}, line 3, column x_Estimated: is not true/false: 'maybe'"
    if not HAS_PYARROW:
        return
    typed = pd.read_csv(write(tmp_path / "t.csv", *[GOOD_ROW] * 6), dtype=str, keep_default_na=False)
    typed["BilledCost"] = typed["BilledCost"].astype(float)
    typed.loc[4, "BilledCost"] = None
    typed.to_parquet(tmp_path / "hole.parquet", index=False)
    # Parquet has no lines: the "line" is the 1-based row number, as in the pandas loader
    assert error_of(load_focus_daily, tmp_path / "hole.parquet") == error_of(load_focus, tmp_path / "hole.parquet") \
        == f"{tmp_path / 'hole.parquet'}, line 5, column BilledCost: is empty"
    typed.loc[4, "BilledCost"] = float("inf")
    typed.to_parquet(tmp_path / "inf.parquet", index=False)
    assert error_of(load_focus_daily, tmp_path / "inf.parquet") == error_of(load_focus, tmp_path / "inf.parquet")


def test_unreadable_inputs(tmp_path: Path) -> None:
    extra = write(tmp_path / "extra.csv", GOOD_ROW, GOOD_ROW.replace("1.5", "1,5", 1))
    msg = error_of(load_focus_daily, extra)
    assert msg.startswith(f"{extra}, line 3: has 15 fields but the header has 14")
    (tmp_path / "zero.csv").write_bytes(b"")
    assert "file is empty" in error_of(load_focus_daily, tmp_path / "zero.csv")
    assert "no data rows" in error_of(load_focus_daily, write(tmp_path / "header.csv"))
    (tmp_path / "bad.csv.gz").write_bytes(b"this is not gzip")
    assert "bad.csv.gz: corrupt or truncated gzip" in error_of(load_focus_daily, tmp_path / "bad.csv.gz")
    whole = gzip.compress(SAMPLE.read_bytes())
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    assert "cut.csv.gz" in error_of(load_focus_daily, tmp_path / "cut.csv.gz")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00a,b\n")
    assert "bin.csv: not UTF-8" in error_of(load_focus_daily, tmp_path / "bin.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    assert "bad.parquet: not a readable Parquet file" in error_of(load_focus_daily, tmp_path / "bad.parquet")
    assert "no such file" in error_of(load_focus_daily, tmp_path / "absent.csv")
    cur = write(tmp_path / "cur.csv", "1,2", header="lineItem/UsageStartDate,lineItem/UnblendedCost")
    assert error_of(load_focus_daily, cur) == error_of(load_focus, cur)


# --- choosing the engine -------------------------------------------------------------------------------------

def test_auto_engine_threshold_counts_compressed_bytes(tmp_path: Path) -> None:
    size = SAMPLE.stat().st_size
    assert text_bytes(SAMPLE) == size
    assert choose_engine(SAMPLE, "auto", threshold=size) == "duckdb"
    assert choose_engine(SAMPLE, "auto", threshold=size + 1) == "pandas"
    assert choose_engine(SAMPLE, "pandas", threshold=0) == "pandas"
    assert choose_engine(SAMPLE, "duckdb", threshold=10**12) == "duckdb"
    gz = tmp_path / "x.csv.gz"
    gz.write_bytes(gzip.compress(SAMPLE.read_bytes()))
    assert text_bytes(gz) == gz.stat().st_size * duckdb_focus.EXPANSION[".gz"]
    assert choose_engine(SAMPLE, "auto") == "pandas"  # the real threshold: a small file stays with pandas


def test_engine_duckdb_without_duckdb_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "duckdb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'costwatch\[duckdb\]'"):
        FilesProvider(costs=SAMPLE, engine="duckdb")
    assert choose_engine(SAMPLE, "auto", threshold=0) == "pandas"  # auto falls back quietly


def test_files_provider_from_config_uses_duckdb_and_owner_tags(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / "focus.csv")
    cfg = parse_config("providers:\n  - type: files\n    costs: focus.csv\n    engine: duckdb\n"
                       "alerting:\n  owner_tags: [business_unit]\n", base_dir=tmp_path)
    provider = build(cfg.providers[0], cfg)
    got = provider.fetch_costs(pd.Timestamp("2024-09-01", tz="UTC"), pd.Timestamp("2024-10-01", tz="UTC"))
    assert len(got) < 1000 and any(t.get("business_unit") for t in got["tags"])
    assert_same_daily(got, load_focus(SAMPLE))
    pandas_cfg = parse_config("providers:\n  - type: files\n    costs: focus.csv\n    engine: pandas\n",
                              base_dir=tmp_path)
    assert len(build(pandas_cfg.providers[0], pandas_cfg).fetch_costs(
        pd.Timestamp("2024-09-01", tz="UTC"), pd.Timestamp("2024-10-01", tz="UTC"))) == 1000
    with pytest.raises(ConfigError, match="engine"):
        parse_config("providers:\n  - type: files\n    costs: focus.csv\n    engine: spark\n", base_dir=tmp_path)


# --- end to end: the same alerts from hourly rows ------------------------------------------------------------

def test_detection_gives_the_same_alerts_from_either_loader(tmp_path: Path) -> None:
    """The demo's incidents, written as an hourly FOCUS export, found identically from both loaders."""
    sc = demo_scenario()
    focus = to_focus(sc.costs)
    start = pd.to_datetime(focus["ChargePeriodStart"])
    hourly = focus.loc[focus.index.repeat(24)].reset_index(drop=True)
    offset = pd.to_timedelta(np.tile(np.arange(24), len(focus)), unit="h")
    first = start.loc[start.index.repeat(24)].reset_index(drop=True) + offset
    hourly["ChargePeriodStart"] = first.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    hourly["ChargePeriodEnd"] = (first + pd.Timedelta(hours=1)).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    for c in ("BilledCost", "EffectiveCost"):
        hourly[c] = hourly[c] / 24.0
    path = tmp_path / "hourly.csv"
    hourly.to_csv(path, index=False)
    reference, duck = load_focus(path), load_focus_daily(path)
    assert len(duck) * 20 < len(reference)
    assert_same_daily(duck, reference)
    cfg = demo_config(sc)
    since = pd.Timedelta(days=14)
    a = detect(reference, sc.usage, cfg, as_of=sc.end, since=since).alerts
    b = detect(duck, sc.usage, cfg, as_of=sc.end, since=since).alerts

    def key(alerts: list[Alert]) -> list[tuple[object, ...]]:
        # 7 significant digits: sums in another order differ in the last bits, and a fitted forecast
        # (budgets' ETS) carries that a little further than a sum does
        return sorted((x.kind, x.project, x.start, x.severity, x.service, x.region, f"{x.observed:.7g}",
                       f"{x.expected:.7g}") for x in alerts)

    assert key(a) == key(b)
    assert {x.kind for x in a} >= {"mining_suspected", "cost_spike"}
