"""litejobs orders: customers' orders of product packages, and the jobs that see them through.

An order is dispatched to the provider (provider.py), then polled until it
completes with a PIN or fails. Each step is a job: dispatch_order, then one
check_order_status per poll; poll_pending_orders, every 5 minutes, fails
orders past their deadline and queues the steps that no job is handling.
"""

import datetime
import json
import logging
import random
import secrets

from huey.exceptions import RetryTask
from peewee import (
    CharField,
    DateTimeField,
    IntegerField,
    IntegrityError,
    PeeweeException,
    TextField,
    fn,
)
from playhouse.pool import PooledDatabase

import guard
import provider
import settings
import webhooks
from jobs import ArgumentError, Conflict, Unavailable, cancel, current_job_id, submit, task
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


# -- The steps, each a job ----------------------------------------------------------
# Each step of an order is a job: dispatch_order, then one check_order_status job per
# poll, each queuing the next with a delay. A job first claims the order
# (Order.claim), so a step delivered twice, or queued again by the sweep, acts once.
ORDER_FIELDS = {"product_id": 100, "package_id": 100, "user_identifier": 200, "extra_field": 1000}
ORDER_REQUIRED = ("product_id", "package_id", "user_identifier")
# Checks of orders placed together drift apart by up to this share of their delay.
ORDER_JITTER = 0.1


def check_delay(checks, rand=random.random):
    """Seconds from status check number `checks` (1 = the first) to the next one.

    ORDER_BACKOFF_BASE doubling with each check, capped at ORDER_BACKOFF_MAX,
    then shortened by up to ORDER_JITTER (10 %) at random: 30, 60, 120 … 600 s.
    """
    doubling = 2 ** min(max(checks - 1, 0), 60)
    delay = min(settings.ORDER_BACKOFF_BASE * doubling, settings.ORDER_BACKOFF_MAX)
    return delay * (1 - ORDER_JITTER * rand())


def check_schedule(rand=lambda: 0.0):
    """Seconds from dispatch to each status check, ORDER_MAX_CHECKS of them (jitter from `rand`)."""
    at = settings.ORDER_FIRST_CHECK_DELAY
    schedule = [at]
    for checks in range(1, settings.ORDER_MAX_CHECKS):
        at += check_delay(checks, rand)
        schedule.append(at)
    return schedule


def _release_connection():
    """Give this worker's database connection back to the pool before a provider call.

    The call can take seconds. Greenlet workers that hold no connection while
    they wait share a few warm ones instead of each keeping its own (on SQLite
    every write makes the other connections' caches cold; on PostgreSQL a
    hundred workers would take a hundred connections). The next query takes one again.
    """
    if isinstance(db.obj, PooledDatabase) and not db.is_closed() and not db.in_transaction():
        db.close()


def _claim_lease():
    """Seconds a claimed order stays out of other jobs' reach: longer than one provider call."""
    return settings.PROVIDER_CONNECT_TIMEOUT + 2 * settings.PROVIDER_TIMEOUT + 5


def _claim(order_id, statuses, now):
    """The order, claimed for the running job; None when there is nothing for it to do.

    The job queued for the order's next step that runs before that step is
    due (a consumer whose clock is behind, or a run again after one that died
    while holding the order) waits instead.
    """
    job_id = current_job_id()
    order = Order.claim(order_id, statuses, now, _claim_lease(), job_id)
    if order is not None or job_id is None:
        return order
    order = Order.get_or_none(Order.id == order_id)
    if order is not None and order.status in statuses and order.job_id == job_id and order.next_check_at:
        wait = max((order.next_check_at - now).total_seconds(), 0.1)
        raise RetryTask(f"order {order_id}: not due for {wait:.1f} s", delay=wait)
    return None


def validate_order(body):
    """The fields of a new order from a JSON object, or ArgumentError naming the bad one."""
    for name in body:
        if name not in ORDER_FIELDS:
            raise ArgumentError(name, f"unknown field; an order takes {', '.join(ORDER_FIELDS)}")
    clean = {}
    for name, longest in ORDER_FIELDS.items():
        value = body.get(name)
        if value is None:
            if name in ORDER_REQUIRED:
                raise ArgumentError(name, "missing required field")
            continue
        if not isinstance(value, str):
            raise ArgumentError(name, f"expected str, got {json.dumps(value)[:50]}")
        if name in ORDER_REQUIRED and not value.strip():
            raise ArgumentError(name, "must not be blank")
        if len(value) > longest:
            raise ArgumentError(name, f"at most {longest} characters, got {len(value)}")
        char = guard.control_character(value)
        if char is not None:  # it goes to the provider, the log and the dashboard
            raise ArgumentError(name, f"control character {char!r} not allowed")
        clean[name] = value
    return clean


def place_order(body, api_key_id=None, idempotency_key=None):
    """Record an order and queue its dispatch; returns (order, created).

    A repeat with the same `idempotency_key` (per API key) returns the first
    order, or raises Conflict when its fields differ. Nothing is left behind
    when the queue cannot take the dispatch (Unavailable).
    """
    fields = validate_order(body)
    if idempotency_key is not None:
        existing = Order.by_idempotency_key(api_key_id, idempotency_key)
        if existing is not None:
            return _same_order(existing, fields), False
    try:
        order = Order.create(**fields, next_check_at=utcnow(), api_key_id=api_key_id, idempotency_key=idempotency_key)
    except IntegrityError:
        # Another request with the same idempotency key won the race.
        return _same_order(Order.by_idempotency_key(api_key_id, idempotency_key), fields), False
    except PeeweeException as exc:
        raise Unavailable(f"database unavailable: {exc}") from exc
    try:
        job, _ = submit("dispatch_order", {"order_id": order.id}, checked=True)
    except Unavailable:
        order.delete_instance()
        raise
    Order.set_job(order.id, job.id, expect_next=order.next_check_at)
    logger.info("order %s: placed, dispatch queued as job %s", order.id, job.id)
    return Order.get_by_id(order.id), True


def _same_order(order, fields):
    given = {name: getattr(order, name) for name in ORDER_FIELDS if getattr(order, name) is not None}
    if given != fields:
        raise Conflict(f"Idempotency-Key already used for order {order.id} with other fields")
    return order


@task(queue="orders")
def dispatch_order(order_id: str):
    """Send an order to the provider and queue its first status check, due
    ORDER_FIRST_CHECK_DELAY later or when the provider expects it ready, if sooner.

    Safe to run twice: an order with a provider reference is skipped, and the
    order id travels as the idempotency key, so the provider makes one order.
    A network error, timeout or 5xx dispatches again later; a 4xx fails the order.
    """
    return dispatch(order_id)


def dispatch(order_id, now=None):
    """One dispatch attempt (the body of dispatch_order); `now` for tests."""
    now = now or utcnow()
    order = _claim(order_id, ("new",), now)
    if order is None:
        return {"order_id": order_id, "skipped": "already sent, final, not due, or taken by another job"}
    _release_connection()
    try:
        reply = provider.client().create_order(
            order.id, order.product_id, order.package_id, order.user_identifier, order.extra_field
        )
    except provider.PermanentError as exc:
        return _fail_order(order, f"provider refused the order: {exc.message} (HTTP {exc.status})", now)
    except provider.RetryableError as exc:
        return _dispatch_later(order, exc, now)
    # The first check waits ORDER_FIRST_CHECK_DELAY, or less when the provider
    # says the order will be ready sooner: no customer waits for a PIN needlessly.
    first = settings.ORDER_FIRST_CHECK_DELAY
    if reply["ready_in"] is not None:
        first = min(first, reply["ready_in"])
    next_at = now + datetime.timedelta(seconds=first)
    if Order.mark_sent(order.id, reply["reference"], now, next_at):
        logger.info("order %s: sent, provider reference %s", order.id, reply["reference"])
        _queue_check(order.id, next_at)
    return {"order_id": order.id, "provider_ref": reply["reference"], "first_check_at": isoformat(next_at)}


def _dispatch_later(order, exc, now):
    attempts = order.dispatch_attempts + 1
    if attempts >= settings.ORDER_MAX_CHECKS or now >= order.deadline:
        return _fail_order(order, f"provider unreachable after {attempts} dispatch attempts: {exc}", now)
    next_at = min(now + datetime.timedelta(seconds=check_delay(attempts)), order.deadline)
    Order.retry_dispatch_at(order.id, next_at, str(exc))
    delay = max((next_at - now).total_seconds(), 0)
    logger.warning("order %s: dispatch attempt %s failed (%s); again in %.1f s", order.id, attempts, exc, delay)
    raise RetryTask(f"{exc}; dispatch again in {delay:.1f} s", delay=delay)


@task(queue="orders")
def check_order_status(order_id: str):
    """Ask the provider once how an order is doing: store its PIN when
    completed, fail it when refused or out of checks or time, else queue the
    next check after an exponential backoff. Safe to run twice."""
    return check(order_id)


def check(order_id, now=None):
    """One status check (the body of check_order_status); `now` for tests."""
    now = now or utcnow()
    order = _claim(order_id, ("sent", "processing"), now)
    if order is None:
        return {"order_id": order_id, "skipped": "final, not due, or checked by another job"}
    checks = order.checks + 1
    fault = None
    _release_connection()
    try:
        reply = provider.client().order_status(order.provider_ref)
    except provider.PermanentError as exc:
        return _fail_order(order, f"provider refused the status check: {exc.message} (HTTP {exc.status})", now, True)
    except provider.RetryableError as exc:
        reply, fault = None, str(exc)
    if reply and reply["status"] == "completed":
        return _complete_order(order, reply["pin_code"], now)
    if reply and reply["status"] == "failed":
        reason = reply.get("message") or "no reason given"
        return _fail_order(order, f"provider failed the order: {reason}", now, True)
    last = f"; last error: {fault}" if fault else ""
    if checks >= settings.ORDER_MAX_CHECKS:
        return _fail_order(order, f"no final status after {checks} checks (ORDER_MAX_CHECKS){last}", now, True)
    if now >= order.deadline:
        hours = f"{settings.ORDER_DEADLINE_HOURS:g}"
        return _fail_order(order, f"no final status within {hours} h (ORDER_DEADLINE_HOURS){last}", now, True)
    next_at = min(now + datetime.timedelta(seconds=check_delay(checks)), order.deadline)
    Order.record_check(order.id, now, next_at, status="processing" if reply else None, error=fault)
    if fault:
        logger.warning("order %s: check %s failed (%s); next at %s", order.id, checks, fault, isoformat(next_at))
    _queue_check(order.id, next_at)
    return {
        "order_id": order.id,
        "provider_status": reply["status"] if reply else None,
        "error": fault,
        "checks": checks,
        "next_check_at": isoformat(next_at),
    }


def _queue_check(order_id, next_at):
    """Queue the status check due at `next_at`; the sweep queues it again if this is lost."""
    # huey drops the fraction of a second from an eta, which would run the job
    # before the order is due: round up instead.
    eta = next_at.replace(microsecond=0) + datetime.timedelta(seconds=1) if next_at.microsecond else next_at
    job, _ = submit("check_order_status", {"order_id": order_id}, eta=eta, checked=True)
    Order.set_job(order_id, job.id, expect_next=next_at)


def _complete_order(order, pin_code, now):
    if Order.complete(order.id, pin_code, now):
        logger.info("order %s: completed after %s checks", order.id, order.checks + 1)
        _order_event("order.completed", order.id)
    return {"order_id": order.id, "status": "completed"}


def _fail_order(order, reason, now, checked=False):
    if Order.fail(order.id, reason, now, checked):
        logger.warning("order %s: failed: %s", order.id, reason)
        _order_event("order.failed", order.id)
    return {"order_id": order.id, "status": "failed", "error": reason}


def _order_event(event, order_id):
    """Emit order.completed or order.failed with the order as it now is; the key makes a repeat a no-op."""
    if webhooks.subscribers(event):
        webhooks.emit(event, Order.get_by_id(order_id).to_dict(), key=f"{event}:{order_id}")


@task(queue="orders", limit=1)
def poll_pending_orders():
    """The safety net, run every 5 minutes: fail pending orders past
    ORDER_DEADLINE_HOURS, and queue the next step of at most ORDER_BATCH_SIZE
    due orders that no job is handling (their job was lost or failed).
    `limit=1`: one sweep at a time across all consumers."""
    return sweep()


def sweep(now=None):
    """One sweep (the body of poll_pending_orders); `now` for tests."""
    now = now or utcnow()
    failed = 0
    # Lists, not cursors: writing while a SELECT is still open on the same SQLite
    # connection fails at once with "database is locked" when another writer is busy.
    for order in list(Order.overdue(now, settings.ORDER_BATCH_SIZE)):
        hours = f"{settings.ORDER_DEADLINE_HOURS:g}"
        if _fail_order(order, f"no final status within {hours} h (ORDER_DEADLINE_HOURS)", now)["status"] == "failed":
            failed += 1
    queued = 0
    for order in list(Order.due(now, settings.ORDER_BATCH_SIZE)):
        name = "dispatch_order" if order.status == "new" else "check_order_status"
        job, _ = submit(name, {"order_id": order.id}, checked=True)
        if not Order.hand_to(order, job.id):
            # A concurrent sweep queued a job for it first; if ours runs anyway,
            # its claim finds the order taken.
            _drop(job)
            continue
        logger.info("order %s: sweep queued %s as job %s", order.id, name, job.id)
        queued += 1
    return {"queued": queued, "failed": failed, "pending": Order.pending_count()}


def _drop(job):
    try:
        cancel(job)
    except Conflict:
        pass  # it already finished
