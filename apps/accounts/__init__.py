"""accounts: users' welcome mail, the create-user API, nightly token and quota cleanup."""

from apps.accounts import migrations, openapi, routes, tasks
from hooks import App
from schedules import schedule

app = App(
    "accounts",
    modules=[tasks, routes],
    queues={"emails": 8, "maintenance": 3},
    schedules=[
        schedule("cleanup_expired_tokens", "0 2 * * *"),
        schedule("reset_daily_quotas", "0 0 * * *"),
    ],
    api=routes.routes,
    openapi=openapi.PATHS,
    migrations=migrations.MIGRATIONS,
    settings=["BASE_URL", "SMTP_URL"],
)
