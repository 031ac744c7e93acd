"""litejobs command line for calling a litejobs over HTTP: invoke, jobs, cancel, retry.

`python web.py invoke NAME key=value … [--wait S] [--json]` and its siblings
land here (web.py passes the URL and key from its settings), so they work
against a remote litejobs as well as this one. Standard library and
litejobs_client only.
"""

import argparse
import itertools
import json
import sys

from litejobs_client import Client, LitejobsError, Unauthorized

COMMANDS = {
    "invoke": "call a job function over HTTP: invoke NAME key=value … [--wait S] [--json]",
    "jobs": "list jobs, newest first: jobs [--status S] [--name N] [--limit N]",
    "cancel": "cancel a job: cancel ID [--terminate]",
    "retry": "run a finished job again: retry ID",
}


def parse_arguments(pairs):
    """`key=value` words as keyword arguments; each value is JSON where it parses, else a string."""
    kwargs = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{pair!r}: expected key=value, such as user_id=42 or name=Ann")
        try:
            kwargs[key] = json.loads(raw)
        except ValueError:
            kwargs[key] = raw
    return kwargs


def format_job(data):
    """One line: id, function, status, and the result or error."""
    line = f"{data['id']}  {data.get('name')}  {data.get('status')}"
    if data.get("status") == "succeeded":
        line += "  result=" + json.dumps(data.get("result"), ensure_ascii=False)
    elif data.get("error"):
        line += "  error=" + str(data["error"]).splitlines()[0]
    elif data.get("cancel_requested"):
        line += "  (cancel requested)"
    return line


def _parser(url, key):
    parser = argparse.ArgumentParser(prog="python web.py", description="Call litejobs over its HTTP API.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=url, help=f"litejobs to call (default: {url}; setting LITEJOBS_URL)")
    common.add_argument("--key", default=key, help="API key (default: setting LITEJOBS_KEY)")
    common.add_argument("--json", action="store_true", help="print the whole job as JSON")
    commands = parser.add_subparsers(dest="command", required=True)
    invoke = commands.add_parser("invoke", parents=[common], help=COMMANDS["invoke"])
    invoke.add_argument("name", help="the job function")
    invoke.add_argument("arguments", nargs="*", metavar="key=value", help="its arguments; values are JSON or text")
    invoke.add_argument("--wait", type=float, help="seconds to wait for the job to finish")
    listing = commands.add_parser("jobs", parents=[common], help=COMMANDS["jobs"])
    listing.add_argument("--status", help="only jobs in this status (failed, queued, …)")
    listing.add_argument("--name", help="only jobs of this function")
    listing.add_argument("--limit", type=int, default=20, help="show at most this many (default 20)")
    cancel = commands.add_parser("cancel", parents=[common], help=COMMANDS["cancel"])
    cancel.add_argument("id")
    cancel.add_argument("--terminate", action="store_true", help="stop it even while it runs")
    retry = commands.add_parser("retry", parents=[common], help=COMMANDS["retry"])
    retry.add_argument("id")
    return parser


def main(argv=None, url="http://127.0.0.1:8000", key=None, out=None):
    """Run one command (`invoke`, `jobs`, `cancel`, `retry`); returns the exit code.

    0: done, or the job succeeded or was accepted; 1: the job failed, was
    canceled or expired; 2: the call itself failed (bad usage, an error
    answer, no answer), with the reason on stderr.
    """
    out = out or sys.stdout
    args = _parser(url, key).parse_args(argv)
    try:
        client = Client(args.url, key=args.key, retries=3)  # a person waits at the prompt: give up sooner
        if args.command == "invoke":
            job = client.call(args.name, parse_arguments(args.arguments), wait=args.wait)
            jobs = [job]
        elif args.command == "jobs":
            found = client.jobs(status=args.status, name=args.name, limit=min(max(args.limit, 1), 200))
            jobs = list(itertools.islice(found, max(args.limit, 0)))
        elif args.command == "cancel":
            jobs = [client.cancel(args.id, terminate=args.terminate)]
        else:
            jobs = [client.retry(args.id)]
        client.close()
    except (LitejobsError, ValueError) as exc:
        hint = " (pass --key or set LITEJOBS_KEY)" if isinstance(exc, Unauthorized) else ""
        print(f"litejobs: {exc}{hint}", file=sys.stderr)
        return 2
    if args.json:
        data = [job.data for job in jobs] if args.command == "jobs" else jobs[0].data
        print(json.dumps(data, indent=2, ensure_ascii=False), file=out)
    else:
        for job in jobs:
            print(format_job(job.data), file=out)
    if args.command == "invoke" and jobs[0].status in ("failed", "canceled", "expired"):
        return 1
    return 0
