"""litejobs client: call litejobs job functions over HTTP from any Python 3.9+ app.

One module, standard library only, so it can be installed or copied into a
project as it is:

    from litejobs_client import Client

    lj = Client("http://127.0.0.1:8000", key="…")
    job = lj.invoke("echo", value="hi", wait=5)          # a Job: finished or still running
    job.wait(timeout=30)                                 # until it is finished
    for failed in lj.jobs(status="failed", name="fail"):  # every page, newest first
        print(failed.id, failed.error)
    lj.function("send_welcome_email").delay(user_id=42)   # the Celery habit

Every invoke carries an `Idempotency-Key` (the caller's, or a new uuid4), so
the client retries connection errors, 429 and 503 (after `Retry-After`, with
exponential backoff and jitter, within a bound) and a call is still enqueued
once. Error answers raise exceptions named after the API's error codes
(`NotFound`, `InvalidArgument`, `Conflict`, `RateLimited`, `Unavailable`, …),
each with the answer's message and request id. Connections are kept alive,
reused and shared safely between threads.

`python web.py invoke NAME key=value …` is its command line (client_cli.py).
"""

import datetime
import email.utils
import http.client
import json
import random
import select
import threading
import time
import urllib.parse
import uuid

__all__ = [
    "Client",
    "Job",
    "Function",
    "LitejobsError",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "MethodNotAllowed",
    "Conflict",
    "TooLarge",
    "InvalidArgument",
    "RateLimited",
    "InternalError",
    "Unavailable",
    "InsufficientStorage",
    "ConnectionFailed",
]

VERSION = "1"
TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})
MAX_SERVER_WAIT = 30.0  # the API's own limit on ?wait=; longer waits go on by polling


# -- Errors -----------------------------------------------------------------------------
class LitejobsError(Exception):
    """An error answer of the litejobs API, or no answer at all.

    `status` is the HTTP status (None without an answer), `code` the API's
    error code (`not_found`, `invalid_argument`, …), `message` what went wrong,
    `request_id` the server's X-Request-Id (its log lines carry it too) and
    `field` the argument at fault, when the answer names one.
    """

    def __init__(self, message, status=None, code=None, request_id=None, field=None, body=None):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code
        self.request_id, self.field, self.body = request_id, field, body

    def __str__(self):
        kind = self.code or (f"HTTP {self.status}" if self.status else None)
        text = f"{kind}: {self.message}" if kind else self.message
        return f"{text} (request {self.request_id})" if self.request_id else text


class BadRequest(LitejobsError):
    """400: the body is not a JSON object (`bad_json`), or the Host is refused (`bad_host`)."""


class Unauthorized(LitejobsError):
    """401: missing or wrong API key."""


class Forbidden(LitejobsError):
    """403: the key or origin may not do this."""


class NotFound(LitejobsError):
    """404: no such job function, job or path."""


class MethodNotAllowed(LitejobsError):
    """405: the path exists, the method does not."""


class Conflict(LitejobsError):
    """409: not possible in the job's current state, or an Idempotency-Key reused with other arguments."""


class TooLarge(LitejobsError):
    """413: the body is over the server's MAX_BODY_BYTES."""


class InvalidArgument(LitejobsError):
    """422: the arguments do not fit the function; `field` names the one at fault."""


class RateLimited(LitejobsError):
    """429: over the rate limit; `retry_after` is the seconds the server asked to wait."""

    def __init__(self, *args, retry_after=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class InternalError(LitejobsError):
    """500: a bug in the server; give the request id to whoever runs it."""


class Unavailable(LitejobsError):
    """503: the server's database or queue is unreachable; nothing was half-written."""


class InsufficientStorage(LitejobsError):
    """507: the server's disk is under its reserve; nothing was enqueued."""


class ConnectionFailed(Unavailable):
    """No answer: the connection failed or timed out on every attempt."""


ERRORS_BY_CODE = {
    "bad_json": BadRequest,
    "bad_host": BadRequest,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "method_not_allowed": MethodNotAllowed,
    "conflict": Conflict,
    "too_large": TooLarge,
    "invalid_argument": InvalidArgument,
    "rate_limited": RateLimited,
    "internal": InternalError,
    "unavailable": Unavailable,
    "insufficient_storage": InsufficientStorage,
}
ERRORS_BY_STATUS = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    413: TooLarge,
    422: InvalidArgument,
    429: RateLimited,
    500: InternalError,
    502: Unavailable,  # a reverse proxy's answer while litejobs is down or restarting
    503: Unavailable,
    504: Unavailable,
    507: InsufficientStorage,
}


def retry_after_seconds(value):
    """The seconds a Retry-After header asks for (a number or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())


def error_from_answer(status, headers, raw):
    """The exception for an error answer: by its error code, else by its status."""
    code = message = field = body = None
    try:
        body = json.loads(raw.decode("utf-8"))
        error = body["error"]
        code, message, field = error.get("code"), error.get("message"), error.get("field")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass  # not the API's shape: a proxy's page, say; the status decides
    if not message:
        message = raw.decode("utf-8", "replace").strip()[:200] or http.client.responses.get(status, "error")
    kind = ERRORS_BY_CODE.get(code) or ERRORS_BY_STATUS.get(status)
    if kind is None:
        kind = InternalError if status >= 500 else LitejobsError
    options = dict(status=status, code=code, request_id=headers.get("X-Request-Id"), field=field, body=body)
    if kind is RateLimited:
        return RateLimited(message, retry_after=retry_after_seconds(headers.get("Retry-After")), **options)
    return kind(message, **options)


# -- Connections ------------------------------------------------------------------------
class _Timeouts:
    """http.client has one timeout; this connects within `connect_timeout`, then reads with `read_timeout`."""

    connect_timeout = read_timeout = None

    def connect(self):
        self.timeout = self.connect_timeout
        super().connect()
        self.sock.settimeout(self.read_timeout)


class _HTTPConnection(_Timeouts, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Timeouts, http.client.HTTPSConnection):
    pass


class _NotSent(Exception):
    """The request never reached the server (no connection), so any request may be sent again."""


def _dropped(conn):
    """Whether an idle keep-alive connection was closed by the server (readable at rest means EOF)."""
    if conn.sock is None:
        return True
    try:
        readable, _, _ = select.select([conn.sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Pool:
    """Idle keep-alive connections to one server, shared by threads under a lock."""

    def __init__(self, make, size, idle_timeout):
        self.make, self.size, self.idle_timeout = make, size, idle_timeout
        self.idle = []  # (connection, monotonic time it went idle), most recent last
        self.lock = threading.Lock()

    def get(self):
        """(connection, reused): the most recently used live one, or a new one."""
        while True:
            with self.lock:
                if not self.idle:
                    break
                conn, since = self.idle.pop()
            if time.monotonic() - since < self.idle_timeout and not _dropped(conn):
                return conn, True
            conn.close()
        return self.make(), False

    def put(self, conn):
        with self.lock:
            if len(self.idle) < self.size:
                self.idle.append((conn, time.monotonic()))
                return
        conn.close()

    def close(self):
        with self.lock:
            idle, self.idle = self.idle, []
        for conn, _ in idle:
            conn.close()


def _utc_iso(value):
    """A datetime (naive = UTC) or an ISO string as the API's ISO 8601 UTC text."""
    if isinstance(value, str):
        return value
    if value.tzinfo is not None:
        value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _seconds(value):
    return value.total_seconds() if isinstance(value, datetime.timedelta) else value


# -- The client -------------------------------------------------------------------------
class Client:
    """A litejobs server at `base_url` (a path prefix such as https://host/litejobs works).

    `key` is the API key, sent as `Authorization: Bearer <key>`, or as
    `X-API-Key: <key>` with `header="x-api-key"`. `connect_timeout` bounds
    making a connection, `timeout` waiting for each answer (a call with `wait`
    gets that much longer). A failed call is tried again up to `retries`
    times within `retry_time` seconds, when that cannot do it twice:
    connection errors and timeouts for reads and invokes (they carry an
    Idempotency-Key), 429 and 503 for every call (the server did nothing).
    Safe to share between threads; `pool_size` idle connections are kept.
    """

    def __init__(
        self,
        base_url,
        key=None,
        timeout=30.0,
        connect_timeout=5.0,
        retries=5,
        retry_time=60.0,
        header="authorization",
        backoff=0.2,
        backoff_max=5.0,
        pool_size=8,
        idle_timeout=15.0,
    ):
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url: expected http://host:port or https://host/prefix, got {base_url!r}")
        if header.lower() not in ("authorization", "x-api-key"):
            raise ValueError(f"header: expected 'authorization' or 'x-api-key', got {header!r}")
        self.base_url, self.prefix = base_url, parts.path.rstrip("/")
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.retries, self.retry_time = retries, retry_time
        self.backoff, self.backoff_max = backoff, backoff_max
        self.headers = {"Accept": "application/json", "User-Agent": f"litejobs-client/{VERSION}"}
        if key:
            if header.lower() == "authorization":
                self.headers["Authorization"] = f"Bearer {key}"
            else:
                self.headers["X-API-Key"] = key
        kind = _HTTPSConnection if parts.scheme == "https" else _HTTPConnection
        host, port = parts.hostname, parts.port

        def make():
            conn = kind(host, port)
            conn.connect_timeout = connect_timeout
            return conn

        self._pool = _Pool(make, pool_size, idle_timeout)

    def __repr__(self):
        return f"<litejobs Client {self.base_url}>"

    def close(self):
        """Close the idle connections (a later call opens new ones)."""
        self._pool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- Calls ---------------------------------------------------------------------------
    def invoke(self, name, wait=None, idempotency_key=None, delay=None, eta=None, priority=None, **kwargs):
        """Call job function `name` with keyword arguments `kwargs`; returns its Job.

        `wait` (seconds) returns once the job finished or `wait` ran out (the Job
        then is still queued or running: look at `.status`). `delay` (seconds or a
        timedelta) or `eta` (a datetime, naive = UTC, or ISO text) schedule it;
        `priority` (higher runs first) overrides its queue's. `idempotency_key`
        makes a repeated call return the first job; without one a new key is
        made for this call, so its retries never enqueue it twice. Arguments
        named like these options go through `call()`.
        """
        return self.call(name, kwargs, wait, idempotency_key, delay, eta, priority)

    def call(self, name, kwargs=None, wait=None, idempotency_key=None, delay=None, eta=None, priority=None):
        """`invoke()` with the keyword arguments as one dict, whatever their names."""
        started = time.monotonic()
        query = {}
        if wait is not None:
            query["wait"] = min(float(wait), MAX_SERVER_WAIT)
        if delay is not None:
            query["delay"] = _seconds(delay)
        if eta is not None:
            query["eta"] = _utc_iso(eta)
        if priority is not None:
            query["priority"] = priority
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        read_timeout = self.timeout + query.get("wait", 0)
        path = f"/api/v1/functions/{_quote(name)}/jobs"
        data = self.request("POST", path, kwargs or {}, query, headers, safe=True, timeout=read_timeout)
        job = Job(self, data)
        # A retried call answers at once with the first job, and ?wait= stops at 30 s: wait out the rest here.
        if wait is not None and not job.finished:
            job._poll(started + float(wait))
        return job

    def get(self, job_id):
        """The job with id `job_id` (NotFound when there is none)."""
        return Job(self, self.request("GET", f"/api/v1/jobs/{_quote(job_id)}"))

    def jobs(self, **filters):
        """Every job matching `filters` (`name=`, `status=`), newest first, page after page.

        `limit` is the page size (1 to 200), not a total: take as many as you
        need (`itertools.islice`). Jobs enqueued while this runs are newer than
        the pages still to come, so each job shows up at most once.
        """
        query = {name: value for name, value in filters.items() if value is not None}
        while True:
            page = self.request("GET", "/api/v1/jobs", query=query)
            for data in page["jobs"]:
                yield Job(self, data)
            if not page.get("next"):
                return
            query["cursor"] = page["next"]

    def cancel(self, job_id, terminate=False):
        """Cancel a waiting job, or ask a running one to stop; returns the Job (Conflict when finished)."""
        query = {"terminate": "true"} if terminate else None
        return Job(self, self.request("POST", f"/api/v1/jobs/{_quote(job_id)}/cancel", query=query))

    def retry(self, job_id):
        """Run a finished job again; returns the new Job (its `parent_id` is `job_id`)."""
        return Job(self, self.request("POST", f"/api/v1/jobs/{_quote(job_id)}/retry"))

    def function(self, name):
        """Job function `name`, to call the Celery way: `.delay(**kwargs)`, `.apply_async(…)`."""
        return Function(self, name)

    def functions(self):
        """The public job functions: name, doc, params, queue, retries."""
        return self.request("GET", "/api/v1/functions")["functions"]

    # -- HTTP ----------------------------------------------------------------------------
    def request(self, method, path, body=None, query=None, headers=None, safe=None, timeout=None):
        """Send one API call, retrying as the class says; returns the decoded JSON answer.

        `path` is the API path (`/api/v1/…`, the base URL's prefix is added);
        `body` is sent as JSON. `safe` says whether the call may reach the
        server twice without harm (default: GET, HEAD, OPTIONS, PUT, DELETE).
        Raises a LitejobsError subclass for an error answer or no answer.
        """
        if safe is None:
            safe = method in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
        url = self.prefix + path
        if query:
            url += "?" + urllib.parse.urlencode({k: _query_value(v) for k, v in query.items() if v is not None})
        send_headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")
            send_headers["Content-Type"] = "application/json"
        send_headers.update(headers or {})
        deadline = time.monotonic() + self.retry_time
        attempt = 0
        while True:
            attempt += 1
            error, retry_after = None, None
            try:
                status, answer_headers, raw = self._send(method, url, data, send_headers, timeout or self.timeout)
            except _NotSent as exc:
                error, retryable = ConnectionFailed(f"cannot connect to {self.base_url}: {exc}"), True
            except (OSError, http.client.HTTPException) as exc:
                message = f"no answer from {self.base_url} to {method} {path}: {type(exc).__name__}: {exc}"
                error, retryable = ConnectionFailed(message), safe
            else:
                if status < 400:
                    return self._decode(method, path, status, raw)
                error = error_from_answer(status, answer_headers, raw)
                retryable = status in (429, 503) or (safe and status in (502, 504))
                retry_after = retry_after_seconds(answer_headers.get("Retry-After"))
            if not retryable or attempt > self.retries:
                raise error
            pause = min(self.backoff_max, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            pause = max(pause, retry_after or 0.0)
            if time.monotonic() + pause > deadline:
                raise error
            time.sleep(pause)

    def _decode(self, method, path, status, raw):
        """A success answer's JSON (None when empty); a login page or other non-JSON raises LitejobsError."""
        if not raw.strip():
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError:
            message = f"{method} {path}: answer {status} from {self.base_url} is not JSON: {raw[:100]!r}"
            raise LitejobsError(message, status=status) from None

    def _send(self, method, url, data, headers, read_timeout):
        """One HTTP exchange on a pooled connection: (status, headers, body bytes)."""
        conn, reused = self._pool.get()
        conn.read_timeout = read_timeout
        try:
            if conn.sock is None:
                try:
                    conn.connect()
                except OSError as exc:
                    raise _NotSent(f"{type(exc).__name__}: {exc}") from exc
            else:
                conn.sock.settimeout(read_timeout)
            try:
                conn.request(method, url, body=data, headers=headers)
            except (BrokenPipeError, ConnectionResetError) as exc:
                if reused:  # the server had closed this idle connection before the request went out
                    raise _NotSent(f"{type(exc).__name__}: {exc}") from exc
                raise
            reply = conn.getresponse()
            raw = reply.read()
        except BaseException:
            conn.close()
            raise
        if reply.will_close:
            conn.close()
        else:
            self._pool.put(conn)
        return reply.status, reply.headers, raw


def _quote(value):
    return urllib.parse.quote(str(value), safe="")


def _query_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


# -- Jobs and functions -------------------------------------------------------------------
class Job:
    """A job as the API last described it: `.id`, `.status`, `.result`, `.error`, `.data` (the whole dict)."""

    def __init__(self, client, data):
        self.client, self.data = client, data

    id = property(lambda self: self.data["id"], doc="the job's id")
    name = property(lambda self: self.data.get("name"), doc="the job function")
    status = property(lambda self: self.data.get("status"), doc="scheduled, queued, running, retrying, succeeded, …")
    result = property(lambda self: self.data.get("result"), doc="what the function returned, once succeeded")
    error = property(lambda self: self.data.get("error"), doc="why it failed, once failed")

    @property
    def finished(self):
        """Whether the job is in a terminal status: succeeded, failed, canceled or expired."""
        return self.status in TERMINAL

    def __getitem__(self, field):
        return self.data[field]

    def __repr__(self):
        return f"<Job {self.id} {self.name} {self.status}>"

    def refresh(self):
        """Read the job again from the server; returns self."""
        self.data = self.client.get(self.id).data
        return self

    def wait(self, timeout=None, interval=0.05, max_interval=1.0):
        """Poll until the job finished; returns self. Raises TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._poll(deadline, interval, max_interval):
            raise TimeoutError(f"job {self.id} is still {self.status} after {timeout:g} s")
        return self

    def _poll(self, deadline, interval=0.05, max_interval=1.0):
        """Refresh until finished (True) or `deadline` (monotonic; None: never) passed (False)."""
        while not self.finished:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            time.sleep(interval if left is None else min(interval, left))
            interval = min(interval * 1.5, max_interval)
            self.refresh()
        return True

    def cancel(self, terminate=False):
        """Cancel the job (Conflict when it already finished); returns self, refreshed."""
        self.data = self.client.cancel(self.id, terminate).data
        return self

    def retry(self):
        """Run the finished job again; returns the new Job."""
        return self.client.retry(self.id)


class Function:
    """A job function by name, called the Celery way."""

    def __init__(self, client, name):
        self.client, self.name = client, name

    def __repr__(self):
        return f"<Function {self.name}>"

    def delay(self, **kwargs):
        """Enqueue a call with these keyword arguments; returns its Job."""
        return self.client.call(self.name, kwargs)

    def apply_async(self, args=None, kwargs=None, countdown=None, eta=None, priority=None, idempotency_key=None):
        """Enqueue a call with options: `countdown` seconds from now or at `eta`, with `priority`.

        litejobs functions take keyword arguments only, so `args` must be empty.
        """
        if args:
            raise TypeError(
                f"{self.name}: litejobs functions take keyword arguments only; use apply_async(kwargs={{…}})"
            )
        return self.client.call(
            self.name, kwargs, idempotency_key=idempotency_key, delay=countdown, eta=eta, priority=priority
        )
