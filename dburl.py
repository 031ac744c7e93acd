"""litejobs database URLs: the forms people paste, and a pooled PostgreSQL.

`DATABASE_URL` on PostgreSQL may be written `postgres://`, `postgresql://`,
`postgresql+pool://` or `postgresql+psycopg://`, with libpq options
(`?sslmode=require&connect_timeout=5`) and pool options
(`?max_connections=20&stale_timeout=300`). Every form opens the same pooled
database: a web request or a job takes a connection from the pool and hands
it back when it ends, instead of opening its own.
"""

import time
from urllib.parse import urlsplit

from peewee import OperationalError
from playhouse.db_url import parse as parse_url
from playhouse.pool import MaxConnectionsExceeded, PooledPostgresqlDatabase

import settings

POOL_OPTIONS = ("max_connections", "stale_timeout", "timeout")
STALE_SECONDS = 300  # a connection idle this long is closed instead of reused
WAIT_SECONDS = 10  # how long a request or job waits for a free connection before 503 / retry


def normalize(url):
    """The URL with a plain `postgresql://` scheme for any PostgreSQL form; others unchanged."""
    scheme = urlsplit(url).scheme
    if scheme.split("+")[0] in ("postgres", "postgresql"):
        return "postgresql" + url[len(scheme) :]
    return url


class PoolExhausted(OperationalError):
    """Every connection of this process's pool stayed in use: litejobs' own words, safe to show."""


def pool_exhausted(exc):
    """Whether `exc` is, or was raised from, a PoolExhausted (peewee wraps it in its own OperationalError)."""
    while exc is not None:
        if isinstance(exc, PoolExhausted):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class PooledPostgres(PooledPostgresqlDatabase):
    """A PostgreSQL pool whose exhaustion is a database error (503 in the API), not a ValueError.

    peewee checks each connection it hands out with a query (a round trip):
    per job, that cost a fifth of the PostgreSQL drain (bench/, drain-postgresql-thread).
    A connection handed back less than PING_AFTER_IDLE seconds ago is taken
    as it is; one idle for longer (the server may have dropped it) is pinged.
    """

    PING_AFTER_IDLE = 1.0

    def __init__(self, *args, **kwargs):
        self._returned_at = {}  # connection key -> monotonic time it came back to the pool
        super().__init__(*args, **kwargs)

    def _is_closed(self, conn):
        if conn.closed or getattr(conn, "broken", False):
            return True
        returned = self._returned_at.get(self.conn_key(conn))
        if returned is not None and time.monotonic() - returned < self.PING_AFTER_IDLE:
            return False
        return super()._is_closed(conn)

    def _close(self, conn, close_conn=False):
        self._returned_at[self.conn_key(conn)] = time.monotonic()
        super()._close(conn, close_conn)

    def _close_raw(self, conn):
        self._returned_at.pop(self.conn_key(conn), None)
        super()._close_raw(conn)

    def connect(self, reuse_if_open=False):
        try:
            return super().connect(reuse_if_open)
        except MaxConnectionsExceeded:
            raise PoolExhausted(
                f"all {self._max_connections} database connections of this process stayed in use for "
                f"{self._wait_timeout:g} s; raise DATABASE_POOL_SIZE (and PostgreSQL's max_connections)"
            ) from None


def open_postgres(url):
    """A pooled PostgreSQL database for any accepted form of `url`."""
    options = parse_url(normalize(url), unquote_password=True, unquote_user=True)
    pool = {"max_connections": settings.DATABASE_POOL_SIZE, "stale_timeout": STALE_SECONDS, "timeout": WAIT_SECONDS}
    for name in POOL_OPTIONS:
        if name in options:
            pool[name] = options.pop(name)
    if not options.get("database"):
        raise ValueError("DATABASE_URL has no database name; use postgresql://user:password@host:port/dbname")
    return PooledPostgres(options.pop("database"), **pool, **options)
