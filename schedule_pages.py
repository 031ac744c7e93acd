"""litejobs schedule pages: a schedule's own page, the form that adds or edits
one (with a preview of its next runs before saving), and its change log.

The list with Pause, Resume and Run now is dashboard.py's /schedules; web.py
merges `pages` beside it. Every form is a plain POST with the CSRF token: the
form's Preview button re-renders it with the next five run times, Save stores.
"""

import json
from urllib.parse import quote

from bottle import Bottle, abort, redirect, request

import jobs
import schedule_edits
import schedules
import settings
from dashboard import cron_words, current_user, page, render

pages = Bottle()
FORM_FIELDS = ("name", "function", "cron", "args", "queue", "timezone")


def _who():
    return f"user {current_user().email}"


def _form_values():
    """The form's fields as strings, as typed."""
    return {field: (request.forms.getunicode(field) or "").strip() for field in FORM_FIELDS}


def _body(values, adding):
    """The API body the form stands for: empty queue and timezone mean the defaults."""
    body = {"function": values["function"], "cron": values["cron"], "queue": values["queue"] or None,
            "timezone": values["timezone"] or None}
    if adding:
        body["name"] = values["name"]
    try:
        body["args"] = json.loads(values["args"]) if values["args"] else {}
    except ValueError as exc:
        raise jobs.ArgumentError("args", f"not valid JSON: {exc}; write e.g. {{\"user_id\": 1}}") from None
    return body


def _values_of(item):
    """The form's fields filled from an existing schedule."""
    return {
        "name": item.name,
        "function": item.function,
        "cron": item.cron,
        "args": json.dumps(item.args) if item.args else "",
        "queue": item.queue or "",
        "timezone": item.timezone or "",
    }


def _find(name):
    try:
        return schedules.find_schedule(name)
    except KeyError:
        abort(404, f"no schedule {name!r}")


def _preview(values):
    """(run times, error) for the cron and time zone typed in."""
    try:
        return schedule_edits.preview(values["cron"], values["timezone"] or None), None
    except jobs.ArgumentError as exc:
        return [], exc


def show(item, values, status=200, error=None, runs=None, previewed=False):
    """The add form (item None) or a schedule's page with its edit form and change log."""
    if runs is None:
        runs, _ = _preview(values)
    return render(
        "schedule",
        _status=status,
        title=f"Schedule {item.name}" if item else "Add a schedule",
        item=item,
        state=schedules.schedule_dict(item.name) if item and item.function in jobs.FUNCTIONS else None,
        values=values,
        error=error,
        runs=runs,
        previewed=previewed,
        words=cron_words(values["cron"]) if values["cron"] else None,
        functions=sorted(jobs.FUNCTIONS),
        default_timezone=settings.TIMEZONE,
        changes=schedule_edits.changes(item.name) if item else [],
    )


def _submit(item):
    """Preview or save the form for `item` (None: a new schedule)."""
    values = _form_values()
    if item is not None:
        values["name"] = item.name
    try:
        body = _body(values, adding=item is None)
        if request.forms.getunicode("action") == "preview":
            schedule_edits.check({**body, "args": body.get("args", {})})
            return show(item, values, previewed=True)
        if item is None:
            schedule_edits.check_name(values["name"])
            schedule_edits.add(body, who=_who())
        else:
            schedule_edits.edit(item.name, body, who=_who())
    except jobs.ArgumentError as exc:
        return show(item, values, status=422, error=exc)
    except jobs.Conflict as exc:
        return show(item, values, status=409, error=exc)
    redirect(f"/schedules/{quote(values['name'])}", 303)


@page("/schedules/new", routes=pages)
def schedule_new():
    """The form that adds a schedule."""
    values = dict.fromkeys(FORM_FIELDS, "")
    values["function"] = request.query.getunicode("function") or ""
    return show(None, values)


@page("/schedules/new", "POST", routes=pages)
def schedule_add():
    """Preview the next runs of the new schedule, or save it."""
    return _submit(None)


@page("/schedules/<name>", routes=pages)
def schedule_page(name):
    """One schedule: its definition, next runs, the edit form and its change log."""
    item = _find(name)
    return show(item, _values_of(item))


@page("/schedules/<name>", "POST", routes=pages)
def schedule_edit(name):
    """Preview the edited schedule's next runs, or save the edit."""
    return _submit(_find(name))


@page("/schedules/<name>/delete", "POST", routes=pages)
def schedule_delete(name):
    """Remove an added schedule, or reset a code one to its declaration."""
    item = _find(name)
    schedule_edits.delete(item.name, who=_who())
    redirect("/schedules" if item.source == "api" else f"/schedules/{quote(item.name)}", 303)
