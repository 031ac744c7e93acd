"""The HTML dashboard over real HTTP: login, sessions, CSRF, every page and form."""

import datetime
import http.client
import re
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urlsplit

import pytest

from apps.accounts import tasks as account_tasks
from apps.content import models as analytics
from apps.content import pages as content_pages
from apps.courses import models as courses
import dashboard
import jobs
import loader
import models
from apps.orders import models as orders
from apps.orders.tasks import place_order
import schedules
from apps.webhooks import models as webhooks
from helpers import wait_until

EMAIL, PASSWORD = "admin@example.com", "correct horse battery"

PAGES = ["/", "/jobs", "/jobs/some-id", "/run", "/run/echo", "/schedules", "/workers", "/orders", "/orders/1", "/analytics", "/webhooks", "/posts/1", "/courses", "/knowledge"]


class Browser:
    """An HTTP client that keeps cookies and reads CSRF tokens, like a person's browser."""

    def __init__(self, base_url):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.cookies = {}
        self.last_set_cookies = []

    def request(self, method, path, form=None, headers=None):
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            reply = conn.getresponse()
            self.last_set_cookies = reply.headers.get_all("Set-Cookie") or []
            for line in self.last_set_cookies:
                for name, morsel in SimpleCookie(line).items():
                    if morsel["max-age"] == "0" or morsel["expires"].startswith("Thu, 01 Jan 1970"):
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value
            reply.text = reply.read().decode("utf-8")
            return reply
        finally:
            conn.close()

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, form=None):
        return self.request("POST", path, form=form or {})

    def csrf(self, path="/"):
        """The csrf_token of the forms on `path`."""
        page = self.get(path)
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert match, f"no csrf_token on {path}: {page.status} {page.text[:300]}"
        return match.group(1)

    def submit(self, path, form=None, page="/"):
        """POST a form the way the page `page` would, with its CSRF token."""
        return self.post(path, {**(form or {}), "csrf_token": self.csrf(page)})

    def login(self, email=EMAIL, password=PASSWORD):
        return self.post("/login", {"email": email, "password": password, "csrf_token": self.csrf("/login")})


@pytest.fixture
def user():
    return models.User.create(email=EMAIL, password_hash=models.User.hash_password(PASSWORD), is_admin=True)


@pytest.fixture
def browser(server_url):
    return Browser(server_url)


@pytest.fixture
def logged_in(browser, user):
    reply = browser.login()
    assert reply.status == 303, reply.text[:500]
    return browser


@pytest.fixture
def fast_orders(monkeypatch, server_url):
    """The sandbox provider served by the test server, completing orders in about a second."""
    for name, value in [
        ("BASE_URL", server_url),
        ("PROVIDER_URL", ""),
        ("SANDBOX_COMPLETE_AFTER", 0.5),
        ("SANDBOX_LATENCY_MS", 0),
        ("SANDBOX_FAILURE_RATE", 0.0),
        # Whole seconds: huey keeps an eta to the second, so shorter delays come due at once.
        ("ORDER_FIRST_CHECK_DELAY", 1.0),
        ("ORDER_BACKOFF_BASE", 1.0),
        ("ORDER_BACKOFF_MAX", 1.0),
    ]:
        monkeypatch.setattr(dashboard.settings, name, value)


def run_job(name, args):
    job, _ = jobs.submit(name, args)
    return job


# -- Login -------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PAGES)
def test_login_required(browser, path):
    reply = browser.get(path)
    assert reply.status == 303
    location = reply.getheader("Location")
    assert urlsplit(location).path == "/login"
    assert f"next={path.replace('/', '%2F')}" in location


def test_login_form_has_fields_and_csrf(browser):
    reply = browser.get("/login")
    assert reply.status == 200
    assert 'name="email"' in reply.text and 'name="password"' in reply.text
    assert re.search(r'type="hidden" name="csrf_token" value="[^"]+"', reply.text)


def test_login_sets_a_safe_session_cookie_and_goes_to_next(browser, user):
    token = browser.csrf("/login")
    reply = browser.post("/login", {"email": EMAIL.upper(), "password": PASSWORD, "csrf_token": token, "next": "/workers"})
    assert reply.status == 303
    assert urlsplit(reply.getheader("Location")).path == "/workers"
    session = next(line for line in browser.last_set_cookies if line.startswith(dashboard.SESSION_COOKIE + "="))
    assert "HttpOnly" in session
    assert "samesite=lax" in session.lower()
    assert "Secure" not in session  # development; production adds it
    assert models.Token.select().where(models.Token.kind == "session").count() == 1
    assert browser.get("/workers").status == 200


def test_session_cookie_is_secure_in_production(browser, user, monkeypatch):
    monkeypatch.setattr(dashboard.settings, "ENV", "production")
    browser.login()
    session = next(line for line in browser.last_set_cookies if line.startswith(dashboard.SESSION_COOKIE + "="))
    assert "Secure" in session and "HttpOnly" in session


def test_login_never_redirects_off_site(browser, user):
    token = browser.csrf("/login")
    reply = browser.post("/login", {"email": EMAIL, "password": PASSWORD, "csrf_token": token, "next": "//evil.example/x"})
    assert reply.status == 303
    assert urlsplit(reply.getheader("Location")).netloc != "evil.example"
    assert urlsplit(reply.getheader("Location")).path == "/"


def test_wrong_password_is_refused(browser, user):
    reply = browser.login(password="wrong password")
    assert reply.status == 200
    assert "Wrong email or password" in reply.text
    assert dashboard.SESSION_COOKIE not in browser.cookies
    assert browser.get("/").status == 303


def test_unknown_email_is_refused_the_same_way(browser, user):
    reply = browser.login(email="nobody@example.com")
    assert "Wrong email or password" in reply.text
    assert dashboard.SESSION_COOKIE not in browser.cookies


def test_login_attempts_are_throttled(browser, user):
    for _ in range(dashboard.settings.LOGIN_ATTEMPTS):
        assert browser.login(password="wrong").status == 200
    reply = browser.login()  # even the right password waits now
    assert reply.status == 429
    assert int(reply.getheader("Retry-After")) > 0
    assert "Too many failed logins" in reply.text
    assert dashboard.SESSION_COOKIE not in browser.cookies


def test_throttle_holds_across_web_processes_and_lifts_after_the_window(browser, user):
    # Failures are rows in the database: another web process sees the same count.
    account_key, _ = dashboard.throttle_keys(EMAIL, "127.0.0.1")
    models.LoginFailure.record(*[account_key] * dashboard.settings.LOGIN_ATTEMPTS)
    assert browser.login().status == 429
    later = models.utcnow() + models.LoginFailure.WINDOW + datetime.timedelta(seconds=1)
    assert models.LoginFailure.wait(account_key, dashboard.settings.LOGIN_ATTEMPTS, now=later) == 0
    assert account_tasks.cleanup_expired_tokens.call_local()["login_failures"] == 0  # still inside the window now
    assert models.LoginFailure.delete_old(later) == dashboard.settings.LOGIN_ATTEMPTS


def test_throttle_counts_per_ip_too(browser, user):
    for number in range(dashboard.settings.LOGIN_ATTEMPTS * 4):
        browser.login(email=f"guess{number}@example.com", password="wrong")
    assert browser.login().status == 429


def test_failures_from_one_address_never_lock_the_owner_out_elsewhere(server_url, user):
    """The throttle is per account and address: an attacker's failures lock only the attacker."""
    attacker, owner = Browser(server_url), Browser(server_url)
    elsewhere = {"X-Forwarded-For": "203.0.113.7"}  # the test server's peer, 127.0.0.1, is a trusted proxy
    for _ in range(dashboard.settings.LOGIN_ATTEMPTS + 2):
        token = attacker.csrf("/login")
        attacker.request("POST", "/login", {"email": EMAIL, "password": "wrong", "csrf_token": token}, headers=elsewhere)
    token = attacker.csrf("/login")
    locked = attacker.request("POST", "/login", {"email": EMAIL, "password": PASSWORD, "csrf_token": token}, headers=elsewhere)
    assert locked.status == 429
    token = owner.csrf("/login")
    home = {"X-Forwarded-For": "198.51.100.2"}
    reply = owner.request("POST", "/login", {"email": EMAIL, "password": PASSWORD, "csrf_token": token}, headers=home)
    assert reply.status == 303 and dashboard.SESSION_COOKIE in owner.cookies


def test_forged_session_cookie_is_no_session(browser, user):
    _, plain = models.Token.issue(user, "session", dashboard.datetime.timedelta(hours=1))
    browser.cookies[dashboard.SESSION_COOKIE] = f"{plain}.0000"
    assert browser.get("/").status == 303


def test_logout_ends_the_session(logged_in):
    cookie = logged_in.cookies[dashboard.SESSION_COOKIE]
    reply = logged_in.submit("/logout")
    assert reply.status == 303
    assert urlsplit(reply.getheader("Location")).path == "/login"
    assert models.Token.select().where(models.Token.kind == "session").count() == 0
    logged_in.cookies[dashboard.SESSION_COOKIE] = cookie  # a kept copy of the cookie is worthless
    assert logged_in.get("/").status == 303


def test_session_expires(logged_in):
    models.Token.update(expires_at=models.utcnow()).execute()
    assert logged_in.get("/").status == 303
    assert logged_in.login().status == 303  # the stale cookie does not get in the way
    assert logged_in.get("/").status == 200


# -- CSRF ----------------------------------------------------------------------------------
POST_FORMS = [
    "/login",
    "/logout",
    "/jobs/{job}/retry",
    "/jobs/{job}/cancel",
    "/run/echo",
    "/schedules/prune_job_history/pause",
    "/schedules/prune_job_history/resume",
    "/schedules/prune_job_history/run",
    "/orders",
]


@pytest.mark.parametrize("path", POST_FORMS)
@pytest.mark.parametrize("token", [None, "forged"])
def test_post_without_valid_csrf_is_403(logged_in, path, token):
    job = run_job("echo", {"value": 1})
    form = {"email": EMAIL, "password": PASSWORD, "value": "x"}
    if token:
        form["csrf_token"] = token
    reply = logged_in.post(path.format(job=job.id), form)
    assert reply.status == 403, reply.text[:300]
    assert models.Job.select().count() == 1  # nothing was run, retried or canceled
    assert models.Job.get_by_id(job.id).status == "queued"


def test_login_csrf_belongs_to_the_browser(server_url, user):
    """A token read by one browser does not work with another one's cookie."""
    first, second = Browser(server_url), Browser(server_url)
    token = first.csrf("/login")
    second.csrf("/login")
    reply = second.post("/login", {"email": EMAIL, "password": PASSWORD, "csrf_token": token})
    assert reply.status == 403


def test_session_csrf_is_not_the_login_one(logged_in, server_url):
    other = Browser(server_url)
    token = other.csrf("/login")
    reply = logged_in.post("/run/echo", {"value": "x", "csrf_token": token})
    assert reply.status == 403


# -- Pages ----------------------------------------------------------------------------------
def test_every_page_renders_with_security_headers(logged_in):
    job = run_job("echo", {"value": "hi"})
    for path in ["/", "/jobs", f"/jobs/{job.id}", "/run", "/run/echo", "/run/sleep", "/schedules", "/workers", "/orders", "/analytics", "/login"]:
        reply = logged_in.get(path)
        expected = 303 if path == "/login" else 200  # logged in: /login goes on to the overview
        assert reply.status == expected, (path, reply.status, reply.text[:500])
        csp = reply.getheader("Content-Security-Policy") or ""
        assert "default-src" in csp, path
        assert reply.getheader("X-Content-Type-Options") == "nosniff", path
        assert reply.getheader("Referrer-Policy"), path
        assert reply.getheader("X-Frame-Options") or "frame-ancestors" in csp, path
        if expected == 200:
            assert reply.getheader("Content-Type").startswith("text/html")
            assert "Traceback" not in reply.text


def test_login_page_has_security_headers(browser):
    reply = browser.get("/login")
    assert "default-src" in (reply.getheader("Content-Security-Policy") or "")
    assert reply.getheader("X-Content-Type-Options") == "nosniff"


def test_static_files_are_served(browser):
    css = browser.get("/static/style.css")
    assert css.status == 200 and "text/css" in css.getheader("Content-Type")
    assert browser.get("/static/app.js").status == 200
    assert browser.get("/static/../settings.py").status in (403, 404)


def test_overview_shows_counts_chart_and_failures(logged_in, consumer):
    failed = run_job("fail", {"message": "boom at the overview"})
    run_job("echo", {"value": 1})
    wait_until(lambda: models.Job.select().where(models.Job.status.in_(("succeeded", "failed"))).count() == 2)
    page = logged_in.get("/").text
    assert "<svg" in page and "Jobs finished per minute" in page
    assert 'class="bar-fail"' in page and 'class="bar-ok"' in page
    assert f'href="/jobs/{failed.id}"' in page
    assert "boom at the overview" in page
    assert re.search(r'<span class="num">1</span> worker alive', page)


def test_overview_counts_finished_jobs_of_the_last_day_only(logged_in):
    now = models.utcnow()
    for number, (status, hours_ago) in enumerate([("succeeded", 1), ("succeeded", 30), ("failed", 2), ("queued", 48)]):
        at = now - datetime.timedelta(hours=hours_ago)
        models.Job.create(id=f"j{number}", name="echo", status=status, enqueued_at=at, finished_at=None if status == "queued" else at)
    counts = models.Job.counts_by_status(finished_since=now - datetime.timedelta(hours=24))
    assert counts == {"succeeded": 1, "failed": 1, "queued": 1}
    assert models.Job.counts_by_status() == {"succeeded": 2, "failed": 1, "queued": 1}
    page = logged_in.get("/").text
    assert re.search(r'status-succeeded">succeeded</span> <span class="num">1</span>', page)
    assert re.search(r'status-queued">queued</span> <span class="num">1</span>', page)


def test_jobs_list_filters_and_pages(logged_in):
    for number in range(55):
        run_job("echo", {"value": number})
    target = run_job("ping", {})
    page = logged_in.get("/jobs?name=ping").text
    assert target.id[:8] in page and page.count('href="/jobs/') == 2  # name link and id link
    page = logged_in.get("/jobs").text
    assert page.count('<a class="mono" href="/jobs/') == 50
    older = re.search(r'href="(/jobs\?cursor=[^"]+)">Older', page).group(1)
    assert logged_in.get(older.replace("&amp;", "&")).text.count('<a class="mono" href="/jobs/') == 6
    assert logged_in.get("/jobs?status=failed").text.count('<a class="mono" href="/jobs/') == 0
    assert logged_in.get("/jobs?status=bogus").status == 400
    assert logged_in.get("/jobs?cursor=bogus").status == 400


def test_jobs_search_by_id(logged_in):
    job = run_job("echo", {"value": 1})
    reply = logged_in.get(f"/jobs?id={job.id}")
    assert reply.status == 303 and reply.getheader("Location").endswith(f"/jobs/{job.id}")
    assert "No job with id" in logged_in.get("/jobs?id=nope").text


def test_job_page_shows_everything(logged_in, consumer):
    job = run_job("fail", {"message": "it <broke>"})
    wait_until(lambda: models.Job.get_by_id(job.id).status == "failed")
    page = logged_in.get(f"/jobs/{job.id}").text
    assert "it &lt;broke&gt;" in page and "<broke>" not in page  # escaped
    assert "Traceback" in page and "JobError" in page
    assert "enqueued" in page and "started (attempt 1)" in page
    assert f'action="/jobs/{job.id}/retry"' in page
    assert f'action="/jobs/{job.id}/cancel"' not in page
    assert "data-refresh" not in page  # finished: no more refreshing
    assert logged_in.get("/jobs/nope").status == 404


def test_job_page_shows_what_the_job_logged(logged_in, consumer):
    job = run_job("fail", {"message": "logged <here>"})
    wait_until(lambda: models.Job.get_by_id(job.id).status == "failed")
    page = logged_in.get(f"/jobs/{job.id}").text
    log = page.split('<pre id="log">', 1)[1].split("</pre>", 1)[0]
    assert "Unhandled exception in task" in log and "JobError: logged &lt;here&gt;" in log


def test_durations_on_jobs_and_job_page_read_as_a_person_says_them(logged_in):
    job = run_job("ping", {})
    models.Job.update(status="succeeded", finished_at=models.utcnow(), duration_ms=0.078).where(
        models.Job.id == job.id
    ).execute()
    assert ">78 µs</td>" in logged_in.get("/jobs").text
    page = logged_in.get(f"/jobs/{job.id}").text
    assert "<dd>78 µs</dd>" in page and "succeeded after 78 µs" in page and "e-05" not in page


def test_stop_now_button_terminates_a_running_job(logged_in, consumer):
    job = run_job("sleep", {"seconds": 30})
    wait_until(lambda: models.Job.get_by_id(job.id).status == "running", message="running")
    page = logged_in.get(f"/jobs/{job.id}").text
    assert f'action="/jobs/{job.id}/terminate"' in page
    assert logged_in.submit(f"/jobs/{job.id}/terminate").status == 303
    wait_until(lambda: models.Job.get_by_id(job.id).status == "canceled", timeout=5, message="stopped")
    assert models.Job.get_by_id(job.id).error == "terminated: canceled while running"


def test_running_job_shows_progress_and_refreshes(logged_in, consumer):
    job = run_job("sleep", {"seconds": 3})
    wait_until(lambda: models.Job.get_by_id(job.id).progress_done, message="progress")
    page = logged_in.get(f"/jobs/{job.id}").text
    assert "<progress" in page and 'data-refresh="1"' in page
    assert f'action="/jobs/{job.id}/cancel"' in page
    assert logged_in.submit(f"/jobs/{job.id}/cancel").status == 303
    wait_until(lambda: models.Job.get_by_id(job.id).status == "canceled", message="canceled")


def test_run_form_is_built_from_the_signature(logged_in):
    page = logged_in.get("/run/sleep").text
    assert 'name="seconds"' in page and 'type="number"' in page and 'max="60"' in page
    assert "Sleep `seconds`" in page  # the docstring
    assert "float" in page and "required" in page
    listing = logged_in.get("/run").text
    for name in ("ping", "echo", "sleep", "fail"):
        assert f'href="/run/{name}"' in listing
    assert logged_in.get("/run/prune_nothing").status == 404


def test_run_form_submits_a_job_and_it_runs(logged_in, consumer):
    reply = logged_in.submit("/run/echo", {"value": "héllo wörld"}, page="/run/echo")
    assert reply.status == 303
    job_id = reply.getheader("Location").rsplit("/", 1)[1]
    job = wait_until(lambda: (j := models.Job.get_by_id(job_id)).status == "succeeded" and j)
    assert job.to_dict()["result"] == "héllo wörld"
    page = logged_in.get(f"/jobs/{job_id}").text
    assert "héllo wörld" in page and "succeeded" in page


def test_run_form_converts_types(logged_in):
    reply = logged_in.submit("/run/sleep", {"seconds": "2.5"}, page="/run/sleep")
    assert reply.status == 303
    job = models.Job.get_by_id(reply.getheader("Location").rsplit("/", 1)[1])
    assert job.args_dict == {"seconds": 2.5}
    reply = logged_in.submit("/run/echo", {"value": '{"a": [1, 2]}'}, page="/run/echo")
    job = models.Job.get_by_id(reply.getheader("Location").rsplit("/", 1)[1])
    assert job.args_dict == {"value": {"a": [1, 2]}}


@pytest.mark.parametrize(
    "path, form, message",
    [
        ("/run/sleep", {"seconds": "ten"}, "seconds: expected float, got &#039;ten&#039;"),
        ("/run/sleep", {"seconds": "99"}, "seconds: must be from 0 to 60"),
        ("/run/sleep", {"seconds": ""}, "seconds: missing required argument"),
    ],
)
def test_run_form_shows_errors_inline(logged_in, path, form, message):
    reply = logged_in.submit(path, form, page=path)
    assert reply.status == 422
    assert message in reply.text
    assert 'class="field invalid"' in reply.text
    assert f'value="{form["seconds"]}"' in reply.text  # what was typed stays
    assert models.Job.select().count() == 0


def test_retry_form_runs_a_failed_job_again(logged_in, consumer):
    job = run_job("fail", {"message": "try again"})
    wait_until(lambda: models.Job.get_by_id(job.id).status == "failed")
    reply = logged_in.submit(f"/jobs/{job.id}/retry", page=f"/jobs/{job.id}")
    assert reply.status == 303
    new_id = reply.getheader("Location").rsplit("/", 1)[1]
    assert new_id != job.id
    new = models.Job.get_by_id(new_id)
    assert new.parent_id == job.id and new.args_dict == {"message": "try again"}
    assert f'href="/jobs/{job.id}"' in logged_in.get(f"/jobs/{new_id}").text


def test_retry_of_a_waiting_job_is_a_conflict(logged_in):
    job = run_job("echo", {"value": 1})
    reply = logged_in.submit(f"/jobs/{job.id}/retry")
    assert reply.status == 409
    assert "only a finished job can be retried" in reply.text


def test_cancel_form_cancels_a_scheduled_job(logged_in):
    job, _ = jobs.submit("echo", {"value": 1}, delay=3600)
    reply = logged_in.submit(f"/jobs/{job.id}/cancel", page=f"/jobs/{job.id}")
    assert reply.status == 303 and reply.getheader("Location").endswith(f"/jobs/{job.id}")
    assert models.Job.get_by_id(job.id).status == "canceled"
    assert logged_in.submit(f"/jobs/{job.id}/cancel").status == 409


def test_workers_page_lists_consumers(logged_in, consumer):
    job = run_job("sleep", {"seconds": 2})
    wait_until(lambda: models.Job.get_by_id(job.id).status == "running")
    page = logged_in.get("/workers").text
    assert "alive" in page and jobs.settings.HOSTNAME in page and "thread" in page
    assert f'href="/jobs/{job.id}"' in page


@pytest.mark.parametrize(
    "cron, words",
    [
        ("* * * * *", "every minute"),
        ("*/5 * * * *", "every 5 minutes"),
        ("15 * * * *", "every hour, at 15 past"),
        ("0 * * * *", "every hour, on the hour"),
        ("0 */6 * * *", "every 6 hours, on the hour"),
        ("0 2 * * *", "every day at 02:00"),
        ("30 8,20 * * *", "every day at 08:30 and 20:30"),
        ("0 9 * * 1", "every Monday at 09:00"),
        ("0 9 * * 1-5", "every Monday to Friday at 09:00"),
        ("0 9 * * 0,6", "every Sunday and Saturday at 09:00"),
        ("0 3 1 * *", "on day 1 of every month at 03:00"),
        ("0 3 1 1 *", None),
        ("not a cron", None),
    ],
)
def test_cron_in_words(cron, words):
    assert dashboard.cron_words(cron) == words


# -- Orders ---------------------------------------------------------------------------------
def test_order_form_places_an_order_and_shows_its_pin(logged_in, consumer, fast_orders):
    form = {"product_id": "game-card", "package_id": "50-eur", "user_identifier": "player-1", "extra_field": ""}
    reply = logged_in.submit("/orders", form, page="/orders")
    assert reply.status == 303
    order_id = urlsplit(reply.getheader("Location")).path.rsplit("/", 1)[1]
    page = logged_in.get(f"/orders/{order_id}").text
    assert "player-1" in page
    order = wait_until(lambda: (o := orders.Order.get_by_id(order_id)).status == "completed" and o, timeout=15)
    assert order.extra_field is None
    page = logged_in.get(f"/orders/{order_id}").text
    assert f'<p class="pin" id="pin">{order.pin_code}</p>' in page
    assert "data-refresh" not in page  # completed: the page stops refreshing
    assert "dispatch" in page and "status check" in page
    listing = logged_in.get("/orders").text
    assert order.pin_code in listing and f'href="/orders/{order_id}"' in listing


def test_pending_order_page_refreshes(logged_in):
    order, _ = place_order({"product_id": "p", "package_id": "k", "user_identifier": "u"})
    assert 'data-refresh="1"' in logged_in.get(f"/orders/{order.id}").text
    assert 'data-refresh="2"' in logged_in.get("/orders").text


def test_order_form_shows_errors_inline(logged_in):
    form = {"product_id": "game-card", "package_id": "50-eur", "user_identifier": "  "}
    reply = logged_in.submit("/orders", form, page="/orders")
    assert reply.status == 422
    assert "user_identifier: must not be blank" in reply.text
    assert 'value="game-card"' in reply.text  # what was typed stays
    assert orders.Order.select().count() == 0


def test_unknown_order_is_404(logged_in):
    assert logged_in.get("/orders/nope").status == 404
    assert logged_in.get("/orders?status=bogus").status == 400


# -- Schedules ------------------------------------------------------------------------------
def test_schedules_page_lists_every_schedule(logged_in):
    page = logged_in.get("/schedules").text
    for item in schedules.active_schedules():
        assert f'id="schedule-{item.name}"' in page
    assert "every 5 minutes" in page and "<code>*/5 * * * *</code>" in page
    assert 'action="/schedules/prune_job_history/pause"' in page
    assert 'action="/schedules/prune_job_history/run"' in page


def test_pause_and_resume_schedule_forms(logged_in):
    reply = logged_in.submit("/schedules/prune_job_history/pause", page="/schedules")
    assert reply.status == 303
    assert urlsplit(reply.getheader("Location")).path == "/schedules"
    assert schedules.ScheduleState.get_by_id("prune_job_history").paused
    page = logged_in.get("/schedules").text
    assert 'action="/schedules/prune_job_history/resume"' in page
    assert 'action="/schedules/prune_job_history/pause"' not in page
    assert logged_in.submit("/schedules/prune_job_history/resume").status == 303
    assert not schedules.ScheduleState.get_by_id("prune_job_history").paused
    assert logged_in.submit("/schedules/no_such_schedule/pause").status == 404


def test_run_now_form_starts_the_job(logged_in):
    reply = logged_in.submit("/schedules/prune_job_history/run", page="/schedules")
    assert reply.status == 303
    job = models.Job.get_by_id(reply.getheader("Location").rsplit("/", 1)[1])
    assert job.name == "prune_job_history"
    page = logged_in.get("/schedules").text
    assert f'href="/jobs/{job.id}"' in page  # the last job, with its status
    again = logged_in.submit("/schedules/prune_job_history/run")
    assert again.status == 409 and "never overlaps itself" in again.text


# -- Analytics ------------------------------------------------------------------------------
def test_analytics_page_draws_trending_and_daily_charts(logged_in):
    now = models.utcnow()
    analytics.TrendingSnapshot.create(
        computed_at=now, window_hours=24, hashtags='[{"tag": "python", "count": 42}, {"tag": "huey", "count": 7}]'
    )
    for back in range(10):
        day = (now - dashboard.datetime.timedelta(days=back)).date()
        analytics.DailyAnalytics.create(date=day, new_users=back, posts=2 * back, likes=3, active_users=5, mean_engagement=1.5)
    page = logged_in.get("/analytics").text
    assert "#python" in page and ">42<" in page
    assert page.count('<svg class="chart"') == 1 + len(content_pages.DAILY_SERIES)
    assert "Active users" in page and "5 on " in page  # a level: the last day
    assert "Posts" in page and "90 in 10 days" in page  # a count: the total
    assert logged_in.get("/analytics?days=7").status == 200
    assert logged_in.get("/analytics?days=bogus").status == 400


def test_analytics_page_says_when_nothing_was_computed(logged_in):
    page = logged_in.get("/analytics").text
    assert "Nothing counted yet" in page and "No daily numbers yet" in page


# -- Webhooks, posts and courses ------------------------------------------------------------
def test_webhooks_page_lists_deliveries_and_never_the_secret(logged_in):
    webhook = webhooks.Webhook.subscribe("https://hooks.example/in", ["job.failed", "order.completed"])
    gone = webhooks.Webhook.subscribe("https://gone.example/in", ["job.failed"])
    gone.deactivate()
    delivery = webhooks.WebhookDelivery.create(webhook=webhook, event_id="evt_1", event="job.failed", payload="{}")
    delivery.record_attempt("succeeded", 204, 12.5, None)
    webhooks.WebhookDelivery.create(webhook=webhook, event_id="evt_2", event="order.completed", payload="{}", status="failed", last_error="timed out")
    reply = logged_in.get("/webhooks")
    assert reply.status == 200
    page = reply.text
    assert "https://hooks.example/in" in page and "job.failed, order.completed" in page
    assert "gone.example" not in page  # deactivated
    assert ">204<" in page and "12 ms" in page and "timed out" in page
    assert "status-succeeded" in page and "status-failed" in page
    assert webhook.secret not in page and "whsec_" not in page
    assert 'href="/webhooks"' in page


def test_webhooks_page_when_there_are_none(logged_in):
    assert "No webhooks yet" in logged_in.get("/webhooks").text


def test_post_page_shows_media_thumbnails_and_errors(logged_in, user):
    post = analytics.Post.publish(user.id, "Hello #world <b>bold</b>")
    ready = analytics.Media.create(post=post, token=analytics.Media.new_token(), filename="cat.png", size_bytes=1234)
    ready.mark_ready(800, 600, {"web": [800, 600], "thumb_640": [640, 480], "thumb_320": [320, 240]})
    bad = analytics.Media.create(post=post, token=analytics.Media.new_token(), filename="bad.gif")
    bad.reject("not an image we can read")
    analytics.Media.create(post=post, token=analytics.Media.new_token(), filename="slow.jpg")
    reply = logged_in.get(f"/posts/{post.id}")
    assert reply.status == 200
    page = reply.text
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "#world" in page
    assert f'<img class="thumb" src="/uploads/{ready.token}/thumb_320.webp"' in page
    assert f"/uploads/{ready.token}/web.webp" in page
    assert "not an image we can read" in page
    assert f"/uploads/{bad.token}/" not in page
    assert 'data-refresh="2"' in page  # one is still processing
    assert logged_in.get("/posts/999999").status == 404
    assert logged_in.get("/posts/abc").status == 404


def test_courses_page_shows_lessons_progress_and_certificate(logged_in, user):
    course = courses.Course.create_with_lessons("Intro to queues", ["one", "two", "three", "four"])
    learner = models.User.create(email="ann@example.com", name="Ann Learner")
    done = courses.Enrollment.create(user=learner, course=course, progress=100, completed_at=models.utcnow())
    certificate, created = courses.Certificate.draft(done).save_once()
    assert created
    halfway = courses.Enrollment.create(user=user, course=course, progress=50)
    reply = logged_in.get("/courses")
    assert reply.status == 200
    page = reply.text
    assert "Intro to queues" in page and ">4<" in page
    assert "Ann Learner" in page
    assert certificate.code in page
    assert f'href="/certificates-static/{certificate.code}.pdf"' in page
    assert f'<progress max="100" value="{halfway.progress}">' in page and '<progress max="100" value="100">' in page
    assert 'href="/courses"' in page


def test_courses_page_when_there_are_none(logged_in):
    page = logged_in.get("/courses").text
    assert "No courses yet" in page and "No enrollments yet" in page


@pytest.fixture
def broken_functions(tmp_path):
    """A functions folder whose one file has a syntax error, loaded as a start loads it."""
    folder = tmp_path / "functions"
    folder.mkdir()
    (folder / "syntax.py").write_text("from litejobs import task\n\ndef oops(:\n    pass\n")
    known = len(loader.LOAD_ERRORS)
    assert loader.load_functions(folder) == []
    yield folder / "syntax.py"
    del loader.LOAD_ERRORS[known:]


def test_functions_that_did_not_load_are_shown_on_every_page(logged_in, broken_functions):
    for path in ("/", "/run", "/jobs"):
        page = logged_in.get(path).text
        assert "did not load" in page and f"{broken_functions}:3" in page and "SyntaxError" in page, path
