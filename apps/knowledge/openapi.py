"""knowledge's part of /api/v1/openapi.json: its schemas (added to the document's) and paths."""

import openapi

from apps.knowledge import ingest, search

openapi.SCHEMAS.update(
    {
        "KnowledgeSearch": openapi.obj(
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
        "KnowledgeAnswer": openapi.obj(
            {
                "passages": {
                    "type": "array",
                    "items": openapi.obj(
                        {
                            "document_id": openapi.STRING,
                            "chunk_id": openapi.STRING,
                            "text": openapi.STRING,
                            "score": openapi.NUMBER,
                        },
                    ),
                },
                "conversation_id": openapi.ID,
                "message_id": openapi.ID,
                "cached": openapi.BOOL,
                "tokens_used": openapi.INT,
                "processing_time_ms": openapi.NUMBER,
            }
        ),
        "KnowledgeLimits": openapi.obj(
            {
                "user_id": openapi.STRING,
                "tier": openapi.STRING,
                "limit": openapi.INT,
                "used": openapi.INT,
                "remaining": openapi.INT,
                "resets_at": openapi.TIME,
                "timezone": openapi.STRING,
                "statistics": {"type": "object"},
            }
        ),
        "KnowledgeStatus": openapi.obj(
            {
                "store": {
                    "type": "object",
                    "description": "kind (embedded or qdrant), chunks, documents",
                },
                "ingest": {
                    "type": "object",
                    "description": "url, chunks, documents (sandbox only), error",
                },
                "cursor": openapi.STRING,
                "behind": openapi.nullable(openapi.BOOL),
                "in_sync": openapi.nullable(openapi.BOOL),
                "last_sync_at": openapi.nullable(openapi.TIME),
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
)
if {"name": "knowledge"} not in openapi.DOCUMENT["tags"]:
    openapi.DOCUMENT["tags"].append({"name": "knowledge"})
_JOB = ("the job", openapi.ref("Job"), openapi.LOCATION)
PATHS = {
    "/api/v1/knowledge/search": {
        "post": openapi.operation(
            "knowledgeSearch",
            "Search the knowledge store for a user's query",
            "knowledge",
            openapi.responses(
                {"200": ("the passages", openapi.ref("KnowledgeAnswer"))},
                "404",
                "422",
                body=True,
            ),
            request_body=openapi.json_body(openapi.ref("KnowledgeSearch")),
            description="Counts against the user's daily limit (TIER_LIMITS): over it, 429 `rate_limited` with "
            "Retry-After in seconds until 00:00 in TIMEZONE.",
        )
    },
    "/api/v1/knowledge/sync": {
        "post": openapi.operation(
            "knowledgeSync",
            "Start a full sync, or with `since` a sync of the changes after that ingest cursor",
            "knowledge",
            openapi.responses({"202": _JOB}, "409", "422", body=True),
            request_body=openapi.json_body(
                openapi.obj(
                    {
                        "since": openapi.STRING,
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
        "get": openapi.operation(
            "knowledgeStatus",
            "The store against the ingest",
            "knowledge",
            openapi.responses({"200": ("status", openapi.ref("KnowledgeStatus"))}),
        )
    },
    "/api/v1/knowledge/documents/{id}": {
        "parameters": [openapi.path_param("id", "the document's id in the ingest service")],
        "delete": openapi.operation(
            "knowledgeDeleteDocument",
            "Remove a document's chunks from the store",
            "knowledge",
            openapi.responses({"202": _JOB}, "422"),
        ),
    },
    "/api/v1/knowledge/users/{id}/limits": {
        "parameters": [openapi.path_param("id", "the user's id in the users' system")],
        "get": openapi.operation(
            "knowledgeUserLimits",
            "A user's tier and daily query limit",
            "knowledge",
            openapi.responses({"200": ("limits", openapi.ref("KnowledgeLimits"))}),
        ),
    },
    "/api/v1/knowledge/webhook": {
        "post": openapi.operation(
            "knowledgeIngestWebhook",
            "The ingest service's signed change notice: puts the document on the sync queue",
            "knowledge",
            openapi.responses(
                {"202": ("queued", {"type": "object"})},
                "401",
                "422",
                public=True,
                body=True,
            ),
            request_body=openapi.json_body(
                openapi.obj(
                    {
                        "event": {"type": "string", "enum": list(ingest.CHANGE_EVENTS)},
                        "document_id": openapi.STRING,
                    }
                )
            ),
            public=True,
            description="Signed with the Litejobs-Signature header (webhooks.sign) and INGEST_WEBHOOK_SECRET.",
        )
    },
}
