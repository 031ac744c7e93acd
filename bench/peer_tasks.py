"""The no-op job for the peers (Celery on Redis, RQ), as bench/plain_tasks.py is for huey.

Each call appends to BENCH_MARKS: `i time` for the first and last call of a
drain of n, or `lat seconds` (start minus the enqueue time it was given) for a
latency probe.
"""

import os
import time

MARKS = os.environ.get("BENCH_MARKS", os.devnull)
CELERY_BROKER = os.environ.get("BENCH_CELERY_BROKER", "redis://127.0.0.1:6379/11")


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
except ImportError:  # the peers are optional: pip install -r bench/requirements-peers.txt
    celery = None
else:
    celery = Celery("peer_tasks", broker=CELERY_BROKER)
    celery.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
    celery_noop = celery.task(name="noop")(noop)
    celery_probe = celery.task(name="probe")(probe)
