"""litejobs models: the Peewee tables shared by the web process and consumers.

SQLite (WAL) by default, PostgreSQL by `DATABASE_URL`. Queries live here as
model methods; web.py and jobs.py combine them and write no SQL.
"""

import base64
import datetime
import hashlib
import hmac
import json
import logging
import math
import re
import secrets
import threading
import time
from pathlib import Path

from peewee import (
    SQL,
    BooleanField,
    Case,
    CompositeKey,
    CharField,
    DatabaseProxy,
    DateField,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    IntegrityError,
    Model,
    SqliteDatabase,
    TextField,
    Tuple,
    chunked,
    fn,
)
from playhouse.db_url import connect as connect_url
from playhouse.pool import PooledSqliteDatabase
from playhouse.migrate import SchemaMigrator, migrate

import settings

logger = logging.getLogger("litejobs.models")

db = DatabaseProxy()

TERMINAL = ("succeeded", "failed", "canceled", "expired")
WAITING = ("scheduled", "queued", "retrying")
STATUSES = WAITING + ("running",) + TERMINAL


def utcnow():
    """The current time in UTC, naive, as every time is stored."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def isoformat(value):
    """`2026-11-22T09:00:00.123Z` for a stored UTC time, None for None."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text):
    """Read an ISO 8601 time; one without an offset is UTC. Raises ValueError."""
    value = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value


# SQLite copies the WAL back into the database file (a checkpoint, with two fsyncs)
# once the WAL holds this many pages. SQLite's 1,000 did it every ~50 jobs here, each
# time rewriting the same hot index pages; at 10,000 (a WAL of up to 40 MB) a job
# costs ~15% less CPU over HTTP (bench/, issue 7).
WAL_CHECKPOINT_PAGES = 10_000


def open_database(url):
    """A Peewee database for `url`; SQLite gets WAL, a busy timeout and IMMEDIATE writes."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        settings.ensure_dir(path.parent, "DATABASE_URL")
        # IMMEDIATE: a write transaction takes the lock up front, so it waits on
        # the busy timeout instead of failing later with SQLITE_BUSY_SNAPSHOT.
        # Pooled: the web process opens a connection per request, and opening a
        # WAL database costs ~0.9 ms here, a quarter of a whole enqueue over HTTP
        # (bench/, issue 7). close() hands the connection back to the pool; each
        # thread or greenlet still has its own while it holds one.
        database = PooledSqliteDatabase(
            str(path),
            pragmas={"journal_mode": "wal", "foreign_keys": 1, "cache_size": -16000, "synchronous": "normal", "wal_autocheckpoint": WAL_CHECKPOINT_PAGES},
            max_connections=None,
            stale_timeout=300,
            lock_type="IMMEDIATE",
            check_same_thread=False,  # a pooled connection moves between threads, one at a time
        )
        database.timeout = 10  # the busy timeout (the pool's own `timeout` is its wait for a free connection)
        return database
    return connect_url(url)


class BaseModel(Model):
    class Meta:
        database = db


class SchemaVersion(BaseModel):
    """The number of the last migration applied."""

    version = IntegerField()


class ApiKey(BaseModel):
    """An API key; only its SHA-256 is stored, the key itself is shown once."""

    name = CharField()
    prefix = CharField()
    key_hash = CharField(unique=True)
    created_at = DateTimeField(default=utcnow)
    last_used_at = DateTimeField(null=True)
    calls_today = IntegerField(default=0)
    revoked = BooleanField(default=False)

    @staticmethod
    def hash(key):
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    @classmethod
    def create_key(cls, name):
        """Create a key; returns (row, the plain key)."""
        key = "lj_" + secrets.token_urlsafe(32)
        row = cls.create(name=name, prefix=key[:8], key_hash=cls.hash(key))
        return row, key

    @classmethod
    def authenticate(cls, key):
        """The live key row matching `key`, or None."""
        if not key:
            return None
        digest = cls.hash(key)
        # Every API call runs this and touch(): raw SQL, because peewee takes
        # longer to build these one-row statements than SQLite takes to run them.
        sql = 'SELECT * FROM "apikey" WHERE ("key_hash" = {p}) AND ("revoked" = {p})'.format(p=db.param)
        rows = list(cls.raw(sql, digest, False))  # read to the end: no statement left open
        row = rows[0] if rows else None
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return row

    # Adds calls counted elsewhere (CallCounter) and moves last_used_at forward, never back:
    # several web processes add their own counts, in any order.
    _ADD_CALLS_SQL = (
        'UPDATE "apikey" SET "calls_today" = ("calls_today" + {p}), "last_used_at" = CASE '
        'WHEN "last_used_at" IS NULL OR "last_used_at" < {p} THEN {p} ELSE "last_used_at" END WHERE ("id" = {p})'
    )

    @classmethod
    def reset_daily_calls(cls):
        """Start every key's daily call counter again at 0; returns how many keys had calls."""
        return cls.update(calls_today=0).where(cls.calls_today != 0).execute()


class CallCounter:
    """API key calls counted in this process's memory and added to the keys' rows by flush().

    Writing each call as it came was one write transaction per API request,
    a fifth of an HTTP enqueue (bench/, issue 7). A thread started by the first
    count flushes every FLUSH_INTERVAL seconds, one UPDATE per key, so the
    counts in the database lag by about a second; each flush *adds* its counts,
    so several processes (and reset_daily_calls in between) stay right.
    """

    FLUSH_INTERVAL = 1.0

    def __init__(self):
        self._pending = {}  # (database, key id) -> [calls, last used]
        self._lock = threading.Lock()
        self._flusher = None

    def count(self, key_id, now=None):
        """Count one call of key `key_id`."""
        now = now or utcnow()
        with self._lock:
            pending = self._pending.setdefault((db.obj, key_id), [0, now])
            pending[0] += 1
            pending[1] = max(pending[1], now)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_forever, name="ApiKeyCalls", daemon=True)
                self._flusher.start()

    def flush(self):
        """Add the calls counted so far to their keys' rows; returns how many keys were written.

        Counts that could not be written are kept for the next flush.
        """
        with self._lock:
            pending, self._pending = self._pending, {}
        by_database = {}
        for (database, key_id), item in pending.items():
            by_database.setdefault(database, []).append((key_id, *item))
        written, error = 0, None
        for database, rows in by_database.items():
            try:
                with database.connection_context(), database.atomic():
                    sql = ApiKey._ADD_CALLS_SQL.format(p=database.param)
                    for key_id, calls, last in rows:
                        database.execute_sql(sql, (calls, last, last, key_id))
                written += len(rows)
            except Exception as exc:  # any driver error: keep these counts, write the other databases' ones
                error = exc
                with self._lock:
                    for key_id, calls, last in rows:
                        item = self._pending.setdefault((database, key_id), [0, last])
                        item[0] += calls
                        item[1] = max(item[1], last)
        if error is not None:
            raise error
        return written

    def _flush_forever(self):
        while True:
            time.sleep(self.FLUSH_INTERVAL)
            try:
                self.flush()
            except Exception:  # the database may be back at the next try; the counts wait for it
                logger.exception("API key call counts: flush failed; will try again")


class User(BaseModel):
    """A person: a platform user, and a dashboard user when it has a password."""

    email = CharField(unique=True)
    name = CharField(default="")
    password_hash = CharField(null=True)
    is_admin = BooleanField(default=False)
    active = BooleanField(default=True)
    created_at = DateTimeField(default=utcnow, index=True)
    last_active_at = DateTimeField(null=True)

    # scrypt with n=2**14, r=8, p=1: about 50 ms and 16 MiB a check.
    SCRYPT = {"n": 2**14, "r": 8, "p": 1}

    @classmethod
    def hash_password(cls, password):
        salt = secrets.token_bytes(16)
        digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **cls.SCRYPT)
        return f"scrypt${salt.hex()}${digest.hex()}"

    def check_password(self, password):
        if not self.password_hash:
            return False
        _, salt, digest = self.password_hash.split("$")
        given = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt), dklen=32, **self.SCRYPT)
        return hmac.compare_digest(given.hex(), digest)

    def to_dict(self):
        return {
            "id": str(self.id),
            "email": self.email,
            "name": self.name,
            "active": self.active,
            "created_at": isoformat(self.created_at),
        }


class Token(BaseModel):
    """A secret handed to a user (dashboard session, password reset, email
    confirmation…); only its SHA-256 is stored."""

    user = ForeignKeyField(User, backref="tokens", on_delete="CASCADE")
    kind = CharField(index=True)
    token_hash = CharField(unique=True)
    created_at = DateTimeField(default=utcnow)
    expires_at = DateTimeField(index=True)
    last_used_at = DateTimeField(null=True)

    @classmethod
    def issue(cls, user, kind, lifetime):
        """Create a token valid for `lifetime` (a timedelta); returns (row, the plain token)."""
        plain = secrets.token_urlsafe(32)
        row = cls.create(user=user, kind=kind, token_hash=ApiKey.hash(plain), expires_at=utcnow() + lifetime)
        return row, plain

    @classmethod
    def find(cls, plain, kind, now=None):
        """The live token of `kind` matching `plain`, or None."""
        if not plain:
            return None
        return cls.get_or_none(
            (cls.token_hash == ApiKey.hash(plain)) & (cls.kind == kind) & (cls.expires_at > (now or utcnow()))
        )

    @classmethod
    def expired(cls, now=None):
        return cls.select().where(cls.expires_at <= (now or utcnow()))

    @classmethod
    def delete_expired(cls, now=None, batch=1000):
        """Delete expired tokens, a batch per transaction; returns {kind: how many}."""
        deleted = {}
        while True:
            with db.atomic():
                rows = list(cls.expired(now).select(cls.id, cls.kind).limit(batch).tuples())
                if rows:
                    cls.delete().where(cls.id.in_([token_id for token_id, _ in rows])).execute()
            for _, kind in rows:
                deleted[kind] = deleted.get(kind, 0) + 1
            if len(rows) < batch:
                return deleted


class Worker(BaseModel):
    """A consumer process, alive while its heartbeat is fresh."""

    id = CharField(primary_key=True)
    host = CharField()
    pid = IntegerField()
    kind = CharField()
    concurrency = IntegerField()
    started_at = DateTimeField(default=utcnow)
    last_heartbeat = DateTimeField(default=utcnow, index=True)
    stopped_at = DateTimeField(null=True)

    @classmethod
    def alive(cls, now=None):
        cutoff = (now or utcnow()) - datetime.timedelta(seconds=settings.HEARTBEAT_TIMEOUT)
        return cls.select().where((cls.last_heartbeat >= cutoff) & cls.stopped_at.is_null())

    @classmethod
    def beat(cls, worker_id):
        cls.update(last_heartbeat=utcnow()).where(cls.id == worker_id).execute()

    def is_alive(self, now=None):
        cutoff = (now or utcnow()) - datetime.timedelta(seconds=settings.HEARTBEAT_TIMEOUT)
        return self.stopped_at is None and self.last_heartbeat >= cutoff

    def to_dict(self, running=()):
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "kind": self.kind,
            "concurrency": self.concurrency,
            "started_at": isoformat(self.started_at),
            "last_heartbeat": isoformat(self.last_heartbeat),
            "alive": self.is_alive(),
            "running": list(running),
        }


class Job(BaseModel):
    """One call of a job function, from enqueue to its terminal state."""

    id = CharField(primary_key=True)
    name = CharField()
    args = TextField(default="{}")
    status = CharField(default="queued")
    result = TextField(null=True)
    error = TextField(null=True)
    traceback = TextField(null=True)
    attempts = IntegerField(default=0)
    progress_done = IntegerField(null=True)
    progress_total = IntegerField(null=True)
    progress_message = TextField(null=True)
    enqueued_at = DateTimeField(default=utcnow)
    started_at = DateTimeField(null=True)
    finished_at = DateTimeField(null=True)
    duration_ms = FloatField(null=True)
    worker = CharField(null=True)
    consumer_id = CharField(null=True, index=True)
    queue = CharField(default="default")
    priority = IntegerField(default=0)
    scheduled_for = DateTimeField(null=True)
    parent_id = CharField(null=True)
    cancel_requested = BooleanField(default=False)
    recoveries = IntegerField(default=0)
    waiting_for = CharField(null=True)
    api_key_id = IntegerField(null=True)
    idempotency_key = CharField(null=True)

    class Meta:
        indexes = (
            (("enqueued_at", "id"), False),
            (("name", "status", "enqueued_at"), False),
            (("status", "enqueued_at"), False),
            (("api_key_id", "name", "idempotency_key"), True),
        )

    # -- reading ---------------------------------------------------------
    @property
    def args_dict(self):
        return json.loads(self.args)

    @property
    def is_terminal(self):
        return self.status in TERMINAL

    def to_dict(self):
        progress = None
        if self.progress_total is not None or self.progress_done is not None:
            progress = {"done": self.progress_done, "total": self.progress_total, "message": self.progress_message}
        return {
            "id": self.id,
            "name": self.name,
            "args": self.args_dict,
            "status": self.status,
            "result": None if self.result is None else json.loads(self.result),
            "error": self.error,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "progress": progress,
            "enqueued_at": isoformat(self.enqueued_at),
            "started_at": isoformat(self.started_at),
            "finished_at": isoformat(self.finished_at),
            "duration_ms": self.duration_ms,
            "worker": self.worker,
            "queue": self.queue,
            "priority": self.priority,
            "scheduled_for": isoformat(self.scheduled_for),
            "parent_id": self.parent_id,
            "cancel_requested": self.cancel_requested,
            "waiting_for": self.waiting_for,
            "url": f"/api/v1/jobs/{self.id}",
        }

    @staticmethod
    def encode_cursor(job):
        raw = f"{job.enqueued_at.isoformat()}|{job.id}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @staticmethod
    def decode_cursor(cursor):
        """(enqueued_at, id) from a cursor; ValueError when it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            stamp, job_id = raw.split("|", 1)
            return datetime.datetime.fromisoformat(stamp), job_id
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError("not a cursor returned by this API") from exc

    @classmethod
    def page(cls, name=None, status=None, limit=50, cursor=None):
        """Newest first; returns (jobs, cursor of the next page or None)."""
        query = cls.select()
        if name:
            query = query.where(cls.name == name)
        if status:
            query = query.where(cls.status == status)
        if cursor:
            stamp, job_id = cls.decode_cursor(cursor)
            query = query.where(Tuple(cls.enqueued_at, cls.id) < Tuple(stamp, job_id))
        rows = list(query.order_by(cls.enqueued_at.desc(), cls.id.desc()).limit(limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (cls.encode_cursor(rows[-1]) if more else None)

    @classmethod
    def by_idempotency_key(cls, api_key_id, name, key):
        return cls.get_or_none(
            (cls.api_key_id == api_key_id) & (cls.name == name) & (cls.idempotency_key == key)
        )

    @classmethod
    def counts_by_status(cls):
        query = cls.select(cls.status, fn.COUNT(cls.id).alias("n")).group_by(cls.status)
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
            .where(cls.finished_at >= since)
            .group_by(SQL("bucket"))
        )
        return {int(row.bucket): (row.n, int(row.failed or 0)) for row in query.namedtuples()}

    @classmethod
    def recent_failures(cls, limit=10):
        return cls.select().where(cls.status == "failed").order_by(cls.finished_at.desc()).limit(limit)

    def children(self):
        """Jobs started as retries of this one."""
        return Job.select().where(Job.parent_id == self.id).order_by(Job.enqueued_at)

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
    def running_on(cls, consumer_ids):
        return cls.select().where((cls.status == "running") & cls.consumer_id.in_(consumer_ids))

    # -- state changes (each one short statement, safe to repeat) -----------
    # Every job runs these two statements once, so they are written out here:
    # peewee takes 4-8x longer to build such an UPDATE than SQLite takes to run
    # it (profiled in bench/, issue 7), which capped the drain at a third of
    # plain huey's. `{p}` is the driver's placeholder (? or %s).
    _MARK_RUNNING_SQL = (
        'UPDATE "job" SET "status" = {p}, "started_at" = {p}, "worker" = {p}, "consumer_id" = {p}, '
        '"attempts" = ("attempts" + 1), "waiting_for" = NULL '
        'WHERE ("id" = {p}) AND ("status" NOT IN ({p}, {p}, {p}, {p}))'
    )
    _MARK_FINISHED_SQL = (
        'UPDATE "job" SET "status" = {p}, "result" = {p}, "error" = {p}, "traceback" = {p}, '
        '"finished_at" = {p}, "duration_ms" = {p} '
        'WHERE ("id" = {p}) AND ("status" NOT IN ({p}, {p}, {p}, {p}))'
    )

    @classmethod
    def record(cls, **values):
        """Insert a new job row (Job.create, faster) and return it.

        Every enqueue runs this: a 28-column INSERT takes peewee ~0.5 ms to
        build, half the cost of an HTTP enqueue (bench/, issue 7). The SQL is
        made from the model's own fields, so new columns and their defaults
        (filled in by the model as ever) come along without an edit here.
        """
        job = cls(**values)
        fields = cls._meta.sorted_fields
        sql = 'INSERT INTO "{}" ({}) VALUES ({})'.format(
            cls._meta.table_name,
            ", ".join(f'"{field.column_name}"' for field in fields),
            ", ".join([db.param] * len(fields)),
        )
        db.execute_sql(sql, [field.db_value(job.__data__.get(field.name)) for field in fields])
        return job

    @classmethod
    def _run(cls, sql, params):
        """Run one of the statements above; returns the number of rows changed."""
        return db.execute_sql(sql.format(p=db.param), params).rowcount

    @classmethod
    def mark_running(cls, job_id, worker, consumer_id, now=None, limits=()):
        """Mark a waiting job running (attempts + 1); `now` is its started_at.

        `limits` are ("queue:<name>" or "function:<name>", N) pairs: the job
        starts only while fewer than N other jobs of that queue or function
        run. A running row is the place it holds, so whatever ends the run
        (finish, retry, the reaper) frees it, with no write of its own.
        """
        sql, params = cls._MARK_RUNNING_SQL, ["running", now or utcnow(), worker, consumer_id, job_id, *TERMINAL]
        for key, limit in limits:
            kind, _, value = key.partition(":")
            column = "queue" if kind == "queue" else "name"
            sql += f' AND ((SELECT COUNT(*) FROM "job" WHERE "status" = {{p}} AND "{column}" = {{p}} AND "id" <> {{p}}) < {{p}})'
            params += ["running", value, job_id, limit]
        if not limits or isinstance(db.obj, SqliteDatabase):
            # SQLite's UPDATE takes the write lock before it reads: the counts are current.
            return cls._run(sql, params)
        with db.atomic():
            # PostgreSQL counts from a snapshot, so two consumers could both see
            # a free place; a lock per limit, held to commit, puts starts in line.
            for key, _ in sorted(limits):
                db.execute_sql(f"SELECT pg_advisory_xact_lock(hashtext({db.param}))", (f"litejobs:{key}",))
            return cls._run(sql, params)

    @classmethod
    def mark_finished(cls, job_id, status, result=None, error=None, traceback=None, started_at=None):
        """Put a job in terminal `status`. A worker passes the `started_at` it
        wrote, which saves reading the row back to compute the duration."""
        now = utcnow()
        if started_at is None:
            started_at = cls.select(cls.started_at).where(cls.id == job_id).scalar()
            if isinstance(started_at, str):  # a bare column comes back as SQLite text
                started_at = datetime.datetime.fromisoformat(started_at)
        duration = None if started_at is None else round((now - started_at).total_seconds() * 1000, 3)
        result = None if result is None else json.dumps(result, default=str)
        params = (status, result, error, traceback, now, duration, job_id, *TERMINAL)
        return cls._run(cls._MARK_FINISHED_SQL, params)

    @classmethod
    def mark_retrying(cls, job_id, error, traceback, eta=None):
        return (
            cls.update(status="retrying", error=error, traceback=traceback, scheduled_for=eta)
            .where((cls.id == job_id) & cls.status.not_in(TERMINAL))
            .execute()
        )

    @classmethod
    def set_progress(cls, job_id, done, total, message):
        cls.update(progress_done=done, progress_total=total, progress_message=message).where(
            cls.id == job_id
        ).execute()

    @classmethod
    def request_cancel(cls, job_id):
        cls.update(cancel_requested=True).where(cls.id == job_id).execute()

    @classmethod
    def prune_finished(cls, before, batch=500):
        """Delete up to `batch` terminal jobs that finished before `before`; returns how many.

        One short transaction per call, so writers wait at most one batch.
        Every job is enqueued before it finishes: the enqueued_at bound lets the
        (status, enqueued_at) index find them.
        """
        with db.atomic():
            ids = [
                row.id
                for row in cls.select(cls.id)
                .where(cls.status.in_(TERMINAL) & (cls.enqueued_at < before) & (cls.finished_at < before))
                .limit(batch)
            ]
            if ids:
                cls.delete().where(cls.id.in_(ids)).execute()
        return len(ids)

    @classmethod
    def count_status(cls, status):
        """Jobs in one status, counted on the (status, enqueued_at) index."""
        return cls.select().where(cls.status == status).count()


# -- Job counters for /metrics ---------------------------------------------------
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class JobCount(BaseModel):
    """Jobs per function and event: enqueued, succeeded, failed, canceled,
    expired, retried (one per retry) and recovered (run again after its worker
    was lost).

    Triggers on the job table keep it (install_job_triggers), so the counts are
    right whichever process changed a job, /metrics never counts a table of a
    million rows, and pruning old jobs leaves the counts alone.
    """

    function = CharField()
    status = CharField()
    count = IntegerField(default=0)

    class Meta:
        table_name = "job_count"
        primary_key = CompositeKey("function", "status")


class JobDuration(BaseModel):
    """Run times of finished jobs per function as histogram buckets: `le` is
    the bucket's upper bound in seconds ("+Inf" last); counts are per bucket,
    not cumulative; `total` is the sum of the bucket's durations in seconds."""

    function = CharField()
    le = CharField()
    count = IntegerField(default=0)
    total = FloatField(default=0.0)

    class Meta:
        table_name = "job_duration"
        primary_key = CompositeKey("function", "le")

    @classmethod
    def histograms(cls):
        """{function: ([(le, cumulative count)] ending with "+Inf", sum of seconds)}."""
        rows = {}
        for row in cls.select():
            rows.setdefault(row.function, {})[row.le] = row
        histograms = {}
        for function, buckets in sorted(rows.items()):
            running, total, cumulative = 0, 0.0, []
            for le in [repr(b) for b in DURATION_BUCKETS] + ["+Inf"]:
                if le in buckets:
                    running += buckets[le].count
                    total += buckets[le].total
                cumulative.append((le, running))
            histograms[function] = (cumulative, total)
        return histograms


def _job_trigger_statements(postgres):
    """The SQL that counts job events into job_count and job_duration."""
    terminal = ", ".join(f"'{status}'" for status in TERMINAL)
    bucket = " ".join(f"WHEN NEW.duration_ms <= {le * 1000!r} THEN '{le!r}'" for le in DURATION_BUCKETS)

    def count(event):
        return (
            f'INSERT INTO "job_count" ("function", "status", "count") VALUES (NEW."name", {event}, 1) '
            'ON CONFLICT ("function", "status") DO UPDATE SET "count" = "job_count"."count" + 1;'
        )

    duration = (
        'INSERT INTO "job_duration" ("function", "le", "count", "total") '
        f"SELECT NEW.\"name\", CASE {bucket} ELSE '+Inf' END, 1, NEW.\"duration_ms\" / 1000.0 "
        'WHERE NEW."duration_ms" IS NOT NULL '
        'ON CONFLICT ("function", "le") DO UPDATE SET "count" = "job_duration"."count" + 1, '
        '"total" = "job_duration"."total" + EXCLUDED."total";'
    )
    finished = f"NEW.status IN ({terminal}) AND OLD.status NOT IN ({terminal})"
    retried = "NEW.status = 'retrying' AND OLD.status <> 'retrying'"
    recovered = "NEW.recoveries > OLD.recoveries"
    if not postgres:
        # Named with a version: changing the SQL means new names (and dropping the old ones).
        return [
            f"CREATE TRIGGER IF NOT EXISTS job_counted_v1_insert AFTER INSERT ON job BEGIN {count(repr('enqueued'))} END",
            f"CREATE TRIGGER IF NOT EXISTS job_counted_v1_finish AFTER UPDATE OF status ON job WHEN {finished} "
            f"BEGIN {count('NEW.status')} {duration} END",
            f"CREATE TRIGGER IF NOT EXISTS job_counted_v1_retry AFTER UPDATE OF status ON job WHEN {retried} "
            f"BEGIN {count(repr('retried'))} END",
            f"CREATE TRIGGER IF NOT EXISTS job_counted_v1_recover AFTER UPDATE OF recoveries ON job WHEN {recovered} "
            f"BEGIN {count(repr('recovered'))} END",
        ]
    body = (
        f"IF TG_OP = 'INSERT' THEN {count(repr('enqueued'))} RETURN NULL; END IF; "
        f"IF {finished} THEN {count('NEW.status')} {duration} "
        f"ELSIF {retried} THEN {count(repr('retried'))} END IF; "
        f"IF {recovered} THEN {count(repr('recovered'))} END IF; "
        "RETURN NULL;"
    )
    return [
        # Serialises processes that start at once, so only one of them creates the trigger.
        "SELECT pg_advisory_xact_lock(4242001)",
        f"CREATE OR REPLACE FUNCTION litejobs_count_job_v1() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} END $$",
        "CREATE OR REPLACE TRIGGER job_counted_v1 AFTER INSERT OR UPDATE OF status, recoveries ON job "
        "FOR EACH ROW EXECUTE FUNCTION litejobs_count_job_v1()",
    ]


def install_job_triggers():
    """Create the triggers that keep JobCount and JobDuration; safe at every start."""
    postgres = not isinstance(db.obj, SqliteDatabase)
    with db.atomic():
        for statement in _job_trigger_statements(postgres):
            db.execute_sql(statement)


# -- Webhooks ------------------------------------------------------------------
class Webhook(BaseModel):
    """A URL that gets a signed POST for each event it subscribed to; deleting it only deactivates it."""

    url = TextField()
    events = TextField()  # a JSON list of event names
    secret = CharField()
    created_at = DateTimeField(default=utcnow)
    active = BooleanField(default=True)

    @classmethod
    def subscribe(cls, url, events):
        """A new webhook with a fresh signing secret."""
        return cls.create(url=url, events=json.dumps(events), secret="whsec_" + secrets.token_urlsafe(32))

    @classmethod
    def live(cls):
        return cls.select().where(cls.active == True).order_by(cls.id)  # noqa: E712

    @classmethod
    def find_live(cls, webhook_id):
        """The active webhook with id `webhook_id` (a string from a URL), or None."""
        if not str(webhook_id).isdigit():
            return None
        return cls.get_or_none((cls.id == int(webhook_id)) & (cls.active == True))  # noqa: E712

    @property
    def event_names(self):
        return json.loads(self.events)

    def deactivate(self):
        Webhook.update(active=False).where(Webhook.id == self.id).execute()

    def to_dict(self, secret=False):
        body = {"id": str(self.id), "url": self.url, "events": self.event_names, "created_at": isoformat(self.created_at)}
        if secret:
            body["secret"] = self.secret
        return body


class WebhookDelivery(BaseModel):
    """One event sent to one webhook: the body, the same on every attempt, and how the attempts went."""

    webhook = ForeignKeyField(Webhook, backref="deliveries", on_delete="CASCADE")
    event_id = CharField()  # the body's "id": receivers drop repeats by it
    event = CharField()
    payload = TextField()
    status = CharField(default="pending")  # pending, succeeded or failed
    response_code = IntegerField(null=True)
    attempts = IntegerField(default=0)
    duration_ms = FloatField(null=True)
    created_at = DateTimeField(default=utcnow)
    last_attempt_at = DateTimeField(null=True)
    next_attempt_at = DateTimeField(null=True)
    last_error = TextField(null=True)
    job_id = CharField(null=True)

    class Meta:
        # One delivery of an event per webhook, however often the event is emitted.
        indexes = ((("webhook", "event_id"), True),)

    @classmethod
    def create_for(cls, webhook_ids, event_id, event, payload):
        """A pending delivery to each live webhook of `webhook_ids` that has none for `event_id` yet."""
        created = []
        for webhook in Webhook.live().where(Webhook.id.in_(webhook_ids)):
            try:
                with db.atomic():  # a savepoint, so a repeat leaves an outer transaction usable
                    created.append(cls.create(webhook=webhook, event_id=event_id, event=event, payload=payload))
            except IntegrityError:
                continue
        return created

    @classmethod
    def page(cls, webhook_id, status=None, limit=50, cursor=None):
        """Newest first; returns (deliveries, cursor of the next page or None)."""
        query = cls.select().where(cls.webhook == webhook_id)
        if status:
            query = query.where(cls.status == status)
        if cursor:
            if not cursor.isdigit():
                raise ValueError("not a cursor returned by this API")
            query = query.where(cls.id < int(cursor))
        rows = list(query.order_by(cls.id.desc()).limit(limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (str(rows[-1].id) if more else None)

    def record_attempt(self, status, response_code, duration_ms, error, next_attempt_at=None):
        """Count one attempt made from this row's state; False when another run recorded first."""
        return bool(
            WebhookDelivery.update(
                status=status,
                response_code=response_code,
                duration_ms=duration_ms,
                last_error=error,
                attempts=WebhookDelivery.attempts + 1,
                last_attempt_at=utcnow(),
                next_attempt_at=next_attempt_at,
            )
            .where(
                (WebhookDelivery.id == self.id)
                & (WebhookDelivery.status == "pending")
                & (WebhookDelivery.attempts == self.attempts)
            )
            .execute()
        )

    @classmethod
    def give_up(cls, delivery_id, error):
        cls.update(status="failed", last_error=error, next_attempt_at=None).where(
            (cls.id == delivery_id) & (cls.status == "pending")
        ).execute()

    def to_dict(self):
        return {
            "id": str(self.id),
            "event_id": self.event_id,
            "event": self.event,
            "status": self.status,
            "response_code": self.response_code,
            "attempts": self.attempts,
            "duration_ms": self.duration_ms,
            "created_at": isoformat(self.created_at),
            "last_attempt_at": isoformat(self.last_attempt_at),
            "next_attempt_at": isoformat(self.next_attempt_at),
            "error": self.last_error,
            "job_id": self.job_id,
        }


def usage_counts(start, end):
    """What the `usage.hourly` event reports for [start, end).

    Per function: jobs enqueued in the window, and jobs that reached each
    terminal status in it (the counters of /metrics). Orders placed in the
    window, by the status they have now. Users created in the window.
    """
    jobs = {}
    window = (Job.enqueued_at >= start) & (Job.enqueued_at < end)
    for row in Job.select(Job.name, fn.COUNT(Job.id).alias("n")).where(window).group_by(Job.name).namedtuples():
        jobs.setdefault(row.name, {})["enqueued"] = row.n
    finished = (Job.finished_at >= start) & (Job.finished_at < end)
    query = Job.select(Job.name, Job.status, fn.COUNT(Job.id).alias("n")).where(finished).group_by(Job.name, Job.status)
    for row in query.namedtuples():
        jobs.setdefault(row.name, {})[row.status] = row.n
    placed = (Order.created_at >= start) & (Order.created_at < end)
    query = Order.select(Order.status, fn.COUNT(Order.id).alias("n")).where(placed).group_by(Order.status)
    orders = dict.fromkeys(("created",) + ORDER_STATUSES, 0)
    for row in query.namedtuples():
        orders[row.status] = row.n
        orders["created"] += row.n
    new_users = User.select().where((User.created_at >= start) & (User.created_at < end)).count()
    return {"jobs": dict(sorted(jobs.items())), "orders": orders, "new_users": new_users}


# -- Orders -----------------------------------------------------------------------
ORDER_STATUSES = ("new", "sent", "processing", "completed", "failed")
ORDER_PENDING = ("new", "sent", "processing")
# Job statuses of a job that will still act on the order it was queued for.
_LIVE_JOB = WAITING + ("running",)


def _order_id():
    return secrets.token_hex(16)


class Order(BaseModel):
    """A customer's order of a product package: dispatched to the provider, then
    polled until it completes with a PIN or fails.

    `next_check_at` is when the order's next step (dispatch or status check) is
    due and `job_id` the job that was queued for it; a job works on an order
    only after claiming it (see `claim`), so a step run twice acts once.
    """

    id = CharField(primary_key=True, default=_order_id)
    product_id = CharField()
    package_id = CharField()
    user_identifier = CharField()
    extra_field = TextField(null=True)
    status = CharField(default="new")
    provider_ref = CharField(null=True, index=True)
    pin_code = CharField(null=True)
    checks = IntegerField(default=0)
    dispatch_attempts = IntegerField(default=0)
    next_check_at = DateTimeField(null=True)
    job_id = CharField(null=True)
    created_at = DateTimeField(default=utcnow)
    sent_at = DateTimeField(null=True)
    last_sync_at = DateTimeField(null=True)
    completed_at = DateTimeField(null=True)
    error = TextField(null=True)
    last_error = TextField(null=True)
    api_key_id = IntegerField(null=True)
    idempotency_key = CharField(null=True)

    class Meta:
        table_name = "orders"  # ORDER is an SQL keyword: spare everyone the quoting
        indexes = (
            (("status", "next_check_at"), False),
            (("created_at", "id"), False),
            (("api_key_id", "idempotency_key"), True),
        )

    # -- reading ---------------------------------------------------------
    @property
    def deadline(self):
        """When the order fails if it has no final status yet (ORDER_DEADLINE_HOURS)."""
        return self.created_at + datetime.timedelta(hours=settings.ORDER_DEADLINE_HOURS)

    @property
    def is_pending(self):
        return self.status in ORDER_PENDING

    def to_dict(self):
        return {
            "id": self.id,
            "status": self.status,
            "product_id": self.product_id,
            "package_id": self.package_id,
            "user_identifier": self.user_identifier,
            "extra_field": self.extra_field,
            "provider_ref": self.provider_ref,
            "pin_code": self.pin_code,
            "attempts": self.checks,
            "dispatch_attempts": self.dispatch_attempts,
            "created_at": isoformat(self.created_at),
            "sent_at": isoformat(self.sent_at),
            "last_sync_at": isoformat(self.last_sync_at),
            "completed_at": isoformat(self.completed_at),
            "next_check_at": isoformat(self.next_check_at) if self.is_pending else None,
            "error": self.error,
            "last_error": self.last_error,
            "job_id": self.job_id,
            "url": f"/api/v1/orders/{self.id}",
        }

    @classmethod
    def by_idempotency_key(cls, api_key_id, key):
        return cls.get_or_none((cls.api_key_id == api_key_id) & (cls.idempotency_key == key))

    @classmethod
    def page(cls, status=None, limit=50, cursor=None):
        """Newest first; returns (orders, cursor of the next page or None)."""
        query = cls.select()
        if status:
            query = query.where(cls.status == status)
        if cursor:
            stamp, order_id = _decode_cursor(cursor)
            query = query.where(Tuple(cls.created_at, cls.id) < Tuple(stamp, order_id))
        rows = list(query.order_by(cls.created_at.desc(), cls.id.desc()).limit(limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (_encode_cursor(rows[-1].created_at, rows[-1].id) if more else None)

    @classmethod
    def pending(cls):
        return cls.select().where(cls.status.in_(ORDER_PENDING))

    @classmethod
    def pending_count(cls):
        return cls.pending().count()

    @classmethod
    def counts_by_status(cls):
        query = cls.select(cls.status, fn.COUNT(cls.id).alias("n")).group_by(cls.status)
        return {row.status: row.n for row in query}

    @classmethod
    def due(cls, now=None, limit=100):
        """Pending orders whose next step is due and that no queued or running job
        is handling (its job finished, vanished or was never queued), most overdue first."""
        handled = Job.select(Job.id).where((Job.id == cls.job_id) & Job.status.in_(_LIVE_JOB))
        return (
            cls.select()
            .where(cls.status.in_(ORDER_PENDING) & (cls.next_check_at <= (now or utcnow())) & ~fn.EXISTS(handled))
            .order_by(cls.next_check_at, cls.id)
            .limit(limit)
        )

    @classmethod
    def overdue(cls, now=None, limit=100):
        """Pending orders past their deadline that no job is checking at this moment."""
        now = now or utcnow()
        cutoff = now - datetime.timedelta(hours=settings.ORDER_DEADLINE_HOURS)
        return (
            cls.select()
            .where(cls.status.in_(ORDER_PENDING) & (cls.created_at <= cutoff) & (cls.next_check_at <= now))
            .order_by(cls.created_at)
            .limit(limit)
        )

    # -- state changes: each a conditional update, safe to repeat ---------------
    # Every step of every order starts with this statement, so it is written out
    # (as Job's are): peewee takes longer to build it than the database takes to
    # run it, a quarter of a status check's CPU in bench/orders.py.
    _CLAIM_SQL = (
        'UPDATE "orders" SET "next_check_at" = {p}, "job_id" = COALESCE({p}, "job_id") '
        'WHERE ("id" = {p}) AND ("status" IN ({statuses})) AND ("next_check_at" <= {p}) RETURNING *'
    )

    @classmethod
    def claim(cls, order_id, statuses, now, lease, job_id=None):
        """Take an order in one of `statuses` whose next step is due, moving that step
        `lease` seconds ahead so no other job finds it due meanwhile. Returns the
        claimed order, or None when it is not due, not in `statuses`, or taken."""
        sql = cls._CLAIM_SQL.format(p=db.param, statuses=", ".join([db.param] * len(statuses)))
        params = (now + datetime.timedelta(seconds=lease), job_id, order_id, *statuses, now)
        # list(): reading every row ends the statement, and with it the write lock.
        rows = list(cls.raw(sql, *params))
        return rows[0] if rows else None

    @classmethod
    def hand_to(cls, order, job_id):
        """Give a due order, as `due` read it, to job `job_id`; False when another job got it first."""
        unchanged = cls.job_id.is_null() if order.job_id is None else cls.job_id == order.job_id
        return bool(
            cls.update(job_id=job_id)
            .where((cls.id == order.id) & cls.status.in_(ORDER_PENDING) & (unchanged | (cls.job_id == job_id)))
            .execute()
        )

    @classmethod
    def set_job(cls, order_id, job_id, expect_next):
        """Note the job queued for the order's step due at `expect_next`, unless the order moved on meanwhile."""
        where = (cls.id == order_id) & cls.status.in_(ORDER_PENDING) & (cls.next_check_at == expect_next)
        return bool(cls.update(job_id=job_id).where(where).execute())

    @classmethod
    def retry_dispatch_at(cls, order_id, next_at, error):
        """Count a dispatch that hit a retryable fault; the next one is due at `next_at`."""
        return bool(
            cls.update(dispatch_attempts=cls.dispatch_attempts + 1, next_check_at=next_at, last_error=error)
            .where((cls.id == order_id) & (cls.status == "new"))
            .execute()
        )

    @classmethod
    def mark_sent(cls, order_id, provider_ref, now, next_at):
        """Store the provider's reference; the first check is due at `next_at`. False when already sent."""
        return bool(
            cls.update(
                status="sent",
                provider_ref=provider_ref,
                sent_at=now,
                dispatch_attempts=cls.dispatch_attempts + 1,
                next_check_at=next_at,
                last_error=None,
            )
            .where((cls.id == order_id) & (cls.status == "new"))
            .execute()
        )

    # The outcome of a check, written out like the claim.
    _RECORD_CHECK_SQL = (
        'UPDATE "orders" SET "status" = COALESCE({p}, "status"), "checks" = ("checks" + 1), '
        '"last_sync_at" = {p}, "next_check_at" = {p}, "last_error" = {p} '
        'WHERE ("id" = {p}) AND ("status" IN ({p}, {p}))'
    )
    _COMPLETE_SQL = (
        'UPDATE "orders" SET "status" = {p}, "pin_code" = {p}, "completed_at" = {p}, "last_sync_at" = {p}, '
        '"checks" = ("checks" + 1), "next_check_at" = NULL, "last_error" = NULL '
        'WHERE ("id" = {p}) AND ("status" IN ({p}, {p}))'
    )

    @classmethod
    def record_check(cls, order_id, now, next_at, status=None, error=None):
        """Count a check that found no final status (or hit `error`); the next is due at `next_at`."""
        params = (status, now, next_at, error, order_id, "sent", "processing")
        return bool(db.execute_sql(cls._RECORD_CHECK_SQL.format(p=db.param), params).rowcount)

    @classmethod
    def complete(cls, order_id, pin_code, now):
        """A check found the order completed with `pin_code`."""
        params = ("completed", pin_code, now, now, order_id, "sent", "processing")
        return bool(db.execute_sql(cls._COMPLETE_SQL.format(p=db.param), params).rowcount)

    @classmethod
    def fail(cls, order_id, reason, now, checked=False):
        """Fail a pending order with `reason`; `checked` when a status check found it so."""
        changes = {cls.status: "failed", cls.error: reason, cls.next_check_at: None}
        if checked:
            changes.update({cls.checks: cls.checks + 1, cls.last_sync_at: now})
        return bool(cls.update(changes).where((cls.id == order_id) & cls.status.in_(ORDER_PENDING)).execute())


def _encode_cursor(stamp, row_id):
    raw = f"{stamp.isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor):
    """(time, id) from a cursor; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        return datetime.datetime.fromisoformat(stamp), row_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a cursor returned by this API") from exc


class SandboxOrder(BaseModel):
    """An order as the built-in sandbox provider keeps it (its own side of the
    wire), in the database so every web process answers alike."""

    reference = CharField(primary_key=True)
    idempotency_key = CharField(unique=True)
    request = TextField()  # the order as first sent, to tell a repeat from a clash
    pin_code = CharField()
    created_at = DateTimeField(default=utcnow)
    complete_at = DateTimeField()
    fail_message = TextField(null=True)

    class Meta:
        table_name = "sandbox_order"

    @classmethod
    def find(cls, reference):
        """The order with `reference`, or None (in SQL: every status check of the sandbox reads it)."""
        rows = list(cls.raw('SELECT * FROM "sandbox_order" WHERE "reference" = {p}'.format(p=db.param), reference))
        return rows[0] if rows else None

    @classmethod
    def place(cls, idempotency_key, request, **fields):
        """The order for `idempotency_key`, created from `request` and `fields` if new; returns (order, created)."""
        existing = cls.get_or_none(cls.idempotency_key == idempotency_key)
        if existing is not None:
            return existing, False
        try:
            with db.atomic():  # a savepoint, so a clash leaves an outer transaction usable
                order = cls.create(idempotency_key=idempotency_key, request=request, **fields)
            return order, True
        except IntegrityError:
            # A concurrent call with the same key won the race.
            return cls.get(cls.idempotency_key == idempotency_key), False

    def status_at(self, now):
        """pending for the first half of its time, processing for the second, then final."""
        if now >= self.complete_at:
            return "failed" if self.fail_message else "completed"
        halfway = self.created_at + (self.complete_at - self.created_at) / 2
        return "processing" if now >= halfway else "pending"

    def to_dict(self, now):
        status = self.status_at(now)
        return {
            "reference": self.reference,
            "status": status,
            "pin_code": self.pin_code if status == "completed" else None,
            "message": self.fail_message if status == "failed" else None,
            "ready_in": round(max((self.complete_at - now).total_seconds(), 0), 3),
            "created_at": isoformat(self.created_at),
        }


class SandboxFault(BaseModel):
    """A fault injected into the sandbox: the next `remaining` calls to `target`
    (create, status or any) answer `status`, or answer `delay_ms` late."""

    target = CharField(default="any")
    status = IntegerField(null=True)
    delay_ms = IntegerField(default=0)
    remaining = IntegerField(default=1)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "sandbox_fault"

    @classmethod
    def take(cls, target):
        """Use up one call of the oldest fault for `target`; None when there is none."""
        # Every sandbox call asks, and almost always finds none: a plain statement is cheapest.
        sql = 'SELECT * FROM "sandbox_fault" WHERE "target" IN ({p}, {p}) AND "remaining" > 0 ORDER BY "id"'
        for fault in list(cls.raw(sql.format(p=db.param), target, "any")):
            used = cls.update(remaining=cls.remaining - 1).where((cls.id == fault.id) & (cls.remaining > 0)).execute()
            if used:
                return fault
        return None

    def to_dict(self):
        return {
            "id": str(self.id),
            "target": self.target,
            "status": self.status,
            "delay_ms": self.delay_ms,
            "remaining": self.remaining,
        }


# -- Posts and analytics ------------------------------------------------------------
# A hashtag is `#` and a word with at least one letter, not glued to a word before it.
HASHTAG = re.compile(r"(?<![\w#&])#(\w*[^\W\d_]\w*)")
HASHTAG_MAX = 64


def hashtags(text):
    """The distinct hashtags of `text`, lowercased, in the order they appear."""
    tags = []
    for tag in HASHTAG.findall(text):
        tag = tag.lower()
        if len(tag) <= HASHTAG_MAX and tag not in tags:
            tags.append(tag)
    return tags


def _as_datetime(value):
    """A stored time as a datetime: SQLite hands aggregates (MAX, MIN) back as text."""
    if isinstance(value, str):
        return datetime.datetime.fromisoformat(value)
    return value


def _as_date(value):
    """A date from what the driver returns for DATE(…): text, a date, or (coerced by peewee) a datetime."""
    if isinstance(value, str):
        return datetime.date.fromisoformat(value[:10])
    return value.date() if isinstance(value, datetime.datetime) else value


def bulk_insert(model, fields, rows, size=1000):
    """Insert `rows` (tuples in the order of `fields`) a chunk per statement; call it inside db.atomic().

    One prepared INSERT run with executemany: peewee takes ten times longer to
    build a 1,000-row insert_many than the database takes to run it (demo-data
    writes a million rows).
    """
    # Defaults live in Python (peewee's), so the statement carries them.
    given = {field.name for field in fields}
    defaults = [f for f in model._meta.sorted_fields if f.name not in given and not f.primary_key and f.default is not None]
    extra = tuple(f.default() if callable(f.default) else f.default for f in defaults)
    columns = ", ".join(f'"{field.column_name}"' for field in [*fields, *defaults])
    sql = f'INSERT INTO "{model._meta.table_name}" ({columns}) VALUES ({", ".join([db.param] * (len(fields) + len(extra)))})'
    for chunk in chunked(rows, size):
        db.cursor().executemany(sql, [(*row, *extra) for row in chunk])


class Post(BaseModel):
    """Something a user wrote; its likes, comments, shares and hashtags are rows of their own."""

    author = ForeignKeyField(User, backref="posts", on_delete="CASCADE")
    body = TextField()
    created_at = DateTimeField(default=utcnow, index=True)
    # Written by update_post_engagement_scores: likes + 2·comments + 3·shares,
    # and that number decayed by the post's age.
    engagement = IntegerField(default=0)
    engagement_score = FloatField(default=0.0, index=True)
    scored_at = DateTimeField(null=True)

    @classmethod
    def publish(cls, author_id, body, created_at=None):
        """Create a post and its hashtags."""
        with db.atomic():
            post = cls.create(author=author_id, body=body, created_at=created_at or utcnow())
            rows = [(post.id, tag, post.created_at) for tag in hashtags(body)]
            if rows:
                PostTag.insert_many(rows, fields=[PostTag.post, PostTag.tag, PostTag.created_at]).execute()
        return post

    def to_dict(self):
        return {
            "id": str(self.id),
            "author_id": str(self.author_id),
            "body": self.body,
            "hashtags": [row.tag for row in self.hashtags.order_by(PostTag.id)],
            "likes": self.likes.count(),
            "comments": self.comments.count(),
            "shares": self.shares.count(),
            "engagement_score": round(self.engagement_score, 3),
            "created_at": isoformat(self.created_at),
        }

    @classmethod
    def interactions(cls, created_from=None, created_before=None):
        """{post id: (likes, comments, shares)} over posts created in [from, before), all when None."""
        counts = {}
        for position, model in enumerate((Like, Comment, Share)):
            query = model.select(model.post, fn.COUNT(model.id)).group_by(model.post)
            if created_from is not None or created_before is not None:
                query = query.join(Post).where(_between(Post.created_at, created_from, created_before))
            for post_id, n in query.tuples().iterator():
                counts.setdefault(post_id, [0, 0, 0])[position] = n
        return counts

    @classmethod
    def rescore(cls, now, half_life_days, report=None, batch=2000):
        """Set every post's engagement and its score decayed by age; returns how many posts changed.

        The score halves every `half_life_days`. Rows are written a batch per
        transaction, so other writers wait at most one batch.
        """
        counts = cls.interactions()
        changed = []
        query = cls.select(cls.id, cls.created_at, cls.engagement, cls.engagement_score).tuples().iterator()
        for post_id, created_at, old_engagement, old_score in query:
            likes, comments, shares = counts.get(post_id, (0, 0, 0))
            engagement = likes + 2 * comments + 3 * shares
            age_days = max((now - created_at).total_seconds(), 0) / 86400
            score = round(engagement * math.pow(0.5, age_days / half_life_days), 6)
            if engagement != old_engagement or score != old_score:
                changed.append((engagement, score, now, post_id))
        sql = 'UPDATE "post" SET "engagement" = {p}, "engagement_score" = {p}, "scored_at" = {p} WHERE "id" = {p}'
        sql = sql.format(p=db.param)
        done = 0
        for chunk in chunked(changed, batch):
            with db.atomic():
                # executemany: one prepared UPDATE for the batch, 10x faster than a query object per row.
                db.cursor().executemany(sql, chunk)
            done += len(chunk)
            if report:
                report(done, len(changed), f"scored {done} of {len(changed)} changed posts")
        return len(changed)

    @classmethod
    def top(cls, created_from, created_before, limit=5):
        """The posts created in [from, before) with the most engagement now, as dicts for a mail."""
        counts = cls.interactions(created_from, created_before)
        ranked = sorted(counts.items(), key=lambda item: (-(item[1][0] + 2 * item[1][1] + 3 * item[1][2]), item[0]))
        ids = [post_id for post_id, _ in ranked[:limit]]
        posts = {p.id: p for p in cls.select(cls, User).join(User).where(cls.id.in_(ids or [0]))}
        top = []
        for post_id in ids:
            likes, comments, shares = counts[post_id]
            post = posts[post_id]
            top.append(
                {
                    "id": post_id,
                    "author": post.author.name or post.author.email.split("@")[0],
                    "body": post.body if len(post.body) <= 280 else post.body[:279] + "…",
                    "likes": likes,
                    "comments": comments,
                    "shares": shares,
                    "engagement": likes + 2 * comments + 3 * shares,
                }
            )
        return top

    @classmethod
    def numbers_of(cls, author_id, created_from, created_before):
        """What a user did and received in [from, before): posts written, likes, comments and shares received."""
        numbers = {"posts": cls.select().where((cls.author == author_id) & _between(cls.created_at, created_from, created_before)).count()}
        for name, model in (("likes", Like), ("comments", Comment), ("shares", Share)):
            numbers[name] = (
                model.select()
                .join(Post)
                .where((Post.author == author_id) & _between(model.created_at, created_from, created_before))
                .count()
            )
        return numbers


def _between(field, low=None, high=None):
    """`low <= field < high`, either bound optional."""
    condition = SQL("1 = 1")
    if low is not None:
        condition &= field >= low
    if high is not None:
        condition &= field < high
    return condition


class Like(BaseModel):
    user = ForeignKeyField(User, backref="likes", on_delete="CASCADE")
    post = ForeignKeyField(Post, backref="likes", on_delete="CASCADE")
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("post", "user"), True),)  # one like per user and post


class Comment(BaseModel):
    user = ForeignKeyField(User, backref="comments", on_delete="CASCADE")
    post = ForeignKeyField(Post, backref="comments", on_delete="CASCADE")
    body = TextField(default="")
    created_at = DateTimeField(default=utcnow, index=True)


class Share(BaseModel):
    user = ForeignKeyField(User, backref="shares", on_delete="CASCADE")
    post = ForeignKeyField(Post, backref="shares", on_delete="CASCADE")
    created_at = DateTimeField(default=utcnow, index=True)


class PostTag(BaseModel):
    """A hashtag of a post, with the post's time so trending needs no join."""

    post = ForeignKeyField(Post, backref="hashtags", on_delete="CASCADE")
    tag = CharField(max_length=HASHTAG_MAX)
    created_at = DateTimeField()

    class Meta:
        indexes = ((("created_at", "tag"), False),)


class UserStats(BaseModel):
    """Per-user numbers, written by update_user_statistics."""

    user = ForeignKeyField(User, primary_key=True, backref="stats", on_delete="CASCADE")
    posts = IntegerField(default=0)
    likes_received = IntegerField(default=0)
    comments_received = IntegerField(default=0)
    shares_received = IntegerField(default=0)
    last_active_at = DateTimeField(null=True)
    updated_at = DateTimeField(default=utcnow)

    @classmethod
    def refresh(cls, now, report=None):
        """Recount every user's posts, what they received and when they last did anything; returns how many users."""
        posts = dict(Post.select(Post.author, fn.COUNT(Post.id)).group_by(Post.author).tuples())
        received = {}
        for name, model in (("likes", Like), ("comments", Comment), ("shares", Share)):
            query = model.select(Post.author, fn.COUNT(model.id)).join(Post).group_by(Post.author)
            received[name] = dict(query.tuples())
        # Last activity: the newest post, like, comment or share of the user, or their last login.
        last = {}
        for model, who in ((Post, Post.author), (Like, Like.user), (Comment, Comment.user), (Share, Share.user)):
            for user_id, newest in model.select(who, fn.MAX(model.created_at)).group_by(who).tuples():
                newest = _as_datetime(newest)
                if user_id not in last or newest > last[user_id]:
                    last[user_id] = newest
        rows = []
        for user_id, last_login in User.select(User.id, User.last_active_at).tuples():
            active = max(filter(None, (last.get(user_id), last_login)), default=None)
            rows.append(
                (
                    user_id,
                    posts.get(user_id, 0),
                    received["likes"].get(user_id, 0),
                    received["comments"].get(user_id, 0),
                    received["shares"].get(user_id, 0),
                    active,
                    now,
                )
            )
        fields = [cls.user, cls.posts, cls.likes_received, cls.comments_received, cls.shares_received, cls.last_active_at, cls.updated_at]
        done = 0
        # A transaction per chunk: other writers wait at most one chunk, and progress shows.
        for chunk in chunked(rows, 1000):
            with db.atomic():
                for part in chunked(chunk, 250):
                    cls.insert_many(part, fields=fields).on_conflict(conflict_target=[cls.user], preserve=fields[1:]).execute()
            done += len(chunk)
            if report:
                report(done, len(rows), f"{done} of {len(rows)} users")
        return len(rows)

    def to_dict(self):
        return {
            "user_id": str(self.user_id),
            "posts": self.posts,
            "likes_received": self.likes_received,
            "comments_received": self.comments_received,
            "shares_received": self.shares_received,
            "last_active_at": isoformat(self.last_active_at),
            "updated_at": isoformat(self.updated_at),
        }


class DailyAnalytics(BaseModel):
    """One UTC day's numbers, written by generate_content_analytics."""

    date = DateField(unique=True)
    new_users = IntegerField(default=0)
    posts = IntegerField(default=0)
    likes = IntegerField(default=0)
    comments = IntegerField(default=0)
    shares = IntegerField(default=0)
    active_users = IntegerField(default=0)
    # Mean of likes + 2·comments + 3·shares over the posts written that day.
    mean_engagement = FloatField(default=0.0)
    computed_at = DateTimeField(default=utcnow)

    @classmethod
    def compute(cls, first_day, last_day, now):
        """Recompute the rows of the UTC days first_day..last_day (dates, inclusive); returns them."""
        since = datetime.datetime.combine(first_day, datetime.time())
        until = datetime.datetime.combine(last_day + datetime.timedelta(days=1), datetime.time())

        def per_day(model, *where):
            day = fn.DATE(model.created_at)
            query = model.select(day, fn.COUNT(model.id)).where(_between(model.created_at, since, until), *where)
            return {_as_date(d): n for d, n in query.group_by(day).tuples()}

        new_users = per_day(User)
        posts = per_day(Post)
        likes, comments, shares = per_day(Like), per_day(Comment), per_day(Share)
        # Active: wrote, liked, commented or shared that day. UNION drops repeats.
        parts = [
            model.select(fn.DATE(model.created_at).alias("day"), who.alias("who")).where(
                _between(model.created_at, since, until)
            )
            for model, who in ((Post, Post.author), (Like, Like.user), (Comment, Comment.user), (Share, Share.user))
        ]
        union = (parts[0] | parts[1] | parts[2] | parts[3]).alias("activity")
        active_query = union.select_from(union.c.day, fn.COUNT(union.c.who)).group_by(union.c.day)
        active = {_as_date(d): n for d, n in active_query.tuples()}
        counts = Post.interactions(since, until)
        engagement = {}
        for post_id, created_at in Post.select(Post.id, Post.created_at).where(_between(Post.created_at, since, until)).tuples():
            likes_n, comments_n, shares_n = counts.get(post_id, (0, 0, 0))
            engagement.setdefault(created_at.date(), []).append(likes_n + 2 * comments_n + 3 * shares_n)
        rows = []
        day = first_day
        while day <= last_day:
            scores = engagement.get(day, [])
            rows.append(
                {
                    "date": day,
                    "new_users": new_users.get(day, 0),
                    "posts": posts.get(day, 0),
                    "likes": likes.get(day, 0),
                    "comments": comments.get(day, 0),
                    "shares": shares.get(day, 0),
                    "active_users": active.get(day, 0),
                    "mean_engagement": round(sum(scores) / len(scores), 3) if scores else 0.0,
                    "computed_at": now,
                }
            )
            day += datetime.timedelta(days=1)
        update = [f for f in cls._meta.sorted_fields if f.name not in ("id", "date")]
        with db.atomic():
            for chunk in chunked(rows, 100):
                cls.insert_many(chunk).on_conflict(conflict_target=[cls.date], preserve=update).execute()
        return rows

    @classmethod
    def recent(cls, days, today=None):
        """The rows of the last `days` UTC days up to `today`, oldest first."""
        today = today or utcnow().date()
        first = today - datetime.timedelta(days=days - 1)
        return cls.select().where((cls.date >= first) & (cls.date <= today)).order_by(cls.date)

    def to_dict(self):
        return {
            "date": _as_date(self.date).isoformat(),
            "new_users": self.new_users,
            "posts": self.posts,
            "likes": self.likes,
            "comments": self.comments,
            "shares": self.shares,
            "active_users": self.active_users,
            "mean_engagement": self.mean_engagement,
            "computed_at": isoformat(self.computed_at),
        }


class TrendingSnapshot(BaseModel):
    """The top hashtags as one run of update_trending_hashtags computed them."""

    computed_at = DateTimeField(default=utcnow, index=True)
    window_hours = IntegerField()
    hashtags = TextField()  # JSON: [{"tag": "python", "count": 42}, …]

    @classmethod
    def compute(cls, now, hours=24, limit=20):
        """Count the hashtags of posts written in the last `hours`, keep the top `limit`; returns the snapshot."""
        count = fn.COUNT(PostTag.id)
        query = (
            PostTag.select(PostTag.tag, count)
            .where((PostTag.created_at > now - datetime.timedelta(hours=hours)) & (PostTag.created_at <= now))
            .group_by(PostTag.tag)
            .order_by(count.desc(), PostTag.tag)
            .limit(limit)
        )
        top = [{"tag": tag, "count": n} for tag, n in query.tuples()]
        return cls.create(computed_at=now, window_hours=hours, hashtags=json.dumps(top))

    @classmethod
    def latest(cls):
        return cls.select().order_by(cls.computed_at.desc(), cls.id.desc()).first()

    @classmethod
    def prune(cls, before):
        return cls.delete().where(cls.computed_at < before).execute()

    def to_dict(self):
        return {"computed_at": isoformat(self.computed_at), "window_hours": self.window_hours, "hashtags": json.loads(self.hashtags)}


class MailSent(BaseModel):
    """One mail of a kind per user and key (the welcome mail; the digest of a week).

    A job claims the row before it sends and marks it sent after, so running
    the job again, or a second job for the same mail, never sends it twice.
    """

    user = ForeignKeyField(User, backref="mails", on_delete="CASCADE")
    kind = CharField()
    key = CharField(default="")
    status = CharField(default="sending")  # sending, then sent
    job_id = CharField(null=True)
    created_at = DateTimeField(default=utcnow)
    sent_at = DateTimeField(null=True)

    class Meta:
        indexes = ((("user", "kind", "key"), True),)

    @classmethod
    def claim(cls, user_id, kind, key, job_id):
        """Take the right to send; False when the mail was sent or is being sent already.

        A row left `sending` by a consumer that died mid-send stays claimed: a
        lost mail is better than a duplicate when nobody knows whether it left.
        """
        try:
            with db.atomic():
                cls.create(user=user_id, kind=kind, key=key, job_id=job_id)
            return True
        except IntegrityError:
            return False

    @classmethod
    def release(cls, user_id, kind, key, job_id):
        """Give up a claim after a failed send, so a retry may send."""
        cls.delete().where(
            (cls.user == user_id) & (cls.kind == kind) & (cls.key == key) & (cls.job_id == job_id) & (cls.status == "sending")
        ).execute()

    @classmethod
    def mark_sent(cls, user_id, kind, key):
        cls.update(status="sent", sent_at=utcnow()).where((cls.user == user_id) & (cls.kind == kind) & (cls.key == key)).execute()

    @classmethod
    def users_without(cls, kind, key):
        """Active users who have no such mail (sent or being sent)."""
        sent = cls.select(cls.user).where((cls.kind == kind) & (cls.key == key))
        return User.select(User.id).where((User.active == True) & User.id.not_in(sent)).order_by(User.id)  # noqa: E712


class DigestWeek(BaseModel):
    """What every digest of one week shows: the week's top posts, computed once."""

    week = CharField(primary_key=True)  # ISO week of the Monday it is sent, e.g. 2026-W48
    starts_at = DateTimeField()  # UTC bounds of the 7 days it covers
    ends_at = DateTimeField()
    top_posts = TextField()  # JSON list, see Post.top()
    created_at = DateTimeField(default=utcnow)

    @classmethod
    def fetch(cls, week, starts_at, ends_at):
        """The week's row, computing its top posts the first time."""
        row = cls.get_or_none(cls.week == week)
        if row is None:
            top = json.dumps(Post.top(starts_at, ends_at))
            cls.insert(week=week, starts_at=starts_at, ends_at=ends_at, top_posts=top).on_conflict_ignore().execute()
            row = cls.get(cls.week == week)
        return row

    @property
    def posts(self):
        return json.loads(self.top_posts)

    @classmethod
    def users_with_unfinished_job(cls, week):
        """Ids of the users whose send_digest job for `week` has not finished yet."""
        query = Job.select(Job.args).where((Job.name == "send_digest") & Job.status.not_in(TERMINAL))
        return {args["user_id"] for args in (json.loads(a) for (a,) in query.tuples()) if args.get("week") == week}


# -- Schedules ---------------------------------------------------------------------
class ScheduleState(BaseModel):
    """What the database remembers of a schedule (jobs.SCHEDULES): paused, last run, last job.

    Kept here rather than in a consumer, so a pause holds for every consumer
    and survives restarts.
    """

    name = CharField(primary_key=True)
    paused = BooleanField(default=False)
    last_run = DateTimeField(null=True)
    last_job_id = CharField(null=True)
    updated_at = DateTimeField(default=utcnow)

    @classmethod
    def by_name(cls):
        return {row.name: row for row in cls.select()}

    @classmethod
    def _upsert(cls, name, **values):
        values["updated_at"] = utcnow()
        cls.insert(name=name, **values).on_conflict(conflict_target=[cls.name], update=values).execute()

    @classmethod
    def set_paused(cls, name, paused):
        cls._upsert(name, paused=paused)

    @classmethod
    def record_run(cls, name, job_id, when):
        cls._upsert(name, last_run=when, last_job_id=job_id)


class ScheduleRun(BaseModel):
    """The claim of one tick: (schedule, slot) is unique, so however many
    consumers see a tick, one of them runs it."""

    schedule = CharField()
    slot = DateTimeField()  # the tick's minute, UTC
    claimed_at = DateTimeField(default=utcnow)
    consumer_id = CharField(null=True)
    job_id = CharField(null=True)
    note = CharField(null=True)  # why a claimed tick did not run

    class Meta:
        indexes = ((("schedule", "slot"), True),)

    @classmethod
    def claim(cls, schedule, slot, consumer_id):
        """The new claim row, or None when another consumer claimed this tick first."""
        try:
            with db.atomic():  # a savepoint, so a clash leaves an outer transaction usable
                return cls.create(schedule=schedule, slot=slot, consumer_id=consumer_id)
        except IntegrityError:
            return None

    @classmethod
    def prune(cls, before):
        return cls.delete().where(cls.claimed_at < before).execute()


# -- Media and courses ------------------------------------------------------------
class Media(BaseModel):
    """An image uploaded to a post; its WebP renditions live in UPLOAD_DIR/<token>/.

    The original waits in INCOMING_DIR/<token> (never served) until
    process_media_upload has made the renditions or rejected it.
    """

    post = ForeignKeyField(Post, backref="media", on_delete="CASCADE")
    token = CharField(unique=True)  # the folder name: random, so rendition URLs cannot be guessed
    status = CharField(default="processing")  # processing | ready | rejected
    error = TextField(null=True)
    filename = CharField(default="")
    size_bytes = IntegerField(default=0)
    width = IntegerField(null=True)  # of the upright original
    height = IntegerField(null=True)
    renditions = TextField(null=True)  # JSON {name: [width, height]}
    job_id = CharField(null=True)
    created_at = DateTimeField(default=utcnow)
    processed_at = DateTimeField(null=True)

    RENDITIONS = ("web", "thumb_640", "thumb_320")

    @staticmethod
    def new_token():
        return secrets.token_urlsafe(18)

    @property
    def folder(self):
        return settings.UPLOAD_DIR / self.token

    @property
    def original_path(self):
        return settings.INCOMING_DIR / self.token

    @classmethod
    def of_post(cls, post_id):
        return cls.select().where(cls.post == post_id).order_by(cls.id)

    @classmethod
    def tokens_in(cls, tokens, chunk=500):
        """The subset of `tokens` that belong to a media row."""
        found = set()
        for start in range(0, len(tokens), chunk):
            found.update(row.token for row in cls.select(cls.token).where(cls.token.in_(tokens[start : start + chunk])))
        return found

    def set_job(self, job_id):
        self.job_id = job_id
        Media.update(job_id=job_id).where(Media.id == self.id).execute()

    def mark_ready(self, width, height, renditions):
        """Record the renditions; True unless another run got there first."""
        fields = {"status": "ready", "error": None, "processed_at": utcnow()}
        fields.update(width=width, height=height, renditions=json.dumps(renditions))
        return Media.update(**fields).where((Media.id == self.id) & (Media.status == "processing")).execute() == 1

    def reject(self, error):
        fields = {"status": "rejected", "error": error, "processed_at": utcnow()}
        return Media.update(**fields).where((Media.id == self.id) & (Media.status == "processing")).execute() == 1

    def urls(self):
        ready = self.status == "ready"
        return {name: f"/uploads/{self.token}/{name}.webp" if ready else None for name in self.RENDITIONS}

    def accepted_dict(self):
        """The answer to an upload: accepted, processing in the background."""
        return {
            "id": str(self.id),
            "post_id": str(self.post_id),
            "status": self.status,
            "job_id": self.job_id,
            "url": f"/api/v1/media/{self.id}",
        }

    def to_dict(self):
        return {
            "id": str(self.id),
            "post_id": str(self.post_id),
            "status": self.status,
            "error": self.error,
            "width": self.width,
            "height": self.height,
            "urls": self.urls(),
            "sizes": json.loads(self.renditions) if self.renditions else None,
            "filename": self.filename,
            "size_bytes": self.size_bytes,
            "job_id": self.job_id,
            "created_at": isoformat(self.created_at),
            "processed_at": isoformat(self.processed_at),
        }


def delete_quiet_posts(before, limit):
    """Delete up to `limit` posts created before `before` that nobody liked, commented on or shared.

    One transaction: the posts, their hashtags and their media rows. Returns
    (posts deleted, tokens of their media); the caller removes the media files
    afterwards, so a failure in between leaves orphan files (which
    cleanup_old_cache sweeps), never a post whose pictures are gone.
    """
    untouched = (
        ~fn.EXISTS(Like.select(Like.id).where(Like.post == Post.id))
        & ~fn.EXISTS(Comment.select(Comment.id).where(Comment.post == Post.id))
        & ~fn.EXISTS(Share.select(Share.id).where(Share.post == Post.id))
    )
    with db.atomic():
        query = Post.select(Post.id).where((Post.created_at < before) & untouched).order_by(Post.id).limit(limit)
        ids = [row.id for row in query]
        if not ids:
            return 0, []
        tokens = [row.token for row in Media.select(Media.token).where(Media.post.in_(ids))]
        for model in (Media, PostTag):
            model.delete().where(model.post.in_(ids)).execute()
        Post.delete().where(Post.id.in_(ids)).execute()
    return len(ids), tokens


class Course(BaseModel):
    """A course: a title and its lessons in order."""

    title = CharField()
    created_at = DateTimeField(default=utcnow)

    @classmethod
    def create_with_lessons(cls, title, lesson_titles):
        with db.atomic():
            course = cls.create(title=title)
            rows = [{"course": course.id, "title": t, "position": n} for n, t in enumerate(lesson_titles)]
            Lesson.insert_many(rows).execute()
        return course

    def ordered_lessons(self):
        return self.lessons.order_by(Lesson.position)

    def to_dict(self):
        return {
            "id": str(self.id),
            "title": self.title,
            "lessons": [lesson.to_dict() for lesson in self.ordered_lessons()],
            "created_at": isoformat(self.created_at),
        }


class Lesson(BaseModel):
    course = ForeignKeyField(Course, backref="lessons", on_delete="CASCADE")
    title = CharField()
    position = IntegerField()

    class Meta:
        indexes = ((("course", "position"), True),)

    def to_dict(self):
        return {"id": str(self.id), "title": self.title}


class Enrollment(BaseModel):
    """A user taking a course; `progress` is the share of its lessons done, 0–100."""

    user = ForeignKeyField(User, backref="enrollments", on_delete="CASCADE")
    course = ForeignKeyField(Course, backref="enrollments", on_delete="CASCADE")
    progress = IntegerField(default=0)
    created_at = DateTimeField(default=utcnow)
    completed_at = DateTimeField(null=True)  # set once, when progress first reached 100

    class Meta:
        indexes = ((("user", "course"), True),)

    def complete_lesson(self, lesson):
        """Record `lesson` as done; doing it again changes nothing."""
        LessonCompletion.insert(enrollment=self.id, lesson=lesson.id).on_conflict_ignore().execute()

    def recalculate(self):
        """Store the progress computed from the completions; returns it.

        One UPDATE with the counts as subqueries, so two runs racing each
        other can never store a count older than the other's.
        """
        done = (
            LessonCompletion.select(fn.COUNT(LessonCompletion.id))
            .join(Lesson)
            .where((LessonCompletion.enrollment == self.id) & (Lesson.course == self.course_id))
        )
        total = Lesson.select(fn.COUNT(Lesson.id)).where(Lesson.course == self.course_id)
        # Integer division on SQLite and PostgreSQL alike: 100 only when every lesson is done.
        percent = fn.COALESCE(fn.COALESCE(done, 0) * 100 / fn.NULLIF(total, 0), 0)
        Enrollment.update(progress=percent).where(Enrollment.id == self.id).execute()
        self.progress = Enrollment.select(Enrollment.progress).where(Enrollment.id == self.id).scalar()
        return self.progress

    def mark_completed(self):
        """True for exactly one caller: the first to see this enrollment at 100%."""
        claim = (Enrollment.id == self.id) & Enrollment.completed_at.is_null() & (Enrollment.progress >= 100)
        return Enrollment.update(completed_at=utcnow()).where(claim).execute() == 1

    def unmark_completed(self):
        Enrollment.update(completed_at=None).where(Enrollment.id == self.id).execute()

    @property
    def certificate(self):
        return Certificate.get_or_none(Certificate.enrollment == self.id)

    def completed_lesson_ids(self):
        query = LessonCompletion.select(LessonCompletion.lesson).where(LessonCompletion.enrollment == self.id)
        return sorted(str(row.lesson_id) for row in query)

    def to_dict(self):
        certificate = self.certificate
        return {
            "id": str(self.id),
            "user_id": str(self.user_id),
            "course_id": str(self.course_id),
            "progress": self.progress,
            "completed_lessons": self.completed_lesson_ids(),
            "certificate": {"code": certificate.code, "url": certificate.url} if certificate else None,
            "created_at": isoformat(self.created_at),
            "completed_at": isoformat(self.completed_at),
        }


class LessonCompletion(BaseModel):
    enrollment = ForeignKeyField(Enrollment, backref="completions", on_delete="CASCADE")
    lesson = ForeignKeyField(Lesson, on_delete="CASCADE")
    completed_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("enrollment", "lesson"), True),)


class Certificate(BaseModel):
    """Proof that an enrollment was completed; one per enrollment, ever (a unique column)."""

    enrollment = ForeignKeyField(Enrollment, unique=True, backref="certificates", on_delete="CASCADE")
    code = CharField(unique=True)
    name = CharField()  # the learner's name as printed
    course_title = CharField()
    issued_at = DateTimeField(default=utcnow)

    # No 0/O or 1/I/L: codes are read off paper and typed in.
    CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"

    @classmethod
    def new_code(cls):
        raw = "".join(secrets.choice(cls.CODE_ALPHABET) for _ in range(12))
        return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"

    @classmethod
    def draft(cls, enrollment):
        """An unsaved certificate for `enrollment`, with a fresh code; save it with save_once()."""
        user = enrollment.user
        return cls(
            enrollment=enrollment.id,
            code=cls.new_code(),
            name=user.name or user.email.split("@")[0],
            course_title=enrollment.course.title,
            issued_at=utcnow(),
        )

    def save_once(self):
        """Insert this draft unless its enrollment has a certificate; returns (the one kept, created)."""
        try:
            with db.atomic():
                self.save(force_insert=True)
            return self, True
        except IntegrityError:
            existing = Certificate.get_or_none(Certificate.enrollment == self.enrollment_id)
            if existing is None:
                raise  # the code clashed (about 1 in 10^17): the job's retry draws another
            return existing, False

    @classmethod
    def by_code(cls, code):
        return cls.get_or_none(cls.code == code.strip().upper())

    @classmethod
    def codes_in(cls, codes, chunk=500):
        """The subset of `codes` that belong to an issued certificate."""
        found = set()
        for start in range(0, len(codes), chunk):
            found.update(row.code for row in cls.select(cls.code).where(cls.code.in_(codes[start : start + chunk])))
        return found

    @property
    def filename(self):
        return f"{self.code}.pdf"

    @property
    def path(self):
        return settings.CERTIFICATE_DIR / self.filename

    @property
    def url(self):
        return f"/certificates-static/{self.filename}"

    def to_dict(self):
        return {
            "valid": True,
            "code": self.code,
            "name": self.name,
            "course": self.course_title,
            "issued_at": isoformat(self.issued_at),
            "url": self.url,
            "enrollment_id": str(self.enrollment_id),
        }


MODELS = [SchemaVersion, ApiKey, User, Token, Worker, Job, JobCount, JobDuration, Course, Lesson, Enrollment, LessonCompletion, Certificate, Media, Webhook, WebhookDelivery, Order, SandboxOrder, SandboxFault, Post, Like, Comment, Share, PostTag, UserStats, DailyAnalytics, TrendingSnapshot, MailSent, DigestWeek, ScheduleState, ScheduleRun]

# Each migration takes a SchemaMigrator; append, never edit or reorder.
MIGRATIONS = [
    # 1: concurrency limits count running jobs instead of keeping a table of places.
    lambda migrator: [migrator.sql('DROP TABLE IF EXISTS "slot"')],
]


def create_tables():
    """Create missing tables and apply pending migrations; safe to run at every start."""
    with db.connection_context():
        db.create_tables(MODELS, safe=True)
        install_job_triggers()
        current = SchemaVersion.select(fn.MAX(SchemaVersion.version)).scalar()
        if current is None:
            # A fresh database already has the newest schema.
            SchemaVersion.create(version=len(MIGRATIONS))
            return
        migrator = SchemaMigrator.from_database(db.obj)
        for number, step in enumerate(MIGRATIONS[current:], start=current + 1):
            with db.atomic():
                migrate(*step(migrator))
                SchemaVersion.create(version=number)


def check_database():
    """Raise OperationalError when the database cannot answer a trivial query."""
    db.execute_sql("SELECT 1")


db.initialize(open_database(settings.DATABASE_URL))
