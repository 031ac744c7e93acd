"""litejobs queue storage: huey's SQLite, Redis and PostgreSQL storages, one huey queue per litejobs queue.

A consumer may serve only some queues (QUEUES=media,sync), so each litejobs
queue is a queue of its own in the storage: rows of huey's task table with
their own `queue` value on SQLite and PostgreSQL, a sorted set of its own on
Redis. `enqueue(data, priority, queue)` writes to one; `dequeue()` takes the
next message of the queues in `reading` (set by jobs.LitejobsHuey.serve) in
one query or one round trip, highest message priority first, then oldest, as
one queue of them all would.

The default queue keeps huey's own name (QUEUE_NAME) in the storage, so
messages queued before queues were apart still run; every other queue is
`QUEUE_NAME.<queue>`. huey's own reads (pending(), the queue's size, flush)
cover them all.
"""

import contextlib
import functools
import os
import struct
import time

from huey.registry import Message
from peewee import PostgresqlDatabase
from playhouse.db_url import parse as parse_url
from huey.storage import PostgresStorage, PriorityRedisStorage, SqliteStorage

import dburl
from database import wait_while_locked, wal_pages

DEFAULT_QUEUE = "default"


class QueuedMessage(Message):
    """huey's message plus the litejobs queue of its job, so a retry, a deferral or a
    scheduled run goes back to the queue it came from (a schedule may override a function's)."""

    @classmethod
    def of(cls, message, queue):
        if queue is None:
            return message
        queued = cls(*message)
        queued.queue = queue
        return queued


class RoutedQueues:
    """What the three storages share: the storage name of each queue and the queues read."""

    reading = None  # litejobs queue names this process dequeues from, highest priority first; None: not set yet

    def queue_name(self, queue):
        """The storage's name of litejobs queue `queue`."""
        return self.name if not queue or queue == DEFAULT_QUEUE else f"{self.name}.{queue}"

    def read_names(self):
        return [self.queue_name(queue) for queue in self.reading or (DEFAULT_QUEUE,)]


class SqlQueues(RoutedQueues):
    """The task-table reads of SQLite and PostgreSQL, over every queue of this name."""

    param = "?"

    def _all_queues(self):
        """A WHERE clause and its parameters matching the task rows of every queue of this name."""
        # A range, not LIKE: QUEUE_NAME may hold LIKE's wildcards ('_'); '/' sorts right after '.'.
        p = self.param
        return f"(queue = {p} or (queue >= {p} and queue < {p}))", (self.name, f"{self.name}.", f"{self.name}/")

    def queue_size(self):
        where, params = self._all_queues()
        return self.sql(f"select count(*) from {self.task_table} where {where}", params, results=True)[0][0]

    def enqueued_items(self, limit=None):
        where, params = self._all_queues()
        sql = f"select data from {self.task_table} where {where} order by priority desc, id"
        if limit is not None:
            sql += f" limit {int(limit)}"
        return [bytes(data) for (data,) in self.sql(sql, params, results=True)]

    def flush_queue(self):
        where, params = self._all_queues()
        self.sql(f"delete from {self.task_table} where {where}", params, commit=True)

    def write_in(self, database, items):
        """Insert (data, priority, queue) items through peewee `database`, in the transaction
        it has open: with the queue in the app database (shares_database), a job's row
        and its message commit together, and neither is ever there without the other."""
        p = self.param
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            params = [v for data, priority, queue in chunk for v in (self.queue_name(queue), self._blob(data), priority or 0)]
            values = ", ".join([f"({p}, {p}, {p})"] * len(chunk))
            database.execute_sql(f"insert into {self.task_table} (queue, data, priority) values {values}", params)


@functools.lru_cache(maxsize=16)
def _same_file(path, other):
    return isinstance(other, str) and os.path.realpath(path) == os.path.realpath(other)


def same_postgres(dsn, database):
    """True when `dsn` names the database, host, port and user that peewee `database` connects to."""
    if not dsn or not isinstance(database, PostgresqlDatabase):
        return False
    options = parse_url(dburl.normalize(dsn))
    ours = dict(database.connect_params, database=database.database)
    return all(options.get(key) == ours.get(key) for key in ("database", "host", "port", "user"))


@functools.lru_cache(maxsize=16)
def best_heads(count):
    """SQLite: the ids of the best N messages among `count` queues (parameters: each queue's
    name and N, then N), as best_of_heads reads the one best."""
    heads = " union all ".join(
        ["select * from (select id, priority from task where queue = ? order by priority desc, id limit ?)"] * count
    )
    return f"select id from ({heads}) order by priority desc, id limit ?"


@functools.lru_cache(maxsize=16)
def best_of_heads(count):
    """SQLite: the id of the best message among the heads of `count` queues."""
    # The head of each queue on the (queue, priority desc, id) index, then the best
    # of those: a few index seeks, read outside the write lock, as huey's own
    # "quick check" is. The short write transaction only deletes that row by id;
    # when another worker took it first, dequeue() looks again.
    heads = " union all ".join(
        ["select * from (select id, priority from task where queue = ? order by priority desc, id limit 1)"] * count
    )
    return f"select id from ({heads}) order by priority desc, id limit 1"


class QueueStorage(SqlQueues, SqliteStorage):
    """huey's SQLite storage with a queue per litejobs queue, `synchronous=NORMAL` and the WAL size of the app database.

    With WAL this survives a crash of any process; only a power cut can undo
    the last commits, and then the reaper's requeue_lost() enqueues again a job
    whose message vanished. huey's default (FULL) syncs the disk on every
    enqueue and every dequeue: a third of a drained job's cost (bench/, issue 7).
    """

    task_table = "task"

    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute("pragma busy_timeout=0")  # waits for the write lock in wait_while_locked instead
        conn.execute("pragma synchronous=normal")
        pages = wal_pages(self.filename)
        conn.execute(f"pragma wal_autocheckpoint={pages}")
        conn.execute(f"pragma journal_size_limit={pages * 4096}")
        return conn

    @contextlib.contextmanager
    def db(self, commit=False, close=False):
        """huey's db(), with its BEGIN tried again while another process holds the write lock."""
        with self.lock:
            conn = self.conn
            cursor = conn.cursor()
            try:
                if commit:
                    wait_while_locked(lambda: cursor.execute(self.begin_sql), self._timeout)
                yield cursor
            except Exception:
                if commit:
                    conn.rollback()
                raise
            else:
                if commit:
                    conn.commit()
            finally:
                cursor.close()
                if close:
                    conn.close()
                    self._conn = None

    def sql(self, query, params=None, commit=False, results=False):
        parent = super().sql
        if commit:  # db() waits for the lock
            return parent(query, params, commit, results)
        # A read outside a transaction can meet a lock too (while a WAL is reset).
        return wait_while_locked(lambda: parent(query, params, commit, results), self._timeout)

    def shares_database(self, database):
        """True when peewee `database` is this queue's own SQLite file (see write_in)."""
        return _same_file(self.filename, getattr(database, "database", None))

    def _blob(self, data):
        return self.to_blob(data)

    def enqueue(self, data, priority=None, queue=None):
        self.sql(
            "insert into task (queue, data, priority) values (?, ?, ?)",
            (self.queue_name(queue), self.to_blob(data), priority or 0),
            commit=True,
        )

    def enqueue_many(self, items):
        """Enqueue (data, priority, queue) items in one transaction."""
        with self.db(commit=True) as curs:
            curs.executemany(
                "insert into task (queue, data, priority) values (?, ?, ?)",
                [(self.queue_name(queue), self.to_blob(data), priority or 0) for data, priority, queue in items],
            )

    def dequeue_many(self, count):
        """Up to `count` messages, best first, taken in one transaction (take_ahead.py)."""
        names = self.read_names()
        best = best_heads(len(names))
        while True:
            heads = self.sql(best, [*[p for name in names for p in (name, count)], count], results=True)
            if not heads:
                return []
            ids = [row[0] for row in heads]
            with self.db(commit=True) as curs:
                marks = ", ".join("?" * len(ids))
                curs.execute(f"delete from task where id in ({marks}) returning priority, id, data", ids)
                taken = curs.fetchall()
            if taken:  # else other consumers took them all first: look again
                return [data for _, _, data in sorted(taken, key=lambda row: (-row[0], row[1]))]

    def dequeue(self):
        names = self.read_names()
        best = best_of_heads(len(names))
        while True:
            rows = self.sql(best, names, results=True)
            if not rows:
                return None
            with self.db(commit=True) as curs:
                curs.execute("delete from task where id = ? returning data", rows[0])
                taken = curs.fetchone()
            if taken is not None:
                return taken[0]


class PostgresQueueStorage(SqlQueues, PostgresStorage):
    """huey's PostgreSQL storage with a queue per litejobs queue; every enqueue still wakes every listener."""

    param = "%s"

    @property
    def task_table(self):
        return self.table_task

    def shares_database(self, database):
        """True when peewee `database` is the PostgreSQL database of this queue (see write_in)."""
        return same_postgres(self.dsn, database)

    def _blob(self, data):
        return data

    def write_in(self, database, items):
        super().write_in(database, items)
        database.execute_sql("select pg_notify(%s, %s)", (self.channel, ""))  # sent at commit

    def enqueue(self, data, priority=None, queue=None):
        with self.db(commit=True) as curs:
            curs.execute(
                f"insert into {self.table_task} (queue, data, priority) values (%s, %s, %s)",
                (self.queue_name(queue), data, priority or 0),
            )
            curs.execute("select pg_notify(%s, %s)", (self.channel, ""))

    def enqueue_many(self, items):
        """Enqueue (data, priority, queue) items in one transaction, waking the listeners once."""
        with self.db(commit=True) as curs:
            curs.executemany(
                f"insert into {self.table_task} (queue, data, priority) values (%s, %s, %s)",
                [(self.queue_name(queue), data, priority or 0) for data, priority, queue in items],
            )
            curs.execute("select pg_notify(%s, %s)", (self.channel, ""))

    def _dequeue(self):
        # The head of each served queue (skipping rows other workers hold), then the best of them.
        t = self.table_task
        with self.db() as curs:
            curs.execute(
                f"delete from {t} where id = ("
                f"select head.id from unnest(%s::text[]) as served(name) cross join lateral ("
                f"select id, priority from {t} where queue = served.name "
                f"order by priority desc, id limit 1 for update skip locked) as head "
                f"order by head.priority desc, head.id limit 1) returning data",
                (self.read_names(),),
            )
            row = curs.fetchone()
        if row is not None:
            return bytes(row[0])


# Pops the best message of several sorted sets (KEYS, highest queue priority first):
# lowest score (huey stores -priority), then the member, which starts with its
# enqueue time, so equal priorities run oldest first across queues as within one.
POP_BEST_LUA = """
local function older(a, b)  -- byte by byte: Lua's own < follows the server's locale
    for i = 1, 8 do
        local x, y = string.byte(a, i), string.byte(b, i)
        if x ~= y then return x < y end
    end
    return false
end
local best_key, best_member, best_score
for _, key in ipairs(KEYS) do
    local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if head[1] then
        local score = tonumber(head[2])
        if not best_key or score < best_score or (score == best_score and older(head[1], best_member)) then
            best_key, best_member, best_score = key, head[1], score
        end
    end
end
if best_key then
    redis.call('ZREM', best_key, best_member)
    return best_member
end
return false
"""

# POP_BEST_LUA ARGV[1] times (take_ahead.py): the best messages, in order, in one round trip.
POP_MANY_LUA = (
    "local function pop_best()\n"
    + POP_BEST_LUA
    + "\nend\nlocal taken = {}\nfor _ = 1, tonumber(ARGV[1]) do\n"
    "    local member = pop_best()\n    if not member then break end\n    taken[#taken + 1] = member\nend\nreturn taken\n"
)


class RedisQueueStorage(RoutedQueues, PriorityRedisStorage):
    """huey's priority Redis storage with a sorted set per litejobs queue."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pop_best = self.conn.register_script(POP_BEST_LUA)
        self._pop_many = self.conn.register_script(POP_MANY_LUA)

    def queue_name(self, queue):
        return self.queue_key if not queue or queue == DEFAULT_QUEUE else f"{self.queue_key}.{queue}"

    def enqueue(self, data, priority=None, queue=None):
        priority = 0 if priority is None else -priority
        # huey's prefix: the enqueue time, so equal priorities keep their order (RedisPriorityQueue).
        prefix = struct.pack(">Q", int(time.time() * 1e6))
        self.conn.zadd(self.queue_name(queue), {prefix + data: priority})

    def enqueue_many(self, items):
        """Enqueue (data, priority, queue) items in one round trip, in their order."""
        start = int(time.time() * 1e6)
        by_key = {}
        for n, (data, priority, queue) in enumerate(items):
            member = struct.pack(">Q", start + n) + data  # arrival order within a priority
            by_key.setdefault(self.queue_name(queue), {})[member] = 0 if priority is None else -priority
        pipe = self.conn.pipeline(transaction=False)
        for key, members in by_key.items():
            pipe.zadd(key, members)
        pipe.execute()

    def dequeue_many(self, count):
        """Up to `count` messages, best first, in one round trip (take_ahead.py); waits
        as dequeue() does when every queue is empty."""
        members = self._pop_many(keys=self.read_names(), args=[count])
        if members:
            return [member[8:] for member in members]
        data = self.dequeue()
        return [] if data is None else [data]

    def dequeue(self):
        keys = self.read_names()
        member = self._pop_best(keys=keys)  # one round trip whatever the number of queues
        if member:
            return member[8:]
        if not self.blocking:
            return None
        try:
            # All empty: wait on them all; the first message to arrive is the best one.
            _, member, _ = self.conn.bzpopmin(keys, timeout=self.read_timeout)
        except (TimeoutError, TypeError, IndexError):  # empty or timed out
            return None
        return member[8:]

    def _keys(self):
        return [self.queue_key, *self.conn.scan_iter(match=f"{self.queue_key}.*", count=1000)]

    def queue_size(self):
        return sum(self.conn.zcard(key) for key in self._keys())

    def enqueued_items(self, limit=None):
        items = []
        for key in self._keys():
            items += self.conn.zrange(key, 0, -1, withscores=True)
        items.sort(key=lambda item: (item[1], item[0]))
        return [member[8:] for member, _ in items[:limit]]

    def flush_queue(self):
        self.conn.delete(*self._keys())
