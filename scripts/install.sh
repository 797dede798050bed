#!/usr/bin/env bash
# Install edgeagent onto a device: a venv under /opt, a system user, the systemd unit and a config
# under /etc/edgeagent. Idempotent: run it again to upgrade; an existing config is never touched.
#
#   sudo scripts/install.sh [--prefix ROOT] [--extras camera,images] [--pip-args "..."]
#                           [--package WHEEL] [--start]
#
# --prefix installs into another root (an image being built, or a test's temporary directory).
set -euo pipefail

PREFIX=""
EXTRAS="camera,images"
PIP_ARGS=""
PACKAGE=""
START=0
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="${2%/}"; shift 2 ;;
    --extras) EXTRAS="$2"; shift 2 ;;
    --pip-args) PIP_ARGS="$2"; shift 2 ;;
    --package) PACKAGE="$2"; shift 2 ;;   # a wheel or requirement instead of this source tree
    --start) START=1; shift ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

if [ -z "$PREFIX" ] && [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root (sudo), or give --prefix" >&2; exit 2
fi

VENV="$PREFIX/opt/edgeagent/venv"
ETC="$PREFIX/etc/edgeagent"
UNIT="$PREFIX/etc/systemd/system/edgeagent.service"
STATE="$PREFIX/var/lib/edgeagent"
say() { echo "install.sh: $*"; }

# 1. the system user and group
uflags=(); [ -n "$PREFIX" ] && uflags=(--prefix "$PREFIX")
if ! grep -q '^edgeagent:' "$PREFIX/etc/group" 2>/dev/null; then
  groupadd "${uflags[@]}" --system edgeagent && say "created group edgeagent"
fi
if ! grep -q '^edgeagent:' "$PREFIX/etc/passwd" 2>/dev/null; then
  useradd "${uflags[@]}" --system --gid edgeagent --home-dir /var/lib/edgeagent --no-create-home \
    --shell /usr/sbin/nologin --comment "edgeagent daemon" edgeagent && say "created user edgeagent"
fi
for g in video dialout; do
  if grep -q "^$g:" "$PREFIX/etc/group" 2>/dev/null && ! grep -Eq "^$g:[^:]*:[^:]*:(.*,)?edgeagent(,|$)" "$PREFIX/etc/group"; then
    usermod "${uflags[@]}" -aG "$g" edgeagent || true
  fi
done

# 2. the virtualenv and the package
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" && say "created venv $VENV"
fi
if [ -n "$EXTRAS" ] && pkg-config --exists libsystemd 2>/dev/null; then EXTRAS="$EXTRAS,systemd"; fi
# shellcheck disable=SC2086
target="${PACKAGE:-$SRC}"; [ -n "$EXTRAS" ] && target="$target[$EXTRAS]"
"$VENV/bin/pip" install -q $PIP_ARGS "$target"
say "installed edgeagent $("$VENV/bin/python" -c 'import edgeagent; print(edgeagent.__version__)') into $VENV"

# 3. config and trusted keys (never overwrite what the operator wrote)
install -d -m 0750 "$ETC" "$ETC/keys"
if [ ! -f "$ETC/config.toml" ]; then
  install -m 0640 "$SRC/config.example.toml" "$ETC/config.toml"
  say "wrote $ETC/config.toml: set [model] name/initial and [mqtt] host, put publisher keys in $ETC/keys/"
else
  say "kept existing $ETC/config.toml"
fi
chgrp -R edgeagent "$ETC" 2>/dev/null || true

# 4. state directory (systemd's StateDirectory= also creates it) and the unit
install -d -m 0750 "$STATE"
chown edgeagent:edgeagent "$STATE" 2>/dev/null || true
install -D -m 0644 "$SRC/systemd/edgeagent.service" "$UNIT"
say "installed $UNIT"

if [ -z "$PREFIX" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable edgeagent.service >/dev/null
  if [ "$START" = 1 ]; then systemctl restart edgeagent.service; say "started: journalctl -u edgeagent -f"; fi
else
  say "not on a running systemd (or --prefix): enable with 'systemctl enable --now edgeagent'"
fi
