"""Backups that restore: one signed archive of the databases and files, taken
while jobs are written; restore checks it before it touches anything and
refuses while litejobs runs."""

import hashlib
import io
import sqlite3
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
from helpers import base_env, wait_until

import backup
import jobs
import metrics
import settings
from models import Worker, utcnow

ROOT = Path(__file__).resolve().parent.parent


def cli(tmp_path, *args, **env):
    """Run `python web.py ARGS` with settings from `env` only (not the test's own)."""
    environ = base_env()
    environ.update({"LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), "SECRET_KEY": "k" * 40, **env})
    return subprocess.run(
        [sys.executable, "web.py", *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )


def tree(folder):
    """{relative path: sha256} of every file under `folder`."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def rows(database):
    """{table: sorted rows} of every table of a SQLite file."""
    with sqlite3.connect(database) as connection:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(map(repr, connection.execute(f'SELECT * FROM "{t}"'))) for t in tables}


@pytest.fixture
def site(tmp_path):
    """A DATA_DIR with files in every backed-up folder, the test's databases and a functions folder."""
    data = tmp_path / "data"
    for relative, content in {
        "uploads/ab12cd34ef56gh78/web.webp": b"RIFF\x00webp bytes",
        "incoming/7.jpg": b"\xff\xd8 jpeg",
        "certificates/ABCD-1234.pdf": b"%PDF-1.4 certificate",
        "outbox/20261207-welcome.eml": "Subject: Welcome\n\nHällo".encode(),
    }.items():
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        (data / relative).write_bytes(content)
    (tmp_path / "functions").mkdir()
    (tmp_path / "functions" / "reports.py").write_text("def nightly():\n    return 1\n")
    return {
        "DATA_DIR": str(data),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "QUEUE_URL": f"sqlite:///{tmp_path / 'app.db'}",  # the default: the queue in the database
        "FUNCTIONS_DIR": str(tmp_path / "functions"),
    }


def test_backup_taken_while_jobs_are_written_restores_every_row_and_file(tmp_path, site):
    stop, submitted = threading.Event(), []

    def keep_submitting():
        while not stop.is_set():
            submitted.append(jobs.submit("echo", {"value": len(submitted)})[0].id)

    writer = threading.Thread(target=keep_submitting, daemon=True)
    writer.start()
    try:
        wait_until(lambda: len(submitted) > 50, timeout=20, message="jobs being written")
        during = cli(tmp_path, "backup", str(tmp_path / "archives"), **site)
    finally:
        stop.set()
        writer.join(10)
    assert during.returncode == 0, during.stderr
    first = Path(during.stdout.split("backed up to ")[1].strip())
    assert first.parent == tmp_path / "archives" and first.name.endswith(".tar.gz")

    # Restored into a fresh DATA_DIR: one consistent snapshot of what was written by then.
    fresh = {"DATA_DIR": str(tmp_path / "fresh"), "FUNCTIONS_DIR": str(tmp_path / "fresh-functions")}
    restored = cli(tmp_path, "restore", str(first), **fresh)
    assert restored.returncode == 0, restored.stderr
    database = tmp_path / "fresh" / "litejobs.db"
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count = connection.execute("SELECT COUNT(*) FROM job").fetchone()[0]
        enqueued = connection.execute("SELECT SUM(count) FROM job_count WHERE status = 'enqueued'").fetchone()[0]
    assert 50 <= count <= len(submitted) and enqueued == count  # the counters copied in the same instant
    source_jobs = set(rows(tmp_path / "app.db")["job"])
    # Every restored row as it was written; a row caught `pending` (its queue message not
    # yet confirmed) was confirmed after the snapshot, so only its id is compared.
    confirmed = {row for row in rows(database)["job"] if ", 'pending', " not in row}
    assert confirmed <= source_jobs
    ids = lambda jobs: {row.split("'")[1] for row in jobs}  # noqa: E731
    assert ids(rows(database)["job"]) <= ids(source_jobs)

    # Once the writers stopped, a second backup (keeping only it) restores everything exactly.
    after = cli(tmp_path, "backup", str(tmp_path / "archives"), "--keep", "1", **site)
    assert after.returncode == 0, after.stderr
    (second,) = backup.archives(tmp_path / "archives")
    assert second != first
    again = {"DATA_DIR": str(tmp_path / "again"), "FUNCTIONS_DIR": str(tmp_path / "again-functions")}
    assert cli(tmp_path, "restore", str(second), **again).returncode == 0
    assert rows(tmp_path / "again" / "litejobs.db") == rows(tmp_path / "app.db")  # the queue's messages too
    assert not (tmp_path / "again" / "queue.db").exists()
    for folder in ("uploads", "incoming", "certificates", "outbox"):
        assert tree(tmp_path / "again" / folder) == tree(Path(site["DATA_DIR"]) / folder) != {}
    assert tree(tmp_path / "again-functions") == tree(tmp_path / "functions")


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite(archive, out, change):
    """A copy of `archive` at `out` whose members pass through `change(name, bytes) -> bytes`."""
    with tarfile.open(archive) as source, tarfile.open(out, "w:gz") as target:
        for member in source:
            data = change(member.name, source.extractfile(member).read())
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    return out


def test_damaged_or_foreign_archive_is_refused_and_nothing_is_touched(tmp_path, site):
    made = cli(tmp_path, "backup", str(tmp_path / "archives"), **site)
    assert made.returncode == 0, made.stderr
    (archive,) = backup.archives(tmp_path / "archives")
    # An existing installation that a bad archive must leave exactly as it is.
    target = {"DATA_DIR": str(tmp_path / "live"), "FUNCTIONS_DIR": str(tmp_path / "live-functions")}
    (tmp_path / "live" / "uploads").mkdir(parents=True)
    (tmp_path / "live" / "uploads" / "keep.webp").write_bytes(b"mine")
    (tmp_path / "live" / "litejobs.db").write_bytes(b"not replaced")
    before = tree(tmp_path / "live")

    flipped = tmp_path / "flipped.tar.gz"
    flipped.write_bytes(archive.read_bytes())
    _flip(flipped, flipped.stat().st_size // 2)
    content = _rewrite(
        archive, tmp_path / "content.tar.gz", lambda name, data: data.replace(b"%PDF-1.4", b"%PDF-1.5")
    )
    manifest = _rewrite(
        archive, tmp_path / "manifest.tar.gz", lambda name, data: data.replace(b'"format": 1', b'"format": 2')
    )
    foreign = tmp_path / "foreign"
    assert cli(tmp_path, "backup", str(foreign), **{**site, "SECRET_KEY": "another key " * 4}).returncode == 0

    for bad, says in [
        (flipped, "damaged"),
        (content, "does not match its SHA-256 sum"),
        (manifest, "signature does not match"),
        (backup.archives(foreign)[0], "another SECRET_KEY"),
        (tmp_path / "app.db", "not a litejobs backup"),
    ]:
        result = cli(tmp_path, "restore", str(bad), **target)
        assert result.returncode != 0 and says in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert tree(tmp_path / "live") == before
        assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["litejobs.db", "uploads"]


def test_restore_refuses_while_litejobs_runs(tmp_path, site, monkeypatch):
    made = cli(tmp_path, "backup", str(tmp_path / "archives"), **site)
    (archive,) = backup.archives(tmp_path / "archives")
    assert made.returncode == 0
    # A process holding DATA_DIR's lock, as `web.py run` and every consumer do.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import backup, sys; lock = backup.running_lock(); print('held', flush=True); sys.stdin.read()"],
        cwd=ROOT,
        env={**base_env(), "PYTHONPATH": str(ROOT), **site},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree(site["DATA_DIR"])
        refused = cli(tmp_path, "restore", str(archive), **site)
        assert refused.returncode != 0 and "litejobs is running" in refused.stderr, refused.stderr
        assert "systemctl stop" in refused.stderr and tree(site["DATA_DIR"]) == before
    finally:
        holder.stdin.close()
        holder.wait(10)

    # No lock (another host, Windows) but a consumer heartbeat in the database: refused too.
    Worker.create(id="box:1:abc", host="box", pid=1, kind="thread", concurrency=1, last_heartbeat=utcnow())
    refused = cli(tmp_path, "restore", str(archive), **site)
    assert refused.returncode != 0 and "box:1:abc" in refused.stderr, refused.stderr
    Worker.update(stopped_at=utcnow()).execute()
    restored = cli(tmp_path, "restore", str(archive), **site)
    assert restored.returncode == 0, restored.stderr
    # What was there before is kept aside, not deleted.
    (aside,) = Path(site["DATA_DIR"]).glob("before-restore-*")
    assert (aside / "uploads" / "ab12cd34ef56gh78" / "web.webp").exists() and (aside / "database.db").exists()


def test_keep_prunes_old_archives_and_metric_shows_the_last_backup(tmp_path, site, monkeypatch):
    for _ in range(3):
        assert cli(tmp_path, "backup", str(tmp_path / "a"), "--keep", "2", **site).returncode == 0
    assert len(backup.archives(tmp_path / "a")) == 2
    assert cli(tmp_path, "backup", str(tmp_path / "a"), "--keep", "0", **site).returncode != 0

    monkeypatch.setattr(settings, "DATA_DIR", Path(site["DATA_DIR"]))
    stamp = backup.last_backup_timestamp()
    assert stamp is not None and abs(stamp - utcnow().timestamp()) < 120
    assert f"litejobs_last_backup_timestamp_seconds {stamp!r}" in metrics.render()
    monkeypatch.setattr(settings, "DATA_DIR", tmp_path / "never")
    assert "litejobs_last_backup_timestamp_seconds" not in metrics.render()
