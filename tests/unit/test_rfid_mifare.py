# SPDX-License-Identifier: Apache-2.0
"""MifareClassicSession: exact APDU bytes against a scripted connection, and behaviour against the
virtual MIFARE Classic card model driven in-process (no pcscd)."""

from __future__ import annotations

import pytest

from cardd.errors import (
    AccessDenied,
    ApduError,
    AuthenticationFailed,
    CardDataInvalid,
    CardNotSupported,
    CardRemoved,
    InvalidInput,
    UnsafeTrailer,
    UsageError,
    WriteVerificationFailed,
)
from cardd.rfid.access import (
    STUDENT_ACCESS,
    TRANSPORT_ACCESS,
    TRANSPORT_KEY,
    TRANSPORT_TRAILER,
    AccessBits,
    KeyType,
    SectorTrailer,
    TrailerPolicy,
)
from cardd.rfid.keys import SectorKeys
from cardd.rfid.mifare import (
    KEY_STRUCTURE_NON_VOLATILE,
    MifareClassicSession,
    access_group,
    blocks_in_sector,
    first_block,
    is_trailer,
    sector_of,
    trailer_block,
)
from cardd.sim.cards.mifare import MifareClassic
from tests.helpers import fixture_card

A, B = KeyType.A, KeyType.B
KEY_A = bytes.fromhex("A0A1A2A3A4A5")
KEY_B = bytes.fromhex("B0B1B2B3B4B5")
RECORD = b"LB\x01A12345678900\x00"
OK = 0x9000


def h(text: str) -> bytes:
    return bytes.fromhex(text)


class ScriptedConnection:
    """Asserts each APDU against a script of (expected command, (data, sw)) pairs."""

    def __init__(self, *script: tuple[str, tuple[bytes, int]]) -> None:
        self.script = [(h(cmd), resp) for cmd, resp in script]
        self.sent: list[bytes] = []

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(apdu)
        assert self.script, f"unexpected APDU {apdu.hex(' ').upper()}"
        expected, response = self.script.pop(0)
        assert apdu.hex(" ").upper() == expected.hex(" ").upper()
        return response

    def close(self) -> None:
        pass

    def done(self) -> None:
        assert not self.script, f"{len(self.script)} scripted APDUs not sent"


class CardConnection:
    """The virtual card model behind the transport contract: process() -> (data, sw)."""

    def __init__(self, card: MifareClassic) -> None:
        self.card = card
        self.sent: list[bytes] = []
        card.power_on()

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(apdu)
        response = self.card.process(apdu)
        return response[:-2], int.from_bytes(response[-2:], "big")

    def close(self) -> None:
        pass


# -- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sector", "first", "count", "trailer"),
    [
        (0, 0, 4, 3),
        (1, 4, 4, 7),
        (14, 56, 4, 59),
        (15, 60, 4, 63),
        (31, 124, 4, 127),
        (32, 128, 16, 143),
        (33, 144, 16, 159),
        (39, 240, 16, 255),
    ],
)
def test_sector_geometry_1k_and_4k(sector, first, count, trailer):
    assert first_block(sector) == first
    assert blocks_in_sector(sector) == count
    assert trailer_block(sector) == trailer
    assert all(sector_of(b) == sector for b in range(first, first + count))
    assert is_trailer(trailer) and not is_trailer(first)


def test_access_groups_of_large_sectors_are_groups_of_five():
    assert [access_group(b) for b in range(56, 60)] == [0, 1, 2, 3]
    groups = [access_group(b) for b in range(128, 144)]
    assert groups == [0] * 5 + [1] * 5 + [2] * 5 + [3]


@pytest.mark.parametrize(
    "call", [lambda: sector_of(256), lambda: first_block(40), lambda: sector_of(-1)]
)
def test_geometry_refuses_addresses_beyond_4k(call):
    with pytest.raises(InvalidInput):
        call()


def test_1k_session_refuses_4k_addresses_before_sending():
    conn = ScriptedConnection()
    session = MifareClassicSession(conn, size="1k")
    with pytest.raises(InvalidInput):
        session.authenticate(64, A)
    with pytest.raises(InvalidInput):
        session.read_sector(16, A)
    assert conn.sent == []


# -- exact APDUs ------------------------------------------------------------------------------


def test_uid():
    conn = ScriptedConnection(("FF CA 00 00 00", (h("93A131C0"), OK)))
    assert MifareClassicSession(conn).uid() == h("93A131C0")
    conn.done()


def test_uid_not_supported():
    conn = ScriptedConnection(("FF CA 00 00 00", (b"", 0x6A81)))
    with pytest.raises(CardNotSupported):
        MifareClassicSession(conn).uid()


def test_load_key_is_sent_once_per_slot_and_value():
    conn = ScriptedConnection(
        ("FF 82 00 01 06 B0B1B2B3B4B5", (b"", OK)),
        ("FF 82 00 00 06 A0A1A2A3A4A5", (b"", OK)),
        ("FF 82 00 01 06 FFFFFFFFFFFF", (b"", OK)),
    )
    session = MifareClassicSession(conn)
    session.load_key(1, KEY_B)
    session.load_key(1, KEY_B)  # already there: nothing sent
    session.load_key(0, KEY_A)
    session.load_key(1, TRANSPORT_KEY)  # a different key into slot 1 is sent
    session.load_key(0, KEY_A)
    conn.done()
    assert session.apdu_count == 3


def test_load_key_69_86_is_a_clear_error_and_no_silent_fallback_to_structure_20():
    conn = ScriptedConnection(("FF 82 00 00 06 A0A1A2A3A4A5", (b"", 0x6986)))
    session = MifareClassicSession(conn)
    with pytest.raises(CardNotSupported, match="key_structure=0x20") as info:
        session.load_key(0, KEY_A)
    conn.done()  # exactly one APDU: no retry with structure 20
    assert "A0A1A2" not in info.value.message.upper()
    # the failed load is not cached: a second attempt sends again
    conn.script.append((h("FF 82 00 00 06 A0A1A2A3A4A5"), (b"", OK)))
    session.load_key(0, KEY_A)
    conn.done()


def test_non_volatile_key_structure_for_acr128():
    conn = ScriptedConnection(("FF 82 20 05 06 A0A1A2A3A4A5", (b"", OK)))
    session = MifareClassicSession(
        conn, key_slot_a=5, key_slot_b=6, key_structure=KEY_STRUCTURE_NON_VOLATILE
    )
    session.load_key(session.slot_for(A), KEY_A)
    conn.done()


def test_load_key_refuses_bad_keys_without_sending():
    conn = ScriptedConnection()
    session = MifareClassicSession(conn)
    with pytest.raises(InvalidInput):
        session.load_key(0, b"\x01" * 5)
    with pytest.raises(InvalidInput):
        session.load_key(256, KEY_A)
    with pytest.raises(InvalidInput):
        MifareClassicSession(conn, key_slot_a=1, key_slot_b=1)
    assert conn.sent == []


def test_authenticate_bytes_and_redundant_auth_is_skipped():
    conn = ScriptedConnection(
        ("FF 86 00 00 05 01 00 38 61 01", (b"", OK)),
        ("FF 86 00 00 05 01 00 38 60 00", (b"", OK)),  # other key type: sent
        ("FF 86 00 00 05 01 00 3C 60 00", (b"", OK)),  # other sector: sent
    )
    session = MifareClassicSession(conn)
    session.authenticate(56, B)
    session.authenticate(57, B)  # same sector, same key: skipped
    session.authenticate_sector(14, B)
    assert session.authenticated_sector == 14
    session.authenticate(56, A)
    session.authenticate(60, A)
    conn.done()


def test_authenticate_4k_large_sector_block_address():
    conn = ScriptedConnection(("FF 86 00 00 05 01 00 FF 61 01", (b"", OK)))
    MifareClassicSession(conn).authenticate(255, B)
    conn.done()


def test_auth_63_00_is_authentication_failed_and_clears_state():
    conn = ScriptedConnection(
        ("FF 86 00 00 05 01 00 38 60 00", (b"", OK)),
        ("FF 86 00 00 05 01 00 38 61 01", (b"", 0x6300)),
        ("FF 86 00 00 05 01 00 38 60 00", (b"", OK)),  # state was cleared: sent again
    )
    session = MifareClassicSession(conn)
    session.authenticate(56, A)
    with pytest.raises(AuthenticationFailed) as info:
        session.authenticate(56, B)
    assert info.value.code == "auth_failed" and info.value.sw == 0x6300
    assert session.authenticated_sector is None
    session.authenticate(56, A)
    conn.done()


@pytest.mark.parametrize(
    ("sw", "error"),
    [
        (0x6982, AuthenticationFailed),
        (0x6986, CardNotSupported),
        (0x6A81, CardNotSupported),
        (0x6700, ApduError),
    ],
)
def test_auth_status_words(sw, error):
    conn = ScriptedConnection(("FF 86 00 00 05 01 00 04 60 00", (b"", sw)))
    with pytest.raises(error):
        MifareClassicSession(conn).authenticate(4, A)


def test_read_block_bytes_and_checks():
    conn = ScriptedConnection(
        ("FF 86 00 00 05 01 00 38 60 00", (b"", OK)),
        ("FF B0 00 38 10", (RECORD, OK)),
        ("FF B0 00 39 10", (b"\x00" * 15, OK)),
        ("FF 86 00 00 05 01 00 38 60 00", (b"", OK)),
        ("FF B0 00 3A 10", (b"", 0x6300)),
    )
    session = MifareClassicSession(conn)
    session.authenticate(56, A)
    assert session.read_block(56) == RECORD
    with pytest.raises(CardDataInvalid):
        session.read_block(57)
    session.authenticate(56, A)
    with pytest.raises(AccessDenied, match="the access bits do not allow this") as info:
        session.read_block(58)
    assert info.value.code == "access_denied"
    conn.done()


def test_read_without_authentication_is_a_usage_error_before_sending():
    conn = ScriptedConnection(("FF 86 00 00 05 01 00 04 60 00", (b"", OK)))
    session = MifareClassicSession(conn)
    with pytest.raises(UsageError, match="authenticate sector 14"):
        session.read_block(56)
    session.authenticate(4, A)
    with pytest.raises(UsageError):
        session.read_block(56)  # another sector
    conn.done()


def test_write_block_bytes_with_verification():
    conn = ScriptedConnection(
        ("FF 86 00 00 05 01 00 38 61 01", (b"", OK)),
        ("FF D6 00 38 10 " + RECORD.hex(), (b"", OK)),
        ("FF B0 00 38 10", (RECORD, OK)),
    )
    session = MifareClassicSession(conn)
    session.authenticate(56, B)
    session.write_block(56, RECORD)
    conn.done()


def test_write_block_verify_mismatch_and_without_verify():
    conn = ScriptedConnection(
        ("FF 86 00 00 05 01 00 38 61 01", (b"", OK)),
        ("FF D6 00 39 10 " + "00" * 16, (b"", OK)),
        ("FF D6 00 38 10 " + RECORD.hex(), (b"", OK)),
        ("FF B0 00 38 10", (b"\x00" * 16, OK)),
    )
    session = MifareClassicSession(conn)
    session.authenticate(56, B)
    session.write_block(57, b"\x00" * 16, verify=False)
    with pytest.raises(WriteVerificationFailed) as info:
        session.write_block(56, RECORD)
    assert "A12345678900" not in info.value.message  # never the written data
    conn.done()


def test_write_63_00_is_access_denied():
    conn = ScriptedConnection(
        ("FF 86 00 00 05 01 00 38 60 00", (b"", OK)),
        ("FF D6 00 38 10 " + RECORD.hex(), (b"", 0x6300)),
    )
    session = MifareClassicSession(conn)
    session.authenticate(56, A)
    with pytest.raises(AccessDenied, match="writing block 56: the access bits do not allow this"):
        session.write_block(56, RECORD)
    assert session.authenticated_sector is None


@pytest.mark.parametrize(
    ("block", "data", "error", "match"),
    [
        (0, b"\x00" * 16, InvalidInput, "manufacturer"),
        (3, b"\x00" * 16, UnsafeTrailer, "write_trailer"),
        (59, TRANSPORT_TRAILER.to_bytes(), UnsafeTrailer, "sector trailer of sector 14"),
        (143, b"\x00" * 16, UnsafeTrailer, "sector 32"),
        (255, b"\x00" * 16, UnsafeTrailer, "trailer"),
        (56, b"\x00" * 15, InvalidInput, "16 bytes"),
        (56, b"\x00" * 17, InvalidInput, "16 bytes"),
        (56, b"\x00" * 32, InvalidInput, "16 bytes"),  # never a write spanning blocks
    ],
)
def test_write_block_refusals_send_nothing(block, data, error, match):
    conn = ScriptedConnection()
    session = MifareClassicSession(conn)
    with pytest.raises(error, match=match):
        session.write_block(block, data)
    assert conn.sent == []


def test_transport_errors_clear_the_session():
    class Vanishing(ScriptedConnection):
        def send_and_receive(self, apdu):
            if apdu[1] == 0xB0:
                raise CardRemoved("gone")
            return super().send_and_receive(apdu)

    conn = Vanishing(
        ("FF 82 00 00 06 A0A1A2A3A4A5", (b"", OK)),
        ("FF 86 00 00 05 01 00 38 60 00", (b"", OK)),
        ("FF 82 00 00 06 A0A1A2A3A4A5", (b"", OK)),
    )
    session = MifareClassicSession(conn)
    session.load_key(0, KEY_A)
    session.authenticate(56, A)
    with pytest.raises(CardRemoved):
        session.read_block(56)
    assert session.authenticated_sector is None
    session.load_key(0, KEY_A)  # the reader may have been reset: the key is sent again
    conn.done()


def test_burn_fits_in_eight_apdus():
    """Load key B, authenticate, write 3 blocks, read back 2: 7 APDUs; 6 with the key loaded."""
    block1 = bytes(12) + bytes.fromhex("01020304")
    conn = ScriptedConnection(
        ("FF 82 00 01 06 B0B1B2B3B4B5", (b"", OK)),
        ("FF 86 00 00 05 01 00 38 61 01", (b"", OK)),
        ("FF D6 00 38 10 " + RECORD.hex(), (b"", OK)),
        ("FF D6 00 39 10 " + block1.hex(), (b"", OK)),
        ("FF D6 00 3A 10 " + "00" * 16, (b"", OK)),
        ("FF B0 00 38 10", (RECORD, OK)),
        ("FF B0 00 39 10", (block1, OK)),
    )
    session = MifareClassicSession(conn)
    keys = SectorKeys(sector=14, key_a=KEY_A, key_b=KEY_B)
    session.load_keys(keys, [B])
    session.authenticate_sector(keys.sector, B)
    for block, data in ((56, RECORD), (57, block1), (58, bytes(16))):
        session.write_block(block, data, verify=False)
    assert [session.read_block(56), session.read_block(57)] == [RECORD, block1]
    conn.done()
    assert session.apdu_count == 7 <= 8


def test_session_repr_does_not_show_loaded_keys():
    conn = ScriptedConnection(("FF 82 00 00 06 A0A1A2A3A4A5", (b"", OK)))
    session = MifareClassicSession(conn)
    session.load_key(0, KEY_A)
    text = repr(session) + repr(vars(session))
    assert KEY_A.hex() not in text.lower() and "\\xa0\\xa1" not in text


# -- against the virtual card model -----------------------------------------------------------


@pytest.fixture
def student():
    card = fixture_card("classic_1k_student.json")
    return card, MifareClassicSession(CardConnection(card), size="1k")


@pytest.fixture
def blank():
    card = MifareClassic.blank(h("A1B2C3D4"))
    return card, MifareClassicSession(CardConnection(card), size="1k")


def test_model_read_and_write_the_record(student):
    card, session = student
    assert session.uid() == h("93A131C0")
    session.load_keys(SectorKeys(sector=14, key_a=KEY_A, key_b=KEY_B))
    session.authenticate_sector(14, B)
    session.write_block(56, RECORD)
    assert card.block(56) == RECORD
    blocks = session.read_sector(14, A)
    assert blocks[0] == RECORD and len(blocks) == 3
    bits, gpb = session.read_access(14)
    assert bits == AccessBits.parse("100 100 100 011")


def test_model_key_a_cannot_write(student):
    card, session = student
    session.load_key(0, KEY_A)
    session.authenticate(57, A)
    before = card.block(57)
    with pytest.raises(AccessDenied):
        session.write_block(57, b"\x11" * 16)
    assert card.block(57) == before


def test_model_wrong_key(student):
    _card, session = student
    session.load_key(0, TRANSPORT_KEY)
    with pytest.raises(AuthenticationFailed):
        session.authenticate(56, A)
    session.authenticate(4, A)  # other sectors are still transport


def test_model_acr128_structure_is_refused_by_an_acr122u(student):
    _card, session = student
    session.key_structure = KEY_STRUCTURE_NON_VOLATILE
    with pytest.raises(CardNotSupported):
        session.load_key(0, KEY_A)


def personalized() -> SectorTrailer:
    return SectorTrailer(key_a=KEY_A, access=STUDENT_ACCESS, gpb=0x69, key_b=KEY_B)


def test_model_personalize_a_blank_sector(blank):
    card, session = blank
    session.write_trailer(
        14, personalized(), writer_key=A, keys_we_hold={A, B}, current_key=TRANSPORT_KEY
    )
    assert card.block(59) == personalized().to_bytes()
    assert session.apdu_count == 7
    # the new keys work, the transport key no longer does
    session.load_key(1, KEY_B)
    session.authenticate(56, B)
    session.write_block(56, RECORD)
    session.load_key(0, TRANSPORT_KEY)
    with pytest.raises(AuthenticationFailed):
        session.authenticate(56, A)
    assert card.blocked_sectors() == []


def test_model_rekey_with_key_b_and_back_to_transport(student):
    card, session = student
    new_b = bytes.fromhex("C0C1C2C3C4C5")
    t = SectorTrailer(key_a=KEY_A, access=STUDENT_ACCESS, gpb=0x69, key_b=new_b)
    session.write_trailer(14, t, writer_key=B, keys_we_hold={A, B}, current_key=KEY_B)
    assert card.block(59)[10:] == new_b
    reset = TrailerPolicy(required=None, personalize=False)
    session.write_trailer(
        14, TRANSPORT_TRAILER, writer_key=B, keys_we_hold={A}, policy=reset, current_key=new_b
    )
    assert card.block(59) == TRANSPORT_TRAILER.to_bytes()


def test_model_unsafe_trailer_is_refused_before_any_apdu(blank):
    card, session = blank
    before = card.dump()
    frozen = SectorTrailer(
        key_a=KEY_A, access=AccessBits.uniform(0b100, 0b110).to_bytes(), gpb=0x69, key_b=KEY_B
    )
    for t, hold in ((frozen, {A, B}), (personalized(), {A})):
        with pytest.raises(UnsafeTrailer):
            session.write_trailer(14, t, writer_key=A, keys_we_hold=hold, current_key=TRANSPORT_KEY)
    assert session.apdu_count == 0
    assert card.dump() == before


def test_model_partial_write_is_refused_after_reading_the_current_bits(student):
    card, session = student
    before = card.dump()
    # key A may not write anything under 011: refused after auth + read, before the write
    with pytest.raises(UnsafeTrailer, match="only in part"):
        session.write_trailer(
            14, personalized(), writer_key=A, keys_we_hold={A, B}, current_key=KEY_A
        )
    assert card.dump() == before
    assert [apdu[1] for apdu in session._conn.sent] == [0x82, 0x86, 0xB0]  # type: ignore[attr-defined]


def test_model_4k_large_sector():
    card = fixture_card("classic_4k_blank.json")
    session = MifareClassicSession(CardConnection(card), size="4k")
    session.write_trailer(
        35, personalized(), writer_key=A, keys_we_hold={A, B}, current_key=TRANSPORT_KEY
    )
    assert card.block(trailer_block(35)) == personalized().to_bytes()
    session.load_key(session.slot_for(B), KEY_B)
    session.authenticate_sector(35, B)
    for block in range(first_block(35), trailer_block(35)):
        session.write_block(block, bytes([block]) * 16, verify=False)
    assert [b[0] for b in session.read_sector(35, B)] == list(range(176, 191))
    assert TRANSPORT_ACCESS == card.block(trailer_block(34))[6:9]
