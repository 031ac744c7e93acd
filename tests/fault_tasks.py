"""Jobs for the fault tests: consumers in other processes load `fault_tasks.huey`."""

import os
import time

import settings
from jobs import huey, progress, task  # noqa: F401 - `huey` is what huey_consumer loads


@task(public=True)
def record_run(n: int, seconds: float = 0.02):
    """Sleep, then append `n` to runs.log in DATA_DIR: one line per completed run."""
    time.sleep(seconds)
    with open(settings.DATA_DIR / "runs.log", "a") as log:
        log.write(f"{n}\n")
    return n


def _probe_line(text):
    # One write() on an O_APPEND file: lines of several processes never interleave.
    fd = os.open(settings.DATA_DIR / "probe.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, f"{text}\n".encode())
    finally:
        os.close(fd)


@task(public=True, retries=5, retry_delay=0.3)
def probe(n: int, seconds: float = 0.02):
    """Append "start n" to probe.log, sleep reporting progress, then "end n" — unless
    progress() stopped the run because it lost its claim (or could not reach the
    database: then it is retried)."""
    _probe_line(f"start {n}")
    steps = max(1, round(seconds / 0.05))
    for step in range(steps):
        time.sleep(seconds / steps)
        progress(step + 1, steps)
    _probe_line(f"end {n}")
    return n
