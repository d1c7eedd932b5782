# SPDX-License-Identifier: Apache-2.0
"""Framing for serial readers: bytes in, whole frames out. Pure logic, no pyserial.

A serial line has no message boundaries: one ``read()`` may hold half a frame, three frames, or
line noise from a reader powered up mid-transmission (kiosk.md §4 "one read ≠ one frame").
:class:`FrameDecoder` is fed arbitrary chunks and hands back every complete, valid frame;
everything else is counted in :class:`DecoderStats` and skipped, never raised, and the buffer is
bounded by :attr:`FrameSpec.max_length`.

A frame on the wire is::

    start  payload  checksum  end

- ``start`` / ``end``: marker bytes (either may be empty). STX/ETX wrapping is ``02``/``03``;
  a scanner suffix CR / LF / CRLF / TAB is an ``end`` marker.
- ``payload``: fixed ``length`` bytes, or anything up to ``end``. A configured ``strip_prefix``
  (a scanner's fixed prefix or symbology ID) is removed from it after checking.
- ``checksum`` (see :class:`Checksum`) sits between payload and end marker.

Without an ``end`` marker and without a fixed length (a scanner set to "no suffix"), a frame
ends when the line has been idle for ``idle_timeout`` seconds. With an end marker, bytes that sit
unterminated for ``idle_timeout`` are a partial frame: dropped and counted.

Also here, because they are pure too: the EM4100 number forms and the two debounce rules
(a repeating RFID reader, a barcode scanned twice).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

#: hex digits an EM4100 reader sends (upper or lower case)
_HEX = frozenset(b"0123456789ABCDEFabcdef")


class Checksum(StrEnum):
    NONE = "none"
    #: one binary byte: XOR of the payload bytes
    XOR = "xor"
    #: one binary byte: ISO 1155 LRC, the two's complement of the 8-bit sum of the payload bytes
    LRC = "lrc"
    #: the RDM6300 rule: the payload is ASCII hex; XOR of the bytes it encodes, written as two
    #: ASCII hex digits (``62E3086CED`` → ``08``)
    XOR_HEX = "xor-hex"

    @property
    def width(self) -> int:
        """Bytes the checksum field takes on the wire."""
        return {Checksum.NONE: 0, Checksum.XOR: 1, Checksum.LRC: 1, Checksum.XOR_HEX: 2}[self]


def xor_of(data: Iterable[int]) -> int:
    value = 0
    for b in data:
        value ^= b
    return value


def lrc_of(data: Iterable[int]) -> int:
    """ISO 1155 longitudinal redundancy check: ``-(sum of bytes) mod 256``."""
    return -sum(data) & 0xFF


def checksum_field(kind: Checksum, payload: bytes) -> bytes | None:
    """The checksum bytes that must follow ``payload``; None if the payload cannot carry one."""
    if kind is Checksum.NONE:
        return b""
    if kind is Checksum.XOR:
        return bytes([xor_of(payload)])
    if kind is Checksum.LRC:
        return bytes([lrc_of(payload)])
    if len(payload) % 2 or not set(payload) <= _HEX:
        return None
    return b"%02X" % xor_of(bytes.fromhex(payload.decode("ascii")))


def checksum_ok(kind: Checksum, payload: bytes, received: bytes) -> bool:
    expected = checksum_field(kind, payload)
    # hex digits compare case-insensitively: some clones send lower case
    return expected is not None and expected.upper() == received.upper()


@dataclass(frozen=True)
class FrameSpec:
    """How one device frames its output. Build it from a preset with :func:`preset`."""

    start: bytes = b""
    end: bytes = b""
    #: payload length in bytes (checksum and markers not counted); None: up to the end marker
    length: int | None = None
    checksum: Checksum = Checksum.NONE
    #: removed from the start of the payload when present (prefix or symbology ID)
    strip_prefix: bytes = b""
    #: seconds of silence after which a pending partial frame is flushed (see module doc)
    idle_timeout: float = 0.2
    #: longest payload accepted; longer runs are dropped (bounds the decoder's memory)
    max_length: int = 256

    def __post_init__(self) -> None:
        if self.length is not None and not 0 < self.length <= self.max_length:
            raise ValueError(f"length must be between 1 and max_length ({self.max_length})")
        if self.max_length <= 0:
            raise ValueError("max_length must be positive")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if self.start and self.start == self.end:
            raise ValueError("start and end markers must differ")

    @property
    def body_length(self) -> int | None:
        """Payload plus checksum, when fixed."""
        return None if self.length is None else self.length + self.checksum.width

    @property
    def flushes_on_idle(self) -> bool:
        """True when silence, not a marker or a count, ends a frame ("no suffix" scanners)."""
        return not self.end and self.length is None


@dataclass(frozen=True)
class Preset:
    spec: FrameSpec
    baudrate: int
    role: str  # "rfid" | "barcode"
    note: str


PRESETS: dict[str, Preset] = {
    "rdm6300": Preset(
        FrameSpec(start=b"\x02", end=b"\x03", length=10, checksum=Checksum.XOR_HEX),
        9600,
        "rfid",
        "RDM6300/RDM630 125 kHz: STX + 10 hex + 2 hex XOR + ETX, 9600 8N1",
    ),
    "parallax": Preset(
        FrameSpec(start=b"\x0a", end=b"\x0d", length=10),
        2400,
        "rfid",
        "Parallax USB RFID: LF + 10 hex + CR, 2400 8N1",
    ),
    "barcode-cr": Preset(FrameSpec(end=b"\r"), 9600, "barcode", "scanner, CR suffix"),
    "barcode-lf": Preset(FrameSpec(end=b"\n"), 9600, "barcode", "scanner, LF suffix"),
    "barcode-crlf": Preset(FrameSpec(end=b"\r\n"), 9600, "barcode", "scanner, CRLF suffix"),
    "barcode-stxetx": Preset(
        FrameSpec(start=b"\x02", end=b"\x03"), 9600, "barcode", "scanner, STX data ETX"
    ),
}

#: scanner suffix names as the config and scanner manuals spell them
SUFFIXES: dict[str, bytes] = {"none": b"", "cr": b"\r", "lf": b"\n", "crlf": b"\r\n", "tab": b"\t"}


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None


@dataclass
class DecoderStats:
    """What the decoder skipped, for diag and the log. Counts only grow."""

    frames: int = 0
    #: bytes outside any frame (noise, a frame's tail after a mid-frame power-up)
    garbage_bytes: int = 0
    bad_checksum: int = 0
    #: frames whose shape was wrong (end marker missing at the fixed length, bad hex, ...)
    malformed: int = 0
    #: runs longer than max_length without an end marker
    too_long: int = 0
    #: partial frames dropped after idle_timeout of silence
    partial_dropped: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class FrameDecoder:
    """Incremental decoder: :meth:`feed` chunks as they come, :meth:`poll` while the line is idle.

    ``now`` is a monotonic time in seconds supplied by the caller (the reader thread), so the
    decoder stays pure and its idle rule is testable without sleeping.

    Resynchronisation: with a start marker, a bad frame costs only its start marker and the
    search goes on from the next byte, so a good frame that began inside a broken one is still
    found. Without one (CR-terminated scanners), an over-long line is discarded up to its end
    marker, so its tail never comes out as a frame of its own.
    """

    spec: FrameSpec
    stats: DecoderStats = field(default_factory=DecoderStats)
    _buf: bytearray = field(default_factory=bytearray)
    _last_byte_at: float = 0.0
    #: dropping the rest of an over-long line up to its end marker
    _discarding: bool = False

    def feed(self, chunk: bytes, now: float) -> list[bytes]:
        """Add ``chunk`` and return the payloads of every frame it completes."""
        out: list[bytes] = []
        if chunk:
            # A long pause before this chunk ends whatever was pending first.
            out += self.poll(now)
            self._buf += chunk
            self._last_byte_at = now
        while True:
            step = self._next()
            if step is None:
                return out
            if step:
                out.append(step[0])

    def poll(self, now: float) -> list[bytes]:
        """Apply the idle rule; call when a read returns nothing."""
        if not self._buf or now - self._last_byte_at < self.spec.idle_timeout:
            return []
        pending = bytes(self._buf)
        self._buf.clear()
        if self._discarding:
            self._discarding = False
            self.stats.garbage_bytes += len(pending)
            return []
        if self.spec.flushes_on_idle:
            return [self._accept(pending)]
        self.stats.partial_dropped += 1
        return []

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    # -- internals ---------------------------------------------------------------------------

    def _next(self) -> list[bytes] | None:
        """Take one frame, or one piece of garbage, off the buffer.

        Returns None when more bytes are needed, ``[]`` when something was skipped, and
        ``[payload]`` for a frame.
        """
        spec, buf = self.spec, self._buf
        if self._discarding:
            at = buf.find(spec.end)
            if at < 0:
                self._skip(len(buf) - (len(spec.end) - 1))
                return None
            self._discarding = False
            self._skip(at + len(spec.end))
            return []
        if spec.start:
            at = buf.find(spec.start)
            if at < 0:
                # Keep a tail that could be the first bytes of a multi-byte start marker.
                self._skip(len(buf) - (len(spec.start) - 1))
                return None
            if at:
                self._skip(at)
                return []
        body_from = len(spec.start)
        if spec.body_length is not None:
            return self._next_fixed(body_from, spec.body_length)
        if spec.end:
            return self._next_terminated(body_from)
        # Neither length nor end marker: only silence ends a frame (poll); bound the buffer.
        if len(buf) > spec.max_length:
            self.stats.too_long += 1
            self._drop(len(buf))
            return []
        return None

    def _next_fixed(self, body_from: int, body_len: int) -> list[bytes] | None:
        spec, buf = self.spec, self._buf
        total = body_from + body_len + len(spec.end)
        if len(buf) < total:
            return None
        if spec.end and buf[body_from + body_len : total] != spec.end:
            # Wrong shape: drop only the start marker (or one byte) and search again.
            if spec.start:
                self.stats.malformed += 1
                self._drop(len(spec.start))
            else:
                self._skip(1)
            return []
        payload = self._check(bytes(buf[body_from : body_from + body_len]))
        if payload is None:
            self._drop(len(spec.start) or total)
            return []
        self._drop(total)
        return [payload]

    def _next_terminated(self, body_from: int) -> list[bytes] | None:
        spec, buf = self.spec, self._buf
        width = spec.checksum.width
        end_at = buf.find(spec.end, body_from + width)
        if end_at < 0:
            longest = body_from + spec.max_length + width + len(spec.end)
            if len(buf) > longest:
                self.stats.too_long += 1
                if spec.start:
                    self._drop(len(spec.start))  # resynchronise on the next start marker
                else:
                    self._discarding = True
                return []
            return None
        if spec.start:
            restart = buf.find(spec.start, body_from, end_at - width)
            if restart >= 0:
                # A new start before this frame ended: the frame before it was cut short.
                self.stats.malformed += 1
                self._drop(restart)
                return []
        if end_at - body_from - width > spec.max_length:
            self.stats.too_long += 1
            self._drop(end_at + len(spec.end))
            return []
        body = bytes(buf[body_from:end_at])
        if width and len(spec.end) == 1 and not self._valid(body):
            # A binary checksum byte can equal a one-byte end marker (XOR = 03 before ETX):
            # then the real end is the next byte. Wait for it before judging the frame.
            if len(buf) <= end_at + 1:
                return None
            if buf[end_at + 1 : end_at + 2] == spec.end and self._valid(
                bytes(buf[body_from : end_at + 1])
            ):
                end_at += 1
                body = bytes(buf[body_from:end_at])
        payload = self._check(body)
        self._drop(end_at + len(spec.end))
        return [] if payload is None else [payload]

    def _valid(self, body: bytes) -> bool:
        width = self.spec.checksum.width
        return len(body) >= width and checksum_ok(
            self.spec.checksum, body[: len(body) - width], body[len(body) - width :]
        )

    def _check(self, body: bytes) -> bytes | None:
        """The payload of a frame body, or None (counted) when the checksum or shape is wrong."""
        kind = self.spec.checksum
        width = kind.width
        payload = body[: len(body) - width]
        if len(body) < width or (
            kind is Checksum.XOR_HEX and checksum_field(kind, payload) is None
        ):
            self.stats.malformed += 1
            return None
        if width and not checksum_ok(kind, payload, body[len(body) - width :]):
            self.stats.bad_checksum += 1
            return None
        return self._accept(payload)

    def _accept(self, payload: bytes) -> bytes:
        prefix = self.spec.strip_prefix
        if prefix and payload.startswith(prefix):
            payload = payload[len(prefix) :]
        self.stats.frames += 1
        return payload

    def _drop(self, n: int) -> None:
        """Drop ``n`` bytes already accounted for (a frame, or a bad frame counted by kind)."""
        del self._buf[:n]

    def _skip(self, n: int) -> None:
        """Drop ``n`` bytes of garbage."""
        if n > 0:
            self.stats.garbage_bytes += n
            del self._buf[:n]


def encode_frame(spec: FrameSpec, payload: bytes) -> bytes:
    """The bytes a device following ``spec`` sends for ``payload`` (tests, benchmarks, docs)."""
    check = checksum_field(spec.checksum, payload)
    if check is None:
        raise ValueError("payload cannot carry this checksum")
    return spec.start + payload + check + spec.end


# -- EM4100 -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Em4100Id:
    """An EM4100 tag: 5 bytes (version/customer byte + 4 tag bytes), as readers print it.

    The printed forms are conventions, not a standard (kiosk.md §4): ``decimal10`` is the 4 tag
    bytes as one big-endian number, zero-padded to 10 digits; ``wiegand`` is "AAA,BBBBB", the
    third-last byte then the last two bytes, in decimal (the 26-bit Wiegand facility/card pair).
    """

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 5:
            raise ValueError("an EM4100 ID is 5 bytes")

    @classmethod
    def from_hex(cls, text: bytes | str) -> Em4100Id:
        if isinstance(text, bytes):
            if not set(text) <= _HEX:
                raise ValueError("not hex")
            text = text.decode("ascii")
        if len(text) != 10:
            raise ValueError("an EM4100 ID is 10 hex digits")
        return cls(bytes.fromhex(text))

    @property
    def hex(self) -> str:
        return self.raw.hex().upper()

    @property
    def decimal10(self) -> str:
        return f"{int.from_bytes(self.raw[1:], 'big'):010d}"

    @property
    def wiegand(self) -> str:
        return f"{self.raw[2]:03d},{int.from_bytes(self.raw[3:], 'big'):05d}"

    def to_dict(self) -> dict[str, str]:
        return {"hex": self.hex, "decimal10": self.decimal10, "wiegand": self.wiegand}


# -- debounce ---------------------------------------------------------------------------------


@dataclass
class RepeatFilter:
    """Report a value once; report the same value again only after a quiet gap.

    ``extend=True`` (RFID readers that repeat while a tag is present): every repeat restarts the
    gap, so a tag is reported again only after it was *absent* for ``gap`` seconds.
    ``extend=False`` (barcode scanners): the same text within ``gap`` seconds of the last report
    is ignored, however often it comes. A different value is always reported at once.
    """

    gap: float
    extend: bool
    _last: object = None
    _since: float = float("-inf")

    def accept(self, value: object, now: float) -> bool:
        fresh = value != self._last or now - self._since >= self.gap
        if fresh or self.extend:
            self._since = now
        self._last = value
        return fresh
