"""litejobs OpenAPI: the document served at GET /api/v1/openapi.json.

A plain dict, built once, in the order of API.md: jobs and functions first,
then schedules, workers and queues, orders, users and posts, analytics,
webhooks, media and courses, health and metrics. The tests check it with
openapi-spec-validator, check that every API route of web.app is in it, and
check real answers of the app against its schemas.
"""

import copy

from openapi_parts import (  # noqa: F401 re-exported: apps build their documents from openapi.*
    BOOL,
    CURSOR,
    ERRORS,
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

VERSION = "1"


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
                        "too_large, invalid_argument, rate_limited, internal, unavailable, insufficient_storage, bad_host",
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
            "function": {"type": "string", "description": "the function it runs"},
            "cron": {"type": "string", "description": "crontab read in `timezone`, e.g. 0 2 * * *"},
            "args": {"type": "object", "description": "the function's arguments"},
            "queue": {"type": "string", "description": "the queue its jobs go to"},
            "timezone": {"type": "string", "description": "IANA time zone the crontab is read in (default TIMEZONE)"},
            "source": {"type": "string", "enum": ["code", "api"], "description": "declared in code, or added at run time"},
            "overridden": {"type": "boolean", "description": "a code schedule with fields edited at run time"},
            "paused": BOOL,
            "next_run": nullable(TIME),
            "last_run": nullable(TIME),
            "last_status": nullable(STRING),
            "last_job_id": nullable(STRING),
        }
    ),
    "ScheduleChange": obj(
        {
            "action": {"type": "string", "enum": ["added", "edited", "deleted", "reset", "paused", "resumed"]},
            "who": {"type": "string", "description": "the API key or dashboard user that made it"},
            "at": TIME,
            "before": nullable({"type": "object"}),
            "after": nullable({"type": "object"}),
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
            "apps": {"type": "array", "items": {"type": "string"}, "description": "the apps it loaded (APPS, FUNCTIONS_DIR)"},
            "queues": nullable(
                {"type": "array", "items": {"type": "string"}, "description": "the queues it serves (QUEUES); null: every queue"}
            ),
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
            "served": {"type": "boolean", "description": "whether a live consumer serves this queue (QUEUES)"},
        }
    ),
    "Check": obj(
        {
            "status": {"type": "string", "enum": ["ok", "degraded", "down", "unknown"]},
            "error": {"type": "string", "description": "why it is not ok"},
        },
        required=["status"],
    ),
    "Ready": obj(
        {
            "status": {"type": "string", "enum": ["ok", "degraded", "down"]},
            "checks": obj(
                {"database": ref("Check"), "queue": ref("Check"), "disk": ref("Check"), "consumer": ref("Check"), "apps": ref("Check"),
                 "queues": ref("Check")}
            ),
        }
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


def invoke_operation(op_id, summary, deprecated=False, description=None):
    """Calling a function: one operation, served on its own path and on the deprecated alias."""
    op = operation(
        op_id,
        summary,
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
            "507",
            body=True,
        ),
        [
            query_param(
                "wait", "seconds to wait for the result, 0 to 30", {"type": "number", "minimum": 0, "maximum": 30}
            ),
            query_param("delay", "seconds from now to run it", {"type": "number", "minimum": 0, "maximum": 31622400}),
            query_param("eta", "when to run it (ISO 8601; no offset means UTC); not with delay", {"type": "string"}),
            query_param("priority", "higher runs first", {"type": "integer", "minimum": -1000, "maximum": 1000}),
            IDEMPOTENCY_KEY,
        ],
        json_body({"type": "object", "description": "keyword arguments of the function"}),
        description=description,
    )
    if deprecated:
        op["deprecated"] = True
    return op


PATHS = {
    "/api/v1/functions": {
        "get": operation(
            "listFunctions",
            "The public job functions with their parameters",
            "jobs",
            responses({"200": ("the functions", listing("functions", ref("Function")))}),
        )
    },
    "/api/v1/functions/{name}/jobs": {
        "parameters": [path_param("name", "the job function to call (see GET /api/v1/functions)")],
        "post": invoke_operation(
            "invokeFunction",
            "Call job function `name` with the JSON body as its keyword arguments",
            description="Answers 202 with the job at once, or 200 with the finished job when `wait` was given "
            "and it finished in time (also when it failed: look at `status`).",
        ),
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
        "post": invoke_operation(
            "invokeFunctionDeprecated",
            "Deprecated: call job function `id`; use POST /api/v1/functions/{name}/jobs",
            deprecated=True,
            description="The first path for calling a function, kept working as an alias of "
            "POST /api/v1/functions/{name}/jobs (same body, parameters and answers). In this path "
            "template `id` is the function's name for POST and the job's id for GET.",
        ),
    },
    "/api/v1/jobs/{id}/cancel": {
        "parameters": [path_param("id", "the job's id")],
        "post": operation(
            "cancelJob",
            "Cancel a waiting job, or ask a running one to stop; with terminate=true a running one is stopped at once",
            "jobs",
            responses(
                {
                    "200": (
                        "the job: canceled, or running with cancel_requested; with terminate=true also `terminate`, "
                        "the means used on a running job (thread-exception, greenlet-exception or process-ended)",
                        {
                            "allOf": [
                                ref("Job"),
                                obj(
                                    {"terminate": {"type": ["string", "null"], "enum": [
                                        "thread-exception", "greenlet-exception", "process-ended", None]}},
                                    required=[],
                                ),
                            ]
                        },
                    )
                },
                "404",
                "409",
                "422",
            ),
            [
                query_param(
                    "terminate",
                    "true: stop a running job now, even one that never calls progress() (the answer waits up to 5 s)",
                    {"type": "boolean"},
                )
            ],
        ),
    },
    "/api/v1/jobs/{id}/logs": {
        "parameters": [path_param("id", "the job's id")],
        "get": operation(
            "getJobLogs",
            "What the job logged and printed while it ran (its last 64 KiB; `truncated` when older lines were cut)",
            "jobs",
            responses(
                {
                    "200": (
                        "the job's log",
                        obj({"job_id": ID, "lines": {"type": "array", "items": STRING}, "truncated": BOOL}),
                    )
                },
                "404",
            ),
        ),
    },
    "/api/v1/jobs/{id}/retry": {
        "parameters": [path_param("id", "the job's id")],
        "post": operation(
            "retryJob",
            "Run a finished job again as a new job (parent_id links them)",
            "jobs",
            responses({"202": ("the new job", ref("Job"), LOCATION)}, "404", "409", "507"),
        ),
    },
    "/api/v1/schedules": {
        "get": operation(
            "listSchedules",
            "Periodic tasks with their next and last run",
            "schedules",
            responses({"200": ("the schedules", listing("schedules", ref("Schedule")))}),
        ),
        "post": operation(
            "addSchedule",
            "Add a schedule at run time",
            "schedules",
            responses({"201": ("the schedule", ref("Schedule"), LOCATION)}, "409", "422", body=True),
            request_body=json_body(
                obj(
                    {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$"},
                        "function": {"type": "string", "description": "a loaded function (GET /api/v1/functions)"},
                        "cron": {"type": "string", "description": "minute hour day month day-of-week"},
                        "args": {"type": "object", "description": "checked against the function's signature"},
                        "queue": nullable({"type": "string", "description": "default: the function's queue"}),
                        "timezone": nullable({"type": "string", "description": "IANA name; default TIMEZONE"}),
                    },
                    required=["name", "function", "cron"],
                ),
                "422 names the bad field: `cron` (with the parser's message), `function`, `timezone`, "
                "`queue`, `name`, `args`, or `args.<argument>`",
            ),
        ),
    },
    "/api/v1/schedules/{name}": {
        "parameters": [path_param("name", "the schedule's name")],
        "get": operation(
            "showSchedule",
            "A schedule with its change log (who, when, before and after)",
            "schedules",
            responses(
                {"200": ("the schedule", {"allOf": [ref("Schedule"), listing("changes", ref("ScheduleChange"))]})}, "404"
            ),
        ),
        "patch": operation(
            "editSchedule",
            "Change a schedule's function, cron, args, queue or timezone",
            "schedules",
            responses({"200": ("the schedule", ref("Schedule"))}, "404", "422", body=True),
            request_body=json_body(
                obj(
                    {
                        "function": STRING,
                        "cron": STRING,
                        "args": nullable({"type": "object"}),
                        "queue": nullable(STRING),
                        "timezone": nullable(STRING),
                    },
                    required=[],
                ),
                "only the fields to change; null puts a field back to its default",
            ),
        ),
        "delete": operation(
            "deleteSchedule",
            "Remove an added schedule, or reset one declared in code to its declaration",
            "schedules",
            responses({"204": ("done", None)}, "404"),
        ),
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
                    "200": ("ok, or degraded: no consumer heartbeat within HEARTBEAT_TIMEOUT and no job waiting", ref("Ready")),
                    "503": (
                        "down: database not writable, queue unreachable, disk under DISK_RESERVE, "
                        "or jobs waiting with no consumer heartbeat",
                        ref("Ready"),
                    ),
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


def document(apps=(), functions=()):
    """A copy of the document with the paths of `apps` (hooks.App.openapi) and a
    POST /api/v1/functions/<name>/jobs for each of `functions` (jobs.Function), safe to change."""
    doc = copy.deepcopy(DOCUMENT)
    for app in apps:
        doc["paths"].update(copy.deepcopy(app.openapi))
    for function in functions:
        doc["paths"][f"/api/v1/functions/{function.name}/jobs"] = {"post": function_operation(function)}
    return doc


ARGUMENT_TYPES = {
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "str": {"type": "string"},
    "bool": {"type": "boolean"},
    "list": {"type": "array", "items": {}},  # items: generated clients need them
    "dict": {"type": "object"},
    "any": {},
}


def function_operation(function):
    """The generic invoke operation, with this function's arguments as the body's schema."""
    operation_ = copy.deepcopy(PATHS["/api/v1/functions/{name}/jobs"]["post"])
    properties, required = {}, []
    for param in function.params:
        spec = param.to_dict()
        schema = dict(ARGUMENT_TYPES[spec["type"]])
        if "minimum" in spec:
            schema.update({k: v for k, v in (("minimum", spec["minimum"]), ("maximum", spec["maximum"])) if v is not None})
        if "default" in spec:
            schema["default"] = spec["default"]
        properties[param.name] = nullable(schema) if param.nullable and schema else schema
        if spec["required"]:
            required.append(param.name)
    body = obj(properties, required, description="keyword arguments")
    body["additionalProperties"] = False
    operation_.update(
        operationId=f"invoke_{function.name}",
        summary=(function.doc.splitlines() or [f"Call {function.name}"])[0],
        requestBody=json_body(body),
        description=f"Calls job function `{function.name}` (queue `{function.queue}`).",
    )
    return operation_
