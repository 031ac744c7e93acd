"""Periodic work: run time and peak memory of every scheduled job on demo data.

`python -m apps.demo --users 10000 --posts 100000` fills a scratch SQLite
database, and the benchmark adds what the housekeeping jobs act on: 20,000
tokens (half expired), 200 API keys with calls today, and 100,000 finished jobs
older than JOB_HISTORY_DAYS beside 20,000 recent ones. Each scheduled function
then runs as a real job (submitted, taken from the queue and executed by huey)
in a fresh process of its own, so the peak memory (ru_maxrss) is that job's
plus the interpreter's. Last, a real `huey_consumer jobs.huey -w 4` sends the
weekly digests that the fan-out queued (one mail per active user, written to
the outbox) and its peak memory is read from /proc (VmHWM).

    .venv/bin/python bench/periodic.py [--users 10000] [--posts 100000] [--no-digests]

Targets (issue 4): each job at most 10 s and 200 MB.
"""

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import common

TARGET_S = 10.0
TARGET_MB = 200
ORDER = [
    "cleanup_expired_tokens",
    "update_post_statistics",
    "update_trending_hashtags",
    "generate_content_analytics",
    "update_post_engagement_scores",
    "reset_daily_quotas",
    "prune_job_history",
    "poll_pending_orders",
    "send_usage_statistics",
    "cleanup_old_posts",
    "cleanup_old_cache",
    "send_weekly_digest",  # last: it leaves one send_digest job per user in the queue
]


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- Inside the child processes --------------------------------------------------------
def prepare_extras():
    """Tokens, API keys and job history for the housekeeping jobs to work on."""
    sys.path.insert(0, str(common.ROOT))
    import models
    from models import ApiKey, Job, Token, User, bulk_insert, db, utcnow

    now = utcnow()
    user_ids = [u for (u,) in User.select(User.id).limit(5000).tuples()]
    tokens = [
        (user_ids[n % len(user_ids)], "session" if n % 3 else "password_reset", f"bench-{n}", now + datetime.timedelta(hours=(n % 2) * 48 - 24))
        for n in range(20000)
    ]
    old = now - datetime.timedelta(days=models.settings.JOB_HISTORY_DAYS + 5)
    history = [
        (f"old-{n}", "echo", "{}", "succeeded" if n % 10 else "failed", old, old, old, "default")
        for n in range(100000)
    ] + [(f"recent-{n}", "echo", "{}", "succeeded", now, now, now, "default") for n in range(20000)]
    with db.atomic():
        bulk_insert(Token, [Token.user, Token.kind, Token.token_hash, Token.expires_at], tokens)
        bulk_insert(
            Job,
            [Job.id, Job.name, Job.args, Job.status, Job.enqueued_at, Job.started_at, Job.finished_at, Job.queue],
            history,
        )
    for n in range(200):
        key, _ = ApiKey.create_key(f"bench-{n}")
        ApiKey.update(calls_today=n * 7).where(ApiKey.id == key.id).execute()
    import jobs

    jobs.huey.flush()  # demo-data's course jobs: each measured job should find the queue its own


def run_one(name):
    """Run function `name` as one real job here; print a JSON line with its figures."""
    import jobs
    from models import Job

    base = peak_mb()
    job, _ = jobs.submit(name, {})
    started = time.perf_counter()
    task = jobs.huey.dequeue()
    assert task is not None and task.id == job.id, "the queue should hold only this job"
    jobs.huey.execute(task)
    seconds = time.perf_counter() - started
    job = Job.get_by_id(job.id)
    print(
        json.dumps(
            {
                "name": name,
                "status": job.status,
                "seconds": round(seconds, 3),
                "peak_mb": round(peak_mb(), 1),
                "base_mb": round(base, 1),
                "result": job.to_dict()["result"],
                "error": job.error,
            }
        )
    )


# -- The benchmark ---------------------------------------------------------------------
def vm_hwm_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--posts", type=int, default=100000)
    parser.add_argument("--no-digests", action="store_true", help="skip sending the digests the fan-out queued")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--prepare-extras", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        return run_one(args.run_one)
    if args.prepare_extras:
        return prepare_extras()

    data_dir = common.scratch("periodic")
    env = common.service_env(data_dir, SMTP_URL="", RUN_SCHEDULES="0")
    py = common.PY
    try:
        demo_cmd = [py, "-m", "apps.demo", "--users", str(args.users), "--posts", str(args.posts), "--seed", "1"]
        started = time.perf_counter()
        out = subprocess.run(demo_cmd, cwd=common.ROOT, env=env, capture_output=True, text=True, check=True)
        print(f"$ {common.shown(demo_cmd)}\n  {out.stdout.strip()} in {time.perf_counter() - started:.1f} s")
        subprocess.run([py, __file__, "--prepare-extras"], cwd=common.ROOT, env=env, check=True)
        print("  plus 20,000 tokens (half expired), 200 API keys with calls, 100,000 old and 20,000 recent finished jobs")
        print("  (the jobs demo-data queued are dropped, so each measured job has the queue to itself)\n")

        names = subprocess.run(
            [py, "-c", "import schedules; print(' '.join(s.function for s in schedules.active_schedules()))"],
            cwd=common.ROOT, env=env, capture_output=True, text=True, check=True,
        ).stdout.split()
        names = [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]
        print(f"{'job':32} {'status':10} {'time s':>8} {'peak MB':>8}  result")
        misses, failed = [], []
        for name in names:
            out = subprocess.run([py, __file__, "--run-one", name], cwd=common.ROOT, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{name:32} crashed: {out.stderr.strip().splitlines()[-1:]}")
                misses.append(name)
                failed.append(name)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            summary = json.dumps(row["result"])[:90] if row["status"] == "succeeded" else (row["error"] or "")[:90]
            print(f"{name:32} {row['status']:10} {row['seconds']:8.2f} {row['peak_mb']:8.1f}  {summary}")
            if row["seconds"] > TARGET_S or row["peak_mb"] > TARGET_MB or row["status"] != "succeeded":
                misses.append(name)
            if row["status"] != "succeeded":
                failed.append(name)

        if not args.no_digests and "send_weekly_digest" in names:
            misses += send_digests(data_dir, env)
        print(f"\ntargets: each job <= {TARGET_S:g} s and <= {TARGET_MB} MB peak; "
              + ("all met" if not misses else f"missed by {', '.join(misses)}"))
        print(f"command: .venv/bin/python bench/periodic.py --users {args.users} --posts {args.posts}")
        if failed:
            print(f"failed: {', '.join(failed)}")
            return 1
        return 0
    finally:
        common.cleanup()


def send_digests(data_dir, env):
    """Drain the queued send_digest jobs with a real 4-thread consumer; print time and peak memory."""
    sys.path.insert(0, str(common.ROOT))
    os.environ.update({k: env[k] for k in ("DATA_DIR", "DATABASE_URL", "QUEUE_URL")})
    import models

    models.db.initialize(models.open_database(env["DATABASE_URL"]))
    queued = models.Job.select().where(models.Job.name == "send_digest").count()
    done = models.Job.name == "send_digest"
    cmd = common.consumer_cmd("jobs.huey", 4, "thread")
    consumer = common.Process(cmd, env, Path(data_dir) / "consumer.log")
    started = time.perf_counter()
    peak = 0.0
    try:
        while True:
            peak = max(peak, vm_hwm_mb(consumer.pid))
            finished = models.Job.select().where(done & models.Job.status.in_(models.TERMINAL)).count()
            if finished >= queued or not consumer.alive():
                break
            time.sleep(0.25)
        seconds = time.perf_counter() - started
    finally:
        consumer.stop()
    sent = len(list((Path(data_dir) / "outbox").glob("*.eml")))
    failed = models.Job.select().where(done & (models.Job.status != "succeeded")).count()
    rate = queued / seconds if seconds else 0
    print(f"\n$ {common.shown(cmd)}")
    print(f"{'send_digest x ' + str(queued):32} {'failed ' + str(failed):10} {seconds:8.2f} {peak:8.1f}  "
          f"{sent} mails in the outbox, {rate:.0f} digests/s (a consumer's whole process)")
    return [] if failed == 0 and sent == queued and peak <= TARGET_MB else ["send_digest"]


if __name__ == "__main__":
    sys.exit(main())
