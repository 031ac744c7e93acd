"""`web.py run --reload`: a saved functions file restarts the server, after its running jobs finish."""

import signal
import subprocess
import sys

import pytest

import reloader
from helpers import ROOT, Client, cli_env, free_port, readme_example, wait_until


def test_snapshot_sees_added_changed_and_removed_files(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("not watched\n")
    before = reloader.snapshot([tmp_path])
    assert reloader.changes(before, reloader.snapshot([tmp_path])) == []
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("still not watched\n")
    after = reloader.snapshot([tmp_path])
    assert reloader.changes(before, after) == [str(tmp_path / "b.py")]
    (tmp_path / "a.py").unlink()
    assert reloader.changes(after, reloader.snapshot([tmp_path])) == [str(tmp_path / "a.py")]


def answer(client, method, path, body=None):
    """The reply, or None while the server restarts (connection refused)."""
    try:
        return client.request(method, path, json_body=body)
    except OSError:
        return None


@pytest.mark.slow
def test_saving_a_functions_file_restarts_the_server_once_running_jobs_finish(tmp_path):
    functions = tmp_path / "functions"
    functions.mkdir()
    port = free_port()
    env = cli_env(tmp_path, PORT=str(port), FUNCTIONS_DIR=str(functions), LOG_LEVEL="INFO", HEARTBEAT_INTERVAL="0.5")
    made = subprocess.run(
        [sys.executable, "web.py", "create-key", "t"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
    client = Client(f"http://127.0.0.1:{port}", made.stdout.split()[-1])
    log = open(tmp_path / "web.log", "w")
    server = subprocess.Popen([sys.executable, "web.py", "run", "--reload"], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        wait_until(lambda: (r := answer(client, "GET", "/health/ready")) and r.json["status"] == "ok", timeout=60)
        assert answer(client, "POST", "/api/v1/jobs/send_receipt", {"order_id": 1}).status == 404
        running = answer(client, "POST", "/api/v1/jobs/sleep", {"seconds": 2}).json
        wait_until(lambda: answer(client, "GET", f"/api/v1/jobs/{running['id']}").json["status"] == "running")
        (functions / "shop.py").write_text(readme_example())

        def receipt_sent():
            reply = answer(client, "POST", "/api/v1/jobs/send_receipt?wait=10", {"order_id": 42})
            return reply is not None and reply.status == 200 and reply.json["status"] == "succeeded"

        wait_until(receipt_sent, timeout=60, interval=0.2, message="send_receipt after the restart")
        # The job that ran while the file was saved finished before the old server stopped.
        job = answer(client, "GET", f"/api/v1/jobs/{running['id']}").json
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        assert "restarting once running jobs finish" in (tmp_path / "web.log").read_text()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            assert server.wait(60) == 0
        finally:
            server.kill()
            log.close()
