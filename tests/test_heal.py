"""Connections that heal themselves, the disk reserve and readiness."""

import collections

import peewee
import psycopg
import pytest
from helpers import POSTGRES_URL, RunningConsumer, assert_error, wait_until

import disk
import fault_tasks  # noqa: F401 - registers probe in this process
import jobs
import models
import runs
import settings
from models import Job, Worker


@pytest.fixture(autouse=True)
def own_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "DATA_DIR", tmp_path)


def probe_counts(tmp_path):
    path = tmp_path / "probe.log"
    return collections.Counter(path.read_text().split("\n")[:-1]) if path.exists() else collections.Counter()


def terminate_other_backends():
    """Cut every connection to the app database but this one, as a PostgreSQL restart does."""
    dbname = POSTGRES_URL.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        ).fetchall()
    return len(rows)


def test_consumer_threads_and_heartbeat_reconnect_after_postgresql_cut_every_connection(
    postgres_database, tmp_path, monkeypatch
):
    monkeypatch.setattr(settings, "HEARTBEAT_INTERVAL", 0.2)
    consumer = RunningConsumer(workers=3)
    try:
        first = [jobs.enqueue("probe", n=n, seconds=0.3).id for n in range(6)]
        wait_until(lambda: Job.select().where(Job.id.in_(first) & (Job.status == "running")).count() >= 2, timeout=10)
        assert terminate_other_backends() >= 2  # the workers' and the heartbeat's connections
        runs.reset_connection()  # this test's own connection went too: dropped, as a request's error drops it
        after = [jobs.enqueue("probe", n=n, seconds=0.05).id for n in range(6, 26)]
        everything = first + after
        wait_until(
            lambda: Job.select().where(Job.id.in_(everything) & (Job.status == "succeeded")).count() == 26,
            timeout=30,
            message="every job succeeded after the cut",
        )
        beat = Worker.get_by_id(jobs.CONSUMER_ID).last_heartbeat
        wait_until(lambda: Worker.get_by_id(jobs.CONSUMER_ID).last_heartbeat > beat, timeout=5, message="heartbeats go on")
    finally:
        consumer.stop()
    counts = probe_counts(tmp_path)
    # Each job ended exactly once; a run cut mid-way by the disconnection may have started twice.
    assert all(counts[f"end {n}"] == 1 for n in range(26)), counts


def test_enqueue_under_the_disk_reserve_answers_507_and_clears_by_itself(client, anonymous, monkeypatch):
    monkeypatch.setattr(settings, "DISK_RESERVE", (99.99, None))  # more than this disk has free
    error = assert_error(client.post("/api/v1/jobs/ping", {}), 507, "insufficient_storage")
    assert "DISK_RESERVE" in error["message"] and "free" in error["message"]
    ready = anonymous.get("/health/ready")
    assert ready.status == 503 and ready.json["checks"]["disk"]["status"] == "down"
    assert Job.select().count() == 0
    monkeypatch.setattr(settings, "DISK_RESERVE", (None, 1024 * 1024))  # space is back
    assert client.post("/api/v1/jobs/ping", {}).status == 202
    assert anonymous.get("/health/ready").json["checks"]["disk"]["status"] == "ok"


def test_disk_reserve_setting_reads_percentages_and_sizes():
    parse = settings._size
    assert parse("5%") == (5.0, None) and parse("50MB") == (None, 50 * 2**20) and parse("1 GB") == (None, 2**30)
    for bad in ("lots", "150%", "-1%", "12XB"):
        with pytest.raises(ValueError, match="DISK_RESERVE|percentage"):
            parse(bad)
    settings_reserve = settings.DISK_RESERVE
    try:
        settings.DISK_RESERVE = None
        assert disk.reserve_bytes(100 * 2**20) == 5 * 2**20  # 5% ...
        assert disk.reserve_bytes(100 * 2**30) == 50 * 2**20  # ... at most 50 MB
    finally:
        settings.DISK_RESERVE = settings_reserve


def test_ready_is_down_when_jobs_wait_and_no_consumer_beats(anonymous):
    ready = anonymous.get("/health/ready")
    assert ready.status == 200 and ready.json["status"] == "degraded"  # nothing waits
    jobs.enqueue("ping")
    ready = anonymous.get("/health/ready")
    assert ready.status == 503 and ready.json["status"] == "down"
    assert "waiting" in ready.json["checks"]["consumer"]["error"]
    consumer = RunningConsumer(workers=1)
    try:
        ready = anonymous.get("/health/ready")
        assert ready.status == 200 and ready.json["status"] == "ok"
    finally:
        consumer.stop()


def test_ready_is_down_while_the_database_cannot_be_written(anonymous, tmp_path, caplog):
    path = models.db.obj.database
    models.db.obj.close_all()
    read_only = models.open_database(f"sqlite:///{path}")
    read_only.connect_params["uri"] = True
    read_only.database = f"file:{path}?mode=ro"
    models.db.initialize(read_only)
    try:
        ready = anonymous.get("/health/ready")
    finally:
        read_only.close_all()
    assert ready.status == 503 and ready.json["checks"]["database"]["status"] == "down"
    assert ready.headers["X-Request-Id"] in ready.json["checks"]["database"]["error"]
    assert any("readonly" in record.getMessage() for record in caplog.records)  # the driver's words: in the log only


def test_wal_is_sized_to_its_disk():
    assert models.wal_pages("/") <= models.WAL_CHECKPOINT_PAGES
    pragma = models.db.execute_sql("PRAGMA journal_size_limit").fetchone()[0]
    assert pragma == models.wal_pages(models.db.obj.database) * 4096


def test_scheduler_survives_a_database_outage(monkeypatch):
    import schedules

    scheduler = schedules.Scheduler(jobs.huey, None, 1, True)
    calls = []

    def broken(minute, after):
        calls.append((minute, after))
        raise peewee.OperationalError("the connection is closed")

    monkeypatch.setattr(schedules, "tick", broken)
    now = models.utcnow()
    assert scheduler.enqueue_periodic_tasks(now) == []
    first_after = calls[0][1]
    monkeypatch.setattr(schedules, "tick", lambda minute, after: calls.append((minute, after)) or [])
    scheduler.enqueue_periodic_tasks(now)
    assert calls[-1][1] == first_after, "the minutes of the failed look are looked at again"
