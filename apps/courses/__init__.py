"""courses: courses and lessons, enrollments and their progress, PDF certificates.

Builds on content: its cache cleanup also removes media uploads nothing owns.
"""

import settings

if "content" not in settings.APPS:
    raise SystemExit(
        "litejobs: cannot start: APPS names courses but not content, which it needs (its cleanup removes "
        f"uploads no content media row owns); use APPS={','.join([*settings.APPS, 'content'])}"
    )

from apps.courses import migrations, models, openapi, pages, routes, tasks  # noqa: E402
from hooks import App  # noqa: E402
from schedules import schedule  # noqa: E402

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
