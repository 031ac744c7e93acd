"""Mail over TLS: STARTTLS on smtp:// and TLS from the start on smtps://, against a
real local aiosmtpd server with a certificate made for the test."""

import ssl
import subprocess
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from helpers import free_port

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


def _make_certificate(folder, common_name, *extra):
    """A self-signed certificate and its key in `folder`, made by the openssl command."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={common_name}",
         *extra, "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def certificate(tmp_path, monkeypatch):
    """A server context with a certificate for 127.0.0.1 that this test's clients trust (SSL_CERT_FILE)."""
    cert, key = _make_certificate(tmp_path, "127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
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


@pytest.mark.parametrize(
    "scheme, options",
    [
        # The server refuses to log in, or take mail, before STARTTLS.
        ("smtp", {"require_starttls": True, "auth_require_tls": True}),
        # TLS from the first byte; aiosmtpd offers AUTH there only with auth_require_tls off.
        ("smtps", {"auth_require_tls": False}),
    ],
)
def test_mail_is_sent_and_logged_in_over_tls(certificate, scheme, options):
    context = {"tls_context" if scheme == "smtp" else "ssl_context": certificate}
    inbox, controller = _server(**context, **options)
    try:
        mailer.deliver(_message(), f"{scheme}://robot:s3cret@127.0.0.1:{controller.port}")
    finally:
        controller.stop()
    assert inbox.logins == [b"robot"]
    assert [encrypted for encrypted, _ in inbox.received] == [True]


def test_untrusted_certificate_is_refused_before_anything_is_sent(certificate, monkeypatch, tmp_path):
    inbox, controller = _server(tls_context=certificate, require_starttls=True, auth_require_tls=True)
    # Trust only an unrelated certificate: the server's own no longer checks out.
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(_make_certificate(other, "other")[0]))
    try:
        with pytest.raises(mailer.TransientMailError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            mailer.deliver(_message(), f"smtp://robot:s3cret@127.0.0.1:{controller.port}")
    finally:
        controller.stop()
    assert inbox.logins == [] and inbox.received == []
