"""`make bench`: every benchmark of litejobs in one run, printed as one table and
written as JSON to bench/results/ (git-ignored).

    .venv/bin/python bench/run.py                 # the full run
    .venv/bin/python bench/run.py --quick         # `make bench-quick`: the headline rows, small sizes
    .venv/bin/python bench/run.py --only drain    # rows whose id starts with `drain`
    .venv/bin/python bench/run.py --list          # the row ids

The run exits non-zero when any row failed or could not run (a service down,
a peer not installed): a table with holes is not a result. Each row is
reproduced by `.venv/bin/python bench/run.py --only ROW-ID`; the processes it
starts are in the JSON (`command`). Every process runs on a scratch DATA_DIR
inside one folder of this run, removed at the end, after a failure too. Redis
rows use BENCH_REDIS_URL (db 12 unless set; the peers dbs 9-11), PostgreSQL
rows a schema of their own in BENCH_POSTGRES_URL; both are emptied first.
Figures are noisy on a 2-core machine shared with other work: the drain rows
are the median of --repeat runs.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
import traceback

import common

common.driver_setup()

import bench_scaling  # noqa: E402
import drain  # noqa: E402
import history  # noqa: E402
import latency  # noqa: E402
import peers  # noqa: E402
import web_rows  # noqa: E402

RESULTS = common.BENCH / "results"


def _service_up(backend):
    try:
        if "redis" in backend:
            common.reset_redis()
        if "postgresql" in backend:
            common.reset_postgres()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure to reach the service skips its rows
        return f"{backend} unreachable: {type(exc).__name__}: {exc}"


def _skipped(row_id, benchmark, why):
    return [{"id": row_id, "benchmark": benchmark, "litejobs": "skipped", "baseline": "", "result": why,
             "target": "—", "met": None, "status": "skipped", "data": {}}]


def _needs(backend, row_id, benchmark, make_rows):
    down = _service_up(backend) if backend != "sqlite" else None
    return _skipped(row_id, benchmark, down) if down else make_rows()


def drain_rows(backend, kind, workers, opts):
    # PostgreSQL drains slowest (plain huey too): one pair keeps the full run bounded.
    repeat = opts.repeat if kind == "thread" and backend != "postgresql" else 1
    return _needs(backend, f"drain-{backend}-{kind}", f"drain, {backend} queue",
                  lambda: [drain.drain_row(backend, kind, workers, opts.jobs, repeat=repeat)])


def latency_rows(which, backend, opts):
    idle = opts.idle if backend == "sqlite" else min(opts.idle, 10.0)
    return _needs(backend, f"latency-{which}-{backend}", f"pickup latency, {backend} queue",
                  lambda: [latency.latency_row(which, backend, n=opts.latency_jobs, idle=idle)])


def script_rows(name, args, timeout):
    """Run another engineer's bench/NAME.py and keep what it printed; non-zero exit fails the row."""
    path = common.BENCH / f"{name}.py"
    row_id = name.removeprefix("bench_")
    if not path.exists():
        return [{**_skipped(row_id, f"{row_id} benchmark", f"bench/{name}.py does not exist")[0], "status": "failed"}]
    cmd = [common.PY, f"bench/{name}.py", *args]
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, timeout=timeout)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        status = f"exit {done.returncode}"
        ok = done.returncode == 0
        if done.returncode:
            lines += done.stderr.splitlines()[-5:]
    except subprocess.TimeoutExpired as exc:
        lines = [line for line in (exc.stdout or b"").decode(errors="replace").splitlines() if line.strip()]
        status, ok = f"stopped after {timeout} s", False
    seconds = round(time.monotonic() - started, 1)
    return [
        {
            "id": row_id,
            "benchmark": f"{row_id} benchmark (bench/{name}.py, its own output below the table)",
            "litejobs": f"{status}, {seconds} s",
            "baseline": "",
            "result": "; ".join(lines[-3:])[:300],
            "target": "see its issue",
            "met": None,
            "status": "ok" if ok else "failed",
            "data": {"output": lines, "command": common.shown(cmd)},
        }
    ]


def liveness_rows(quick):
    """bench/liveness.py (/health/live p99 beside CPU-bound jobs; the plan lists it only
    when the file exists): its rows() if it has one, else run as a script."""
    path = common.BENCH / "liveness.py"
    spec = importlib.util.spec_from_file_location("liveness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "rows"):
        try:
            return module.rows(quick=quick)
        except TypeError:
            return module.rows()
    return script_rows("liveness", [], 600)


def plan(opts):
    """(row id, function returning rows, in the quick run?) in the order they run."""
    quick = opts.quick
    return [
        ("drain-sqlite-thread", lambda: drain_rows("sqlite", "thread", 4, opts), True),
        ("drain-redis-thread", lambda: drain_rows("redis", "thread", 4, opts), True),
        ("drain-postgresql-thread", lambda: drain_rows("postgresql", "thread", 4, opts), False),
        ("drain-sqlite-greenlet", lambda: drain_rows("sqlite", "greenlet", 4, opts), False),
        ("drain-sqlite-process", lambda: drain_rows("sqlite", "process", 2, opts), False),
        ("deploy-sqlite", lambda: [drain.deploy_row("sqlite", opts.jobs)], True),
        ("deploy-redis", lambda: _needs("redis", "deploy-redis", "as deployed, Redis queue",
                                        lambda: [drain.deploy_row("redis", opts.jobs)]), False),
        ("limits-sqlite", lambda: [drain.limits_row("sqlite", 4, opts.jobs, repeat=opts.repeat)], False),
        ("limits-redis", lambda: _needs("redis", "limits-redis", "limits, redis",
                                        lambda: [drain.limits_row("redis", 4, opts.jobs, repeat=opts.repeat)]), False),
        ("latency-standalone-sqlite", lambda: latency_rows("standalone", "sqlite", opts), True),
        ("latency-embedded-sqlite", lambda: latency_rows("embedded", "sqlite", opts), False),
        ("latency-process-sqlite", lambda: latency_rows("process", "sqlite", opts), False),
        ("latency-standalone-redis", lambda: latency_rows("standalone", "redis", opts), True),
        ("latency-standalone-postgresql", lambda: latency_rows("standalone", "postgresql", opts), False),
        ("http", lambda: web_rows.rows(quick=quick, duration=opts.http_seconds), True),
        ("http-enqueue-postgresql", lambda: web_rows.postgresql_rows(quick=quick, duration=opts.http_seconds), False),
        ("footprint", lambda: web_rows.footprint_rows(opts.jobs), False),
        ("peers", lambda: _needs("redis" if quick else "redis+postgresql", "peers", "peers",
                                 lambda: peers.rows(quick=quick, n=opts.jobs, idle=opts.idle,
                                                    only=peers.REDIS_PEERS if quick else None)), True),
        ("scaling-sqlite", lambda: bench_scaling.processes_row("sqlite", opts.scaling_jobs), False),
        ("scaling-redis-postgresql", lambda: _needs(
            "redis+postgresql", "scaling-redis-postgresql", "scaling, Redis + PostgreSQL",
            lambda: bench_scaling.processes_row("redis+postgresql", opts.scaling_jobs)), False),
        ("memory", lambda: bench_scaling.memory_rows(opts.memory_jobs), False),
        ("history", lambda: history.rows(opts.history_rows, prune_rows=opts.prune_rows), False),
        *([("liveness", lambda: liveness_rows(quick), False)] if (common.BENCH / "liveness.py").exists() else []),
        # Not in the quick run; with --only and --quick they take small sizes.
        ("orders", lambda: script_rows("bench_orders", ["--orders", "500" if quick else "5000"], 600), False),
        ("periodic", lambda: script_rows("periodic", ["--users", "1000", "--posts", "10000"] if quick
                                         else ["--users", "10000", "--posts", "100000"], 600), False),
        ("media", lambda: script_rows("bench_media", ["--images", "4", "--limits", "1"] if quick else [], 600), False),
    ]


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
    cpu = platform.processor()
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   cpu)
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def _stop_on_sigterm(*_):
    raise SystemExit(143)  # unwinds through the finally that stops processes and removes folders


def run_steps(steps, suffix, started):
    rows = []
    for step, run in steps:
        print(f"[{time.monotonic() - started:6.0f} s] {step} …", flush=True)
        step_started = time.monotonic()
        try:
            new = run()
        except Exception as exc:  # noqa: BLE001 - one broken row must not lose the others
            traceback.print_exc()
            new = [{**_skipped(step, step, f"failed: {type(exc).__name__}: {exc}")[0], "status": "failed"}]
        for row in new:
            row.setdefault("status", "ok")
            row["reproduce"] = f".venv/bin/python bench/run.py --only {step}{suffix}"
            row["seconds"] = round(time.monotonic() - step_started, 1)
            print(f"    [{row['status']}] {row['benchmark']}: {row['litejobs']}  {row.get('baseline', '')}  "
                  f"{row.get('result', '')}", flush=True)
        rows += new
    return rows


def main(argv=None):
    """Run the rows; the scratch folder and every process go away however it ends."""
    try:
        return _main(argv)
    finally:
        common.cleanup()


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the headline rows at small sizes (under 5 minutes)")
    parser.add_argument("--only", help="comma-separated row ids or prefixes (see --list)")
    parser.add_argument("--list", action="store_true", help="print the row ids and stop")
    parser.add_argument("--repeat", type=int, help="drain runs per thread row; the median is shown (3, quick 1)")
    parser.add_argument("--jobs", type=int, help="jobs per drain (20000, quick 5000)")
    parser.add_argument("--history-rows", type=int, help="job rows for the list/detail p95 (10,000,000)")
    parser.add_argument("--out", help="JSON file to write (default bench/results/bench-<time>.json)")
    opts = parser.parse_args(argv)
    quick = opts.quick
    opts.jobs = opts.jobs or (5000 if quick else 20000)
    opts.latency_jobs = 200 if quick else 500
    opts.idle = 10.0 if quick else 30.0
    opts.http_seconds = 5.0 if quick else 20.0
    opts.history_rows = opts.history_rows or (100_000 if quick else 10_000_000)
    opts.prune_rows = min(opts.history_rows, 100_000 if quick else 1_000_000)
    opts.scaling_jobs = 5000 if quick else 20000
    opts.memory_jobs = 20_000 if quick else 100_000
    opts.repeat = opts.repeat or (1 if quick else 3)
    steps = plan(opts)
    if opts.list:
        print("\n".join(f"{step}{'  (quick)' if in_quick else ''}" for step, _, in_quick in steps))
        return 0
    if opts.only:
        wanted = [w.strip() for w in opts.only.split(",") if w.strip()]
        steps = [(step, run) for step, run, _ in steps if any(step.startswith(w) for w in wanted)]
        if not steps:
            parser.error(f"no row matches --only {opts.only} (see --list)")
    else:
        steps = [(step, run) for step, run, in_quick in steps if in_quick or not quick]
    shadowed = common.shadowing_modules()
    if shadowed:
        sys.exit(f"bench: these bench/ modules shadow others of the same name; rename them: {shadowed}")

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    info = machine()
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/run.py", *(argv or sys.argv[1:])])
    begun = datetime.datetime.now(datetime.timezone.utc)
    print(f"litejobs benchmarks, {begun:%Y-%m-%d %H:%M} UTC, {'quick' if quick else 'full'} run")
    print(f"machine: {info['cpu']}, {info['nproc']} cores, {info['memory']}, Python {info['python']}, "
          f"load average {', '.join(f'{x:.2f}' for x in info['load_average'] or ())}")
    print(f"command: {command}", flush=True)
    started = time.monotonic()
    rows = run_steps(steps, " --quick" if quick else "", started)
    common.cleanup()
    total = round(time.monotonic() - started, 1)
    bad = [row for row in rows if row["status"] != "ok"]
    print()
    print(f"litejobs benchmarks, {begun:%Y-%m-%d %H:%M} UTC, {'quick' if quick else 'full'} run of "
          f"{total / 60:.1f} min; {info['cpu']}, {info['nproc']} cores, {info['memory']}, Python {info['python']}")
    print(f"command: {command}")
    print()
    print(table(rows))
    for row in rows:
        output = row["data"].get("output") if isinstance(row.get("data"), dict) else None
        if output:
            print(f"\n{row['id']} ({row['data']['command']}):")
            print("\n".join(f"    {line}" for line in output))
    RESULTS.mkdir(exist_ok=True)
    out = opts.out or RESULTS / f"bench-{begun:%Y%m%d-%H%M%S}{'-quick' if quick else ''}.json"
    with open(out, "w") as handle:
        json.dump({"date": begun.isoformat(), "command": command, "machine": info, "quick": quick, "seconds": total,
                   "rows": rows}, handle, indent=2, default=str)
    print(f"\nwritten to {os.path.relpath(out, common.ROOT)}")
    if bad:
        print(f"\n{len(bad)} of {len(rows)} rows did not run to the end: "
              + "; ".join(f"{row['id']} ({row['status']}: {row.get('result', '')[:120]})" for row in bad))
        return 1
    print(f"all {len(rows)} rows ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
