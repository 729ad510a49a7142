"""Azure plumbing shared by the provider: one credential, SDK clients on one endpoint, counted requests, and
Azure errors as ProviderError messages a user can act on.

Every request goes through the same azure-core pipeline (bearer token, retries honouring ``Retry-After``), with
two extra policies: one counts the HTTP requests per API (``stats()``; throttled answers too), the other
refuses to send the bearer token to any host but the configured endpoint, since paging follows ``nextLink``
URLs taken from response bodies.  Error messages name the RBAC role that is missing and never carry the token
or the caller's object id.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline import policies as core_policies
from azure.core.rest import HttpRequest
from azure.mgmt.core import ARMPipelineClient
from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy, ARMHttpLoggingPolicy

from costwatch.errors import ProviderError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.mgmt.consumption import ConsumptionManagementClient
    from azure.mgmt.costmanagement import CostManagementClient
    from azure.mgmt.monitor import MonitorManagementClient

ARM_ENDPOINT = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"
SUBSCRIPTIONS_API = "2022-12-01"
COMPUTE_API = "2024-07-01"
MAX_PAGES = 1000
# the SDK clients below never use their subscription_id for the calls made here (every call names its scope)
UNUSED_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"

ROLE_COST = "Cost Management Reader"
ROLE_MONITOR = "Monitoring Reader"
ROLE_READER = "Reader"
LOGIN_HINT = ("run `az login`, or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET for a service "
              "principal (DefaultAzureCredential also takes managed identity and workload identity)")
DENIED_CODES = frozenset({"AuthorizationFailed", "LinkedAuthorizationFailed", "RBACAccessDenied",
                          "Unauthorized", "AccessDenied", "Forbidden"})
_GUID = re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b")
_ACTION = re.compile(r"action '([\w./*-]+)'")
_RATELIMIT_RETRY = re.compile(r"^x-ms-ratelimit-[\w.-]+-retry-after$", re.IGNORECASE)


def api_of(url: str) -> str:
    """Which Azure API a request URL belongs to, for the request counters."""
    low = urlsplit(url).path.lower()
    for marker, api in (("/microsoft.consumption/", "consumption"), ("/microsoft.costmanagement/", "costmanagement"),
                        ("/microsoft.insights/", "monitor"), ("/microsoft.compute/", "compute")):
        if marker in low:
            return api
    return "arm"


class _Count(core_policies.SansIOHTTPPolicy):
    """Counts every HTTP attempt (retries included: they are what ARM throttles on) and 429 answers."""

    def __init__(self, counts: Counter[str], lock: threading.Lock) -> None:
        self.counts = counts
        self.lock = lock

    def on_request(self, request: PipelineRequest) -> None:
        with self.lock:
            self.counts[api_of(request.http_request.url)] += 1

    def on_response(self, request: PipelineRequest, response: PipelineResponse) -> None:
        if response.http_response.status_code == 429:
            with self.lock:
                self.counts["throttled"] += 1


class _SameHost(core_policies.SansIOHTTPPolicy):
    """Runs before the bearer-token policy: a ``nextLink`` naming another host must not receive the token."""

    def __init__(self, base_url: str) -> None:
        self.netloc = urlsplit(base_url).netloc.lower()

    def on_request(self, request: PipelineRequest) -> None:
        host = urlsplit(request.http_request.url).netloc.lower()
        if host != self.netloc:
            raise ProviderError(f"azure: a response pointed to another host ({host[:80]}); refused to send the "
                                "credential there")


class _Retry(core_policies.RetryPolicy):
    """azure-core's retry, also honouring the ``x-ms-ratelimit-*-retry-after`` headers Cost Management sends on
    429 instead of ``Retry-After``, and retrying the Cost Management query although it is a POST (it only reads;
    azure-core retries POSTs on 5xx only)."""

    def _is_method_retryable(self, settings: dict[str, Any], request: Any, response: Any = None) -> bool:
        if request.method.upper() == "POST" and urlsplit(request.url).path.lower().endswith(
                "/providers/microsoft.costmanagement/query"):
            return True
        return bool(super()._is_method_retryable(settings, request, response))

    def get_retry_after(self, response: PipelineResponse) -> float | None:
        base = super().get_retry_after(response)
        waits = [base] if base else []
        for name, value in response.http_response.headers.items():
            if _RATELIMIT_RETRY.match(name):
                try:
                    waits.append(float(value))
                except ValueError:
                    continue
        return max(waits) if waits else None


class Azure:
    """Credential, endpoint and clients shared by the provider's threads (azure-core clients are thread-safe).

    ``credential`` defaults to a DefaultAzureCredential made on first use, so building the provider (e.g. for
    ``check-config``) never touches the credential chain.  ``client_options`` go to every client (retry_total,
    retry_backoff_factor, connection_verify...)."""

    def __init__(self, credential: TokenCredential | None = None, base_url: str | None = None,
                 client_options: dict[str, Any] | None = None) -> None:
        self._credential = credential
        self.base_url = (base_url or ARM_ENDPOINT).rstrip("/")
        self.options = dict(client_options or {})
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def credential(self) -> TokenCredential:
        with self._lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential()
            return self._credential

    def _kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"retry_total": 6, **self.options}
        kw.update(per_call_policies=[_SameHost(self.base_url)],
                  per_retry_policies=[_Count(self.counts, self._lock)], retry_policy=_Retry(**kw))
        return kw

    def _client(self, key: str, make: Any) -> Any:
        cred = self.credential()
        with self._lock:
            if key not in self._clients:
                self._clients[key] = make(cred)
            return self._clients[key]

    def consumption(self) -> ConsumptionManagementClient:
        from azure.mgmt.consumption import ConsumptionManagementClient

        return self._client("consumption", lambda c: ConsumptionManagementClient(
            c, UNUSED_SUBSCRIPTION, base_url=self.base_url, **self._kwargs()))

    def costmanagement(self) -> CostManagementClient:
        from azure.mgmt.costmanagement import CostManagementClient

        return self._client("costmanagement", lambda c: CostManagementClient(
            c, base_url=self.base_url, **self._kwargs()))

    def monitor(self) -> MonitorManagementClient:
        from azure.mgmt.monitor import MonitorManagementClient

        return self._client("monitor", lambda c: MonitorManagementClient(
            c, UNUSED_SUBSCRIPTION, base_url=self.base_url, **self._kwargs()))

    def arm(self) -> ARMPipelineClient:
        """A bare ARM pipeline for the REST calls no installed SDK covers (subscriptions, VM lists)."""
        return self._client("arm", self._make_arm)

    def _make_arm(self, cred: TokenCredential) -> ARMPipelineClient:
        kw = self._kwargs()
        policies = [
            core_policies.RequestIdPolicy(**kw), core_policies.HeadersPolicy(**kw),
            core_policies.UserAgentPolicy(sdk_moniker="costwatch-azure", **kw), core_policies.ProxyPolicy(**kw),
            core_policies.ContentDecodePolicy(**kw), core_policies.RedirectPolicy(**kw), kw["retry_policy"],
            ARMChallengeAuthenticationPolicy(cred, ARM_SCOPE, **kw), core_policies.NetworkTraceLoggingPolicy(**kw),
            core_policies.DistributedTracingPolicy(**kw), core_policies.SensitiveHeaderCleanupPolicy(**kw),
            ARMHttpLoggingPolicy(**kw),
        ]
        return ARMPipelineClient(self.base_url, policies=policies, **{k: v for k, v in kw.items()
                                                                       if k != "retry_policy"})

    def get(self, url: str) -> dict[str, Any]:
        """GET an ARM URL (absolute, or a path under the endpoint) and return its JSON, raising HttpResponseError
        (ClientAuthenticationError on 401) like the SDK clients do."""
        if url.startswith("/"):
            url = self.base_url + url
        response = self.arm().send_request(HttpRequest("GET", url))
        if response.status_code == 401:
            raise ClientAuthenticationError(response=response)
        if response.status_code >= 400:
            raise HttpResponseError(response=response)
        body = response.json()
        return body if isinstance(body, dict) else {}

    def list_all(self, path: str) -> Iterator[dict[str, Any]]:
        """Every item of an ARM list (``value``), following ``nextLink`` until it is absent."""
        url: str | None = path
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            if not url:
                return
            page = self.get(url)
            yield from (v for v in page.get("value") or [] if isinstance(v, dict))
            url = page.get("nextLink") or None
            if not url:
                return
            if url in seen:
                raise ProviderError("azure: ARM returned the same nextLink twice; stopped to avoid a request loop")
            seen.add(url)
        raise ProviderError(f"azure: more than {MAX_PAGES} pages listing {path.split('?')[0]}")


def _code(e: HttpResponseError) -> str:
    err = getattr(e, "error", None)
    code = getattr(err, "code", None) if err is not None else None
    if not code and e.response is not None:
        try:
            body = cast(Any, e.response).json()
            code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
        except Exception:
            code = None
    return str(code or "")


def _message(e: HttpResponseError) -> str:
    err = getattr(e, "error", None)
    msg = getattr(err, "message", None) if err is not None else None
    if not msg and e.response is not None:
        try:
            body = cast(Any, e.response).json()
            msg = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        except Exception:
            msg = None
    return str(msg or "")


def translate(e: BaseException, what: str, role: str, subscription: str | None = None) -> ProviderError:
    """An Azure SDK exception as one actionable line: missing role, bad credential, throttling, or the ARM code.

    Credential errors never echo the exception text (it can name the identity); other messages are cut short
    with object ids masked."""
    if isinstance(e, ProviderError):
        return e
    on = f" on subscription {subscription}" if subscription else ""
    if isinstance(e, ClientAuthenticationError):
        if e.status_code == 401:
            code = _code(e)
            return ProviderError(f"azure: the credential was rejected{f' ({code})' if code else ''} calling {what}"
                                 f"; {LOGIN_HINT}")
        return ProviderError(f"azure: no usable Azure credential for {what}; {LOGIN_HINT}")
    if isinstance(e, HttpResponseError):
        status, code = e.status_code, _code(e)
        if status == 403 or code in DENIED_CODES:
            action = _ACTION.search(_message(e))
            act = f" ({action.group(1)})" if action else ""
            return ProviderError(f"azure: access denied for {what}{on}{act}; assign the '{role}' role on the "
                                 "subscription to the identity costwatch runs as")
        if status == 429:
            return ProviderError(f"azure: {what}{on} is still throttled (HTTP 429) after retries; it is retried on "
                                 "the next run")
        if code in ("SubscriptionNotFound", "InvalidSubscriptionId"):
            return ProviderError(f"azure: subscription {subscription} was not found or is not visible to the "
                                 f"credential; check the id and assign '{role}' on it")
        text = _GUID.sub("<id>", _message(e).replace(subscription or "\0", "<subscription>"))[:160]
        return ProviderError(f"azure: {what}{on} failed: HTTP {status}{f' {code}' if code else ''}"
                             + (f": {text}" if text else ""))
    if isinstance(e, ServiceRequestError | ServiceResponseError):
        return ProviderError(f"azure: cannot reach Azure Resource Manager for {what}{on} ({type(e).__name__}); "
                             "check the network or proxy")
    if isinstance(e, AzureError):
        return ProviderError(f"azure: {what}{on} failed: {type(e).__name__}")
    return ProviderError(f"azure: {what}{on} failed: {type(e).__name__}")
