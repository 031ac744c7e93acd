"""litejobs hooks: the app interface and the engine's events.

The engine (settings, models, jobs, web) never imports an app. An app is a
module or package that declares what it adds with one `App(...)`, and the
engine reads those declarations after loading it; where the engine must tell
apps something (a job finished, a minute ticked), it sends an event that
apps subscribe to, the way huey's signals work:

    import hooks

    @hooks.job_finished.connect
    def on_finished(job_id, name, status):
        ...

Imports go one way: this module imports nothing of litejobs.
"""

class Event:
    """One list of receivers; `send` calls each in order and returns their answers.

    As with blinker, an exception of a receiver reaches the sender: a user
    created without their welcome mail queued must fail, not pass silently.
    """

    def __init__(self, name, doc=""):
        self.name = name
        self.__doc__ = doc
        self.receivers = []

    def connect(self, receiver):
        """Add `receiver` (usable as a decorator); connecting twice adds it once."""
        if receiver not in self.receivers:
            self.receivers.append(receiver)
        return receiver

    def disconnect(self, receiver):
        if receiver in self.receivers:
            self.receivers.remove(receiver)

    def send(self, *args, **kwargs):
        """Call every receiver with the arguments; returns [(receiver, answer)]."""
        return [(receiver, receiver(*args, **kwargs)) for receiver in list(self.receivers)]

    def __repr__(self):
        return f"<Event {self.name}: {len(self.receivers)} receivers>"


# -- The engine's events ----------------------------------------------------------
job_finished = Event("job_finished", "(job_id, name, status): a job reached succeeded or failed.")
schedule_tick = Event("schedule_tick", "(minute, started): the scheduler ticked minute `minute` and started the jobs `started`.")
app_loaded = Event("app_loaded", "(app): an app was loaded and registered.")
consumer_starting = Event("consumer_starting", "(consumer): a consumer is starting its workers in this process.")
consumer_loop = Event("consumer_loop", "(consumer): a consumer's main loop turned (several times a second).")
worker_stopping = Event("worker_stopping", "(consumer_id): a consumer is stopping gracefully.")
# Events between apps, without one importing the other.
app_event = Event(
    "app_event",
    "(event, data, key=None): something happened that webhooks may deliver, e.g. `order.completed`; "
    "`data` is a dict or a callable returning it (called only by a receiver that wants it).",
)
user_created = Event("user_created", "(user): a user was created; accounts queues their welcome mail.")
usage_counts = Event("usage_counts", "(start, end): each receiver returns a dict merged into the hourly usage report.")
demo_data = Event("demo_data", "(seed): `python -m apps.demo` fills demo data; each receiver adds its app's and returns {what: count}.")


class App:
    """What an app adds to litejobs, declared once in its `apps/<name>/__init__.py`:

        app = App(
            "orders",
            models=[Order],                       # tables: created at start, in /health
            modules=[tasks],                      # modules imported for their @task functions
            queues={"orders": 5},                 # queue name -> priority (higher runs first)
            schedules=[schedule("poll_pending_orders", "*/5 * * * *")],
            api=routes.api,                       # bottle.Bottle; full paths (/api/v1/orders)
            pages=pages.pages,                    # bottle.Bottle of dashboard pages
            nav=[("Orders", "/orders")],          # dashboard menu entries
            openapi=openapi.PATHS,                # {path: path item} for /api/v1/openapi.json
            migrations=migrations.MIGRATIONS,     # numbered steps: [fn(migrator) -> [operations]]
            metrics=metrics.render,               # fn(out) adding families to /metrics
            settings=["ORDER_DEADLINE_HOURS"],    # the settings it reads (documented in settings.py)
        )

    Everything is optional but the name. Tasks register themselves when their
    module is imported (`@task`, `schedule()`), so `modules` and `schedules` are
    listed for the app's own record (/workers, `migrate --status`).
    """

    def __init__(
        self,
        name,
        *,
        models=(),
        modules=(),
        queues=None,
        schedules=(),
        api=None,
        pages=None,
        nav=(),
        openapi=None,
        migrations=(),
        metrics=None,
        settings=(),
    ):
        self.name = name
        self.models = list(models)
        self.modules = list(modules)
        self.queues = dict(queues or {})
        self.schedules = list(schedules)
        self.api = api
        self.pages = pages
        self.nav = list(nav)
        self.openapi = dict(openapi or {})
        self.migrations = list(migrations)
        self.metrics = metrics
        self.settings = list(settings)
        self.functions = []  # names of its tasks, filled in by the loader
        self.source = None  # the module that declared it

    def __repr__(self):
        return f"<App {self.name}>"
