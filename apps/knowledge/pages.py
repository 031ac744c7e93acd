"""knowledge's dashboard page: the store against the ingest, the running sync, the
sync queue, queries per day, users near their limit, and what the users' system was sent."""

import datetime

from bottle import Bottle, redirect

import charts
import settings
from apps.knowledge import notify, sync
from apps.knowledge.models import KnowledgeUser, Message
from dashboard import page, render
from jobs import submit
from models import utcnow

CHART_DAYS = 30

pages = Bottle()


def route(path, method="GET"):
    return page(path, method, routes=pages)


@route("/knowledge")
def knowledge():
    """Sync status, queries per day and the users' system log."""
    now = utcnow()
    first = (now - datetime.timedelta(days=CHART_DAYS - 1)).date()
    per_day = Message.per_day(datetime.datetime.combine(first, datetime.time()))
    days = [first + datetime.timedelta(days=i) for i in range(CHART_DAYS)]
    counts = [per_day.get(day.isoformat(), 0) for day in days]
    chart = charts.bars(
        [("bar", counts)],
        labels=[(i, day.isoformat()[5:]) for i, day in enumerate(days) if i % 5 == 0],
        titles=[f"{day.isoformat()}: {n} queries" for day, n in zip(days, counts)],
        height=150,
        label="Queries per day",
    )
    return render(
        "knowledge",
        title="Knowledge",
        status=sync.status(now),
        chart=chart,
        total_queries=sum(counts),
        near_limit=KnowledgeUser.near_limit(now),
        receipts=notify.SandboxReceipt.latest(10),
        deliveries=notify.recent_deliveries(10),
        sandbox_receiver=not settings.USERS_SYSTEM_URL,
        now=now,
    )


@route("/knowledge/sync", "POST")
def knowledge_full_sync():
    """Start a full sync unless one is waiting or running."""
    running = sync.waiting_full_sync()
    if running is None:
        job, _ = submit("trigger_full_sync_task", {})
    else:
        job = running
    redirect(f"/jobs/{job.id}", 303)
