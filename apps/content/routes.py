"""content's API: posts, their media uploads and renditions, analytics."""


from bottle import Bottle, MultipartError, request, static_file

import guard
import jobs
import media
import settings
from api import (
    ApiError,
    allow_large_body,
    json_response,
    no_unknown_fields,
    query_number,
    read_json,
    ref_field,
    router,
    row_or_404,
    text_field,
)
from models import User
from apps.content import models as analytics

routes = Bottle()
api = router(routes)


# Room for the multipart boundaries and part headers around the file itself.
UPLOAD_OVERHEAD = 64 * 1024
# Only this route takes a body over MAX_BODY_BYTES (api.body_limit checks it before any handler).
allow_large_body(r"/api/v1/posts/[^/]+/media", lambda: settings.UPLOAD_MAX_MB * 1024 * 1024 + UPLOAD_OVERHEAD)


@api("/api/v1/posts/<post_id>/media", "POST")
def upload_media(post_id):
    """Upload an image to a post (multipart, field `file`); its renditions are made in the background."""
    post = row_or_404(analytics.Post, post_id, "post")
    limit = settings.UPLOAD_MAX_MB * 1024 * 1024
    too_large = f"the upload limit is {settings.UPLOAD_MAX_MB} MiB (UPLOAD_MAX_MB)"
    # Refused before reading a byte; a body just over the limit is read and measured below.
    if request.content_length > limit + UPLOAD_OVERHEAD:
        raise ApiError(413, "too_large", f"body is {request.content_length} bytes; {too_large}")
    upload = _uploaded_file()
    head = upload.file.read(16)
    upload.file.seek(0)
    if media.sniff_format(head) is None:
        name = upload.raw_filename or "the file"
        raise ApiError(422, "invalid_argument", f"file: {name!r} is not a JPEG, PNG, WebP or GIF image", "file")
    token = analytics.Media.new_token()
    original = settings.INCOMING_DIR / token
    try:
        size = media.store_upload(upload.file, original, limit)
    except media.UploadTooLarge:
        raise ApiError(413, "too_large", f"file is over {settings.UPLOAD_MAX_MB} MiB; {too_large}") from None
    try:
        item = analytics.Media.create(post=post, token=token, filename=guard.strip_control(upload.raw_filename or "")[:200], size_bytes=size)
        try:
            job = jobs.enqueue("process_media_upload", media_id=item.id)
        except jobs.Unavailable:
            item.delete_instance()
            raise
    except BaseException:
        original.unlink(missing_ok=True)  # nothing half-written stays: no row, no file
        raise
    item.set_job(job.id)
    return json_response(202, item.accepted_dict(), {"Location": f"/api/v1/media/{item.id}"})


def _uploaded_file():
    """The multipart field `file` as a bottle FileUpload, or 422 naming the field."""
    if not request.content_type.lower().startswith("multipart/form-data"):
        raise ApiError(422, "invalid_argument", "file: send the image as multipart/form-data in a field named file", "file")
    try:
        upload = request.files.get("file")
    except (MultipartError, ValueError) as exc:  # bottle's own is an HTML 400; a control character in a part header is a ValueError
        detail = getattr(exc, "body", None) or str(exc)
        raise ApiError(422, "invalid_argument", f"file: the multipart body is malformed ({str(detail)[:100]})", "file") from None
    if upload is None:
        raise ApiError(422, "invalid_argument", "file: missing; send the image in a multipart field named file", "file")
    return upload


@api("/api/v1/posts/<post_id>")
def show_post(post_id):
    """A post with its counts and its media."""
    post = row_or_404(analytics.Post, post_id, "post")
    return {**post.to_dict(), "media": [item.to_dict() for item in analytics.Media.of_post(post.id)]}


@api("/api/v1/media/<media_id>")
def show_media(media_id):
    """An upload: processing, ready with its rendition URLs, or rejected with the reason."""
    return row_or_404(analytics.Media, media_id, "media").to_dict()


@routes.route("/uploads/<token:re:[A-Za-z0-9_-]{16,64}>/<name:re:(web|thumb_640|thumb_320)\\.webp>")
def upload_file(token, name):
    """A WebP rendition; its folder name is random and its content never changes."""
    reply = static_file(f"{token}/{name}", root=str(settings.UPLOAD_DIR), mimetype="image/webp")
    if reply.status_code in (200, 206, 304):
        reply.set_header("Cache-Control", "public, max-age=31536000, immutable")
        reply.set_header("X-Content-Type-Options", "nosniff")
    return reply




@api("/api/v1/posts", "POST")
def create_post():
    """Publish a post; its #hashtags count towards trending."""
    body = read_json()
    no_unknown_fields(body, ("author_id", "body"))
    author = ref_field(body, "author_id", User, "user")
    post = analytics.Post.publish(author.id, text_field(body.get("body"), "body", 10000, multiline=True))
    return json_response(201, post.to_dict())


@api("/api/v1/analytics/trending")
def trending_hashtags():
    """The top hashtags of the last 24 hours, as the last run of update_trending_hashtags counted them."""
    snapshot = analytics.TrendingSnapshot.latest()
    if snapshot is None:
        return {"computed_at": None, "window_hours": 24, "hashtags": []}
    return snapshot.to_dict()


@api("/api/v1/analytics/daily")
def daily_analytics():
    """The daily rows of generate_content_analytics for the last `days` (1-366, default 30), oldest first."""
    days = query_number("days", 1, 366, int, default=30)
    return {"days": [row.to_dict() for row in analytics.DailyAnalytics.recent(days)]}
