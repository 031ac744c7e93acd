"""orders' part of /api/v1/openapi.json: its schemas (added to the document's) and paths."""

import openapi
from openapi import (
    CURSOR,
    ID,
    IDEMPOTENCY_KEY,
    INT,
    LIMIT,
    LOCATION,
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
        "OrderInput": obj(
            {
                "product_id": STRING,
                "package_id": STRING,
                "user_identifier": STRING,
                "extra_field": STRING,
            },
            required=["product_id", "package_id", "user_identifier"],
        ),
        "Order": obj(
            {
                "id": ID,
                "status": {
                    "type": "string",
                    "enum": ["new", "sent", "processing", "completed", "failed"],
                },
                "provider_ref": nullable(STRING),
                "pin_code": nullable(STRING),
                "attempts": INT,
                "created_at": TIME,
                "sent_at": nullable(TIME),
                "last_sync_at": nullable(TIME),
                "completed_at": nullable(TIME),
                "error": nullable(STRING),
            }
        ),
    }
)

PATHS = {
    "/api/v1/orders": {
        "get": operation(
            "listOrders",
            "Orders, newest first, a page at a time",
            "orders",
            responses(
                {
                    "200": (
                        "a page of orders",
                        listing("orders", ref("Order"), paged=True),
                    )
                },
                "422",
            ),
            [
                query_param(
                    "status",
                    "only this status",
                    {
                        "type": "string",
                        "enum": ["new", "sent", "processing", "completed", "failed"],
                    },
                ),
                LIMIT,
                CURSOR,
            ],
        ),
        "post": operation(
            "createOrder",
            "Place an order; dispatch to the provider starts in the background",
            "orders",
            responses(
                {
                    "200": (
                        "the first order of a repeated Idempotency-Key",
                        ref("Order"),
                    ),
                    "201": ("the new order", ref("Order"), LOCATION),
                },
                "409",
                "422",
                body=True,
            ),
            [IDEMPOTENCY_KEY],
            json_body(ref("OrderInput")),
        ),
    },
    "/api/v1/orders/{id}": {
        "parameters": [path_param("id", "the order's id")],
        "get": operation(
            "getOrder",
            "One order with its PIN once completed",
            "orders",
            responses({"200": ("the order", ref("Order"))}, "404"),
        ),
    },
}
