"""The knowledge API: search, sync, status, document deletion, user limits, and the ingest webhook.

The handlers are routes of the Bottle app `api` with full paths. They use the
engine's request helpers (read_json, ApiError, json_response, the current
key) through `web`, which install() hands in, and web.py's api() wraps each
route with authentication and the JSON error shape.
"""

import json
import math

from bottle import Bottle, request

import openapi
import webhooks
from jobs import Conflict, submit
from models import utcnow

from . import ingest, search, sync
from .models import KnowledgeUser
from .tasks import queue_change

api = Bottle()
web = None  # the engine's request helpers (today web.py), handed in by install()
PUBLIC = {"/api/v1/knowledge/webhook"}  # signed by the ingest service instead of an API key


def _submit(name, args):
    job, _ = submit(name, args, checked=True)
    return job.id


def _accepted(job):
    return web.json_response(202, job.to_dict(), {"Location": f"/api/v1/jobs/{job.id}"})


@api.post("/api/v1/knowledge/search")
def knowledge_search():
    """Passages of the store that answer a user's query; 429 once the user's daily queries are used."""
    body = web.read_json()
    try:
        return search.search(body, _submit)
    except search.UnknownConversation as exc:
        raise web.ApiError(404, "not_found", str(exc), "conversation_id") from None
    except search.LimitReached as exc:
        wait = max(math.ceil((exc.reset_at - utcnow()).total_seconds()), 1)
        message = f"{exc}; try again in {wait} s"
        raise web.ApiError(429, "rate_limited", message, headers={"Retry-After": str(wait)}) from None


@api.post("/api/v1/knowledge/sync")
def knowledge_sync():
    """Start a sync: a full one, or with `since` (an ingest cursor) the changes after it."""
    body = web.read_json()
    for name in body:
        if name not in ("since", "batch_size"):
            raise web.ApiError(
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


@api.get("/api/v1/knowledge/status")
def knowledge_status():
    """The store against the ingest: chunks and documents, behind or in sync, the running sync, the queue."""
    return sync.status()


@api.delete("/api/v1/knowledge/documents/<document_id>")
def knowledge_delete_document(document_id):
    """Remove one document's chunks from the store, in the background."""
    if not 0 < len(document_id) <= 200:
        raise web.ApiError(422, "invalid_argument", "document id: 1 to 200 characters", "document_id")
    job, _ = submit("delete_document_embeddings_task", {"document_id": document_id})
    return _accepted(job)


@api.get("/api/v1/knowledge/users/<user_id>/limits")
def knowledge_user_limits(user_id):
    """A user's tier, daily limit, queries used today, when the count resets, and statistics."""
    user = KnowledgeUser.get_or_none(KnowledgeUser.id == user_id) or KnowledgeUser(id=user_id)
    return user.limits_dict(utcnow())


@api.post("/api/v1/knowledge/webhook")
def knowledge_webhook():
    """The ingest service's change notice (signed): the document goes on the sync queue."""
    raw = request.body.read(64 * 1024)
    if not webhooks.verify(ingest.webhook_secret(), request.get_header(webhooks.SIGNATURE_HEADER), raw):
        raise web.ApiError(
            401,
            "unauthorized",
            f"missing, stale or wrong {webhooks.SIGNATURE_HEADER} header",
        )
    try:
        body = json.loads(raw.decode("utf-8"))
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise web.ApiError(400, "bad_json", "body must be a JSON object with event and document_id")
    event, document_id = body.get("event"), body.get("document_id")
    if event not in ingest.CHANGE_EVENTS:
        raise web.ApiError(
            422,
            "invalid_argument",
            f"event: expected one of {', '.join(ingest.CHANGE_EVENTS)}",
            "event",
        )
    if not isinstance(document_id, str) or not 0 < len(document_id) <= 200:
        raise web.ApiError(
            422,
            "invalid_argument",
            "document_id: a string of 1 to 200 characters",
            "document_id",
        )
    item = queue_change(event, document_id)
    return 202, {"queued": document_id, "action": item.action}


# -- The OpenAPI description ----------------------------------------------------------------
O = openapi
SCHEMAS = {
    "KnowledgeSearch": O.obj(
        {
            "user_id": {"type": "string", "maxLength": 200},
            "query": {"type": "string", "maxLength": search.MAX_QUERY},
            "conversation_id": {"type": "string"},
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": search.MAX_LIMIT,
                "default": 5,
            },
        },
        required=["user_id", "query"],
    ),
    "KnowledgeAnswer": O.obj(
        {
            "passages": {
                "type": "array",
                "items": O.obj(
                    {
                        "document_id": O.STRING,
                        "chunk_id": O.STRING,
                        "text": O.STRING,
                        "score": O.NUMBER,
                    },
                ),
            },
            "conversation_id": O.ID,
            "message_id": O.ID,
            "cached": O.BOOL,
            "tokens_used": O.INT,
            "processing_time_ms": O.NUMBER,
        }
    ),
    "KnowledgeLimits": O.obj(
        {
            "user_id": O.STRING,
            "tier": O.STRING,
            "limit": O.INT,
            "used": O.INT,
            "remaining": O.INT,
            "resets_at": O.TIME,
            "timezone": O.STRING,
            "statistics": {"type": "object"},
        }
    ),
    "KnowledgeStatus": O.obj(
        {
            "store": {
                "type": "object",
                "description": "kind (embedded or qdrant), chunks, documents",
            },
            "ingest": {
                "type": "object",
                "description": "url, chunks, documents (sandbox only), error",
            },
            "cursor": O.STRING,
            "behind": O.nullable(O.BOOL),
            "in_sync": O.nullable(O.BOOL),
            "last_sync_at": O.nullable(O.TIME),
            "sync": {
                "type": ["object", "null"],
                "description": "the running sync: kind, job_id, done, total",
            },
            "last_full_sync": {"type": "object"},
            "queue": {
                "type": "object",
                "description": "waiting: documents the ingest webhook queued",
            },
        }
    ),
}
_JOB = ("the job", O.ref("Job"), O.LOCATION)
PATHS = {
    "/api/v1/knowledge/search": {
        "post": O.operation(
            "knowledgeSearch",
            "Search the knowledge store for a user's query",
            "knowledge",
            O.responses(
                {"200": ("the passages", O.ref("KnowledgeAnswer"))},
                "404",
                "422",
                body=True,
            ),
            request_body=O.json_body(O.ref("KnowledgeSearch")),
            description="Counts against the user's daily limit (TIER_LIMITS): over it, 429 `rate_limited` with "
            "Retry-After in seconds until 00:00 in TIMEZONE.",
        )
    },
    "/api/v1/knowledge/sync": {
        "post": O.operation(
            "knowledgeSync",
            "Start a full sync, or with `since` a sync of the changes after that ingest cursor",
            "knowledge",
            O.responses({"202": _JOB}, "409", "422", body=True),
            request_body=O.json_body(
                O.obj(
                    {
                        "since": O.STRING,
                        "batch_size": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                        },
                    },
                    [],
                )
            ),
        )
    },
    "/api/v1/knowledge/status": {
        "get": O.operation(
            "knowledgeStatus",
            "The store against the ingest",
            "knowledge",
            O.responses({"200": ("status", O.ref("KnowledgeStatus"))}),
        )
    },
    "/api/v1/knowledge/documents/{id}": {
        "parameters": [O.path_param("id", "the document's id in the ingest service")],
        "delete": O.operation(
            "knowledgeDeleteDocument",
            "Remove a document's chunks from the store",
            "knowledge",
            O.responses({"202": _JOB}, "422"),
        ),
    },
    "/api/v1/knowledge/users/{id}/limits": {
        "parameters": [O.path_param("id", "the user's id in the users' system")],
        "get": O.operation(
            "knowledgeUserLimits",
            "A user's tier and daily query limit",
            "knowledge",
            O.responses({"200": ("limits", O.ref("KnowledgeLimits"))}),
        ),
    },
    "/api/v1/knowledge/webhook": {
        "post": O.operation(
            "knowledgeIngestWebhook",
            "The ingest service's signed change notice: puts the document on the sync queue",
            "knowledge",
            O.responses(
                {"202": ("queued", {"type": "object"})},
                "401",
                "422",
                public=True,
                body=True,
            ),
            request_body=O.json_body(
                O.obj(
                    {
                        "event": {"type": "string", "enum": list(ingest.CHANGE_EVENTS)},
                        "document_id": O.STRING,
                    }
                )
            ),
            public=True,
            description="Signed with the Litejobs-Signature header (webhooks.sign) and INGEST_WEBHOOK_SECRET.",
        )
    },
}


def install(web_module):
    """Serve these routes through the engine's api() wrapper and describe them in the OpenAPI document."""
    global web
    web = web_module
    for route in api.routes:
        web.api(route.rule, route.method, public=route.rule in PUBLIC)(route.callback)
    openapi.SCHEMAS.update(SCHEMAS)
    openapi.PATHS.update(PATHS)
    openapi.DOCUMENT["tags"].append({"name": "knowledge"})
