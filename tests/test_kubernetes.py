"""Kubernetes context for alerts, over real HTTP: the official ``kubernetes`` client (kubeconfig, or in-cluster
service account over TLS) against ``fake_kube.FakeKube``, which answers with the API server's JSON — List kinds
paginated with ``continue``, quantities as the API writes them, metrics.k8s.io lists, Status objects for
401/403/404/410.  Nothing of costwatch is mocked: tests drive ``gather``/``contexts_from_config``, ``attach``
and the ``costwatch k8s`` command, and check the manifests in deploy/kubernetes with kubernetes-validate.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kubernetes_validate
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from fake_kube import T0, FakeKube, container, self_signed
from kubernetes.utils.quantity import parse_quantity

from costwatch.alerts import Alert
from costwatch.config import Config, KubernetesCluster, parse_config
from costwatch.errors import ConfigError
from costwatch.k8s_cli import k8s
from costwatch.providers.kubernetes import (
    ClusterContext,
    attach,
    contexts_from_config,
    gather,
    instance_from_provider_id,
    lines,
    quantity,
)
from costwatch.providers.kubernetes.posture import format_cpu, format_memory

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "kubernetes"
DEPLOY = ROOT / "deploy" / "kubernetes"
NOW = datetime(2026, 11, 10, 6, 0, tzinfo=UTC)
ALLOW = ["registry.k8s.io", "123456789012.dkr.ecr.us-east-1.amazonaws.com", "docker.io/library"]
TOKEN = "kube-token-9f8e7d6c5b4a"  # the fake's expected bearer token: must never show up in output
AWS_NODE = "ip-10-0-1-5.ec2.internal"
AKS_NODE = "aks-nodepool1-12345678-vmss00000a"
AZ_VM = "vm-worker-01"
SUB = "a1cd0ad9-57d1-4aa7-9ff8-6ce984dd899b"
GiB = 2**30


def _load(name: str) -> Any:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def populate(kube: FakeKube) -> None:
    """A small cluster with one of everything the analysis looks for."""
    for n in _load("nodes.json")["items"]:
        kube.add("nodes", n)
    kube.add_namespace("kube-system")
    kube.add_namespace("team-a")
    kube.add_namespace("team-b")
    kube.add_namespace("ml")
    kube.add_namespace("metrics-collector", created=datetime(2026, 11, 10, 2, 40, tzinfo=UTC))
    # team-a: full quota (quantities as the API writes them), a LimitRange, an egress policy for app=web
    kube.add_quota("team-a", "compute", hard={"requests.cpu": "3500m", "limits.cpu": "7", "requests.memory": "7Gi",
                                              "limits.memory": "14Gi", "pods": "20"},
                   used={"requests.cpu": "1500m", "limits.cpu": "3", "requests.memory": "1536Mi",
                         "limits.memory": "3Gi", "pods": "3"})
    kube.add_limitrange("team-a", "defaults", default={"cpu": "500m", "memory": "512Mi"},
                        default_request={"cpu": "100m", "memory": "128Mi"}, created=T0 + timedelta(days=2))
    kube.add_netpol("team-a", "web-egress", pod_selector={"matchLabels": {"app": "web"}},
                    policy_types=["Ingress", "Egress"], egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}])
    kube.add_pod("team-a", "web-1", node=AWS_NODE, labels={"app": "web"}, created=T0 + timedelta(days=3),
                 containers=[container("web", "123456789012.dkr.ecr.us-east-1.amazonaws.com/web:2.1",
                                       requests={"cpu": "1", "memory": "1Gi"}, limits={"cpu": "2", "memory": "2Gi"},
                                       security_context={"runAsNonRoot": True})])
    kube.add_pod("team-a", "api-1", node=AWS_NODE, created=T0 + timedelta(days=3),  # after the LimitRange
                 containers=[container("api", "nginx:1.27", requests={"cpu": "500m", "memory": "512Mi"})])
    kube.add_pod("team-a", "legacy-1", node=AWS_NODE, created=T0,  # before the LimitRange: no default applied
                 containers=[container("legacy", "nginx:1.25")])
    kube.add_pod("team-a", "node-agent", node=AWS_NODE, labels={"app": "web"}, host_network=True,
                 created=T0 + timedelta(days=3), containers=[container(
                     "agent", "registry.k8s.io/node-agent:1", requests={"cpu": "100m"}, limits={"cpu": "200m"})])
    # team-b: no quota, no limits, a privileged hostPID debug pod
    kube.add_pod("team-b", "batch-1", node=AWS_NODE, created=T0 + timedelta(days=1),
                 containers=[container("batch", "registry.k8s.io/busybox:1.36", requests={"cpu": "1.5"})])
    kube.add_pod("team-b", "debug", node=AWS_NODE, host_pid=True, created=T0 + timedelta(days=1),
                 containers=[container("shell", "registry.k8s.io/busybox:1.36",
                                       security_context={"privileged": True})])
    kube.add_pod("team-b", "done-job", node=AWS_NODE, phase="Succeeded", created=T0,
                 containers=[container("job", "registry.k8s.io/busybox:1.36")])
    # ml: partial quota (requests.cpu only) and a renamed miner: no miner name, but a stratum URL and a registry
    # outside the allowlist
    kube.add_quota("ml", "cpu-only", hard={"cpu": "16"}, used={"cpu": "4"})
    kube.add_pod("ml", "trainer-0", node=AZ_VM, created=datetime(2026, 11, 10, 2, 45, tzinfo=UTC),
                 containers=[container("main", "ghcr.io/acme/trainer:3", command=["sh", "-c"],
                                       args=["./kworker -o stratum+tcp://10.1.2.3:3333 -u wallet -p x"],
                                       requests={"cpu": "4"})])
    # the DaemonSet miner from a real-shaped pod object
    kube.add("pods", _load("pod_xmrig.json"))
    kube.add_pod("kube-system", "coredns-1", node=AWS_NODE,
                 containers=[container("coredns", "registry.k8s.io/coredns/coredns:v1.11.3",
                                       requests={"cpu": "100m", "memory": "70Mi"}, limits={"memory": "170Mi"})])
    kube.node_usage(AKS_NODE, "5981234567n", "2512Mi")
    kube.node_usage(AWS_NODE, "2100m", "6Gi")
    kube.pod_usage("metrics-collector", "kube-proxy-helper-7d9f8", {"helper": ("5912345678n", "2400Mi")})
    kube.pod_usage("team-b", "batch-1", {"batch": ("1200m", "300Mi")})
    kube.pod_usage("ml", "trainer-0", {"main": ("3998123456n", "1Gi")})


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube(token=TOKEN) as k:
        populate(k)
        yield k


@pytest.fixture
def kubeconfig(kube: FakeKube, tmp_path: Path) -> Path:
    return kube.kubeconfig(tmp_path / "kubeconfig", context="prod-admin")


def read(kubeconfig: Path, *, name: str = "prod", project: str | None = SUB, allow: list[str] | None = None,
         **kw: Any) -> ClusterContext:
    cluster = KubernetesCluster(name=name, context="prod-admin", project=project)
    return gather(cluster, kubeconfig=str(kubeconfig), allowlist=ALLOW if allow is None else allow, now=NOW, **kw)


def ns(ctx: ClusterContext, name: str) -> Any:
    return next(n for n in ctx.namespaces if n.name == name)


def pod(ctx: ClusterContext, namespace: str, name: str) -> Any:
    return next(p for p in ctx.pods if p.namespace == namespace and p.name == name)


# --------------------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("text", ["3500m", "7Gi", "500Mi", "1.5", "250000n", "1e3", "12Ki", "2k", "0.1", "100u",
                                  "1.5Gi", "3"])
def test_quantities_agree_with_the_kubernetes_client(text: str) -> None:
    assert quantity(text) == pytest.approx(float(parse_quantity(text)))


def test_quantity_edge_cases_and_formatting() -> None:
    assert quantity("3500m") == 3.5
    assert quantity("7Gi") == 7 * GiB
    assert [quantity(x) for x in ("", "abc", "1.2.3", "5 Gi", None, True, "1e9999")] == [None] * 7
    assert (format_cpu(3.5), format_cpu(4.0), format_cpu(0.1), format_cpu(0.0105)) == ("3500m", "4", "100m", "11m")
    assert (format_memory(7 * GiB), format_memory(512 * 2**20), format_memory(1000)) == ("7Gi", "512Mi", "1000")


@pytest.mark.parametrize(("provider_id", "expected"), [
    ("aws:///us-east-1a/i-0abc1234567890def", ("aws", "i-0abc1234567890def")),
    ("aws:///us-east-1b/6a1b7e0c4d/fargate-ip-10-0-2-9.ec2.internal", ("aws", None)),
    ("gce://ml-research-sandbox/us-central1-a/gke-ml-pool-1-6f2c9a1e-x7kq", ("gce", "gke-ml-pool-1-6f2c9a1e-x7kq")),
    ("azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-worker-01",
     ("azure", "vm-worker-01")),
    ("azure:///subscriptions/s/resourceGroups/mc_rg/providers/Microsoft.Compute/virtualMachineScaleSets/"
     "aks-nodepool1-12345678-vmss/virtualMachines/3", ("azure", "aks-nodepool1-12345678-vmss_3")),
    ("kind://docker/kind/kind-control-plane", ("kind", None)),
    ("", (None, None)),
    ("gce://only/two", ("gce", None)),
    ("azure:///subscriptions/s/resourceGroups/rg", ("azure", None)),
])
def test_provider_id_mapping(provider_id: str, expected: tuple[str | None, str | None]) -> None:
    assert instance_from_provider_id(provider_id)[:2] == expected


# --------------------------------------------------------------------------------------------- reading a cluster


def test_nodes_found_by_every_id_an_alert_may_use(kubeconfig: Path) -> None:
    ctx = read(kubeconfig)
    assert ctx.status == "ok"
    # EC2 instance id, GKE instance name and numeric id, AKS scale-set instance (both namings), Azure VM
    assert ctx.node("i-0abc1234567890def").name == AWS_NODE
    assert ctx.node("I-0ABC1234567890DEF").name == AWS_NODE
    assert ctx.node("gke-ml-pool-1-6f2c9a1e-x7kq").name == "gke-ml-pool-1-6f2c9a1e-x7kq"
    assert ctx.node("4728103918273645123").name == "gke-ml-pool-1-6f2c9a1e-x7kq"
    assert ctx.node("aks-nodepool1-12345678-vmss_10").name == AKS_NODE
    assert ctx.node(AKS_NODE).name == AKS_NODE
    assert ctx.node("recs-prod/vm-worker-01").name == AZ_VM
    assert ctx.node("i-0000000000000000f") is None
    fargate = next(n for n in ctx.nodes if n.name.startswith("fargate"))
    assert fargate.identity.instance is None
    assert ctx.node(AKS_NODE).cpu_used == pytest.approx(5.981234567)
    assert ctx.node(AWS_NODE).cpu_allocatable == pytest.approx(7.91)


def test_namespaces_without_quota_and_quota_quantities(kubeconfig: Path) -> None:
    ctx = read(kubeconfig)
    status = {n.name: n.quota_status for n in ctx.namespaces}
    assert status == {"kube-system": "none", "metrics-collector": "none", "ml": "partial", "team-a": "ok",
                      "team-b": "none"}
    a = ns(ctx, "team-a")
    assert a.quota_hard == {"requests.cpu": 3.5, "limits.cpu": 7.0, "requests.memory": 7 * GiB,
                            "limits.memory": 14 * GiB, "pods": 20.0}
    assert a.quota_used["requests.cpu"] == 1.5 and a.quota_used["requests.memory"] == 1536 * 2**20
    assert ns(ctx, "ml").quota_hard == {"requests.cpu": 16.0}  # "cpu" is requests.cpu
    assert a.at_quota == []


def test_limitrange_default_counts_as_a_limit_but_not_for_older_pods(kubeconfig: Path) -> None:
    ctx = read(kubeconfig)
    assert ns(ctx, "team-a").limit_defaults["cpu"] == 0.5
    assert not pod(ctx, "team-a", "api-1").unbounded            # no limit in its spec, but admitted after the default
    legacy = pod(ctx, "team-a", "legacy-1")
    assert legacy.unbounded and legacy.unbounded_why == "created before the LimitRange default"
    assert not pod(ctx, "team-a", "web-1").unbounded
    assert ns(ctx, "team-a").unbounded_pods == 1
    assert any("predate the LimitRange" in n for n in ns(ctx, "team-a").notes)


def test_unbounded_pods_and_security_findings(kubeconfig: Path) -> None:
    ctx = read(kubeconfig)
    b = ns(ctx, "team-b")
    assert b.pods == 2 and b.unbounded_pods == 2            # the Succeeded job is not counted
    assert pod(ctx, "team-b", "batch-1").unbounded_why == "no CPU limit"
    debug = pod(ctx, "team-b", "debug")
    assert "privileged: shell" in debug.security and "hostPID" in debug.security
    assert b.privileged_pods == 1 and b.host_namespace_pods == 1
    miner = pod(ctx, "metrics-collector", "kube-proxy-helper-7d9f8")
    assert {"privileged: helper", "hostPID", "hostNetwork"} <= set(miner.security)
    assert "no securityContext" in pod(ctx, "team-b", "batch-1").security
    assert "no securityContext" not in pod(ctx, "team-a", "web-1").security
    # egress: web-1 is selected by an Egress policy; api-1 (no app=web label) is not, and node-agent is on the
    # host network, where NetworkPolicy does not apply
    assert not pod(ctx, "team-a", "web-1").egress_open and pod(ctx, "team-a", "api-1").egress_open
    assert pod(ctx, "team-a", "node-agent").egress_open and ns(ctx, "team-a").host_namespace_pods == 1
    assert ns(ctx, "team-a").egress_open_pods == 3 and ns(ctx, "team-a").network_policies == 1


def test_miner_image_and_command_flagged_with_reasons(kubeconfig: Path) -> None:
    ctx = read(kubeconfig)
    miner = pod(ctx, "metrics-collector", "kube-proxy-helper-7d9f8")
    assert miner.image == "docker.io/xmrig/xmrig:6.21"
    r = miner.reasons
    assert "miner image: xmrig" in r and "miner program in command: xmrig" in r
    assert "stratum URL in command: stratum+tcp://pool.supportxmr.com:3333" in r
    assert "pool port 3333 in command" in r and "pool port 3333 in env" in r
    assert "mining pool host in command: pool.supportxmr.com" in r and "miner option in command: --donate-level" in r
    assert "registry outside the allowlist: docker.io" in r
    assert "new namespace (created 3h ago)" in r
    renamed = pod(ctx, "ml", "trainer-0")
    assert "stratum URL in command: stratum+tcp://10.1.2.3:3333" in renamed.reasons
    assert "registry outside the allowlist: ghcr.io" in renamed.reasons
    assert not any(x.startswith("miner image") for x in renamed.reasons)
    assert [p.name for p in ctx.suspicious()][:2] == ["kube-proxy-helper-7d9f8", "trainer-0"]
    assert pod(ctx, "team-b", "batch-1").signs == []      # registry.k8s.io is allowed
    assert pod(ctx, "team-a", "api-1").signs == []        # nginx is docker.io/library/nginx, allowed


def test_allowlist_handles_docker_hub_and_empty_allowlist(kubeconfig: Path) -> None:
    strict = read(kubeconfig, allow=["registry.k8s.io"])
    assert "registry outside the allowlist: docker.io" in pod(strict, "team-a", "api-1").reasons  # implicit docker.io
    assert pod(strict, "team-a", "web-1").reasons == ["registry outside the allowlist: "
                                                      "123456789012.dkr.ecr.us-east-1.amazonaws.com"]
    loose = read(kubeconfig, allow=[])
    assert pod(loose, "team-a", "api-1").signs == []
    assert not any(x.startswith("registry") for x in pod(loose, "metrics-collector", "kube-proxy-helper-7d9f8").reasons)


def test_every_list_is_paginated_with_continue_tokens(kube: FakeKube, kubeconfig: Path) -> None:
    ctx = read(kubeconfig, page_size=2)
    assert ctx.status == "ok"
    assert len(ctx.pods) == len(kube.state.objects["pods"]) == 10
    assert len(ctx.nodes) == 6 and len(ctx.namespaces) == 5
    pages = kube.list_calls("/api/v1/pods")
    assert len(pages) == 5 and all(p.query["limit"] == "2" for p in pages)
    assert "continue" not in pages[0].query and all("continue" in p.query for p in pages[1:])
    assert len({p.query.get("continue") for p in pages}) == 5
    assert len(kube.list_calls("/api/v1/nodes")) == 3
    assert all(r.method == "GET" and r.query.get("limit") == "2" for r in kube.requests)
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in kube.requests)


def test_expired_continue_token_restarts_the_list_once(kube: FakeKube, kubeconfig: Path) -> None:
    kube.state.expire_next_continue = True
    ctx = read(kubeconfig, page_size=3)
    assert ctx.status == "ok" and len(ctx.namespaces) == 5
    calls = kube.list_calls("/api/v1/namespaces")
    assert ["continue" in c.query for c in calls] == [False, True, False, True]  # 410, then a fresh start


def test_forbidden_namespace_is_named_and_the_others_kept(kube: FakeKube, kubeconfig: Path) -> None:
    kube.forbid("pods", "team-b")
    ctx = read(kubeconfig)
    assert ctx.status == "ok"
    assert ns(ctx, "team-b").forbidden == ["pods"]
    assert any("team-b" in n and "pods" in n and "403" in n for n in ctx.notes)
    assert not [p for p in ctx.pods if p.namespace == "team-b"]
    assert {p.namespace for p in ctx.pods} == {"team-a", "ml", "metrics-collector", "kube-system"}
    assert kube.list_calls("/api/v1/namespaces/team-a/pods")  # fell back to per-namespace lists
    assert ns(ctx, "team-b").suggestions == []               # no advice from half a picture


def test_resource_forbidden_everywhere_is_one_note(kube: FakeKube, kubeconfig: Path) -> None:
    for name in ("kube-system", "team-a", "team-b", "ml", "metrics-collector"):
        kube.forbid("networkpolicies", name)
    kube.forbid("nodes")
    ctx = read(kubeconfig)
    assert ctx.status == "ok" and len(ctx.pods) == 10
    assert [n for n in ctx.notes if "networkpolicies" in n] == [
        "forbidden (HTTP 403) to list networkpolicies in any namespace; not analysed there: grant get/list "
        "(see deploy/kubernetes/rbac.yaml)"]
    assert any(n.startswith("forbidden (HTTP 403) to list nodes") and "cannot be matched" in n for n in ctx.notes)
    assert ctx.nodes == []


def test_missing_metrics_server_is_a_note(tmp_path: Path) -> None:
    with FakeKube(token=TOKEN, metrics=False) as kube:
        populate_without_metrics(kube)
        ctx = read(kube.kubeconfig(tmp_path / "kc", context="prod-admin"))
    assert ctx.status == "ok" and not ctx.metrics
    assert any(n.startswith("metrics-server not installed") for n in ctx.notes)
    assert ns(ctx, "team-b").cpu_used is None
    assert ctx.node(AWS_NODE).cpu_used is None
    # suggestions fall back to requests: team-b requests 1.5 cores -> 2 x 1.5 = 3
    quota = next(m for m in ns(ctx, "team-b").suggestions if m["kind"] == "ResourceQuota")
    assert quota["spec"]["hard"]["requests.cpu"] == "3"
    assert "metrics-server not available" in quota["metadata"]["annotations"]["costwatch/sized-from"]


def populate_without_metrics(kube: FakeKube) -> None:
    metrics = kube.state.node_metrics, kube.state.pod_metrics
    kube.state.node_metrics, kube.state.pod_metrics = [], []
    populate(kube)
    kube.state.node_metrics, kube.state.pod_metrics = metrics


def test_suggestions_sized_from_usage_and_valid(kubeconfig: Path) -> None:
    ctx = read(kubeconfig)
    b = {m["kind"]: m for m in ns(ctx, "team-b").suggestions}
    # team-b: requests 1.5 cores, usage 1.2 -> basis 1.5 -> 3 cores; limits: batch-1 at the default 500m
    # (the namespace's largest container basis is 1.5 -> default limit 3), debug at 3 -> 6 -> x2 = 12;
    # memory: default limit 2 x 300Mi in use -> 768Mi, two containers -> 1536Mi -> x2 = 3Gi
    assert b["ResourceQuota"]["spec"]["hard"] == {"requests.cpu": "3", "limits.cpu": "12", "requests.memory": "1Gi",
                                                  "limits.memory": "3Gi", "pods": "10"}
    assert b["LimitRange"]["spec"]["limits"][0]["default"] == {"cpu": "3", "memory": "768Mi"}
    mc = {m["kind"]: m for m in ns(ctx, "metrics-collector").suggestions}
    assert mc["ResourceQuota"]["spec"]["hard"]["requests.cpu"] == "1"   # only a miner runs there: the floor
    ml = {m["kind"]: m for m in ns(ctx, "ml").suggestions}
    assert "requests.cpu" not in ml["ResourceQuota"]["spec"]["hard"]   # only what its partial quota misses
    assert set(ml["ResourceQuota"]["spec"]["hard"]) == {"limits.cpu", "requests.memory", "limits.memory", "pods"}
    assert [m["kind"] for m in ns(ctx, "team-a").suggestions] == []     # has both
    assert ns(ctx, "kube-system").suggestions == []
    for n in ctx.namespaces:
        for m in n.suggestions:
            kubernetes_validate.validate(m, "1.37.0", strict=True)


# --------------------------------------------------------------------------------------------- failures


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def test_unreachable_cluster_is_unavailable_and_still_attached(kube: FakeKube, tmp_path: Path) -> None:
    refused = f"http://127.0.0.1:{_closed_port()}"
    silent = socket.socket()  # accepts connections (kernel backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        kc = kube.kubeconfig(tmp_path / "kc", context="prod-admin", extra_contexts={
            "down": refused, "hung": f"http://127.0.0.1:{silent.getsockname()[1]}"})
        cfg = Config(kubernetes={"clusters": [
            {"name": "down", "context": "down", "project": "123456789012"},
            {"name": "hung", "context": "hung", "project": "hung-project"},
            {"name": "prod", "context": "prod-admin", "project": SUB}]})
        ctxs = contexts_from_config(cfg, kubeconfig=str(kc), now=NOW, timeout=(0.5, 0.5))
    finally:
        silent.close()
    down, hung, prod = ctxs
    assert down.status.startswith("unavailable: cannot connect to the API server at http://127.0.0.1:")
    assert "connection refused" in down.status
    assert hung.status.startswith("unavailable: timed out waiting for the API server")
    assert prod.status == "ok"
    alert = _alert(project="123456789012", nodes=["i-0fedcba9876543210"])
    attach([alert], ctxs)
    ev = alert.evidence["kubernetes"]
    assert ev["cluster"] == "down" and ev["status"] == down.status
    assert ev["nodes"] == [] and ev["suspicious_pods"] == []
    assert "unavailable" in lines(ev)[0]


def test_rejected_credentials_never_leak(kube: FakeKube, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    kc = kube.kubeconfig(tmp_path / "kc", context="prod-admin", token="wrong-token-0123456789abcdef")
    ctx = read(kc)
    assert ctx.status.startswith("unavailable: unauthorized (HTTP 401)")
    text = json.dumps(ctx.to_dict()) + caplog.text
    assert "wrong-token-0123456789abcdef" not in text and TOKEN not in text


def test_missing_kubeconfig_context_is_unavailable(kubeconfig: Path) -> None:
    ctx = gather(KubernetesCluster(name="x", context="no-such-context"), kubeconfig=str(kubeconfig))
    assert ctx.status.startswith("unavailable: kubeconfig context 'no-such-context'")


def test_in_cluster_service_account_over_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(TOKEN)
    (sa / "ca.crt").write_bytes(cert.read_bytes())
    with FakeKube(token=TOKEN, certfile=str(cert), keyfile=str(key)) as kube:
        populate(kube)
        env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(kube.port)}
        ctx = gather(KubernetesCluster(name="self", in_cluster=True), service_account_dir=sa, environ=env, now=NOW)
        assert ctx.status == "ok" and len(ctx.pods) == 10
        scheme, sent = kube.requests[0].headers["authorization"].split(" ", 1)
        assert scheme.lower() == "bearer" and sent == TOKEN
        # a CA that did not sign the server's certificate: refused, and said so
        (tmp_path / "other").mkdir()
        other, _ = self_signed(tmp_path / "other")
        (sa / "ca.crt").write_bytes(other.read_bytes())
        bad = gather(KubernetesCluster(name="self", in_cluster=True), service_account_dir=sa, environ=env)
    assert bad.status.startswith("unavailable: TLS error")
    outside = gather(KubernetesCluster(name="self", in_cluster=True), service_account_dir=sa, environ={})
    assert outside.status.startswith("unavailable: in-cluster service account")


# --------------------------------------------------------------------------------------------- attach


def _alert(*, project: str, nodes: list[str], kind: str = "mining_suspected", clusters: list[str] | None = None,
           start: str = "2026-11-10T03:00:00Z") -> Alert:
    return Alert(kind=kind, project=project, project_name=project, provider="azure", start=pd.Timestamp(start),
                 detected_at=pd.Timestamp(start) + pd.Timedelta(hours=2), severity="critical", observed=98.0,
                 expected=10.0, lower=0.0, upper=30.0, currency="USD", score=1.0, scope="mining",
                 evidence={"nodes": [{"node": n, "cpu": 98.2, "signal": "pinned", "cluster": None} for n in nodes],
                           "clusters": clusters or []})


def _demo_mining_alert() -> Alert:
    raw = next(a for a in json.loads((ROOT / "tests/data/alerts/demo_alerts.json").read_text())
               if a["kind"] == "mining_suspected")
    fields = {k: v for k, v in raw.items() if k != "fingerprint"}
    for k in ("start", "detected_at"):
        fields[k] = pd.Timestamp(fields[k])
    return Alert(**fields, scope="mining")


def test_attach_to_a_mining_alert_finds_the_nodes_pods(kubeconfig: Path) -> None:
    ctx = read(kubeconfig, project=None)          # matched by node ids alone
    alert = _demo_mining_alert()                  # Azure, nodes vm-worker-01..06, start 03:00
    alert.evidence["nodes"].append({"node": "aks-nodepool1-12345678-vmss_10", "cpu": 99.0})
    before = alert.fingerprint
    attach([alert], [ctx])
    ev = alert.evidence["kubernetes"]
    assert ev["cluster"] == "prod" and ev["status"] == "ok"
    assert [(n["node"], n["name"]) for n in ev["nodes"]] == [(AZ_VM, AZ_VM), ("aks-nodepool1-12345678-vmss_10",
                                                                               AKS_NODE)]
    assert ev["nodes"][1]["cpu"] == 5.98
    sus = {p["name"]: p for p in ev["suspicious_pods"]}
    assert list(sus) == ["kube-proxy-helper-7d9f8", "trainer-0"]
    assert sus["kube-proxy-helper-7d9f8"]["node"] == AKS_NODE
    assert sus["kube-proxy-helper-7d9f8"]["image"] == "docker.io/xmrig/xmrig:6.21"
    assert sus["kube-proxy-helper-7d9f8"]["reasons"][0] == "started 18m before the CPU plateau"
    assert "miner image: xmrig" in sus["kube-proxy-helper-7d9f8"]["reasons"]
    assert sus["trainer-0"]["reasons"][0] == "started 15m before the CPU plateau"
    assert {n["namespace"]: n["quota"] for n in ev["namespaces"]} == {"metrics-collector": "none", "ml": "partial"}
    assert [(p["name"], p["cpu"]) for p in ev["unbounded_pods"]] == [("kube-proxy-helper-7d9f8", 5.912),
                                                                      ("trainer-0", 3.998)]  # busiest first
    assert [p["name"] for p in ev["top_pods"]] == ["kube-proxy-helper-7d9f8", "trainer-0"]
    assert ev["namespaces_without_quota"] == ["metrics-collector", "team-b"]
    assert alert.fingerprint == before
    json.dumps(alert.to_dict())  # renders: JSON-clean all the way down
    text = "\n".join(lines(ev))
    assert "suspicious pod metrics-collector/kube-proxy-helper-7d9f8 on " + AKS_NODE in text


def test_attach_matches_by_cluster_name_and_project_and_leaves_others(kubeconfig: Path) -> None:
    ctx = read(kubeconfig)
    by_name = _alert(project="other", nodes=[], clusters=["PROD"])
    by_project = _alert(project=SUB, nodes=["i-0000000000000000f"], kind="cost_spike")
    unrelated = _alert(project="other", nodes=["i-0000000000000000f"])
    attach([by_name, by_project, unrelated], [ctx])
    assert by_name.evidence["kubernetes"]["cluster"] == "prod"
    ev = by_project.evidence["kubernetes"]
    assert ev["nodes"] == [] and "none of the alert's 1 node(s) is a node of this cluster" in ev["notes"][0]
    assert {p["name"] for p in ev["suspicious_pods"]} == {"kube-proxy-helper-7d9f8", "trainer-0"}
    assert "kube-system" not in {n["namespace"] for n in ev["namespaces"]}
    assert "kubernetes" not in unrelated.evidence


def test_attach_prefers_the_cluster_running_the_node(kubeconfig: Path) -> None:
    prod = read(kubeconfig)
    twin = ClusterContext(name="staging", project=SUB, status="ok")
    alert = _alert(project=SUB, nodes=[AZ_VM])
    attach([alert], [twin, prod])
    ev = alert.evidence["kubernetes"]
    assert ev["cluster"] == "prod" and ev["also"] == [{"cluster": "staging", "status": "ok", "suspicious_pods": 0,
                                                       "unbounded_pods": 0}]


def test_attach_caps_lists_for_slack(tmp_path: Path) -> None:
    with FakeKube() as kube:
        kube.add_node(AWS_NODE, "aws:///us-east-1a/i-0abc1234567890def")
        for i in range(25):
            kube.add_namespace(f"ns-{i:02d}")
            kube.add_pod(f"ns-{i:02d}", f"miner-{i:02d}", node=AWS_NODE,
                         containers=[container("m", "xmrig/xmrig:6.21", args=["-o", "pool.example:4444"])])
        ctx = read(kube.kubeconfig(tmp_path / "kc", context="prod-admin"), page_size=7)
    alert = _alert(project="x", nodes=["i-0abc1234567890def"])
    attach([alert], [ctx])
    ev = alert.evidence["kubernetes"]
    assert len(ev["suspicious_pods"]) == len(ev["namespaces"]) == len(ev["unbounded_pods"]) == 10
    assert ev["more"] == {"namespaces": 15, "namespaces_without_quota": 15, "unbounded_pods": 15,
                          "suspicious_pods": 15}
    assert len(json.dumps(ev)) < 12_000


# --------------------------------------------------------------------------------------------- hostile text


def test_hostile_images_and_commands_do_not_break_output(tmp_path: Path) -> None:
    evil = "\x1b[31m[bold red]evil[/]\u202e\r\n" + "A" * 10_000 + ":3333"
    with FakeKube(token=TOKEN) as kube:
        kube.add_node(AWS_NODE, "aws:///us-east-1a/i-0abc1234567890def")
        kube.add_namespace("web")
        kube.add_pod("web", "p", node=AWS_NODE, containers=[
            container("c", "evil.example/[bold red]pwn[/]" + "x" * 10_000 + "/xmrig\x07:1", command=[evil],
                      args=["stratum+tcp://" + "\x00\x1b]0;pwn\x07" * 2000], env={"E": evil})])
        kc = kube.kubeconfig(tmp_path / "kc", context="prod-admin")
        ctx = read(kc)
        cfg = tmp_path / "costwatch.yaml"
        cfg.write_text(yaml.safe_dump({"kubernetes": {"clusters": [{"name": "prod", "context": "prod-admin"}],
                                                      "registry_allowlist": ["registry.k8s.io"]}}))
        runner = CliRunner()
        table = runner.invoke(k8s, ["--config", str(cfg)], env={"KUBECONFIG": str(kc), "COLUMNS": "200"})
        as_json = runner.invoke(k8s, ["--config", str(cfg), "--format", "json"], env={"KUBECONFIG": str(kc)})
    assert ctx.status == "ok"
    p = ctx.suspicious()[0]
    assert "miner image: xmrig" in p.reasons and "pool port 3333 in command" in p.reasons
    alert = _alert(project="x", nodes=["i-0abc1234567890def"])
    attach([alert], [ctx])
    shown = json.dumps(alert.evidence["kubernetes"], ensure_ascii=False)
    assert len(shown) < 4000
    assert not any(ch in shown for ch in "\x1b\x07\x00\u202e\r")
    assert "\\x1b" in shown  # escaped, visible
    for out in (table.output, as_json.output, "\n".join(lines(alert.evidence["kubernetes"]))):
        assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert table.exit_code == 0 and "red]pwn[/]" in table.output  # shown literally, not as rich markup
    assert as_json.exit_code == 0 and json.loads(as_json.output)["clusters"][0]["suspicious_pods"]


# --------------------------------------------------------------------------------------------- CLI


def _config(tmp_path: Path, clusters: list[dict[str, Any]]) -> Path:
    path = tmp_path / "costwatch.yaml"
    path.write_text(yaml.safe_dump({"kubernetes": {"clusters": clusters, "registry_allowlist": ALLOW}}))
    return path


def test_cli_json_over_a_kubeconfig(kubeconfig: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, [{"name": "prod", "context": "prod-admin", "project": SUB}])
    result = CliRunner().invoke(k8s, ["--config", str(cfg), "--format", "json"], env={"KUBECONFIG": str(kubeconfig)})
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    (c,) = doc["clusters"]
    assert c["cluster"] == "prod" and c["status"] == "ok" and c["project"] == SUB and c["metrics"] is True
    by_ns = {n["namespace"]: n for n in c["namespaces"]}
    assert by_ns["team-b"]["quota"] == "none" and by_ns["team-b"]["unbounded_pods"] == 2
    assert by_ns["team-a"]["quota_hard"]["requests.cpu"] == 3.5
    assert {p["name"] for p in c["suspicious_pods"]} == {"kube-proxy-helper-7d9f8", "trainer-0"}
    assert by_ns["team-b"]["suggestions"][0]["kind"] == "ResourceQuota"
    assert TOKEN not in result.output


def test_cli_table_and_yaml(kubeconfig: Path, tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(kubeconfig), "COLUMNS": "220"}
    table = CliRunner().invoke(k8s, [], env=env)   # no config: the current kubeconfig context
    assert table.exit_code == 0, table.output
    assert "cluster prod-admin: ok" in table.output
    assert "team-b" in table.output and "kube-proxy-helper-7d9f8" in table.output
    assert "metrics-collector" in table.output and "kind: ResourceQuota" in table.output
    out = CliRunner().invoke(k8s, ["--format", "yaml", "--cluster", "prod-admin"], env=env)
    assert out.exit_code == 0, out.output
    docs = [d for d in yaml.safe_load_all(out.output) if d]
    assert {(d["kind"], d["metadata"]["namespace"]) for d in docs} == {
        ("ResourceQuota", "team-b"), ("LimitRange", "team-b"), ("ResourceQuota", "ml"), ("LimitRange", "ml"),
        ("ResourceQuota", "metrics-collector"), ("LimitRange", "metrics-collector")}
    for d in docs:
        kubernetes_validate.validate(d, "1.37.0", strict=True)


def test_cli_exit_codes(kubeconfig: Path, tmp_path: Path) -> None:
    env = {"KUBECONFIG": str(kubeconfig)}
    cfg = _config(tmp_path, [{"name": "prod", "context": "prod-admin"}, {"name": "gone", "context": "missing"}])
    unknown = CliRunner().invoke(k8s, ["--config", str(cfg), "--cluster", "nope"], env=env)
    assert unknown.exit_code == 2 and "--cluster nope: not in kubernetes.clusters; configured: gone, prod" in \
        unknown.output
    partial = CliRunner().invoke(k8s, ["--config", str(cfg), "--format", "json"], env=env)
    assert partial.exit_code == 1
    statuses = [c["status"] for c in json.loads(partial.output)["clusters"]]
    assert statuses[0] == "ok" and statuses[1].startswith("unavailable: kubeconfig context 'missing'")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kubernetes:\n  clusters:\n    - name: a\n      contxt: b\n")
    assert CliRunner().invoke(k8s, ["--config", str(bad)], env=env).exit_code == 2


# --------------------------------------------------------------------------------------------- deploy/kubernetes


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    return [(f.name, d) for f in sorted(DEPLOY.glob("*.yaml"))
            for d in yaml.safe_load_all(f.read_text(encoding="utf-8")) if d]


@pytest.mark.parametrize("version", ["1.25.0", kubernetes_validate.utils.latest_version()])
def test_manifests_validate(version: str) -> None:
    docs = _manifests()
    assert {d["kind"] for _, d in docs} == {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                            "ConfigMap", "PersistentVolumeClaim", "CronJob", "Deployment",
                                            "Service"}
    for _, d in docs:
        kubernetes_validate.validate(d, version, strict=True)
    cron = next(d for _, d in docs if d["kind"] == "CronJob")
    typo = copy.deepcopy(cron)
    typo["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, version, strict=True)
    serve = next(d for _, d in docs if d["kind"] == "Deployment")
    box = serve["spec"]["template"]["spec"]["containers"][0]
    assert box["args"][0] == "serve" and box["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert {e["name"] for e in box["env"]} >= {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"}


def test_cluster_role_grants_exactly_what_the_client_reads(kube: FakeKube, kubeconfig: Path) -> None:
    read(kubeconfig)
    role = next(d for _, d in _manifests() if d["kind"] == "ClusterRole")
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert all(set(rule["verbs"]) == {"get", "list"} for rule in role["rules"])
    used = set()
    for req in kube.requests:
        parts = [p for p in req.path.split("/") if p]
        group = "" if parts[0] == "api" else parts[1]
        used.add((group, parts[-1]))
    assert used == granted
    assert all(r.method == "GET" for r in kube.requests)


def test_cronjob_runs_costwatch_hourly_locked_down() -> None:
    docs = dict(((d["kind"], d["metadata"]["name"]), d) for _, d in _manifests())
    cron = docs[("CronJob", "costwatch")]
    assert cron["spec"]["schedule"].split()[1:] == ["*", "*", "*", "*"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod_spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod_spec["containers"]
    assert c["command"] + c["args"] == ["costwatch", "run", "--config", "/etc/costwatch/costwatch.yaml"]
    assert pod_spec["serviceAccountName"] == docs[("ServiceAccount", "costwatch")]["metadata"]["name"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["allowPrivilegeEscalation"] is False
    assert set(c["resources"]) == {"requests", "limits"} and {"cpu", "memory"} <= set(c["resources"]["limits"])
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert set(secrets) == {"SLACK_BOT_TOKEN", "SMTP_PASSWORD"} and {s["name"] for s in secrets.values()} == {
        "costwatch-secrets"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    assert volumes[mounts["/etc/costwatch"]]["configMap"]["name"] == "costwatch-config"
    assert volumes[mounts["/var/lib/costwatch"]]["persistentVolumeClaim"]["claimName"] == "costwatch-state"
    # the config it mounts is a valid costwatch config whose state lives on that volume
    config_text = docs[("ConfigMap", "costwatch-config")]["data"]["costwatch.yaml"]
    cfg = parse_config(config_text, env={"SLACK_BOT_TOKEN": "xoxb-test", "SMTP_PASSWORD": "pw"})
    assert cfg.state.path.startswith("/var/lib/costwatch/")
    assert [c.in_cluster for c in cfg.kubernetes.clusters] == [True] and "${SLACK_BOT_TOKEN}" in config_text


# --------------------------------------------------------------------------------------------- issue 15


def _sandbox_cluster(kube: FakeKube) -> None:
    """The issue's ``ml-sandbox``: three nodes of 3.93 cores (11.79 allocatable), two xmrig pods pinning two of
    them, one honest notebook on the third, a sidecar sharing a miner's node, and a namespace with no pods."""
    for i, node in enumerate(("node-a", "node-b", "node-c")):
        kube.add_node(node, f"aws:///us-east-1a/i-0abc123456789000{i}", cpu="3930m", memory="16Gi")
    kube.add_namespace("ml-sandbox")
    kube.add_namespace("idle")
    kube.add_pod("ml-sandbox", "notebook", node="node-a", created=T0, containers=[container(
        "nb", "registry.k8s.io/jupyter:1", requests={"cpu": "500m", "memory": "1Gi"}, limits={"cpu": "1"})])
    kube.pod_usage("ml-sandbox", "notebook", {"nb": ("300m", "800Mi")})
    for node in ("node-b", "node-c"):
        kube.add_pod("ml-sandbox", f"miner-{node}", node=node, created=T0 + timedelta(days=8), containers=[container(
            "w", "registry.k8s.io/xmrig/xmrig:6.21", args=["-o", "stratum+tcp://pool.example:3333"])])
        kube.pod_usage("ml-sandbox", f"miner-{node}", {"w": ("3900m", "2Gi")})
    kube.add_pod("ml-sandbox", "sidecar", node="node-b", created=T0, containers=[container(
        "s", "registry.k8s.io/pause:3.9", requests={"cpu": "100m"})])
    kube.pod_usage("ml-sandbox", "sidecar", {"s": ("2500m", "100Mi")})   # inflated or hidden: on a miner's node


def test_suggestions_leave_out_miners_and_flagged_nodes_and_skip_empty_namespaces(tmp_path: Path) -> None:
    with FakeKube() as kube:
        _sandbox_cluster(kube)
        ctx = read(kube.kubeconfig(tmp_path / "kc", context="prod-admin"), allow=[])
    got = {m["kind"]: m for m in ns(ctx, "ml-sandbox").suggestions}
    hard = got["ResourceQuota"]["spec"]["hard"]
    # the notebook alone: requests max(0.5, 0.3) x 2 = 1 core; limits 1 core x 2 = 2; one pod -> floor 10
    assert hard == {"requests.cpu": "1", "limits.cpu": "2", "requests.memory": "2Gi", "limits.memory": "4Gi",
                    "pods": "10"}
    sized = got["ResourceQuota"]["metadata"]["annotations"]["costwatch/sized-from"]
    assert "1 pod(s)" in sized and "3 left out" in sized
    assert got["LimitRange"]["spec"]["limits"][0]["default"]["cpu"] == "1"   # 2 x the notebook's 0.5
    assert ns(ctx, "idle").suggestions == []                                 # nothing runs there: no advice


def test_suggestions_capped_at_a_share_of_what_the_cluster_can_allocate(tmp_path: Path) -> None:
    with FakeKube() as kube:
        _sandbox_cluster(kube)
        kube.add_namespace("batch")
        kube.add_pod("batch", "crunch", node="node-a", created=T0, containers=[container(
            "c", "registry.k8s.io/crunch:1", requests={"cpu": "3500m", "memory": "12Gi"})])
        ctx = read(kube.kubeconfig(tmp_path / "kc", context="prod-admin"), allow=[])
    hard = next(m for m in ns(ctx, "batch").suggestions if m["kind"] == "ResourceQuota")["spec"]["hard"]
    # 2 x 3.5 = 7 cores would be 59% of 11.79: capped at half the cluster (5.5 in 0.5 steps); memory
    # 2 x 12Gi = 24Gi capped at half of 48Gi; never below what the namespace already requests
    assert hard["requests.cpu"] == "5500m" and hard["limits.cpu"] == "5500m"
    assert hard["requests.memory"] == "24Gi"
    for m in (m for n in ctx.namespaces for m in n.suggestions if m["kind"] == "ResourceQuota"):
        cpu = {k: float(parse_quantity(v)) for k, v in m["spec"]["hard"].items() if k.endswith("cpu")}
        assert all(v <= 0.5 * 11.79 for v in cpu.values()), m


def test_kubernetes_modules_import_no_cycle() -> None:
    """posture must not import suggest back (the style guide's rule against import cycles), at any level."""
    import ast

    pkg = ROOT / "providers" / "kubernetes"
    graph: dict[str, set[str]] = {}
    for f in pkg.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {a.name for a in node.names}
        graph[f.stem] = deps - {"__init__"}
    graph.pop("__init__")

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in graph.get(start, ()))

    assert [m for m in graph if reaches(m, m, {m})] == []


def test_forbidden_namespace_is_in_the_alerts_namespaces(kube: FakeKube, kubeconfig: Path) -> None:
    kube.forbid("pods", "team-b")
    ctx = read(kubeconfig)
    for alert in (_alert(project=SUB, nodes=[]), _alert(project="x", nodes=[AWS_NODE])):  # whole cluster; by node
        attach([alert], [ctx])
        rows = {r["namespace"]: r for r in alert.evidence["kubernetes"]["namespaces"]}
        assert rows["team-b"]["forbidden"] == ["pods"] and rows["team-b"]["pods"] is None, rows
        assert all(r["forbidden"] == [] for n, r in rows.items() if n != "team-b")
        assert "team-b" in "\n".join(lines(alert.evidence["kubernetes"]))


def test_unbounded_pods_and_namespaces_cover_the_same_namespaces(kubeconfig: Path) -> None:
    ctx = read(kubeconfig)
    for alert in (_alert(project=SUB, nodes=[]), _alert(project="x", nodes=[AWS_NODE])):
        attach([alert], [ctx])
        ev = alert.evidence["kubernetes"]
        counts: dict[str, int] = {}
        for p in ev["unbounded_pods"]:
            counts[p["namespace"]] = counts.get(p["namespace"], 0) + 1
        rows = {r["namespace"]: r["unbounded_pods"] for r in ev["namespaces"] if r["unbounded_pods"]}
        assert counts == rows and counts, (counts, rows)


def test_a_server_that_never_answers_is_cut_at_the_configured_deadline(kube: FakeKube, tmp_path: Path) -> None:
    silent = socket.socket()  # accepts connections (kernel backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        kc = kube.kubeconfig(tmp_path / "kc", context="prod-admin",
                             extra_contexts={"hung": f"http://127.0.0.1:{silent.getsockname()[1]}"})
        cfg = parse_config("kubernetes:\n  timeout: 1s\n  clusters:\n    - {name: hung, context: hung}\n"
                           "    - {name: prod, context: prod-admin}\n")
        hung, prod = contexts_from_config(cfg, kubeconfig=str(kc), now=NOW)   # the config's deadline, nothing else
    finally:
        silent.close()
    assert hung.status.startswith("unavailable: no complete answer from the API server at http://127.0.0.1:")
    assert "within 1 s (kubernetes.timeout)" in hung.status and "listing namespaces" in hung.status
    assert prod.status == "ok"


def test_the_deadline_bounds_the_whole_cluster_not_each_request(kube: FakeKube, kubeconfig: Path) -> None:
    kube.state.hang = 0.15   # every answer is slow, none is slow enough to time out on its own
    cfg = parse_config("kubernetes:\n  timeout: 0.5s\n  clusters: [{name: prod, context: prod-admin}]\n")
    (ctx,) = contexts_from_config(cfg, kubeconfig=str(kubeconfig), now=NOW)
    assert ctx.status.startswith("unavailable: no complete answer from the API server") and "within 0.5 s" in ctx.status
    assert len(kube.requests) < 8   # it stopped asking: a full read takes eight lists


def test_kubernetes_timeout_config() -> None:
    assert Config().kubernetes.timeout_seconds == 10.0
    assert parse_config("kubernetes:\n  timeout: 1m30s\n").kubernetes.timeout_seconds == 90.0
    for bad in ("0s", "2h", "ten"):
        with pytest.raises(ConfigError, match="timeout"):
            parse_config(f"kubernetes:\n  timeout: {bad}\n")


EVIL_POD = "evil\x1b[31m[bold red]x[/]\u202e\x9b2J"


def _attached_with_a_hostile_pod(tmp_path: Path) -> Alert:
    with FakeKube(token=TOKEN) as kube:
        populate(kube)
        kube.add_pod("team-b", EVIL_POD, node=AZ_VM, containers=[container("m", "xmrig/xmrig:6.21")])
        ctx = read(kube.kubeconfig(tmp_path / "kc", context="prod-admin"))
    alert = _demo_mining_alert()
    attach([alert], [ctx])
    return alert


def test_report_formats_and_stdout_show_the_kubernetes_context(tmp_path: Path) -> None:
    from costwatch.detect import Detection
    from costwatch.notifiers import stdout
    from costwatch.notify import Notification, Target
    from costwatch.report import render

    alert = _attached_with_a_hostile_pod(tmp_path)
    det = Detection(as_of=pd.Timestamp(NOW), since=pd.Timestamp(NOW) - pd.Timedelta(days=7), alerts=[alert],
                    projects=[])
    note = Notification(id="n1", group_key="g", event="firing", target=Target("stdout"), title="mining",
                        alerts=[alert.to_dict()], created_at="2026-11-10T06:00:00Z")
    outputs = {"table": render(det, "table", width=400), "markdown": render(det, "markdown"),
               "stdout": stdout.render(note)}
    for fmt, text in outputs.items():
        assert "Kubernetes cluster prod: ok" in text, fmt
        assert "metrics-collector/kube-proxy-helper-7d9f8" in text and "miner image: xmrig" in text, fmt
        assert "trainer-0" in text and "stratum URL in command" in text, fmt
        assert "without a ResourceQuota: metrics-collector, team-b" in text, fmt
        assert "pod(s) without a CPU limit" in text, fmt
        assert not any(ch in text for ch in "\x1b\u202e\x9b"), fmt     # names from the cluster are inert
        literal = r"\[bold red\]x\[/\]" if fmt == "markdown" else "[bold red]x[/]"
        assert literal in text, fmt                                       # shown as typed, never as markup


def test_report_shows_an_unavailable_cluster(kube: FakeKube, tmp_path: Path) -> None:
    from costwatch.detect import Detection
    from costwatch.report import render

    kc = kube.kubeconfig(tmp_path / "kc", context="prod-admin", extra_contexts={
        "down": f"http://127.0.0.1:{_closed_port()}"})
    alert = _demo_mining_alert()
    (down,) = contexts_from_config(Config(kubernetes={"clusters": [{"name": "down", "context": "down",
                                                                    "project": alert.project}]}), kubeconfig=str(kc))
    attach([alert], [down])
    det = Detection(as_of=pd.Timestamp(NOW), since=pd.Timestamp(NOW) - pd.Timedelta(days=7), alerts=[alert],
                    projects=[])
    for fmt in ("table", "markdown"):
        assert "Kubernetes cluster down: unavailable: cannot connect to the API server" in render(det, fmt,
                                                                                                  width=400)


def test_every_medium_names_the_namespaces_that_answered_403(kube: FakeKube, kubeconfig: Path) -> None:
    from email.headerregistry import Address

    from costwatch.notifiers import email_render, slack_blocks, stdout
    from costwatch.notify import Notification, Target

    kube.forbid("pods", "team-b")
    alert = _demo_mining_alert()
    attach([alert], [read(kubeconfig)])
    note = Notification(id="n1", group_key="g", event="firing", target=Target("stdout"), title="mining",
                        alerts=[alert.to_dict()], created_at="2026-11-10T06:00:00Z")
    _, blocks = slack_blocks.render(note)
    mail = email_render.build_message(note, sender=Address("c", addr_spec="c@example.com"),
                                      recipients=[Address("o", addr_spec="o@example.com")], msgid="<1@example.com>")
    texts = {"slack": json.dumps(blocks), "email": mail.get_body(("plain",)).get_content(),  # type: ignore[union-attr]
             "stdout": stdout.render(note)}
    for medium, text in texts.items():
        assert "kube-proxy-helper-7d9f8" in text, medium
        assert re.search(r"(403|HTTP 403)[^\n]*team-b", text), medium


def test_a_server_trickling_its_answer_is_cut_at_the_deadline(kube: FakeKube, tmp_path: Path) -> None:
    """Each byte comes well within the read timeout, the whole answer (6 s) never within the deadline."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()
    sent: list[int] = []

    def trickle() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n")
                for _ in range(60):
                    if stop.wait(0.1):
                        return
                    conn.sendall(b" ")
                    sent.append(1)

    worker = threading.Thread(target=trickle, daemon=True)
    worker.start()
    try:
        kc = kube.kubeconfig(tmp_path / "kc", context="prod-admin",
                             extra_contexts={"slow": f"http://127.0.0.1:{srv.getsockname()[1]}"})
        ctx = gather(KubernetesCluster(name="slow", context="slow"), kubeconfig=str(kc), deadline=0.5)
        worker.join()   # the server stops at the first write after costwatch hung up
    finally:
        stop.set()
        srv.close()
        worker.join()
    assert ctx.status.startswith("unavailable: no complete answer from the API server")
    assert "within 0.5 s (kubernetes.timeout) listing namespaces" in ctx.status
    assert len(sent) < 30   # it hung up long before the answer was complete, rather than waiting it out
