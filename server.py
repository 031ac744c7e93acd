"""litejobs server: the gevent WSGI server of `web.py run`, with the limits a public port needs.

gevent's WSGIServer waits forever for a client's headers and accepts every
connection it is offered, so a few hundred clients that never finish their
headers used up the process's file descriptors. Here:

- a client gets HEADER_TIMEOUT seconds from its first byte (or from connecting)
  to the end of its headers, however slowly it trickles them;
- a kept-alive connection that sends nothing for IDLE_TIMEOUT seconds is closed;
- at most MAX_CONNECTIONS connections are served at once (kept below the
  open-file limit); more wait in the kernel's listen queue, using no descriptor here;
- every socket has TCP_NODELAY (see LimitedHandler.handle);
- a response's headers and its first body chunk leave in one send, not two
  (LimitedHandler._write_with_headers).
"""

import logging
import re
import socket
import sys
from http import client

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

import settings

logger = logging.getLogger("litejobs.server")

# Descriptors kept free for what is not a client connection: database and queue
# files or sockets, the log, uploads being written, the consumer's own.
RESERVED_DESCRIPTORS = 128
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class HeadersTooSlow(ValueError):
    """The client did not finish its request line and headers within HEADER_TIMEOUT."""


_HEADER_NAME = re.compile(r"[!-9;-~]+\Z")  # what the email parser takes for a header name


class RequestHeaders:
    """A request's headers as gevent's handler reads them (get, del, .headers,
    .typeheader), parsed as http.client.parse_headers does but without the email
    package, which took a sixth of an enqueue's time (bench/web_rows.py --profile)."""

    status = ""  # gevent's flag for headers it could not read

    def __init__(self, pairs):
        self._pairs = pairs
        self._first = None  # lower-case name -> the first value, made at the first get()

    @classmethod
    def read(cls, rfile, *_):
        """The headers from `rfile`, up to the blank line; the limits are http.client's."""
        pairs, broken = [], False
        while True:
            line = rfile.readline(client._MAXLINE + 1)
            if len(line) > client._MAXLINE:
                headers = cls([])
                headers.status = "Line too long"
                return headers
            if line in (b"\r\n", b"\n", b""):
                return cls(pairs)
            if len(pairs) >= client._MAXHEADERS:
                raise client.HTTPException(f"got more than {client._MAXHEADERS} headers")
            text = line.decode("iso-8859-1").rstrip("\r\n")
            if broken:
                continue  # as the email parser does, what follows a malformed line is not a header
            if text[:1] in (" ", "\t") and pairs:  # a folded line continues the header above
                name, value = pairs[-1]
                pairs[-1] = (name, f"{value} {text.strip()}")
                continue
            name, colon, value = text.partition(":")
            if not colon or not _HEADER_NAME.match(name):
                broken = True
                continue
            pairs.append((name, value.lstrip(" \t")))

    def get(self, name, default=None):
        # gevent asks for six or more headers per request: one index, not a scan each.
        if self._first is None:
            self._first = {}
            for key, value in self._pairs:
                self._first.setdefault(key.lower(), value)
        return self._first.get(name.lower(), default)

    getheader = get

    def __delitem__(self, name):
        name = name.lower()
        self._pairs = [(key, value) for key, value in self._pairs if key.lower() != name]
        self._first = None

    @property
    def headers(self):
        return [f"{key}: {value}\r\n" for key, value in self._pairs]

    @property
    def typeheader(self):
        return self.get("content-type")

    def environ_items(self):
        """The WSGI environ's HTTP_* items, as gevent's WSGIHandler._headers makes them from
        `headers`, without writing each header out as a line and splitting it again."""
        for name, value in self._pairs:
            if "_" in name:
                continue  # gevent drops these: HTTP_X_A would not tell X-A from X_A
            key = name.replace("-", "_").upper()
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                yield "HTTP_" + key, value.strip()


class LimitedHandler(WSGIHandler):
    """gevent's handler with a header-read deadline and an idle keep-alive timeout."""

    MessageClass = staticmethod(RequestHeaders.read)

    def log_request(self):
        pass  # there is no access log (log=None): gevent would still format its line

    def _headers(self):
        return self.headers.environ_items()

    header_timeout = 30.0
    idle_timeout = 60.0
    _served = 0
    _header_timer = None

    def handle(self):
        # gevent sends a response's headers and body in two writes; with Nagle
        # on, the body waits for the client's delayed ACK (40 ms on Linux), so
        # every keep-alive request took 44 ms (bench/, issue 7).
        if self.socket.family in (socket.AF_INET, socket.AF_INET6):
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle()

    def _write_with_headers(self, data):
        # gevent's own sends the headers, then the body: two system calls and two
        # TCP segments for every small JSON answer, a third of an enqueue's cost
        # over HTTP (bench/web_rows.py --profile). Here they leave in one send.
        self.headers_sent = True
        self.finalize_headers()
        # status and header names and values are bytes already (start_response encodes them)
        out = bytearray(b"HTTP/1.1 ")
        out += self.status
        out += b"\r\n"
        for header, value in self.response_headers:
            out += header
            out += b": "
            out += value
            out += b"\r\n"
        out += b"\r\n"
        if data and self.response_use_chunked:
            out += b"%x\r\n" % len(data)
            out += data
            out += b"\r\n"
        elif data:
            out += data
        self._sendall(out)

    def read_requestline(self):
        if self._served and not self._data_within(self.idle_timeout):
            return ""  # idle keep-alive connection: close it
        # One deadline for the request line and every header, however slowly they come.
        self._header_timer = gevent.Timeout(self.header_timeout, HeadersTooSlow)
        self._header_timer.start()
        return super().read_requestline()

    def read_request(self, raw_requestline):
        try:
            return super().read_request(raw_requestline)
        finally:
            self._stop_header_timer()

    def handle_one_request(self):
        try:
            result = super().handle_one_request()
        except HeadersTooSlow:
            logger.info("closed a connection from %s: no complete headers within %g s", self.client_address, self.header_timeout)
            return None
        finally:
            self._stop_header_timer()
        self._served += 1
        return result

    def _handle_client_error(self, ex):
        # gevent's hook for bad requests: a header deadline met mid-headers is a 408, not a traceback.
        if isinstance(ex, HeadersTooSlow):
            logger.info("closed a connection from %s: no complete headers within %g s", self.client_address, self.header_timeout)
            self.close_connection = True
            return ("408", _REQUEST_TIMEOUT)
        return super()._handle_client_error(ex)

    def _data_within(self, seconds):
        """Whether the client sends something within `seconds`."""
        timer = gevent.Timeout(seconds)
        timer.start()
        try:
            return bool(self.rfile.peek(1))
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            return False
        except OSError:
            return False
        finally:
            timer.close()

    def _stop_header_timer(self):
        if self._header_timer is not None:
            self._header_timer.close()
            self._header_timer = None


def connection_limit(wanted=None):
    """MAX_CONNECTIONS, lowered to stay RESERVED_DESCRIPTORS below the open-file limit."""
    wanted = wanted or settings.MAX_CONNECTIONS
    try:
        import resource  # POSIX only; Windows has no such limit to respect
    except ImportError:
        return wanted
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft - RESERVED_DESCRIPTORS >= wanted:
        return wanted
    lowered = max(soft - RESERVED_DESCRIPTORS, 8)
    logger.warning(
        "MAX_CONNECTIONS=%s is too close to the open-file limit (%s): serving at most %s connections; "
        "raise the limit (LimitNOFILE= in the systemd unit, ulimit -n) to serve more",
        wanted,
        soft,
        lowered,
    )
    return lowered


def can_share_port():
    """Whether several processes can serve one port here: Linux's SO_REUSEPORT spreads
    connections over them. Elsewhere (Windows has no such option; macOS's does not
    spread) `web.py run` serves with one process."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def shared_listener(host, port, first=False, backlog=1024):
    """A listening socket on host:port that other processes may bind too (SO_REUSEPORT):
    the kernel hands each new connection to one of them.

    `first`: the port must be free, as for one process. Without this check a second
    litejobs started by mistake on the same port would silently share its traffic.
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    if first:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)  # OSError "Address already in use" while anything listens there
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(address)
    listener.listen(backlog)
    return listener


def make_server(app, host=None, port=None, share_port=None):
    """The WSGIServer for `app` on HOST:PORT with the limits above; `share_port`: bound with
    SO_REUSEPORT beside the other web processes of `web.py run` (WEB_PROCESSES), "first"
    for the one that binds before them."""

    class Handler(LimitedHandler):
        header_timeout = settings.HEADER_TIMEOUT
        idle_timeout = settings.IDLE_TIMEOUT

    address = (host or settings.HOST, port or settings.PORT)
    return WSGIServer(
        shared_listener(*address, first=share_port == "first") if share_port else address,
        app,
        log=None,
        error_log=logger,
        handler_class=Handler,
        spawn=Pool(connection_limit()),
    )
