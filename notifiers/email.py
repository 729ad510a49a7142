"""Email notifier: the same MIME message over SMTP (STARTTLS, implicit TLS, optional login) or Amazon SES.

Why it is shaped like this:

* It tries each notification once and classifies the outcome (``Delivery``); the outbox decides about
  retries.  A failure a retry can fix (server down, timeout, 4xx reply, SES throttling) is transient; one
  it cannot (bad password, 5xx reply, certificate mismatch, unverified SES sender) is permanent and its
  ``error`` says which setting to fix.
* One SMTP connection serves the whole ``notify`` call.  A server that drops a reused connection (idle
  timeout, per-connection message limit) gets one reconnect for that message.  A failure to connect or
  log in is reported for every remaining notification without trying again: ten notifications to a dead
  server must not cost ten timeouts, and ten wrong-password logins can lock the account.
* Message-IDs are derived from the notification id, so a resend after a crash is the same message and
  mail clients collapse it.  SES replaces Message-ID with its own, so for SES the reference we return
  (and later thread under) is the one SES put on the mail.
* Secrets (SMTP password, AWS keys) never reach an error, a log line or a Delivery: our messages are built
  from codes and server replies, scrubbed of the secret in every encoding it travels in, and smtplib's
  debug output (which prints the AUTH exchange) is never enabled.

Partial delivery: when the server accepts some recipients and refuses others, the message went out, so
the delivery is ``ok`` (retrying would mail the accepted recipients again) and ``error`` lists the refused
addresses with the server's reply so the owner entry can be fixed.
"""

from __future__ import annotations

import base64
import logging
import smtplib
import socket
import ssl
from dataclasses import dataclass, replace
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any

from costwatch.config import Config, EmailConfig
from costwatch.errors import ConfigError
from costwatch.notify import Delivery, Notification

from .email_render import build_message, clean, message_id, msgid_domain, parse_addresses

log = logging.getLogger(__name__)

_AUTH_CODES = {530, 534, 535, 538}
_SES_TRANSIENT = {"Throttling", "ThrottlingException", "ServiceUnavailable", "ServiceUnavailableException",
                  "InternalFailure", "InternalError", "RequestTimeout", "RequestTimeoutException",
                  "ExpiredToken", "ExpiredTokenException", "RequestExpired", "TooManyRequestsException"}
_SES_CREDENTIALS = {"AccessDenied", "AccessDeniedException", "UnrecognizedClientException",
                    "InvalidClientTokenId", "SignatureDoesNotMatch", "MissingAuthenticationToken",
                    "NotAuthorized"}


class _Secrets:
    """Removes known secrets from text, in the encodings they travel in (AUTH LOGIN/PLAIN are base64)."""

    def __init__(self, values: list[str | None], username: str | None = None) -> None:
        forms: set[str] = set()
        for v in values:
            if not v:
                continue
            forms.add(v)
            forms.add(base64.b64encode(v.encode()).decode())
            if username is not None:
                forms.add(base64.b64encode(f"\0{username}\0{v}".encode()).decode())
        self.forms = sorted((f for f in forms if len(f) >= 4), key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for f in self.forms:
            text = text.replace(f, "***")
        return text


def _reply(code: int, text: bytes | str) -> str:
    """A server reply as ``550 5.1.1 no such user``: one line, bounded, safe to store."""
    t = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    return clean(f"{code} {t}", 240)


def _timed_out(e: BaseException) -> bool:
    """smtplib turns a socket timeout while reading a reply into SMTPServerDisconnected; look underneath."""
    return isinstance(e, TimeoutError) or isinstance(e.__context__, TimeoutError)


def _transient(error: str, retry_after: float | None = None) -> Delivery:
    return Delivery(ok=False, permanent=False, error=error, retry_after=retry_after)


def _permanent(error: str) -> Delivery:
    return Delivery(ok=False, permanent=True, error=error)


@dataclass
class _Prepared:
    msg: EmailMessage
    msgid: str
    rcpts: list[str]
    note: str = ""   # recipients we dropped as invalid, appended to a successful delivery's error


# ----------------------------------------------------------------------------------------------- SMTP


class _SmtpSession:
    """One lazily opened SMTP connection for one ``notify`` call."""

    def __init__(self, cfg: EmailConfig, context: ssl.SSLContext, secrets: _Secrets) -> None:
        self.cfg = cfg
        self.context = context
        self.secrets = secrets
        self.conn: smtplib.SMTP | None = None
        self.broken: Delivery | None = None   # connect/TLS/login failed: same answer for the rest of the call
        self.where = f"{cfg.smtp_host}:{cfg.smtp_port}"

    def deliver(self, p: _Prepared, sender: str) -> Delivery:
        if self.broken is not None:
            return replace(self.broken)  # a copy: callers may annotate their own
        for attempt in (0, 1):
            fresh = self.conn is None
            if self.conn is None:
                failure = self._open()
                if failure is not None:
                    self.broken = failure
                    return failure
            conn = self.conn
            if conn is None:  # _open reported no failure but left no connection: retry later, never crash
                return _transient(f"SMTP {self.where}: no connection after connecting; will retry")
            try:
                refused = conn.send_message(p.msg, from_addr=sender, to_addrs=p.rcpts)
            except smtplib.SMTPRecipientsRefused as e:
                self._drop_if_closed()
                return self._all_refused(e.recipients)
            except smtplib.SMTPResponseException as e:
                self._drop_if_closed()
                return self._send_reply_failure(e, sender)
            except (smtplib.SMTPServerDisconnected, ConnectionResetError, BrokenPipeError) as e:
                self._drop()
                if _timed_out(e):
                    return _transient(f"SMTP {self.where} did not answer within {self.cfg.timeout:g}s while "
                                      "sending; will retry")
                if fresh or attempt:
                    return _transient(f"SMTP {self.where} closed the connection while sending "
                                      f"({self._safe(e)}); will retry")
                log.debug("email: %s dropped a reused connection; reconnecting once", self.where)
                continue
            except TimeoutError:
                self._drop()
                return _transient(f"SMTP {self.where} did not answer within {self.cfg.timeout:g}s while sending; "
                                  "will retry")
            except smtplib.SMTPNotSupportedError as e:
                return _permanent(f"SMTP {self.where} cannot take this message ({self._safe(e)}); use ASCII "
                                  "addresses or a server that offers SMTPUTF8")
            except (smtplib.SMTPException, OSError) as e:
                self._drop()
                return _transient(f"SMTP {self.where} failed while sending ({type(e).__name__}: "
                                  f"{self._safe(e)}); will retry")
            return self._accepted(p, refused)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- outcomes

    def _accepted(self, p: _Prepared, refused: dict[str, tuple[int, bytes]]) -> Delivery:
        notes = []
        if refused:
            lst = "; ".join(f"{clean(a, 80)} ({_reply(c, m)})" for a, (c, m) in refused.items())
            notes.append(f"delivered to {len(p.rcpts) - len(refused)} of {len(p.rcpts)} recipients; the server "
                         f"refused {self.secrets.scrub(lst)}: check those addresses")
        if p.note:
            notes.append(p.note)
        return Delivery(ok=True, ref=p.msgid, error="; ".join(notes) or None)

    def _all_refused(self, recipients: dict[str, tuple[int, bytes]]) -> Delivery:
        lst = self.secrets.scrub("; ".join(f"{clean(a, 80)} ({_reply(c, m)})" for a, (c, m) in recipients.items()))
        if all(400 <= c < 500 for c, _ in recipients.values()):
            return _transient(f"SMTP {self.where} temporarily refused every recipient: {lst}; will retry")
        if any(c in _AUTH_CODES for c, _ in recipients.values()):
            return _permanent(f"SMTP {self.where} refused the recipients without login: {lst}; set "
                              "notify.email.username/password (the server does not relay for anonymous senders)")
        return _permanent(f"SMTP {self.where} refused every recipient: {lst}; check the addresses "
                          "(the owner's email or notify.email.to)")

    def _send_reply_failure(self, e: smtplib.SMTPResponseException, sender: str) -> Delivery:
        reply = self.secrets.scrub(_reply(e.smtp_code, e.smtp_error))
        if 400 <= e.smtp_code < 500:
            return _transient(f"SMTP {self.where} answered {reply} (temporary); will retry")
        if isinstance(e, smtplib.SMTPSenderRefused):
            if e.smtp_code in _AUTH_CODES:
                return _permanent(f"SMTP {self.where} requires login ({reply}): set notify.email.username/password")
            return _permanent(f"SMTP {self.where} refused the sender {clean(sender, 80)} ({reply}): check "
                              "notify.email.from_addr is allowed to send through this server")
        if e.smtp_code == 552:
            return _permanent(f"SMTP {self.where} refused the message as too large ({reply})")
        return _permanent(f"SMTP {self.where} rejected the message ({reply}); it will not be retried")

    # -- connection

    def _open(self) -> Delivery | None:
        """Connect, TLS, login; None on success, else the classified failure."""
        cfg, host = self.cfg, str(self.cfg.smtp_host)
        stage = "connect"
        conn: smtplib.SMTP | None = None
        try:
            if cfg.ssl:
                conn = smtplib.SMTP_SSL(host, cfg.smtp_port, timeout=cfg.timeout, context=self.context)
            else:
                conn = smtplib.SMTP(host, cfg.smtp_port, timeout=cfg.timeout)
                if cfg.starttls:
                    stage = "STARTTLS"
                    conn.ehlo()
                    conn.starttls(context=self.context)
                    conn.ehlo()
            if cfg.username and cfg.password is not None:
                stage = "login"
                conn.login(cfg.username, cfg.password.get_secret_value())
        except Exception as e:  # classified below; anything unforeseen is reported, never raised
            if conn is not None:
                conn.close()
            return self._open_failure(e, stage)
        self.conn = conn
        return None

    def _open_failure(self, e: Exception, stage: str) -> Delivery:
        cfg, where = self.cfg, self.where
        if isinstance(e, ssl.SSLCertVerificationError):
            return _permanent(f"SMTP {where}: the server's TLS certificate failed verification "
                              f"({clean(e.verify_message, 120)}): check notify.email.smtp_host is the name on the "
                              "certificate, or install the issuing CA in the system trust store")
        if isinstance(e, ssl.SSLEOFError):
            return _transient(f"SMTP {where}: the TLS handshake was cut off; will retry")
        if isinstance(e, ssl.SSLError):
            return _permanent(f"SMTP {where}: TLS failed ({clean(e.reason or e, 120)}): check notify.email.ssl / "
                              "starttls match the port (465: ssl: true; 587: starttls: true)")
        if isinstance(e, smtplib.SMTPAuthenticationError):
            reply = self.secrets.scrub(_reply(e.smtp_code, e.smtp_error))
            if 400 <= e.smtp_code < 500:
                return _transient(f"SMTP {where}: login temporarily failed ({reply}); will retry")
            return _permanent(f"SMTP {where}: login as {clean(cfg.username, 80)} refused ({reply}): check "
                              "notify.email.username/password")
        if isinstance(e, smtplib.SMTPNotSupportedError):
            if stage == "STARTTLS":
                return _permanent(f"SMTP {where} does not offer STARTTLS: use ssl: true on its implicit-TLS port "
                                  "(465), or set starttls: false only for a relay on a trusted network")
            return _permanent(f"SMTP {where} offers no login on this connection: enable starttls or ssl, or "
                              "remove notify.email.username/password")
        if isinstance(e, smtplib.SMTPResponseException):  # SMTPConnectError (greeting), SMTPHeloError
            reply = self.secrets.scrub(_reply(e.smtp_code, e.smtp_error))
            if 400 <= e.smtp_code < 500:
                return _transient(f"SMTP {where} answered {reply} during {stage} (temporary); will retry")
            return _permanent(f"SMTP {where} answered {reply} during {stage}: check the server settings")
        if _timed_out(e):
            hint = " (port 465 expects ssl: true)" if cfg.smtp_port == 465 and not cfg.ssl else ""
            return _transient(f"SMTP {where} did not answer within {cfg.timeout:g}s during {stage}{hint}; will retry")
        if isinstance(e, smtplib.SMTPServerDisconnected):
            return _transient(f"SMTP {where} closed the connection during {stage}; will retry")
        if isinstance(e, ConnectionRefusedError):
            return _transient(f"SMTP {where} refused the connection (server down or wrong port); will retry")
        if isinstance(e, socket.gaierror):
            return _transient(f"SMTP host {clean(cfg.smtp_host, 120)} could not be resolved ({clean(e, 120)}); "
                              "check notify.email.smtp_host; will retry")
        if isinstance(e, smtplib.SMTPException):
            return _permanent(f"SMTP {where} failed during {stage}: {self._safe(e)}")
        if isinstance(e, OSError):
            return _transient(f"SMTP {where}: {type(e).__name__} during {stage} ({self._safe(e)}); will retry")
        log.warning("email: unexpected %s during SMTP %s", type(e).__name__, stage)
        return _transient(f"SMTP {where}: unexpected {type(e).__name__} during {stage}; will retry")

    def _safe(self, e: BaseException) -> str:
        return self.secrets.scrub(clean(e, 200))

    def _drop_if_closed(self) -> None:
        if self.conn is not None and getattr(self.conn, "sock", None) is None:  # smtplib closes after a 421
            self.conn = None

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None

    def close(self) -> None:
        if self.conn is None:
            return
        try:
            self.conn.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            self.conn.close()
            self.conn = None


# ------------------------------------------------------------------------------------------------ SES


def ses_message_id(ses_id: str, region: str) -> str:
    """The Message-ID SES puts on the mail it sends (it replaces ours), so replies can thread under it.

    The domain is ``email.amazonses.com`` in us-east-1 and ``<region>.amazonses.com`` elsewhere; AWS does not
    document it as a contract, so if it changes only threading degrades, never delivery."""
    domain = "email.amazonses.com" if region == "us-east-1" else f"{region}.amazonses.com"
    return f"<{clean(ses_id, 120)}@{domain}>"


class _SesSender:
    """``ses:SendRawEmail`` with the SDK's retries off: retrying is the outbox's job."""

    def __init__(self, cfg: EmailConfig) -> None:
        import boto3  # noqa: F401  (fail at startup, through the registry's "install the extra" message)

        self.cfg = cfg
        self.client: Any = None
        self.secrets = _Secrets([])
        self.broken: Delivery | None = None

    def _connect(self) -> Delivery | None:
        import boto3
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import BotoCoreError

        try:
            session = boto3.session.Session()
            creds = session.get_credentials()
            if creds is not None:
                frozen = creds.get_frozen_credentials()
                self.secrets = _Secrets([frozen.secret_key, frozen.token, frozen.access_key])
            conf = BotoConfig(connect_timeout=self.cfg.timeout, read_timeout=self.cfg.timeout,
                              retries={"mode": "standard", "total_max_attempts": 1})
            self.client = session.client("ses", region_name=self.cfg.ses_region, config=conf)
        except BotoCoreError as e:
            return self._sdk_failure(e)
        return None

    def deliver(self, p: _Prepared, sender: str) -> Delivery:
        from botocore.exceptions import BotoCoreError, ClientError

        if self.broken is not None:
            return replace(self.broken)  # a copy: callers may annotate their own
        if self.client is None:
            failure = self._connect()
            if failure is not None:
                self.broken = failure
                return failure
        try:
            resp = self.client.send_raw_email(Source=sender, Destinations=p.rcpts,
                                              RawMessage={"Data": p.msg.as_bytes()})
        except ClientError as e:
            return self._client_error(e)
        except BotoCoreError as e:
            d = self._sdk_failure(e)
            self.broken = d
            return d
        ref = ses_message_id(str(resp.get("MessageId", "")), str(self.client.meta.region_name))
        return Delivery(ok=True, ref=ref, error=p.note or None)

    def _client_error(self, e: Any) -> Delivery:
        err = e.response.get("Error", {}) if isinstance(getattr(e, "response", None), dict) else {}
        code = clean(err.get("Code"), 60) or "Unknown"
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        msg = self.secrets.scrub(clean(err.get("Message"), 240))
        region = clean(self.client.meta.region_name, 40)
        said = f"SES ({region}) answered {code}: {msg}"
        if code in _SES_TRANSIENT or (isinstance(status, int) and status >= 500):
            wait = 3600.0 if "daily" in msg.lower() else 1.0 if code.startswith("Throttl") else None
            return _transient(f"{said}; will retry", retry_after=wait)
        if code in _SES_CREDENTIALS:
            d = _permanent(f"{said}; the AWS credentials cannot send through SES: grant ses:SendRawEmail on the "
                           "sender identity to the role or user costwatch runs as")
            self.broken = d
            return d
        if code == "MessageRejected":
            return _permanent(f"{said}; verify notify.email.from_addr (or its domain) in SES {region}, and while "
                              "the account is in the SES sandbox verify the recipients too")
        if code == "MailFromDomainNotVerified":
            return _permanent(f"{said}; finish verifying the custom MAIL FROM domain of the sender in SES {region}")
        if code == "ConfigurationSetDoesNotExist":
            return _permanent(f"{said}; create the configuration set or remove it from the sender identity")
        return _permanent(f"{said}; it will not be retried")

    def _sdk_failure(self, e: Exception) -> Delivery:
        from botocore.exceptions import (
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        text = self.secrets.scrub(clean(e, 200))
        if isinstance(e, NoRegionError):
            return _permanent("SES: no AWS region: set notify.email.ses_region (or AWS_REGION)")
        if isinstance(e, NoCredentialsError | PartialCredentialsError):
            return _permanent(f"SES: no usable AWS credentials ({text}): provide them through the standard AWS "
                              "chain (environment, profile or instance role)")
        if isinstance(e, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | ConnectionClosedError):
            return _transient(f"SES could not be reached ({text}); will retry")
        return _transient(f"SES: {type(e).__name__} ({text}); will retry")


# ------------------------------------------------------------------------------------------- notifier


class EmailNotifier:
    """``notify.email``: one message per notification to its target's addresses (or the config's ``to``).

    ``ssl_context`` replaces the default verifying context (``ssl.create_default_context()``); it exists so
    a test, or a deployment with a private CA, can trust a specific certificate without turning checks off."""

    name = "email"

    def __init__(self, cfg: EmailConfig, *, ssl_context: ssl.SSLContext | None = None) -> None:
        good, bad = parse_addresses([cfg.from_addr])
        if len(good) != 1 or bad:
            raise ConfigError("notify.email.from_addr: not a valid email address")
        self.cfg = cfg
        self.sender: Address = good[0]
        self.domain = msgid_domain(cfg.from_addr)
        self.ssl_context = ssl_context
        password = cfg.password.get_secret_value() if cfg.password is not None else None
        self.secrets = _Secrets([password], cfg.username)
        self._ses = _SesSender(cfg) if cfg.transport == "ses" else None
        if cfg.transport == "smtp" and cfg.username and not (cfg.ssl or cfg.starttls):
            log.warning("notify.email: login without TLS sends the password in clear text; enable starttls or ssl")

    def notify(self, notifications: list[Notification]) -> list[Delivery]:
        session = (None if self._ses is not None else
                   _SmtpSession(self.cfg, self.ssl_context or ssl.create_default_context(), self.secrets))
        out: list[Delivery] = []
        try:
            for n in notifications:
                d = self._scrubbed(self._one(n, session))
                if d.ok:
                    log.info("email: sent %s (%s) to %s", d.ref, n.event, clean(n.target.address or "default", 200))
                else:
                    log.warning("email: %s not delivered (%s): %s", n.id, "permanent" if d.permanent else "transient",
                                d.error)
                out.append(d)
        finally:
            if session is not None:
                session.close()
        return out

    def _scrubbed(self, d: Delivery) -> Delivery:
        """Last line of defence: whatever built ``error``, no known secret leaves the notifier in it."""
        if d.error:
            d.error = self.secrets.scrub(d.error)
            if self._ses is not None:
                d.error = self._ses.secrets.scrub(d.error)
        return d

    def _one(self, n: Notification, session: _SmtpSession | None) -> Delivery:
        p = self._prepare(n)
        if isinstance(p, Delivery):
            return p
        sender = self.sender.addr_spec
        if self._ses is not None:
            return self._ses.deliver(p, sender)
        if session is None:
            return _transient("email: no SMTP session was opened for this batch; will retry")
        return session.deliver(p, sender)

    def _prepare(self, n: Notification) -> _Prepared | Delivery:
        raw = [n.target.address] if n.target.address.strip() else list(self.cfg.to)
        rcpts, bad = parse_addresses(raw)
        bad_txt = ", ".join(bad)[:300]
        if not rcpts:
            why = f"invalid address(es): {bad_txt}" if bad else "no address on the target and notify.email.to is empty"
            return _permanent(f"email: no valid recipient ({why}); fix the owner's email or notify.email.to")
        msgid = message_id(n, self.domain)
        try:
            msg = build_message(n, sender=self.sender, recipients=rcpts, msgid=msgid)
        except Exception as e:  # a rendering bug must cost one notification, not the run
            log.exception("email: could not build the message for %s", n.id)
            return _permanent(f"email: could not build the message ({type(e).__name__}); see the log")
        note = f"skipped invalid address(es): {bad_txt}" if bad else ""
        return _Prepared(msg=msg, msgid=msgid, rcpts=[a.addr_spec for a in rcpts], note=note)


def from_config(section: EmailConfig, cfg: Config) -> EmailNotifier:
    """Registry entry point (``costwatch.notifiers.build``)."""
    return EmailNotifier(section)


__all__ = ["EmailNotifier", "from_config", "ses_message_id"]
