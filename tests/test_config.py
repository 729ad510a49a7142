"""Config loading: the point is that every mistake is reported with file, line and key, and never leaks a secret."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from costwatch.config import (
    Config,
    DetectionConfig,
    FilesProviderConfig,
    ProjectConfig,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
)
from costwatch.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "costwatch.example.yaml"
EXAMPLE_ENV = {"SLACK_BOT_TOKEN": "xoxb-example-token-123", "SMTP_PASSWORD": "hunter2-smtp"}


def _error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, source="costwatch.yaml", env=env)
    return str(ei.value)


# ------------------------------------------------------------------------------------------ example file


def test_example_loads_with_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("ONCALL_EMAIL", raising=False)
    cfg = load_config(EXAMPLE)
    assert len(cfg.providers) == 1 and cfg.providers[0].type == "files"
    assert set(cfg.projects) == {"123456789012", "ml-research-sandbox"}
    pay = cfg.projects["123456789012"]
    assert pay.monthly_budget == 50000 and pay.daily_threshold == 2500 and pay.min_spend == 50
    assert cfg.detection == DetectionConfig()  # the example documents the defaults
    assert cfg.notify.slack is not None and cfg.notify.slack.token is not None
    assert cfg.notify.slack.token.get_secret_value() == EXAMPLE_ENV["SLACK_BOT_TOKEN"]
    assert cfg.notify.email is not None
    assert cfg.notify.email.to == ["finops@example.com", "oncall@example.com"]
    assert Path(cfg.state.path) == EXAMPLE.parent / ".costwatch" / "state.db"
    assert [c.name for c in cfg.kubernetes.clusters] == ["prod-eks", "ml-gke"]
    for secret in EXAMPLE_ENV.values():
        assert secret not in repr(cfg) and secret not in str(cfg) and secret not in cfg.model_dump_json()


def test_example_without_env_names_every_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in EXAMPLE_ENV:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError) as ei:
        load_config(EXAMPLE)
    msg = str(ei.value)
    assert "SLACK_BOT_TOKEN" in msg and "notify.slack.token" in msg
    assert "SMTP_PASSWORD" in msg and "notify.email.password" in msg
    assert re.search(r"costwatch\.example\.yaml, line \d+: notify\.slack\.token", msg)


def test_example_documents_every_key() -> None:
    """Each model field appears in the example, so the example stays the reference as fields are added."""
    text = EXAMPLE.read_text(encoding="utf-8")
    from costwatch import config as c

    models: list[type[BaseModel]] = [Config, ProjectConfig, DetectionConfig, FilesProviderConfig]
    models += [c.CpuDetectionConfig, c.AlertingConfig, c.NotifyConfig, c.SlackConfig, c.EmailConfig, c.TeamsConfig,
               c.PagerDutyConfig, c.WebhookConfig, c.SnsConfig,
               c.StateConfig, c.KubernetesConfig, c.KubernetesCluster, c.OwnerConfig, c.AwsProviderConfig,
               c.GcpProviderConfig, c.AzureProviderConfig]
    for m in models:
        for name in m.model_fields:
            assert re.search(rf"^\s*#?\s*(- )?{name}:", text, re.MULTILINE), f"{m.__name__}.{name} undocumented"


# ---------------------------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    cfg = Config()
    assert cfg.providers == [] and cfg.projects == {}
    d = cfg.detection
    assert (d.sensitivity, d.min_spend, d.history_days, d.lookback_days) == (1.0, 5.0, 14, 28)
    assert (d.band_method, d.band_z, d.min_band_ratio, d.cost_delay_hours) == ("weekday", 4.0, 0.15, 0.0)
    assert "g4dn" in d.cpu.gpu_instance_prefixes and "Standard_NC" in d.cpu.gpu_instance_prefixes
    assert cfg.alerting.repeat_interval_td == timedelta(hours=4)
    assert cfg.notify.stdout and cfg.notify.slack is None
    assert cfg.state.backend == "sqlite"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "detection:\nprojects:\nnotify:\n"])
def test_empty_file_and_empty_sections_mean_defaults(text: str) -> None:
    assert parse_config(text) == Config()


def test_bare_project_entry_gets_defaults() -> None:
    cfg = parse_config("projects:\n  web:\n")
    assert cfg.projects["web"] == ProjectConfig()


def test_numeric_project_ids_stay_strings() -> None:
    cfg = parse_config("projects:\n  123456789012:\n    owner: a\n  012345678901: {}\n"
                       "kubernetes:\n  clusters: [{name: k, project: 123456789012}]\n")
    assert set(cfg.projects) == {"123456789012", "012345678901"}
    assert cfg.kubernetes.clusters[0].project == "123456789012"


def test_anchors_under_x_keys_are_reusable() -> None:
    cfg = parse_config("x-defaults: &d\n  min_spend: 0\n  currency: eur\n"
                       "projects:\n  a: *d\n  b:\n    <<: *d\n    currency: GBP\n")
    assert cfg.projects["a"].currency == "EUR" and cfg.projects["b"].currency == "GBP"
    assert cfg.projects["b"].min_spend == 0


# ---------------------------------------------------------------------------------- located, helpful errors


def test_unknown_key_names_line_key_and_suggestion() -> None:
    text = "detection:\n  band_z: 3\n  sensitivty: 2\n"
    assert _error(text) == ("costwatch.yaml, line 3: detection.sensitivty: unknown key "
                            "(did you mean 'sensitivity'?)")


def test_unknown_key_deep_and_in_lists() -> None:
    msg = _error("providers:\n  - type: files\n    costs: a.csv\n    usgae: u.csv\n")
    assert "line 4: providers[0].usgae: unknown key (did you mean 'usage'?)" in msg
    msg = _error("projects:\n  web:\n    budget: 10\n")
    assert "line 3: projects.web.budget: unknown key (did you mean 'monthly_budget'?)" in msg
    msg = _error("detection:\n  cpu:\n    pinned_hour: 3\n")
    assert "line 3: detection.cpu.pinned_hour" in msg and "'pinned_hours'" in msg


def test_unknown_key_without_close_match_lists_allowed_keys() -> None:
    msg = _error("zzz: 1\n")
    assert msg.startswith("costwatch.yaml, line 1: zzz: unknown key; expected one of: providers, projects")


def test_bad_type_names_line_and_key() -> None:
    msg = _error("projects:\n  web:\n    owner: me\n    daily_threshold: lots\n")
    assert msg.startswith("costwatch.yaml, line 4: projects.web.daily_threshold: ")
    assert "valid number" in msg


def test_out_of_range_and_bad_literal() -> None:
    assert "line 2: detection.sensitivity: Input should be less than or equal to 4" in _error(
        "detection:\n  sensitivity: 9\n")
    assert "line 2: detection.lookback_days" in _error("detection:\n  lookback_days: 3\n")
    assert "line 2: detection.band_z: Input should be greater than 0" in _error("detection:\n  band_z: 0\n")
    assert "line 2: detection.band_method" in _error("detection:\n  band_method: arima\n")
    assert "line 3: projects.p.monthly_budget" in _error("projects:\n  p:\n    monthly_budget: 0\n")


def test_several_errors_are_all_reported_in_line_order() -> None:
    msg = _error("alerting:\n  growth_factor: 0.5\ndetection:\n  band_z: -1\n  nope: 1\n")
    lines = msg.splitlines()
    assert len(lines) == 3
    assert [int(re.search(r"line (\d+)", ln).group(1)) for ln in lines] == [2, 4, 5]  # type: ignore[union-attr]


def test_cross_field_checks() -> None:
    assert "line 2: detection.cpu: plateau_level must not be above pinned_level" in _error(
        "detection:\n  cpu:\n    plateau_level: 95\n")
    assert "needs 'table'" in _error("state:\n  backend: dynamodb\n")
    assert "needs a 'channel'" in _error("notify:\n  slack:\n    token: xoxb-1\n")
    msg = _error("notify:\n  email:\n    smtp_host: h\n")
    assert "notify.email.from_addr: required key is missing" in msg
    assert "needs 'smtp_host'" in _error("notify:\n  email:\n    from_addr: a@b.c\n")
    assert "line breaks" not in _error("owners:\n  t:\n    email: [x]\n")
    assert "one plain address" in _error("owners:\n  t:\n    email: [x]\n")
    assert "slack_mention" in _error("owners:\n  t:\n    slack_mention: '<!channel>'\n")


def test_provider_type_errors() -> None:
    assert "line 2: providers[0].type: missing 'type'" in _error("providers:\n  - costs: a.csv\n")
    assert "line 3: providers[0].type: unknown provider type 'oracle'" in _error(
        "providers:\n  - costs: a.csv\n    type: oracle\n")
    assert "needs 'costs' and/or 'usage'" in _error("providers:\n  - type: files\n")


def test_group_by_label_suggestion() -> None:
    assert "did you mean 'owner'" in _error("alerting:\n  group_by: [ownr]\n")


def test_duplicate_key_is_an_error() -> None:
    assert _error("state:\n  path: a\n  path: b\n") == (
        "costwatch.yaml, line 3: state.path: duplicate key (first defined on line 2)")


def test_invalid_yaml_has_line() -> None:
    msg = _error("detection:\n  sensitivity: 1\n   band_z: 3\n")
    assert msg.startswith("costwatch.yaml, line 3") and "invalid YAML" in msg
    msg = _error("projects: [a,\n")
    assert "invalid YAML" in msg and "line" in msg


def test_invalid_yaml_does_not_quote_the_line() -> None:
    msg = _error("notify:\n  slack:\n    token: sup3rs3cret: x\n")
    assert "sup3rs3cret" not in msg and "line 3" in msg


def test_top_level_must_be_mapping() -> None:
    assert "top level must be a mapping" in _error("- a\n- b\n")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_load_config_error_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "costwatch.yaml"
    p.write_text("detection:\n  sensitivty: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert str(ei.value).startswith(f"{p}, line 2: detection.sensitivty: unknown key")


def test_errors_do_not_chain_the_validation_error() -> None:
    """A chained pydantic error would print ``input_value=<secret>`` in a --debug traceback."""
    with pytest.raises(ConfigError) as ei:
        parse_config("notify:\n  slack:\n    webhook_url: http://hooks.example/SECRETPATH\n")
    assert ei.value.__cause__ is None and ei.value.__suppress_context__


# ------------------------------------------------------------------------------------------- interpolation


def test_env_interpolation_full_embedded_and_default() -> None:
    env = {"CH": "alerts", "HOST": "smtp.internal", "EMPTY": ""}
    cfg = parse_config(
        "notify:\n"
        "  slack:\n    webhook_url: ${HOOK:-https://hooks.example/x}\n    channel: '#${CH}-prod'\n"
        "  email:\n    smtp_host: ${HOST}\n    smtp_port: ${PORT:-2525}\n    from_addr: a@b\n"
        "    to: ['${TO:-x@y}']\n    starttls: ${TLS:-false}\n"
        "state:\n  path: ${EMPTY:-fallback.db}\n",
        env=env)
    assert cfg.notify.slack is not None and cfg.notify.slack.channel == "#alerts-prod"
    assert cfg.notify.slack.webhook_url is not None
    assert cfg.notify.slack.webhook_url.get_secret_value() == "https://hooks.example/x"
    assert cfg.notify.email is not None
    assert (cfg.notify.email.smtp_host, cfg.notify.email.smtp_port) == ("smtp.internal", 2525)
    assert cfg.notify.email.to == ["x@y"] and cfg.notify.email.starttls is False
    assert cfg.state.path == "fallback.db"  # an empty variable counts as unset for :-


def test_env_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CW_TEST_OWNER", "alice")
    assert parse_config("projects:\n  p:\n    owner: ${CW_TEST_OWNER}\n").projects["p"].owner == "alice"


def test_dollar_escape_and_comments_are_not_interpolated() -> None:
    cfg = parse_config("# ${NOT_SET_ANYWHERE}\nprojects:\n  p:\n    name: cost $$5 ${X}  # ${ALSO_NOT}\n",
                       env={"X": "ok"})
    assert cfg.projects["p"].name == "cost $5 ok"


def test_interpolated_value_cannot_change_structure() -> None:
    cfg = parse_config("projects:\n  p:\n    name: ${V}\n", env={"V": "a: b # c\n  owner: evil"})
    assert cfg.projects["p"].name == "a: b # c\n  owner: evil" and cfg.projects["p"].owner is None


def test_missing_env_var_names_variable_key_and_line() -> None:
    msg = _error("state:\n  backend: sqlite\n  path: /x/${STATE_DIR}/db\n", env={"OTHER": "s3cr3t"})
    assert msg.startswith("costwatch.yaml, line 3: state.path: environment variable STATE_DIR is not set")
    assert "s3cr3t" not in msg


def test_missing_env_vars_in_list_items() -> None:
    msg = _error("alerting:\n  group_by:\n    - project\n    - ${LABEL}\n", env={})
    assert "line 4: alerting.group_by[1]: environment variable LABEL" in msg


def test_malformed_reference() -> None:
    assert "malformed ${...} reference" in _error("state:\n  path: ${OOPS\n")


def test_bad_env_value_is_not_echoed() -> None:
    env = {"SENS": "very-secret-value", "LBL": "secret-label", "RI": "secret-interval"}
    for text in ("detection:\n  sensitivity: ${SENS}\n", "alerting:\n  group_by: ['${LBL}']\n",
                 "alerting:\n  repeat_interval: ${RI}\n"):
        msg = _error(text, env=env)
        assert "line 2" in msg and "not shown" in msg
        assert not any(v in msg for v in env.values()), msg


# ------------------------------------------------------------------------------------------------- secrets


def test_secrets_hidden_in_repr_and_dump() -> None:
    cfg = parse_config("notify:\n  slack:\n    token: xoxb-REALTOKEN\n    channel: c\n"
                       "  email:\n    smtp_host: h\n    from_addr: a@b\n    to: [c@d]\n"
                       "    username: u\n    password: PA55WORD\n")
    for text in (repr(cfg), str(cfg), repr(cfg.notify), cfg.model_dump_json(), str(cfg.model_dump())):
        assert "xoxb-REALTOKEN" not in text and "PA55WORD" not in text


def test_secret_values_not_in_error_messages() -> None:
    msg = _error("notify:\n  slack:\n    webhook_url: http://hooks.example/T0/B0/SECRETPART\n")
    assert "SECRETPART" not in msg and "https://" in msg
    msg = _error("notify:\n  slack:\n    token: [xoxb-LISTSECRET]\n    channel: c\n")
    assert "LISTSECRET" not in msg and "line 3: notify.slack.token" in msg and "string" in msg


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="$"),
               min_size=6, max_size=40))
def test_no_env_value_ever_appears_in_messages(secret: str) -> None:
    # a distinctive prefix, so a secret like "string" cannot match the message's own words
    secret = "Zq9#" + secret
    env = {"S": secret}
    for text in ("detection:\n  band_z: ${S}\n", "notify:\n  slack:\n    webhook_url: ${S}\n",
                 "alerting:\n  repeat_interval: ${S}\n", "state:\n  backend: ${S}\n",
                 "providers:\n  - type: ${S}\n"):
        try:
            parse_config(text, env=env)
        except ConfigError as e:
            assert secret not in str(e)


# ------------------------------------------------------------------------------------------ relative paths


def test_relative_paths_resolve_against_config_dir(tmp_path: Path) -> None:
    d = tmp_path / "conf"
    d.mkdir()
    p = d / "costwatch.yaml"
    p.write_text("providers:\n  - type: files\n    costs: [data/costs.csv, /abs/c.csv, s3://b/k.csv]\n"
                 "    usage: ../usage.csv\n", encoding="utf-8")
    cfg = load_config(p)
    prov = cfg.providers[0]
    assert prov.costs == [str(d.resolve() / "data" / "costs.csv"), "/abs/c.csv", "s3://b/k.csv"]
    assert prov.usage == str(tmp_path.resolve() / "usage.csv")
    assert cfg.state.path == str(d.resolve() / ".costwatch" / "state.db")


def test_parse_config_paths(tmp_path: Path) -> None:
    text = "providers:\n  - type: files\n    usage: u.csv\n"
    assert parse_config(text).providers[0].usage == "u.csv"
    assert parse_config(text, base_dir=tmp_path).providers[0].usage == str(tmp_path / "u.csv")


# ----------------------------------------------------------------------------------------------- durations


@pytest.mark.parametrize(("text", "expected"), [
    ("30m", timedelta(minutes=30)), ("4h", timedelta(hours=4)), ("2d", timedelta(days=2)),
    ("1w", timedelta(weeks=1)), ("45s", timedelta(seconds=45)), ("1h30m", timedelta(minutes=90)),
    ("1.5h", timedelta(minutes=90)), (" 2H ", timedelta(hours=2)), ("0.1s", timedelta(milliseconds=100)),
])
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "4", "h", "4x", "-1h", "4h-", "1h 30", "four hours"])
def test_parse_duration_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650)))
def test_duration_round_trip(td: timedelta) -> None:
    assert parse_duration(format_duration(td)) == td


def test_repeat_interval() -> None:
    cfg = parse_config("alerting:\n  repeat_interval: 1d12h\n")
    assert cfg.alerting.repeat_interval == "1d12h"
    assert cfg.alerting.repeat_interval_td == timedelta(hours=36)
    assert "line 2: alerting.repeat_interval: expected a duration" in _error(
        "alerting:\n  repeat_interval: soon\n")
    assert "longer than zero" in _error("alerting:\n  repeat_interval: 0m\n")
