"""The email notifier against real servers: aiosmtpd (plain, STARTTLS, implicit TLS, AUTH, injected 4xx/5xx,
dropped connections, down), SES through moto, and a raw HTTP endpoint answering like SES for the errors moto
cannot produce (throttling, 503, access denied)."""

from __future__ import annotations

import base64
import copy
import json
import logging
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from email.message import EmailMessage, MIMEPart
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import smtp_server
from pydantic import SecretStr
from smtp_server import Certs, SmtpServer

from costwatch.config import Config, EmailConfig
from costwatch.notifiers import build
from costwatch.notifiers.email import EmailNotifier
from costwatch.notify import NEXT_STEPS, RESOLVED_STEPS, Delivery, Notification, Target, notification_id

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

DATA = Path(__file__).parent / "data" / "alerts" / "demo_alerts.json"
SENDER = "costwatch@alerts.example.com"
PASSWORD = "hunter2-Zq9-s3cret"


# -------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return smtp_server.make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def plain() -> Iterator[SmtpServer]:
    with smtp_server.start(tls="none") as srv:
        yield srv


def demo_alerts() -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = json.loads(DATA.read_text())
    return alerts


def mining_alert() -> dict[str, Any]:
    a = copy.deepcopy(demo_alerts()[0])
    a["evidence"]["guardduty"] = [
        {"type": "CryptoCurrency:EC2/BitcoinTool.B!DNS", "severity": 8.0, "node": "vm-worker-01",
         "cluster": None, "first_seen": "2026-11-10T03:20:00Z"}]
    a["evidence"]["kubernetes"] = {
        "cluster": "aks-recs-prod-3", "namespaces_without_quota": ["batch", "sandbox"],
        "pods": [{"namespace": "sandbox", "name": "xmr-7f9c", "image": "docker.io/unknown/xmrig:latest", "cpu": 7.9}]}
    return a


def note(alerts: list[dict[str, Any]], *, event: str = "firing", address: str = "owner@example.com", seq: int = 0,
         thread: str | None = None, chart: Path | None = None, title: str = "Mining suspected on recs-prod-3",
         group_key: str = "mining_suspected/azure/recs-prod-3", owner: str | None = "team-recs") -> Notification:
    target = Target("email", address)
    return Notification(id=notification_id(group_key, target, event, seq), group_key=group_key, event=event,
                        target=target, title=title, alerts=alerts, created_at="2026-11-10T05:00:00Z", owner=owner,
                        sequence=seq, thread=thread, chart=str(chart) if chart else None)


def config(srv: SmtpServer | None = None, **kw: Any) -> EmailConfig:
    base: dict[str, Any] = {"smtp_host": "127.0.0.1", "smtp_port": srv.port if srv else 25, "from_addr": SENDER,
                            "to": ["oncall@example.com"], "starttls": False, "timeout": 3}
    base.update(kw)
    return EmailConfig(**base)


def tiny_png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def parts(msg: EmailMessage) -> tuple[str, str, MIMEPart | None]:
    """(text, html, inline image part) of a received message, checking the MIME structure on the way."""
    assert msg.get_content_type() == "multipart/alternative"
    first, second = msg.iter_parts()
    assert first.get_content_type() == "text/plain"
    if second.get_content_type() == "multipart/related":
        html_part, *images = second.iter_parts()
        assert len(images) == 1 and html_part.get_content_type() == "text/html"
        return first.get_content(), html_part.get_content(), images[0]
    assert second.get_content_type() == "text/html"
    return first.get_content(), second.get_content(), None


def our_logs(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("costwatch"))


# ----------------------------------------------------------------------------------------------- SMTP


def test_plain_smtp_delivers_a_readable_mining_alert(plain: SmtpServer, tmp_path: Path) -> None:
    png = tmp_path / "chart.png"
    png.write_bytes(tiny_png())
    n = note([mining_alert()], chart=png)
    [d] = EmailNotifier(config(plain)).notify([n])

    assert d == Delivery(ok=True, ref=f"<{n.id}@alerts.example.com>")
    [got] = plain.messages
    assert got.rcpt_tos == ["owner@example.com"] and got.mail_from == SENDER
    msg = got.message
    assert msg["Message-ID"] == d.ref
    assert msg["Subject"] == "[costwatch] CRITICAL mining_suspected recs-prod-3"
    assert msg["Auto-Submitted"] == "auto-generated" and msg["In-Reply-To"] is None
    text, html_body, image = parts(msg)
    for body in (text, html_body):
        assert "recs-prod-3" in body and "team-recs" in body
        assert "6 node(s) flat at high CPU" in body
        assert "vm-worker-01" in body and "98%" in body and "Standard_NC6s_v3" in body and "GPU" in body
        assert "and 1 more nodes" in body                       # 6 nodes, top 5 listed
        assert "centralindia" in body and "$3,308.78" in body    # new region and what it cost
        assert "$419.56/day" in body and "$19.01/day" in body and "$400.55 per day" in body
        assert "$16.40" in body and "$22.01" in body             # the usual band
        assert "2026-11-10 03:00 UTC" in body and "2026-11-10 05:00 UTC" in body
        assert "CryptoCurrency:EC2/BitcoinTool.B!DNS" in body    # GuardDuty
        assert "aks-recs-prod-3" in body and "xmr-7f9c" in body and "docker.io/unknown/xmrig:latest" in body
        assert "batch, sandbox" in body                          # namespaces without quota
        assert "2bfc6b20bf995cb0" in body                        # fingerprint
    assert NEXT_STEPS["mining_suspected"] in text
    assert "rotate the credentials" in html_body
    assert image is not None and image.get_content_type() == "image/png"
    assert image.get_content() == tiny_png()
    cid = image["Content-ID"].strip("<>")
    assert f'src="cid:{cid}"' in html_body


def test_a_group_renders_every_alert_and_survives_odd_evidence(plain: SmtpServer) -> None:
    odd = copy.deepcopy(demo_alerts()[1])
    odd.update(project_name="odd-shapes", observed="n/a", expected=None, start=12345)
    odd["evidence"] = {"nodes": "garbage", "guardduty": {"unexpected": True}, "kubernetes": ["not", "a", "dict"],
                       "services": [None, 3, {"service": "S3", "cost": "x"}], "new_regions": [None, {"cost": 1}],
                       "cost": [1, 2]}
    alerts: list[Any] = [*demo_alerts()[:4], odd, "not even a dict"]
    [d] = EmailNotifier(config(plain)).notify([note(alerts, chart=Path("/nonexistent/chart.png"))])

    assert d.ok, d.error
    msg = plain.messages[0].message
    assert msg["Subject"] == "[costwatch] CRITICAL mining_suspected recs-prod-3 (+4 more)"
    text, html_body, image = parts(msg)
    assert image is None                                        # the chart file does not exist: no image part
    for body in (text, html_body):
        assert "recs-prod-2" in body and "aks-nodepool1-50760945-vmss000003" in body
        assert "60%" in body                                    # CPU alert: observed CPU and ...
        assert "Month-end forecast $2,574.31 against a budget of $1,660.00" in body
        assert "odd-shapes" in body and "S3" in body
    for kind in ("mining_suspected", "cost_spike", "budget_forecast_exceeded"):
        assert NEXT_STEPS[kind] in text


def test_starttls_with_login(certs: Certs) -> None:
    with smtp_server.start(tls="starttls", auth={"alice": PASSWORD}, certs=certs) as srv:
        notifier = EmailNotifier(config(srv, starttls=True, username="alice", password=SecretStr(PASSWORD)),
                                 ssl_context=srv.client_context())
        ds = notifier.notify([note([mining_alert()]), note([mining_alert()], address="")])

    assert [d.ok for d in ds] == [True, True], ds
    assert srv.logins == [("alice", "PLAIN", True)]             # one connection, one login for both
    assert [m.tls for m in srv.messages] == [True, True] and srv.messages[0].login == "alice"
    assert srv.messages[1].rcpt_tos == ["oncall@example.com"]   # empty target address: the config's `to`


def test_implicit_tls_with_login(certs: Certs) -> None:
    with smtp_server.start(tls="implicit", auth={"alice": PASSWORD}, certs=certs) as srv:
        cfg = config(srv, ssl=True, username="alice", password=SecretStr(PASSWORD))
        [d] = EmailNotifier(cfg, ssl_context=srv.client_context()).notify([note([mining_alert()])])
    assert d.ok, d.error
    assert srv.messages[0].tls and srv.logins == [("alice", "PLAIN", True)]


def test_untrusted_certificate_is_permanent(certs: Certs) -> None:
    with smtp_server.start(tls="implicit", certs=certs) as srv:
        [d] = EmailNotifier(config(srv, ssl=True)).notify([note([mining_alert()])])  # system trust store only
    assert not d.ok and d.permanent
    assert "certificate" in (d.error or "") and "trust" in (d.error or "")
    assert srv.messages == []


def test_wrong_password_is_permanent_and_the_password_never_leaks(
        certs: Certs, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    with smtp_server.start(tls="starttls", auth={"alice": "the-right-one"}, certs=certs) as srv:
        cfg = config(srv, starttls=True, username="alice", password=SecretStr(PASSWORD))
        ds = EmailNotifier(cfg, ssl_context=srv.client_context()).notify(
            [note([mining_alert()]), note([mining_alert()], event="updated", seq=1)])

    assert all(not d.ok and d.permanent for d in ds)
    assert "535" in (ds[0].error or "") and "notify.email.username/password" in (ds[0].error or "")
    # one login() (smtplib tries each offered mechanism once), not one per notification: lockouts
    assert srv.logins == [("alice", "PLAIN", False), ("alice", "LOGIN", False)]
    assert srv.messages == []
    encoded = [base64.b64encode(s.encode()).decode() for s in (PASSWORD, f"\0alice\0{PASSWORD}")]
    everything = repr(ds) + our_logs(caplog) + capsys.readouterr().err
    assert "email: " in our_logs(caplog)                        # the failure was logged ...
    for secret in (PASSWORD, *encoded):
        assert secret not in everything                         # ... without the password in any form
    assert PASSWORD not in caplog.text                          # not even via the server's own debug log
    assert "send:" not in everything                            # smtplib debug output stayed off


def test_server_down_is_transient_then_delivers_when_it_is_back() -> None:
    port = smtp_server.free_port()
    notifier = EmailNotifier(config(smtp_port=port))
    ds = notifier.notify([note([mining_alert()]), note([mining_alert()], address="b@example.com")])
    assert all(not d.ok and not d.permanent for d in ds)
    assert "refused the connection" in (ds[0].error or "")

    with smtp_server.start(port=port) as srv:
        [d] = notifier.notify([note([mining_alert()])])
    assert d.ok and len(srv.messages) == 1


def test_a_server_that_never_greets_times_out_as_transient() -> None:
    with socket.socket() as s:  # the kernel accepts the TCP connection; nobody ever speaks SMTP on it
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        cfg = config(smtp_port=s.getsockname()[1], timeout=0.3)
        [d] = EmailNotifier(cfg).notify([note([mining_alert()])])
    assert not d.ok and not d.permanent and "did not answer" in (d.error or "")


def test_temporary_451_is_transient_and_the_next_message_still_goes(plain: SmtpServer) -> None:
    plain.fail("rcpt", "451 4.3.0 mailbox busy, try later")
    first, second = EmailNotifier(config(plain)).notify(
        [note([mining_alert()]), note([mining_alert()], address="other@example.com")])
    assert not first.ok and not first.permanent and "451 4.3.0 mailbox busy" in (first.error or "")
    assert second.ok and [m.rcpt_tos for m in plain.messages] == [["other@example.com"]]


def test_421_at_mail_is_transient_and_the_notifier_reconnects(plain: SmtpServer) -> None:
    plain.fail("mail", "421 4.3.2 service shutting down")
    first, second = EmailNotifier(config(plain)).notify([note([mining_alert()]), note(demo_alerts()[1:2])])
    assert not first.ok and not first.permanent and "421" in (first.error or "")
    assert second.ok and len(plain.messages) == 1


def test_550_recipient_and_554_data_are_permanent(plain: SmtpServer) -> None:
    plain.refuse("nobody@example.com")
    plain.fail("data", "554 5.7.1 message rejected as spam")
    refused, rejected, partial = EmailNotifier(config(plain)).notify([
        note([mining_alert()], address="nobody@example.com"),
        note([mining_alert()], address="owner@example.com"),
        note([mining_alert()], address="owner@example.com, nobody@example.com, not an address")])

    assert not refused.ok and refused.permanent
    assert "nobody@example.com (550 5.1.1 mailbox unavailable)" in (refused.error or "")
    assert not rejected.ok and rejected.permanent and "554 5.7.1 message rejected as spam" in (rejected.error or "")
    # some recipients refused: it went to the rest, so it is ok (a retry would mail them twice) with a note
    assert partial.ok and partial.ref
    assert "delivered to 1 of 2" in (partial.error or "") and "nobody@example.com" in (partial.error or "")
    assert "skipped invalid address" in (partial.error or "")
    assert [m.rcpt_tos for m in plain.messages] == [["owner@example.com"]]


def test_a_dropped_connection_is_reopened_for_the_next_message(plain: SmtpServer) -> None:
    plain.drop_after_data()
    ds = EmailNotifier(config(plain)).notify([note([mining_alert()]), note(demo_alerts()[1:2]),
                                             note(demo_alerts()[3:4])])
    assert [d.ok for d in ds] == [True, True, True], ds
    assert len(plain.messages) == 3


def test_updates_thread_under_the_first_message_and_resends_keep_their_id(plain: SmtpServer) -> None:
    notifier = EmailNotifier(config(plain))
    first = note([mining_alert()])
    [d0] = notifier.notify([first])
    update = note([mining_alert()], event="updated", seq=1, thread=d0.ref)
    resolved = note([mining_alert()], event="resolved", seq=2, thread=d0.ref)
    d1, d2, d1_again = notifier.notify([update, resolved, update])

    m0, m1, m2, m1_again = (m.message for m in plain.messages)
    assert m0["Message-ID"] == d0.ref and m0["References"] is None
    for m, d in ((m1, d1), (m2, d2)):
        assert m["Message-ID"] == d.ref != d0.ref
        assert m["In-Reply-To"] == d0.ref and m["References"] == d0.ref
    assert m1["Subject"] == "[costwatch] update: CRITICAL mining_suspected recs-prod-3"
    assert m2["Subject"] == "[costwatch] resolved: CRITICAL mining_suspected recs-prod-3"
    assert RESOLVED_STEPS in parts(m2)[0] and NEXT_STEPS["mining_suspected"] not in parts(m2)[0]
    assert d1_again.ref == d1.ref and m1_again["Message-ID"] == m1["Message-ID"]  # a resend is the same message


def test_hostile_data_cannot_inject_headers_or_html(plain: SmtpServer) -> None:
    evil = "recs\r\nBcc: evil@x.example\r\nX-Evil: 1"
    a = mining_alert()
    a["project_name"] = evil
    a["summary"] = "<script>alert(1)</script>" + "A" * 10_000
    a["evidence"]["nodes"][0]["node"] = "<img src=x onerror=alert(1)>\nFAKE LINE"
    a["evidence"]["kubernetes"]["pods"][0]["image"] = "B" * 10_000
    n = note([a], title=f"Mining on {evil}", group_key="g\r\nBcc: evil@x.example", owner="o\nBcc: evil@x.example")
    bad_target = note([a], address="ops@example.com\r\nBcc: evil@x.example")
    [d, bad] = EmailNotifier(config(plain)).notify([n, bad_target])

    assert d.ok, d.error
    assert not bad.ok and bad.permanent and "invalid address" in (bad.error or "")
    [got] = plain.messages
    assert got.rcpt_tos == ["owner@example.com"]
    head = got.data.split(b"\r\n\r\n", 1)[0].decode()
    assert not any(line.lower().startswith(("bcc:", "x-evil:")) for line in head.split("\r\n"))
    msg = got.message
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert "\n" not in str(msg["Subject"]) and "Bcc: evil@x.example" in str(msg["Subject"])  # flattened, inert
    assert len(str(msg["Subject"])) <= 200
    text, html_body, _ = parts(msg)
    assert "<script>" not in html_body and "&lt;script&gt;alert(1)&lt;/script&gt;" in html_body
    assert "<img src=x" not in html_body and "&lt;img src=x onerror=alert(1)&gt;" in html_body
    assert "\nFAKE LINE" not in text                            # a newline in data cannot start a line of its own
    for body in (text, html_body):
        assert "A" * 2000 not in body and "B" * 2000 not in body
        assert len(body) < 30_000


def test_no_recipient_at_all_is_permanent(plain: SmtpServer) -> None:
    [d] = EmailNotifier(config(plain, to=[])).notify([note([mining_alert()], address="")])
    assert not d.ok and d.permanent and "notify.email.to" in (d.error or "")
    assert plain.messages == []


def test_registry_builds_the_email_notifier(plain: SmtpServer) -> None:
    section = config(plain)
    notifier = build("email", section, Config())
    assert isinstance(notifier, EmailNotifier) and notifier.name == "email"


# ------------------------------------------------------------------------------------------------ SES


@pytest.fixture
def aws_secret(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> str:
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRET"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    return secret


def test_ses_sends_the_same_message(aws_secret: str) -> None:
    import boto3
    from moto import mock_aws
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    with mock_aws():
        boto3.client("ses", region_name="eu-west-1").verify_email_identity(EmailAddress=SENDER)
        notifier = EmailNotifier(config(transport="ses", smtp_host=None, ses_region="eu-west-1"))
        n = note([mining_alert()], address="owner@example.com")
        [d] = notifier.notify([n])
        [sent] = ses_backends[DEFAULT_ACCOUNT_ID]["eu-west-1"].sent_messages

    assert d.ok and d.ref == f"<{sent.id}@eu-west-1.amazonses.com>"  # SES's id: it replaces ours on the mail
    assert sent.source == SENDER and "owner@example.com" in sent.destinations
    msg = smtp_server.Received(sent.source, sent.destinations, sent.raw_data.encode(), True, None).message
    assert msg["Subject"] == "[costwatch] CRITICAL mining_suspected recs-prod-3"
    text, html_body, _ = parts(msg)
    assert "vm-worker-01" in text and "vm-worker-01" in html_body


def test_ses_unverified_sender_is_permanent(aws_secret: str, caplog: pytest.LogCaptureFixture) -> None:
    from moto import mock_aws

    caplog.set_level(logging.DEBUG)
    with mock_aws():
        [d] = EmailNotifier(config(transport="ses", smtp_host=None, ses_region="us-east-1")).notify(
            [note([mining_alert()])])
    assert not d.ok and d.permanent
    assert "MessageRejected" in (d.error or "") and "verify notify.email.from_addr" in (d.error or "")
    assert aws_secret not in repr(d) + caplog.text


class _FakeSes(BaseHTTPRequestHandler):
    """Answers every SES call with one error, the way the SES query API does."""

    status = 400
    code = "Throttling"
    hits: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.hits.append(self.path)
        body = (f'<ErrorResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/"><Error><Type>Sender</Type>'
                f"<Code>{self.code}</Code><Message>Maximum sending rate exceeded.</Message></Error>"
                f"<RequestId>r-1</RequestId></ErrorResponse>").encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "code", "permanent"), [
    (400, "Throttling", False), (503, "ServiceUnavailable", False), (403, "AccessDenied", True)])
def test_ses_errors_are_classified_and_not_retried_by_the_sdk(
        aws_secret: str, monkeypatch: pytest.MonkeyPatch, status: int, code: str, permanent: bool) -> None:
    handler: type[_FakeSes] = type("Handler", (_FakeSes,), {"status": status, "code": code, "hits": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SES", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        ds = EmailNotifier(config(transport="ses", smtp_host=None, ses_region="us-east-1")).notify(
            [note([mining_alert()]), note(demo_alerts()[1:2])])
    finally:
        server.shutdown()
        server.server_close()
    assert all(not d.ok and d.permanent is permanent for d in ds)
    assert code in (ds[0].error or "") and aws_secret not in repr(ds)
    if code == "Throttling":
        assert ds[0].retry_after == 1.0
    if permanent:
        assert "ses:SendRawEmail" in (ds[0].error or "")
        assert len(handler.hits) == 1                           # credentials cannot work for the next one either
    else:
        assert len(handler.hits) == 2                           # one request per notification: no SDK retries


def test_ses_unreachable_is_transient(aws_secret: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SES", f"http://127.0.0.1:{smtp_server.free_port()}")
    [d] = EmailNotifier(config(transport="ses", smtp_host=None, ses_region="us-east-1", timeout=1)).notify(
        [note([mining_alert()])])
    assert not d.ok and not d.permanent and "could not be reached" in (d.error or "")
