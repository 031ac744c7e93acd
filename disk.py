"""litejobs disk: the free space kept on the data disk, and write-ahead logs kept small.

An enqueue is refused (jobs.InsufficientStorage, 507) while the disk holding the SQLite files (and
DATA_DIR) has less free space than DISK_RESERVE, before SQLite itself fails on
a full disk; it clears by itself once space is back. Each SQLite file's WAL
is checkpointed at a size fitted to its disk (models.wal_pages) and by every
consumer heartbeat, and truncated back afterwards (journal_size_limit).
"""

import shutil
from pathlib import Path

from huey.storage import SqliteStorage
from peewee import SqliteDatabase

import settings
from models import checkpoint, db

DEFAULT_RESERVE_PERCENT = 5.0
DEFAULT_RESERVE_CAP = 50 * 1024 * 1024


def reserve_bytes(total):
    """DISK_RESERVE in bytes for a disk of `total` bytes."""
    if settings.DISK_RESERVE is None:
        return min(total * DEFAULT_RESERVE_PERCENT / 100, DEFAULT_RESERVE_CAP)
    percent, size = settings.DISK_RESERVE
    return total * percent / 100 if percent is not None else size


_folders = {}  # (DATA_DIR, database) -> folders: resolving paths costs more than the check


def watched_folders():
    """The folders whose disks hold litejobs' files: DATA_DIR and the app database's, if SQLite."""
    key = (settings.DATA_DIR, db.obj)
    if key not in _folders:
        folders = {Path(settings.DATA_DIR)}
        if isinstance(db.obj, SqliteDatabase):
            folders.add(Path(db.obj.database).resolve().parent)
        _folders.clear()
        _folders[key] = sorted(folders)
    return _folders[key]


def short_of_space():
    """A message naming the first disk under its reserve, or None."""
    for folder in watched_folders():
        try:
            usage = shutil.disk_usage(folder)
        except OSError:  # the folder is gone: the database check reports that
            continue
        reserve = reserve_bytes(usage.total)
        if usage.free < reserve:
            return (
                f"only {usage.free / 2**20:.1f} MB free on the disk of {folder}, under DISK_RESERVE "
                f"({reserve / 2**20:.1f} MB): enqueues are refused until space is freed"
            )
    return None


def checkpoint_all(queue_storage):
    """Copy the WALs of the app database and a SQLite queue into their files
    (PASSIVE: never waits for readers or writers); the heartbeat calls it."""
    checkpoint()
    if isinstance(queue_storage, SqliteStorage):
        queue_storage.sql("pragma wal_checkpoint(PASSIVE)", results=True)
