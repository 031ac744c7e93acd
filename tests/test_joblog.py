"""A job's own log: its logging records and printed lines, kept with the job,
bounded, served at /api/v1/jobs/{id}/logs and on the job page, pruned with it."""

import datetime
import logging
import time

import pytest
from helpers import wait_until

import joblog
import jobs
from joblog import JobLog
from models import Job, utcnow

logger = logging.getLogger("myapp.reports")


@pytest.fixture(autouse=True)
def capture(caplog, request):
    """Records from INFO up reach the handlers (the tests run at LOG_LEVEL=WARNING), and
    prints are captured once pytest has put its own sys.stdout in place for the test."""
    caplog.set_level(logging.INFO)
    yield


def watch_prints():
    # pytest swaps sys.stdout between a test's setup and its body; a consumer wraps
    # it when it starts, so wrap again here as `web.py run` never needs to.
    joblog.install()


@jobs.task(public=True)
def chatty(marker: str, lines: int = 3, pause: float = 0.0, fail: bool = False):
    """Log and print `lines` numbered lines carrying `marker`."""
    for i in range(lines):
        logger.info("%s step %d", marker, i)
        print(f"{marker} printed {i}")
        time.sleep(pause)
    if fail:
        raise ValueError(f"{marker} broke")
    return lines


@jobs.task(public=True)
def shout(kib: int):
    """Print `kib` KiB of numbered lines."""
    for i in range(kib * 16):
        print(f"line {i:06d} " + "x" * 52)  # 64 bytes with its newline


def test_a_job_keeps_what_it_logged_and_printed(client, consumer):
    watch_prints()
    job = client.post("/api/v1/jobs/chatty?wait=10", {"marker": "alpha"}).json
    assert job["status"] == "succeeded"
    reply = client.get(f"/api/v1/jobs/{job['id']}/logs")
    assert reply.status == 200
    body = reply.json
    assert body["job_id"] == job["id"] and body["truncated"] is False
    ours = [line for line in body["lines"] if "alpha" in line]
    assert [line.split(": ", 1)[-1] if " INFO " in line else line for line in ours] == [
        "alpha step 0", "alpha printed 0", "alpha step 1", "alpha printed 1", "alpha step 2", "alpha printed 2"
    ]
    assert " INFO myapp.reports: alpha step 0" in ours[0]
    assert client.get("/api/v1/jobs/nope/logs").status == 404


def test_jobs_running_side_by_side_keep_apart(client, consumer):
    watch_prints()
    ids = [client.post("/api/v1/jobs/chatty", {"marker": m, "lines": 5, "pause": 0.02}).json["id"] for m in "AB"]
    wait_until(lambda: all(Job.get_by_id(i).status == "succeeded" for i in ids), timeout=15, message="both done")
    for job_id, marker, other in ((ids[0], "A", "B"), (ids[1], "B", "A")):
        lines = client.get(f"/api/v1/jobs/{job_id}/logs").json["lines"]
        assert sum(f"{marker} printed" in line for line in lines) == 5
        assert not any(f"{other} printed" in line or f"{other} step" in line for line in lines)


def test_a_failed_job_keeps_its_traceback_and_every_attempt(client, consumer):
    watch_prints()
    job = client.post("/api/v1/jobs/chatty?wait=10", {"marker": "gamma", "lines": 1, "fail": True}).json
    assert job["status"] == "failed"
    text = "\n".join(client.get(f"/api/v1/jobs/{job['id']}/logs").json["lines"])
    assert "gamma printed 0" in text and "ValueError: gamma broke" in text


def test_the_log_keeps_the_last_64_kib_and_says_it_was_cut(client, consumer):
    watch_prints()
    job = client.post("/api/v1/jobs/shout?wait=20", {"kib": 100}).json
    assert job["status"] == "succeeded"
    body = client.get(f"/api/v1/jobs/{job['id']}/logs").json
    assert body["truncated"] is True
    assert len("\n".join(body["lines"]).encode()) <= joblog.MAX_BYTES
    printed = [line for line in body["lines"] if line.startswith("line ")]
    assert printed[-1].startswith("line 001599 ") and not printed[0].startswith("line 000000 ")


def test_lines_are_written_in_batches_not_one_write_each(consumer, monkeypatch):
    watch_prints()
    writes = []
    original = joblog.flush

    def counting(job_id=None):
        written = original(job_id)
        if written:
            writes.append(written)
        return written

    monkeypatch.setattr(joblog, "flush", counting)
    job, _ = jobs.submit("chatty", {"marker": "many", "lines": 400})
    wait_until(lambda: Job.get_by_id(job.id).status == "succeeded", timeout=30, message="job done")
    assert len([line for line in JobLog.get_by_id(job.id).lines if "many" in line]) == 800
    assert 1 <= len(writes) <= 10, writes  # 800 lines, a handful of writes


def test_the_log_shows_while_the_job_runs(client, consumer):
    watch_prints()
    job = client.post("/api/v1/jobs/chatty", {"marker": "live", "lines": 2, "pause": 2.0}).json
    started = time.monotonic()
    lines = wait_until(
        lambda: client.get(f"/api/v1/jobs/{job['id']}/logs").json["lines"], timeout=5, message="first lines"
    )
    assert time.monotonic() - started < 1.8 and Job.get_by_id(job["id"]).status == "running"
    assert any("live step 0" in line for line in lines)


def test_the_log_is_pruned_with_its_job(consumer):
    job, _ = jobs.submit("chatty", {"marker": "old", "lines": 1})
    wait_until(lambda: JobLog.get_or_none(JobLog.job == job.id), timeout=10, message="log written")
    wait_until(lambda: Job.get_by_id(job.id).status == "succeeded", timeout=10, message="job done")
    assert Job.prune_finished(utcnow() + datetime.timedelta(seconds=1)) >= 1
    assert JobLog.get_or_none(JobLog.job == job.id) is None


def test_a_job_that_logs_nothing_writes_no_log(consumer, caplog):
    caplog.set_level(logging.INFO, logger="huey")  # huey's own lines around each run stay out
    job, _ = jobs.submit("ping", {})
    wait_until(lambda: Job.get_by_id(job.id).status == "succeeded", timeout=10, message="job done")
    assert any("executed in" in r.getMessage() for r in caplog.records)
    assert JobLog.get_or_none(JobLog.job == job.id) is None


def test_records_outside_jobs_are_left_alone():
    watch_prints()
    before = dict(joblog._buffers)
    logging.getLogger("myapp").warning("not in a job")
    print("not in a job either")
    assert joblog._buffers == before
