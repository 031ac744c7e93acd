"""accounts' API: create a user (their welcome mail goes out in the background)."""

import json
import re

from bottle import Bottle

import jobs
from api import (
    ApiError,
    json_response,
    no_unknown_fields,
    read_json,
    router,
    text_field,
)

routes = Bottle()
api = router(routes)


EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")


@api("/api/v1/users", "POST")
def create_user():
    """Create a user; the welcome mail is sent in the background."""
    body = read_json()
    no_unknown_fields(body, ("email", "name"))
    email = text_field(body.get("email"), "email", 254).lower()
    if not EMAIL.fullmatch(email):
        raise ApiError(422, "invalid_argument", f"email: expected an address such as ann@example.com, got {email[:50]!r}", "email")
    name = body.get("name", "")
    if name is None:
        name = ""
    if not isinstance(name, str) or len(name.strip()) > 200:
        raise ApiError(422, "invalid_argument", f"name: expected a string of at most 200 characters, got {json.dumps(name)[:50]}", "name")
    user = jobs.create_user(email, name.strip())
    return json_response(201, user.to_dict())
