"""Control characters in any field that reaches a mail header, a PDF, a log line or a
file name: refused at the API with 422, or stripped from what was stored before;
never a job that retries forever."""

import email

import pytest
from helpers import assert_error

import jobs
from apps.accounts import tasks as account_tasks
import media
import models
import settings

CONTROLS = ["\r", "\n", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\t"]


def body_with(field, bad):
    """A valid body for the route of `field`, with control character `bad` in that field."""
    user = models.User.create(email=f"author{ord(bad)}@example.com")
    return {
        "users.name": ("/api/v1/users", {"email": "ann@example.com", "name": f"Ann{bad}Bcc: evil@example.com"}, "name"),
        "users.email": ("/api/v1/users", {"email": f"ann{bad}@example.com"}, "email"),
        "courses.title": ("/api/v1/courses", {"title": f"Intro{bad}X", "lessons": ["one"]}, "title"),
        "courses.lessons": ("/api/v1/courses", {"title": "Intro", "lessons": ["one", f"t{bad}wo"]}, "lessons"),
        "orders.user_identifier": (
            "/api/v1/orders",
            {"product_id": "p", "package_id": "k", "user_identifier": f"u{bad}1"},
            "user_identifier",
        ),
        "webhooks.url": ("/api/v1/webhooks", {"url": f"https://exa{bad}mple.com/h", "events": ["job.failed"]}, "url"),
        "posts.body": ("/api/v1/posts", {"author_id": str(user.id), "body": f"hi{bad}there"}, "body"),
    }[field]


FIELDS = ["users.name", "users.email", "courses.title", "courses.lessons", "orders.user_identifier", "webhooks.url", "posts.body"]


@pytest.mark.parametrize("bad", CONTROLS, ids=[repr(c) for c in CONTROLS])
@pytest.mark.parametrize("field", FIELDS)
def test_control_characters_are_refused_at_the_api(client, field, bad):
    path, body, name = body_with(field, bad)
    if field == "posts.body" and bad in "\r\n\t":
        assert client.post(path, body).status == 201  # a post may have lines
        return
    assert_error(client.post(path, body), 422, "invalid_argument", name)
    assert models.Job.select().count() == 0


def test_a_stored_name_with_a_carriage_return_still_gets_its_mail(tmp_path, monkeypatch):
    """A row from before the API refused them: the mail goes out, without the CR, once."""
    monkeypatch.setattr(settings, "OUTBOX_DIR", tmp_path / "outbox")
    user = models.User.create(email="ann@example.com", name="Ann\rBcc: evil@example.com")
    result = account_tasks.send_welcome_email.call_local(user.id)
    assert result["sent"] is True
    (mail,) = (tmp_path / "outbox").glob("*.eml")
    message = email.message_from_bytes(mail.read_bytes())
    assert message["Bcc"] is None and "\r" not in message["Subject"] and "Ann" in message["Subject"]


def test_an_address_no_mail_can_carry_fails_at_once_instead_of_retrying(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "OUTBOX_DIR", tmp_path / "outbox")
    user = models.User.create(email="ann\r\nBcc: x@example.com", name="Ann")
    with pytest.raises(jobs.JobError):  # fail_now: no retries
        account_tasks.send_welcome_email.call_local(user.id)


def test_certificate_pdf_of_a_stored_name_with_control_characters(tmp_path):
    import datetime

    path = media.render_certificate(tmp_path / "c.pdf", "Ann\x00\x1b\rLee", "Intro\x07", datetime.datetime(2026, 1, 2), "ABCD-1234")
    assert path.read_bytes().startswith(b"%PDF")


def test_upload_file_names_lose_their_control_characters(client):
    import io

    from PIL import Image

    from apps.content import models as analytics

    author = models.User.create(email="p@example.com")
    post = analytics.Post.publish(author.id, "hello")
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a\x1b[31mb.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png.getvalue() + b"\r\n--b--\r\n"
    )
    reply = client.request("POST", f"/api/v1/posts/{post.id}/media", body=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert reply.status == 202, reply.body
    assert analytics.Media.get_by_id(int(reply.json["id"])).filename == "a[31mb.png"


def test_create_user_command_refuses_control_characters(tmp_path):
    from webprocess import cli

    result = cli(tmp_path, "create-user", "ann@example.com", "--name", "Ann\x1bX", "--password", "long enough")
    assert result.returncode != 0 and "control character" in result.stderr and "Traceback" not in result.stderr
