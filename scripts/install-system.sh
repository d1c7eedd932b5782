#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs cardd as a system service on a desk or kiosk PC (Debian 12): the package in its own
# virtualenv, the systemd unit, the cardd user and group, the udev rules, the kernel NFC
# blacklist and the polkit rule; then starts it. Run from a checkout or an unpacked sdist.
#
#   sudo scripts/install-system.sh                    # build from this tree, install, enable, start
#   sudo scripts/install-system.sh --wheel cardd-*.whl --wheelhouse ./wheels   # offline
#   scripts/install-system.sh --root /tmp/image       # into a scratch root: files only
#
# Why a virtualenv in /opt/cardd/venv and not a .deb: cardd's dependencies (pyscard, aiohttp,
# cryptography, psycopg, nfcpy, ...) are pinned to versions Debian 12 does not ship, and a venv
# keeps them away from the system's Python. Everything installed is listed in
# /opt/cardd/installed-files, which scripts/uninstall-system.sh removes again.
#
# --root DIR: install below DIR (a scratch root or an image being built). Runs systemd-sysusers
# with --root; skips udevadm, systemctl and modprobe, which act on the running machine. The venv
# there only works at that path (its scripts name their interpreter by absolute path).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=/
WHEEL=""
WHEELHOUSE=""
ENABLE=1
PYTHON=${PYTHON:-python3}

usage() { sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//; /^set -euo/d'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --wheel) WHEEL=$(realpath "$2"); shift 2 ;;
    --wheelhouse) WHEELHOUSE=$(realpath "$2"); shift 2 ;;
    --no-enable) ENABLE=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install-system.sh: unknown option $1" >&2; usage 2 ;;
  esac
done
ROOT=$(realpath -m "$ROOT")
R=${ROOT%/}  # "" for the live system, so "$R/usr/..." is an absolute path either way
LIVE=0
[ "$ROOT" = "/" ] && LIVE=1
if [ "$(id -u)" -ne 0 ] && [ "$LIVE" = 1 ]; then
  echo "install-system.sh: run as root (sudo)" >&2
  exit 2
fi

PREFIX=/opt/cardd
MANIFEST="$R$PREFIX/installed-files"
say() { echo "==> $*"; }

# -- the package --------------------------------------------------------------------------------
say "virtualenv $PREFIX/venv"
mkdir -p "$R$PREFIX"
if [ ! -x "$R$PREFIX/venv/bin/python" ]; then
  "$PYTHON" -m venv "$R$PREFIX/venv"
fi
PIP=("$R$PREFIX/venv/bin/python" -m pip --disable-pip-version-check -q)
if [ -n "$WHEEL" ]; then
  PIP_SRC=("$WHEEL")
else
  # Build from a copy: pip builds in-tree, and a checkout must not gain build/ and egg-info.
  BUILD=$(mktemp -d)
  trap 'rm -rf "$BUILD"' EXIT
  tar -C "$SRC" --exclude=__pycache__ --exclude='*.egg-info' -cf - \
      pyproject.toml README.md MANIFEST.in cardd.toml.sample cardd systemd udev scripts \
    | tar -C "$BUILD" -xf -
  PIP_SRC=("$BUILD")
fi
PIP_OPTS=()
[ -n "$WHEELHOUSE" ] && PIP_OPTS=(--no-index --find-links "$WHEELHOUSE")
say "pip install ${PIP_SRC[*]}"
"${PIP[@]}" install "${PIP_OPTS[@]}" --upgrade "${PIP_SRC[@]}"
"$R$PREFIX/venv/bin/cardd" --version

# -- files ----------------------------------------------------------------------------------
: > "$MANIFEST.new"
put() {  # mode, source, destination (absolute, without the root)
  install -D -m "$1" "$2" "$R$3"
  echo "$3" >> "$MANIFEST.new"
}
put 0644 "$SRC/systemd/cardd.service" /usr/lib/systemd/system/cardd.service
put 0644 "$SRC/systemd/sysusers.d/cardd.conf" /usr/lib/sysusers.d/cardd.conf
put 0644 "$SRC/systemd/polkit/50-cardd-pcsc.rules" /usr/share/polkit-1/rules.d/50-cardd-pcsc.rules
put 0644 "$SRC/udev/70-cardd.rules" /usr/lib/udev/rules.d/70-cardd.rules
put 0644 "$SRC/udev/cardd-nfc.conf" /usr/lib/modprobe.d/cardd-nfc.conf
put 0644 "$SRC/README.md" "$PREFIX/share/doc/README.md"
put 0644 "$SRC/systemd/README.md" "$PREFIX/share/doc/systemd.md"
put 0644 "$SRC/udev/README.md" "$PREFIX/share/doc/udev.md"
put 0644 "$SRC/cardd.toml.sample" "$PREFIX/share/doc/cardd.toml.sample"
mkdir -p "$R/usr/local/bin"
ln -sfn "$PREFIX/venv/bin/cardd" "$R/usr/local/bin/cardd"
echo /usr/local/bin/cardd >> "$MANIFEST.new"
mv "$MANIFEST.new" "$MANIFEST"

# -- user and group -------------------------------------------------------------------------
say "systemd-sysusers: user and group cardd"
if [ "$LIVE" = 1 ]; then
  systemd-sysusers /usr/lib/sysusers.d/cardd.conf
else
  systemd-sysusers --root="$ROOT" "$R/usr/lib/sysusers.d/cardd.conf"
fi
GID=$(awk -F: '$1 == "cardd" { print $3 }' "$R/etc/group")

# -- configuration: never overwritten; the admin's file survives upgrades and uninstalls ------
mkdir -p "$R/etc/cardd"
if [ ! -e "$R/etc/cardd/cardd.toml" ]; then
  say "/etc/cardd/cardd.toml (all defaults; every key: $PREFIX/share/doc/cardd.toml.sample)"
  cat > "$R/etc/cardd/cardd.toml" <<EOF
# cardd configuration (cardd.toml). An empty file means every default; every key with its default
# is documented in $PREFIX/share/doc/cardd.toml.sample. After a change: systemctl restart cardd
#
# Web pages that may use cardd, and what for:
# [api.origins."https://library.example.tw"]
# scopes = ["readers", "moica", "rfid:read"]
EOF
fi
# root writes it, the service (group cardd) reads it; nobody else: origins and key paths
chown "0:$GID" "$R/etc/cardd" "$R/etc/cardd/cardd.toml"
chmod 0750 "$R/etc/cardd"
chmod 0640 "$R/etc/cardd/cardd.toml"

# -- the running machine --------------------------------------------------------------------
if [ "$LIVE" = 0 ]; then
  say "installed into $ROOT (udev, systemd and kernel modules of this machine left alone)"
  exit 0
fi
if command -v udevadm >/dev/null && [ -d /run/udev ]; then
  say "udev: reload rules, re-apply them to tty and usb devices"
  udevadm control --reload
  udevadm trigger --action=change --subsystem-match=tty --subsystem-match=usb || true
fi
loaded=$(awk '$1 ~ /^(pn533_usb|pn533|port100|nfc)$/ { printf "%s ", $1 }' /proc/modules 2>/dev/null || true)
if [ -n "$loaded" ]; then
  echo "    note: kernel NFC drivers loaded ($loaded); they are blacklisted from the next boot."
  echo "    Unload them now if a reader must work before that: modprobe -r $loaded"
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  if [ "$ENABLE" = 1 ]; then
    say "systemctl enable --now cardd.service"
    systemctl enable cardd.service
    systemctl restart cardd.service   # restart: an upgrade must run the new code
    systemctl --no-pager status cardd.service | head -n 5 || true
  fi
else
  echo "    systemd is not running (PID 1 is $(ps -o comm= -p 1)): not enabled or started"
fi
say "done; check with: cardd diag"
