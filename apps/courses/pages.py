"""courses' dashboard page: courses, enrollments with progress and certificates (read-only)."""


from bottle import Bottle
from peewee import fn

from apps.courses.models import Certificate, Course, Enrollment, Lesson
from dashboard import PAGE_SIZE, page, render
from models import User

pages = Bottle()


def route(path, method="GET"):
    return page(path, method, routes=pages)


@route("/courses")
def courses():
    """Courses with their lesson counts, and enrollments with progress and certificates."""
    lessons = {}
    for course_id, count in Lesson.select(Lesson.course, fn.COUNT(Lesson.id)).group_by(Lesson.course).tuples():
        lessons[course_id] = count
    course_rows = list(Course.select().order_by(Course.id.desc()).limit(200))
    enrollment_rows = list(
        Enrollment.select(Enrollment, Course, User)
        .join(Course)
        .switch(Enrollment)
        .join(User)
        .order_by(Enrollment.id.desc())
        .limit(PAGE_SIZE)
    )
    certificates = {
        c.enrollment_id: c
        for c in Certificate.select().where(Certificate.enrollment.in_([e.id for e in enrollment_rows]))
    } if enrollment_rows else {}
    return render(
        "courses",
        title="Courses",
        courses=course_rows,
        lessons=lessons,
        enrollments=enrollment_rows,
        certificates=certificates,
    )
