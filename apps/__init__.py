"""litejobs' built-in apps, each a folder that declares itself with `app = hooks.App(...)`.

Loaded by loader.load_apps() from settings.APPS; they import the engine, never the reverse.
"""
