"""webhooks' jobs: deliver one delivery, report hourly usage."""


import datetime
import logging

from huey.exceptions import RetryTask

import sealing
import settings
from jobs import JobError, task
from models import isoformat, parse_time, utcnow

from apps.webhooks.models import WebhookDelivery, emit, retry_delay, send, usage_counts

logger = logging.getLogger("litejobs.webhooks")


@task(queue="notifications")
def deliver_webhook(delivery_id: int):
    """POST one webhook delivery; a timeout, connection error or 5xx is tried again later.

    Each run makes one attempt. The next waits WEBHOOK_RETRY_BASE seconds,
    doubling each time, until WEBHOOK_MAX_ATTEMPTS; a 4xx is final.
    """
    delivery = WebhookDelivery.get_or_none(WebhookDelivery.id == delivery_id)
    if delivery is None or delivery.status != "pending":
        # A second run of a finished delivery (at-least-once): nothing to send.
        return None if delivery is None else delivery.status
    webhook = delivery.webhook
    if not webhook.active:
        WebhookDelivery.give_up(delivery.id, "webhook deleted before delivery")
        return "webhook deleted; not sent"
    try:
        secret = webhook.signing_secret
    except sealing.UnsealError as exc:  # no retry can fix this: fail now, with the cause
        WebhookDelivery.give_up(delivery.id, f"signing secret unreadable: {exc}")
        raise JobError(f"webhook {webhook.id}: signing secret unreadable ({exc}); create the webhook again") from None
    outcome = send(
        webhook.url,
        secret,
        delivery.payload.encode("utf-8"),
        delivery.event,
        timeout=settings.WEBHOOK_TIMEOUT,
        allow_private=settings.WEBHOOK_ALLOW_PRIVATE,
    )
    attempts = delivery.attempts + 1
    again = outcome.retry and attempts < settings.WEBHOOK_MAX_ATTEMPTS
    delay = retry_delay(attempts, settings.WEBHOOK_RETRY_BASE) if again else None
    status = "pending" if again else "succeeded" if outcome.ok else "failed"
    next_at = utcnow() + datetime.timedelta(seconds=delay) if again else None
    if not delivery.record_attempt(status, outcome.response_code, outcome.duration_ms, outcome.error, next_at):
        return "recorded by another run"
    if again:
        logger.info("webhook delivery %s: %s; attempt %s in %s s", delivery.id, outcome.error, attempts + 1, delay)
        raise RetryTask(f"{outcome.error}; attempt {attempts + 1} in {delay:g} s", delay=delay)
    if not outcome.ok:
        raise JobError(f"webhook delivery {delivery.id} to {webhook.url} failed after {attempts} attempt(s): {outcome.error}")
    return {"delivery_id": str(delivery.id), "response_code": outcome.response_code, "attempts": attempts}


@task(queue="notifications")
def send_usage_statistics(until: str | None = None):
    """Emit `usage.hourly`: jobs per function and status, orders and new users of one hour.

    The hour ends at `until` (an ISO time), by default at the start of the
    current hour, so hourly runs report whole hours without gaps or overlap.
    """
    end = parse_time(until) if until else utcnow().replace(minute=0, second=0, microsecond=0)
    start = end - datetime.timedelta(hours=1)
    data = {"start": isoformat(start), "end": isoformat(end), **usage_counts(start, end)}
    sent = emit("usage.hourly", data, key=f"usage.hourly:{start.isoformat()}:{end.isoformat()}")
    return {"deliveries": sent, **data}
