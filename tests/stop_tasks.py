"""Jobs for the hard-stop tests: consumers in other processes load `stop_tasks.huey`."""

import time

from jobs import huey, task  # noqa: F401 - `huey` is what huey_consumer loads


@task(public=True, limit=1)
def spin(seconds: float):
    """Keep the CPU busy for `seconds` without ever calling progress()."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds


@task(public=True, retries=1, retry_delay=0)
def spin_with_retries(seconds: float):
    """spin(), with one retry."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return seconds
