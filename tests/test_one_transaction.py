"""With the queue in the app database (the default on SQLite, QUEUE_URL=DATABASE_URL on
PostgreSQL), a job's row and its message commit in one transaction: when either write
fails, the answer is 503 and neither is there. Real SQLite file, real PostgreSQL."""

import pytest
from helpers import POSTGRES_URL

import jobs
import models
from models import Job

SQLITE_REFUSE = {
    "job": "create trigger refuse before insert on job begin select raise(abort, 'refused by the test'); end",
    "task": "create trigger refuse before insert on task begin select raise(abort, 'refused by the test'); end",
}
POSTGRES_REFUSE = (
    "create or replace function refuse() returns trigger language plpgsql as "
    "$$ begin raise exception 'refused by the test'; end $$; "
    "create trigger refuse before insert on {table} for each row execute function refuse()"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def one_database(request, fresh_storage):
    """The app database and the queue in one database; yields a function that makes inserts into a table fail."""
    if request.param == "sqlite":  # as fresh_storage leaves it
        yield lambda table: models.db.execute_sql(SQLITE_REFUSE[table])
        return
    database = request.getfixturevalue("postgres_database")
    jobs.use_queue(POSTGRES_URL)
    jobs.huey.flush()
    tables = {"job": "job", "task": jobs.huey.storage.table_task}
    try:
        yield lambda table: models.db.execute_sql(POSTGRES_REFUSE.format(table=tables[table]))
    finally:
        database.execute_sql(f"drop trigger if exists refuse on {tables['task']}")
        jobs.huey.flush()
        jobs.use_queue(f"sqlite:///{fresh_storage / 'app.db'}")


def test_the_row_and_its_message_are_written_together(one_database):
    assert jobs.messages_with_rows() is jobs.huey.storage
    job, created = jobs.submit("echo", {"value": 1})
    assert created and job.status == "queued"
    assert Job.get_by_id(job.id).status == "queued"
    assert [message.id for message in jobs.huey.pending()] == [job.id]


@pytest.mark.parametrize("table", ["job", "task"])
def test_when_either_write_fails_neither_is_there(one_database, table):
    jobs.submit("echo", {"value": "before"})
    one_database(table)
    with pytest.raises(jobs.Unavailable, match="refused by the test"):
        jobs.submit("echo", {"value": "refused"})
    assert [job.args_dict["value"] for job in Job.select()] == ["before"]
    assert [message.kwargs["value"] for message in jobs.huey.pending()] == ["before"]
