"""content: posts, likes, comments and shares, media uploads, analytics and weekly digests."""

from apps.content import migrations, models, openapi, pages, routes, tasks
from hooks import App
from schedules import schedule

app = App(
    "content",
    models=[models.Post, models.Like, models.Comment, models.Share, models.PostTag, models.Media, models.UserStats,
            models.DailyAnalytics, models.TrendingSnapshot, models.DigestWeek],
    modules=[tasks, routes, pages],
    queues={"media": 9, "emails": 8, "analytics": 5, "maintenance": 3},
    schedules=[
        # The schedule keeps its name; the function of that name is the knowledge app's.
        schedule("update_user_statistics", "0 3 * * *", function="update_post_statistics"),
        schedule("update_trending_hashtags", "0 * * * *"),
        schedule("generate_content_analytics", "0 4 * * *"),
        schedule("update_post_engagement_scores", "0 5 * * *"),
        schedule("send_weekly_digest", "0 9 * * 1"),
        schedule("cleanup_old_posts", "0 1 * * 0"),
    ],
    api=routes.routes,
    openapi=openapi.PATHS,
    migrations=migrations.MIGRATIONS,
    pages=pages.pages,
    nav=[("Analytics", "/analytics")],
    settings=["UPLOAD_MAX_MB", "UPLOAD_DIR", "IMAGE_MAX_PIXELS", "POST_RETENTION_DAYS"],
)
