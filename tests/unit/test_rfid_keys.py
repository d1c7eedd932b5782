# SPDX-License-Identifier: Apache-2.0
"""The MIFARE key file: permissions, owner, format, and keys that never leak into text."""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path

import pytest

from cardd.errors import ConfigError, KeyFileError
from cardd.rfid.access import KeyType
from cardd.rfid.keys import SectorKeys, load_key_file

KEY_A_HEX, KEY_B_HEX = "A0A1A2A3A4A5", "B0B1B2B3B4B5"
GOOD = f"""
[student_card]
sector = 14
key_a = "{KEY_A_HEX}"
key_b = "{KEY_B_HEX}"
# transport keys are what blank cards answer to before personalization
allow_transport_keys = false
"""
#: every spelling of key material that must never appear in a message, repr or traceback
SECRETS = [
    KEY_A_HEX,
    KEY_B_HEX,
    "A0 A1 A2",
    "A0:A1",
    "B0 B1 B2",
    "a0a1a2a3",
    "b0b1b2b3",
    "C0C1C2C3C4",
    "c0c1c2c3c4",
    "D0D1D2",
    "\\xa0\\xa1",
    "\\xb0\\xb1",
]


def write(tmp_path: Path, text: str, mode: int = 0o600, name: str = "keys.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def assert_no_key_material(text: str) -> None:
    for secret in SECRETS:
        assert secret.lower() not in text.lower(), (secret, text)


def test_loads_the_student_card_table(tmp_path):
    keys = load_key_file(write(tmp_path, GOOD))
    assert keys == SectorKeys(
        sector=14, key_a=bytes.fromhex(KEY_A_HEX), key_b=bytes.fromhex(KEY_B_HEX)
    )
    assert keys.key(KeyType.A) == bytes.fromhex(KEY_A_HEX)
    assert keys.key(KeyType.B) == bytes.fromhex(KEY_B_HEX)
    assert keys.size == "1k" and not keys.allow_transport_keys and not keys.uses_transport_keys


def test_repr_and_str_never_show_keys(tmp_path):
    keys = load_key_file(write(tmp_path, GOOD))
    for text in (repr(keys), str(keys), f"{keys}", f"{keys!r}", repr([keys]), repr({"k": keys})):
        assert_no_key_material(text)
        assert "sector=14" in text and "<redacted>" in text


def test_separators_are_accepted(tmp_path):
    text = GOOD.replace(KEY_A_HEX, "A0 A1 A2 A3 A4 A5").replace(KEY_B_HEX, "b0:b1:b2:b3:b4:b5")
    keys = load_key_file(write(tmp_path, text))
    assert keys.key_a.hex().upper() == KEY_A_HEX and keys.key_b.hex().upper() == KEY_B_HEX


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666])
def test_group_or_other_access_is_refused_with_chmod_600(tmp_path, mode):
    path = write(tmp_path, GOOD, mode)
    with pytest.raises(KeyFileError, match="chmod 600") as info:
        load_key_file(path)
    assert info.value.code == "key_file_invalid"
    assert isinstance(info.value, ConfigError)
    assert oct(mode)[2:] in info.value.message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_are_fine(tmp_path, mode):
    assert load_key_file(write(tmp_path, GOOD, mode)).sector == 14


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_file_owned_by_someone_else_is_refused(tmp_path):
    path = write(tmp_path, GOOD)
    os.chown(path, 12345, -1)
    with pytest.raises(KeyFileError, match="uid 12345"):
        load_key_file(path)


def test_file_owned_by_root_is_accepted_for_another_user(tmp_path, monkeypatch):
    # A root-owned 0600 file read by a service running as root; and a file of the running user.
    path = write(tmp_path, GOOD)
    owner = path.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner)
    assert load_key_file(path).sector == 14
    if owner == 0:
        monkeypatch.setattr(os, "geteuid", lambda: 4242)
        assert load_key_file(path).sector == 14  # root may own it
    else:
        monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
        with pytest.raises(KeyFileError, match="not to the user running cardd"):
            load_key_file(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(KeyFileError, match="cannot open"):
        load_key_file(tmp_path / "nope.toml")
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        load_key_file(d)


BAD_FILES = {
    "short key": (GOOD.replace(KEY_A_HEX, "A0A1A2A3A4"), "key_a must be 12 hex digits"),
    "long key": (GOOD.replace(KEY_B_HEX, "B0B1B2B3B4B5B6"), "key_b must be 12 hex digits"),
    "not hex": (GOOD.replace(KEY_A_HEX, "A0A1A2A3A4AZ"), "key_a must be 12 hex digits"),
    "unquoted": (GOOD.replace(f'"{KEY_A_HEX}"', KEY_A_HEX), "not valid TOML"),
    "number": (GOOD.replace(f'"{KEY_A_HEX}"', "123456"), "quoted string"),
    "missing": (GOOD.replace(f'key_b = "{KEY_B_HEX}"', ""), "key_b is missing"),
    "sector 16 on 1k": (GOOD.replace("sector = 14", "sector = 16"), "out of range for a 1k card"),
    "sector 40 on 4k": (
        GOOD.replace("sector = 14", 'sector = 40\nsize = "4k"'),
        "out of range for a 4k card",
    ),
    "negative sector": (GOOD.replace("sector = 14", "sector = -1"), "out of range"),
    "sector 0": (GOOD.replace("sector = 14", "sector = 0"), "manufacturer block"),
    "sector string": (GOOD.replace("sector = 14", 'sector = "14"'), "whole number"),
    "sector bool": (GOOD.replace("sector = 14", "sector = true"), "whole number"),
    "size": (GOOD.replace("sector = 14", 'sector = 14\nsize = "2k"'), "size must be"),
    "flag": (
        GOOD.replace("allow_transport_keys = false", 'allow_transport_keys = "no"'),
        "true or false",
    ),
    "typo": (GOOD.replace("allow_transport_keys", "alow_transport_keys"), "alow_transport_keys"),
    "key as a name": (GOOD + "C0C1C2C3C4C5 = 1\n", "unknown setting"),
    "no table": (GOOD.replace("[student_card]", "[library_card]"), r"no \[student_card\] table"),
    "transport key": (GOOD.replace(KEY_A_HEX, "FFFFFFFFFFFF"), "key_a is the public transport key"),
    "zero key": (GOOD.replace(KEY_B_HEX, "000000000000"), "key_b is all zeros"),
    "broken toml": (GOOD.replace("sector = 14", "sector = = D0D1D2"), "not valid TOML"),
    "bad toml quoting key": ('[student_card]\nkey_a = "C0C1C2C3C4C5\n', "not valid TOML"),
    "not utf-8": (None, "UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_files_are_refused_without_key_material(tmp_path, case, caplog):
    text, match = BAD_FILES[case]
    if text is None:
        path = tmp_path / "keys.toml"
        path.write_bytes(b'[student_card]\nkey_a = "\xa0\xa1\xa2\xa3\xa4\xa5"\n')
        path.chmod(0o600)
    else:
        path = write(tmp_path, text)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(KeyFileError, match=match) as info:
        load_key_file(path)
    exc = info.value
    # every way an error gets turned into text: message, str, repr, a full traceback with its
    # chained causes, and whatever was logged on the way
    rendered = [
        exc.message,
        str(exc),
        repr(exc),
        "".join(traceback.format_exception(exc)),
        repr(exc.__cause__),
        repr(exc.__context__),
        caplog.text,
    ]
    for text_out in rendered:
        assert_no_key_material(text_out)
    assert str(path) in exc.message  # but it names the file


def test_transport_keys_allowed_when_the_file_says_so(tmp_path):
    text = GOOD.replace(KEY_A_HEX, "FFFFFFFFFFFF").replace(KEY_B_HEX, "FFFFFFFFFFFF")
    text = text.replace("allow_transport_keys = false", "allow_transport_keys = true")
    keys = load_key_file(write(tmp_path, text))
    assert keys.uses_transport_keys and keys.allow_transport_keys


def test_4k_sectors_and_other_tables(tmp_path):
    text = GOOD.replace("sector = 14", 'sector = 39\nsize = "4k"').replace(
        "[student_card]", "[other]"
    )
    keys = load_key_file(write(tmp_path, text), table="other")
    assert (keys.sector, keys.size) == (39, "4k")


def test_loading_logs_no_keys(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    load_key_file(write(tmp_path, GOOD))
    assert "sector 14" in caplog.text
    assert_no_key_material(caplog.text)
