"""Media uploads: real images made here with Pillow, sent over HTTP as multipart,
processed by a real consumer; renditions upright, right-sized and without EXIF;
bad files rejected clearly with nothing left on disk."""

import datetime
import io
import os
import struct
import time
import uuid
import zlib

import pytest
from helpers import Client, use_redis, assert_error, service_or_skip, wait_until
from PIL import Image

from apps.content import models as analytics
from apps.content import tasks as content_tasks
from apps.courses import tasks as course_tasks
import jobs
import models
import settings
from apps.content.models import Media
from models import Job, User

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


# -- Images made by the tests ------------------------------------------------------
def jpeg_with_orientation_and_gps(size=(4000, 3000), orientation=6):
    """Red, with a blue top-left quarter as stored; EXIF orientation and a GPS position."""
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (0, 0, size[0] // 2, size[1] // 2))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "CameraMaker"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (52.0, 31.0, 12.5), "E", (13.0, 24.0, 3.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, exif=exif.tobytes())
    return out.getvalue()


def png_with_alpha(size=(800, 400)):
    image = Image.new("RGBA", size, (*GREEN, 255))
    image.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))  # left half fully transparent
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def animated_gif(size=(900, 600), frames=4):
    colours = [BLUE, RED, GREEN, (200, 200, 30)]
    images = [Image.new("RGB", size, colours[n % 4]).convert("P") for n in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=80, loop=0)
    return out.getvalue()


def png_bomb(width=20000, height=20000):
    """A real 1-bit PNG of width×height pixels (400 MP): a few KiB that would decode to gigabytes."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def multipart(data, filename="photo.jpg", field="file", content_type="application/octet-stream"):
    """A multipart/form-data body with one file field, built by hand; returns (body, headers)."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


# -- Helpers -------------------------------------------------------------------------
def make_post():
    author = User.create(email=f"{uuid.uuid4().hex[:8]}@example.com", name="Poster")
    return analytics.Post.create(author=author, body="holiday #photos")


def upload(client, post_id, data, filename="photo.jpg", **kwargs):
    body, headers = multipart(data, filename, **kwargs)
    return client.post(f"/api/v1/posts/{post_id}/media", body=body, headers=headers)


def processed(client, media_id, timeout=30):
    return wait_until(
        lambda: (m := client.get(f"/api/v1/media/{media_id}").json)["status"] != "processing" and m,
        timeout=timeout,
        message=f"media {media_id} processed",
    )


def uploaded_and_processed(client, data, filename="photo.jpg"):
    post = make_post()
    reply = upload(client, post.id, data, filename)
    assert reply.status == 202, reply.body
    accepted = reply.json
    assert accepted["status"] == "processing" and accepted["post_id"] == str(post.id)
    assert isinstance(accepted["id"], str) and accepted["job_id"]
    return accepted, processed(client, accepted["id"])


def finished_job(client, job_id):
    """The job once its outcome is recorded, which happens just after it marks the media row."""
    return wait_until(lambda: (job := client.get(f"/api/v1/jobs/{job_id}").json)["status"] != "running" and job)


def fetch_image(server_url, url):
    """GET a rendition without an API key; returns (response, decoded image)."""
    reply = Client(server_url).get(url)
    assert reply.status == 200, (url, reply.status)
    assert reply.headers["Content-Type"] == "image/webp"
    assert "immutable" in reply.headers["Cache-Control"]
    image = Image.open(io.BytesIO(reply.body))
    image.load()
    return reply, image


def files_of(item_id):
    """Every file on disk that belongs to media `item_id`: renditions, temporaries, the original."""
    item = Media.get_by_id(int(item_id))
    found = list(item.folder.glob("*")) if item.folder.exists() else []
    found += [p for p in settings.INCOMING_DIR.glob(f"*{item.token}*")]
    return found


# -- Good images -------------------------------------------------------------------------
def test_jpeg_is_turned_upright_resized_and_stripped_of_exif(client, consumer, server_url):
    accepted, media = uploaded_and_processed(client, jpeg_with_orientation_and_gps())
    assert media["status"] == "ready" and media["error"] is None
    # Orientation 6 (rotate 90° clockwise): the upright photo is portrait.
    assert (media["width"], media["height"]) == (3000, 4000)
    expected = {"web": (1200, 1600), "thumb_640": (480, 640), "thumb_320": (240, 320)}
    assert set(media["urls"]) == set(expected)
    for name, size in expected.items():
        reply, image = fetch_image(server_url, media["urls"][name])
        assert image.size == size and image.format == "WEBP"
        assert "exif" not in image.info and "xmp" not in image.info and not image.getexif()
        assert b"EXIF" not in reply.body and b"GPS" not in reply.body and b"CameraMaker" not in reply.body
        # The stored top-left (blue) quarter is the upright top-right one.
        w, h = image.size
        assert _near(image.getpixel((w * 3 // 4, h // 8)), BLUE)
        assert _near(image.getpixel((w // 4, h // 8)), RED)
    job = finished_job(client, accepted["job_id"])
    assert job["name"] == "process_media_upload" and job["queue"] == "media" and job["status"] == "succeeded"
    shown = client.get(f"/api/v1/posts/{media['post_id']}").json
    assert shown["id"] == media["post_id"] and shown["media"] == [media]
    # The original, GPS and all, is gone once the renditions exist.
    assert sorted(p.name for p in files_of(media["id"])) == ["thumb_320.webp", "thumb_640.webp", "web.webp"]


def test_png_keeps_its_transparency(client, consumer, server_url):
    _, media = uploaded_and_processed(client, png_with_alpha(), "logo.png")
    assert media["status"] == "ready" and (media["width"], media["height"]) == (800, 400)
    _, thumb = fetch_image(server_url, media["urls"]["thumb_320"])
    assert thumb.size == (320, 160) and thumb.mode == "RGBA"
    assert thumb.getpixel((40, 80))[3] == 0 and thumb.getpixel((280, 80))[3] == 255
    # Smaller than 1600 px: the web size is the original size, never enlarged.
    _, web = fetch_image(server_url, media["urls"]["web"])
    assert web.size == (800, 400)


def test_animated_gif_gives_its_first_frame(client, consumer, server_url):
    _, media = uploaded_and_processed(client, animated_gif(), "dance.gif")
    assert media["status"] == "ready" and (media["width"], media["height"]) == (900, 600)
    _, thumb = fetch_image(server_url, media["urls"]["thumb_640"])
    assert thumb.size == (640, 427)
    assert _near(thumb.convert("RGB").getpixel((320, 200)), BLUE)


def test_processing_twice_changes_nothing(client, consumer):
    _, media = uploaded_and_processed(client, png_with_alpha(), "logo.png")
    item = Media.get_by_id(int(media["id"]))
    before = {p.name: p.stat().st_mtime_ns for p in item.folder.iterdir()}
    assert content_tasks.process_media_upload.call_local(item.id)["status"] == "ready"
    assert {p.name: p.stat().st_mtime_ns for p in item.folder.iterdir()} == before
    assert client.get(f"/api/v1/media/{media['id']}").json == media


# -- Rejections ------------------------------------------------------------------------------
def _rejected(client, data, filename):
    accepted, media = uploaded_and_processed(client, data, filename)
    assert media["status"] == "rejected"
    assert media["urls"] == {"web": None, "thumb_640": None, "thumb_320": None}
    job = finished_job(client, accepted["job_id"])
    # A bad file fails at once: retrying cannot make it an image.
    assert job["status"] == "failed" and job["attempts"] == 1
    assert media["error"] in job["error"]
    assert files_of(media["id"]) == []
    assert not Media.get_by_id(int(media["id"])).folder.exists()
    return media


def test_truncated_jpeg_is_rejected_with_a_clear_error(client, consumer):
    data = jpeg_with_orientation_and_gps(size=(1200, 900))
    media = _rejected(client, data[: len(data) // 2], "cut.jpg")
    assert "truncated" in media["error"]


def test_decompression_bomb_is_rejected_before_decoding(client, consumer):
    bomb = png_bomb()
    assert len(bomb) < 100_000
    media = _rejected(client, bomb, "bomb.png")
    assert "IMAGE_MAX_PIXELS" in media["error"] and str(settings.IMAGE_MAX_PIXELS) in media["error"]


def test_text_file_named_jpg_is_refused_at_once(client):
    post = make_post()
    incoming = set(settings.INCOMING_DIR.glob("*")) if settings.INCOMING_DIR.exists() else set()
    reply = upload(client, post.id, b"hello, I am not a photo\n" * 10, "holiday.jpg")
    error = assert_error(reply, 422, "invalid_argument", "file")
    assert "holiday.jpg" in error["message"] and "JPEG, PNG, WebP or GIF" in error["message"]
    assert Media.select().count() == 0 and Job.select().count() == 0
    now = set(settings.INCOMING_DIR.glob("*")) if settings.INCOMING_DIR.exists() else set()
    assert now == incoming


def test_upload_over_the_limit_is_413_and_leaves_nothing(client):
    post = make_post()
    limit = settings.UPLOAD_MAX_MB * 1024 * 1024
    incoming = set(settings.INCOMING_DIR.glob("*")) if settings.INCOMING_DIR.exists() else set()
    data = b"\xff\xd8\xff\xe0" + b"\x00" * (limit - 3)  # a JPEG start, one byte over the limit
    error = assert_error(upload(client, post.id, data), 413, "too_large")
    assert "UPLOAD_MAX_MB" in error["message"]
    assert Media.select().count() == 0
    now = set(settings.INCOMING_DIR.glob("*")) if settings.INCOMING_DIR.exists() else set()
    assert now == incoming


def test_upload_errors(client):
    post = make_post()
    assert_error(upload(client, 999999, png_with_alpha()), 404, "not_found")
    assert_error(upload(client, post.id, png_with_alpha(), field="photo"), 422, "invalid_argument", "file")
    not_multipart = client.post(f"/api/v1/posts/{post.id}/media", {"file": "x"})
    assert_error(not_multipart, 422, "invalid_argument", "file")
    broken = client.post(
        f"/api/v1/posts/{post.id}/media", body=b"--x\r\nnonsense", headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert_error(broken, 422, "invalid_argument", "file")
    assert_error(client.get("/api/v1/media/999999"), 404, "not_found")
    assert_error(Client(client.base_url).get("/api/v1/media/1"), 401, "unauthorized")
    anonymous_upload = Client(client.base_url)
    body, headers = multipart(png_with_alpha())
    assert_error(anonymous_upload.post(f"/api/v1/posts/{post.id}/media", body=body, headers=headers), 401, "unauthorized")


@pytest.mark.parametrize(
    "path",
    [
        "/uploads/../settings.py",
        "/uploads/%2e%2e/settings.py",
        "/uploads/abcdefghijkl/original.jpg",
        "/uploads/abcdefghijkl/web.webp",
        "/uploads/",
    ],
)
def test_only_renditions_are_served(server_url, path):
    assert Client(server_url).get(path).status == 404


def test_processing_media_has_no_urls_yet(client):
    post = make_post()
    reply = upload(client, post.id, png_with_alpha(), "logo.png")  # no consumer: stays queued
    media = client.get(f"/api/v1/media/{reply.json['id']}").json
    assert media["status"] == "processing"
    assert media["urls"] == {"web": None, "thumb_640": None, "thumb_320": None}
    assert media["width"] is None and media["height"] is None


def _near(pixel, colour, tolerance=40):
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour))


# -- Cleanup ----------------------------------------------------------------------------------
def _post_aged(days, with_media=False):
    post = make_post()
    analytics.Post.update(created_at=models.utcnow() - datetime.timedelta(days=days)).where(
        analytics.Post.id == post.id
    ).execute()
    if not with_media:
        return post, None
    item = Media.create(post=post, token=Media.new_token(), status="ready")
    item.folder.mkdir(parents=True)
    for name in Media.RENDITIONS:
        (item.folder / f"{name}.webp").write_bytes(b"RIFF....WEBP")
    return post, item


def test_cleanup_old_posts_removes_only_old_posts_nobody_touched(monkeypatch):
    monkeypatch.setattr(content_tasks, "CLEANUP_BATCH", 2)  # several batches for five posts
    retention = settings.POST_RETENTION_DAYS
    doomed = [_post_aged(retention + 1 + n, with_media=n < 2) for n in range(5)]
    liked, liked_media = _post_aged(retention + 30, with_media=True)
    commented, _ = _post_aged(retention + 30)
    shared, _ = _post_aged(retention + 30)
    recent, recent_media = _post_aged(retention - 1, with_media=True)
    fan = User.create(email="fan@example.com", name="Fan")
    analytics.Like.create(user=fan, post=liked)
    analytics.Comment.create(user=fan, post=commented, body="nice")
    analytics.Share.create(user=fan, post=shared)

    result = content_tasks.cleanup_old_posts.call_local()
    assert result["deleted_posts"] == 5 and result["deleted_media"] == 2
    left = {post.id for post in analytics.Post.select()}
    assert left == {liked.id, commented.id, shared.id, recent.id}
    for _, item in doomed:
        if item is not None:
            assert not item.folder.exists() and Media.get_or_none(Media.id == item.id) is None
    for item in (liked_media, recent_media):
        assert sorted(p.name for p in item.folder.iterdir()) == ["thumb_320.webp", "thumb_640.webp", "web.webp"]
    # Running it again finds nothing more to do.
    assert content_tasks.cleanup_old_posts.call_local()["deleted_posts"] == 0


def _aged_file(path, hours, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    stamp = time.time() - hours * 3600
    os.utime(path, (stamp, stamp))
    return path


def test_cleanup_old_cache_removes_leftovers_of_crashed_runs_only():
    now = models.utcnow()
    old_job = Job.create(id=str(uuid.uuid4()), name="ping", status="succeeded", finished_at=now - datetime.timedelta(hours=2))
    fresh_job = Job.create(id=str(uuid.uuid4()), name="ping", status="failed", finished_at=now)
    waiting_job = Job.create(id=str(uuid.uuid4()), name="ping", status="queued")
    gone = str(uuid.uuid4())  # pruned from the history long ago
    store = jobs.huey.storage
    for key in (f"r:{old_job.id}", old_job.id, f"r:{fresh_job.id}", f"r:{waiting_job.id}", f"r:{gone}", "litejobs.lock.x"):
        store.put_data(key, b"1")

    post, item = _post_aged(1, with_media=True)
    orphan_folder = settings.UPLOAD_DIR / Media.new_token()
    _aged_file(orphan_folder / "web.webp", hours=2)
    os.utime(orphan_folder, (time.time() - 7200, time.time() - 7200))
    old_tmp = _aged_file(settings.INCOMING_DIR / f".{Media.new_token()}.abc.tmp", hours=2)
    fresh_tmp = _aged_file(settings.INCOMING_DIR / f".{Media.new_token()}.abc.tmp", hours=0)
    old_partial = _aged_file(item.folder / ".web.webp.123.tmp", hours=2)
    stray_original = _aged_file(settings.INCOMING_DIR / Media.new_token(), hours=2)
    owned_original = _aged_file(item.original_path, hours=2)
    stray_pdf = _aged_file(settings.CERTIFICATE_DIR / "ZZZZ-ZZZZ-ZZZ2.pdf", hours=2)

    result = course_tasks.cleanup_old_cache.call_local()
    assert result["queue_store_entries"] == 3 and result["rate_limit_keys"] == 0
    left = {key.decode() if isinstance(key, bytes) else key for key in store.result_items()}
    assert left >= {f"r:{fresh_job.id}", f"r:{waiting_job.id}", "litejobs.lock.x"}
    assert not left & {f"r:{old_job.id}", old_job.id, f"r:{gone}"}
    assert result["leftover_files"] >= 5
    for path in (orphan_folder, old_tmp, old_partial, stray_original, stray_pdf):
        assert not path.exists(), path
    for path in (fresh_tmp, owned_original, item.folder / "web.webp"):
        assert path.exists(), path
    fresh_tmp.unlink()


def test_cleanup_old_cache_removes_past_rate_limit_windows_in_redis():
    service_or_skip("Redis", use_redis)
    client = jobs.huey.storage.conn
    window = int(time.time() // 60)
    prefix = settings.QUEUE_NAME  # this run's keys only
    client.set(f"{prefix}:ratelimit:key:7:{window - 5}", 3)  # its EXPIRE was lost
    client.set(f"{prefix}:ratelimit:ip:127.0.0.1:{window - 2}", 9)
    client.set(f"{prefix}:ratelimit:key:7:{window}", 1, ex=120)
    client.set(f"{prefix}:unrelated", 1)
    try:
        assert course_tasks.cleanup_old_cache.call_local()["rate_limit_keys"] == 2
        assert client.exists(f"{prefix}:ratelimit:key:7:{window}") and client.exists(f"{prefix}:unrelated")
        assert not client.exists(f"{prefix}:ratelimit:key:7:{window - 5}")
    finally:
        jobs.huey.flush()
        client.delete(f"{prefix}:unrelated", f"{prefix}:ratelimit:key:7:{window}")


def test_both_cleanups_are_scheduled(client):
    schedules = {s["name"]: s for s in client.get("/api/v1/schedules").json["schedules"]}
    assert schedules["cleanup_old_posts"]["cron"] == "0 1 * * 0"
    assert schedules["cleanup_old_cache"]["cron"] == "0 */6 * * *"
    functions = {f["name"]: f for f in client.get("/api/v1/functions").json["functions"]}
    assert functions["cleanup_old_posts"]["queue"] == "maintenance"
    assert functions["cleanup_old_cache"]["queue"] == "cleanup"
