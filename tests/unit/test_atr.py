# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import json
import random
from functools import reduce

import pytest

from cardd.readers.atr import (
    DI_TABLE,
    FI_TABLE,
    MAX_ATR_LENGTH,
    Atr,
    ContactlessKind,
    Convention,
    FiDi,
    InterfaceLevel,
    card_name,
    is_pseudo_atr,
    parse_atr,
    parse_contactless,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def xor(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


def with_tck(body: bytes) -> bytes:
    """Append the TCK that makes T0..TCK XOR to zero."""
    return body + bytes((xor(body[1:]),))


def pseudo(historical: bytes) -> bytes:
    """A PC/SC Part 3 pseudo-ATR around ``historical``."""
    return with_tck(bytes((0x3B, 0x80 | len(historical), 0x80, 0x01)) + historical)


def rebuild(atr: Atr) -> bytes:
    """Put the decoded pieces back together; must give the raw bytes for any input."""
    out = bytearray()
    for value in (atr.ts, atr.t0):
        if value is not None:
            out.append(value)
    for level in atr.interface_bytes:
        for value in (level.ta, level.tb, level.tc, level.td):
            if value is not None:
                out.append(value)
    out += atr.historical_bytes
    if atr.tck is not None:
        out.append(atr.tck)
    out += atr.extra
    return bytes(out)


CLASSIC_1K = h("3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 01 00 00 00 00 6A")
CLASSIC_4K = h("3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 02 00 00 00 00 69")
ULTRALIGHT = h("3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 03 00 00 00 00 68")
MIFARE_MINI = h("3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 26 00 00 00 00 4D")
DESFIRE = h("3B 81 80 01 80 80")
MOICA_GEN1 = h("3B B8 13 00 81 31 FA 52 43 48 54 4D 4F 49 43 41 A5")
MOICA_GEN2 = h("3B D8 96 00 81 B1 FE 45 1F 07 43 48 54 47 50 4B 49 4A DD")
MOICA_CL = h("3B 8B 80 01 00 31 C1 64 08 40 21 30 00 90 00 57")
T0_ONLY = h("3B 02 14 50")

EXAMPLES = [
    CLASSIC_1K,
    CLASSIC_4K,
    ULTRALIGHT,
    MIFARE_MINI,
    DESFIRE,
    MOICA_GEN1,
    MOICA_GEN2,
    MOICA_CL,
]


@pytest.mark.parametrize("raw", EXAMPLES, ids=lambda b: b.hex().upper())
def test_example_atrs_have_correct_tck(raw: bytes) -> None:
    # Independent check: XOR over T0..TCK is zero exactly when the TCK is right.
    assert xor(raw[1:]) == 0
    atr = parse_atr(raw)
    assert atr.problems == ()
    assert atr.valid
    assert atr.tck == raw[-1]
    assert atr.tck_ok is True
    assert atr.tck_required
    assert rebuild(atr) == raw


def test_classic_1k_structure() -> None:
    atr = parse_atr(CLASSIC_1K)
    assert atr.ts == 0x3B and atr.convention is Convention.DIRECT
    assert atr.t0 == 0x8F
    assert atr.interface_bytes == (
        InterfaceLevel(index=1, td=0x80),
        InterfaceLevel(index=2, td=0x01, protocol=0),
    )
    assert atr.protocols == (0, 1)
    assert atr.historical_bytes == CLASSIC_1K[4:-1]
    assert len(atr.historical_bytes) == 15
    assert atr.fi_di == FiDi(372, 1)
    assert atr.fmax_mhz == 5.0


def test_moica_gen1_structure() -> None:
    atr = parse_atr(MOICA_GEN1)
    assert atr.ta1 == 0x13
    assert atr.level(1) == InterfaceLevel(index=1, ta=0x13, tb=0x00, td=0x81)
    assert atr.level(2) == InterfaceLevel(index=2, td=0x31, protocol=1)
    assert atr.level(3) == InterfaceLevel(index=3, ta=0xFA, tb=0x52, protocol=1)
    assert atr.level(4) is None
    assert atr.protocols == (1,)
    assert atr.historical_bytes == b"CHTMOICA"
    assert atr.historical_text == "CHTMOICA"
    fi, di = atr.fi_di
    assert (fi, di) == (372, 4)
    assert atr.fmax_mhz == 5.0


def test_moica_gen2_structure() -> None:
    atr = parse_atr(MOICA_GEN2)
    # 1F 07 are TD3 (T=15: global bytes follow) and TA4, not historical bytes.
    assert atr.level(3) == InterfaceLevel(index=3, ta=0xFE, tb=0x45, td=0x1F, protocol=1)
    assert atr.level(4) == InterfaceLevel(index=4, ta=0x07, protocol=15)
    assert atr.protocols == (1,)  # T=15 is not a transmission protocol
    assert atr.historical_bytes == b"CHTGPKIJ"
    assert atr.fi_di == FiDi(512, 32)


def test_t0_only_has_no_tck() -> None:
    atr = parse_atr(T0_ONLY)
    assert atr.problems == ()
    assert atr.interface_bytes == ()
    assert atr.historical_bytes == h("14 50")
    assert atr.tck is None
    assert atr.tck_ok is None
    assert not atr.tck_required
    assert atr.protocols == (0,)
    assert atr.fi_di == FiDi(372, 1)


def test_t0_only_with_stray_byte() -> None:
    atr = parse_atr(T0_ONLY + b"\x11")
    assert atr.tck is None and atr.tck_ok is None
    assert atr.extra == b"\x11"
    assert len(atr.problems) == 1 and atr.problems[0].startswith("extra bytes after historical")


def test_inverse_convention() -> None:
    raw = h("3F 65 25 00 2C 09 69 90 00")
    atr = parse_atr(raw)
    assert atr.convention is Convention.INVERSE
    assert atr.problems == ()
    assert atr.level(1) == InterfaceLevel(index=1, tb=0x25, tc=0x00)
    assert atr.historical_bytes == h("2C 09 69 90 00")
    assert atr.protocols == (0,)


@pytest.mark.parametrize(("ts", "hint"), [(0x12, False), (0x03, True), (0x00, False)])
def test_invalid_ts_still_parses(ts: int, hint: bool) -> None:
    atr = parse_atr(bytes((ts,)) + T0_ONLY[1:])
    assert atr.convention is Convention.INVALID
    assert atr.problems[0].startswith(f"invalid TS {ts:02X}")
    assert ("inverse" in atr.problems[0]) is hint
    assert atr.historical_bytes == h("14 50")


def test_empty_and_one_byte() -> None:
    empty = parse_atr(b"")
    assert empty.ts is None and empty.t0 is None
    assert empty.convention is Convention.INVALID
    assert empty.protocols == ()
    assert any(p.startswith("truncated") for p in empty.problems)

    one = parse_atr(b"\x3b")
    assert one.ts == 0x3B and one.convention is Convention.DIRECT
    assert one.t0 is None
    assert one.problems == ("truncated: T0 missing",)


@pytest.mark.parametrize("raw", EXAMPLES, ids=lambda b: b.hex().upper())
def test_every_prefix_is_truncated(raw: bytes) -> None:
    for cut in range(len(raw)):
        atr = parse_atr(raw[:cut])
        assert any(p.startswith("truncated") for p in atr.problems), raw[:cut].hex()
        assert atr.tck is None
        assert atr.tck_ok is not True
        assert rebuild(atr) == raw[:cut]


def test_truncated_messages() -> None:
    assert parse_atr(h("3B 80")).problems == ("truncated: TD1 missing",)
    partial = parse_atr(h("3B B8 13 00 81 31 FA"))
    assert partial.problems == ("truncated: TB3 missing",)
    assert partial.level(3) == InterfaceLevel(index=3, ta=0xFA, protocol=1)
    assert partial.tck_ok is False
    assert parse_atr(CLASSIC_1K[:6]).problems == ("truncated: 2 of 15 historical bytes",)
    no_tck = parse_atr(CLASSIC_1K[:-1])
    assert no_tck.problems == ("truncated: TCK missing",)
    assert no_tck.tck_ok is False
    assert parse_atr(T0_ONLY[:3]).problems == ("truncated: 1 of 2 historical bytes",)
    assert parse_atr(T0_ONLY[:3]).tck_ok is None


def test_tck_mismatch() -> None:
    atr = parse_atr(CLASSIC_1K[:-1] + b"\x6b")
    assert atr.tck == 0x6B
    assert atr.tck_ok is False
    assert atr.problems == ("TCK mismatch: expected 6A got 6B",)
    # Everything else is decoded all the same.
    assert atr.protocols == (0, 1)
    assert parse_contactless(atr) is not None


def test_extra_bytes_after_tck() -> None:
    atr = parse_atr(DESFIRE + h("00 FF"))
    assert atr.tck_ok is True
    assert atr.extra == h("00 FF")
    assert atr.problems == ("extra bytes after TCK: 00FF",)


def test_too_long_but_parsed() -> None:
    level = h("11 22 33 F1")
    body = h("3B FF") + level * 3 + h("11 22 33 01") + bytes(range(15))
    raw = with_tck(body)
    assert len(raw) == 34
    atr = parse_atr(raw)
    assert atr.problems == (f"too long: 34 bytes (ISO 7816-3 allows {MAX_ATR_LENGTH})",)
    assert atr.tck_ok is True
    assert len(atr.interface_bytes) == 4
    assert atr.level(4) == InterfaceLevel(4, 0x11, 0x22, 0x33, 0x01, protocol=1)
    assert atr.historical_bytes == bytes(range(15))
    assert atr.protocols == (1,)


def test_td_with_empty_next_level_adds_no_level() -> None:
    atr = parse_atr(DESFIRE)
    assert [lvl.index for lvl in atr.interface_bytes] == [1, 2]


def test_t15_in_td1_is_a_problem_and_needs_tck() -> None:
    atr = parse_atr(with_tck(h("3B 80 0F")))
    assert atr.tck_ok is True
    assert atr.protocols == (0,)
    assert atr.problems == ("TD1 indicates T=15, which only TD2 onwards may carry",)


def test_reserved_ta1() -> None:
    atr = parse_atr(h("3B 10 70"))  # Fi index 7 and Di index 0 are both RFU
    assert atr.fi_di == FiDi(None, None)
    assert atr.fmax_mhz is None
    assert atr.problems == ("TA1 70 uses a reserved Fi/Di value",)


def test_fi_di_tables() -> None:
    assert FI_TABLE[0x1] == (372, 5.0)
    assert FI_TABLE[0x9] == (512, 5.0)
    assert FI_TABLE[0xD] == (2048, 20.0)
    assert set(FI_TABLE) == {0, 1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13}
    assert DI_TABLE == {1: 1, 2: 2, 3: 4, 4: 8, 5: 16, 6: 32, 7: 64, 8: 12, 9: 20}
    assert parse_atr(h("3B 11 18 00")).fi_di == FiDi(372, 12)


def test_to_dict_is_json_ready() -> None:
    d = parse_atr(MOICA_GEN1).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["raw"] == MOICA_GEN1.hex().upper()
    assert d["ts"] == "3B" and d["t0"] == "B8" and d["tck"] == "A5"
    assert d["historical_bytes"] == "4348544D4F494341"
    assert d["interface_bytes"][2] == {
        "level": 3,
        "protocol": 1,
        "ta": "FA",
        "tb": "52",
        "tc": None,
        "td": None,
    }
    assert d["protocols"] == [1]
    assert (d["fi"], d["di"], d["fmax_mhz"]) == (372, 4, 5.0)
    assert d["tck_ok"] is True and d["valid"] is True and d["problems"] == []
    assert d["contactless"] is None
    cl = parse_atr(CLASSIC_1K).to_dict()["contactless"]
    assert cl == {
        "kind": "storage",
        "historical_bytes": CLASSIC_1K[4:-1].hex().upper(),
        "standard": "03",
        "standard_name": "ISO 14443 A, part 3",
        "card_name_code": "0001",
        "card_name": "MIFARE Classic 1K",
    }


# --- contactless pseudo-ATRs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code", "name"),
    [
        (CLASSIC_1K, 0x0001, "MIFARE Classic 1K"),
        (CLASSIC_4K, 0x0002, "MIFARE Classic 4K"),
        (ULTRALIGHT, 0x0003, "MIFARE Ultralight"),
        (MIFARE_MINI, 0x0026, "MIFARE Mini"),
    ],
)
def test_storage_cards(raw: bytes, code: int, name: str) -> None:
    info = parse_contactless(parse_atr(raw))
    assert info is not None
    assert info.kind is ContactlessKind.STORAGE
    assert info.standard == 0x03
    assert info.standard_name == "ISO 14443 A, part 3"
    assert info.card_name_code == code
    assert info.card_name == name


def storage(ss: int, c0: int, c1: int) -> bytes:
    return pseudo(h("80 4F 0C A0 00 00 03 06") + bytes((ss, c0, c1)) + bytes(4))


@pytest.mark.parametrize(
    ("ss", "code", "name", "standard_name"),
    [
        (0x11, 0xF011, "FeliCa 212K", "FeliCa"),
        (0x11, 0xF012, "FeliCa 424K", "FeliCa"),
        (0x11, 0x003B, "FeliCa", "FeliCa"),
        (0x03, 0xF004, "Topaz/Jewel", "ISO 14443 A, part 3"),
        (0x03, 0x0030, "Topaz", "ISO 14443 A, part 3"),
        (0x03, 0x003A, "MIFARE Ultralight C", "ISO 14443 A, part 3"),
        (0x03, 0x0036, "MIFARE Plus SL1 2K", "ISO 14443 A, part 3"),
        (0x03, 0x0039, "MIFARE Plus SL2 4K", "ISO 14443 A, part 3"),
        (0x07, 0x0007, "SRIX4K", "ISO 14443 B, part 3"),
        (0x03, 0xFF28, "unknown type (SAK 28)", "ISO 14443 A, part 3"),
        (0x03, 0x1234, None, "ISO 14443 A, part 3"),
        (0x42, 0x0001, "MIFARE Classic 1K", "RFU"),
    ],
)
def test_storage_card_names(ss: int, code: int, name: str | None, standard_name: str) -> None:
    atr = parse_atr(storage(ss, code >> 8, code & 0xFF))
    assert atr.problems == ()
    info = parse_contactless(atr)
    assert info is not None and info.kind is ContactlessKind.STORAGE
    assert (info.standard, info.card_name_code) == (ss, code)
    assert info.card_name == name
    assert info.standard_name == standard_name


def test_card_name_lookup() -> None:
    assert card_name(0x0004) == "SLE55R_XXXX"
    assert card_name(0xFF00) == "unknown type (SAK 00)"
    assert card_name(0x0005) is None


@pytest.mark.parametrize(
    ("raw", "historical"),
    [
        (DESFIRE, h("80")),
        (MOICA_CL, h("00 31 C1 64 08 40 21 30 00 90 00")),
        (pseudo(b""), b""),
        (pseudo(h("50 12 34 56 78 00 00 00")), h("50 12 34 56 78 00 00 00")),  # type B shape
    ],
)
def test_iso_dep(raw: bytes, historical: bytes) -> None:
    atr = parse_atr(raw)
    assert atr.problems == ()
    assert is_pseudo_atr(atr)
    info = parse_contactless(atr)
    assert info is not None
    assert info.kind is ContactlessKind.ISO_DEP
    assert info.historical_bytes == historical
    assert info.standard is None and info.card_name is None


def test_pseudo_atr_with_bad_tck_is_still_decoded() -> None:
    atr = parse_atr(DESFIRE[:-1] + b"\x00")
    assert atr.tck_ok is False
    info = parse_contactless(atr)
    assert info is not None and info.kind is ContactlessKind.ISO_DEP


@pytest.mark.parametrize(
    "raw",
    [
        MOICA_GEN1,
        MOICA_GEN2,
        T0_ONLY,
        b"",
        b"\x3b",
        h("3F 81 80 01 80 80"),  # inverse convention is never a PC/SC pseudo-ATR
        with_tck(h("3B 81 90 11 01 80")),  # TA2 present: a real contact ATR
        with_tck(h("3B 81 80 81 01 80")),  # TD2 announcing a third level
        h("3B 8F 80"),  # truncated
    ],
    ids=lambda b: b.hex().upper() or "empty",
)
def test_not_contactless(raw: bytes) -> None:
    assert parse_contactless(parse_atr(raw)) is None


# --- robustness ---------------------------------------------------------------------------------


def check_invariants(raw: bytes) -> None:
    atr = parse_atr(raw)
    assert atr.raw == raw
    assert rebuild(atr) == raw
    assert isinstance(atr.problems, tuple)
    assert all(isinstance(p, str) and p for p in atr.problems)
    assert (atr.tck_ok is None) == (not atr.tck_required)
    if atr.tck is not None:
        assert atr.tck_ok == (xor(raw[1 : len(raw) - len(atr.extra)]) == 0)
    if len(raw) > MAX_ATR_LENGTH:
        assert any(p.startswith("too long") for p in atr.problems)
    if atr.valid:
        assert atr.convention is not Convention.INVALID
    json.dumps(atr.to_dict())
    parse_contactless(atr)
    _ = (atr.fi_di, atr.fmax_mhz, atr.historical_text, atr.tck_required)


def test_random_bytes_never_raise() -> None:
    rng = random.Random(0xCA4DD)
    for _ in range(20_000):
        raw = rng.randbytes(rng.randint(0, 40))
        if rng.random() < 0.5 and raw:
            # Valid TS half the time, so the parser gets past the first byte meaningfully.
            raw = rng.choice((b"\x3b", b"\x3f")) + raw[1:]
        check_invariants(raw)


def test_mutated_examples_never_raise() -> None:
    rng = random.Random(7816)
    for _ in range(5_000):
        raw = bytearray(rng.choice(EXAMPLES))
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(3)
            if op == 0 and raw:
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            elif op == 1 and raw:
                del raw[rng.randrange(len(raw)) :]
            else:
                raw += rng.randbytes(rng.randint(1, 4))
        check_invariants(bytes(raw))
