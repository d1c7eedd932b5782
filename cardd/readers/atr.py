# SPDX-License-Identifier: Apache-2.0
"""ISO 7816-3 Answer-To-Reset parsing and PC/SC Part 3 contactless pseudo-ATR decoding.

An ATR comes straight off a card (or a reader inventing one for a contactless card), so it is
untrusted input: :func:`parse_atr` never raises. Whatever is wrong with the bytes (truncated,
bad TCK, stray bytes, too long) lands in :attr:`Atr.problems` and everything that could be
decoded is still decoded, because ``cardd diag`` is most useful exactly when an ATR is odd.

Layout (ISO/IEC 7816-3)::

    TS T0 {TAi TBi TCi TDi}... T1..TK [TCK]

T0 and each TDi carry a presence bitmap in the high nibble for the next level's TA/TB/TC/TD;
T0's low nibble is K (number of historical bytes), a TDi's low nibble is a protocol number T.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, NamedTuple

#: ISO 7816-3 caps the ATR at 32 bytes after TS (so 33 in all).
MAX_ATR_LENGTH = 33

TS_DIRECT = 0x3B
TS_INVERSE = 0x3F
#: What an inverse-convention TS (3F) looks like when a UART reads it with direct convention.
_TS_INVERSE_UNDECODED = 0x03

#: Defaults that apply when TA1 is absent (ISO 7816-3).
DEFAULT_FI = 372
DEFAULT_DI = 1
DEFAULT_FMAX_MHZ = 5.0

#: ISO 7816-3 Fi/f(max) table: TA1 high nibble -> (Fi, f(max) in MHz). Missing keys are RFU.
FI_TABLE: Mapping[int, tuple[int, float]] = MappingProxyType(
    {
        0x0: (372, 4.0),
        0x1: (372, 5.0),
        0x2: (558, 6.0),
        0x3: (744, 8.0),
        0x4: (1116, 12.0),
        0x5: (1488, 16.0),
        0x6: (1860, 20.0),
        0x9: (512, 5.0),
        0xA: (768, 7.5),
        0xB: (1024, 10.0),
        0xC: (1536, 15.0),
        0xD: (2048, 20.0),
    }
)

#: ISO 7816-3 Di table: TA1 low nibble -> Di. Missing keys are RFU.
DI_TABLE: Mapping[int, int] = MappingProxyType(
    {0x1: 1, 0x2: 2, 0x3: 4, 0x4: 8, 0x5: 16, 0x6: 32, 0x7: 64, 0x8: 12, 0x9: 20}
)

#: TD's T=15 is not a transmission protocol; it only introduces global interface bytes.
T_GLOBAL = 15


class Convention(StrEnum):
    DIRECT = "direct"
    INVERSE = "inverse"
    INVALID = "invalid"


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:02X}"


@dataclass(frozen=True)
class InterfaceLevel:
    """One group TAi/TBi/TCi/TDi. Absent bytes are None."""

    index: int  # i, 1-based as in the standard
    ta: int | None = None
    tb: int | None = None
    tc: int | None = None
    td: int | None = None
    #: T named by TD(i-1), i.e. the protocol these bytes belong to; None for level 1, whose
    #: presence bits come from T0 (its bytes are global: Fi/Di, guard time...).
    protocol: int | None = None

    @property
    def next_protocol(self) -> int | None:
        """The T this level's TD announces for the next level."""
        return None if self.td is None else self.td & 0x0F

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.index,
            "protocol": self.protocol,
            "ta": _hex(self.ta),
            "tb": _hex(self.tb),
            "tc": _hex(self.tc),
            "td": _hex(self.td),
        }


class FiDi(NamedTuple):
    """Clock rate conversion integer Fi and baud rate adjustment integer Di.

    A NamedTuple so callers can write ``fi, di = atr.fi_di``. A field is None when TA1 holds a
    reserved (RFU) value for it.
    """

    fi: int | None
    di: int | None


@dataclass(frozen=True)
class Atr:
    """A decoded ATR. Build with :func:`parse_atr`."""

    raw: bytes
    ts: int | None
    convention: Convention
    t0: int | None
    interface_bytes: tuple[InterfaceLevel, ...]
    historical_bytes: bytes
    tck: int | None
    #: None when no TCK is required (only T=0 indicated); False when required but missing/wrong.
    tck_ok: bool | None
    #: Offered transmission protocols in order of appearance; (0,) when there is no TD1,
    #: () when the ATR stops before T0.
    protocols: tuple[int, ...]
    problems: tuple[str, ...]
    #: Bytes after the last expected byte; kept so diag can show them.
    extra: bytes = b""

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def tck_required(self) -> bool:
        """ISO 7816-3: TCK is present iff some T other than T=0 (T=15 included) appears."""
        return any(level.next_protocol not in (None, 0) for level in self.interface_bytes)

    def level(self, index: int) -> InterfaceLevel | None:
        """Interface bytes of level ``index`` (1-based), or None when the ATR has none there."""
        for lvl in self.interface_bytes:
            if lvl.index == index:
                return lvl
        return None

    @property
    def ta1(self) -> int | None:
        first = self.level(1)
        return None if first is None else first.ta

    @property
    def fi_di(self) -> FiDi:
        ta1 = self.ta1
        if ta1 is None:
            return FiDi(DEFAULT_FI, DEFAULT_DI)
        fi = FI_TABLE.get(ta1 >> 4)
        return FiDi(None if fi is None else fi[0], DI_TABLE.get(ta1 & 0x0F))

    @property
    def fmax_mhz(self) -> float | None:
        ta1 = self.ta1
        if ta1 is None:
            return DEFAULT_FMAX_MHZ
        fi = FI_TABLE.get(ta1 >> 4)
        return None if fi is None else fi[1]

    @property
    def historical_text(self) -> str:
        """Historical bytes as printable ASCII, '.' elsewhere (issuers often put names there)."""
        return "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in self.historical_bytes)

    @property
    def hex(self) -> str:
        return self.raw.hex().upper()

    def to_dict(self) -> dict[str, Any]:
        fi, di = self.fi_di
        contactless = parse_contactless(self)
        return {
            "raw": self.hex,
            "ts": _hex(self.ts),
            "convention": str(self.convention),
            "t0": _hex(self.t0),
            "interface_bytes": [level.to_dict() for level in self.interface_bytes],
            "historical_bytes": self.historical_bytes.hex().upper(),
            "historical_text": self.historical_text,
            "tck": _hex(self.tck),
            "tck_ok": self.tck_ok,
            "protocols": list(self.protocols),
            "fi": fi,
            "di": di,
            "fmax_mhz": self.fmax_mhz,
            "extra": self.extra.hex().upper(),
            "problems": list(self.problems),
            "valid": self.valid,
            "contactless": None if contactless is None else contactless.to_dict(),
        }


_PRESENCE = ((0x10, "ta"), (0x20, "tb"), (0x40, "tc"), (0x80, "td"))


def parse_atr(atr: bytes) -> Atr:
    """Decode ``atr``. Never raises for any byte string; problems are reported in the result."""
    raw = bytes(atr)
    problems: list[str] = []
    n = len(raw)
    if n > MAX_ATR_LENGTH:
        problems.append(f"too long: {n} bytes (ISO 7816-3 allows {MAX_ATR_LENGTH})")

    if n == 0:
        problems.append("truncated: empty ATR")
        return _stub(raw, None, Convention.INVALID, problems)

    ts = raw[0]
    if ts == TS_DIRECT:
        convention = Convention.DIRECT
    elif ts == TS_INVERSE:
        # PC/SC readers hand us inverse-convention ATRs already decoded, so the remaining bytes
        # read the same way as for direct convention.
        convention = Convention.INVERSE
    else:
        convention = Convention.INVALID
        hint = " (undecoded inverse convention?)" if ts == _TS_INVERSE_UNDECODED else ""
        problems.append(f"invalid TS {ts:02X}{hint}")

    if n == 1:
        problems.append("truncated: T0 missing")
        return _stub(raw, ts, convention, problems)

    # Still parse the structure after a bad TS: the rest often explains what went wrong.
    t0 = raw[1]
    k = t0 & 0x0F
    presence = t0 & 0xF0
    pos = 2
    levels: list[InterfaceLevel] = []
    indicated: list[int] = []  # every T named by a TD, in order, T=15 included
    protocol: int | None = None
    index = 1
    truncated = False
    # Each level with a TD consumes at least one byte, so this loop ends within len(raw) steps.
    while presence:
        values: dict[str, int] = {}
        for bit, name in _PRESENCE:
            if presence & bit:
                if pos >= n:
                    problems.append(f"truncated: {name.upper()}{index} missing")
                    truncated = True
                    break
                values[name] = raw[pos]
                pos += 1
        levels.append(InterfaceLevel(index=index, protocol=protocol, **values))
        td = values.get("td")
        if truncated or td is None:
            break
        protocol = td & 0x0F
        indicated.append(protocol)
        presence = td & 0xF0
        index += 1

    if indicated and indicated[0] == T_GLOBAL:
        problems.append("TD1 indicates T=15, which only TD2 onwards may carry")

    offered = tuple(dict.fromkeys(t for t in indicated if t != T_GLOBAL))
    protocols = offered or (0,)
    tck_required = any(t != 0 for t in indicated)

    ta1 = levels[0].ta if levels else None  # levels[0] is always level 1
    if ta1 is not None and ((ta1 >> 4) not in FI_TABLE or (ta1 & 0x0F) not in DI_TABLE):
        problems.append(f"TA1 {ta1:02X} uses a reserved Fi/Di value")

    historical = b""
    tck: int | None = None
    # Until a TCK is read and checked, a required one counts as bad and an unrequired one as n/a.
    tck_ok: bool | None = False if tck_required else None
    extra = b""
    if not truncated:
        historical = raw[pos : pos + k]
        pos += len(historical)
        if len(historical) < k:
            problems.append(f"truncated: {len(historical)} of {k} historical bytes")
        elif tck_required:
            if pos >= n:
                problems.append("truncated: TCK missing")
            else:
                tck = raw[pos]
                expected = _xor(raw[1:pos])
                pos += 1
                tck_ok = expected == tck
                if not tck_ok:
                    problems.append(f"TCK mismatch: expected {expected:02X} got {tck:02X}")
        extra = raw[pos:]  # empty after a short read, since pos is then n
        if extra:
            where = "TCK" if tck_required else "historical bytes (no TCK for T=0 only)"
            problems.append(f"extra bytes after {where}: {extra.hex().upper()}")

    return Atr(
        raw=raw,
        ts=ts,
        convention=convention,
        t0=t0,
        interface_bytes=tuple(levels),
        historical_bytes=historical,
        tck=tck,
        tck_ok=tck_ok,
        protocols=protocols,
        problems=tuple(problems),
        extra=extra,
    )


def _stub(raw: bytes, ts: int | None, convention: Convention, problems: list[str]) -> Atr:
    """An ATR cut off before T0: nothing is known about protocols, so none are claimed."""
    return Atr(
        raw=raw,
        ts=ts,
        convention=convention,
        t0=None,
        interface_bytes=(),
        historical_bytes=b"",
        tck=None,
        tck_ok=None,
        protocols=(),
        problems=tuple(problems),
    )


def _xor(data: bytes) -> int:
    acc = 0
    for b in data:
        acc ^= b
    return acc


# --- PC/SC Part 3 contactless pseudo-ATRs -------------------------------------------------------
#
# A PC/SC reader invents an ATR for a contactless card (PC/SC Part 3, "ATR" section):
#   3B 8N 80 01 <N historical bytes> TCK     (TD1 = 80: T=0 follows; TD2 = 01: T=1, nothing more)
# For storage cards (no ISO 14443-4) the historical bytes are
#   80 4F 0C A0 00 00 03 06 SS C0 C1 00 00 00 00
# i.e. category indicator 80, tag 4F (AID) length 0C, the PC/SC Workgroup RID, the standard SS,
# a two-byte card name and four RFU bytes. For ISO-DEP cards they are the ATS historical bytes
# (type A) or the ATQB application data + protocol info + MBLI (type B).

PCSC_RID = bytes.fromhex("A000000306")
_PSEUDO_TD1 = 0x80
_PSEUDO_TD2 = 0x01


class ContactlessKind(StrEnum):
    STORAGE = "storage"
    ISO_DEP = "iso-dep"


#: SS byte of the storage-card AID (PC/SC Part 3 supplement, as decoded by pcsc-tools).
STANDARDS: Mapping[int, str] = MappingProxyType(
    {
        0x00: "No information given",
        0x01: "ISO 14443 A, part 1",
        0x02: "ISO 14443 A, part 2",
        0x03: "ISO 14443 A, part 3",
        0x05: "ISO 14443 B, part 1",
        0x06: "ISO 14443 B, part 2",
        0x07: "ISO 14443 B, part 3",
        0x09: "ISO 15693, part 1",
        0x0A: "ISO 15693, part 2",
        0x0B: "ISO 15693, part 3",
        0x0C: "ISO 15693, part 4",
        0x0D: "Contact (7816-10) I2C",
        0x0E: "Contact (7816-10) Extended I2C",
        0x0F: "Contact (7816-10) 2WBP",
        0x10: "Contact (7816-10) 3WBP",
        0x11: "FeliCa",
    }
)

#: C0 C1 card names (PC/SC Part 3 supplement; the F0xx/FFxx codes are what ACS/NXP-based readers
#: such as the ACR122U report). Spelled with today's product names where NXP renamed them.
CARD_NAMES: Mapping[int, str] = MappingProxyType(
    {
        0x0001: "MIFARE Classic 1K",
        0x0002: "MIFARE Classic 4K",
        0x0003: "MIFARE Ultralight",
        0x0004: "SLE55R_XXXX",
        0x0006: "SR176",
        0x0007: "SRIX4K",
        0x0008: "AT88RF020",
        0x0009: "AT88SC0204CRF",
        0x000A: "AT88SC0808CRF",
        0x000B: "AT88SC1616CRF",
        0x000C: "AT88SC3216CRF",
        0x000D: "AT88SC6416CRF",
        0x000E: "SRF55V10P",
        0x000F: "SRF55V02P",
        0x0010: "SRF55V10S",
        0x0011: "SRF55V02S",
        0x0012: "TAG_IT",
        0x0013: "LRI512",
        0x0014: "ICODE SLI",
        0x0015: "TEMPSENS",
        0x0016: "I.CODE1",
        0x0017: "PicoPass 2K",
        0x0018: "PicoPass 2KS",
        0x0019: "PicoPass 16K",
        0x001A: "PicoPass 16KS",
        0x001B: "PicoPass 16K (8x2)",
        0x001C: "PicoPass 16KS (8x2)",
        0x001D: "PicoPass 32KS (16+16)",
        0x001E: "PicoPass 32KS (16+8x2)",
        0x001F: "PicoPass 32KS (8x2+16)",
        0x0020: "PicoPass 32KS (8x2+8x2)",
        0x0021: "LRI64",
        0x0022: "I.CODE UID",
        0x0023: "I.CODE EPC",
        0x0024: "LRI12",
        0x0025: "LRI128",
        0x0026: "MIFARE Mini",
        0x0027: "my-d move (SLE 66R01P)",
        0x0028: "my-d NFC (SLE 66RxxP)",
        0x0029: "my-d proximity 2 (SLE 66RxxS)",
        0x002A: "my-d proximity enhanced (SLE 55RxxE)",
        0x002B: "my-d light (SRF 55V01P)",
        0x002C: "PJM Stack Tag (SRF 66V10ST)",
        0x002D: "PJM Item Tag (SRF 66V10IT)",
        0x002E: "PJM Light (SRF 66V01ST)",
        0x002F: "Jewel",
        0x0030: "Topaz",
        0x0031: "AT88SC0104CRF",
        0x0032: "AT88SC0404CRF",
        0x0033: "AT88RF01C",
        0x0034: "AT88RF04C",
        0x0035: "i-Code SL2",
        0x0036: "MIFARE Plus SL1 2K",
        0x0037: "MIFARE Plus SL1 4K",
        0x0038: "MIFARE Plus SL2 2K",
        0x0039: "MIFARE Plus SL2 4K",
        0x003A: "MIFARE Ultralight C",
        0x003B: "FeliCa",
        0x003C: "Melexis Sensor Tag (MLX90129)",
        0x003D: "MIFARE Ultralight EV1",
        0xF004: "Topaz/Jewel",
        0xF011: "FeliCa 212K",
        0xF012: "FeliCa 424K",
    }
)


def card_name(code: int) -> str | None:
    """Name for a C0 C1 card-name code; ``FF xx`` means 'unknown type', xx being the SAK."""
    if code >> 8 == 0xFF:
        return f"unknown type (SAK {code & 0xFF:02X})"
    return CARD_NAMES.get(code)


@dataclass(frozen=True)
class ContactlessInfo:
    """What a PC/SC pseudo-ATR says about the contactless card behind it."""

    kind: ContactlessKind
    historical_bytes: bytes
    #: SS byte and its name; storage cards only (ISO-DEP pseudo-ATRs do not carry it).
    standard: int | None = None
    standard_name: str | None = None
    #: (C0 << 8) | C1 and its name (None when the code is not in our table); storage cards only.
    card_name_code: int | None = None
    card_name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "historical_bytes": self.historical_bytes.hex().upper(),
            "standard": _hex(self.standard),
            "standard_name": self.standard_name,
            "card_name_code": None if self.card_name_code is None else f"{self.card_name_code:04X}",
            "card_name": self.card_name,
        }


def is_pseudo_atr(atr: Atr) -> bool:
    """True when ``atr`` has the exact shape PC/SC readers use for contactless cards."""
    if atr.ts != TS_DIRECT or atr.t0 is None or atr.t0 & 0xF0 != 0x80:
        return False
    levels = atr.interface_bytes
    return (
        len(levels) == 2
        and levels[0] == InterfaceLevel(index=1, td=_PSEUDO_TD1)
        and levels[1] == InterfaceLevel(index=2, td=_PSEUDO_TD2, protocol=0)
    )


def parse_contactless(atr: Atr) -> ContactlessInfo | None:
    """Decode a PC/SC Part 3 pseudo-ATR; None for anything else (a contact card).

    A bad TCK does not stop decoding: it is already listed in ``atr.problems``.
    """
    if not is_pseudo_atr(atr):
        return None
    hist = atr.historical_bytes
    # 80 (category) 4F (AID tag) LL RID(5) SS C0 C1 ...; LL is 0C in practice, accept >= 8.
    if len(hist) >= 11 and hist[0] == 0x80 and hist[1] == 0x4F and hist[3:8] == PCSC_RID:
        aid_len = hist[2]
        if aid_len >= 8 and len(hist) >= 3 + aid_len:
            ss = hist[8]
            code = (hist[9] << 8) | hist[10]
            return ContactlessInfo(
                kind=ContactlessKind.STORAGE,
                historical_bytes=hist,
                standard=ss,
                standard_name=STANDARDS.get(ss, "RFU"),
                card_name_code=code,
                card_name=card_name(code),
            )
    return ContactlessInfo(kind=ContactlessKind.ISO_DEP, historical_bytes=hist)
