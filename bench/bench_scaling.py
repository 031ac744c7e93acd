"""How cost grows: drain rate against the number of consumer processes (1, 2, 4,
each `huey_consumer jobs.huey -w 4 -k thread`) on SQLite and on Redis with
PostgreSQL (the scale-out set-up); and one consumer's memory (RSS after 10% of
N jobs and after all N, and its peak) with the database's bytes per finished job.

The scaling drains start from a backlog of N jobs that a producer process wrote
before the consumers started, so the figure is the consumers' own rate and not
the producer's. The memory run is live: the consumer is up and a producer
process enqueues the N jobs meanwhile, as a deployment runs.
"""

import time

import common
import drain
import lj

PROCESSES = (1, 2, 4)


def processes_row(backend, n=20000):
    runs = {}
    for count in PROCESSES:
        runs[count] = drain.drain_litejobs(backend, "thread", 4, n, mode="backlog", processes=count)
    rates = " / ".join(f"{runs[c]['jobs_per_s']:,.0f}" for c in PROCESSES)
    base = runs[PROCESSES[0]]["jobs_per_s"]
    name = "SQLite queue + SQLite db" if backend == "sqlite" else "Redis queue + PostgreSQL db"
    return [{
        "id": f"scaling-{backend.replace('+', '-')}",
        "benchmark": f"drain a backlog of {n:,} pings with 1 / 2 / 4 consumer processes "
        f"(`huey_consumer jobs.huey -w 4 -k thread` each), {name}",
        "litejobs": f"{rates} jobs/s",
        "baseline": "",
        "result": "; ".join(f"{c} processes {runs[c]['jobs_per_s'] / base:.2f}× one" for c in PROCESSES[1:])
        + f"; {runs[1]['database_bytes_per_job']:,} database bytes per finished job",
        "target": "—",
        "met": None,
        "data": {"runs": runs},
    }]


def memory(n=100_000, timeout=900):
    """One standalone consumer draining n pings that a producer enqueues meanwhile."""
    data_dir = common.scratch("memory")
    database_url, queue_url, _ = drain.urls("sqlite", data_dir)
    lj.use(database_url, queue_url)
    env = common.service_env(data_dir, database_url, queue_url)
    cmd = common.consumer_cmd("jobs.huey", 4, "thread")
    consumer = common.Process(cmd, env, data_dir / "consumer.log")
    early_at = max(1, n // 10)
    readings = {}
    try:
        drain._wait_registered(1, [consumer])
        before = drain.database_bytes(database_url)
        producer = common.Process([common.PY, str(common.BENCH / "bench_producer.py"), "litejobs", str(n)], env,
                                  data_dir / "producer.log", cwd=common.BENCH)
        deadline = time.monotonic() + timeout
        while True:
            done = lj.terminal_count()
            if done >= early_at and "early" not in readings:
                readings["early"] = (done, common.rss_mb(consumer.pid))
            if done >= n:
                break
            if time.monotonic() > deadline or not consumer.alive():
                raise RuntimeError(f"{done} of {n} jobs finished; consumer log: {consumer.tail(5)}")
            time.sleep(0.5)
        time.sleep(1)
        readings["end"] = (done, common.rss_mb(consumer.pid))
        peak = common.peak_rss_mb(consumer.pid)
        producer.stop()
    finally:
        consumer.stop()
    first, last, count = lj.span()
    lj.close()
    after = drain.database_bytes(database_url)
    return {
        "jobs": n,
        "rss_early_mb": round(readings["early"][1], 1),
        "rss_early_after_jobs": readings["early"][0],
        "rss_end_mb": round(readings["end"][1], 1),
        "peak_rss_mb": round(peak, 1),
        "database_bytes_per_job": round((after - before) / count),
        "jobs_per_s": round(count / (last - first).total_seconds(), 1),
        "command": common.shown(cmd),
    }


def memory_rows(n=100_000):
    data = memory(n)
    growth = data["rss_end_mb"] - data["rss_early_mb"]
    return [
        {
            "id": "memory-consumer",
            "benchmark": f"consumer memory: RSS of `huey_consumer jobs.huey -w 4 -k thread` (SQLite) after "
            f"{data['rss_early_after_jobs']:,} and after {n:,} jobs",
            "litejobs": f"{data['rss_early_mb']:.0f} MB → {data['rss_end_mb']:.0f} MB",
            "baseline": "",
            "result": f"peak {data['peak_rss_mb']:.0f} MB; growth {growth:+.1f} MB after the first "
            f"{data['rss_early_after_jobs']:,}; drained at {data['jobs_per_s']:,.0f} jobs/s",
            "target": "no growth after the first 10% (≤ 5 MB)",
            "met": growth <= 5,
            "data": data,
        },
        {
            "id": "memory-bytes",
            "benchmark": f"database bytes per finished job: SQLite app database after {n:,} pings "
            "(checkpointed), history and metrics",
            "litejobs": f"{data['database_bytes_per_job']:,} bytes per job",
            "baseline": "",
            "result": "",
            "target": "—",
            "met": None,
            "data": {"database_bytes_per_job": data["database_bytes_per_job"], "jobs": n},
        },
    ]
