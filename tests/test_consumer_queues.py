"""Consumers per queue (QUEUES): consumer processes that serve only some queues, on SQLite, Redis and PostgreSQL."""

import subprocess
import sys

import pytest

from helpers import POSTGRES_URL, REDIS_URL, ROOT, base_env, wait_until
from test_faults import start_consumer, statuses, stop

import jobs
import queue_tasks  # noqa: F401 - registers resize_photo and sync_catalog in this process too
from models import Job, Worker

QUEUE_URLS = {"sqlite": None, "redis": REDIS_URL, "postgresql": POSTGRES_URL}


def start(tmp_path, backend, queues):
    """A consumer process serving `queues`, on this test's database and queue storage."""
    # RUN_SCHEDULES=0: no app's schedule puts jobs on a queue the test has left unserved.
    return start_consumer(
        tmp_path, "-w", "2", queue_url=QUEUE_URLS[backend], QUEUES=queues, RUN_SCHEDULES="0", module="queue_tasks.huey"
    )


def worker_serving(queues):
    """The id of the live consumer that serves exactly `queues`, once it registered."""
    return wait_until(
        lambda: Worker.alive().where(Worker.queues == queues).first(),
        timeout=30,
        message=f"a consumer serving {queues}",
    ).id


def test_two_consumers_split_by_queue_each_run_only_their_own(tmp_path, backend):
    media = [jobs.submit("resize_photo", {"n": n})[0].id for n in range(8)]
    sync = [jobs.submit("sync_catalog", {"n": n})[0].id for n in range(8)]
    consumers = [start(tmp_path, backend, "media"), start(tmp_path, backend, "sync")]
    try:
        wait_until(lambda: statuses(media + sync)["succeeded"] == 16, timeout=60, message="all 16 succeeded")
        media_worker, sync_worker = worker_serving("media"), worker_serving("sync")
    finally:
        for consumer in consumers:
            assert stop(consumer) == 0
    ran = {job.id: job.consumer_id for job in Job.select().where(Job.id.in_(media + sync))}
    assert {ran[i] for i in media} == {media_worker}
    assert {ran[i] for i in sync} == {sync_worker}


def test_a_job_of_an_unserved_queue_waits_until_a_consumer_serves_it(tmp_path, backend, client):
    media_consumer = start(tmp_path, backend, "media")
    sync_consumer = None
    try:
        worker_serving("media")
        waiting = jobs.submit("sync_catalog", {"n": 1})[0].id
        ran = jobs.submit("resize_photo", {"n": 1})[0].id
        wait_until(lambda: Job.get_by_id(ran).status == "succeeded", timeout=30, message="the media job ran")
        assert Job.get_by_id(waiting).status == "queued"

        queues = {q["name"]: q for q in client.get("/api/v1/queues").json["queues"]}
        assert (queues["sync"]["served"], queues["sync"]["depth"]) == (False, 1)
        assert queues["media"]["served"] is True
        ready = client.get("/health/ready")
        assert ready.status == 200 and ready.json["status"] == "degraded"
        assert ready.json["checks"]["queues"]["unserved"] == ["sync"]
        assert 'litejobs_queue_served{queue="sync"} 0' in client.get("/metrics").text

        sync_consumer = start(tmp_path, backend, "sync")
        sync_worker = worker_serving("sync")
        job = wait_until(
            lambda: (j := Job.get_by_id(waiting)).status == "succeeded" and j, timeout=30, message="sync ran"
        )
        assert job.consumer_id == sync_worker
        assert client.get("/health/ready").json["checks"]["queues"] == {"status": "ok"}
    finally:
        for consumer in (media_consumer, sync_consumer):
            if consumer is not None:
                assert stop(consumer) == 0


def test_an_unknown_queue_in_QUEUES_stops_the_consumer_naming_the_setting(tmp_path):
    environ = base_env(DATA_DIR=str(tmp_path), QUEUES="media,medai")
    result = subprocess.run(
        [sys.executable, "-m", "huey.bin.huey_consumer", "jobs.huey"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "QUEUES: unknown queue 'medai'" in result.stderr and "Traceback" not in result.stderr


def test_a_call_put_on_another_queue_stays_there_through_the_schedule(tmp_path, backend):
    # A schedule's queue override: the message keeps its queue when it waits in huey's schedule (delay, retries).
    job = jobs.submit("sync_catalog", {"n": 3}, queue="media", delay=1)[0]
    consumer = start(tmp_path, backend, "media")
    try:
        media_worker = worker_serving("media")
        done = wait_until(
            lambda: (j := Job.get_by_id(job.id)).status == "succeeded" and j, timeout=30, message="it ran"
        )
    finally:
        assert stop(consumer) == 0
    assert (done.queue, done.consumer_id) == ("media", media_worker)


def test_a_minus_leaves_a_queue_out_and_is_checked_like_any_name():
    import consumer

    everything_but = consumer.served_queues("-media, -sync")
    assert set(everything_but) == jobs.known_queues() - {"media", "sync"}
    assert consumer.served_queues("media,-sync") == ["media"] + sorted(jobs.known_queues() - {"media", "sync"})
    with pytest.raises(SystemExit, match="unknown queue 'medai'"):
        consumer.served_queues("-medai")
