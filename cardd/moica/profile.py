# SPDX-License-Identifier: Apache-2.0
"""The MOICA certificate profile (moica.md §5): what a citizen certificate says about its holder.

Used by token verification and by ``POST /v1/moica/read``. Parsing never assumes more than the
certificate carries: CA certificates have no CN, names are UTF-8 Chinese, and any field may be
missing on a certificate that is not a citizen certificate at all. Missing fields are ``None``;
only unparseable input raises.

The last four ID characters live in subjectDirectoryAttributes (``2.5.29.9``), attribute
``2.16.886.1.100.2.51``. ``cryptography`` has no class for that extension, so its raw value is
decoded with asn1crypto, accepting any string type (which one real cards use is not documented).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier

from cardd.errors import CardDataInvalid
from cardd.moica.trust import (
    authority_key_id,
    fingerprint_sha256,
    pinned_generation_for_key_id,
    subject_key_id,
)

if TYPE_CHECKING:
    from cardd.moica.trust import TrustStore

OID_SUBJECT_DIRECTORY_ATTRIBUTES = ObjectIdentifier("2.5.29.9")
#: the SDA attribute holding the last 4 characters of the national ID (HiPKI: "subjectID")
OID_SUBJECT_ID_LAST4 = "2.16.886.1.100.2.51"

#: subject serialNumber of a citizen certificate: an opaque 16-digit number, not the ID
SUBJECT_SERIAL_RE = re.compile(r"[0-9]{16}")
_ID_LAST4_RE = re.compile(r"[A-Za-z0-9]{4}")

Usage = Literal["sign", "encrypt", "ca", "unknown"]

_KEY_USAGE_FLAGS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
)


@dataclass(frozen=True)
class CertificateProfile:
    """What a (citizen) certificate says, as plain values. ``repr`` leaves out personal data."""

    #: the holder's name (subject CN); None on CA certificates
    common_name: str | None
    #: subject serialNumber, 16 digits on citizen certificates (not the national ID)
    subject_serial_number: str | None
    #: last 4 characters of the national ID from the SDA attribute, as stored
    id_last4: str | None
    usage: Usage
    #: key usage flag names set ("digital_signature", "key_encipherment", …)
    key_usage: frozenset[str]
    is_ca: bool
    not_before: datetime
    not_after: datetime
    #: certificate serial number, upper-case hex of even length (as openssl prints it)
    certificate_serial: str
    subject_key_id: bytes | None
    authority_key_id: bytes | None
    #: "G2"/"G3" (pinned MOICA issuer), "test" (a test store's issuer) or None (unknown issuer)
    generation: str | None
    fingerprint_sha256: str

    def __repr__(self) -> str:
        # Names and ID digits stay out of logs (style.md §9); the serial identifies the cert.
        return (
            f"CertificateProfile(usage={self.usage!r}, serial={self.certificate_serial}, "
            f"generation={self.generation!r}, not_after={self.not_after.isoformat()})"
        )


def parse_profile(
    cert: x509.Certificate | bytes, *, trust: TrustStore | None = None
) -> CertificateProfile:
    """The profile of ``cert`` (a certificate or its DER).

    :param trust: when given, the generation comes from the store's anchor for the AKI (so test
        stores report ``"test"``); otherwise only pinned MOICA G2/G3 key identifiers are known.
    :raises CardDataInvalid: the bytes are not a certificate, or its extensions are malformed.
    """
    if isinstance(cert, bytes | bytearray | memoryview):
        try:
            cert = x509.load_der_x509_certificate(bytes(cert))
        except ValueError as exc:
            raise CardDataInvalid(f"not a DER certificate: {exc}") from exc
    try:
        extensions = cert.extensions
    except ValueError as exc:  # duplicate or malformed extensions; parsed lazily
        raise CardDataInvalid(f"certificate extensions are malformed: {exc}") from exc
    key_usage = _key_usage_names(extensions)
    is_ca = _is_ca(extensions)
    aki = authority_key_id(cert)
    if trust is not None:
        anchor = trust.anchor_for_key_id(aki)
        generation = anchor.generation if anchor is not None else None
    else:
        generation = pinned_generation_for_key_id(aki)
    return CertificateProfile(
        common_name=subject_attribute(cert.subject, NameOID.COMMON_NAME),
        subject_serial_number=subject_attribute(cert.subject, NameOID.SERIAL_NUMBER),
        id_last4=read_id_last4(cert),
        usage=_usage(key_usage, is_ca),
        key_usage=key_usage if key_usage is not None else frozenset(),
        is_ca=is_ca,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        certificate_serial=certificate_serial_hex(cert),
        subject_key_id=subject_key_id(cert),
        authority_key_id=aki,
        generation=generation,
        fingerprint_sha256=fingerprint_sha256(cert),
    )


def subject_attribute(name: x509.Name, oid: ObjectIdentifier) -> str | None:
    """The one value of ``oid`` in ``name``; None when absent, repeated or not a string."""
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1 or not isinstance(values[0].value, str):
        return None
    return values[0].value


def read_id_last4(cert: x509.Certificate) -> str | None:
    """The SDA ``2.16.886.1.100.2.51`` value if it is 4 ASCII letters/digits, else None.

    None also when the extension is missing or malformed: callers comparing an ID treat that
    as "cannot confirm", which is a mismatch.
    """
    try:
        ext = cert.extensions.get_extension_for_oid(OID_SUBJECT_DIRECTORY_ATTRIBUTES)
    except x509.ExtensionNotFound:
        return None
    raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else None
    if raw is None:
        return None
    try:
        attributes = asn1_x509.SubjectDirectoryAttributes.load(raw, strict=True)
        for attribute in attributes:
            if attribute["type"].dotted != OID_SUBJECT_ID_LAST4:
                continue
            for value in attribute["values"]:
                text = value.native
                if isinstance(text, str) and _ID_LAST4_RE.fullmatch(text):
                    return text
                return None  # the attribute is there but does not hold 4 characters
    except (ValueError, TypeError, KeyError):
        return None
    return None


def certificate_serial_hex(cert: x509.Certificate) -> str:
    """Upper-case hex of even length, as ``openssl x509 -serial`` prints it."""
    text = f"{cert.serial_number:X}"
    return text if len(text) % 2 == 0 else "0" + text


def is_subject_serial_number(value: str | None) -> bool:
    return value is not None and SUBJECT_SERIAL_RE.fullmatch(value) is not None


# -- internals ------------------------------------------------------------------------------


def _key_usage_names(extensions: x509.Extensions) -> frozenset[str] | None:
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    names = {flag for flag in _KEY_USAGE_FLAGS if getattr(usage, flag)}
    if usage.key_agreement:
        # encipher_only/decipher_only are only defined with keyAgreement (cryptography raises).
        if usage.encipher_only:
            names.add("encipher_only")
        if usage.decipher_only:
            names.add("decipher_only")
    return frozenset(names)


def _is_ca(extensions: x509.Extensions) -> bool:
    try:
        return bool(extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _usage(key_usage: frozenset[str] | None, is_ca: bool) -> Usage:
    if is_ca:
        return "ca"
    if key_usage is None:
        return "unknown"
    if "digital_signature" in key_usage:
        return "sign"
    if key_usage & {"key_encipherment", "data_encipherment", "key_agreement"}:
        return "encrypt"
    return "unknown"
