"""The knowledge app: document sync into a vector store, search with per-user
daily limits, conversations, and notices to the users' system.

models.py (tables), ingest.py (the ingest client and sandbox, the sandbox
embedder), embeddings.py, store.py (embedded or Qdrant), sync.py, search.py,
notify.py (the users' system over webhooks' delivery code), tasks.py (the 12
jobs), routes.py (the API), pages.py (the dashboard page), schedules.py.

Importing the package registers its tables and tasks; install(web) adds its
routes, pages and sandbox to today's web process.
"""

from . import ingest, models, notify, routes, sync, tasks  # noqa: F401 - tables and tasks register on import


def install(web):
    """Serve the app's API, page and sandbox in `web` (web.py)."""
    import dashboard
    import provider

    from . import pages

    routes.install(web)
    if pages.VIEWS not in dashboard.VIEWS:
        dashboard.VIEWS.insert(0, pages.VIEWS)
    web.app.merge(pages.pages)
    provider.sandbox.merge(ingest.sandbox)
