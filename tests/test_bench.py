"""The bench tells the truth: bench/run.py fails when a row fails, leaves no folder
or process behind, and no bench module shadows a module of the app or a library.

These run bench/run.py's own code in a child process with a plan of small rows
(a real process started and a real scratch folder made by each), not the
benchmarks themselves.
"""

import importlib.machinery
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))
import common  # noqa: E402

sys.path.remove(str(BENCH))

# A run whose plan is given here: `boom` starts a process, makes a scratch folder and
# raises; `fine` returns a row; `skipped` says its service is down; `slow` waits.
RUN = """
import json, os, sys, time
import common, run

pid_file = sys.argv[2]

def start_sleeper():
    folder = common.scratch("row")
    process = common.Process([sys.executable, "-c", "import time; time.sleep(120)"], dict(os.environ),
                             folder / "sleeper.log")
    with open(pid_file, "w") as handle:
        json.dump({"pid": process.pid, "folder": str(folder)}, handle)

def boom():
    start_sleeper()
    raise RuntimeError("the row broke")

def fine():
    return [{"id": "fine", "benchmark": "fine row", "litejobs": "1 job/s", "data": {}}]

def skipped():
    return run._skipped("skipped", "skipped row", "redis unreachable")

def slow():
    start_sleeper()
    time.sleep(60)
    return fine()

rows = {"boom": boom, "fine": fine, "skipped": skipped, "slow": slow}
run.plan = lambda opts: [(name, rows[name], True) for name in sys.argv[3].split(",")]
sys.exit(run.main(["--out", sys.argv[1]]))
"""


def start_run(tmp_path, rows):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k != common.SCRATCH_PARENT_ENV}
    env["TMPDIR"] = str(scratch)
    out, pid_file = tmp_path / "out.json", tmp_path / "sleeper.json"
    process = subprocess.Popen(
        [sys.executable, "-c", RUN, str(out), str(pid_file), rows],
        cwd=BENCH, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    return process, scratch, out, pid_file


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has finished; its parent (the run) just has not reaped it.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_no_bench_module_shadows_a_module_of_the_app_or_a_library():
    assert common.shadowing_modules() == {}
    # As a script in bench/ sees it (its folder first on sys.path), every module of
    # the app resolves to the app's own file.
    names = [p.stem for p in ROOT.glob("*.py")] + [p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()]
    path = [str(BENCH), str(ROOT), *sys.path]
    for name in names:
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        assert spec is not None and not spec.origin.startswith(str(BENCH) + os.sep), name


def test_the_shadow_check_finds_a_clash(tmp_path):
    for name in ("settings", "json", "bench_only_name"):
        (tmp_path / f"{name}.py").write_text("")
    found = common.shadowing_modules(tmp_path)
    assert set(found) == {"settings", "json"}
    assert found["settings"] == str(ROOT / "settings.py")


def test_a_failed_row_fails_the_run_and_leaves_nothing_behind(tmp_path):
    process, scratch, out, pid_file = start_run(tmp_path, "boom,fine")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    rows = {row["id"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["boom"]["status"] == "failed" and "the row broke" in rows["boom"]["result"]
    assert rows["fine"]["status"] == "ok"
    assert "1 of 2 rows did not run to the end: boom (failed" in output
    started = json.loads(pid_file.read_text())
    assert not alive(started["pid"]), "the failed row's process is still running"
    assert list(scratch.iterdir()) == []  # the run's scratch folder, and the row's in it, are gone


def test_a_skipped_row_fails_the_run_too(tmp_path):
    process, scratch, out, _ = start_run(tmp_path, "fine,skipped")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert "skipped (skipped: redis unreachable)" in output
    assert list(scratch.iterdir()) == []


def test_a_run_prints_its_header_and_writes_json(tmp_path):
    process, scratch, out, _ = start_run(tmp_path, "fine")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    lines = output.splitlines()
    assert lines[0].startswith("litejobs benchmarks, 20") and " UTC, " in lines[0]
    assert lines[1].startswith("machine: ") and " cores, " in lines[1]
    assert lines[2].startswith("command: .venv/bin/python bench/run.py --out ")
    assert "quick run of" in output or "full run of" in output
    written = json.loads(out.read_text())
    assert written["machine"]["nproc"] == os.cpu_count() and written["machine"]["cpu"]
    assert written["command"].startswith(".venv/bin/python bench/run.py") and written["seconds"] >= 0
    assert [row["status"] for row in written["rows"]] == ["ok"]
    assert list(scratch.iterdir()) == []


def test_sigterm_stops_the_run_and_cleans_up(tmp_path):
    process, scratch, _, pid_file = start_run(tmp_path, "slow")
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and process.poll() is None, "the slow row never started"
        time.sleep(0.05)
    started = json.loads(pid_file.read_text())
    assert Path(started["folder"]).is_dir()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == 143
    assert not alive(started["pid"])
    assert list(scratch.iterdir()) == []


def test_quick_runs_the_headline_rows():
    listed = subprocess.run(
        [sys.executable, "bench/run.py", "--list"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != common.SCRATCH_PARENT_ENV},
    )
    assert listed.returncode == 0, listed.stderr
    quick = {line.split()[0] for line in listed.stdout.splitlines() if line.endswith("(quick)")}
    assert {"drain-sqlite-thread", "drain-redis-thread", "http", "latency-standalone-sqlite", "peers"} <= quick
    assert "history" not in quick
    makefile = (ROOT / "Makefile").read_text()
    assert "bench-quick:" in makefile and "bench/run.py --quick" in makefile
