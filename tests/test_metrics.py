"""/metrics over real HTTP: labels fed by requests stay bounded, and who may read it."""

import random
import string

import metrics


def series(anonymous):
    text = anonymous.get("/metrics").text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("litejobs_http_requests_total{")}


def test_request_labels_stay_bounded_whatever_clients_send(anonymous):
    """Made-up methods, paths and both together fold into one label value each."""
    before = series(anonymous)
    rng = random.Random(15)
    for _ in range(60):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 2000)))
        path = "/" + "".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 300)))
        anonymous.request(method, "/api/v1/jobs")
        anonymous.request("GET", path)
        anonymous.request(method, "/api/v1/nothing/" + path)
    after = series(anonymous)
    new = after - before
    assert len(new) <= 6, sorted(new)[:10]
    assert all(len(label) < 200 for label in after)
    assert any('method="(other)"' in label for label in new)
    assert any('route="(unmatched)"' in label for label in after)


def test_known_methods_keep_their_names():
    metrics.count_request("/api/v1/jobs", "DELETE", 405)
    assert ("/api/v1/jobs", "DELETE", "405") in metrics._requests


def test_metrics_answer_loopback_only_in_production(anonymous, monkeypatch):
    import settings

    monkeypatch.setattr(settings, "ENV", "production")
    monkeypatch.setattr(settings, "METRICS_TOKEN", "")
    monkeypatch.setattr(settings, "METRICS_PUBLIC", False)
    assert anonymous.get("/metrics").status == 200  # the test server is reached over 127.0.0.1
    # Through the trusted proxy on 127.0.0.1, for a client elsewhere:
    remote = anonymous.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert remote.status == 403 and remote.json["error"]["code"] == "forbidden"
    monkeypatch.setattr(settings, "METRICS_PUBLIC", True)
    assert anonymous.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status == 200
    monkeypatch.setattr(settings, "METRICS_PUBLIC", False)
    monkeypatch.setattr(settings, "METRICS_TOKEN", "s3cret-token")
    token = {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer s3cret-token"}
    assert anonymous.get("/metrics", headers=token).status == 200
    monkeypatch.setattr(settings, "ENV", "development")
    monkeypatch.setattr(settings, "METRICS_TOKEN", "")
    assert anonymous.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"}).status == 200


def test_driver_text_stays_out_of_unauthenticated_answers(anonymous, tmp_path, caplog):
    import models

    secret_path = tmp_path / "no-such-dir" / "secret-name.db"
    models.db.initialize(models.open_database(f"sqlite:///{secret_path}"))
    ready = anonymous.get("/health/ready")
    assert ready.status == 503
    assert "secret-name" not in ready.text and "unable to open" not in ready.text.lower()
    request_id = ready.headers["X-Request-Id"]
    assert request_id in ready.text
    assert any(request_id in record.getMessage() for record in caplog.records)
    unauthenticated = anonymous.get("/api/v1/jobs", headers={"Authorization": "Bearer lj_whatever"})
    assert unauthenticated.status == 503 and "unable to open" not in unauthenticated.text.lower()
