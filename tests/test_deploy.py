"""deploy/install.sh into a temporary root, and settings files that sh, systemd and
python-dotenv all read alike."""

import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from dotenv import dotenv_values

import settings

ROOT = Path(__file__).resolve().parent.parent
AS_ROOT = os.geteuid() == 0
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a Linux deployment")


def systemd_environment(text):
    """KEY=value pairs as systemd's EnvironmentFile= reads them (systemd.exec(5)): blank lines
    and lines starting with # or ; are ignored, a trailing backslash joins the next line,
    whitespace around an unquoted value is dropped, and '…' or "…" quotes are removed
    (with backslash escapes inside double quotes)."""
    values = {}
    for line in re.sub(r"\\\n", "", text).splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"systemd ignores the name {key!r}"
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        else:
            assert not re.search(r"""["'\\]""", value), f"{key}: a quote or backslash systemd reads otherwise"
        values[key] = value
    return values


def sh_environment(path, user=None):
    """What `set -a; . FILE` exports in sh (as `user`, when given)."""
    script = 'set -a; . "$0" && env -0'
    as_user = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []} if user else {}
    result = subprocess.run(
        ["sh", "-c", script, str(path)], capture_output=True, env={"PATH": os.environ["PATH"]}, timeout=30, **as_user
    )
    assert result.returncode == 0, result.stderr.decode()
    pairs = (item.split("=", 1) for item in result.stdout.decode().split("\0") if "=" in item)
    return {key: value for key, value in pairs if key in settings.SETTINGS}


def uncommented_example(tmp_path):
    lines = (ROOT / ".env.example").read_text().splitlines()
    path = tmp_path / "all.env"
    path.write_text("\n".join(re.sub(r"^# ([A-Z][A-Z0-9_]+=)", r"\1", line) for line in lines) + "\n")
    return path


def test_every_line_of_env_example_uncommented_reads_alike_in_sh_systemd_and_dotenv(tmp_path):
    path = uncommented_example(tmp_path)
    in_sh = sh_environment(path)
    assert set(in_sh) == set(settings.SETTINGS)  # every setting, none lost to a syntax error
    assert in_sh == systemd_environment(path.read_text()) == dict(dotenv_values(path))
    assert in_sh["MAIL_FROM"] == "litejobs <noreply@localhost>"
    # And litejobs accepts every value the example gives.
    environ = {**in_sh, "DATA_DIR": str(tmp_path / "data"), "PATH": os.environ["PATH"]}
    check = subprocess.run(
        [sys.executable, "-c", "import settings; print(settings.MAIL_FROM)"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and check.stdout.strip() == "litejobs <noreply@localhost>", check.stderr


@pytest.fixture
def install_root():
    """A temporary root any user can traverse (a service user reads its env file there), and a
    system user of its own when run as root; both removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="litejobs-install-", dir="/tmp"))
    root.chmod(0o755)
    user = f"ljt{uuid.uuid4().hex[:8]}"
    yield root, user
    shutil.rmtree(root, ignore_errors=True)
    if AS_ROOT:
        subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", user], capture_output=True)  # when userdel left it


def install(root, user):
    result = subprocess.run(
        ["sh", str(ROOT / "deploy" / "install.sh"), "--root", str(root), "--user", user, "--no-pip"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode_and_owner(path):
    info = path.stat()
    return stat.S_IMODE(info.st_mode), pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_install_script_sets_up_a_root_twice_alike(install_root):
    root, user = install_root
    first = install(root, user)
    env_file = root / "etc/litejobs/litejobs.env"
    written = env_file.read_text()
    second = install(root, user)  # idempotent: nothing changes, the settings are kept
    assert env_file.read_text() == written and "wrote" not in second.stdout

    me = pwd.getpwuid(os.geteuid()).pw_name
    group = user if AS_ROOT else grp.getgrgid(os.getegid()).gr_name
    owner = user if AS_ROOT else me
    admin = "root" if AS_ROOT else me
    assert mode_and_owner(root / "etc/litejobs") == (0o750, admin, group)
    assert mode_and_owner(env_file) == (0o640, admin, group)
    assert mode_and_owner(root / "var/lib/litejobs") == (0o750, owner, group if AS_ROOT else owner)
    assert mode_and_owner(root / "opt/litejobs")[:2] == (0o755, admin)
    assert (root / "opt/litejobs/web.py").exists() and (root / "opt/litejobs/.venv/bin/python").exists()
    assert not (root / "opt/litejobs/data").exists() and not (root / "opt/litejobs/.git").exists()
    for unit in ("litejobs-web.service", "litejobs-consumer.service"):
        text = (root / "etc/systemd/system" / unit).read_text()
        assert mode_and_owner(root / "etc/systemd/system" / unit)[0] == 0o644
        assert f"\nUser={user}\n" in text and f"\nGroup={user}\n" in text
        assert "\nEnvironmentFile=/etc/litejobs/litejobs.env\n" in text
    if AS_ROOT:
        account = pwd.getpwnam(user)
        assert (
            account.pw_shell == "/usr/sbin/nologin" and account.pw_uid < 1000 and "created system user" in first.stdout
        )
    else:
        assert "not root: skipping" in first.stdout

    # The service user reads it with sh (through the 0750 folder), and systemd reads the same values.
    in_sh = sh_environment(env_file, user=user if AS_ROOT else None)
    assert in_sh == systemd_environment(written) == dict(dotenv_values(env_file))
    assert in_sh["ENV"] == "production" and in_sh["DATA_DIR"] == "/var/lib/litejobs" and len(in_sh["SECRET_KEY"]) >= 32
    if AS_ROOT:  # any other user is refused
        nobody = subprocess.run(
            ["sh", "-c", '. "$0"', str(env_file)],
            capture_output=True,
            timeout=30,
            user="nobody",
            group="nogroup",
            extra_groups=[],
        )
        assert nobody.returncode != 0


@pytest.mark.parametrize("name", ["litejobs-web.service", "litejobs-consumer.service"])
def test_units_keep_files_private_and_allow_enough_open_files(name):
    values = dict(re.findall(r"^(\w+)=(.*)$", (ROOT / "deploy" / name).read_text(), re.M))
    assert values["UMask"] == "0077" and int(values["LimitNOFILE"]) >= 4096
