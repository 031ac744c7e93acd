"""The web process: HTTP enqueue under load, synchronous invoke (?wait=), and the
memory footprint of `web.py run` idle and after a drain, all against real
`python web.py run` processes on 127.0.0.1.
"""

import json
import time

import common
import lj


def http_enqueue(clients=16, duration=20.0, url=None):
    """POST /api/v1/jobs/ping from `clients` keep-alive connections for `duration` s,
    then POST /api/v1/jobs/echo?wait=5 one at a time on the same server.
    With `url`, the app database and the queue are both there (PostgreSQL)."""
    data_dir = common.scratch("http-postgresql" if url else "http")
    env = common.service_env(data_dir, url, url)
    key = common.create_key(env)
    process, port, env = common.start_web(data_dir, database_url=url, queue_url=url)
    try:
        time.sleep(1)
        rss_idle = common.rss_mb(process.pid)
        load = common.hammer(port, key, lambda c, i: ("POST", "/api/v1/jobs/ping", {}), clients, duration)
        rss_loaded = common.rss_mb(process.pid)
        accepted = load.pop("accepted")
        lj.use(env["DATABASE_URL"], env["QUEUE_URL"])
        started = time.monotonic()
        try:
            common.wait_until(lambda: lj.terminal_count(accepted) >= len(accepted), 180, 0.5, "backlog")
            backlog_s = round(time.monotonic() - started, 1)
        except TimeoutError:
            backlog_s = None
        terminal = lj.terminal_count(accepted)
        lj.close()
        sync = sync_invoke(port, key)
    finally:
        process.stop()
    latencies = load.pop("latencies")
    ok = load["statuses"].get(202, 0)
    errors = sum(n for code, n in load["statuses"].items() if code != 202) + sum(load["errors"].values())
    return {
        "requests_per_s": round(ok / duration, 1),
        "requests": load["requests"],
        "p50_ms": common.ms(common.percentile(latencies, 50)),
        "p99_ms": common.ms(common.percentile(latencies, 99)),
        "statuses": {str(k): v for k, v in load["statuses"].items()},
        "exceptions": load["errors"],
        "errors": errors,
        "accepted": len(accepted),
        "terminal_after": terminal,
        "backlog_drained_s": backlog_s,
        "rss_idle_mb": round(rss_idle, 1),
        "rss_under_load_mb": round(rss_loaded, 1),
        "sync": sync,
        "command": common.shown(process.args),
        "clients": clients,
        "duration_s": duration,
    }


def sync_invoke(port, key, n=200):
    """Round trips of POST /api/v1/jobs/echo?wait=5, one at a time."""
    conn = common.Http(port, key)
    latencies, bad = [], 0
    for i in range(n):
        started = time.monotonic()
        status, body = conn.request("POST", "/api/v1/jobs/echo?wait=5", {"value": i})
        took = time.monotonic() - started
        if status == 200 and json.loads(body).get("result") == i:
            latencies.append(took)
        else:
            bad += 1
    conn.close()
    return {
        "n": n,
        "p50_ms": common.ms(common.percentile(latencies, 50)),
        "p99_ms": common.ms(common.percentile(latencies, 99)),
        "errors": bad,
    }


def footprint(n=20000, timeout=300):
    """RSS of `web.py run` idle and after draining `n` jobs with its embedded
    consumer (also timed), and of `web.py run --no-consumer` idle."""
    data_dir = common.scratch("footprint")
    env = common.service_env(data_dir)
    web, port, env = common.start_web(data_dir)
    time.sleep(3)
    rss_idle = common.rss_mb(web.pid)
    web.stop()
    bare, _, _ = common.start_web(data_dir, "--no-consumer", name="web-bare")
    time.sleep(3)
    rss_bare = common.rss_mb(bare.pid)
    bare.stop()
    lj.use(env["DATABASE_URL"], env["QUEUE_URL"])
    lj.submit_many("ping", n)
    web, port, env = common.start_web(data_dir, name="web-drain")
    try:
        common.wait_until(lambda: lj.terminal_count() >= n, timeout, interval=0.2, message=f"{n} jobs drained")
        time.sleep(1)
        rss_after = common.rss_mb(web.pid)
        first, last, count = lj.span()
    finally:
        web.stop()
        lj.close()
    return {
        "web_idle_mb": round(rss_idle, 1),
        "web_after_drain_mb": round(rss_after, 1),
        "web_no_consumer_idle_mb": round(rss_bare, 1),
        "embedded_drain_jobs_per_s": round(count / (last - first).total_seconds(), 1),
        "command": common.shown(web.args),
    }


def rows(quick=False, clients=16, duration=20.0):
    data = http_enqueue(clients, 5.0 if quick else duration)
    sync = data.pop("sync")
    return [
        {
            "id": "http-enqueue",
            "benchmark": f"HTTP enqueue: POST /api/v1/jobs/ping, {data['clients']} keep-alive clients, "
            f"{data['duration_s']:g} s, `web.py run` on SQLite",
            "litejobs": f"{data['requests_per_s']:,.0f} jobs/s",
            "baseline": "",
            "result": f"p50 {data['p50_ms']} / p99 {data['p99_ms']} ms, {data['errors']} errors; "
            f"{data['terminal_after']:,} of {data['accepted']:,} accepted jobs terminal "
            f"{data['backlog_drained_s']} s after the load",
            "target": "≥ 1,000 jobs/s, 0 errors",
            "met": data["requests_per_s"] >= 1000 and data["errors"] == 0,
            "data": data,
        },
        {
            "id": "sync-invoke",
            "benchmark": f"sync invoke: POST /api/v1/jobs/echo?wait=5, {sync['n']} calls one at a time, SQLite",
            "litejobs": f"p50 {sync['p50_ms']} / p99 {sync['p99_ms']} ms",
            "baseline": "",
            "result": f"{sync['errors']} errors",
            "target": "—",
            "met": None,
            "data": {**sync, "command": data["command"]},
        },
    ]


def postgresql_rows(quick=False, clients=16, duration=20.0):
    """HTTP enqueue with the app database and the queue on PostgreSQL (`web.py run` and its consumer)."""
    common.reset_postgres()
    data = http_enqueue(clients, 5.0 if quick else duration, url=common.postgres_url())
    data.pop("sync")
    return [
        {
            "id": "http-enqueue-postgresql",
            "benchmark": f"HTTP enqueue: POST /api/v1/jobs/ping, {data['clients']} keep-alive clients, "
            f"{data['duration_s']:g} s, `web.py run` on PostgreSQL (database and queue)",
            "litejobs": f"{data['requests_per_s']:,.0f} jobs/s",
            "baseline": "",
            "result": f"p50 {data['p50_ms']} / p99 {data['p99_ms']} ms, {data['errors']} errors; "
            f"{data['terminal_after']:,} of {data['accepted']:,} accepted jobs terminal "
            f"{data['backlog_drained_s']} s after the load",
            "target": "0 errors",
            "met": data["errors"] == 0,
            "data": data,
        }
    ]


def footprint_rows(n=20000):
    data = footprint(n)
    return [
        {
            "id": "drain-embedded",
            "benchmark": f"drain {n:,} no-op jobs with the consumer inside `web.py run` (WORKERS=4), SQLite",
            "litejobs": f"{data['embedded_drain_jobs_per_s']:,.0f} jobs/s",
            "baseline": "",
            "result": "compare with the standalone consumer's drain row",
            "target": "—",
            "met": None,
            "data": {"embedded_drain_jobs_per_s": data["embedded_drain_jobs_per_s"], "command": data["command"]},
        },
        {
            "id": "footprint",
            "benchmark": f"footprint (RSS): `web.py run` idle, and after draining {n:,} jobs",
            "litejobs": f"{data['web_idle_mb']:.0f} MB idle, {data['web_after_drain_mb']:.0f} MB after the drain",
            "baseline": "",
            "result": f"`web.py run --no-consumer` idle {data['web_no_consumer_idle_mb']:.0f} MB",
            "target": "web + consumer ≤ 120 MB after the drain",
            "met": data["web_after_drain_mb"] <= 120,
            "data": data,
        },
    ]
