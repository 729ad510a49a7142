"""Secret references (``${file:…}``, ``${ssm:…}``, ``${secretsmanager:…#key}``, costwatch/secrets.py) resolve at
load time, fail as located ConfigErrors that name the reference and never the value, and the values never
reach logs (DEBUG, botocore included), exceptions, reports, the outbox or the state file."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from costwatch.config import load_config, parse_config
from costwatch.errors import ConfigError
from costwatch.secrets import SecretError, SecretResolver

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "xoxb-1111-2222-fakeBotTokenSecret"        # FakeSlack's default token
SMTP_PASSWORD = "Sm7p-PASSWORD-from-secretsmanager"
SSM_VALUE = "ssm-SecureString-VALUE-0451"


def _error(text: str, **kw: Any) -> str:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, source="costwatch.yaml", **kw)
    # no chained exception (pydantic's, botocore's) to carry a value into a --debug traceback
    assert ei.value.__cause__ is None and (ei.value.__context__ is None or ei.value.__suppress_context__)
    return str(ei.value)


class CountingFactory:
    """boto3 clients, counting the API calls made through them (to prove one fetch per reference)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, service: str, region: str | None) -> Any:
        import boto3

        client = boto3.client(service, region_name=region or "us-east-1")
        client.meta.events.register("before-call.*.*", lambda model, **_: self.calls.append(model.name))
        return client


@pytest.fixture
def aws(aws_env: None) -> Iterator[Any]:
    from moto import mock_aws

    with mock_aws():
        import boto3

        ssm = boto3.client("ssm", region_name="us-east-1")
        ssm.put_parameter(Name="/costwatch/test/slack_token", Value=TOKEN, Type="SecureString")
        ssm.put_parameter(Name="/costwatch/test/plain", Value=SSM_VALUE, Type="String")
        sm = boto3.client("secretsmanager", region_name="us-east-1")
        sm.create_secret(Name="costwatch/smtp", SecretString=json.dumps({"username": "costwatch",
                                                                         "password": SMTP_PASSWORD, "port": 2525}))
        sm.create_secret(Name="costwatch/raw", SecretString="raw-secret-string-77")
        sm.create_secret(Name="costwatch/bin", SecretBinary=b"binary-secret-88")
        sm.create_secret(Name="costwatch/notjson", SecretString="not-json-but-SECRET-99")
        yield {"ssm": ssm, "sm": sm}


# ------------------------------------------------------------------------------------------------ file


def test_file_reference_relative_to_config_strips_newline_and_stays_secret(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "slack").write_text(TOKEN + "\n")
    (tmp_path / "c.yaml").write_text("notify:\n  slack:\n    token: ${file:secrets/slack}\n    channel: c\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.notify.slack is not None and cfg.notify.slack.token is not None
    assert cfg.notify.slack.token.get_secret_value() == TOKEN
    assert TOKEN not in repr(cfg) and TOKEN not in cfg.model_dump_json()


def test_file_reference_embedded_absolute_and_symlinked(tmp_path: Path) -> None:
    # Kubernetes secret volumes are symlinks (token -> ..data/token)
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "pw").write_text("pa55\r\n")
    (tmp_path / "pw").symlink_to(tmp_path / "..data" / "pw")
    cfg = parse_config(f"projects:\n  p:\n    name: 'user:${{file:{tmp_path / 'pw'}}}!'\n")
    assert cfg.projects["p"].name == "user:pa55!"


@pytest.mark.parametrize(("setup", "needle"), [
    ("missing", "file not found"),
    ("dir", "is a directory"),
    ("fifo", "not a regular file"),
    ("devzero", "not a regular file"),
    ("big", "larger than 64 KiB"),
    ("latin1", "not UTF-8"),
    ("empty", "is empty"),
])
def test_bad_secret_files_are_located_errors_without_hanging(tmp_path: Path, setup: str, needle: str) -> None:
    target = tmp_path / "s"
    if setup == "dir":
        target.mkdir()
    elif setup == "fifo":
        os.mkfifo(target)  # opening a FIFO for reading would block until a writer comes: O_NONBLOCK
    elif setup == "devzero":
        target = Path("/dev/zero")
    elif setup == "big":
        target.write_bytes(b"x" * (64 * 1024 + 1))
    elif setup == "latin1":
        target.write_bytes(b"caf\xe9")
    elif setup == "empty":
        target.write_text("\n")
    msg = _error(f"state:\n  path: /x\nnotify:\n  email:\n    smtp_host: h\n    from_addr: a@b\n"
                 f"    username: u\n    password: ${{file:{target}}}\n")
    assert msg.startswith(f"costwatch.yaml, line 8: notify.email.password: ${{file:{target}}}: "), msg
    assert needle in msg


def test_secret_file_limit_is_configurable(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("0123456789")
    r = SecretResolver(tmp_path, max_file_bytes=4)
    with pytest.raises(SecretError, match="larger than"):
        r.resolve("file", "s")


# ------------------------------------------------------------------------------------------------- AWS


def test_ssm_and_secretsmanager_references(aws: Any) -> None:
    factory = CountingFactory()
    text = ("notify:\n"
            "  slack:\n    token: ${ssm:/costwatch/test/slack_token}\n    channel: c\n"
            "  email:\n    smtp_host: h\n    from_addr: a@b\n"
            "    username: ${secretsmanager:costwatch/smtp#username}\n"
            "    password: ${secretsmanager:costwatch/smtp#password}\n"
            "    smtp_port: ${secretsmanager:costwatch/smtp#port}\n"
            "projects:\n  a: {name: '${secretsmanager:costwatch/raw}'}\n"
            "  b: {name: '${secretsmanager:costwatch/bin}'}\n"
            "  c: {name: '${ssm:/costwatch/test/plain}', owner: '${ssm:/costwatch/test/plain}'}\n")
    cfg = parse_config(text, secrets=SecretResolver(client_factory=factory))
    assert cfg.notify.slack is not None and cfg.notify.slack.token is not None
    assert cfg.notify.slack.token.get_secret_value() == TOKEN
    assert cfg.notify.email is not None and cfg.notify.email.password is not None
    assert cfg.notify.email.password.get_secret_value() == SMTP_PASSWORD
    assert (cfg.notify.email.username, cfg.notify.email.smtp_port) == ("costwatch", 2525)
    assert cfg.projects["a"].name == "raw-secret-string-77" and cfg.projects["b"].name == "binary-secret-88"
    assert cfg.projects["c"].owner == SSM_VALUE
    # each reference fetched once, each secret once per load however many keys are taken from it
    assert sorted(factory.calls) == ["GetParameter", "GetParameter", "GetSecretValue", "GetSecretValue",
                                     "GetSecretValue"]


def test_secret_fetched_once_through_aliases(aws: Any) -> None:
    factory = CountingFactory()
    text = ("x-tok: &t ${ssm:/costwatch/test/plain}\n"
            "projects:\n" + "".join(f"  p{i}: {{name: *t}}\n" for i in range(50)))
    cfg = parse_config(text, secrets=SecretResolver(client_factory=factory))
    assert {p.name for p in cfg.projects.values()} == {SSM_VALUE}
    assert factory.calls == ["GetParameter"]


def test_arn_reference_picks_its_region(aws: Any) -> None:
    import boto3

    boto3.client("ssm", region_name="eu-west-1").put_parameter(Name="/eu/param", Value="in-eu", Type="String")
    regions: list[str | None] = []

    def factory(service: str, region: str | None) -> Any:
        regions.append(region)
        return boto3.client(service, region_name=region or "us-east-1")

    arn = "arn:aws:ssm:eu-west-1:123456789012:parameter/eu/param"
    cfg = parse_config(f"projects:\n  p: {{name: '${{ssm:{arn}}}'}}\n",
                       secrets=SecretResolver(client_factory=factory))
    assert cfg.projects["p"].name == "in-eu" and regions == ["eu-west-1"]


@pytest.mark.parametrize(("ref", "needle"), [
    ("ssm:/costwatch/test/nope", "not found"),
    ("secretsmanager:costwatch/nope", "not found"),
    ("secretsmanager:costwatch/smtp#nokey", "has no key 'nokey'; keys: password, port, username"),
    ("secretsmanager:costwatch/notjson#password", "needs a JSON object secret"),
    ("secretsmanager:#key", "empty secret name"),
    ("ssm: ", "empty reference"),
])
def test_unresolvable_aws_references_name_the_reference_not_the_value(aws: Any, ref: str, needle: str) -> None:
    msg = _error(f"projects:\n  p:\n    owner: '${{{ref}}}'\n")
    assert msg.startswith(f"costwatch.yaml, line 3: projects.p.owner: ${{{ref}}}: "), msg
    assert needle in msg
    for value in (SMTP_PASSWORD, "not-json-but-SECRET-99", TOKEN):
        assert value not in msg


class _Denied:
    def __init__(self, code: str) -> None:
        self.code = code

    def get_parameter(self, **kw: Any) -> Any:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": self.code, "Message": "User: arn:aws:sts::1:x is not authorized"}},
                          "GetParameter")

    def get_secret_value(self, **kw: Any) -> Any:
        from botocore.exceptions import NoCredentialsError

        raise NoCredentialsError()


@pytest.mark.parametrize(("ref", "code", "needle"), [
    ("ssm:/x", "AccessDeniedException", "access denied; grant ssm:GetParameter"),
    ("ssm:/x", "KMSAccessDeniedException", "kms:Decrypt"),
    ("ssm:/x", "ThrottlingException", "ThrottlingException"),
    ("secretsmanager:x", "", "no AWS credentials"),
])
def test_aws_failures_say_what_to_grant(ref: str, code: str, needle: str) -> None:
    msg = _error(f"projects:\n  p:\n    owner: '${{{ref}}}'\n",
                 secrets=SecretResolver(client_factory=lambda s, r: _Denied(code)))
    assert "line 3: projects.p.owner" in msg and needle in msg and "not authorized" not in msg


def test_no_boto3_import_without_aws_references() -> None:
    code = ("import sys; from costwatch.config import parse_config; "
            "parse_config('projects:\\n  p: {name: \"${X:-a}\"}\\n'); "
            "print('boto3' in sys.modules or 'botocore' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------- syntax and safety


def test_one_pass_expansion_never_reexpands_a_value(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("${file:/etc/hostname} ${HOME}")
    env = {"EVIL": "${file:/etc/passwd}", "REF": str(tmp_path / "s")}
    cfg = parse_config(f"projects:\n  a: {{name: '${{EVIL}}'}}\n  b: {{name: '${{file:{tmp_path / 's'}}}'}}\n",
                       env=env)
    assert cfg.projects["a"].name == "${file:/etc/passwd}"
    assert cfg.projects["b"].name == "${file:/etc/hostname} ${HOME}"


def test_env_variables_named_like_schemes_keep_their_meaning() -> None:
    cfg = parse_config("projects:\n  a: {name: '${ssm:-fallback}', owner: '${file}'}\n", env={"file": "f"})
    assert (cfg.projects["a"].name, cfg.projects["a"].owner) == ("fallback", "f")
    assert "malformed ${...} reference" in _error("projects:\n  a: {name: '${vault:x}'}\n")


def test_secret_values_never_echoed_in_validation_errors(aws: Any, tmp_path: Path) -> None:
    import boto3

    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name="/costwatch/test/hook", Value="http://hooks.example/T0/B0/HOOKSECRET", Type="SecureString")
    (tmp_path / "band").write_text("BANDSECRET")
    msg = _error("notify:\n  slack:\n    webhook_url: ${ssm:/costwatch/test/hook}\n"
                 f"detection:\n  band_z: ${{file:{tmp_path / 'band'}}}\n")
    assert "HOOKSECRET" not in msg and "BANDSECRET" not in msg
    assert "line 2: notify.slack: slack 'webhook_url' must be an https:// URL" in msg
    assert "line 5: detection.band_z" in msg
    assert f"(value from ${{file:{tmp_path / 'band'}}}, not shown)" in msg


def test_resolver_repr_and_errors_hold_no_values(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("REPRSECRET")
    r = SecretResolver(tmp_path)
    assert r.resolve("file", "s").get_secret_value() == "REPRSECRET"
    assert "REPRSECRET" not in repr(r) and r.resolved == ["file:s"]
    assert "REPRSECRET" not in repr(r.resolve("file", "s"))


def test_botocore_debug_logging_is_muted_only_while_fetching(aws: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = parse_config("notify:\n  slack:\n    token: ${ssm:/costwatch/test/slack_token}\n    channel: c\n"
                       "  email:\n    smtp_host: h\n    from_addr: a@b\n    username: u\n"
                       "    password: ${secretsmanager:costwatch/smtp#password}\n")
    assert cfg.notify.email is not None
    assert TOKEN not in caplog.text and SMTP_PASSWORD not in caplog.text
    assert "secret reference ssm:/costwatch/test/slack_token resolved" in caplog.text  # names are logged ...
    # ... and botocore's own DEBUG logging works again afterwards, in this and in other threads
    caplog.clear()
    aws["ssm"].get_parameter(Name="/costwatch/test/plain")
    t = threading.Thread(target=lambda: aws["ssm"].get_parameter(Name="/costwatch/test/plain"))
    t.start()
    t.join()
    assert caplog.text.count(SSM_VALUE) >= 2


# --------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def scenario_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    from costwatch.demo import to_focus
    from costwatch.scenarios import generate

    sc = generate(seed=10, n_projects=4, days=50, incident_kinds=("mining_new_nodes",))
    d = tmp_path_factory.mktemp("secrets-data")
    to_focus(sc.costs).to_csv(d / "costs.csv", index=False)
    u = sc.usage.copy()
    u["timestamp"] = u["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    u.to_csv(d / "usage.csv", index=False)
    return sc, d


def test_secrets_never_reach_logs_reports_outbox_or_state(
        scenario_files: tuple[Any, Path], aws: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The Slack token from a mounted file, the SMTP password from Secrets Manager: a full run against fake
    Slack and a real SMTP server (one send fails with the server down), then every place text goes."""
    import smtp_server
    from fake_slack import FakeSlack

    from costwatch.cli import cli
    from costwatch.notifiers.email import EmailNotifier
    from costwatch.run import build_notifiers, run_once

    caplog.set_level(logging.DEBUG)
    sc, d = scenario_files
    inc = sc.incidents[sc.incidents["provider"] == "gcp"].iloc[0]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "slack_token").write_text(TOKEN + "\n")
    srv = smtp_server.start(tls="starttls", auth={"costwatch": SMTP_PASSWORD})
    with FakeSlack() as slack:
        doc = {
            "providers": [{"type": "files", "costs": str(d / "costs.csv"), "usage": str(d / "usage.csv")}],
            "projects": {str(inc.project_id): {"name": "miners", "owner": "team"}},
            "owners": {"team": {"slack_channel": "C0TEAM", "email": ["owner@example.com"]}},
            "notify": {
                "slack": {"token": "${file:run/slack_token}", "channel": "C0ALERTS", "api_url": slack.api_url,
                          "timeout": 2},
                "email": {"smtp_host": "127.0.0.1", "smtp_port": srv.port, "from_addr": "costwatch@example.com",
                          "username": "${secretsmanager:costwatch/smtp#username}",
                          "password": "${secretsmanager:costwatch/smtp#password}", "timeout": 5},
                "stdout": True},
            "state": {"path": "state/state.db"},
        }
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(doc))
        cfg = load_config(tmp_path / "c.yaml")
        out = io.StringIO()

        def notifiers() -> dict[str, Any]:
            from costwatch.notifiers.stdout import StdoutNotifier

            assert cfg.notify.email is not None
            n = build_notifiers(cfg)
            n["email"] = EmailNotifier(cfg.notify.email, ssl_context=srv.client_context())
            n["stdout"] = StdoutNotifier(out)
            return n

        t = inc.start + pd.Timedelta(hours=3)
        srv.stop()  # the first email fails and waits in the outbox with its error
        first = run_once(cfg, now=t, as_of=t, notifiers=notifiers(), charts=False, sleep=lambda s: None)
        srv.start()
        second = run_once(cfg, now=t + pd.Timedelta(minutes=20), as_of=t + pd.Timedelta(minutes=20),
                          notifiers=notifiers(), charts=False, sleep=lambda s: None)
        # a revoked token: the Slack error is reported, not the token
        slack.token = "xoxb-other"
        third = run_once(cfg, now=t + pd.Timedelta(hours=8), as_of=t + pd.Timedelta(hours=8),
                         notifiers=notifiers(), charts=False, sleep=lambda s: None)
        assert slack.calls("chat.postMessage") and srv.messages
        assert any(ok for _, _, ok in srv.logins)
        assert first.delivery.pending >= 1 and second.delivery.pending == 0
        texts = {"run output": "\n".join(first.lines() + second.lines() + third.lines()) + out.getvalue(),
                 "logs": caplog.text,
                 "slack requests": json.dumps([c.params for c in slack.calls("chat.postMessage")]),
                 "emails": "\n".join(m.message.as_string() for m in srv.messages)}
        runner = CliRunner()
        for args in (["report", "--config", str(tmp_path / "c.yaml"), "--format", "json", "--as-of", str(t)],
                     ["report", "--config", str(tmp_path / "c.yaml"), "--format", "table", "--as-of", str(t)],
                     ["report", "--config", str(tmp_path / "c.yaml"), "--format", "csv", "--as-of", str(t)],
                     ["check-config", str(tmp_path / "c.yaml")],
                     ["outbox", "--config", str(tmp_path / "c.yaml"), "--all"],
                     ["silences", "--config", str(tmp_path / "c.yaml")]):
            res = runner.invoke(cli, args, catch_exceptions=False)
            assert res.exit_code == 0, (args, res.output)
            texts[" ".join(args[:1])] = texts.get(" ".join(args[:1]), "") + res.output
        assert "mining" in texts["report"].lower()  # the report is real
    srv.stop()
    state = tmp_path / "state" / "state.db"
    blobs = {"state db": state.read_bytes()}
    for side in ("-wal", "-journal"):
        if Path(str(state) + side).exists():
            blobs[side] = Path(str(state) + side).read_bytes()
    for secret in (TOKEN, SMTP_PASSWORD):
        for where, text in texts.items():
            assert secret not in text, f"{where} holds a secret"
        for where, blob in blobs.items():
            assert secret.encode() not in blob, f"{where} holds a secret"


def test_config_error_with_secrets_in_cli_output_and_debug_traceback(aws: Any, tmp_path: Path) -> None:
    """``check-config --debug`` prints the traceback: it must not carry the fetched value either."""
    import boto3

    from costwatch.cli import cli

    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name="/costwatch/test/badhook", Value="http://hooks.example/DEBUGSECRET", Type="SecureString")
    (tmp_path / "c.yaml").write_text("notify:\n  slack:\n    webhook_url: ${ssm:/costwatch/test/badhook}\n")
    res = CliRunner().invoke(cli, ["--debug", "check-config", str(tmp_path / "c.yaml")])
    assert res.exit_code == 2
    assert "c.yaml, line 2: notify.slack" in res.output and "DEBUGSECRET" not in res.output


def test_readme_config_example_shape() -> None:
    """The reference syntax documented in costwatch/secrets.py parses as documented."""
    import costwatch.secrets as mod

    doc = mod.__doc__ or ""
    for ref in ("${file:/run/secrets/slack_token}", "${ssm:/costwatch/prod/slack_token}",
                "${secretsmanager:costwatch/smtp#password}"):
        assert ref in doc
