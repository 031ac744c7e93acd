"""The vector store of the knowledge app, behind one small interface.

    upsert(points)          points: dicts with id, document_id, text, vector, metadata
    delete(ids)             chunk ids; unknown ones are ignored
    delete_document(id)     every chunk of one document; returns how many went
    search(vector, limit)   [(chunk id, document id, text, score)], best first (cosine)
    count()                 (chunks, documents)
    ids()                   every chunk id (a full sync removes the ones the ingest lost)

`QDRANT_URL` set: QdrantStore, through qdrant-client, against a Qdrant server
or cluster. Empty: SqliteStore, a file in DATA_DIR.

Why not Qdrant's embedded engines for the default: qdrant-client's local mode
(`path=`) takes a lock on its folder, so the web process (which searches) and
standalone consumers (which sync) could not open it together; it also keeps
every point in memory and searches them by brute force. qdrant-edge-py is
pre-1.0 and likewise one process per shard folder. SqliteStore gives the same
exact (brute-force cosine) results, lets any number of processes on one box
read and write it (SQLite WAL: one writer at a time, readers never blocked),
makes each batch one transaction (a consumer killed mid-batch leaves the
batch wholly in or wholly out), and needs nothing beyond numpy, which
qdrant-client brings anyway. Each process keeps the vectors as one float32
matrix, reloaded when another process changed the file: 100,000 chunks of
256 dimensions are 100 MB and one matrix product per search.
"""

import contextlib
import json
import os
import sqlite3
import threading
import uuid

import settings

# numpy is imported where a store uses it, not here: the app is loaded by every
# web process and consumer, most of which never search or sync (about 10 MB each).


class StoreError(Exception):
    """The store cannot answer: unreachable server, or vectors of another size."""


def _unit(vector):
    import numpy

    array = numpy.asarray(vector, dtype=numpy.float32)
    norm = float(numpy.linalg.norm(array))
    return array / norm if norm else array


# -- The embedded store ---------------------------------------------------------------
class SqliteStore:
    """Chunks and their unit vectors in an SQLite file shared by every process on the box."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS point (id TEXT PRIMARY KEY, document_id TEXT NOT NULL, "
        "text TEXT NOT NULL, metadata TEXT NOT NULL, vector BLOB NOT NULL)",
        "CREATE INDEX IF NOT EXISTS point_document ON point (document_id)",
        # Bumped by every write: a reader's cached matrix is stale when it differs.
        "CREATE TABLE IF NOT EXISTS version (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)",
        "INSERT OR IGNORE INTO version (id, n) VALUES (1, 0)",
    )

    def __init__(self, path):
        self.path = str(path)
        self._lock = threading.Lock()
        self._cache = (None, [], [], None)  # (version, ids, document ids, matrix)
        self._reader = (None, None)  # (pid, connection) for searches
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            for statement in self.SCHEMA:
                conn.execute(statement)

    @contextlib.contextmanager
    def _connect(self):
        # A connection per call: cheap for SQLite, and safe across threads, greenlets and forks.
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _read(self):
        """This process's search connection, one caller at a time.

        Kept open: opening and closing one per search cost more than the search
        (closing the last connection to a WAL file checkpoints it). A forked
        child opens its own.
        """
        with self._lock:
            pid, conn = self._reader
            if pid != os.getpid():
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                self._reader = (os.getpid(), conn)
            yield conn

    @contextlib.contextmanager
    def _write(self):
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("UPDATE version SET n = n + 1 WHERE id = 1")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def upsert(self, points):
        rows = [
            (
                p["id"],
                p["document_id"],
                p["text"],
                json.dumps(p.get("metadata") or {}),
                _unit(p["vector"]).tobytes(),
            )
            for p in points
        ]
        if not rows:
            return 0
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO point (id, document_id, text, metadata, vector) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET document_id = excluded.document_id, text = excluded.text, "
                "metadata = excluded.metadata, vector = excluded.vector",
                rows,
            )
        return len(rows)

    def delete(self, ids):
        ids = list(ids)
        if not ids:
            return 0
        with self._write() as conn:
            return sum(conn.execute("DELETE FROM point WHERE id = ?", (i,)).rowcount for i in ids)

    def delete_document(self, document_id):
        with self._write() as conn:
            return conn.execute("DELETE FROM point WHERE document_id = ?", (document_id,)).rowcount

    def count(self):
        with self._connect() as conn:
            return conn.execute("SELECT COUNT(*), COUNT(DISTINCT document_id) FROM point").fetchone()

    def ids(self):
        with self._connect() as conn:
            return [row[0] for row in conn.execute("SELECT id FROM point")]

    def search(self, vector, limit=5):
        query = _unit(vector)
        ids, documents, matrix = self._matrix()
        if matrix is None or not ids:
            return []
        if matrix.shape[1] != query.shape[0]:
            raise StoreError(
                f"the query has {query.shape[0]} dimensions but the store holds {matrix.shape[1]}; "
                "after changing the embeddings model run a full sync (POST /api/v1/knowledge/sync)"
            )
        import numpy

        scores = matrix @ query
        limit = min(limit, len(ids))
        best = numpy.argpartition(-scores, limit - 1)[:limit]
        best = best[numpy.argsort(-scores[best])]
        chosen = [ids[i] for i in best]
        with self._read() as conn:
            marks = ",".join("?" * len(chosen))
            texts = dict(conn.execute(f"SELECT id, text FROM point WHERE id IN ({marks})", chosen))
        # A point deleted since the matrix was read has no text: leave it out.
        return [(ids[i], documents[i], texts[ids[i]], round(float(scores[i]), 6)) for i in best if ids[i] in texts]

    def _matrix(self):
        """(ids, document ids, matrix of unit vectors), read again when another write happened."""
        import numpy

        with self._read() as conn:
            # One read transaction: the version and the rows it counts are read together.
            conn.execute("BEGIN")
            try:
                version = conn.execute("SELECT n FROM version WHERE id = 1").fetchone()[0]
                if self._cache[0] != version:
                    rows = conn.execute("SELECT id, document_id, vector FROM point ORDER BY rowid").fetchall()
                    matrix = numpy.frombuffer(b"".join(r[2] for r in rows), dtype=numpy.float32) if rows else None
                    if matrix is not None:
                        matrix = matrix.reshape(len(rows), -1)
                    self._cache = (version, [r[0] for r in rows], [r[1] for r in rows], matrix)
            finally:
                conn.execute("COMMIT")
            return self._cache[1:]


# -- Qdrant ------------------------------------------------------------------------------
# Qdrant point ids are unsigned integers or UUIDs: a chunk id maps to a UUID
# derived from it, and travels in the payload as "chunk_id".
_NAMESPACE = uuid.UUID("6b1f0d2e-4f0b-4c55-9a43-6f0c5c9e1d01")


def point_uuid(chunk_id):
    return str(uuid.uuid5(_NAMESPACE, chunk_id))


class QdrantStore:
    """The chunks in a Qdrant collection; `client` is a qdrant_client.QdrantClient."""

    def __init__(self, client, collection):
        self.client, self.collection = client, collection
        self._ready = False

    def _models(self):
        from qdrant_client import models

        return models

    def _ensure(self, size):
        """Create the collection (cosine, `size` dimensions) and its document_id index if missing."""
        if self._ready:
            return
        models = self._models()
        if not self.client.collection_exists(self.collection):
            if size is None:
                return
            self.client.create_collection(
                self.collection,
                vectors_config=models.VectorParams(size=size, distance=models.Distance.COSINE),
            )
            self.client.create_payload_index(self.collection, "document_id", models.PayloadSchemaType.KEYWORD)
        self._ready = True

    def upsert(self, points):
        points = list(points)
        if not points:
            return 0
        models = self._models()
        self._ensure(len(points[0]["vector"]))
        self.client.upsert(
            self.collection,
            points=[
                models.PointStruct(
                    id=point_uuid(p["id"]),
                    vector=[float(x) for x in p["vector"]],
                    payload={
                        "chunk_id": p["id"],
                        "document_id": p["document_id"],
                        "text": p["text"],
                        "metadata": p.get("metadata") or {},
                    },
                )
                for p in points
            ],
            wait=True,
        )
        return len(points)

    def delete(self, ids):
        ids = list(ids)
        self._ensure(None)
        if not ids or not self._ready:
            return 0
        models = self._models()
        self.client.delete(
            self.collection,
            points_selector=models.PointIdsList(points=[point_uuid(i) for i in ids]),
        )
        return len(ids)

    def _document_filter(self, document_id):
        models = self._models()
        return models.Filter(
            must=[models.FieldCondition(key="document_id", match=models.MatchValue(value=document_id))]
        )

    def delete_document(self, document_id):
        self._ensure(None)
        if not self._ready:
            return 0
        selector = self._document_filter(document_id)
        found = self.client.count(self.collection, count_filter=selector, exact=True).count
        models = self._models()
        self.client.delete(
            self.collection,
            points_selector=models.FilterSelector(filter=selector),
            wait=True,
        )
        return found

    def count(self):
        self._ensure(None)
        if not self._ready:
            return (0, 0)
        chunks = self.client.count(self.collection, exact=True).count
        documents = len({payload["document_id"] for payload in self._scroll(["document_id"])})
        return (chunks, documents)

    def ids(self):
        self._ensure(None)
        if not self._ready:
            return []
        return [payload["chunk_id"] for payload in self._scroll(["chunk_id"])]

    def _scroll(self, fields):
        offset = None
        while True:
            points, offset = self.client.scroll(
                self.collection,
                limit=1000,
                offset=offset,
                with_payload=fields,
                with_vectors=False,
            )
            for point in points:
                yield point.payload
            if offset is None:
                return

    def search(self, vector, limit=5):
        self._ensure(None)
        if not self._ready:
            return []
        found = self.client.query_points(self.collection, query=[float(x) for x in vector], limit=limit).points
        return [
            (
                p.payload["chunk_id"],
                p.payload["document_id"],
                p.payload["text"],
                round(float(p.score), 6),
            )
            for p in found
        ]


# -- The configured store -------------------------------------------------------------------
_stores = {}


def open_store():
    """The store settings choose: QdrantStore for QDRANT_URL, else SqliteStore in DATA_DIR (one per process)."""
    key = (settings.QDRANT_URL, settings.QDRANT_COLLECTION, str(settings.DATA_DIR))
    if key not in _stores:
        if settings.QDRANT_URL:
            from qdrant_client import QdrantClient

            client = QdrantClient(
                url=settings.QDRANT_URL,
                api_key=settings.QDRANT_API_KEY or None,
                timeout=max(1, round(settings.KNOWLEDGE_TIMEOUT)),
                # Its version check runs in a thread that raises there when the server is down at start.
                check_compatibility=False,
            )
            _stores[key] = QdrantStore(client, settings.QDRANT_COLLECTION)
        else:
            _stores[key] = SqliteStore(settings.DATA_DIR / f"{settings.QDRANT_COLLECTION}-vectors.db")
    return _stores[key]


def forget_stores():
    """Forget the stores this process opened, so the next open_store() follows the settings again (tests)."""
    _stores.clear()


def use_store(store):
    """Make `store` the configured one in this process (tests, benches)."""
    key = (settings.QDRANT_URL, settings.QDRANT_COLLECTION, str(settings.DATA_DIR))
    _stores[key] = store
    return store
