"""A job's own log: what a job logs and prints while it runs, kept with the job.

A handler on the root logger and a wrapper around `sys.stdout` route each
record and printed line by the job running in the current thread or
greenlet (jobs.current_job_id). Lines gather in memory and a flusher thread
writes them at most every FLUSH_INTERVAL seconds, plus once when the job
ends: never a database write per line. Each job keeps its last MAX_BYTES of
text; `truncated` says that older lines were cut. The JobLog row goes with
its job when the history is pruned (ON DELETE CASCADE).
"""

import logging
import os
import sys
import threading

from peewee import (
    BooleanField,
    DateTimeField,
    ForeignKeyField,
    IntegrityError,
    SqliteDatabase,
    TextField,
)

import hooks
from jobs import current_job_id, huey
from models import BaseModel, Job, db, utcnow

logger = logging.getLogger("litejobs.joblog")

MAX_BYTES = 64 * 1024
MAX_LINE = 8 * 1024  # a longer line keeps its start and is marked cut
FLUSH_INTERVAL = 0.5
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JobLog(BaseModel):
    """The kept tail of one job's log, every attempt of it, as lines joined by newlines."""

    job = ForeignKeyField(Job, primary_key=True, on_delete="CASCADE", backref="log")
    text = TextField(default="")
    truncated = BooleanField(default=False)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "job_log"

    @property
    def lines(self):
        return self.text.split("\n") if self.text else []

    @classmethod
    def of(cls, job_id):
        """{"job_id", "lines", "truncated"} for a job (empty when it logged nothing)."""
        row = cls.get_or_none(cls.job == job_id)
        return {"job_id": job_id, "lines": row.lines if row else [], "truncated": bool(row and row.truncated)}


class Buffer:
    """One job's kept lines, newest last, at most MAX_BYTES of UTF-8 in all."""

    def __init__(self, lines=(), truncated=False):
        self.lines = list(lines)
        self.size = sum(len(line.encode("utf-8")) + 1 for line in self.lines)
        self.truncated = truncated
        self.dirty = False
        self.partial = ""  # printed text not ended by a newline yet

    def add(self, line):
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + " … [line cut]"
        self.lines.append(line)
        self.size += len(line.encode("utf-8")) + 1
        while self.size > MAX_BYTES and len(self.lines) > 1:
            self.size -= len(self.lines.pop(0).encode("utf-8")) + 1
            self.truncated = True
        self.dirty = True

    def text(self):
        return "\n".join(self.lines)


_buffers = {}  # job id -> Buffer, for jobs running in this process
_lock = threading.RLock()
_flusher_pid = None


def _buffer(job_id):
    """The job's buffer; the first line of a run reads what earlier attempts kept."""
    buffer = _buffers.get(job_id)
    if buffer is None:
        try:
            row = JobLog.get_or_none(JobLog.job == job_id)
        except Exception:  # an unreadable database must not break the job's logging
            row = None
        buffer = _buffers[job_id] = Buffer(row.lines if row else (), bool(row and row.truncated))
    _start_flusher()
    return buffer


def add_lines(job_id, text):
    """Keep `text` (one or more lines) in the log of job `job_id`."""
    with _lock:
        buffer = _buffer(job_id)
        for line in text.split("\n"):
            buffer.add(line)


def add_printed(job_id, text):
    """Keep printed `text`; a line is kept once its newline arrives (or the job ends)."""
    with _lock:
        buffer = _buffer(job_id)
        *complete, buffer.partial = (buffer.partial + text).split("\n")
        for line in complete:
            buffer.add(line)


def flush(job_id=None):
    """Write the changed buffers (or only job `job_id`'s) to JobLog; returns how many were written."""
    with _lock:
        ids = [job_id] if job_id is not None else list(_buffers)
        pending = [(i, _buffers[i].text(), _buffers[i].truncated) for i in ids if i in _buffers and _buffers[i].dirty]
        for i, _, _ in pending:
            _buffers[i].dirty = False
    for i, text, truncated in pending:
        try:
            JobLog.insert(job=i, text=text, truncated=truncated, updated_at=utcnow()).on_conflict(
                conflict_target=[JobLog.job], preserve=[JobLog.text, JobLog.truncated, JobLog.updated_at]
            ).execute()
        except IntegrityError:
            pass  # the job row is gone (pruned, or never recorded): nothing to keep its log with
    if pending and not isinstance(db.obj, SqliteDatabase) and not db.in_transaction():
        db.close()  # hand the connection back to the pool
    return len(pending)


def finish(job_id):
    """The job ended: keep an unfinished printed line, write the log, forget the buffer."""
    with _lock:
        buffer = _buffers.get(job_id)
        if buffer is None:
            return
        if buffer.partial:
            buffer.add(buffer.partial)
            buffer.partial = ""
    try:
        flush(job_id)
    finally:
        with _lock:
            _buffers.pop(job_id, None)


def _flush_forever():
    while True:
        threading.Event().wait(FLUSH_INTERVAL)
        try:
            flush()
        except Exception:  # the database may be back at the next try; the lines wait in memory
            logger.warning("job logs: flush failed; will try again", exc_info=True)


def _start_flusher():
    # Per process: forked process workers have no threads of their parent.
    global _flusher_pid
    if _flusher_pid != os.getpid():
        _flusher_pid = os.getpid()
        threading.Thread(target=_flush_forever, name="JobLogFlusher", daemon=True).start()


class JobLogHandler(logging.Handler):
    """Sends each record made inside a job to that job's log."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record):
        job_id = current_job_id()
        if job_id is not None and _the_jobs_own(record):
            try:
                add_lines(job_id, self.format(record))
            except Exception:
                self.handleError(record)
        # Being a root handler hides logging's last resort (stderr for warnings
        # when nothing else handles a record): stand in for it.
        last = logging.lastResort
        if last is not None and record.levelno >= last.level and not _handled_elsewhere(record, self):
            last.handle(record)


def _the_jobs_own(record):
    """Whether a record made during a job belongs in its log.

    huey's INFO lines around every run ("executed in 0.001s") are left out:
    they would give every job a log, and so a database write, of its own.
    """
    if record.name.startswith("litejobs.joblog"):
        return False
    return not (record.name.startswith("huey") and record.levelno < logging.WARNING)


def _handled_elsewhere(record, ours):
    node = logging.getLogger(record.name)
    while node is not None:
        if any(handler is not ours for handler in node.handlers):
            return True
        if not node.propagate:
            return False
        node = node.parent
    return False


class JobStdout:
    """`sys.stdout` that also keeps what a job prints in the job's log."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        job_id = current_job_id()
        if job_id is not None and text:
            add_printed(job_id, text)
        return self.stream.write(text)

    def __getattr__(self, name):  # flush, fileno, encoding, isatty…
        return getattr(self.stream, name)


_handler = None


@hooks.consumer_starting.connect
def install(consumer=None):
    """Capture job logs and prints in this process; safe to call again."""
    global _handler
    if _handler is None:
        _handler = JobLogHandler()
        root = logging.getLogger()
        root.addHandler(_handler)
        if root.level > logging.INFO and len(root.handlers) == 1:
            # Nobody configured logging (a bare huey_consumer): a job's INFO lines
            # would be dropped before any handler saw them. Our handler passes on
            # only what the last resort would have shown.
            root.setLevel(logging.INFO)
    if not isinstance(sys.stdout, JobStdout):  # again, should someone have swapped sys.stdout since
        sys.stdout = JobStdout(sys.stdout)


def _write_job_log(message, value, exc):
    finish(message.id)


# First of the post-execute hooks, before the one recording the outcome: whoever
# sees the job finished (the job page stops refreshing then) finds its whole log.
huey._post_execute = {"_write_job_log": _write_job_log, **huey._post_execute}
