"""courses' jobs: progress, certificates and their mail, cache cleanup."""

import datetime
import logging
import re
import time

from huey.storage import RedisStorage

import limits
import mailer
import media
import settings
from apps.content.models import Media  # uploads' leftovers: courses builds on content
from apps.courses.models import Certificate, Enrollment
from jobs import CLEANUP_BATCH, MAIL_RETRY, PERIODIC_RETRY, enqueue, fail_now, huey, submit, task
from models import Job, utcnow, values_in

logger = logging.getLogger("litejobs.courses")


# -- Course jobs ---------------------------------------------------------------------
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
        media.off_the_loop(
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
    for name in client.scan_iter(match=f"{settings.QUEUE_NAME}:ratelimit:*", count=1000):
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
    owned = values_in(Media.token, [p.name for p in _children(settings.UPLOAD_DIR) + _children(settings.INCOMING_DIR)])
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
