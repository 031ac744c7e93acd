"""What a request may bring (guard.py), over real HTTP: non-finite numbers, pathological
JSON, `next` targets, body caps, chunked and malformed multipart bodies."""

import http.client
import json
import math
import os
from urllib.parse import quote

import pytest
from helpers import assert_error

import guard
import jobs
import models
from test_dashboard import EMAIL, PASSWORD, Browser


def strict_json(text):
    """Parse as JavaScript's JSON.parse would: NaN and Infinity are errors."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def admin():
    return models.User.create(email=EMAIL, password_hash=models.User.hash_password(PASSWORD), is_admin=True)


@pytest.fixture
def logged_in(server_url, admin):
    browser = Browser(server_url)
    assert browser.login().status == 303
    return browser


# -- 1. Non-finite numbers ------------------------------------------------------------
NON_FINITE_BODIES = [
    ("sleep", b'{"seconds": NaN}', "seconds"),
    ("sleep", b'{"seconds": Infinity}', "seconds"),
    ("sleep", b'{"seconds": -Infinity}', "seconds"),
    ("sleep", b'{"seconds": 1e999}', "seconds"),
    ("echo", b'{"value": [1, {"x": NaN}]}', "value[1].x"),
    ("echo", b'{"value": -1e400}', "value"),
]


@pytest.mark.parametrize(("name", "body", "field"), NON_FINITE_BODIES)
def test_non_finite_json_numbers_are_422_naming_the_field(client, name, body, field):
    reply = client.request("POST", f"/api/v1/jobs/{name}", body=body, headers={"Content-Type": "application/json"})
    assert_error(reply, 422, "invalid_argument", field)
    assert models.Job.select().count() == 0


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
def test_non_finite_form_strings_are_refused(logged_in, raw):
    reply = logged_in.post("/run/sleep", {"seconds": raw, "csrf_token": logged_in.csrf("/run/sleep")})
    assert reply.status == 422, reply.text[:300]
    assert "finite" in reply.text or "from 0 to 60" in reply.text
    assert models.Job.select().count() == 0


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "Infinity", "1e999"])
@pytest.mark.parametrize(("method", "path", "field"), [
    ("POST", "/api/v1/jobs/ping?wait=", "wait"),
    ("POST", "/api/v1/jobs/ping?delay=", "delay"),
    ("POST", "/api/v1/jobs/ping?priority=", "priority"),
    ("GET", "/api/v1/jobs?limit=", "limit"),
    ("GET", "/api/v1/analytics/daily?days=", "days"),
])
def test_non_finite_query_parameters_are_422(client, raw, method, path, field):
    assert_error(client.request(method, path + raw), 422, "invalid_argument", field)


def test_no_function_takes_a_non_finite_argument():
    """Every registered function's float (and any) parameter refuses NaN and infinities, nested too."""
    checked = 0
    for function in jobs.FUNCTIONS.values():
        for param in function.params:
            if param.type not in ("float", "any", "list", "dict"):
                continue
            for bad in (math.nan, math.inf, -math.inf):
                value = {"float": bad, "any": [bad], "list": [1, bad], "dict": {"a": bad}}[param.type]
                with pytest.raises(jobs.ArgumentError) as caught:
                    param.check(value)
                assert caught.value.field == param.name
                checked += 1
    assert checked >= 6


def test_sleep_itself_refuses_nan_at_once():
    """A NaN that got past the API (an old row, a direct call) fails the job instead of stalling a timer."""
    with pytest.raises(jobs.JobError):
        jobs.sleep.call_local(math.nan)


def test_nothing_non_finite_is_stored_or_emitted(client):
    job, _ = jobs.submit("echo", {"value": 1})
    models.Job.mark_finished(job.id, "succeeded", result={"ratio": math.nan, "list": [math.inf]})
    assert models.Job.get_by_id(job.id).result == '{"ratio": null, "list": [null]}'
    body = strict_json(client.get(f"/api/v1/jobs/{job.id}").text)
    assert body["result"] == {"ratio": None, "list": [None]}
    strict_json(client.get("/api/v1/jobs").text)
    assert guard.dumps({"a": math.nan}) == '{"a": null}'


# -- 9. Pathological JSON ------------------------------------------------------------------
@pytest.mark.parametrize(("body", "status", "code", "words"), [
    (b'{"value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "bad_json", "deeper than 32"),
    (b'{"value": ' + b"[" * 700 + b"]" * 700 + b"}", 400, "bad_json", "deeper than 32"),
    (b'{"value": ' + b"[" * 33 + b"]" * 33 + b"}", 400, "bad_json", "deeper than 32"),
    (json.dumps({"value": {str(i): i for i in range(guard.MAX_KEYS + 1)}}).encode(), 413, "too_large", "keys"),
    (json.dumps({"value": "x" * (guard.MAX_STRING + 1)}).encode(), 413, "too_large", "characters"),
    (b'{"value": 1, "value": 2}', 400, "bad_json", "twice"),
    (b'{"value": {"a": 1, "b": 2, "a": 3}}', 400, "bad_json", "twice"),
])
def test_pathological_json_is_refused_naming_the_limit(client, body, status, code, words):
    reply = client.request("POST", "/api/v1/jobs/echo", body=body, headers={"Content-Type": "application/json"})
    error = assert_error(reply, status, code)
    assert words in error["message"]
    assert models.Job.select().count() == 0


def test_json_just_inside_the_limits_is_accepted(client):
    value = [[[]]]
    for _ in range(guard.MAX_DEPTH - 4):  # the body object and "value" list count as levels
        value = [value]
    reply = client.post("/api/v1/jobs/echo", {"value": value})
    assert reply.status == 202, reply.body[:300]


# -- 2. Where login sends you ----------------------------------------------------------------
OFF_SITE = [
    "/%09/evil.example/x", "/%0A/evil.example/x", "/\t/evil.example", "//evil.example", "/\\evil.example",
    "/%5Cevil.example", "/%2F/evil.example", "/%252F%252Fevil.example", "https://evil.example/",
    "javascript:alert(1)", "/@evil.example", "/x@evil.example", "/\x7f/evil", "/\u3002/evil", "",
]


@pytest.mark.parametrize("target", OFF_SITE)
def test_next_never_leaves_the_site(server_url, admin, target):
    browser = Browser(server_url)
    token = browser.csrf("/login")
    reply = browser.post("/login", {"email": EMAIL, "password": PASSWORD, "csrf_token": token, "next": target})
    assert reply.status == 303 and reply.getheader("Location") in ("/", f"{server_url}/"), reply.getheader("Location")
    # Logged in now: GET /login?next=… goes straight on, to the same safe place.
    conn = http.client.HTTPConnection(browser.host, browser.port, timeout=10)
    cookies = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    conn.putrequest("GET", "/login?next=" + quote(target, safe=""))
    conn.putheader("Cookie", cookies)
    conn.endheaders()
    reply = conn.getresponse()
    assert reply.status == 303 and reply.getheader("Location") in ("/", f"{server_url}/"), reply.getheader("Location")
    conn.close()


@pytest.mark.parametrize("target", ["/workers", "/jobs?status=failed&name=echo", "/jobs/abc-123"])
def test_next_keeps_a_plain_path(target):
    assert guard.safe_next(target) == target


# -- 3. Body caps ----------------------------------------------------------------------------
def raw_request(base_url, method, path, headers, body=b"", read_timeout=10):
    """Send headers (and maybe part of a body) by hand; returns (status, body) of the answer."""
    host, port = base_url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=read_timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        try:
            if body:
                conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/login", "/logout", "/run/echo", "/orders", "/jobs/x/retry", "/schedules/x/pause"])
@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=xyz", "application/x-www-form-urlencoded"])
def test_big_form_bodies_are_413_before_a_byte_is_read(server_url, path, content_type):
    headers = {"Content-Type": content_type, "Content-Length": str(100 * 1024 * 1024)}
    status, body = raw_request(server_url, "POST", path, headers, body=b"--xyz\r\n")
    assert status == 413, body[:200]


def test_big_chunked_form_body_is_413_while_reading(server_url):
    chunk = b"a=" + b"x" * 16000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6)) + b"0\r\n\r\n"
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Transfer-Encoding": "chunked"}
    status, _ = raw_request(server_url, "POST", "/login", headers, body=body)
    assert status == 413


def test_only_the_upload_route_takes_upload_sized_bodies(client, server_url):
    headers = {"Authorization": f"Bearer {client.key}", "Content-Type": "application/json", "Content-Length": str(5 * 1024 * 1024)}
    status, body = raw_request(server_url, "POST", "/api/v1/jobs/echo", headers, body=b"{")
    assert status == 413 and json.loads(body)["error"]["code"] == "too_large"


def test_request_temp_files_are_closed_when_the_request_ends(client, monkeypatch):
    """A multipart body over bottle's in-memory size spools to temp files; none stay open."""
    import tempfile

    opened = []
    real = tempfile.NamedTemporaryFile

    def tracking(*args, **kwargs):
        file = real(*args, **kwargs)
        opened.append(file)
        return file

    import bottle

    monkeypatch.setattr(bottle, "NamedTemporaryFile", tracking)
    post = models.User.create(email="p@example.com").id
    from apps.content import models as analytics

    post = analytics.Post.publish(post, "hello")
    payload = b"x" * (2 * 1024 * 1024)  # over MEMFILE_MAX (1 MiB): spooled to disk
    body = (
        b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
        b"Content-Type: image/png\r\n\r\n" + payload + b"\r\n--b--\r\n"
    )
    reply = client.request("POST", f"/api/v1/posts/{post.id}/media", body=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert reply.status == 422  # not an image
    assert opened, "the test did not make bottle spool anything"
    assert all(file.closed for file in opened)
    assert not any(os.path.exists(file.name) for file in opened)


# -- 14. Chunked bodies ------------------------------------------------------------------------
def test_chunked_json_body_is_accepted(client, server_url):
    data = json.dumps({"value": {"n": 1}}).encode()
    body = b"%x\r\n%s\r\n" % (5, data[:5]) + b"%x\r\n%s\r\n" % (len(data) - 5, data[5:]) + b"0\r\n\r\n"
    headers = {"Authorization": f"Bearer {client.key}", "Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    status, reply = raw_request(server_url, "POST", "/api/v1/jobs/echo", headers, body=body)
    assert status == 202, reply[:300]
    assert json.loads(reply)["args"] == {"value": {"n": 1}}


def test_malformed_chunked_body_is_400(client, server_url):
    headers = {"Authorization": f"Bearer {client.key}", "Transfer-Encoding": "chunked"}
    status, reply = raw_request(server_url, "POST", "/api/v1/jobs/echo", headers, body=b"zz\r\nabc\r\n0\r\n\r\n")
    assert status == 400 and json.loads(reply)["error"]["code"] == "bad_json"


# -- 16. Malformed multipart -------------------------------------------------------------------
MALFORMED_PARTS = [
    b'--b\r\nContent-Disposition: form-data; name="a\x00b"\r\n\r\nx\r\n--b--\r\n',
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="a\x01.png"\r\n\r\nx\r\n--b--\r\n',
    b"--b\r\nContent-Disposition\r\n\r\nx\r\n--b--\r\n",
    b"--b\r\n\x00\x00\r\n\r\nx\r\n--b--\r\n",
    b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\nno end',
    b"no boundary at all",
    b"--b--\r\n",
]


@pytest.mark.parametrize("body", MALFORMED_PARTS)
def test_malformed_multipart_upload_is_422(client, body):
    post = models.User.create(email="m@example.com")
    from apps.content import models as analytics

    post = analytics.Post.publish(post.id, "hello")
    reply = client.request("POST", f"/api/v1/posts/{post.id}/media", body=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_error(reply, 422, "invalid_argument", "file")


@pytest.mark.parametrize("body", MALFORMED_PARTS)
@pytest.mark.parametrize("path", ["/login", "/run/echo"])
def test_malformed_multipart_form_is_400(server_url, body, path):
    status, reply = raw_request(server_url, "POST", path, {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(len(body))}, body)
    assert status in (400, 403), reply[:300]  # 403: a well-formed body without a CSRF token
    assert b"Traceback" not in reply
