"""litejobs_client against a real `web.py run` process (its own DATA_DIR and port).

Faults come from tests/fault_proxy.py, a real HTTP proxy between the client
and the server that answers 503/429/500 itself, drops connections before or
after the server did the work, or never answers: the network and the reverse
proxy are the only things played. The command line runs as a subprocess.
"""

import ast
import importlib
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

import pytest
from helpers import base_env, REDIS_URL, ROOT, free_port, service_or_skip, wait_until
from fault_proxy import FaultProxy, TcpRelay

import client_cli
import jobs
import litejobs_client
import openapi
from litejobs_client import Client

pytestmark = pytest.mark.timeout(120)


# -- A real server ------------------------------------------------------------------------
class Server:
    """`python web.py run` with an embedded consumer, on a free port and its own DATA_DIR."""

    def __init__(self, folder, **settings_):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = base_env()
        self.env.update(DATA_DIR=str(folder), PORT=str(self.port), LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
        self.env.update(RUN_SCHEDULES="0", **settings_)
        made = subprocess.run(
            [sys.executable, "web.py", "create-key", "client-tests"],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        self.key = made.stdout.strip().splitlines()[-1]
        self.log = open(folder / "web.log", "w+")
        self.process = subprocess.Popen(
            [sys.executable, "web.py", "run"], cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def wait_ready(self):
        probe = Client(self.url, retries=0, timeout=2)

        def live():
            assert self.process.poll() is None, self.output()
            try:
                return probe.request("GET", "/health/live")["status"] == "ok"
            except litejobs_client.ConnectionFailed:
                return False

        wait_until(live, timeout=30, interval=0.1, message="web.py run serving")
        probe.close()
        return self

    def output(self):
        self.log.seek(0)
        return self.log.read()[-3000:]

    def stop(self):
        """Ctrl-C; returns the exit code (0: it stopped gracefully)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            return "hung"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The main server, and one allowing 5 calls a minute per key (for real 429s); started side by side."""
    main = Server(tmp_path_factory.mktemp("client-main"))
    strict = Server(tmp_path_factory.mktemp("client-strict"), RATE_LIMIT_PER_KEY="5")
    yield main.wait_ready(), strict.wait_ready()
    for server in (main, strict):
        code = server.stop()
        assert code == 0, (code, server.output())
        server.log.close()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture
def lj(server):
    client = Client(server.url, key=server.key)
    yield client
    client.close()


@pytest.fixture
def proxy(server):
    with FaultProxy(server.port) as running:
        yield running


def fast_client(url, key, **options):
    """A client that retries quickly, so fault tests stay short."""
    options = {"backoff": 0.01, "backoff_max": 0.05, "retries": 8, "retry_time": 10, **options}
    return Client(url, key=key, **options)


def jobs_with(lj, name, **args):
    """The jobs of function `name` whose arguments include `args`, from the job history."""
    return [job for job in lj.jobs(name=name, limit=200) if all(job.data["args"].get(k) == v for k, v in args.items())]


# -- Calls ----------------------------------------------------------------------------------
def test_invoke_goes_to_the_new_path_with_an_idempotency_key(server, proxy):
    lj = Client(proxy.url, key=server.key)
    job = lj.invoke("echo", value="hi", wait=10)
    assert (job.status, job.result, job.error) == ("succeeded", "hi", None)
    assert job.finished and job["attempts"] == 1 and job.data["name"] == "echo"
    method, path, headers = proxy.requests[0]
    assert (method, path) == ("POST", "/api/v1/functions/echo/jobs?wait=10.0")
    assert uuid.UUID(headers["idempotency-key"]) and headers["authorization"] == f"Bearer {server.key}"
    lj.invoke("echo", value="again", idempotency_key="mine-1")
    assert proxy.requests[1][2]["idempotency-key"] == "mine-1"


def test_wait_longer_than_the_server_allows_goes_on_by_polling(lj):
    job = lj.invoke("sleep", seconds=0.3, wait=40)  # ?wait= is capped at 30 on the wire
    assert job.status == "succeeded" and job.result == 0.3


def test_job_wait_refresh_cancel_and_retry(lj):
    job = lj.invoke("sleep", seconds=30)
    assert job.status in ("queued", "running")
    with pytest.raises(TimeoutError, match=job.id):
        job.wait(timeout=0.3)
    assert job.refresh() is job
    job.cancel()
    assert job.status == "canceled" or job.data["cancel_requested"]
    job.wait(timeout=10)
    assert job.status == "canceled"
    again = job.retry()
    assert again.id != job.id and again["parent_id"] == job.id and again.status in ("queued", "running")
    again.cancel(terminate=False)
    assert lj.get(again.id).data["parent_id"] == job.id


def test_celery_style_delay_and_apply_async(lj):
    echo = lj.function("echo")
    assert echo.delay(value=3).wait(timeout=10).result == 3
    later = lj.function("sleep").apply_async(kwargs={"seconds": 1}, countdown=600, priority=7)
    assert (later.status, later["priority"]) == ("scheduled", 7) and later["scheduled_for"]
    assert later.cancel().status == "canceled"
    with pytest.raises(TypeError, match="keyword arguments only"):
        echo.apply_async(args=[1])


# -- Errors ------------------------------------------------------------------------------
def _idempotency_clash(lj):
    lj.invoke("echo", idempotency_key="clash-key", value=1)
    lj.invoke("echo", idempotency_key="clash-key", value=2)


def _cancel_finished(lj):
    lj.invoke("ping", wait=10).cancel()


ERROR_CASES = {
    "bad_json": (lambda lj: lj.request("POST", "/api/v1/functions/echo/jobs", body=[1]), 400, "BadRequest", None),
    "unauthorized": (lambda lj: Client(lj.base_url, key="wrong").get("x"), 401, "Unauthorized", None),
    "forbidden": (
        lambda lj: lj.request("OPTIONS", "/api/v1/jobs", headers={"Origin": "https://elsewhere.example"}),
        403,
        "Forbidden",
        None,
    ),
    "not_found function": (lambda lj: lj.invoke("no_such_function"), 404, "NotFound", None),
    "not_found job": (lambda lj: lj.get("no-such-job"), 404, "NotFound", None),
    "method_not_allowed": (lambda lj: lj.request("DELETE", "/api/v1/jobs"), 405, "MethodNotAllowed", None),
    "conflict idempotency": (_idempotency_clash, 409, "Conflict", None),
    "conflict finished": (_cancel_finished, 409, "Conflict", None),
    "too_large": (lambda lj: lj.invoke("echo", value="x" * 1_100_000), 413, "TooLarge", None),
    "invalid_argument": (lambda lj: lj.invoke("sleep", seconds="soon"), 422, "InvalidArgument", "seconds"),
    "invalid_argument query": (lambda lj: lj.invoke("echo", value=1, delay=-5), 422, "InvalidArgument", "delay"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_every_error_answer_raises_its_exception(lj, case):
    call, status, kind, field = ERROR_CASES[case]
    with pytest.raises(litejobs_client.LitejobsError) as caught:
        call(lj)
    error = caught.value
    assert type(error).__name__ == kind and error.status == status, (error, error.status)
    assert error.code == case.split()[0] and error.message and "Traceback" not in error.message
    assert len(error.request_id) == 12 and error.request_id in str(error)
    assert error.field == field


def test_rate_limited_carries_retry_after_and_is_not_waited_out_past_the_bound(servers):
    strict = servers[1]
    lj = Client(strict.url, key=strict.key, retries=3, retry_time=0.5)
    started = time.monotonic()
    with pytest.raises(litejobs_client.RateLimited) as caught:
        for _ in range(12):  # 5 a minute per key; a window may turn over once in between
            lj.functions()
    error = caught.value
    assert (error.status, error.code) == (429, "rate_limited") and error.request_id
    assert 1 <= error.retry_after <= 60 and error.retry_after == int(error.retry_after)
    assert time.monotonic() - started < 5  # Retry-After was beyond retry_time: raised, not slept


@pytest.mark.parametrize(
    ("answer", "kind", "code"),
    [
        ((503, {}), litejobs_client.Unavailable, "unavailable"),
        ((500, {}), litejobs_client.InternalError, "internal"),
        ((507, {}), litejobs_client.InsufficientStorage, "insufficient_storage"),
        ((502, {"Content-Type": "text/html"}, b"<html>502 Bad Gateway</html>"), litejobs_client.Unavailable, None),
    ],
    ids=["503", "500", "507", "502-html"],
)
def test_errors_the_server_cannot_be_made_to_send_map_too(server, answer, kind, code):
    with FaultProxy(server.port, plan=[answer]) as proxy:
        with pytest.raises(kind) as caught:
            Client(proxy.url, key=server.key, retries=0).invoke("echo", value=1)
    error = caught.value
    assert (error.status, error.code, error.request_id) == (answer[0], code, "proxy-1")
    assert "injected" in error.message or "502 Bad Gateway" in error.message


def test_a_success_answer_that_is_not_json_is_an_error(server):
    login_page = (200, {"Content-Type": "text/html"}, b"<html>please log in</html>")
    with FaultProxy(server.port, plan=[login_page]) as proxy:
        with pytest.raises(litejobs_client.LitejobsError, match="not JSON") as caught:
            Client(proxy.url, key=server.key).functions()
    assert caught.value.status == 200 and "please log in" in caught.value.message


# -- Retries --------------------------------------------------------------------------------
def test_retries_under_503s_and_dropped_connections_enqueue_exactly_once(server, lj):
    token = uuid.uuid4().hex
    plan = [(503, {}), "drop", "drop_after", (429, {"Retry-After": "1"}), "drop_after", (503, {"Retry-After": "0"})]
    with FaultProxy(server.port, plan=plan) as proxy:
        started = time.monotonic()
        job = fast_client(proxy.url, server.key).invoke("echo", value=token, wait=10)
        elapsed = time.monotonic() - started
        sent = proxy.requests
    assert job.status == "succeeded" and job.result == token
    assert len(sent) == 7 and len({headers["idempotency-key"] for _, _, headers in sent}) == 1
    assert elapsed >= 1.0  # Retry-After: 1 was honoured
    found = jobs_with(lj, "echo", value=token)
    assert [j.id for j in found] == [job.id]  # the server saw it three times and enqueued it once
    assert found[0]["attempts"] == 1


def test_a_job_retry_is_not_sent_again_once_the_server_may_have_done_it(server, lj):
    first = lj.invoke("fail", message=uuid.uuid4().hex, wait=10)
    with FaultProxy(server.port, plan=["drop_after"]) as proxy:
        with pytest.raises(litejobs_client.ConnectionFailed):
            fast_client(proxy.url, server.key).retry(first.id)
        assert len(proxy.requests) == 1
    children = [job for job in lj.jobs(name="fail") if job.data["parent_id"] == first.id]
    assert len(children) == 1  # done once by the server, never twice by the client


def test_a_job_retry_is_sent_again_after_a_503(server, lj):
    first = lj.invoke("fail", message=uuid.uuid4().hex, wait=10)
    with FaultProxy(server.port, plan=[(503, {})]) as proxy:
        again = fast_client(proxy.url, server.key).retry(first.id)
        assert len(proxy.requests) == 2
    assert again["parent_id"] == first.id


@pytest.fixture(scope="module")
def queue_behind_relay(tmp_path_factory):
    """A server whose Redis queue is reached through a TcpRelay the test can cut: real 503s."""
    import redis

    service_or_skip("Redis", lambda: redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    parts = urllib.parse.urlsplit(REDIS_URL)
    relay = TcpRelay(parts.hostname, parts.port or 6379)
    queue_url = f"redis://127.0.0.1:{relay.port}{parts.path}"
    server = Server(tmp_path_factory.mktemp("client-redis"), QUEUE_URL=queue_url).wait_ready()
    yield server, relay
    relay.restore()
    code = server.stop()
    relay.stop()
    jobs.make_huey(REDIS_URL).flush()  # the server's queue keys
    store = redis.Redis.from_url(REDIS_URL)
    for name in store.scan_iter("litejobs:ratelimit:*"):  # its rate-limit counters
        store.delete(name)
    store.close()
    assert code == 0, (code, server.output())
    server.log.close()


def test_a_real_503_raises_unavailable_and_nothing_is_enqueued(queue_behind_relay):
    server, relay = queue_behind_relay
    lj = Client(server.url, key=server.key, retries=0)
    token = uuid.uuid4().hex
    relay.cut()
    try:
        with pytest.raises(litejobs_client.Unavailable) as caught:
            lj.invoke("echo", value=token)
    finally:
        relay.restore()
    error = caught.value
    assert (error.status, error.code) == (503, "unavailable") and "queue storage unavailable" in error.message
    assert len(error.request_id) == 12 and error.request_id in str(error)
    assert jobs_with(lj, "echo", value=token) == []


def test_invoke_rides_out_a_queue_outage_and_enqueues_once(queue_behind_relay):
    server, relay = queue_behind_relay
    token = uuid.uuid4().hex
    relay.cut()
    threading.Timer(0.6, relay.restore).start()
    started = time.monotonic()
    job = fast_client(server.url, server.key, backoff=0.05, backoff_max=0.1, retries=50).invoke(
        "echo", value=token, wait=10
    )
    assert time.monotonic() - started >= 0.5  # it did wait for the queue to come back
    assert job.status == "succeeded" and job.result == token
    assert [j.id for j in jobs_with(Client(server.url, key=server.key), "echo", value=token)] == [job.id]


def test_retries_are_bounded_in_attempts_and_time(server):
    with FaultProxy(server.port, plan=[(503, {})] * 20) as proxy:
        with pytest.raises(litejobs_client.Unavailable):
            fast_client(proxy.url, server.key, retries=3).functions()
        assert len(proxy.requests) == 4
    with FaultProxy(server.port, plan=[(503, {})] * 20) as proxy:
        started = time.monotonic()
        with pytest.raises(litejobs_client.Unavailable):
            fast_client(proxy.url, server.key, retries=100, backoff=0.1, backoff_max=0.1, retry_time=0.5).functions()
        assert time.monotonic() - started < 1.5 and 2 <= len(proxy.requests) <= 8


def test_refused_connections_and_read_timeouts_are_bounded(server):
    closed = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(litejobs_client.ConnectionFailed, match="cannot connect"):
        fast_client(closed, server.key, retries=3).functions()
    assert time.monotonic() - started < 2
    with FaultProxy(server.port, plan=["stall"]) as proxy:
        started = time.monotonic()
        with pytest.raises(litejobs_client.ConnectionFailed, match="timed out"):
            Client(proxy.url, key=server.key, timeout=0.5, retries=0).functions()
        assert time.monotonic() - started < 3


# -- Paging, prefixes, headers, threads ----------------------------------------------------------
def test_pagination_returns_every_job_once_while_new_jobs_arrive(lj, server):
    batch = uuid.uuid4().hex
    early = {lj.invoke("echo", value={"batch": batch, "i": i}).id for i in range(60)}
    stop = threading.Event()
    late = []

    def keep_invoking():
        writer = Client(server.url, key=server.key)
        while not stop.is_set() and len(late) < 300:
            late.append(writer.invoke("echo", value={"batch": batch, "late": True}).id)
        writer.close()

    thread = threading.Thread(target=keep_invoking)
    thread.start()
    try:
        seen = []
        for job in lj.jobs(name="echo", limit=7):
            seen.append(job.id)
            time.sleep(0.002)  # let new jobs land between pages
    finally:
        stop.set()
        thread.join(30)
    assert late, "no job arrived while paging"
    assert len(seen) == len(set(seen)), "a job came twice"
    assert early <= set(seen), f"missing: {len(early - set(seen))}"


def test_a_base_url_with_a_path_prefix_works_behind_a_proxy(server):
    with FaultProxy(server.port, prefix="/litejobs") as proxy:
        lj = Client(proxy.url + "/", key=server.key)
        job = lj.invoke("echo", value="prefixed", wait=10)
        assert lj.get(job.id).result == "prefixed"
        assert any(found.id == job.id for found in lj.jobs(name="echo"))
        assert lj.invoke("sleep", seconds=5, delay=600).cancel().status == "canceled"
        paths = proxy.paths()
        with pytest.raises(litejobs_client.NotFound):  # the proxy's own HTML 404 outside the prefix
            Client(f"http://127.0.0.1:{proxy.port}/elsewhere", key=server.key).functions()
    assert paths[0] == "/litejobs/api/v1/functions/echo/jobs?wait=10.0"
    assert all(path.startswith("/litejobs/api/v1/") for path in paths)


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_both_auth_headers(server, proxy, header):
    lj = Client(proxy.url, key=server.key, header=header)
    assert lj.invoke("ping", wait=10).result == "pong"
    sent = proxy.requests[0][2]
    if header == "x-api-key":
        assert sent["x-api-key"] == server.key and "authorization" not in sent
    else:
        assert sent["authorization"] == f"Bearer {server.key}" and "x-api-key" not in sent
    with pytest.raises(litejobs_client.Unauthorized):
        Client(proxy.url, key="not-a-key", header=header).invoke("ping")
    with pytest.raises(ValueError, match="header"):
        Client(proxy.url, key=server.key, header="cookie")


def test_keep_alive_connections_are_reused(server, proxy):
    lj = Client(proxy.url, key=server.key)
    for _ in range(20):
        lj.functions()
    assert proxy.connections == 1


def test_threads_share_one_client(server, proxy, lj):
    shared = Client(proxy.url, key=server.key, pool_size=16)
    batch = uuid.uuid4().hex
    ids, errors = [], []

    def work(thread):
        try:
            for i in range(10):
                ids.append(shared.invoke("echo", value={"batch": batch, "t": thread, "i": i}).id)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and len(set(ids)) == 160
    assert proxy.connections <= 32  # 160 calls: at most one connection per thread, then reuse (16 seen here)
    mine = {job.id: job.data["args"]["value"] for job in lj.jobs(name="echo", limit=200) if job.id in set(ids)}
    assert len(mine) == 160
    assert {(v["t"], v["i"]) for v in mine.values()} == {(t, i) for t in range(16) for i in range(10)}


# -- The server's new path and the document ---------------------------------------------------
def test_the_old_path_still_invokes_and_is_deprecated_in_the_document(lj):
    job = litejobs_client.Job(lj, lj.request("POST", "/api/v1/jobs/echo", body={"value": "old"}, query={"wait": 10}))
    assert job.status == "succeeded" and job.result == "old"
    paths = openapi.document()["paths"]
    new, old = paths["/api/v1/functions/{name}/jobs"]["post"], paths["/api/v1/jobs/{id}"]["post"]
    assert old["deprecated"] is True and "deprecated" not in new
    assert new["operationId"] == "invokeFunction" and [p["name"] for p in new["parameters"]] == [
        p["name"] for p in old["parameters"]
    ]
    assert new["responses"] == old["responses"] and new["requestBody"] == old["requestBody"]


def test_a_client_generated_from_the_openapi_document_calls_echo_and_fail(lj, server, tmp_path):
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(lj.request("GET", "/api/v1/openapi.json")))
    (tmp_path / "generator.yml").write_text("post_hooks: []\n")  # no formatter run on the output
    made = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(spec), "--meta", "none",
         "--output-path", str(tmp_path / "litejobs_generated"), "--config", str(tmp_path / "generator.yml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0 and "Warning" not in made.stdout + made.stderr, made.stdout + made.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        generated = importlib.import_module("litejobs_generated")
        invoke = importlib.import_module("litejobs_generated.api.jobs.invoke_function")
        body_type = importlib.import_module("litejobs_generated.models").InvokeFunctionBody
        api = generated.AuthenticatedClient(base_url=server.url, token=server.key)
        echoed = invoke.sync_detailed("echo", client=api, body=body_type.from_dict({"value": "hi"}), wait=10)
        failed = invoke.sync_detailed("fail", client=api, body=body_type.from_dict({"message": "boom"}), wait=10)
        missing = invoke.sync_detailed("no_such_function", client=api)
        api.get_httpx_client().close()
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.startswith("litejobs_generated")]:
            del sys.modules[name]
    assert echoed.status_code == 200 and (echoed.parsed.status, echoed.parsed.result) == ("succeeded", "hi")
    assert failed.status_code == 200 and (failed.parsed.status, failed.parsed.error) == ("failed", "boom")
    assert missing.status_code == 404 and missing.parsed.error.code == "not_found"


# -- The command line --------------------------------------------------------------------------
def cli(server, *argv, flags=True, **env):
    command = [sys.executable, "web.py", *argv] + (["--url", server.url, "--key", server.key] if flags else [])
    environ = {**server.env, **env}
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)


def test_cli_invoke_prints_the_job_and_exits_by_its_outcome(server):
    ok = cli(server, "invoke", "echo", 'value={"n": [1, 2]}', "--wait", "10")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split()[1:4] == ["echo", "succeeded", 'result={"n":'] and '"n": [1, 2]' in ok.stdout
    failed = cli(server, "invoke", "fail", "message=it broke", "--wait", "10", "--json")
    assert failed.returncode == 1, failed.stderr
    job = json.loads(failed.stdout)
    assert (job["status"], job["error"], job["args"]) == ("failed", "it broke", {"message": "it broke"})
    accepted = cli(server, "invoke", "sleep", "seconds=0.1")
    assert accepted.returncode == 0 and accepted.stdout.split()[1:3] in (["sleep", "queued"], ["sleep", "running"])


def test_cli_reads_url_and_key_from_settings_and_lists_cancels_and_retries(server, lj):
    env = {"LITEJOBS_URL": server.url, "LITEJOBS_KEY": server.key}
    failed = lj.invoke("fail", message=uuid.uuid4().hex, wait=10)
    listed = cli(server, "jobs", "--status", "failed", "--name", "fail", "--limit", "500", flags=False, **env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert f"{failed.id}  fail  failed  error={failed.error}" in lines
    assert all(line.split()[1:3] == ["fail", "failed"] for line in lines)
    retried = cli(server, "retry", failed.id, flags=False, **env)
    assert retried.returncode == 0, retried.stderr
    assert lj.get(retried.stdout.split()[0])["parent_id"] == failed.id
    waiting = lj.invoke("sleep", seconds=1, delay=600)
    canceled = cli(server, "cancel", waiting.id, "--json", flags=False, **env)
    assert canceled.returncode == 0 and json.loads(canceled.stdout)["status"] == "canceled"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["invoke", "no_such_function"], "not_found: no job function 'no_such_function'"),
        (["invoke", "echo", "value"], "expected key=value"),
        (["cancel", "no-such-job"], "not_found"),
        (["invoke", "echo", "value=1", "--url", "{url}", "--key", "wrong"], "pass --key or set LITEJOBS_KEY"),
    ],
    ids=["unknown-function", "not-a-pair", "unknown-job", "wrong-key"],
)
def test_cli_errors_exit_2_with_the_reason(server, argv, message, capsys):
    # In this process: web.py's dispatch to client_cli.main is covered by the tests above.
    code = client_cli.main([word.format(url=server.url) for word in argv], url=server.url, key=server.key)
    stderr = capsys.readouterr().err
    assert code == 2 and message in stderr and "Traceback" not in stderr, stderr


def test_cli_argument_values_are_json_where_they_parse():
    parsed = client_cli.parse_arguments(["a=1", "b=1.5", "c=true", "d=null", "e=hello", 'f=["x"]', "g=", "h=a=b"])
    assert parsed == {"a": 1, "b": 1.5, "c": True, "d": None, "e": "hello", "f": ["x"], "g": "", "h": "a=b"}


def test_the_client_is_one_standard_library_module_for_python_3_9():
    source = (ROOT / "litejobs_client.py").read_text()
    tree = ast.parse(source, feature_version=(3, 9))  # no syntax newer than 3.9
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
