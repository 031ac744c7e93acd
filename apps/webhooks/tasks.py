"""webhooks' jobs: deliver one delivery, report hourly usage."""


import datetime
import logging

from jobs import task
from models import isoformat, parse_time, utcnow

from apps.webhooks.models import deliver, emit, usage_counts

logger = logging.getLogger("litejobs.webhooks")


@task(queue="notifications")
def deliver_webhook(delivery_id: int):
    """POST one webhook delivery; a timeout, connection error or 5xx is tried again later.

    Each run makes one attempt. The next waits WEBHOOK_RETRY_BASE seconds,
    doubling each time, until WEBHOOK_MAX_ATTEMPTS; a 4xx is final.
    """
    return deliver(delivery_id)


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
