"""Load: 50 concurrent clients for 60 s on 127.0.0.1 against `python web.py run
--no-consumer` plus a standalone `huey_consumer jobs.huey -w 4`, mixing enqueue
(POST /api/v1/jobs/ping, half the calls), get (GET /api/v1/jobs/{id} of a job
accepted earlier, a third) and list (GET /api/v1/jobs?limit=20, the rest);
first with the queue on SQLite, then on Redis (db 12, flushed). Prints
requests/s, p50/p99 latency per kind, errors by status, and at the end whether
every job accepted with 202 reached a terminal state (0 lost).

    .venv/bin/python bench/load.py [--clients 50] [--duration 60] [--queues sqlite,redis]

Not a timed test: a script whose figures go in BENCHMARKS.md.
"""

import argparse
import json
import os
import random
import sys
import threading
import time

import common

# Settings land in a scratch folder before litejobs is imported.
sys.path.insert(0, str(common.ROOT))
os.environ["DATA_DIR"] = str(common.scratch("load-driver"))
os.environ.setdefault("LOG_LEVEL", "WARNING")

import lj  # noqa: E402


def run(queue, clients=50, duration=60.0, workers=4, drain_timeout=300):
    data_dir = common.scratch(f"load-{queue}")
    queue_url = None
    if queue == "redis":
        common.reset_redis()
        queue_url = common.REDIS_URL
    port = common.free_port()
    env = common.service_env(data_dir, queue_url=queue_url, PORT=port)
    key = common.create_key(env)
    web = common.Process([common.PY, "web.py", "run", "--no-consumer"], env, data_dir / "web.log")
    consumer = common.Process(common.consumer_cmd("jobs.huey", workers), env, data_dir / "consumer.log")
    try:
        common.wait_http(port, process=web)
        accepted = []
        stats = {"enqueue": [], "get": [], "list": []}
        statuses, errors = {}, {}
        lock = threading.Lock()
        stop_at = time.monotonic() + duration

        def client(number):
            rng = random.Random(number)
            conn = common.Http(port, key)
            mine = {k: [] for k in stats}
            my_status, my_errors = {}, {}
            while time.monotonic() < stop_at:
                roll = rng.random()
                if roll < 0.5 or not accepted:
                    kind, method, path, body = "enqueue", "POST", "/api/v1/jobs/ping", {}
                elif roll < 0.83:
                    kind, method, path, body = "get", "GET", f"/api/v1/jobs/{rng.choice(accepted)}", None
                else:
                    kind, method, path, body = "list", "GET", "/api/v1/jobs?limit=20", None
                started = time.monotonic()
                try:
                    status, data = conn.request(method, path, body)
                except Exception as exc:  # noqa: BLE001 - counted by kind
                    my_errors[type(exc).__name__] = my_errors.get(type(exc).__name__, 0) + 1
                    conn.close()
                    continue
                mine[kind].append(time.monotonic() - started)
                my_status[status] = my_status.get(status, 0) + 1
                if kind == "enqueue" and status == 202:
                    accepted.append(json.loads(data)["id"])
            conn.close()
            with lock:
                for k, v in mine.items():
                    stats[k].extend(v)
                common.add_counts(statuses, my_status)
                common.add_counts(errors, my_errors)

        common.run_clients(client, clients, duration + 120)
        lj.use(env["DATABASE_URL"], env["QUEUE_URL"])
        started = time.monotonic()
        try:
            common.wait_until(lambda: lj.terminal_count(accepted) >= len(accepted), drain_timeout, 0.5, "drain")
        except TimeoutError:
            pass
        drained_s = round(time.monotonic() - started, 1)
        terminal = lj.terminal_count(accepted)
        counts = lj.statuses()
        lj.close()
    finally:
        web.stop()
        consumer.stop()
    total = sum(len(v) for v in stats.values())
    everything = [x for v in stats.values() for x in v]
    return {
        "queue": queue,
        "clients": clients,
        "duration_s": duration,
        "requests_per_s": round(total / duration, 1),
        "p50_ms": common.ms(common.percentile(everything, 50)),
        "p99_ms": common.ms(common.percentile(everything, 99)),
        "by_kind": {
            k: {
                "n": len(v),
                "p50_ms": common.ms(common.percentile(v, 50)),
                "p99_ms": common.ms(common.percentile(v, 99)),
            }
            for k, v in stats.items()
        },
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": sum(v for k, v in statuses.items() if k >= 400) + sum(errors.values()),
        "exceptions": errors,
        "accepted": len(accepted),
        "terminal": terminal,
        "lost": len(accepted) - terminal,
        "drained_after_s": drained_s,
        "job_statuses": counts,
        "commands": [common.shown(web.args), common.shown(consumer.args)],
    }


def report(result):
    print(
        f"load, queue on {result['queue']}: {result['clients']} clients, {result['duration_s']:g} s: "
        f"{result['requests_per_s']:,.0f} requests/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms"
    )
    for kind, data in result["by_kind"].items():
        print(f"    {kind:8} {data['n']:7,} calls  p50 {data['p50_ms']} ms  p99 {data['p99_ms']} ms")
    print(f"    statuses {result['statuses']}; errors {result['errors']} {result['exceptions'] or ''}")
    print(
        f"    accepted {result['accepted']:,}, terminal {result['terminal']:,} "
        f"({result['drained_after_s']} s after the load): {result['lost']} lost"
    )
    print(f"    {' + '.join(result['commands'])}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent keep-alive clients (50)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per queue (60)")
    parser.add_argument("--queues", default="sqlite,redis", help="queue storages to run, in order")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    results = []
    try:
        for queue in args.queues.split(","):
            result = run(queue.strip(), args.clients, args.duration)
            report(result)
            results.append(result)
    finally:
        common.cleanup()
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0 if all(r["errors"] == 0 and r["lost"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
