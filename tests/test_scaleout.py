"""Scale-out and stops: several consumer processes on Redis or PostgreSQL queues with a
PostgreSQL database, scheduled work surviving restarts, and `web.py run` stopping cleanly."""

import datetime
import signal
import subprocess
import sys
import time

import pytest
from helpers import POSTGRES_URL, REDIS_URL, Client, use_postgres, use_redis, free_port, service_or_skip, wait_until, base_env
from test_faults import ROOT, completed_runs, start_consumer, statuses, stop

import jobs
from models import Job, Worker

pytestmark = pytest.mark.slow


@pytest.fixture(params=["redis", "postgresql"])
def cluster_queue(request, postgres_database, monkeypatch):
    """A shared queue on a real service, with the app database on PostgreSQL."""
    if request.param == "redis":
        service_or_skip("Redis", use_redis)
        url = REDIS_URL
    else:
        service_or_skip("PostgreSQL", use_postgres)
        url = POSTGRES_URL
    monkeypatch.setenv("FAULT_QUEUE_URL", url)
    monkeypatch.setenv("FAULT_DATABASE_URL", POSTGRES_URL)
    yield url
    jobs.huey.flush()


def test_two_consumers_run_each_job_once(tmp_path, cluster_queue):
    ids = [jobs.submit("record_run", {"n": n, "seconds": 0.01})[0].id for n in range(120)]
    consumers = [start_consumer(tmp_path, "-w", "3") for _ in range(2)]
    try:
        wait_until(lambda: statuses(ids)["succeeded"] == 120, timeout=60, message="all succeeded")
        workers = {job.consumer_id for job in Job.select().where(Job.id.in_(ids))}
    finally:
        for consumer in consumers:
            stop(consumer)
    runs = completed_runs(tmp_path)
    assert sorted(runs) == list(range(120)) and set(runs.values()) == {1}
    assert Job.select().where(Job.id.in_(ids) & (Job.attempts != 1)).count() == 0
    # Both consumers took part, and the reaper re-ran nothing of a live consumer.
    assert workers == {w.id for w in Worker.select()} and len(workers) == 2
    assert Job.select().where(Job.recoveries > 0).count() == 0


def test_scheduled_job_survives_a_restart_of_every_process(tmp_path):
    job, _ = jobs.submit("record_run", {"n": 7}, delay=3)
    first = start_consumer(tmp_path, "-w", "1")
    try:
        # The consumer moves the message into its schedule, then stops.
        wait_until(lambda: jobs.huey.scheduled_count() == 1, timeout=15, message="job in the schedule")
    finally:
        assert stop(first, signal.SIGTERM) == 0
    assert Job.get_by_id(job.id).status == "scheduled"
    second = start_consumer(tmp_path, "-w", "1")
    try:
        done = wait_until(lambda: (j := Job.get_by_id(job.id)).status == "succeeded" and j, timeout=20)
    finally:
        stop(second)
    # huey's schedule keeps whole seconds, so a job may start a fraction early.
    assert done.started_at >= job.scheduled_for - datetime.timedelta(seconds=1)
    assert completed_runs(tmp_path)[7] == 1


def test_web_run_stops_gracefully_on_sigterm_and_sigint(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGINT):
        port = free_port()
        environ = base_env()
        environ.update(DATA_DIR=str(tmp_path / sig.name), PORT=str(port), LOG_LEVEL="WARNING")
        key = subprocess.run(
            [sys.executable, "web.py", "create-key", "t"], cwd=ROOT, env=environ, capture_output=True, text=True
        ).stdout.split()[-1]
        server = subprocess.Popen([sys.executable, "web.py", "run"], cwd=ROOT, env=environ)
        client = Client(f"http://127.0.0.1:{port}", key)
        try:
            wait_until(lambda: _answers(client), timeout=30, message="web.py run answers")
            job = client.post("/api/v1/jobs/sleep", {"seconds": 1.5}).json
            wait_until(lambda: client.get(job["url"]).json["status"] == "running", timeout=10)
            server.send_signal(sig)
            assert server.wait(30) == 0
        finally:
            if server.poll() is None:
                server.kill()
        check = subprocess.run(
            [sys.executable, "-c", f"import models; print(models.Job.get_by_id({job['id']!r}).status)"],
            cwd=ROOT,
            env=environ,
            capture_output=True,
            text=True,
        )
        assert check.stdout.strip() == "succeeded", check.stderr


def _answers(client):
    try:
        return client.get("/health/live").status == 200
    except OSError:
        time.sleep(0.1)
        return False


def test_concurrent_writers_never_see_database_locked(tmp_path):
    """`web.py run` (with its consumer) and a standalone consumer write one SQLite file together."""
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    environ = base_env()
    environ.update(DATA_DIR=str(tmp_path), PORT=str(port), LOG_LEVEL="WARNING", WORKERS="2")
    key = subprocess.run(
        [sys.executable, "web.py", "create-key", "t"], cwd=ROOT, env=environ, capture_output=True, text=True
    ).stdout.split()[-1]
    server = subprocess.Popen([sys.executable, "web.py", "run"], cwd=ROOT, env=environ)
    consumer = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "jobs.huey", "-w", "4"], cwd=ROOT, env=environ
    )
    client = Client(f"http://127.0.0.1:{port}", key)
    try:
        wait_until(lambda: _answers(client), timeout=30, message="web.py run answers")

        def burst(n):
            replies = [client.post("/api/v1/jobs/echo", {"value": n * 100 + i}) for i in range(25)]
            replies.append(client.get("/api/v1/jobs?limit=20"))
            return [r.status for r in replies]

        with ThreadPoolExecutor(16) as pool:
            statuses_seen = [s for batch in pool.map(burst, range(16)) for s in batch]
        assert set(statuses_seen) <= {200, 202}, sorted(set(statuses_seen))
        wait_until(
            lambda: client.get("/api/v1/jobs?status=succeeded&limit=200&name=echo").json["next"] is not None
            and _count_succeeded(client) == 400,
            timeout=60,
            message="all 400 jobs succeeded",
        )
    finally:
        for process in (server, consumer):
            process.send_signal(signal.SIGINT)
        for process in (server, consumer):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def _count_succeeded(client):
    total, cursor = 0, None
    while True:
        # Only echo: a scheduled job (poll_pending_orders, every 5 minutes) may run meanwhile.
        page = client.get("/api/v1/jobs?status=succeeded&name=echo&limit=200" + (f"&cursor={cursor}" if cursor else "")).json
        total += len(page["jobs"])
        cursor = page["next"]
        if cursor is None:
            return total
