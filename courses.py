"""litejobs courses: courses and their certificates, media processing, and cache cleanup.

Courses with their lessons, and enrollments whose progress a job recalculates;
the run that first sees 100% queues the certificate, a PDF mailed once. Also
the job that checks an uploaded image and makes its renditions (the Media
table lives with the posts, in analytics.py), and cleanup_old_cache, which
removes what crashed runs left behind.
"""

import datetime
import logging
import re
import secrets
import time

from huey.exceptions import RetryTask
from huey.storage import RedisStorage
from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, IntegrityError, fn

import analytics
import limits
import mailer
import media
import settings
from jobs import CLEANUP_BATCH, MAIL_RETRY, PERIODIC_RETRY, enqueue, fail_now, huey, submit, task
from models import BaseModel, Job, User, db, isoformat, utcnow, values_in

logger = logging.getLogger("litejobs.courses")


# -- Courses ----------------------------------------------------------------------
class Course(BaseModel):
    """A course: a title and its lessons in order."""

    title = CharField()
    created_at = DateTimeField(default=utcnow)

    @classmethod
    def create_with_lessons(cls, title, lesson_titles):
        with db.atomic():
            course = cls.create(title=title)
            rows = [{"course": course.id, "title": t, "position": n} for n, t in enumerate(lesson_titles)]
            Lesson.insert_many(rows).execute()
        return course

    def ordered_lessons(self):
        return self.lessons.order_by(Lesson.position)

    def to_dict(self):
        return {
            "id": str(self.id),
            "title": self.title,
            "lessons": [lesson.to_dict() for lesson in self.ordered_lessons()],
            "created_at": isoformat(self.created_at),
        }


class Lesson(BaseModel):
    course = ForeignKeyField(Course, backref="lessons", on_delete="CASCADE")
    title = CharField()
    position = IntegerField()

    class Meta:
        indexes = ((("course", "position"), True),)

    def to_dict(self):
        return {"id": str(self.id), "title": self.title}


class Enrollment(BaseModel):
    """A user taking a course; `progress` is the share of its lessons done, 0–100."""

    user = ForeignKeyField(User, backref="enrollments", on_delete="CASCADE")
    course = ForeignKeyField(Course, backref="enrollments", on_delete="CASCADE")
    progress = IntegerField(default=0)
    created_at = DateTimeField(default=utcnow)
    completed_at = DateTimeField(null=True)  # set once, when progress first reached 100

    class Meta:
        indexes = ((("user", "course"), True),)

    def complete_lesson(self, lesson):
        """Record `lesson` as done; doing it again changes nothing."""
        LessonCompletion.insert(enrollment=self.id, lesson=lesson.id).on_conflict_ignore().execute()

    def recalculate(self):
        """Store the progress computed from the completions; returns it.

        One UPDATE with the counts as subqueries, so two runs racing each
        other can never store a count older than the other's.
        """
        done = (
            LessonCompletion.select(fn.COUNT(LessonCompletion.id))
            .join(Lesson)
            .where((LessonCompletion.enrollment == self.id) & (Lesson.course == self.course_id))
        )
        total = Lesson.select(fn.COUNT(Lesson.id)).where(Lesson.course == self.course_id)
        # Integer division on SQLite and PostgreSQL alike: 100 only when every lesson is done.
        percent = fn.COALESCE(fn.COALESCE(done, 0) * 100 / fn.NULLIF(total, 0), 0)
        Enrollment.update(progress=percent).where(Enrollment.id == self.id).execute()
        self.progress = Enrollment.select(Enrollment.progress).where(Enrollment.id == self.id).scalar()
        return self.progress

    def mark_completed(self):
        """True for exactly one caller: the first to see this enrollment at 100%."""
        claim = (Enrollment.id == self.id) & Enrollment.completed_at.is_null() & (Enrollment.progress >= 100)
        return Enrollment.update(completed_at=utcnow()).where(claim).execute() == 1

    def unmark_completed(self):
        Enrollment.update(completed_at=None).where(Enrollment.id == self.id).execute()

    @property
    def certificate(self):
        return Certificate.get_or_none(Certificate.enrollment == self.id)

    def completed_lesson_ids(self):
        query = LessonCompletion.select(LessonCompletion.lesson).where(LessonCompletion.enrollment == self.id)
        return sorted(str(row.lesson_id) for row in query)

    def to_dict(self):
        certificate = self.certificate
        return {
            "id": str(self.id),
            "user_id": str(self.user_id),
            "course_id": str(self.course_id),
            "progress": self.progress,
            "completed_lessons": self.completed_lesson_ids(),
            "certificate": {"code": certificate.code, "url": certificate.url} if certificate else None,
            "created_at": isoformat(self.created_at),
            "completed_at": isoformat(self.completed_at),
        }


class LessonCompletion(BaseModel):
    enrollment = ForeignKeyField(Enrollment, backref="completions", on_delete="CASCADE")
    lesson = ForeignKeyField(Lesson, on_delete="CASCADE")
    completed_at = DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("enrollment", "lesson"), True),)


class Certificate(BaseModel):
    """Proof that an enrollment was completed; one per enrollment, ever (a unique column)."""

    enrollment = ForeignKeyField(Enrollment, unique=True, backref="certificates", on_delete="CASCADE")
    code = CharField(unique=True)
    name = CharField()  # the learner's name as printed
    course_title = CharField()
    issued_at = DateTimeField(default=utcnow)

    # No 0/O or 1/I/L: codes are read off paper and typed in.
    CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"

    @classmethod
    def new_code(cls):
        raw = "".join(secrets.choice(cls.CODE_ALPHABET) for _ in range(12))
        return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"

    @classmethod
    def draft(cls, enrollment):
        """An unsaved certificate for `enrollment`, with a fresh code; save it with save_once()."""
        user = enrollment.user
        return cls(
            enrollment=enrollment.id,
            code=cls.new_code(),
            name=user.name or user.email.split("@")[0],
            course_title=enrollment.course.title,
            issued_at=utcnow(),
        )

    def save_once(self):
        """Insert this draft unless its enrollment has a certificate; returns (the one kept, created)."""
        try:
            with db.atomic():
                self.save(force_insert=True)
            return self, True
        except IntegrityError:
            existing = Certificate.get_or_none(Certificate.enrollment == self.enrollment_id)
            if existing is None:
                raise  # the code clashed (about 1 in 10^17): the job's retry draws another
            return existing, False

    @classmethod
    def by_code(cls, code):
        return cls.get_or_none(cls.code == code.strip().upper())

    @property
    def filename(self):
        return f"{self.code}.pdf"

    @property
    def path(self):
        return settings.CERTIFICATE_DIR / self.filename

    @property
    def url(self):
        return f"/certificates-static/{self.filename}"

    def to_dict(self):
        return {
            "valid": True,
            "code": self.code,
            "name": self.name,
            "course": self.course_title,
            "issued_at": isoformat(self.issued_at),
            "url": self.url,
            "enrollment_id": str(self.enrollment_id),
        }


# -- Media and course jobs ----------------------------------------------------------
def _off_the_loop(function, *args):
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


# limit: two decodes at once across all consumers by default (each may hold
# MEDIA_MEMORY_MB); CONCURRENCY_LIMITS=process_media_upload=N changes it.
@task(queue="media", retries=2, retry_delay=10, limit=2)
def process_media_upload(media_id: int):
    """Check an uploaded image and write its WebP renditions: web 1600 px, thumbnails 640 and 320 px.

    A file that is not a whole JPEG, PNG, WebP or GIF, or is over
    IMAGE_MAX_PIXELS, marks the media rejected and fails the job at once.
    """
    item = analytics.Media.get_or_none(analytics.Media.id == media_id)
    if item is None:
        return None  # its post was deleted since
    if item.status == "processing":
        try:
            info = _off_the_loop(media.make_renditions, item.original_path, item.folder)
        except media.ImageRejected as exc:
            _reject_media(item, str(exc))
        except media.MemoryBusy as exc:  # other decodes hold the memory: wait for them, not a failure
            raise RetryTask(f"{exc}; trying again in 2 s", delay=2) from None
        except FileNotFoundError:
            if item.original_path.exists():
                raise
            _reject_media(item, "the uploaded file was lost before it was processed; upload it again")
        else:
            item.mark_ready(info["width"], info["height"], info["renditions"])
            logger.info("media %s: %s %sx%s ready", item.id, info["format"], info["width"], info["height"])
        item.original_path.unlink(missing_ok=True)  # with its EXIF and GPS: only the renditions stay
        item = analytics.Media.get_by_id(item.id)
    if item.status == "rejected":
        fail_now(f"media {media_id} rejected: {item.error}")
    return {"media_id": str(item.id), "status": item.status, "width": item.width, "height": item.height}


def _reject_media(item, error):
    # A concurrent run may have finished it meanwhile: then its outcome stands.
    if item.reject(error):
        media.remove_tree(item.folder)
        item.original_path.unlink(missing_ok=True)
        logger.info("media %s rejected: %s", item.id, error)


@task(queue="progress", retries=3, retry_delay=5)
def recalculate_course_progress(enrollment_id: int):
    """Store an enrollment's progress; the run that first sees 100% enqueues its certificate."""
    enrollment = Enrollment.get_or_none(Enrollment.id == enrollment_id)
    if enrollment is None:
        return None  # the enrollment was deleted since
    percent = enrollment.recalculate()
    if percent >= 100 and enrollment.mark_completed():
        try:
            enqueue("generate_certificate", enrollment_id=enrollment.id)
        except Exception:
            enrollment.unmark_completed()  # so that the retry of this job enqueues it
            raise
    return {"enrollment_id": str(enrollment.id), "progress": percent}


@task(queue="certificates", retries=3, retry_delay=30)
def generate_certificate(enrollment_id: int):
    """Issue an enrollment's certificate (one, ever), write its PDF and mail the learner the link."""
    enrollment = Enrollment.get_or_none(Enrollment.id == enrollment_id)
    if enrollment is None:
        return None
    if enrollment.progress < 100:
        fail_now(f"enrollment {enrollment_id} is at {enrollment.progress}%; a certificate needs 100%")
    certificate, created = Certificate.get_or_none(Certificate.enrollment == enrollment.id), False
    if certificate is None:
        # The PDF first, then the row: a certificate that can be seen can be downloaded.
        draft = Certificate.draft(enrollment)
        _render_certificate(draft)
        certificate, created = draft.save_once()  # the unique enrollment column keeps one, ever
        if not created:
            draft.path.unlink(missing_ok=True)  # another run won the race
        else:
            logger.info("certificate %s issued for enrollment %s", certificate.code, enrollment_id)
    elif not certificate.path.exists():
        _render_certificate(certificate)
    # The key makes a second run find the first run's mail job instead of queueing another.
    mail, _ = submit(
        "send_certificate_email",
        {"certificate_id": certificate.id},
        idempotency_key=f"certificate:{certificate.id}",
        checked=True,
    )
    return {"code": certificate.code, "url": certificate.url, "created": created, "mail_job_id": mail.id}


def _render_certificate(certificate):
    try:
        _off_the_loop(
            media.render_certificate,
            certificate.path,
            certificate.name,
            certificate.course_title,
            certificate.issued_at,
            certificate.code,
        )
    except media.CertificateError as exc:
        fail_now(str(exc))


@task(queue="emails", **MAIL_RETRY)
def send_certificate_email(certificate_id: int):
    """Mail the learner the link to their certificate (once, however often it runs)."""
    certificate = Certificate.get_or_none(Certificate.id == certificate_id)
    if certificate is None:
        return None
    user = certificate.enrollment.user
    sent = mailer.send_mail_once(
        user,
        "certificate",
        str(certificate.id),
        "certificate",
        message_id=mailer.message_id(f"certificate.{certificate.code}"),
        certificate=certificate,
        url=f"{settings.BASE_URL}{certificate.url}",
    )
    return {"certificate": certificate.code, "sent": sent}


# -- Cleanup ------------------------------------------------------------------------
LEFTOVER_AGE = datetime.timedelta(hours=1)  # older temporaries and orphans are a crashed run's
_JOB_KEY = re.compile(r"(?:r:)?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


@task(queue="cleanup", public=True, **PERIODIC_RETRY)
def cleanup_old_cache():
    """Delete expired rate-limit keys, stale entries in the queue's key-value store and files left by crashed runs."""
    now = utcnow()
    return {
        "rate_limit_keys": _purge_rate_limit_keys(time.time()),
        "queue_store_entries": _purge_queue_store(now),
        "leftover_files": _purge_leftover_files(now),
    }


def _purge_rate_limit_keys(now):
    """Rate-limit counters of past windows (limits.RedisCounter) in the queue's Redis.

    Each is set to expire, but an EXPIRE lost with a crashed web process leaves
    its key for ever. Without Redis the counters live in memory: nothing to do.
    """
    if not isinstance(huey.storage, RedisStorage):
        return 0
    client = huey.storage.conn
    current = int(now // limits.WINDOW)
    stale = []
    for name in client.scan_iter(match="litejobs:ratelimit:*", count=1000):
        window = name.rsplit(b":", 1)[-1]
        if not window.isdigit() or int(window) < current - 1:
            stale.append(name)
    for start in range(0, len(stale), CLEANUP_BATCH):
        client.delete(*stale[start : start + CLEANUP_BATCH])
    return len(stale)


def _purge_queue_store(now):
    """huey's results and revoke flags of jobs finished over LEFTOVER_AGE ago or gone from the history.

    litejobs keeps results in the Job table, so such entries are what crashed
    or canceled runs left behind. Keys that are not a job's (locks) stay.
    """
    keys = {}
    for key in huey.storage.result_items():
        text = key.decode() if isinstance(key, bytes) else key
        match = _JOB_KEY.fullmatch(text)
        if match:
            keys.setdefault(match[1], []).append(text)
    removed = 0
    ids = list(keys)
    for start in range(0, len(ids), CLEANUP_BATCH):
        chunk = ids[start : start + CLEANUP_BATCH]
        live = {
            job.id
            for job in Job.select(Job.id, Job.status, Job.finished_at).where(Job.id.in_(chunk))
            if not (job.is_terminal and job.finished_at and job.finished_at < now - LEFTOVER_AGE)
        }
        for job_id in chunk:
            if job_id not in live:
                for key in keys[job_id]:
                    removed += bool(huey.storage.delete_data(key))
    return removed


def _purge_leftover_files(now):
    """Temporary files, originals and rendition folders or PDFs that no row owns, older than LEFTOVER_AGE."""
    cutoff = (now - LEFTOVER_AGE).replace(tzinfo=datetime.timezone.utc).timestamp()

    def old(path):
        try:
            return path.stat().st_mtime < cutoff
        except FileNotFoundError:
            return False

    removed = 0
    for folder in (settings.INCOMING_DIR, settings.CERTIFICATE_DIR, *_children(settings.UPLOAD_DIR)):
        for path in folder.glob(".*.tmp") if folder.is_dir() else ():
            if old(path):
                path.unlink(missing_ok=True)
                removed += 1
    owned = values_in(analytics.Media.token, [p.name for p in _children(settings.UPLOAD_DIR) + _children(settings.INCOMING_DIR)])
    for path in _children(settings.UPLOAD_DIR) + _children(settings.INCOMING_DIR):
        if path.name not in owned and not path.name.startswith(".") and old(path):
            if path.is_dir():
                media.remove_tree(path)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    pdfs = [p for p in _children(settings.CERTIFICATE_DIR) if p.suffix == ".pdf"]
    issued = values_in(Certificate.code, [p.stem for p in pdfs])
    for path in pdfs:
        if path.stem not in issued and old(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def _children(folder):
    return sorted(folder.iterdir()) if folder.is_dir() else []
