#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs everything and runs the whole test suite: lint, type check, unit tests and the tests
# through the real pcscd + vpcd with virtual cards (a private pcscd per run, so a system pcscd
# and real readers are left alone). Extra arguments go to pytest, e.g. -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh

echo "==> ruff"
.venv/bin/ruff check cardd tests bench
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
mkdir -p artifacts
# The private pcscd needs a mount namespace (root). Everything else runs as the caller.
if [ "$(id -u)" -eq 0 ]; then
  exec .venv/bin/python -m pytest -ra "$@"
else
  exec sudo --preserve-env=CI,PATH .venv/bin/python -m pytest -ra "$@"
fi
