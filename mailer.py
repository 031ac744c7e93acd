"""litejobs mailer: mails rendered from templates, sent by SMTP or written to the outbox.

Each mail is a pair of templates in views/mail/: NAME.txt (its first line is
`Subject: …`) and NAME.html, both bottle SimpleTemplates. `SMTP_URL` chooses
the way out: `smtp://user:pass@host:port` (STARTTLS when the server offers it),
`smtps://…` (TLS from the start), or empty for `.eml` files in
settings.OUTBOX_DIR. Errors come in two kinds, so the calling job knows
whether to try again: TransientMailError (unreachable server, a 4xx reply)
and PermanentMailError (a 5xx reply, carrying the server's words).
"""

import datetime
import email.utils
import logging
import os
import smtplib
import ssl
import uuid
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bottle import SimpleTemplate

import settings

logger = logging.getLogger("litejobs.mailer")

TEMPLATES = settings.BASE_DIR / "views" / "mail"


class MailError(Exception):
    """A mail that could not be delivered."""


class TransientMailError(MailError):
    """Try again later: the server could not be reached or answered 4xx."""


class PermanentMailError(MailError):
    """The server refused for good (a 5xx reply); sending again will not help."""


# -- Composing -----------------------------------------------------------------------
_templates = {}


def _template(filename, escape):
    if filename not in _templates:
        source = (TEMPLATES / filename).read_text(encoding="utf-8")
        _templates[filename] = SimpleTemplate(source, noescape=not escape)
    return _templates[filename]


def render(template, **context):
    """(subject, text, html) of mail `template` (views/mail/TEMPLATE.txt and .html)."""
    context = {"base_url": settings.BASE_URL, **context}
    text = _template(f"{template}.txt", escape=False).render(**context)
    first, _, body = text.partition("\n")
    if not first.startswith("Subject:"):
        raise ValueError(f"views/mail/{template}.txt must start with a 'Subject: …' line")
    html = _template(f"{template}.html", escape=True).render(**context)
    return first[len("Subject:") :].strip(), body.lstrip("\n"), html


def message_id(local_part=None):
    """A Message-ID in the domain of MAIL_FROM; a fixed `local_part` lets mail systems drop repeats."""
    domain = email.utils.parseaddr(settings.MAIL_FROM)[1].rpartition("@")[2] or "litejobs.local"
    return f"<{local_part or uuid.uuid4().hex}@{domain}>"


def compose(to, template, message_id_=None, **context):
    """The EmailMessage of mail `template` to address `to`, with a text and an HTML part."""
    subject, text, html = render(template, **context)
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = settings.MAIL_FROM
    message["To"] = to
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = message_id_ or message_id()
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


def send(to, template, message_id=None, **context):
    """Render mail `template` with `context` and deliver it; returns where it went (SMTP host or .eml file).

    Raises TransientMailError or PermanentMailError when an SMTP server does not take it.
    """
    message = compose(to, template, message_id, **context)
    if not settings.SMTP_URL:
        path = write_outbox(message)
        logger.info("mail %s to %s written to %s", template, to, path)
        return str(path)
    host = deliver(message, settings.SMTP_URL)
    logger.info("mail %s to %s sent through %s", template, to, host)
    return host


# -- Delivering ------------------------------------------------------------------------
def write_outbox(message, folder=None):
    """Write `message` as an .eml file in the outbox: a temporary name first, then renamed."""
    folder = Path(folder or settings.OUTBOX_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = folder / f"{stamp}-{uuid.uuid4().hex[:12]}.eml"
    partial = folder / f".{path.name}.tmp"
    try:
        partial.write_bytes(message.as_bytes())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def deliver(message, url):
    """Send `message` through the SMTP server of `url`; returns "host:port".

    Raises TransientMailError or PermanentMailError.
    """
    parts = urlsplit(url)
    secure = parts.scheme == "smtps"
    host, port = parts.hostname or "localhost", parts.port or (465 if secure else 25)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    where = f"{host}:{port}"
    context = ssl.create_default_context()
    try:
        if secure:
            client = smtplib.SMTP_SSL(host, port, timeout=settings.SMTP_TIMEOUT, context=context)
        else:
            client = smtplib.SMTP(host, port, timeout=settings.SMTP_TIMEOUT)
        with client:
            client.ehlo()
            if not secure and client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
            if user:
                client.login(user, password)
            client.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        code, reply = next(iter(exc.recipients.values()))
        raise _refusal(where, code, reply) from exc
    except smtplib.SMTPConnectError as exc:
        raise TransientMailError(f"{where}: cannot connect: {exc.smtp_code} {_text(exc.smtp_error)}") from exc
    except smtplib.SMTPResponseException as exc:
        raise _refusal(where, exc.smtp_code, exc.smtp_error) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise PermanentMailError(f"{where}: {exc} (check SMTP_URL)") from exc
    except (smtplib.SMTPException, OSError) as exc:
        # Refused or dropped connections, timeouts, TLS handshakes cut short.
        raise TransientMailError(f"{where}: {type(exc).__name__}: {exc}") from exc
    return where


def _text(reply):
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


def _refusal(where, code, reply):
    """The error for an SMTP reply: 5xx is permanent, anything else worth another try."""
    kind = PermanentMailError if 500 <= code < 600 else TransientMailError
    return kind(f"{where} answered {code} {_text(reply)}")
