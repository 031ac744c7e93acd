"""litejobs jobs: the Huey instance, the job history it keeps, and the core tasks.

Each task call is a `Job` row (models.py) kept in step with huey's signals;
consumers heartbeat and a reaper runs again the jobs of consumers that died,
so a job accepted once reaches a terminal state. The tasks of each concern
live beside its tables (orders.py, webhooks.py, schedules.py, analytics.py,
courses.py, mailer.py); this module imports those at its end, so
`huey_consumer jobs.huey` still registers every task by importing it alone.
"""

import datetime
import inspect
import json
import logging
import os
import signal
import threading
import time
import traceback
import types
import typing
import uuid

from huey import consumer as huey_consumer
from huey import Huey, signals
from huey.exceptions import CancelExecution, TaskTimeout
from huey.storage import PostgresStorage, PriorityRedisStorage, SqliteStorage
from peewee import IntegrityError, PeeweeException

import guard
import settings
from models import TERMINAL, WAITING, WAL_CHECKPOINT_PAGES, Job, Worker, close_all_connections, create_tables, utcnow
from models import ApiKey, LoginFailure, Token, User, bulk_insert, checkpoint, db, isoformat

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

    def revoke(self, task, revoke_until=None, revoke_once=False):
        """huey's revoke (and `task.revoke()`, `revoke_by_id()`) cancels the job in its
        history, as POST /api/v1/jobs/{id}/cancel does; a flag would never be read."""
        job = Job.get_or_none(Job.id == task.id)
        if job is not None and not job.is_terminal:
            cancel(job)


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
        # NaN passes every range check and stalls time.sleep under gevent: no argument may hold one.
        where = guard.nonfinite_path(value, self.name)
        if where is not None:
            inside = "" if where == self.name else f" at {where}"
            raise ArgumentError(self.name, f"not a finite number{inside} (NaN and Infinity are refused)")
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
            # huey names a queued message "<module>.<function>": "jobs.<name>" for
            # every task wherever it is defined, so messages queued before a task
            # moved to another module still find it.
            __module__=__name__,
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


def fail_now(message):
    """Fail the running job with `message` and no retries: its input is wrong, not the moment."""
    running = getattr(_current, "task", None)
    if running is not None:
        running.retries = 0  # huey reads this after the task raises
    raise JobError(message)


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
        args=guard.dumps(message.kwargs, default=str),
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
        webhooks.job_event(message.id, message.name, "succeeded")
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
        webhooks.job_event(message.id, message.name, "failed")
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
    message.recorded = True
    huey.enqueue(message)


# -- Consumers: heartbeat, recovery, graceful stop ---------------------------
CONSUMER_ID = None


def reap(now=None):
    """Run again the jobs whose consumer stopped heartbeating; returns how many.

    Safe with several consumers reaping at once: each job is claimed by a
    conditional update, and only the one that changed the row enqueues it.
    """
    alive = [w.id for w in Worker.alive(now)]
    # Read in full before writing: an UPDATE on a connection still stepping through
    # a SELECT fails at once ("database is locked") when another writer got in between.
    orphans = list(
        Job.select().where(
            (Job.status == "running") & Job.consumer_id.is_null(False) & Job.consumer_id.not_in(alive or [""])
        )
    )
    recovered = 0
    for job in orphans:
        claim = (Job.id == job.id) & (Job.status == "running") & (Job.consumer_id == job.consumer_id)
        lost = f"worker lost: consumer {job.consumer_id} stopped heartbeating"
        if job.recoveries >= settings.MAX_RECOVERIES or job.name not in FUNCTIONS:
            Job.update(status="failed", error=lost, finished_at=utcnow()).where(claim).execute()
            webhooks.job_event(job.id, job.name, "failed")
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


def watch_queue_file(path, stop_flag, interval=0.025):
    """Wake idle workers as soon as another process writes the SQLite queue file.

    A standalone consumer cannot hear the web process enqueue, and polling the
    queue every few ms costs a query per worker each time. Instead one thread
    looks at the size and mtime of the queue's WAL file (an os.stat, a few µs)
    and sets `_wake` when they change: pickup in ~12 ms instead of up to
    POLL_MAX_DELAY, for under 1% of a core (bench/latency.py, issue 7; each
    timed wake-up of a thread costs ~60 µs of CPU here, so one watcher at 40 Hz
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

    @property
    def scheduler_class(self):
        # schedules.py imports this module: its Scheduler is looked up when a consumer is made.
        return schedules.Scheduler

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
        if self.worker_type == "process":
            close_all_connections()  # each forked worker opens its own
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


# -- Periodic work ------------------------------------------------------------------
# Housekeeping jobs of schedules.SCHEDULES, and the retry policies and batch
# sizes the periodic and mail jobs of every module share. Each is safe to run
# twice: it recomputes from the data, or marks what it sent (mailer.MailSent).
MAIL_RETRY = {"retries": 5, "retry_delay": 30, "retry_backoff": 2}  # then 1, 2, 4 and 8 minutes
PERIODIC_RETRY = {"retries": 2, "retry_delay": 60}
PRUNE_BATCH = 500
CLEANUP_BATCH = 500


def create_user(email, name="", password=None, is_admin=False):
    """Create a user and queue their welcome mail; Conflict when the email is taken.

    ArgumentError for a control character in the email or name: both reach mail headers and PDFs.
    """
    for field, value in (("email", email), ("name", name)):
        char = guard.control_character(value or "")
        if char is not None:
            raise ArgumentError(field, f"control character {char!r} not allowed")
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
        fail_now(f"no user with id {user_id}")
    sent = mailer.send_mail_once(user, "welcome", "", "welcome", login_url=f"{settings.BASE_URL}/login")
    return {"user_id": str(user.id), "sent": sent}


@task(queue="maintenance", public=True, **PERIODIC_RETRY)
def cleanup_expired_tokens():
    """Delete expired tokens and dashboard sessions; live ones stay. Returns counts by kind."""
    now = utcnow()
    deleted = Token.delete_expired(now)
    forgotten = LoginFailure.delete_old(now)  # the login throttle's old rows go with the sessions
    return {"deleted": sum(deleted.values()), "by_kind": deleted, "kept": Token.select().count(), "login_failures": forgotten}


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
        # Copy the deletions into the database file as they go: left to pile up in
        # the WAL, they would make some other writer's commit pay for a checkpoint
        # of WAL_CHECKPOINT_PAGES (~0.7 s here, bench/history.py).
        checkpoint()
        # A pause between batches lets waiting writers take the lock first.
        time.sleep(0.005)
    claims = schedules.ScheduleRun.prune(before)
    return {"deleted": deleted, "schedule_claims_deleted": claims, "before": isoformat(before)}


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
    if not 0 <= seconds <= 60:  # also NaN: a job enqueued past the API's checks must not stall a worker
        raise JobError(f"seconds must be from 0 to 60, got {seconds}")
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


# Last, as Flask does with views: these modules import this one for `task`, and importing them registers their tasks.
import analytics  # noqa: E402, F401
import courses  # noqa: E402, F401
import mailer  # noqa: E402
import orders  # noqa: E402, F401
import schedules  # noqa: E402
import webhooks  # noqa: E402
