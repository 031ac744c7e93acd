"""webhooks' dashboard page: live webhooks and their recent deliveries (read-only)."""


from bottle import Bottle

from apps.webhooks.models import Webhook, WebhookDelivery
from dashboard import page, render

pages = Bottle()


def route(path, method="GET"):
    return page(path, method, routes=pages)


WEBHOOK_DELIVERIES = 10


@route("/webhooks")
def webhooks():
    """Live webhooks and each one's recent deliveries; signing secrets are never shown."""
    rows = []
    for webhook in Webhook.live().limit(100):
        deliveries, more = WebhookDelivery.page(webhook.id, None, WEBHOOK_DELIVERIES, None)
        rows.append((webhook, deliveries, more is not None))
    return render("webhooks", title="Webhooks", webhooks=rows)
