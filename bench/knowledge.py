"""Knowledge: N chunks (100,000) synced from the sandbox ingest into the store, then searched.

A real `python web.py run --no-consumer` serves the sandbox ingest and
embedder (and the search API); a real `huey_consumer jobs.huey -w 1` runs one
full sync (trigger_full_sync_task, batches of 500) of N chunks into the
embedded store (or QDRANT_URL's server, when set). Timed from the job's start
to its finish in the history; peak memory is each process's peak resident
set (VmHWM), Linux only. Then QUERIES searches over HTTP, each a new query (no
cache hit) of a user of its own (no daily limit), one client: p50 and p95; the
first search after the sync, which loads the vectors, is shown apart.

    .venv/bin/python bench/knowledge.py [--chunks 100000] [--queries 200]
"""

import argparse
import json
import random
import subprocess
import time

import common

CHUNKS_PER_DOCUMENT = 3.5  # the demo documents' mean, measured by fill()


def peak_rss_mb(pid):
    """The peak resident set of `pid` in MiB (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        return next((int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:")), 0.0)


def fill(env, chunks):
    """The sandbox ingest's documents, about `chunks` chunks; returns (chunks, seconds)."""
    documents = max(1, round(chunks / CHUNKS_PER_DOCUMENT))
    code = (
        "import models, jobs; from apps.knowledge import ingest; models.create_tables(); "
        f"print(ingest.fill_sandbox({documents}, seed=1))"
    )
    started = time.perf_counter()
    out = subprocess.run([common.PY, "-c", code], cwd=common.ROOT, env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]), time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    data_dir = common.scratch("knowledge")
    port = common.free_port()
    env = common.service_env(
        data_dir, PORT=port, BASE_URL=f"http://127.0.0.1:{port}", SANDBOX_LATENCY_MS=0, TIER_LIMITS="free=1000000"
    )
    chunks, seconds = fill(env, args.chunks)
    print(f"sandbox ingest: {chunks:,} chunks written in {seconds:.1f} s")
    web = common.Process([common.PY, "web.py", "run", "--no-consumer"], env, data_dir / "web.log")
    consumer = None
    try:
        common.wait_http(port, process=web)
        key = common.create_key(env)
        api = common.Http(port, key)
        consumer = common.Process(
            common.consumer_cmd("jobs.huey", 1, "thread", "-d", "0.05", "-m", "0.5"), env, data_dir / "consumer.log"
        )
        status, body = api.request("POST", "/api/v1/knowledge/sync")
        assert status == 202, body
        job_id = json.loads(body)["id"]

        def done():
            if not consumer.alive():
                raise RuntimeError(f"consumer exited:\n{consumer.tail()}")
            job = json.loads(api.request("GET", f"/api/v1/jobs/{job_id}")[1])
            return job if job["status"] in ("succeeded", "failed", "canceled") else None

        job = common.wait_until(done, timeout=3600, interval=0.5, message="the full sync")
        assert job["status"] == "succeeded", job["error"]
        sync_s = job["duration_ms"] / 1000
        result = job["result"]
        print(
            f"full sync: {result['chunks']:,} chunks in {sync_s:.1f} s = {result['chunks'] / sync_s:,.0f} chunks/s; "
            f"peak RSS consumer {peak_rss_mb(consumer.pid):.0f} MB, web (serving the ingest) {peak_rss_mb(web.pid):.0f} MB"
        )
        words = "password invoice export webhook schedule upload team api reset refund csv retry cron image role token".split()
        rng = random.Random(7)
        latencies = []
        for n in range(args.queries + 1):
            query = " ".join(rng.sample(words, 3)) + f" {n}"
            started = time.perf_counter()
            status, body = api.request("POST", "/api/v1/knowledge/search", {"user_id": f"bench-{n}", "query": query})
            latencies.append(time.perf_counter() - started)
            assert status == 200 and json.loads(body)["passages"], body[:300]
        first, rest = latencies[0], latencies[1:]
        print(
            f"search over {chunks:,} chunks, {args.queries} queries, 1 client: first {common.ms(first)} ms (loads the vectors), "
            f"p50 {common.ms(common.percentile(rest, 50))} ms, p95 {common.ms(common.percentile(rest, 95))} ms; "
            f"peak RSS web {peak_rss_mb(web.pid):.0f} MB"
        )
    finally:
        if consumer is not None:
            consumer.stop()
        web.stop()
        common.cleanup()


if __name__ == "__main__":
    main()
