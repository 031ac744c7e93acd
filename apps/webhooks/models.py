"""litejobs webhooks: subscriptions, their deliveries, and the jobs that send them.

The Webhook and WebhookDelivery tables; checking target URLs, signing bodies
and sending them (plain functions over the standard library); turning events
into deliveries, each one run as a job (deliver_webhook); and the hourly
`usage.hourly` event. web.py manages the subscriptions. A receiver checks the
`Litejobs-Signature` header with `verify()`.
"""

import datetime
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from typing import NamedTuple
from urllib.parse import urlsplit

from peewee import (
    BooleanField,
    CharField,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    IntegrityError,
    TextField,
    fn,
)

from huey.exceptions import RetryTask

import guard
import hooks
import sealing
import settings
from jobs import JobError, Unavailable, submit
from models import BaseModel, Job, User, db, isoformat, utcnow

logger = logging.getLogger("litejobs.webhooks")


EVENTS = ("job.succeeded", "job.failed", "order.completed", "order.failed", "usage.hourly")
SIGNATURE_HEADER = "Litejobs-Signature"
USER_AGENT = "litejobs-webhooks/1"
MAX_URL_LENGTH = 2048


class BadURL(ValueError):
    """A webhook URL litejobs will not call; the message says why and what to do."""


class Unresolvable(BadURL):
    """The URL's host has no address right now (may be temporary)."""


# -- URLs and their targets ----------------------------------------------------
def check_url(url, allow_private=False):
    """The addresses `url` may be sent to, after checking its scheme and targets.

    Raises BadURL for a URL that is not http(s), has credentials or resolves to
    a private, loopback, link-local, multicast or reserved address (unless
    `allow_private`), and Unresolvable when its host does not resolve.
    """
    if not isinstance(url, str) or not url.strip():
        raise BadURL("expected an http:// or https:// URL")
    if len(url) > MAX_URL_LENGTH:
        raise BadURL(f"longer than {MAX_URL_LENGTH} characters")
    if guard.control_character(url.strip()):  # urlsplit drops tabs and newlines silently
        raise BadURL("must not contain control characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise BadURL(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise BadURL(f"expected an http:// or https:// URL, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise BadURL("has no host; expected e.g. https://example.com/hooks/litejobs")
    if parts.username is not None or parts.password is not None:
        raise BadURL("must not carry credentials; receivers check the Litejobs-Signature header instead")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolvable(f"cannot resolve host {parts.hostname!r}: {exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not allow_private:
        for address in addresses:
            kind = _non_public_kind(address)
            if kind:
                raise BadURL(
                    f"{parts.hostname} resolves to {address}, a {kind} address; webhooks to private, "
                    "loopback and link-local addresses need WEBHOOK_ALLOW_PRIVATE=1"
                )
    return addresses


def _non_public_kind(address):
    """What kind of non-public address `address` is, or None for a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    # ::ffff:127.0.0.1 reaches 127.0.0.1: judge the IPv4 address inside.
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 6:
        # 6to4, Teredo, NAT64, ISATAP and the like carry an IPv4 address that a
        # gateway may forward to: a private one inside makes the whole address private.
        for inner in embedded_ipv4(ip):
            kind = _non_public_kind(str(inner))
            if kind:
                return f"{kind} (inside {ip})"
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:  # e.g. 100.64.0.0/10, shared by carriers
        return "non-global"
    return None


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_IN_LOW_BITS = (
    ipaddress.ip_network("::/96"),  # IPv4-compatible (deprecated)
    ipaddress.ip_network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT)
)


def embedded_ipv4(ip):
    """The IPv4 addresses an IPv6 address carries (6to4, Teredo, NAT64, ISATAP, compatible forms)."""
    found = []
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client)
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in _NAT64 + _IPV4_IN_LOW_BITS) and int(ip) > 0xFFFF:
        found.append(low)
    if (int(ip) >> 32) & 0xFDFFFFFF == 0x00005EFE:  # ISATAP interface id: [02]00:5efe:a.b.c.d
        found.append(low)
    return found


# -- Signatures ------------------------------------------------------------------
def sign(secret, body, t=None):
    """The `Litejobs-Signature` header value for `body` (bytes) sent at unix time `t`."""
    t = int(time.time() if t is None else t)
    digest = hmac.new(secret.encode("utf-8"), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(secret, header, body, tolerance=300, now=None):
    """True when `header` is a valid signature of `body` made within `tolerance` seconds of now.

    For receivers: pass the raw request body (bytes), before any JSON parsing.
    """
    t, signatures = None, []
    for item in (header or "").split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1":
            signatures.append(value)
    if t is None or not signatures:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, s) for s in signatures)


# -- Sending -----------------------------------------------------------------------
class Outcome(NamedTuple):
    """How one attempt went: `ok` (2xx), or an error that `retry` says is worth trying again."""

    ok: bool
    retry: bool
    response_code: int | None
    error: str | None
    duration_ms: float


def retry_delay(attempts, base):
    """Seconds to wait after `attempts` failed attempts: base, 2×base, 4×base…"""
    return base * 2 ** (attempts - 1)


def send(url, secret, body, event, timeout, allow_private=False):
    """POST `body` (bytes) to `url`, signed with `secret`; returns an Outcome, never raises.

    The host is resolved and checked on every attempt (DNS can change since
    the webhook was created) and the connection goes to the checked address,
    so a second lookup cannot swap in a private one. Redirects are not
    followed. `timeout` bounds the whole attempt.
    """
    start = time.monotonic()

    def outcome(ok, retry, code, error):
        return Outcome(ok, retry, code, error, round((time.monotonic() - start) * 1000, 3))

    try:
        addresses = check_url(url, allow_private)
    except Unresolvable as exc:
        return outcome(False, True, None, str(exc))
    except BadURL as exc:
        return outcome(False, False, None, f"refused: {exc}")
    parts = urlsplit(url.strip())
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    connection._create_connection = _pinned(addresses)
    # A receiver trickling its answer byte by byte must not hold a worker past `timeout`.
    watchdog = threading.Timer(timeout, _abort, (connection,))
    watchdog.daemon = True
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Litejobs-Event": event,
        SIGNATURE_HEADER: sign(secret, body),
    }
    try:
        watchdog.start()
        connection.request("POST", path, body=body, headers=headers)
        reply = connection.getresponse()
        reply.read(64 * 1024)
        code = reply.status
    except TimeoutError:
        return outcome(False, True, None, f"timeout: no answer within {timeout:g} s")
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() - start >= timeout:
            return outcome(False, True, None, f"timeout: no complete answer within {timeout:g} s")
        return outcome(False, True, None, f"connection error: {type(exc).__name__}: {exc}")
    finally:
        watchdog.cancel()
        connection.close()
    if 200 <= code < 300:
        return outcome(True, False, code, None)
    if code >= 500:
        return outcome(False, True, code, f"HTTP {code} from the receiver")
    if 300 <= code < 400:
        return outcome(False, False, code, f"HTTP {code}: redirects are not followed; use the final URL")
    return outcome(False, False, code, f"HTTP {code} from the receiver; not retried")


def _pinned(addresses):
    """A replacement for socket.create_connection that connects only to `addresses`."""

    def create_connection(address, timeout=None, source_address=None):
        error = None
        for ip in addresses:
            try:
                return socket.create_connection((ip, address[1]), timeout, source_address)
            except OSError as exc:
                error = exc
        raise error

    return create_connection


def _abort(connection):
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: the attempt ended on its own


# -- Subscriptions and deliveries ------------------------------------------------
class Webhook(BaseModel):
    """A URL that gets a signed POST for each event it subscribed to; deleting it only deactivates it."""

    url = TextField()
    events = TextField()  # a JSON list of event names
    secret = CharField()  # sealed (sealing.py): a copied database or backup alone does not reveal it
    created_at = DateTimeField(default=utcnow)
    active = BooleanField(default=True)

    @classmethod
    def subscribe(cls, url, events):
        """A new webhook with a fresh signing secret."""
        plain = "whsec_" + secrets.token_urlsafe(32)
        return cls.create(url=url, events=json.dumps(events), secret=sealing.seal(plain))

    @property
    def signing_secret(self):
        """The plain signing secret; raises sealing.UnsealError when SECRET_KEY changed since."""
        return sealing.unseal(self.secret)

    @classmethod
    def seal_plain_secrets(cls):
        """Seal the secrets of webhooks stored before sealing existed; returns how many."""
        sealed = 0
        for row in cls.select(cls.id, cls.secret).where(~cls.secret.startswith(sealing.PREFIX)):
            sealed += cls.update(secret=sealing.seal(row.secret)).where((cls.id == row.id) & (cls.secret == row.secret)).execute()
        return sealed

    @classmethod
    def live(cls):
        return cls.select().where(cls.active == True).order_by(cls.id)  # noqa: E712

    @classmethod
    def find_live(cls, webhook_id):
        """The active webhook with id `webhook_id` (a string from a URL), or None."""
        if not str(webhook_id).isdigit():
            return None
        return cls.get_or_none((cls.id == int(webhook_id)) & (cls.active == True))  # noqa: E712

    @property
    def event_names(self):
        return json.loads(self.events)

    def deactivate(self):
        Webhook.update(active=False).where(Webhook.id == self.id).execute()

    def to_dict(self, secret=False):
        body = {"id": str(self.id), "url": self.url, "events": self.event_names, "created_at": isoformat(self.created_at)}
        if secret:
            body["secret"] = self.signing_secret
        return body


class WebhookDelivery(BaseModel):
    """One event sent to one webhook: the body, the same on every attempt, and how the attempts went."""

    webhook = ForeignKeyField(Webhook, backref="deliveries", on_delete="CASCADE")
    event_id = CharField()  # the body's "id": receivers drop repeats by it
    event = CharField()
    payload = TextField()
    status = CharField(default="pending")  # pending, succeeded or failed
    response_code = IntegerField(null=True)
    attempts = IntegerField(default=0)
    duration_ms = FloatField(null=True)
    created_at = DateTimeField(default=utcnow)
    last_attempt_at = DateTimeField(null=True)
    next_attempt_at = DateTimeField(null=True)
    last_error = TextField(null=True)
    job_id = CharField(null=True)

    class Meta:
        # One delivery of an event per webhook, however often the event is emitted.
        indexes = ((("webhook", "event_id"), True),)

    @classmethod
    def create_for(cls, webhook_ids, event_id, event, payload):
        """A pending delivery to each live webhook of `webhook_ids` that has none for `event_id` yet."""
        created = []
        for webhook in list(Webhook.live().where(Webhook.id.in_(webhook_ids))):  # read in full before writing
            try:
                with db.atomic():  # a savepoint, so a repeat leaves an outer transaction usable
                    created.append(cls.create(webhook=webhook, event_id=event_id, event=event, payload=payload))
            except IntegrityError:
                continue
        return created

    @classmethod
    def page(cls, webhook_id, status=None, limit=50, cursor=None):
        """Newest first; returns (deliveries, cursor of the next page or None)."""
        query = cls.select().where(cls.webhook == webhook_id)
        if status:
            query = query.where(cls.status == status)
        if cursor:
            if not cursor.isdigit():
                raise ValueError("not a cursor returned by this API")
            query = query.where(cls.id < int(cursor))
        rows = list(query.order_by(cls.id.desc()).limit(limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (str(rows[-1].id) if more else None)

    def record_attempt(self, status, response_code, duration_ms, error, next_attempt_at=None):
        """Count one attempt made from this row's state; False when another run recorded first."""
        return bool(
            WebhookDelivery.update(
                status=status,
                response_code=response_code,
                duration_ms=duration_ms,
                last_error=error,
                attempts=WebhookDelivery.attempts + 1,
                last_attempt_at=utcnow(),
                next_attempt_at=next_attempt_at,
            )
            .where(
                (WebhookDelivery.id == self.id)
                & (WebhookDelivery.status == "pending")
                & (WebhookDelivery.attempts == self.attempts)
            )
            .execute()
        )

    @classmethod
    def give_up(cls, delivery_id, error):
        cls.update(status="failed", last_error=error, next_attempt_at=None).where(
            (cls.id == delivery_id) & (cls.status == "pending")
        ).execute()

    def to_dict(self):
        return {
            "id": str(self.id),
            "event_id": self.event_id,
            "event": self.event,
            "status": self.status,
            "response_code": self.response_code,
            "attempts": self.attempts,
            "duration_ms": self.duration_ms,
            "created_at": isoformat(self.created_at),
            "last_attempt_at": isoformat(self.last_attempt_at),
            "next_attempt_at": isoformat(self.next_attempt_at),
            "error": self.last_error,
            "job_id": self.job_id,
        }


def usage_counts(start, end):
    """What the `usage.hourly` event reports for [start, end).

    Per function: jobs enqueued in the window, and jobs that reached each
    terminal status in it (the counters of /metrics). What each loaded app
    adds through hooks.usage_counts (orders: placed in the window, by the
    status they have now). Users created in the window.
    """
    jobs = {}
    window = (Job.enqueued_at >= start) & (Job.enqueued_at < end)
    for row in Job.select(Job.name, fn.COUNT(Job.id).alias("n")).where(window).group_by(Job.name).namedtuples():
        jobs.setdefault(row.name, {})["enqueued"] = row.n
    finished = (Job.finished_at >= start) & (Job.finished_at < end)
    query = Job.select(Job.name, Job.status, fn.COUNT(Job.id).alias("n")).where(finished).group_by(Job.name, Job.status)
    for row in query.namedtuples():
        jobs.setdefault(row.name, {})[row.status] = row.n
    new_users = User.select().where((User.created_at >= start) & (User.created_at < end)).count()
    report = {"jobs": dict(sorted(jobs.items()))}
    for _, counts in hooks.usage_counts.send(start, end):
        report.update(counts or {})  # e.g. the orders app adds "orders"
    report["new_users"] = new_users
    return report


# -- Events and their delivery ---------------------------------------------------
# Finishing a job asks "who listens?": a per-process list answers without a query
# for this many seconds. A webhook created or deleted here clears it at once.
SUBSCRIPTIONS_TTL = 5.0
_subscriptions = (None, 0.0, {})  # (database, monotonic expiry, {event: [webhook ids]})
_SILENT = {"deliver_webhook"}  # their own outcomes are no events: no delivery loops


def forget_subscriptions():
    """Drop this process's cached list of webhook subscriptions."""
    global _subscriptions
    _subscriptions = (None, 0.0, {})


def subscribers(event):
    """Ids of the live webhooks subscribed to `event` (cached for SUBSCRIPTIONS_TTL seconds)."""
    global _subscriptions
    database, expires, by_event = _subscriptions
    now = time.monotonic()
    if database is not db.obj or now >= expires:
        by_event = {}
        for webhook in Webhook.live():
            for name in webhook.event_names:
                by_event.setdefault(name, []).append(webhook.id)
        _subscriptions = (db.obj, now + SUBSCRIPTIONS_TTL, by_event)
    return by_event.get(event, [])


def event_id(key):
    """A stable event id for `key`, private to this installation (keyed by SECRET_KEY).

    Emitting the same event twice (a task run twice) gives the same id, so
    the second emit delivers nothing new and receivers see no repeat.
    """
    digest = hmac.new(settings.SECRET_KEY.encode(), key.encode(), hashlib.sha256).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def emit(event, data, key=None):
    """Queue a delivery of `event` with `data` to every live webhook subscribed to it.

    `key` names the occurrence (e.g. "job.failed:<job id>") so that emitting it
    again sends nothing twice; without one every call is a new event. Returns
    the number of deliveries queued.
    """
    webhook_ids = subscribers(event)
    if not webhook_ids:
        return 0
    identifier = event_id(key) if key else str(uuid.uuid4())
    body = {"id": identifier, "event": event, "created_at": isoformat(utcnow()), "data": data}
    deliveries = WebhookDelivery.create_for(webhook_ids, identifier, event, json.dumps(body, default=str))
    for delivery in deliveries:
        # Inside a transaction the rows are not visible to a consumer until it commits.
        db.after_commit(lambda delivery=delivery: _queue_delivery(delivery))
    return len(deliveries)


def _queue_delivery(delivery):
    try:
        job, _ = submit("deliver_webhook", {"delivery_id": delivery.id}, checked=True)
    except Unavailable as exc:
        logger.warning("webhook delivery %s: could not be queued: %s", delivery.id, exc)
        WebhookDelivery.give_up(delivery.id, f"could not be queued: {exc}")
        return
    WebhookDelivery.update(job_id=job.id).where(WebhookDelivery.id == delivery.id).execute()


@hooks.job_finished.connect
def job_event(job_id, name, status):
    """Emit job.succeeded or job.failed for a job that just finished."""
    event = f"job.{status}"
    if name in _SILENT or not subscribers(event):
        return
    job = Job.get_or_none(Job.id == job_id)
    if job is not None:
        emit(event, job.to_dict(), key=f"{event}:{job_id}")


@hooks.app_event.connect
def app_event(event, data, key=None):
    """Deliver another app's event (hooks.app_event); `data` may be a callable, called only when someone listens."""
    if event not in EVENTS or not subscribers(event):
        return 0
    return emit(event, data() if callable(data) else data, key=key)


def deliver(delivery_id, allow_private=None, max_attempts=None):
    """One attempt at a pending delivery (the body of deliver_webhook, and of
    other apps' senders that keep their log in WebhookDelivery): RetryTask for
    the next attempt, JobError when it failed for good.

    `allow_private` and `max_attempts` default to WEBHOOK_ALLOW_PRIVATE and
    WEBHOOK_MAX_ATTEMPTS; a sender to an address the operator configured
    (not a subscriber's) passes allow_private=True.
    """
    allow_private = settings.WEBHOOK_ALLOW_PRIVATE if allow_private is None else allow_private
    max_attempts = max_attempts or settings.WEBHOOK_MAX_ATTEMPTS
    delivery = WebhookDelivery.get_or_none(WebhookDelivery.id == delivery_id)
    if delivery is None or delivery.status != "pending":
        # A second run of a finished delivery (at-least-once): nothing to send.
        return None if delivery is None else delivery.status
    webhook = delivery.webhook
    if not webhook.active:
        WebhookDelivery.give_up(delivery.id, "webhook deleted before delivery")
        return "webhook deleted; not sent"
    try:
        secret = webhook.signing_secret
    except sealing.UnsealError as exc:  # no retry can fix this: fail now, with the cause
        WebhookDelivery.give_up(delivery.id, f"signing secret unreadable: {exc}")
        raise JobError(f"webhook {webhook.id}: signing secret unreadable ({exc}); create the webhook again") from None
    outcome = send(
        webhook.url,
        secret,
        delivery.payload.encode("utf-8"),
        delivery.event,
        timeout=settings.WEBHOOK_TIMEOUT,
        allow_private=allow_private,
    )
    attempts = delivery.attempts + 1
    again = outcome.retry and attempts < max_attempts
    delay = retry_delay(attempts, settings.WEBHOOK_RETRY_BASE) if again else None
    status = "pending" if again else "succeeded" if outcome.ok else "failed"
    next_at = utcnow() + datetime.timedelta(seconds=delay) if again else None
    if not delivery.record_attempt(status, outcome.response_code, outcome.duration_ms, outcome.error, next_at):
        return "recorded by another run"
    if again:
        logger.info("webhook delivery %s: %s; attempt %s in %s s", delivery.id, outcome.error, attempts + 1, delay)
        raise RetryTask(f"{outcome.error}; attempt {attempts + 1} in {delay:g} s", delay=delay)
    if not outcome.ok:
        raise JobError(f"webhook delivery {delivery.id} to {webhook.url} failed after {attempts} attempt(s): {outcome.error}")
    return {"delivery_id": str(delivery.id), "response_code": outcome.response_code, "attempts": attempts}
