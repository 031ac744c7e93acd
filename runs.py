"""litejobs runs: the claims, leases, history writes and connections of the jobs a process runs.

A run holds its job by a claim (models.Job.mark_running): a token that every
later write of the run names, and a lease by the database's clock that a
keeper thread renews every HEARTBEAT_INTERVAL while the run goes on. A lease
that lapses — the process froze or died, the thread that ran the job is gone,
the outcome could not be written — lets the reaper (consumer.reap) or a second
message take the job over; the old run then finds its claim gone at its next
`progress()` and writes nothing more. A run quicker than CLAIM_AFTER writes
its claim together with its outcome, one statement instead of two.

The history writer (HeldRuns.write) commits the writes of every run of the
process together: a group commit, many runs to a transaction.

Connections heal themselves here too: a database connection that failed
(PostgreSQL restarted or cut it, SQLite hit a full disk) is dropped and a new
one is opened on the next use, and an outage of the queue or the database is
logged once when it starts and once when it ends, not once per try.

The running job's id and progress() live here too; jobs.py re-exports them.
"""

import logging
import os
import secrets
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
# A run that ends within CLAIM_AFTER seconds writes its claim and its outcome in one
# statement (Job.mark_finished with claimed=False); a longer one gets its claim
# written by the writer thread then, as every run once did at its start. Most jobs
# are quick: one write instead of two, a third of a drained job's cost (bench/, issue 19).
CLAIM_AFTER = 0.005


def new_claim():
    """A new claim token."""
    return secrets.token_hex(8)


class Run:
    """One run in this process: its job, its claim token and whether that claim is in the database yet."""

    def __init__(self, job_id, claim, start=None):
        self.job_id, self.claim = job_id, claim
        self.start = start  # writes the claim (Job.mark_running) while it is not written yet
        self.written = start is None
        self.lost = False  # its claim could not be written: canceled, or another run has the job
        self.settling = False  # its outcome is on its way: no claim is written for it any more
        self.wanted = False  # progress() waits for its claim
        self.claiming = False
        self.claimed = threading.Event()
        self.thread = threading.current_thread()
        self.since = time.monotonic()


class _Write:
    """One statement for the writer; `then(result, error)` after its transaction ended, or a waiting worker."""

    __slots__ = ("statement", "then", "deadline", "result", "error", "done")

    def __init__(self, statement, then=None):
        self.statement, self.then, self.result, self.error = statement, then, None, None
        self.deadline = time.monotonic() + settings.HEARTBEAT_TIMEOUT
        self.done = None if then else threading.Event()


WRITER_TICK = 0.005  # seconds between the busy writer's looks for handed-off writes and due claims
WRITER_BUSY = 0.1  # seconds the writer keeps looking after its last write, before it sleeps until called
MAX_HANDED_OFF = 256  # outcomes waiting for the writer before a worker waits too: what a crash makes run again


class HeldRuns:
    """The claims of the runs in this process, the keeper thread renewing their leases,
    and the writer thread committing their history.

    The writer is a group commit: it runs every statement handed to it since
    its last transaction, and the claims of runs past CLAIM_AFTER, in one
    transaction. A worker of a consumer hands over a finished run's outcome
    with what to do once it is committed (announce it, release the run) and
    takes its next job at once; other callers wait for the commit. Nothing is
    announced before it is durable: a consumer killed meanwhile leaves those
    jobs waiting, and requeue_lost() runs them again. A forked process worker
    starts with no runs and threads of its own.
    """

    def __init__(self):
        self._lock = threading.Condition()
        self._runs = {}  # job id -> Run
        self._unwritten = set()  # the runs whose claim is neither written nor refused yet
        self._writes = []
        self._handed_off = 0  # writes with a `then`, not yet through
        self._idle = False  # the writer sleeps until called
        self._busy_until = 0.0
        self._pid = None

    def _start_threads(self):
        if self._pid != os.getpid():
            self._runs, self._unwritten, self._writes, self._handed_off = {}, set(), [], 0
            self._pid = os.getpid()
            threading.Thread(target=self._keep, name="LeaseKeeper", daemon=True).start()
            threading.Thread(target=self._write_loop, name="HistoryWriter", daemon=True).start()

    def hold(self, job_id, claim, start=None):
        """Note a run of `job_id` under `claim`, written already or, with `start`
        (a function writing it, returning whether it took the job), not yet;
        then None if this process holds a run of that job already."""
        run = Run(job_id, claim, start)
        with self._lock:
            self._start_threads()
            if start is not None:
                if job_id in self._runs:
                    return None
                self._unwritten.add(run)
                if self._idle:
                    self._lock.notify_all()  # the writer times its next look from this run
            self._runs[job_id] = run
        return run

    def release(self, job_id, run=None):
        """Forget the run of `job_id` (only if it is `run`, when given)."""
        with self._lock:
            if run is None or self._runs.get(job_id) is run:
                self._unwritten.discard(self._runs.pop(job_id, None))

    def holds(self, job_id):
        return job_id in self._runs

    def run_of(self, job_id):
        return self._runs.get(job_id)

    def claim_of(self, job_id):
        run = self._runs.get(job_id)
        return run.claim if run else None

    def claims(self):
        """{job id: claim} of the runs whose claim is written and whose thread is still alive."""
        with self._lock:
            return {job_id: run.claim for job_id, run in self._runs.items() if run.written and run.thread.is_alive()}

    def renew(self):
        """Extend the leases of the live runs; returns how many the database still had."""
        return Job.renew_leases(self.claims())

    def claimed(self, job_id, timeout=None):
        """Have the claim of run `job_id` written now if it is not yet; returns whether the run holds its job."""
        run = self._runs.get(job_id)
        if run is None or run.written:
            return True
        if not run.lost:
            with self._lock:
                run.wanted = True
                if not (run.written or run.lost):
                    self._unwritten.add(run)
                self._lock.notify_all()
            run.claimed.wait(settings.HEARTBEAT_TIMEOUT if timeout is None else timeout)
        return run.written

    def settle(self, run):
        """The run's outcome goes next: the writer writes no claim for it from now on."""
        with self._lock:
            run.settling = True
            claiming = run.claiming
            self._unwritten.discard(run)  # its claim goes in with its outcome now
        if claiming:  # in the writer's hands right now: let it finish
            run.claimed.wait(settings.HEARTBEAT_TIMEOUT)

    def write(self, statement, then=None):
        """Run `statement()` in the writer's next transaction.

        Without `then`: returns its result once committed, or raises its error.
        With it: returns at once, and the writer calls `then(result, error)`
        once the statement committed (error None) or failed; connection errors
        are retried for HEARTBEAT_TIMEOUT first. Only MAX_HANDED_OFF such
        writes wait at a time: beyond that the caller waits for room.
        """
        item = _Write(statement, then)
        with self._lock:
            self._start_threads()
            if then is not None:
                while self._handed_off >= MAX_HANDED_OFF:
                    self._lock.wait(0.1)
                self._handed_off += 1
            self._writes.append(item)
            # A busy writer takes handed-off writes at its next look, a few ms away:
            # no wake-up per job, and bigger transactions.
            if then is None or self._idle:
                self._lock.notify_all()
        if then is not None:
            return None
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def flush(self, timeout=None):
        """Wait until every write handed to the writer in this process went through; False if time ran out."""
        deadline = time.monotonic() + (settings.HEARTBEAT_TIMEOUT * 2 if timeout is None else timeout)
        with self._lock:
            while (self._handed_off or self._writes) and self._pid == os.getpid():
                if time.monotonic() >= deadline:
                    return False
                self._lock.wait(0.05)
        return True

    @staticmethod
    def _unclaimed(run):
        """A run whose claim the writer is to write (once due): not written, not settling unless wanted."""
        if run.written or run.lost or run.claiming or (run.settling and not run.wanted):
            return False
        return run.thread.is_alive()

    def _due_claims(self):
        now = time.monotonic()
        due = [r for r in self._unwritten if self._unclaimed(r) and (r.wanted or now - r.since >= CLAIM_AFTER)]
        for run in due:
            run.claiming = True
        return due

    def _write_loop(self):
        pid = os.getpid()
        while self._pid == pid:
            with self._lock:
                if not self._writes:
                    now = time.monotonic()
                    unclaimed = [run.since for run in self._unwritten if self._unclaimed(run)]
                    if unclaimed or self._handed_off or now < self._busy_until:
                        wait = min(unclaimed) + CLAIM_AFTER - now if unclaimed else WRITER_TICK
                        self._lock.wait(min(max(wait, 0.0005), WRITER_TICK))
                    else:  # nothing to do for a while: sleep until someone calls
                        self._idle = True
                        self._close_connection()
                        self._lock.wait()
                        self._idle = False
                writes, self._writes = self._writes, []
                claims = self._due_claims()
                if writes or claims:
                    self._busy_until = time.monotonic() + WRITER_BUSY
            if writes or claims:
                try:
                    self._commit(claims, writes)
                except Exception as exc:  # a bug must not end the writer: every worker would wait forever
                    logger.exception("history writer failed")
                    self._failed(claims, writes, exc)

    @staticmethod
    def _close_connection():
        """Hand the writer's connection back while it sleeps (a PostgreSQL pool gets it back)."""
        try:
            if not db.is_closed() and not db.in_transaction():
                db.close()
        except Exception:  # a connection that cannot even close: forget it, the next use opens a new one
            state = getattr(db.obj, "_state", None)
            if state is not None:
                state.reset()

    def _commit(self, claims, writes):
        """One transaction for `claims` and `writes`; on a failure, each statement learns of its own."""
        try:
            with db.atomic():
                taken = [run.start() for run in claims]
                for item in writes:
                    item.result = item.statement()
        except Exception as exc:  # any statement's error, a driver's or a bug's: see whose it is
            if is_connection_error(exc):
                reset_connection()
                pause = database_outage.failed(exc)
                self._failed(claims, writes, exc, retry=True)
                time.sleep(pause)  # waiting workers retry on their own (write_while_held)
            elif len(claims) + len(writes) > 1:
                # One statement failed: each again on its own, so only its own caller hears of it.
                for run in claims:
                    self._commit([run], [])
                for item in writes:
                    self._commit([], [item])
            else:
                self._failed(claims, writes, exc)
            return
        database_outage.ok()
        with self._lock:
            for run, claim in zip(claims, taken):
                run.written, run.lost, run.claiming = bool(claim), not claim, False
                self._unwritten.discard(run)
                run.claimed.set()
        self._through(writes)

    def _failed(self, claims, writes, exc, retry=False):
        """A failed transaction: its claims are tried again, its writes get the error (or, handed
        off and with `retry`, another try until their deadline)."""
        with self._lock:
            for run in claims:
                run.claiming = False
                if run.settling:  # its worker waits for this attempt to end (settle)
                    run.claimed.set()
            if retry:
                again = [item for item in writes if item.then and time.monotonic() < item.deadline]
                self._writes[:0] = again
                writes = [item for item in writes if item not in again]
        for item in writes:
            item.error = exc
        self._through(writes)

    def _through(self, writes):
        """Wake the callers waiting for `writes`, or call their `then`."""
        handed_off = 0
        for item in writes:
            if item.then is None:
                item.done.set()
                continue
            handed_off += 1
            try:
                item.then(item.result, item.error)
            except Exception:  # a bug in one must not keep the others from their turn
                logger.exception("after a history write")
        if handed_off:
            with self._lock:
                self._handed_off -= handed_off
                self._lock.notify_all()

    def _keep(self):
        pid = os.getpid()
        last = time.monotonic()
        while self._pid == pid:
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


# -- The running job -----------------------------------------------------------------
current = threading.local()


def current_job_id():
    """The id of the job running in this worker, or None outside a job."""
    return getattr(current, "job_id", None)


def progress(done, total=None, message=None):
    """Report progress of the running job; stops it when it was canceled or timed out.

    Thread workers cannot be interrupted, so long jobs call this regularly: it
    raises CancelExecution for a canceled job and TaskTimeout past its timeout.
    """
    job_id = current_job_id()
    if job_id is None:
        return
    claim = getattr(current, "claim", None)
    if not held.claimed(job_id):  # a run still under CLAIM_AFTER has its claim written first
        raise ClaimLost(f"job {job_id}: another run took it over (or it was canceled); this run stops")

    def write():
        holds = Job.set_progress(job_id, done, total, message, claim=claim)
        return holds, holds and Job.select(Job.cancel_requested).where(Job.id == job_id).scalar()

    try:
        holds, canceled = write()
    except PeeweeException as exc:
        if not is_connection_error(exc):
            raise
        reset_connection()  # one more try on a new connection
        holds, canceled = write()
    if not holds:
        raise ClaimLost(f"job {job_id}: another run took it over (or it was canceled); this run stops")
    if canceled:
        raise CancelExecution("canceled while running", retry=False)
    current.task.check_timeout()
