"""Periodic work: schedules (crontab in TIMEZONE, pause, run now, one run per tick
across consumers), the housekeeping and analytics jobs on small known data, and
mail through a real local SMTP server (aiosmtpd) or the outbox."""

import datetime
import email
import json
import os
import subprocess
import sys
import threading
import zoneinfo
from email import policy

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from helpers import ROOT, assert_error, free_port, wait_until, base_env

from apps import demo
from apps.accounts import tasks as account_tasks
from apps.content import tasks as analytics
import jobs
import mailer
import models
import schedules
import settings
import web
from apps.content.models import Comment, DailyAnalytics, Like, Post, Share, UserStats
from mailer import MailSent
from models import ApiKey, Job, Token, User, utcnow
from schedules import ScheduleRun, ScheduleState

HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)
ISSUE_4 = {
    "poll_pending_orders": "*/5 * * * *",
    "cleanup_expired_tokens": "0 2 * * *",
    "update_user_statistics": "0 3 * * *",
    "update_trending_hashtags": "0 * * * *",
    "generate_content_analytics": "0 4 * * *",
    "update_post_engagement_scores": "0 5 * * *",
    "send_weekly_digest": "0 9 * * 1",
    "reset_daily_quotas": "0 0 * * *",
    "prune_job_history": "0 1 * * *",
}


def at(text):
    return datetime.datetime.fromisoformat(text)


def make_scheduler():
    return schedules.Scheduler(jobs.huey, threading.Event(), 1, True)


def jobs_named(name):
    return list(Job.select().where(Job.name == name))


def drain(now=None):
    """Run every queued job here, in this thread (huey's execute, as a worker would); returns how many."""
    ran = 0
    while (task := jobs.huey.dequeue()) is not None:
        jobs.huey.execute(task, now)
        ran += 1
    return ran


def run_retries():
    """Run the retries waiting in huey's schedule, as if their delay had passed."""
    later = datetime.datetime.now() + DAY
    for task in jobs.huey.read_schedule(later):
        jobs.huey.enqueue(task)
    return drain(later)


def user(email, name="", **fields):
    return User.create(email=email, name=name, **fields)


# -- Crontabs and next runs ------------------------------------------------------------
@pytest.mark.parametrize(
    "zone, cron, after, expected",
    [
        ("UTC", "0 2 * * *", "2026-11-23T10:00", ["2026-11-24T02:00", "2026-11-25T02:00"]),
        ("UTC", "0 9 * * 1", "2026-11-23T09:00", ["2026-11-30T09:00"]),
        ("Asia/Kolkata", "0 2 * * *", "2026-11-23T10:00", ["2026-11-23T20:30", "2026-11-24T20:30"]),
        # New York leaves summer time on 1 November 2026: the Monday digest moves an hour in UTC.
        ("America/New_York", "0 9 * * 1", "2026-10-20T00:00", ["2026-10-26T13:00", "2026-11-02T14:00"]),
        # Berlin springs forward at 02:00 on 29 March 2026: 02:00 never shows, the job runs at the jump.
        ("Europe/Berlin", "0 2 * * *", "2026-03-28T12:00", ["2026-03-29T01:00", "2026-03-30T00:00"]),
        ("Europe/Berlin", "0 * * * *", "2026-03-28T23:30", ["2026-03-29T00:00", "2026-03-29T01:00", "2026-03-29T02:00"]),
        # ... and falls back at 03:00 on 25 October: 02:30 happens twice, a daily job runs once.
        ("Europe/Berlin", "30 2 * * *", "2026-10-24T12:00", ["2026-10-25T00:30", "2026-10-26T01:30"]),
        ("Europe/Berlin", "0 * * * *", "2026-10-24T23:30", ["2026-10-25T00:00", "2026-10-25T01:00", "2026-10-25T02:00"]),
        ("Europe/Berlin", "*/20 * * * *", "2026-10-25T00:30", ["2026-10-25T00:40", "2026-10-25T01:00", "2026-10-25T01:20"]),
    ],
)
def test_next_run_reads_the_crontab_in_the_time_zone(zone, cron, after, expected):
    schedule = schedules.Schedule("job", cron)
    runs = schedule.runs(at(after), zoneinfo.ZoneInfo(zone))
    assert [next(runs) for _ in expected] == [at(t) for t in expected]
    assert schedule.next_run(at(after), zoneinfo.ZoneInfo(zone)) == at(expected[0])


def test_bad_crontab_is_refused_with_its_name():
    with pytest.raises(ValueError, match="schedule nightly: bad crontab '0 25 \\* \\* \\*'"):
        schedules.Schedule("nightly", "0 25 * * *")
    with pytest.raises(ValueError, match="5 fields"):
        schedules.Schedule("nightly", "0 2 * *")


def test_next_run_follows_the_timezone_setting(client, monkeypatch):
    monkeypatch.setattr(settings, "TIMEZONE", "Asia/Kolkata")
    listed = {s["name"]: s for s in client.get("/api/v1/schedules").json["schedules"]}
    expected = schedules.SCHEDULES["cleanup_expired_tokens"].next_run(utcnow(), zoneinfo.ZoneInfo("Asia/Kolkata"))
    assert listed["cleanup_expired_tokens"]["next_run"] == models.isoformat(expected)
    assert expected.minute == 30  # 02:00 in India is hh:30 in UTC
    assert listed["cleanup_expired_tokens"]["timezone"] == "Asia/Kolkata"


# -- Schedules over the API ------------------------------------------------------------
def test_schedule_list_has_every_schedule_with_cron_next_and_last_run(client):
    reply = client.get("/api/v1/schedules")
    assert reply.status == 200
    schedules = {s["name"]: s for s in reply.json["schedules"]}
    assert {name: schedules[name]["cron"] for name in ISSUE_4} == ISSUE_4
    for schedule in schedules.values():
        assert set(schedule) >= {"name", "cron", "paused", "next_run", "last_run", "last_status", "last_job_id"}
        assert schedule["paused"] is False and schedule["last_run"] is None and schedule["next_run"].endswith("Z")
    poll = models.parse_time(schedules["poll_pending_orders"]["next_run"])
    assert poll.minute % 5 == 0 and utcnow() < poll <= utcnow() + datetime.timedelta(minutes=5)


def test_pause_resume_and_run_now(client, consumer):
    paused = client.post("/api/v1/schedules/update_trending_hashtags/pause")
    assert paused.status == 200 and paused.json["paused"] is True and paused.json["next_run"] is None
    assert ScheduleState.get_by_id("update_trending_hashtags").paused

    # Run now works on a paused schedule too: it is the operator's explicit wish.
    run = client.post("/api/v1/schedules/update_trending_hashtags/run")
    assert run.status == 202 and run.json["name"] == "update_trending_hashtags"
    assert run.headers["Location"] == f"/api/v1/jobs/{run.json['id']}"
    wait_until(lambda: Job.get_by_id(run.json["id"]).status == "succeeded", message="run-now job")

    listed = {s["name"]: s for s in client.get("/api/v1/schedules").json["schedules"]}["update_trending_hashtags"]
    assert listed["last_job_id"] == run.json["id"] and listed["last_status"] == "succeeded"
    assert listed["last_run"] is not None and listed["paused"] is True

    resumed = client.post("/api/v1/schedules/update_trending_hashtags/resume")
    assert resumed.status == 200 and resumed.json["paused"] is False and resumed.json["next_run"]


def test_run_now_refuses_to_overlap_an_unfinished_job(client):
    first = client.post("/api/v1/schedules/reset_daily_quotas/run")  # no consumer: it stays queued
    assert first.status == 202
    error = assert_error(client.post("/api/v1/schedules/reset_daily_quotas/run"), 409, "conflict")
    assert first.json["id"] in error["message"]


@pytest.mark.parametrize("action", ["pause", "resume", "run"])
def test_unknown_schedule_is_404(client, action):
    assert_error(client.post(f"/api/v1/schedules/nope/{action}"), 404, "not_found")


def test_schedule_actions_need_post(client):
    assert_error(client.get("/api/v1/schedules/reset_daily_quotas/run"), 405, "method_not_allowed")


# -- The scheduler's minute loop ----------------------------------------------------
def test_scheduler_ticks_once_a_minute_and_coalesces_a_stall():
    scheduler = make_scheduler()
    assert [j.name for j in scheduler.enqueue_periodic_tasks(at("2026-11-23T10:00:05"))] == [
        "poll_pending_orders",
        "update_trending_hashtags",
        "send_usage_statistics",
        "process_sync_queue",
    ]
    assert scheduler.enqueue_periodic_tasks(at("2026-11-23T10:00:59")) == []  # same minute
    assert scheduler.enqueue_periodic_tasks(at("2026-11-23T10:04:00")) == []  # nothing due
    for job in Job.select():
        models.Job.mark_finished(job.id, "succeeded")
    # A stalled scheduler (10:04 -> 10:21) runs a missed schedule once, for the latest tick.
    started = scheduler.enqueue_periodic_tasks(at("2026-11-23T10:21:00"))
    assert [j.name for j in started] == ["poll_pending_orders", "process_sync_queue"]
    assert ScheduleRun.get(ScheduleRun.job_id == started[0].id).slot == at("2026-11-23T10:20")
    state = ScheduleState.get_by_id("poll_pending_orders")
    assert state.last_job_id == started[0].id and state.last_run is not None


def test_tick_in_the_time_zone_setting(monkeypatch):
    monkeypatch.setattr(settings, "TIMEZONE", "America/New_York")
    # Monday 09:00 in New York (EST) is 14:00 UTC; 09:00 UTC is nothing special there.
    assert "send_weekly_digest" not in [j.name for j in schedules.tick(at("2026-11-23T09:00"))]
    assert "send_weekly_digest" in [j.name for j in schedules.tick(at("2026-11-23T14:00"))]


def test_two_schedulers_on_the_same_tick_run_it_once():
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
    names = sorted(job.name for job in Job.select())
    assert names == ["poll_pending_orders", "process_sync_queue", "send_usage_statistics", "update_trending_hashtags"]
    assert sorted(j.name for j in started) == names
    assert ScheduleRun.select().count() == 4


def test_two_schedulers_share_one_postgresql_database(postgres_database):
    first, second = make_scheduler(), make_scheduler()
    started = first.enqueue_periodic_tasks(at("2026-11-23T10:00:01")) + second.enqueue_periodic_tasks(
        at("2026-11-23T10:00:02")
    )
    assert sorted(j.name for j in started) == [
        "poll_pending_orders",
        "process_sync_queue",
        "send_usage_statistics",
        "update_trending_hashtags",
    ]
    assert Job.select().count() == 4


def test_tick_is_skipped_while_the_previous_job_is_unfinished():
    first = schedules.tick(at("2026-11-23T11:00"))
    poll = next(j for j in first if j.name == "poll_pending_orders")
    assert schedules.tick(at("2026-11-23T11:05")) == []  # the 11:00 poll is still queued
    skipped = ScheduleRun.get((ScheduleRun.schedule == "poll_pending_orders") & (ScheduleRun.slot == at("2026-11-23T11:05")))
    assert skipped.job_id is None and poll.id in skipped.note
    Job.mark_finished(poll.id, "succeeded")
    assert [j.name for j in schedules.tick(at("2026-11-23T11:10"))] == ["poll_pending_orders"]


def test_paused_schedule_does_not_run_and_stays_paused_after_a_restart(client, fresh_storage):
    assert client.post("/api/v1/schedules/poll_pending_orders/pause").status == 200
    assert "poll_pending_orders" not in [j.name for j in schedules.tick(at("2026-11-23T10:00"))]
    # A new process (a restarted consumer) on the same database: still paused, still no run.
    code = (
        "import datetime, jobs, schedules; s = schedules.Scheduler(jobs.huey, None, 1, True); "
        "started = s.enqueue_periodic_tasks(datetime.datetime(2026, 11, 23, 10, 5)); "
        "print(schedules.ScheduleState.get_by_id('poll_pending_orders').paused, [j.name for j in started])"
    )
    env = base_env()
    env.update(
        DATA_DIR=str(fresh_storage),
        DATABASE_URL=f"sqlite:///{fresh_storage / 'app.db'}",
        QUEUE_URL=f"sqlite:///{fresh_storage / 'app.db'}",
        LOG_LEVEL="WARNING",
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True []"
    assert jobs_named("poll_pending_orders") == []
    listed = {s["name"]: s for s in client.get("/api/v1/schedules").json["schedules"]}
    assert listed["poll_pending_orders"]["paused"] is True
    client.post("/api/v1/schedules/poll_pending_orders/resume")
    assert [j.name for j in schedules.tick(at("2026-11-23T10:10"))] == ["poll_pending_orders"]


# -- Housekeeping ------------------------------------------------------------------------
def test_cleanup_expired_tokens_removes_expired_and_keeps_live():
    ann = user("ann@example.com")
    now = utcnow()
    for kind, expires in [("session", now - HOUR), ("session", now + HOUR), ("password_reset", now - DAY), ("email", now + DAY)]:
        Token.create(user=ann, kind=kind, token_hash=os.urandom(8).hex(), expires_at=expires)
    result = account_tasks.cleanup_expired_tokens.call_local()
    assert result == {"deleted": 2, "by_kind": {"session": 1, "password_reset": 1}, "kept": 2, "login_failures": 0}
    assert sorted(t.kind for t in Token.select()) == ["email", "session"]
    assert all(t.expires_at > now for t in Token.select())
    assert account_tasks.cleanup_expired_tokens.call_local()["deleted"] == 0  # safe to run twice


def test_prune_removes_only_old_terminal_jobs():
    now = utcnow()
    old = now - datetime.timedelta(days=settings.JOB_HISTORY_DAYS + 1)
    recent = now - datetime.timedelta(days=settings.JOB_HISTORY_DAYS - 1)
    rows = {
        "old-succeeded": ("succeeded", old, old),
        "old-failed": ("failed", old, old),
        "old-canceled": ("canceled", old, old),
        "old-but-running": ("running", old, None),
        "old-but-queued": ("queued", old, None),
        "old-enqueued-recently-finished": ("succeeded", old, recent),
        "recent-succeeded": ("succeeded", recent, recent),
    }
    for job_id, (status, enqueued, finished) in rows.items():
        Job.create(id=job_id, name="echo", status=status, enqueued_at=enqueued, finished_at=finished)
    # Enough old jobs for several batches, to see the loop go round.
    Job.insert_many(
        [{"id": f"bulk-{n}", "name": "echo", "status": "succeeded", "enqueued_at": old, "finished_at": old} for n in range(1200)]
    ).execute()
    result = jobs.prune_job_history.call_local()
    assert result["deleted"] == 1203
    assert sorted(j.id for j in Job.select()) == sorted(
        ["old-but-running", "old-but-queued", "old-enqueued-recently-finished", "recent-succeeded"]
    )


def test_reset_daily_quotas_zeroes_every_key():
    used, _ = ApiKey.create_key("used")
    ApiKey.create_key("idle")
    ApiKey.update(calls_today=42).where(ApiKey.id == used.id).execute()
    assert account_tasks.reset_daily_quotas.call_local() == {"keys_reset": 1}
    assert [k.calls_today for k in ApiKey.select()] == [0, 0]


# -- Posts and analytics ------------------------------------------------------------------
def make_known_data():
    """Three users, posts on two known UTC days, and reactions with known times."""
    today = utcnow().date()
    day1 = datetime.datetime.combine(today - 3 * DAY, datetime.time(9))  # three days ago, 09:00
    day2 = day1 + DAY
    ann = user("ann@example.com", "Ann", created_at=day1 - 10 * DAY)
    bob = user("bob@example.com", "Bob", created_at=day1 + HOUR)
    cat = user("cat@example.com", "Cat", created_at=day2 + HOUR, last_active_at=day2 + 5 * HOUR)
    p1 = Post.publish(ann.id, "Hello #Python and #sqlite", created_at=day1)
    p2 = Post.publish(ann.id, "More #python", created_at=day1 + 2 * HOUR)
    p3 = Post.publish(bob.id, "Bob here #jobs", created_at=day2)
    for who, post, when in [(bob, p1, day1 + HOUR), (cat, p1, day2 + HOUR), (ann, p3, day2 + HOUR), (bob, p2, day2 + 2 * HOUR)]:
        Like.create(user=who, post=post, created_at=when)
    Comment.create(user=bob, post=p1, body="nice", created_at=day1 + 3 * HOUR)
    Share.create(user=bob, post=p1, created_at=day2 + 3 * HOUR)
    return {"day1": day1, "day2": day2, "users": (ann, bob, cat), "posts": (p1, p2, p3)}


@pytest.fixture
def known_data():
    return make_known_data()


def test_user_statistics_on_known_data(known_data):
    ann, bob, cat = known_data["users"]
    day2 = known_data["day2"]
    assert analytics.update_post_statistics.call_local() == {"users": 3}
    stats = {s.user_id: s for s in UserStats.select()}
    assert (stats[ann.id].posts, stats[ann.id].likes_received, stats[ann.id].comments_received, stats[ann.id].shares_received) == (2, 3, 1, 1)
    assert (stats[bob.id].posts, stats[bob.id].likes_received) == (1, 1)
    assert (stats[cat.id].posts, stats[cat.id].likes_received) == (0, 0)
    assert stats[ann.id].last_active_at == day2 + HOUR  # her like of Bob's post
    assert stats[bob.id].last_active_at == day2 + 3 * HOUR  # his share
    assert stats[cat.id].last_active_at == day2 + 5 * HOUR  # her last login, later than her like
    analytics.update_post_statistics.call_local()  # run twice: same numbers, no duplicate rows
    assert UserStats.select().count() == 3 and UserStats.get_by_id(ann.id).likes_received == 3


def test_content_analytics_on_known_data(known_data, client):
    day1, day2 = known_data["day1"].date(), known_data["day2"].date()
    result = analytics.generate_content_analytics.call_local(days=7)
    assert result["days"] == 7 and result["posts"] == 3
    days = {row["date"]: row for row in client.get("/api/v1/analytics/daily?days=7").json["days"]}
    assert len(days) == 7 and list(days) == sorted(days)
    first, second = days[day1.isoformat()], days[day2.isoformat()]
    # Day 1: Bob joined; Ann wrote two posts; Bob liked and commented. p1 = 2 likes + 2·1 comment + 3·1 share = 7, p2 = 1.
    assert (first["new_users"], first["posts"], first["likes"], first["active_users"]) == (1, 2, 1, 2)
    assert first["mean_engagement"] == 4.0
    # Day 2: Cat joined; Bob wrote p3 (1 like); Cat, Ann and Bob reacted.
    assert (second["new_users"], second["posts"], second["likes"], second["active_users"]) == (1, 1, 3, 3)
    assert second["mean_engagement"] == 1.0
    empty = days[(day2 + DAY).isoformat()]
    assert (empty["posts"], empty["likes"], empty["active_users"], empty["mean_engagement"]) == (0, 0, 0, 0.0)
    analytics.generate_content_analytics.call_local(days=7)
    assert DailyAnalytics.select().count() == 7  # recomputed in place


def test_engagement_scores_decay_by_age(known_data, monkeypatch):
    p1, p2, p3 = known_data["posts"]
    monkeypatch.setattr(settings, "ENGAGEMENT_HALF_LIFE_DAYS", 1.0)
    assert analytics.update_post_engagement_scores.call_local() == {"posts": 3, "changed": 3}
    scores = {p.id: p for p in Post.select()}
    assert [scores[p.id].engagement for p in (p1, p2, p3)] == [7, 1, 1]
    age = (utcnow() - known_data["day1"]).total_seconds() / 86400
    assert scores[p1.id].engagement_score == pytest.approx(7 * 0.5**age, rel=1e-3)
    assert scores[p3.id].engagement_score == pytest.approx(0.5 ** (age - 1), rel=1e-3)
    assert scores[p1.id].engagement_score > scores[p3.id].engagement_score > scores[p2.id].engagement_score


def test_periodic_jobs_on_postgresql(postgres_database, outbox):
    data = make_known_data()
    ann = data["users"][0]
    assert analytics.update_post_statistics.call_local() == {"users": 3}
    assert UserStats.get_by_id(ann.id).likes_received == 3
    analytics.generate_content_analytics.call_local(days=7)
    first = DailyAnalytics.get(DailyAnalytics.date == data["day1"].date())
    assert (first.posts, first.likes, first.active_users, first.mean_engagement) == (2, 1, 2, 4.0)
    assert analytics.update_post_engagement_scores.call_local()["changed"] == 3
    assert Post.get_by_id(data["posts"][0].id).engagement == 7
    analytics.update_trending_hashtags.call_local()
    assert account_tasks.cleanup_expired_tokens.call_local()["deleted"] == 0
    assert jobs.prune_job_history.call_local()["deleted"] == 0
    week = analytics.iso_week(utcnow().date())
    assert analytics.send_weekly_digest.call_local(week=week)["queued"] == 3
    assert drain() == 3 and len(list(outbox.glob("*.eml"))) == 3
    assert analytics.send_weekly_digest.call_local(week=week)["queued"] == 0


def test_trending_hashtags_count_the_last_24_hours(client):
    assert client.get("/api/v1/analytics/trending").json == {"computed_at": None, "window_hours": 24, "hashtags": []}
    ann = user("ann@example.com")
    now = utcnow()
    for body, age in [
        ("#python #jobs", HOUR),
        ("#Python again, #python twice in one post counts once", 2 * HOUR),
        ("#sqlite", 3 * HOUR),
        ("#jobs", 23 * HOUR),
        ("#old news #python", 25 * HOUR),
        ("no tags, a#b is no tag and neither is #1", HOUR),
    ]:
        Post.publish(ann.id, body, created_at=now - age)
    result = analytics.update_trending_hashtags.call_local()
    assert result == {"hashtags": 3, "top": {"tag": "jobs", "count": 2}}
    reply = client.get("/api/v1/analytics/trending").json
    assert reply["hashtags"] == [{"tag": "jobs", "count": 2}, {"tag": "python", "count": 2}, {"tag": "sqlite", "count": 1}]
    assert reply["computed_at"].endswith("Z")


def test_create_post_extracts_hashtags(client):
    ann = user("ann@example.com")
    reply = client.post("/api/v1/posts", {"author_id": str(ann.id), "body": "Shipping #LiteJobs today #python"})
    assert reply.status == 201, reply.body
    post = reply.json
    assert post["author_id"] == str(ann.id) and post["hashtags"] == ["litejobs", "python"]
    assert post["likes"] == 0 and post["created_at"].endswith("Z")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"body": "hi"}, "author_id"),
        ({"author_id": "999", "body": "hi"}, "author_id"),
        ({"author_id": True, "body": "hi"}, "author_id"),
        ({"author_id": "1"}, "body"),
        ({"author_id": "1", "body": "   "}, "body"),
        ({"author_id": "1", "body": "x" * 10001}, "body"),
        ({"author_id": "1", "body": "hi", "title": "x"}, "title"),
    ],
)
def test_create_post_validates(client, body, field):
    user("ann@example.com")
    assert_error(client.post("/api/v1/posts", body), 422, "invalid_argument", field)


@pytest.mark.parametrize("days", ["0", "367", "ten"])
def test_daily_analytics_validates_days(client, days):
    assert_error(client.get(f"/api/v1/analytics/daily?days={days}"), 422, "invalid_argument", "days")


def test_demo_data_fills_realistic_rows():
    counts = demo.fill(40, 400, weeks=2, seed=7)
    assert counts["users"] == User.select().count() == 40
    assert counts["posts"] == Post.select().count() == 400
    assert counts["likes"] == Like.select().count() > 400
    assert counts["hashtags"] > 200 and counts["comments"] > 0 and counts["shares"] > 0
    now = utcnow()
    assert Post.select().where(Post.created_at < now - datetime.timedelta(weeks=2, minutes=1)).count() == 0
    assert Like.select().join(Post).where(Like.created_at < Post.created_at).count() == 0
    assert Like.select().where(Like.created_at > now).count() == 0
    # Run it again: more of the same, no clash.
    assert demo.fill(10, 20, seed=8)["users"] == 10 and User.select().count() == 50


# -- Mail --------------------------------------------------------------------------------
class Inbox:
    """An aiosmtpd handler that keeps what it receives; `refuse` holds replies to give first."""

    def __init__(self):
        self.messages = []
        self.refuse = []

    async def handle_DATA(self, server, session, envelope):
        if self.refuse:
            return self.refuse.pop(0)
        self.messages.append(email.message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"

    def text(self, message):
        return message.get_body(("plain",)).get_content()

    def html(self, message):
        return message.get_body(("html",)).get_content()


def _start_smtp(monkeypatch, **options):
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    return inbox, controller


@pytest.fixture
def smtp(monkeypatch):
    """A real SMTP server on a free port, and SMTP_URL pointing at it."""
    inbox, controller = _start_smtp(monkeypatch)
    monkeypatch.setattr(settings, "SMTP_URL", f"smtp://127.0.0.1:{controller.port}")
    yield inbox
    controller.stop()


@pytest.fixture
def outbox(monkeypatch, tmp_path):
    folder = tmp_path / "outbox"
    monkeypatch.setattr(settings, "SMTP_URL", "")
    monkeypatch.setattr(settings, "OUTBOX_DIR", folder)
    return folder


def test_creating_a_user_sends_the_welcome_mail_once(client, consumer, outbox):
    reply = client.post("/api/v1/users", {"email": "Ann@Example.com", "name": "Ann"})
    assert reply.status == 201, reply.body
    created = reply.json
    assert created["email"] == "ann@example.com" and created["name"] == "Ann" and created["active"] is True
    job = wait_until(lambda: Job.get_or_none((Job.name == "send_welcome_email") & (Job.status == "succeeded")), message="welcome job")
    assert job.args_dict == {"user_id": int(created["id"])}
    files = list(outbox.glob("*.eml"))
    assert len(files) == 1 and not list(outbox.glob(".*.tmp"))
    message = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert message["To"] == "ann@example.com" and "Welcome" in message["Subject"]
    assert "Hello Ann" in message.get_body(("plain",)).get_content()
    assert "<strong>ann@example.com</strong>" in message.get_body(("html",)).get_content()
    # The same job again (at-least-once delivery): no second mail.
    again = jobs.enqueue("send_welcome_email", user_id=int(created["id"]))
    assert wait_until(lambda: Job.get_by_id(again.id).is_terminal and Job.get_by_id(again.id)).result == json.dumps(
        {"user_id": created["id"], "sent": False}
    )
    assert len(list(outbox.glob("*.eml"))) == 1


def test_create_user_rejects_duplicates_and_bad_input(client):
    assert client.post("/api/v1/users", {"email": "ann@example.com"}).status == 201
    assert_error(client.post("/api/v1/users", {"email": "ANN@example.com"}), 409, "conflict")
    assert_error(client.post("/api/v1/users", {"name": "no email"}), 422, "invalid_argument", "email")
    assert_error(client.post("/api/v1/users", {"email": "not-an-address"}), 422, "invalid_argument", "email")
    assert_error(client.post("/api/v1/users", {"email": "b@example.com", "name": 5}), 422, "invalid_argument", "name")
    assert_error(client.post("/api/v1/users", {"email": "b@example.com", "admin": True}), 422, "invalid_argument", "admin")
    assert User.select().count() == 1


def test_create_user_command_queues_the_welcome_mail(capsys):
    web.main(["create-user", "bea@example.com", "--admin", "--password", "long enough"])
    bea = User.get(User.email == "bea@example.com")
    assert bea.is_admin and bea.check_password("long enough")
    assert [job.args_dict for job in jobs_named("send_welcome_email")] == [{"user_id": bea.id}]


def test_transient_smtp_error_is_retried_then_delivered(smtp):
    ann = user("ann@example.com", "Ann")
    smtp.refuse = ["451 4.3.0 Try again later"]
    job = jobs.enqueue("send_welcome_email", user_id=ann.id)
    drain()
    job = Job.get_by_id(job.id)
    assert job.status == "retrying" and "451 4.3.0 Try again later" in job.error
    assert smtp.messages == [] and MailSent.select().count() == 0  # the claim was given back
    assert run_retries() == 1
    assert Job.get_by_id(job.id).status == "succeeded"
    assert [m["To"] for m in smtp.messages] == ["ann@example.com"]


def test_permanent_smtp_error_fails_the_job_with_the_reply(smtp):
    ann = user("ann@example.com", "Ann")
    smtp.refuse = ["550 5.1.1 Mailbox does not exist"]
    job = jobs.enqueue("send_welcome_email", user_id=ann.id)
    drain()
    job = Job.get_by_id(job.id)
    assert job.status == "failed"
    assert "550 5.1.1 Mailbox does not exist" in job.error and "ann@example.com" in job.error
    assert jobs.huey.scheduled_count() == 0  # no retry is waiting
    assert smtp.messages == [] and MailSent.select().count() == 0


def test_unreachable_smtp_server_is_a_transient_error(monkeypatch):
    monkeypatch.setattr(settings, "SMTP_URL", f"smtp://127.0.0.1:{free_port()}")
    ann = user("ann@example.com")
    job = jobs.enqueue("send_welcome_email", user_id=ann.id)
    drain()
    assert Job.get_by_id(job.id).status == "retrying"


def test_smtp_login_from_the_url(monkeypatch):
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret/x", handled=False)

    # Only PLAIN: smtplib falls back from a refused PLAIN to LOGIN, which stalls with aiosmtpd.
    options = {"authenticator": authenticator, "auth_require_tls": False, "auth_exclude_mechanism": ["LOGIN"]}
    inbox, controller = _start_smtp(monkeypatch, **options)
    try:
        message = mailer.compose("ann@example.com", "welcome", user=user("ann@example.com"), login_url="/login")
        mailer.deliver(message, f"smtp://robot%40example.com:s3cret%2Fx@127.0.0.1:{controller.port}")
        assert logins == [(b"robot@example.com", b"s3cret/x")] and len(inbox.messages) == 1
        with pytest.raises(mailer.PermanentMailError, match="535"):
            mailer.deliver(message, f"smtp://robot:wrong@127.0.0.1:{controller.port}")
    finally:
        controller.stop()


@pytest.fixture
def digest_week(monkeypatch):
    """Three users and their posts in the 7 days a digest of this week covers."""
    week = analytics.iso_week(utcnow().date())
    starts_at, _ = analytics.week_bounds(week)
    ann, bob = user("ann@example.com", "Ann"), user("bob@example.com", "Bob")
    user("gone@example.com", "Gone", active=False)
    best = Post.publish(ann.id, "The best post of the week #python", created_at=starts_at + DAY)
    runner_up = Post.publish(bob.id, "A good one too", created_at=starts_at + 2 * DAY)
    Post.publish(ann.id, "Before the week: not in it", created_at=starts_at - HOUR)
    for who in (ann, bob):
        Like.create(user=who, post=best, created_at=starts_at + 2 * DAY)
    Like.create(user=ann, post=runner_up, created_at=starts_at + 3 * DAY)
    Comment.create(user=bob, post=best, body="wow", created_at=starts_at + 2 * DAY)
    return week


def test_weekly_digest_arrives_once_per_user_and_week(smtp, consumer, digest_week):
    fan_out = jobs.enqueue("send_weekly_digest", week=digest_week)
    wait_until(lambda: len(smtp.messages) == 2, timeout=20, message="two digests")
    assert json.loads(Job.get_by_id(fan_out.id).result) == {"week": digest_week, "users": 2, "queued": 2}
    mails = {m["To"]: m for m in smtp.messages}
    assert set(mails) == {"ann@example.com", "bob@example.com"}  # not the inactive user
    ann_text = smtp.text(mails["ann@example.com"])
    assert "The best post of the week #python" in ann_text and "A good one too" in ann_text
    assert ann_text.index("The best post") < ann_text.index("A good one too")
    assert "Before the week" not in ann_text
    # Ann's own numbers: one post in the week, 2 likes and 1 comment received.
    assert "posts written:     1" in ann_text and "likes received:    2" in ann_text and "comments received: 1" in ann_text
    assert "likes received:    1" in smtp.text(mails["bob@example.com"])
    assert "The best post of the week #python" in smtp.html(mails["bob@example.com"])
    assert mails["ann@example.com"]["Message-ID"].startswith(f"<digest.{digest_week}.")

    # Re-run the fan-out, and one user's job: nobody gets a second digest.
    again = jobs.enqueue("send_weekly_digest", week=digest_week)
    ann = User.get(User.email == "ann@example.com")
    direct = jobs.enqueue("send_digest", user_id=ann.id, week=digest_week)
    wait_until(lambda: all(Job.get_by_id(j.id).is_terminal for j in (again, direct)), message="re-runs done")
    assert json.loads(Job.get_by_id(again.id).result)["queued"] == 0
    assert json.loads(Job.get_by_id(direct.id).result)["sent"] is False
    assert len(smtp.messages) == 2
    assert MailSent.select().where((MailSent.kind == "digest") & (MailSent.status == "sent")).count() == 2


def test_digest_rejects_a_bad_week():
    job = jobs.enqueue("send_weekly_digest", week="2026-48")
    drain()
    job = Job.get_by_id(job.id)
    assert job.status == "failed" and "expected an ISO week such as 2026-W48" in job.error
