# SPDX-License-Identifier: Apache-2.0
"""The redaction layer on its own: every way a caller can hand a secret to a logger.

The proof on real operations (burn, read, PIN, key file through pcscd and SoftHSM2, DEBUG +
TRAFFIC) is tests/integration/test_observability.py::test_no_secret_in_any_log_line.
"""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from cardd.log import (
    forget_secret,
    pin_scope,
    redact,
    register_secret,
    setup_logging,
)

KEY = bytes.fromhex("5C1D2E3F4A6B")
PIN = "246810"
ID = "A123456789"


@pytest.fixture
def log_json():
    stream = io.StringIO()
    setup_logging("debug", traffic=True, stream=stream, fmt="json")
    register_secret(KEY)
    yield stream
    forget_secret(KEY)
    setup_logging("warning")


@pytest.fixture
def log_text():
    stream = io.StringIO()
    setup_logging("debug", stream=stream, fmt="text")
    register_secret(KEY)
    yield stream
    forget_secret(KEY)
    setup_logging("warning")


def _forms_of_key() -> list[str]:
    h = KEY.hex()
    return [h, h.upper(), KEY.hex(" "), KEY.hex(":").upper(), KEY.hex("-"), repr(KEY)]


def _clean(text: str) -> None:
    low = text.lower()
    assert KEY.hex() not in low.replace(" ", "").replace(":", "").replace("-", "").replace(
        "\\x", ""
    )
    assert ID not in text and ID.lower() not in text
    assert PIN not in text


def test_keys_in_every_form_args_extras_and_exceptions(log_json):
    log = logging.getLogger("cardd.test")
    for form in _forms_of_key():
        log.debug("key is %s", form)
        log.info("inline " + form)
    log.info("bytes %r", KEY)
    log.info("extra", extra={"reader": "R", "detail": f"key {KEY.hex()}", "key_b": KEY.hex()})
    try:
        raise ValueError(f"bad key {KEY.hex().upper()} for {ID}")
    except ValueError:
        log.exception("failed")
    all_lines = log_json.getvalue().splitlines()
    for line in all_lines:
        json.loads(line)  # still one valid object per line after redaction
        _clean(line)
    lines = [line for line in all_lines if json.loads(line)["logger"] == "cardd.test"]
    assert len(lines) == 2 * len(_forms_of_key()) + 3
    last = json.loads(lines[-1])
    assert "ValueError" in last["exception"] and "Traceback" in last["exception"]
    assert json.loads(lines[-2])["key_b"] == "**"


def test_ids_glued_to_text_library_numbers_and_hex(log_text):
    log = logging.getLogger("cardd.test")
    log.info("record %r", b"LB\x01" + ID.encode() + b"00\x00")
    log.info("number %s%s", ID, "07")
    log.info("hex %s / %s", ID.encode().hex(), ID.encode().hex(" ").upper())
    log.info("lower %s", ID.lower())
    text = log_text.getvalue()
    assert text.count("A12*****89") >= 2
    _clean(text)
    assert "41313233343536373839" not in text.replace(" ", "")


def test_pin_in_use_is_scrubbed_even_inside_other_digits(log_text):
    log = logging.getLogger("cardd.test")
    with pin_scope(bytearray(PIN.encode())):
        log.debug("entered %s", PIN)
        log.debug("glued 99%s11", PIN)
        log.info("call", extra={"value": PIN})
    log.info("after the scope, unrelated numbers stay: %s", "123456")
    text = log_text.getvalue()
    _clean(text)
    assert "123456" in text  # no blanket digit masking


def test_secret_named_values_and_bearer_tokens(log_text):
    log = logging.getLogger("cardd.test")
    log.info("body %s", {"pin": "13579", "idNumber": ID, "nonce": "abc"})
    log.info("pin=24680 password: hunter2 key_a=ABCDEF")
    log.info("headers %s", {"Authorization": "Bearer s3cr3t-t0ken"})
    text = log_text.getvalue()
    for secret in ("13579", "24680", "hunter2", "ABCDEF", "s3cr3t-t0ken", ID):
        assert secret not in text
    assert "nonce" in text and "abc" in text  # ordinary fields survive


def test_prose_is_left_alone():
    assert (
        redact("unknown key(s) foo; PIN entry unavailable")
        == "unknown key(s) foo; PIN entry unavailable"
    )
    assert redact("UID 93A131C0 decLE 3224478099") == "UID 93A131C0 decLE 3224478099"


def test_auto_format_follows_journal_stream(monkeypatch, tmp_path):
    from cardd.log import resolve_format

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert resolve_format("auto") == "text"
    with open(tmp_path / "err", "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setattr("sys.stderr", f)
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert resolve_format("auto") == "json"
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # inherited, not ours
        assert resolve_format("auto") == "text"
    assert resolve_format("text") == "text" and resolve_format("json") == "json"
