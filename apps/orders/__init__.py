"""orders: orders placed with a provider (or the built-in sandbox), checked until done."""

import sys

import settings
from apps.orders import migrations, models, openapi, pages, provider, routes, tasks
from hooks import App
from schedules import schedule

# Like a placeholder SECRET_KEY, the public default token stops a production start.
if settings.ENV == "production" and settings.PROVIDER_TOKEN.lower() in settings.PLACEHOLDER_SECRETS | {"sandbox-token"}:
    sys.exit(
        "litejobs: PROVIDER_TOKEN must be set to the token your order provider gave you when ENV=production; "
        "the default 'sandbox-token' is public"
    )

app = App(
    "orders",
    models=[models.Order, provider.SandboxOrder, provider.SandboxFault],
    modules=[tasks, routes, pages],
    queues={"orders": 8},
    schedules=[schedule("poll_pending_orders", "*/5 * * * *")],
    api=routes.routes,
    openapi=openapi.PATHS,
    migrations=migrations.MIGRATIONS,
    pages=pages.pages,
    nav=[("Orders", "/orders")],
    metrics=models.metrics,
    settings=[
        "PROVIDER_URL",
        "PROVIDER_TOKEN",
        "ORDER_FIRST_CHECK_DELAY",
        "ORDER_BACKOFF_BASE",
        "ORDER_BACKOFF_MAX",
        "ORDER_MAX_CHECKS",
        "ORDER_DEADLINE_HOURS",
        "ORDER_BATCH_SIZE",
        "SANDBOX_COMPLETE_AFTER",
        "SANDBOX_LATENCY_MS",
        "SANDBOX_FAILURE_RATE",
    ],
)
