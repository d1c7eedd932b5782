# SPDX-License-Identifier: Apache-2.0
"""verify_token: Web eID's validator test list case for case (bridge-security.md §1.5), and NonceStore.

Tokens are signed here with the test PKI's private keys (cardd.sim.testpki), exactly as a card
would sign through PKCS#11 CKM_SHA256_RSA_PKCS. Revocation goes through a fake
RevocationChecker: the real OCSP/CRL paths have their own tests. Web eID cases that need
Estonian certificates are mapped to MOICA-shaped equivalents; the OCSP-responder cases are not
here (they belong to the revocation checker's tests).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cardd.errors import (
    BadNonce,
    CertExpired,
    CertNotYetValid,
    CertRevoked,
    IdMismatch,
    OriginMismatch,
    RevocationUnknown,
    SignatureInvalid,
    TokenError,
    UnsupportedFormat,
    UntrustedChain,
    WrongKeyUsage,
)
from cardd.moica.profile import parse_profile
from cardd.moica.token import make_token, signed_data, validate_nonce
from cardd.moica.trust import TrustStore
from cardd.moica.types import RevocationPolicy, RevocationResult, RevocationStatus
from cardd.moica.verify import NonceStore, VerificationResult, verify_token
from cardd.sim import testpki
from cardd.sim.testpki import IssuedCertificate, TestPki, Validity

SHARED_TRUST = Path(__file__).parents[2].parent / "shared" / "trust"

ORIGIN = "https://library.example.tw"
NONCE = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
NAME, SERIAL, LAST4 = "王小明", "1234567890123456", "6789"


def utc(year: int, month: int, day: int) -> dt.datetime:
    return dt.datetime(year, month, day, tzinfo=dt.UTC)


# -- fixtures and helpers ------------------------------------------------------------------


@dataclass
class FakeChecker:
    """A RevocationChecker that answers what it is told and records what it was asked."""

    status: RevocationStatus = RevocationStatus.GOOD
    method: str = "ocsp"
    raises: Exception | None = None
    calls: list[tuple[x509.Certificate, x509.Certificate, dt.datetime]] = field(
        default_factory=list
    )

    def check(
        self, cert: x509.Certificate, issuer: x509.Certificate, *, now: dt.datetime
    ) -> RevocationResult:
        self.calls.append((cert, issuer, now))
        if self.raises is not None:
            raise self.raises
        return RevocationResult(self.status, self.method, produced_at=now)


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return testpki.make_test_pki()


@pytest.fixture(scope="module")
def citizen(pki: TestPki) -> testpki.CitizenIdentity:
    return pki.issue_citizen(NAME, SERIAL, LAST4)


@pytest.fixture(scope="module")
def store(pki: TestPki) -> TrustStore:
    return TrustStore([pki.moica.certificate], pinned=False)


@pytest.fixture(scope="module")
def spare_key() -> rsa.RSAPrivateKey:
    """One key for hand-built leaves: which key a leaf has does not matter to these tests."""
    return testpki.new_rsa_key()


def sign(key: rsa.RSAPrivateKey, origin: str = ORIGIN, nonce: str = NONCE) -> bytes:
    return key.sign(signed_data(origin, nonce), padding.PKCS1v15(), hashes.SHA256())


def token_for(
    issued: IssuedCertificate,
    *,
    origin: str = ORIGIN,
    nonce: str = NONCE,
    key: rsa.RSAPrivateKey | None = None,
) -> str:
    signature = sign(key or issued.private_key, origin, nonce)
    return make_token(issued.der(), signature, "cardd/0.1.0")


def replace_field(token: str, **changes: object) -> str:
    fields = json.loads(token)
    for name, value in changes.items():
        if value is ...:
            del fields[name]
        else:
            fields[name] = value
    return json.dumps(fields)


def run(token: str | bytes, store: TrustStore, **kwargs: object) -> VerificationResult:
    options: dict[str, object] = {
        "expected_origin": ORIGIN,
        "nonce": NONCE,
        "trust": store,
        "revocation": FakeChecker(),
        "now": NOW,
    }
    options.update(kwargs)
    return verify_token(token, **options)  # type: ignore[arg-type]


def issue_leaf(
    ca: IssuedCertificate,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    key_usage: x509.KeyUsage | None = None,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    aki: bool = True,
    subject: x509.Name | None = None,
    issuer: x509.Name | None = None,
    validity: Validity | None = None,
    sda: bool = True,
) -> IssuedCertificate:
    """A citizen-like leaf built by hand, for the shapes testpki does not make."""
    validity = validity or Validity()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or testpki.citizen_subject(NAME, SERIAL))
        .issuer_name(issuer or ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(testpki.random_serial())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if aki:
        builder = builder.add_extension(testpki._aki(ca), critical=False)
    if sda:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                testpki.OID_SUBJECT_DIRECTORY_ATTRIBUTES,
                testpki.subject_directory_attributes(LAST4),
            ),
            critical=False,
        )
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    cert = builder.sign(ca.private_key, hashes.SHA256())
    return IssuedCertificate(cert, key)  # type: ignore[arg-type]


def usage(**flags: bool) -> x509.KeyUsage:
    names = (
        "digital_signature content_commitment key_encipherment data_encipherment key_agreement "
        "key_cert_sign crl_sign encipher_only decipher_only"
    ).split()
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


SIGN_USAGE = usage(digital_signature=True)


def ca_with_validity(validity: Validity) -> IssuedCertificate:
    return testpki.make_moica_ca(testpki.make_root(), validity=validity)


def clone_ca_profile(real: x509.Certificate) -> IssuedCertificate:
    """A test CA with a real MOICA certificate's subject, validity and extensions, but a test key.

    Shows that the real G2 and G3 extension profiles pass cryptography's webpki CA policy,
    without any real private key.
    """
    root = testpki.make_root()
    key = testpki.new_rsa_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(real.serial_number)
        .not_valid_before(real.not_valid_before_utc)
        .not_valid_after(real.not_valid_after_utc)
    )
    for ext in real.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectKeyIdentifier):
            value = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        elif isinstance(value, x509.AuthorityKeyIdentifier):
            value = testpki._aki(root)
        builder = builder.add_extension(value, ext.critical)
    return IssuedCertificate(builder.sign(root.private_key, hashes.SHA256()), key)


def real_ca(name: str) -> x509.Certificate:
    path = SHARED_TRUST / f"{name}.pem"
    if not path.is_file():
        pytest.skip(f"the real MOICA certificates are not at {SHARED_TRUST} (../shared/trust)")
    return x509.load_pem_x509_certificate(path.read_bytes())


# -- valid token (AuthTokenSignatureTest.whenValidTokenAndNonce_thenValidationSucceeds) ------


def test_valid_token_passes_and_reports_the_holder(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    checker = FakeChecker()
    result = run(token_for(citizen.signing), store, revocation=checker)
    cert = citizen.signing.certificate
    assert result.holder_name == NAME
    assert result.id_last4 == LAST4
    assert result.subject_serial_number == SERIAL
    serial_hex = f"{cert.serial_number:X}"
    assert result.certificate_serial == serial_hex.zfill(len(serial_hex) + len(serial_hex) % 2)
    assert int(result.certificate_serial, 16) == cert.serial_number
    assert result.generation == "test"
    assert (result.revocation_method, result.revocation_status) == ("ocsp", RevocationStatus.GOOD)
    assert result.not_after == cert.not_valid_after_utc
    assert result.certificate == cert


def test_valid_rs256_token_as_bytes_passes(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    assert run(token_for(citizen.signing).encode(), store).holder_name == NAME


def test_result_repr_has_no_personal_data(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    text = repr(run(token_for(citizen.signing), store))
    assert NAME not in text and LAST4 not in text and SERIAL not in text


def test_naive_now_is_utc(citizen: testpki.CitizenIdentity, store: TrustStore) -> None:
    checker = FakeChecker()
    run(token_for(citizen.signing), store, now=NOW.replace(tzinfo=None), revocation=checker)
    assert checker.calls[0][2] == NOW


def test_default_now_is_the_current_time(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    checker = FakeChecker()
    run(token_for(citizen.signing), store, now=None, revocation=checker)
    assert abs(checker.calls[0][2] - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)


def test_nonce_from_nonce_store_verifies(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    nonces = NonceStore()
    nonce = nonces.issue(session="s1")
    token = token_for(citizen.signing, nonce=nonce)
    assert nonces.consume(nonce, session="s1")
    assert run(token, store, nonce=nonce).holder_name == NAME


# -- AuthTokenStructureTest through verify_token ----------------------------------------------


@pytest.mark.parametrize(
    "token", [None, "null", "x" * 99, "x" * 10_001, "{" * 200, '"' + "a" * 150 + '"'], ids=repr
)
def test_structure_failures_are_invalid_token(token: object, store: TrustStore) -> None:
    with pytest.raises(TokenError) as exc:
        run(token, store)  # type: ignore[arg-type]
    assert exc.value.code == "invalid_token"


def test_unknown_format_version_fails(citizen: testpki.CitizenIdentity, store: TrustStore) -> None:
    with pytest.raises(UnsupportedFormat):
        run(replace_field(token_for(citizen.signing), format="invalid"), store)


# -- AuthTokenAlgorithmTest ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["NONE", "", "\u0000\t\ninvalid", "PS256", "ES384"])
def test_algorithm_other_than_rs256_fails(
    algorithm: str, citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    with pytest.raises(TokenError) as exc:
        run(replace_field(token_for(citizen.signing), algorithm=algorithm), store)
    assert exc.value.code == "invalid_token"


# -- AuthTokenCertificateTest ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        ...,
        "",
        [1, 2, 3, 4],
        1234,
        "This is not a certificate",
        "VGhpcyBpcyBub3QgYSBjZXJ0aWZpY2F0ZQ==",
    ],
    ids=["missing", "empty", "array", "number", "not-base64", "not-a-certificate"],
)
def test_certificate_field_failures_are_invalid_token(
    value: object, citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    with pytest.raises(TokenError) as exc:
        run(replace_field(token_for(citizen.signing), unverifiedCertificate=value), store)
    assert exc.value.code == "invalid_token"


def test_certificate_key_usage_missing_fails(
    pki: TestPki, store: TrustStore, spare_key: rsa.RSAPrivateKey
) -> None:
    leaf = issue_leaf(pki.moica, spare_key, key_usage=None)
    with pytest.raises(WrongKeyUsage, match="no key usage"):
        run(token_for(leaf), store)


def test_certificate_wrong_purpose_encryption_cert_fails(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    # The card's second certificate: keyEncipherment + dataEncipherment, no digitalSignature.
    with pytest.raises(WrongKeyUsage) as exc:
        run(token_for(citizen.encryption), store)
    assert exc.value.code == "wrong_key_usage"


def test_encryption_cert_fails_even_with_a_good_signature_for_its_key(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    token = token_for(citizen.encryption, key=citizen.encryption.private_key)
    with pytest.raises(WrongKeyUsage):
        run(token, store)


@pytest.mark.parametrize(
    "extra",
    [
        ((x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),),
        ((x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False),),
        ((x509.BasicConstraints(ca=True, path_length=None), True),),
    ],
    ids=["eku-server-auth-only", "eku-email-only", "ca-true"],
)
def test_certificate_wrong_purpose_variants_fail(
    extra: tuple[tuple[x509.ExtensionType, bool], ...],
    pki: TestPki,
    store: TrustStore,
    spare_key: rsa.RSAPrivateKey,
) -> None:
    leaf = issue_leaf(pki.moica, spare_key, key_usage=SIGN_USAGE, extra=extra)
    with pytest.raises(WrongKeyUsage):
        run(token_for(leaf), store)


def test_certificate_with_key_cert_sign_fails(
    pki: TestPki, store: TrustStore, spare_key: rsa.RSAPrivateKey
) -> None:
    leaf = issue_leaf(
        pki.moica, spare_key, key_usage=usage(digital_signature=True, key_cert_sign=True)
    )
    with pytest.raises(WrongKeyUsage):
        run(token_for(leaf), store)


def test_certificate_with_client_auth_eku_passes(
    pki: TestPki, store: TrustStore, spare_key: rsa.RSAPrivateKey
) -> None:
    eku = x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.EMAIL_PROTECTION]
    )
    leaf = issue_leaf(pki.moica, spare_key, key_usage=SIGN_USAGE, extra=((eku, False),))
    assert run(token_for(leaf), store).holder_name == NAME


def test_certificate_with_content_commitment_too_passes(
    pki: TestPki, store: TrustStore, spare_key: rsa.RSAPrivateKey
) -> None:
    leaf = issue_leaf(
        pki.moica, spare_key, key_usage=usage(digital_signature=True, content_commitment=True)
    )
    assert run(token_for(leaf), store).holder_name == NAME


def test_certificate_with_unknown_critical_extension_fails(
    pki: TestPki, store: TrustStore, spare_key: rsa.RSAPrivateKey
) -> None:
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    leaf = issue_leaf(pki.moica, spare_key, key_usage=SIGN_USAGE, extra=((unknown, True),))
    with pytest.raises(UntrustedChain):
        run(token_for(leaf), store)


def test_certificate_expired_fails(pki: TestPki, store: TrustStore) -> None:
    old = pki.issue_citizen(
        NAME, SERIAL, LAST4, validity=Validity(utc(2020, 1, 1), utc(2024, 12, 31))
    )
    with pytest.raises(CertExpired) as exc:
        run(token_for(old.signing), store)
    assert exc.value.code == "cert_expired"


def test_certificate_not_yet_valid_fails(pki: TestPki, store: TrustStore) -> None:
    new = pki.issue_citizen(
        NAME, SERIAL, LAST4, validity=Validity(utc(2025, 6, 2), utc(2030, 1, 1))
    )
    with pytest.raises(CertNotYetValid) as exc:
        run(token_for(new.signing), store)
    assert exc.value.code == "cert_not_yet_valid"


def test_certificate_validity_bounds_are_inclusive(pki: TestPki, store: TrustStore) -> None:
    leaf = pki.issue_citizen(NAME, SERIAL, LAST4, validity=Validity(utc(2025, 1, 1), NOW))
    assert run(token_for(leaf.signing), store, now=NOW).holder_name == NAME
    with pytest.raises(CertExpired):
        run(token_for(leaf.signing), store, now=NOW + dt.timedelta(seconds=1))


def test_user_certificate_no_longer_valid_fails(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    # Web eID whenUserCertificateIsNoLongerValid: the same valid token, judged later.
    with pytest.raises(CertExpired):
        run(token_for(citizen.signing), store, now=utc(2044, 1, 2))


def test_trusted_ca_not_yet_valid_fails_as_untrusted_chain() -> None:
    ca = ca_with_validity(Validity(utc(2025, 7, 1), utc(2044, 1, 1)))
    leaf = testpki.make_citizen(
        ca,
        name=NAME,
        serial_number=SERIAL,
        id_last4=LAST4,
        validity=Validity(utc(2024, 1, 1), utc(2030, 1, 1)),
    )
    store = TrustStore([ca.certificate], pinned=False)
    with pytest.raises(UntrustedChain, match="not valid"):
        run(token_for(leaf.signing), store)


def test_trusted_ca_expired_fails_as_untrusted_chain() -> None:
    ca = ca_with_validity(Validity(utc(2015, 1, 1), utc(2025, 1, 1)))
    leaf = testpki.make_citizen(
        ca,
        name=NAME,
        serial_number=SERIAL,
        id_last4=LAST4,
        validity=Validity(utc(2024, 1, 1), utc(2030, 1, 1)),
    )
    store = TrustStore([ca.certificate], pinned=False)
    with pytest.raises(UntrustedChain):
        run(token_for(leaf.signing), store)


def test_trusted_ca_and_user_cert_not_yet_valid_reports_the_user_cert(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    # Web eID whenTrustedCACertificateIsNotYetValid_thenUserCertValidationFails
    with pytest.raises(CertNotYetValid):
        run(token_for(citizen.signing), store, now=utc(2023, 6, 1))


def test_trusted_ca_and_user_cert_expired_reports_the_user_cert(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    # Web eID whenTrustedCACertificateIsNoLongerValid_thenUserCertValidationFails
    with pytest.raises(CertExpired):
        run(token_for(citizen.signing), store, now=utc(2045, 1, 1))


def test_unrelated_expired_ca_does_not_break_validation(
    pki: TestPki, citizen: testpki.CitizenIdentity
) -> None:
    expired = ca_with_validity(Validity(utc(2010, 1, 1), utc(2020, 1, 1)))
    store = TrustStore([expired.certificate, pki.moica.certificate], pinned=False)
    assert run(token_for(citizen.signing), store).holder_name == NAME


def test_ca_not_part_of_trust_chain_fails(citizen: testpki.CitizenIdentity) -> None:
    other = testpki.make_test_pki()
    store = TrustStore([other.moica.certificate], pinned=False)
    with pytest.raises(UntrustedChain, match="not issued by a trusted MOICA CA"):
        run(token_for(citizen.signing), store)


def test_lookalike_ca_with_same_dn_and_another_key_fails(pki: TestPki, store: TrustStore) -> None:
    lookalike = testpki.make_moica_ca(testpki.make_root())
    assert lookalike.certificate.subject == pki.moica.certificate.subject  # the same DN
    leaf = testpki.make_citizen(lookalike, name=NAME, serial_number=SERIAL, id_last4=LAST4)
    with pytest.raises(UntrustedChain):
        run(token_for(leaf.signing), store)


def test_lookalike_ca_copying_the_anchors_key_identifier_fails(
    pki: TestPki, store: TrustStore, spare_key: rsa.RSAPrivateKey
) -> None:
    # Same DN and the real anchor's SKI value, but another key: selected by AKI, then the
    # signature check in path validation refuses it.
    forged_ca = _forge_ca(pki.moica.certificate)
    leaf = issue_leaf(forged_ca, spare_key, key_usage=SIGN_USAGE)
    assert store.issuer_of(leaf.certificate) is not None
    checker = FakeChecker()
    with pytest.raises(UntrustedChain, match="does not chain"):
        run(token_for(leaf), store, revocation=checker)
    assert checker.calls == []  # never asked about an untrusted certificate


def test_certificate_without_authority_key_identifier_fails(
    pki: TestPki, store: TrustStore, spare_key: rsa.RSAPrivateKey
) -> None:
    leaf = issue_leaf(pki.moica, spare_key, key_usage=SIGN_USAGE, aki=False)
    with pytest.raises(UntrustedChain, match="authority key identifier"):
        run(token_for(leaf), store)


def test_certificate_whose_issuer_name_differs_from_the_anchor_fails(
    pki: TestPki, store: TrustStore, spare_key: rsa.RSAPrivateKey
) -> None:
    other_name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "工商憑證管理中心")]
    )
    leaf = issue_leaf(pki.moica, spare_key, key_usage=SIGN_USAGE, issuer=other_name)
    with pytest.raises(UntrustedChain, match="issuer name"):
        run(token_for(leaf), store)


def test_certificate_from_another_gpki_ca_under_the_same_root_fails(pki: TestPki) -> None:
    # MOEACA/GCA/XCA-like: chains to the same root, but only MOICA is an anchor (moica.md §6.2).
    moeaca = testpki.make_moica_ca(pki.root)
    leaf = testpki.make_citizen(moeaca, name=NAME, serial_number=SERIAL, id_last4=LAST4)
    store = TrustStore([pki.moica.certificate], pinned=False)
    with pytest.raises(UntrustedChain):
        run(token_for(leaf.signing), store)


def test_test_certificate_fails_against_the_real_pinned_store(
    citizen: testpki.CitizenIdentity,
) -> None:
    if not SHARED_TRUST.is_dir():
        pytest.skip(f"the real MOICA certificates are not at {SHARED_TRUST}")
    with pytest.raises(UntrustedChain):
        run(token_for(citizen.signing), TrustStore.from_directory(SHARED_TRUST))


@pytest.mark.parametrize("generation", ["G2", "G3"])
def test_forged_moica_ca_with_real_dn_and_key_id_fails_against_the_real_store(
    generation: str, spare_key: rsa.RSAPrivateKey
) -> None:
    real = real_ca(f"MOICA-{generation}")
    forged_ca = _forge_ca(real)
    leaf = issue_leaf(forged_ca, spare_key, key_usage=SIGN_USAGE)
    # By key identifier it looks exactly like a real G2/G3 citizen certificate...
    assert parse_profile(leaf.certificate).generation == generation
    checker = FakeChecker()
    # ...but its signature is not MOICA's.
    with pytest.raises(UntrustedChain):
        run(token_for(leaf), TrustStore.from_directory(SHARED_TRUST), revocation=checker)
    assert checker.calls == []


def test_g2_like_and_g3_like_issuers_both_pass() -> None:
    # Test CAs carrying the real G2/G3 subject DN (identical), validity and extensions.
    g2, g3 = clone_ca_profile(real_ca("MOICA-G2")), clone_ca_profile(real_ca("MOICA-G3"))
    assert g2.certificate.subject == g3.certificate.subject
    store = TrustStore([g2.certificate, g3.certificate], pinned=False)
    for ca in (g2, g3):
        leaf = testpki.make_citizen(
            ca,
            name=NAME,
            serial_number=SERIAL,
            id_last4=LAST4,
            validity=Validity(utc(2024, 6, 1), utc(2029, 6, 1)),
        )
        checker = FakeChecker()
        result = run(token_for(leaf.signing), store, revocation=checker)
        assert result.holder_name == NAME
        assert checker.calls[0][1] == ca.certificate  # the anchor chosen by AKI, not by DN


def test_rsa_key_below_2048_bits_fails(pki: TestPki, store: TrustStore) -> None:
    weak = issue_leaf(pki.moica, testpki.new_rsa_key(1024), key_usage=SIGN_USAGE)
    with pytest.raises(SignatureInvalid, match="2048"):
        run(token_for(weak), store)


def test_non_rsa_certificate_key_fails(
    pki: TestPki, store: TrustStore, spare_key: rsa.RSAPrivateKey
) -> None:
    leaf = issue_leaf(pki.moica, ec.generate_private_key(ec.SECP256R1()), key_usage=SIGN_USAGE)
    token = make_token(leaf.der(), sign(spare_key), "cardd/0.1.0")
    with pytest.raises(SignatureInvalid, match="RSA"):
        run(token, store)


# -- revocation (through a fake checker) -----------------------------------------------------


def test_revocation_checker_is_asked_about_leaf_and_anchor_at_now(
    pki: TestPki, citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    checker = FakeChecker()
    run(token_for(citizen.signing), store, revocation=checker)
    assert checker.calls == [(citizen.signing.certificate, pki.moica.certificate, NOW)]


def test_revoked_certificate_fails(citizen: testpki.CitizenIdentity, store: TrustStore) -> None:
    with pytest.raises(CertRevoked) as exc:
        run(
            token_for(citizen.signing),
            store,
            revocation=FakeChecker(RevocationStatus.REVOKED, "crl"),
        )
    assert exc.value.code == "revoked"


@pytest.mark.parametrize("policy", list(RevocationPolicy))
def test_revoked_fails_under_every_policy(
    policy: RevocationPolicy, citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    checker = FakeChecker(RevocationStatus.REVOKED, "crl-cached")
    with pytest.raises(CertRevoked):
        run(token_for(citizen.signing), store, revocation=checker, policy=policy)


def test_unknown_status_fails_under_require(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    with pytest.raises(RevocationUnknown) as exc:
        run(
            token_for(citizen.signing),
            store,
            revocation=FakeChecker(RevocationStatus.UNKNOWN, "none"),
        )
    assert exc.value.code == "revocation_unknown"


def test_require_is_the_default_policy(citizen: testpki.CitizenIdentity, store: TrustStore) -> None:
    token = token_for(citizen.signing)
    with pytest.raises(RevocationUnknown):
        verify_token(
            token,
            expected_origin=ORIGIN,
            nonce=NONCE,
            trust=store,
            revocation=FakeChecker(RevocationStatus.UNKNOWN),
            now=NOW,
        )


def test_unknown_status_passes_under_allow_offline_and_is_recorded(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    checker = FakeChecker(RevocationStatus.UNKNOWN, "crl-cached")
    result = run(
        token_for(citizen.signing), store, revocation=checker, policy=RevocationPolicy.ALLOW_OFFLINE
    )
    assert (result.revocation_status, result.revocation_method) == (
        RevocationStatus.UNKNOWN,
        "crl-cached",
    )


def test_policy_may_be_given_as_its_string(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    result = run(
        token_for(citizen.signing),
        store,
        revocation=FakeChecker(RevocationStatus.UNKNOWN),
        policy="allow-offline",
    )
    assert result.revocation_status == RevocationStatus.UNKNOWN


def test_good_crl_answer_is_recorded(citizen: testpki.CitizenIdentity, store: TrustStore) -> None:
    result = run(token_for(citizen.signing), store, revocation=FakeChecker(method="crl"))
    assert (result.revocation_status, result.revocation_method) == (RevocationStatus.GOOD, "crl")


def test_no_checker_fails_under_require(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    with pytest.raises(RevocationUnknown, match="not configured"):
        run(token_for(citizen.signing), store, revocation=None)


def test_no_checker_passes_under_allow_offline(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    result = run(
        token_for(citizen.signing), store, revocation=None, policy=RevocationPolicy.ALLOW_OFFLINE
    )
    assert (result.revocation_status, result.revocation_method) == (
        RevocationStatus.UNKNOWN,
        "none",
    )


@pytest.mark.parametrize("policy", list(RevocationPolicy))
def test_checker_that_raises_fails_closed(
    policy: RevocationPolicy, citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    checker = FakeChecker(raises=OSError("network down"))
    with pytest.raises(RevocationUnknown) as exc:
        run(token_for(citizen.signing), store, revocation=checker, policy=policy)
    assert isinstance(exc.value.__cause__, OSError)


def test_checker_token_errors_pass_through(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    checker = FakeChecker(raises=CertRevoked("revoked (ocsp)"))
    with pytest.raises(CertRevoked):
        run(token_for(citizen.signing), store, revocation=checker)


def test_checker_returning_garbage_fails_closed(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    class Broken:
        def check(self, cert: object, issuer: object, *, now: object) -> object:
            return "good"

    with pytest.raises(RevocationUnknown):
        run(
            token_for(citizen.signing),
            store,
            revocation=Broken(),
            policy=RevocationPolicy.ALLOW_OFFLINE,
        )


def test_expired_certificate_is_reported_before_revocation(pki: TestPki, store: TrustStore) -> None:
    old = pki.issue_citizen(
        NAME, SERIAL, LAST4, validity=Validity(utc(2020, 1, 1), utc(2024, 12, 31))
    )
    checker = FakeChecker(RevocationStatus.REVOKED)
    with pytest.raises(CertExpired):
        run(token_for(old.signing), store, revocation=checker)
    assert checker.calls == []


def test_revocation_is_checked_before_the_signature(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    token = token_for(citizen.signing, nonce="B" * 44)
    with pytest.raises(CertRevoked):
        run(token, store, revocation=FakeChecker(RevocationStatus.REVOKED))


# -- AuthTokenSignatureTest / AuthTokenSignatureValidatorTest --------------------------------


def test_wrong_nonce_fails(citizen: testpki.CitizenIdentity, store: TrustStore) -> None:
    token = token_for(citizen.signing)
    with pytest.raises(SignatureInvalid) as exc:
        run(token, store, nonce="12345678123456781234567812345678912356789124")
    assert exc.value.code == "signature_invalid"


def test_wrong_origin_fails(citizen: testpki.CitizenIdentity, store: TrustStore) -> None:
    with pytest.raises(SignatureInvalid):
        run(token_for(citizen.signing), store, expected_origin="https://invalid.org")


@pytest.mark.parametrize(
    ("signed_for", "expected"),
    [
        ("https://library.example.tw:8443", ORIGIN),
        (ORIGIN, "https://library.example.tw:8443"),
        ("https://library.example.tw:8443", "https://library.example.tw:9443"),
        ("https://example.tw", ORIGIN),
        ("https://library.example.tw.evil.com", ORIGIN),
    ],
)
def test_origin_differing_only_by_port_or_host_fails(
    signed_for: str, expected: str, citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    with pytest.raises(SignatureInvalid):
        run(token_for(citizen.signing, origin=signed_for), store, expected_origin=expected)


def test_origin_differing_only_by_scheme_fails(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    # signed_data() refuses http, so sign the http construct by hand, as a rogue signer could.
    http_data = (
        hashlib.sha256(b"http://library.example.tw").digest()
        + hashlib.sha256(NONCE.encode()).digest()
    )
    signature = citizen.signing.private_key.sign(http_data, padding.PKCS1v15(), hashes.SHA256())
    token = make_token(citizen.signing.der(), signature, "cardd/0.1.0")
    with pytest.raises(SignatureInvalid):
        run(token, store)
    # and a relying party expecting the http origin is misconfigured, whatever the token
    with pytest.raises(OriginMismatch):
        run(token_for(citizen.signing), store, expected_origin="http://library.example.tw")


def test_token_with_wrong_cert_fails(
    pki: TestPki, citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    someone_else = pki.issue_citizen("李大華", "6543210987654321", "4321")
    token = token_for(citizen.signing, key=someone_else.signing.private_key)
    with pytest.raises(SignatureInvalid):
        run(token, store)


def test_tampered_signature_fails(citizen: testpki.CitizenIdentity, store: TrustStore) -> None:
    signature = bytearray(sign(citizen.signing.private_key))
    signature[-1] ^= 0x01
    token = make_token(citizen.signing.der(), bytes(signature), "cardd/0.1.0")
    with pytest.raises(SignatureInvalid):
        run(token, store)


@pytest.mark.parametrize("length", [1, 255, 257, 512])
def test_signature_of_wrong_length_fails(
    length: int, citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    token = make_token(citizen.signing.der(), b"\x01" * length, "cardd/0.1.0")
    with pytest.raises(SignatureInvalid):
        run(token, store)


def test_pss_signature_fails(citizen: testpki.CitizenIdentity, store: TrustStore) -> None:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    signature = citizen.signing.private_key.sign(signed_data(ORIGIN, NONCE), pss, hashes.SHA256())
    with pytest.raises(SignatureInvalid):
        run(make_token(citizen.signing.der(), signature, "cardd/0.1.0"), store)


def test_signature_over_unseparated_fields_fails(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    # H(origin || nonce) instead of H(origin) || H(nonce): field separation matters.
    signature = citizen.signing.private_key.sign(
        (ORIGIN + NONCE).encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    with pytest.raises(SignatureInvalid):
        run(make_token(citizen.signing.der(), signature, "cardd/0.1.0"), store)


def test_signature_over_decoded_nonce_fails(
    citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    data = (
        hashlib.sha256(ORIGIN.encode()).digest() + hashlib.sha256(base64.b64decode(NONCE)).digest()
    )
    signature = citizen.signing.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(SignatureInvalid):
        run(make_token(citizen.signing.der(), signature, "cardd/0.1.0"), store)


@pytest.mark.parametrize(
    "nonce", ["short", "A" * 43, "A" * 129, "not base64 at all, but long enough to pass the length"]
)
def test_syntactically_bad_nonce_is_bad_nonce(
    nonce: str, citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    with pytest.raises(BadNonce) as exc:
        run(token_for(citizen.signing), store, nonce=nonce)
    assert exc.value.code == "bad_nonce"


def test_bad_nonce_is_reported_before_the_token_is_parsed(store: TrustStore) -> None:
    with pytest.raises(BadNonce):
        run("garbage", store, nonce="short")


@pytest.mark.parametrize(
    "origin",
    [
        "https://library.example.tw/",
        "https://library.example.tw/login",
        "library.example.tw",
        "https://LIBRARY.example.tw",
        "https://library.example.tw:443",
        "",
    ],
)
def test_malformed_expected_origin_is_origin_mismatch(
    origin: str, citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    with pytest.raises(OriginMismatch) as exc:
        run(token_for(citizen.signing), store, expected_origin=origin)
    assert exc.value.code == "origin_mismatch"


# -- identity and ID binding ------------------------------------------------------------------


@pytest.mark.parametrize("id_number", ["A123456789", "a123456789", "  A123456789 ", "6789"])
def test_matching_id_number_passes(
    id_number: str, citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    assert run(token_for(citizen.signing), store, id_number=id_number).id_last4 == LAST4


def test_id_comparison_ignores_case(pki: TestPki, store: TrustStore) -> None:
    resident = pki.issue_citizen(NAME, SERIAL, "12AB")
    assert run(token_for(resident.signing), store, id_number="xx000012ab").id_last4 == "12AB"


@pytest.mark.parametrize("id_number", ["A123456788", "A12345678", "789", "", "   "])
def test_id_mismatch_fails(
    id_number: str, citizen: testpki.CitizenIdentity, store: TrustStore
) -> None:
    with pytest.raises(IdMismatch) as exc:
        run(token_for(citizen.signing), store, id_number=id_number)
    assert exc.value.code == "id_mismatch"
    assert id_number.strip() == "" or id_number not in exc.value.message


def test_id_mismatch_when_certificate_has_no_sda(
    pki: TestPki, store: TrustStore, spare_key: rsa.RSAPrivateKey
) -> None:
    leaf = issue_leaf(pki.moica, spare_key, key_usage=SIGN_USAGE, sda=False)
    assert run(token_for(leaf), store).id_last4 is None
    with pytest.raises(IdMismatch):
        run(token_for(leaf), store, id_number="A123456789")


def test_certificate_without_cn_is_invalid_token(
    pki: TestPki, store: TrustStore, spare_key: rsa.RSAPrivateKey
) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "TW"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, SERIAL),
        ]
    )
    leaf = issue_leaf(pki.moica, spare_key, key_usage=SIGN_USAGE, subject=subject)
    with pytest.raises(TokenError, match="CN") as exc:
        run(token_for(leaf), store)
    assert type(exc.value) is TokenError


@pytest.mark.parametrize("serial", ["A123456789", "123456789012345", "12345678901234567"])
def test_certificate_with_bad_subject_serial_is_invalid_token(
    serial: str, pki: TestPki, store: TrustStore, spare_key: rsa.RSAPrivateKey
) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "TW"),
            x509.NameAttribute(NameOID.COMMON_NAME, NAME),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
        ]
    )
    leaf = issue_leaf(pki.moica, spare_key, key_usage=SIGN_USAGE, subject=subject)
    with pytest.raises(TokenError, match="serialNumber"):
        run(token_for(leaf), store)


# -- NonceStore (ChallengeNonceGeneratorTest / ChallengeNonceStore) ---------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_issued_nonce_is_32_random_bytes_in_base64() -> None:
    nonces = NonceStore()
    nonce = nonces.issue()
    assert len(nonce) == 44
    assert len(base64.b64decode(nonce, validate=True)) == 32
    assert validate_nonce(nonce) == nonce
    assert len({nonces.issue() for _ in range(100)}) == 100


def test_unexpired_nonce_is_accepted_once() -> None:
    clock = FakeClock()
    nonces = NonceStore(clock=clock)
    nonce = nonces.issue()
    clock.now += 299
    assert nonces.consume(nonce) is True
    assert nonces.consume(nonce) is False  # second use fails


def test_nonce_at_exactly_the_ttl_is_accepted() -> None:
    clock = FakeClock()
    nonces = NonceStore(clock=clock)
    nonce = nonces.issue()
    clock.now += 300
    assert nonces.consume(nonce) is True


def test_expired_nonce_fails_and_is_gone() -> None:
    clock = FakeClock()
    nonces = NonceStore(clock=clock)
    nonce = nonces.issue()
    clock.now += 300.001
    assert nonces.consume(nonce) is False
    assert len(nonces) == 0


def test_unknown_nonce_fails() -> None:
    nonces = NonceStore()
    nonces.issue()
    assert nonces.consume(base64.b64encode(b"\x00" * 32).decode()) is False
    assert nonces.consume(None) is False  # type: ignore[arg-type]


def test_nonce_from_another_session_fails_and_is_used_up() -> None:
    nonces = NonceStore()
    nonce = nonces.issue(session="alice")
    assert nonces.consume(nonce, session="mallory") is False
    assert nonces.consume(nonce, session="alice") is False  # single use even on failure


def test_nonce_bound_to_a_session_needs_that_session() -> None:
    nonces = NonceStore()
    nonce = nonces.issue(session="alice")
    assert nonces.consume(nonce) is False
    unbound = nonces.issue()
    assert nonces.consume(unbound, session="alice") is False


def test_expired_nonces_are_purged_on_issue() -> None:
    clock = FakeClock()
    nonces = NonceStore(clock=clock)
    for _ in range(5):
        nonces.issue()
    clock.now += 301
    fresh = nonces.issue()
    assert len(nonces) == 1
    assert nonces.consume(fresh)


def test_outstanding_nonces_are_bounded() -> None:
    nonces = NonceStore(max_outstanding=3)
    first = nonces.issue()
    rest = [nonces.issue() for _ in range(3)]
    assert len(nonces) == 3
    assert nonces.consume(first) is False  # the oldest was dropped
    assert all(nonces.consume(n) for n in rest)


def test_concurrent_consumers_get_one_success() -> None:
    nonces = NonceStore()
    nonce = nonces.issue()
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(nonces.consume(nonce))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


@pytest.mark.parametrize(
    "kwargs", [{"ttl": 0}, {"ttl": -1}, {"nonce_bytes": 16}, {"max_outstanding": 0}]
)
def test_nonce_store_refuses_weak_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        NonceStore(**kwargs)  # type: ignore[arg-type]


# -- helpers that need the fixtures above -----------------------------------------------------


def _forge_ca(real: x509.Certificate) -> IssuedCertificate:
    """A CA with ``real``'s subject DN and SKI *value*, but its own key."""
    key = testpki.new_rsa_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(real.subject)
        .issuer_name(real.issuer)
        .public_key(key.public_key())
        .serial_number(testpki.random_serial())
        .not_valid_before(real.not_valid_before_utc)
        .not_valid_after(real.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(
            real.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value, critical=False
        )
    )
    return IssuedCertificate(builder.sign(key, hashes.SHA256()), key)
