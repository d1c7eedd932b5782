# SPDX-License-Identifier: Apache-2.0
"""Fuzz targets: one function per parser that takes untrusted bytes.

Each target feeds the bytes to a parser and lets through only the errors that parser documents
(its CardError subclasses). Anything else escaping — IndexError, struct.error, a RecursionError,
an assertion — is a crash and fails the run. The same targets run under atheris
(tests/fuzz/run.py, coverage-guided, 100,000+ executions each in CI) and replay the kept corpus
(tests/fuzz/corpus/<target>/) on every test run, so each input that once found a bug stays a
regression test.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable

from cardd.errors import CardError, ConfigError

Target = Callable[[bytes], None]
TARGETS: dict[str, Target] = {}


def target(fn: Target) -> Target:
    TARGETS[fn.__name__.removeprefix("fuzz_")] = fn
    return fn


@target
def fuzz_atr(data: bytes) -> None:
    from cardd.readers.atr import parse_atr, parse_contactless
    from cardd.readers.identify import identify

    atr = parse_atr(data)  # documented: never raises, problems are reported in the result
    parse_contactless(atr)
    atr.to_dict() if hasattr(atr, "to_dict") else None
    identify(data)


class _ScriptedCard:
    """A connection that answers from the fuzz input: each answer is len(1) + data + SW(2)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        d = self._data
        if self._pos >= len(d):
            return b"", 0x9000
        n = d[self._pos]
        chunk = d[self._pos + 1 : self._pos + 1 + n]
        sw_bytes = d[self._pos + 1 + n : self._pos + 3 + n].ljust(2, b"\x90")
        self._pos += 3 + n
        return chunk, struct.unpack(">H", sw_bytes)[0]

    def close(self) -> None:
        pass


@target
def fuzz_apdu(data: bytes) -> None:
    """Response chaining (61xx / 6Cxx) against a card that answers anything."""
    from cardd.readers.transport import Apdu, transceive

    if len(data) >= 5:
        try:
            apdu = Apdu(data[0], data[1], data[2], data[3], data[5 : 5 + data[4]], data[4] or None)
            bytes(apdu)
        except ValueError:
            pass
    try:
        transceive(_ScriptedCard(data), bytes.fromhex("00B0000000"))
    except CardError:
        pass


@target
def fuzz_tlv(data: bytes) -> None:
    """PKCS#15 certificate directory (BER TLV) of the citizen certificate card."""
    from cardd.moica.gen1 import parse_certificate_directory

    try:
        parse_certificate_directory(data)
    except CardError:
        pass


@target
def fuzz_record(data: bytes) -> None:
    """The student-card record blocks, and the access bits of a sector trailer."""
    from cardd.rfid.access import decode_access
    from cardd.rfid.record import decode_record

    blocks = data.ljust(48, b"\0")
    try:
        decode_record(blocks[:16], blocks[16:32], blocks[32:48] if len(data) > 40 else None)
    except CardError:
        pass
    decode_access(data[6:10].ljust(4, b"\0")[:3] if len(data) % 2 else data[:3].ljust(3, b"\0"))


@target
def fuzz_token(data: bytes) -> None:
    """The citizen-certificate authentication token as a relying party receives it."""
    from cardd.moica.token import parse_token, parse_token_fields

    for raw in (data, _as_token_json(data)):
        try:
            parse_token_fields(raw)
            parse_token(raw)
        except CardError:
            pass


def _as_token_json(data: bytes) -> bytes:
    """Shape some inputs like a token so the fuzzer gets past the JSON layer quickly."""
    import base64

    half = len(data) // 2
    return json.dumps(
        {
            "format": "cardd-moica:1",
            "unverifiedCertificate": base64.b64encode(data[:half]).decode(),
            "algorithm": "RS256",
            "signature": base64.b64encode(data[half:]).decode(),
            "appVersion": "https://cardd.example/1.0",
        }
    ).encode()


@target
def fuzz_numbers(data: bytes) -> None:
    """National ID, library number and UID text as typed by people or printed on cards."""
    from cardd.rfid.idnumber import parse_library_number, validate_id
    from cardd.rfid.uid import UidForm, parse_uid_text, uid_forms

    text = data.decode("utf-8", "replace")
    for fn in (validate_id, parse_library_number):
        try:
            fn(text)
        except CardError:
            pass
    for form in UidForm:
        try:
            parse_uid_text(text, form)
        except CardError:
            pass
    if len(data) in (4, 7, 10):
        uid_forms(data)


@target
def fuzz_config(data: bytes) -> None:
    """The configuration: a technician's typo must give a ConfigError, nothing else.

    Half the inputs go through tomllib as text; the other half edit the sample configuration's
    tables with values of every type (TOML mutations rarely survive the TOML parser, so this is
    what reaches parse_config's own checks).
    """
    import tomllib

    from cardd.config import parse_config

    if not data:
        return
    if data[0] & 1:
        try:
            raw = tomllib.loads(data[1:].decode("utf-8", "replace"))
        except tomllib.TOMLDecodeError:
            return
    else:
        raw = _mutated_sample(data[1:])
    try:
        parse_config(raw)
    except ConfigError:
        pass


_VALUES: tuple[object, ...] = (
    0,
    -1,
    1,
    2**63,
    0.5,
    -0.0,
    float("nan"),
    True,
    False,
    "",
    "x",
    "127.0.0.1",
    "::1",
    "http://evil.example",
    "https://a.example:8443",
    "null",
    "*",
    [],
    ["readers"],
    ["x", 1],
    {},
    {"scopes": ["moica"]},
    {"scopes": "moica"},
    {"https://a.example": {"scopes": []}},
)


def _mutated_sample(data: bytes) -> dict[str, object]:
    import copy
    import tomllib
    from pathlib import Path

    global _SAMPLE
    if _SAMPLE is None:
        sample = Path(__file__).parents[2] / "cardd.toml.sample"
        _SAMPLE = tomllib.loads(sample.read_text(encoding="utf-8"))
    raw = copy.deepcopy(_SAMPLE)
    tables = [raw] + [v for v in raw.values() if isinstance(v, dict)]
    for i in range(0, len(data) - 2, 3):
        table = tables[data[i] % len(tables)]
        keys = sorted(table) or ["x"]
        key = keys[data[i + 1] % len(keys)] if data[i + 1] < 240 else f"k{data[i + 1]}"
        table[key] = _VALUES[data[i + 2] % len(_VALUES)]
    return raw


_SAMPLE: dict[str, object] | None = None


@target
def fuzz_sip2(data: bytes) -> None:
    """A SIP2 server's byte stream: framing, then parsing and the typed replies a gate reads."""
    from cardd.errors import Sip2MessageInvalid
    from cardd.kiosk.sip2.messages import (
        AcsStatus,
        EndSessionReply,
        Framer,
        PatronReply,
        parse_message,
    )

    framer = Framer(max_frame=512)
    frames: list[bytes] = []
    try:
        for i in range(0, len(data), 7):  # one read is not one frame
            frames += framer.feed(data[i : i + 7])
    except Sip2MessageInvalid:
        pass
    for frame in [*frames, data]:
        for encoding, tolerate in (("utf-8", False), ("cp950", True)):
            try:
                m = parse_message(frame, encoding=encoding, tolerate_non_ascii=tolerate)
            except Sip2MessageInvalid:
                continue
            for reply in (AcsStatus, PatronReply, EndSessionReply):
                try:
                    reply.from_message(m)
                except Sip2MessageInvalid:
                    pass


@target
def fuzz_framing(data: bytes) -> None:
    """Serial reader streams (EM4100 readers, barcode scanners); the first byte picks the preset."""
    from cardd.readers.framing import PRESETS, Em4100Id, FrameDecoder

    if not data:
        return
    name = sorted(PRESETS)[data[0] % len(PRESETS)]  # one preset per input keeps runs fast
    p = PRESETS[name]
    data = data[1:]
    now = 0.0
    decoder = FrameDecoder(p.spec)
    step = 1 + (len(data) % 5)
    for i in range(0, len(data), step):
        now += 0.01 * (data[i] % 4)
        for frame in decoder.feed(data[i : i + step], now):
            if p.role == "rfid":
                try:  # what the serial backend does with an rfid frame (ValueError: counted)
                    Em4100Id.from_hex(frame).to_dict()
                except ValueError:
                    pass
            assert len(frame) <= p.spec.max_length, name
    decoder.poll(now + 10.0)
    # the memory bound holds: at most one frame's worth (markers, checksum) is kept
    assert decoder.pending <= 2 * p.spec.max_length + 16, name
