"""litejobs job counters for /metrics: JobCount, JobDuration and the triggers that keep them.

The triggers on the job table count every enqueue, finish, retry and
recovery, whichever process made it.
"""

from peewee import CharField, CompositeKey, FloatField, IntegerField, SqliteDatabase

from database import TERMINAL, BaseModel, db

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class JobCount(BaseModel):
    """Jobs per function and event: enqueued, succeeded, failed, canceled,
    expired, retried (one per retry) and recovered (run again after its worker
    was lost).

    Triggers on the job table keep it (install_job_triggers), so the counts are
    right whichever process changed a job, /metrics never counts a table of a
    million rows, and pruning old jobs leaves the counts alone.
    """

    function = CharField()
    status = CharField()
    count = IntegerField(default=0)

    class Meta:
        table_name = "job_count"
        primary_key = CompositeKey("function", "status")


class JobDuration(BaseModel):
    """Run times of finished jobs per function as histogram buckets: `le` is
    the bucket's upper bound in seconds ("+Inf" last); counts are per bucket,
    not cumulative; `total` is the sum of the bucket's durations in seconds."""

    function = CharField()
    le = CharField()
    count = IntegerField(default=0)
    total = FloatField(default=0.0)

    class Meta:
        table_name = "job_duration"
        primary_key = CompositeKey("function", "le")

    @classmethod
    def histograms(cls):
        """{function: ([(le, cumulative count)] ending with "+Inf", sum of seconds)}."""
        rows = {}
        for row in cls.select():
            rows.setdefault(row.function, {})[row.le] = row
        histograms = {}
        for function, buckets in sorted(rows.items()):
            running, total, cumulative = 0, 0.0, []
            for le in [repr(b) for b in DURATION_BUCKETS] + ["+Inf"]:
                if le in buckets:
                    running += buckets[le].count
                    total += buckets[le].total
                cumulative.append((le, running))
            histograms[function] = (cumulative, total)
        return histograms


def _job_trigger_statements(postgres):
    """The SQL that counts job events into job_count and job_duration."""
    terminal = ", ".join(f"'{status}'" for status in TERMINAL)
    bucket = " ".join(f"WHEN NEW.duration_ms <= {le * 1000!r} THEN '{le!r}'" for le in DURATION_BUCKETS)

    def count(event):
        return (
            f'INSERT INTO "job_count" ("function", "status", "count") VALUES (NEW."name", {event}, 1) '
            'ON CONFLICT ("function", "status") DO UPDATE SET "count" = "job_count"."count" + 1;'
        )

    duration = (
        'INSERT INTO "job_duration" ("function", "le", "count", "total") '
        f"SELECT NEW.\"name\", CASE {bucket} ELSE '+Inf' END, 1, NEW.\"duration_ms\" / 1000.0 "
        'WHERE NEW."duration_ms" IS NOT NULL '
        'ON CONFLICT ("function", "le") DO UPDATE SET "count" = "job_duration"."count" + 1, '
        '"total" = "job_duration"."total" + EXCLUDED."total";'
    )
    finished = f"NEW.status IN ({terminal}) AND OLD.status NOT IN ({terminal})"
    retried = "NEW.status = 'retrying' AND OLD.status <> 'retrying'"
    recovered = "NEW.recoveries > OLD.recoveries"
    if not postgres:
        # Named with a version: changing the SQL means new names (and dropping the old ones).
        return [
            f"CREATE TRIGGER IF NOT EXISTS job_counted_v1_insert AFTER INSERT ON job BEGIN {count(repr('enqueued'))} END",
            f"CREATE TRIGGER IF NOT EXISTS job_counted_v1_finish AFTER UPDATE OF status ON job WHEN {finished} "
            f"BEGIN {count('NEW.status')} {duration} END",
            f"CREATE TRIGGER IF NOT EXISTS job_counted_v1_retry AFTER UPDATE OF status ON job WHEN {retried} "
            f"BEGIN {count(repr('retried'))} END",
            f"CREATE TRIGGER IF NOT EXISTS job_counted_v1_recover AFTER UPDATE OF recoveries ON job WHEN {recovered} "
            f"BEGIN {count(repr('recovered'))} END",
        ]
    body = (
        f"IF TG_OP = 'INSERT' THEN {count(repr('enqueued'))} RETURN NULL; END IF; "
        f"IF {finished} THEN {count('NEW.status')} {duration} "
        f"ELSIF {retried} THEN {count(repr('retried'))} END IF; "
        f"IF {recovered} THEN {count(repr('recovered'))} END IF; "
        "RETURN NULL;"
    )
    return [
        # Serialises processes that start at once, so only one of them creates the trigger.
        "SELECT pg_advisory_xact_lock(4242001)",
        f"CREATE OR REPLACE FUNCTION litejobs_count_job_v1() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} END $$",
        "CREATE OR REPLACE TRIGGER job_counted_v1 AFTER INSERT OR UPDATE OF status, recoveries ON job "
        "FOR EACH ROW EXECUTE FUNCTION litejobs_count_job_v1()",
    ]


def install_job_triggers():
    """Create the triggers that keep JobCount and JobDuration; safe at every start."""
    postgres = not isinstance(db.obj, SqliteDatabase)
    with db.atomic():
        for statement in _job_trigger_statements(postgres):
            db.execute_sql(statement)
