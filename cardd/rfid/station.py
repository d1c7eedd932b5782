# SPDX-License-Identifier: Apache-2.0
"""What a station needs for student cards, built from the configuration on first use.

The daemon and the CLI both use it; neither opens the key file or the ledger until a student
card operation asks for them, so a kiosk without a key file still serves taps.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

from cardd.config import Config
from cardd.errors import ConfigError

if TYPE_CHECKING:
    # imported on first use too: the burn/ledger/key modules (and sqlite3) are not part of
    # `cardd serve`'s start-up (bench_startup.py; tests/unit/test_lazy_imports.py)
    from cardd.rfid.burn import StudentCards
    from cardd.rfid.ledger import Ledger


class RfidStation:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.rfid.station or socket.gethostname()
        self._ledger: Ledger | None = None
        self._cards: StudentCards | None = None
        self._lock = threading.Lock()

    @property
    def ledger(self) -> Ledger:
        from cardd.rfid.ledger import open_ledger

        with self._lock:
            if self._ledger is None:
                target = self.config.rfid.ledger or str(self.config.state_dir / "ledger.sqlite3")
                if not target.startswith(("postgresql:", "postgres:")):
                    self.config.state_dir.mkdir(parents=True, exist_ok=True)
                self._ledger = open_ledger(target)
            return self._ledger

    @property
    def cards(self) -> StudentCards:
        from cardd.rfid.burn import StudentCards
        from cardd.rfid.keys import load_key_file

        ledger = self.ledger
        with self._lock:
            if self._cards is None:
                key_file = self.config.rfid.key_file
                if key_file is None:
                    raise ConfigError(
                        "no key file for student cards: set [rfid] key_file in the configuration"
                    )
                self._cards = StudentCards(load_key_file(key_file), ledger, station=self.name)
            return self._cards

    def close(self) -> None:
        with self._lock:
            if self._ledger is not None:
                self._ledger.close()
                self._ledger = None
                self._cards = None
