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
