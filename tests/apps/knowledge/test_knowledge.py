"""The knowledge app: sync into the store, search, limits, cleanups, faults, a killed consumer, both stores.

The sandbox ingest and embedder are served by the real test server; consumers
are real (threads here, a huey_consumer process for the kill); the embedded
store is a real SQLite file per test.
"""

import datetime
import json
import os
import subprocess
import sys
import time

import pytest
from helpers import ROOT, Client, Litejobs, RunningConsumer, assert_error, cli_env, free_port, wait_until

import jobs
import settings
from apps.knowledge import ingest, search, store, sync, tasks
from apps.knowledge.models import Conversation, KnowledgeUser, Message, QueryCache, SyncQueueItem, SyncState
from apps.knowledge.notify import SandboxReceipt
from apps.webhooks import models as webhooks
from models import Job, utcnow

TOKEN = {"X-Ingest-Token": "sandbox-token"}


@pytest.fixture(autouse=True)
def knowledge(monkeypatch, tmp_path, server_url):
    """The sandbox ingest and embedder on the test server, quick; an embedded store of this test's own."""
    monkeypatch.setattr(settings, "BASE_URL", server_url)
    monkeypatch.setattr(settings, "SANDBOX_LATENCY_MS", 0)
    monkeypatch.setattr(settings, "SANDBOX_FAILURE_RATE", 0.0)
    embedded = store.use_store(store.SqliteStore(tmp_path / "knowledge-vectors.db"))
    yield embedded
    store.forget_stores()


def ingest_chunks():
    """{chunk id: text} of the sandbox ingest's live chunks."""
    return {c.id: c.text for c in ingest.IngestChunk.live()}


def store_chunks(vectors):
    """{chunk id: text} of a SqliteStore, read straight from its file."""
    import sqlite3

    with sqlite3.connect(vectors.path) as conn:
        return dict(conn.execute("SELECT id, text FROM point"))


def finished(job_id, timeout=30):
    """The job once it reached a terminal status."""

    def terminal():
        job = Job.get_by_id(job_id)
        return job if job.is_terminal else None

    return wait_until(terminal, timeout=timeout, message=f"job {job_id}")


def jobs_named(name):
    return list(Job.select().where(Job.name == name))


# -- Sync and search ------------------------------------------------------------------------
def test_sync_into_the_store_then_search_finds_passages(client, knowledge):
    written = ingest.fill_sandbox(30, seed=3)
    consumer = RunningConsumer(workers=2)
    try:
        reply = client.post("/api/v1/knowledge/sync")
        assert reply.status == 202 and reply.json["name"] == "trigger_full_sync_task"
        job = finished(reply.json["id"])
        assert job.status == "succeeded", job.error
        assert job.progress_done == job.progress_total == written
        assert store_chunks(knowledge) == ingest_chunks()
        status = client.get("/api/v1/knowledge/status").json
        assert status["in_sync"] is True and status["behind"] is False
        assert status["store"] == {"kind": "embedded", "chunks": written, "documents": 30}
        assert status["last_full_sync"]["chunks"] == written

        answer = client.post("/api/v1/knowledge/search", {"user_id": "ann", "query": "Reset my password link"})
        assert answer.status == 200, answer.body
        passages = answer.json["passages"]
        assert len(passages) == 5 and answer.json["cached"] is False
        assert [p["score"] for p in passages] == sorted((p["score"] for p in passages), reverse=True)
        best = passages[0]
        assert best["chunk_id"].startswith(best["document_id"] + ":")
        assert best["text"] == ingest_chunks()[best["chunk_id"]]
        assert {"reset", "password", "link"} & set(best["text"].lower().replace(".", " ").replace(",", " ").split())

        again = client.post(
            "/api/v1/knowledge/search",
            {"user_id": "ann", "query": "reset  my PASSWORD link", "conversation_id": answer.json["conversation_id"]},
        )
        assert again.json["cached"] is True and again.json["passages"] == passages
        assert again.json["conversation_id"] == answer.json["conversation_id"]
        assert Message.select().where(Message.conversation == answer.json["conversation_id"]).count() == 2

        # Each query's result reaches the users' system (the sandbox receiver), signed and logged.
        wait_until(lambda: SandboxReceipt.select().count() == 2, message="two results received")
        received = {r.data["message_id"]: r.data for r in SandboxReceipt.select()}
        assert received[answer.json["message_id"]]["query"] == "Reset my password link"
        assert received[answer.json["message_id"]]["sources"][0]["document_id"] == best["document_id"]
        wait_until(
            lambda: all(j.is_terminal for j in jobs_named("calculate_user_tier")) and jobs_named("calculate_user_tier")
        )
        assert {j.status for j in jobs_named("update_user_statistics")} == {"succeeded"}
        limits = client.get("/api/v1/knowledge/users/ann/limits").json
        assert limits["used"] == 2 and limits["tier"] == "free" and limits["statistics"]["total_queries"] == 2
    finally:
        consumer.stop()


def test_ingest_webhook_queues_changes_that_the_sync_queue_applies(client, anonymous, knowledge):
    ingest.fill_sandbox(5)
    sync.full_sync("setup")
    sandbox = Client(client.base_url)
    text = "Webhook retries wait longer each time.\n\nA signature header proves the sender."
    put = sandbox.post(
        "/knowledge-sandbox/ingest/v1/documents", {"id": "new-doc", "title": "Retries", "text": text}, headers=TOKEN
    )
    assert put.status == 201 and put.json["webhook"] == "sent"
    gone = sandbox.delete("/knowledge-sandbox/ingest/v1/documents/doc-000002", headers=TOKEN)
    assert gone.status == 200 and gone.json["webhook"] == "sent"
    assert [(i.document_id, i.action) for i in SyncQueueItem.waiting()] == [
        ("new-doc", "upsert"),
        ("doc-000002", "delete"),
    ]

    consumer = RunningConsumer(workers=2)
    try:
        handed = tasks.process_sync_queue.call_local()
        assert handed["documents"] == 2 and handed["deletes"] == 1
        finished(handed["sync_job_id"])
        wait_until(lambda: all(j.is_terminal for j in jobs_named("delete_document_embeddings_task")))
    finally:
        consumer.stop()
    assert SyncQueueItem.waiting().count() == 0
    assert store_chunks(knowledge) == ingest_chunks()
    assert "new-doc:0" in store_chunks(knowledge) and not any(
        i.startswith("doc-000002") for i in store_chunks(knowledge)
    )
    assert tasks.process_sync_queue.call_local()["documents"] == 0


def test_ingest_webhook_needs_a_valid_signature(anonymous):
    body = json.dumps({"event": "document.updated", "document_id": "d1"}).encode()
    headers = {"Content-Type": "application/json"}
    assert_error(anonymous.post("/api/v1/knowledge/webhook", body=body, headers=headers), 401, "unauthorized")
    forged = {**headers, "Litejobs-Signature": webhooks.sign("not-the-secret", body)}
    assert_error(anonymous.post("/api/v1/knowledge/webhook", body=body, headers=forged), 401, "unauthorized")
    signed = {**headers, "Litejobs-Signature": webhooks.sign(ingest.webhook_secret(), body)}
    assert anonymous.post("/api/v1/knowledge/webhook", body=body, headers=signed).status == 202
    bad = json.dumps({"event": "document.renamed", "document_id": "d1"}).encode()
    signed = {**headers, "Litejobs-Signature": webhooks.sign(ingest.webhook_secret(), bad)}
    assert_error(
        anonymous.post("/api/v1/knowledge/webhook", body=bad, headers=signed), 422, "invalid_argument", "event"
    )
    assert [i.document_id for i in SyncQueueItem.waiting()] == ["d1"]


def test_a_batch_applied_twice_changes_nothing(knowledge):
    ingest.fill_sandbox(4)
    page = ingest.client().changes("0", 1000)
    sync.apply_batch(knowledge, page["chunks"])
    first = store_chunks(knowledge)
    sync.apply_batch(knowledge, page["chunks"])
    assert store_chunks(knowledge) == first == ingest_chunks()
    assert knowledge.count() == (len(first), 4)


def test_full_sync_removes_what_the_ingest_lost_and_never_runs_twice(client, knowledge):
    ingest.fill_sandbox(6)
    knowledge.upsert([{"id": "orphan:0", "document_id": "orphan", "text": "left over", "vector": [1.0] * 256}])
    first = client.post("/api/v1/knowledge/sync")
    assert first.status == 202
    error = assert_error(client.post("/api/v1/knowledge/sync"), 409, "conflict")
    assert first.json["id"] in error["message"]
    consumer = RunningConsumer(workers=2)
    try:
        assert finished(first.json["id"]).status == "succeeded"
    finally:
        consumer.stop()
    assert store_chunks(knowledge) == ingest_chunks()
    assert SyncState.current().full_removed == 1
    assert client.post("/api/v1/knowledge/sync").status == 202  # the last one finished: a new one may start


def test_full_sync_can_be_canceled_and_lets_go_of_its_lease(client, monkeypatch, knowledge):
    ingest.fill_sandbox(400)  # about 1,400 chunks: three batches
    monkeypatch.setattr(settings, "SANDBOX_LATENCY_MS", 400)
    consumer = RunningConsumer(workers=1)
    try:
        job_id = client.post("/api/v1/knowledge/sync").json["id"]
        wait_until(lambda: Job.get_by_id(job_id).progress_done, timeout=20, message="first batch")
        assert client.post(f"/api/v1/jobs/{job_id}/cancel").status == 200
        assert finished(job_id).status == "canceled"
    finally:
        consumer.stop()
    assert SyncState.current().lease_job_id is None
    assert 0 < knowledge.count()[0] < len(ingest_chunks())


def test_sync_with_since_replays_from_that_cursor(knowledge):
    ingest.fill_sandbox(3)
    sync.sync_changes("job-1", batch_size=2)
    cursor = SyncState.current().cursor
    knowledge.delete(list(store_chunks(knowledge)))
    done = sync.sync_changes("job-2", batch_size=100, since="0")
    assert done["upserted"] == len(ingest_chunks()) and SyncState.current().cursor == cursor
    assert store_chunks(knowledge) == ingest_chunks()


# -- A consumer killed in the middle of a sync ---------------------------------------------------
def start_consumer(tmp_path, server_url):
    environ = {k: v for k, v in os.environ.items() if k not in settings.SETTINGS}
    environ.update(
        DATA_DIR=str(tmp_path),
        DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        QUEUE_URL=f"sqlite:///{tmp_path / 'app.db'}",
        BASE_URL=server_url,
        HEARTBEAT_INTERVAL="0.3",
        HEARTBEAT_TIMEOUT="2",
        LOG_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    log = open(tmp_path / f"consumer-{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "jobs.huey", "-w", "2", "-d", "0.05", "-m", "0.2"],
        cwd=ROOT,
        env=environ,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_a_consumer_killed_mid_sync_leaves_exactly_the_ingest_chunks(tmp_path, server_url, monkeypatch):
    ingest.fill_sandbox(300, seed=5)  # about 1,000 chunks
    monkeypatch.setattr(settings, "SANDBOX_LATENCY_MS", 40)  # the sandbox is served here: slow it down
    job, _ = jobs.submit("sync_embeddings_task", {"batch_size": 20})
    first = start_consumer(tmp_path, server_url)
    try:
        wait_until(lambda: (Job.get_by_id(job.id).progress_done or 0) >= 200, timeout=60, message="200 chunks synced")
    finally:
        first.kill()
        first.wait(10)
    assert Job.get_by_id(job.id).status == "running"  # cut short mid-sync
    vectors = store.SqliteStore(tmp_path / "knowledge-vectors.db")
    assert 0 < len(store_chunks(vectors)) < len(ingest_chunks())
    # While no consumer runs, the ingest changes: one document gone, one rewritten.
    ingest.remove_document("doc-000001")
    ingest.put_document("doc-000002", "Rewritten", ["A single new passage about invoices."])
    monkeypatch.setattr(settings, "SANDBOX_LATENCY_MS", 0)
    second = start_consumer(tmp_path, server_url)
    try:
        # The reaper brings the killed job back; it takes over its own lease and goes on from the cursor.
        assert finished(job.id, timeout=60).status == "succeeded"
    finally:
        second.send_signal(2)
        second.wait(30)
    assert Job.get_by_id(job.id).recoveries >= 1
    assert store_chunks(vectors) == ingest_chunks()
    assert vectors.count() == (len(ingest_chunks()), 299)


# -- Ingest faults ------------------------------------------------------------------------------
def inject(**fault):
    reply = Client(settings.BASE_URL).post("/knowledge-sandbox/ingest/v1/faults", fault, headers=TOKEN)
    assert reply.status == 201, reply.body


@pytest.mark.parametrize("status", [500, 503, 429, 200])
def test_ingest_faults_that_may_pass_are_retryable(status):
    inject(target="changes", status=status)
    with pytest.raises(ingest.RetryableError):
        ingest.client().changes("0", 10)
    assert ingest.client().changes("0", 10)["chunks"] == []  # the fault was used up


def test_a_slow_ingest_is_a_retryable_timeout(monkeypatch):
    monkeypatch.setattr(settings, "KNOWLEDGE_TIMEOUT", 0.3)
    inject(target="document", delay_ms=1500)
    with pytest.raises(ingest.RetryableError, match="no answer within 0.3 s"):
        ingest.client().document_chunks("doc-000001")


def test_ingest_refusals_are_permanent_with_the_services_message():
    with pytest.raises(ingest.PermanentError) as refused:
        ingest.client().document_chunks("no-such-doc")
    assert refused.value.status == 404 and refused.value.message == "no document 'no-such-doc'"
    monkeypatch_token = ingest.IngestClient(settings.BASE_URL + "/knowledge-sandbox/ingest", "wrong", 5, 5)
    with pytest.raises(ingest.PermanentError, match="X-Ingest-Token"):
        monkeypatch_token.changes("0", 10)


def test_sync_job_retries_a_passing_fault_and_fails_at_once_on_a_refusal():
    ingest.fill_sandbox(2)
    inject(target="changes", status=503)
    job, _ = jobs.submit("sync_embeddings_task", {})
    jobs.huey.execute(jobs.huey.dequeue())
    retried = Job.get_by_id(job.id)
    assert retried.status == "retrying" and "HTTP 503" in retried.error
    inject(target="changes", status=403)
    job, _ = jobs.submit("sync_embeddings_task", {})
    while (task := jobs.huey.dequeue()) is not None and task.id != job.id:
        pass
    jobs.huey.execute(task)
    failed = Job.get_by_id(job.id)
    assert failed.status == "failed" and failed.attempts == 1
    assert failed.error == "the ingest service refused: sandbox ingest: injected fault (HTTP 403) (HTTP 403)"


# -- Limits -------------------------------------------------------------------------------------
def noop_submit(name, args):
    return None


def test_the_51st_query_of_a_free_user_is_refused_until_midnight_in_timezone(monkeypatch, knowledge):
    monkeypatch.setattr(settings, "TIMEZONE", "America/New_York")
    evening = datetime.datetime(2026, 12, 7, 23, 30)  # 18:30 in New York
    for n in range(50):
        search.search({"user_id": "free-user", "query": f"invoice {n % 3}"}, noop_submit, now=evening)
    with pytest.raises(search.LimitReached) as refused:
        search.search({"user_id": "free-user", "query": "invoice"}, noop_submit, now=evening)
    midnight = datetime.datetime(2026, 12, 8, 5, 0)  # 00:00 in New York
    assert refused.value.reset_at == midnight
    with pytest.raises(search.LimitReached):
        search.search(
            {"user_id": "free-user", "query": "invoice"}, noop_submit, now=midnight - datetime.timedelta(seconds=1)
        )
    assert search.search({"user_id": "free-user", "query": "invoice"}, noop_submit, now=midnight)["passages"] == []
    limits = KnowledgeUser.get_by_id("free-user").limits_dict(midnight)
    assert limits["used"] == 1 and limits["limit"] == 50 and limits["resets_at"] == "2026-12-09T05:00:00.000Z"
    assert Message.select().where(Message.user_id == "free-user").count() == 51  # the refused one left no message


def test_over_the_limit_the_api_answers_429_with_retry_after(client):
    for _ in range(50):
        assert KnowledgeUser.count_query("busy", utcnow())
    reply = client.post("/api/v1/knowledge/search", {"user_id": "busy", "query": "invoice"})
    error = assert_error(reply, 429, "rate_limited")
    wait = int(reply.headers["Retry-After"])
    now = utcnow()
    until_midnight = (
        datetime.datetime.combine(now.date() + datetime.timedelta(days=1), datetime.time()) - now
    ).total_seconds()
    assert abs(wait - until_midnight) <= 2 and "50 queries" in error["message"]
    assert client.get("/api/v1/knowledge/users/busy/limits").json["remaining"] == 0
    # reset_user_daily_limit and reset_all_daily_limits give the queries back.
    tasks.reset_user_daily_limit.call_local("busy")
    assert client.post("/api/v1/knowledge/search", {"user_id": "busy", "query": "invoice"}).status == 200
    tasks.reset_all_daily_limits.call_local()
    assert KnowledgeUser.get_by_id("busy").queries_today == 0


def test_pro_tier_has_its_own_limit_and_comes_from_the_statistics(monkeypatch):
    monkeypatch.setattr(settings, "TIER_LIMITS", {"free": 2, "pro": 3})
    now = utcnow()
    assert KnowledgeUser.count_query("u", now) and KnowledgeUser.count_query("u", now)
    assert not KnowledgeUser.count_query("u", now)
    assert tasks.tier_for(0) == "free" and tasks.tier_for(30) == "free" and tasks.tier_for(31) == "pro"
    KnowledgeUser.update(queries_30_days=45).where(KnowledgeUser.id == "u").execute()
    assert tasks.calculate_user_tier.call_local("u") == {"user_id": "u", "tier": "pro", "previous": "free"}
    assert KnowledgeUser.count_query("u", now) and not KnowledgeUser.count_query("u", now)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"query": "x"}, "user_id"),
        ({"user_id": "u"}, "query"),
        ({"user_id": "u", "query": "   "}, "query"),
        ({"user_id": "u", "query": "x", "limit": 0}, "limit"),
        ({"user_id": "u", "query": "x", "limit": True}, "limit"),
        ({"user_id": "u", "query": "x", "colour": 1}, "colour"),
    ],
)
def test_bad_search_input_is_422(client, body, field):
    assert_error(client.post("/api/v1/knowledge/search", body), 422, "invalid_argument", field)


def test_unknown_conversation_is_404(client):
    reply = client.post("/api/v1/knowledge/search", {"user_id": "u", "query": "x", "conversation_id": "nope"})
    assert_error(reply, 404, "not_found", "conversation_id")
    assert KnowledgeUser.get_or_none(KnowledgeUser.id == "u") is None  # not counted


# -- Cleanups and deletions ------------------------------------------------------------------------
def test_cleanup_jobs_remove_old_cache_and_archive_old_conversations():
    now = utcnow()
    old, fresh = now - datetime.timedelta(days=31), now - datetime.timedelta(days=1)
    QueryCache.store("old", "q1", [], old)
    QueryCache.store("fresh", "q2", [], fresh)
    assert tasks.cleanup_query_cache.call_local() == {"removed": 1}
    assert [e.key for e in QueryCache.select()] == ["fresh"]

    quiet = Conversation.create(user_id="u", updated_at=now - datetime.timedelta(days=91))
    busy = Conversation.create(user_id="u", updated_at=now - datetime.timedelta(days=89))
    Message.create(conversation=quiet, user_id="u", query="q", passages="[]")
    assert tasks.cleanup_old_conversations.call_local() == {"archived": 1}
    assert (
        Conversation.get_by_id(quiet.id).archived_at is not None and Conversation.get_by_id(busy.id).archived_at is None
    )
    assert Message.select().count() == 1  # archived, not deleted
    assert tasks.cleanup_old_conversations.call_local() == {"archived": 0}
    assert tasks.cleanup_old_conversations.call_local(days=1) == {"archived": 1}


def test_delete_document_removes_its_chunks_from_the_store(client, knowledge):
    ingest.fill_sandbox(3)
    sync.full_sync("setup")
    reply = client.delete("/api/v1/knowledge/documents/doc-000001")
    assert reply.status == 202 and reply.json["name"] == "delete_document_embeddings_task"
    consumer = RunningConsumer(workers=1)
    try:
        assert json.loads(finished(reply.json["id"]).result)["removed"] > 0
    finally:
        consumer.stop()
    assert not any(i.startswith("doc-000001:") for i in store_chunks(knowledge))
    assert knowledge.count()[1] == 2


def test_system_notification_reaches_the_sandbox_receiver_once(consumer):
    job, _ = jobs.submit(
        "send_system_notification",
        {"notification_type": "maintenance", "title": "Down at 02:00", "message": "10 minutes", "user_ids": ["a"]},
    )
    assert finished(job.id).status == "succeeded"
    jobs.retry(Job.get_by_id(job.id))  # a different job: a new notice
    wait_until(lambda: SandboxReceipt.select().count() == 2, message="two notices")
    receipt = SandboxReceipt.select().first()
    assert receipt.event == "system.notification" and receipt.data["title"] == "Down at 02:00"
    delivery = webhooks.WebhookDelivery.select().first()
    assert delivery.status == "succeeded" and delivery.attempts == 1


def test_query_result_to_an_unreachable_users_system_is_tried_four_times(monkeypatch):
    monkeypatch.setattr(settings, "USERS_SYSTEM_URL", f"http://127.0.0.1:{free_port()}/events")
    monkeypatch.setattr(settings, "WEBHOOK_RETRY_BASE", 0.0)
    args = {
        "user_id": "u",
        "conversation_id": "c",
        "message_id": "m",
        "query": "q",
        "answer": "a",
        "sources": [],
        "tokens_used": 1,
        "processing_time_ms": 2.0,
    }
    job, _ = jobs.submit("send_query_result_to_users", args)
    for _ in range(10):  # run it, and each retry as soon as it is scheduled
        for due in jobs.huey.read_schedule(datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)):
            jobs.huey.enqueue(due)
        task = jobs.huey.dequeue()
        if task is None:
            break
        jobs.huey.execute(task)
    delivery = webhooks.WebhookDelivery.get()
    assert delivery.status == "failed" and delivery.attempts == 4  # the first and 3 retries
    assert "connection error" in delivery.last_error
    assert Job.get_by_id(job.id).status == "failed"


# -- Both stores ------------------------------------------------------------------------------------
def qdrant_server():
    url = os.environ.get("TEST_QDRANT_URL", "http://127.0.0.1:6333")
    from qdrant_client import QdrantClient

    client = QdrantClient(url=url, timeout=2, check_compatibility=False)
    try:
        client.get_collections()
    except Exception as exc:
        pytest.skip(f"no Qdrant server at {url}: {type(exc).__name__}")
    return client


@pytest.fixture(params=["embedded", "qdrant-local", "qdrant-server"])
def any_store(request, tmp_path):
    if request.param == "embedded":
        yield store.SqliteStore(tmp_path / "vectors.db")
        return
    from qdrant_client import QdrantClient

    client = QdrantClient(":memory:") if request.param == "qdrant-local" else qdrant_server()
    name = f"test_{tmp_path.name}"[:60]
    yield store.QdrantStore(client, name)
    if client.collection_exists(name):
        client.delete_collection(name)


def point(chunk_id, text):
    from apps.knowledge.embeddings import hashed_words

    return {"id": chunk_id, "document_id": chunk_id.split(":")[0], "text": text, "vector": hashed_words(text)}


# qdrant-client's local mode (the Qdrant code path without a server) warns that it ignores payload indexes.
@pytest.mark.filterwarnings("ignore:Payload indexes have no effect in the local Qdrant")
def test_store_contract(any_store):
    assert any_store.count() == (0, 0) and any_store.search([1.0] * 256) == []
    points = [
        point("a:0", "reset your password from the login page"),
        point("a:1", "invoices are sent every month"),
        point("b:0", "webhook signatures prove the sender"),
    ]
    any_store.upsert(points)
    any_store.upsert(points)  # twice: still three
    assert any_store.count() == (3, 2) and sorted(any_store.ids()) == ["a:0", "a:1", "b:0"]
    found = any_store.search(point("q", "forgot password login")["vector"], limit=2)
    assert found[0][0] == "a:0" and found[0][1] == "a" and found[0][3] > found[1][3]
    any_store.upsert([point("a:0", "webhook retries and signatures")])
    assert any_store.search(point("q", "webhook signatures")["vector"], limit=3)[0][0] in ("a:0", "b:0")
    any_store.delete(["b:0", "unknown"])
    assert sorted(any_store.ids()) == ["a:0", "a:1"]
    assert any_store.delete_document("a") == 2 and any_store.count() == (0, 0)


def test_embedded_store_is_shared_by_processes(tmp_path):
    vectors = store.SqliteStore(tmp_path / "vectors.db")
    assert vectors.search(point("q", "password")["vector"]) == []
    code = (
        "import sys; sys.path.insert(0, '.'); from apps.knowledge import store; "
        "from apps.knowledge.embeddings import hashed_words as h; "
        f"s = store.SqliteStore({str(tmp_path / 'vectors.db')!r}); "
        "s.upsert([{'id': 'x:0', 'document_id': 'x', 'text': 'reset password', 'vector': h('reset password')}])"
    )
    environ = {k: v for k, v in os.environ.items() if k not in settings.SETTINGS}
    subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**environ, "DATA_DIR": str(tmp_path)}, check=True, timeout=60
    )
    assert vectors.search(point("q", "password")["vector"])[0][0] == "x:0"  # this process sees the other's write


def test_openapi_describes_the_knowledge_api(anonymous):
    paths = anonymous.get("/api/v1/openapi.json").json["paths"]
    for path in (
        "/api/v1/knowledge/search",
        "/api/v1/knowledge/sync",
        "/api/v1/knowledge/status",
        "/api/v1/knowledge/documents/{id}",
        "/api/v1/knowledge/users/{id}/limits",
        "/api/v1/knowledge/webhook",
    ):
        assert path in paths


def test_the_schedules_are_on_the_schedule_table(client):
    import apps.knowledge

    declared = {s.name: s.cron for s in apps.knowledge.app.schedules}
    assert declared == {
        "process_sync_queue": "*/5 * * * *",
        "cleanup_query_cache": "0 2 * * *",
        "cleanup_old_conversations": "0 3 * * 0",
        "reset_all_daily_limits": "0 0 * * *",
    }
    listed = {s["name"]: s for s in client.get("/api/v1/schedules").json["schedules"]}
    for name, cron in declared.items():
        assert listed[name]["cron"] == cron and listed[name]["function"] == name
    assert listed["update_user_statistics"]["function"] == "update_post_statistics"


def test_an_unreachable_embedder_is_503_and_the_query_does_not_count(client, monkeypatch):
    monkeypatch.setattr(settings, "EMBEDDINGS_URL", f"http://127.0.0.1:{free_port()}/v1")
    reply = client.post("/api/v1/knowledge/search", {"user_id": "ann", "query": "invoice"})
    error = assert_error(reply, 503, "unavailable")
    assert "embeddings endpoint" in error["message"]
    limits = client.get("/api/v1/knowledge/users/ann/limits").json
    assert limits["used"] == 0 and limits["statistics"]["total_queries"] == 0
    assert Message.select().count() == 0 and not jobs_named("send_query_result_to_users")


ISSUE_TABLE = {  # name: (arguments, retries, queue), as the issue fixes them
    "sync_embeddings_task": (["batch_size", "since"], 3, "sync"),
    "process_sync_queue": ([], 0, "sync"),
    "trigger_full_sync_task": ([], 1, "sync"),
    "delete_document_embeddings_task": (["document_id"], 3, "sync"),
    "send_query_result_to_users": (
        [
            "user_id",
            "conversation_id",
            "message_id",
            "query",
            "answer",
            "sources",
            "tokens_used",
            "processing_time_ms",
        ],
        3,
        "notifications",
    ),
    "send_system_notification": (["notification_type", "title", "message", "user_ids", "metadata"], 3, "notifications"),
    "cleanup_query_cache": (["days"], 0, "cleanup"),
    "cleanup_old_conversations": (["days"], 0, "cleanup"),
    "reset_user_daily_limit": (["user_id"], 0, "user"),
    "reset_all_daily_limits": ([], 0, "user"),
    "update_user_statistics": (["user_id"], 0, "user"),
    "calculate_user_tier": (["user_id"], 0, "user"),
}


def test_the_functions_are_those_of_the_issue_table(client):
    listed = {f["name"]: f for f in client.get("/api/v1/functions").json["functions"]}
    for name, (arguments, retries, queue) in ISSUE_TABLE.items():
        function = listed[name]
        assert [p["name"] for p in function["params"]] == arguments, name
        assert (function["retries"], function["queue"]) == (retries, queue), name
    defaults = {p["name"]: p.get("default") for p in listed["sync_embeddings_task"]["params"]}
    assert defaults == {"batch_size": 100, "since": None}
    assert [p["default"] for p in listed["cleanup_old_conversations"]["params"]] == [90]
    assert [p["default"] for p in listed["cleanup_query_cache"]["params"]] == [30]
    full = jobs.FUNCTIONS["trigger_full_sync_task"]
    assert full.wrapper.settings["default_timeout"] == 3600 and full.limit == 1  # an hour; one at a time
    assert jobs.FUNCTIONS["sync_embeddings_task"].wrapper.settings["default_retry_backoff"] == 2  # exponential


# -- The app on its own ------------------------------------------------------------------------
@pytest.mark.slow
def test_apps_knowledge_and_webhooks_run_alone(tmp_path):
    """APPS=knowledge,webhooks: their routes, functions and schedules, none of the other apps'; a search works."""
    (tmp_path / "none").mkdir()
    app = Litejobs(tmp_path, ["web.py", "run", "--no-consumer"], APPS="knowledge,webhooks", FUNCTIONS_DIR=str(tmp_path / "none"))
    try:
        wait_until(app.ready, timeout=60, message="web and consumer ready")
        client = app.client
        assert_error(client.get("/api/v1/orders"), 404, "not_found")
        assert client.get("/analytics").status == 404 and client.get("/knowledge").status == 303  # a login first
        functions = {f["name"] for f in client.get("/api/v1/functions").json["functions"]}
        assert {"sync_embeddings_task", "update_user_statistics"} <= functions
        assert not functions & {"update_post_statistics", "dispatch_order", "send_welcome_email"}
        schedules = {s["name"]: s["function"] for s in client.get("/api/v1/schedules").json["schedules"]}
        assert schedules == {
            "prune_job_history": "prune_job_history",
            "send_usage_statistics": "send_usage_statistics",
            "process_sync_queue": "process_sync_queue",
            "cleanup_query_cache": "cleanup_query_cache",
            "cleanup_old_conversations": "cleanup_old_conversations",
            "reset_all_daily_limits": "reset_all_daily_limits",
        }
        workers = client.get("/api/v1/workers").json["workers"]
        assert [w["apps"] for w in workers if w["alive"]] == [["knowledge", "webhooks"]]
        # A document put into the sandbox ingest, a full sync on the consumer, then a search finds it.
        text = "Refunds go back to the card that paid within ten working days."
        put = client.post("/knowledge-sandbox/ingest/v1/documents", {"id": "refunds", "title": "Refunds", "text": text}, headers=TOKEN)
        assert put.status == 201, put.body
        job_id = client.post("/api/v1/knowledge/sync").json["id"]
        done = wait_until(lambda: client.get(f"/api/v1/jobs/{job_id}").json["status"] in ("succeeded", "failed"), timeout=30)
        assert done and client.get(f"/api/v1/jobs/{job_id}").json["status"] == "succeeded"
        found = client.post("/api/v1/knowledge/search", {"user_id": "ann", "query": "refund to my card"})
        assert found.status == 200, found.body
        assert found.json["passages"][0]["document_id"] == "refunds"
    finally:
        app.stop()


def test_knowledge_without_webhooks_stops_the_start_naming_the_fix(tmp_path):
    (tmp_path / "none").mkdir()
    env = cli_env(tmp_path, APPS="accounts,knowledge", FUNCTIONS_DIR=str(tmp_path / "none"))
    started = subprocess.run(
        [sys.executable, "web.py", "create-key", "x"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert started.returncode != 0
    assert "APPS names knowledge but not webhooks" in started.stderr and "APPS=accounts,knowledge,webhooks" in started.stderr
    assert "Traceback" not in started.stderr
