"""The ingest service: its client, and the sandbox that plays it (and the embedder).

`client()` reads the ingest service at `INGEST_URL` (httpclient.JsonClient's HTTP,
timeouts and error split: RetryableError for network errors, timeouts, 5xx
and garbage, PermanentError with the service's message for a 4xx):

    GET {INGEST_URL}/v1/chunks?cursor=C&limit=N   chunks changed after cursor C, oldest change first:
        {"chunks": [{"id", "document_id", "text", "vector", "metadata", "deleted"}],
         "next_cursor", "has_more", "total"}
    GET {INGEST_URL}/v1/documents/{id}/chunks     one document's chunks: {"document_id", "chunks": [...]}

A change of a document reaches litejobs as a signed POST to
/api/v1/knowledge/webhook (`{"event": "document.updated" | "document.deleted",
"document_id"}`, the Litejobs-Signature of the webhooks app's sign() with
INGEST_WEBHOOK_SECRET), which puts the document on the sync queue.

With no INGEST_URL, `sandbox` (routes.py mounts it at /knowledge-sandbox/)
plays the service under /knowledge-sandbox/ingest/, its documents in the
database (IngestDocument, IngestChunk), their vectors made by the sandbox
embedder (at /knowledge-sandbox/embeddings/v1/); SANDBOX_LATENCY_MS,
SANDBOX_FAILURE_RATE and faults injected with
`POST /knowledge-sandbox/ingest/v1/faults` (IngestFault rows) make it
misbehave as the order sandbox does.
"""

import functools
import hashlib
import hmac
import json
import logging
import random
import time
from urllib.parse import quote

from bottle import HTTPResponse, request
from peewee import BooleanField, CharField, DateTimeField, IntegerField, TextField, fn

import settings
from httpclient import JsonClient, PermanentError, RetryableError, answer, read_object, refusal, sandbox_app
from models import BaseModel, chunked, db, utcnow
from sandbox_faults import InjectedFault

from .delivery import webhooks
from .embeddings import MAX_INPUTS, SANDBOX_DIMENSIONS, SANDBOX_PATH, WORD, hashed_words

logger = logging.getLogger("litejobs.knowledge.ingest")

TOKEN_HEADER = "X-Ingest-Token"
WEBHOOK_PATH = "/api/v1/knowledge/webhook"
CHANGE_EVENTS = ("document.updated", "document.deleted")

__all__ = ["PermanentError", "RetryableError", "client", "sandbox"]


def webhook_secret():
    """INGEST_WEBHOOK_SECRET, or one derived from SECRET_KEY that the sandbox also knows."""
    if settings.INGEST_WEBHOOK_SECRET:
        return settings.INGEST_WEBHOOK_SECRET
    return hmac.new(settings.SECRET_KEY.encode(), b"knowledge ingest webhook", hashlib.sha256).hexdigest()


# -- The client ----------------------------------------------------------------------
class IngestClient(JsonClient):
    """The ingest service's JSON API at `base_url`."""

    token_header = TOKEN_HEADER
    user_agent = "litejobs-knowledge/1"

    def changes(self, cursor, limit):
        """Chunks changed after `cursor`: {"chunks", "next_cursor", "has_more", "total"}."""
        path = f"/v1/chunks?cursor={quote(str(cursor), safe='')}&limit={int(limit)}"
        reply = self._call("GET", path)
        chunks = _checked_chunks("GET /v1/chunks", reply.get("chunks"))
        next_cursor = reply.get("next_cursor")
        if not isinstance(next_cursor, str) or not next_cursor:
            raise RetryableError(f"GET /v1/chunks: answer without a next_cursor: {json.dumps(reply)[:200]}")
        total = reply.get("total")
        return {
            "chunks": chunks,
            "next_cursor": next_cursor,
            "has_more": bool(reply.get("has_more")),
            "total": total if isinstance(total, int) and not isinstance(total, bool) else None,
        }

    def document_chunks(self, document_id):
        """The live chunks of one document."""
        reply = self._call("GET", f"/v1/documents/{quote(document_id, safe='')}/chunks")
        return _checked_chunks("GET /v1/documents/…/chunks", reply.get("chunks"))


def _checked_chunks(call, chunks):
    """The chunks of an answer, or RetryableError for a malformed one (garbage is a passing fault)."""
    if not isinstance(chunks, list):
        raise RetryableError(f"{call}: answer without a chunks list")
    for chunk in chunks:
        ok = (
            isinstance(chunk, dict)
            and isinstance(chunk.get("id"), str)
            and isinstance(chunk.get("document_id"), str)
            and (
                chunk.get("deleted")
                or (isinstance(chunk.get("text"), str) and isinstance(chunk.get("vector"), list) and chunk["vector"])
            )
        )
        if not ok:
            raise RetryableError(f"{call}: a malformed chunk: {json.dumps(chunk)[:200]}")
    return chunks


_clients = {}


def client():
    """The client for INGEST_URL, or for the sandbox ingest at BASE_URL/knowledge-sandbox/ingest."""
    base_url = settings.INGEST_URL or settings.BASE_URL.rstrip("/") + SANDBOX_PATH + "/ingest"
    key = (
        base_url,
        settings.INGEST_TOKEN,
        settings.KNOWLEDGE_TIMEOUT,
        settings.KNOWLEDGE_TIMEOUT,
    )
    if key not in _clients:
        _clients[key] = IngestClient(*key)
    return _clients[key]


# -- The sandbox's tables ---------------------------------------------------------------
class IngestDocument(BaseModel):
    """A document as the sandbox ingest keeps it."""

    id = CharField(primary_key=True, max_length=200)
    title = TextField()
    deleted = BooleanField(default=False)
    updated_at = DateTimeField(default=utcnow)

    class Meta:
        table_name = "knowledge_ingest_document"


class IngestChunk(BaseModel):
    """A chunk of a sandbox document. `seq` is its last change's number (the
    changes feed's cursor); a removed chunk stays as a tombstone (`deleted`)
    so that syncs reading the feed remove it too."""

    id = CharField(primary_key=True, max_length=250)
    document_id = CharField(index=True, max_length=200)
    position = IntegerField()
    text = TextField()
    metadata = TextField(default="{}")
    seq = IntegerField(index=True)
    deleted = BooleanField(default=False)

    class Meta:
        table_name = "knowledge_ingest_chunk"

    @classmethod
    def next_seq(cls):
        return (cls.select(fn.MAX(cls.seq)).scalar() or 0) + 1

    @classmethod
    def live(cls):
        return cls.select().where(cls.deleted == False)  # noqa: E712

    def to_dict(self):
        body = {"id": self.id, "document_id": self.document_id, "deleted": self.deleted}
        if not self.deleted:
            body.update(
                text=self.text,
                vector=hashed_words(self.text),
                metadata=json.loads(self.metadata),
            )
        return body


class IngestFault(InjectedFault):
    """A fault injected into the sandbox ingest, for its calls changes, document (or any)."""

    class Meta:
        table_name = "knowledge_ingest_fault"


def split_text(text, words_per_chunk=60):
    """Chunks of about `words_per_chunk` words, paragraphs kept whole when they fit."""
    chunks, current = [], []
    for paragraph in [p.split() for p in text.split("\n\n") if p.strip()]:
        if current and len(current) + len(paragraph) > words_per_chunk:
            chunks.append(" ".join(current))
            current = []
        current.extend(paragraph)
        while len(current) > words_per_chunk:
            chunks.append(" ".join(current[:words_per_chunk]))
            current = current[words_per_chunk:]
    if current:
        chunks.append(" ".join(current))
    return chunks


def put_document(document_id, title, texts, now=None):
    """Store a document with chunk texts `texts`; changed chunks get a new seq, gone ones a tombstone."""
    now = now or utcnow()
    with db.atomic():
        IngestDocument.insert(id=document_id, title=title, deleted=False, updated_at=now).on_conflict(
            conflict_target=[IngestDocument.id],
            update={"title": title, "deleted": False, "updated_at": now},
        ).execute()
        old = {c.id: c for c in IngestChunk.select().where(IngestChunk.document_id == document_id)}
        seq = IngestChunk.next_seq()
        metadata = json.dumps({"title": title})
        for position, text in enumerate(texts):
            chunk_id = f"{document_id}:{position}"
            before = old.pop(chunk_id, None)
            if before is not None and not before.deleted and before.text == text and before.metadata == metadata:
                continue
            IngestChunk.insert(
                id=chunk_id,
                document_id=document_id,
                position=position,
                text=text,
                metadata=metadata,
                seq=seq,
            ).on_conflict(
                conflict_target=[IngestChunk.id],
                update={
                    "text": text,
                    "metadata": metadata,
                    "seq": seq,
                    "deleted": False,
                },
            ).execute()
            seq += 1
        for chunk in old.values():
            if not chunk.deleted:
                IngestChunk.update(deleted=True, seq=seq).where(IngestChunk.id == chunk.id).execute()
                seq += 1


def remove_document(document_id, now=None):
    """Mark a document and its chunks deleted; False when there was no such live document."""
    with db.atomic():
        found = (
            IngestDocument.update(deleted=True, updated_at=now or utcnow())
            .where(
                (IngestDocument.id == document_id) & (IngestDocument.deleted == False)  # noqa: E712
            )
            .execute()
        )
        seq = IngestChunk.next_seq()
        for chunk in list(IngestChunk.live().where(IngestChunk.document_id == document_id).order_by(IngestChunk.id)):
            IngestChunk.update(deleted=True, seq=seq).where(IngestChunk.id == chunk.id).execute()
            seq += 1
    return bool(found)


def notify_change(event, document_id):
    """POST the signed change webhook to this litejobs, as an ingest service would; the Outcome."""
    body = json.dumps({"event": event, "document_id": document_id}).encode()
    url = settings.BASE_URL.rstrip("/") + WEBHOOK_PATH
    outcome = webhooks().send(
        url,
        webhook_secret(),
        body,
        event,
        timeout=settings.KNOWLEDGE_TIMEOUT,
        allow_private=True,
    )
    if not outcome.ok:
        logger.warning(
            "sandbox ingest: change webhook for %s not taken: %s",
            document_id,
            outcome.error,
        )
    return outcome


# -- Demo documents ---------------------------------------------------------------------
TOPICS = {
    "password": (
        "To reset your password, open the login page and choose Forgot password.",
        "The reset link in the email expires after one hour; ask for a new one if it has expired.",
        "A new password needs at least twelve characters and must differ from the last three.",
        "After five wrong passwords the account is locked for fifteen minutes.",
        "Two-factor sign in asks for a code from your authenticator app after the password.",
        "Admins can send a password reset email to any member from the team page.",
    ),
    "billing": (
        "Invoices are emailed on the first day of each month and kept under Billing.",
        "A refund goes back to the card that paid, within five to ten working days.",
        "Changing plans mid-month charges or credits the difference on the next invoice.",
        "A failed card payment is retried three times before the workspace is paused.",
        "Add a VAT number under Billing to show it on every future invoice.",
        "Download old invoices as PDF from the billing history.",
    ),
    "export": (
        "Export any report as CSV from the Download menu at the top of the page.",
        "Large exports are prepared in the background and sent as a link by email.",
        "The CSV export uses commas and UTF-8; open it with the import wizard for other encodings.",
        "Choose the columns of an export before you download it.",
        "A full data export of the workspace is an archive of CSV files, one per table.",
    ),
    "webhooks": (
        "A webhook sends a signed POST to your endpoint for each event it subscribed to.",
        "Check the signature header with your webhook secret before you trust a delivery.",
        "Failed deliveries are retried with growing delays for up to a day.",
        "The delivery log of each webhook shows the status code and the time of every attempt.",
        "Rotate a webhook secret by creating a new webhook and deleting the old one.",
    ),
    "schedules": (
        "A schedule runs a job on a cron expression read in the workspace time zone.",
        "Pause a schedule to skip its runs until you resume it.",
        "Run now starts a scheduled job at once without changing its next run.",
        "A schedule never overlaps itself: a run is skipped while the last one is unfinished.",
        "Daily schedules follow the wall clock across daylight saving changes.",
    ),
    "uploads": (
        "Images up to ten megabytes can be uploaded in JPEG, PNG or WebP format.",
        "Each uploaded photo is resized into thumbnails in the background.",
        "An upload that is not a valid image is refused with a message saying why.",
        "Uploaded files are kept until the post they belong to is deleted.",
    ),
    "team": (
        "Invite a team member by email from the team page; the invitation is valid for a week.",
        "Owners and admins can change a member's role at any time.",
        "Removing a member keeps their posts but ends their access at once.",
        "Each seat on the plan allows one active member in the workspace.",
    ),
    "api": (
        "Create an API key on the settings page and send it as a Bearer token.",
        "The API allows sixty requests a minute per key; over that it answers 429 with Retry-After.",
        "Revoked API keys stop working within a few seconds.",
        "Every API error has a code, a message and, for bad input, the field at fault.",
    ),
}


def demo_document(number, rng):
    """(id, title, chunk texts) of demo document `number`: a few paragraphs on one topic."""
    topic = list(TOPICS)[number % len(TOPICS)]
    sentences = TOPICS[topic]
    paragraphs = [" ".join(rng.sample(sentences, rng.randint(2, 4))) for _ in range(rng.randint(2, 5))]
    return f"doc-{number:06d}", f"{topic.capitalize()} help, part {number}", paragraphs


def fill_sandbox(documents=200, seed=0, now=None):
    """Add `documents` deterministic demo documents to the sandbox ingest (replacing ones of the same id).

    Written in bulk (one transaction per 500 documents): `python -m apps.demo`
    and bench/knowledge.py use it. Returns the number of chunks written.
    """
    now = now or utcnow()
    written = 0
    for numbers in chunked(range(documents), 500):
        with db.atomic():
            seq = IngestChunk.next_seq()
            doc_rows, chunk_rows = [], []
            for number in numbers:
                document_id, title, texts = demo_document(number, random.Random(seed * 1_000_003 + number))
                doc_rows.append(
                    {
                        "id": document_id,
                        "title": title,
                        "deleted": False,
                        "updated_at": now,
                    }
                )
                metadata = json.dumps({"title": title})
                for position, text in enumerate(texts):
                    chunk_rows.append(
                        {
                            "id": f"{document_id}:{position}",
                            "document_id": document_id,
                            "position": position,
                            "text": text,
                            "metadata": metadata,
                            "seq": seq,
                            "deleted": False,
                        }
                    )
                    seq += 1
            ids = [row["id"] for row in doc_rows]
            IngestChunk.delete().where(IngestChunk.document_id.in_(ids)).execute()
            IngestDocument.delete().where(IngestDocument.id.in_(ids)).execute()
            for rows in chunked(doc_rows, 100):
                IngestDocument.insert_many(rows).execute()
            for rows in chunked(chunk_rows, 100):
                IngestChunk.insert_many(rows).execute()
            written += len(chunk_rows)
    return written


# -- The sandbox ingest service and embedder -----------------------------------------------
sandbox = sandbox_app(db)
MAX_PAGE = 1000




def _authorized():
    given = request.get_header(TOKEN_HEADER) or ""
    return hmac.compare_digest(given.encode(), settings.INGEST_TOKEN.encode())


def sandbox_call(target):
    """Token check, SANDBOX_LATENCY_MS, injected faults (IngestFault) and SANDBOX_FAILURE_RATE.

    An injected fault of status 200 answers garbage: a body that is not JSON.
    """

    def decorator(handler):
        @functools.wraps(handler)
        def wrapper(*args, **kwargs):
            if not _authorized():
                return refusal(401, "unauthorized", f"missing or wrong {TOKEN_HEADER} header")
            time.sleep(settings.SANDBOX_LATENCY_MS / 1000)
            fault = IngestFault.take(target)
            if fault is not None and fault.delay_ms:
                time.sleep(fault.delay_ms / 1000)
            if fault is not None and fault.status == 200:
                return HTTPResponse("<html>upstream hiccup</html>", status=200)
            if fault is not None and fault.status:
                return refusal(
                    fault.status,
                    "injected",
                    f"sandbox ingest: injected fault (HTTP {fault.status})",
                )
            if random.random() < settings.SANDBOX_FAILURE_RATE:
                return refusal(
                    500,
                    "unavailable",
                    "sandbox ingest: simulated failure (SANDBOX_FAILURE_RATE)",
                )
            return handler(*args, **kwargs)

        return wrapper

    return decorator


@sandbox.get("/ingest/v1/chunks")
@sandbox_call("changes")
def sandbox_changes():
    """Chunks changed after `cursor` (a change number), oldest change first."""
    cursor, limit = request.query.get("cursor", "0"), request.query.get("limit", "100")
    if not cursor.isdigit() or not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
        return refusal(400, "invalid", f"cursor must be a change number and limit 1 to {MAX_PAGE}")
    rows = list(
        IngestChunk.select().where(IngestChunk.seq > int(cursor)).order_by(IngestChunk.seq).limit(int(limit) + 1)
    )
    more = len(rows) > int(limit)
    rows = rows[: int(limit)]
    return answer(
        200,
        {
            "chunks": [row.to_dict() for row in rows],
            "next_cursor": str(rows[-1].seq) if rows else cursor,
            "has_more": more,
            "total": IngestChunk.live().count(),
        },
    )


@sandbox.get("/ingest/v1/documents/<document_id>/chunks")
@sandbox_call("document")
def sandbox_document_chunks(document_id):
    """One document's live chunks."""
    document = IngestDocument.get_or_none(IngestDocument.id == document_id)
    if document is None or document.deleted:
        return refusal(404, "not_found", f"no document {document_id!r}")
    chunks = IngestChunk.live().where(IngestChunk.document_id == document_id).order_by(IngestChunk.position)
    return answer(200, {"document_id": document_id, "chunks": [c.to_dict() for c in chunks]})


@sandbox.post("/ingest/v1/documents")
def sandbox_put_document():
    """Add or replace a document `{"id", "title", "text"}`, then send the change webhook."""
    if not _authorized():
        return refusal(401, "unauthorized", f"missing or wrong {TOKEN_HEADER} header")
    body = read_object()
    if body is None:
        return refusal(400, "bad_json", "body must be a JSON object")
    fields = {name: body.get(name) for name in ("id", "title", "text")}
    if not all(isinstance(v, str) and v.strip() and len(v) <= 200 for v in (fields["id"], fields["title"])):
        return refusal(422, "invalid", "id and title are required strings of 1 to 200 characters")
    if not isinstance(fields["text"], str) or not WORD.search(fields["text"].lower()):
        return refusal(422, "invalid", "text is required and must contain words")
    put_document(fields["id"], fields["title"], split_text(fields["text"]))
    outcome = notify_change("document.updated", fields["id"])
    return answer(201, {"id": fields["id"], "webhook": "sent" if outcome.ok else outcome.error})


@sandbox.delete("/ingest/v1/documents/<document_id>")
def sandbox_delete_document(document_id):
    """Delete a document, then send the change webhook."""
    if not _authorized():
        return refusal(401, "unauthorized", f"missing or wrong {TOKEN_HEADER} header")
    if not remove_document(document_id):
        return refusal(404, "not_found", f"no document {document_id!r}")
    outcome = notify_change("document.deleted", document_id)
    return answer(200, {"id": document_id, "webhook": "sent" if outcome.ok else outcome.error})


@sandbox.post("/ingest/v1/faults")
def sandbox_add_fault():
    """Inject a fault: the next `times` calls to `target` (changes, document, any) answer `status` or come late."""
    if not _authorized():
        return refusal(401, "unauthorized", f"missing or wrong {TOKEN_HEADER} header")
    body = read_object()
    if body is None:
        return refusal(400, "bad_json", "body must be a JSON object")
    target, status = body.get("target", "any"), body.get("status")
    delay_ms, times = body.get("delay_ms", 0), body.get("times", 1)
    if target not in ("changes", "document", "any"):
        return refusal(422, "invalid", "target must be changes, document or any")
    if status is not None and not (_whole(status) and (status == 200 or 400 <= status <= 599)):
        return refusal(
            422,
            "invalid",
            "status must be 200 (a garbage body) or an HTTP error status, 400 to 599",
        )
    if not (_whole(delay_ms) and 0 <= delay_ms <= 60000) or not (_whole(times) and 1 <= times <= 100000):
        return refusal(422, "invalid", "delay_ms must be 0 to 60000 and times 1 to 100000")
    if status is None and not delay_ms:
        return refusal(422, "invalid", "give a status, a delay_ms, or both")
    fault = IngestFault.create(target=target, status=status, delay_ms=delay_ms, remaining=times)
    return answer(201, fault.to_dict())


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


@sandbox.post("/embeddings/v1/embeddings")
def sandbox_embeddings():
    """OpenAI's embeddings request and answer, with hashed-word vectors (no key needed)."""
    body = read_object()
    if body is None:
        return refusal(400, "invalid_request_error", "body must be a JSON object")
    given = body.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return refusal(
            400,
            "invalid_request_error",
            "input must be a string or a non-empty list of strings",
        )
    if len(texts) > MAX_INPUTS:
        return refusal(400, "invalid_request_error", f"at most {MAX_INPUTS} inputs per request")
    tokens = sum(len(WORD.findall(t.lower())) for t in texts)
    return answer(
        200,
        {
            "object": "list",
            "model": body.get("model") or settings.EMBEDDINGS_MODEL,
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": hashed_words(t, SANDBOX_DIMENSIONS),
                }
                for i, t in enumerate(texts)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
    )
