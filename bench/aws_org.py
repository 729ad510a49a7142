"""The aws provider against an AWS organization of N accounts x R regions: wall time, peak RSS and requests.

    python bench/aws_org.py --accounts 50 --regions 17                 # backfill run, then an hourly run
    python bench/aws_org.py --accounts 200 --regions 17 --instances 5 --workers 16
    python bench/aws_org.py --accounts 20 --regions 17 --trace         # + where the memory goes (tracemalloc)
    python bench/aws_org.py --accounts 20 --src /tmp/main-aws          # another providers/aws (e.g. main's)

Stand-ins run in a child process of their own, so their CPU and memory are not the measured process's.
One local HTTP server speaks each API's real wire protocol, as botocore sends and parses it: STS and EC2
(query/XML), Organizations and Cost Explorer (JSON), CloudWatch (Smithy RPC v2 CBOR, encoded with
botocore's own serializer) and GuardDuty (REST-JSON, the fake of ``tests/test_aws_guardduty.py``: a
detector in every region).  Accounts are told apart by the access key AssumeRole hands out.  Every account
has ``--instances`` instances in every region; those in the first ``--cpu-regions`` regions report hourly CPU
for ``--cpu-days`` days (GetMetricData pages at 100,800 datapoints, as AWS); Cost Explorer answers the
asked period with ``--services`` services (or two regions) per account and day, ``--ce-page`` groups a page.
(moto was the first stand-in: at 20 accounts x 17 regions it took 394 s to set up and over 13 minutes to
answer one backfill on this shared 2-core box, since every account x region builds a full EC2 backend.)

Each measured run is a fresh process doing what ``costwatch run`` asks of the provider
(``sources.gather`` over the detection window, 77 days, with the deadline the handler would give): the
backfill run with an empty cache at NOW, then the hourly run with that cache at NOW + 1 h, then the next
hourly run (NOW + 2 h) as a Lambda cold start makes it: an empty cache file, the cache's copy in the state
store (``state_copy``; a SQLite state file here, DynamoDB on Lambda).  Printed per run: wall seconds, the
process's CPU seconds (the stand-ins' are not in it), peak RSS, rows, and API requests by service.  Nothing
is asserted.  The stand-ins' process has a fixed hash seed, so their amounts (and the row counts) repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
AMI = "ami-12c6146b"
ROLE = "CostwatchReadOnly"
REGIONS = ["us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-west-2", "eu-west-3",
           "eu-central-1", "eu-north-1", "ap-south-1", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3",
           "ap-southeast-1", "ap-southeast-2", "ca-central-1", "sa-east-1"]
SERVICES = ["Amazon Elastic Compute Cloud - Compute", "EC2 - Other", "Amazon Simple Storage Service",
            "Amazon Relational Database Service", "AWS Lambda", "Amazon CloudFront", "AmazonCloudWatch",
            "Amazon DynamoDB", "AWS Key Management Service", "Amazon Virtual Private Cloud"]
WINDOW_DAYS = 77  # run.py: ALERT_WINDOW (14 days) + lookback_days * 2 + 7 (28 * 2 + 7)
FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "PYTHONHASHSEED": "0"}


# ------------------------------------------------------------------------------------------ stand-ins

class FakeCe:
    """GetCostAndUsage for whatever period is asked: every account, ``services`` services (or two regions)
    a day, ``page`` groups a page (whole days per page, as Cost Explorer pages)."""

    def __init__(self, accounts: list[str], services: int, page: int) -> None:
        self.accounts, self.services, self.page = accounts, SERVICES[:services], page
        self.calls = 0

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        import datetime as dt

        self.calls += 1
        first = dt.date.fromisoformat(body["TimePeriod"]["Start"])
        last = dt.date.fromisoformat(body["TimePeriod"]["End"])
        metric = body["Metrics"][0]
        dim = body["GroupBy"][1]["Key"]
        keys = self.services if dim == "SERVICE" else ["us-east-1", "eu-west-1"]
        per_day = max(1, len(self.accounts) * len(keys))
        days_per_page = max(1, self.page // per_day)
        skip = int(body.get("NextPageToken") or 0)
        day0 = first + dt.timedelta(days=skip)
        n = min(days_per_page, (last - day0).days)
        results = []
        for i in range(n):
            d = day0 + dt.timedelta(days=i)
            results.append({
                "TimePeriod": {"Start": d.isoformat(), "End": (d + dt.timedelta(days=1)).isoformat()},
                "Total": {}, "Estimated": False,
                "Groups": [{"Keys": [a, k], "Metrics": {metric: {"Amount": f"{(hash((a, k)) % 997) / 10:.4f}",
                                                                 "Unit": "USD"}}}
                           for a in self.accounts for k in keys]})
        out: dict[str, Any] = {"GroupDefinitions": body["GroupBy"], "ResultsByTime": results,
                               "DimensionValueAttributes": []}
        if (day0 + dt.timedelta(days=n)) < last:
            out["NextPageToken"] = str(skip + n)
        return out


CALLER = "123456789012"
EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


class FakeOrg:
    """STS, Organizations, EC2 and CloudWatch of an organization of ``accounts`` accounts (see the module
    docstring); ``calls`` counts requests by service."""

    def __init__(self, accounts: int, regions: list[str], instances: int, cpu_regions: int, cpu_days: int,
                 now_s: int) -> None:
        import botocore.session

        self.ids = [CALLER] + [f"{100000000000 + n * 7919:012d}" for n in range(1, accounts)]
        self.regions, self.instances, self.now_s = regions, instances, now_s
        self.cpu_regions, self.cpu_days = set(regions[:cpu_regions]), cpu_days
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()
        self.cw = botocore.session.get_session().get_service_model("cloudwatch").operation_model("GetMetricData")

    def instance_ids(self, account: str, region: str) -> list[str]:
        r = self.regions.index(region) if region in self.regions else 99
        return [f"i-{int(account):012x}{r:02x}{k:03x}" for k in range(self.instances)]

    def handle(self, service: str, account: str, region: str, headers: Any, raw: bytes,
               ) -> tuple[int, dict[str, str], bytes]:
        from urllib.parse import parse_qs

        with self.lock:
            self.calls[service] = self.calls.get(service, 0) + 1
        if service == "organizations":
            return self._orgs(headers.get("X-Amz-Target", "").rsplit(".", 1)[-1], json.loads(raw or b"{}"))
        if service == "monitoring":
            return self._metrics(region, raw)
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        action = form.get("Action", "")
        if service == "sts":
            if action == "GetCallerIdentity":
                body = (f"<GetCallerIdentityResult><Arn>arn:aws:iam::{CALLER}:user/bench</Arn>"
                        f"<UserId>AIDABENCH</UserId><Account>{CALLER}</Account></GetCallerIdentityResult>")
            else:
                target = form["RoleArn"].split(":")[4]
                body = (f"<AssumeRoleResult><Credentials><AccessKeyId>ASIA{target}</AccessKeyId><SecretAccessKey>s"
                        f"</SecretAccessKey><SessionToken>t{target}</SessionToken><Expiration>2099-01-01T00:00:00Z"
                        f"</Expiration></Credentials><AssumedRoleUser><AssumedRoleId>AROABENCH:costwatch</AssumedRoleId>"
                        f"<Arn>arn:aws:sts::{target}:assumed-role/{ROLE}/costwatch</Arn></AssumedRoleUser></AssumeRoleResult>")
            xml = (f'<{action}Response xmlns="{STS_NS}">{body}<ResponseMetadata><RequestId>1</RequestId>'
                   f"</ResponseMetadata></{action}Response>")
            return 200, {"Content-Type": "text/xml"}, xml.encode()
        if action == "DescribeRegions":
            items = "".join(f"<item><regionName>{r}</regionName><regionEndpoint>ec2.{r}.amazonaws.com</regionEndpoint>"
                            f"<optInStatus>opt-in-not-required</optInStatus></item>" for r in self.regions)
            body = f"<regionInfo>{items}</regionInfo>"
        else:  # DescribeInstances
            items = "".join(
                f"<item><instanceId>{iid}</instanceId><instanceType>m5.large</instanceType>"
                f"<launchTime>2026-01-01T00:00:00.000Z</launchTime><instanceState><code>16</code><name>running</name>"
                f"</instanceState><tagSet><item><key>Name</key><value>node-{k}</value></item></tagSet></item>"
                for k, iid in enumerate(self.instance_ids(account, region)))
            body = (f"<reservationSet><item><reservationId>r-{int(account):012x}</reservationId><ownerId>{account}"
                    f"</ownerId><instancesSet>{items}</instancesSet></item></reservationSet>")
        xml = f'<{action}Response xmlns="{EC2_NS}"><requestId>1</requestId>{body}</{action}Response>'
        return 200, {"Content-Type": "text/xml"}, xml.encode()

    def _orgs(self, target: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if target == "ListAccounts":
            start = int(body.get("NextToken") or 0)
            page = self.ids[start: start + 20]  # ListAccounts answers at most 20 a page
            out: dict[str, Any] = {"Accounts": [
                {"Id": a, "Arn": f"arn:aws:organizations::{CALLER}:account/o-bench/{a}", "Email": f"{a}@example.com",
                 "Name": f"acct-{a[-4:]}", "Status": "ACTIVE", "JoinedMethod": "CREATED", "JoinedTimestamp": 1.7e9}
                for a in page]}
            if start + 20 < len(self.ids):
                out["NextToken"] = str(start + 20)
        else:  # ListTagsForResource
            out = {"Tags": [{"Key": "owner", "Value": f"team-{body['ResourceId'][-1]}"}]}
        return 200, {"Content-Type": "application/x-amz-json-1.1"}, json.dumps(out).encode()

    def _metrics(self, region: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """GetMetricData in the protocol botocore chose: JSON 1.0 (what it sends today) or RPC v2 CBOR."""
        import datetime as dt

        from botocore.parsers import RpcV2CBORParser
        from botocore.serialize import RpcV2CBORSerializer

        cbor = not raw.lstrip().startswith(b"{")
        if cbor:
            req = RpcV2CBORParser().parse({"body": raw, "headers": {}, "status_code": 200}, self.cw.input_shape)
            first, last = int(req["StartTime"].timestamp()), int(req["EndTime"].timestamp())
        else:
            req = json.loads(raw)
            first, last = int(float(req["StartTime"])), int(float(req["EndTime"]))
        lo = max(first, self.now_s - self.cpu_days * 86400)
        hi = min(last, self.now_s + 3600)
        hours = list(range(lo + (-lo) % 3600, hi, 3600))
        queries = req["MetricDataQueries"]
        start = int(req.get("NextToken") or 0)
        results, budget, n = [], int(req.get("MaxDatapoints") or 100_800), start
        while n < len(queries) and (budget >= len(hours) or n == start):
            q = queries[n]
            iid = q["MetricStat"]["Metric"]["Dimensions"][0]["Value"]
            data = hours if region in self.cpu_regions else []
            salt = int(iid[-3:], 16)
            bump = 10.0 if q["MetricStat"]["Stat"] == "Maximum" else 0.0
            results.append({"Id": q["Id"], "Label": "CPUUtilization", "StatusCode": "Complete",
                            "Timestamps": [dt.datetime.fromtimestamp(h, dt.UTC) if cbor else h for h in data],
                            "Values": [float(20 + (h // 3600 * 7 + salt) % 50) + bump for h in data]})
            budget -= len(data)
            n += 1
        out: dict[str, Any] = {"MetricDataResults": results, "Messages": []}
        if n < len(queries):
            out["NextToken"] = str(n)
        if cbor:
            body = bytes(RpcV2CBORSerializer()._serialize_body_params(out, self.cw.output_shape))
            return 200, {"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"}, body
        return 200, {"Content-Type": "application/x-amz-json-1.0"}, json.dumps(out).encode()


def _server(org: FakeOrg, ce: FakeCe, gd: Any) -> ThreadingHTTPServer:
    import re

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # headers and body go out as two writes: without this, Nagle + delayed ACK add 40 ms a request
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            try:
                self._answer()
            except Exception:
                import traceback

                traceback.print_exc()
                raise

        def _answer(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            m = re.search(r"Credential=([^/]+)/\d+/([^/]+)/([^/]+)/", self.headers.get("Authorization", ""))
            key, region, service = m.groups() if m else ("", "?", "?")
            account = key[4:] if key.startswith("ASIA") else CALLER
            headers: dict[str, str] = {}
            if service == "ce":
                status, data = 200, json.dumps(ce.answer(json.loads(raw))).encode()
                headers = {"Content-Type": "application/x-amz-json-1.1"}
            elif service == "guardduty":
                with org.lock:
                    org.calls["guardduty"] = org.calls.get("guardduty", 0) + 1
                status, payload = gd.handle(self.command, self.path.split("?")[0], region,
                                            json.loads(raw) if raw else {})
                data = json.dumps(payload).encode()
                headers = {"Content-Type": "application/json"}
                if status >= 400:
                    headers["x-amzn-ErrorType"] = payload["__type"]
            else:
                status, headers, data = org.handle(service, account, region, self.headers, raw)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def start_standins(accounts: int, regions: list[str], instances: int, cpu_regions: int, cpu_days: int,
                   now_s: int, services: int = 8, ce_page: int = 5000) -> tuple[str, ThreadingHTTPServer, FakeOrg]:
    """The stand-ins in this process's threads; returns the endpoint URL, the server and the organization."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_aws_guardduty import FakeGuardDuty  # the tests' GuardDuty protocol fake

    org = FakeOrg(accounts, regions, instances, cpu_regions, cpu_days, now_s)
    srv = _server(org, FakeCe(org.ids, services, ce_page), FakeGuardDuty({r: "detector" for r in REGIONS}, page=50))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_port}", srv, org


def serve(args: argparse.Namespace) -> None:
    """The stand-ins' process: print the endpoint as one JSON line, then serve until stdin closes."""
    url, srv, org = start_standins(args.accounts, REGIONS[: args.regions], args.instances, args.cpu_regions,
                                   args.cpu_days, args.now, args.services, args.ce_page)
    print(json.dumps({"url": url, "accounts": len(org.ids)}), flush=True)
    sys.stdin.read()
    srv.shutdown()


# ------------------------------------------------------------------------------------------ measured run

def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One provider run in this process (see the module docstring); returns the figures."""
    import tracemalloc

    if args.trace:
        tracemalloc.start(12)
    if args.src:  # measure another providers/aws (e.g. main's) with this costwatch
        import costwatch.providers as cp

        cp.__path__.insert(0, args.src)
    import pandas as pd

    from costwatch.providers.aws import AwsProvider
    from costwatch.sources import gather
    from costwatch.state import SqliteStore

    now = pd.Timestamp(args.now, unit="s", tz="UTC")
    prov = AwsProvider(cache_path=args.cache, clock=lambda: now, regions=REGIONS[: args.regions],
                       assume_role=ROLE, max_workers=args.workers,
                       state_store=SqliteStore(args.state) if args.state else None)
    end = now.floor("h")
    start = end - pd.Timedelta(days=WINDOW_DAYS)
    c0, t0 = time.process_time(), time.perf_counter()
    got = gather([prov], start, end, deadline=args.deadline)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out: dict[str, Any] = {
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cost_rows": len(got.costs), "usage_rows": len(got.usage), "errors": got.errors[:3],
        "stats": {k: v for k, v in (got.stats.get("aws") or {}).items() if k not in ("notes",)},
    }
    out["stats"]["errors"] = out["stats"].get("errors", [])[:3]
    if args.trace:
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        _, peak = tracemalloc.get_traced_memory()
        out["traced_peak_mb"] = round(peak / 1e6)
        by_pkg: dict[str, float] = {}
        for stat in snap.statistics("traceback"):
            files = [f.filename for f in stat.traceback]
            key = next((k for k in ("botocore/loaders", "botocore/model", "botocore/client", "botocore/hooks",
                                    "botocore/endpoint", "urllib3", "costwatch", "providers/aws", "pandas")
                        if any(k in f for f in files)), "other")
            by_pkg[key] = by_pkg.get(key, 0.0) + stat.size / 1e6
        out["held_at_end_mb"] = {k: round(v, 1) for k, v in sorted(by_pkg.items(), key=lambda kv: -kv[1])}
    return out


def _child(args: argparse.Namespace, endpoints: dict[str, Any], cache: Path, now: int, state: Path | None,
           ) -> dict[str, Any]:
    env = {**os.environ, **FAKE_ENV, "AWS_ENDPOINT_URL": endpoints["url"]}
    cmd = [sys.executable, __file__, "--measure", "--accounts", str(args.accounts), "--regions", str(args.regions),
           "--workers", str(args.workers), "--cache", str(cache), "--now", str(now)] + (
        ["--state", str(state)] if state else []) + [
           "--deadline", str(args.deadline)] + (["--trace"] if args.trace else []) + (
        ["--src", args.src] if args.src else [])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"measured run failed ({done.returncode})")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=int, default=50)
    ap.add_argument("--regions", type=int, default=17, help=f"at most {len(REGIONS)}")
    ap.add_argument("--instances", type=int, default=5, help="instances per account and region")
    ap.add_argument("--cpu-regions", type=int, default=1, help="regions per account whose instances report CPU")
    ap.add_argument("--cpu-days", type=int, default=14, help="days of hourly CPU they report")
    ap.add_argument("--services", type=int, default=8, help="Cost Explorer services per account and day")
    ap.add_argument("--ce-page", type=int, default=5000, help="Cost Explorer groups per page")
    ap.add_argument("--workers", type=int, default=16, help="the provider's max_workers")
    ap.add_argument("--deadline", type=float, default=780.0,
                    help="seconds the provider may fetch (handler: 900 s timeout less 90 s reserve, less 30 s)")
    ap.add_argument("--trace", action="store_true", help="tracemalloc the measured runs")
    ap.add_argument("--src", default=None, help="a directory holding another providers/aws package to measure")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--state", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--no-state-copy", action="store_true",
                    help="no copy of the cache in a state store (and no cold-start run)")
    ap.add_argument("--now", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args)
        return 0
    if args.measure:
        print(json.dumps(measure(args), default=str))
        return 0
    now = (int(time.time()) // 3600) * 3600
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--accounts", str(args.accounts), "--regions", str(args.regions),
         "--instances", str(args.instances), "--cpu-regions", str(args.cpu_regions), "--cpu-days",
         str(args.cpu_days), "--services", str(args.services), "--ce-page", str(args.ce_page), "--now", str(now)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, **FAKE_ENV})
    try:
        assert server.stdout is not None
        endpoints = json.loads(server.stdout.readline())
        print(f"# {args.accounts} accounts x {args.regions} regions x {args.instances} instances "
              f"({args.cpu_regions} region(s) each with {args.cpu_days} days of CPU), workers {args.workers}",
              flush=True)
        with tempfile.TemporaryDirectory(prefix="costwatch-bench-") as tmp:
            cache, state = Path(tmp) / "aws-cache.db", None if args.no_state_copy else Path(tmp) / "state.db"
            runs = [("backfill", now, cache), ("hourly", now + 3600, cache)]
            if state is not None:
                runs.append(("next hour, cold start", now + 7200, Path(tmp) / "cold" / "aws-cache.db"))
            for label, at, path in runs:
                got = _child(args, endpoints, path, at, state)
                print(f"{label}: {json.dumps(got)}", flush=True)
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
