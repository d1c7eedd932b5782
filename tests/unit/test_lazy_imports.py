# SPDX-License-Identifier: Apache-2.0
"""`cardd serve` starts without the heavy libraries its card operations use (issue 7).

A fresh interpreter imports what ``cardd.daemon.serve`` imports and builds the application;
cryptography (citizen certificates), asn1crypto, python-pkcs11, psycopg, openpyxl/calamine
(batch files) and the student-card burn machinery must load only with the first request that
needs them. bench/bench_startup.py measures what this is worth.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "cryptography",
    "cryptography.x509",
    "asn1crypto",
    "pkcs11",
    "psycopg",
    "openpyxl",
    "python_calamine",
    "sqlite3",
    "cardd.moica.profile",
    "cardd.rfid.burn",
    "cardd.rfid.ledger",
)

CODE = """
import json, sys, tempfile
from pathlib import Path
import cardd.cli.main, cardd.daemon, cardd.notify, cardd.reload, cardd.supervision
import cardd.rfid.taps, cardd.api.limits
from cardd.api.app import create_app
from cardd.config import parse_config
from cardd.events import EventBus
from cardd.readers.manager import ReaderManager
from cardd.rfid.station import RfidStation

state = Path(tempfile.mkdtemp())
config = parse_config({"state_dir": str(state)})
bus = EventBus()
manager = ReaderManager([], bus, config.readers)
create_app(config, manager, bus, RfidStation(config))
print(json.dumps(sorted(m for m in %r if m in sys.modules)))
"""


def _loaded_after_start(heavy: tuple[str, ...]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", CODE % (heavy,)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_serve_start_does_not_import_heavy_libraries() -> None:
    assert _loaded_after_start(HEAVY) == []


def test_the_check_sees_an_imported_module() -> None:
    # the probe itself works: a module the start does import is reported
    assert _loaded_after_start(("cardd.api.moica", "aiohttp")) == ["aiohttp", "cardd.api.moica"]
