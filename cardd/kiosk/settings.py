# SPDX-License-Identifier: Apache-2.0
"""The ``[kiosk]`` section of the configuration (cardd.config calls :func:`parse_kiosk_config`).

``[kiosk.sip2]`` and ``[kiosk.gate]`` are parsed by their own modules
(cardd.kiosk.sip2.config, cardd.kiosk.gate); everything else is here. ``cardd.toml.sample``
documents every key with its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cardd.errors import ConfigError
from cardd.kiosk.tokens import (
    DEFAULT_BARCODE_PATTERNS,
    DEFAULT_VIRTUAL_CARD_PATTERN,
    TokenRules,
)

if TYPE_CHECKING:
    from cardd.kiosk.gate import GateConfig
    from cardd.kiosk.sip2.config import Sip2Config

OFFLINE_MODES = ("fail_closed", "cache", "open")
VIRTUAL_CARD_POLICIES = ("library", "local")


@dataclass(frozen=True)
class KioskPolicy:
    """The site's rules for decisions (kiosk.md §1.3 suggested gate decision, §5)."""

    #: the same card read again within this many seconds is ignored (no second decision)
    debounce_seconds: float = 2.0
    #: a patron admitted within this many seconds is refused with "已在館內" (0 = off)
    anti_passback_seconds: float = 30.0
    #: refuse patrons whose charge privileges are denied (SIP2 status position 1); off by
    #: default: it also catches expired, debarred and fined patrons, whom many libraries admit
    deny_on_charge_denied: bool = False
    #: patron identifiers always admitted, online and offline (staff, cleaners); never a lost card
    staff: frozenset[str] = field(default_factory=frozenset, repr=False)
    #: what to do while the library system is unreachable: fail_closed, cache or open
    offline_mode: str = "fail_closed"
    #: the `cache` mode admits patrons admitted online within this many hours
    cache_hours: float = 24.0
    #: "library": a valid virtual interlibrary card is still checked with the library system;
    #: "local": its printed validity is enough (partner libraries whose system does not know it)
    virtual_cards: str = "library"


@dataclass(frozen=True)
class KioskConfig:
    #: run the kiosk loop in `cardd serve` (`cardd kiosk` always does)
    enabled: bool = False
    #: serve the kiosk page at /kiosk (and its display stream /kiosk/events)
    page: bool = True
    rules: TokenRules = field(default_factory=TokenRules)
    policy: KioskPolicy = field(default_factory=KioskPolicy)
    #: read the student-card record of MIFARE Classic taps (needs [rfid] key_file)
    read_records: bool = True
    #: seconds the page shows a decision before it returns to "請感應"
    display_seconds: float = 5.0
    #: days the kiosk audit log and reported offline decisions are kept
    audit_days: int = 90
    #: seconds between attempts to report queued offline decisions (each also probes whether
    #: the library system is back)
    report_seconds: float = 15.0
    sip2: Sip2Config | None = None
    gate: GateConfig | None = None


_KEYS = {
    "enabled",
    "page",
    "uid_form",
    "em4100_form",
    "barcode_patterns",
    "virtual_card_pattern",
    "virtual_card_days",
    "virtual_cards",
    "debounce_seconds",
    "anti_passback_seconds",
    "deny_on_charge_denied",
    "staff",
    "offline_mode",
    "cache_hours",
    "read_records",
    "display_seconds",
    "audit_days",
    "report_seconds",
    "sip2",
    "gate",
}


def _get(
    table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any
) -> Any:
    if key not in table:
        return default
    value = table[key]
    numeric = kind in (int, float, (int, float))
    if (isinstance(value, bool) and numeric) or not isinstance(value, kind):
        name = "a number" if numeric else getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{where}: kiosk.{key}: expected {name}, got {value!r}")
    return value


def _non_negative(value: float, key: str, where: str) -> float:
    if value < 0:
        raise ConfigError(f"{where}: kiosk.{key} cannot be negative")
    return float(value)


def _positive(value: float, key: str, where: str) -> float:
    if value <= 0:
        raise ConfigError(f"{where}: kiosk.{key} must be more than 0")
    return float(value)


def _strings(
    table: dict[str, Any], key: str, where: str, default: tuple[str, ...]
) -> tuple[str, ...]:
    value = _get(table, key, list, where, list(default))
    if not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}: kiosk.{key} must be a list of non-empty strings")
    return tuple(value)


def parse_kiosk_config(table: dict[str, Any], where: str) -> KioskConfig:
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(f"{where} [kiosk]: unknown key(s) {', '.join(unknown)}")
    offline_mode = _get(table, "offline_mode", str, where, "fail_closed")
    if offline_mode not in OFFLINE_MODES:
        raise ConfigError(f"{where}: kiosk.offline_mode must be one of {', '.join(OFFLINE_MODES)}")
    virtual_cards = _get(table, "virtual_cards", str, where, "library")
    if virtual_cards not in VIRTUAL_CARD_POLICIES:
        raise ConfigError(f"{where}: kiosk.virtual_cards must be library or local")
    try:
        rules = TokenRules(
            uid_form=_get(table, "uid_form", str, where, "dec10_le"),
            em4100_form=_get(table, "em4100_form", str, where, "decimal10"),
            barcode_patterns=_strings(table, "barcode_patterns", where, DEFAULT_BARCODE_PATTERNS),
            virtual_card_pattern=_get(
                table, "virtual_card_pattern", str, where, DEFAULT_VIRTUAL_CARD_PATTERN
            ),
            virtual_card_days=_get(table, "virtual_card_days", int, where, 3),
        )
    except ConfigError as e:
        raise ConfigError(f"{where}: {e.message}") from None
    policy = KioskPolicy(
        debounce_seconds=_non_negative(
            _get(table, "debounce_seconds", (int, float), where, 2.0), "debounce_seconds", where
        ),
        anti_passback_seconds=_non_negative(
            _get(table, "anti_passback_seconds", (int, float), where, 30.0),
            "anti_passback_seconds",
            where,
        ),
        deny_on_charge_denied=_get(table, "deny_on_charge_denied", bool, where, False),
        staff=frozenset(_strings(table, "staff", where, ())),
        offline_mode=offline_mode,
        cache_hours=_non_negative(
            _get(table, "cache_hours", (int, float), where, 24.0), "cache_hours", where
        ),
        virtual_cards=virtual_cards,
    )
    audit_days = _get(table, "audit_days", int, where, 90)
    if audit_days < 1:
        raise ConfigError(f"{where}: kiosk.audit_days must be at least 1")
    sip2 = gate = None
    if "sip2" in table:
        from cardd.kiosk.sip2.config import parse_sip2_config

        sub = _get(table, "sip2", dict, where, {})
        sip2 = parse_sip2_config(sub, f"{where} [kiosk.sip2]")
    if "gate" in table:
        from cardd.kiosk.gate import parse_gate_config

        sub = _get(table, "gate", dict, where, {})
        gate = parse_gate_config(sub, f"{where} [kiosk.gate]")
    return KioskConfig(
        enabled=_get(table, "enabled", bool, where, False),
        page=_get(table, "page", bool, where, True),
        rules=rules,
        policy=policy,
        read_records=_get(table, "read_records", bool, where, True),
        display_seconds=_non_negative(
            _get(table, "display_seconds", (int, float), where, 5.0), "display_seconds", where
        ),
        audit_days=audit_days,
        report_seconds=_positive(
            _get(table, "report_seconds", (int, float), where, 15.0), "report_seconds", where
        ),
        sip2=sip2,
        gate=gate,
    )
