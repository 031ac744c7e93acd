"""litejobs preflight: a database or queue that cannot be reached, said in one line.

Every entry point (`web.py`, the consumer that `web.py run` starts,
`huey_consumer jobs.huey`) stops with this line instead of a driver's
traceback: it names the setting, the URL (without its password) and the fix
where one is known.
"""

import re
import shlex
import sys
from urllib.parse import urlsplit, urlunsplit

import models
import settings


def check_services(check_queue):
    """Create the tables and reach the queue (`check_queue`, jobs' own check); exit with
    one line naming the setting that failed."""
    for setting, url, check in (
        ("DATABASE_URL", settings.DATABASE_URL, models.create_tables),
        ("QUEUE_URL", settings.QUEUE_URL, check_queue),
    ):
        try:
            check()
        except Exception as exc:  # any driver's error: one line, not its traceback
            sys.exit(unreachable(setting, url, exc))


def without_password(url):
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def createdb_command(url, name):
    """The `createdb` command that makes database `name` on the server of `url`."""
    parts = urlsplit(url)
    command = ["createdb"]
    if parts.hostname:
        command += ["-h", parts.hostname]
    if parts.port:
        command += ["-p", str(parts.port)]
    if parts.username:
        command += ["-U", parts.username]
    return shlex.join(command + [name])


def unreachable(setting, url, exc):
    """The one line that says why `url` (the value of `setting`) failed with `exc`."""
    text = str(exc)
    missing = re.search(r'database "([^"]+)" does not exist', text)
    if missing:
        name = missing.group(1)
        return f'litejobs: cannot start: {setting}: database "{name}" does not exist; create it with {createdb_command(url, name)}'
    # Drivers' messages run over several lines (psycopg adds a hint): keep the first, in one line.
    first = " ".join(text.strip().splitlines()[0].split()) if text.strip() else ""
    reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"litejobs: cannot start: {setting}: cannot use {without_password(url)}: {reason}"
