"""Orders: dispatch to the provider, poll until the PIN arrives, never lose or double an order.

Everything goes through real HTTP: the API of the test server, and the sandbox
provider that the same server serves under /sandbox/. Faults (500s, slow
answers) are injected into the sandbox with its own fault API. Steps are run
either by a real consumer or one at a time with `orders.dispatch`, `orders.check`
and `orders.sweep`, passing `now` so the backoff schedule can be asserted exactly.
"""

import datetime
import http.client
import http.server
import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import ROOT, RunningConsumer, assert_error, base_env, free_port, wait_until

import jobs
from apps.orders import provider
from apps.orders import tasks as orders
from huey.exceptions import RetryTask
import settings
from models import Job, Worker, utcnow
from apps.orders.models import Order
from apps.orders.provider import SandboxOrder


ORDER = {"product_id": "pubg-uc", "package_id": "uc-660", "user_identifier": "player-42", "extra_field": "eu"}


class Sandbox:
    """The sandbox provider of the test server, reached over HTTP."""

    def __init__(self, base_url):
        self.base_url = base_url
        self.host, self.port = base_url.split("//")[1].split("/")[0].split(":")

    def fault(self, target="any", status=None, delay_ms=0, times=1):
        """Make the next `times` calls to `target` answer `status` or answer `delay_ms` late."""
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=10)
        body = json.dumps({"target": target, "status": status, "delay_ms": delay_ms, "times": times})
        headers = {"Content-Type": "application/json", provider.TOKEN_HEADER: settings.PROVIDER_TOKEN}
        conn.request("POST", "/sandbox/v1/faults", body=body, headers=headers)
        reply = conn.getresponse()
        assert reply.status == 201, reply.read()
        conn.close()

    @staticmethod
    def orders():
        return SandboxOrder.select().count()


@pytest.fixture
def sandbox(server_url, monkeypatch):
    """The test server's sandbox as the provider, fast: no latency, short delays."""
    for name, value in {
        "PROVIDER_URL": f"{server_url}/sandbox",
        "PROVIDER_TIMEOUT": 2.0,
        "SANDBOX_LATENCY_MS": 0,
        "SANDBOX_COMPLETE_AFTER": 0.3,
        "SANDBOX_FAILURE_RATE": 0.0,
        "ORDER_FIRST_CHECK_DELAY": 0.1,
        "ORDER_BACKOFF_BASE": 0.1,
        "ORDER_BACKOFF_MAX": 0.5,
        "ORDER_MAX_CHECKS": 20,
        "ORDER_DEADLINE_HOURS": 24.0,
        "ORDER_BATCH_SIZE": 100,
    }.items():
        monkeypatch.setattr(settings, name, value)
    return Sandbox(f"{server_url}/sandbox")


def place(client, **fields):
    reply = client.post("/api/v1/orders", {**ORDER, **fields})
    assert reply.status == 201, reply.body
    return reply.json


def reload(order_id):
    return Order.get_by_id(order_id)


def final(client, order_id, timeout=15):
    """The order over the API once it is completed or failed."""

    def done():
        body = client.get(f"/api/v1/orders/{order_id}").json
        return body if body["status"] in ("completed", "failed") else None

    return wait_until(done, timeout=timeout, message=f"order {order_id} final")


def check_jobs(order_id):
    jobs_ = Job.select().where((Job.name == "check_order_status") & Job.args.contains(order_id))
    return list(jobs_.order_by(Job.enqueued_at))


# -- The whole flow ---------------------------------------------------------------
def test_order_goes_from_new_to_completed_with_the_pin(client, sandbox, consumer):
    created = place(client)
    assert created["status"] == "new" and created["pin_code"] is None
    assert isinstance(created["id"], str)

    order = final(client, created["id"])

    assert order["status"] == "completed", order
    expected = SandboxOrder.get_by_id(order["provider_ref"])
    assert order["pin_code"] == expected.pin_code
    assert order["attempts"] >= 1 and order["error"] is None
    assert order["sent_at"] and order["completed_at"] and order["last_sync_at"] == order["completed_at"]
    assert order["created_at"].endswith("Z")
    names = [job.name for job in Job.select().order_by(Job.enqueued_at)]
    assert names[0] == "dispatch_order" and set(names[1:]) == {"check_order_status"}


def test_provider_500s_are_retried_then_the_order_completes(client, sandbox, consumer):
    sandbox.fault("create", status=500, times=1)
    sandbox.fault("status", status=503, times=2)

    order = final(client, place(client)["id"], timeout=20)

    assert order["status"] == "completed" and order["pin_code"]
    assert order["dispatch_attempts"] == 2  # one 500, one success
    assert order["attempts"] >= 3  # two 503s, then at least one real answer
    assert sandbox.orders() == 1
    dispatch_job = Job.get(Job.name == "dispatch_order")
    assert dispatch_job.status == "succeeded" and dispatch_job.attempts == 2


# -- The backoff schedule -----------------------------------------------------------
def test_check_delays_double_from_the_base_up_to_the_cap_less_a_little_jitter(monkeypatch):
    monkeypatch.setattr(settings, "ORDER_BACKOFF_BASE", 30.0)
    monkeypatch.setattr(settings, "ORDER_BACKOFF_MAX", 600.0)
    exact = [orders.check_delay(n, rand=lambda: 0.0) for n in range(1, 9)]
    assert exact == [30, 60, 120, 240, 480, 600, 600, 600]
    shortest = [orders.check_delay(n, rand=lambda: 1.0) for n in range(1, 9)]
    assert shortest == pytest.approx([d * 0.9 for d in exact])
    assert orders.check_delay(10_000, rand=lambda: 0.0) == 600  # no overflow after many checks


def test_default_schedule_is_the_one_of_the_system_it_replaces():
    # First check a minute after dispatch, then 30 s, 60 s, 120 s … capped at 10 minutes, 20 checks.
    schedule = orders.check_schedule()
    assert schedule[:6] == [60, 90, 150, 270, 510, 990]
    assert len(schedule) == 20
    assert schedule[-1] - schedule[-2] == 600
    assert schedule[-1] < 24 * 3600  # all 20 checks fit before the deadline


def test_errors_and_timeouts_are_retried_on_the_computed_schedule(client, sandbox, monkeypatch):
    for name, value in {
        "ORDER_FIRST_CHECK_DELAY": 60.0,
        "ORDER_BACKOFF_BASE": 30.0,
        "ORDER_BACKOFF_MAX": 100.0,
        "PROVIDER_TIMEOUT": 0.3,
        "SANDBOX_COMPLETE_AFTER": 0.0,
    }.items():
        monkeypatch.setattr(settings, name, value)
    order_id = place(client)["id"]
    start = utcnow()
    orders.dispatch(order_id, now=start)
    order = reload(order_id)
    # The sandbox says the order is ready at once: its first check is not put off 60 s.
    assert order.status == "sent" and order.next_check_at == start

    sandbox.fault("status", status=500, times=2)
    sandbox.fault("status", delay_ms=1500, times=2)  # longer than PROVIDER_TIMEOUT
    errors = ["HTTP 500", "HTTP 500", "no answer within 0.3 s", "no answer within 0.3 s"]
    now = order.next_check_at
    for number, (error, base) in enumerate(zip(errors, [30, 60, 100, 100]), start=1):
        result = orders.check(order_id, now=now)
        order = reload(order_id)
        assert order.checks == number and order.status == "sent" and order.last_sync_at == now
        assert error in order.last_error and error in result["error"]
        delay = (order.next_check_at - now).total_seconds()
        assert base * 0.9 <= delay <= base, (number, delay)
        # The next check is a job of its own, scheduled for that time (to the next whole second).
        eta = check_jobs(order_id)[-1].scheduled_for
        assert datetime.timedelta(0) <= eta - order.next_check_at < datetime.timedelta(seconds=1)
        now = order.next_check_at

    orders.check(order_id, now=now)
    order = reload(order_id)
    assert order.status == "completed" and order.checks == 5 and order.last_error is None
    assert order.pin_code == SandboxOrder.get_by_id(order.provider_ref).pin_code


@pytest.mark.parametrize("ready_after, first_check", [(3600.0, 60.0), (5.0, 5.0)])
def test_first_check_after_the_delay_or_when_the_provider_expects_the_order_ready(
    client, sandbox, monkeypatch, ready_after, first_check
):
    monkeypatch.setattr(settings, "ORDER_FIRST_CHECK_DELAY", 60.0)
    monkeypatch.setattr(settings, "SANDBOX_COMPLETE_AFTER", ready_after)
    order_id = place(client)["id"]
    start = utcnow()
    orders.dispatch(order_id, now=start)
    delay = (reload(order_id).next_check_at - start).total_seconds()
    assert first_check - 0.5 <= delay <= first_check


def test_a_check_before_its_time_or_run_twice_does_nothing(client, sandbox, monkeypatch):
    monkeypatch.setattr(settings, "ORDER_FIRST_CHECK_DELAY", 60.0)
    monkeypatch.setattr(settings, "SANDBOX_COMPLETE_AFTER", 3600.0)
    order_id = place(client)["id"]
    start = utcnow()
    orders.dispatch(order_id, now=start)
    assert "skipped" in orders.check(order_id, now=start + datetime.timedelta(seconds=59))
    due = start + datetime.timedelta(seconds=60)
    assert orders.check(order_id, now=due)["checks"] == 1
    assert "skipped" in orders.check(order_id, now=due)  # the first run moved the next check on
    assert reload(order_id).checks == 1 and len(check_jobs(order_id)) == 2


# -- Failing: limits, deadline, refusals ---------------------------------------------
def test_check_limit_fails_the_order_with_the_reason(client, sandbox, monkeypatch):
    monkeypatch.setattr(settings, "ORDER_MAX_CHECKS", 3)
    monkeypatch.setattr(settings, "SANDBOX_COMPLETE_AFTER", 3600.0)
    order_id = place(client)["id"]
    now = utcnow()
    orders.dispatch(order_id, now=now)
    for _ in range(3):
        now = reload(order_id).next_check_at
        orders.check(order_id, now=now)
    order = reload(order_id)
    assert order.status == "failed" and order.checks == 3
    assert order.error == "no final status after 3 checks (ORDER_MAX_CHECKS)"
    assert orders.check(order_id, now=now + datetime.timedelta(hours=1))["skipped"]  # final stays final


def test_deadline_fails_the_order_and_the_last_check_falls_on_it(client, sandbox, monkeypatch):
    monkeypatch.setattr(settings, "SANDBOX_COMPLETE_AFTER", 3600.0)
    monkeypatch.setattr(settings, "ORDER_BACKOFF_BASE", 30.0)
    monkeypatch.setattr(settings, "ORDER_BACKOFF_MAX", 600.0)
    order_id = place(client)["id"]
    created = reload(order_id).created_at
    orders.dispatch(order_id, now=created)
    deadline = created + datetime.timedelta(hours=24)

    orders.check(order_id, now=deadline - datetime.timedelta(seconds=10))
    assert reload(order_id).next_check_at == deadline  # not 30 s later: the deadline comes first
    orders.check(order_id, now=deadline)

    order = reload(order_id)
    assert order.status == "failed" and order.checks == 2
    assert order.error == "no final status within 24 h (ORDER_DEADLINE_HOURS)"


def test_sweep_fails_orders_past_the_deadline(client, sandbox):
    order_id = place(client)["id"]
    Order.update(created_at=utcnow() - datetime.timedelta(hours=25)).where(Order.id == order_id).execute()
    result = orders.sweep()
    order = client.get(f"/api/v1/orders/{order_id}").json
    assert result["failed"] == 1 and order["status"] == "failed"
    assert "within 24 h" in order["error"]


def test_provider_4xx_fails_the_order_at_once_with_its_message(client, sandbox, consumer):
    order = final(client, place(client, user_identifier="invalid-7")["id"])
    assert order["status"] == "failed" and order["provider_ref"] is None
    assert order["error"] == "provider refused the order: no account 'invalid-7' for this product (HTTP 422)"
    assert sandbox.orders() == 0
    assert Job.select().where(Job.name == "dispatch_order").get().attempts == 1  # not retried


def test_a_4xx_on_a_status_check_fails_at_once(client, sandbox, consumer):
    sandbox.fault("status", status=404, times=1)
    order = final(client, place(client)["id"])
    assert order["status"] == "failed" and order["attempts"] == 1
    assert order["error"] == "provider refused the status check: sandbox: injected fault (HTTP 404) (HTTP 404)"


def test_an_order_the_provider_fails_fails_with_the_providers_reason(client, sandbox, consumer):
    order = final(client, place(client, package_id="unavailable-9")["id"])
    assert order["status"] == "failed" and order["pin_code"] is None
    assert order["error"] == "provider failed the order: package 'unavailable-9' is unavailable"


def test_wrong_provider_token_is_a_permanent_error(sandbox):
    wrong = provider.Client(settings.PROVIDER_URL, "wrong-token", 1.0, 1.0)
    with pytest.raises(provider.PermanentError) as caught:
        wrong.order_status("SBX-1")
    assert caught.value.status == 401 and "X-Provider-Token" in caught.value.message


# -- The sandbox and the client's split between retryable and permanent faults --------
def test_sandbox_answers_pending_then_processing_then_completed(client, sandbox, monkeypatch):
    monkeypatch.setattr(settings, "SANDBOX_COMPLETE_AFTER", 10.0)
    reply = provider.client().create_order("order-1", "p", "k", "player-1")
    order = SandboxOrder.get_by_id(reply["reference"])
    times = [order.created_at + datetime.timedelta(seconds=s) for s in (0, 4.9, 5, 9.9, 10)]
    assert [order.status_at(t) for t in times] == [
        "pending",
        "pending",
        "processing",
        "processing",
        "completed",
    ]
    assert reply["status"] == "pending" and 9 <= reply["ready_in"] <= 10
    assert provider.client().order_status(reply["reference"])["pin_code"] is None
    again = provider.client().create_order("order-1", "p", "k", "player-1")
    assert again["reference"] == reply["reference"]


def test_sandbox_failure_rate_answers_500_which_is_retryable(sandbox, monkeypatch):
    monkeypatch.setattr(settings, "SANDBOX_FAILURE_RATE", 1.0)
    with pytest.raises(provider.RetryableError, match="HTTP 500: sandbox: simulated failure"):
        provider.client().create_order("order-2", "p", "k", "player-1")
    assert SandboxOrder.select().count() == 0


def test_without_provider_url_the_client_calls_the_sandbox_of_this_app(monkeypatch):
    monkeypatch.setattr(settings, "PROVIDER_URL", "")
    monkeypatch.setattr(settings, "BASE_URL", "http://127.0.0.1:8000")
    assert provider.client().base_url == "http://127.0.0.1:8000/sandbox"


# -- The client's split between retryable and permanent faults ----------------------
class _Garbage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>maintenance</html>")

    def log_message(self, *args):
        pass


def test_garbage_bodies_and_refused_connections_are_retryable(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Garbage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(settings, "PROVIDER_URL", f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(provider.RetryableError, match="not a JSON object"):
            provider.client().order_status("SBX-1")
    finally:
        server.shutdown()
        server.server_close()
    monkeypatch.setattr(settings, "PROVIDER_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(provider.RetryableError, match="ConnectionRefusedError"):
        provider.client().order_status("SBX-1")


def test_unknown_sandbox_paths_answer_json_without_an_api_key(anonymous, sandbox):
    reply = anonymous.get("/sandbox/v1/nothing-here")
    assert reply.status == 404 and reply.json["error"]["message"]
    reply = anonymous.post("/sandbox/v1/orders", {})
    assert reply.status == 401 and "X-Provider-Token" in reply.json["error"]["message"]


# -- Never doubled -------------------------------------------------------------------
def test_dispatch_run_twice_creates_one_provider_order(client, sandbox):
    order_id = place(client)["id"]
    first = orders.dispatch(order_id)
    second = orders.dispatch(order_id)
    assert first["provider_ref"] and "skipped" in second
    assert sandbox.orders() == 1 and len(check_jobs(order_id)) == 1


def test_dispatch_after_a_crash_gets_the_same_provider_order(client, sandbox):
    order_id = place(client)["id"]
    order = reload(order_id)
    # A first run reached the provider, then its consumer died before storing the answer.
    lost = provider.client().create_order(
        order.id, order.product_id, order.package_id, order.user_identifier, order.extra_field
    )
    orders.dispatch(order_id)
    assert reload(order_id).provider_ref == lost["reference"]
    assert sandbox.orders() == 1


def test_dispatch_timeout_then_retry_creates_one_provider_order(client, sandbox, monkeypatch):
    monkeypatch.setattr(settings, "PROVIDER_TIMEOUT", 0.3)
    monkeypatch.setattr(settings, "ORDER_BACKOFF_BASE", 30.0)
    monkeypatch.setattr(settings, "ORDER_BACKOFF_MAX", 600.0)
    order_id = place(client)["id"]
    sandbox.fault("create", delay_ms=1500, times=1)  # the provider makes the order, the answer is late
    now = utcnow()
    with pytest.raises(RetryTask):
        orders.dispatch(order_id, now=now)
    order = reload(order_id)
    assert order.status == "new" and order.dispatch_attempts == 1 and "no answer within" in order.last_error
    assert 27 <= (order.next_check_at - now).total_seconds() <= 30
    wait_until(lambda: sandbox.orders() == 1, message="the late order at the provider")

    orders.dispatch(order_id, now=order.next_check_at)
    assert reload(order_id).status == "sent" and sandbox.orders() == 1


def test_two_dispatch_jobs_at_once_make_one_provider_order(client, sandbox, monkeypatch):
    monkeypatch.setattr(settings, "SANDBOX_LATENCY_MS", 200)  # both jobs in flight together
    order_id = place(client)["id"]
    jobs.submit("dispatch_order", {"order_id": order_id})
    running = RunningConsumer(workers=4)
    try:
        order = final(client, order_id)
    finally:
        running.stop()
    assert order["status"] == "completed" and sandbox.orders() == 1
    statuses = [job.status for job in Job.select().where(Job.name == "dispatch_order")]
    assert statuses == ["succeeded", "succeeded"]


# -- The sweep -----------------------------------------------------------------------
def pending_orders(count, due_seconds_ago, status="processing"):
    """`count` pending orders whose next check was due that many seconds ago (negative: in the future)."""
    now = utcnow()
    ids = []
    for n in range(count):
        order = Order.create(
            **ORDER,
            status=status,
            provider_ref=f"SBX-TEST{n}",
            next_check_at=now - datetime.timedelta(seconds=due_seconds_ago + n),
        )
        ids.append(order.id)
    return ids


def queued_for(order_ids):
    """How many check or dispatch jobs (not canceled) each order has."""
    counts = {order_id: 0 for order_id in order_ids}
    query = Job.select().where(Job.name.in_(("check_order_status", "dispatch_order")) & (Job.status != "canceled"))
    for job in query:
        order_id = job.args_dict["order_id"]
        if order_id in counts:
            counts[order_id] += 1
    return counts


def test_sweep_respects_batch_size_and_due_time(sandbox, monkeypatch):
    monkeypatch.setattr(settings, "ORDER_BATCH_SIZE", 3)
    due = pending_orders(5, due_seconds_ago=10)
    later = pending_orders(2, due_seconds_ago=-60)

    first = orders.sweep()
    assert first["queued"] == 3 and first["pending"] == 7
    # The most overdue first.
    assert [n for n, order_id in enumerate(due) if queued_for(due)[order_id]] == [2, 3, 4]
    assert orders.sweep()["queued"] == 2  # the rest; the first three have a queued job
    assert orders.sweep()["queued"] == 0
    assert set(queued_for(due).values()) == {1}
    assert set(queued_for(later).values()) == {0}
    assert all(reload(order_id).job_id == check_jobs(order_id)[0].id for order_id in due)


def test_sweep_queues_again_orders_whose_job_ended_and_undispatched_orders(sandbox):
    lost_check, running_check = pending_orders(2, due_seconds_ago=10)
    (undispatched,) = pending_orders(1, due_seconds_ago=10, status="new")
    failed_job, _ = jobs.submit("check_order_status", {"order_id": lost_check}, delay=3600)
    Job.update(status="failed").where(Job.id == failed_job.id).execute()
    live_job, _ = jobs.submit("check_order_status", {"order_id": running_check}, delay=3600)
    Order.update(job_id=failed_job.id).where(Order.id == lost_check).execute()
    Order.update(job_id=live_job.id).where(Order.id == running_check).execute()

    assert orders.sweep()["queued"] == 2
    counts = queued_for([lost_check, running_check, undispatched])
    assert counts == {lost_check: 2, running_check: 1, undispatched: 1}
    assert Job.get(Job.name == "dispatch_order").args_dict == {"order_id": undispatched}


def test_concurrent_sweeps_queue_each_order_once(sandbox):
    due = pending_orders(40, due_seconds_ago=10)
    barrier = threading.Barrier(3)
    results = []

    def sweep():
        barrier.wait()
        results.append(orders.sweep()["queued"])

    threads = [threading.Thread(target=sweep) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(results) == 40, results
    assert set(queued_for(due).values()) == {1}


def test_sweep_jobs_never_overlap_and_check_each_order_once(client, sandbox, monkeypatch):
    monkeypatch.setattr(settings, "SANDBOX_COMPLETE_AFTER", 0.0)
    monkeypatch.setattr(settings, "ORDER_FIRST_CHECK_DELAY", 3600.0)  # only the sweep checks them
    ids = [place(client, user_identifier=f"player-{n}")["id"] for n in range(15)]
    real_sweep, lock, sweeping = orders.sweep, threading.Lock(), {"now": 0, "peak": 0}

    def counted_sweep():
        # Counted around the real sweep: the job history's timestamps are taken
        # before each write waits for the database lock, so they may overlap by a few ms.
        with lock:
            sweeping["now"] += 1
            sweeping["peak"] = max(sweeping["peak"], sweeping["now"])
        try:
            time.sleep(0.05)
            return real_sweep()
        finally:
            with lock:
                sweeping["now"] -= 1

    monkeypatch.setattr(orders, "sweep", counted_sweep)
    running = RunningConsumer(workers=4)
    try:

        def first_checks_queued():
            checks = {job.id for job in Job.select().where(Job.name == "check_order_status")}
            return len(checks) == 15 and all(order.job_id in checks for order in Order.select())

        wait_until(first_checks_queued, message="15 orders sent, their first check queued")
        # Those checks, an hour away, are lost: the sweep has to find the orders.
        for order in list(Order.select()):  # read in full before writing
            first_check = Job.get_by_id(order.job_id)
            if not first_check.is_terminal:  # the sandbox may have called it ready at once
                jobs.cancel(first_check)
        Order.update(next_check_at=utcnow() - datetime.timedelta(seconds=1)).execute()
        sweeps = [jobs.submit("poll_pending_orders")[0].id for _ in range(3)]
        wait_until(lambda: Order.select().where(Order.status == "completed").count() == 15, message="15 completed")
        wait_until(lambda: all(Job.get_by_id(j).is_terminal for j in sweeps), message="sweeps finished")
    finally:
        running.stop()
    assert all(reload(order_id).checks == 1 for order_id in ids)
    assert sweeping["peak"] == 1 and all(Job.get_by_id(j).status == "succeeded" for j in sweeps)


# -- The API -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, field",
    [
        ({"package_id": "a", "user_identifier": "b"}, "product_id"),
        ({**ORDER, "product_id": 42}, "product_id"),
        ({**ORDER, "package_id": True}, "package_id"),
        ({**ORDER, "user_identifier": "   "}, "user_identifier"),
        ({**ORDER, "user_identifier": "x" * 201}, "user_identifier"),
        ({**ORDER, "extra_field": {"a": 1}}, "extra_field"),
        ({**ORDER, "colour": "red"}, "colour"),
    ],
)
def test_bad_order_fields_are_422_naming_the_field(client, body, field):
    error = assert_error(client.post("/api/v1/orders", body), 422, "invalid_argument", field)
    assert field in error["message"]
    assert Order.select().count() == 0 and Job.select().count() == 0


def test_order_api_errors(client, anonymous):
    assert_error(client.post("/api/v1/orders", body=b"[1]"), 400, "bad_json")
    assert_error(client.get("/api/v1/orders/nope"), 404, "not_found")
    assert_error(client.get("/api/v1/orders?status=done"), 422, "invalid_argument", "status")
    assert_error(client.get("/api/v1/orders?limit=0"), 422, "invalid_argument", "limit")
    assert_error(client.get("/api/v1/orders?cursor=zzz"), 422, "invalid_argument", "cursor")
    assert_error(anonymous.post("/api/v1/orders", ORDER), 401, "unauthorized")


def test_list_orders_newest_first_by_status_a_page_at_a_time(client, sandbox):
    ids = [place(client, user_identifier=f"player-{n}")["id"] for n in range(5)]
    Order.update(status="failed").where(Order.id == ids[0]).execute()
    first = client.get("/api/v1/orders?limit=3").json
    second = client.get(f"/api/v1/orders?limit=3&cursor={first['next']}").json
    assert [o["id"] for o in first["orders"] + second["orders"]] == ids[::-1]
    assert second["next"] is None
    failed = client.get("/api/v1/orders?status=failed").json["orders"]
    assert [o["id"] for o in failed] == [ids[0]]


def test_idempotency_key_returns_the_first_order(client, sandbox):
    headers = {"Idempotency-Key": "cart-77"}
    first = client.post("/api/v1/orders", ORDER, headers=headers)
    again = client.post("/api/v1/orders", ORDER, headers=headers)
    assert first.status == 201 and again.status == 200 and again.json["id"] == first.json["id"]
    other = client.post("/api/v1/orders", {**ORDER, "package_id": "uc-1800"}, headers=headers)
    assert_error(other, 409, "conflict")
    assert Order.select().count() == 1


# -- Greenlet workers ------------------------------------------------------------------
def test_greenlet_consumer_checks_orders_concurrently(client, sandbox, monkeypatch, tmp_path):
    """The documented command: gevent patches before peewee is imported, so each
    greenlet has its own connection and provider calls overlap."""
    monkeypatch.setattr(settings, "SANDBOX_LATENCY_MS", 200)
    monkeypatch.setattr(settings, "SANDBOX_COMPLETE_AFTER", 0.0)
    for n in range(40):
        place(client, user_identifier=f"player-{n}")
    environ = base_env()
    environ.update(
        DATA_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        QUEUE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        PROVIDER_URL=settings.PROVIDER_URL,
        ORDER_FIRST_CHECK_DELAY="0",
        # The test server's listen backlog is 5: some of 100 connections at once are reset, and retried.
        ORDER_BACKOFF_BASE="0.5",
        ORDER_BACKOFF_MAX="1",
        LOG_LEVEL="WARNING",
    )
    command = [sys.executable, "-m", "gevent.monkey", "--module", "huey.bin.huey_consumer"]
    log_path = tmp_path / "greenlet-consumer.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*command, "jobs.huey", "-k", "greenlet", "-w", "100"], cwd=ROOT, env=environ, stdout=log, stderr=log
        )
    try:
        done = Order.select().where(Order.status == "completed")
        wait_until(lambda: done.count() == 40, timeout=30, message=f"40 orders completed; see {log_path}")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert Worker.get().kind == "greenlet" and Worker.get().concurrency == 100
    # 40 dispatches of 200 ms each, one after the other, would take 8 s; count the overlap.
    spans = [(j.started_at, j.finished_at) for j in Job.select().where(Job.name == "dispatch_order")]
    most = max(sum(1 for s in spans if s[0] <= start < s[1]) for start, _ in spans)
    assert most >= 20, most
    log = log_path.read_text()
    assert "Traceback" not in log and "locked" not in log, log[-2000:]
    assert process.returncode == 0


def test_peewee_connections_are_per_greenlet_after_the_patch(tmp_path):
    code = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import gevent, jobs, models\n"
        "found = gevent.joinall([gevent.spawn(models.db.connection) for _ in range(3)])\n"
        "print(len({id(g.value) for g in found}))\n"
    )
    environ = base_env()
    environ.update(DATA_DIR=str(tmp_path), LOG_LEVEL="WARNING")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True)
    assert result.stdout.strip() == "3", result.stderr
