"""litejobs api: what every JSON route needs, for the engine's routes and the apps'.

`router(bottle_app)` gives the `@api(path, method, public=False)` decorator:
rate limit, API-key auth, JSON in and out, and errors in one shape
(`{"error": {"code", "message", "field"?}}`). Handlers read input with
`read_json()` and `query_number()`, find rows with `get_or_404()`, and raise
`ApiError` for anything the API's error table names; `text_field()` refuses
control characters. Apps import this module, never web.py.
"""

import ipaddress
import json
import logging
import os
import re
import time
from html import escape

from bottle import HTTPResponse, request, response
from peewee import PeeweeException

import guard
import dburl
import jobs
import runs
import limits
import models
import settings
from models import ApiKey, Job

logger = logging.getLogger("litejobs.web")


# -- JSON helpers --------------------------------------------------------------
class ApiError(Exception):
    """An error answered in the JSON error shape of the API."""

    def __init__(self, status, code, message, field=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers or {}


def json_response(status, body, headers=None):
    # Bytes, so bottle need not look the charset up in Content-Type to encode it.
    return HTTPResponse(
        guard.dumps(body, ensure_ascii=False).encode(),
        status=status,
        headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})},
    )


def error_body(code, message, field=None):
    error = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def is_api_path(path):
    return path.startswith(("/api/", "/health/")) or path == "/metrics"


# -- Body caps: checked from Content-Length (and while reading a chunked body) before any handler
_large_bodies = []  # (compiled path pattern, fn() -> the route's limit in bytes)


def allow_large_body(pattern, limit):
    """Let requests to paths matching `pattern` send up to `limit()` bytes (an upload route)."""
    _large_bodies.append((re.compile(pattern), limit))


def body_limit(path):
    """The largest body a request to `path` may send: MAX_BODY_BYTES on the API, 64 KiB for
    dashboard forms and the login; only routes that asked (allow_large_body) take more."""
    for pattern, limit in _large_bodies:
        if pattern.fullmatch(path):
            return limit()
    if is_api_path(path) or path.startswith("/sandbox/"):
        return settings.MAX_BODY_BYTES
    return guard.FORM_MAX_BYTES


def read_json():
    """The request body as a dict; an empty body is {}."""
    length = request.content_length
    if length > settings.MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"body is {length} bytes; the limit is {settings.MAX_BODY_BYTES} (MAX_BODY_BYTES)")
    raw = request.body.read(settings.MAX_BODY_BYTES + 1)
    if len(raw) > settings.MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"body is over the limit of {settings.MAX_BODY_BYTES} bytes (MAX_BODY_BYTES)")
    if not raw.strip():
        return {}
    try:
        body = guard.loads(raw.decode("utf-8"))
    except guard.Refused as exc:
        raise ApiError(exc.status, exc.code, exc.message, exc.field) from None
    except UnicodeDecodeError:
        raise ApiError(400, "bad_json", "body is not valid UTF-8") from None
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", f"body must be a JSON object, got {type(body).__name__}")
    return body


def query_number(name, low, high, kind=float, default=None):
    """A numeric query parameter within [low, high], or 422 naming it."""
    if not request.environ.get("QUERY_STRING"):
        return default  # most calls have none: no parsing at all
    raw = request.query.getunicode(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ApiError(422, "invalid_argument", f"{name}: expected {kind.__name__}, got {raw[:50]!r}", name) from None
    if value != value or (low is not None and value < low) or (high is not None and value > high):
        raise ApiError(422, "invalid_argument", f"{name}: must be from {low} to {high}, got {raw[:50]}", name)
    return value


def router(app):
    """The `@api(path, method="GET", public=False, admin=False)` decorator routing handlers on bottle `app`."""

    def api(path, method="GET", public=False, admin=False):
        """Route an API handler: auth, JSON in and out, errors in one shape.

        A key of scope "read" may only GET; `admin=True` routes need an admin key for reading too.
        """
        return _decorator(app, path, method, public, admin)

    return api


def _decorator(app, path, method, public, admin=False):
    limited = path.startswith("/api/")

    def decorator(handler):
        def wrapper(*args, **kwargs):
            try:
                environ = request.environ
                if limited:
                    address = environ.get("litejobs.client_address")  # web.py's before_request found it
                    check_rate("ip", client_address() if address is None else address, settings.RATE_LIMIT_PER_IP)
                if not public:
                    environ["litejobs.api_key"] = authenticate()
                    check_scope(admin)
                result = handler(*args, **kwargs)
            except ApiError as exc:
                return json_response(exc.status, error_body(exc.code, exc.message, exc.field), exc.headers)
            except guard.Refused as exc:
                return json_response(exc.status, error_body(exc.code, exc.message, exc.field))
            except jobs.ArgumentError as exc:
                return json_response(422, error_body("invalid_argument", str(exc), exc.field))
            except jobs.Conflict as exc:
                return json_response(409, error_body("conflict", str(exc)))
            except jobs.InsufficientStorage as exc:
                return json_response(507, error_body("insufficient_storage", str(exc)))
            except (jobs.Unavailable, PeeweeException) as exc:
                logger.warning("request %s: unavailable: %s", request_id(), exc)
                cause = exc.__cause__ or exc
                exhausted = dburl.pool_exhausted(exc)  # litejobs' own words, not a driver's
                if runs.is_connection_error(cause) and not exhausted:
                    runs.reset_connection()  # a cut connection: the next request opens a new one
                # The driver's words (hosts, users, paths) go to the log, not to a caller without a key.
                shown = exhausted or current_key() is not None
                message = str(exc) if shown else f"database or queue unavailable; request id {request_id()}"
                return json_response(503, error_body("unavailable", message))
            status, body = result if isinstance(result, tuple) else (200, result)
            if isinstance(body, HTTPResponse):
                return body
            return json_response(status, body)

        wrapper.__doc__ = handler.__doc__
        app.route(path, method, wrapper, name=handler.__name__)
        return handler

    return decorator


# Every API call looks its key up: a key found is remembered for this many seconds,
# which saves the key query per request (bench/, issue 7). A cached key is trusted
# only while KeyRevision.token(), which every revoke through litejobs changes, is
# unchanged: a revoke works at once in every web process.
AUTH_CACHE_SECONDS = 5.0
_auth_cache = {}  # (database, SHA-256 of the key) -> (ApiKey row, monotonic expiry, key revision)
key_calls = models.CallCounter()


def authenticate():
    header = request_header("Authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else request_header("X-API-Key", "")
    row = _known_key(key)
    if row is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong API key; send Authorization: Bearer <key> (create one with: python web.py create-key NAME)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    check_rate("key", row.id, settings.RATE_LIMIT_PER_KEY)
    key_calls.count(row.id)
    return row


def _known_key(key):
    """ApiKey.authenticate(key), remembered for AUTH_CACHE_SECONDS; unknown keys are not remembered."""
    if not key:
        return None
    cache_key = (models.db.obj, ApiKey.hash(key))
    row, expires, seen = _auth_cache.get(cache_key, (None, 0.0, None))
    now = time.monotonic()
    revision = models.KeyRevision.token()  # read before the key, so a revoke in between is not missed
    if row is not None and now < expires and revision == seen:
        return row
    row = ApiKey.authenticate(key)
    if row is not None:
        if len(_auth_cache) > 10_000:
            _auth_cache.clear()  # keys seen over the last few seconds come back at their next call
        _auth_cache[cache_key] = (row, now + AUTH_CACHE_SECONDS, revision)
    return row


def forget_keys():
    """Empty this process's key cache (after a revoke; other processes see KeyRevision)."""
    _auth_cache.clear()


def check_scope(admin=False):
    """403 for a read key on a write, or on an admin-only route."""
    key = current_key()
    if key.scope != "admin" and (admin or request.method not in ("GET", "HEAD")):
        raise ApiError(
            403,
            "forbidden",
            f"API key {key.prefix}… has scope {key.scope!r}: it may only read; this needs an admin key "
            "(python web.py create-key NAME --scope admin)",
        )


def is_admin_key():
    """Whether this request's API key may see secrets (PINs): an admin key."""
    key = current_key()
    return key is not None and key.scope == "admin"


def is_loopback(address):
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


# -- Hardening: rate limits, trusted hosts, CORS, security headers --------------
limiter = limits.Limiter.from_settings()

# One policy for the API and the dashboard: its own scripts, styles and images
# only, no framing. Inline styles stay allowed for server-drawn charts and bars.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, X-API-Key, Content-Type, Idempotency-Key",
    "Access-Control-Max-Age": "600",
}


def check_rate(scope, ident, limit):
    """Count this request against `limit` a minute; 429 with Retry-After when over."""
    wait = limiter.hit(scope, ident, limit)
    if wait:
        whose = "API key" if scope == "key" else "client address"
        raise ApiError(
            429,
            "rate_limited",
            f"over {limit} requests a minute for this {whose}; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )


def client_address():
    """The client's address; behind a trusted proxy, the last X-Forwarded-For hop it did not add."""
    remote = request.environ.get("REMOTE_ADDR", "")
    forwarded = request.environ.get("HTTP_X_FORWARDED_FOR", "")
    if not forwarded or remote not in settings.TRUSTED_PROXIES:
        return remote
    hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
    untrusted = [hop for hop in hops if hop not in settings.TRUSTED_PROXIES]
    return untrusted[-1] if untrusted else (hops[0] if hops else remote)


def host_allowed(host):
    """Whether the Host header names one of TRUSTED_HOSTS (`*.example.com` for subdomains)."""
    if not settings.TRUSTED_HOSTS:
        return True
    name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    name = name.lower().rstrip(".")
    for allowed in settings.TRUSTED_HOSTS:
        allowed = allowed.lower()
        if allowed == "*" or name == allowed or (allowed.startswith("*.") and name.endswith(allowed[1:])):
            return True
    return False


def cors_origin():
    """The request's Origin when CORS_ORIGINS lets it call /api/v1, else None."""
    origin = request_header("Origin")
    if origin and request.path.startswith("/api/v1/"):
        if "*" in settings.CORS_ORIGINS or origin in settings.CORS_ORIGINS:
            return origin
    return None


def error_response(status, code, message):
    """An error in the API's JSON shape on API paths, a plain HTML page elsewhere."""
    if is_api_path(request.path):
        return json_response(status, error_body(code, message))
    return HTTPResponse(html_error(status, message), status=status, headers={"Content-Type": "text/html; charset=utf-8"})


def html_error(status, message):
    """The plain HTML page of an error outside the API."""
    return f"<!doctype html><title>{status}</title><h1>{status}</h1><p>{escape(message)}</p>"


def add_security_headers():
    # bottle's own dict of the response's headers, under the names as bottle writes them
    # (Title-Case, as SECURITY_HEADERS are): no name normalised four times per request.
    headers = response.headers.dict
    for name, value in SECURITY_HEADERS.items():
        if name not in headers:  # a page may set its own, stricter one
            headers[name] = [value]


def request_header(name, default=None):
    """request.get_header(name, default), read straight from the environ when the value is
    ASCII (nearly always), so no header view is built and no value decoded per request."""
    value = request.environ.get("HTTP_" + name.upper().replace("-", "_"))
    if value is None:
        return default
    if value.isascii():
        return value
    return request.get_header(name, default)  # bottle reads the bytes gevent gave as latin-1 again as UTF-8


def request_id():
    environ = request.environ
    found = environ.get("litejobs.request_id")
    if found is None:
        found = environ["litejobs.request_id"] = os.urandom(6).hex()  # 12 hex digits, as uuid4().hex[:12] gave
    return found


def current_key():
    return request.environ.get("litejobs.api_key")


def get_or_404(model, value, what=None, field=None):
    """The row of `model` whose `field` (default: its id) is `value`, or 404 in the API's shape."""
    field = field or model._meta.primary_key
    row = model.get_or_none(field == value)
    if row is None:
        raise ApiError(404, "not_found", f"no {what or model.__name__.lower()} with id {value!r}")
    return row


def get_job(job_id):
    job = Job.get_or_none(Job.id == job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job with id {job_id!r}")
    return job


# -- Reading ids and fields of a request ------------------------------------------
def parse_id(raw):
    """A database id from a path or body value ("12" or 12), or None."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return int(raw)
    return None


def row_or_404(model, raw_id, what):
    """The `model` row whose id is in the path, or 404."""
    row_id = parse_id(raw_id)
    row = None if row_id is None else model.get_or_none(model.id == row_id)
    if row is None:
        raise ApiError(404, "not_found", f"no {what} with id {raw_id!r}")
    return row


def ref_field(body, field, model, what):
    """The `model` row that body field `field` names, or 422 naming the field."""
    if field not in body:
        raise ApiError(422, "invalid_argument", f"{field}: missing required field", field)
    row_id = parse_id(body[field])
    if row_id is None:
        raise ApiError(422, "invalid_argument", f"{field}: expected an id such as \"12\", got {json.dumps(body[field])}", field)
    row = model.get_or_none(model.id == row_id)
    if row is None:
        raise ApiError(422, "invalid_argument", f"{field}: no {what} with id {str(row_id)!r}", field)
    return row


def text_field(value, field, limit=200, multiline=False):
    """A trimmed non-empty string of at most `limit` characters, with no control characters
    (line breaks and tabs allowed when `multiline`): it may reach a mail header, a PDF or a log line."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "invalid_argument", f"{field}: expected a non-empty string, got {json.dumps(value)[:50]}", field)
    if len(value.strip()) > limit:
        raise ApiError(422, "invalid_argument", f"{field}: at most {limit} characters, got {len(value.strip())}", field)
    return guard.check_text(value.strip(), field, multiline)


def no_unknown_fields(body, known):
    for name in body:
        if name not in known:
            raise ApiError(422, "invalid_argument", f"{name}: unknown field; expected {', '.join(known)}", name)
