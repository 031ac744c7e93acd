"""Pooled PostgreSQL: every pasted form of DATABASE_URL opens one pool per
process, and web requests and jobs hand their connection back when they end.
Runs against the real PostgreSQL of TEST_POSTGRES_URL."""

import threading
from urllib.parse import urlsplit

import pytest
from helpers import POSTGRES_URL, RunningConsumer, assert_error, wait_until

import dburl
import jobs
import models
import settings
from models import Job


def _scheme(url, scheme):
    return scheme + url[len(urlsplit(url).scheme) :]


def _with_query(url, query):
    return url + ("&" if "?" in url else "?") + query


@pytest.mark.parametrize(
    "scheme, query",
    [
        ("postgres", ""),
        ("postgresql", "sslmode=disable"),
        ("postgresql+pool", "max_connections=3&stale_timeout=60"),
        ("postgres+pool", "connect_timeout=5&application_name=litejobs"),
        ("postgresql+psycopg", "sslmode=prefer"),
    ],
)
def test_every_pasted_form_of_database_url_opens_a_pool(postgres_database, scheme, query):
    url = _scheme(POSTGRES_URL, scheme)
    if query:
        url = _with_query(url, query)
    accepted = settings._url("sqlite", "postgresql")(url)  # what settings.py makes of DATABASE_URL
    assert accepted.startswith("postgresql://")
    database = models.open_database(accepted)
    try:
        assert isinstance(database, dburl.PooledPostgres)
        assert database.execute_sql("SELECT 1").fetchone() == (1,)
        assert database._max_connections == (3 if "max_connections" in query else settings.DATABASE_POOL_SIZE)
        assert "max_connections" not in database.connect_params  # pool options never reach libpq
    finally:
        database.close_all()


def test_user_and_password_are_unquoted_and_bad_forms_are_refused():
    database = dburl.open_postgres("postgres://app%2Buser:p%40ss%2Fword@db.example.com:6543/jobs?sslmode=require")
    assert database.database == "jobs"
    assert database.connect_params["user"] == "app+user" and database.connect_params["password"] == "p@ss/word"
    assert database.connect_params["sslmode"] == "require" and database.connect_params["port"] == 6543
    with pytest.raises(ValueError, match="unknown scheme 'mysql'"):
        settings._url("sqlite", "postgresql")("mysql://u@h/db")
    with pytest.raises(ValueError, match="no database name"):
        dburl.open_postgres("postgresql://u@h/")


def test_web_requests_hand_their_connection_back(postgres_database, client):
    errors = []

    def calls():
        try:
            for _ in range(10):
                assert client.get("/api/v1/jobs?limit=5").status == 200
        except AssertionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=calls) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    models.db.close()  # this test thread's own (it made the API key)
    assert len(postgres_database._in_use) == 0  # 60 requests, none holds a connection now
    # At most one per concurrent request was opened (and this thread's): 7 for 60 requests.
    assert len(postgres_database._connections) <= 7


def test_jobs_hand_their_connection_back(postgres_database):
    running = RunningConsumer(workers=4)
    try:
        ids = [jobs.submit("sleep", {"seconds": 0.05})[0].id for _ in range(12)]
        wait_until(
            lambda: Job.select().where(Job.id.in_(ids) & (Job.status == "succeeded")).count() == 12,
            timeout=30,
            message="jobs done",
        )
        models.db.close()
        # Only the consumer's heartbeat thread keeps one; the four workers handed theirs back.
        wait_until(lambda: len(postgres_database._in_use) <= 1, timeout=5, message="connections returned")
    finally:
        running.stop()


def test_an_exhausted_pool_answers_503_not_500(postgres_database, client, api_key):
    small = dburl.open_postgres(_with_query(POSTGRES_URL, "max_connections=1&timeout=1"))
    models.db.initialize(small)
    held = threading.Event()
    release = threading.Event()

    def hold():
        small.connect()
        held.set()
        release.wait(10)
        small.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held.wait(5)
        reply = client.get("/api/v1/jobs")
        error = assert_error(reply, 503, "unavailable")
        assert "DATABASE_POOL_SIZE" in error["message"]
    finally:
        release.set()
        holder.join(10)
        models.db.initialize(postgres_database)
        small.close_all()


def test_a_connection_the_server_dropped_is_replaced_not_handed_out(postgres_database, monkeypatch):
    database = dburl.open_postgres(POSTGRES_URL)
    try:
        pid = database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        database.close()  # back in the pool
        postgres_database.execute_sql("SELECT pg_terminate_backend(%s)", (pid,))
        monkeypatch.setattr(dburl.PooledPostgres, "PING_AFTER_IDLE", 0.0)  # idle "long enough": pinged
        assert database.execute_sql("SELECT pg_backend_pid()").fetchone()[0] != pid
    finally:
        database.close_all()
