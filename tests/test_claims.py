"""Claims, leases and fencing: a job runs under one claim, and only its holder writes."""

import datetime
import logging
import threading
import time

import peewee
import pytest
from helpers import RunningConsumer, assert_error, wait_until

import fault_tasks  # noqa: F401 - registers probe in this process
import consumer as consumer_module
from consumer import reap, requeue_lost
import group_commit
import job_history
import jobs
import models
import runs
import settings
from models import Job, Worker


def probe_lines(tmp_path):
    path = settings.DATA_DIR / "probe.log"
    return path.read_text().split("\n")[:-1] if path.exists() else []


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path, monkeypatch):
    """probe.log in this test's folder."""
    monkeypatch.setattr(settings, "DATA_DIR", tmp_path)


def _claim_cycle():
    job = jobs.enqueue("ping")
    first = Job.mark_running(job.id, "w1", "c1")
    assert first
    # A second message for the job while the run's lease is live: no claim.
    assert Job.mark_running(job.id, "w2", "c2") is None
    # The lease lapses by the database's clock: a new run takes it over with a new token.
    Job.update(lease_until=models.db_time(-1)).where(Job.id == job.id).execute()
    second = Job.mark_running(job.id, "w2", "c2")
    assert second and second != first
    # The first run is fenced off: its progress and outcome change nothing.
    assert Job.set_progress(job.id, 1, 2, "old run", claim=first) == 0
    assert Job.mark_finished(job.id, "failed", error="old run", claim=first) == 0
    assert Job.mark_retrying(job.id, "old run", "", claim=first) == 0
    assert Job.set_progress(job.id, 1, 2, "new run", claim=second) == 1
    assert Job.mark_finished(job.id, "succeeded", result="pong", claim=second) == 1
    row = Job.get_by_id(job.id)
    assert (row.status, row.result, row.worker, row.attempts, row.progress_message) == ("succeeded", '"pong"', "w2", 2, "new run")
    # A finished job is claimed by nobody.
    assert Job.mark_running(job.id, "w3", "c3") is None


def test_claim_takes_a_waiting_job_or_a_lapsed_one_and_fences_the_old_run():
    _claim_cycle()


def test_claim_and_fencing_on_postgresql(postgres_database):
    _claim_cycle()


def test_run_whose_claim_was_taken_over_stops_at_its_next_progress(tmp_path):
    job = jobs.enqueue("probe", n=1, seconds=1.0)
    consumer = RunningConsumer(workers=1)
    try:
        wait_until(lambda: probe_lines(tmp_path) == ["start 1"], timeout=10, message="the run started")
        # What a second consumer does once this run's lease has lapsed.
        Job.update(lease_until=models.db_time(-1)).where(Job.id == job.id).execute()
        assert Job.mark_running(job.id, "elsewhere", "other-consumer")
        time.sleep(0.4)  # past the run's next progress()
        row = Job.get_by_id(job.id)
    finally:
        consumer.stop()
    assert probe_lines(tmp_path) == ["start 1"], "the fenced run must not reach its end"
    assert row.status == "running" and row.worker == "elsewhere", "the old run wrote nothing over the new claim"


def test_duplicate_message_of_a_running_job_is_dropped(tmp_path):
    job = jobs.enqueue("probe", n=7, seconds=0.6)
    consumer = RunningConsumer(workers=2)
    try:
        wait_until(lambda: probe_lines(tmp_path) == ["start 7"], timeout=10, message="the run started")
        # A restored queue (a Redis snapshot) hands out the message again.
        jobs._enqueue(jobs.FUNCTIONS["probe"], job.id, {"n": 7, "seconds": 0.6})
        wait_until(lambda: Job.get_by_id(job.id).status == "succeeded", timeout=10, message="the job finished")
        time.sleep(0.2)
    finally:
        consumer.stop()
    assert probe_lines(tmp_path) == ["start 7", "end 7"]
    assert Job.get_by_id(job.id).attempts == 1


def test_message_without_a_row_or_for_a_finished_job_does_not_run(tmp_path):
    ghost = "0" * 8 + "-0000-0000-0000-" + "0" * 12  # an enqueue answered 503 and removed its row
    jobs._enqueue(jobs.FUNCTIONS["probe"], ghost, {"n": 1})
    done = jobs.enqueue("probe", n=2)
    Job.mark_finished(done.id, "canceled")
    for _ in range(2):
        jobs.huey.execute(jobs.huey.dequeue())
    assert probe_lines(tmp_path) == []
    assert Job.get_or_none(Job.id == ghost) is None


def test_pending_job_waits_for_its_confirmation_and_never_runs_without_it(tmp_path, monkeypatch):
    monkeypatch.setattr(job_history, "CLAIM_PAUSES", (0.001,))
    monkeypatch.setattr(job_history, "DEFER_SECONDS", 0.2)
    Job.record(id="p1", name="probe", args='{"n": 1}', status="pending")
    Job.record(id="p2", name="probe", args='{"n": 2}', status="pending")
    for job_id, n in (("p1", 1), ("p2", 2)):
        jobs._enqueue(jobs.FUNCTIONS["probe"], job_id, {"n": n})
    consumer = RunningConsumer(workers=1)
    try:
        # Neither runs while pending: their messages go back with a delay, again and again.
        time.sleep(0.8)
        assert probe_lines(tmp_path) == []
        assert {job.status for job in Job.select().where(Job.id.in_(["p1", "p2"]))} == {"pending"}
        Job.confirm(["p1"], {"p1": "queued"})  # p1's enqueue succeeded
        Job.forget_pending(["p2"])  # p2's was answered with an error
        wait_until(lambda: Job.get_by_id("p1").status == "succeeded", timeout=10, message="p1 ran once confirmed")
        time.sleep(0.6)  # p2's message comes back once more and is dropped
    finally:
        consumer.stop()
    assert probe_lines(tmp_path) == ["start 1", "end 1"]
    assert Job.get_or_none(Job.id == "p2") is None


def test_retry_with_the_idempotency_key_after_a_failed_enqueue_gets_one_job(client, monkeypatch, tmp_path):
    real = jobs._enqueue
    calls = []

    def push_then_time_out(*args, **kwargs):
        calls.append(1)
        real(*args, **kwargs)  # the server got the push ...
        if len(calls) == 1:
            raise TimeoutError("Timeout reading from socket")  # ... but the answer never came

    monkeypatch.setattr(jobs, "_enqueue", push_then_time_out)
    monkeypatch.setattr(Job, "forget_pending", classmethod(lambda cls, ids: (_ for _ in ()).throw(peewee.OperationalError("disk full"))))
    headers = {"Idempotency-Key": "order-42"}
    assert_error(client.post("/api/v1/jobs/probe", {"n": 42}, headers=headers), 503, "unavailable")
    assert Job.select().where(Job.status == "pending").count() == 1  # the clean-up failed too
    again = client.post("/api/v1/jobs/probe", {"n": 42}, headers=headers)
    assert again.status == 202, again.body
    assert client.get("/api/v1/jobs?name=probe").json["jobs"][0]["id"] == again.json["id"]
    consumer = RunningConsumer(workers=2)
    try:
        wait_until(lambda: Job.get_by_id(again.json["id"]).status == "succeeded", timeout=10, message="the job ran")
        time.sleep(0.3)  # the first push's message is dropped
    finally:
        consumer.stop()
    assert Job.select().count() == 1
    assert probe_lines(tmp_path) == ["start 42", "end 42"]


def test_job_failed_enqueue_leaves_no_row_and_its_message_never_runs(client, monkeypatch, tmp_path):
    # A queue apart from the database: its push is a write of its own, which can fail
    # after the row is in (test_one_transaction covers the queue inside the database).
    jobs.use_queue(f"sqlite:///{tmp_path / 'queue.db'}")
    def push_then_time_out(real):
        def push(*args, **kwargs):
            real(*args, **kwargs)
            raise TimeoutError("Timeout reading from socket")

        return push

    # One message (jobs.submit) or a batch of them (the web's group_commit.submit).
    monkeypatch.setattr(jobs, "_enqueue", push_then_time_out(jobs._enqueue))
    monkeypatch.setattr(group_commit, "push_messages", push_then_time_out(group_commit.push_messages))
    assert_error(client.post("/api/v1/jobs/probe", {"n": 1}), 503, "unavailable")
    assert Job.select().count() == 0
    jobs.huey.execute(jobs.huey.dequeue())
    assert probe_lines(tmp_path) == []


def test_lapsed_lease_on_a_live_consumer_is_recovered(monkeypatch):
    """A run whose outcome could not be written stops renewing; the reaper runs it again."""
    Worker.create(id="live", host="h", pid=1, kind="thread", concurrency=1)
    Worker.beat("live")
    job = jobs.enqueue("ping")
    jobs.huey.dequeue()  # the live consumer took the message ...
    assert Job.mark_running(job.id, "live:1:t", "live", lease_seconds=0.2)  # ... and claimed the job
    assert reap() == 0, "the lease is live"
    time.sleep(0.3)
    Worker.beat("live")
    assert reap() == 1
    row = Job.get_by_id(job.id)
    assert (row.status, row.claim, row.recoveries) == ("queued", None, 1)
    jobs.huey.execute(jobs.huey.dequeue())
    assert Job.get_by_id(job.id).status == "succeeded"


def test_heartbeat_renews_the_leases_of_running_jobs(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "HEARTBEAT_INTERVAL", 0.1)
    monkeypatch.setattr(settings, "HEARTBEAT_TIMEOUT", 1.0)
    job = jobs.enqueue("probe", n=3, seconds=2.0)
    consumer = RunningConsumer(workers=1)
    try:
        wait_until(lambda: Job.get_by_id(job.id).status == "running", timeout=10, message="running")
        first = Job.get_by_id(job.id).lease_until
        time.sleep(1.3)  # longer than the lease: only renewals keep it
        assert reap() == 0
        assert Job.get_by_id(job.id).lease_until > first
        wait_until(lambda: Job.get_by_id(job.id).status == "succeeded", timeout=10, message="finished")
    finally:
        consumer.stop()
    assert probe_lines(tmp_path) == ["start 3", "end 3"]


def test_a_consumer_clock_behind_does_not_make_it_look_dead(client, monkeypatch):
    """Liveness and leases follow the database's clock, not the consumer host's."""
    consumer = RunningConsumer(workers=1)
    try:
        behind = lambda: datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(seconds=90)  # noqa: E731
        monkeypatch.setattr(models, "utcnow", behind)
        monkeypatch.setattr(jobs, "utcnow", behind)
        monkeypatch.setattr(consumer_module, "utcnow", behind)
        consumer.consumer._heartbeat()
        job = jobs.enqueue("probe", n=5, seconds=0.3)
        workers = client.get("/api/v1/workers").json["workers"]
        assert [w["alive"] for w in workers] == [True]
        assert reap() == 0
        wait_until(lambda: Job.get_by_id(job.id).status == "succeeded", timeout=10, message="finished")
        assert Job.get_by_id(job.id).recoveries == 0
    finally:
        consumer.stop()


def test_requeue_lost_pages_through_every_waiting_row(monkeypatch):
    monkeypatch.setattr(consumer_module, "REQUEUE_PAGE", 50)
    old = models.utcnow() - datetime.timedelta(hours=1)
    ids = jobs.submit_many("ping", [{}] * 180)
    Job.update(enqueued_at=old).where(Job.id.in_(ids)).execute()
    jobs.huey.flush()  # every message lost
    monkeypatch.setattr(consumer_module, "LOST_AFTER", 0.3)
    assert requeue_lost() == 0  # first look: suspects
    assert requeue_lost() == 0  # a worker may still hold them, unclaimed: too soon
    time.sleep(0.3)
    assert requeue_lost() == 180
    assert jobs.huey.pending_count() == 180


def test_stale_pending_rows_are_removed_by_the_reaper():
    Job.record(id="left", name="ping", status="pending", enqueued_at=models.utcnow() - datetime.timedelta(hours=1))
    Job.record(id="fresh", name="ping", status="pending")
    requeue_lost()
    assert [job.id for job in Job.select()] == ["fresh"]


def test_outcome_write_is_retried_while_the_claim_is_held(monkeypatch):
    job = jobs.enqueue("ping")
    real = Job.mark_finished
    failures = []

    def flaky(*args, **kwargs):
        if len(failures) < 3:
            failures.append(1)
            raise peewee.OperationalError("the connection is closed")
        return real(*args, **kwargs)

    monkeypatch.setattr(Job, "mark_finished", flaky)
    jobs.huey.execute(jobs.huey.dequeue())
    assert len(failures) == 3
    assert Job.get_by_id(job.id).status == "succeeded"
    assert not runs.held.holds(job.id)


def test_queue_outage_is_logged_once_when_it_starts_and_once_when_it_ends(caplog, monkeypatch):
    monkeypatch.setattr(runs, "queue_outage", runs.Outage("queue storage", first=0.01, longest=0.05))
    storage = jobs.huey.storage
    real = storage.dequeue
    down = threading.Event()
    down.set()

    def dequeue():
        if down.is_set():
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return real()

    monkeypatch.setattr(storage, "dequeue", dequeue)
    with caplog.at_level(logging.WARNING, logger="litejobs"):
        started = time.monotonic()
        for _ in range(20):
            assert jobs.huey.dequeue() is None
        slept = time.monotonic() - started
        down.clear()
        jobs.huey.dequeue()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("litejobs")]
    assert len(lines) == 2, lines
    assert "unavailable" in lines[0] and "available again" in lines[1]
    assert slept >= 0.01 + 0.02 + 0.04 + 17 * 0.05 - 0.05, "the pauses grow to their longest"


def test_a_run_whose_thread_is_gone_stops_being_renewed_and_is_recovered(monkeypatch):
    Worker.create(id="live", host="h", pid=1, kind="thread", concurrency=1)
    Worker.beat("live")
    job = jobs.enqueue("ping")
    jobs.huey.dequeue()
    claim = Job.mark_running(job.id, "live:1:t", "live", lease_seconds=0.3)
    thread = threading.Thread(target=runs.held.hold, args=(job.id, claim))
    thread.start()
    thread.join()  # the thread that held the run died without an outcome
    try:
        assert runs.held.holds(job.id) and job.id not in runs.held.claims()
        time.sleep(0.4)
        runs.held.renew()
        assert reap() == 1
    finally:
        runs.held.release(job.id)
    assert Job.get_by_id(job.id).status == "queued"


def test_plain_task_call_runs_only_once_its_push_is_confirmed(monkeypatch, tmp_path):
    monkeypatch.setattr(job_history, "CLAIM_PAUSES", (0.001,))
    fault_tasks.probe(n=1)  # a huey call, not through submit()
    assert [job.status for job in Job.select()] == ["queued"]
    storage = jobs.huey.storage
    real = storage.enqueue

    def push_then_time_out(data, priority=None, queue=None):
        real(data, priority, queue)
        raise TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(storage, "enqueue", push_then_time_out)
    with pytest.raises(TimeoutError):
        fault_tasks.probe(n=2)
    monkeypatch.setattr(storage, "enqueue", real)
    for _ in range(2):
        jobs.huey.execute(jobs.huey.dequeue())
    assert probe_lines(tmp_path) == ["start 1", "end 1"]
    assert Job.select().where(Job.status == "pending").count() == 1  # removed by the reaper in time
