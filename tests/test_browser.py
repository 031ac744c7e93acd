"""The dashboard in a real headless Chromium: what a person clicks, end to end.

Uses Debian's `chromium` and `chromium-driver` (never a downloaded browser:
selenium's Service points at /usr/bin/chromedriver, which skips Selenium
Manager). Without them the tests skip, or fail under LITEJOBS_REQUIRE_SERVICES=1.
A screenshot of every page visited lands in tests/artifacts/ (git-ignored).
"""

import os
import shutil
from pathlib import Path

import pytest

import models
from apps.orders import models as orders
import schedules
from helpers import REQUIRE_SERVICES, wait_until
from test_dashboard import fast_orders  # noqa: F401 - a fixture

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
EMAIL, PASSWORD = "browser@example.com", "a long browser password"
TIMEOUT = 15


def _missing():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -r requirements-test.txt)")
    return missing


@pytest.fixture(scope="module")
def chrome(tmp_path_factory):
    missing = _missing()
    if missing:
        message = f"headless Chromium needs {', '.join(missing)}: apt-get install chromium chromium-driver"
        if REQUIRE_SERVICES:
            pytest.fail(message + " (LITEJOBS_REQUIRE_SERVICES=1)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(TIMEOUT)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


class Person:
    """A person at the browser: opens pages, fills forms, clicks, looks."""

    def __init__(self, driver, base_url):
        self.driver, self.base_url = driver, base_url

    def open(self, path):
        self.driver.get(self.base_url + path)

    def find(self, css):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def type(self, css, text):
        field = self.find(css)
        field.clear()
        field.send_keys(text)

    def click(self, css):
        self.find(css).click()

    def button(self, text):
        """The submit button whose label is `text`."""
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.XPATH, f"//button[normalize-space()='{text}']")

    def wait_for_text(self, css, text, timeout=TIMEOUT):
        from selenium.common.exceptions import WebDriverException

        def seen():
            # The page refreshes itself: an element can vanish between finding and reading it.
            try:
                return text in self.find(css).text
            except WebDriverException:
                return False

        return wait_until(seen, timeout=timeout, interval=0.1, message=f"{text!r} in {css} at {self.driver.current_url}")

    @property
    def path(self):
        return self.driver.current_url[len(self.base_url) :]

    def screenshot(self, name):
        self.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))

    def log_in(self):
        self.open("/login")
        self.type("input[name=email]", EMAIL)
        self.type("input[name=password]", PASSWORD)
        self.button("Log in").click()
        self.wait_for_text("header.top", "Log out")


@pytest.fixture
def person(chrome, server_url):
    models.User.create(email=EMAIL, password_hash=models.User.hash_password(PASSWORD), is_admin=True)
    chrome.delete_all_cookies()
    return Person(chrome, server_url)


def test_log_in_and_see_every_page(person, consumer):
    person.open("/jobs")
    assert person.path.startswith("/login")
    person.screenshot("login")
    person.type("input[name=email]", EMAIL)
    person.type("input[name=password]", "not the password")
    person.button("Log in").click()
    person.wait_for_text(".error", "Wrong email or password")
    person.type("input[name=password]", PASSWORD)
    person.button("Log in").click()
    person.wait_for_text("h1", "Jobs")
    assert person.path == "/jobs"  # where the person was going before the login
    for path, name, heading in [
        ("/", "overview", "Overview"),
        ("/jobs", "jobs", "Jobs"),
        ("/run", "run", "Run a job function"),
        ("/workers", "workers", "Workers"),
        ("/schedules", "schedules", "Schedules"),
        ("/orders", "orders", "Orders"),
        ("/analytics", "analytics", "Analytics"),
    ]:
        person.open(path)
        person.wait_for_text("h1", heading)
        person.screenshot(name)
    person.button("Log out").click()
    person.wait_for_text("h1", "Log in")
    person.open("/")
    assert person.path.startswith("/login")


def test_run_echo_from_the_run_page(person, consumer):
    person.log_in()
    person.open("/run")
    person.click("a[href='/run/echo']")
    person.wait_for_text("h1", "Run echo")
    person.type("textarea[name=value]", "hello from the browser")
    person.screenshot("run-echo-form")
    person.button("Run").click()
    person.wait_for_text("h1", "succeeded")
    person.wait_for_text("#result", "hello from the browser")
    assert person.path.startswith("/jobs/")
    person.screenshot("job-succeeded")


def test_watch_a_running_job_and_cancel_it(person, consumer):
    person.log_in()
    person.open("/run/sleep")
    person.type("input[name=seconds]", "20")
    person.button("Run").click()
    person.wait_for_text("h1", "running")
    person.wait_for_text("#job", "of 10")  # the progress bar's caption, refreshed in place
    person.screenshot("job-running")
    person.button("Cancel").click()
    person.wait_for_text("h1", "canceled")
    person.screenshot("job-canceled")


def test_retry_a_failed_job(person, consumer):
    person.log_in()
    person.open("/run/fail")
    person.type("input[name=message]", "the disk is full")
    person.button("Run").click()
    person.wait_for_text("h1", "failed")
    person.wait_for_text("#error", "the disk is full")
    failed_path = person.path
    person.screenshot("job-failed")
    person.button("Retry").click()
    person.wait_for_text("h1", "failed")
    assert person.path != failed_path
    person.wait_for_text(".facts", "retry of")
    assert models.Job.select().where(models.Job.parent_id == failed_path.rsplit("/", 1)[1]).count() == 1
    person.screenshot("job-retried")


def test_place_an_order_and_see_the_pin(person, consumer, fast_orders):  # noqa: F811
    person.log_in()
    person.open("/orders")
    person.type("input[name=product_id]", "game-card")
    person.type("input[name=package_id]", "50-eur")
    person.type("input[name=user_identifier]", "player-42")
    person.screenshot("order-form")
    person.button("Place order").click()
    assert person.path.startswith("/orders/")
    person.screenshot("order-pending")
    person.wait_for_text("h1", "completed")  # the page refreshes itself until then
    order = orders.Order.get_by_id(person.path.rsplit("/", 1)[1])
    person.wait_for_text("#pin", order.pin_code)
    person.screenshot("order-completed")
    person.open("/orders")
    person.wait_for_text("#order-list", order.pin_code)
    person.screenshot("orders")


def test_pause_a_schedule(person):
    person.log_in()
    person.open("/schedules")
    row = "#schedule-prune_job_history"
    person.wait_for_text(row, "active")
    person.find(f"{row} form[action$='/pause'] button").click()
    person.wait_for_text(row, "paused")
    assert schedules.ScheduleState.get_by_id("prune_job_history").paused
    assert person.find(f"{row} button.secondary").text == "Resume"
    person.screenshot("schedules-paused")
    person.find(f"{row} form[action$='/resume'] button").click()
    person.wait_for_text(row, "active")
    assert not schedules.ScheduleState.get_by_id("prune_job_history").paused
