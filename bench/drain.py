"""Drain: N no-op jobs already queued, a standalone consumer started, time until
all are terminal — litejobs (full job history) against plain huey (same storage
class, same workers, no history) in the same run.

The drain is timed from the first job's start to the last job's finish: for
litejobs from the history (started_at, finished_at), for plain huey from marks
its first and last call write. Process start-up is left out of both.
"""

import os
import time

import common
import lj
import plain_tasks

# Queue (and app database) per backend. Redis keeps the app database on SQLite
# (one box, a faster queue); PostgreSQL holds both (the all-PostgreSQL set-up).
BACKENDS = ("sqlite", "redis", "postgresql")


def urls(backend, data_dir):
    """(app database URL, litejobs queue URL, plain huey queue URL)."""
    sqlite_db = f"sqlite:///{data_dir / 'litejobs.db'}"
    if backend == "sqlite":
        return sqlite_db, f"sqlite:///{data_dir / 'queue.db'}", f"sqlite:///{data_dir / 'plain-queue.db'}"
    if backend == "redis":
        common.reset_redis()
        return sqlite_db, common.REDIS_URL, common.REDIS_URL
    common.reset_postgres()
    url = common.postgres_url()
    return url, url, url


def _consumer_stats(process):
    pids = [process.pid] + common.children(process.pid)
    return round(sum(common.rss_mb(pid) for pid in pids), 1)


def drain_litejobs(backend, kind, workers, n, timeout, **settings):
    data_dir = common.scratch(f"drain-lj-{backend}-{kind}")
    database_url, queue_url, _ = urls(backend, data_dir)
    lj.use(database_url, queue_url)
    enqueue_s = lj.submit_many("ping", n)
    env = common.service_env(data_dir, database_url, queue_url, **settings)
    cmd = common.consumer_cmd("jobs.huey", workers, kind)
    process = common.Process(cmd, env, data_dir / "consumer.log")
    try:
        common.wait_until(lambda: lj.terminal_count() >= n, timeout, interval=0.1, message=f"{n} jobs terminal")
        wall = time.monotonic() - process.started
        rss = _consumer_stats(process)
    finally:
        process.stop()
    first, last, count = lj.span()
    seconds = (last - first).total_seconds()
    counts = lj.statuses()
    lj.close()
    return {
        "jobs_per_s": round(count / seconds, 1),
        "seconds": round(seconds, 3),
        "wall_from_spawn_s": round(wall, 2),
        "enqueue_per_s": round(n / enqueue_s, 1),
        "consumer_rss_mb": rss,
        "statuses": counts,
        "command": common.shown(cmd),
    }


def drain_plain(backend, kind, workers, n, timeout, normal=False):
    data_dir = common.scratch(f"drain-plain-{backend}-{kind}")
    _, _, queue_url = urls(backend, data_dir)
    marks = data_dir / "marks.txt"
    os.environ["BENCH_SYNC_NORMAL"] = "1" if normal else "0"
    plain_tasks.use(queue_url, str(marks))
    plain_tasks.huey.flush()
    started = time.perf_counter()
    for i in range(n):
        plain_tasks.noop(i, n)
    enqueue_s = time.perf_counter() - started
    env = common.service_env(
        data_dir, BENCH_QUEUE_URL=queue_url, BENCH_MARKS=marks, BENCH_SYNC_NORMAL=os.environ["BENCH_SYNC_NORMAL"]
    )
    cmd = common.consumer_cmd("plain_tasks.huey", workers, kind)
    process = common.Process(cmd, env, data_dir / "consumer.log", cwd=common.BENCH)

    def done():
        if not marks.exists() or plain_tasks.huey.pending_count():
            return False
        lines = marks.read_text().split("\n")
        return sum(1 for line in lines if line.strip()) >= 2

    try:
        common.wait_until(done, timeout, interval=0.1, message=f"plain huey draining {n}")
        # The last call marks itself when it runs; give any others still running a moment.
        time.sleep(0.05)
        wall = time.monotonic() - process.started
        rss = _consumer_stats(process)
    finally:
        process.stop()
    stamps = dict(line.split() for line in marks.read_text().split("\n") if line.strip())
    seconds = float(stamps[str(n - 1)]) - float(stamps["0"])
    plain_tasks.huey.flush()
    plain_tasks.huey.storage.close()
    return {
        "jobs_per_s": round(n / seconds, 1),
        "seconds": round(seconds, 3),
        "wall_from_spawn_s": round(wall, 2),
        "enqueue_per_s": round(n / enqueue_s, 1),
        "consumer_rss_mb": rss,
        "command": common.shown(cmd),
    }


def drain_row(backend, kind="thread", workers=4, n=20000, repeat=1, timeout=240):
    """One table row: the median of `repeat` alternating litejobs/plain pairs."""
    runs = []
    for number in range(repeat):
        pair = {}
        # Alternate which goes first so a warm disk cache or a busy neighbour favours neither.
        order = ("plain", "litejobs") if number % 2 else ("litejobs", "plain")
        for who in order:
            run = drain_litejobs if who == "litejobs" else drain_plain
            pair[who] = run(backend, kind, workers, n, timeout)
        pair["ratio"] = round(pair["litejobs"]["jobs_per_s"] / pair["plain"]["jobs_per_s"], 3)
        if backend == "sqlite" and kind == "thread":
            # litejobs sets synchronous=NORMAL on its queue file; show plain huey with it too.
            pair["plain_normal"] = drain_plain(backend, kind, workers, n, timeout, normal=True)
            pair["ratio_normal"] = round(pair["litejobs"]["jobs_per_s"] / pair["plain_normal"]["jobs_per_s"], 3)
        runs.append(pair)
    lj_rate = common.median([r["litejobs"]["jobs_per_s"] for r in runs])
    plain_rate = common.median([r["plain"]["jobs_per_s"] for r in runs])
    ratio = common.median([r["ratio"] for r in runs])
    result = f"{ratio:.2f}× (median of {repeat})"
    if backend == "sqlite" and kind == "thread":
        normal = common.median([r["plain_normal"]["jobs_per_s"] for r in runs])
        ratio_normal = common.median([r["ratio_normal"] for r in runs])
        result += f"; plain huey with synchronous=NORMAL {normal:,.0f} jobs/s, {ratio_normal:.2f}×"
    names = {"sqlite": "SQLite", "redis": "Redis", "postgresql": "PostgreSQL"}
    db = "SQLite db" if backend != "postgresql" else "PostgreSQL db"
    return {
        "id": f"drain-{backend}-{kind}",
        "benchmark": f"drain {n:,} no-op jobs, {names[backend]} queue + {db}, {workers} {kind} workers",
        "litejobs": f"{lj_rate:,.0f} jobs/s",
        "baseline": f"plain huey {plain_rate:,.0f} jobs/s",
        "result": result,
        "target": "≥ 0.80×",
        "met": ratio >= 0.8,
        "data": {"runs": runs, "litejobs_jobs_per_s": lj_rate, "plain_jobs_per_s": plain_rate, "ratio": ratio},
    }


def limits_row(backend="sqlite", workers=4, n=20000, repeat=3, timeout=240):
    """The cost of concurrency limits: the same drain with and without a limit on the
    job's queue (set high enough never to hold a job back, so only the bookkeeping —
    the running-job count in the start UPDATE — is measured)."""
    runs = []
    for number in range(repeat):
        pair = {}
        order = ("limited", "free") if number % 2 else ("free", "limited")
        for who in order:
            extra = {"CONCURRENCY_LIMITS": "default=1000"} if who == "limited" else {}
            pair[who] = drain_litejobs(backend, "thread", workers, n, timeout, **extra)
        pair["ratio"] = round(pair["limited"]["jobs_per_s"] / pair["free"]["jobs_per_s"], 3)
        runs.append(pair)
    ratio = common.median([r["ratio"] for r in runs])
    limited = common.median([r["limited"]["jobs_per_s"] for r in runs])
    free = common.median([r["free"]["jobs_per_s"] for r in runs])
    return {
        "id": f"limits-{backend}",
        "benchmark": f"drain {n:,} no-op jobs, {backend}, {workers} threads, with CONCURRENCY_LIMITS=default=1000",
        "litejobs": f"{limited:,.0f} jobs/s",
        "baseline": f"no limits {free:,.0f} jobs/s",
        "result": f"{ratio:.2f}× (median of {repeat})",
        "target": "≥ 0.90× (within 10%)",
        "met": ratio >= 0.9,
        "data": {"runs": runs, "ratio": ratio},
    }
