"""litejobs backup and restore: one checked archive of everything litejobs keeps on disk.

`python web.py backup DEST [--keep N]` writes one file, `DEST/litejobs-<UTC time>.tar.gz`,
holding consistent snapshots of the SQLite database and queue (SQLite's online
backup API, taken while litejobs runs and writes), the uploads, incoming
originals, certificates, the mail outbox and the functions folder, and a
manifest of their SHA-256 sums signed with an HMAC under SECRET_KEY.

`python web.py restore ARCHIVE` checks the signature and every sum before it
touches anything, refuses while litejobs runs, then puts each part back where
the settings point; what was there before is moved into
`DATA_DIR/before-restore-<time>/`, never deleted.
"""

import datetime
import functools
import hashlib
import hmac
import io
import itertools
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

import settings

ARCHIVE_PREFIX = "litejobs-"
ARCHIVE_SUFFIX = ".tar.gz"
MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.hmac"
LAST_BACKUP_FILE = "last-backup.json"  # in DATA_DIR: read by /metrics
LOCK_FILE = "litejobs.lock"  # in DATA_DIR: held (shared) by every running web process and consumer


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says what to do instead."""


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


def parts():
    """{name in the archive: (where it lives, "sqlite" or "folder")} of everything backed up."""
    database = sqlite_path(settings.DATABASE_URL)
    if database is None:
        raise BackupError(
            "DATABASE_URL is PostgreSQL: back it up with pg_dump, e.g. pg_dump -Fc -f litejobs.dump DBNAME"
        )
    found = {"database.db": (database, "sqlite")}
    queue = sqlite_path(settings.QUEUE_URL)
    if queue is not None and os.path.realpath(queue) != os.path.realpath(database):  # the default: one file
        found["queue.db"] = (queue, "sqlite")
    for name, folder in (
        ("uploads", settings.UPLOAD_DIR),
        ("incoming", settings.INCOMING_DIR),
        ("certificates", settings.CERTIFICATE_DIR),
        ("outbox", settings.OUTBOX_DIR),
        ("functions", settings.FUNCTIONS_DIR),
    ):
        found[name] = (Path(folder), "folder")
    return found


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sign(manifest_bytes):
    """The HMAC-SHA256 of the manifest under SECRET_KEY, in hex."""
    return hmac.new(settings.SECRET_KEY.encode("utf-8"), manifest_bytes, hashlib.sha256).hexdigest()


def backup(dest, keep=None, now=None):
    """Write one archive into folder `dest`; with `keep`, delete all but the newest `keep`.

    Returns the archive's path. The archive is written under a temporary name
    and renamed when complete, so DEST never holds half an archive.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    now = now or datetime.datetime.now(datetime.UTC)
    archive = dest / f"{ARCHIVE_PREFIX}{now.strftime('%Y%m%dT%H%M%S%fZ')}{ARCHIVE_SUFFIX}"
    with tempfile.TemporaryDirectory(prefix=".litejobs-backup-", dir=dest) as scratch:
        files = {}  # archive name -> file on disk to put in
        for name, (source, kind) in parts().items():
            if kind == "sqlite":
                if not source.exists():
                    raise BackupError(f"{source} does not exist; check DATABASE_URL and QUEUE_URL")
                snapshot = Path(scratch) / name
                try:
                    copy_sqlite(source, snapshot)
                except sqlite3.Error as exc:
                    raise BackupError(f"cannot copy {source}: {exc}") from None
                files[name] = snapshot
            elif source.is_dir():  # a folder not made yet (no uploads, no functions) is left out
                for path in sorted(source.rglob("*")):
                    if path.is_file() and not path.is_symlink():
                        files[f"{name}/{path.relative_to(source).as_posix()}"] = path
        manifest = {
            "format": 1,
            "created_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "host": settings.HOSTNAME,
            "files": {name: {"sha256": _sha256(path), "size": path.stat().st_size} for name, path in files.items()},
        }
        manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
        partial = archive.with_name(archive.name + ".partial")
        with tarfile.open(partial, "w:gz") as tar:
            _add_bytes(tar, MANIFEST, manifest_bytes)
            _add_bytes(tar, SIGNATURE, sign(manifest_bytes).encode("ascii"))
            for name, path in files.items():
                # A file that changed since it was hashed fails restore's check: better
                # than an archive whose sums describe other bytes than it holds.
                tar.add(path, arcname=name, recursive=False)
        os.replace(partial, archive)
    record_last_backup(archive, now)
    if keep:
        prune(dest, keep)
    return archive


def _add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    tar.addfile(info, io.BytesIO(data))


def archives(dest):
    """The archives in folder `dest`, oldest first (their names sort by time)."""
    return sorted(Path(dest).glob(f"{ARCHIVE_PREFIX}*{ARCHIVE_SUFFIX}"))


def prune(dest, keep):
    """Delete all but the newest `keep` archives in `dest`; returns the deleted paths."""
    old = archives(dest)[:-keep] if keep > 0 else []
    for path in old:
        path.unlink(missing_ok=True)
    return old


def record_last_backup(archive, when):
    """Note the time of the last good backup for /metrics (a small file in DATA_DIR)."""
    note = {"timestamp": when.timestamp(), "archive": str(archive)}
    target = settings.DATA_DIR / LAST_BACKUP_FILE
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(note))
    os.replace(partial, target)


def last_backup_timestamp():
    """Unix time of the last backup made from this DATA_DIR, or None."""
    try:
        return float(json.loads((settings.DATA_DIR / LAST_BACKUP_FILE).read_text())["timestamp"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- Restore ---------------------------------------------------------------------------
def _read_checked(archive, into=None):
    """Check `archive`'s signature and every sum; with `into`, unpack it there too. Returns the manifest.

    Raises BackupError for a damaged, foreign or unreadable archive; nothing
    outside `into` is written.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            first, second = tar.next(), tar.next()
            if first is None or second is None or (first.name, second.name) != (MANIFEST, SIGNATURE):
                raise BackupError(f"{archive} is not a litejobs backup (no manifest first)")
            manifest_bytes = tar.extractfile(first).read()
            signature = tar.extractfile(second).read().decode("ascii", "replace").strip()
            if not hmac.compare_digest(signature, sign(manifest_bytes)):
                raise BackupError(
                    f"{archive}: the manifest's signature does not match: the archive was changed, "
                    "or made with another SECRET_KEY"
                )
            expected = json.loads(manifest_bytes)["files"]
            seen = set()
            for member in itertools.islice(tar, 2, None):  # the manifest and signature came first
                target = _safe_target(into or ".", member)
                if member.name not in expected or member.name in seen:
                    raise BackupError(f"{archive}: {member.name} is not in its manifest")
                seen.add(member.name)
                digest, source, handle = hashlib.sha256(), tar.extractfile(member), None
                if into is not None:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    handle = open(target, "wb")
                try:
                    for block in iter(functools.partial(source.read, 1 << 20), b""):
                        digest.update(block)
                        if handle is not None:
                            handle.write(block)
                finally:
                    if handle is not None:
                        handle.close()
                if digest.hexdigest() != expected[member.name]["sha256"]:
                    raise BackupError(f"{archive}: {member.name} does not match its SHA-256 sum: the archive is damaged")
            if seen != set(expected):
                raise BackupError(f"{archive}: files of its manifest are missing: {sorted(set(expected) - seen)[:5]}")
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupError(f"{archive} is damaged or not a litejobs backup: {type(exc).__name__}: {exc}") from None
    return json.loads(manifest_bytes)


def verify(archive):
    """Check `archive` without writing anything; returns its manifest or raises BackupError."""
    return _read_checked(archive)


def _safe_target(into, member):
    """Where a member unpacks; refuses links, devices and names leaving `into`."""
    path = Path(member.name)
    if not member.isfile() or path.is_absolute() or ".." in path.parts:
        raise BackupError(f"refusing archive member {member.name!r}: not a plain file inside the archive")
    return Path(into) / path


def running_lock():
    """Hold DATA_DIR's lock shared for this process's life: restore refuses while any holder runs.

    Returns the open file (keep it), or None where file locks are not
    available (Windows: restore then relies on the consumers' heartbeats).
    Exits with a message when a restore holds the lock.
    """
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(settings.DATA_DIR / LOCK_FILE, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit("litejobs: a restore of DATA_DIR is under way (web.py restore); start again when it has finished")
    return handle


def _exclusive_lock():
    """DATA_DIR's lock taken exclusively, or BackupError naming who holds it."""
    try:
        import fcntl
    except ImportError:
        return None
    settings.DATA_DIR.mkdir(parents=True, exist_ok=True)
    handle = open(settings.DATA_DIR / LOCK_FILE, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise BackupError(
            "litejobs is running on this DATA_DIR (a web process or consumer holds its lock): "
            "stop it first, e.g. sudo systemctl stop litejobs-web litejobs-consumer"
        ) from None
    return handle


def _live_consumers(database, now=None):
    """Consumers of the SQLite file `database` with a fresh heartbeat: [(id, seconds since)]."""
    if not database.exists():
        return []
    now = now or datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    cutoff = now - datetime.timedelta(seconds=settings.HEARTBEAT_TIMEOUT)
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
            rows = connection.execute(
                "SELECT id, last_heartbeat FROM worker WHERE stopped_at IS NULL AND last_heartbeat >= ?",
                (cutoff.isoformat(sep=" "),),
            ).fetchall()
    except sqlite3.Error:  # no worker table (yet) or an unreadable file: nothing to ask
        return []
    return [(worker, (now - datetime.datetime.fromisoformat(beat)).total_seconds()) for worker, beat in rows]


def restore(archive, now=None):
    """Put the backup `archive` back where the settings point; returns {part: where}.

    Checks everything before it changes anything: a damaged or foreign archive,
    or litejobs still running, raises BackupError and leaves every file as it was.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise BackupError(f"{archive}: no such file")
    targets = parts()
    verify(archive)  # before anything is written, the lock file included
    lock = _exclusive_lock()
    try:
        live = _live_consumers(targets["database.db"][0], now)
        if live:
            names = ", ".join(f"{worker} ({seconds:.0f} s ago)" for worker, seconds in live)
            raise BackupError(
                f"litejobs is running: consumers {names} sent a heartbeat within HEARTBEAT_TIMEOUT "
                f"({settings.HEARTBEAT_TIMEOUT:g} s); stop them first (a consumer killed just now counts "
                "until its heartbeat is that old)"
            )
        with tempfile.TemporaryDirectory(prefix=".litejobs-restore-", dir=settings.DATA_DIR) as scratch:
            manifest = _read_checked(archive, scratch)
            stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
            aside = settings.DATA_DIR / f"before-restore-{stamp}"
            restored = {}
            present = {name.split("/", 1)[0] for name in manifest["files"]}
            for name, (target, kind) in targets.items():
                if name not in present and kind == "sqlite":
                    continue  # e.g. a backup taken with the queue on Redis
                _move_aside(target, aside / name, kind)
                source = Path(scratch) / name
                if source.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(source), str(target))
                    restored[name] = str(target)
            return restored
    finally:
        if lock is not None:
            lock.close()


def _move_aside(target, keep_as, kind):
    """Move what is at `target` (and a database's -wal/-shm files) to `keep_as`."""
    companions = [Path(f"{target}-wal"), Path(f"{target}-shm")] if kind == "sqlite" else []
    for path, where in [(target, keep_as)] + [(c, Path(f"{keep_as}{c.name[len(target.name):]}")) for c in companions]:
        if path.exists():
            where.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(where))


def main(argv):
    """`web.py restore ARCHIVE`; returns the exit status or a message to exit with."""
    import argparse

    parser = argparse.ArgumentParser(prog="python web.py restore", description="check a backup archive and put it back")
    parser.add_argument("archive")
    args = parser.parse_args(argv)
    try:
        restored = restore(args.archive)
    except (BackupError, OSError) as exc:
        return f"litejobs: restore refused: {exc}"
    for part, where in restored.items():
        print(f"restored {part} to {where}")
    print("start litejobs again; what was there before is in DATA_DIR/before-restore-*")
    return 0
