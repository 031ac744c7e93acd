"""The getting-started page works as written: every `sh` block of
docs/getting-started.md runs in a copy of the project, against `make run`.

The page's blocks are run in order in one bash session (so a variable set in one
block is seen by the next), with `set -euo pipefail`. A block that is just
`make run` starts the server in the background instead, as the reader's first
terminal would. The copy keeps the tracked files only (a fresh clone) and shares
this checkout's venv; the page's port 8000 is swapped for a free one so the test
never reaches a server a user runs.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "getting-started.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)

pytestmark = pytest.mark.slow


def shell_blocks(text):
    return [block.strip() for block in BLOCK.findall(text)]


def fresh_copy(target):
    """The tracked files of this checkout, as a clone would have them."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)  # keeps mtimes: make sees the venv as current
    (target / ".venv").symlink_to((ROOT / ".venv").resolve())


def wait_live(port, process, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "make run exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("make run did not answer /health/live")


def test_page_has_runnable_blocks():
    blocks = shell_blocks(PAGE.read_text())
    assert blocks[0] == "make run"
    assert len(blocks) >= 3


def test_every_shell_block_of_getting_started_runs(tmp_path):
    if not (ROOT / ".venv" / "bin" / "python").exists() or shutil.which("make") is None:
        pytest.fail("needs make and the project's .venv (make test creates it)")
    project = tmp_path / "litejobs"
    fresh_copy(project)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITEJOBS_", "PYTEST"))}
    env.update(PORT=str(port), HOST="127.0.0.1", PYTHON=sys.executable)
    for name in ("DATA_DIR", "DATABASE_URL", "QUEUE_URL", "LOG_LEVEL", "RUN_SCHEDULES", "ENV", "SECRET_KEY", "FUNCTIONS_DIR"):
        env.pop(name, None)
    blocks = [b.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for b in shell_blocks(PAGE.read_text())]
    server = subprocess.Popen(
        ["make", "run"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_live(port, server)
        script = "set -euo pipefail\n" + "\n".join(blocks[1:])
        done = subprocess.run(["bash", "-c", script], cwd=project, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"a block failed:\n{done.stdout}\n{done.stderr}"
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
