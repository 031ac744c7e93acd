from helpers import assert_error



def test_echo_waits_for_result(client, consumer):
    reply = client.post("/api/v1/jobs/echo?wait=5", {"value": "hello"})
    assert reply.status == 200, reply.body
    job = reply.json
    assert job["status"] == "succeeded" and job["result"] == "hello"


def test_queue_backends_run_jobs(client, consumer, backend):
    reply = client.post("/api/v1/jobs/echo?wait=10", {"value": [1, 2]})
    assert reply.status == 200, reply.body
    assert reply.json["result"] == [1, 2]


def test_missing_key_is_401(anonymous):
    assert_error(anonymous.get("/api/v1/functions"), 401, "unauthorized")
