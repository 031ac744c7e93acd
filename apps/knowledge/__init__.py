"""knowledge: document sync into a vector store, search with per-user daily limits,
conversations, and notices to the users' system.

models.py (tables), ingest.py (the ingest client and its sandbox), embeddings.py
(the embeddings client and the sandbox embedder), store.py (embedded or Qdrant),
sync.py, search.py, notify.py (the users' system), tasks.py (the 12 jobs),
routes.py and openapi.py (the API, the sandboxes' mount), pages.py (the page).

It requires the webhooks app: messages to the users' system are webhook
deliveries, and the ingest service signs its notices as webhooks are signed
(delivery.py says how it reaches that app).
"""

import settings

if "webhooks" not in settings.APPS:
    raise SystemExit(
        "litejobs: cannot start: APPS names knowledge but not webhooks, which it needs (its messages to the "
        f"users' system are webhook deliveries); use APPS={','.join([*settings.APPS, 'webhooks'])}"
    )

from apps.knowledge import ingest, migrations, models, notify, openapi, pages, routes, tasks  # noqa: E402
from hooks import App  # noqa: E402
from schedules import schedule  # noqa: E402

app = App(
    "knowledge",
    models=[
        models.SyncState,
        models.SyncQueueItem,
        models.KnowledgeUser,
        models.Conversation,
        models.Message,
        models.QueryCache,
        ingest.IngestDocument,
        ingest.IngestChunk,
        ingest.IngestFault,
        notify.SandboxReceipt,
    ],
    modules=[tasks, routes, pages],
    queues={"sync": 4, "notifications": 6, "cleanup": 3, "user": 7},
    # Crontabs read in TIMEZONE, like every schedule.
    schedules=[
        schedule("process_sync_queue", "*/5 * * * *"),
        schedule("cleanup_query_cache", "0 2 * * *"),
        schedule("cleanup_old_conversations", "0 3 * * 0"),  # Sundays
        schedule("reset_all_daily_limits", "0 0 * * *"),
    ],
    api=routes.routes,
    openapi=openapi.PATHS,
    migrations=migrations.MIGRATIONS,
    pages=pages.pages,
    nav=[("Knowledge", "/knowledge")],
    settings=[
        "INGEST_URL",
        "INGEST_TOKEN",
        "INGEST_WEBHOOK_SECRET",
        "QDRANT_URL",
        "QDRANT_API_KEY",
        "QDRANT_COLLECTION",
        "EMBEDDINGS_URL",
        "EMBEDDINGS_MODEL",
        "EMBEDDINGS_API_KEY",
        "USERS_SYSTEM_URL",
        "USERS_SYSTEM_SECRET",
        "TIER_LIMITS",
        "KNOWLEDGE_TIMEOUT",
        "SANDBOX_LATENCY_MS",
        "SANDBOX_FAILURE_RATE",
    ],
)
