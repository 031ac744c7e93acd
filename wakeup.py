"""Wake-up datagrams: an enqueue wakes the standalone consumers of its SQLite queue at once.

A consumer in another process than the one that enqueues cannot see that
process's `jobs._wake`, and polling the queue file faster costs CPU for every
idle consumer and still leaves ~12 ms of pickup latency (bench/latency.py).
So each listening process (a standalone consumer; each worker process of
`-k process`) binds a UDP socket on 127.0.0.1:0 — UDP, because AF_UNIX
datagrams do not exist on Windows — and lists its port as a file (holding its
pid) in a folder beside the queue file, `<queue file>-wake/<key>.<port>`, where the key
is a hash of the queue's name: two queues on one file never wake each other.
One thread per process blocks in recv (no timer, no CPU while idle) and sets
the wake event its workers sleep on.

Whoever enqueues (web process, CLI, another consumer's job) sends one tiny
datagram to each listed port from a non-blocking socket: a send never waits
and never raises into the enqueue. The list is read again when the folder
changes, looked at no more than every LOOK_INTERVAL. A datagram that is lost
costs only time: the consumer still watches the queue file, slowly
(QUEUE_WATCH_INTERVAL). Entries of processes that died are removed by the
enqueuer when the kernel refuses its datagram, and by the next consumer to
start when the port is free or (POSIX) the pid is gone. Redis and PostgreSQL queues wake their consumers
on their own: this module serves SQLite queues only.
"""

import hashlib
import logging
import os
import socket
import threading
import time

from huey.storage import SqliteStorage

logger = logging.getLogger("litejobs.wakeup")

LOOK_INTERVAL = 0.05  # seconds between looks (one stat) at the folder of listening ports
RELIST_INTERVAL = 1.0  # list it anyway this often: a folder's mtime ticks too coarsely to see every change
DATAGRAM = b"w"


def folder_of(filename):
    """The folder where the consumers of the SQLite queue file `filename` list their ports."""
    return f"{filename}-wake"


def key_of(queue_name):
    """The prefix of the entries of queue `queue_name`: a hash, so any name makes a safe file name."""
    return hashlib.sha1(queue_name.encode("utf-8"), usedforsecurity=False).hexdigest()[:12]


def _ports(folder, key):
    """{port: entry path} of the listeners of `key` in `folder`."""
    found = {}
    for name in os.listdir(folder):
        prefix, _, port = name.partition(".")
        if prefix == key and port.isdigit():
            found[int(port)] = os.path.join(folder, name)
    return found


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass  # removed already, by its consumer or by another enqueuer


# -- The enqueuing side ------------------------------------------------------------
class Sender:
    """Sends a datagram to every listener of one queue; one per queue and process."""

    def __init__(self, folder, key):
        self.folder, self.key = folder, key
        self.pid = os.getpid()  # a forked child makes its own: it must not share the lock
        self.lock = threading.Lock()
        self.sockets = {}  # port -> (socket connected to it, entry path)
        self.seen = None  # the folder's mtime at the last listing
        self.next_look = self.next_list = 0.0

    def send(self):
        now = time.monotonic()
        with self.lock:
            if now >= self.next_look:
                self.next_look = now + LOOK_INTERVAL
                self._look(now)
            targets = list(self.sockets.items())
        for port, (sock, path) in targets:
            try:
                sock.send(DATAGRAM)
            except (ConnectionRefusedError, ConnectionResetError):
                # The kernel answered an earlier datagram with "port unreachable": nobody listens there.
                with self.lock:
                    self._drop(port)
                _remove(path)
            except OSError:
                pass  # a full buffer: that consumer has wake-ups waiting already

    def _look(self, now):
        try:
            mtime = os.stat(self.folder).st_mtime_ns
        except OSError:
            mtime = None  # no consumer has listened yet
        if mtime == self.seen and now < self.next_list:
            return
        self.seen, self.next_list = mtime, now + RELIST_INTERVAL
        try:
            listed = _ports(self.folder, self.key) if mtime is not None else {}
        except OSError:
            listed = {}
        for port in set(self.sockets) - set(listed):
            self._drop(port)
        for port in set(listed) - set(self.sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                # Connected, so that a refused datagram is reported on the next send (Linux).
                sock.connect(("127.0.0.1", port))
            except OSError:
                sock.close()
                continue
            self.sockets[port] = (sock, listed[port])

    def _drop(self, port):
        entry = self.sockets.pop(port, None)
        if entry is not None:
            entry[0].close()


_senders = {}  # (queue file, queue name) -> Sender of this process


def notify(storage):
    """Wake the standalone consumers of `storage` (a SQLite queue); never blocks, never raises.

    A failure only means the consumers find the job at their next look at the queue file.
    """
    if not isinstance(storage, SqliteStorage):
        return
    try:
        queue = (storage.filename, storage.name)
        sender = _senders.get(queue)
        if sender is None or sender.pid != os.getpid():
            sender = _senders[queue] = Sender(folder_of(storage.filename), key_of(storage.name))
        sender.send()
    except OSError as exc:  # e.g. no socket left to this process: the consumers' fallback still finds the job
        logger.debug("no wake-up sent: %s", exc)


# -- The consumer side -------------------------------------------------------------
class Listener:
    """A bound socket, its entry in the folder, and the thread that sets `wake` on each datagram."""

    def __init__(self, storage, wake):
        self.wake = wake
        self.folder = folder_of(storage.filename)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
            os.makedirs(self.folder, exist_ok=True)
            _remove_stale(self.folder)
            self.entry = os.path.join(self.folder, f"{key_of(storage.name)}.{self.port}")
            with open(self.entry, "w") as file:
                file.write(f"{os.getpid()}\n")  # for a person looking; enqueuers read only the name
        except OSError:
            self.sock.close()
            raise
        self.stopped = False
        self.thread = threading.Thread(target=self._receive, name="WakeListener", daemon=True)
        self.thread.start()

    def _receive(self):
        while not self.stopped:
            try:
                self.sock.recv(64)
            except ConnectionResetError:
                continue  # Windows reports an earlier send's "port unreachable" here; this socket sends nothing
            except OSError:
                return  # closed
            self.wake.set()
        self.sock.close()

    def close(self):
        """Leave the list and end the thread (a last datagram to itself unblocks its recv)."""
        if self.stopped:
            return
        _remove(self.entry)
        self.stopped = True
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as poke:
                poke.sendto(DATAGRAM, ("127.0.0.1", self.port))
        except OSError:
            self.sock.close()


def _remove_stale(folder):
    """Remove the entries of processes that died without leaving the list."""
    for name in os.listdir(folder):
        _, _, port = name.partition(".")
        path = os.path.join(folder, name)
        if port.isdigit() and (_port_free(int(port)) or _process_gone(path)):
            _remove(path)


def _port_free(port):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False  # held: by its consumer, or by another program that took the port since
    finally:
        probe.close()


def _process_gone(path):
    """Whether the pid in entry `path` names no process (POSIX; on Windows os.kill would end it: never asked)."""
    if os.name == "nt":
        return False
    try:
        with open(path) as file:
            pid = int(file.read().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive, under another user
    return False


def listen(storage, wake):
    """Listen for the wake-ups of SQLite queue `storage`, setting `wake`; returns the Listener, or None.

    None when this cannot work here (no loopback UDP, a folder that cannot be
    written): the caller then relies on watching the queue file.
    """
    if not isinstance(storage, SqliteStorage):
        return None
    try:
        return Listener(storage, wake)
    except OSError as exc:
        logger.warning("no wake-up datagrams for this consumer (%s); it watches the queue file instead", exc)
        return None
