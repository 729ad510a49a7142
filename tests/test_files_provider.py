"""The files provider: real FOCUS data reads cleanly, and every bad input names its file, line and column.

Error messages are the user interface for bad exports, so the tests pin the location in each message.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costwatch.errors import DataError
from costwatch.model import COST_COLUMNS, USAGE_COLUMNS, validate_costs, validate_usage
from costwatch.providers.files import FilesProvider, load_focus, load_usage

SAMPLE = Path(__file__).parent / "data" / "focus-1.0-sample.csv"

FOCUS_HEADER = ("ChargePeriodStart,ChargePeriodEnd,BilledCost,EffectiveCost,BillingCurrency,ChargeCategory,"
                "ProviderName,SubAccountId,SubAccountName,ServiceCategory,ServiceName,RegionId,ResourceId,Tags")
GOOD_ROW = ('2024-09-01 00:00:00,2024-09-01 01:00:00,1.5,1.2,USD,Usage,AWS,111,prod,Compute,EC2,us-east-1,'
            'i-1,"{""team"": ""a""}"')


def write(path: Path, *rows: str, header: str = FOCUS_HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def error_of(fn: Callable[[Path], object], path: Path) -> str:
    with pytest.raises(DataError) as info:
        fn(path)
    return str(info.value)


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return load_focus(SAMPLE)


# --- the real FOCUS 1.0 sample --------------------------------------------------------------------------

def test_sample_reads_cleanly(sample: pd.DataFrame) -> None:
    assert len(sample) == 1000
    assert list(sample.columns) == list(COST_COLUMNS)
    assert {c: str(t) for c, t in sample.dtypes.items()} == {
        c: ("string" if d == "string" else d) for c, d in COST_COLUMNS.items()}
    validate_costs(sample)
    assert set(sample["provider"]) == {"aws", "azure", "oracle"}
    assert sample["provider"].value_counts().to_dict() == {"aws": 942, "azure": 51, "oracle": 7}
    assert set(sample["currency"]) == {"USD"}
    assert set(sample["charge_category"]) <= {"Usage", "Credit", "Adjustment", "Purchase", "Tax"}
    assert not sample["estimated"].any()


def test_sample_charge_periods(sample: pd.DataFrame) -> None:
    hourly = sample[sample["provider"] != "azure"]
    assert (hourly["period_hours"] == 1.0).all()
    assert (sample.loc[sample["provider"] == "azure", "period_hours"] == 24.0).all()
    assert str(sample["period_start"].dt.tz) == "UTC"
    assert sample["period_start"].min() >= pd.Timestamp("2024-09-01", tz="UTC")


def test_sample_null_and_tags(sample: pd.DataFrame) -> None:
    raw = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    for col in ("region", "resource_id", "service", "project_name", "service_category"):
        assert not sample[col].astype("string").str.upper().eq("NULL").any(), col
    assert all(isinstance(t, dict) for t in sample["tags"])
    no_tags = (raw["Tags"] == "NULL").to_numpy()
    assert no_tags.any() and all(t == {} for t in sample["tags"][no_tags])
    tagged = sample["tags"][~no_tags]
    assert all(t and all(isinstance(k, str) and isinstance(v, str) for k, v in t.items()) for t in tagged)
    # Oracle rows have RegionId NULL: the region falls back to RegionName.
    oracle = sample[sample["provider"] == "oracle"]
    assert oracle["region"].notna().all() and oracle["region"].str.startswith("us-").all()


# --- formats and folders --------------------------------------------------------------------------------

def test_gzip_round_trip(tmp_path: Path, sample: pd.DataFrame) -> None:
    gz = tmp_path / "export.csv.gz"
    with SAMPLE.open("rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    pd.testing.assert_frame_equal(load_focus(gz), sample)


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow not installed")
def test_parquet_round_trip(tmp_path: Path, sample: pd.DataFrame) -> None:
    text = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    text.to_parquet(tmp_path / "text.parquet", index=False)
    pd.testing.assert_frame_equal(load_focus(tmp_path / "text.parquet"), sample)

    # Typed Parquet (real timestamps, floats, nulls) as exports from Azure and AWS data exports look.
    typed = text.replace("NULL", None)
    for c in ("ChargePeriodStart", "ChargePeriodEnd"):
        typed[c] = pd.to_datetime(typed[c])
    for c in ("BilledCost", "EffectiveCost"):
        typed[c] = typed[c].astype(float)
    typed.to_parquet(tmp_path / "typed.parquet", index=False)
    pd.testing.assert_frame_equal(load_focus(tmp_path / "typed.parquet"), sample)

    # Parquet has no lines: the "line" in a message is the 1-based row number.
    typed.loc[4, "BilledCost"] = None
    typed.to_parquet(tmp_path / "hole.parquet", index=False)
    msg = error_of(load_focus, tmp_path / "hole.parquet")
    assert "hole.parquet, line 5, column BilledCost: is empty" in msg


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    msg = error_of(load_focus, tmp_path / "x.parquet")
    assert "x.parquet" in msg and "pip install costwatch[parquet]" in msg


def test_directory_load(tmp_path: Path, sample: pd.DataFrame) -> None:
    raw = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    (tmp_path / "2024-09" / "part").mkdir(parents=True)
    raw.iloc[:400].to_csv(tmp_path / "2024-09" / "a.csv", index=False)
    raw.iloc[400:].to_csv(tmp_path / "2024-09" / "part" / "b.csv.gz", index=False)
    (tmp_path / "README.txt").write_text("not an export")
    (tmp_path / ".hidden.csv").write_text("garbage")
    got = load_focus(tmp_path)
    pd.testing.assert_frame_equal(got, sample)
    assert len(FilesProvider(costs=[tmp_path, SAMPLE]).fetch_costs()) == 2000


def test_case_insensitive_columns_and_values(tmp_path: Path) -> None:
    header = FOCUS_HEADER.lower() + ",X_ESTIMATED"
    rows = [GOOD_ROW.replace("Usage", "usage").replace("Compute", "COMPUTE") + ",TRUE",
            GOOD_ROW.replace("Usage", "CREDIT").replace("AWS", "Google Cloud") + ",null",
            GOOD_ROW.replace("Usage", "Refund").replace("AWS", "\"Some Cloud, Inc.\"") + ","]
    got = load_focus(write(tmp_path / "c.csv", *rows, header=header))
    assert list(got["charge_category"]) == ["Usage", "Credit", "Refund"]
    assert list(got["service_category"]) == ["Compute"] * 3
    assert list(got["provider"]) == ["aws", "gcp", "some-cloud-inc"]
    assert list(got["estimated"]) == [True, False, False]
    assert got["tags"][0] == {"team": "a"}


def test_fallbacks(tmp_path: Path) -> None:
    header = ("ChargePeriodStart,ChargePeriodEnd,BilledCost,BillingCurrency,ProviderName,BillingAccountId,"
              "RegionName,AvailabilityZone")
    got = load_focus(write(tmp_path / "f.csv", "2024-09-01T00:00:00Z,2024-09-02T00:00:00Z,2,usd,Microsoft,b-1,,az-1",
                           "2024-09-01T00:00:00Z,2024-09-02T00:00:00Z,3,usd,Azure,b-1,West US,", header=header))
    assert list(got["project_id"]) == ["b-1", "b-1"] and list(got["project_name"]) == ["b-1", "b-1"]
    assert list(got["effective_cost"]) == [2.0, 3.0]
    assert list(got["region"]) == ["az-1", "West US"]
    assert list(got["currency"]) == ["USD", "USD"] and list(got["provider"]) == ["azure", "azure"]
    assert list(got["period_hours"]) == [24.0, 24.0]
    assert got["charge_category"].isna().all()


# --- errors name file, line and column -------------------------------------------------------------------

@pytest.mark.parametrize(("row", "line", "column", "what"), [
    (GOOD_ROW.replace("2024-09-01 00:00:00", "yesterday", 1), 3, "ChargePeriodStart", "not a timestamp"),
    (GOOD_ROW.replace("1.5", "1,5", 1), None, None, None),  # an extra field: malformed CSV, checked below
    (GOOD_ROW.replace("1.5", "NULL", 1), 3, "BilledCost", "is empty"),
    (GOOD_ROW.replace("1.5", "abc", 1), 3, "BilledCost", "not a number"),
    (GOOD_ROW.replace("1.2", "inf", 1), 3, "EffectiveCost", "not a number"),
    (GOOD_ROW.replace("01:00:00", "00:00:00", 1), 3, "ChargePeriodEnd", "must be after ChargePeriodStart"),
    (GOOD_ROW.replace(",USD,", ",,", 1), 3, "BillingCurrency", "is empty"),
    (GOOD_ROW.replace(",AWS,", ",null,", 1), 3, "ProviderName", "is empty"),
    (GOOD_ROW.replace(",111,", ",NULL,", 1), 3, "SubAccountId", "is empty"),
    (GOOD_ROW.replace('"{""team"": ""a""}"', '"{team: a}"'), 3, "Tags", "JSON"),
    (GOOD_ROW.replace('"{""team"": ""a""}"', '"[1, 2]"'), 3, "Tags", "JSON object"),
])
def test_bad_value_names_file_line_column(tmp_path: Path, row: str, line: int | None, column: str | None,
                                          what: str | None) -> None:
    path = write(tmp_path / "bad.csv", GOOD_ROW, row, GOOD_ROW)
    msg = error_of(load_focus, path)
    assert str(path) in msg
    if line is None:
        assert "CSV" in msg
        return
    assert f"line {line}" in msg and f"column {column}" in msg and str(what) in msg


def test_multiline_field_reports_the_physical_line(tmp_path: Path) -> None:
    multi = GOOD_ROW.replace(",i-1,", ',"i-1\nsecond line",')
    path = write(tmp_path / "m.csv", multi, GOOD_ROW.replace("1.5", "x", 1))
    assert load_focus(write(tmp_path / "ok.csv", multi))["resource_id"][0] == "i-1\nsecond line"
    msg = error_of(load_focus, path)
    # header on line 1, the first record spans lines 2-3, the bad record starts on line 4
    assert "line 4" in msg and "column BilledCost" in msg


def test_bad_estimated_flag(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", GOOD_ROW + ",maybe", header=FOCUS_HEADER + ",x_Estimated")
    msg = error_of(load_focus, path)
    assert str(path) in msg and "line 2" in msg and "column x_Estimated" in msg


def test_missing_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "cur.csv", "1,2", header="lineItem/UsageStartDate,lineItem/UnblendedCost")
    msg = error_of(load_focus, path)
    assert str(path) in msg
    for col in ("ChargePeriodStart", "ChargePeriodEnd", "BilledCost", "BillingCurrency", "ProviderName",
                "SubAccountId"):
        assert col in msg
    # the header is named by what it is, never quoted: the file could be anything a config points at
    assert "FOCUS" in msg and "Cost and Usage Report" in msg and "lineItem/UsageStartDate" not in msg
    only_billed = FOCUS_HEADER.replace("BilledCost,", "")
    msg = error_of(load_focus, write(tmp_path / "nb.csv", "x", header=only_billed))
    assert "missing FOCUS column(s) BilledCost." in msg


def test_empty_and_broken_files(tmp_path: Path) -> None:
    (tmp_path / "zero.csv").write_bytes(b"")
    assert "empty" in error_of(load_focus, tmp_path / "zero.csv")
    header_only = write(tmp_path / "header.csv")
    assert "no data rows" in error_of(load_focus, header_only)
    (tmp_path / "bad.csv.gz").write_bytes(b"this is not gzip")
    assert "bad.csv.gz" in error_of(load_focus, tmp_path / "bad.csv.gz")
    whole = gzip.compress(SAMPLE.read_bytes())
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    assert "cut.csv.gz" in error_of(load_focus, tmp_path / "cut.csv.gz")
    unclosed = write(tmp_path / "quote.csv", GOOD_ROW, '2024-09-01,"oops')
    assert "quote.csv" in error_of(load_focus, unclosed)
    (tmp_path / "bin.csv").write_bytes(gzip.compress(b"a,b\n1,2\n"))
    assert "bin.csv" in error_of(load_focus, tmp_path / "bin.csv")
    assert "no such file" in error_of(load_focus, tmp_path / "absent.csv")
    (tmp_path / "empty-dir").mkdir()
    assert "empty-dir" in error_of(load_focus, tmp_path / "empty-dir")
    if importlib.util.find_spec("pyarrow") is not None:
        (tmp_path / "bad.parquet").write_bytes(b"not parquet")
        assert "bad.parquet" in error_of(load_focus, tmp_path / "bad.parquet")


# --- usage ---------------------------------------------------------------------------------------------

USAGE_HEADER = "timestamp,provider,project,node,cpu_utilization"


def test_usage_reads_and_normalizes(tmp_path: Path) -> None:
    path = write(tmp_path / "u.csv", "2024-09-01T00:00:00Z,AWS,111,n1,12.5,c1,us-east-1,m5.large",
                 "2024-09-01 01:00:00,Microsoft,222,n2,100,NULL,,", header=USAGE_HEADER.upper() + ",Cluster,Region,"
                 "Instance_Type")
    got = load_usage(path)
    validate_usage(got)
    assert list(got.columns) == list(USAGE_COLUMNS)
    assert list(got["provider"]) == ["aws", "azure"]
    assert list(got["cpu_utilization"]) == [12.5, 100.0]
    assert got["cluster"].isna().tolist() == [False, True]
    minimal = load_usage(write(tmp_path / "m.csv", "2024-09-01T00:00:00Z,gcp,p,n,0", header=USAGE_HEADER))
    assert minimal["instance_type"].isna().all()
    assert len(FilesProvider(usage=[path, path]).fetch_usage()) == 4


@pytest.mark.parametrize(("row", "line", "column", "what"), [
    ("2024-09-01T00:00:00Z,aws,p,n,101", 3, "cpu_utilization", "between 0 and 100"),
    ("2024-09-01T00:00:00Z,aws,p,n,-1", 3, "cpu_utilization", "between 0 and 100"),
    ("2024-09-01T00:00:00Z,aws,p,n,high", 3, "cpu_utilization", "not a number"),
    ("2024-13-01T00:00:00Z,aws,p,n,5", 3, "timestamp", "not a timestamp"),
    (",aws,p,n,5", 3, "timestamp", "is empty"),
    ("2024-09-01T00:00:00Z,aws,p,,5", 3, "node", "is empty"),
])
def test_usage_bad_values(tmp_path: Path, row: str, line: int, column: str, what: str) -> None:
    path = write(tmp_path / "u.csv", "2024-09-01T00:00:00Z,aws,p,n,5", row, header=USAGE_HEADER)
    msg = error_of(load_usage, path)
    assert str(path) in msg and f"line {line}" in msg and f"column {column}" in msg and what in msg


def test_usage_missing_columns_and_empty(tmp_path: Path) -> None:
    msg = error_of(load_usage, write(tmp_path / "u.csv", "2024-09-01,n,5", header="timestamp,node,cpu"))
    assert "u.csv" in msg and "provider, project, cpu_utilization" in msg
    assert "no data rows" in error_of(load_usage, write(tmp_path / "h.csv", header=USAGE_HEADER))
    (tmp_path / "z.csv.gz").write_bytes(gzip.compress(b""))
    assert "z.csv.gz" in error_of(load_usage, tmp_path / "z.csv.gz")


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12).filter(
    lambda s: s not in {"null", "none", "nan"})
_rows = st.lists(st.fixed_dictionaries({
    "timestamp": st.datetimes(min_value=pd.Timestamp("2000-01-01").to_pydatetime(),
                              max_value=pd.Timestamp("2099-12-31").to_pydatetime()),
    "provider": st.sampled_from(["aws", "gcp", "azure", "oracle"]),
    "project": _names,
    "node": _names,
    "cpu_utilization": st.floats(min_value=0, max_value=100, allow_nan=False),
    "cluster": st.none() | _names,
    "region": st.none() | _names,
    "instance_type": st.none() | _names,
    "project_name": st.none() | _names,
    "instance_id": st.none() | _names,
}), min_size=1, max_size=20)


@settings(max_examples=15, deadline=None)
@given(rows=_rows, gz=st.booleans())
def test_usage_round_trip(rows: list[dict[str, object]], gz: bool) -> None:
    frame = pd.DataFrame(rows)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"]).dt.floor("us").dt.tz_localize("UTC")
    expected = frame.astype({c: d for c, d in USAGE_COLUMNS.items() if d == "string"})
    expected = expected.astype({"timestamp": "datetime64[ns, UTC]"})[list(USAGE_COLUMNS)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("u.csv.gz" if gz else "u.csv")
        out = frame.assign(timestamp=frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        out.to_csv(path, index=False)
        got = load_usage(path)
    pd.testing.assert_frame_equal(got, expected)


def test_files_provider_without_paths() -> None:
    prov = FilesProvider(None, None)
    assert prov.name == "files"
    assert list(prov.fetch_costs().columns) == list(COST_COLUMNS) and prov.fetch_costs().empty
    assert list(prov.fetch_usage().columns) == list(USAGE_COLUMNS) and prov.fetch_usage().empty
    assert FilesProvider(costs=str(SAMPLE)).cost_paths == [SAMPLE]
