"""litejobs metrics: `/metrics` in the Prometheus text format (version 0.0.4).

Job counts and run times come from the database (JobCount and JobDuration,
kept by triggers on the job table), and queue depths, schedules and workers
are read there too, so the numbers are right however many consumer processes
run. HTTP request counts are this web process's own: Prometheus scrapes each
web process and adds them up.
"""

import logging
import threading

import backup
import loader
import queue_status
import settings
from models import Job, JobCount, JobDuration, Worker, utcnow

logger = logging.getLogger("litejobs.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_requests = {}  # (route, method, status) -> count
_requests_lock = threading.Lock()


# Labels come from the request: anything a client can make up folds into one value,
# so made-up methods or paths cannot grow /metrics without bound.
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def count_request(route, method, status):
    """Count one HTTP request answered by this process; `route` is the matched rule or None."""
    key = (route or "(unmatched)", method if method in METHODS else "(other)", str(int(status)))
    with _requests_lock:
        _requests[key] = _requests.get(key, 0) + 1


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value):
    return repr(value) if isinstance(value, float) else str(value)


class Exposition:
    """Builds the text: one `family()` call per metric with all its samples."""

    def __init__(self):
        self.lines = []

    def family(self, name, kind, help_text, samples):
        """`samples`: (labels, value) pairs, or (suffix, labels, value) for a histogram's parts."""
        self.lines.append(f"# HELP {name} {_escape(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for sample in samples:
            suffix, labels, value = sample if len(sample) == 3 else ("", *sample)
            text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            self.lines.append(
                f"{name}{suffix}{{{text}}} {_number(value)}" if text else f"{name}{suffix} {_number(value)}"
            )

    def text(self):
        return "\n".join(self.lines) + "\n"


def render():
    """The whole exposition; the database's series are left out (and
    litejobs_database_up is 0) while the database cannot be read."""
    out = Exposition()
    try:
        _database_metrics(out)
        up = 1
    except Exception as exc:  # any driver error: still expose what this process knows
        logger.warning("metrics: database unreadable: %s", exc)
        up = 0
    out.family("litejobs_database_up", "gauge", "1 when the database answered this scrape, else 0", [({}, up)])
    last_backup = backup.last_backup_timestamp()
    if last_backup is not None:  # none before the first backup: set the alert up once backups run
        out.family(
            "litejobs_last_backup_timestamp_seconds",
            "gauge",
            "Unix time of the last backup archive written from this DATA_DIR (web.py backup)",
            [({}, last_backup)],
        )
    with _requests_lock:
        requests = sorted(_requests.items())
    out.family(
        "litejobs_http_requests_total",
        "counter",
        "HTTP requests answered by this web process, by route, method and status",
        [({"route": route, "method": method, "status": status}, n) for (route, method, status), n in requests],
    )
    return out.text()


def _database_metrics(out):
    now = utcnow()
    counts = sorted(JobCount.select().tuples())
    out.family(
        "litejobs_jobs_total",
        "counter",
        "Job events by function: enqueued, succeeded, failed, canceled, expired, retried, recovered",
        [({"function": function, "status": status}, n) for function, status, n in counts],
    )

    samples = []
    for function, (buckets, total) in JobDuration.histograms().items():
        samples += [("_bucket", {"function": function, "le": le}, n) for le, n in buckets]
        samples += [("_sum", {"function": function}, total), ("_count", {"function": function}, buckets[-1][1])]
    out.family("litejobs_job_duration_seconds", "histogram", "Run time of finished jobs, by function", samples)

    queues = queue_status.queues(now)

    def by_queue(key):
        return [({"queue": queue["name"]}, queue[key] or 0) for queue in queues]

    out.family("litejobs_queue_depth", "gauge", "Jobs waiting to run, by queue", by_queue("depth"))
    out.family("litejobs_queue_running", "gauge", "Jobs running, by queue", by_queue("running"))
    out.family(
        "litejobs_queue_oldest_seconds",
        "gauge",
        "Seconds the oldest waiting job of the queue has waited (0 when none waits)",
        by_queue("oldest_wait_s"),
    )
    out.family(
        "litejobs_queue_served",
        "gauge",
        "1 while a live consumer serves the queue (QUEUES names it, or is empty), else 0",
        [({"queue": queue["name"]}, int(queue["served"])) for queue in queues],
    )
    out.family(
        "litejobs_scheduled_jobs",
        "gauge",
        "Jobs scheduled for later (delay, eta)",
        [({}, Job.count_status("scheduled"))],
    )
    out.family(
        "litejobs_workers_alive",
        "gauge",
        f"Consumers with a heartbeat in the last HEARTBEAT_TIMEOUT ({settings.HEARTBEAT_TIMEOUT:g} s)",
        [({}, Worker.alive().count())],  # by the database's clock
    )
    for app in loader.loaded_apps():
        if app.metrics is not None:
            app.metrics(out, now)  # each app adds its own families
