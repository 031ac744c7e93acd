"""Peers on the drain and latency rows, with the same no-op job, each at its best
setting for 2 cores: Dramatiq (2 processes × 4 threads), Celery (prefork 2 and
threads 4, with a Redis result backend), RQ (SimpleWorker processes), all on
Redis; and Procrastinate (2 worker processes, concurrency 4) on PostgreSQL, the
peer of litejobs' all-PostgreSQL set-up. Needs
`pip install -r bench/requirements-peers.txt`; a peer whose package is missing
is a failed row.

Each peer uses a Redis db of its own (Dramatiq BENCH_DRAMATIQ_URL, db 9; RQ
BENCH_RQ_URL, db 10; Celery BENCH_CELERY_BROKER, db 11), flushed first, and
Procrastinate a schema of its own in BENCH_POSTGRES_URL. The drain is measured
as litejobs' is (bench/drain.py): the workers start and answer a first call,
then another process (bench/bench_producer.py) enqueues N calls while they
work; the span runs from the first call's start to the last call's finish.
litejobs' own Redis drain (and PostgreSQL drain, for Procrastinate) runs in the
same row group, the same way, for the ratio.

    .venv/bin/python bench/peers.py [--quick] [--only dramatiq,celery-prefork]
"""

import os
import sys
import time
from pathlib import Path

import common

if __name__ == "__main__":
    common.driver_setup()

import drain  # noqa: E402

DRAMATIQ_URL = os.environ.get("BENCH_DRAMATIQ_URL", "redis://127.0.0.1:6379/9")
RQ_URL = os.environ.get("BENCH_RQ_URL", "redis://127.0.0.1:6379/10")
CELERY_URL = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/11")
PROCRASTINATE_SCHEMA = "procrastinate_bench"
RQ_PROCESSES = 4

PEERS = {
    "dramatiq": ("dramatiq", "Dramatiq 2.2 (Redis broker, 2 processes × 4 threads)"),
    "celery-prefork": ("celery", "Celery 5.7 (Redis broker and result backend, -P prefork -c 2)"),
    "celery-threads": ("celery", "Celery 5.7 (Redis broker and result backend, -P threads -c 4)"),
    "rq": ("rq", f"RQ 3.0 ({RQ_PROCESSES} SimpleWorker processes, results kept)"),
    "procrastinate": ("procrastinate", "Procrastinate 3.10 (PostgreSQL, 2 worker processes × concurrency 4)"),
}
REDIS_PEERS = ("dramatiq", "celery-prefork", "celery-threads", "rq")


def peer_env(data_dir, marks):
    return common.service_env(
        data_dir,
        BENCH_MARKS=marks,
        BENCH_DRAMATIQ_URL=DRAMATIQ_URL,
        BENCH_RQ_URL=RQ_URL,
        BENCH_CELERY_BROKER=CELERY_URL,
        BENCH_PROCRASTINATE_URL=common.postgres_url(PROCRASTINATE_SCHEMA),
    )


def missing():
    """Names of the peer packages that are not installed."""
    absent = []
    for module in sorted({module for module, _ in PEERS.values()}):
        try:
            __import__(module)
        except ImportError:
            absent.append(module)
    return absent


def _flush(url):
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=2).flushdb()


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


def _bin(name):
    return str(Path(common.PY).parent / name)


def start_workers(peer, data_dir, env):
    """Reset the peer's storage and start its workers; returns (processes, command shown)."""
    log = Path(data_dir)
    if peer == "dramatiq":
        _flush(DRAMATIQ_URL)
        cmd = [_bin("dramatiq"), "bench_peer_tasks", "--processes", "2", "--threads", "4"]
        return [common.Process(cmd, env, log / "dramatiq.log", cwd=common.BENCH)], common.shown(cmd)
    if peer.startswith("celery"):
        _flush(CELERY_URL)
        pool = ["-P", "prefork", "-c", "2"] if peer == "celery-prefork" else ["-P", "threads", "-c", "4"]
        cmd = [common.PY, "-m", "celery", "-A", "bench_peer_tasks", "worker", *pool,
               "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "WARNING"]
        return [common.Process(cmd, env, log / "celery.log", cwd=common.BENCH)], common.shown(cmd)
    if peer == "rq":
        _flush(RQ_URL)
        cmd = [_bin("rq"), "worker", "-u", RQ_URL, "-w", "rq.worker.SimpleWorker", "-q", "bench"]
        processes = [common.Process(cmd, env, log / f"rq-{i}.log", cwd=common.BENCH) for i in range(RQ_PROCESSES)]
        return processes, f"{common.shown(cmd)}  (×{RQ_PROCESSES} processes)"
    if peer == "procrastinate":
        import subprocess

        common.reset_postgres(PROCRASTINATE_SCHEMA)
        app = ["--app", "bench_peer_tasks.procrastinate_app"]
        subprocess.run([_bin("procrastinate"), *app, "schema", "--apply"], cwd=common.BENCH, env=env,
                       check=True, capture_output=True)
        cmd = [_bin("procrastinate"), "--log-level", "warning", *app, "worker", "--concurrency", "4",
               "--delete-jobs", "never"]
        processes = [common.Process(cmd, env, log / f"procrastinate-{i}.log", cwd=common.BENCH) for i in range(2)]
        return processes, f"{common.shown(cmd)}  (×2 processes)"
    raise ValueError(peer)


def _ready(peer, env, marks, processes, timeout=60):
    """Send one probe and wait for it to run: the workers are up and connected."""
    drain.produce(f"{PEERS[peer][0]}:probe", 1, env, marks.parent)

    def ran():
        for process in processes:
            if not process.alive():
                raise RuntimeError(f"{peer} worker exited with {process.popen.returncode}:\n{process.tail()}")
        return _marks(marks)[1]

    common.wait_until(ran, timeout, interval=0.05, message=f"{peer} workers to start")
    marks.unlink()


def drain_peer(peer, n=20000, timeout=300):
    data_dir = common.scratch(f"peer-drain-{peer}")
    marks = data_dir / "marks.txt"
    env = peer_env(data_dir, marks)
    processes, shown = start_workers(peer, data_dir, env)
    try:
        _ready(peer, env, marks, processes)
        enqueue_s = drain.produce(PEERS[peer][0], n, env, data_dir)
        common.wait_until(lambda: len(_marks(marks)[0]) >= 2, timeout, interval=0.1, message=f"{peer} drain")
        time.sleep(0.05)
        rss = drain.consumer_rss(processes)
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
        "command": shown,
    }


def latency_peer(peer, n=500, interval=0.01, idle=30.0):
    data_dir = common.scratch(f"peer-latency-{peer}")
    marks = data_dir / "marks.txt"
    env = peer_env(data_dir, marks)
    processes, shown = start_workers(peer, data_dir, env)
    try:
        _ready(peer, env, marks, processes)
        time.sleep(2)
        # Paced probes from a producer process, each carrying its enqueue time.
        drain.produce(f"{PEERS[peer][0]}:probe", n, env, data_dir, interval=interval)
        common.wait_until(lambda: len(_marks(marks)[1]) >= n, 60, interval=0.1, message=f"{peer} probes")
        time.sleep(2)
        before = sum(common.cpu_seconds(p.pid) for p in processes)
        time.sleep(idle)
        cpu = round(100 * (sum(common.cpu_seconds(p.pid) for p in processes) - before) / idle, 2)
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
        "command": shown,
    }


def _row(row_id, benchmark, litejobs, result, data, status="ok"):
    return {"id": row_id, "benchmark": benchmark, "litejobs": litejobs, "baseline": "", "result": result,
            "target": "—", "met": None, "status": status, "data": data}


def rows(quick=False, n=20000, idle=30.0, latency_n=500, only=None):
    """The peers' rows, each drain with the ratio of litejobs' drain on the same storage."""
    absent = missing()
    if absent:
        return [_row("peers", "peers", "failed", f"not installed ({', '.join(absent)}): "
                     ".venv/bin/pip install -r bench/requirements-peers.txt", {"missing": absent}, "failed")]
    if quick:
        n, idle, latency_n = min(n, 3000), min(idle, 3.0), min(latency_n, 100)
    peers = [p for p in PEERS if not only or p in only]
    out = []
    litejobs = {}
    wanted = {"redis"} if any(p in REDIS_PEERS for p in peers) else set()
    if "procrastinate" in peers:
        wanted.add("postgresql")
    for backend in sorted(wanted):
        data = drain.drain_litejobs(backend, "thread", 4, n)
        litejobs[backend] = data["jobs_per_s"]
        out.append(_row(f"peer-litejobs-{backend}",
                        f"litejobs on the peers' terms: drain {n:,} pings, {drain.NAMES[backend]} queue + "
                        f"{drain.database_label(backend)}, `huey_consumer jobs.huey -w 4 -k thread`",
                        f"{data['jobs_per_s']:,.0f} jobs/s", "the rate the peers' ratios below use", data))
    for peer in peers:
        backend = "postgresql" if peer == "procrastinate" else "redis"
        data = drain_peer(peer, n)
        ratio = litejobs[backend] / data["jobs_per_s"]
        data["litejobs_ratio"] = round(ratio, 3)
        out.append({
            **_row(f"peer-drain-{peer}", f"peer drain {n:,} no-op jobs: {PEERS[peer][1]}",
                   f"{data['jobs_per_s']:,.0f} jobs/s",
                   f"litejobs on {drain.NAMES[backend]} {ratio:.2f}× this; enqueue {data['enqueue_per_s']:,.0f}/s", data),
            "baseline": f"litejobs {litejobs[backend]:,.0f} jobs/s",
            "target": "litejobs ≥ 1.0×",
            "met": ratio >= 1.0,
        })
        if quick:
            continue  # the quick run keeps the drains; pickup latency is in the full run
        data = latency_peer(peer, n=latency_n, idle=idle)
        out.append(_row(f"peer-latency-{peer}",
                        f"peer pickup latency, {latency_n} jobs 10 ms apart: {PEERS[peer][1]}",
                        f"p50 {data['p50_ms']} / p95 {data['p95_ms']} / p99 {data['p99_ms']} ms",
                        f"idle CPU {data['idle_cpu_pct']}% of a core", data))
    return out


if __name__ == "__main__":
    import json

    only = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--only=")), None)
    try:
        for row in rows(quick="--quick" in sys.argv, only=only):
            print(f"{row['benchmark']}: {row['litejobs']}  {row['result']}")
            print("   ", json.dumps(row["data"]))
    finally:
        common.cleanup()
