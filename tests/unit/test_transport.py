# SPDX-License-Identifier: Apache-2.0
"""APDU processors above the transport, against a scripted connection (exact bytes asserted)."""

from __future__ import annotations

import pytest

from cardd.errors import ApduError
from cardd.readers.transport import Apdu, SmartCardConnection, send_expect, transceive


class Scripted:
    def __init__(self, script: list[tuple[str, str]]) -> None:
        self.script = [(bytes.fromhex(c), bytes.fromhex(r)) for c, r in script]

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        expected, response = self.script.pop(0)
        assert apdu == expected, f"sent {apdu.hex()} expected {expected.hex()}"
        return response[:-2], int.from_bytes(response[-2:], "big")

    def close(self) -> None:
        pass


def test_scripted_connection_satisfies_protocol():
    assert isinstance(Scripted([]), SmartCardConnection)


def test_get_response_chaining():
    conn = Scripted([("80B0000010", "6108"), ("00C0000008", "01020304050607086104"), ("00C0000004", "0A0B0C0D9000")])
    assert transceive(conn, bytes.fromhex("80B0000010")) == (bytes.fromhex("01020304050607080A0B0C0D"), 0x9000)
    assert not conn.script


def test_wrong_le_is_retried_once_with_the_exact_length():
    conn = Scripted([("FFCA000000", "6C07"), ("FFCA000007", "04A1B2C3D4E5F69000")])
    assert send_expect(conn, bytes.fromhex("FFCA000000")) == bytes.fromhex("04A1B2C3D4E5F6")


def test_unexpected_status_raises_with_sw_name():
    conn = Scripted([("00A4040000", "6A82")])
    with pytest.raises(ApduError) as e:
        send_expect(conn, bytes.fromhex("00A4040000"))
    assert e.value.sw == 0x6A82 and "file not found" in str(e.value)


def test_endless_61xx_is_refused():
    conn = Scripted([("00B0000000", "6101")] + [("00C0000001", "006101")] * 65)
    with pytest.raises(ApduError, match="61xx"):
        transceive(conn, bytes.fromhex("00B0000000"))


@pytest.mark.parametrize(
    ("apdu", "raw"),
    [
        (Apdu(0x00, 0xA4, 0x04, 0x00, bytes.fromhex("A000"), 0), "00A4040002A00000"),
        (Apdu(0xFF, 0xCA, 0, 0, le=0), "FFCA000000"),
        (Apdu(0x80, 0xA4, 0, 0, b"\x3f\x00"), "80A40000023F00"),
        (Apdu(0x00, 0x20, 0, 0), "00200000"),
    ],
)
def test_apdu_encoding(apdu, raw):
    assert bytes(apdu) == bytes.fromhex(raw)


def test_apdu_validation():
    with pytest.raises(ValueError):
        Apdu(0x100, 0, 0, 0)
    with pytest.raises(ValueError):
        Apdu(0, 0, 0, 0, b"x" * 256)
