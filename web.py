"""litejobs web: the Bottle app (JSON API, health) and the command line.

`python web.py run` serves the app with gevent and runs a consumer in the
same process; `python web.py create-key NAME` makes an API key.
"""

if __name__ == "__main__":
    # gevent must patch the standard library before anything else imports it.
    from gevent import monkey

    monkey.patch_all()

import argparse
from html import escape
import hmac
import ipaddress
import json
import logging
import re
import sys
import time
import uuid

from bottle import BaseRequest, Bottle, HTTPResponse, MultipartError, request, response, static_file
from peewee import IntegrityError, PeeweeException

import analytics
import courses
import dashboard
import guard
import jobs
import limits
import media
import metrics
import models
import openapi
import orders
import provider
import schedules
import settings
import webhooks
from models import ApiKey, Job, User, Worker

logger = logging.getLogger("litejobs.web")

BaseRequest.MEMFILE_MAX = settings.MAX_BODY_BYTES
app = Bottle()


# -- JSON helpers --------------------------------------------------------------
class ApiError(Exception):
    """An error answered in the JSON error shape of the API."""

    def __init__(self, status, code, message, field=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers or {}


def json_response(status, body, headers=None):
    return HTTPResponse(
        guard.dumps(body, ensure_ascii=False),
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


def api(path, method="GET", public=False, admin=False):
    """Route an API handler: auth, JSON in and out, errors in one shape.

    A key of scope "read" may only GET; `admin=True` routes need an admin key for reading too.
    """

    def decorator(handler):
        def wrapper(*args, **kwargs):
            try:
                if path.startswith("/api/"):
                    check_rate("ip", client_address(), settings.RATE_LIMIT_PER_IP)
                if not public:
                    request.environ["litejobs.api_key"] = authenticate()
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
            except (jobs.Unavailable, PeeweeException) as exc:
                logger.warning("request %s: unavailable: %s", request_id(), exc)
                # The driver's words (hosts, users, paths) go to the log, not to a caller without a key.
                message = str(exc) if current_key() is not None else f"database or queue unavailable; request id {request_id()}"
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
# only while KeyRevision, which every revoke through litejobs bumps, is unchanged:
# a revoke works at once in every web process.
AUTH_CACHE_SECONDS = 5.0
_auth_cache = {}  # (database, SHA-256 of the key) -> (ApiKey row, monotonic expiry, key revision)
key_calls = models.CallCounter()


def authenticate():
    header = request.get_header("Authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else request.get_header("X-API-Key", "")
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
    revision = models.KeyRevision.current()  # read before the key, so a revoke in between is not missed
    if row is not None and now < expires and revision == seen:
        return row
    row = ApiKey.authenticate(key)
    if row is not None:
        if len(_auth_cache) > 10_000:
            _auth_cache.clear()  # keys seen over the last few seconds come back at their next call
        _auth_cache[cache_key] = (row, now + AUTH_CACHE_SECONDS, revision)
    return row


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
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
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
    origin = request.get_header("Origin")
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


@app.hook("before_request")
def check_host_and_preflight():
    """Refuse unknown Host names; answer CORS preflight requests for /api/v1."""
    path = request.path
    # Health checks and scrapes come straight to the process, by address.
    if not path.startswith(("/health/", "/metrics")) and not host_allowed(request.get_header("Host", "")):
        raise error_response(400, "bad_host", "this Host is not in TRUSTED_HOSTS")
    if request.method == "OPTIONS" and path.startswith("/api/v1/") and request.get_header("Origin"):
        origin = cors_origin()
        if origin is None:
            raise error_response(403, "forbidden", f"origin {request.get_header('Origin')[:100]!r} is not in CORS_ORIGINS")
        raise HTTPResponse(status=204, headers={"Access-Control-Allow-Origin": origin, "Vary": "Origin", **CORS_HEADERS})


@app.hook("after_request")
def finish_response():
    """Security and CORS headers on every answer; count it for /metrics."""
    add_security_headers()
    origin = cors_origin()
    if origin is not None:
        response.set_header("Access-Control-Allow-Origin", origin)
        response.set_header("Access-Control-Expose-Headers", "Location, Retry-After, X-Request-Id")
        response.add_header("Vary", "Origin")
    route = request.environ.get("bottle.route")
    # An exception still in flight here becomes bottle's 500 right after this hook.
    status = 500 if sys.exc_info()[1] is not None else response.status_code
    metrics.count_request(route.rule if route else None, request.method, status)


def add_security_headers():
    for name, value in SECURITY_HEADERS.items():
        if name not in response.headers:  # a page may set its own, stricter one
            response.set_header(name, value)


def request_id():
    if "litejobs.request_id" not in request.environ:
        request.environ["litejobs.request_id"] = uuid.uuid4().hex[:12]
    return request.environ["litejobs.request_id"]


def current_key():
    return request.environ.get("litejobs.api_key")


def get_job(job_id):
    job = Job.get_or_none(Job.id == job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job with id {job_id!r}")
    return job


# -- Bodies: a cap per route, forms parsed before any handler -----------------------
UPLOAD_PATH = re.compile(r"/api/v1/posts/[^/]+/media")


def body_limit(path):
    """The largest body a request to `path` may send: only the upload route takes UPLOAD_MAX_MB."""
    if UPLOAD_PATH.fullmatch(path):
        return settings.UPLOAD_MAX_MB * 1024 * 1024 + UPLOAD_OVERHEAD
    if is_api_path(path) or path.startswith("/sandbox/"):
        return settings.MAX_BODY_BYTES
    return guard.FORM_MAX_BYTES  # dashboard forms and the login


@app.hook("before_request")
def check_body():
    """Refuse a body over the route's cap before reading it; a malformed form is a 400, not a 500."""
    try:
        guard.cap_body(request.environ, body_limit(request.path))
        if request.method == "POST" and not is_api_path(request.path) and not request.path.startswith("/sandbox/"):
            guard.parse_form(request)
    except guard.Refused as exc:
        raise error_response(exc.status, exc.code, exc.message) from None


@app.hook("after_request")
def close_body_files():
    guard.close_files(request.environ)


# -- Connections and errors ------------------------------------------------------
@app.hook("before_request")
def open_connection():
    request_id()
    # The dashboard's login throttle counts per client, behind a proxy too.
    request.environ["litejobs.client_address"] = client_address()
    try:
        models.db.connect(reuse_if_open=True)
    except PeeweeException:
        pass  # Handlers that need the database answer 503 themselves.


@app.hook("after_request")
def close_connection():
    response.set_header("X-Request-Id", request_id())
    if not models.db.is_closed() and not models.db.in_transaction():
        models.db.close()


def _error_page(error):
    status = error.status_code
    response.set_header("X-Request-Id", request_id())
    add_security_headers()  # a 500 from an exception skipped finish_response's headers
    if status >= 500:
        logger.error("request %s failed: %s\n%s", request_id(), error.exception, error.traceback or "")
    codes = {400: "bad_json", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
    if status >= 500:
        message = f"internal error; request id {request_id()}"
    elif status == 405:
        message = f"method {request.method} not allowed; use {error.headers.get('Allow', '')}"
    elif status == 404:
        message = f"no such path: {request.path}"
    else:
        message = str(error.body)
    if is_api_path(request.path):
        response.content_type = "application/json; charset=utf-8"
        return json.dumps(error_body(codes.get(status, "internal"), message))
    response.content_type = "text/html; charset=utf-8"
    return html_error(status, message)


for _status in (400, 401, 403, 404, 405, 413, 500):
    app.error(_status)(_error_page)


# -- Functions and jobs ------------------------------------------------------------
@api("/api/v1/functions")
def list_functions():
    """The public job functions with their parameters."""
    return {"functions": [f.to_dict() for f in jobs.public_functions()]}


@api("/api/v1/jobs/<name>", "POST")
def invoke(name):
    """Enqueue a call of function `name` with the JSON body as its arguments."""
    function = jobs.FUNCTIONS.get(name)
    if function is None or not function.public:
        raise ApiError(404, "not_found", f"no job function {name!r}; see GET /api/v1/functions")
    args = read_json()
    wait = query_number("wait", 0, 30)
    delay = query_number("delay", 0, 366 * 86400)
    priority = query_number("priority", -1000, 1000, int)
    eta = None
    if request.query.getunicode("eta"):
        try:
            eta = models.parse_time(request.query.getunicode("eta"))
        except ValueError:
            raise ApiError(422, "invalid_argument", "eta: expected an ISO 8601 time such as 2026-11-22T09:00:00Z", "eta") from None
        if delay is not None:
            raise ApiError(422, "invalid_argument", "eta: give either delay or eta, not both", "eta")
    key = current_key()
    idempotency_key = request.get_header("Idempotency-Key")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
        raise ApiError(422, "invalid_argument", "Idempotency-Key: must be 1 to 200 characters", "Idempotency-Key")
    job, created = jobs.submit(
        name, args, delay=delay, eta=eta, priority=priority, api_key_id=key.id, idempotency_key=idempotency_key
    )
    if not created:
        return 200, job.to_dict()
    if wait:
        job = jobs.wait(job.id, wait)
        if job.is_terminal:
            return 200, job.to_dict()
    return json_response(202, job.to_dict(), {"Location": f"/api/v1/jobs/{job.id}"})


@api("/api/v1/jobs/<job_id>")
def show_job(job_id):
    """One job."""
    return get_job(job_id).to_dict()


@api("/api/v1/jobs")
def list_jobs():
    """Jobs newest first, filtered by function and status, a page at a time."""
    status = request.query.getunicode("status") or None
    if status is not None and status not in models.STATUSES:
        raise ApiError(
            422, "invalid_argument", f"status: expected one of {', '.join(models.STATUSES)}, got {status[:50]!r}", "status"
        )
    limit = query_number("limit", 1, 200, int, default=50)
    try:
        rows, cursor = Job.page(request.query.getunicode("name") or None, status, limit, request.query.getunicode("cursor"))
    except ValueError:
        raise ApiError(422, "invalid_argument", "cursor: not a cursor returned by this API", "cursor") from None
    return {"jobs": [job.to_dict() for job in rows], "next": cursor}


@api("/api/v1/jobs/<job_id>/cancel", "POST")
def cancel_job(job_id):
    """Cancel a waiting job, or ask a running one to stop."""
    return jobs.cancel(get_job(job_id)).to_dict()


@api("/api/v1/jobs/<job_id>/retry", "POST")
def retry_job(job_id):
    """Run a finished job again as a new job."""
    new = jobs.retry(get_job(job_id), api_key_id=current_key().id)
    return json_response(202, new.to_dict(), {"Location": f"/api/v1/jobs/{new.id}"})


@api("/api/v1/queues")
def list_queues():
    """Every configured queue: priority, depth, running, oldest wait and concurrency limit."""
    return {"queues": jobs.queues()}


@api("/api/v1/workers")
def list_workers():
    """Consumers, alive or recently seen, with the jobs they run."""
    workers = list(Worker.select().order_by(Worker.started_at.desc()).limit(100))
    running = {}
    for job in Job.running_on([w.id for w in workers]):
        running.setdefault(job.consumer_id, []).append(job.id)
    return {"workers": [w.to_dict(running.get(w.id, [])) for w in workers]}


# -- Media and courses ------------------------------------------------------------
def _parse_id(raw):
    """A database id from a path or body value ("12" or 12), or None."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 18:
        return int(raw)
    return None


def _row(model, raw_id, what):
    """The `model` row whose id is in the path, or 404."""
    row_id = _parse_id(raw_id)
    row = None if row_id is None else model.get_or_none(model.id == row_id)
    if row is None:
        raise ApiError(404, "not_found", f"no {what} with id {raw_id!r}")
    return row


def _ref(body, field, model, what):
    """The `model` row that body field `field` names, or 422 naming the field."""
    if field not in body:
        raise ApiError(422, "invalid_argument", f"{field}: missing required field", field)
    row_id = _parse_id(body[field])
    if row_id is None:
        raise ApiError(422, "invalid_argument", f"{field}: expected an id such as \"12\", got {json.dumps(body[field])}", field)
    row = model.get_or_none(model.id == row_id)
    if row is None:
        raise ApiError(422, "invalid_argument", f"{field}: no {what} with id {str(row_id)!r}", field)
    return row


def _text(value, field, limit=200, multiline=False):
    """A trimmed non-empty string of at most `limit` characters, with no control characters
    (line breaks and tabs allowed when `multiline`): it may reach a mail header, a PDF or a log line."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "invalid_argument", f"{field}: expected a non-empty string, got {json.dumps(value)[:50]}", field)
    if len(value.strip()) > limit:
        raise ApiError(422, "invalid_argument", f"{field}: at most {limit} characters, got {len(value.strip())}", field)
    return guard.check_text(value.strip(), field, multiline)


def _no_unknown_fields(body, known):
    for name in body:
        if name not in known:
            raise ApiError(422, "invalid_argument", f"{name}: unknown field; expected {', '.join(known)}", name)


# Room for the multipart boundaries and part headers around the file itself.
UPLOAD_OVERHEAD = 64 * 1024


@api("/api/v1/posts/<post_id>/media", "POST")
def upload_media(post_id):
    """Upload an image to a post (multipart, field `file`); its renditions are made in the background."""
    post = _row(analytics.Post, post_id, "post")
    limit = settings.UPLOAD_MAX_MB * 1024 * 1024
    too_large = f"the upload limit is {settings.UPLOAD_MAX_MB} MiB (UPLOAD_MAX_MB)"
    # Refused before reading a byte; a body just over the limit is read and measured below.
    if request.content_length > limit + UPLOAD_OVERHEAD:
        raise ApiError(413, "too_large", f"body is {request.content_length} bytes; {too_large}")
    upload = _uploaded_file()
    head = upload.file.read(16)
    upload.file.seek(0)
    if media.sniff_format(head) is None:
        name = upload.raw_filename or "the file"
        raise ApiError(422, "invalid_argument", f"file: {name!r} is not a JPEG, PNG, WebP or GIF image", "file")
    token = analytics.Media.new_token()
    original = settings.INCOMING_DIR / token
    try:
        size = media.store_upload(upload.file, original, limit)
    except media.UploadTooLarge:
        raise ApiError(413, "too_large", f"file is over {settings.UPLOAD_MAX_MB} MiB; {too_large}") from None
    try:
        item = analytics.Media.create(post=post, token=token, filename=guard.strip_control(upload.raw_filename or "")[:200], size_bytes=size)
        try:
            job = jobs.enqueue("process_media_upload", media_id=item.id)
        except jobs.Unavailable:
            item.delete_instance()
            raise
    except BaseException:
        original.unlink(missing_ok=True)  # nothing half-written stays: no row, no file
        raise
    item.set_job(job.id)
    return json_response(202, item.accepted_dict(), {"Location": f"/api/v1/media/{item.id}"})


def _uploaded_file():
    """The multipart field `file` as a bottle FileUpload, or 422 naming the field."""
    if not request.content_type.lower().startswith("multipart/form-data"):
        raise ApiError(422, "invalid_argument", "file: send the image as multipart/form-data in a field named file", "file")
    try:
        upload = request.files.get("file")
    except (MultipartError, ValueError) as exc:  # bottle's own is an HTML 400; a control character in a part header is a ValueError
        detail = getattr(exc, "body", None) or str(exc)
        raise ApiError(422, "invalid_argument", f"file: the multipart body is malformed ({str(detail)[:100]})", "file") from None
    if upload is None:
        raise ApiError(422, "invalid_argument", "file: missing; send the image in a multipart field named file", "file")
    return upload


@api("/api/v1/posts/<post_id>")
def show_post(post_id):
    """A post with its counts and its media."""
    post = _row(analytics.Post, post_id, "post")
    return {**post.to_dict(), "media": [item.to_dict() for item in analytics.Media.of_post(post.id)]}


@api("/api/v1/media/<media_id>")
def show_media(media_id):
    """An upload: processing, ready with its rendition URLs, or rejected with the reason."""
    return _row(analytics.Media, media_id, "media").to_dict()


@app.route("/uploads/<token:re:[A-Za-z0-9_-]{16,64}>/<name:re:(web|thumb_640|thumb_320)\\.webp>")
def upload_file(token, name):
    """A WebP rendition; its folder name is random and its content never changes."""
    reply = static_file(f"{token}/{name}", root=str(settings.UPLOAD_DIR), mimetype="image/webp")
    if reply.status_code in (200, 206, 304):
        reply.set_header("Cache-Control", "public, max-age=31536000, immutable")
        reply.set_header("X-Content-Type-Options", "nosniff")
    return reply


@api("/api/v1/courses", "POST")
def create_course():
    """Create a course with its lessons, in order."""
    body = read_json()
    _no_unknown_fields(body, ("title", "lessons"))
    title = _text(body.get("title"), "title")
    lessons = body.get("lessons")
    if not isinstance(lessons, list) or not 1 <= len(lessons) <= 500:
        raise ApiError(422, "invalid_argument", "lessons: expected a list of 1 to 500 lesson titles", "lessons")
    titles = [_text(title, "lessons") for title in lessons]
    return 201, courses.Course.create_with_lessons(title, titles).to_dict()


@api("/api/v1/courses/<course_id>")
def show_course(course_id):
    """One course with its lessons."""
    return _row(courses.Course, course_id, "course").to_dict()


@api("/api/v1/enrollments", "POST")
def create_enrollment():
    """Enroll a user in a course."""
    body = read_json()
    _no_unknown_fields(body, ("user_id", "course_id"))
    user = _ref(body, "user_id", User, "user")
    course = _ref(body, "course_id", courses.Course, "course")
    try:
        enrollment = courses.Enrollment.create(user=user, course=course)
    except IntegrityError:
        existing = courses.Enrollment.get((courses.Enrollment.user == user) & (courses.Enrollment.course == course))
        raise jobs.Conflict(f"user {user.id} is already enrolled in course {course.id} (enrollment {existing.id})") from None
    return 201, enrollment.to_dict()


@api("/api/v1/enrollments/<enrollment_id>")
def show_enrollment(enrollment_id):
    """An enrollment: its progress and, once earned, its certificate."""
    return _row(courses.Enrollment, enrollment_id, "enrollment").to_dict()


@api("/api/v1/enrollments/<enrollment_id>/lessons/<lesson_id>/complete", "POST")
def complete_lesson(enrollment_id, lesson_id):
    """Mark a lesson done; the progress is recomputed in the background."""
    enrollment = _row(courses.Enrollment, enrollment_id, "enrollment")
    lesson = _row(courses.Lesson, lesson_id, "lesson")
    if lesson.course_id != enrollment.course_id:
        raise ApiError(404, "not_found", f"course {enrollment.course_id} has no lesson with id {lesson_id!r}")
    enrollment.complete_lesson(lesson)
    # Enqueued on every call: a repeat is harmless, and it heals a recount lost to an outage.
    job = jobs.enqueue("recalculate_course_progress", enrollment_id=enrollment.id)
    return {**enrollment.to_dict(), "job_id": job.id}


@api("/api/v1/certificates/<code>")
def verify_certificate(code):
    """Check a certificate's verification code."""
    certificate = courses.Certificate.by_code(code)
    if certificate is None:
        raise ApiError(404, "not_found", f"no certificate with code {code[:50]!r}")
    return certificate.to_dict()


@app.route("/certificates-static/<filename:re:[A-Z0-9-]{4,40}\\.pdf>")
def certificate_file(filename):
    """A certificate PDF; its name is its verification code."""
    reply = static_file(filename, root=str(settings.CERTIFICATE_DIR), mimetype="application/pdf")
    if reply.status_code in (200, 206, 304):
        reply.set_header("Cache-Control", "private, max-age=86400")
        reply.set_header("X-Content-Type-Options", "nosniff")
    return reply


# -- Webhooks ----------------------------------------------------------------------
def get_webhook(webhook_id):
    # _parse_id: ASCII digits only ("²".isdigit() is True but int() rejects it) and small enough for SQLite.
    row_id = _parse_id(webhook_id)
    webhook = None if row_id is None else webhooks.Webhook.find_live(row_id)
    if webhook is None:
        raise ApiError(404, "not_found", f"no webhook with id {webhook_id!r}")
    return webhook


def read_webhook(body):
    """(url, events) of a webhook from a request body, or 422 naming the field."""
    unknown = sorted(set(body) - {"url", "events"})
    if unknown:
        raise ApiError(422, "invalid_argument", f"{unknown[0]}: unknown field; a webhook takes url and events", unknown[0])
    if "url" not in body:
        raise ApiError(422, "invalid_argument", "url: missing required field", "url")
    try:
        webhooks.check_url(body["url"], settings.WEBHOOK_ALLOW_PRIVATE)
    except webhooks.BadURL as exc:
        raise ApiError(422, "invalid_argument", f"url: {exc}", "url") from None
    events = body.get("events")
    known = ", ".join(webhooks.EVENTS)
    if not isinstance(events, list) or not events:
        raise ApiError(422, "invalid_argument", f"events: expected a non-empty list of event names ({known})", "events")
    for name in events:
        if name not in webhooks.EVENTS:
            shown = json.dumps(name)[:60]
            raise ApiError(422, "invalid_argument", f"events: unknown event {shown}; expected some of {known}", "events")
    return body["url"].strip(), list(dict.fromkeys(events))


@api("/api/v1/webhooks", "POST")
def create_webhook():
    """Subscribe a URL to events; the answer carries the signing secret, shown only this once."""
    url, events = read_webhook(read_json())
    webhook = webhooks.Webhook.subscribe(url, events)
    webhooks.forget_subscriptions()
    return json_response(201, webhook.to_dict(secret=True), {"Location": f"/api/v1/webhooks/{webhook.id}"})


@api("/api/v1/webhooks")
def list_webhooks():
    """The live webhooks, without their secrets."""
    return {"webhooks": [webhook.to_dict() for webhook in webhooks.Webhook.live()]}


@api("/api/v1/webhooks/<webhook_id>")
def show_webhook(webhook_id):
    """One webhook, without its secret."""
    return get_webhook(webhook_id).to_dict()


@api("/api/v1/webhooks/<webhook_id>", "DELETE")
def delete_webhook(webhook_id):
    """Stop sending to a webhook; its delivery log is kept."""
    get_webhook(webhook_id).deactivate()
    webhooks.forget_subscriptions()
    return HTTPResponse(status=204)


@api("/api/v1/webhooks/<webhook_id>/deliveries")
def list_deliveries(webhook_id):
    """A webhook's deliveries, newest first: status, response code, attempts, duration."""
    webhook = get_webhook(webhook_id)
    status = request.query.getunicode("status") or None
    if status is not None and status not in ("pending", "succeeded", "failed"):
        raise ApiError(422, "invalid_argument", f"status: expected pending, succeeded or failed, got {status[:50]!r}", "status")
    limit = query_number("limit", 1, 200, int, default=50)
    try:
        rows, cursor = webhooks.WebhookDelivery.page(webhook.id, status, limit, request.query.getunicode("cursor"))
    except (ValueError, OverflowError):  # OverflowError: a digit string too large for SQLite
        raise ApiError(422, "invalid_argument", "cursor: not a cursor returned by this API", "cursor") from None
    return {"deliveries": [delivery.to_dict() for delivery in rows], "next": cursor}


# -- Orders ------------------------------------------------------------------------
# The sandbox provider is its own WSGI app: its errors stay in the provider's JSON
# shape, and it needs no API key (it checks the provider token instead).
if settings.ENV != "production" or settings.SANDBOX:
    app.mount("/sandbox/", provider.sandbox.wsgi)


def get_order(order_id):
    order = orders.Order.get_or_none(orders.Order.id == order_id)
    if order is None:
        raise ApiError(404, "not_found", f"no order with id {order_id!r}")
    return order


def order_dict(order):
    """An order as the API shows it: its PIN only to admin keys, as the dashboard shows it only to admins."""
    data = order.to_dict()
    if data.get("pin_code") and current_key().scope != "admin":
        data["pin_code"] = "••••"
    return data


@api("/api/v1/orders", "POST")
def create_order():
    """Place an order; its dispatch to the provider starts at once in the background."""
    body = read_json()
    idempotency_key = request.get_header("Idempotency-Key")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
        raise ApiError(422, "invalid_argument", "Idempotency-Key: must be 1 to 200 characters", "Idempotency-Key")
    order, created = orders.place_order(body, api_key_id=current_key().id, idempotency_key=idempotency_key)
    if not created:
        return 200, order.to_dict()
    return json_response(201, order.to_dict(), {"Location": f"/api/v1/orders/{order.id}"})


@api("/api/v1/orders/<order_id>")
def show_order(order_id):
    """One order: status, provider reference, PIN, checks and error."""
    return order_dict(get_order(order_id))


@api("/api/v1/orders")
def list_orders():
    """Orders newest first, filtered by status, a page at a time."""
    status = request.query.getunicode("status") or None
    if status is not None and status not in orders.ORDER_STATUSES:
        expected = ", ".join(orders.ORDER_STATUSES)
        raise ApiError(422, "invalid_argument", f"status: expected one of {expected}, got {status[:50]!r}", "status")
    limit = query_number("limit", 1, 200, int, default=50)
    try:
        rows, cursor = orders.Order.page(status, limit, request.query.getunicode("cursor"))
    except ValueError:
        raise ApiError(422, "invalid_argument", "cursor: not a cursor returned by this API", "cursor") from None
    return {"orders": [order_dict(order) for order in rows], "next": cursor}


# -- Users, posts and analytics ---------------------------------------------------
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")


@api("/api/v1/users", "POST")
def create_user():
    """Create a user; the welcome mail is sent in the background."""
    body = read_json()
    _no_unknown_fields(body, ("email", "name"))
    email = _text(body.get("email"), "email", 254).lower()
    if not EMAIL.fullmatch(email):
        raise ApiError(422, "invalid_argument", f"email: expected an address such as ann@example.com, got {email[:50]!r}", "email")
    name = body.get("name", "")
    if name is None:
        name = ""
    if not isinstance(name, str) or len(name.strip()) > 200:
        raise ApiError(422, "invalid_argument", f"name: expected a string of at most 200 characters, got {json.dumps(name)[:50]}", "name")
    user = jobs.create_user(email, name.strip())
    return json_response(201, user.to_dict())


@api("/api/v1/posts", "POST")
def create_post():
    """Publish a post; its #hashtags count towards trending."""
    body = read_json()
    _no_unknown_fields(body, ("author_id", "body"))
    author = _ref(body, "author_id", User, "user")
    post = analytics.Post.publish(author.id, _text(body.get("body"), "body", 10000, multiline=True))
    return json_response(201, post.to_dict())


@api("/api/v1/analytics/trending")
def trending_hashtags():
    """The top hashtags of the last 24 hours, as the last run of update_trending_hashtags counted them."""
    snapshot = analytics.TrendingSnapshot.latest()
    if snapshot is None:
        return {"computed_at": None, "window_hours": 24, "hashtags": []}
    return snapshot.to_dict()


@api("/api/v1/analytics/daily")
def daily_analytics():
    """The daily rows of generate_content_analytics for the last `days` (1-366, default 30), oldest first."""
    days = query_number("days", 1, 366, int, default=30)
    return {"days": [row.to_dict() for row in analytics.DailyAnalytics.recent(days)]}


# -- Schedules -------------------------------------------------------------------------
def _on_schedule(action, name):
    """`action(name)`, or 404 when there is no such schedule."""
    try:
        return action(name)
    except KeyError:
        raise ApiError(404, "not_found", f"no schedule {name!r}; see GET /api/v1/schedules") from None


@api("/api/v1/schedules")
def list_schedules():
    """Every schedule: crontab, paused, next and last run, last job and its status."""
    return {"schedules": schedules.schedule_dicts()}


@api("/api/v1/schedules/<name>/pause", "POST")
def pause_schedule(name):
    """Pause a schedule for every consumer, until resumed."""
    return _on_schedule(schedules.pause_schedule, name)


@api("/api/v1/schedules/<name>/resume", "POST")
def resume_schedule(name):
    """Resume a paused schedule."""
    return _on_schedule(lambda n: schedules.pause_schedule(n, paused=False), name)


@api("/api/v1/schedules/<name>/run", "POST")
def run_schedule(name):
    """Run a schedule's function now; 409 while its last job is unfinished."""
    job = _on_schedule(schedules.run_schedule, name)
    return json_response(202, job.to_dict(), {"Location": f"/api/v1/jobs/{job.id}"})


# -- API keys ----------------------------------------------------------------------
@api("/api/v1/keys", admin=True)
def list_keys():
    """The live API keys: name, prefix, scope, created, last used, calls today (never the key)."""
    return {"keys": [key.to_dict() for key in ApiKey.live()]}


@api("/api/v1/keys/<prefix>", "DELETE", admin=True)
def revoke_key(prefix):
    """Revoke the key with this prefix; it stops working at once in every web process."""
    if not any(key.prefix == prefix for key in ApiKey.live().where(ApiKey.prefix == prefix)):
        raise ApiError(404, "not_found", f"no live API key with prefix {prefix[:50]!r}; see GET /api/v1/keys")
    try:
        ApiKey.revoke(prefix)
    except ValueError as exc:  # two live keys share the prefix: revoke by name from the command line
        raise jobs.Conflict(str(exc)) from None
    _auth_cache.clear()
    return HTTPResponse(status=204)


# -- Health ----------------------------------------------------------------------
@api("/health/live", public=True)
def health_live():
    """The process serves."""
    return {"status": "ok"}


@api("/health/ready", public=True)
def health_ready():
    """Database, queue and consumer checks: ok, degraded (no consumer) or down."""
    checks = {}
    for name, check in (("database", models.check_database), ("queue", jobs.check_queue)):
        try:
            check()
            checks[name] = {"status": "ok"}
        except Exception as exc:  # any driver error means "unreachable" here
            # Anyone may call this: the driver's words go to the log only.
            logger.warning("request %s: readiness: %s unreachable: %s: %s", request_id(), name, type(exc).__name__, exc)
            checks[name] = {"status": "down", "error": f"unreachable ({type(exc).__name__}); request id {request_id()} in the log"}
    if checks["database"]["status"] == "ok":
        alive = Worker.alive().count()
        checks["consumer"] = {"status": "ok" if alive else "down", "alive": alive}
        if not alive:
            checks["consumer"]["error"] = f"no consumer heartbeat in the last {settings.HEARTBEAT_TIMEOUT:g} s"
    else:
        checks["consumer"] = {"status": "unknown", "error": "database unreachable"}
    if any(checks[name]["status"] == "down" for name in ("database", "queue")):
        return 503, {"status": "down", "checks": checks}
    return {"status": "ok" if checks["consumer"]["status"] == "ok" else "degraded", "checks": checks}


@api("/metrics", public=True)
def metrics_page():
    """Prometheus metrics; with METRICS_TOKEN set, only for `Authorization: Bearer <token>`."""
    if not settings.METRICS_TOKEN and settings.ENV == "production" and not settings.METRICS_PUBLIC:
        if not _is_loopback(client_address()):
            raise ApiError(403, "forbidden", "/metrics answers loopback only; set METRICS_TOKEN (or METRICS_PUBLIC=1)")
    if settings.METRICS_TOKEN:
        header = request.get_header("Authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), settings.METRICS_TOKEN.encode()):
            raise ApiError(
                401, "unauthorized", "send Authorization: Bearer <METRICS_TOKEN>", headers={"WWW-Authenticate": "Bearer"}
            )
    return HTTPResponse(metrics.render(), status=200, headers={"Content-Type": metrics.CONTENT_TYPE})


def _is_loopback(address):
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@api("/api/v1/openapi.json", public=True)
def openapi_document():
    """The OpenAPI 3 description of this API."""
    return openapi.document()


# The HTML dashboard (dashboard.py): its routes run under this app's hooks.
app.merge(dashboard.pages)


# -- Command line ----------------------------------------------------------------
def setup_logging():
    logging.basicConfig(
        level=settings.LOG_LEVEL,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def prepare():
    """Create the data folder and tables; exit with a clear message when that fails."""
    try:
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        models.create_tables()
        webhooks.Webhook.seal_plain_secrets()  # rows from before secrets were sealed
        jobs.check_queue()
    except Exception as exc:  # any start-up failure (disk, database, queue) ends here, without a traceback
        sys.exit(f"litejobs: cannot start: {type(exc).__name__}: {exc} (check DATA_DIR, DATABASE_URL and QUEUE_URL)")


def serve(with_consumer=True):
    """Serve the app with gevent, with an embedded consumer unless told otherwise."""
    import signal

    import gevent

    from server import make_server

    prepare()
    consumer = None
    if with_consumer:
        consumer = jobs.huey.create_consumer(workers=settings.WORKERS, embedded=True)
        consumer.start()
        gevent.spawn(_supervise, consumer)
    server = make_server(app)  # header and idle timeouts, a connection cap, TCP_NODELAY

    def stop(*_):
        logger.info("stopping: finishing requests and running jobs")
        gevent.spawn(server.stop, timeout=5)

    if hasattr(gevent, "signal_handler") and sys.platform != "win32":
        gevent.signal_handler(signal.SIGTERM, stop)
        gevent.signal_handler(signal.SIGINT, stop)
    else:
        signal.signal(signal.SIGINT, stop)
    logger.info("litejobs serving on http://%s:%s (consumer: %s)", settings.HOST, settings.PORT, bool(consumer))
    server.serve_forever()
    try:
        key_calls.flush()  # the last second's API key calls
    except Exception:
        logger.exception("could not write the API key call counts")
    if consumer is not None:
        consumer.stop(graceful=True)
        jobs.huey.notify_interrupted_tasks()
    logger.info("stopped")


def print_keys():
    """One line per live API key: name, prefix, scope, created, last used, calls today."""
    rows = [("NAME", "PREFIX", "SCOPE", "CREATED", "LAST USED", "CALLS TODAY")]
    for key in ApiKey.live():
        data = key.to_dict()
        rows.append((data["name"], data["prefix"], data["scope"], data["created_at"], data["last_used_at"] or "never", str(data["calls_today"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())


def _supervise(consumer):
    """Drive the embedded consumer's heartbeat and worker health checks."""
    from huey.consumer import ConsumerStopped

    health_check_ts = None
    while True:
        try:
            health_check_ts = consumer.loop(health_check_ts)
        except ConsumerStopped:
            return


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python web.py", description="litejobs: jobs, schedules and a dashboard")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve the web app (and a consumer)")
    run.add_argument("--no-consumer", action="store_true", help="serve only; run huey_consumer jobs.huey apart")
    key = commands.add_parser("create-key", help="create an API key and print it")
    key.add_argument("name")
    key.add_argument("--scope", choices=ApiKey.SCOPES, default="admin", help="read: GET only; admin: everything (default)")
    commands.add_parser("keys", help="list the live API keys")
    revoke = commands.add_parser("revoke-key", help="revoke an API key, at once in every web process")
    revoke.add_argument("key", metavar="NAME|PREFIX")
    user = commands.add_parser("create-user", help="create a dashboard user")
    user.add_argument("email")
    user.add_argument("--admin", action="store_true", help="an admin (runs, retries, cancels, pauses, sees secrets); else a viewer")
    user.add_argument("--password", help="the password (asked for when left out)")
    user.add_argument("--name", default="", help="the user's name")
    demo = commands.add_parser("demo-data", help="fill realistic users, posts, likes, comments and shares")
    demo.add_argument("--users", type=int, default=1000, help="how many users (default 1000)")
    demo.add_argument("--posts", type=int, default=10000, help="how many posts (default 10000)")
    demo.add_argument("--weeks", type=int, default=4, help="spread over this many past weeks (default 4)")
    demo.add_argument("--seed", type=int, default=None, help="random seed, for the same data every time")
    copy = commands.add_parser("backup", help="copy the SQLite database and queue into folder DEST, while running")
    copy.add_argument("dest")
    args = parser.parse_args(argv)
    setup_logging()

    if args.command == "run":
        serve(with_consumer=not args.no_consumer)
    elif args.command == "create-key":
        prepare()
        _, plain = ApiKey.create_key(args.name, args.scope)
        print(f"API key {args.name!r} (scope {args.scope}) created; it is shown only this once:")
        print(plain)
    elif args.command == "keys":
        prepare()
        print_keys()
    elif args.command == "revoke-key":
        prepare()
        try:
            key = ApiKey.revoke(args.key)
        except ValueError as exc:
            sys.exit(f"litejobs: {exc}")
        if key is None:
            sys.exit(f"litejobs: no live API key named {args.key!r} or with that prefix; see python web.py keys")
        print(f"API key {key.name!r} ({key.prefix}…) revoked")
    elif args.command == "create-user":
        prepare()
        password = args.password
        if password is None:
            import getpass

            password = getpass.getpass("Password: ")
        if len(password) < 8:
            sys.exit("litejobs: the password must have at least 8 characters")
        try:
            jobs.create_user(args.email.strip().lower(), args.name, password=password, is_admin=args.admin)
        except jobs.Conflict:
            sys.exit(f"litejobs: a user with email {args.email!r} exists already")
        except jobs.ArgumentError as exc:
            sys.exit(f"litejobs: {exc}")
        role = "an admin" if args.admin else "a viewer (add --admin to run, retry, cancel and pause)"
        print(f"user {args.email} created as {role}; a welcome mail is queued")
    elif args.command == "demo-data":
        import demo

        prepare()
        if args.users < 1 or args.posts < 0 or args.weeks < 1:
            sys.exit("litejobs: demo-data needs --users 1 or more, --posts 0 or more and --weeks 1 or more")
        counts = demo.fill(args.users, args.posts, weeks=args.weeks, seed=args.seed)
        course_counts, finished = demo.fill_courses(seed=args.seed)
        counts.update(course_counts)
        for enrollment_id in finished:  # their certificates are made once a consumer runs
            jobs.enqueue("recalculate_course_progress", enrollment_id=enrollment_id)
        print(", ".join(f"{n} {what}" for what, n in counts.items()))
    elif args.command == "backup":
        import backup

        try:
            for path in backup.backup(args.dest):
                print(f"backed up to {path}")
        except (backup.BackupError, OSError) as exc:
            sys.exit(f"litejobs: backup failed: {exc}")


if __name__ == "__main__":
    main()
