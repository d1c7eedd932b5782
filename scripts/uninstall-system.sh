#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Removes what scripts/install-system.sh installed: stops and disables the service, removes the
# unit, udev, modprobe, sysusers and polkit files, /opt/cardd and /usr/local/bin/cardd.
#
#   sudo scripts/uninstall-system.sh            # keeps /etc/cardd, /var/lib/cardd (token, ledger,
#                                               # CRLs), /var/log/cardd and the cardd user
#   sudo scripts/uninstall-system.sh --purge    # removes those too
#   scripts/uninstall-system.sh --root DIR [--purge]   # from a scratch root
#
# Kept by default because the state directory holds the issuance ledger (library numbers that
# must never be reused) and the configuration is the admin's: a reinstall picks both up again.
set -euo pipefail

ROOT=/
PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) ROOT=$2; shift 2 ;;
    --purge) PURGE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//; /^set -euo/d'; exit 0 ;;
    *) echo "uninstall-system.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
ROOT=$(realpath -m "$ROOT")
R=${ROOT%/}
LIVE=0
[ "$ROOT" = "/" ] && LIVE=1
if [ "$(id -u)" -ne 0 ] && [ "$LIVE" = 1 ]; then
  echo "uninstall-system.sh: run as root (sudo)" >&2
  exit 2
fi
PREFIX=/opt/cardd
say() { echo "==> $*"; }

if [ "$LIVE" = 1 ] && [ -d /run/systemd/system ]; then
  say "systemctl disable --now cardd.service"
  systemctl disable --now cardd.service 2>/dev/null || true
  if systemctl is-active --quiet cardd.service; then
    echo "uninstall-system.sh: cardd.service is still active; stop it first" >&2
    exit 1
  fi
fi

# What the installer listed, plus the fixed names (an install interrupted before the list).
FILES=(/usr/lib/systemd/system/cardd.service /usr/lib/sysusers.d/cardd.conf
       /usr/share/polkit-1/rules.d/50-cardd-pcsc.rules /usr/lib/udev/rules.d/70-cardd.rules
       /usr/lib/modprobe.d/cardd-nfc.conf /usr/local/bin/cardd)
if [ -f "$R$PREFIX/installed-files" ]; then
  mapfile -t listed < "$R$PREFIX/installed-files"
  FILES+=("${listed[@]}")
fi
say "removing installed files"
for f in "${FILES[@]}"; do
  case "$f" in /*) ;; *) continue ;; esac   # only absolute paths from the list
  rm -f "$R$f"
done
rm -rf "$R$PREFIX"
# drop-ins made with `systemctl edit cardd` are the admin's, like the configuration
if [ "$PURGE" = 1 ]; then
  rm -rf "$R/etc/systemd/system/cardd.service.d"
fi
rm -f "$R/etc/systemd/system/multi-user.target.wants/cardd.service"

if [ "$PURGE" = 1 ]; then
  say "--purge: configuration, state (ledger, token, CRLs), logs, user and group"
  rm -rf "$R/etc/cardd" "$R/var/lib/cardd" "$R/var/log/cardd" "$R/var/lib/private/cardd"
  if [ "$LIVE" = 1 ]; then
    if getent passwd cardd >/dev/null; then userdel cardd; fi
    if getent group cardd >/dev/null; then groupdel cardd; fi
  else
    if grep -q '^cardd:' "$R/etc/passwd" 2>/dev/null; then userdel --root "$ROOT" cardd; fi
    if grep -q '^cardd:' "$R/etc/group" 2>/dev/null; then groupdel --root "$ROOT" cardd; fi
  fi
else
  echo "    kept: /etc/cardd, /var/lib/cardd, /var/log/cardd, user cardd (--purge removes them)"
fi

if [ "$LIVE" = 1 ]; then
  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
  if command -v udevadm >/dev/null && [ -d /run/udev ]; then udevadm control --reload; fi
fi
say "cardd removed"
