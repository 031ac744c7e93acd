"""litejobs analytics: posts, what is computed from them, and the weekly digest.

Posts with their likes, comments, shares, hashtags and media (an uploaded
image's row; courses.py's process_media_upload makes its renditions). Per-user
statistics, daily numbers, trending hashtags and engagement scores, each
recomputed from the data by a scheduled job; the weekly digest mail
(send_weekly_digest queues one send_digest job per user); and
cleanup_old_posts.
"""

import datetime
import json
import math
import re
import secrets

from peewee import (
    SQL,
    CharField,
    DateField,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    TextField,
    chunked,
    fn,
)

import settings
from models import TERMINAL, BaseModel, Job, User, db, isoformat, utcnow


# -- Posts ---------------------------------------------------------------------------
# A hashtag is `#` and a word with at least one letter, not glued to a word before it.
HASHTAG = re.compile(r"(?<![\w#&])#(\w*[^\W\d_]\w*)")
HASHTAG_MAX = 64


def hashtags(text):
    """The distinct hashtags of `text`, lowercased, in the order they appear."""
    tags = []
    for tag in HASHTAG.findall(text):
        tag = tag.lower()
        if len(tag) <= HASHTAG_MAX and tag not in tags:
            tags.append(tag)
    return tags


def _as_datetime(value):
    """A stored time as a datetime: SQLite hands aggregates (MAX, MIN) back as text."""
    if isinstance(value, str):
        return datetime.datetime.fromisoformat(value)
    return value


def _as_date(value):
    """A date from what the driver returns for DATE(…): text, a date, or (coerced by peewee) a datetime."""
    if isinstance(value, str):
        return datetime.date.fromisoformat(value[:10])
    return value.date() if isinstance(value, datetime.datetime) else value


class Post(BaseModel):
    """Something a user wrote; its likes, comments, shares and hashtags are rows of their own."""

    author = ForeignKeyField(User, backref="posts", on_delete="CASCADE")
    body = TextField()
    created_at = DateTimeField(default=utcnow, index=True)
    # Written by update_post_engagement_scores: likes + 2·comments + 3·shares,
    # and that number decayed by the post's age.
    engagement = IntegerField(default=0)
    engagement_score = FloatField(default=0.0, index=True)
    scored_at = DateTimeField(null=True)

    @classmethod
    def publish(cls, author_id, body, created_at=None):
        """Create a post and its hashtags."""
        with db.atomic():
            post = cls.create(author=author_id, body=body, created_at=created_at or utcnow())
            rows = [(post.id, tag, post.created_at) for tag in hashtags(body)]
            if rows:
                PostTag.insert_many(rows, fields=[PostTag.post, PostTag.tag, PostTag.created_at]).execute()
        return post

    def to_dict(self):
        return {
            "id": str(self.id),
            "author_id": str(self.author_id),
            "body": self.body,
            "hashtags": [row.tag for row in self.hashtags.order_by(PostTag.id)],
            "likes": self.likes.count(),
            "comments": self.comments.count(),
            "shares": self.shares.count(),
            "engagement_score": round(self.engagement_score, 3),
            "created_at": isoformat(self.created_at),
        }

    @classmethod
    def interactions(cls, created_from=None, created_before=None):
        """{post id: (likes, comments, shares)} over posts created in [from, before), all when None."""
        counts = {}
        for position, model in enumerate((Like, Comment, Share)):
            query = model.select(model.post, fn.COUNT(model.id)).group_by(model.post)
            if created_from is not None or created_before is not None:
                query = query.join(Post).where(_between(Post.created_at, created_from, created_before))
            for post_id, n in query.tuples().iterator():
                counts.setdefault(post_id, [0, 0, 0])[position] = n
        return counts

    @classmethod
    def rescore(cls, now, half_life_days, report=None, batch=2000):
        """Set every post's engagement and its score decayed by age; returns how many posts changed.

        The score halves every `half_life_days`. Rows are written a batch per
        transaction, so other writers wait at most one batch.
        """
        counts = cls.interactions()
        changed = []
        query = cls.select(cls.id, cls.created_at, cls.engagement, cls.engagement_score).tuples().iterator()
        for post_id, created_at, old_engagement, old_score in query:
            likes, comments, shares = counts.get(post_id, (0, 0, 0))
            engagement = likes + 2 * comments + 3 * shares
            age_days = max((now - created_at).total_seconds(), 0) / 86400
            score = round(engagement * math.pow(0.5, age_days / half_life_days), 6)
            if engagement != old_engagement or score != old_score:
                changed.append((engagement, score, now, post_id))
        sql = 'UPDATE "post" SET "engagement" = {p}, "engagement_score" = {p}, "scored_at" = {p} WHERE "id" = {p}'
        sql = sql.format(p=db.param)
        done = 0
        for chunk in chunked(changed, batch):
            with db.atomic():
                # executemany: one prepared UPDATE for the batch, 10x faster than a query object per row.
                db.cursor().executemany(sql, chunk)
            done += len(chunk)
            if report:
                report(done, len(changed), f"scored {done} of {len(changed)} changed posts")
        return len(changed)

    @classmethod
    def top(cls, created_from, created_before, limit=5):
        """The posts created in [from, before) with the most engagement now, as dicts for a mail."""
        counts = cls.interactions(created_from, created_before)
        ranked = sorted(counts.items(), key=lambda item: (-(item[1][0] + 2 * item[1][1] + 3 * item[1][2]), item[0]))
        ids = [post_id for post_id, _ in ranked[:limit]]
        posts = {p.id: p for p in cls.select(cls, User).join(User).where(cls.id.in_(ids or [0]))}
        top = []
        for post_id in ids:
            likes, comments, shares = counts[post_id]
            post = posts[post_id]
            top.append(
                {
                    "id": post_id,
                    "author": post.author.name or post.author.email.split("@")[0],
                    "body": post.body if len(post.body) <= 280 else post.body[:279] + "…",
                    "likes": likes,
                    "comments": comments,
                    "shares": shares,
                    "engagement": likes + 2 * comments + 3 * shares,
                }
            )
        return top

    @classmethod
    def numbers_of(cls, author_id, created_from, created_before):
        """What a user did and received in [from, before): posts written, likes, comments and shares received."""
        numbers = {"posts": cls.select().where((cls.author == author_id) & _between(cls.created_at, created_from, created_before)).count()}
        for name, model in (("likes", Like), ("comments", Comment), ("shares", Share)):
            numbers[name] = (
                model.select()
                .join(Post)
                .where((Post.author == author_id) & _between(model.created_at, created_from, created_before))
                .count()
            )
        return numbers


def _between(field, low=None, high=None):
    """`low <= field < high`, either bound optional."""
    condition = SQL("1 = 1")
    if low is not None:
        condition &= field >= low
    if high is not None:
        condition &= field < high
    return condition


class Like(BaseModel):
    user = ForeignKeyField(User, backref="likes", on_delete="CASCADE")
    post = ForeignKeyField(Post, backref="likes", on_delete="CASCADE")
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        indexes = ((("post", "user"), True),)  # one like per user and post


class Comment(BaseModel):
    user = ForeignKeyField(User, backref="comments", on_delete="CASCADE")
    post = ForeignKeyField(Post, backref="comments", on_delete="CASCADE")
    body = TextField(default="")
    created_at = DateTimeField(default=utcnow, index=True)


class Share(BaseModel):
    user = ForeignKeyField(User, backref="shares", on_delete="CASCADE")
    post = ForeignKeyField(Post, backref="shares", on_delete="CASCADE")
    created_at = DateTimeField(default=utcnow, index=True)


class PostTag(BaseModel):
    """A hashtag of a post, with the post's time so trending needs no join."""

    post = ForeignKeyField(Post, backref="hashtags", on_delete="CASCADE")
    tag = CharField(max_length=HASHTAG_MAX)
    created_at = DateTimeField()

    class Meta:
        indexes = ((("created_at", "tag"), False),)


# -- Media ----------------------------------------------------------------------------
class Media(BaseModel):
    """An image uploaded to a post; its WebP renditions live in UPLOAD_DIR/<token>/.

    The original waits in INCOMING_DIR/<token> (never served) until
    process_media_upload has made the renditions or rejected it.
    """

    post = ForeignKeyField(Post, backref="media", on_delete="CASCADE")
    token = CharField(unique=True)  # the folder name: random, so rendition URLs cannot be guessed
    status = CharField(default="processing")  # processing | ready | rejected
    error = TextField(null=True)
    filename = CharField(default="")
    size_bytes = IntegerField(default=0)
    width = IntegerField(null=True)  # of the upright original
    height = IntegerField(null=True)
    renditions = TextField(null=True)  # JSON {name: [width, height]}
    job_id = CharField(null=True)
    created_at = DateTimeField(default=utcnow)
    processed_at = DateTimeField(null=True)

    RENDITIONS = ("web", "thumb_640", "thumb_320")

    @staticmethod
    def new_token():
        return secrets.token_urlsafe(18)

    @property
    def folder(self):
        return settings.UPLOAD_DIR / self.token

    @property
    def original_path(self):
        return settings.INCOMING_DIR / self.token

    @classmethod
    def of_post(cls, post_id):
        return cls.select().where(cls.post == post_id).order_by(cls.id)

    def set_job(self, job_id):
        self.job_id = job_id
        Media.update(job_id=job_id).where(Media.id == self.id).execute()

    def mark_ready(self, width, height, renditions):
        """Record the renditions; True unless another run got there first."""
        fields = {"status": "ready", "error": None, "processed_at": utcnow()}
        fields.update(width=width, height=height, renditions=json.dumps(renditions))
        return Media.update(**fields).where((Media.id == self.id) & (Media.status == "processing")).execute() == 1

    def reject(self, error):
        fields = {"status": "rejected", "error": error, "processed_at": utcnow()}
        return Media.update(**fields).where((Media.id == self.id) & (Media.status == "processing")).execute() == 1

    def urls(self):
        ready = self.status == "ready"
        return {name: f"/uploads/{self.token}/{name}.webp" if ready else None for name in self.RENDITIONS}

    def accepted_dict(self):
        """The answer to an upload: accepted, processing in the background."""
        return {
            "id": str(self.id),
            "post_id": str(self.post_id),
            "status": self.status,
            "job_id": self.job_id,
            "url": f"/api/v1/media/{self.id}",
        }

    def to_dict(self):
        return {
            "id": str(self.id),
            "post_id": str(self.post_id),
            "status": self.status,
            "error": self.error,
            "width": self.width,
            "height": self.height,
            "urls": self.urls(),
            "sizes": json.loads(self.renditions) if self.renditions else None,
            "filename": self.filename,
            "size_bytes": self.size_bytes,
            "job_id": self.job_id,
            "created_at": isoformat(self.created_at),
            "processed_at": isoformat(self.processed_at),
        }


def delete_quiet_posts(before, limit):
    """Delete up to `limit` posts created before `before` that nobody liked, commented on or shared.

    One transaction: the posts, their hashtags and their media rows. Returns
    (posts deleted, tokens of their media); the caller removes the media files
    afterwards, so a failure in between leaves orphan files (which
    cleanup_old_cache sweeps), never a post whose pictures are gone.
    """
    untouched = (
        ~fn.EXISTS(Like.select(Like.id).where(Like.post == Post.id))
        & ~fn.EXISTS(Comment.select(Comment.id).where(Comment.post == Post.id))
        & ~fn.EXISTS(Share.select(Share.id).where(Share.post == Post.id))
    )
    with db.atomic():
        query = Post.select(Post.id).where((Post.created_at < before) & untouched).order_by(Post.id).limit(limit)
        ids = [row.id for row in query]
        if not ids:
            return 0, []
        tokens = [row.token for row in Media.select(Media.token).where(Media.post.in_(ids))]
        for model in (Media, PostTag):
            model.delete().where(model.post.in_(ids)).execute()
        Post.delete().where(Post.id.in_(ids)).execute()
    return len(ids), tokens


# -- Numbers computed from the posts ----------------------------------------------
class UserStats(BaseModel):
    """Per-user numbers, written by update_post_statistics."""

    user = ForeignKeyField(User, primary_key=True, backref="stats", on_delete="CASCADE")
    posts = IntegerField(default=0)
    likes_received = IntegerField(default=0)
    comments_received = IntegerField(default=0)
    shares_received = IntegerField(default=0)
    last_active_at = DateTimeField(null=True)
    updated_at = DateTimeField(default=utcnow)

    @classmethod
    def refresh(cls, now, report=None):
        """Recount every user's posts, what they received and when they last did anything; returns how many users."""
        posts = dict(Post.select(Post.author, fn.COUNT(Post.id)).group_by(Post.author).tuples())
        received = {}
        for name, model in (("likes", Like), ("comments", Comment), ("shares", Share)):
            query = model.select(Post.author, fn.COUNT(model.id)).join(Post).group_by(Post.author)
            received[name] = dict(query.tuples())
        # Last activity: the newest post, like, comment or share of the user, or their last login.
        last = {}
        for model, who in ((Post, Post.author), (Like, Like.user), (Comment, Comment.user), (Share, Share.user)):
            for user_id, newest in model.select(who, fn.MAX(model.created_at)).group_by(who).tuples():
                newest = _as_datetime(newest)
                if user_id not in last or newest > last[user_id]:
                    last[user_id] = newest
        rows = []
        for user_id, last_login in User.select(User.id, User.last_active_at).tuples():
            active = max(filter(None, (last.get(user_id), last_login)), default=None)
            rows.append(
                (
                    user_id,
                    posts.get(user_id, 0),
                    received["likes"].get(user_id, 0),
                    received["comments"].get(user_id, 0),
                    received["shares"].get(user_id, 0),
                    active,
                    now,
                )
            )
        fields = [cls.user, cls.posts, cls.likes_received, cls.comments_received, cls.shares_received, cls.last_active_at, cls.updated_at]
        done = 0
        # A transaction per chunk: other writers wait at most one chunk, and progress shows.
        for chunk in chunked(rows, 1000):
            with db.atomic():
                for part in chunked(chunk, 250):
                    cls.insert_many(part, fields=fields).on_conflict(conflict_target=[cls.user], preserve=fields[1:]).execute()
            done += len(chunk)
            if report:
                report(done, len(rows), f"{done} of {len(rows)} users")
        return len(rows)

    def to_dict(self):
        return {
            "user_id": str(self.user_id),
            "posts": self.posts,
            "likes_received": self.likes_received,
            "comments_received": self.comments_received,
            "shares_received": self.shares_received,
            "last_active_at": isoformat(self.last_active_at),
            "updated_at": isoformat(self.updated_at),
        }


class DailyAnalytics(BaseModel):
    """One UTC day's numbers, written by generate_content_analytics."""

    date = DateField(unique=True)
    new_users = IntegerField(default=0)
    posts = IntegerField(default=0)
    likes = IntegerField(default=0)
    comments = IntegerField(default=0)
    shares = IntegerField(default=0)
    active_users = IntegerField(default=0)
    # Mean of likes + 2·comments + 3·shares over the posts written that day.
    mean_engagement = FloatField(default=0.0)
    computed_at = DateTimeField(default=utcnow)

    @classmethod
    def compute(cls, first_day, last_day, now):
        """Recompute the rows of the UTC days first_day..last_day (dates, inclusive); returns them."""
        since = datetime.datetime.combine(first_day, datetime.time())
        until = datetime.datetime.combine(last_day + datetime.timedelta(days=1), datetime.time())

        def per_day(model, *where):
            day = fn.DATE(model.created_at)
            query = model.select(day, fn.COUNT(model.id)).where(_between(model.created_at, since, until), *where)
            return {_as_date(d): n for d, n in query.group_by(day).tuples()}

        new_users = per_day(User)
        posts = per_day(Post)
        likes, comments, shares = per_day(Like), per_day(Comment), per_day(Share)
        # Active: wrote, liked, commented or shared that day. UNION drops repeats.
        parts = [
            model.select(fn.DATE(model.created_at).alias("day"), who.alias("who")).where(
                _between(model.created_at, since, until)
            )
            for model, who in ((Post, Post.author), (Like, Like.user), (Comment, Comment.user), (Share, Share.user))
        ]
        union = (parts[0] | parts[1] | parts[2] | parts[3]).alias("activity")
        active_query = union.select_from(union.c.day, fn.COUNT(union.c.who)).group_by(union.c.day)
        active = {_as_date(d): n for d, n in active_query.tuples()}
        counts = Post.interactions(since, until)
        engagement = {}
        for post_id, created_at in Post.select(Post.id, Post.created_at).where(_between(Post.created_at, since, until)).tuples():
            likes_n, comments_n, shares_n = counts.get(post_id, (0, 0, 0))
            engagement.setdefault(created_at.date(), []).append(likes_n + 2 * comments_n + 3 * shares_n)
        rows = []
        day = first_day
        while day <= last_day:
            scores = engagement.get(day, [])
            rows.append(
                {
                    "date": day,
                    "new_users": new_users.get(day, 0),
                    "posts": posts.get(day, 0),
                    "likes": likes.get(day, 0),
                    "comments": comments.get(day, 0),
                    "shares": shares.get(day, 0),
                    "active_users": active.get(day, 0),
                    "mean_engagement": round(sum(scores) / len(scores), 3) if scores else 0.0,
                    "computed_at": now,
                }
            )
            day += datetime.timedelta(days=1)
        update = [f for f in cls._meta.sorted_fields if f.name not in ("id", "date")]
        with db.atomic():
            for chunk in chunked(rows, 100):
                cls.insert_many(chunk).on_conflict(conflict_target=[cls.date], preserve=update).execute()
        return rows

    @classmethod
    def recent(cls, days, today=None):
        """The rows of the last `days` UTC days up to `today`, oldest first."""
        today = today or utcnow().date()
        first = today - datetime.timedelta(days=days - 1)
        return cls.select().where((cls.date >= first) & (cls.date <= today)).order_by(cls.date)

    def to_dict(self):
        return {
            "date": _as_date(self.date).isoformat(),
            "new_users": self.new_users,
            "posts": self.posts,
            "likes": self.likes,
            "comments": self.comments,
            "shares": self.shares,
            "active_users": self.active_users,
            "mean_engagement": self.mean_engagement,
            "computed_at": isoformat(self.computed_at),
        }


class TrendingSnapshot(BaseModel):
    """The top hashtags as one run of update_trending_hashtags computed them."""

    computed_at = DateTimeField(default=utcnow, index=True)
    window_hours = IntegerField()
    hashtags = TextField()  # JSON: [{"tag": "python", "count": 42}, …]

    @classmethod
    def compute(cls, now, hours=24, limit=20):
        """Count the hashtags of posts written in the last `hours`, keep the top `limit`; returns the snapshot."""
        count = fn.COUNT(PostTag.id)
        query = (
            PostTag.select(PostTag.tag, count)
            .where((PostTag.created_at > now - datetime.timedelta(hours=hours)) & (PostTag.created_at <= now))
            .group_by(PostTag.tag)
            .order_by(count.desc(), PostTag.tag)
            .limit(limit)
        )
        top = [{"tag": tag, "count": n} for tag, n in query.tuples()]
        return cls.create(computed_at=now, window_hours=hours, hashtags=json.dumps(top))

    @classmethod
    def latest(cls):
        return cls.select().order_by(cls.computed_at.desc(), cls.id.desc()).first()

    @classmethod
    def prune(cls, before):
        return cls.delete().where(cls.computed_at < before).execute()

    def to_dict(self):
        return {"computed_at": isoformat(self.computed_at), "window_hours": self.window_hours, "hashtags": json.loads(self.hashtags)}


class DigestWeek(BaseModel):
    """What every digest of one week shows: the week's top posts, computed once."""

    week = CharField(primary_key=True)  # ISO week of the Monday it is sent, e.g. 2026-W48
    starts_at = DateTimeField()  # UTC bounds of the 7 days it covers
    ends_at = DateTimeField()
    top_posts = TextField()  # JSON list, see Post.top()
    created_at = DateTimeField(default=utcnow)

    @classmethod
    def fetch(cls, week, starts_at, ends_at):
        """The week's row, computing its top posts the first time."""
        row = cls.get_or_none(cls.week == week)
        if row is None:
            top = json.dumps(Post.top(starts_at, ends_at))
            cls.insert(week=week, starts_at=starts_at, ends_at=ends_at, top_posts=top).on_conflict_ignore().execute()
            row = cls.get(cls.week == week)
        return row

    @property
    def posts(self):
        return json.loads(self.top_posts)

    @classmethod
    def users_with_unfinished_job(cls, week):
        """Ids of the users whose send_digest job for `week` has not finished yet."""
        query = Job.select(Job.args).where((Job.name == "send_digest") & Job.status.not_in(TERMINAL))
        return {args["user_id"] for args in (json.loads(a) for (a,) in query.tuples()) if args.get("week") == week}
