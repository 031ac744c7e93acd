"""litejobs cli: the `web.py` commands that manage API keys and dashboard users.

web.py parses the command line and prepares the database; each function here
takes the parsed arguments and prints what it did, or exits with one line.
"""

import sys

import jobs
from models import ApiKey


def create_key(args):
    _, plain = ApiKey.create_key(args.name, args.scope)
    print(f"API key {args.name!r} (scope {args.scope}) created; it is shown only this once:")
    print(plain)


def keys(args=None):
    """One line per live API key: name, prefix, scope, created, last used, calls today."""
    rows = [("NAME", "PREFIX", "SCOPE", "CREATED", "LAST USED", "CALLS TODAY")]
    for key in ApiKey.live():
        data = key.to_dict()
        rows.append((data["name"], data["prefix"], data["scope"], data["created_at"], data["last_used_at"] or "never", str(data["calls_today"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())


def revoke_key(args):
    try:
        key = ApiKey.revoke(args.key)
    except ValueError as exc:
        sys.exit(f"litejobs: {exc}")
    if key is None:
        sys.exit(f"litejobs: no live API key named {args.key!r} or with that prefix; see python web.py keys")
    print(f"API key {key.name!r} ({key.prefix}…) revoked")


def create_user(args):
    password = args.password
    if password is None:
        import getpass

        password = getpass.getpass("Password: ")
    if len(password) < 8:
        sys.exit("litejobs: the password must have at least 8 characters")
    try:
        jobs.create_user(args.email.strip().lower(), args.name, password=password, is_admin=args.admin)
    except jobs.Conflict:
        sys.exit(f"litejobs: a user with email {args.email!r} exists already")
    except jobs.ArgumentError as exc:
        sys.exit(f"litejobs: {exc}")
    role = "an admin" if args.admin else "a viewer (add --admin to run, retry, cancel and pause)"
    print(f"user {args.email} created as {role}; a welcome mail is queued")
