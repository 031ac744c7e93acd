"""The benchmark driver's own handle on litejobs: point `models.db` and
`jobs.huey` at a row's database and queue, fill queues, read the history.

Importing this module imports litejobs; bench/run.py sets the environment
first so settings land in a scratch folder.
"""

import datetime
import time

import jobs
import models
from models import TERMINAL, Job


def use(database_url, queue_url):
    """Switch this process to another app database and queue storage."""
    if not models.db.is_closed():
        models.db.close()
    models.db.initialize(models.open_database(database_url))
    models.create_tables()
    jobs.use_queue(queue_url)


def submit_many(name, n, args=None):
    """Submit `n` calls through the public path (jobs.submit); returns seconds taken."""
    started = time.perf_counter()
    for _ in range(n):
        jobs.submit(name, args or {})
    return time.perf_counter() - started


def terminal_count(ids=None):
    """Terminal jobs, of all or of `ids` (asked 5,000 at a time: SQL has a cap on parameters)."""
    query = Job.select().where(Job.status.in_(TERMINAL))
    if ids is None:
        return query.count()
    ids = list(ids)
    return sum(query.where(Job.id.in_(ids[i : i + 5000])).count() for i in range(0, len(ids), 5000))


def span(ids=None):
    """(first started_at, last finished_at, how many) over terminal jobs, as datetimes."""
    from peewee import fn

    query = Job.select(fn.MIN(Job.started_at), fn.MAX(Job.finished_at), fn.COUNT(Job.id)).where(
        Job.status.in_(TERMINAL)
    )
    if ids is not None:
        query = query.where(Job.id.in_(ids))
    first, last, count = query.scalar(as_tuple=True)
    return _dt(first), _dt(last), count


def _dt(value):
    if isinstance(value, str):  # SQLite aggregates come back as text
        return datetime.datetime.fromisoformat(value)
    return value


def statuses():
    return Job.counts_by_status()


def pickup_latencies(ids):
    """Seconds from enqueued_at to started_at for each of `ids` that started."""
    rows = Job.select(Job.enqueued_at, Job.started_at).where(Job.id.in_(ids) & Job.started_at.is_null(False))
    return [(row.started_at - row.enqueued_at).total_seconds() for row in rows]


def close():
    if not models.db.is_closed():
        models.db.close()
    jobs.huey.storage.close()
