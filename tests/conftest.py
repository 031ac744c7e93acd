"""Shared fixtures: a fresh SQLite database and queue per test, a real HTTP
server on 127.0.0.1, real consumers in threads, and the real Redis and
PostgreSQL services for the queue-facing tests.

Set LITEJOBS_REQUIRE_SERVICES=1 (CI does) to make an unreachable Redis or
PostgreSQL a failure instead of a skip.
"""

import os
import re
import uuid
import sys
import tempfile
import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Tests start from the documented defaults, whatever the shell or the project's
# `.env` holds: every litejobs setting leaves the environment, and `.env` is not read.
def _setting_names():
    sources = [ROOT / "settings.py", *sorted(ROOT.glob("apps/**/*.py"))]
    return {name for path in sources for name in re.findall(r'_?define\(\s*"([A-Z][A-Z0-9_]*)"', path.read_text(encoding="utf-8"))}


for _name in _setting_names():
    os.environ.pop(_name, None)
os.environ["ENV_FILE"] = "none"  # inherited by the processes tests start, too

# Settings are read once at import: point them at a scratch folder first.
_session_dir = tempfile.mkdtemp(prefix="litejobs-tests-")
os.environ["DATA_DIR"] = _session_dir
os.environ["LOG_LEVEL"] = "WARNING"
# Consumers in tests run jobs only; tests/test_periodic.py drives schedule ticks itself.
os.environ["RUN_SCHEDULES"] = "0"
# Keys and tables of this run only: in Redis every key has this prefix, and the
# PostgreSQL tests use a database of this run (created and dropped below).
os.environ["QUEUE_NAME"] = f"litejobs-test-{uuid.uuid4().hex[:10]}"
# Every built-in app, and none of the caller's own functions.
os.environ["FUNCTIONS_DIR"] = os.path.join(_session_dir, "functions")
for _name in ("DATABASE_URL", "QUEUE_URL", "SMTP_URL", "PROVIDER_URL", "ENV", "SECRET_KEY", "APPS"):
    os.environ.pop(_name, None)

import jobs  # noqa: E402
import settings  # noqa: E402
import models  # noqa: E402
import web  # noqa: E402
from helpers import POSTGRES_DATABASE, POSTGRES_SERVER_URL, REDIS_URL, POSTGRES_URL, Client, RunningConsumer, free_port, service_or_skip, use_postgres, use_redis  # noqa: E402




# -- This run's PostgreSQL database and Redis keys --------------------------------------
def pytest_sessionstart(session):
    """Create this run's PostgreSQL database on TEST_POSTGRES_URL's server (if it answers)."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_SERVER_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{POSTGRES_DATABASE}"')
    except Exception as exc:  # no server: its tests skip (or fail in CI) through service_or_skip
        session.config.litejobs_postgres = f"not created: {exc}"
    else:
        session.config.litejobs_postgres = "created"


def pytest_sessionfinish(session):
    """Drop this run's database and delete this run's Redis keys, and nothing else."""
    if getattr(session.config, "litejobs_postgres", None) == "created":
        import psycopg

        if not models.db.is_closed():
            models.db.close()
        with psycopg.connect(POSTGRES_SERVER_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{POSTGRES_DATABASE}" WITH (FORCE)')
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        keys = list(client.scan_iter(match=f"*{settings.QUEUE_NAME}*", count=1000))
        if keys:
            client.delete(*keys)
    except Exception:  # no Redis: nothing of ours is there
        pass


# -- Database and queue, fresh for every test ---------------------------------------
@pytest.fixture(autouse=True)
def fresh_storage(tmp_path):
    """A new SQLite app database in the test's own folder, the queue in it (the default)."""
    database = models.open_database(f"sqlite:///{tmp_path / 'app.db'}")
    models.db.initialize(database)
    models.create_tables()
    jobs.use_queue(f"sqlite:///{tmp_path / 'app.db'}")
    yield tmp_path
    jobs.huey.storage.close()
    database.close()


@pytest.fixture(params=["sqlite", "redis", "postgresql"])
def backend(request, fresh_storage):
    """Run the test once per queue storage: SQLite, Redis and PostgreSQL."""
    if request.param == "redis":
        service_or_skip("Redis", use_redis)
    elif request.param == "postgresql":
        service_or_skip("PostgreSQL", use_postgres)
    yield request.param
    if request.param != "sqlite":
        jobs.huey.flush()


@pytest.fixture
def postgres_database():
    """The app database on the real PostgreSQL, emptied before the test."""
    def connect():
        database = models.open_database(POSTGRES_URL)
        database.connect()
        return database

    database = None

    def check():
        nonlocal database
        database = connect()

    service_or_skip("PostgreSQL", check)
    models.db.initialize(database)
    database.drop_tables(models.MODELS, safe=True, cascade=True)
    database.close()
    models.create_tables()
    yield database
    database.close()


# -- Consumers -----------------------------------------------------------------------
@pytest.fixture
def consumer():
    running = RunningConsumer()
    yield running
    running.stop()


# -- HTTP ----------------------------------------------------------------------------
class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def server_url():
    """web.app served over real HTTP on 127.0.0.1 for the whole session."""
    port = free_port()
    httpd = make_server("127.0.0.1", port, web.app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def api_key():
    _, plain = models.ApiKey.create_key("tests")
    return plain


@pytest.fixture
def client(server_url, api_key):
    """An authenticated client of the real HTTP server."""
    return Client(server_url, api_key)


@pytest.fixture
def anonymous(server_url):
    return Client(server_url)


