"""litejobs' built-in apps, each a folder that declares itself with `app = hooks.App(...)`.

Loaded by jobs.load_apps() from settings.APPS; they import the engine, never the reverse.
"""
