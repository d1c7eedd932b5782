# SPDX-License-Identifier: Apache-2.0
"""Pure parts of the nfcpy path: sensed targets → taps, presence, open errors, [nfc] config."""

from __future__ import annotations

import errno

import pytest

from cardd.config import parse_config
from cardd.errors import ConfigError
from cardd.readers.nfc_config import NfcConfig, check_device_path, parse_nfc_config
from cardd.readers.nfc_targets import (
    PresenceTracker,
    explain_open_error,
    identifier_forms,
    sensed_tag,
)
from cardd.rfid.taps import tap_data
from cardd.rfid.uid import uid_forms

# -- targets ----------------------------------------------------------------------------------


def test_type_a_tap_has_the_pcsc_tap_shape_and_forms():
    uid = bytes.fromhex("93A131C0")
    tag = sensed_tag("106A", sens_res=b"\x04\x00", sel_res=b"\x08", sdd_res=uid)
    assert tag is not None
    data = tag.tap_data("r")
    pcsc = tap_data("r", uid, {"atr": None, "cardType": "mifare_classic_1k", "cardLabel": "x"})
    assert set(pcsc) <= set(data)
    assert data["uid"] == pcsc["uid"] == uid_forms(uid).to_dict()
    assert data["uid"]["decLE"] == "3224478099"  # contactless.md §2, the EasyCard 內碼
    assert (data["cardType"], data["atr"], data["randomUid"], data["technology"]) == (
        "mifare_classic_1k",
        None,
        False,
        "106A",
    )


@pytest.mark.parametrize(
    ("sak", "card_type"),
    [
        (0x00, "mifare_ultralight"),
        (0x08, "mifare_classic_1k"),
        (0x18, "mifare_classic_4k"),
        (0x09, "mifare_mini"),
        (0x20, "iso14443_4"),
        (0x28, "iso14443_4"),
        (0x40, "contactless_other"),
        (0x11, "contactless_other"),
    ],
)
def test_type_a_card_type_from_sak(sak, card_type):
    tag = sensed_tag(
        "106A", sens_res=b"\x44\x00", sel_res=bytes([sak]), sdd_res=bytes.fromhex("04A1B2C3D4E5F6")
    )
    assert tag is not None and tag.card_type.value == card_type


def test_random_uid_only_for_4_byte_08():
    def rnd(uid: str) -> bool:
        tag = sensed_tag("106A", sens_res=b"\x04\x00", sel_res=b"\x20", sdd_res=bytes.fromhex(uid))
        assert tag is not None
        return tag.random_uid

    assert rnd("08123456") and not rnd("93A131C0") and not rnd("08A1B2C3D4E5F6")


def test_type_b_felica_topaz_and_garbage():
    b = sensed_tag("106B", sensb_res=bytes.fromhex("50A1B2C3D4000000000000"))
    assert b is None  # 11 bytes: too short
    b = sensed_tag("106B", sensb_res=bytes.fromhex("50A1B2C3D400000000718185"))
    assert b is not None and b.identifier == bytes.fromhex("A1B2C3D4") and not b.random_uid
    f = sensed_tag("212F", sensf_res=bytes.fromhex("01012E4CD2A3B4C5D60120220427674EFF0003"))
    assert f is not None and f.card_type.value == "felica"
    assert f.tap_data("r")["uid"]["hex"] == "012E4CD2A3B4C5D6"
    phone = sensed_tag("212F", sensf_res=bytes.fromhex("0101FE01020304050607080000000000000000"))
    assert phone is not None and phone.card_type.value == "contactless_other"
    topaz = sensed_tag("106A", sens_res=b"\x00\x0c", rid_res=bytes.fromhex("1148A1B2C3D4"))
    assert topaz is not None and topaz.identifier == bytes.fromhex("A1B2C3D4")
    assert sensed_tag("106A", sens_res=b"\x04\x00", sel_res=b"\x08", sdd_res=b"\x01\x02") is None
    assert sensed_tag("106A", sens_res=b"\x04\x00", sdd_res=bytes(4)) is None
    assert sensed_tag("999X") is None


def test_identifier_forms_keep_uid_forms_and_extend_the_rule():
    for n in (4, 7, 10):
        uid = bytes(range(1, n + 1))
        assert identifier_forms(uid) == uid_forms(uid).to_dict()
    idm = bytes.fromhex("0000000000000001")
    forms = identifier_forms(idm)
    assert forms["decBE"] == "1".zfill(20) and len(forms["decLE"]) == 20
    assert forms["decLE"] == str(1 << 56).zfill(20) and forms["length"] == 8


# -- presence ---------------------------------------------------------------------------------


def test_a_tag_that_stays_is_one_tap():
    t = PresenceTracker(0.5)
    assert t.seen(b"A", 0.0)
    for i in range(1, 100):
        t.round_done(i * 0.1)
        assert not t.seen(b"A", i * 0.1 + 0.01)


def test_slow_rounds_do_not_split_a_presence():
    # UDP simulation: a round with an empty technology lasts > debounce, the tag is in every one
    t = PresenceTracker(0.5)
    assert t.seen(b"A", 0.0)
    for i in range(1, 10):
        t.round_done(i * 2.0 - 0.5)
        assert not t.seen(b"A", i * 2.0)


def test_short_dropout_is_the_same_tap_long_absence_a_new_one():
    t = PresenceTracker(0.5)
    assert t.seen(b"A", 0.0)
    t.round_done(0.05)
    t.round_done(0.10)  # missed one round, 0.1 s away
    assert not t.seen(b"A", 0.3)
    t.round_done(0.35)
    t.round_done(0.40)
    t.round_done(1.0)  # gone: missed rounds and 0.7 s since last seen
    assert t.present == frozenset()
    assert t.seen(b"A", 1.1)


def test_gone_needs_a_missed_round_not_only_time():
    t = PresenceTracker(0.5)
    assert t.seen(b"A", 0.0)
    assert not t.seen(b"A", 5.0)  # seen in the same (long) round: still there
    t.round_done(5.1)
    t.round_done(5.2)
    assert not t.seen(b"A", 5.4)  # missed one round but only 0.4 s away


def test_two_tags_are_tracked_each_on_its_own():
    t = PresenceTracker(0.5)
    assert t.seen(b"A", 0.0) and t.seen(b"B", 0.01)
    t.round_done(0.1)
    assert not t.seen(b"A", 0.15) and not t.seen(b"B", 0.16)
    for now in (0.2, 0.9):
        assert not t.seen(b"A", now)
        t.round_done(now + 0.05)
    assert t.seen(b"B", 1.0)  # B was away for 0.84 s and missed rounds
    assert t.present == frozenset({b"A", b"B"})


def test_zero_debounce_reports_after_one_missed_round():
    t = PresenceTracker(0.0)
    assert t.seen(b"A", 0.0)
    t.round_done(0.1)
    assert not t.seen(b"A", 0.2)
    t.round_done(0.3)
    t.round_done(0.4)
    assert t.seen(b"A", 0.5)


# -- open errors ------------------------------------------------------------------------------


def test_open_errors_name_the_fix():
    busy = explain_open_error("usb:054c:06c3", errno.EBUSY)
    assert "modprobe -r port100 pn533_usb pn533 nfc" in busy
    assert "[nfc] devices" in busy and "cardd-nfc.conf" in busy
    denied = explain_open_error("usb:054c:06c3", errno.EACCES)
    assert "70-cardd.rules" in denied and "DeviceAllow=char-usb_device" in denied
    assert "lsusb" in explain_open_error("usb:054c:06c3", errno.ENODEV)
    assert "Input/output error" in explain_open_error("x", errno.EIO, "Input/output error")


# -- [nfc] ------------------------------------------------------------------------------------


def test_nfc_section_defaults_and_values():
    assert parse_config({}).nfc == NfcConfig()
    assert NfcConfig().devices == ()  # nfcpy is never loaded unless asked for
    c = parse_config(
        {
            "nfc": {
                "devices": ["usb:054c:06c3", "udp:localhost:54321"],
                "targets": ["212F", "106A"],
                "debounce": 1,
            }
        }
    )
    assert c.nfc == NfcConfig(("usb:054c:06c3", "udp:localhost:54321"), ("212F", "106A"), 1.0)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"devices": ["usb"]}, "fully qualified"),
        ({"devices": ["usb:054c"]}, "fully qualified"),
        ({"devices": ["usb:054c:06c3", "USB:054C:06C3"]}, "listed twice"),
        ({"devices": ["udp:192.0.2.1:54321"]}, "loopback"),
        ({"devices": ["udp:localhost:70000"]}, "out of range"),
        ({"devices": "usb:054c:06c3"}, "list"),
        ({"targets": ["106C"]}, "unknown poll target"),
        ({"targets": []}, "non-empty"),
        ({"targets": ["106A", "106A"]}, "twice"),
        ({"debounce": -1}, "between"),
        ({"debounce": True}, "number"),
        ({"device": ["usb:054c:06c3"]}, "unknown key"),
    ],
)
def test_nfc_section_refuses_bad_values(table, message):
    with pytest.raises(ConfigError, match=message):
        parse_nfc_config(table, "cardd.toml [nfc]")


def test_accepted_device_paths():
    for path in (
        "usb:054c:06c3",
        "usb:001:004",
        "tty:USB0:pn532",
        "tty:ACM0:arygon",
        "udp:localhost:54321",
        "udp:127.0.0.1:1",
    ):
        assert check_device_path(path) == path
