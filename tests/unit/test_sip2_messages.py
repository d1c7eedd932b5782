# SPDX-License-Identifier: Apache-2.0
"""SIP2 messages (cardd.kiosk.sip2.messages) and [kiosk.sip2] parsing: pure logic, no sockets."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from cardd import errors as E
from cardd.kiosk.patron import PatronStatus
from cardd.kiosk.sip2 import messages as M
from cardd.kiosk.sip2.config import Sip2Config, parse_sip2_config

WHEN = dt.datetime(2024, 1, 5, 9, 30, 0)

# -- checksums ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("covered", "expected"),
    [
        # Evergreen t/0001_checksum.t, as recomputed in kiosk.md §1.4
        ("990 402.00AY1AZ", "FCB4"),
        ("941AY0AZ", "FDFD"),
        ("97AZ", "FEF5"),
        ("96AZ", "FEF6"),
    ],
)
def test_checksum_vectors(covered, expected):
    assert M.checksum(covered.encode()) == expected
    # the verification rule: message sum + checksum == 0 (mod 0x10000)
    assert (sum(covered.encode()) + int(expected, 16)) & 0xFFFF == 0


def test_checksum_keeps_leading_zeros():
    # the PyPI `sip2` client drops leading zeros below 0x1000 (kiosk.md §2); we must not
    data = bytes([0xFF] * 256)  # sum 0xFF00 -> checksum 0x0100
    assert sum(data) & 0xFFFF == 0xFF00
    assert M.checksum(data) == "0100"


@pytest.mark.parametrize(
    ("frame", "body"),
    [
        (b"9300CNkiosk1|COsecret|CPGATE1|AY0AZF47B", M.login("kiosk1", "secret", "GATE1")),
        (b"9900302.00AY1AZFCA5", M.sc_status()),
        (
            b"6300020240105    093000          AOMAIN|AA1234567890|AC|AY2AZF2EA",
            M.patron_information(WHEN, "MAIN", "1234567890"),
        ),
    ],
)
def test_kiosk_md_examples_are_what_we_send(frame, body):
    seq = int(frame[frame.index(b"AY") + 2 : frame.index(b"AY") + 3])
    assert M.encode_frame(body, sequence=seq) == frame + b"\r"
    assert M.encode_frame(body, sequence=seq, terminator=b"\r\n") == frame + b"\r\n"


def test_resend_requests_carry_no_sequence():
    assert M.REQUEST_ACS_RESEND == b"97AZFEF5"
    assert M.REQUEST_SC_RESEND == b"96AZFEF6"
    assert M.parse_message(b"96AZFEF6").id == "96"


def test_checksum_is_over_the_encoded_bytes():
    body = M.build("24", (" " * 14, "000", M.sip_date(WHEN)), [("AO", "MAIN"), ("AE", "林美玲")])
    for encoding in ("utf-8", "cp950"):
        frame = M.encode_frame(body, sequence=3, encoding=encoding)
        data = body.encode(encoding) + b"AY3AZ"
        assert frame == data + M.checksum(data).encode() + b"\r"
        msg = M.parse_message(frame, encoding=encoding)
        assert msg.get("AE") == "林美玲" and msg.checksum_note is None
    # the sums really differ between the encodings and the characters
    assert M.checksum(body.encode("utf-8")) != M.checksum(body.encode("cp950"))


# -- round trips ------------------------------------------------------------------------------------


def _fixed_values(msg_id):
    return tuple(
        ("Y" * width) if name.endswith("ok") else ("7" * width)
        for name, width in M.FIXED_FIELDS[msg_id]
    )


@pytest.mark.parametrize("msg_id", sorted(M.FIXED_FIELDS))
@pytest.mark.parametrize("sequence", [None, 0, 9])
def test_round_trip_every_message(msg_id, sequence):
    fields = (
        []
        if msg_id in ("96", "97")
        else [("AO", "MAIN"), ("AF", "one"), ("AF", "two|pipe"), ("AA", "")]
    )
    fixed = _fixed_values(msg_id)
    body = M.build(msg_id, fixed, fields)
    if msg_id in ("96", "97"):
        sequence = None
    frame = M.encode_frame(body, sequence=sequence)
    msg = M.parse_message(frame)
    assert msg.id == msg_id
    assert tuple(msg.fixed.values()) == fixed
    assert list(msg.fields) == fields
    assert msg.sequence == sequence and msg.checksummed
    if fields:
        assert msg.all("AF") == ["one", "two|pipe"]
        assert msg.as_lists()["AF"] == ["one", "two|pipe"]
        assert msg.get("AA") == "" and msg.get("ZZ") is None
        assert b"two&#124;pipe|" in frame  # escaped on the wire (Evergreen add_field)


def test_round_trip_without_error_detection():
    frame = M.encode_frame(M.sc_status(), sequence=None, error_detection=False)
    assert frame == b"9900302.00\r"
    msg = M.parse_message(frame)
    assert msg.sequence is None and not msg.checksummed
    assert msg.fixed["protocol_version"] == "2.00"


def test_last_field_without_its_pipe_and_stray_line_ends():
    msg = M.parse_message(
        b"\n24              00020240105    093000AOMAIN|AA42|AEZo\xc3\xab|BLY\r\n"
    )
    assert msg.get("BL") == "Y" and msg.get("AE") == "Zoë" and msg.get("AA") == "42"


def test_sequence_and_checksum_are_taken_from_the_end_only():
    # a value that looks like a trailer inside a field is data, not a trailer
    body = M.build("36", ("Y", M.sip_date(WHEN)), [("AF", "AY5AZ1234")])
    msg = M.parse_message(M.encode_frame(body, sequence=4))
    assert msg.sequence == 4 and msg.get("AF") == "AY5AZ1234"


# -- typed replies -----------------------------------------------------------------------------------


def test_acs_status_reply():
    frame = (
        b"98YYNYNN030003"
        + M.sip_date(WHEN).encode()
        + b"2.00AOMAIN|AMTest|BXYNNNYYYYYNNNNNNN|AFhello|"
    )
    acs = M.AcsStatus.from_message(M.parse_message(frame))
    assert acs.online and not acs.offline_ok
    assert acs.timeout == 3.0 and acs.retries == 3  # timeout period in tenths of a second
    assert (
        acs.institution == "MAIN"
        and acs.library_name == "Test"
        and acs.screen_messages == ("hello",)
    )
    assert acs.supports("23") is True and acs.supports("11") is False and acs.supports("63") is True
    unknown = M.parse_message(frame.replace(b"030003", b"999999"))
    acs = M.AcsStatus.from_message(unknown)
    assert acs.timeout is None and acs.retries is None


def test_patron_reply_unknown_shape_and_flags():
    # Evergreen's unknown patron: YYYY + blanks, empty AE, BL N
    frame = (
        b"24YYYY          000" + M.sip_date(WHEN).encode() + b"AOMAIN|AA99|AE|BLN|AFUnknown patron|"
    )
    reply = M.PatronReply.from_message(M.parse_message(frame))
    status = PatronStatus.from_status_field(
        "99", reply.status, valid=reply.valid, personal_name=reply.personal_name
    )
    assert status.unknown_shape and status.valid is False and status.charge_privileges_denied
    # a lost card (position 5) on a valid patron, two AF lines
    frame = (
        b"64    Y         000"
        + M.sip_date(WHEN).encode()
        + b"0000" * 6
        + b"AOMAIN|AA7|AELin|BLY|AFLost|AFSee desk|PA20301231|"
    )
    reply = M.PatronReply.from_message(M.parse_message(frame))
    assert reply.valid is True and reply.screen_messages == ("Lost", "See desk")
    assert reply.extra["PA"] == ("20301231",)
    status = PatronStatus.from_status_field("7", reply.status, valid=reply.valid)
    assert status.card_reported_lost and not status.charge_privileges_denied


def test_login_and_end_session_replies():
    assert M.login_ok(M.parse_message(b"941AY0AZFDFD"))
    assert not M.login_ok(M.parse_message(b"940"))
    assert M.EndSessionReply.from_message(M.parse_message(b"36Y" + M.sip_date(WHEN).encode())).ended
    with pytest.raises(E.Sip2MessageInvalid):
        M.login_ok(M.parse_message(b"96"))


# -- checksum failures ---------------------------------------------------------------------------------


def test_wrong_checksum_on_ascii_reply_raises():
    with pytest.raises(E.Sip2ChecksumMismatch) as info:
        M.parse_message(b"941AY0AZFDFE")
    assert not info.value.non_ascii
    assert info.value.code == "sip2_checksum_mismatch"


def test_non_ascii_checksum_mismatch_is_flagged_then_tolerated():
    body = M.build("24", (" " * 14, "000", M.sip_date(WHEN)), [("AE", "Zoë")])
    good = M.encode_frame(body, sequence=1, terminator=b"")
    bad = good[:-4] + f"{(int(good[-4:], 16) + 1) & 0xFFFF:04X}".encode()
    with pytest.raises(E.Sip2ChecksumMismatch) as info:
        M.parse_message(bad)
    assert info.value.non_ascii
    msg = M.parse_message(bad, tolerate_non_ascii=True)
    assert msg.get("AE") == "Zoë" and "non-ASCII" in (msg.checksum_note or "")


def test_checksum_over_code_points_is_accepted_with_a_note():
    # an older Koha summed characters instead of bytes (kiosk.md §1.4)
    text = "24" + " " * 14 + "000" + M.sip_date(WHEN) + "AE林美玲|AY1AZ"
    by_chars = f"{(-sum(map(ord, text))) & 0xFFFF:04X}"
    msg = M.parse_message((text + by_chars).encode("utf-8"))
    assert msg.get("AE") == "林美玲" and "characters" in (msg.checksum_note or "")


def test_bytes_invalid_in_the_encoding_are_replaced_and_noted():
    body = ("24" + " " * 14 + "000" + M.sip_date(WHEN) + "AE林|").encode("cp950")
    msg = M.parse_message(body, encoding="utf-8")
    assert msg.decode_note and "utf-8" in msg.decode_note
    assert "\ufffd" in (msg.get("AE") or "")


# -- garbage ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\r",
        b"9",
        b"XX",
        b"12",  # unknown id
        b"94",  # fixed field missing
        b"98YYNYNN030",  # truncated fixed fields
        b"24" + b" " * 10,
        b"941|X|",  # a variable field without an id
        b"941AO",  # ok: AO empty without pipe? no: a 2-char piece is a field with an empty value
        b"94\x001",
        b"941\r941",
        b"\xff\xfe\x00",
        b"941AY0AZZZZZ",  # not hex: no trailer, and 'AY0AZZZZZ' is one field 'AY' = '0AZZZZZ'
        b"9" * 70000,
    ],
)
def test_garbage_raises_a_clear_error_or_parses(frame):
    try:
        msg = M.parse_message(frame)
    except E.Sip2MessageInvalid as e:
        assert e.code in ("sip2_message_invalid", "sip2_checksum_mismatch")
        assert str(e)
    else:
        assert msg.id in M.FIXED_FIELDS


def test_parser_fuzz_never_raises_anything_else():
    rng = random.Random(0x5192)
    seeds = [
        M.encode_frame(M.login("u", "p", "l"), sequence=0),
        b"64    Y         000" + M.sip_date(WHEN).encode() + b"0000" * 6 + b"AOMAIN|AA7|AELin|BLY|",
        b"98YYNYNN030003" + M.sip_date(WHEN).encode() + b"2.00AOMAIN|BXYYYY|AY1AZ0000",
    ]
    parsed = 0
    for i in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                del data[min(pos, len(data) - 1)]
            elif op == 1:
                data.insert(pos, rng.randrange(256))
            else:
                data[pos:pos] = rng.choice(
                    [b"|", b"AY", b"AZ", b"\r", b"\n", b"&#124;", b"\xe6\x9e"]
                )
        if i % 10 == 0:
            data = bytearray(rng.randbytes(rng.randrange(40)))
        try:
            M.parse_message(bytes(data), encoding=rng.choice(["utf-8", "cp950", "cp850"]))
            parsed += 1
        except E.Sip2MessageInvalid:
            pass
    assert 0 < parsed < 3000  # both outcomes were exercised


def test_parser_refuses_non_bytes():
    with pytest.raises(E.Sip2MessageInvalid):
        M.parse_message("941")  # type: ignore[arg-type]


# -- framing ----------------------------------------------------------------------------------------------


def test_framer_cr_crlf_and_split_reads():
    stream = b"941AY0AZFDFD\r\n96AZFEF6\r\n\n941\r"
    f = M.Framer()
    got = []
    for i in range(len(stream)):  # one byte per read: one read is not one frame
        got += f.feed(stream[i : i + 1])
    assert got == [b"941AY0AZFDFD", b"96AZFEF6", b"941"]
    assert M.Framer().feed(stream) == got
    assert f.pending == 0


def test_framer_refuses_a_peer_that_never_sends_cr():
    f = M.Framer(max_frame=100)
    f.feed(b"9" * 100)
    with pytest.raises(E.Sip2MessageInvalid, match="no CR"):
        f.feed(b"9")
    assert f.pending == 0  # usable again afterwards
    assert f.feed(b"941\r") == [b"941"]


# -- building refusals ----------------------------------------------------------------------------------------


def test_build_refuses_what_would_break_the_frame():
    with pytest.raises(E.InvalidInput, match="CR or LF"):
        M.patron_information(WHEN, "MAIN", "12\r34")
    with pytest.raises(E.InvalidInput, match="characters"):
        M.build("94", ("10",))
    with pytest.raises(E.InvalidInput, match="longer"):
        M.build("94", ("1",), [("AF", "x" * 256)])
    with pytest.raises(E.InvalidInput, match="not one cardd knows"):
        M.build("11")
    with pytest.raises(E.InvalidInput, match="cannot be sent"):
        M.encode_frame(M.build("94", ("1",), [("AE", "林")]), sequence=0, encoding="ascii")
    with pytest.raises(E.InvalidInput):
        M.encode_frame("941", sequence=10)


def test_requests_have_the_fields_servers_require():
    # 23: AO, AA, AC and AD are all required (empty ones are sent)
    msg = M.parse_message(M.encode_frame(M.patron_status(WHEN, "MAIN", "42"), sequence=0))
    assert [fid for fid, _ in msg.fields] == ["AO", "AA", "AC", "AD"]
    msg = M.parse_message(M.encode_frame(M.patron_information(WHEN, "MAIN", "42"), sequence=0))
    assert msg.fixed["summary"] == " " * 10 and msg.fixed["language"] == "000"
    msg = M.parse_message(M.encode_frame(M.end_patron_session(WHEN, "MAIN", "42"), sequence=0))
    assert msg.id == "35" and msg.get("AA") == "42"
    msg = M.parse_message(M.encode_frame(M.login("u", "p"), sequence=0))
    assert msg.fixed["uid_algorithm"] == "0" and msg.fixed["pwd_algorithm"] == "0"


# -- what reaches a log ------------------------------------------------------------------------------------------


def test_patron_ids_are_masked():
    assert M.mask_patron_id("1234567890") == "12****7890"
    assert M.mask_patron_id("A123456789") == "A1****6789"
    assert M.mask_patron_id("12345678") == "****5678"
    assert M.mask_patron_id("123456") == "***456"
    assert M.mask_patron_id("1234") == "****"


def test_redacted_frames_hide_passwords_names_and_ids():
    login = M.encode_frame(M.login("kiosk1", "s3cret!", "GATE1"), sequence=0)
    text = M.redact_frame(login)
    assert "s3cret" not in text and "kiosk1" in text and "GATE1" in text
    reply = (
        b"24YYYY          000"
        + M.sip_date(WHEN).encode()
        + "AOMAIN|AA1234567890|AE林美玲|ACterm|BLY|AY1AZ0000".encode()
    )
    text = M.redact_frame(reply)
    assert "1234567890" not in text and "12****7890" in text
    assert "林美玲" not in text and "term" not in text and "BLY|" in text
    assert "1234567890" not in M.redact_frame(b"\xff garbage AA1234567890|")


# -- [kiosk.sip2] -------------------------------------------------------------------------------------------------

W = "cardd.toml [kiosk.sip2]"


def test_config_defaults():
    cfg = parse_sip2_config({"host": "ils.example.tw"}, W)
    assert cfg == Sip2Config(host="ils.example.tw")
    assert (cfg.port, cfg.timeout, cfg.keepalive_interval, cfg.patron_request) == (
        6001,
        3.0,
        60.0,
        "63",
    )
    assert cfg.encoding == "utf-8" and cfg.terminator_bytes == b"\r" and cfg.error_detection


def test_config_full_and_password_never_in_repr(tmp_path):
    pw = tmp_path / "sip2.pw"
    pw.write_text("topsecret\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cfg = parse_sip2_config(
        {
            "host": "10.0.0.5",
            "port": 6443,
            "user": "gate1",
            "password_file": str(pw),
            "institution": "TPML",
            "terminal_password": "tp",
            "location": "B1",
            "patron_request": "23",
            "timeout": 2,
            "keepalive_interval": 90,
            "encoding": "Big5",
            "terminator": "crlf",
            "resends": 1,
            "tls": True,
            "tls_ca_file": str(ca),
            "tls_server_name": "ils.example.tw",
        },
        W,
    )
    assert (
        cfg.password == "topsecret" and cfg.encoding == "big5" and cfg.terminator_bytes == b"\r\n"
    )
    assert cfg.tls_ca_file == ca and cfg.patron_request == "23" and cfg.timeout == 2.0
    assert "topsecret" not in repr(cfg) and "'tp'" not in repr(cfg)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ({}, "host is required"),
        ({"host": "h", "hots": 1}, "unknown key"),
        ({"host": "h", "port": 0}, "port"),
        ({"host": "h", "port": True}, "port must be a number"),
        ({"host": "h", "password": "a", "password_file": "/x"}, "not both"),
        ({"host": "h", "password_file": "/nonexistent/pw"}, "password_file"),
        ({"host": "h", "password": 5}, r"password must be str, got \*\*\*"),
        ({"host": "h", "patron_request": "11"}, "patron_request"),
        ({"host": "h", "timeout": 0}, "timeout"),
        ({"host": "h", "keepalive_interval": 1, "timeout": 3}, "keepalive_interval"),
        ({"host": "h", "encoding": "klingon"}, "not known"),
        ({"host": "h", "encoding": "utf-16"}, "ASCII-compatible"),
        ({"host": "h", "terminator": "LF"}, "terminator"),
        ({"host": "h", "tls_ca_file": "/x"}, "tls is false"),
        ({"host": "h", "tls": True, "tls_ca_file": "/nonexistent.pem"}, "does not exist"),
        ({"host": "h", "institution": "A|B"}, "must not contain"),
        ({"host": "h", "resends": 10}, "resends"),
    ],
)
def test_config_refusals(table, match):
    with pytest.raises(E.ConfigError, match=match) as info:
        parse_sip2_config(table, W)
    assert str(info.value).startswith(W)


def test_config_keepalive_off():
    assert parse_sip2_config({"host": "h", "keepalive_interval": 0}, W).keepalive_interval == 0
