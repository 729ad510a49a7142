"""A local HTTPS stand-in for the Azure Resource Manager endpoints the azure provider calls.

It answers with the services' JSON shapes (fixtures in tests/data/azure, whose first items are the templates of
generated rows and resources) and checks requests the way ARM does: bearer token, api-version, the usage-details
``$filter``, the Cost Management query body, metrics parameters (``top`` defaults to 10 series under a
``$filter``, ``meterDetails`` is null unless expanded).  Faults (status, headers, count) can be queued per
method and path, and every request is logged for assertions.  The certificate is generated per test session.
"""

from __future__ import annotations

import copy
import datetime as dt
import ipaddress
import json
import re
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

DATA = Path(__file__).parent / "data" / "azure"
GROUPINGS = {"resourcegroupname": "resourceGroup", "resourcegroup": "resourceGroup", "metercategory": "meterCategory",
             "resourcelocation": "resourceLocation", "chargetype": "chargeType", "subscriptionid": "subscription"}


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((DATA / name).read_text()))


# ------------------------------------------------------------------------------------------ credentials


class FakeCredential:
    """A TokenCredential handing out one fixed token; counts how often it was asked."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(self.token, int(time.time()) + 3600)


class NoCredential:
    """What DefaultAzureCredential does when nothing in its chain works."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token from the included "
                                        "credentials. EnvironmentCredential: authentication unavailable.")


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, usable as its own CA (``connection_verify``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-arm.local")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "fake-arm.pem", folder / "fake-arm.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


# ------------------------------------------------------------------------------------------ builders


def sub_id(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012x}"


def subscription(sid: str, name: str, state: str = "Enabled", tags: dict[str, str] | None = None) -> dict[str, Any]:
    s = copy.deepcopy(load("subscriptions.json")["value"][0])
    s.update(id=f"/subscriptions/{sid}", subscriptionId=sid, displayName=name, state=state)
    if tags is None:
        s.pop("tags", None)
    else:
        s["tags"] = tags
    return s


def legacy_item(sid: str, day: str, cost: float, meter_category: str, location: str, rg: str, resource: str,
                charge_type: str = "Usage", currency: str = "USD", tags: dict[str, str] | None = None,
                sub_name: str = "Payments Production") -> dict[str, Any]:
    """A legacy (EA / pay-as-you-go) usage detail shaped like the fixture's first row."""
    item = copy.deepcopy(load("usage_details_legacy.json")["value"][0])
    p = item["properties"]
    rid = f"/subscriptions/{sid}/resourceGroups/{rg}/providers/{resource}"
    p.update(subscriptionId=sid, subscriptionName=sub_name, date=f"{day}T00:00:00.0000000Z", cost=cost,
             effectivePrice=cost, billingCurrency=currency, resourceLocation=location, resourceGroup=rg,
             resourceId=rid, resourceName=rid.rsplit("/", 1)[-1], chargeType=charge_type)
    p["meterDetails"]["meterCategory"] = meter_category
    item["name"] = f"{abs(hash((sid, day, meter_category, rid, charge_type))):032x}"
    item["id"] = f"/subscriptions/{sid}/providers/Microsoft.Consumption/usageDetails/{item['name']}"
    item["tags"] = tags or {}
    return item


def vm(sid: str, rg: str, name: str, location: str, size: str, tags: dict[str, str] | None = None) -> dict[str, Any]:
    v = copy.deepcopy(load("virtual_machines.json")["value"][0])
    v.update(name=name, location=location, tags=tags or {},
             id=f"/subscriptions/{sid}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}")
    v["properties"]["hardwareProfile"]["vmSize"] = size
    v["properties"]["osProfile"]["computerName"] = name
    return v


def vmss(sid: str, rg: str, name: str, location: str, size: str, capacity: int,
         tags: dict[str, str] | None = None) -> dict[str, Any]:
    s = copy.deepcopy(load("virtual_machine_scale_sets.json")["value"][0])
    s.update(name=name, location=location,
             id=f"/subscriptions/{sid}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}")
    if tags is not None:
        s["tags"] = tags
    s["sku"].update(name=size, capacity=capacity)
    s["properties"]["virtualMachineProfile"]["osProfile"]["computerNamePrefix"] = name
    return s


# ------------------------------------------------------------------------------------------ the server


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    times: int | None  # None: forever


@dataclass
class Logged:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0
    auth: str = ""


@dataclass
class FakeAzure:
    """State of the fake ARM: subscriptions, usage details, VMs, scale sets and CPU series per resource."""

    token: str
    base: str = ""
    subscriptions: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    vms: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    scale_sets: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    # resource id (lower) -> VMName ("" for a VM) -> hour (ISO, Z) -> (average, maximum)
    cpu: dict[str, dict[str, dict[str, tuple[float, float]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(dict)))
    canned: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    log: list[Logged] = field(default_factory=list)
    page_size: int = 1000
    lock: threading.Lock = field(default_factory=threading.Lock)

    # ---------------------------------------------------------------------------------------- set-up

    def add_subscription(self, sid: str, name: str, **kw: Any) -> None:
        self.subscriptions.append(subscription(sid, name, **kw))

    def set_cpu(self, resource_id: str, hours: dict[str, tuple[float, float]], instance: str = "") -> None:
        self.cpu[resource_id.lower()][instance].update(hours)

    def fail(self, method: str, path: str, status: int, *, times: int | None = None,
             headers: dict[str, str] | None = None, code: str = "", message: str = "") -> None:
        body = {"error": {"code": code or {429: "TooManyRequests", 403: "AuthorizationFailed"}.get(status, "Error"),
                          "message": message or f"fake fault {status}"}}
        self.faults.append(Fault(method, re.compile(path, re.IGNORECASE), status, headers or {}, body, times))

    def requests_to(self, pattern: str, method: str | None = None) -> list[Logged]:
        rx = re.compile(pattern, re.IGNORECASE)
        return [r for r in self.log if rx.search(r.path) and (method is None or r.method == method)]

    # -------------------------------------------------------------------------------------- dispatch

    def handle(self, method: str, url: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(url)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        body = json.loads(raw) if raw else None
        entry = Logged(method, path, query, body, auth=headers.get("authorization", ""))
        with self.lock:
            self.log.append(entry)
            fault = next((f for f in self.faults if f.method == method and f.path.search(path)
                          and (f.times is None or f.times > 0)), None)
            if fault is not None and fault.times is not None:
                fault.times -= 1
        status, out_headers, out = self._answer(method, path, query, body, headers, fault)
        entry.status = status
        return status, out_headers, out

    def _answer(self, method: str, path: str, query: dict[str, str], body: Any, headers: dict[str, str],
                fault: Fault | None) -> tuple[int, dict[str, str], Any]:
        if headers.get("authorization") != f"Bearer {self.token}":
            challenge = ('Bearer authorization_uri="https://login.microsoftonline.com/common", error="invalid_token", '
                         'error_description="The access token has expired."')
            return 401, {"WWW-Authenticate": challenge}, {"error": {
                "code": "ExpiredAuthenticationToken",
                "message": "The access token expiry UTC time is earlier than current UTC time."}}
        if "api-version" not in query:
            return 400, {}, {"error": {"code": "MissingApiVersionParameter",
                                       "message": "The api-version query parameter (?api-version=) is required."}}
        if fault is not None:
            return fault.status, fault.headers, fault.body
        canned = self.canned.get((method, path.lower()))
        if canned:
            return 200, {}, json.loads(json.dumps(canned.pop(0)).replace("{base}", self.base))
        routes: list[tuple[str, str, Any]] = [
            ("GET", r"/subscriptions", self._subscriptions),
            ("GET", r"/subscriptions/([^/]+)/providers/Microsoft\.Consumption/usageDetails", self._usage_details),
            ("POST", r"/subscriptions/([^/]+)/providers/Microsoft\.CostManagement/query", self._query),
            ("GET", r"/subscriptions/([^/]+)/providers/Microsoft\.Compute/virtualMachines", self._vms),
            ("GET", r"/subscriptions/([^/]+)/providers/Microsoft\.Compute/virtualMachineScaleSets", self._vmss),
            ("GET", r"(/subscriptions/.+)/providers/Microsoft\.Insights/metrics", self._metrics),
        ]
        for m, rx, fn in routes:
            match = re.fullmatch(rx, path, re.IGNORECASE)
            if m == method and match:
                return fn(*match.groups(), query=query, body=body)  # type: ignore[no-any-return]
        return 404, {}, {"error": {"code": "InvalidResourceType", "message": f"no route for {method} {path}"}}

    def _known(self, sid: str) -> bool:
        return any(s["subscriptionId"].lower() == sid.lower() for s in self.subscriptions)

    def _not_found(self, sid: str) -> tuple[int, dict[str, str], Any]:
        return 404, {}, {"error": {"code": "SubscriptionNotFound", "message": f"The subscription '{sid}' could not "
                                                                                "be found."}}

    def _page(self, items: list[dict[str, Any]], query: dict[str, str], link: str) -> dict[str, Any]:
        start = int(query.get("$skiptoken") or 0)
        out: dict[str, Any] = {"value": items[start: start + self.page_size]}
        if start + self.page_size < len(items):
            out["nextLink"] = f"{self.base}{link}&$skiptoken={start + self.page_size}"
        return out

    def _subscriptions(self, *, query: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        page = self._page(self.subscriptions, query, f"/subscriptions?api-version={query['api-version']}")
        page["count"] = {"type": "Total", "value": len(self.subscriptions)}
        return 200, {}, page

    def _usage_details(self, sid: str, *, query: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        if not self._known(sid):
            return self._not_found(sid)
        flt = query.get("$filter", "")
        m = re.fullmatch(r"properties/usageStart ge '(\d{4}-\d{2}-\d{2})' and properties/usageEnd le "
                         r"'(\d{4}-\d{2}-\d{2})'", flt)
        if flt and m is None:
            return 400, {}, {"error": {"code": "400", "message": f"Invalid $filter: {flt[:80]}"}}
        lo, hi = (m.group(1), m.group(2)) if m else ("0000", "9999")
        expand = "meterdetails" in query.get("$expand", "").lower()
        items = []
        for item in self.usage.get(sid.lower(), []):
            if lo <= item["properties"]["date"][:10] <= hi:
                item = copy.deepcopy(item)
                if item.get("kind") == "legacy" and not expand:
                    item["properties"]["meterDetails"] = None
                items.append(item)
        link = (f"/subscriptions/{sid}/providers/Microsoft.Consumption/usageDetails?api-version="
                f"{query['api-version']}&$filter={flt}&$expand={query.get('$expand', '')}")
        return 200, {}, self._page(items, query, link)

    def _query(self, sid: str, *, query: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        if not self._known(sid):
            return self._not_found(sid)
        problem = _check_query(body)
        if problem:
            return 400, {}, {"error": {"code": "BadRequest", "message": f"Invalid query definition: {problem}"}}
        lo, hi = body["timePeriod"]["from"][:10], body["timePeriod"]["to"][:10]
        groups = [g["name"] for g in body["dataset"].get("grouping") or []]
        sums: dict[tuple[Any, ...], float] = defaultdict(float)
        currency: dict[tuple[Any, ...], str] = {}
        for item in self.usage.get(sid.lower(), []):
            rec = _record(item)
            if not lo <= rec["date"] <= hi:
                continue
            key = (int(rec["date"].replace("-", "")), *(rec[GROUPINGS[g.lower()]] for g in groups))
            sums[key] += rec["cost"]
            currency[key] = rec["currency"]
        rows = [[round(v, 6), *k, currency[k]] for k, v in sorted(sums.items())]
        start = int(query.get("$skiptoken") or 0)
        props: dict[str, Any] = {
            "nextLink": None,
            "columns": [{"name": "Cost", "type": "Number"}, {"name": "UsageDate", "type": "Number"},
                        *({"name": g, "type": "String"} for g in groups), {"name": "Currency", "type": "String"}],
            "rows": rows[start: start + self.page_size],
        }
        if start + self.page_size < len(rows):
            props["nextLink"] = (f"{self.base}/subscriptions/{sid}/providers/Microsoft.CostManagement/query"
                                 f"?api-version={query['api-version']}&$skiptoken={start + self.page_size}")
        page = copy.deepcopy(load("cost_query_page1.json"))
        page["properties"] = props
        return 200, {}, page

    def _vms(self, sid: str, *, query: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        if not self._known(sid):
            return self._not_found(sid)
        link = f"/subscriptions/{sid}/providers/Microsoft.Compute/virtualMachines?api-version={query['api-version']}"
        return 200, {}, self._page(self.vms.get(sid.lower(), []), query, link)

    def _vmss(self, sid: str, *, query: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        if not self._known(sid):
            return self._not_found(sid)
        link = (f"/subscriptions/{sid}/providers/Microsoft.Compute/virtualMachineScaleSets?api-version="
                f"{query['api-version']}")
        return 200, {}, self._page(self.scale_sets.get(sid.lower(), []), query, link)

    def _metrics(self, rid: str, *, query: dict[str, str], body: Any) -> tuple[int, dict[str, str], Any]:
        bad = [k for k, want in (("metricnames", "Percentage CPU"), ("interval", "PT1H")) if query.get(k) != want]
        aggs = {a.strip().lower() for a in query.get("aggregation", "").split(",")}
        if bad or not {"average", "maximum"} <= aggs or "timespan" not in query:
            return 400, {}, {"error": {"code": "BadRequest", "message": f"unsupported metrics query {query}"}}
        lo, hi = (_ts(t) for t in query["timespan"].split("/"))
        scale_set = "/virtualmachinescalesets/" in rid.lower()
        per_instance = query.get("$filter", "") == "VMName eq '*'"
        series = self.cpu.get(rid.lower(), {})
        hours = [lo + dt.timedelta(hours=i) for i in range(int((hi - lo).total_seconds() // 3600))]

        def points(values: dict[str, tuple[float, float]] | None) -> list[dict[str, Any]]:
            out = []
            for h in hours:
                key = h.strftime("%Y-%m-%dT%H:%M:%SZ")
                got = (values or {}).get(key)
                out.append({"timeStamp": key, "average": got[0], "maximum": got[1]} if got else {"timeStamp": key})
            return out

        if scale_set and per_instance:
            top = int(query.get("top") or 10)
            timeseries = [{"metadatavalues": [{"name": {"value": "vmname", "localizedValue": "vmname"}, "value": n}],
                           "data": points(v)} for n, v in sorted(series.items())[:top]]
        elif scale_set:
            merged: dict[str, tuple[float, float]] = {}
            for h in {k for v in series.values() for k in v}:
                vals = [v[h] for v in series.values() if h in v]
                merged[h] = (sum(a for a, _ in vals) / len(vals), max(m for _, m in vals))
            timeseries = [{"metadatavalues": [], "data": points(merged)}]
        else:
            timeseries = [{"metadatavalues": [], "data": points(series.get(""))}]
        resp = copy.deepcopy(load("metrics_vmss.json" if scale_set else "metrics_vm.json"))
        resp.update(timespan=query["timespan"], cost=len(hours) * max(len(timeseries), 1),
                    resourceregion=_region_of(self, rid))
        resp["value"][0].update(id=f"{rid}/providers/Microsoft.Insights/metrics/Percentage CPU", timeseries=timeseries)
        return 200, {}, resp


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _region_of(fake: FakeAzure, rid: str) -> str:
    for group in (*fake.vms.values(), *fake.scale_sets.values()):
        for r in group:
            if r["id"].lower() == rid.lower():
                return str(r["location"])
    return "eastus"


def _record(item: dict[str, Any]) -> dict[str, Any]:
    """What Cost Management would group a usage detail by."""
    p = item["properties"]
    legacy = item.get("kind") == "legacy"
    meter = (p.get("meterDetails") or {}).get("meterCategory") if legacy else p.get("meterCategory")
    return {"date": p["date"][:10], "cost": float(p["cost"] if legacy else p["costInBillingCurrency"]),
            "resourceGroup": p.get("resourceGroup") or "", "meterCategory": meter or "",
            "resourceLocation": re.sub(r"\s", "", str(p.get("resourceLocation") or "")).lower(),
            "chargeType": str(p.get("chargeType") or "").lower(),
            "currency": p.get("billingCurrency") if legacy else p.get("billingCurrencyCode"),
            "subscription": p.get("subscriptionId") if legacy else p.get("subscriptionGuid")}


def _check_query(body: Any) -> str:
    if not isinstance(body, dict):
        return "no body"
    if body.get("type") not in ("ActualCost", "AmortizedCost", "Usage"):
        return f"type {body.get('type')!r}"
    if body.get("timeframe") != "Custom" or not (body.get("timePeriod") or {}).get("from"):
        return "timeframe Custom needs timePeriod"
    ds = body.get("dataset") or {}
    if ds.get("granularity") != "Daily":
        return f"granularity {ds.get('granularity')!r}"
    agg = ds.get("aggregation") or {}
    if not agg or any(a.get("function") != "Sum" or a.get("name") not in ("Cost", "PreTaxCost") for a in agg.values()):
        return "aggregation"
    for g in ds.get("grouping") or []:
        if g.get("type") != "Dimension" or str(g.get("name", "")).lower() not in GROUPINGS:
            return f"Invalid dataset grouping: {g.get('name')!r}"
    return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeAzure

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, body = self.fake.handle(self.command, self.path, headers, raw)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-ms-request-id", "00000000-1234-0000-0000-000000000000")
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve


@dataclass
class Server:
    fake: FakeAzure
    url: str
    ca_file: Path


def serve(token: str, cert: tuple[Path, Path]) -> Iterator[Server]:
    """Run a FakeAzure on an ephemeral port over HTTPS until the generator is closed."""
    fake = FakeAzure(token)
    handler = type("Handler", (_Handler,), {"fake": fake})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    fake.base = f"https://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(fake, fake.base, cert[0])
    finally:
        httpd.shutdown()
        httpd.server_close()


def miner_story(fake: Any, sid: str, now: pd.Timestamp, rng: np.random.Generator) -> None:
    """The Azure mining signature the provider test and the fault suite both replay: a month of two web VMs
    and storage in East US; since yesterday three new VMs in Brazil South (``rg-tmp-7731``) pinned at ~99%
    CPU and compute spend out of its band, all added to ``fake``."""
    today = now.floor("D")
    for d in pd.date_range(today - pd.Timedelta(days=30), today):
        day = d.strftime("%Y-%m-%d")
        for i in (1, 2):
            fake.usage[sid].append(legacy_item(sid, day, 20 + rng.normal(0, 0.8), "Virtual Machines", "USEast",
                                               "rg-web", f"Microsoft.Compute/virtualMachines/web-{i}"))
        fake.usage[sid].append(legacy_item(sid, day, 3 + rng.normal(0, 0.1), "Storage", "USEast", "rg-web",
                                           "Microsoft.Storage/storageAccounts/stweb"))
        if d >= today - pd.Timedelta(days=1):
            for n in range(3):
                fake.usage[sid].append(legacy_item(sid, day, 26.4 if d < today else 13.0, "Virtual Machines",
                                                   "BrazilSouth", "rg-tmp-7731",
                                                   f"Microsoft.Compute/virtualMachines/xmr-{n}"))
    web = [vm(sid, "rg-web", f"web-{i}", "eastus", "Standard_D4s_v3") for i in (1, 2)]
    miners = [vm(sid, "rg-tmp-7731", f"xmr-{n}", "brazilsouth", "Standard_F16s_v2") for n in range(3)]
    fake.vms[sid] += web + miners
    history = pd.date_range(now - pd.Timedelta(days=10), now - pd.Timedelta(hours=1), freq="h")
    for v in web:
        fake.set_cpu(v["id"], {t.strftime("%Y-%m-%dT%H:%M:%SZ"): (
            (c := 25 + 15 * np.sin(2 * np.pi * t.hour / 24) + rng.normal(0, 4)), min(100.0, c + 10))
            for t in history})
    pinned = pd.date_range(today - pd.Timedelta(hours=18), now - pd.Timedelta(hours=1), freq="h")
    for v in miners:
        fake.set_cpu(v["id"], {t.strftime("%Y-%m-%dT%H:%M:%SZ"): (99.0 + rng.normal(0, 0.2), 100.0) for t in pinned})
