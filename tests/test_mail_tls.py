"""Mail over TLS: STARTTLS on smtp:// and TLS from the start on smtps://, against a
real local aiosmtpd server with a certificate made for the test."""

import ssl
import subprocess
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from conftest import free_port

import mailer


class TlsInbox:
    """Keeps each message with whether its session was encrypted."""

    def __init__(self):
        self.received = []
        self.logins = []

    async def handle_DATA(self, server, session, envelope):
        # session.ssl covers STARTTLS; an implicit-TLS port shows on the transport.
        encrypted = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
        self.received.append((encrypted, envelope.content))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append(auth_data.login)
        return AuthResult(success=auth_data.password == b"s3cret", handled=False)


@pytest.fixture
def certificate(tmp_path, monkeypatch):
    """A self-signed certificate for 127.0.0.1 that this test's clients trust (SSL_CERT_FILE)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _server(**options):
    inbox = TlsInbox()
    # Only PLAIN: smtplib falls back from a refused PLAIN to LOGIN, which stalls with aiosmtpd.
    controller = Controller(
        inbox, hostname="127.0.0.1", port=free_port(), authenticator=inbox.authenticate,
        auth_exclude_mechanism=["LOGIN"], **options,
    )
    controller.start()
    return inbox, controller


def _message():
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "litejobs@example.com", "ann@example.com", "TLS"
    message.set_content("over TLS")
    return message


def test_smtp_url_upgrades_with_starttls_before_it_logs_in(certificate):
    # The server refuses to log in, or take mail, before STARTTLS.
    inbox, controller = _server(tls_context=certificate, require_starttls=True, auth_require_tls=True)
    try:
        mailer.deliver(_message(), f"smtp://robot:s3cret@127.0.0.1:{controller.port}")
    finally:
        controller.stop()
    assert inbox.logins == [b"robot"]
    assert [encrypted for encrypted, _ in inbox.received] == [True]


def test_smtps_url_speaks_tls_from_the_start(certificate):
    # aiosmtpd offers AUTH on an implicit-TLS port only with auth_require_tls off.
    inbox, controller = _server(ssl_context=certificate, auth_require_tls=False)
    try:
        mailer.deliver(_message(), f"smtps://robot:s3cret@127.0.0.1:{controller.port}")
    finally:
        controller.stop()
    assert inbox.logins == [b"robot"]
    assert [encrypted for encrypted, _ in inbox.received] == [True]


def test_untrusted_certificate_is_refused_before_anything_is_sent(certificate, monkeypatch, tmp_path):
    inbox, controller = _server(tls_context=certificate, require_starttls=True, auth_require_tls=True)
    # Trust only an unrelated certificate: the server's own no longer checks out.
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
         "-keyout", str(other / "key.pem"), "-out", str(other / "cert.pem")],
        check=True, capture_output=True,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(other / "cert.pem"))
    try:
        with pytest.raises(mailer.TransientMailError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            mailer.deliver(_message(), f"smtp://robot:s3cret@127.0.0.1:{controller.port}")
    finally:
        controller.stop()
    assert inbox.logins == [] and inbox.received == []
