# SPDX-License-Identifier: Apache-2.0
"""MOICA gen1: the virtual card model, the reader session against it, and the test PKI fixtures.

APDU counts. The card gives no file sizes, so the minimum for reading every certificate through
the CDF from a fresh session is::

    3 SELECTs (3F00, 5030, 4104) + ceil((CDF content + 1) / 200) READs (the +1 is the padding
    byte that shows the records have ended) + 1 SELECT (08F2) + sum(ceil(cert length / 200))

and without a CDF (offset fallback)::

    3 SELECTs (3F00, 5030, 4104 -> 6A 82) + 1 SELECT (08F2) + sum(ceil(cert length / 200))
    + 1 READ probing the first empty slot (fewer than 4 certificates)

The certificate header costs nothing extra: the first 200-byte chunk contains it.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cardd.errors import ApduError, CardError
from cardd.moica.gen1 import (
    KNOWN_CERTIFICATE_OFFSETS,
    CardDataInvalid,
    CertificateLocation,
    MoicaGen1Session,
    parse_certificate_directory,
)
from cardd.readers.transport import SmartCardConnection
from cardd.sim.cards.base import VirtualCard
from cardd.sim.cards.moica import ATR_GEN1, MoicaGen1Card
from cardd.sim.testpki import (
    OID_SUBJECT_ID_LAST4,
    PkiEndpoints,
    Validity,
    make_citizen,
    make_test_pki,
    subject_directory_attributes,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "moica"
CHUNK = 200


class VirtualCardConnection:
    """SmartCardConnection straight onto a virtual card's process(), counting APDUs."""

    def __init__(self, card: VirtualCard) -> None:
        self.card = card
        self.apdus: list[bytes] = []
        card.power_on()

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.apdus.append(bytes(apdu))
        response = self.card.process(bytes(apdu))
        return response[:-2], int.from_bytes(response[-2:], "big")

    def close(self) -> None:
        pass

    def reads(self) -> list[bytes]:
        return [a for a in self.apdus if a[1] == 0xB0]

    def selects(self) -> list[int]:
        return [int.from_bytes(a[5:7], "big") for a in self.apdus if a[1] == 0xA4]


def ceil_chunks(length: int) -> int:
    return math.ceil(length / CHUNK)


def der_blob(total: int, fill: int = 0x5A) -> bytes:
    """A DER SEQUENCE of ``total`` bytes (readers do not parse certificates, only slice them)."""
    assert total > 260
    return b"\x30\x82" + (total - 4).to_bytes(2, "big") + bytes([fill]) * (total - 4)


@pytest.fixture(scope="module")
def card_spec() -> dict[str, object]:
    return json.loads((FIXTURES / "card.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def fixture_certs(card_spec: dict[str, object]) -> list[bytes]:
    names = card_spec["certificates"]
    assert isinstance(names, list)
    return [(FIXTURES / name).read_bytes() for name in names]


@pytest.fixture
def card() -> MoicaGen1Card:
    return MoicaGen1Card.from_file(FIXTURES / "card.json")


@pytest.fixture
def conn(card: MoicaGen1Card) -> VirtualCardConnection:
    return VirtualCardConnection(card)


def cdf_entry(
    object_id: bytes,
    path: bytes,
    index: int,
    length: int | None,
    label: bytes | None = None,
    *,
    authority: bool = False,
) -> bytes:
    """One x509Certificate CDF record in the real-card form (short lengths only)."""

    def tlv(tag: int, value: bytes) -> bytes:
        assert len(value) < 0x80
        return bytes([tag, len(value)]) + value

    def uint(value: int) -> bytes:
        return value.to_bytes(value.bit_length() // 8 + 1, "big")

    path_der = tlv(0x04, path) + tlv(0x02, uint(index))
    if length is not None:
        path_der += tlv(0x80, uint(length))
    common_object = tlv(0x30, tlv(0x0C, label) if label is not None else b"")
    flag = tlv(0x01, b"\xff") if authority else b""
    common_certificate = tlv(0x30, tlv(0x04, object_id) + flag)
    return tlv(0x30, common_object + common_certificate + tlv(0xA1, tlv(0x30, tlv(0x30, path_der))))


def cdf_minimum(card: MoicaGen1Card) -> int:
    certs = card.certificates
    return 3 + ceil_chunks(len(card.cdf_content) + 1) + 1 + sum(ceil_chunks(len(c)) for c in certs)


# -- reading through the session ----------------------------------------------------------------


def test_adapter_satisfies_protocols(conn: VirtualCardConnection, card: MoicaGen1Card) -> None:
    assert isinstance(conn, SmartCardConnection)
    assert isinstance(card, VirtualCard)
    assert card.kind == "moica-gen1"
    assert card.atr == bytes.fromhex("3BB813008131FA524348544D4F494341A5") == ATR_GEN1


def test_card_number(conn: VirtualCardConnection, card_spec: dict[str, object]) -> None:
    number = MoicaGen1Session(conn).read_card_number()
    assert number == card_spec["cardNumber"] == "TP03000000000001"
    assert conn.apdus == [
        bytes.fromhex("80A40000023F00"),
        bytes.fromhex("80A40000020900"),
        bytes.fromhex("80A40000020903"),
        bytes.fromhex("80B0000010"),
    ]


def test_version(conn: VirtualCardConnection) -> None:
    session = MoicaGen1Session(conn)
    assert session.read_version() == b"CHT V32N"
    assert conn.apdus[-1] == bytes.fromhex("80B0000014")
    # The card number is a sibling: one SELECT, one READ.
    session.read_card_number()
    assert conn.apdus[-2:] == [bytes.fromhex("80A40000020903"), bytes.fromhex("80B0000010")]


def test_certificates_byte_for_byte(
    conn: VirtualCardConnection, card: MoicaGen1Card, fixture_certs: list[bytes]
) -> None:
    certs = MoicaGen1Session(conn).read_certificates()
    assert certs == fixture_certs
    assert certs == [
        (FIXTURES / name).read_bytes() for name in ("moica_ca.der", "enc.der", "sign.der")
    ]
    # Never anything but SELECT / READ BINARY with CLA 80: no VERIFY, no CLA 00 probing.
    assert all(a[:2] in (b"\x80\xa4", b"\x80\xb0") for a in conn.apdus)
    # Every read is at most 200 bytes.
    assert all(a[4] <= CHUNK for a in conn.reads())


def test_certificate_apdu_count_is_minimal(
    conn: VirtualCardConnection, card: MoicaGen1Card
) -> None:
    MoicaGen1Session(conn).read_certificates()
    assert len(card.cdf_content) > CHUNK  # the CDF really takes several reads
    assert len(conn.apdus) == cdf_minimum(card)
    assert conn.selects() == [0x3F00, 0x5030, 0x4104, 0x08F2]
    # Certificate reads ask for exactly what is left: no byte read twice, none past the end.
    cert_reads = conn.reads()[ceil_chunks(len(card.cdf_content) + 1) :]
    assert sum(a[4] for a in cert_reads) == sum(len(c) for c in card.certificates)


def test_public_data_and_repeat_reads(conn: VirtualCardConnection, card: MoicaGen1Card) -> None:
    session = MoicaGen1Session(conn)
    data = session.read_public_data()
    assert data.card_number == "TP03000000000001"
    assert list(data.certificates) == card.certificates
    assert data.from_directory
    assert len(conn.apdus) == 4 + cdf_minimum(card)
    # A second pass starts from 5030/08F2: the CDF is a sibling, so no MF/DF SELECTs again.
    before = len(conn.apdus)
    assert session.read_certificates() == card.certificates
    assert len(conn.apdus) - before == cdf_minimum(card) - 2


def test_forget_selection_reselects_from_mf(conn: VirtualCardConnection) -> None:
    session = MoicaGen1Session(conn)
    session.read_card_number()
    conn.card.power_on()  # someone reset the card behind the session's back
    session.forget_selection()
    assert session.read_card_number() == "TP03000000000001"
    assert conn.selects()[-3:] == [0x3F00, 0x0900, 0x0903]


def test_certificate_directory(
    conn: VirtualCardConnection, card: MoicaGen1Card, fixture_certs: list[bytes]
) -> None:
    locations = MoicaGen1Session(conn).read_certificate_directory()
    assert [loc.offset for loc in locations] == [0x0000, 0x0700, 0x0E00]
    assert [loc.length for loc in locations] == [len(c) for c in fixture_certs]
    assert {loc.path for loc in locations} == {(0x3F00, 0x5030, 0x08F2)}
    assert locations[0].path_hex == "3F00503008F2"
    # iDs come from key usage, not position: moica_ca, enc, sign.
    assert [loc.object_id for loc in locations] == [b"CACert", b"KEYX", b"SIGN"]
    assert [loc.label for loc in locations] == ["CACert", "KEYX", "SIGN"]
    assert [loc.authority for loc in locations] == [True, False, False]


def test_fallback_without_cdf(fixture_certs: list[bytes]) -> None:
    card = MoicaGen1Card("TP03000000000001", fixture_certs, with_cdf=False)
    conn = VirtualCardConnection(card)
    session = MoicaGen1Session(conn)
    with pytest.raises(ApduError) as info:
        session.read_certificate_directory()
    assert info.value.sw == 0x6A82
    conn.apdus.clear()
    session.forget_selection()
    data = session.read_public_data()
    assert list(data.certificates) == fixture_certs
    assert not data.from_directory
    expected = 4 + 3 + 1 + sum(ceil_chunks(len(c)) for c in fixture_certs) + 1
    assert len(conn.apdus) == expected
    # 6A 82 leaves the card in 5030, so 08F2 needs one SELECT, not three.
    assert conn.selects() == [0x3F00, 0x0900, 0x0903, 0x3F00, 0x5030, 0x4104, 0x08F2]
    # The probe of the empty fourth slot is the last APDU.
    assert conn.apdus[-1][2:4] == (0x1500).to_bytes(2, "big")


@pytest.mark.parametrize("with_cdf", [True, False])
def test_four_certificates_and_oversized_slot(with_cdf: bool) -> None:
    # 0x900 bytes overflow the 0x700 slot: the next one moves to 0x900, the CDF says so, and
    # the fallback follows the same rule.
    certs = [der_blob(0x900, 1), der_blob(0x400, 2), der_blob(0x500, 3), der_blob(0x600, 4)]
    card = MoicaGen1Card("AB12345678901234", certs, with_cdf=with_cdf)
    assert [p.offset for p in card.placements] == [0x0000, 0x0900, 0x0E00, 0x1500]
    conn = VirtualCardConnection(card)
    assert MoicaGen1Session(conn).read_certificates() == certs
    if with_cdf:
        assert len(conn.apdus) == cdf_minimum(card)
    else:  # four certificates: no empty-slot probe
        assert len(conn.apdus) == 4 + sum(ceil_chunks(len(c)) for c in certs)


def test_certificates_beyond_four_via_cdf() -> None:
    certs = [der_blob(0x300 + i, i) for i in range(5)]
    card = MoicaGen1Card("AB12345678901234", certs)
    assert card.placements[4].offset == 0x1900
    assert MoicaGen1Session(VirtualCardConnection(card)).read_certificates() == certs


# -- garbage and errors -------------------------------------------------------------------------

GARBAGE_CDFS = {
    "random": random.Random(1).randbytes(300),
    "wrong-tag": bytes.fromhex("0102030405060708"),
    "sequence-without-attributes": bytes.fromhex("3003020105"),
    "empty": b"",
    "all-ff": b"\xff" * 40,
    "indefinite-length": bytes.fromhex("3080300000"),
    "five-byte-length": bytes.fromhex("3084FFFFFFFF"),
    "huge-length": bytes.fromhex("30837FFFFF"),
    "non-path-value": bytes.fromhex("3014 3000 3003040101 A10B 3009 A007 3005 020100 0000"),
    "odd-path": bytes.fromhex(
        "301B 3000 3003040101 A112 3010 300E 0405 3F00503008 020100 80020100"
    ),
    "negative-index": bytes.fromhex(
        "301C 3000 3003040101 A113 3011 300F 04063F00503008F2 0201FF 80020100"
    ),
    "zero-length": bytes.fromhex(
        "301B 3000 3003040101 A112 3010 300E 04063F00503008F2 020100 800100"
    ),
    "index-too-large": bytes.fromhex(
        "301E 3000 3003040101 A115 3013 3011 04063F00503008F2 0203008000 80020100"
    ),
    "no-iD": bytes.fromhex("301A 3000 3000 A114 3012 3010 04063F00503008F2 02020000 80020100"),
    "no-type-attributes": bytes.fromhex("3009 3000 3003040101 3000"),
    "child-overruns-parent": bytes.fromhex("3008 3000 3010 0404 5030"),
}


@pytest.mark.parametrize("content", GARBAGE_CDFS.values(), ids=GARBAGE_CDFS.keys())
def test_garbage_cdf_is_a_clean_error(content: bytes, fixture_certs: list[bytes]) -> None:
    with pytest.raises(CardDataInvalid) as info:
        parse_certificate_directory(content)
    assert info.value.code == "card_data_invalid"
    assert isinstance(info.value, CardError)

    card = MoicaGen1Card("TP03000000000001", fixture_certs, cdf_content=content)
    conn = VirtualCardConnection(card)
    with pytest.raises(CardDataInvalid):
        MoicaGen1Session(conn).read_certificate_directory()
    assert len(conn.apdus) <= 3 + ceil_chunks(len(card.file_bytes(0x5030, 0x4104)))
    # read_certificates falls back to the known offsets and still gets everything.
    assert MoicaGen1Session(VirtualCardConnection(card)).read_certificates() == fixture_certs


@pytest.mark.parametrize(
    "ef",
    [
        b"",  # empty EF: READ at offset 0 answers 6B 00
        b"\x30",  # one byte, no trailer
        bytes.fromhex("3003020105") + b"\x50\x00",  # trailer claims more than there is
    ],
)
def test_bad_directory_ef(ef: bytes, fixture_certs: list[bytes]) -> None:
    card = MoicaGen1Card("TP03000000000001", fixture_certs, cdf_ef=ef)
    with pytest.raises((CardDataInvalid, ApduError)):
        MoicaGen1Session(VirtualCardConnection(card)).read_certificate_directory()
    assert MoicaGen1Session(VirtualCardConnection(card)).read_certificates() == fixture_certs


def test_directory_without_padding_uses_length_trailer(fixture_certs: list[bytes]) -> None:
    # No padding: records, then bytes that are not records, then the 2-byte LE trailer. Only the
    # trailer says where the records end.
    content = b"".join(
        cdf_entry(b"C%d" % i, bytes.fromhex("3F00503008F2"), offset, len(cert), authority=i == 0)
        for i, (offset, cert) in enumerate(zip(KNOWN_CERTIFICATE_OFFSETS, fixture_certs))
    )
    assert len(content) & 0xFF not in (0x00, 0xFF)  # the trailer must not look like padding
    filler = b"\x04\x00" * 10  # valid DER, but no CDF record: the reader must cut it off
    ef = content + filler + len(content).to_bytes(2, "little")
    card = MoicaGen1Card("TP03000000000001", fixture_certs, cdf_ef=ef)
    conn = VirtualCardConnection(card)
    locations = MoicaGen1Session(conn).read_certificate_directory()
    assert [loc.offset for loc in locations] == [0x0000, 0x0700, 0x0E00]
    assert [loc.authority for loc in locations] == [True, False, False]
    assert len(conn.reads()) == ceil_chunks(len(ef))


def test_parse_real_card_path_form() -> None:
    # The Path from a real card (moica.md §3.3) inside the minimal object around it.
    path = bytes.fromhex("300F 0406 3F00503008F2 020100 80020608")
    x509_attributes = b"\x30" + bytes([len(path)]) + path
    type_attributes = b"\xa1" + bytes([len(x509_attributes)]) + x509_attributes
    common_object = bytes.fromhex("3006 0C04 5349474E")
    common_certificate = bytes.fromhex("3006 0404 5349474E")
    body = common_object + common_certificate + type_attributes
    entry = b"\x30" + bytes([len(body)]) + body
    # Followed by an attribute certificate ([0], skipped) and padding.
    content = entry + bytes.fromhex("A0020500") + b"\x00\x00"
    assert cdf_entry(b"SIGN", bytes.fromhex("3F00503008F2"), 0, 0x0608, b"SIGN") == entry
    assert parse_certificate_directory(content) == [
        CertificateLocation(
            path=(0x3F00, 0x5030, 0x08F2),
            offset=0,
            length=0x0608,
            object_id=b"SIGN",
            label="SIGN",
            authority=False,
        )
    ]


def test_parse_relative_path_without_length_reads_header(fixture_certs: list[bytes]) -> None:
    # Path "08F2" relative to the PKCS#15 DF, index 0x0700, no [0] length.
    content = cdf_entry(b"\x01", bytes.fromhex("08F2"), 0x0700, None)
    assert content == bytes.fromhex("3015 3000 3003040101 A10C 300A 3008 040208F2 02020700")
    (location,) = parse_certificate_directory(content)
    assert location.path == (0x3F00, 0x5030, 0x08F2)
    assert (location.offset, location.length, location.label) == (0x0700, None, None)
    assert not location.authority

    card = MoicaGen1Card("TP03000000000001", fixture_certs, cdf_content=content)
    conn = VirtualCardConnection(card)
    assert MoicaGen1Session(conn).read_certificates() == [fixture_certs[1]]
    assert len(conn.apdus) == 3 + 1 + 1 + ceil_chunks(len(fixture_certs[1]))


def test_parse_truncated_real_cdf(card: MoicaGen1Card) -> None:
    content = card.cdf_content
    assert len(parse_certificate_directory(content)) == 3
    for cut in (1, 50, len(content) // 2, len(content) - 1):
        with pytest.raises(CardDataInvalid):
            parse_certificate_directory(content[:cut])


def test_parse_fuzz_only_clean_errors(card: MoicaGen1Card) -> None:
    rng = random.Random(7)
    real = card.cdf_content
    for _ in range(3000):
        if rng.random() < 0.5:
            data = rng.randbytes(rng.randrange(0, 400))
        else:  # the real CDF with a few bytes flipped: mostly well-formed, subtly wrong
            mutated = bytearray(real)
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            data = bytes(mutated)
        try:
            locations = parse_certificate_directory(data)
        except CardDataInvalid:
            continue
        for location in locations:
            assert 0 <= location.offset <= 0x7FFF
            assert location.length is None or location.offset + location.length <= 0x8000


def test_session_fuzz_only_card_errors(fixture_certs: list[bytes]) -> None:
    rng = random.Random(11)
    real = MoicaGen1Card("TP03000000000001", fixture_certs).cdf_content
    for _ in range(200):
        mutated = bytearray(real)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        card = MoicaGen1Card("TP03000000000001", fixture_certs, cdf_ef=bytes(mutated))
        try:
            MoicaGen1Session(VirtualCardConnection(card)).read_certificates()
        except CardError:
            pass


def test_cdf_lies_about_length(fixture_certs: list[bytes]) -> None:
    # The CDF claims a certificate is 100 bytes shorter than it is.
    content = cdf_entry(b"X", bytes.fromhex("3F00503008F2"), 0, len(fixture_certs[0]) - 100)
    card = MoicaGen1Card("TP03000000000001", fixture_certs, cdf_content=content)
    with pytest.raises(CardDataInvalid):
        MoicaGen1Session(VirtualCardConnection(card)).read_certificates()


def test_cdf_points_past_end_of_file(fixture_certs: list[bytes]) -> None:
    content = cdf_entry(b"X", bytes.fromhex("3F00503008F2"), 0x7E00, 0x100)
    card = MoicaGen1Card("TP03000000000001", fixture_certs, cdf_content=content)
    session = MoicaGen1Session(VirtualCardConnection(card))
    (location,) = session.read_certificate_directory()
    with pytest.raises(ApduError) as info:
        session.read_certificate(location)
    assert info.value.sw == 0x6B00


def test_session_recovers_when_cdf_points_at_a_df(fixture_certs: list[bytes]) -> None:
    content = cdf_entry(b"X", bytes.fromhex("3F005030"), 0, 0x100)
    card = MoicaGen1Card("TP03000000000001", fixture_certs, cdf_content=content)
    conn = VirtualCardConnection(card)
    session = MoicaGen1Session(conn)
    with pytest.raises(ApduError) as info:
        session.read_certificates()
    assert info.value.sw == 0x6986
    # The failed READ made the session forget where it is, so it starts again at the MF.
    assert session.read_card_number() == "TP03000000000001"
    assert conn.selects()[-3:] == [0x3F00, 0x0900, 0x0903]


class _StatusCard:
    """Answers every APDU with one status word (e.g. a gen2 card refusing CLA 80)."""

    def __init__(self, status: int) -> None:
        self.status = status

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        return b"", self.status

    def close(self) -> None:
        pass


def test_unexpected_status_is_apdu_error() -> None:
    session = MoicaGen1Session(_StatusCard(0x6E00))
    with pytest.raises(ApduError) as info:
        session.read_card_number()
    assert info.value.sw == 0x6E00
    with pytest.raises(ApduError):
        session.read_certificates()  # the fallback's SELECTs fail too


def test_card_number_must_be_ascii(fixture_certs: list[bytes]) -> None:
    card = MoicaGen1Card("TP03000000000001", fixture_certs)
    conn = VirtualCardConnection(card)
    real_process = card.process

    def corrupt(apdu: bytes) -> bytes:
        response = real_process(apdu)
        if apdu[:2] == b"\x80\xb0" and response.startswith(b"TP"):
            return "王小明王小明".encode()[:16] + response[-2:]
        return response

    card.process = corrupt  # type: ignore[method-assign]
    with pytest.raises(CardDataInvalid):
        MoicaGen1Session(conn).read_card_number()


# -- the card model -----------------------------------------------------------------------------


def status(card: MoicaGen1Card, hex_apdu: str) -> tuple[bytes, int]:
    response = card.process(bytes.fromhex(hex_apdu))
    return response[:-2], int.from_bytes(response[-2:], "big")


def select_path(card: MoicaGen1Card, *fids: int) -> None:
    for fid in fids:
        assert status(card, f"80A4000002{fid:04X}")[1] == 0x9000


@pytest.mark.parametrize(
    ("setup", "apdu", "sw"),
    [
        ((), "00A40000023F00", 0x6E00),  # CLA 00
        ((), "84B0000010", 0x6E00),
        ((), "80B0000010", 0x6986),  # nothing selected after power-on
        ((), "80A40000025030", 0x6A82),  # not even the MF: DFs are not found
        ((0x3F00,), "80A40000020903", 0x6A82),  # EFs are found only in their DF
        ((0x3F00,), "80A40400023F00", 0x6A86),
        ((0x3F00,), "80A4000003 3F0000", 0x6700),
        ((0x3F00,), "80A4000002 3F", 0x6700),
        ((0x3F00,), "80A40000", 0x6700),
        ((0x3F00, 0x5030), "80A40000020900", 0x6A82),  # sibling DF: not from here
        ((0x3F00, 0x5030), "80A40000025015", 0x6A82),  # no standard PKCS#15 DF
        ((0x3F00, 0x5030), "80B0000010", 0x6986),  # a DF is selected, no EF
        ((0x3F00, 0x5030, 0x08F2), "80B00000C9", 0x6700),  # Le above 200
        ((0x3F00, 0x5030, 0x08F2), "80B0000000", 0x6700),  # Le 0 = 256
        ((0x3F00, 0x5030, 0x08F2), "80B00000", 0x6700),  # no Le
        ((0x3F00, 0x5030, 0x08F2), "80B000000201 0210", 0x6700),  # a data field
        ((0x3F00, 0x5030, 0x08F2), "80B07F0010", 0x6B00),  # past the end
        ((0x3F00, 0x5030, 0x08F2), "80B0800010", 0x6A86),  # short-EF addressing
        ((0x3F00, 0x5030, 0x08F2), "8020000108 3132333435363738", 0x6D00),  # VERIFY
        ((0x3F00, 0x5030, 0x08F2), "80EA820180", 0x6D00),  # sign
        ((0x3F00, 0x5030, 0x08F2), "80C1008080", 0x6D00),
        ((0x3F00, 0x5030, 0x08F2), "80B2010081", 0x6D00),  # READ RECORD
        ((), "80", 0x6700),
    ],
)
def test_card_status_words(card: MoicaGen1Card, setup: tuple[int, ...], apdu: str, sw: int) -> None:
    card.power_on()
    select_path(card, *setup)
    assert status(card, apdu) == (b"", sw)


def test_card_read_past_end_returns_rest_and_6282(card: MoicaGen1Card) -> None:
    card.power_on()
    select_path(card, 0x3F00, 0x0900, 0x0903)
    assert status(card, "80B0000C10") == (b"0001", 0x6282)
    assert status(card, "80B0000010") == (b"TP03000000000001", 0x9000)
    assert status(card, "80B0001001") == (b"", 0x6B00)


def test_card_failed_select_keeps_selection(card: MoicaGen1Card) -> None:
    card.power_on()
    select_path(card, 0x3F00, 0x0900, 0x0903)
    assert status(card, "80A40000029999")[1] == 0x6A82
    assert status(card, "80B0000002") == (b"TP", 0x9000)
    # Siblings are selectable from an EF; the MF from anywhere.
    select_path(card, 0x0905, 0x3F00, 0x5030, 0x08F2, 0x4104, 0x5032)


def test_card_power_on_resets_selection(card: MoicaGen1Card) -> None:
    select_path(card, 0x3F00, 0x0900, 0x0903)
    card.power_on()
    assert status(card, "80B0000010")[1] == 0x6986
    assert status(card, "80A40000020900")[1] == 0x6A82


def test_card_select_accepts_trailing_le(card: MoicaGen1Card) -> None:
    card.power_on()
    assert status(card, "80A40000023F0000") == (b"", 0x9000)


def test_card_files(card: MoicaGen1Card, fixture_certs: list[bytes]) -> None:
    assert card.file_bytes(0x0900, 0x0903) == b"TP03000000000001"
    assert card.file_bytes(0x0900, 0x0905).startswith(b"CHT V32N")
    # The directory EF: content, at least one 00, then the content length little-endian.
    cdf = card.file_bytes(0x5030, 0x4104)
    content = card.cdf_content
    assert cdf.startswith(content)
    assert cdf[len(content)] == 0
    assert int.from_bytes(cdf[-2:], "little") == len(content)
    assert len(cdf) % 0x100 == 0
    # The real-card Path form for the first certificate.
    path = bytes.fromhex("300F 0406 3F00503008F2 020100 8002")
    assert path + len(fixture_certs[0]).to_bytes(2, "big") in content
    # Certificates at the slots, zeros between.
    ef = card.file_bytes(0x5030, 0x08F2)
    for offset, cert in zip(KNOWN_CERTIFICATE_OFFSETS, fixture_certs, strict=False):
        assert ef[offset : offset + len(cert)] == cert
    assert ef[len(fixture_certs[0]) : 0x0700] == bytes(0x0700 - len(fixture_certs[0]))
    assert ef[0x1500:] == bytes(len(ef) - 0x1500)
    # TokenInfo is there, serialNumber = card number.
    assert b"TP03000000000001" in card.file_bytes(0x5030, 0x5032)


def test_card_from_spec(tmp_path: Path, fixture_certs: list[bytes]) -> None:
    (tmp_path / "a.der").write_bytes(fixture_certs[0])
    spec = {"type": "moica-gen1", "cardNumber": "TP03000000000002", "certificates": ["a.der"]}
    card = MoicaGen1Card.from_spec(spec, tmp_path)
    assert card.certificates == [fixture_certs[0]]
    assert card.card_number == "TP03000000000002"
    card = MoicaGen1Card.from_spec({**spec, "atr": "3B 8B 80 01"}, tmp_path)
    assert card.atr == bytes.fromhex("3B8B8001")
    for bad in (
        {**spec, "type": "uid"},
        {**spec, "cardNumber": 12},
        {**spec, "cardNumber": "TP0300000000000"},  # 15 characters
        {**spec, "cardNumber": "TP03-0000000-001"},
        {**spec, "certificates": "a.der"},
        {**spec, "certificates": []},
        {**spec, "atr": 59},
    ):
        with pytest.raises(ValueError):
            MoicaGen1Card.from_spec(bad, tmp_path)


# -- the test PKI and the fixtures --------------------------------------------------------------


def load(name: str) -> x509.Certificate:
    return x509.load_der_x509_certificate((FIXTURES / name).read_bytes())


def test_fixture_chain_and_profile() -> None:
    root, ca, sign, enc = (load(n) for n in ("root.der", "moica_ca.der", "sign.der", "enc.der"))
    root.verify_directly_issued_by(root)
    ca.verify_directly_issued_by(root)
    sign.verify_directly_issued_by(ca)
    enc.verify_directly_issued_by(ca)
    assert "TEST" in root.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    # The MOICA-like CA: no CN, pathlen 0, level-3 policy.
    assert not ca.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    # End entities: exactly C, CN, serialNumber; one subject, two keys.
    assert sign.subject == enc.subject
    assert [(a.oid, a.value) for a in sign.subject] == [
        (x509.NameOID.COUNTRY_NAME, "TW"),
        (x509.NameOID.COMMON_NAME, "王小明"),
        (x509.NameOID.SERIAL_NUMBER, "1000000000000001"),
    ]
    assert sign.public_key() != enc.public_key()
    sign_usage = sign.extensions.get_extension_for_class(x509.KeyUsage)
    enc_usage = enc.extensions.get_extension_for_class(x509.KeyUsage)
    assert sign_usage.critical and sign_usage.value.digital_signature
    assert not sign_usage.value.key_encipherment
    assert enc_usage.value.key_encipherment and enc_usage.value.data_encipherment
    assert not enc_usage.value.digital_signature
    for cert in (ca, sign, enc):
        policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
        assert [p.policy_identifier.dotted_string for p in policies] == ["2.16.886.101.0.3.3"]
    for cert in (root, ca, sign, enc):
        assert cert.not_valid_after_utc.year == 2044
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == "sha256"
    public_key = sign.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == 2048
    aia = sign.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert any(d.access_location.value == "http://127.0.0.1:7431/ocsp" for d in aia)
    assert 64 <= sign.serial_number.bit_length() <= 128


def test_fixture_subject_directory_attributes() -> None:
    parsed = asn1_x509.Certificate.load((FIXTURES / "sign.der").read_bytes())
    (extension,) = [
        e for e in parsed["tbs_certificate"]["extensions"] if e["extn_id"].dotted == "2.5.29.9"
    ]
    assert not extension["critical"].native
    attributes = extension["extn_value"].parsed
    assert [(a["type"].dotted, a["values"].native) for a in attributes] == [
        (OID_SUBJECT_ID_LAST4.dotted_string, ["6789"])
    ]
    # SEQUENCE { SEQUENCE { OID 2.16.886.1.100.2.51, SET { PrintableString "6789" } } }
    expected = bytes.fromhex("3013 3011 0607 60867601640233 3106 1304 36373839")
    assert subject_directory_attributes("6789") == expected
    assert extension["extn_value"].contents == expected


def test_fixture_signing_key_matches() -> None:
    key = serialization.load_der_private_key((FIXTURES / "sign_key.p8").read_bytes(), None)
    assert key.public_key() == load("sign.der").public_key()


def test_card_json_order_does_not_reveal_signing_cert(card_spec: dict[str, object]) -> None:
    names = card_spec["certificates"]
    assert names == ["moica_ca.der", "enc.der", "sign.der"]
    assert card_spec["type"] == "moica-gen1"


def test_make_test_pki_custom_endpoints_and_validity() -> None:
    import datetime as dt

    endpoints = PkiEndpoints.at("http://example.test:9/")
    validity = Validity(
        dt.datetime(2030, 1, 1, tzinfo=dt.UTC), dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    )
    pki = make_test_pki(endpoints=endpoints, validity=validity)
    citizen = pki.issue_citizen("陳大文", "0000000000000042", "A123")
    cert = citizen.encryption.certificate
    assert cert.not_valid_before_utc == validity.not_before
    dp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert dp[0].full_name[0].value == "http://example.test:9/crl/test-moica.crl"
    assert citizen.signing.pem().startswith(b"-----BEGIN CERTIFICATE-----")
    assert citizen.signing.key_pkcs8_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
    with pytest.raises(ValueError):
        make_citizen(pki.moica, name="王小明", serial_number="123", id_last4="6789")
    with pytest.raises(ValueError):
        make_citizen(pki.moica, name="王小明", serial_number="1000000000000001", id_last4="12345")
    with pytest.raises(ValueError):
        make_citizen(pki.moica, name="", serial_number="1000000000000001", id_last4="6789")
    with pytest.raises(ValueError):
        Validity(validity.not_after, validity.not_before)
