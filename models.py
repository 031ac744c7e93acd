"""litejobs models: the core Peewee tables shared by the web process and consumers.

SQLite (WAL) by default, PostgreSQL by `DATABASE_URL`. Queries live here as
model methods; web.py and jobs.py combine them and write no SQL.

The core is here: API keys, users, tokens, login failures, workers and jobs,
the migrations and create_tables(). The plumbing (the connection, BaseModel,
time and page helpers) is in database.py, the schedule tables in
schedule_tables.py, the /metrics counters in job_counts.py and Job's
history queries in job_queries.py; this module re-exports their names, so
`from models import X` keeps working. Each app keeps its tables in
apps/<name>/models.py. Every BaseModel subclass joins MODELS, so
create_tables() creates the tables of every module imported by then;
importing jobs imports them all.
"""

import datetime
import hashlib
import hmac
import json
import logging
import math
import secrets

from peewee import BooleanField, CharField, DateTimeField, FloatField, ForeignKeyField, IntegerField, SqliteDatabase, TextField, fn
from peewee import chunked  # noqa: F401 re-exported: apps import it from here
from playhouse.migrate import SchemaMigrator, migrate

import guard
import settings
from database import (  # noqa: F401 re-exported: callers import the plumbing from models
    MODELS,
    STATUSES,
    TERMINAL,
    WAITING,
    WAL_CHECKPOINT_PAGES,
    BaseModel,
    _clock,
    add_column_once,
    bulk_insert,
    check_database,
    checkpoint,
    close_all_connections,
    create_tables_once,
    db,
    schema_change,
    db_now,
    db_time,
    decode_cursor,
    encode_cursor,
    isoformat,
    keyset_page,
    open_database,
    parse_time,
    utcnow,
    values_in,
    wal_pages,
)
from job_counts import DURATION_BUCKETS, JobCount, JobDuration, install_job_triggers  # noqa: F401 re-exported
from job_queries import JobQueries
from keys import ApiKey, CallCounter, KeyRevision  # noqa: F401 re-exported
from schedule_tables import ScheduleChange, ScheduleRun, ScheduleState, StoredSchedule  # noqa: F401 re-exported

logger = logging.getLogger("litejobs.models")


class SchemaVersion(BaseModel):
    """The number of the last migration applied."""

    version = IntegerField()


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


class LoginFailure(BaseModel):
    """A failed dashboard login under a key ("email:…" or "ip:…"). The throttle
    counts these rows, so it holds across every web process on the database."""

    WINDOW = datetime.timedelta(minutes=15)

    key = CharField()
    at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "login_failure"
        indexes = ((("key", "at"), False),)

    @classmethod
    def wait(cls, key, limit, now=None):
        """Seconds until `key` may try again: 0 while it has fewer than `limit` failures in WINDOW."""
        now = now or utcnow()
        recent = cls.select(cls.at).where((cls.key == key) & (cls.at > now - cls.WINDOW))
        times = [row.at for row in recent.order_by(cls.at.desc()).limit(limit)]
        if len(times) < limit:
            return 0
        # When the limit-th newest failure leaves the window, fewer than `limit` are left.
        return max(math.ceil((times[-1] + cls.WINDOW - now).total_seconds()), 1)

    @classmethod
    def record(cls, *keys, now=None):
        now = now or utcnow()
        cls.insert_many([{"key": key, "at": now} for key in keys]).execute()

    @classmethod
    def clear(cls, key):
        cls.delete().where(cls.key == key).execute()

    @classmethod
    def delete_old(cls, now=None):
        """Forget failures past the window; returns how many."""
        return cls.delete().where(cls.at <= (now or utcnow()) - cls.WINDOW).execute()


class Worker(BaseModel):
    """A consumer process, alive while its heartbeat is fresh by the database's clock."""

    id = CharField(primary_key=True)
    host = CharField()
    pid = IntegerField()
    kind = CharField()
    concurrency = IntegerField()
    started_at = DateTimeField(default=utcnow)
    last_heartbeat = DateTimeField(default=utcnow, index=True)
    stopped_at = DateTimeField(null=True)
    apps = TextField(default="")  # the apps it loaded, comma-separated (loader.load_apps)
    queues = TextField(default="")  # the queues it serves, comma-separated (QUEUES); empty: every queue

    @classmethod
    def alive(cls, now=None):
        """Consumers that beat within HEARTBEAT_TIMEOUT, by the database's clock (or `now`'s)."""
        if now is None:
            cutoff = db_time(-settings.HEARTBEAT_TIMEOUT)
        else:
            cutoff = now - datetime.timedelta(seconds=settings.HEARTBEAT_TIMEOUT)
        return cls.select().where((cls.last_heartbeat >= cutoff) & cls.stopped_at.is_null())

    @classmethod
    def listed(cls, now=None):
        """Consumers alive or seen in the last day, newest first; one dead longer lives on in its jobs' history."""
        cutoff = (now or utcnow()) - datetime.timedelta(days=1)
        return cls.select().where(cls.last_heartbeat >= cutoff).order_by(cls.started_at.desc())

    @classmethod
    def beat(cls, worker_id):
        cls.update(last_heartbeat=db_time()).where(cls.id == worker_id).execute()

    def is_alive(self, now=None):
        cutoff = (now or db_now()) - datetime.timedelta(seconds=settings.HEARTBEAT_TIMEOUT)
        return self.stopped_at is None and self.last_heartbeat >= cutoff

    def to_dict(self, running=(), now=None):
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "kind": self.kind,
            "concurrency": self.concurrency,
            "started_at": isoformat(self.started_at),
            "last_heartbeat": isoformat(self.last_heartbeat),
            "alive": self.is_alive(now),
            "running": list(running),
            "apps": self.app_names,
            "queues": self.queue_names or None,
        }

    @property
    def app_names(self):
        return [name for name in self.apps.split(",") if name]

    @property
    def queue_names(self):
        """The queues it serves; [] for every queue."""
        return [name for name in (self.queues or "").split(",") if name]


class Job(JobQueries, BaseModel):
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
    terminate_requested = BooleanField(default=False)  # cancel with terminate=true: stop it at once (stops.py)
    recoveries = IntegerField(default=0)
    waiting_for = CharField(null=True)
    api_key_id = IntegerField(null=True)
    idempotency_key = CharField(null=True)
    # The token of the run holding the job (runs.py): each start takes a new one, and
    # every later write of that run names it, so a run whose claim was taken over
    # writes nothing more. The lease, by the database's clock, is renewed by the
    # holder's heartbeat; a lapsed one may be taken over.
    claim = CharField(null=True)
    lease_until = DateTimeField(null=True)

    class Meta:
        indexes = (
            (("enqueued_at", "id"), False),
            (("name", "status", "enqueued_at"), False),
            (("status", "enqueued_at"), False),
            (("status", "finished_at"), False),
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

    @classmethod
    def by_idempotency_key(cls, api_key_id, name, key):
        return cls.get_or_none(
            (cls.api_key_id == api_key_id) & (cls.name == name) & (cls.idempotency_key == key)
        )

    def children(self):
        """Jobs started as retries of this one."""
        return Job.select().where(Job.parent_id == self.id).order_by(Job.enqueued_at)

    # -- state changes (each one short statement, safe to repeat) -----------
    # Every job runs these statements once, so they are written out here:
    # peewee takes 4-8x longer to build such an UPDATE than SQLite takes to run
    # it (profiled in bench/, issue 7), which capped the drain at a third of
    # plain huey's. `{p}` is the driver's placeholder (? or %s); {lease} and
    # {now} are the database's clock (db_time).
    #
    # The claim: one conditional UPDATE takes a job that waits, or one whose
    # run's lease lapsed, and gives the run a new token. Every later write of
    # the run names that token and finds nothing once the claim was taken over
    # (or the job canceled), so a run that lost its claim writes nothing more.
    _MARK_RUNNING_SQL = (
        'UPDATE "job" SET "status" = {p}, "started_at" = {p}, "worker" = {p}, "consumer_id" = {p}, '
        '"attempts" = ("attempts" + 1), "waiting_for" = NULL, "claim" = {p}, "lease_until" = {lease} '
        'WHERE ("id" = {p}) AND ("status" IN ({p}, {p}, {p}) OR ("status" = {p} AND "lease_until" < {now}))'
    )
    _MARK_FINISHED_SQL = (
        'UPDATE "job" SET "status" = {p}, "result" = {p}, "error" = {p}, "traceback" = {p}, '
        '"finished_at" = {p}, "duration_ms" = {p} '
        'WHERE ("id" = {p}) AND ("status" NOT IN ({p}, {p}, {p}, {p}))'
    )
    # A quick run's claim and outcome at once (runs.CLAIM_AFTER): the job still waits
    # as it did when the run began, or runs under this run's claim, written meanwhile.
    _CLAIM_AND_FINISH_SQL = (
        'UPDATE "job" SET "status" = {p}, "result" = {p}, "error" = {p}, "traceback" = {p}, '
        '"finished_at" = {p}, "duration_ms" = {p}, "started_at" = {p}, "worker" = {p}, "consumer_id" = {p}, '
        '"claim" = {p}, "waiting_for" = NULL, "attempts" = ("attempts" + (CASE WHEN "status" = {p} THEN 0 ELSE 1 END)) '
        'WHERE ("id" = {p}) AND ("status" IN ({p}, {p}) OR ("status" = {p} AND "claim" = {p}))'
    )
    _FINISH_RUN_SQL = (
        'UPDATE "job" SET "status" = {p}, "result" = {p}, "error" = {p}, "traceback" = {p}, '
        '"finished_at" = {p}, "duration_ms" = {p} '
        'WHERE ("id" = {p}) AND ("claim" = {p}) AND ("status" = {p})'
    )

    @classmethod
    def record(cls, **values):
        """Insert a new job row (Job.create, faster) and return it."""
        job = cls(**values)
        cls.insert_rows([job])
        return job

    @classmethod
    def insert_rows(cls, jobs):
        """Insert new job rows (unsaved Job instances) in one transaction.

        Every enqueue runs this: a 28-column INSERT takes peewee ~0.5 ms to
        build, half the cost of an HTTP enqueue (bench/, issue 7). The SQL is
        made from the model's own fields, so new columns and their defaults
        (filled in by the model as ever) come along without an edit here.
        """
        fields = cls._meta.sorted_fields
        sql = 'INSERT INTO "{}" ({}) VALUES ({})'.format(
            cls._meta.table_name,
            ", ".join(f'"{field.column_name}"' for field in fields),
            ", ".join([db.param] * len(fields)),
        )
        rows = [[field.db_value(job.__data__.get(field.name)) for field in fields] for job in jobs]
        if len(rows) == 1:  # a statement is its own transaction
            db.execute_sql(sql, rows[0])
            return
        with db.atomic():
            for row in rows:
                db.execute_sql(sql, row)

    @classmethod
    def _run(cls, sql, params):
        """Run one of the statements above; returns the number of rows changed."""
        return db.execute_sql(sql.format(p=db.param), params).rowcount

    @classmethod
    def mark_running(cls, job_id, worker, consumer_id, now=None, limits=(), claim=None, lease_seconds=None):
        """Claim a job for a run: mark it running (attempts + 1) with a new claim
        token and a lease of `lease_seconds` (HEARTBEAT_TIMEOUT); returns the
        token, or None when the job is not waiting nor held under a lapsed
        lease. `now` is its started_at.

        `limits` are ("queue:<name>" or "function:<name>", N) pairs: the job
        starts only while fewer than N other jobs of that queue or function
        run. A running row is the place it holds, so whatever ends the run
        (finish, retry, the reaper) frees it, with no write of its own.
        """
        lease, lease_param = _clock(settings.HEARTBEAT_TIMEOUT if lease_seconds is None else lease_seconds)
        clock, now_param = _clock(0)
        sql = cls._MARK_RUNNING_SQL.replace("{lease}", lease).replace("{now}", clock)
        claim = claim or secrets.token_hex(8)
        params = ["running", now or utcnow(), worker, consumer_id, claim, lease_param, job_id, *WAITING, "running", now_param]
        for key, limit in limits:
            kind, _, value = key.partition(":")
            column = "queue" if kind == "queue" else "name"
            sql += f' AND ((SELECT COUNT(*) FROM "job" WHERE "status" = {{p}} AND "{column}" = {{p}} AND "id" <> {{p}}) < {{p}})'
            params += ["running", value, job_id, limit]
        if not limits or isinstance(db.obj, SqliteDatabase):
            # SQLite's UPDATE takes the write lock before it reads: the counts are current.
            return claim if cls._run(sql, params) else None
        with db.atomic():
            # PostgreSQL counts from a snapshot, so two consumers could both see
            # a free place; a lock per limit, held to commit, puts starts in line.
            for key, _ in sorted(limits):
                db.execute_sql(f"SELECT pg_advisory_xact_lock(hashtext({db.param}))", (f"litejobs:{key}",))
            return claim if cls._run(sql, params) else None

    @classmethod
    def status_of(cls, job_id):
        """The job's status, or None when there is no such job."""
        row = db.execute_sql('SELECT "status" FROM "job" WHERE "id" = {p}'.format(p=db.param), (job_id,)).fetchone()
        return row[0] if row else None

    @classmethod
    def mark_finished(cls, job_id, status, result=None, error=None, traceback=None, started_at=None, claim=None,
                      claimed=True, worker=None, consumer_id=None):
        """Put a job in terminal `status`. A worker passes the `started_at` it
        wrote, which saves reading the row back to compute the duration, and
        its `claim`: then only a job still running under that claim changes.
        With `claimed=False` the claim is not written yet (a quick run): it is
        written with the outcome, by `worker` of `consumer_id`, if the job still
        waits (queued or scheduled) or runs under that claim."""
        now = utcnow()
        if started_at is None:
            started_at = cls.select(cls.started_at).where(cls.id == job_id).scalar()
            if isinstance(started_at, str):  # a bare column comes back as SQLite text
                started_at = datetime.datetime.fromisoformat(started_at)
        duration = None if started_at is None else round((now - started_at).total_seconds() * 1000, 3)
        result = None if result is None else guard.dumps(result, default=str)  # NaN is no JSON: stored as null
        if claim is not None and not claimed:
            params = (status, result, error, traceback, now, duration, started_at, worker, consumer_id, claim, "running",
                      job_id, "queued", "scheduled", "running", claim)
            return cls._run(cls._CLAIM_AND_FINISH_SQL, params)
        if claim is not None:
            return cls._run(cls._FINISH_RUN_SQL, (status, result, error, traceback, now, duration, job_id, claim, "running"))
        params = (status, result, error, traceback, now, duration, job_id, *TERMINAL)
        return cls._run(cls._MARK_FINISHED_SQL, params)

    @classmethod
    def confirm(cls, job_ids, statuses):
        """Turn `pending` rows (written before their message) into `statuses` ({id: status})
        once the message is in the queue; returns the ids confirmed. A row found
        no longer pending was removed: its enqueue failed, so its job never runs."""
        confirmed = []
        by_status = {}
        for job_id in job_ids:
            by_status.setdefault(statuses[job_id], []).append(job_id)
        for status, ids in by_status.items():
            if len(ids) == 1:  # every single enqueue: the row count says it all
                if cls._run('UPDATE "job" SET "status" = {p} WHERE "id" = {p} AND "status" = {p}', (status, ids[0], "pending")):
                    confirmed.append(ids[0])
                continue
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                sql = 'UPDATE "job" SET "status" = {p} WHERE "status" = {p} AND "id" IN ({ids}) RETURNING "id"'
                sql = sql.format(p=db.param, ids=", ".join([db.param] * len(chunk)))
                confirmed.extend(row[0] for row in db.execute_sql(sql, (status, "pending", *chunk)).fetchall())
        return confirmed

    @classmethod
    def forget_pending(cls, job_ids):
        """Delete rows still `pending`: their enqueue failed and was answered with an error."""
        job_ids = list(job_ids)
        for start in range(0, len(job_ids), 500):
            cls.delete().where(cls.id.in_(job_ids[start : start + 500]) & (cls.status == "pending")).execute()

    @classmethod
    def _held(cls, job_id, claim):
        """The job, if `claim` is None; else the job only while it runs under `claim`."""
        if claim is None:
            return cls.id == job_id
        return (cls.id == job_id) & (cls.claim == claim) & (cls.status == "running")

    @classmethod
    def mark_retrying(cls, job_id, error, traceback, eta=None, claim=None):
        where = cls._held(job_id, claim)
        if claim is None:
            where &= cls.status.not_in(TERMINAL)
        return cls.update(status="retrying", error=error, traceback=traceback, scheduled_for=eta).where(where).execute()

    @classmethod
    def set_progress(cls, job_id, done, total, message, claim=None):
        """Write a run's progress; returns 0 when the run no longer holds its `claim`."""
        return (
            cls.update(progress_done=done, progress_total=total, progress_message=message)
            .where(cls._held(job_id, claim))
            .execute()
        )

    @classmethod
    def renew_leases(cls, claims, seconds=None):
        """Extend the lease of each run in `claims` ({job id: token}) still holding its job; returns how many."""
        if not claims:
            return 0
        lease = db_time(settings.HEARTBEAT_TIMEOUT if seconds is None else seconds)
        return (
            cls.update(lease_until=lease)
            .where(cls.id.in_(list(claims)) & cls.claim.in_(list(claims.values())) & (cls.status == "running"))
            .execute()
        )

    @classmethod
    def lapsed(cls, alive_consumers):
        """Running jobs whose lease lapsed by the database's clock (rows written before
        leases existed: whose consumer is not in `alive_consumers`)."""
        legacy = cls.lease_until.is_null() & cls.consumer_id.is_null(False) & cls.consumer_id.not_in(alive_consumers or [""])
        return cls.select().where((cls.status == "running") & ((cls.lease_until < db_time()) | legacy))

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


def _add_key_scope(migrator):
    """6: API keys get a scope; keys made before could do everything, so they stay admin."""
    steps = add_column_once(migrator, "apikey", "scope", CharField(default="admin"))  # tables made since have it
    create_tables_once(migrator, [KeyRevision])  # revokes bump it (the key cache of every web process)
    return steps + [migrator.sql("""UPDATE "apikey" SET "scope" = 'admin' WHERE "scope" IS NULL""")]


# Each migration takes a SchemaMigrator; append, never edit or reorder.
MIGRATIONS = [
    # 1: concurrency limits count running jobs instead of keeping a table of places.
    lambda migrator: [migrator.sql('DROP TABLE IF EXISTS "slot"')],
    # 2: each consumer records the apps it loaded (GET /api/v1/workers, /health/ready).
    lambda migrator: add_column_once(migrator, "worker", "apps", TextField(default="")),
    # 3: a run's claim token and lease (runs.py); a row running without one is judged by its consumer's heartbeat.
    lambda migrator: add_column_once(migrator, "job", "claim", CharField(null=True))
    + add_column_once(migrator, "job", "lease_until", DateTimeField(null=True)),
    # 4: cancel with terminate=true (stops.py).
    lambda migrator: add_column_once(migrator, "job", "terminate_requested", BooleanField(default=False)),
    # 5: schedules added and edited at run time, and the log of their changes.
    lambda migrator: create_tables_once(migrator, [StoredSchedule, ScheduleChange]),
    # 6: API key scopes (read or admin) and the revision that makes a revoke immediate.
    _add_key_scope,
    # (consumer queues): each consumer records the queues it serves (QUEUES); empty: every queue.
    lambda migrator: add_column_once(migrator, "worker", "queues", TextField(default="")),
]


def create_tables():
    """Create missing tables and apply pending migrations; safe to run at every start,
    also by several processes at once (schema_change)."""
    with db.connection_context(), schema_change():
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
