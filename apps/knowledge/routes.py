"""knowledge's API: search, sync, status, document deletion, user limits, the ingest webhook; the sandboxes."""

import json
import math

from bottle import Bottle, request

from api import ApiError, json_response, read_json, router
from apps.knowledge import ingest, notify, search, sync  # noqa: F401 - notify: the receiver route
from apps.knowledge.delivery import webhooks
from apps.knowledge.embeddings import SANDBOX_PATH
from apps.knowledge.models import KnowledgeUser
from apps.knowledge.tasks import queue_change
from jobs import Conflict, submit
from models import utcnow

routes = Bottle()
api = router(routes)

# The sandboxes (ingest service, embedder, users' system receiver) are one WSGI app
# of their own, as orders' sandbox provider is: their errors stay in their JSON
# shape and they need no API key. Not under orders' /sandbox/, which that
# app's mount takes whole. (notify adds the receiver's route to it.)
routes.mount(SANDBOX_PATH + "/", ingest.sandbox.wsgi)


def _submit(name, args):
    job, _ = submit(name, args, checked=True)
    return job.id


def _accepted(job):
    return json_response(202, job.to_dict(), {"Location": f"/api/v1/jobs/{job.id}"})


@api("/api/v1/knowledge/search", "POST")
def knowledge_search():
    """Passages of the store that answer a user's query; 429 once the user's daily queries are used."""
    body = read_json()
    try:
        return search.search(body, _submit)
    except search.UnknownConversation as exc:
        raise ApiError(404, "not_found", str(exc), "conversation_id") from None
    except search.LimitReached as exc:
        wait = max(math.ceil((exc.reset_at - utcnow()).total_seconds()), 1)
        message = f"{exc}; try again in {wait} s"
        raise ApiError(429, "rate_limited", message, headers={"Retry-After": str(wait)}) from None


@api("/api/v1/knowledge/sync", "POST")
def knowledge_sync():
    """Start a sync: a full one, or with `since` (an ingest cursor) the changes after it."""
    body = read_json()
    for name in body:
        if name not in ("since", "batch_size"):
            raise ApiError(
                422,
                "invalid_argument",
                f"{name}: unknown field; a sync takes since, batch_size",
                name,
            )
    if body.get("since") is None:
        running = sync.waiting_full_sync()
        if running is not None:
            raise Conflict(f"a full sync is already {running.status} as job {running.id}; it never runs twice at once")
        job, _ = submit("trigger_full_sync_task", {})
    else:
        job, _ = submit("sync_embeddings_task", body)
    return _accepted(job)


@api("/api/v1/knowledge/status")
def knowledge_status():
    """The store against the ingest: chunks and documents, behind or in sync, the running sync, the queue."""
    return sync.status()


@api("/api/v1/knowledge/documents/<document_id>", "DELETE")
def knowledge_delete_document(document_id):
    """Remove one document's chunks from the store, in the background."""
    if not 0 < len(document_id) <= 200:
        raise ApiError(422, "invalid_argument", "document id: 1 to 200 characters", "document_id")
    job, _ = submit("delete_document_embeddings_task", {"document_id": document_id})
    return _accepted(job)


@api("/api/v1/knowledge/users/<user_id>/limits")
def knowledge_user_limits(user_id):
    """A user's tier, daily limit, queries used today, when the count resets, and statistics."""
    user = KnowledgeUser.get_or_none(KnowledgeUser.id == user_id) or KnowledgeUser(id=user_id)
    return user.limits_dict(utcnow())


@api("/api/v1/knowledge/webhook", "POST", public=True)
def knowledge_webhook():
    """The ingest service's change notice (signed): the document goes on the sync queue."""
    raw = request.body.read(64 * 1024)
    header = webhooks().SIGNATURE_HEADER  # signed by the ingest service instead of an API key
    if not webhooks().verify(ingest.webhook_secret(), request.get_header(header), raw):
        raise ApiError(401, "unauthorized", f"missing, stale or wrong {header} header")
    try:
        body = json.loads(raw.decode("utf-8"))
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object with event and document_id")
    event, document_id = body.get("event"), body.get("document_id")
    if event not in ingest.CHANGE_EVENTS:
        raise ApiError(
            422,
            "invalid_argument",
            f"event: expected one of {', '.join(ingest.CHANGE_EVENTS)}",
            "event",
        )
    if not isinstance(document_id, str) or not 0 < len(document_id) <= 200:
        raise ApiError(
            422,
            "invalid_argument",
            "document_id: a string of 1 to 200 characters",
            "document_id",
        )
    item = queue_change(event, document_id)
    return 202, {"queued": document_id, "action": item.action}
