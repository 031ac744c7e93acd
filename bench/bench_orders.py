"""Orders: N due orders (10,000) checked against the sandbox provider at 100 ms
latency, by a consumer with greenlet workers (`-k greenlet -w 100`) and with
thread workers (`-k thread -w 8`).

The provider is a real `python web.py run --no-consumer` process on a data
folder of its own (the provider's side of the wire), with SANDBOX_LATENCY_MS=100
and SANDBOX_COMPLETE_AFTER=0, so each order completes on its first check. The
orders are sent orders whose check is due; the sweep (`poll_pending_orders`'s
body) queues a check for each, then a real `huey_consumer` runs them over HTTP.
Timed from the first check's start to the last one's finish, from the job
history; peak memory is the consumer's peak resident set (VmHWM), Linux only.

    .venv/bin/python bench/orders.py [--orders 10000] [--kinds greenlet,thread]
"""

import argparse
import datetime
import os
import secrets
import sys
import time
from pathlib import Path

import common

# Settings land in a scratch folder before litejobs is imported.
sys.path.insert(0, str(common.ROOT))
os.environ["DATA_DIR"] = str(common.scratch("orders-driver"))
os.environ.setdefault("LOG_LEVEL", "WARNING")

import lj  # noqa: E402
import models  # noqa: E402
from apps.orders import tasks as orders  # noqa: E402
import settings  # noqa: E402
from models import Job  # noqa: E402
from apps.orders.models import Order  # noqa: E402
from apps.orders.provider import SandboxOrder  # noqa: E402

LATENCY_MS = 100
WORKERS = {"greenlet": 100, "thread": 8}


def peak_rss_mb(pid):
    """The peak resident set of `pid` in MiB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def seed_provider(data_dir, n):
    """The sandbox's side: n orders placed a minute ago, complete by now."""
    lj.use(f"sqlite:///{data_dir / 'litejobs.db'}", f"sqlite:///{data_dir / 'litejobs.db'}")
    placed = models.utcnow() - datetime.timedelta(minutes=1)
    rows = [
        {
            "reference": f"SBX-BENCH{i:06d}",
            "idempotency_key": f"bench-{i}",
            "request": "{}",
            "pin_code": f"{i:04d}-0000-0000-0000",
            "created_at": placed,
            "complete_at": placed,
        }
        for i in range(n)
    ]
    with models.db.atomic():
        for chunk in _chunks(rows, 500):
            SandboxOrder.insert_many(chunk).execute()
    lj.close()


def seed_orders(data_dir, n):
    """Our side: n sent orders whose first check is due; the sweep queues their checks. Returns seconds."""
    lj.use(f"sqlite:///{data_dir / 'litejobs.db'}", f"sqlite:///{data_dir / 'litejobs.db'}")
    sent = models.utcnow() - datetime.timedelta(minutes=1)
    rows = [
        {
            "product_id": "bench",
            "package_id": "bench-1",
            "user_identifier": f"player-{i}",
            "status": "sent",
            "provider_ref": f"SBX-BENCH{i:06d}",
            "created_at": sent,
            "sent_at": sent,
            "next_check_at": sent,
        }
        for i in range(n)
    ]
    with models.db.atomic():
        for chunk in _chunks(rows, 500):
            Order.insert_many([{"id": secrets.token_hex(16), **row} for row in chunk]).execute()
    settings.ORDER_BATCH_SIZE = n
    started = time.perf_counter()
    queued = orders.sweep()["queued"]
    seconds = time.perf_counter() - started
    assert queued == n, f"the sweep queued {queued} of {n}"
    return seconds


def _chunks(rows, size):
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def completed():
    """Orders completed so far, read while the consumer works."""
    return Order.select().where(Order.status == "completed").count()


def check_span():
    """(first check started, last check finished, checks finished) from the job history."""
    from peewee import fn

    query = Job.select(fn.MIN(Job.started_at), fn.MAX(Job.finished_at), fn.COUNT(Job.id)).where(
        (Job.name == "check_order_status") & (Job.status == "succeeded")
    )
    first, last, count = query.scalar(as_tuple=True)
    return lj._dt(first), lj._dt(last), count


def run(kind, n, timeout):
    provider_dir = common.scratch(f"orders-provider-{kind}")
    seed_provider(provider_dir, n)
    web, port, _ = common.start_web(
        provider_dir, "--no-consumer", name="provider", SANDBOX_LATENCY_MS=LATENCY_MS, SANDBOX_COMPLETE_AFTER=0
    )
    data_dir = common.scratch(f"orders-consumer-{kind}")
    sweep_s = seed_orders(data_dir, n)
    env = common.service_env(data_dir, PROVIDER_URL=f"http://127.0.0.1:{port}/sandbox")
    cmd = common.consumer_cmd("jobs.huey", WORKERS[kind], kind)
    consumer = common.Process(cmd, env, data_dir / "consumer.log")
    try:
        common.wait_until(lambda: completed() >= n, timeout, interval=0.25, message=f"{n} orders completed")
        wall = time.monotonic() - consumer.started
        peak = peak_rss_mb(consumer.pid)
        provider_peak = peak_rss_mb(web.pid)
        cpu = common.cpu_seconds(consumer.pid)
        provider_cpu = common.cpu_seconds(web.pid)
    finally:
        consumer.stop()
        web.stop()
    first, last, count = check_span()
    failed = Order.select().where(Order.status == "failed").count()
    lj.close()
    seconds = (last - first).total_seconds()
    return {
        "kind": kind,
        "workers": WORKERS[kind],
        "orders": n,
        "checks": count,
        "failed": failed,
        "seconds": round(seconds, 2),
        "orders_per_s": round(count / seconds, 1),
        "wall_from_spawn_s": round(wall, 2),
        "sweep_queued_s": round(sweep_s, 2),
        "peak_rss_mb": round(peak, 1),
        "provider_peak_rss_mb": round(provider_peak, 1),
        "cpu_s": round(cpu, 1),
        "provider_cpu_s": round(provider_cpu, 1),
        "command": common.shown(cmd),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=10_000, help="due orders to check (10000)")
    parser.add_argument("--kinds", default="greenlet,thread", help="worker kinds to run, in order")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for one run")
    args = parser.parse_args(argv)
    print(f"orders: {args.orders:,} due orders, sandbox latency {LATENCY_MS} ms, SQLite database and queue")
    this = [sys.executable, "bench/orders.py", "--orders", args.orders, "--kinds", args.kinds]
    print(f"command: {common.shown(this)}")
    try:
        for kind in args.kinds.split(","):
            row = run(kind.strip(), args.orders, args.timeout)
            print(
                f"  -k {row['kind']:8} -w {row['workers']:<3}  {row['orders_per_s']:>7,.1f} orders/s  "
                f"{row['seconds']:>7.2f} s for {row['checks']:,} checks ({row['failed']} failed)  "
                f"peak RSS {row['peak_rss_mb']:.1f} MiB (provider {row['provider_peak_rss_mb']:.1f} MiB)  "
                f"CPU {row['cpu_s']:.1f} s (provider {row['provider_cpu_s']:.1f} s)"
            )
            print(
                f"    wall from spawn {row['wall_from_spawn_s']:.2f} s; "
                f"the sweep queued the checks in {row['sweep_queued_s']:.2f} s"
            )
            print(f"    consumer: {row['command']}")
            sys.stdout.flush()
    finally:
        common.cleanup()


if __name__ == "__main__":
    main()
