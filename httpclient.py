"""litejobs httpclient: JSON over HTTP to another service, and the small answers its sandboxes give.

`JsonClient` is the base of the apps' clients of outside services (orders'
provider, knowledge's ingest service and embeddings endpoint): JSON in and
out at `base_url` with a token header, connect and read timeouts, and one
keep-alive connection per worker thread (or greenlet). Its errors split in
two: `RetryableError` (network errors, timeouts, 5xx, 408/429, garbage
bodies: the same call may work later) and `PermanentError` (any other 4xx,
carrying the service's own message). A subclass sets `token_header` and
`user_agent` and adds one method per call, each a `self._call(...)`.

`answer`, `refusal` and `read_object` are the JSON side of the built-in
sandboxes that play those services (bottle routes).

A library of the engine's for apps to import: it imports nothing of
litejobs, only the standard library and bottle.
"""

import http.client
import json
import logging
import threading
from urllib.parse import urlsplit

from bottle import Bottle, HTTPResponse, request, response

MAX_REPLY_BYTES = 1024 * 1024


class ServiceError(Exception):
    """A call to another service that gave no answer to use."""


class RetryableError(ServiceError):
    """The call may work later: network error, timeout, 5xx, 408, 429 or a garbage body."""


class PermanentError(ServiceError):
    """The service refused the call (a 4xx); `message` is its own words."""

    def __init__(self, status, message):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


class JsonClient:
    """A JSON API at `base_url`, called with `token` in the `token_header` header."""

    token_header = "X-Token"
    user_agent = "litejobs/1"

    def __init__(self, base_url, token, connect_timeout, read_timeout):
        parts = urlsplit(base_url)
        self.base_url = base_url
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.token = token
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        # One keep-alive connection per thread; with gevent's patch, per greenlet.
        self._local = threading.local()

    def _call(self, method, path, body=None, headers=None):
        """The JSON object the service answered to `method path`; RetryableError or PermanentError."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json", "User-Agent": self.user_agent, self.token_header: self.token, **(headers or {})}
        if data is not None:
            headers["Content-Type"] = "application/json"
        try:
            status, raw = self._send(method, self.prefix + path, data, headers)
        except TimeoutError:
            raise RetryableError(f"{method} {path}: no answer within {self.read_timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise RetryableError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        return parse(method, path, status, raw)

    def _send(self, method, path, data, headers):
        """(status, body) over this thread's connection; a stale kept-alive one is replaced once."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            try:
                return self._exchange(conn, method, path, data, headers)
            except (ConnectionError, http.client.RemoteDisconnected):
                # The server closed the idle connection; a repeat is safe (GET, or POST
                # with an idempotency key).
                pass
        return self._exchange(self._connect(), method, path, data, headers)

    def _connect(self):
        self._local.conn = None
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        conn = kind(self.host, self.port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except TimeoutError:
            conn.close()
            raise OSError(f"no connection to {self.host}:{self.port} within {self.connect_timeout:g} s") from None
        except OSError:
            conn.close()
            raise
        conn.sock.settimeout(self.read_timeout)
        return conn

    def _exchange(self, conn, method, path, data, headers):
        self._local.conn = None
        try:
            conn.request(method, path, body=data, headers=headers)
            reply = conn.getresponse()
            raw = reply.read(MAX_REPLY_BYTES + 1)
        except BaseException:
            conn.close()
            raise
        if reply.will_close or len(raw) > MAX_REPLY_BYTES or not reply.isclosed():
            conn.close()
        else:
            self._local.conn = conn
        return reply.status, raw


def parse(method, path, status, raw):
    """The JSON object of a 2xx answer, or the right error for anything else."""
    if 200 <= status < 300:
        try:
            reply = json.loads(raw.decode("utf-8"))
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise RetryableError(f"{method} {path}: HTTP {status} with a body that is not a JSON object: {raw[:100]!r}")
        return reply
    message = error_message(raw)
    if status >= 500 or status in (408, 429):
        raise RetryableError(f"{method} {path}: HTTP {status}: {message}")
    raise PermanentError(status, message)


def error_message(raw):
    """The service's own words from an error body: error.message, error or message, else the text."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        for value in (error, body.get("message")):
            if isinstance(value, str) and value:
                return value
    text = raw[:300].decode("utf-8", "replace").strip()
    return text or "no message"


def excerpt(value):
    """A short JSON excerpt of `value`, for an error message."""
    return json.dumps(value)[:200]


# -- The sandboxes' side ---------------------------------------------------------------
def answer(status, body=None):
    """A JSON answer of a sandbox route."""
    text = "" if body is None else json.dumps(body)
    return HTTPResponse(text, status=status, headers={"Content-Type": "application/json; charset=utf-8"})


def refusal(status, code, message):
    """A sandbox's error answer: {"error": {"code", "message"}}."""
    return answer(status, {"error": {"code": code, "message": message}})


def read_object():
    """The request's JSON object body ({} when empty), or None when it is not one."""
    raw = request.body.read(MAX_REPLY_BYTES)
    try:
        body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def sandbox_app(db):
    """A Bottle app for a built-in sandbox service: one database connection per request
    (`db`), and its errors in JSON, like the service it plays."""
    app = Bottle()

    @app.hook("before_request")
    def open_connection():
        db.connect(reuse_if_open=True)

    @app.hook("after_request")
    def close_connection():
        if not db.is_closed() and not db.in_transaction():
            db.close()

    def error(error):
        if error.status_code >= 500:
            logging.getLogger("litejobs.sandbox").error(
                "sandbox request %s %s failed: %s", request.method, request.path, error.exception
            )
        message = "internal error" if error.status_code >= 500 else f"{error.status_code}: {error.status_line}"
        response.content_type = "application/json; charset=utf-8"
        return json.dumps({"error": {"code": "http_" + str(error.status_code), "message": message}})

    for status in (400, 404, 405, 413, 500):
        app.error(status)(error)
    return app
