"""litejobs take-ahead: a worker that finds no message in hand takes some for the other
workers of its process too, in one transaction.

Taking a message from a SQLite queue is a write transaction (delete it,
commit) on the same file that every enqueue and every outcome writes. While
the jobs of a process are quick, a worker that finds nothing held here takes up
to `extra` more messages with its own (its process's other thread or greenlet
workers, less itself), and the next workers to look take them from memory: one
write for several jobs, not one each.

A message waits here only while jobs are quick. One that waited longer than
MAX_WAIT turns take-ahead off for PAUSE seconds; the consumer puts back on its
queue every half second what has been here longer than STALE seconds, and all
of it when it stops. What a killed consumer held is enqueued again by
requeue_lost, as a message taken by a worker killed before it ran.
"""

import collections
import logging
import threading
import time

logger = logging.getLogger("litejobs.take_ahead")

MAX_WAIT = 0.05  # seconds a message taken ahead may wait before take-ahead pauses
PAUSE = 5.0  # seconds take-ahead then stays off
STALE = 0.5  # seconds after which the consumer puts a waiting message back on its queue


class TakeAhead:
    def __init__(self, wake):
        self.extra = 0  # more messages one take may bring (Consumer: its thread or greenlet workers, less one)
        self._wake = wake  # set when messages wait here: idle workers take them
        self._held = collections.deque()  # (time.monotonic() when taken, message data)
        self._lock = threading.Lock()
        self._off_until = 0.0

    def take(self, storage):
        """The data of the next message: one held here, else from `storage`; None when there is none."""
        if not self.extra or not hasattr(storage, "dequeue_many"):
            return storage.dequeue()
        # One take at a time: a worker that comes while another takes waits for what it
        # brings, so the messages of this process still start in their queue's order.
        # (The storage serves one call of this process at a time anyway.)
        with self._lock:
            try:
                taken_at, data = self._held.popleft()
            except IndexError:
                pass
            else:
                now = time.monotonic()
                if now - taken_at > MAX_WAIT:
                    self._off_until = now + PAUSE
                return data
            if time.monotonic() < self._off_until:
                return storage.dequeue()
            batch = storage.dequeue_many(1 + self.extra)
            if len(batch) > 1:
                now = time.monotonic()
                self._held.extend((now, data) for data in batch[1:])
                self._wake.set()
            return batch[0] if batch else None

    def give_back(self, huey, queue_of, older_than=0.0):
        """Put the messages held here for `older_than` seconds or more back on their queues;
        returns how many. One that cannot be put back is enqueued again by requeue_lost."""
        now = time.monotonic()
        kept, back = [], []
        while True:
            try:
                item = self._held.popleft()
            except IndexError:
                break
            (back if now - item[0] >= older_than else kept).append(item)
        self._held.extendleft(reversed(kept))
        for _, data in back:
            try:
                message = huey.deserialize_task(data)
                huey.storage.enqueue(data, message.priority, queue_of(message))
            except Exception as exc:  # the queue is away: requeue_lost finds its job later
                logger.warning("could not put a message taken ahead back on its queue: %s", exc)
        return len(back)
