"""litejobs provider: the order provider's HTTP client, and the sandbox provider.

`client()` talks JSON over HTTP to `PROVIDER_URL` with the token header,
connect and read timeouts, and one keep-alive connection per worker thread
(or greenlet). Its errors split in two: `RetryableError` (network errors,
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
import http.client
import json
import logging
import random
import secrets
import threading
import time
from urllib.parse import quote, urlsplit

from bottle import Bottle, HTTPResponse, request, response
from peewee import CharField, DateTimeField, IntegerField, IntegrityError, TextField

import settings
from models import BaseModel, db, isoformat, utcnow

logger = logging.getLogger("litejobs.provider")

TOKEN_HEADER = "X-Provider-Token"
USER_AGENT = "litejobs-orders/1"
MAX_REPLY_BYTES = 1024 * 1024
PROVIDER_STATUSES = ("pending", "processing", "completed", "failed")


class ProviderError(Exception):
    """A provider call that gave no answer to use."""


class RetryableError(ProviderError):
    """The call may work later: network error, timeout, 5xx, 408, 429 or a garbage body."""


class PermanentError(ProviderError):
    """The provider refused the call (a 4xx); `message` is its own words."""

    def __init__(self, status, message):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


# -- The client ----------------------------------------------------------------------
class Client:
    """The provider's JSON API at `base_url`: place an order, read its status."""

    # Other JSON services (apps/knowledge's ingest and embeddings) reuse this client with their own header.
    token_header = TOKEN_HEADER
    user_agent = USER_AGENT

    def __init__(self, base_url, token, connect_timeout, read_timeout):
        parts = urlsplit(base_url)
        self.base_url = base_url
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.token = token
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        # One keep-alive connection per thread; with gevent's patch, per greenlet.
        self._local = threading.local()

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
            raise RetryableError(f"POST /v1/orders: answer without a reference: {_excerpt(reply)}")
        ready_in = reply.get("ready_in")
        usable = isinstance(ready_in, (int, float)) and not isinstance(ready_in, bool) and ready_in >= 0
        return {**reply, "ready_in": float(ready_in) if usable else None}

    def order_status(self, reference):
        """The order's `status` (pending, processing, completed, failed), `pin_code` and `message`."""
        reply = self._call("GET", f"/v1/orders/{quote(reference, safe='')}")
        status = reply.get("status")
        if status not in PROVIDER_STATUSES or (status == "completed" and not reply.get("pin_code")):
            raise RetryableError(f"GET /v1/orders/{reference}: answer without a usable status: {_excerpt(reply)}")
        return reply

    # -- HTTP ------------------------------------------------------------------
    def _call(self, method, path, body=None, headers=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json", "User-Agent": self.user_agent, self.token_header: self.token, **(headers or {})}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            status, raw = self._send(method, self.prefix + path, data, headers)
        except TimeoutError:
            raise RetryableError(f"{method} {path}: no answer within {self.read_timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise RetryableError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        return _parse(method, path, status, raw)

    def _send(self, method, path, data, headers):
        """(status, body) over this thread's connection; a stale kept-alive one is replaced once."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                return self._exchange(conn, method, path, data, headers)
            except (ConnectionError, http.client.RemoteDisconnected):
                # The server closed the idle connection; a repeat is safe (GET, or POST
                # with an idempotency key).
                pass
        return self._exchange(self._connect(), method, path, data, headers)

    def _connect(self):
        self._local.conn = None
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = kind(self.host, self.port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except TimeoutError:
            conn.close()
            raise OSError(f"no connection to {self.host}:{self.port} within {self.connect_timeout:g} s") from None
        except OSError:
            conn.close()
            raise
        conn.sock.settimeout(self.read_timeout)
        return conn

    def _exchange(self, conn, method, path, data, headers):
        self._local.conn = None
        try:
            conn.request(method, path, body=data, headers=headers)
            reply = conn.getresponse()
            raw = reply.read(MAX_REPLY_BYTES + 1)
        except BaseException:
            conn.close()
            raise
        if reply.will_close or len(raw) > MAX_REPLY_BYTES or not reply.isclosed():
            conn.close()
        else:
            self._local.conn = conn
        return reply.status, raw


def _parse(method, path, status, raw):
    """The JSON object of a 2xx answer, or the right error for anything else."""
    if 200 <= status < 300:
        try:
            reply = json.loads(raw.decode("utf-8"))
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise RetryableError(f"{method} {path}: HTTP {status} with a body that is not a JSON object: {raw[:100]!r}")
        return reply
    message = _message(raw)
    if status >= 500 or status in (408, 429):
        raise RetryableError(f"{method} {path}: HTTP {status}: {message}")
    raise PermanentError(status, message)


def _message(raw):
    """The provider's own words from an error body: error.message, error or message, else the text."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        for value in (error, body.get("message")):
            if isinstance(value, str) and value:
                return value
    text = raw[:300].decode("utf-8", "replace").strip()
    return text or "no message"


def _excerpt(value):
    return json.dumps(value)[:200]


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


class SandboxFault(BaseModel):
    """A fault injected into the sandbox: the next `remaining` calls to `target`
    (create, status or any) answer `status`, or answer `delay_ms` late."""

    target = CharField(default="any")
    status = IntegerField(null=True)
    delay_ms = IntegerField(default=0)
    remaining = IntegerField(default=1)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "sandbox_fault"

    @classmethod
    def take(cls, target):
        """Use up one call of the oldest fault for `target`; None when there is none."""
        # Every sandbox call asks, and almost always finds none: a plain statement is cheapest.
        sql = 'SELECT * FROM "sandbox_fault" WHERE "target" IN ({p}, {p}) AND "remaining" > 0 ORDER BY "id"'
        for fault in list(cls.raw(sql.format(p=db.param), target, "any")):
            used = cls.update(remaining=cls.remaining - 1).where((cls.id == fault.id) & (cls.remaining > 0)).execute()
            if used:
                return fault
        return None

    def to_dict(self):
        return {
            "id": str(self.id),
            "target": self.target,
            "status": self.status,
            "delay_ms": self.delay_ms,
            "remaining": self.remaining,
        }


# -- The sandbox provider ------------------------------------------------------------
sandbox = Bottle()


def _answer(status, body=None):
    text = "" if body is None else json.dumps(body)
    return HTTPResponse(text, status=status, headers={"Content-Type": "application/json; charset=utf-8"})


def _refusal(status, code, message):
    return _answer(status, {"error": {"code": code, "message": message}})


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
                return _refusal(401, "unauthorized", f"missing or wrong {TOKEN_HEADER} header")
            time.sleep(settings.SANDBOX_LATENCY_MS / 1000)
            fault = SandboxFault.take(target)
            if fault is not None and fault.status:
                return _refusal(fault.status, "injected", f"sandbox: injected fault (HTTP {fault.status})")
            if random.random() < settings.SANDBOX_FAILURE_RATE:
                return _refusal(500, "unavailable", "sandbox: simulated failure (SANDBOX_FAILURE_RATE)")
            answer = handler(*args, **kwargs)
            if fault is not None and fault.delay_ms:
                # The work is done but the answer comes late: a client that gave up
                # must not create the order twice when it asks again.
                time.sleep(fault.delay_ms / 1000)
            return answer

        return wrapper

    return decorator


def _read_object():
    raw = request.body.read(MAX_REPLY_BYTES)
    try:
        body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _order_request(body):
    """(the order's fields, or None) and the refusal for a bad one."""
    fields = {}
    for name in ("product_id", "package_id", "user_identifier"):
        value = body.get(name)
        if not isinstance(value, str) or not value.strip():
            return None, _refusal(422, "invalid", f"{name} is required and must be a non-empty string")
        fields[name] = value
    extra = body.get("extra_field")
    if extra is not None and not isinstance(extra, str):
        return None, _refusal(422, "invalid", "extra_field must be a string")
    fields["extra_field"] = extra
    # Magic values, as sandboxes have: an unknown account is refused at once.
    if fields["user_identifier"].lower().startswith("invalid"):
        return None, _refusal(422, "unknown_account", f"no account {fields['user_identifier']!r} for this product")
    return fields, None


def _new_pin():
    return "-".join(f"{secrets.randbelow(10000):04d}" for _ in range(4))


@sandbox.post("/v1/orders")
@sandbox_call("create")
def sandbox_create_order():
    """Place an order; the Idempotency-Key header makes a repeat return the same order."""
    key = request.get_header("Idempotency-Key")
    if not key:
        return _refusal(400, "idempotency_key_required", "send an Idempotency-Key header")
    body = _read_object()
    if body is None:
        return _refusal(400, "bad_json", "body must be a JSON object")
    fields, refusal = _order_request(body)
    if refusal is not None:
        return refusal
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
        return _refusal(409, "idempotency_key_reused", f"Idempotency-Key {key!r} was used for another order")
    return _answer(201 if created else 200, order.to_dict(utcnow()))


@sandbox.get("/v1/orders/<reference>")
@sandbox_call("status")
def sandbox_order_status(reference):
    """An order's status; the PIN once completed."""
    order = SandboxOrder.find(reference)
    if order is None:
        return _refusal(404, "not_found", f"no order with reference {reference!r}")
    return _answer(200, order.to_dict(utcnow()))


@sandbox.post("/v1/faults")
def sandbox_add_fault():
    """Inject a fault: the next `times` calls to `target` answer `status` or come `delay_ms` late."""
    if not _authorized():
        return _refusal(401, "unauthorized", f"missing or wrong {TOKEN_HEADER} header")
    body = _read_object()
    if body is None:
        return _refusal(400, "bad_json", "body must be a JSON object")
    target = body.get("target", "any")
    status = body.get("status")
    delay_ms = body.get("delay_ms", 0)
    times = body.get("times", 1)
    if target not in ("create", "status", "any"):
        return _refusal(422, "invalid", "target must be create, status or any")
    if status is not None and not (_whole(status) and 400 <= status <= 599):
        return _refusal(422, "invalid", "status must be an HTTP error status, 400 to 599")
    if not (_whole(delay_ms) and 0 <= delay_ms <= 60000) or not (_whole(times) and 1 <= times <= 100000):
        return _refusal(422, "invalid", "delay_ms must be 0 to 60000 and times 1 to 100000")
    if status is None and not delay_ms:
        return _refusal(422, "invalid", "give a status, a delay_ms, or both")
    fault = SandboxFault.create(target=target, status=status, delay_ms=delay_ms, remaining=times)
    return _answer(201, fault.to_dict())


@sandbox.delete("/v1/faults")
def sandbox_clear_faults():
    """Remove every injected fault."""
    if not _authorized():
        return _refusal(401, "unauthorized", f"missing or wrong {TOKEN_HEADER} header")
    SandboxFault.delete().execute()
    return _answer(204)


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


@sandbox.hook("before_request")
def _open_connection():
    db.connect(reuse_if_open=True)


@sandbox.hook("after_request")
def _close_connection():
    if not db.is_closed() and not db.in_transaction():
        db.close()


def _sandbox_error(error):
    """The sandbox's own errors stay JSON, like a provider's."""
    message = "internal error" if error.status_code >= 500 else f"{error.status_code}: {error.status_line}"
    if error.status_code >= 500:
        logger.error("sandbox request %s %s failed: %s", request.method, request.path, error.exception)
    response.content_type = "application/json; charset=utf-8"
    return json.dumps({"error": {"code": "http_" + str(error.status_code), "message": message}})


for _status in (400, 404, 405, 413, 500):
    sandbox.error(_status)(_sandbox_error)
