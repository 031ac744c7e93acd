"""litejobs sandbox faults: failures injected into the built-in sandboxes of outside services.

The orders app's provider sandbox and the knowledge app's ingest sandbox let a
test or an operator make their next calls fail: each app keeps its own table
of `InjectedFault` rows, and every sandbox call takes one that matches.
"""

from peewee import CharField, DateTimeField, IntegerField

from database import BaseModel, db, utcnow


class InjectedFault(BaseModel):
    """The next `remaining` calls to `target` (one of the sandbox's calls, or any)
    answer `status` (200: a garbage body), or answer `delay_ms` late."""

    _abstract = True  # no table of its own: each sandbox's subclass has one

    target = CharField(default="any")
    status = IntegerField(null=True)
    delay_ms = IntegerField(default=0)
    remaining = IntegerField(default=1)
    created_at = DateTimeField(default=utcnow)

    @classmethod
    def take(cls, target):
        """Use up one call of the oldest fault for `target`; None when there is none."""
        # Every sandbox call asks, and almost always finds none: a plain statement is cheapest.
        sql = f'SELECT * FROM "{cls._meta.table_name}" WHERE "target" IN ({{p}}, {{p}}) AND "remaining" > 0 ORDER BY "id"'
        for fault in list(cls.raw(sql.format(p=db.param), target, "any")):
            used = cls.update(remaining=cls.remaining - 1).where((cls.id == fault.id) & (cls.remaining > 0)).execute()
            if used:
                return fault
        return None

    def to_dict(self):
        return {
            "id": str(self.id),
            "target": self.target,
            "status": self.status,
            "delay_ms": self.delay_ms,
            "remaining": self.remaining,
        }
