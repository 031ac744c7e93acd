"""The web process: HTTP enqueue under load beside the ceiling (a bare bottle +
gevent app, bench/bench_ceiling.py, driven by the same client), synchronous
invoke (?wait=), and the memory footprint of `web.py run` idle and after a
drain, all against real `python web.py run` processes on 127.0.0.1.

    .venv/bin/python bench/web_rows.py --profile [--seconds 5]   # cProfile of the enqueue path
"""

import json
import time

import common

if __name__ == "__main__":
    common.driver_setup()

import lj  # noqa: E402


def http_enqueue(clients=16, duration=20.0, url=None, **settings):
    """POST /api/v1/jobs/ping from `clients` keep-alive connections for `duration` s,
    then POST /api/v1/jobs/echo?wait=5 one at a time on the same server.
    With `url`, the app database and the queue are both there (PostgreSQL);
    `settings` go into the server's environment (WEB_PROCESSES=2)."""
    data_dir = common.scratch("http-postgresql" if url else "http")
    env = common.service_env(data_dir, url, url)
    key = common.create_key(env)
    process, port, env = common.start_web(data_dir, database_url=url, queue_url=url, **settings)
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


def ceiling(clients=16, duration=20.0):
    """The same client as http_enqueue against the bare bottle + gevent app."""
    data_dir = common.scratch("ceiling")
    port = common.free_port()
    cmd = [common.PY, str(common.BENCH / "bench_ceiling.py"), str(port)]
    process = common.Process(cmd, common.service_env(data_dir), data_dir / "ceiling.log")
    try:
        common.wait_http(port, process=process)
        load = common.hammer(port, None, lambda c, i: ("POST", "/api/v1/jobs/ping", {}), clients, duration)
    finally:
        process.stop()
    latencies = load["latencies"]
    ok = load["statuses"].get(202, 0)
    return {
        "requests_per_s": round(ok / duration, 1),
        "p50_ms": common.ms(common.percentile(latencies, 50)),
        "p99_ms": common.ms(common.percentile(latencies, 99)),
        "errors": sum(n for code, n in load["statuses"].items() if code != 202) + sum(load["errors"].values()),
        "command": common.shown(cmd),
    }


def profile_enqueue(seconds=5.0, clients=16, top=25):
    """cProfile of `web.py run --no-consumer` while `clients` POST pings for `seconds`;
    prints the functions with the most time of their own and below them."""
    import pstats

    data_dir = common.scratch("profile")
    env = common.service_env(data_dir)
    key = common.create_key(env)
    port = common.free_port()
    out = data_dir / "web.prof"
    env = common.service_env(data_dir, PORT=port)
    cmd = [common.PY, "-m", "cProfile", "-o", str(out), "web.py", "run", "--no-consumer"]
    web = common.Process(cmd, env, data_dir / "web.log")
    try:
        common.wait_http(port, process=web)
        load = common.hammer(port, key, lambda c, i: ("POST", "/api/v1/jobs/ping", {}), clients, seconds)
    finally:
        web.stop()
    print(f"{load['statuses']} in {seconds:g} s under cProfile ({common.shown(cmd)})")
    keep = common.BENCH / "results" / f"enqueue-{time.strftime('%Y%m%d-%H%M%S')}.prof"
    keep.parent.mkdir(exist_ok=True)
    keep.write_bytes(out.read_bytes())
    print(f"profile kept in {keep.relative_to(common.ROOT)} (python -m pstats {keep.relative_to(common.ROOT)})")
    stats = pstats.Stats(str(keep))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


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


def with_children_mb(pid):
    """Resident MiB of a process and its children (`web.py run` and its consumer)."""
    return sum(common.rss_mb(p) for p in [pid, *common.children(pid)])


def footprint(n=20000, timeout=300):
    """RSS of `web.py run` (web process and its consumer) idle and after draining
    `n` jobs (also timed), and of `web.py run --no-consumer` idle."""
    data_dir = common.scratch("footprint")
    env = common.service_env(data_dir)
    web, port, env = common.start_web(data_dir)
    time.sleep(3)
    rss_idle = with_children_mb(web.pid)
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
        rss_after = with_children_mb(web.pid)
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
    duration = 5.0 if quick else duration
    data = http_enqueue(clients, duration)
    sync = data.pop("sync")
    top = ceiling(clients, duration)
    two = http_enqueue(clients, duration, WEB_PROCESSES=2)
    two.pop("sync")
    ratio = data["requests_per_s"] / top["requests_per_s"]
    ratio_two = two["requests_per_s"] / top["requests_per_s"]
    return [
        {
            "id": "http-ceiling",
            "benchmark": f"HTTP enqueue against its ceiling: POST /api/v1/jobs/ping vs a bare bottle + gevent app "
            f"(TCP_NODELAY, 202 and a small JSON body), same {clients} keep-alive clients, {duration:g} s each",
            "litejobs": f"{data['requests_per_s']:,.0f} jobs/s",
            "baseline": f"bare app {top['requests_per_s']:,.0f} requests/s",
            "result": f"{ratio:.2f}×; bare app p50 {top['p50_ms']} / p99 {top['p99_ms']} ms, {top['errors']} errors",
            "target": "≥ 0.6×",
            "met": ratio >= 0.6,
            "data": {**top, "ratio": round(ratio, 3)},
        },
        {
            "id": "http-ceiling-2-web",
            "benchmark": f"HTTP enqueue against its ceiling with WEB_PROCESSES=2 (two web processes on one port, "
            f"SO_REUSEPORT) and the consumer, same {clients} clients, {duration:g} s",
            "litejobs": f"{two['requests_per_s']:,.0f} jobs/s",
            "baseline": f"bare app {top['requests_per_s']:,.0f} requests/s",
            "result": f"{ratio_two:.2f}×; p50 {two['p50_ms']} / p99 {two['p99_ms']} ms, {two['errors']} errors; "
            f"{two['terminal_after']:,} of {two['accepted']:,} accepted jobs terminal {two['backlog_drained_s']} s after the load",
            "target": "≥ 0.6×",
            "met": ratio_two >= 0.6,
            "data": {**two, "ratio": round(ratio_two, 3), "command": "WEB_PROCESSES=2 " + two["command"]},
        },
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
            "benchmark": f"footprint (RSS): `web.py run`, web process and its consumer, idle and after draining {n:,} jobs",
            "litejobs": f"{data['web_idle_mb']:.0f} MB idle, {data['web_after_drain_mb']:.0f} MB after the drain",
            "baseline": "",
            "result": f"`web.py run --no-consumer` idle {data['web_no_consumer_idle_mb']:.0f} MB",
            "target": "web + consumer ≤ 120 MB after the drain",
            "met": data["web_after_drain_mb"] <= 120,
            "data": data,
        },
    ]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="store_true", help="cProfile the enqueue path of web.py run")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    try:
        if args.profile:
            profile_enqueue(args.seconds)
        else:
            for row in rows(quick=True):
                print(f"{row['benchmark']}: {row['litejobs']}  {row['baseline']}  {row['result']}")
    finally:
        common.cleanup()
