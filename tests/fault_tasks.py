"""Jobs for the fault tests: consumers in other processes load `fault_tasks.huey`."""

import time

import settings
from jobs import huey, task  # noqa: F401 - `huey` is what huey_consumer loads


@task(public=True)
def record_run(n: int, seconds: float = 0.02):
    """Sleep, then append `n` to runs.log in DATA_DIR: one line per completed run."""
    time.sleep(seconds)
    with open(settings.DATA_DIR / "runs.log", "a") as log:
        log.write(f"{n}\n")
    return n
