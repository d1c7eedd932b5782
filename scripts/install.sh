#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs everything cardd needs on a fresh Debian 12 machine: the system packages, a
# virtualenv in .venv and the package itself (editable, with the test extras).
# Safe to run again: apt and pip skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

APT_PACKAGES=(
  # PC/SC: the daemon, the vpcd virtual reader driver, headers + swig to build pyscard
  pcscd vsmartcard-vpcd libpcsclite-dev swig pcsc-tools
  # PKCS#11 for citizen certificate cards: SoftHSM2 in tests, opensc's pkcs11-tool
  softhsm2 opensc
  # build tools and Python
  python3 python3-venv python3-dev gcc pkg-config
  # process tools the test suite uses (ps, pgrep) and socat for serial pairs
  procps socat
  # PostgreSQL server: the tests start a private cluster for the shared-ledger backend
  postgresql
  # libusb for nfcpy ([nfc] devices: USB NFC readers outside pcscd)
  libusb-1.0-0
  # browser tests (tests/browser, Playwright over Debian's Chromium) and CJK fonts for the
  # Traditional Chinese pages in their screenshots
  chromium chromium-driver fonts-noto-cjk
  # production install (scripts/install-system.sh) and its tests: systemd-analyze verify/security
  # and systemd-sysusers (systemd), udevadm test for the udev rules (udev), modprobe --showconfig
  # for the NFC blacklist (kmod); util-linux's unshare is already there
  systemd udev kmod
  # HTTP load generator for bench/bench_api.py (GET /v1/readers, 64 connections)
  wrk
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "==> pip install -e .[test]"
.venv/bin/python -m pip install -q -e '.[test]'
echo "==> installed: $(.venv/bin/cardd --version)"
