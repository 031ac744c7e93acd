"""The no-op job for the peers (Celery, RQ, Dramatiq on Redis; Procrastinate on
PostgreSQL), as bench/bench_plain_tasks.py is for huey.

Each call appends to BENCH_MARKS: `i time` for the first and last call of a
drain of n, or `lat seconds` (start minus the enqueue time it was given) for a
latency probe. Each peer is set up only when its package is installed
(`pip install -r bench/requirements-peers.txt`).
"""

import os
import time

MARKS = os.environ.get("BENCH_MARKS", os.devnull)
CELERY_BROKER = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/11")
RQ_URL = os.environ.get("BENCH_RQ_URL", "redis://127.0.0.1:6379/10")
DRAMATIQ_URL = os.environ.get("BENCH_DRAMATIQ_URL", "redis://127.0.0.1:6379/9")
PROCRASTINATE_URL = os.environ.get("BENCH_PROCRASTINATE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _mark(line):
    with open(MARKS, "a") as marks:
        marks.write(line + "\n")


def noop(i, n):
    """Do nothing; the first and last call of a run of `n` note the time."""
    if i == 0 or i == n - 1:
        _mark(f"{i} {time.time()}")


def probe(enqueued):
    """Note how long after `enqueued` (a wall-clock time) this call started."""
    _mark(f"lat {time.time() - enqueued}")


try:
    from celery import Celery
except ImportError:
    celery = None
else:
    # A result backend on Redis: each finished task leaves its outcome, as litejobs' history does.
    celery = Celery("bench_peer_tasks", broker=CELERY_BROKER, backend=CELERY_BROKER)
    celery.conf.update(
        task_ignore_result=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    celery_noop = celery.task(name="noop")(noop)
    celery_probe = celery.task(name="probe")(probe)


def rq_queue():
    import redis
    from rq import Queue

    return Queue("bench", connection=redis.Redis.from_url(RQ_URL))


try:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker
except ImportError:
    dramatiq = None
else:
    dramatiq.set_broker(RedisBroker(url=DRAMATIQ_URL))
    dramatiq_noop = dramatiq.actor(noop, actor_name="noop", max_retries=0)
    dramatiq_probe = dramatiq.actor(probe, actor_name="probe", max_retries=0)


try:
    import procrastinate
except ImportError:
    procrastinate_app = None
else:
    procrastinate_app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=PROCRASTINATE_URL))
    procrastinate_noop = procrastinate_app.task(name="noop")(noop)
    procrastinate_probe = procrastinate_app.task(name="probe")(probe)
