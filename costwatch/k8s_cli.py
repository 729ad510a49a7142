"""``costwatch k8s``: per-namespace quota, limit and security posture, miner signs, and ready-to-apply
ResourceQuota/LimitRange manifests for namespaces that lack them.

Registered on the main group with ``cli.add_command(k8s)``; it imports nothing from ``costwatch.cli`` so the
registration cannot become an import cycle.  Exit 0 when every cluster was read, 1 when one was unavailable
(its reason is printed), 2 for a config error — the same contract as ``costwatch run``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .errors import ConfigError, CostwatchError
from .safetext import terminal_safe

if TYPE_CHECKING:
    from costwatch.config import Config, KubernetesCluster
    from costwatch.providers.kubernetes.posture import ClusterContext, NamespacePosture

EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2


def _fail(exc: BaseException) -> None:
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().params.get("debug"):
        traceback.print_exception(exc)
    click.echo(terminal_safe(f"costwatch: error: {exc}", newlines=True), err=True)
    sys.exit(EXIT_USAGE)


def _current_context(kubeconfig: str | None) -> str | None:
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        return str(active["name"]) if active else None
    except Exception:  # no or bad kubeconfig: connecting will say why
        return None


def select_clusters(cfg: Config, names: tuple[str, ...], kubeconfig: str | None = None) -> list[KubernetesCluster]:
    """Configured clusters (``--cluster`` picks some).  With none configured, ``--cluster`` names kubeconfig
    contexts, and no ``--cluster`` means the current context — so ``costwatch k8s`` works with no config."""
    from costwatch.config import KubernetesCluster

    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
    configured = cfg.kubernetes.clusters
    if configured:
        known = {c.name for c in configured}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"--cluster {', '.join(unknown)}: not in kubernetes.clusters; configured: "
                              + ", ".join(sorted(known)))
        return [c for c in configured if not names or c.name in names]
    if names:
        return [KubernetesCluster(name=n, context=n) for n in dict.fromkeys(names)]
    return [KubernetesCluster(name=_current_context(kubeconfig) or "current-context")]


# --------------------------------------------------------------------------------------------- rendering


def _q(ns: NamespacePosture, res: str) -> str:
    from costwatch.providers.kubernetes.posture import format_cpu, format_memory

    fmt = format_cpu if res.endswith("cpu") else format_memory if res.endswith("memory") else (lambda v: f"{v:g}")
    if res not in ns.quota_hard:
        return "-"
    used = ns.quota_used.get(res)
    return f"{fmt(used) if used is not None else '?'}/{fmt(ns.quota_hard[res])}"


def _defaults(ns: NamespacePosture) -> str:
    from costwatch.providers.kubernetes.posture import format_cpu, format_memory

    d = ns.limit_defaults
    parts = ([f"cpu {format_cpu(d['cpu'])}"] if "cpu" in d else []) + \
        ([f"mem {format_memory(d['memory'])}"] if "memory" in d else [])
    return ", ".join(parts) or "none"


def suggestions_yaml(contexts: list[ClusterContext]) -> str:
    """Every suggested manifest as YAML documents, each preceded by a comment naming cluster and basis."""
    import yaml

    from costwatch.providers.kubernetes.signs import clean

    docs = []
    for ctx in contexts:
        for ns in ctx.namespaces:
            for m in ns.suggestions:
                head = f"# cluster {clean(ctx.name, 80)}, namespace {clean(ns.name, 63)}: {m['kind']} sized " \
                       f"{clean(m['metadata']['annotations']['costwatch/sized-from'], 240)}; review, then kubectl apply"
                docs.append(head + "\n" + yaml.safe_dump(m, sort_keys=False, allow_unicode=False))
    return "---\n".join(docs)


def render_table(contexts: list[ClusterContext]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from costwatch.providers.kubernetes.posture import format_cpu
    from costwatch.providers.kubernetes.signs import clean

    console = Console(highlight=False)

    def t(value: object, limit: int = 120) -> Text:  # never markup: names and images are untrusted text
        return Text(clean(value, limit))

    for ctx in contexts:
        title = f"cluster {ctx.name}" + (f" (project {ctx.project})" if ctx.project else "") + f": {ctx.status}"
        console.print(t(title, 400), style="bold")
        if not ctx.available:
            continue
        table = Table(show_lines=False)
        for col in ("namespace", "pods", "quota", "requests.cpu", "limits.cpu", "requests.memory", "limits.memory",
                    "CPU in use", "LimitRange defaults", "no CPU limit", "privileged/host", "egress open",
                    "suspicious"):
            table.add_column(col, overflow="fold")
        for ns in ctx.namespaces:
            in_use = "n/a" if ns.cpu_used is None else format_cpu(ns.cpu_used)
            table.add_row(t(ns.name, 63), t(ns.pods), t(ns.quota_status), t(_q(ns, "requests.cpu")),
                          t(_q(ns, "limits.cpu")), t(_q(ns, "requests.memory")), t(_q(ns, "limits.memory")),
                          t(in_use), t(_defaults(ns)), t(ns.unbounded_pods),
                          t(f"{ns.privileged_pods}/{ns.host_namespace_pods}"), t(ns.egress_open_pods),
                          t(ns.suspicious_pods))
        console.print(table)
        sus = ctx.suspicious()
        if sus:
            st = Table(title="suspicious pods")
            for col in ("pod", "node", "image", "CPU", "reasons"):
                st.add_column(col, overflow="fold")
            for p in sus:
                st.add_row(t(f"{p.namespace}/{p.name}", 120), t(p.node or "-", 80), t(p.image, 80),
                           t("n/a" if p.cpu_used is None else format_cpu(p.cpu_used)),
                           t("; ".join(clean(r, 120) for r in p.reasons), 600))
            console.print(st)
        for note in ctx.notes + [f"namespace {ns.name}: {n}" for ns in ctx.namespaces for n in ns.notes]:
            console.print(t(f"note: {note}", 400))
    text = suggestions_yaml(contexts)
    if text:
        click.echo("\n# Suggested ResourceQuota / LimitRange for namespaces without them "
                   "(costwatch k8s --format yaml | kubectl apply -f -)")
        click.echo(text, nl=False)


def to_json(contexts: list[ClusterContext], now: datetime) -> str:
    return json.dumps({"generated_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "clusters": [c.to_dict() for c in contexts]}, indent=2)


# --------------------------------------------------------------------------------------------- command


@click.command("k8s")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="costwatch YAML config (kubernetes.clusters, registry_allowlist). Default: current kubeconfig "
                   "context.")
@click.option("--cluster", "names", multiple=True,
              help="Only this configured cluster (repeatable); with no clusters configured, a kubeconfig context.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table", show_default=True,
              help="table: posture and findings; json: everything; yaml: only the suggested manifests.")
def k8s(config_path: Path | None, names: tuple[str, ...], fmt: str) -> None:
    """Namespace quotas, limits, security and miner signs, with ResourceQuota/LimitRange suggestions.

    Read-only (get/list).  Exit 0 when every cluster was read, 1 when one was unavailable, 2 for a config
    error."""
    from costwatch.config import Config, load_config
    from costwatch.providers.kubernetes.client import INSTALL_HINT, gather_all, installed

    try:
        cfg: Any = load_config(config_path) if config_path else Config()
        if not installed():
            raise ConfigError(INSTALL_HINT)
        clusters = select_clusters(cfg, names)
    except CostwatchError as e:
        _fail(e)
    now = datetime.now(UTC)
    contexts = gather_all(clusters, allowlist=list(cfg.kubernetes.registry_allowlist), now=now,
                          deadline=cfg.kubernetes.timeout_seconds)
    if fmt == "json":
        click.echo(to_json(contexts, now))
    elif fmt == "yaml":
        click.echo(suggestions_yaml(contexts) or "# nothing to suggest: every namespace has a quota and defaults\n",
                   nl=False)
        for ctx in contexts:
            if not ctx.available:
                click.echo(f"costwatch: cluster {ctx.name}: {ctx.status}", err=True)
    else:
        render_table(contexts)
    sys.exit(EXIT_UNAVAILABLE if any(not c.available for c in contexts) else 0)


__all__ = ["k8s", "render_table", "select_clusters", "suggestions_yaml", "to_json"]
