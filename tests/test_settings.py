"""Settings: defaults, `.env`, clear errors at start, and the docs listing every one."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import settings
from helpers import base_env

ROOT = Path(__file__).resolve().parent.parent


def run_python(code, tmp_path, **env):
    """Run `code` in a fresh interpreter in the project folder with only `env` set."""
    environ = base_env()
    environ.update({"DATA_DIR": str(tmp_path / "data"), **env})
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("PORT", "eighty", "PORT: expected a whole number, got 'eighty'"),
        ("PORT", "70000", "PORT: expected a number from 1 to 65535"),
        ("ENV", "prod", "ENV: expected one of development, production"),
        ("QUEUE_URL", "rediss2://x", "QUEUE_URL: unknown scheme 'rediss2'; use sqlite:///"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL: unknown scheme 'mysql'"),
        ("SANDBOX_FAILURE_RATE", "2", "SANDBOX_FAILURE_RATE: expected a number from 0 to 1"),
        ("QUEUE_PRIORITIES", "media", "QUEUE_PRIORITIES: expected name=value pairs"),
    ],
)
def test_bad_value_stops_with_a_message_naming_it(tmp_path, name, value, expected):
    result = run_python("import settings", tmp_path, **{name: value})
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("secret", ["", "change-me", "short"])
def test_production_refuses_placeholder_secret_key(tmp_path, secret):
    result = run_python("import settings", tmp_path, ENV="production", SECRET_KEY=secret)
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr and "Traceback" not in result.stderr


def test_production_accepts_a_real_secret_key(tmp_path):
    result = run_python(
        "import settings; print(settings.ENV)", tmp_path, ENV="production", SECRET_KEY="x" * 40, PROVIDER_TOKEN="t" * 24
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "production"


def test_defaults_and_derived_paths(tmp_path):
    code = "import settings; print(settings.PORT, settings.HOST, settings.DATA_DIR, settings.QUEUE_URL)"
    result = run_python(code, tmp_path)
    port, host, data_dir, queue_url = result.stdout.split()
    assert (port, host) == ("8000", "127.0.0.1")
    assert Path(data_dir).is_absolute() and queue_url == f"sqlite:///{Path(data_dir).as_posix()}/litejobs.db"


def test_dotenv_is_read_but_environment_wins(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "settings.py").write_text((ROOT / "settings.py").read_text())
    (project / ".env").write_text("PORT=9001\nHOST=0.0.0.0\n")
    environ = base_env()
    environ.pop("ENV_FILE", None)  # this test reads a `.env`: the default file, beside settings.py
    environ.update(HOST="127.0.0.2", DATA_DIR=str(tmp_path / "data"))
    result = subprocess.run(
        [sys.executable, "-c", "import settings; print(settings.PORT, settings.HOST)"],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.split() == ["9001", "127.0.0.2"], result.stderr


def test_env_example_lists_every_setting():
    listed = set(re.findall(r"^# ([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    missing = set(settings.SETTINGS) - listed
    assert not missing, f".env.example lacks {sorted(missing)}"
    unknown = listed - set(settings.SETTINGS)
    assert not unknown, f".env.example lists unknown settings {sorted(unknown)}"


def test_only_settings_reads_the_environment():
    for path in ROOT.glob("*.py"):
        if path.name != "settings.py":
            assert "os.environ" not in path.read_text(), f"{path.name} reads os.environ"


def test_create_key_prints_the_key_last_and_stores_only_its_hash(tmp_path):
    result = run_python("import web; web.main(['create-key', 'ci'])", tmp_path)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("lj_") and len(key) > 30
    database = tmp_path / "data" / "litejobs.db"
    check = run_python(
        "import models; row = models.ApiKey.authenticate(%r); print(row.name, row.key_hash != %r)" % (key, key),
        tmp_path,
    )
    assert check.stdout.split() == ["ci", "True"], check.stderr
    assert key.encode() not in database.read_bytes()


def test_create_user_then_duplicate_is_refused(tmp_path):
    code = "import web; web.main(['create-user', 'Ann@Example.com', '--admin', '--password', 'long enough'])"
    first = run_python(code, tmp_path)
    assert first.returncode == 0, first.stderr
    second = run_python(code, tmp_path)
    assert second.returncode != 0 and "exists already" in second.stderr and "Traceback" not in second.stderr


def test_unwritable_data_dir_stops_with_a_clear_message(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_python("import web; web.main(['create-key', 'x'])", tmp_path, DATA_DIR=str(blocker / "data"))
    assert result.returncode != 0
    assert "litejobs:" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_database_stops_with_a_clear_message(tmp_path):
    result = run_python(
        "import web; web.main(['create-key', 'x'])", tmp_path, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none"
    )
    assert result.returncode != 0
    assert "cannot start" in result.stderr and "DATABASE_URL" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["info", "Warning", "DEBUG"])
def test_log_levels_are_read_in_any_case(tmp_path, value):
    code = "import settings; print(settings.LOG_LEVEL, settings.LIBRARY_LOG_LEVEL)"
    result = run_python(code, tmp_path, LOG_LEVEL=value, LIBRARY_LOG_LEVEL=value.lower())
    assert result.stdout.split() == [value.upper(), value.upper()], result.stderr


def test_a_wrong_log_level_names_the_choices(tmp_path):
    result = run_python("import settings", tmp_path, LOG_LEVEL="loud")
    assert result.returncode != 0 and "LOG_LEVEL: expected one of DEBUG, INFO, WARNING, ERROR (any case), got 'loud'" in result.stderr
def test_the_suite_starts_from_the_defaults_whatever_the_shell_or_env_file_holds(tmp_path):
    """A small test run under a shell and a `.env` that both set settings still sees the defaults."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_defaults.py").write_text(
        "import settings\n"
        "def test_defaults():\n"
        "    assert settings.ORDER_FIRST_CHECK_DELAY == 60.0\n"
        "    assert settings.PORT == 8000 and settings.WORKERS == 4 and settings.ENV == 'development'\n"
    )
    env_file = tmp_path / "custom.env"
    env_file.write_text("ORDER_FIRST_CHECK_DELAY=1\nPORT=9999\nWORKERS=1\n")
    environ = dict(os.environ, ENV_FILE=str(env_file), ORDER_FIRST_CHECK_DELAY="1", PORT="9100", ENV="production")
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT)])
    # `-p conftest` loads the suite's own conftest.py first, as it is for every test file.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", str(tmp_path / "tests" / "test_defaults.py")],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


@pytest.mark.parametrize("token", [None, "sandbox-token", "change-me", "Sandbox-Token"])
def test_production_refuses_the_default_provider_token(tmp_path, token):
    env = {"ENV": "production", "SECRET_KEY": "x" * 40}
    if token is not None:
        env["PROVIDER_TOKEN"] = token
    result = run_python("import web", tmp_path, **env)  # the orders app checks it when it loads
    assert result.returncode != 0
    assert "PROVIDER_TOKEN" in result.stderr and "Traceback" not in result.stderr


ROUTES = "import web; print(sorted({r.rule.split('<')[0] for r in web.app.routes if r.rule.startswith('/sandbox')}))"


@pytest.mark.parametrize(
    ("env", "mounted"),
    [
        ({"ENV": "production"}, False),
        ({"ENV": "production", "SANDBOX": "0"}, False),
        ({"ENV": "production", "SANDBOX": "1"}, True),
        ({}, True),  # development: always on
        ({"SANDBOX": "0"}, True),
    ],
)
def test_sandbox_is_mounted_in_production_only_when_asked(tmp_path, env, mounted):
    if env.get("ENV") == "production":
        env = {**env, "SECRET_KEY": "x" * 40, "PROVIDER_TOKEN": "t" * 24}
    result = run_python(ROUTES, tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert ("/sandbox/" in result.stdout) is mounted, result.stdout
