#!/usr/bin/env bash
# Install edgeagent onto a device: a venv under /opt, a system user, the systemd unit and a config
# under /etc/edgeagent. Idempotent: run it again to upgrade; an existing config is never touched.
#
#   sudo scripts/install.sh [--prefix ROOT] [--extras camera,images] [--pip-args "..."]
#                           [--package WHEEL] [--system-site-packages] [--start]
#                           [--accelerator coral-usb|coral-pcie|arm-gpu|npu-teflon]...
#
# --accelerator NAME installs systemd/edgeagent.service.d/NAME.conf (the device nodes and groups
# that accelerator needs) and puts the service user in those groups (repeatable).
# --prefix builds into another root (an image, even an empty directory): the user and groups go
# into ROOT/etc/{passwd,group,shadow,gshadow} (no tool reads the host's), files are owned by the
# ids from ROOT, and the venv's scripts name /opt/edgeagent/venv, the path once ROOT is /.
# The venv is made for the image's own interpreter: its bin/python names /usr/bin/python3 (a
# path inside ROOT once ROOT is /), never the build host's. The wheels pip picks are the host's,
# so a ROOT whose python3 is another minor version or another architecture is refused: run
# install.sh inside the image's chroot instead (pi-gen's on_chroot; qemu-user-static for arm64).
# --system-site-packages lets the venv see apt-installed modules (picamera2 comes from apt as
# python3-picamera2, not PyPI); it is on by default where the host's python imports picamera2.
set -euo pipefail

PREFIX=""
EXTRAS="camera,images"
PIP_ARGS=""
PACKAGE=""
START=0
SYSTEM_SITE=auto
ACCELERATORS=""
SRC="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="${2%/}"; shift 2 ;;
    --extras) EXTRAS="$2"; shift 2 ;;
    --pip-args) PIP_ARGS="$2"; shift 2 ;;
    --package) PACKAGE="$2"; shift 2 ;;   # a wheel or requirement instead of this source tree
    --start) START=1; shift ;;
    --accelerator) ACCELERATORS="$ACCELERATORS ${2//,/ }"; shift 2 ;;
    --system-site-packages) SYSTEM_SITE=1; shift ;;
    --no-system-site-packages) SYSTEM_SITE=0; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
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

die() { echo "install.sh: $*" >&2; exit 1; }

# accelerators: their drop-ins must exist, and their SupplementaryGroups become the user's groups
EXTRA_GROUPS=""
for acc in $ACCELERATORS; do
  conf="$SRC/systemd/edgeagent.service.d/$acc.conf"
  if [ ! -f "$conf" ]; then
    known=$(cd "$SRC/systemd/edgeagent.service.d" && ls -- *.conf | sed 's/\.conf$//' | tr '\n' ' ')
    echo "install.sh: --accelerator $acc: unknown (known: ${known% })" >&2; exit 2
  fi
  EXTRA_GROUPS="$EXTRA_GROUPS $(sed -n 's/^SupplementaryGroups=//p' "$conf" | tr '\n' ' ')"
done

# The image's python3: its minor version from the name /usr/bin/python3 links to, its
# architecture from the ELF header (e_machine). Empty when ROOT has none yet.
elf_arch() {
  case "$(od -An -tu2 -j18 -N2 "$1" 2>/dev/null | tr -d ' ')" in
    62) echo x86_64 ;; 183) echo aarch64 ;; 40) echo armv7l ;; 3) echo i686 ;; 243) echo riscv64 ;; *) echo unknown ;;
  esac
}
HOST_VER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
HOST_ARCH=$(uname -m)
if [ -n "$PREFIX" ]; then
  img_py="$PREFIX/usr/bin/python3"
  if [ -e "$img_py" ] || [ -L "$img_py" ]; then
    name=$(basename "$(readlink "$img_py" || echo python3)")
    img_exe="$PREFIX/usr/bin/$name"
    IMG_VER=$(echo "$name" | sed -n 's/^python\([0-9]*\.[0-9]*\)$/\1/p')
    IMG_ARCH=$(elf_arch "$img_exe")
    if [ "$IMG_VER" != "$HOST_VER" ] || [ "$IMG_ARCH" != "$HOST_ARCH" ]; then
      echo "install.sh: $PREFIX has python${IMG_VER:-3 (version unknown)} for $IMG_ARCH, this host python$HOST_VER for $HOST_ARCH: run install.sh inside the image's chroot (as pi-gen's on_chroot does), not from this host" >&2
      exit 2
    fi
  else
    say "$PREFIX has no /usr/bin/python3 yet: the venv expects python$HOST_VER for $HOST_ARCH there"
  fi
fi

# 1. the system user and group
if [ -n "$PREFIX" ]; then
  # Into an image: write the entries into ROOT's own files (groupadd --prefix fails on an empty
  # root and would read the host's login.defs). System ids count down from 999, as useradd's do.
  mkdir -p "$PREFIX/etc"
  for f in passwd group shadow gshadow; do [ -e "$PREFIX/etc/$f" ] || : > "$PREFIX/etc/$f"; done
  chmod 0640 "$PREFIX/etc/shadow" "$PREFIX/etc/gshadow"
  free_id() {  # the highest id below 1000 used by neither passwd nor group
    awk -F: '{ used[$3] = 1 } END { for (i = 999; i >= 100; i--) if (!(i in used)) { print i; exit } }' \
      "$PREFIX/etc/passwd" "$PREFIX/etc/group"
  }
  add_group() {  # name [gid]
    grep -q "^$1:" "$PREFIX/etc/group" && return 0
    local gid="${2:-$(free_id)}"
    [ -n "$gid" ] || die "no free system group id in $PREFIX/etc/group"
    echo "$1:x:$gid:" >> "$PREFIX/etc/group"
    echo "$1:!::" >> "$PREFIX/etc/gshadow"
    say "created group $1 ($gid) in $PREFIX/etc/group"
  }
  add_group edgeagent
  # the unit's SupplementaryGroups must exist: Debian's base-passwd ids where the image lacks them
  add_group video 44
  add_group dialout 20
  for g in $EXTRA_GROUPS; do add_group "$g"; done
  if ! grep -q '^edgeagent:' "$PREFIX/etc/passwd"; then
    gid=$(awk -F: '$1 == "edgeagent" { print $3 }' "$PREFIX/etc/group")
    uid=$(free_id)
    [ -n "$uid" ] || die "no free system user id in $PREFIX/etc/passwd"
    echo "edgeagent:x:$uid:$gid:edgeagent daemon:/var/lib/edgeagent:/usr/sbin/nologin" >> "$PREFIX/etc/passwd"
    echo "edgeagent:!:$(( $(date +%s) / 86400 )):0:99999:7:::" >> "$PREFIX/etc/shadow"
    say "created user edgeagent ($uid) in $PREFIX/etc/passwd"
  fi
  for g in video dialout $EXTRA_GROUPS; do
    if ! grep -Eq "^$g:[^:]*:[^:]*:(.*,)?edgeagent(,|$)" "$PREFIX/etc/group"; then
      sed -i -E "s/^($g:[^:]*:[^:]*:)(.*)$/\1\2,edgeagent/; s/^($g:[^:]*:[^:]*:),edgeagent$/\1edgeagent/" "$PREFIX/etc/group"
    fi
  done
else
  if ! getent group edgeagent >/dev/null; then
    groupadd --system edgeagent || die "groupadd edgeagent failed"
    say "created group edgeagent"
  fi
  if ! getent passwd edgeagent >/dev/null; then
    useradd --system --gid edgeagent --home-dir /var/lib/edgeagent --no-create-home \
      --shell /usr/sbin/nologin --comment "edgeagent daemon" edgeagent || die "useradd edgeagent failed"
    say "created user edgeagent"
  fi
  for g in $EXTRA_GROUPS; do  # an accelerator's group its driver package has not created yet
    getent group "$g" >/dev/null || { groupadd --system "$g" && say "created group $g"; } || die "groupadd $g failed"
  done
  for g in video dialout $EXTRA_GROUPS; do
    if getent group "$g" >/dev/null && ! id -nG edgeagent | tr ' ' '\n' | grep -qx "$g"; then
      usermod -aG "$g" edgeagent || die "usermod -aG $g edgeagent failed"
    fi
  done
fi
# numeric ids from the root being installed (an image's ids are not the host's)
EA_UID=$(awk -F: '$1 == "edgeagent" { print $3 }' "$PREFIX/etc/passwd")
EA_GID=$(awk -F: '$1 == "edgeagent" { print $3 }' "$PREFIX/etc/group")
[ -n "$EA_UID" ] && [ -n "$EA_GID" ] || die "user edgeagent missing from $PREFIX/etc/passwd or group"

# 2. the virtualenv and the package
if [ "$SYSTEM_SITE" = auto ]; then
  SYSTEM_SITE=0
  if "$PYTHON" -c 'import picamera2' >/dev/null 2>&1; then SYSTEM_SITE=1; say "picamera2 found: the venv sees system site-packages"; fi
fi
if [ -n "$PREFIX" ] && [ -f "$VENV/pyvenv.cfg" ]; then
  # an image's venv names the image's python: point it at this host's again for the build
  site=$(sed -n 's/^include-system-site-packages = //p' "$VENV/pyvenv.cfg")
  # --without-pip: the venv has its pip; installing it again is most of an upgrade's time
  "$PYTHON" -m venv --upgrade --without-pip "$VENV"
  sed -i "s/^include-system-site-packages = .*/include-system-site-packages = ${site:-false}/" "$VENV/pyvenv.cfg"
elif [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" && say "created venv $VENV"
fi
if [ "$SYSTEM_SITE" = 1 ]; then
  sed -i 's/^include-system-site-packages = .*/include-system-site-packages = true/' "$VENV/pyvenv.cfg"
fi
if [ -n "$EXTRAS" ] && pkg-config --exists libsystemd 2>/dev/null; then EXTRAS="$EXTRAS,systemd"; fi
# shellcheck disable=SC2086
target="${PACKAGE:-$SRC}"; [ -n "$EXTRAS" ] && target="$target[$EXTRAS]"
"$VENV/bin/python" -m pip install -q $PIP_ARGS "$target"  # not bin/pip: its shebang may name /opt already
say "installed edgeagent $("$VENV/bin/python" -c 'import edgeagent; print(edgeagent.__version__)') into $VENV"
if [ -n "$PREFIX" ]; then
  # pip wrote ROOT/opt/... into the scripts' shebangs and activate files: name the final path
  final="/opt/edgeagent/venv"
  { grep -rlIF "$VENV" "$VENV/bin" 2>/dev/null || true; } | while read -r f; do
    [ -L "$f" ] || sed -i "s#$VENV#$final#g" "$f"
  done
  say "venv scripts point at $final (the path once $PREFIX is /)"
  # the venv's interpreter is the image's /usr/bin/python3, not this host's
  for f in "$VENV"/bin/python "$VENV"/bin/python3 "$VENV/bin/python$HOST_VER"; do
    [ ! -L "$f" ] || [ "$(readlink "$f")" = python ] || [ "$(readlink "$f")" = python3 ] || ln -sfn /usr/bin/python3 "$f"
  done
  sed -i -e "s#^home = .*#home = /usr/bin#" -e "s#^executable = .*#executable = /usr/bin/python$HOST_VER#" \
      -e "s#^command = .*#command = /usr/bin/python3 -m venv $final#" "$VENV/pyvenv.cfg"
  say "venv interpreter: /usr/bin/python3 (python$HOST_VER, $HOST_ARCH) inside the image"
fi

# the command on PATH (README: `edgeagent ...`)
install -d "$PREFIX/usr/local/bin"
ln -sfn /opt/edgeagent/venv/bin/edgeagent "$PREFIX/usr/local/bin/edgeagent"

# 3. config and trusted keys (never overwrite what the operator wrote)
install -d -m 0750 "$ETC" "$ETC/keys"
if [ ! -f "$ETC/config.toml" ]; then
  install -m 0640 "$SRC/config.example.toml" "$ETC/config.toml"
  say "wrote $ETC/config.toml: set [model] name/initial and [mqtt] host, put publisher keys in $ETC/keys/"
else
  say "kept existing $ETC/config.toml"
fi
# readable by the service user by its numeric id from this root (a name would be looked up on the host)
chown -R "0:$EA_GID" "$ETC" || die "cannot chown $ETC to 0:$EA_GID (run as root)"

# 4. state directory (systemd's StateDirectory= also creates it) and the unit
install -d -m 0750 "$STATE"
chown "$EA_UID:$EA_GID" "$STATE" || die "cannot chown $STATE to $EA_UID:$EA_GID (run as root)"
install -D -m 0644 "$SRC/systemd/edgeagent.service" "$UNIT"
say "installed $UNIT"
for acc in $ACCELERATORS; do
  install -D -m 0644 "$SRC/systemd/edgeagent.service.d/$acc.conf" "$UNIT.d/$acc.conf"
  say "installed $UNIT.d/$acc.conf (groups:$(sed -n 's/^SupplementaryGroups=/ /p' "$UNIT.d/$acc.conf" | tr -d '\n'))"
done

if [ -z "$PREFIX" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable edgeagent.service >/dev/null
  if [ "$START" = 1 ]; then systemctl restart edgeagent.service; say "started: journalctl -u edgeagent -f"; fi
else
  say "not on a running systemd (or --prefix): enable with 'systemctl enable --now edgeagent'"
fi
