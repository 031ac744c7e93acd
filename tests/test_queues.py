"""Queues with priorities, concurrency limits across consumers, time limits."""

import subprocess
import sys
import threading
import time

import pytest
from helpers import ROOT, RunningConsumer, wait_until, base_env, registered_tasks

from consumer import reap
import job_history
import jobs
import settings
import models
from models import Job, SchemaVersion, db

_running = {"now": 0, "peak": 0}
_lock = threading.Lock()


def tidy(n: int, seconds: float = 0.0):
    """A maintenance chore."""
    time.sleep(seconds)
    return n


def resize(n: int):
    """A media chore."""
    return n


def full_sync(n: int, seconds: float = 0.1):
    """At most two at once, across every consumer."""
    with _lock:
        _running["now"] += 1
        _running["peak"] = max(_running["peak"], _running["now"])
    try:
        time.sleep(seconds)
    finally:
        with _lock:
            _running["now"] -= 1
    return n


def overrun():
    """Loops past its timeout, calling progress() as long jobs must."""
    for step in range(100):
        jobs.progress(step, 100)
        time.sleep(0.05)


@pytest.fixture(autouse=True, scope="module")
def test_functions():
    """tidy, resize, full_sync and overrun as tasks while these tests run."""
    tasks = (
        (tidy, {"queue": "maintenance", "public": True}),
        (resize, {"queue": "media", "public": True}),
        (full_sync, {"queue": "sync", "limit": 2}),
        (overrun, {"timeout": 0.5}),
    )
    with registered_tasks(*tasks):
        yield


def test_higher_priority_queue_runs_next(client, backend):
    busy = client.post("/api/v1/jobs/tidy", {"n": -1, "seconds": 1.0}).json
    running = RunningConsumer(workers=1)
    try:
        wait_until(lambda: Job.get_by_id(busy["id"]).status == "running")
        chores = [client.post("/api/v1/jobs/tidy", {"n": n}).json["id"] for n in range(20)]
        media = client.post("/api/v1/jobs/resize", {"n": 0}).json["id"]
        wait_until(lambda: Job.select().where(Job.status == "succeeded").count() == 22, timeout=30)
    finally:
        running.stop()
    order = [j.id for j in Job.select().order_by(Job.started_at)]
    assert order[0] == busy["id"] and order[1] == media, "the media job must run right after the busy one"
    assert set(order[2:]) == set(chores)


def test_queues_endpoint_lists_every_configured_queue(client):
    client.post("/api/v1/jobs/tidy", {"n": 1})
    client.post("/api/v1/jobs/tidy", {"n": 2})
    queues = {q["name"]: q for q in client.get("/api/v1/queues").json["queues"]}
    assert set(settings.DEFAULT_QUEUE_PRIORITIES) <= set(queues)
    assert queues["media"]["priority"] == 9 and queues["default"]["priority"] == 1
    maintenance = queues["maintenance"]
    assert maintenance["depth"] == 2 and maintenance["running"] == 0 and maintenance["oldest_wait_s"] >= 0
    assert queues["emails"] == {
        "name": "emails",
        "priority": 8,
        "depth": 0,
        "running": 0,
        "oldest_wait_s": None,
        "concurrency_limit": None,
        "served": False,  # no consumer runs
    }


def _two_consumers_run_twelve_syncs():
    _running.update(now=0, peak=0)
    ids = [jobs.enqueue("full_sync", n=n).id for n in range(12)]
    consumers = [RunningConsumer(workers=3), RunningConsumer(workers=3)]
    try:
        wait_until(lambda: Job.select().where(Job.id.in_(ids) & (Job.status == "succeeded")).count() == 12, timeout=60)
    finally:
        for consumer in consumers:
            consumer.stop()
    assert _running["peak"] == 2


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_concurrency_limit_holds_across_two_consumers(backend):
    _two_consumers_run_twelve_syncs()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_concurrency_limit_holds_across_two_consumers_on_postgresql(backend, postgres_database):
    # PostgreSQL reads counts from a snapshot; this is the path with the advisory lock.
    _two_consumers_run_twelve_syncs()


def _running_job(job_id, name, queue, consumer_id):
    """A job some other consumer is running: it holds a place under the limits."""
    return Job.create(id=job_id, name=name, args='{"n": 0}', queue=queue, status="running", consumer_id=consumer_id)


def test_job_over_its_limit_waits_and_says_so(monkeypatch):
    monkeypatch.setitem(settings.CONCURRENCY_LIMITS, "maintenance", 1)
    other = _running_job("elsewhere", "tidy", "maintenance", None)
    job = jobs.enqueue("tidy", n=1)
    jobs.huey.execute(jobs.huey.dequeue())
    row = Job.get_by_id(job.id)
    assert row.status == "queued" and "queue:maintenance (limit 1)" in row.waiting_for
    assert jobs.huey.pending_count() == 1
    Job.mark_finished(other.id, "succeeded")
    jobs.huey.execute(jobs.huey.dequeue())
    row = Job.get_by_id(job.id)
    assert row.status == "succeeded" and row.waiting_for is None


def test_place_of_a_dead_consumer_is_freed_by_the_reaper():
    lost = [_running_job(f"lost-{n}", "full_sync", "sync", "gone-host:1:abc").id for n in range(2)]
    job = jobs.enqueue("full_sync", n=1, seconds=0)
    jobs.huey.execute(jobs.huey.dequeue())
    assert Job.get_by_id(job.id).status == "queued", "both places are held by the dead consumer's jobs"
    assert reap() == 2
    while jobs.huey.pending_count():
        jobs.huey.execute(jobs.huey.dequeue())
    assert [Job.get_by_id(i).status for i in [job.id, *lost]] == ["succeeded"] * 3


def test_limited_job_cut_short_by_a_stop_runs_again():
    job = jobs.enqueue("full_sync", n=1, seconds=0)
    message = jobs.huey.dequeue()
    assert Job.mark_running(job.id, "w", None, limits=jobs.FUNCTIONS["full_sync"].limits)
    job_history._requeue_interrupted("interrupted", message)  # what a consumer stop does with a running job
    assert Job.get_by_id(job.id).status == "queued"
    jobs.huey.execute(jobs.huey.dequeue())
    assert Job.get_by_id(job.id).status == "succeeded"


def test_database_with_the_old_slot_table_is_migrated():
    db.execute_sql('CREATE TABLE "slot" ("key" VARCHAR(255), "number" INTEGER)')
    SchemaVersion.delete().execute()
    SchemaVersion.create(version=0)
    models.create_tables()
    assert "slot" not in db.get_tables()
    assert SchemaVersion.select().order_by(SchemaVersion.version.desc()).first().version == len(models.MIGRATIONS)


# The tables of the hand-kept MODELS list, before each concern's tables moved to a module of its own.
TABLES = {
    "apikey", "certificate", "comment", "course", "dailyanalytics", "digestweek", "enrollment", "job", "job_count",
    "job_duration", "lesson", "lessoncompletion", "like", "mailsent", "media", "orders", "post", "posttag",
    "sandbox_fault", "sandbox_order", "schedulerun", "schedulestate", "schemaversion", "share", "token",
    "trendingsnapshot", "user", "userstats", "webhook", "webhookdelivery", "worker",
}


@pytest.mark.parametrize("first", ["jobs", "apps.orders", "apps.webhooks", "schedules", "apps.content", "apps.courses", "mailer"])
def test_a_consumer_made_after_import_jobs_has_every_table_and_task(tmp_path, first):
    """A fresh process that imports jobs (after any module) and makes a consumer, as
    `huey_consumer jobs.huey` does, gets every table and every task of the default apps."""
    code = (
        f"import {first}, jobs, models; jobs.huey.create_consumer(workers=1); models.create_tables()\n"
        "print(' '.join(sorted(models.db.get_tables())))\n"
        "print(' '.join(sorted(jobs.FUNCTIONS)))\n"
    )
    env = base_env()
    env.update(DATA_DIR=str(tmp_path), LOG_LEVEL="WARNING")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    tables, functions = result.stdout.splitlines()
    assert TABLES <= set(tables.split()), f"missing: {sorted(TABLES - set(tables.split()))}"
    assert {"dispatch_order", "deliver_webhook", "send_digest", "generate_certificate", "ping"} <= set(functions.split())


def test_timeout_fails_the_job_at_its_next_progress(consumer):
    job = jobs.enqueue("overrun")
    row = wait_until(lambda: (r := Job.get_by_id(job.id)).is_terminal and r, timeout=10)
    assert row.status == "failed" and row.error == "timeout"
    assert 400 <= row.duration_ms < 3000
