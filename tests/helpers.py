"""What the tests share: HTTP client, error-shape assertion, polling, services and processes.

Tests import this module (never conftest); conftest.py builds its fixtures from it.
"""

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import jobs
import settings
import web

ROOT = Path(__file__).resolve().parent.parent
NONPOSIX = Path(__file__).resolve().parent / "nonposix"
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# The server to use; each run makes a database of its own there (conftest.py) and
# drops only that one. The database named here is only connected to, never changed.
POSTGRES_SERVER_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
POSTGRES_DATABASE = f"litejobs_test_{settings.QUEUE_NAME.rsplit('-', 1)[-1]}"
POSTGRES_URL = POSTGRES_SERVER_URL.rsplit("/", 1)[0] + "/" + POSTGRES_DATABASE
REQUIRE_SERVICES = os.environ.get("LITEJOBS_REQUIRE_SERVICES") == "1"


def base_env(**extra):
    """The environment of a litejobs process in a test: the defaults of every setting, this run's queue name."""
    environ = {k: v for k, v in os.environ.items() if k not in settings.SETTINGS or k == "ENV_FILE"}  # ENV_FILE=none: no .env
    environ.update(QUEUE_NAME=settings.QUEUE_NAME, **extra)
    return environ


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


def use_redis():
    import redis

    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    jobs.use_queue(REDIS_URL)
    jobs.huey.flush()


def use_postgres():
    import psycopg

    psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    jobs.use_queue(POSTGRES_URL)
    jobs.huey.flush()


# -- Test-only tasks and routes ------------------------------------------------------
@contextlib.contextmanager
def registered_tasks(*tasks):
    """Register test-only `(function, task options)` pairs as tasks for the block, then remove them."""
    wrappers = [jobs.task(**options)(function) for function, options in tasks]
    try:
        yield wrappers
    finally:
        for (function, _), wrapper in zip(tasks, wrappers):
            jobs.FUNCTIONS.pop(function.__name__, None)
            wrapper.unregister()


@contextlib.contextmanager
def registered_route(app, path, callback, method="GET"):
    """Route `path` on bottle `app` to `callback` for the block, then remove it again."""
    route = app.route(path, method, callback)
    added = app.routes[-1]
    try:
        yield route
    finally:
        app.routes.remove(added)
        # bottle has no way to remove one rule: empty its router (bottle forbids replacing
        # it) and add the routes left again.
        app.router.__init__()
        for kept in app.routes:
            app.router.add(kept.rule, kept.method, kept, name=kept.name)


# -- Consumers -----------------------------------------------------------------------
class RunningConsumer:
    """A real huey consumer (our Consumer class) running in threads of this process."""

    def __init__(self, workers=2, **options):
        self.consumer = jobs.huey.create_consumer(workers=workers, embedded=True, **options)
        self.consumer.start()
        self.thread = threading.Thread(target=web.supervise, args=(self.consumer,), daemon=True)
        self.thread.start()

    def stop(self):
        self.consumer.stop(graceful=True)
        self.thread.join(5)


# -- HTTP ----------------------------------------------------------------------------
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
                # The server answered (a 413 before reading the body) and closed while the
                # body was still going out; its answer may still be there to read.
                pass
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


# -- Processes ------------------------------------------------------------------------
def cli_env(tmp_path, **extra):
    """The environment of a litejobs command in a test: the defaults, a scratch DATA_DIR, and `extra`."""
    environ = base_env()
    environ.update({"DATA_DIR": str(tmp_path / "data"), "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), **extra})
    return environ


class Litejobs:
    """A web process and a standalone consumer process on one DATA_DIR."""

    def __init__(self, tmp_path, web_command, nonposix=False, **env):
        self.port = free_port()
        paths = ([str(NONPOSIX)] if nonposix else []) + [str(ROOT)]
        self.env = cli_env(
            tmp_path,
            PORT=str(self.port),
            LOG_LEVEL="INFO",
            HEARTBEAT_INTERVAL="0.5",
            PYTHONPATH=os.pathsep.join(paths),
            **env,
        )
        self.logs = tmp_path
        key = subprocess.run(
            [sys.executable, "web.py", "create-key", "tests"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert key.returncode == 0, key.stderr
        self.client = Client(f"http://127.0.0.1:{self.port}", key.stdout.strip().splitlines()[-1])
        consumer = Path(sys.executable).parent / "huey_consumer"
        consumer_command = [str(consumer)] if consumer.exists() else [sys.executable, "-m", "huey.bin.huey_consumer"]
        self.web = self._start("web", [sys.executable, *web_command])
        self.consumer = self._start("consumer", [*consumer_command, "jobs.huey", "-k", "thread", "-w", "2"])

    def _start(self, name, command):
        log = open(self.logs / f"{name}.log", "w")
        return subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def log(self, name):
        return (self.logs / f"{name}.log").read_text()

    def ready(self):
        try:
            reply = self.client.get("/health/ready")
        except OSError:
            return False
        return reply.status == 200 and reply.json["status"] == "ok"

    def stop(self):
        """SIGINT both (Ctrl-C); returns their exit codes."""
        codes = {}
        for name, process in (("web", self.web), ("consumer", self.consumer)):
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            try:
                codes[name] = process.wait(40)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = "hung"
        return codes


def readme_example():
    """The functions file of the README's "Write your own functions", exactly as a user pastes it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Write your own functions") :]
    block = section[section.index("`functions/shop.py`:\n\n") + len("`functions/shop.py`:\n\n") :]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines).strip() + "\n"
