"""litejobs provider: the order provider's HTTP client, and the sandbox provider.

`client()` talks JSON over HTTP to `PROVIDER_URL` with the token header
(httpclient.JsonClient: connect and read timeouts, one keep-alive connection
per worker thread or greenlet). Its errors split in two: `RetryableError` (network errors,
timeouts, 5xx, 408/429, garbage bodies: the same call may work later) and
`PermanentError` (any other 4xx, carrying the provider's own message).

`sandbox` is a small Bottle app that plays the provider when `PROVIDER_URL`
is empty; web.py serves it under /sandbox/. It answers like a real provider
(same reference for a repeated idempotency key, pending → processing →
completed with a PIN), keeps its orders in the database (SandboxOrder), and
can be made to misbehave: `SANDBOX_LATENCY_MS`, `SANDBOX_FAILURE_RATE`, and
faults injected with `POST /sandbox/v1/faults` (SandboxFault rows).
"""

import datetime
import functools
import hmac
import json
import logging
import random
import secrets
import time
from urllib.parse import quote

from bottle import request
from peewee import CharField, DateTimeField, IntegrityError, TextField

import settings
from httpclient import PermanentError, RetryableError, ServiceError  # noqa: F401 - PermanentError: re-exported
from httpclient import JsonClient, answer, excerpt, read_object, refusal, sandbox_app
from models import BaseModel, db, isoformat, utcnow
from sandbox_faults import InjectedFault

logger = logging.getLogger("litejobs.provider")

TOKEN_HEADER = "X-Provider-Token"
USER_AGENT = "litejobs-orders/1"
PROVIDER_STATUSES = ("pending", "processing", "completed", "failed")


# The errors of httpclient, under the names orders' code has always used.
ProviderError = ServiceError


# -- The client ----------------------------------------------------------------------
class Client(JsonClient):
    """The provider's JSON API at `base_url`: place an order, read its status."""

    token_header = TOKEN_HEADER
    user_agent = USER_AGENT

    def create_order(self, order_id, product_id, package_id, user_identifier, extra_field=None):
        """Place an order; returns the provider's reply with its `reference`, and
        `ready_in`: the seconds until the provider expects it done, or None.

        `order_id` is sent as the Idempotency-Key, so a repeated call (a retry
        after a timeout, a dispatch run twice) returns the first order's reference.
        """
        body = {
            "product_id": product_id,
            "package_id": package_id,
            "user_identifier": user_identifier,
            "extra_field": extra_field,
        }
        reply = self._call("POST", "/v1/orders", body, {"Idempotency-Key": order_id})
        if not isinstance(reply.get("reference"), str) or not reply["reference"]:
            raise RetryableError(f"POST /v1/orders: answer without a reference: {excerpt(reply)}")
        ready_in = reply.get("ready_in")
        usable = isinstance(ready_in, (int, float)) and not isinstance(ready_in, bool) and ready_in >= 0
        return {**reply, "ready_in": float(ready_in) if usable else None}

    def order_status(self, reference):
        """The order's `status` (pending, processing, completed, failed), `pin_code` and `message`."""
        reply = self._call("GET", f"/v1/orders/{quote(reference, safe='')}")
        status = reply.get("status")
        if status not in PROVIDER_STATUSES or (status == "completed" and not reply.get("pin_code")):
            raise RetryableError(f"GET /v1/orders/{reference}: answer without a usable status: {excerpt(reply)}")
        return reply


_clients = {}


def client():
    """The client for the configured provider: `PROVIDER_URL`, or the sandbox at BASE_URL/sandbox."""
    base_url = settings.PROVIDER_URL or settings.BASE_URL.rstrip("/") + "/sandbox"
    key = (base_url, settings.PROVIDER_TOKEN, settings.PROVIDER_CONNECT_TIMEOUT, settings.PROVIDER_TIMEOUT)
    if key not in _clients:
        _clients[key] = Client(*key)
    return _clients[key]


# -- The sandbox's tables ---------------------------------------------------------
class SandboxOrder(BaseModel):
    """An order as the built-in sandbox provider keeps it (its own side of the
    wire), in the database so every web process answers alike."""

    reference = CharField(primary_key=True)
    idempotency_key = CharField(unique=True)
    request = TextField()  # the order as first sent, to tell a repeat from a clash
    pin_code = CharField()
    created_at = DateTimeField(default=utcnow)
    complete_at = DateTimeField()
    fail_message = TextField(null=True)

    class Meta:
        table_name = "sandbox_order"

    @classmethod
    def find(cls, reference):
        """The order with `reference`, or None (in SQL: every status check of the sandbox reads it)."""
        rows = list(cls.raw('SELECT * FROM "sandbox_order" WHERE "reference" = {p}'.format(p=db.param), reference))
        return rows[0] if rows else None

    @classmethod
    def place(cls, idempotency_key, request, **fields):
        """The order for `idempotency_key`, created from `request` and `fields` if new; returns (order, created)."""
        existing = cls.get_or_none(cls.idempotency_key == idempotency_key)
        if existing is not None:
            return existing, False
        try:
            with db.atomic():  # a savepoint, so a clash leaves an outer transaction usable
                order = cls.create(idempotency_key=idempotency_key, request=request, **fields)
            return order, True
        except IntegrityError:
            # A concurrent call with the same key won the race.
            return cls.get(cls.idempotency_key == idempotency_key), False

    def status_at(self, now):
        """pending for the first half of its time, processing for the second, then final."""
        if now >= self.complete_at:
            return "failed" if self.fail_message else "completed"
        halfway = self.created_at + (self.complete_at - self.created_at) / 2
        return "processing" if now >= halfway else "pending"

    def to_dict(self, now):
        status = self.status_at(now)
        return {
            "reference": self.reference,
            "status": status,
            "pin_code": self.pin_code if status == "completed" else None,
            "message": self.fail_message if status == "failed" else None,
            "ready_in": round(max((self.complete_at - now).total_seconds(), 0), 3),
            "created_at": isoformat(self.created_at),
        }


class SandboxFault(InjectedFault):
    """A fault injected into the provider sandbox, for its calls create, status (or any)."""

    class Meta:
        table_name = "sandbox_fault"


# -- The sandbox provider ------------------------------------------------------------
sandbox = sandbox_app(db)


def _authorized():
    given = request.get_header(TOKEN_HEADER) or ""
    return hmac.compare_digest(given.encode(), settings.PROVIDER_TOKEN.encode())


def sandbox_call(target):
    """Make a sandbox route behave like a provider on a bad day: token check,
    SANDBOX_LATENCY_MS, injected faults and SANDBOX_FAILURE_RATE answers of 500."""

    def decorator(handler):
        @functools.wraps(handler)
        def wrapper(*args, **kwargs):
            if not _authorized():
                return refusal(401, "unauthorized", f"missing or wrong {TOKEN_HEADER} header")
            time.sleep(settings.SANDBOX_LATENCY_MS / 1000)
            fault = SandboxFault.take(target)
            if fault is not None and fault.status:
                return refusal(fault.status, "injected", f"sandbox: injected fault (HTTP {fault.status})")
            if random.random() < settings.SANDBOX_FAILURE_RATE:
                return refusal(500, "unavailable", "sandbox: simulated failure (SANDBOX_FAILURE_RATE)")
            answer = handler(*args, **kwargs)
            if fault is not None and fault.delay_ms:
                # The work is done but the answer comes late: a client that gave up
                # must not create the order twice when it asks again.
                time.sleep(fault.delay_ms / 1000)
            return answer

        return wrapper

    return decorator


def _order_request(body):
    """(the order's fields, or None) and the refusal for a bad one."""
    fields = {}
    for name in ("product_id", "package_id", "user_identifier"):
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            return None, refusal(422, "invalid", f"{name} is required and must be a non-empty string")
        fields[name] = value
    extra = body.get("extra_field")
    if extra is not None and not isinstance(extra, str):
        return None, refusal(422, "invalid", "extra_field must be a string")
    fields["extra_field"] = extra
    # Magic values, as sandboxes have: an unknown account is refused at once.
    if fields["user_identifier"].lower().startswith("invalid"):
        return None, refusal(422, "unknown_account", f"no account {fields['user_identifier']!r} for this product")
    return fields, None


def _new_pin():
    return "-".join(f"{secrets.randbelow(10000):04d}" for _ in range(4))


@sandbox.post("/v1/orders")
@sandbox_call("create")
def sandbox_create_order():
    """Place an order; the Idempotency-Key header makes a repeat return the same order."""
    key = request.get_header("Idempotency-Key")
    if not key:
        return refusal(400, "idempotency_key_required", "send an Idempotency-Key header")
    body = read_object()
    if body is None:
        return refusal(400, "bad_json", "body must be a JSON object")
    fields, refused = _order_request(body)
    if refused is not None:
        return refused
    now = utcnow()
    unavailable = fields["package_id"].lower().startswith("unavailable")
    order, created = SandboxOrder.place(
        key,
        json.dumps(fields, sort_keys=True),
        reference="SBX-" + secrets.token_hex(6).upper(),
        pin_code=_new_pin(),
        created_at=now,
        complete_at=now + datetime.timedelta(seconds=settings.SANDBOX_COMPLETE_AFTER),
        fail_message=f"package {fields['package_id']!r} is unavailable" if unavailable else None,
    )
    if not created and order.request != json.dumps(fields, sort_keys=True):
        return refusal(409, "idempotency_key_reused", f"Idempotency-Key {key!r} was used for another order")
    return answer(201 if created else 200, order.to_dict(utcnow()))


@sandbox.get("/v1/orders/<reference>")
@sandbox_call("status")
def sandbox_order_status(reference):
    """An order's status; the PIN once completed."""
    order = SandboxOrder.find(reference)
    if order is None:
        return refusal(404, "not_found", f"no order with reference {reference!r}")
    return answer(200, order.to_dict(utcnow()))


@sandbox.post("/v1/faults")
def sandbox_add_fault():
    """Inject a fault: the next `times` calls to `target` answer `status` or come `delay_ms` late."""
    if not _authorized():
        return refusal(401, "unauthorized", f"missing or wrong {TOKEN_HEADER} header")
    body = read_object()
    if body is None:
        return refusal(400, "bad_json", "body must be a JSON object")
    target = body.get("target", "any")
    status = body.get("status")
    delay_ms = body.get("delay_ms", 0)
    times = body.get("times", 1)
    if target not in ("create", "status", "any"):
        return refusal(422, "invalid", "target must be create, status or any")
    if status is not None and not (_whole(status) and 400 <= status <= 599):
        return refusal(422, "invalid", "status must be an HTTP error status, 400 to 599")
    if not (_whole(delay_ms) and 0 <= delay_ms <= 60000) or not (_whole(times) and 1 <= times <= 100000):
        return refusal(422, "invalid", "delay_ms must be 0 to 60000 and times 1 to 100000")
    if status is None and not delay_ms:
        return refusal(422, "invalid", "give a status, a delay_ms, or both")
    fault = SandboxFault.create(target=target, status=status, delay_ms=delay_ms, remaining=times)
    return answer(201, fault.to_dict())


@sandbox.delete("/v1/faults")
def sandbox_clear_faults():
    """Remove every injected fault."""
    if not _authorized():
        return refusal(401, "unauthorized", f"missing or wrong {TOKEN_HEADER} header")
    SandboxFault.delete().execute()
    return answer(204)


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


