"""Kubernetes context for costwatch alerts: which pods run on a node that is mining, and what let them.

``contexts_from_config(cfg)`` reads every cluster in ``kubernetes.clusters`` (kubeconfig context or in-cluster
service account, read-only, paginated) into a ``ClusterContext``; ``attach(alerts, contexts)`` adds
``evidence["kubernetes"]`` to the alerts those clusters explain.  ``costwatch k8s`` prints the same analysis
per namespace with ResourceQuota/LimitRange suggestions.  Nodes are matched to the cloud instances in alerts
through ``spec.providerID``; the mapping is documented in ``nodes``.

Needs the ``kubernetes`` client (``pip install 'costwatch[k8s]'``) only to read clusters: analysis and attach
are pure and import nothing from it.
"""

from __future__ import annotations

from .attach import alert_nodes, attach, lines
from .client import Unavailable, contexts_from_config, gather, installed
from .nodes import identify, instance_from_provider_id
from .posture import ClusterContext, NamespacePosture, PodView, Snapshot, analyze, quantity

__all__ = ["ClusterContext", "NamespacePosture", "PodView", "Snapshot", "Unavailable", "alert_nodes", "analyze",
           "attach", "contexts_from_config", "gather", "identify", "installed", "instance_from_provider_id", "lines",
           "quantity"]
