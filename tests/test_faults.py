"""Fault injection: the whole ``costwatch run`` pipeline (sources.gather → detect → incidents.plan → outbox →
notifiers) against local fakes of every service it talks to, while one thing at a time goes wrong.

The world: AWS is a moto server behind a small fault-injecting HTTP proxy (Cost Explorer, EC2, CloudWatch;
a miner on new instances in a region the account never used), GCP is ``fake_gcp`` (BigQuery billing export
and Cloud Monitoring; a miner in asia-southeast1), Azure is ``fake_azure`` over TLS (usage details, VMs,
Monitor; a miner in Brazil South), Kubernetes is ``fake_kube``, Slack is ``fake_slack`` and mail is the
aiosmtpd server of ``smtp_server``.  Each provider's miner is an incident owned by its team, told on the
team's Slack channel and by mail: six notifications in a clean run.

For every fault the scenario asserts: the other providers still report, no alert is lost (each expected
notification is delivered, checked at the fake service, or pending in the outbox), none is delivered twice
(Slack messages counted by their metadata id, mails by Message-ID), and the exit code and the run summary say
what happened.  ``pytest tests/test_faults.py -s`` prints the table of faults and outcomes;
``python bench/faults.py`` runs the same scenarios and prints the same table.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("moto")
pytest.importorskip("slack_sdk")
pytest.importorskip("google.cloud.bigquery")
pytest.importorskip("azure.mgmt.consumption")
pytest.importorskip("aiosmtpd")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # bench/faults.py imports this module from outside pytest
    sys.path.insert(0, str(HERE))

import fake_azure as fa  # noqa: E402
import smtp_server  # noqa: E402
from fake_gcp import FakeBigQuery, FakeMonitoring, load, node_series, standard_row, vm_series  # noqa: E402
from fake_slack import Channel, FakeSlack  # noqa: E402

from costwatch.config import Config, parse_config  # noqa: E402
from costwatch.errors import CostwatchError  # noqa: E402
from costwatch.notifiers.email_render import message_id, msgid_domain  # noqa: E402
from costwatch.notify import Notification  # noqa: E402
from costwatch.run import RunLocked, RunResult, acquire_lock, build_notifiers, release_lock, run_once  # noqa: E402
from costwatch.state import SqliteStore, StateError  # noqa: E402

H = pd.Timedelta(hours=1)
MIN = pd.Timedelta(minutes=1)
ZERO = pd.Timedelta(0)
ACCOUNT = "123456789012"            # moto's account
EC2_SVC = "Amazon Elastic Compute Cloud - Compute"
AMI = "ami-12c6146b"
GCP_PROJECT = "ml-prod"
GCP_TABLE = "billing-proj.billing_ds.gcp_billing_export_v1_012345_6789AB_CDEF01"
AZ_TOKEN = "eyJ0eXAi.fake-bearer-token.c2VjcmV0-4711"
SUB = fa.sub_id(0xA)
DEADLINE = 30.0                    # seconds each provider may take in these runs (retry storms included)
SHORT_DEADLINE = 6.0               # ... in the scenarios where a provider never answers
PROVIDERS = ("aws", "gcp", "azure")
PROJECT = {"aws": ACCOUNT, "gcp": GCP_PROJECT, "azure": SUB}
TEAM = {"aws": ("team-aws", "C0AWS", "aws-team@example.com"), "gcp": ("team-gcp", "C0GCP", "gcp-team@example.com"),
        "azure": ("team-azure", "C0AZURE", "azure-team@example.com")}
FROM = "costwatch@example.com"


# ------------------------------------------------------------------------------------------ AWS fault proxy


@dataclass
class ProxyFault:
    match: re.Pattern[str]            # searched in "METHOD path X-Amz-Target body"
    status: int = 0
    body: bytes = b""
    ctype: str = "application/x-amz-json-1.1"
    hang: float = 0.0                 # hold the request this long (until release()), then reset it
    drop: bool = False                # reset the connection without answering
    times: int | None = 1             # None: every matching request


def aws_json_error(code: str, message: str) -> bytes:
    return json.dumps({"__type": code, "message": message}).encode()


def aws_xml_error(code: str, message: str) -> bytes:
    return (f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            "<RequestID>fault-proxy</RequestID></Response>").encode()


class FaultProxy:
    """An HTTP reverse proxy in front of the moto server that answers matching requests with a fault
    instead (a throttling error, a 5xx, a reset, a hang), the way a real AWS endpoint or a middlebox does."""

    def __init__(self, upstream: str) -> None:
        up = urlsplit(upstream)
        self.host, self.port_up = up.hostname or "127.0.0.1", int(up.port or 80)
        self.faults: list[ProxyFault] = []
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                key = f"{self.command} {self.path} {self.headers.get('X-Amz-Target', '')} {body[:400]!r}"
                fault = proxy._take(key)
                if fault is not None:
                    if fault.hang:
                        proxy._release.wait(fault.hang)
                    if fault.hang or fault.drop:
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.connection.close()
                        self.close_connection = True
                        return
                    self._answer(fault.status, {"Content-Type": fault.ctype}, fault.body)
                    return
                conn = http.client.HTTPConnection(proxy.host, proxy.port_up, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                    resp = conn.getresponse()
                    data = resp.read()
                    headers = {k: v for k, v in resp.getheaders()
                               if k.lower() not in ("transfer-encoding", "connection", "content-length")}
                    self._answer(resp.status, headers, data)
                finally:
                    conn.close()

            def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, match: str, **kw: Any) -> None:
        with self._lock:
            self.faults.append(ProxyFault(re.compile(match), **kw))

    def _take(self, key: str) -> ProxyFault | None:
        with self._lock:
            for f in self.faults:
                if (f.times is None or f.times > 0) and f.match.search(key):
                    if f.times is not None:
                        f.times -= 1
                    self.hits[f.match.pattern] += 1
                    return f
        return None

    def clear(self) -> None:
        """No more faults; requests held by a hang are let go (and reset)."""
        with self._lock:
            self.faults.clear()
        self._release.set()
        time.sleep(0.05)
        self._release.clear()

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------ the world


def _next_hour() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").floor("h") + H



def notify_config(slack: FakeSlack, smtp: smtp_server.SmtpServer, slack_timeout: float) -> dict[str, Any]:
    """Slack and email both on, at the local fakes: the one notify block every scenario world uses."""
    return {"slack": {"token": slack.token, "channel": "C0ALERTS", "api_url": slack.api_url,
                      "timeout": slack_timeout, "charts": False},
            "email": {"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "from_addr": FROM,
                      "starttls": False, "timeout": 2, "to": ["finops@example.com"]},
            "stdout": False}

class World:
    """Every fake service, loaded with three months of history and one miner per cloud, all as of ``now``
    (the next full hour: moto stamps instances with the wall clock)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.now = _next_hour()
        self._stack = contextlib.ExitStack()
        self._env: dict[str, str | None] = {}
        self._files: tuple[Path, pd.Timestamp] | None = None
        self.expected: dict[str, set[tuple[str, str]]] = {}

    # -------------------------------------------------------------- lifecycle

    def __enter__(self) -> World:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        for k, v in self._env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def _setenv(self, key: str, value: str) -> None:
        self._env.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def _start(self) -> None:
        from moto.server import ThreadedMotoServer

        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            self._env.setdefault(k, os.environ.pop(k, None))
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(self.dir / "no-aws-config"),
                     "AWS_SHARED_CREDENTIALS_FILE": str(self.dir / "no-aws-credentials"),
                     "AWS_EC2_METADATA_DISABLED": "true"}.items():
            self._setenv(k, v)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        self._stack.callback(moto.stop)
        host, port = moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        self.proxy = FaultProxy(self.moto_url)
        self._stack.callback(self.proxy.stop)
        self._setenv("AWS_ENDPOINT_URL", self.proxy.url)
        self._aws_story()

        self.bq = FakeBigQuery()
        self._stack.callback(self.bq.stop)
        self.mon = FakeMonitoring(page_size=500)
        self._stack.callback(self.mon.stop)
        self._gcp_story()

        cert = fa.make_cert(self.dir / "arm-tls")
        gen = fa.serve(AZ_TOKEN, cert)
        self.arm = next(gen)
        self._stack.callback(gen.close)  # type: ignore[attr-defined]  # a generator: closing stops the server
        self._azure_story()

    def _aws_story(self) -> None:
        """Three weeks of EC2 + S3 spend in us-east-1, web nodes on a daily CPU curve; for the last 8 hours
        new instances in ap-southeast-2 pinned at 99% (as in tests/test_handler.py)."""
        import boto3
        import requests
        from moto.ec2.models import ec2_backends

        now, today = self.now, self.now.floor("D")
        days = [(today - pd.Timedelta(days=21 - i)).date().isoformat() for i in range(21)]

        def ce(groups: dict[str, float], dim: str) -> dict[str, Any]:
            return {"GroupDefinitions": [{"Type": "DIMENSION", "Key": "LINKED_ACCOUNT"},
                                         {"Type": "DIMENSION", "Key": dim}],
                    "ResultsByTime": [{"TimePeriod": {"Start": d, "End": (pd.Timestamp(d) + pd.Timedelta(days=1))
                                                      .date().isoformat()}, "Total": {}, "Estimated": False,
                                       "Groups": [{"Keys": [ACCOUNT, k], "Metrics": {"UnblendedCost": {
                                           "Amount": f"{v:.4f}", "Unit": "USD"}}} for k, v in groups.items()]}
                                      for d in days], "DimensionValueAttributes": []}

        resp = requests.post(f"{self.moto_url}/moto-api/static/ce/cost-and-usage-results", timeout=10,
                             json={"results": [ce({EC2_SVC: 40.0, "Amazon Simple Storage Service": 3.0}, "SERVICE"),
                                               ce({"us-east-1": 43.0}, "REGION")]})
        assert resp.status_code == 201

        def launch(region: str, n: int, itype: str, tags: dict[str, str] | None = None) -> list[str]:
            ec2 = boto3.client("ec2", region_name=region, endpoint_url=self.moto_url)
            spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in (tags or {}).items()]}]
            got = ec2.run_instances(ImageId=AMI, MinCount=n, MaxCount=n, InstanceType=itype,
                                    **({"TagSpecifications": spec} if tags else {}))
            return [i["InstanceId"] for i in got["Instances"]]

        def cpu(region: str, series: dict[str, list[tuple[pd.Timestamp, float]]]) -> None:
            cw = boto3.client("cloudwatch", region_name=region, endpoint_url=self.moto_url)
            data = [{"MetricName": "CPUUtilization", "Dimensions": [{"Name": "InstanceId", "Value": iid}],
                     "Timestamp": t.to_pydatetime(), "Value": float(v), "Unit": "Percent"}
                    for iid, points in series.items() for t, v in points]
            for i in range(0, len(data), 500):
                cw.put_metric_data(Namespace="AWS/EC2", MetricData=data[i: i + 500])

        web = launch("us-east-1", 2, "m5.large", tags={"eks:cluster-name": "web"})
        miners = launch("ap-southeast-2", 3, "c5.4xlarge")
        self.aws_miners = miners
        for region, ids, age in (("us-east-1", web, pd.Timedelta(days=30)),
                                 ("ap-southeast-2", miners, pd.Timedelta(hours=9))):
            for iid in ids:
                ec2_backends[ACCOUNT][region].get_instance(iid).launch_time = (
                    (now - age).tz_convert(None).to_pydatetime())
        rng = np.random.default_rng(7)
        old = pd.date_range(now - pd.Timedelta(days=10), now - H, freq="h")
        cpu("us-east-1", {iid: [(t, 25 + 15 * np.sin(2 * np.pi * t.hour / 24) + rng.normal(0, 4)) for t in old]
                          for iid in web})
        new = pd.date_range(now - 8 * H, now - H, freq="h")
        cpu("ap-southeast-2", {iid: [(t, 99.0 + rng.normal(0, 0.2)) for t in new] for iid in miners})

    def _gcp_story(self) -> None:
        """30 days of one project in us-central1; since yesterday afternoon new VMs in asia-southeast1 flat at
        ~99% and yesterday's compute spend out of its band (as in tests/test_gcp_provider.py)."""
        now, today = self.now, self.now.floor("D")
        rng = np.random.default_rng(11)
        rows = []
        for d in pd.date_range(today - pd.Timedelta(days=30), today - pd.Timedelta(days=1), freq="D"):
            ds = d.date().isoformat()
            rows.append(standard_row(ds, GCP_PROJECT, "Compute Engine", 40.0 + rng.normal(0, 1.5), credits=[-4.0]))
            rows.append(standard_row(ds, GCP_PROJECT, "Cloud Storage", 3.0 + rng.normal(0, 0.1)))
        yesterday = (today - pd.Timedelta(days=1)).date().isoformat()
        rows.append(standard_row(yesterday, GCP_PROJECT, "Compute Engine", 160.0, region="asia-southeast1", hour=15))
        self.bq.tables[GCP_TABLE] = ("standard", rows)
        old = pd.date_range(now - pd.Timedelta(days=10), now - H, freq="h")
        for iid, name in {"5120000000000000001": "web-1", "5120000000000000002": "web-2"}.items():
            pts = [(t, min(1.0, max(0.0, (25 + 15 * math.sin(2 * math.pi * t.hour / 24) + rng.normal(0, 4)) / 100)))
                   for t in old]
            self.mon.series[GCP_PROJECT].append(vm_series(iid, name, "us-central1-a", "n2-standard-4", pts))
        new = pd.date_range(today - pd.Timedelta(hours=10), now - H, freq="h")
        for i in range(3):
            pts = [(t, 0.99 + rng.normal(0, 0.002)) for t in new]
            self.mon.series[GCP_PROJECT].append(vm_series(f"91{i:017d}", f"batch-{i}", "asia-southeast1-b",
                                                          "c2-standard-60", pts))
        self.mon.series[GCP_PROJECT].append(node_series("gke-ml-pool-x", "ml", "us-central1",
                                                        [(t, 0.3) for t in old[-48:]]))

    def _azure_story(self) -> None:
        """A month of web VMs in East US; since yesterday three new VMs in Brazil South pinned at ~99% and
        compute spend out of its band (as in tests/test_azure_provider.py)."""
        fake = self.arm.fake
        fake.add_subscription(SUB, "Payments Production")
        fake.page_size = 50
        fa.miner_story(fake, SUB, self.now, np.random.default_rng(11))

    # -------------------------------------------------------------- per scenario

    def providers(self, d: Path, tag: str, only: tuple[str, ...] = PROVIDERS) -> list[Any]:
        """Fresh providers (own day caches), so every run asks the fakes the same questions."""
        from google.auth.credentials import AnonymousCredentials

        from costwatch.providers.aws import AwsProvider
        from costwatch.providers.azure import AzureProvider
        from costwatch.providers.gcp import GcpProvider

        def clock() -> pd.Timestamp:
            return self.now

        cache = d / "cache"
        out: list[Any] = []
        if "aws" in only:
            out.append(AwsProvider(cache_path=cache / f"aws-{tag}.db", clock=clock, guardduty=False,
                                   regions=["us-east-1", "ap-southeast-2"]))
        if "gcp" in only:
            out.append(GcpProvider(cache_path=cache / f"gcp-{tag}.db", billing_table=GCP_TABLE, projects=[GCP_PROJECT],
                                   endpoints={"bigquery": self.bq.url, "monitoring": self.mon.url},
                                   credentials=AnonymousCredentials(), retry_initial=0.01, retry_deadline=3.0,
                                   clock=clock))
        if "azure" in only:
            out.append(AzureProvider(cache_path=cache / f"azure-{tag}.db", credential=fa.FakeCredential(AZ_TOKEN),
                                     base_url=self.arm.url, clock=clock, subscriptions=[SUB],
                                     client_options={"connection_verify": str(self.arm.ca_file), "retry_total": 2,
                                                     "retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}))
        return out

    def config(self, d: Path, slack: FakeSlack, smtp: smtp_server.SmtpServer, *, slack_timeout: float = 1.0,
               **extra: Any) -> Config:
        doc: dict[str, Any] = {
            "projects": {PROJECT[p]: {"owner": TEAM[p][0]} for p in PROVIDERS},
            "owners": {TEAM[p][0]: {"slack_channel": TEAM[p][1], "email": [TEAM[p][2]]} for p in PROVIDERS},
            "alerting": {"repeat_interval": "4h"},
            "notify": notify_config(slack, smtp, slack_timeout),
            "state": {"path": str(d / "state" / "state.db")},
        }
        for k, v in extra.items():
            doc[k] = {**doc.get(k, {}), **v} if isinstance(v, dict) else v
        return parse_config(yaml.safe_dump(doc))

    # -------------------------------------------------------------- the files world (for `costwatch run` subprocesses)

    def files_data(self) -> tuple[Path, pd.Timestamp]:
        """A labelled scenario written as a FOCUS export and a CPU CSV, for runs of the real CLI in a
        subprocess (which builds its providers from the config): seed 10's GCP miner, 3 h in."""
        if self._files is None:
            from costwatch.demo import to_focus
            from costwatch.scenarios import generate

            sc = generate(seed=10, n_projects=4, days=50, incident_kinds=("mining_new_nodes",))
            d = self.dir / "files-data"
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
            to_focus(sc.costs).to_csv(d / "costs.csv", index=False)
            u = sc.usage.copy()
            u["timestamp"] = u["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            u.to_csv(d / "usage.csv", index=False)
            inc = sc.incidents[sc.incidents["provider"] == "gcp"].iloc[0]
            self._files = (d, pd.Timestamp(inc.start) + 3 * H)
        return self._files

    def files_config(self, d: Path, slack: FakeSlack, smtp: smtp_server.SmtpServer, *,
                     slack_timeout: float = 1.0) -> tuple[Path, Config]:
        data, _ = self.files_data()
        doc = {
            "providers": [{"type": "files", "costs": str(data / "costs.csv"), "usage": str(data / "usage.csv")}],
            "alerting": {"repeat_interval": "4h"},
            "notify": notify_config(slack, smtp, slack_timeout),
            "state": {"path": str(d / "state" / "state.db")},
        }
        path = d / "costwatch.yaml"
        path.write_text(yaml.safe_dump(doc))
        os.chmod(path, 0o644)
        return path, parse_config(path.read_text())


# ------------------------------------------------------------------------------------------ one scenario


@dataclass
class Row:
    """One line of the table."""

    name: str
    layer: str
    fault: str
    outcome: str
    exit: str
    reported: str
    delivered: int
    pending: int
    duplicates: int
    lost: int
    seconds: float


@dataclass
class Audit:
    delivered: int = 0          # notifications the fake services have (checked there, not just in the outbox)
    pending: int = 0            # still queued for a later run
    failed: int = 0
    duplicates: int = 0         # extra copies at the services
    lost: list[str] = field(default_factory=list)


def _exit(outcome: RunResult | BaseException) -> int:
    """What `costwatch run` exits with for this outcome (cli.run: CostwatchError -> 2)."""
    if isinstance(outcome, RunResult):
        return outcome.exit_code
    return 2 if isinstance(outcome, CostwatchError) else 1


class Case:
    """A fresh Slack, mail server, state and config for one scenario; runs the pipeline and audits it."""

    def __init__(self, world: World, d: Path, *, files: bool = False, slack_timeout: float = 1.0) -> None:
        self.w, self.d = world, d
        self._stack = contextlib.ExitStack()
        channels = [Channel(TEAM[p][1], TEAM[p][0]) for p in PROVIDERS] + [Channel("C0ALERTS", "alerts")]
        self.slack = self._stack.enter_context(FakeSlack(channels=channels))
        self.smtp = smtp_server.start()
        self._stack.callback(self.smtp.stop)
        self.files = files
        if files:
            self.config_path, self.cfg = world.files_config(d, self.slack, self.smtp, slack_timeout=slack_timeout)
            self.as_of = world.files_data()[1]
        else:
            self.cfg = world.config(d, self.slack, self.smtp, slack_timeout=slack_timeout)
            self.as_of = world.now
        self.state = Path(self.cfg.state.path)
        self.waits: list[float] = []
        self.runs = 0
        self.seconds: list[float] = []

    def close(self) -> None:
        self._stack.close()

    def run(self, at: pd.Timedelta = ZERO, *, only: tuple[str, ...] = PROVIDERS, deadline: float = DEADLINE,
            store: Any = None, lock_owner: str | None = None, cfg: Config | None = None) -> RunResult | BaseException:
        """One run at ``as_of + at`` (the data's end stays ``as_of``); an exception is returned, not raised."""
        self.runs += 1
        providers = None if self.files else self.w.providers(self.d, f"run{self.runs}", only)
        t0 = time.monotonic()
        try:
            return run_once(cfg or self.cfg, now=self.as_of + at, as_of=self.as_of, providers=providers,
                            notifiers=build_notifiers(cfg or self.cfg), store=store, charts=False,
                            lock_owner=lock_owner, sleep=self.waits.append, provider_deadline=deadline)
        except (CostwatchError, sqlite3.Error) as e:
            return e
        finally:
            self.seconds.append(time.monotonic() - t0)

    def cli(self, at: pd.Timestamp, *, obey: bool = False) -> subprocess.Popen[str]:
        """`costwatch run` in a subprocess, for kills and permissions; ``obey``: as root, without the
        capabilities that let root ignore file permissions."""
        env = {**os.environ, "MPLCONFIGDIR": str(self.d / "mpl"), "HOME": str(self.d)}
        (self.d / "mpl").mkdir(exist_ok=True)

        return subprocess.Popen(
            [sys.executable, "-m", "costwatch.cli", "run", "--config", str(self.config_path), "--as-of",
             at.strftime("%Y-%m-%dT%H:%M:%SZ"), "--no-charts"], env=env, cwd=str(self.d), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_obey_permissions if obey else None)

    # -------------------------------------------------------------- checking

    def audit(self, expect: set[str] | None = None) -> Audit:
        """Every expected notification (per provider whose alert must not be lost) delivered (checked at the
        fake) or pending; nothing at a fake twice."""
        out = Audit()
        store = SqliteStore(self.state)
        try:
            recs = {r.key: r for r in store.scan("outbox")}
        finally:
            store.close()
        posted = Counter(m["metadata"]["event_payload"]["id"] for ch in self.slack.channels
                         for m in self.slack.messages(ch) if m.get("metadata"))
        mailed = Counter(str(r.message["Message-ID"]) for r in self.smtp.messages)
        out.duplicates = sum(c - 1 for c in posted.values()) + sum(c - 1 for c in mailed.values())
        domain = msgid_domain(FROM)

        def at_service(n: Notification) -> bool:
            return posted[n.id] > 0 if n.target.channel == "slack" else mailed[message_id(n, domain)] > 0

        def fate(key: str) -> str:
            r = recs[key]
            st = str(r.doc.get("status"))
            if st == "digested":
                return fate(r.doc["digest"]) if r.doc.get("digest") in recs else "lost"
            n = Notification.from_json(r.doc["notification"])
            if st == "delivered":
                return "delivered" if at_service(n) else "lost"
            return st if st in ("pending", "failed") else ("pending" if st == "sending" else "lost")

        fates = {k: fate(k) for k, r in recs.items() if r.doc.get("status") != "digested"}
        out.delivered = sum(v == "delivered" for v in fates.values())
        out.pending = sum(v == "pending" for v in fates.values())
        out.failed = sum(v == "failed" for v in fates.values())
        out.lost += [f"{k}: marked delivered but not at the service" for k, v in fates.items() if v == "lost"]
        for (project, target) in self.expected(expect):
            found = [fate(k) for k, r in recs.items()
                     if (n := Notification.from_json(r.doc["notification"])).event == "firing"
                     and n.target.key == target and any(a.get("project") == project for a in n.alerts)]
            if not any(f in ("delivered", "pending", "failed") for f in found):
                out.lost.append(f"{project} -> {target}: {found or 'never queued'}")
        return out

    def expected(self, providers: set[str] | None) -> set[tuple[str, str]]:
        """(project, target) of the first message of every incident a clean run produces."""
        key = "files" if self.files else "clouds"
        if key not in self.w.expected:
            self.w.expected[key] = _clean_run(self.w, self.files)
        want = self.w.expected[key]
        if self.files or providers is None:
            return want
        return {(p, t) for p, t in want if any(PROJECT[x] == p for x in providers)}


def _clean_run(world: World, files: bool) -> set[tuple[str, str]]:
    d = Path(tempfile.mkdtemp(prefix="clean-", dir=world.dir))
    case = Case(world, d, files=files)
    try:
        res = case.run()
        assert isinstance(res, RunResult), res
        store = SqliteStore(case.state)
        try:
            out = set()
            for r in store.scan("outbox"):
                n = Notification.from_json(r.doc["notification"])
                if n.event == "firing":
                    out.add((str(n.alerts[0].get("project")), n.target.key))
            return out
        finally:
            store.close()
    finally:
        case.close()


def reported(res: RunResult | BaseException) -> set[str]:
    if not isinstance(res, RunResult) or res.detection is None:
        return set()
    return {a.provider for a in res.detection.alerts}


def lines(res: RunResult | BaseException) -> str:
    return "\n".join(res.lines()) if isinstance(res, RunResult) else f"{type(res).__name__}: {res}"


def row(case: Case, name: str, layer: str, fault: str, outcome: str,
        exits: Sequence[RunResult | BaseException | str], audit: Audit, seen: set[str]) -> Row:
    """``exits``: each run's outcome (its exit code is derived) or the exit status as text."""
    codes = [e if isinstance(e, str) else str(_exit(e)) for e in exits]
    return Row(name=name, layer=layer, fault=fault, outcome=outcome, exit=" → ".join(codes),
               reported=",".join(p for p in PROVIDERS if p in seen) or "-", delivered=audit.delivered,
               pending=audit.pending, duplicates=audit.duplicates, lost=len(audit.lost),
               seconds=round(sum(case.seconds), 1))


def check(audit: Audit, *, pending: int | None = None) -> None:
    assert audit.duplicates == 0, "delivered twice"
    assert not audit.lost, audit.lost
    if pending is not None:
        assert audit.pending == pending, (audit.pending, pending)


# ------------------------------------------------------------------------------------------ the scenarios

Scenario = Callable[[World, Path], Row]
SCENARIOS: list[tuple[str, Scenario]] = []


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS.append((fn.__name__.removeprefix("s_"), fn))
    return fn


@contextlib.contextmanager
def _case(world: World, d: Path, **kw: Any) -> Iterator[Case]:
    case = Case(world, d, **kw)
    try:
        yield case
    finally:
        case.close()


@scenario
def s_baseline(w: World, d: Path) -> Row:
    with _case(w, d) as c:
        res = c.run()
        a = c.audit(set(PROVIDERS))
        assert reported(res) == set(PROVIDERS) and not res.provider_errors  # type: ignore[union-attr]
        assert _exit(res) == 0 and a.delivered == 6
        check(a, pending=0)
        again = c.run(10 * MIN)  # a retried run: nothing new
        assert isinstance(again, RunResult) and again.queued == 0 and again.delivery.delivered == 0
        check(c.audit(set(PROVIDERS)))
        return row(c, "no fault", "-", "a clean run, then the same run again", "6 delivered once; the repeat run "
                   "queues and sends nothing", [res, again], a, reported(res))


# -- providers


def _provider_fault(w: World, d: Path, name: str, layer: str, fault: str, faulted: str, inject: Callable[[], None],
                    clear: Callable[[], None], expect_error: str | None, all_report: bool = False,
                    deadline: float = DEADLINE) -> Row:
    with _case(w, d) as c:
        inject()
        try:
            res = c.run(deadline=deadline)
        finally:
            clear()
        assert isinstance(res, RunResult), res
        seen = reported(res)
        others = set(PROVIDERS) - {faulted}
        assert others <= seen, (seen, res.provider_errors)
        if all_report:
            assert seen == set(PROVIDERS) and not res.provider_errors, res.provider_errors
        if expect_error is not None:
            errs = [e for e in res.provider_errors if e.startswith(faulted)]
            assert errs and all(re.search(expect_error, e) for e in errs), res.provider_errors
            assert all(e.startswith(faulted) for e in res.provider_errors), res.provider_errors
            assert any(f"missing data: {faulted}" in line for line in res.lines())
        assert res.exit_code == 0
        a = c.audit(seen if all_report else others)
        check(a, pending=0)
        if expect_error is None:
            outcome = f"retried inside the provider; all {len(seen)} providers report, {a.delivered} delivered"
        else:
            first = next(e for e in res.provider_errors if e.startswith(faulted))
            outcome = (f"summary: \"missing data: {_short(first)}\"; {len(seen)} providers report"
                       f"{' (' + faulted + ' from its other part)' if faulted in seen else ''}, "
                       f"{a.delivered} delivered")
        return row(c, name, layer, fault, outcome, [res], a, seen)


def _short(text: str, n: int = 90) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


@scenario
def s_aws_throttled(w: World, d: Path) -> Row:
    return _provider_fault(
        w, d, "aws throttled", "provider", "Cost Explorer answers ThrottlingException 3 times", "aws",
        lambda: w.proxy.fail("GetCostAndUsage", status=400, times=3,
                             body=aws_json_error("ThrottlingException", "Rate exceeded")),
        w.proxy.clear, None, all_report=True)


@scenario
def s_aws_5xx_burst(w: World, d: Path) -> Row:
    def inject() -> None:
        w.proxy.fail("GetCostAndUsage", status=503, times=2, body=aws_json_error("ServiceUnavailable", "down"))
        w.proxy.fail("DescribeInstances", status=500, times=2, ctype="text/xml",
                     body=aws_xml_error("InternalError", "An internal error has occurred"))

    return _provider_fault(w, d, "aws 5xx burst", "provider", "Cost Explorer 503 ×2, EC2 DescribeInstances 500 ×2",
                           "aws", inject, w.proxy.clear, None, all_report=True)


@scenario
def s_aws_reset_burst(w: World, d: Path) -> Row:
    return _provider_fault(w, d, "aws connection resets", "provider", "Cost Explorer connections reset ×2", "aws",
                           lambda: w.proxy.fail("GetCostAndUsage", drop=True, times=2), w.proxy.clear, None,
                           all_report=True)


@scenario
def s_aws_hangs(w: World, d: Path) -> Row:
    """Every AWS request hangs: the provider deadline cuts it off, the run does not wait for botocore's 60 s
    read timeout times 8 attempts."""
    row_ = _provider_fault(w, d, "aws hangs", "provider", "every AWS request hangs (no answer)", "aws",
                           lambda: w.proxy.fail(".", hang=120, times=None), w.proxy.clear,
                           rf"aws costs, usage, findings: timed out after {SHORT_DEADLINE:g}s", deadline=SHORT_DEADLINE)
    assert row_.seconds < SHORT_DEADLINE + 20, row_.seconds
    return row_


@scenario
def s_aws_down(w: World, d: Path) -> Row:
    return _provider_fault(w, d, "aws unreachable", "provider", "every AWS connection reset", "aws",
                           lambda: w.proxy.fail(".", drop=True, times=None), w.proxy.clear,
                           r"cannot reach|timed out after|failed", deadline=SHORT_DEADLINE)


@scenario
def s_gcp_throttled(w: World, d: Path) -> Row:
    def inject() -> None:
        w.bq.fail(429, load("bq_error_rate_limit.json"), times=2, headers={"Retry-After": "0"}, path=r"/queries$")
        w.mon.throttle_next = 2

    def clear() -> None:
        w.bq._faults.clear()
        w.mon.throttle_next = 0

    return _provider_fault(w, d, "gcp throttled", "provider", "BigQuery 429 ×2, Monitoring RESOURCE_EXHAUSTED ×2",
                           "gcp", inject, clear, None, all_report=True)


@scenario
def s_gcp_bigquery_down(w: World, d: Path) -> Row:
    err = {"error": {"code": 503, "message": "The service is currently unavailable.", "status": "UNAVAILABLE",
                     "errors": [{"reason": "backendError", "message": "unavailable"}]}}
    return _provider_fault(w, d, "gcp billing export down", "provider", "BigQuery answers 503 to everything",
                           "gcp", lambda: w.bq.fail(503, err, times=10_000), w.bq._faults.clear, r"gcp costs: ")


@scenario
def s_azure_throttled(w: World, d: Path) -> Row:
    return _provider_fault(
        w, d, "azure throttled", "provider", "usage details 429 + Retry-After: 1, ×2", "azure",
        lambda: w.arm.fake.fail("GET", r"/providers/Microsoft\.Consumption/usageDetails$", 429, times=2,
                                headers={"Retry-After": "1"}),
        w.arm.fake.faults.clear, None, all_report=True)


@scenario
def s_azure_down(w: World, d: Path) -> Row:
    def inject() -> None:
        w.arm.fake.fail("GET", r"/providers/Microsoft\.Consumption/usageDetails$", 503)
        w.arm.fake.fail("GET", r"/providers/Microsoft\.Compute/", 503)

    return _provider_fault(w, d, "azure down", "provider", "ARM answers 503 to usage details and VM lists",
                           "azure", inject, w.arm.fake.faults.clear, r"azure (costs|usage): ")


@scenario
def s_kubernetes_down(w: World, d: Path) -> Row:
    from fake_kube import FakeKube

    with _case(w, d) as c:
        kube = FakeKube(token="kube-t0ken")
        with kube:
            kubeconfig = kube.kubeconfig(d / "kubeconfig", context="prod-eks")
        # the API server is gone (shut down above): connections are refused
        cfg = w.config(d, c.slack, c.smtp, kubernetes={"clusters": [
            {"name": "prod-eks", "context": "prod-eks", "project": ACCOUNT}]})
        old = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(kubeconfig)
        try:
            res = c.run(cfg=cfg)
        finally:
            if old is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = old
        assert isinstance(res, RunResult), res
        seen = reported(res)
        assert seen == set(PROVIDERS)
        kerr = [e for e in res.provider_errors if e.startswith("kubernetes prod-eks")]
        assert kerr and "unavailable" in kerr[0], res.provider_errors
        a = c.audit(set(PROVIDERS))
        check(a, pending=0)
        assert res.exit_code == 0 and a.delivered == 6
        posts = [m for m in c.slack.messages("C0AWS") if m.get("metadata")]
        assert "prod-eks" in str(posts[0].get("blocks"))  # the owner is told the cluster could not be read
        return row(c, "kubernetes unreachable", "provider", "the cluster's API server refuses connections",
                   f"summary: \"missing data: {_short(kerr[0], 70)}\"; the mining alert still goes, naming the "
                   f"cluster; {a.delivered} delivered", [res], a, seen)


# -- delivery


def _delivery_fault(w: World, d: Path, name: str, fault: str, inject: Callable[[Case], None], *,
                    first_pending: int, error: str | None, later: pd.Timedelta = 20 * MIN,
                    between: Callable[[Case], None] | None = None, slack_timeout: float = 1.0,
                    outcome: str = "", after: Callable[[Case], None] | None = None) -> Row:
    with _case(w, d, slack_timeout=slack_timeout) as c:
        inject(c)
        first = c.run()
        assert isinstance(first, RunResult), first
        assert reported(first) == set(PROVIDERS)
        a1 = c.audit(set(PROVIDERS))
        check(a1, pending=first_pending)
        assert first.exit_code == 0
        assert first.delivery.pending == first_pending
        if error is not None:  # said in the summary: as a retry that worked, or as what is still pending
            told = first.delivery.errors + first.delivery.retried
            assert any(re.search(error, e) for e in told), told
            assert any(re.search(error, line) for line in first.lines())
        runs: list[RunResult | BaseException] = [first]
        if between is not None:
            between(c)
        if first_pending:
            second = c.run(later)
            assert isinstance(second, RunResult), second
            runs.append(second)
            assert second.delivery.pending == 0 and second.exit_code == 0
        a = c.audit(set(PROVIDERS))
        check(a, pending=0)
        assert a.delivered == 6
        if after is not None:
            after(c)
        said = next((e for e in first.delivery.retried + first.delivery.errors if re.search(error or "$^", e)), "")
        text = outcome or (f"run 1: {first.delivery.summary()}" + (f" — \"{_short(said, 70)}\"" if said else "")
                           + (f"; run 2: {runs[-1].delivery.summary()}" if len(runs) > 1 else ""))  # type: ignore[union-attr]
        return row(c, name, "delivery", fault, text, runs, a, reported(first))


@scenario
def s_slack_429(w: World, d: Path) -> Row:
    return _delivery_fault(w, d, "slack rate limited", "chat.postMessage 429 Retry-After: 1, ×3 (the in-run "
                           "retries too)", lambda c: c.slack.fail("chat.postMessage", status=429, retry_after=1,
                                                                  times=3),
                           first_pending=1, error=r"rate limited by Slack; retry after 1s")


@scenario
def s_slack_5xx(w: World, d: Path) -> Row:
    return _delivery_fault(w, d, "slack 5xx burst", "chat.postMessage HTTP 503 ×2",
                           lambda c: c.slack.fail("chat.postMessage", status=503, times=2),
                           first_pending=0, error=r"Slack answered HTTP 503; will retry")


@scenario
def s_slack_timeout(w: World, d: Path) -> Row:
    return _delivery_fault(w, d, "slack timeout", "chat.postMessage hangs 3 s (client timeout 1 s), not posted",
                           lambda c: c.slack.fail("chat.postMessage", hang=3),
                           first_pending=0, error=r"no answer within 1s")


@scenario
def s_slack_reset(w: World, d: Path) -> Row:
    return _delivery_fault(w, d, "slack connection reset", "chat.postMessage connection reset ×2",
                           lambda c: c.slack.fail("chat.postMessage", drop=True, times=2),
                           first_pending=0, error=r"could not reach Slack \(connection reset\)")


@scenario
def s_slack_answer_lost(w: World, d: Path) -> Row:
    r = _delivery_fault(w, d, "slack answer lost", "message posted, then the answer hangs past the timeout",
                        lambda c: c.slack.fail("chat.postMessage", accept=True, hang=3),
                        first_pending=0, error=r"no answer within 1s",
                        outcome="the retry finds the message by its metadata id (conversations.history): marked "
                                "delivered, not reposted",
                        after=lambda c: _looked_up(c))
    return r


def _looked_up(c: Case) -> None:
    assert c.slack.calls("conversations.history"), "the retry did not look for the earlier post"
    assert len(c.slack.calls("chat.postMessage")) == 3  # one post per channel, the lost answer's included


@scenario
def s_slack_down(w: World, d: Path) -> Row:
    def heal(c: Case) -> None:
        posts = len(c.slack.calls("chat.postMessage"))
        assert posts == 2 * 3, posts  # two targets tried (3 attempts each), then Slack is left alone
        with c.slack._lock:
            c.slack._faults.clear()

    return _delivery_fault(w, d, "slack down", "every chat.postMessage connection reset",
                           lambda c: c.slack.fail("chat.postMessage", drop=True, times=1000),
                           first_pending=3, error=r"not tried this run", between=heal,
                           outcome="2 channels tried, then Slack left alone for the run (3 pending, mail "
                                   "delivered); the next run posts the 3")


def _restart_smtp(c: Case) -> None:
    c.smtp.start()  # on the same port


@scenario
def s_smtp_down(w: World, d: Path) -> Row:
    return _delivery_fault(w, d, "mail server down", "SMTP server stopped (connection refused)",
                           lambda c: c.smtp.stop(), first_pending=3, error=r"refused the connection",
                           between=_restart_smtp)


@scenario
def s_smtp_4xx(w: World, d: Path) -> Row:
    return _delivery_fault(w, d, "mail 451 at RCPT", "RCPT answered 451 4.3.0 once",
                           lambda c: c.smtp.fail("rcpt", "451 4.3.0 try again later"),
                           first_pending=0, error=r"temporarily refused every recipient")


@scenario
def s_smtp_5xx(w: World, d: Path) -> Row:
    with _case(w, d) as c:
        c.smtp.fail("data", "554 5.7.1 message rejected as spam")
        res = c.run()
        assert isinstance(res, RunResult), res
        a = c.audit(set(PROVIDERS))
        # the 5 notifications of the run, plus the fallback notice that email is broken (through Slack)
        assert a.duplicates == 0 and a.failed == 1 and a.delivered == 6 and not a.lost
        assert res.exit_code == 1 and res.delivery.stuck == 1 and list(res.broken_channels) == ["email"]
        assert any("rejected the message" in e for e in res.delivery.errors)
        assert any("stuck" in line for line in res.lines())
        return row(c, "mail 554 at DATA", "delivery", "DATA answered 554 5.7.1 (permanent)",
                   "failed for good, kept in the outbox and told on Slack (fallback); exit 1: \"1 notification(s) "
                   "stuck … see `costwatch outbox`\"", [res], a, reported(res))


@scenario
def s_killed_between_send_and_mark(w: World, d: Path) -> Row:
    """`costwatch run` in a subprocess, SIGKILLed while Slack has taken the post but not yet answered: the
    item is left "sending".  A run inside the lease leaves it alone; after the lease the message is found by
    its metadata id and marked delivered, not posted again; everything else the killed run had queued goes."""
    with _case(w, d, files=True, slack_timeout=60) as c:
        c.slack.fail("chat.postMessage", accept=True, hang=60)
        proc = c.cli(c.as_of)
        deadline = time.monotonic() + 90
        while not any(m.get("metadata") for ch in c.slack.channels for m in c.slack.messages(ch)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never posted"
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        c.seconds.append(0.0)
        store = SqliteStore(c.state)
        try:
            statuses = Counter(str(r.doc.get("status")) for r in store.scan("outbox"))
        finally:
            store.close()
        assert statuses["sending"] == 1, statuses
        inside = c.run(2 * MIN)       # the killed run might still be alive: leave its item alone
        assert isinstance(inside, RunResult), inside
        after = c.run(15 * MIN)       # past the lease: reconcile
        assert isinstance(after, RunResult), after
        a = c.audit()
        check(a, pending=0)
        assert after.exit_code == 0
        n = len(c.expected(None))
        assert a.delivered == n, (a.delivered, n)
        return row(c, "killed between send and mark", "process", "SIGKILL while Slack holds the answer to a "
                   "post it took", f"1 item left \"sending\"; a run 2 min later leaves it (lease); 15 min later it "
                   f"is found by metadata id and marked delivered: {n} delivered once", ["killed", inside, after], a,
                   reported(after))


# -- state


def _obey_permissions() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER from the bounding
    set, so root (as in this container) is held to file permissions like any user (`setpriv
    --bounding-set=-dac_override,...`)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _hold_write_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding SQLite's write lock on the state file (BEGIN IMMEDIATE, then sleeping)."""
    code = ("import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n"
            "c.execute('COMMIT')\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


def _init_state(path: Path) -> None:
    SqliteStore(path).close()


@scenario
def s_state_locked_briefly(w: World, d: Path) -> Row:
    with _case(w, d) as c:
        _init_state(c.state)
        holder = _hold_write_lock(c.state, 2.0)
        res = c.run(lock_owner="host-a:1")
        holder.wait(30)
        assert isinstance(res, RunResult), res
        a = c.audit(set(PROVIDERS))
        check(a, pending=0)
        assert res.exit_code == 0 and a.delivered == 6
        return row(c, "state locked 2 s", "state", "another process holds SQLite's write lock for 2 s",
                   f"the run waits for it (busy timeout) and completes: {res.delivery.summary()}", [res], a,
                   reported(res))


@scenario
def s_state_locked(w: World, d: Path) -> Row:
    with _case(w, d) as c:
        _init_state(c.state)
        holder = _hold_write_lock(c.state, 120.0)
        store = SqliteStore(c.state)
        store._db.execute("PRAGMA busy_timeout = 1000")  # the shipped 30 s, shortened for the test
        try:
            first = c.run(store=store, lock_owner="host-a:1")
        finally:
            store.close()
            holder.kill()
            holder.wait(10)
        assert isinstance(first, StateError), first
        assert "database is locked" in str(first) and "another process holds a write lock" in str(first)
        a1 = c.audit(set(PROVIDERS))
        assert a1.delivered == 0 and a1.duplicates == 0
        second = c.run(5 * MIN, lock_owner="host-a:2")
        assert isinstance(second, RunResult), second
        a = c.audit(set(PROVIDERS))
        check(a, pending=0)
        assert second.exit_code == 0 and a.delivered == 6
        return row(c, "state locked", "state", "another process holds SQLite's write lock past the busy timeout",
                   f"StateError, exit 2: \"{_short(str(first), 80)}\"; nothing sent; the next run sends all 6",
                   [first, second], a, reported(second))


@scenario
def s_run_locked(w: World, d: Path) -> Row:
    with _case(w, d) as c:
        store = SqliteStore(c.state)
        try:
            assert acquire_lock(store, "other-host:4242")
            first = c.run(lock_owner="this-host:1")
            assert isinstance(first, RunLocked), first
            assert c.audit(set(PROVIDERS)).delivered == 0 and c.slack.calls("chat.postMessage") == []
            release_lock(store, "other-host:4242")
        finally:
            store.close()
        second = c.run(5 * MIN, lock_owner="this-host:2")
        assert isinstance(second, RunResult), second
        a = c.audit(set(PROVIDERS))
        check(a, pending=0)
        assert a.delivered == 6
        return row(c, "run lock held", "state", "another `costwatch run` holds the run lock",
                   f"RunLocked, exit 75: \"{_short(str(first), 60)}\"; did nothing; the next run sends all 6",
                   [first, second], a, reported(second))


def _read_only(w: World, d: Path, name: str, folder_too: bool) -> Row:
    """The state file (and its folder) made read-only (chmod) for `costwatch run`, which, when the tests run
    as root, is started without the capabilities that let root ignore permissions."""
    with _case(w, d, files=True) as c:
        state_dir = c.state.parent
        _init_state(c.state)
        os.chmod(c.state, 0o444)
        if folder_too:
            os.chmod(state_dir, 0o555)
        try:
            t0 = time.monotonic()
            try:
                proc = c.cli(c.as_of, obey=os.geteuid() == 0)
            except subprocess.SubprocessError:  # root without CAP_SETPCAP: cannot be held to permissions
                pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: chmod would not bind")
            out, err = proc.communicate(timeout=180)
            c.seconds.append(time.monotonic() - t0)
        finally:
            os.chmod(state_dir, 0o755)
            os.chmod(c.state, 0o644)
        assert proc.returncode == 2, (proc.returncode, out, err)
        said = next(line for line in err.splitlines() if "error" in line)
        assert "state" in said and re.search(r"read-only|readonly|permissions", said), err
        assert c.slack.calls("chat.postMessage") == [] and c.smtp.messages == []
        t0 = time.monotonic()
        proc = c.cli(c.as_of + 10 * MIN)
        out2, err2 = proc.communicate(timeout=180)
        c.seconds.append(time.monotonic() - t0)
        assert proc.returncode == 0, (out2, err2)
        a = c.audit()
        check(a, pending=0)
        n = len(c.expected(None))
        assert a.delivered == n
        said = re.sub(r"/\S*/state\.db", ".../state.db", said)
        what = "chmod 444 state.db and 555 its folder" if folder_too else "chmod 444 state.db (folder writable)"
        return row(c, name, "state", f"{what}, then `costwatch run`",
                   f"exit 2: \"{_short(said, 150)}\"; nothing sent; after chmod back the next run sends all {n}",
                   ["2", "0"], a, {"gcp"})


@scenario
def s_state_read_only(w: World, d: Path) -> Row:
    return _read_only(w, d, "state read-only", folder_too=True)


@scenario
def s_state_file_read_only(w: World, d: Path) -> Row:
    return _read_only(w, d, "state file read-only", folder_too=False)


# ------------------------------------------------------------------------------------------ table


COLUMNS = ("fault", "what was injected", "outcome", "exit", "reported", "deliv.", "pend.", "dup", "lost", "s")


def table(rows: list[Row]) -> str:
    """A Markdown table of the scenarios' rows."""
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r.name} ({r.layer})", r.fault, r.outcome.replace("|", "/"), r.exit, r.reported,
                 str(r.delivered), str(r.pending), str(r.duplicates), str(r.lost), f"{r.seconds:g}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ pytest

ROWS: list[Row] = []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with World(tmp_path_factory.mktemp("faults-world")) as w:
        yield w
    if ROWS:
        print("\n\nfaults tried and what happened\n" + table(ROWS) + "\n")


@pytest.mark.parametrize("name,fn", SCENARIOS, ids=[n for n, _ in SCENARIOS])
def test_fault(world: World, tmp_path: Path, name: str, fn: Scenario) -> None:
    ROWS.append(fn(world, tmp_path))


# ------------------------------------------------------------------------------------------ the deadline itself


class _Slow:
    """Costs at once, usage never (or after ``usage_after`` seconds), findings raise a bug."""

    def __init__(self, name: str, usage_after: float | None = None, bug: bool = False) -> None:
        self.name, self.usage_after, self.bug = name, usage_after, bug
        self.release = threading.Event()

    def fetch_costs(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        from costwatch.model import empty_costs

        return empty_costs()

    def fetch_usage(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        from costwatch.model import empty_usage

        self.release.wait(self.usage_after)
        return empty_usage()

    def fetch_findings(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        if self.bug:
            raise KeyError("evidence")
        return pd.DataFrame()

    def stats(self) -> dict[str, int]:
        return {"requests": 1}


def test_deadline_reports_the_parts_that_did_not_finish() -> None:
    from costwatch import sources

    hung, ok, buggy = _Slow("hung"), _Slow("ok", usage_after=0), _Slow("buggy", usage_after=0, bug=True)
    t0 = time.monotonic()
    got = sources.gather([hung, ok, buggy], NOW_TS, NOW_TS + H, deadline=0.5)
    took = time.monotonic() - t0
    hung.release.set()
    assert took < 5
    assert got.errors[0] == ("hung usage, findings: timed out after 0.5s (the provider did not answer in time; "
                             "what it had fetched and the other providers are used)")
    assert got.failed == {"hung": ["usage", "findings"], "buggy": ["findings"]}
    assert got.errors[1].startswith("buggy findings: unexpected KeyError (a costwatch bug")
    assert got.stats == {"hung": {"requests": 1}, "ok": {"requests": 1}, "buggy": {"requests": 1}}
    assert not got.every_provider_failed([hung, ok, buggy])
    # without a deadline (the CLI's report): as before, in this thread, and strict raises
    with pytest.raises(KeyError):
        sources.gather([buggy], NOW_TS, NOW_TS + H, strict=True)


NOW_TS = pd.Timestamp("2026-11-20 06:00", tz="UTC")
