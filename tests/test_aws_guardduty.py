"""GuardDuty crypto-mining findings through boto3 over real HTTP.  moto has no ListFindings/GetFindings, so a
small local server speaks GuardDuty's REST-JSON protocol (camelCase bodies, ``x-amzn-ErrorType`` errors, the
50-id limits) and serves findings recorded in the API's wire shape (``tests/data/aws``).  The region of a
request is read from its SigV4 credential scope, as AWS routes it."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("boto3")

from costwatch.errors import ProviderError
from costwatch.providers.aws import AwsProvider
from costwatch.sources import gather

DATA = Path(__file__).parent / "data" / "aws"
DETECTOR = "12abc34d567e8fa901bc2d34e56789f0"
NOW = pd.Timestamp("2024-03-10 12:00", tz="UTC")


class FakeGuardDuty:
    """Per-region behaviour: ``detector`` (findings served), ``none`` (GuardDuty off), ``denied`` (403),
    ``broken`` (500)."""

    def __init__(self, regions: dict[str, str], page: int = 2) -> None:
        self.regions = regions
        self.page = page
        self.findings = json.loads((DATA / "guardduty_get_findings.json").read_text())["findings"]
        self.calls: list[tuple[str, str, str]] = []  # (region, method, path)
        self.bodies: list[dict[str, Any]] = []

    def handle(self, method: str, path: str, region: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.calls.append((region, method, path))
        self.bodies.append(body)
        mode = self.regions.get(region, "none")
        if mode == "denied":
            return 403, {"__type": "AccessDeniedException",
                         "message": "User: arn:aws:iam::111111111111:user/ci is not authorized to perform: "
                                    "guardduty:ListDetectors"}
        if mode == "broken":
            return 500, {"__type": "InternalServerErrorException", "message": "internal error"}
        if method == "GET" and path.startswith("/detector"):
            return 200, {"detectorIds": [DETECTOR] if mode == "detector" else []}
        m = re.fullmatch(r"/detector/([^/]+)/findings(/get)?", path)
        if not m or m.group(1) != DETECTOR:
            return 400, {"__type": "BadRequestException", "message": f"no route {method} {path}"}
        if m.group(2):
            ids = body.get("findingIds", [])
            if len(ids) > 50:
                return 400, {"__type": "BadRequestException", "message": "findingIds: at most 50"}
            return 200, {"findings": [f for f in self.findings if f["id"] in ids]}
        if int(body.get("maxResults", 50)) > 50:
            return 400, {"__type": "BadRequestException", "message": "maxResults: at most 50"}
        crit = body["findingCriteria"]["criterion"]["updatedAt"]
        lo, hi = crit["greaterThanOrEqual"], crit["lessThanOrEqual"]
        ids = [f["id"] for f in self.findings
               if lo <= pd.Timestamp(f["updatedAt"]).value // 1_000_000 <= hi]
        start = int(body.get("nextToken") or 0)
        out: dict[str, Any] = {"findingIds": ids[start:start + self.page]}
        if start + self.page < len(ids):
            out["nextToken"] = str(start + self.page)
        return 200, out


def _server(fake: FakeGuardDuty) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            scope = re.search(r"Credential=[^/]+/\d+/([^/]+)/guardduty/", self.headers.get("Authorization", ""))
            status, payload = fake.handle(self.command, self.path.split("?")[0], scope.group(1) if scope else "?",
                                          json.loads(raw) if raw else {})
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if status >= 400:
                self.send_header("x-amzn-ErrorType", payload["__type"])
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def endpoint(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Start a fake with the given regions; boto3 sends GuardDuty (only) to it."""
    servers: list[ThreadingHTTPServer] = []

    def start(regions: dict[str, str], page: int = 2) -> FakeGuardDuty:
        fake = FakeGuardDuty(regions, page)
        srv = _server(fake)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        monkeypatch.setenv("AWS_ENDPOINT_URL_GUARDDUTY", f"http://127.0.0.1:{srv.server_port}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        return fake

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def provider(tmp_path: Path, regions: list[str], **kw: Any) -> AwsProvider:
    return AwsProvider(cache_path=tmp_path / "aws.db", clock=lambda: NOW, regions=regions, cpu=False, **kw)


def test_crypto_findings_become_rows(endpoint: Any, tmp_path: Path) -> None:
    fake = endpoint({"us-east-1": "detector"})
    prov = provider(tmp_path, ["us-east-1"])
    frame = prov.fetch_findings(NOW - pd.Timedelta(days=2), NOW)
    # the port probe is not mining; the two crypto findings come back, paged two ids at a time
    assert list(frame["type"]) == ["CryptoCurrency:EC2/BitcoinTool.B!DNS", "Impact:Runtime/CryptoMinerExecuted"]
    first = frame.iloc[0]
    assert (first["project"], first["node"], first["cluster"], first["region"]) == (
        "111111111111", "i-0abc1234def567890", "prod-eu", "us-east-1")
    assert first["first_seen"] == pd.Timestamp("2024-03-09 03:01:55", tz="UTC")
    assert first["last_seen"] == pd.Timestamp("2024-03-10 10:41:07", tz="UTC")
    assert first["severity"] == 8.0
    runtime = frame.iloc[1]
    assert (runtime["project"], runtime["cluster"], runtime["node"]) == ("222222222222", "ml-batch",
                                                                         "i-0fedcba9876543210")
    # the window went to the API in epoch milliseconds, and ListFindings was followed to its last page
    crit = fake.bodies[1]["findingCriteria"]["criterion"]["updatedAt"]
    assert crit == {"greaterThanOrEqual": (NOW - pd.Timedelta(days=2)).value // 1_000_000,
                    "lessThanOrEqual": NOW.value // 1_000_000}
    paths = [p for _, _, p in fake.calls]
    assert paths.count(f"/detector/{DETECTOR}/findings") == 2
    stats = prov.stats()
    assert stats["guardduty_requests"] == len(fake.calls) and stats["guardduty_findings"] == 2
    assert stats["errors"] == [] and prov.notes == []
    # the next run finds the detector id in the cache: no ListDetectors (kept for DETECTORS_TTL)
    listed = [c for c in fake.calls if c[1] == "GET"]
    again = provider(tmp_path, ["us-east-1"]).fetch_findings(NOW - pd.Timedelta(days=2), NOW)
    assert [c for c in fake.calls if c[1] == "GET"] == listed and len(again) == 2


def test_window_excludes_older_updates(endpoint: Any, tmp_path: Path) -> None:
    endpoint({"us-east-1": "detector"})
    frame = provider(tmp_path, ["us-east-1"]).fetch_findings(NOW - pd.Timedelta(hours=3), NOW)
    assert list(frame["finding_id"]) == ["6cc6b8b3a2f34a5fa2b1d3e4f5a6b7c8"]


def test_regions_off_or_denied_are_not_failures(endpoint: Any, tmp_path: Path) -> None:
    fake = endpoint({"us-east-1": "detector", "eu-west-1": "none", "ap-south-1": "denied"})
    prov = provider(tmp_path, ["us-east-1", "eu-west-1", "ap-south-1"])
    frame = prov.fetch_findings(NOW - pd.Timedelta(days=2), NOW)
    assert len(frame) == 2
    assert prov.errors == []
    [note] = prov.notes
    assert "ap-south-1" in note and "guardduty:ListDetectors" in note and "grant" in note
    assert "111111111111" not in note  # account ids from AWS messages stay out of notes
    # GuardDuty off in eu-west-1: one ListDetectors, nothing more
    assert [(m, p) for r, m, p in fake.calls if r == "eu-west-1"] == [("GET", "/detector")]


def test_a_broken_region_is_reported_and_the_rest_kept(endpoint: Any, tmp_path: Path) -> None:
    endpoint({"us-east-1": "detector", "eu-west-1": "broken"})
    prov = provider(tmp_path, ["us-east-1", "eu-west-1"])
    frame = prov.fetch_findings(NOW - pd.Timedelta(days=2), NOW)
    assert len(frame) == 2
    assert len(prov.errors) == 1 and "eu-west-1" in prov.errors[0]


def test_every_region_broken_raises(endpoint: Any, tmp_path: Path) -> None:
    endpoint({"us-east-1": "broken", "eu-west-1": "broken"})
    with pytest.raises(ProviderError, match=r"eu-west-1|us-east-1"):
        provider(tmp_path, ["us-east-1", "eu-west-1"]).fetch_findings(NOW - pd.Timedelta(days=2), NOW)


def test_more_than_fifty_ids_are_read_in_batches(endpoint: Any, tmp_path: Path) -> None:
    fake = endpoint({"us-east-1": "detector"}, page=50)
    base = fake.findings[0]
    fake.findings = [dict(base, id=f"{i:032x}") for i in range(120)]
    frame = provider(tmp_path, ["us-east-1"]).fetch_findings(NOW - pd.Timedelta(days=2), NOW)
    assert len(frame) == 120 and frame["finding_id"].is_unique
    gets = [b for (_, _, p), b in zip(fake.calls, fake.bodies, strict=True) if p.endswith("/get")]
    assert [len(b["findingIds"]) for b in gets] == [50, 50, 20]


def test_guardduty_off_in_config_makes_no_request(endpoint: Any, tmp_path: Path) -> None:
    fake = endpoint({"us-east-1": "detector"})
    prov = provider(tmp_path, ["us-east-1"], guardduty=False)
    assert prov.fetch_findings(NOW - pd.Timedelta(days=2), NOW).empty
    assert fake.calls == [] and prov.stats()["guardduty_requests"] == 0


def test_findings_flow_through_gather(endpoint: Any, tmp_path: Path) -> None:
    """The registry loop picks up ``fetch_findings`` and hands a model-shaped frame on."""
    endpoint({"us-east-1": "detector"})
    prov = provider(tmp_path, ["us-east-1"])

    class OnlyFindings:
        name = "aws"

        def fetch_costs(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
            from costwatch.model import empty_costs
            return empty_costs()

        def fetch_usage(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
            from costwatch.model import empty_usage
            return empty_usage()

        def fetch_findings(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
            return prov.fetch_findings(start, end)

    got = gather([OnlyFindings()], NOW - pd.Timedelta(days=2), NOW)
    assert got.findings is not None and len(got.findings) == 2
