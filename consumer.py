"""litejobs consumer: huey's consumer with a Worker row, heartbeats, the reaper and a graceful stop.

Consumer, its QueueWorker and the watcher of a SQLite queue file; reap() and
requeue_lost(), which run again the jobs of consumers that died or whose
queue message vanished; the refusal of unpatched greenlet workers. This module
sits above jobs.py: `LitejobsHuey.create_consumer` imports it by name (as
loader.ENGINE_EXTENSIONS are), so `huey_consumer jobs.huey` still works.
The consumer's id is kept in jobs.CONSUMER_ID, where the job hooks read it.
"""

import datetime
import logging
import os
import signal
import sys
import threading
import time
import uuid

from huey import consumer as huey_consumer
from huey.storage import SqliteStorage
from peewee import PeeweeException

import backup
import disk
import hooks
import jobs
import logconfig
import preflight
import runs
import settings
import take_ahead
import wakeup
from jobs import APPS, FUNCTIONS, _enqueue, _wake, check_queue, huey, queue_of
from models import WAITING, Job, Worker, close_all_connections, db_time, utcnow

logger = logging.getLogger("litejobs.jobs")  # the name it logged under inside jobs.py: log filters keep working


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
        update = Job.update(
            status="queued", consumer_id=None, claim=None, lease_until=None, error=lost, recoveries=Job.recoveries + 1
        )
        if update.where(claim).execute():
            _enqueue(FUNCTIONS[job.name], job.id, job.args_dict, priority=job.priority, queue=job.queue)
            logger.warning("job %s (%s): %s; running it again", job.id, job.name, lost)
            recovered += 1
    return recovered + requeue_lost(now)


_suspects = {}  # waiting jobs whose message was missing at the last look: id -> time.monotonic() of the first
# A worker holds a message it took before its row says so: a quick run is claimed
# with its outcome or after runs.CLAIM_AFTER, a message taken ahead waits up to
# take_ahead.STALE before it goes back. Missing for this long, a message is lost.
LOST_AFTER = 2.0
REQUEUE_PAGE = 1000


def requeue_lost(now=None):
    """Enqueue again waiting jobs whose queue message vanished; returns how many.

    huey deletes a message when a worker takes it, so a consumer killed between
    taking a message and marking its job running loses it. A waiting job older
    than HEARTBEAT_TIMEOUT whose message is in neither the queue nor the
    schedule at looks LOST_AFTER seconds or more apart is enqueued again. The
    rows are read a page at a time, all of them. Rows left `pending` that long
    belong to enqueues answered with an error: they are removed.
    """
    global _suspects
    seen = time.monotonic()
    cutoff = (now or utcnow()) - datetime.timedelta(seconds=settings.HEARTBEAT_TIMEOUT)
    Job.delete().where((Job.status == "pending") & (Job.enqueued_at < cutoff)).execute()
    waiting = Job.select().where(Job.status.in_(WAITING) & (Job.enqueued_at < cutoff))
    if not waiting.exists():
        _suspects = {}
        return 0
    present = {message.id for message in huey.pending()} | {message.id for message in huey.scheduled()}
    missing = []
    page = list(waiting.order_by(Job.enqueued_at, Job.id).limit(REQUEUE_PAGE))
    while page:
        missing.extend(job for job in page if job.id not in present)
        last = page[-1]
        after = (Job.enqueued_at > last.enqueued_at) | ((Job.enqueued_at == last.enqueued_at) & (Job.id > last.id))
        page = (
            list(waiting.where(after).order_by(Job.enqueued_at, Job.id).limit(REQUEUE_PAGE))
            if len(page) == REQUEUE_PAGE
            else []
        )
    requeued = 0
    for job in missing:
        if seen - _suspects.get(job.id, seen) < LOST_AFTER or job.name not in FUNCTIONS:
            continue
        claim = (Job.id == job.id) & (Job.status == job.status) & (Job.recoveries == job.recoveries)
        error = "queue message lost with a consumer; enqueued again"
        if Job.update(recoveries=Job.recoveries + 1, error=error).where(claim).execute():
            _enqueue(
                FUNCTIONS[job.name],
                job.id,
                job.args_dict,
                eta=job.scheduled_for,
                priority=job.priority,
                queue=job.queue,
            )
            logger.warning("job %s (%s): %s", job.id, job.name, error)
            requeued += 1
    _suspects = {job.id: _suspects.get(job.id, seen) for job in missing}
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
    """A worker that an in-process enqueue, or a wake-up datagram, wakes at once instead of after
    its poll delay, and that hands its jobs' outcomes to the history writer without waiting (job_history)."""

    listens = False  # a worker process (-k process) of a SQLite queue: it listens for wake-up datagrams itself
    listener = None

    def initialize(self):
        if self.listens:  # in the worker's own process, where its `_wake` is
            self.listener = wakeup.listen(self.huey.storage, _wake)
            if self.listener is not None:  # its polls are now the fallback, as the watcher is for threads
                self.max_delay = max(self.max_delay, settings.QUEUE_WATCH_INTERVAL)
        super().initialize()
        runs.current.hands_off = True

    def shutdown(self):
        try:
            # Every outcome handed off is committed before the worker ends: a stop re-runs nothing.
            runs.held.flush()
            super().shutdown()
        finally:
            if self.listener is not None:
                self.listener.close()

    def sleep(self):
        if self.delay > self.max_delay:
            self.delay = self.max_delay
        if _wake.wait(self.delay):
            _wake.clear()
        self.delay *= self.backoff


WATCHED_POLL_DELAY = 1.0  # idle workers' own polls, when a queue watcher wakes them
UNHEARD_WATCH_INTERVAL = 0.025  # the watcher's pace when no wake-up datagram can reach this consumer


def watch_queue_file(path, stop_flag, interval):
    """Wake idle workers when another process writes the SQLite queue file.

    The fallback of the wake-up datagrams (wakeup.py), which wake a standalone
    consumer within a millisecond or two: one thread looks at the size and
    mtime of the queue's WAL file (an os.stat, a few µs) every `interval`
    (QUEUE_WATCH_INTERVAL) and sets `_wake` when they change. Alone, at 40 Hz,
    it gave pickups of ~12 ms for under 1% of a core (bench/latency.py, issue
    7; each timed wake-up of a thread costs ~60 µs of CPU here); as a fallback
    a few looks a second do. Workers still poll, every WATCHED_POLL_DELAY or
    `interval` if longer, so a change both missed costs only time.
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


def served_queues(queues):
    """The queue names of QUEUES (or the consumer option), checked; [] for every queue.

    `-name` leaves a queue out (`QUEUES=-media,-sync`: every known queue but
    those, as Celery's `-X`), so the web box's consumer need not list every
    app's queues. A name that no setting or loaded function knows stops the
    start with one line naming the setting, as a bad value of any setting does.
    """
    names = [q.strip() for q in queues.split(",")] if isinstance(queues, str) else list(queues or ())
    names = list(dict.fromkeys(q for q in names if q))
    excluded = [q[1:].strip() for q in names if q.startswith("-")]
    names = [q for q in names if not q.startswith("-")]
    known = jobs.known_queues()
    unknown = [q for q in names + excluded if q not in known]
    if unknown:
        sys.exit(
            f"litejobs: QUEUES: unknown queue {unknown[0]!r}; known queues: {', '.join(sorted(known))} "
            "(a new queue needs a priority in QUEUE_PRIORITIES, or a function using it)"
        )
    if excluded:
        names += sorted(known - set(excluded) - set(names))
    return names


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
    listener = None  # this process's wakeup.Listener, with thread workers
    _workers_listen = False  # process workers listen each in its own process

    # schedules.py, above this module, puts its minute-ticking Scheduler here (use_scheduler).
    scheduler_class = huey_consumer.Scheduler

    def __init__(self, huey_instance, embedded=False, queues=None, **options):
        if options.get("worker_type") == "greenlet":
            _refuse_unpatched_greenlets()
        # The queues it serves: the `queues` option (a list or "media,sync"), else QUEUES; none: every queue.
        self.queues = served_queues(settings.QUEUES if queues is None else queues)
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
        # gevent patched nothing if it was never imported (a thread consumer need not load it).
        monkey = sys.modules.get("gevent.monkey")
        if self.worker_type == "thread" and monkey is not None and monkey.is_module_patched("threading"):
            return "greenlet"
        return self.worker_type

    def start(self):
        if not self.embedded:
            _log_to_stderr()
        jobs.CONSUMER_ID = f"{settings.HOSTNAME}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # A consumer may be the first process to meet a new database.
        preflight.check_services(check_queue)
        Worker.create(
            id=jobs.CONSUMER_ID,
            host=settings.HOSTNAME,
            pid=os.getpid(),
            kind=self.kind,
            concurrency=self.workers,
            apps=",".join(APPS),
            queues=",".join(self.queues),
        )
        huey.serve(self.queues or None)
        if self.worker_type != "process":  # a worker process is one worker: nobody to take for
            huey.take_ahead.extra = self.workers - 1
        if self.queues:
            logger.info("consumer %s serves queues %s", jobs.CONSUMER_ID, ", ".join(self.queues))
        self._heartbeat()
        # Embedded in the web process, enqueues wake the workers in-process already.
        # Standalone on a SQLite queue, enqueuers in other processes send a datagram
        # (wakeup.py), and a watcher of the queue file catches what it misses. Process
        # workers have a `_wake` of their own that no thread here can set: each listens
        # for the datagrams in its own process, and polls every QUEUE_WATCH_INTERVAL.
        storage = self.huey.storage
        standalone_sqlite = isinstance(storage, SqliteStorage) and not self.embedded
        watch = standalone_sqlite and self.worker_type != "process"
        if watch:
            self.listener = wakeup.listen(storage, _wake)
            interval = settings.QUEUE_WATCH_INTERVAL if self.listener else UNHEARD_WATCH_INTERVAL
            self.max_delay = max(self.max_delay, WATCHED_POLL_DELAY, interval)
            for worker, _ in self.worker_threads:
                worker.max_delay = self.max_delay
        elif standalone_sqlite:
            self._workers_listen = True
            for worker, _ in self.worker_threads:
                worker.listens = True
        self.running_lock = backup.running_lock()  # held while it runs: restore refuses meanwhile
        hooks.consumer_starting.send(self)  # e.g. joblog keeps each job's logging and prints
        if self.worker_type == "process":
            close_all_connections()  # each forked worker opens its own
        super().start()
        if watch:
            watcher_args = (storage.filename, self.stop_flag, interval)
            threading.Thread(target=watch_queue_file, args=watcher_args, name="QueueWatcher", daemon=True).start()

    def _create_worker(self):
        worker = super()._create_worker()
        worker.listens = self._workers_listen  # also a worker started again after it died
        return worker

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
            Worker.beat(jobs.CONSUMER_ID)
            runs.database_outage.ok()
        except Exception as exc:  # a database outage must not kill the consumer's main loop
            runs.reset_connection()
            runs.database_outage.failed(exc)
            return
        try:
            if not self.queues:
                # Serving every queue: also those that only waiting jobs name (a schedule's override).
                huey.serve(None, also=Job.waiting_queues())
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
        huey.take_ahead.give_back(huey, queue_of, older_than=take_ahead.STALE)
        if time.monotonic() >= self._next_beat:
            self._heartbeat()
        return health_check_ts

    def stop(self, graceful=False):
        hooks.worker_stopping.send(jobs.CONSUMER_ID)
        # Idle workers sleep on `_wake` for up to their poll delay (seconds with a
        # slow QUEUE_WATCH_INTERVAL): raise the stop flag first, then wake them to
        # see it, process workers by a datagram to their listeners (other consumers
        # of the queue get one too: it costs them one look at the queue).
        self.stop_flag.set()
        _wake.set()
        if self._workers_listen:
            wakeup.notify(self.huey.storage)
        super().stop(graceful)
        huey.take_ahead.give_back(huey, queue_of)  # the workers are done: whatever they did not take
        huey.take_ahead.extra = 0
        if self.listener is not None:
            self.listener.close()
        Worker.update(stopped_at=utcnow()).where(Worker.id == jobs.CONSUMER_ID).execute()
        if getattr(self, "running_lock", None) is not None:
            self.running_lock.close()


def use_scheduler(scheduler_class):
    """Make every consumer tick with `scheduler_class` (schedules.Scheduler registers itself)."""
    Consumer.scheduler_class = scheduler_class
