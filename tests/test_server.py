"""The gevent server of `web.py run` (server.py), in a real process: slow and idle
clients are cut off, connections are capped, chunked bodies are read once."""

import json
import os
import socket
import time
from pathlib import Path

import pytest
from webprocess import WebProcess, cli

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """One web process with short limits: 1 s for headers, 2 s idle, 6 connections."""
    data = tmp_path_factory.mktemp("server")
    key = cli(data, "create-key", "tests").stdout.strip().splitlines()[-1]
    process = WebProcess(data, data / "web.log", HEADER_TIMEOUT="1", IDLE_TIMEOUT="2", MAX_CONNECTIONS="6")
    process.key = key
    yield process
    process.stop()


def connect(web):
    return socket.create_connection(("127.0.0.1", web.port), timeout=10)


def closed_within(sock, seconds):
    """Seconds until the server closed `sock` (reading whatever it sent first), or None."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except (socket.timeout, TimeoutError):
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - start


def read_response(sock):
    """One whole response (headers and a Content-Length body) from a kept-alive socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def open_descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- 4. Slow and idle clients, connection cap ------------------------------------------------
def test_headers_trickled_slowly_are_cut_off_at_the_header_timeout(web):
    sock = connect(web)
    try:
        sock.sendall(b"GET /health/live HTTP/1.1\r\n")
        start = time.monotonic()
        try:
            for _ in range(20):  # one header byte every 0.2 s: each recv is quick, the whole is not
                sock.sendall(b"X")
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - start < 3.5  # cut off after about 1 s, not after 4
        assert closed_within(sock, 3) is not None
    finally:
        sock.close()


def test_a_silent_connection_is_closed_at_the_header_timeout(web):
    sock = connect(web)
    try:
        waited = closed_within(sock, 5)
        assert waited is not None and 0.5 < waited < 3
    finally:
        sock.close()


def test_idle_keep_alive_connection_is_closed_but_a_busy_one_lives(web):
    sock = connect(web)
    try:
        request = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(3):  # within IDLE_TIMEOUT the connection is reused
            sock.sendall(request)
            assert read_response(sock).startswith(b"HTTP/1.1 200")
            time.sleep(1.2)  # longer than HEADER_TIMEOUT: idle waits count against IDLE_TIMEOUT instead
        waited = closed_within(sock, 6)
        assert waited is not None and waited < 3
    finally:
        sock.close()


def test_connections_are_capped_and_slow_ones_cannot_starve_the_rest(web):
    baseline = open_descriptors(web.process.pid)
    hogs = [connect(web) for _ in range(40)]
    try:
        for sock in hogs:
            sock.sendall(b"GET / HTTP/1.1\r\n")  # never finished
        time.sleep(0.3)
        assert open_descriptors(web.process.pid) <= baseline + 6 + 2  # the rest wait in the listen queue
        start = time.monotonic()
        reply = web.client().get("/health/live")
        assert reply.status == 200
        assert time.monotonic() - start < 15  # 40 hogs, 6 at a time, 1 s each
    finally:
        for sock in hogs:
            sock.close()


def test_connection_cap_stays_below_the_open_file_limit():
    import resource

    import server

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert server.connection_limit(10**6) <= soft - server.RESERVED_DESCRIPTORS or soft == resource.RLIM_INFINITY
    assert server.connection_limit(5) == 5


@pytest.mark.parametrize("unit", ["litejobs-web.service", "litejobs-consumer.service"])
def test_systemd_units_raise_the_descriptor_limit_and_restrict_file_modes(unit):
    text = (ROOT / "deploy" / unit).read_text()
    limit = [line for line in text.splitlines() if line.startswith("LimitNOFILE=")]
    assert limit and int(limit[0].split("=")[1]) > 1000 + 128  # MAX_CONNECTIONS's default and the reserve
    assert "\nUMask=0077\n" in text


# -- 14. Chunked bodies through gevent ---------------------------------------------------------
def chunked(data, size=7):
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


def post_chunked(web, body, content_type="application/json"):
    sock = connect(web)
    try:
        head = (
            f"POST /api/v1/jobs/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {web.key}\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        try:
            sock.sendall(head.encode() + body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        status = int(answer.split(b" ", 2)[1])
        return status, answer.split(b"\r\n\r\n", 1)[1]
    finally:
        sock.close()


def test_chunked_json_body_is_accepted_by_the_real_server(web):
    status, body = post_chunked(web, chunked(json.dumps({"value": {"text": "chunked ✓"}}).encode()))
    assert status == 202, body[:300]


def test_chunked_body_over_the_limit_is_413_on_the_real_server(web):
    big = json.dumps({"value": "x" * (1024 * 1024 + 10)}).encode()
    status, _ = post_chunked(web, chunked(big, 65536))
    assert status == 413


def test_web_process_logs_no_traceback(web):
    assert "Traceback" not in web.log()


# -- One send per response ----------------------------------------------------------------
def test_headers_and_body_of_a_response_leave_in_one_send():
    """Two sends per answer cost a third of an enqueue (bench/web_rows.py --profile): one is enough."""
    import gevent.socket

    import server

    sent = []

    class RecordingSocket(gevent.socket.socket):
        def sendall(self, data, flags=0):
            sent.append(bytes(data))
            return super().sendall(data, flags)

    def app(environ, start_response):
        start_response("202 Accepted", [("Content-Type", "application/json")])
        return [b'{"id": "42"}']

    ours, client = gevent.socket.socketpair()
    client.sendall(b"POST /api/v1/jobs/ping HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    wsgi = server.make_server(app, "127.0.0.1", 1)
    wsgi.update_environ()
    wsgi.handle(RecordingSocket(fileno=ours.detach()), ("127.0.0.1", 40000))
    answer = client.recv(65536)
    client.close()
    assert len(sent) == 1, sent
    assert answer == sent[0]
    assert answer.startswith(b"HTTP/1.1 202 Accepted\r\n") and answer.endswith(b'\r\n\r\n{"id": "42"}')


def test_a_response_arrives_whole_in_one_read_from_the_real_server(web):
    """Headers and body in one segment: a client's first read has the whole answer."""
    sock = connect(web)
    try:
        for _ in range(20):
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = sock.recv(65536)
            assert first.endswith(b'{"status": "ok"}'), first
    finally:
        sock.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"Host: a\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n",
        b"Host: a\r\nX-Twice: 1\r\nx-twice: 2\r\nAuthorization:   Bearer k  \r\n\r\n",
        b"Host: a\nTransfer-Encoding: chunked\n\n",
        b"Host: a\r\nNot a header\r\nX-After: 1\r\n\r\n",
        b"Host: caf\xe9\r\n\r\n",
        b"Host: a\r\nX_Under: 1\r\nContent-Length: 0\r\nX-Pad:  v \t\r\n\r\n",
    ],
)
def test_request_headers_read_as_http_client_reads_them(raw):
    """server.RequestHeaders replaces http.client.parse_headers (and the email package) for speed, not meaning."""
    import io
    from http import client

    from gevent.pywsgi import WSGIHandler

    import server

    ours, theirs = server.RequestHeaders.read(io.BytesIO(raw + b"BODY")), client.parse_headers(io.BytesIO(raw + b"BODY"))
    assert ours.headers == [f"{name}: {value}\r\n" for name, value in theirs.items()]
    for name in ("host", "Content-Length", "X-TWICE", "authorization", "transfer-encoding", "x-after", "missing"):
        assert ours.get(name) == theirs.get(name)
    assert ours.typeheader == theirs.get("content-type")
    handler = object.__new__(server.LimitedHandler)
    handler.headers = ours
    assert list(handler._headers()) == list(WSGIHandler._headers(handler))  # gevent's, from the header lines


def test_request_headers_keep_http_clients_limits():
    import io
    from http import client

    import server

    too_long = server.RequestHeaders.read(io.BytesIO(b"X: " + b"a" * 70000 + b"\r\n\r\n"))
    assert too_long.status == "Line too long"
    with pytest.raises(client.HTTPException):
        server.RequestHeaders.read(io.BytesIO(b"".join(b"X-%d: 1\r\n" % n for n in range(101)) + b"\r\n"))


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here")
def test_shared_port_is_refused_when_another_server_listens_there():
    """WEB_PROCESSES shares the port among its own processes only: a second litejobs on it fails at start."""
    import server

    other = server.shared_listener("127.0.0.1", 0)
    port = other.getsockname()[1]
    try:
        with pytest.raises(OSError):
            server.shared_listener("127.0.0.1", port, first=True)
        server.shared_listener("127.0.0.1", port).close()  # one of the same server's processes may join
    finally:
        other.close()
    server.shared_listener("127.0.0.1", port, first=True).close()  # free again
