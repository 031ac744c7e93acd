"""content' part of /api/v1/openapi.json: its schemas (added to the document's) and paths."""

import openapi
from openapi import (
    ID,
    INT,
    LOCATION,
    NUMBER,
    STRING,
    TIME,
    json_body,
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
        "PostInput": obj(
            {
                "author_id": ID,
                "body": {"type": "string", "description": "text with #hashtags"},
            }
        ),
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
                "media": {
                    "type": "array",
                    "items": ref("Media"),
                    "description": "GET /api/v1/posts/{id} only",
                },
            },
            required=["id", "body"],
        ),
        "Trending": obj(
            {
                "computed_at": nullable(TIME),
                "hashtags": {
                    "type": "array",
                    "items": obj({"tag": STRING, "count": INT}),
                },
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
        "MediaUpload": obj(
            {
                "id": ID,
                "post_id": ID,
                "status": {"type": "string", "enum": ["processing"]},
                "job_id": ID,
            }
        ),
        "Media": obj(
            {
                "id": ID,
                "post_id": ID,
                "status": {
                    "type": "string",
                    "enum": ["processing", "ready", "rejected"],
                },
                "error": nullable(STRING),
                "width": nullable(INT),
                "height": nullable(INT),
                "urls": obj(
                    {
                        "web": nullable(STRING),
                        "thumb_320": nullable(STRING),
                        "thumb_640": nullable(STRING),
                    },
                    description="null until ready; thumbs keep the aspect ratio, longest side N px",
                ),
            }
        ),
    }
)

PATHS = {
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
            responses(
                {
                    "200": (
                        "the post, with `media`: its uploads as Media objects",
                        ref("Post"),
                    )
                },
                "404",
            ),
        ),
    },
    "/api/v1/posts/{id}/media": {
        "parameters": [path_param("id", "the post's id")],
        "post": operation(
            "uploadMedia",
            "Attach an image to a post; it is processed in the background",
            "media",
            responses(
                {"202": ("the media, processing", ref("MediaUpload"), LOCATION)},
                "404",
                "422",
                body=True,
            ),
            request_body={
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": obj(
                            {
                                "file": {
                                    "type": "string",
                                    "contentMediaType": "application/octet-stream",
                                }
                            }
                        )
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
            [
                query_param(
                    "days",
                    "how many days back (default 30)",
                    {"type": "integer", "minimum": 1, "maximum": 366},
                )
            ],
        )
    },
}
