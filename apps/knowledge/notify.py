"""The users' system: query results and system notices, sent signed, retried and logged.

What goes to the users' system is a webhook delivery like any other: the
users' system is one Webhook row (its URL and signing secret, subscribed to no
event, so nothing else is sent to it), each message one WebhookDelivery (the
delivery log, shown under /api/v1/webhooks/{id}/deliveries and on the
dashboard), and each attempt the webhooks app's deliver() (signing, the
Litejobs-Signature header, retry on timeouts and 5xx). The body is the
webhook body: `{"id", "event", "created_at", "data"}`.

With no USERS_SYSTEM_URL the sandbox receiver at /knowledge-sandbox/users/v1/events
takes them, checks the signature and keeps them (SandboxReceipt) for the
knowledge page.
"""

import hashlib
import hmac
import json

from bottle import request
from peewee import BooleanField, CharField, DateTimeField, IntegrityError, TextField

import sealing
import settings
from httpclient import answer, refusal
from models import BaseModel, db, isoformat, utcnow

from .delivery import webhooks
from .embeddings import SANDBOX_PATH
from .ingest import sandbox

RECEIVER_PATH = SANDBOX_PATH + "/users/v1/events"


def users_system_url():
    return settings.USERS_SYSTEM_URL or settings.BASE_URL.rstrip("/") + RECEIVER_PATH


def users_system_secret():
    """USERS_SYSTEM_SECRET, or one derived from SECRET_KEY that the sandbox receiver also knows."""
    if settings.USERS_SYSTEM_SECRET:
        return settings.USERS_SYSTEM_SECRET
    return hmac.new(settings.SECRET_KEY.encode(), b"knowledge users system", hashlib.sha256).hexdigest()


def users_system_webhook():
    """The live Webhook row for the users' system at its configured URL and secret (made on first use)."""
    url, secret, Webhook = users_system_url(), users_system_secret(), webhooks().Webhook
    # Stored sealed like every webhook secret (a fresh nonce each time): compared opened.
    for webhook in Webhook.live().where((Webhook.url == url) & (Webhook.events == "[]")):
        try:
            if webhook.signing_secret == secret:
                return webhook
        except sealing.UnsealError:
            continue  # sealed under an older SECRET_KEY: a new row takes its place
    return Webhook.create(url=url, events="[]", secret=sealing.seal(secret))


def queue_message(event, data, key):
    """The delivery of `event` to the users' system for occurrence `key` (the same one when repeated)."""
    webhook, WebhookDelivery = users_system_webhook(), webhooks().WebhookDelivery
    identifier = webhooks().event_id(key)
    body = {
        "id": identifier,
        "event": event,
        "created_at": isoformat(utcnow()),
        "data": data,
    }
    try:
        with db.atomic():
            return WebhookDelivery.create(
                webhook=webhook,
                event_id=identifier,
                event=event,
                payload=json.dumps(body, default=str),
            )
    except IntegrityError:
        # A repeated run of the same task: its delivery exists, and may already be sent.
        return WebhookDelivery.get((WebhookDelivery.webhook == webhook) & (WebhookDelivery.event_id == identifier))


def recent_deliveries(limit=10):
    Webhook = webhooks().Webhook
    webhook = Webhook.live().where(Webhook.url == users_system_url()).first()
    if webhook is None:
        return []
    rows, _ = webhooks().WebhookDelivery.page(webhook.id, limit=limit)
    return rows


# -- The sandbox receiver -------------------------------------------------------------------
class SandboxReceipt(BaseModel):
    """What the sandbox users' system received: one row per event id."""

    event_id = CharField(unique=True)
    event = CharField()
    payload = TextField()
    signature_ok = BooleanField()
    received_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "knowledge_sandbox_receipt"

    @classmethod
    def latest(cls, limit=10):
        return list(cls.select().order_by(cls.id.desc()).limit(limit))

    @property
    def data(self):
        return json.loads(self.payload).get("data", {})


@sandbox.post("/users/v1/events")
def sandbox_receive():
    """Take a signed event; 401 for a bad signature, 200 for a repeat (by event id)."""
    raw = request.body.read(1024 * 1024)
    header = webhooks().SIGNATURE_HEADER
    if not webhooks().verify(users_system_secret(), request.get_header(header), raw):
        return refusal(401, "bad_signature", f"missing or wrong {header} header")
    try:
        body = json.loads(raw)
        event_id, event = str(body["id"]), str(body["event"])
    except (ValueError, KeyError, TypeError):
        return refusal(400, "bad_json", "expected a JSON object with id and event")
    try:
        with db.atomic():
            SandboxReceipt.create(
                event_id=event_id,
                event=event,
                payload=raw.decode("utf-8"),
                signature_ok=True,
            )
    except IntegrityError:
        return answer(200, {"received": event_id, "repeat": True})
    return answer(200, {"received": event_id})
