"""accounts' part of /api/v1/openapi.json: its schemas (added to the document's) and paths."""

import openapi
from openapi import (
    BOOL,
    ID,
    LOCATION,
    STRING,
    TIME,
    json_body,
    obj,
    operation,
    ref,
    responses,
)

openapi.SCHEMAS.update(
    {
        "UserInput": obj(
            {"email": {"type": "string", "format": "email"}, "name": STRING},
            required=["email"],
        ),
        "User": obj(
            {
                "id": ID,
                "email": STRING,
                "name": STRING,
                "active": BOOL,
                "created_at": TIME,
            }
        ),
    }
)

PATHS = {
    "/api/v1/users": {
        "post": operation(
            "createUser",
            "Create a user; a welcome mail is sent in the background",
            "users",
            responses(
                {"201": ("the user", ref("User"), LOCATION)}, "409", "422", body=True
            ),
            request_body=json_body(ref("UserInput")),
        )
    },
}
