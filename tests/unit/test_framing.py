# SPDX-License-Identifier: Apache-2.0
"""Serial framing, checksums, EM4100 forms, debounce and the [serial] / [kiosk.gate] config.

Pure logic: every preset at every byte boundary, garbage, partial frames, checksum errors,
the idle rule and the memory bound, fed chunk by chunk with an explicit clock.
"""

from __future__ import annotations

import random
import re

import pytest

from cardd.config import parse_config
from cardd.errors import ConfigError
from cardd.kiosk.gate import GateConfig, lcus_command, parse_gate_config
from cardd.readers.framing import (
    PRESETS,
    Checksum,
    Em4100Id,
    FrameDecoder,
    FrameSpec,
    RepeatFilter,
    checksum_field,
    encode_frame,
    lrc_of,
    preset,
    xor_of,
)
from cardd.readers.serial_config import PortMatch, parse_serial_config

TAG = b"62E3086CED"  # simulation.md §8: RDM6300 checksum 08
TAG2 = b"0415A2B3C4"

#: a payload each preset can carry
SAMPLE = {
    "rdm6300": TAG,
    "parallax": TAG,
    "barcode-cr": b"A12345678901",
    "barcode-lf": b"978-986-00-0000-1",
    "barcode-crlf": b"LIB 0042",
    "barcode-stxetx": b"31234000123456",
}


def decode_chunks(spec: FrameSpec, chunks: list[bytes]) -> tuple[list[bytes], FrameDecoder]:
    d = FrameDecoder(spec)
    out: list[bytes] = []
    for c in chunks:
        out += d.feed(c, 0.0)
    return out, d


def splits(data: bytes) -> list[list[bytes]]:
    """``data`` cut once at every byte boundary, plus one byte per chunk."""
    cuts = [[data[:i], data[i:]] for i in range(len(data) + 1)]
    return cuts + [[bytes([b]) for b in data]]


# -- checksums --------------------------------------------------------------------------------


def test_checksum_vectors():
    assert checksum_field(Checksum.XOR_HEX, TAG) == b"08"
    assert xor_of(bytes.fromhex("62E3086CED")) == 0x08
    assert checksum_field(Checksum.XOR, b"\x01\x02\x04") == b"\x07"
    # ISO 1155: sum + LRC == 0 mod 256
    assert lrc_of(b"ABC") == (-(0x41 + 0x42 + 0x43)) & 0xFF == 0x3A
    assert (sum(b"hello") + lrc_of(b"hello")) & 0xFF == 0
    assert checksum_field(Checksum.XOR_HEX, b"62E3086CE") is None  # odd length
    assert checksum_field(Checksum.XOR_HEX, b"62E3086CEZ") is None  # not hex


def test_rdm6300_frame_matches_the_documented_bytes():
    assert encode_frame(preset("rdm6300").spec, TAG) == b"\x02" + TAG + b"08\x03"
    assert encode_frame(preset("parallax").spec, TAG) == b"\x0a" + TAG + b"\x0d"


# -- every preset, every boundary ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_at_every_byte_boundary(name):
    spec = PRESETS[name].spec
    frame = encode_frame(spec, SAMPLE[name])
    stream = frame * 3
    for chunks in splits(stream):
        out, d = decode_chunks(spec, chunks)
        assert out == [SAMPLE[name]] * 3, chunks
        assert d.pending == 0 and d.stats.garbage_bytes == 0 and d.stats.frames == 3


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_garbage_and_partial_frames_are_skipped_at_every_boundary(name):
    spec = PRESETS[name].spec
    frame = encode_frame(spec, SAMPLE[name])
    # A reader powered up mid-frame: the tail of one frame, then noise, then half a frame cut
    # off by a new one, then a good frame.
    partial = frame[: len(frame) // 2]
    noise = b"\x00\xff~~"
    if not spec.start:
        # Without a start marker only silence tells a cut-off line from a frame: a partial
        # line followed by a pause is dropped, and the next line comes through whole.
        for chunks in splits(noise + partial):
            d = FrameDecoder(spec)
            out = [p for c in chunks for p in d.feed(c, 0.0)]
            out += d.poll(spec.idle_timeout + 0.01)
            out += d.feed(frame, 5.0)
            assert out == [SAMPLE[name]] and d.stats.partial_dropped == 1, chunks
        return
    stream = frame[3:] + noise + partial + frame
    for chunks in splits(stream):
        out, d = decode_chunks(spec, chunks)
        assert out == [SAMPLE[name]], chunks
        assert d.pending == 0 and d.stats.garbage_bytes > 0


def test_bad_checksum_is_counted_and_the_next_frame_still_decoded():
    spec = preset("rdm6300").spec
    bad = b"\x02" + TAG + b"09\x03"
    for chunks in splits(bad + encode_frame(spec, TAG2)):
        out, d = decode_chunks(spec, chunks)
        assert out == [TAG2]
        assert d.stats.bad_checksum == 1 and d.stats.frames == 1


def test_non_hex_rdm6300_body_is_malformed_not_a_crash():
    spec = preset("rdm6300").spec
    out, d = decode_chunks(spec, [b"\x02ZZZZZZZZZZ08\x03" + encode_frame(spec, TAG)])
    assert out == [TAG] and d.stats.malformed == 1


def test_lowercase_hex_checksum_accepted():
    spec = preset("rdm6300").spec
    lower = b"\x02" + TAG.lower() + b"08\x03"
    assert decode_chunks(spec, [lower])[0] == [TAG.lower()]


def test_fixed_length_missing_end_marker_resynchronises():
    spec = preset("rdm6300").spec
    # one byte too many: where ETX should be there is a "7"
    broken = b"\x02" + TAG + b"087\x03"
    out, d = decode_chunks(spec, [broken + encode_frame(spec, TAG2)])
    assert out == [TAG2] and d.stats.malformed >= 1


@pytest.mark.parametrize("kind", [Checksum.XOR, Checksum.LRC])
def test_binary_checksums_with_stx_etx(kind):
    spec = FrameSpec(start=b"\x02", end=b"\x03", checksum=kind)
    payloads = [b"HELLO", b"12345", b"\x01"]
    stream = b"".join(encode_frame(spec, p) for p in payloads)
    for chunks in splits(stream):
        assert decode_chunks(spec, chunks)[0] == payloads
    wrong = b"\x02HELLO" + bytes([checksum_field(kind, b"HELLO")[0] ^ 0x55]) + b"\x03"
    out, d = decode_chunks(spec, [wrong + encode_frame(spec, b"OK")])
    assert out == [b"OK"] and d.stats.bad_checksum == 1


def test_binary_checksum_equal_to_the_end_marker():
    spec = FrameSpec(start=b"\x02", end=b"\x03", checksum=Checksum.XOR)
    payload = b"\x01\x02"  # XOR = 03 = ETX
    assert checksum_field(Checksum.XOR, payload) == b"\x03"
    frame = encode_frame(spec, payload)
    for chunks in splits(frame + encode_frame(spec, b"AB")):
        assert decode_chunks(spec, chunks)[0] == [payload, b"AB"], chunks


def test_binary_checksum_may_equal_the_start_marker():
    spec = FrameSpec(start=b"\x02", end=b"\r", checksum=Checksum.XOR)
    payload = b"\x01\x03"  # XOR = 02 = STX
    for chunks in splits(encode_frame(spec, payload) * 2):
        assert decode_chunks(spec, chunks)[0] == [payload] * 2


def test_multibyte_markers_split_anywhere():
    spec = FrameSpec(start=b"\x1b[", end=b"\r\n")
    stream = b"noise\x1b" + b"\x1b[ONE\r\n" + b"\r\x1b[TWO\r\n"
    for chunks in splits(stream):
        assert decode_chunks(spec, chunks)[0] == [b"ONE", b"TWO"], chunks


def test_strip_prefix_only_when_present():
    spec = FrameSpec(end=b"\r", strip_prefix=b"]E0")
    out, _ = decode_chunks(spec, [b"]E04710000000001\rPLAIN\r"])
    assert out == [b"4710000000001", b"PLAIN"]


def test_tab_suffix():
    spec = FrameSpec(end=b"\t")
    assert decode_chunks(spec, [b"A\tB\t"])[0] == [b"A", b"B"]


# -- idle rule ----------------------------------------------------------------------------------


def test_no_suffix_scanner_frames_on_silence():
    spec = FrameSpec(idle_timeout=0.1)
    d = FrameDecoder(spec)
    assert d.feed(b"9789", 1.00) == []
    assert d.feed(b"8600", 1.05) == []  # still within the idle time: same scan
    assert d.poll(1.10) == []
    assert d.poll(1.16) == [b"97898600"]
    # the next scan, after a pause, arriving in pieces
    assert d.feed(b"12", 5.0) == [] and d.feed(b"34", 5.01) == []
    # a chunk after a long pause first ends the pending scan
    assert d.feed(b"56", 9.0) == [b"1234"]
    assert d.poll(9.2) == [b"56"]


def test_partial_frame_dropped_after_silence():
    spec = preset("barcode-cr").spec
    d = FrameDecoder(spec)
    assert d.feed(b"half-a-sc", 0.0) == []
    assert d.poll(0.1) == []
    assert d.poll(10.0) == [] and d.stats.partial_dropped == 1 and d.pending == 0
    assert d.feed(b"WHOLE\r", 11.0) == [b"WHOLE"]
    # the same with a fixed-length reader: a half frame does not join the next one
    d = FrameDecoder(preset("rdm6300").spec)
    frame = encode_frame(d.spec, TAG)
    assert d.feed(frame[:6], 0.0) == []
    assert d.feed(frame, 5.0) == [TAG]
    assert d.stats.partial_dropped == 1


# -- memory bound ---------------------------------------------------------------------------


def test_max_length_bounds_the_buffer_and_drops_the_whole_line():
    spec = FrameSpec(end=b"\r", max_length=16)
    d = FrameDecoder(spec)
    out = []
    for _ in range(1000):
        out += d.feed(b"x" * 7, 0.0)
        assert d.pending <= 16 + 1
    out += d.feed(b"tail-of-long\rGOOD\r", 0.0)
    # the tail of the over-long line never comes out as a frame of its own
    assert out == [b"GOOD"] and d.stats.too_long == 1


def test_max_length_with_start_marker_resynchronises():
    spec = FrameSpec(start=b"\x02", end=b"\x03", max_length=8)
    d = FrameDecoder(spec)
    out = d.feed(b"\x02" + b"y" * 100, 0.0)
    out += d.feed(b"\x02OK\x03", 0.0)
    assert out == [b"OK"] and d.stats.too_long >= 1 and d.pending == 0


def test_no_marker_no_length_is_bounded_too():
    d = FrameDecoder(FrameSpec(max_length=10))
    d.feed(b"z" * 25, 0.0)
    assert d.pending <= 10 and d.stats.too_long == 1


def test_random_noise_never_crashes_and_frames_survive():
    rng = random.Random(1234)
    for name, p in PRESETS.items():
        spec = p.spec
        frame = encode_frame(spec, SAMPLE[name])
        markers = set(spec.start + spec.end)
        for _ in range(50):
            # noise that holds no marker byte, so every frame after it must come through whole
            noise = bytes(b for b in rng.randbytes(rng.randrange(0, 40)) if b not in markers)
            stream = noise + frame + noise + frame
            cuts = sorted(rng.sample(range(1, len(stream)), min(5, len(stream) - 1)))
            chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
            out, d = decode_chunks(spec, chunks)
            if spec.start:
                assert out == [SAMPLE[name]] * 2
            else:
                # no start marker: noise sent without a pause joins the line it precedes
                assert len(out) == 2 and out[-1].endswith(SAMPLE[name])
            assert d.pending <= spec.max_length + 8
        # and pure noise, markers included
        d = FrameDecoder(spec)
        for _ in range(200):
            d.feed(rng.randbytes(rng.randrange(1, 64)), 0.0)
            assert d.pending <= spec.max_length + 8


def test_frame_spec_rejects_nonsense():
    with pytest.raises(ValueError):
        FrameSpec(length=0)
    with pytest.raises(ValueError):
        FrameSpec(start=b"\x02", end=b"\x02")
    with pytest.raises(ValueError):
        FrameSpec(idle_timeout=0)
    with pytest.raises(ValueError):
        preset("nope")


# -- EM4100 forms -----------------------------------------------------------------------------


def test_em4100_forms():
    tag = Em4100Id.from_hex(TAG)
    assert tag.hex == "62E3086CED"
    assert tag.decimal10 == "3808980205"  # 0xE3086CED
    assert tag.wiegand == "008,27885"  # 0x08, 0x6CED
    assert tag.to_dict() == {"hex": "62E3086CED", "decimal10": "3808980205", "wiegand": "008,27885"}
    small = Em4100Id.from_hex("0000000105")
    assert small.decimal10 == "0000000261" and small.wiegand == "000,00261"
    assert Em4100Id.from_hex(b"62e3086ced").hex == "62E3086CED"
    for bad in (b"62E3086CE", b"62E3086CEG", "62E3086CED00"):
        with pytest.raises(ValueError):
            Em4100Id.from_hex(bad)


# -- debounce -----------------------------------------------------------------------------------


def test_repeating_rfid_reported_again_only_after_absence():
    f = RepeatFilter(0.5, extend=True)
    # RDM6300 repeats every ~0.1 s while the tag is held for 3 s: one report
    held = [f.accept("A", t / 10) for t in range(30)]
    assert held.count(True) == 1 and held[0]
    assert f.accept("A", 3.3) is False  # gap 0.4 s since the last repeat: still the same visit
    assert f.accept("A", 3.8) is True  # absent 0.5 s: a new tap
    assert f.accept("B", 3.81) is True  # another tag at once
    assert f.accept("A", 3.82) is True  # and back: different from the last one


def test_barcode_duplicate_window_is_fixed_from_the_report():
    f = RepeatFilter(1.0, extend=False)
    assert f.accept("X", 0.0) is True
    assert f.accept("X", 0.6) is False
    assert f.accept("X", 1.0) is True  # the window counts from the last report, not the repeat
    assert f.accept("Y", 1.1) is True
    assert f.accept("X", 1.2) is True


# -- [serial] config ----------------------------------------------------------------------------


def test_serial_config_presets_and_overrides():
    cfg = parse_config(
        {
            "serial": {
                "devices": [
                    {"name": "door", "vid": "1a86", "pid": "7523", "preset": "rdm6300"},
                    {
                        "name": "desk",
                        "port": "/dev/cardd/scanner",
                        "preset": "barcode-cr",
                        "strip_prefix": "]E0",
                        "duplicate_window": 2,
                    },
                    {"name": "wedge", "port": "/dev/ttyACM0", "role": "barcode", "suffix": "tab"},
                    {
                        "name": "boxed",
                        "port": "/dev/ttyS0",
                        "role": "barcode",
                        "stx_etx": True,
                        "suffix": "cr",
                        "checksum": "lrc",
                    },
                    {"name": "bare", "port": "/dev/ttyS1", "role": "barcode", "suffix": "none"},
                    {"name": "parallax", "port": "/dev/ttyUSB1", "preset": "parallax"},
                ]
            }
        }
    )
    door, desk, wedge, boxed, bare, parallax = cfg.serial.devices
    assert door.match == PortMatch(vid=0x1A86, pid=0x7523) and door.role == "rfid"
    assert (
        door.spec == PRESETS["rdm6300"].spec and door.baudrate == 9600 and door.rearm_after == 0.5
    )
    assert (
        desk.spec.end == b"\r" and desk.spec.strip_prefix == b"]E0" and desk.duplicate_window == 2.0
    )
    assert wedge.spec.end == b"\t" and wedge.spec.start == b""
    assert boxed.spec.start == b"\x02" and boxed.spec.end == b"\x03\r"
    assert boxed.spec.checksum is Checksum.LRC
    assert bare.spec.flushes_on_idle
    assert parallax.baudrate == 2400


@pytest.mark.parametrize(
    ("device", "fragment"),
    [
        ({"name": "a", "port": "/x", "preset": "rdm6300", "colour": "red"}, "unknown key"),
        ({"port": "/x", "preset": "rdm6300"}, "needs a name"),
        ({"name": "a", "preset": "rdm6300"}, "vid and pid"),
        (
            {"name": "a", "port": "/x", "vid": "1a86", "pid": "7523", "preset": "rdm6300"},
            "not both",
        ),
        ({"name": "a", "vid": "zz", "pid": "7523", "preset": "rdm6300"}, "USB id"),
        ({"name": "a", "port": "/x", "preset": "rdm9999"}, "unknown preset"),
        ({"name": "a", "port": "/x"}, "role"),
        (
            {"name": "a", "port": "/x", "role": "barcode", "end": "0D", "suffix": "cr"},
            "end or suffix",
        ),
        ({"name": "a", "port": "/x", "role": "barcode", "suffix": "semicolon"}, "suffix"),
        ({"name": "a", "port": "/x", "role": "barcode", "stx_etx": True, "end": "03"}, "stx_etx"),
        ({"name": "a", "port": "/x", "role": "barcode", "end": "0G"}, "hex"),
        ({"name": "a", "port": "/x", "role": "barcode", "checksum": "crc32"}, "checksum"),
        ({"name": "a", "port": "/x", "preset": "rdm6300", "length": 8}, "length must be 10"),
        ({"name": "a", "port": "/x", "preset": "rdm6300", "rearm_after": 0}, "positive"),
        ({"name": "a", "port": "/x", "preset": "rdm6300", "baudrate": True}, "expected int"),
        ({"name": "a", "port": "/x", "preset": "barcode-cr", "encoding": "klingon"}, "encoding"),
    ],
)
def test_serial_config_errors(device, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_serial_config({"devices": [device]}, "cardd.toml")


def test_serial_config_duplicate_names_and_unknown_section_keys():
    dev = {"name": "a", "port": "/x", "preset": "rdm6300"}
    with pytest.raises(ConfigError, match="used twice"):
        parse_serial_config({"devices": [dev, dev]}, "cardd.toml")
    with pytest.raises(ConfigError, match="unknown key"):
        parse_serial_config({"device": [dev]}, "cardd.toml")
    with pytest.raises(ConfigError, match=r"\[\[serial.devices\]\]"):
        parse_serial_config({"devices": {"name": "a"}}, "cardd.toml")
    assert parse_config({}).serial.devices == ()


# -- [kiosk.gate] config --------------------------------------------------------------------------


def test_gate_config_lcus_defaults_and_channels():
    assert lcus_command(1, True) == bytes.fromhex("A00101A2")
    assert lcus_command(1, False) == bytes.fromhex("A00100A1")
    g = parse_gate_config({"vid": "1a86", "pid": "7523"}, "[kiosk.gate]")
    assert g.driver == "serial-relay" and g.match == PortMatch(vid=0x1A86, pid=0x7523)
    assert g.on_command == bytes.fromhex("A00101A2") and g.off_command == bytes.fromhex("A00100A1")
    assert g.pulse == 1.0 and g.baudrate == 9600
    g2 = parse_gate_config({"port": "/dev/cardd/relay", "channel": 2, "pulse": 0.5}, "[kiosk.gate]")
    assert g2.on_command == bytes.fromhex("A00201A3") and g2.off_command == bytes.fromhex(
        "A00200A2"
    )
    g3 = parse_gate_config({"port": "/x", "on": "FF 01 01", "off": "FF 01 00"}, "[kiosk.gate]")
    assert g3.on_command == b"\xff\x01\x01"
    assert parse_gate_config({}, "[kiosk.gate]") == GateConfig()
    off = parse_gate_config({"driver": "none", "port": "/x"}, "[kiosk.gate]")
    assert off.driver == "none" and off.match is None


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"driver": "gpio"}, "driver"),
        ({"driver": "serial-relay"}, "port or vid/pid"),
        ({"port": "/x", "pulse": 0}, "pulse"),
        ({"port": "/x", "pulse": 60}, "pulse"),
        ({"port": "/x", "on": "A0 01 01 A2"}, "both"),
        ({"port": "/x", "on": "A0", "off": "A0"}, "differ"),
        ({"port": "/x", "on": "zz", "off": "A0"}, "hex"),
        ({"port": "/x", "on": "A1", "off": "A0", "channel": 2}, "channel"),
        ({"port": "/x", "channel": 0}, "channel"),
        ({"port": "/x", "relay": 1}, "unknown key"),
        ({"port": "/x", "vid": "1a86", "pid": "7523"}, "not both"),
    ],
)
def test_gate_config_errors(table, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_gate_config(table, "[kiosk.gate]")


def _sample_block(header: str) -> str:
    """The commented example after ``header`` in cardd.toml.sample, uncommented one level."""
    from pathlib import Path

    lines = (Path(__file__).parents[2] / "cardd.toml.sample").read_text().splitlines()
    start = lines.index(header)
    out = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        body = line[2:] if line.startswith("# ") else line[1:]
        if body.startswith("[") or re.match(r"^[a-z_]+ = ", body):
            out.append(body)
    return "\n".join(out)


def test_the_sample_examples_parse():
    import tomllib

    serial = tomllib.loads(_sample_block("# [[serial.devices]]"))
    (door,) = parse_serial_config(serial["serial"], "sample").devices
    assert door.name == "entrance-rfid" and door.spec == PRESETS["rdm6300"].spec
    gate = tomllib.loads(_sample_block("# [kiosk.gate]"))["kiosk"]["gate"]
    assert parse_gate_config(gate, "sample").on_command == bytes.fromhex("A00101A2")
