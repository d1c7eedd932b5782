# SPDX-License-Identifier: Apache-2.0
"""The [kiosk] configuration section: defaults, sub-tables and refusals."""

from __future__ import annotations

import pytest

from cardd.config import parse_config
from cardd.errors import ConfigError


def test_defaults_are_safe():
    k = parse_config({}).kiosk
    assert (k.enabled, k.page, k.policy.offline_mode, k.rules.uid_form) == (
        False,
        True,
        "fail_closed",
        "dec10_le",
    )
    assert k.policy.debounce_seconds == 2.0 and k.policy.anti_passback_seconds == 30.0
    assert k.policy.deny_on_charge_denied is False and k.sip2 is None and k.gate is None


def test_full_section_with_sip2_and_gate():
    k = parse_config(
        {
            "kiosk": {
                "enabled": True,
                "offline_mode": "cache",
                "cache_hours": 12,
                "staff": ["0012345678"],
                "uid_form": "hex",
                "deny_on_charge_denied": True,
                "report_seconds": 0.5,
                "sip2": {"host": "127.0.0.1", "port": 6001, "user": "kiosk", "password": "pw"},
                "gate": {"driver": "none"},
            }
        }
    ).kiosk
    assert k.policy.offline_mode == "cache" and k.policy.cache_hours == 12.0
    assert k.policy.staff == frozenset({"0012345678"}) and "0012345678" not in repr(k)
    assert k.sip2 is not None and k.sip2.port == 6001 and "pw" not in repr(k)
    assert k.gate is not None and k.report_seconds == 0.5


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"offline_mode": "fail_open"}, "offline_mode"),
        ({"enabled": "yes"}, "kiosk.enabled"),
        ({"debounce_seconds": -1}, "debounce_seconds"),
        ({"anti_passback_seconds": True}, "anti_passback_seconds"),
        ({"uid_form": "decimal"}, "uid_form"),
        ({"barcode_patterns": ["("]}, "barcode_patterns"),
        ({"barcode_patterns": "[0-9]+"}, "barcode_patterns"),
        ({"staff": [1234]}, "staff"),
        ({"virtual_cards": "always"}, "virtual_cards"),
        ({"report_seconds": 0}, "report_seconds"),
        ({"audit_days": 0}, "audit_days"),
        ({"gat": {}}, "unknown key(s) gat"),
        ({"sip2": {"port": 6001}}, "host is required"),
    ],
)
def test_refusals_name_the_key(table, words):
    with pytest.raises(ConfigError) as e:
        parse_config({"kiosk": table})
    assert words in e.value.message
