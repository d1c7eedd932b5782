# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import io
import logging

from cardd.log import RedactingFilter, mask_id, redact_apdu, redact_response, setup_logging


def test_ids_and_library_numbers_are_masked():
    assert mask_id("burn A123456789 done") == "burn A12*****89 done"
    assert mask_id("number A12345678901") == "number A12*****8901"
    assert mask_id("resident AB12345678, new A812345678") == "resident AB1*****78, new A81*****78"
    assert mask_id("UID 93A131C0 stays") == "UID 93A131C0 stays"


def test_secret_bearing_apdus_are_redacted():
    load_keys = bytes.fromhex("FF82000006A0A1A2A3A4A5")
    assert "A0 A1" not in redact_apdu(load_keys) and "6 bytes redacted" in redact_apdu(load_keys)
    verify = bytes.fromhex("0020008108313233343536FFFF")
    assert "31 32" not in redact_apdu(verify)
    write = bytes.fromhex("FFD6003810") + b"LB\x01A12345678900\x00"
    assert "41 31" not in redact_apdu(write)
    assert redact_apdu(bytes.fromhex("FFCA000000")) == "FF CA 00 00 00"
    assert "redacted" in redact_response(bytes.fromhex("FFB0003810"), b"LB\x01A123")
    assert redact_response(bytes.fromhex("80B0000010"), b"\x01\x02") == "01 02"


def test_filter_masks_formatted_arguments():
    stream = io.StringIO()
    setup_logging("info", stream=stream)
    logging.getLogger("cardd.test").info("issued %s to %s", "A12345678900", "B223456789")
    out = stream.getvalue()
    assert "A12345678900" not in out and "B223456789" not in out
    assert "A12*****8900" in out
    assert isinstance(logging.getLogger().handlers[0].filters[0], RedactingFilter)
