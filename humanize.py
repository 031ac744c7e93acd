"""litejobs humanize: numbers as a person reads them on the dashboard."""


def duration(seconds):
    """`78 µs`, `0.5 ms`, `12 ms`, `1.2 s`, `42 s`, `3 min 4 s`, `2 h 5 min`, `3 d 4 h`; `—` for None.

    Two significant figures at most below 10 s, whole units above: enough to
    compare runs at a glance. Each unit is chosen on the rounded value, so
    0.99996 s reads `1.0 s`, never `1000 ms`.
    """
    if seconds is None:
        return "—"
    seconds = max(float(seconds), 0.0)
    if round(seconds * 1e6) < 100:
        return f"{round(seconds * 1e6)} µs"
    ms = seconds * 1000
    if round(ms, 1) < 10:
        return f"{ms:.1f} ms"
    if round(ms) < 1000:
        return f"{round(ms)} ms"
    if round(seconds, 1) < 10:
        return f"{seconds:.1f} s"
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60} s"
    if total < 86400:
        return f"{total // 3600} h {total % 3600 // 60} min"
    return f"{total // 86400} d {total % 86400 // 3600} h"


def duration_ms(milliseconds):
    """duration() of a time stored in milliseconds (Job.duration_ms)."""
    return duration(None if milliseconds is None else milliseconds / 1000)
