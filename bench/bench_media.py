"""Media: thumbnails per second for 12 MP JPEGs with the media queue's
concurrency at 1 and 2, and the consumer's peak memory.

Photo-like 4000×3000 JPEGs (textured noise, shapes, an EXIF orientation) are
stored as uploads with their Media rows and `process_media_upload` jobs, then a
real `huey_consumer jobs.huey -w 4` runs with CONCURRENCY_LIMITS=media=N. Each
job writes three WebP renditions (web 1600, thumb 640, thumb 320). The rate is
images from the first job's start to the last one's finish (the job history);
peak memory is the consumer's VmHWM (peak resident set) from /proc.

    .venv/bin/python bench/media.py [--images 16] [--limits 1,2]
"""

import argparse
import os
import random
import shutil
import sys
import time
from pathlib import Path

import common

ROOT = common.ROOT
PEAK_TARGET_MB = 300


def make_photo(path, seed, size=(4000, 3000)):
    """A 12 MP JPEG that compresses like a photo (blurred texture, shapes), orientation 6."""
    from PIL import Image, ImageDraw, ImageFilter

    rnd = random.Random(seed)
    channels = []
    for _ in range(3):
        noise = Image.effect_noise((size[0] // 4, size[1] // 4), 60).resize(size, Image.Resampling.BILINEAR)
        channels.append(noise)
    image = Image.merge("RGB", channels).filter(ImageFilter.GaussianBlur(1.5))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y = rnd.randrange(size[0]), rnd.randrange(size[1])
        w, h = rnd.randrange(100, 1200), rnd.randrange(100, 900)
        colour = tuple(rnd.randrange(256) for _ in range(3))
        (draw.ellipse if rnd.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=colour)
    image = Image.blend(image, Image.effect_noise(size, 30).convert("RGB"), 0.15)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, "JPEG", quality=90, exif=exif.tobytes())
    return path


def prepare(data_dir, photos, n):
    """Rows and originals for `n` uploads, and their jobs queued; returns the job ids."""
    from apps.content import models as analytics
    import jobs
    import lj
    import models

    lj.use(f"sqlite:///{data_dir / 'litejobs.db'}", f"sqlite:///{data_dir / 'litejobs.db'}")
    user = models.User.create(email="bench@example.com", name="Bench")
    post = analytics.Post.create(author=user, body="benchmark #photos")
    ids = []
    for number in range(n):
        token = analytics.Media.new_token()
        # Where the consumer, started with DATA_DIR=data_dir, looks for the original.
        incoming = data_dir / "incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos[number % len(photos)], incoming / token)
        item = analytics.Media.create(post=post, token=token, filename=f"photo{number}.jpg")
        job = jobs.enqueue("process_media_upload", media_id=item.id)
        ids.append(job.id)
    return ids


def peak_rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_row(photos, limit, n, workers=4, timeout=600):
    from apps.content import models as analytics
    import lj

    data_dir = common.scratch(f"media-limit{limit}")
    ids = prepare(data_dir, photos, n)
    env = common.service_env(data_dir, CONCURRENCY_LIMITS=f"media={limit}")
    cmd = common.consumer_cmd("jobs.huey", workers, "thread")
    process = common.Process(cmd, env, data_dir / "consumer.log")
    try:
        common.wait_until(lambda: lj.terminal_count(ids) >= n, timeout, interval=0.1, message=f"{n} media jobs")
        peak = peak_rss_mb(process.pid)
    finally:
        process.stop()
    first, last, count = lj.span(ids)
    seconds = (last - first).total_seconds()
    ready = analytics.Media.select().where(analytics.Media.status == "ready").count()
    statuses = lj.statuses()
    lj.close()
    if ready != n:
        raise SystemExit(f"only {ready} of {n} images were processed: {statuses}; see {data_dir / 'consumer.log'}")
    return {
        "limit": limit,
        "images": count,
        "ready": ready,
        "seconds": round(seconds, 2),
        "images_per_s": round(count / seconds, 2),
        "thumbnails_per_s": round(3 * count / seconds, 2),
        "peak_rss_mb": round(peak, 1),
        "statuses": statuses,
        "command": f"CONCURRENCY_LIMITS=media={limit} " + common.shown(cmd),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="uploads per row (default 16)")
    parser.add_argument("--limits", default="1,2", help="media queue concurrency limits to run (default 1,2)")
    args = parser.parse_args(argv)
    # litejobs reads its settings at import: point them at the scratch folder first.
    os.environ["DATA_DIR"] = str(common.scratch("media-driver"))
    os.environ["LOG_LEVEL"] = "WARNING"
    try:
        source = common.scratch("media-photos")
        started = time.perf_counter()
        photos = [make_photo(source / f"photo{seed}.jpg", seed) for seed in range(4)]
        sizes = ", ".join(f"{p.stat().st_size / 1e6:.1f} MB" for p in photos)
        print(f"made {len(photos)} 12 MP JPEGs ({sizes}) in {time.perf_counter() - started:.1f} s", flush=True)
        print(f"command: .venv/bin/python bench/media.py --images {args.images} --limits {args.limits}")
        # Other work on the machine skews the rate: say how busy it was.
        print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
        rows = []
        for limit in (int(x) for x in args.limits.split(",")):
            row = run_row(photos, limit, args.images)
            rows.append(row)
            met = "met" if row["peak_rss_mb"] <= PEAK_TARGET_MB else "NOT met"
            print(
                f"media concurrency {limit}: {row['images']} images ({row['ready']} ready) in {row['seconds']} s = "
                f"{row['images_per_s']} images/s, {row['thumbnails_per_s']} renditions/s; "
                f"consumer peak RSS {row['peak_rss_mb']} MB (target <= {PEAK_TARGET_MB} MB: {met})",
                flush=True,
            )
            print(f"  consumer: {row['command']}", flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        return rows
    finally:
        common.cleanup()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
