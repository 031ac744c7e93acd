"""litejobs settings: typed values from the environment and `.env`.

This is the only module that reads `os.environ`. Each setting has a default
and a one-line description; `.env.example` lists them all. A bad value stops
the program at import with a message naming the variable and the form it
expects, never with a traceback.
"""

import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent

SETTINGS = {}  # name -> (default, description), read by the docs test
_errors = []


def _define(name, default, description, parse=str):
    SETTINGS[name] = (default, description)
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        _errors.append(f"{name}: {exc}")
        return default


def _number(kind, low=None, high=None):
    """A parser of int or float values within [low, high]."""
    expected = "a whole number" if kind is int else "a number"

    def parse(raw):
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"expected {expected}, got {raw!r}") from None
        if value != value or (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"expected a number from {low} to {high}, got {value}")
        return value

    return parse


def _int(low=None, high=None):
    return _number(int, low, high)


def _float(low=None, high=None):
    return _number(float, low, high)


def _bool(raw):
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {raw!r}")


def _choice(*choices):
    def parse(raw):
        if raw not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        return raw

    return parse


def _level(raw):
    """A logging level name, in any case."""
    levels = ("DEBUG", "INFO", "WARNING", "ERROR")
    if raw.upper() not in levels:
        raise ValueError(f"expected one of {', '.join(levels)} (any case), got {raw!r}")
    return raw.upper()


def _url(*schemes):
    forms = {
        "sqlite": "sqlite:///relative/path.db or sqlite:////absolute/path.db",
        "redis": "redis://host:port/db",
        "postgresql": "postgresql://user:password@host:port/dbname",
        "http": "http://host:port/path",
        "https": "https://host/path",
        "smtp": "smtp://user:password@host:port",
        "smtps": "smtps://user:password@host:port",
    }

    def parse(raw):
        scheme = urlsplit(raw).scheme
        if scheme.split("+")[0] in ("postgres", "postgresql"):
            # postgres://, postgresql+pool://, postgresql+psycopg://: the forms people paste; all pooled.
            raw, scheme = "postgresql" + raw[len(scheme) :], "postgresql"
        if scheme not in schemes:
            expected = " or ".join(forms[s] for s in schemes)
            raise ValueError(f"unknown scheme {scheme!r}; use {expected}")
        return raw

    return parse


def _pairs(value_parse):
    """Parse `a=1,b=2` into {'a': 1, 'b': 2}."""

    def parse(raw):
        pairs = {}
        for item in raw.split(","):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"expected name=value pairs separated by commas, got {item!r}")
            pairs[key.strip()] = value_parse(value.strip())
        return pairs

    return parse


def _list(raw):
    return [item.strip() for item in raw.split(",") if item.strip()]


def _timezone(raw):
    """An IANA time zone name that this machine's time zone database knows."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(raw)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {raw!r}; use an IANA name such as UTC or Europe/Berlin") from None
    return raw


# The real environment wins over `.env`, so systemd units and tests stay in control;
# the test suite reads no file at all (ENV_FILE=none), whatever the project's `.env` holds.
ENV_FILE = _define(
    "ENV_FILE", str(BASE_DIR / ".env"), "settings file read at start (the environment wins); none = no file"
)
if ENV_FILE != "none":
    load_dotenv(ENV_FILE, override=False)

# -- Where things live -------------------------------------------------------
DATA_DIR = Path(_define("DATA_DIR", "./data", "folder for SQLite files, the mail outbox and uploads"))
if not DATA_DIR.is_absolute():
    DATA_DIR = (Path.cwd() / DATA_DIR).resolve()
OUTBOX_DIR = DATA_DIR / "outbox"
DATABASE_URL = _define(
    "DATABASE_URL",
    f"sqlite:///{(DATA_DIR / 'litejobs.db').as_posix()}",
    "app database: SQLite file in DATA_DIR by default, postgresql://… to scale out",
    _url("sqlite", "postgresql"),
)
QUEUE_NAME = _define(
    "QUEUE_NAME",
    "litejobs",
    "the queue's name in its storage: huey's keys on Redis, its rows on PostgreSQL, the rate-limit key prefix",
)
DATABASE_POOL_SIZE = _define(
    "DATABASE_POOL_SIZE", 20, "most PostgreSQL connections each web process or consumer keeps open", _int(1, 1000)
)
QUEUE_URL = _define(
    "QUEUE_URL",
    # In the app's own SQLite file a job's row and its message commit in one transaction.
    DATABASE_URL if DATABASE_URL.startswith("sqlite:") else f"sqlite:///{(DATA_DIR / 'queue.db').as_posix()}",
    "queue storage: the SQLite database (DATABASE_URL) by default, redis://… or postgresql://…",
    _url("sqlite", "redis", "postgresql"),
)

# -- The web process ---------------------------------------------------------
ENV = _define("ENV", "development", "development or production", _choice("development", "production"))
BUILTIN_APPS = ("accounts", "orders", "content", "courses", "webhooks", "knowledge")
APPS = _define(
    "APPS",
    ",".join(BUILTIN_APPS),
    "apps to load: built-ins by short name, others by dotted module path; `none` for the engine alone",
    lambda raw: [] if raw.strip().lower() == "none" else _list(raw),
)
if isinstance(APPS, str):
    APPS = _list(APPS)
FUNCTIONS_DIR = Path(
    _define("FUNCTIONS_DIR", "./functions", "folder whose *.py files are loaded as apps (your own functions)")
)
if not FUNCTIONS_DIR.is_absolute():
    FUNCTIONS_DIR = (Path.cwd() / FUNCTIONS_DIR).resolve()
HOST = _define("HOST", "127.0.0.1", "address the web server listens on")
PORT = _define("PORT", 8000, "TCP port the web server listens on", _int(1, 65535))
SECRET_KEY = _define("SECRET_KEY", "", "signs session cookies; required (32+ characters) in production")
MAX_BODY_BYTES = _define("MAX_BODY_BYTES", 1024 * 1024, "largest JSON body accepted (413 above)", _int(1024))
HEADER_TIMEOUT = _define(
    "HEADER_TIMEOUT",
    30.0,
    "seconds a client gets to send its request line and headers (slow clients are cut off)",
    _float(0.1, 3600),
)
IDLE_TIMEOUT = _define(
    "IDLE_TIMEOUT", 60.0, "seconds a kept-alive connection may stay idle before it is closed", _float(0.1, 3600)
)
MAX_CONNECTIONS = _define(
    "MAX_CONNECTIONS",
    1000,
    "most client connections served at once (kept below the open-file limit); more wait",
    _int(1, 1_000_000),
)
WEB_PROCESSES = _define(
    "WEB_PROCESSES",
    1,
    "web server processes `web.py run` starts on PORT, sharing it (Linux, SO_REUSEPORT); elsewhere always 1",
    _int(1, 64),
)
UPLOAD_MAX_MB = _define("UPLOAD_MAX_MB", 10, "largest upload accepted, in MiB", _int(1, 1024))
LOG_LEVEL = _define("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR (any case): litejobs' own log lines", _level)
LIBRARY_LOG_LEVEL = _define(
    "LIBRARY_LOG_LEVEL",
    "WARNING",
    "DEBUG, INFO, WARNING or ERROR: other libraries' log lines (fontTools, PIL…)",
    _level,
)
TIMEZONE = _define("TIMEZONE", "UTC", "time zone that schedule crontabs are read in (IANA name)", _timezone)
SESSION_HOURS = _define("SESSION_HOURS", 12.0, "hours a dashboard login lasts", _float(0.01, 24 * 366))
LOGIN_ATTEMPTS = _define(
    "LOGIN_ATTEMPTS",
    5,
    "failed dashboard logins per email and client address in 15 minutes before they wait (an address gets 4 times as many over all emails)",
    _int(1, 10000),
)

# -- API hardening and monitoring ----------------------------------------------
# Generous on purpose: one busy client at 1,000 requests/s stays under both.
RATE_LIMIT_PER_KEY = _define(
    "RATE_LIMIT_PER_KEY", 120000, "API requests a minute one API key may make (429 above); 0 = no limit", _int(0, 10**8)
)
RATE_LIMIT_PER_IP = _define(
    "RATE_LIMIT_PER_IP",
    120000,
    "API requests a minute one client address may make (429 above); 0 = no limit",
    _int(0, 10**8),
)
TRUSTED_PROXIES = _define(
    "TRUSTED_PROXIES",
    ["127.0.0.1", "::1"],
    "addresses of reverse proxies whose X-Forwarded-For header names the client",
    _list,
)
TRUSTED_HOSTS = _define(
    "TRUSTED_HOSTS",
    [],
    "Host names the web app answers, e.g. jobs.example.com,*.example.com (400 otherwise); empty = any",
    _list,
)
CORS_ORIGINS = _define(
    "CORS_ORIGINS",
    [],
    "origins whose browser pages may call /api/v1, e.g. https://app.example.com; * = any; empty = none",
    _list,
)
METRICS_TOKEN = _define(
    "METRICS_TOKEN", "", "bearer token that /metrics requires; empty: open (to loopback only when ENV=production)"
)
METRICS_PUBLIC = _define(
    "METRICS_PUBLIC",
    False,
    "1: with ENV=production and no METRICS_TOKEN, /metrics answers any address, not only loopback",
    _bool,
)

# -- The consumer ------------------------------------------------------------
WORKERS = _define("WORKERS", 4, "worker threads of the consumer process that `web.py run` starts", _int(1, 256))
POLL_MAX_DELAY = _define(
    "POLL_MAX_DELAY", 0.1, "longest pause, in seconds, between queue polls of an idle consumer", _float(0.001, 10)
)
QUEUE_WATCH_INTERVAL = _define(
    "QUEUE_WATCH_INTERVAL",
    0.25,
    "seconds between a standalone consumer's looks at its SQLite queue file, the fallback for a lost wake-up datagram",
    _float(0.005, 60),
)
SHUTDOWN_TIMEOUT = _define(
    "SHUTDOWN_TIMEOUT", 30.0, "seconds running jobs get to finish on a graceful stop", _float(0, 3600)
)
QUEUES = _define(
    "QUEUES",
    [],
    "the queues this consumer serves, e.g. media,sync, or all but some: -media,-sync (priorities still order them); empty: every queue",
    _list,
)
HEARTBEAT_INTERVAL = _define("HEARTBEAT_INTERVAL", 10.0, "seconds between consumer heartbeats", _float(0.1, 3600))
HEARTBEAT_TIMEOUT = _define(
    "HEARTBEAT_TIMEOUT", 60.0, "a consumer silent this long is dead and its running jobs run again", _float(1, 86400)
)


def _size(raw):
    """`5%` of the disk, or a size in bytes with a unit: `50MB`, `1GB`; returns (percent, bytes)."""
    text = raw.strip().upper().replace(" ", "")
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 <= percent < 100:
                raise ValueError
            return (percent, None)
        for unit, factor in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024), ("B", 1)):
            if text.endswith(unit):
                return (None, int(float(text[: -len(unit)]) * factor))
    except ValueError:
        pass
    raise ValueError(f"expected a percentage of the disk (5%) or a size (50MB, 1GB), got {raw!r}")


DISK_RESERVE = _define(
    "DISK_RESERVE",
    None,
    "free space kept on the data disk: `5%` or `50MB`; an enqueue below it answers 507 (default 5%, at most 50 MB)",
    _size,
)
MAX_RECOVERIES = _define(
    "MAX_RECOVERIES", 3, "times a job lost with its worker is run again before it fails", _int(0, 100)
)
# The engine's own queues; each app declares its queues' priorities (hooks.App(queues=...)),
# so APPS=orders lists only the queues that can hold work.
DEFAULT_QUEUE_PRIORITIES = {"default": 1, "maintenance": 3}
QUEUE_PRIORITIES = {
    **DEFAULT_QUEUE_PRIORITIES,
    **_define("QUEUE_PRIORITIES", {}, "queue priorities over the defaults, e.g. media=9,emails=8", _pairs(_int())),
}
CONCURRENCY_LIMITS = _define(
    "CONCURRENCY_LIMITS",
    {},
    "most jobs running at once across all consumers, per queue or function, e.g. media=2,trigger_full_sync=1",
    _pairs(_int(1, 100000)),
)
JOB_TIMEOUT = _define(
    "JOB_TIMEOUT",
    1800.0,
    "seconds a job may run when its function sets no timeout of its own; 0 = no limit",
    _float(0, 366 * 86400),
)
JOB_HISTORY_DAYS = _define("JOB_HISTORY_DAYS", 30, "days finished jobs stay in the history", _int(1, 3650))

# -- Orders and the provider -------------------------------------------------
PROVIDER_URL = _define(
    "PROVIDER_URL", "", "order provider base URL; empty: the built-in sandbox", _url("http", "https")
)
PROVIDER_TOKEN = _define("PROVIDER_TOKEN", "sandbox-token", "token sent to the provider in the X-Provider-Token header")
SANDBOX = _define(
    "SANDBOX",
    False,
    "1: mount the built-in sandbox provider at /sandbox with ENV=production (always on in development)",
    _bool,
)
PROVIDER_TIMEOUT = _define("PROVIDER_TIMEOUT", 10.0, "seconds to wait for the provider", _float(0.1, 300))
PROVIDER_CONNECT_TIMEOUT = _define(
    "PROVIDER_CONNECT_TIMEOUT", 5.0, "seconds to wait for a connection to the provider", _float(0.1, 300)
)
ORDER_FIRST_CHECK_DELAY = _define(
    "ORDER_FIRST_CHECK_DELAY", 60.0, "seconds from dispatch to the first status check", _float(0, 86400)
)
ORDER_BACKOFF_BASE = _define("ORDER_BACKOFF_BASE", 30.0, "first delay between status checks", _float(0, 86400))
ORDER_BACKOFF_MAX = _define("ORDER_BACKOFF_MAX", 600.0, "longest delay between status checks", _float(0, 86400))
ORDER_MAX_CHECKS = _define("ORDER_MAX_CHECKS", 20, "status checks before an order fails", _int(1, 10000))
ORDER_DEADLINE_HOURS = _define(
    "ORDER_DEADLINE_HOURS", 24.0, "hours after which a pending order fails", _float(0.001, 8760)
)
ORDER_BATCH_SIZE = _define("ORDER_BATCH_SIZE", 100, "most orders one sweep enqueues checks for", _int(1, 100000))
SANDBOX_COMPLETE_AFTER = _define(
    "SANDBOX_COMPLETE_AFTER", 5.0, "seconds from dispatch until a sandbox order completes", _float(0, 86400)
)
SANDBOX_LATENCY_MS = _define("SANDBOX_LATENCY_MS", 50, "latency of each sandbox provider call", _int(0, 60000))
SANDBOX_FAILURE_RATE = _define(
    "SANDBOX_FAILURE_RATE", 0.0, "share (0.0 to 1.0) of sandbox calls that answer 500", _float(0, 1)
)

# -- Mail ------------------------------------------------------------------
SMTP_URL = _define(
    "SMTP_URL",
    "",
    "smtp://user:pass@host:port or smtps://…; empty: .eml files in DATA_DIR/outbox",
    _url("smtp", "smtps"),
)
MAIL_FROM = _define("MAIL_FROM", "litejobs <noreply@localhost>", "From address of mails litejobs sends")
BASE_URL = _define("BASE_URL", "", "public URL of the web app, used for links in mails; empty: http://HOST:PORT")
SMTP_TIMEOUT = _define("SMTP_TIMEOUT", 30.0, "seconds to wait for the SMTP server", _float(0.1, 600))

# -- Schedules and analytics ---------------------------------------------------
RUN_SCHEDULES = _define(
    "RUN_SCHEDULES",
    True,
    "1: consumers start the periodic schedules' ticks; 0: they only run jobs (huey_consumer -n)",
    _bool,
)
ENGAGEMENT_HALF_LIFE_DAYS = _define(
    "ENGAGEMENT_HALF_LIFE_DAYS", 7.0, "days after which a post's engagement score counts half", _float(0.01, 3650)
)

# -- Webhooks ------------------------------------------------------------------
WEBHOOK_ALLOW_PRIVATE = _define(
    "WEBHOOK_ALLOW_PRIVATE", False, "1: webhooks may target private, loopback and link-local addresses", _bool
)
WEBHOOK_TIMEOUT = _define("WEBHOOK_TIMEOUT", 10.0, "seconds a webhook receiver has to answer", _float(0.1, 300))
WEBHOOK_RETRY_BASE = _define(
    "WEBHOOK_RETRY_BASE", 5.0, "seconds before retrying a failed webhook delivery, doubling each time", _float(0, 86400)
)
WEBHOOK_MAX_ATTEMPTS = _define(
    "WEBHOOK_MAX_ATTEMPTS", 8, "attempts at a webhook delivery (timeouts, 5xx) before it fails", _int(1, 100)
)

# -- Knowledge (apps/knowledge) -------------------------------------------------
INGEST_URL = _define(
    "INGEST_URL", "", "ingest service base URL; empty: the built-in sandbox ingest", _url("http", "https")
)
INGEST_TOKEN = _define("INGEST_TOKEN", "sandbox-token", "token sent to the ingest service in the X-Ingest-Token header")
INGEST_WEBHOOK_SECRET = _define(
    "INGEST_WEBHOOK_SECRET",
    "",
    "secret the ingest service signs its change webhooks with; empty: derived from SECRET_KEY",
)
QDRANT_URL = _define(
    "QDRANT_URL", "", "Qdrant server for the vectors; empty: the embedded store in DATA_DIR", _url("http", "https")
)
QDRANT_API_KEY = _define("QDRANT_API_KEY", "", "API key for QDRANT_URL, if the server wants one")
QDRANT_COLLECTION = _define(
    "QDRANT_COLLECTION", "knowledge", "Qdrant collection (or embedded store table) of the chunks"
)
EMBEDDINGS_URL = _define(
    "EMBEDDINGS_URL",
    "",
    "OpenAI-compatible embeddings base URL (…/v1); empty: the sandbox embedder",
    _url("http", "https"),
)
EMBEDDINGS_MODEL = _define("EMBEDDINGS_MODEL", "litejobs-hashed-words", "model name sent to EMBEDDINGS_URL")
EMBEDDINGS_API_KEY = _define("EMBEDDINGS_API_KEY", "", "Bearer key sent to EMBEDDINGS_URL")
USERS_SYSTEM_URL = _define(
    "USERS_SYSTEM_URL",
    "",
    "where query results and notices are POSTed; empty: the sandbox receiver",
    _url("http", "https"),
)
USERS_SYSTEM_SECRET = _define(
    "USERS_SYSTEM_SECRET", "", "secret that signs what goes to USERS_SYSTEM_URL; empty: derived from SECRET_KEY"
)
TIER_LIMITS = _define(
    "TIER_LIMITS",
    {"free": 50, "pro": 1000},
    "knowledge queries a day per user tier, lowest tier first",
    _pairs(_int(0, 10**9)),
)
KNOWLEDGE_TIMEOUT = _define(
    "KNOWLEDGE_TIMEOUT", 10.0, "seconds to wait for the ingest service and the embeddings endpoint", _float(0.1, 300)
)

# -- Media and courses ---------------------------------------------------------
UPLOAD_DIR = DATA_DIR / "uploads"  # WebP renditions, served at /uploads/
INCOMING_DIR = DATA_DIR / "incoming"  # originals until processed; never served
CERTIFICATE_DIR = DATA_DIR / "certificates"  # certificate PDFs, served at /certificates-static/
IMAGE_MAX_PIXELS = _define(
    "IMAGE_MAX_PIXELS",
    50_000_000,
    "largest image accepted, in pixels (width × height): the decompression-bomb guard",
    _int(1, 1_000_000_000),
)
MEDIA_MEMORY_MB = _define(
    "MEDIA_MEMORY_MB",
    256,
    "memory the image decoding of one process may hold at once; bigger images are refused, others wait their turn",
    _int(16, 65536),
)
CERTIFICATE_FONT = _define(
    "CERTIFICATE_FONT",
    "",
    "TrueType font file for certificate PDFs; empty: DejaVu Sans, Noto or Arial found on the system",
)
POST_RETENTION_DAYS = _define(
    "POST_RETENTION_DAYS", 180, "posts older than this with no likes, comments or shares are removed", _int(1, 36500)
)
LITEJOBS_URL = _define(
    "LITEJOBS_URL", "", "litejobs that `web.py invoke/jobs/cancel/retry` call; empty: BASE_URL", _url("http", "https")
)
LITEJOBS_KEY = _define("LITEJOBS_KEY", "", "API key that `web.py invoke/jobs/cancel/retry` send")

if _errors:
    sys.exit("litejobs: invalid settings:\n  " + "\n  ".join(_errors))

if not BASE_URL:
    BASE_URL = f"http://{HOST}:{PORT}"

PLACEHOLDER_SECRETS = {"", "change-me", "changeme", "secret", "dev", "development"}
if ENV == "production" and (SECRET_KEY.lower() in PLACEHOLDER_SECRETS or len(SECRET_KEY) < 32):
    sys.exit(
        "litejobs: SECRET_KEY must be set to a random value of 32+ characters when ENV=production; "
        'make one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
    )
if not SECRET_KEY:
    # Development only: a fixed per-checkout key keeps sessions across restarts.
    SECRET_KEY = "dev-only-" + str(BASE_DIR)

HOSTNAME = socket.gethostname()


# Data files hold secrets (sessions, PINs, backups of both): whatever the caller's
# umask, what litejobs creates is readable by its own user only (0600 files in 0700
# folders); the systemd units set UMask=0077 too.
os.umask(0o077)


def ensure_dir(path, setting):
    """Create folder `path`, or stop with a message naming the setting that chose it."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        sys.exit(f"litejobs: cannot create the folder {path} ({setting}): {exc.strerror}")


ensure_dir(DATA_DIR, "DATA_DIR")
try:
    DATA_DIR.chmod(0o700)  # a folder made before the umask: other users cannot look inside
except OSError:
    pass  # not ours to change (a mount point): its owner decides
