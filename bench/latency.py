"""Pickup latency: an idle consumer, N jobs enqueued one by one 10 ms apart,
the time from enqueue to start of each (enqueued_at → started_at in the job
history), then the consumer's CPU use while idle (its worker processes included).

Three consumers: the standalone `huey_consumer jobs.huey` with thread workers,
and with process workers (`-k process`): this benchmark's own process
enqueues, as a web process would, so on SQLite the consumer hears of a job by
a wake-up datagram (wakeup.py), or else by its watch of the queue file; and
the consumer that `python web.py run` starts (jobs enqueued over HTTP).
"""

import time

import common
import drain
import lj


def _paced(n, interval, enqueue):
    """Call enqueue(i) n times, `interval` seconds apart on a fixed timetable."""
    ids = []
    start = time.monotonic()
    for i in range(n):
        pause = start + i * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        ids.append(enqueue(i))
    return ids


def _idle_cpu(pid, seconds):
    """Percent of one core used by `pid` and its children over `seconds` of doing nothing."""
    pids = [pid, *common.children(pid)]
    before = sum(common.cpu_seconds(p) for p in pids)
    time.sleep(seconds)
    return round(100 * (sum(common.cpu_seconds(p) for p in pids) - before) / seconds, 2)


def _summary(latencies):
    return {
        "n": len(latencies),
        "p50_ms": common.ms(common.percentile(latencies, 50)),
        "p95_ms": common.ms(common.percentile(latencies, 95)),
        "p99_ms": common.ms(common.percentile(latencies, 99)),
        "max_ms": common.ms(max(latencies) if latencies else None),
    }


def standalone(backend="sqlite", n=500, interval=0.01, idle=30.0, workers=4, kind="thread"):
    """Latency and idle CPU of `huey_consumer jobs.huey -k KIND` on `backend`; this process enqueues."""
    data_dir = common.scratch(f"latency-{backend}")
    database_url, queue_url, _ = drain.urls(backend, data_dir)
    lj.use(database_url, queue_url)
    env = common.service_env(data_dir, database_url, queue_url)
    cmd = common.consumer_cmd("jobs.huey", workers, kind)
    process = common.Process(cmd, env, data_dir / "consumer.log")
    try:
        from models import Worker

        common.wait_until(lambda: Worker.select().count() > 0, 30, message="the consumer to register")
        time.sleep(3)  # long enough for the idle poll to back off fully
        rss_idle = common.rss_mb(process.pid)
        ids = _paced(n, interval, lambda i: lj.jobs.submit("ping")[0].id)
        common.wait_until(lambda: lj.terminal_count(ids) >= n, 60, interval=0.1, message="all jobs terminal")
        latencies = lj.pickup_latencies(ids)
        time.sleep(2)
        cpu = _idle_cpu(process.pid, idle)
        # The first job after a quiet spell: the case polling back-off hurts most.
        after_idle = lj.jobs.submit("ping")[0].id
        common.wait_until(lambda: lj.terminal_count([after_idle]), 30, interval=0.01, message="the job after idle")
        first_after_idle = lj.pickup_latencies([after_idle])
    finally:
        process.stop()
        lj.close()
    return {
        **_summary(latencies),
        "idle_cpu_pct": cpu,
        "idle_seconds": idle,
        "after_idle_ms": common.ms(first_after_idle[0]) if first_after_idle else None,
        "rss_idle_mb": round(rss_idle, 1),
        "command": common.shown(cmd),
    }


def embedded(n=500, interval=0.01, idle=30.0):
    """Latency (enqueued over HTTP) and idle CPU of `python web.py run`."""
    data_dir = common.scratch("latency-web")
    env = common.service_env(data_dir)
    key = common.create_key(env)
    process, port, env = common.start_web(data_dir)
    try:
        conn = common.Http(port, key)
        time.sleep(3)

        def enqueue(i):
            status, body = conn.request("POST", "/api/v1/jobs/ping", {})
            if status != 202:
                raise RuntimeError(f"POST /api/v1/jobs/ping answered {status}: {body[:200]!r}")
            return common.json.loads(body)["id"]

        ids = _paced(n, interval, enqueue)
        lj.use(env["DATABASE_URL"], env["QUEUE_URL"])
        common.wait_until(lambda: lj.terminal_count(ids) >= n, 60, interval=0.1, message="all jobs terminal")
        latencies = lj.pickup_latencies(ids)
        lj.close()
        time.sleep(2)
        cpu = _idle_cpu(process.pid, idle)
        after_idle = enqueue(0)
        lj.use(env["DATABASE_URL"], env["QUEUE_URL"])
        common.wait_until(lambda: lj.terminal_count([after_idle]), 30, interval=0.01, message="the job after idle")
        first_after_idle = lj.pickup_latencies([after_idle])
        conn.close()
    finally:
        process.stop()
        lj.close()
    return {
        **_summary(latencies),
        "idle_cpu_pct": cpu,
        "idle_seconds": idle,
        "after_idle_ms": common.ms(first_after_idle[0]) if first_after_idle else None,
        "command": common.shown(process.args),
    }


def latency_row(which, backend="sqlite", n=500, idle=30.0):
    names = {"sqlite": "SQLite", "redis": "Redis", "postgresql": "PostgreSQL"}
    if which == "embedded":
        data = embedded(n=n, idle=idle)
        label = f"pickup latency, consumer in `web.py run` (enqueued over HTTP), {names[backend]}"
    elif which == "process":
        data = standalone(backend, n=n, idle=idle, workers=2, kind="process")
        label = f"pickup latency, standalone `huey_consumer jobs.huey -w 2 -k process`, {names[backend]}"
    else:
        data = standalone(backend, n=n, idle=idle)
        label = f"pickup latency, standalone `huey_consumer jobs.huey -w 4`, {names[backend]}"
    met = None
    target = "—"
    if backend == "sqlite" and which == "standalone":
        # Woken by a datagram from the process that enqueued (wakeup.py, issue 19).
        target = "p50 ≤ 5 ms, p99 ≤ 20 ms, idle ≤ 1% CPU"
        met = data["p50_ms"] <= 5 and data["p99_ms"] <= 20 and data["idle_cpu_pct"] <= 1
    elif backend == "sqlite":
        target = "p50 ≤ 20 ms, p99 ≤ 100 ms, idle < 1% CPU"
        met = data["p50_ms"] <= 20 and data["p99_ms"] <= 100 and data["idle_cpu_pct"] < 1
    return {
        "id": f"latency-{which}-{backend}",
        "benchmark": f"{label}: {n} jobs 10 ms apart, then {idle:g} s idle",
        "litejobs": f"p50 {data['p50_ms']} / p95 {data['p95_ms']} / p99 {data['p99_ms']} ms",
        "baseline": "",
        "result": f"idle CPU {data['idle_cpu_pct']}% of a core; first job after the idle spell {data['after_idle_ms']} ms",
        "target": target,
        "met": met,
        "data": data,
    }
