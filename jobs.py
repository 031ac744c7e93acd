"""litejobs jobs: the Huey instance, task(), submit/cancel/retry, the job history it keeps, and the core tasks.

Each task call is a `Job` row (models.py) kept in step with huey's signals,
so a job accepted once reaches a terminal state. The consumer (heartbeats,
the reaper) is in consumer.py and the app loader in loader.py: both sit above
this module, which imports them by name when huey asks for a consumer, so
`huey_consumer jobs.huey` still registers every task of the loaded apps.
"""

import datetime
import importlib
import importlib.util
import inspect
import json
import logging
import os
import sqlite3
import sys
import threading
import time
import typing
import uuid

from huey import Huey, signals
from huey.api import Task
from huey.registry import Registry
from peewee import IntegrityError, PeeweeException

import disk
import hooks
import preflight
import queue_storage
import runs
import guard
import settings
import wakeup
from take_ahead import TakeAhead
from params import ArgumentError, Param  # noqa: F401 re-exported: apps import ArgumentError from here
from runs import current_job_id, progress  # noqa: F401 re-exported: tasks import them from here
from models import Job, utcnow
from models import ScheduleRun, User, bulk_insert, checkpoint, db, isoformat

logger = logging.getLogger("litejobs.jobs")


class JobError(Exception):
    """Raise to fail a job at once with exactly this message, without retries: its input is wrong."""


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
            return queue_storage.QueuedMessage.of(super().create_message(task), getattr(task, "queue", None))
        # A scheduled job of a function not loaded here fell due: the scheduler puts it
        # back on the queue unchanged (huey would refuse to, and lose it), where its run
        # fails it naming the function, or a consumer that has it runs it.
        task_str = self.task_to_string(type(task))
        self._registry.setdefault(task_str, type(task))
        try:
            return queue_storage.QueuedMessage.of(super().create_message(task), getattr(task, "queue", None))
        finally:
            if self._registry.get(task_str) is type(task):
                del self._registry[task_str]

    def create_task(self, message):
        task = super().create_task(message)
        task.queue = getattr(message, "queue", None)
        return task


class LitejobsHuey(Huey):
    """Huey whose consumers heartbeat, recover lost jobs and stop gracefully."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._registry = FunctionRegistry()
        self.take_ahead = TakeAhead(_wake)  # the Consumer turns it on for its workers

    def create_consumer(self, **options):
        # `huey_consumer jobs.huey` imports this module, then asks for a consumer:
        # the apps' tasks are registered before any job is taken. The loader and
        # the consumer sit above this module, so they are imported by name.
        importlib.import_module("loader").load_apps()
        return importlib.import_module("consumer").Consumer(self, **options)

    # litejobs cancels a job in its history, never with huey's revoke flags (cancel(),
    # Job.mark_running), so huey's two look-ups around every run (read the revoke flag,
    # clear it) are skipped: a tenth of a job's cost on Redis and PostgreSQL (bench/).
    def is_revoked(self, task, timestamp=None, peek=True):
        return False

    def enqueue(self, task):
        """huey's enqueue (litejobs uses no groups, chords or huey results), onto the task's queue.

        A plain task() call is recorded `pending` by _record_enqueued before the
        push and confirmed here after it, as submit() does: a failed push never runs.
        """
        if task.expires:
            task.resolve_expires(self.utc)
        self._emit(signals.SIGNAL_ENQUEUED, task)
        if self._immediate:
            self.execute(task)
        else:
            self.storage.enqueue(self.serialize_task(task), task.priority, queue_of(task))
        if not getattr(task, "recorded", False):
            Job.confirm([task.id], {task.id: "queued"})
        wakeup.notify(self.storage)  # standalone consumers of a SQLite queue, in other processes

    def serve(self, queues=None, also=()):
        """Dequeue from `queues` only (None: every queue this process knows of, and `also`)."""
        self.serving = queues
        names = queues or known_queues() | set(also)
        self.storage.reading = sorted(names, key=lambda q: (-settings.QUEUE_PRIORITIES.get(q, 0), q))

    serving = None  # the queues this process was told to serve (serve()); None: all

    def dequeue(self):
        """huey's dequeue, but a queue that cannot be read answers None after a pause
        that grows to a few seconds, logged once per outage (runs.Outage)."""
        if self.storage.reading is None:
            self.serve(self.serving)
        try:
            data = self.take_ahead.take(self.storage)
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


def make_huey(url):
    """A LitejobsHuey storing its queue at `url` (sqlite, redis or postgresql)."""
    # Results live in the Job table, so huey keeps none (faster drains, no leftovers).
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        settings.ensure_dir(os.path.dirname(path) or ".", "QUEUE_URL")
        storage = queue_storage.QueueStorage
        return LitejobsHuey(settings.QUEUE_NAME, results=False, storage_class=storage, filename=path, timeout=10)
    if url.startswith(("redis://", "rediss://")):
        return LitejobsHuey(settings.QUEUE_NAME, results=False, storage_class=queue_storage.RedisQueueStorage, url=url)
    return LitejobsHuey(settings.QUEUE_NAME, results=False, storage_class=queue_storage.PostgresQueueStorage, dsn=url)


_wake = threading.Event()  # set by an enqueue in this process: its idle workers look at once

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
_HUEY_OPTIONS = {"id", "eta", "delay", "retries", "retry_delay", "retry_backoff", "priority", "expires", "timeout"}


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


def queue_of(task):
    """The litejobs queue a message goes to: its own (a schedule's override, kept by
    QueuedMessage), else its function's."""
    queue = getattr(task, "queue", None)
    if queue:
        return queue
    function = FUNCTIONS.get(task.name)
    return function.queue if function else queue_storage.DEFAULT_QUEUE


def known_queues():
    """Every queue configured (QUEUE_PRIORITIES) or used by a function loaded here."""
    return set(settings.QUEUE_PRIORITIES) | {f.queue for f in FUNCTIONS.values()}


# -- Enqueueing -------------------------------------------------------------------


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

    With the queue in the SQLite database (the default), the row and its
    message commit together (write_with_messages). Elsewhere the row is written
    `pending`, the message pushed, and the row confirmed `queued` (or
    `scheduled`); a consumer runs no pending job, so when the push fails — or
    times out, and a hung queue runs it later — the answer is an error and the
    job never runs (the row is removed, by the reaper if that fails too). A
    retry with the same idempotency key takes over a row left pending: one job
    whatever happened before. `queue` overrides the function's (a schedule's)."""
    fresh, kwargs, status = new_job(
        name, args, delay, eta, priority, queue, checked, parent_id=parent_id, api_key_id=api_key_id, idempotency_key=idempotency_key
    )
    check_disk()
    storage = messages_with_rows() if idempotency_key is None else None
    if storage is not None:
        write_with_messages(storage, [(fresh, kwargs, status)])
        return fresh, True
    try:
        job = None
        if idempotency_key is not None:
            job = Job.by_idempotency_key(api_key_id, name, idempotency_key)
            if job is not None and job.status != "pending":
                return _same_call(job, kwargs), False
            if job is not None:
                _same_call(job, kwargs)
        if job is None:
            job = fresh
            Job.insert_rows([job])
    except IntegrityError:
        # Another request with the same idempotency key won the race.
        return _same_call(Job.by_idempotency_key(api_key_id, name, idempotency_key), kwargs), False
    except PeeweeException as exc:
        raise Unavailable(f"database unavailable: {exc}") from exc
    try:
        _enqueue(FUNCTIONS[name], job.id, kwargs, fresh.scheduled_for, fresh.priority, fresh.queue)
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


def new_job(name, args, delay=None, eta=None, priority=None, queue=None, checked=False, **fields):
    """An unsaved `pending` Job for a call of `name`, its checked arguments, and the
    status it takes once its message is queued; ArgumentError for bad arguments."""
    function = FUNCTIONS[name]
    kwargs = (args or {}) if checked else function.validate(args or {})
    if delay is not None:
        eta = utcnow() + datetime.timedelta(seconds=delay)
    queue = queue or function.queue
    if priority is None:
        priority = settings.QUEUE_PRIORITIES.get(queue, 0)
    status = "scheduled" if eta and eta > utcnow() else "queued"
    values = {"args": json.dumps(kwargs), "queue": queue, "priority": priority, "scheduled_for": eta, **fields}
    return Job(id=str(uuid.uuid4()), name=name, status="pending", **values), kwargs, status


def messages_with_rows():
    """The queue storage when it is the app database (QUEUE_URL is DATABASE_URL, the default
    on SQLite): a job's row and its message can commit in one transaction."""
    storage = huey.storage
    if huey.immediate or not hasattr(storage, "shares_database") or not storage.shares_database(db.obj):
        return None
    return storage


def write_with_messages(storage, calls):
    """Insert the rows of `calls` ((unsaved job, kwargs, status) each) and their messages in
    one transaction: neither is ever there without the other, so no `pending` step."""
    messages = [message_for(FUNCTIONS[job.name], job.id, kwargs, job.scheduled_for, job.priority, job.queue)
                for job, kwargs, _ in calls]
    for job, _, status in calls:
        job.status = status
    try:
        with db.atomic():
            Job.insert_rows([job for job, _, _ in calls])
            storage.write_in(db, storage_items(messages))
    except (PeeweeException, sqlite3.Error) as exc:
        raise Unavailable(f"database unavailable: {exc}") from exc
    wakeup.notify(storage)  # standalone consumers, in other processes
    _wake.set()


def storage_items(messages):
    """(data, priority, queue) of each message for a storage write, after what huey.enqueue does first."""
    items = []
    for message in messages:
        if message.expires:
            message.resolve_expires(huey.utc)
        huey._emit(signals.SIGNAL_ENQUEUED, message)
        items.append((huey.serialize_task(message), message.priority or 0, queue_of(message)))
    return items


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


def message_for(function, job_id, kwargs, eta=None, priority=None, queue=None):
    """The queue message of a recorded job (its row is written: _record_enqueued leaves it alone)."""
    if eta is not None and eta.tzinfo is None:
        # Our times are naive UTC; huey reads a naive eta as local time.
        eta = eta.replace(tzinfo=datetime.timezone.utc)
    message = function.wrapper.s(id=job_id, eta=eta, priority=priority, **kwargs)
    message.recorded = True
    if queue and queue != function.queue:
        message.queue = queue  # a schedule's override; else its function's (queue_of)
    return message


def _enqueue(function, job_id, kwargs, eta=None, priority=None, queue=None):
    huey.enqueue(message_for(function, job_id, kwargs, eta, priority, queue))
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


# -- The running job (current_job_id and progress: runs.py; the history hooks: job_history.py)


def fail_now(message):
    """Fail the running job with `message` and no retries: its input is wrong, not the moment."""
    raise JobError(message)


# -- Consumers (consumer.py) ------------------------------------------------------
CONSUMER_ID = None  # this process's consumer, set when it starts (consumer.Consumer.start)


# -- Periodic work: housekeeping jobs of schedules.SCHEDULES, and the retry policies and
# batch sizes every module's periodic and mail jobs share. Each is safe to run twice.
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


# -- Apps (loader.py) -----------------------------------------------------------------
APPS = {}  # name -> hooks.App, in load order; loader.py fills it


# -- The job history (job_history.py) -------------------------------------------------
# Its hooks on `huey` keep each job's row in step with its runs. It sits above this
# module (it imports it), so it is imported by name, last: every process importing
# jobs records its jobs, whichever module it imported first.
importlib.import_module("job_history")
