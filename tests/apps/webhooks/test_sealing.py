"""Secrets at rest: webhook secrets sealed with a key from SECRET_KEY (sealing.py), and
DATA_DIR's files readable by litejobs' own user only."""

import os
import stat
import subprocess
import sys

import pytest

import models
import sealing
from apps.webhooks import models as webhooks
from apps.webhooks.tasks import deliver_webhook
from webprocess import ROOT, cli_env


def test_sealed_values_open_only_with_the_same_secret_key():
    sealed = sealing.seal("whsec_abc", secret_key="k" * 40)
    assert sealed.startswith(sealing.PREFIX) and "whsec_abc" not in sealed
    assert sealing.unseal(sealed, secret_key="k" * 40) == "whsec_abc"
    assert sealing.seal("whsec_abc", secret_key="k" * 40) != sealed  # a fresh nonce every time
    with pytest.raises(sealing.UnsealError):
        sealing.unseal(sealed, secret_key="other" * 10)


@pytest.mark.parametrize("position", [len(sealing.PREFIX) + 2, -30, -3])
def test_a_tampered_sealed_value_does_not_open(position):
    sealed = sealing.seal("whsec_" + "x" * 43)
    flipped = "A" if sealed[position] != "A" else "B"
    with pytest.raises(sealing.UnsealError):
        sealing.unseal(sealed[:position] + flipped + sealed[position + 1 :])


def test_plain_values_from_before_sealing_still_read():
    assert sealing.unseal("whsec_plain") == "whsec_plain"


def test_webhook_secret_is_stored_sealed_and_shown_once(client, tmp_path, monkeypatch):
    monkeypatch.setattr(webhooks.settings, "WEBHOOK_ALLOW_PRIVATE", True)
    reply = client.post("/api/v1/webhooks", {"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]})
    assert reply.status == 201, reply.body
    plain = reply.json["secret"]
    row = webhooks.Webhook.get_by_id(int(reply.json["id"]))
    assert row.secret != plain and sealing.is_sealed(row.secret) and row.signing_secret == plain
    models.db.close()
    with open(tmp_path / "app.db", "rb") as database:  # a copied database alone does not reveal it
        assert plain.encode() not in database.read()
    assert os.path.exists(tmp_path / "app.db-wal") is False or plain.encode() not in (tmp_path / "app.db-wal").read_bytes()


def test_plain_rows_are_sealed_at_start_and_keep_signing_the_same():
    row = webhooks.Webhook.create(url="https://example.com/old", events='["job.failed"]', secret="whsec_old_plain")
    assert row.signing_secret == "whsec_old_plain"
    assert webhooks.Webhook.seal_plain_secrets() == 1
    assert webhooks.Webhook.seal_plain_secrets() == 0
    again = webhooks.Webhook.get_by_id(row.id)
    assert sealing.is_sealed(again.secret) and again.signing_secret == "whsec_old_plain"


def test_a_secret_sealed_under_another_key_fails_the_delivery_once(monkeypatch):
    import jobs

    webhook = webhooks.Webhook.subscribe("https://example.com/hook", ["job.failed"])
    monkeypatch.setattr(sealing.settings, "SECRET_KEY", "another key entirely, 32+ characters")
    delivery = webhooks.WebhookDelivery.create(webhook=webhook, event_id="e1", event="job.failed", payload="{}")
    with pytest.raises(jobs.JobError):
        deliver_webhook.call_local(delivery.id)
    assert webhooks.WebhookDelivery.get_by_id(delivery.id).status == "failed"  # no retry loop


def test_data_dir_files_are_private_whatever_the_umask(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    run = subprocess.run(
        [sys.executable, "web.py", "create-key", "x"], cwd=ROOT, env=cli_env(data), capture_output=True, text=True,
        timeout=60, preexec_fn=lambda: os.umask(0o022),
    )
    assert run.returncode == 0, run.stderr
    backup = subprocess.run(
        [sys.executable, "web.py", "backup", str(tmp_path / "backups")], cwd=ROOT, env=cli_env(data),
        capture_output=True, text=True, timeout=60, preexec_fn=lambda: os.umask(0o022),
    )
    assert backup.returncode == 0, backup.stderr
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()] + [p for p in (tmp_path / "backups").rglob("*") if p.is_file()]
    assert any(p.name == "litejobs.db" for p in files) and len(files) >= 3
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))
    for folder in [p for p in data.rglob("*") if p.is_dir()] + [tmp_path / "backups"]:
        assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0, folder
