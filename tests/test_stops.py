"""Hard stops and the default time limit: cancel?terminate=true and JOB_TIMEOUT
stop a job that never calls progress(), on real thread and process consumers."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import stop_tasks  # noqa: F401 - registers spin in this process too
from helpers import base_env, RunningConsumer, assert_error, wait_until

import jobs
import settings
from models import Job

ROOT = Path(__file__).resolve().parent.parent


def status(job_id):
    return Job.get_by_id(job_id).status


@pytest.fixture
def threads():
    running = RunningConsumer(workers=2)
    yield running
    running.stop()


def test_terminate_stops_a_thread_job_that_never_calls_progress(client, threads):
    stuck = client.post("/api/v1/jobs/spin", {"seconds": 60}).json
    neighbour = client.post("/api/v1/jobs/sleep", {"seconds": 1.5}).json
    wait_until(lambda: status(stuck["id"]) == "running" and status(neighbour["id"]) == "running", message="both run")
    started = time.monotonic()
    reply = client.post(f"/api/v1/jobs/{stuck['id']}/cancel?terminate=true")
    assert reply.status == 200 and reply.json["terminate"] == "thread-exception"
    assert reply.json["status"] == "canceled" and time.monotonic() - started < 3
    assert reply.json["error"] == "terminated: canceled while running"
    # Its place under spin's limit of 1 is free again, and the other job ran on.
    assert client.post("/api/v1/jobs/spin?wait=10", {"seconds": 0.1}).json["status"] == "succeeded"
    wait_until(lambda: status(neighbour["id"]) == "succeeded", timeout=10, message="neighbour done")


def test_terminate_of_waiting_finished_and_bad_requests(client):
    waiting = client.post("/api/v1/jobs/ping", {}).json  # no consumer: it waits
    reply = client.post(f"/api/v1/jobs/{waiting['id']}/cancel?terminate=true")
    assert reply.status == 200 and reply.json["status"] == "canceled" and reply.json["terminate"] is None
    assert_error(client.post(f"/api/v1/jobs/{waiting['id']}/cancel?terminate=true"), 409, "conflict")
    assert_error(client.post(f"/api/v1/jobs/{waiting['id']}/cancel?terminate=soon"), 422, "invalid_argument", "terminate")
    assert_error(client.post("/api/v1/jobs/nope/cancel?terminate=true"), 404, "not_found")


def test_job_timeout_stops_a_thread_job_and_retries_where_the_function_has_retries(monkeypatch, threads):
    monkeypatch.setattr(settings, "JOB_TIMEOUT", 1.0)
    stuck, _ = jobs.submit("spin", {"seconds": 60})
    retried, _ = jobs.submit("spin_with_retries", {"seconds": 60})
    wait_until(lambda: status(stuck.id) == "failed", timeout=6, message="timed out")
    job = Job.get_by_id(stuck.id)
    assert job.error == "timeout" and 0.9 <= job.duration_ms / 1000 < 3
    wait_until(lambda: status(retried.id) == "failed", timeout=10, message="timed out twice")
    assert Job.get_by_id(retried.id).attempts == 2 and Job.get_by_id(retried.id).error == "timeout"


def test_job_timeout_zero_means_no_limit(monkeypatch, threads):
    monkeypatch.setattr(settings, "JOB_TIMEOUT", 0.0)
    job, _ = jobs.submit("spin", {"seconds": 1.2})
    wait_until(lambda: status(job.id) == "succeeded", timeout=10, message="ran to its end")


def start_consumer(tmp_path, *args, **env):
    environ = base_env()
    environ.update(
        DATA_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        QUEUE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        **env,
    )
    log = open(tmp_path / "consumer.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "stop_tasks.huey", *args],
        cwd=ROOT,
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_terminate_and_timeout_end_the_worker_process_on_process_consumers(tmp_path, client):
    consumer = start_consumer(tmp_path, "-k", "process", "-w", "2", JOB_TIMEOUT="2")
    try:
        stuck = client.post("/api/v1/jobs/spin", {"seconds": 60}).json
        neighbour = client.post("/api/v1/jobs/sleep", {"seconds": 1.5}).json  # under JOB_TIMEOUT=2
        wait_until(lambda: status(stuck["id"]) == "running" and status(neighbour["id"]) == "running", timeout=20,
                   message="both run")
        pid = Job.get_by_id(stuck["id"]).worker.rsplit(":", 2)[1]
        reply = client.post(f"/api/v1/jobs/{stuck['id']}/cancel?terminate=true")
        assert reply.json["terminate"] == "process-ended" and reply.json["status"] == "canceled", reply.json
        wait_until(lambda: status(neighbour["id"]) == "succeeded", timeout=10, message="neighbour done")
        # A new worker process took the ended one's place: two jobs run side by side again.
        again = [client.post("/api/v1/jobs/sleep", {"seconds": 1}).json["id"] for _ in range(2)]
        wait_until(lambda: all(status(i) == "succeeded" for i in again), timeout=15, message="new worker runs")
        pids = {Job.get_by_id(i).worker.rsplit(":", 2)[1] for i in again}
        assert pid not in pids and len(pids) == 2
        # JOB_TIMEOUT=2 there: huey's alarm ends a job that never calls progress().
        slow = client.post("/api/v1/jobs/spin", {"seconds": 60}).json
        wait_until(lambda: status(slow["id"]) == "failed", timeout=10, message="timed out")
        assert Job.get_by_id(slow["id"]).error == "timeout"
    finally:
        consumer.send_signal(2)
        consumer.wait(30)


def test_a_database_from_before_gets_the_terminate_column():
    import models

    models.db.execute_sql('ALTER TABLE "job" DROP COLUMN "terminate_requested"')
    models.SchemaVersion.delete().execute()
    models.SchemaVersion.create(version=1)
    models.create_tables()
    assert "terminate_requested" in {c.name for c in models.db.get_columns("job")}
    assert models.SchemaVersion.select().order_by(models.SchemaVersion.version.desc()).first().version == len(models.MIGRATIONS)
