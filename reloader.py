"""litejobs reloader: `python web.py run --reload` restarts the server when a watched file changes.

A parent process runs `web.py run` as its child and polls the modification
times of the apps' and FUNCTIONS_DIR's Python files. On a change it closes the
child's stdin, which the child takes as "stop": the same graceful stop as
Ctrl-C, so running jobs finish first; then it starts a new child. Polling and
a closed pipe work the same on Linux, macOS and Windows: no fork, and only
SIGINT (Ctrl-C), which Windows has too.
"""

import logging
import signal
import subprocess
import threading
import time
from pathlib import Path

logger = logging.getLogger("litejobs.reloader")


def snapshot(folders):
    """{path: modification time} of every *.py under `folders`."""
    seen = {}
    for folder in folders:
        for path in Path(folder).rglob("*.py") if Path(folder).is_dir() else ():
            try:
                seen[path] = path.stat().st_mtime_ns
            except FileNotFoundError:
                pass  # removed while we looked: the next look sees it gone
    return seen


def changes(before, after):
    """The paths added, removed or modified between two snapshots."""
    return sorted(str(path) for path in set(before) | set(after) if before.get(path) != after.get(path))


def stop(child, timeout):
    """Ask `child` to stop gracefully (close its stdin); kill it after `timeout` seconds."""
    if child.poll() is None:
        try:
            child.stdin.close()
        except OSError:
            pass
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("server did not stop within %s s; killing it", timeout)
            child.kill()
            child.wait()
    return child.returncode


def run(command, folders, timeout, interval=0.5, cwd=None, rounds=None):
    """Run `command`, restarting it on every change under `folders`, until Ctrl-C.

    `rounds` (for tests) ends after that many runs of the child.
    """
    # Ctrl-C reaches the child too, which stops itself; here it only ends the loop.
    # A flag rather than KeyboardInterrupt: under gevent (web.py patches first) the
    # interrupt may land in the hub and surface later, outside any handler.
    interrupted = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    started = 0
    while rounds is None or started < rounds:
        before = snapshot(folders)
        child = subprocess.Popen(command, stdin=subprocess.PIPE, cwd=cwd)
        started += 1
        while not interrupted.is_set():
            time.sleep(interval)
            changed = changes(before, snapshot(folders))
            if changed:
                logger.info("changed: %s; restarting once running jobs finish", ", ".join(changed[:5]))
                break
        code = stop(child, timeout)
        if interrupted.is_set():
            return code
    return 0
