"""courses' tables: courses, lessons, enrollments and their certificates.

Courses with their lessons, and enrollments whose progress a job
(tasks.py) recalculates; the run that first sees 100% queues the
certificate, a PDF mailed once.
"""

import logging
import secrets

from peewee import CharField, DateTimeField, ForeignKeyField, IntegerField, IntegrityError, fn

import settings
from models import BaseModel, User, db, isoformat, utcnow

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
