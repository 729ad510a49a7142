"""The gcp provider: daily spend from the Cloud Billing export in BigQuery and hourly VM / GKE-node CPU from
Cloud Monitoring, via the Google Cloud SDKs.

Costs (``fetch_costs``) come from one cached, parameterized, partition-filtered BigQuery query per fetch
window (see ``billing``); the projects whose CPU is read come from config ``projects``, else from the billing
account's project list (Cloud Billing, see ``projects``), else from the projects seen in the costs; usage
(``fetch_usage``) from Cloud Monitoring, every project in parallel (see ``monitoring``).  ``stats()`` reports
the queries, result pages and bytes BigQuery processed (what the queries cost), the requests per API, and
the projects that failed or have billing disabled.

Credentials are Application Default Credentials.  Tests and emulators pass ``credentials`` (e.g.
``AnonymousCredentials()``) with ``endpoints`` (``bigquery``, ``billing``, ``monitoring``; an ``http://``
monitoring endpoint is reached over an insecure gRPC channel), or ready-made clients.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from costwatch.errors import ProviderError
from costwatch.model import ScopeFailure, empty_costs, empty_usage
from costwatch.providers._daycache import DayCache, day_range, fetch_clock
from costwatch.providers._daycache import default_cache_path as _cache_path

from . import monitoring
from ._api import Calls, default_credentials
from .billing import BillingExport, costs_frame
from .projects import ProjectBilling, list_projects

__all__ = ["GcpProvider", "from_config"]

DEFAULT_CACHE_NAME = "gcp-cache.db"


def _now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


class GcpProvider:
    """Costs of every project billed to the export's billing account; CPU of the projects resolved as above."""

    def __init__(self, *, name: str = "gcp", cache_path: str | Path, billing_account: str | None = None,
                 billing_table: str | None = None, export: str = "standard", bigquery_project: str | None = None,
                 projects: list[str] | None = None, restate_days: int = 3, owner_label: str = "owner",
                 cpu: bool = True, max_workers: int = 8, credentials: Any = None,
                 endpoints: dict[str, str] | None = None, bigquery_client: Any = None, billing_client: Any = None,
                 monitoring_client: Any = None, retry_initial: float = 1.0, retry_deadline: float = 120.0,
                 clock: Callable[[], pd.Timestamp] = _now) -> None:
        self.name = name
        self.billing_account = billing_account
        self.billing_table = billing_table
        self.projects = list(projects) if projects else None
        self.restate_days = restate_days
        self.cpu = cpu
        self.max_workers = max_workers
        self.clock = clock
        self.errors: list[str] = []
        self.failures: list[ScopeFailure] = []  # the same failures, structured (provider, scope, what, fix)
        self.notes: list[str] = []
        self.calls = Calls()
        self._credentials = credentials
        self._endpoints = dict(endpoints or {})
        self._clients: dict[str, Any] = {"bigquery": bigquery_client, "billing": billing_client,
                                         "monitoring": monitoring_client}
        self._retry = {api: self.calls.retry(api, initial=retry_initial, deadline=retry_deadline)
                       for api in ("bigquery", "billing", "monitoring")}
        self.export = BillingExport(
            lambda: self._client("bigquery"), table=billing_table, export=export, query_project=bigquery_project,
            cache=DayCache(cache_path, scope=name), restate_days=restate_days, owner_label=owner_label,
            clock=clock, calls=self.calls, retry=self._retry["bigquery"]) if billing_table else None
        self._billed: list[ProjectBilling] | None = None
        self._cost_projects: set[str] = set()
        self._scanned: list[str] = []
        self._nodes = 0

    # ------------------------------------------------------------------------------------------ clients

    def _creds(self) -> Any:
        if self._credentials is None:
            self._credentials = default_credentials()[0]
        return self._credentials

    def _client(self, api: str) -> Any:
        """Made on first use, so a run that needs no BigQuery never asks for credentials for it."""
        if self._clients[api] is None:
            endpoint = self._endpoints.get(api)
            options = {"api_endpoint": endpoint} if endpoint else None
            if api == "bigquery":
                from google.cloud import bigquery

                if self.export is None:
                    raise ProviderError("gcp: BigQuery is only queried with providers.gcp.export set (the billing "
                                        "export table); add it to the config")
                self._clients[api] = bigquery.Client(project=self.export.query_project, credentials=self._creds(),
                                                     client_options=options)
            elif api == "billing":
                from google.cloud import billing_v1

                self._clients[api] = billing_v1.CloudBillingClient(credentials=self._creds(), transport="rest",
                                                                   client_options=options)
            else:
                self._clients[api] = _monitoring_client(endpoint, self._creds)
        return self._clients[api]

    # ------------------------------------------------------------------------------------------ fetch

    def fetch_costs(self, start: pd.Timestamp, end: pd.Timestamp, now: pd.Timestamp | None = None) -> pd.DataFrame:
        """Daily cost rows for [start, end) as of ``now`` (a replay's as_of; see ``fetch_clock``), querying
        BigQuery only for days the cache cannot answer or that were still restating then."""
        if self.export is None:
            self._note("billing_table is not set, so no GCP costs are read; set it to the billing export table")
            return empty_costs()
        today = fetch_clock(now, self.clock).date()
        rows = self.export.daily(day_range(start, end, today), today)
        self._cost_projects |= {str(r["project_id"]) for r in rows
                                if r.get("project_id") and not str(r["project_id"]).startswith("billingAccounts/")}
        return costs_frame(rows, today, self.restate_days)

    def fetch_usage(self, start: pd.Timestamp, end: pd.Timestamp, now: pd.Timestamp | None = None) -> pd.DataFrame:
        """Hourly CPU of every VM and GKE node of the projects up to ``now`` (see ``fetch_clock``); a failed
        project goes to ``stats()["errors"]`` and only a failure of all of them raises."""
        if not self.cpu:
            return empty_usage()
        projects = self._cpu_projects()
        self._scanned = projects
        if not projects:
            return empty_usage()
        results = monitoring.scan(self._client("monitoring"), projects, start, end, fetch_clock(now, self.clock),
                                  calls=self.calls,
                                  retry=self._retry["monitoring"], max_workers=self.max_workers)
        failed = [r for r in results if r.error]
        self.errors += [str(r.error) for r in failed]
        self.failures += [ScopeFailure.from_error(self.name, f"project {r.project}", r.error) for r in failed]
        if failed and len(failed) == len(results):
            raise ProviderError("; ".join(str(r.error) for r in failed[:3])
                                + (f" (and {len(failed) - 3} more projects)" if len(failed) > 3 else ""))
        self._nodes = sum(r.nodes for r in results)
        return monitoring.usage_frame(results, pd.Timestamp(start), pd.Timestamp(end))

    def billed_projects(self) -> list[ProjectBilling] | None:
        """The billing account's projects (once per run), or None without ``billing_account``."""
        if self._billed is None and self.billing_account:
            self._billed = list_projects(self._client("billing"), self.billing_account, self.calls,
                                         self._retry["billing"])
            disabled = [p.project_id for p in self._billed if not p.billing_enabled]
            if disabled:
                self._note(f"billing is disabled for {len(disabled)} project(s) of the billing account, not "
                           f"scanned for CPU: {', '.join(disabled[:10])}" + (" ..." if len(disabled) > 10 else ""))
        return self._billed

    def _cpu_projects(self) -> list[str]:
        """Configured projects, else every billing-enabled project of the account, else those with costs."""
        try:
            billed = self.billed_projects()
        except ProviderError as e:
            if not (self.projects or self._cost_projects):
                raise
            self.errors.append(str(e))
            self.failures.append(ScopeFailure.from_error(self.name, f"billing account {self.billing_account}", e))
            billed = None
        disabled = {p.project_id for p in billed or [] if not p.billing_enabled}
        if self.projects:
            return [p for p in self.projects if p not in disabled]
        if billed is not None:
            return [p.project_id for p in billed if p.billing_enabled]
        if not self._cost_projects:
            self._note("no projects to read CPU from: set `projects` or `billing_account` in the gcp provider")
        return sorted(self._cost_projects)

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def stats(self) -> dict[str, Any]:
        c = self.calls.counts
        return {
            "bigquery_queries": c["bigquery_queries"],
            "bigquery_pages": c["bigquery_pages"],
            "bigquery_bytes_processed": c["bigquery_bytes_processed"],
            "bigquery_days_fetched": c["bigquery_days_fetched"],
            "billing_requests": c["billing_requests"],
            "monitoring_requests": c["monitoring_requests"],
            "throttled_retries": {api: c[f"{api}_throttled"] for api in ("bigquery", "billing", "monitoring")},
            "projects": len(self._scanned),
            "projects_billing_disabled": sum(not p.billing_enabled for p in self._billed or []),
            "nodes": self._nodes,
            "errors": list(self.errors),
            "notes": list(self.notes),
        }


def _monitoring_client(endpoint: str | None, creds: Callable[[], Any]) -> Any:
    """The Monitoring client; ``http://host:port`` means a local server over an insecure gRPC channel (the
    API has no REST transport, and ``api_endpoint`` alone would insist on TLS)."""
    from google.cloud import monitoring_v3

    if endpoint and endpoint.startswith("http://"):
        import grpc
        from google.cloud.monitoring_v3.services.metric_service.transports import MetricServiceGrpcTransport

        channel = grpc.insecure_channel(endpoint.removeprefix("http://"))
        return monitoring_v3.MetricServiceClient(transport=MetricServiceGrpcTransport(channel=channel))
    options = {"api_endpoint": endpoint} if endpoint else None
    return monitoring_v3.MetricServiceClient(credentials=creds(), client_options=options)


def default_cache_path(cfg: Any) -> Path:
    return _cache_path(cfg, DEFAULT_CACHE_NAME)


def from_config(provider_cfg: Any, cfg: Any = None) -> GcpProvider:
    """Registry factory (``type: gcp``)."""
    return GcpProvider(
        name=provider_cfg.name, cache_path=provider_cfg.cache_path or default_cache_path(cfg),
        billing_account=provider_cfg.billing_account, billing_table=provider_cfg.billing_table,
        export=provider_cfg.export, bigquery_project=provider_cfg.bigquery_project, projects=provider_cfg.projects,
        restate_days=provider_cfg.restate_days, owner_label=provider_cfg.owner_label, cpu=provider_cfg.cpu,
        max_workers=provider_cfg.max_workers,
    )
