"""content's jobs: analytics, trending hashtags, engagement scores, weekly digests, cleanup, media renditions."""

import datetime
import json
import logging
import re
import time

from huey.exceptions import RetryTask

import mailer
import media
import schedules
import settings
from apps.content.models import DailyAnalytics, DigestWeek, Media, Post, TrendingSnapshot, UserStats, delete_quiet_posts
from jobs import CLEANUP_BATCH, MAIL_RETRY, PERIODIC_RETRY, fail_now, progress, submit_many, task
from models import User, isoformat, utcnow

logger = logging.getLogger("litejobs.content")


# -- Analytics jobs ---------------------------------------------------------------
@task(queue="analytics", public=True, **PERIODIC_RETRY)
def update_post_statistics():
    """Recount per user: posts, likes, comments and shares received, last active.

    Runs on the `update_user_statistics` schedule; the function of that name is
    the knowledge app's (one search user's statistics, after each query)."""
    return {"users": UserStats.refresh(utcnow(), report=progress)}


@task(queue="analytics", public=True, **PERIODIC_RETRY)
def update_trending_hashtags():
    """Store the top 20 hashtags of the posts of the last 24 hours, with their counts."""
    now = utcnow()
    snapshot = TrendingSnapshot.compute(now, hours=24, limit=20)
    TrendingSnapshot.prune(now - datetime.timedelta(days=7))
    top = json.loads(snapshot.hashtags)
    return {"hashtags": len(top), "top": top[0] if top else None}


@task(queue="analytics", public=True, bounds={"days": (1, 366)}, **PERIODIC_RETRY)
def generate_content_analytics(days: int = 30):
    """Recompute the daily rows (new users, posts, likes, active users, mean engagement) of the last `days` UTC days."""
    now = utcnow()
    rows = DailyAnalytics.compute(now.date() - datetime.timedelta(days=days - 1), now.date(), now)
    return {
        "days": len(rows),
        "from": rows[0]["date"].isoformat(),
        "to": rows[-1]["date"].isoformat(),
        "posts": sum(row["posts"] for row in rows),
    }


@task(queue="analytics", public=True, **PERIODIC_RETRY)
def update_post_engagement_scores():
    """Score every post: likes + 2·comments + 3·shares, halved every ENGAGEMENT_HALF_LIFE_DAYS of age."""
    changed = Post.rescore(utcnow(), settings.ENGAGEMENT_HALF_LIFE_DAYS, report=progress)
    return {"posts": Post.select().count(), "changed": changed}


# -- The weekly digest ------------------------------------------------------------
WEEK = re.compile(r"(\d{4})-W(\d{2})")


def iso_week(day):
    """`2026-W48` for a date."""
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def week_bounds(week, tz=None):
    """The UTC bounds of the 7 days a digest of `week` covers: the week before its Monday, in TIMEZONE."""
    match = WEEK.fullmatch(week)
    try:
        monday = datetime.date.fromisocalendar(int(match[1]), int(match[2]), 1)
    except (TypeError, ValueError):
        raise ValueError(f"week: expected an ISO week such as 2026-W48, got {week!r}") from None
    tz = tz or schedules.zone()
    ends_at = schedules.to_utc(datetime.datetime.combine(monday, datetime.time()), tz)
    starts_at = schedules.to_utc(datetime.datetime.combine(monday - datetime.timedelta(days=7), datetime.time()), tz)
    return starts_at, ends_at


@task(queue="emails", public=True, **PERIODIC_RETRY)
def send_weekly_digest(week: str | None = None):
    """Queue one send_digest job per active user for `week` (e.g. 2026-W48; default: this week in TIMEZONE).

    Running it again queues nobody twice: users who have the week's digest, or
    an unfinished job for it, are left out.
    """
    week = week or iso_week(schedules.to_local(utcnow(), schedules.zone()).date())
    try:
        starts_at, ends_at = week_bounds(week)
    except ValueError as exc:
        fail_now(str(exc))
    DigestWeek.fetch(week, starts_at, ends_at)  # the top posts, once for every user's mail
    pending = DigestWeek.users_with_unfinished_job(week)
    user_ids = [u for (u,) in mailer.MailSent.users_without("digest", week).tuples() if u not in pending]
    for done in range(0, len(user_ids), 1000):
        progress(done, len(user_ids), f"queued digests for {done} of {len(user_ids)} users")
        submit_many("send_digest", [{"user_id": u, "week": week} for u in user_ids[done : done + 1000]])
    progress(len(user_ids), len(user_ids), "done")
    return {"week": week, "users": len(user_ids) + len(pending), "queued": len(user_ids)}


@task(queue="emails", public=True, **MAIL_RETRY)
def send_digest(user_id: int, week: str):
    """Mail one user the digest of `week`: its top posts and their own numbers; never twice a week."""
    user = User.get_or_none(User.id == user_id)
    if user is None or not user.active:
        return {"user_id": str(user_id), "week": week, "sent": False, "reason": "no active user with this id"}
    try:
        starts_at, ends_at = week_bounds(week)
    except ValueError as exc:
        fail_now(str(exc))
    digest = DigestWeek.fetch(week, starts_at, ends_at)
    sent = mailer.send_mail_once(
        user,
        "digest",
        week,
        "digest",
        message_id=mailer.message_id(f"digest.{week}.{user.id}"),
        week=week,
        first_day=schedules.to_local(digest.starts_at, schedules.zone()).date(),
        last_day=schedules.to_local(digest.ends_at, schedules.zone()).date() - datetime.timedelta(days=1),
        posts=digest.posts,
        numbers=Post.numbers_of(user.id, digest.starts_at, digest.ends_at),
    )
    return {"user_id": str(user.id), "week": week, "sent": sent}


# -- Cleanup ------------------------------------------------------------------------
@task(queue="maintenance", public=True, **PERIODIC_RETRY)
def cleanup_old_posts():
    """Delete posts older than POST_RETENTION_DAYS that nobody liked, commented on or shared, with their media files."""
    before = utcnow() - datetime.timedelta(days=settings.POST_RETENTION_DAYS)
    posts = images = 0
    while True:
        deleted, tokens = delete_quiet_posts(before, CLEANUP_BATCH)
        for token in tokens:
            media.remove_tree(settings.UPLOAD_DIR / token)
            (settings.INCOMING_DIR / token).unlink(missing_ok=True)
        posts, images = posts + deleted, images + len(tokens)
        if deleted < CLEANUP_BATCH:
            break
        progress(posts, None, f"deleted {posts} posts")
        time.sleep(0.005)  # lets waiting writers take the lock between batches
    return {"deleted_posts": posts, "deleted_media": images, "before": isoformat(before)}


# -- Media renditions ----------------------------------------------------------
# limit: two decodes at once across all consumers by default (each may hold
# MEDIA_MEMORY_MB); CONCURRENCY_LIMITS=process_media_upload=N changes it.
@task(queue="media", retries=2, retry_delay=10, limit=2)
def process_media_upload(media_id: int):
    """Check an uploaded image and write its WebP renditions: web 1600 px, thumbnails 640 and 320 px.

    A file that is not a whole JPEG, PNG, WebP or GIF, or is over
    IMAGE_MAX_PIXELS, marks the media rejected and fails the job at once.
    """
    item = Media.get_or_none(Media.id == media_id)
    if item is None:
        return None  # its post was deleted since
    if item.status == "processing":
        try:
            info = media.off_the_loop(media.make_renditions, item.original_path, item.folder)
        except media.ImageRejected as exc:
            _reject_media(item, str(exc))
        except media.MemoryBusy as exc:  # other decodes hold the memory: wait for them, not a failure
            raise RetryTask(f"{exc}; trying again in 2 s", delay=2) from None
        except FileNotFoundError:
            if item.original_path.exists():
                raise
            _reject_media(item, "the uploaded file was lost before it was processed; upload it again")
        else:
            item.mark_ready(info["width"], info["height"], info["renditions"])
            logger.info("media %s: %s %sx%s ready", item.id, info["format"], info["width"], info["height"])
        item.original_path.unlink(missing_ok=True)  # with its EXIF and GPS: only the renditions stay
        item = Media.get_by_id(item.id)
    if item.status == "rejected":
        fail_now(f"media {media_id} rejected: {item.error}")
    return {"media_id": str(item.id), "status": item.status, "width": item.width, "height": item.height}


def _reject_media(item, error):
    # A concurrent run may have finished it meanwhile: then its outcome stands.
    if item.reject(error):
        media.remove_tree(item.folder)
        item.original_path.unlink(missing_ok=True)
        logger.info("media %s rejected: %s", item.id, error)
