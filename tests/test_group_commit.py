"""Group commit (group_commit.py): concurrent POST /api/v1/jobs/{name} to a real
gevent web process share their writes, and each still gets its own answer:
every accepted job is distinct and runs; a batch whose push fails answers 503
to each of its calls and none of them runs."""

import re
import threading
import urllib.parse

import pytest
from fault_proxy import TcpRelay
from helpers import POSTGRES_URL, REDIS_URL, Client, RunningConsumer, assert_error, service_or_skip, wait_until
from webprocess import WebProcess

import jobs
from models import Job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def post_at_once(web, key, calls, path="/api/v1/jobs/echo"):
    """POST each body of `calls` from its own thread and connection, all released together."""
    start = threading.Barrier(len(calls))
    answers = [None] * len(calls)

    def post(n, body):
        client = Client(web.url, key)
        start.wait()
        answers[n] = client.post(path, body)

    threads = [threading.Thread(target=post, args=(n, body)) for n, body in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def batch_sizes(log):
    return [int(n) for n in re.findall(r"enqueue batch of (\d+): written", log)]


def test_concurrent_enqueues_are_written_together_and_each_job_runs_once(tmp_path, api_key, backend):
    """One batch push per storage: a transaction on SQLite and PostgreSQL, one command on Redis."""
    # SQLite: the default, the queue in the database (rows and messages in one transaction).
    queue = {"sqlite": f"sqlite:///{tmp_path / 'app.db'}", "redis": REDIS_URL, "postgresql": POSTGRES_URL}[backend]
    database = f"sqlite:///{tmp_path / 'app.db'}"
    web = WebProcess(tmp_path, tmp_path / "web.log", DATABASE_URL=database, QUEUE_URL=queue, LOG_LEVEL="DEBUG")
    try:
        answers = []
        for round_ in range(5):
            answers += post_at_once(web, api_key, [{"value": f"{round_}-{n}"} for n in range(16)])
        log = web.log()
    finally:
        web.stop()
    assert [a.status for a in answers] == [202] * 80, [a.body[:200] for a in answers if a.status != 202]
    ids = {a.json["id"] for a in answers}
    assert len(ids) == 80
    assert max(batch_sizes(log)) > 1, "no two enqueues shared a batch"
    assert sum(batch_sizes(log)) == 80
    consumer = RunningConsumer(workers=4)
    try:
        wait_until(lambda: Job.select().where(Job.status == "succeeded").count() == 80, timeout=30, message="all ran")
    finally:
        consumer.stop()
    results = {job.id: job.result for job in Job.select()}
    assert set(results) == ids
    assert sorted(results.values()) == sorted(f'"{a.json["args"]["value"]}"' for a in answers)
    assert jobs.huey.storage.queue_size() == 0


def test_a_batch_whose_push_fails_answers_503_to_each_call_and_none_runs(tmp_path, api_key):
    import redis

    service_or_skip("Redis", lambda: redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    parts = urllib.parse.urlsplit(REDIS_URL)
    relay = TcpRelay(parts.hostname, parts.port or 6379)
    queue_url = f"redis://127.0.0.1:{relay.port}{parts.path}"
    web = WebProcess(
        tmp_path, tmp_path / "web.log", DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}", QUEUE_URL=queue_url, LOG_LEVEL="DEBUG"
    )
    try:
        jobs.use_queue(REDIS_URL)
        accepted = post_at_once(web, api_key, [{"value": n} for n in range(8)])
        assert [a.status for a in accepted] == [202] * 8
        relay.cut()
        refused = post_at_once(web, api_key, [{"value": n} for n in range(100, 116)])
        relay.restore()
        log = web.log()
    finally:
        web.stop()
        relay.stop()
    for answer in refused:
        assert "queue" in assert_error(answer, 503, "unavailable")["message"]
    assert re.search(r"enqueue batch of ([2-9]|1\d): queue storage unavailable", log), log[-2000:]
    # No row and no message is left of a refused call: only the accepted ones run.
    assert Job.select().count() == 8
    consumer = RunningConsumer(workers=4)
    try:
        wait_until(lambda: Job.select().where(Job.status == "succeeded").count() == 8, timeout=30, message="accepted ran")
    finally:
        consumer.stop()
    assert jobs.huey.storage.queue_size() == 0
    assert sorted(int(job.result) for job in Job.select()) == list(range(8))
    jobs.huey.flush()
