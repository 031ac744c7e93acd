"""litejobs group commit: enqueues that arrive together share their writes.

Each jobs.submit call commits at least once (its row and message together
when the queue is in the database, else the row `pending`, the push, the
confirmation). Under load the web process answered a few hundred enqueues a
second, most of each spent in those commits (bench/web_rows.py --profile).
Here the calls that arrive while a batch forms join it, and a batch is
written as one call would be: one transaction for every row and message, or
one INSERT, one push of every message (push_messages) and one confirm UPDATE
(and one check of the disk reserve). Each caller waits for its batch and gets its own job, or
the error the batch met — the same Unavailable (503) submit raises, for every
call of the batch; a failed push removes every row, so none of them runs.

Calls with an idempotency key take jobs.submit's own path: their row may exist
already, and a clash must reach only the call that made it.

Written with `threading`, which gevent patches in the web process: there a
batch is every request that reached submit in one turn of the event loop.
Threads (the test server, a CLI) get the same answers, in smaller batches.
"""

import logging
import threading
import time

from peewee import PeeweeException

import jobs
import wakeup
from models import Job

logger = logging.getLogger("litejobs.group_commit")

# How long the first call of a batch waits for others to join: 0 is one
# turn of gevent's loop, in which every request whose bytes arrived reaches here.
WINDOW = 0.0


class _Batch:
    def __init__(self):
        self.calls = []  # (job, kwargs, status)
        self.done = threading.Event()
        self.error = None
        self.confirmed = set()


_lock = threading.Lock()
_forming = None  # the batch new calls join, until its first call starts writing it


def submit(name, args=None, *, delay=None, eta=None, priority=None, api_key_id=None, idempotency_key=None):
    """jobs.submit for the web's invoke route, written with the calls around it; returns (job, created)."""
    global _forming
    if idempotency_key is not None:
        return jobs.submit(
            name, args, delay=delay, eta=eta, priority=priority, api_key_id=api_key_id, idempotency_key=idempotency_key
        )
    job, kwargs, status = jobs.new_job(name, args, delay, eta, priority, api_key_id=api_key_id)
    with _lock:
        batch = _forming
        first = batch is None
        if first:
            batch = _forming = _Batch()
        batch.calls.append((job, kwargs, status))
    if first:
        try:
            time.sleep(WINDOW)  # the others join meanwhile
        finally:  # written even if this request is cut short: the others wait for it
            with _lock:
                _forming = None
            _write(batch)
    else:
        batch.done.wait()
    if isinstance(batch.error, jobs.Unavailable):  # InsufficientStorage too
        raise type(batch.error)(str(batch.error)) from batch.error.__cause__  # each caller its own exception
    if batch.error is not None:
        raise batch.error
    if job.id not in batch.confirmed:
        # The reaper removed the row as abandoned: the push took too long.
        raise jobs.Unavailable("queue storage too slow: the job was not enqueued")
    job.status = status
    return job, True


def _write(batch):
    """Insert, push and confirm the calls of `batch` as jobs.submit does one; sets batch.error or batch.confirmed."""
    rows = [job for job, _, _ in batch.calls]
    ids = [job.id for job in rows]
    try:
        jobs.check_disk()  # once for the batch: under DISK_RESERVE, each of its calls gets the 507
        storage = jobs.messages_with_rows()
        if storage is not None:  # rows and messages in one transaction
            jobs.write_with_messages(storage, batch.calls)
            batch.confirmed = set(ids)
            return
        try:
            Job.insert_rows(rows)
        except PeeweeException as exc:
            raise jobs.Unavailable(f"database unavailable: {exc}") from exc
        try:
            push_messages(
                [
                    (jobs.FUNCTIONS[job.name], job.id, kwargs, job.scheduled_for, job.priority, job.queue)
                    for job, kwargs, _ in batch.calls
                ]
            )
        except Exception as exc:
            jobs._forget_pending(ids)
            raise jobs.Unavailable(f"queue storage unavailable: {exc}") from exc
        try:
            batch.confirmed = set(Job.confirm(ids, {job.id: status for job, _, status in batch.calls}))
        except PeeweeException as exc:
            jobs._forget_pending(ids)
            raise jobs.Unavailable(f"database unavailable: {exc}") from exc
    except Exception as exc:  # reaches every caller of the batch, as it would have reached one
        batch.error = exc
    finally:
        logger.debug("enqueue batch of %d: %s", len(ids), "written" if batch.error is None else batch.error)
        batch.done.set()


def push_messages(calls):
    """Put the messages of `calls` ((function, job id, kwargs, eta, priority, queue) each) on
    their queues at once: one transaction on SQLite and PostgreSQL, one round trip on Redis.

    The one place a batch is pushed; jobs._enqueue is the one place a single message is.
    """
    huey = jobs.huey
    messages = [jobs.message_for(*call) for call in calls]
    if huey.immediate or not hasattr(huey.storage, "enqueue_many"):
        for message in messages:
            huey.enqueue(message)
    else:
        huey.storage.enqueue_many(jobs.storage_items(messages))
        wakeup.notify(huey.storage)  # standalone consumers of a SQLite queue, in other processes
    jobs._wake.set()
