"""litejobs API keys: the keys (stored as SHA-256), their scopes, the revision that
lets every web process drop a revoked key at once, and the per-key call counts
written once a second."""

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time

from peewee import BooleanField, CharField, DateTimeField, IntegerField, SqliteDatabase

from database import BaseModel, db, isoformat, utcnow

logger = logging.getLogger("litejobs.models")


class ApiKey(BaseModel):
    """An API key; only its SHA-256 is stored, the key itself is shown once."""

    name = CharField()
    prefix = CharField()
    key_hash = CharField(unique=True)
    created_at = DateTimeField(default=utcnow)
    last_used_at = DateTimeField(null=True)
    calls_today = IntegerField(default=0)
    revoked = BooleanField(default=False)
    scope = CharField(default="admin")  # one of SCOPES

    # "read": GET requests only; "admin": everything, the key list and revoking included.
    SCOPES = ("read", "admin")

    @staticmethod
    def hash(key):
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    @classmethod
    def create_key(cls, name, scope="admin"):
        """Create a key; returns (row, the plain key)."""
        if scope not in cls.SCOPES:
            raise ValueError(f"scope: expected read or admin, got {scope!r}")
        key = "lj_" + secrets.token_urlsafe(32)
        row = cls.create(name=name, prefix=key[:8], key_hash=cls.hash(key), scope=scope)
        return row, key

    @classmethod
    def live(cls):
        return cls.select().where(cls.revoked == False).order_by(cls.created_at, cls.id)  # noqa: E712

    @classmethod
    def revoke(cls, name_or_prefix):
        """Revoke the live key with this prefix, or else the one live key with this name.

        Returns the key, or None when none matches; ValueError when several
        live keys have that name. Every web process's key cache sees the
        revoke at its next request (KeyRevision).
        """
        matches = list(cls.live().where((cls.prefix == name_or_prefix) | (cls.name == name_or_prefix)))
        chosen = [key for key in matches if key.prefix == name_or_prefix] or matches
        if len(chosen) > 1:
            prefixes = ", ".join(key.prefix for key in chosen)
            raise ValueError(f"{len(chosen)} live keys are named {name_or_prefix!r} ({prefixes}); give the prefix")
        if not chosen:
            return None
        with db.atomic():
            cls.update(revoked=True).where(cls.id == chosen[0].id).execute()
            KeyRevision.bump()
        KeyRevision.signal()  # after the commit: a process that sees it finds the key revoked
        return chosen[0]

    def to_dict(self):
        return {
            "name": self.name,
            "prefix": self.prefix,
            "scope": self.scope,
            "created_at": isoformat(self.created_at),
            "last_used_at": isoformat(self.last_used_at),
            "calls_today": self.calls_today,
        }

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


class KeyRevision(BaseModel):
    """A number that grows with every revoked key: a web process's key cache keeps
    the number it saw and trusts a cached key only while the number is unchanged."""

    number = IntegerField(default=0)

    class Meta:
        table_name = "key_revision"

    _CURRENT_SQL = 'SELECT "number" FROM "key_revision" WHERE "id" = 1'

    @classmethod
    def current(cls):
        # Read on every cached API call: a plain one-row statement, no model building.
        row = db.execute_sql(cls._CURRENT_SQL).fetchone()
        return row[0] if row else 0

    @classmethod
    def bump(cls):
        """Count one more revoke; call signal() once the transaction is committed."""
        cls.insert(id=1, number=1).on_conflict(conflict_target=[cls.id], update={cls.number: cls.number + 1}).execute()

    @classmethod
    def token(cls):
        """A value that changes whenever the revision does, read as cheaply as can be.

        On a SQLite file: the state of its signal file, one stat() and no query, so
        an API call whose key is cached needs no database connection (most enqueues
        need none: group_commit.py writes them). Elsewhere: the number itself.
        """
        path = signal_file(db.obj)
        if path is None:
            return cls.current()
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return "no revoke yet"
        except OSError:
            return cls.current()
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    @classmethod
    def signal(cls):
        """Tell every process on this SQLite file that the revision changed: one byte more in its signal file."""
        path = signal_file(db.obj)
        if path is None:
            return
        try:
            with open(path, "ab") as file:
                file.write(b"\n")
        except OSError as exc:  # the other processes then drop the key within AUTH_CACHE_SECONDS (api.py)
            logger.warning("could not write %s, so other web processes may take a few seconds to see the revoke: %s", path, exc)


def signal_file(database):
    """The file beside a SQLite database file whose every change means a key was revoked, or None."""
    if not isinstance(database, SqliteDatabase):
        return None
    name = database.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return f"{name}-keys"


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
