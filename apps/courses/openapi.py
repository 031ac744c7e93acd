"""courses' part of /api/v1/openapi.json: its schemas (added to the document's) and paths."""

import openapi
from openapi import (
    BOOL,
    ID,
    STRING,
    TIME,
    json_body,
    obj,
    operation,
    path_param,
    ref,
    responses,
)

openapi.SCHEMAS.update(
    {
        "CourseInput": obj(
            {
                "title": STRING,
                "lessons": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string"},
                },
            }
        ),
        "Course": obj(
            {
                "id": ID,
                "title": STRING,
                "lessons": {"type": "array", "items": obj({"id": ID, "title": STRING})},
            },
        ),
        "EnrollmentInput": obj({"user_id": ID, "course_id": ID}),
        "Enrollment": obj(
            {
                "id": ID,
                "user_id": ID,
                "course_id": ID,
                "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                "certificate": {
                    "oneOf": [obj({"code": STRING, "url": STRING}), {"type": "null"}]
                },
            }
        ),
        "Certificate": obj(
            {
                "valid": BOOL,
                "name": STRING,
                "course": STRING,
                "issued_at": TIME,
                "url": STRING,
            },
        ),
    }
)

PATHS = {
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
            responses(
                {"201": ("the enrollment", ref("Enrollment"))}, "409", "422", body=True
            ),
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
        "parameters": [
            path_param("id", "the enrollment's id"),
            path_param("lesson_id", "the lesson's id"),
        ],
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
}
