"""webhooks: signed HTTP deliveries of job, order and usage events to subscribed URLs."""

from apps.webhooks import migrations, models, openapi, pages, routes, tasks
from hooks import App
from schedules import schedule

app = App(
    "webhooks",
    models=[models.Webhook, models.WebhookDelivery],
    modules=[tasks, routes, pages],
    queues={"notifications": 6},
    schedules=[schedule("send_usage_statistics", "0 * * * *")],
    api=routes.routes,
    openapi=openapi.PATHS,
    migrations=migrations.MIGRATIONS,
    pages=pages.pages,
    nav=[("Webhooks", "/webhooks")],
    settings=["WEBHOOK_ALLOW_PRIVATE", "WEBHOOK_RETRY_BASE"],
)
