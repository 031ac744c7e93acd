"""webhooks' part of /api/v1/openapi.json: its schemas (added to the document's) and paths."""

import openapi
from openapi import (
    CURSOR,
    ID,
    INT,
    LIMIT,
    LOCATION,
    NUMBER,
    STRING,
    TIME,
    json_body,
    listing,
    nullable,
    obj,
    operation,
    path_param,
    query_param,
    ref,
    responses,
)

openapi.SCHEMAS.update(
    {
        "WebhookInput": obj(
            {
                "url": {
                    "type": "string",
                    "description": "http or https; private targets only with WEBHOOK_ALLOW_PRIVATE",
                },
                "events": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "string",
                        "description": "job.succeeded, job.failed, order.completed, order.failed, usage.hourly",
                    },
                },
            }
        ),
        "Webhook": obj(
            {
                "id": ID,
                "url": STRING,
                "events": {"type": "array", "items": STRING},
                "secret": {
                    "type": "string",
                    "description": "signs deliveries; only in the answer to POST",
                },
                "created_at": TIME,
            },
            required=["id", "url", "events", "created_at"],
        ),
        "Delivery": obj(
            {
                "id": ID,
                "event": STRING,
                "status": {
                    "type": "string",
                    "enum": ["pending", "succeeded", "failed"],
                },
                "response_code": nullable(INT),
                "attempts": INT,
                "duration_ms": nullable(NUMBER),
                "created_at": TIME,
            }
        ),
    }
)

PATHS = {
    "/api/v1/webhooks": {
        "get": operation(
            "listWebhooks",
            "The live webhooks, without their secrets",
            "webhooks",
            responses({"200": ("the webhooks", listing("webhooks", ref("Webhook")))}),
        ),
        "post": operation(
            "createWebhook",
            "Subscribe a URL to events; the secret is shown only in this answer",
            "webhooks",
            responses(
                {"201": ("the webhook with its secret", ref("Webhook"), LOCATION)},
                "422",
                body=True,
            ),
            request_body=json_body(ref("WebhookInput")),
        ),
    },
    "/api/v1/webhooks/{id}": {
        "parameters": [path_param("id", "the webhook's id")],
        "get": operation(
            "getWebhook",
            "One webhook, without its secret",
            "webhooks",
            responses({"200": ("the webhook", ref("Webhook"))}, "404"),
        ),
        "delete": operation(
            "deleteWebhook",
            "Stop sending to a webhook (its delivery log is kept)",
            "webhooks",
            responses({"204": ("deleted", None)}, "404"),
        ),
    },
    "/api/v1/webhooks/{id}/deliveries": {
        "parameters": [path_param("id", "the webhook's id")],
        "get": operation(
            "listDeliveries",
            "A webhook's deliveries, newest first",
            "webhooks",
            responses(
                {
                    "200": (
                        "a page of deliveries",
                        listing("deliveries", ref("Delivery"), paged=True),
                    )
                },
                "404",
                "422",
            ),
            [
                query_param(
                    "status",
                    "only this status",
                    {"type": "string", "enum": ["pending", "succeeded", "failed"]},
                ),
                LIMIT,
                CURSOR,
            ],
        ),
    },
}
