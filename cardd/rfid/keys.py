# SPDX-License-Identifier: Apache-2.0
"""The MIFARE key file: which sector holds the student-card record and its keys.

A TOML file, one table per purpose::

    [student_card]
    sector = 14
    key_a = "A0A1A2A3A4A5"      # reads the record
    key_b = "B0B1B2B3B4B5"      # writes the record
    # size = "1k"               # "1k" (sectors 1-15) or "4k" (sectors 1-39)
    # transport keys are what blank cards answer to before personalization
    allow_transport_keys = false

Whoever holds these keys can read the national ID numbers on every card of the programme and
forge records, so the file is treated like an SSH private key: it is refused unless only its
owner (the user running cardd, or root) can read and write it, and no key ever reaches a log, an
error message or a ``repr``. Error messages name the file, the table and the setting, never a
value.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cardd.errors import KeyFileError
from cardd.log import register_secret
from cardd.rfid.access import KEY_SIZE, TRANSPORT_KEY, ZERO_KEY, KeyType

logger = logging.getLogger(__name__)

DEFAULT_TABLE = "student_card"
CardSize = Literal["1k", "4k"]
#: sectors per card size
SECTORS: dict[str, int] = {"1k": 16, "4k": 40}

_SETTINGS = frozenset({"sector", "key_a", "key_b", "allow_transport_keys", "size"})
_KEY_HEX = re.compile(r"[0-9A-Fa-f]{12}")
# Only setting names of this shape are echoed in errors: a typo like "alow_transport_keys" is
# worth naming, but a key pasted where a name belongs must not be.
_SAFE_NAME = re.compile(r"[a-z_]{1,40}")
# tomllib messages end with a position; only that part is kept (see _toml_position).
_TOML_POSITION = re.compile(r"\((at line \d+, column \d+|at end of document)\)")


@dataclass(frozen=True, repr=False)
class SectorKeys:
    """The record sector and its keys. ``repr`` and ``str`` never show the keys."""

    sector: int
    key_a: bytes = field(repr=False)
    key_b: bytes = field(repr=False)
    #: tests and demos only: the keys may be the public transport key
    allow_transport_keys: bool = False
    size: CardSize = "1k"

    def key(self, key_type: KeyType) -> bytes:
        return self.key_a if key_type is KeyType.A else self.key_b

    @property
    def uses_transport_keys(self) -> bool:
        return TRANSPORT_KEY in (self.key_a, self.key_b)

    def __repr__(self) -> str:
        return (
            f"SectorKeys(sector={self.sector}, size={self.size!r}, key_a=<redacted>, "
            f"key_b=<redacted>, allow_transport_keys={self.allow_transport_keys})"
        )

    __str__ = __repr__


def load_key_file(path: str | Path, *, table: str = DEFAULT_TABLE) -> SectorKeys:
    """Read and check the key file.

    :param path: the TOML key file
    :param table: the table to read (``student_card``)
    :raises KeyFileError: unsafe permissions or owner, unreadable, malformed, or unsafe keys;
        the message never contains key material
    """
    path = Path(path)
    doc, problem = _parse_toml(_read_private_file(path))
    if doc is None:
        # Raised here, outside any `except`: a parser exception kept as __context__ (which
        # `from None` only hides from tracebacks) would carry the file's bytes along.
        raise KeyFileError(f"{path}: {problem}")
    section = doc.get(table)
    if not isinstance(section, dict):
        raise KeyFileError(f"{path}: no [{table}] table")
    keys = _parse_table(section, f"{path}: [{table}]")
    # From now on the log layer scrubs these keys from every line, whoever logs them.
    for key in (keys.key_a, keys.key_b):
        if key not in (TRANSPORT_KEY, ZERO_KEY):  # public values: masking them hides nothing
            register_secret(key)
    logger.info(
        "MIFARE key file %s: sector %d (%s)%s",
        path,
        keys.sector,
        keys.size,
        ", transport keys allowed" if keys.allow_transport_keys else "",
    )
    return keys


def _read_private_file(path: Path) -> bytes:
    """Open, check the permissions of the opened file (no race with a swap), then read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open the key file: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: the key file is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"{path}: the key file is readable or writable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
            )
        euid = os.geteuid()
        if st.st_uid not in (euid, 0):
            raise KeyFileError(
                f"{path}: the key file belongs to uid {st.st_uid}, not to the user running "
                f"cardd (uid {euid}) or root; run: chown {euid} {path}"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key file: {exc.strerror}") from None
    finally:
        os.close(fd)


def _parse_toml(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The parsed document, or None and a message that quotes nothing from the file."""
    try:
        return tomllib.loads(raw.decode("utf-8")), ""
    except UnicodeDecodeError:
        return None, "the key file is not UTF-8 text"
    except tomllib.TOMLDecodeError as exc:
        # Only the position: the parser's message could quote the bad line.
        return None, f"not valid TOML {_toml_position(exc)}".rstrip()


def _toml_position(exc: tomllib.TOMLDecodeError) -> str:
    m = _TOML_POSITION.search(str(exc))
    return f"({m.group(1)})" if m else ""


def _parse_table(section: dict[str, Any], where: str) -> SectorKeys:
    unknown = set(section) - _SETTINGS
    if unknown:
        named = sorted(n for n in unknown if _SAFE_NAME.fullmatch(n))
        what = (
            f"unknown setting(s) {', '.join(named)}"
            if len(named) == len(unknown)
            else ("unknown setting(s)")
        )
        raise KeyFileError(f"{where}: {what}; allowed: {', '.join(sorted(_SETTINGS))}")

    size = section.get("size", "1k")
    if size not in SECTORS:
        raise KeyFileError(f'{where}: size must be "1k" or "4k"')
    sector = section.get("sector")
    if not isinstance(sector, int) or isinstance(sector, bool):
        raise KeyFileError(f"{where}: sector must be a whole number")
    last = SECTORS[size] - 1
    if not 0 <= sector <= last:
        raise KeyFileError(f"{where}: sector {sector} is out of range for a {size} card (1-{last})")
    if sector == 0:
        # Block 0 is the read-only manufacturer block and the rest of sector 0 is the MIFARE
        # Application Directory on many cards: never a place for our record.
        raise KeyFileError(f"{where}: sector 0 holds the manufacturer block; choose 1-{last}")
    allow_transport = section.get("allow_transport_keys", False)
    if not isinstance(allow_transport, bool):
        raise KeyFileError(f"{where}: allow_transport_keys must be true or false")

    key_a = _parse_key(section, "key_a", where)
    key_b = _parse_key(section, "key_b", where)
    for name, key in (("key_a", key_a), ("key_b", key_b)):
        if key == ZERO_KEY:
            raise KeyFileError(f"{where}: {name} is all zeros, which is never a chosen key")
        if key == TRANSPORT_KEY and not allow_transport:
            raise KeyFileError(
                f"{where}: {name} is the public transport key, so any phone could read the "
                "record; set allow_transport_keys = true only for tests and demos"
            )
    return SectorKeys(
        sector=sector,
        key_a=key_a,
        key_b=key_b,
        allow_transport_keys=allow_transport,
        size=size,
    )


def _parse_key(section: dict[str, Any], name: str, where: str) -> bytes:
    value = section.get(name)
    if value is None:
        raise KeyFileError(f"{where}: {name} is missing")
    if not isinstance(value, str):
        raise KeyFileError(f'{where}: {name} must be a quoted string of 12 hex digits ("...")')
    # Separators people copy from tools ("A0 A1 ..." or "A0:A1:...") are accepted.
    text = value.replace(" ", "").replace(":", "")
    if not _KEY_HEX.fullmatch(text):
        raise KeyFileError(f"{where}: {name} must be 12 hex digits ({KEY_SIZE} bytes)")
    return bytes.fromhex(text)
