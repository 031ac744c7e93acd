"""webhooks' schema changes, numbered from 1: each step is `fn(migrator) -> [operations]`
(peewee's playhouse.migrate); schema.upgrade() applies those a database has not had.

Append, never edit or reorder: a step's number is its place in this list. For example
    lambda migrator: models.add_column_once(migrator, "orders", "note", TextField(default="")),
"""

from apps.webhooks.models import Webhook


def seal_plain_secrets(migrator):
    """1: signing secrets stored in plain text before sealing.py are sealed in place."""
    Webhook.seal_plain_secrets()
    return []


MIGRATIONS = [
    seal_plain_secrets,
]
