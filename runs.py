"""litejobs runs: the claims, leases and connections of the jobs a process runs.

A run holds its job by a claim (models.Job.mark_running): a token that every
later write of the run names, and a lease by the database's clock that a
keeper thread renews every HEARTBEAT_INTERVAL while the run goes on. A lease
that lapses — the process froze or died, the thread that ran the job is gone,
the outcome could not be written — lets the reaper (consumer.reap) or a second
message take the job over; the old run then finds its claim gone at its next
`progress()` and writes nothing more.

Connections heal themselves here too: a database connection that failed
(PostgreSQL restarted or cut it, SQLite hit a full disk) is dropped and a new
one is opened on the next use, and an outage of the queue or the database is
logged once when it starts and once when it ends, not once per try.
"""

import logging
import os
import threading
import time

from huey.exceptions import CancelExecution
from peewee import InterfaceError, OperationalError, PeeweeException

import settings
from models import Job, db

logger = logging.getLogger("litejobs.runs")


class ClaimLost(CancelExecution):
    """The run's claim was taken over (or its job canceled): it stops and writes nothing more."""

    def __init__(self, message):
        super().__init__(message, retry=False)


# -- Connections ---------------------------------------------------------------------
def is_connection_error(exc):
    """True for a driver error after which this thread's connection may be unusable."""
    return isinstance(exc, (OperationalError, InterfaceError))


def reset_connection():
    """Drop this thread's database connection; the next query opens a new one.

    A PostgreSQL connection the server cut stays closed for its thread until
    closed here; for SQLite a fresh connection costs ~1 ms and clears nothing
    that matters, so every connection error takes this path.
    """
    database = db.obj
    try:
        if hasattr(database, "manual_close"):
            # A pool would hand this connection out again: close it for good, and the
            # idle ones too, which the same server restart or cut most likely killed.
            database.manual_close()
            database.close_idle()
        else:
            database.close()
    except Exception:  # inside a transaction, or the close itself failed: forget the connection
        database._state.reset()


class Outage:
    """The state of one resource (the queue, the database) in this process.

    `failed()` logs one line when the resource goes and returns how long to
    pause before the next try (doubling up to `longest`); `ok()` logs one line
    when it is back. Every thread of the process shares it.
    """

    def __init__(self, what, first=0.1, longest=3.0):
        self.what, self.first, self.longest = what, first, longest
        self._lock = threading.Lock()
        self._since = None
        self._failures = 0

    @property
    def down(self):
        return self._since is not None

    def failed(self, exc):
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                logger.warning("%s unavailable: %s: %s; retrying quietly", self.what, type(exc).__name__, exc)
            self._failures += 1
            return min(self.first * 2 ** min(self._failures - 1, 16), self.longest)

    def ok(self):
        if self._since is None:  # the common case: no lock taken
            return
        with self._lock:
            if self._since is not None:
                logger.warning("%s available again after %.1f s", self.what, time.monotonic() - self._since)
                self._since, self._failures = None, 0


queue_outage = Outage("queue storage")
database_outage = Outage("database")


# -- Runs this process holds ------------------------------------------------------------
class HeldRuns:
    """The claims of the runs in this process, and the keeper thread renewing their leases.

    A forked process worker starts with none and its own keeper.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._runs = {}  # job id -> (claim token, thread running it)
        self._keeper_pid = None

    def hold(self, job_id, claim):
        with self._lock:
            if self._keeper_pid != os.getpid():
                self._runs = {}
                self._keeper_pid = os.getpid()
                threading.Thread(target=self._keep, name="LeaseKeeper", daemon=True).start()
            self._runs[job_id] = (claim, threading.current_thread())

    def release(self, job_id):
        with self._lock:
            self._runs.pop(job_id, None)

    def holds(self, job_id):
        return job_id in self._runs

    def claim_of(self, job_id):
        run = self._runs.get(job_id)
        return run[0] if run else None

    def claims(self):
        """{job id: claim} of the runs whose thread is still alive."""
        with self._lock:
            return {job_id: claim for job_id, (claim, thread) in self._runs.items() if thread.is_alive()}

    def renew(self):
        """Extend the leases of the live runs; returns how many the database still had."""
        return Job.renew_leases(self.claims())

    def _keep(self):
        pid = os.getpid()
        last = time.monotonic()
        while self._keeper_pid == pid:
            # Naps of at most half a second, so a changed HEARTBEAT_INTERVAL takes effect at once.
            time.sleep(min(settings.HEARTBEAT_INTERVAL, 0.5))
            if not self._runs or time.monotonic() < last + settings.HEARTBEAT_INTERVAL:
                continue
            last = time.monotonic()
            try:
                with db.connection_context():
                    self.renew()
                database_outage.ok()
            except PeeweeException as exc:
                reset_connection()
                database_outage.failed(exc)
            except Exception:  # a bug must not end the keeper: every lease would lapse
                logger.exception("renewing leases failed")


held = HeldRuns()


def write_while_held(write, job_id, what="outcome"):
    """Run `write()` (a run's own write), retrying connection errors with a growing
    pause for up to HEARTBEAT_TIMEOUT while the keeper renews the claim; returns
    its result, or None when it gave up (the lease then lapses and the job is
    recovered like a lost one)."""
    deadline = time.monotonic() + settings.HEARTBEAT_TIMEOUT
    pause = 0.05
    while True:
        try:
            result = write()
            database_outage.ok()
            return result
        except PeeweeException as exc:
            if not is_connection_error(exc):
                raise
            reset_connection()
            database_outage.failed(exc)
            if time.monotonic() + pause > deadline:
                logger.error("job %s: %s not written after %g s (%s); it will run again", job_id, what, settings.HEARTBEAT_TIMEOUT, exc)
                return None
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
