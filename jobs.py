"""litejobs jobs: the Huey instance, the job history it keeps, and every task.

`huey_consumer jobs.huey` imports this one module and so registers every
task. Each task call is a `Job` row (models.py) kept in step with huey's
signals; consumers heartbeat and a reaper runs again the jobs of consumers
that died, so a job accepted once reaches a terminal state.
"""

import datetime
import hashlib
import hmac
import inspect
import json
import logging
import os
import random
import re
import signal
import threading
import time
import traceback
import types
import typing
import uuid
import zoneinfo

from huey import consumer as huey_consumer
from huey import Huey, crontab, signals
from huey.exceptions import CancelExecution, RetryTask, TaskTimeout
from huey.storage import PostgresStorage, PriorityRedisStorage, RedisStorage, SqliteStorage
from peewee import IntegrityError, PeeweeException
from playhouse.pool import PooledDatabase

import limits
import mailer
import media
import provider
import settings
import webhooks
from models import TERMINAL, WAITING, Job, Worker, create_tables, utcnow
from models import Webhook, WebhookDelivery, db, isoformat, parse_time, usage_counts
from models import Certificate, Enrollment, Media, delete_quiet_posts
from models import Order
from models import ApiKey, DailyAnalytics, DigestWeek, MailSent, Post, ScheduleRun, ScheduleState, Token
from models import TrendingSnapshot, User, UserStats, bulk_insert
from models import WAL_CHECKPOINT_PAGES

logger = logging.getLogger("litejobs.jobs")


class JobError(Exception):
    """Raise to fail a job with exactly this message."""


class ArgumentError(ValueError):
    """Arguments that do not fit a function; `field` names the culprit."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field


class Conflict(Exception):
    """The action is not possible in the job's current state."""


class Unavailable(Exception):
    """The database or the queue storage cannot be reached; nothing was written."""


# -- The Huey instance ----------------------------------------------------------
class LitejobsHuey(Huey):
    """Huey whose consumers heartbeat, recover lost jobs and stop gracefully."""

    def create_consumer(self, **options):
        return Consumer(self, **options)

    # litejobs cancels a job in its history, never with huey's revoke flags: cancel()
    # marks it canceled and the start UPDATE (Job.mark_running) refuses a finished
    # job. So the two look-ups huey makes around every run (read the job's revoke
    # flag, clear it afterwards) are skipped: two queue round trips per job, a
    # tenth of a job's cost on Redis and PostgreSQL (bench/, issue 7).
    def is_revoked(self, task, timestamp=None, peek=True):
        return False

    def delete(self, key):
        if key.startswith("r:"):  # a job's revoke flag (huey's Task.revoke_id): never set
            return False
        return super().delete(key)


class QueueStorage(SqliteStorage):
    """huey's SQLite storage with `synchronous=NORMAL` and WAL_CHECKPOINT_PAGES, as the app database has.

    With WAL this survives a crash of any process; only a power cut can undo
    the last commits, and then the reaper's requeue_lost() enqueues again a job
    whose message vanished. huey's default (FULL) syncs the disk on every
    enqueue and every dequeue: a third of a drained job's cost (bench/, issue 7).
    """

    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute("pragma synchronous=normal")
        conn.execute(f"pragma wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        return conn


def make_huey(url):
    """A LitejobsHuey storing its queue at `url` (sqlite, redis or postgresql)."""
    # Results live in the Job table, so huey keeps none (faster drains, no leftovers).
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        settings.ensure_dir(os.path.dirname(path) or ".", "QUEUE_URL")
        return LitejobsHuey("litejobs", results=False, storage_class=QueueStorage, filename=path, timeout=10)
    if url.startswith(("redis://", "rediss://")):
        # The priority storage is the one that honours queue priorities on Redis.
        return LitejobsHuey("litejobs", results=False, storage_class=PriorityRedisStorage, url=url)
    return LitejobsHuey("litejobs", results=False, storage_class=PostgresStorage, dsn=url)


huey = make_huey(settings.QUEUE_URL)


def use_queue(url):
    """Point the existing `huey` (and its registered tasks) at another queue storage."""
    other = make_huey(url)
    huey.storage.close()
    huey.storage_class, huey.storage_kwargs, huey.storage = other.storage_class, other.storage_kwargs, other.storage


def check_queue():
    """Raise when the queue storage cannot answer."""
    huey.storage.queue_size()


# -- Functions: tasks with a signature the API can validate ---------------------
_TYPES = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "dict"}
_HUEY_OPTIONS = {"id", "eta", "delay", "retries", "retry_delay", "retry_backoff", "priority", "expires", "timeout"}


class Param:
    """One argument of a function: its name, JSON type, default and range."""

    def __init__(self, name, annotation, default, bounds):
        self.name = name
        self.required = default is inspect.Parameter.empty
        self.default = None if self.required else default
        self.nullable = default is None
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            self.nullable = self.nullable or type(None) in args
            annotation = next((a for a in args if a is not type(None)), typing.Any)
        annotation = typing.get_origin(annotation) or annotation
        self.type = _TYPES.get(annotation, "any")
        self.bounds = bounds

    def to_dict(self):
        spec = {"name": self.name, "type": self.type, "required": self.required}
        if not self.required:
            spec["default"] = self.default
        if self.bounds:
            spec["minimum"], spec["maximum"] = self.bounds
        return spec

    def check(self, value):
        """The value to pass on, or ArgumentError."""
        if value is None and self.nullable:
            return None
        ok = {
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "bool": lambda v: isinstance(v, bool),
            "list": lambda v: isinstance(v, list),
            "dict": lambda v: isinstance(v, dict),
            "any": lambda v: True,
        }[self.type]
        if not ok(value):
            shown = repr(value) if isinstance(value, str) else json.dumps(value)
            raise ArgumentError(self.name, f"expected {self.type}, got {shown}")
        if self.type == "float":
            value = float(value)
        if self.bounds:
            low, high = self.bounds
            if (low is not None and value < low) or (high is not None and value > high):
                raise ArgumentError(self.name, f"must be from {low} to {high}, got {value}")
        return value


class Function:
    """A task with what the API needs: its parameters, queue and retry policy."""

    def __init__(self, wrapper, func, queue, retries, public, bounds, limit=None):
        self.wrapper = wrapper
        self.limit = limit
        self.name = func.__name__
        self.doc = inspect.getdoc(func) or ""
        self.queue = queue
        self.retries = retries
        self.public = public
        hints = typing.get_type_hints(func)
        self.params = [
            Param(p.name, hints.get(p.name, typing.Any), p.default, bounds.get(p.name))
            for p in inspect.signature(func).parameters.values()
        ]

    @property
    def priority(self):
        return settings.QUEUE_PRIORITIES.get(self.queue, 0)

    @property
    def limits(self):
        """The (slot key, limit) pairs a run of this function must fit under."""
        limits = []
        if self.queue in settings.CONCURRENCY_LIMITS:
            limits.append((f"queue:{self.queue}", settings.CONCURRENCY_LIMITS[self.queue]))
        limit = settings.CONCURRENCY_LIMITS.get(self.name, self.limit)
        if limit:
            limits.append((f"function:{self.name}", limit))
        return limits

    def to_dict(self):
        return {
            "name": self.name,
            "doc": self.doc,
            "params": [p.to_dict() for p in self.params],
            "queue": self.queue,
            "retries": self.retries,
        }

    def validate(self, args):
        """Checked keyword arguments from a JSON object, or ArgumentError."""
        known = {p.name for p in self.params}
        for name in args:
            if name not in known:
                raise ArgumentError(name, f"unknown argument; {self.name} takes {', '.join(sorted(known)) or 'none'}")
        clean = {}
        for param in self.params:
            if param.name in args:
                clean[param.name] = param.check(args[param.name])
            elif param.required:
                raise ArgumentError(param.name, "missing required argument")
        return clean


FUNCTIONS = {}


def task(
    queue="default",
    retries=0,
    retry_delay=0,
    retry_backoff=1,
    timeout=None,
    public=False,
    bounds=None,
    limit=None,
    **options,
):
    """Register a task with its job history; `public=True` makes it callable over HTTP.

    `bounds` maps an argument to its (low, high) range, checked before enqueue;
    `limit` caps how many calls run at once across every consumer; `timeout`
    (seconds) fails a run that takes longer.
    """

    def decorator(func):
        clash = _HUEY_OPTIONS & set(inspect.signature(func).parameters)
        if clash:
            raise TypeError(f"{func.__name__}: parameter names {sorted(clash)} are reserved by huey")
        wrapper = huey.task(
            retries=retries,
            retry_delay=retry_delay,
            retry_backoff=retry_backoff,
            timeout=timeout,
            priority=settings.QUEUE_PRIORITIES.get(queue, 0),
            **options,
        )(func)
        FUNCTIONS[func.__name__] = Function(wrapper, func, queue, retries, public, bounds or {}, limit)
        return wrapper

    return decorator


def public_functions():
    return [f for f in FUNCTIONS.values() if f.public]


def queues(now=None):
    """Every configured queue (and any a function uses): priority, depth, running, oldest wait, limit."""
    now = now or utcnow()
    stats = Job.queue_stats()
    names = set(settings.QUEUE_PRIORITIES) | {f.queue for f in FUNCTIONS.values()} | set(stats)
    result = []
    for name in sorted(names, key=lambda q: (-settings.QUEUE_PRIORITIES.get(q, 0), q)):
        queue = stats.get(name, {"depth": 0, "running": 0, "oldest": None})
        oldest = queue["oldest"]
        result.append(
            {
                "name": name,
                "priority": settings.QUEUE_PRIORITIES.get(name, 0),
                "depth": queue["depth"],
                "running": queue["running"],
                "oldest_wait_s": round(max((now - oldest).total_seconds(), 0), 3) if oldest else None,
                "concurrency_limit": settings.CONCURRENCY_LIMITS.get(name),
            }
        )
    return result


# -- Enqueueing -------------------------------------------------------------------
_wake = threading.Event()


def submit(
    name,
    args=None,
    *,
    delay=None,
    eta=None,
    priority=None,
    api_key_id=None,
    idempotency_key=None,
    parent_id=None,
    checked=False,
):
    """Record and enqueue a call of function `name`; returns (job, created).

    The row is written first and the message second; if the message cannot be
    written the row is removed again, so a failure leaves nothing behind.
    """
    function = FUNCTIONS[name]
    args = args or {}
    kwargs = args if checked else function.validate(args)
    if delay is not None:
        eta = utcnow() + datetime.timedelta(seconds=delay)
    if priority is None:
        priority = function.priority
    try:
        if idempotency_key is not None:
            existing = Job.by_idempotency_key(api_key_id, name, idempotency_key)
            if existing is not None:
                return _same_call(existing, kwargs), False
        job = Job.record(
            id=str(uuid.uuid4()),
            name=name,
            args=json.dumps(kwargs),
            status="scheduled" if eta and eta > utcnow() else "queued",
            queue=function.queue,
            priority=priority,
            scheduled_for=eta,
            parent_id=parent_id,
            api_key_id=api_key_id,
            idempotency_key=idempotency_key,
        )
    except IntegrityError:
        # Another request with the same idempotency key won the race.
        return _same_call(Job.by_idempotency_key(api_key_id, name, idempotency_key), kwargs), False
    except PeeweeException as exc:
        raise Unavailable(f"database unavailable: {exc}") from exc
    try:
        _enqueue(function, job.id, kwargs, eta, priority)
    except Exception as exc:
        Job.delete_by_id(job.id)
        raise Unavailable(f"queue storage unavailable: {exc}") from exc
    return job, True


def _same_call(job, kwargs):
    if job.args_dict != kwargs:
        raise Conflict(f"Idempotency-Key already used for job {job.id} with other arguments")
    return job


def _enqueue(function, job_id, kwargs, eta=None, priority=None):
    if eta is not None and eta.tzinfo is None:
        # Our times are naive UTC; huey reads a naive eta as local time.
        eta = eta.replace(tzinfo=datetime.timezone.utc)
    message = function.wrapper.s(id=job_id, eta=eta, priority=priority, **kwargs)
    message.recorded = True
    huey.enqueue(message)
    _wake.set()


def enqueue(name, **kwargs):
    """Enqueue a call from Python code (tasks, CLI); returns the job."""
    job, _ = submit(name, kwargs)
    return job


def cancel(job):
    """Cancel a waiting job (it never runs) or ask a running one to stop."""
    if job.is_terminal:
        raise Conflict(f"job {job.id} is already {job.status}")
    if job.status == "running":
        Job.request_cancel(job.id)
    else:
        # Its message stays queued; the worker that takes it finds the job finished and skips it.
        Job.mark_finished(job.id, "canceled", error="canceled before it ran")
    return Job.get_by_id(job.id)


def retry(job, api_key_id=None):
    """A new job with the same function and arguments; `parent_id` links them."""
    if not job.is_terminal:
        raise Conflict(f"job {job.id} is {job.status}; only a finished job can be retried")
    if job.name not in FUNCTIONS:
        raise Conflict(f"function {job.name} no longer exists")
    new, _ = submit(job.name, job.args_dict, api_key_id=api_key_id, parent_id=job.id, checked=True)
    return new


def wait(job_id, timeout):
    """The job once terminal, or as it is when `timeout` seconds ran out."""
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        job = Job.get_by_id(job_id)
        if job.is_terminal or time.monotonic() >= deadline:
            return job
        time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
        pause = min(pause * 1.5, 0.05)


# -- Keeping the history in step with huey ---------------------------------------
_current = threading.local()


def current_job_id():
    """The id of the job running in this worker, or None outside a job."""
    return getattr(_current, "job_id", None)


def progress(done, total=None, message=None):
    """Report progress of the running job; stops it when it was canceled or timed out.

    Thread workers cannot be interrupted, so long jobs call this regularly: it
    raises CancelExecution for a canceled job and TaskTimeout past its timeout.
    """
    job_id = current_job_id()
    if job_id is None:
        return
    Job.set_progress(job_id, done, total, message)
    if Job.select(Job.cancel_requested).where(Job.id == job_id).scalar():
        raise CancelExecution("canceled while running", retry=False)
    _current.task.check_timeout()


def _worker_name():
    return f"{settings.HOSTNAME}:{os.getpid()}:{threading.current_thread().name}"


@huey.signal(signals.SIGNAL_ENQUEUED)
def _record_enqueued(signal_name, message):
    """Record calls that did not come through submit(): periodic ticks, plain task() calls."""
    if getattr(message, "recorded", False):
        return
    Job.insert(
        id=message.id,
        name=message.name,
        args=json.dumps(message.kwargs, default=str),
        status="queued",
        queue=FUNCTIONS[message.name].queue if message.name in FUNCTIONS else "default",
        priority=message.priority or 0,
    ).on_conflict_ignore().execute()


@huey.signal(signals.SIGNAL_SCHEDULED)
def _record_scheduled(signal_name, message):
    Job.update(scheduled_for=message.eta).where(Job.id == message.id).execute()


def _limits_of(message):
    function = FUNCTIONS.get(message.name)
    return function.limits if function else []


@huey.pre_execute()
def _record_running(message):
    limits = _limits_of(message)
    started = utcnow()
    if not Job.mark_running(message.id, _worker_name(), CONSUMER_ID, now=started, limits=limits):
        row = Job.select(Job.status).where(Job.id == message.id).first()
        if row is not None and row.status in TERMINAL:
            # Canceled (or otherwise finished) between dequeue and now: do not run it.
            raise CancelExecution("job already finished", retry=False)
        if row is not None and limits:
            _wait_for_slot(message, limits)
    _current.job_id = message.id
    _current.task = message
    # Kept for _record_outcome, which then needs no read of the row for the duration.
    _current.started_at = started


def _wait_for_slot(message, limits):
    """Put a job over its concurrency limit back in the queue; it is never failed for it."""
    waiting = ", ".join(f"{key} (limit {limit})" for key, limit in limits)
    Job.update(waiting_for=f"a free slot: {waiting}").where(Job.id == message.id).execute()
    # A short pause keeps workers from spinning on a queue full of blocked jobs.
    time.sleep(0.05)
    message.recorded = True
    huey.enqueue(message)
    raise CancelExecution("waiting for a concurrency slot", retry=False)


@huey.post_execute()
def _record_outcome(message, value, exc):
    started_at = getattr(_current, "started_at", None)
    _current.job_id = _current.task = _current.started_at = None
    if exc is None:
        Job.mark_finished(message.id, "succeeded", result=value, started_at=started_at)
        job_event(message.id, message.name, "succeeded")
        _log_finished(message, "succeeded", started_at)
        return
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, TaskTimeout):
        error = "timeout"
    elif isinstance(exc, (JobError, CancelExecution)):
        error = str(exc) or type(exc).__name__
    else:
        error = f"{type(exc).__name__}: {exc}"
    if message.retries and not (isinstance(exc, CancelExecution) and _cancel_requested(message.id)):
        Job.mark_retrying(message.id, error, trace)
        _log_finished(message, "retrying", started_at, error)
    elif isinstance(exc, CancelExecution):
        Job.mark_finished(message.id, "canceled", error=error, started_at=started_at)
        _log_finished(message, "canceled", started_at, error)
    else:
        Job.mark_finished(message.id, "failed", error=error, traceback=trace, started_at=started_at)
        job_event(message.id, message.name, "failed")
        _log_finished(message, "failed", started_at, error)


def _log_finished(message, status, started_at, error=None):
    """One line per run: job id, function, outcome and duration (and the error's first line)."""
    ms = 0.0 if started_at is None else (utcnow() - started_at).total_seconds() * 1000
    if error is None:
        logger.info("job %s %s %s in %.1f ms", message.id, message.name, status, ms)
    else:
        first = error.strip().splitlines()[0] if error.strip() else ""
        logger.warning("job %s %s %s in %.1f ms: %s", message.id, message.name, status, ms, first[:300])


def _cancel_requested(job_id):
    return bool(Job.select(Job.cancel_requested).where(Job.id == job_id).scalar())


@huey.signal(signals.SIGNAL_EXPIRED)
def _record_expired(signal_name, message):
    Job.mark_finished(message.id, "expired", error="expired before it ran")


@huey.signal(signals.SIGNAL_INTERRUPTED)
def _requeue_interrupted(signal_name, message):
    """A job cut short by a stop runs again at once instead of being lost."""
    Job.update(status="queued", worker=None, consumer_id=None, error="interrupted by a consumer stop").where(
        (Job.id == message.id) & (Job.status == "running")
    ).execute()
    if _limits_of(message):
        Slot.release(message.id)
    message.recorded = True
    huey.enqueue(message)


# -- Schedules ----------------------------------------------------------------------
# Periodic work runs from this table, not from huey's periodic_task: the state of
# each schedule lives in the database (models.ScheduleState) so a pause holds for
# every consumer and survives restarts, and each tick is claimed once
# cluster-wide (models.ScheduleRun) however many consumers run the Scheduler.
ONE_MINUTE = datetime.timedelta(minutes=1)


class Schedule:
    """A function name and when it runs: a crontab "minute hour day month day-of-week".

    The crontab is read in settings.TIMEZONE with huey's crontab() rules (day
    of week 0 = Sunday; day and day of week must both match). Across a DST
    change, a schedule whose hour field is `*` follows real time (every 5
    minutes stays every 5 minutes); one at fixed hours follows the wall
    clock: a skipped wall time runs when the clock jumps past it, a repeated
    one runs the first time only.
    """

    def __init__(self, name, cron):
        fields = cron.split()
        if len(fields) != 5:
            raise ValueError(f"schedule {name}: {cron!r} is not a crontab of 5 fields (minute hour day month day-of-week)")
        minute, hour, day, month, day_of_week = fields
        try:
            self.on_date = crontab(day=day, month=month, day_of_week=day_of_week, strict=True)
            on_minute, on_hour = crontab(minute=minute, strict=True), crontab(hour=hour, strict=True)
        except ValueError as exc:
            raise ValueError(f"schedule {name}: bad crontab {cron!r}: {exc}") from None
        base = datetime.datetime(2000, 1, 1)
        self.minutes = [m for m in range(60) if on_minute(base.replace(minute=m))]
        self.hours = [h for h in range(24) if on_hour(base.replace(hour=h))]
        self.name, self.cron = name, cron
        self.hourly = len(self.hours) == 24

    def runs(self, after, tz=None):
        """Run times strictly after `after` (naive UTC), ascending, as naive UTC; up to 5 years ahead."""
        tz = tz or zone()
        local_after = _to_local(after, tz)
        # No DST change moves a wall time by more than 2 hours, so earlier wall times cannot be after `after`.
        floor = local_after - datetime.timedelta(hours=3)
        day = local_after.date() - datetime.timedelta(days=1)
        for _ in range(5 * 366 + 2):
            if self.on_date(datetime.datetime.combine(day, datetime.time())):
                times = set()
                for hour in self.hours:
                    for minute in self.minutes:
                        wall = datetime.datetime.combine(day, datetime.time(hour, minute))
                        if wall >= floor:
                            times.update(t for t in self._instants(wall, tz) if t > after)
                yield from sorted(times)
            day += datetime.timedelta(days=1)

    def _instants(self, wall, tz):
        """The UTC times at which local wall time `wall` runs (none, one or two)."""
        if tz is datetime.timezone.utc or getattr(tz, "key", None) == "UTC":
            return (wall,)
        first, second = _to_utc(wall, tz, fold=0), _to_utc(wall, tz, fold=1)
        if _to_local(first, tz) != wall:
            # The clock jumps over this wall time (spring forward).
            if self.hourly:
                return ()
            jump = min(first, second)
            while _to_local(jump, tz) < wall:
                jump += ONE_MINUTE
            return (jump,)
        if second != first and self.hourly:
            return (first, second)  # the clock goes back: this wall time happens twice
        return (first,)

    def next_run(self, after, tz=None):
        """The first run time strictly after `after` (naive UTC), or None."""
        return next(self.runs(after, tz), None)

    def last_due(self, after, now, tz=None):
        """The latest run time in (after, now], or None: missed ticks of a stalled scheduler run once."""
        due = None
        for when in self.runs(after, tz):
            if when > now:
                break
            due = when
        return due


SCHEDULES = {}


def schedule(name, cron):
    """Run function `name` on crontab `cron`; the function is looked up when a tick comes."""
    SCHEDULES[name] = Schedule(name, cron)


schedule("poll_pending_orders", "*/5 * * * *")
schedule("cleanup_expired_tokens", "0 2 * * *")
schedule("update_user_statistics", "0 3 * * *")
schedule("update_trending_hashtags", "0 * * * *")
schedule("generate_content_analytics", "0 4 * * *")
schedule("update_post_engagement_scores", "0 5 * * *")
schedule("send_weekly_digest", "0 9 * * 1")
schedule("reset_daily_quotas", "0 0 * * *")
schedule("prune_job_history", "0 1 * * *")
schedule("send_usage_statistics", "0 * * * *")
# Issue 10's cleanups: listed once their tasks exist.
schedule("cleanup_old_posts", "0 1 * * 0")
schedule("cleanup_old_cache", "0 */6 * * *")


def zone():
    """settings.TIMEZONE as a tzinfo."""
    return zoneinfo.ZoneInfo(settings.TIMEZONE)


def _to_local(utc, tz):
    """Naive UTC -> naive wall time in `tz`."""
    return utc.replace(tzinfo=datetime.timezone.utc).astimezone(tz).replace(tzinfo=None)


def _to_utc(wall, tz, fold=0):
    return wall.replace(tzinfo=tz, fold=fold).astimezone(datetime.timezone.utc).replace(tzinfo=None)


def _minute(when):
    return when.replace(second=0, microsecond=0)


def active_schedules():
    """The schedules whose function exists, in table order."""
    return [s for s in SCHEDULES.values() if s.name in FUNCTIONS]


def get_schedule(name):
    """The schedule called `name`; KeyError when there is none (or its function is missing)."""
    if name not in SCHEDULES or name not in FUNCTIONS:
        raise KeyError(name)
    return SCHEDULES[name]


def _in_flight(state):
    """The schedule's last job when it has not finished yet, else None."""
    if state is None or state.last_job_id is None:
        return None
    job = Job.get_or_none(Job.id == state.last_job_id)
    return job if job is not None and not job.is_terminal else None


def tick(now=None, after=None, tz=None):
    """Start every schedule due in (after, now], once cluster-wide; returns the jobs started.

    `after` defaults to a minute before `now`. A paused schedule is skipped; a
    tick whose previous job has not finished is skipped too (never overlaps).
    """
    now = _minute(now or utcnow())
    after = max(after or now - ONE_MINUTE, now - datetime.timedelta(days=1))
    states = ScheduleState.by_name()
    started = []
    for item in active_schedules():
        try:
            slot = item.last_due(after, now, tz)
            if slot is None:
                continue
            state = states.get(item.name)
            if state is not None and state.paused:
                logger.info("schedule %s: paused; tick %s skipped", item.name, isoformat(slot))
                continue
            claim = ScheduleRun.claim(item.name, slot, CONSUMER_ID)
            if claim is None:
                continue  # another consumer has this tick
            running = _in_flight(state)
            if running is not None:
                claim.note = f"skipped: job {running.id} is still {running.status}"
                claim.save()
                logger.warning("schedule %s: tick %s %s", item.name, isoformat(slot), claim.note)
                continue
            job, _ = submit(item.name, {})
            claim.job_id = job.id
            claim.save()
            ScheduleState.record_run(item.name, job.id, utcnow())
            logger.info("schedule %s: tick %s started job %s", item.name, isoformat(slot), job.id)
            started.append(job)
        except Exception:
            # One schedule's failure (database busy, queue down) must not stop the others,
            # nor kill the scheduler thread: the next tick tries again.
            logger.exception("schedule %s: tick at %s failed", item.name, isoformat(now))
    return started


def run_schedule(name):
    """Start schedule `name` now (paused or not); Conflict while its last job is unfinished."""
    get_schedule(name)
    running = _in_flight(ScheduleState.get_or_none(ScheduleState.name == name))
    if running is not None:
        raise Conflict(f"schedule {name}: job {running.id} is still {running.status}; a schedule never overlaps itself")
    job, _ = submit(name, {})
    ScheduleState.record_run(name, job.id, utcnow())
    return job


def pause_schedule(name, paused=True):
    """Pause (or resume) schedule `name` for every consumer; returns its dict."""
    get_schedule(name)
    ScheduleState.set_paused(name, paused)
    return schedule_dict(name)


def schedule_dicts(now=None):
    """Every active schedule as the API shows it."""
    now = now or utcnow()
    states = ScheduleState.by_name()
    job_ids = [s.last_job_id for s in states.values() if s.last_job_id]
    statuses = dict(Job.select(Job.id, Job.status).where(Job.id.in_(job_ids)).tuples()) if job_ids else {}
    result = []
    for item in active_schedules():
        state = states.get(item.name)
        paused = bool(state and state.paused)
        last_job_id = state.last_job_id if state else None
        result.append(
            {
                "name": item.name,
                "cron": item.cron,
                "timezone": settings.TIMEZONE,
                "queue": FUNCTIONS[item.name].queue,
                "paused": paused,
                "next_run": None if paused else isoformat(item.next_run(now)),
                "last_run": isoformat(state.last_run) if state else None,
                "last_status": statuses.get(last_job_id),
                "last_job_id": last_job_id,
            }
        )
    return result


def schedule_dict(name):
    return next(s for s in schedule_dicts() if s["name"] == name)


class Scheduler(huey_consumer.Scheduler):
    """huey's scheduler thread, ticking SCHEDULES instead of huey's periodic tasks.

    huey checks periodic tasks every 60 s counted from the consumer's start,
    so a 02:00 tick could start at 02:00:59 or, with a late wake-up, not at
    all. This one looks every second and ticks once per new minute, covering
    every minute since its last tick.
    """

    periodic_task_seconds = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_minute = None

    def enqueue_periodic_tasks(self, now=None):
        minute = _minute(now or utcnow())
        if self.last_minute is None:
            # The first look includes the current minute: a consumer restarted at
            # 02:00:30 still runs the 02:00 tick, unless another one did.
            self.last_minute = minute - ONE_MINUTE
        if minute <= self.last_minute:
            return []
        after, self.last_minute = self.last_minute, minute
        return tick(minute, after)


# -- Consumers: heartbeat, recovery, graceful stop ---------------------------
CONSUMER_ID = None


def reap(now=None):
    """Run again the jobs whose consumer stopped heartbeating; returns how many.

    Safe with several consumers reaping at once: each job is claimed by a
    conditional update, and only the one that changed the row enqueues it.
    """
    alive = [w.id for w in Worker.alive(now)]
    orphans = Job.select().where(
        (Job.status == "running") & Job.consumer_id.is_null(False) & Job.consumer_id.not_in(alive or [""])
    )
    recovered = 0
    for job in orphans:
        claim = (Job.id == job.id) & (Job.status == "running") & (Job.consumer_id == job.consumer_id)
        lost = f"worker lost: consumer {job.consumer_id} stopped heartbeating"
        if job.recoveries >= settings.MAX_RECOVERIES or job.name not in FUNCTIONS:
            Job.update(status="failed", error=lost, finished_at=utcnow()).where(claim).execute()
            job_event(job.id, job.name, "failed")
            continue
        if Job.update(status="queued", consumer_id=None, error=lost, recoveries=Job.recoveries + 1).where(claim).execute():
            _enqueue(FUNCTIONS[job.name], job.id, job.args_dict, priority=job.priority)
            logger.warning("job %s (%s): %s; running it again", job.id, job.name, lost)
            recovered += 1
    return recovered + requeue_lost(now)


_suspects = set()  # waiting jobs whose message was missing at the last look


def requeue_lost(now=None):
    """Enqueue again waiting jobs whose queue message vanished; returns how many.

    huey deletes a message when a worker takes it, so a consumer killed between
    taking a message and marking its job running loses it. A waiting job older
    than HEARTBEAT_TIMEOUT whose message is in neither the queue nor the
    schedule at two looks in a row (a heartbeat apart) is enqueued again.
    """
    global _suspects
    cutoff = (now or utcnow()) - datetime.timedelta(seconds=settings.HEARTBEAT_TIMEOUT)
    waiting = list(Job.select().where(Job.status.in_(WAITING) & (Job.enqueued_at < cutoff)).limit(1000))
    if not waiting:
        _suspects = set()
        return 0
    present = {message.id for message in huey.pending()} | {message.id for message in huey.scheduled()}
    missing = [job for job in waiting if job.id not in present]
    requeued = 0
    for job in missing:
        if job.id not in _suspects or job.name not in FUNCTIONS:
            continue
        claim = (Job.id == job.id) & (Job.status == job.status) & (Job.recoveries == job.recoveries)
        error = "queue message lost with a consumer; enqueued again"
        if Job.update(recoveries=Job.recoveries + 1, error=error).where(claim).execute():
            _enqueue(FUNCTIONS[job.name], job.id, job.args_dict, eta=job.scheduled_for, priority=job.priority)
            logger.warning("job %s (%s): %s", job.id, job.name, error)
            requeued += 1
    _suspects = {job.id for job in missing}
    return requeued


def _log_to_stderr():
    """huey_consumer sets up only huey's logger: give litejobs' a handler at LOG_LEVEL too."""
    ours = logging.getLogger("litejobs")
    if not ours.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
    ours.setLevel(settings.LOG_LEVEL)


class QueueWorker(huey_consumer.Worker):
    """A worker that an in-process enqueue wakes at once instead of after its poll delay."""

    def sleep(self):
        if self.delay > self.max_delay:
            self.delay = self.max_delay
        if _wake.wait(self.delay):
            _wake.clear()
        self.delay *= self.backoff


WATCHED_POLL_DELAY = 1.0  # idle workers' own polls, when a queue watcher wakes them


def watch_queue_file(path, stop_flag, interval=0.02):
    """Wake idle workers as soon as another process writes the SQLite queue file.

    A standalone consumer cannot hear the web process enqueue, and polling the
    queue every few ms costs a query per worker each time. Instead one thread
    looks at the size and mtime of the queue's WAL file (an os.stat, a few µs)
    and sets `_wake` when they change: pickup in ~10 ms instead of up to
    POLL_MAX_DELAY, for under 1% of a core (bench/latency.py, issue 7; each
    timed wake-up of a thread costs ~60 µs of CPU here, so one watcher at 50 Hz
    beats every worker polling at 10 Hz). Workers still poll, every
    WATCHED_POLL_DELAY, so a change the watcher missed costs only time.
    """
    wal = f"{path}-wal"
    last = None
    while not stop_flag.is_set():
        try:
            info = os.stat(wal)
        except OSError:  # not in WAL mode (yet): the file itself changes
            info = os.stat(path) if os.path.exists(path) else None
        seen = info and (info.st_mtime_ns, info.st_size)
        if seen != last:
            last = seen
            _wake.set()
        stop_flag.wait(interval)


class Consumer(huey_consumer.Consumer):
    """huey's consumer plus a Worker row, heartbeats, the reaper and graceful SIGTERM."""

    worker_class = QueueWorker
    scheduler_class = Scheduler

    def __init__(self, huey_instance, embedded=False, **options):
        # RUN_SCHEDULES=0 (or huey_consumer -n) makes a consumer that only runs jobs.
        options["periodic"] = options.get("periodic", True) and settings.RUN_SCHEDULES
        # An idle SQLite consumer would otherwise back off to 10 s between polls.
        options["max_delay"] = min(options.get("max_delay", 10.0), settings.POLL_MAX_DELAY)
        options["initial_delay"] = min(options.get("initial_delay", 0.1), settings.POLL_MAX_DELAY)
        if options.get("shutdown_timeout") is None:
            options["shutdown_timeout"] = settings.SHUTDOWN_TIMEOUT
        super().__init__(huey_instance, **options)
        self.embedded = embedded
        # SIGTERM (systemd, kill) finishes running jobs like Ctrl-C does.
        self._signal_actions[signal.SIGTERM] = (False, True)
        # The main thread only waits for a stop signal and runs health checks and
        # heartbeats; waking it twice a second instead of huey's ten times saves
        # ~0.1% of a core while idle (bench/latency.py, issue 7).
        self._stop_flag_timeout = 0.5
        self._next_beat = 0.0

    @property
    def kind(self):
        from gevent import monkey

        if self.worker_type == "thread" and monkey.is_module_patched("threading"):
            return "greenlet"
        return self.worker_type

    def start(self):
        global CONSUMER_ID
        if not self.embedded:
            _log_to_stderr()
        CONSUMER_ID = f"{settings.HOSTNAME}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # A consumer may be the first process to meet a new database.
        create_tables()
        Worker.create(
            id=CONSUMER_ID, host=settings.HOSTNAME, pid=os.getpid(), kind=self.kind, concurrency=self.workers
        )
        self._heartbeat()
        # Embedded in the web process, enqueues wake the workers in-process already;
        # process workers have a `_wake` of their own that a watcher thread cannot set.
        storage = self.huey.storage
        watch = isinstance(storage, SqliteStorage) and not self.embedded and self.worker_type != "process"
        if watch:
            self.max_delay = max(self.max_delay, WATCHED_POLL_DELAY)
            for worker, _ in self.worker_threads:
                worker.max_delay = self.max_delay
        super().start()
        if watch:
            threading.Thread(
                target=watch_queue_file, args=(storage.filename, self.stop_flag), name="QueueWatcher", daemon=True
            ).start()

    def _set_signal_handlers(self):
        # Embedded in the web process, the server owns Ctrl-C and SIGTERM.
        if not self.embedded:
            super()._set_signal_handlers()

    def _heartbeat(self):
        self._next_beat = time.monotonic() + settings.HEARTBEAT_INTERVAL
        try:
            Worker.beat(CONSUMER_ID)
            reap()
        except Exception:  # a database or queue outage must not kill the consumer's main loop
            logger.exception("heartbeat failed; will try again")

    def loop(self, health_check_ts=None):
        health_check_ts = super().loop(health_check_ts)
        if time.monotonic() >= self._next_beat:
            self._heartbeat()
        return health_check_ts

    def stop(self, graceful=False):
        super().stop(graceful)
        Worker.update(stopped_at=utcnow()).where(Worker.id == CONSUMER_ID).execute()


# -- Webhooks ------------------------------------------------------------------------
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


def job_event(job_id, name, status):
    """Emit job.succeeded or job.failed for a job that just finished."""
    event = f"job.{status}"
    if name in _SILENT or not subscribers(event):
        return
    job = Job.get_or_none(Job.id == job_id)
    if job is not None:
        emit(event, job.to_dict(), key=f"{event}:{job_id}")


@task(queue="notifications")
def deliver_webhook(delivery_id: int):
    """POST one webhook delivery; a timeout, connection error or 5xx is tried again later.

    Each run makes one attempt. The next waits WEBHOOK_RETRY_BASE seconds,
    doubling each time, until WEBHOOK_MAX_ATTEMPTS; a 4xx is final.
    """
    delivery = WebhookDelivery.get_or_none(WebhookDelivery.id == delivery_id)
    if delivery is None or delivery.status != "pending":
        # A second run of a finished delivery (at-least-once): nothing to send.
        return None if delivery is None else delivery.status
    webhook = delivery.webhook
    if not webhook.active:
        WebhookDelivery.give_up(delivery.id, "webhook deleted before delivery")
        return "webhook deleted; not sent"
    outcome = webhooks.send(
        webhook.url,
        webhook.secret,
        delivery.payload.encode("utf-8"),
        delivery.event,
        timeout=settings.WEBHOOK_TIMEOUT,
        allow_private=settings.WEBHOOK_ALLOW_PRIVATE,
    )
    attempts = delivery.attempts + 1
    again = outcome.retry and attempts < settings.WEBHOOK_MAX_ATTEMPTS
    delay = webhooks.retry_delay(attempts, settings.WEBHOOK_RETRY_BASE) if again else None
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


@task(queue="notifications")
def send_usage_statistics(until: str | None = None):
    """Emit `usage.hourly`: jobs per function and status, orders and new users of one hour.

    The hour ends at `until` (an ISO time), by default at the start of the
    current hour, so hourly runs report whole hours without gaps or overlap.
    """
    end = parse_time(until) if until else utcnow().replace(minute=0, second=0, microsecond=0)
    start = end - datetime.timedelta(hours=1)
    data = {"start": isoformat(start), "end": isoformat(end), **usage_counts(start, end)}
    sent = emit("usage.hourly", data, key=f"usage.hourly:{start.isoformat()}:{end.isoformat()}")
    return {"deliveries": sent, **data}


# -- Orders ---------------------------------------------------------------------------
# Each step of an order is a job: dispatch_order, then one check_order_status job per
# poll, each queuing the next with a delay. A job first claims the order (models.py
# Order.claim), so a step delivered twice, or queued again by the sweep, acts once.
ORDER_FIELDS = {"product_id": 100, "package_id": 100, "user_identifier": 200, "extra_field": 1000}
ORDER_REQUIRED = ("product_id", "package_id", "user_identifier")
# Checks of orders placed together drift apart by up to this share of their delay.
ORDER_JITTER = 0.1


def check_delay(checks, rand=random.random):
    """Seconds from status check number `checks` (1 = the first) to the next one.

    ORDER_BACKOFF_BASE doubling with each check, capped at ORDER_BACKOFF_MAX,
    then shortened by up to ORDER_JITTER (10 %) at random: 30, 60, 120 … 600 s.
    """
    doubling = 2 ** min(max(checks - 1, 0), 60)
    delay = min(settings.ORDER_BACKOFF_BASE * doubling, settings.ORDER_BACKOFF_MAX)
    return delay * (1 - ORDER_JITTER * rand())


def check_schedule(rand=lambda: 0.0):
    """Seconds from dispatch to each status check, ORDER_MAX_CHECKS of them (jitter from `rand`)."""
    at = settings.ORDER_FIRST_CHECK_DELAY
    schedule = [at]
    for checks in range(1, settings.ORDER_MAX_CHECKS):
        at += check_delay(checks, rand)
        schedule.append(at)
    return schedule


def _release_connection():
    """Give this worker's database connection back to the pool before a provider call.

    The call can take seconds. Greenlet workers that hold no connection while
    they wait share a few warm ones instead of each keeping its own (on SQLite
    every write makes the other connections' caches cold; on PostgreSQL a
    hundred workers would take a hundred connections). The next query takes one again.
    """
    if isinstance(db.obj, PooledDatabase) and not db.is_closed() and not db.in_transaction():
        db.close()


def _claim_lease():
    """Seconds a claimed order stays out of other jobs' reach: longer than one provider call."""
    return settings.PROVIDER_CONNECT_TIMEOUT + 2 * settings.PROVIDER_TIMEOUT + 5


def _claim(order_id, statuses, now):
    """The order, claimed for the running job; None when there is nothing for it to do.

    The job queued for the order's next step that runs before that step is
    due (a consumer whose clock is behind, or a run again after one that died
    while holding the order) waits instead.
    """
    job_id = current_job_id()
    order = Order.claim(order_id, statuses, now, _claim_lease(), job_id)
    if order is not None or job_id is None:
        return order
    order = Order.get_or_none(Order.id == order_id)
    if order is not None and order.status in statuses and order.job_id == job_id and order.next_check_at:
        wait = max((order.next_check_at - now).total_seconds(), 0.1)
        raise RetryTask(f"order {order_id}: not due for {wait:.1f} s", delay=wait)
    return None


def validate_order(body):
    """The fields of a new order from a JSON object, or ArgumentError naming the bad one."""
    for name in body:
        if name not in ORDER_FIELDS:
            raise ArgumentError(name, f"unknown field; an order takes {', '.join(ORDER_FIELDS)}")
    clean = {}
    for name, longest in ORDER_FIELDS.items():
        value = body.get(name)
        if value is None:
            if name in ORDER_REQUIRED:
                raise ArgumentError(name, "missing required field")
            continue
        if not isinstance(value, str):
            raise ArgumentError(name, f"expected str, got {json.dumps(value)[:50]}")
        if name in ORDER_REQUIRED and not value.strip():
            raise ArgumentError(name, "must not be blank")
        if len(value) > longest:
            raise ArgumentError(name, f"at most {longest} characters, got {len(value)}")
        clean[name] = value
    return clean


def place_order(body, api_key_id=None, idempotency_key=None):
    """Record an order and queue its dispatch; returns (order, created).

    A repeat with the same `idempotency_key` (per API key) returns the first
    order, or raises Conflict when its fields differ. Nothing is left behind
    when the queue cannot take the dispatch (Unavailable).
    """
    fields = validate_order(body)
    if idempotency_key is not None:
        existing = Order.by_idempotency_key(api_key_id, idempotency_key)
        if existing is not None:
            return _same_order(existing, fields), False
    try:
        order = Order.create(**fields, next_check_at=utcnow(), api_key_id=api_key_id, idempotency_key=idempotency_key)
    except IntegrityError:
        # Another request with the same idempotency key won the race.
        return _same_order(Order.by_idempotency_key(api_key_id, idempotency_key), fields), False
    except PeeweeException as exc:
        raise Unavailable(f"database unavailable: {exc}") from exc
    try:
        job, _ = submit("dispatch_order", {"order_id": order.id}, checked=True)
    except Unavailable:
        order.delete_instance()
        raise
    Order.set_job(order.id, job.id, expect_next=order.next_check_at)
    logger.info("order %s: placed, dispatch queued as job %s", order.id, job.id)
    return Order.get_by_id(order.id), True


def _same_order(order, fields):
    given = {name: getattr(order, name) for name in ORDER_FIELDS if getattr(order, name) is not None}
    if given != fields:
        raise Conflict(f"Idempotency-Key already used for order {order.id} with other fields")
    return order


@task(queue="orders")
def dispatch_order(order_id: str):
    """Send an order to the provider and queue its first status check, due
    ORDER_FIRST_CHECK_DELAY later or when the provider expects it ready, if sooner.

    Safe to run twice: an order with a provider reference is skipped, and the
    order id travels as the idempotency key, so the provider makes one order.
    A network error, timeout or 5xx dispatches again later; a 4xx fails the order.
    """
    return dispatch(order_id)


def dispatch(order_id, now=None):
    """One dispatch attempt (the body of dispatch_order); `now` for tests."""
    now = now or utcnow()
    order = _claim(order_id, ("new",), now)
    if order is None:
        return {"order_id": order_id, "skipped": "already sent, final, not due, or taken by another job"}
    _release_connection()
    try:
        reply = provider.client().create_order(
            order.id, order.product_id, order.package_id, order.user_identifier, order.extra_field
        )
    except provider.PermanentError as exc:
        return _fail_order(order, f"provider refused the order: {exc.message} (HTTP {exc.status})", now)
    except provider.RetryableError as exc:
        return _dispatch_later(order, exc, now)
    # The first check waits ORDER_FIRST_CHECK_DELAY, or less when the provider
    # says the order will be ready sooner: no customer waits for a PIN needlessly.
    first = settings.ORDER_FIRST_CHECK_DELAY
    if reply["ready_in"] is not None:
        first = min(first, reply["ready_in"])
    next_at = now + datetime.timedelta(seconds=first)
    if Order.mark_sent(order.id, reply["reference"], now, next_at):
        logger.info("order %s: sent, provider reference %s", order.id, reply["reference"])
        _queue_check(order.id, next_at)
    return {"order_id": order.id, "provider_ref": reply["reference"], "first_check_at": isoformat(next_at)}


def _dispatch_later(order, exc, now):
    attempts = order.dispatch_attempts + 1
    if attempts >= settings.ORDER_MAX_CHECKS or now >= order.deadline:
        return _fail_order(order, f"provider unreachable after {attempts} dispatch attempts: {exc}", now)
    next_at = min(now + datetime.timedelta(seconds=check_delay(attempts)), order.deadline)
    Order.retry_dispatch_at(order.id, next_at, str(exc))
    delay = max((next_at - now).total_seconds(), 0)
    logger.warning("order %s: dispatch attempt %s failed (%s); again in %.1f s", order.id, attempts, exc, delay)
    raise RetryTask(f"{exc}; dispatch again in {delay:.1f} s", delay=delay)


@task(queue="orders")
def check_order_status(order_id: str):
    """Ask the provider once how an order is doing: store its PIN when
    completed, fail it when refused or out of checks or time, else queue the
    next check after an exponential backoff. Safe to run twice."""
    return check(order_id)


def check(order_id, now=None):
    """One status check (the body of check_order_status); `now` for tests."""
    now = now or utcnow()
    order = _claim(order_id, ("sent", "processing"), now)
    if order is None:
        return {"order_id": order_id, "skipped": "final, not due, or checked by another job"}
    checks = order.checks + 1
    fault = None
    _release_connection()
    try:
        reply = provider.client().order_status(order.provider_ref)
    except provider.PermanentError as exc:
        return _fail_order(order, f"provider refused the status check: {exc.message} (HTTP {exc.status})", now, True)
    except provider.RetryableError as exc:
        reply, fault = None, str(exc)
    if reply and reply["status"] == "completed":
        return _complete_order(order, reply["pin_code"], now)
    if reply and reply["status"] == "failed":
        reason = reply.get("message") or "no reason given"
        return _fail_order(order, f"provider failed the order: {reason}", now, True)
    last = f"; last error: {fault}" if fault else ""
    if checks >= settings.ORDER_MAX_CHECKS:
        return _fail_order(order, f"no final status after {checks} checks (ORDER_MAX_CHECKS){last}", now, True)
    if now >= order.deadline:
        hours = f"{settings.ORDER_DEADLINE_HOURS:g}"
        return _fail_order(order, f"no final status within {hours} h (ORDER_DEADLINE_HOURS){last}", now, True)
    next_at = min(now + datetime.timedelta(seconds=check_delay(checks)), order.deadline)
    Order.record_check(order.id, now, next_at, status="processing" if reply else None, error=fault)
    if fault:
        logger.warning("order %s: check %s failed (%s); next at %s", order.id, checks, fault, isoformat(next_at))
    _queue_check(order.id, next_at)
    return {
        "order_id": order.id,
        "provider_status": reply["status"] if reply else None,
        "error": fault,
        "checks": checks,
        "next_check_at": isoformat(next_at),
    }


def _queue_check(order_id, next_at):
    """Queue the status check due at `next_at`; the sweep queues it again if this is lost."""
    # huey drops the fraction of a second from an eta, which would run the job
    # before the order is due: round up instead.
    eta = next_at.replace(microsecond=0) + datetime.timedelta(seconds=1) if next_at.microsecond else next_at
    job, _ = submit("check_order_status", {"order_id": order_id}, eta=eta, checked=True)
    Order.set_job(order_id, job.id, expect_next=next_at)


def _complete_order(order, pin_code, now):
    if Order.complete(order.id, pin_code, now):
        logger.info("order %s: completed after %s checks", order.id, order.checks + 1)
        _order_event("order.completed", order.id)
    return {"order_id": order.id, "status": "completed"}


def _fail_order(order, reason, now, checked=False):
    if Order.fail(order.id, reason, now, checked):
        logger.warning("order %s: failed: %s", order.id, reason)
        _order_event("order.failed", order.id)
    return {"order_id": order.id, "status": "failed", "error": reason}


def _order_event(event, order_id):
    """Emit order.completed or order.failed with the order as it now is; the key makes a repeat a no-op."""
    if subscribers(event):
        emit(event, Order.get_by_id(order_id).to_dict(), key=f"{event}:{order_id}")


@task(queue="orders", limit=1)
def poll_pending_orders():
    """The safety net, run every 5 minutes: fail pending orders past
    ORDER_DEADLINE_HOURS, and queue the next step of at most ORDER_BATCH_SIZE
    due orders that no job is handling (their job was lost or failed).
    `limit=1`: one sweep at a time across all consumers."""
    return sweep()


def sweep(now=None):
    """One sweep (the body of poll_pending_orders); `now` for tests."""
    now = now or utcnow()
    failed = 0
    # Lists, not cursors: writing while a SELECT is still open on the same SQLite
    # connection fails at once with "database is locked" when another writer is busy.
    for order in list(Order.overdue(now, settings.ORDER_BATCH_SIZE)):
        hours = f"{settings.ORDER_DEADLINE_HOURS:g}"
        if _fail_order(order, f"no final status within {hours} h (ORDER_DEADLINE_HOURS)", now)["status"] == "failed":
            failed += 1
    queued = 0
    for order in list(Order.due(now, settings.ORDER_BATCH_SIZE)):
        name = "dispatch_order" if order.status == "new" else "check_order_status"
        job, _ = submit(name, {"order_id": order.id}, checked=True)
        if not Order.hand_to(order, job.id):
            # A concurrent sweep queued a job for it first; if ours runs anyway,
            # its claim finds the order taken.
            _drop(job)
            continue
        logger.info("order %s: sweep queued %s as job %s", order.id, name, job.id)
        queued += 1
    return {"queued": queued, "failed": failed, "pending": Order.pending_count()}


def _drop(job):
    try:
        cancel(job)
    except Conflict:
        pass  # it already finished


# -- Periodic work ------------------------------------------------------------------
# The jobs of SCHEDULES: housekeeping, analytics and mail to users. Each is safe
# to run twice: it recomputes from the data, or marks what it sent (MailSent).
MAIL_RETRY = {"retries": 5, "retry_delay": 30, "retry_backoff": 2}  # then 1, 2, 4 and 8 minutes
PERIODIC_RETRY = {"retries": 2, "retry_delay": 60}
PRUNE_BATCH = 500


def send_mail_once(user, kind, key, template, message_id=None, **context):
    """Send mail `template` to `user` unless this (kind, key) mail went out already; True when sent.

    A transient SMTP error propagates, so huey retries the job with backoff; a
    permanent one (a 5xx reply) fails the job at once with the server's reply.
    """
    job_id = current_job_id() or f"local:{uuid.uuid4()}"
    if not MailSent.claim(user.id, kind, key, job_id):
        return False
    try:
        mailer.send(user.email, template, message_id=message_id, user=user, **context)
    except mailer.PermanentMailError as exc:
        MailSent.release(user.id, kind, key, job_id)
        _fail_now(f"mail to {user.email} refused: {exc}")
    except Exception:
        # Not sent: a retry may send it. (A stop that interrupts the send keeps the
        # claim: whether the mail left is unknown, and a duplicate is worse.)
        MailSent.release(user.id, kind, key, job_id)
        raise
    MailSent.mark_sent(user.id, kind, key)
    return True


def create_user(email, name="", password=None, is_admin=False):
    """Create a user and queue their welcome mail; Conflict when the email is taken."""
    try:
        user = User.create(
            email=email,
            name=name,
            password_hash=User.hash_password(password) if password else None,
            is_admin=is_admin,
        )
    except IntegrityError:
        raise Conflict(f"a user with email {email!r} exists already") from None
    try:
        # After the commit, so the consumer finds the user it is asked to greet.
        enqueue("send_welcome_email", user_id=user.id)
    except Unavailable:
        User.delete_by_id(user.id)  # nothing half-done: no user without their welcome mail
        raise
    return user


@task(queue="emails", public=True, **MAIL_RETRY)
def send_welcome_email(user_id: int):
    """Send the welcome mail to a new user (once, however often it runs)."""
    user = User.get_or_none(User.id == user_id)
    if user is None:
        _fail_now(f"no user with id {user_id}")
    sent = send_mail_once(user, "welcome", "", "welcome", login_url=f"{settings.BASE_URL}/login")
    return {"user_id": str(user.id), "sent": sent}


@task(queue="maintenance", public=True, **PERIODIC_RETRY)
def cleanup_expired_tokens():
    """Delete expired tokens and dashboard sessions; live ones stay. Returns counts by kind."""
    deleted = Token.delete_expired(utcnow())
    return {"deleted": sum(deleted.values()), "by_kind": deleted, "kept": Token.select().count()}


@task(queue="analytics", public=True, **PERIODIC_RETRY)
def update_user_statistics():
    """Recount per user: posts, likes, comments and shares received, last active."""
    return {"users": UserStats.refresh(utcnow(), report=progress)}


@task(queue="analytics", public=True, **PERIODIC_RETRY)
def update_trending_hashtags():
    """Store the top 20 hashtags of the posts of the last 24 hours, with their counts."""
    now = utcnow()
    snapshot = TrendingSnapshot.compute(now, hours=24, limit=20)
    TrendingSnapshot.prune(now - datetime.timedelta(days=7))
    top = json.loads(snapshot.hashtags)
    return {"hashtags": len(top), "top": top[0] if top else None}


@task(queue="analytics", public=True, bounds={"days": (1, 366)}, **PERIODIC_RETRY)
def generate_content_analytics(days: int = 30):
    """Recompute the daily rows (new users, posts, likes, active users, mean engagement) of the last `days` UTC days."""
    now = utcnow()
    rows = DailyAnalytics.compute(now.date() - datetime.timedelta(days=days - 1), now.date(), now)
    return {
        "days": len(rows),
        "from": rows[0]["date"].isoformat(),
        "to": rows[-1]["date"].isoformat(),
        "posts": sum(row["posts"] for row in rows),
    }


@task(queue="analytics", public=True, **PERIODIC_RETRY)
def update_post_engagement_scores():
    """Score every post: likes + 2·comments + 3·shares, halved every ENGAGEMENT_HALF_LIFE_DAYS of age."""
    changed = Post.rescore(utcnow(), settings.ENGAGEMENT_HALF_LIFE_DAYS, report=progress)
    return {"posts": Post.select().count(), "changed": changed}


WEEK = re.compile(r"(\d{4})-W(\d{2})")


def iso_week(day):
    """`2026-W48` for a date."""
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def week_bounds(week, tz=None):
    """The UTC bounds of the 7 days a digest of `week` covers: the week before its Monday, in TIMEZONE."""
    match = WEEK.fullmatch(week)
    try:
        monday = datetime.date.fromisocalendar(int(match[1]), int(match[2]), 1)
    except (TypeError, ValueError):
        raise ValueError(f"week: expected an ISO week such as 2026-W48, got {week!r}") from None
    tz = tz or zone()
    ends_at = _to_utc(datetime.datetime.combine(monday, datetime.time()), tz)
    starts_at = _to_utc(datetime.datetime.combine(monday - datetime.timedelta(days=7), datetime.time()), tz)
    return starts_at, ends_at


def submit_many(name, calls):
    """Record and enqueue calls of function `name` (checked argument dicts); returns their job ids.

    For fan-outs: the rows go in with one bulk insert, then a message each. If
    the queue fails part-way, the rows whose message was not written are removed.
    """
    function = FUNCTIONS[name]
    now = utcnow()
    rows = [(str(uuid.uuid4()), name, json.dumps(args), "queued", function.queue, function.priority, now) for args in calls]
    with db.atomic():
        bulk_insert(Job, [Job.id, Job.name, Job.args, Job.status, Job.queue, Job.priority, Job.enqueued_at], rows)
    for done, (row, args) in enumerate(zip(rows, calls)):
        try:
            _enqueue(function, row[0], args, priority=function.priority)
        except Exception as exc:
            Job.delete().where(Job.id.in_([r[0] for r in rows[done:]])).execute()
            raise Unavailable(f"queue storage unavailable: {exc}") from exc
    return [row[0] for row in rows]


@task(queue="emails", public=True, **PERIODIC_RETRY)
def send_weekly_digest(week: str | None = None):
    """Queue one send_digest job per active user for `week` (e.g. 2026-W48; default: this week in TIMEZONE).

    Running it again queues nobody twice: users who have the week's digest, or
    an unfinished job for it, are left out.
    """
    week = week or iso_week(_to_local(utcnow(), zone()).date())
    try:
        starts_at, ends_at = week_bounds(week)
    except ValueError as exc:
        _fail_now(str(exc))
    DigestWeek.fetch(week, starts_at, ends_at)  # the top posts, once for every user's mail
    pending = DigestWeek.users_with_unfinished_job(week)
    user_ids = [u for (u,) in MailSent.users_without("digest", week).tuples() if u not in pending]
    for done in range(0, len(user_ids), 1000):
        progress(done, len(user_ids), f"queued digests for {done} of {len(user_ids)} users")
        submit_many("send_digest", [{"user_id": u, "week": week} for u in user_ids[done : done + 1000]])
    progress(len(user_ids), len(user_ids), "done")
    return {"week": week, "users": len(user_ids) + len(pending), "queued": len(user_ids)}


@task(queue="emails", public=True, **MAIL_RETRY)
def send_digest(user_id: int, week: str):
    """Mail one user the digest of `week`: its top posts and their own numbers; never twice a week."""
    user = User.get_or_none(User.id == user_id)
    if user is None or not user.active:
        return {"user_id": str(user_id), "week": week, "sent": False, "reason": "no active user with this id"}
    try:
        starts_at, ends_at = week_bounds(week)
    except ValueError as exc:
        _fail_now(str(exc))
    digest = DigestWeek.fetch(week, starts_at, ends_at)
    sent = send_mail_once(
        user,
        "digest",
        week,
        "digest",
        message_id=mailer.message_id(f"digest.{week}.{user.id}"),
        week=week,
        first_day=_to_local(digest.starts_at, zone()).date(),
        last_day=_to_local(digest.ends_at, zone()).date() - datetime.timedelta(days=1),
        posts=digest.posts,
        numbers=Post.numbers_of(user.id, digest.starts_at, digest.ends_at),
    )
    return {"user_id": str(user.id), "week": week, "sent": sent}


@task(queue="maintenance", public=True, **PERIODIC_RETRY)
def reset_daily_quotas():
    """Start every API key's daily call counter again at 0."""
    return {"keys_reset": ApiKey.reset_daily_calls()}


@task(queue="maintenance", public=True, **PERIODIC_RETRY)
def prune_job_history():
    """Delete finished jobs older than JOB_HISTORY_DAYS, a small batch per short transaction."""
    before = utcnow() - datetime.timedelta(days=settings.JOB_HISTORY_DAYS)
    deleted = 0
    while True:
        batch = Job.prune_finished(before, PRUNE_BATCH)
        deleted += batch
        if batch < PRUNE_BATCH:
            break
        progress(deleted, None, f"deleted {deleted} jobs")
        # A pause between batches lets waiting writers take the lock first.
        time.sleep(0.005)
    claims = ScheduleRun.prune(before)
    return {"deleted": deleted, "schedule_claims_deleted": claims, "before": isoformat(before)}


# -- Media and courses ------------------------------------------------------------
def _fail_now(message):
    """Fail the running job with `message` and no retries: its input is wrong, not the moment."""
    running = getattr(_current, "task", None)
    if running is not None:
        running.retries = 0  # huey reads this after the task raises
    raise JobError(message)


def _off_the_loop(function, *args):
    """Run CPU-heavy `function` in a real thread when gevent made this worker a greenlet.

    Inside `web.py run` the consumer's workers are greenlets: a second of
    Pillow or fpdf2 work would stall every request. Pillow releases the GIL,
    so a real thread also lets two images be worked on at once.
    """
    from gevent import monkey

    if monkey.is_module_patched("threading"):
        import gevent

        return gevent.get_hub().threadpool.apply(function, args)
    return function(*args)


@task(queue="media", retries=2, retry_delay=10)
def process_media_upload(media_id: int):
    """Check an uploaded image and write its WebP renditions: web 1600 px, thumbnails 640 and 320 px.

    A file that is not a whole JPEG, PNG, WebP or GIF, or is over
    IMAGE_MAX_PIXELS, marks the media rejected and fails the job at once.
    """
    item = Media.get_or_none(Media.id == media_id)
    if item is None:
        return None  # its post was deleted since
    if item.status == "processing":
        try:
            info = _off_the_loop(media.make_renditions, item.original_path, item.folder)
        except media.ImageRejected as exc:
            _reject_media(item, str(exc))
        except FileNotFoundError:
            if item.original_path.exists():
                raise
            _reject_media(item, "the uploaded file was lost before it was processed; upload it again")
        else:
            item.mark_ready(info["width"], info["height"], info["renditions"])
            logger.info("media %s: %s %sx%s ready", item.id, info["format"], info["width"], info["height"])
        item.original_path.unlink(missing_ok=True)  # with its EXIF and GPS: only the renditions stay
        item = Media.get_by_id(item.id)
    if item.status == "rejected":
        _fail_now(f"media {media_id} rejected: {item.error}")
    return {"media_id": str(item.id), "status": item.status, "width": item.width, "height": item.height}


def _reject_media(item, error):
    # A concurrent run may have finished it meanwhile: then its outcome stands.
    if item.reject(error):
        media.remove_tree(item.folder)
        item.original_path.unlink(missing_ok=True)
        logger.info("media %s rejected: %s", item.id, error)


@task(queue="progress", retries=3, retry_delay=5)
def recalculate_course_progress(enrollment_id: int):
    """Store an enrollment's progress; the run that first sees 100% enqueues its certificate."""
    enrollment = Enrollment.get_or_none(Enrollment.id == enrollment_id)
    if enrollment is None:
        return None  # the enrollment was deleted since
    percent = enrollment.recalculate()
    if percent >= 100 and enrollment.mark_completed():
        try:
            enqueue("generate_certificate", enrollment_id=enrollment.id)
        except Exception:
            enrollment.unmark_completed()  # so that the retry of this job enqueues it
            raise
    return {"enrollment_id": str(enrollment.id), "progress": percent}


@task(queue="certificates", retries=3, retry_delay=30)
def generate_certificate(enrollment_id: int):
    """Issue an enrollment's certificate (one, ever), write its PDF and mail the learner the link."""
    enrollment = Enrollment.get_or_none(Enrollment.id == enrollment_id)
    if enrollment is None:
        return None
    if enrollment.progress < 100:
        _fail_now(f"enrollment {enrollment_id} is at {enrollment.progress}%; a certificate needs 100%")
    certificate, created = Certificate.get_or_none(Certificate.enrollment == enrollment.id), False
    if certificate is None:
        # The PDF first, then the row: a certificate that can be seen can be downloaded.
        draft = Certificate.draft(enrollment)
        _render_certificate(draft)
        certificate, created = draft.save_once()  # the unique enrollment column keeps one, ever
        if not created:
            draft.path.unlink(missing_ok=True)  # another run won the race
        else:
            logger.info("certificate %s issued for enrollment %s", certificate.code, enrollment_id)
    elif not certificate.path.exists():
        _render_certificate(certificate)
    # The key makes a second run find the first run's mail job instead of queueing another.
    mail, _ = submit(
        "send_certificate_email",
        {"certificate_id": certificate.id},
        idempotency_key=f"certificate:{certificate.id}",
        checked=True,
    )
    return {"code": certificate.code, "url": certificate.url, "created": created, "mail_job_id": mail.id}


def _render_certificate(certificate):
    try:
        _off_the_loop(
            media.render_certificate,
            certificate.path,
            certificate.name,
            certificate.course_title,
            certificate.issued_at,
            certificate.code,
        )
    except media.CertificateError as exc:
        _fail_now(str(exc))


@task(queue="emails", **MAIL_RETRY)
def send_certificate_email(certificate_id: int):
    """Mail the learner the link to their certificate (once, however often it runs)."""
    certificate = Certificate.get_or_none(Certificate.id == certificate_id)
    if certificate is None:
        return None
    user = certificate.enrollment.user
    sent = send_mail_once(
        user,
        "certificate",
        str(certificate.id),
        "certificate",
        message_id=mailer.message_id(f"certificate.{certificate.code}"),
        certificate=certificate,
        url=f"{settings.BASE_URL}{certificate.url}",
    )
    return {"certificate": certificate.code, "sent": sent}


CLEANUP_BATCH = 500
LEFTOVER_AGE = datetime.timedelta(hours=1)  # older temporaries and orphans are a crashed run's
_JOB_KEY = re.compile(r"(?:r:)?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


@task(queue="maintenance", public=True, **PERIODIC_RETRY)
def cleanup_old_posts():
    """Delete posts older than POST_RETENTION_DAYS that nobody liked, commented on or shared, with their media files."""
    before = utcnow() - datetime.timedelta(days=settings.POST_RETENTION_DAYS)
    posts = images = 0
    while True:
        deleted, tokens = delete_quiet_posts(before, CLEANUP_BATCH)
        for token in tokens:
            media.remove_tree(settings.UPLOAD_DIR / token)
            (settings.INCOMING_DIR / token).unlink(missing_ok=True)
        posts, images = posts + deleted, images + len(tokens)
        if deleted < CLEANUP_BATCH:
            break
        progress(posts, None, f"deleted {posts} posts")
        time.sleep(0.005)  # lets waiting writers take the lock between batches
    return {"deleted_posts": posts, "deleted_media": images, "before": isoformat(before)}


@task(queue="cleanup", public=True, **PERIODIC_RETRY)
def cleanup_old_cache():
    """Delete expired rate-limit keys, stale entries in the queue's key-value store and files left by crashed runs."""
    now = utcnow()
    return {
        "rate_limit_keys": _purge_rate_limit_keys(time.time()),
        "queue_store_entries": _purge_queue_store(now),
        "leftover_files": _purge_leftover_files(now),
    }


def _purge_rate_limit_keys(now):
    """Rate-limit counters of past windows (limits.RedisCounter) in the queue's Redis.

    Each is set to expire, but an EXPIRE lost with a crashed web process leaves
    its key for ever. Without Redis the counters live in memory: nothing to do.
    """
    if not isinstance(huey.storage, RedisStorage):
        return 0
    client = huey.storage.conn
    current = int(now // limits.WINDOW)
    stale = []
    for name in client.scan_iter(match="litejobs:ratelimit:*", count=1000):
        window = name.rsplit(b":", 1)[-1]
        if not window.isdigit() or int(window) < current - 1:
            stale.append(name)
    for start in range(0, len(stale), CLEANUP_BATCH):
        client.delete(*stale[start : start + CLEANUP_BATCH])
    return len(stale)


def _purge_queue_store(now):
    """huey's results and revoke flags of jobs finished over LEFTOVER_AGE ago or gone from the history.

    litejobs keeps results in the Job table, so such entries are what crashed
    or canceled runs left behind. Keys that are not a job's (locks) stay.
    """
    keys = {}
    for key in huey.storage.result_items():
        text = key.decode() if isinstance(key, bytes) else key
        match = _JOB_KEY.fullmatch(text)
        if match:
            keys.setdefault(match[1], []).append(text)
    removed = 0
    ids = list(keys)
    for start in range(0, len(ids), CLEANUP_BATCH):
        chunk = ids[start : start + CLEANUP_BATCH]
        live = {
            job.id
            for job in Job.select(Job.id, Job.status, Job.finished_at).where(Job.id.in_(chunk))
            if not (job.is_terminal and job.finished_at and job.finished_at < now - LEFTOVER_AGE)
        }
        for job_id in chunk:
            if job_id not in live:
                for key in keys[job_id]:
                    removed += bool(huey.storage.delete_data(key))
    return removed


def _purge_leftover_files(now):
    """Temporary files, originals and rendition folders or PDFs that no row owns, older than LEFTOVER_AGE."""
    cutoff = (now - LEFTOVER_AGE).replace(tzinfo=datetime.timezone.utc).timestamp()

    def old(path):
        try:
            return path.stat().st_mtime < cutoff
        except FileNotFoundError:
            return False

    removed = 0
    for folder in (settings.INCOMING_DIR, settings.CERTIFICATE_DIR, *_children(settings.UPLOAD_DIR)):
        for path in folder.glob(".*.tmp") if folder.is_dir() else ():
            if old(path):
                path.unlink(missing_ok=True)
                removed += 1
    owned = Media.tokens_in([p.name for p in _children(settings.UPLOAD_DIR) + _children(settings.INCOMING_DIR)])
    for path in _children(settings.UPLOAD_DIR) + _children(settings.INCOMING_DIR):
        if path.name not in owned and not path.name.startswith(".") and old(path):
            if path.is_dir():
                media.remove_tree(path)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    pdfs = [p for p in _children(settings.CERTIFICATE_DIR) if p.suffix == ".pdf"]
    issued = Certificate.codes_in([p.stem for p in pdfs])
    for path in pdfs:
        if path.stem not in issued and old(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _children(folder):
    return sorted(folder.iterdir()) if folder.is_dir() else []


# -- Built-in diagnostics -------------------------------------------------------
@task(public=True)
def ping() -> str:
    """Answer "pong": checks that a consumer picks up jobs."""
    return "pong"


@task(public=True)
def echo(value: typing.Any):
    """Return `value` unchanged."""
    return value


@task(public=True, bounds={"seconds": (0, 60)})
def sleep(seconds: float) -> float:
    """Sleep `seconds` (at most 60), reporting progress each tenth; cancel stops it."""
    steps = 10
    for step in range(steps):
        progress(step, steps, f"slept {seconds * step / steps:.1f} of {seconds:g} s")
        time.sleep(seconds / steps)
    progress(steps, steps, "done")
    return seconds


@task(public=True)
def fail(message: str):
    """Fail at once with `message` (no retries): checks error reporting."""
    raise JobError(message)

