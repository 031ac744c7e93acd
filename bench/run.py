"""`make bench`: every benchmark of litejobs in one run, printed as one table and
written as JSON to bench/results/ (git-ignored).

    .venv/bin/python bench/run.py                 # the full run (about 20-25 minutes)
    .venv/bin/python bench/run.py --quick         # smaller sizes, a few minutes
    .venv/bin/python bench/run.py --only drain    # rows whose id starts with `drain`
    .venv/bin/python bench/run.py --list          # the row ids

Each row is reproduced by `.venv/bin/python bench/run.py --only ROW-ID`; the
processes it starts are in the JSON (`command`). Every process runs on a
scratch DATA_DIR of its own; Redis uses db 12 and PostgreSQL a schema of its
own (litejobs_bench), both emptied first. Figures are noisy on a 2-core
machine shared with other work: the drain rows are the median of --repeat runs.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import traceback

import common

# Settings are read once, at import: point the driver's own litejobs at a scratch folder.
for _name in common.OWN_SETTINGS:
    os.environ.pop(_name, None)
os.environ["DATA_DIR"] = str(common.run_root() / "driver")
os.environ["LOG_LEVEL"] = "WARNING"
sys.path.insert(0, str(common.ROOT))

import drain  # noqa: E402
import history  # noqa: E402
import latency  # noqa: E402
import peers  # noqa: E402
import web_rows  # noqa: E402

RESULTS = common.BENCH / "results"


def _service_up(backend):
    try:
        if backend == "redis":
            common.reset_redis()
        elif backend == "postgresql":
            common.reset_postgres()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure to reach the service skips its rows
        return f"{backend} unreachable: {type(exc).__name__}: {exc}"


def _skipped(row_id, benchmark, why):
    return [{"id": row_id, "benchmark": benchmark, "litejobs": "skipped", "baseline": "", "result": why,
             "target": "—", "met": None, "data": {}}]


def drain_rows(backend, kind, workers, opts):
    down = _service_up(backend) if backend != "sqlite" else None
    if down:
        return _skipped(f"drain-{backend}-{kind}", f"drain, {backend} queue", down)
    # PostgreSQL drains slowest (plain huey too): one pair keeps the full run bounded.
    repeat = opts.repeat if kind == "thread" and backend != "postgresql" else 1
    return [drain.drain_row(backend, kind, workers, opts.jobs, repeat=repeat)]


def latency_rows(which, backend, opts):
    down = _service_up(backend) if backend != "sqlite" else None
    if down:
        return _skipped(f"latency-{which}-{backend}", f"pickup latency, {backend} queue", down)
    idle = opts.idle if backend == "sqlite" else min(opts.idle, 10.0)
    return [latency.latency_row(which, backend, n=opts.latency_jobs, idle=idle)]


def script_rows(name, args, timeout):
    """Run another engineer's bench/NAME.py and keep what it printed."""
    path = common.BENCH / f"{name}.py"
    if not path.exists():
        return _skipped(name, f"{name} benchmark", f"bench/{name}.py does not exist yet")
    cmd = [common.PY, f"bench/{name}.py", *args]
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, timeout=timeout)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        status = f"exit {done.returncode}"
        if done.returncode:
            lines += done.stderr.splitlines()[-5:]
    except subprocess.TimeoutExpired as exc:
        lines = [line for line in (exc.stdout or b"").decode(errors="replace").splitlines() if line.strip()]
        status = f"stopped after {timeout} s"
    seconds = round(time.monotonic() - started, 1)
    return [
        {
            "id": name,
            "benchmark": f"{name} benchmark (bench/{name}.py, its own output below the table)",
            "litejobs": f"{status}, {seconds} s",
            "baseline": "",
            "result": "; ".join(lines[-3:])[:300],
            "target": "see its issue",
            "met": None,
            "data": {"output": lines, "command": common.shown(cmd)},
        }
    ]


def plan(opts):
    """(row id, function returning rows) in the order they run."""
    quick = opts.quick
    steps = [
        ("drain-sqlite-thread", lambda: drain_rows("sqlite", "thread", 4, opts)),
        ("drain-redis-thread", lambda: drain_rows("redis", "thread", 4, opts)),
        ("drain-postgresql-thread", lambda: drain_rows("postgresql", "thread", 4, opts)),
        ("drain-sqlite-greenlet", lambda: drain_rows("sqlite", "greenlet", 4, opts)),
        ("drain-sqlite-process", lambda: drain_rows("sqlite", "process", 2, opts)),
        ("limits-sqlite", lambda: [drain.limits_row("sqlite", 4, opts.jobs, repeat=opts.repeat or 3)]),
        ("limits-redis", lambda: [drain.limits_row("redis", 4, opts.jobs, repeat=opts.repeat or 3)]),
        ("latency-standalone-sqlite", lambda: latency_rows("standalone", "sqlite", opts)),
        ("latency-embedded-sqlite", lambda: latency_rows("embedded", "sqlite", opts)),
        ("latency-standalone-redis", lambda: latency_rows("standalone", "redis", opts)),
        ("latency-standalone-postgresql", lambda: latency_rows("standalone", "postgresql", opts)),
        ("http", lambda: web_rows.rows(quick=quick, duration=opts.http_seconds)),
        ("http-enqueue-postgresql", lambda: web_rows.postgresql_rows(quick=quick, duration=opts.http_seconds)),
        ("footprint", lambda: web_rows.footprint_rows(opts.jobs)),
        ("history", lambda: history.rows(opts.history_rows)),
        ("peers", lambda: peers.rows(quick=quick, n=min(opts.jobs, 20000), idle=opts.idle,
                                     litejobs_redis=opts.redis_rate)),
        ("orders", lambda: script_rows("orders", ["--orders", "500" if quick else "5000"], 600)),
        ("periodic", lambda: script_rows("periodic", ["--users", "1000", "--posts", "10000"] if quick
                                         else ["--users", "10000", "--posts", "100000"], 600)),
        ("media", lambda: script_rows("media", ["--images", "4", "--limits", "1"] if quick else [], 600)),
    ]
    return steps


def table(rows):
    lines = [
        "| benchmark | litejobs | compared with | ratio, details | target | met | reproduce |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = {True: "yes", False: "**no**", None: ""}[row.get("met")]
        cells = [row["benchmark"], row["litejobs"], row.get("baseline", ""), row.get("result", ""),
                 row.get("target", ""), met, f"`{row['reproduce']}`"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def machine():
    memory = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                    platform.processor()),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a few minutes instead of ~25")
    parser.add_argument("--only", help="comma-separated row ids or prefixes (see --list)")
    parser.add_argument("--list", action="store_true", help="print the row ids and stop")
    parser.add_argument("--repeat", type=int, help="drain runs per thread row; the median is shown (3, quick 1)")
    parser.add_argument("--out", help="JSON file to write (default bench/results/bench-<time>.json)")
    opts = parser.parse_args(argv)
    opts.jobs = 5000 if opts.quick else 20000
    opts.latency_jobs = 200 if opts.quick else 500
    opts.idle = 10.0 if opts.quick else 30.0
    opts.http_seconds = 5.0 if opts.quick else 20.0
    opts.history_rows = 100_000 if opts.quick else 1_000_000
    opts.repeat = opts.repeat or (1 if opts.quick else 3)
    opts.redis_rate = None
    steps = plan(opts)
    if opts.list:
        print("\n".join(step for step, _ in steps))
        return 0
    if opts.only:
        wanted = [w.strip() for w in opts.only.split(",") if w.strip()]
        steps = [(step, run) for step, run in steps if any(step.startswith(w) for w in wanted)]
    started = time.monotonic()
    rows = []
    suffix = " --quick" if opts.quick else ""
    try:
        for step, run in steps:
            print(f"[{time.monotonic() - started:6.0f} s] {step} …", flush=True)
            step_started = time.monotonic()
            try:
                new = run()
            except Exception as exc:  # noqa: BLE001 - one broken row must not lose the others
                traceback.print_exc()
                new = _skipped(step, step, f"failed: {type(exc).__name__}: {exc}")
            for row in new:
                row["reproduce"] = f".venv/bin/python bench/run.py --only {step}{suffix}"
                row["seconds"] = round(time.monotonic() - step_started, 1)
                if row["id"] == "drain-redis-thread" and "litejobs_jobs_per_s" in row["data"]:
                    opts.redis_rate = row["data"]["litejobs_jobs_per_s"]
                print(f"    {row['benchmark']}: {row['litejobs']}  {row.get('baseline', '')}  {row.get('result', '')}",
                      flush=True)
            rows += new
    finally:
        common.cleanup()
    total = round(time.monotonic() - started, 1)
    info = machine()
    print()
    print(f"litejobs benchmarks, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{'quick' if opts.quick else 'full'} run of {total / 60:.1f} min on {info['nproc']} cores, "
          f"{info['memory']}, Python {info['python']} ({info['cpu']})")
    print()
    print(table(rows))
    for row in rows:
        output = row["data"].get("output") if isinstance(row.get("data"), dict) else None
        if output:
            print(f"\n{row['id']} ({row['data']['command']}):")
            print("\n".join(f"    {line}" for line in output))
    RESULTS.mkdir(exist_ok=True)
    out = opts.out or RESULTS / f"bench-{datetime.datetime.now():%Y%m%d-%H%M%S}{'-quick' if opts.quick else ''}.json"
    with open(out, "w") as handle:
        json.dump({"machine": info, "quick": opts.quick, "seconds": total, "rows": rows}, handle, indent=2, default=str)
    print(f"\nwritten to {os.path.relpath(out, common.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
