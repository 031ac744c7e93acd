"""litejobs schema: the engine's tables and each app's, created and migrated in step.

The engine's migrations are models.MIGRATIONS (their number in SchemaVersion);
each app numbers its own in `App.migrations` (peewee's playhouse.migrate steps:
`fn(migrator) -> [operations]`), and AppSchema keeps the version each app's
tables reached. `python web.py migrate` applies what is pending (every start of
`web.py run` does too); `python web.py migrate --status` shows each version.
"""

from peewee import CharField, DateTimeField, IntegerField
from playhouse.migrate import SchemaMigrator, migrate

import models
from models import MIGRATIONS, BaseModel, SchemaVersion, db, schema_change, utcnow


class AppSchema(BaseModel):
    """The number of the last migration of app `app` applied to this database."""

    app = CharField(primary_key=True)
    version = IntegerField()
    updated_at = DateTimeField(default=utcnow)


def app_tables(app):
    return {model._meta.table_name for model in app.models}


def upgrade(apps):
    """Create missing tables, then apply the engine's and each app's pending migrations.

    An app met for the first time gets its newest version when none of its tables
    existed (they were just made from its models), else version 0: tables made
    before apps had versions, which its migrations bring up to date.
    """
    with db.connection_context():
        existed = set(db.get_tables())
        models.create_tables()  # the engine's migrations, and every table still missing
    with db.connection_context(), schema_change():
        db.create_tables([AppSchema], safe=True)
        known = {row.app: row.version for row in AppSchema.select()}
        migrator = SchemaMigrator.from_database(db.obj)
        applied = {}
        for app in apps:
            current = known.get(app.name)
            if current is None:
                current = 0 if app_tables(app) & existed else len(app.migrations)
                AppSchema.create(app=app.name, version=current)
            for number, step in enumerate(app.migrations[current:], start=current + 1):
                with db.atomic():
                    migrate(*step(migrator))
                    AppSchema.update(version=number, updated_at=utcnow()).where(AppSchema.app == app.name).execute()
                applied[app.name] = number
        return applied


def status(apps):
    """[(name, version applied, newest version)]: the engine first, then each app."""
    with db.connection_context():
        db.create_tables([AppSchema], safe=True)
        engine = SchemaVersion.select(SchemaVersion.version).order_by(SchemaVersion.version.desc()).scalar()
        known = {row.app: row.version for row in AppSchema.select()}
        rows = [("engine", engine or 0, len(MIGRATIONS))]
        rows += [(app.name, known.get(app.name), len(app.migrations)) for app in apps]
        return rows
