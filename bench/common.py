"""Shared pieces of the benchmarks: scratch folders, real processes, HTTP clients,
percentiles and /proc readings (RSS, CPU time).

Every benchmark runs litejobs as a user would: `huey_consumer jobs.huey` and
`python web.py run` as real processes, configured by environment variables in a
scratch DATA_DIR of their own. Linux only for the /proc readings.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable

# The services the benchmarks use, each with a name of its own so a benchmark
# never touches the test suite's Redis db (15) or PostgreSQL tables.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
# bench/run.py sets this to its own scratch folder, so the scripts it runs make
# theirs inside it and one removal at the end takes them all, even after a failure.
SCRATCH_PARENT_ENV = "BENCH_SCRATCH"
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
POSTGRES_SCHEMA = "litejobs_bench"

# Settings the benchmark sets itself; inherited values would skew a run.
OWN_SETTINGS = (
    "DATA_DIR",
    "DATABASE_URL",
    "QUEUE_URL",
    "HOST",
    "PORT",
    "WORKERS",
    "LOG_LEVEL",
    "POLL_MAX_DELAY",
    "ENV",
    "SECRET_KEY",
)

_run_root = None
_processes = []  # every Process started, so cleanup() can stop what a failed row left running


def driver_setup():
    """Point the driver's own litejobs at a scratch folder, before it is imported
    (settings are read once, at import), and put the project first on sys.path."""
    for name in OWN_SETTINGS:
        os.environ.pop(name, None)
    os.environ["DATA_DIR"] = str(run_root() / "driver")
    os.environ["LOG_LEVEL"] = "WARNING"
    # What this process and the scripts it starts make goes inside its own folder.
    os.environ[SCRATCH_PARENT_ENV] = str(run_root())
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def shadowing_modules(folder=BENCH):
    """Modules in bench/ whose name is also importable from elsewhere (the project, the
    standard library, the venv): as a script's folder comes first on sys.path, such a
    module would shadow the other one. Returns {name: the other module's origin}."""
    import importlib.machinery

    folder = Path(folder).resolve()
    elsewhere = [p for p in sys.path if Path(p or ".").resolve() not in (BENCH, folder)]
    elsewhere.insert(0, str(ROOT))
    found = {}
    for path in sorted(folder.glob("*.py")):
        spec = importlib.machinery.PathFinder.find_spec(path.stem, elsewhere)
        if spec is None and path.stem in sys.builtin_module_names:
            found[path.stem] = "built-in"
        elif spec is not None:
            found[path.stem] = spec.origin
    return found


def add_counts(into, counts):
    """Add one client's {key: count} into the shared totals."""
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


def run_clients(client, clients, timeout):
    """Run client(0) … client(clients - 1) in threads at once and wait for them all."""
    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


def run_root():
    """The scratch folder of this run; every row makes its own folder inside it."""
    global _run_root
    if _run_root is None:
        parent = os.environ.get(SCRATCH_PARENT_ENV) or None
        _run_root = Path(tempfile.mkdtemp(prefix="litejobs-bench-", dir=parent))
    return _run_root


def scratch(name):
    path = run_root() / f"{name}-{time.monotonic_ns()}"
    path.mkdir(parents=True)
    return path


def cleanup():
    """Stop every process still running and remove this run's scratch folder."""
    global _run_root
    for process in _processes:
        try:
            process.stop(timeout=10)
        except Exception:  # noqa: BLE001 - cleaning up must go on
            pass
    _processes.clear()
    if _run_root is not None:
        shutil.rmtree(_run_root, ignore_errors=True)
        _run_root = None


def postgres_url(schema=POSTGRES_SCHEMA):
    """POSTGRES_URL with the search path set to a schema of the benchmark's own."""
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"


def reset_postgres(schema=POSTGRES_SCHEMA):
    """Drop and create the benchmark's own schema; raises when PostgreSQL is down."""
    import psycopg

    with psycopg.connect(POSTGRES_URL, connect_timeout=3, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")


def reset_redis():
    """Flush the benchmark's own Redis db; raises when Redis is down."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    client.ping()
    client.flushdb()


def service_env(data_dir, database_url=None, queue_url=None, **extra):
    """The environment of a litejobs process on `data_dir` (and the given URLs)."""
    env = {k: v for k, v in os.environ.items() if k not in OWN_SETTINGS}
    database_url = database_url or f"sqlite:///{Path(data_dir) / 'litejobs.db'}"
    # As settings.py: the queue lives in the SQLite database unless told otherwise.
    default_queue = database_url if database_url.startswith("sqlite:") else f"sqlite:///{Path(data_dir) / 'queue.db'}"
    env.update(
        DATA_DIR=str(data_dir),
        DATABASE_URL=database_url,
        QUEUE_URL=queue_url or default_queue,
        LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(BENCH)]),
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Process:
    """A real child process with its output in a log file; stopped with SIGINT."""

    def __init__(self, args, env, log_path, cwd=ROOT):
        self.args = args
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(args, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        _processes.append(self)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stop(self, timeout=30):
        if self in _processes:
            _processes.remove(self)
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if not self._log.closed:
            self._log.close()
        return self.popen.returncode

    def tail(self, lines=20):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def consumer_cmd(module="jobs.huey", workers=4, kind="thread", *extra):
    """`huey_consumer MODULE -w N -k KIND`; greenlet workers get gevent's monkey patch first."""
    if kind == "greenlet":
        return [PY, "-m", "gevent.monkey", "--module", "huey.bin.huey_consumer", module, "-w", str(workers), "-k", kind, *extra]
    return [PY, "-m", "huey.bin.huey_consumer", module, "-w", str(workers), "-k", kind, *extra]


def shown(args):
    """A command line as a person would type it from the project folder."""
    parts = []
    for arg in args:
        arg = str(arg)
        if arg == PY:
            arg = ".venv/bin/python"
        elif arg.startswith(str(ROOT) + os.sep):
            arg = os.path.relpath(arg, ROOT)
        parts.append(arg)
    return " ".join(parts)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout, interval=0.05, message="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {message}")
        time.sleep(interval)


# -- /proc readings --------------------------------------------------------------
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid):
    """User + system CPU seconds used by process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def peak_rss_mb(pid):
    """The peak resident set of `pid` in MiB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid):
    """Resident set size of `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid):
    """Child pids of `pid` (process workers of a consumer)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


# -- Numbers ---------------------------------------------------------------------
def percentile(values, p):
    """The p-th percentile (0-100) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(round(p / 100 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def median(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)


# -- HTTP ------------------------------------------------------------------------
class Http:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:`port`."""

    def __init__(self, port, key=None, timeout=60):
        self.port, self.key, self.timeout = port, key, timeout
        self.conn = None
        self.cookies = {}

    def request(self, method, path, body=None, headers=None):
        """(status, body bytes); reconnects once when the server closed the connection."""
        headers = dict(headers or {})
        if self.key:
            headers.setdefault("Authorization", f"Bearer {self.key}")
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                reply = self.conn.getresponse()
                data = reply.read()
                for value in reply.headers.get_all("Set-Cookie") or []:
                    name, _, rest = value.partition("=")
                    self.cookies[name.strip()] = rest.split(";", 1)[0]
                if reply.will_close:
                    self.close()
                return reply.status, data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                self.close()
                # Only a GET is sent again: a POST may have been taken before the connection dropped.
                if attempt == 2 or method != "GET":
                    raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def wait_http(port, path="/health/live", timeout=30, process=None):
    def up():
        if process is not None and not process.alive():
            raise RuntimeError(f"process exited with {process.popen.returncode}:\n{process.tail()}")
        try:
            status, _ = Http(port, timeout=2).request("GET", path)
            return status == 200
        except OSError:
            return False

    wait_until(up, timeout, interval=0.1, message=f"http://127.0.0.1:{port}{path}")


def create_key(env):
    """Create an API key with `python web.py create-key` in `env`; returns it."""
    out = subprocess.run(
        [PY, "web.py", "create-key", "bench"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def start_web(data_dir, *args, name="web", **extra):
    """`python web.py run [args]` on a free port; returns (process, port, env)."""
    port = free_port()
    env = service_env(data_dir, PORT=port, **extra)
    cmd = [PY, "web.py", "run", *args]
    process = Process(cmd, env, Path(data_dir) / f"{name}.log")
    wait_http(port, process=process)
    return process, port, env


def hammer(port, key, make_request, clients, duration, warmup=1.0):
    """`clients` threads, each on one keep-alive connection, sending
    `make_request(i)` -> (method, path, body) for `duration` seconds.

    Returns {"requests", "seconds", "latencies" (s), "statuses": {code: n}, "errors": {what: n}}.
    """
    stop_at = time.monotonic() + warmup + duration
    measure_from = time.monotonic() + warmup
    lock = threading.Lock()
    latencies, statuses, errors = [], {}, {}
    accepted = []

    def client(number):
        conn = Http(port, key)
        i = 0
        mine, my_status, my_errors, my_ids = [], {}, {}, []
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            method, path, body = make_request(number, i)
            i += 1
            started = time.monotonic()
            try:
                status, data = conn.request(method, path, body)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, by kind
                kind = type(exc).__name__
                my_errors[kind] = my_errors.get(kind, 0) + 1
                conn.close()
                continue
            took = time.monotonic() - started
            if started >= measure_from:
                mine.append(took)
                my_status[status] = my_status.get(status, 0) + 1
            if status == 202 and method == "POST":
                try:
                    my_ids.append(json.loads(data)["id"])
                except (ValueError, KeyError):
                    pass
        conn.close()
        with lock:
            latencies.extend(mine)
            accepted.extend(my_ids)
            add_counts(statuses, my_status)
            add_counts(errors, my_errors)

    run_clients(client, clients, duration + warmup + 120)
    return {
        "requests": len(latencies),
        "seconds": duration,
        "latencies": latencies,
        "statuses": statuses,
        "errors": errors,
        "accepted": accepted,
    }


def send_n(port, key, n, clients, make_request):
    """Send exactly `n` requests `make_request(client, i)` -> (method, path, body) from
    `clients` keep-alive connections at once; returns {"seconds", "latencies",
    "statuses", "errors"}."""
    lock = threading.Lock()
    latencies, statuses, errors = [], {}, {}
    shares = [n // clients + (1 if c < n % clients else 0) for c in range(clients)]

    def client(number):
        conn = Http(port, key)
        mine, my_status, my_errors = [], {}, {}
        for i in range(shares[number]):
            method, path, body = make_request(number, i)
            started = time.monotonic()
            try:
                status, _ = conn.request(method, path, body)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, by kind
                my_errors[type(exc).__name__] = my_errors.get(type(exc).__name__, 0) + 1
                conn.close()
                continue
            mine.append(time.monotonic() - started)
            my_status[status] = my_status.get(status, 0) + 1
        conn.close()
        with lock:
            latencies.extend(mine)
            add_counts(statuses, my_status)
            add_counts(errors, my_errors)

    started = time.monotonic()
    run_clients(client, clients, 600)
    return {"seconds": time.monotonic() - started, "latencies": latencies, "statuses": statuses, "errors": errors}
