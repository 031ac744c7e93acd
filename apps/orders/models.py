"""litejobs orders: customers' orders of product packages, and the jobs that see them through.

An order is dispatched to the provider (provider.py), then polled until it
completes with a PIN or fails. Each step is a job: dispatch_order, then one
check_order_status per poll; poll_pending_orders, every 5 minutes, fails
orders past their deadline and queues the steps that no job is handling.
"""

import datetime
import logging
import secrets

from peewee import (
    CharField,
    DateTimeField,
    IntegerField,
    TextField,
    fn,
)

import settings
from models import WAITING, BaseModel, Job, db, isoformat, keyset_page, utcnow

logger = logging.getLogger("litejobs.orders")


# -- The Order table ------------------------------------------------------------
ORDER_STATUSES = ("new", "sent", "processing", "completed", "failed")
ORDER_PENDING = ("new", "sent", "processing")
# Job statuses of a job that will still act on the order it was queued for.
_LIVE_JOB = WAITING + ("running",)


def _order_id():
    return secrets.token_hex(16)


class Order(BaseModel):
    """A customer's order of a product package: dispatched to the provider, then
    polled until it completes with a PIN or fails.

    `next_check_at` is when the order's next step (dispatch or status check) is
    due and `job_id` the job that was queued for it; a job works on an order
    only after claiming it (see `claim`), so a step run twice acts once.
    """

    id = CharField(primary_key=True, default=_order_id)
    product_id = CharField()
    package_id = CharField()
    user_identifier = CharField()
    extra_field = TextField(null=True)
    status = CharField(default="new")
    provider_ref = CharField(null=True, index=True)
    pin_code = CharField(null=True)
    checks = IntegerField(default=0)
    dispatch_attempts = IntegerField(default=0)
    next_check_at = DateTimeField(null=True)
    job_id = CharField(null=True)
    created_at = DateTimeField(default=utcnow)
    sent_at = DateTimeField(null=True)
    last_sync_at = DateTimeField(null=True)
    completed_at = DateTimeField(null=True)
    error = TextField(null=True)
    last_error = TextField(null=True)
    api_key_id = IntegerField(null=True)
    idempotency_key = CharField(null=True)

    class Meta:
        table_name = "orders"  # ORDER is an SQL keyword: spare everyone the quoting
        indexes = (
            (("status", "next_check_at"), False),
            (("created_at", "id"), False),
            (("api_key_id", "idempotency_key"), True),
        )

    # -- reading ---------------------------------------------------------
    @property
    def deadline(self):
        """When the order fails if it has no final status yet (ORDER_DEADLINE_HOURS)."""
        return self.created_at + datetime.timedelta(hours=settings.ORDER_DEADLINE_HOURS)

    @property
    def is_pending(self):
        return self.status in ORDER_PENDING

    def to_dict(self):
        return {
            "id": self.id,
            "status": self.status,
            "product_id": self.product_id,
            "package_id": self.package_id,
            "user_identifier": self.user_identifier,
            "extra_field": self.extra_field,
            "provider_ref": self.provider_ref,
            "pin_code": self.pin_code,
            "attempts": self.checks,
            "dispatch_attempts": self.dispatch_attempts,
            "created_at": isoformat(self.created_at),
            "sent_at": isoformat(self.sent_at),
            "last_sync_at": isoformat(self.last_sync_at),
            "completed_at": isoformat(self.completed_at),
            "next_check_at": isoformat(self.next_check_at) if self.is_pending else None,
            "error": self.error,
            "last_error": self.last_error,
            "job_id": self.job_id,
            "url": f"/api/v1/orders/{self.id}",
        }

    @classmethod
    def by_idempotency_key(cls, api_key_id, key):
        return cls.get_or_none((cls.api_key_id == api_key_id) & (cls.idempotency_key == key))

    @classmethod
    def page(cls, status=None, limit=50, cursor=None):
        """Newest first; returns (orders, cursor of the next page or None)."""
        query = cls.select()
        if status:
            query = query.where(cls.status == status)
        return keyset_page(query, cls.created_at, limit, cursor)

    @classmethod
    def pending(cls):
        return cls.select().where(cls.status.in_(ORDER_PENDING))

    @classmethod
    def pending_count(cls):
        return cls.pending().count()

    @classmethod
    def counts_by_status(cls):
        query = cls.select(cls.status, fn.COUNT(cls.id).alias("n")).group_by(cls.status)
        return {row.status: row.n for row in query}

    @classmethod
    def due(cls, now=None, limit=100):
        """Pending orders whose next step is due and that no queued or running job
        is handling (its job finished, vanished or was never queued), most overdue first."""
        handled = Job.select(Job.id).where((Job.id == cls.job_id) & Job.status.in_(_LIVE_JOB))
        return (
            cls.select()
            .where(cls.status.in_(ORDER_PENDING) & (cls.next_check_at <= (now or utcnow())) & ~fn.EXISTS(handled))
            .order_by(cls.next_check_at, cls.id)
            .limit(limit)
        )

    @classmethod
    def overdue(cls, now=None, limit=100):
        """Pending orders past their deadline that no job is checking at this moment."""
        now = now or utcnow()
        cutoff = now - datetime.timedelta(hours=settings.ORDER_DEADLINE_HOURS)
        return (
            cls.select()
            .where(cls.status.in_(ORDER_PENDING) & (cls.created_at <= cutoff) & (cls.next_check_at <= now))
            .order_by(cls.created_at)
            .limit(limit)
        )

    # -- state changes: each a conditional update, safe to repeat ---------------
    # Every step of every order starts with this statement, so it is written out
    # (as Job's are): peewee takes longer to build it than the database takes to
    # run it, a quarter of a status check's CPU in bench/orders.py.
    _CLAIM_SQL = (
        'UPDATE "orders" SET "next_check_at" = {p}, "job_id" = COALESCE({p}, "job_id") '
        'WHERE ("id" = {p}) AND ("status" IN ({statuses})) AND ("next_check_at" <= {p}) RETURNING *'
    )

    @classmethod
    def claim(cls, order_id, statuses, now, lease, job_id=None):
        """Take an order in one of `statuses` whose next step is due, moving that step
        `lease` seconds ahead so no other job finds it due meanwhile. Returns the
        claimed order, or None when it is not due, not in `statuses`, or taken."""
        sql = cls._CLAIM_SQL.format(p=db.param, statuses=", ".join([db.param] * len(statuses)))
        params = (now + datetime.timedelta(seconds=lease), job_id, order_id, *statuses, now)
        # list(): reading every row ends the statement, and with it the write lock.
        rows = list(cls.raw(sql, *params))
        return rows[0] if rows else None

    @classmethod
    def hand_to(cls, order, job_id):
        """Give a due order, as `due` read it, to job `job_id`; False when another job got it first."""
        unchanged = cls.job_id.is_null() if order.job_id is None else cls.job_id == order.job_id
        return bool(
            cls.update(job_id=job_id)
            .where((cls.id == order.id) & cls.status.in_(ORDER_PENDING) & (unchanged | (cls.job_id == job_id)))
            .execute()
        )

    @classmethod
    def set_job(cls, order_id, job_id, expect_next):
        """Note the job queued for the order's step due at `expect_next`, unless the order moved on meanwhile."""
        where = (cls.id == order_id) & cls.status.in_(ORDER_PENDING) & (cls.next_check_at == expect_next)
        return bool(cls.update(job_id=job_id).where(where).execute())

    @classmethod
    def retry_dispatch_at(cls, order_id, next_at, error):
        """Count a dispatch that hit a retryable fault; the next one is due at `next_at`."""
        return bool(
            cls.update(dispatch_attempts=cls.dispatch_attempts + 1, next_check_at=next_at, last_error=error)
            .where((cls.id == order_id) & (cls.status == "new"))
            .execute()
        )

    @classmethod
    def mark_sent(cls, order_id, provider_ref, now, next_at):
        """Store the provider's reference; the first check is due at `next_at`. False when already sent."""
        return bool(
            cls.update(
                status="sent",
                provider_ref=provider_ref,
                sent_at=now,
                dispatch_attempts=cls.dispatch_attempts + 1,
                next_check_at=next_at,
                last_error=None,
            )
            .where((cls.id == order_id) & (cls.status == "new"))
            .execute()
        )

    # The outcome of a check, written out like the claim.
    _RECORD_CHECK_SQL = (
        'UPDATE "orders" SET "status" = COALESCE({p}, "status"), "checks" = ("checks" + 1), '
        '"last_sync_at" = {p}, "next_check_at" = {p}, "last_error" = {p} '
        'WHERE ("id" = {p}) AND ("status" IN ({p}, {p}))'
    )
    _COMPLETE_SQL = (
        'UPDATE "orders" SET "status" = {p}, "pin_code" = {p}, "completed_at" = {p}, "last_sync_at" = {p}, '
        '"checks" = ("checks" + 1), "next_check_at" = NULL, "last_error" = NULL '
        'WHERE ("id" = {p}) AND ("status" IN ({p}, {p}))'
    )

    @classmethod
    def record_check(cls, order_id, now, next_at, status=None, error=None):
        """Count a check that found no final status (or hit `error`); the next is due at `next_at`."""
        params = (status, now, next_at, error, order_id, "sent", "processing")
        return bool(db.execute_sql(cls._RECORD_CHECK_SQL.format(p=db.param), params).rowcount)

    @classmethod
    def complete(cls, order_id, pin_code, now):
        """A check found the order completed with `pin_code`."""
        params = ("completed", pin_code, now, now, order_id, "sent", "processing")
        return bool(db.execute_sql(cls._COMPLETE_SQL.format(p=db.param), params).rowcount)

    @classmethod
    def fail(cls, order_id, reason, now, checked=False):
        """Fail a pending order with `reason`; `checked` when a status check found it so."""
        changes = {cls.status: "failed", cls.error: reason, cls.next_check_at: None}
        if checked:
            changes.update({cls.checks: cls.checks + 1, cls.last_sync_at: now})
        return bool(cls.update(changes).where((cls.id == order_id) & cls.status.in_(ORDER_PENDING)).execute())


def metrics(out, now):
    """orders' families of /metrics (hooks.App.metrics): pending orders and those past their deadline."""
    cutoff = now - datetime.timedelta(hours=settings.ORDER_DEADLINE_HOURS)
    out.family("litejobs_orders_pending", "gauge", "Orders not completed or failed yet", [({}, Order.pending_count())])
    out.family(
        "litejobs_orders_past_deadline",
        "gauge",
        f"Pending orders older than ORDER_DEADLINE_HOURS ({settings.ORDER_DEADLINE_HOURS:g} h): the sweep should have failed them",
        [({}, Order.pending().where(Order.created_at <= cutoff).count())],
    )
