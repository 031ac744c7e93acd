"""Nothing lost: real consumer processes killed and stopped, a real Redis going away."""

import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import RunningConsumer, assert_error, free_port, wait_until, base_env

import fault_tasks  # noqa: F401 - registers record_run in this process too
import jobs
import settings
from models import Job

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def start_consumer(tmp_path, *args):
    """A standalone `huey_consumer` process on this test's database and queue."""
    environ = base_env()
    environ.update(
        DATA_DIR=str(tmp_path),
        DATABASE_URL=os.environ.get("FAULT_DATABASE_URL") or f"sqlite:///{tmp_path / 'app.db'}",
        QUEUE_URL=os.environ.get("FAULT_QUEUE_URL") or f"sqlite:///{tmp_path / 'queue.db'}",
        HEARTBEAT_INTERVAL="0.3",
        HEARTBEAT_TIMEOUT="2",
        SHUTDOWN_TIMEOUT="20",
        LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
    )
    log = open(tmp_path / f"consumer-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "fault_tasks.huey", *args],
        cwd=ROOT,
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def completed_runs(tmp_path):
    path = tmp_path / "runs.log"
    if not path.exists():
        return collections.Counter()
    return collections.Counter(int(line) for line in path.read_text().split())


def statuses(ids):
    return collections.Counter(job.status for job in Job.select().where(Job.id.in_(ids)))


def stop(process, sig=signal.SIGINT, timeout=30):
    if process.poll() is None:
        process.send_signal(sig)
    return process.wait(timeout)


def test_process_workers_run_jobs_each_in_its_own_process(tmp_path):
    ids = [jobs.submit("record_run", {"n": n})[0].id for n in range(40)]
    consumer = start_consumer(tmp_path, "-k", "process", "-w", "2")
    try:
        wait_until(lambda: statuses(ids)["succeeded"] == 40, timeout=60, message="all 40 succeeded")
    finally:
        assert stop(consumer) == 0
    assert set(completed_runs(tmp_path)) == set(range(40))
    pids = {job.worker.split(":")[1] for job in Job.select().where(Job.id.in_(ids))}
    assert str(consumer.pid) not in pids and 1 <= len(pids) <= 2


def test_sigkill_mid_batch_loses_nothing(tmp_path):
    ids = [jobs.submit("record_run", {"n": n})[0].id for n in range(200)]
    first = start_consumer(tmp_path, "-w", "4")
    try:
        wait_until(lambda: sum(completed_runs(tmp_path).values()) >= 40, timeout=30, message="40 runs")
    finally:
        first.kill()
        first.wait(10)
    assert statuses(ids)["succeeded"] < 200
    second = start_consumer(tmp_path, "-w", "4")
    try:
        wait_until(lambda: statuses(ids)["succeeded"] == 200, timeout=90, message="all 200 succeeded")
    finally:
        stop(second)
    runs = completed_runs(tmp_path)
    assert set(runs) == set(range(200))
    rerun = {job.args_dict["n"] for job in Job.select().where(Job.id.in_(ids) & (Job.attempts > 1))}
    twice = {n for n, count in runs.items() if count > 1}
    # Only a job the kill cut short may have completed twice.
    assert twice <= rerun
    assert all(count <= 2 for count in runs.values())
    # The kill caught jobs mid-run: the reaper, not luck, brought them back.
    assert Job.select().where(Job.id.in_(ids) & (Job.recoveries > 0)).count() >= 1


def test_sigterm_finishes_running_jobs_and_leaves_the_rest_queued(tmp_path):
    slow = [jobs.submit("record_run", {"n": n, "seconds": 1.5})[0].id for n in range(2)]
    rest = [jobs.submit("record_run", {"n": n})[0].id for n in range(2, 22)]
    consumer = start_consumer(tmp_path, "-w", "2")
    try:
        wait_until(lambda: statuses(slow)["running"] == 2, timeout=20, message="two running")
        assert stop(consumer, signal.SIGTERM) == 0
    finally:
        if consumer.poll() is None:
            consumer.kill()
    assert statuses(slow) == {"succeeded": 2}
    assert statuses(rest) == {"queued": 20}
    assert Job.select().where(Job.status == "running").count() == 0
    again = start_consumer(tmp_path, "-w", "2")
    try:
        wait_until(lambda: statuses(rest)["succeeded"] == 20, timeout=30, message="the rest finished")
    finally:
        stop(again)
    assert all(count == 1 for count in completed_runs(tmp_path).values())


@pytest.fixture
def own_redis(tmp_path):
    """A Redis server of this test's own, on a free port, that the test may stop."""
    if shutil.which("redis-server") is None:
        if os.environ.get("LITEJOBS_REQUIRE_SERVICES") == "1":
            pytest.fail("redis-server is required (LITEJOBS_REQUIRE_SERVICES=1)")
        pytest.skip("redis-server not installed")
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    class Server:
        url = f"redis://127.0.0.1:{port}/0"
        process = None

        def start(self):
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, cwd=tmp_path)
            import redis

            wait_until(lambda: _pings(redis, self.url), timeout=10, message="redis up")

        def stop(self):
            self.process.terminate()
            self.process.wait(10)

    server = Server()
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


def _pings(redis, url):
    try:
        return redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.ConnectionError:
        return False


def test_redis_outage_answers_503_then_recovers_without_loss(client, anonymous, own_redis, monkeypatch):
    monkeypatch.setattr(settings, "HEARTBEAT_INTERVAL", 0.3)
    monkeypatch.setattr(settings, "HEARTBEAT_TIMEOUT", 1.0)
    jobs.use_queue(own_redis.url)
    before = [client.post("/api/v1/jobs/echo", {"value": n}).json["id"] for n in range(5)]

    own_redis.stop()
    ready = anonymous.get("/health/ready")
    assert ready.status == 503 and ready.json["status"] == "down"
    assert ready.json["checks"]["queue"]["status"] == "down" and ready.json["checks"]["queue"]["error"]
    error = assert_error(client.post("/api/v1/jobs/echo", {"value": "lost?"}), 503, "unavailable")
    assert "queue" in error["message"]
    assert anonymous.get("/health/live").status == 200
    assert client.get(f"/api/v1/jobs/{before[0]}").status == 200

    # The new Redis keeps nothing: the five queued messages are gone with the old one.
    own_redis.start()
    consumer = RunningConsumer()
    try:
        after = client.post("/api/v1/jobs/echo?wait=10", {"value": "after"})
        assert after.status == 200 and after.json["status"] == "succeeded"
        wait_until(lambda: statuses(before)["succeeded"] == 5, timeout=20, message="lost messages run again")
    finally:
        consumer.stop()
    assert Job.select().where(Job.status != "succeeded").count() == 0
