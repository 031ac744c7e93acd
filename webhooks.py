"""litejobs webhooks: checking target URLs, signing bodies and sending them.

Plain functions over the standard library. jobs.py turns events into
deliveries and runs each one as a job; web.py manages the subscriptions.
A receiver checks the `Litejobs-Signature` header with `verify()`.
"""

import hashlib
import hmac
import http.client
import ipaddress
import socket
import threading
import time
from typing import NamedTuple
from urllib.parse import urlsplit

EVENTS = ("job.succeeded", "job.failed", "order.completed", "order.failed", "usage.hourly")
SIGNATURE_HEADER = "Litejobs-Signature"
USER_AGENT = "litejobs-webhooks/1"
MAX_URL_LENGTH = 2048


class BadURL(ValueError):
    """A webhook URL litejobs will not call; the message says why and what to do."""


class Unresolvable(BadURL):
    """The URL's host has no address right now (may be temporary)."""


# -- URLs and their targets ----------------------------------------------------
def check_url(url, allow_private=False):
    """The addresses `url` may be sent to, after checking its scheme and targets.

    Raises BadURL for a URL that is not http(s), has credentials or resolves to
    a private, loopback, link-local, multicast or reserved address (unless
    `allow_private`), and Unresolvable when its host does not resolve.
    """
    if not isinstance(url, str) or not url.strip():
        raise BadURL("expected an http:// or https:// URL")
    if len(url) > MAX_URL_LENGTH:
        raise BadURL(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise BadURL(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise BadURL(f"expected an http:// or https:// URL, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise BadURL("has no host; expected e.g. https://example.com/hooks/litejobs")
    if parts.username is not None or parts.password is not None:
        raise BadURL("must not carry credentials; receivers check the Litejobs-Signature header instead")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolvable(f"cannot resolve host {parts.hostname!r}: {exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not allow_private:
        for address in addresses:
            kind = _non_public_kind(address)
            if kind:
                raise BadURL(
                    f"{parts.hostname} resolves to {address}, a {kind} address; webhooks to private, "
                    "loopback and link-local addresses need WEBHOOK_ALLOW_PRIVATE=1"
                )
    return addresses


def _non_public_kind(address):
    """What kind of non-public address `address` is, or None for a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    # ::ffff:127.0.0.1 reaches 127.0.0.1: judge the IPv4 address inside.
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:  # e.g. 100.64.0.0/10, shared by carriers
        return "non-global"
    return None


# -- Signatures ------------------------------------------------------------------
def sign(secret, body, t=None):
    """The `Litejobs-Signature` header value for `body` (bytes) sent at unix time `t`."""
    t = int(time.time() if t is None else t)
    digest = hmac.new(secret.encode("utf-8"), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(secret, header, body, tolerance=300, now=None):
    """True when `header` is a valid signature of `body` made within `tolerance` seconds of now.

    For receivers: pass the raw request body (bytes), before any JSON parsing.
    """
    t, signatures = None, []
    for item in (header or "").split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isdigit():
            t = int(value)
        elif key == "v1":
            signatures.append(value)
    if t is None or not signatures:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, s) for s in signatures)


# -- Sending -----------------------------------------------------------------------
class Outcome(NamedTuple):
    """How one attempt went: `ok` (2xx), or an error that `retry` says is worth trying again."""

    ok: bool
    retry: bool
    response_code: int | None
    error: str | None
    duration_ms: float


def retry_delay(attempts, base):
    """Seconds to wait after `attempts` failed attempts: base, 2×base, 4×base…"""
    return base * 2 ** (attempts - 1)


def send(url, secret, body, event, timeout, allow_private=False):
    """POST `body` (bytes) to `url`, signed with `secret`; returns an Outcome, never raises.

    The host is resolved and checked on every attempt (DNS can change since
    the webhook was created) and the connection goes to the checked address,
    so a second lookup cannot swap in a private one. Redirects are not
    followed. `timeout` bounds the whole attempt.
    """
    start = time.monotonic()

    def outcome(ok, retry, code, error):
        return Outcome(ok, retry, code, error, round((time.monotonic() - start) * 1000, 3))

    try:
        addresses = check_url(url, allow_private)
    except Unresolvable as exc:
        return outcome(False, True, None, str(exc))
    except BadURL as exc:
        return outcome(False, False, None, f"refused: {exc}")
    parts = urlsplit(url.strip())
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    connection._create_connection = _pinned(addresses)
    # A receiver trickling its answer byte by byte must not hold a worker past `timeout`.
    watchdog = threading.Timer(timeout, _abort, (connection,))
    watchdog.daemon = True
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Litejobs-Event": event,
        SIGNATURE_HEADER: sign(secret, body),
    }
    try:
        watchdog.start()
        connection.request("POST", path, body=body, headers=headers)
        reply = connection.getresponse()
        reply.read(64 * 1024)
        code = reply.status
    except TimeoutError:
        return outcome(False, True, None, f"timeout: no answer within {timeout:g} s")
    except (OSError, http.client.HTTPException) as exc:
        if time.monotonic() - start >= timeout:
            return outcome(False, True, None, f"timeout: no complete answer within {timeout:g} s")
        return outcome(False, True, None, f"connection error: {type(exc).__name__}: {exc}")
    finally:
        watchdog.cancel()
        connection.close()
    if 200 <= code < 300:
        return outcome(True, False, code, None)
    if code >= 500:
        return outcome(False, True, code, f"HTTP {code} from the receiver")
    if 300 <= code < 400:
        return outcome(False, False, code, f"HTTP {code}: redirects are not followed; use the final URL")
    return outcome(False, False, code, f"HTTP {code} from the receiver; not retried")


def _pinned(addresses):
    """A replacement for socket.create_connection that connects only to `addresses`."""

    def create_connection(address, timeout=None, source_address=None):
        error = None
        for ip in addresses:
            try:
                return socket.create_connection((ip, address[1]), timeout, source_address)
            except OSError as exc:
                error = exc
        raise error

    return create_connection


def _abort(connection):
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: the attempt ended on its own
