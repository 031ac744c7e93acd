"""litejobs app loader: imports the apps of APPS and the files of FUNCTIONS_DIR, once.

The engine never imports an app by name: the apps named in settings.APPS and the
files of settings.FUNCTIONS_DIR are imported here by importlib, once, when web.py
is imported or a consumer is made (so `huey_consumer jobs.huey` registers every
task of the loaded apps). Not at the import of this module: an app imports the
engine's modules above jobs.py (api, dashboard, schedules), which import jobs.py.

The loaded apps are recorded in jobs.APPS (hooks.App by name), where the
engine reads them; a functions file that fails to load is listed in
LOAD_ERRORS. `LitejobsHuey.create_consumer` imports this module by name.
"""

import importlib
import importlib.util
import logging
import os
import sys
import traceback
from pathlib import Path

import hooks
import settings
from jobs import APPS, FUNCTIONS, DefinitionError

logger = logging.getLogger("litejobs.jobs")  # the name it logged under inside jobs.py: log filters keep working


# Engine modules above this one that hook into every consumer (the minute scheduler,
# a job's own log, hard stops): loaded with the apps, so a bare `huey_consumer`
# has them too.
ENGINE_EXTENSIONS = ("schedules", "joblog", "stops")
_loaded = []  # the (names, folder) loaded, so a second call is a no-op


def loaded_apps():
    """The loaded apps (hooks.App), in load order."""
    return list(APPS.values())


def load_apps(names=None, functions_dir=None):
    """Import the apps `names` (default settings.APPS) and every *.py of `functions_dir`, once."""
    names = settings.APPS if names is None else names
    if _loaded:
        return loaded_apps()
    _loaded.append((tuple(names), functions_dir))
    for module_name in ENGINE_EXTENSIONS:
        importlib.import_module(module_name)
    for name in names:
        if name in settings.BUILTIN_APPS:
            if not (settings.BASE_DIR / "apps" / name / "__init__.py").exists():
                logger.debug("app %s: not installed here; skipped", name)
                continue
            module_name = f"apps.{name}"
        else:
            module_name = name
        before = set(FUNCTIONS)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name.split(".")[0] and exc.name != module_name:
                raise  # the app exists but imports something missing: its own traceback says what
            raise SystemExit(
                f"litejobs: cannot start: APPS names {name!r}, which is neither a built-in app "
                f"({', '.join(settings.BUILTIN_APPS)}) nor a module on PYTHONPATH"
            ) from None
        register_app(getattr(module, "app", None) or hooks.App(name), module, before)
    load_functions(Path(settings.FUNCTIONS_DIR if functions_dir is None else functions_dir))
    return loaded_apps()


# The functions files that failed to load: (file, line, message), for the log and the dashboard.
LOAD_ERRORS = []


def load_functions(folder):
    """Load every *.py of `folder` as an app; returns the apps loaded.

    A file that does not import (syntax error, missing module, an exception at
    import) is logged and listed in LOAD_ERRORS and the rest is served, except
    with ENV=production, where the start stops naming the file and line.
    A DefinitionError always stops the start.
    """
    loaded = []
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else ():
        before = set(FUNCTIONS)
        try:
            module = load_file(path)
        except DefinitionError as exc:
            raise SystemExit(f"litejobs: cannot start: {exc}") from None
        except Exception as exc:  # any error of the user's code at import, SyntaxError included
            _forget_functions(set(FUNCTIONS) - before)
            place, message = _error_location(exc, path)
            if settings.ENV == "production":
                raise SystemExit(f"litejobs: cannot start: {place}: {message} (fix the file, or move it out of FUNCTIONS_DIR)") from None
            logger.error("functions file %s did not load: %s; the other apps are served", place, message)
            LOAD_ERRORS.append((str(path), place, message))
            continue
        loaded.append(register_app(getattr(module, "app", None) or hooks.App(path.stem), module, before))
    return loaded


def _error_location(exc, path):
    """(`file:line`, message) of an error raised while importing the file at `path`."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}", f"SyntaxError: {exc.msg}"
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [frame for frame in frames if Path(frame.filename) == path] or frames[-1:]
    line = inside[-1].lineno if inside else "?"
    return f"{path}:{line}", f"{type(exc).__name__}: {exc}"


def _forget_functions(names):
    """Remove functions a half-loaded file registered before it failed."""
    for name in names:
        function = FUNCTIONS.pop(name)
        function.wrapper.unregister()


def load_file(path):
    """Import one functions file as module `functions.<stem>`."""
    name = f"functions.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def app_folders(name):
    """The `name` subfolder (e.g. views) of each loaded app that has one, in load order."""
    folders = []
    for app in APPS.values():
        source = getattr(app.source, "__file__", None)
        folder = os.path.join(os.path.dirname(source), name) if source else None
        if folder and os.path.isdir(folder):
            folders.append(folder)
    return folders


def register_app(app, module, functions_before=()):
    """Record a loaded app: its functions, queue priorities; tell the app_loaded hook."""
    app.source = module
    app.functions = sorted(set(FUNCTIONS) - set(functions_before)) or app.functions
    for queue, priority in app.queues.items():
        settings.QUEUE_PRIORITIES.setdefault(queue, priority)
    APPS[app.name] = app
    hooks.app_loaded.send(app)
    return app
