"""Reading a cluster with the official ``kubernetes`` client: read-only lists, every one paginated.

Why it looks the way it does:

* Responses are read as raw JSON (``_preload_content=False``) instead of the client's model objects:
  deserializing ten thousand ``V1Pod`` objects takes longer than fetching them, and the analysis in
  ``posture`` works on the API's own field names.
* Every list sends ``limit`` and follows ``metadata.continue``, so a 20 000-pod cluster is read in pages the
  API server can serve from its cache; an expired continue token (HTTP 410) restarts that list once.
* Namespaced resources are listed cluster-wide first (one paginated call).  When that is forbidden (a
  service account with per-namespace Roles), they are listed namespace by namespace and a namespace
  answering 403 is named in the notes while the others are kept.
* metrics.k8s.io is optional: no metrics-server (404) or one that is down (503) is a note, not an error.
* A cluster that cannot be reached, or rejects the credentials, raises ``Unavailable`` with a reason; the
  caller turns it into a context saying so, so the alert still goes out.  One deadline bounds the whole
  cluster (``kubernetes.timeout``, default 10 s): every request's connect and read wait is cut to what is
  left of it (and to 5 s / 20 s), a body is read in chunks with the deadline checked between them, and a
  failed request is retried once only while time is left.  An API server that accepts the connection and
  never answers costs the deadline, not the 41 s two full read timeouts took.
* Reasons never contain credentials: they are built from status codes and the API's ``Status.message``,
  never from exception text that could carry headers, and are scrubbed of token-looking strings anyway.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from costwatch.config import Config, KubernetesCluster

from .posture import ClusterContext, Snapshot, analyze
from .signs import clean
from .suggest import suggest_all

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger("costwatch.kubernetes")

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
DEADLINE = 10.0    # default ``kubernetes.timeout``: connect + every read of one cluster, retries included
CHUNK = 1 << 16
PAGE_SIZE = 500
MAX_WORKERS = 4
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
RBAC_HINT = "apply deploy/kubernetes/rbac.yaml (read-only ClusterRole) to the identity costwatch uses"
INSTALL_HINT = "the kubernetes Python client is not installed: pip install 'costwatch[k8s]'"

_SECRETISH = re.compile(r"(?i)(bearer\s+\S+|eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]*|(token|password|secret|key)=\S+"
                        r"|[A-Za-z0-9+/]{40,}={0,2})")


class Unavailable(Exception):
    """The cluster cannot be read; ``str(exc)`` is the user-facing reason and holds no credentials."""


def scrub(text: str, limit: int = 240) -> str:
    """A reason safe to log and send: token-looking strings removed, control characters escaped, capped."""
    return clean(_SECRETISH.sub("[redacted]", text), limit)


def installed() -> bool:
    try:
        import kubernetes  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------- connecting


def connect(cluster: KubernetesCluster, *, kubeconfig: str | None = None,
            service_account_dir: Path = SERVICE_ACCOUNT_DIR, environ: Mapping[str, str] | None = None) -> ApiClient:
    """An ``ApiClient`` for one configured cluster: its kubeconfig context (``KUBECONFIG`` or
    ``~/.kube/config``; exec plugins such as ``aws eks get-token`` work), or the pod's service account."""
    if not installed():
        raise Unavailable(INSTALL_HINT)
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.incluster_config import InClusterConfigLoader

    conf = client.Configuration()
    env = os.environ if environ is None else environ
    try:
        if cluster.in_cluster:
            InClusterConfigLoader(token_filename=str(service_account_dir / "token"),
                                  cert_filename=str(service_account_dir / "ca.crt"),
                                  environ=env).load_and_set(conf)
        else:
            config.load_kube_config(config_file=kubeconfig or env.get("KUBECONFIG") or None, context=cluster.context,
                                    client_configuration=conf, persist_config=False)
    except ConfigException as e:
        where = "in-cluster service account" if cluster.in_cluster else \
            f"kubeconfig context {cluster.context!r}" if cluster.context else "kubeconfig current context"
        raise Unavailable(f"{where}: {scrub(str(e))}") from None
    except Exception as e:  # exec plugins and malformed files fail in many ways; never show their text raw
        raise Unavailable(f"kubeconfig could not be loaded ({type(e).__name__}: {scrub(str(e))})") from None
    conf.retries = 0   # ``Reader`` retries itself, within the cluster's deadline
    return client.ApiClient(conf)


# --------------------------------------------------------------------------------------------- reading


def _message(body: Any) -> str:
    try:
        doc = json.loads(body) if body else {}
    except (ValueError, TypeError):
        return ""
    return scrub(str(doc.get("message") or ""), 200) if isinstance(doc, dict) else ""


def reason(exc: BaseException, what: str, host: str = "") -> str:
    """Why a request failed, for people: status and the API's message, or what the network said."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import (
        ConnectTimeoutError,
        MaxRetryError,
        NewConnectionError,
        ProtocolError,
        ReadTimeoutError,
        SSLError,
    )

    at = f" at {scrub(host, 120)}" if host else ""
    if isinstance(exc, ApiException):
        msg = _message(exc.body)
        if exc.status == 0:  # the client's own wrapping of TLS errors
            return f"TLS error talking to the API server{at}: {scrub(str(exc.reason or ''), 200)}"
        if exc.status == 401:
            return (f"unauthorized (HTTP 401) listing {what}: the API server rejected the credentials; refresh "
                    "the kubeconfig login or check the service account token")
        if exc.status == 403:
            return f"forbidden (HTTP 403) to list {what}{': ' + msg if msg else ''}; {RBAC_HINT}"
        return f"HTTP {exc.status} listing {what}{': ' + msg if msg else ''}"
    cause = exc.reason if isinstance(exc, MaxRetryError) else exc
    if isinstance(cause, SSLError):
        return f"TLS error talking to the API server{at}: {scrub(str(cause), 200)}"
    if isinstance(cause, NewConnectionError):  # before ConnectTimeoutError: urllib3 2 makes it a subclass
        return f"cannot connect to the API server{at} (connection refused or no route); is the cluster up?"
    if isinstance(cause, ConnectTimeoutError):
        return f"timed out connecting to the API server{at}"
    if isinstance(cause, ReadTimeoutError):
        return f"timed out waiting for the API server{at} listing {what}"
    if isinstance(cause, ProtocolError):
        return f"the API server{at} dropped the connection listing {what}"
    return f"cannot reach the API server{at} ({type(cause).__name__})"


class Reader:
    """Paginated raw-JSON lists over one ``ApiClient``."""

    def __init__(self, api: ApiClient, *, page_size: int = PAGE_SIZE,
                 timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT), deadline: float = DEADLINE) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.net = client.NetworkingV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.host = str(api.configuration.host or "")
        self.page_size = page_size
        self.timeout = timeout
        self.budget = deadline
        self.deadline = time.monotonic() + deadline

    def too_slow(self, what: str) -> str:
        at = f" at {scrub(self.host, 120)}" if self.host else ""
        return (f"no complete answer from the API server{at} within {self.budget:g} s (kubernetes.timeout) "
                f"listing {what}: it is overloaded or not answering; raise kubernetes.timeout for a very large "
                "cluster")

    def _left(self, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Unavailable(self.too_slow(what))
        return left

    def page(self, call: Callable[..., Any], what: str, *args: Any, **kw: Any) -> bytes:
        """One response body; a network failure is retried once while the deadline allows, and a wait cut
        short by the deadline is reported as the deadline, not as a generic timeout."""
        from urllib3.exceptions import HTTPError

        retried = False
        while True:
            left = self._left(what)
            try:
                resp = call(*args, _preload_content=False, **kw,
                            _request_timeout=(min(self.timeout[0], left), min(self.timeout[1], left)))
                try:
                    return b"".join(self._chunks(resp, what))
                except Unavailable:
                    resp.close()   # hang up: a server must not go on sending into a connection nobody reads
                    raise
                finally:
                    resp.release_conn()
            except HTTPError:
                if time.monotonic() + 0.05 >= self.deadline:   # the wait was cut to what was left of it
                    raise Unavailable(self.too_slow(what)) from None
                if retried:
                    raise
                retried = True

    def _chunks(self, resp: Any, what: str) -> Iterator[bytes]:
        """The body as it arrives: ``read1`` returns whatever came (``read`` would wait for a full chunk), so a
        server trickling bytes, each within the read timeout, is still cut at the deadline."""
        while chunk := resp.read1(CHUNK):
            yield chunk
            self._left(what)

    def list_all(self, call: Callable[..., Any], what: str, *args: Any, **kw: Any) -> list[dict[str, Any]]:
        """Every item, following ``metadata.continue``; HTTP errors are raised as ``ApiException``."""
        from kubernetes.client.exceptions import ApiException

        items: list[dict[str, Any]] = []
        token: str | None = None
        seen: set[str] = set()
        restarted = False
        while True:
            try:
                body = self.page(call, what, *args, limit=self.page_size, _continue=token, **kw)
            except ApiException as e:
                if e.status == 410 and token and not restarted:  # continue token expired: one fresh start
                    restarted, items, token, seen = True, [], None, set()
                    continue
                raise
            try:
                doc = json.loads(body)
            except ValueError:
                raise Unavailable(f"the API server{' at ' + self.host if self.host else ''} answered something "
                                  f"that is not JSON listing {what}") from None
            if not isinstance(doc, dict):
                raise Unavailable(f"unexpected answer listing {what}")
            items.extend(i for i in doc.get("items") or [] if isinstance(i, dict))
            token = (doc.get("metadata") or {}).get("continue") or None
            if token is None:
                return items
            if token in seen:
                raise Unavailable(f"the API server repeated a continue token listing {what}")
            seen.add(token)

    def namespaced(self, all_ns: Callable[..., Any], one_ns: Callable[..., Any], what: str,
                   namespaces: list[str] | None, snap: Snapshot) -> list[dict[str, Any]]:
        """Cluster-wide when allowed, else namespace by namespace (403s recorded per namespace)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.list_all(all_ns, what)
        except ApiException as e:
            if e.status != 403:
                raise
        if namespaces is None:
            raise Unavailable(f"forbidden (HTTP 403) to list namespaces and to list {what} in all namespaces; "
                              f"{RBAC_HINT}")
        items: list[dict[str, Any]] = []
        for ns in namespaces:
            try:
                items += self.list_all(one_ns, f"{what} in {ns}", ns)
            except ApiException as e:
                if e.status == 403:
                    snap.forbidden.setdefault(ns, []).append(what)
                elif e.status != 404:  # 404: the namespace was deleted while we read
                    raise
        return items


def read(api: ApiClient, *, page_size: int = PAGE_SIZE,
         timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT), deadline: float = DEADLINE) -> Snapshot:
    """Everything ``posture`` needs from one cluster; raises ``Unavailable`` when the cluster cannot be read
    within ``deadline`` seconds."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    r = Reader(api, page_size=page_size, timeout=timeout, deadline=deadline)
    snap = Snapshot()
    what = "namespaces"
    try:
        names: list[str] | None
        try:
            snap.namespaces = r.list_all(r.core.list_namespace, what)
            names = [str((n.get("metadata") or {}).get("name") or "") for n in snap.namespaces]
        except ApiException as e:
            if e.status != 403:
                raise
            names = None
            snap.notes.append(f"{reason(e, what)}; namespace ages unknown")
        what = "nodes"
        try:
            snap.nodes = r.list_all(r.core.list_node, what)
        except ApiException as e:
            if e.status != 403:
                raise
            snap.notes.append(f"{reason(e, what)}; alerts' instance ids cannot be matched to nodes")
        what = "pods"
        snap.pods = r.namespaced(r.core.list_pod_for_all_namespaces, r.core.list_namespaced_pod, what, names, snap)
        if names is None:
            names = sorted({str((p.get("metadata") or {}).get("namespace") or "") for p in snap.pods})
        for what, all_ns, one_ns, attr in (
                ("resourcequotas", r.core.list_resource_quota_for_all_namespaces,
                 r.core.list_namespaced_resource_quota, "quotas"),
                ("limitranges", r.core.list_limit_range_for_all_namespaces, r.core.list_namespaced_limit_range,
                 "limitranges"),
                ("networkpolicies", r.net.list_network_policy_for_all_namespaces,
                 r.net.list_namespaced_network_policy, "netpols")):
            setattr(snap, attr, r.namespaced(all_ns, one_ns, what, names, snap))
        what = "metrics"
        _metrics(r, snap)
    except ApiException as e:
        raise Unavailable(reason(e, what, r.host)) from None
    except HTTPError as e:
        raise Unavailable(reason(e, what, r.host)) from None
    except OSError as e:
        raise Unavailable(f"cannot reach the API server at {scrub(r.host, 120)} ({type(e).__name__})") from None
    return snap


def _metrics(r: Reader, snap: Snapshot) -> None:
    """Node and pod usage from metrics-server; anything short of an answer is a note."""
    from kubernetes.client.exceptions import ApiException

    group, version = "metrics.k8s.io", "v1beta1"
    try:
        snap.node_metrics = r.list_all(r.custom.list_cluster_custom_object, "node metrics", group, version, "nodes")
        snap.pod_metrics = r.list_all(r.custom.list_cluster_custom_object, "pod metrics", group, version, "pods")
    except ApiException as e:
        snap.node_metrics = snap.pod_metrics = None
        if e.status == 404:
            snap.notes.append("metrics-server not installed (metrics.k8s.io not served): CPU shown from requests, "
                              "not usage")
        elif e.status == 503:
            snap.notes.append("metrics-server not ready (HTTP 503): CPU shown from requests, not usage")
        elif e.status in (401, 403):
            snap.notes.append(f"{reason(e, 'metrics.k8s.io nodes and pods')}: CPU shown from requests")
        else:
            snap.notes.append(f"metrics.k8s.io answered HTTP {e.status}: CPU shown from requests, not usage")


# --------------------------------------------------------------------------------------------- contexts


def gather(cluster: KubernetesCluster, *, allowlist: list[str] | None = None, now: datetime | None = None,
           kubeconfig: str | None = None, service_account_dir: Path = SERVICE_ACCOUNT_DIR,
           environ: Mapping[str, str] | None = None, page_size: int = PAGE_SIZE,
           timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT), deadline: float = DEADLINE,
           ) -> ClusterContext:
    """One cluster's context; never raises for the cluster's sake (it says "unavailable: …" instead)."""
    try:
        api = connect(cluster, kubeconfig=kubeconfig, service_account_dir=service_account_dir, environ=environ)
    except Unavailable as e:
        return ClusterContext.unavailable(cluster.name, cluster.project, str(e))
    try:
        snap = read(api, page_size=page_size, timeout=timeout, deadline=deadline)
    except Unavailable as e:
        log.warning("kubernetes cluster %s unavailable: %s", cluster.name, e)
        return ClusterContext.unavailable(cluster.name, cluster.project, str(e))
    except Exception as e:  # a bug or an odd answer must not stop the alert that needs this context
        log.warning("kubernetes cluster %s not read: %s", cluster.name, type(e).__name__, exc_info=log.isEnabledFor(
            logging.DEBUG))
        return ClusterContext.unavailable(cluster.name, cluster.project, f"not read ({type(e).__name__})")
    finally:
        api.close()
    ctx = analyze(snap, cluster.name, cluster.project, allowlist=allowlist, now=now)
    suggest_all(ctx)
    return ctx


def gather_all(clusters: list[KubernetesCluster], *, allowlist: list[str] | None = None, **kw: Any,
               ) -> list[ClusterContext]:
    """Several clusters in parallel (each bounded by its own deadline), in the order given."""
    if not clusters:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(clusters))) as pool:
        return list(pool.map(lambda c: gather(c, allowlist=allowlist, **kw), clusters))


def contexts_from_config(cfg: Config, *, names: list[str] | None = None, now: datetime | None = None,
                         **kw: Any) -> list[ClusterContext]:
    """Every configured cluster's context (or the ones in ``names``), in config order; never raises for a
    cluster's sake, so ``costwatch run`` can call it unguarded and alerts still go out; each cluster is
    bounded by ``kubernetes.timeout``."""
    clusters = [c for c in cfg.kubernetes.clusters if names is None or c.name in names]
    kw.setdefault("deadline", cfg.kubernetes.timeout_seconds)
    return gather_all(clusters, allowlist=list(cfg.kubernetes.registry_allowlist), now=now, **kw)


__all__ = ["INSTALL_HINT", "PAGE_SIZE", "Reader", "Unavailable", "connect", "contexts_from_config", "gather",
           "gather_all", "installed", "read", "reason", "scrub"]
