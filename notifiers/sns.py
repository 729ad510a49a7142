"""Amazon SNS: one ``Publish`` per notification, so owners can fan out to anything AWS offers (SQS, Lambda,
HTTPS, email, chatbots).

* ``Message``: the ``costwatch.notification/v1`` JSON document (the webhook's schema), cut to SNS's 256 KB.
* ``Subject`` (shown by email subscriptions): at most 100 printable ASCII characters, one line.
* ``MessageAttributes`` for subscription filter policies: ``kind``, ``severity``, ``event``, ``project``,
  ``provider``, ``incident``.
* FIFO topics (``….fifo``): ``MessageGroupId`` = the incident (its updates stay in order) and
  ``MessageDeduplicationId`` = the notification id, so a re-send within SNS's 5-minute window is dropped.
  Standard topics are at least once: subscribers dedupe on the message's ``id``.

Throttling and SNS-side errors are transient (retried by the outbox); AuthorizationError, NotFound,
InvalidParameter and KMS errors are permanent and say what to fix.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from costwatch.config import Config, SnsConfig
from costwatch.notify import Delivery, Notification

from .email_render import subject as mail_subject
from .schema import encode, lead, worst_severity

log = logging.getLogger(__name__)

MAX_MESSAGE = 250 * 1024          # SNS: 256 KB for message plus attributes
_PERMANENT = {
    "AuthorizationError": "costwatch may not publish to {arn}: allow sns:Publish on it (and kms:GenerateDataKey/"
                          "kms:Decrypt on its KMS key) for costwatch's role, or fix the topic policy",
    "AuthorizationErrorException": "costwatch may not publish to {arn}: allow sns:Publish on it for costwatch's role",
    "NotFound": "the topic {arn} does not exist (in that account and region); fix notify.sns.topic_arn",
    "NotFoundException": "the topic {arn} does not exist; fix notify.sns.topic_arn",
    "InvalidParameter": "SNS refused the message for {arn}; this is a costwatch bug unless the topic is FIFO with "
                        "content-based deduplication off, please report it",
    "InvalidParameterException": "SNS refused the message for {arn}; please report it",
    "InvalidParameterValue": "SNS refused a value for {arn}; please report it",
    "KMSDisabled": "the topic {arn}'s KMS key is disabled; enable it",
    "KMSDisabledException": "the topic {arn}'s KMS key is disabled; enable it",
    "KMSAccessDenied": "costwatch may not use the topic {arn}'s KMS key; allow kms:GenerateDataKey and kms:Decrypt",
    "KMSAccessDeniedException": "costwatch may not use the topic {arn}'s KMS key; allow kms:GenerateDataKey",
    "KMSNotFound": "the topic {arn}'s KMS key is gone; set another key on the topic",
    "KMSNotFoundException": "the topic {arn}'s KMS key is gone; set another key on the topic",
    "InvalidSecurity": "the request to {arn} was not signed over TLS; check the AWS endpoint",
    "InvalidClientTokenId": "the AWS credentials are not valid; fix costwatch's AWS credentials",
    "UnrecognizedClientException": "the AWS credentials are not valid; fix costwatch's AWS credentials",
    "AccessDenied": "costwatch may not publish to {arn}: allow sns:Publish for costwatch's role",
    "AccessDeniedException": "costwatch may not publish to {arn}: allow sns:Publish for costwatch's role",
}
_CODE = re.compile(r"[A-Za-z][A-Za-z0-9.]{0,63}")


def subject(n: Notification) -> str:
    """At most 100 printable ASCII characters, starting with a letter, number or punctuation."""
    s = mail_subject(n).encode("ascii", "replace").decode("ascii")
    s = re.sub(r"[^\x20-\x7e]", " ", s).strip()
    return (s[:99] + "~" if len(s) > 100 else s) or "costwatch notification"


def _attr(value: Any) -> dict[str, str] | None:
    s = " ".join(str(value or "").split())[:256]
    return {"DataType": "String", "StringValue": s} if s else None


def attributes(n: Notification) -> dict[str, dict[str, str]]:
    a = lead(n)
    raw = {"kind": a.get("kind") or n.event, "severity": worst_severity(n), "event": n.event,
           "project": a.get("project"), "provider": a.get("provider"), "incident": n.group_key,
           "schema": "costwatch.notification/v1"}
    return {k: v for k, v in ((k, _attr(x)) for k, x in raw.items()) if v is not None}


class SnsNotifier:
    name = "sns"

    def __init__(self, topic_arn: str, *, region: str | None = None, client: Any = None) -> None:
        self.topic_arn = topic_arn
        self.region = region or topic_arn.split(":")[3]
        self._client = client
        self._clients: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"SnsNotifier({self.topic_arn!r})"

    def _sns(self, region: str) -> Any:
        if self._client is not None:
            return self._client
        if region not in self._clients:
            import boto3
            from botocore.config import Config as BotoConfig

            # one attempt per publish: the outbox decides retries (and honours throttling)
            self._clients[region] = boto3.client("sns", region_name=region, config=BotoConfig(
                retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=10, read_timeout=20))
        return self._clients[region]

    def notify(self, notifications: list[Notification]) -> list[Delivery]:
        return [self._one(n) for n in notifications]

    def _one(self, n: Notification) -> Delivery:
        from botocore.exceptions import BotoCoreError, ClientError

        arn = n.target.address or self.topic_arn
        region = arn.split(":")[3] if arn.count(":") >= 5 else self.region
        args: dict[str, Any] = {"TopicArn": arn, "Message": encode(n, MAX_MESSAGE).decode("utf-8"),
                                "Subject": subject(n), "MessageAttributes": attributes(n)}
        if arn.endswith(".fifo"):
            args["MessageGroupId"] = re.sub(r"[^A-Za-z0-9!-/:-@\[-`{-~]", "_", n.group_key)[:128]
            args["MessageDeduplicationId"] = n.id
        try:
            resp = self._sns(region).publish(**args)
        except ClientError as e:
            err = e.response.get("Error", {}) if isinstance(e.response, dict) else {}
            code = str(err.get("Code") or "")
            code = code if _CODE.fullmatch(code) else "unknown"
            status = int((e.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
            if code in _PERMANENT:
                d = Delivery(ok=False, permanent=True, error=f"{code}: " + _PERMANENT[code].format(arn=arn))
            elif "Throttl" in code or code in ("TooManyRequestsException", "RequestLimitExceeded") or status == 429:
                d = Delivery(ok=False, retry_after=1.0, error=f"SNS throttled the publish ({code}); will retry")
            elif status >= 500 or code in ("InternalError", "InternalFailure", "ServiceUnavailable",
                                           "KMSThrottling", "KMSThrottlingException"):
                d = Delivery(ok=False, error=f"SNS error {code}; will retry")
            else:
                d = Delivery(ok=False, permanent=status in range(400, 500),
                             error=f"SNS error {code} (HTTP {status})" + ("" if status in range(400, 500)
                                                                           else "; will retry"))
        except BotoCoreError as e:   # no endpoint, no credentials, a timeout: the next run may do better
            d = Delivery(ok=False, error=f"could not reach SNS ({type(e).__name__}); will retry")
        else:
            return Delivery(ok=True, ref=str(resp.get("MessageId") or n.id))
        log.warning("sns: %s not delivered: %s", n.id, d.error)
        return d


def from_config(section: SnsConfig, cfg: Config) -> SnsNotifier:
    return SnsNotifier(section.topic_arn, region=section.region)


__all__ = ["SnsNotifier", "attributes", "from_config", "subject"]
