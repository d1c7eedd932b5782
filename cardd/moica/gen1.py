# SPDX-License-Identifier: Apache-2.0
"""Reading a MOICA gen1 card's public data (card number, certificates) without a PIN.

Gen1 cards (HiCOS "T7S", ``CHT V32N``) answer plain SELECT / READ BINARY with CLA ``80``
(moica.md §3). This module sends nothing else: no VERIFY, no signing (that goes through PKCS#11,
moica.md §4), so it can never use up a PIN retry.

APDU economy. The session remembers what it selected and sends only the SELECTs a file needs
(none for the file already selected, one for a sibling EF), reads certificates in 200-byte chunks
with Le equal to exactly what is left, and never reads a certificate's header separately. Reading
the certificates through the CDF costs, from a fresh session::

    3 (SELECT 3F00, 5030, 4104)
    + ceil((CDF content + 1) / 200)    -- the card gives no file size, so the CDF is read until
                                          the first padding byte after its last record
    + 1 (SELECT 08F2)
    + sum(ceil(certificate length / 200))

The offset fallback (no usable CDF) costs the SELECTs, ``sum(ceil(len / 200))`` and one probe
read of the first empty slot when the card holds fewer than four certificates.

The session assumes it has the card to itself (an exclusive PC/SC connection) because it trusts
its own idea of the current file; call :meth:`MoicaGen1Session.forget_selection` after anything
else may have touched the card (a reset, a reconnect).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cardd.errors import ApduError, CardDataInvalid
from cardd.readers.transport import Apdu, SmartCardConnection, transceive

logger = logging.getLogger(__name__)

CLA_GEN1 = 0x80
INS_SELECT = 0xA4
INS_READ_BINARY = 0xB0

FID_MF = 0x3F00
FID_DF_CARD = 0x0900
FID_EF_CARD_NUMBER = 0x0903
FID_EF_VERSION = 0x0905
FID_DF_PKCS15 = 0x5030
FID_EF_CDF = 0x4104
FID_EF_CERTIFICATES = 0x08F2

#: A file path as FIDs from the MF, the MF included.
FilePath = tuple[int, ...]

PATH_CARD_NUMBER: FilePath = (FID_MF, FID_DF_CARD, FID_EF_CARD_NUMBER)
PATH_VERSION: FilePath = (FID_MF, FID_DF_CARD, FID_EF_VERSION)
PATH_PKCS15_DF: FilePath = (FID_MF, FID_DF_PKCS15)
PATH_CDF: FilePath = (*PATH_PKCS15_DF, FID_EF_CDF)
PATH_CERTIFICATES: FilePath = (*PATH_PKCS15_DF, FID_EF_CERTIFICATES)

#: The vendor library reads at most 0xC8 bytes per READ BINARY; the card may refuse more.
MAX_CHUNK = 0xC8
#: P1 bit 8 means short-EF addressing, so READ BINARY offsets are 15 bits.
MAX_OFFSET = 0x7FFF
CARD_NUMBER_LENGTH = 16
#: Orson Wang's CDCScript reads the version EF with Le=0x14; the text is the first 8 bytes.
VERSION_READ_LENGTH = 0x14
VERSION_GEN1 = b"CHT V32N"
#: Where real cards keep their certificates in 08F2 (moica.md §3.3); used only without a CDF.
KNOWN_CERTIFICATE_OFFSETS = (0x0000, 0x0700, 0x0E00, 0x1500)
#: If a certificate overflows its slot, the next one is assumed at the next boundary of this.
SLOT_ALIGNMENT = 0x100
#: A real CDF is well under 2 KiB; stop reading (and call it garbage) well beyond that.
MAX_DIRECTORY_SIZE = 0x2000

SW_OK = 0x9000
SW_END_OF_FILE = 0x6282
SW_FILE_NOT_FOUND = 0x6A82
SW_WRONG_OFFSET = 0x6B00

_TAG_BOOLEAN = 0x01
_TAG_INTEGER = 0x02
_TAG_OCTET_STRING = 0x04
_TAG_UTF8_STRING = 0x0C
_TAG_PRINTABLE_STRING = 0x13
_TAG_IA5_STRING = 0x16
_TAG_SEQUENCE = 0x30
_TAG_CONTEXT_0_PRIMITIVE = 0x80
_TAG_CONTEXT_0 = 0xA0
_TAG_CONTEXT_1 = 0xA1
#: CertificateType choices other than x509Certificate: [0] attribute, [1] spki, [2] pgp,
#: [3] wtls, [4] x509-attribute certificates. Skipped, not errors.
_OTHER_CERTIFICATE_TYPES = frozenset({0xA0, 0xA1, 0xA2, 0xA3, 0xA4})
#: Bytes that end a PKCS#15 directory's record sequence.
_PADDING = frozenset({0x00, 0xFF})


class _Truncated(CardDataInvalid):
    """A DER element runs past the bytes read so far (more may be on the card)."""


@dataclass(frozen=True)
class CertificateLocation:
    """One certificate's place on the card, from a CDF ``X509CertificateAttributes`` Path."""

    #: FIDs from the MF, e.g. ``(0x3F00, 0x5030, 0x08F2)``.
    path: FilePath
    #: The Path's index: the certificate's offset inside the EF.
    offset: int
    #: The Path's length, or None when the CDF gives none (the DER header then says).
    length: int | None
    #: CommonCertificateAttributes.iD, e.g. ``b"SIGN"`` on real cards.
    object_id: bytes = b""
    #: CommonObjectAttributes.label, if present.
    label: str | None = None
    #: CommonCertificateAttributes.authority (a CA certificate).
    authority: bool = False

    @property
    def path_hex(self) -> str:
        return "".join(f"{fid:04X}" for fid in self.path)


@dataclass(frozen=True)
class MoicaGen1PublicData:
    """Everything public a gen1 card gives without a PIN."""

    card_number: str
    #: DER certificates in CDF order (or slot order without a CDF).
    certificates: tuple[bytes, ...]
    #: False if the CDF was missing or unusable and the known offsets were read instead.
    from_directory: bool


class MoicaGen1Session:
    """Public-data reader for a MOICA gen1 card on one connection.

    Sends no APDU until a method is called. Not thread-safe: one reader worker thread owns it.
    """

    def __init__(self, connection: SmartCardConnection) -> None:
        self._connection = connection
        # What the card has selected, as far as this session knows. None: unknown, so the next
        # selection starts at the MF.
        self._current_df: FilePath | None = None
        self._current_ef: int | None = None

    # -- public API ---------------------------------------------------------------------------

    def read_card_number(self) -> str:
        """The card number from 3F00/0900/0903: 16 ASCII characters, as printed on the card."""
        self._select_ef(PATH_CARD_NUMBER)
        data, _ = self._read_binary(0, CARD_NUMBER_LENGTH)
        return _parse_card_number(data)

    def read_version(self) -> bytes:
        """The version string from 3F00/0900/0905 without its padding, e.g. ``b"CHT V32N"``."""
        self._select_ef(PATH_VERSION)
        data, _ = self._read_binary(0, VERSION_READ_LENGTH)
        return data.rstrip(b"\x00\xff")

    def read_certificate_directory(self) -> list[CertificateLocation]:
        """Read and parse the CDF (3F00/5030/4104).

        :raises ApduError: the CDF cannot be selected or read (``6A 82`` if the card has none).
        :raises CardDataInvalid: the CDF is not a PKCS#15 certificate directory.
        """
        return parse_certificate_directory(self._read_directory(PATH_CDF))

    def read_certificate(self, location: CertificateLocation) -> bytes:
        """Read the DER certificate at ``location``."""
        self._select_ef(location.path)
        if location.length is None:
            cert = self._read_der_sequence(location.offset)
            if cert is None:
                raise CardDataInvalid("no certificate where the CDF points")
            return cert
        data = self._read_range(location.offset, location.length)
        return _trim_to_sequence(data, location.length)

    def read_certificates(self) -> list[bytes]:
        """All certificates, located through the CDF, or at the known offsets without one."""
        return list(self._read_certificates()[0])

    def read_public_data(self) -> MoicaGen1PublicData:
        """Card number and certificates in one go."""
        card_number = self.read_card_number()
        certificates, from_directory = self._read_certificates()
        return MoicaGen1PublicData(card_number, certificates, from_directory)

    def forget_selection(self) -> None:
        """Make the next read start its selection from the MF (after a reset or reconnect)."""
        self._current_df = None
        self._current_ef = None

    # -- certificates -------------------------------------------------------------------------

    def _read_certificates(self) -> tuple[tuple[bytes, ...], bool]:
        try:
            locations = self.read_certificate_directory()
        except (ApduError, CardDataInvalid) as exc:
            # The CDF is the authority (moica.md §3.3), but the offsets are stable enough on
            # real cards to be worth a try; the chain check later judges what we read.
            logger.warning("MOICA gen1: no usable CDF (%s); reading the known offsets", exc.code)
            return self._read_known_offsets(), False
        return tuple(self.read_certificate(location) for location in locations), True

    def _read_known_offsets(self) -> tuple[bytes, ...]:
        self._select_ef(PATH_CERTIFICATES)
        certificates: list[bytes] = []
        end = 0
        for slot in KNOWN_CERTIFICATE_OFFSETS:
            # A certificate that overflowed its slot pushes the next one to the next boundary.
            offset = max(slot, _align(end, SLOT_ALIGNMENT))
            if offset > MAX_OFFSET:
                break
            cert = self._read_der_sequence(offset)
            if cert is None:  # an empty slot: real cards fill the slots in order
                break
            certificates.append(cert)
            end = offset + len(cert)
        if not certificates:
            raise CardDataInvalid("no certificates at the known offsets of EF 08F2")
        return tuple(certificates)

    def _read_der_sequence(self, offset: int) -> bytes | None:
        """Read the DER SEQUENCE starting at ``offset``; None if no SEQUENCE starts there.

        The first READ asks for a full 200 bytes rather than the 4-byte ``30 82 LL LL`` header:
        it is one APDU either way, and the bytes after the header are the certificate's first
        chunk, so the header costs no APDU of its own.
        """
        first, at_end = self._read_binary(offset, _chunk(offset, MAX_CHUNK), eof_ok=True)
        if len(first) < 2 or first[0] != _TAG_SEQUENCE:
            return None
        try:
            _, value_start, length = _header_at(first, 0)
        except _Truncated:
            raise CardDataInvalid("certificate header runs past the end of the file") from None
        except CardDataInvalid:
            return None  # not DER: treat like an empty slot
        value_end = value_start + length
        if length == 0 or offset + value_end > MAX_OFFSET + 1:
            return None
        if value_end <= len(first):
            return first[:value_end]
        if at_end:
            raise CardDataInvalid("certificate runs past the end of the file")
        return first + self._read_range(offset + len(first), value_end - len(first))

    # -- directory EFs ------------------------------------------------------------------------

    def _read_directory(self, path: FilePath) -> bytes:
        """A PKCS#15 directory EF's content (its records, without padding and trailer).

        SELECT returns no size, so read forward until the record sequence ends on a padding byte
        ([OH] does the same). If the EF ends first, its last 2 bytes are the content length,
        little-endian (moica.md §3.2).
        """
        self._select_ef(path)
        buf = b""
        at_end = False
        while not at_end:
            data, at_end = self._read_binary(
                len(buf), _chunk(len(buf), MAX_CHUNK), eof_ok=bool(buf)
            )
            buf += data
            end = _records_end(buf)
            if end is not None:
                return buf[:end]
            if len(buf) >= MAX_DIRECTORY_SIZE:
                raise CardDataInvalid("directory file too large")
        if len(buf) < 2:
            raise CardDataInvalid("directory file too short")
        content_length = int.from_bytes(buf[-2:], "little")
        if content_length > len(buf) - 2:
            raise CardDataInvalid("directory length trailer out of range")
        return buf[:content_length]

    # -- APDUs --------------------------------------------------------------------------------

    def _select_ef(self, path: FilePath) -> None:
        """Select the EF at ``path`` with as few SELECTs as the current selection allows."""
        if len(path) < 2 or path[0] != FID_MF:
            raise ValueError("path must start at the MF and end at an EF")
        df, ef = path[:-1], path[-1]
        if self._current_df == df and self._current_ef == ef:
            return
        if self._current_df is not None and df[: len(self._current_df)] == self._current_df:
            # Children of the current DF (an EF's siblings included) are selectable directly.
            steps = path[len(self._current_df) :]
            base = self._current_df
        else:
            steps = path
            base = ()
        for fid in steps[:-1]:
            self._select(fid)
            base = (*base, fid)
            self._current_df, self._current_ef = base, None
        self._select(steps[-1])
        self._current_ef = ef

    def _select(self, fid: int) -> None:
        apdu = Apdu(CLA_GEN1, INS_SELECT, 0x00, 0x00, fid.to_bytes(2, "big"))
        try:
            data, sw = transceive(self._connection, apdu)
        except BaseException:
            self.forget_selection()
            raise
        if sw != SW_OK:
            # A failed SELECT leaves the current file as it was (ISO 7816-4), so "not found"
            # keeps our view; anything stranger and we no longer know where the card is.
            if sw != SW_FILE_NOT_FOUND:
                self.forget_selection()
            raise ApduError(sw, data)

    def _read_binary(self, offset: int, length: int, *, eof_ok: bool = False) -> tuple[bytes, bool]:
        """One READ BINARY; returns (data, reached the end of the EF).

        ``62 82`` and a short answer mean the end of the EF. With ``eof_ok``, ``6B 00`` (offset
        past the end) is the end too, returned as no data.
        """
        if not 1 <= length <= MAX_CHUNK or not 0 <= offset <= MAX_OFFSET:
            raise ValueError("READ BINARY offset or length out of range")
        apdu = Apdu(CLA_GEN1, INS_READ_BINARY, offset >> 8, offset & 0xFF, le=length)
        try:
            data, sw = transceive(self._connection, apdu)
        except BaseException:
            self.forget_selection()
            raise
        if sw == SW_OK or sw == SW_END_OF_FILE:
            if len(data) > length:
                raise CardDataInvalid("card returned more bytes than asked for")
            return data, sw == SW_END_OF_FILE or len(data) < length
        if sw == SW_WRONG_OFFSET and eof_ok:
            return b"", True
        # E.g. 69 86 if what we took for an EF was a DF: stop trusting our idea of the selection.
        self.forget_selection()
        raise ApduError(sw, data)

    def _read_range(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes from ``offset`` in chunks of at most 200."""
        if length < 1 or offset < 0 or offset + length > MAX_OFFSET + 1:
            raise CardDataInvalid("certificate location out of range")
        out = b""
        while len(out) < length:
            data, at_end = self._read_binary(len(out) + offset, min(MAX_CHUNK, length - len(out)))
            out += data
            if at_end and len(out) < length:
                raise CardDataInvalid("file ends before the certificate does")
        return out


# -- parsing (pure functions) ------------------------------------------------------------------


def parse_certificate_directory(content: bytes) -> list[CertificateLocation]:
    """Parse PKCS#15 CDF content into certificate locations.

    Accepts the real-card form: a sequence of untagged ``x509Certificate`` objects, each
    ``SEQUENCE { CommonObjectAttributes, CommonCertificateAttributes, [0] subclass OPTIONAL,
    [1] { X509CertificateAttributes { Path, ... } } }`` with
    ``Path ::= SEQUENCE { OCTET STRING path, INTEGER index, [0] IMPLICIT INTEGER length }``.
    Other certificate types and non-Path values are skipped. A path not starting at ``3F00`` is
    taken relative to the PKCS#15 DF 5030.

    :raises CardDataInvalid: malformed DER, or no certificate found.
    """
    locations: list[CertificateLocation] = []
    pos = 0
    try:
        while pos < len(content) and content[pos] not in _PADDING:
            tag, start, end = _tlv_at(content, pos, len(content))
            if tag == _TAG_SEQUENCE:
                location = _parse_x509_object(content, start, end)
                if location is not None:
                    locations.append(location)
            elif tag not in _OTHER_CERTIFICATE_TYPES:
                raise CardDataInvalid(f"unexpected tag {tag:02X} in the certificate directory")
            pos = end
    except _Truncated:
        raise CardDataInvalid("certificate directory is truncated") from None
    if not locations:
        raise CardDataInvalid("certificate directory lists no certificates")
    return locations


def _parse_x509_object(buf: bytes, start: int, end: int) -> CertificateLocation | None:
    children = _children(buf, start, end)
    if len(children) < 3 or children[0][0] != _TAG_SEQUENCE or children[1][0] != _TAG_SEQUENCE:
        raise CardDataInvalid("certificate object lacks its common attributes")
    label = _parse_label(buf, children[0])
    object_id, authority = _parse_certificate_attributes(buf, children[1])
    type_attributes = next((c for c in children[2:] if c[0] == _TAG_CONTEXT_1), None)
    if type_attributes is None:
        raise CardDataInvalid("certificate object lacks its type attributes")
    inner = _children(buf, type_attributes[1], type_attributes[2])
    if not inner or inner[0][0] != _TAG_SEQUENCE:
        raise CardDataInvalid("certificate object lacks X509CertificateAttributes")
    attributes = _children(buf, inner[0][1], inner[0][2])
    if attributes and attributes[0][0] == _TAG_OCTET_STRING:
        path_element = inner[0]  # a bare Path where X509CertificateAttributes belongs: tolerate
    elif attributes and attributes[0][0] == _TAG_SEQUENCE:
        path_element = attributes[0]
    else:
        # A direct value or a URL: nothing to read from the card. Real gen1 cards use Paths.
        logger.debug("MOICA gen1: skipping a CDF entry whose value is not a Path")
        return None
    path, offset, length = _parse_path(buf, path_element)
    return CertificateLocation(path, offset, length, object_id, label, authority)


def _parse_label(buf: bytes, element: tuple[int, int, int]) -> str | None:
    for tag, start, end in _children(buf, element[1], element[2]):
        if tag in (_TAG_UTF8_STRING, _TAG_PRINTABLE_STRING, _TAG_IA5_STRING):
            return buf[start:end].decode("utf-8", errors="replace")
    return None


def _parse_certificate_attributes(buf: bytes, element: tuple[int, int, int]) -> tuple[bytes, bool]:
    children = _children(buf, element[1], element[2])
    if not children or children[0][0] != _TAG_OCTET_STRING:
        raise CardDataInvalid("certificate object lacks its iD")
    object_id = buf[children[0][1] : children[0][2]]
    authority = False
    if len(children) > 1 and children[1][0] == _TAG_BOOLEAN:
        value = buf[children[1][1] : children[1][2]]
        if len(value) != 1:
            raise CardDataInvalid("malformed authority flag")
        authority = value != b"\x00"
    return object_id, authority


def _parse_path(buf: bytes, element: tuple[int, int, int]) -> tuple[FilePath, int, int | None]:
    children = _children(buf, element[1], element[2])
    if not children or children[0][0] != _TAG_OCTET_STRING:
        raise CardDataInvalid("certificate Path lacks its file path")
    raw = buf[children[0][1] : children[0][2]]
    if not raw or len(raw) % 2 or len(raw) > 16:
        raise CardDataInvalid("certificate Path has a malformed file path")
    fids = tuple(int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2))
    path = fids if fids[0] == FID_MF else (*PATH_PKCS15_DF, *fids)
    if len(path) < 2:
        raise CardDataInvalid("certificate Path names no EF")
    offset = 0
    length: int | None = None
    for tag, start, end in children[1:]:
        if tag == _TAG_INTEGER:
            offset = _parse_uint(buf[start:end])
        elif tag == _TAG_CONTEXT_0_PRIMITIVE:
            length = _parse_uint(buf[start:end])
    if offset > MAX_OFFSET:
        raise CardDataInvalid("certificate Path index out of range")
    if length is not None and not 0 < length <= MAX_OFFSET + 1 - offset:
        raise CardDataInvalid("certificate Path length out of range")
    return path, offset, length


def _parse_uint(value: bytes) -> int:
    if not value or len(value) > 4 or value[0] & 0x80:
        raise CardDataInvalid("malformed INTEGER in the certificate directory")
    return int.from_bytes(value, "big")


def _parse_card_number(data: bytes) -> str:
    # Tolerate padding in case a card's number is shorter than the EF; real ones fill it.
    text = data.rstrip(b"\x00\xff ")
    if not text or not text.isascii() or not text.isalnum():
        raise CardDataInvalid("card number is not ASCII letters and digits")
    return text.decode("ascii")


def _trim_to_sequence(data: bytes, length: int) -> bytes:
    """Check that ``data`` holds one DER SEQUENCE; drop bytes after it (a generous length)."""
    try:
        tag, _, end = _tlv_at(data, 0, len(data))
    except _Truncated:
        raise CardDataInvalid("certificate longer than the CDF says") from None
    if tag != _TAG_SEQUENCE:
        raise CardDataInvalid("no certificate where the CDF points")
    return data[:end] if end < length else data


# -- a small DER reader ------------------------------------------------------------------------


def _header_at(buf: bytes, pos: int) -> tuple[int, int, int]:
    """Decode the DER header at ``pos``: (tag, value start, value length).

    Single-byte tags and definite lengths of up to 3 bytes only, which is all PKCS#15
    directories and certificates need. Raises :class:`_Truncated` if ``buf`` ends inside the
    header, :class:`CardDataInvalid` if it is malformed.
    """
    if pos + 2 > len(buf):
        raise _Truncated("DER header truncated")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise CardDataInvalid("multi-byte DER tag")
    first = buf[pos + 1]
    if first < 0x80:
        return tag, pos + 2, first
    count = first & 0x7F
    if count == 0 or count > 3:
        raise CardDataInvalid("unsupported DER length")
    value_start = pos + 2 + count
    if value_start > len(buf):
        raise _Truncated("DER length truncated")
    return tag, value_start, int.from_bytes(buf[pos + 2 : value_start], "big")


def _tlv_at(buf: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    """Decode the TLV at ``pos``: (tag, value start, value end).

    Raises :class:`_Truncated` when the element runs past ``len(buf)`` but would fit within
    ``limit``, :class:`CardDataInvalid` when it is malformed or runs past ``limit``.
    """
    tag, value_start, length = _header_at(buf, pos)
    value_end = value_start + length
    if value_end > limit:
        raise CardDataInvalid("DER element longer than its container")
    if value_end > len(buf):
        raise _Truncated("DER value truncated")
    return tag, value_start, value_end


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """The TLVs filling ``buf[start:end]`` exactly."""
    out: list[tuple[int, int, int]] = []
    pos = start
    view = buf[:end]
    try:
        while pos < end:
            element = _tlv_at(view, pos, end)
            out.append(element)
            pos = element[2]
    except _Truncated:
        raise CardDataInvalid("DER element longer than its container") from None
    return out


def _records_end(buf: bytes) -> int | None:
    """Where a directory's record sequence ends (its first padding byte), or None if ``buf``
    ends before that is known.

    :raises CardDataInvalid: the bytes are not DER, or a record would end past
        :data:`MAX_DIRECTORY_SIZE`.
    """
    pos = 0
    while pos < len(buf):
        if buf[pos] in _PADDING:
            return pos
        try:
            _, _, pos = _tlv_at(buf, pos, MAX_DIRECTORY_SIZE)
        except _Truncated:
            return None
    return None


def _chunk(offset: int, want: int) -> int:
    # Stay within the 15-bit offset space on the last chunk.
    return max(1, min(want, MAX_OFFSET + 1 - offset))


def _align(value: int, step: int) -> int:
    return -(-value // step) * step
