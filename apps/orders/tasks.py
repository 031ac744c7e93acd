"""orders' jobs: dispatch each order to the provider, check it until it completes, sweep the stale ones."""


import datetime
import json
import logging
import random

from huey.exceptions import RetryTask
from peewee import IntegrityError, PeeweeException, fn
from playhouse.pool import PooledDatabase

import guard
import hooks
from apps.orders import provider
from apps.orders.models import ORDER_STATUSES, Order
import settings
from jobs import ArgumentError, Conflict, Unavailable, cancel, current_job_id, submit, task
from models import db, isoformat, utcnow

logger = logging.getLogger("litejobs.orders")


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
    hooks.app_event.send(event, lambda: Order.get_by_id(order_id).to_dict(), key=f"{event}:{order_id}")


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


@hooks.usage_counts.connect
def usage_counts(start, end):
    """Orders placed in [start, end), by the status they have now, for the hourly usage report."""
    placed = (Order.created_at >= start) & (Order.created_at < end)
    query = Order.select(Order.status, fn.COUNT(Order.id).alias("n")).where(placed).group_by(Order.status)
    order_counts = dict.fromkeys(("created",) + ORDER_STATUSES, 0)
    for row in query.namedtuples():
        order_counts[row.status] = row.n
        order_counts["created"] += row.n
    return {"orders": order_counts}
