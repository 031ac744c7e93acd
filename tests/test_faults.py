"""The fault suite (`make faults`, marker `faults`): real consumer processes killed,
frozen and restarted, a Redis of the test's own killed, restored from a snapshot
and hung, PostgreSQL cutting every connection, a full disk. Each test asserts
from outside: every accepted job reaches one terminal state, exactly one run of
each reaches its end (fault_tasks.probe writes a line per start and end), and
nothing answered with an error runs."""

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
import models
import runs
import settings
from models import Job

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.faults]


def start_consumer(tmp_path, *args, database_url=None, queue_url=None, data_dir=None, module="fault_tasks.huey", **extra):
    """A standalone `huey_consumer` process on this test's database and queue."""
    environ = base_env()
    database_url = database_url or os.environ.get("FAULT_DATABASE_URL") or f"sqlite:///{tmp_path / 'app.db'}"
    environ.update(
        DATA_DIR=str(data_dir or tmp_path),
        DATABASE_URL=database_url,
        # The default: a SQLite queue lives in the database (conftest's fresh_storage too).
        QUEUE_URL=queue_url or os.environ.get("FAULT_QUEUE_URL") or (database_url if database_url.startswith("sqlite:") else f"sqlite:///{tmp_path / 'queue.db'}"),
        HEARTBEAT_INTERVAL="0.3",
        HEARTBEAT_TIMEOUT="2",
        SHUTDOWN_TIMEOUT="20",
        LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        **extra,
    )
    log = open(tmp_path / f"consumer-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", module, *args],
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


def test_process_workers_renew_the_leases_of_long_runs(tmp_path):
    """Each forked worker keeps its own runs' leases: a run longer than HEARTBEAT_TIMEOUT is not taken from it."""
    ids = [jobs.submit("probe", {"n": n, "seconds": 3.0})[0].id for n in range(2)]
    consumer = start_consumer(tmp_path, "-k", "process", "-w", "2")
    try:
        wait_until(lambda: statuses(ids)["succeeded"] == 2, timeout=30, message="both finished")
    finally:
        assert stop(consumer) == 0
    assert_each_ran_once(tmp_path, ids, range(2))
    assert [job.recoveries for job in Job.select().where(Job.id.in_(ids))] == [0, 0]
    assert probe_log(tmp_path)["start 0"] == probe_log(tmp_path)["start 1"] == 1


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


def test_sigkill_while_quick_outcomes_wait_for_the_group_commit_loses_nothing(tmp_path):
    """Jobs quicker than runs.CLAIM_AFTER write their claim and outcome at once, handed to
    the history writer while the worker moves on. A kill in the middle of that: every job
    still ends recorded exactly once; a job recorded as finished before the kill never
    runs again; only the jobs whose outcome the kill caught uncommitted run a second time,
    and requeue_lost(), not luck, brings them back."""
    n = 1500
    ids = jobs.submit_many("record_run", [{"n": i, "seconds": 0} for i in range(n)])
    first = start_consumer(tmp_path, "-w", "4")
    try:
        wait_until(lambda: sum(completed_runs(tmp_path).values()) >= 300, timeout=60, message="300 runs")
    finally:
        first.kill()
        first.wait(10)
    recorded = {job.args_dict["n"] for job in Job.select().where(Job.id.in_(ids) & (Job.status == "succeeded"))}
    ran_before = completed_runs(tmp_path)
    assert 0 < len(recorded) < n
    assert recorded <= set(ran_before)  # nothing is recorded that did not run
    second = start_consumer(tmp_path, "-w", "4")
    try:
        wait_until(lambda: statuses(ids)["succeeded"] == n, timeout=120, message=f"all {n} succeeded")
    finally:
        stop(second)
    runs_now = completed_runs(tmp_path)
    assert set(runs_now) == set(range(n))
    # One recorded end each: the metrics trigger counts every change into a terminal state.
    counted = models.JobCount.get((models.JobCount.function == "record_run") & (models.JobCount.status == "succeeded"))
    assert counted.count == n
    assert all(runs_now[i] == 1 for i in recorded), "a job recorded finished ran again"
    twice = {i for i, count in runs_now.items() if count > 1}
    recovered = {job.args_dict["n"] for job in Job.select().where(Job.id.in_(ids) & (Job.recoveries > 0))}
    assert twice <= recovered
    assert recovered, "the kill caught no job between its dequeue and its recorded end"
    assert len(twice) <= runs.MAX_HANDED_OFF + 4
    assert all(count <= 2 for count in runs_now.values())


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
    command += ["--dir", str(tmp_path), "--dbfilename", "snapshot.rdb"]  # SAVE writes it; a start loads it

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

        def kill(self):
            self.process.kill()
            self.process.wait(10)

        def save(self):
            import redis

            redis.Redis.from_url(self.url).save()

    server = Server()
    server.start()
    yield server
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)
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


# -- The fault suite: probes, and a Redis, PostgreSQL database and disk of each test's own ---
def probe_log(folder):
    path = folder / "probe.log"
    return collections.Counter(path.read_text().split("\n")[:-1]) if path.exists() else collections.Counter()


def assert_each_ran_once(folder, ids, numbers, refused=()):
    """Every job succeeded once, one run of each reached its end, and no refused call ever started."""
    assert statuses(ids) == {"succeeded": len(ids)}, statuses(ids)
    lines = probe_log(folder)
    ends = {n: lines[f"end {n}"] for n in numbers}
    assert set(ends.values()) == {1}, {n: count for n, count in ends.items() if count != 1}
    assert not [n for n in refused if lines[f"start {n}"]], "a call answered with an error ran"


@pytest.fixture
def own_postgres():
    """A PostgreSQL database of this test's own (the test cuts and refuses its connections)."""
    import psycopg
    from helpers import POSTGRES_URL, service_or_skip

    server = POSTGRES_URL.rsplit("/", 1)[0]
    name = f"litejobs_faults_{os.getpid()}_{time.monotonic_ns() % 10**6}"
    service_or_skip("PostgreSQL", lambda: psycopg.connect(f"{server}/postgres", connect_timeout=3).close())
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{server}/{name}"
    database = models.open_database(url)
    models.db.initialize(database)
    models.create_tables()

    class Database:
        def __init__(self):
            self.url = url

        def _admin(self, sql, *params):
            with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
                return admin.execute(sql, params).fetchall() if params else admin.execute(sql)

        def allow_connections(self, allowed):
            with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
                admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')

        def cut_every_connection(self):
            with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
                cur = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                return len(cur.fetchall())

    own = Database()
    yield own
    database.close()
    own.allow_connections(True)
    own.cut_every_connection()
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


def test_postgresql_cutting_and_refusing_every_connection(tmp_path, own_postgres):
    ids = [jobs.submit("probe", {"n": n, "seconds": 0.4})[0].id for n in range(24)]
    consumers = [start_consumer(tmp_path, "-w", "3", database_url=own_postgres.url) for _ in range(2)]
    try:
        wait_until(lambda: statuses(ids)["running"] >= 3, timeout=20, message="jobs running")
        own_postgres.allow_connections(False)
        assert own_postgres.cut_every_connection() >= 2
        time.sleep(1.5)  # nothing can connect meanwhile
        own_postgres.allow_connections(True)
        runs.reset_connection()  # this test's own connection was cut too: dropped, as a request's error drops it
        later = [jobs.submit("probe", {"n": n, "seconds": 0.05})[0].id for n in range(24, 34)]
        wait_until(lambda: statuses(ids + later)["succeeded"] == 34, timeout=45, message="every job succeeded")
        time.sleep(0.5)
    finally:
        own_postgres.allow_connections(True)
        for consumer in consumers:
            stop(consumer)
    assert_each_ran_once(tmp_path, ids + later, range(34))


def test_redis_restored_from_a_snapshot_holding_messages_of_running_jobs(tmp_path, own_redis):
    jobs.use_queue(own_redis.url)
    ids = [jobs.submit("probe", {"n": n, "seconds": 2.0})[0].id for n in range(4)]
    own_redis.save()  # the snapshot holds the four messages
    consumer = start_consumer(tmp_path, "-w", "4", queue_url=own_redis.url)
    try:
        wait_until(lambda: statuses(ids)["running"] == 4, timeout=20, message="all four running")
        own_redis.kill()
        own_redis.start()  # loads the snapshot: the four messages are back while their jobs run
        wait_until(lambda: statuses(ids)["succeeded"] == 4, timeout=30, message="all four finished")
        time.sleep(0.5)
    finally:
        stop(consumer)
    assert_each_ran_once(tmp_path, ids, range(4))
    assert all(probe_log(tmp_path)[f"start {n}"] == 1 for n in range(4)), "a restored message started a second run"


def test_hung_redis_answers_503_and_that_enqueue_never_runs(tmp_path, own_redis, client):
    jobs.use_queue(own_redis.url + "?socket_timeout=1")  # the web's push gives up after 1 s
    consumer = start_consumer(tmp_path, "-w", "2", queue_url=own_redis.url)
    try:
        first = client.post("/api/v1/jobs/probe", {"n": 1})
        assert first.status == 202
        own_redis.process.send_signal(signal.SIGSTOP)
        refused = [
            client.post("/api/v1/jobs/probe", {"n": 2}, headers={"Idempotency-Key": "retry-me"}),
            client.post("/api/v1/jobs/probe", {"n": 3}),
        ]
        own_redis.process.send_signal(signal.SIGCONT)  # Redis now runs the pushes it had buffered
        for reply in refused:
            assert_error(reply, 503, "unavailable")
        again = client.post("/api/v1/jobs/probe", {"n": 2}, headers={"Idempotency-Key": "retry-me"})
        assert again.status == 202, again.body
        ids = [first.json["id"], again.json["id"]]
        wait_until(lambda: statuses(ids)["succeeded"] == 2, timeout=20, message="accepted jobs finished")
        time.sleep(1.5)  # time for the buffered messages to be taken and dropped
    finally:
        stop(consumer)
    assert_each_ran_once(tmp_path, ids, [1, 2], refused=[3])
    assert probe_log(tmp_path)["start 2"] == 1
    assert Job.select().where(Job.name == "probe").count() == 2  # no row left of the refused calls


def test_consumer_frozen_past_the_timeout_loses_its_jobs_and_writes_nothing_after(tmp_path):
    ids = [jobs.submit("probe", {"n": n, "seconds": 4.0})[0].id for n in range(3)]
    frozen = start_consumer(tmp_path, "-w", "3")
    other = None
    try:
        wait_until(lambda: statuses(ids)["running"] == 3, timeout=20, message="three running")
        other = start_consumer(tmp_path, "-w", "3")
        time.sleep(0.3)
        frozen.send_signal(signal.SIGSTOP)
        taken = Job.id.in_(ids) & (Job.status == "running") & (Job.recoveries == 1) & (Job.attempts == 2)
        wait_until(lambda: Job.select().where(taken).count() == 3, timeout=20, message="the other consumer took them over")
        frozen.send_signal(signal.SIGCONT)  # its runs find their claims gone at their next progress()
        wait_until(lambda: statuses(ids)["succeeded"] == 3, timeout=30, message="all three finished")
        time.sleep(0.5)
    finally:
        frozen.send_signal(signal.SIGCONT)
        stop(frozen)
        if other is not None:
            stop(other)
    assert_each_ran_once(tmp_path, ids, range(3))
    assert {job.worker.split(":")[1] for job in Job.select().where(Job.id.in_(ids))} == {str(other.pid)}


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB tmpfs for DATA_DIR (the machine must allow mounting one)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("LITEJOBS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"the full-disk test needs to mount a 20 MB tmpfs (run as root): {done.stderr.strip()}")
        pytest.skip(f"cannot mount a 20 MB tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder, leave):
    """Grow folder/filler until at most `leave` bytes are free; returns its path."""
    filler = folder / "filler"
    with open(filler, "ab") as out:
        try:
            while shutil.disk_usage(folder).free > leave:
                out.write(b"\0" * min(256 * 1024, max(shutil.disk_usage(folder).free - leave, 4096)))
                out.flush()
        except OSError:  # the disk is full
            pass
    return filler


def test_small_disk_holds_a_thousand_jobs_and_a_full_one_refuses_then_recovers(tmp_path, small_disk, server_url, monkeypatch):
    from helpers import Client

    database = models.open_database(f"sqlite:///{small_disk / 'app.db'}")
    models.db.initialize(database)
    models.create_tables()
    jobs.use_queue(f"sqlite:///{small_disk / 'queue.db'}")
    monkeypatch.setattr(settings, "DATA_DIR", small_disk)
    client = Client(server_url, models.ApiKey.create_key("faults")[1])
    urls = {"database_url": f"sqlite:///{small_disk / 'app.db'}", "queue_url": f"sqlite:///{small_disk / 'queue.db'}"}
    consumer = start_consumer(tmp_path, "-w", "4", data_dir=small_disk, **urls)
    try:
        # 1. A thousand jobs and their history fit, with room to spare.
        ids = jobs.submit_many("probe", [{"n": n, "seconds": 0} for n in range(1000)])
        wait_until(lambda: statuses(ids)["succeeded"] == 1000, timeout=90, message="1,000 jobs finished")
        used = shutil.disk_usage(small_disk).used
        assert used < 10 * 2**20, f"{used / 2**20:.1f} MB used by 1,000 jobs"
        # 2. Under the reserve (5% of 20 MB): enqueues answer 507, readiness 503.
        running = [jobs.submit("probe", {"n": n, "seconds": 1.5})[0].id for n in range(1000, 1004)]
        wait_until(lambda: statuses(running)["running"] == 4, timeout=20, message="four running")
        filler = fill(small_disk, 512 * 1024)
        assert_error(client.post("/api/v1/jobs/probe", {"n": 2000}), 507, "insufficient_storage")
        ready = client.get("/health/ready")
        assert ready.status == 503 and ready.json["checks"]["disk"]["status"] == "down"
        # 3. Then full to the last byte while those four run: their writes wait for space.
        fill(small_disk, 0)
        time.sleep(0.8)
        filler.unlink()
        wait_until(lambda: statuses(running)["succeeded"] == 4, timeout=30, message="the four finished once space was back")
        # 4. Space is back: enqueues are accepted again, without a restart.
        again = client.post("/api/v1/jobs/probe", {"n": 3000})
        assert again.status == 202, again.body
        wait_until(lambda: statuses([again.json["id"]])["succeeded"] == 1, timeout=20, message="a new job ran")
        assert client.get("/health/ready").json["checks"]["disk"]["status"] == "ok"
    finally:
        stop(consumer)
        import web

        web.key_calls.flush()  # before the disk goes away with the database on it
        models.db.obj.close_all()
        jobs.huey.storage.close()
    assert_each_ran_once(small_disk, ids + running + [again.json["id"]], [*range(1004), 3000], refused=[2000])


def test_redis_down_is_logged_once_and_the_consumer_picks_up_again_when_it_is_back(tmp_path, own_redis):
    jobs.use_queue(own_redis.url)
    consumer = start_consumer(tmp_path, "-w", "4", queue_url=own_redis.url)
    try:
        first = jobs.submit("probe", {"n": 1})[0].id
        wait_until(lambda: statuses([first])["succeeded"] == 1, timeout=20, message="a job ran")
        own_redis.kill()
        time.sleep(3)  # four workers and a heartbeat find the queue gone, again and again
        own_redis.start()  # empty: the job sent now is the only message
        jobs.use_queue(own_redis.url)
        after = jobs.submit("probe", {"n": 2})[0].id
        wait_until(lambda: statuses([after])["succeeded"] == 1, timeout=20, message="the consumer reconnected")
    finally:
        stop(consumer)
    log = "".join(path.read_text() for path in tmp_path.glob("consumer-*.log"))
    assert log.count("Traceback") == 0, log[-3000:]
    assert log.count("queue storage unavailable") == 1 and log.count("queue storage available again") == 1, log[-3000:]
    assert_each_ran_once(tmp_path, [first, after], [1, 2])
