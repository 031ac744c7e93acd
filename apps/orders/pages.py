"""orders' dashboard pages: the order form and list, one order with its steps."""

from urllib.parse import quote, urlencode

from bottle import Bottle, abort, redirect, request

import jobs
from apps.orders.models import ORDER_STATUSES, Order
from apps.orders.tasks import place_order
from dashboard import PAGE_SIZE, page, render
from models import Job

pages = Bottle()


def route(path, method="GET"):
    return page(path, method, routes=pages)


# -- Orders ------------------------------------------------------------------------------
ORDER_FORM = (
    ("product_id", "Product", True),
    ("package_id", "Package", True),
    ("user_identifier", "Customer account", True),
    ("extra_field", "Extra field", False),
)


def order_list(values=None, error=None, status=200):
    """The order form above the orders, newest first."""
    wanted = request.query.getunicode("status") or ""
    cursor = request.query.getunicode("cursor") or None
    if wanted and wanted not in ORDER_STATUSES:
        abort(400, f"unknown order status {wanted!r}; use one of {', '.join(ORDER_STATUSES)}")
    try:
        rows, next_cursor = Order.page(wanted or None, PAGE_SIZE, cursor)
    except ValueError:
        abort(400, "that page link is broken; start again from the first page")
    filters = {"status": wanted} if wanted else {}
    return render(
        "orders",
        _status=status,
        title="Orders",
        orders=rows,
        counts=Order.counts_by_status(),
        statuses=ORDER_STATUSES,
        status=wanted,
        fields=ORDER_FORM,
        values=values or {},
        error=error,
        live=cursor is None and any(order.is_pending for order in rows),
        first_page=cursor is None,
        first_url="/orders?" + urlencode(filters) if filters else "/orders",
        next_url="/orders?" + urlencode({**filters, "cursor": next_cursor}) if next_cursor else None,
    )


@route("/orders")
def orders():
    """The order form and the orders, newest first; refreshes while some are pending."""
    return order_list()


@route("/orders", "POST")
def order_create():
    """Place an order from the form; shows the order as it goes to the provider."""
    values = {name: request.forms.getunicode(name) or "" for name, _, _ in ORDER_FORM}
    body = {name: value for name, value in values.items() if value or name != "extra_field"}
    try:
        order, _ = place_order(body)
    except jobs.ArgumentError as exc:
        return order_list(values, exc, 422)
    except jobs.Unavailable as exc:
        abort(503, str(exc))
    redirect(f"/orders/{quote(order.id)}", 303)


@route("/orders/<order_id>")
def order_detail(order_id):
    """One order: its PIN once completed, its fields, times and every dispatch and check."""
    order = Order.get_or_none(Order.id == order_id)
    if order is None:
        abort(404, f"no order with id {order_id!r}")
    steps = list(Job.calls(("dispatch_order", "check_order_status"), {"order_id": order.id}))
    return render("order", title=f"Order {order.id[:8]}", order=order, steps=steps)
