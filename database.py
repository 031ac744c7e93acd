"""litejobs database plumbing: the connection, the base model and the helpers every table uses.

`db` is opened here from `DATABASE_URL` (SQLite in WAL mode, or PostgreSQL
through dburl.py). Here too: BaseModel and its MODELS registry, the job status
names, UTC time helpers and the database's own clock (db_time), keyset pages,
bulk inserts, migration helpers, WAL checkpoints and closing connections
before a fork. The tables themselves live in models.py and the apps.
"""

import base64
import contextlib
import datetime
import time
from pathlib import Path

from peewee import SQL, DatabaseProxy, Model, SqliteDatabase, Tuple, chunked
from playhouse.pool import PooledDatabase, PooledSqliteDatabase

import dburl
import settings

db = DatabaseProxy()

TERMINAL = ("succeeded", "failed", "canceled", "expired")
# `pending`, never shown: with a queue apart from the database (Redis, another file), a
# row written before its queue message, until the message is in the queue. A consumer
# does not run a pending job, so a failed enqueue never runs. With the queue in the
# database (the default) the row and its message commit together: no pending step.
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


def wal_pages(path):
    """WAL_CHECKPOINT_PAGES, or fewer on a small disk: a WAL takes at most 2% of the
    disk of `path` (at least 100 pages), so a 20 MB disk is not filled by its own logs."""
    import shutil

    try:
        total = shutil.disk_usage(Path(path).resolve().parent).total
    except OSError:
        return WAL_CHECKPOINT_PAGES
    return max(100, min(WAL_CHECKPOINT_PAGES, total // 50 // 4096))


def is_locked(exc):
    """True for SQLite's "database is locked": another connection holds the write lock."""
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


def wait_while_locked(call, timeout):
    """`call()`, tried again while SQLite answers that the database is locked, for up to `timeout` s.

    Every SQLite connection of litejobs has a busy timeout of 0 and waits here
    instead. SQLite's own busy handler sleeps 1, 2, 5, 10 … ms between tries,
    so a producer and a consumer meeting on the write lock take turns in
    milliseconds for writes of ~0.1 ms; here a waiter looks again after 50 µs,
    growing to 2 ms. The pause is Python's time.sleep: under gevent it lets the
    other greenlets run (one of them may hold the lock), where the busy handler
    sleeps in C and stops them all.
    """
    try:
        return call()
    except Exception as exc:
        if not is_locked(exc):
            raise
    deadline = time.monotonic() + timeout
    pause = 0.00005
    while True:
        time.sleep(pause)
        try:
            return call()
        except Exception as exc:
            if not is_locked(exc) or time.monotonic() >= deadline:
                raise
        pause = min(pause * 1.5, 0.002)


class LitejobsSqliteDatabase(PooledSqliteDatabase):
    """Pooled SQLite connections that wait for the write lock in Python (wait_while_locked).

    The busy timeout (`timeout`) still applies while a connection opens and sets
    its pragmas; after that it is 0, and a statement outside a transaction, or
    the BEGIN IMMEDIATE of one, is tried again here. Inside an IMMEDIATE
    transaction the lock is held already, so its statements never wait.
    """

    def _connect(self):
        conn = super()._connect()
        conn.execute("pragma busy_timeout=0")
        return conn

    def begin(self, lock_type=None):
        parent = super().begin
        wait_while_locked(lambda: parent(lock_type), self._timeout)

    def execute_sql(self, sql, params=None):
        if self.transaction_depth():
            return super().execute_sql(sql, params)
        parent = super().execute_sql
        return wait_while_locked(lambda: parent(sql, params), self._timeout)


def open_database(url):
    """A Peewee database for `url`; SQLite gets WAL, a busy timeout and IMMEDIATE writes,
    PostgreSQL a connection pool (dburl.py)."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        settings.ensure_dir(path.parent, "DATABASE_URL")
        # IMMEDIATE: a write transaction takes the lock up front, so it waits on
        # the busy timeout instead of failing later with SQLITE_BUSY_SNAPSHOT.
        # Pooled: the web process opens a connection per request, and opening a
        # WAL database costs ~0.9 ms here, a quarter of a whole enqueue over HTTP
        # (bench/, issue 7). close() hands the connection back to the pool; each
        # thread or greenlet still has its own while it holds one.
        # journal_size_limit: after a checkpoint the WAL file shrinks back to that size.
        pages = wal_pages(path)
        database = LitejobsSqliteDatabase(
            str(path),
            pragmas={
                "journal_mode": "wal",
                "foreign_keys": 1,
                "cache_size": -16000,
                "synchronous": "normal",
                "wal_autocheckpoint": pages,
                "journal_size_limit": pages * 4096,
            },
            max_connections=None,
            stale_timeout=300,
            lock_type="IMMEDIATE",
            check_same_thread=False,  # a pooled connection moves between threads, one at a time
        )
        database.timeout = 10  # the busy timeout (the pool's own `timeout` is its wait for a free connection)
        return database
    return dburl.open_postgres(url)


MODELS = []  # every table; each BaseModel subclass adds itself

SCHEMA_LOCK_KEY = 0x6C6A7363  # "ljsc": the advisory lock one schema change at a time holds


@contextlib.contextmanager
def schema_change():
    """Create and migrate tables one process at a time.

    On PostgreSQL `CREATE TABLE IF NOT EXISTS` is not safe against another
    session doing the same at once: when several consumers meet a new database
    together, all but one fail with "relation … already exists". There the
    change runs in one transaction under an advisory lock (DDL is
    transactional). SQLite takes its write lock for a schema change itself.
    """
    if db.obj is None or isinstance(db.obj, SqliteDatabase):
        yield
        return
    with db.atomic():
        db.execute_sql("select pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        yield


def encode_cursor(stamp, row_id):
    """An opaque cursor for keyset pages ordered by (time, id), newest first."""
    raw = f"{stamp.isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor):
    """(time, id) from a cursor; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        return datetime.datetime.fromisoformat(stamp), row_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("not a cursor returned by this API") from exc


def keyset_page(query, stamp_field, limit, cursor=None):
    """One page of `query`, newest first by (stamp_field, id), after `cursor` if given;
    returns (rows, the next page's cursor or None). ValueError for a bad cursor."""
    model = stamp_field.model
    if cursor:
        stamp, row_id = decode_cursor(cursor)
        query = query.where(Tuple(stamp_field, model.id) < Tuple(stamp, row_id))
    rows = list(query.order_by(stamp_field.desc(), model.id.desc()).limit(limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(getattr(rows[-1], stamp_field.name), rows[-1].id) if more else None)


def values_in(field, values, chunk=500):
    """The subset of `values` that some row holds in `field`, asked a chunk at a time
    (SQLite caps the parameters of one statement)."""
    found = set()
    for start in range(0, len(values), chunk):
        query = field.model.select(field).where(field.in_(values[start : start + chunk]))
        found.update(getattr(row, field.name) for row in query)
    return found


class BaseModel(Model):
    class Meta:
        database = db

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Tables live in the modules of their concern: registering each one as
        # it is defined spares create_tables() a list to keep in step by hand.
        if not cls.__dict__.get("_abstract"):  # a base of other tables' fields, no table itself
            MODELS.append(cls)


def db_time(seconds=0.0):
    """SQL for the database's own clock, `seconds` from now, as a naive UTC time.

    Leases and heartbeats are written and compared by this one clock, never by
    a host's: a consumer whose clock is off must not look dead, nor make a live
    run look lapsed. PostgreSQL uses its `now()`; SQLite the clock of the host
    writing the file, which every process of a local SQLite file shares.
    """
    text, param = _clock(seconds)
    return SQL(text.format(p=db.param), [param])


def _clock(seconds):
    """db_time() as (SQL text with a `{p}` placeholder, its parameter)."""
    if isinstance(db.obj, SqliteDatabase):
        return "strftime('%Y-%m-%d %H:%M:%f', 'now', {p})", f"{seconds:+.3f} seconds"
    return "((now() AT TIME ZONE 'UTC') + {p} * interval '1 second')", float(seconds)


def db_now():
    """The database's current time (see db_time)."""
    now = db_time()
    value = db.execute_sql("SELECT " + now.sql, now.params).fetchone()[0]
    return datetime.datetime.fromisoformat(value) if isinstance(value, str) else value


# -- Writing many rows ---------------------------------------------------------------
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


def add_column_once(migrator, table, name, field):
    """The operations adding column `name` to `table`, or none when it is there already."""
    if name in {column.name for column in migrator.database.get_columns(table)}:
        return []
    return [migrator.add_column(table, name, field)]


def create_tables_once(migrator, tables):
    """Create `tables` where missing; no operations for the migrator to run."""
    migrator.database.create_tables(tables, safe=True)
    return []


def check_database():
    """Raise OperationalError when the database cannot answer a trivial query."""
    db.execute_sql("SELECT 1")


def checkpoint():
    """Copy what the SQLite WAL holds into the database file without blocking
    readers or writers (a PASSIVE checkpoint); nothing on PostgreSQL."""
    if isinstance(db.obj, SqliteDatabase):
        db.execute_sql("PRAGMA wal_checkpoint(PASSIVE)")


def close_all_connections():
    """Close every database connection of this process, pooled ones too.

    Called before forking worker processes: SQLite forbids using a connection
    opened before a fork in the child, and a pooled PostgreSQL socket shared by
    two processes mixes their replies.
    """
    if isinstance(db.obj, PooledDatabase):
        db.obj.close_all()
    else:
        db.close()


db.initialize(open_database(settings.DATABASE_URL))
