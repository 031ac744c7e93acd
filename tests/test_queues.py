"""Queues with priorities, concurrency limits across consumers, time limits."""

import threading
import time

import pytest
from conftest import RunningConsumer, wait_until

import jobs
import settings
from models import Job, Slot

_running = {"now": 0, "peak": 0}
_lock = threading.Lock()


@jobs.task(queue="maintenance", public=True)
def tidy(n: int, seconds: float = 0.0):
    """A maintenance chore."""
    time.sleep(seconds)
    return n


@jobs.task(queue="media", public=True)
def resize(n: int):
    """A media chore."""
    return n


@jobs.task(queue="sync", limit=2)
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


@jobs.task(timeout=0.5)
def overrun():
    """Loops past its timeout, calling progress() as long jobs must."""
    for step in range(100):
        jobs.progress(step, 100)
        time.sleep(0.05)


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
    }


@pytest.mark.parametrize("backend", ["sqlite", "redis"], indirect=True)
def test_concurrency_limit_holds_across_two_consumers(backend):
    _running.update(now=0, peak=0)
    ids = [jobs.enqueue("full_sync", n=n).id for n in range(12)]
    consumers = [RunningConsumer(workers=3), RunningConsumer(workers=3)]
    try:
        wait_until(lambda: Job.select().where(Job.id.in_(ids) & (Job.status == "succeeded")).count() == 12, timeout=60)
    finally:
        for consumer in consumers:
            consumer.stop()
    assert _running["peak"] == 2
    assert Slot.select().count() == 0


def test_job_over_its_limit_waits_and_says_so(monkeypatch):
    monkeypatch.setitem(settings.CONCURRENCY_LIMITS, "maintenance", 1)
    Slot.acquire([("queue:maintenance", 1)], "someone-else", None)
    job = jobs.enqueue("tidy", n=1)
    jobs.huey.execute(jobs.huey.dequeue())
    row = Job.get_by_id(job.id)
    assert row.status == "queued" and "queue:maintenance (limit 1)" in row.waiting_for
    assert jobs.huey.pending_count() == 1
    Slot.release("someone-else")
    jobs.huey.execute(jobs.huey.dequeue())
    row = Job.get_by_id(job.id)
    assert row.status == "succeeded" and row.waiting_for is None


def test_slot_of_a_dead_consumer_is_freed_by_the_reaper():
    Slot.acquire([("function:full_sync", 2)], "lost-job", "gone-host:1:abc")
    jobs.reap()
    assert Slot.select().count() == 0


def test_timeout_fails_the_job_at_its_next_progress(consumer):
    job = jobs.enqueue("overrun")
    row = wait_until(lambda: (r := Job.get_by_id(job.id)).is_terminal and r, timeout=10)
    assert row.status == "failed" and row.error == "timeout"
    assert 400 <= row.duration_ms < 3000
