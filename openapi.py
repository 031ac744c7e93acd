"""litejobs OpenAPI: the document served at GET /api/v1/openapi.json.

A plain dict, built once, in the order of API.md: jobs and functions first,
then schedules, workers and queues, orders, users and posts, analytics,
webhooks, media and courses, health and metrics. The tests check it with
openapi-spec-validator, check that every API route of web.app is in it, and
check real answers of the app against its schemas.
"""

import copy

VERSION = "1"


# -- Building blocks ---------------------------------------------------------------
def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema):
    """`schema` or null (OpenAPI 3.1: a list of types)."""
    schema = dict(schema)
    schema["type"] = [schema["type"], "null"]
    return schema


STRING = {"type": "string"}
INT = {"type": "integer"}
NUMBER = {"type": "number"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time", "description": "UTC, ISO 8601 with a Z: 2026-11-22T09:00:00.123Z"}
ID = {"type": "string", "description": "an id; ids are strings"}


def obj(properties, required=None, description=None):
    """An object schema; every listed property is required unless `required` says otherwise."""
    schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties if required is None else required),
    }
    if description:
        schema["description"] = description
    return schema


def listing(key, item, paged=False):
    """`{key: [item…]}`, with `next` (the cursor of the next page or null) when paged."""
    properties = {key: {"type": "array", "items": item}}
    if paged:
        properties["next"] = nullable({"type": "string", "description": "cursor of the next page; null on the last"})
    return obj(properties)


def json_body(schema, description=None):
    body = {"required": False, "content": {"application/json": {"schema": schema}}}
    if description:
        body["description"] = description
    return body


def path_param(name, description):
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def query_param(name, description, schema):
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


LIMIT = query_param("limit", "items per page, 1 to 200 (default 50)", {"type": "integer", "minimum": 1, "maximum": 200})
CURSOR = query_param("cursor", "the `next` value of the previous page", {"type": "string"})

# Why each error status happens; the body is always the Error schema.
ERRORS = {
    "400": "bad_json: the body is not a JSON object",
    "401": "unauthorized: missing or wrong API key",
    "403": "forbidden: the API key's scope is read, and this writes or needs an admin key",
    "404": "not_found: no such item",
    "409": "conflict: not possible in the current state",
    "413": "too_large: body over MAX_BODY_BYTES",
    "422": "invalid_argument: `field` names the bad argument or query parameter",
    "429": "rate_limited: over the rate limit; Retry-After says when to come back",
    "503": "unavailable: database or queue storage unreachable; nothing was half-written",
}


def responses(ok, *errors, public=False, body=False):
    """`ok` maps statuses to (description, schema, headers); errors are added by status.

    Every operation can answer 429, 503 and, as `default`, any other error in the
    one error shape (a 500 carries a request id); authenticated ones 401; those
    with a body 400 and 413.
    """
    result = {}
    for status, (description, schema, *headers) in ok.items():
        answer = {"description": description}
        if schema is not None:
            answer["content"] = {"application/json": {"schema": schema}}
        if headers:
            answer["headers"] = headers[0]
        result[status] = answer
    codes = set(errors) | {"429", "503"}
    if not public:
        codes |= {"401", "403"}
    if body:
        codes |= {"400", "413"}
    for status in sorted(codes - set(result)):
        result[status] = {"$ref": f"#/components/responses/E{status}"}
    result["default"] = {"$ref": "#/components/responses/Error"}
    return result


def operation(op_id, summary, tag, answers, parameters=(), request_body=None, public=False, description=None):
    op = {"operationId": op_id, "summary": summary, "tags": [tag], "responses": answers}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = list(parameters)
    if request_body:
        op["requestBody"] = request_body
    if public:
        op["security"] = []
    return op


LOCATION = {"Location": {"description": "URL of the created item", "schema": {"type": "string"}}}

# -- Schemas -------------------------------------------------------------------------
STATUSES = ["scheduled", "queued", "running", "retrying", "succeeded", "failed", "canceled", "expired"]

SCHEMAS = {
    "Error": obj(
        {
            "error": obj(
                {
                    "code": {
                        "type": "string",
                        "description": "bad_json, unauthorized, forbidden, not_found, method_not_allowed, conflict, "
                        "too_large, invalid_argument, rate_limited, internal, unavailable, bad_host",
                    },
                    "message": {"type": "string", "description": "what went wrong and how to fix it"},
                    "field": {"type": "string", "description": "the argument, field or query parameter at fault"},
                },
                required=["code", "message"],
            )
        }
    ),
    "Param": obj(
        {
            "name": STRING,
            "type": {"type": "string", "enum": ["int", "float", "str", "bool", "list", "dict", "any"]},
            "required": BOOL,
            "default": {"description": "the default when not required (any JSON value)"},
            "minimum": nullable(NUMBER),
            "maximum": nullable(NUMBER),
        },
        required=["name", "type", "required"],
    ),
    "Function": obj(
        {
            "name": STRING,
            "doc": STRING,
            "params": {"type": "array", "items": ref("Param")},
            "queue": STRING,
            "retries": INT,
        }
    ),
    "Progress": obj({"done": nullable(INT), "total": nullable(INT), "message": nullable(STRING)}),
    "Job": obj(
        {
            "id": ID,
            "name": {"type": "string", "description": "the job function"},
            "args": {"type": "object", "description": "the keyword arguments"},
            "status": {"type": "string", "enum": STATUSES},
            "result": {"description": "what the function returned (any JSON value), null until it succeeded"},
            "error": nullable(STRING),
            "traceback": nullable(STRING),
            "attempts": INT,
            "progress": {"oneOf": [ref("Progress"), {"type": "null"}]},
            "enqueued_at": TIME,
            "started_at": nullable(TIME),
            "finished_at": nullable(TIME),
            "duration_ms": nullable(NUMBER),
            "worker": nullable({"type": "string", "description": "host:pid:thread"}),
            "queue": STRING,
            "priority": INT,
            "scheduled_for": nullable(TIME),
            "parent_id": nullable({"type": "string", "description": "the job this one retries"}),
            "cancel_requested": BOOL,
            "waiting_for": nullable({"type": "string", "description": "the concurrency limit a queued job waits for"}),
            "url": {"type": "string", "description": "/api/v1/jobs/<id>"},
        },
        required=[
            "id",
            "name",
            "args",
            "status",
            "result",
            "error",
            "traceback",
            "attempts",
            "progress",
            "enqueued_at",
            "started_at",
            "finished_at",
            "duration_ms",
            "worker",
            "queue",
            "scheduled_for",
            "parent_id",
            "cancel_requested",
            "url",
        ],
    ),
    "Schedule": obj(
        {
            "name": STRING,
            "cron": {"type": "string", "description": "crontab read in TIMEZONE, e.g. 0 2 * * *"},
            "paused": BOOL,
            "next_run": nullable(TIME),
            "last_run": nullable(TIME),
            "last_status": nullable(STRING),
            "last_job_id": nullable(STRING),
        }
    ),
    "Worker": obj(
        {
            "id": ID,
            "host": STRING,
            "pid": INT,
            "kind": {"type": "string", "enum": ["thread", "greenlet", "process"]},
            "concurrency": INT,
            "started_at": TIME,
            "last_heartbeat": TIME,
            "alive": BOOL,
            "running": {"type": "array", "items": {"type": "string"}, "description": "ids of the jobs it runs"},
        }
    ),
    "Queue": obj(
        {
            "name": STRING,
            "priority": INT,
            "depth": INT,
            "running": INT,
            "oldest_wait_s": nullable(NUMBER),
            "concurrency_limit": nullable(INT),
        }
    ),
    "OrderInput": obj(
        {"product_id": STRING, "package_id": STRING, "user_identifier": STRING, "extra_field": STRING},
        required=["product_id", "package_id", "user_identifier"],
    ),
    "Order": obj(
        {
            "id": ID,
            "status": {"type": "string", "enum": ["new", "sent", "processing", "completed", "failed"]},
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
    "UserInput": obj({"email": {"type": "string", "format": "email"}, "name": STRING}, required=["email"]),
    "User": obj({"id": ID, "email": STRING, "name": STRING, "active": BOOL, "created_at": TIME}),
    "PostInput": obj({"author_id": ID, "body": {"type": "string", "description": "text with #hashtags"}}),
    "Post": obj(
        {
            "id": ID,
            "author_id": ID,
            "body": STRING,
            "hashtags": {"type": "array", "items": STRING},
            "likes": INT,
            "comments": INT,
            "shares": INT,
            "engagement_score": NUMBER,
            "created_at": TIME,
            "media": {"type": "array", "items": ref("Media"), "description": "GET /api/v1/posts/{id} only"},
        },
        required=["id", "body"],
    ),
    "Trending": obj(
        {
            "computed_at": nullable(TIME),
            "hashtags": {"type": "array", "items": obj({"tag": STRING, "count": INT})},
        }
    ),
    "Daily": obj(
        {
            "days": {
                "type": "array",
                "items": obj(
                    {
                        "date": {"type": "string", "format": "date"},
                        "new_users": INT,
                        "posts": INT,
                        "likes": INT,
                        "active_users": INT,
                        "mean_engagement": nullable(NUMBER),
                    }
                ),
            }
        }
    ),
    "WebhookInput": obj(
        {
            "url": {"type": "string", "description": "http or https; private targets only with WEBHOOK_ALLOW_PRIVATE"},
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
            "secret": {"type": "string", "description": "signs deliveries; only in the answer to POST"},
            "created_at": TIME,
        },
        required=["id", "url", "events", "created_at"],
    ),
    "ApiKey": obj(
        {
            "name": STRING,
            "prefix": {"type": "string", "description": "the key's first 8 characters: enough to tell keys apart"},
            "scope": {"type": "string", "enum": ["read", "admin"]},
            "created_at": TIME,
            "last_used_at": nullable(TIME),
            "calls_today": {"type": "integer"},
        },
        required=["name", "prefix", "scope", "created_at", "last_used_at", "calls_today"],
    ),
    "Delivery": obj(
        {
            "id": ID,
            "event": STRING,
            "status": {"type": "string", "enum": ["pending", "succeeded", "failed"]},
            "response_code": nullable(INT),
            "attempts": INT,
            "duration_ms": nullable(NUMBER),
            "created_at": TIME,
        }
    ),
    "MediaUpload": obj({"id": ID, "post_id": ID, "status": {"type": "string", "enum": ["processing"]}, "job_id": ID}),
    "Media": obj(
        {
            "id": ID,
            "post_id": ID,
            "status": {"type": "string", "enum": ["processing", "ready", "rejected"]},
            "error": nullable(STRING),
            "width": nullable(INT),
            "height": nullable(INT),
            "urls": obj(
                {"web": nullable(STRING), "thumb_320": nullable(STRING), "thumb_640": nullable(STRING)},
                description="null until ready; thumbs keep the aspect ratio, longest side N px",
            ),
        }
    ),
    "CourseInput": obj({"title": STRING, "lessons": {"type": "array", "minItems": 1, "items": {"type": "string"}}}),
    "Course": obj(
        {"id": ID, "title": STRING, "lessons": {"type": "array", "items": obj({"id": ID, "title": STRING})}},
    ),
    "EnrollmentInput": obj({"user_id": ID, "course_id": ID}),
    "Enrollment": obj(
        {
            "id": ID,
            "user_id": ID,
            "course_id": ID,
            "progress": {"type": "integer", "minimum": 0, "maximum": 100},
            "certificate": {"oneOf": [obj({"code": STRING, "url": STRING}), {"type": "null"}]},
        }
    ),
    "Certificate": obj(
        {"valid": BOOL, "name": STRING, "course": STRING, "issued_at": TIME, "url": STRING},
    ),
    "Check": obj(
        {
            "status": {"type": "string", "enum": ["ok", "down", "unknown"]},
            "error": {"type": "string", "description": "why it is not ok"},
        },
        required=["status"],
    ),
    "Ready": obj(
        {
            "status": {"type": "string", "enum": ["ok", "degraded", "down"]},
            "checks": obj({"database": ref("Check"), "queue": ref("Check"), "consumer": ref("Check")}),
        }
    ),
}


# -- Paths ---------------------------------------------------------------------------
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "scoped to the API key: the same key and body return the first item (200); another body 409",
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}
JOB_ID = path_param("id", "the job's id; for POST, the name of the job function to call (see GET /api/v1/functions)")

PATHS = {
    "/api/v1/functions": {
        "get": operation(
            "listFunctions",
            "The public job functions with their parameters",
            "jobs",
            responses({"200": ("the functions", listing("functions", ref("Function")))}),
        )
    },
    "/api/v1/jobs": {
        "get": operation(
            "listJobs",
            "Jobs, newest enqueued first, a page at a time",
            "jobs",
            responses({"200": ("a page of jobs", listing("jobs", ref("Job"), paged=True))}, "422"),
            [
                query_param("name", "only this function", {"type": "string"}),
                query_param("status", "only this status", {"type": "string", "enum": STATUSES}),
                LIMIT,
                CURSOR,
            ],
        )
    },
    "/api/v1/jobs/{id}": {
        "parameters": [JOB_ID],
        "get": operation("getJob", "One job", "jobs", responses({"200": ("the job", ref("Job"))}, "404")),
        "post": operation(
            "invokeFunction",
            "Call job function `id` with the JSON body as its keyword arguments",
            "jobs",
            responses(
                {
                    "200": (
                        "the job: finished within `wait`, or the first job of a repeated Idempotency-Key",
                        ref("Job"),
                    ),
                    "202": ("the job, queued or scheduled (also when `wait` ran out)", ref("Job"), LOCATION),
                },
                "404",
                "409",
                "422",
                body=True,
            ),
            [
                query_param(
                    "wait", "seconds to wait for the result, 0 to 30", {"type": "number", "minimum": 0, "maximum": 30}
                ),
                query_param(
                    "delay", "seconds from now to run it", {"type": "number", "minimum": 0, "maximum": 31622400}
                ),
                query_param(
                    "eta", "when to run it (ISO 8601; no offset means UTC); not with delay", {"type": "string"}
                ),
                query_param("priority", "higher runs first", {"type": "integer", "minimum": -1000, "maximum": 1000}),
                IDEMPOTENCY_KEY,
            ],
            json_body({"type": "object", "description": "keyword arguments of the function"}),
            description="In this path template `id` is the function's name for POST and the job's id for GET.",
        ),
    },
    "/api/v1/jobs/{id}/cancel": {
        "parameters": [path_param("id", "the job's id")],
        "post": operation(
            "cancelJob",
            "Cancel a waiting job, or ask a running one to stop",
            "jobs",
            responses({"200": ("the job: canceled, or running with cancel_requested", ref("Job"))}, "404", "409"),
        ),
    },
    "/api/v1/jobs/{id}/retry": {
        "parameters": [path_param("id", "the job's id")],
        "post": operation(
            "retryJob",
            "Run a finished job again as a new job (parent_id links them)",
            "jobs",
            responses({"202": ("the new job", ref("Job"), LOCATION)}, "404", "409"),
        ),
    },
    "/api/v1/schedules": {
        "get": operation(
            "listSchedules",
            "Periodic tasks with their next and last run",
            "schedules",
            responses({"200": ("the schedules", listing("schedules", ref("Schedule")))}),
        )
    },
    "/api/v1/schedules/{name}/pause": {
        "parameters": [path_param("name", "the schedule's name")],
        "post": operation(
            "pauseSchedule",
            "Pause a schedule",
            "schedules",
            responses({"200": ("the schedule", ref("Schedule"))}, "404"),
        ),
    },
    "/api/v1/schedules/{name}/resume": {
        "parameters": [path_param("name", "the schedule's name")],
        "post": operation(
            "resumeSchedule",
            "Resume a paused schedule",
            "schedules",
            responses({"200": ("the schedule", ref("Schedule"))}, "404"),
        ),
    },
    "/api/v1/schedules/{name}/run": {
        "parameters": [path_param("name", "the schedule's name")],
        "post": operation(
            "runSchedule",
            "Run a schedule's task now",
            "schedules",
            responses({"202": ("the job", ref("Job"), LOCATION)}, "404"),
        ),
    },
    "/api/v1/workers": {
        "get": operation(
            "listWorkers",
            "Consumers with their heartbeat and running jobs",
            "workers",
            responses({"200": ("the consumers", listing("workers", ref("Worker")))}),
        )
    },
    "/api/v1/queues": {
        "get": operation(
            "listQueues",
            "Every configured queue: priority, depth, running, oldest wait, limit",
            "workers",
            responses({"200": ("the queues", listing("queues", ref("Queue")))}),
        )
    },
    "/api/v1/orders": {
        "get": operation(
            "listOrders",
            "Orders, newest first, a page at a time",
            "orders",
            responses({"200": ("a page of orders", listing("orders", ref("Order"), paged=True))}, "422"),
            [
                query_param(
                    "status",
                    "only this status",
                    {"type": "string", "enum": ["new", "sent", "processing", "completed", "failed"]},
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
                    "200": ("the first order of a repeated Idempotency-Key", ref("Order")),
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
    "/api/v1/users": {
        "post": operation(
            "createUser",
            "Create a user; a welcome mail is sent in the background",
            "users",
            responses({"201": ("the user", ref("User"), LOCATION)}, "409", "422", body=True),
            request_body=json_body(ref("UserInput")),
        )
    },
    "/api/v1/posts": {
        "post": operation(
            "createPost",
            "Publish a post",
            "users",
            responses({"201": ("the post", ref("Post"), LOCATION)}, "422", body=True),
            request_body=json_body(ref("PostInput")),
        )
    },
    "/api/v1/posts/{id}": {
        "parameters": [path_param("id", "the post's id")],
        "get": operation(
            "getPost",
            "One post with its hashtags, counts and media",
            "media",
            responses({"200": ("the post, with `media`: its uploads as Media objects", ref("Post"))}, "404"),
        ),
    },
    "/api/v1/posts/{id}/media": {
        "parameters": [path_param("id", "the post's id")],
        "post": operation(
            "uploadMedia",
            "Attach an image to a post; it is processed in the background",
            "media",
            responses({"202": ("the media, processing", ref("MediaUpload"), LOCATION)}, "404", "422", body=True),
            request_body={
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": obj({"file": {"type": "string", "contentMediaType": "application/octet-stream"}})
                    }
                },
            },
        ),
    },
    "/api/v1/media/{id}": {
        "parameters": [path_param("id", "the media's id")],
        "get": operation(
            "getMedia",
            "One uploaded image and its renditions",
            "media",
            responses({"200": ("the media", ref("Media"))}, "404"),
        ),
    },
    "/api/v1/analytics/trending": {
        "get": operation(
            "trendingHashtags",
            "Trending hashtags, as the last run of the trending job computed them",
            "analytics",
            responses({"200": ("the hashtags", ref("Trending"))}),
        )
    },
    "/api/v1/analytics/daily": {
        "get": operation(
            "dailyAnalytics",
            "Daily numbers",
            "analytics",
            responses({"200": ("one entry a day", ref("Daily"))}, "422"),
            [query_param("days", "how many days back (default 30)", {"type": "integer", "minimum": 1, "maximum": 366})],
        )
    },
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
            responses({"201": ("the webhook with its secret", ref("Webhook"), LOCATION)}, "422", body=True),
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
                {"200": ("a page of deliveries", listing("deliveries", ref("Delivery"), paged=True))}, "404", "422"
            ),
            [
                query_param(
                    "status", "only this status", {"type": "string", "enum": ["pending", "succeeded", "failed"]}
                ),
                LIMIT,
                CURSOR,
            ],
        ),
    },
    "/api/v1/courses": {
        "post": operation(
            "createCourse",
            "Create a course with its lessons, in order",
            "courses",
            responses({"201": ("the course", ref("Course"))}, "422", body=True),
            request_body=json_body(ref("CourseInput")),
        )
    },
    "/api/v1/courses/{id}": {
        "parameters": [path_param("id", "the course's id")],
        "get": operation(
            "getCourse",
            "One course with its lessons",
            "courses",
            responses({"200": ("the course", ref("Course"))}, "404"),
        ),
    },
    "/api/v1/enrollments": {
        "post": operation(
            "createEnrollment",
            "Enroll a user in a course",
            "courses",
            responses({"201": ("the enrollment", ref("Enrollment"))}, "409", "422", body=True),
            request_body=json_body(ref("EnrollmentInput")),
        )
    },
    "/api/v1/enrollments/{id}": {
        "parameters": [path_param("id", "the enrollment's id")],
        "get": operation(
            "getEnrollment",
            "An enrollment: progress and, once earned, its certificate",
            "courses",
            responses({"200": ("the enrollment", ref("Enrollment"))}, "404"),
        ),
    },
    "/api/v1/enrollments/{id}/lessons/{lesson_id}/complete": {
        "parameters": [path_param("id", "the enrollment's id"), path_param("lesson_id", "the lesson's id")],
        "post": operation(
            "completeLesson",
            "Mark a lesson done; progress is recomputed in the background",
            "courses",
            responses({"200": ("the enrollment", ref("Enrollment"))}, "404"),
        ),
    },
    "/api/v1/certificates/{code}": {
        "parameters": [path_param("code", "the certificate's verification code")],
        "get": operation(
            "verifyCertificate",
            "Check a certificate's verification code",
            "courses",
            responses({"200": ("a valid certificate", ref("Certificate"))}, "404"),
        ),
    },
    "/api/v1/openapi.json": {
        "get": operation(
            "openapi",
            "This document",
            "meta",
            responses({"200": ("the OpenAPI document", {"type": "object"})}, public=True),
            public=True,
        )
    },
    "/api/v1/keys": {
        "get": operation(
            "listKeys",
            "The live API keys (never the keys themselves); needs an admin key",
            "keys",
            responses({"200": ("the keys", listing("keys", ref("ApiKey")))}),
        ),
    },
    "/api/v1/keys/{prefix}": {
        "parameters": [path_param("prefix", "the key's prefix, as GET /api/v1/keys shows it")],
        "delete": operation(
            "revokeKey",
            "Revoke an API key: it stops working at once in every web process; needs an admin key",
            "keys",
            responses({"204": ("revoked", None)}, "404", "409"),
        ),
    },
    "/health/live": {
        "get": operation(
            "live",
            "The process serves",
            "health",
            responses({"200": ("serving", obj({"status": {"type": "string", "enum": ["ok"]}}))}, public=True),
            public=True,
        )
    },
    "/health/ready": {
        "get": operation(
            "ready",
            "Database, queue and consumer checks",
            "health",
            responses(
                {
                    "200": ("ok, or degraded: no consumer heartbeat within HEARTBEAT_TIMEOUT", ref("Ready")),
                    "503": ("down: database or queue unreachable", ref("Ready")),
                },
                public=True,
            ),
            public=True,
        )
    },
    "/metrics": {
        "get": {
            **operation(
                "metrics",
                "Prometheus metrics (text exposition format 0.0.4)",
                "health",
                responses(
                    {
                        "200": ("the metrics", None),
                        "401": ("METRICS_TOKEN is set and was not sent", ref("Error")),
                        "403": ("ENV=production without METRICS_TOKEN or METRICS_PUBLIC=1: loopback only", ref("Error")),
                    },
                    public=True,
                ),
                description="Open unless METRICS_TOKEN is set; then `Authorization: Bearer <METRICS_TOKEN>`. "
                "With ENV=production and neither METRICS_TOKEN nor METRICS_PUBLIC=1, loopback callers only.",
            ),
            "security": [{}, {"metricsToken": []}],
        }
    },
}
PATHS["/metrics"]["get"]["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {
        "title": "litejobs",
        "version": VERSION,
        "description": "Call job functions over HTTP and follow every job's life. Every error is "
        '`{"error": {"code", "message", "field"?}}`; times are UTC ISO 8601 with a Z; ids are strings.',
    },
    "servers": [{"url": "/"}],
    "security": [{"bearerAuth": []}, {"apiKeyHeader": []}],
    "tags": [
        {"name": name}
        for name in (
            "jobs",
            "schedules",
            "workers",
            "orders",
            "users",
            "media",
            "analytics",
            "webhooks",
            "courses",
            "keys",
            "meta",
            "health",
        )
    ],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer <API key>"},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "metricsToken": {"type": "http", "scheme": "bearer", "description": "METRICS_TOKEN, when set"},
        },
        "responses": {
            **{
                f"E{status}": {
                    "description": why,
                    "content": {"application/json": {"schema": ref("Error")}},
                    **(
                        {"headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}}
                        if status == "429"
                        else {}
                    ),
                }
                for status, why in ERRORS.items()
            },
            "Error": {
                "description": "any other error, in the same shape (a 500 names a request id)",
                "content": {"application/json": {"schema": ref("Error")}},
            },
        },
    },
}


def document():
    """A copy of the document, safe to change."""
    return copy.deepcopy(DOCUMENT)
