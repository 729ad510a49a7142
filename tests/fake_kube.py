"""A local fake of the read-only parts of the Kubernetes API costwatch uses, over real HTTP(S) on 127.0.0.1.

It answers with the API server's JSON shapes so the official ``kubernetes`` client can be pointed at it
(a ``Configuration`` whose host is ``fake.url``, or a kubeconfig written by ``fake.kubeconfig``):

* ``List`` kinds (``NamespaceList``, ``PodList``, …) with ``metadata.resourceVersion``; ``limit`` returns a
  page with an opaque ``metadata.continue`` and ``remainingItemCount``, ``continue`` resumes; a token can be
  expired on demand (HTTP 410 ``Expired``, as after etcd compaction) and a bad one is a 400.
* ``Status`` objects for errors: 401 without the expected bearer token, 403 for forbidden (resource,
  namespace) pairs with the API server's wording, 404 for unknown paths and for ``metrics.k8s.io`` when
  "metrics-server is not installed", 405 for anything but GET (costwatch must only read).
* metrics.k8s.io/v1beta1 ``NodeMetricsList`` and ``PodMetricsList`` with nanocore/KiB usages.

RBAC is modelled the way it works: a namespace forbidden for a resource also forbids the cluster-wide list of
that resource (a cluster-wide permission would have covered the namespace).

    with FakeKube(token="t0k") as kube:
        kube.add_namespace("team-a", created=T0)
        kube.add_pod("team-a", "web-1", node="ip-10-0-1-5.ec2.internal", containers=[container("web", "nginx")])
        ApiClient(Configuration(host=kube.url, api_key=...))
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

T0 = datetime(2026, 11, 1, tzinfo=UTC)

LIST_KINDS = {"namespaces": "NamespaceList", "nodes": "NodeList", "pods": "PodList",
              "resourcequotas": "ResourceQuotaList", "limitranges": "LimitRangeList",
              "networkpolicies": "NetworkPolicyList"}
NAMESPACED = {"pods", "resourcequotas", "limitranges", "networkpolicies"}
CORE = {"namespaces", "nodes", "pods", "resourcequotas", "limitranges"}


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def container(name: str, image: str, *, command: list[str] | None = None, args: list[str] | None = None,
              env: dict[str, str] | None = None, requests: dict[str, str] | None = None,
              limits: dict[str, str] | None = None, security_context: dict[str, Any] | None = None) -> dict[str, Any]:
    """A container as the API server returns it (defaults filled in)."""
    c: dict[str, Any] = {"name": name, "image": image, "resources": {},
                         "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
                         "imagePullPolicy": "IfNotPresent"}
    if command is not None:
        c["command"] = command
    if args is not None:
        c["args"] = args
    if env:
        c["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if requests:
        c["resources"]["requests"] = requests
    if limits:
        c["resources"]["limits"] = limits
    if security_context is not None:
        c["securityContext"] = security_context
    return c


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class State:
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {k: [] for k in LIST_KINDS})
    node_metrics: list[dict[str, Any]] | None = field(default_factory=list)
    pod_metrics: list[dict[str, Any]] | None = field(default_factory=list)
    forbidden: set[tuple[str | None, str]] = field(default_factory=set)  # (namespace | None, resource)
    requests: list[Request] = field(default_factory=list)
    resource_version: int = 41_000
    expire_next_continue: bool = False
    hang: float = 0.0
    token: str | None = None


class FakeKube:
    def __init__(self, *, token: str | None = None, certfile: str | None = None, keyfile: str | None = None,
                 metrics: bool = True) -> None:
        self.state = State(token=token)
        if not metrics:
            self.state.node_metrics = self.state.pod_metrics = None
        state = self.state

        class Handler(_Handler):
            st = state

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    # -- lifecycle

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeKube:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def requests(self) -> list[Request]:
        return self.state.requests

    def kubeconfig(self, path: Path, *, context: str = "fake", token: str | None = None,
                   extra_contexts: dict[str, str] | None = None) -> Path:
        """A kubeconfig with one context per server: ``context`` for this fake, plus ``extra_contexts``
        (name -> server URL), all with the bearer token."""
        servers = {context: self.url, **(extra_contexts or {})}
        doc = {
            "apiVersion": "v1", "kind": "Config", "preferences": {}, "current-context": context,
            "clusters": [{"name": f"{n}-cluster", "cluster": {"server": url}} for n, url in servers.items()],
            "users": [{"name": "costwatch", "user": {"token": token or self.state.token or "unused"}}],
            "contexts": [{"name": n, "context": {"cluster": f"{n}-cluster", "user": "costwatch"}} for n in servers],
        }
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        return path

    # -- objects

    def _meta(self, name: str, namespace: str | None, created: datetime, **extra: Any) -> dict[str, Any]:
        self.state.resource_version += 1
        meta: dict[str, Any] = {"name": name, "uid": f"{abs(hash((namespace, name))):032x}"[:32],
                                "resourceVersion": str(self.state.resource_version), "creationTimestamp": iso(created)}
        if namespace is not None:
            meta["namespace"] = namespace
        meta.update({k: v for k, v in extra.items() if v})
        return meta

    def add(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Add a raw object (e.g. loaded from tests/data/kubernetes); like the API server, list items carry no
        ``kind``/``apiVersion`` of their own."""
        obj = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
        self.state.objects[resource].append(obj)
        return obj

    def add_namespace(self, name: str, *, created: datetime = T0) -> dict[str, Any]:
        return self.add("namespaces", {
            "metadata": self._meta(name, None, created, labels={"kubernetes.io/metadata.name": name}),
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})

    def add_node(self, name: str, provider_id: str, *, cpu: str = "4", memory: str = "16Gi",
                 annotations: dict[str, str] | None = None, created: datetime = T0) -> dict[str, Any]:
        return self.add("nodes", {
            "metadata": self._meta(name, None, created, annotations=annotations,
                                   labels={"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}),
            "spec": {"providerID": provider_id},
            "status": {"capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
                       "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "nodeInfo": {"kubeletVersion": "v1.31.2", "containerRuntimeVersion": "containerd://1.7.22"}}})

    def add_pod(self, namespace: str, name: str, *, node: str | None, containers: list[dict[str, Any]],
                init_containers: list[dict[str, Any]] | None = None, created: datetime = T0, phase: str = "Running",
                labels: dict[str, str] | None = None, host_pid: bool = False, host_network: bool = False,
                security_context: dict[str, Any] | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"containers": containers, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                                "serviceAccountName": "default", "schedulerName": "default-scheduler",
                                "securityContext": security_context or {}, "terminationGracePeriodSeconds": 30,
                                "enableServiceLinks": True, "priority": 0}
        if node:
            spec["nodeName"] = node
        if init_containers:
            spec["initContainers"] = init_containers
        if host_pid:
            spec["hostPID"] = True
        if host_network:
            spec["hostNetwork"] = True
        status: dict[str, Any] = {"phase": phase, "qosClass": "BestEffort", "startTime": iso(created)}
        if node:
            status.update(hostIP="10.0.1.5", podIP="10.0.1.77")
        return self.add("pods", {"metadata": self._meta(name, namespace, created, labels=labels),
                                 "spec": spec, "status": status})

    def add_quota(self, namespace: str, name: str, hard: dict[str, str], used: dict[str, str] | None = None,
                  *, scopes: list[str] | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"hard": hard}
        if scopes:
            spec["scopes"] = scopes
        return self.add("resourcequotas", {"metadata": self._meta(name, namespace, T0), "spec": spec,
                                           "status": {"hard": hard, "used": used or {}}})

    def add_limitrange(self, namespace: str, name: str, *, default: dict[str, str],
                       default_request: dict[str, str] | None = None, created: datetime = T0) -> dict[str, Any]:
        limit: dict[str, Any] = {"type": "Container", "default": default}
        if default_request:
            limit["defaultRequest"] = default_request
        return self.add("limitranges", {"metadata": self._meta(name, namespace, created),
                                        "spec": {"limits": [limit]}})

    def add_netpol(self, namespace: str, name: str, *, pod_selector: dict[str, Any],
                   policy_types: list[str] | None = None, egress: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"podSelector": pod_selector}
        if policy_types is not None:
            spec["policyTypes"] = policy_types
        if egress is not None:
            spec["egress"] = egress
        return self.add("networkpolicies", {"metadata": self._meta(name, namespace, T0), "spec": spec})

    def node_usage(self, name: str, cpu: str, memory: str = "2Gi") -> None:
        assert self.state.node_metrics is not None, "metrics-server is off in this fake"
        self.state.node_metrics.append({
            "metadata": {"name": name, "creationTimestamp": iso(datetime.now(UTC)),
                         "labels": {"kubernetes.io/hostname": name}},
            "timestamp": iso(datetime.now(UTC) - timedelta(seconds=12)), "window": "20.034s",
            "usage": {"cpu": cpu, "memory": memory}})

    def pod_usage(self, namespace: str, name: str, containers: dict[str, tuple[str, str]]) -> None:
        assert self.state.pod_metrics is not None, "metrics-server is off in this fake"
        self.state.pod_metrics.append({
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": iso(datetime.now(UTC))},
            "timestamp": iso(datetime.now(UTC) - timedelta(seconds=9)), "window": "15.012s",
            "containers": [{"name": c, "usage": {"cpu": cpu, "memory": mem}} for c, (cpu, mem) in containers.items()]})

    def forbid(self, resource: str, namespace: str | None = None) -> None:
        """403 for listing ``resource`` in ``namespace`` (and so cluster-wide), or cluster-wide only."""
        self.state.forbidden.add((namespace, resource))

    def list_calls(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]


# --------------------------------------------------------------------------------------------- HTTP


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details or {}, "code": code}


def _token(rv: int, start: int) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _untoken(token: str) -> tuple[int, int] | None:
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(doc["rv"]), int(doc["start"])
    except (ValueError, KeyError, TypeError):
        return None


class _Handler(BaseHTTPRequestHandler):
    st: State
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall each

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Audit-Id", "5f1b6c0e-0000-4000-8000-000000000000")
        self.end_headers()
        self.wfile.write(body)

    def _record(self) -> tuple[str, dict[str, str]]:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.st.requests.append(Request(self.command, parts.path, query, headers))
        return parts.path, query

    def _not_allowed(self) -> None:
        self._record()
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._send(405, status(405, "MethodNotAllowed", "the server does not allow this method on the requested "
                                                        "resource"))

    do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed

    def do_GET(self) -> None:
        path, query = self._record()
        if self.st.hang:
            time.sleep(self.st.hang)
        if self.st.token is not None:
            auth = self.headers.get("Authorization", "")
            if auth.split(" ", 1)[-1] != self.st.token or not auth.lower().startswith("bearer "):
                self._send(401, status(401, "Unauthorized", "Unauthorized"))
                return
        route = self._route(path)
        if route is None:
            self._send(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        group, resource, namespace = route
        if group == "metrics.k8s.io":
            self._metrics(resource, namespace, query)
            return
        forbidden = (namespace, resource) in self.st.forbidden or (
            namespace is None and any(r == resource for _, r in self.st.forbidden))
        if forbidden:
            where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
            api_group = "networking.k8s.io" if group == "networking.k8s.io" else ""
            self._send(403, status(403, "Forbidden", f'{resource} is forbidden: User "system:serviceaccount:'
                                   f'costwatch:costwatch" cannot list resource "{resource}" in API group '
                                   f'"{api_group}"{where}', {"kind": resource}))
            return
        items = [o for o in self.st.objects[resource]
                 if namespace is None or o["metadata"].get("namespace") == namespace]
        self._list(LIST_KINDS[resource], "networking.k8s.io/v1" if group == "networking.k8s.io" else "v1",
                   items, query)

    def _route(self, path: str) -> tuple[str, str, str | None] | None:
        p = [x for x in path.split("/") if x]
        if p[:2] == ["api", "v1"]:
            group, rest = "", p[2:]
        elif p[:3] == ["apis", "networking.k8s.io", "v1"]:
            group, rest = "networking.k8s.io", p[3:]
        elif p[:3] == ["apis", "metrics.k8s.io", "v1beta1"]:
            if self.st.node_metrics is None:
                return None
            group, rest = "metrics.k8s.io", p[3:]
        else:
            return None
        namespace = None
        if len(rest) == 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if len(rest) != 1:
            return None
        resource = rest[0]
        ok = {"": CORE, "networking.k8s.io": {"networkpolicies"}, "metrics.k8s.io": {"nodes", "pods"}}[group]
        if resource not in ok or (namespace is not None and group != "metrics.k8s.io" and resource not in NAMESPACED):
            return None
        return group, resource, namespace

    def _metrics(self, resource: str, namespace: str | None, query: dict[str, str]) -> None:
        if resource == "nodes":
            self._list("NodeMetricsList", "metrics.k8s.io/v1beta1", list(self.st.node_metrics or []), query)
        else:
            items = [m for m in self.st.pod_metrics or []
                     if namespace is None or m["metadata"]["namespace"] == namespace]
            self._list("PodMetricsList", "metrics.k8s.io/v1beta1", items, query)

    def _list(self, kind: str, api_version: str, items: list[dict[str, Any]], query: dict[str, str]) -> None:
        items = sorted(items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        rv = self.st.resource_version
        start = 0
        if query.get("continue"):
            if self.st.expire_next_continue:
                self.st.expire_next_continue = False
                self._send(410, status(410, "Expired", "The provided continue parameter is too old to display a "
                                       "consistent list result. You can start a new list without the continue "
                                       "parameter."))
                return
            parsed = _untoken(query["continue"])
            if parsed is None:
                self._send(400, status(400, "BadRequest", "continue key is not valid: illegal base64 data"))
                return
            rv, start = parsed
        limit = int(query["limit"]) if query.get("limit", "").isdigit() and int(query["limit"]) > 0 else None
        page = items[start:start + limit] if limit else items[start:]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        end = start + len(page)
        if limit and end < len(items):
            meta["continue"] = _token(rv, end)
            meta["remainingItemCount"] = len(items) - end
        self._send(200, {"kind": kind, "apiVersion": api_version, "metadata": meta, "items": page})



def self_signed(directory: Path) -> tuple[Path, Path]:
    """(cert, key) for 127.0.0.1, self-signed: the cert is its own CA, as a cluster's ``ca.crt`` would be."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "apiserver.crt", directory / "apiserver.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


__all__ = ["T0", "FakeKube", "Request", "container", "iso", "self_signed", "status"]
