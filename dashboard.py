"""litejobs dashboard: the HTML pages, their login and their forms.

`pages` is a Bottle app that web.py merges into its own, so web.py's hooks
open and close the database connection here too. Sessions are `Token` rows of
kind "session" named by a signed cookie; every POST form carries a CSRF token
derived from the session (or, on /login, from a pre-session cookie).
"""

import datetime
import functools
import hashlib
import hmac
import json
import logging
import secrets
from urllib.parse import quote, urlencode

import bottle
from bottle import Bottle, HTTPResponse, abort, redirect, request, response, static_file
from peewee import PeeweeException

import charts
import stops
import humanize
import joblog
import guard
import jobs
import loader
import queue_status
import settings
from models import STATUSES, TERMINAL, Job, LoginFailure, Token, User, Worker, parse_time, utcnow
from schedules import pause_schedule, run_schedule, schedule_dicts

VIEWS = [str(settings.BASE_DIR / "views")]  # absolute: bottle looks up relative to the cwd
STATIC_DIR = settings.BASE_DIR / "static"
SESSION_COOKIE = "litejobs_session"
LOGIN_CSRF_COOKIE = "litejobs_login"
PAGE_SIZE = 50
# The menu: the core pages, then each loaded app's entries (web.mount_apps adds them).
NAV = [("Overview", "/"), ("Jobs", "/jobs"), ("Run", "/run"), ("Schedules", "/schedules"), ("Workers", "/workers")]

pages = Bottle()
logger = logging.getLogger("litejobs.dashboard")


# Checked when the email is unknown, so a wrong email costs as long as a wrong password.
_DUMMY_HASH = User.hash_password(secrets.token_urlsafe(16))


# -- Sessions and CSRF ---------------------------------------------------------------
def _sign(purpose, value):
    message = f"{purpose}:{value}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def _set_cookie(name, value, max_age):
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=settings.ENV == "production",
    )


def _session_plain():
    """The session token named by the cookie when its signature holds, else None."""
    cookie = request.get_cookie(SESSION_COOKIE) or ""
    plain, _, signature = cookie.partition(".")
    if plain and hmac.compare_digest(signature, _sign("session", plain)):
        return plain
    return None


def current_user():
    """The logged-in dashboard user, or None."""
    if "litejobs.user" not in request.environ:
        token = Token.find(_session_plain(), "session")
        user = token.user if token is not None else None
        request.environ["litejobs.user"] = user if user is not None and user.active else None
    return request.environ["litejobs.user"]


def csrf_token():
    """The token every POST form sends back: tied to the session, or to the login cookie."""
    plain = _session_plain()
    if plain and current_user() is not None:
        return _sign("csrf", plain)
    login = request.environ.get("litejobs.login_csrf") or request.get_cookie(LOGIN_CSRF_COOKIE)
    if not login:
        login = secrets.token_urlsafe(24)
        request.environ["litejobs.login_csrf"] = login
        _set_cookie(LOGIN_CSRF_COOKIE, login, 3600)
    return _sign("login", login)


def check_csrf(purpose):
    """403 unless the form's csrf_token matches the session (or the login cookie)."""
    given = request.forms.getunicode("csrf_token") or ""
    source = _session_plain() if purpose == "csrf" else request.get_cookie(LOGIN_CSRF_COOKIE)
    if not source or not given or not hmac.compare_digest(given, _sign(purpose, source)):
        raise error_page(403, "This form has expired or did not come from this site. Go back, reload the page and try again.")


def _safe_next(target):
    """A local path to go to after login; anything else goes to the overview."""
    return guard.safe_next(target)


def page(path, method="GET", routes=None):
    """Route a dashboard page on `routes` (default: the core pages): a session is
    required, POSTs need their CSRF token, and only admins may POST (run, retry,
    cancel, pause, order): viewers read. Apps pass their own bottle.Bottle."""

    def decorator(handler):
        @functools.wraps(handler)
        def wrapper(*args, **kwargs):
            if request.method == "POST":
                check_csrf("csrf")
            try:
                if current_user() is None:
                    target = request.fullpath if request.method == "GET" else "/"
                    if request.query_string and request.method == "GET":
                        target += "?" + request.query_string
                    redirect("/login?" + urlencode({"next": target}), 303)
                if request.method == "POST" and not current_user().is_admin:
                    raise error_page(403, "Viewers can look but not act: ask an admin to do this (python web.py create-user EMAIL --admin).")
                return handler(*args, **kwargs)
            except (PeeweeException, jobs.Unavailable) as exc:
                request_id = request.environ.get("litejobs.request_id", "")
                logger.warning("request %s: unavailable: %s", request_id, exc)  # the driver's words stay in the log
                message = f"The database or the queue is not answering (request id {request_id}). Try again in a moment."
                raise error_page(503, message) from None

        (pages if routes is None else routes).route(path, method, wrapper)
        return handler

    return decorator


# -- Rendering -------------------------------------------------------------------------
def render(_view, _status=200, **values):
    """A page from views/ with what the layout needs; `_status` is the HTTP status."""
    response.status = _status
    values.setdefault("title", "litejobs")
    return bottle.template(
        _view,
        template_lookup=template_lookup(),
        user=current_user(),
        csrf_token=csrf_token(),
        path=request.path,
        nav=NAV,
        load_errors=loader.LOAD_ERRORS,
        ago=ago,
        stamp=stamp,
        show_json=show_json,
        took=humanize.duration_ms,
        **values,
    )


def template_lookup():
    """views/ and then each loaded app's own views/ folder.

    One list, extended in place: bottle caches a compiled template under the id
    of the lookup list it was found with.
    """
    for folder in loader.app_folders("views"):
        if folder not in VIEWS:
            VIEWS.append(folder)
    return VIEWS


def error_page(status, message):
    """An HTTPResponse carrying a plain error page, for `raise` from any handler."""
    body = bottle.template("error", template_lookup=VIEWS, title=f"{status}", status=status, message=message)
    return HTTPResponse(body, status=status, headers={"Content-Type": "text/html; charset=UTF-8"})


def stamp(value):
    """`2026-11-22 09:00:03 UTC` for a stored time; an em dash for None."""
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "—"


def ago(value, now=None):
    """`3 min ago` or `in 2 h` for a stored time; an empty string for None."""
    if value is None:
        return ""
    seconds = ((now or utcnow()) - value).total_seconds()
    future, seconds = seconds < 0, abs(seconds)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size or unit == "s":
            amount = f"{int(seconds // size)} {unit}"
            break
    return f"in {amount}" if future else f"{amount} ago"


DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]


def cron_words(cron):
    """`0 2 * * *` → `every day at 02:00`; None for a crontab too unusual to put in words."""
    fields = cron.split()
    if len(fields) != 5:
        return None
    minute, hour, day, month, weekday = fields
    if month != "*":
        return None
    if hour == "*" and day == weekday == "*":
        if minute == "*":
            return "every minute"
        if minute.startswith("*/") and minute[2:].isdigit():
            return f"every {minute[2:]} minutes"
        if minute.isdigit():
            return f"every hour, {_past(minute)}"
        return None
    if not minute.isdigit():
        return None
    if hour.startswith("*/") and hour[2:].isdigit() and day == weekday == "*":
        return f"every {hour[2:]} hours, {_past(minute)}"
    hours = hour.split(",")
    if not all(h.isdigit() for h in hours):
        return None
    at = " and ".join(f"{int(h):02d}:{int(minute):02d}" for h in hours)
    if day == "*" and weekday == "*":
        return f"every day at {at}"
    if day == "*":
        days = _weekdays(weekday)
        return f"every {days} at {at}" if days else None
    if weekday == "*" and day.isdigit():
        return f"on day {int(day)} of every month at {at}"
    return None


def _past(minute):
    return "on the hour" if int(minute) == 0 else f"at {int(minute)} past"


def _weekdays(field):
    """`1` → Monday, `1-5` → Monday to Friday, `0,6` → Sunday and Saturday; None otherwise."""
    if field.isdigit() and int(field) <= 7:
        return DAYS[int(field) % 7]
    low, dash, high = field.partition("-")
    if dash and low.isdigit() and high.isdigit() and int(high) <= 7:
        return f"{DAYS[int(low) % 7]} to {DAYS[int(high) % 7]}"
    parts = field.split(",")
    if len(parts) > 1 and all(p.isdigit() and int(p) <= 7 for p in parts):
        names = [DAYS[int(p) % 7] for p in parts]
        return ", ".join(names[:-1]) + " and " + names[-1]
    return None


def show_json(value):
    """Pretty JSON for a <pre>."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


# -- Static files and login ------------------------------------------------------------
@pages.get("/static/<filename:path>")
def static(filename):
    """The dashboard's CSS and JavaScript."""
    reply = static_file(filename, root=str(STATIC_DIR))
    reply.set_header("Cache-Control", "public, max-age=300")
    return reply


@pages.get("/login")
def login_form():
    """The login form; a logged-in user goes straight on."""
    if current_user() is not None:
        redirect(_safe_next(request.query.getunicode("next")), 303)
    return render("login", title="Log in", error=None, email="", next=_safe_next(request.query.getunicode("next")))


def throttle_keys(email, ip):
    """The keys a failed login counts under: the account from this address, and the address.

    Tied to the address, someone else's failures never lock an account's owner out.
    """
    return f"email:{email}|ip:{ip}", f"ip:{ip}"


@pages.post("/login")
def login():
    """Check email and password, start a session and go on; failures are throttled."""
    check_csrf("login")
    email = (request.forms.getunicode("email") or "").strip().lower()
    password = request.forms.getunicode("password") or ""
    target = _safe_next(request.forms.getunicode("next"))
    ip = request.environ.get("litejobs.client_address") or request.environ.get("REMOTE_ADDR", "")
    account_key, address_key = throttle_keys(email, ip)
    wait = max(
        LoginFailure.wait(account_key, settings.LOGIN_ATTEMPTS),
        LoginFailure.wait(address_key, settings.LOGIN_ATTEMPTS * 4),
    )
    if wait:
        response.set_header("Retry-After", str(wait))
        minutes = -(-wait // 60)
        message = f"Too many failed logins. Try again in {minutes} minute{'s' if minutes != 1 else ''}."
        return render("login", _status=429, title="Log in", error=message, email=email, next=target)
    user = User.get_or_none(User.email == email) if email else None
    if user is None or not user.active or not user.password_hash:
        User(password_hash=_DUMMY_HASH).check_password(password)
        user = None
    elif not user.check_password(password):
        user = None
    if user is None:
        LoginFailure.record(account_key, address_key)
        return render("login", title="Log in", error="Wrong email or password.", email=email, next=target)
    LoginFailure.clear(account_key)
    lifetime = datetime.timedelta(hours=settings.SESSION_HOURS)
    _, plain = Token.issue(user, "session", lifetime)
    _set_cookie(SESSION_COOKIE, f"{plain}.{_sign('session', plain)}", int(lifetime.total_seconds()))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    redirect(target, 303)


@pages.post("/logout")
def logout():
    """End the session: its token is deleted, so the cookie is worthless even if kept."""
    check_csrf("csrf")
    plain = _session_plain()
    token = Token.find(plain, "session")
    if token is not None:
        token.delete_instance()
    response.delete_cookie(SESSION_COOKIE, path="/")
    redirect("/login", 303)


# -- Overview --------------------------------------------------------------------------
CHART_HOURS = 24
CHART_BUCKET = 600  # seconds: 144 bars over 24 h


@page("/")
def overview():
    """Counts by status, the last 24 h as a chart, queues, workers and recent failures."""
    counts = Job.counts_by_status(finished_since=utcnow() - datetime.timedelta(hours=CHART_HOURS))
    queues = queue_status.queues()
    return render(
        "overview",
        title="Overview",
        counts=counts,
        statuses=STATUSES,
        chart=throughput_chart(),
        queues=queues,
        depth=sum(q["depth"] for q in queues),
        running=sum(q["running"] for q in queues),
        scheduled=counts.get("scheduled", 0),
        workers_alive=Worker.alive().count(),
        failures=list(Job.recent_failures(10)),
    )


def throughput_chart(now=None):
    """Jobs finished per minute, failures stacked on top, over the last 24 h."""
    now = now or utcnow()
    buckets = CHART_HOURS * 3600 // CHART_BUCKET
    # Bars start on whole ten minutes, so the hour labels fall on the hour.
    start = now - datetime.timedelta(seconds=buckets * CHART_BUCKET)
    since = datetime.datetime.min + (start - datetime.datetime.min) // datetime.timedelta(seconds=CHART_BUCKET) * datetime.timedelta(seconds=CHART_BUCKET)
    counts = Job.finished_per_bucket(since, CHART_BUCKET)
    per_minute = 60 / CHART_BUCKET
    ok, failed, titles, labels = [], [], [], []
    for i in range(buckets + 1):
        total, fails = counts.get(i, (0, 0))
        ok.append((total - fails) * per_minute)
        failed.append(fails * per_minute)
        start = since + datetime.timedelta(seconds=i * CHART_BUCKET)
        titles.append(f"{start:%H:%M} UTC: {total} finished, {fails} failed")
        if start.minute < CHART_BUCKET // 60 and start.hour % 4 == 0:
            labels.append((i, f"{start:%H:%M}"))
    return charts.bars(
        [("bar-ok", ok), ("bar-fail", failed)],
        labels=labels,
        titles=titles,
        label="Jobs finished per minute over the last 24 hours; failures in red",
    )


# -- Jobs ------------------------------------------------------------------------------
@page("/jobs")
def job_list():
    """Jobs newest first: filter by function and status, find one by id."""
    name = request.query.getunicode("name") or ""
    status = request.query.getunicode("status") or ""
    wanted = (request.query.getunicode("id") or "").strip()
    cursor = request.query.getunicode("cursor") or None
    if wanted:
        job = Job.get_or_none(Job.id == wanted)
        if job is not None:
            redirect(f"/jobs/{quote(job.id)}", 303)
    if status and status not in STATUSES:
        abort(400, f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
    try:
        rows, next_cursor = Job.page(name or None, status or None, PAGE_SIZE, cursor)
    except ValueError:
        abort(400, "that page link is broken; start again from the first page")
    filters = {k: v for k, v in (("name", name), ("status", status)) if v}
    return render(
        "jobs",
        title="Jobs",
        jobs=rows,
        name=name,
        status=status,
        statuses=STATUSES,
        names=sorted(jobs.FUNCTIONS),
        not_found=wanted or None,
        first_page=cursor is None,
        first_url="/jobs?" + urlencode(filters) if filters else "/jobs",
        next_url="/jobs?" + urlencode({**filters, "cursor": next_cursor}) if next_cursor else None,
    )


def _get_job(job_id):
    job = Job.get_or_none(Job.id == job_id)
    if job is None:
        abort(404, f"no job with id {job_id!r}")
    return job


def timeline(job):
    """The job's life as (time, event) steps: enqueued → scheduled → started → retries → finished."""
    steps = [(job.enqueued_at, "enqueued" + (f" on queue {job.queue}" if job.queue else ""))]
    if job.scheduled_for:
        steps.append((job.scheduled_for, "due (scheduled)" if job.status != "retrying" else "retry due"))
    if job.attempts > 1:
        steps.append((None, f"{job.attempts - 1} earlier attempt{'s' if job.attempts > 2 else ''} failed"))
    if job.started_at:
        steps.append((job.started_at, f"started (attempt {job.attempts}) on {job.worker or 'a worker'}"))
    if job.status == "retrying":
        steps.append((None, f"waiting to retry after: {job.error}"))
    if job.finished_at:
        took = f" after {humanize.duration_ms(job.duration_ms)}" if job.duration_ms is not None else ""
        steps.append((job.finished_at, f"{job.status}{took}"))
    return steps


@page("/jobs/<job_id>")
def job_detail(job_id):
    """One job: args, result, error and traceback, timeline, progress; Retry and Cancel."""
    job = _get_job(job_id)
    return show_job(job)


def show_job(job, status=200, error=None):
    return render(
        "job",
        _status=status,
        title=f"Job {job.name}",
        job=job,
        data=job.to_dict(),
        steps=timeline(job),
        children=list(job.children()),
        log=joblog.JobLog.of(job.id),
        terminal=TERMINAL,
        action_error=error,
    )


@page("/jobs/<job_id>/retry", "POST")
def job_retry(job_id):
    """Run a finished job again; shows the new job."""
    job = _get_job(job_id)
    try:
        new = jobs.retry(job)
    except jobs.Conflict as exc:
        return show_job(job, 409, str(exc))
    except jobs.Unavailable as exc:
        return show_job(job, 503, str(exc))
    redirect(f"/jobs/{quote(new.id)}", 303)


@page("/jobs/<job_id>/cancel", "POST")
def job_cancel(job_id):
    """Cancel a waiting job or ask a running one to stop; shows the job."""
    job = _get_job(job_id)
    try:
        jobs.cancel(job)
    except jobs.Conflict as exc:
        return show_job(job, 409, str(exc))
    redirect(f"/jobs/{quote(job.id)}", 303)


@page("/jobs/<job_id>/terminate", "POST")
def job_terminate(job_id):
    """Stop a running job at once (cancel with terminate=true); shows the job."""
    job = _get_job(job_id)
    stops.terminate(job)
    redirect(f"/jobs/{quote(job.id)}", 303)


# -- Run a function ---------------------------------------------------------------------
def _public_function(name):
    function = jobs.FUNCTIONS.get(name)
    if function is None or not function.public:
        abort(404, f"no job function {name!r}")
    return function


@page("/run")
def run_list():
    """The public functions, each with its docstring and a link to its form."""
    functions = sorted(jobs.public_functions(), key=lambda f: f.name)
    return render("run_list", title="Run", functions=functions)


@page("/run/<name>")
def run_form(name):
    """A form built from the function's signature."""
    function = _public_function(name)
    return render("run_form", title=f"Run {name}", function=function, values={}, error=None)


def form_arguments(function, forms):
    """Keyword arguments from form strings, converted to the declared types; ArgumentError."""
    args = {}
    for param in function.params:
        if param.type == "bool":
            if param.name in forms or param.required:
                args[param.name] = param.name in forms
            continue
        raw = forms.getunicode(param.name)
        if raw is None or (raw == "" and not (param.type == "str" and param.required)):
            if param.required:
                raise jobs.ArgumentError(param.name, "missing required argument")
            continue
        args[param.name] = convert(param, raw)
    return args


def convert(param, raw):
    """One form string as the parameter's type: numbers parsed, JSON for lists, dicts and any."""
    if param.type == "str":
        return raw
    if param.type in ("int", "float"):
        kind = int if param.type == "int" else float
        try:
            return kind(raw.strip())
        except ValueError:
            raise jobs.ArgumentError(param.name, f"expected {param.type}, got {raw[:50]!r}") from None
    try:
        return guard.loads(raw)
    except guard.Refused as exc:
        raise jobs.ArgumentError(param.name, exc.message) from None
    except ValueError:
        if param.type == "any":
            return raw  # plain text is a string
        example = "[1, 2]" if param.type == "list" else '{"a": 1}'
        raise jobs.ArgumentError(param.name, f"expected {param.type} as JSON, e.g. {example}") from None


@page("/run/<name>", "POST")
def run_submit(name):
    """Enqueue a call from the form and show its job, which refreshes as it runs."""
    function = _public_function(name)
    values = {p.name: request.forms.getunicode(p.name) for p in function.params}
    try:
        job, _ = jobs.submit(name, form_arguments(function, request.forms))
    except jobs.ArgumentError as exc:
        return render("run_form", _status=422, title=f"Run {name}", function=function, values=values, error=exc)
    except jobs.Unavailable as exc:
        abort(503, str(exc))
    redirect(f"/jobs/{quote(job.id)}", 303)


# -- Workers ---------------------------------------------------------------------------
@page("/workers")
def workers():
    """Consumers: host, pid, kind, concurrency, last heartbeat and running jobs."""
    rows = list(Worker.listed().limit(100))
    running = {}
    for job in Job.running_on([w.id for w in rows]):
        running.setdefault(job.consumer_id, []).append(job)
    return render("workers", title="Workers", workers=rows, running=running, timeout=settings.HEARTBEAT_TIMEOUT)


# -- Schedules ----------------------------------------------------------------------------
def schedule_rows():
    """The API's schedule dicts with times as datetimes and the cron put in words."""
    rows = []
    for item in schedule_dicts():
        row = dict(item, words=cron_words(item["cron"]))
        for key in ("next_run", "last_run"):
            row[key] = parse_time(item[key]) if item[key] else None
        rows.append(row)
    return rows


def schedules_page(status=200, error=None):
    return render("schedules", _status=status, title="Schedules", schedules=schedule_rows(), error=error)


@page("/schedules")
def schedules():
    """Periodic tasks: cron as written and in words, next and last run, last status; Pause, Resume, Run now."""
    return schedules_page()


def _schedule_action(action, name):
    try:
        return action(name)
    except KeyError:
        abort(404, f"no schedule {name!r}")


@page("/schedules/<name>/pause", "POST")
def schedule_pause(name):
    """Pause a schedule for every consumer; shows the schedules."""
    _schedule_action(lambda n: pause_schedule(n, who=f"user {current_user().email}"), name)
    redirect(f"/schedules#schedule-{quote(name)}", 303)


@page("/schedules/<name>/resume", "POST")
def schedule_resume(name):
    """Resume a paused schedule; shows the schedules."""
    _schedule_action(lambda n: pause_schedule(n, paused=False, who=f"user {current_user().email}"), name)
    redirect(f"/schedules#schedule-{quote(name)}", 303)


@page("/schedules/<name>/run", "POST")
def schedule_run(name):
    """Run a schedule's function now; shows the job."""
    try:
        job = _schedule_action(run_schedule, name)
    except jobs.Conflict as exc:
        return schedules_page(409, str(exc))
    except jobs.Unavailable as exc:
        abort(503, str(exc))
    redirect(f"/jobs/{quote(job.id)}", 303)
