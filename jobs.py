"""litejobs jobs: the Huey instance, the job history it keeps, and the core tasks.

Each task call is a `Job` row (models.py) kept in step with huey's signals;
consumers heartbeat and a reaper runs again the jobs of consumers that died,
so a job accepted once reaches a terminal state. The tasks of each concern
live beside its tables (orders.py, webhooks.py, schedules.py, analytics.py,
courses.py, mailer.py); this module imports those at its end, so
`huey_consumer jobs.huey` still registers every task by importing it alone.
"""

import datetime
import importlib
import importlib.util
import inspect
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
import types
import typing
import uuid
from pathlib import Path

from huey import api as huey_api
from huey import consumer as huey_consumer
from huey import Huey, signals
from huey.api import Task
from huey.registry import Registry
from huey.exceptions import CancelExecution, TaskTimeout
from huey.storage import PostgresStorage, PriorityRedisStorage, SqliteStorage
from peewee import IntegrityError, PeeweeException, SqliteDatabase

import backup
import disk
import hooks
import logconfig
import preflight
import runs
import guard
import settings
from models import TERMINAL, WAITING, Job, Worker, close_all_connections, db_time, utcnow, wal_pages
from models import ScheduleRun, User, bulk_insert, checkpoint, db, isoformat

logger = logging.getLogger("litejobs.jobs")


class JobError(Exception):
    """Raise to fail a job at once with exactly this message, without retries: its input is wrong."""


class ArgumentError(ValueError):
    """Arguments that do not fit a function; `field` names the culprit."""

    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field


class Conflict(Exception):
    """The action is not possible in the job's current state."""


class DefinitionError(TypeError):
    """Two functions with one name, or a parameter huey reserves: the start stops, naming both places."""


class Unavailable(Exception):
    """The database or the queue storage cannot be reached; nothing was written."""


class InsufficientStorage(Unavailable):
    """The data disk has less free space than DISK_RESERVE; nothing was written (507)."""


def check_disk():
    """Raise InsufficientStorage while a data disk is under DISK_RESERVE."""
    problem = disk.short_of_space()
    if problem:
        raise InsufficientStorage(problem)


# -- The Huey instance ----------------------------------------------------------
class MissingFunction(Task):
    """Stands in for a function this process has not loaded: the job fails, naming both."""

    def execute(self):
        self.retries = 0  # another run here would fail the same way
        apps = ", ".join(APPS) or "none"
        raise JobError(
            f"function {self.name!r} is not loaded on consumer {CONSUMER_ID} (apps: {apps}); "
            "load its app there (APPS, FUNCTIONS_DIR) and retry the job"
        )


class FunctionRegistry(Registry):
    """huey's task registry, except that a message for an unknown function becomes a
    MissingFunction run instead of an error that drops the message (huey's default)."""

    def string_to_task(self, task_str):
        if task_str in self._registry:
            return self._registry[task_str]
        module, _, name = task_str.rpartition(".")
        return type(name, (MissingFunction,), {"__module__": module or __name__})

    def create_message(self, task):
        if not isinstance(task, MissingFunction):
            return super().create_message(task)
        # A scheduled job of a function not loaded here fell due: the scheduler puts it
        # back on the queue unchanged (huey would refuse to, and lose it), where its run
        # fails it naming the function, or a consumer that has it runs it.
        task_str = self.task_to_string(type(task))
        self._registry.setdefault(task_str, type(task))
        try:
            return super().create_message(task)
        finally:
            if self._registry.get(task_str) is type(task):
                del self._registry[task_str]


class LitejobsHuey(Huey):
    """Huey whose consumers heartbeat, recover lost jobs and stop gracefully."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._registry = FunctionRegistry()

    def create_consumer(self, **options):
        # `huey_consumer jobs.huey` imports this module, then asks for a consumer:
        # the apps' tasks are registered before any job is taken.
        load_apps()
        return Consumer(self, **options)

    # litejobs cancels a job in its history, never with huey's revoke flags: cancel()
    # marks it canceled and the start UPDATE (Job.mark_running) refuses a finished
    # job. So the two look-ups huey makes around every run (read the job's revoke
    # flag, clear it afterwards) are skipped: two queue round trips per job, a
    # tenth of a job's cost on Redis and PostgreSQL (bench/, issue 7).
    def is_revoked(self, task, timestamp=None, peek=True):
        return False

    def enqueue(self, task):
        # A plain task() call is recorded `pending` by _record_enqueued before the
        # push and confirmed here after it, as submit() does: a failed push never runs.
        unrecorded = isinstance(task, huey_api.Task) and not getattr(task, "recorded", False)
        result = super().enqueue(task)
        if unrecorded:
            Job.confirm([task.id], {task.id: "queued"})
        return result

    def dequeue(self):
        """huey's dequeue, but a queue that cannot be read answers None after a pause
        that grows to a few seconds, logged once per outage (runs.Outage)."""
        try:
            data = self.storage.dequeue()
        except Exception as exc:  # any driver error: the storage is away
            time.sleep(runs.queue_outage.failed(exc))
            return None
        runs.queue_outage.ok()
        if data is not None:
            return self.deserialize_task(data)

    def read_schedule(self, timestamp=None):
        # A message coming out of the schedule was recorded when first enqueued:
        # enqueued again, it must not bring back a row removed meanwhile (an
        # enqueue answered with an error, see submit).
        try:
            tasks = super().read_schedule(timestamp)
        except Exception as exc:  # any driver error: the scheduler looks again next second
            runs.queue_outage.failed(exc)
            return []
        for message in tasks:
            message.recorded = True
        return tasks

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
    """huey's SQLite storage with `synchronous=NORMAL` and the WAL size of the app database (models.wal_pages).

    With WAL this survives a crash of any process; only a power cut can undo
    the last commits, and then the reaper's requeue_lost() enqueues again a job
    whose message vanished. huey's default (FULL) syncs the disk on every
    enqueue and every dequeue: a third of a drained job's cost (bench/, issue 7).
    """

    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute("pragma synchronous=normal")
        pages = wal_pages(self.filename)
        conn.execute(f"pragma wal_autocheckpoint={pages}")
        conn.execute(f"pragma journal_size_limit={pages * 4096}")
        return conn


def make_huey(url):
    """A LitejobsHuey storing its queue at `url` (sqlite, redis or postgresql)."""
    # Results live in the Job table, so huey keeps none (faster drains, no leftovers).
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        settings.ensure_dir(os.path.dirname(path) or ".", "QUEUE_URL")
        return LitejobsHuey(settings.QUEUE_NAME, results=False, storage_class=QueueStorage, filename=path, timeout=10)
    if url.startswith(("redis://", "rediss://")):
        # The priority storage is the one that honours queue priorities on Redis.
        return LitejobsHuey(settings.QUEUE_NAME, results=False, storage_class=PriorityRedisStorage, url=url)
    return LitejobsHuey(settings.QUEUE_NAME, results=False, storage_class=PostgresStorage, dsn=url)


try:
    huey = make_huey(settings.QUEUE_URL)
except Exception as exc:  # a PostgreSQL queue connects and creates its tables at once
    sys.exit(preflight.unreachable("QUEUE_URL", settings.QUEUE_URL, exc))


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
        self.func = func
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
            raise DefinitionError(
                f"{func.__name__} ({where(func)}): parameter names {sorted(clash)} are reserved by huey; rename them"
            )
        other = FUNCTIONS.get(func.__name__)
        if other is not None and where(other.func) != where(func):
            raise DefinitionError(
                f"function {func.__name__} is defined twice: {where(other.func)} and {where(func)}; "
                "a task's name is its function's name, so rename one"
            )
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


def where(func):
    """`file:line` of a function's definition, for messages."""
    code = func.__code__
    return f"{code.co_filename}:{code.co_firstlineno}"


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
    queue=None,
):
    """Record and enqueue a call of function `name`; returns (job, created).

    The row is written `pending`, the message pushed, and the row then
    confirmed `queued` (or `scheduled`). A consumer runs no pending job, so
    when the push fails — or times out, and a hung queue runs it later — the
    answer is an error and the job never runs; the row is removed, or by the
    reaper if that fails too. A retry with the same idempotency key takes over
    a row left pending and pushes again: one job whatever happened before.

    `queue` puts this call on another queue than the function's (a schedule's override).
    """
    function = FUNCTIONS[name]
    args = args or {}
    kwargs = args if checked else function.validate(args)
    if delay is not None:
        eta = utcnow() + datetime.timedelta(seconds=delay)
    queue = queue or function.queue
    if priority is None:
        priority = settings.QUEUE_PRIORITIES.get(queue, 0)
    status = "scheduled" if eta and eta > utcnow() else "queued"
    check_disk()
    try:
        job = None
        if idempotency_key is not None:
            job = Job.by_idempotency_key(api_key_id, name, idempotency_key)
            if job is not None and job.status != "pending":
                return _same_call(job, kwargs), False
            if job is not None:
                _same_call(job, kwargs)
        if job is None:
            job = Job.record(
                id=str(uuid.uuid4()),
                name=name,
                args=json.dumps(kwargs),
                status="pending",
                queue=queue,
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
        _forget_pending([job.id])
        raise Unavailable(f"queue storage unavailable: {exc}") from exc
    try:
        confirmed = Job.confirm([job.id], {job.id: status})
    except PeeweeException as exc:
        _forget_pending([job.id])
        raise Unavailable(f"database unavailable: {exc}") from exc
    if not confirmed:
        # The reaper removed the row as abandoned, or a retry with the same key confirmed it.
        job = Job.get_or_none(Job.id == job.id)
        if job is None or job.status == "pending":
            raise Unavailable("queue storage too slow: the job was not enqueued")
        return job, False
    job.status = status
    return job, True


def _forget_pending(job_ids):
    """Remove the rows of a failed enqueue; if that fails too, the reaper removes them later."""
    try:
        Job.forget_pending(job_ids)
    except PeeweeException as exc:
        logger.warning("could not remove %d unconfirmed job rows (%s); the reaper will", len(job_ids), exc)


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
    check_disk()
    now = utcnow()
    rows = [(str(uuid.uuid4()), name, json.dumps(args), "pending", function.queue, function.priority, now) for args in calls]
    with db.atomic():
        bulk_insert(Job, [Job.id, Job.name, Job.args, Job.status, Job.queue, Job.priority, Job.enqueued_at], rows)
    ids = [row[0] for row in rows]
    for done, (job_id, args) in enumerate(zip(ids, calls)):
        try:
            _enqueue(function, job_id, args, priority=function.priority)
        except Exception as exc:
            # The pushed ones are confirmed; the rest never run (see submit).
            Job.confirm(ids[:done], dict.fromkeys(ids[:done], "queued"))
            _forget_pending(ids[done:])
            raise Unavailable(f"queue storage unavailable: {exc}") from exc
    Job.confirm(ids, dict.fromkeys(ids, "queued"))
    return ids


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
    claim = getattr(_current, "claim", None)

    def write():
        held = Job.set_progress(job_id, done, total, message, claim=claim)
        return held, held and Job.select(Job.cancel_requested).where(Job.id == job_id).scalar()

    try:
        held, canceled = write()
    except PeeweeException as exc:
        if not runs.is_connection_error(exc):
            raise
        runs.reset_connection()  # one more try on a new connection
        held, canceled = write()
    if not held:
        raise runs.ClaimLost(f"job {job_id}: another run took it over (or it was canceled); this run stops")
    if canceled:
        raise CancelExecution("canceled while running", retry=False)
    _current.task.check_timeout()


def fail_now(message):
    """Fail the running job with `message` and no retries: its input is wrong, not the moment."""
    raise JobError(message)


@huey.signal(signals.SIGNAL_ERROR)
def _no_retries_for_job_error(signal_name, message, exc):
    """A JobError fails its job at once; any other exception is retried as the function says."""
    if isinstance(exc, JobError):
        message.retries = 0  # huey reads this right after its error signal


def _worker_name():
    return f"{settings.HOSTNAME}:{os.getpid()}:{threading.current_thread().name}"


@huey.signal(signals.SIGNAL_ENQUEUED)
def _record_enqueued(signal_name, message):
    """Record calls that did not come through submit(): periodic ticks, plain task() calls.

    Written `pending` before the push; LitejobsHuey.enqueue confirms it after."""
    if getattr(message, "recorded", False):
        return
    Job.insert(
        id=message.id,
        name=message.name,
        args=guard.dumps(message.kwargs, default=str),
        status="pending",
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
    """Claim the job for this run, or do not run it (huey runs the task unless this raises CancelExecution)."""
    limits = _limits_of(message)
    # A message can arrive between the push and the confirmation of its row
    # (submit): a few short pauses usually see it confirmed, then it is deferred.
    for pause in CLAIM_PAUSES:
        started = utcnow()
        try:
            claim = Job.mark_running(message.id, _worker_name(), CONSUMER_ID, now=started, limits=limits)
            row = None if claim else Job.select(Job.status).where(Job.id == message.id).first()
        except Exception as exc:  # huey would log any other exception and run the job unclaimed
            if runs.is_connection_error(exc):
                runs.reset_connection()
            # A pause growing to a few seconds: workers do not spin through the queue while the database is away.
            time.sleep(runs.database_outage.failed(exc))
            _defer(message)
            raise CancelExecution(f"could not record the start: {exc}; the message goes back", retry=False) from None
        runs.database_outage.ok()
        if claim or row is None or not (row.status == "pending" or (row.status in WAITING and not limits)):
            break
        time.sleep(pause)
    if claim is None:
        _not_claimed(message, row, limits)
    runs.held.hold(message.id, claim)
    _current.job_id = message.id
    _current.task = message
    _current.claim = claim
    # Kept for _record_outcome, which then needs no read of the row for the duration.
    _current.started_at = started


def _not_claimed(message, row, limits):
    """A message whose job cannot be claimed: wait for a slot, come back later, or drop it (raises)."""
    if row is None:
        # Its enqueue was answered with an error (the row was removed), or it was never recorded.
        logger.warning("job %s (%s): no such job; message dropped", message.id, message.name)
        raise CancelExecution("no job row", retry=False)
    if row.status == "pending" or (row.status in WAITING and not limits):
        _defer(message)  # the enqueue that pushed it has not confirmed it yet
        raise CancelExecution("job not confirmed yet", retry=False)
    if row.status in TERMINAL:
        # Canceled (or otherwise finished) between dequeue and now: do not run it.
        raise CancelExecution("job already finished", retry=False)
    if row.status == "running":
        logger.warning("job %s (%s): running under a live claim; duplicate message dropped", message.id, message.name)
        raise CancelExecution("job running elsewhere", retry=False)
    if limits:
        _wait_for_slot(message, limits)
    raise CancelExecution(f"job is {row.status} and could not be claimed", retry=False)


class _QuietClaims(logging.Filter):
    """Drops huey's warning for each message _record_running declines: a deferred
    message is routine, and the other cases log a line of their own."""

    def filter(self, record):
        return "cancelled by _record_running" not in record.getMessage()


logging.getLogger("huey").addFilter(_QuietClaims())

DEFER_SECONDS = 1.0
CLAIM_PAUSES = (0.002, 0.01, 0.05, 0)  # seconds between tries of a claim that waits on its enqueue


def _defer(message):
    """Put a message back for later, through the schedule; if that fails as well,
    the reaper's requeue_lost() enqueues its job again."""
    message.recorded = True
    message.eta = utcnow() + datetime.timedelta(seconds=DEFER_SECONDS)
    try:
        huey.add_schedule(message)
    except Exception as exc:  # any queue error: requeue_lost() is the fallback
        runs.queue_outage.failed(exc)


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
    claim = getattr(_current, "claim", None)
    _current.job_id = _current.task = _current.started_at = _current.claim = None
    try:
        if isinstance(exc, runs.ClaimLost):
            logger.warning("job %s (%s): %s", message.id, message.name, exc)
            return
        if exc is not None and runs.is_connection_error(exc):
            runs.reset_connection()
        # Retried while the claim is held, so a short outage leaves no job running.
        status = runs.write_while_held(lambda: _write_outcome(message, value, exc, started_at, claim), message.id)
    finally:
        runs.held.release(message.id)
    if status is None:
        return
    if not status[1]:
        logger.warning("job %s (%s): outcome %s not recorded: the run lost its claim", message.id, message.name, status[0])
        return
    try:
        if status[0] in ("succeeded", "failed"):
            hooks.job_finished.send(message.id, message.name, status[0])
    except Exception:  # the outcome is recorded; a receiver's failure must not undo that
        logger.exception("job %s: a job_finished receiver failed", message.id)
    _log_finished(message, status[0], started_at, status[2])


def _write_outcome(message, value, exc, started_at, claim):
    """Write a run's outcome under its claim; returns (status, whether written, error)."""
    if exc is None:
        return "succeeded", Job.mark_finished(message.id, "succeeded", result=value, started_at=started_at, claim=claim), None
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, TaskTimeout):
        error = "timeout"
    elif isinstance(exc, (JobError, CancelExecution)):
        error = str(exc) or type(exc).__name__
    else:
        error = f"{type(exc).__name__}: {exc}"
    if message.retries and not (isinstance(exc, CancelExecution) and _cancel_requested(message.id)):
        return "retrying", Job.mark_retrying(message.id, error, trace, claim=claim), error
    if isinstance(exc, CancelExecution):
        return "canceled", Job.mark_finished(message.id, "canceled", error=error, started_at=started_at, claim=claim), error
    return "failed", Job.mark_finished(message.id, "failed", error=error, traceback=trace, started_at=started_at, claim=claim), error


@huey.post_execute()
def _return_connection(message, value, exc):
    """Hand the worker's PostgreSQL connection back to the pool once its job is recorded.

    Registered after _record_outcome, so it runs after it. SQLite keeps its
    per-thread connection: reopening costs more there than it frees.
    """
    if not isinstance(db.obj, SqliteDatabase) and not db.is_closed() and not db.in_transaction():
        db.close()


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
    claim = runs.held.claim_of(message.id)  # only while this process still holds the job
    held = (Job.id == message.id) & (Job.status == "running")
    if claim is not None:
        held &= Job.claim == claim
    Job.update(status="queued", worker=None, consumer_id=None, claim=None, error="interrupted by a consumer stop").where(
        held
    ).execute()
    runs.held.release(message.id)
    message.recorded = True
    huey.enqueue(message)


# -- Consumers: heartbeat, recovery, graceful stop ---------------------------
CONSUMER_ID = None


def reap(now=None):
    """Run again the jobs whose run's lease lapsed; returns how many.

    A lease lapses by the database's clock when its holder stops renewing it:
    the consumer died or froze, the thread running the job is gone, or the
    outcome could not be written. Safe with several consumers reaping at once:
    each job is taken by an UPDATE conditional on the same claim and a lapsed
    lease, and only the one that changed the row enqueues it.
    """
    alive = [w.id for w in Worker.alive()]
    # Read in full before writing: an UPDATE on a connection still stepping through
    # a SELECT fails at once ("database is locked") when another writer got in between.
    orphans = list(Job.lapsed(alive))
    recovered = 0
    for job in orphans:
        claim = (Job.id == job.id) & (Job.status == "running")
        claim &= Job.claim.is_null() if job.claim is None else (Job.claim == job.claim)
        claim &= Job.lease_until.is_null() | (Job.lease_until < db_time())
        lost = f"worker lost: the run on {job.consumer_id} stopped renewing its lease"
        if job.recoveries >= settings.MAX_RECOVERIES or job.name not in FUNCTIONS:
            if Job.update(status="failed", error=lost, finished_at=utcnow()).where(claim).execute():
                hooks.job_finished.send(job.id, job.name, "failed")
            continue
        update = Job.update(status="queued", consumer_id=None, claim=None, lease_until=None, error=lost, recoveries=Job.recoveries + 1)
        if update.where(claim).execute():
            _enqueue(FUNCTIONS[job.name], job.id, job.args_dict, priority=job.priority)
            logger.warning("job %s (%s): %s; running it again", job.id, job.name, lost)
            recovered += 1
    return recovered + requeue_lost(now)


_suspects = set()  # waiting jobs whose message was missing at the last look
REQUEUE_PAGE = 1000


def requeue_lost(now=None):
    """Enqueue again waiting jobs whose queue message vanished; returns how many.

    huey deletes a message when a worker takes it, so a consumer killed between
    taking a message and marking its job running loses it. A waiting job older
    than HEARTBEAT_TIMEOUT whose message is in neither the queue nor the
    schedule at two looks in a row (a heartbeat apart) is enqueued again. The
    rows are read a page at a time, all of them. Rows left `pending` that long
    belong to enqueues answered with an error: they are removed.
    """
    global _suspects
    cutoff = (now or utcnow()) - datetime.timedelta(seconds=settings.HEARTBEAT_TIMEOUT)
    Job.delete().where((Job.status == "pending") & (Job.enqueued_at < cutoff)).execute()
    waiting = Job.select().where(Job.status.in_(WAITING) & (Job.enqueued_at < cutoff))
    if not waiting.exists():
        _suspects = set()
        return 0
    present = {message.id for message in huey.pending()} | {message.id for message in huey.scheduled()}
    missing = []
    page = list(waiting.order_by(Job.enqueued_at, Job.id).limit(REQUEUE_PAGE))
    while page:
        missing.extend(job for job in page if job.id not in present)
        last = page[-1]
        after = (Job.enqueued_at > last.enqueued_at) | ((Job.enqueued_at == last.enqueued_at) & (Job.id > last.id))
        page = list(waiting.where(after).order_by(Job.enqueued_at, Job.id).limit(REQUEUE_PAGE)) if len(page) == REQUEUE_PAGE else []
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
    """huey_consumer sets up only huey's logger: log the rest to stderr too, each logger at its level."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(logconfig.FORMAT))
        root.addHandler(handler)
        # huey_consumer gave huey's logger a handler of its own: one line per event, not two.
        logging.getLogger("huey").propagate = not logging.getLogger("huey").handlers
    logconfig.set_levels()


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


def _refuse_unpatched_greenlets():
    """Exit at once, naming the command that works, when gevent did not patch before the imports.

    Unpatched, greenlet workers share one database connection, block each
    other, and cannot be stopped by a signal.
    """
    from gevent import monkey

    if monkey.is_module_patched("threading") and monkey.is_module_patched("socket"):
        return
    import shlex

    command = shlex.join([sys.executable, "-m", "gevent.monkey", "--module", "huey.bin.huey_consumer", *sys.argv[1:]])
    sys.exit(f"litejobs: greenlet workers need gevent's patch before anything is imported; run: {command}")


class Consumer(huey_consumer.Consumer):
    """huey's consumer plus a Worker row, heartbeats, the reaper and graceful SIGTERM."""

    worker_class = QueueWorker

    # schedules.py, above this module, puts its minute-ticking Scheduler here (use_scheduler).
    scheduler_class = huey_consumer.Scheduler

    def __init__(self, huey_instance, embedded=False, **options):
        if options.get("worker_type") == "greenlet":
            _refuse_unpatched_greenlets()
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
        preflight.check_services(check_queue)
        Worker.create(
            id=CONSUMER_ID, host=settings.HOSTNAME, pid=os.getpid(), kind=self.kind, concurrency=self.workers,
            apps=",".join(APPS),
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
        self.running_lock = backup.running_lock()  # held while it runs: restore refuses meanwhile
        hooks.consumer_starting.send(self)  # e.g. joblog keeps each job's logging and prints
        if self.worker_type == "process":
            close_all_connections()  # each forked worker opens its own
        super().start()
        if watch:
            threading.Thread(
                target=watch_queue_file, args=(storage.filename, self.stop_flag), name="QueueWatcher", daemon=True
            ).start()

    def request_stop(self):
        """Stop gracefully, as Ctrl-C does, from any thread: the main loop sees it within half a second."""
        self._restart, self._graceful, self._signum = False, True, signal.SIGINT

    def _set_signal_handlers(self):
        # Embedded in the web process, the server owns Ctrl-C and SIGTERM.
        if not self.embedded:
            super()._set_signal_handlers()

    def _heartbeat(self):
        self._next_beat = time.monotonic() + settings.HEARTBEAT_INTERVAL
        try:
            Worker.beat(CONSUMER_ID)
            runs.database_outage.ok()
        except Exception as exc:  # a database outage must not kill the consumer's main loop
            runs.reset_connection()
            runs.database_outage.failed(exc)
            return
        try:
            reap()
            disk.checkpoint_all(huey.storage)
        except PeeweeException as exc:  # the database went away in between: the next beat tries again
            runs.reset_connection()
            runs.database_outage.failed(exc)
        except Exception as exc:  # any queue driver error: logged once per outage, as the workers do
            runs.queue_outage.failed(exc)

    def loop(self, health_check_ts=None):
        health_check_ts = super().loop(health_check_ts)
        hooks.consumer_loop.send(self)  # e.g. stops: terminate requests and time limits of the jobs here
        if time.monotonic() >= self._next_beat:
            self._heartbeat()
        return health_check_ts

    def stop(self, graceful=False):
        hooks.worker_stopping.send(CONSUMER_ID)
        super().stop(graceful)
        Worker.update(stopped_at=utcnow()).where(Worker.id == CONSUMER_ID).execute()
        if getattr(self, "running_lock", None) is not None:
            self.running_lock.close()


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
        # After the commit, so the consumer finds the user it is asked to greet
        # (the accounts app queues their welcome mail).
        hooks.user_created.send(user)
    except Unavailable:
        User.delete_by_id(user.id)  # nothing half-done: no user without their welcome mail
        raise
    return user


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
    claims = ScheduleRun.prune(before)
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


def use_scheduler(scheduler_class):
    """Make every consumer tick with `scheduler_class` (schedules.Scheduler registers itself)."""
    Consumer.scheduler_class = scheduler_class


# -- Apps: what runs on the engine ----------------------------------------------------
# The engine never imports an app by name: the apps named in settings.APPS and the
# files of settings.FUNCTIONS_DIR are imported here by importlib, once, when web.py
# is imported or a consumer is made (so `huey_consumer jobs.huey` registers every
# task of the loaded apps). Not at the import of this module: an app imports the
# engine's modules above this one (api, dashboard, schedules), which import this one.
APPS = {}  # name -> hooks.App, in load order
# Engine modules above this one that hook into every consumer (the minute scheduler,
# a job's own log, hard stops): loaded with the apps, so a bare `huey_consumer`
# has them too.
ENGINE_EXTENSIONS = ("schedules", "joblog", "stops")
_loaded = []  # the (names, folder) loaded, so a second call is a no-op


def loaded_apps():
    """The loaded apps (hooks.App), in load order."""
    return list(APPS.values())


def load_apps(names=None, functions_dir=None):
    """Import the apps `names` (default settings.APPS) and every *.py of `functions_dir`, once."""
    names = settings.APPS if names is None else names
    if _loaded:
        return loaded_apps()
    _loaded.append((tuple(names), functions_dir))
    for module_name in ENGINE_EXTENSIONS:
        importlib.import_module(module_name)
    for name in names:
        if name in settings.BUILTIN_APPS:
            if not (settings.BASE_DIR / "apps" / name / "__init__.py").exists():
                logger.info("app %s: not installed here; skipped", name)
                continue
            module_name = f"apps.{name}"
        else:
            module_name = name
        before = set(FUNCTIONS)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name.split(".")[0] and exc.name != module_name:
                raise  # the app exists but imports something missing: its own traceback says what
            raise SystemExit(
                f"litejobs: cannot start: APPS names {name!r}, which is neither a built-in app "
                f"({', '.join(settings.BUILTIN_APPS)}) nor a module on PYTHONPATH"
            ) from None
        register_app(getattr(module, "app", None) or hooks.App(name), module, before)
    load_functions(Path(settings.FUNCTIONS_DIR if functions_dir is None else functions_dir))
    return loaded_apps()


# The functions files that failed to load: (file, line, message), for the log and the dashboard.
LOAD_ERRORS = []


def load_functions(folder):
    """Load every *.py of `folder` as an app; returns the apps loaded.

    A file that does not import (syntax error, missing module, an exception at
    import) is logged and listed in LOAD_ERRORS and the rest is served, except
    with ENV=production, where the start stops naming the file and line.
    A DefinitionError always stops the start.
    """
    loaded = []
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else ():
        before = set(FUNCTIONS)
        try:
            module = load_file(path)
        except DefinitionError as exc:
            raise SystemExit(f"litejobs: cannot start: {exc}") from None
        except Exception as exc:  # any error of the user's code at import, SyntaxError included
            _forget_functions(set(FUNCTIONS) - before)
            place, message = _error_location(exc, path)
            if settings.ENV == "production":
                raise SystemExit(f"litejobs: cannot start: {place}: {message} (fix the file, or move it out of FUNCTIONS_DIR)") from None
            logger.error("functions file %s did not load: %s; the other apps are served", place, message)
            LOAD_ERRORS.append((str(path), place, message))
            continue
        loaded.append(register_app(getattr(module, "app", None) or hooks.App(path.stem), module, before))
    return loaded


def _error_location(exc, path):
    """(`file:line`, message) of an error raised while importing the file at `path`."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}", f"SyntaxError: {exc.msg}"
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [frame for frame in frames if Path(frame.filename) == path] or frames[-1:]
    line = inside[-1].lineno if inside else "?"
    return f"{path}:{line}", f"{type(exc).__name__}: {exc}"


def _forget_functions(names):
    """Remove functions a half-loaded file registered before it failed."""
    for name in names:
        function = FUNCTIONS.pop(name)
        function.wrapper.unregister()


def load_file(path):
    """Import one functions file as module `functions.<stem>`."""
    name = f"functions.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def register_app(app, module, functions_before=()):
    """Record a loaded app: its functions, queue priorities; tell the app_loaded hook."""
    app.source = module
    app.functions = sorted(set(FUNCTIONS) - set(functions_before)) or app.functions
    for queue, priority in app.queues.items():
        settings.QUEUE_PRIORITIES.setdefault(queue, priority)
    APPS[app.name] = app
    hooks.app_loaded.send(app)
    return app
