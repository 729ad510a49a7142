"""boto3 plumbing shared by the AWS provider: one session, counted calls, and AWS errors as ProviderError.

Member accounts (``assume_role``) do not get a session or clients of their own.  A boto3 session loads its
own copy of every service model it touches (EC2's alone is tens of MB: measured ~60 MB and ~0.45 s per
session with EC2, CloudWatch and GuardDuty clients), so one session per account made memory and start-up
grow with the organization.  Instead one *routed* client per (service, region) serves every member account:
it signs each request with the credentials of the account the calling thread acts for, which
:meth:`Api.call` sets for the duration of the call.  Clients are thread-safe, so workers share them; memory
is bounded by services × regions, whatever the number of accounts.

Every call goes through ``Api.call`` so the provider can report how many requests a run made (Cost
Explorer bills $0.01 per request) and so an AWS error becomes one message a user can act on: the IAM action
that was denied, or the region that failed.  AWS error messages are not echoed for auth failures, since
they carry the caller's ARN; other messages are kept with ARNs and account ids masked.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any

import boto3
import botocore.exceptions as bce
import botocore.session
from botocore import xform_name
from botocore.config import Config as BotoConfig
from botocore.credentials import CredentialProvider, Credentials, ReadOnlyCredentials

from costwatch.errors import ProviderError

# IAM action prefix per boto3 service name (CloudWatch signs as "monitoring" but IAM says "cloudwatch")
IAM_PREFIX = {"ce": "ce", "organizations": "organizations", "ec2": "ec2", "cloudwatch": "cloudwatch",
              "sts": "sts", "guardduty": "guardduty"}
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
                          "UnauthorizedAccess", "OptInRequired"})
CREDENTIAL_CODES = frozenset({"AuthFailure", "UnrecognizedClientException", "InvalidClientTokenId",
                              "ExpiredToken", "ExpiredTokenException", "SignatureDoesNotMatch",
                              "InvalidAccessKeyId"})
_ARN = re.compile(r"arn:aws[\w-]*:[^\s'\"]*")
_ACCOUNT = re.compile(r"\b\d{12}\b")
GLOBAL_REGION = "us-east-1"  # Cost Explorer and Organizations answer only here (commercial partition)

_acting = threading.local()  # .creds: the member account's credentials for the call in progress


class _RoutedCredentials(Credentials):
    """Whatever member account the calling thread acts for (:meth:`Api.call` sets it); botocore asks for
    frozen credentials when it signs each request."""

    def __init__(self) -> None:
        super().__init__("routed", "routed", None, method="costwatch-assumed-role")

    def get_frozen_credentials(self) -> ReadOnlyCredentials:
        creds: ReadOnlyCredentials | None = getattr(_acting, "creds", None)
        if creds is None:
            raise bce.NoCredentialsError()
        return creds


class _RoutedProvider(CredentialProvider):
    METHOD = "costwatch-assumed-role"

    def load(self) -> Credentials:
        return _RoutedCredentials()


class Api:
    """A boto3 session plus request counters; clients are made once per (service, region) under a lock and
    shared by worker threads (boto3 clients are thread-safe, sessions are not).  An Api for a member account
    (:meth:`assume`) holds only that account's credentials and uses its root's routed clients."""

    def __init__(self, profile: str | None = None, max_workers: int = 8, *, parent: Api | None = None,
                 session: boto3.session.Session | None = None, account: str | None = None,
                 credentials: ReadOnlyCredentials | None = None) -> None:
        self.root: Api = parent.root if parent else self
        self.credentials = credentials  # a member account's (assumed) credentials; None: the session's own
        if session is not None:
            self.session = session
        elif parent is not None:
            self.session = parent.session
        else:
            try:
                self.session = boto3.session.Session(profile_name=profile)
            except bce.ProfileNotFound:
                raise ProviderError(f"aws: profile {profile!r} is not in the AWS config files") from None
        self.config: BotoConfig = parent.config if parent else BotoConfig(
            retries={"mode": "adaptive", "max_attempts": 8}, max_pool_connections=max(10, 2 * max_workers))
        # an assumed-role Api shares its parent's counters, so stats() covers every account
        self.counts: Counter[str] = parent.counts if parent else Counter()
        self._lock: threading.Lock = parent._lock if parent else threading.Lock()
        self._clients: dict[tuple[str, str], Any] = {}
        self._routed: dict[tuple[str, str], Any] = {}
        self._routed_session: boto3.session.Session | None = None
        self.account = account  # None: the caller's own credentials

    def assume(self, account: str, role_name: str) -> Api:
        """An Api acting in ``account`` through ``role_name`` (sts:AssumeRole, one request per run)."""
        arn = f"arn:aws:iam::{account}:role/{role_name}"
        got = self.call(self.client("sts"), "AssumeRole", RoleArn=arn, RoleSessionName="costwatch",
                        DurationSeconds=3600)
        creds = got["Credentials"]
        return Api(parent=self, account=account, credentials=ReadOnlyCredentials(
            str(creds["AccessKeyId"]), str(creds["SecretAccessKey"]), str(creds["SessionToken"])))

    def client(self, service: str, region: str = GLOBAL_REGION) -> Any:
        if self.credentials is not None:
            return self.root._routed_client(service, region)
        key = (service, region)
        with self._lock:
            if key not in self._clients:
                try:
                    self._clients[key] = self.session.client(service, region_name=region, config=self.config)
                except bce.BotoCoreError as e:  # credential_process / SSO failures surface here, not in call()
                    raise ProviderError(f"aws: cannot create the {service} client{_in(region)}: "
                                        f"{type(e).__name__}; check the AWS credential chain (profile, SSO "
                                        "login, environment)") from None
            return self._clients[key]

    def _routed_client(self, service: str, region: str) -> Any:
        """The client every member account shares for (service, region): see the module docstring."""
        key = (service, region)
        with self._lock:
            if key not in self._routed:
                if self._routed_session is None:
                    base = self.session._session  # the same profile settings (endpoints), the same loaded models
                    core = botocore.session.Session(profile=base.profile)
                    core.register_component("data_loader", base.get_component("data_loader"))
                    core.get_component("credential_provider").insert_before("env", _RoutedProvider())
                    self._routed_session = boto3.session.Session(botocore_session=core)
                self._routed[key] = self._routed_session.client(service, region_name=region, config=self.config)
            return self._routed[key]

    def call(self, client: Any, operation: str, *, region: str | None = None, **params: Any) -> dict[str, Any]:
        """Call ``operation`` (API name, e.g. ``GetCostAndUsage``), counting it and translating errors."""
        service = client.meta.service_model.service_name
        action = f"{IAM_PREFIX.get(service, service)}:{operation}"
        with self._lock:
            self.counts[service] += 1
        _acting.creds = self.credentials
        try:
            result: dict[str, Any] = getattr(client, xform_name(operation))(**params)
        except bce.ClientError as e:
            raise translate(e, action, region) from None
        except bce.NoCredentialsError:
            raise ProviderError("aws: no credentials found in the standard chain (environment, profile, "
                                "instance or task role)") from None
        except bce.EndpointConnectionError:
            raise ProviderError(f"aws: cannot reach the endpoint for {action}{_in(region)}") from None
        except bce.BotoCoreError as e:
            raise ProviderError(f"aws: {action}{_in(region)} failed: {type(e).__name__}") from None
        finally:
            _acting.creds = None
        return result


class AwsCallError(ProviderError):
    """A ProviderError that keeps the AWS error code, so callers can fall back (Organizations off)."""

    def __init__(self, message: str, code: str, action: str) -> None:
        super().__init__(message)
        self.code = code
        self.action = action


def _in(region: str | None) -> str:
    return f" in {region}" if region else ""


def translate(e: bce.ClientError, action: str, region: str | None = None) -> AwsCallError:
    err = e.response.get("Error", {})
    code = str(err.get("Code", "") or "Unknown")
    if code in DENIED_CODES:
        msg = (f"aws: access denied for {action}{_in(region)}; grant the IAM action {action} "
               "to the role or user costwatch runs as")
    elif code in CREDENTIAL_CODES:
        msg = f"aws: the credentials were rejected ({code}) calling {action}; check the AWS credential chain"
    else:
        text = _ACCOUNT.sub("<account>", _ARN.sub("<arn>", str(err.get("Message", "") or "")))[:200]
        msg = f"aws: {action}{_in(region)} failed: {code}" + (f": {text}" if text else "")
    return AwsCallError(msg, code, action)
