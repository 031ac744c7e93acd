"""litejobs models: the Peewee tables shared by the web process and consumers.

SQLite (WAL) by default, PostgreSQL by `DATABASE_URL`. Queries live here as
model methods; web.py and jobs.py combine them and write no SQL.
"""

import base64
import datetime
import hashlib
import hmac
import json
import secrets
from pathlib import Path

from peewee import (
    BooleanField,
    CompositeKey,
    CharField,
    DatabaseProxy,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    IntegrityError,
    Model,
    SqliteDatabase,
    TextField,
    Tuple,
    fn,
)
from playhouse.db_url import connect as connect_url
from playhouse.migrate import SchemaMigrator, migrate

import settings

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


def open_database(url):
    """A Peewee database for `url`; SQLite gets WAL, a busy timeout and IMMEDIATE writes."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        settings.ensure_dir(path.parent, "DATABASE_URL")
        # IMMEDIATE: a write transaction takes the lock up front, so it waits on
        # the busy timeout instead of failing later with SQLITE_BUSY_SNAPSHOT.
        return SqliteDatabase(
            str(path),
            pragmas={"journal_mode": "wal", "foreign_keys": 1, "cache_size": -16000, "synchronous": "normal"},
            timeout=10,
            lock_type="IMMEDIATE",
        )
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
        row = cls.get_or_none((cls.key_hash == digest) & (cls.revoked == False))  # noqa: E712
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return row

    def touch(self):
        """Count a call; errors here must never fail the request."""
        ApiKey.update(last_used_at=utcnow(), calls_today=ApiKey.calls_today + 1).where(
            ApiKey.id == self.id
        ).execute()


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


class Slot(BaseModel):
    """One of the N places a concurrency limit allows; a running job holds one per limit."""

    key = CharField()
    number = IntegerField()
    job_id = CharField(index=True)
    consumer_id = CharField(null=True, index=True)
    acquired_at = DateTimeField(default=utcnow)

    class Meta:
        primary_key = CompositeKey("key", "number")

    @classmethod
    def acquire(cls, limits, job_id, consumer_id):
        """Take a place under every (key, limit); all or none. Returns True when taken."""
        for key, limit in limits:
            for number in range(limit):
                try:
                    with db.atomic():  # a savepoint, so a clash leaves the outer state usable
                        cls.create(key=key, number=number, job_id=job_id, consumer_id=consumer_id)
                    break
                except IntegrityError:
                    continue
            else:
                cls.release(job_id)
                return False
        return True

    @classmethod
    def release(cls, job_id):
        cls.delete().where(cls.job_id == job_id).execute()

    @classmethod
    def held(cls, key):
        return cls.select().where(cls.key == key).count()


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
    @classmethod
    def mark_running(cls, job_id, worker, consumer_id):
        return (
            cls.update(
                status="running",
                started_at=utcnow(),
                worker=worker,
                consumer_id=consumer_id,
                attempts=cls.attempts + 1,
                waiting_for=None,
            )
            .where((cls.id == job_id) & cls.status.not_in(TERMINAL))
            .execute()
        )

    @classmethod
    def mark_finished(cls, job_id, status, result=None, error=None, traceback=None):
        now = utcnow()
        job = cls.get_or_none(cls.id == job_id)
        if job is None:
            return 0
        duration = None
        if job.started_at is not None:
            duration = round((now - job.started_at).total_seconds() * 1000, 3)
        return (
            cls.update(
                status=status,
                result=None if result is None else json.dumps(result, default=str),
                error=error,
                traceback=traceback,
                finished_at=now,
                duration_ms=duration,
            )
            .where((cls.id == job_id) & cls.status.not_in(TERMINAL))
            .execute()
        )

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


MODELS = [SchemaVersion, ApiKey, User, Token, Slot, Worker, Job]

# Each migration takes a SchemaMigrator; append, never edit or reorder.
MIGRATIONS = []


def create_tables():
    """Create missing tables and apply pending migrations; safe to run at every start."""
    with db.connection_context():
        db.create_tables(MODELS, safe=True)
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
