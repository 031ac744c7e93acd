"""Operations: rate limits, security headers, trusted hosts and CORS, /metrics,
the OpenAPI document, deploy files (systemd, Prometheus), backups, job logs,
and the Windows path without POSIX-only calls."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from helpers import (
    REDIS_URL,
    REQUIRE_SERVICES,
    Client,
    Litejobs,
    assert_error,
    cli_env,
    free_port,
    registered_route,
    service_or_skip,
    wait_until,
)
from openapi_spec_validator import validate as validate_openapi
from prometheus_client.parser import text_string_to_metric_families

import api
import jobs
import loader
import limits
import models
import openapi
import settings
import web
from apps.orders import models as orders
from models import Job, JobCount, JobDuration, utcnow

ROOT = Path(__file__).resolve().parent.parent
NONPOSIX = ROOT / "tests" / "nonposix"


@pytest.fixture
def limiter(monkeypatch):
    """A fresh in-memory limiter for the app, so counts never leak between tests."""
    fresh = limits.Limiter(None)
    monkeypatch.setattr(api, "limiter", fresh)
    return fresh


def metric_samples(text):
    """{(name, frozenset(labels)): value} from a Prometheus text exposition."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


# -- Rate limits ---------------------------------------------------------------------
def test_defaults_leave_room_for_a_thousand_requests_a_second():
    assert settings.RATE_LIMIT_PER_KEY >= 60_000 and settings.RATE_LIMIT_PER_IP >= 60_000


def test_key_over_its_limit_gets_429_with_retry_after(client, server_url, limiter, monkeypatch):
    monkeypatch.setattr(settings, "RATE_LIMIT_PER_KEY", 3)
    for _ in range(3):
        assert client.get("/api/v1/functions").status == 200
    reply = client.get("/api/v1/functions")
    assert_error(reply, 429, "rate_limited")
    assert 1 <= int(reply.headers["Retry-After"]) <= 60
    # The limit is per key: another key still gets through.
    _, other = models.ApiKey.create_key("other")
    assert Client(server_url, other).get("/api/v1/functions").status == 200


def test_client_address_over_its_limit_gets_429_even_without_a_key(anonymous, client, limiter, monkeypatch):
    monkeypatch.setattr(settings, "RATE_LIMIT_PER_IP", 2)
    first = {"X-Forwarded-For": "203.0.113.7"}
    assert_error(anonymous.get("/api/v1/functions", headers=first), 401, "unauthorized")
    assert client.get("/api/v1/functions", headers=first).status == 200
    assert_error(client.get("/api/v1/functions", headers=first), 429, "rate_limited")
    # The test server is on 127.0.0.1, a trusted proxy: the forwarded address is the client.
    assert client.get("/api/v1/functions", headers={"X-Forwarded-For": "203.0.113.8"}).status == 200


def test_forwarded_for_from_an_untrusted_peer_is_ignored(client, limiter, monkeypatch):
    monkeypatch.setattr(settings, "RATE_LIMIT_PER_IP", 2)
    monkeypatch.setattr(settings, "TRUSTED_PROXIES", [])
    for address in ("203.0.113.1", "203.0.113.2"):
        assert client.get("/api/v1/functions", headers={"X-Forwarded-For": address}).status == 200
    assert_error(client.get("/api/v1/functions", headers={"X-Forwarded-For": "203.0.113.3"}), 429, "rate_limited")


def test_health_and_metrics_are_never_rate_limited(anonymous, limiter, monkeypatch):
    monkeypatch.setattr(settings, "RATE_LIMIT_PER_IP", 1)
    for _ in range(3):
        assert anonymous.get("/health/live").status == 200
        assert anonymous.get("/metrics").status == 200


def test_limiter_windows_are_one_minute_and_retry_after_counts_down():
    limiter = limits.Limiter(None)
    start = 6000.0  # the start of a window
    assert [limiter.hit("key", 1, 2, now=start + t) for t in (0, 1, 2)] == [0, 0, 58]
    assert limiter.hit("key", 1, 2, now=start + 59.5) == 1
    assert limiter.hit("key", 1, 2, now=start + 60) == 0  # a new window
    assert limiter.hit("key", 1, 0, now=start + 60) == 0  # 0 = no limit


@pytest.fixture
def redis_limiter(monkeypatch):
    """The app's limiter on the real Redis, its keys removed before and after."""
    import redis

    def clean():
        connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        keys = connection.keys(f"{settings.QUEUE_NAME}:ratelimit:*")
        if keys:
            connection.delete(*keys)
        return connection

    service_or_skip("Redis", clean)
    limiter = limits.Limiter(REDIS_URL)
    monkeypatch.setattr(api, "limiter", limiter)
    yield limiter
    clean()


def test_redis_limiter_is_shared_by_every_web_process(client, redis_limiter, monkeypatch):
    monkeypatch.setattr(settings, "RATE_LIMIT_PER_KEY", 3)
    assert client.get("/api/v1/functions").status == 200
    # Another web process (another Limiter on the same Redis) has counted two more.
    other = limits.Limiter(REDIS_URL)
    key_id = models.ApiKey.select().order_by(models.ApiKey.id.desc()).get().id
    assert other.hit("key", key_id, 3) == 0 and other.hit("key", key_id, 3) == 0
    reply = client.get("/api/v1/functions")
    assert_error(reply, 429, "rate_limited")
    assert int(reply.headers["Retry-After"]) >= 1
    assert redis_limiter.store == "redis"
    assert redis_limiter.redis.client.keys(f"{settings.QUEUE_NAME}:ratelimit:key:{key_id}:*")


def test_redis_down_falls_back_to_memory_and_requests_go_on(client, monkeypatch, caplog):
    closed = free_port()  # nothing listens there
    limiter = limits.Limiter(f"redis://127.0.0.1:{closed}/0")
    monkeypatch.setattr(api, "limiter", limiter)
    monkeypatch.setattr(settings, "RATE_LIMIT_PER_KEY", 3)
    caplog.set_level(logging.WARNING, logger="litejobs.limits")
    started = time.monotonic()
    assert [client.get("/api/v1/functions").status for _ in range(3)] == [200, 200, 200]
    assert time.monotonic() - started < 5
    assert limiter.store == "memory"
    assert any("Redis failed" in record.getMessage() for record in caplog.records)
    # Still limited, in memory.
    assert_error(client.get("/api/v1/functions"), 429, "rate_limited")


# -- Security headers, trusted hosts, CORS ------------------------------------------
SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options")


def _boom():
    raise RuntimeError("a bug")


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("GET", "/api/v1/functions", 200),
        ("GET", "/api/v1/jobs", 401),
        ("GET", "/api/v1/jobs/missing", 404),
        ("DELETE", "/api/v1/functions", 405),
        ("GET", "/health/live", 200),
        ("GET", "/metrics", 200),
        ("GET", "/api/v1/openapi.json", 200),
        ("GET", "/login", 200),
        ("GET", "/no/such/page", 404),
        ("GET", "/_tests/boom", 500),
    ],
)
def test_every_answer_carries_the_security_headers(server_url, api_key, method, path, status):
    client = Client(server_url, None if status == 401 else api_key)
    with registered_route(web.app, "/_tests/boom", _boom):  # a real unhandled exception, for the 500
        reply = client.request(method, path)
    assert reply.status == status, reply.body[:300]
    for name in SECURITY_HEADERS:
        assert reply.headers.get(name), (name, reply.headers)
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]


def test_http_requests_are_counted_by_route_method_and_status(client):
    client.get("/api/v1/jobs/missing")
    client.get("/no/such/page")
    samples = metric_samples(client.get("/metrics").text)
    route = sample(samples, "litejobs_http_requests_total", route="/api/v1/jobs/<job_id>", method="GET", status="404")
    assert route and route >= 1
    assert sample(samples, "litejobs_http_requests_total", route="(unmatched)", method="GET", status="404") >= 1


def test_trusted_hosts_refuse_other_host_names(client, monkeypatch):
    monkeypatch.setattr(settings, "TRUSTED_HOSTS", ["jobs.example.com", "*.example.org"])
    assert_error(client.get("/api/v1/functions"), 400, "bad_host")  # Host: 127.0.0.1:port
    assert client.get("/api/v1/functions", headers={"Host": "jobs.example.com"}).status == 200
    assert client.get("/api/v1/functions", headers={"Host": "a.example.org:8443"}).status == 200
    assert_error(client.get("/api/v1/functions", headers={"Host": "example.org"}), 400, "bad_host")
    page = client.get("/login", headers={"Host": "evil.example.net"})
    assert page.status == 400 and page.headers["Content-Type"].startswith("text/html")
    # Health checks and scrapes come by address and stay open.
    assert client.get("/health/live").status == 200 and client.get("/metrics").status == 200


def test_cors_preflight_and_allowed_origin(client, monkeypatch):
    monkeypatch.setattr(settings, "CORS_ORIGINS", ["https://app.example.com"])
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    reply = client.request("OPTIONS", "/api/v1/jobs/echo", headers=preflight)
    assert reply.status == 204
    assert reply.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Authorization" in reply.headers["Access-Control-Allow-Headers"]
    assert "X-API-Key" in reply.headers["Access-Control-Allow-Headers"]
    assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    refused = client.request("OPTIONS", "/api/v1/jobs/echo", headers={**preflight, "Origin": "https://evil.example"})
    assert_error(refused, 403, "forbidden")
    allowed = client.get("/api/v1/functions", headers={"Origin": "https://app.example.com"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "Origin" in allowed.headers["Vary"]
    other = client.get("/api/v1/functions", headers={"Origin": "https://evil.example"})
    assert other.status == 200 and "Access-Control-Allow-Origin" not in other.headers


def test_without_cors_origins_no_origin_is_allowed(client):
    reply = client.get("/api/v1/functions", headers={"Origin": "https://app.example.com"})
    assert "Access-Control-Allow-Origin" not in reply.headers
    # A plain OPTIONS (no Origin) is no preflight: the API's 405.
    assert_error(client.request("OPTIONS", "/api/v1/functions"), 405, "method_not_allowed")


# -- Metrics -------------------------------------------------------------------------
def test_metrics_show_jobs_queues_schedules_and_workers(client, anonymous, consumer):
    assert client.post("/api/v1/jobs/echo?wait=10", {"value": 1}).json["status"] == "succeeded"
    assert client.post("/api/v1/jobs/echo?wait=10", {"value": 2}).json["status"] == "succeeded"
    assert client.post("/api/v1/jobs/fail?wait=10", {"message": "no"}).json["status"] == "failed"
    assert client.post("/api/v1/jobs/ping?delay=600").json["status"] == "scheduled"
    reply = anonymous.get("/metrics")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = metric_samples(reply.text)
    assert sample(samples, "litejobs_jobs_total", function="echo", status="enqueued") == 2
    assert sample(samples, "litejobs_jobs_total", function="echo", status="succeeded") == 2
    assert sample(samples, "litejobs_jobs_total", function="fail", status="failed") == 1
    assert sample(samples, "litejobs_jobs_total", function="ping", status="enqueued") == 1
    assert sample(samples, "litejobs_job_duration_seconds_count", function="echo") == 2
    assert sample(samples, "litejobs_job_duration_seconds_bucket", function="echo", le="+Inf") == 2
    assert sample(samples, "litejobs_job_duration_seconds_sum", function="echo") > 0
    assert sample(samples, "litejobs_scheduled_jobs") == 1
    assert sample(samples, "litejobs_workers_alive") == 1
    for queue in settings.QUEUE_PRIORITIES:
        assert sample(samples, "litejobs_queue_depth", queue=queue) == 0
        assert sample(samples, "litejobs_queue_oldest_seconds", queue=queue) == 0
    assert sample(samples, "litejobs_orders_past_deadline") == 0
    assert sample(samples, "litejobs_database_up") == 1
    assert (
        sample(samples, "litejobs_http_requests_total", route="/api/v1/jobs/<name>", method="POST", status="200") >= 3
    )
    promtool = shutil.which("promtool")
    if promtool:
        lint = subprocess.run(
            [promtool, "check", "metrics"], input=reply.text, capture_output=True, text=True, timeout=30
        )
        assert lint.returncode == 0, lint.stdout + lint.stderr


def test_queue_depth_and_oldest_wait_without_a_consumer(client, anonymous):
    for value in range(3):
        assert client.post("/api/v1/jobs/echo", {"value": value}).status == 202
    time.sleep(0.05)
    samples = metric_samples(anonymous.get("/metrics").text)
    assert sample(samples, "litejobs_queue_depth", queue="default") == 3
    assert sample(samples, "litejobs_queue_oldest_seconds", queue="default") > 0
    assert sample(samples, "litejobs_workers_alive") == 0


def test_order_past_its_deadline_shows_in_metrics(anonymous):
    old = utcnow() - __import__("datetime").timedelta(hours=settings.ORDER_DEADLINE_HOURS + 1)
    orders.Order.create(product_id="p", package_id="k", user_identifier="u", created_at=old, next_check_at=old)
    orders.Order.create(product_id="p", package_id="k", user_identifier="u")
    samples = metric_samples(anonymous.get("/metrics").text)
    assert sample(samples, "litejobs_orders_past_deadline") == 1
    assert sample(samples, "litejobs_orders_pending") == 2


def test_job_counts_come_from_database_triggers_and_survive_pruning():
    started = utcnow()
    for job_id in ("a", "b", "c", "d"):
        Job.create(id=job_id, name="work")
    for job_id in ("a", "b", "c"):
        Job.mark_running(job_id, "w", "consumer-1")
    Job.mark_finished("a", "succeeded", started_at=started)
    Job.mark_finished("a", "failed")  # already terminal: no change, no count
    Job.mark_retrying("b", "boom", "trace")
    # The reaper's own update, outside mark_finished, counts too.
    Job.update(status="failed", finished_at=utcnow()).where(Job.id == "c").execute()
    Job.update(status="queued", recoveries=Job.recoveries + 1).where(Job.id == "b").execute()
    Job.mark_finished("d", "canceled")
    Job.delete().execute()  # pruning the history leaves the counters alone
    counts = {(row.function, row.status): row.count for row in JobCount.select()}
    assert counts == {
        ("work", "enqueued"): 4,
        ("work", "succeeded"): 1,
        ("work", "failed"): 1,
        ("work", "retried"): 1,
        ("work", "recovered"): 1,
        ("work", "canceled"): 1,
    }
    buckets, total = JobDuration.histograms()["work"]
    assert buckets[-1] == ("+Inf", 1) and total >= 0  # only the job that ran and has a duration


def test_job_count_triggers_work_on_postgresql(postgres_database):
    started = utcnow()
    Job.create(id="p1", name="work")
    Job.mark_running("p1", "w", "consumer-1")
    Job.mark_finished("p1", "succeeded", started_at=started)
    models.create_tables()  # a second start changes nothing
    Job.create(id="p2", name="work")
    counts = {(row.function, row.status): row.count for row in JobCount.select()}
    assert counts == {("work", "enqueued"): 2, ("work", "succeeded"): 1}
    assert JobDuration.histograms()["work"][0][-1] == ("+Inf", 1)


def test_metrics_token_is_required_when_set(anonymous, monkeypatch):
    monkeypatch.setattr(settings, "METRICS_TOKEN", "s3cret-token")
    assert_error(anonymous.get("/metrics"), 401, "unauthorized")
    assert_error(anonymous.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    assert anonymous.get("/metrics", headers={"Authorization": "Bearer s3cret-token"}).status == 200


def test_metrics_still_answer_when_the_database_is_unreachable(anonymous, tmp_path):
    working = models.db.obj
    models.db.initialize(models.SqliteDatabase(str(tmp_path / "missing-folder" / "app.db")))
    try:
        reply = anonymous.get("/metrics")
    finally:
        models.db.initialize(working)
    assert reply.status == 200
    samples = metric_samples(reply.text)
    assert sample(samples, "litejobs_database_up") == 0
    assert "litejobs_http_requests_total" in reply.text


# -- OpenAPI -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def document():
    return openapi.document(loader.loaded_apps())


def template_of(rule):
    """`/api/v1/jobs/<job_id>` and `/api/v1/jobs/{id}` both become `/api/v1/jobs/{}`."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", rule)


def test_openapi_document_is_served_without_a_key_and_valid(anonymous):
    reply = anonymous.get("/api/v1/openapi.json")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("application/json")
    spec = reply.json
    validate_openapi(spec)
    assert spec["openapi"].startswith("3.")
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert "error" in spec["components"]["schemas"]["Error"]["properties"]


def test_every_api_route_of_the_app_is_documented(document):
    documented = {
        (template_of(path), method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    routes = {
        (template_of(route.rule), route.method)
        for route in web.app.routes
        if (route.rule.startswith(("/api/", "/health/")) or route.rule == "/metrics")
        # Routes that tests register to provoke errors are not part of the API.
        and not route.callback.__module__.startswith(("test_", "conftest"))
    }
    assert routes, "no API routes found"
    missing = sorted(routes - documented)
    assert not missing, f"routes missing from openapi.py: {missing}"


def test_every_endpoint_of_the_contract_is_documented(document):
    contract = Path(os.environ.get("LITEJOBS_SHARED", ROOT.parent / "shared")) / "API.md"
    if not contract.exists():
        pytest.skip("shared/API.md not beside the project")
    endpoints = set(re.findall(r"`(GET|POST|DELETE) (/(?:api|health|metrics)[^\s`?]*)", contract.read_text()))
    documented = {
        (template_of(path), method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    missing = sorted((m, p) for m, p in endpoints if (template_of(p), m) not in documented)
    assert not missing, f"API.md endpoints missing from openapi.py: {missing}"


def test_job_call_and_job_read_share_one_path_template(document):
    item = document["paths"]["/api/v1/jobs/{id}"]
    assert {"get", "post"} <= set(item)
    assert "function" in item["parameters"][0]["description"]
    assert not any(path.startswith("/api/v1/jobs/{name}") for path in document["paths"])


def _schema_for(document, path, method, status):
    answers = document["paths"][path][method]["responses"]
    answer = answers.get(str(status)) or answers["default"]
    if "$ref" in answer:
        answer = document["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    return answer


def assert_documented(document, path, method, reply):
    """The reply's status is documented for the operation and its body fits the schema."""
    answer = _schema_for(document, path, method, reply.status)
    content = answer.get("content")
    if content is None:
        assert not reply.body, (path, method, reply.status, reply.body[:200])
        return
    media_type = next(iter(content))
    assert reply.headers["Content-Type"].startswith(media_type), (path, reply.headers)
    if media_type == "application/json":
        schema = {**content[media_type]["schema"], "components": document["components"]}
        try:
            jsonschema.Draft202012Validator(schema).validate(reply.json)
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"{method.upper()} {path} {reply.status}: {exc.message} at {list(exc.path)}") from None


def test_answers_of_the_app_match_the_document(client, anonymous, consumer, document, limiter, monkeypatch):
    check = lambda path, method, reply: assert_documented(document, path, method, reply)  # noqa: E731
    check("/api/v1/functions", "get", client.get("/api/v1/functions"))
    check("/api/v1/jobs", "get", anonymous.get("/api/v1/jobs"))
    check("/api/v1/jobs", "get", client.get("/api/v1/jobs?status=nope"))
    done = client.post("/api/v1/jobs/echo?wait=10", {"value": {"a": [1, None]}})
    check("/api/v1/jobs/{id}", "post", done)
    check("/api/v1/jobs/{id}", "post", client.post("/api/v1/jobs/sleep", {"seconds": 0.1}))
    check("/api/v1/jobs/{id}", "post", client.post("/api/v1/jobs/echo", body=b"[1]"))
    check("/api/v1/jobs/{id}", "post", client.post("/api/v1/jobs/sleep", {"seconds": "x"}))
    check("/api/v1/jobs/{id}", "post", client.post("/api/v1/jobs/nope", {}))
    check("/api/v1/jobs/{id}", "get", client.get(f"/api/v1/jobs/{done.json['id']}"))
    check("/api/v1/jobs/{id}", "get", client.get("/api/v1/jobs/missing"))
    check("/api/v1/jobs/{id}/cancel", "post", client.post(f"/api/v1/jobs/{done.json['id']}/cancel"))
    check("/api/v1/jobs/{id}/retry", "post", client.post(f"/api/v1/jobs/{done.json['id']}/retry"))
    check("/api/v1/jobs", "get", client.get("/api/v1/jobs?limit=1"))
    check("/api/v1/workers", "get", client.get("/api/v1/workers"))
    check("/api/v1/queues", "get", client.get("/api/v1/queues"))
    check("/health/live", "get", anonymous.get("/health/live"))
    check("/health/ready", "get", anonymous.get("/health/ready"))
    check("/metrics", "get", anonymous.get("/metrics"))
    check("/api/v1/openapi.json", "get", anonymous.get("/api/v1/openapi.json"))

    order = client.post("/api/v1/orders", {"product_id": "p1", "package_id": "k1", "user_identifier": "u1"})
    check("/api/v1/orders", "post", order)
    check("/api/v1/orders", "post", client.post("/api/v1/orders", {}))
    check("/api/v1/orders", "get", client.get("/api/v1/orders"))
    check("/api/v1/orders/{id}", "get", client.get(f"/api/v1/orders/{order.json['id']}"))
    check("/api/v1/orders/{id}", "get", client.get("/api/v1/orders/missing"))
    monkeypatch.setattr(settings, "WEBHOOK_ALLOW_PRIVATE", True)
    hook = client.post("/api/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]})
    check("/api/v1/webhooks", "post", hook)
    check("/api/v1/webhooks", "get", client.get("/api/v1/webhooks"))
    check("/api/v1/webhooks/{id}", "get", client.get(f"/api/v1/webhooks/{hook.json['id']}"))
    check("/api/v1/webhooks/{id}/deliveries", "get", client.get(f"/api/v1/webhooks/{hook.json['id']}/deliveries"))
    check("/api/v1/webhooks/{id}", "delete", client.delete(f"/api/v1/webhooks/{hook.json['id']}"))
    check("/api/v1/webhooks/{id}", "get", client.get("/api/v1/webhooks/999999"))
    course = client.post("/api/v1/courses", {"title": "Python", "lessons": ["one", "two"]})
    check("/api/v1/courses", "post", course)
    check("/api/v1/courses/{id}", "get", client.get(f"/api/v1/courses/{course.json['id']}"))
    user = models.User.create(email="learner@example.com", name="Learner")
    enrollment = client.post("/api/v1/enrollments", {"user_id": str(user.id), "course_id": course.json["id"]})
    check("/api/v1/enrollments", "post", enrollment)
    check("/api/v1/enrollments/{id}", "get", client.get(f"/api/v1/enrollments/{enrollment.json['id']}"))
    lesson = course.json["lessons"][0]["id"]
    complete = client.post(f"/api/v1/enrollments/{enrollment.json['id']}/lessons/{lesson}/complete")
    check("/api/v1/enrollments/{id}/lessons/{lesson_id}/complete", "post", complete)
    check("/api/v1/certificates/{code}", "get", client.get("/api/v1/certificates/NOPE-1234"))

    user = client.post("/api/v1/users", {"email": "new@example.com", "name": "New"})
    check("/api/v1/users", "post", user)
    check("/api/v1/users", "post", client.post("/api/v1/users", {"email": "new@example.com", "name": "New"}))
    post = client.post("/api/v1/posts", {"author_id": user.json["id"], "body": "hi #x"})
    check("/api/v1/posts", "post", post)
    check("/api/v1/posts/{id}", "get", client.get(f"/api/v1/posts/{post.json['id']}"))
    check("/api/v1/posts/{id}", "get", client.get("/api/v1/posts/999999"))
    check("/api/v1/analytics/trending", "get", client.get("/api/v1/analytics/trending"))
    check("/api/v1/analytics/daily", "get", client.get("/api/v1/analytics/daily?days=3"))
    check("/api/v1/analytics/daily", "get", client.get("/api/v1/analytics/daily?days=x"))
    schedules = client.get("/api/v1/schedules")
    check("/api/v1/schedules", "get", schedules)
    name = schedules.json["schedules"][0]["name"]
    check("/api/v1/schedules/{name}/pause", "post", client.post(f"/api/v1/schedules/{name}/pause"))
    check("/api/v1/schedules/{name}/resume", "post", client.post(f"/api/v1/schedules/{name}/resume"))
    check("/api/v1/schedules/{name}/run", "post", client.post("/api/v1/schedules/no_such_schedule/run"))

    monkeypatch.setattr(settings, "RATE_LIMIT_PER_KEY", 1)
    client.get("/api/v1/workers")
    limited = client.get("/api/v1/workers")
    assert limited.status == 429
    check("/api/v1/workers", "get", limited)


# -- Deploy files --------------------------------------------------------------------
def _tool_or_skip(name):
    path = shutil.which(name)
    if path is None:
        if REQUIRE_SERVICES:
            pytest.fail(f"{name} is required (LITEJOBS_REQUIRE_SERVICES=1); .ci/run installs it")
        pytest.skip(f"{name} is not installed")
    return path


def unit_settings(name):
    text = (ROOT / "deploy" / name).read_text()
    return dict(re.findall(r"^(\w+)=(.*)$", text, re.M)), text


@pytest.mark.parametrize("name", ["litejobs-web.service", "litejobs-consumer.service"])
def test_systemd_units_are_safe_and_stop_gracefully(name):
    values, text = unit_settings(name)
    assert values["User"] not in ("root", "0") and values["EnvironmentFile"]
    assert values["Restart"] == "always"
    assert values["KillSignal"] in ("SIGINT", "SIGTERM")
    assert float(values["TimeoutStopSec"]) > settings.SHUTDOWN_TIMEOUT
    assert values["NoNewPrivileges"] == "yes" and values["ProtectSystem"] == "strict"
    assert "/var/lib/litejobs" in values["ReadWritePaths"]
    if "consumer" in name:
        assert values["ExecStart"].split()[:2] == ["/opt/litejobs/.venv/bin/huey_consumer", "jobs.huey"]
    else:
        assert "web.py run --no-consumer" in values["ExecStart"]


def test_systemd_units_verify(tmp_path):
    analyze = _tool_or_skip("systemd-analyze")
    units = []
    for name in ("litejobs-web.service", "litejobs-consumer.service", "litejobs-backup.service", "litejobs-backup.timer"):
        # Point the units at this checkout, whose .venv holds the programs they start.
        text = (ROOT / "deploy" / name).read_text().replace("/opt/litejobs", str(ROOT))
        (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))
    assert (ROOT / ".venv" / "bin" / "huey_consumer").exists() or pytest.skip("no .venv/bin/huey_consumer")
    result = subprocess.run([analyze, "verify", "--man=no", *units], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), (
        result.stdout + result.stderr
    )


def test_alert_rules_pass_promtool():
    promtool = _tool_or_skip("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(ROOT / "deploy" / "prometheus-alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


ALERT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'litejobs_workers_alive{{instance="a"}}'
        values: '1 1 0 0 0 0 0'
      - series: 'litejobs_queue_oldest_seconds{{instance="a",queue="media"}}'
        values: '0 700 760 820 880 940 1000 1060'
      - series: 'litejobs_queue_oldest_seconds{{instance="a",queue="emails"}}'
        values: '0 0 0 0 0 0 0 0'
      - series: 'litejobs_queue_depth{{instance="a",queue="sync"}}'
        values: '0 3 3 3 3 3 3 3 3'
      - series: 'litejobs_queue_served{{instance="a",queue="sync"}}'
        values: '0 0 0 0 0 0 0 0 0'
      - series: 'litejobs_queue_depth{{instance="a",queue="media"}}'
        values: '0 5 5 5 5 5 5 5 5'
      - series: 'litejobs_queue_served{{instance="a",queue="media"}}'
        values: '1 1 1 1 1 1 1 1 1'
      - series: 'litejobs_jobs_total{{instance="a",function="f",status="succeeded"}}'
        values: '0+8x40'
      - series: 'litejobs_jobs_total{{instance="a",function="f",status="failed"}}'
        values: '0+2x40'
      - series: 'litejobs_orders_past_deadline{{instance="a"}}'
        values: '0 1 1 1 1 1 1 1 1 1 1 1 1 1'
      - series: 'litejobs_database_up{{instance="a"}}'
        values: '1 1 1 1 1 1 1 1'
      - series: 'up{{job="litejobs",instance="a"}}'
        values: '1 1 1 1 1 1 1 1'
      - series: 'litejobs_last_backup_timestamp_seconds{{instance="a"}}'
        values: '0x200'
    alert_rule_test:
      - eval_time: 5m
        alertname: LitejobsNoConsumer
        exp_alerts:
          - exp_labels: {{severity: critical}}
            exp_annotations:
              summary: 'No litejobs consumer has sent a heartbeat within HEARTBEAT_TIMEOUT'
              description: 'Jobs are queued but nothing runs them. Check `systemctl status litejobs-consumer` and its journal.'
      - eval_time: 7m
        alertname: LitejobsQueueStuck
        exp_alerts:
          - exp_labels: {{severity: warning, queue: media}}
            exp_annotations:
              summary: 'Queue media: the oldest waiting job has waited 17m 40s'
              description: 'Consumers are too few, stuck, or held by a concurrency limit. See /api/v1/queues and /workers.'
      - eval_time: 5m
        alertname: LitejobsQueueUnserved
        exp_alerts: []
      - eval_time: 6m
        alertname: LitejobsQueueUnserved
        exp_alerts:
          - exp_labels: {{severity: warning, queue: sync}}
            exp_annotations:
              summary: 'Queue sync: 3 jobs wait and no live consumer serves it'
              description: 'Start a consumer with QUEUES naming it (or QUEUES empty: every queue). See /api/v1/queues and /workers.'
      - eval_time: 35m
        alertname: LitejobsHighFailureRatio
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: '20% of litejobs jobs failed over the last 15 minutes'
              description: 'See the failures on the dashboard or GET /api/v1/jobs?status=failed.'
      - eval_time: 12m
        alertname: LitejobsOrderPastDeadline
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: '1 orders are pending past their deadline'
              description: 'Check the poll_pending_orders schedule and the provider. See /orders on the dashboard.'
      - eval_time: 5m
        alertname: LitejobsDown
        exp_alerts: []
      - eval_time: 120m
        alertname: LitejobsBackupOld
        exp_alerts: []
      - eval_time: 130m
        alertname: LitejobsBackupOld
        exp_alerts:
          - exp_labels: {{severity: warning}}
            exp_annotations:
              summary: 'The last litejobs backup is 2h 10m 0s old'
              description: 'Check `systemctl status litejobs-backup.timer litejobs-backup` and its journal.'
"""


def test_alert_rules_fire_as_intended(tmp_path):
    promtool = _tool_or_skip("promtool")
    tests = tmp_path / "alerts-test.yml"
    tests.write_text(ALERT_TESTS.format(rules=json.dumps(str(ROOT / "deploy" / "prometheus-alerts.yml"))))
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- Backup and logs -------------------------------------------------------------------


def test_backup_of_postgresql_says_to_use_pg_dump(tmp_path):
    env = cli_env(tmp_path, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    result = subprocess.run(
        [sys.executable, "web.py", "backup", str(tmp_path / "b")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "pg_dump" in result.stderr and "Traceback" not in result.stderr


def test_every_finished_job_logs_one_line_with_id_function_and_duration(client, consumer, caplog):
    caplog.set_level(logging.INFO, logger="litejobs.jobs")
    ok = client.post("/api/v1/jobs/echo?wait=10", {"value": 1}).json
    failed = client.post("/api/v1/jobs/fail?wait=10", {"message": "it broke\nsecond line"}).json
    lines = [record.getMessage() for record in caplog.records]
    assert any(re.fullmatch(rf"job {ok['id']} echo succeeded in \d+\.\d ms", line) for line in lines), lines
    assert any(re.fullmatch(rf"job {failed['id']} fail failed in \d+\.\d ms: it broke", line) for line in lines), lines


# -- Separate processes, and Windows without POSIX-only calls ---------------------------
@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "web_command",
    [["web.py", "run", "--no-consumer"], [str(NONPOSIX / "web_as_win32.py"), "run"]],
    ids=["posix-branch", "win32-branch"],
)
def test_windows_path_runs_without_fork_posix_signals_or_fcntl(tmp_path, web_command):
    app = Litejobs(tmp_path, web_command, nonposix=True)
    try:
        probe = "import os, signal\ntry:\n    import fcntl\nexcept ImportError:\n    fcntl = None\n"
        probe += "print(hasattr(os, 'fork'), hasattr(signal, 'SIGHUP'), hasattr(signal, 'SIGUSR1'), fcntl is None)"
        seen = subprocess.run(
            [sys.executable, "-c", probe], cwd=ROOT, env=app.env, capture_output=True, text=True, timeout=60
        )
        assert seen.stdout.split() == ["False", "False", "False", "True"], seen.stderr  # the restrictions hold
        wait_until(app.ready, timeout=40, interval=0.2, message="web and consumer ready")
        job = app.client.post("/api/v1/jobs/echo?wait=20", {"value": "hello"}).json
        assert job["status"] == "succeeded" and job["result"] == "hello", job
        if "--no-consumer" in web_command:
            assert f":{app.consumer.pid}:" in job["worker"]  # the standalone consumer ran it
    finally:
        codes = app.stop()
    assert codes == {"web": 0, "consumer": 0}, (codes, app.log("web")[-3000:], app.log("consumer")[-3000:])
    for name in ("web", "consumer"):
        assert "Traceback" not in app.log(name), app.log(name)[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_metrics_are_right_with_web_and_consumer_in_separate_processes(tmp_path):
    app = Litejobs(tmp_path, ["web.py", "run", "--no-consumer"], nonposix=False)
    try:
        wait_until(app.ready, timeout=40, interval=0.2, message="web and consumer ready")
        for value in range(3):
            assert app.client.post("/api/v1/jobs/echo?wait=20", {"value": value}).json["status"] == "succeeded"
        assert app.client.post("/api/v1/jobs/fail?wait=20", {"message": "no"}).json["status"] == "failed"
        samples = metric_samples(app.client.get("/metrics").text)
    finally:
        app.stop()
    assert sample(samples, "litejobs_jobs_total", function="echo", status="succeeded") == 3
    assert sample(samples, "litejobs_jobs_total", function="fail", status="failed") == 1
    assert sample(samples, "litejobs_job_duration_seconds_count", function="echo") == 3
    assert sample(samples, "litejobs_workers_alive") == 1
    assert (
        sample(samples, "litejobs_http_requests_total", route="/api/v1/jobs/<name>", method="POST", status="200") == 4
    )
    # One line per finished job in the consumer's log, with id, function and duration.
    assert len(re.findall(r"job \S+ echo succeeded in \d+\.\d ms", app.log("consumer"))) == 3


def test_sqlite_files_checkpoint_their_wal_every_10000_pages():
    # SQLite's default, 1,000 pages, checkpointed every ~50 jobs (bench/, issue 7).
    assert models.db.execute_sql("pragma wal_autocheckpoint").fetchone()[0] == 10_000
    assert jobs.huey.storage.conn.execute("pragma wal_autocheckpoint").fetchone()[0] == 10_000
