"""The core API: invoking functions, the job history, cancel and retry, every error row."""

import datetime
import json
import time

import pytest
from helpers import RunningConsumer, assert_error, wait_until, registered_route, registered_tasks

import jobs
import models
import api
import web
from models import Job

# Test-only functions, registered as tasks by the fixture below while this module's tests run.
_attempts = {}


def flaky(key: str, failures: int = 1):
    """Fail `failures` times, then succeed."""
    _attempts[key] = _attempts.get(key, 0) + 1
    if _attempts[key] <= failures:
        raise RuntimeError(f"attempt {_attempts[key]} failed")
    return _attempts[key]


def reject(key: str):
    """Refuse its input with JobError, although it has retries."""
    _attempts[key] = _attempts.get(key, 0) + 1
    raise jobs.JobError(f"bad input {key}")


def short_lived() -> str:
    """Must start within a second of being enqueued."""
    return "ran"


def typed(count: int, ratio: float = 0.5, name: str = "x", flag: bool = False, items: list = None, extra: dict = None):
    """Echo typed arguments."""
    return {"count": count, "ratio": ratio, "name": name, "flag": flag, "items": items, "extra": extra}


def boom():
    raise RuntimeError("secret internals")


@pytest.fixture(autouse=True, scope="module")
def test_functions():
    """flaky, short_lived, reject and typed as public tasks, and a route that raises, while these tests run."""
    tasks = (
        (flaky, {"public": True, "retries": 2, "retry_delay": 0}),
        (short_lived, {"public": True, "expires": 1}),
        (reject, {"public": True, "retries": 2, "retry_delay": 0}),
        (typed, {"public": True}),
    )
    with registered_tasks(*tasks), registered_route(web.app, "/api/v1/test-only/boom", boom):
        yield


def job_row(job_id):
    return Job.get_by_id(job_id)


# -- Functions ---------------------------------------------------------------------
def test_functions_lists_builtins_with_params(client):
    reply = client.get("/api/v1/functions")
    assert reply.status == 200
    functions = {f["name"]: f for f in reply.json["functions"]}
    assert {"ping", "echo", "sleep", "fail"} <= set(functions)
    sleep = functions["sleep"]
    assert sleep["params"][0] == {"name": "seconds", "type": "float", "required": True, "minimum": 0, "maximum": 60}
    assert sleep["queue"] == "default" and sleep["retries"] == 0 and sleep["doc"]


# -- Invoking ------------------------------------------------------------------------
def test_async_invoke_returns_202_then_succeeds(client, consumer, backend):
    reply = client.post("/api/v1/jobs/ping")
    assert reply.status == 202
    job = reply.json
    assert job["status"] == "queued" and job["url"] == f"/api/v1/jobs/{job['id']}"
    assert reply.headers["Location"] == job["url"]
    done = wait_until(lambda: (j := client.get(job["url"]).json)["status"] == "succeeded" and j)
    assert done["result"] == "pong" and done["attempts"] == 1
    assert done["started_at"] >= done["enqueued_at"] and done["finished_at"] >= done["started_at"]
    assert done["duration_ms"] >= 0 and done["worker"].count(":") >= 2


def test_wait_returns_finished_job_even_when_it_failed(client, consumer):
    reply = client.post("/api/v1/jobs/fail?wait=5", {"message": "boom here"})
    assert reply.status == 200
    job = reply.json
    assert job["status"] == "failed" and job["error"] == "boom here"
    assert "JobError" in job["traceback"] and job["attempts"] == 1


def test_wait_running_out_answers_202(client, consumer):
    reply = client.post("/api/v1/jobs/sleep?wait=0.2", {"seconds": 2})
    assert reply.status == 202
    assert reply.json["status"] in ("queued", "running")


def test_empty_body_counts_as_no_arguments(client, consumer):
    reply = client.request("POST", "/api/v1/jobs/ping?wait=5", body=b"")
    assert reply.status == 200 and reply.json["result"] == "pong"


def test_typed_arguments_accept_int_for_float(client, consumer):
    reply = client.post("/api/v1/jobs/typed?wait=5", {"count": 3, "ratio": 2, "items": [1], "extra": {"a": 1}})
    assert reply.status == 200, reply.body
    assert reply.json["result"] == {
        "count": 3,
        "ratio": 2.0,
        "name": "x",
        "flag": False,
        "items": [1],
        "extra": {"a": 1},
    }


@pytest.mark.parametrize(
    "body, field",
    [
        ({"count": "ten"}, "count"),
        ({"count": True}, "count"),
        ({"count": 1.5}, "count"),
        ({}, "count"),
        ({"count": 1, "nope": 1}, "nope"),
        ({"count": 1, "ratio": "x"}, "ratio"),
        ({"count": 1, "flag": 1}, "flag"),
        ({"count": 1, "items": {}}, "items"),
        ({"count": 1, "extra": []}, "extra"),
        ({"count": 1, "name": 5}, "name"),
    ],
)
def test_bad_arguments_are_422_naming_the_field(client, body, field):
    before = Job.select().count()
    error = assert_error(client.post("/api/v1/jobs/typed", body), 422, "invalid_argument", field)
    assert error["message"].startswith(f"{field}:")
    assert Job.select().count() == before


def test_declared_range_is_checked(client):
    error = assert_error(client.post("/api/v1/jobs/sleep", {"seconds": 61}), 422, "invalid_argument", "seconds")
    assert "60" in error["message"]
    assert_error(client.post("/api/v1/jobs/sleep", {"seconds": -1}), 422, "invalid_argument", "seconds")


def test_int_message_names_value(client):
    error = assert_error(client.post("/api/v1/jobs/typed", {"count": "ten"}), 422, "invalid_argument", "count")
    assert error["message"] == "count: expected int, got 'ten'"


@pytest.mark.parametrize(
    "query, field",
    [("wait=31", "wait"), ("wait=x", "wait"), ("delay=-1", "delay"), ("eta=yesterday", "eta"), ("priority=1.5", "priority")],
)
def test_bad_query_parameters_are_422(client, query, field):
    assert_error(client.post(f"/api/v1/jobs/ping?{query}"), 422, "invalid_argument", field)


def test_delay_schedules_the_job(client, consumer):
    reply = client.post("/api/v1/jobs/ping?delay=1")
    assert reply.status == 202
    job = reply.json
    assert job["status"] == "scheduled" and job["scheduled_for"] > job["enqueued_at"]
    done = wait_until(lambda: (j := client.get(job["url"]).json)["status"] == "succeeded" and j, timeout=10)
    # huey's schedule keeps whole seconds, so a job may start a fraction early.
    started, due = (models.parse_time(done[k]) for k in ("started_at", "scheduled_for"))
    assert started >= due - datetime.timedelta(seconds=1)


def test_eta_without_offset_is_utc(client):
    eta = (models.utcnow() + datetime.timedelta(hours=1)).replace(microsecond=0)
    reply = client.post(f"/api/v1/jobs/ping?eta={eta.isoformat()}")
    assert reply.status == 202
    assert reply.json["scheduled_for"] == eta.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_eta_with_offset_is_converted_to_utc(client):
    reply = client.post("/api/v1/jobs/ping?eta=2099-01-01T10:00:00%2B02:00")
    assert reply.json["scheduled_for"] == "2099-01-01T08:00:00.000Z"


def test_priority_orders_waiting_jobs(client, backend):
    low = client.post("/api/v1/jobs/ping?priority=1").json
    high = client.post("/api/v1/jobs/ping?priority=50").json
    first = jobs.huey.dequeue()
    assert first.id == high["id"], (first.id, low["id"], high["id"])


# -- Idempotency ---------------------------------------------------------------------
def test_idempotency_key_returns_the_first_job(client):
    headers = {"Idempotency-Key": "order-17"}
    first = client.post("/api/v1/jobs/echo", {"value": 1}, headers=headers)
    again = client.post("/api/v1/jobs/echo", {"value": 1}, headers=headers)
    assert first.status == 202 and again.status == 200
    assert again.json["id"] == first.json["id"]
    assert Job.select().where(Job.name == "echo").count() == 1
    assert jobs.huey.pending_count() == 1


def test_idempotency_key_with_other_arguments_is_409(client):
    headers = {"Idempotency-Key": "k1"}
    client.post("/api/v1/jobs/echo", {"value": 1}, headers=headers)
    assert_error(client.post("/api/v1/jobs/echo", {"value": 2}, headers=headers), 409, "conflict")


def test_idempotency_key_is_scoped_to_key_and_function(client, server_url):
    from helpers import Client

    _, other_key = models.ApiKey.create_key("other")
    other = Client(server_url, other_key)
    headers = {"Idempotency-Key": "same"}
    a = client.post("/api/v1/jobs/echo", {"value": 1}, headers=headers).json
    b = other.post("/api/v1/jobs/echo", {"value": 1}, headers=headers).json
    c = client.post("/api/v1/jobs/ping", headers=headers).json
    assert len({a["id"], b["id"], c["id"]}) == 3


# -- Reading -------------------------------------------------------------------------
def test_unknown_job_is_404(client):
    assert_error(client.get("/api/v1/jobs/nope"), 404, "not_found")


def test_list_filters_and_cursor_walk_every_job_once(client):
    ids = []
    for i in range(7):
        ids.append(client.post("/api/v1/jobs/echo", {"value": i}).json["id"])
    client.post("/api/v1/jobs/ping")
    seen, cursor = [], None
    while True:
        query = "/api/v1/jobs?name=echo&status=queued&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(query).json
        assert len(page["jobs"]) <= 3
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    everything = client.get("/api/v1/jobs?limit=200").json
    assert len(everything["jobs"]) == 8 and everything["next"] is None


def test_list_newest_first_ties_broken_by_id(client):
    stamp = models.utcnow()
    for job_id in ("b", "a", "c"):
        Job.create(id=job_id, name="echo", enqueued_at=stamp)
    page = client.get("/api/v1/jobs?limit=2").json
    assert [j["id"] for j in page["jobs"]] == ["c", "b"]
    rest = client.get(f"/api/v1/jobs?limit=2&cursor={page['next']}").json
    assert [j["id"] for j in rest["jobs"]] == ["a"] and rest["next"] is None


@pytest.mark.parametrize(
    "query, field",
    [("status=done", "status"), ("limit=0", "limit"), ("limit=201", "limit"), ("limit=x", "limit"), ("cursor=%%%", "cursor")],
)
def test_list_bad_parameters_are_422(client, query, field):
    assert_error(client.get(f"/api/v1/jobs?{query}"), 422, "invalid_argument", field)


# -- Cancel and retry ------------------------------------------------------------
def test_canceled_scheduled_job_never_runs(client):
    job = client.post("/api/v1/jobs/echo?delay=0.5", {"value": "x"}).json
    canceled = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert canceled.status == 200 and canceled.json["status"] == "canceled"
    running = RunningConsumer()
    try:
        time.sleep(2.5)
    finally:
        running.stop()
    row = job_row(job["id"])
    assert row.status == "canceled" and row.started_at is None and row.attempts == 0


def test_canceled_queued_job_never_runs(client, backend):
    job = client.post("/api/v1/jobs/echo", {"value": "x"}).json
    assert client.post(f"/api/v1/jobs/{job['id']}/cancel").json["status"] == "canceled"
    running = RunningConsumer()
    try:
        wait_until(lambda: jobs.huey.pending_count() == 0, message="queue drained")
        time.sleep(0.2)
    finally:
        running.stop()
    assert job_row(job["id"]).attempts == 0


def test_cancel_running_job_stops_it_at_next_progress(client, consumer):
    job = client.post("/api/v1/jobs/sleep", {"seconds": 5}).json
    wait_until(lambda: job_row(job["id"]).status == "running")
    reply = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert reply.status == 200
    assert reply.json["status"] == "running" and reply.json["cancel_requested"] is True
    row = wait_until(lambda: (r := job_row(job["id"])).status == "canceled" and r, timeout=5)
    assert row.duration_ms < 4000


def test_cancel_terminal_job_is_409(client, consumer):
    job = client.post("/api/v1/jobs/ping?wait=5").json
    assert_error(client.post(f"/api/v1/jobs/{job['id']}/cancel"), 409, "conflict")


def test_retry_makes_a_new_job_with_parent(client, consumer):
    failed = client.post("/api/v1/jobs/fail?wait=5", {"message": "once"}).json
    reply = client.post(f"/api/v1/jobs/{failed['id']}/retry")
    assert reply.status == 202
    new = reply.json
    assert new["parent_id"] == failed["id"] and new["name"] == "fail" and new["args"] == {"message": "once"}
    assert new["id"] != failed["id"] and new["status"] == "queued"


def test_retry_unfinished_job_is_409(client):
    job = client.post("/api/v1/jobs/ping").json
    assert_error(client.post(f"/api/v1/jobs/{job['id']}/retry"), 409, "conflict")


# -- The history follows every state ----------------------------------------------
def test_retrying_then_succeeded(client):
    job = client.post("/api/v1/jobs/flaky", {"key": "r1", "failures": 1}).json
    jobs.huey.execute(jobs.huey.dequeue())
    row = job_row(job["id"])
    assert row.status == "retrying" and "attempt 1 failed" in row.error and row.attempts == 1
    jobs.huey.execute(jobs.huey.dequeue())
    row = job_row(job["id"])
    assert row.status == "succeeded" and json.loads(row.result) == 2 and row.attempts == 2


def test_retries_exhausted_fail(client):
    job = client.post("/api/v1/jobs/flaky", {"key": "r2", "failures": 5}).json
    for _ in range(3):
        jobs.huey.execute(jobs.huey.dequeue())
    row = job_row(job["id"])
    assert row.status == "failed" and row.attempts == 3 and "RuntimeError" in row.error
    assert jobs.huey.dequeue() is None


def test_job_error_fails_at_once_without_retries(client):
    job = client.post("/api/v1/jobs/reject", {"key": "j1"}).json
    jobs.huey.execute(jobs.huey.dequeue())
    row = job_row(job["id"])
    assert row.status == "failed" and row.error == "bad input j1" and row.attempts == 1
    assert _attempts["j1"] == 1 and jobs.huey.dequeue() is None and jobs.huey.scheduled_count() == 0


def test_workers_dead_over_a_day_are_not_listed_but_their_jobs_keep_the_name(client):
    now = models.utcnow()
    hour = datetime.timedelta(hours=1)
    for name, seen in (("alive", now), ("dead-2h", now - 2 * hour), ("dead-2d", now - 48 * hour)):
        models.Worker.create(id=name, host="h", pid=1, kind="thread", concurrency=1, started_at=seen, last_heartbeat=seen)
    old = Job.record(id="old-job", name="echo", status="succeeded", consumer_id="dead-2d", worker="h:1:Worker-1")
    listed = {w["id"]: w["alive"] for w in client.get("/api/v1/workers").json["workers"]}
    assert listed == {"alive": True, "dead-2h": False}
    job = client.get(f"/api/v1/jobs/{old.id}").json
    assert job["status"] == "succeeded" and job["worker"] == "h:1:Worker-1"


def test_expired_job_never_runs(client):
    job = client.post("/api/v1/jobs/short_lived").json
    time.sleep(1.2)
    jobs.huey.execute(jobs.huey.dequeue())
    row = job_row(job["id"])
    assert row.status == "expired" and row.started_at is None


def test_progress_is_recorded(client, consumer):
    job = client.post("/api/v1/jobs/sleep?wait=10", {"seconds": 0.5}).json
    assert job["progress"] == {"done": 10, "total": 10, "message": "done"}


def test_task_called_from_python_is_recorded():
    jobs.echo("direct")
    task = jobs.huey.dequeue()
    assert job_row(task.id).status == "queued"
    jobs.huey.execute(task)
    row = job_row(task.id)
    assert row.status == "succeeded" and json.loads(row.result) == "direct"


# -- Errors ----------------------------------------------------------------------
def test_unknown_function_is_404(client):
    assert_error(client.post("/api/v1/jobs/nosuch"), 404, "not_found")


def test_unknown_api_path_is_json_404(client):
    assert_error(client.get("/api/v1/nothing/here"), 404, "not_found")


def test_wrong_method_is_405_with_allow(client):
    reply = client.delete("/api/v1/jobs")
    assert_error(reply, 405, "method_not_allowed")
    assert "GET" in reply.headers["Allow"]


@pytest.mark.parametrize("body", [b"[1, 2]", b"{not json", b'"text"', b"\xff\xfe{}", b"null"])
def test_body_that_is_not_a_json_object_is_400(client, body):
    reply = client.request("POST", "/api/v1/jobs/ping", body=body, headers={"Content-Type": "application/json"})
    assert_error(reply, 400, "bad_json")


def test_body_over_limit_is_413(client):
    body = json.dumps({"value": "x" * (1024 * 1024 + 10)}).encode()
    assert_error(client.request("POST", "/api/v1/jobs/echo", body=body), 413, "too_large")
    assert Job.select().count() == 0


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"X-API-Key": "nope"}, {"Authorization": "Basic x"}])
def test_missing_or_wrong_key_is_401(anonymous, headers):
    assert_error(anonymous.get("/api/v1/jobs", headers=headers), 401, "unauthorized")


def test_x_api_key_header_is_accepted(anonymous, api_key):
    assert anonymous.get("/api/v1/functions", headers={"X-API-Key": api_key}).status == 200


def test_key_use_is_recorded(client, api_key):
    client.get("/api/v1/functions")
    # Calls are counted in memory and written about once a second.
    row = wait_until(lambda: (r := models.ApiKey.authenticate(api_key)).calls_today and r, 5, message="calls written")
    assert row.calls_today == 1 and row.last_used_at is not None


def test_call_counts_of_two_processes_add_up():
    key, _ = models.ApiKey.create_key("shared")
    first, second = models.CallCounter(), models.CallCounter()
    earlier, later = datetime.datetime(2026, 11, 23, 9, 0), datetime.datetime(2026, 11, 23, 9, 5)
    for _ in range(3):
        first.count(key.id, now=later)
    second.count(key.id, now=earlier)
    assert first.flush() == 1 and second.flush() == 1
    second.count(key.id, now=earlier)
    assert second.flush() == 1
    assert first.flush() == 0  # nothing new
    row = models.ApiKey.get_by_id(key.id)
    # Added up, and last_used_at never moves back when an older count is written last.
    assert (row.calls_today, row.last_used_at) == (5, later)


def test_reset_daily_calls_keeps_calls_counted_after_it():
    key, _ = models.ApiKey.create_key("busy")
    counter = models.CallCounter()
    counter.count(key.id)
    counter.flush()
    assert models.ApiKey.reset_daily_calls() == 1
    counter.count(key.id)
    counter.flush()
    assert models.ApiKey.get_by_id(key.id).calls_today == 1


def test_call_counts_wait_while_the_database_is_down(tmp_path):
    key, _ = models.ApiKey.create_key("patient")
    counter = models.CallCounter()
    counter.count(key.id)
    models.db.execute_sql('ALTER TABLE "apikey" RENAME TO "apikey_away"')
    with pytest.raises(Exception):
        counter.flush()
    models.db.execute_sql('ALTER TABLE "apikey_away" RENAME TO "apikey"')
    counter.count(key.id)
    assert counter.flush() == 1
    assert models.ApiKey.get_by_id(key.id).calls_today == 2


def test_bug_is_500_with_request_id_and_no_traceback(client):
    reply = client.get("/api/v1/test-only/boom")
    error = assert_error(reply, 500, "internal")
    assert reply.headers["X-Request-Id"] in error["message"]
    assert "secret internals" not in reply.text


def test_queue_unreachable_is_503_and_nothing_written(client):
    jobs.use_queue("redis://127.0.0.1:1/0")
    error = assert_error(client.post("/api/v1/jobs/ping"), 503, "unavailable")
    assert "queue" in error["message"]
    assert Job.select().count() == 0


def test_health_live_and_ready(anonymous, consumer):
    assert anonymous.get("/health/live").json == {"status": "ok"}
    ready = anonymous.get("/health/ready")
    assert ready.status == 200 and ready.json["status"] == "ok"
    assert set(ready.json["checks"]) == {"database", "queue", "disk", "consumer", "apps", "queues"}


def test_ready_is_degraded_without_consumer(anonymous):
    ready = anonymous.get("/health/ready")
    assert ready.status == 200 and ready.json["status"] == "degraded"
    assert "heartbeat" in ready.json["checks"]["consumer"]["error"]


def test_ready_is_down_when_queue_unreachable(anonymous):
    jobs.use_queue("redis://127.0.0.1:1/0")
    ready = anonymous.get("/health/ready")
    assert ready.status == 503 and ready.json["status"] == "down"
    assert ready.json["checks"]["queue"]["status"] == "down" and ready.json["checks"]["queue"]["error"]


def test_revoked_key_is_refused_once_the_auth_cache_expires(client, api_key, monkeypatch):
    monkeypatch.setattr(api, "AUTH_CACHE_SECONDS", 0.2)
    assert client.get("/api/v1/functions").status == 200
    models.ApiKey.update(revoked=True).execute()
    time.sleep(0.3)
    assert_error(client.get("/api/v1/functions"), 401, "unauthorized")


def test_huey_revoke_cancels_through_the_history(consumer):
    waiting = jobs.submit("sleep", {"seconds": 5}, delay=60)[0]
    jobs.huey.revoke_by_id(waiting.id)
    assert Job.get_by_id(waiting.id).status == "canceled"
    running = jobs.submit("sleep", {"seconds": 10})[0]
    wait_until(lambda: Job.get_by_id(running.id).status == "running")
    jobs.huey.revoke_by_id(running.id)  # the seed clients' revoke(task_id, terminate=True)
    assert wait_until(lambda: Job.get_by_id(running.id).is_terminal and Job.get_by_id(running.id)).status == "canceled"
