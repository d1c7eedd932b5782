# SPDX-License-Identifier: Apache-2.0
"""A small test PKI shaped like MOICA's (moica.md §5, §6): GRCA-like root → MOICA-like CA → citizen.

Everything here is **test material**. The names say TEST so nobody mistakes a fixture for a real
government certificate, and private keys are returned in the clear so tests can provision SoftHSM2.

Shape:

* root: self-signed, ``C=TW, O=行政院, CN=Test Government Root Certification Authority - TEST ONLY``;
  CA:TRUE without a path length, keyCertSign + cRLSign, SKI.
* MOICA-like intermediate: ``C=TW, O=行政院, OU=內政部憑證管理中心 (測試)`` and no CN, like the real
  one; CA:TRUE pathlen 0, keyCertSign + cRLSign, policy ``2.16.886.101.0.3.3``, SKI/AKI, a CRL DP
  pointing at the root's CRL.
* citizen: a signing and an encryption certificate sharing the subject
  ``C=TW, CN=<name>, serialNumber=<16 digits>``, with subjectDirectoryAttributes carrying
  ``2.16.886.1.100.2.51`` = the last 4 ID characters, keyUsage (critical) digitalSignature or
  keyEncipherment + dataEncipherment, policy ``2.16.886.101.0.3.3``, SKI/AKI, a CRL DP and an AIA
  (OCSP + caIssuers) at configurable URLs, RSA-2048 keys, sha256WithRSAEncryption.

SubjectDirectoryAttributes encoding (RFC 5280 §4.2.1.8), built by hand because ``cryptography``
has no class for it and is given the bytes as an :class:`~cryptography.x509.UnrecognizedExtension`::

    SEQUENCE {                      -- SubjectDirectoryAttributes ::= SEQUENCE SIZE (1..MAX) OF Attribute
      SEQUENCE {                    -- Attribute
        OBJECT IDENTIFIER 2.16.886.1.100.2.51
        SET { PrintableString "6789" } } }

PrintableString because the value is 4 characters of a national ID (a letter and digits); which
string type real cards use is not documented, so readers should accept any string type.

Names are deterministic; keys and serial numbers are random, so regenerated fixtures differ byte
for byte. CRLs and an OCSP responder belong in later work: :class:`PkiEndpoints` and the returned
keys are what they will need.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID, ObjectIdentifier

#: GPKI certificate policy, level 3 (moica.md §5, §6.1).
OID_GPKI_LEVEL3 = ObjectIdentifier("2.16.886.101.0.3.3")
#: subjectDirectoryAttributes extension.
OID_SUBJECT_DIRECTORY_ATTRIBUTES = ObjectIdentifier("2.5.29.9")
#: The SDA attribute holding the last 4 characters of the national ID (HiPKI: "subjectID").
OID_SUBJECT_ID_LAST4 = ObjectIdentifier("2.16.886.1.100.2.51")

ROOT_CN = "Test Government Root Certification Authority - TEST ONLY"
ORG_EXECUTIVE_YUAN = "行政院"
MOICA_TEST_OU = "內政部憑證管理中心 (測試)"

DEFAULT_BASE_URL = "http://127.0.0.1:7431"
DEFAULT_NOT_BEFORE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
# Far enough ahead that committed fixtures stay valid for the project's lifetime.
DEFAULT_NOT_AFTER = dt.datetime(2044, 1, 1, tzinfo=dt.UTC)
DEFAULT_KEY_SIZE = 2048
# Real root keys are RSA-4096; 2048 keeps test runs fast and changes nothing a reader checks.
DEFAULT_ROOT_KEY_SIZE = 2048

_SERIAL_NUMBER_RE = re.compile(r"[0-9]{16}")
_ID_LAST4_RE = re.compile(r"[A-Z0-9]{4}")


@dataclass(frozen=True)
class Validity:
    not_before: dt.datetime = DEFAULT_NOT_BEFORE
    not_after: dt.datetime = DEFAULT_NOT_AFTER

    def __post_init__(self) -> None:
        if self.not_before.tzinfo is None or self.not_after.tzinfo is None:
            raise ValueError("validity times must be timezone-aware")
        if self.not_after <= self.not_before:
            raise ValueError("not_after must be after not_before")


@dataclass(frozen=True)
class PkiEndpoints:
    """Where the test PKI says its CRLs and OCSP responder are (served by later test code)."""

    root_crl: str
    moica_crl: str
    ocsp: str
    moica_ca_issuers: str

    @classmethod
    def at(cls, base_url: str = DEFAULT_BASE_URL) -> PkiEndpoints:
        base = base_url.rstrip("/")
        return cls(
            root_crl=f"{base}/crl/test-grca.crl",
            moica_crl=f"{base}/crl/test-moica.crl",
            ocsp=f"{base}/ocsp",
            moica_ca_issuers=f"{base}/certs/test-moica.cer",
        )


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and its private key."""

    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey

    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pkcs8_der(self) -> bytes:
        """The private key as unencrypted PKCS#8 DER (what ``softhsm2-util --import`` takes)."""
        return self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def key_pkcs8_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class CitizenIdentity:
    """One citizen's signing and encryption certificates (one subject, two keys)."""

    name: str
    serial_number: str
    id_last4: str
    signing: IssuedCertificate
    encryption: IssuedCertificate


@dataclass(frozen=True)
class TestPki:
    """A root and a MOICA-like CA, able to issue citizens."""

    __test__ = False  # not a pytest test class despite the name

    root: IssuedCertificate
    moica: IssuedCertificate
    endpoints: PkiEndpoints
    validity: Validity

    def issue_citizen(
        self,
        name: str,
        serial_number: str,
        id_last4: str,
        *,
        validity: Validity | None = None,
        key_size: int = DEFAULT_KEY_SIZE,
    ) -> CitizenIdentity:
        return make_citizen(
            self.moica,
            name=name,
            serial_number=serial_number,
            id_last4=id_last4,
            endpoints=self.endpoints,
            validity=validity or self.validity,
            key_size=key_size,
        )


def make_test_pki(
    *,
    endpoints: PkiEndpoints | None = None,
    validity: Validity | None = None,
    root_key_size: int = DEFAULT_ROOT_KEY_SIZE,
    ca_key_size: int = DEFAULT_KEY_SIZE,
) -> TestPki:
    """A fresh root and MOICA-like CA."""
    endpoints = endpoints or PkiEndpoints.at()
    validity = validity or Validity()
    root = make_root(validity=validity, key_size=root_key_size)
    moica = make_moica_ca(root, endpoints=endpoints, validity=validity, key_size=ca_key_size)
    return TestPki(root=root, moica=moica, endpoints=endpoints, validity=validity)


def make_root(
    *, validity: Validity | None = None, key_size: int = DEFAULT_ROOT_KEY_SIZE
) -> IssuedCertificate:
    """A self-signed GRCA-like root."""
    validity = validity or Validity()
    key = new_rsa_key(key_size)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "TW"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG_EXECUTIVE_YUAN),
            x509.NameAttribute(NameOID.COMMON_NAME, ROOT_CN),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _builder(name, name, key, validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(ski, critical=False)
    )
    return IssuedCertificate(builder.sign(key, hashes.SHA256()), key)


def make_moica_ca(
    root: IssuedCertificate,
    *,
    endpoints: PkiEndpoints | None = None,
    validity: Validity | None = None,
    key_size: int = DEFAULT_KEY_SIZE,
) -> IssuedCertificate:
    """A MOICA-like intermediate under ``root``. Like the real one, its subject has no CN."""
    endpoints = endpoints or PkiEndpoints.at()
    validity = validity or Validity()
    key = new_rsa_key(key_size)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "TW"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG_EXECUTIVE_YUAN),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, MOICA_TEST_OU),
        ]
    )
    builder = (
        _builder(name, root.certificate.subject, key, validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(_policies(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_aki(root), critical=False)
        .add_extension(_crl_dp(endpoints.root_crl), critical=False)
    )
    return IssuedCertificate(builder.sign(root.private_key, hashes.SHA256()), key)


def make_citizen(
    ca: IssuedCertificate,
    *,
    name: str,
    serial_number: str,
    id_last4: str,
    endpoints: PkiEndpoints | None = None,
    validity: Validity | None = None,
    key_size: int = DEFAULT_KEY_SIZE,
) -> CitizenIdentity:
    """A citizen's signing and encryption certificates, issued by ``ca``.

    :param name: the holder's name as on the card, e.g. ``王小明``.
    :param serial_number: the subject serialNumber, 16 digits (an opaque number, not the ID).
    :param id_last4: the last 4 characters of the national ID, for the SDA attribute.
    """
    if not name:
        raise ValueError("name must not be empty")
    if not _SERIAL_NUMBER_RE.fullmatch(serial_number):
        raise ValueError("serial_number must be 16 digits")
    if not _ID_LAST4_RE.fullmatch(id_last4):
        raise ValueError("id_last4 must be 4 upper-case letters or digits")
    endpoints = endpoints or PkiEndpoints.at()
    validity = validity or Validity()
    subject = citizen_subject(name, serial_number)
    signing_usage = key_usage("digital_signature")
    encryption_usage = key_usage("key_encipherment", "data_encipherment")
    return CitizenIdentity(
        name=name,
        serial_number=serial_number,
        id_last4=id_last4,
        signing=_end_entity(ca, subject, signing_usage, id_last4, endpoints, validity, key_size),
        encryption=_end_entity(
            ca, subject, encryption_usage, id_last4, endpoints, validity, key_size
        ),
    )


def citizen_subject(name: str, serial_number: str) -> x509.Name:
    """Exactly ``C=TW, CN=<name>, serialNumber=<16 digits>`` (moica.md §5), in that order."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "TW"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number),
        ]
    )


def subject_directory_attributes(id_last4: str) -> bytes:
    """DER of a SubjectDirectoryAttributes holding ``2.16.886.1.100.2.51`` = ``id_last4``."""
    if not id_last4.isascii() or not id_last4.isalnum():
        raise ValueError("id_last4 must be ASCII letters and digits")
    value = _tlv(0x13, id_last4.encode("ascii"))  # PrintableString
    attribute = _tlv(0x30, _oid_der(OID_SUBJECT_ID_LAST4) + _tlv(0x31, value))
    return _tlv(0x30, attribute)


def new_rsa_key(key_size: int = DEFAULT_KEY_SIZE) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def random_serial() -> int:
    """A positive certificate serial of 64 to 127 bits (moica.md §5: real ones are 64–128)."""
    return secrets.randbits(127) | (1 << 63)


# -- revocation material (CRLs, delegated OCSP responders) -----------------------------------

#: sha256WithRSAEncryption AlgorithmIdentifier, DER (NULL parameters, as RFC 4055 requires).
_SHA256_RSA_ALG_DER = bytes.fromhex("300d06092a864886f70d01010b0500")


@dataclass(frozen=True)
class RevokedEntry:
    """One CRL entry: a serial, when it was revoked and, optionally, why."""

    serial: int
    revoked_at: dt.datetime = DEFAULT_NOT_BEFORE
    reason: x509.ReasonFlags | None = None


def make_crl(
    ca: IssuedCertificate,
    revoked: Iterable[int | RevokedEntry] = (),
    *,
    this_update: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
    crl_number: int = 1,
    signing_key: rsa.RSAPrivateKey | None = None,
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateRevocationList:
    """A complete CRL issued by ``ca`` (cryptography's builder; fine up to a few thousand entries).

    :param revoked: serials, or :class:`RevokedEntry` for a date and a reasonCode entry extension.
    :param this_update: defaults to now; ``next_update`` defaults to ``this_update`` + 1 day.
    :param signing_key: sign with this key instead of the CA's (a "badly signed" CRL).
    :param extra_extensions: more CRL extensions, e.g. a DeltaCRLIndicator for refusal tests.
    """
    this_update = this_update or dt.datetime.now(dt.UTC).replace(microsecond=0)
    next_update = next_update or this_update + dt.timedelta(days=1)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(_aki(ca), critical=False)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
    )
    for ext, critical in extra_extensions:
        builder = builder.add_extension(ext, critical=critical)
    for item in revoked:
        entry = item if isinstance(item, RevokedEntry) else RevokedEntry(item)
        rc = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        if entry.reason is not None:
            rc = rc.add_extension(x509.CRLReason(entry.reason), critical=False)
        builder = builder.add_revoked_certificate(rc.build())
    return builder.sign(signing_key or ca.private_key, hashes.SHA256())


def make_crl_der_fast(
    ca: IssuedCertificate,
    serials: Sequence[int],
    *,
    this_update: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
    crl_number: int = 1,
    revoked_at: dt.datetime | Sequence[dt.datetime] = DEFAULT_NOT_BEFORE,
    with_reason: bool = True,
) -> bytes:
    """DER of a large complete CRL, written by hand and signed with ``ca``'s key (sha256WithRSA).

    cryptography's builder takes minutes for MOICA-sized CRLs (~412,000 entries); this writes the
    same structure in seconds. Every entry has ``revoked_at`` (UTCTime) and, with ``with_reason``,
    a reasonCode extension (keyCompromise), which makes the entries about as long as MOICA's.
    ``revoked_at`` is one time for all entries or one per serial. Serials must be non-negative.
    """
    this_update = this_update or dt.datetime.now(dt.UTC).replace(microsecond=0)
    next_update = next_update or this_update + dt.timedelta(days=1)
    times = [revoked_at] * len(serials) if isinstance(revoked_at, dt.datetime) else revoked_at
    if len(times) != len(serials):
        raise ValueError("revoked_at must give one time per serial")
    # Extensions { Extension { reasonCode, OCTET STRING { ENUMERATED 1 } } }
    reason = bytes.fromhex("300c300a0603551d150403 0a0101".replace(" ", "")) if with_reason else b""
    entries = []
    encoded: dict[dt.datetime, bytes] = {}
    for serial, when in zip(serials, times, strict=True):
        if serial < 0:
            raise ValueError("serials must be non-negative")
        raw = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # room for the sign bit
        date = encoded.get(when)
        if date is None:
            date = encoded[when] = _tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))
        entries.append(_tlv(0x30, _tlv(0x02, raw) + date + reason))
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = _tlv(0x30, _tlv(0x80, ski.digest))
    number = _tlv(0x02, crl_number.to_bytes(crl_number.bit_length() // 8 + 1, "big"))
    extensions = _tlv(
        0x30,
        _tlv(0x30, _oid_der(x509.oid.ExtensionOID.AUTHORITY_KEY_IDENTIFIER) + _tlv(0x04, aki))
        + _tlv(0x30, _oid_der(x509.oid.ExtensionOID.CRL_NUMBER) + _tlv(0x04, number)),
    )
    tbs = _tlv(
        0x30,
        b"".join(
            (
                _tlv(0x02, b"\x01"),  # v2
                _SHA256_RSA_ALG_DER,
                ca.certificate.subject.public_bytes(),
                _tlv(0x17, this_update.strftime("%y%m%d%H%M%SZ").encode("ascii")),
                _tlv(0x17, next_update.strftime("%y%m%d%H%M%SZ").encode("ascii")),
                _tlv(0x30, b"".join(entries)) if entries else b"",
                _tlv(0xA0, extensions),
            )
        ),
    )
    signature = ca.private_key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    return _tlv(0x30, tbs + _SHA256_RSA_ALG_DER + _tlv(0x03, b"\x00" + signature))


def make_ocsp_responder(
    ca: IssuedCertificate,
    *,
    eku: bool = True,
    validity: Validity | None = None,
    key_size: int = DEFAULT_KEY_SIZE,
    name: str = "Test MOICA OCSP Responder - TEST ONLY",
) -> IssuedCertificate:
    """A delegated OCSP responder certificate issued by ``ca`` (RFC 6960 §4.2.2.2).

    With ``eku`` it carries extendedKeyUsage id-kp-OCSPSigning and id-pkix-ocsp-nocheck, as a
    delegated responder must; ``eku=False`` makes the "responder without the EKU" fixture.
    """
    validity = validity or Validity()
    key = new_rsa_key(key_size)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "TW"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORG_EXECUTIVE_YUAN),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    usage = key_usage("digital_signature")
    builder = (
        _builder(subject, ca.certificate.subject, key, validity)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_aki(ca), critical=False)
    )
    if eku:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
        ).add_extension(x509.OCSPNoCheck(), critical=False)
    return IssuedCertificate(builder.sign(ca.private_key, hashes.SHA256()), key)


# -- internals ------------------------------------------------------------------------------


def _end_entity(
    ca: IssuedCertificate,
    subject: x509.Name,
    usage: x509.KeyUsage,
    id_last4: str,
    endpoints: PkiEndpoints,
    validity: Validity,
    key_size: int,
) -> IssuedCertificate:
    key = new_rsa_key(key_size)
    aia = x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(endpoints.ocsp)
            ),
            x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(endpoints.moica_ca_issuers),
            ),
        ]
    )
    sda = x509.UnrecognizedExtension(
        OID_SUBJECT_DIRECTORY_ATTRIBUTES, subject_directory_attributes(id_last4)
    )
    builder = (
        _builder(subject, ca.certificate.subject, key, validity)
        .add_extension(usage, critical=True)
        .add_extension(_policies(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(_aki(ca), critical=False)
        .add_extension(_crl_dp(endpoints.moica_crl), critical=False)
        .add_extension(aia, critical=False)
        .add_extension(sda, critical=False)
    )
    return IssuedCertificate(builder.sign(ca.private_key, hashes.SHA256()), key)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey, validity: Validity
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
    )


def key_usage(*flags: str) -> x509.KeyUsage:
    """A KeyUsage with exactly ``flags`` set (names as cryptography spells them)."""
    unknown = set(flags) - set(_KEY_USAGE_FLAGS)
    if unknown:
        raise ValueError(f"unknown key usage flags: {sorted(unknown)}")
    return x509.KeyUsage(**{name: name in flags for name in _KEY_USAGE_FLAGS})


_KEY_USAGE_FLAGS = (
    "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
    "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only",
)


def _ca_key_usage() -> x509.KeyUsage:
    return key_usage("key_cert_sign", "crl_sign")


def _policies() -> x509.CertificatePolicies:
    return x509.CertificatePolicies([x509.PolicyInformation(OID_GPKI_LEVEL3, None)])


def _aki(issuer: IssuedCertificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _crl_dp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw + value


def _oid_der(oid: ObjectIdentifier) -> bytes:
    arcs = [int(a) for a in oid.dotted_string.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return _tlv(0x06, bytes(body))
