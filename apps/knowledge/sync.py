"""Keeping the vector store in step with the ingest service.

Every sync reads the ingest's changes feed a batch at a time and applies each
batch to the store (upsert the live chunks, delete the tombstones) before it
moves the cursor on. Applying a batch is idempotent, so a batch applied twice,
or a sync killed between the store write and the cursor write, leaves the
store as the feed says. A lease in SyncState (renewed each batch, taken over
by the same job when it is run again after a crash) keeps two syncs from
writing at once; a full sync also removes what the store holds and the
ingest no longer has.
"""

import logging

from huey.exceptions import RetryTask

import settings
from httpclient import ServiceError
from models import WAITING, Job, isoformat, utcnow

from . import ingest
from .models import SyncQueueItem, SyncState
from .store import open_store

logger = logging.getLogger("litejobs.knowledge.sync")

# A sync renews its lease after each batch; a sync that died holds it this long.
LEASE_SECONDS = 120


def _none(done, total=None, message=None):
    pass


def apply_batch(store, chunks):
    """Write one batch of the feed to the store; returns (live chunk ids, deleted chunk ids)."""
    live = [c for c in chunks if not c.get("deleted")]
    dead = [c["id"] for c in chunks if c.get("deleted")]
    store.upsert(
        {
            "id": c["id"],
            "document_id": c["document_id"],
            "text": c["text"],
            "vector": c["vector"],
            "metadata": c.get("metadata") or {},
        }
        for c in live
    )
    store.delete(dead)
    return [c["id"] for c in live], dead


def sync_changes(job_id, batch_size=100, since=None, report=_none, now=utcnow):
    """Apply the ingest's changes after the stored cursor (or after `since`, without moving the stored one).

    Returns what it did, or {"skipped": …} while another sync holds the lease.
    """
    state = SyncState.current()
    if not SyncState.take_lease(job_id, "incremental", now(), LEASE_SECONDS):
        return {"skipped": f"another sync ({state.lease_kind}) is running as job {state.lease_job_id}"}
    store, client = open_store(), ingest.client()
    cursor = since if since is not None else SyncState.current().cursor
    upserted = deleted = batches = 0
    try:
        while True:
            page = client.changes(cursor, batch_size)
            live, dead = apply_batch(store, page["chunks"])
            upserted, deleted, batches = (
                upserted + len(live),
                deleted + len(dead),
                batches + 1,
            )
            # The store first, the cursor second: a crash between them applies this batch again.
            moved = page["next_cursor"] if since is None else None
            if not SyncState.advance(job_id, now(), LEASE_SECONDS, moved, changed=bool(live or dead)):
                logger.warning(
                    "knowledge sync %s: lost its lease; stopping after %s batches",
                    job_id,
                    batches,
                )
                break
            cursor = page["next_cursor"]
            report(
                upserted + deleted,
                None,
                f"{upserted} chunks written, {deleted} removed, cursor {cursor}",
            )
            if not page["has_more"]:
                break
    finally:
        SyncState.release_lease(job_id)
    return {
        "upserted": upserted,
        "deleted": deleted,
        "batches": batches,
        "cursor": cursor,
    }


def full_sync(job_id, batch_size=500, report=_none, now=utcnow):
    """Read the whole feed into the store, then remove every chunk the ingest does not have.

    Waits (RetryTask) while an incremental sync holds the lease.
    """
    state = SyncState.current()
    if not SyncState.take_lease(job_id, "full", now(), LEASE_SECONDS):
        raise RetryTask(
            f"waiting for the {state.lease_kind} sync of job {state.lease_job_id}",
            delay=5,
        )
    SyncState.update(full_started_at=now(), full_job_id=job_id).where(SyncState.id == 1).execute()
    store, client = open_store(), ingest.client()
    cursor, seen, total = "0", set(), None
    try:
        while True:
            page = client.changes(cursor, batch_size)
            live, dead = apply_batch(store, page["chunks"])
            seen.update(live)
            seen.difference_update(dead)
            total = page["total"] if page["total"] is not None else total
            if not SyncState.advance(job_id, now(), LEASE_SECONDS, changed=True):
                raise RetryTask(f"full sync {job_id} lost its lease; starting again", delay=5)
            cursor = page["next_cursor"]
            report(
                len(seen),
                total,
                f"{len(seen)} of {total if total is not None else '?'} chunks in the store",
            )
            if not page["has_more"]:
                break
        stale = [chunk_id for chunk_id in store.ids() if chunk_id not in seen]
        store.delete(stale)
        finished = now()
        SyncState.update(
            cursor=cursor,
            generation=SyncState.generation + 1,
            last_sync_at=finished,
            full_finished_at=finished,
            full_chunks=len(seen),
            full_removed=len(stale),
        ).where(SyncState.id == 1).execute()
    finally:
        SyncState.release_lease(job_id)
    logger.info(
        "knowledge full sync %s: %s chunks, %s stale removed",
        job_id,
        len(seen),
        len(stale),
    )
    return {"chunks": len(seen), "removed": len(stale), "cursor": cursor}


def delete_document(document_id):
    """Remove a document's chunks from the store; returns how many went."""
    removed = open_store().delete_document(document_id)
    SyncState.bump()
    return removed


def take_queue(submit, now=utcnow):
    """Hand the waiting sync queue to jobs: a delete job per deleted document,
    one incremental sync for the rest (unless one is already waiting)."""
    items = list(SyncQueueItem.waiting(limit=1000))
    if not items:
        return {"documents": 0, "deletes": 0, "sync_job_id": None}
    last_action = {}
    for item in items:
        last_action[item.document_id] = item.action
    deletes = sorted(d for d, action in last_action.items() if action == "delete")
    for document_id in deletes:
        submit("delete_document_embeddings_task", {"document_id": document_id})
    waiting = (
        Job.select(Job.id)
        .where((Job.name == "sync_embeddings_task") & Job.status.in_(WAITING) & (Job.args == "{}"))
        .first()
    )
    job_id = waiting.id if waiting is not None else submit("sync_embeddings_task", {})
    SyncQueueItem.hand_over([item.id for item in items], job_id, now())
    return {
        "documents": len(last_action),
        "deletes": len(deletes),
        "sync_job_id": job_id,
    }


# -- What the status API and the dashboard show ---------------------------------------------
def _job_progress(job_id):
    job = Job.get_or_none(Job.id == job_id) if job_id else None
    if job is None:
        return None
    return {
        "job_id": job.id,
        "function": job.name,
        "status": job.status,
        "done": job.progress_done,
        "total": job.progress_total,
        "message": job.progress_message,
    }


def waiting_full_sync():
    """The full sync job that is waiting or running, or None."""
    return (
        Job.select()
        .where((Job.name == "trigger_full_sync_task") & Job.status.in_(WAITING + ("running",)))
        .order_by(Job.enqueued_at)
        .first()
    )


def status(now=None):
    """The store against the ingest: counts, the cursor, whether behind, the running sync, the queue."""
    now = now or utcnow()
    state = SyncState.current()
    store = open_store()
    chunks, documents = store.count()
    answer = {
        "store": {
            "kind": "qdrant" if settings.QDRANT_URL else "embedded",
            "chunks": chunks,
            "documents": documents,
        },
        "ingest": {
            "url": settings.INGEST_URL or None,
            "chunks": None,
            "documents": None,
            "error": None,
        },
        "cursor": state.cursor,
        "behind": None,
        "in_sync": None,
        "last_sync_at": isoformat(state.last_sync_at),
        "sync": None,
        "last_full_sync": {
            "job_id": state.full_job_id,
            "started_at": isoformat(state.full_started_at),
            "finished_at": isoformat(state.full_finished_at),
            "chunks": state.full_chunks,
            "removed": state.full_removed,
        },
        "queue": {"waiting": SyncQueueItem.waiting().count()},
    }
    if state.lease_job_id and state.lease_until and state.lease_until >= now:
        answer["sync"] = {
            "kind": state.lease_kind,
            **(_job_progress(state.lease_job_id) or {"job_id": state.lease_job_id}),
        }
    try:
        page = ingest.client().changes(state.cursor, 1)
    except ServiceError as exc:
        answer["ingest"]["error"] = str(exc)
        return answer
    answer["ingest"]["chunks"] = page["total"]
    if not settings.INGEST_URL:
        answer["ingest"]["documents"] = (
            ingest.IngestDocument.select().where(ingest.IngestDocument.deleted == False).count()  # noqa: E712
        )
    answer["behind"] = bool(page["chunks"])
    answer["in_sync"] = not page["chunks"] and page["total"] == chunks
    return answer
