"""Drain: N no-op jobs through a standalone consumer, timed from the first job's
start to the last job's finish — litejobs (full job history) against plain huey
(same storage class, same workers, no history) in the same run.

Measured the way a deployment runs: the consumer starts first, with default
settings and quiet logs (LOG_LEVEL=WARNING), and registers; then a producer of
its own (bench/bench_producer.py, another process) enqueues the N jobs while the
consumer works. For litejobs the span comes from the job history (started_at,
finished_at); for plain huey from marks its first and last call write.

Other modes, for finding out what a figure owes to the way it was taken
(`python bench/drain.py --explain`):
  backlog  the producer fills the queue first, then the consumer starts
  inline   the driver itself enqueues (in-process) before the consumer starts:
           the way this bench measured before issue 19
  http     `web.py run --no-consumer` beside the consumer, the jobs enqueued
           over HTTP by 16 keep-alive clients (the deploy-* rows)
"""

import argparse
import json
import os
import sqlite3
import subprocess
import time

import common

if __name__ == "__main__":
    common.driver_setup()

import lj  # noqa: E402

# Queue (and app database) per backend. Redis keeps the app database on SQLite
# (one box, a faster queue); PostgreSQL holds both (the all-PostgreSQL set-up);
# redis+postgresql is the scale-out set-up (Redis queue, PostgreSQL database).
BACKENDS = ("sqlite", "redis", "postgresql", "redis+postgresql")
NAMES = {"sqlite": "SQLite", "redis": "Redis", "postgresql": "PostgreSQL", "redis+postgresql": "Redis"}
MODES = ("live", "backlog", "inline", "http")


def urls(backend, data_dir):
    """(app database URL, litejobs queue URL, plain huey queue URL)."""
    sqlite_db = f"sqlite:///{data_dir / 'litejobs.db'}"
    if backend == "sqlite":
        # litejobs' default: the queue in the app database (one transaction per enqueue).
        return sqlite_db, sqlite_db, f"sqlite:///{data_dir / 'plain-queue.db'}"
    if backend == "redis":
        common.reset_redis()
        return sqlite_db, common.REDIS_URL, common.REDIS_URL
    common.reset_postgres()
    url = common.postgres_url()
    if backend == "redis+postgresql":
        common.reset_redis()
        return url, common.REDIS_URL, common.REDIS_URL
    return url, url, url


def database_label(backend):
    return "PostgreSQL db" if "postgresql" in backend else "SQLite db"


def produce(system, n, env, data_dir, timeout=600, interval=None):
    """Run bench/bench_producer.py SYSTEM N [INTERVAL] in `env`; returns its enqueue seconds."""
    cmd = [common.PY, str(common.BENCH / "bench_producer.py"), system, str(n)]
    if interval is not None:
        cmd.append(str(interval))
    done = subprocess.run(cmd, cwd=common.BENCH, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"producer {system} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def database_bytes(database_url):
    """Bytes the app database takes on disk (SQLite after a checkpoint; PostgreSQL's job table)."""
    if database_url.startswith("sqlite:///"):
        path = database_url[len("sqlite:///"):]
        with sqlite3.connect(path) as conn:
            conn.execute("pragma wal_checkpoint(truncate)")
        return common.Path(path).stat().st_size
    import psycopg

    with psycopg.connect(common.POSTGRES_URL, autocommit=True) as conn:
        return conn.execute(f"SELECT pg_total_relation_size('{common.POSTGRES_SCHEMA}.job')").fetchone()[0]


def consumer_rss(processes):
    """Resident MiB of the consumer processes and their process workers."""
    pids = []
    for process in processes:
        pids += [process.pid] + common.children(process.pid)
    return round(sum(common.rss_mb(pid) for pid in pids), 1)


def _wait_registered(count, processes, timeout=30):
    from models import Worker

    def ready():
        for process in processes:
            if not process.alive():
                raise RuntimeError(f"consumer exited with {process.popen.returncode}:\n{process.tail()}")
        return Worker.select().where(Worker.stopped_at.is_null()).count() >= count

    common.wait_until(ready, timeout, interval=0.1, message="the consumers to register")


def _http_enqueue(data_dir, env, n, clients=16):
    """`web.py run --no-consumer` on the same storage; n POSTs over `clients` connections."""
    key = common.create_key(env)
    web, port, _ = common.start_web(
        data_dir, "--no-consumer", name="web-enqueue",
        DATABASE_URL=env["DATABASE_URL"], QUEUE_URL=env["QUEUE_URL"],
    )
    try:
        sent = common.send_n(port, key, n, clients, lambda c, i: ("POST", "/api/v1/jobs/ping", {}))
    finally:
        web.stop()
    if sent["errors"] or sent["statuses"].get(202, 0) != n:
        raise RuntimeError(f"HTTP enqueue: {sent['statuses']} {sent['errors']}")
    return sent["seconds"], common.shown(web.args)


def drain_litejobs(backend, kind="thread", workers=4, n=20000, timeout=300, mode="live", processes=1,
                   consumer_args=(), **settings):
    """Drain n pings with `processes` standalone consumers; returns the figures."""
    data_dir = common.scratch(f"drain-lj-{backend.replace('+', '-')}-{kind}")
    database_url, queue_url, _ = urls(backend, data_dir)
    lj.use(database_url, queue_url)
    bytes_before = database_bytes(database_url)
    env = common.service_env(data_dir, database_url, queue_url, **settings)
    cmd = common.consumer_cmd("jobs.huey", workers, kind, *consumer_args)
    consumers = []
    web_cmd = None
    try:
        if mode == "inline":
            enqueue_s = lj.submit_many("ping", n)
        elif mode == "backlog":
            enqueue_s = produce("litejobs", n, env, data_dir)
        for number in range(processes):
            consumers.append(common.Process(cmd, env, data_dir / f"consumer-{number}.log"))
        _wait_registered(processes, consumers)
        if mode == "live":
            enqueue_s = produce("litejobs", n, env, data_dir)
        elif mode == "http":
            enqueue_s, web_cmd = _http_enqueue(data_dir, env, n)
        common.wait_until(lambda: lj.terminal_count() >= n, timeout, interval=0.1, message=f"{n} jobs terminal")
        rss = consumer_rss(consumers)
    finally:
        for process in consumers:
            process.stop()
    first, last, count = lj.span()
    seconds = (last - first).total_seconds()
    counts = lj.statuses()
    lj.close()
    bytes_per_job = round((database_bytes(database_url) - bytes_before) / count)
    shown = common.shown(cmd) + (f"  (×{processes} processes)" if processes > 1 else "")
    if web_cmd:
        shown = f"{web_cmd} + {shown}"
    return {
        "jobs_per_s": round(count / seconds, 1),
        "seconds": round(seconds, 3),
        "enqueue_per_s": round(n / enqueue_s, 1),
        "consumer_rss_mb": rss,
        "database_bytes_per_job": bytes_per_job,
        "statuses": counts,
        "mode": mode,
        "processes": processes,
        "settings": settings,
        "command": shown,
    }


def drain_plain(backend, kind="thread", workers=4, n=20000, timeout=300, normal=False, mode="live"):
    import bench_plain_tasks

    data_dir = common.scratch(f"drain-plain-{backend}-{kind}")
    _, _, queue_url = urls(backend, data_dir)
    marks = data_dir / "marks.txt"
    sync_normal = "1" if normal else "0"
    os.environ["BENCH_SYNC_NORMAL"] = sync_normal
    bench_plain_tasks.use(queue_url, str(marks))
    bench_plain_tasks.huey.flush()
    env = common.service_env(data_dir, BENCH_QUEUE_URL=queue_url, BENCH_MARKS=marks, BENCH_SYNC_NORMAL=sync_normal)
    cmd = common.consumer_cmd("bench_plain_tasks.huey", workers, kind)
    if mode == "backlog":
        enqueue_s = produce("plain", n, env, data_dir)
    process = common.Process(cmd, env, data_dir / "consumer.log", cwd=common.BENCH)

    def done():
        if not marks.exists() or bench_plain_tasks.huey.pending_count():
            return False
        return sum(1 for line in marks.read_text().split("\n") if line.strip()) >= 2

    try:
        if mode != "backlog":
            # huey_consumer logs this line once its workers run.
            common.wait_until(lambda: "consumer started" in process.tail(50), 30, message="plain huey to start")
            enqueue_s = produce("plain", n, env, data_dir)
        common.wait_until(done, timeout, interval=0.1, message=f"plain huey draining {n}")
        time.sleep(0.05)  # the last call marks itself when it runs; give any others still running a moment
        rss = consumer_rss([process])
    finally:
        process.stop()
    stamps = dict(line.split() for line in marks.read_text().split("\n") if line.strip())
    seconds = float(stamps[str(n - 1)]) - float(stamps["0"])
    bench_plain_tasks.huey.flush()
    bench_plain_tasks.huey.storage.close()
    return {
        "jobs_per_s": round(n / seconds, 1),
        "seconds": round(seconds, 3),
        "enqueue_per_s": round(n / enqueue_s, 1),
        "consumer_rss_mb": rss,
        "mode": mode,
        "command": common.shown(cmd),
    }


def drain_row(backend, kind="thread", workers=4, n=20000, repeat=1, timeout=300):
    """One table row: the median of `repeat` alternating litejobs/plain pairs, each
    pair measured live (the producer enqueues while the consumer runs: the headline)
    and from a backlog (the queue filled first: the consumer's own rate).

    On SQLite plain huey runs with synchronous=NORMAL, the pragma litejobs sets on
    its queue file, so both sides sync alike (huey's default is FULL)."""
    normal = backend == "sqlite"
    runs = []
    for number in range(repeat):
        pair = {}
        # Alternate which goes first so a warm disk cache or a busy neighbour favours neither.
        order = ("plain", "litejobs") if number % 2 else ("litejobs", "plain")
        for mode in ("live", "backlog"):
            for who in order:
                if who == "litejobs":
                    pair[f"litejobs_{mode}"] = drain_litejobs(backend, kind, workers, n, timeout, mode=mode)
                else:
                    pair[f"plain_{mode}"] = drain_plain(backend, kind, workers, n, timeout, normal=normal, mode=mode)
            pair[f"ratio_{mode}"] = round(pair[f"litejobs_{mode}"]["jobs_per_s"] / pair[f"plain_{mode}"]["jobs_per_s"], 3)
        runs.append(pair)

    def med(key, field="jobs_per_s"):
        return common.median([r[key][field] if field else r[key] for r in runs])

    lj_rate, plain_rate, ratio = med("litejobs_live"), med("plain_live"), med("ratio_live", None)
    backlog_ratio = med("ratio_backlog", None)
    plain_name = "plain huey (synchronous=NORMAL)" if normal else "plain huey"
    result = (f"{ratio:.2f}× live (median of {repeat}; litejobs' producer enqueued "
              f"{med('litejobs_live', 'enqueue_per_s'):,.0f}/s meanwhile); from a backlog {backlog_ratio:.2f}× "
              f"({med('litejobs_backlog'):,.0f} vs {med('plain_backlog'):,.0f} jobs/s)")
    target = "≥ 1.0×" if backend == "redis" else "≥ 0.9×"
    return {
        "id": f"drain-{backend}-{kind}",
        "benchmark": f"drain {n:,} no-op jobs, {NAMES[backend]} queue + {database_label(backend)}, "
        f"{workers} {kind} workers; live: another process enqueues while the consumer runs",
        "litejobs": f"{lj_rate:,.0f} jobs/s",
        "baseline": f"{plain_name} {plain_rate:,.0f} jobs/s",
        "result": result,
        "target": target,
        "met": ratio >= (1.0 if backend == "redis" else 0.9),
        "data": {"runs": runs, "litejobs_jobs_per_s": lj_rate, "plain_jobs_per_s": plain_rate, "ratio": ratio,
                 "backlog_ratio": backlog_ratio},
    }


def deploy_row(backend, n=20000, timeout=300):
    """Issue 19's deployment: N pings over HTTP to `web.py run --no-consumer` beside one
    standalone `huey_consumer jobs.huey -w 4 -k thread`, default settings, quiet logs."""
    data = drain_litejobs(backend, "thread", 4, n, timeout, mode="http")
    return {
        "id": f"deploy-{backend}",
        "benchmark": f"as deployed: {n:,} pings over HTTP (16 clients) to `web.py run --no-consumer` beside "
        f"`huey_consumer jobs.huey -w 4 -k thread`, {NAMES[backend]} queue + {database_label(backend)}",
        "litejobs": f"{data['jobs_per_s']:,.0f} jobs/s",
        "baseline": "",
        "result": f"first start to last finish; HTTP enqueue {data['enqueue_per_s']:,.0f}/s meanwhile",
        "target": "—",
        "met": None,
        "data": data,
    }


def limits_row(backend="sqlite", workers=4, n=20000, repeat=3, timeout=300):
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


# What the old drain row owed to the way it measured: each variant changes one thing.
VARIANTS = [
    ("as deployed: HTTP enqueue beside the consumer", {"mode": "http"}),
    ("producer process while the consumer runs (the drain rows now)", {"mode": "live"}),
    ("backlog filled by a producer process, then the consumer", {"mode": "backlog"}),
    ("the old row: in-process enqueue first, then the consumer", {"mode": "inline"}),
    ("the old row with HEARTBEAT_INTERVAL=1", {"mode": "inline", "HEARTBEAT_INTERVAL": 1}),
    ("the old row with LOG_LEVEL=INFO", {"mode": "inline", "LOG_LEVEL": "INFO"}),
    ("the old row with huey_consumer -q (huey's own per-job INFO lines off)", {"mode": "inline", "consumer_args": ("-q",)}),
    ("producer process while the consumer runs, huey_consumer -q", {"mode": "live", "consumer_args": ("-q",)}),
]


def explain(backend="sqlite", n=5000, repeat=1):
    """Run every variant `repeat` times, alternating; print jobs/s of each."""
    results = {label: [] for label, _ in VARIANTS}
    for _ in range(repeat):
        for label, options in VARIANTS:
            options = dict(options)
            mode = options.pop("mode")
            results[label].append(drain_litejobs(backend, "thread", 4, n, mode=mode, **options)["jobs_per_s"])
    for label, rates in results.items():
        print(f"  {common.median(rates):8,.0f} jobs/s  {label}  (runs: {', '.join(f'{r:,.0f}' for r in rates)})")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--explain", action="store_true", help="run the variants that tell the modes apart")
    parser.add_argument("--backend", default="sqlite", choices=BACKENDS)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    try:
        print(f"drain variants, {args.backend}, {args.n:,} jobs, 4 threads, median of {args.repeat}:")
        explain(args.backend, args.n, args.repeat)
    finally:
        common.cleanup()
