"""Webhooks: subscriptions over the API, signed deliveries to a real local receiver,
retries with doubling delays, no retry on 4xx, refused private targets, usage.hourly."""

import datetime
import json
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import assert_error, wait_until

import jobs
import models
import settings
from apps.webhooks import models as webhooks
from models import Job, User
from apps.orders.models import Order
from apps.webhooks.models import Webhook, WebhookDelivery


class Receiver:
    """A real HTTP server on 127.0.0.1 that records each POST and answers from a script.

    `answers` are status codes, or "hang" (read the request, answer nothing until
    long past any timeout); once they run out every request gets `default`.
    """

    def __init__(self, answers=(), default=200):
        self.answers, self.default = list(answers), default
        self.requests = []  # (monotonic time, headers, raw body)
        self.released = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests.append((time.monotonic(), dict(self.headers), body))
                    answer = receiver.answers.pop(0) if receiver.answers else receiver.default
                if answer == "hang":
                    receiver.released.wait(30)
                    return
                self.send_response(answer)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/litejobs?team=a"

    def bodies(self):
        return [json.loads(body) for _, _, body in self.requests]

    def wait_for(self, count, timeout=15):
        wait_until(lambda: len(self.requests) >= count, timeout=timeout, message=f"{count} webhook requests")
        return self.bodies()

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    """Start a receiver; `receiver(answers, default)` makes one, all closed at the end."""
    made = []

    def make(answers=(), default=200):
        made.append(Receiver(answers, default))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.fixture(autouse=True)
def fast_webhooks(monkeypatch):
    """Local receivers allowed, short delays; no subscription cached across tests."""
    monkeypatch.setattr(settings, "WEBHOOK_ALLOW_PRIVATE", True)
    monkeypatch.setattr(settings, "WEBHOOK_RETRY_BASE", 0.2)
    monkeypatch.setattr(settings, "WEBHOOK_TIMEOUT", 2.0)
    webhooks.forget_subscriptions()
    yield
    webhooks.forget_subscriptions()


def subscribe(client, url, events):
    reply = client.post("/api/v1/webhooks", {"url": url, "events": events})
    assert reply.status == 201, reply.body
    return reply.json


def deliveries(client, webhook_id):
    reply = client.get(f"/api/v1/webhooks/{webhook_id}/deliveries")
    assert reply.status == 200, reply.body
    return reply.json["deliveries"]


def assert_signed(request, secret):
    _, headers, body = request
    assert headers["Content-Type"] == "application/json"
    assert webhooks.verify(secret, headers["Litejobs-Signature"], body)
    assert not webhooks.verify("whsec_wrong", headers["Litejobs-Signature"], body)


# -- Managing webhooks -------------------------------------------------------------
def test_create_list_show_delete(client):
    reply = client.post("/api/v1/webhooks", {"url": "http://8.8.8.8/hook", "events": ["job.failed", "order.completed"]})
    assert reply.status == 201
    created = reply.json
    assert set(created) == {"id", "url", "events", "secret", "created_at"}
    assert isinstance(created["id"], str) and created["secret"].startswith("whsec_")
    assert created["events"] == ["job.failed", "order.completed"] and created["created_at"].endswith("Z")
    assert reply.headers["Location"] == f"/api/v1/webhooks/{created['id']}"

    listed = client.get("/api/v1/webhooks").json["webhooks"]
    assert [w["id"] for w in listed] == [created["id"]]
    assert "secret" not in listed[0] and "secret" not in client.get(f"/api/v1/webhooks/{created['id']}").json
    assert deliveries(client, created["id"]) == []

    reply = client.delete(f"/api/v1/webhooks/{created['id']}")
    assert reply.status == 204 and reply.body == b""
    assert client.get("/api/v1/webhooks").json["webhooks"] == []
    assert webhooks.emit("job.failed", {"id": "x"}) == 0
    assert_error(client.delete(f"/api/v1/webhooks/{created['id']}"), 404, "not_found")


@pytest.mark.parametrize(
    "path, method",
    [
        ("/api/v1/webhooks/12345", "GET"),
        ("/api/v1/webhooks/12345", "DELETE"),
        ("/api/v1/webhooks/12345/deliveries", "GET"),
        ("/api/v1/webhooks/not-a-number/deliveries", "GET"),
    ],
)
def test_unknown_webhook_is_404(client, path, method):
    assert_error(client.request(method, path), 404, "not_found")


def test_webhooks_need_an_api_key(anonymous):
    assert_error(anonymous.get("/api/v1/webhooks"), 401, "unauthorized")
    assert_error(anonymous.post("/api/v1/webhooks", {"url": "http://8.8.8.8/", "events": ["job.failed"]}), 401, "unauthorized")


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "url"),
        ({"events": ["job.failed"]}, "url"),
        ({"url": 5, "events": ["job.failed"]}, "url"),
        ({"url": "ftp://8.8.8.8/x", "events": ["job.failed"]}, "url"),
        ({"url": "http:///no-host", "events": ["job.failed"]}, "url"),
        ({"url": "https://user:pw@8.8.8.8/", "events": ["job.failed"]}, "url"),
        ({"url": "http://8.8.8.8:99999/", "events": ["job.failed"]}, "url"),
        ({"url": "http://no-such-host.invalid/", "events": ["job.failed"]}, "url"),
        ({"url": "http://8.8.8.8/"}, "events"),
        ({"url": "http://8.8.8.8/", "events": []}, "events"),
        ({"url": "http://8.8.8.8/", "events": "job.failed"}, "events"),
        ({"url": "http://8.8.8.8/", "events": ["job.exploded"]}, "events"),
        ({"url": "http://8.8.8.8/", "events": ["job.failed", {"x": 1}]}, "events"),
        ({"url": "http://8.8.8.8/", "events": ["job.failed"], "secret": "mine"}, "secret"),
    ],
)
def test_bad_webhook_is_422_naming_the_field(client, body, field):
    assert_error(client.post("/api/v1/webhooks", body), 422, "invalid_argument", field)
    assert Webhook.select().count() == 0


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.1.2.3/",
        "http://192.168.1.10/",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
    ],
)
def test_private_target_refused_without_the_setting(client, monkeypatch, url):
    monkeypatch.setattr(settings, "WEBHOOK_ALLOW_PRIVATE", False)
    error = assert_error(client.post("/api/v1/webhooks", {"url": url, "events": ["job.failed"]}), 422, "invalid_argument", "url")
    assert "WEBHOOK_ALLOW_PRIVATE=1" in error["message"]


def test_private_target_accepted_with_the_setting(client, receiver):
    assert subscribe(client, receiver().url, ["job.failed"])["url"].startswith("http://127.0.0.1:")


# -- Delivering ---------------------------------------------------------------------
def test_job_events_are_delivered_signed(client, consumer, receiver, backend):
    hook = receiver()
    webhook = subscribe(client, hook.url, ["job.failed", "job.succeeded"])
    failed = client.post("/api/v1/jobs/fail?wait=5", {"message": "disk full"}).json
    assert failed["status"] == "failed"
    client.post("/api/v1/jobs/ping?wait=5")

    bodies = hook.wait_for(2)
    by_event = {body["event"]: body for body in bodies}
    assert set(by_event) == {"job.failed", "job.succeeded"}
    event = by_event["job.failed"]
    assert set(event) == {"id", "event", "created_at", "data"} and event["created_at"].endswith("Z")
    assert event["data"]["id"] == failed["id"] and event["data"]["status"] == "failed"
    assert event["data"]["error"] == "disk full" and "JobError" in event["data"]["traceback"]
    assert by_event["job.succeeded"]["data"]["result"] == "pong"
    for request in hook.requests:
        assert_signed(request, webhook["secret"])
        assert request[1]["Litejobs-Event"] == json.loads(request[2])["event"]

    wait_until(lambda: [d["status"] for d in deliveries(client, webhook["id"])] == ["succeeded"] * 2)
    logged = deliveries(client, webhook["id"])
    assert {d["event"] for d in logged} == {"job.failed", "job.succeeded"}
    for delivery in logged:
        assert delivery["response_code"] == 200 and delivery["attempts"] == 1 and delivery["duration_ms"] > 0
        assert delivery["event_id"] in {body["id"] for body in bodies}
        job = client.get(f"/api/v1/jobs/{delivery['job_id']}").json
        assert job["name"] == "deliver_webhook" and job["queue"] == "notifications"
    # The deliveries' own jobs succeeded too, but they are never events: no loop.
    time.sleep(1.0)
    assert len(hook.requests) == 2


def test_5xx_is_retried_with_the_same_id_and_growing_delays(client, consumer, receiver):
    hook = receiver(answers=[500, 503])
    webhook = subscribe(client, hook.url, ["job.failed"])
    client.post("/api/v1/jobs/fail?wait=5", {"message": "boom"})

    bodies = hook.wait_for(3)
    assert len({body["id"] for body in bodies}) == 1
    for request in hook.requests:
        assert_signed(request, webhook["secret"])
    times = [at for at, _, _ in hook.requests]
    base = settings.WEBHOOK_RETRY_BASE
    assert times[1] - times[0] >= base and times[2] - times[1] >= 2 * base

    delivery = wait_until(lambda: (d := deliveries(client, webhook["id"])[0])["status"] == "succeeded" and d)
    assert delivery["attempts"] == 3 and delivery["response_code"] == 200
    job = Job.get_by_id(delivery["job_id"])
    assert job.status == "succeeded" and job.attempts == 3
    time.sleep(1.0)
    assert len(hook.requests) == 3


def test_4xx_is_not_retried(client, consumer, receiver):
    hook = receiver(default=404)
    webhook = subscribe(client, hook.url, ["job.failed"])
    client.post("/api/v1/jobs/fail?wait=5", {"message": "boom"})

    delivery = wait_until(lambda: (d := deliveries(client, webhook["id"])) and d[0]["status"] == "failed" and d[0])
    assert delivery["response_code"] == 404 and delivery["attempts"] == 1 and "404" in delivery["error"]
    job = Job.get_by_id(delivery["job_id"])
    assert job.status == "failed" and "404" in job.error
    time.sleep(1.5)  # several retry delays: nothing more arrives
    assert len(hook.requests) == 1


def test_timeout_is_retried(client, consumer, receiver, monkeypatch):
    monkeypatch.setattr(settings, "WEBHOOK_TIMEOUT", 0.5)
    hook = receiver(answers=["hang"])
    webhook = subscribe(client, hook.url, ["job.failed"])
    started = time.monotonic()
    client.post("/api/v1/jobs/fail?wait=5", {"message": "boom"})

    bodies = hook.wait_for(2)
    assert bodies[0]["id"] == bodies[1]["id"]
    delivery = wait_until(lambda: (d := deliveries(client, webhook["id"])[0])["status"] == "succeeded" and d)
    assert delivery["attempts"] == 2 and delivery["response_code"] == 200
    assert time.monotonic() - started < 10  # the hanging receiver held the worker for the timeout only


def test_gives_up_after_max_attempts_with_doubling_delays(client, receiver, monkeypatch):
    """Stepped through with huey.dequeue() and huey.execute(): the etas are exact."""
    monkeypatch.setattr(settings, "WEBHOOK_MAX_ATTEMPTS", 4)
    hook = receiver(default=500)
    webhook = subscribe(client, hook.url, ["usage.hourly"])
    assert webhooks.emit("usage.hourly", {"n": 1}) == 1

    task = jobs.huey.dequeue()
    delays = []
    for attempt in range(1, 5):
        before = models.utcnow()
        jobs.huey.execute(task, timestamp=task.eta)  # its eta counts as now: no waiting
        assert len(hook.requests) == attempt
        if attempt == 4:
            break
        (task,) = jobs.huey.scheduled()
        delays.append((task.eta - before).total_seconds())
        (task,) = jobs.huey.read_schedule(task.eta + datetime.timedelta(seconds=1))
    base = settings.WEBHOOK_RETRY_BASE
    for got, expected in zip(delays, [base, 2 * base, 4 * base]):
        assert expected <= got < expected + 0.5, delays

    assert jobs.huey.scheduled() == [] and jobs.huey.pending_count() == 0
    (delivery,) = deliveries(client, webhook["id"])
    assert delivery["status"] == "failed" and delivery["attempts"] == 4 and delivery["response_code"] == 500
    job = Job.get_by_id(delivery["job_id"])
    assert job.status == "failed" and "after 4 attempt(s)" in job.error and job.attempts == 4
    # Running it once more (at-least-once delivery) sends nothing.
    assert jobs.FUNCTIONS["deliver_webhook"].wrapper.call_local(delivery_id=int(delivery["id"])) == "failed"
    assert len(hook.requests) == 4


def test_target_turned_private_is_refused_at_delivery(client, consumer, receiver, monkeypatch):
    hook = receiver()
    webhook = subscribe(client, hook.url, ["job.failed"])
    monkeypatch.setattr(settings, "WEBHOOK_ALLOW_PRIVATE", False)
    client.post("/api/v1/jobs/fail?wait=5", {"message": "boom"})

    delivery = wait_until(lambda: (d := deliveries(client, webhook["id"])) and d[0]["status"] == "failed" and d[0])
    assert delivery["attempts"] == 1 and delivery["response_code"] is None
    assert "WEBHOOK_ALLOW_PRIVATE" in delivery["error"]
    assert hook.requests == []


def test_deleted_webhook_gets_no_pending_delivery(client, receiver):
    hook = receiver()
    webhook = subscribe(client, hook.url, ["usage.hourly"])
    webhooks.emit("usage.hourly", {"n": 1})
    assert client.delete(f"/api/v1/webhooks/{webhook['id']}").status == 204

    jobs.huey.execute(jobs.huey.dequeue())
    delivery = WebhookDelivery.get()
    assert delivery.status == "failed" and delivery.last_error == "webhook deleted before delivery"
    assert hook.requests == []


def test_subscriptions_are_cached_briefly(monkeypatch):
    """A webhook made by another process is seen within SUBSCRIPTIONS_TTL; no query per event before that."""
    monkeypatch.setattr(webhooks, "SUBSCRIPTIONS_TTL", 0.3)
    assert webhooks.subscribers("job.failed") == []
    webhook = Webhook.subscribe("http://8.8.8.8/", ["job.failed"])
    assert webhooks.subscribers("job.failed") == []
    time.sleep(0.35)
    assert webhooks.subscribers("job.failed") == [webhook.id]
    assert webhooks.subscribers("job.succeeded") == []


def test_order_events_are_delivered(client, consumer, receiver, server_url, monkeypatch):
    """Real orders against the sandbox provider: one completes, one is refused."""
    for name, value in (("BASE_URL", server_url), ("ORDER_FIRST_CHECK_DELAY", 0.0), ("SANDBOX_COMPLETE_AFTER", 0.0),
                        ("SANDBOX_LATENCY_MS", 0)):
        monkeypatch.setattr(settings, name, value)
    hook = receiver()
    webhook = subscribe(client, hook.url, ["order.completed", "order.failed"])
    good = client.post("/api/v1/orders", {"product_id": "p1", "package_id": "k1", "user_identifier": "alice"}).json
    bad = client.post("/api/v1/orders", {"product_id": "p1", "package_id": "k1", "user_identifier": "invalid-bob"}).json

    by_event = {body["event"]: body for body in hook.wait_for(2)}
    assert set(by_event) == {"order.completed", "order.failed"}
    completed, failed = by_event["order.completed"]["data"], by_event["order.failed"]["data"]
    assert completed["id"] == good["id"] and completed["status"] == "completed" and completed["pin_code"]
    assert failed["id"] == bad["id"] and failed["status"] == "failed" and "invalid-bob" in failed["error"]
    for request in hook.requests:
        assert_signed(request, webhook["secret"])
    time.sleep(0.5)
    assert len(hook.requests) == 2


# -- usage.hourly ---------------------------------------------------------------------
def test_usage_hourly_reports_the_hour(client, consumer, receiver):
    hook = receiver()
    webhook = subscribe(client, hook.url, ["usage.hourly"])
    for _ in range(2):
        assert client.post("/api/v1/jobs/ping?wait=5").json["status"] == "succeeded"
    assert client.post("/api/v1/jobs/fail?wait=5", {"message": "x"}).json["status"] == "failed"
    User.create(email="new1@example.com")
    User.create(email="new2@example.com")
    User.create(email="old@example.com", created_at=models.utcnow() - datetime.timedelta(hours=2))
    order = {"product_id": "p", "package_id": "k", "user_identifier": "u"}
    Order.create(**order, status="completed")
    Order.create(**order)
    Order.create(**order, status="failed", created_at=models.utcnow() - datetime.timedelta(hours=2))

    until = (models.utcnow() + datetime.timedelta(minutes=5)).isoformat()
    job = jobs.enqueue("send_usage_statistics", until=until)
    (body,) = hook.wait_for(1)
    assert body["event"] == "usage.hourly"
    assert_signed(hook.requests[0], webhook["secret"])
    data = body["data"]
    assert data["new_users"] == 2
    assert data["jobs"]["ping"] == {"enqueued": 2, "succeeded": 2}
    assert data["jobs"]["fail"] == {"enqueued": 1, "failed": 1}
    assert data["orders"] == {"created": 2, "new": 1, "sent": 0, "processing": 0, "completed": 1, "failed": 0}
    end = models.parse_time(data["end"])
    assert end - models.parse_time(data["start"]) == datetime.timedelta(hours=1)
    assert wait_until(lambda: Job.get_by_id(job.id).status == "succeeded")

    # Run twice, it is the same event: nothing is sent again.
    again = jobs.enqueue("send_usage_statistics", until=until)
    wait_until(lambda: Job.get_by_id(again.id).status == "succeeded")
    assert Job.get_by_id(again.id).to_dict()["result"]["deliveries"] == 0
    time.sleep(0.5)
    assert len(hook.requests) == 1


def test_usage_hourly_is_an_hourly_schedule_that_runs_on_demand(client, consumer, receiver):
    hook = receiver()
    subscribe(client, hook.url, ["usage.hourly"])
    schedules = {s["name"]: s for s in client.get("/api/v1/schedules").json["schedules"]}
    assert schedules["send_usage_statistics"]["cron"] == "0 * * * *"

    reply = client.post("/api/v1/schedules/send_usage_statistics/run")
    assert reply.status == 202 and reply.json["name"] == "send_usage_statistics"
    (body,) = hook.wait_for(1)
    end = models.parse_time(body["data"]["end"])
    assert (end.minute, end.second) == (0, 0) and end <= models.utcnow() < end + datetime.timedelta(hours=1)


def test_usage_hourly_defaults_to_the_last_full_hour():
    result = jobs.FUNCTIONS["send_usage_statistics"].wrapper.call_local()
    start, end = models.parse_time(result["start"]), models.parse_time(result["end"])
    assert (end.minute, end.second, end.microsecond) == (0, 0, 0)
    assert end <= models.utcnow() < end + datetime.timedelta(hours=1)
    assert end - start == datetime.timedelta(hours=1) and result["deliveries"] == 0


# -- Signatures --------------------------------------------------------------------------
def test_verify_accepts_only_a_fresh_signature_of_the_same_body():
    secret, body = "whsec_test", b'{"id": "1"}'
    header = webhooks.sign(secret, body, t=1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert webhooks.verify(secret, header, body, now=1_700_000_100)
    assert not webhooks.verify(secret, header, body, now=1_700_000_000 + 301)  # too old: a replay
    assert not webhooks.verify(secret, header, body + b" ", now=1_700_000_100)
    assert not webhooks.verify("whsec_other", header, body, now=1_700_000_100)
    for broken in ("", "t=1700000000", "v1=abc", "t=x,v1=abc", "garbage"):
        assert not webhooks.verify(secret, broken, body, now=1_700_000_100)


def test_docs_receiver_snippet_checks_real_signatures():
    readme = (settings.BASE_DIR / "docs" / "apps.md").read_text()
    section = readme.split("## Webhooks", 1)[1].split("\n## ", 1)[0]
    start = section.index("    import hashlib")
    snippet = textwrap.dedent(section[start : section.index("    @app.post", start)])
    namespace = {}
    exec(snippet, namespace)
    body = b'{"id": "1", "event": "job.failed"}'
    header = webhooks.sign("whsec_x", body)
    assert namespace["verify"]("whsec_x", header, body)
    assert not namespace["verify"]("whsec_x", header, body + b" ")
    assert not namespace["verify"]("whsec_y", header, body)
    assert not namespace["verify"]("whsec_x", webhooks.sign("whsec_x", body, t=time.time() - 3600), body)


# IPv6 forms that carry an IPv4 address a gateway forwards to: 6to4, Teredo, NAT64
# (well-known and local-use prefixes), ISATAP, IPv4-compatible and IPv4-translated.
@pytest.mark.parametrize(
    "address",
    [
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
        "2002:c0a8:101::",  # 6to4 of 192.168.1.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
        "64:ff9b:1::a00:1",  # local-use NAT64 of 10.0.0.1
        "2001:db8:1::5efe:7f00:1",  # ISATAP of 127.0.0.1
        "2600:1::200:5efe:a01:203",  # ISATAP (global id) of 10.1.2.3
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::ffff:0:7f00:1",  # IPv4-translated 127.0.0.1
    ],
)
def test_ipv6_forms_embedding_a_private_ipv4_are_refused(client, monkeypatch, address):
    monkeypatch.setattr(settings, "WEBHOOK_ALLOW_PRIVATE", False)
    error = assert_error(
        client.post("/api/v1/webhooks", {"url": f"http://[{address}]/hook", "events": ["job.failed"]}),
        422,
        "invalid_argument",
        "url",
    )
    assert "WEBHOOK_ALLOW_PRIVATE=1" in error["message"]


@pytest.mark.parametrize("address", ["2002:808:808::1", "2600:1::200:5efe:808:808", "2606:4700:4700::1111"])
def test_ipv6_forms_embedding_a_public_ipv4_pass(address):
    assert webhooks._non_public_kind(address) is None
