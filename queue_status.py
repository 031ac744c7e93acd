"""litejobs queue status: each queue's depth, running jobs, oldest wait, limit and whether a consumer serves it.

One look-up that /api/v1/queues, the overview, /metrics and /health/ready
share. A queue is served while some live consumer serves it: one started with
QUEUES naming it, or one serving every queue (QUEUES empty).
"""

import jobs
import settings
from models import Job, Worker, utcnow


def served_by(workers):
    """The queues these workers serve, or None when one of them serves every queue."""
    served = set()
    for worker in workers:
        if not worker.queue_names:
            return None
        served.update(worker.queue_names)
    return served


def queues(now=None):
    """Every configured queue (and any a function or a waiting job uses): priority, depth,
    running, oldest wait, limit and `served`."""
    now = now or utcnow()
    stats = Job.queue_stats()
    served = served_by(Worker.alive())
    names = jobs.known_queues() | set(stats)
    result = []
    for name in sorted(names, key=lambda q: (-settings.QUEUE_PRIORITIES.get(q, 0), q)):
        queue = stats.get(name, {"depth": 0, "running": 0, "oldest": None})
        oldest = queue["oldest"]
        result.append(
            {
                "name": name,
                "priority": settings.QUEUE_PRIORITIES.get(name, 0),
                "depth": queue["depth"],
                "running": queue["running"],
                "oldest_wait_s": round(max((now - oldest).total_seconds(), 0), 3) if oldest else None,
                "concurrency_limit": settings.CONCURRENCY_LIMITS.get(name),
                "served": served is None or name in served,
            }
        )
    return result


def unserved_waiting(listing):
    """Names of the queues in `listing` (queues()) that jobs wait in and no live consumer serves."""
    return [queue["name"] for queue in listing if queue["depth"] and not queue["served"]]
