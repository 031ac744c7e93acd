"""Jobs of two queues for the consumers-per-queue tests: consumer processes load `queue_tasks.huey`."""

from jobs import huey, task  # noqa: F401 - `huey` is what huey_consumer loads


@task(queue="media", public=True)
def resize_photo(n: int):
    """A media job."""
    return n


@task(queue="sync", public=True)
def sync_catalog(n: int):
    """A sync job."""
    return n
