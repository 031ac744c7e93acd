"""litejobs mailer: mails rendered from templates, sent by SMTP or written to the outbox.

Each mail is a pair of templates in an app's views/mail/ (or the top-level views/mail/): NAME.txt (its first line is
`Subject: …`) and NAME.html, both bottle SimpleTemplates. `SMTP_URL` chooses
the way out: `smtp://user:pass@host:port` (STARTTLS when the server offers it),
`smtps://…` (TLS from the start), or empty for `.eml` files in
settings.OUTBOX_DIR. Errors come in two kinds, so the calling job knows
whether to try again: TransientMailError (unreachable server, a 4xx reply)
and PermanentMailError (a 5xx reply, carrying the server's words).

A mail that must go out once (the welcome mail, a week's digest, a
certificate) goes through send_mail_once(), which claims its MailSent row
before sending and marks it sent after.
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
from peewee import CharField, DateTimeField, ForeignKeyField, IntegrityError

import guard
import loader
import settings
from jobs import current_job_id, fail_now
from models import BaseModel, User, db, utcnow

logger = logging.getLogger("litejobs.mailer")

TEMPLATES = settings.BASE_DIR / "views" / "mail"  # then each loaded app's views/mail/


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
        folders = [TEMPLATES, *(Path(folder) for folder in loader.app_folders("views/mail"))]
        path = next((folder / filename for folder in folders if (folder / filename).is_file()), None)
        if path is None:
            raise FileNotFoundError(f"no mail template {filename} in views/mail/ or an app's views/mail/")
        source = path.read_text(encoding="utf-8")
        _templates[filename] = SimpleTemplate(source, noescape=not escape)
    return _templates[filename]


def render(template, **context):
    """(subject, text, html) of mail `template` (TEMPLATE.txt and .html in views/mail/ or an app's)."""
    context = {"base_url": settings.BASE_URL, **context}
    text = _template(f"{template}.txt", escape=False).render(**context)
    first, _, body = text.partition("\n")
    if not first.startswith("Subject:"):
        raise ValueError(f"mail template {template}.txt must start with a 'Subject: …' line")
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
    message["Subject"] = guard.strip_control(subject)  # a name with a CR must not break every mail
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
    try:
        message = compose(to, template, message_id, **context)
    except ValueError as exc:  # a header the email package refuses: no retry can fix it
        raise PermanentMailError(f"mail {template} to {to!r} cannot be composed: {exc}") from exc
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


# -- Mails sent once -------------------------------------------------------------------
class MailSent(BaseModel):
    """One mail of a kind per user and key (the welcome mail; the digest of a week).

    A job claims the row before it sends and marks it sent after, so running
    the job again, or a second job for the same mail, never sends it twice.
    """

    user = ForeignKeyField(User, backref="mails", on_delete="CASCADE")
    kind = CharField()
    key = CharField(default="")
    status = CharField(default="sending")  # sending, then sent
    job_id = CharField(null=True)
    created_at = DateTimeField(default=utcnow)
    sent_at = DateTimeField(null=True)

    class Meta:
        indexes = ((("user", "kind", "key"), True),)

    @classmethod
    def claim(cls, user_id, kind, key, job_id):
        """Take the right to send; False when the mail was sent or is being sent already.

        A row left `sending` by a consumer that died mid-send stays claimed: a
        lost mail is better than a duplicate when nobody knows whether it left.
        """
        try:
            with db.atomic():
                cls.create(user=user_id, kind=kind, key=key, job_id=job_id)
            return True
        except IntegrityError:
            return False

    @classmethod
    def release(cls, user_id, kind, key, job_id):
        """Give up a claim after a failed send, so a retry may send."""
        cls.delete().where(
            (cls.user == user_id) & (cls.kind == kind) & (cls.key == key) & (cls.job_id == job_id) & (cls.status == "sending")
        ).execute()

    @classmethod
    def mark_sent(cls, user_id, kind, key):
        cls.update(status="sent", sent_at=utcnow()).where((cls.user == user_id) & (cls.kind == kind) & (cls.key == key)).execute()

    @classmethod
    def users_without(cls, kind, key):
        """Active users who have no such mail (sent or being sent)."""
        sent = cls.select(cls.user).where((cls.kind == kind) & (cls.key == key))
        return User.select(User.id).where((User.active == True) & User.id.not_in(sent)).order_by(User.id)  # noqa: E712


def send_mail_once(user, kind, key, template, message_id=None, **context):
    """Send mail `template` to `user` unless this (kind, key) mail went out already; True when sent.

    A transient SMTP error propagates, so huey retries the job with backoff; a
    permanent one (a 5xx reply) fails the job at once with the server's reply.
    """
    job_id = current_job_id() or f"local:{uuid.uuid4()}"
    if not MailSent.claim(user.id, kind, key, job_id):
        return False
    try:
        send(user.email, template, message_id=message_id, user=user, **context)
    except PermanentMailError as exc:
        MailSent.release(user.id, kind, key, job_id)
        fail_now(f"mail to {user.email} refused: {exc}")
    except Exception:
        # Not sent: a retry may send it. (A stop that interrupts the send keeps the
        # claim: whether the mail left is unknown, and a duplicate is worse.)
        MailSent.release(user.id, kind, key, job_id)
        raise
    MailSent.mark_sent(user.id, kind, key)
    return True
