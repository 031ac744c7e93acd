"""Plain huey, for comparison: the same storage class litejobs uses, no history.

`huey_consumer plain_tasks.huey` (with bench/ on PYTHONPATH) runs it. The queue
is BENCH_QUEUE_URL; the first and the last call of a drain append their
wall-clock time to BENCH_MARKS so the driver can time the drain from first
start to last finish, as it does for litejobs from the job history.
"""

import os
import tempfile
import time

from huey import Huey
from huey.storage import PostgresStorage, PriorityRedisStorage, SqliteStorage

# bench/run.py's own scratch folder when it runs, so nothing is left in /tmp.
_SCRATCH = os.path.join(os.environ.get("BENCH_SCRATCH") or tempfile.gettempdir(), "litejobs-bench-plain")
URL = os.environ.get("BENCH_QUEUE_URL", f"sqlite:///{_SCRATCH}-queue.db")
MARKS = os.environ.get("BENCH_MARKS", f"{_SCRATCH}-marks.txt")


class NormalSqliteStorage(SqliteStorage):
    """SqliteStorage with synchronous=NORMAL, the pragma litejobs sets on its queue file."""

    def _create_connection(self):
        conn = super()._create_connection()
        conn.execute("pragma synchronous=normal")
        return conn


def make_huey(url):
    """A plain Huey on `url`, built like litejobs' own (results off, same storage class).

    SQLite runs at huey's default synchronous=FULL unless BENCH_SYNC_NORMAL=1.
    """
    if url.startswith("sqlite:///"):
        storage = NormalSqliteStorage if os.environ.get("BENCH_SYNC_NORMAL") == "1" else SqliteStorage
        return Huey("plain", results=False, storage_class=storage, filename=url[len("sqlite:///") :], timeout=10)
    if url.startswith("redis://"):
        return Huey("plain", results=False, storage_class=PriorityRedisStorage, url=url)
    return Huey("plain", results=False, storage_class=PostgresStorage, dsn=url)


huey = make_huey(URL)


@huey.task()
def noop(i, n):
    """Do nothing; the first and last call of a run of `n` note the time."""
    if i == 0 or i == n - 1:
        with open(MARKS, "a") as marks:
            marks.write(f"{i} {time.time()}\n")


def use(url, marks):
    """Point this process's `huey` at another queue (the benchmark driver's side)."""
    global MARKS
    other = make_huey(url)
    huey.storage.close()
    huey.storage_class, huey.storage_kwargs, huey.storage = other.storage_class, other.storage_kwargs, other.storage
    MARKS = marks
