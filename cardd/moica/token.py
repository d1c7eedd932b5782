# SPDX-License-Identifier: Apache-2.0
"""The citizen-certificate authentication token: building, strict parsing, and what is signed.

Token (product.md "Citizen certificate authentication token", modelled on Web eID's
``web-eid:1.0``, bridge-security.md §1.3)::

    {"format": "cardd-moica:1", "unverifiedCertificate": "<base64 DER>", "algorithm": "RS256",
     "signature": "<base64>", "appVersion": "cardd/<version>"}

Nonce and origin are deliberately absent: the relying party rebuilds the signed data from its
own session nonce and its own configured origin, so nothing in the token can steer that.

Signed data (bridge-security.md §1.1): ``SHA256(origin UTF-8) || SHA256(nonce UTF-8)``, 64 bytes.
Hashing each field first separates them ("example.com" + ".eu1234" cannot collide with
"example.com.eu" + "1234"). The nonce is hashed as its base64 *string*, not the decoded bytes,
as web-eid-app does. The card signs these 64 bytes with RSASSA-PKCS1-v1_5 over SHA-256
(PKCS#11 ``CKM_SHA256_RSA_PKCS``), i.e. exactly JOSE ``RS256``.

Parsing is strict on purpose; every rule fails with ``invalid_token`` except an unknown
``format``, which is ``unsupported_format``:

* the token is 100–10,000 characters of JSON (Web eID's limits), one object, no duplicate keys;
* ``format`` must be exactly ``cardd-moica:1``. Web eID accepts any ``web-eid:1*`` prefix, but
  it also ignores unknown fields; here the field set is exact, so a minor version that adds
  fields would not parse anyway, and a prefix match would only accept "cardd-moica:10";
* exactly the five fields above, all strings; base64 is the standard alphabet with padding and
  no whitespace; the certificate must be one DER X.509 certificate with parseable extensions;
* ``algorithm`` must be ``RS256``: MOICA keys are RSA-2048 and the card signs PKCS#1 v1.5.

Nonce and origin syntax are checked where they are used (here for signing, in
:mod:`cardd.moica.verify` for verifying) and fail with ``bad_nonce`` / ``origin_mismatch``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn

from cryptography import x509

from cardd.errors import BadNonce, OriginMismatch, TokenError, UnsupportedFormat

FORMAT = "cardd-moica:1"
ALGORITHM = "RS256"
TOKEN_MIN_LENGTH = 100
TOKEN_MAX_LENGTH = 10_000
NONCE_MIN_LENGTH = 44  # 32 bytes in base64 (Web eID's generator, web-eid-app's lower bound)
NONCE_MAX_LENGTH = 128  # web-eid-app's upper bound
ORIGIN_MAX_LENGTH = 255  # web-eid-app validateAndStoreOrigin
APP_VERSION_MAX_LENGTH = 200
SIGNED_DATA_LENGTH = 64

FIELD_FORMAT = "format"
FIELD_CERTIFICATE = "unverifiedCertificate"
FIELD_ALGORITHM = "algorithm"
FIELD_SIGNATURE = "signature"
FIELD_APP_VERSION = "appVersion"
FIELDS = frozenset(
    {FIELD_FORMAT, FIELD_CERTIFICATE, FIELD_ALGORITHM, FIELD_SIGNATURE, FIELD_APP_VERSION}
)

_BASE64_RE = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_BASE64URL_RE = re.compile(r"[A-Za-z0-9_-]+(?:={1,2})?")
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ORIGIN_RE = re.compile(r"https://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?")
#: Plain http is accepted for these hosts only: browsers treat http://localhost and loopback
#: addresses as secure contexts (a page there can call cardd), and a token bound to a loopback
#: origin verifies only at a relying party configured with that origin, i.e. a developer's or
#: the demo's own machine. Every other http origin is refused.
_LOOPBACK_HTTP_RE = re.compile(r"http://(?:localhost|127\.0\.0\.1|\[::1\])(?::(?P<port>[0-9]{1,5}))?")


@dataclass(frozen=True)
class AuthToken:
    """A token that passed parsing. Nothing in it is trusted yet."""

    format: str
    certificate: x509.Certificate = field(repr=False)
    certificate_der: bytes = field(repr=False)
    algorithm: str
    signature: bytes = field(repr=False)
    app_version: str


def make_token(cert_der: bytes, signature: bytes, app_version: str) -> str:
    """The token JSON for a signing certificate and the card's signature over signed_data().

    :raises ValueError: empty inputs, or a result outside the token length limits.
    """
    if not cert_der or not signature:
        raise ValueError("certificate and signature must not be empty")
    if not isinstance(app_version, str) or not 0 < len(app_version) <= APP_VERSION_MAX_LENGTH:
        raise ValueError(f"app_version must be 1–{APP_VERSION_MAX_LENGTH} characters")
    token = json.dumps(
        {
            FIELD_FORMAT: FORMAT,
            FIELD_CERTIFICATE: base64.b64encode(bytes(cert_der)).decode("ascii"),
            FIELD_ALGORITHM: ALGORITHM,
            FIELD_SIGNATURE: base64.b64encode(bytes(signature)).decode("ascii"),
            FIELD_APP_VERSION: app_version,
        },
        separators=(",", ":"),
        ensure_ascii=True,
    )
    if not TOKEN_MIN_LENGTH <= len(token) <= TOKEN_MAX_LENGTH:
        raise ValueError(f"token would be {len(token)} characters, outside the allowed range")
    return token


@dataclass(frozen=True)
class RawToken:
    """A token whose fields passed their syntax checks; the certificate is not parsed yet."""

    format: str
    certificate_der: bytes = field(repr=False)
    algorithm: str
    signature: bytes = field(repr=False)
    app_version: str


def parse_token_fields(token: str | bytes) -> RawToken:
    """Every token rule except parsing the certificate (the verifier caches that per DER).

    :raises UnsupportedFormat: ``format`` is present but not ``cardd-moica:1``.
    :raises TokenError: any other rule (code ``invalid_token``).
    """
    text = _token_text(token)
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise TokenError("the token is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise TokenError("the token is not a JSON object")

    fmt = obj.get(FIELD_FORMAT)
    if not isinstance(fmt, str) or not fmt:
        raise TokenError("'format' field is missing, null or empty")
    if fmt != FORMAT:
        raise UnsupportedFormat(f"token format {fmt[:40]!r} is not supported; only {FORMAT!r}")
    unknown = set(obj) - FIELDS
    if unknown:
        raise TokenError(f"unknown token fields: {', '.join(sorted(k[:40] for k in unknown))}")

    cert_b64 = obj.get(FIELD_CERTIFICATE)
    if cert_b64 is None or cert_b64 == "":
        raise TokenError("'unverifiedCertificate' field is missing, null or empty")
    cert_der = _base64_field(FIELD_CERTIFICATE, cert_b64)

    algorithm = obj.get(FIELD_ALGORITHM)
    if algorithm is None or algorithm == "":
        raise TokenError("'algorithm' field is missing, null or empty")
    if algorithm != ALGORITHM:
        raise TokenError(f"unsupported signature algorithm; only {ALGORITHM}")

    signature_b64 = obj.get(FIELD_SIGNATURE)
    if signature_b64 is None or signature_b64 == "":
        raise TokenError("'signature' field is missing, null or empty")
    signature = _base64_field(FIELD_SIGNATURE, signature_b64)

    app_version = obj.get(FIELD_APP_VERSION)
    if not isinstance(app_version, str) or not app_version:
        raise TokenError("'appVersion' field is missing, null, empty or not a string")
    if len(app_version) > APP_VERSION_MAX_LENGTH:
        raise TokenError("'appVersion' is too long")
    return RawToken(fmt, cert_der, algorithm, signature, app_version)


def load_token_certificate(cert_der: bytes) -> x509.Certificate:
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        cert.extensions  # noqa: B018 - parsed lazily; a malformed extension fails here
    except ValueError as exc:
        raise TokenError("'unverifiedCertificate' is not an X.509 certificate") from exc
    return cert


def parse_token(token: str | bytes) -> AuthToken:
    """Parse and syntax-check a token. Proves nothing about who made it.

    :raises UnsupportedFormat: ``format`` is present but not ``cardd-moica:1``.
    :raises TokenError: any other rule (code ``invalid_token``).
    """
    raw = parse_token_fields(token)
    return AuthToken(
        format=raw.format,
        certificate=load_token_certificate(raw.certificate_der),
        certificate_der=raw.certificate_der,
        algorithm=raw.algorithm,
        signature=raw.signature,
        app_version=raw.app_version,
    )


def signed_data(origin: str, nonce: str) -> bytes:
    """``SHA256(origin) || SHA256(nonce)``, 64 bytes: what the card signs (with SHA-256 again).

    Both inputs are syntax-checked first: cardd never signs anything else.

    :raises OriginMismatch: ``origin`` is not exactly ``https://host[:port]``.
    :raises BadNonce: ``nonce`` is not base64 of 44–128 characters.
    """
    origin = validate_origin(origin)
    nonce = validate_nonce(nonce)
    return (
        hashlib.sha256(origin.encode("utf-8")).digest()
        + hashlib.sha256(nonce.encode("utf-8")).digest()
    )


def validate_nonce(nonce: object) -> str:
    """Return ``nonce`` if it is 44–128 characters of base64, else raise :class:`BadNonce`.

    Accepted: the standard alphabet with correct padding (what Web eID and
    :class:`~cardd.moica.verify.NonceStore` issue), or the URL-safe alphabet with or without
    padding. Never a mix, never whitespace. Freshness and single use are the verifier's job.
    """
    if not isinstance(nonce, str):
        raise BadNonce("the nonce must be a string")
    if not NONCE_MIN_LENGTH <= len(nonce) <= NONCE_MAX_LENGTH:
        raise BadNonce(f"the nonce must be {NONCE_MIN_LENGTH}–{NONCE_MAX_LENGTH} characters")
    if _BASE64_RE.fullmatch(nonce):
        return nonce
    if _BASE64URL_RE.fullmatch(nonce):
        body = nonce.rstrip("=")
        padded = len(nonce) != len(body)
        if len(body) % 4 != 1 and (not padded or len(nonce) % 4 == 0):
            return nonce
    raise BadNonce("the nonce is not base64")


@functools.lru_cache(maxsize=256)
def _valid_origin(origin: str) -> str:
    return _validate_origin(origin)


def validate_origin(origin: object) -> str:
    """See :func:`_validate_origin`; valid origins are remembered (a relying party has a few)."""
    if isinstance(origin, str):
        return _valid_origin(origin)
    return _validate_origin(origin)


def _validate_origin(origin: object) -> str:
    """Return ``origin`` if it is exactly ``https://host[:port]`` as a browser sends it.

    Also ``http://localhost[:port]``, ``http://127.0.0.1[:port]`` and ``http://[::1][:port]``:
    loopback pages are secure contexts for browsers (local development, the demo site); see
    ``_LOOPBACK_HTTP_RE``.

    Rules (web-eid-app ``validateAndStoreOrigin``, tightened to what an ``Origin`` header can
    hold): at most 255 ASCII characters; scheme ``https``; no user info, path (not even "/"),
    query or fragment; host a lower-case DNS name, a dotted-quad IPv4 address or a bracketed
    IPv6 address in canonical form; port 1–65535 without leading zeros and not 443. Upper case
    and ``:443`` are refused rather than normalised because browsers never send them, so a
    relying party configured with them would fail every signature with a confusing error.

    :raises OriginMismatch: with the rule broken.
    """
    if not isinstance(origin, str):
        raise OriginMismatch("the origin must be a string")
    if not origin or len(origin) > ORIGIN_MAX_LENGTH or not origin.isascii():
        raise OriginMismatch(f"the origin must be 1–{ORIGIN_MAX_LENGTH} ASCII characters")
    loopback = _LOOPBACK_HTTP_RE.fullmatch(origin)
    if loopback is not None:
        port = loopback.group("port")
        if port is not None and (port.startswith("0") or not 1 <= int(port) <= 65535
                                 or int(port) == 80):
            raise OriginMismatch("the origin's port must be 1–65535 without leading zeros, not 80")
        return origin
    match = _ORIGIN_RE.fullmatch(origin)
    if match is None:
        raise OriginMismatch(
            "the origin must be exactly https://host[:port] in lower case, "
            "without path, query or fragment"
        )
    host, port = match.group("host"), match.group("port")
    if host.startswith("["):
        _check_ipv6(host[1:-1])
    else:
        _check_host(host)
    if port is not None:
        if port.startswith("0") or not 1 <= int(port) <= 65535:
            raise OriginMismatch("the origin's port must be 1–65535 without leading zeros")
        if int(port) == 443:
            raise OriginMismatch("the origin must not name the default port 443")
    return origin


# -- internals ------------------------------------------------------------------------------


def _token_text(token: object) -> str:
    if token is None:
        raise TokenError("the token is null or too short")
    if isinstance(token, bytes | bytearray | memoryview):
        raw = bytes(token)
        # A UTF-8 character is at most 4 bytes: anything longer is too long before decoding.
        if len(raw) > 4 * TOKEN_MAX_LENGTH:
            raise TokenError("the token is too long")
        try:
            token = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TokenError("the token is not UTF-8") from exc
    if not isinstance(token, str):
        raise TokenError("the token must be a string")
    if len(token) < TOKEN_MIN_LENGTH:
        raise TokenError("the token is null or too short")
    if len(token) > TOKEN_MAX_LENGTH:
        raise TokenError("the token is too long")
    return token


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "signature" keys would let a proxy and the verifier see different tokens.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _base64_field(name: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise TokenError(f"{name!r} must be a base64 string")
    try:
        # strict_mode checks the alphabet, the padding and its position in C: the same rule as
        # the padded-alphabet regex, without a regex over a 1.5 KB certificate on every token.
        return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise TokenError(f"{name!r} is not base64") from exc


def _check_host(host: str) -> None:
    if len(host) > 253:
        raise OriginMismatch("the origin's host name is too long")
    labels = host.split(".")
    if not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise OriginMismatch("the origin's host is not a valid lower-case host name")
    if all(label.isdigit() for label in labels) or labels[-1].isdigit():
        # Browsers parse numeric hosts as IPv4 and serialise them as a dotted quad ("1.2.3"
        # becomes "1.2.0.3"); accept only the form they would send.
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise OriginMismatch("the origin's host is not a valid IPv4 address") from None
        if str(address) != host:
            raise OriginMismatch("the origin's IPv4 address is not in dotted-quad form")


def _check_ipv6(text: str) -> None:
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        raise OriginMismatch("the origin's host is not a valid IPv6 address") from None
    if address.compressed != text:
        raise OriginMismatch("the origin's IPv6 address is not in canonical compressed form")
