"""litejobs schedule tables: what the database keeps of each schedule (schedules.py).

Paused and last-run state, the claim of each tick, schedules added or edited
at run time, and the log of those changes.
"""

import json

from peewee import BooleanField, CharField, DateTimeField, IntegrityError, TextField, fn

from database import BaseModel, db, isoformat, utcnow


class ScheduleState(BaseModel):
    """What the database remembers of a schedule (SCHEDULES): paused, last run, last job.

    Kept here rather than in a consumer, so a pause holds for every consumer
    and survives restarts.
    """

    name = CharField(primary_key=True)
    paused = BooleanField(default=False)
    last_run = DateTimeField(null=True)
    last_job_id = CharField(null=True)
    updated_at = DateTimeField(default=utcnow)

    @classmethod
    def by_name(cls):
        return {row.name: row for row in cls.select()}

    @classmethod
    def _upsert(cls, name, **values):
        values["updated_at"] = utcnow()
        cls.insert(name=name, **values).on_conflict(conflict_target=[cls.name], update=values).execute()

    @classmethod
    def set_paused(cls, name, paused):
        cls._upsert(name, paused=paused)

    @classmethod
    def record_run(cls, name, job_id, when):
        cls._upsert(name, last_run=when, last_job_id=job_id)


class ScheduleRun(BaseModel):
    """The claim of one tick: (schedule, slot) is unique, so however many
    consumers see a tick, one of them runs it."""

    schedule = CharField()
    slot = DateTimeField()  # the tick's minute, UTC
    claimed_at = DateTimeField(default=utcnow)
    consumer_id = CharField(null=True)
    job_id = CharField(null=True)
    note = CharField(null=True)  # why a claimed tick did not run

    class Meta:
        indexes = ((("schedule", "slot"), True),)

    @classmethod
    def claim(cls, schedule, slot, consumer_id):
        """The new claim row, or None when another consumer claimed this tick first."""
        try:
            with db.atomic():  # a savepoint, so a clash leaves an outer transaction usable
                return cls.create(schedule=schedule, slot=slot, consumer_id=consumer_id)
        except IntegrityError:
            return None

    @classmethod
    def prune(cls, before):
        return cls.delete().where(cls.claimed_at < before).execute()


class StoredSchedule(BaseModel):
    """A schedule added at run time (`added`), or what an edit changed of a schedule declared in code.

    A null field takes its default: for a code schedule, its value in code; for
    an added one, no arguments, the function's own queue and TIMEZONE.
    """

    name = CharField(primary_key=True)
    function = CharField(null=True)
    cron = CharField(null=True)
    args = TextField(null=True)  # a JSON object
    queue = CharField(null=True)
    timezone = CharField(null=True)
    added = BooleanField(default=False)
    created_at = DateTimeField(default=utcnow)
    updated_at = DateTimeField(default=utcnow)


class ScheduleChange(BaseModel):
    """One change to a schedule: who made it, when, and the schedule before and after (JSON)."""

    schedule = CharField(index=True)
    action = CharField()  # added, edited, deleted, reset, paused, resumed
    who = CharField()
    at = DateTimeField(default=utcnow)
    before = TextField(null=True)
    after = TextField(null=True)

    @classmethod
    def stamp(cls):
        """(count, newest id) of the log: it moves whenever a change commits.

        The count matters on PostgreSQL, where a sequence number taken first can commit last.
        """
        return cls.select(fn.COUNT(cls.id), fn.MAX(cls.id)).tuples().get()

    @classmethod
    def of(cls, name, limit=100):
        return list(cls.select().where(cls.schedule == name).order_by(cls.id.desc()).limit(limit))

    def to_dict(self):
        return {
            "action": self.action,
            "who": self.who,
            "at": isoformat(self.at),
            "before": json.loads(self.before) if self.before else None,
            "after": json.loads(self.after) if self.after else None,
        }
