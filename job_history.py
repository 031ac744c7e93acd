"""litejobs job history: the hooks on huey that keep each job's row in step with its runs.

A run claims its job (models.Job.mark_running, runs.py), runs it, and writes
its outcome under that claim: a run that lost its claim writes nothing. A
quick run writes both at once: its claim stays in memory for the first
runs.CLAIM_AFTER seconds and goes into the database with its outcome, in one
statement; a longer run (or one that reports progress) has it written then.
Outcomes go through the process's writer thread (runs.HeldRuns.write), which
commits many runs' writes in one transaction. A consumer's worker hands its
outcome over and takes its next job; the writer announces it (job_finished,
the log line) once it is committed. Other callers of huey.execute (a script,
a test) wait for the commit. A consumer killed before the commit leaves the
job waiting with no message: requeue_lost() (consumer.py) runs it again, so
each job ends recorded exactly once and runs at least once.

jobs.py imports this module by name at its end; it imports jobs.
"""

import datetime
import logging
import os
import threading
import time
import traceback

from huey import signals
from huey.exceptions import CancelExecution, TaskTimeout
from peewee import SqliteDatabase

import guard
import hooks
import jobs
import runs
import settings
from jobs import FUNCTIONS, JobError, huey, queue_of
from models import TERMINAL, WAITING, Job, db, utcnow
from runs import current

logger = logging.getLogger("litejobs.jobs")  # the name it logged under inside jobs.py: log filters keep working

# A job in one of these states starts without a write (runs.CLAIM_AFTER); any
# other state, or a concurrency limit, takes the claim first, as ever. Not
# `retrying`: the metrics trigger counts a retry on the change into that state.
QUICK_START = ("queued", "scheduled")


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
        queue=queue_of(message),
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
    worker = _worker_name()
    if not limits:
        started = utcnow()
        try:
            status = Job.status_of(message.id)
        except Exception as exc:  # huey would log any other exception and run the job unclaimed
            _database_away(message, exc)
        runs.database_outage.ok()
        if status in QUICK_START:
            # The claim goes in with the outcome, or after runs.CLAIM_AFTER (runs.HeldRuns).
            claim = runs.new_claim()
            start = lambda: Job.mark_running(message.id, worker, jobs.CONSUMER_ID, now=started, claim=claim)  # noqa: E731
            run = runs.held.hold(message.id, claim, start)
            if run is None:
                logger.warning("job %s (%s): running here already; duplicate message dropped", message.id, message.name)
                raise CancelExecution("job running here", retry=False)
            _begin(message, run, started, worker)
            return
    # A message can arrive between the push and the confirmation of its row
    # (submit): a few short pauses usually see it confirmed, then it is deferred.
    for pause in CLAIM_PAUSES:
        started = utcnow()
        try:
            claim = Job.mark_running(message.id, worker, jobs.CONSUMER_ID, now=started, limits=limits)
            row = None if claim else Job.select(Job.status).where(Job.id == message.id).first()
        except Exception as exc:  # huey would log any other exception and run the job unclaimed
            _database_away(message, exc)
        runs.database_outage.ok()
        if claim or row is None or not (row.status == "pending" or (row.status in WAITING and not limits)):
            break
        time.sleep(pause)
    if claim is None:
        _not_claimed(message, row, limits)
    _begin(message, runs.held.hold(message.id, claim), started, worker)


def _begin(message, run, started, worker):
    current.job_id = message.id
    current.task = message
    current.claim = run.claim
    current.run = run
    current.worker = worker
    # Kept for _record_outcome, which then needs no read of the row for the duration.
    current.started_at = started


def _database_away(message, exc):
    """The start could not be read or written: the message goes back for later (raises)."""
    if runs.is_connection_error(exc):
        runs.reset_connection()
    # A pause growing to a few seconds: workers do not spin through the queue while the database is away.
    time.sleep(runs.database_outage.failed(exc))
    _defer(message)
    raise CancelExecution(f"could not record the start: {exc}; the message goes back", retry=False) from None


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
    try:
        huey.enqueue(message)
    except Exception as exc:  # any queue error: logged once per outage; requeue_lost() enqueues it again
        runs.queue_outage.failed(exc)
    raise CancelExecution("waiting for a concurrency slot", retry=False)


@huey.post_execute()
def _record_outcome(message, value, exc):
    started_at = getattr(current, "started_at", None)
    run = getattr(current, "run", None)
    worker = getattr(current, "worker", None)
    current.job_id = current.task = current.started_at = current.claim = current.run = current.worker = None
    if isinstance(exc, runs.ClaimLost):
        logger.warning("job %s (%s): %s", message.id, message.name, exc)
        runs.held.release(message.id, run)
        return
    if exc is not None and runs.is_connection_error(exc):
        runs.reset_connection()
    if run is not None:
        runs.held.settle(run)
    status, outcome, error = _outcome(message, value, exc)
    if status == "retrying" or run is None or run.lost or not getattr(current, "hands_off", False):
        try:
            # Retried while the claim is held, so a short outage leaves no job running.
            written = runs.write_while_held(lambda: _write_outcome(message, run, status, outcome, started_at, worker), message.id)
        finally:
            runs.held.release(message.id, run)
        _announce(message, status, error, started_at, written)
        return
    # A consumer's worker takes its next job at once; the writer commits this outcome
    # with others, then announces it (a crash before that leaves the job to run again).
    def then(written, failure):
        runs.held.release(message.id, run)
        if failure is not None:
            _log_unwritten(message, status, failure)
        else:
            _announce(message, status, error, started_at, written)

    runs.held.write(_finish(message, run, status, outcome, started_at, worker), then=then)


def _outcome(message, value, exc):
    """(status, the fields to write, the error message) of a run that ended with `value` or `exc`."""
    if exc is None:
        return "succeeded", {"result": value}, None
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, TaskTimeout):
        error = "timeout"
    elif isinstance(exc, (JobError, CancelExecution)):
        error = str(exc) or type(exc).__name__
    else:
        error = f"{type(exc).__name__}: {exc}"
    if message.retries and not (isinstance(exc, CancelExecution) and _cancel_requested(message.id)):
        return "retrying", {"error": error, "traceback": trace}, error
    if isinstance(exc, CancelExecution):
        return "canceled", {"error": error}, error
    return "failed", {"error": error, "traceback": trace}, error


def _write_outcome(message, run, status, outcome, started_at, worker):
    """Write a run's outcome under its claim (and the claim with it while it is not written yet);
    returns whether it was written. Runs in the writer thread, or waits for it."""
    if status == "retrying":
        if run is None:  # no claim to name (the start hook did not run): the job, unless it finished
            return Job.mark_retrying(message.id, **outcome)
        # The metrics count a retry on the change from `running`: a quick run's claim goes in first.
        if run.lost or not runs.held.claimed(message.id):
            return 0
        return runs.held.write(lambda: Job.mark_retrying(message.id, claim=run.claim, **outcome))
    if run is None:
        return Job.mark_finished(message.id, status, started_at=started_at, **outcome)
    if run.lost:
        return 0
    return runs.held.write(_finish(message, run, status, outcome, started_at, worker))


def _finish(message, run, status, outcome, started_at, worker):
    """The statement writing a run's terminal outcome, for the writer thread."""

    def statement():
        claimed = run.written  # read in the writer, after any claim of this run committed
        return Job.mark_finished(
            message.id,
            status,
            started_at=started_at,
            claim=run.claim,
            claimed=claimed,
            worker=worker,
            consumer_id=jobs.CONSUMER_ID,
            **outcome,
        )

    return statement


def _announce(message, status, error, started_at, written):
    """Tell the apps and the log about an outcome once it is recorded."""
    if written is None:  # write_while_held gave up and logged it
        return
    if not written:
        logger.warning("job %s (%s): outcome %s not recorded: the run lost its claim", message.id, message.name, status)
        return
    try:
        if status in ("succeeded", "failed"):
            hooks.job_finished.send(message.id, message.name, status)
    except Exception:  # the outcome is recorded; a receiver's failure must not undo that
        logger.exception("job %s: a job_finished receiver failed", message.id)
    _log_finished(message, status, started_at, error)


def _log_unwritten(message, status, failure):
    logger.error("job %s (%s): outcome %s not written (%s); it will run again", message.id, message.name, status, failure)


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
