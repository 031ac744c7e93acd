"""Apps and your own functions: APPS chooses what runs, FUNCTIONS_DIR adds your files,
a consumer without a job's function fails the job clearly, and web and consumers agree."""

import subprocess
import sys

import pytest

import jobs
import models
from helpers import ROOT, Litejobs, assert_error, cli_env, readme_example, wait_until
from models import Job

SHOP = readme_example()  # the README's functions/shop.py, as a user pastes it


@pytest.fixture
def running(tmp_path):
    """Start a web process and a standalone consumer with the given settings; stopped afterwards."""
    started = []

    def start(**env):
        app = Litejobs(tmp_path, ["web.py", "run", "--no-consumer"], **env)
        started.append(app)
        wait_until(app.ready, timeout=60, message="web and consumer ready")
        return app

    yield start
    for app in started:
        app.stop()


@pytest.mark.slow
def test_apps_orders_serves_only_the_engine_and_orders(running, tmp_path):
    (tmp_path / "none").mkdir()
    app = running(APPS="orders", FUNCTIONS_DIR=str(tmp_path / "none"))
    client = app.client
    placed = client.post("/api/v1/orders", {"product_id": "p", "package_id": "k", "user_identifier": "u"})
    assert placed.status == 201, placed.body
    assert client.get("/api/v1/orders").status == 200
    for path in ("/api/v1/webhooks", "/api/v1/posts/1", "/api/v1/courses/1", "/api/v1/analytics/trending"):
        assert_error(client.get(path), 404, "not_found")
    assert_error(client.post("/api/v1/users", {"email": "ann@example.com"}), 404, "not_found")
    # Pages: orders' asks for a login, the others' do not exist.
    assert client.get("/orders").status == 303
    for path in ("/analytics", "/webhooks", "/courses", "/posts/1"):
        assert client.get(path).status == 404, path
    functions = {f["name"] for f in client.get("/api/v1/functions").json["functions"]}
    assert {"ping", "echo", "sleep", "fail"} <= functions
    assert not functions & {"send_welcome_email", "update_user_statistics", "send_weekly_digest", "cleanup_old_cache"}
    schedules = {s["name"] for s in client.get("/api/v1/schedules").json["schedules"]}
    assert schedules == {"poll_pending_orders", "prune_job_history"}
    paths = client.get("/api/v1/openapi.json").json["paths"]
    assert "/api/v1/orders" in paths and "/api/v1/webhooks" not in paths and "/api/v1/users" not in paths
    workers = client.get("/api/v1/workers").json["workers"]
    assert [w["apps"] for w in workers if w["alive"]] == [["orders"]]
    ready = client.get("/health/ready").json
    assert ready["status"] == "ok" and ready["checks"]["apps"] == {"status": "ok"}
    # The order's dispatch ran on the consumer, which has orders' functions.
    order_id = placed.json["id"]
    wait_until(lambda: client.get(f"/api/v1/orders/{order_id}").json["status"] != "created", timeout=30)


@pytest.mark.slow
def test_a_functions_file_pasted_from_the_readme_works_after_a_restart(running, tmp_path):
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "shop.py").write_text(SHOP)
    app = running(FUNCTIONS_DIR=str(functions))
    client = app.client
    reply = client.post("/api/v1/jobs/send_receipt?wait=10", {"order_id": 42})
    assert reply.status == 200, reply.body
    assert reply.json["status"] == "succeeded" and reply.json["result"] == {"order_id": 42, "sent": True}
    failed = client.post("/api/v1/jobs/send_receipt?wait=10", {"order_id": 0}).json
    assert failed["status"] == "failed" and failed["error"] == "no order 0"
    listed = {f["name"]: f for f in client.get("/api/v1/functions").json["functions"]}
    assert listed["send_receipt"]["params"] == [{"name": "order_id", "type": "int", "required": True}]
    assert "close_stale_carts" not in listed  # not public
    schedules = {s["name"]: s for s in client.get("/api/v1/schedules").json["schedules"]}
    assert schedules["close_stale_carts"]["cron"] == "*/10 * * * *"
    workers = client.get("/api/v1/workers").json["workers"]
    assert "shop" in workers[0]["apps"]
    invoke = client.get("/api/v1/openapi.json").json["paths"]["/api/v1/functions/send_receipt/jobs"]["post"]
    body = invoke["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"] == {"order_id": {"type": "integer"}} and body["required"] == ["order_id"]


def test_a_consumer_without_the_function_fails_the_job_naming_both(consumer):
    @jobs.task(public=True)
    def only_on_the_web_process():
        return "ran"

    job, _ = jobs.submit("only_on_the_web_process", {}, delay=1)  # due once the function is gone here
    # This process's consumer lost the function, as a consumer started with other APPS never had it.
    only_on_the_web_process.unregister()
    del jobs.FUNCTIONS["only_on_the_web_process"]
    row = wait_until(lambda: (r := Job.get_by_id(job.id)).is_terminal and r, timeout=10)
    assert row.status == "failed"
    assert "function 'only_on_the_web_process' is not loaded on consumer" in row.error
    assert jobs.CONSUMER_ID in row.error and "load its app there" in row.error


def test_ready_is_degraded_while_a_consumer_loaded_other_apps(anonymous):
    models.Worker.create(id="here", host="h", pid=1, kind="thread", concurrency=1, apps=",".join(jobs.APPS))
    assert anonymous.get("/health/ready").json["status"] == "ok"
    models.Worker.create(id="elsewhere", host="h", pid=2, kind="thread", concurrency=1, apps="orders")
    ready = anonymous.get("/health/ready").json
    assert ready["status"] == "degraded"
    assert ready["checks"]["apps"]["status"] == "degraded" and "elsewhere: orders" in ready["checks"]["apps"]["error"]


@pytest.mark.parametrize(
    "source, says",
    [
        ("from litejobs import task\n\n@task()\ndef ping():\n    return 1\n", "function ping is defined twice"),
        ("from litejobs import task\n\n@task()\ndef later(delay: int):\n    return 1\n", "reserved by huey"),
    ],
)
@pytest.mark.parametrize("env", ["development", "production"])
def test_a_clash_with_an_existing_name_or_a_huey_option_stops_the_start(tmp_path, source, says, env):
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "mine.py").write_text(source)
    result = start_command(tmp_path, ENV=env)
    assert result.returncode != 0
    assert says in result.stderr and str(tmp_path / "functions" / "mine.py") + ":3" in result.stderr
    assert "Traceback" not in result.stderr
    if "twice" in says:
        assert "jobs.py:" in result.stderr  # the other place


BROKEN = {
    "syntax.py": ("from litejobs import task\n\ndef oops(:\n    pass\n", "syntax.py:3", "SyntaxError"),
    "missing.py": ("from litejobs import task\nimport no_such_module_here\n", "missing.py:2", "ModuleNotFoundError"),
    "raises.py": ("from litejobs import task\n\n\nraise RuntimeError('no config')\n", "raises.py:4", "RuntimeError: no config"),
}


def start_command(tmp_path, **env):
    """`web.py create-key` (which loads every app, as a start does) with FUNCTIONS_DIR in tmp_path."""
    env = cli_env(tmp_path, FUNCTIONS_DIR=str(tmp_path / "functions"), SECRET_KEY="s" * 40, PROVIDER_TOKEN="p" * 24, **env)
    return subprocess.run(
        [sys.executable, "web.py", "create-key", "x"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_functions_file_in_development_is_logged_and_the_rest_starts(tmp_path, name):
    source, place, message = BROKEN[name]
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / name).write_text(source)
    (tmp_path / "functions" / "shop.py").write_text(SHOP)
    result = start_command(tmp_path)
    assert result.returncode == 0, result.stderr
    assert place in result.stderr and message in result.stderr and "did not load" in result.stderr


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_functions_file_in_production_refuses_to_start_naming_file_and_line(tmp_path, name):
    source, place, message = BROKEN[name]
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / name).write_text(source)
    result = start_command(tmp_path, ENV="production")
    assert result.returncode != 0
    assert f"cannot start: {tmp_path / 'functions' / name}" in result.stderr
    assert place in result.stderr and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_broken_functions_file_leaves_the_others_serving(running, tmp_path):
    functions = tmp_path / "functions"
    functions.mkdir()
    (functions / "shop.py").write_text(SHOP)
    (functions / "syntax.py").write_text(BROKEN["syntax.py"][0])
    app = running(FUNCTIONS_DIR=str(functions))
    reply = app.client.post("/api/v1/jobs/send_receipt?wait=10", {"order_id": 7})
    assert reply.status == 200 and reply.json["status"] == "succeeded", reply.body
    assert "syntax.py:3" in app.log("web") and "syntax.py:3" in app.log("consumer")


def test_apps_none_is_the_engine_alone_and_an_unknown_app_is_named(tmp_path):
    (tmp_path / "functions").mkdir()
    alone = start_command(tmp_path, APPS="none")
    assert alone.returncode == 0, alone.stderr
    env = cli_env(tmp_path, FUNCTIONS_DIR=str(tmp_path / "functions"), APPS="none")
    status = subprocess.run(
        [sys.executable, "web.py", "migrate", "--status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0 and status.stdout.splitlines()[0].startswith("engine: version")
    assert len(status.stdout.splitlines()) == 1, status.stdout  # no app
    typo = start_command(tmp_path, APPS="orders,ordrs")
    assert typo.returncode != 0 and "APPS names 'ordrs'" in typo.stderr and "Traceback" not in typo.stderr
