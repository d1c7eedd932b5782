# SPDX-License-Identifier: Apache-2.0
"""Write the seed inputs of each fuzz target into tests/fuzz/corpus/<target>/seed-*.

Seeds are valid inputs taken from the fixtures (real ATR shapes, the virtual citizen card's
certificate directory, a signed token, a burned record), so the fuzzer starts inside the
formats instead of spending its runs finding the first valid byte. Run again after changing
a format:  .venv/bin/python -m tests.fuzz.make_seeds
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CORPUS = Path(__file__).parent / "corpus"


def _put(target: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)  # noqa: S324 - a name, not security


def main() -> None:
    for atr in (
        "3B8F8001804F0CA000000306030001000000006A",
        "3B8F8001804F0CA0000003060300020000000069",
        "3B818001808080",
        "3BB813008131FA524348544D4F494341A5",
        "3BD896008131FE451F074348544750 4B494ADD".replace(" ", ""),
        "3B8F8001804F0CA0000003060300260000000 04D".replace(" ", ""),
    ):
        _put("atr", bytes.fromhex(atr))
    _put("apdu", bytes([2, 0xAA, 0xBB, 0x61, 0x04, 4, 1, 2, 3, 4, 0x90, 0x00]))
    _put("apdu", bytes([0, 0x6C, 0x10, 16]) + bytes(16) + b"\x90\x00")

    from cardd.moica.gen1 import FilePath  # noqa: F401 - import check only
    from cardd.sim.cards.loader import load_card

    fixtures = Path(__file__).parents[1] / "fixtures"
    card = load_card(fixtures / "moica" / "card.json")
    _put("tlv", card._cdf_content)  # type: ignore[attr-defined]

    from cardd.rfid.idnumber import parse_library_number
    from cardd.rfid.record import encode_record

    blocks = encode_record(parse_library_number("A12345678900"))
    _put("record", b"".join(blocks))

    import base64
    import json

    cert = (fixtures / "moica" / "sign.der").read_bytes()
    _put(
        "token",
        json.dumps(
            {
                "format": "cardd-moica:1",
                "unverifiedCertificate": base64.b64encode(cert).decode(),
                "algorithm": "RS256",
                "signature": base64.b64encode(bytes(256)).decode(),
                "appVersion": "https://cardd.example/1.0",
            }
        ).encode(),
    )
    for text in ("A123456789", "A12345678901", "0412345678", "04:A2:3B:1C", "AB12CD34"):
        _put("numbers", text.encode())
    _put("config", (Path(__file__).parents[2] / "cardd.toml.sample").read_bytes())
    from cardd.kiosk.sip2.messages import checksum

    for body in (
        "941AY0AZ",
        "98YYYNYN60000320240105    0930002.00AOMAIN|AMLib|BXYYYYYYYYYYYYYYYY|AY1AZ",
        "64              00020240105    093000000000000000000000000000AOMAIN|AA1234567890"
        "|AE王小明|BLY|AFWelcome|AY2AZ",
        "24Y   Y        00020240105    093000AOMAIN|AA1|AE|BLN|AY3AZ",
        "36Y20240105    093000AOMAIN|AA1|AY4AZ",
    ):
        frame = body.encode() + checksum(body.encode()).encode() + b"\r"
        _put("sip2", frame)
    for k in range(6):
        _put(
            "framing",
            bytes([k])
            + b"\x020F0012AB34\x03"
            + b"\x020A00B1C2D3\x03"
            + b"\n0F0012AB34\r"
            + b"A12345678900\r\n",
        )


if __name__ == "__main__":
    main()
