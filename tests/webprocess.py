"""A real `python web.py …` process (gevent server) for tests that need one: the
command line, several web processes on one database, the server's own limits."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import Client, free_port

ROOT = Path(__file__).resolve().parent.parent


def cli_env(data_dir, **extra):
    """The environment of a litejobs process on `data_dir`: the suite's defaults plus `extra`."""
    return {**os.environ, "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), **extra}


def cli(data_dir, *args, **extra):
    """Run `python web.py ARGS…`; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "web.py", *args], cwd=ROOT, env=cli_env(data_dir, **extra), capture_output=True, text=True, timeout=60
    )


class WebProcess:
    """`python web.py run --no-consumer` on `data_dir`, stopped with SIGINT."""

    def __init__(self, data_dir, log_path, **extra):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        env = cli_env(data_dir, PORT=str(self.port), **extra)
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "web.py", "run", "--no-consumer"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if Client(self.url).get("/health/live").status == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"web process did not start:\n{self.log()}")
            time.sleep(0.1)

    def client(self, key=None):
        return Client(self.url, key)

    def log(self):
        return self.log_path.read_text()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
