"""Schema versions: a database made before apps upgrades in place with nothing lost,
and an app's own numbered migrations run once, in order."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from peewee import CharField, IntegerField, TextField

import hooks
import loader
import models
import schema
from helpers import ROOT, cli_env

BEFORE_APPS = Path(__file__).parent / "fixtures" / "schema_before_apps.sql"


def sample(declared):
    """A value of a column's declared SQLite type."""
    kind = declared.upper()
    if kind.startswith("INTEGER"):
        return 1
    if kind.startswith("REAL"):
        return 1.5
    if kind.startswith("DATETIME"):
        return "2026-11-22 09:00:00"
    if kind.startswith("DATE"):
        return "2026-11-22"
    return "x"


def fill_every_table(path):
    """One row in every table of the database at `path`; returns {table: row count}."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys = OFF")  # parents and children all get id 1
    tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        if conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]:
            continue  # a trigger filled it already
        columns = conn.execute(f'PRAGMA table_info("{table}")').fetchall()
        names = ", ".join(f'"{c[1]}"' for c in columns)
        marks = ", ".join("?" for _ in columns)
        values = [1 if c[1] == "version" else sample(c[2]) for c in columns]
        conn.execute(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', values)
    conn.commit()
    counts = {table: conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in tables}
    conn.close()
    return counts


def test_a_database_from_before_apps_upgrades_with_every_row_kept(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(BEFORE_APPS.read_text())
    conn.close()
    before = fill_every_table(path)
    assert len(before) >= 30 and all(before.values())
    database = models.open_database(f"sqlite:///{path}")
    models.db.initialize(database)
    try:
        schema.upgrade(loader.loaded_apps())
        for table, count in before.items():
            now = models.db.execute_sql(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
            added = len(models.MIGRATIONS) - 1 if table == "schemaversion" else 0  # one row per migration applied
            assert now == count + added, table
        # Every row reads back through the models, every field converted.
        read = 0
        for model in models.MODELS:
            for row in model.select():
                for field in model._meta.sorted_fields:
                    getattr(row, field.name)
                read += 1
        assert read >= len(before)
        assert models.Worker.get().apps == ""  # the column the upgrade added, with its default
        assert {name: version for name, version, _ in schema.status(loader.loaded_apps())}["engine"] == len(models.MIGRATIONS)
    finally:
        database.close()
    # The command line says the same.
    env = cli_env(tmp_path, DATABASE_URL=f"sqlite:///{path}")
    shown = subprocess.run(
        [sys.executable, "web.py", "migrate", "--status"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert f"engine: version {len(models.MIGRATIONS)} of {len(models.MIGRATIONS)}" in shown.stdout
    assert "orders: version 0 of 0" in shown.stdout


@pytest.fixture
def probe():
    """A test-only app with one table and two migrations; its model is removed afterwards."""

    class Probe(models.BaseModel):
        """The table as the app's newest models describe it."""

        name = CharField()
        size = IntegerField(default=0)
        note = TextField(default="")

    steps = [
        lambda migrator: models.add_column_once(migrator, "probe", "size", IntegerField(default=0)),
        lambda migrator: models.add_column_once(migrator, "probe", "note", TextField(default="")),
    ]
    yield hooks.App("probe", models=[Probe], migrations=steps)
    models.MODELS.remove(Probe)
    models.db.drop_tables([Probe])


def test_an_apps_migrations_run_once_in_order_on_its_old_tables(probe):
    models.db.execute_sql('CREATE TABLE "probe" ("id" INTEGER PRIMARY KEY, "name" VARCHAR(255) NOT NULL)')
    models.db.execute_sql("INSERT INTO probe (name) VALUES ('kept')")
    assert schema.upgrade([probe]) == {"probe": 2}
    assert schema.upgrade([probe]) == {}  # nothing pending
    [model] = probe.models
    assert [(p.name, p.size, p.note) for p in model.select()] == [("kept", 0, "")]
    assert ("probe", 2, 2) in schema.status([probe])


def test_an_app_whose_tables_are_new_starts_at_its_newest_version(probe):
    assert schema.upgrade([probe]) == {}  # made from its models: nothing to migrate
    assert ("probe", 2, 2) in schema.status([probe])


def test_consumers_meeting_a_new_postgresql_database_together_all_start(tmp_path):
    """Each start creates missing tables; on PostgreSQL four at once must not race (schema_change)."""
    import psycopg

    from helpers import POSTGRES_SERVER_URL, POSTGRES_DATABASE, base_env, service_or_skip

    name = f"{POSTGRES_DATABASE}_race"

    def create():
        with psycopg.connect(POSTGRES_SERVER_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    service_or_skip("PostgreSQL", create)
    url = POSTGRES_SERVER_URL.rsplit("/", 1)[0] + "/" + name
    code = "import loader, preflight, jobs; loader.load_apps(); preflight.check_services(jobs.check_queue)"
    environ = base_env(DATA_DIR=str(tmp_path), DATABASE_URL=url)
    try:
        starts = [
            subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=environ, stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        errors = [start.communicate(timeout=120)[1] for start in starts]
        assert [start.returncode for start in starts] == [0, 0, 0, 0], errors
    finally:
        with psycopg.connect(POSTGRES_SERVER_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
