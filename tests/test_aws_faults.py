"""The aws provider under faults over real HTTP: Cost Explorer throttling is retried, empty results are
empty frames, and nothing hangs.  A small local server speaks the JSON protocol Cost Explorer and
Organizations use (``X-Amz-Target`` header, ``__type`` error codes)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytest.importorskip("boto3")

from costwatch.providers.aws import AwsProvider


class _Fake:
    def __init__(self, throttles: int, body: dict[str, Any]) -> None:
        self.throttles = throttles
        self.body = body
        self.ce_calls = 0
        self.targets: list[str] = []


def _server(fake: _Fake) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            target = self.headers.get("X-Amz-Target", "")
            fake.targets.append(target)
            if target.endswith("GetCostAndUsage"):
                fake.ce_calls += 1
                if fake.ce_calls <= fake.throttles:
                    return self._send(400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
                return self._send(200, fake.body)
            self._send(400, {"__type": "AccessDeniedException", "message": "not here"})

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def _run(fake: _Fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[AwsProvider, pd.DataFrame]:
    srv = _server(fake)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{srv.server_port}")
        clock = pd.Timestamp("2024-03-10 12:00", tz="UTC")
        prov = AwsProvider(cache_path=tmp_path / "aws.db", clock=lambda: clock, regions=["us-east-1"], cpu=False)
        costs = prov.fetch_costs(clock - pd.Timedelta(days=5), clock)
        return prov, costs
    finally:
        srv.shutdown()
        srv.server_close()


def _ce_body(days: list[str], amount: float) -> dict[str, Any]:
    return {
        "GroupDefinitions": [{"Type": "DIMENSION", "Key": "LINKED_ACCOUNT"}, {"Type": "DIMENSION", "Key": "SERVICE"}],
        "ResultsByTime": [
            {"TimePeriod": {"Start": d, "End": str((pd.Timestamp(d) + pd.Timedelta(days=1)).date())},
             "Total": {}, "Estimated": True,
             "Groups": [] if amount == 0 else [{"Keys": ["111122223333", "Amazon Elastic Compute Cloud - Compute"],
                                                 "Metrics": {"UnblendedCost": {"Amount": str(amount), "Unit": "USD"}}}]}
            for d in days],
        "DimensionValueAttributes": [],
    }


DAYS = [str(d.date()) for d in pd.date_range("2024-03-05", "2024-03-10", freq="D")]


def test_throttling_is_retried(aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _Fake(throttles=2, body=_ce_body(DAYS, 12.5))
    _, costs = _run(fake, monkeypatch, tmp_path)
    assert fake.ce_calls >= 3  # two throttled, then answered
    assert len(costs) and set(costs["project_id"]) == {"111122223333"}
    assert costs["estimated"].all()
    assert (costs["effective_cost"] > 0).all()


def test_empty_results_are_an_empty_frame(aws_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _Fake(throttles=0, body=_ce_body(DAYS, 0))
    _, costs = _run(fake, monkeypatch, tmp_path)
    assert len(costs) == 0
    assert fake.ce_calls >= 1
