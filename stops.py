"""Hard stops and the default time limit: ending a running job that never calls progress().

`POST /api/v1/jobs/{id}/cancel?terminate=true` marks the job (cancel_requested
and terminate_requested); the consumer running it notices within
CHECK_INTERVAL, from its main loop, and stops it by the strongest means its
kind of worker allows:

- thread workers: an exception raised in the worker thread
  (`PyThreadState_SetAsyncExc`); it lands at the next Python instruction the
  thread runs, so a blocking C call (a long `time.sleep`, a socket read)
  delays it until that call returns;
- greenlet workers: the exception thrown into the worker greenlet
  (gevent's `Greenlet.kill`); it lands when the greenlet next yields;
- process workers: the worker process is ended (SIGKILL), the job recorded
  as canceled by the consumer, and a new worker process takes its place.

JOB_TIMEOUT is the time limit of every function without a `timeout` of its
own. huey enforces limits on process workers (SIGALRM) and greenlet workers
(gevent.Timeout); on thread workers this module raises the timeout in the
worker thread the same way. A job past its limit fails with error `timeout`,
or is retried when its function has retries.
"""

import ctypes
import logging
import os
import signal
import sys
import threading
import time

from huey.exceptions import CancelExecution, TaskTimeout

import hooks
import jobs
import settings
from jobs import huey
from models import Job, Worker

logger = logging.getLogger("litejobs.stops")

CHECK_INTERVAL = 0.5  # seconds between a consumer's looks for terminate requests
ANSWER_WAIT = 5.0  # seconds the API waits for a terminated job to end before answering
HOW = {"thread": "thread-exception", "greenlet": "greenlet-exception", "process": "process-ended"}


class Terminated(CancelExecution):
    """Raised inside a job that was canceled with terminate=true; never retried."""

    def __init__(self, *args):
        super().__init__(retry=False)

    def __str__(self):
        return "terminated: canceled while running"


class HardTimeout(TaskTimeout):
    """Raised inside a thread worker's job past its time limit."""

    def __str__(self):
        return "timeout"


class Running:
    """A job running in this process: where it runs and until when it may."""

    def __init__(self, deadline):
        self.thread = threading.get_ident()
        self.greenlet = _current_greenlet()
        self.deadline = deadline
        self.fired = False


_running = {}  # job id -> Running, in this process
_lock = threading.Lock()


def _current_greenlet():
    # gevent patched nothing if it was never imported (a thread consumer need not load it).
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return None
    from gevent import getcurrent

    return getcurrent()


@huey.pre_execute()
def _track(message):
    """Give the job the default limit when its function has none, and note where it runs."""
    if not message.timeout and settings.JOB_TIMEOUT:
        message.timeout = settings.JOB_TIMEOUT  # huey sets its deadline from this, right after these hooks
    deadline = time.monotonic() + message.timeout if message.timeout else None
    with _lock:
        _running[message.id] = Running(deadline)


def _untrack(message, value, exc):
    with _lock:
        entry = _running.pop(message.id, None)
        if entry is not None and entry.fired and entry.greenlet is None:
            # The job ended on its own just as we fired: drop the exception if
            # it has not landed yet, so it cannot hit the worker's next job.
            _set_async_exc(entry.thread, None)


# First of the post-execute hooks: the worker is out of the job's body from here on.
huey._post_execute = {"_untrack": _untrack, **huey._post_execute}


def _set_async_exc(thread_id, exc_type):
    """Raise `exc_type` in thread `thread_id` at its next instruction (None: drop a pending one)."""
    exc = None if exc_type is None else ctypes.py_object(exc_type)
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)


def _raise_in(job_id, exc_type):
    """Raise `exc_type` inside the thread or greenlet running `job_id` here; True if done."""
    with _lock:
        entry = _running.get(job_id)
        if entry is None or entry.fired:
            return False
        entry.fired = True
        if entry.greenlet is not None:
            entry.greenlet.kill(exc_type, block=False)
            return True
        return _set_async_exc(entry.thread, exc_type) == 1


# -- Asking for a stop (the web process) ---------------------------------------------
def terminate(job):
    """Cancel `job`; a running one is stopped at once. Returns (job, how) where `how`
    names the means (HOW) for a running job, None for a waiting one."""
    if job.is_terminal or job.status != "running":
        return jobs.cancel(job), None
    Job.update(cancel_requested=True, terminate_requested=True).where(
        (Job.id == job.id) & (Job.status == "running")
    ).execute()
    worker = Worker.get_or_none(Worker.id == job.consumer_id) if job.consumer_id else None
    return Job.get_by_id(job.id), HOW.get(worker.kind if worker else "thread")


# -- Acting on it (each consumer's main loop) -------------------------------------
_next_check = 0.0


@hooks.consumer_loop.connect
def check(consumer):
    """Stop this consumer's jobs that were asked to terminate or ran past their limit.

    Called from the consumer's main loop; at most one query per CHECK_INTERVAL.
    """
    global _next_check
    if time.monotonic() < _next_check:
        return
    _next_check = time.monotonic() + CHECK_INTERVAL
    kind = consumer.kind
    try:
        if kind == "thread":
            _enforce_deadlines()
        asked = list(
            Job.select(Job.id, Job.worker).where(
                (Job.consumer_id == jobs.CONSUMER_ID) & (Job.status == "running") & Job.terminate_requested
            )
        )
        for job in asked:
            if kind == "process":
                _end_worker_process(consumer, job)
            elif _raise_in(job.id, Terminated):
                logger.warning("job %s: terminate requested; exception raised in its %s", job.id, kind)
    except Exception:  # the database may be back at the next check
        logger.exception("checking for jobs to stop failed; will try again")


def _enforce_deadlines():
    now = time.monotonic()
    with _lock:
        late = [job_id for job_id, entry in _running.items() if entry.deadline and now >= entry.deadline]
    for job_id in late:
        if _raise_in(job_id, HardTimeout):
            logger.warning("job %s: past its time limit; timeout raised in its thread", job_id)


def _end_worker_process(consumer, job):
    """SIGKILL the worker process running `job`, record the job canceled, start a new worker."""
    try:
        pid = int((job.worker or "").rsplit(":", 2)[1])
    except (IndexError, ValueError):
        return
    if pid not in {process.pid for _, process in consumer.worker_threads}:
        return  # not one of ours (any more)
    os.kill(pid, signal.SIGKILL)
    Job.mark_finished(job.id, "canceled", error="terminated: canceled while running; its worker process was ended")
    logger.warning("job %s: terminate requested; worker process %s ended", job.id, pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(p.pid == pid and p.is_alive() for _, p in consumer.worker_threads):
        time.sleep(0.01)
    consumer.check_worker_health()  # a new worker process takes its place
