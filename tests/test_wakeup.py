"""Wake-up datagrams (wakeup.py): a job enqueued in this process reaches a standalone
consumer process on the same SQLite queue by a datagram, not by its polls; entries
of dead consumers neither break nor slow an enqueue; two queues never wake each other."""

import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest
from helpers import ROOT, base_env, wait_until
from huey.storage import SqliteStorage

import jobs
import wakeup
from models import Job

# The consumers here look at the queue file only every 30 s and poll every 10 s at
# the least: a job they start within a second was announced by a datagram.
SLOW_FALLBACK = {"QUEUE_WATCH_INTERVAL": "30", "POLL_MAX_DELAY": "10"}
PICKUP_BOUND = 2.0  # seconds; the fallbacks take 10 s or more


def start_consumer(tmp_path, *args):
    """A standalone `huey_consumer jobs.huey` on this test's database and queue, with slow fallbacks."""
    environ = base_env(
        DATA_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        QUEUE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        LOG_LEVEL="WARNING",
        RUN_SCHEDULES="0",  # only the test's jobs (the scheduler still moves jobs that fall due)
        PYTHONPATH=str(ROOT),
        **SLOW_FALLBACK,
    )
    log = open(tmp_path / f"consumer-{time.monotonic_ns()}.log", "w")
    # Greenlet workers need gevent's patch first (docs/operations.md).
    patch = ["-m", "gevent.monkey", "--module"] if "greenlet" in args else ["-m"]
    command = [sys.executable, *patch, "huey.bin.huey_consumer", "jobs.huey", "-d", "10", *args]
    return subprocess.Popen(command, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)


def stop(process, sig=signal.SIGINT):
    if process.poll() is None:
        process.send_signal(sig)
    return process.wait(30)


def entries():
    """The names listed in the wake-up folder of this test's queue."""
    folder = wakeup.folder_of(jobs.huey.storage.filename)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def ours(names):
    key = wakeup.key_of(jobs.huey.storage.name)
    return [name for name in names if name.startswith(f"{key}.")]


def pickups(ids):
    rows = Job.select(Job.enqueued_at, Job.started_at).where(Job.id.in_(ids))
    return [(row.started_at - row.enqueued_at).total_seconds() for row in rows]


def enqueue_paced(n, pause=0.05):
    ids = []
    for i in range(n):
        ids.append(jobs.submit("echo", {"value": i})[0].id)
        time.sleep(pause)
    return ids


def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def list_stale_entry():
    """An entry of this queue whose consumer is gone: its port is free. Returns its name."""
    folder = wakeup.folder_of(jobs.huey.storage.filename)
    os.makedirs(folder, exist_ok=True)
    name = f"{wakeup.key_of(jobs.huey.storage.name)}.{free_udp_port()}"
    open(os.path.join(folder, name), "w").close()
    return name


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind, listeners", [("thread", 1), ("greenlet", 1), ("process", 2)])
def test_jobs_enqueued_in_another_process_start_by_datagram_not_by_polling(tmp_path, kind, listeners):
    consumer = start_consumer(tmp_path, "-k", kind, "-w", "2")
    try:
        # One listener per process with workers: the consumer's, or each worker process's.
        wait_until(lambda: len(ours(entries())) == listeners, timeout=30, message=f"{listeners} listening")
        time.sleep(0.5)  # every worker has polled once and sleeps its 10 s
        ids = enqueue_paced(20)
        wait_until(lambda: Job.select().where(Job.id.in_(ids) & (Job.status == "succeeded")).count() == 20, timeout=30)
        latencies = pickups(ids)
    finally:
        assert stop(consumer) == 0
    assert max(latencies) < PICKUP_BOUND, latencies
    assert statistics.median(latencies) < 0.5, latencies
    assert ours(entries()) == []  # a consumer that stops leaves the list


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_job_for_later_starts_when_its_consumers_scheduler_enqueues_it(tmp_path):
    """The scheduler's own enqueue of a due job wakes the workers too (huey's enqueue, not only submit)."""
    consumer = start_consumer(tmp_path, "-w", "2")
    try:
        wait_until(lambda: len(ours(entries())) == 1, timeout=30, message="the consumer listening")
        time.sleep(0.5)
        job, _ = jobs.submit("echo", {"value": "later"}, delay=1.5)
        done = wait_until(lambda: (j := Job.get_by_id(job.id)).status == "succeeded" and j, timeout=30)
    finally:
        assert stop(consumer) == 0
    # The scheduler looks every second and huey's schedule keeps whole seconds.
    assert (done.started_at - done.scheduled_for).total_seconds() < 1 + PICKUP_BOUND


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_killed_consumers_entry_neither_breaks_nor_slows_enqueue(tmp_path):
    killed = start_consumer(tmp_path, "-w", "1")
    wait_until(lambda: len(ours(entries())) == 1, timeout=30, message="the first consumer listening")
    stale = ours(entries())
    killed.kill()  # no chance to leave the list
    killed.wait(10)
    assert ours(entries()) == stale
    started = time.monotonic()
    ids = [jobs.submit("echo", {"value": i})[0].id for i in range(20)]
    assert time.monotonic() - started < 10  # enqueues go on (each takes milliseconds)
    if sys.platform == "linux":
        # Linux reports the unreachable port on the next send, and the enqueuer drops the entry.
        assert ours(entries()) == []
    # Another stale entry, for the next consumer to drop when it starts (on every system).
    left = list_stale_entry()
    consumer = start_consumer(tmp_path, "-w", "2")
    try:
        wait_until(lambda: left not in entries() and len(ours(entries())) == 1, timeout=30, message="a fresh list")
        time.sleep(0.5)
        later = enqueue_paced(10)
        done = ids + later
        wait_until(lambda: Job.select().where(Job.id.in_(done) & (Job.status == "succeeded")).count() == 30, timeout=30)
        latencies = pickups(later)
    finally:
        assert stop(consumer) == 0
    assert max(latencies) < PICKUP_BOUND, latencies


def test_a_stale_entry_costs_an_enqueue_no_wait(tmp_path):
    """A send to a port nobody holds, or to a socket that never reads, returns at once and raises nothing."""
    deaf = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    deaf.bind(("127.0.0.1", 0))
    folder = wakeup.folder_of(jobs.huey.storage.filename)
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, f"{wakeup.key_of(jobs.huey.storage.name)}.{deaf.getsockname()[1]}"), "w").close()
    list_stale_entry()
    try:
        started = time.monotonic()
        for _ in range(2000):
            wakeup.notify(jobs.huey.storage)
        spent = time.monotonic() - started
    finally:
        deaf.close()
    assert spent < 2.0, spent  # ~10 µs each here; a blocking send would hang on the full buffer


def test_two_queues_on_one_file_do_not_wake_each_other(tmp_path):
    path = str(tmp_path / "shared.db")
    mine, other = SqliteStorage("suite-a", filename=path), SqliteStorage("suite-b", filename=path)
    woken = threading.Event()
    listener = wakeup.listen(mine, woken)
    assert listener is not None
    try:
        wakeup.notify(other)
        assert not woken.wait(0.3)
        wakeup.notify(mine)
        assert woken.wait(5)
    finally:
        listener.close()
        mine.close()
        other.close()
    assert os.listdir(wakeup.folder_of(path)) == []


@pytest.mark.skipif(os.name == "nt", reason="on Windows a stale entry is known by its free port only")
def test_a_dead_processs_entry_is_dropped_even_when_another_program_took_its_port(tmp_path):
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = wakeup.folder_of(jobs.huey.storage.filename)
    os.makedirs(folder, exist_ok=True)
    name = f"{wakeup.key_of(jobs.huey.storage.name)}.{taken.getsockname()[1]}"
    with open(os.path.join(folder, name), "w") as file:
        file.write(ended.stdout)
    listener = wakeup.listen(jobs.huey.storage, threading.Event())
    try:
        assert name not in entries() and ours(entries()) == [f"{wakeup.key_of(jobs.huey.storage.name)}.{listener.port}"]
    finally:
        listener.close()
        taken.close()
