"""Local stand-ins for the Google Cloud APIs the gcp provider calls, reached by the real SDKs over the wire.

* ``FakeBigQuery``: BigQuery REST v2 on 127.0.0.1 (jobs.query, jobs.getQueryResults, jobs.get, jobs.insert,
  jobs.cancel, tabledata.list) answering with BigQuery's JSON shapes: ``schema``, ``rows`` of
  ``{"f": [{"v": ...}]}``, ``pageToken``, ``totalRows``, ``totalBytesProcessed``, ``jobComplete``.  It holds
  billing-export tables as rows in the export's own shape (nested ``project``, ``credits`` arrays,
  ``_PARTITIONTIME``) and evaluates the provider's day-aggregating query over them with the semantics the SQL
  states.  It does not parse SQL: it checks that the query text carries the clauses whose meaning it
  implements (partition filter, credits sum, output aliases, declared parameters) and answers 400
  ``invalidQuery`` otherwise, as BigQuery would for a query it cannot run.  Bytes processed are the rows of the
  partitions the filter selects times ``bytes_per_row``, so a missing partition filter shows up as a full scan.
* ``FakeBilling``: Cloud Billing REST v1 ``billingAccounts/*/projects`` with ``pageToken`` paging.
* ``FakeMonitoring``: a gRPC ``google.monitoring.v3.MetricService`` with ``ListTimeSeries`` paging
  (``next_page_token``), per-project failures and RESOURCE_EXHAUSTED with ``RetryInfo``.

Every fake records the requests it received and can be told to answer the next N requests with an error
body (``fail``), which is how throttling and expired credentials are played.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import uuid
from collections import defaultdict
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pandas as pd

DATA = Path(__file__).parent / "data" / "gcp"


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------ HTTP base


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class Fault:
    status: int
    body: Any
    headers: dict[str, str]
    times: int
    path: str | None  # regex the request path must match; None: any


class HttpFake:
    """A threaded HTTP server on a free local port; subclasses implement ``route``."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                form = "x-www-form-urlencoded" in (self.headers.get("Content-Type") or "")
                body = (parse_qs(raw.decode()) if form else json.loads(raw)) if raw else None
                parts = urlsplit(self.path)
                status, payload, headers = fake.dispatch(Received(self.command, parts.path, parse_qs(parts.query),
                                                                  body))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail(self, status: int, body: Any, *, times: int = 1, headers: dict[str, str] | None = None,
             path: str | None = None) -> None:
        """Answer the next ``times`` requests (matching ``path``) with this error instead."""
        with self._lock:
            self._faults.append(Fault(status, body, dict(headers or {}), times, path))

    def dispatch(self, req: Received) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.received.append(req)
            for f in self._faults:
                if f.times > 0 and (f.path is None or re.search(f.path, req.path)):
                    f.times -= 1
                    return f.status, f.body, f.headers
        try:
            return self.route(req)
        except HttpError as e:
            return e.status, e.body, {}

    def route(self, req: Received) -> tuple[int, Any, dict[str, str]]:
        raise NotImplementedError


class HttpError(Exception):
    def __init__(self, status: int, reason: str, message: str, state: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"code": status, "message": message,
                               "errors": [{"message": message, "domain": "global", "reason": reason}],
                               "status": state}}


# ------------------------------------------------------------------------------------------ BigQuery


def _ts(value: Any) -> pd.Timestamp:
    t = pd.Timestamp(str(value).replace(" UTC", "+00:00"))
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


# what the provider's query must select, per flavour: (alias, BigQuery type)
NATIVE_COLUMNS = [("day", "DATE"), ("project_id", "STRING"), ("project_name", "STRING"), ("service", "STRING"),
                  ("region", "STRING"), ("charge", "STRING"), ("currency", "STRING"), ("billed_cost", "FLOAT"),
                  ("effective_cost", "FLOAT"), ("owner", "STRING")]
DETAILED_COLUMNS = [*NATIVE_COLUMNS[:7], ("resource_id", "STRING"), *NATIVE_COLUMNS[7:]]
FOCUS_COLUMNS = [("day", "DATE"), ("project_id", "STRING"), ("project_name", "STRING"), ("service", "STRING"),
                 ("service_category", "STRING"), ("region", "STRING"), ("charge", "STRING"), ("currency", "STRING"),
                 ("resource_id", "STRING"), ("billed_cost", "FLOAT"), ("effective_cost", "FLOAT"),
                 ("owner", "STRING")]
# the clauses whose meaning the fake implements; a query without them is "a query the fake cannot run"
NATIVE_CLAUSES = ("usage_start_time >= @start AND usage_start_time < @end",
                  "SUM(cost) + SUM(IFNULL((SELECT SUM(c.amount) FROM UNNEST(credits) AS c), 0)) AS effective_cost",
                  "SUM(cost) AS billed_cost", "l.key = @owner_label")
PARTITION_CLAUSE = "_PARTITIONTIME >= @partition_start AND _PARTITIONTIME < @partition_end"
FOCUS_CLAUSES = ("ChargePeriodStart >= @start AND ChargePeriodStart < @end", "SUM(BilledCost) AS billed_cost",
                 "SUM(EffectiveCost) AS effective_cost", "JSON_VALUE(t, '$.key') = @owner_label")


@dataclass
class Job:
    project: str
    job_id: str
    query: str
    params: list[dict[str, Any]]
    schema: list[dict[str, str]]
    rows: list[list[Any]]
    bytes: int
    labels: dict[str, str] = field(default_factory=dict)


class FakeBigQuery(HttpFake):
    """BigQuery REST v2; ``tables`` maps ``project.dataset.table`` to (flavour, export rows)."""

    def __init__(self, *, page_rows: int = 1000, bytes_per_row: int = 1536, location: str = "US") -> None:
        self.tables: dict[str, tuple[str, list[dict[str, Any]]]] = {}
        self.jobs: dict[str, Job] = {}
        self.page_rows = page_rows
        self.bytes_per_row = bytes_per_row
        self.location = location
        super().__init__()

    @property
    def queries(self) -> list[dict[str, Any]]:
        """Bodies of jobs.query / jobs.insert requests, in order."""
        return [r.body for r in self.received if r.method == "POST" and re.search(r"/(queries|jobs)$", r.path)]

    def route(self, req: Received) -> tuple[int, Any, dict[str, str]]:
        p = req.path.removeprefix("/bigquery/v2")
        if m := re.fullmatch(r"/projects/([^/]+)/queries", p):
            return 200, self._jobs_query(m.group(1), req.body or {}), {}
        if m := re.fullmatch(r"/projects/([^/]+)/jobs", p):
            return 200, self._jobs_insert(m.group(1), req.body or {}), {}
        if m := re.fullmatch(r"/projects/([^/]+)/queries/([^/]+)", p):
            return 200, self._get_query_results(self._job(m.group(2)), req.query), {}
        if m := re.fullmatch(r"/projects/([^/]+)/jobs/([^/]+)/cancel", p):
            return 200, {"kind": "bigquery#jobCancelResponse", "job": self._job_resource(self._job(m.group(2)))}, {}
        if m := re.fullmatch(r"/projects/([^/]+)/jobs/([^/]+)", p):
            return 200, self._job_resource(self._job(m.group(2))), {}
        if m := re.fullmatch(r"/projects/([^/]+)/datasets/_scrubbed/tables/anon([^/]+)/data", p):
            return 200, self._tabledata(self._job(m.group(2)), req.query), {}
        raise HttpError(404, "notFound", f"Not found: URL {req.path}", "NOT_FOUND")

    # -------------------------------------------------------------------------------- the four calls

    def _jobs_query(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        job = self._run(project, str(body.get("query", "")), body.get("queryParameters", []), body.get("labels"))
        first = self._page(job, 0, int(body.get("maxResults") or self.page_rows))
        return {"kind": "bigquery#queryResponse", "schema": {"fields": job.schema},
                "jobReference": {"projectId": project, "jobId": job.job_id, "location": self.location},
                "totalRows": str(len(job.rows)), **first, "totalBytesProcessed": str(job.bytes),
                "jobComplete": True, "cacheHit": False, "queryId": f"job_{job.job_id}"}

    def _jobs_insert(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        q = body.get("configuration", {}).get("query", {})
        job = self._run(project, str(q.get("query", "")), q.get("queryParameters", []),
                        body.get("configuration", {}).get("labels"),
                        job_id=body.get("jobReference", {}).get("jobId"))
        return self._job_resource(job)

    def _get_query_results(self, job: Job, query: dict[str, list[str]]) -> dict[str, Any]:
        start = int(query.get("pageToken", ["0"])[0] or 0)
        size = int(query.get("maxResults", [str(self.page_rows)])[0])
        page = self._page(job, start, size) if size > 0 else {}
        return {"kind": "bigquery#getQueryResultsResponse", "etag": "scrubbed", "schema": {"fields": job.schema},
                "jobReference": {"projectId": job.project, "jobId": job.job_id, "location": self.location},
                "totalRows": str(len(job.rows)), **page, "totalBytesProcessed": str(job.bytes),
                "jobComplete": True, "cacheHit": False}

    def _tabledata(self, job: Job, query: dict[str, list[str]]) -> dict[str, Any]:
        start = int(query.get("pageToken", ["0"])[0] or 0)
        page = self._page(job, start, int(query.get("maxResults", [str(self.page_rows)])[0]))
        return {"kind": "bigquery#tableDataList", "etag": "scrubbed", "totalRows": str(len(job.rows)), **page}

    def _job_resource(self, job: Job) -> dict[str, Any]:
        ms = str(int(pd.Timestamp("2024-01-01", tz="UTC").timestamp() * 1000))
        return {
            "kind": "bigquery#job", "etag": "scrubbed", "id": f"{job.project}:{self.location}.{job.job_id}",
            "selfLink": f"{self.url}/bigquery/v2/projects/{job.project}/jobs/{job.job_id}?location={self.location}",
            "user_email": "scrubbed@example.com",
            "configuration": {"query": {"query": job.query,
                                        "destinationTable": {"projectId": job.project, "datasetId": "_scrubbed",
                                                             "tableId": f"anon{job.job_id}"},
                                        "writeDisposition": "WRITE_TRUNCATE", "priority": "INTERACTIVE",
                                        "useLegacySql": False, "queryParameters": job.params},
                              "jobType": "QUERY", "labels": job.labels},
            "jobReference": {"projectId": job.project, "jobId": job.job_id, "location": self.location},
            "statistics": {"creationTime": ms, "startTime": ms, "endTime": ms,
                           "totalBytesProcessed": str(job.bytes),
                           "query": {"totalBytesProcessed": str(job.bytes), "totalBytesBilled": str(job.bytes),
                                     "cacheHit": False, "statementType": "SELECT", "totalSlotMs": "42"}},
            "status": {"state": "DONE"},
        }

    def _job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise HttpError(404, "notFound", f"Not found: Job {job_id}", "NOT_FOUND")
        return self.jobs[job_id]

    def _page(self, job: Job, start: int, size: int) -> dict[str, Any]:
        size = max(1, min(size, self.page_rows))
        chunk = job.rows[start: start + size]
        out: dict[str, Any] = {"rows": [{"f": [{"v": v} for v in row]} for row in chunk]}
        if start + size < len(job.rows):
            out["pageToken"] = str(start + size)
        return out

    # -------------------------------------------------------------------------------- evaluation

    def _run(self, project: str, sql: str, params: list[dict[str, Any]], labels: Any,
             job_id: str | None = None) -> Job:
        values = self._params(sql, params)
        tables = re.findall(r"`([^`]+)`", sql)
        if len(tables) != 1 or tables[0] not in self.tables:
            name = tables[0] if tables else "?"
            raise HttpError(404, "notFound", f"Not found: Table {name} was not found in location {self.location}",
                            "NOT_FOUND")
        flavour, rows = self.tables[tables[0]]
        if flavour == "focus":
            columns, (out, scanned) = FOCUS_COLUMNS, self._focus(sql, rows, values)
        else:
            columns = DETAILED_COLUMNS if flavour == "detailed" else NATIVE_COLUMNS
            out, scanned = self._native(sql, rows, values, flavour == "detailed")
        for alias, _ in columns:
            if f" AS {alias}" not in sql:
                raise HttpError(400, "invalidQuery", f"Unrecognized name: {alias}", "INVALID_ARGUMENT")
        schema = [{"name": a, "type": t, "mode": "NULLABLE"} for a, t in columns]
        encoded = [[_encode(r[a], t) for a, t in columns] for r in out]
        job = Job(project, job_id or f"job_{uuid.uuid4().hex[:20]}", sql, params, schema, encoded,
                  scanned * self.bytes_per_row, dict(labels or {}))
        self.jobs[job.job_id] = job
        return job

    @staticmethod
    def _params(sql: str, params: list[dict[str, Any]]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for p in params:
            kind = p["parameterType"]["type"]
            raw = p["parameterValue"]["value"]
            values[p["name"]] = _ts(raw) if kind == "TIMESTAMP" else dt.date.fromisoformat(raw) if kind == "DATE" \
                else raw
        for name in set(re.findall(r"@(\w+)", sql)):
            if name not in values:
                raise HttpError(400, "invalidQuery", f"Query parameter '{name}' not found", "INVALID_ARGUMENT")
        return values

    def _native(self, sql: str, rows: list[dict[str, Any]], v: dict[str, Any], detailed: bool,
                ) -> tuple[list[dict[str, Any]], int]:
        for clause in NATIVE_CLAUSES:
            if clause not in sql:
                raise HttpError(400, "invalidQuery", f"fake BigQuery cannot run a query without {clause!r}",
                                "INVALID_ARGUMENT")
        if PARTITION_CLAUSE in sql:
            rows = [r for r in rows if v["partition_start"] <= _ts(r["_PARTITIONTIME"]) < v["partition_end"]]
        scanned = len(rows)
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in rows:
            t = _ts(r["usage_start_time"])
            if not v["start"] <= t < v["end"]:
                continue
            proj = r.get("project") or {}
            pid = proj.get("id") or f"billingAccounts/{r['billing_account_id']}"
            key = (t.date(), pid, r["service"]["description"], (r.get("location") or {}).get("region"),
                   r["cost_type"], r["currency"], (r.get("resource") or {}).get("name") if detailed else None)
            g = groups.setdefault(key, {"billed_cost": 0.0, "effective_cost": 0.0, "project_name": None,
                                        "owner": None})
            g["billed_cost"] += float(r["cost"])
            g["effective_cost"] += float(r["cost"]) + sum(float(c["amount"]) for c in r.get("credits") or [])
            g["project_name"] = g["project_name"] or proj.get("name")
            owner = next((lb["value"] for lb in proj.get("labels") or [] if lb["key"] == v["owner_label"]), None)
            g["owner"] = max(filter(None, [g["owner"], owner]), default=None)
        out = [{"day": k[0], "project_id": k[1], "service": k[2], "region": k[3], "charge": k[4], "currency": k[5],
                "resource_id": k[6], **g} for k, g in sorted(groups.items(), key=lambda kv: str(kv[0]))]
        return out, scanned

    def _focus(self, sql: str, rows: list[dict[str, Any]], v: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        for clause in FOCUS_CLAUSES:
            if clause not in sql:
                raise HttpError(400, "invalidQuery", f"fake BigQuery cannot run a query without {clause!r}",
                                "INVALID_ARGUMENT")
        rows = [r for r in rows if v["start"] <= _ts(r["ChargePeriodStart"]) < v["end"]]
        groups: dict[tuple[Any, ...], dict[str, Any]] = {}
        for r in rows:
            pid = r.get("SubAccountId") or f"billingAccounts/{r['BillingAccountId']}"
            key = (_ts(r["ChargePeriodStart"]).date(), pid, r["ServiceName"], r.get("RegionId"), r["ChargeCategory"],
                   r["BillingCurrency"], r.get("ResourceId"))
            g = groups.setdefault(key, {"billed_cost": 0.0, "effective_cost": 0.0, "project_name": None,
                                        "service_category": None, "owner": None})
            g["billed_cost"] += float(r["BilledCost"])
            g["effective_cost"] += float(r["EffectiveCost"])
            g["project_name"] = g["project_name"] or r.get("SubAccountName")
            g["service_category"] = g["service_category"] or r.get("ServiceCategory")
            owner = next((t["value"] for t in r.get("Tags") or [] if t["key"] == v["owner_label"]), None)
            g["owner"] = max(filter(None, [g["owner"], owner]), default=None)
        out = [{"day": k[0], "project_id": k[1], "service": k[2], "region": k[3], "charge": k[4], "currency": k[5],
                "resource_id": k[6], **g} for k, g in sorted(groups.items(), key=lambda kv: str(kv[0]))]
        return out, len(rows)


def _encode(value: Any, kind: str) -> Any:
    """BigQuery's JSON cell encoding: every scalar is a string, NULL is null."""
    if value is None:
        return None
    if kind == "DATE":
        return value.isoformat()
    if kind == "FLOAT":
        return repr(float(value))
    return str(value)


def standard_row(day: str, project: str, service: str, cost: float, *, region: str | None = "us-central1",
                 credits: list[float] | None = None, owner: str | None = None, cost_type: str = "regular",
                 partition_lag_days: int = 0, hour: int = 10, resource: str | None = None,
                 name: str | None = None) -> dict[str, Any]:
    """One native-export row in the export's own shape (what ``SELECT _PARTITIONTIME, *`` gives)."""
    start = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=hour)
    part = (start.floor("D") + pd.Timedelta(days=partition_lag_days)).strftime("%Y-%m-%d 00:00:00 UTC")
    return {
        "_PARTITIONTIME": part,
        "billing_account_id": "012345-6789AB-CDEF01",
        "service": {"id": "6F81-5844-456A" if service == "Compute Engine" else "95FF-2EF5-5EA1",
                    "description": service},
        "sku": {"id": "2E27-4F75-95CD", "description": "N2 Instance Core running in Americas"},
        "usage_start_time": start.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "usage_end_time": (start + pd.Timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "project": {"id": project, "number": "000000000000", "name": name or project.replace("-", " ").title(),
                    "labels": [{"key": "owner", "value": owner}] if owner else [], "ancestry_numbers": "/0/"},
        "labels": [], "system_labels": [],
        "location": {"location": region or "global", "country": "US" if region else None, "region": region,
                     "zone": f"{region}-a" if region else None},
        "export_time": (start + pd.Timedelta(hours=5)).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cost": cost, "currency": "USD", "currency_conversion_rate": 1.0,
        "usage": {"amount": 3600.0, "unit": "seconds", "amount_in_pricing_units": 1.0,
                  "pricing_unit": "hour"},
        "credits": [{"name": "Committed use discount", "amount": c, "full_name": None, "id": "scrubbed",
                     "type": "COMMITTED_USAGE_DISCOUNT"} for c in credits or []],
        "invoice": {"month": start.strftime("%Y%m")}, "cost_type": cost_type,
        "adjustment_info": None,
        **({"resource": {"name": resource, "global_name": f"//compute.googleapis.com/{resource}"}}
           if resource else {}),
    }


# ------------------------------------------------------------------------------------------ OAuth


class FakeOAuth(HttpFake):
    """Google's OAuth token endpoint refusing a refresh as it does for an expired or revoked ADC login."""

    def route(self, req: Received) -> tuple[int, Any, dict[str, str]]:
        return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, {}


# ------------------------------------------------------------------------------------------ Cloud Billing


class FakeBilling(HttpFake):
    """Cloud Billing REST v1: ``GET /v1/billingAccounts/{id}/projects`` with ``pageSize`` / ``pageToken``."""

    def __init__(self, *, page_size: int = 2) -> None:
        self.accounts: dict[str, list[dict[str, Any]]] = {}
        self.page_size = page_size
        super().__init__()

    def route(self, req: Received) -> tuple[int, Any, dict[str, str]]:
        m = re.fullmatch(r"/v1/billingAccounts/([^/]+)/projects", req.path)
        if not m or req.method != "GET":
            raise HttpError(404, "notFound", f"Not found: {req.path}", "NOT_FOUND")
        if m.group(1) not in self.accounts:
            raise HttpError(403, "forbidden", "The caller does not have permission", "PERMISSION_DENIED")
        items = self.accounts[m.group(1)]
        start = int(req.query.get("pageToken", ["0"])[0] or 0)
        size = min(int(req.query.get("pageSize", [str(self.page_size)])[0]), self.page_size)
        out: dict[str, Any] = {"projectBillingInfo": items[start: start + size]}
        if start + size < len(items):
            out["nextPageToken"] = str(start + size)
        return 200, out, {}


# ------------------------------------------------------------------------------------------ Monitoring


class FakeMonitoring:
    """``google.monitoring.v3.MetricService/ListTimeSeries`` over insecure gRPC on a free local port.

    ``series[project]`` holds TimeSeries as JSON dicts (the API's JSON shape, hourly points already aligned);
    a request returns those of the project whose ``metric.type`` / ``resource.type`` match its filter and whose
    points fall in its interval, ``page_size`` points at most per page."""

    def __init__(self, *, page_size: int = 50) -> None:
        from google.cloud import monitoring_v3

        self._types = monitoring_v3
        self.series: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.page_size = page_size
        self.requests: list[Any] = []
        self.broken: dict[str, tuple[grpc.StatusCode, str]] = {}  # project -> always fails with this
        self.throttle_next = 0  # answer the next N requests with RESOURCE_EXHAUSTED + RetryInfo
        self.unauthenticated = False
        self._lock = threading.Lock()
        handler = grpc.method_handlers_generic_handler("google.monitoring.v3.MetricService", {
            "ListTimeSeries": grpc.unary_unary_rpc_method_handler(
                self._list_time_series, request_deserializer=monitoring_v3.ListTimeSeriesRequest.deserialize,
                response_serializer=monitoring_v3.ListTimeSeriesResponse.serialize)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[handler])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(None)

    def _list_time_series(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            self.requests.append(request)
            throttle = self.throttle_next > 0
            self.throttle_next -= int(throttle)
        project = request.name.removeprefix("projects/")
        if self.unauthenticated:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "Request had invalid authentication credentials.")
        if throttle:
            context.abort_with_status(_status(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                              "Quota exceeded for quota metric 'Time series queries'", 0.01))
        if project in self.broken:
            code, message = self.broken[project]
            context.abort(code, message)
        metric = re.search(r'metric\.type\s*=\s*"([^"]+)"', request.filter)
        resource = re.search(r'resource\.type\s*=\s*"([^"]+)"', request.filter)
        agg = request.aggregation
        if agg.alignment_period.total_seconds() != 3600 or agg.per_series_aligner.name != "ALIGN_MEAN":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "fake Monitoring serves hourly ALIGN_MEAN only")
        lo, hi = pd.Timestamp(request.interval.start_time), pd.Timestamp(request.interval.end_time)
        points: list[tuple[int, dict[str, Any]]] = []  # (series index, point), flattened for paging
        chosen = [s for s in self.series.get(project, [])
                  if metric and s["metric"]["type"] == metric.group(1)
                  and (not resource or s["resource"]["type"] == resource.group(1))]
        for i, s in enumerate(chosen):
            points += [(i, p) for p in s["points"] if lo < pd.Timestamp(p["interval"]["endTime"]) <= hi]
        start = int(request.page_token or 0)
        size = min(request.page_size or self.page_size, self.page_size)
        page = points[start: start + size]
        out: list[dict[str, Any]] = []
        for i, p in page:
            if not out or out[-1]["_i"] != i:
                out.append({**{k: v for k, v in chosen[i].items() if k != "points"}, "points": [], "_i": i})
            out[-1]["points"].append(p)
        body = {"timeSeries": [{k: v for k, v in s.items() if k != "_i"} for s in out],
                "nextPageToken": str(start + size) if start + size < len(points) else ""}
        return self._types.ListTimeSeriesResponse.from_json(json.dumps(body))


def _status(code: grpc.StatusCode, message: str, retry_seconds: float) -> Any:
    """A grpc status with a google.rpc.RetryInfo detail, as Google's servers send with RESOURCE_EXHAUSTED."""
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2
    from grpc_status import rpc_status

    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
        seconds=int(retry_seconds), nanos=int((retry_seconds % 1) * 1e9))))
    return rpc_status.to_status(status_pb2.Status(code=getattr(code_pb2, code.name), message=message,
                                                  details=[detail]))


def vm_series(instance_id: str, name: str, zone: str, machine_type: str | None,
              points: list[tuple[pd.Timestamp, float]]) -> dict[str, Any]:
    """A gce_instance CPU TimeSeries in the API's JSON shape; ``points`` are (hour start, fraction 0..1)."""
    out: dict[str, Any] = {
        "metric": {"type": "compute.googleapis.com/instance/cpu/utilization", "labels": {"instance_name": name}},
        "resource": {"type": "gce_instance", "labels": {"project_id": "scrubbed", "instance_id": instance_id,
                                                        "zone": zone}},
        "metricKind": "GAUGE", "valueType": "DOUBLE", "unit": "10^2.%",
        "points": _points(points),
    }
    if machine_type:
        out["metadata"] = {"systemLabels": {"machine_type": machine_type, "name": name}}
    return out


def node_series(node: str, cluster: str, location: str, points: list[tuple[pd.Timestamp, float]]) -> dict[str, Any]:
    """A k8s_node allocatable-CPU TimeSeries in the API's JSON shape."""
    return {
        "metric": {"type": "kubernetes.io/node/cpu/allocatable_utilization", "labels": {}},
        "resource": {"type": "k8s_node", "labels": {"project_id": "scrubbed", "location": location,
                                                    "cluster_name": cluster, "node_name": node}},
        "metricKind": "GAUGE", "valueType": "DOUBLE", "unit": "1",
        "points": _points(points),
    }


def _points(points: list[tuple[pd.Timestamp, float]]) -> list[dict[str, Any]]:
    """Aligned points newest first (as the API returns them), stamped at the end of their hour."""
    out = []
    for t, v in sorted(points, key=lambda p: p[0], reverse=True):
        end = (pd.Timestamp(t) + pd.Timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        out.append({"interval": {"startTime": end, "endTime": end}, "value": {"doubleValue": v}})
    return out

