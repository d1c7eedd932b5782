#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs everything, starts pcscd with the vpcd virtual readers, inserts a demo set of virtual
# cards (a citizen certificate card in reader 00 00, an EasyCard in 00 01) and runs
# `cardd serve` in the foreground. Ctrl-C stops the daemon and the virtual cards.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
./scripts/pcscd-vpcd.sh

CARDD=.venv/bin/cardd
SIM_SOCKET="${XDG_RUNTIME_DIR:-/tmp}/cardd-demo-sim-$(id -u).sock"
"$CARDD" sim --control "$SIM_SOCKET" serve \
  --insert 0=tests/fixtures/moica/card.json \
  --insert 1=tests/fixtures/cards/classic_1k_student.json &
SIM_PID=$!
trap 'kill $SIM_PID 2>/dev/null; wait $SIM_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -S "$SIM_SOCKET" ] && break; sleep 0.1; done

"$CARDD" readers || true
cat <<MSG

Demo running. In another terminal:
  .venv/bin/cardd watch                                   # live card events
  .venv/bin/cardd sim --control $SIM_SOCKET swap 1 tests/fixtures/cards/easycard_7b.json
  .venv/bin/cardd sim --control $SIM_SOCKET remove 0
  curl -H "Authorization: Bearer \$(cat <state dir>/token)" http://127.0.0.1:7420/v1/readers
(the state directory is printed by \`cardd diag\`; as root it is /var/lib/cardd)

MSG
"$CARDD" serve
