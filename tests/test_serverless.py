"""The Lambda deployment, built for real: deploy/lambda/build.py downloads Linux wheels from PyPI and makes
the artifact, which must fit Lambda and run in a bare interpreter that sees nothing but the unpacked zip;
``osls package`` (npm, pinned by package-lock.json) must turn serverless.yml into a CloudFormation template
with least-privilege IAM, the state table costwatch.state expects, the schedule and the failure queue.

Slow (~2 minutes: two wheel sets, a zip, npm ci) and needs PyPI and the npm registry.  CI runs it as part
of the normal pytest run; offline, set COSTWATCH_SKIP_DEPLOY_TESTS=1 to skip it (it never skips itself).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "deploy" / "lambda" / "build.py"
LOCAL_PY = f"{sys.version_info.major}.{sys.version_info.minor}"
LAMBDA_LIMIT = 250e6

if os.environ.get("COSTWATCH_SKIP_DEPLOY_TESTS") == "1":
    pytest.skip("COSTWATCH_SKIP_DEPLOY_TESTS=1", allow_module_level=True)


def build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("costwatch_lambda_build", BUILD)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def run_build(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BUILD), *args], capture_output=True, text=True, timeout=900)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------ the artifact


@pytest.fixture(scope="module")
def local_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The artifact built for this interpreter's version (so it can be imported here), zipped and unzipped."""
    out = tmp_path_factory.mktemp("lambda-local")
    done = run_build("--out", str(out), "--python-version", LOCAL_PY)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "costwatch.zip"


@pytest.fixture(scope="module")
def unpacked(local_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lambda-task-root")
    with zipfile.ZipFile(local_artifact) as z:
        z.extractall(root)
    return root


def test_deploy_artifact_fits_lambda(tmp_path: Path) -> None:
    """The build serverless.yml deploys (Python 3.12, x86_64 wheels), measured unzipped."""
    # with bytecode when a Python 3.12 is at hand to compile it (Lambda's own interpreter version)
    bytecode = build_module().find_python("3.12") is not None
    done = run_build("--out", str(tmp_path), "--no-zip", *([] if bytecode else ["--no-bytecode"]))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    tree = tmp_path / "package"
    size = tree_bytes(tree)
    assert size < LAMBDA_LIMIT, f"{size / 1e6:.1f} MB unzipped"
    assert any(tree.glob("numpy/_core/*.cpython-312-x86_64-linux-gnu.so")), "not the python3.12 x86_64 wheels"
    if bytecode:
        assert (tree / "costwatch" / "__pycache__" / "handler.cpython-312.pyc").exists()
    assert f"{size / 1e6:.1f} MB unzipped" in done.stdout


def test_zip_is_complete_and_lean(local_artifact: Path, unpacked: Path) -> None:
    with zipfile.ZipFile(local_artifact) as z:
        infos = z.infolist()
        assert z.testzip() is None
    names = [i.filename for i in infos]
    assert "costwatch/handler.py" in names and "costwatch/providers/aws/__init__.py" in names
    assert "costwatch/notifiers/email.py" in names
    assert all(not n.startswith("/") and ".." not in n.split("/") for n in names)
    assert all((i.external_attr >> 16) & 0o444 == 0o444 for i in infos), "Lambda runs as another user"
    tops = {n.split("/", 1)[0] for n in names}
    assert not tops & {"statsmodels", "scipy", "patsy", "click", "rich", "bin"}
    parts = {p for n in names for p in n.split("/")[:-1]}
    assert "tests" not in parts
    # bytecode for this interpreter only, next to every costwatch module (Lambda's code directory is read-only)
    tag = sys.implementation.cache_tag
    pycs = [n for n in names if n.endswith(".pyc")]
    assert pycs and all(f".{tag}." in n for n in pycs)
    sources = [n for n in names if n.startswith("costwatch/") and n.endswith(".py")]
    assert all(importlib.util.cache_from_source(n) in set(pycs) for n in sources)
    assert sum(i.file_size for i in infos) < LAMBDA_LIMIT
    assert tree_bytes(unpacked) == sum(i.file_size for i in infos)


CLEAN_RUN = textwrap.dedent('''
    import importlib.util, json, os, sys
    from pathlib import Path
    root = sys.argv[1]
    sys.path.insert(0, root)
    import costwatch.handler
    # the handler module itself imports only the standard library (the package __init__ may import more)
    handler_imports = [line.split()[1] for line in open(costwatch.handler.__file__)
                       if line.startswith(("import ", "from ")) and not line.startswith("from __future__")]
    import costwatch.run, costwatch.providers.aws, costwatch.notifiers.email, costwatch.state
    if os.path.exists(os.path.join(root, "costwatch", "notifiers", "slack.py")):
        import costwatch.notifiers.slack
    left_out = [m for m in ("statsmodels", "scipy", "click", "rich") if importlib.util.find_spec(m) is not None]
    out = costwatch.handler.handle({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}}, None)

    # the alert chart (matplotlib Agg, without fontTools' accelerators) from the same data
    from costwatch.charts import alert_chart
    from costwatch.config import load_config
    from costwatch.detect import detect
    from costwatch.providers.files import load_focus, load_usage
    cfg = load_config(Path(os.environ["COSTWATCH_CONFIG"]))
    here = Path(os.environ["COSTWATCH_CONFIG"]).parent
    det = detect(load_focus(here / "costs.csv"), load_usage(here / "usage.csv"), cfg)
    png = alert_chart(det, next(a for a in det.alerts if a.kind == "mining_suspected"), here / "a.png")
    with open(png, "rb") as f:
        magic = f.read(8)
    print("RESULT " + json.dumps({"summary": out, "handler_imports": handler_imports, "left_out": left_out,
                                  "png": magic == b"\\x89PNG\\r\\n\\x1a\\n",
                                  "path": [p for p in sys.path if "site-packages" in p]}))
''')


def test_artifact_runs_in_a_bare_interpreter(unpacked: Path, tmp_path: Path) -> None:
    """``python -I -S``: no site-packages, no PYTHON* variables; only the stdlib and the unpacked zip.  The
    handler runs a whole scheduled run there (files provider, sqlite state, stdout notifier), so every
    module a run needs is in the artifact, and it draws an alert chart."""
    from costwatch.demo import to_focus
    from costwatch.scenarios import generate

    sc = generate(seed=11, n_projects=4, days=45, end=pd.Timestamp.now(tz="UTC").floor("D"),
                  incident_kinds=("mining_new_nodes",))
    to_focus(sc.costs).to_csv(tmp_path / "costs.csv", index=False)
    usage = sc.usage.assign(timestamp=sc.usage["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    usage.to_csv(tmp_path / "usage.csv", index=False)
    (tmp_path / "costwatch.yaml").write_text(textwrap.dedent("""
        providers: [{type: files, costs: costs.csv, usage: usage.csv}]
        state: {backend: sqlite, path: state/state.db}
        notify: {stdout: true}
    """))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "COSTWATCH_CONFIG": str(tmp_path / "costwatch.yaml"), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    done = subprocess.run([sys.executable, "-I", "-S", "-c", CLEAN_RUN, str(unpacked)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert result["path"] == [] and result["left_out"] == []
    stdlib = set(sys.stdlib_module_names)
    assert all(m.split(".")[0] in stdlib for m in result["handler_imports"]), result["handler_imports"]
    s = result["summary"]
    assert s["status"] == "ok" and s["provider_errors"] == []
    assert s["alerts_by_kind"].get("mining_suspected", 0) >= 1 and s["delivered"] >= 1
    assert result["png"]
    logs = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert [d["message"] for d in logs if d.get("logger") == "costwatch"] == ["run finished"]


COLD_IMPORT = textwrap.dedent('''
    import json, sys, time
    root = sys.argv[1]
    sys.path.insert(0, root)
    t = time.perf_counter()
    import costwatch.handler, costwatch.run, costwatch.providers.aws, costwatch.notifiers.email, costwatch.state
    import costwatch.detect, costwatch.charts, pandas, boto3
    seconds = time.perf_counter() - t
    import importlib.util, os
    ours = [m for m in list(sys.modules.values())
            if (getattr(m, "__file__", None) or "").startswith(root) and m.__file__.endswith(".py")]
    missing = [m.__name__ for m in ours if not os.path.exists(importlib.util.cache_from_source(m.__file__))]
    print("RESULT " + json.dumps({"seconds": seconds, "modules": len(ours), "without_bytecode": missing[:10]}))
''')


def test_cold_start_reads_the_shipped_bytecode(unpacked: Path, tmp_path: Path) -> None:
    """What a cold start imports, from the unpacked artifact in a bare interpreter that may not write
    bytecode (``-B``, as Lambda's read-only code directory): every module comes with its .pyc.  The import
    time with the shipped bytecode and with it ignored (``PYTHONPYCACHEPREFIX`` elsewhere: every module
    compiled, as the artifact without bytecode did) is printed, not asserted."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    got = {}
    for label, extra in (("shipped bytecode", {}), ("compiling", {"PYTHONPYCACHEPREFIX": str(tmp_path / "none")})):
        flags = ["-S", "-B"] if extra else ["-I", "-S", "-B"]  # -I would ignore PYTHONPYCACHEPREFIX
        done = subprocess.run([sys.executable, *flags, "-c", COLD_IMPORT, str(unpacked)], capture_output=True,
                              text=True, env={**env, **extra}, cwd=tmp_path, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        got[label] = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    shipped = got["shipped bytecode"]
    assert shipped["modules"] > 100 and shipped["without_bytecode"] == [], shipped
    print(f"cold import from the artifact: {shipped['seconds']:.2f} s with its bytecode, "
          f"{got['compiling']['seconds']:.2f} s compiling ({shipped['modules']} modules)")


def test_config_asking_for_what_is_left_out_fails_the_build(tmp_path: Path) -> None:
    """Checked before anything is downloaded, with the flag that fixes it in the message."""
    stl = tmp_path / "stl.yaml"
    stl.write_text("detection: {band_method: stl}\nstate: {backend: dynamodb, table: t}\n")
    done = run_build("--out", str(tmp_path / "b1"), "--config", str(stl))
    assert done.returncode == 2 and "--with-stl" in done.stderr and not (tmp_path / "b1").exists()
    gcp = tmp_path / "gcp.yaml"
    gcp.write_text("providers: [{type: gcp, billing_table: p.d.t}]\nnotify: {slack: {webhook_url: https://x}}\n")
    done = run_build("--out", str(tmp_path / "b2"), "--config", str(gcp), "--extras", "aws")
    assert done.returncode == 2 and "--extras aws,gcp,slack" in done.stderr


# ------------------------------------------------------------------------------------------ serverless.yml


def _npm() -> str:
    npm = shutil.which("npm")
    assert npm is not None, "npm (Node 20+) is needed to package serverless.yml; COSTWATCH_SKIP_DEPLOY_TESTS=1 skips"
    return npm


@pytest.fixture(scope="module")
def osls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """osls exactly as package-lock.json pins it, installed outside the checkout."""
    where = tmp_path_factory.mktemp("osls")
    for name in ("package.json", "package-lock.json"):
        shutil.copy2(REPO / name, where / name)
    done = subprocess.run([_npm(), "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=where,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return where / "node_modules" / ".bin" / "osls"


@pytest.fixture(scope="module")
def template(osls: Path, local_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``osls package`` with fake credentials and every AWS endpoint and proxy pointing at a closed port: a
    package step that tried to reach AWS (an ${ssm:} or ${aws:accountId} variable) fails here."""
    service = tmp_path_factory.mktemp("service")
    shutil.copy2(REPO / "serverless.yml", service / "serverless.yml")
    (service / "build" / "lambda").mkdir(parents=True)
    shutil.copy2(local_artifact, service / "build" / "lambda" / "costwatch.zip")
    dead = "http://127.0.0.1:9"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(service), "AWS_ACCESS_KEY_ID": "AKIAFAKEFAKEFAKE",
           "AWS_SECRET_ACCESS_KEY": "fake", "AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": dead,
           "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
           "AWS_CONFIG_FILE": str(service / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(service / "none")}
    done = subprocess.run([str(osls), "package", "--stage", "ci", "--region", "eu-west-1",
                           "--param=schedule=rate(2 hours)", "--param=sesIdentity=alerts.example.org"],
                          cwd=service, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    doc: dict[str, Any] = json.loads((service / ".serverless/cloudformation-template-update-stack.json").read_text())
    return doc


def resources(tpl: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in tpl["Resources"].items() if v["Type"] == kind}


def statements(tpl: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in tpl["Resources"].values():
        props = r.get("Properties", {})
        if r["Type"] == "AWS::IAM::Role":
            docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
        elif r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            docs = [props["PolicyDocument"]]
        else:
            continue
        out += [s for d in docs for s in d["Statement"]]
    return out


def actions(st: dict[str, Any]) -> list[str]:
    a = st.get("Action", [])
    return [a] if isinstance(a, str) else list(a)


# the calls costwatch makes (README's IAM list), plus what Lambda itself needs: logs and the failure queue
EXPECTED_ACTIONS = {
    "ce:GetCostAndUsage", "organizations:ListAccounts", "organizations:ListTagsForResource",
    "organizations:ListAccountsForParent", "organizations:ListOrganizationalUnitsForParent",
    "ec2:DescribeRegions", "ec2:DescribeInstances", "cloudwatch:GetMetricData",
    "guardduty:ListDetectors", "guardduty:ListFindings", "guardduty:GetFindings", "sts:AssumeRole",
    "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query",
    "ssm:GetParameter", "ssm:GetParametersByPath", "kms:Decrypt", "ses:SendRawEmail", "sqs:SendMessage",
    "logs:CreateLogStream", "logs:CreateLogGroup", "logs:TagResource", "logs:PutLogEvents",
}
# APIs without resource-level permissions: the only ones allowed on Resource "*"
RESOURCE_STAR_OK = {"ce:GetCostAndUsage", "organizations:ListAccounts", "ec2:DescribeRegions",
                    "ec2:DescribeInstances", "cloudwatch:GetMetricData", "guardduty:ListDetectors"}


def test_iam_is_least_privilege(template: dict[str, Any]) -> None:
    sts = statements(template)
    assert sts and all(st["Effect"] == "Allow" and "NotAction" not in st and "NotResource" not in st for st in sts)
    every = [a for st in sts for a in actions(st)]
    assert [a for a in every if "*" in a] == []
    assert set(every) == EXPECTED_ACTIONS
    for st in sts:
        if st["Resource"] == "*" or st["Resource"] == ["*"]:
            assert set(actions(st)) <= RESOURCE_STAR_OK, st
    by_action = {a: st for st in sts for a in actions(st)}
    text = {a: json.dumps(st["Resource"]) for a, st in by_action.items()}
    assert by_action["dynamodb:PutItem"]["Resource"] == {"Fn::GetAtt": ["StateTable", "Arn"]}
    assert by_action["sqs:SendMessage"]["Resource"] == {"Fn::GetAtt": ["FailedRuns", "Arn"]}
    assert text["ssm:GetParameter"].count("parameter/costwatch/ci/config") == 1
    assert "parameter/costwatch/ci/secrets" in text["ssm:GetParametersByPath"] and "*\"" not in text["ssm:GetParameter"]
    assert "kms:ViaService" in json.dumps(by_action["kms:Decrypt"]["Condition"])
    assert text["ses:SendRawEmail"].endswith(':ses:eu-west-1:${AWS::AccountId}:identity/alerts.example.org"}')
    assert ":role/CostwatchReadOnly" in text["sts:AssumeRole"]


def test_state_table_is_the_layout_the_store_uses(template: dict[str, Any]) -> None:
    """Compared with what costwatch.state.create_dynamodb_table makes (in moto), not with a copy of it."""
    pytest.importorskip("moto")
    import boto3
    from moto import mock_aws

    from costwatch.state import create_dynamodb_table

    (table,) = resources(template, "AWS::DynamoDB::Table").values()
    props = table["Properties"]
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1", aws_access_key_id="testing",
                              aws_secret_access_key="testing")
        create_dynamodb_table(client, "reference")
        ref = client.describe_table(TableName="reference")["Table"]
        ttl = client.describe_time_to_live(TableName="reference")["TimeToLiveDescription"]
    assert props["KeySchema"] == ref["KeySchema"]
    assert sorted(props["AttributeDefinitions"], key=str) == sorted(ref["AttributeDefinitions"], key=str)
    assert props["BillingMode"] == ref["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert props["TimeToLiveSpecification"] == {"AttributeName": ttl["AttributeName"], "Enabled": True}
    assert ttl["AttributeName"] == "expires_at"


def test_function_schedule_and_failure_queue(template: dict[str, Any]) -> None:
    from costwatch.run import LOCK_SECONDS

    build = build_module()
    fn = resources(template, "AWS::Lambda::Function")["RunLambdaFunction"]
    p = fn["Properties"]
    assert p["Handler"] == "costwatch.handler.handle"
    assert p["Runtime"] == f"python{build.DEFAULT_PYTHON}"
    arch = {"manylinux2014_x86_64": "x86_64", "manylinux2014_aarch64": "arm64"}[build.DEFAULT_PLATFORM]
    assert p["Architectures"] == [arch]  # the wheels build.py packages run on this architecture only
    assert 1024 <= p["MemorySize"] <= 2048
    assert p["Timeout"] < LOCK_SECONDS  # a run killed by the timeout leaves a lock that lapses before the next
    env = p["Environment"]["Variables"]
    (table,) = resources(template, "AWS::DynamoDB::Table").values()
    assert env["COSTWATCH_STATE_TABLE"] == table["Properties"]["TableName"] == "costwatch-ci-state"
    assert env["COSTWATCH_CONFIG_SSM"] == "/costwatch/ci/config"
    assert env["COSTWATCH_SECRETS_PATH"] == "/costwatch/ci/secrets"

    (rule,) = resources(template, "AWS::Events::Rule").values()
    assert rule["Properties"]["ScheduleExpression"] == "rate(2 hours)" and rule["Properties"]["State"] == "ENABLED"
    assert rule["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": ["RunLambdaFunction", "Arn"]}
    perms = [r for r in resources(template, "AWS::Lambda::Permission").values()
             if r["Properties"]["FunctionName"] == {"Fn::GetAtt": ["RunLambdaFunction", "Arn"]}]
    assert [p["Properties"]["Principal"] for p in perms] == ["events.amazonaws.com"]

    (conf,) = [c for c in resources(template, "AWS::Lambda::EventInvokeConfig").values()
               if "FailedRuns" in json.dumps(c)]
    assert conf["Properties"]["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["FailedRuns", "Arn"]}
    (queue,) = resources(template, "AWS::SQS::Queue").values()
    assert queue["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    logs = resources(template, "AWS::Logs::LogGroup").values()
    assert [g["Properties"]["RetentionInDays"] for g in logs] == [30, 30]


def test_slack_answers_function_has_a_url_and_only_the_state_and_config(template: dict[str, Any]) -> None:
    """The second function (issue 19): Bolt behind a function URL, its own role with only the state table,
    its config and secrets (no cloud reads, no email), the same environment as the run."""
    fns = resources(template, "AWS::Lambda::Function")
    p = fns["SlackLambdaFunction"]["Properties"]
    assert p["Handler"] == "costwatch.surfaces.slack_lambda.handle" and p["Timeout"] <= 30
    assert p["Role"] == {"Fn::GetAtt": ["SlackAnswersRole", "Arn"]}
    assert p["Environment"]["Variables"] == fns["RunLambdaFunction"]["Properties"]["Environment"]["Variables"]
    (url,) = resources(template, "AWS::Lambda::Url").values()
    assert url["Properties"]["AuthType"] == "NONE"  # Slack cannot sign AWS requests; Bolt checks Slack's signature
    role = resources(template, "AWS::IAM::Role")["SlackAnswersRole"]
    granted = {a for pol in role["Properties"]["Policies"] for st in pol["PolicyDocument"]["Statement"]
               for a in actions(st)}
    assert granted == {"logs:CreateLogStream", "logs:PutLogEvents", "dynamodb:GetItem", "dynamodb:PutItem",
                       "dynamodb:DeleteItem", "dynamodb:Query", "ssm:GetParameter", "ssm:GetParametersByPath",
                       "kms:Decrypt"}
    assert "SlackAnswersUrl" in template["Outputs"]


def test_alarms_on_failed_runs_and_errors_notify_the_topic(template: dict[str, Any]) -> None:
    """The failure queue's depth and the run function's errors alarm; their actions are the SNS topic given as
    --param="alarmTopic=arn:…", and without one (as in CI) the alarms exist with no actions."""
    alarms = resources(template, "AWS::CloudWatch::Alarm")
    q, e = alarms["FailedRunsAlarm"]["Properties"], alarms["RunErrorsAlarm"]["Properties"]
    assert (q["Namespace"], q["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert q["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["FailedRuns", "QueueName"]}}]
    assert (e["Namespace"], e["MetricName"], e["Statistic"]) == ("AWS/Lambda", "Errors", "Sum")
    assert e["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "RunLambdaFunction"}}]
    for p in (q, e):
        assert p["ComparisonOperator"] == "GreaterThanThreshold" and p["Threshold"] == 0
        assert p["TreatMissingData"] == "notBreaching"
        for key in ("AlarmActions", "OKActions"):
            assert p[key] == {"Fn::If": ["HasAlarmTopic", ["none"], {"Ref": "AWS::NoValue"}]}
    # no topic given: the condition is false, so CloudFormation drops the actions
    assert template["Conditions"]["HasAlarmTopic"] == {"Fn::Not": [{"Fn::Equals": ["none", "none"]}]}


def test_dockerfile_not_needed(template: dict[str, Any]) -> None:
    """The zip fits, so the functions deploy the zip, not a container image."""
    for fn in resources(template, "AWS::Lambda::Function").values():
        assert "S3Key" in fn["Properties"]["Code"] and fn["Properties"]["Code"]["S3Key"].endswith("/costwatch.zip")
        assert "PackageType" not in fn["Properties"]


@pytest.fixture(autouse=True)
def _no_stray_output() -> Iterator[None]:
    """Nothing this module runs may write into the checkout: builds, npm and osls all work in tmp dirs."""
    watched = [REPO / n for n in (".serverless", "node_modules", "build", "src")]
    before = {p for p in watched if p.exists()}
    yield
    assert {p for p in watched if p.exists()} - before == set()
