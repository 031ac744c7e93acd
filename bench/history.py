"""History at scale: N job rows (10,000,000 in the full run) bulk-loaded into
the SQLite app database, then p95 of the API list (first page, a deep cursor,
filtered), one job by id and the dashboard overview against a real `web.py run
--no-consumer`, and the database's bytes per row; then, on a history of
PRUNE_ROWS (1,000,000), the `prune_job_history` task, run by a standalone
consumer, deletes them all in batches while two writers (one enqueueing in this
process, one over HTTP) note their longest pause.
"""

import datetime
import random
import re
import sqlite3
import subprocess
import threading
import time
import urllib.parse
import uuid

import common
import jobs
import lj
from models import Job, encode_cursor

NAMES = ("ping", "echo", "sleep", "fail")


def bulk_load(path, n, old_days=(31, 91), seed=7):
    """Insert n terminal jobs that ended 31 to 91 days ago (all due for pruning)."""
    rng = random.Random(seed)
    # Random (uuid4-like) ids, handed out in sorted order as time goes on: every index
    # then grows at its end, so 10M rows load in minutes, not hours. The ids read
    # back by the benchmark are picked at random positions, not neighbours.
    ids = sorted(rng.getrandbits(128) for _ in range(n))
    fields = Job._meta.sorted_fields
    defaults = {}
    for field in fields:
        value = field.default() if callable(field.default) else field.default
        defaults[field.name] = field.db_value(value)
    now = datetime.datetime.utcnow()
    span = (old_days[1] - old_days[0]) * 86400
    columns = ", ".join(f'"{f.column_name}"' for f in fields)
    sql = f'INSERT INTO "job" ({columns}) VALUES ({", ".join("?" * len(fields))})'

    names = [f.name for f in fields]
    fixed = {"args": "{}", "attempts": 1, "duration_ms": 2.0, "worker": "bench:1:Worker-1", "queue": "default"}
    template = [fixed.get(name, defaults[name]) for name in names]
    at = {name: names.index(name) for name in
          ("id", "name", "status", "result", "error", "enqueued_at", "started_at", "finished_at")}
    step = datetime.timedelta(milliseconds=3)

    def rows():
        # Oldest first, as a live history grows; ids are random (uuid4) as submit() makes them.
        for i in range(n):
            enqueued = now - datetime.timedelta(days=old_days[0], seconds=span * (1 - i / n))
            name = NAMES[i % 4]
            failed = name == "fail" or i % 50 == 0
            row = list(template)
            row[at["id"]] = str(uuid.UUID(int=ids[i], version=4))
            row[at["name"]] = name
            row[at["status"]] = "failed" if failed else "succeeded"
            row[at["result"]] = None if failed else '"pong"'
            row[at["error"]] = "JobError: boom" if failed else None
            row[at["enqueued_at"]] = str(enqueued)
            row[at["started_at"]] = str(enqueued + step)
            row[at["finished_at"]] = str(enqueued + step + step)
            yield row

    started = time.perf_counter()
    conn = sqlite3.connect(path)
    conn.execute("pragma journal_mode=off")  # a scratch file: no journal while loading
    conn.execute("pragma synchronous=off")
    conn.execute("pragma cache_size=-262144")
    # Indexes and triggers are set aside and made again after the load: building an
    # index from sorted rows at the end is many times faster than growing it row by row.
    # (The insert trigger counts enqueues for /metrics; these rows are not counted.)
    extras = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'job' AND sql IS NOT NULL "
        "AND type IN ('index', 'trigger')"
    ).fetchall()
    for kind, name, _ in extras:
        conn.execute(f'DROP {kind.upper()} "{name}"')
    with conn:
        conn.executemany(sql, rows())
    for _, _, create in extras:
        conn.execute(create)
    conn.execute("analyze")
    conn.execute("pragma journal_mode=wal")
    conn.close()
    return time.perf_counter() - started


def _timed(conn, path, n=200):
    latencies, bad = [], {}
    for i in range(n):
        target = path(i) if callable(path) else path
        started = time.monotonic()
        status, _ = conn.request("GET", target)
        latencies.append(time.monotonic() - started)
        if status != 200:
            bad[status] = bad.get(status, 0) + 1
    return {
        "p50_ms": common.ms(common.percentile(latencies, 50)),
        "p95_ms": common.ms(common.percentile(latencies, 95)),
        "errors": bad,
    }


def _dashboard_login(port, env):
    """A dashboard session (a user made with `web.py create-user`), or None without a dashboard."""
    if not (common.ROOT / "dashboard.py").exists():
        return None
    email, password = "bench@example.com", "bench-password-1"
    subprocess.run(
        [common.PY, "web.py", "create-user", email, "--admin", "--password", password],
        cwd=common.ROOT,
        env=env,
        capture_output=True,
        check=True,
    )
    conn = common.Http(port)
    status, body = conn.request("GET", "/login")
    match = re.search(rb'name="csrf_token" value="([^"]+)"', body)
    if status != 200 or not match:
        return None
    form = urllib.parse.urlencode(
        {"email": email, "password": password, "csrf_token": match.group(1).decode(), "next": "/"}
    ).encode()
    status, _ = conn.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
    return conn if status in (302, 303) else None


def _writer(stop, pauses, write, interval=0.01):
    """Call write() every `interval` s until `stop`; note how long each took."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            write()
            pauses.append(time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - a failed write is the finding
            pauses.append(float("inf"))
            print(f"history: writer failed: {exc}")
        time.sleep(interval)


def _loaded(n):
    """A scratch data folder with an API key and n bulk-loaded job rows; (data_dir, env, key, load_s)."""
    data_dir = common.scratch("history")
    env = common.service_env(data_dir)
    key = common.create_key(env)  # creates the tables too
    load_s = bulk_load(str(data_dir / "litejobs.db"), n)
    return data_dir, env, key, load_s


def run(n=10_000_000, requests=200, prune_rows=None, prune_timeout=900):
    data_dir, env, key, load_s = _loaded(n)
    size = (data_dir / "litejobs.db").stat().st_size
    lj.use(env["DATABASE_URL"], env["QUEUE_URL"])
    # Jobs at 2,000 random places of the history (rowids run 1..n in load order).
    rng = random.Random(3)
    rowids = ",".join(str(rng.randrange(n) + 1) for _ in range(2000))
    ids = [job_id for (job_id,) in Job._meta.database.execute_sql(f"SELECT id FROM job WHERE rowid IN ({rowids})")]
    deep = (
        Job.select(Job.enqueued_at, Job.id)
        .order_by(Job.enqueued_at.desc(), Job.id.desc())
        .offset(int(n * 0.9))
        .limit(1)
        .get()
    )
    cursor = encode_cursor(deep.enqueued_at, deep.id)
    lj.close()
    web, port, env = common.start_web(data_dir, "--no-consumer")
    result = {"rows": n, "bulk_load_s": round(load_s, 1), "database_bytes_per_row": round(size / n),
              "command": common.shown(web.args)}
    try:
        conn = common.Http(port, key)
        conn.request("GET", "/api/v1/jobs?limit=50")  # warm the page cache once
        result["list_first_page"] = _timed(conn, "/api/v1/jobs?limit=50", requests)
        result["list_deep_cursor"] = _timed(conn, f"/api/v1/jobs?limit=50&cursor={cursor}", requests)
        result["list_failed"] = _timed(conn, "/api/v1/jobs?status=failed&limit=50", requests)
        result["list_name_status"] = _timed(conn, "/api/v1/jobs?name=fail&status=failed&limit=50", requests)
        result["job_by_id"] = _timed(conn, lambda i: f"/api/v1/jobs/{ids[i % len(ids)]}", requests)
        try:
            session = _dashboard_login(port, env)
            if session is not None:
                result["dashboard_overview"] = _timed(session, "/", max(20, requests // 4))
        except OSError as exc:
            result["dashboard_error"] = f"{type(exc).__name__}: {exc}; web log: {web.tail(5)}"
        if not web.alive():
            raise RuntimeError(f"web.py run exited with {web.popen.returncode}: {web.tail(10)}")
    finally:
        web.stop()
        lj.close()
    common.shutil.rmtree(data_dir, ignore_errors=True)  # 10M rows take gigabytes
    if prune_rows:
        result["prune"] = prune_run(prune_rows, prune_timeout)
    return result


def prune_run(n, timeout):
    """The production layout: the web process serves, a standalone consumer runs the
    prune. (In `web.py run` the prune would run in the web process's own event loop,
    and every HTTP request would wait for each batch it deletes.)"""
    data_dir, env, key, load_s = _loaded(n)
    web, port, env = common.start_web(data_dir, "--no-consumer")
    consumer = common.Process(common.consumer_cmd("jobs.huey", 4), env, data_dir / "consumer.log")
    try:
        result = prune(port, key, env, n, timeout)
    finally:
        web.stop()
        consumer.stop()
        lj.close()
    if result is not None:
        result.update(rows=n, command=f"{common.shown(web.args)} + {common.shown(consumer.args)}")
    return result


def prune(port, key, env, n, timeout):
    """Run `prune_job_history` in the web process's consumer; two writers time their writes."""
    if "prune_job_history" not in jobs.FUNCTIONS:
        return None
    lj.use(env["DATABASE_URL"], env["QUEUE_URL"])
    stop = threading.Event()
    direct, http = [], []
    client = common.Http(port, key)
    writers = [
        threading.Thread(target=_writer, args=(stop, direct, lambda: jobs.submit("ping")), daemon=True),
        threading.Thread(
            target=_writer, args=(stop, http, lambda: client.request("POST", "/api/v1/jobs/ping", {})), daemon=True
        ),
    ]
    for thread in writers:
        thread.start()
    time.sleep(1)
    conn = common.Http(port, key)
    started = time.monotonic()
    status, body = conn.request("POST", "/api/v1/jobs/prune_job_history", {})
    job_id = common.json.loads(body)["id"]

    def finished():
        job = Job.get_or_none(Job.id == job_id)
        return job is not None and job.is_terminal and job

    job = common.wait_until(finished, timeout, interval=0.5, message="prune_job_history")
    seconds = time.monotonic() - started
    time.sleep(1)
    stop.set()
    for thread in writers:
        thread.join(30)
    left = Job.select().where(Job.finished_at < datetime.datetime.utcnow() - datetime.timedelta(days=30)).count()
    lj.close()
    return {
        "status": job.status,
        "result": job.result,
        "seconds": round(seconds, 1),
        "rows_per_s": round(n / seconds),
        "old_rows_left": left,
        "writer_max_pause_ms": common.ms(max(direct)),
        "writer_p99_ms": common.ms(common.percentile(direct, 99)),
        "http_writer_max_pause_ms": common.ms(max(http)),
        "http_writer_p99_ms": common.ms(common.percentile(http, 99)),
        "writes": len(direct) + len(http),
    }


def rows(n=10_000_000, prune_rows=1_000_000):
    data = run(n, prune_rows=prune_rows)
    label = f"{n:,} job rows"
    first, deep, one = data["list_first_page"], data["list_deep_cursor"], data["job_by_id"]
    worst = max(first["p95_ms"], deep["p95_ms"], one["p95_ms"])
    out = [
        {
            "id": "history-api",
            "benchmark": f"history at scale, {label}: GET /api/v1/jobs first page / deep cursor (90%) / one job by id",
            "litejobs": f"p95 {first['p95_ms']} / {deep['p95_ms']} / {one['p95_ms']} ms",
            "baseline": "",
            "result": f"filtered ?status=failed p95 {data['list_failed']['p95_ms']} ms, "
            f"?name=fail&status=failed p95 {data['list_name_status']['p95_ms']} ms",
            "target": "p95 ≤ 50 ms",
            "met": worst <= 50,
            "data": data,
        },
        {
            "id": "history-bytes",
            "benchmark": f"database size per job row, {label} (SQLite, bulk-loaded finished jobs with all indexes)",
            "litejobs": f"{data['database_bytes_per_row']:,} bytes per job",
            "baseline": "",
            "result": f"bulk load took {data['bulk_load_s']} s",
            "target": "—",
            "met": None,
            "data": {"database_bytes_per_row": data["database_bytes_per_row"], "rows": n},
        },
    ]
    if "dashboard_overview" in data:
        overview = data["dashboard_overview"]
        out.append(
            {
                "id": "history-dashboard",
                "benchmark": f"history at scale, {label}: dashboard overview page (logged in)",
                "litejobs": f"p95 {overview['p95_ms']} ms",
                "baseline": "",
                "result": f"p50 {overview['p50_ms']} ms",
                "target": "—",
                "met": None,
                "data": {"dashboard_overview": overview, "command": data["command"]},
            }
        )
    if not prune_rows:
        return out
    prune_data = data.get("prune")
    if prune_data is None:
        out.append(
            {
                "id": "history-prune",
                "benchmark": f"prune {prune_rows:,} job rows",
                "litejobs": "pending: jobs.prune_job_history does not exist yet",
                "baseline": "",
                "result": "",
                "target": "no writer paused > 200 ms",
                "met": None,
                "data": {},
            }
        )
    else:
        pause = max(prune_data["writer_max_pause_ms"], prune_data["http_writer_max_pause_ms"])
        out.append(
            {
                "id": "history-prune",
                "benchmark": f"prune {prune_rows:,} job rows with `prune_job_history` (standalone consumer), "
                "writers every 10 ms",
                "litejobs": f"{prune_data['seconds']} s ({prune_data['rows_per_s']:,} rows/s), {prune_data['status']}",
                "baseline": "",
                "result": f"longest writer pause {prune_data['writer_max_pause_ms']} ms in-process enqueue, "
                f"{prune_data['http_writer_max_pause_ms']} ms over HTTP; {prune_data['old_rows_left']} old rows left",
                "target": "no writer paused > 200 ms",
                "met": pause <= 200 and prune_data["status"] == "succeeded",
                "data": {**prune_data, "command": data["command"]},
            }
        )
    return out
