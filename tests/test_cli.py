"""The CLI end to end: generated FOCUS exports in, reports out, and every user mistake a located exit-2 message.

Everything goes through the real command line (``click.testing.CliRunner`` on ``costwatch.cli.cli``, and the
installed ``costwatch`` console script in a subprocess for what a user sees on a terminal).  The generated data
set and the slow runs (full report, demo) are shared through module-scoped fixtures.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from costwatch.cli import cli
from costwatch.demo import to_focus
from costwatch.scenarios import Scenario, generate

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "focus-1.0-sample.csv"
EXAMPLE_CONFIG = ROOT / "config" / "costwatch.example.yaml"
SCRIPT = Path(sys.executable).parent / ("costwatch.exe" if os.name == "nt" else "costwatch")

SEED = 1
KINDS = ("mining_new_nodes", "mining_stealth", "benign_surge")
BENIGN_KINDS = ("benign_surge", "planned_step")
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
LOOKS_LIKE_TIME = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:")
TOP_KEYS = {"generated_at", "as_of", "projects", "alerts"}
ALERT_KEYS = {"kind", "project", "project_name", "provider", "service", "region", "start", "detected_at",
              "severity", "observed", "expected", "lower", "upper", "currency", "score", "evidence", "fingerprint"}
ALERT_KINDS = {"mining_suspected", "cost_spike", "threshold_exceeded", "budget_forecast_exceeded"}
SEVERITIES = {"critical", "high", "warning", "info"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
UNSET_VAR = "COSTWATCH_TEST_SURELY_UNSET_VAR"


# ------------------------------------------------------------------------------------------------- helpers


def invoke(args: list[str], env: Mapping[str, str | None] | None = None) -> Result:
    """Run the click CLI in-process; unexpected exceptions propagate so a failing test shows them."""
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def iso(ts: pd.Timestamp) -> str:
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def ts(value: str) -> pd.Timestamp:
    return pd.Timestamp(value)


def time_strings(obj: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string anywhere in a JSON document that looks like a date-time, with its path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from time_strings(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for v in obj:
            yield from time_strings(v, f"{path}[]")
    elif isinstance(obj, str) and LOOKS_LIKE_TIME.match(obj):
        yield path, obj


def alert_key(a: dict[str, Any]) -> tuple[str, str, str, str, str]:
    return a["kind"], a["project"], a["fingerprint"], a["start"], a["detected_at"]


def assert_one_error(r: Result, *needles: str) -> str:
    """Exit 2, nothing on stdout, exactly one ``costwatch: error:`` message naming every needle, no traceback."""
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stdout == ""
    err = r.stderr
    assert "Traceback" not in err
    assert err.count("costwatch: error:") == 1, err
    assert err.startswith("costwatch: error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


def md_cells(line: str) -> int:
    """Number of cells of a Markdown table row: pipes that are not escaped, minus one."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


# ------------------------------------------------------------------------------------------------ fixtures


@dataclass(frozen=True)
class Data:
    sc: Scenario
    dir: Path
    costs: Path
    costs_gz: Path
    usage: Path

    @property
    def end(self) -> str:
        return iso(self.sc.end)

    def inputs(self, costs: Path | None = None) -> list[str]:
        return ["--costs", str(costs or self.costs), "--usage", str(self.usage)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    sc = generate(seed=SEED, n_projects=12, days=56, incident_kinds=KINDS)
    kinds = set(sc.incidents["kind"])
    assert {"mining_new_nodes", "mining_stealth", "benign_surge"} <= kinds, kinds
    d = tmp_path_factory.mktemp("cli-data")
    focus = to_focus(sc.costs)
    costs, costs_gz, usage = d / "costs.focus.csv", d / "costs.focus.csv.gz", d / "usage.csv"
    focus.to_csv(costs, index=False)
    focus.to_csv(costs_gz, index=False, compression="gzip")
    u = sc.usage.copy()
    u["timestamp"] = u["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    u.to_csv(usage, index=False)
    return Data(sc, d, costs, costs_gz, usage)


@pytest.fixture(scope="module")
def run_json(data: Data) -> Callable[..., dict[str, Any]]:
    """``report --format json`` on the generated data with extra args; each distinct call runs once."""
    cache: dict[tuple[str, ...], dict[str, Any]] = {}

    def run(*extra: str) -> dict[str, Any]:
        if extra not in cache:
            r = invoke(["report", *data.inputs(), "--format", "json", *extra])
            assert r.exit_code == 0, r.output
            assert r.stderr == ""
            cache[extra] = json.loads(r.stdout)
        return cache[extra]

    return run


@pytest.fixture(scope="module")
def full(data: Data, run_json: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return run_json("--as-of", data.end)


@pytest.fixture(scope="module")
def bad(data: Data) -> Path:
    """Small broken inputs cut from the generated files, each broken at a known line."""
    d = data.dir / "bad"
    d.mkdir()
    with data.usage.open(newline="") as f:
        usage = list(csv.reader(f))[:12]
    with data.costs.open(newline="") as f:
        costs = list(csv.reader(f))[:12]
    uh, ch = usage[0], costs[0]

    def write(name: str, rows: list[list[str]]) -> None:
        with (d / name).open("w", newline="") as f:
            csv.writer(f).writerows(rows)

    def edited(rows: list[list[str]], line: int, col: int, value: str) -> list[list[str]]:
        out = [list(r) for r in rows]
        out[line - 1][col] = value  # file line N is list index N-1 (line 1 is the header)
        return out

    write("usage_bad_time.csv", edited(usage, 5, uh.index("timestamp"), "2026-11-31T25:00:00Z"))
    write("usage_bad_cpu.csv", edited(usage, 7, uh.index("cpu_utilization"), "140.5"))
    write("usage_no_cpu.csv", [[v for i, v in enumerate(r) if i != uh.index("cpu_utilization")] for r in usage])
    write("costs_bad_time.csv", edited(costs, 4, ch.index("ChargePeriodStart"), "last tuesday"))
    write("costs_no_billed.csv", [[v for i, v in enumerate(r) if i != ch.index("BilledCost")] for r in costs])
    pd.DataFrame(edited(usage, 9, uh.index("cpu_utilization"), "101")[1:], columns=uh).to_csv(
        d / "usage_bad_cpu.csv.gz", index=False, compression="gzip")
    # a blank line before the bad row: the row is still on line 8 of the file
    lines = (d / "usage_bad_cpu.csv").read_text().splitlines()
    (d / "usage_blank_line.csv").write_text("\n".join([*lines[:3], "", *lines[3:]]) + "\n")
    (d / "unknown_key.yaml").write_text("detection:\n  sensitivity: 1.0\n  sensitivty: 2.0\n")
    (d / "unknown_provider_key.yaml").write_text(
        "providers:\n  - type: files\n    costs: costs.csv\n    usgae: usage.csv\n")
    (d / "missing_var.yaml").write_text(
        f"notify:\n  slack:\n    token: ${{{UNSET_VAR}}}\n    channel: '#alerts'\n")
    (d / "secret_var.yaml").write_text("notify:\n  slack:\n    webhook_url: ${COSTWATCH_TEST_HOOK}\n")
    return d


# --------------------------------------------------------------------------------------------- JSON report


def test_json_report_has_the_documented_shape(full: dict[str, Any], data: Data) -> None:
    assert set(full) >= TOP_KEYS
    assert full["as_of"] == data.end
    assert ISO_Z.fullmatch(full["generated_at"])
    assert full["alerts"], "the generated incidents should raise alerts"
    for a in full["alerts"]:
        assert set(a) >= ALERT_KEYS, ALERT_KEYS - set(a)
        assert a["kind"] in ALERT_KINDS
        assert a["severity"] in SEVERITIES
        assert re.fullmatch(r"[0-9a-f]{16}", a["fingerprint"])
        assert re.fullmatch(r"[A-Z]{3}", a["currency"])
        assert isinstance(a["evidence"], dict)
        assert isinstance(a["observed"], float | int) and isinstance(a["score"], float | int)
        assert ts(a["start"]) <= ts(a["detected_at"]) <= ts(full["as_of"]), a
    # every time anywhere in the document (alerts, evidence, projects) is ISO 8601 UTC with a Z
    times = list(time_strings(full))
    assert {p for p, _ in times} >= {".generated_at", ".as_of", ".alerts[].start", ".alerts[].detected_at"}
    bad = [(p, v) for p, v in times if not ISO_Z.fullmatch(v)]
    assert not bad, bad[:5]
    # one entry per project of the scenario, named as in the export
    names = dict(zip(data.sc.projects["project_id"], data.sc.projects["project_name"], strict=True))
    assert {p["project"] for p in full["projects"]} == set(names)
    for p in full["projects"]:
        assert p["project_name"] == names[p["project"]]


def test_mining_incidents_are_found_on_the_right_project(full: dict[str, Any], data: Data) -> None:
    labels = data.sc.incidents
    mining = labels[labels["kind"].str.startswith("mining_")]
    assert len(mining) >= 2
    alerts = [a for a in full["alerts"] if a["kind"] == "mining_suspected"]
    names = dict(zip(data.sc.projects["project_id"], data.sc.projects["project_name"], strict=True))
    for inc in mining.itertuples():
        hits = [a for a in alerts if a["project"] == inc.project_id and a["provider"] == inc.provider]
        assert hits, f"{inc.kind} on {inc.project_id} from {inc.start} not reported as mining_suspected"
        a = min(hits, key=lambda x: x["detected_at"])
        assert a["project_name"] == names[inc.project_id]
        # it cannot be seen before the miner starts, and should be seen within a day
        assert inc.start - pd.Timedelta(hours=1) <= ts(a["start"]) <= ts(a["detected_at"]), (inc, a)
        assert ts(a["detected_at"]) <= inc.start + pd.Timedelta(days=1), (inc, a)
        assert a["severity"] in {"critical", "high"}


def test_no_mining_alert_on_benign_surges(full: dict[str, Any], data: Data) -> None:
    labels = data.sc.incidents
    benign = set(labels.loc[labels["kind"].isin(BENIGN_KINDS), "project_id"])
    benign -= set(labels.loc[labels["is_mining"], "project_id"])
    assert benign, "the scenario should contain a benign surge"
    wrong = [a for a in full["alerts"] if a["kind"] == "mining_suspected" and a["project"] in benign]
    assert not wrong, wrong


def test_gzipped_focus_export_gives_the_same_report(data: Data, full: dict[str, Any]) -> None:
    assert data.costs_gz.read_bytes()[:2] == b"\x1f\x8b"
    r = invoke(["report", *data.inputs(data.costs_gz), "--format", "json", "--as-of", data.end])
    assert r.exit_code == 0, r.output
    gz = json.loads(r.stdout)
    assert {k: v for k, v in gz.items() if k != "generated_at"} == \
        {k: v for k, v in full.items() if k != "generated_at"}


# ------------------------------------------------------------------------------------------------- --as-of


def _incident(data: Data, kind: str) -> Any:
    inc = data.sc.incidents
    return next(inc[inc["kind"] == kind].itertuples())


def test_as_of_before_an_incident_has_no_alert_for_it(data: Data, run_json: Callable[..., dict[str, Any]]
                                                      ) -> None:
    inc = _incident(data, "mining_new_nodes")
    before = inc.start - pd.Timedelta(hours=1)
    # given with a +02:00 offset: the report states it in UTC
    early = run_json("--as-of", before.tz_convert("Etc/GMT-2").isoformat())
    assert early["as_of"] == iso(before)
    assert not [a for a in early["alerts"] if a["kind"] == "mining_suspected" and a["project"] == inc.project_id]
    assert all(ts(a["detected_at"]) <= before for a in early["alerts"])
    assert all(ts(a["start"]) < inc.start for a in early["alerts"] if a["project"] == inc.project_id)
    # and a day later it is there
    later = run_json("--as-of", iso(inc.start + pd.Timedelta(days=1)))
    assert [a for a in later["alerts"] if a["kind"] == "mining_suspected" and a["project"] == inc.project_id]


@pytest.mark.parametrize("which", ["before_new_nodes", "mid_hour_after_stealth", "two_days_before_end"])
def test_replay_with_as_of_agrees_with_a_later_run(which: str, data: Data, full: dict[str, Any],
                                                  run_json: Callable[..., dict[str, Any]]) -> None:
    as_of = {
        "before_new_nodes": _incident(data, "mining_new_nodes").start - pd.Timedelta(hours=1),
        "mid_hour_after_stealth": _incident(data, "mining_stealth").start + pd.Timedelta(hours=26, minutes=30),
        "two_days_before_end": data.sc.end - pd.Timedelta(days=2, seconds=1),
    }[which]
    early = run_json("--as-of", iso(as_of))
    assert early["as_of"] == iso(as_of)
    assert all(ts(a["detected_at"]) <= as_of for a in early["alerts"]), "an alert from the future"
    for _, v in time_strings({k: v for k, v in early.items() if k != "generated_at"}):
        assert ts(v) <= as_of, v
    # both windows (default --since 28d before each as_of) contain [lo, as_of]
    lo = max(ts(early["since"]), ts(full["since"]))
    seen_early = {alert_key(a) for a in early["alerts"] if ts(a["detected_at"]) >= lo}
    seen_late = {alert_key(a) for a in full["alerts"] if lo <= ts(a["detected_at"]) <= as_of}
    assert seen_early == seen_late, (seen_early - seen_late, seen_late - seen_early)


# --------------------------------------------------------------------------------------------------- formats


def test_csv_format_has_one_row_per_alert(data: Data, full: dict[str, Any]) -> None:
    r = invoke(["report", *data.inputs(), "--format", "csv", "--as-of", data.end])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(r.stdout.splitlines()))
    header = r.stdout.splitlines()[0].split(",")
    assert (ALERT_KEYS | {"summary"}) <= set(header), set(ALERT_KEYS) - set(header)
    assert [(x["kind"], x["fingerprint"], x["start"], x["detected_at"]) for x in rows] == \
        [(a["kind"], a["fingerprint"], a["start"], a["detected_at"]) for a in full["alerts"]]
    for x, a in zip(rows, full["alerts"], strict=True):
        assert json.loads(x["evidence"]) == a["evidence"]
        assert float(x["observed"]) == pytest.approx(a["observed"])


def test_markdown_format_has_tables(data: Data, full: dict[str, Any]) -> None:
    r = invoke(["report", *data.inputs(), "--format", "markdown", "--as-of", data.end])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    seps = [i for i, line in enumerate(lines) if re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", line)]
    assert len(seps) >= 2, "expected an alerts table and a projects table"
    for i in seps:
        head, ncol = lines[i - 1], md_cells(lines[i])
        assert head.startswith("|") and md_cells(head) == ncol
        j = i + 1
        while j < len(lines) and lines[j].startswith("|"):
            assert md_cells(lines[j]) == ncol, lines[j]
            j += 1
    for a in full["alerts"]:
        assert a["project_name"] in r.stdout


def test_table_format_names_every_project(data: Data) -> None:
    r = invoke(["report", *data.inputs(), "--as-of", data.end], env={"COLUMNS": "220"})
    assert r.exit_code == 0, r.output
    for name in data.sc.projects["project_name"]:
        assert name in r.stdout, name
    assert "mining_suspected" in r.stdout


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_output_writes_the_file(fmt: str, data: Data, tmp_path: Path, full: dict[str, Any]) -> None:
    out = tmp_path / f"report.{fmt}"
    r = invoke(["report", *data.inputs(), "--format", fmt, "--as-of", data.end, "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert str(out) in r.stderr
    text = out.read_text(encoding="utf-8")
    if fmt == "json":
        assert r.stdout == ""
        doc = json.loads(text)
        assert [alert_key(a) for a in doc["alerts"]] == [alert_key(a) for a in full["alerts"]]
    else:
        for name in data.sc.projects["project_name"]:
            assert name in text, name


def test_table_output_to_a_file_prints_nothing(tmp_path: Path) -> None:
    out = tmp_path / "report.txt"
    r = invoke(["report", "--costs", str(SAMPLE), "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text(encoding="utf-8").startswith("costwatch report")
    assert r.stdout == ""


def test_output_into_a_missing_folder_is_a_clean_error(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "no-such-dir" / "r.json"
    r = invoke(["report", *data.inputs(), "--format", "json", "--output", str(out)])
    assert_one_error(r, str(out))


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("flag", "name", "needles"), [
    ("--costs", "does-not-exist.csv", ["does-not-exist.csv", "no such file"]),
    ("--usage", "does-not-exist.csv", ["does-not-exist.csv", "no such file"]),
    ("--costs", "costs_no_billed.csv", ["costs_no_billed.csv", "BilledCost"]),
    ("--usage", "usage_no_cpu.csv", ["usage_no_cpu.csv", "cpu_utilization"]),
    ("--usage", "usage_bad_time.csv", ["usage_bad_time.csv", "line 5", "column timestamp"]),
    ("--costs", "costs_bad_time.csv", ["costs_bad_time.csv", "line 4", "column ChargePeriodStart"]),
    ("--usage", "usage_bad_cpu.csv", ["usage_bad_cpu.csv", "line 7", "column cpu_utilization", "100"]),
    ("--usage", "usage_bad_cpu.csv.gz", ["usage_bad_cpu.csv.gz", "line 9", "column cpu_utilization", "101"]),
])
def test_bad_input_is_one_located_message(flag: str, name: str, needles: list[str], bad: Path) -> None:
    r = invoke(["report", flag, str(bad / name)])
    err = assert_one_error(r, *needles)
    assert len(err.strip().splitlines()) == 1, err


def test_debug_adds_the_traceback(bad: Path) -> None:
    path = str(bad / "usage_bad_cpu.csv")
    r = invoke(["--debug", "report", "--usage", path])
    assert r.exit_code == 2
    assert "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"costwatch: error: {path}, line 7")
    # and the flag does not stick to later runs
    assert_one_error(invoke(["report", "--usage", path]), "line 7")


def test_line_numbers_count_blank_lines(bad: Path) -> None:
    r = invoke(["report", "--usage", str(bad / "usage_blank_line.csv")])
    assert_one_error(r, "usage_blank_line.csv", "line 8,", "column cpu_utilization")


@pytest.mark.parametrize(("args", "needles"), [
    (["report"], ["nothing to read"]),
    (["report", "--costs", str(SAMPLE), "--since", "fortnight"], ["fortnight"]),
    (["report", "--costs", str(SAMPLE), "--as-of", "yesterday-ish"], ["yesterday-ish"]),
])
def test_bad_arguments_exit_2_without_traceback(args: list[str], needles: list[str]) -> None:
    r = invoke(args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for n in needles:
        assert n in r.stderr


@pytest.mark.parametrize(("name", "needles"), [
    ("unknown_key.yaml", ["unknown_key.yaml", "line 3", "detection.sensitivty", "'sensitivity'"]),
    ("unknown_provider_key.yaml", ["unknown_provider_key.yaml", "line 4", "providers[0].usgae"]),
])
@pytest.mark.parametrize("command", ["check-config", "report"])
def test_unknown_config_key_is_one_located_message(command: str, name: str, needles: list[str], bad: Path,
                                                   data: Data) -> None:
    path = str(bad / name)
    args = ["check-config", path] if command == "check-config" else \
        ["report", "--config", path, "--costs", str(data.costs)]
    err = assert_one_error(invoke(args), *needles)
    assert len(err.strip().splitlines()) == 1, err
    debug = invoke(["--debug", *args])
    assert debug.exit_code == 2 and "Traceback" in debug.stderr


def test_missing_env_var_is_named(bad: Path) -> None:
    r = invoke(["check-config", str(bad / "missing_var.yaml")], env={UNSET_VAR: None})
    assert_one_error(r, "missing_var.yaml", "line 3", UNSET_VAR, "notify.slack.token")


def test_env_values_are_not_echoed_in_errors(bad: Path) -> None:
    secret = "http://hooks.example.com/T000/B000/very-secret-value"
    for args in (["check-config"], ["--debug", "check-config"]):
        r = invoke([*args, str(bad / "secret_var.yaml")], env={"COSTWATCH_TEST_HOOK": secret})
        assert r.exit_code == 2
        assert "secret_var.yaml, line " in r.stderr and "webhook_url" in r.stderr
        assert "very-secret-value" not in r.output


def _example_env_vars(active_only: bool = False) -> list[str]:
    """``${NAME}`` references without a fallback in the example config (only on non-comment lines if asked)."""
    lines = EXAMPLE_CONFIG.read_text(encoding="utf-8").splitlines()
    if active_only:
        lines = [line for line in lines if not line.lstrip().startswith("#")]
    return sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", "\n".join(lines))))


def test_example_config_checks_out_with_its_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    names = _example_env_vars()
    assert names, "the example should show ${ENV} interpolation"
    for n in names:
        monkeypatch.setenv(n, f"test-value-for-{n.lower()}")
    r = invoke(["check-config", str(EXAMPLE_CONFIG)])
    assert r.exit_code == 0, r.output
    assert "OK" in r.stdout and r.stderr == ""
    for n in names:
        assert f"test-value-for-{n.lower()}" not in r.output


def test_example_config_without_its_env_vars_names_them(monkeypatch: pytest.MonkeyPatch) -> None:
    names = _example_env_vars()
    for n in names:
        monkeypatch.delenv(n, raising=False)
    r = invoke(["check-config", str(EXAMPLE_CONFIG)])
    required = _example_env_vars(active_only=True)
    assert required
    assert_one_error(r, "costwatch.example.yaml", *required)


# ------------------------------------------------------------------------------------------------------ demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Path]:
    out = tmp_path_factory.mktemp("demo") / "out"
    r = invoke(["demo", "--out", str(out), "--no-charts", "--format", "json"], env={"COLUMNS": "80"})
    return r, out


def test_demo_writes_data_report_and_ground_truth(demo_run: tuple[Result, Path]) -> None:
    r, out = demo_run
    assert r.exit_code == 0, r.output
    for name in ("costs.focus.csv", "usage.csv", "report.json", "incidents.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob("charts/*.png")), "--no-charts wrote charts"
    header = (out / "costs.focus.csv").open().readline().strip().split(",")
    assert {"ChargePeriodStart", "ChargePeriodEnd", "BilledCost", "BillingCurrency", "ProviderName",
            "SubAccountId"} <= set(header)
    assert (out / "usage.csv").open().readline().strip().split(",")[:5] == \
        ["timestamp", "provider", "project", "node", "cpu_utilization"]
    report = json.loads((out / "report.json").read_text())
    assert set(report) >= TOP_KEYS
    incidents = json.loads((out / "incidents.json").read_text())
    assert incidents and {"kind", "project_id", "start"} <= set(incidents[0])
    mined = {i["project_id"] for i in incidents if i["is_mining"]}
    flagged = {a["project"] for a in report["alerts"] if a["kind"] == "mining_suspected"}
    assert mined & flagged, "the demo should show a detected miner"
    assert str(out / "report.json") in re.sub(r"\s", "", r.stderr), "the demo should say where the report is"


def test_demo_rerun_command_reproduces_its_report(demo_run: tuple[Result, Path]) -> None:
    """The demo prints `costwatch report --config ... --as-of ... --since 14d`; that gives the same alerts."""
    r, out = demo_run
    assert r.exit_code == 0
    config = out / "costwatch.yaml"
    assert invoke(["check-config", str(config)]).exit_code == 0
    report = json.loads((out / "report.json").read_text())
    again = invoke(["report", "--config", str(config), "--as-of", report["as_of"], "--since", "14d",
                    "--format", "json"])
    assert again.exit_code == 0, again.output
    doc = json.loads(again.stdout)
    assert doc["since"] == report["since"]
    assert [(alert_key(a), a["severity"]) for a in doc["alerts"]] == \
        [(alert_key(a), a["severity"]) for a in report["alerts"]]


def test_demo_json_on_stdout_is_the_report(demo_run: tuple[Result, Path]) -> None:
    r, out = demo_run
    printed = json.loads(r.stdout)
    saved = json.loads((out / "report.json").read_text())
    assert printed["alerts"] == saved["alerts"]


def test_demo_with_charts_writes_pngs(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = invoke(["demo", "--out", str(out), "--format", "markdown"])
    assert r.exit_code == 0, r.output
    pngs = sorted((out / "charts").glob("*.png"))
    assert pngs, "no charts written"
    for p in pngs:
        assert p.read_bytes()[:8] == PNG_MAGIC, p


# --------------------------------------------------------------------------------------- real FOCUS sample


def test_focus_sample_reports() -> None:
    r = invoke(["report", "--costs", str(SAMPLE), "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert set(doc) >= TOP_KEYS
    assert doc["projects"]
    assert {p["provider"] for p in doc["projects"]} <= {"aws", "gcp", "azure", "oracle"}
    assert any("no CPU usage data" in n for n in doc["notes"])
    assert all(ISO_Z.fullmatch(v) for _, v in time_strings(doc))


# ------------------------------------------------------------------------------------- the installed script


def _script(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"console script not installed at {SCRIPT}"
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_script_reports_bad_row_as_one_line(bad: Path, tmp_path: Path) -> None:
    path = str(bad / "usage_bad_cpu.csv")
    p = _script(["report", "--usage", path], tmp_path)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr == (f"costwatch: error: {path}, line 7, column cpu_utilization: "
                        "must be a percentage between 0 and 100, got 140.5\n")
    d = _script(["--debug", "report", "--usage", path], tmp_path)
    assert d.returncode == 2
    assert "Traceback (most recent call last)" in d.stderr
    assert d.stderr.rstrip().splitlines()[-1].startswith(f"costwatch: error: {path}, line 7")


def test_script_check_config_unknown_key(bad: Path, tmp_path: Path) -> None:
    p = _script(["check-config", str(bad / "unknown_key.yaml")], tmp_path)
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "unknown_key.yaml, line 3" in p.stderr and "detection.sensitivty" in p.stderr


def test_script_reports_the_focus_sample(tmp_path: Path) -> None:
    out = tmp_path / "sample.json"
    p = _script(["report", "--costs", str(SAMPLE), "--format", "json", "--output", str(out)], tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert "Traceback" not in p.stderr
    assert set(json.loads(out.read_text())) >= TOP_KEYS
