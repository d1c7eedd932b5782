# SPDX-License-Identifier: Apache-2.0
"""SIP2 messages on the wire: framing, checksums, encoding and parsing. Pure: no I/O, no clock.

One message is ``ID`` (2 digits) + fixed-length fields + variable fields (``XXvalue|``), and,
with error detection on, ``AY<seq>AZ<checksum>``, then CR (kiosk.md §1.1, §1.4)::

    body    = build("63", ("000", date, " " * 10), [("AO", "MAIN"), ("AA", "1234"), ("AC", "")])
    frame   = encode_frame(body, sequence=2, encoding="utf-8")     # b"6300...|AY2AZF2EA\\r"
    message = parse_message(frame.rstrip(b"\\r"), encoding="utf-8")  # Message("63", ...)

Decisions:

* The checksum is the two's complement of the low 16 bits of the sum of the **bytes sent**,
  through ``AZ`` (Evergreen ``Sip/Checksum.pm``); a frame is encoded first and summed after.
* A reply whose checksum is wrong raises :class:`~cardd.errors.Sip2ChecksumMismatch` (the client
  then sends 97). When the reply holds non-ASCII bytes the spec does not say what a "character"
  is (kiosk.md §1.4): a checksum over code points (an older Koha) is accepted at once, with a
  note in :attr:`Message.checksum_note`; any other mismatch raises with ``non_ascii=True``, and
  the client, after its 97 brought the same mismatch, parses again with
  ``tolerate_non_ascii=True``, which accepts the message with a note instead of failing.
* Bytes that are not valid in the configured encoding are replaced (U+FFFD) and noted in
  ``checksum_note``'s sibling :attr:`Message.decode_note`: a patron name in the wrong code page
  must not take a gate offline, but the technician must see that the encoding is wrong.
* ``|`` inside a value is sent as ``&#124;`` and turned back on receipt (Evergreen ``add_field``).
  CR and LF are refused in values: they would end the frame.
* Anything else that is not a well-formed message raises :class:`~cardd.errors.Sip2MessageInvalid`
  with what is wrong; the parser never raises anything else (it is fuzzed).
* A last variable field without its ``|`` is accepted (some servers omit it).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from cardd.errors import InvalidInput, Sip2ChecksumMismatch, Sip2MessageInvalid

CR = b"\r"
LF = b"\n"
#: the longest frame accepted before a CR: 255-character fields make real replies < 8 KiB,
#: and a peer that never sends CR must not grow our buffer forever
MAX_FRAME = 64 * 1024
#: spec field limit (characters); enforced on what we send only
MAX_FIELD = 255

#: fixed-length fields after the 2-digit message id, by message id: (name, width)
FIXED_FIELDS: Mapping[str, tuple[tuple[str, int], ...]] = MappingProxyType(
    {
        "93": (("uid_algorithm", 1), ("pwd_algorithm", 1)),
        "94": (("ok", 1),),
        "99": (("status_code", 1), ("max_print_width", 3), ("protocol_version", 4)),
        "98": (
            ("online_status", 1),
            ("checkin_ok", 1),
            ("checkout_ok", 1),
            ("acs_renewal_policy", 1),
            ("status_update_ok", 1),
            ("offline_ok", 1),
            ("timeout_period", 3),
            ("retries_allowed", 3),
            ("date_time_sync", 18),
            ("protocol_version", 4),
        ),
        "23": (("language", 3), ("transaction_date", 18)),
        "24": (("patron_status", 14), ("language", 3), ("transaction_date", 18)),
        "63": (("language", 3), ("transaction_date", 18), ("summary", 10)),
        "64": (
            ("patron_status", 14),
            ("language", 3),
            ("transaction_date", 18),
            ("hold_items_count", 4),
            ("overdue_items_count", 4),
            ("charged_items_count", 4),
            ("fine_items_count", 4),
            ("recall_items_count", 4),
            ("unavailable_holds_count", 4),
        ),
        "35": (("transaction_date", 18),),
        "36": (("end_session", 1), ("transaction_date", 18)),
        "97": (),
        "96": (),
    }
)

_HEX = frozenset(b"0123456789ABCDEFabcdef")
_DIGITS = frozenset(b"0123456789")


def checksum(data: bytes) -> str:
    """The AZ value for ``data`` (the frame from its first byte through ``AZ``)."""
    return f"{(-sum(data)) & 0xFFFF:04X}"


def sip_date(when: dt.datetime) -> str:
    """``YYYYMMDDZZZZHHMMSS``: four blanks for the zone mean local time (what servers expect)."""
    return when.strftime("%Y%m%d    %H%M%S")


def escape(value: str) -> str:
    return value.replace("|", "&#124;") if "|" in value else value


def unescape(value: str) -> str:
    return value.replace("&#124;", "|") if "&" in value else value


def _is_field_id(fid: str) -> bool:
    # two ASCII letters or digits; no regex: this runs on every field of every reply
    return len(fid) == 2 and fid.isascii() and fid.isalnum()


@dataclass(frozen=True)
class Message:
    """One parsed message. ``fields`` keeps the variable fields in wire order (repeats kept)."""

    id: str
    fixed: Mapping[str, str]
    fields: tuple[tuple[str, str], ...] = ()
    #: AY, when the frame had one
    sequence: int | None = None
    #: the frame carried AZ (and it was checked)
    checksummed: bool = False
    #: set when a checksum mismatch was tolerated (non-ASCII reply, kiosk.md §1.4)
    checksum_note: str | None = field(default=None, compare=False)
    #: set when bytes were not valid in the configured encoding and were replaced
    decode_note: str | None = field(default=None, compare=False)

    def get(self, field_id: str, default: str | None = None) -> str | None:
        """The first value of a variable field, or ``default`` when absent."""
        for fid, value in self.fields:
            if fid == field_id:
                return value
        return default

    def all(self, field_id: str) -> list[str]:
        """Every value of a (repeatable) variable field, in order: AF, AG, AS…"""
        return [value for fid, value in self.fields if fid == field_id]

    def as_lists(self) -> dict[str, list[str]]:
        """Variable fields as id → list of values (repeated fields keep every value)."""
        out: dict[str, list[str]] = {}
        for fid, value in self.fields:
            out.setdefault(fid, []).append(value)
        return out


# -- building -----------------------------------------------------------------------------------


def build(msg_id: str, fixed: Sequence[str] = (), fields: Iterable[tuple[str, str]] = ()) -> str:
    """The message text without AY/AZ and terminator. Fixed fields are checked against their
    widths; variable values are escaped. Raises InvalidInput for what cannot be sent."""
    layout = FIXED_FIELDS.get(msg_id)
    if layout is None:
        raise InvalidInput(f"SIP2 message {msg_id!r} is not one cardd knows")
    if len(fixed) != len(layout):
        raise InvalidInput(f"SIP2 {msg_id}: {len(layout)} fixed fields expected, got {len(fixed)}")
    parts = [msg_id]
    for (name, width), value in zip(layout, fixed, strict=True):
        if len(value) != width:
            raise InvalidInput(f"SIP2 {msg_id}: {name} must be {width} characters, got {value!r}")
        parts.append(value)
    for fid, value in fields:
        if not _is_field_id(fid):
            raise InvalidInput(f"SIP2 field id {fid!r} must be 2 letters or digits")
        if "\r" in value or "\n" in value:
            # the id only: the value may be a patron number or a password
            raise InvalidInput(f"SIP2 field {fid} must not contain CR or LF")
        value = escape(value)
        if len(value) > MAX_FIELD:
            raise InvalidInput(f"SIP2 field {fid} is longer than {MAX_FIELD} characters")
        parts.append(f"{fid}{value}|")
    return "".join(parts)


def encode_frame(
    body: str,
    *,
    sequence: int | None,
    encoding: str = "utf-8",
    error_detection: bool = True,
    terminator: bytes = CR,
) -> bytes:
    """Encode ``body`` and add ``AY<seq>AZ<checksum>`` (or only ``AZ`` when sequence is None,
    as 96/97 are sent) and the terminator. The checksum covers the encoded bytes."""
    try:
        data = body.encode(encoding)
    except UnicodeEncodeError as e:
        raise InvalidInput(f"SIP2 message cannot be sent in {encoding}: {e.reason}") from None
    if not error_detection:
        return data + terminator
    if sequence is not None:
        if not 0 <= sequence <= 9:
            raise InvalidInput(f"SIP2 sequence number {sequence} is not 0–9")
        data += b"AY%d" % sequence
    data += b"AZ"
    return data + checksum(data).encode("ascii") + terminator


#: what we send when a reply was corrupt: "97AZFEF5"
REQUEST_ACS_RESEND = encode_frame("97", sequence=None, terminator=b"")
#: what a server sends when our request was corrupt: "96AZFEF6"
REQUEST_SC_RESEND = encode_frame("96", sequence=None, terminator=b"")


# -- framing ------------------------------------------------------------------------------------


class Framer:
    """Splits a byte stream into frames on CR, dropping an LF before or after it (Koha writes
    CRLF by default; Evergreen strips stray LFs). One read is not one frame: feed any chunks."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        while (cr := self._buf.find(CR)) >= 0:
            frame = bytes(self._buf[:cr]).strip(LF)
            del self._buf[: cr + 1]
            if frame:
                frames.append(frame)
        if len(self._buf) > self._max:
            size = len(self._buf)
            self._buf.clear()
            raise Sip2MessageInvalid(
                f"no CR after {size} bytes: not a SIP2 peer, or a wrong terminator"
            )
        return frames

    def clear(self) -> None:
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)


# -- parsing ------------------------------------------------------------------------------------


def split_trailer(frame: bytes) -> tuple[bytes, int | None, bytes | None]:
    """(body, AY, AZ digits) of a frame without its terminator. Variable fields end in ``|``,
    so a trailing ``AZhhhh`` / ``AYd`` can only be the trailer."""
    body, seq, az = frame, None, None
    if len(body) >= 6 and body[-6:-4] == b"AZ" and all(b in _HEX for b in body[-4:]):
        az = body[-4:]
        body = body[:-6]
    if len(body) >= 3 and body[-3:-1] == b"AY" and body[-1] in _DIGITS:
        seq = body[-1] - 0x30
        body = body[:-3]
    return body, seq, az


def _check_sum(frame: bytes, az: bytes, encoding: str, tolerate: bool) -> str | None:
    """None when the checksum is right; a note when a non-ASCII mismatch is tolerated.
    Raises Sip2ChecksumMismatch otherwise."""
    covered = frame[:-4]
    if (sum(covered) + int(az, 16)) & 0xFFFF == 0:
        return None
    if frame.isascii():
        raise Sip2ChecksumMismatch(
            f"checksum {az.decode()} is wrong (computed {checksum(covered)})"
        )
    # An older Koha summed characters, not bytes: accept that silently-but-noted too.
    text = covered.decode(encoding, errors="replace")
    by_chars = f"{(-sum(map(ord, text))) & 0xFFFF:04X}"
    if by_chars == az.decode().upper():
        return "checksum matches the characters, not the bytes (older Koha); accepted"
    detail = (
        f"checksum {az.decode()} is wrong on a non-ASCII reply (computed {checksum(covered)} "
        f"over bytes, {by_chars} over characters)"
    )
    if not tolerate:
        raise Sip2ChecksumMismatch(detail, non_ascii=True)
    return detail + "; accepted as the spec leaves non-ASCII sums undefined"


def parse_message(
    frame: bytes, *, encoding: str = "utf-8", tolerate_non_ascii: bool = False
) -> Message:
    """Parse one frame (terminator already removed; stray CR/LF at the ends are ignored).

    Raises Sip2ChecksumMismatch (subclass of Sip2MessageInvalid) for a wrong checksum (with
    ``non_ascii`` set when the frame holds non-ASCII bytes, unless ``tolerate_non_ascii``), and
    Sip2MessageInvalid for anything else that is not a message we know.
    """
    if type(frame) is not bytes:
        if not isinstance(frame, bytes | bytearray):
            raise Sip2MessageInvalid(f"expected bytes, got {type(frame).__name__}")
        frame = bytes(frame)
    frame = frame.strip(b"\r\n")
    if len(frame) > MAX_FRAME:
        raise Sip2MessageInvalid(f"message of {len(frame)} bytes is longer than {MAX_FRAME}")
    if b"\r" in frame or b"\0" in frame:
        raise Sip2MessageInvalid("message contains CR or NUL inside it: two frames, or garbage")
    body, seq, az = split_trailer(frame)
    note = _check_sum(frame, az, encoding, tolerate_non_ascii) if az is not None else None
    if len(body) < 2 or body[0] not in _DIGITS or body[1] not in _DIGITS:
        raise Sip2MessageInvalid(f"message does not start with a 2-digit id: {_preview(frame)}")
    msg_id = body[:2].decode("ascii")
    layout = FIXED_FIELDS.get(msg_id)
    if layout is None:
        raise Sip2MessageInvalid(f"unknown SIP2 message id {msg_id}")
    try:
        text = body.decode(encoding)
        decode_note = None
    except UnicodeDecodeError as e:
        text = body.decode(encoding, errors="replace")
        decode_note = (
            f"bytes not valid {encoding} at offset {e.start} were replaced; check the encoding"
        )
    except LookupError:
        raise Sip2MessageInvalid(f"unknown encoding {encoding!r}") from None
    # Fixed fields are ASCII in every server we know, so character and byte widths agree.
    pos = 2
    fixed: dict[str, str] = {}
    for name, width in layout:
        value = text[pos : pos + width]
        if len(value) != width:
            raise Sip2MessageInvalid(
                f"SIP2 {msg_id}: message ends inside fixed field {name} "
                f"({len(text)} characters): {_preview(frame)}"
            )
        fixed[name] = value
        pos += width
    fields = _variable_fields(msg_id, text[pos:])
    return Message(
        msg_id,
        MappingProxyType(fixed),
        fields,
        sequence=seq,
        checksummed=az is not None,
        checksum_note=note,
        decode_note=decode_note,
    )


def _variable_fields(msg_id: str, text: str) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    pieces = text.split("|")
    if pieces[-1] == "":
        pieces.pop()  # the normal case: the last field ended with its '|'
    out = []
    for piece in pieces:
        fid = piece[:2]
        if not _is_field_id(fid):
            raise Sip2MessageInvalid(
                f"SIP2 {msg_id}: variable field {piece[:8]!r} does not start with a 2-character id"
            )
        out.append((fid, unescape(piece[2:])))
    return tuple(out)


def _preview(frame: bytes) -> str:
    """The start of a bad frame for an error message: message ids and fixed fields only, since
    variable fields may hold patron data."""
    return repr(frame[:12]) + ("…" if len(frame) > 12 else "")


# -- typed replies ------------------------------------------------------------------------------


def _yes(value: str | None) -> bool | None:
    if value is None or not value.strip():
        return None
    return value.strip().upper() == "Y"


def _int(value: str) -> int | None:
    return int(value) if value.isdigit() else None


@dataclass(frozen=True)
class AcsStatus:
    """98: what the server says about itself."""

    online: bool
    offline_ok: bool
    #: 98 timeout period in seconds (the field is tenths of a second, FOLIO); None = 000/999/unset
    timeout: float | None
    #: 98 retries allowed; None = 999 (unknown) or not a number
    retries: int | None
    protocol_version: str
    institution: str
    library_name: str
    #: BX: Y/N per message the server supports (16 positions: 23, 11, 09, 01, 99, 97, 93, 63, ...)
    supported_messages: str
    screen_messages: tuple[str, ...] = ()

    @classmethod
    def from_message(cls, m: Message) -> AcsStatus:
        _expect(m, "98")
        tp = _int(m.fixed["timeout_period"])
        retries = _int(m.fixed["retries_allowed"])
        return cls(
            online=m.fixed["online_status"] == "Y",
            offline_ok=m.fixed["offline_ok"] == "Y",
            timeout=tp / 10 if tp not in (None, 0, 999) else None,
            retries=retries if retries != 999 else None,
            protocol_version=m.fixed["protocol_version"],
            institution=m.get("AO", "") or "",
            library_name=m.get("AM", "") or "",
            supported_messages=m.get("BX", "") or "",
            screen_messages=tuple(m.all("AF")),
        )

    def supports(self, msg_id: str) -> bool | None:
        """Whether BX says the server supports ``msg_id`` (None: BX does not say)."""
        order = (
            "23",
            "11",
            "09",
            "01",
            "99",
            "97",
            "93",
            "63",
            "35",
            "37",
            "17",
            "19",
            "25",
            "15",
            "29",
            "65",
        )
        if msg_id not in order or len(self.supported_messages) <= order.index(msg_id):
            return None
        return self.supported_messages[order.index(msg_id)] == "Y"


@dataclass(frozen=True)
class PatronReply:
    """24 or 64: the parts a gate needs. ``status`` is the 14-character patron status."""

    msg_id: str
    status: str
    patron_id: str
    personal_name: str
    #: BL; None when absent
    valid: bool | None
    #: CQ; None when absent (only sent when we sent AD)
    valid_password: bool | None
    screen_messages: tuple[str, ...]
    print_lines: tuple[str, ...]
    institution: str
    #: every variable field as id → values, for what the kiosk may want later (PA expiry, PC...)
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    @classmethod
    def from_message(cls, m: Message) -> PatronReply:
        if m.id not in ("24", "64"):
            raise Sip2MessageInvalid(f"expected a patron reply (24 or 64), got {m.id}")
        lists = {k: tuple(v) for k, v in m.as_lists().items()}

        def first(fid: str) -> str | None:
            values = lists.get(fid)
            return values[0] if values else None

        return cls(
            msg_id=m.id,
            status=m.fixed["patron_status"],
            patron_id=first("AA") or "",
            personal_name=first("AE") or "",
            valid=_yes(first("BL")),
            valid_password=_yes(first("CQ")),
            screen_messages=lists.get("AF", ()),
            print_lines=lists.get("AG", ()),
            institution=first("AO") or "",
            extra=MappingProxyType(lists),
        )


@dataclass(frozen=True)
class EndSessionReply:
    """36."""

    ended: bool
    screen_messages: tuple[str, ...] = ()

    @classmethod
    def from_message(cls, m: Message) -> EndSessionReply:
        _expect(m, "36")
        return cls(m.fixed["end_session"] == "Y", tuple(m.all("AF")))


def login_ok(m: Message) -> bool:
    """94: '1' is accepted; anything else is a refusal."""
    _expect(m, "94")
    return m.fixed["ok"] == "1"


def _expect(m: Message, msg_id: str) -> None:
    if m.id != msg_id:
        raise Sip2MessageInvalid(f"expected SIP2 {msg_id}, got {m.id}")


# -- the requests a kiosk sends -----------------------------------------------------------------


def login(user: str, password: str, location: str = "") -> str:
    """93; the UID/PWD algorithm fields stay '0' (Evergreen rejects anything else)."""
    return build("93", ("0", "0"), [("CN", user), ("CO", password), ("CP", location)])


def sc_status(max_print_width: int = 30, version: str = "2.00") -> str:
    """99 with status 0 (SC ok)."""
    return build("99", ("0", f"{max_print_width:03d}", version))


def patron_status(
    when: dt.datetime,
    institution: str,
    patron_id: str,
    *,
    terminal_password: str = "",
    patron_password: str = "",
    language: str = "000",
) -> str:
    """23: AO, AA, AC and AD are all required, so empty ones are sent (kiosk.md §1.2)."""
    return build(
        "23",
        (language, sip_date(when)),
        [
            ("AO", institution),
            ("AA", patron_id),
            ("AC", terminal_password),
            ("AD", patron_password),
        ],
    )


def patron_information(
    when: dt.datetime,
    institution: str,
    patron_id: str,
    *,
    terminal_password: str = "",
    patron_password: str | None = None,
    language: str = "000",
) -> str:
    """63 with an all-blank summary: no item lists, the cheapest answer (kiosk.md §1.2)."""
    fields = [("AO", institution), ("AA", patron_id), ("AC", terminal_password)]
    if patron_password is not None:
        fields.append(("AD", patron_password))
    return build("63", (language, sip_date(when), " " * 10), fields)


def end_patron_session(
    when: dt.datetime, institution: str, patron_id: str, *, terminal_password: str = ""
) -> str:
    """35."""
    return build(
        "35", (sip_date(when),), [("AO", institution), ("AA", patron_id), ("AC", terminal_password)]
    )


# -- logging --------------------------------------------------------------------------------------

#: variable fields whose values never reach a log: passwords, and the patron's name
_SECRET_FIELDS = frozenset({"CO", "AC", "AD", "AE"})


def mask_patron_id(patron_id: str) -> str:
    """``1234567890`` → ``12****7890``: enough to match a log line to a card, not to use it."""
    n = len(patron_id)
    if n <= 4:
        return "*" * n
    keep = 4 if n >= 8 else n // 2
    head = 2 if n >= 10 else 0
    return patron_id[:head] + "*" * (n - head - keep) + patron_id[n - keep :]


def redact_frame(frame: bytes, encoding: str = "utf-8") -> str:
    """A frame for the TRAFFIC log: passwords and names replaced, patron ids masked. Fixed
    fields are skipped by the message's layout (a status like ``YYYY`` must not be taken for a
    field id); a frame that does not parse is shown as its id and length only."""
    text = frame.decode(encoding, errors="replace").rstrip("\r\n")
    layout = FIXED_FIELDS.get(text[:2])
    if layout is None:
        return f"{text[:2]!r}… ({len(frame)} bytes, not a known message)"
    start = 2 + sum(width for _, width in layout)
    out = [text[:start]]
    for piece in re.split(r"(?<=\|)", text[start:]):
        fid, value = piece[:2], piece[2:]
        closed = value.endswith("|")
        value = value[:-1] if closed else value
        if fid in _SECRET_FIELDS and value:
            value = "***"
        elif fid == "AA":
            value = mask_patron_id(value)
        out.append(fid + value + ("|" if closed else ""))
    return "".join(out)
