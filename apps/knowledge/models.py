"""The knowledge app's tables: sync state and queue, users and their limits,
conversations, messages and the query cache.

The sandbox ingest's own tables (its documents and chunks) live in ingest.py,
beside the sandbox that owns them, as provider.py keeps SandboxOrder.
"""

import datetime
import json
import uuid
import zoneinfo

from peewee import (
    BooleanField,
    Case,
    CharField,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    IntegrityError,
    TextField,
    fn,
)

import settings
from models import BaseModel, db, isoformat, utcnow


def _uuid():
    return str(uuid.uuid4())


# -- Days in TIMEZONE: daily limits reset at local midnight ----------------------------
def local_day(now):
    """The date in TIMEZONE at naive-UTC time `now`."""
    tz = zoneinfo.ZoneInfo(settings.TIMEZONE)
    return now.replace(tzinfo=datetime.timezone.utc).astimezone(tz).date()


def next_midnight(now):
    """The next 00:00 in TIMEZONE after `now`, as naive UTC."""
    tz = zoneinfo.ZoneInfo(settings.TIMEZONE)
    day = local_day(now) + datetime.timedelta(days=1)
    local = datetime.datetime.combine(day, datetime.time(), tzinfo=tz)
    return local.astimezone(datetime.timezone.utc).replace(tzinfo=None)


# -- Sync -----------------------------------------------------------------------------
class SyncState(BaseModel):
    """The one row of sync bookkeeping: the ingest cursor reached, the lease that
    keeps two syncs from writing the store at once, the last full sync, and a
    generation that changes whenever the store does (it keys the query cache)."""

    id = IntegerField(primary_key=True)
    cursor = CharField(default="0")
    generation = IntegerField(default=0)
    lease_job_id = CharField(null=True)
    lease_kind = CharField(null=True)  # "full" or "incremental"
    lease_until = DateTimeField(null=True)
    last_sync_at = DateTimeField(null=True)
    full_started_at = DateTimeField(null=True)
    full_finished_at = DateTimeField(null=True)
    full_job_id = CharField(null=True)
    full_chunks = IntegerField(null=True)
    full_removed = IntegerField(null=True)

    class Meta:
        table_name = "knowledge_sync_state"

    @classmethod
    def current(cls):
        row = cls.get_or_none(cls.id == 1)
        if row is None:
            try:
                with db.atomic():
                    row = cls.create(id=1)
            except IntegrityError:
                row = cls.get(cls.id == 1)
        return row

    @classmethod
    def take_lease(cls, job_id, kind, now, seconds):
        """Hold the sync lease for `seconds`; False while another live job holds it."""
        cls.current()
        free = cls.lease_job_id.is_null() | (cls.lease_until < now) | (cls.lease_job_id == job_id)
        until = now + datetime.timedelta(seconds=seconds)
        changed = cls.update(lease_job_id=job_id, lease_kind=kind, lease_until=until).where((cls.id == 1) & free)
        return bool(changed.execute())

    @classmethod
    def release_lease(cls, job_id):
        cls.update(lease_job_id=None, lease_kind=None, lease_until=None).where(
            (cls.id == 1) & (cls.lease_job_id == job_id)
        ).execute()

    @classmethod
    def advance(cls, job_id, now, seconds, cursor=None, changed=False):
        """After a batch: renew the lease for `seconds`, store the `cursor` it reached, and
        start a new generation when the store changed. False when the lease was lost."""
        values = {
            cls.lease_until: now + datetime.timedelta(seconds=seconds),
            cls.last_sync_at: now,
        }
        if cursor is not None:
            values[cls.cursor] = cursor
        if changed:
            values[cls.generation] = cls.generation + 1
        return bool(cls.update(values).where((cls.id == 1) & (cls.lease_job_id == job_id)).execute())

    @classmethod
    def bump(cls):
        """A new generation: the store changed outside a sync (a document's embeddings deleted)."""
        cls.current()
        cls.update(generation=cls.generation + 1).where(cls.id == 1).execute()


class SyncQueueItem(BaseModel):
    """A document the ingest service said changed (or was deleted), waiting for process_sync_queue."""

    document_id = CharField()
    action = CharField()  # "upsert" or "delete"
    received_at = DateTimeField(default=utcnow)
    handed_at = DateTimeField(null=True, index=True)
    job_id = CharField(null=True)

    class Meta:
        table_name = "knowledge_sync_queue"

    @classmethod
    def waiting(cls, limit=None):
        query = cls.select().where(cls.handed_at.is_null()).order_by(cls.id)
        return query.limit(limit) if limit else query

    @classmethod
    def hand_over(cls, ids, job_id, now):
        cls.update(handed_at=now, job_id=job_id).where(cls.id.in_(ids) & cls.handed_at.is_null()).execute()


# -- Users, their limits and statistics ---------------------------------------------------
def tiers():
    """TIER_LIMITS as {tier: queries a day}, lowest tier first."""
    return dict(settings.TIER_LIMITS)


def default_tier():
    return "free" if "free" in settings.TIER_LIMITS else next(iter(settings.TIER_LIMITS))


class KnowledgeUser(BaseModel):
    """A user of the search service (an id of the users' system), with today's
    query count, statistics and tier."""

    id = CharField(primary_key=True, max_length=200)
    tier = CharField(default=default_tier)
    day = DateTimeField(null=True)  # the TIMEZONE day queries_today counts (midnight, naive)
    queries_today = IntegerField(default=0)
    total_queries = IntegerField(default=0)
    queries_30_days = IntegerField(default=0)
    tokens_used = IntegerField(default=0)
    mean_processing_ms = FloatField(null=True)
    last_query_at = DateTimeField(null=True)
    statistics_at = DateTimeField(null=True)
    created_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "knowledge_user"

    @classmethod
    def ensure(cls, user_id):
        user = cls.get_or_none(cls.id == user_id)
        if user is None:
            try:
                with db.atomic():
                    user = cls.create(id=user_id)
            except IntegrityError:
                user = cls.get(cls.id == user_id)
        return user

    @property
    def daily_limit(self):
        return settings.TIER_LIMITS.get(self.tier, settings.TIER_LIMITS[default_tier()])

    def used_on(self, now):
        """Queries counted on the TIMEZONE day of `now`."""
        today = datetime.datetime.combine(local_day(now), datetime.time())
        return self.queries_today if self.day == today else 0

    @classmethod
    def count_query(cls, user_id, now):
        """Count one query against the user's daily limit; False when the limit is reached.

        One conditional UPDATE: two concurrent queries cannot both take the last one.
        """
        user = cls.ensure(user_id)
        today = datetime.datetime.combine(local_day(now), datetime.time())
        same_day = cls.day == today
        counted = (
            cls.update(
                queries_today=Case(None, ((same_day, cls.queries_today + 1),), 1),
                day=today,
                total_queries=cls.total_queries + 1,
                last_query_at=now,
            )
            .where((cls.id == user_id) & (~same_day | cls.day.is_null() | (cls.queries_today < user.daily_limit)))
            .execute()
        )
        return bool(counted)

    @classmethod
    def reset(cls, user_id=None):
        """Zero today's count of one user, or of every user."""
        query = cls.update(queries_today=0)
        if user_id is not None:
            query = query.where(cls.id == user_id)
        return query.execute()

    @classmethod
    def near_limit(cls, now, share=0.8, limit=20):
        """Users who used at least `share` of today's limit, most used first."""
        today = datetime.datetime.combine(local_day(now), datetime.time())
        users = list(cls.select().where(cls.day == today).order_by(cls.queries_today.desc()).limit(500))
        return [u for u in users if u.queries_today >= share * u.daily_limit][:limit]

    def limits_dict(self, now):
        used = self.used_on(now)
        return {
            "user_id": self.id,
            "tier": self.tier,
            "limit": self.daily_limit,
            "used": used,
            "remaining": max(self.daily_limit - used, 0),
            "resets_at": isoformat(next_midnight(now)),
            "timezone": settings.TIMEZONE,
            "statistics": {
                "total_queries": self.total_queries,
                "queries_30_days": self.queries_30_days,
                "tokens_used": self.tokens_used,
                "mean_processing_ms": self.mean_processing_ms,
                "last_query_at": isoformat(self.last_query_at),
                "updated_at": isoformat(self.statistics_at),
            },
        }


# -- Conversations, messages, the query cache -------------------------------------------
class Conversation(BaseModel):
    """A user's run of questions; archived (not deleted) after a quiet spell."""

    id = CharField(primary_key=True, default=_uuid)
    user_id = CharField(index=True)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow, index=True)
    archived_at = DateTimeField(null=True)

    class Meta:
        table_name = "knowledge_conversation"

    @classmethod
    def archive_older_than(cls, cutoff, now):
        return cls.update(archived_at=now).where((cls.updated_at < cutoff) & cls.archived_at.is_null()).execute()


class Message(BaseModel):
    """One query and the passages that answered it."""

    id = CharField(primary_key=True, default=_uuid)
    conversation = ForeignKeyField(Conversation, backref="messages", on_delete="CASCADE")
    user_id = CharField(index=True)
    query = TextField()
    passages = TextField()  # JSON list of {"document_id", "text", "score"}
    tokens_used = IntegerField(default=0)
    processing_time_ms = FloatField(default=0)
    cached = BooleanField(default=False)
    created_at = DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "knowledge_message"

    @classmethod
    def per_day(cls, since):
        """{date: queries} since `since` (UTC days)."""
        day = fn.DATE(cls.created_at)
        rows = cls.select(day.alias("day"), fn.COUNT(cls.id).alias("n")).where(cls.created_at >= since).group_by(day)
        return {str(row.day)[:10]: row.n for row in rows}

    @classmethod
    def statistics(cls, user_id, now):
        """What update_user_statistics stores for `user_id`."""
        mine = cls.user_id == user_id
        total, tokens, mean = (
            cls.select(
                fn.COUNT(cls.id),
                fn.COALESCE(fn.SUM(cls.tokens_used), 0),
                fn.AVG(cls.processing_time_ms),
            )
            .where(mine)
            .scalar(as_tuple=True)
        )
        recent = cls.select().where(mine & (cls.created_at >= now - datetime.timedelta(days=30))).count()
        return {
            "total_queries": total,
            "queries_30_days": recent,
            "tokens_used": int(tokens),
            "mean_processing_ms": round(mean, 3) if mean is not None else None,
        }


class QueryCache(BaseModel):
    """The passages a query got, kept per store generation: a repeat is served from here."""

    key = CharField(primary_key=True)  # SHA-256 of the normalised query, limit and generation
    query = TextField()
    passages = TextField()
    created_at = DateTimeField(default=utcnow)
    last_hit_at = DateTimeField(default=utcnow, index=True)
    hits = IntegerField(default=0)

    class Meta:
        table_name = "knowledge_query_cache"

    @classmethod
    def lookup(cls, key, now):
        entry = cls.get_or_none(cls.key == key)
        if entry is not None:
            cls.update(hits=cls.hits + 1, last_hit_at=now).where(cls.key == key).execute()
        return json.loads(entry.passages) if entry is not None else None

    @classmethod
    def store(cls, key, query, passages, now):
        cls.insert(
            key=key,
            query=query,
            passages=json.dumps(passages),
            created_at=now,
            last_hit_at=now,
        ).on_conflict(
            conflict_target=[cls.key],
            update={cls.passages: json.dumps(passages), cls.last_hit_at: now},
        ).execute()

    @classmethod
    def remove_older_than(cls, cutoff):
        return cls.delete().where(cls.last_hit_at < cutoff).execute()
