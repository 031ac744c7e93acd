"""courses: courses and lessons, enrollments and their progress, PDF certificates.

Builds on content: its cache cleanup also removes media uploads nothing owns.
"""

from apps.courses import migrations, models, openapi, pages, routes, tasks
from hooks import App
from schedules import schedule

app = App(
    "courses",
    models=[models.Course, models.Lesson, models.Enrollment, models.LessonCompletion, models.Certificate],
    modules=[tasks, routes, pages],
    queues={"progress": 5, "certificates": 4, "emails": 8, "cleanup": 3},
    schedules=[schedule("cleanup_old_cache", "0 */6 * * *")],
    api=routes.routes,
    openapi=openapi.PATHS,
    migrations=migrations.MIGRATIONS,
    pages=pages.pages,
    nav=[("Courses", "/courses")],
    settings=["CERTIFICATE_DIR"],
)
