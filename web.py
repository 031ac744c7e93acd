"""litejobs web: the Bottle app (JSON API, health) and the command line.

`python web.py run` serves the app with gevent and starts a consumer beside
it, in a child process (supervisor.py); `python web.py create-key NAME` makes an API key.
"""

if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["restore"]:
        # Before the imports below open the database and queue that restore replaces.
        import backup

        sys.exit(backup.main(sys.argv[2:]))
    # gevent must patch the standard library before anything else imports it.
    # subprocess stays the standard library's: supervisor.py runs the consumer
    # with it and does the blocking waits in gevent's thread pool, alike on
    # Linux and Windows (gevent's Popen waits with a child watcher, POSIX only).
    # `run --reload` is only a parent that polls files and restarts its child (which
    # patches itself): left unpatched, its Ctrl-C and waits are plain Python's.
    if not (sys.argv[1:2] == ["run"] and "--reload" in sys.argv):
        from gevent import monkey

        monkey.patch_all(subprocess=False)

import argparse
import hmac
import json
import logging
import sys
from pathlib import Path

from bottle import BaseRequest, Bottle, HTTPResponse, request, response


import backup
import cli
import client_cli
import dashboard
import group_commit
import guard
import health
import joblog
import jobs
import loader
import logconfig
import metrics
import models
import openapi
import preflight
import queue_status
import reloader
import schedule_edits
import schedule_pages
import schedules
import schema
import settings
from api import (
    CORS_HEADERS,
    ApiError,
    add_security_headers,
    body_limit,
    client_address,
    cors_origin,
    current_key,
    error_body,
    error_response,
    forget_keys,
    get_job,
    host_allowed,
    html_error,
    is_api_path,
    is_loopback,
    key_calls,
    json_response,
    query_number,
    read_json,
    request_header,
    request_id,
    router,
)
import stops
import supervisor
from models import ApiKey, Job, Worker

logger = logging.getLogger("litejobs.web")

BaseRequest.MEMFILE_MAX = settings.MAX_BODY_BYTES
app = Bottle()
api = router(app)

# -- Hooks: one before and one after every request ------------------------------------
# One function each rather than one per concern: bottle calls every hook and each
# reads the request through its thread-local again, for every API call.
@app.hook("before_request")
def before_request():
    """Refuse unknown Host names, answer CORS preflights, cap the body; name the request and its client."""
    environ = request.environ
    path, method = request.path, request.method
    # Health checks and scrapes come straight to the process, by address.
    if not path.startswith(("/health/", "/metrics")) and not host_allowed(request_header("Host", "")):
        raise error_response(400, "bad_host", "this Host is not in TRUSTED_HOSTS")
    if method == "OPTIONS" and path.startswith("/api/v1/") and request_header("Origin"):
        origin = cors_origin()
        if origin is None:
            raise error_response(403, "forbidden", f"origin {request_header('Origin')[:100]!r} is not in CORS_ORIGINS")
        raise HTTPResponse(status=204, headers={"Access-Control-Allow-Origin": origin, "Vary": "Origin", **CORS_HEADERS})
    # A body over the route's cap is refused before it is read; a malformed form is a 400, not a 500.
    try:
        guard.cap_body(environ, body_limit(path))
        if method == "POST" and not is_api_path(path) and not path.startswith("/sandbox/"):
            guard.parse_form(request)
    except guard.Refused as exc:
        raise error_response(exc.status, exc.code, exc.message) from None
    request_id()
    # The dashboard's login throttle counts per client, behind a proxy too.
    environ["litejobs.client_address"] = client_address()
    # No connection is opened here: the first query opens one (peewee's autoconnect),
    # and a handler that cannot have one answers 503 itself. Most enqueues never
    # query: the first call of a group commit writes for the others (group_commit.py).


@app.hook("after_request")
def after_request():
    """Close the database connection and the body's files; security, CORS and id headers; count for /metrics."""
    response.set_header("X-Request-Id", request_id())
    if not models.db.is_closed() and not models.db.in_transaction():
        models.db.close()
    guard.close_files(request.environ)
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


@api("/api/v1/functions/<name>/jobs", "POST")
@api("/api/v1/jobs/<name>", "POST")  # the first path, kept as a deprecated alias
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
    idempotency_key = request_header("Idempotency-Key")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
        raise ApiError(422, "invalid_argument", "Idempotency-Key: must be 1 to 200 characters", "Idempotency-Key")
    # Written together with the calls arriving at the same time (group_commit.py).
    job, created = group_commit.submit(
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


@api("/api/v1/jobs/<job_id>/logs")
def show_job_logs(job_id):
    """What a job logged and printed while it ran: its last 64 KiB."""
    return joblog.JobLog.of(get_job(job_id).id)


@api("/api/v1/jobs/<job_id>/cancel", "POST")
def cancel_job(job_id):
    """Cancel a waiting job, or ask a running one to stop; ?terminate=true stops it at once."""
    terminate = request.query.getunicode("terminate", "false").lower()
    if terminate not in ("true", "false", "1", "0"):
        raise ApiError(422, "invalid_argument", f"terminate: expected true or false, got {terminate[:20]!r}", "terminate")
    if terminate in ("false", "0"):
        return jobs.cancel(get_job(job_id)).to_dict()
    job, how = stops.terminate(get_job(job_id))
    if how is not None:
        job = jobs.wait(job.id, stops.ANSWER_WAIT)  # the consumer acts within a second or so
    return {**job.to_dict(), "terminate": how}


@api("/api/v1/jobs/<job_id>/retry", "POST")
def retry_job(job_id):
    """Run a finished job again as a new job."""
    new = jobs.retry(get_job(job_id), api_key_id=current_key().id)
    return json_response(202, new.to_dict(), {"Location": f"/api/v1/jobs/{new.id}"})


@api("/api/v1/queues")
def list_queues():
    """Every configured queue: priority, depth, running, oldest wait, concurrency limit and whether a consumer serves it."""
    return {"queues": queue_status.queues()}


@api("/api/v1/workers")
def list_workers():
    """Consumers, alive or recently seen, with the jobs they run."""
    workers = list(Worker.listed().limit(100))
    running = {}
    for job in Job.running_on([w.id for w in workers]):
        running.setdefault(job.consumer_id, []).append(job.id)
    now = models.db_now()  # alive by the database's clock, whatever the hosts' clocks say
    return {"workers": [w.to_dict(running.get(w.id, []), now) for w in workers]}


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


def _who():
    return f"API key {current_key().name}"


@api("/api/v1/schedules", "POST")
def add_schedule():
    """Add a schedule: name, function and cron, with optional args, queue and timezone."""
    added = schedule_edits.add(read_json(), who=_who())
    return json_response(201, added, {"Location": f"/api/v1/schedules/{added['name']}"})


@api("/api/v1/schedules/<name>")
def show_schedule(name):
    """One schedule with its change log, newest first."""
    shown = _on_schedule(schedules.schedule_dict, name)
    return dict(shown, changes=schedule_edits.changes(name))


@api("/api/v1/schedules/<name>", "PATCH")
def edit_schedule(name):
    """Change a schedule's function, cron, args, queue or timezone (null: back to the default)."""
    body = read_json()
    return _on_schedule(lambda n: schedule_edits.edit(n, body, who=_who()), name)


@api("/api/v1/schedules/<name>", "DELETE")
def delete_schedule(name):
    """Remove an added schedule, or reset one declared in code to its declaration."""
    _on_schedule(lambda n: schedule_edits.delete(n, who=_who()), name)
    return HTTPResponse(status=204)


@api("/api/v1/schedules/<name>/pause", "POST")
def pause_schedule(name):
    """Pause a schedule for every consumer, until resumed."""
    return _on_schedule(lambda n: schedules.pause_schedule(n, who=_who()), name)


@api("/api/v1/schedules/<name>/resume", "POST")
def resume_schedule(name):
    """Resume a paused schedule."""
    return _on_schedule(lambda n: schedules.pause_schedule(n, paused=False, who=_who()), name)


@api("/api/v1/schedules/<name>/run", "POST")
def run_schedule(name):
    """Run a schedule's function now; 409 while its last job is unfinished."""
    job = _on_schedule(schedules.run_schedule, name)
    return json_response(202, job.to_dict(), {"Location": f"/api/v1/jobs/{job.id}"})


# -- Health ----------------------------------------------------------------------
@api("/health/live", public=True)
def health_live():
    """The process serves."""
    return {"status": "ok"}


@api("/health/ready", public=True)
def health_ready():
    """Database, queue, disk and consumer checks: ok, degraded (no consumer, nothing waiting) or down."""
    status, checks = health.readiness(request_id())
    return (503 if status == "down" else 200), {"status": status, "checks": checks}


@api("/metrics", public=True)
def metrics_page():
    """Prometheus metrics; with METRICS_TOKEN set, only for `Authorization: Bearer <token>`."""
    if not settings.METRICS_TOKEN and settings.ENV == "production" and not settings.METRICS_PUBLIC:
        if not is_loopback(client_address()):
            raise ApiError(403, "forbidden", "/metrics answers loopback only; set METRICS_TOKEN (or METRICS_PUBLIC=1)")
    if settings.METRICS_TOKEN:
        header = request.get_header("Authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), settings.METRICS_TOKEN.encode()):
            raise ApiError(
                401, "unauthorized", "send Authorization: Bearer <METRICS_TOKEN>", headers={"WWW-Authenticate": "Bearer"}
            )
    return HTTPResponse(metrics.render(), status=200, headers={"Content-Type": metrics.CONTENT_TYPE})


# -- API keys ----------------------------------------------------------------------
@api("/api/v1/keys", admin=True)
def list_keys():
    """The live API keys: name, prefix, scope, created, last used, calls today (never the key)."""
    return {"keys": [key.to_dict() for key in ApiKey.live()]}


@api("/api/v1/keys/<prefix>", "DELETE", admin=True)
def revoke_key(prefix):
    """Revoke the key with this prefix; it stops working at once in every web process."""
    if not ApiKey.live().where(ApiKey.prefix == prefix).exists():
        raise ApiError(404, "not_found", f"no live API key with prefix {prefix[:50]!r}; see GET /api/v1/keys")
    try:
        ApiKey.revoke(prefix)
    except ValueError as exc:  # two live keys share the prefix: revoke by name from the command line
        raise jobs.Conflict(str(exc)) from None
    forget_keys()
    return HTTPResponse(status=204)


@api("/api/v1/openapi.json", public=True)
def openapi_document():
    """The OpenAPI 3 description of this API."""
    return openapi.document(loader.loaded_apps(), jobs.public_functions())


# The HTML dashboard (dashboard.py, schedule_pages.py): its routes run under this app's hooks.
app.merge(dashboard.pages)
app.merge(schedule_pages.pages)


def mount_apps():
    """Add the routes, pages and menu entries of every loaded app (loader.load_apps)."""
    for loaded in loader.loaded_apps():
        for routes in (loaded.api, loaded.pages):
            if routes is not None:
                app.merge(routes)
        dashboard.NAV.extend(loaded.nav)


loader.load_apps()
mount_apps()


# -- Command line ----------------------------------------------------------------
def setup_logging(prefix=""):
    logconfig.setup(prefix)


def prepare():
    """Create the data folder and tables; exit with one line naming the setting when that fails."""
    settings.ensure_dir(settings.DATA_DIR, "DATA_DIR")
    preflight.check_services(jobs.check_queue)
    try:
        schema.upgrade(loader.loaded_apps())
    except Exception as exc:  # a migration that cannot run: one line, not a traceback
        sys.exit(f"litejobs: cannot start: migrating the database failed: {type(exc).__name__}: {exc}")


def serve(with_consumer=True, stop_on_stdin_eof=False, shared_port=False):
    """Serve the app with gevent, with a consumer in a child process unless told otherwise,
    and WEB_PROCESSES - 1 more web processes on the same port where the system allows.

    `stop_on_stdin_eof`: stop gracefully when stdin closes (reloader.py's child, and
    the other web processes). `shared_port`: one of those others (the first one migrated).
    """
    import signal

    import gevent

    from server import can_share_port, make_server

    if not shared_port:
        prepare()
    running = backup.running_lock()  # noqa: F841 (held while serving: restore refuses meanwhile)
    processes = 1 if shared_port else web_processes(can_share_port())
    # Header and idle timeouts, a connection cap, TCP_NODELAY; bound first, so the others join a bound port.
    server = make_server(app, share_port="other" if shared_port else "first" if processes > 1 else None)
    children = [supervisor.WebProcess(number) for number in range(2, processes + 1)]
    if with_consumer:
        children.append(supervisor.ConsumerProcess())
    for child in children:
        child.start()

    def stop(*_):
        logger.info("stopping: finishing requests and running jobs")
        for child in children:
            gevent.spawn(child.stop)  # the consumer finishes its running jobs while the servers finish their requests
        gevent.spawn(server.stop, timeout=5)

    if hasattr(gevent, "signal_handler") and sys.platform != "win32":
        gevent.signal_handler(signal.SIGTERM, stop)
        gevent.signal_handler(signal.SIGINT, stop)
    else:
        signal.signal(signal.SIGINT, stop)
    if stop_on_stdin_eof:

        def stop_at_eof():
            # A real thread does the blocking read, so the server's greenlets go on meanwhile.
            gevent.get_hub().threadpool.spawn(sys.stdin.buffer.read).get()
            stop()

        gevent.spawn(stop_at_eof)
    if not shared_port:
        logger.info(
            "litejobs serving on http://%s:%s (web processes: %s, consumer: %s)", settings.HOST, settings.PORT, processes, with_consumer
        )
    server.serve_forever()
    try:
        key_calls.flush()  # the last second's API key calls
    except Exception:
        logger.exception("could not write the API key call counts")
    for child in children:
        child.stop()
    for child in children:
        child.wait()
    logger.info("stopped")


def web_processes(can_share):
    """WEB_PROCESSES, or 1 (said once in the log) where processes cannot share a port."""
    if settings.WEB_PROCESSES > 1 and not can_share:
        logger.warning("WEB_PROCESSES=%s: this system cannot share a port between processes; serving with one", settings.WEB_PROCESSES)
        return 1
    return settings.WEB_PROCESSES


def supervise(consumer):
    """Drive the embedded consumer's heartbeat and worker health checks."""
    from huey.consumer import ConsumerStopped

    health_check_ts = None
    while True:
        try:
            health_check_ts = consumer.loop(health_check_ts)
        except ConsumerStopped:
            return


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in client_cli.COMMANDS:
        # Calls over HTTP with the client, so they work against a remote litejobs too.
        sys.exit(client_cli.main(argv, url=settings.LITEJOBS_URL or settings.BASE_URL, key=settings.LITEJOBS_KEY))
    parser = argparse.ArgumentParser(prog="python web.py", description="litejobs: jobs, schedules and a dashboard")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, about in client_cli.COMMANDS.items():
        commands.add_parser(name, help=about)  # listed in --help; run by client_cli.main above
    run = commands.add_parser("run", help="serve the web app (and a consumer)")
    run.add_argument("--no-consumer", action="store_true", help="serve only; run huey_consumer jobs.huey apart")
    run.add_argument("--reload", action="store_true", help="restart when a file of an app or FUNCTIONS_DIR changes")
    run.add_argument("--stop-on-stdin-eof", action="store_true", help=argparse.SUPPRESS)  # --reload's child
    run.add_argument("--shared-port", action="store_true", help=argparse.SUPPRESS)  # one of WEB_PROCESSES
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
    migrate = commands.add_parser("migrate", help="create missing tables and apply pending migrations")
    migrate.add_argument("--status", action="store_true", help="only show the engine's and each app's schema version")
    copy = commands.add_parser("backup", help="write one checked archive of the data into folder DEST, while running")
    copy.add_argument("dest")
    copy.add_argument("--keep", type=int, default=None, metavar="N", help="then delete all but the newest N archives")
    restore = commands.add_parser("restore", help="check a backup archive and put it back (litejobs stopped)")
    restore.add_argument("archive")
    args = parser.parse_args(argv)
    # With its consumer, `web.py run` writes two processes' lines into one log.
    setup_logging("[web] " if args.command == "run" and not args.no_consumer else "")

    if args.command == "run" and args.reload:
        command = [sys.executable, str(settings.BASE_DIR / "web.py"), "run", "--stop-on-stdin-eof"]
        command += ["--no-consumer"] if args.no_consumer else []
        folders = {settings.BASE_DIR / "apps", settings.FUNCTIONS_DIR}
        folders |= {Path(loaded.source.__file__).parent for loaded in loader.loaded_apps() if loaded.source}
        folders = {f for f in folders if not any(other in f.parents for other in folders)}  # no folder twice
        logger.info("reloading on changes under %s", ", ".join(sorted(map(str, folders))))
        sys.exit(reloader.run(command, sorted(folders), timeout=settings.SHUTDOWN_TIMEOUT + 10))
    elif args.command == "run":
        serve(with_consumer=not args.no_consumer, stop_on_stdin_eof=args.stop_on_stdin_eof, shared_port=args.shared_port)
    elif args.command in ("create-key", "keys", "revoke-key", "create-user"):
        prepare()
        getattr(cli, args.command.replace("-", "_"))(args)
    elif args.command == "migrate":
        settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
        if not args.status:
            for name, number in schema.upgrade(loader.loaded_apps()).items():
                print(f"{name}: migrated to version {number}")
        for name, version, newest in schema.status(loader.loaded_apps()):
            shown = "not yet created" if version is None else f"version {version}"
            print(f"{name}: {shown} of {newest}" + ("" if version == newest else "  (pending: python web.py migrate)"))
    elif args.command == "backup":
        if args.keep is not None and args.keep < 1:
            sys.exit("litejobs: --keep needs 1 or more")
        try:
            print(f"backed up to {backup.backup(args.dest, keep=args.keep)}")
        except (backup.BackupError, OSError) as exc:
            sys.exit(f"litejobs: backup failed: {exc}")
    elif args.command == "restore":
        sys.exit(backup.main([args.archive]))


if __name__ == "__main__":
    main()
