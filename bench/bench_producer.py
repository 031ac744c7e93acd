"""Enqueue N no-op jobs into one job system from a process of its own, as an
application beside a running consumer would; prints one JSON line
{"system", "n", "seconds"}.

    .venv/bin/python bench/bench_producer.py SYSTEM N
    .venv/bin/python bench/bench_producer.py SYSTEM:probe N [INTERVAL]

SYSTEM is litejobs (jobs.submit("ping"): the job's history row, then its
message), plain (plain huey, bench_plain_tasks), celery, rq, dramatiq or
procrastinate. Queues and URLs come from the environment the driver sets
(the same variables the consumers read). With `:probe`, each of the N calls is
a peer's latency probe carrying its enqueue time, INTERVAL seconds apart.
"""

import json
import sys
import time


def litejobs(n):
    import jobs

    for _ in range(n):
        jobs.submit("ping", {})


def plain(n):
    import bench_plain_tasks

    for i in range(n):
        bench_plain_tasks.noop(i, n)


def celery(n):
    import bench_peer_tasks

    for i in range(n):
        bench_peer_tasks.celery_noop.delay(i, n)


def rq(n):
    import bench_peer_tasks

    queue = bench_peer_tasks.rq_queue()
    for i in range(n):
        queue.enqueue(bench_peer_tasks.noop, i, n)


def dramatiq(n):
    import bench_peer_tasks

    for i in range(n):
        bench_peer_tasks.dramatiq_noop.send(i, n)


def procrastinate(n):
    import bench_peer_tasks

    with bench_peer_tasks.procrastinate_app.open():
        for i in range(n):
            bench_peer_tasks.procrastinate_noop.defer(i=i, n=n)


SYSTEMS = {f.__name__: f for f in (litejobs, plain, celery, rq, dramatiq, procrastinate)}


def probes(system, n, interval):
    """n probe calls of a peer, `interval` seconds apart on a fixed timetable."""
    import bench_peer_tasks as tasks

    if system == "procrastinate":
        opened = tasks.procrastinate_app.open()
        opened.__enter__()
        send = lambda: tasks.procrastinate_probe.defer(enqueued=time.time())  # noqa: E731
    elif system == "rq":
        queue = tasks.rq_queue()
        send = lambda: queue.enqueue(tasks.probe, time.time())  # noqa: E731
    else:
        task = {"celery": getattr(tasks, "celery_probe", None), "dramatiq": getattr(tasks, "dramatiq_probe", None)}
        send = {"celery": lambda: task["celery"].delay(time.time()),
                "dramatiq": lambda: task["dramatiq"].send(time.time())}[system]
    begin = time.monotonic()
    for i in range(n):
        pause = begin + i * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        send()


def main(argv):
    system, n = argv[0], int(argv[1])
    started = time.perf_counter()
    if system.endswith(":probe"):
        probes(system.split(":")[0], n, float(argv[2]) if len(argv) > 2 else 0.0)
    else:
        SYSTEMS[system](n)
    print(json.dumps({"system": system, "n": n, "seconds": round(time.perf_counter() - started, 3)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
