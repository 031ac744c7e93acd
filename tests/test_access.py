"""Who may do what: dashboard viewers and admins, API key scopes, listing and
revoking keys (at once, in every web process), over real HTTP."""

import sqlite3

import pytest
from helpers import Client, assert_error

import jobs
import loader
import models
import openapi
import schedules
from apps.orders import models as orders
from test_dashboard import PAGES, Browser
from webprocess import WebProcess, cli

VIEWER, ADMIN, PASSWORD = "viewer@example.com", "admin@example.com", "correct horse battery"


def dashboard_user(server_url, email, is_admin):
    models.User.create(email=email, password_hash=models.User.hash_password(PASSWORD), is_admin=is_admin)
    browser = Browser(server_url)
    assert browser.login(email, PASSWORD).status == 303
    return browser


@pytest.fixture
def viewer(server_url):
    return dashboard_user(server_url, VIEWER, False)


@pytest.fixture
def admin(server_url):
    return dashboard_user(server_url, ADMIN, True)


# -- 6. Dashboard roles --------------------------------------------------------------------
@pytest.mark.parametrize("path", PAGES)
def test_viewers_see_every_page(viewer, path):
    assert viewer.get(path).status in (200, 404)


def test_viewers_can_act_on_nothing(viewer):
    done, _ = jobs.submit("echo", {"value": 1})
    models.Job.mark_finished(done.id, "succeeded", result=1)
    waiting, _ = jobs.submit("echo", {"value": 2})
    schedule = next(iter(schedules.schedule_dicts()))["name"]
    actions = [
        ("/run/echo", {"value": "1"}),
        (f"/jobs/{done.id}/retry", {}),
        (f"/jobs/{waiting.id}/cancel", {}),
        (f"/schedules/{schedule}/pause", {}),
        (f"/schedules/{schedule}/resume", {}),
        (f"/schedules/{schedule}/run", {}),
        ("/orders", {"product_id": "p", "package_id": "k", "user_identifier": "u"}),
    ]
    for path, form in actions:
        reply = viewer.submit(path, form)
        assert reply.status == 403, (path, reply.status)
    assert models.Job.select().count() == 2
    assert models.Job.get_by_id(waiting.id).status == "queued"
    assert not any(s["paused"] for s in schedules.schedule_dicts())
    assert orders.Order.select().count() == 0
    assert viewer.post("/logout", {"csrf_token": viewer.csrf("/")}).status == 303  # logging out is no action


def test_viewers_see_pins_masked_and_admins_see_them(viewer, admin):
    order = orders.Order.create(product_id="p", package_id="k", user_identifier="u", status="completed", pin_code="PIN-4711")
    for path in ("/orders", f"/orders/{order.id}"):
        assert "PIN-4711" not in viewer.get(path).text
        assert "PIN-4711" in admin.get(path).text


def test_viewers_get_no_action_forms(viewer, admin):
    job, _ = jobs.submit("echo", {"value": 1})
    for path in (f"/jobs/{job.id}", "/schedules", "/run/echo", "/orders"):
        assert 'method="post" action="/logout"' in viewer.get(path).text
        assert viewer.get(path).text.count('method="post"') == 1, path  # only Log out
        assert admin.get(path).text.count('method="post"') > 1, path


def test_create_user_makes_a_viewer_unless_admin(tmp_path):
    assert cli(tmp_path, "create-user", "v@example.com", "--password", "long enough").returncode == 0
    assert cli(tmp_path, "create-user", "a@example.com", "--admin", "--password", "long enough").returncode == 0
    with sqlite3.connect(tmp_path / "litejobs.db") as db:
        rows = dict(db.execute("SELECT email, is_admin FROM user"))
    assert rows == {"v@example.com": 0, "a@example.com": 1}


# -- 6. API key scopes ----------------------------------------------------------------------
WRITES = [
    (method.upper(), path)
    for path, item in openapi.document(loader.loaded_apps(), jobs.public_functions())["paths"].items()
    for method, op in item.items()
    if method in ("post", "put", "patch", "delete") and op.get("security") != []
]


@pytest.fixture
def reader(server_url):
    _, plain = models.ApiKey.create_key("reader", scope="read")
    return Client(server_url, plain)


@pytest.mark.parametrize(("method", "path"), WRITES, ids=[f"{m} {p}" for m, p in WRITES])
def test_a_read_key_gets_403_on_every_write(reader, method, path):
    concrete = path.replace("{name}", "echo").replace("{id}", "1").replace("{prefix}", "lj_abcde")
    concrete = concrete.replace("{enrollment_id}", "1").replace("{lesson_id}", "1").replace("{post_id}", "1")
    reply = reader.request(method, concrete, json_body={})
    assert_error(reply, 403, "forbidden")
    assert models.Job.select().count() == 0


def test_a_read_key_reads_but_not_the_key_list(reader):
    assert reader.get("/api/v1/jobs").status == 200
    assert reader.get("/api/v1/functions").status == 200
    assert_error(reader.get("/api/v1/keys"), 403, "forbidden")


def test_existing_keys_become_admin_keys_on_migration(tmp_path):
    path = tmp_path / "old.db"
    database = models.open_database(f"sqlite:///{path}")
    models.db.initialize(database)
    models.create_tables()
    _, plain = models.ApiKey.create_key("old")
    database.execute_sql('ALTER TABLE "apikey" DROP COLUMN "scope"')  # as the table was before scopes
    database.execute_sql('UPDATE "schemaversion" SET "version" = 1')  # migrations up to 1 applied
    database.close()
    models.create_tables()
    row = models.ApiKey.authenticate(plain)
    assert row is not None and row.scope == "admin"


# -- 12. Listing and revoking keys -----------------------------------------------------------
def test_keys_lists_every_live_key_with_its_use(tmp_path):
    created = cli(tmp_path, "create-key", "deploy-bot", "--scope", "read")
    assert created.returncode == 0, created.stderr
    assert cli(tmp_path, "create-key", "ops").returncode == 0
    listing = cli(tmp_path, "keys")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PREFIX", "SCOPE", "CREATED", "LAST", "USED", "CALLS", "TODAY"]
    prefix = created.stdout.strip().splitlines()[-1][:8]
    bot = next(line for line in lines if line.startswith("deploy-bot"))
    assert bot.split()[1:3] == [prefix, "read"] and bot.split()[-2:] == ["never", "0"]
    assert any(line.split()[:1] == ["ops"] and line.split()[2] == "admin" for line in lines)


def test_revoke_key_by_name_or_prefix(tmp_path):
    first = cli(tmp_path, "create-key", "one").stdout.strip().splitlines()[-1]
    cli(tmp_path, "create-key", "two")
    cli(tmp_path, "create-key", "two")
    assert cli(tmp_path, "revoke-key", first[:8]).returncode == 0
    ambiguous = cli(tmp_path, "revoke-key", "two")
    assert ambiguous.returncode != 0 and "give the prefix" in ambiguous.stderr and "Traceback" not in ambiguous.stderr
    unknown = cli(tmp_path, "revoke-key", "nobody")
    assert unknown.returncode != 0 and "no live API key" in unknown.stderr
    names = [line.split()[0] for line in cli(tmp_path, "keys").stdout.splitlines()[1:]]
    assert names == ["two", "two"]


def test_admin_api_lists_and_revokes_keys(client, server_url):
    _, plain = models.ApiKey.create_key("temporary", scope="read")
    other = Client(server_url, plain)
    assert other.get("/api/v1/jobs").status == 200  # now in this process's key cache
    keys = client.get("/api/v1/keys").json["keys"]
    entry = next(key for key in keys if key["name"] == "temporary")
    assert entry["prefix"] == plain[:8] and entry["scope"] == "read" and "key_hash" not in entry
    assert client.delete(f"/api/v1/keys/{plain[:8]}").status == 204
    assert_error(other.get("/api/v1/jobs"), 401, "unauthorized")
    assert_error(client.delete(f"/api/v1/keys/{plain[:8]}"), 404, "not_found")
    assert "temporary" not in [key["name"] for key in client.get("/api/v1/keys").json["keys"]]


def test_a_revoke_outside_the_api_is_seen_at_the_next_call(client, server_url):
    """As the command line revokes: this process's key cache is not emptied, yet the key stops at once."""
    _, plain = models.ApiKey.create_key("elsewhere", scope="read")
    other = Client(server_url, plain)
    assert other.get("/api/v1/jobs").status == 200  # now in the key cache
    models.ApiKey.revoke(plain[:8])
    assert_error(other.get("/api/v1/jobs"), 401, "unauthorized")
    assert client.get("/api/v1/jobs").status == 200


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_revoke_works_at_once_in_every_web_process(tmp_path):
    """Two web processes on one database: a key cached in one stops working there
    the moment the other (or the command line) revokes it."""
    data = tmp_path / "data"
    admin_key = cli(data, "create-key", "admin").stdout.strip().splitlines()[-1]
    victim = cli(data, "create-key", "victim").stdout.strip().splitlines()[-1]
    other = cli(data, "create-key", "other").stdout.strip().splitlines()[-1]
    first = WebProcess(data, tmp_path / "first.log")
    second = WebProcess(data, tmp_path / "second.log")
    try:
        for key in (victim, other):
            assert second.client(key).get("/api/v1/jobs").status == 200  # cached in the second process
        assert first.client(admin_key).delete(f"/api/v1/keys/{victim[:8]}").status == 204
        assert_error(second.client(victim).get("/api/v1/jobs"), 401, "unauthorized")
        assert cli(data, "revoke-key", "other").returncode == 0
        assert_error(second.client(other).get("/api/v1/jobs"), 401, "unauthorized")
        assert second.client(admin_key).get("/api/v1/jobs").status == 200  # other keys keep working
    finally:
        first.stop()
        second.stop()


# -- What held: every API operation needs a key ------------------------------------------------
PROTECTED = [
    (method.upper(), path)
    for path, item in openapi.document(loader.loaded_apps(), jobs.public_functions())["paths"].items()
    for method, op in item.items()
    if method in ("get", "post", "put", "patch", "delete") and op.get("security") != [] and path.startswith("/api/")
]


@pytest.mark.parametrize(("method", "path"), PROTECTED, ids=[f"{m} {p}" for m, p in PROTECTED])
@pytest.mark.parametrize("auth", [None, "Bearer lj_wrong", "Basic dXNlcjpwYXNz"])
def test_every_api_operation_needs_a_valid_key(anonymous, method, path, auth):
    concrete = path.replace("{name}", "echo").replace("{id}", "1").replace("{prefix}", "lj_abcde").replace("{code}", "X")
    concrete = concrete.replace("{enrollment_id}", "1").replace("{lesson_id}", "1").replace("{post_id}", "1")
    headers = {"Authorization": auth} if auth else {}
    reply = anonymous.request(method, concrete, json_body={}, headers=headers)
    assert_error(reply, 401, "unauthorized")
    assert len(PROTECTED) >= 33


def test_a_read_key_sees_order_pins_masked(client, reader):
    order = orders.Order.create(product_id="p", package_id="k", user_identifier="u", status="completed", pin_code="PIN-4711")
    assert client.get(f"/api/v1/orders/{order.id}").json["pin_code"] == "PIN-4711"
    assert reader.get(f"/api/v1/orders/{order.id}").json["pin_code"] == "••••"
    assert "PIN-4711" not in reader.get("/api/v1/orders").text
