"""webhooks' API: subscriptions and their delivery log."""

import json

from bottle import Bottle, HTTPResponse, request

import settings
from api import (
    ApiError,
    json_response,
    parse_id,
    query_number,
    read_json,
    router,
)
from apps.webhooks import models as webhooks

routes = Bottle()
api = router(routes)


def get_webhook(webhook_id):
    # _parse_id: ASCII digits only ("²".isdigit() is True but int() rejects it) and small enough for SQLite.
    row_id = parse_id(webhook_id)
    webhook = None if row_id is None else webhooks.Webhook.find_live(row_id)
    if webhook is None:
        raise ApiError(404, "not_found", f"no webhook with id {webhook_id!r}")
    return webhook


def read_webhook(body):
    """(url, events) of a webhook from a request body, or 422 naming the field."""
    unknown = sorted(set(body) - {"url", "events"})
    if unknown:
        raise ApiError(422, "invalid_argument", f"{unknown[0]}: unknown field; a webhook takes url and events", unknown[0])
    if "url" not in body:
        raise ApiError(422, "invalid_argument", "url: missing required field", "url")
    try:
        webhooks.check_url(body["url"], settings.WEBHOOK_ALLOW_PRIVATE)
    except webhooks.BadURL as exc:
        raise ApiError(422, "invalid_argument", f"url: {exc}", "url") from None
    events = body.get("events")
    known = ", ".join(webhooks.EVENTS)
    if not isinstance(events, list) or not events:
        raise ApiError(422, "invalid_argument", f"events: expected a non-empty list of event names ({known})", "events")
    for name in events:
        if name not in webhooks.EVENTS:
            shown = json.dumps(name)[:60]
            raise ApiError(422, "invalid_argument", f"events: unknown event {shown}; expected some of {known}", "events")
    return body["url"].strip(), list(dict.fromkeys(events))


@api("/api/v1/webhooks", "POST")
def create_webhook():
    """Subscribe a URL to events; the answer carries the signing secret, shown only this once."""
    url, events = read_webhook(read_json())
    webhook = webhooks.Webhook.subscribe(url, events)
    webhooks.forget_subscriptions()
    return json_response(201, webhook.to_dict(secret=True), {"Location": f"/api/v1/webhooks/{webhook.id}"})


@api("/api/v1/webhooks")
def list_webhooks():
    """The live webhooks, without their secrets."""
    return {"webhooks": [webhook.to_dict() for webhook in webhooks.Webhook.live()]}


@api("/api/v1/webhooks/<webhook_id>")
def show_webhook(webhook_id):
    """One webhook, without its secret."""
    return get_webhook(webhook_id).to_dict()


@api("/api/v1/webhooks/<webhook_id>", "DELETE")
def delete_webhook(webhook_id):
    """Stop sending to a webhook; its delivery log is kept."""
    get_webhook(webhook_id).deactivate()
    webhooks.forget_subscriptions()
    return HTTPResponse(status=204)


@api("/api/v1/webhooks/<webhook_id>/deliveries")
def list_deliveries(webhook_id):
    """A webhook's deliveries, newest first: status, response code, attempts, duration."""
    webhook = get_webhook(webhook_id)
    status = request.query.getunicode("status") or None
    if status is not None and status not in ("pending", "succeeded", "failed"):
        raise ApiError(422, "invalid_argument", f"status: expected pending, succeeded or failed, got {status[:50]!r}", "status")
    limit = query_number("limit", 1, 200, int, default=50)
    try:
        rows, cursor = webhooks.WebhookDelivery.page(webhook.id, status, limit, request.query.getunicode("cursor"))
    except (ValueError, OverflowError):  # OverflowError: a digit string too large for SQLite
        raise ApiError(422, "invalid_argument", "cursor: not a cursor returned by this API", "cursor") from None
    return {"deliveries": [delivery.to_dict() for delivery in rows], "next": cursor}
