"""litejobs backup: a consistent copy of the SQLite files while litejobs runs.

`python web.py backup DEST` copies the app database (and the queue, when it
is a SQLite file too) into the folder DEST with SQLite's online backup API.
Each copy is one snapshot: the web process and consumers keep writing during
it, and WAL mode lets them. Restore: stop litejobs, copy the files back to
where DATABASE_URL and QUEUE_URL point (deleting any `-wal` and `-shm` files
beside them), start it again.
"""

import sqlite3
from pathlib import Path

import settings


class BackupError(Exception):
    """A backup that cannot be made; the message says what to do instead."""


def sqlite_path(url):
    """The file of a sqlite:/// URL, or None for other databases."""
    return Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None


def copy_sqlite(source, target):
    """Copy the SQLite file `source` to `target` in one read transaction; returns its page count."""
    target.unlink(missing_ok=True)
    src = sqlite3.connect(source, timeout=30)
    dst = sqlite3.connect(target)
    try:
        # pages=-1 copies everything in one step: one consistent snapshot, and
        # in WAL mode writers go on meanwhile (a stepwise copy would restart on each write).
        src.backup(dst, pages=-1)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        return dst.execute("PRAGMA page_count").fetchone()[0]
    finally:
        dst.close()
        src.close()


def backup(dest):
    """Copy the SQLite database and queue into folder `dest`; returns the files written."""
    database = sqlite_path(settings.DATABASE_URL)
    if database is None:
        raise BackupError(
            "DATABASE_URL is PostgreSQL: back it up with pg_dump, e.g. pg_dump -Fc -f litejobs.dump DBNAME"
        )
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    queue = sqlite_path(settings.QUEUE_URL)
    for source in [database] + ([queue] if queue is not None else []):
        if not source.exists():
            raise BackupError(f"{source} does not exist; check DATABASE_URL and QUEUE_URL")
        target = dest / source.name
        if target.resolve() == source.resolve():
            raise BackupError(f"DEST must be another folder than the one holding {source}")
        try:
            copy_sqlite(source, target)
        except sqlite3.Error as exc:
            raise BackupError(f"cannot copy {source}: {exc}") from None
        written.append(target)
    return written
