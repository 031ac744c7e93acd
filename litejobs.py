"""litejobs: the one import surface for your own functions.

    from litejobs import task, schedule, progress, JobError

    @task(queue="emails", retries=3, public=True)
    def send_receipt(order_id: int): ...

    schedule("send_receipt", "0 9 * * *", order_id=1)

Put such a file in FUNCTIONS_DIR (default ./functions) or name your package in
APPS; it is loaded at start like the built-in apps. A task's name is its
function's name, so queued jobs still find it after the file is renamed.
"""

from jobs import JobError, enqueue, fail_now, progress, task
from schedules import schedule

__all__ = ["JobError", "enqueue", "fail_now", "progress", "schedule", "task"]
