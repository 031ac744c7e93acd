"""litejobs logging: one line per event on stderr, at the levels the settings give.

litejobs' own loggers (and huey's, apps' and user functions') log at
LOG_LEVEL; every other library at LIBRARY_LOG_LEVEL, WARNING unless asked:
fontTools alone writes some twenty INFO lines per certificate.

Where gevent patched the standard library, logging's locks became greenlet
locks, and a real thread that logs (gevent's thread pool rendering a PDF, a
library's own thread) can then wait on one for ever. `setup()` gives logging
real locks again: a handler holds its lock only while it writes a line, which
never yields to another greenlet, so greenlets never wait on each other there.
"""

import logging
import sys

import settings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
OWN_LOGGERS = ("litejobs", "apps", "functions")


def setup(prefix=""):
    """Log to stderr, each line starting with `prefix` (e.g. "[web] ")."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(prefix + FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_levels()
    logging.getLogger("huey").setLevel(settings.LOG_LEVEL)


def set_levels():
    """Own loggers at LOG_LEVEL, the rest at LIBRARY_LOG_LEVEL; real locks under gevent."""
    logging.getLogger().setLevel(settings.LIBRARY_LOG_LEVEL)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(settings.LOG_LEVEL)
    use_real_locks()


def use_real_locks():
    """Give logging real thread locks when gevent made them greenlet locks."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return
    # threading.RLock is patched to a lock built on gevent's; _thread's C RLock is not.
    real_rlock = monkey.get_original("_thread", "RLock")

    def create_lock(handler):
        handler.lock = real_rlock()
        logging._register_at_fork_reinit_lock(handler)

    logging._lock = real_rlock()
    logging.Handler.createLock = create_lock
    for ref in list(logging._handlerList):
        handler = ref()
        if handler is not None:
            handler.lock = real_rlock()
