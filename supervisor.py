"""litejobs supervisor: the consumer that `web.py run` starts, as a child process
(and its other web processes, WEB_PROCESSES, supervised the same way).

Job code never runs in the web server's event loop: `web.py run` starts
`python supervisor.py`, huey's consumer with WORKERS thread workers, and
keeps it running:

- a consumer that exits is started again after RESTART_DELAY, doubling up to
  RESTART_DELAY_MAX while it keeps dying young; its exit reason is logged;
- its output goes into the web process's log, each line after "[consumer] ";
- the web process talks to it through its stdin: a line when a job was
  enqueued, so its workers wake at once (as an in-process consumer's did),
  and end of file to stop gracefully (running jobs get SHUTDOWN_TIMEOUT).
  End of file also comes when the web process dies, so a consumer never
  outlives it. No signals are needed, which keeps Windows the same as Linux.
"""

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import settings

logger = logging.getLogger("litejobs.supervisor")

RESTART_DELAY = 1.0  # seconds before a consumer that exited is started again
RESTART_DELAY_MAX = 60.0  # the longest wait; a consumer that ran this long starts over at RESTART_DELAY
STOP_GRACE = 10.0  # seconds past SHUTDOWN_TIMEOUT before a consumer that does not stop is killed
PREFIX = "[consumer] "
CONSUMER_NICENESS = 5  # POSIX: the consumer's CPU priority below the web process's


def describe_exit(code):
    """'exited with code 1', or 'was killed by SIGKILL' for a POSIX signal."""
    if code is not None and code < 0:
        import signal

        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class ConsumerProcess:
    """The consumer of `web.py run`: a supervised child process. Runs in gevent's loop."""

    name = "consumer"
    prefix = PREFIX
    wake_ups = True  # pass this process's enqueues on (jobs._wake)

    def __init__(self, command=None):
        # -u: a print() in a job reaches the log at once, not when a pipe buffer fills.
        self.command = command or [sys.executable, "-u", str(Path(__file__).resolve())]
        self.process = None
        self.stopping = False
        self._greenlets = []

    def start(self):
        import gevent
        from gevent.event import Event

        self._stop_event = Event()
        self._greenlets = [gevent.spawn(self._keep_running)]
        if self.wake_ups:
            self._greenlets.append(gevent.spawn(self._pass_wake_ups))

    def _spawn(self):
        # The standard library's Popen (web.py leaves subprocess unpatched), the
        # same on Linux and Windows. Its blocking calls go to gevent's thread pool:
        # starting (in the loop's own thread it waited for ever on the exec
        # report), waiting for the exit (_keep_running) and reading (_relay).
        import gevent

        options = {}
        # Ctrl-C in a console or terminal reaches only the web process, which then
        # stops the consumer itself: a second Ctrl-C would cut its graceful stop short.
        if hasattr(subprocess, "CREATE_NEW_PROCESS_GROUP"):
            # Below the web process too, as os.nice() does on POSIX (run_child).
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.BELOW_NORMAL_PRIORITY_CLASS
        else:
            options["start_new_session"] = True
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
        process = gevent.get_hub().threadpool.apply(subprocess.Popen, (self.command,), {**pipes, **options})
        try:
            # A wake-up line never blocks the web process, even for a consumer that stopped reading.
            os.set_blocking(process.stdin.fileno(), False)
        except (AttributeError, OSError):
            pass  # Windows before Python 3.12: the consumer's reader thread keeps the pipe empty
        return process

    def _keep_running(self):
        import gevent

        delay = RESTART_DELAY
        while not self.stopping:
            started = time.monotonic()
            try:
                self.process = process = self._spawn()
            except OSError as exc:
                logger.error("cannot start the %s: %s; trying again in %g s", self.name, exc, delay)
            else:
                logger.info("%s started (pid %s)", self.name, process.pid)
                relay = gevent.spawn(self._relay, process.stdout, self.prefix)
                code = gevent.get_hub().threadpool.spawn(process.wait).get()
                relay.join(5)
                if self.stopping:
                    logger.info("%s (pid %s) %s", self.name, process.pid, describe_exit(code))
                    return
                if time.monotonic() - started >= RESTART_DELAY_MAX:
                    delay = RESTART_DELAY
                logger.error("%s (pid %s) %s; starting it again in %g s", self.name, process.pid, describe_exit(code), delay)
            self._stop_event.wait(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX)

    @staticmethod
    def _relay(stream, prefix=PREFIX):
        """Copy the child's output into this process's log, line by line, with its prefix."""
        import gevent

        read = gevent.get_hub().threadpool.apply
        pending = b""
        while True:
            chunk = read(stream.read1, (65536,))  # whatever is there: one hop per burst, not per line
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            sys.stderr.write("".join(prefix + line.decode("utf-8", "replace").rstrip("\r") + "\n" for line in lines))
        if pending:
            sys.stderr.write(prefix + pending.decode("utf-8", "replace") + "\n")
        sys.stderr.flush()

    def _pass_wake_ups(self):
        """Tell the consumer when this process enqueued a job (jobs._wake), one line per wake-up."""
        import jobs

        while not self.stopping:
            jobs._wake.wait()
            jobs._wake.clear()
            process = self.process
            # returncode, not poll(): poll() takes the lock a pool thread holds while it waits.
            if self.stopping or process is None or process.returncode is not None:
                continue
            try:
                process.stdin.write(b"\n")
                process.stdin.flush()
            except (OSError, ValueError):
                pass  # it just exited: _keep_running starts another, whose workers poll at start

    def stop(self):
        """Ask the consumer to stop gracefully (end of its stdin); returns at once."""
        import jobs

        self.stopping = True
        self._stop_event.set()
        jobs._wake.set()  # lets _pass_wake_ups see `stopping`
        process = self.process
        if process is not None and process.returncode is None:
            try:
                process.stdin.close()
            except OSError:
                pass

    def wait(self, timeout=None):
        """Wait for the stopped consumer to exit; kill it after `timeout` seconds. Returns its exit code."""
        import gevent

        process = self.process
        if timeout is None:
            timeout = settings.SHUTDOWN_TIMEOUT + STOP_GRACE
        if process is not None:
            exited = gevent.get_hub().threadpool.spawn(process.wait)
            try:
                exited.get(timeout=timeout)
            except gevent.Timeout:
                logger.warning("%s (pid %s) still running after %g s; killing it", self.name, process.pid, timeout)
                process.kill()
                exited.get()
        gevent.joinall(self._greenlets, timeout=5)
        return None if process is None else process.returncode


class WebProcess(ConsumerProcess):
    """One more web server process of `web.py run` on the same port (WEB_PROCESSES, SO_REUSEPORT):
    supervised as the consumer is, stopped gracefully the same way (end of its stdin)."""

    wake_ups = False

    def __init__(self, number):
        self.name = f"web process {number}"
        self.prefix = f"[web {number}] "
        script = str(Path(__file__).resolve().parent / "web.py")
        super().__init__([sys.executable, "-u", script, "run", "--no-consumer", "--stop-on-stdin-eof", "--shared-port"])


# -- The child process ---------------------------------------------------------------
def _listen_to_parent(consumer, wake):
    """Wake the workers on each line from the web process; stop at end of file."""
    # os.read, not sys.stdin: a daemon thread blocked inside sys.stdin's buffer
    # holds its lock, and Python then aborts at exit ("could not acquire lock").
    while os.read(sys.stdin.fileno(), 4096):
        wake.set()
    logger.info("the web process stops (or died): stopping gracefully")
    consumer.request_stop()  # huey then logs it as a SIGINT, its graceful stop


def unused_libraries():
    """The optional libraries huey and peewee import at their own import that this
    consumer does not use: gevent (huey's greenlet workers; this consumer's are
    threads), redis (a redis:// QUEUE_URL) and psycopg (a postgresql:// URL)."""
    schemes = {url.split(":", 1)[0].split("+")[0] for url in (settings.DATABASE_URL, settings.QUEUE_URL)}
    unused = ["gevent"]
    if not schemes & {"redis", "rediss"}:
        unused.append("redis")
    if not schemes & {"postgres", "postgresql"}:
        unused.append("psycopg")
    return unused


def import_jobs():
    """Import jobs.py (so huey and peewee) without the libraries of unused_libraries().

    Both import each of them in a try and do without it on ImportError; left out,
    they are ~20 of this process's ~57 MB. Only while jobs.py is imported: job
    code importing one later gets it as usual (huey's greenlet workers, huey's
    Redis storage and peewee's PostgresqlDatabase then still lack it here).
    """
    left_out = [name for name in unused_libraries() if name not in sys.modules]
    for name in left_out:
        sys.modules[name] = None  # makes `import name` raise ImportError
    try:
        import jobs
    finally:
        for name in left_out:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return jobs


def run_child():
    """Run the consumer of `web.py run`: thread workers, told by stdin when to wake and stop."""
    import logconfig

    logconfig.setup()
    if hasattr(os, "nice"):
        # Below the web process: on a busy CPU, HTTP answers go before job code.
        os.nice(CONSUMER_NICENESS)
    jobs = import_jobs()

    consumer = jobs.huey.create_consumer(workers=settings.WORKERS, worker_type="thread")
    threading.Thread(target=_listen_to_parent, args=(consumer, jobs._wake), name="ParentPipe", daemon=True).start()
    consumer.run()


if __name__ == "__main__":
    run_child()
