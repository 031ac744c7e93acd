"""Each way litejobs is started, as a user starts it: `web.py run` with `make run`'s
settings, huey_consumer with each worker kind, and every entry point meeting a
database it cannot use."""

import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from helpers import base_env, POSTGRES_URL, Client, free_port, service_or_skip, wait_until

from apps import demo
from apps.courses.models import Certificate
import jobs
from models import TERMINAL, Job

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def user_environ(tmp_path, **env):
    """The environment of a user who set nothing but these (and a scratch DATA_DIR)."""
    environ = base_env()
    environ.update(DATA_DIR=str(tmp_path), **env)
    return environ


def jobs_left(client):
    """Jobs not finished yet, by status (an empty dict when every job ended)."""
    left = {}
    for status in ("scheduled", "queued", "retrying", "running"):
        page = client.get(f"/api/v1/jobs?status={status}&limit=100").json["jobs"]
        if page:
            left[status] = [job["name"] for job in page]
    return left


# -- `make run` as a user gets it ---------------------------------------------------
@pytest.mark.timeout(240)
def test_make_run_defaults_finish_the_demo_data_and_twenty_certificates(tmp_path):
    port = free_port()
    environ = user_environ(tmp_path, PORT=str(port))  # INFO logging, the consumer web.py run starts
    key = subprocess.run(
        [sys.executable, "web.py", "create-key", "me"], cwd=ROOT, env=environ, capture_output=True, text=True
    )
    client = Client(f"http://127.0.0.1:{port}", key.stdout.split()[-1])
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        web = subprocess.Popen(
            [sys.executable, "web.py", "run"], cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        filled = subprocess.run(
            [sys.executable, "-m", "apps.demo", "--users", "200", "--posts", "1000", "--seed", "7"],
            cwd=ROOT,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert filled.returncode == 0, filled.stderr
        pdfs = tmp_path / "certificates"
        wait_until(lambda: len(list(pdfs.glob("*.pdf"))) == 20, timeout=150, interval=0.5, message="20 certificates")
        wait_until(lambda: not jobs_left(client), timeout=60, interval=0.5, message="every job finished")
        assert client.get("/api/v1/jobs?status=failed").json["jobs"] == []
        assert len(list((tmp_path / "outbox").glob("*.eml"))) >= 20  # each learner mailed the link
    finally:
        web.send_signal(signal.SIGINT)
        code = web.wait(60)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text[-3000:]
    assert "INFO litejobs.jobs: job" in text  # INFO logging on, as make run has it
    assert "fontTools" not in text  # other libraries log at WARNING unless asked


def test_logging_from_real_threads_under_gevent_never_waits_for_ever(tmp_path):
    """gevent's thread pool (certificates on greenlet workers) and greenlets log at INFO together."""
    script = textwrap.dedent(
        """
        from gevent import monkey
        monkey.patch_all()
        import gevent, logging, logconfig
        logconfig.setup()
        logging.getLogger().setLevel(logging.INFO)  # as LIBRARY_LOG_LEVEL=INFO would
        library = logging.getLogger("fontTools.subset")

        def lines(n):
            for i in range(5000):
                library.info("line %s of %s", i, n)
                if i % 100 == 0:
                    gevent.sleep(0)
            return n

        pool = gevent.get_hub().threadpool
        threads = [pool.spawn(lines, n) for n in range(4)]
        gevent.joinall([gevent.spawn(lines, n) for n in range(4, 8)])
        print(sorted(t.get() for t in threads))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=user_environ(tmp_path, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.split("\n")[0] == "[0, 1, 2, 3]", result.stderr[-2000:]
    assert result.stderr.count("INFO fontTools.subset: line") == 40000


# -- huey_consumer and its worker kinds ----------------------------------------------
CONSUMER_SCRIPT = Path(sys.executable).parent / "huey_consumer"


@pytest.mark.parametrize(
    "command", [[str(CONSUMER_SCRIPT)], [sys.executable, "-m", "huey.bin.huey_consumer"]], ids=["script", "module"]
)
def test_plain_huey_consumer_refuses_greenlet_workers_in_one_line(tmp_path, command):
    if not Path(command[0]).exists():
        pytest.skip("no huey_consumer script beside this Python")
    started = time.monotonic()
    result = subprocess.run(
        [*command, "jobs.huey", "-k", "greenlet", "-w", "8"],
        cwd=ROOT,
        env=user_environ(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and time.monotonic() - started < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "-m gevent.monkey --module huey.bin.huey_consumer jobs.huey -k greenlet -w 8" in lines[0]


@pytest.mark.timeout(180)
def test_greenlet_consumer_from_gevent_monkey_runs_certificates_and_stops_on_sigterm(tmp_path):
    demo.fill(40, 50, seed=3)
    _, finished = demo.fill_courses(enrollments=40, finished=20, seed=3)
    for enrollment_id in finished:
        jobs.enqueue("recalculate_course_progress", enrollment_id=enrollment_id)
    environ = user_environ(
        tmp_path,
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        QUEUE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        # Every logger at INFO: fontTools logs from gevent's thread pool while greenlets log.
        LOG_LEVEL="info",
        LIBRARY_LOG_LEVEL="info",
        SHUTDOWN_TIMEOUT="10",
        RUN_SCHEDULES="0",
        PYTHONFAULTHANDLER="1",  # a stalled consumer dumps its stacks on SIGABRT (below)
    )
    log = tmp_path / "consumer.log"
    command = [
        sys.executable,
        "-m",
        "gevent.monkey",
        "--module",
        "huey.bin.huey_consumer",
        "jobs.huey",
        "-k",
        "greenlet",
        "-w",
        "20",
    ]
    with open(log, "w") as out:
        consumer = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until(
                lambda: Certificate.select().count() == 20, timeout=120, interval=0.5, message="20 certificates"
            )
            wait_until(
                lambda: Job.select().where(Job.status.not_in(TERMINAL)).count() == 0, timeout=60, message="all ended"
            )
        except AssertionError as stalled:
            # Where a stalled consumer waits: faulthandler writes its threads' stacks on SIGABRT.
            consumer.send_signal(signal.SIGABRT)
            consumer.wait(10)
            raise AssertionError(f"{stalled}\n{log.read_text()[-8000:]}") from None
        assert Job.select().where(Job.status != "succeeded").count() == 0
        job, _ = jobs.submit("sleep", {"seconds": 1.5})
        wait_until(lambda: Job.get_by_id(job.id).status == "running", timeout=20, message="sleep running")
        consumer.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = consumer.wait(15)
        assert time.monotonic() - started < 10  # within SHUTDOWN_TIMEOUT
    finally:
        if consumer.poll() is None:
            consumer.kill()
    text = log.read_text()
    assert code == 0 and Job.get_by_id(job.id).status == "succeeded", text[-3000:]
    assert "InvalidThreadUseError" not in text and "Traceback" not in text, text[-3000:]
    assert "INFO fontTools" in text  # the thread pool's lines were written, not stuck


# -- A database that is not there -------------------------------------------------------
def start_entry_point(entry, environ):
    """Run an entry point to its end, its stdin held open as `web.py run` holds its consumer's."""
    process = subprocess.Popen(
        ENTRY_POINTS[entry], cwd=ROOT, env=environ, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
        process.stdin.close()
    return subprocess.CompletedProcess(process.args, process.returncode, "", process.stderr.read())


ENTRY_POINTS = {
    "web run": [sys.executable, "web.py", "run"],
    "web cli": [sys.executable, "web.py", "create-key", "x"],
    "huey_consumer": [sys.executable, "-m", "huey.bin.huey_consumer", "jobs.huey", "-w", "2"],
    "web's consumer": [sys.executable, "supervisor.py"],
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_missing_database_is_one_line_naming_the_setting(tmp_path, entry):
    service_or_skip("PostgreSQL", lambda: __import__("psycopg").connect(POSTGRES_URL, connect_timeout=3).close())
    name = f"litejobs_missing_{uuid.uuid4().hex[:8]}"
    missing = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    result = start_entry_point(entry, user_environ(tmp_path, DATABASE_URL=missing, PORT=str(free_port())))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1:] == result.stderr.strip().splitlines(), result.stderr
    line = result.stderr.strip()
    assert line.startswith("litejobs: ") and f'DATABASE_URL: database "{name}" does not exist' in line, line
    assert "create it with createdb " in line and line.endswith(name), line


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_unreachable_database_is_one_line_naming_the_setting(tmp_path, entry):
    url = f"postgresql://litejobs:secret@127.0.0.1:{free_port()}/app"
    result = start_entry_point(entry, user_environ(tmp_path, DATABASE_URL=url, PORT=str(free_port())))
    line = result.stderr.strip()
    assert result.returncode != 0 and len(line.splitlines()) == 1, result.stderr
    assert "DATABASE_URL: cannot use postgresql://litejobs:***@127.0.0.1" in line and "secret" not in line, line
