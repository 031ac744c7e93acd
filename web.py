"""litejobs web: the Bottle app (JSON API, health) and the command line.

`python web.py run` serves the app with gevent and runs a consumer in the
same process; `python web.py create-key NAME` makes an API key.
"""

if __name__ == "__main__":
    # gevent must patch the standard library before anything else imports it.
    from gevent import monkey

    monkey.patch_all()

import argparse
import json
import logging
import sys
import uuid

from bottle import BaseRequest, Bottle, HTTPResponse, request, response
from peewee import IntegrityError, PeeweeException

import jobs
import models
import settings
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
        json.dumps(body, ensure_ascii=False),
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
        body = json.loads(raw.decode("utf-8"))
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


def api(path, method="GET", public=False):
    """Route an API handler: auth, JSON in and out, errors in one shape."""

    def decorator(handler):
        def wrapper(*args, **kwargs):
            try:
                if not public:
                    request.environ["litejobs.api_key"] = authenticate()
                result = handler(*args, **kwargs)
            except ApiError as exc:
                return json_response(exc.status, error_body(exc.code, exc.message, exc.field), exc.headers)
            except jobs.ArgumentError as exc:
                return json_response(422, error_body("invalid_argument", str(exc), exc.field))
            except jobs.Conflict as exc:
                return json_response(409, error_body("conflict", str(exc)))
            except (jobs.Unavailable, PeeweeException) as exc:
                logger.warning("request %s: unavailable: %s", request_id(), exc)
                return json_response(503, error_body("unavailable", str(exc)))
            status, body = result if isinstance(result, tuple) else (200, result)
            if isinstance(body, HTTPResponse):
                return body
            return json_response(status, body)

        wrapper.__doc__ = handler.__doc__
        app.route(path, method, wrapper, name=handler.__name__)
        return handler

    return decorator


def authenticate():
    header = request.get_header("Authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else request.get_header("X-API-Key", "")
    row = ApiKey.authenticate(key)
    if row is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong API key; send Authorization: Bearer <key> (create one with: python web.py create-key NAME)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    row.touch()
    return row


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


# -- Connections and errors ------------------------------------------------------
@app.hook("before_request")
def open_connection():
    request_id()
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
    from html import escape

    return f"<!doctype html><title>{status}</title><h1>{status}</h1><p>{escape(message)}</p>"


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
            checks[name] = {"status": "down", "error": f"{type(exc).__name__}: {exc}"}
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
        jobs.check_queue()
    except (OSError, PeeweeException, Exception) as exc:  # noqa: B014 - any start-up failure ends here
        sys.exit(f"litejobs: cannot start: {type(exc).__name__}: {exc} (check DATA_DIR, DATABASE_URL and QUEUE_URL)")


def serve(with_consumer=True):
    """Serve the app with gevent, with an embedded consumer unless told otherwise."""
    import signal

    import gevent
    from gevent.pywsgi import WSGIServer

    prepare()
    consumer = None
    if with_consumer:
        consumer = jobs.huey.create_consumer(workers=settings.WORKERS, embedded=True)
        consumer.start()
        gevent.spawn(_supervise, consumer)
    server = WSGIServer((settings.HOST, settings.PORT), app, log=None, error_log=logger)

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
    if consumer is not None:
        consumer.stop(graceful=True)
        jobs.huey.notify_interrupted_tasks()
    logger.info("stopped")


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
    user = commands.add_parser("create-user", help="create a dashboard user")
    user.add_argument("email")
    user.add_argument("--admin", action="store_true", help="give the user admin rights")
    user.add_argument("--password", help="the password (asked for when left out)")
    user.add_argument("--name", default="", help="the user's name")
    args = parser.parse_args(argv)
    setup_logging()

    if args.command == "run":
        serve(with_consumer=not args.no_consumer)
    elif args.command == "create-key":
        prepare()
        _, plain = ApiKey.create_key(args.name)
        print(f"API key {args.name!r} created; it is shown only this once:")
        print(plain)
    elif args.command == "create-user":
        prepare()
        password = args.password
        if password is None:
            import getpass

            password = getpass.getpass("Password: ")
        if len(password) < 8:
            sys.exit("litejobs: the password must have at least 8 characters")
        try:
            User.create(
                email=args.email.strip().lower(),
                name=args.name,
                password_hash=User.hash_password(password),
                is_admin=args.admin,
            )
        except IntegrityError:
            sys.exit(f"litejobs: a user with email {args.email!r} exists already")
        print(f"user {args.email} created")


if __name__ == "__main__":
    main()
