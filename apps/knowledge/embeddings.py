"""Embeddings: the client of an OpenAI-compatible endpoint, and the sandbox embedder.

`client().embed(texts)` POSTs `{"model", "input": [texts]}` to
`{EMBEDDINGS_URL}/embeddings` and returns one vector per text, plus the tokens
the endpoint counted. With no EMBEDDINGS_URL it calls the sandbox endpoint at
BASE_URL/knowledge-sandbox/embeddings/v1, which answers with `hashed_words()`: a
deterministic bag-of-words vector, so passages that share words with a query
score high. The sandbox ingest makes its chunks' vectors with the same
function, so a demo search finds the passages that share its words.
"""

import hashlib
import math
import re

import settings
from httpclient import JsonClient, RetryableError

# Where routes.py mounts the sandboxes (ingest, embedder, users' system receiver).
SANDBOX_PATH = "/knowledge-sandbox"
SANDBOX_DIMENSIONS = 256
MAX_INPUTS = 256
WORD = re.compile(r"[a-z0-9]+")
# Words too common to tell passages apart.
STOP_WORDS = frozenset(
    "a an and are as at be by do for from how i in is it my of on or the to what when where which who why with you".split()
)


def words(text):
    return [w for w in WORD.findall(text.lower()) if w not in STOP_WORDS]


def hashed_words(text, dimensions=SANDBOX_DIMENSIONS):
    """A unit vector of `text`'s words hashed into `dimensions` signed buckets.

    Each word adds ±1 to one bucket chosen by its BLAKE2 digest (the sign
    halves collisions' harm); equal texts give equal vectors in every process.
    """
    vector = [0.0] * dimensions
    for word in words(text):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % dimensions
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    return [round(x / norm, 6) for x in vector] if norm else vector


class EmbeddingsClient(JsonClient):
    """An OpenAI-compatible embeddings endpoint (httpclient.JsonClient's HTTP and error split)."""

    token_header = "Authorization"
    user_agent = "litejobs-knowledge/1"

    def __init__(self, base_url, api_key, model, timeout):
        super().__init__(base_url, f"Bearer {api_key}" if api_key else "", timeout, timeout)
        self.model = model

    def embed(self, texts):
        """(one vector per text, tokens used); RetryableError or PermanentError as JsonClient raises."""
        texts = list(texts)
        vectors, tokens = [], 0
        for start in range(0, len(texts), MAX_INPUTS):
            part = texts[start : start + MAX_INPUTS]
            reply = self._call("POST", "/embeddings", {"model": self.model, "input": part})
            data = reply.get("data")
            if not isinstance(data, list) or len(data) != len(part):
                raise RetryableError(
                    f"POST /embeddings: expected {len(part)} embeddings, got {str(data)[:100]}"
                )
            ordered = sorted(
                data,
                key=lambda item: item.get("index", 0) if isinstance(item, dict) else 0,
            )
            for item in ordered:
                vector = item.get("embedding") if isinstance(item, dict) else None
                if not isinstance(vector, list) or not vector or not all(isinstance(x, (int, float)) for x in vector):
                    raise RetryableError("POST /embeddings: an embedding that is not a list of numbers")
                vectors.append(vector)
            usage = reply.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
                tokens += usage["prompt_tokens"]
        return vectors, tokens


_clients = {}


def client():
    """The client for EMBEDDINGS_URL, or for the sandbox embedder at BASE_URL/knowledge-sandbox/embeddings/v1."""
    base_url = settings.EMBEDDINGS_URL or settings.BASE_URL.rstrip("/") + SANDBOX_PATH + "/embeddings/v1"
    key = (
        base_url,
        settings.EMBEDDINGS_API_KEY,
        settings.EMBEDDINGS_MODEL,
        settings.KNOWLEDGE_TIMEOUT,
    )
    if key not in _clients:
        _clients[key] = EmbeddingsClient(*key)
    return _clients[key]
