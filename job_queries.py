"""litejobs job history queries: the read-only look-ups of jobs that the API, dashboard and metrics share.

JobQueries is a mixin of models.Job: pages of the history, counts by status
and per time bucket, recent failures, calls of a function, queue depths and
the jobs running on given consumers.
"""

import datetime
import json

from peewee import SQL, Case, SqliteDatabase, fn

from database import TERMINAL, WAITING, db, keyset_page


class JobQueries:
    """Read-only class methods of Job (models.py) over the job history."""

    @classmethod
    def page(cls, name=None, status=None, limit=50, cursor=None):
        """Newest first; returns (jobs, cursor of the next page or None)."""
        query = cls.select()
        if name:
            query = query.where(cls.name == name)
        if status:
            query = query.where(cls.status == status)
        else:  # a job not yet confirmed as enqueued (or whose enqueue failed) is not listed
            query = query.where(cls.status != "pending")
        return keyset_page(query, cls.enqueued_at, limit, cursor)

    @classmethod
    def counts_by_status(cls, finished_since=None):
        """{status: jobs}; with `finished_since`, finished jobs count only from then on.

        That form reads two index ranges — the unfinished jobs and the recently
        finished ones — instead of the whole history.
        """
        if finished_since is None:
            query = cls.select(cls.status, fn.COUNT(cls.id).alias("n")).group_by(cls.status)
        else:
            unfinished = cls.select(cls.status, fn.COUNT(cls.id).alias("n")).where(cls.status.in_(WAITING + ("running",)))
            finished = cls.select(cls.status, fn.COUNT(cls.id).alias("n")).where(
                cls.status.in_(TERMINAL) & (cls.finished_at >= finished_since)
            )
            query = unfinished.group_by(cls.status) | finished.group_by(cls.status)
        return {row.status: row.n for row in query}

    @classmethod
    def finished_per_bucket(cls, since, seconds):
        """{bucket number since `since`: (finished, failed)} for jobs finished after `since`."""
        start = int(since.replace(tzinfo=datetime.timezone.utc).timestamp())
        if isinstance(db.obj, SqliteDatabase):
            # Stored as text: strftime gives epoch seconds; integer division floors them.
            bucket = (fn.strftime("%s", cls.finished_at).cast("INTEGER") - start) / int(seconds)
        else:
            bucket = fn.FLOOR((fn.date_part("epoch", cls.finished_at) - start) / seconds)
        bucket = bucket.alias("bucket")
        failed = fn.SUM(Case(None, [(cls.status == "failed", 1)], 0)).alias("failed")
        query = (
            cls.select(bucket, fn.COUNT(cls.id).alias("n"), failed)
            .where(cls.status.in_(TERMINAL) & (cls.finished_at >= since))  # on the (status, finished_at) index
            .group_by(SQL("bucket"))
        )
        return {int(row.bucket): (row.n, int(row.failed or 0)) for row in query.namedtuples()}

    @classmethod
    def recent_failures(cls, limit=10):
        return cls.select().where(cls.status == "failed").order_by(cls.finished_at.desc()).limit(limit)

    @classmethod
    def calls(cls, names, args, limit=100):
        """Jobs of functions `names` called with exactly `args` (as submit stored them), oldest first."""
        return (
            cls.select()
            .where(cls.name.in_(names) & (cls.args == json.dumps(args)))
            .order_by(cls.enqueued_at, cls.id)
            .limit(limit)
        )

    @classmethod
    def queue_stats(cls):
        """{queue: {"depth", "running", "oldest"}} over the jobs not finished yet."""
        query = (
            cls.select(cls.queue, cls.status, fn.COUNT(cls.id).alias("n"), fn.MIN(cls.enqueued_at).alias("oldest"))
            .where(cls.status.in_(("queued", "retrying", "running")))
            .group_by(cls.queue, cls.status)
        )
        stats = {}
        for row in query.namedtuples():
            queue = stats.setdefault(row.queue, {"depth": 0, "running": 0, "oldest": None})
            if row.status == "running":
                queue["running"] += row.n
            else:
                queue["depth"] += row.n
                oldest = row.oldest
                if isinstance(oldest, str):  # SQLite hands aggregates back as text
                    oldest = datetime.datetime.fromisoformat(oldest)
                if queue["oldest"] is None or oldest < queue["oldest"]:
                    queue["oldest"] = oldest
        return stats

    @classmethod
    def waiting_queues(cls):
        """The queues that waiting jobs name."""
        return {row.queue for row in cls.select(cls.queue).where(cls.status.in_(WAITING)).distinct()}

    @classmethod
    def running_on(cls, consumer_ids):
        return cls.select().where((cls.status == "running") & cls.consumer_id.in_(consumer_ids))
