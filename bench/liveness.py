"""`web.py run` beside CPU-bound jobs: /health/live latency, and memory after many jobs.

    .venv/bin/python bench/liveness.py [--jobs 20000] [--seconds 5] [--probes 300]

`web.py run` runs its jobs in a consumer process of its own (supervisor.py),
so four jobs of pure-Python work (tests/cpu_tasks.py's `burn_cpu`) must not
slow the web process's answers: /health/live p99 under 20 ms while they run. Then it drains `--jobs` echo jobs and reads the resident
memory of the web process and its consumer: together under 120 MB. Prints one
JSON line; exits 1 when a target is missed. Linux only (/proc).
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from common import PY, Process, children, cleanup, free_port, rss_mb, scratch, service_env, wait_until  # noqa: E402

LIVE_P99_MS = 20.0
RSS_MB = 120.0


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        reply.read()
        return reply.status
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20000, help="echo jobs drained before reading memory")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each CPU-bound job")
    parser.add_argument("--probes", type=int, default=300, help="/health/live requests while they run")
    args = parser.parse_args()

    data = scratch("liveness")
    port = free_port()
    # The consumer that web.py run starts loads tests/cpu_tasks.py (tests/child_tasks/sitecustomize.py).
    env = service_env(data, PORT=port, WORKERS=4)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "child_tasks"), str(ROOT / "tests"), str(ROOT)])
    # This process enqueues straight into the same files, as the CLI does.
    os.environ.update({k: env[k] for k in ("DATA_DIR", "DATABASE_URL", "QUEUE_URL", "LOG_LEVEL")})
    import cpu_tasks  # noqa: F401 - registers burn_cpu here too
    import jobs
    from models import Job, Worker, create_tables

    create_tables()
    web = Process([PY, "web.py", "run"], env, data / "web.log")
    try:
        wait_until(lambda: Worker.alive().count() == 1, timeout=60, message="the consumer's heartbeat")
        consumer_pid = children(web.pid)[0]

        ids = [jobs.submit("burn_cpu", {"seconds": args.seconds})[0].id for _ in range(4)]
        running = Job.select().where(Job.id.in_(ids), Job.status == "running")
        wait_until(lambda: running.count() == 4, timeout=30, message="4 CPU-bound jobs running")
        times = []
        for _ in range(args.probes):
            started = time.perf_counter()
            assert get(port, "/health/live") == 200
            times.append((time.perf_counter() - started) * 1000)
            time.sleep(0.005)
        beside = running.count() == 4  # every probe was answered while all four ran
        wait_until(lambda: Job.select().where(Job.id.in_(ids), Job.status == "succeeded").count() == 4, timeout=120)

        started = time.monotonic()
        for batch in range(0, args.jobs, 1000):
            jobs.submit_many("echo", [{"value": n} for n in range(batch, min(batch + 1000, args.jobs))])
        done = Job.select().where(Job.name == "echo", Job.status == "succeeded")
        wait_until(lambda: done.count() == args.jobs, timeout=600, interval=0.5, message=f"{args.jobs} echo jobs")
        drain_s = time.monotonic() - started
        rss = {"web": rss_mb(web.pid), "consumer": rss_mb(consumer_pid)}
    finally:
        code = web.stop(timeout=60)
    quantiles = statistics.quantiles(times, n=100)
    result = {
        "live_p50_ms": round(statistics.median(times), 2),
        "live_p99_ms": round(quantiles[98], 2),
        "live_max_ms": round(max(times), 2),
        "probes": len(times),
        "probes_all_beside_4_jobs": beside,
        "jobs": args.jobs,
        "drain_s": round(drain_s, 1),
        "rss_web_mb": round(rss["web"], 1),
        "rss_consumer_mb": round(rss["consumer"], 1),
        "rss_total_mb": round(rss["web"] + rss["consumer"], 1),
        "web_exit_code": code,
    }
    print(json.dumps(result))
    cleanup()
    ok = beside and result["live_p99_ms"] < LIVE_P99_MS and result["rss_total_mb"] < RSS_MB and code == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
