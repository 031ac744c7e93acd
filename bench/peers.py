"""Peers on the drain and latency rows, with the same no-op job: Celery (Redis
broker, 4 thread-pool workers) and RQ (4 SimpleWorker processes), when
`pip install -r bench/requirements-peers.txt` was run; otherwise the rows say
they were skipped.

Each uses a Redis db of its own (11 for Celery, 10 for RQ), flushed first.
Drains are timed from the first call's start to the last call's finish, as for
huey and litejobs; latency is the start time minus the enqueue time.

    .venv/bin/python bench/peers.py [--quick]
"""

import os
import sys
import time
from pathlib import Path

import common

CELERY_URL = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/11")
RQ_URL = os.environ.get("BENCH_RQ_URL", "redis://127.0.0.1:6379/10")


def missing():
    """Names of the peer packages that are not installed."""
    absent = []
    for module in ("celery", "rq"):
        try:
            __import__(module)
        except ImportError:
            absent.append(module)
    return absent


def _flush(url):
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    client.flushdb()
    return client


def _marks(path):
    stamps, lats = {}, []
    if path.exists():
        for line in path.read_text().splitlines():
            kind, _, value = line.partition(" ")
            if kind == "lat":
                lats.append(float(value))
            elif kind:
                stamps[kind] = float(value)
    return stamps, lats


def _cpu(processes):
    return sum(common.cpu_seconds(p.pid) for p in processes)


def _celery_worker(data_dir, marks, workers):
    env = common.service_env(data_dir, BENCH_MARKS=marks, BENCH_CELERY_BROKER=CELERY_URL)
    cmd = [common.PY, "-m", "celery", "-A", "peer_tasks", "worker", "-P", "threads", "-c", str(workers),
           "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "WARNING"]
    return [common.Process(cmd, env, data_dir / "celery.log", cwd=common.BENCH)], cmd


def _rq_workers(data_dir, marks, workers):
    env = common.service_env(data_dir, BENCH_MARKS=marks)
    cmd = [str(Path(common.PY).parent / "rq"), "worker", "-u", RQ_URL, "-w", "rq.worker.SimpleWorker", "-q", "bench"]
    return [common.Process(cmd, env, data_dir / f"rq-{i}.log", cwd=common.BENCH) for i in range(workers)], cmd


def _setup(peer):
    """(enqueue noop(i, n), enqueue probe(t), start workers) for `peer`."""
    import peer_tasks

    if peer == "celery":
        _flush(CELERY_URL)
        return (
            lambda i, n: peer_tasks.celery_noop.delay(i, n),
            lambda: peer_tasks.celery_probe.delay(time.time()),
            _celery_worker,
        )
    from rq import Queue

    queue = Queue("bench", connection=_flush(RQ_URL))
    return (
        lambda i, n: queue.enqueue(peer_tasks.noop, i, n),
        lambda: queue.enqueue(peer_tasks.probe, time.time()),
        _rq_workers,
    )


def drain(peer, n=20000, workers=4, timeout=300):
    data_dir = common.scratch(f"peer-drain-{peer}")
    marks = data_dir / "marks.txt"
    enqueue, _, start = _setup(peer)
    started = time.perf_counter()
    for i in range(n):
        enqueue(i, n)
    enqueue_s = time.perf_counter() - started
    processes, cmd = start(data_dir, marks, workers)
    try:
        common.wait_until(lambda: len(_marks(marks)[0]) >= 2, timeout, interval=0.1, message=f"{peer} drain")
        rss = round(sum(common.rss_mb(p.pid) for p in processes), 1)
    finally:
        for process in processes:
            process.stop()
    stamps, _ = _marks(marks)
    seconds = stamps[str(n - 1)] - stamps["0"]
    return {
        "jobs_per_s": round(n / seconds, 1),
        "seconds": round(seconds, 2),
        "enqueue_per_s": round(n / enqueue_s, 1),
        "rss_mb": rss,
        "command": common.shown(cmd) + (f"  (×{workers} processes)" if peer == "rq" else ""),
    }


def latency(peer, n=500, interval=0.01, idle=30.0, workers=4):
    data_dir = common.scratch(f"peer-latency-{peer}")
    marks = data_dir / "marks.txt"
    _, probe, start = _setup(peer)
    processes, cmd = start(data_dir, marks, workers)
    try:
        time.sleep(5)  # start-up, then idle
        begin = time.monotonic()
        for i in range(n):
            pause = begin + i * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            probe()
        common.wait_until(lambda: len(_marks(marks)[1]) >= n, 60, interval=0.1, message=f"{peer} probes")
        time.sleep(2)
        before = _cpu(processes)
        time.sleep(idle)
        cpu = round(100 * (_cpu(processes) - before) / idle, 2)
    finally:
        for process in processes:
            process.stop()
    _, lats = _marks(marks)
    return {
        "p50_ms": common.ms(common.percentile(lats, 50)),
        "p95_ms": common.ms(common.percentile(lats, 95)),
        "p99_ms": common.ms(common.percentile(lats, 99)),
        "idle_cpu_pct": cpu,
        "idle_seconds": idle,
        "command": common.shown(cmd),
    }


NAMES = {"celery": "Celery 5.7 (Redis broker, -P threads -c 4)", "rq": "RQ (4 SimpleWorker processes)"}


def rows(quick=False, n=20000, idle=30.0, litejobs_redis=None):
    """Table rows for both peers; `litejobs_redis` (jobs/s) adds a ratio."""
    absent = missing()
    if absent:
        return [
            {
                "id": "peers",
                "benchmark": "peers: Celery and RQ on the drain and latency rows",
                "litejobs": "skipped",
                "baseline": "",
                "result": f"not installed ({', '.join(absent)}): .venv/bin/pip install -r bench/requirements-peers.txt",
                "target": "—",
                "met": None,
                "data": {"missing": absent},
            }
        ]
    try:
        common.reset_redis()
    except Exception as exc:  # noqa: BLE001 - any failure to reach Redis skips the peers
        return [{"id": "peers", "benchmark": "peers", "litejobs": "skipped", "baseline": "",
                 "result": f"Redis unreachable: {exc}", "target": "—", "met": None, "data": {}}]
    if quick:
        n, idle = min(n, 3000), min(idle, 5.0)
    out = []
    for peer in ("celery", "rq"):
        data = drain(peer, n)
        ratio = f"litejobs on Redis {litejobs_redis / data['jobs_per_s']:.2f}× this" if litejobs_redis else ""
        out.append(
            {
                "id": f"peer-drain-{peer}",
                "benchmark": f"peer drain {n:,} no-op jobs: {NAMES[peer]}",
                "litejobs": f"{data['jobs_per_s']:,.0f} jobs/s",
                "baseline": "",
                "result": f"enqueue {data['enqueue_per_s']:,.0f}/s; {ratio}".rstrip("; "),
                "target": "—",
                "met": None,
                "data": data,
            }
        )
        data = latency(peer, idle=idle)
        out.append(
            {
                "id": f"peer-latency-{peer}",
                "benchmark": f"peer pickup latency, 500 jobs 10 ms apart: {NAMES[peer]}",
                "litejobs": f"p50 {data['p50_ms']} / p95 {data['p95_ms']} / p99 {data['p99_ms']} ms",
                "baseline": "",
                "result": f"idle CPU {data['idle_cpu_pct']}% of a core",
                "target": "—",
                "met": None,
                "data": data,
            }
        )
    return out


if __name__ == "__main__":
    import json

    quick = "--quick" in sys.argv
    try:
        for row in rows(quick=quick):
            print(f"{row['benchmark']}: {row['litejobs']} {row['result']}")
            print("   ", json.dumps(row["data"]))
    finally:
        common.cleanup()
