# SPDX-License-Identifier: Apache-2.0
"""cardd's own reader types: what leaves the reader layer besides bytes."""

from __future__ import annotations

import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ReaderKind(StrEnum):
    CONTACT = "contact"
    CONTACTLESS = "contactless"
    SERIAL = "serial"
    UNKNOWN = "unknown"


class ReaderEventKind(StrEnum):
    READER_ADDED = "reader.added"
    READER_REMOVED = "reader.removed"
    CARD_INSERTED = "card.inserted"
    CARD_REMOVED = "card.removed"
    #: the hardware stack went away (pcscd stopped); readers are reported removed as well
    BACKEND_LOST = "backend.lost"
    BACKEND_RESTORED = "backend.restored"
    #: a reader that reports reads instead of holding cards (nfcpy, serial EM4100 readers):
    #: ``data`` carries the tap (see cardd.rfid.taps.tap_data for the PC/SC form)
    TAG_TAPPED = "tag.tapped"
    #: a barcode scanner's line; ``data`` = {"text": ...}
    BARCODE_SCANNED = "barcode.scanned"


@dataclass(frozen=True)
class ReaderEvent:
    """One change seen by a watcher thread."""

    kind: ReaderEventKind
    backend: str
    reader: str | None = None
    atr: bytes | None = None
    #: pcsc-lite's per-reader event counter (upper 16 bits of dwEventState), for diagnostics
    counter: int | None = None
    detail: str = ""
    #: payload of TAG_TAPPED / BARCODE_SCANNED events (JSON-able values only)
    data: Mapping[str, Any] | None = None
    time: float = field(default_factory=_time.time)
    monotonic: float = field(default_factory=_time.monotonic)


@dataclass(frozen=True)
class ReaderStatus:
    """A reader as a backend sees it at one moment."""

    name: str
    backend: str
    card_present: bool
    atr: bytes | None = None
    #: another process holds the card exclusively
    in_use: bool = False
