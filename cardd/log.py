# SPDX-License-Identifier: Apache-2.0
"""Logging set-up, the TRAFFIC level and the one place where secrets are redacted.

Every redaction rule lives here, with its own tests, so that no call site can forget one:
PIN data (VERIFY / CHANGE REFERENCE DATA), MIFARE keys (LOAD KEYS), written library numbers
(UPDATE BINARY data, which carries national ID numbers) and ID numbers in free text.
"""

from __future__ import annotations

import logging
import re
import sys

#: APDU hex, only logged by the adapters; off by default because it carries card data.
TRAFFIC = 5
logging.addLevelName(TRAFFIC, "TRAFFIC")

_ID_RE = re.compile(r"\b([A-Z])([12A-D89][0-9]{8})(\d{2})?\b")


def mask_id(text: str) -> str:
    """Mask national ID / resident certificate numbers (and library numbers) in free text.

    ``A123456789`` becomes ``A12*****89``: enough for a technician to tell two cards apart,
    not enough to identify a person.
    """

    def _sub(m: re.Match[str]) -> str:
        digits = m.group(2)
        suffix = m.group(3) or ""
        return f"{m.group(1)}{digits[:2]}{'*' * 5}{digits[-2:]}{suffix}"

    return _ID_RE.sub(_sub, text)


def redact_apdu(apdu: bytes) -> str:
    """Hex of a command APDU with secret-bearing data fields replaced by ``**``."""
    if len(apdu) < 5:
        return apdu.hex(" ").upper()
    cla, ins = apdu[0], apdu[1]
    header = apdu[:5].hex(" ").upper()
    secret = (
        ins in (0x20, 0x24, 0x2C)  # VERIFY, CHANGE REFERENCE DATA, RESET RETRY COUNTER: PINs
        or (cla == 0xFF and ins in (0x82, 0xD6))  # LOAD KEYS (keys), UPDATE BINARY (library numbers)
        or (cla & 0x0C and ins in (0x20, 0x24))  # secure-messaging variants of the above
    )
    if secret and len(apdu) > 5:
        return f"{header} **({len(apdu) - 5} bytes redacted)"
    return apdu.hex(" ").upper()


def redact_response(apdu: bytes, data: bytes) -> str:
    """Response data is redacted when the command reads a block that may hold a library number."""
    if len(apdu) >= 2 and apdu[0] == 0xFF and apdu[1] == 0xB0 and data:
        return f"**({len(data)} bytes redacted)"
    return data.hex(" ").upper()


class RedactingFilter(logging.Filter):
    """Last line of defence: masks ID numbers in every formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
                record.args = None
            except Exception:  # noqa: BLE001 - a bad format string must not drop the record
                return True
        if isinstance(record.msg, str):
            record.msg = mask_id(record.msg)
        return True


def setup_logging(level: str = "info", *, traffic: bool = False, stream=None) -> None:
    """Configure the root logger once for the CLI and the daemon."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(TRAFFIC if traffic else getattr(logging, level.upper(), logging.INFO))
    if traffic:
        logging.getLogger("cardd").warning(
            "TRAFFIC logging is on: APDUs are logged (secrets redacted). Turn it off after use."
        )
