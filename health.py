"""litejobs health: the readiness checks behind /health/ready.

`down` (503) while the database cannot be written, the queue cannot be read,
a data disk is under DISK_RESERVE, or jobs wait and no consumer recorded a
heartbeat within HEARTBEAT_TIMEOUT; `degraded` (200) when no consumer runs
but nothing waits, or jobs wait in a queue that no live consumer serves
(QUEUES); `ok` otherwise.
"""

import datetime
import logging

import disk
import jobs
import queue_status
import settings
from models import SchemaVersion, Job, Worker, db, utcnow

logger = logging.getLogger("litejobs.health")


def check_database_writable():
    """Raise unless the database answers and takes a write (a no-op UPDATE, committed)."""
    with db.atomic():
        SchemaVersion.update(version=SchemaVersion.version).where(SchemaVersion.id == SchemaVersion.select(
            SchemaVersion.id).order_by(SchemaVersion.id).limit(1)).execute()


def _failed(name, exc, request_id):
    # Anyone may call /health/ready: the driver's words (hosts, users, paths) go to the log only.
    logger.warning("request %s: readiness: %s: %s: %s", request_id, name, type(exc).__name__, exc)
    return {"status": "down", "error": f"unreachable ({type(exc).__name__}); request id {request_id} in the log"}


def readiness(request_id=""):
    """(status, checks) for /health/ready; `request_id` names the log lines with the drivers' errors."""
    checks = {}
    for name, check in (("database", check_database_writable), ("queue", jobs.check_queue)):
        try:
            check()
            checks[name] = {"status": "ok"}
        except Exception as exc:  # any driver error means "cannot serve" here
            checks[name] = _failed(name, exc, request_id)
    short = disk.short_of_space()
    checks["disk"] = {"status": "down", "error": short} if short else {"status": "ok"}
    if checks["database"]["status"] != "ok":
        checks["consumer"] = {"status": "unknown", "error": "database unreachable"}
    else:
        try:
            checks["consumer"] = _consumer_check()
            checks["apps"] = apps_check(Worker.alive())
            checks["queues"] = queues_check()
        except Exception as exc:  # the database went away between the two checks
            checks["consumer"] = dict(_failed("consumer", exc, request_id), status="unknown")
    if any(check["status"] == "down" for name, check in checks.items() if name != "consumer"):
        return "down", checks
    consumer = checks["consumer"]
    if consumer["status"] == "down" and consumer.get("waiting"):
        return "down", checks
    ok = consumer["status"] == "ok" and all(checks.get(name, {}).get("status") == "ok" for name in ("apps", "queues"))
    return ("ok" if ok else "degraded"), checks


def apps_check(workers):
    """Whether every live consumer loaded the apps this web process loaded (else jobs may find no function)."""
    here = sorted(jobs.APPS)
    differ = [w for w in workers if sorted(w.app_names) != here]
    if not differ:
        return {"status": "ok"}
    first = differ[0]
    return {
        "status": "degraded",
        "error": f"{len(differ)} consumer(s) loaded other apps than this web process, e.g. {first.id}: "
        f"{', '.join(sorted(first.app_names)) or 'none'}; web: {', '.join(here) or 'none'} (check APPS and FUNCTIONS_DIR)",
    }


def queues_check():
    """Whether some live consumer serves each queue jobs wait in (consumers started with QUEUES)."""
    unserved = queue_status.unserved_waiting(queue_status.queues())
    if not unserved:
        return {"status": "ok"}
    return {
        "status": "degraded",
        "unserved": unserved,
        "error": f"jobs wait in queue(s) no live consumer serves: {', '.join(unserved)}; "
        "start a consumer with QUEUES naming them, or one with QUEUES empty (every queue)",
    }


def _consumer_check():
    alive = Worker.alive().count()
    if alive:
        return {"status": "ok", "alive": alive}
    due = (Job.status.in_(("queued", "retrying")) | (Job.status == "scheduled")) & (
        Job.scheduled_for.is_null() | (Job.scheduled_for <= utcnow() + datetime.timedelta(seconds=1))
    )
    waiting = Job.select().where(due).limit(1).count()
    error = f"no consumer heartbeat in the last {settings.HEARTBEAT_TIMEOUT:g} s"
    if waiting:
        error += "; jobs are waiting"
    return {"status": "down", "alive": 0, "waiting": bool(waiting), "error": error}
