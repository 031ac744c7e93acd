"""Schedules as data: added, edited and deleted at run time over the API and the
dashboard, stored in the database, logged, and run by the scheduler's ticks
(driven with `now`, as tests/test_periodic.py does) once per tick across schedulers."""

import datetime
import json
import re
import subprocess
import sys
import threading

import pytest
from peewee import SqliteDatabase

import jobs
import loader
import models
import schedules
import schema
from helpers import ROOT, assert_error, base_env, wait_until
from models import Job, ScheduleChange, ScheduleRun, StoredSchedule
from test_dashboard import EMAIL, PASSWORD, Browser

NIGHTLY = {"name": "nightly-echo", "function": "echo", "cron": "30 2 * * *", "args": {"value": {"report": "sales"}}}


def at(text):
    return datetime.datetime.fromisoformat(text)


def patch(client, path, body):
    return client.request("PATCH", path, json_body=body)


def listed(client):
    return {s["name"]: s for s in client.get("/api/v1/schedules").json["schedules"]}


def make_scheduler():
    return schedules.Scheduler(jobs.huey, threading.Event(), 1, True)


# -- The API ---------------------------------------------------------------------------
def test_added_schedule_runs_its_function_with_its_args_on_a_tick(client, consumer):
    reply = client.post("/api/v1/schedules", {**NIGHTLY, "timezone": "Europe/Berlin", "queue": "maintenance"})
    assert reply.status == 201, reply.body
    assert reply.headers["Location"] == "/api/v1/schedules/nightly-echo"
    added = reply.json
    assert {k: added[k] for k in ("function", "cron", "args", "queue", "timezone", "source", "overridden")} == {
        "function": "echo",
        "cron": "30 2 * * *",
        "args": {"value": {"report": "sales"}},
        "queue": "maintenance",
        "timezone": "Europe/Berlin",
        "source": "api",
        "overridden": False,
    }
    assert listed(client)["nightly-echo"] == added
    # 02:30 in Berlin is 01:30 UTC in winter; 02:30 UTC is not a tick of it.
    assert "echo" not in [j.name for j in schedules.tick(at("2026-11-23T02:30"))]
    started = [j for j in schedules.tick(at("2026-11-23T01:30")) if j.name == "echo"]
    assert len(started) == 1 and started[0].queue == "maintenance"
    job = wait_until(lambda: Job.get_by_id(started[0].id).status == "succeeded" and Job.get_by_id(started[0].id))
    assert json.loads(job.result) == {"report": "sales"} and job.args_dict == NIGHTLY["args"]
    assert listed(client)["nightly-echo"]["last_job_id"] == job.id


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"cron": "0 25 * * *"}, "cron", "25 is not a valid input"),
        ({"cron": "0 2 * *"}, "cron", "5 fields"),
        ({"cron": "*/0 * * * *"}, "cron", "step cannot be zero"),
        ({"cron": "0 0 31 2 *"}, "cron", "never runs"),
        ({"cron": 5}, "cron", "expected a crontab"),
        ({"function": "no_such_function"}, "function", "no loaded function"),
        ({"function": None}, "function", "no loaded function"),
        ({"args": [1]}, "args", "JSON object"),
        ({"args": {"value": 1, "other": 2}}, "args.other", "unknown argument"),
        ({"function": "sleep", "args": {"seconds": "ten"}}, "args.seconds", "expected float"),
        ({"function": "sleep", "args": {"seconds": 600}}, "args.seconds", "from 0 to 60"),
        ({"function": "sleep", "args": {}}, "args.seconds", "missing required argument"),
        ({"timezone": "Mars/Olympus"}, "timezone", "IANA time zone"),
        ({"timezone": "../etc/passwd"}, "timezone", "IANA time zone"),
        ({"queue": "no spaces"}, "queue", "queue name"),
        ({"name": "has space"}, "name", "letters, digits"),
        ({"name": "new"}, "name", "reserved"),
        ({"color": "red"}, "color", "unknown field"),
    ],
)
def test_add_refuses_each_bad_field_with_422_naming_it(client, body, field, words):
    error = assert_error(client.post("/api/v1/schedules", {**NIGHTLY, **body}), 422, "invalid_argument", field)
    assert words in error["message"]
    assert StoredSchedule.select().count() == 0 and ScheduleChange.select().count() == 0
    if field != "name" and None not in body.values():
        # The same check on an edit, which changes nothing.
        assert client.post("/api/v1/schedules", NIGHTLY).status == 201
        assert_error(patch(client, "/api/v1/schedules/nightly-echo", body), 422, "invalid_argument", field)
        assert listed(client)["nightly-echo"]["cron"] == NIGHTLY["cron"] and ScheduleChange.select().count() == 1


@pytest.mark.parametrize("missing", ["name", "function", "cron"])
def test_add_needs_name_function_and_cron(client, missing):
    body = {k: v for k, v in NIGHTLY.items() if k != missing}
    assert_error(client.post("/api/v1/schedules", body), 422, "invalid_argument", missing)


def test_a_taken_name_is_a_conflict(client):
    assert client.post("/api/v1/schedules", NIGHTLY).status == 201
    assert_error(client.post("/api/v1/schedules", NIGHTLY), 409, "conflict")
    assert_error(client.post("/api/v1/schedules", {**NIGHTLY, "name": "prune_job_history"}), 409, "conflict")


def test_edited_code_schedule_uses_its_new_cron_and_delete_resets_it(client):
    reply = patch(client, "/api/v1/schedules/poll_pending_orders", {"cron": "7 * * * *"})
    assert reply.status == 200, reply.body
    assert reply.json["cron"] == "7 * * * *" and reply.json["source"] == "code" and reply.json["overridden"] is True
    assert "poll_pending_orders" not in [j.name for j in schedules.tick(at("2026-11-23T10:05"))]
    polls = [j for j in schedules.tick(at("2026-11-23T10:07")) if j.name == "poll_pending_orders"]
    assert len(polls) == 1
    Job.mark_finished(polls[0].id, "succeeded")

    assert client.delete("/api/v1/schedules/poll_pending_orders").status == 204
    back = listed(client)["poll_pending_orders"]
    assert back["cron"] == "*/5 * * * *" and back["overridden"] is False
    assert StoredSchedule.select().count() == 0
    assert "poll_pending_orders" in [j.name for j in schedules.tick(at("2026-11-23T10:10"))]
    # Deleting a code schedule never removes it: a second reset changes nothing.
    assert client.delete("/api/v1/schedules/poll_pending_orders").status == 204
    assert "poll_pending_orders" in listed(client)


def test_an_edit_back_to_the_declared_value_is_no_override(client):
    patch(client, "/api/v1/schedules/prune_job_history", {"cron": "0 3 * * *", "timezone": "Asia/Tokyo"})
    reply = patch(client, "/api/v1/schedules/prune_job_history", {"cron": "0 1 * * *", "timezone": None})
    assert reply.json["overridden"] is False and reply.json["timezone"] == "UTC"
    assert StoredSchedule.select().count() == 0


def test_added_schedule_is_edited_then_deleted(client):
    client.post("/api/v1/schedules", NIGHTLY)
    reply = patch(client, "/api/v1/schedules/nightly-echo", {"cron": "0 6 * * 1-5", "args": {"value": 2}, "queue": "q2"})
    assert reply.status == 200
    assert (reply.json["cron"], reply.json["args"], reply.json["queue"]) == ("0 6 * * 1-5", {"value": 2}, "q2")
    assert patch(client, "/api/v1/schedules/nightly-echo", {"queue": None}).json["queue"] == "default"
    assert_error(patch(client, "/api/v1/schedules/nightly-echo", {"name": "other"}), 422, "invalid_argument", "name")
    assert client.delete("/api/v1/schedules/nightly-echo").status == 204
    assert "nightly-echo" not in listed(client)
    assert_error(client.get("/api/v1/schedules/nightly-echo"), 404, "not_found")
    assert_error(client.delete("/api/v1/schedules/nightly-echo"), 404, "not_found")
    assert_error(patch(client, "/api/v1/schedules/nightly-echo", {"cron": "* * * * *"}), 404, "not_found")
    # The name is free again.
    assert client.post("/api/v1/schedules", NIGHTLY).status == 201


def test_pause_resume_and_run_now_work_on_an_added_schedule(client, consumer):
    client.post("/api/v1/schedules", {**NIGHTLY, "cron": "* * * * *"})
    assert client.post("/api/v1/schedules/nightly-echo/pause").json["paused"] is True
    assert "echo" not in [j.name for j in schedules.tick(at("2026-11-23T10:00"))]
    run = client.post("/api/v1/schedules/nightly-echo/run")
    assert run.status == 202 and run.json["name"] == "echo" and run.json["args"] == NIGHTLY["args"]
    wait_until(lambda: Job.get_by_id(run.json["id"]).status == "succeeded")
    assert client.post("/api/v1/schedules/nightly-echo/resume").json["paused"] is False
    assert [j.name for j in schedules.tick(at("2026-11-23T10:01")) if j.name == "echo"] == ["echo"]


def test_every_change_is_logged_with_who_when_and_what(client):
    client.post("/api/v1/schedules", NIGHTLY)
    patch(client, "/api/v1/schedules/nightly-echo", {"cron": "0 4 * * *"})
    client.post("/api/v1/schedules/nightly-echo/pause")
    patch(client, "/api/v1/schedules/send_weekly_digest", {"cron": "0 8 * * 1"})
    client.delete("/api/v1/schedules/send_weekly_digest")
    shown = client.get("/api/v1/schedules/nightly-echo").json
    assert shown["cron"] == "0 4 * * *"
    changes = shown["changes"]
    assert [c["action"] for c in changes] == ["paused", "edited", "added"]
    assert {c["who"] for c in changes} == {"API key tests"}
    assert changes[1]["before"]["cron"] == "30 2 * * *" and changes[1]["after"]["cron"] == "0 4 * * *"
    assert changes[2]["before"] is None and changes[2]["after"]["args"] == NIGHTLY["args"]
    assert all(models.parse_time(c["at"]) <= models.utcnow() for c in changes)
    digest = client.get("/api/v1/schedules/send_weekly_digest").json["changes"]
    assert [(c["action"], c["before"]["cron"], c["after"]["cron"]) for c in digest] == [
        ("reset", "0 8 * * 1", "0 9 * * 1"),
        ("edited", "0 9 * * 1", "0 8 * * 1"),
    ]


# -- Ticks across schedulers and processes ---------------------------------------------
def test_two_schedulers_on_the_same_minute_run_an_added_schedule_once(client):
    client.post("/api/v1/schedules", {**NIGHTLY, "cron": "0 10 * * *"})
    schedulers = [make_scheduler() for _ in range(4)]
    barrier = threading.Barrier(len(schedulers))
    started = []

    def tick(scheduler):
        barrier.wait()
        started.extend(scheduler.enqueue_periodic_tasks(at("2026-11-23T10:00:01")))

    threads = [threading.Thread(target=tick, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [j.name for j in started].count("echo") == 1
    assert Job.select().where(Job.name == "echo").count() == 1
    assert ScheduleRun.select().where(ScheduleRun.schedule == "nightly-echo").count() == 1


def test_two_schedulers_share_an_added_schedule_on_postgresql(postgres_database):
    import schedule_edits

    schedule_edits.add(NIGHTLY | {"cron": "0 10 * * *"}, who="test")
    first, second = make_scheduler(), make_scheduler()
    started = first.enqueue_periodic_tasks(at("2026-11-23T10:00:01")) + second.enqueue_periodic_tasks(
        at("2026-11-23T10:00:02")
    )
    assert [j.name for j in started].count("echo") == 1
    assert Job.select().where(Job.name == "echo").count() == 1
    # Its job unfinished, the next day's tick is skipped (no overlap), by either scheduler.
    assert [j for j in first.enqueue_periodic_tasks(at("2026-11-24T10:00:01")) if j.name == "echo"] == []


def test_schedules_are_read_again_only_after_a_change(client):
    first = schedules.all_schedules()
    assert schedules.all_schedules() is first  # no change: the rows were not read again
    client.post("/api/v1/schedules", NIGHTLY)
    second = schedules.all_schedules()
    assert second is not first and "nightly-echo" in second and "nightly-echo" not in first
    assert schedules.all_schedules() is second


SCHEDULER_PROCESS = """
import datetime, sys, jobs, schedules
scheduler = schedules.Scheduler(jobs.huey, None, 1, True)
for line in sys.stdin:
    started = scheduler.enqueue_periodic_tasks(datetime.datetime.fromisoformat(line.strip()))
    for job in started:
        jobs.Job.mark_finished(job.id, "succeeded")
    print(",".join(sorted(j.name for j in started if j.name == "echo")), flush=True)
"""


def test_an_edit_reaches_a_running_scheduler_in_another_process(client, fresh_storage):
    """The consumer's scheduler reads the schedules again when the change log moves: no restart."""
    client.post("/api/v1/schedules", {**NIGHTLY, "cron": "0 10 * * *"})
    env = base_env(
        DATA_DIR=str(fresh_storage),
        DATABASE_URL=f"sqlite:///{fresh_storage / 'app.db'}",
        QUEUE_URL=f"sqlite:///{fresh_storage / 'app.db'}",
        LOG_LEVEL="WARNING",
    )
    process = subprocess.Popen(
        [sys.executable, "-c", SCHEDULER_PROCESS], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:

        def tick(when):
            process.stdin.write(when + "\n")
            process.stdin.flush()
            return process.stdout.readline().strip()

        assert tick("2026-11-23T10:00") == "echo"
        assert tick("2026-11-23T11:00") == ""
        assert patch(client, "/api/v1/schedules/nightly-echo", {"cron": "0 11 * * *"}).status == 200
        assert tick("2026-11-24T11:00") == "echo"
        assert client.delete("/api/v1/schedules/nightly-echo").status == 204
        assert tick("2026-11-25T11:00") == ""
    finally:
        process.stdin.close()
        process.wait(30)
    assert process.returncode == 0


def test_an_existing_database_gets_the_new_tables_by_migration(tmp_path):
    database = models.open_database(f"sqlite:///{tmp_path / 'old.db'}")
    models.db.initialize(database)
    try:
        schema.upgrade(loader.loaded_apps())
        database.drop_tables([StoredSchedule, ScheduleChange])
        models.SchemaVersion.delete().execute()
        models.SchemaVersion.create(version=2)  # as left by the release before these tables
        assert {name: v for name, v, _ in schema.status(loader.loaded_apps())}["engine"] == 2
        schema.upgrade(loader.loaded_apps())
        assert {"storedschedule", "schedulechange"} <= set(database.get_tables())
        assert {name: v for name, v, _ in schema.status(loader.loaded_apps())}["engine"] == len(models.MIGRATIONS)
        assert isinstance(database, SqliteDatabase)
    finally:
        database.close()


# -- The dashboard ------------------------------------------------------------------------
@pytest.fixture
def logged_in(server_url):
    """A browser logged in to the dashboard."""
    models.User.create(email=EMAIL, password_hash=models.User.hash_password(PASSWORD), is_admin=True)
    browser = Browser(server_url)
    assert browser.login().status == 303
    return browser


def form(**fields):
    return {"name": "", "function": "", "cron": "", "args": "", "queue": "", "timezone": "", **fields}


def test_dashboard_form_previews_the_next_five_runs_then_adds(logged_in):
    page = logged_in.get("/schedules/new")
    assert page.status == 200 and 'name="csrf_token"' in page.text
    typed = form(name="weekday-echo", function="echo", cron="0 9 * * 1-5", args='{"value": 1}', timezone="America/New_York")
    preview = logged_in.submit("/schedules/new", {**typed, "action": "preview"}, page="/schedules/new")
    assert preview.status == 200
    runs = re.findall(r"<li>(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC)</li>", preview.text)
    # 09:00 in New York (EST) on the next five weekdays is 14:00 UTC.
    assert len(runs) == 5 and all(run.endswith("14:00:00 UTC") for run in runs)
    assert all(datetime.datetime.strptime(r, "%Y-%m-%d %H:%M:%S UTC").weekday() < 5 for r in runs)
    assert "not saved yet" in preview.text and 'value="weekday-echo"' in preview.text
    assert StoredSchedule.select().count() == 0  # a preview stores nothing

    saved = logged_in.submit("/schedules/new", {**typed, "action": "save"}, page="/schedules/new")
    assert saved.status == 303 and saved.getheader("Location").endswith("/schedules/weekday-echo")
    item = schedules.find_schedule("weekday-echo")
    assert (item.function, item.args, item.timezone, item.source) == ("echo", {"value": 1}, "America/New_York", "api")
    page = logged_in.get("/schedules/weekday-echo").text
    assert "added" in page and f"user {EMAIL}" in page and "Delete this schedule" in page
    assert 'href="/schedules/weekday-echo"' in logged_in.get("/schedules").text


def test_dashboard_form_shows_a_bad_cron_and_keeps_what_was_typed(logged_in):
    typed = form(name="bad", function="echo", cron="0 25 * * *", args='{"value": 1}')
    for action in ("preview", "save"):
        reply = logged_in.submit("/schedules/new", {**typed, "action": action}, page="/schedules/new")
        assert reply.status == 422
        assert "25 is not a valid input" in reply.text and 'value="0 25 * * *"' in reply.text
    reply = logged_in.submit("/schedules/new", {**typed, "cron": "0 2 * * *", "args": "{oops", "action": "save"}, page="/schedules/new")
    assert reply.status == 422 and "not valid JSON" in reply.text
    assert StoredSchedule.select().count() == 0


def test_dashboard_edits_and_resets_a_code_schedule(logged_in):
    page = logged_in.get("/schedules/send_weekly_digest")
    assert page.status == 200 and 'value="0 9 * * 1"' in page.text and "Reset" not in page.text
    edited = form(function="send_weekly_digest", cron="0 8 * * 1", action="save")
    reply = logged_in.submit("/schedules/send_weekly_digest", edited, page="/schedules/send_weekly_digest")
    assert reply.status == 303
    assert schedules.find_schedule("send_weekly_digest").cron == "0 8 * * 1"
    page = logged_in.get("/schedules/send_weekly_digest").text
    assert "Reset to the code" in page and "edited" in page and f"user {EMAIL}" in page
    reply = logged_in.submit("/schedules/send_weekly_digest/delete", page="/schedules/send_weekly_digest")
    assert reply.status == 303
    assert schedules.find_schedule("send_weekly_digest").cron == "0 9 * * 1"
    assert [c["action"] for c in changes_of("send_weekly_digest")] == ["reset", "edited"]


def changes_of(name):
    return [change.to_dict() for change in ScheduleChange.of(name)]


def test_dashboard_schedule_forms_need_the_csrf_token(logged_in):
    assert logged_in.post("/schedules/new", form(name="x", function="echo", cron="* * * * *", action="save")).status == 403
    assert logged_in.post("/schedules/prune_job_history/delete").status == 403
    assert logged_in.get("/schedules/no_such_schedule").status == 404
    assert StoredSchedule.select().count() == 0


def test_schedule_pages_need_a_login(server_url):
    reply = Browser(server_url).get("/schedules/new")
    assert reply.status == 303 and "/login" in reply.getheader("Location")
