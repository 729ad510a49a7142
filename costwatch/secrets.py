"""Secret references in config values, resolved once when the config is loaded.

Besides ``${ENV_VAR}`` (see ``costwatch.config``), a config string may name where a secret lives:

``${file:/run/secrets/slack_token}``
    The whole file (Docker/Kubernetes secret mounts, systemd credentials), minus trailing newlines.  A
    relative path is taken next to the config file.  Only the file named is read: it must be a regular
    file (not a directory, FIFO or device) of at most 64 KiB, and nothing is globbed or expanded but ``~``.
``${ssm:/costwatch/prod/slack_token}``
    An SSM Parameter Store parameter, decrypted (``ssm:GetParameter``; SecureString also needs
    ``kms:Decrypt`` on its key).  A full parameter ARN works and picks its region; ``name:3`` a version.
``${secretsmanager:costwatch/smtp#password}``
    An AWS Secrets Manager secret (``secretsmanager:GetSecretValue``): the whole ``SecretString``, or with
    ``#key`` one key of a JSON secret.  A full secret ARN works and picks its region.

References are expanded on parsed YAML scalars exactly like ``${ENV_VAR}`` (a value may embed one:
``"Bearer ${file:token}"``), in a single pass: a resolved value is never expanded again, so a secret that
contains ``${file:/etc/shadow}`` stays that text.  There is no ``:-default`` for these: a secret that
cannot be read is a ``ConfigError`` naming the config file, line, key and the reference (never a value),
so ``costwatch check-config`` proves the job can reach its secrets.

Values are held as :class:`pydantic.SecretStr` until the config takes them; in the secret fields
(``notify.slack.token``/``webhook_url``, ``notify.email.password``) they stay ``SecretStr``.  boto3 is
imported only when a config uses ``ssm:`` or ``secretsmanager:``; each reference is fetched once per load,
and botocore's DEBUG logging (which prints response bodies, i.e. the secret) is muted for that call.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from .errors import ConfigError

__all__ = ["MAX_FILE_BYTES", "SCHEMES", "SecretError", "SecretResolver"]

SCHEMES: tuple[str, ...] = ("file", "ssm", "secretsmanager")
MAX_FILE_BYTES = 64 * 1024
_ARN_REGION = re.compile(r"^arn:aws[a-z-]*:(?:ssm|secretsmanager):([a-z0-9-]+):")

log = logging.getLogger("costwatch.secrets")

ClientFactory = Callable[[str, str | None], Any]


class SecretError(ConfigError):
    """A secret reference could not be resolved; the message names the reference and why, never a value."""


class SecretResolver:
    """Resolves ``scheme:reference`` to a ``SecretStr``; one instance per config load (it caches).

    ``client_factory(service, region)`` makes the boto3 clients (default ``boto3.client``), so tests and
    callers with their own session can supply one.  ``base_dir`` anchors relative ``file:`` paths.
    """

    def __init__(self, base_dir: Path | None = None, *, client_factory: ClientFactory | None = None,
                 max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.base_dir = base_dir
        self.max_file_bytes = max_file_bytes
        self._client_factory = client_factory
        self._clients: dict[tuple[str, str | None], Any] = {}
        self._cache: dict[str, SecretStr] = {}
        self._documents: dict[str, SecretStr] = {}  # Secrets Manager: one fetch per secret, whatever #keys

    def __repr__(self) -> str:  # the cache holds SecretStr, but say so plainly: names only
        return f"SecretResolver(resolved={sorted(self._cache)!r})"

    @property
    def resolved(self) -> list[str]:
        """The references resolved so far (``ssm:/x``), for logs and tests; never the values."""
        return sorted(self._cache)

    def resolve(self, scheme: str, ref: str) -> SecretStr:
        key = f"{scheme}:{ref}"
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if not ref.strip():
            raise SecretError("empty reference; write ${" + scheme + ":NAME}")
        if scheme == "file":
            value = self._file(ref)
        elif scheme == "ssm":
            value = self._ssm(ref)
        elif scheme == "secretsmanager":
            value = self._secretsmanager(ref)
        else:
            raise SecretError(f"unknown secret source {scheme!r}; expected one of: {', '.join(SCHEMES)}")
        if value == "":
            raise SecretError("the secret is empty")
        secret = self._cache[key] = SecretStr(value)
        log.debug("secret reference %s resolved", key, extra={"costwatch": {"secret": key}})
        return secret

    # -- file

    def _file(self, ref: str) -> str:
        path = Path(ref).expanduser()
        if not path.is_absolute():
            path = (self.base_dir or Path.cwd()) / path
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise SecretError("file not found") from None
        except IsADirectoryError:
            raise SecretError("is a directory, expected a file holding one secret") from None
        except OSError as e:
            raise SecretError(f"cannot open the file: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise SecretError("is a directory, expected a file holding one secret")
            if not stat.S_ISREG(st.st_mode):
                raise SecretError("is not a regular file (a FIFO, socket or device); name the secret's file")
            if st.st_size > self.max_file_bytes:
                raise SecretError(f"file is larger than {self.max_file_bytes // 1024} KiB; "
                                  "a secret file holds one value")
            with os.fdopen(os.dup(fd), "rb") as fh:
                raw = fh.read(self.max_file_bytes + 1)
        except OSError as e:
            raise SecretError(f"cannot read the file: {e.strerror}") from None
        finally:
            os.close(fd)
        if len(raw) > self.max_file_bytes:
            raise SecretError(f"file is larger than {self.max_file_bytes // 1024} KiB; a secret file holds one value")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SecretError("file is not UTF-8 text") from None
        return text.rstrip("\r\n")

    # -- AWS

    def _client(self, service: str, region: str | None) -> Any:
        key = (service, region)
        if key not in self._clients:
            if self._client_factory is not None:
                self._clients[key] = self._client_factory(service, region)
            else:
                try:
                    import boto3
                except ImportError:
                    raise SecretError(f"reading {service} secrets needs boto3: "
                                      "pip install 'costwatch[aws]'") from None
                try:
                    self._clients[key] = boto3.client(service, region_name=region)
                except Exception as e:  # NoRegionError and friends; their text holds no secret
                    raise SecretError(f"cannot create the {service} client ({type(e).__name__}); "
                                      "set AWS_REGION or use a full ARN") from None
        return self._clients[key]

    def _ssm(self, ref: str) -> str:
        client = self._client("ssm", _region_of(ref))
        with _quiet_botocore():
            try:
                got = client.get_parameter(Name=ref, WithDecryption=True)
            except Exception as e:
                raise SecretError(_aws_reason(e, "ssm:GetParameter (and kms:Decrypt for a SecureString)",
                                              not_found=("ParameterNotFound", "ParameterVersionNotFound"))) from None
        value = got.get("Parameter", {}).get("Value")
        if not isinstance(value, str):
            raise SecretError("the parameter has no value")
        return value

    def _secretsmanager(self, ref: str) -> str:
        name, _, key = ref.partition("#")
        if not name:
            raise SecretError("empty secret name; write ${secretsmanager:NAME} or ${secretsmanager:NAME#key}")
        doc = self._documents.get(name)
        if doc is None:
            doc = self._documents[name] = SecretStr(self._fetch_secret(name))
        text = doc.get_secret_value()
        if not key:
            return text
        return _json_key(text, key)

    def _fetch_secret(self, name: str) -> str:
        client = self._client("secretsmanager", _region_of(name))
        with _quiet_botocore():
            try:
                got = client.get_secret_value(SecretId=name)
            except Exception as e:
                raise SecretError(_aws_reason(e, "secretsmanager:GetSecretValue (and kms:Decrypt for a "
                                                 "customer-managed key)",
                                              not_found=("ResourceNotFoundException",))) from None
        text = got.get("SecretString")
        if text is None and got.get("SecretBinary") is not None:
            try:
                text = bytes(got["SecretBinary"]).decode("utf-8")
            except (UnicodeDecodeError, TypeError):
                raise SecretError("the secret is binary, not UTF-8 text") from None
        if not isinstance(text, str):
            raise SecretError("the secret has no value")
        return text


def _json_key(text: str, key: str) -> str:
    """One key of a JSON object secret (as Secrets Manager's console writes key/value secrets)."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise SecretError(f"'#{key}' needs a JSON object secret, and this one is not; drop '#{key}' "
                          "to use the whole secret")
    if key not in doc:
        raise SecretError(f"the secret has no key {key!r}; keys: {', '.join(sorted(map(str, doc))[:20])}")
    value = doc[key]
    if isinstance(value, dict | list) or value is None:
        raise SecretError(f"key {key!r} holds {type(value).__name__}, expected a string")
    return value if isinstance(value, str) else json.dumps(value)


def _region_of(ref: str) -> str | None:
    m = _ARN_REGION.match(ref)
    return m.group(1) if m else None


def _aws_reason(e: Exception, action: str, *, not_found: tuple[str, ...]) -> str:
    """Why an AWS call failed, from the error code and type only: AWS messages are not quoted verbatim."""
    code = ""
    resp = getattr(e, "response", None)
    if isinstance(resp, dict):
        code = str(resp.get("Error", {}).get("Code", ""))
    if code in not_found:
        return "not found (check the name and the region)"
    if code in ("AccessDeniedException", "AccessDenied", "UnauthorizedOperation") or "AccessDenied" in code:
        return f"access denied; grant {action} on it"
    if code in ("InvalidKeyId", "KMSAccessDeniedException", "DecryptionFailure", "DecryptionFailureException"):
        return f"cannot decrypt ({code}); grant kms:Decrypt on the secret's key"
    name = type(e).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return "no AWS credentials (run with a role, a profile, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
    if name == "NoRegionError":
        return "no AWS region (set AWS_REGION, or use the full ARN)"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"):
        return f"AWS is unreachable ({name})"
    return f"{code or name}"


# botocore logs request parameters and response bodies at DEBUG, and a response body is the secret.  The
# filter drops records below WARNING from these loggers, only in the thread fetching a secret.
_MUTE = threading.local()
_MUTED_PREFIXES = ("botocore", "boto3", "urllib3", "s3transfer")
# created here if botocore has not yet, so the filter is on them before the first call logs anything
_ALWAYS_MUTED = ("botocore.parsers", "botocore.endpoint", "botocore.hooks", "botocore.httpsession",
                 "botocore.retryhandler", "botocore.response", "urllib3.connectionpool")


class _MuteFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_MUTE, "on", False) and record.levelno < logging.WARNING)


_FILTER = _MuteFilter()


@contextmanager
def _quiet_botocore() -> Iterator[None]:
    names = {n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] in _MUTED_PREFIXES}
    loggers = [logging.getLogger(n) for n in sorted(names | set(_ALWAYS_MUTED))]
    for lg in loggers:
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)
    _MUTE.on = True
    try:
        yield
    finally:
        _MUTE.on = False
