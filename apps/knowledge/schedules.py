"""The knowledge app's schedules: crontabs read in TIMEZONE, like every schedule.

Until apps declare themselves (issue 14) the engine's schedules.py lists the
same lines: the app cannot add them at import, since importing `schedules`
first imports jobs, which imports this app before `schedule()` exists.
"""

SCHEDULES = [
    ("process_sync_queue", "*/5 * * * *"),
    ("cleanup_query_cache", "0 2 * * *"),
    ("cleanup_old_conversations", "0 3 * * 0"),  # Sundays
    ("reset_all_daily_limits", "0 0 * * *"),
]
