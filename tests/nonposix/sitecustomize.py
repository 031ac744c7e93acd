"""Loaded first by every Python started with this folder on PYTHONPATH: the
POSIX-only calls that Windows lacks are taken away before litejobs, huey,
peewee or bottle import anything.

- `os.fork` and `os.forkpty` are deleted;
- `signal.SIGHUP`, `SIGUSR1`, `SIGUSR2`, `SIGQUIT` and `SIGALRM` are deleted;
- `import fcntl` (and `termios`, `pwd`, `grp`, `resource`) fails.

gevent alone keeps its Linux internals: on Windows it loads a Windows
implementation of the same modules instead, which cannot be run here. So its
subprocess module (which takes `os.fork` when imported) is loaded before the
deletions, and its own imports of fcntl go through.
"""

import builtins
import os
import signal

import gevent.subprocess  # noqa: F401 - see the docstring

for _name in ("fork", "forkpty"):
    if hasattr(os, _name):
        delattr(os, _name)
for _name in ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGQUIT", "SIGALRM"):
    if hasattr(signal, _name):
        delattr(signal, _name)

POSIX_ONLY = {"fcntl", "termios", "pwd", "grp", "resource"}
_import = builtins.__import__


def _import_without_posix(name, globals=None, locals=None, fromlist=(), level=0):
    # Checked on every import statement, so a module imported earlier by gevent is refused too.
    if level == 0 and name.partition(".")[0] in POSIX_ONLY:
        importer = (globals or {}).get("__name__") or ""
        if not importer.startswith("gevent"):
            raise ModuleNotFoundError(f"No module named {name!r} (as on Windows)", name=name)
    return _import(name, globals, locals, fromlist, level)


builtins.__import__ = _import_without_posix
