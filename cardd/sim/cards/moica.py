# SPDX-License-Identifier: Apache-2.0
"""A virtual MOICA gen1 card (HiCOS "T7S", ``CHT V32N``): the public-data part only.

Models what cardd reads without a PIN (moica.md §3): SELECT and READ BINARY with CLA ``80`` over a
small file system. PIN and signing are not modelled: cardd never sends those APDUs, it signs
through PKCS#11 (moica.md §4), so the card answers them ``6D 00`` like any unknown instruction.

File system::

    3F00 MF
    ├── 0900 DF
    │   ├── 0903 EF  card number, 16 ASCII bytes
    │   └── 0905 EF  version, "CHT V32N" + 12 bytes 00 (20 bytes: CDCScript reads Le=0x14)
    └── 5030 DF  proprietary PKCS#15 DF
        ├── 4104 EF  CDF (directory EF: content, 00 padding, content length LE in the last 2 bytes)
        ├── 5032 EF  TokenInfo (optional)
        └── 08F2 EF  all certificates, concatenated at 0x0000, 0x0700, 0x0E00, 0x1500, zero
                     padded, at least 0x1C00 bytes. A certificate too big for its slot moves
                     the next one to the next 0x100 boundary (a fifth or later one follows the
                     previous at the next 0x100 boundary); the CDF always says where they are.

Command behaviour (the real card's error statuses are partly unknown; these are the model's):

=================================  ==========================================================
Command                            Answer
=================================  ==========================================================
any CLA other than ``80``          ``6E 00`` (moica.md §3.1: CLA ``00`` answers ``6E 00``)
``80 A4 00 00 02 <FID> [Le]``      ``90 00`` with **no FCI**: the real card returns no FCP
                                   either ([OH] ``ref/apdu.md`` §3a), which is why readers must
                                   find a directory EF's end by reading (see the CDF below).
                                   ``3F00`` always works. Other FIDs are looked up among the
                                   children of the current DF only (so an EF's siblings, or a
                                   DF's children); no parent or sibling-DF search. Not found:
                                   ``6A 82``, and the selection stays as it was (ISO 7816-4).
                                   P1/P2 other than ``00 00``: ``6A 86``; Lc other than 2:
                                   ``67 00``.
``80 B0 <off hi> <off lo> <Le>``   Le 1..200 (the 0xC8 chunk limit of the vendor library);
                                   missing Le, Le 0 (= 256) or Le > 200: ``67 00``. No EF
                                   selected: ``69 86``. Offset at or past the end: ``6B 00``.
                                   A read running past the end: the bytes there + ``62 82``.
                                   P1 bit 8 (short-EF addressing): ``6A 86``.
anything else with CLA ``80``      ``6D 00`` (includes VERIFY, the sign commands, READ RECORD)
=================================  ==========================================================

After :meth:`MoicaGen1Card.power_on` nothing is selected, not even the MF, so a reader has to
SELECT ``3F00`` first (as every known reader does).

CDF encoding
------------
One PKCS#15 ``CertificateType`` per certificate, ``x509Certificate`` being the untagged choice::

    30 {                                        -- PKCS15Object
      30 { 0C <label> }                         -- CommonObjectAttributes: label (UTF8String)
      30 { 04 <iD> [01 01 FF] }                 -- CommonCertificateAttributes: iD, authority
      A1 {                                      -- [1] typeAttributes
        30 {                                    -- X509CertificateAttributes
          30 { 04 06 3F00503008F2               -- value: Path (the indirect choice)
               02 <index>                       --   offset inside 08F2
               80 <length> }                    --   [0] IMPLICIT INTEGER, certificate length
          30 ...                                -- subject (the certificate's Name DER)
          A0 { 30 ... }                         -- [0] issuer (EXPLICIT: Name is a CHOICE)
          02 <serialNumber> } } }

The Path is byte-identical to the real-card example in moica.md §3.3
(``30 0F 04 06 3F00503008F2 02 01 00 80 02 06 08``). ``iD`` and ``label`` follow the object IDs
seen on real cards ([OH]): ``SIGN`` (keyUsage digitalSignature), ``KEYX`` (keyEncipherment),
``CACert`` (a CA), ``ROOTCACert`` (a self-signed CA); the label is the same ASCII text, since real
labels are not known. Subject, issuer and serial are included because the real CDF carries them
too ([OH] ``ref/apdu.md`` §3a). A certificate that does not parse gets ``CERT<n>`` and a
Path-only entry. The EF is allocated in 0x100-byte steps with at least one ``00`` byte between
the content and the 2-byte little-endian length trailer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from cardd.sim.cards.base import sw

KIND = "moica-gen1"

#: Gen1 ATR (pcsc-tools smartcard_list.txt; historical bytes "CHTMOICA"), moica.md §2.
ATR_GEN1 = bytes.fromhex("3B B8 13 00 81 31 FA 52 43 48 54 4D 4F 49 43 41 A5")

CLA_PROPRIETARY = 0x80
INS_SELECT = 0xA4
INS_READ_BINARY = 0xB0

FID_MF = 0x3F00
FID_DF_CARD = 0x0900
FID_EF_CARD_NUMBER = 0x0903
FID_EF_VERSION = 0x0905
FID_DF_PKCS15 = 0x5030
FID_EF_CDF = 0x4104
FID_EF_TOKEN_INFO = 0x5032
FID_EF_CERTIFICATES = 0x08F2

#: Where real cards keep their four certificates inside 08F2 (moica.md §3.3).
CERTIFICATE_SLOTS = (0x0000, 0x0700, 0x0E00, 0x1500)
#: A certificate too big for its slot pushes the next one to the next boundary of this size.
SLOT_ALIGNMENT = 0x100
#: Directory EFs are allocated in steps of this size (a model choice; real sizes are unknown).
DIRECTORY_ALLOCATION = 0x100

#: The largest Le the card accepts for READ BINARY: the vendor library's 0xC8 chunk.
MAX_READ = 0xC8
#: P1 bit 8 would mean short-EF addressing, so offsets are 15 bits.
MAX_OFFSET = 0x7FFF

VERSION_GEN1 = b"CHT V32N"
#: Orson Wang's CDCScript reads EF 0905 with Le=0x14 and expects success, so at least 20 bytes.
VERSION_EF_SIZE = 0x14
CARD_NUMBER_LENGTH = 16

#: PKCS#15 object IDs as seen on real cards ([OH]); used as both iD and label.
ID_SIGN = b"SIGN"
ID_KEYX = b"KEYX"
ID_CA = b"CACert"
ID_ROOT_CA = b"ROOTCACert"

SW_OK = 0x9000
SW_END_OF_FILE = 0x6282
SW_WRONG_LENGTH = 0x6700
SW_NO_CURRENT_EF = 0x6986
SW_FILE_NOT_FOUND = 0x6A82
SW_INCORRECT_P1P2 = 0x6A86
SW_WRONG_OFFSET = 0x6B00
SW_INS_NOT_SUPPORTED = 0x6D00
SW_CLA_NOT_SUPPORTED = 0x6E00


@dataclass
class _File:
    """One node of the card's file tree. An EF has ``data``; a DF has ``children``."""

    fid: int
    data: bytes | None = None
    children: dict[int, _File] = field(default_factory=dict)

    @property
    def is_df(self) -> bool:
        return self.data is None

    def add(self, child: _File) -> _File:
        self.children[child.fid] = child
        return child


@dataclass(frozen=True)
class CertificatePlacement:
    """Where the card model put one certificate inside EF 08F2."""

    offset: int
    length: int
    object_id: bytes
    authority: bool


class MoicaGen1Card:
    """A MOICA gen1 card holding a card number and certificates.

    :param card_number: the 16 ASCII characters printed on the card (2 letters + 14 digits).
    :param certificates: DER certificates, stored in 08F2 in this order.
    :param atr: the ATR to report.
    :param with_cdf: False leaves EF 4104 out, to exercise readers' offset fallback.
    :param cdf_content: replaces the generated CDF content (e.g. garbage for error tests);
        padding and the length trailer are still added.
    :param cdf_ef: the raw bytes of EF 4104, verbatim (no padding or trailer added); overrides
        ``cdf_content`` for what the card serves.
    :param with_token_info: False leaves EF 5032 out.
    """

    kind = KIND

    def __init__(
        self,
        card_number: str,
        certificates: Sequence[bytes],
        *,
        atr: bytes = ATR_GEN1,
        with_cdf: bool = True,
        cdf_content: bytes | None = None,
        cdf_ef: bytes | None = None,
        with_token_info: bool = True,
    ) -> None:
        if len(card_number) != CARD_NUMBER_LENGTH or not card_number.isascii():
            raise ValueError("card number must be 16 ASCII characters")
        if not card_number.isalnum():
            raise ValueError("card number must be letters and digits")
        if not certificates:
            raise ValueError("a MOICA card holds at least one certificate")
        self._atr = bytes(atr)
        self._card_number = card_number
        self._certificates = [bytes(c) for c in certificates]
        self._placements = _place(self._certificates)
        self._cdf_content = (
            _build_cdf(self._certificates, self._placements) if cdf_content is None else cdf_content
        )

        self._mf = _File(FID_MF)
        info = self._mf.add(_File(FID_DF_CARD))
        info.add(_File(FID_EF_CARD_NUMBER, card_number.encode("ascii")))
        info.add(_File(FID_EF_VERSION, VERSION_GEN1.ljust(VERSION_EF_SIZE, b"\x00")))
        p15 = self._mf.add(_File(FID_DF_PKCS15))
        if with_cdf:
            ef = _directory_ef(self._cdf_content) if cdf_ef is None else bytes(cdf_ef)
            p15.add(_File(FID_EF_CDF, ef))
        if with_token_info:
            p15.add(_File(FID_EF_TOKEN_INFO, _token_info(card_number)))
        p15.add(_File(FID_EF_CERTIFICATES, _certificate_ef(self._certificates, self._placements)))

        self._current_df: _File | None = None
        self._current_ef: _File | None = None

    # -- construction from a JSON card image --------------------------------------------------

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], base_dir: Path) -> MoicaGen1Card:
        """Build a card from a JSON card image.

        ``{"type": "moica-gen1", "cardNumber": "TP03000000000001",
        "certificates": ["ca.der", "sign.der"], "atr": "3BB8..." (optional)}``; certificate
        paths are relative to ``base_dir``, the JSON file's directory.
        """
        if spec.get("type") != KIND:
            raise ValueError(f"card image type must be {KIND!r}, got {spec.get('type')!r}")
        number = spec.get("cardNumber")
        if not isinstance(number, str):
            raise ValueError("cardNumber must be a string")
        names = spec.get("certificates")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("certificates must be a list of file names")
        certificates = [(base_dir / name).read_bytes() for name in names]
        atr_hex = spec.get("atr")
        if atr_hex is None:
            return cls(number, certificates)
        if not isinstance(atr_hex, str):
            raise ValueError("atr must be a hex string")
        return cls(number, certificates, atr=bytes.fromhex(atr_hex))

    @classmethod
    def from_file(cls, path: Path) -> MoicaGen1Card:
        """Load a JSON card image (see :meth:`from_spec`)."""
        spec = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(spec, dict):
            raise ValueError("card image must be a JSON object")
        return cls.from_spec(spec, path.parent)

    # -- what tests may inspect ---------------------------------------------------------------

    @property
    def card_number(self) -> str:
        return self._card_number

    @property
    def certificates(self) -> list[bytes]:
        return list(self._certificates)

    @property
    def placements(self) -> list[CertificatePlacement]:
        return list(self._placements)

    @property
    def cdf_content(self) -> bytes:
        """The CDF content without padding and trailer."""
        return self._cdf_content

    def file_bytes(self, *path: int) -> bytes:
        """The whole content of the EF at ``path`` (FIDs from, but not including, 3F00)."""
        node = self._mf
        for fid in path:
            node = node.children[fid]
        if node.data is None:
            raise KeyError("not an EF")
        return node.data

    # -- VirtualCard --------------------------------------------------------------------------

    @property
    def atr(self) -> bytes:
        return self._atr

    def power_on(self) -> None:
        self._current_df = None
        self._current_ef = None

    def process(self, apdu: bytes) -> bytes:
        if len(apdu) < 4:
            return sw(SW_WRONG_LENGTH)
        cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
        if cla != CLA_PROPRIETARY:
            return sw(SW_CLA_NOT_SUPPORTED)
        body = apdu[4:]
        if ins == INS_SELECT:
            return self._select(p1, p2, body)
        if ins == INS_READ_BINARY:
            return self._read_binary(p1, p2, body)
        return sw(SW_INS_NOT_SUPPORTED)

    def _select(self, p1: int, p2: int, body: bytes) -> bytes:
        if (p1, p2) != (0x00, 0x00):
            return sw(SW_INCORRECT_P1P2)
        # Lc=2 and the FID, optionally followed by an Le byte that is ignored (no FCI anyway).
        if len(body) not in (3, 4) or body[0] != 2:
            return sw(SW_WRONG_LENGTH)
        fid = int.from_bytes(body[1:3], "big")
        if fid == FID_MF:
            self._current_df, self._current_ef = self._mf, None
            return sw(SW_OK)
        target = self._current_df.children.get(fid) if self._current_df is not None else None
        if target is None:
            return sw(SW_FILE_NOT_FOUND)
        if target.is_df:
            self._current_df, self._current_ef = target, None
        else:
            self._current_ef = target
        return sw(SW_OK)

    def _read_binary(self, p1: int, p2: int, body: bytes) -> bytes:
        if p1 & 0x80:
            return sw(SW_INCORRECT_P1P2)
        # Case 2 only: exactly one Le byte; 0 would mean 256, above the card's chunk limit.
        if len(body) != 1 or not 1 <= body[0] <= MAX_READ:
            return sw(SW_WRONG_LENGTH)
        if self._current_ef is None or self._current_ef.data is None:
            return sw(SW_NO_CURRENT_EF)
        data = self._current_ef.data
        offset = (p1 << 8) | p2
        if offset >= len(data):
            return sw(SW_WRONG_OFFSET)
        chunk = data[offset : offset + body[0]]
        return chunk + sw(SW_OK if len(chunk) == body[0] else SW_END_OF_FILE)


# -- file contents ---------------------------------------------------------------------------


def _place(certificates: Sequence[bytes]) -> list[CertificatePlacement]:
    """Put certificates at the real-card slots; an oversized one pushes the rest along."""
    placements: list[CertificatePlacement] = []
    seen_ids: set[bytes] = set()
    end = 0
    for index, cert in enumerate(certificates):
        slot = CERTIFICATE_SLOTS[index] if index < len(CERTIFICATE_SLOTS) else 0
        offset = max(slot, _align(end, SLOT_ALIGNMENT))
        if offset + len(cert) > MAX_OFFSET + 1:
            raise ValueError("certificates do not fit in EF 08F2's 15-bit offsets")
        object_id, authority = _classify(cert, index)
        while object_id in seen_ids:  # two certificates of one kind: keep iDs unique
            object_id += b"2"
        seen_ids.add(object_id)
        placements.append(CertificatePlacement(offset, len(cert), object_id, authority))
        end = offset + len(cert)
    return placements


def _certificate_ef(
    certificates: Sequence[bytes], placements: Sequence[CertificatePlacement]
) -> bytes:
    # At least the four real-card slots, so an empty fourth slot reads as zeros, not 6B 00.
    end = max(p.offset + p.length for p in placements)
    size = max(CERTIFICATE_SLOTS[-1] + 0x700, _align(end, SLOT_ALIGNMENT))
    ef = bytearray(size)
    for cert, placement in zip(certificates, placements, strict=True):
        ef[placement.offset : placement.offset + placement.length] = cert
    return bytes(ef)


def _directory_ef(content: bytes) -> bytes:
    """Content, zero padding (at least one byte) and the content length LE (moica.md §3.2)."""
    if len(content) > 0xFFFF:
        raise ValueError("directory content too long")
    size = _align(len(content) + 3, DIRECTORY_ALLOCATION)
    return content + bytes(size - len(content) - 2) + len(content).to_bytes(2, "little")


def _token_info(card_number: str) -> bytes:
    """A minimal PKCS#15 TokenInfo: version 0, serialNumber, manufacturerID, [0] label, flags."""
    return _tlv(
        0x30,
        _tlv(0x02, b"\x00")
        + _tlv(0x04, card_number.encode("ascii"))
        + _tlv(0x0C, b"cardd virtual card")
        + _tlv(0x80, b"MOICA TEST")
        + _tlv(0x03, b"\x07\x80"),  # tokenflags: readOnly
    )


def _build_cdf(certificates: Sequence[bytes], placements: Sequence[CertificatePlacement]) -> bytes:
    path = (
        FID_MF.to_bytes(2, "big")
        + FID_DF_PKCS15.to_bytes(2, "big")
        + FID_EF_CERTIFICATES.to_bytes(2, "big")
    )
    out = b""
    for cert, placement in zip(certificates, placements, strict=True):
        path_der = _tlv(
            0x30,
            _tlv(0x04, path)
            + _tlv(0x02, _uint(placement.offset))
            + _tlv(0x80, _uint(placement.length)),
        )
        x509_attributes = path_der + _certificate_names(cert)
        common_object = _tlv(0x30, _tlv(0x0C, placement.object_id))
        common_certificate = _tlv(
            0x30,
            _tlv(0x04, placement.object_id) + (_tlv(0x01, b"\xff") if placement.authority else b""),
        )
        out += _tlv(
            0x30, common_object + common_certificate + _tlv(0xA1, _tlv(0x30, x509_attributes))
        )
    return out


def _certificate_names(cert: bytes) -> bytes:
    """subject, [0] issuer and serialNumber for X509CertificateAttributes; empty if unparsable."""
    parsed = _parse(cert)
    if parsed is None:
        return b""
    return (
        parsed.subject.public_bytes()
        + _tlv(0xA0, parsed.issuer.public_bytes())
        + _tlv(0x02, _sint(parsed.serial_number))
    )


def _classify(cert: bytes, index: int) -> tuple[bytes, bool]:
    """The PKCS#15 iD and authority flag a real card would give this certificate."""
    parsed = _parse(cert)
    if parsed is None:
        return b"CERT%d" % index, False
    try:
        is_ca = parsed.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        return (ID_ROOT_CA if parsed.subject == parsed.issuer else ID_CA), True
    try:
        usage = parsed.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return b"CERT%d" % index, False
    if usage.digital_signature:
        return ID_SIGN, False
    if usage.key_encipherment:
        return ID_KEYX, False
    return b"CERT%d" % index, False


def _parse(cert: bytes) -> x509.Certificate | None:
    # Garbage "certificates" are allowed on purpose (reader error tests); they get Path-only
    # CDF entries instead of failing the card.
    try:
        return x509.load_der_x509_certificate(cert)
    except ValueError:
        return None


# -- DER helpers -----------------------------------------------------------------------------


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        length = bytes((n,))
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes((0x80 | len(raw),)) + raw
    return bytes((tag,)) + length + value


def _uint(value: int) -> bytes:
    """A non-negative INTEGER's content octets (minimal, with a 00 if the top bit is set)."""
    return value.to_bytes(value.bit_length() // 8 + 1, "big")


def _sint(value: int) -> bytes:
    return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)


def _align(value: int, step: int) -> int:
    return -(-value // step) * step
