"""litejobs apps: each folder is one domain (its tables, jobs, schedules, routes and pages)."""
