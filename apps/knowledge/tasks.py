"""The knowledge app's jobs: names, arguments, retries and queues as the search service has them.

`update_user_statistics` is this app's (per search user, after each query);
the content app's function of the same name is `update_post_statistics`,
still on the `update_user_statistics` schedule (apps/content/__init__.py).
"""

import datetime
import logging

import hooks
from jobs import JobError, current_job_id, fail_now, progress, submit, task
from models import utcnow

from . import ingest, notify, sync
from .delivery import webhooks
from .models import (
    Conversation,
    KnowledgeUser,
    Message,
    QueryCache,
    SyncQueueItem,
    tiers,
)

logger = logging.getLogger("litejobs.knowledge")

SYNC_RETRY = {
    "retries": 3,
    "retry_delay": 10,
    "retry_backoff": 2,
}  # then 10, 20 and 40 s
FULL_SYNC_TIME_LIMIT = 3600
# A message to the users' system gets its first attempt and this many more.
NOTIFY_RETRIES = 3


def _refused(exc):
    """Fail the running job at once: the ingest service refused the call (a 4xx), a retry cannot help."""
    fail_now(f"the ingest service refused: {exc.message} (HTTP {exc.status})")


def _submit(name, args):
    job, _ = submit(name, args, checked=True)
    return job.id


@hooks.demo_data.connect
def demo_documents(seed=None):
    """`python -m apps.demo`: the sandbox ingest's demo documents; a full sync moves them into the store once a consumer runs."""
    chunks = ingest.fill_sandbox(200, seed=seed or 0)
    if sync.waiting_full_sync() is None:
        submit("trigger_full_sync_task", {})
    return {"knowledge chunks": chunks}


# -- Sync ----------------------------------------------------------------------------------
@task(queue="sync", public=True, bounds={"batch_size": (1, 1000)}, **SYNC_RETRY)
def sync_embeddings_task(batch_size: int = 100, since: str | None = None):
    """Bring the vector store up to date with the ingest's changes, `batch_size` chunks a batch,
    from the stored cursor or, given `since` (an ingest cursor), from there without moving it."""
    try:
        return sync.sync_changes(current_job_id(), batch_size, since, report=progress)
    except ingest.PermanentError as exc:
        _refused(exc)


@task(queue="sync", public=True)
def process_sync_queue():
    """Hand the documents the ingest webhook queued to jobs: deletes, then one incremental sync."""
    return sync.take_queue(_submit)


@task(
    queue="sync",
    public=True,
    retries=1,
    retry_delay=60,
    timeout=FULL_SYNC_TIME_LIMIT,
    limit=1,
)
def trigger_full_sync_task():
    """Sync every chunk of the ingest into the store and remove what the ingest no longer has.

    One at a time across all consumers; reports progress, can be canceled, stops after an hour.
    """
    try:
        return sync.full_sync(current_job_id(), report=progress)
    except ingest.PermanentError as exc:
        _refused(exc)


@task(queue="sync", public=True, retries=3, retry_delay=10)
def delete_document_embeddings_task(document_id: str):
    """Remove one document's chunks from the vector store."""
    return {"document_id": document_id, "removed": sync.delete_document(document_id)}


# -- The users' system ---------------------------------------------------------------------
def _deliver(event, data, key):
    delivery = notify.queue_message(event, data, key)
    try:
        return webhooks().deliver(delivery.id, allow_private=True, max_attempts=NOTIFY_RETRIES + 1)
    except JobError as exc:
        fail_now(str(exc))  # the delivery gave up: no huey retry on top of its own


@task(queue="notifications", public=True, retries=NOTIFY_RETRIES)
def send_query_result_to_users(
    user_id: str,
    conversation_id: str,
    message_id: str,
    query: str,
    answer: str,
    sources: list,
    tokens_used: int,
    processing_time_ms: float,
):
    """POST a query's result to the users' system (signed; timeouts and 5xx retried, 3 times)."""
    data = {
        "user_id": user_id,
        "conversation_id": conversation_id,
        "message_id": message_id,
        "query": query,
        "answer": answer,
        "sources": sources,
        "tokens_used": tokens_used,
        "processing_time_ms": processing_time_ms,
    }
    return _deliver("query.result", data, f"query.result:{message_id}")


@task(queue="notifications", public=True, retries=NOTIFY_RETRIES)
def send_system_notification(
    notification_type: str,
    title: str,
    message: str,
    user_ids: list | None = None,
    metadata: dict | None = None,
):
    """POST a system notice to the users' system for `user_ids` (none: every user)."""
    data = {
        "notification_type": notification_type,
        "title": title,
        "message": message,
        "user_ids": user_ids,
        "metadata": metadata or {},
    }
    # One delivery per job: a run again of the same job sends nothing twice.
    return _deliver(
        "system.notification",
        data,
        f"system.notification:{current_job_id() or utcnow().isoformat()}",
    )


# -- Cleanup -------------------------------------------------------------------------------
@task(queue="cleanup", public=True, bounds={"days": (1, 3650)})
def cleanup_query_cache(days: int = 30):
    """Remove cached query answers not used for `days` days."""
    return {"removed": QueryCache.remove_older_than(utcnow() - datetime.timedelta(days=days))}


@task(queue="cleanup", public=True, bounds={"days": (1, 3650)})
def cleanup_old_conversations(days: int = 90):
    """Archive (not delete) conversations with no message for `days` days."""
    now = utcnow()
    return {"archived": Conversation.archive_older_than(now - datetime.timedelta(days=days), now)}


# -- Users ---------------------------------------------------------------------------------
@task(queue="user", public=True)
def reset_user_daily_limit(user_id: str):
    """Give one user all of today's queries back."""
    return {"user_id": user_id, "reset": KnowledgeUser.reset(user_id)}


@task(queue="user", public=True)
def reset_all_daily_limits():
    """Zero every user's query count (daily at 00:00 in TIMEZONE)."""
    return {"reset": KnowledgeUser.reset()}


@task(queue="user", public=True)
def update_user_statistics(user_id: str):
    """Recount one search user's queries, tokens and mean processing time, then recalculate the tier."""
    now = utcnow()
    before = KnowledgeUser.ensure(user_id)
    stats = Message.statistics(user_id, now)
    KnowledgeUser.update(**stats, statistics_at=now).where(KnowledgeUser.id == user_id).execute()
    if stats["queries_30_days"] != before.queries_30_days:
        _submit("calculate_user_tier", {"user_id": user_id})
    return {"user_id": user_id, **stats}


def tier_for(queries_30_days):
    """The lowest tier (TIER_LIMITS order) whose daily limit is at least twice the user's mean daily queries."""
    mean = queries_30_days / 30
    for tier, limit in tiers().items():
        if limit >= 2 * mean:
            return tier
    return list(tiers())[-1]


@task(queue="user", public=True)
def calculate_user_tier(user_id: str):
    """Set one user's tier from the statistics: see tier_for."""
    user = KnowledgeUser.get_or_none(KnowledgeUser.id == user_id)
    if user is None:
        fail_now(f"no search user {user_id!r}")
    tier = tier_for(user.queries_30_days)
    if tier != user.tier:
        KnowledgeUser.update(tier=tier).where(KnowledgeUser.id == user_id).execute()
        logger.info("knowledge user %s: tier %s -> %s", user_id, user.tier, tier)
    return {"user_id": user_id, "tier": tier, "previous": user.tier}


def queue_change(event, document_id):
    """Put a document the ingest webhook named on the sync queue."""
    action = "delete" if event == "document.deleted" else "upsert"
    return SyncQueueItem.create(document_id=document_id, action=action)
