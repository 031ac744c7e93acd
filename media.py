"""litejobs media: image renditions for uploads and certificate PDFs.

Plain file work with Pillow and fpdf2, called by the tasks in jobs.py and the
upload route in web.py. Every file is written under a temporary name and
renamed into place, so a reader never sees half a file and a failure leaves
nothing behind.
"""

import datetime
import functools
import logging
import os
import contextlib
import shutil
import threading
import uuid
import warnings
from pathlib import Path

import guard
import settings

logger = logging.getLogger("litejobs.media")

# name -> longest side in pixels, largest first: each one is resized from the one before.
RENDITIONS = (("web", 1600), ("thumb_640", 640), ("thumb_320", 320))
FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
WEBP_OPTIONS = {"quality": 80, "method": 4}


@functools.cache
def _pillow():
    """Pillow's Image module, imported at the first image: every web process and
    consumer imports this module, and most never decode one (Pillow is ~3 MB each)."""
    from PIL import Image

    # Pillow's own guard, at our limit: a bomb is refused from its header, before
    # any decoding. Its warning (between 1× and 2× the limit) is made an error too.
    Image.MAX_IMAGE_PIXELS = settings.IMAGE_MAX_PIXELS
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    return Image


class ImageRejected(ValueError):
    """The upload is not an image we accept; the message says why, for the user."""


class UploadTooLarge(ValueError):
    """The upload is over UPLOAD_MAX_MB."""


# -- Uploads -------------------------------------------------------------------
def sniff_format(head):
    """The image format that the first bytes of a file announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def store_upload(stream, dest, limit):
    """Copy `stream` to file `dest` (via a temporary name); returns its size in bytes.

    Raises UploadTooLarge past `limit` bytes, leaving no file behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    size = 0
    try:
        with open(tmp, "wb") as out:
            while chunk := stream.read(1024 * 1024):
                size += len(chunk)
                if size > limit:
                    raise UploadTooLarge(f"file is over the limit of {limit // (1024 * 1024)} MiB (UPLOAD_MAX_MB)")
                out.write(chunk)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return size


# -- Renditions ------------------------------------------------------------------
def fit(size, longest):
    """`size` scaled to have its longest side `longest`, aspect ratio kept; never enlarged."""
    width, height = size
    scale = min(longest / max(width, height), 1.0)
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_renditions(src, dest_dir):
    """Write the WebP renditions of image file `src` into folder `dest_dir`.

    Checks that it is a whole JPEG, PNG, WebP or GIF within IMAGE_MAX_PIXELS,
    turns it upright by its EXIF orientation and writes it without any
    metadata but its colour profile (no EXIF, so no GPS, leaves the server).
    An animated GIF or WebP gives its first frame. Returns
    {"format", "width", "height", "renditions": {name: [width, height]}}, the
    size being the upright original's. Raises ImageRejected for a file that
    is not such an image; nothing stays in `dest_dir` then.
    """
    Image = _pillow()
    src, dest_dir = Path(src), Path(dest_dir)
    with _reading(), open(src, "rb") as fp:
        with Image.open(fp, formats=FORMATS) as image:
            _check_pixels(image.size)
            image.verify()  # checks PNG chunk checksums: a cheap look before decoding
    with _reading(), open(src, "rb") as fp:
        # Opened from our own file object, the decoded pixels outlive the file.
        image = Image.open(fp, formats=FORMATS)
        kind, (width, height) = image.format, image.size
        if kind == "JPEG":
            # Decode at 1/2, 1/4 or 1/8 scale when that still covers the largest
            # rendition: a fraction of the time and memory of a full decode.
            image.draft("RGB", fit(image.size, RENDITIONS[0][1]))
        with decode_memory.hold(decoded_bytes(image.size)):
            image.load()
            orientation = image.getexif().get(0x0112)
            if orientation in (5, 6, 7, 8):  # orientations that swap the sides
                width, height = height, width
            icc_profile = image.info.get("icc_profile")
            current = _flatten_mode(_reduced(image))
            del image
            if orientation in _TRANSPOSE:
                current = current.transpose(Image.Transpose[_TRANSPOSE[orientation]])
    current.info = {}  # no EXIF, XMP or comments travel on
    written, sizes = [], {}
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        for name, longest in RENDITIONS:
            size = fit((width, height), longest)
            if size != current.size:
                current = current.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            path = dest_dir / f"{name}.webp"
            _save_webp(current, path, icc_profile)
            written.append(path)
            sizes[name] = list(current.size)
    except BaseException:
        _remove(written, dest_dir)
        raise
    return {"format": kind, "width": width, "height": height, "renditions": sizes}


# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


def decoded_bytes(size):
    """Memory a decode of `size` pixels may take: 4 bytes a pixel (RGBA), whatever the format stores."""
    return size[0] * size[1] * 4


def _reduced(image):
    """`image` shrunk by a whole factor (Pillow's fast box reduce) to at most twice the
    largest rendition, so every copy made after it (mode, orientation, resizes) is small."""
    factor = max(image.size) // (2 * RENDITIONS[0][1])
    if factor < 2:
        return image
    try:
        return image.reduce(factor)
    except ValueError:  # a mode reduce does not take (palette): flatten first
        return _flatten_mode(image).reduce(factor)


class MemoryBusy(RuntimeError):
    """Other decodes hold too much of MEDIA_MEMORY_MB right now: try again shortly."""


class MemoryBudget:
    """Bytes of decoded pixels this process's media jobs may hold at once.

    Formats other than JPEG cannot be decoded at a smaller scale, so a small
    file of many pixels takes their full size in memory. An image bigger than
    the whole budget is refused; one that does not fit in what other decodes
    leave raises MemoryBusy, and its job tries again a little later. (No
    waiting here: decodes run on gevent's thread pool, where a blocking
    condition would be shared between native threads and greenlets.)
    """

    def __init__(self, total):
        self.total, self.used = total, 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, amount):
        if amount > self.total:
            raise ImageRejected(
                f"image needs about {amount // 2**20} MiB to decode; the limit is {self.total // 2**20} MiB "
                "(MEDIA_MEMORY_MB): make it smaller, or save it as JPEG"
            )
        with self._lock:
            if self.used + amount > self.total:
                raise MemoryBusy(f"{self.used // 2**20} of {self.total // 2**20} MiB held by other decodes")
            self.used += amount
        try:
            yield
        finally:
            with self._lock:
                self.used -= amount


decode_memory = MemoryBudget(settings.MEDIA_MEMORY_MB * 2**20)


class _reading:
    """Turn Pillow's many ways of saying "bad file" into one ImageRejected."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, ImageRejected):
            return False
        from PIL import Image, UnidentifiedImageError  # imported already: the error came from it

        if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise ImageRejected(
                f"image has more pixels than the limit of {settings.IMAGE_MAX_PIXELS} (IMAGE_MAX_PIXELS); "
                "it may be a decompression bomb"
            ) from None
        if isinstance(exc, UnidentifiedImageError):
            raise ImageRejected("not a JPEG, PNG, WebP or GIF image") from None
        if isinstance(exc, FileNotFoundError):
            return False  # the original is gone: not the user's fault, let the caller decide
        if isinstance(exc, (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)):
            # Pillow reports damaged data with all of these; "image file is truncated" is an OSError.
            raise ImageRejected(f"damaged or truncated image: {exc}") from None
        if isinstance(exc, MemoryError):
            raise ImageRejected("image needs more memory to decode than this server has") from None
        return False


def _check_pixels(size):
    width, height = size
    if width * height > settings.IMAGE_MAX_PIXELS:
        raise ImageRejected(
            f"image is {width}×{height} = {width * height} pixels; the limit is "
            f"{settings.IMAGE_MAX_PIXELS} (IMAGE_MAX_PIXELS)"
        )


def _flatten_mode(image):
    """RGB, or RGBA when the image has any transparency: the modes WebP stores."""
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    mode = "RGBA" if transparent else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _save_webp(image, path, icc_profile=None):
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        options = dict(WEBP_OPTIONS)
        if icc_profile:
            options["icc_profile"] = icc_profile
        image.save(tmp, "WEBP", **options)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove(paths, folder):
    for path in paths:
        path.unlink(missing_ok=True)
    try:
        folder.rmdir()  # only when empty: never another run's files
    except OSError:
        pass


def remove_tree(folder):
    """Remove a rendition folder and everything in it; a missing one is fine."""
    shutil.rmtree(folder, ignore_errors=True)


# -- Certificates ------------------------------------------------------------------
# Unicode TrueType fonts with Latin, Greek, Cyrillic, Hebrew and Arabic glyphs,
# looked for in this order when CERTIFICATE_FONT is empty.
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Debian/Ubuntu: fonts-dejavu-core
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",  # Fedora
    "/usr/share/fonts/TTF/DejaVuSans.ttf",  # Arch
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/local/share/fonts/dejavu/DejaVuSans.ttf",  # FreeBSD
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",  # Debian: fonts-freefont-ttf
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",  # macOS
    "/Library/Fonts/Arial Unicode.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:/Windows/Fonts/arial.ttf",  # Windows
)
# Tried glyph by glyph for characters the main font lacks (CJK names, for one).
FALLBACK_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",  # Debian: fonts-droid-fallback
    "/usr/share/fonts/truetype/noto/NotoSansArabic-Regular.ttf",  # Debian: fonts-noto-core
    "C:/Windows/Fonts/msyh.ttc",
)


class CertificateError(RuntimeError):
    """A certificate cannot be made here (no usable font); the message names the fix."""


def find_font():
    """The certificate font's path: CERTIFICATE_FONT, or the first known system font present."""
    if settings.CERTIFICATE_FONT:
        path = Path(settings.CERTIFICATE_FONT)
        if not path.is_file():
            raise CertificateError(f"CERTIFICATE_FONT: no such font file {str(path)!r}; give the path of a .ttf file")
        return path
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise CertificateError(
        "no Unicode TrueType font found for certificates; set CERTIFICATE_FONT to a .ttf file, or install one "
        "(Debian/Ubuntu: apt-get install fonts-dejavu-core). Looked for: " + ", ".join(FONT_CANDIDATES)
    )


def render_certificate(path, name, course, issued_at, code):
    """Write a one-page certificate PDF to `path` (via a temporary name).

    `name` may be in any script the font covers; Arabic and Persian are
    shaped and set right to left (fpdf2's text shaping, with uharfbuzz).
    """
    from fpdf import FPDF  # only the certificate worker pays for importing it

    name, course = guard.strip_control(name), guard.strip_control(course)  # rows from before the API refused them
    font = find_font()
    pdf = FPDF(orientation="L", unit="mm", format="A4")
    pdf.set_title(f"Certificate: {course}")
    pdf.set_author("litejobs")
    pdf.set_creation_date(datetime.datetime.combine(issued_at.date(), datetime.time(), datetime.timezone.utc))
    pdf.set_auto_page_break(False)
    pdf.add_page()
    pdf.add_font("main", "", str(font))
    fallbacks = []
    for number, candidate in enumerate(FALLBACK_FONTS):
        if Path(candidate).is_file() and Path(candidate) != font and candidate.endswith(".ttf"):
            pdf.add_font(f"fallback{number}", "", candidate)
            fallbacks.append(f"fallback{number}")
    if fallbacks:
        pdf.set_fallback_fonts(fallbacks)
    pdf.set_text_shaping(True)

    width = pdf.w - 60
    pdf.set_draw_color(40, 70, 120)
    pdf.set_line_width(1.2)
    pdf.rect(12, 12, pdf.w - 24, pdf.h - 24)
    pdf.set_line_width(0.3)
    pdf.rect(16, 16, pdf.w - 32, pdf.h - 32)

    def line(text, size, y, color=(30, 30, 30)):
        pdf.set_text_color(*color)
        pdf.set_font("main", size=_fitting_size(pdf, text, width, size))
        pdf.set_xy(30, y)
        pdf.cell(width, size * 0.5, text, align="C")

    line("Certificate of completion", 30, 38, (40, 70, 120))
    line("This certifies that", 14, 62)
    line(name, 34, 76)
    line("has completed the course", 14, 102)
    line(course, 24, 116)
    line(f"Issued {issued_at:%d %B %Y}", 12, 150)
    line(f"Verification code: {code}", 12, 160, (80, 80, 80))

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pdf.output(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _fitting_size(pdf, text, width, size, smallest=10):
    """The largest font size up to `size` at which `text` fits on one line of `width`."""
    pdf.set_font("main", size=size)
    while size > smallest and pdf.get_string_width(text) > width:
        size -= 1
        pdf.set_font("main", size=size)
    return size


def off_the_loop(function, *args):
    """Run CPU-heavy `function` in a real thread when gevent made this worker a greenlet.

    Inside `web.py run` the consumer's workers are greenlets: a second of
    Pillow or fpdf2 work would stall every request. Pillow releases the GIL,
    so a real thread also lets two images be worked on at once.
    """
    from gevent import monkey

    if monkey.is_module_patched("threading"):
        import gevent

        return gevent.get_hub().threadpool.apply(function, args)
    return function(*args)
