"""litejobs limits: API requests a minute per API key and per client address.

Fixed one-minute windows, counted in Redis when the queue is on Redis (so
every web process shares the count) and in this process's memory otherwise.
The limiter never fails a request: when Redis does not answer it counts in
memory for a while and then tries Redis again.
"""

import logging
import math
import threading
import time

import settings

logger = logging.getLogger("litejobs.limits")

WINDOW = 60  # seconds; the limits are "requests a minute"
REDIS_RETRY_AFTER = 10.0  # seconds of counting in memory after a Redis failure


class MemoryCounter:
    """Counts per key and window in this process."""

    def __init__(self):
        self._counts = {}  # key -> (window, count)
        self._lock = threading.Lock()

    def hit(self, key, window):
        with self._lock:
            if len(self._counts) > 50_000:
                # Keys of past windows are dead weight; drop them all at once.
                self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
            seen, count = self._counts.get(key, (window, 0))
            count = count + 1 if seen == window else 1
            self._counts[key] = (window, count)
            return count


class RedisCounter:
    """Counts per key and window in Redis, shared by every web process."""

    def __init__(self, url):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # Short timeouts and no retries: a slow Redis must not slow the API down.
        self.client = redis.Redis.from_url(
            url, socket_timeout=0.25, socket_connect_timeout=0.25, retry=Retry(NoBackoff(), 0)
        )

    def hit(self, key, window):
        name = f"{settings.QUEUE_NAME}:ratelimit:{key}:{window}"
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(name)
        pipe.expire(name, WINDOW * 2)
        return pipe.execute()[0]


class Limiter:
    """`hit(scope, ident, limit)` counts a request and says how long to wait when over."""

    def __init__(self, url=None):
        self.memory = MemoryCounter()
        self.redis = RedisCounter(url) if url and url.startswith(("redis://", "rediss://")) else None
        self._redis_down_until = 0.0

    @classmethod
    def from_settings(cls):
        """Redis when the queue is on Redis, memory otherwise."""
        return cls(settings.QUEUE_URL)

    @property
    def store(self):
        """Where counts go right now: "redis" or "memory"."""
        if self.redis is not None and time.monotonic() >= self._redis_down_until:
            return "redis"
        return "memory"

    def hit(self, scope, ident, limit, now=None):
        """Count one request of `ident`; 0 when allowed, else whole seconds until the next window."""
        if not limit:
            return 0
        now = time.time() if now is None else now
        window = int(now // WINDOW)
        if self._count(f"{scope}:{ident}", window) <= limit:
            return 0
        return max(1, math.ceil((window + 1) * WINDOW - now))

    def _count(self, key, window):
        if self.store == "redis":
            try:
                return self.redis.hit(key, window)
            except Exception as exc:  # any Redis or socket error: count here instead
                self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER
                logger.warning("rate limits: Redis failed (%s); counting in memory for %g s", exc, REDIS_RETRY_AFTER)
        return self.memory.hit(key, window)
