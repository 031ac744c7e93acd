"""What the knowledge app uses of the webhooks app, which it requires (APPS names both).

Messages to the users' system are webhook deliveries (one Webhook row, each
message a WebhookDelivery sent by webhooks' `deliver()`), and the ingest
service's change notices are signed as webhooks are (`verify`, `send`).

The webhooks app is imported on first use, not when this app is: the loader
imports the apps in APPS order, and with `APPS=knowledge,webhooks` an import
from here would register webhooks' functions as this app's. apps/knowledge's
`__init__` stops the start when APPS lacks webhooks, so the first use (a
request or a job, after every app is loaded) finds it.
"""


def webhooks():
    """The webhooks app's models module (Webhook, WebhookDelivery, deliver, send, verify, …)."""
    from apps.webhooks import models

    return models
