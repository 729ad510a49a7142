"""The one YAML config file, validated up front so a typo fails at startup rather than at 3 a.m.

Why this is more than ``yaml.safe_load`` plus ``Config.model_validate``:

* Every error names the file, the line and the dotted key path, because "Extra inputs are not permitted"
  with a pydantic ``loc`` tuple is not something an on-call engineer can act on.  We compose the YAML node
  tree ourselves and keep a map from key path to line number.
* ``${ENV_VAR}`` / ``${ENV_VAR:-default}`` is expanded on parsed scalar strings, not on the raw text, so a
  secret containing ``:`` or ``#`` cannot change the YAML structure, and a reference in a comment is inert.
  So are secret references ``${file:PATH}``, ``${ssm:NAME}`` and ``${secretsmanager:ID#key}``
  (``costwatch.secrets``), resolved once at load time.
* The file is hostile input too: its size, nesting depth, node count and text after expanding aliases
  ("billion laughs") are bounded, and a scalar PyYAML cannot construct (``2026-13-45``) is a located error.
* The config holds Slack tokens and SMTP passwords.  Error messages never echo an input value that came
  from the environment or sits in a secret-looking field, and exceptions are raised ``from None`` so a
  ``--debug`` traceback does not carry pydantic's ``input_value=...`` either.

This module holds the models and the two entry points (``load_config``, ``parse_config``); reading the
YAML, expanding ``${...}`` and writing the error messages live in ``costwatch.config_source``, which states
those invariants and does not import this module.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .config_source import MAX_CONFIG_BYTES, Explainer, Interpolator, Locator, YamlLoader, allows_none
from .errors import ConfigError, where
from .secrets import SecretResolver

__all__ = [
    "GROUP_BY_LABELS",
    "PROVIDER_TYPES",
    "AlertingConfig",
    "AthenaConfig",
    "AwsProviderConfig",
    "AzureProviderConfig",
    "Config",
    "CpuDetectionConfig",
    "DetectionConfig",
    "EmailConfig",
    "FilesProviderConfig",
    "GcpProviderConfig",
    "KubernetesCluster",
    "KubernetesConfig",
    "MonitorConfig",
    "MonitorSelector",
    "NotifyConfig",
    "OwnerConfig",
    "PagerDutyConfig",
    "ProjectConfig",
    "ProviderConfig",
    "SlackConfig",
    "SnsConfig",
    "StateConfig",
    "TeamsConfig",
    "WebhookConfig",
    "budget_steps",
    "format_duration",
    "https_or_loopback",
    "load_config",
    "parse_config",
    "parse_duration",
]

# ----------------------------------------------------------------------------------------------- durations

_UNIT_US = {"w": 7 * 86_400_000_000, "d": 86_400_000_000, "h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([wdhms])")
_DURATION_FULL = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)[wdhms])+")


def parse_duration(s: str) -> timedelta:
    """Parse ``30m``, ``4h``, ``2d``, ``1w`` or compounds like ``1h30m`` into a timedelta.

    Units are required because a bare ``4`` is ambiguous (hours? days?) and guessing wrong means alerts
    repeat 60x too often.  Decimal arithmetic keeps ``0.1s`` exact, so ``format_duration`` round-trips.
    Raises ``ValueError`` (not ``ConfigError``) so pydantic validators can wrap it with a location.
    """
    if not isinstance(s, str):
        raise ValueError("a duration must be a string like 30m, 4h or 2d")
    text = s.strip().lower().replace(" ", "")
    if not text or not _DURATION_FULL.fullmatch(text):
        raise ValueError("expected a duration like 45s, 30m, 4h, 2d, 1w or 1h30m (a number and a unit)")
    total = sum((Decimal(num) * _UNIT_US[unit] for num, unit in _DURATION_PART.findall(text)), Decimal(0))
    try:
        return timedelta(microseconds=int(total.to_integral_value()))
    except OverflowError:
        raise ValueError("duration is too long") from None


def format_duration(td: timedelta) -> str:
    """The inverse of ``parse_duration``, for reports and round-trip tests; largest units first."""
    us = (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
    if us < 0:
        raise ValueError("negative durations are not supported")
    if us == 0:
        return "0s"
    out = []
    for unit in ("d", "h", "m"):
        n, us = divmod(us, _UNIT_US[unit])
        if n:
            out.append(f"{n}{unit}")
    if us:
        secs, frac = divmod(us, 1_000_000)
        out.append(f"{secs}.{frac:06d}".rstrip("0") + "s" if frac else f"{secs}s")
    return "".join(out)


# ------------------------------------------------------------------------------------------------- models


class _Model(BaseModel):
    """Shared settings: unknown keys are errors, because a misspelt key silently falling back to its
    default (``sensitivty: 2``) is the worst kind of config bug."""

    # allow_inf_nan: ``.inf`` and ``.nan`` are YAML floats, never a meaningful limit, threshold or timeout
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_means_default(cls, data: Any) -> Any:
        """``detection:`` with every line commented out parses as null; treat it as "use the defaults"
        rather than "invalid mapping", which is what a YAML user means."""
        if isinstance(data, dict):
            fields = cls.model_fields
            return {k: v for k, v in data.items()
                    if not (v is None and k in fields and not fields[k].is_required()
                            and not allows_none(fields[k].annotation))}
        return data


class FilesProviderConfig(_Model):
    """Read FOCUS cost exports and CPU usage CSVs from disk; the offline and demo path."""

    type: Literal["files"] = "files"
    name: str = Field(default="files", min_length=1)
    costs: str | list[str] | None = None
    usage: str | list[str] | None = None
    # how cost exports are read: pandas (every row), duckdb (daily sums), auto (duckdb for large inputs)
    engine: Literal["auto", "pandas", "duckdb"] = "auto"

    @model_validator(mode="after")
    def _needs_something(self) -> FilesProviderConfig:
        if not self.costs and not self.usage:
            raise ValueError("a files provider needs 'costs' and/or 'usage'")
        return self


class AthenaConfig(_Model):
    """Where an AWS Data Export (FOCUS 1.2 or CUR 2.0, Parquet, ``billing_period`` partition) is queried in
    Athena when ``cost_source: athena``; names are checked here because they are spliced into the SQL."""

    database: str = Field(pattern=r"^[A-Za-z0-9_-]{1,255}$")
    table: str = Field(pattern=r"^[A-Za-z0-9_-]{1,255}$")
    workgroup: str = Field(default="primary", pattern=r"^[A-Za-z0-9._-]{1,128}$")
    output_location: str | None = Field(default=None, pattern=r"^s3://[^/\s]+(/\S*)?$")
    export: Literal["focus", "cur2"] = "focus"
    region: str | None = Field(default=None, pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")


class _CachedProvider(_Model):
    """A cloud provider keeping fetched days in a local SQLite cache (default: next to the state file)."""

    cache_path: str | None = None

    @field_validator("cache_path")
    @classmethod
    def _cache_next_to_config(cls, v: str | None, info: ValidationInfo) -> str | None:
        """Relative like every other path in the file: next to the config file, when there is one."""
        base = (info.context or {}).get("base_dir") if info is not None else None
        return _resolve_one(v, Path(base)) if v and base is not None else v


OrgUnitId = Annotated[str, Field(pattern=r"^(ou-[0-9a-z]{4,32}-[0-9a-z]{8,32}|r-[0-9a-z]{4,32})$")]


class AwsProviderConfig(_CachedProvider):
    """Cost Explorer spend plus EC2/CloudWatch CPU from the AWS APIs (``pip install 'costwatch[aws]'``).

    Credentials and endpoints come from the standard boto3 chain (env, profile, instance role,
    ``AWS_ENDPOINT_URL``), never from this file, so the config holds no AWS secrets."""

    type: Literal["aws"] = "aws"
    name: str = Field(default="aws", min_length=1)
    profile: str | None = None
    metric: Literal["UnblendedCost", "NetUnblendedCost", "AmortizedCost"] = "UnblendedCost"
    restate_days: int = Field(default=3, ge=0, le=31)
    regions: list[str] | None = None
    owner_tag: str = Field(default="owner", min_length=1)
    cpu: bool = True
    max_workers: int = Field(default=8, ge=1, le=64)
    assume_role: str | None = Field(default=None, pattern=r"^[\w+=,.@/-]{1,128}$")
    # one deployment per OU (sharding a large organization): only the accounts under these OUs (or roots)
    organizational_units: list[OrgUnitId] | None = None
    # copy the cache (CPU history, Cost Explorer days, account names) to the state store, so a run on a fresh
    # machine (a Lambda cold start) does not refetch it; default: on when the state is in DynamoDB
    state_copy: bool | None = None
    guardduty: bool = True
    # where daily spend comes from: Cost Explorer, or the Data Export in S3 through Athena (``athena:``)
    cost_source: Literal["cost_explorer", "athena"] = "cost_explorer"
    athena: AthenaConfig | None = None

    @model_validator(mode="after")
    def _athena_needs_its_table(self) -> AwsProviderConfig:
        if self.cost_source == "athena" and self.athena is None:
            raise ValueError("cost_source: athena needs an 'athena' block with database and table")
        return self


class GcpProviderConfig(_CachedProvider):
    """Cloud Billing export (BigQuery) spend plus Cloud Monitoring CPU (``pip install 'costwatch[gcp]'``).

    Credentials come from Application Default Credentials, never from this file."""

    type: Literal["gcp"] = "gcp"
    name: str = Field(default="gcp", min_length=1)
    billing_account: str | None = Field(default=None, pattern=r"^[0-9A-F]{6}-[0-9A-F]{6}-[0-9A-F]{6}$")
    # the export table, "project.dataset.table"; for the FOCUS view, the view's name
    billing_table: str | None = Field(default=None, pattern=r"^[\w.-]+\.\w+\.[\w$-]+$")
    export: Literal["standard", "detailed", "focus"] = "standard"
    bigquery_project: str | None = None  # project billed for the queries; default: the table's project
    projects: list[str] | None = None    # projects whose CPU is read; default: every billed project
    restate_days: int = Field(default=3, ge=0, le=31)
    owner_label: str = Field(default="owner", min_length=1)
    cpu: bool = True
    max_workers: int = Field(default=8, ge=1, le=64)


class AzureProviderConfig(_CachedProvider):
    """Consumption (or Cost Management) spend plus Azure Monitor CPU (``pip install 'costwatch[azure]'``).

    Credentials come from azure-identity's DefaultAzureCredential, never from this file."""

    type: Literal["azure"] = "azure"
    name: str = Field(default="azure", min_length=1)
    # default: every subscription the credential can read; ids are GUIDs, so a typo fails in check-config
    subscriptions: (list[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")]]
                    | None) = None
    source: Literal["consumption", "costmanagement"] = "consumption"
    restate_days: int = Field(default=3, ge=0, le=31)
    owner_tag: str = Field(default="owner", min_length=1)
    cpu: bool = True
    max_workers: int = Field(default=8, ge=1, le=64)


# A discriminated union on ``type``, so an error in one provider is reported against that provider's keys
# only.  Add cloud providers with ``FilesProviderConfig | AwsProviderConfig | ...`` (each with a
# ``type: Literal[...]`` field) and nothing else here changes.
ProviderConfig = Annotated[FilesProviderConfig | AwsProviderConfig | GcpProviderConfig | AzureProviderConfig,
                           Field(discriminator="type")]
PROVIDER_TYPES: tuple[str, ...] = ("files", "aws", "gcp", "azure")


def budget_steps(v: list[float]) -> list[float]:
    """Budget steps as written, checked: each is told once a month, so a duplicate or an unsorted list is
    almost always a typo (``[50, 75, 09]``), and a step above 1000 % cannot be a budget alert."""
    if not v:
        raise ValueError("list at least one step, e.g. [50, 75, 90, 100] (percent of monthly_budget)")
    for p in v:
        if not 0 < p <= 1000:
            raise ValueError("each step is a percent of monthly_budget above 0 and at most 1000, "
                             "e.g. [50, 75, 90, 100]")
    if any(b <= a for a, b in itertools.pairwise(v)):
        raise ValueError("list the steps in increasing order, each once, e.g. [50, 75, 90, 100]")
    return [float(p) for p in v]


class ProjectConfig(_Model):
    """Per-project overrides, keyed in the file by the provider's project id (account, project, subscription)."""

    # Account ids and cost-centre tags are often written unquoted; accept 123456789012 as the string.
    model_config = ConfigDict(coerce_numbers_to_str=True)

    name: str | None = None
    owner: str | None = None
    daily_threshold: float | None = Field(default=None, gt=0)
    monthly_budget: float | None = Field(default=None, gt=0)
    currency: str = "USD"
    min_spend: float | None = Field(default=None, ge=0)
    # detection knobs for this project's (or monitor's) series; None: the ``detection:`` value
    sensitivity: float | None = Field(default=None, ge=0.25, le=4.0)
    min_impact: float | None = Field(default=None, ge=0)
    min_impact_pct: float | None = Field(default=None, ge=0)
    tags: dict[str, str] = Field(default_factory=dict)
    # percent steps of monthly_budget told on actual and forecast spend; unset: detection.budget_alerts
    budget_alerts: list[float] | None = None

    @field_validator("budget_alerts")
    @classmethod
    def _steps(cls, v: list[float] | None) -> list[float] | None:
        return None if v is None else budget_steps(v)

    @field_validator("currency")
    @classmethod
    def _iso_currency(cls, v: str) -> str:
        v = v.strip().upper()
        if not re.fullmatch(r"[A-Z]{3}", v):
            raise ValueError("currency must be a 3-letter ISO 4217 code such as USD or EUR")
        return v


# ``for_each`` dimensions a templated monitor expands over: one monitor per distinct value in the data
FOR_EACH_PLAIN: tuple[str, ...] = ("provider", "project", "service", "service_category", "region", "namespace")
_FOR_EACH = re.compile(r"(provider|project|service|service_category|region|namespace)|(tag|label):(\S.{0,127})")
Values = Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(min_length=1, max_length=1000)]


def _as_list(v: Any) -> Any:
    """A selector value may be one string or a list of them (any of); numbers are read as text."""
    if v is None:
        return None
    if isinstance(v, list) and not v:
        raise ValueError("an empty list matches nothing: give at least one value, or drop the key")
    if isinstance(v, bool) or not isinstance(v, str | int | float | list):
        raise ValueError("expected a string or a list of strings (any of them matches)")
    if isinstance(v, list):
        return [str(x) if isinstance(x, int | float) and not isinstance(x, bool) else x for x in v]
    return [str(v)]


class MonitorSelector(_Model):
    """Which cost rows a monitor watches: every key given must match (and), a list means any of its values
    (or).  ``namespace`` and ``labels`` are read from the Kubernetes cost tags (``costwatch.monitors``)."""

    provider: Values | None = None
    project: Values | None = None   # project id or display name
    service: Values | None = None
    service_category: Values | None = None
    region: Values | None = None
    namespace: Values | None = None
    tags: dict[str, Values] = Field(default_factory=dict)
    labels: dict[str, Values] = Field(default_factory=dict)

    @field_validator("provider", "project", "service", "service_category", "region", "namespace", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return _as_list(v)

    @field_validator("tags", "labels", mode="before")
    @classmethod
    def _each_one_or_many(cls, v: Any) -> Any:
        return {k: _as_list(x) for k, x in v.items()} if isinstance(v, dict) else v

    def keys(self) -> list[str]:
        """The keys set, in the order above (for messages and evidence)."""
        return [k for k in type(self).model_fields if getattr(self, k)]


class MonitorConfig(ProjectConfig):
    """A named scope over the cost data (``selector``), watched like a project: one series, banded and
    alerted with the same knobs, routed to ``owner``.  With ``for_each`` it is a template: one monitor per
    distinct value of that dimension, named by ``name`` with ``{value}`` filled in (``owner`` too)."""

    name: str = Field(min_length=1, max_length=120, pattern=r"^[^\x00-\x1f\x7f]+$")
    selector: MonitorSelector = Field(default_factory=MonitorSelector)
    for_each: str | None = None
    max_monitors: int = Field(default=500, ge=1, le=10_000)

    @model_validator(mode="before")
    @classmethod
    def _no_top_level_tags(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tags" in data:
            raise ValueError("a monitor's tags go under 'selector:' (selector: {tags: {team: payments}})")
        return data

    @field_validator("for_each")
    @classmethod
    def _known_dimension(cls, v: str | None) -> str | None:
        if v is not None and not _FOR_EACH.fullmatch(v.strip()):
            raise ValueError("for_each must be one of " + ", ".join(FOR_EACH_PLAIN)
                             + ", tag:<key> or label:<key> (e.g. tag:team)")
        return v.strip() if v is not None else None

    @model_validator(mode="after")
    def _template_names(self) -> MonitorConfig:
        has = "{value}" in self.name
        if self.for_each and not has:
            raise ValueError("a monitor with for_each needs '{value}' in its name (e.g. name: team-{value}), "
                             "so each expanded monitor has its own name")
        if not self.for_each and ("{value}" in self.name or "{value}" in (self.owner or "")):
            raise ValueError("'{value}' in name or owner needs for_each (the dimension whose values fill it in)")
        return self


DEFAULT_GPU_PREFIXES: tuple[str, ...] = (
    # AWS accelerated families
    "p2", "p3", "p4", "p5", "g3", "g4dn", "g4ad", "g5", "g6", "trn", "inf",
    # GCP accelerator machine types
    "a2-", "a3-", "g2-",
    # Azure GPU sizes
    "Standard_NC", "Standard_ND", "Standard_NV",
)


class CpuDetectionConfig(_Model):
    """Knobs for the CPU-plateau (cryptomining) detector; see ``costwatch.cpu`` for the algorithm."""

    pinned_level: float = Field(default=90.0, gt=0, le=100)
    plateau_level: float = Field(default=45.0, gt=0, le=100)
    min_excess: float = Field(default=20.0, ge=0, le=100)
    flat_tolerance: float = Field(default=3.0, ge=0, le=100)
    pinned_hours: int = Field(default=2, ge=1, le=168)
    plateau_hours: int = Field(default=6, ge=1, le=168)
    profile_days: int = Field(default=7, ge=1, le=90)
    min_profile_days: int = Field(default=3, ge=1, le=90)
    gpu_instance_prefixes: list[str] = Field(default_factory=lambda: list(DEFAULT_GPU_PREFIXES))
    # the score behind the report's "nodes off their band" lines (context, not alerts): "calibrated" judges each
    # node against its own history's tails and holds up better on unfamiliar shapes (bench/nab_kinds.py, README
    # Benchmarks); "range" is the NAB-tuned novelty score.  Both have a fast path (~1.15x the CPU apart)
    usage_score: Literal["range", "calibrated"] = "calibrated"

    @model_validator(mode="after")
    def _consistent(self) -> CpuDetectionConfig:
        # Values are not echoed: any of them may have come from the environment.
        if self.plateau_level > self.pinned_level:
            raise ValueError("plateau_level must not be above pinned_level")
        if self.min_profile_days > self.profile_days:
            raise ValueError("min_profile_days must not be above profile_days")
        return self


class DetectionConfig(_Model):
    """Cost-anomaly settings; field names are read directly by ``costwatch.detect``."""

    sensitivity: float = Field(default=1.0, ge=0.25, le=4.0)
    min_spend: float = Field(default=5.0, ge=0)
    min_impact: float = Field(default=0.0, ge=0)
    min_impact_pct: float = Field(default=0.0, ge=0)
    history_days: int = Field(default=14, ge=1, le=365)
    lookback_days: int = Field(default=28, ge=7, le=365)
    band_method: Literal["weekday", "stl"] = "weekday"
    band_z: float = Field(default=4.0, gt=0, le=20)
    min_band_ratio: float = Field(default=0.15, ge=0, le=10)
    cost_delay_hours: float = Field(default=0.0, ge=0, le=168)
    cpu: CpuDetectionConfig = Field(default_factory=CpuDetectionConfig)
    # budget steps (percent of monthly_budget) for projects that set a budget but no steps of their own
    budget_alerts: list[float] = Field(default_factory=lambda: [100.0])

    @field_validator("budget_alerts")
    @classmethod
    def _steps(cls, v: list[float]) -> list[float]:
        return budget_steps(v)


# Alert fields (plus the project's configured owner) that make sense as grouping labels.  Checked here
# because an unknown label would silently put every alert into one group.
GROUP_BY_LABELS: tuple[str, ...] = ("project", "project_name", "owner", "provider", "kind", "severity",
                                    "service", "region")


WEEKDAYS: tuple[str, ...] = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class DigestConfig(_Model):
    """``alerting.digest``: when each owner gets the scheduled spend summary (``costwatch.digest``).  ``hour``
    is on the wall clock of ``timezone`` (an IANA name), so "Monday 9:00 in Berlin" stays 9:00 across DST."""

    schedule: Literal["weekly", "daily"] = "weekly"
    day: Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"] = "monday"
    hour: int = Field(default=9, ge=0, le=23)
    timezone: str = "UTC"
    top: int = Field(default=5, ge=1, le=50)   # movers listed per dimension (service, region)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as UTC or Europe/Berlin") from None
        return v


class AlertingConfig(_Model):
    """How detected alerts become notifications: grouping, re-notification and resolve messages."""

    group_by: list[str] = Field(default_factory=lambda: ["project"])
    repeat_interval: str = "4h"
    send_resolved: bool = True
    growth_factor: float = Field(default=1.5, gt=1.0)
    # cost tags (FOCUS Tags) read, in order, for a project's owner when the project config names none
    owner_tags: list[str] = Field(default_factory=lambda: ["owner", "team"])
    default_owner: str | None = None
    # severity -> extra owners told as well (e.g. critical: [secops])
    escalate: dict[Literal["critical", "high", "warning", "info"], list[str]] = Field(default_factory=dict)
    # `costwatch run` exits non-zero when a notification has been undeliverable for longer than this
    stuck_after: str = "6h"
    max_attempts: int = Field(default=50, ge=1, le=1000)
    # a provider still fetching after this is reported as timed out; the run goes on with the others
    provider_timeout: str = "5m"
    # more new notifications than this for one channel/mailbox in one run are folded into one digest (0: never)
    digest_after: int = Field(default=10, ge=0, le=10_000)
    # told (through its other channels) when a channel fails for good; default: default_owner, else notify's
    fallback: str | None = None
    # the scheduled spend summary each owner gets (costwatch.digest); none unless configured
    digest: DigestConfig | None = None

    @field_validator("stuck_after", "provider_timeout")
    @classmethod
    def _valid_stuck(cls, v: str, info: ValidationInfo) -> str:
        if parse_duration(v) <= timedelta(0):
            raise ValueError(f"{info.field_name} must be longer than zero")
        return v

    @field_validator("group_by")
    @classmethod
    def _known_labels(cls, v: list[str]) -> list[str]:
        for label in v:
            if label not in GROUP_BY_LABELS:
                close = difflib.get_close_matches(label, GROUP_BY_LABELS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown group_by label {label!r}{hint}; expected some of: "
                                 + ", ".join(GROUP_BY_LABELS))
        if len(set(v)) != len(v):
            raise ValueError("group_by lists a label twice")
        return v

    @field_validator("repeat_interval")
    @classmethod
    def _valid_interval(cls, v: str) -> str:
        if parse_duration(v) <= timedelta(0):
            raise ValueError("repeat_interval must be longer than zero")
        return v

    @property
    def repeat_interval_td(self) -> timedelta:
        """The model keeps the string as written (so dumps look like the file); callers want a timedelta."""
        return parse_duration(self.repeat_interval)

    @property
    def stuck_after_td(self) -> timedelta:
        return parse_duration(self.stuck_after)

    @property
    def provider_timeout_td(self) -> timedelta:
        return parse_duration(self.provider_timeout)


_SNS_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?")
_LOOPBACK = re.compile(r"(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d{1,5})?")


def https_or_loopback(url: str) -> bool:
    """https anywhere; plain http only to this machine (local receivers and test fakes)."""
    if url.startswith("https://") and len(url) > 8:
        return True
    if url.startswith("http://"):
        host = url[7:].split("/", 1)[0].rsplit("@", 1)[-1]
        return bool(_LOOPBACK.fullmatch(host))
    return False


class OwnerConfig(_Model):
    """Where one owner (a team or a person) is told.  Unset parts fall back to ``notify``'s defaults."""

    slack_channel: str | None = None   # channel id or #name; default: notify.slack.channel
    slack_mention: str | None = None   # user (U…), user group (S…) id, or "here"/"channel"; pinged in the message
    email: list[str] = Field(default_factory=list)
    # the owner's own endpoints on the other channels (secrets: from the environment); default: notify's
    teams_webhook_url: SecretStr | None = None
    pagerduty_routing_key: SecretStr | None = None
    webhook_url: SecretStr | None = None
    sns_topic_arn: str | None = None

    @model_validator(mode="after")
    def _endpoints(self) -> OwnerConfig:
        for name in ("teams_webhook_url", "webhook_url"):
            value = getattr(self, name)
            if value is not None and not https_or_loopback(value.get_secret_value()):
                raise ValueError(f"{name} must be an https:// URL (http:// only to localhost)")
        if self.sns_topic_arn is not None and not _SNS_ARN.fullmatch(self.sns_topic_arn):
            raise ValueError("sns_topic_arn must be an SNS topic ARN like arn:aws:sns:us-east-1:123456789012:alerts")
        return self

    @field_validator("email")
    @classmethod
    def _emails(cls, v: list[str]) -> list[str]:
        if any("@" not in a or any(c in a for c in "\r\n,;<>") for a in v):
            raise ValueError("every email entry must be one plain address like team@example.com")
        return v

    @field_validator("slack_mention")
    @classmethod
    def _mention(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[UWS][A-Z0-9]{2,20}|here|channel", v):
            raise ValueError("slack_mention must be a Slack user id (U…/W…), a user group id (S…), "
                             "'here' or 'channel'")
        return v


class SlackConfig(_Model):
    """Either a bot token plus channel (chat.postMessage) or an incoming-webhook URL."""

    token: SecretStr | None = None
    webhook_url: SecretStr | None = None
    channel: str | None = None
    api_url: str | None = None     # Slack Web API base, e.g. a proxy; default https://slack.com/api/
    timeout: float = Field(default=15.0, gt=0, le=300)
    charts: bool = True            # upload a PNG of band, spike and CPU (bot token only)
    # answers from Slack (costwatch serve / the Lambda's function URL): the app's signing secret verifies
    # every request; `interactive` puts the buttons on messages (default: on when a signing secret is set)
    signing_secret: SecretStr | None = None
    interactive: bool | None = None

    @property
    def buttons(self) -> bool:
        return bool(self.interactive if self.interactive is not None else self.signing_secret is not None)

    @model_validator(mode="after")
    def _usable(self) -> SlackConfig:
        if self.token is None and self.webhook_url is None:
            raise ValueError("slack needs 'token' (with 'channel') or 'webhook_url'")
        if self.token is not None and not self.channel:
            raise ValueError("slack 'token' needs a 'channel' to post to")
        if self.webhook_url is not None and not self.webhook_url.get_secret_value().startswith("https://"):
            raise ValueError("slack 'webhook_url' must be an https:// URL")
        if self.interactive and self.signing_secret is None:
            raise ValueError("slack 'interactive: true' needs 'signing_secret' (the Slack app's Signing Secret, "
                             "Basic Information page) to verify button presses")
        if self.interactive and self.token is None:
            raise ValueError("slack 'interactive: true' needs a bot 'token': answers update messages with "
                             "chat.update")
        if self.api_url is not None and not _https_or_loopback(self.api_url):
            raise ValueError("slack 'api_url' must be an https:// URL (http:// only to localhost, for tests)")
        return self


def _https_or_loopback(url: str) -> bool:
    """An https URL with a host, or an http one to this machine (a local fake in tests): never ``file:``,
    ``ftp:`` or plain http across a network, where the bot token would travel in clear."""
    import ipaddress
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        return False
    if parts.scheme == "https":
        return bool(host)
    if parts.scheme != "http":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EmailConfig(_Model):
    """SMTP delivery; STARTTLS on 587 by default because plaintext SMTP leaks the password."""

    transport: Literal["smtp", "ses"] = "smtp"
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    from_addr: str
    to: list[str] = Field(default_factory=list)  # default recipients; owners may add their own
    starttls: bool = True          # STARTTLS on a plain connection (587)
    ssl: bool = False              # implicit TLS from the first byte (port 465 unless set); starttls is then moot
    ses_region: str | None = None  # SES: region, else the AWS SDK default
    timeout: float = Field(default=30.0, gt=0, le=300)

    @model_validator(mode="after")
    def _addresses(self) -> EmailConfig:
        if self.ssl and "smtp_port" not in self.model_fields_set:
            self.smtp_port = 465  # implicit TLS listens on 465, not on the STARTTLS port
        if self.transport == "smtp" and not self.smtp_host:
            raise ValueError("email transport 'smtp' needs 'smtp_host'")
        if any(c in a for a in [self.from_addr, *self.to] for c in "\r\n"):
            raise ValueError("email addresses must not contain line breaks")
        if "@" not in self.from_addr:
            raise ValueError("from_addr must be an email address")
        if any("@" not in a for a in self.to):
            raise ValueError("every 'to' entry must be an email address")
        if (self.username is None) != (self.password is None):
            raise ValueError("set both 'username' and 'password', or neither")
        return self


class TeamsConfig(_Model):
    """Microsoft Teams through a Workflows incoming webhook ("When a Teams webhook request is received")."""

    webhook_url: SecretStr
    timeout: float = Field(default=15.0, gt=0, le=300)

    @model_validator(mode="after")
    def _url(self) -> TeamsConfig:
        if not https_or_loopback(self.webhook_url.get_secret_value()):
            raise ValueError("teams 'webhook_url' must be an https:// URL (http:// only to localhost)")
        return self


class PagerDutyConfig(_Model):
    """PagerDuty Events API v2: the integration's routing key (a service's "Events API v2" integration)."""

    routing_key: SecretStr
    events_url: str = "https://events.pagerduty.com/v2/enqueue"   # EU accounts: events.eu.pagerduty.com
    client_url: str | None = None  # a link shown on the PagerDuty incident (your dashboard, runbook)
    timeout: float = Field(default=15.0, gt=0, le=300)

    @model_validator(mode="after")
    def _url(self) -> PagerDutyConfig:
        if not https_or_loopback(self.events_url):
            raise ValueError("pagerduty 'events_url' must be an https:// URL (http:// only to localhost)")
        if self.client_url is not None and not self.client_url.startswith("https://"):
            raise ValueError("pagerduty 'client_url' must be an https:// URL")
        return self


class WebhookConfig(_Model):
    """A signed JSON POST of every notification (schema costwatch.notification/v1, see the README)."""

    url: SecretStr
    secret: SecretStr              # HMAC-SHA256 key the receiver shares to verify X-Costwatch-Signature
    timeout: float = Field(default=15.0, gt=0, le=300)

    @model_validator(mode="after")
    def _url(self) -> WebhookConfig:
        if not https_or_loopback(self.url.get_secret_value()):
            raise ValueError("webhook 'url' must be an https:// URL (http:// only to localhost)")
        if len(self.secret.get_secret_value()) < 16:
            raise ValueError("webhook 'secret' must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        return self


class SnsConfig(_Model):
    """Amazon SNS: one publish per notification, with message attributes to filter subscriptions on."""

    topic_arn: str
    region: str | None = None      # default: the topic ARN's region

    @field_validator("topic_arn")
    @classmethod
    def _arn(cls, v: str) -> str:
        if not _SNS_ARN.fullmatch(v):
            raise ValueError("topic_arn must be an SNS topic ARN like arn:aws:sns:us-east-1:123456789012:alerts")
        return v


class NotifyConfig(_Model):
    """Where notifications go; stdout stays on by default so a fresh install shows something."""

    slack: SlackConfig | None = None
    email: EmailConfig | None = None
    teams: TeamsConfig | None = None
    pagerduty: PagerDutyConfig | None = None
    webhook: WebhookConfig | None = None
    sns: SnsConfig | None = None
    stdout: bool = True


class StateConfig(_Model):
    """Where alert state (fingerprints, last notified, outbox) lives between runs."""

    backend: Literal["sqlite", "dynamodb"] = "sqlite"
    path: str = ".costwatch/state.db"
    table: str | None = None
    region: str | None = None  # DynamoDB region; default: the AWS SDK's

    @model_validator(mode="after")
    def _table_for_dynamodb(self) -> StateConfig:
        if self.backend == "dynamodb" and not self.table:
            raise ValueError("backend 'dynamodb' needs 'table'")
        return self


class KubernetesCluster(_Model):
    """One cluster to inspect for mining pods; ``project`` ties its alerts to a billing project."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    name: str = Field(min_length=1)
    context: str | None = None
    project: str | None = None
    in_cluster: bool = False

    @model_validator(mode="after")
    def _one_way_in(self) -> KubernetesCluster:
        if self.in_cluster and self.context:
            raise ValueError("set 'context' or 'in_cluster: true', not both")
        return self


class KubernetesConfig(_Model):
    """Clusters to watch and the image registries whose images are expected there."""

    clusters: list[KubernetesCluster] = Field(default_factory=list)
    registry_allowlist: list[str] = Field(default_factory=list)
    # the most time one cluster may take (connect + every read, retries included); a hung API server
    # would otherwise hold `run` and `report` (they wait for the context before sending)
    timeout: str = "10s"

    @field_validator("timeout")
    @classmethod
    def _valid_timeout(cls, v: str) -> str:
        if not timedelta(0) < parse_duration(v) <= timedelta(minutes=10):
            raise ValueError("timeout must be longer than zero and at most 10m")
        return v

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout).total_seconds()

    @field_validator("clusters")
    @classmethod
    def _unique_names(cls, v: list[KubernetesCluster]) -> list[KubernetesCluster]:
        names = [c.name for c in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError("cluster names must be unique; repeated: " + ", ".join(dup))
        return v


class Config(_Model):
    """The whole file.  Every section is optional so ``Config()`` is a working zero-config default."""

    providers: list[ProviderConfig] = Field(default_factory=list)
    projects: dict[str, ProjectConfig] = Field(default_factory=dict)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    alerting: AlertingConfig = Field(default_factory=AlertingConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    owners: dict[str, OwnerConfig] = Field(default_factory=dict)
    state: StateConfig = Field(default_factory=StateConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)
    monitors: list[MonitorConfig] = Field(default_factory=list)

    @field_validator("monitors")
    @classmethod
    def _unique_monitor_names(cls, v: list[MonitorConfig]) -> list[MonitorConfig]:
        seen: dict[str, int] = {}
        for i, m in enumerate(v):
            if m.name in seen:
                raise ValueError(f"monitors[{i}].name repeats monitors[{seen[m.name]}].name; monitor names "
                                 "must be unique (they name the alerts' series)")
            seen[m.name] = i
        return v

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        """Top-level ``x-...`` keys are ignored so they can hold YAML anchors (as in docker-compose), and
        ``projects: {web: }`` means "track it with defaults", not "invalid"."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
        if isinstance(data.get("projects"), dict):
            data["projects"] = {k: ({} if v is None else v) for k, v in data["projects"].items()}
        return data

    @model_validator(mode="after")
    def _unique_provider_names(self) -> Config:
        """A provider's name keys its failures, stats and cache: two providers left at the default name (two
        ``files`` exports) are told apart as ``files``, ``files-2``; two given the same name are an error."""
        given: dict[str, int] = {}
        for p in self.providers:
            if "name" in p.model_fields_set:
                given[p.name] = given.get(p.name, 0) + 1
        dup = sorted(n for n, k in given.items() if k > 1)
        if dup:
            raise ValueError(f"provider names must be unique; repeated: {', '.join(dup)} (give each its own name:)")
        taken = set(given)
        for p in self.providers:
            if "name" not in p.model_fields_set:
                base, n = p.name, 1
                while p.name in taken:
                    n += 1
                    p.name = f"{base}-{n}"
                taken.add(p.name)
        return self

    @model_validator(mode="after")
    def _resolve_paths(self, info: ValidationInfo) -> Config:
        """Relative paths mean "next to the config file", so ``costwatch report --config x/y.yaml`` works
        from any working directory.  Without a base dir (``parse_config`` on a string) they stay as is."""
        base = (info.context or {}).get("base_dir") if info is not None else None
        if base is None:
            return self
        base = Path(base)
        for p in self.providers:
            if isinstance(p, FilesProviderConfig):
                p.costs = _resolve(p.costs, base)
                p.usage = _resolve(p.usage, base)
        if self.state.backend == "sqlite":
            self.state.path = _resolve_one(self.state.path, base)
        return self


def _resolve_one(p: str, base: Path) -> str:
    if "://" in p:  # a URL, not a local path
        return p
    path = Path(p).expanduser()
    return str(path if path.is_absolute() else Path(os.path.normpath(base / path)))


def _resolve(v: str | list[str] | None, base: Path) -> str | list[str] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return _resolve_one(v, base)
    return [_resolve_one(p, base) for p in v]


# ------------------------------------------------------------------------------------- loading and parsing


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; every failure is a ``ConfigError`` naming the file."""
    p = Path(path)
    src = str(path)
    try:
        # at most the limit (+1 to notice): a config named /dev/zero or a 10 GB log must not be read whole
        with p.expanduser().open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{src}: config file is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; "
                              "is this really the YAML config?")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{src}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{src}: is a directory, expected a YAML config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{src}: not UTF-8 text; is this really the YAML config?") from None
    except OSError as e:
        raise ConfigError(f"{src}: cannot read config file: {e.strerror}") from None
    return parse_config(text, source=src, base_dir=p.expanduser().resolve().parent)


def parse_config(text: str, source: str = "<string>", base_dir: Path | None = None, *,
                 env: Mapping[str, str] | None = None, secrets: SecretResolver | None = None) -> Config:
    """Parse YAML text into a ``Config``.

    ``source`` is only used in messages; ``base_dir`` anchors relative paths; ``env`` replaces
    ``os.environ`` for ``${VAR}`` expansion so callers and tests need not mutate the process environment;
    ``secrets`` resolves ``${file:…}``, ``${ssm:…}`` and ``${secretsmanager:…}`` (default: a fresh
    ``SecretResolver`` anchored at ``base_dir``, using boto3's default credential chain).
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where(source)}config is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; "
                          "is this really the YAML config?")
    locator = Locator(source)
    provenance = Interpolator(locator, os.environ if env is None else env,
                              secrets if secrets is not None else SecretResolver(base_dir))
    data = YamlLoader(locator, provenance).load(text)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where(source, 1)}the top level must be a mapping of sections "
                          "(providers, projects, detection, ...)")
    try:
        return Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        # ``from None``: the chained ValidationError's text includes input values, i.e. secrets.
        raise ConfigError(Explainer(locator, provenance, Config, PROVIDER_TYPES).explain(e, data)) from None
