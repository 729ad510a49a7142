"""google-cloud plumbing shared by the GCP provider: credentials, retries that honour the server's wait hint,
and Google API errors as one ProviderError a user can act on.

Why a retry of our own: the SDKs' default retries either skip throttling (Cloud Billing and Monitoring retry
only UNAVAILABLE / DEADLINE_EXCEEDED) or wait up to ten minutes (BigQuery), and none of them reads the
``Retry-After`` header or gRPC ``RetryInfo`` the server sends with a 429 / RESOURCE_EXHAUSTED.  An hourly run
should wait what the server asks, within a bounded deadline, and then say plainly that it was throttled.

Errors never echo Google's message for authentication failures (it can name the caller) and never include
credentials: only the API, what was asked for, and the IAM role or command that fixes it.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import google.auth
import google.auth.exceptions as gauth_exc
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, exponential_sleep_generator, retry_target

from costwatch.errors import ProviderError

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
NO_ADC = ("gcp: no Application Default Credentials found; run `gcloud auth application-default login` "
          "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file")
EXPIRED = ("gcp: the credentials were rejected (UNAUTHENTICATED) calling {what}; they may be expired or "
           "revoked: run `gcloud auth application-default login` again or check GOOGLE_APPLICATION_CREDENTIALS")
# the least role that lets costwatch make each kind of call, named in "permission denied" errors
ROLES = {
    "bigquery": "roles/bigquery.jobUser on the query project and roles/bigquery.dataViewer on the export dataset",
    "billing": "roles/billing.viewer on the billing account",
    "monitoring": "roles/monitoring.viewer on the project",
}
THROTTLED = (gexc.TooManyRequests, gexc.ServiceUnavailable, gexc.InternalServerError, gexc.BadGateway,
             gexc.DeadlineExceeded)
# BigQuery answers quota trouble with 403 and a reason rather than with 429
THROTTLE_REASONS = frozenset({"rateLimitExceeded", "backendError", "internalError", "badGateway"})
MAX_HINT = 300.0  # never wait longer than this for one Retry-After


def default_credentials() -> tuple[Any, str | None]:
    """Application Default Credentials and their project; a clear error instead of google-auth's essay."""
    try:
        creds, project = google.auth.default(scopes=list(SCOPES))
    except gauth_exc.DefaultCredentialsError:
        raise ProviderError(NO_ADC) from None
    return creds, project


def _reason(exc: BaseException) -> str | None:
    """The first structured error reason (BigQuery's ``errors[0].reason`` or an ErrorInfo reason)."""
    errs = getattr(exc, "errors", None) or []
    first = errs[0] if errs else None
    if isinstance(first, dict) and first.get("reason"):
        return str(first["reason"])
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else None


def is_throttled(exc: BaseException) -> bool:
    """Worth retrying: throttling, or a transient server-side failure."""
    if isinstance(exc, THROTTLED):
        return True
    if isinstance(exc, gexc.Forbidden):
        return _reason(exc) in THROTTLE_REASONS
    return isinstance(exc, gauth_exc.TransportError | ConnectionError)


def server_delay(exc: BaseException) -> float:
    """Seconds the server asked us to wait: HTTP ``Retry-After`` (seconds or a date) or ``RetryInfo``."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    if value:
        text = str(value).strip()
        try:
            return max(0.0, float(text))
        except ValueError:
            when = email.utils.parsedate_to_datetime(text) if text else None
            if when is not None:
                now = dt.datetime.now(when.tzinfo or dt.UTC)
                return max(0.0, (when - now).total_seconds())
    for d in getattr(exc, "details", None) or []:
        if isinstance(d, dict) and d.get("@type", "").endswith("google.rpc.RetryInfo"):
            m = re.fullmatch(r"([\d.]+)s", str(d.get("retryDelay", "")))
            if m:
                return float(m.group(1))
        delay = getattr(d, "retry_delay", None)
        if delay is not None and hasattr(delay, "seconds"):
            return float(delay.seconds) + float(getattr(delay, "nanos", 0)) / 1e9
    return 0.0


class HintedRetry(Retry):
    """api_core's Retry with exponential backoff, where a server's wait hint lengthens the next sleep.

    ``retry_target`` draws the next sleep only after calling ``on_error``, so the hint of the error just seen
    can shape it.  Subclassing keeps ``with_deadline`` and friends working, since the SDKs call them."""

    def __call__(self, func: Callable[..., Any], on_error: Callable[[Exception], Any] | None = None,
                 ) -> Callable[..., Any]:
        user_on_error = self._on_error or on_error

        @functools.wraps(func)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            hint = [0.0]

            def note(exc: Exception) -> None:
                hint[0] = min(server_delay(exc), MAX_HINT)
                if user_on_error is not None:
                    user_on_error(exc)

            def sleeps() -> Iterator[float]:
                for s in exponential_sleep_generator(self._initial, self._maximum, multiplier=self._multiplier):
                    yield max(s, hint[0])

            return retry_target(functools.partial(func, *args, **kwargs), self._predicate, sleeps(),
                                timeout=self._timeout, on_error=note)

        return wrapped


class Calls:
    """Request and throttling counters for stats(), shared by worker threads."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def retry(self, api: str, *, initial: float, deadline: float) -> HintedRetry:
        """A retry for ``api`` that counts every throttled attempt as ``<api>_throttled``."""
        return HintedRetry(predicate=is_throttled, initial=initial, maximum=max(initial, 32.0), multiplier=2.0,
                           timeout=deadline, on_error=lambda _e: self.add(f"{api}_throttled"))


def translate(exc: BaseException, api: str, what: str) -> ProviderError:
    """A Google API error as a ProviderError saying what to do; ``what`` names the call and its target."""
    if isinstance(exc, gexc.RetryError):
        cause = exc.cause
        if cause is not None and is_throttled(cause):
            return ProviderError(f"gcp: {what} was still throttled or failing ({_code(cause)}) after retrying; "
                                 f"try again later, or raise the {api} API quota for the project")
        return translate(cause, api, what) if cause is not None else ProviderError(f"gcp: {what} failed")
    if isinstance(exc, gexc.Unauthorized | gauth_exc.RefreshError):
        return ProviderError(EXPIRED.format(what=what))
    if isinstance(exc, gauth_exc.DefaultCredentialsError):
        return ProviderError(NO_ADC)
    if isinstance(exc, gexc.Forbidden):
        reason = _reason(exc) or ""
        if is_throttled(exc) or reason in {"quotaExceeded", "RATE_LIMIT_EXCEEDED"}:
            return ProviderError(f"gcp: {what} was refused for quota ({reason}); try again later, or raise "
                                 f"the {api} API quota")
        if reason in {"accessNotConfigured", "SERVICE_DISABLED"}:
            return ProviderError(f"gcp: the {api} API is not enabled for {what}; enable it in the project "
                                 "(gcloud services enable)")
        if reason == "billingNotEnabled":
            return ProviderError(f"gcp: {what} needs billing enabled on the query project")
        return ProviderError(f"gcp: permission denied for {what}; grant {ROLES.get(api, 'the needed role')} "
                             "to the account costwatch runs as")
    if isinstance(exc, gexc.GoogleAPICallError):
        if is_throttled(exc):
            return ProviderError(f"gcp: {what} was throttled or failing ({_code(exc)}); try again later")
        return ProviderError(f"gcp: {what} failed: {_code(exc)}" + (f": {_message(exc)}" if _message(exc) else ""))
    if isinstance(exc, gauth_exc.TransportError | ConnectionError):
        return ProviderError(f"gcp: cannot reach the {api} API for {what}: {type(exc).__name__}")
    return ProviderError(f"gcp: {what} failed: {type(exc).__name__}")


def _code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    name = getattr(getattr(exc, "grpc_status_code", None), "name", None)
    return " ".join(str(p) for p in (code, name) if p) or type(exc).__name__


_URL = re.compile(r"^(GET|POST|PUT|PATCH|DELETE) \S+: ")
_TOKENS = re.compile(r"(ya29\.|Bearer\s+)\S+")


def _message(exc: BaseException) -> str:
    """Google's message, without the request URL the REST clients prepend, tokens masked, kept short."""
    text = str(getattr(exc, "message", "") or "")
    return _TOKENS.sub("<redacted>", _URL.sub("", text)).strip()[:240]
