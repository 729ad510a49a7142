"""A real SMTP server for tests: aiosmtpd in a thread on 127.0.0.1, recording what it receives.

    srv = smtp_server.start(tls="starttls", auth={"alice": "pw"})
    ... send to srv.host, srv.port, trusting srv.client_context() ...
    srv.messages[0].message["Subject"]
    srv.fail("rcpt", "451 4.3.0 try again later")   # the next RCPT gets that reply
    srv.stop(); srv.start()                          # down, then up again on the same port
    srv.stop()

``tls``: "none" (plain), "starttls" (STARTTLS required before MAIL) or "implicit" (TLS from the first byte,
like port 465).  ``auth``: users and passwords; when given, the server requires login.  Certificates are a
throwaway CA plus a server certificate for 127.0.0.1/localhost, made with ``cryptography``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Stage = Literal["mail", "rcpt", "data"]
Tls = Literal["none", "starttls", "implicit"]

__all__ = ["Certs", "Received", "SmtpServer", "free_port", "make_certs", "start"]


@dataclass
class Received:
    """One accepted message, as the server saw it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        msg = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass(frozen=True)
class Certs:
    ca: Path        # trust this on the client
    cert: Path      # server certificate (127.0.0.1, localhost)
    key: Path


def make_certs(directory: Path | None = None) -> Certs:
    """A CA and a server certificate it signed, valid for 127.0.0.1 and localhost for one day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = Path(directory or tempfile.mkdtemp(prefix="costwatch-smtp-"))
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "costwatch test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    out = Certs(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return out


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for "server down" tests, and to restart on a known port)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Handler:
    """Records messages; replies with queued faults instead of 250 when told to."""

    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    def _fault(self, stage: Stage) -> str | None:
        with self.owner._lock:
            queue = self.owner._faults.get(stage)
            return queue.pop(0) if queue else None

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        fault = self._fault("mail")
        if fault:
            return fault
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        refused = self.owner.refused.get(address.lower())
        if refused:
            return refused
        fault = self._fault("rcpt")
        if fault:
            return fault
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = self._fault("data")
        if fault:
            return fault
        data = envelope.original_content or envelope.content or b""
        self.owner.messages.append(Received(
            mail_from=str(envelope.mail_from), rcpt_tos=list(envelope.rcpt_tos),
            data=data if isinstance(data, bytes) else data.encode(),
            tls=session.ssl is not None or self.owner.tls == "implicit",
            login=session.auth_data.decode() if isinstance(session.auth_data, bytes) else session.auth_data))
        with self.owner._lock:
            drop = self.owner._drop_after_data > 0
            self.owner._drop_after_data -= drop
        if drop and server.transport is not None:
            # after the 250 below is written: the client sees success, then a dead connection
            server.loop.call_soon(server.transport.close)
        return "250 Message accepted"


class _Controller(Controller):
    """aiosmtpd's Controller, but port 0 means "any free port" (it would otherwise probe port 0)."""

    def _trigger_server(self) -> None:
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class SmtpServer:
    tls: Tls
    auth: dict[str, str] | None
    host: str
    port: int
    certs: Certs | None
    messages: list[Received] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)   # recipient (lower case) -> reply, e.g. "550 ..."
    logins: list[tuple[str, str, bool]] = field(default_factory=list)  # (user, mechanism, accepted); no password
    _faults: dict[str, list[str]] = field(default_factory=dict)
    _drop_after_data: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: _Controller | None = None

    # -- behaviour

    def fail(self, stage: Stage, reply: str, times: int = 1) -> None:
        """The next ``times`` MAIL/RCPT/DATA commands get ``reply`` (e.g. "451 4.3.0 later", "554 5.7.1 no")."""
        with self._lock:
            self._faults.setdefault(stage, []).extend([reply] * times)

    def refuse(self, address: str, reply: str = "550 5.1.1 mailbox unavailable") -> None:
        """Always refuse this recipient."""
        self.refused[address.lower()] = reply

    def drop_after_data(self, times: int = 1) -> None:
        """Accept the next message, then close the connection (an idle timeout or per-connection limit)."""
        with self._lock:
            self._drop_after_data += times

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts this server's CA (and nothing else)."""
        assert self.certs is not None, "a plain server has no certificate"
        return ssl.create_default_context(cafile=str(self.certs.ca))

    # -- lifecycle

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword) or self.auth is None:
            return AuthResult(success=False, handled=False)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        ok = self.auth.get(user) == password
        self.logins.append((user, mechanism, ok))
        return AuthResult(success=ok, auth_data=user) if ok else AuthResult(success=False, handled=False)

    def start(self) -> SmtpServer:
        """Start (or restart, on the same port) listening."""
        assert self._controller is None, "already running"
        server_ctx = None
        if self.tls != "none":
            assert self.certs is not None
            server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server_ctx.load_cert_chain(str(self.certs.cert), str(self.certs.key))
        kwargs: dict[str, Any] = {"hostname": self.host, "port": self.port, "server_hostname": "costwatch-test",
                                  "ready_timeout": 5.0}
        if self.tls == "implicit":
            kwargs["ssl_context"] = server_ctx
        elif self.tls == "starttls":
            kwargs.update(tls_context=server_ctx, require_starttls=True)
        if self.auth is not None:
            # aiosmtpd only counts STARTTLS as TLS for auth_require_tls, so implicit TLS must turn it off
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=self.tls == "starttls")
        ctl = _Controller(_Handler(self), **kwargs)
        ctl.start()
        self.port = ctl.port
        self._controller = ctl
        return self

    def stop(self) -> None:
        """Stop listening (connections are refused until ``start`` again)."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(*, tls: Tls = "none", auth: dict[str, str] | None = None, port: int = 0, host: str = "127.0.0.1",
          certs: Certs | None = None) -> SmtpServer:
    """A running server; ``port=0`` picks a free one (read ``.port``)."""
    if tls != "none" and certs is None:
        certs = make_certs()
    return SmtpServer(tls=tls, auth=auth, host=host, port=port, certs=certs).start()
