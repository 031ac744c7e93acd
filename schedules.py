"""litejobs schedules: periodic work, run from one table of crontabs.

The `schedule(name, cron)` lines of the apps and functions files say which
function runs when (crontabs read in settings.TIMEZONE); these are the
defaults. Schedules added or edited at run time (schedule_edits.py, through
the API and the dashboard) are rows of StoredSchedule, merged over the
defaults at every tick. Every consumer runs the Scheduler thread; each tick is
claimed once in the database (ScheduleRun), so with several consumers a tick
still runs once, and a pause (ScheduleState) holds for every consumer and
survives restarts.
"""

import datetime
import json
import logging
import zoneinfo

from huey import consumer as huey_consumer
from huey import crontab

import hooks
import consumer
import jobs
import runs
import models
import settings
from jobs import FUNCTIONS, Conflict, submit
from models import Job, ScheduleChange, ScheduleRun, ScheduleState, StoredSchedule, isoformat, utcnow  # noqa: F401 - re-exported

logger = logging.getLogger("litejobs.schedules")


# -- Schedules ----------------------------------------------------------------------
# Periodic work runs from this table, not from huey's periodic_task: the state of
# each schedule lives in the database (ScheduleState) so a pause holds for every
# consumer and survives restarts, and each tick is claimed once cluster-wide
# (ScheduleRun) however many consumers run the Scheduler.
ONE_MINUTE = datetime.timedelta(minutes=1)


class Schedule:
    """A function name and when it runs: a crontab "minute hour day month day-of-week".

    The crontab is read in settings.TIMEZONE with huey's crontab() rules (day
    of week 0 = Sunday; day and day of week must both match). Across a DST
    change, a schedule whose hour field is `*` follows real time (every 5
    minutes stays every 5 minutes); one at fixed hours follows the wall
    clock: a skipped wall time runs when the clock jumps past it, a repeated
    one runs the first time only.
    """

    def __init__(self, name, cron, args=None, *, function=None, queue=None, timezone=None):
        self.args = args or {}
        self.function = function or name  # code schedules are named after their function
        self.queue = queue  # None: the function's own queue
        self.timezone = timezone  # None: settings.TIMEZONE
        self.source, self.overridden = "code", False
        if not cron.isascii():
            raise ValueError(f"schedule {name}: bad crontab {cron!r}: use ASCII digits, '*', ',', '-' and '/'")
        fields = cron.split()
        if len(fields) != 5:
            raise ValueError(f"schedule {name}: {cron!r} is not a crontab of 5 fields (minute hour day month day-of-week)")
        minute, hour, day, month, day_of_week = fields
        try:
            self.on_date = crontab(day=day, month=month, day_of_week=day_of_week, strict=True)
            on_minute, on_hour = crontab(minute=minute, strict=True), crontab(hour=hour, strict=True)
        except ValueError as exc:
            raise ValueError(f"schedule {name}: bad crontab {cron!r}: {exc}") from None
        base = datetime.datetime(2000, 1, 1)
        self.minutes = [m for m in range(60) if on_minute(base.replace(minute=m))]
        self.hours = [h for h in range(24) if on_hour(base.replace(hour=h))]
        self.name, self.cron = name, cron
        self.function = function or name
        self.hourly = len(self.hours) == 24

    def zone(self):
        """The schedule's time zone as a tzinfo (settings.TIMEZONE unless it has its own)."""
        return zoneinfo.ZoneInfo(self.timezone) if self.timezone else zone()

    def definition(self):
        """What an edit can change, as stored in the change log."""
        return {"function": self.function, "cron": self.cron, "args": self.args, "queue": self.queue, "timezone": self.timezone}

    def runs(self, after, tz=None):
        """Run times strictly after `after` (naive UTC), ascending, as naive UTC; up to 5 years ahead."""
        tz = tz or self.zone()
        local_after = to_local(after, tz)
        # No DST change moves a wall time by more than 2 hours, so earlier wall times cannot be after `after`.
        floor = local_after - datetime.timedelta(hours=3)
        day = local_after.date() - datetime.timedelta(days=1)
        for _ in range(5 * 366 + 2):
            if self.on_date(datetime.datetime.combine(day, datetime.time())):
                times = set()
                for hour in self.hours:
                    for minute in self.minutes:
                        wall = datetime.datetime.combine(day, datetime.time(hour, minute))
                        if wall >= floor:
                            times.update(t for t in self._instants(wall, tz) if t > after)
                yield from sorted(times)
            day += datetime.timedelta(days=1)

    def _instants(self, wall, tz):
        """The UTC times at which local wall time `wall` runs (none, one or two)."""
        if tz is datetime.timezone.utc or getattr(tz, "key", None) == "UTC":
            return (wall,)
        first, second = to_utc(wall, tz, fold=0), to_utc(wall, tz, fold=1)
        if to_local(first, tz) != wall:
            # The clock jumps over this wall time (spring forward).
            if self.hourly:
                return ()
            jump = min(first, second)
            while to_local(jump, tz) < wall:
                jump += ONE_MINUTE
            return (jump,)
        if second != first and self.hourly:
            return (first, second)  # the clock goes back: this wall time happens twice
        return (first,)

    def next_run(self, after, tz=None):
        """The first run time strictly after `after` (naive UTC), or None."""
        return next(self.runs(after, tz), None)

    def last_due(self, after, now, tz=None):
        """The latest run time in (after, now], or None: missed ticks of a stalled scheduler run once."""
        due = None
        for when in self.runs(after, tz):
            if when > now:
                break
            due = when
        return due


SCHEDULES = {}


def schedule(name, cron, *, function=None, **kwargs):
    """Run function `function` (by default the one called `name`) with `kwargs` on crontab `cron`;
    the function is looked up when a tick comes. `function=` lets a schedule keep its name
    when its function is renamed."""
    SCHEDULES[name] = Schedule(name, cron, kwargs, function=function)
    return SCHEDULES[name]


schedule("prune_job_history", "0 1 * * *")  # the engine's own; each app declares its schedules


def zone():
    """settings.TIMEZONE as a tzinfo."""
    return zoneinfo.ZoneInfo(settings.TIMEZONE)


def to_local(utc, tz):
    """Naive UTC -> naive wall time in `tz`."""
    return utc.replace(tzinfo=datetime.timezone.utc).astimezone(tz).replace(tzinfo=None)


def to_utc(wall, tz, fold=0):
    return wall.replace(tzinfo=tz, fold=fold).astimezone(datetime.timezone.utc).replace(tzinfo=None)


def _minute(when):
    return when.replace(second=0, microsecond=0)


# -- The effective schedules: code defaults merged with the stored rows ----------------
# Every tick and every listing needs them; the rows are read again only when the
# change log moved (one small aggregate query), so an edit made in the web process
# reaches every consumer at its next tick, without a restart.
_cache = (None, {})  # (key, {name: Schedule}); replaced whole, so threads read it safely


def all_schedules():
    """Every schedule by name, code ones first, their stored overrides applied; added ones after."""
    global _cache
    key = (models.db.obj, ScheduleChange.stamp(), tuple(SCHEDULES.values()))
    if _cache[0] != key:
        _cache = (key, _merge(StoredSchedule.select().order_by(StoredSchedule.name)))
    return _cache[1]


def _merge(rows):
    merged = dict(SCHEDULES)
    for row in rows:
        default = SCHEDULES.get(row.name)
        if default is None and not row.added:
            continue  # an edit of a code schedule no loaded app declares any more
        base = default.definition() if default is not None else {"args": {}, "queue": None, "timezone": None}
        stored = stored_fields(row)
        try:
            item = Schedule(row.name, **{**base, **stored})
        except (TypeError, ValueError) as exc:  # a row written by hand, or a time zone gone from tzdata
            logger.error("schedule %s: stored definition ignored: %s", row.name, exc)
            continue
        item.source = "code" if default is not None else "api"
        item.overridden = default is not None and bool(stored)
        merged[row.name] = item
    return merged


def stored_fields(row):
    """The fields a StoredSchedule row sets (its nulls take the defaults)."""
    fields = {name: getattr(row, name) for name in ("function", "cron", "queue", "timezone")}
    fields["args"] = json.loads(row.args) if row.args is not None else None
    return {name: value for name, value in fields.items() if value is not None}


def active_schedules():
    """The schedules whose function exists, in table order."""
    return [s for s in all_schedules().values() if s.function in FUNCTIONS]


def find_schedule(name):
    """The schedule called `name`, its function loaded or not; KeyError when there is none."""
    return all_schedules()[name]


def get_schedule(name):
    """The schedule called `name`; KeyError when there is none (or its function is missing)."""
    item = find_schedule(name)
    if item.function not in FUNCTIONS:
        raise KeyError(name)
    return item


def _in_flight(state):
    """The schedule's last job when it has not finished yet, else None."""
    if state is None or state.last_job_id is None:
        return None
    job = Job.get_or_none(Job.id == state.last_job_id)
    return job if job is not None and not job.is_terminal else None


def tick(now=None, after=None, tz=None):
    """Start every schedule due in (after, now], once cluster-wide; returns the jobs started.

    `after` defaults to a minute before `now`. A paused schedule is skipped; a
    tick whose previous job has not finished is skipped too (never overlaps).
    """
    now = _minute(now or utcnow())
    after = max(after or now - ONE_MINUTE, now - datetime.timedelta(days=1))
    states = ScheduleState.by_name()
    started = []
    for item in active_schedules():
        try:
            slot = item.last_due(after, now, tz or item.zone())
            if slot is None:
                continue
            state = states.get(item.name)
            if state is not None and state.paused:
                logger.info("schedule %s: paused; tick %s skipped", item.name, isoformat(slot))
                continue
            claim = ScheduleRun.claim(item.name, slot, jobs.CONSUMER_ID)
            if claim is None:
                continue  # another consumer has this tick
            running = _in_flight(state)
            if running is not None:
                claim.note = f"skipped: job {running.id} is still {running.status}"
                claim.save()
                logger.warning("schedule %s: tick %s %s", item.name, isoformat(slot), claim.note)
                continue
            job, _ = submit(item.function, item.args, queue=item.queue)
            claim.job_id = job.id
            claim.save()
            ScheduleState.record_run(item.name, job.id, utcnow())
            logger.info("schedule %s: tick %s started job %s", item.name, isoformat(slot), job.id)
            started.append(job)
        except Exception:
            # One schedule's failure (database busy, queue down) must not stop the others,
            # nor kill the scheduler thread: the next tick tries again.
            logger.exception("schedule %s: tick at %s failed", item.name, isoformat(now))
    return started


def run_schedule(name):
    """Start schedule `name` now (paused or not); Conflict while its last job is unfinished."""
    item = get_schedule(name)
    running = _in_flight(ScheduleState.get_or_none(ScheduleState.name == name))
    if running is not None:
        raise Conflict(f"schedule {name}: job {running.id} is still {running.status}; a schedule never overlaps itself")
    job, _ = submit(item.function, item.args, queue=item.queue)
    ScheduleState.record_run(name, job.id, utcnow())
    return job


def pause_schedule(name, paused=True, who="unknown"):
    """Pause (or resume) schedule `name` for every consumer, noted in its change log; returns its dict."""
    get_schedule(name)
    with models.db.atomic():
        ScheduleState.set_paused(name, paused)
        ScheduleChange.create(schedule=name, action="paused" if paused else "resumed", who=who)
    return schedule_dict(name)


def schedule_dicts(now=None):
    """Every active schedule as the API shows it."""
    now = now or utcnow()
    states = ScheduleState.by_name()
    job_ids = [s.last_job_id for s in states.values() if s.last_job_id]
    statuses = dict(Job.select(Job.id, Job.status).where(Job.id.in_(job_ids)).tuples()) if job_ids else {}
    result = []
    for item in active_schedules():
        state = states.get(item.name)
        paused = bool(state and state.paused)
        last_job_id = state.last_job_id if state else None
        result.append(
            {
                "name": item.name,
                "function": item.function,
                "cron": item.cron,
                "args": item.args,
                "timezone": item.timezone or settings.TIMEZONE,
                "queue": item.queue or FUNCTIONS[item.function].queue,
                "source": item.source,
                "overridden": item.overridden,
                "paused": paused,
                "next_run": None if paused else isoformat(item.next_run(now)),
                "last_run": isoformat(state.last_run) if state else None,
                "last_status": statuses.get(last_job_id),
                "last_job_id": last_job_id,
            }
        )
    return result


def schedule_dict(name):
    """Schedule `name` as the API shows it; KeyError when there is none (or its function is missing)."""
    get_schedule(name)
    return next(s for s in schedule_dicts() if s["name"] == name)


class Scheduler(huey_consumer.Scheduler):
    """huey's scheduler thread, ticking SCHEDULES instead of huey's periodic tasks.

    huey checks periodic tasks every 60 s counted from the consumer's start,
    so a 02:00 tick could start at 02:00:59 or, with a late wake-up, not at
    all. This one looks every second and ticks once per new minute, covering
    every minute since its last tick.
    """

    periodic_task_seconds = 1

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_minute = None

    def enqueue_periodic_tasks(self, now=None):
        minute = _minute(now or utcnow())
        if self.last_minute is None:
            # The first look includes the current minute: a consumer restarted at
            # 02:00:30 still runs the 02:00 tick, unless another one did.
            self.last_minute = minute - ONE_MINUTE
        if minute <= self.last_minute:
            return []
        after, self.last_minute = self.last_minute, minute
        try:
            started = tick(minute, after)
        except Exception as exc:  # database or queue away: the next look covers these minutes again
            self.last_minute = after
            if runs.is_connection_error(exc):
                runs.reset_connection()
            runs.database_outage.failed(exc)
            return []
        hooks.schedule_tick.send(minute, started)
        return started


consumer.use_scheduler(Scheduler)
