"""litejobs schedule edits: adding, changing and deleting schedules at run time.

The API (`POST/PATCH/DELETE /api/v1/schedules`) and the dashboard's schedule
form call these. A schedule declared in code keeps its declaration as the
default: an edit stores only the fields that differ from it (StoredSchedule),
and deleting it resets it to that default. A schedule added here is a whole
row, and deleting it removes it. Each change is written together with a
ScheduleChange row (who, when, before and after), which is also what tells
every scheduler to read the schedules again (schedules.all_schedules).
"""

import datetime
import functools
import json
import re
import zoneinfo

from peewee import IntegrityError

import models
import schedules
from jobs import FUNCTIONS, ArgumentError, Conflict
from models import ScheduleChange, ScheduleState, StoredSchedule, utcnow

FIELDS = ("name", "function", "cron", "args", "queue", "timezone")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
QUEUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
RESERVED_NAMES = {"new"}  # /schedules/new is the dashboard's form for adding one
PREVIEW_RUNS = 5


@functools.cache
def time_zones():
    return frozenset(zoneinfo.available_timezones())


# -- Checking a definition ------------------------------------------------------------
def check_name(value):
    if not isinstance(value, str) or not NAME.fullmatch(value):
        shown = json.dumps(value)[:60]
        raise ArgumentError("name", f"expected a name of letters, digits, '-' and '_' (at most 100), got {shown}")
    if value in RESERVED_NAMES:
        raise ArgumentError("name", f"{value!r} is reserved; choose another name")
    return value


def check_cron(value, name="schedule"):
    """The crontab as a Schedule, or ArgumentError naming `cron` with the parser's message."""
    if not isinstance(value, str) or len(value) > 100:
        raise ArgumentError("cron", f"expected a crontab such as \"0 2 * * *\", got {json.dumps(value)[:60]}")
    try:
        return schedules.Schedule(name, value)
    except ValueError as exc:
        raise ArgumentError("cron", str(exc).split(": ", 1)[-1]) from None


def check_timezone(value):
    if value is None:
        return None
    if not isinstance(value, str) or value not in time_zones():
        raise ArgumentError(
            "timezone", f"expected an IANA time zone such as \"Europe/Berlin\" or \"UTC\", got {json.dumps(value)[:60]}"
        )
    return value


def check_queue(value):
    if value is None:
        return None
    if not isinstance(value, str) or not QUEUE.fullmatch(value):
        raise ArgumentError("queue", f"expected a queue name of letters, digits, '.', '-' and '_', got {json.dumps(value)[:60]}")
    return value


def check(definition):
    """A complete definition {function, cron, args, queue, timezone}, checked; ArgumentError names the field.

    The arguments are checked against the function's signature as a call over the
    API is; their field is `args.<argument>`.
    """
    function = FUNCTIONS.get(definition["function"]) if isinstance(definition["function"], str) else None
    if function is None:
        shown = json.dumps(definition["function"])[:60]
        raise ArgumentError("function", f"no loaded function {shown}; see GET /api/v1/functions or the Run page")
    item = check_cron(definition["cron"])
    if item.next_run(utcnow(), datetime.timezone.utc) is None:
        raise ArgumentError("cron", f"{definition['cron']!r} never runs in the next 5 years")
    args = definition["args"]
    if not isinstance(args, dict):
        raise ArgumentError("args", f"expected a JSON object of the function's arguments, got {json.dumps(args)[:60]}")
    try:
        args = function.validate(args)
    except ArgumentError as exc:
        raise ArgumentError(f"args.{exc.field}", str(exc)[len(exc.field) + 2 :]) from None
    return {
        "function": function.name,
        "cron": " ".join(definition["cron"].split()),
        "args": args,
        "queue": check_queue(definition["queue"]),
        "timezone": check_timezone(definition["timezone"]),
    }


def _unknown_fields(body):
    for field in body:
        if field not in FIELDS:
            raise ArgumentError(field, f"unknown field; a schedule has {', '.join(FIELDS)}")


def preview(cron, timezone=None, count=PREVIEW_RUNS, now=None):
    """The next `count` run times (naive UTC) of crontab `cron` read in `timezone`; ArgumentError when bad."""
    item = check_cron(cron)
    item.timezone = check_timezone(timezone or None)
    runs = item.runs(now or utcnow())
    return [when for when, _ in zip(runs, range(count))]


# -- Changing schedules -------------------------------------------------------------
def add(body, who):
    """Add schedule `body["name"]`; returns its dict. Conflict when the name is taken."""
    _unknown_fields(body)
    for field in ("name", "function", "cron"):
        if field not in body:
            raise ArgumentError(field, "missing required field")
    name = check_name(body["name"])
    definition = check({"args": {}, "queue": None, "timezone": None, **{k: v for k, v in body.items() if k != "name"}})
    if name in schedules.all_schedules():
        raise Conflict(f"schedule {name} exists; change it with PATCH /api/v1/schedules/{name}")
    try:
        with models.db.atomic():
            StoredSchedule.create(name=name, added=True, **_columns(definition))
            _log(name, "added", who, None, definition)
    except IntegrityError:
        raise Conflict(f"schedule {name} exists; change it with PATCH /api/v1/schedules/{name}") from None
    return schedules.schedule_dict(name)


def edit(name, body, who):
    """Change the fields of schedule `name` that `body` gives; returns its dict. KeyError when unknown.

    On a code schedule only what differs from its declaration is stored, so a
    field edited back to the default is no longer overridden.
    """
    current = schedules.find_schedule(name)
    _unknown_fields(body)
    if "name" in body and body["name"] != name:
        raise ArgumentError("name", "a schedule cannot be renamed; add one with the new name and delete this one")
    default = schedules.SCHEDULES.get(name)
    given = {k: v for k, v in body.items() if k != "name"}
    if default is not None:
        # null puts a field of a code schedule back to its declared value
        given = {k: (default.definition()[k] if v is None else v) for k, v in given.items()}
    elif given.get("args", {}) is None:
        given["args"] = {}
    before = current.definition()
    after = check({**before, **given})
    with models.db.atomic():
        if default is None:
            StoredSchedule.update(updated_at=utcnow(), **_columns(after)).where(StoredSchedule.name == name).execute()
        else:
            _store_override(name, default.definition(), after)
        _log(name, "edited", who, before, after)
    return schedules.schedule_dict(name)


def delete(name, who):
    """Remove an added schedule, or reset a code schedule to its declaration; KeyError when unknown."""
    current = schedules.find_schedule(name)
    before = current.definition()
    with models.db.atomic():
        StoredSchedule.delete().where(StoredSchedule.name == name).execute()
        if current.source == "api":
            ScheduleState.delete().where(ScheduleState.name == name).execute()
            _log(name, "deleted", who, before, None)
        elif current.overridden:
            _log(name, "reset", who, before, schedules.SCHEDULES[name].definition())


def _store_override(name, default, definition):
    changed = {k: v for k, v in definition.items() if v != default[k]}
    if not changed:
        StoredSchedule.delete().where(StoredSchedule.name == name).execute()
        return
    columns = {k: None for k in ("function", "cron", "args", "queue", "timezone")}
    columns.update(_columns(changed))
    columns["updated_at"] = utcnow()
    StoredSchedule.insert(name=name, added=False, **columns).on_conflict(
        conflict_target=[StoredSchedule.name], update=columns
    ).execute()


def _columns(definition):
    columns = dict(definition)
    if "args" in columns:
        columns["args"] = json.dumps(columns["args"])
    return columns


def _log(name, action, who, before, after):
    ScheduleChange.create(
        schedule=name,
        action=action,
        who=who[:200],
        before=json.dumps(before) if before is not None else None,
        after=json.dumps(after) if after is not None else None,
    )


def changes(name, limit=100):
    """The change log of schedule `name`, newest first, as dicts."""
    return [change.to_dict() for change in ScheduleChange.of(name, limit)]
