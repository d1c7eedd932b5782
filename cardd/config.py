# SPDX-License-Identifier: Apache-2.0
"""cardd's configuration: one TOML file with documented defaults.

Search order: ``--config PATH``, ``$CARDD_CONFIG``, ``$XDG_CONFIG_HOME/cardd/cardd.toml``
(``~/.config/cardd/cardd.toml``), ``/etc/cardd/cardd.toml``. No file means all defaults.
``cardd.toml.sample`` in the repository documents every key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cardd.errors import ConfigError
from cardd.kiosk.settings import KioskConfig, parse_kiosk_config
from cardd.readers.nfc_config import NfcConfig, parse_nfc_config
from cardd.readers.serial_config import SerialConfig, parse_serial_config

DEFAULT_PORT = 7420
SCOPES = frozenset({"readers", "moica", "rfid:read", "rfid:write"})


@dataclass(frozen=True)
class OriginPolicy:
    origin: str
    scopes: frozenset[str]
    #: HiPKI-style pages may send the PIN in the request body (off by default; bridge issue)
    allow_page_pin: bool = False


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    origins: tuple[OriginPolicy, ...] = ()
    #: file holding the bearer token for local programs that send no Origin
    token_file: Path | None = None
    #: largest request body accepted (413 body_too_large beyond); Web eID messages fit 8 KiB
    max_body_bytes: int = 8192
    #: seconds a client may take to send a request's headers, and again its body (408)
    read_timeout: float = 10.0
    #: requests one browser origin may have open at once, event streams included (429)
    max_connections_per_origin: int = 8

    def origin_policy(self, origin: str) -> OriginPolicy | None:
        for policy in self.origins:
            if policy.origin == origin:
                return policy
        return None

    @property
    def allowed_hosts(self) -> frozenset[str]:
        p = self.port
        return frozenset({f"127.0.0.1:{p}", f"localhost:{p}", f"[::1]:{p}"})


@dataclass(frozen=True)
class ReadersConfig:
    #: seconds an operation on one card may take before it fails with `timeout`
    operation_timeout: float = 30.0
    #: reader names (exact) cardd leaves alone
    ignore: tuple[str, ...] = ()
    #: reader name -> "contact" | "contactless", where the name does not tell
    kinds: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SimConfig:
    vpcd_host: str = "127.0.0.1"
    vpcd_port: int = 35963
    slots: int = 2
    control_socket: Path | None = None


@dataclass(frozen=True)
class RfidConfig:
    #: the MIFARE key file for the student-card record sector (0600; see cardd.rfid.keys)
    key_file: Path | None = None
    #: the ledger: a SQLite path or a postgresql:// URL; None = <state_dir>/ledger.sqlite3
    ledger: str | None = None
    #: this station's name in the ledger's audit log; None = the host name
    station: str | None = None
    #: roster column that records the family's consent (batches burn only rows that say yes)
    consent_column: str = "同意"


@dataclass(frozen=True)
class MoicaConfig:
    #: the card's PKCS#11 module (HiCOS libHicos_p11.so, or open-gpki-pkcs11); None: signing off
    pkcs11_module: str | None = None
    #: directory with the GRCA/MOICA certificates (checked against pinned fingerprints);
    #: None = <state_dir>/trust, filled by `cardd trust fetch`
    trust_dir: Path | None = None
    #: "require" (unknown revocation status fails) or "allow-offline" (kiosks)
    revocation: str = "require"
    #: how long past a CRL's nextUpdate a cached CRL may still answer when offline (hours)
    crl_grace_hours: float = 24.0
    #: ask the OCSP responder named in each certificate before the CRL
    ocsp: bool = True


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    #: log APDUs at the TRAFFIC level (secrets redacted); for support sessions only
    traffic: bool = False
    #: "text", "json" (one object per line, for the journal) or "auto": json when stderr is
    #: the journal ($JOURNAL_STREAM), text otherwise (cardd.log)
    format: str = "auto"


@dataclass(frozen=True)
class Config:
    api: ApiConfig = ApiConfig()
    readers: ReadersConfig = ReadersConfig()
    sim: SimConfig = SimConfig()
    rfid: RfidConfig = RfidConfig()
    moica: MoicaConfig = MoicaConfig()
    log: LogConfig = LogConfig()
    #: serial RFID readers and barcode scanners (cardd.readers.serial_config)
    serial: SerialConfig = SerialConfig()
    #: readers cardd drives through nfcpy (cardd.readers.nfc_config); none by default
    nfc: NfcConfig = NfcConfig()
    #: the entrance kiosk: tap decisions, SIP2, gate (cardd.kiosk.settings)
    kiosk: KioskConfig = KioskConfig()
    state_dir: Path = field(default_factory=lambda: default_state_dir())
    source: Path | None = None


def default_state_dir() -> Path:
    if env := os.environ.get("CARDD_STATE_DIR"):
        return Path(env)
    if env := os.environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return Path(env.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/cardd")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "cardd"


def candidate_paths() -> list[Path]:
    paths = []
    if env := os.environ.get("CARDD_CONFIG"):
        paths.append(Path(env))
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    paths.append(Path(xdg) / "cardd" / "cardd.toml")
    paths.append(Path("/etc/cardd/cardd.toml"))
    return paths


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
        return path
    for path in candidate_paths():
        if path.is_file():
            return path
    return None


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    path = find_config(explicit)
    if path is None:
        return Config()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return parse_config(raw, source=path)


def _section(raw: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return value


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _typed(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def validate_origin(origin: str) -> str:
    """An allowlisted origin is exactly scheme://host[:port]; no paths, wildcards or `null`."""
    parts = urlsplit(origin)
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username
        or "*" in origin
        or origin != origin.strip()
    ):
        raise ConfigError(f"origin {origin!r} must be exactly scheme://host[:port]")
    if parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "[::1]", "::1"):
        raise ConfigError(f"origin {origin!r}: plain http is only allowed for loopback pages")
    return origin


def parse_config(raw: dict[str, Any], *, source: Path | None = None) -> Config:
    where = str(source or "config")
    _check_keys(raw, {"api", "readers", "sim", "rfid", "moica", "log", "state_dir", "serial", "kiosk",
                     "nfc"}, where)

    api = _section(raw, "api", where)
    _check_keys(api, {"host", "port", "origins", "token_file", "max_body_bytes", "read_timeout",
                      "max_connections_per_origin"}, f"{where} [api]")
    host = _typed(api, "host", str, "api", "127.0.0.1")
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise ConfigError(f"{where}: api.host {host!r} is not a loopback address; cardd binds loopback only")
    except ValueError:
        raise ConfigError(f"{where}: api.host must be a loopback IP address, got {host!r}") from None
    port = _typed(api, "port", int, "api", DEFAULT_PORT)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}: api.port {port} out of range")
    origins = []
    for origin, spec in _section(api, "origins", f"{where} [api]").items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: [api.origins.\"{origin}\"] must be a table")
        _check_keys(spec, {"scopes", "allow_page_pin"}, f"{where} [api.origins.\"{origin}\"]")
        scopes = _typed(spec, "scopes", list, f"api.origins.{origin}", [])
        bad = sorted(set(map(str, scopes)) - SCOPES)
        if bad:
            raise ConfigError(f"{where}: origin {origin}: unknown scope(s) {', '.join(bad)}")
        origins.append(
            OriginPolicy(
                validate_origin(origin),
                frozenset(scopes),
                bool(_typed(spec, "allow_page_pin", bool, f"api.origins.{origin}", False)),
            )
        )
    token_file = api.get("token_file")
    max_body = _typed(api, "max_body_bytes", int, "api", 8192)
    read_timeout = float(_typed(api, "read_timeout", (int, float), "api", 10.0))
    per_origin = _typed(api, "max_connections_per_origin", int, "api", 8)
    if not 256 <= max_body <= 1024 * 1024:
        raise ConfigError(f"{where}: api.max_body_bytes must be from 256 to 1048576")
    if not 0 < read_timeout <= 300:
        raise ConfigError(f"{where}: api.read_timeout must be from 0 to 300 seconds")
    if per_origin < 1:
        raise ConfigError(f"{where}: api.max_connections_per_origin must be at least 1")

    rd = _section(raw, "readers", where)
    _check_keys(rd, {"operation_timeout", "ignore", "kinds"}, f"{where} [readers]")
    timeout = float(_typed(rd, "operation_timeout", (int, float), "readers", 30.0))
    if timeout <= 0:
        raise ConfigError(f"{where}: readers.operation_timeout must be positive")
    kinds = _typed(rd, "kinds", dict, "readers", {})
    for name, kind in kinds.items():
        if kind not in ("contact", "contactless"):
            raise ConfigError(f"{where}: readers.kinds.{name!r} must be contact or contactless")

    sim = _section(raw, "sim", where)
    _check_keys(sim, {"vpcd_host", "vpcd_port", "slots", "control_socket"}, f"{where} [sim]")
    rfid = _section(raw, "rfid", where)
    _check_keys(rfid, {"key_file", "ledger", "station", "consent_column"}, f"{where} [rfid]")
    moica = _section(raw, "moica", where)
    _check_keys(moica, {"pkcs11_module", "trust_dir", "revocation", "crl_grace_hours", "ocsp"}, f"{where} [moica]")
    revocation = _typed(moica, "revocation", str, "moica", "require")
    if revocation not in ("require", "allow-offline"):
        raise ConfigError(f"{where}: moica.revocation must be require or allow-offline")
    grace = float(_typed(moica, "crl_grace_hours", (int, float), "moica", 24.0))
    if grace < 0:
        raise ConfigError(f"{where}: moica.crl_grace_hours cannot be negative")
    log = _section(raw, "log", where)
    _check_keys(log, {"level", "traffic", "format"}, f"{where} [log]")
    level = _typed(log, "level", str, "log", "info")
    log_format = _typed(log, "format", str, "log", "auto")
    if log_format not in ("auto", "text", "json"):
        raise ConfigError(f"{where}: log.format must be auto, text or json")
    if level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{where}: log.level must be debug, info, warning or error")

    state_dir = raw.get("state_dir")
    return Config(
        api=ApiConfig(
            host=host, port=port, origins=tuple(origins),
            token_file=Path(token_file) if token_file else None,
            max_body_bytes=max_body, read_timeout=read_timeout,
            max_connections_per_origin=per_origin,
        ),
        readers=ReadersConfig(
            operation_timeout=timeout,
            ignore=tuple(_typed(rd, "ignore", list, "readers", [])),
            kinds=dict(kinds),
        ),
        sim=SimConfig(
            vpcd_host=_typed(sim, "vpcd_host", str, "sim", "127.0.0.1"),
            vpcd_port=_typed(sim, "vpcd_port", int, "sim", 35963),
            slots=_typed(sim, "slots", int, "sim", 2),
            control_socket=Path(sim["control_socket"]) if sim.get("control_socket") else None,
        ),
        rfid=RfidConfig(
            key_file=Path(_typed(rfid, "key_file", str, "rfid", "")) if rfid.get("key_file") else None,
            ledger=_typed(rfid, "ledger", str, "rfid", None),
            station=_typed(rfid, "station", str, "rfid", None),
            consent_column=_typed(rfid, "consent_column", str, "rfid", "同意"),
        ),
        moica=MoicaConfig(
            pkcs11_module=_typed(moica, "pkcs11_module", str, "moica", None),
            trust_dir=Path(moica["trust_dir"]) if moica.get("trust_dir") else None,
            revocation=revocation,
            crl_grace_hours=grace,
            ocsp=_typed(moica, "ocsp", bool, "moica", True),
        ),
        log=LogConfig(
            level=level.lower(), traffic=_typed(log, "traffic", bool, "log", False), format=log_format
        ),
        serial=parse_serial_config(_section(raw, "serial", where), where),
        nfc=parse_nfc_config(_section(raw, "nfc", where), f"{where} [nfc]"),
        kiosk=parse_kiosk_config(_section(raw, "kiosk", where), where),
        state_dir=Path(state_dir) if state_dir else default_state_dir(),
        source=source,
    )
