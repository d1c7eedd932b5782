# SPDX-License-Identifier: Apache-2.0
"""Run one fuzz target under atheris (libFuzzer), coverage-guided over cardd's own code.

    .venv/bin/python -m tests.fuzz.run TARGET [libFuzzer flags]   e.g. -runs=100000

The kept corpus tests/fuzz/corpus/TARGET/ seeds the run (read only); new coverage goes to a
scratch directory, and a crashing input is written into the kept corpus as crash-<sha1>, where
tests/fuzz/test_fuzz.py replays it on every test run from then on.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

CORPUS = Path(__file__).parent / "corpus"


def main() -> None:
    name, flags = sys.argv[1], sys.argv[2:]
    with atheris.instrument_imports(include=["cardd"]):
        import cardd.config
        import cardd.moica.gen1
        import cardd.moica.token
        import cardd.readers.atr
        import cardd.readers.identify
        import cardd.readers.transport
        import cardd.rfid.access
        import cardd.rfid.idnumber
        import cardd.rfid.record
        import cardd.rfid.uid  # noqa: F401

        for optional in ("cardd.kiosk.sip2.messages", "cardd.readers.framing"):
            try:
                __import__(optional)
            except ImportError:
                pass
    from tests.fuzz.targets import TARGETS

    fn = TARGETS[name]
    kept = CORPUS / name
    kept.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as scratch:
        argv = [sys.argv[0], *flags, f"-artifact_prefix={kept}/crash-", scratch, str(kept)]
        atheris.Setup(argv, fn)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
