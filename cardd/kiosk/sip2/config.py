# SPDX-License-Identifier: Apache-2.0
"""``[kiosk.sip2]``: how the kiosk reaches the library system's SIP2 server.

The kiosk configuration (cardd.config, owned by the kiosk work) hands this table to
:func:`parse_sip2_config`; every key, its default and why is in ``cardd.toml.sample``.

Decisions:

* The SIP2 password may sit in the TOML (``password``) or, better on a shared PC, in its own
  file (``password_file``, one line, read at start): a configuration file is often readable by
  every technician, the password file need not be. Both at once is refused.
* ``patron_request = "63"`` by default: FOLIO edge-sip2 lacks 23 and 63 with an empty summary
  costs the server nothing more (kiosk.md §1.2).
* ``encoding``: any Python codec name (utf-8, ascii, latin-1, cp850 for FOLIO, cp950 / big5 for
  some Taiwanese systems). Checksums are computed over the encoded bytes.
* ``keepalive_interval = 60`` seconds: Koha drops clients idle for 600 s by default; 0 turns the
  keep-alive off.
* ``timeout = 3`` seconds per request: a gate cannot make a patron wait longer; the 98 reply's
  own timeout does not lengthen it.
* TLS verification cannot be weakened silently: ``tls_verify = false`` is accepted (a lab, a
  test server) and logged as a warning at every connection.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardd.errors import ConfigError

KEYS = frozenset(
    {
        "host",
        "port",
        "user",
        "password",
        "password_file",
        "institution",
        "terminal_password",
        "location",
        "patron_request",
        "timeout",
        "keepalive_interval",
        "encoding",
        "terminator",
        "error_detection",
        "resends",
        "tls",
        "tls_ca_file",
        "tls_verify",
        "tls_server_name",
        "tls_cert_file",
        "tls_key_file",
    }
)


@dataclass(frozen=True)
class Sip2Config:
    host: str
    port: int = 6001
    #: 93 CN
    user: str = ""
    #: 93 CO; never logged or shown (repr=False)
    password: str = field(default="", repr=False)
    #: AO
    institution: str = ""
    #: AC on patron requests; never logged
    terminal_password: str = field(default="", repr=False)
    #: 93 CP
    location: str = ""
    #: "63" (patron information, empty summary) or "23" (patron status)
    patron_request: str = "63"
    #: seconds per request (and for connecting)
    timeout: float = 3.0
    #: seconds of idleness before a 99 keeps the session open; 0 = off
    keepalive_interval: float = 60.0
    encoding: str = "utf-8"
    #: what we end our messages with: "CR" (the spec) or "CRLF"; replies may use either
    terminator: str = "CR"
    #: send AY/AZ (sequence numbers and checksums)
    error_detection: bool = True
    #: how often one request may be resent after a 96, or a reply asked again with 97
    resends: int = 2
    tls: bool = False
    #: CA certificates (PEM) to verify the server with; None = the system's store
    tls_ca_file: Path | None = None
    tls_verify: bool = True
    #: name to check the server certificate against, when ``host`` is an address
    tls_server_name: str | None = None
    #: client certificate and key (PEM), for servers (or stunnel) that ask for one
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    @property
    def terminator_bytes(self) -> bytes:
        return b"\r\n" if self.terminator == "CRLF" else b"\r"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_sip2_config(table: dict[str, Any], where: str) -> Sip2Config:
    """Build and check a Sip2Config from the ``[kiosk.sip2]`` table; ``where`` names it in errors
    (e.g. ``"/etc/cardd/cardd.toml [kiosk.sip2]"``). Unknown keys are refused."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in table:
            return default
        value = table[key]
        number = kind in (int, float, (int, float))
        if (isinstance(value, bool) and number) or not isinstance(value, kind):
            shown = "***" if "password" in key else repr(value)
            name = "a number" if number else getattr(kind, "__name__", str(kind))
            raise ConfigError(f"{where}: {key} must be {name}, got {shown}")
        return value

    host = get("host", str, "")
    if not host.strip():
        raise ConfigError(f"{where}: host is required (the SIP2 server's name or address)")
    port = get("port", int, 6001)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port {port} is not 1–65535")

    for key in ("user", "institution", "location", "tls_server_name"):
        value = get(key, str, "")
        if any(c in value for c in "\r\n|"):
            raise ConfigError(f"{where}: {key} must not contain CR, LF or |")

    password = get("password", str, "")
    password_file = get("password_file", str, "")
    if password and password_file:
        raise ConfigError(f"{where}: give password or password_file, not both")
    if password_file:
        try:
            password = Path(password_file).read_text(encoding="utf-8").strip("\r\n")
        except OSError as e:
            raise ConfigError(
                f"{where}: password_file {password_file}: {e.strerror or e}"
            ) from None
    for key, value in (
        ("password", password),
        ("terminal_password", get("terminal_password", str, "")),
    ):
        if "\r" in value or "\n" in value:
            raise ConfigError(f"{where}: {key} must be one line")

    patron_request = str(get("patron_request", (str, int), "63"))
    if patron_request not in ("63", "23"):
        raise ConfigError(
            f'{where}: patron_request must be "63" (patron information) or "23" (patron status)'
        )

    timeout = float(get("timeout", (int, float), 3.0))
    if not 0 < timeout <= 120:
        raise ConfigError(f"{where}: timeout must be more than 0 and at most 120 seconds")
    keepalive = float(get("keepalive_interval", (int, float), 60.0))
    if keepalive < 0:
        raise ConfigError(f"{where}: keepalive_interval cannot be negative (0 turns it off)")
    if 0 < keepalive < timeout:
        raise ConfigError(f"{where}: keepalive_interval must be 0 (off) or at least the timeout")

    encoding = get("encoding", str, "utf-8")
    try:
        encoding = codecs.lookup(encoding).name
        ascii_compatible = "AZ09|\r".encode(encoding) == b"AZ09|\r"
    except LookupError:
        raise ConfigError(
            f"{where}: encoding {encoding!r} is not known (e.g. utf-8, cp850, cp950)"
        ) from None
    if not ascii_compatible:
        # SIP2 ids, fixed fields and delimiters are ASCII bytes on the wire
        raise ConfigError(f"{where}: encoding {encoding!r} is not ASCII-compatible")
    terminator = get("terminator", str, "CR").upper()
    if terminator not in ("CR", "CRLF"):
        raise ConfigError(f'{where}: terminator must be "CR" or "CRLF"')
    resends = get("resends", int, 2)
    if not 0 <= resends <= 9:
        raise ConfigError(f"{where}: resends must be 0–9")

    def path(key: str) -> Path | None:
        value = get(key, str, "")
        if not value:
            return None
        p = Path(value)
        if not p.is_file():
            raise ConfigError(f"{where}: {key} {value} does not exist")
        return p

    tls = get("tls", bool, False)
    tls_keys = ("tls_ca_file", "tls_verify", "tls_server_name", "tls_cert_file", "tls_key_file")
    if not tls and any(k in table for k in tls_keys):
        raise ConfigError(f"{where}: tls_* keys are set but tls is false")
    cert, key_file = path("tls_cert_file"), path("tls_key_file")
    if key_file is not None and cert is None:
        raise ConfigError(f"{where}: tls_key_file needs tls_cert_file")

    return Sip2Config(
        host=host.strip(),
        port=port,
        user=get("user", str, ""),
        password=password,
        institution=get("institution", str, ""),
        terminal_password=get("terminal_password", str, ""),
        location=get("location", str, ""),
        patron_request=patron_request,
        timeout=timeout,
        keepalive_interval=keepalive,
        encoding=encoding,
        terminator=terminator,
        error_detection=get("error_detection", bool, True),
        resends=resends,
        tls=tls,
        tls_ca_file=path("tls_ca_file"),
        tls_verify=get("tls_verify", bool, True),
        tls_server_name=get("tls_server_name", str, "") or None,
        tls_cert_file=cert,
        tls_key_file=key_file,
    )
