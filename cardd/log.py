# SPDX-License-Identifier: Apache-2.0
"""Logging set-up, the TRAFFIC level and the one place where secrets are redacted.

Every redaction rule lives here, with its own tests, so that no call site can forget one.

Structural rules (the adapters call them on APDUs): PIN data (VERIFY / CHANGE REFERENCE DATA),
MIFARE keys (LOAD KEYS), written library numbers (UPDATE BINARY data, which carries national ID
numbers) and the data of READ BINARY answers.

Text rules, applied by :func:`redact` to **every** line a handler writes, whatever a caller
passed in (message, arguments, ``extra=`` fields, exception text, tracebacks):

- national ID / resident certificate numbers, also inside library numbers and as ASCII hex,
  are masked (``A12*****89``);
- the MIFARE keys of the key file (registered with :func:`register_secret` when it is loaded)
  are replaced in hex of any case, with or without separators, and as Python ``bytes`` reprs;
- a PIN being used (:func:`pin_scope`) is replaced wherever its digits appear. The scope keeps
  only a keyed hash of the PIN, never a copy (cardd.moica.pkcs11 never turns a PIN into a str);
- values after secret-sounding names (``pin=``, ``"key_a": ...``, ``password:``) and bearer
  tokens are replaced;
- ``extra=`` fields whose names sound secret (``pin``, ``key``, ``token`` ...) are dropped to ``**``.

Two output formats (``[log] format``): ``text`` for terminals and files, ``json`` (one object per
line: ``time``, ``level``, ``logger``, ``message`` and the structured extras such as ``reader``,
``operation``, ``code``) for the journal. Decision: JSON lines on stderr rather than the native
journal protocol. The journal stores stderr lines of a service as MESSAGE= with the unit, pid
and priority attached, the same output works in a container or a plain file, and
``journalctl -u cardd -o cat | jq`` reads it. ``auto`` (the default) picks JSON when stderr
is the journal's stream (``$JOURNAL_STREAM`` names stderr's device and inode), text otherwise.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

#: APDU hex, only logged by the adapters; off by default because it carries card data.
TRAFFIC = 5
logging.addLevelName(TRAFFIC, "TRAFFIC")

LOG_FORMATS = ("auto", "text", "json")
MASK = "**"

# A letter, then 1/2 (citizens) or A-D/8/9 (resident certificates, old and new), then 8 digits;
# optionally the 2-digit suffix of a library number. No word boundary in front: an ID glued to
# other text (``\x01A123456789`` in a bytes repr, ``idA123456789``) must be masked too.
_ID_RE = re.compile(r"([A-Za-z])([12A-Da-d89][0-9]{8})(\d{2})?")
# The same number as ASCII hex (a card dump, a hexlified record), with or without separators.
_HEX_SEP = r"(?:[\s:\-]|\\x)?"
_ID_HEX_RE = re.compile(
    r"(?:4[1-9A-F]|5[0-9A])" + _HEX_SEP + r"(?:3[1289]|4[1-4])" + rf"(?:{_HEX_SEP}3[0-9]){{8}}",
    re.IGNORECASE,
)
# Values after names that say "secret". The name must be followed by = or :, so prose such as
# "unknown key(s)" or "PIN entry unavailable" is left alone.
_SECRET_NAMES = r"pin|pin_?code|puk|password|passwd|passphrase|secret|key|key_?[ab]|token|auth"  # noqa: S105
_KEYWORD_RE = re.compile(
    rf"(?i)(?<![A-Za-z0-9_])({_SECRET_NAMES})([\"']?\s*[:=]\s*)([\"']?)([^\s\"',;}}\])]+)"
)
_BEARER_RE = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]+")
_SECRET_FIELD = re.compile(rf"(?i)^(?:{_SECRET_NAMES}|.*_(?:pin|key|token|secret|password))$")


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


# -- secrets the process holds --------------------------------------------------------------


class _Secrets:
    """Key material to scrub from log lines, and keyed hashes of PINs in use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._patterns: dict[bytes, re.Pattern[str]] = {}
        self._hmac_key = secrets.token_bytes(32)
        self._pins: dict[bytes, int] = {}  # HMAC digest -> number of scopes holding it
        self._pin_lengths: set[int] = set()

    def add_key(self, value: bytes) -> None:
        if len(value) < 4:  # too short to tell from ordinary data; never a real key
            return
        forms = [_HEX_SEP.join(f"{b:02x}" for b in value)]
        literal = repr(value)[2:-1]  # b'..' without the quotes: how %r of a bytes object shows
        if not re.fullmatch(r"(\\x[0-9a-f]{2})+", literal):
            forms.append(re.escape(literal))
        with self._lock:
            self._patterns[value] = re.compile("|".join(forms), re.IGNORECASE)

    def discard_key(self, value: bytes) -> None:
        with self._lock:
            self._patterns.pop(value, None)

    def _digest(self, pin: bytes | bytearray) -> bytes:
        return hmac.new(self._hmac_key, bytes(pin), hashlib.sha256).digest()

    def add_pin(self, pin: bytes | bytearray) -> bytes:
        digest = self._digest(pin)
        with self._lock:
            self._pins[digest] = self._pins.get(digest, 0) + 1
            self._pin_lengths.add(len(pin))
        return digest

    def discard_pin(self, digest: bytes) -> None:
        with self._lock:
            n = self._pins.get(digest, 0) - 1
            if n > 0:
                self._pins[digest] = n
            else:
                self._pins.pop(digest, None)
            if not self._pins:
                self._pin_lengths.clear()

    def scrub(self, text: str) -> str:
        with self._lock:
            patterns = list(self._patterns.values())
            pins = set(self._pins)
            lengths = sorted(self._pin_lengths)
        for pattern in patterns:
            text = pattern.sub(MASK, text)
        if pins and lengths:
            text = self._scrub_pins(text, pins, lengths)
        return text

    def _scrub_pins(self, text: str, pins: set[bytes], lengths: list[int]) -> str:
        # Every window of the right lengths inside every digit run is hashed and compared: the
        # PIN is found even glued to other digits, and no copy of it is ever kept to search for.
        spans: list[tuple[int, int]] = []
        for run in re.finditer(r"\d+", text):
            s, e = run.span()
            for n in lengths:
                for i in range(s, e - n + 1):
                    if self._digest(text[i : i + n].encode()) in pins:
                        spans.append((i, i + n))
        for s, e in sorted(spans, reverse=True):
            text = text[:s] + "*" * (e - s) + text[e:]
        return text


_SECRETS = _Secrets()


def register_secret(value: bytes) -> None:
    """Key material (a MIFARE key, ...) that must never appear in a log line from now on."""
    _SECRETS.add_key(bytes(value))


def forget_secret(value: bytes) -> None:
    _SECRETS.discard_key(bytes(value))


@contextmanager
def pin_scope(pin: bytes | bytearray) -> Iterator[None]:
    """While a PIN is in use, scrub it from every log line (its keyed hash is all that is kept)."""
    digest = _SECRETS.add_pin(pin)
    try:
        yield
    finally:
        _SECRETS.discard_pin(digest)


def redact(text: str) -> str:
    """Apply every text rule; the last step before any line is written."""
    text = _SECRETS.scrub(text)
    text = _BEARER_RE.sub(r"\1 " + MASK, text)
    text = _KEYWORD_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{MASK}", text)
    text = _ID_HEX_RE.sub(MASK, text)
    return mask_id(text)


def redact_value(name: str, value: Any) -> Any:
    """A structured field, redacted: secret-named fields are dropped, text is scrubbed."""
    if _SECRET_FIELD.match(name):
        return MASK
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {str(k): redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(name, v) for v in value]
    return redact(str(value))


# -- APDUs --------------------------------------------------------------------------------


def redact_apdu(apdu: bytes) -> str:
    """Hex of a command APDU with secret-bearing data fields replaced by ``**``."""
    if len(apdu) < 5:
        return apdu.hex(" ").upper()
    cla, ins = apdu[0], apdu[1]
    header = apdu[:5].hex(" ").upper()
    secret = (
        ins in (0x20, 0x24, 0x2C)  # VERIFY, CHANGE REFERENCE DATA, RESET RETRY COUNTER: PINs
        or (
            cla == 0xFF and ins in (0x82, 0xD6)
        )  # LOAD KEYS (keys), UPDATE BINARY (library numbers)
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


# -- handlers -------------------------------------------------------------------------------

# LogRecord attributes that are not ``extra=`` fields.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record (reader, operation, code, ...), redacted."""
    return {
        k: redact_value(k, v)
        for k, v in record.__dict__.items()
        if k not in _STANDARD and not k.startswith("_")
    }


class RedactingFilter(logging.Filter):
    """Formats the message once and masks it, so no later step sees the raw arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
                record.args = None
            except Exception:  # noqa: BLE001 - a bad format string must not drop the record
                record.msg = f"{record.msg!r} (unformattable arguments dropped)"
                record.args = None
        if not isinstance(record.msg, str):
            record.msg = str(record.msg)
        record.msg = redact(record.msg)
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``; the whole line is redacted at the end."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = extras(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return redact(line)


def _text_value(value: Any) -> str:
    return value if isinstance(value, str) and value and " " not in value else json.dumps(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; every string in it is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for k, v in extras(record).items():
            out.setdefault(k, v)
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def journal_stderr() -> bool:
    """True when stderr is the journal's stream ($JOURNAL_STREAM names its device:inode)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def resolve_format(fmt: str | None) -> str:
    if fmt in (None, "auto"):
        return "json" if journal_stderr() else "text"
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}")
    return fmt


def setup_logging(
    level: str = "info",
    *,
    traffic: bool = False,
    stream: TextIO | None = None,
    fmt: str | None = "auto",
) -> None:
    """Configure the root logger for the CLI and the daemon; calling it again replaces it
    (configuration reload)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt) == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(TRAFFIC if traffic else getattr(logging, level.upper(), logging.INFO))
    if traffic:
        logging.getLogger("cardd").warning(
            "TRAFFIC logging is on: APDUs are logged (secrets redacted). Turn it off after use."
        )
