"""orders' API: place, show and list orders; the sandbox provider."""


from bottle import Bottle, request

import settings
from api import (
    ApiError,
    current_key,
    is_admin_key,
    json_response,
    query_number,
    read_json,
    router,
)
from apps.orders import models as orders
from apps.orders import provider
from apps.orders.tasks import place_order

routes = Bottle()
api = router(routes)


# The sandbox provider is its own WSGI app: its errors stay in the provider's JSON
# shape, and it needs no API key (it checks the provider token instead). In production
# it is there only when asked for (SANDBOX=1).
if settings.ENV != "production" or settings.SANDBOX:
    routes.mount("/sandbox/", provider.sandbox.wsgi)


def get_order(order_id):
    order = orders.Order.get_or_none(orders.Order.id == order_id)
    if order is None:
        raise ApiError(404, "not_found", f"no order with id {order_id!r}")
    return order


def order_dict(order):
    """An order as the API shows it: its PIN only to admin keys, as the dashboard shows it only to admins."""
    data = order.to_dict()
    if data.get("pin_code") and not is_admin_key():
        data["pin_code"] = "••••"
    return data


@api("/api/v1/orders", "POST")
def create_order():
    """Place an order; its dispatch to the provider starts at once in the background."""
    body = read_json()
    idempotency_key = request.get_header("Idempotency-Key")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
        raise ApiError(422, "invalid_argument", "Idempotency-Key: must be 1 to 200 characters", "Idempotency-Key")
    order, created = place_order(body, api_key_id=current_key().id, idempotency_key=idempotency_key)
    if not created:
        return 200, order.to_dict()
    return json_response(201, order.to_dict(), {"Location": f"/api/v1/orders/{order.id}"})


@api("/api/v1/orders/<order_id>")
def show_order(order_id):
    """One order: status, provider reference, PIN, checks and error."""
    return order_dict(get_order(order_id))


@api("/api/v1/orders")
def list_orders():
    """Orders newest first, filtered by status, a page at a time."""
    status = request.query.getunicode("status") or None
    if status is not None and status not in orders.ORDER_STATUSES:
        expected = ", ".join(orders.ORDER_STATUSES)
        raise ApiError(422, "invalid_argument", f"status: expected one of {expected}, got {status[:50]!r}", "status")
    limit = query_number("limit", 1, 200, int, default=50)
    try:
        rows, cursor = orders.Order.page(status, limit, request.query.getunicode("cursor"))
    except ValueError:
        raise ApiError(422, "invalid_argument", "cursor: not a cursor returned by this API", "cursor") from None
    return {"orders": [order_dict(order) for order in rows], "next": cursor}
