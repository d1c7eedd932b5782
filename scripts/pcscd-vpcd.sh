#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# (Re)starts the system pcscd so that it loads the vpcd virtual reader driver, and waits until it
# answers. pcscd reads /etc/reader.conf.d only at start, so a pcscd that was already running
# before vsmartcard-vpcd was installed must be restarted (simulation.md §3.3).
# For demos and development machines only: vpcd accepts "cards" from the network.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ! -f /etc/reader.conf.d/vpcd ]; then
  echo "vsmartcard-vpcd is not installed (run scripts/install.sh)" >&2
  exit 1
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  $SUDO systemctl restart pcscd.socket pcscd.service 2>/dev/null || $SUDO systemctl restart pcscd
  # socket activation: make pcscd itself start now, so vpcd opens its ports
  $SUDO systemctl start pcscd.service
else
  # no systemd (containers): run pcscd as a plain daemon
  # Only the system pcscd: the one in our mount namespace. A private pcscd of a running test
  # session (cardd.sim.pcscd, in a mount namespace of its own) is left alone.
  ours=$(readlink /proc/self/ns/mnt)
  system_pcscd() {
    for pid in $(pgrep -x pcscd); do
      [ "$($SUDO readlink "/proc/$pid/ns/mnt" 2>/dev/null)" = "$ours" ] && echo "$pid"
    done
    return 0
  }
  pids=$(system_pcscd)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    $SUDO kill $pids || true
    for _ in $(seq 50); do [ -z "$(system_pcscd)" ] && break; sleep 0.1; done
  fi
  $SUDO mkdir -p /run/pcscd
  $SUDO rm -f /run/pcscd/pcscd.comm /run/pcscd/pcscd.pid
  $SUDO pcscd
fi
for _ in $(seq 100); do
  [ -S /run/pcscd/pcscd.comm ] && break
  sleep 0.1
done
[ -S /run/pcscd/pcscd.comm ] || { echo "pcscd did not start" >&2; exit 1; }
echo "==> pcscd running with the vpcd driver (virtual readers 'Virtual PCD 00 00' and '00 01')"
