"""courses' API: courses, enrollments, lesson completion, certificates."""


from bottle import Bottle, static_file
from peewee import IntegrityError

import jobs
import settings
from api import (
    ApiError,
    no_unknown_fields,
    read_json,
    ref_field,
    router,
    row_or_404,
    text_field,
)
from models import User
from apps.courses import models as courses

routes = Bottle()
api = router(routes)


@api("/api/v1/courses", "POST")
def create_course():
    """Create a course with its lessons, in order."""
    body = read_json()
    no_unknown_fields(body, ("title", "lessons"))
    title = text_field(body.get("title"), "title")
    lessons = body.get("lessons")
    if not isinstance(lessons, list) or not 1 <= len(lessons) <= 500:
        raise ApiError(422, "invalid_argument", "lessons: expected a list of 1 to 500 lesson titles", "lessons")
    titles = [text_field(title, "lessons") for title in lessons]
    return 201, courses.Course.create_with_lessons(title, titles).to_dict()


@api("/api/v1/courses/<course_id>")
def show_course(course_id):
    """One course with its lessons."""
    return row_or_404(courses.Course, course_id, "course").to_dict()


@api("/api/v1/enrollments", "POST")
def create_enrollment():
    """Enroll a user in a course."""
    body = read_json()
    no_unknown_fields(body, ("user_id", "course_id"))
    user = ref_field(body, "user_id", User, "user")
    course = ref_field(body, "course_id", courses.Course, "course")
    try:
        enrollment = courses.Enrollment.create(user=user, course=course)
    except IntegrityError:
        existing = courses.Enrollment.get((courses.Enrollment.user == user) & (courses.Enrollment.course == course))
        raise jobs.Conflict(f"user {user.id} is already enrolled in course {course.id} (enrollment {existing.id})") from None
    return 201, enrollment.to_dict()


@api("/api/v1/enrollments/<enrollment_id>")
def show_enrollment(enrollment_id):
    """An enrollment: its progress and, once earned, its certificate."""
    return row_or_404(courses.Enrollment, enrollment_id, "enrollment").to_dict()


@api("/api/v1/enrollments/<enrollment_id>/lessons/<lesson_id>/complete", "POST")
def complete_lesson(enrollment_id, lesson_id):
    """Mark a lesson done; the progress is recomputed in the background."""
    enrollment = row_or_404(courses.Enrollment, enrollment_id, "enrollment")
    lesson = row_or_404(courses.Lesson, lesson_id, "lesson")
    if lesson.course_id != enrollment.course_id:
        raise ApiError(404, "not_found", f"course {enrollment.course_id} has no lesson with id {lesson_id!r}")
    enrollment.complete_lesson(lesson)
    # Enqueued on every call: a repeat is harmless, and it heals a recount lost to an outage.
    job = jobs.enqueue("recalculate_course_progress", enrollment_id=enrollment.id)
    return {**enrollment.to_dict(), "job_id": job.id}


@api("/api/v1/certificates/<code>")
def verify_certificate(code):
    """Check a certificate's verification code."""
    certificate = courses.Certificate.by_code(code)
    if certificate is None:
        raise ApiError(404, "not_found", f"no certificate with code {code[:50]!r}")
    return certificate.to_dict()


@routes.route("/certificates-static/<filename:re:[A-Z0-9-]{4,40}\\.pdf>")
def certificate_file(filename):
    """A certificate PDF; its name is its verification code."""
    reply = static_file(filename, root=str(settings.CERTIFICATE_DIR), mimetype="application/pdf")
    if reply.status_code in (200, 206, 304):
        reply.set_header("Cache-Control", "private, max-age=86400")
        reply.set_header("X-Content-Type-Options", "nosniff")
    return reply
