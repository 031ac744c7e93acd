"""Loaded first by every Python started with this folder on PYTHONPATH: the
consumer process that `web.py run` starts (supervisor.py) then registers the
test-only job functions of tests/cpu_tasks.py too. The web process itself is
left alone, so gevent still patches before anything else imports."""

import sys

if sys.argv and sys.argv[0].endswith("supervisor.py"):
    import supervisor

    supervisor.import_jobs()  # first, as the consumer does: without the libraries it does not use
    import cpu_tasks  # noqa: F401
