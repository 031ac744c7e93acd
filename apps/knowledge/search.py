"""Search: a user's query answered with passages from the store.

One search counts against the user's daily limit, embeds the query (unless
the query cache has the answer for the store as it is), searches the store,
records the conversation and the message, and queues the statistics update
and the result's delivery to the users' system.
"""

import hashlib
import json
import time

import settings
from httpclient import ServiceError
from jobs import ArgumentError, Unavailable
from models import db, isoformat, utcnow

from . import embeddings
from .models import (
    Conversation,
    KnowledgeUser,
    Message,
    QueryCache,
    SyncState,
    next_midnight,
)
from .store import StoreError, open_store

FIELDS = ("user_id", "query", "conversation_id", "limit")
MAX_QUERY = 2000
MAX_LIMIT = 50


class LimitReached(Exception):
    """The user has used today's queries; `reset_at` is the next 00:00 in TIMEZONE (naive UTC)."""

    def __init__(self, user, reset_at):
        super().__init__(
            f"user {user.id} ({user.tier} tier) has used all {user.daily_limit} queries of today; "
            f"the count resets at {isoformat(reset_at)} (00:00 in {settings.TIMEZONE})"
        )
        self.user, self.reset_at = user, reset_at


class UnknownConversation(LookupError):
    """The conversation id names no conversation of this user."""


def validate(body):
    """(user_id, query, conversation_id, limit) from a request body, or ArgumentError."""
    for name in body:
        if name not in FIELDS:
            raise ArgumentError(name, f"unknown field; a search takes {', '.join(FIELDS)}")
    user_id, query = body.get("user_id"), body.get("query")
    if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > 200:
        raise ArgumentError("user_id", "required: a string of 1 to 200 characters")
    if not isinstance(query, str) or not query.strip():
        raise ArgumentError("query", "required: a non-blank string")
    if len(query) > MAX_QUERY:
        raise ArgumentError("query", f"at most {MAX_QUERY} characters, got {len(query)}")
    conversation_id = body.get("conversation_id")
    if conversation_id is not None and (not isinstance(conversation_id, str) or len(conversation_id) > 100):
        raise ArgumentError("conversation_id", "expected the id of one of the user's conversations")
    limit = body.get("limit", 5)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise ArgumentError(
            "limit",
            f"expected a whole number from 1 to {MAX_LIMIT}, got {json.dumps(limit)[:50]}",
        )
    return user_id, query, conversation_id, limit


def cache_key(query, limit, generation):
    normal = " ".join(query.lower().split())
    return hashlib.sha256(f"{generation}\n{limit}\n{normal}".encode()).hexdigest()


def search(body, submit, now=None):
    """Answer a search request; `submit(name, args)` queues the follow-up jobs.

    Raises ArgumentError, UnknownConversation, LimitReached, or Unavailable
    when the embeddings endpoint or the store cannot answer.
    """
    user_id, query, conversation_id, limit = validate(body)
    now = now or utcnow()
    started = time.monotonic()
    conversation = None
    if conversation_id is not None:
        conversation = Conversation.get_or_none(
            (Conversation.id == conversation_id) & (Conversation.user_id == user_id)
        )
        if conversation is None:
            raise UnknownConversation(f"no conversation {conversation_id!r} of user {user_id!r}")
    if not KnowledgeUser.count_query(user_id, now):
        raise LimitReached(KnowledgeUser.get_by_id(user_id), next_midnight(now))
    try:
        passages, tokens, cached = _passages(query, limit, now)
    except BaseException:
        # Nothing was answered: the query does not count.
        KnowledgeUser.update(
            queries_today=KnowledgeUser.queries_today - 1, total_queries=KnowledgeUser.total_queries - 1
        ).where(KnowledgeUser.id == user_id).execute()
        raise
    elapsed_ms = round((time.monotonic() - started) * 1000, 3)
    with db.atomic():
        if conversation is None:
            conversation = Conversation.create(user_id=user_id, created_at=now, updated_at=now)
        else:
            Conversation.update(updated_at=now, archived_at=None).where(Conversation.id == conversation.id).execute()
        message = Message.create(
            conversation=conversation,
            user_id=user_id,
            query=query,
            passages=json.dumps(passages),
            tokens_used=tokens,
            processing_time_ms=elapsed_ms,
            cached=cached,
            created_at=now,
        )
    submit("update_user_statistics", {"user_id": user_id})
    submit(
        "send_query_result_to_users",
        {
            "user_id": user_id,
            "conversation_id": conversation.id,
            "message_id": message.id,
            "query": query,
            "answer": "\n\n".join(p["text"] for p in passages[:3]),
            "sources": [{k: p[k] for k in ("document_id", "chunk_id", "score")} for p in passages],
            "tokens_used": tokens,
            "processing_time_ms": elapsed_ms,
        },
    )
    return {
        "passages": passages,
        "conversation_id": conversation.id,
        "message_id": message.id,
        "cached": cached,
        "tokens_used": tokens,
        "processing_time_ms": elapsed_ms,
    }


def _passages(query, limit, now):
    """(passages, tokens used, from the cache?) for `query`."""
    key = cache_key(query, limit, SyncState.current().generation)
    passages = QueryCache.lookup(key, now)
    if passages is not None:
        return passages, 0, True
    try:
        vectors, tokens = embeddings.client().embed([query])
        hits = open_store().search(vectors[0], limit)
    except ServiceError as exc:
        raise Unavailable(f"the embeddings endpoint did not answer: {exc}") from exc
    except StoreError as exc:
        raise Unavailable(f"the vector store cannot search: {exc}") from exc
    passages = [
        {"document_id": document_id, "chunk_id": chunk_id, "text": text, "score": score}
        for chunk_id, document_id, text, score in hits
    ]
    QueryCache.store(key, query, passages, now)
    return passages, tokens, False
