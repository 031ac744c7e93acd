"""Image decoding with bounded memory (media.py): reduced decodes, a per-process
memory budget for decoded pixels, and media jobs capped across consumers."""

import time

import pytest
from PIL import Image

from apps.content import models as analytics
from apps.content import tasks as content_tasks
import jobs
import media
import models
import settings
from huey.exceptions import RetryTask


def png(path, size):
    Image.new("RGB", size, (200, 10, 10)).save(path, "PNG", optimize=True)
    return path


@pytest.fixture
def budget(monkeypatch):
    def use(mib):
        monkeypatch.setattr(media, "decode_memory", media.MemoryBudget(mib * 2**20))
        return media.decode_memory

    return use


def test_an_image_bigger_than_the_memory_budget_is_refused_before_decoding(tmp_path, budget):
    budget(32)
    source = png(tmp_path / "wide.png", (4000, 4000))  # a small file: 64 MB once decoded
    start = time.monotonic()
    with pytest.raises(media.ImageRejected, match="MEDIA_MEMORY_MB"):
        media.make_renditions(source, tmp_path / "out")
    assert time.monotonic() - start < 1.0
    assert not (tmp_path / "out").exists()


def test_decodes_that_do_not_fit_together_wait_their_turn(tmp_path, budget):
    memory = budget(100)
    source = png(tmp_path / "a.png", (4000, 4000))  # 64 MB decoded
    with memory.hold(60 * 2**20):  # another decode running in this process
        with pytest.raises(media.MemoryBusy):
            media.make_renditions(source, tmp_path / "out")
    assert memory.used == 0
    assert media.make_renditions(source, tmp_path / "out")["renditions"]["web"] == [1600, 1600]
    assert memory.used == 0  # released after the decode


def test_a_busy_media_job_retries_instead_of_failing(tmp_path, budget):
    memory = budget(100)
    author = models.User.create(email="m@example.com")
    post = analytics.Post.publish(author.id, "hello")
    item = analytics.Media.create(post=post, token=analytics.Media.new_token(), filename="a.png", size_bytes=1)
    item.original_path.parent.mkdir(parents=True, exist_ok=True)
    png(item.original_path, (4000, 4000))
    with memory.hold(60 * 2**20):
        with pytest.raises(RetryTask):
            content_tasks.process_media_upload.call_local(item.id)
    assert analytics.Media.get_by_id(item.id).status == "processing" and item.original_path.exists()


def test_media_jobs_run_two_at_a_time_by_default():
    assert ("function:process_media_upload", 2) in jobs.FUNCTIONS["process_media_upload"].limits


def test_reduced_decodes_keep_sizes_and_orientation(tmp_path):
    photo = Image.new("RGB", (7000, 4000), (10, 200, 10))
    exif = photo.getexif()
    exif[0x0112] = 6  # rotated: the upright image is 4000 × 7000
    photo.save(tmp_path / "big.jpg", quality=80, exif=exif)
    info = media.make_renditions(tmp_path / "big.jpg", tmp_path / "jpg")
    assert (info["width"], info["height"]) == (4000, 7000)
    assert info["renditions"] == {"web": [914, 1600], "thumb_640": [366, 640], "thumb_320": [183, 320]}
    info = media.make_renditions(png(tmp_path / "wide.png", (6500, 1300)), tmp_path / "png")
    assert info["renditions"]["web"] == [1600, 320]
    with Image.open(tmp_path / "png" / "web.webp") as web:
        assert web.size == (1600, 320)


def test_the_budget_follows_the_setting():
    assert media.decode_memory.total == settings.MEDIA_MEMORY_MB * 2**20
    assert media.decoded_bytes((7000, 7000)) <= settings.MEDIA_MEMORY_MB * 2**20  # the reported 7000 × 7000 PNG fits one at a time
