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

# The demo registration site (cardd demo-site, http://127.0.0.1:8080) on its own origin,
# allowlisted in a demo configuration; the virtual citizen card's signing key in a SoftHSM2
# token standing in for the card's PKCS#11 module (demo PIN 123456).
DEMO_DIR="${XDG_RUNTIME_DIR:-/tmp}/cardd-demo-$(id -u)"
mkdir -p "$DEMO_DIR"
SOFTHSM2_CONF="$(.venv/bin/python -m cardd.demo.softhsm "$DEMO_DIR/hsm" tests/fixtures/moica)"
export SOFTHSM2_CONF
cat > "$DEMO_DIR/cardd.toml" <<TOML
[api.origins."http://127.0.0.1:8080"]
scopes = ["readers", "moica", "rfid:read"]
[moica]
pkcs11_module = "/usr/lib/softhsm/libsofthsm2.so"
TOML
"$CARDD" demo-site --port 8080 --cardd http://127.0.0.1:7420 \
  --trust-cert tests/fixtures/moica/moica_ca.der &
SITE_PID=$!
trap 'kill $SIM_PID $SITE_PID 2>/dev/null; wait $SIM_PID $SITE_PID 2>/dev/null || true' EXIT

"$CARDD" readers || true
cat <<MSG

Demo running. In another terminal:
  .venv/bin/cardd watch                                   # live card events
  .venv/bin/cardd sim --control $SIM_SOCKET swap 1 tests/fixtures/cards/easycard_7b.json
  .venv/bin/cardd sim --control $SIM_SOCKET remove 0
  curl -H "Authorization: Bearer \$(cat <state dir>/token)" http://127.0.0.1:7420/v1/readers
(the state directory is printed by \`cardd diag\`; as root it is /var/lib/cardd)

Demo registration site: open http://127.0.0.1:8080/ in a browser (use this exact address).
  以自然人憑證驗證: cardd's PIN window opens; the demo card's PIN is 123456
  綁定悠遊卡／一卡通: click, then "tap" a card:
  .venv/bin/cardd sim --control $SIM_SOCKET swap 1 tests/fixtures/cards/easycard_4b.json

MSG
"$CARDD" --config "$DEMO_DIR/cardd.toml" serve
