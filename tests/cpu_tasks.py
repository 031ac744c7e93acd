"""Test-only job functions that keep a CPU busy, for the consumer that `web.py run` starts."""

import time

from jobs import task


@task(public=True)
def burn_cpu(seconds: float) -> int:
    """Pure-Python work for `seconds` (no sleep, no I/O); returns the loop count."""
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        for _ in range(1000):
            count += 1
    return count
