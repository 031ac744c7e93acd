#!/bin/sh
# litejobs install: the README's deploy steps ("Running it for real"), safe to run again.
#
#   sudo deploy/install.sh              install this checkout into /opt/litejobs
#   deploy/install.sh --root DIR        the same under DIR (DIR/opt/litejobs, DIR/etc/…), for a try
#
# Options:
#   --root DIR    install under DIR instead of /
#   --user NAME   the system user (and group) the services run as (default litejobs)
#   --no-pip      make the venv but do not pip install requirements.txt into it
#
# What it does, each step only when needed:
#   - a system user and group (no login, home /var/lib/litejobs);
#   - /opt/litejobs: this checkout's files, root:root, and its .venv;
#   - /etc/litejobs 0750 root:GROUP with litejobs.env 0640 root:GROUP: readable by the
#     services, not by other users (it holds SECRET_KEY). A new one starts from
#     .env.example with DATA_DIR, ENV=production and a random SECRET_KEY set;
#     an existing one is kept as it is;
#   - /var/lib/litejobs 0750 USER:GROUP (DATA_DIR, the services' only writable place);
#   - the systemd units in /etc/systemd/system, then `systemctl daemon-reload`.
# Not root (e.g. a try with --root), it skips creating the user and changing owners.
set -eu

ROOT=
SERVICE_USER=litejobs
PIP=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=${2:?--root needs a folder}; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --user) SERVICE_USER=${2:?--user needs a name}; shift 2 ;;
        --user=*) SERVICE_USER=${1#--user=}; shift ;;
        --no-pip) PIP=no; shift ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
# Folders made on the way (/opt/litejobs, parents under --root) must be readable by the
# service user, whatever umask the caller has; files with secrets set their own below.
umask 022
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
fi

SOURCE=$(cd "$(dirname "$0")/.." && pwd)
APP=$ROOT/opt/litejobs
CONFIG=$ROOT/etc/litejobs
ENV_FILE=$CONFIG/litejobs.env
DATA=$ROOT/var/lib/litejobs
UNITS=$ROOT/etc/systemd/system
PYTHON=${PYTHON:-python3}

say() { echo "install.sh: $*"; }

if [ "$(id -u)" -eq 0 ]; then
    AS_ROOT=yes
elif [ -z "$ROOT" ]; then
    echo "install.sh: run it as root (sudo deploy/install.sh), or try it with --root DIR" >&2
    exit 1
else
    AS_ROOT=no
    say "not root: skipping the system user and owners (modes are still set)"
fi

# owner USER:GROUP PATH… — chown when root, nothing otherwise.
owner() {
    if [ "$AS_ROOT" = yes ]; then
        spec=$1
        shift
        chown "$spec" "$@"
    fi
}

# -- The system user -----------------------------------------------------------------
if [ "$AS_ROOT" = yes ] && ! getent passwd "$SERVICE_USER" >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/litejobs --no-create-home \
        --shell /usr/sbin/nologin "$SERVICE_USER"
    say "created system user $SERVICE_USER"
fi

# -- The code and its venv -----------------------------------------------------------
mkdir -p "$APP"
if [ "$SOURCE" != "$APP" ]; then
    # The checkout's files, without its venv, data, caches or git history.
    (cd "$SOURCE" && tar -cf - --exclude=./.venv --exclude=./data --exclude=./.git \
        --exclude=__pycache__ --exclude=./.pytest_cache --exclude=./site .) | (cd "$APP" && tar -xf -)
fi
chmod 0755 "$APP"
if [ "$AS_ROOT" = yes ]; then
    chown -R root:root "$APP"  # tar kept the checkout's owners; the services must not write their code
fi
if [ ! -x "$APP/.venv/bin/python" ]; then
    "$PYTHON" -m venv "$APP/.venv"
    say "created $APP/.venv"
fi
if [ "$PIP" = yes ]; then
    "$APP/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$APP/requirements.txt"
fi

# -- Settings: /etc/litejobs 0750 root:GROUP, litejobs.env 0640 root:GROUP ---------------
mkdir -p "$CONFIG"
chmod 0750 "$CONFIG"
owner "root:$SERVICE_USER" "$CONFIG"
if [ ! -e "$ENV_FILE" ]; then
    secret=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(48))')
    umask 077
    {
        cat "$SOURCE/.env.example"
        echo
        echo "# Set by deploy/install.sh; also set BASE_URL and TRUSTED_HOSTS for this server."
        echo "DATA_DIR=/var/lib/litejobs"
        echo "ENV=production"
        echo "SECRET_KEY=$secret"
    } >"$ENV_FILE"
    umask 022
    say "wrote $ENV_FILE (edit BASE_URL and TRUSTED_HOSTS)"
fi
chmod 0640 "$ENV_FILE"
owner "root:$SERVICE_USER" "$ENV_FILE"

# -- DATA_DIR --------------------------------------------------------------------------
mkdir -p "$DATA"
chmod 0750 "$DATA"
owner "$SERVICE_USER:$SERVICE_USER" "$DATA"

# -- systemd units -----------------------------------------------------------------------
mkdir -p "$UNITS"
for unit in litejobs-web.service litejobs-consumer.service; do
    sed -e "s/^User=litejobs\$/User=$SERVICE_USER/" -e "s/^Group=litejobs\$/Group=$SERVICE_USER/" \
        "$SOURCE/deploy/$unit" >"$UNITS/$unit.tmp"
    chmod 0644 "$UNITS/$unit.tmp"
    mv "$UNITS/$unit.tmp" "$UNITS/$unit"
done
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "units installed; start them with: systemctl enable --now litejobs-web litejobs-consumer"
else
    say "units written to $UNITS"
fi
