"""Courses: lessons, enrollments, progress in the background and one certificate, ever."""

import io
import subprocess
import sys
import threading

import pytest
from helpers import ROOT, assert_error, cli_env, wait_until
from pypdf import PdfReader

from apps.courses import models as courses
from apps.courses import tasks as course_tasks
import jobs
import models
import settings
from apps.courses.models import Certificate
from models import Job, User


def make_user(name="Ada Lovelace", email="ada@example.com"):
    return User.create(email=email, name=name)


def make_course(client, title="Python for analysts", lessons=("Setup", "Data types", "Pandas")):
    reply = client.post("/api/v1/courses", {"title": title, "lessons": list(lessons)})
    assert reply.status == 201, reply.body
    return reply.json


def enroll(client, user, course):
    reply = client.post("/api/v1/enrollments", {"user_id": str(user.id), "course_id": course["id"]})
    assert reply.status == 201, reply.body
    return reply.json


def complete(client, enrollment, lesson):
    reply = client.post(f"/api/v1/enrollments/{enrollment['id']}/lessons/{lesson['id']}/complete")
    assert reply.status == 200, reply.body
    return reply.json


def finished(client, job_id):
    job = client.get(f"/api/v1/jobs/{job_id}").json
    return job if job["status"] in models.TERMINAL else None


def complete_course(client, enrollment, course):
    for lesson in course["lessons"]:
        job_id = complete(client, enrollment, lesson)["job_id"]
        assert wait_until(lambda: finished(client, job_id), message="progress job")["status"] == "succeeded"
    return wait_until(
        lambda: (e := client.get(f"/api/v1/enrollments/{enrollment['id']}").json)["certificate"] and e,
        timeout=20,
        message="certificate",
    )


def outbox_mail(text):
    """The first .eml in the outbox that contains `text`, as text, or None."""
    for path in sorted(settings.OUTBOX_DIR.glob("*.eml")):
        mail = path.read_text(errors="replace")
        if text in mail:
            return mail
    return None


def pdf_text(client, url):
    reply = client.get(url)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/pdf"
    return PdfReader(io.BytesIO(reply.body)).pages[0].extract_text()


# -- Courses and enrollments ---------------------------------------------------------
def test_create_course_returns_its_lessons_in_order(client):
    course = make_course(client, lessons=["One", "Two", "Three"])
    assert course["title"] == "Python for analysts"
    assert [lesson["title"] for lesson in course["lessons"]] == ["One", "Two", "Three"]
    assert all(isinstance(lesson["id"], str) for lesson in course["lessons"]) and isinstance(course["id"], str)
    assert client.get(f"/api/v1/courses/{course['id']}").json == course


@pytest.mark.parametrize(
    "body, field",
    [
        ({"lessons": ["a"]}, "title"),
        ({"title": "  ", "lessons": ["a"]}, "title"),
        ({"title": 5, "lessons": ["a"]}, "title"),
        ({"title": "T"}, "lessons"),
        ({"title": "T", "lessons": []}, "lessons"),
        ({"title": "T", "lessons": "a, b"}, "lessons"),
        ({"title": "T", "lessons": ["a", 2]}, "lessons"),
        ({"title": "T", "lessons": ["a"], "price": 10}, "price"),
    ],
)
def test_create_course_rejects_bad_fields(client, body, field):
    assert_error(client.post("/api/v1/courses", body), 422, "invalid_argument", field)


def test_enroll_answers_201_and_a_second_time_409(client):
    user, course = make_user(), make_course(client)
    enrollment = enroll(client, user, course)
    assert enrollment["user_id"] == str(user.id) and enrollment["course_id"] == course["id"]
    assert enrollment["progress"] == 0 and enrollment["certificate"] is None
    assert client.get(f"/api/v1/enrollments/{enrollment['id']}").json == enrollment
    again = client.post("/api/v1/enrollments", {"user_id": user.id, "course_id": course["id"]})
    assert_error(again, 409, "conflict")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"course_id": "1"}, "user_id"),
        ({"user_id": "999999", "course_id": "1"}, "user_id"),
        ({"user_id": True, "course_id": "1"}, "user_id"),
        ({"user_id": "USER", "course_id": "1"}, "user_id"),
        ({"user_id": "{user}", "course_id": "424242"}, "course_id"),
    ],
)
def test_enroll_rejects_unknown_user_or_course(client, body, field):
    user = make_user()
    make_course(client)
    body = {k: (str(user.id) if v == "{user}" else v) for k, v in body.items()}
    assert_error(client.post("/api/v1/enrollments", body), 422, "invalid_argument", field)


def test_unknown_ids_in_paths_answer_404(client):
    user, course = make_user(), make_course(client)
    other = make_course(client, title="Other")
    enrollment = enroll(client, user, course)
    assert_error(client.get("/api/v1/enrollments/999999"), 404, "not_found")
    assert_error(client.get("/api/v1/enrollments/abc"), 404, "not_found")
    assert_error(client.get("/api/v1/courses/999999"), 404, "not_found")
    foreign = other["lessons"][0]["id"]
    assert_error(client.post(f"/api/v1/enrollments/{enrollment['id']}/lessons/{foreign}/complete"), 404, "not_found")
    assert_error(client.post("/api/v1/enrollments/999999/lessons/1/complete"), 404, "not_found")


def test_course_routes_need_an_api_key(anonymous):
    assert_error(anonymous.post("/api/v1/courses", {"title": "T", "lessons": ["a"]}), 401, "unauthorized")
    assert_error(anonymous.get("/api/v1/certificates/ABCD-EFGH-JKMN"), 401, "unauthorized")


# -- Progress and certificates -----------------------------------------------------------
def test_progress_is_recomputed_in_the_background(client, consumer):
    user, course = make_user(), make_course(client)
    enrollment = enroll(client, user, course)
    first = complete(client, enrollment, course["lessons"][0])
    assert first["progress"] == 0 and first["completed_lessons"] == [course["lessons"][0]["id"]]
    job = wait_until(lambda: finished(client, first["job_id"]))
    assert job["name"] == "recalculate_course_progress" and job["queue"] == "progress"
    assert job["status"] == "succeeded" and job["result"]["progress"] == 33
    assert client.get(f"/api/v1/enrollments/{enrollment['id']}").json["progress"] == 33


def test_completing_the_course_issues_one_verifiable_certificate(client, consumer):
    user, course = make_user(), make_course(client)
    enrollment = enroll(client, user, course)
    done = complete_course(client, enrollment, course)
    assert done["progress"] == 100
    code, url = done["certificate"]["code"], done["certificate"]["url"]
    assert url == f"/certificates-static/{code}.pdf"

    verified = client.get(f"/api/v1/certificates/{code}").json
    assert verified["valid"] is True and verified["name"] == "Ada Lovelace"
    assert verified["course"] == "Python for analysts" and verified["url"] == url
    assert verified["issued_at"].endswith("Z")
    assert client.get(f"/api/v1/certificates/{code.lower()}").status == 200

    text = pdf_text(client, url)
    assert "Ada Lovelace" in text and "Python for analysts" in text and code in text

    # The learner is mailed the link (written to the outbox without SMTP_URL).
    mail = wait_until(lambda: outbox_mail(code), message="certificate mail")
    assert "To: ada@example.com" in mail and f"{settings.BASE_URL}{url}" in mail

    # Completing every lesson again recounts progress but never issues a second certificate.
    complete_course(client, enrollment, course)
    wait_until(lambda: not Job.select().where(Job.status.not_in(models.TERMINAL)).exists(), message="idle queue")
    assert Certificate.select().count() == 1
    assert Job.select().where(Job.name == "generate_certificate").count() == 1
    assert Job.select().where(Job.name == "send_certificate_email").count() == 1
    assert client.get(f"/api/v1/enrollments/{enrollment['id']}").json["certificate"]["code"] == code


def test_certificate_task_run_twice_at_once_keeps_one_certificate_and_one_pdf(client):
    user, course = make_user(), make_course(client)
    enrollment = courses.Enrollment.get_by_id(int(enroll(client, user, course)["id"]))
    for lesson in enrollment.course.lessons:
        enrollment.complete_lesson(lesson)
    assert enrollment.recalculate() == 100
    folder = settings.CERTIFICATE_DIR
    before = set(folder.iterdir()) if folder.exists() else set()
    results = []

    def run():
        results.append(course_tasks.generate_certificate.call_local(enrollment.id))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    results.append(course_tasks.generate_certificate.call_local(enrollment.id))
    assert len({result["code"] for result in results}) == 1
    assert sum(result["created"] for result in results) == 1
    certificate = Certificate.get()
    # The losers of the race removed their PDFs; no temporary file is left.
    assert set(folder.iterdir()) - before == {certificate.path}


def test_certificate_before_the_last_lesson_fails_clearly(client, consumer):
    user, course = make_user(), make_course(client)
    enrollment = enroll(client, user, course)
    job, _ = jobs.submit("generate_certificate", {"enrollment_id": int(enrollment["id"])})
    done = wait_until(lambda: finished(client, job.id))
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["error"] == f"enrollment {enrollment['id']} is at 0%; a certificate needs 100%"
    assert Certificate.select().count() == 0


def test_arabic_name_is_shaped_right_to_left(client, consumer):
    name = "محمد رضایی"
    user, course = make_user(name=name, email="mohammad@example.com"), make_course(client, lessons=["Only"])
    done = complete_course(client, enroll(client, user, course), course)
    text = pdf_text(client, done["certificate"]["url"])
    # Unshaped, the letters would be laid out left to right and read back reversed.
    assert name in text
    assert name[::-1] not in text


def test_unknown_certificate_code_is_404(client):
    assert_error(client.get("/api/v1/certificates/ZZZZ-ZZZZ-ZZZZ"), 404, "not_found")


@pytest.mark.parametrize("path", ["/certificates-static/NOPE.pdf", "/certificates-static/../settings.py"])
def test_missing_or_outside_certificate_files_are_not_served(server_url, path):
    from helpers import Client

    assert Client(server_url).get(path).status == 404


def test_a_missing_font_fails_the_job_naming_the_setting(client, consumer, monkeypatch, tmp_path):
    user, course = make_user(), make_course(client, lessons=["Only"])
    monkeypatch.setattr(settings, "CERTIFICATE_FONT", str(tmp_path / "nope.ttf"))
    enrollment = enroll(client, user, course)
    complete(client, enrollment, course["lessons"][0])
    job = wait_until(
        lambda: Job.get_or_none((Job.name == "generate_certificate") & Job.status.in_(models.TERMINAL)), timeout=20
    )
    assert job.status == "failed" and job.attempts == 1
    assert job.error.startswith("CERTIFICATE_FONT: no such font file") and "nope.ttf" in job.error
    assert Certificate.select().count() == 0


def test_courses_without_content_stops_the_start_naming_the_fix(tmp_path):
    (tmp_path / "none").mkdir()
    env = cli_env(tmp_path, APPS="accounts,courses", FUNCTIONS_DIR=str(tmp_path / "none"))
    started = subprocess.run(
        [sys.executable, "web.py", "create-key", "x"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert started.returncode != 0
    assert "APPS names courses but not content" in started.stderr and "APPS=accounts,courses,content" in started.stderr
    assert "Traceback" not in started.stderr
