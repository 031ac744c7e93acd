"""The history writer (runs.HeldRuns): quick runs write claim and outcome at once, a
consumer's workers hand their outcomes over and move on, and nothing is announced
or lost on the way. The SIGKILL case is in test_faults.py."""

import time

import pytest
from helpers import RunningConsumer, wait_until

import fault_tasks  # noqa: F401 - registers record_run and probe in this process
import jobs
import runs
import settings
from models import Job, JobCount


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path, monkeypatch):
    """runs.log and probe.log in this test's folder."""
    monkeypatch.setattr(settings, "DATA_DIR", tmp_path)


def test_a_quick_job_is_written_once_with_its_claim_and_outcome():
    job = jobs.enqueue("ping")
    jobs.huey.execute(jobs.huey.dequeue())
    row = Job.get_by_id(job.id)
    assert (row.status, row.result, row.attempts) == ("succeeded", '"pong"', 1)
    assert row.claim and row.worker and row.started_at <= row.finished_at
    assert row.lease_until is None  # never written as running: no lease to keep
    assert not runs.held.holds(job.id)


def test_a_longer_job_shows_running_once_past_claim_after():
    job = jobs.submit("record_run", {"n": 1, "seconds": 1.0})[0]
    consumer = RunningConsumer(workers=1)
    try:
        running = wait_until(lambda: Job.get_by_id(job.id).status == "running", timeout=5, message="running")
        assert running
        row = Job.get_by_id(job.id)
        assert row.attempts == 1 and row.lease_until is not None
        wait_until(lambda: Job.get_by_id(job.id).status == "succeeded", timeout=10, message="succeeded")
    finally:
        consumer.stop()
    assert Job.get_by_id(job.id).attempts == 1


def test_a_job_canceled_while_its_claim_is_unwritten_keeps_its_cancel(monkeypatch):
    monkeypatch.setattr(runs, "CLAIM_AFTER", 60.0)  # the claim stays in memory for this whole run
    job = jobs.enqueue("echo", value=1)
    message = jobs.huey.dequeue()
    real = message.execute

    def cancel_meanwhile():
        jobs.cancel(Job.get_by_id(job.id))  # it still looks queued: canceled at once
        return real()

    monkeypatch.setattr(message, "execute", cancel_meanwhile)
    jobs.huey.execute(message)
    row = Job.get_by_id(job.id)
    assert row.status == "canceled" and row.result is None and row.attempts == 0


def test_progress_writes_the_claim_first_and_a_lost_claim_stops_the_run(monkeypatch, tmp_path):
    monkeypatch.setattr(runs, "CLAIM_AFTER", 60.0)
    job = jobs.submit("probe", {"n": 7, "seconds": 0.1})[0]
    message = jobs.huey.dequeue()
    real = message.execute

    def canceled_first():
        jobs.cancel(Job.get_by_id(job.id))  # before its first progress(): the claim cannot be written
        return real()

    monkeypatch.setattr(message, "execute", canceled_first)
    jobs.huey.execute(message)
    assert Job.get_by_id(job.id).status == "canceled"
    assert (tmp_path / "probe.log").read_text().split() == ["start", "7"]  # stopped at its first progress()
    again = jobs.submit("probe", {"n": 8, "seconds": 0.1})[0]
    jobs.huey.execute(jobs.huey.dequeue())
    row = Job.get_by_id(again.id)
    assert (row.status, row.progress_done, row.attempts) == ("succeeded", 2, 1)


def test_a_stopped_consumer_has_committed_every_outcome_it_handed_over():
    ids = jobs.submit_many("record_run", [{"n": n, "seconds": 0} for n in range(2000)])
    consumer = RunningConsumer(workers=4)
    try:
        wait_until(lambda: (settings.DATA_DIR / "runs.log").exists(), timeout=10, message="the first run")
        time.sleep(0.05)  # mid-drain: outcomes wait for the writer now
    finally:
        consumer.stop()  # graceful: each worker waits for the writer before it ends
    ran = set((settings.DATA_DIR / "runs.log").read_text().split())
    finished = Job.select().where(Job.id.in_(ids) & (Job.status == "succeeded")).count()
    assert 0 < len(ran) < 2000
    assert finished == len(ran), "a run ended but its outcome was not committed by the stop"


def test_outcomes_committed_together_are_each_counted_once():
    ids = jobs.submit_many("record_run", [{"n": n, "seconds": 0} for n in range(200)])
    consumer = RunningConsumer(workers=4)
    try:
        wait_until(
            lambda: Job.select().where(Job.id.in_(ids) & (Job.status == "succeeded")).count() == 200,
            timeout=30,
            message="200 succeeded",
        )
    finally:
        consumer.stop()
    counted = JobCount.get((JobCount.function == "record_run") & (JobCount.status == "succeeded"))
    assert counted.count == 200
    assert {row.attempts for row in Job.select().where(Job.id.in_(ids))} == {1}


def test_a_quick_run_that_fails_is_recorded_retrying_and_counted_once(monkeypatch):
    monkeypatch.setattr(runs, "CLAIM_AFTER", 60.0)  # ends long before its claim would be written
    job = jobs.submit("probe", {"n": 1})[0]
    message = jobs.huey.dequeue()

    def fail_at_once():
        raise RuntimeError("provider down")

    monkeypatch.setattr(message, "execute", fail_at_once)
    jobs.huey.execute(message)
    row = Job.get_by_id(job.id)
    assert (row.status, row.attempts, row.error) == ("retrying", 1, "RuntimeError: provider down")
    counted = JobCount.get((JobCount.function == "probe") & (JobCount.status == "retried"))
    assert counted.count == 1
    assert not runs.held.holds(job.id)


def test_quick_runs_on_postgresql_are_written_once_each(postgres_database):
    job = jobs.enqueue("ping")
    jobs.huey.execute(jobs.huey.dequeue())
    row = Job.get_by_id(job.id)
    assert (row.status, row.attempts, row.lease_until) == ("succeeded", 1, None)
    ids = jobs.submit_many("record_run", [{"n": n, "seconds": 0} for n in range(100)])
    consumer = RunningConsumer(workers=4)
    try:
        wait_until(
            lambda: Job.select().where(Job.id.in_(ids) & (Job.status == "succeeded")).count() == 100,
            timeout=30,
            message="100 succeeded",
        )
    finally:
        consumer.stop()
    counted = JobCount.get((JobCount.function == "record_run") & (JobCount.status == "succeeded"))
    assert counted.count == 100
    assert {row.attempts for row in Job.select().where(Job.id.in_(ids))} == {1}
