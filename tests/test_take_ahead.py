"""Take-ahead (take_ahead.py): one take from the queue brings messages for a process's
other workers, best first; a message that waited too long turns it off for a while,
and what is still held goes back on its queue. On SQLite and Redis, for real."""

import threading

import pytest
from helpers import service_or_skip, use_redis

import jobs
import take_ahead
from jobs import huey, queue_of


@pytest.fixture(params=["sqlite", "redis"])
def storage(request, fresh_storage):
    if request.param == "redis":
        service_or_skip("Redis", use_redis)
    huey.serve(None)
    yield huey.storage
    huey.flush()


def submit(*values, priority=None):
    for value in values:
        jobs.submit("echo", {"value": value}, priority=priority)


def value_of(data):
    return huey.deserialize_task(data).kwargs["value"]


def test_one_take_brings_messages_for_the_other_workers_in_order(storage):
    submit(*range(6))
    wake = threading.Event()
    ahead = take_ahead.TakeAhead(wake)
    ahead.extra = 3

    assert value_of(ahead.take(storage)) == 0
    assert storage.queue_size() == 2  # four messages left the queue in one take
    assert wake.is_set()  # idle workers are told to look
    assert [value_of(ahead.take(storage)) for _ in range(3)] == [1, 2, 3]
    assert storage.queue_size() == 2  # those came from memory
    assert [value_of(ahead.take(storage)) for _ in range(2)] == [4, 5]
    assert ahead.take(storage) is None


def test_a_take_brings_the_best_messages_first(storage):
    submit("low-1", "low-2")
    submit("high", priority=10)
    ahead = take_ahead.TakeAhead(threading.Event())
    ahead.extra = 2
    assert [value_of(ahead.take(storage)) for _ in range(3)] == ["high", "low-1", "low-2"]


def test_a_message_that_waited_too_long_turns_take_ahead_off(storage, monkeypatch):
    monkeypatch.setattr(take_ahead, "MAX_WAIT", 0.0)
    submit(*range(5))
    ahead = take_ahead.TakeAhead(threading.Event())
    ahead.extra = 1
    assert value_of(ahead.take(storage)) == 0
    assert storage.queue_size() == 3
    assert value_of(ahead.take(storage)) == 1  # held, and waited longer than MAX_WAIT
    assert value_of(ahead.take(storage)) == 2
    assert storage.queue_size() == 2  # one message per take now: take-ahead is off


def test_what_is_still_held_goes_back_on_its_queue(storage):
    jobs.submit("echo", {"value": "default"})
    jobs.submit("echo", {"value": "emails"}, queue="emails")
    jobs.submit("echo", {"value": "default-2"})
    ahead = take_ahead.TakeAhead(threading.Event())
    ahead.extra = 2
    first = value_of(ahead.take(storage))
    assert storage.queue_size() == 0

    assert ahead.give_back(huey, queue_of, older_than=60) == 0  # nothing held that long
    assert ahead.give_back(huey, queue_of) == 2
    assert storage.queue_size() == 2
    held = {value_of(data): huey.deserialize_task(data) for data in [storage.dequeue(), storage.dequeue()]}
    assert {first, *held} == {"default", "emails", "default-2"}
    assert all(queue_of(message) == ("emails" if value == "emails" else "default") for value, message in held.items())
