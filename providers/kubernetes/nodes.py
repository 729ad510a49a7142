"""Which cloud instance a Kubernetes node is, so a CPU alert on ``i-0abc…`` finds the pods running there.

costwatch's cloud providers name a node the way their CPU metrics do, and a node's ``spec.providerID`` names
the same machine the cloud's way:

=========================================================================================  ==========================
``spec.providerID``                                                                        instance (alert node id)
=========================================================================================  ==========================
``aws:///us-east-1a/i-0abc123``                                                            ``i-0abc123``
``aws:///us-east-1a/<hash>/fargate-ip-10-0-1-2…`` (EKS Fargate: no EC2 instance)           none (node name only)
``gce://my-project/us-central1-a/gke-pool-1-abcd``                                         ``gke-pool-1-abcd``
``azure:///subscriptions/…/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1``  ``vm1``
``azure:///subscriptions/…/virtualMachineScaleSets/aks-pool-123-vmss/virtualMachines/3``  ``aks-pool-123-vmss_3``
=========================================================================================  ==========================

A node also answers to other names an alert may use, all compared case-insensitively: its Kubernetes name
(EKS ``ip-10-0-1-2.ec2.internal``, GKE and AKS node names — the Azure provider names scale-set instances like
AKS does, ``aks-pool-123-vmss00000a``), GKE's numeric instance id from the ``container.googleapis.com/instance_id``
annotation (the GCP provider's node id for VMs), and on Azure ``<resource group>/<name>``, which the Azure
provider uses when a VM name repeats within a subscription.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

GKE_INSTANCE_ID = "container.googleapis.com/instance_id"
_AWS_INSTANCE = re.compile(r"i-[0-9a-f]{8,17}", re.IGNORECASE)


@dataclass(frozen=True)
class NodeIdentity:
    """A node as the cloud sees it; ``aliases`` are lowercase and include the Kubernetes name."""

    name: str
    cloud: str | None
    instance: str | None
    aliases: frozenset[str]


def instance_from_provider_id(provider_id: str) -> tuple[str | None, str | None, str | None]:
    """``(cloud, instance id, resource group)`` from a ``spec.providerID``; unknown schemes give ``(None, …)``.

    Parsed by hand rather than with a URL parser because the forms differ per cloud (``aws:///zone/id`` has an
    empty host, ``gce://project/…`` does not) and a malformed value must give "no instance", never an error."""
    scheme, sep, rest = provider_id.strip().partition("://")
    if not sep:
        return None, None, None
    parts = [p for p in rest.split("/") if p]
    scheme = scheme.lower()
    if scheme == "aws":
        last = parts[-1] if parts else ""
        return "aws", (last if _AWS_INSTANCE.fullmatch(last) else None), None
    if scheme == "gce":
        return "gce", (parts[2] if len(parts) == 3 else None), None
    if scheme == "azure":
        lower = [p.lower() for p in parts]
        group = parts[lower.index("resourcegroups") + 1] if "resourcegroups" in lower[:-1] else None
        if "virtualmachinescalesets" in lower:
            i = lower.index("virtualmachinescalesets")
            if len(parts) >= i + 4 and lower[i + 2] == "virtualmachines":
                return "azure", f"{parts[i + 1]}_{parts[i + 3]}", group
            return "azure", None, group
        if "virtualmachines" in lower[:-1]:
            return "azure", parts[lower.index("virtualmachines") + 1], group
        return "azure", None, group
    return scheme or None, None, None


def identify(node: dict[str, Any]) -> NodeIdentity:
    """The identity of one Node object (raw API JSON)."""
    meta = node.get("metadata") or {}
    name = str(meta.get("name") or "")
    provider_id = str((node.get("spec") or {}).get("providerID") or "")
    cloud, instance, group = instance_from_provider_id(provider_id)
    aliases = {name.lower()} if name else set()
    if instance:
        aliases.add(instance.lower())
    gce_id = (meta.get("annotations") or {}).get(GKE_INSTANCE_ID)
    if gce_id:
        aliases.add(str(gce_id).lower())
    if cloud == "azure" and group:
        aliases |= {f"{group.lower()}/{a}" for a in list(aliases)}
    return NodeIdentity(name=name, cloud=cloud, instance=instance, aliases=frozenset(a for a in aliases if a))


__all__ = ["GKE_INSTANCE_ID", "NodeIdentity", "identify", "instance_from_provider_id"]
