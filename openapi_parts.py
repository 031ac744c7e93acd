"""litejobs OpenAPI building blocks: the small helpers and shared pieces (types,
parameters, the error answers) that the engine's document and every app's
`openapi.py` build their paths and schemas from. `openapi` re-exports them."""


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
    "507": "insufficient_storage: the data disk is under DISK_RESERVE; nothing was written",
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
