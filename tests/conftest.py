"""Shared fixtures: a fresh SQLite database and queue per test, a real HTTP
server on 127.0.0.1, real consumers in threads, and the real Redis and
PostgreSQL services for the queue-facing tests.

Set LITEJOBS_REQUIRE_SERVICES=1 (CI does) to make an unreachable Redis or
PostgreSQL a failure instead of a skip.
"""

import http.client
import json
import os
import re
import socket
import sys
import tempfile
import threading
import time
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

import jobs  # noqa: E402
import models  # noqa: E402
import web  # noqa: E402

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("LITEJOBS_REQUIRE_SERVICES") == "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=10.0, interval=0.02, message="condition"):
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def service_or_skip(name, check):
    """Run `check`; an unreachable service skips the test, or fails it in CI."""
    try:
        check()
    except Exception as exc:
        if REQUIRE_SERVICES:
            pytest.fail(f"{name} is required (LITEJOBS_REQUIRE_SERVICES=1) but unreachable: {exc}")
        pytest.skip(f"{name} unreachable: {exc}")


# -- Database and queue, fresh for every test ---------------------------------------
@pytest.fixture(autouse=True)
def fresh_storage(tmp_path):
    """A new SQLite app database and SQLite queue in the test's own folder."""
    database = models.open_database(f"sqlite:///{tmp_path / 'app.db'}")
    models.db.initialize(database)
    models.create_tables()
    jobs.use_queue(f"sqlite:///{tmp_path / 'queue.db'}")
    yield tmp_path
    jobs.huey.storage.close()
    database.close()


def _use_redis():
    import redis

    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    jobs.use_queue(REDIS_URL)
    jobs.huey.flush()


def _use_postgres():
    import psycopg

    psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    jobs.use_queue(POSTGRES_URL)
    jobs.huey.flush()


@pytest.fixture(params=["sqlite", "redis", "postgresql"])
def backend(request, fresh_storage):
    """Run the test once per queue storage: SQLite, Redis and PostgreSQL."""
    if request.param == "redis":
        service_or_skip("Redis", _use_redis)
    elif request.param == "postgresql":
        service_or_skip("PostgreSQL", _use_postgres)
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
class RunningConsumer:
    """A real huey consumer (our Consumer class) running in threads of this process."""

    def __init__(self, workers=2, **options):
        self.consumer = jobs.huey.create_consumer(workers=workers, embedded=True, **options)
        self.consumer.start()
        self.thread = threading.Thread(target=web._supervise, args=(self.consumer,), daemon=True)
        self.thread.start()

    def stop(self):
        self.consumer.stop(graceful=True)
        self.thread.join(5)


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


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8")


class Client:
    """A tiny HTTP client over http.client; `key` is sent as a Bearer token."""

    def __init__(self, base_url, key=None):
        self.base_url, self.key = base_url, key
        self.host, self.port = base_url.split("//")[1].split(":")

    def request(self, method, path, json_body=None, body=None, headers=None):
        headers = dict(headers or {})
        if self.key and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.key}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=60)
        try:
            try:
                conn.request(method, path, body=body, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered (413) before reading the whole body: read that answer
            reply = conn.getresponse()
            return Response(reply.status, dict(reply.getheaders()), reply.read())
        finally:
            conn.close()

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, json_body=None, **kwargs):
        return self.request("POST", path, json_body=json_body, **kwargs)

    def delete(self, path, **kwargs):
        return self.request("DELETE", path, **kwargs)


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


def assert_error(response, status, code, field=None):
    """Assert the API's JSON error shape, status and code (and field when given)."""
    assert response.status == status, (response.status, response.body[:500])
    assert response.headers.get("Content-Type", "").startswith("application/json"), response.headers
    error = response.json["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"]
    if field is not None:
        assert error.get("field") == field, error
    return error
